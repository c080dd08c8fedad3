package controller

// Kept batches of the samplers that split a batch between DP ranks
// (seqlen_balanced, token_budget): the first rank's fetch of a batch index
// consumes every rank's part, so a rank that never fetches its part held
// those rows forever.

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// balancedCase is a balanced sampler of groups of one row and two ranks,
// and the fetches that make its batches 0 and 1 from 8 rows of length 1:
// batch 0 takes rows 0 to 3, and batch 1 is made (not closed, for the
// token budget) only when more than the 4 rows batch 0 left are ready.
type balancedCase struct {
	spec  engine.SamplerSpec
	fetch func(rank, batch int) engine.FetchRequest
}

var balancedCases = []balancedCase{
	{engine.SamplerSpec{Name: engine.SamplerSeqlenBalanced, N: 1, DPSize: 2}, func(rank, batch int) engine.FetchRequest {
		return specFetch(engine.SamplerSpec{Name: engine.SamplerSeqlenBalanced, N: 1, DPSize: 2}, rank, batch, 2+batch) // 4 rows, then 6
	}},
	{engine.SamplerSpec{Name: engine.SamplerTokenBudget, N: 1, DPSize: 2}, func(rank, batch int) engine.FetchRequest {
		req := specFetch(engine.SamplerSpec{Name: engine.SamplerTokenBudget, N: 1, DPSize: 2}, rank, batch, 0)
		req.TokenBudget = 2 // 2 rows a rank, closed by a fifth ready row
		return req
	}},
}

// consumedRows is the rows of "p" consumed for task "t".
func consumedRows(t *testing.T, c *Controller) []uint64 {
	t.Helper()
	st, err := c.ConsumptionStatus("p", "t")
	require.NoError(t, err)
	var out []uint64
	for i, done := range st.Consumed {
		if done {
			out = append(out, st.Indexes[i])
		}
	}
	return out
}

// requireServedOnce checks that no row was served twice.
func requireServedOnce(t *testing.T, batches ...[]uint64) []uint64 {
	t.Helper()
	var all []uint64
	for _, b := range batches {
		all = append(all, b...)
	}
	slices.Sort(all)
	require.Equal(t, slices.Compact(slices.Clone(all)), all, "a row served twice")
	return all
}

// Rank 0 of a balanced sampler takes batch 0, which consumes rank 1's part
// too; rank 1 never fetches it (it stopped). After KeptBatchTTL the part's
// rows go back: the next batch is made from them, and nothing is served
// twice.
func TestKeptBatchBalancedPartLeftBehindGoesBack(t *testing.T) {
	for _, tc := range balancedCases {
		t.Run(tc.spec.Name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := newController(t, Config{KeptBatchTTL: time.Minute})
				m := insert(t, c, "p", 8, "x")
				commitDense(t, c, "p", m.Indexes, "x")
				ctx := context.Background()

				a, err := c.Fetch(ctx, tc.fetch(0, 0))
				require.NoError(t, err)
				require.Len(t, a.Indexes, 2)
				require.Equal(t, seq(0, 4), consumedRows(t, c), "rank 0's fetch consumed both parts")
				part1 := slices.DeleteFunc(seq(0, 4), func(i uint64) bool { return slices.Contains(a.Indexes, i) })

				time.Sleep(2 * time.Minute) // rank 1 never fetched its part
				b, err := c.Fetch(ctx, tc.fetch(0, 1))
				require.NoError(t, err)
				require.NotZero(t, b.Len(), "batch 1 is made from the rows rank 1 left behind too")
				b1, err := c.Fetch(ctx, tc.fetch(1, 1))
				require.NoError(t, err)
				require.NotZero(t, b1.Len(), "rank 1's part of batch 1")
				all := requireServedOnce(t, a.Indexes, b.Indexes, b1.Indexes)
				assert.Subset(t, all, part1, "the rows of rank 1's part of batch 0 were served again")

				// Rank 1 back for batch 0 late: a part of its own from the
				// rows ready now, none of those served.
				late, err := c.Fetch(ctx, tc.fetch(1, 0))
				require.NoError(t, err)
				requireServedOnce(t, all, late.Indexes)
			})
		})
	}
}

// A part its rank fetched and went past stays consumed, however long ago
// it was made.
func TestKeptBatchBalancedPartTakenStaysConsumed(t *testing.T) {
	for _, tc := range balancedCases {
		t.Run(tc.spec.Name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := newController(t, Config{KeptBatchTTL: time.Minute})
				m := insert(t, c, "p", 8, "x")
				commitDense(t, c, "p", m.Indexes, "x")
				ctx := context.Background()

				a, err := c.Fetch(ctx, tc.fetch(0, 0))
				require.NoError(t, err)
				time.Sleep(30 * time.Second)
				a1, err := c.Fetch(ctx, tc.fetch(1, 0))
				require.NoError(t, err)
				require.Len(t, a1.Indexes, 2)
				for rank := range 2 { // both ask for batch 1: nothing ready for it
					_, err := c.Fetch(ctx, tc.fetch(rank, 1))
					require.NoError(t, err)
				}
				time.Sleep(2 * time.Minute)
				_, err = c.Fetch(ctx, tc.fetch(0, 1))
				require.NoError(t, err)
				assert.Subset(t, consumedRows(t, c), requireServedOnce(t, a.Indexes, a1.Indexes), "batch 0 stays consumed")
			})
		})
	}
}

// The parts a fetch made for the other ranks are followed across a
// restart (from the log, or the snapshot a clean close writes), and a
// part given back stays given back.
func TestKeptBatchBalancedPartAcrossRestart(t *testing.T) {
	for _, tc := range balancedCases {
		for _, way := range restartWays {
			t.Run(tc.spec.Name+"/"+way.name, func(t *testing.T) {
				dir := t.TempDir()
				cfg := Config{KeptBatchTTL: 20 * time.Millisecond}
				c := openRows(t, dir, cfg, 8)
				ctx := context.Background()
				a, err := c.Fetch(ctx, tc.fetch(0, 0)) // rank 1 never fetches its part
				require.NoError(t, err)
				require.Len(t, a.Indexes, 2)
				require.NoError(t, c.WaitDurable(ctx))
				want := stateBytes(t, c)
				way.stop(t, c)

				c = openDurable(t, dir, cfg)
				require.Equal(t, want, stateBytes(t, c), "the state after the restart")
				time.Sleep(100 * time.Millisecond) // a TTL after the restart
				b, err := c.Fetch(ctx, tc.fetch(0, 1))
				require.NoError(t, err)
				require.NotZero(t, b.Len(), "batch 1 is made from the rows rank 1 left behind too")
				served := requireServedOnce(t, a.Indexes, b.Indexes)
				require.NoError(t, c.WaitDurable(ctx))
				want = stateBytes(t, c)
				way.stop(t, c)

				c = openDurable(t, dir, cfg)
				defer c.Close()
				require.Equal(t, want, stateBytes(t, c), "the state after the second restart")
				b1, err := c.Fetch(ctx, tc.fetch(1, 1))
				require.NoError(t, err)
				require.NotZero(t, b1.Len(), "rank 1's part of batch 1")
				late, err := c.Fetch(ctx, tc.fetch(1, 0))
				require.NoError(t, err)
				all := requireServedOnce(t, served, b1.Indexes, late.Indexes)
				assert.Subset(t, all, seq(0, 4), "the rows of rank 1's part of batch 0 were served again")
			})
		}
	}
}
