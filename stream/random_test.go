package stream

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestRandomGroupsWithRestarts: producers fill a partition while two DP
// groups of two ranks consume it, then mark it done; some ranks break out
// mid-stream (with batches prefetched) and restart at Next. Peers of a
// group see identical micro-batches, and every row reaches exactly one
// group.
func TestRandomGroupsWithRestarts(t *testing.T) {
	for seed := range uint64(4) {
		rng := rand.New(rand.NewPCG(seed, 7))
		e := cluster(t)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		const rows = 48
		var prod sync.WaitGroup
		prod.Go(func() {
			for lo := 0; lo < rows; lo += 6 {
				produce(t, e.Client, "p", lo, 6, nil)
				time.Sleep(time.Millisecond)
			}
			require.NoError(t, e.Client.MarkDone(ctx, "p"))
		})
		got := make([][][]int64, 4)
		var wg sync.WaitGroup
		for r := range 4 {
			cfg := config("p")
			cfg.DPRank, cfg.DPSize, cfg.Prefetch = r/2, 2, rng.IntN(4)
			stopAt := rng.IntN(6) // break after this many batches (0: never)
			wg.Go(func() {
				l, err := New(e.Client, cfg)
				require.NoError(t, err)
				for b, err := range l.All(ctx) {
					require.NoError(t, err)
					got[r] = append(got[r], values(t, b))
					if len(got[r]) == stopAt {
						break
					}
				}
				cfg.Start = l.Next()
				again, err := New(e.Client, cfg)
				require.NoError(t, err)
				got[r] = append(got[r], collect(t, ctx, again)...)
			})
		}
		wg.Wait()
		prod.Wait()
		require.Equal(t, got[0], got[1], "seed %d: ranks of group 0", seed)
		require.Equal(t, got[2], got[3], "seed %d: ranks of group 1", seed)
		all := append(flat(got[0]), flat(got[2])...)
		slices.Sort(all)
		require.Equal(t, upTo(rows), all, "seed %d: every row to exactly one group", seed)
	}
}

// TestRandomPrivateWithRestarts: two consumers of one task with a
// private sampler (sequential) share the rows of a partition filled
// while they run; one breaks out with batches prefetched, which go back
// to the task, and restarts. Every row reaches the task exactly once.
func TestRandomPrivateWithRestarts(t *testing.T) {
	for seed := range uint64(4) {
		rng := rand.New(rand.NewPCG(seed, 9))
		e := cluster(t)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		const rows = 40
		var prod sync.WaitGroup
		prod.Go(func() {
			for lo := 0; lo < rows; lo += 5 {
				produce(t, e.Client, "p", lo, 5, nil)
				time.Sleep(time.Millisecond)
			}
			require.NoError(t, e.Client.MarkDone(ctx, "p"))
		})
		var mu sync.Mutex
		var all []int64
		var wg sync.WaitGroup
		for r := range 2 {
			cfg := config("p")
			cfg.Sampler, cfg.Prefetch = engine.SamplerSpec{Name: engine.SamplerSequential}, 1+rng.IntN(3)
			stopAt := 1 + rng.IntN(3)
			wg.Go(func() {
				var mine []int64
				l, err := New(e.Client, cfg)
				require.NoError(t, err)
				n := 0
				for b, err := range l.All(ctx) {
					require.NoError(t, err)
					mine = append(mine, values(t, b)...)
					if n++; r == 0 && n == stopAt {
						time.Sleep(5 * time.Millisecond) // let the prefetcher fill its slots
						break
					}
				}
				if r == 0 {
					cfg.Start = l.Next()
					again, err := New(e.Client, cfg)
					require.NoError(t, err)
					mine = append(mine, flat(collect(t, ctx, again))...)
				}
				mu.Lock()
				all = append(all, mine...)
				mu.Unlock()
			})
		}
		wg.Wait()
		prod.Wait()
		slices.Sort(all)
		require.Equal(t, upTo(rows), all, "seed %d: every row once", seed)
	}
}

// A done partition whose last rows a GRPO sampler cannot group (a put of
// fewer rows than a group) ends the loader rather than leaving it
// waiting.
func TestGRPOLeftoverEnds(t *testing.T) {
	for _, prefetch := range []int{0, 2} {
		e := cluster(t)
		for lo := 0; lo < 6; lo += 2 {
			produce(t, e.Client, "p", lo, 2, nil)
		}
		produce(t, e.Client, "p", 6, 1, nil)
		require.NoError(t, e.Client.MarkDone(context.Background(), "p"))
		cfg := config("p")
		cfg.Sampler, cfg.Prefetch = engine.SamplerSpec{Name: engine.SamplerGRPO, N: 2}, prefetch
		l, err := New(e.Client, cfg)
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		got := collect(t, ctx, l)
		cancel()
		require.Equal(t, [][]int64{{0, 1, 2, 3}, {4, 5}}, got, "prefetch %d", prefetch)
	}
}
