package controller

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestSplitKeptRandomRestarts is TestKeptBatchRandomRestarts for the
// samplers that split a batch between DP ranks (seqlen_balanced,
// token_budget): keyed and unkeyed fetches of each rank's part (asked
// again, given back, left behind, moved to their rank at the end of a done
// partition), beside held fetches of another task (acknowledged, given
// back by their caller or by the TTL), clears, resets, checkpoint loads,
// and restarts (a crash or a clean close) at random points, each under a
// kept-batch TTL drawn again (short, the default, or never: the same log
// read under another TTL). The controller started again must have the
// state of the one that ran, and a keyed fetch of a part asked again must
// never answer with a row another rank took after it. Seeded; what the
// TTLs give back depends on real time, but the checks hold whatever it
// does.
func TestSplitKeptRandomRestarts(t *testing.T) {
	specs := []engine.SamplerSpec{
		{Name: engine.SamplerSeqlenBalanced, N: 1, DPSize: 2},
		{Name: engine.SamplerSeqlenBalanced, N: 1, DPSize: 3},
		{Name: engine.SamplerTokenBudget, N: 1, DPSize: 2},
	}
	for _, spec := range specs {
		for seed := range uint64(2) {
			t.Run(fmt.Sprintf("%s/seed=%d", spec, seed), func(t *testing.T) { splitRandomRun(t, spec, seed, 200) })
		}
	}
}

// splitRandomRun runs ops random ops of spec's ranks.
func splitRandomRun(t *testing.T, spec engine.SamplerSpec, seed uint64, ops int) {
	rng := rand.New(rand.NewPCG(seed, 0x5b117))
	dir := t.TempDir()
	ck := filepath.Join(t.TempDir(), "ck")
	kept := []time.Duration{5 * time.Millisecond, -1, 0}
	held := []time.Duration{10 * time.Millisecond, -1, 0}
	cfgOf := func() Config {
		return Config{KeptBatchTTL: kept[rng.IntN(len(kept))], HeldFetchTTL: held[rng.IntN(len(held))]}
	}
	cfg := cfgOf()
	ctx := context.Background()
	c := openDurable(t, dir, cfg)
	defer func() { c.Close() }()
	dp := spec.DPSize
	req := func(rank, batch int) engine.FetchRequest {
		if spec.Name == engine.SamplerTokenBudget {
			r := specFetch(spec, rank, batch, 0)
			r.TokenBudget = 2
			return r
		}
		return specFetch(spec, rank, batch, 2)
	}
	// A fetch that consumes nothing makes its named sampler without a
	// record: make it first, with a row of another partition.
	w := insert(t, c, "w", 1, "x")
	commitDense(t, c, "w", w.Indexes, "x")
	warm := req(0, 0)
	warm.Partition = "w"
	_, err := c.Fetch(ctx, warm)
	require.NoError(t, err)

	type keyed struct {
		task        string
		rank, batch int
		at          int // the op that first answered it
	}
	type given struct{ rank, at int }
	keys := map[string]keyed{}
	var keyNames []string
	lastGiven := map[uint64]given{} // task "t"
	lastReset := 0                  // ops before it: a reset, a drop or a load ended what entries say
	next := make([]int, dp)
	var rows []uint64
	saved, done := false, false
	loaded := false // a checkpoint loaded since the partition was cleared: the model knows not what its ranks took
	nkey := 0
	asked := map[[2]int]bool{} // (rank, batch index) asked for since the last reset
	reset := func(op int) {
		clear(keys)
		clear(asked)
		keyNames, lastReset = nil, op
		clear(next)
	}

	for op := 1; op <= ops; op++ {
		step := fmt.Sprintf("%s seed %d op %d", spec, seed, op)
		switch x := rng.IntN(100); {
		case x < 14: // rows, until the producer is done
			if done {
				break
			}
			m, err := c.Insert("p", 1+rng.IntN(4), []string{"x"})
			require.NoError(t, err, step)
			commitDense(t, c, "p", m.Indexes, "x")
			rows = append(rows, m.Indexes...)
		case x < 45: // a rank's fetch of its part
			rank := rng.IntN(dp)
			var r engine.FetchRequest
			var name string
			repeat, again := false, false
			if len(keyNames) > 0 && rng.IntN(5) == 0 {
				name = keyNames[rng.IntN(len(keyNames))]
				k := keys[name]
				if k.task != "t" {
					break
				}
				r, rank, repeat = req(k.rank, k.batch), k.rank, true
			} else {
				b := next[rank] - rng.IntN(2) // the batch again, or the next one
				if b == next[rank] {
					next[rank]++
				}
				b = max(b, 0)
				again = asked[[2]int{rank, b}]
				asked[[2]int{rank, b}] = true
				r = req(rank, b)
			}
			if !repeat && rng.IntN(4) > 0 {
				nkey++
				name = fmt.Sprint("k", nkey)
			}
			r.Key, r.Hold = name, name != "" && rng.IntN(2) == 0 // a kept part is never held
			m, err := c.Fetch(ctx, r)
			if errors.Is(err, engine.ErrDone) || errors.Is(err, context.Canceled) { // the end, or a key given back
				break
			}
			if (again || loaded) && errors.Is(err, engine.ErrNotFound) && strings.Contains(err.Error(), "cleared since") { // the rank took it, and every row of it was cleared since
				break
			}
			require.NoError(t, err, step)
			if repeat {
				k := keys[name]
				for _, gi := range m.Indexes {
					lg, ok := lastGiven[gi]
					if ok && lg.rank != rank && lg.at > k.at && k.at > lastReset {
						t.Fatalf("%s: fetch %q of rank %d (op %d) asked again answered row %d, which rank %d took at op %d",
							step, name, rank, k.at, gi, lg.rank, lg.at)
					}
				}
				break
			}
			for _, gi := range m.Indexes {
				lastGiven[gi] = given{rank, op}
			}
			if name != "" && m.Len() > 0 {
				keys[name] = keyed{task: "t", rank: rank, batch: r.Options.BatchIndex, at: op}
				keyNames = append(keyNames, name)
			}
		case x < 58: // a held fetch of another task, under the configured sampler
			nkey++
			name := fmt.Sprint("h", nkey)
			fctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
			m, err := c.Fetch(fctx, engine.FetchRequest{Partition: "p", Task: "h", Fields: []string{"x"}, BatchSize: 1 + rng.IntN(3),
				Key: name, Hold: true, HolderPID: int32(rng.IntN(2) * 1 << 30)}) // a pid no process has, or none
			cancel()
			if errors.Is(err, engine.ErrDone) || errors.Is(err, context.DeadlineExceeded) {
				break
			}
			require.NoError(t, err, step)
			if m.Len() > 0 {
				keys[name] = keyed{task: "h", at: op}
				keyNames = append(keyNames, name)
			}
		case x < 64: // settle a held fetch (refused if the TTL gave it back)
			if len(keyNames) > 0 {
				name := keyNames[rng.IntN(len(keyNames))]
				if err := c.Acknowledge("p", keys[name].task, name); err != nil && !errors.Is(err, engine.ErrNotFound) {
					require.NoError(t, err, step)
				}
			}
		case x < 72: // give a fetch back
			if len(keyNames) > 0 {
				name := keyNames[rng.IntN(len(keyNames))]
				if err := c.Unconsume("p", keys[name].task, name); err != nil && !errors.Is(err, engine.ErrNotFound) {
					require.NoError(t, err, step)
				}
			}
		case x < 80: // past the short TTLs: the next fetch looks
			time.Sleep(12 * time.Millisecond)
		case x < 82:
			if !done {
				require.NoError(t, c.MarkDone("p"), step)
				done = true
			}
		case x < 84:
			task := []string{"t", "h", ""}[rng.IntN(3)]
			if err := c.ResetConsumption("p", task); err == nil && task != "h" {
				reset(op)
			}
		case x < 89:
			if len(rows) > 0 {
				_, err := c.ClearRows("p", []uint64{rows[rng.IntN(len(rows))]})
				require.NoError(t, err, step)
			}
		case x < 90:
			_, err := c.ClearPartition("p")
			require.NoError(t, err, step)
			rows, done, loaded = nil, false, false
			reset(op)
		case x < 92:
			if !saved || rng.IntN(2) == 0 {
				require.NoError(t, c.Save(ck), step)
				saved = true
				break
			}
			_, err := c.Load(ck)
			require.NoError(t, err, step)
			done = false // unknown: marking it again is harmless
			loaded = true
			reset(op)
		default: // a restart, maybe under other TTLs
			require.NoError(t, c.WaitDurable(ctx), step)
			want := stateBytes(t, c)
			way := restartWays[rng.IntN(len(restartWays))]
			way.stop(t, c)
			cfg = cfgOf()
			c = openDurable(t, dir, cfg)
			require.Equal(t, want, stateBytes(t, c), "%s: the state after a %s (kept TTL %v, held TTL %v)",
				step, way.name, cfg.KeptBatchTTL, cfg.HeldFetchTTL)
		}
	}
	require.NoError(t, c.WaitDurable(ctx))
	want := stateBytes(t, c)
	crash(t, c)
	c = openDurable(t, dir, cfg)
	require.Equal(t, want, stateBytes(t, c), "the state after the last crash")
}
