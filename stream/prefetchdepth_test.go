package stream

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// While the loop body runs, the loader has fetched Config.Prefetch
// micro-batches ahead, not more: each holds views into storage and, for a
// private sampler, rows held from the task's other consumers. (It had
// Prefetch+1: a full channel of Prefetch and one more in the
// prefetcher's hands, waiting for room.)
func TestPrefetchDepth(t *testing.T) {
	for _, prefetch := range []int{1, 2, 4} {
		t.Run(fmt.Sprintf("prefetch=%d", prefetch), func(t *testing.T) {
			e := cluster(t)
			produce(t, e.Client, "p", 0, 64, nil)
			require.NoError(t, e.Client.MarkDone(context.Background(), "p"))
			cfg := config("p")
			cfg.Sampler, cfg.Prefetch = engine.SamplerSpec{Name: engine.SamplerSequential}, prefetch
			l, err := New(e.Client, cfg)
			require.NoError(t, err)
			want := cfg.MicroBatchSize * (1 + prefetch) // the one in the body, and those ahead
			var got [][]int64
			for b, err := range l.All(t.Context()) {
				require.NoError(t, err)
				got = append(got, values(t, b))
				if len(got) == 1 {
					require.Eventually(t, func() bool { return consumedRows(t, e, "p") >= want }, 10*time.Second, time.Millisecond)
					time.Sleep(100 * time.Millisecond) // would the prefetcher take more?
					require.Equal(t, want, consumedRows(t, e, "p"), "rows taken while the body runs its first micro-batch")
				}
			}
			require.Equal(t, upTo(64), flat(got), "every row once, in order")
		})
	}
}
