package wire

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/wire/wirepb"
)

// cancelable reports whether req runs in a goroutine of its own, where a
// CANCEL reaches it (it is among the connection's running requests),
// rather than where it was read.
func cancelable(req *Request, rw *ReplyWriter) bool {
	c := rw.c
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.running[req.ID] == req
}

// TestInlineBigBodyLeavesReadLoop: a request for an inline handler whose
// body is over InlineMaxBody runs in a goroutine of its own, so the
// connection goes on reading: a PING sent after it is answered while its
// handler is still blocked, and the big request gets its reply once
// released. (A 25 MiB KV_PUT of tags on an in-memory controller was
// decoded and applied on the read loop for seconds under -race, its
// client's pings went unanswered, and the client declared the live
// server dead.) With a limit under the loops' request size, a loop gives
// the connection back to its goroutine for such a request rather than
// serve it itself.
func TestInlineBigBodyLeavesReadLoop(t *testing.T) {
	const opInlineBig Op = 220
	for _, tc := range []struct {
		name  string
		limit int
		size  int
	}{
		{"default limit", 0, DefaultInlineMaxBody + 1024},
		{"limit under a loop's", 1024, 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			started := make(chan bool, 4)
			release := make(chan struct{})
			_, addr := startServer(t, ServerConfig{InlineMaxBody: tc.limit}, "tcp", func(s *Server) {
				s.HandleInline(opInlineBig, func(_ context.Context, req *Request, rw *ReplyWriter) {
					async := cancelable(req, rw)
					if len(req.Body) > 100 {
						started <- async
						<-release
					}
					rw.Reply(&wirepb.Ping{Nonce: uint64(len(req.Body))}, nil, nil)
				})
			})
			c := dial(t, addr, "")
			// Small requests first: the connection goes to a loop.
			for range 4 {
				require.NoError(t, c.Do(t.Context(), opInlineBig, &wirepb.Error{Message: "small"}, nil, &wirepb.Ping{}, nil))
			}
			big := &wirepb.Error{Message: strings.Repeat("x", tc.size)}
			done := make(chan error, 1)
			var reply wirepb.Ping
			go func() { done <- c.Do(context.Background(), opInlineBig, big, nil, &reply, nil) }()
			assert.True(t, recv(t, started, "start of the big request's handler"), "the big request runs in a goroutine of its own, cancelable")
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			err := c.Ping(ctx)
			close(release)
			require.NoError(t, err, "a ping while a big inline request's handler is blocked")
			require.NoError(t, recv(t, done, "the big request's reply"))
			assert.Greater(t, reply.Nonce, uint64(tc.size))
		})
	}
}

// TestInlineSmallBodyRunsInline: a request for an inline handler whose
// body is within InlineMaxBody runs where it was read (not among the
// requests a CANCEL reaches), on the connection's goroutine or a loop;
// a negative limit keeps even a large one there.
func TestInlineSmallBodyRunsInline(t *testing.T) {
	const opInlineSmall Op = 221
	for _, tc := range []struct {
		name  string
		cfg   ServerConfig
		size  int
		async bool
	}{
		{"small, loops", ServerConfig{}, 100, false},
		{"small, no loops", ServerConfig{Loops: -1}, 100, false},
		{"at the limit", ServerConfig{Loops: -1, InlineMaxBody: 4096}, 4090, false},
		{"past the limit", ServerConfig{Loops: -1, InlineMaxBody: 4096}, 4200, true},
		{"no limit", ServerConfig{InlineMaxBody: -1}, 2 * DefaultInlineMaxBody, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ran := make(chan bool, 8)
			_, addr := startServer(t, tc.cfg, "tcp", func(s *Server) {
				s.HandleInline(opInlineSmall, func(_ context.Context, req *Request, rw *ReplyWriter) {
					ran <- cancelable(req, rw)
					rw.Reply(&wirepb.Empty{}, nil, nil)
				})
			})
			c := dial(t, addr, "")
			for range 4 {
				require.NoError(t, c.Do(t.Context(), opInlineSmall, &wirepb.Error{Message: strings.Repeat("x", tc.size)}, nil, &wirepb.Empty{}, nil))
				assert.Equal(t, tc.async, recv(t, ran, "the handler's run"), "a body of about %d bytes runs in a goroutine of its own", tc.size)
			}
		})
	}
}
