package wire

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

const opWhoAmI Op = 206

// whoAmI answers with the peer's uid (as int64 bits) in the nonce.
func whoAmI(s *Server) {
	s.HandleInline(opWhoAmI, func(_ context.Context, req *Request, rw *ReplyWriter) {
		rw.Reply(&wirepb.Ping{Nonce: uint64(int64(req.PeerUID))}, nil, nil)
	})
}

// TestTrustPeerCred: with TrustPeerCred, a unix socket peer of this
// process's user needs no token, and handlers see its uid; a peer of
// another user, a TCP peer, and anyone without TrustPeerCred still do.
func TestTrustPeerCred(t *testing.T) {
	me := os.Geteuid()
	for _, tc := range []struct {
		name    string
		network string
		trust   bool
		euid    int // the server's, as it believes; -1: its own
		token   string
		admit   bool
		wantUID int // what handlers see of an admitted peer
	}{
		{"unix same user", "unix", true, -1, "", true, me},
		{"unix same user with token", "unix", true, -1, "s3cret", true, me},
		{"unix other user", "unix", true, me + 1, "", false, 0},
		{"unix without trust", "unix", false, -1, "", false, 0},
		{"unix without trust with token", "unix", false, -1, "s3cret", true, me},
		{"tcp", "tcp", true, -1, "", false, 0},
		{"tcp with token", "tcp", true, -1, "s3cret", true, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr := startServer(t, ServerConfig{Token: "s3cret", TrustPeerCred: tc.trust}, tc.network, whoAmI, func(s *Server) {
				if tc.euid >= 0 {
					s.euid = tc.euid
				}
			})
			c, _, err := Dial(t.Context(), addr, &wirepb.Hello{Role: "client", Token: tc.token}, ConnConfig{})
			if !tc.admit {
				if !errors.Is(err, ErrUnauthenticated) {
					t.Fatalf("got %v, want ErrUnauthenticated", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var reply wirepb.Ping
			if err := c.Do(t.Context(), opWhoAmI, &wirepb.Empty{}, nil, &reply, nil); err != nil {
				t.Fatal(err)
			}
			if got := int(int64(reply.Nonce)); got != tc.wantUID {
				t.Errorf("handler saw peer uid %d, want %d", got, tc.wantUID)
			}
		})
	}
}

// TestCheckHello: CheckHello runs after authentication only; its error
// is the HELLO's error reply, with its code, and its Hello the answer.
func TestCheckHello(t *testing.T) {
	var checked atomic.Int64
	check := func(p *wirepb.Hello) (*wirepb.Hello, error) {
		checked.Add(1)
		if p.Name != "unit 3" {
			return nil, fmt.Errorf("this is unit 3, the client expects %s: %w", p.Name, engine.ErrNotFound)
		}
		return &wirepb.Hello{Role: "unit", UnitId: 3}, nil
	}
	_, addr := startServer(t, ServerConfig{Token: "s3cret", CheckHello: check}, "tcp")
	for _, tc := range []struct {
		token, name string
		want        error
		checks      int64
	}{
		{"wrong", "unit 3", ErrUnauthenticated, 0},
		{"s3cret", "unit 4", engine.ErrNotFound, 1},
		{"s3cret", "unit 3", nil, 2},
	} {
		c, reply, err := Dial(t.Context(), addr, &wirepb.Hello{Token: tc.token, Name: tc.name}, ConnConfig{})
		if c != nil {
			c.Close()
		}
		if err == nil && reply.UnitId != 3 {
			t.Errorf("answer %v, want CheckHello's (unit 3)", reply)
		}
		if !errors.Is(err, tc.want) || (tc.want == engine.ErrNotFound && !strings.Contains(err.Error(), "expects unit 4")) {
			t.Errorf("token %q, name %q: got %v, want %v", tc.token, tc.name, err, tc.want)
		}
		if got := checked.Load(); got != tc.checks {
			t.Errorf("token %q, name %q: CheckHello ran %d times in all, want %d", tc.token, tc.name, got, tc.checks)
		}
	}
}

// TestHelloTooLarge: a client does not send a HELLO the server would
// refuse unread.
func TestHelloTooLarge(t *testing.T) {
	_, addr := startServer(t, ServerConfig{}, "tcp")
	_, _, err := Dial(t.Context(), addr, &wirepb.Hello{Name: strings.Repeat("n", MaxHelloLen)}, ConnConfig{})
	if !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("got %v, want ErrInvalid", err)
	}
}
