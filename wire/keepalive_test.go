package wire

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/wire/wirepb"
)

// slowReadConn reads at most 64 KiB per 10 ms (about 6 MiB/s).
type slowReadConn struct{ net.Conn }

func (c slowReadConn) Read(p []byte) (int, error) {
	time.Sleep(10 * time.Millisecond)
	if len(p) > 64<<10 {
		p = p[:64<<10]
	}
	return c.Conn.Read(p)
}

// keepAliveConn dials addr with pings every 50 ms that may go unanswered
// for 300 ms, reading through wrap.
func keepAliveConn(t *testing.T, addr string, wrap func(net.Conn) net.Conn) *Conn {
	network, address, err := ParseAddr(addr)
	require.NoError(t, err)
	nc, err := net.Dial(network, address)
	require.NoError(t, err)
	c := NewConn(wrap(nc), ConnConfig{KeepAlive: 50 * time.Millisecond, PingTimeout: 300 * time.Millisecond})
	t.Cleanup(func() { c.Close() })
	_, err = c.Hello(t.Context(), nil)
	require.NoError(t, err)
	return c
}

// TestKeepAliveSparesAPeerSendingALongReply: a reply that takes longer
// than the ping timeout to arrive delays the pong, which the server sends
// after it; the bytes of the reply arriving meanwhile show the peer is
// alive, and the call gets its reply.
func TestKeepAliveSparesAPeerSendingALongReply(t *testing.T) {
	const size = 8 << 20 // about 1.3 s through slowReadConn
	big := make([]byte, size)
	for i := range big {
		big[i] = byte(i)
	}
	const opBigReply Op = 202
	_, addr := startServer(t, ServerConfig{}, "tcp", func(s *Server) {
		s.Handle(opBigReply, func(ctx context.Context, req *Request, rw *ReplyWriter) {
			rw.Reply(&wirepb.Ping{}, net.Buffers{big}, nil)
		})
	})
	c := keepAliveConn(t, addr, func(nc net.Conn) net.Conn { return slowReadConn{nc} })
	got := make([]byte, size)
	err := c.Do(t.Context(), opBigReply, &wirepb.Ping{}, nil, &wirepb.Ping{}, func(Header, proto.Message) ([][]byte, error) {
		return [][]byte{got}, nil
	})
	require.NoError(t, err, "a live peer sending its reply was declared dead")
	require.Equal(t, big, got)
	require.NoError(t, c.Err())
}

// TestKeepAliveSparesAPeerThatTakesALargeRequestLate: the keepalive's
// ping, queued behind a large payload the server takes only after a
// wait, goes unanswered past the ping timeout; giving it up takes it out
// of the queue, and the write in progress shows the peer is alive: the
// connection and the large call go on.
func TestKeepAliveSparesAPeerThatTakesALargeRequestLate(t *testing.T) {
	addr, started, open := gatedReadServer(t)
	c := keepAliveConn(t, addr, func(nc net.Conn) net.Conn { return nc })
	large := largeGatedCall(t, c, started, 1)

	time.Sleep(time.Second) // pings given up, the first after 300 ms
	require.NoError(t, c.Err(), "the connection failed while its peer was alive")

	open(1)
	require.NoError(t, recv(t, large, "end of the large call"))
}

// TestWriteTimeoutFailsAPeerThatStopsTakingARequest: a peer that takes
// none of a large request for WriteTimeout (it stopped reading, or its
// host is gone and TCP has not yet given up) fails the connection, with
// the call that was writing; the keepalive alone spares a connection
// whose write is in progress, and a caller without a deadline waited for
// ever.
func TestWriteTimeoutFailsAPeerThatStopsTakingARequest(t *testing.T) {
	addr, started, _ := gatedReadServer(t)
	network, address, err := ParseAddr(addr)
	require.NoError(t, err)
	nc, err := net.Dial(network, address)
	require.NoError(t, err)
	c := NewConn(nc, ConnConfig{KeepAlive: 50 * time.Millisecond, PingTimeout: 300 * time.Millisecond, WriteTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { c.Close() })
	_, err = c.Hello(t.Context(), nil)
	require.NoError(t, err)

	large := largeGatedCall(t, c, started, 1) // never opened
	select {
	case err := <-large:
		require.ErrorIs(t, err, ErrUnavailable)
		require.ErrorIs(t, c.Err(), ErrUnavailable)
		require.ErrorContains(t, c.Err(), "write")
	case <-time.After(time.Minute):
		t.Fatal("a request the peer stopped taking was written for ever")
	}
}

// TestKeepAliveWithEveryRequestSlotWaiting: a client with as many calls
// waiting on the server as the server runs at once (long fetches) keeps
// its connection: the server answers PING without a request slot, and the
// client holds further calls until one ends (the HELLO reply names the
// bound) rather than sending them, which would stop the server reading
// the connection with the PING behind them. Such a connection used to
// fail every call with "peer stopped answering" once the pong was late.
func TestKeepAliveWithEveryRequestSlotWaiting(t *testing.T) {
	const opHold Op = 203
	release := make(chan struct{})
	_, addr := startServer(t, ServerConfig{MaxInFlight: 2}, "tcp", func(s *Server) {
		s.Handle(opHold, func(ctx context.Context, req *Request, rw *ReplyWriter) {
			select {
			case <-release:
				rw.Reply(&wirepb.Ping{}, nil, nil)
			case <-ctx.Done():
				rw.Error(ctx.Err())
			}
		})
	})
	c := keepAliveConn(t, addr, func(nc net.Conn) net.Conn { return nc })
	errs := make(chan error, 3)
	for range 3 {
		go func() { errs <- c.Do(t.Context(), opHold, &wirepb.Ping{}, nil, &wirepb.Ping{}, nil) }()
	}
	select {
	case err := <-errs:
		t.Fatalf("a call ended while the server held it: %v", err)
	case <-time.After(time.Second): // three ping timeouts
	}
	require.NoError(t, c.Err(), "the connection while every request slot waits")
	close(release)
	for range 3 {
		require.NoError(t, <-errs)
	}
}

// TestCallRightAfterAGivenUpOneGoesOutAfterItsCancel: a call given up while
// the server runs it sends a CANCEL, and a call made right after goes out
// behind it. The CANCEL used to be written by a goroutine of its own, which
// the next call's own write often beat: with every request slot taken by
// the call given up, the server then stopped reading the connection at
// the next call, the CANCEL behind it was never read, and neither was the
// keepalive's PING: the connection failed with "peer stopped answering".
func TestCallRightAfterAGivenUpOneGoesOutAfterItsCancel(t *testing.T) {
	_, addr := startServer(t, ServerConfig{MaxInFlight: 1}, "tcp")
	c := keepAliveConn(t, addr, func(nc net.Conn) net.Conn { return nc })
	for i := range 50 {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
		err := c.Do(ctx, Op(201), &wirepb.Ping{}, nil, &wirepb.Ping{}, nil) // runs until canceled
		cancel()
		require.ErrorIs(t, err, context.DeadlineExceeded, "call %d", i)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	require.NoError(t, c.Do(ctx, opEcho, &wirepb.Ping{Nonce: 7}, nil, &wirepb.Ping{}, nil), "a call after them")
	require.NoError(t, c.Err())
}

// TestCallsWaitingForRoomGoOutAfterTheCancel: calls that wait for room
// (as many in flight as the server runs) take the room a given-up call
// leaves only once its CANCEL is queued. Sent first, a call would wait
// on the server for the slot the given-up call still holds there, and
// the server, which reads nothing behind it, would never read the CANCEL
// that frees that slot: the call hung until its deadline (and every PING
// behind it with it).
func TestCallsWaitingForRoomGoOutAfterTheCancel(t *testing.T) {
	_, addr := startServer(t, ServerConfig{MaxInFlight: 1}, "tcp")
	c := dial(t, addr, "")
	for i := range 100 {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
		var wg sync.WaitGroup
		wg.Go(func() {
			c.Do(ctx, Op(201), &wirepb.Ping{}, nil, &wirepb.Ping{}, nil) // runs until canceled
		})
		time.Sleep(2 * time.Millisecond)
		errs := make([]error, 8)
		for w := range errs {
			wg.Go(func() {
				wctx, wcancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
				defer wcancel()
				errs[w] = c.Do(wctx, opEcho, &wirepb.Ping{Nonce: 7}, nil, &wirepb.Ping{}, nil)
			})
		}
		wg.Wait()
		cancel()
		for w, err := range errs {
			require.NoError(t, err, "round %d, waiting call %d", i, w)
		}
	}
}
