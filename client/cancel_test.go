package client_test

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
)

func produce(t *testing.T, m client.MetaService, part string, n int) []uint64 {
	t.Helper()
	ctx := context.Background()
	meta, err := m.Insert(ctx, part, n, []string{"x"})
	require.NoError(t, err)
	require.NoError(t, m.Commit(ctx, engine.CommitRequest{Partition: part, Indexes: meta.Indexes,
		Fields: []engine.CommitField{{Name: "x", DType: engine.Int8, Kind: engine.Dense}}}))
	return meta.Indexes
}

// TestCanceledFetchConsumesNothing is issue 11's fourth case: a blocking
// fetch canceled through its context (not a deadline) stops waiting on the
// server, and the row produced next is delivered to the next fetch instead
// of being marked consumed for nobody.
func TestCanceledFetchConsumesNothing(t *testing.T) {
	ctrl := newController(t)
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	r := dialMeta(t, addr, client.RemoteConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := r.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Wait: true})
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // the fetch waits on the server
	cancel()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(5 * time.Second):
		t.Fatal("canceled fetch still blocked")
	}
	want := produce(t, r, "p", 1)
	fctx, fcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer fcancel()
	got, err := r.Fetch(fctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Wait: true})
	require.NoError(t, err)
	assert.Equal(t, want, got.Indexes, "the row went to the canceled fetch")
}

// TestFetchAcrossControllerRestart: a blocking fetch whose connection
// breaks (the controller's server restarts) is asked again, with its key,
// over a new connection, and gets the rows produced meanwhile exactly once;
// a fetch whose reply was lost returns the rows it took.
func TestFetchAcrossControllerRestart(t *testing.T) {
	ctrl, err := controller.New(controller.Config{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	serve := func() (*controller.Server, chan struct{}) {
		s := controller.NewServer(ctrl, controller.ServerConfig{})
		l, err := net.Listen("unix", sock)
		require.NoError(t, err)
		done := make(chan struct{})
		go func() { s.Serve(l); close(done) }()
		return s, done
	}
	s1, done1 := serve()
	r := dialMeta(t, "unix://"+sock, client.RemoteConfig{RetryFor: 10 * time.Second})
	res := make(chan *engine.BatchMeta, 1)
	go func() {
		m, err := r.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 2, Wait: true})
		if err != nil {
			t.Error(err)
		}
		res <- m
	}()
	time.Sleep(50 * time.Millisecond)
	s1.Close()
	<-done1
	s2, done2 := serve()
	defer func() { s2.Close(); <-done2 }()
	// A change is never repeated: reach the new server with a read first.
	_, err = r.Partitions(context.Background())
	require.NoError(t, err)
	rows := produce(t, r, "p", 3)
	select {
	case m := <-res:
		require.NotNil(t, m)
		assert.Equal(t, rows[:2], m.Indexes)
	case <-time.After(10 * time.Second):
		t.Fatal("fetch not answered after the restart")
	}
	st, err := r.ConsumptionStatus(context.Background(), "p", "t")
	require.NoError(t, err)
	assert.Equal(t, []bool{true, true, false}, st.Consumed, "taken once")
}
