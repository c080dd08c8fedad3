//go:build linux && cgo && rdma

package rdma

import (
	"bytes"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// A write that fails after it posted RDMA WRITEs gives its reservation
// back only once none of them can land any more: on hardware a WRITE of
// the failed call may still be in the network (held by PFC pauses, say)
// when the client tears its queue pairs down, and the unit's queue pairs
// would take it into the extent the abort freed, which another writer may
// hold by then. The emulator copies at post, so the late packet is a
// WRITE posted, after the abort, on the client's old queue pair (kept up
// by testHookBreakQPs): it must not reach the unit's memory.
func TestAbortedWriteDoesNotLandLate(t *testing.T) {
	const slot = 4096
	_, u, addr := inProcUnit(t)
	tr := newTransport(t, Config{Device: "emu0", QPs: 1, SliceSize: slot, Staging: 16 * slot, AckTimeout: 10, RetryCnt: 1})
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: 7, Addr: addr})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	dev, err := tr.Device()
	require.NoError(t, err)

	var kept *clientQPs
	t.Cleanup(func() {
		if kept != nil {
			assert.NoError(t, kept.Close())
		}
	})
	testHookBreakQPs = func(set *clientQPs) bool {
		if kept != nil {
			return false
		}
		kept = set
		return true
	}
	// Two work requests in one chain on the one queue pair: the first is
	// posted (it writes), the second's post fails.
	require.NoError(t, dev.InjectFault(1, 1, 1, int(syscall.EIO)))
	_, err = c.Write(t.Context(), [][][]byte{{bytes.Repeat([]byte{0x11}, 2*slot)}})
	testHookBreakQPs = nil
	require.Error(t, err)
	require.NotNil(t, kept, "the failed write tore its queue pairs down")
	st := u.Stats()
	require.Zero(t, st.OpenReservations, "the failed write's reservation was given back")
	require.Zero(t, st.Used, "the failed write's extent was freed")

	// Another client gets the freed extent and writes it.
	c2, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: 7, Addr: addr})
	require.NoError(t, err)
	t.Cleanup(func() { c2.Close() })
	fresh := bytes.Repeat([]byte{0x22}, 2*slot)
	addrs, err := c2.Write(t.Context(), [][][]byte{{fresh}})
	require.NoError(t, err)

	// The failed write's late packet.
	stg := tr.staging
	s := <-stg.free
	defer func() { stg.free <- s }()
	local := stg.buf(s)[:slot]
	for i := range local {
		local[i] = 0xee
	}
	c.mu.RLock()
	seg := c.segs[addrs[0].Segment]
	c.mu.RUnlock()
	_, err = kept.qps[0].Post([]WR{{ID: 1 << 62, RemoteAddr: seg.addr + addrs[0].Offset, RKey: seg.rkey, Op: OpWrite, Signaled: 1, NumSGE: 1}},
		[]SGE{{Addr: uint64(sliceAddr(local)), Length: uint32(len(local)), LKey: stg.mr.LKey}})
	require.NoError(t, err)

	got := make([]byte, len(fresh))
	require.NoError(t, c2.Read(t.Context(), addrs, [][]byte{got}))
	assert.True(t, bytes.Equal(fresh, got), "a WRITE of the aborted write landed in the extent another writer holds since")

	// The connection that failed works on.
	addrs, err = c.Write(t.Context(), [][][]byte{{fresh}})
	require.NoError(t, err)
	require.NoError(t, c.Read(t.Context(), addrs, [][]byte{got}))
	assert.Equal(t, fresh, got)
}
