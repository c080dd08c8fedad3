package controller

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// oldReplay is the replay of the index allocator before markUsed left
// stale entries in the queue (1a62409): markUsed took each index out of
// the queue where it stood, and rebuild kept the queue's order. The
// randomized test below holds the allocator's replay to it.
type oldReplay struct {
	next  uint64
	q     []uint64
	inUse map[uint64]bool
}

func (o *oldReplay) restore(next uint64, q, used []uint64) {
	o.next, o.q, o.inUse = next, slices.Clone(q), map[uint64]bool{}
	for _, i := range used {
		o.inUse[i] = true
		o.next = max(o.next, i+1)
	}
}

func (o *oldReplay) markUsed(idx []uint64) {
	for _, i := range idx {
		if o.inUse[i] {
			continue
		}
		o.inUse[i] = true
		if i >= o.next {
			o.next = i + 1
		} else if k := slices.Index(o.q, i); k >= 0 {
			o.q = slices.Delete(o.q, k, k+1)
		}
	}
}

func (o *oldReplay) release(idx []uint64) {
	for _, i := range idx {
		if o.inUse[i] {
			delete(o.inUse, i)
			o.q = append(o.q, i)
		}
	}
}

func (o *oldReplay) rebuild(used []uint64) indexState {
	held := map[uint64]bool{}
	for _, i := range used {
		held[i] = true
		o.next = max(o.next, i+1)
	}
	queued := map[uint64]bool{}
	q := []uint64{}
	for _, i := range o.q {
		if i < o.next && !held[i] && !queued[i] {
			queued[i] = true
			q = append(q, i)
		}
	}
	for i := range o.next {
		if !held[i] && !queued[i] {
			q = append(q, i)
		}
	}
	return indexState{Next: o.next, Reusable: q}
}

// TestReplayOfIndexesMatchesTheLiveAllocator runs a live allocator as the
// controller does, with requests in flight whose records reach the log
// later and in another order than they took their indexes (inserts, new
// partitions' pre-allocations, kept or given back with unalloc), clears of
// rows and partitions (logged, then released), and snapshots between
// them; churn on few indexes makes markUsed drop stale entries mid-replay.
// Replaying the log from the start and from every snapshot must leave the
// allocator the old replay (oldReplay) leaves, and the live allocator's
// queue, next and indexes in use, except where a given-back
// pre-allocation's fresh indexes joined the live queue's tail (a replay,
// which never saw them, puts them after every release, ascending).
func TestReplayOfIndexesMatchesTheLiveAllocator(t *testing.T) {
	for seed := range uint64(6) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { indexReplayModel(t, seed) })
	}
}

func indexReplayModel(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	type rec struct {
		release bool
		idx     []uint64
	}
	type snap struct {
		at   int // log records before it
		st   indexState
		used []uint64
	}
	type flight struct {
		part       int
		idx        []uint64
		reused     int
		prealloc   bool
		cancelable bool
	}
	live := newIndexAllocator()
	var log []rec
	held := map[int][]uint64{} // partition → indexes its logged rows hold
	var flights []flight
	snaps := []snap{{}}
	exactFrom := 0 // replays from snaps[exactFrom:] leave the live queue
	usedNow := func() []uint64 {
		var out []uint64
		for _, idx := range held {
			out = append(out, idx...)
		}
		for _, f := range flights {
			out = append(out, f.idx...)
		}
		slices.Sort(out)
		return out
	}
	land := func(k int) {
		f := flights[k]
		flights = slices.Delete(flights, k, k+1)
		log = append(log, rec{idx: f.idx})
		held[f.part] = append(held[f.part], f.idx...)
	}
	parts := 1 + rng.IntN(4)
	steps := 3000
	for range steps {
		p := rng.IntN(parts)
		switch op := rng.IntN(12); {
		case op < 3: // an insert takes indexes; its record comes later
			idx, err := live.alloc(1 + rng.IntN(3))
			require.NoError(t, err)
			flights = append(flights, flight{part: p, idx: idx})
		case op < 4: // a new partition's pre-allocation
			idx, reused, err := live.allocReused(1 + rng.IntN(4))
			require.NoError(t, err)
			flights = append(flights, flight{part: p, idx: idx, reused: reused, prealloc: true, cancelable: true})
		case op < 7 && len(flights) > 0: // a request logs (in any order)
			land(rng.IntN(len(flights)))
		case op < 8 && len(flights) > 0: // a new partition given back
			k := rng.IntN(len(flights))
			f := flights[k]
			if !f.cancelable {
				break
			}
			flights = slices.Delete(flights, k, k+1)
			fresh := f.idx[f.reused:]
			if st := live.snapshot(); len(fresh) > 0 && fresh[len(fresh)-1]+1 != st.Next {
				exactFrom = len(snaps) // fresh ones join the live queue's tail
			}
			live.unalloc(f.idx, f.reused)
		case op < 10 && len(held[p]) > 0: // clear some rows: logged, then released
			idx := held[p]
			rng.Shuffle(len(idx), func(i, j int) { idx[i], idx[j] = idx[j], idx[i] })
			n := 1 + rng.IntN(len(idx))
			out := slices.Clone(idx[:n])
			held[p] = idx[n:]
			log = append(log, rec{release: true, idx: out})
			live.release(out)
		case op < 11 && len(held[p]) > 0 && rng.IntN(3) == 0: // clear a partition
			out := slices.Sorted(slices.Values(held[p]))
			delete(held, p)
			log = append(log, rec{release: true, idx: out})
			live.release(out)
		case op == 11 && rng.IntN(10) == 0: // a snapshot sees no request in flight (it takes every lock)
			for len(flights) > 0 {
				land(rng.IntN(len(flights)))
			}
			snaps = append(snaps, snap{at: len(log), st: live.snapshot(), used: usedNow()})
		}
	}
	for len(flights) > 0 {
		land(rng.IntN(len(flights)))
	}
	want := live.snapshot()
	used := usedNow()
	wantUsed, _ := live.stats()
	require.Len(t, used, wantUsed, "the indexes the partitions hold")
	compactions := 0
	for k, s := range snaps {
		exact := k >= exactFrom
		r, o := newIndexAllocator(), &oldReplay{}
		r.restore(s.st.Next, s.st.Reusable, s.used)
		o.restore(s.st.Next, s.st.Reusable, s.used)
		for _, e := range log[s.at:] {
			if e.release {
				r.release(e.idx)
				o.release(e.idx)
				continue
			}
			before := len(r.reusable) - r.head
			r.markUsed(e.idx)
			o.markUsed(e.idx)
			if len(r.reusable)-r.head < before {
				compactions++
			}
		}
		r.rebuild(used)
		got := r.snapshot()
		require.Equal(t, o.rebuild(used), got, "replay from log record %d of %d: the queue and next, against the old replay", s.at, len(log))
		if exact {
			require.Equal(t, want, got, "replay from log record %d of %d: the queue and next, against the live allocator", s.at, len(log))
		} else {
			require.ElementsMatch(t, want.Reusable, got.Reusable, "replay from log record %d of %d: the free indexes", s.at, len(log))
			require.Equal(t, want.Next, got.Next, "replay from log record %d of %d: next", s.at, len(log))
		}
		a, q := r.stats()
		require.Equal(t, [2]int{wantUsed, len(want.Reusable)}, [2]int{a, q}, "replay from log record %d: indexes in use and free", s.at)
		for _, i := range used {
			require.True(t, r.inUse.has(i), "replay from log record %d: index %d is held, not in use", s.at, i)
		}
		// The next inserts get the indexes the live allocator would give.
		if exact {
			l2 := newIndexAllocator()
			l2.restore(want.Next, want.Reusable, used)
			n := len(want.Reusable) + 2
			a, err := l2.alloc(n)
			require.NoError(t, err)
			b, err := r.alloc(n)
			require.NoError(t, err)
			require.Equal(t, a, b, "replay from log record %d: the next %d indexes", s.at, n)
		}
	}
	t.Logf("%d log records, %d snapshots (%d compared exactly with the live queue), next %d, %d mid-replay compactions", len(log), len(snaps), len(snaps)-exactFrom, want.Next, compactions)
}
