package stream

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// A loader whose connection to the controller is cut mid-stream (the
// controller's server stopped and started again, with batches fetched
// ahead and held) acknowledges them over the new connection: every row
// is yielded once, in order, and none stays held.
func TestRedialKeepsPrefetchedBatches(t *testing.T) {
	e, s, _ := doneRemote(t)
	c := remoteClient(t, e, s, 10*time.Second)
	l, err := New(c, privateConfig())
	require.NoError(t, err)
	var got []int64
	cut := false
	for b, err := range l.All(context.Background()) {
		require.NoError(t, err)
		got = append(got, values(t, b)...)
		if !cut {
			cut = true
			require.Eventually(t, func() bool { return consumedRows(t, e, "p") == 32 }, 10*time.Second, 5*time.Millisecond)
			s.stop()
			time.AfterFunc(200*time.Millisecond, s.start)
		}
	}
	require.Equal(t, upTo(32), got)
	st, err := e.Client.ConsumptionStatus(context.Background(), "p", "train")
	require.NoError(t, err)
	require.Empty(t, st.Held, "every prefetched batch was acknowledged")
}

// A cancel that lands while the prefetcher's fetch waits at the
// controller (over the wire), with batches fetched ahead: what was never
// yielded goes back once, what was yielded stays consumed, and a new
// consumer gets exactly the rest.
func TestCancelInFlightRemote(t *testing.T) {
	for _, smp := range []string{engine.SamplerSequential, engine.SamplerRankAware} {
		t.Run(smp, func(t *testing.T) {
			e, s, _ := doneRemote(t)
			c := remoteClient(t, e, s, 5*time.Second)
			produce(t, e.Client, "q", 0, 12, nil)
			cfg := config("q")
			cfg.Sampler, cfg.Prefetch = engine.SamplerSpec{Name: smp}, 4
			l, err := New(c, cfg)
			require.NoError(t, err)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var got []int64
			for b, err := range l.All(ctx) {
				if err != nil {
					require.ErrorIs(t, err, context.Canceled)
					break
				}
				got = append(got, values(t, b)...)
				if len(got) == 4 {
					// Rows 4..11 fetched ahead; the next fetch waits.
					time.Sleep(100 * time.Millisecond)
					cancel()
				}
			}
			// A batch prefetched before the cancel may still be yielded
			// (rank_aware needs no acknowledgment): Next says where.
			require.Equal(t, upTo(len(got)), got)
			produce(t, e.Client, "q", 12, 4, nil)
			require.NoError(t, e.Client.MarkDone(context.Background(), "q"))
			cfg.Start = l.Next()
			again, err := New(e.Client, cfg)
			require.NoError(t, err)
			got = append(got, flat(collect(t, context.Background(), again))...)
			require.Equal(t, upTo(16), got, "every row once")
			require.True(t, slices.IsSorted(got))
		})
	}
}

// Samplers that split a batch between the DP ranks (seqlen_balanced,
// token_budget): each rank breaks out with parts prefetched and restarts
// at Next, over a connection that is cut meanwhile. Every row reaches
// exactly one rank.
func TestSplitSamplersBreakAndRedial(t *testing.T) {
	for _, smp := range []string{engine.SamplerSeqlenBalanced, engine.SamplerTokenBudget} {
		for stopAt := 1; stopAt <= 3; stopAt++ {
			t.Run(smp, func(t *testing.T) {
				e, s, _ := doneRemote(t)
				produce(t, e.Client, "q", 0, 48, func(i int) int { return 1 + i%5*10 })
				require.NoError(t, e.Client.MarkDone(context.Background(), "q"))
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				got := make([][]int64, 2)
				var wg sync.WaitGroup
				for r := range 2 {
					cfg := config("q")
					cfg.DPRank, cfg.DPSize, cfg.Prefetch, cfg.Sampler = r, 2, 3, engine.SamplerSpec{Name: smp}
					if smp == engine.SamplerTokenBudget {
						cfg.MicroBatchSize, cfg.TokenBudget = 0, 60
					}
					c := remoteClient(t, e, s, 10*time.Second)
					wg.Go(func() {
						l, err := New(c, cfg)
						require.NoError(t, err)
						n := 0
						for b, err := range l.All(ctx) {
							require.NoError(t, err)
							got[r] = append(got[r], values(t, b)...)
							if n++; n == stopAt {
								break
							}
						}
						cfg.Start = l.Next()
						again, err := New(c, cfg)
						require.NoError(t, err)
						got[r] = append(got[r], flat(collect(t, ctx, again))...)
					})
				}
				time.Sleep(5 * time.Millisecond)
				s.stop()
				time.Sleep(100 * time.Millisecond)
				s.start()
				wg.Wait()
				all := append(slices.Clone(got[0]), got[1]...)
				slices.Sort(all)
				require.Equal(t, upTo(48), all, "every row to exactly one rank (stop at %d)", stopAt)
			})
		}
	}
}
