package client

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// stallingListener accepts connections at a unix socket and closes each,
// unanswered, after stall: a dial there fails after stall. It counts the
// connections it accepted.
type stallingListener struct {
	addr     string
	accepted atomic.Int32
	first    chan struct{} // closed at the first accept
}

func stall(t *testing.T, stall time.Duration) *stallingListener {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "stall.sock"))
	require.NoError(t, err)
	s := &stallingListener{addr: "unix://" + l.Addr().String(), first: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			if s.accepted.Add(1) == 1 {
				close(s.first)
			}
			wg.Go(func() {
				time.Sleep(stall)
				nc.Close()
			})
		}
	})
	t.Cleanup(func() { l.Close(); wg.Wait() })
	return s
}

// brokenLane returns a RemoteMeta of one lane whose connection failed,
// and that dials at addr from now on.
func brokenLane(t *testing.T, addr string) *RemoteMeta {
	t.Helper()
	srv := wire.NewServer(wire.ServerConfig{Hello: &wirepb.Hello{Role: "controller"}})
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "c.sock"))
	require.NoError(t, err)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	r, err := DialMeta(t.Context(), "unix://"+l.Addr().String(), RemoteConfig{Lanes: 1})
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	r.lanes[0].conn.Close()
	r.addr = addr
	return r
}

// TestLaneDialFailureIsEveryWaitersOutcome: calls that wait for a lane's
// dial get its failure rather than each dialing again in turn. They used
// to: N callers meeting a controller that answers no handshake made N
// dials one after another, and the last waited N times as long as one.
func TestLaneDialFailureIsEveryWaitersOutcome(t *testing.T) {
	const d, waiters = 300 * time.Millisecond, 4
	s := stall(t, d)
	r := brokenLane(t, s.addr)

	type result struct {
		err  error
		took time.Duration
	}
	results := make(chan result, waiters+1)
	call := func() {
		start := time.Now()
		_, err := r.connect(context.Background())
		results <- result{err, time.Since(start)}
	}
	go call()
	<-s.first // the first caller's dial is under way
	for range waiters {
		go call()
	}
	var slowest time.Duration
	for range waiters + 1 {
		res := <-results
		require.Error(t, res.err)
		slowest = max(slowest, res.took)
	}
	assert.Equal(t, int32(1), s.accepted.Load(), "dials for %d callers of one failing dial", waiters+1)
	assert.Less(t, slowest, 2*d, "the slowest caller's wait")
}

// TestLaneDialGivenUpIsNotTheWaitersFailure: a caller that gives up on
// its dial does not hand its cancellation to the calls waiting for it:
// one of them dials.
func TestLaneDialGivenUpIsNotTheWaitersFailure(t *testing.T) {
	s := stall(t, 300*time.Millisecond)
	r := brokenLane(t, s.addr)

	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 1)
	go func() { _, err := r.connect(ctx); errs <- err }()
	<-s.first
	waited := make(chan error, 1)
	go func() { _, err := r.connect(context.Background()); waited <- err }()
	time.Sleep(20 * time.Millisecond) // the second caller waits for the first's dial
	cancel()
	require.ErrorIs(t, <-errs, context.Canceled)
	err := <-waited
	require.Error(t, err)
	assert.NotErrorIs(t, err, context.Canceled, "the waiter's own dial's failure, not the other caller's cancellation")
	assert.Equal(t, int32(2), s.accepted.Load())
}
