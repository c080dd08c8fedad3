package controller

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// A loader that yielded the first rows of a held fetch and stopped gives
// back the others (UnconsumeRows) and keeps the first: the others are the
// task's again, the first stay held until acknowledged; after a restart
// (the log replayed, or a snapshot loaded) as live.
func TestUnconsumeRowsGivesBackPartOfAHeldFetch(t *testing.T) {
	for _, way := range liveAndRestartWays {
		t.Run(way.name, func(t *testing.T) {
			dir := t.TempDir()
			c := openDurable(t, dir, Config{})
			doneWith(t, c, 4)
			m, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4,
				Key: "k", Hold: true})
			require.NoError(t, err)
			require.Equal(t, 4, m.Len())
			require.NoError(t, c.UnconsumeRows("p", "t", "k", m.Indexes[2:]))
			require.NoError(t, c.UnconsumeRows("p", "t", "k", m.Indexes[2:]), "given back again: nothing more")
			c = restartedAlike(t, c, dir, way.stop)
			defer c.Close()
			got, err := peerFetch(c, 5*time.Second)
			require.NoError(t, err)
			require.Equal(t, m.Indexes[2:], got.Indexes, "the rows given back, and only those")
			_, err = peerFetch(c, 300*time.Millisecond)
			require.ErrorIs(t, err, context.DeadlineExceeded, "the fetch still holds its first rows")
			require.NoError(t, c.Acknowledge("p", "t", "k"), "the rest is kept")
			_, err = peerFetch(c, 5*time.Second)
			require.ErrorIs(t, err, engine.ErrDone)
		})
	}
}

// Rows that are not the fetch's are refused, naming them, and nothing is
// given back; a key the partition does not know is not found; a fetch
// given back whole gives nothing more back.
func TestUnconsumeRowsRefusesRowsNotTheFetchs(t *testing.T) {
	c := newController(t, DefaultConfig())
	doneWith(t, c, 6)
	m, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4,
		Key: "k", Hold: true})
	require.NoError(t, err)
	other := uint64(0)
	for slices := m.Indexes; ; other++ {
		if !contains(slices, other) {
			break
		}
	}
	err = c.UnconsumeRows("p", "t", "k", []uint64{m.Indexes[0], other})
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.ErrorContains(t, err, "rows ["+itoa(other)+"]")
	require.ErrorIs(t, c.UnconsumeRows("p", "t", "nope", m.Indexes[:1]), engine.ErrNotFound)
	require.ErrorIs(t, c.UnconsumeRows("p", "u", "k", m.Indexes[:1]), engine.ErrInvalid, "another task's key")
	require.ErrorIs(t, c.UnconsumeRows("p", "t", "k", nil), engine.ErrInvalid, "no rows")
	got, err := peerFetch(c, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, 2, got.Len(), "nothing of the fetch came back")

	require.NoError(t, c.Unconsume("p", "t", "k"))
	require.NoError(t, c.UnconsumeRows("p", "t", "k", m.Indexes[:1]), "given back whole already")
	require.ErrorIs(t, c.Acknowledge("p", "t", "k"), engine.ErrNotFound)
	got, err = peerFetch(c, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, m.Indexes, got.Indexes, "each row back once")
}

func contains(s []uint64, v uint64) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestUnconsumeRowsManyRows: a give-back naming many rows, some twice,
// of a large fetch gives back each once, and one naming many rows the
// fetch never took is refused naming the first few and how many, not
// every one of them and every row of the fetch: before, the error of
// 2^14 wrong rows of a fetch of 2^13 was some 200 KB, and the check cost
// the product of the two lists (BenchmarkUnconsumeRows).
func TestUnconsumeRowsManyRows(t *testing.T) {
	const n = 1 << 13
	c := newController(t, DefaultConfig())
	doneWith(t, c, 2*n)
	m, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: n,
		Key: "k", Hold: true})
	require.NoError(t, err)
	took := map[uint64]bool{}
	for _, gi := range m.Indexes {
		took[gi] = true
	}
	var others []uint64
	for gi := uint64(0); len(others) < 2*n; gi++ {
		if !took[gi] {
			others = append(others, gi)
		}
	}
	err = c.UnconsumeRows("p", "t", "k", append(slices.Clone(m.Indexes[:1]), others...))
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.ErrorContains(t, err, "rows ["+itoa(others[0])+" "+itoa(others[1]))
	require.ErrorContains(t, err, "and "+itoa(uint64(len(others)-16))+" more given back are not rows of the fetch (it took "+itoa(n)+")")
	require.Less(t, len(err.Error()), 1024, "the error names every row")

	give := slices.Concat(m.Indexes[n/2:], m.Indexes[n/2:]) // each twice
	require.NoError(t, c.UnconsumeRows("p", "t", "k", give))
	got, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 2 * n})
	require.NoError(t, err)
	require.Len(t, got.Indexes, n+n/2, "the rows given back, once each, and the rows never fetched")
	// A set: require.Contains on the list, row by row, cost the product of
	// the two (most of the test's time under -race).
	back := map[uint64]bool{}
	for _, gi := range got.Indexes {
		back[gi] = true
	}
	for _, gi := range m.Indexes[n/2:] {
		require.True(t, back[gi], "row %d given back", gi)
	}
	require.NoError(t, c.Acknowledge("p", "t", "k"))
}

// A loader gives back the rows of a held fetch it did not yield after a
// clear removed one of them: the cleared row is gone, nothing to give
// back, and the others go back. Before, the clear took the row out of
// the fetch's record, so the give-back named a row "not of the fetch"
// and was refused whole, and the loader, falling back to giving the
// batch back whole, had the rows it yielded come again. A new row at
// the cleared index (another fetch's) is not given back; an index the
// fetch never took is still refused, naming it; after a restart (the
// log replayed, or a snapshot loaded) as live.
func TestUnconsumeRowsOfAFetchARowOfWhichWasCleared(t *testing.T) {
	for _, way := range liveAndRestartWays {
		t.Run(way.name, func(t *testing.T) {
			dir := t.TempDir()
			c := openDurable(t, dir, Config{})
			m := insert(t, c, "p", 8, "x")
			commitDense(t, c, "p", m.Indexes, "x")
			held := heldFetch(t, c, "k", 8)
			require.Equal(t, []uint64{0, 1, 2, 3, 4, 5, 6, 7}, held.Indexes)
			_, err := c.ClearRows("p", []uint64{3})
			require.NoError(t, err)
			reused := insert(t, c, "p", 1, "x")
			require.Equal(t, []uint64{3}, reused.Indexes, "the cleared index is reused")
			commitDense(t, c, "p", reused.Indexes, "x")
			other := heldFetch(t, c, "k2", 1)
			require.Equal(t, []uint64{3}, other.Indexes, "another fetch holds the new row")
			require.NoError(t, c.MarkDone("p"))
			c = restartedAlike(t, c, dir, way.stop)
			defer c.Close()

			again, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 8, Key: "k", Hold: true})
			require.NoError(t, err)
			require.Equal(t, []uint64{0, 1, 2, 4, 5, 6, 7}, again.Indexes, "asked again: the rows still here")

			err = c.UnconsumeRows("p", "t", "k", []uint64{2, 3, 8})
			require.ErrorIs(t, err, engine.ErrInvalid)
			require.ErrorContains(t, err, "rows [8]", "an index the fetch never took")
			require.NoError(t, c.UnconsumeRows("p", "t", "k", []uint64{2, 3, 5}))
			require.NoError(t, c.UnconsumeRows("p", "t", "k", []uint64{2, 3, 5}), "given back again: nothing more")

			got, err := peerFetch(c, 5*time.Second)
			require.NoError(t, err)
			require.Equal(t, []uint64{2, 5}, got.Indexes, "the rows given back, not the new row at the cleared index")
			_, err = peerFetch(c, 300*time.Millisecond)
			require.ErrorIs(t, err, context.DeadlineExceeded, "the fetches still hold their other rows")
			require.NoError(t, c.Acknowledge("p", "t", "k"))
			require.NoError(t, c.Acknowledge("p", "t", "k2"))
			_, err = peerFetch(c, 5*time.Second)
			require.ErrorIs(t, err, engine.ErrDone)
		})
	}
}

// restartedAlike stops c with stop (nil: it goes on, and is returned)
// once what it did is durable, opens the controller of dir again and
// checks it came back with the state c had.
func restartedAlike(t *testing.T, c *Controller, dir string, stop func(t *testing.T, c *Controller)) *Controller {
	t.Helper()
	if stop == nil {
		return c
	}
	require.NoError(t, c.WaitDurable(context.Background()))
	want := stateBytes(t, c)
	stop(t, c)
	c = openDurable(t, dir, Config{})
	require.Equal(t, want, stateBytes(t, c), "the state after the restart")
	return c
}
