package stream

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// The README: with seqlen_balanced the loader's DP groups get micro-batches
// whose tokens (the total_lengths tag) are balanced across them, rather
// than the rows in order. Rows 0..3 weigh 10, 9, 1, 2: split in order the
// two groups would get 19 and 3 tokens; balanced, 11 and 11.
func TestSeqlenBalancedLoaderBalancesTheGroups(t *testing.T) {
	e := cluster(t)
	ctx := context.Background()
	lengths := []int{10, 9, 1, 2}
	produce(t, e.Client, "p", 0, 4, func(i int) int { return lengths[i] })
	require.NoError(t, e.Client.MarkDone(ctx, "p"))
	var sums []int
	var all []int64
	for r := range 2 {
		cfg := config("p")
		cfg.DPRank, cfg.DPSize, cfg.MicroBatchSize = r, 2, 2
		cfg.Sampler = engine.SamplerSpec{Name: engine.SamplerSeqlenBalanced}
		l, err := New(e.Client, cfg)
		require.NoError(t, err)
		got := collect(t, ctx, l)
		require.Len(t, got, 1, "group %d", r)
		sum := 0
		for _, x := range got[0] {
			sum += lengths[x]
		}
		sums, all = append(sums, sum), append(all, got[0]...)
	}
	assert.Equal(t, []int{11, 11}, sums, "tokens per group")
	slices.Sort(all)
	assert.Equal(t, upTo(4), all)
}

// The README: ranks that pass the same DPRank get identical micro-batches
// and the groups disjoint ones with token_budget too, each micro-batch
// within the budget.
func TestTokenBudgetGroups(t *testing.T) {
	e := cluster(t)
	ctx := context.Background()
	length := func(i int) int { return 10 + i%4*10 } // 10, 20, 30, 40
	produce(t, e.Client, "p", 0, 64, length)
	require.NoError(t, e.Client.MarkDone(ctx, "p"))
	got := make([][][]int64, 4)
	var wg sync.WaitGroup
	for r := range 4 {
		cfg := config("p")
		cfg.DPRank, cfg.DPSize = r/2, 2
		cfg.MicroBatchSize, cfg.TokenBudget, cfg.Sampler = 0, 100, engine.SamplerSpec{Name: engine.SamplerTokenBudget}
		l, err := New(e.Client, cfg)
		require.NoError(t, err)
		wg.Go(func() { got[r] = collect(t, ctx, l) })
	}
	wg.Wait()
	require.Equal(t, got[0], got[1], "ranks of group 0")
	require.Equal(t, got[2], got[3], "ranks of group 1")
	for _, b := range append(slices.Clone(got[0]), got[2]...) {
		sum := 0
		for _, x := range b {
			sum += length(int(x))
		}
		assert.LessOrEqual(t, sum, 100, "micro-batch %v", b)
	}
	all := append(flat(got[0]), flat(got[2])...)
	slices.Sort(all)
	require.Equal(t, upTo(64), all, "every row to exactly one group")
}
