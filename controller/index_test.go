package controller

import (
	"path/filepath"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

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
// allocator's next to maxIndexes with a few rows in use. Loading it must
// cost what is in use and queued, not next (the loose indexes below it
// were a slice of them: 32 GiB), and the next inserts get the queue,
// then the lowest loose indexes.
func TestLoadOfAHighNextCostsTheIndexesInUse(t *testing.T) {
	dir := t.TempDir()
	head := &wirepb.StateHeader{Format: stateFormat, Version: stateVersion, NextIndex: maxIndexes, NextGen: 5, NextUnitId: 1,
		Reusable: []uint64{7, 3}}
	parts := []*wirepb.StatePartition{{Partition: "p", Gen: 1}}
	writeStateFile(t, filepath.Join(dir, stateFile), head, parts, [][]*wirepb.StateRow{{{Index: 1}, {Index: 5}}}, nil)
	c := newController(t, DefaultConfig())

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := c.Load(dir)
	require.NoError(t, err)
	runtime.ReadMemStats(&after)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(64<<20), "bytes allocated loading a state file with next %d and 2 rows in use", head.NextIndex)

	allocated, free := c.Indexes()
	require.Equal(t, [2]int{2, maxIndexes - 2}, [2]int{allocated, free}, "indexes allocated and free")
	m := insert(t, c, "p", 7, "x")
	require.Equal(t, []uint64{7, 3, 0, 2, 4, 6, 8}, m.Indexes, "the queue, then the lowest loose indexes")
	require.Equal(t, uint64(maxIndexes), c.idx.snapshot().Next, "next")
}
