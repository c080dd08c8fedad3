package shm

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// A dial that fails says why — here the socket serves another unit — and
// not that the connection was closed: DialConn closes the Conn it gave
// up on, and its error used to wrap engine.ErrClosed on top, which
// callers read as "closed by this process".
func TestDialFailureIsNotClosed(t *testing.T) {
	tu := startUnit(t, unitConfig(), storage.ServerConfig{})
	tr := New(Config{})
	defer tr.Close()
	_, err := tr.Dial(t.Context(), engine.PeerInfo{Unit: tu.u.ID() + 1, Addr: tu.addr})
	require.Error(t, err)
	assert.ErrorIs(t, err, engine.ErrLost)
	assert.NotErrorIs(t, err, engine.ErrClosed, "dial of another unit: %v", err)
}
