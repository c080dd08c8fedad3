package storage

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// quarantinedWalk is Stats.Quarantined computed the slow way: the
// quarantined reservations' bytes plus every extent that only leases in
// quarantine hold.
func quarantinedWalk(u *Unit) int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := u.quarRes
	for _, s := range u.segs {
		for _, e := range s.byGen {
			if e.qrefs > 0 && e.refs == e.qrefs {
				n += e.blk.size
			}
		}
	}
	return n
}

// Stats reads a running sum of the bytes only the quarantine holds: it
// does not walk the extents that quarantined leases cover, so an extent's
// references changed behind the unit's bookkeeping do not show in it.
func TestStatsDoesNotWalkQuarantine(t *testing.T) {
	u := newTestUnit(t, testConfig())
	r, err := u.Reserve(t.Context(), []int64{100})
	require.NoError(t, err)
	require.NoError(t, r.Commit())
	addrs := []engine.RemoteAddr{r.Addr(0)}
	l, err := u.Acquire(addrs)
	require.NoError(t, err)
	u.quarantineHolds(nil, []*Lease{l})
	require.NoError(t, u.Free(addrs))
	want := r.exts[0].blk.size
	require.Equal(t, want, u.Stats().Quarantined, "quarantined bytes")

	u.mu.Lock()
	r.exts[0].refs++ // a holder Stats cannot know of but by walking
	u.mu.Unlock()
	got := u.Stats().Quarantined
	u.mu.Lock()
	r.exts[0].refs--
	u.mu.Unlock()
	assert.Equal(t, want, got, "quarantined bytes: Stats walked the extents")

	l.Release()
	u.quarantineEnded()
	assert.Zero(t, u.Stats().Quarantined, "quarantined bytes after the release")
}

// Stats.Quarantined's running sum agrees with a walk through random
// acquires, quarantines, frees and releases.
func TestStatsQuarantinedMatchesWalk(t *testing.T) {
	u := newTestUnit(t, testConfig())
	rng := rand.New(rand.NewPCG(1, 2))
	type ext struct {
		cells []engine.RemoteAddr
		freed []bool
	}
	var exts []*ext
	var leases []*Lease
	for step := range 2000 {
		switch op := rng.IntN(5); {
		case op == 0 || len(exts) == 0:
			r, err := u.Reserve(t.Context(), []int64{int64(64 + rng.IntN(4096))})
			require.NoError(t, err)
			require.NoError(t, r.Commit())
			a := r.Addr(0)
			half := a.Len / 2
			exts = append(exts, &ext{
				cells: []engine.RemoteAddr{{Segment: a.Segment, Gen: a.Gen, Offset: a.Offset, Len: half},
					{Segment: a.Segment, Gen: a.Gen, Offset: a.Offset + half, Len: a.Len - half}},
				freed: make([]bool, 2),
			})
		case op == 1:
			x := exts[rng.IntN(len(exts))]
			var addrs []engine.RemoteAddr
			for i, c := range x.cells {
				if !x.freed[i] {
					addrs = append(addrs, c)
				}
			}
			if len(addrs) == 0 {
				continue
			}
			l, err := u.Acquire(addrs)
			require.NoError(t, err)
			leases = append(leases, l)
		case op == 2 && len(leases) > 0:
			u.quarantineHolds(nil, []*Lease{leases[rng.IntN(len(leases))]})
		case op == 3:
			x := exts[rng.IntN(len(exts))]
			i := rng.IntN(2)
			if !x.freed[i] {
				require.NoError(t, u.Free(x.cells[i:i+1]))
				x.freed[i] = true
			}
		case op == 4 && len(leases) > 0:
			i := rng.IntN(len(leases))
			leases[i].Release()
			leases = append(leases[:i], leases[i+1:]...)
		}
		require.Equal(t, quarantinedWalk(u), u.Stats().Quarantined, "step %d: quarantined bytes", step)
	}
}
