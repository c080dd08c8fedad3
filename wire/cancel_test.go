package wire

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/wire/wirepb"
)

const (
	opWait  Op = 205
	opCount Op = 213
)

// waitServer serves opWait: each request reports its id on started, waits
// for its context to end, reports the context's cause on causes, and
// answers with ctx.Err(); replied is signalled once the reply is out.
func waitServer(t *testing.T) (addr string, started chan uint64, causes chan error, replied chan struct{}) {
	started, causes, replied = make(chan uint64, 4), make(chan error, 4), make(chan struct{}, 4)
	_, addr = startServer(t, ServerConfig{}, "tcp", func(s *Server) {
		s.Handle(opWait, func(ctx context.Context, req *Request, rw *ReplyWriter) {
			started <- req.ID
			<-ctx.Done()
			causes <- context.Cause(ctx)
			rw.Error(ctx.Err())
			replied <- struct{}{}
		})
	})
	return addr, started, causes, replied
}

// TestCancelReachesHandler: a call whose context ends sends CANCEL; the
// server's handler sees its context canceled by the client, and its reply
// (CODE_CANCELED) is dropped by the client, whose connection goes on.
func TestCancelReachesHandler(t *testing.T) {
	addr, started, causes, replied := waitServer(t)
	c := dial(t, addr, "")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.Do(ctx, opWait, &wirepb.Empty{}, nil, &wirepb.Empty{}, nil) }()
	recv(t, started, "start of the handler")
	cancel()
	if err := recv(t, done, "return of Do"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Do: got %v, want context.Canceled", err)
	}
	if cause := recv(t, causes, "end of the handler's context"); !errors.Is(cause, context.Canceled) || cause != errCanceled {
		t.Fatalf("handler's context ended with %v, want the client's cancellation", cause)
	}
	recv(t, replied, "the handler's reply")
	// The reply came before the pong on the same stream, and was skipped.
	if err := c.Ping(t.Context()); err != nil {
		t.Fatalf("connection after a canceled call: %v", err)
	}
	c.mu.Lock()
	pending := len(c.pending)
	c.mu.Unlock()
	if pending != 0 {
		t.Fatalf("%d calls pending after the canceled call's reply and a ping", pending)
	}
}

// cancelFrame encodes a CANCEL of request id.
func cancelFrame(id uint64) []byte { return frame(OpCancel, 0, 0, &wirepb.Cancel{Id: id}, nil) }

// TestCancelFrames speaks CANCEL by hand: it cancels the named request
// (whose error reply says CODE_CANCELED), gets no reply of its own, and
// ignores ids that are not running; a CANCEL with a payload, or in place
// of the HELLO, closes the connection.
func TestCancelFrames(t *testing.T) {
	addr, started, _, _ := waitServer(t)
	hello := &wirepb.Hello{Role: "client"}
	errorCode := func(t *testing.T, body []byte) wirepb.Code {
		var e wirepb.Error
		if err := proto.Unmarshal(body, &e); err != nil {
			t.Fatal(err)
		}
		return e.Code
	}

	t.Run("running", func(t *testing.T) {
		nc := rawDial(t, addr, hello)
		nc.Write(frame(opWait, 0, 7, &wirepb.Empty{}, nil))
		recv(t, started, "start of request 7")
		nc.Write(cancelFrame(7))
		h, body := readFrame(t, nc)
		if h.ID != 7 || h.Flags != FlagReply|FlagError || errorCode(t, body) != wirepb.Code_CODE_CANCELED {
			t.Fatalf("got %+v %v, want request 7's CODE_CANCELED reply", h, errorCode(t, body))
		}
	})
	t.Run("unknown ids", func(t *testing.T) {
		nc := rawDial(t, addr, hello)
		nc.Write(cancelFrame(99))
		nc.Write(frame(OpPing, 0, 8, &wirepb.Ping{Nonce: 5}, nil))
		nc.Write(cancelFrame(8)) // finished by now, or inline: ignored either way
		nc.Write(frame(OpPing, 0, 9, &wirepb.Ping{Nonce: 6}, nil))
		for _, id := range []uint64{8, 9} {
			if h, _ := readFrame(t, nc); h.ID != id || h.Op != OpPing {
				t.Fatalf("got %+v, want the reply to ping %d (CANCEL has none)", h, id)
			}
		}
	})
	for _, tc := range []struct {
		name  string
		hello *wirepb.Hello
		send  []byte
	}{
		{"with a payload", hello, frame(OpCancel, 0, 0, &wirepb.Cancel{Id: 1}, []byte("x"))},
		{"before the handshake", nil, cancelFrame(1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc := rawDial(t, addr, tc.hello)
			nc.Write(tc.send)
			if took := waitClosed(t, nc, 5*time.Second); took > time.Second {
				t.Errorf("closed after %v, want at once", took)
			}
		})
	}
}

// TestDoWithEndedContextSendsNothing: a call whose context has already
// ended returns the context's error every time, and the server never sees
// it (no reply could race the cancellation and win by chance).
func TestDoWithEndedContextSendsNothing(t *testing.T) {
	var served atomic.Int64
	_, addr := startServer(t, ServerConfig{}, "tcp", func(s *Server) {
		s.Handle(opCount, func(_ context.Context, _ *Request, rw *ReplyWriter) {
			served.Add(1)
			rw.Reply(&wirepb.Empty{}, nil, nil)
		})
	})
	c := dial(t, addr, "")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for range 200 {
		if err := c.Do(ctx, opCount, &wirepb.Empty{}, nil, &wirepb.Empty{}, nil); !errors.Is(err, context.Canceled) {
			t.Fatalf("Do with a canceled context: got %v, want context.Canceled", err)
		}
	}
	// A live call after them, answered after the server read whatever
	// came before it on the connection: without the check the server
	// served 198 of the 200 canceled calls by then.
	if err := c.Do(t.Context(), opCount, &wirepb.Empty{}, nil, &wirepb.Empty{}, nil); err != nil {
		t.Fatal(err)
	}
	if n := served.Load(); n != 1 {
		t.Fatalf("server served %d requests, want only the live one", n)
	}
}
