package storage

import (
	"errors"
	"maps"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// refusingWatcher refuses the segments in refuse and records which
// segments it holds.
type refusingWatcher struct {
	mu     sync.Mutex
	refuse map[uint32]bool
	live   map[uint32]bool
}

var errRefused = errors.New("watcher refused the segment")

func (w *refusingWatcher) SegmentMapped(id uint32, _ []byte, _ int) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.live[id] = true
	if w.refuse[id] {
		return errRefused
	}
	return nil
}

func (w *refusingWatcher) SegmentDropped(id uint32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.live, id)
}

func (w *refusingWatcher) holds() map[uint32]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.live)
}

// A new segment the watcher refuses (an RDMA device that could not
// register it) is unmapped at once and the Reserve that needed it fails
// with a capacity error carrying the watcher's: no extent lands where the
// watcher's clients cannot reach it. The next segment is used as usual.
func TestRefusedSegmentTakesNoExtent(t *testing.T) {
	u := newTestUnit(t, testConfig())
	w := &refusingWatcher{refuse: map[uint32]bool{1: true}, live: map[uint32]bool{}}
	u.WatchSegments(w)

	_, err := u.Reserve(t.Context(), []int64{1000})
	require.ErrorIs(t, err, engine.ErrCapacity)
	require.ErrorIs(t, err, errRefused)
	assert.Empty(t, u.Segments())
	st := u.Stats()
	assert.Zero(t, st.Mapped)
	assert.Zero(t, st.Used)
	assert.Empty(t, w.holds(), "the refused segment is dropped from the watcher too")

	a := put(t, u, pattern(1, 1000))[0]
	assert.Equal(t, uint32(2), a.Segment)
	assert.Equal(t, map[uint32]bool{2: true}, w.holds())
}

// A segment already live when the watcher comes that it refuses takes no
// new extent; its extents stay readable, and it is dropped once empty.
func TestRefusedLiveSegmentDroppedOnceEmpty(t *testing.T) {
	u := newTestUnit(t, testConfig())
	old := put(t, u, pattern(1, 1000))
	require.Equal(t, uint32(1), old[0].Segment)
	w := &refusingWatcher{refuse: map[uint32]bool{1: true}, live: map[uint32]bool{}}
	u.WatchSegments(w)

	a := put(t, u, pattern(2, 1000))[0]
	assert.Equal(t, uint32(2), a.Segment, "no new extent in the refused segment")
	l, err := u.Acquire(old)
	require.NoError(t, err)
	l.Release()

	require.NoError(t, u.Free(old))
	var ids []uint32
	for _, s := range u.Segments() {
		ids = append(ids, s.ID)
	}
	assert.Equal(t, []uint32{2}, ids, "the refused segment goes once empty")
	assert.Equal(t, map[uint32]bool{2: true}, w.holds())
}
