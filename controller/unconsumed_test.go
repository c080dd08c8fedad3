package controller

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// walkUnconsumed counts by a walk of the partition what partition.unconsumed
// keeps as a count.
func walkUnconsumed(p *partition, task string) int {
	t, ok := p.tasks[task]
	n := 0
	p.rows.all(func(r *row) {
		if !ok || !p.isConsumed(r, t) {
			n++
		}
	})
	return n
}

// The count of rows a task has not consumed, which decides the end of a
// finite stream without a walk of the partition, follows every change of
// rows and consumption: inserts (pre-allocated rows included), fetches,
// fetches given back, cleared rows, cleared cells, resets and more than
// 64 tasks; and so do the ready views.
func TestUnconsumedCountFollowsChanges(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			cfg := DefaultConfig()
			cfg.PreAlloc = 5 // pre-allocated rows count as not consumed
			c := newController(t, cfg)
			ctx := context.Background()
			tasks := []string{"a", "b"}
			for i := range 70 { // task slots past the first 64
				tasks = append(tasks, fmt.Sprintf("t%d", i))
			}
			for i := range 400 {
				task := tasks[rng.IntN(len(tasks))]
				switch rng.IntN(9) {
				case 0, 1:
					m := insert(t, c, "p", 1+rng.IntN(6), "x")
					if rng.IntN(4) > 0 {
						commitDense(t, c, "p", m.Indexes, "x")
					}
				case 2:
					_, err := c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: task, Fields: []string{"x"}, BatchSize: 1 + rng.IntN(4)})
					require.NoError(t, err)
				case 3:
					key := fmt.Sprintf("k%d", i)
					_, err := c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: task, Fields: []string{"x"}, BatchSize: 1 + rng.IntN(4), Key: key})
					require.NoError(t, err)
					if rng.IntN(2) == 0 {
						require.NoError(t, c.Unconsume("p", task, key))
					}
				case 4:
					ff, err := c.ForceFetch("p", nil)
					if err == nil && ff.Len() > 0 {
						_, err = c.ClearRows("p", ff.Indexes[:1+rng.IntN(ff.Len())])
						require.NoError(t, err)
					}
				case 5:
					var err error
					if rng.IntN(3) == 0 {
						err = c.ResetConsumption("p", task)
					} else if rng.IntN(3) == 0 {
						err = c.ResetConsumption("p", "")
					}
					if err != nil {
						require.ErrorIs(t, err, engine.ErrNotFound)
					}
				case 6:
					_, _, err := c.ClearFields("p", []string{fmt.Sprintf("key%d", rng.IntN(8))}, []string{"x"})
					require.NoError(t, err)
				case 7:
					_, err := c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: []string{fmt.Sprintf("key%d", rng.IntN(8))},
						Fields: []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{1}, Locs: []engine.CellLoc{{Unit: 1, Addr: engine.RemoteAddr{Segment: 1, Len: 4}}}}}})
					require.NoError(t, err)
				case 8:
					if rng.IntN(10) == 0 {
						_, err := c.ClearPartition("p")
						require.NoError(t, err)
					}
				}
				p, _ := c.lock("p")
				if p == nil {
					continue
				}
				for _, task := range tasks {
					if got, want := p.unconsumed(task), walkUnconsumed(p, task); got != want {
						p.mu.Unlock()
						t.Fatalf("step %d: task %q: %d rows unconsumed by the count, %d by a walk", i, task, got, want)
					}
					// The ready view, kept incrementally and rebuilt page by
					// page on resets, against a walk.
					if v := p.views[viewKey{task, "x"}]; v != nil {
						var got, want []uint64
						v.Ascend(func(gi uint64) bool { got = append(got, gi); return true })
						p.rows.all(func(r *row) {
							if p.rowReady(r, v.slots) && !p.isConsumed(r, v.task) {
								want = append(want, r.index)
							}
						})
						if !slices.Equal(got, want) {
							p.mu.Unlock()
							t.Fatalf("step %d: task %q: ready view %v, by a walk %v", i, task, got, want)
						}
					}
				}
				p.mu.Unlock()
			}
		})
	}
}
