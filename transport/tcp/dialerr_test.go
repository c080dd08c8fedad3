package tcp

import (
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
)

// A dial that fails says why — the unit is unreachable — and not that
// the connection was closed: DialConn closes the Conn it gave up on, and
// its error used to wrap engine.ErrClosed on top, which callers read as
// "closed by this process".
func TestDialFailureIsNotClosed(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := "tcp://" + l.Addr().String()
	l.Close() // nobody listens there now

	tr := New(Config{})
	defer tr.Close()
	_, err = tr.Dial(t.Context(), engine.PeerInfo{Addr: addr})
	require.Error(t, err)
	assert.ErrorIs(t, err, wire.ErrUnavailable)
	assert.NotErrorIs(t, err, engine.ErrClosed, "dial of an unreachable unit: %v", err)
}
