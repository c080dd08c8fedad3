package wire

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tqgo/tq/wire/wirepb"
)

type countSession struct {
	network string
	reqs    atomic.Int64
	closed  chan struct{}
}

func (s *countSession) Close() { close(s.closed) }

// TestSessionLivesWithItsConnection: each connection gets its own
// session, every request of the connection carries it, and it is closed
// once the connection ends.
func TestSessionLivesWithItsConnection(t *testing.T) {
	sessions := make(chan *countSession, 4)
	cfg := ServerConfig{NewSession: func(_ *wirepb.Hello, nc net.Conn) Session {
		s := &countSession{network: nc.LocalAddr().Network(), closed: make(chan struct{})}
		sessions <- s
		return s
	}}
	s := NewServer(cfg)
	s.HandleInline(Op(202), func(_ context.Context, req *Request, rw *ReplyWriter) {
		req.Session.(*countSession).reqs.Add(1)
		rw.Reply(&wirepb.Empty{}, nil, nil)
	})
	l, err := net.Listen("unix", t.TempDir()+"/s.sock")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })

	for conn := range 2 {
		c, _, err := Dial(t.Context(), "unix://"+l.Addr().String(), &wirepb.Hello{Role: "client"}, ConnConfig{})
		if err != nil {
			t.Fatal(err)
		}
		for range conn + 1 {
			if err := c.Do(t.Context(), Op(202), &wirepb.Empty{}, nil, &wirepb.Empty{}, nil); err != nil {
				t.Fatal(err)
			}
		}
		sess := <-sessions
		if got, want := sess.network, "unix"; got != want {
			t.Errorf("session sees a %q connection, want %q", got, want)
		}
		if got, want := sess.reqs.Load(), int64(conn+1); got != want {
			t.Errorf("connection %d: session saw %d requests, want %d", conn, got, want)
		}
		select {
		case <-sess.closed:
			t.Fatalf("connection %d: session closed while the connection is open", conn)
		default:
		}
		c.Close()
		select {
		case <-sess.closed:
		case <-time.After(5 * time.Second):
			t.Fatalf("connection %d: session not closed 5 s after the connection closed", conn)
		}
	}
}

// TestServeConn: a connection handed to ServeConn (no listener) is served
// with a session like any other, ServeConn returns once it ends, and a
// server that closed refuses (closes) the connection.
func TestServeConn(t *testing.T) {
	closed := make(chan struct{})
	s := NewServer(ServerConfig{NewSession: func(*wirepb.Hello, net.Conn) Session {
		return &countSession{closed: closed}
	}})
	cn, sn := net.Pipe()
	served := make(chan struct{})
	go func() { s.ServeConn(sn); close(served) }()
	c := NewConn(cn, ConnConfig{KeepAlive: -1})
	if _, err := c.Hello(t.Context(), &wirepb.Hello{Role: "client"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
	c.Close()
	for name, ch := range map[string]chan struct{}{"ServeConn return": served, "session close": closed} {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("no %s 5 s after the client closed", name)
		}
	}
	s.Close()
	cn, sn = net.Pipe()
	s.ServeConn(sn) // returns at once
	if _, err := cn.Write([]byte{1}); err == nil {
		t.Errorf("write to a connection a closed server was handed: got nil, want an error")
	}
}

type holdingSession struct{ holding atomic.Bool }

func (s *holdingSession) Close()        {}
func (s *holdingSession) Holding() bool { return s.holding.Load() }

// TestIdleTimeoutSparesAHolder: a connection whose session is a Holder
// that holds something is not closed for idleness, however long its peer
// is silent; once it holds nothing, it is closed as any idle one. Before,
// IdleTimeout closed it regardless.
func TestIdleTimeoutSparesAHolder(t *testing.T) {
	const idle = 50 * time.Millisecond
	sess := &holdingSession{}
	sess.holding.Store(true)
	s := NewServer(ServerConfig{IdleTimeout: idle, NewSession: func(*wirepb.Hello, net.Conn) Session { return sess }})
	l, err := net.Listen("unix", t.TempDir()+"/s.sock")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	c, _, err := Dial(t.Context(), "unix://"+l.Addr().String(), &wirepb.Hello{Role: "client"}, ConnConfig{KeepAlive: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	time.Sleep(5 * idle)
	select {
	case <-c.Done():
		t.Fatalf("the server closed a connection whose session holds: %v", c.Err())
	default:
	}
	sess.holding.Store(false)
	select {
	case <-c.Done():
	case <-time.After(time.Minute):
		t.Fatal("the server kept an idle connection whose session holds nothing")
	}
}
