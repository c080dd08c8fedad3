//go:build linux && cgo && rdma

package rdma

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestClosedHandlesAreNotUsed: a queue pair made on a completion queue
// already destroyed, or a handshake of a prepared queue pair already
// closed, fails with ErrClosed and makes nothing. Both passed the freed C
// handle to the device (ibv_create_qp, ibv_modify_qp): a use after free.
func TestClosedHandlesAreNotUsed(t *testing.T) {
	d, err := OpenDevice("emu1")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, d.Close()) })

	cq, err := d.NewCQ(16)
	require.NoError(t, err)
	require.NoError(t, cq.Close())
	before := EmulatedCounts()
	_, err = d.NewPreparedQP(cq, QPCaps{MaxWR: 1, MaxSGE: 1}, 1)
	require.ErrorIs(t, err, engine.ErrClosed)
	assert.ErrorContains(t, err, "completion queue")
	assert.Equal(t, before, EmulatedCounts())

	live, err := d.NewCQ(16)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, live.Close()) })
	peer, err := d.NewPreparedQP(live, QPCaps{MaxWR: 1, MaxSGE: 1}, 2)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, peer.Close()) })
	p, err := d.NewPreparedQP(live, QPCaps{MaxWR: 1, MaxSGE: 1}, 3)
	require.NoError(t, err)
	require.NoError(t, p.Close())
	before = EmulatedCounts()
	q, err := p.Handshake(peer.Endpoint(), HandshakeOpts{Timeout: 8, RetryCnt: 1})
	require.ErrorIs(t, err, engine.ErrClosed)
	assert.Nil(t, q)
	assert.Equal(t, before, EmulatedCounts())
}
