package controller

// Kept batches of the samplers that split a batch between DP ranks
// (seqlen_balanced, token_budget): the first rank's fetch of a batch index
// consumes every rank's part, so a rank that never fetches its part held
// those rows forever.

import (
	"context"
	"errors"
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
				c := newRows(t, Config{KeptBatchTTL: time.Minute}, 8)
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
				c := newRows(t, Config{KeptBatchTTL: time.Minute}, 8)
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
				cfg := Config{KeptBatchTTL: keptTTL}
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
				time.Sleep(pastKeptTTL) // a TTL after the restart
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

// followedBatches is the batch indexes the controller follows for DP rank
// rank of task "t" of "p" under spec.
func followedBatches(t *testing.T, c *Controller, spec engine.SamplerSpec, rank int) []int {
	t.Helper()
	p, _ := c.lock("p")
	require.NotNil(t, p)
	defer p.mu.Unlock()
	var out []int
	if g := p.groups[groupKey{spec: spec.String(), task: "t", rank: rank}]; g != nil {
		for b := range g.batches {
			out = append(out, b)
		}
	}
	slices.Sort(out)
	return out
}

// clearedPartAtEnd makes the end of a done partition where rank 1's part
// of batch 0 was cleared before it fetched it: rank 0 took its parts of
// batches 0 and 1, which made rank 1's part of batch 1 (2 rows) too. It
// returns what rank 0 got.
func clearedPartAtEnd(t *testing.T, c *Controller, tc balancedCase) [][]uint64 {
	t.Helper()
	ctx := context.Background()
	a, err := c.Fetch(ctx, tc.fetch(0, 0))
	require.NoError(t, err)
	require.Len(t, a.Indexes, 2)
	part1 := slices.DeleteFunc(seq(0, 4), func(i uint64) bool { return slices.Contains(a.Indexes, i) })
	_, err = c.ClearRows("p", part1)
	require.NoError(t, err)
	require.NoError(t, c.MarkDone("p"))
	b, err := c.Fetch(ctx, tc.fetch(0, 1))
	require.NoError(t, err)
	require.Len(t, b.Indexes, 2)
	require.Equal(t, seq(4, 8), consumedRows(t, c)[2:], "batch 1 consumed rank 1's part too")
	return [][]uint64{a.Indexes, b.Indexes}
}

// A rank whose part was cleared asks for it at the end of a done
// partition, with nothing ready to refill it: it gets the part its peer
// made for it in a later batch, not ErrDone (which left those rows
// consumed and given to nobody until a TTL later, and ended its stream
// early). The part moved is followed under the batch it was served as,
// and not given back.
func TestKeptBatchBalancedClearedPartTakesLaterPart(t *testing.T) {
	for _, tc := range balancedCases {
		t.Run(tc.spec.Name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := newRows(t, Config{KeptBatchTTL: time.Minute}, 8)
				ctx := context.Background()
				rank0 := clearedPartAtEnd(t, c, tc)
				part1 := slices.DeleteFunc(seq(4, 8), func(i uint64) bool { return slices.Contains(rank0[1], i) })

				got, err := c.Fetch(ctx, tc.fetch(1, 0))
				require.NoError(t, err, "rank 1's part of batch 1 holds rows for it")
				require.Equal(t, part1, got.Indexes, "rank 1 gets its part of batch 1")
				assert.Equal(t, []int{0}, followedBatches(t, c, tc.spec, 1), "the part is followed as batch 0, no longer as batch 1")
				again, err := c.Fetch(ctx, tc.fetch(1, 0))
				require.NoError(t, err)
				assert.Equal(t, part1, again.Indexes, "asked again: the same part")

				_, err = c.Fetch(ctx, tc.fetch(1, 1))
				require.ErrorIs(t, err, engine.ErrDone, "rank 1 has nothing more")
				_, err = c.Fetch(ctx, tc.fetch(0, 2))
				require.ErrorIs(t, err, engine.ErrDone, "rank 0 has nothing more")
				served := requireServedOnce(t, rank0[0], rank0[1], got.Indexes)
				assert.Equal(t, served, consumedRows(t, c), "every consumed row went to a rank")

				time.Sleep(2 * time.Minute) // both went past their parts: nothing goes back
				_, err = c.Fetch(ctx, tc.fetch(0, 2))
				require.ErrorIs(t, err, engine.ErrDone)
				assert.Equal(t, served, consumedRows(t, c), "no part was given back")
			})
		})
	}
}

// A rank that took the part moved to it and stopped there leaves it
// behind: its rows go back once, a TTL later, as batch 0's.
func TestKeptBatchBalancedMovedPartLeftBehindGoesBackOnce(t *testing.T) {
	for _, tc := range balancedCases {
		t.Run(tc.spec.Name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := newRows(t, Config{KeptBatchTTL: time.Minute}, 8)
				ctx := context.Background()
				rank0 := clearedPartAtEnd(t, c, tc)
				got, err := c.Fetch(ctx, tc.fetch(1, 0))
				require.NoError(t, err)
				require.Len(t, got.Indexes, 2)

				// Rank 1 stopped at batch 0: its rows go back, and each
				// batch rank 0 makes of them has a part for rank 1 again,
				// which goes back a TTL later in turn.
				var again []uint64
				for b := 2; ; b++ {
					require.Less(t, b, 10, "rank 0 still fetching")
					time.Sleep(2 * time.Minute)
					m, err := c.Fetch(ctx, tc.fetch(0, b))
					if errors.Is(err, engine.ErrDone) {
						break
					}
					require.NoError(t, err)
					again = append(again, m.Indexes...)
				}
				assert.ElementsMatch(t, got.Indexes, again, "the rows rank 1 left behind are rank 0's now")
				requireServedOnce(t, rank0[0], rank0[1], again)
				assert.Equal(t, requireServedOnce(t, rank0[0], rank0[1], got.Indexes), consumedRows(t, c))
			})
		})
	}
}

// The move is in the log (the sampler's entries, the part followed under
// its new batch): a restart agrees.
func TestKeptBatchBalancedClearedPartAcrossRestart(t *testing.T) {
	for _, tc := range balancedCases {
		for _, way := range restartWays {
			t.Run(tc.spec.Name+"/"+way.name, func(t *testing.T) {
				dir := t.TempDir()
				cfg := Config{KeptBatchTTL: time.Hour}
				c := openRows(t, dir, cfg, 8)
				ctx := context.Background()
				rank0 := clearedPartAtEnd(t, c, tc)
				got, err := c.Fetch(ctx, tc.fetch(1, 0))
				require.NoError(t, err)
				require.Len(t, got.Indexes, 2)
				require.NoError(t, c.WaitDurable(ctx))
				want := stateBytes(t, c)
				way.stop(t, c)

				c = openDurable(t, dir, cfg)
				defer c.Close()
				require.Equal(t, want, stateBytes(t, c), "the state after the restart")
				assert.Equal(t, []int{0}, followedBatches(t, c, tc.spec, 1))
				again, err := c.Fetch(ctx, tc.fetch(1, 0))
				require.NoError(t, err)
				assert.Equal(t, got.Indexes, again.Indexes, "asked again after the restart: the same part")
				_, err = c.Fetch(ctx, tc.fetch(1, 1))
				require.ErrorIs(t, err, engine.ErrDone)
				_, err = c.Fetch(ctx, tc.fetch(0, 2))
				require.ErrorIs(t, err, engine.ErrDone)
				served := requireServedOnce(t, rank0[0], rank0[1], got.Indexes)
				assert.Equal(t, served, consumedRows(t, c))
			})
		}
	}
}

// A later part the rank fetched already (a loader that prefetched it) is
// not moved: the rank has those rows, and would get them twice.
func TestKeptBatchBalancedClearedPartKeepsHeldPart(t *testing.T) {
	for _, tc := range balancedCases {
		t.Run(tc.spec.Name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := newRows(t, Config{KeptBatchTTL: time.Minute}, 8)
				ctx := context.Background()
				rank0 := clearedPartAtEnd(t, c, tc)
				ahead, err := c.Fetch(ctx, tc.fetch(1, 1))
				require.NoError(t, err)
				require.Len(t, ahead.Indexes, 2)

				_, err = c.Fetch(ctx, tc.fetch(1, 0))
				require.ErrorIs(t, err, engine.ErrDone, "batch 1's part is rank 1's already")
				again, err := c.Fetch(ctx, tc.fetch(1, 1))
				require.NoError(t, err)
				assert.Equal(t, ahead.Indexes, again.Indexes, "batch 1's part stays")
				assert.Equal(t, requireServedOnce(t, rank0[0], rank0[1], ahead.Indexes), consumedRows(t, c))
			})
		})
	}
}

// A rank whose part was moved to an earlier batch, and so has an empty
// part at the batch it came from, asks for that batch with a blocking
// fetch: at the end of a done partition it is told ErrDone at once (the
// part was served already), and no rank gets an empty batch or waits
// for rows that will not come.
func TestKeptBatchBalancedMovedPartWaitEnds(t *testing.T) {
	for _, tc := range balancedCases {
		t.Run(tc.spec.Name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := newRows(t, Config{KeptBatchTTL: time.Minute}, 8)
				ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
				defer cancel()
				wait := func(rank, batch int) engine.FetchRequest {
					req := tc.fetch(rank, batch)
					req.Wait = true
					return req
				}
				rank0 := clearedPartAtEnd(t, c, tc)
				got, err := c.Fetch(ctx, wait(1, 0))
				require.NoError(t, err)
				require.Len(t, got.Indexes, 2, "rank 1 gets the part moved from batch 1")

				for _, f := range []engine.FetchRequest{wait(1, 1), wait(1, 2), wait(0, 2)} {
					m, err := c.Fetch(ctx, f)
					require.ErrorIs(t, err, engine.ErrDone, "rank %d batch %d: got %v", f.Options.DPRank, f.Options.BatchIndex, m)
				}
				assert.Equal(t, requireServedOnce(t, rank0[0], rank0[1], got.Indexes), consumedRows(t, c))
			})
		})
	}
}

// With no TTL (negative: never) a part left behind is never given back,
// but it is followed all the same: the rank that comes for it late, at
// the end of a done partition, gets it moved to the batch it asks for. A
// batch its group went past is forgotten after the default TTL, so what
// is followed stays bounded.
func TestKeptBatchBalancedNeverGivesBack(t *testing.T) {
	for _, tc := range balancedCases {
		t.Run(tc.spec.Name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := newRows(t, Config{KeptBatchTTL: -1}, 8)
				ctx := context.Background()
				a, err := c.Fetch(ctx, tc.fetch(0, 0))
				require.NoError(t, err)
				time.Sleep(2 * DefaultKeptBatchTTL)
				none, err := c.Fetch(ctx, tc.fetch(0, 1))
				require.NoError(t, err)
				require.Zero(t, none.Len(), "batch 1 is not ready")
				assert.Equal(t, seq(0, 4), consumedRows(t, c), "rank 1's part of batch 0 did not go back")
				assert.Empty(t, followedBatches(t, c, tc.spec, 0), "rank 0 went past batch 0: forgotten")
				assert.Equal(t, []int{0}, followedBatches(t, c, tc.spec, 1), "rank 1's part is followed still")

				require.NoError(t, c.MarkDone("p"))
				b, err := c.Fetch(ctx, tc.fetch(0, 1))
				require.NoError(t, err)
				require.Len(t, b.Indexes, 2, "the last batch, rank 1's part made too")
				_, err = c.Fetch(ctx, tc.fetch(0, 2))
				require.ErrorIs(t, err, engine.ErrDone)
				// Rank 1 comes back late, at batch 5: its parts of batches
				// 0 and 1 are moved there, the earliest first.
				var late [][]uint64
				for b := 5; ; b++ {
					require.Less(t, b, 9, "rank 1 still fetching")
					m, err := c.Fetch(ctx, tc.fetch(1, b))
					if errors.Is(err, engine.ErrDone) {
						break
					}
					require.NoError(t, err)
					late = append(late, m.Indexes)
				}
				require.Len(t, late, 2)
				assert.Subset(t, seq(0, 4), late[0], "batch 0's part first")
				all := requireServedOnce(t, a.Indexes, b.Indexes, late[0], late[1])
				assert.Equal(t, seq(0, 8), all, "every row went to a rank")
			})
		})
	}
}

// A rank's fetch that consumes nothing still logs its ask (the group is
// followed), and replay makes the task for it as for every consume
// record. The controller that ran made the task only when the partition
// had the fetch's fields (its view does): after a fetch of a done
// partition made by MarkDone, with none of them, a restarted
// controller's state named a task the one that ran did not. Both make it
// now; with the fields and too few rows ready, both made it already.
func TestKeptBatchAskMakesItsTaskAsReplayDoes(t *testing.T) {
	ctx := context.Background()
	for _, tc := range balancedCases {
		for _, setup := range []struct {
			name string
			make func(t *testing.T, c *Controller) error // the partition; the fetch's outcome
		}{
			{"no fields yet", func(t *testing.T, c *Controller) error {
				require.NoError(t, c.MarkDone("p"))
				_, err := c.Fetch(ctx, tc.fetch(0, 0))
				return err
			}},
			{"too few rows", func(t *testing.T, c *Controller) error {
				m := insert(t, c, "p", 1, "x")
				commitDense(t, c, "p", m.Indexes, "x")
				got, err := c.Fetch(ctx, tc.fetch(0, 0))
				require.Zero(t, got.Len())
				return err
			}},
		} {
			for _, way := range restartWays {
				t.Run(tc.spec.Name+"/"+setup.name+"/"+way.name, func(t *testing.T) {
					dir := t.TempDir()
					cfg := Config{KeptBatchTTL: -1}
					c := openDurable(t, dir, cfg)
					if err := setup.make(t, c); setup.name == "no fields yet" {
						require.ErrorIs(t, err, engine.ErrDone)
					} else {
						require.NoError(t, err)
					}
					require.NoError(t, c.WaitDurable(ctx))
					want := stateBytes(t, c)
					way.stop(t, c)

					c = openDurable(t, dir, cfg)
					defer c.Close()
					require.Equal(t, want, stateBytes(t, c), "the state after the restart")
				})
			}
		}
	}
}
