package client_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// giveBackServer is a controller whose every FETCH reply is corrupt (so
// the client gives the fetch's rows back in the background) and whose
// UNCONSUME takes a random time up to slow, or with hang until hang is
// closed.
func giveBackServer(t *testing.T, slow time.Duration, hang <-chan struct{}) string {
	t.Helper()
	srv := wire.NewServer(wire.ServerConfig{Hello: &wirepb.Hello{Role: "controller"}})
	srv.Handle(wire.OpFetch, func(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
		pb, err := wire.MetaToPB(fakeMeta("other", "x", 1))
		if err != nil {
			rw.Error(err)
			return
		}
		rw.Reply(&wirepb.MetaReply{Meta: pb}, nil, nil)
	})
	srv.Handle(wire.OpUnconsume, func(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
		if hang != nil {
			select {
			case <-hang:
			case <-ctx.Done():
			}
		} else if slow > 0 {
			time.Sleep(time.Duration(rand.Int64N(int64(slow))))
		}
		rw.Reply(&wirepb.Empty{}, nil, nil)
	})
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "c.sock"))
	require.NoError(t, err)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return "unix://" + l.Addr().String()
}

var giveBackFetch = engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1,
	Sampler: engine.SamplerSpec{Name: engine.SamplerSequential}}

// Fetches whose rows go back in the background may end while Close waits
// for the give-backs: Close used to wait on a sync.WaitGroup that those
// give-backs then Added to from zero, which its rules forbid (the race
// detector reports it, or Wait panics "WaitGroup is reused"). Run with
// -race.
func TestCloseWhileRowsAreGivenBack(t *testing.T) {
	addr := giveBackServer(t, 2*time.Millisecond, nil)
	for range 20 {
		r, err := client.DialMeta(t.Context(), addr, client.RemoteConfig{RetryFor: -1})
		require.NoError(t, err)
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for range 200 {
					_, err := r.Fetch(t.Context(), giveBackFetch)
					if !assert.Error(t, err) || errors.Is(err, engine.ErrClosed) {
						return
					}
				}
			})
		}
		time.Sleep(time.Duration(rand.Int64N(int64(3 * time.Millisecond))))
		require.NoError(t, r.Close())
		wg.Wait()
	}
}

// A give-back the controller never answers does not hold Close past its
// grace: the background work stops when Close ends it.
func TestCloseDoesNotWaitForeverForAGiveBack(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	addr := giveBackServer(t, 0, hang)
	r, err := client.DialMeta(t.Context(), addr, client.RemoteConfig{RetryFor: -1})
	require.NoError(t, err)
	_, err = r.Fetch(t.Context(), giveBackFetch)
	require.ErrorIs(t, err, engine.ErrCorrupt)
	start := time.Now()
	require.NoError(t, r.Close())
	assert.Less(t, time.Since(start), 15*time.Second)
}
