package controller

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// idxModel is the allocator as its doc comment describes it, with maps
// and slices: the queue in the order of its releases' numbers, and the
// loose indexes worked out as the free ones below next not queued.
type idxModel struct {
	next    uint64
	q       []uint64 // FIFO
	qseq    []int    // release numbers of q
	seq     int
	inUse   map[uint64]bool
	queued  map[uint64]bool
	pending map[uint64]int // a queued index alloc took: its release number
}

func newIdxModel(next uint64, reusable, used []uint64) *idxModel {
	m := &idxModel{next: next, q: slices.Clone(reusable), inUse: map[uint64]bool{}, queued: map[uint64]bool{}, pending: map[uint64]int{}}
	for k, i := range reusable {
		m.qseq = append(m.qseq, k)
		m.queued[i] = true
	}
	m.seq = len(reusable)
	for _, i := range used {
		m.inUse[i] = true
		m.next = max(m.next, i+1)
	}
	return m
}

// taken returns the indexes below next in use or queued, ascending.
func (m *idxModel) taken() []uint64 {
	var s []uint64
	for i := range m.inUse {
		if i < m.next {
			s = append(s, i)
		}
	}
	for i := range m.queued {
		s = append(s, i)
	}
	slices.Sort(s)
	return s
}

// loose returns the loose indexes as ascending, joined runs.
func (m *idxModel) loose() []span {
	out := []span{}
	lo := uint64(0)
	for _, i := range append(m.taken(), m.next) {
		if lo < i {
			out = append(out, span{lo, i})
		}
		lo = i + 1
	}
	return out
}

func (m *idxModel) free() uint64 {
	f := uint64(len(m.q)) + maxIndexes - m.next
	for _, s := range m.loose() {
		f += s.hi - s.lo
	}
	return f
}

func (m *idxModel) alloc(n int) ([]uint64, error) {
	if m.next+uint64(n) > maxIndexes && uint64(n) > m.free() {
		return nil, engine.ErrCapacity
	}
	var out []uint64
	for len(out) < n && len(m.q) > 0 {
		i := m.q[0]
		m.pending[i] = m.qseq[0]
		m.q, m.qseq = m.q[1:], m.qseq[1:]
		delete(m.queued, i)
		m.inUse[i] = true
		out = append(out, i)
	}
	for _, s := range m.loose() {
		for i := s.lo; len(out) < n && i < s.hi; i++ {
			out = append(out, i)
		}
	}
	for len(out) < n {
		out = append(out, m.next)
		m.next++
	}
	for _, i := range out {
		m.inUse[i] = true
	}
	return out, nil
}

func (m *idxModel) release(idx []uint64) {
	for _, i := range idx {
		if m.inUse[i] {
			delete(m.inUse, i)
			m.q, m.qseq = append(m.q, i), append(m.qseq, m.seq)
			m.queued[i] = true
			m.seq++
		}
	}
}

func (m *idxModel) unalloc(idx []uint64, queued int) {
	addedLoose := false
	for k, i := range idx {
		if !m.inUse[i] {
			continue
		}
		delete(m.inUse, i)
		if k < queued {
			m.q, m.qseq = append(m.q, i), append(m.qseq, m.pending[i])
			m.queued[i] = true
		} else {
			addedLoose = true
		}
	}
	// The queue in the order of the releases.
	ord := make([]int, len(m.q))
	for k := range ord {
		ord[k] = k
	}
	slices.SortStableFunc(ord, func(a, b int) int { return m.qseq[a] - m.qseq[b] })
	q, qs := make([]uint64, len(ord)), make([]int, len(ord))
	for k, o := range ord {
		q[k], qs[k] = m.q[o], m.qseq[o]
	}
	m.q, m.qseq = q, qs
	// next goes back past the loose indexes just below it.
	if tk := m.taken(); addedLoose {
		m.next = 0
		if len(tk) > 0 {
			m.next = tk[len(tk)-1] + 1
		}
	}
}

// TestIndexAllocatorAgainstAModel runs random allocs, releases, given-back
// pre-allocations, restores from snapshots and rebuilds, starting from
// state files whose indexes sit around the bitset's page boundaries, its
// directory's growth, and maxIndexes, against idxModel.
func TestIndexAllocatorAgainstAModel(t *testing.T) {
	bases := []uint64{0, 1<<pageShift - 40, 3<<pageShift - 10, 130 << pageShift, 1 << 31, maxIndexes - 300, maxIndexes - 3}
	for bi, base := range bases {
		for seed := range uint64(4) {
			t.Run(fmt.Sprintf("%d/%d", base, seed), func(t *testing.T) {
				indexModelRun(t, rand.New(rand.NewPCG(seed, uint64(bi))), base)
			})
		}
	}
}

func indexModelRun(t *testing.T, rng *rand.Rand, base uint64) {
	// A state file: next past base, a few indexes in use and queued
	// around it and below.
	next := min(base+uint64(rng.IntN(200)), maxIndexes)
	pick := func() uint64 {
		switch rng.IntN(4) {
		case 0:
			return rng.Uint64N(next + 1)
		case 1:
			return uint64(rng.IntN(300))
		default:
			return next - min(next, uint64(rng.IntN(400)))
		}
	}
	seen := map[uint64]bool{}
	var used, reusable []uint64
	for range rng.IntN(60) {
		if i := pick(); i < next && !seen[i] {
			seen[i] = true
			if rng.IntN(2) == 0 {
				used = append(used, i)
			} else {
				reusable = append(reusable, i)
			}
		}
	}
	a := newIndexAllocator()
	a.restore(next, reusable, used)
	m := newIdxModel(next, reusable, used)
	check := func(a *indexAllocator, what string) {
		t.Helper()
		require.Equal(t, m.next, a.snapshot().Next, "%s: next", what)
		require.Equal(t, append([]uint64{}, m.q...), a.snapshot().Reusable, "%s: the queue", what)
		require.Equal(t, m.loose(), append([]span{}, a.loose[a.looseHead:]...), "%s: the loose runs", what)
		u, f := a.stats()
		require.Equal(t, len(m.inUse), u, "%s: in use", what)
		require.Equal(t, m.free()-(maxIndexes-m.next), uint64(f), "%s: free below next", what)
		for i := range m.inUse {
			require.True(t, a.inUse.has(i), "%s: %d in use", what, i)
		}
		for _, i := range m.q {
			require.False(t, a.inUse.has(i), "%s: %d queued, not in use", what, i)
		}
	}
	check(a, "restored")
	type flight struct {
		idx []uint64
		t   taken
	}
	var flights []flight
	held := []uint64{}
	for step := range 300 {
		switch op := rng.IntN(10); {
		case op < 3:
			n := 1 + rng.IntN(5)
			if rng.IntN(20) == 0 {
				n = 1 + rng.IntN(300)
			}
			want, werr := m.alloc(n)
			got, tk, err := a.allocReused(n)
			if werr != nil {
				require.ErrorIs(t, err, engine.ErrCapacity, "step %d: alloc %d", step, n)
				break
			}
			require.NoError(t, err, "step %d: alloc %d", step, n)
			require.Equal(t, want, got, "step %d: alloc %d", step, n)
			if rng.IntN(3) == 0 {
				flights = append(flights, flight{got, tk})
			} else {
				held = append(held, got...)
			}
		case op < 5 && len(flights) > 0:
			k := rng.IntN(len(flights))
			f := flights[k]
			flights = slices.Delete(flights, k, k+1)
			if rng.IntN(4) == 0 && len(f.idx) > 1 { // one of them released first
				j := rng.IntN(len(f.idx))
				a.release(f.idx[j : j+1])
				m.release(f.idx[j : j+1])
			}
			a.unalloc(f.idx, f.t)
			m.unalloc(f.idx, f.t.queued)
		case op < 8 && len(held) > 0:
			rng.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
			n := 1 + rng.IntN(len(held))
			a.release(held[:n])
			m.release(held[:n])
			held = held[n:]
		case op == 8 && len(flights) == 0:
			// A state file and its load.
			var u []uint64
			for i := range m.inUse {
				u = append(u, i)
			}
			st := a.snapshot()
			r := newIndexAllocator()
			r.restore(st.Next, st.Reusable, u)
			check(r, fmt.Sprintf("step %d: restored", step))
			m2 := newIdxModel(st.Next, st.Reusable, u)
			m2.seq, m2.qseq = m.seq, m.qseq
			// A replay from the same state file with nothing after it.
			r2 := newIndexAllocator()
			r2.restore(st.Next, st.Reusable, u)
			require.NoError(t, r2.markUsed(u))
			r2.rebuild(u)
			check(r2, fmt.Sprintf("step %d: rebuilt", step))
			a = r
			m.qseq = slices.Clone(m.qseq)
			for k := range m.qseq {
				m.qseq[k] = k
			}
			m.seq = len(m.qseq)
		}
		check(a, fmt.Sprintf("step %d", step))
	}
}
