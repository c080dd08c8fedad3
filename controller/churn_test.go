package controller

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// footprint is what a controller keeps that could grow with the
// partitions it has seen: the sizes of its tables, and of every
// partition left.
type footprint map[string]int

func (f footprint) add(o footprint) {
	for k, v := range o {
		f[k] += v
	}
}

func controllerFootprint(c *Controller) footprint {
	f := footprint{}
	// The named samplers' saved state, less its fixed part.
	var head wirepb.StateHeader
	if err := c.namedState(&head); err == nil {
		for _, st := range head.Samplers {
			f["samplers.entries"] += strings.Count(string(st.State), `"partition"`)
		}
	}
	unlock := c.lockAll()
	defer unlock()
	f["parts"] = len(c.parts)
	f["ids"] = c.ids.Len()
	c.namedMu.Lock()
	f["named"] = len(c.named)
	c.namedMu.Unlock()
	c.idx.mu.Lock()
	f["idx.queue"] = cap(c.idx.reusable)
	f["idx.loose"] = cap(c.idx.loose)
	f["idx.backSeqs"] = cap(c.idx.backSeqs)
	f["idx.inUse"] = len(c.idx.inUse)
	c.idx.mu.Unlock()
	c.spent.mu.Lock()
	f["spent"] = len(c.spent.m) + cap(c.spent.order)
	c.spent.mu.Unlock()
	c.moves.mu.Lock()
	f["moves"] = len(c.moves.to)
	c.moves.mu.Unlock()
	c.clients.mu.Lock()
	f["clients"] = len(c.clients.m) + len(c.clients.left)
	c.clients.mu.Unlock()
	f["starts"] = len(c.starts)
	for _, p := range c.parts {
		f.add(footprint{
			"p.rows": p.rows.len(), "p.reserved": p.reserved.Len(), "p.fields": len(p.fields),
			"p.rowKeys": len(p.rowKeys), "p.rowTags": len(p.rowTags), "p.more": len(p.more),
			"p.keys": len(p.keys), "p.bySeq": p.bySeq.Len(), "p.tasks": len(p.tasks), "p.consumedN": len(p.consumedN),
			"p.views": len(p.views), "p.fetches": len(p.fetches.m), "p.fetches.byRow": len(p.fetches.byRow),
			"p.groups": len(p.groups), "p.groups.batches": keptCount(p), "p.fetches.back": len(p.fetches.back.m) + cap(p.fetches.back.order), "p.held": len(p.held), "p.scratch": cap(p.scratch),
			"p.feed.cleared": p.feed.cleared.len(),
		})
		if p.feed.rows != nil {
			f["p.feed.rows"] += p.feed.rows.Len()
		}
	}
	return f
}

func heapInUse() uint64 {
	least := uint64(0)
	for i := range 3 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if i == 0 || ms.HeapInuse < least {
			least = ms.HeapInuse
		}
	}
	return least
}

// churnStep is one RL training step: a partition made, filled with keyed
// rows with tags, consumed by two tasks, a DP group (rank-aware, kept
// batches) and a named sampler, watched by a change feed, marked done and
// cleared (sometimes by its keys or rows first).
func churnStep(t *testing.T, c *Controller, rng *rand.Rand, step int) {
	ctx := context.Background()
	p := fmt.Sprintf("step-%d", step)
	keys := commitStep(t, c, rng, p, step)
	n := len(keys)

	// A change feed: a cursor waiting for the next change.
	first, err := c.KeyChanges(ctx, engine.ChangesRequest{Partition: p})
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, err := c.KeyChanges(ctx, engine.ChangesRequest{Partition: p, Cursor: first.Cursor, Wait: true})
		if err != nil {
			t.Errorf("waiting change feed of %q: %v", p, err)
		}
	}()
	_, err = c.CompareAndSetTag(engine.TagSwap{Partition: p, Key: keys[0], Name: "status", Old: "new", New: "seen"})
	require.NoError(t, err)
	_, err = c.DeleteTags(p, keys[1:2], []string{"len"})
	require.NoError(t, err)
	wg.Wait()

	// Two tasks: one keyed and held, acknowledged; one sequential.
	a, err := c.Fetch(ctx, engine.FetchRequest{Partition: p, Task: "actor", Fields: []string{"x"}, BatchSize: 4,
		Key: fmt.Sprintf("a-%d", step), Hold: true})
	require.NoError(t, err)
	require.Len(t, a.Indexes, 4)
	require.NoError(t, c.Acknowledge(p, "actor", fmt.Sprintf("a-%d", step)))
	_, err = c.Fetch(ctx, engine.FetchRequest{Partition: p, Task: "ref", Fields: []string{"x"}, BatchSize: n})
	require.NoError(t, err)
	// A DP group of two ranks, rank-aware, keyed.
	for g := range 2 {
		req := engine.FetchRequest{Partition: p, Task: "train", Fields: []string{"x"}, BatchSize: 4,
			Sampler: engine.SamplerSpec{Name: engine.SamplerRankAware},
			Options: engine.SamplingOptions{HasRank: true, DPRank: g, BatchIndex: 0}, Key: fmt.Sprintf("g%d-%d", g, step)}
		_, err := c.Fetch(ctx, req)
		require.NoError(t, err)
	}
	// A named sampler by spec.
	_, err = c.Fetch(ctx, engine.FetchRequest{Partition: p, Task: "grpo", Fields: []string{"x"}, BatchSize: 4,
		Sampler: engine.SamplerSpec{Name: engine.SamplerGRPO, N: 2}, Options: engine.SamplingOptions{HasRank: true}})
	require.NoError(t, err)
	require.NoError(t, c.MarkDone(p))

	switch rng.IntN(3) {
	case 0:
		_, err = c.ClearKeys(p, keys)
		require.NoError(t, err)
	case 1:
		_, err = c.ClearRows(p, a.Indexes)
		require.NoError(t, err)
	}
	_, err = c.ClearPartition(p)
	require.NoError(t, err)
}

type churnMeasure struct {
	f    footprint
	heap uint64
	snap int64
}

func churn(t *testing.T, c *Controller, seed uint64, warm, steps int) (at, end churnMeasure) {
	rng := rand.New(rand.NewPCG(seed, 1))
	measure := func() churnMeasure {
		m := churnMeasure{f: controllerFootprint(c), heap: heapInUse()}
		if c.j != nil {
			require.NoError(t, c.snapshot())
			m.snap = c.lastSnapBytes.Load()
		}
		return m
	}
	for i := range warm {
		churnStep(t, c, rng, i)
	}
	at = measure()
	for i := warm; i < warm+steps; i++ {
		churnStep(t, c, rng, i)
	}
	return at, measure()
}

// TestChurnLeavesNothing: an RL run makes a partition per step, consumes
// it and clears it, thousands of times. What the controller keeps — its
// tables, the heap, its snapshot — does not grow with the steps.
// CHURN_STEPS sets the steps after the warm-up (10000 and more for a long
// look; 2000 by default).
func TestChurnLeavesNothing(t *testing.T) {
	for _, durable := range []bool{false, true} {
		t.Run(fmt.Sprintf("durable=%v", durable), func(t *testing.T) {
			cfg := Config{}
			if durable {
				cfg.Dir = t.TempDir()
				cfg.SnapshotBytes = 1 << 40 // only the test's snapshots
			}
			c := newController(t, cfg)
			steps := 2000
			if s := os.Getenv("CHURN_STEPS"); s != "" {
				steps, _ = strconv.Atoi(s)
			}
			if testing.Short() {
				steps = 500
			}
			at, end := churn(t, c, 7, 200, steps)
			t.Logf("after warm-up: %v heap %d snapshot %d", at.f, at.heap, at.snap)
			t.Logf("after %d steps: %v heap %d snapshot %d", steps, end.f, end.heap, end.snap)
			for k, v := range end.f {
				require.LessOrEqualf(t, v, max(2*at.f[k], 64), "%s after %d steps (%d after warm-up)", k, steps, at.f[k])
			}
			require.Zero(t, end.f["parts"], "partitions left")
			if durable {
				// The heap holds the log's memtables too, which grow
				// as Pebble sizes them (up to 16 MiB each, journal.go):
				// the snapshot says what the controller keeps.
				require.LessOrEqual(t, end.snap, at.snap+1024, "snapshot bytes after %d steps", steps)
			} else {
				require.LessOrEqual(t, end.heap, at.heap+4<<20, "heap in use after %d steps", steps)
			}
		})
	}
}

// longStep is one step of a run that keeps one partition and clears each
// step's keys from it: the same consumers as churnStep, batch index step.
func longStep(t *testing.T, c *Controller, rng *rand.Rand, step int) {
	ctx := context.Background()
	const p = "train"
	keys := commitStep(t, c, rng, p, step)
	n := len(keys)
	_, err := c.KeyChanges(ctx, engine.ChangesRequest{Partition: p})
	require.NoError(t, err)
	a, err := c.Fetch(ctx, engine.FetchRequest{Partition: p, Task: "actor", Fields: []string{"x"}, BatchSize: 4,
		Key: fmt.Sprintf("a-%d", step), Hold: true})
	require.NoError(t, err)
	require.NoError(t, c.Acknowledge(p, "actor", fmt.Sprintf("a-%d", step)))
	_, err = c.Fetch(ctx, engine.FetchRequest{Partition: p, Task: "ref", Fields: []string{"x"}, BatchSize: n})
	require.NoError(t, err)
	for g := range 2 {
		_, err := c.Fetch(ctx, engine.FetchRequest{Partition: p, Task: "train", Fields: []string{"x"}, BatchSize: 4,
			Sampler: engine.SamplerSpec{Name: engine.SamplerRankAware},
			Options: engine.SamplingOptions{HasRank: true, DPRank: g, BatchIndex: step}, Key: fmt.Sprintf("g%d-%d", g, step)})
		require.NoError(t, err)
	}
	_, err = c.Fetch(ctx, engine.FetchRequest{Partition: p, Task: "grpo", Fields: []string{"x"}, BatchSize: 4,
		Sampler: engine.SamplerSpec{Name: engine.SamplerGRPO, N: 2}, Options: engine.SamplingOptions{HasRank: true, BatchIndex: step}})
	require.NoError(t, err)
	if rng.IntN(2) == 0 {
		_, err = c.ClearRows(p, a.Indexes)
		require.NoError(t, err)
	}
	_, err = c.ClearKeys(p, keys)
	require.NoError(t, err)
}

// TestLongPartitionChurn: a run that keeps one partition and clears each
// step's keys from it. What the partition keeps of the keys cleared — the
// change feed's cleared keys, the keyed fetches, the kept batches its DP
// groups went past — is a tail: bounded by count (maxCleared) or gone a
// TTL after the step (fetchKeyTTL, the kept batches' look), not growing
// with the steps.
func TestLongPartitionChurn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newController(t, Config{})
		rng := rand.New(rand.NewPCG(3, 1))
		steps := 500
		for i := range steps {
			longStep(t, c, rng, i)
			time.Sleep(time.Second)
		}
		before := controllerFootprint(c)
		require.Equal(t, steps*8, before["p.feed.cleared"], "the cleared keys the feed remembers, under maxCleared")
		time.Sleep(max(fetchKeyTTL, DefaultKeptBatchTTL) + time.Minute)
		longStep(t, c, rng, steps) // a fetch looks at what is followed
		after := controllerFootprint(c)
		t.Logf("after %d steps: %v; a TTL later: %v", steps, before, after)
		for _, k := range []string{"p.fetches", "p.groups.batches", "p.fetches.back", "p.held", "samplers.entries", "p.keys", "p.rowKeys", "p.rowTags", "p.rows"} {
			require.LessOrEqualf(t, after[k], 8, "%s a TTL after %d steps (%d before)", k, steps, before[k])
		}
		require.NoError(t, c.Close())
	})
}

func keptCount(p *partition) int {
	n := 0
	for _, g := range p.groups {
		n += len(g.batches)
	}
	return n
}

// commitStep commits a step's 8 keys to partition p (tags status and a
// random len, a dense float32 field x) and returns the keys.
func commitStep(t *testing.T, c *Controller, rng *rand.Rand, p string, step int) []string {
	keys := make([]string, 8)
	tags := make([]engine.Tags, len(keys))
	for i := range keys {
		keys[i] = fmt.Sprintf("s%d-k%d", step, i)
		tags[i] = engine.Tags{"status": "new", "len": int64(rng.IntN(100))}
	}
	_, err := c.CommitKeys(engine.KeysCommit{Partition: p, Keys: keys, Tags: tags,
		Fields: []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}}}})
	require.NoError(t, err)
	return keys
}
