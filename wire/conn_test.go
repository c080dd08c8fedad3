package wire

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// echo replies with the request's payload, read into a fresh buffer; the
// Ping body's nonce carries the payload length.
func echo(_ context.Context, req *Request, rw *ReplyWriter) {
	var p wirepb.Ping
	if err := req.Decode(&p); err != nil {
		rw.Error(err)
		return
	}
	if req.PayloadLen > 16<<20 { // bound before allocating
		rw.Error(fmt.Errorf("echo of %d bytes: %w", req.PayloadLen, engine.ErrInvalid))
		return
	}
	buf := make([]byte, req.PayloadLen)
	if err := req.ReadPayload([][]byte{buf}); err != nil {
		rw.Error(err)
		return
	}
	if p.Nonce == 999 {
		rw.Error(fmt.Errorf("no such thing: %w", engine.ErrNotFound))
		return
	}
	rw.Reply(&wirepb.Ping{Nonce: uint64(len(buf))}, net.Buffers{buf}, nil)
}

const opEcho Op = 200

// startServer serves echo (opEcho) and a handler that waits for its
// context (op 201); setup may register more handlers.
func startServer(t *testing.T, cfg ServerConfig, network string, setup ...func(*Server)) (*Server, string) {
	t.Helper()
	s := NewServer(cfg)
	s.Handle(opEcho, echo)
	s.Handle(Op(201), func(ctx context.Context, req *Request, rw *ReplyWriter) {
		<-ctx.Done() // blocks until the server or connection closes
		rw.Error(ctx.Err())
	})
	for _, f := range setup {
		f(s)
	}
	var l net.Listener
	var err error
	var addr string
	if network == "unix" {
		path := filepath.Join(t.TempDir(), "s.sock")
		l, err = net.Listen("unix", path)
		addr = "unix://" + path
	} else {
		l, err = net.Listen("tcp", "127.0.0.1:0")
		if err == nil {
			addr = "tcp://" + l.Addr().String()
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	return s, addr
}

func dial(t *testing.T, addr string, token string) *Conn {
	t.Helper()
	c, _, err := Dial(context.Background(), addr, &wirepb.Hello{Role: "client", Token: token}, ConnConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func roundTrip(ctx context.Context, c *Conn, payload []byte) ([]byte, error) {
	var got []byte
	var reply wirepb.Ping
	err := c.Do(ctx, opEcho, &wirepb.Ping{}, net.Buffers{payload}, &reply, func(h Header, _ proto.Message) ([][]byte, error) {
		got = make([]byte, h.PayloadLen)
		return [][]byte{got}, nil
	})
	return got, err
}

func TestRoundTripsAndConcurrency(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			_, addr := startServer(t, ServerConfig{}, network)
			c := dial(t, addr, "")
			var wg sync.WaitGroup
			for w := range 16 {
				wg.Go(func() {
					for _, n := range []int{1, 7, 4096, 65537, 1 << 20} {
						p := bytes.Repeat([]byte{byte(w + n)}, n)
						got, err := roundTrip(context.Background(), c, p)
						if err != nil {
							t.Error(err)
							return
						}
						if !bytes.Equal(got, p) {
							t.Errorf("worker %d size %d: payload differs", w, n)
							return
						}
					}
				})
			}
			wg.Wait()
			if err := c.Ping(context.Background()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestErrorReplyKeepsSentinel(t *testing.T) {
	_, addr := startServer(t, ServerConfig{}, "tcp")
	c := dial(t, addr, "")
	err := c.Do(context.Background(), opEcho, &wirepb.Ping{Nonce: 999}, nil, &wirepb.Ping{}, nil)
	if !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("got %v, want ErrNotFound across the wire", err)
	}
	err = c.Do(context.Background(), Op(777), &wirepb.Ping{}, net.Buffers{[]byte("ignored")}, &wirepb.Ping{}, nil)
	if !errors.Is(err, engine.ErrNotSupported) {
		t.Fatalf("unknown op: got %v, want ErrNotSupported", err)
	}
	if _, err := roundTrip(context.Background(), c, []byte("still works")); err != nil {
		t.Fatalf("connection unusable after error replies: %v", err)
	}
}

func TestToken(t *testing.T) {
	_, addr := startServer(t, ServerConfig{Token: "s3cret"}, "tcp")
	if _, _, err := Dial(context.Background(), addr, &wirepb.Hello{Token: "wrong"}, ConnConfig{}); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("wrong token: got %v, want ErrUnauthenticated", err)
	}
	dial(t, addr, "s3cret")
}

// Clients refused for their token are logged once when it starts and
// once when it is over, not once per client.
func TestTokenRefusalsLoggedOnce(t *testing.T) {
	var logs logBuffer
	_, addr := startServer(t, ServerConfig{Token: "s3cret", Logger: logs.logger()}, "tcp")
	for range 20 {
		if _, _, err := Dial(context.Background(), addr, &wirepb.Hello{Token: "wrong", Name: "intruder"}, ConnConfig{}); !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("wrong token: got %v, want ErrUnauthenticated", err)
		}
	}
	time.Sleep(1100 * time.Millisecond) // the episode's quiet time
	dial(t, addr, "s3cret")
	got := logs.String()
	if n := strings.Count(got, "refusing clients with a wrong or missing token"); n != 1 {
		t.Errorf("refusals logged %d times, want once:\n%s", n, got)
	}
	if !strings.Contains(got, "name=intruder") || !strings.Contains(got, "occurrences=20") {
		t.Errorf("the log does not name the client or count the refusals:\n%s", got)
	}
}

func TestMalformedFrameClosesOnlyThatConnection(t *testing.T) {
	_, addr := startServer(t, ServerConfig{}, "tcp")
	good := dial(t, addr, "")
	_, hostport, _ := ParseAddr(addr)
	bad, err := net.Dial("tcp", hostport)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	bad.Write(bytes.Repeat([]byte{0xff}, 64))
	bad.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := bad.Read(make([]byte, 1)); err == nil {
		t.Fatalf("server answered %d bytes to garbage", n)
	}
	if _, err := roundTrip(context.Background(), good, []byte("ok")); err != nil {
		t.Fatalf("good connection failed after a bad one: %v", err)
	}
}

func TestCancelAndClose(t *testing.T) {
	_, addr := startServer(t, ServerConfig{}, "tcp")
	c := dial(t, addr, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if err := c.Do(ctx, Op(201), &wirepb.Ping{}, nil, &wirepb.Ping{}, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Do(context.Background(), Op(201), &wirepb.Ping{}, nil, &wirepb.Ping{}, nil) }()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	if err := <-done; !errors.Is(err, engine.ErrClosed) {
		t.Fatalf("Close: pending call got %v, want ErrClosed", err)
	}
}

func TestServerDeathFailsCallsQuickly(t *testing.T) {
	s, addr := startServer(t, ServerConfig{}, "tcp")
	c := dial(t, addr, "")
	done := make(chan error, 1)
	go func() { done <- c.Do(context.Background(), Op(201), &wirepb.Ping{}, nil, &wirepb.Ping{}, nil) }()
	time.Sleep(20 * time.Millisecond)
	s.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("call succeeded on a dead server")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("call still waiting 5 s after the server died")
	}
}

func TestShutdownFinishesInFlight(t *testing.T) {
	s := NewServer(ServerConfig{})
	release := make(chan struct{})
	s.Handle(opEcho, func(_ context.Context, req *Request, rw *ReplyWriter) {
		<-release
		rw.Reply(&wirepb.Ping{Nonce: 1}, nil, nil)
	})
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	go s.Serve(l)
	c := dial(t, "tcp://"+l.Addr().String(), "")
	res := make(chan error, 1)
	go func() { res <- c.Do(context.Background(), opEcho, &wirepb.Ping{}, nil, &wirepb.Ping{}, nil) }()
	time.Sleep(20 * time.Millisecond)
	sd := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		sd <- s.Shutdown(ctx)
	}()
	time.Sleep(20 * time.Millisecond)
	if _, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
		t.Fatal("a draining server accepted a new connection")
	}
	close(release)
	if err := <-res; err != nil {
		t.Fatalf("in-flight request during shutdown: %v", err)
	}
	if err := <-sd; err != nil {
		t.Fatal(err)
	}
}

func TestHeaderRoundTripAndValidation(t *testing.T) {
	h := Header{Version: Version, Flags: FlagReply, Op: OpRead, ID: 42, BodyLen: 10, PayloadLen: 1 << 33}
	got, err := DecodeHeader(h.Append(nil))
	if err != nil || got != h {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for _, tc := range []struct {
		name string
		mod  func([]byte)
	}{
		{"magic", func(b []byte) { b[0] = 'X' }},
		{"version", func(b []byte) { b[2] = 9 }},
		{"flags", func(b []byte) { b[3] = 0x80 }},
		{"error without reply", func(b []byte) { b[3] = byte(FlagError) }},
		{"reserved", func(b []byte) { b[6] = 1 }},
		{"body too long", func(b []byte) { b[19] = 0xff }},
		{"payload too long", func(b []byte) { b[31] = 0xff }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := h.Append(nil)
			tc.mod(b)
			if _, err := DecodeHeader(b); !errors.Is(err, ErrFrame) {
				t.Fatalf("got %v, want ErrFrame", err)
			}
		})
	}
}

// TestReusedRequestsUnderCancellation: callers whose contexts end at
// random points (before the write, while the reply is on its way, while
// its payload is being read) and callers that finish, all on one
// connection whose requests and frames are reused from call to call:
// every call that returns nil got its own reply, bit-exact, and the
// connection keeps working. A request reused while the reader or writer
// still held it would show as another call's bytes (or as a race).
func TestReusedRequestsUnderCancellation(t *testing.T) {
	_, addr := startServer(t, ServerConfig{}, "tcp", func(s *Server) {
		s.HandleInline(opInlineEcho, echo)
	})
	c := dial(t, addr, "")
	var wg sync.WaitGroup
	var ok, canceled atomic.Int64
	for w := range 8 {
		wg.Go(func() {
			for i := range 150 {
				size := []int{0, 16, 1000, 70 << 10, 1 << 20}[(w+i)%5]
				p := bytes.Repeat([]byte{byte(w), byte(i)}, size/2)
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration((w*31+i*17)%3000)*time.Microsecond)
				if i%3 == 0 {
					ctx, cancel = context.WithCancel(context.Background())
				}
				op := opEcho
				if i%2 == 0 {
					op = opInlineEcho
				}
				var got []byte
				err := c.Do(ctx, op, &wirepb.Ping{}, net.Buffers{p}, &wirepb.Ping{}, func(h Header, _ proto.Message) ([][]byte, error) {
					got = make([]byte, h.PayloadLen)
					return [][]byte{got}, nil
				})
				cancel()
				switch {
				case err == nil:
					ok.Add(1)
					if !bytes.Equal(got, p) {
						t.Errorf("worker %d call %d: another call's reply (%d bytes, want %d)", w, i, len(got), len(p))
						return
					}
				case errors.Is(err, context.DeadlineExceeded):
					canceled.Add(1)
				default:
					t.Errorf("worker %d call %d: %v", w, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d calls answered, %d canceled", ok.Load(), canceled.Load())
	require.NoError(t, c.Ping(context.Background()))
	got, err := roundTrip(context.Background(), c, []byte("after"))
	require.NoError(t, err)
	require.Equal(t, "after", string(got))
}

// TestReplyWithoutItsPayloadIsCorrupt: a call that gives buffers for its
// reply's payload gets them filled exactly or an error; a success reply
// that carries no payload at all must not return as if it had.
func TestReplyWithoutItsPayloadIsCorrupt(t *testing.T) {
	const opBare Op = 204
	_, addr := startServer(t, ServerConfig{}, "tcp", func(s *Server) {
		s.Handle(opBare, func(_ context.Context, _ *Request, rw *ReplyWriter) { rw.Reply(&wirepb.Ping{}, nil, nil) })
	})
	c := dial(t, addr, "")
	defer c.Close()
	buf := bytes.Repeat([]byte{0xaa}, 16)
	err := c.Do(context.Background(), opBare, &wirepb.Ping{}, nil, &wirepb.Ping{}, func(Header, proto.Message) ([][]byte, error) {
		return [][]byte{buf}, nil
	})
	require.ErrorIs(t, err, engine.ErrCorrupt)
	require.ErrorContains(t, err, "reply payload is 0 bytes, buffers hold 16")
	// Buffers for no bytes take an answer without any.
	err = c.Do(context.Background(), opBare, &wirepb.Ping{}, nil, &wirepb.Ping{}, func(Header, proto.Message) ([][]byte, error) {
		return nil, nil
	})
	require.NoError(t, err)
}
