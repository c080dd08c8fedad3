package stream

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/embedded"
)

// The README: what a loader fetched and never yielded is not lost for the
// task, and a group that never comes back for a batch does not hold its
// rows forever: past the kept-batch TTL they go back to the task for the
// other groups. DP group 0 (rank_aware, 3 micro-batches prefetched) takes
// its first micro-batch and breaks, for good; group 1 keeps reading the
// partition (not done: it waits for rows). Every row but group 0's first
// micro-batch reaches group 1. Group 0's loader used to fetch without
// keys and give nothing back, so the controller counted the prefetched
// batches before the last one it asked for as gone past: rows 4..11 stayed
// consumed for group 0 for good, and group 1 waited for them for ever.
func TestSharedLoaderThatStopsGivesItsPrefetchedBack(t *testing.T) {
	ecfg := embedded.DefaultConfig()
	ecfg.Controller.KeptBatchTTL = 200 * time.Millisecond
	e, err := embedded.New(ecfg)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	produce(t, e.Client, "p", 0, 32, nil)
	cfg := config("p")
	cfg.DPRank, cfg.DPSize, cfg.Prefetch = 0, 2, 3
	g0, err := New(e.Client, cfg)
	require.NoError(t, err)
	var got0 []int64
	for b, err := range g0.All(ctx) {
		require.NoError(t, err)
		got0 = append(got0, values(t, b)...)
		// The prefetcher took three more micro-batches.
		require.Eventually(t, func() bool { return consumedRows(t, e, "p") == 16 }, 10*time.Second, 5*time.Millisecond)
		break
	}
	require.NoError(t, g0.Err())
	require.Equal(t, upTo(4), got0)

	cfg.DPRank = 1
	g1, err := New(e.Client, cfg)
	require.NoError(t, err)
	var got1 []int64
	for b, err := range g1.All(ctx) {
		require.NoError(t, err, "group 1 after rows %v", got1)
		got1 = append(got1, values(t, b)...)
		if len(got1) == 28 {
			break
		}
	}
	slices.Sort(got1)
	require.Equal(t, upTo(32)[4:], got1, "every row group 0 did not take reaches group 1")
}
