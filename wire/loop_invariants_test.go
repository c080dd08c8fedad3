//go:build invariants || race

package wire

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/wire/wirepb"
)

// TestLoopRequestUsedAfterItsHandler: with invariants, a handler that
// keeps a request a loop served and uses it once it returned (here: its
// Decode, on the connection's next request) panics with a message that
// says so, rather than reading the next request, which the loop serves in
// the same memory without invariants; the loop survives the panic as any
// other handler's, the connection and the others it serves with it.
func TestLoopRequestUsedAfterItsHandler(t *testing.T) {
	const opKeep Op = 253
	var (
		mu     sync.Mutex
		kept   *Request
		onLoop = true
	)
	_, addr, n := loopServer(t, ServerConfig{Loops: 1}, "tcp", func(s *Server) {
		s.HandleInline(opKeep, func(_ context.Context, req *Request, rw *ReplyWriter) {
			mu.Lock()
			k := kept
			kept, onLoop = req, onLoop && rw.loop
			mu.Unlock()
			if k != nil {
				var p wirepb.Ping
				k.Decode(&p) // the previous request: its handler returned
			}
			rw.Reply(&wirepb.Ping{}, nil, nil)
		})
	})
	c := dial(t, addr, "")
	other := dial(t, addr, "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Wait until the connection is on the loop: its goroutine hands it
	// over once idle.
	require.Eventually(t, func() bool {
		on := n.on.Load()
		_, err := inlineEcho(ctx, c, []byte{1})
		require.NoError(t, err)
		return n.on.Load() > on
	}, 5*time.Second, time.Millisecond, "the connection goes to the loop")
	require.NoError(t, c.Do(ctx, opKeep, &wirepb.Ping{Nonce: 1}, nil, &wirepb.Ping{}, nil), "the first request")
	err := c.Do(ctx, opKeep, &wirepb.Ping{Nonce: 2}, nil, &wirepb.Ping{}, nil)
	var re *RemoteError
	require.ErrorAs(t, err, &re, "the request whose handler used the one before")
	require.Equal(t, wirepb.Code_CODE_INTERNAL, re.Code)
	require.ErrorContains(t, err, "wire: request OP_253 used after its handler returned (Request.Decode)")
	mu.Lock()
	require.True(t, onLoop, "both requests were served on the loop")
	mu.Unlock()

	on := n.on.Load()
	got, err := inlineEcho(ctx, c, []byte("after"))
	require.NoError(t, err, "the connection is still served")
	require.Equal(t, "after", string(got))
	require.Greater(t, n.on.Load(), on, "on the loop")
	got, err = inlineEcho(ctx, other, []byte("other"))
	require.NoError(t, err, "another connection is still served")
	require.Equal(t, "other", string(got))
}
