package wire

import (
	"bytes"
	"context"
	"net"
	"testing"

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
