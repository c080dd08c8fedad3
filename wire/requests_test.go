package wire

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/wire/wirepb"
)

// TestRequestsInFlightBounded: the requests in flight on all connections
// together are bounded (MaxRequests), not only each connection's: peers
// with many connections, each holding many requests that wait (blocking
// fetches), pin no more handlers than the bound. A request past it waits
// up to FrameTimeout for room, then its connection gets a connection
// error naming the limit (logged once) and is closed; CANCEL and PING
// still get through meanwhile, and once requests finish new ones are
// served.
func TestRequestsInFlightBounded(t *testing.T) {
	const limit, perConn = 16, 4
	const frameTimeout = 2 * time.Second
	var logs logBuffer
	var running, peak atomic.Int32
	started := make(chan uint64, 256)
	release := make(chan struct{})
	s, addr := startServer(t, ServerConfig{MaxRequests: limit, FrameTimeout: frameTimeout, Logger: logs.logger()}, "tcp", func(s *Server) {
		s.Handle(opHold, func(ctx context.Context, req *Request, rw *ReplyWriter) {
			n := running.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			defer running.Add(-1)
			started <- req.ID
			select {
			case <-release:
			case <-ctx.Done():
			}
			rw.Reply(&wirepb.Empty{}, nil, nil)
		})
	})
	hold := func(nc net.Conn) {
		var b []byte
		for id := range uint64(perConn) {
			b = append(b, frame(opHold, 0, id+2, &wirepb.Empty{}, nil)...)
		}
		sendAsync(t, nc, b)
	}

	// Holders take the whole bound.
	var holders []net.Conn
	for range limit / perConn {
		nc := rawDial(t, addr, &wirepb.Hello{Role: "client"})
		hold(nc)
		holders = append(holders, nc)
	}
	for range limit {
		recv(t, started, "start of a holder's request")
	}
	// Waiters find no room.
	var waiters []net.Conn
	for range 4 {
		nc := rawDial(t, addr, &wirepb.Hello{Role: "client"})
		hold(nc)
		waiters = append(waiters, nc)
	}
	select {
	case id := <-started:
		t.Fatalf("request %d started with %d requests in flight, the limit", id, limit)
	case <-time.After(300 * time.Millisecond):
	}
	require.EqualValues(t, limit, running.Load())
	require.Zero(t, s.requests.avail.Load(), "room left for requests")

	// A PING takes no room.
	_, err := holders[1].Write(frame(OpPing, 0, 99, &wirepb.Ping{Nonce: 7}, nil))
	require.NoError(t, err)
	h, _ := readFrame(t, holders[1])
	require.Equal(t, Header{Version: Version, Flags: FlagReply, Op: OpPing, ID: 99}, Header{Version: h.Version, Flags: h.Flags, Op: h.Op, ID: h.ID})

	// A CANCEL gets through and makes room for one waiting request.
	_, err = holders[0].Write(frame(OpCancel, 0, 0, &wirepb.Cancel{Id: 2}, nil))
	require.NoError(t, err)
	h, _ = readFrame(t, holders[0])
	require.EqualValues(t, 2, h.ID, "reply to the canceled request")
	recv(t, started, "start of a waiting request once one was canceled")

	// Waiters find no more room within the frame timeout: each is
	// answered with a connection error naming the limit and closed.
	for i, nc := range waiters {
		for {
			h, body := readFrame(t, nc)
			if h.ID != 0 {
				continue // the reply to the request that got room
			}
			require.NotZero(t, h.Flags&FlagError, "waiter %d: connection frame %+v", i, h)
			var e wirepb.Error
			require.NoError(t, proto.Unmarshal(body, &e))
			assert.Equal(t, wirepb.Code_CODE_CAPACITY, e.Code, "waiter %d: %s", i, e.Message)
			assert.Contains(t, e.Message, "the limit is 16 (MaxRequests)", "waiter %d", i)
			break
		}
		waitClosed(t, nc, 10*time.Second)
	}
	assert.Equal(t, 1, strings.Count(logs.String(), "no room for a request"), "logged:\n%s", logs.String())
	assert.LessOrEqual(t, peak.Load(), int32(limit), "handlers running at once")

	// Once requests finish, new ones are served.
	close(release)
	for i, nc := range holders {
		n := perConn
		if i == 0 {
			n-- // its request 2 was answered
		}
		for range n {
			h, _ := readFrame(t, nc)
			require.Equal(t, FlagReply, h.Flags, "holder %d: %+v", i, h)
		}
	}
	nc := rawDial(t, addr, &wirepb.Hello{Role: "client"})
	hold(nc)
	for range perConn {
		h, _ := readFrame(t, nc)
		require.Equal(t, FlagReply, h.Flags, "after the holders finished: %+v", h)
	}
	require.Eventually(t, func() bool { return s.requests.avail.Load() == limit }, 10*time.Second, 10*time.Millisecond, "room for requests given back")
	assert.LessOrEqual(t, peak.Load(), int32(limit), "handlers running at once")
}
