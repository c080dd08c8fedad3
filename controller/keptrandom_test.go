package controller

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestKeptBatchRandomRestarts drives a durable controller with rank-aware
// fetches of several DP groups (keyed and not, asked again, given back,
// left behind), resets, clears, partition drops and checkpoint loads, and
// at random points stops it (a crash or a clean close) and checks that the
// controller started again has the state of the one that ran. A keyed
// fetch asked again must never answer with a row another group took
// after it (short of a reset, a partition drop or a load). The op
// sequence is seeded; what the TTL gives back depends on real time, but
// the checks hold whatever it does.
func TestKeptBatchRandomRestarts(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) { keptRandomRun(t, seed, 250, 5*time.Millisecond) })
	}
	// Nothing given back, but batches are followed all the same.
	for seed := range uint64(2) {
		t.Run(fmt.Sprint("ttl=never/seed=", seed), func(t *testing.T) { keptRandomRun(t, seed, 250, -1) })
	}
}

// keptRandomRun runs ops random ops under KeptBatchTTL ttl.
func keptRandomRun(t *testing.T, seed uint64, ops int, ttl time.Duration) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	dir := t.TempDir()
	ck := filepath.Join(t.TempDir(), "ck")
	cfg := Config{KeptBatchTTL: ttl}
	ctx := context.Background()
	c := openDurable(t, dir, cfg)
	defer func() { c.Close() }()
	// A fetch that consumes nothing makes its named sampler without a
	// record (a restart has none until a fetch consumes): make it first.
	w := insert(t, c, "w", 1, "x")
	commitDense(t, c, "w", w.Indexes, "x")
	warm := specFetch(rankAware, 0, 0, 1)
	warm.Partition = "w"
	_, err := c.Fetch(ctx, warm)
	require.NoError(t, err)

	type keyed struct {
		task         string
		group, batch int
		at           int // the op that first answered it
	}
	type given struct{ group, at int }
	keys := map[string]keyed{}
	var keyNames []string
	type taskRow struct {
		task string
		row  uint64
	}
	lastGiven := map[taskRow]given{}
	lastReset := 0 // ops before it: a reset, a drop or a load ended what entries say
	tasks := []string{"t", "u"}
	next := map[string]*[3]int{"t": {}, "u": {}}
	var rows []uint64
	type groupBatch struct {
		task         string
		group, batch int
	}
	asked := map[groupBatch]bool{} // asked for since the task was last reset
	saved := false
	loaded := false // a checkpoint loaded since the partition was cleared: the model knows not what its groups took
	nkey := 0

	for op := 1; op <= ops; op++ {
		step := fmt.Sprintf("seed %d op %d", seed, op)
		switch x := rng.IntN(100); {
		case x < 15: // rows
			m, err := c.Insert("p", 1+rng.IntN(4), []string{"x"})
			require.NoError(t, err, step)
			commitDense(t, c, "p", m.Indexes, "x")
			rows = append(rows, m.Indexes...)
		case x < 60: // a fetch
			g := rng.IntN(3)
			task := tasks[rng.IntN(len(tasks))]
			var req engine.FetchRequest
			var name string
			repeat, again := false, false
			if len(keyNames) > 0 && rng.IntN(5) == 0 {
				name = keyNames[rng.IntN(len(keyNames))]
				k := keys[name]
				req, g, task, repeat = keyedFetch(k.group, k.batch, 2, name), k.group, k.task, true
			} else {
				b := next[task][g] - rng.IntN(2) // the batch again (a peer), or the next one
				if b == next[task][g] {
					next[task][g]++
				}
				b = max(b, 0)
				again = asked[groupBatch{task, g, b}]
				asked[groupBatch{task, g, b}] = true
				if rng.IntN(4) > 0 {
					nkey++
					name = fmt.Sprint("k", nkey)
				}
				req = keyedFetch(g, b, 2, name)
			}
			req.Task = task
			m, err := c.Fetch(ctx, req)
			if errors.Is(err, context.Canceled) {
				continue // given back
			}
			if (again || loaded) && errors.Is(err, engine.ErrNotFound) && strings.Contains(err.Error(), "cleared since") {
				continue // the group took it, and every row of it was cleared since
			}
			require.NoError(t, err, step)
			if repeat {
				k := keys[name]
				for _, gi := range m.Indexes {
					lg, ok := lastGiven[taskRow{task, gi}]
					if ok && lg.group != g && lg.at > k.at && k.at > lastReset {
						t.Fatalf("%s: fetch %q of group %d (op %d) asked again answered row %d, which group %d took at op %d",
							step, name, g, k.at, gi, lg.group, lg.at)
					}
				}
				continue
			}
			for _, gi := range m.Indexes {
				lastGiven[taskRow{task, gi}] = given{g, op}
			}
			if name != "" && m.Len() > 0 {
				keys[name] = keyed{task: task, group: g, batch: req.Options.BatchIndex, at: op}
				keyNames = append(keyNames, name)
			}
		case x < 72: // give a fetch back
			if len(keyNames) > 0 {
				name := keyNames[rng.IntN(len(keyNames))]
				require.NoError(t, c.Unconsume("p", keys[name].task, name), step)
			}
		case x < 82: // past the TTL: the next fetch looks for batches left behind
			time.Sleep(max(ttl, 0) + time.Millisecond)
		case x < 84:
			task := []string{"t", "u", ""}[rng.IntN(3)]
			if err := c.ResetConsumption("p", task); err == nil {
				lastReset = op
				for tk, n := range next {
					if task == "" || task == tk {
						*n = [3]int{}
					}
				}
				maps.DeleteFunc(asked, func(k groupBatch, _ bool) bool { return task == "" || task == k.task })
			}
		case x < 88:
			if len(rows) > 0 {
				_, err := c.ClearRows("p", []uint64{rows[rng.IntN(len(rows))]})
				require.NoError(t, err, step)
			}
		case x < 89:
			_, err := c.ClearPartition("p")
			require.NoError(t, err, step)
			clear(keys)
			keyNames, rows, lastReset, loaded = nil, nil, op, false
			clear(asked)
			for _, n := range next {
				*n = [3]int{}
			}
		case x < 91:
			if !saved || rng.IntN(2) == 0 {
				require.NoError(t, c.Save(ck), step)
				saved = true
				break
			}
			_, err := c.Load(ck)
			require.NoError(t, err, step)
			clear(keys)
			keyNames, lastReset, loaded = nil, op, true
			clear(asked)
			for _, n := range next {
				*n = [3]int{}
			}
			// rows keeps indexes that may be gone: clearing one is a no-op.
		default: // a restart
			require.NoError(t, c.WaitDurable(ctx), step)
			want := stateBytes(t, c)
			way := restartWays[rng.IntN(len(restartWays))]
			way.stop(t, c)
			c = openDurable(t, dir, cfg)
			require.Equal(t, want, stateBytes(t, c), "%s: the state after a %s", step, way.name)
		}
	}
}
