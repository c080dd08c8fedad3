package controller

import (
	"context"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tqgo/tq/controller/sampler"
	"github.com/tqgo/tq/engine"
)

func rankFetch(t *testing.T, c *Controller, dpRank, batchIndex, n int) *engine.BatchMeta {
	t.Helper()
	m, err := c.Fetch(context.Background(), engine.FetchRequest{
		Partition: "train", Task: "actor", Fields: []string{"x"}, BatchSize: n,
		Options: engine.SamplingOptions{HasRank: true, DPRank: dpRank, BatchIndex: batchIndex},
	})
	if err != nil {
		t.Fatalf("fetch rank %d batch %d: %v", dpRank, batchIndex, err)
	}
	return m
}

// Ranks of one data-replica group see identical batches; groups get
// disjoint ones; a late peer still gets its group's batch from the cache
// when too few rows are left for a fresh one (polling mode).
func TestRankAwareThroughController(t *testing.T) {
	c := newController(t, Config{Sampler: sampler.NewRankAware()})
	m := insert(t, c, "train", 8, "x")
	commitDense(t, c, "train", m.Indexes, "x")

	g0a := rankFetch(t, c, 0, 0, 4) // group 0, first rank
	g1a := rankFetch(t, c, 1, 0, 4) // group 1 takes the other 4
	g0b := rankFetch(t, c, 0, 0, 4) // group 0, second rank: nothing ready, served from the cache
	g1b := rankFetch(t, c, 1, 0, 4)
	if diff := cmp.Diff(g0a.Indexes, g0b.Indexes); diff != "" {
		t.Fatalf("ranks of group 0 differ (-first +second):\n%s", diff)
	}
	if diff := cmp.Diff(g1a.Indexes, g1b.Indexes); diff != "" {
		t.Fatalf("ranks of group 1 differ (-first +second):\n%s", diff)
	}
	for _, gi := range g0a.Indexes {
		if slices.Contains(g1a.Indexes, gi) {
			t.Fatalf("row %d went to both groups: %v %v", gi, g0a.Indexes, g1a.Indexes)
		}
	}
	if got := rankFetch(t, c, 0, 1, 4); got.Len() != 0 {
		t.Fatalf("next batch with nothing ready: %v", got.Indexes)
	}
	if !c.CheckConsumption("train", "actor") {
		t.Fatal("not all consumed after both groups fetched")
	}
	// Clearing the partition clears the sampler's cache.
	c.ClearPartition("train")
	m = insert(t, c, "train", 4, "x")
	commitDense(t, c, "train", m.Indexes, "x")
	if got := rankFetch(t, c, 0, 0, 4); got.Len() != 4 {
		t.Fatalf("after clear: %v", got.Indexes)
	}
}

// Sequence-length balancing reads the "total_lengths" tag through the
// controller and splits whole groups across DP ranks.
func TestSeqlenBalancedThroughController(t *testing.T) {
	s, err := sampler.NewSeqlenBalanced(2, 2)
	if err != nil {
		t.Fatal(err)
	}
	c := newController(t, Config{Sampler: s})
	m := insert(t, c, "train", 8, "x")
	commitDense(t, c, "train", m.Indexes, "x")
	lengths := []int{100, 100, 90, 90, 1, 1, 5, 5}
	tags := make([]engine.Tags, len(lengths))
	for i, l := range lengths {
		tags[i] = engine.Tags{"total_lengths": l}
	}
	if err := c.SetTags("train", m.Indexes, tags); err != nil {
		t.Fatal(err)
	}
	r0 := rankFetch(t, c, 0, 0, 4)
	r1 := rankFetch(t, c, 1, 0, 4)
	sum := func(idx []uint64) (n int) {
		for _, gi := range idx {
			n += lengths[gi]
		}
		return n
	}
	// Groups hold 200, 180, 2 and 10 tokens. A contiguous split would give
	// 380 against 12; the balanced one pairs {200, 2} with {180, 10}.
	a, b := sum(r0.Indexes), sum(r1.Indexes)
	if min(a, b) != 190 || max(a, b) != 202 {
		t.Fatalf("token sums %d and %d (rows %v, %v), want 202 and 190", a, b, r0.Indexes, r1.Indexes)
	}
	for _, idx := range [][]uint64{r0.Indexes, r1.Indexes} {
		for i := 0; i < len(idx); i += 2 {
			if idx[i]%2 != 0 || idx[i+1] != idx[i]+1 {
				t.Fatalf("prompt groups split: %v", idx)
			}
		}
	}
}

// Sampler state travels in checkpoints.
func TestCheckpointSamplerState(t *testing.T) {
	c := newController(t, Config{Sampler: sampler.NewRankAware()})
	m := insert(t, c, "train", 4, "x")
	commitDense(t, c, "train", m.Indexes, "x")
	first := rankFetch(t, c, 0, 0, 4)
	dir := t.TempDir() + "/ck"
	if err := c.Save(dir); err != nil {
		t.Fatal(err)
	}
	d := newController(t, Config{Sampler: sampler.NewRankAware()})
	if _, err := d.Load(dir); err != nil {
		t.Fatal(err)
	}
	again := rankFetch(t, d, 0, 0, 4)
	if diff := cmp.Diff(first.Indexes, again.Indexes); diff != "" {
		t.Fatalf("cached batch after load (-before +after):\n%s", diff)
	}
}
