package storage

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

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
	for _, l := range leases {
		l.Release()
	}
}

// setRelockHook runs f each time a long call lets go of the unit's lock
// between chunks, until the test ends.
func setRelockHook(t *testing.T, f func(*Unit)) {
	relockHook = f
	t.Cleanup(func() { relockHook = nil })
}

// A Reserve of many extents places them lockChunk at a time and lets go
// of the lock between chunks, others seeing the space taken so far; an
// Abort frees them the same way, the reservation aborted from the start.
func TestReserveAndAbortInChunks(t *testing.T) {
	u := newTestUnit(t, testConfig())
	sizes := make([]int64, 4*lockChunk+5)
	for i := range sizes {
		sizes[i] = 64
	}
	var used []int64
	var r *Reservation
	setRelockHook(t, func(u *Unit) {
		if !u.mu.TryLock() {
			t.Error("the lock is held between chunks")
			return
		}
		u.mu.Unlock()
		used = append(used, u.Stats().Used)
		if r != nil {
			if err := r.Commit(); !errors.Is(err, engine.ErrInvalid) {
				t.Errorf("Commit while the abort frees: got %v, want ErrInvalid", err)
			}
		}
	})
	r0, err := u.Reserve(t.Context(), sizes)
	require.NoError(t, err)
	full := u.Stats().Used
	assert.Len(t, used, 4, "times Reserve let go of the lock")
	for i, n := range used {
		assert.Equal(t, int64(i+1)*lockChunk*64, n, "bytes used after chunk %d", i)
	}

	used, r = nil, r0
	r.Abort()
	assert.Len(t, used, 4, "times Abort let go of the lock")
	for i, n := range used {
		assert.Equal(t, full-int64(i+1)*lockChunk*64, n, "bytes used after chunk %d of the abort", i)
	}
	st := u.Stats()
	assert.Zero(t, st.Used, "bytes used after the abort")
	assert.Zero(t, st.Reserved, "bytes reserved after the abort")
}

// A unit that closes between two chunks of a Reserve fails it with
// ErrClosed, and nothing touches the unmapped segments.
func TestReserveClosedBetweenChunks(t *testing.T) {
	u := newTestUnit(t, testConfig())
	sizes := make([]int64, 2*lockChunk)
	for i := range sizes {
		sizes[i] = 64
	}
	setRelockHook(t, func(u *Unit) { u.Close() })
	_, err := u.Reserve(t.Context(), sizes)
	assert.ErrorIs(t, err, engine.ErrClosed)
}

// Space given back while a Reserve that did not fit rolls back, letting go
// of the lock between chunks, wakes it: it tries again rather than
// waiting for a wake-up that came already.
func TestReserveRollbackSeesSpaceFreed(t *testing.T) {
	cfg := testConfig()
	cfg.Capacity, cfg.SegmentSize = 1<<20, 1<<20
	u := newTestUnit(t, cfg)
	keep := reserve(t, u, 64)
	require.NoError(t, keep.Commit())
	blocker := reserve(t, u, 1<<20-256<<10)
	require.NoError(t, blocker.Commit())
	sizes := make([]int64, 4*lockChunk)
	for i := range sizes {
		sizes[i] = 64
	}
	relocks, freed := 0, false
	var last int64
	setRelockHook(t, func(u *Unit) {
		relocks++
		used := u.Stats().Used
		if used < last && !freed { // the rollback's first chunk is back
			freed = true
			if err := u.Free([]engine.RemoteAddr{blocker.Addr(0)}); err != nil {
				t.Error(err)
			}
		}
		last = used
	})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	r, err := u.Reserve(ctx, sizes)
	require.NoError(t, err)
	assert.True(t, freed, "the blocker was freed during the rollback")
	r.Abort()
}

// committedCells commits one extent and cuts it into n cells of 64 bytes.
func committedCells(t *testing.T, u *Unit, n int) []engine.RemoteAddr {
	t.Helper()
	r := reserve(t, u, int64(n)*64)
	require.NoError(t, r.Commit())
	a := r.Addr(0)
	cells := make([]engine.RemoteAddr, n)
	for i := range cells {
		cells[i] = engine.RemoteAddr{Segment: a.Segment, Gen: a.Gen, Offset: a.Offset + uint64(i)*64, Len: 64}
	}
	return cells
}

// An Acquire and a Release of many ranges pin and drop them lockChunk at a
// time, letting go of the lock between chunks.
func TestAcquireAndReleaseInChunks(t *testing.T) {
	u := newTestUnit(t, testConfig())
	cells := committedCells(t, u, 4*lockChunk+3)
	relocks := 0
	setRelockHook(t, func(u *Unit) {
		relocks++
		if !u.mu.TryLock() {
			t.Error("the lock is held between chunks")
			return
		}
		u.mu.Unlock()
	})
	l, err := u.Acquire(cells)
	require.NoError(t, err)
	assert.Equal(t, 4, relocks, "times Acquire let go of the lock")
	require.NoError(t, u.Free(cells))
	assert.NotZero(t, u.Stats().Used, "bytes used while leased")
	relocks = 0
	l.Release()
	assert.Equal(t, 4, relocks, "times Release let go of the lock")
	st := u.Stats()
	assert.Zero(t, st.Used, "bytes used after the release")
	assert.Zero(t, st.Leases, "leases after the release")
}

// Cells freed between an Acquire's chunks: ones it pinned already stay
// readable (the lease holds their bytes); one it has yet to check fails it
// with ErrNotFound, and it gives back what it pinned.
func TestAcquireRacesFree(t *testing.T) {
	u := newTestUnit(t, testConfig())
	cells := committedCells(t, u, 2*lockChunk+1)
	free := func(i int) func(*Unit) {
		done := false
		return func(u *Unit) {
			if !done {
				done = true
				if err := u.Free(cells[i : i+1]); err != nil {
					t.Error(err)
				}
			}
		}
	}

	setRelockHook(t, free(0)) // pinned in the first chunk
	l, err := u.Acquire(cells)
	require.NoError(t, err)
	assert.Len(t, l.Bytes(0), 64, "range 0")
	l.Release()

	setRelockHook(t, free(2*lockChunk)) // in the last chunk
	_, err = u.Acquire(cells[1:])
	assert.ErrorIs(t, err, engine.ErrNotFound)
	relockHook = nil
	assert.Zero(t, u.Stats().Leases, "leases after the failed Acquire")
	require.NoError(t, u.Free(cells[1:2*lockChunk]))
	assert.Zero(t, u.Stats().Used, "bytes used once every cell is freed: the failed Acquire kept a reference")
}

// A Free of many cells checks them, then frees them, lockChunk at a time,
// letting go of the lock between chunks; a double free among them still
// changes nothing, even when found in the last chunk.
func TestFreeInChunks(t *testing.T) {
	u := newTestUnit(t, testConfig())
	var cells []engine.RemoteAddr
	for range 3 {
		cells = append(cells, committedCells(t, u, lockChunk+7)...)
	}
	relocks := 0
	setRelockHook(t, func(u *Unit) {
		relocks++
		if !u.mu.TryLock() {
			t.Error("the lock is held between chunks")
			return
		}
		u.mu.Unlock()
	})
	bad := append(slices.Clone(cells), cells[len(cells)-1])
	err := u.Free(bad)
	assert.ErrorIs(t, err, engine.ErrNotFound, "a double free")
	assert.Equal(t, 3, relocks, "times the check let go of the lock")
	assert.Equal(t, int64(3), int64(u.Stats().Extents), "extents after a failed free")

	relocks = 0
	require.NoError(t, u.Free(cells))
	assert.Equal(t, 3+2, relocks, "times Free let go of the lock: checking, then freeing")
	assert.Zero(t, u.Stats().Used, "bytes used after the free")
}

// A Free whose cells another caller frees between its chunks: cells freed
// before its check fail it with nothing changed; cells freed once it is
// freeing fail it for the rest, saying so.
func TestFreeRacesFree(t *testing.T) {
	u := newTestUnit(t, testConfig())
	a := committedCells(t, u, lockChunk)
	b := committedCells(t, u, lockChunk)
	cells := append(slices.Clone(a), b...)
	relocks := 0
	setRelockHook(t, func(u *Unit) {
		if relocks++; relocks == 1 { // between the check's chunks
			if err := u.Free(b[:1]); err != nil {
				t.Error(err)
			}
		}
	})
	assert.ErrorIs(t, u.Free(cells), engine.ErrNotFound)
	assert.Equal(t, int64(2), int64(u.Stats().Extents), "extents after the failed free")

	relocks = 0
	cells = append(slices.Clone(a), b[1:]...)
	setRelockHook(t, func(u *Unit) {
		if relocks++; relocks == 2 { // between the frees' chunks
			if _, err := u.FreeRanges(b[1:2]); err != nil {
				t.Error(err)
			}
		}
	})
	err := u.Free(cells)
	assert.ErrorIs(t, err, engine.ErrNotFound)
	assert.Equal(t, int64(1), int64(u.Stats().Extents), "extents: the first one's cells were freed")
}
