package shm

import (
	"bytes"
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// fakeUnit is a peer at a unit's address that does not hold the token (a
// stale path another process now holds; whatever a client was pointed at
// by a controller that was not the real one): it answers the HELLO as a
// unit without a token does, at once and without the challenge, echoing
// the identity the client expects, and names as the unit's fd socket one
// it listens on itself. It returns the unit's address and what each
// connection to that fd socket sent.
func fakeUnit(t *testing.T) (addr string, fdGot <-chan []byte) {
	t.Helper()
	dir := t.TempDir()
	fdl, err := net.Listen("unix", filepath.Join(dir, "fake.shm"))
	require.NoError(t, err)
	t.Cleanup(func() { fdl.Close() })
	got := make(chan []byte, 16)
	go func() {
		for {
			nc, err := fdl.Accept()
			if err != nil {
				return
			}
			nc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			b, _ := io.ReadAll(nc) // until the deadline: it answers nothing
			nc.Close()
			got <- b
		}
	}()
	s := wire.NewServer(wire.ServerConfig{
		Hello: &wirepb.Hello{Role: "unit"},
		CheckHello: func(h *wirepb.Hello) (*wirepb.Hello, error) {
			return &wirepb.Hello{Role: "unit", HostId: h.HostId, UnitId: h.UnitId, Incarnation: max(h.Incarnation, 1)}, nil
		},
	})
	s.Handle(wire.OpShmSegments, func(_ context.Context, _ *wire.Request, rw *wire.ReplyWriter) {
		rw.Reply(&wirepb.ShmSegmentsReply{FdSocket: fdl.Addr().String(), Segments: []*wirepb.ShmSegment{{Id: 1, Size: 4096}}}, nil, nil)
	})
	s.Handle(wire.OpAcquire, func(_ context.Context, _ *wire.Request, rw *wire.ReplyWriter) {
		rw.Reply(&wirepb.AcquireReply{Lease: 1}, nil, nil)
	})
	s.Handle(wire.OpRelease, func(_ context.Context, _ *wire.Request, rw *wire.ReplyWriter) {
		rw.Reply(&wirepb.Empty{}, nil, nil)
	})
	l, err := net.Listen("unix", filepath.Join(dir, "fake.sock"))
	require.NoError(t, err)
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	return "unix://" + l.Addr().String(), got
}

// TestFdSocketGetsNoTokenFromUnprovenUnit: the fd socket carries the token
// in clear, and its path is what the unit's SHM_SEGMENTS reply names. A
// peer at the unit's address that answered the HELLO without the
// challenge (as a unit without a token does, which any peer can) proved
// nothing: the client must not send it the token through the fd socket
// it names, neither for the control ring nor for a segment.
func TestFdSocketGetsNoTokenFromUnprovenUnit(t *testing.T) {
	const secret = "tok-shm-7d1e0c5b-SECRET-9a0f"
	for _, control := range []Control{ControlAuto, ControlSocket} {
		t.Run(control.String(), func(t *testing.T) {
			addr, fdGot := fakeUnit(t)
			tr := New(Config{Token: secret, Control: control, Conn: wire.ConnConfig{KeepAlive: 100 * time.Millisecond, PingTimeout: 2 * time.Second}})
			defer tr.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			c, err := tr.DialConn(ctx, engine.PeerInfo{Unit: 3, Incarnation: 9, Addr: addr})
			if err == nil {
				// A segment fetch: the read fails (the fake answers
				// nothing), what matters is what it was sent.
				c.Read(ctx, []engine.RemoteAddr{{Segment: 1, Offset: 0, Len: 8}}, [][]byte{make([]byte, 8)})
				c.Close()
			}
			tr.Close()
			var sent [][]byte
			for {
				select {
				case b := <-fdGot:
					sent = append(sent, b)
					continue
				case <-time.After(time.Second):
				}
				break
			}
			require.NotEmpty(t, sent, "the client never used the fd socket the fake named (the test proves nothing)")
			for _, b := range sent {
				assert.False(t, bytes.Contains(b, []byte(secret)), "the client sent its token to the fd socket of a unit that did not prove it knows it: %q", b)
			}
		})
	}
}

// TestRequireServerProofRefusesUnprovenUnit: with
// Conn.RequireServerProof the transport refuses a unit that answers
// without the challenge at the handshake, naming its address: no
// SHM_SEGMENTS, nothing to the fd socket it would name.
func TestRequireServerProofRefusesUnprovenUnit(t *testing.T) {
	addr, fdGot := fakeUnit(t)
	tr := New(Config{Token: "tok-shm-require-proof", Conn: wire.ConnConfig{RequireServerProof: true}})
	defer tr.Close()
	_, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: 3, Incarnation: 9, Addr: addr})
	require.ErrorIs(t, err, wire.ErrServerUnproven)
	assert.Contains(t, err.Error(), addr)
	assert.Contains(t, err.Error(), "RequireServerProof")
	select {
	case b := <-fdGot:
		t.Fatalf("the client used the fd socket of a unit that proved nothing: %q", b)
	case <-time.After(700 * time.Millisecond):
	}
}
