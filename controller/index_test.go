package controller

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestReplayOfReusedIndexesCostsTheIndexes: a replay marks each index a
// logged insert took again, and those did not reach the log in the order
// the reuse queue held them (here a partition's pre-allocation took the
// queue's head and was logged last, after inserts took the rest, some
// cleared again). Replaying 4× the indexes must not cost 16× (it did: each
// index was searched for in the queue and deleted from its middle, moving
// what followed), and leaves the queue the live allocator had: which
// indexes come back next, in what order.
func TestReplayOfReusedIndexesCostsTheIndexes(t *testing.T) {
	replay := func(n int) int {
		queue := make([]uint64, n+1)
		for i := range queue {
			queue[i] = uint64(i)
		}
		// The live allocator: the pre-allocation takes the head, inserts
		// take the rest one at a time, every other one is cleared.
		live := newIndexAllocator()
		live.restore(uint64(n+1), queue, nil)
		pre, err := live.alloc(1)
		require.NoError(t, err)
		var inserted, cleared []uint64
		for range n {
			idx, err := live.alloc(1)
			require.NoError(t, err)
			inserted = append(inserted, idx...)
		}
		for k, i := range inserted {
			if k%2 == 0 {
				cleared = append(cleared, i)
			}
		}
		live.release(cleared)
		fresh, err := live.alloc(3) // two cleared ones back, then one new
		require.NoError(t, err)

		// The replay, in the log's order.
		r := newIndexAllocator()
		r.restore(uint64(n+1), queue, nil)
		for _, i := range inserted {
			r.markUsed([]uint64{i})
		}
		r.release(cleared)
		r.markUsed(fresh)
		r.markUsed(pre)
		var used []uint64
		for i := range live.next {
			if live.inUse.has(i) {
				used = append(used, i)
			}
		}
		r.rebuild(used)
		require.Equal(t, live.snapshot(), r.snapshot(), "the queue and next after replaying %d indexes", n)
		la, lr := live.stats()
		ra, rr := r.stats()
		require.Equal(t, [2]int{la, lr}, [2]int{ra, rr}, "allocated and reusable after replaying %d indexes", n)
		return r.work
	}
	small, large := replay(1000), replay(4000)
	require.LessOrEqualf(t, large, 5*max(small, 1), "replaying 1000 reused indexes did %d units of queue work, 4000 did %d", small, large)
}

// TestReplayOfChurnKeepsTheQueueBounded: a log that takes and clears the
// same few indexes many times replays to the queue the live allocator
// had, and the stale entries replay leaves behind (see markUsed) do not
// pile up: the queue stays within a bound of the indexes, not the log.
func TestReplayOfChurnKeepsTheQueueBounded(t *testing.T) {
	live, r := newIndexAllocator(), newIndexAllocator()
	longest := 0
	for round := range 5000 {
		idx, err := live.alloc(8)
		require.NoError(t, err)
		r.markUsed(idx)
		drop := idx[round%2:] // one of them stays every other round
		live.release(drop)
		r.release(drop)
		longest = max(longest, len(r.reusable))
	}
	var used []uint64
	for i := range live.next {
		if live.inUse.has(i) {
			used = append(used, i)
		}
	}
	r.rebuild(used)
	require.Equal(t, live.snapshot(), r.snapshot(), "the queue and next after replay")
	require.LessOrEqualf(t, longest, 3*int(live.next)+1024+8, "the queue reached %d entries for %d indexes", longest, live.next)
}

// TestLoadOfAHighNextCostsTheIndexesInUse: a state file may set the
// allocator's next to maxIndexes with a few rows in use, one of them
// (and one queued) just below it. Loading it must cost what is in use
// and queued, not next (the loose indexes below it were a slice of them:
// 32 GiB; the indexes in use a bit each up to the highest: 512 MiB), and
// the next inserts get the queue, then the lowest loose indexes.
func TestLoadOfAHighNextCostsTheIndexesInUse(t *testing.T) {
	dir := t.TempDir()
	head := &wirepb.StateHeader{Format: stateFormat, Version: stateVersion, NextIndex: maxIndexes, NextGen: 5, NextUnitId: 1,
		Reusable: []uint64{7, maxIndexes - 2, 3}}
	parts := []*wirepb.StatePartition{{Partition: "p", Gen: 1}}
	rows := [][]*wirepb.StateRow{{{Index: 1}, {Index: maxIndexes - 1}, {Index: 5}}}
	writeStateFile(t, filepath.Join(dir, stateFile), head, parts, rows, nil)
	c := newController(t, DefaultConfig())

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := c.Load(dir)
	require.NoError(t, err)
	runtime.ReadMemStats(&after)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(64<<20), "bytes allocated loading a state file with next %d and 3 rows in use", head.NextIndex)

	allocated, free := c.Indexes()
	require.Equal(t, [2]int{3, maxIndexes - 3}, [2]int{allocated, free}, "indexes allocated and free")
	m := insert(t, c, "p", 7, "x")
	require.Equal(t, []uint64{7, maxIndexes - 2, 3, 0, 2, 4, 6}, m.Indexes, "the queue, then the lowest loose indexes")
	require.Equal(t, uint64(maxIndexes), c.idx.snapshot().Next, "next")
}

// TestReplayOfAHighIndexCostsTheIndexesInUse: a log may take an index
// just below maxIndexes among a few low ones. The replay, and the
// allocator it rebuilds, cost the indexes in use (a page of bits each
// here), not a bit or an entry for every index below next.
func TestReplayOfAHighIndexCostsTheIndexesInUse(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	r := newIndexAllocator()
	r.markUsed([]uint64{maxIndexes - 1, 3, 9})
	r.release([]uint64{9, 3})
	r.rebuild([]uint64{maxIndexes - 1})
	runtime.ReadMemStats(&after)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(16<<20), "bytes allocated replaying index %d", uint64(maxIndexes-1))
	require.Equal(t, indexState{Next: maxIndexes, Reusable: []uint64{9, 3}}, r.snapshot())
	idx, err := r.alloc(4)
	require.NoError(t, err)
	require.Equal(t, []uint64{9, 3, 0, 1}, idx, "the queue, then the lowest loose indexes")
}

// TestBitsetPages: a bitset in pages made as indexes arrive, in any
// order, holds what a map would; a lone high index costs its page and
// the directory, and a copy of the slice is a copy of the set.
func TestBitsetPages(t *testing.T) {
	var b bitset
	b.set(maxIndexes - 1)
	require.LessOrEqual(t, len(b), 1+maxIndexes>>pageShift+pageWords, "words for one index at %d", uint64(maxIndexes-1))
	want := map[uint64]bool{maxIndexes - 1: true}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		i := rng.Uint64N(1 << 22)
		if rng.IntN(3) == 0 {
			require.Equal(t, want[i], b.clear(i), "clear %d", i)
			delete(want, i)
			continue
		}
		if rng.IntN(2) == 0 {
			b.set(i)
		} else {
			b.setAll([]uint64{i})
		}
		want[i] = true
	}
	cp := slices.Clone(b)
	cp.set(5)
	cp.clear(maxIndexes - 1)
	for i := range uint64(1 << 22) {
		if b.has(i) != want[i] {
			t.Fatalf("index %d: has %v, want %v", i, b.has(i), want[i])
		}
	}
	require.True(t, b.has(maxIndexes-1))
	require.Equal(t, want[5], b.has(5), "the copy's changes stay in the copy")
}

// TestReplayRefusesAnIndexBeyondMaxIndexes: a log record that takes an
// index at or beyond maxIndexes (a partition's reserved rows, or rows
// inserted) is damage, refused with the index named, as a state file's
// is: it made the allocator's bitset a bit for every index below it (at
// 2^62, a slice too large to make: a panic), and its next could wrap.
func TestReplayRefusesAnIndexBeyondMaxIndexes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		index uint64
		op    func(keepGen uint64) *wirepb.LogOp
	}{
		{"reserved", 1 << 62, func(uint64) *wirepb.LogOp {
			return &wirepb.LogOp{Op: &wirepb.LogOp_Partition{Partition: &wirepb.PartitionOp{Partition: "new", Gen: 7, Reserved: []uint64{2, 1 << 62}}}}
		}},
		{"inserted", maxIndexes, func(gen uint64) *wirepb.LogOp {
			return &wirepb.LogOp{Op: &wirepb.LogOp_Rows{Rows: &wirepb.RowsOp{Partition: "keep", Gen: gen, Indexes: []uint64{maxIndexes}}}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := Config{SnapshotBytes: 1 << 40}
			c := openDurable(t, dir, cfg)
			insert(t, c, "keep", 2, "x")
			c.log(tc.op(c.parts["keep"].gen))
			require.NoError(t, c.WaitDurable(context.Background()))
			crash(t, c)
			cfg.Dir = dir
			_, err := New(cfg)
			require.ErrorIs(t, err, engine.ErrCorrupt)
			require.ErrorContains(t, err, "index "+strconv.FormatUint(tc.index, 10)+" is not below 4294967296")
		})
	}
}

// TestAllocStopsAtMaxIndexes: minting stops at maxIndexes (no state file
// or log past it would load): an alloc that needs more than the free
// indexes is refused whole, and one that fits still gets them.
func TestAllocStopsAtMaxIndexes(t *testing.T) {
	a := &indexAllocator{next: maxIndexes - 2}
	_, err := a.alloc(3)
	require.ErrorIs(t, err, engine.ErrCapacity)
	require.ErrorContains(t, err, "allocate 3 rows: 2 of the 4294967296 indexes are free")
	idx, err := a.alloc(2)
	require.NoError(t, err)
	require.Equal(t, []uint64{maxIndexes - 2, maxIndexes - 1}, idx)
	_, err = a.alloc(1)
	require.ErrorIs(t, err, engine.ErrCapacity)
	a.release(idx[:1])
	idx, err = a.alloc(1)
	require.NoError(t, err)
	require.Equal(t, []uint64{maxIndexes - 2}, idx, "a released one")
	require.Equal(t, uint64(maxIndexes), a.snapshot().Next)
}
