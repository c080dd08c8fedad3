package tcp

import (
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestRequireServerProof: with Conn.RequireServerProof the transport
// refuses a unit that answers without the challenge (one without a token,
// or any peer), naming its address; without it, it connects as before.
func TestRequireServerProof(t *testing.T) {
	s := wire.NewServer(wire.ServerConfig{
		CheckHello: func(h *wirepb.Hello) (*wirepb.Hello, error) {
			return &wirepb.Hello{Role: "unit", UnitId: h.UnitId, Incarnation: max(h.Incarnation, 1)}, nil
		},
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	addr := "tcp://" + l.Addr().String()

	tr := New(Config{Token: "tok-tcp-require-proof", Conns: 1, Conn: wire.ConnConfig{RequireServerProof: true}})
	defer tr.Close()
	_, err = tr.DialConn(t.Context(), engine.PeerInfo{Unit: 3, Incarnation: 9, Addr: addr})
	require.ErrorIs(t, err, wire.ErrServerUnproven)
	assert.Contains(t, err.Error(), addr)
	assert.Contains(t, err.Error(), "RequireServerProof")

	tr2 := New(Config{Token: "tok-tcp-require-proof", Conns: 1})
	defer tr2.Close()
	c, err := tr2.DialConn(t.Context(), engine.PeerInfo{Unit: 3, Incarnation: 9, Addr: addr})
	require.NoError(t, err)
	c.Close()
}
