package wire

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/wire/wirepb"
)

const (
	opInlineEcho Op = 204
	opGated      Op = 205
)

// TestPipelinedRepliesShareAWrite: replies to requests that arrived
// together go out in one writev (the read loop corks while it serves what
// it has read), not one write each.
func TestPipelinedRepliesShareAWrite(t *testing.T) {
	s, addr := startServer(t, ServerConfig{}, "tcp", func(s *Server) { s.HandleInline(opInlineEcho, echo) })
	nc := rawDial(t, addr, &wirepb.Hello{Role: "client"})
	const n = 32
	var reqs []byte
	for i := range n {
		reqs = append(reqs, frame(opInlineEcho, 0, uint64(i+1), &wirepb.Ping{}, []byte{byte(i)})...)
	}
	before := s.Writes()
	_, err := nc.Write(reqs)
	require.NoError(t, err)
	for i := range n {
		h, _ := readFrame(t, nc)
		require.Equal(t, uint64(i+1), h.ID, "replies in request order")
		require.Zero(t, h.Flags&FlagError)
	}
	// One read of the socket normally holds all 32; allow a few.
	require.Less(t, s.Writes()-before, int64(8), "writes for %d pipelined replies", n)
}

// TestCorkedRepliesReachAPeerThatWaitsForThem: a handler that waits for
// its peer before it reads its payload does not hold back the replies the
// read loop corked before it (the peer's next step may need them).
func TestCorkedRepliesReachAPeerThatWaitsForThem(t *testing.T) {
	gate := make(chan struct{})
	_, addr := startServer(t, ServerConfig{}, "tcp", func(s *Server) {
		s.HandleInline(opInlineEcho, echo)
		s.Handle(opGated, func(ctx context.Context, req *Request, rw *ReplyWriter) {
			select {
			case <-gate:
			case <-ctx.Done():
				rw.Error(ctx.Err())
				return
			}
			buf := make([]byte, req.PayloadLen)
			if err := req.ReadPayload([][]byte{buf}); err != nil {
				rw.Error(err)
				return
			}
			rw.Reply(&wirepb.Ping{}, net.Buffers{buf}, nil)
		})
	})
	nc := rawDial(t, addr, &wirepb.Hello{Role: "client"})
	payload := bytes.Repeat([]byte{7}, 100)
	reqs := append(frame(opInlineEcho, 0, 1, &wirepb.Ping{}, []byte{1}), frame(opGated, 0, 2, &wirepb.Ping{}, payload)...)
	_, err := nc.Write(reqs)
	require.NoError(t, err)
	h, _ := readFrame(t, nc) // fails after 5 s if corked behind the gated request
	require.Equal(t, uint64(1), h.ID)
	close(gate)
	h, _ = readFrame(t, nc)
	require.Equal(t, uint64(2), h.ID)
	require.Zero(t, h.Flags&FlagError)
}

// TestShutdownWritesCorkedReplies: a request the read loop served counts
// as in flight until its reply is written, so Shutdown does not close the
// connection on a reply still corked behind requests read with it.
func TestShutdownWritesCorkedReplies(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	s, addr := startServer(t, ServerConfig{}, "tcp", func(s *Server) {
		s.HandleInline(opGated, func(_ context.Context, _ *Request, rw *ReplyWriter) {
			close(started)
			<-release
			rw.Reply(&wirepb.Ping{Nonce: 1}, nil, nil)
		})
		s.HandleInline(opInlineEcho, echo)
	})
	nc := rawDial(t, addr, &wirepb.Hello{Role: "client"})
	reqs := append(frame(opGated, 0, 1, &wirepb.Ping{}, nil), frame(opInlineEcho, 0, 2, &wirepb.Ping{}, []byte{2})...)
	_, err := nc.Write(reqs)
	require.NoError(t, err)
	recv(t, started, "gated request")
	sd := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		sd <- s.Shutdown(ctx)
	}()
	time.Sleep(20 * time.Millisecond) // Shutdown is waiting for the gated request
	close(release)
	h, body := readFrame(t, nc)
	require.Equal(t, uint64(1), h.ID)
	require.Zero(t, h.Flags&FlagError, "%x", body)
	require.NoError(t, recv(t, sd, "shutdown"))
}

// TestCorkedRepliesGoOutWhileABodyWaitsForRoom: a reply corked while the
// read loop serves frames it has already read goes out when the loop
// then waits for room for the next body, in the connection's budget or
// the server's, as it does when it waits for a slot: the request holding
// the room may be waiting for the peer, and the peer for that reply.
func TestCorkedRepliesGoOutWhileABodyWaitsForRoom(t *testing.T) {
	const bound = 1 << 20 // below the minimum, so that the test moves little data
	for _, tc := range []struct {
		name  string
		setup func(*Server)
	}{
		{"connection", func(s *Server) { s.cfg.MaxConnBuffered = bound }},
		{"server", func(s *Server) { s.buffered.init(bound) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr, started, release := holdServer(t, ServerConfig{FrameTimeout: time.Minute}, tc.setup)
			nc := rawDial(t, addr, &wirepb.Hello{Role: "client"})
			const held = bound - 10<<10 // until release
			sendAsync(t, nc, append(header(opHold, 2, held, 0), make([]byte, held)...))
			recv(t, started, "start of request 2")
			// Read together: an echo, answered at once, and a body that
			// finds no room until request 2 returns.
			reqs := frame(opEcho, 0, 3, &wirepb.Ping{Nonce: 7}, nil)
			reqs = append(reqs, header(opHold, 4, 20<<10, 0)...)
			_, err := nc.Write(append(reqs, make([]byte, 20<<10)...))
			require.NoError(t, err)
			h, _ := readFrame(t, nc) // fails after 5 s if corked behind the wait
			require.Equal(t, uint64(3), h.ID)
			close(release)
			ids := map[uint64]bool{}
			for range 2 {
				h, _ := readFrame(t, nc)
				require.Equal(t, FlagReply, h.Flags)
				ids[h.ID] = true
			}
			require.Equal(t, map[uint64]bool{2: true, 4: true}, ids)
		})
	}
}

// TestCorkHoldsBackABoundedAmount: cork holds frames back only up to
// maxCorked bytes; past it they go out as they are sent. A read of the
// socket may hold thousands of small requests whose replies are large,
// all of which were held in memory until the read loop read again.
func TestCorkHoldsBackABoundedAmount(t *testing.T) {
	var out countConn
	w := newFrameWriter(&out, func(error) {})
	w.cork()
	payload := make([]byte, 256<<10)
	var corked int
	for range 16 { // 4 MiB in all
		f := &outFrame{buf: make([]byte, HeaderSize), payload: net.Buffers{payload}, written: make(chan error, 1)}
		if w.send(f) {
			corked++
		}
	}
	require.Positive(t, out.n, "nothing written while corked, 4 MiB held back")
	require.LessOrEqual(t, 16*(256<<10)-int(out.n), maxCorked, "held back past the bound")
	require.Less(t, corked, 16)
	w.uncork()
	require.Equal(t, int64(16*(HeaderSize+256<<10)), out.n, "everything written at uncork")
}

// countConn counts the bytes written to it.
type countConn struct {
	net.Conn
	n int64
}

func (c *countConn) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

func (c *countConn) SetWriteDeadline(time.Time) error { return nil }
