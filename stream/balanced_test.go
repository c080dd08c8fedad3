package stream

import (
	"context"
	"slices"
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
