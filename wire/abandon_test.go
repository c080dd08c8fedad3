package wire

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/wire/wirepb"
)

const opGatedRead Op = 207

// gatedReadServer serves opGatedRead: each request reports its id on
// started; one whose Ping nonce is not 0 then waits for open(nonce)
// before it reads its payload (as a unit waits for space), and every one
// replies once it has read its payload.
func gatedReadServer(t *testing.T) (addr string, started chan uint64, open func(nonce uint64)) {
	t.Helper()
	started = make(chan uint64, 16)
	var mu sync.Mutex
	gates := map[uint64]chan struct{}{}
	gate := func(nonce uint64) chan struct{} {
		mu.Lock()
		defer mu.Unlock()
		if gates[nonce] == nil {
			gates[nonce] = make(chan struct{})
		}
		return gates[nonce]
	}
	_, addr = startServer(t, ServerConfig{}, "tcp", func(s *Server) {
		s.Handle(opGatedRead, func(ctx context.Context, req *Request, rw *ReplyWriter) {
			started <- req.ID
			var p wirepb.Ping
			if err := req.Decode(&p); err != nil {
				rw.Error(err)
				return
			}
			if p.Nonce != 0 {
				select {
				case <-gate(p.Nonce):
				case <-ctx.Done():
				}
			}
			if err := req.ReadPayloadTo(make([]byte, req.PayloadLen)); err != nil {
				rw.Error(err)
				return
			}
			rw.Reply(&wirepb.Empty{}, nil, nil)
		})
	})
	opened := map[uint64]bool{}
	open = func(nonce uint64) {
		g := gate(nonce)
		mu.Lock()
		defer mu.Unlock()
		if !opened[nonce] {
			opened[nonce] = true
			close(g)
		}
	}
	t.Cleanup(func() { open(1); open(2) })
	return addr, started, open
}

// largeGatedCall starts a call of a 64 MiB payload, more than the
// sockets hold, that the server takes only once open(nonce) is called; it
// returns once the server has its header, while the payload is being
// written.
func largeGatedCall(t *testing.T, c *Conn, started chan uint64, nonce uint64) <-chan error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		errc <- c.Do(context.Background(), opGatedRead, &wirepb.Ping{Nonce: nonce}, net.Buffers{make([]byte, 64<<20)}, &wirepb.Empty{}, nil)
	}()
	recv(t, started, "start of the large call")
	return errc
}

// TestGivingUpOnAQueuedCallSparesTheConnection: a small call queued
// behind another caller's large payload, whose context ends, is taken out
// of the queue: it returns its context's error, the server never sees it,
// and the connection and the large call go on.
func TestGivingUpOnAQueuedCallSparesTheConnection(t *testing.T) {
	addr, started, open := gatedReadServer(t)
	c := dial(t, addr, "")
	large := largeGatedCall(t, c, started, 1)

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	err := c.Do(ctx, opGatedRead, &wirepb.Ping{}, nil, &wirepb.Empty{}, nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NoError(t, c.Err(), "the connection failed with the small call")

	open(1)
	require.NoError(t, recv(t, large, "end of the large call"))
	require.NoError(t, c.Ping(t.Context()))
	select {
	case id := <-started:
		t.Fatalf("the server got request %d, the call given up before it was written", id)
	default:
	}
}

// TestCallerLeavesOthersLargePayloadsToTheWriter: a caller that found the
// socket idle writes its own frame, and leaves a large payload another
// caller queued meanwhile to a goroutine: its call returns with its
// reply, while the server has not taken the other payload yet.
func TestCallerLeavesOthersLargePayloadsToTheWriter(t *testing.T) {
	addr, started, open := gatedReadServer(t)
	c := dial(t, addr, "")
	first := largeGatedCall(t, c, started, 1) // the writer, blocked
	second := make(chan error, 1)
	go func() {
		second <- c.Do(t.Context(), opGatedRead, &wirepb.Ping{Nonce: 2}, net.Buffers{make([]byte, 64<<20)}, &wirepb.Empty{}, nil)
	}()
	require.Eventually(t, func() bool {
		c.w.mu.Lock()
		defer c.w.mu.Unlock()
		return len(c.w.pending) == 1
	}, 10*time.Second, time.Millisecond, "the second call queued")

	open(1)
	require.NoError(t, recv(t, first, "end of the first call, while the second's payload waits"))
	select {
	case err := <-second:
		t.Fatalf("the second call ended before the server took its payload: %v", err)
	default:
	}
	open(2)
	require.NoError(t, recv(t, second, "end of the second call"))
}
