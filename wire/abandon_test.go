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
// started; one whose Ping nonce is not 0 then waits for open before it
// reads its payload (as a unit waits for space), and every one replies
// once it has read its payload.
func gatedReadServer(t *testing.T) (addr string, started chan uint64, open func()) {
	t.Helper()
	started, gate := make(chan uint64, 16), make(chan struct{})
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
				case <-gate:
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
	open = sync.OnceFunc(func() { close(gate) })
	t.Cleanup(open)
	return addr, started, open
}

// largeGatedCall starts a call of a 64 MiB payload, more than the
// sockets hold, that the server takes only once open is called; it
// returns once the server has its header, while the payload is being
// written.
func largeGatedCall(t *testing.T, c *Conn, started chan uint64) <-chan error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		errc <- c.Do(context.Background(), opGatedRead, &wirepb.Ping{Nonce: 1}, net.Buffers{make([]byte, 64<<20)}, &wirepb.Empty{}, nil)
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
	large := largeGatedCall(t, c, started)

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	err := c.Do(ctx, opGatedRead, &wirepb.Ping{}, nil, &wirepb.Empty{}, nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NoError(t, c.Err(), "the connection failed with the small call")

	open()
	require.NoError(t, recv(t, large, "end of the large call"))
	require.NoError(t, c.Ping(t.Context()))
	select {
	case id := <-started:
		t.Fatalf("the server got request %d, the call given up before it was written", id)
	default:
	}
}
