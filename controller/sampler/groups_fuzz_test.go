package sampler

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tqgo/tq/engine"
)

// FuzzGroups checks GRPO's groups against a plain statement of the rule
// (see selectGroups) on random puts: random sizes, indexes drawn in a
// random order (freed indexes reused), some rows not ready. Groups of
// puts of n rows or more are their rows k·n … k·n+n−1, all ready, in the
// order the walk by index sees their last row; then the groups of smaller
// puts' ready rows, windows over them in creation order. A batch is the
// first groups of that list.
func FuzzGroups(f *testing.F) {
	for _, s := range []uint64{1, 2, 3, 42, 1 << 40} {
		for n := range uint8(5) {
			f.Add(s, n, uint8(3))
		}
	}
	f.Fuzz(func(t *testing.T, seed uint64, nb, batchGroups uint8) {
		r := rand.New(rand.NewPCG(seed, 7))
		n := 1 + int(nb%5)
		rows := 1 + r.IntN(60)
		idx := r.Perm(2 * rows)[:rows] // indexes in the order they were handed out
		var ps [][]uint64
		for at := 0; at < rows; {
			size := min(1+r.IntN(2*n+1), rows-at)
			p := make([]uint64, size)
			for j := range p {
				p[j] = uint64(idx[at+j])
			}
			ps, at = append(ps, p), at+size
		}
		origin := puts(ps...)
		var ready engine.ReadySlice
		isReady := map[uint64]bool{}
		for _, gi := range idx {
			if r.IntN(5) > 0 {
				ready = append(ready, uint64(gi))
				isReady[uint64(gi)] = true
			}
		}
		slices.Sort(ready)

		// The rule, stated plainly.
		type group struct {
			rows []uint64
			last uint64 // highest index: when the walk has it whole
		}
		var whole []group
		var small []uint64 // ready rows of small puts, in creation order
		for _, p := range ps {
			if len(p) < n {
				for _, gi := range p {
					if isReady[gi] {
						small = append(small, gi)
					}
				}
				continue
			}
			for k := 0; k+n <= len(p); k += n {
				g := p[k : k+n]
				if !slices.ContainsFunc(g, func(gi uint64) bool { return !isReady[gi] }) {
					whole = append(whole, group{rows: g, last: slices.Max(g)})
				}
			}
		}
		slices.SortFunc(whole, func(a, b group) int { return cmp.Compare(a.last, b.last) })
		var want []uint64
		for _, g := range whole {
			want = append(want, g.rows...)
		}
		if n == 1 {
			// Every row is a group of its own, by index (the reference).
			want = slices.Clone([]uint64(ready))
		} else {
			for k := 0; k+n <= len(small); {
				w := small[k : k+n]
				consecutive := true
				for j := 1; j < n; j++ {
					consecutive = consecutive && origin(w[j]).Created == origin(w[0]).Created+uint64(j)
				}
				if consecutive {
					want = append(want, w...)
					k += n
				} else {
					k++
				}
			}
		}

		all, err := selectGroups("grpo", ready, origin, 1<<20*n, n, true)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(all, want) && !(len(all) == 0 && len(want) == 0) {
			t.Fatalf("n=%d puts %v ready %v:\n got %v\nwant %v", n, ps, ready, all, want)
		}
		// A batch is the first groups; with fewer ready, none unless final.
		b := n * (1 + int(batchGroups%8))
		got, err := selectGroups("grpo", ready, origin, b, n, false)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case len(want) >= b && !slices.Equal(got, want[:b]):
			t.Fatalf("n=%d batch %d: got %v, want %v (of %v)", n, b, got, want[:b], want)
		case len(want) < b && got != nil:
			t.Fatalf("n=%d batch %d: got %v from only %v", n, b, got, want)
		}
	})
}
