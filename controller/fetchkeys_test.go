package controller

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// keyFetch is a sequential fetch of n rows of "x" for task "t" of
// partition "p", named key.
func keyFetch(t *testing.T, c *Controller, key string, n int) []uint64 {
	t.Helper()
	m, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: n, Key: key})
	require.NoError(t, err)
	return m.Indexes
}

// fetchKeyCases runs a test of keyed fetches twice: on one controller,
// and with a restart (the log replayed, no snapshot) just before the
// steps that follow, so that a replayed controller agrees with the one
// that made the changes.
func fetchKeyCases(t *testing.T, setup func(t *testing.T, c *Controller), after func(t *testing.T, c *Controller)) {
	t.Run("live", func(t *testing.T) {
		c := newController(t, DefaultConfig())
		setup(t, c)
		after(t, c)
	})
	t.Run("restarted", func(t *testing.T) {
		dir := t.TempDir()
		c := openDurable(t, dir, DefaultConfig())
		setup(t, c)
		require.NoError(t, c.WaitDurable(context.Background()))
		want := stateBytes(t, c)
		crash(t, c)
		c = openDurable(t, dir, DefaultConfig())
		t.Cleanup(func() { c.Close() })
		require.Equal(t, want, stateBytes(t, c), "the replayed state differs")
		after(t, c)
	})
}

// Rows a keyed fetch took, cleared, and their indexes reused by new rows
// that another fetch took: the first fetch asked again returned the new
// rows, and given back, made them fetchable again, so a third fetch got
// the second's rows.
func TestFetchKeyForgetsClearedRows(t *testing.T) {
	fetchKeyCases(t, func(t *testing.T, c *Controller) {
		first := insert(t, c, "p", 2, "x").Indexes
		commitDense(t, c, "p", first, "x")
		require.Equal(t, first, keyFetch(t, c, "k1", 2))
		_, err := c.ClearRows("p", first)
		require.NoError(t, err)
		second := insert(t, c, "p", 2, "x").Indexes
		require.ElementsMatch(t, first, second, "the new rows reuse the cleared indexes")
		commitDense(t, c, "p", second, "x")
		require.ElementsMatch(t, second, keyFetch(t, c, "k2", 2))
	}, func(t *testing.T, c *Controller) {
		require.Empty(t, keyFetch(t, c, "k1", 2), "k1 asked again: its rows are gone, the new ones are k2's")
		require.NoError(t, c.Unconsume("p", "t", "k1"))
		require.Empty(t, keyFetch(t, c, "k3", 2), "k1 given back handed k2's rows to k3")
		require.NoError(t, c.Unconsume("p", "t", "k2"))
		require.Len(t, keyFetch(t, c, "k4", 2), 2, "k2 given back: its rows are fetchable again")
	})
}

// A keyed fetch from before its task's consumption was reset, given back
// after another fetch took the same rows in the new round, made them
// fetchable again: a third fetch got them too.
func TestFetchKeyFromBeforeReset(t *testing.T) {
	for _, task := range []string{"t", ""} {
		t.Run("task="+task, func(t *testing.T) {
			fetchKeyCases(t, func(t *testing.T, c *Controller) {
				m := insert(t, c, "p", 2, "x")
				commitDense(t, c, "p", m.Indexes, "x")
				require.Equal(t, m.Indexes, keyFetch(t, c, "k1", 2))
				require.NoError(t, c.ResetConsumption("p", task))
				require.Equal(t, m.Indexes, keyFetch(t, c, "k2", 2))
			}, func(t *testing.T, c *Controller) {
				require.NoError(t, c.Unconsume("p", "t", "k1"))
				require.Empty(t, keyFetch(t, c, "k3", 2), "k1, from before the reset, given back handed k2's rows to k3")
				require.NoError(t, c.Unconsume("p", "t", "k2"))
				require.Len(t, keyFetch(t, c, "k4", 2), 2, "k2 given back: its rows are fetchable again")
			})
		})
	}
}

// The table's index by row names, for each row, exactly the entries that
// name it, in the order it linked them, through entries added, replaced,
// forgotten for their age, cut by clears and reset: few to a row (a
// list), and many (a set, from more than maxRefList on).
func TestFetchTableIndexFollowsEntries(t *testing.T) {
	for _, tc := range []struct {
		name  string
		keys  int // distinct keys
		step  int // the most seconds between two adds
		clear int // one step in this many clears or resets, the others add
	}{
		{"few", 12, 120, 2},
		{"many", 96, 20, 40},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			var tab fetchTable
			now := time.Unix(1000, 0)
			rows := func() []uint64 {
				var out []uint64
				for gi := range uint64(8) {
					if rng.IntN(3) == 0 {
						out = append(out, gi)
					}
				}
				return out
			}
			sets := 0 // steps that ended with a row's entries in a set
			for i := range 4000 {
				switch {
				case rng.IntN(tc.clear) > 0:
					s := rows()
					c := s
					if rng.IntN(2) == 0 {
						c = rows()
					}
					now = now.Add(time.Duration(rng.IntN(tc.step)) * time.Second)
					tab.add(&fetchEntry{key: fmt.Sprint(rng.IntN(tc.keys)), task: "t", sampled: s, consumed: c, at: now})
				case rng.IntN(2) == 0:
					tab.forgetRows(rows(), now)
				default:
					tab.reset("t", now)
				}
				want := make(map[uint64][]*fetchEntry)
				for e := range tab.entries() {
					for _, gi := range append(slices.Clone(e.sampled), e.consumed...) {
						if !slices.Contains(want[gi], e) {
							want[gi] = append(want[gi], e)
						}
					}
				}
				got := make(map[uint64][]*fetchEntry)
				inSet := false
				for gi, r := range tab.byRow {
					if r.many != nil {
						inSet = true
						require.True(t, r.one == nil && r.more == nil, "step %d: row %d: entries in a set and a list", i, gi)
						require.NotEmpty(t, r.many, "step %d: row %d: an empty set left", i, gi)
					} else {
						require.NotNil(t, r.one, "step %d: row %d: a list with no first entry", i, gi)
						require.LessOrEqual(t, len(r.more), maxRefList, "step %d: row %d: entries in a list", i, gi)
					}
					got[gi] = r.appendTo(nil)
					require.True(t, slices.IsSortedFunc(got[gi], func(a, b *fetchEntry) int { return cmp.Compare(a.seq, b.seq) }),
						"step %d: row %d: entries out of the order they were linked", i, gi)
				}
				if inSet {
					sets++
				}
				require.Len(t, got, len(want), "step %d: rows indexed", i)
				for gi, es := range want {
					require.ElementsMatch(t, es, got[gi], "step %d: entries of row %d", i, gi)
				}
			}
			if tc.name == "many" {
				require.Greater(t, sets, 100, "steps with a row's entries in a set")
			}
		})
	}
}

// An entry past fetchKeyTTL is gone, whether or not the table has
// dropped it yet. Before, one that expiry had not reached yet (behind an
// entry whose time an acknowledgment restarted) was still given back by
// an Unconsume of its key: the kept batch it took counted one fetch
// fewer, and the key stayed spent at its old time, so the fetch asked
// again took new rows. A controller that loaded the same state had
// dropped the entry, spent the key anew and refused the fetch.
func TestExpiredFetchKeyGoneLiveAndLoaded(t *testing.T) {
	c := newRows(t, DefaultConfig(), 8)
	ctx := context.Background()
	_, err := c.Fetch(ctx, keyedFetch(0, 0, 4, "k"))
	require.NoError(t, err)
	heldFetch(t, c, "h", 2)
	require.NoError(t, c.Acknowledge("p", "t", "h"))
	func() {
		p, _ := c.lock("p")
		defer p.mu.Unlock()
		p.fetches.m["k"].at = p.fetches.m["k"].at.Add(-fetchKeyTTL - time.Minute) // fetched 11 minutes ago
	}()
	dir := filepath.Join(t.TempDir(), "ck")
	require.NoError(t, c.Save(dir))
	d := newController(t, DefaultConfig())
	_, err = d.Load(dir)
	require.NoError(t, err)
	d.cluster = c.cluster // a controller keeps its own id through a load
	require.Equal(t, stateBytes(t, c), stateBytes(t, d), "the state loaded")

	answers := func(c *Controller) []string {
		t.Helper()
		require.NoError(t, c.Unconsume("p", "t", "k"))
		m, err := c.Fetch(ctx, keyedFetch(0, 0, 4, "k"))
		return []string{fmt.Sprint(m), fmt.Sprint(err)}
	}
	require.Equal(t, answers(d), answers(c), "the live controller answers as the one that loaded its state")
	require.Equal(t, stateBytes(t, d), stateBytes(t, c), "the states after")
}
