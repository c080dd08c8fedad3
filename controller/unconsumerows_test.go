package controller

import (
	"context"
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
	ways := append([]struct {
		name string
		stop func(t *testing.T, c *Controller)
	}{{"live", nil}}, restartWays...)
	for _, way := range ways {
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
			if way.stop != nil {
				require.NoError(t, c.WaitDurable(context.Background()))
				want := stateBytes(t, c)
				way.stop(t, c)
				c = openDurable(t, dir, Config{})
				require.Equal(t, want, stateBytes(t, c), "the state after the restart")
			}
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
