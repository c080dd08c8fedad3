//go:build linux && cgo && rdma

package rdma

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// A prepared queue pair is handshaken once. A second Handshake (the same
// peer again, or another) is refused with ErrInvalid and leaves the
// connected queue pair the first one returned as it was: in RTS, moving
// bytes. Closing the PreparedQP after its handshake leaves it too: the
// QP owns the handle from then on.
func TestSecondHandshakeIsRefused(t *testing.T) {
	p := newPair(t, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite, HandshakeOpts{})
	other, err := p.b.NewPreparedQP(p.cqb, QPCaps{MaxWR: 1, MaxSGE: 1}, 9)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, other.Close()) })

	pa, err := p.a.NewPreparedQP(p.cqa, QPCaps{MaxWR: 4, MaxSGE: 1}, 5)
	require.NoError(t, err)
	pb, err := p.b.NewPreparedQP(p.cqb, QPCaps{MaxWR: 1, MaxSGE: 1}, 6)
	require.NoError(t, err)
	qb, err := pb.Handshake(pa.Endpoint(), HandshakeOpts{Access: AccessRemoteRead | AccessRemoteWrite, Timeout: 8, RetryCnt: 1})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, qb.Close()) })
	o := HandshakeOpts{Timeout: 8, RetryCnt: 1}
	qa, err := pa.Handshake(pb.Endpoint(), o)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, qa.Close()) })

	for _, tc := range []struct {
		name   string
		remote Endpoint
	}{
		{"same peer", pb.Endpoint()},
		{"another peer", other.Endpoint()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := EmulatedCounts()
			q, err := pa.Handshake(tc.remote, o)
			assert.Nil(t, q)
			require.ErrorIs(t, err, engine.ErrInvalid)
			assert.ErrorContains(t, err, "handshaken already")
			sameCounts(t, before)
			state, err := qa.State()
			require.NoError(t, err, "the connected queue pair is still there")
			assert.Equal(t, 3, state, "the connected queue pair is still in RTS")
		})
	}

	require.NoError(t, pa.Close(), "closing the PreparedQP after its handshake")
	state, err := qa.State()
	require.NoError(t, err, "the connected queue pair outlives its PreparedQP's Close")
	assert.Equal(t, 3, state)
	_, err = qa.Post([]WR{{ID: 1, RemoteAddr: p.raddr(0), RKey: p.rb.RKey, Op: OpWrite, Signaled: 1, NumSGE: 1}},
		[]SGE{{Addr: p.laddr(0), Length: 8, LKey: p.la.LKey}})
	require.NoError(t, err)
	wcs := p.pollN(t, 1)
	assert.Equal(t, WCSuccess, wcs[0].Status)
}
