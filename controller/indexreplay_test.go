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
// allocator the old replay (oldReplay) leaves, the free indexes coming back
// in the same order, and the live allocator's queue, loose indexes, next
// and indexes in use, so that the next inserts get the same indexes: also
// where a given-back pre-allocation's minted indexes could not take next
// back (they joined the live queue's tail, where a replay, which never saw
// them, put them after every later release).
func TestReplayOfIndexesMatchesTheLiveAllocator(t *testing.T) {
	for seed := range uint64(6) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { indexReplayModel(t, seed) })
	}
}

// indexRec is a log record of the model: indexes taken or released.
type indexRec struct {
	release bool
	idx     []uint64
}

// indexSnap is the live allocator at a state file of the model.
type indexSnap struct {
	at    int // log records before it
	st    indexState
	loose []uint64 // the live allocator's, which no state file keeps
	used  []uint64 // the indexes the partitions hold
}

func indexReplayModel(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	type flight struct {
		part       int
		idx        []uint64
		reused     taken
		prealloc   bool
		cancelable bool
	}
	live := newIndexAllocator()
	var log []indexRec
	held := map[int][]uint64{} // partition → indexes its logged rows hold
	var flights []flight
	snaps := []indexSnap{{st: live.snapshot(), loose: looseOf(live)}}
	givenBackLoose := 0 // pre-allocations given back after later ones were minted
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
		log = append(log, indexRec{idx: f.idx})
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
			if minted := f.idx[f.reused.queued+f.reused.loose:]; len(minted) > 0 && minted[len(minted)-1]+1 != live.snapshot().Next {
				givenBackLoose++
			}
			live.unalloc(f.idx, f.reused)
		case op < 10 && len(held[p]) > 0: // clear some rows: logged, then released
			idx := held[p]
			rng.Shuffle(len(idx), func(i, j int) { idx[i], idx[j] = idx[j], idx[i] })
			n := 1 + rng.IntN(len(idx))
			out := slices.Clone(idx[:n])
			held[p] = idx[n:]
			log = append(log, indexRec{release: true, idx: out})
			live.release(out)
		case op < 11 && len(held[p]) > 0 && rng.IntN(3) == 0: // clear a partition
			out := slices.Sorted(slices.Values(held[p]))
			delete(held, p)
			log = append(log, indexRec{release: true, idx: out})
			live.release(out)
		case op == 11 && rng.IntN(10) == 0: // a snapshot sees no request in flight (it takes every lock)
			for len(flights) > 0 {
				land(rng.IntN(len(flights)))
			}
			snaps = append(snaps, indexSnap{at: len(log), st: live.snapshot(), loose: looseOf(live), used: usedNow()})
		}
	}
	for len(flights) > 0 {
		land(rng.IntN(len(flights)))
	}
	snaps = append(snaps, indexSnap{at: len(log), st: live.snapshot(), loose: looseOf(live), used: usedNow()})
	wantUsed, _ := live.stats()
	require.Len(t, snaps[len(snaps)-1].used, wantUsed, "the indexes the partitions hold")
	// From every snapshot to every later one (and to the end): a replay
	// compared as it ends, not only after the rest of the log, where the
	// next inserts may have taken the indexes it ordered differently.
	compactions := 0
	for k, from := range snaps {
		for _, to := range snaps[k:] {
			compactions += replayIndexes(t, from, to, log[from.at:to.at])
		}
	}
	t.Logf("%d log records, %d snapshots, next %d, %d pre-allocations given back loose, %d mid-replay compactions", len(log), len(snaps), live.next, givenBackLoose, compactions)
}

// looseOf returns a's loose indexes.
func looseOf(a *indexAllocator) []uint64 {
	out := []uint64{}
	for _, s := range a.loose[a.looseHead:] {
		for i := s.lo; i < s.hi; i++ {
			out = append(out, i)
		}
	}
	return out
}

// replayIndexes restores an allocator from the state file at from,
// replays log (the records from there to to), and requires that it agree
// with the old replay and with the live allocator at to: the queue, the
// loose indexes, next, and the next indexes handed out. It returns how
// often markUsed dropped stale queue entries.
func replayIndexes(t *testing.T, from, to indexSnap, log []indexRec) (compactions int) {
	t.Helper()
	r, o := newIndexAllocator(), &oldReplay{}
	r.restore(from.st.Next, from.st.Reusable, from.used)
	o.restore(from.st.Next, from.st.Reusable, from.used)
	for _, e := range log {
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
	want, wantLoose, used := to.st, to.loose, to.used
	r.rebuild(used)
	got := r.snapshot()
	at := fmt.Sprintf("replay of log records %d to %d", from.at, to.at)
	old := o.rebuild(used)
	require.Equal(t, old.Next, got.Next, "%s: next, against the old replay", at)
	require.Equal(t, old.Reusable, append(append([]uint64{}, got.Reusable...), looseOf(r)...), "%s: the free indexes in the order they come back, against the old replay", at)
	require.Equal(t, want, got, "%s: the queue and next, against the live allocator", at)
	require.Equal(t, wantLoose, looseOf(r), "%s: the loose indexes, against the live allocator", at)
	a, q := r.stats()
	require.Equal(t, [2]int{len(used), len(want.Reusable) + len(wantLoose)}, [2]int{a, q}, "%s: indexes in use and free", at)
	for _, i := range used {
		require.True(t, r.inUse.has(i), "%s: index %d is held, not in use", at, i)
	}
	// The next inserts get the indexes the live allocator would give,
	// after the live allocator's state file too.
	l2 := newIndexAllocator()
	l2.restore(want.Next, want.Reusable, used)
	n := len(want.Reusable) + len(wantLoose) + 2
	a2, err := l2.alloc(n)
	require.NoError(t, err)
	b, err := r.alloc(n)
	require.NoError(t, err)
	require.Equal(t, a2, b, "%s: the next %d indexes", at, n)
	return compactions
}

// replayOf is a replay of the log that saw none of a's given-back
// pre-allocations: a state file of a (no request in flight) restored
// with the indexes in use, as recover and a checkpoint load start.
func replayOf(a *indexAllocator) *indexAllocator {
	var used []uint64
	for i := range a.next {
		if a.inUse.has(i) {
			used = append(used, i)
		}
	}
	st := a.snapshot()
	r := newIndexAllocator()
	r.restore(st.Next, st.Reusable, used)
	return r
}

// TestGivenBackPreAllocationsKeepTheQueueOrder: two new partitions take
// the queue's first indexes for their pre-allocations, one after the
// other, and both are refused, the first first. A replay, which never saw
// them, has the queue as the releases left it; the live queue gave the
// second's back in front of the first's.
func TestGivenBackPreAllocationsKeepTheQueueOrder(t *testing.T) {
	a := newIndexAllocator()
	idx, err := a.alloc(6)
	require.NoError(t, err)
	a.release(idx[:4]) // the queue: 0 1 2 3
	first, t1, err := a.allocReused(1)
	require.NoError(t, err)
	second, t2, err := a.allocReused(2)
	require.NoError(t, err)
	require.Equal(t, []uint64{0}, first)
	require.Equal(t, []uint64{1, 2}, second)
	a.unalloc(first, t1)
	a.unalloc(second, t2)
	require.Equal(t, indexState{Next: 6, Reusable: []uint64{0, 1, 2, 3}}, a.snapshot(), "the queue after both are given back")
	require.Equal(t, replayOf(a).snapshot(), a.snapshot())
	got, err := a.alloc(4)
	require.NoError(t, err)
	require.Equal(t, []uint64{0, 1, 2, 3}, got, "the next inserts")
}

// TestGivenBackPreAllocationsTakeNextBack: two new partitions mint
// indexes for their pre-allocations, the second after the first, and both
// are refused, the first first: its indexes are loose (minted after them,
// the second's hold next) until the second's give next back, and then
// next goes back past them too, as a replay, which never saw either,
// leaves it: the same next and free indexes (stats), not next 4 with 2
// free.
func TestGivenBackPreAllocationsTakeNextBack(t *testing.T) {
	a := newIndexAllocator()
	first, t1, err := a.allocReused(2)
	require.NoError(t, err)
	second, t2, err := a.allocReused(2)
	require.NoError(t, err)
	a.unalloc(first, t1)
	a.unalloc(second, t2)
	r := replayOf(a)
	require.Equal(t, r.snapshot(), a.snapshot(), "the queue and next against a replay")
	require.Equal(t, looseOf(r), looseOf(a), "the loose indexes against a replay")
	ua, fa := a.stats()
	ur, fr := r.stats()
	require.Equal(t, [2]int{ur, fr}, [2]int{ua, fa}, "indexes in use and free against a replay")
	require.Equal(t, indexState{Next: 0, Reusable: []uint64{}}, a.snapshot())
}
