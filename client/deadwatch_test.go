package client_test

import (
	"context"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// BenchmarkRemoteSmallGet gets one row of 64 bytes from a unit served
// over TCP in this process (the controller over a unix socket): the
// smallest read that goes through watchDead, whose timer and context
// are its share of the cost.
func BenchmarkRemoteSmallGet(b *testing.B) {
	c, meta := smallGetCluster(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		got, err := c.Get(ctx, meta)
		if err != nil || got.Rows() != 1 {
			b.Fatal(got, err)
		}
	}
}

// Requests to a unit that end before deadCheck leave nothing running:
// the client's watcher (see deadwatch.go) ends once none is in flight.
func TestFastRequestsLeaveNoWatcher(t *testing.T) {
	c, meta := smallGetCluster(t)
	ctx := t.Context()
	for range 10000 {
		_, err := c.Get(ctx, meta)
		require.NoError(t, err)
	}
	watching := func() bool {
		buf := make([]byte, 1<<20)
		return strings.Contains(string(buf[:runtime.Stack(buf, true)]), "(*discovery).watcher")
	}
	require.Eventually(t, func() bool { return !watching() }, 10*time.Second, 10*time.Millisecond,
		"the watcher of requests to units runs with none in flight")
	_, err := c.Get(ctx, meta)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return !watching() }, 10*time.Second, 10*time.Millisecond,
		"the watcher of requests to units runs with none in flight")
}

// smallGetCluster is a controller over a unix socket, a unit served
// over TCP in this process, both closed at the end of the test, and a
// client that put one row of 64 bytes there, with that row's meta.
func smallGetCluster(b testing.TB) (*client.Client, *engine.BatchMeta) {
	b.Helper()
	ctx := context.Background()
	ctrl, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(b, ctrl, controller.ServerConfig{}, "unix")
	u, err := storage.NewUnit(0, storage.DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { u.Close() })
	if _, err := storage.AssignID(ctx, addr, u, storage.JoinConfig{}); err != nil {
		b.Fatal(err)
	}
	srv := storage.NewServer(u, storage.ServerConfig{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(l)
	b.Cleanup(func() { srv.Close() })
	mem, err := storage.Join(ctx, addr, u, storage.JoinConfig{Addrs: []string{"tcp://" + l.Addr().String()}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { mem.Close() })
	c, err := client.Connect(ctx, addr, client.ConnectConfig{Transport: client.TransportTCP})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	meta, err := c.PutNew(ctx, "p", opaque([]int{64}))
	if err != nil {
		b.Fatal(err)
	}
	return c, meta
}
