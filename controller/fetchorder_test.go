package controller

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestFetchOrderAfterLoad: a snapshot's load rebuilds each row's list of
// keyed fetches (byRow) from the table's order, while the live one keeps
// the order the entries were indexed in; a give-back of some of a fetch's
// rows (UnconsumeRows) indexes the fetch again, after those indexed
// since, without moving it in the table. A clear of a row two held
// fetches name, which leaves both holding nothing, restarts them one
// after the other, and a controller that loaded the snapshot must order
// them in its table (which the next snapshot keeps, and the oldest of
// which goes first past maxFetchKeys) as the live one does; and every
// call that reads the entries answers the same on both.
func TestFetchOrderAfterLoad(t *testing.T) {
	live := newController(t, DefaultConfig())
	insert(t, live, "p", 3, "x")
	commitDense(t, live, "p", seq(0, 3), "x")
	held := func(c *Controller, task, key string, n int) []uint64 {
		t.Helper()
		m, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: task, Fields: []string{"x"}, BatchSize: n, Key: key, Hold: true})
		require.NoError(t, err)
		return m.Indexes
	}
	// a (indexed first) and b both hold row 0; a's other row goes back,
	// so that a is indexed again after b but stays first in the table.
	require.Equal(t, []uint64{0, 1}, held(live, "t1", "a", 2))
	require.Equal(t, []uint64{0}, held(live, "t2", "b", 1))
	require.NoError(t, live.UnconsumeRows("p", "t1", "a", []uint64{1}))
	// c names row 2 only, unheld.
	_, err := live.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t3", Fields: []string{"x"}, BatchSize: 1, Key: "c"})
	require.NoError(t, err)

	dir := t.TempDir()
	require.NoError(t, live.Save(dir))
	loaded := newController(t, DefaultConfig())
	_, err = loaded.Load(dir)
	require.NoError(t, err)

	order := func(c *Controller) []string {
		p, _ := c.lock("p")
		defer p.mu.Unlock()
		var keys []string
		for e := range p.fetches.entries() {
			keys = append(keys, e.key)
		}
		return keys
	}
	require.Equal(t, order(live), order(loaded), "table order after the load")

	for _, c := range []*Controller{live, loaded} {
		_, err := c.ClearRows("p", []uint64{0})
		require.NoError(t, err)
	}
	require.Equal(t, order(live), order(loaded), "table order after a clear of the row a and b hold")

	// The calls that read the entries answer the same.
	var again [][]uint64
	for _, c := range []*Controller{live, loaded} {
		m, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t1", Fields: []string{"x"}, BatchSize: 2, Key: "a", Hold: true})
		require.NoError(t, err)
		again = append(again, m.Indexes)
		require.NoError(t, c.Acknowledge("p", "t2", "b"))
		require.NoError(t, c.Unconsume("p", "t3", "c"))
		st, err := c.ConsumptionStatus("p", "t3")
		require.NoError(t, err)
		require.NotContains(t, st.Consumed, true, "t3's rows after c given back")
	}
	require.Equal(t, again[0], again[1], "fetch a asked again")
	require.Equal(t, order(live), order(loaded), "table order at the end")
}
