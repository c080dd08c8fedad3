package controller

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// readySet against a plain map, with random adds and removes across
// pages, and partial walks from the start.
func TestReadySetMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	s := newReadySet()
	ref := map[uint64]bool{}
	for i := range 30000 {
		gi := uint64(rng.IntN(6 * readyPageBits))
		if rng.IntN(3) == 0 {
			s.remove(gi)
			delete(ref, gi)
		} else {
			s.add(gi)
			ref[gi] = true
		}
		require.Equal(t, len(ref), s.Len(), "step %d: Len", i)
		probe := uint64(rng.IntN(6 * readyPageBits))
		require.Equal(t, ref[probe], s.has(probe), "step %d: has(%d)", i, probe)
		if i%500 == 0 {
			want := make([]uint64, 0, len(ref))
			for k := range ref {
				want = append(want, k)
			}
			slices.Sort(want)
			var got []uint64
			s.Ascend(func(gi uint64) bool { got = append(got, gi); return true })
			require.Equal(t, want, append([]uint64{}, got...), "step %d: Ascend", i)
			limit := min(len(want), 100)
			got = got[:0]
			s.Ascend(func(gi uint64) bool { got = append(got, gi); return len(got) < limit })
			if limit > 0 {
				require.Equal(t, want[:limit], got, "step %d: Ascend stopped after %d", i, limit)
			}
		}
	}
	for k := range ref {
		s.remove(k)
	}
	require.Zero(t, s.Len())
	require.Empty(t, s.pages, "empty pages are dropped")
	require.Zero(t, s.order.Len())
}
