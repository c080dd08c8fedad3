package wire

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/wire/wirepb"
)

const panicChildEnv = "TQ_WIRE_PANIC_CHILD"

// A handler that panics (a bug met by one request) ends that request
// with CODE_INTERNAL, logged with its stack, not the process and every
// other connection with it: on a connection's goroutine, inline on an
// event loop, and in a TryFunc. The server runs in a child process, since
// a panic there (as before) would end this test binary.
func TestHandlerPanicIsContained(t *testing.T) {
	if os.Getenv(panicChildEnv) != "" {
		panicChild(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHandlerPanicIsContained$", "-test.count=1")
	cmd.Env = append(os.Environ(), panicChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "the server process died of a handler's panic:\n%s", out)
}

func panicChild(t *testing.T) {
	const opPanic, opPanicInline, opPanicTry Op = 230, 231, 232
	bug := func(context.Context, *Request, *ReplyWriter) { panic("a handler bug") }
	_, addr := startServer(t, ServerConfig{}, "tcp", func(s *Server) {
		s.Handle(opPanic, bug)
		s.HandleInline(opPanicInline, bug)
		s.HandleTry(opPanicTry, func(context.Context, *Request, *ReplyWriter) bool { panic("a try bug") }, bug)
	})
	other := dial(t, addr, "")
	c := dial(t, addr, "")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, op := range []Op{opPanic, opPanicInline, opPanicTry} {
		err := c.Do(ctx, op, &wirepb.Ping{}, nil, &wirepb.Ping{}, nil)
		var re *RemoteError
		require.ErrorAs(t, err, &re, "op %v", op)
		require.Equal(t, wirepb.Code_CODE_INTERNAL, re.Code, "op %v: a panicking handler's request is answered CODE_INTERNAL", op)
		require.ErrorContains(t, err, "panicked")
	}
	require.NoError(t, c.Ping(ctx), "the connection is still served")
	require.NoError(t, other.Ping(ctx), "other connections are still served")
}
