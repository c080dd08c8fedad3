package stream

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The README: when a peer clears a partition, a lagging rank's fetch
// waiting for more of it (the partition is not done: its producer may add
// rows) is told the generation was cleared, and the loader moves on as
// from a drained partition rather than wait for good. A loader reads the
// first micro-batch of "p" (4 rows, not done), its prefetcher waits for
// the next; "p" is cleared; the loop goes on to "q". In process and over
// the wire, with a shared sampler and a private one.
func TestWaitingFetchEndsWhenThePartitionIsCleared(t *testing.T) {
	for _, remote := range []bool{false, true} {
		for _, smp := range []string{"rank_aware", "sequential"} {
			t.Run(fmt.Sprintf("%s/remote=%v", smp, remote), func(t *testing.T) {
				e, _, c := doneRemote(t)
				if !remote {
					c = e.Client
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				produce(t, e.Client, "w", 0, 4, nil) // not done
				produce(t, e.Client, "q", 100, 4, nil)
				require.NoError(t, e.Client.MarkDone(ctx, "q"))
				cfg := config("w", "q")
				cfg.Sampler.Name, cfg.Prefetch = smp, 1
				l, err := New(c, cfg)
				require.NoError(t, err)
				var got [][]int64
				var parts []string
				for b, err := range l.All(ctx) {
					require.NoError(t, err)
					got, parts = append(got, values(t, b)), append(parts, b.Partition)
					if len(got) == 1 {
						require.NoError(t, e.Client.ClearPartition(ctx, "w"))
					}
				}
				require.NoError(t, ctx.Err(), "the loader waited for the cleared partition")
				require.NoError(t, l.Err())
				assert.Equal(t, [][]int64{{0, 1, 2, 3}, {100, 101, 102, 103}}, got)
				assert.Equal(t, []string{"w", "q"}, parts)
			})
		}
	}
}
