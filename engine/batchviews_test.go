package engine

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// A batch derived from a batch of views by Select or Slice aliases the
// same lent memory, so it shares the parent's release: Release on any of
// them gives the memory back once; Take and Clone copy and own.
func TestBatchViewsDerivedShareRelease(t *testing.T) {
	var released atomic.Int32
	parent := testBatch(t).Views(func() { released.Add(1) })
	require.True(t, parent.Aliased())

	sel, err := parent.Select("text", "ids")
	require.NoError(t, err)
	require.True(t, sel.Aliased(), "Select of views")
	sl, err := parent.Slice(1, 3)
	require.NoError(t, err)
	require.True(t, sl.Aliased(), "Slice of views")
	both, err := sel.Slice(0, 1)
	require.NoError(t, err)
	require.True(t, both.Aliased(), "Slice of a Select of views")

	tk, err := parent.Take([]int{2, 0})
	require.NoError(t, err)
	require.False(t, tk.Aliased(), "Take copies")
	require.False(t, parent.Clone().Aliased(), "Clone copies")
	tk.Release()
	parent.Clone().Release()
	require.Zero(t, released.Load(), "releasing a copy gives nothing back")

	// Keep only the selection, as a get of every field that keeps two does.
	sel.Release()
	require.EqualValues(t, 1, released.Load(), "Release of a Select")
	parent.Release()
	sl.Release()
	both.Release()
	require.EqualValues(t, 1, released.Load(), "the memory goes back once")

	owned, err := testBatch(t).Select("ids")
	require.NoError(t, err)
	require.False(t, owned.Aliased(), "Select of an owning batch")
}

// Releases of a batch of views and of its derived batches may race; the
// memory still goes back exactly once.
func TestBatchViewsConcurrentRelease(t *testing.T) {
	var released atomic.Int32
	parent := testBatch(t).Views(func() { released.Add(1) })
	batches := []*Batch{parent}
	for range 8 {
		s, err := parent.Select("resp")
		require.NoError(t, err)
		l, err := parent.Slice(0, 2)
		require.NoError(t, err)
		batches = append(batches, s, l)
	}
	var wg sync.WaitGroup
	for _, b := range batches {
		wg.Go(b.Release)
	}
	wg.Wait()
	require.EqualValues(t, 1, released.Load())
}
