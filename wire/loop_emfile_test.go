package wire

import (
	"bytes"
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/internal/evloop"
	"github.com/tqgo/tq/internal/testenv"
)

// TestLoopGivesBackUnderFdExhaustion: a connection a loop gives back to
// its goroutine (here for a request with a handler of its own) needs a
// descriptor for its net.Conn. Out of descriptors for a moment, the
// connection waits for one, as the accept loop does, and its request is
// answered once there is one. It used to be closed at once, its request
// and the replies the loop had not written lost.
func TestLoopGivesBackUnderFdExhaustion(t *testing.T) {
	_, addr, n := loopServer(t, ServerConfig{Loops: 1}, "tcp")
	c := dial(t, addr, "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 4 {
		_, err := inlineEcho(ctx, c, []byte("x"))
		require.NoError(t, err)
	}
	require.Positive(t, n.on.Load(), "the connection is not on a loop")

	restore := testenv.ExhaustFds(t)
	time.AfterFunc(300*time.Millisecond, restore)
	p := bytes.Repeat([]byte{7}, 100)
	got, err := roundTrip(ctx, c, p)
	restore()
	require.NoError(t, err, "a request sent while the server had no descriptor to spare")
	require.Equal(t, p, got)
	// The connection still works, on a loop or off one.
	_, err = inlineEcho(ctx, c, []byte("y"))
	require.NoError(t, err)
}

// TestLoopsStartAfterFdExhaustion: loops that could not start for want
// of a descriptor (the first connection came while the process had none
// to spare) start with a later connection; they were turned off for the
// server's life, every connection keeping a goroutine.
func TestLoopsStartAfterFdExhaustion(t *testing.T) {
	real := newLoopSet
	var failed atomic.Bool
	newLoopSet = func() (*evloop.Set[*serverConn], error) {
		if failed.CompareAndSwap(false, true) {
			return nil, os.NewSyscallError("epoll_create1", unix.EMFILE)
		}
		return real()
	}
	t.Cleanup(func() { newLoopSet = real })
	_, addr, n := loopServer(t, ServerConfig{Loops: 1}, "tcp")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	first := dial(t, addr, "")
	for range 4 {
		_, err := inlineEcho(ctx, first, []byte("x"))
		require.NoError(t, err)
	}
	require.True(t, failed.Load(), "the loops were not started: the test shows nothing")
	second := dial(t, addr, "")
	require.Eventually(t, func() bool {
		_, err := inlineEcho(ctx, second, []byte("y"))
		require.NoError(t, err)
		return n.on.Load() > 0
	}, 5*time.Second, 10*time.Millisecond, "a later connection is served from a loop")
}
