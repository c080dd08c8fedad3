package stream

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// Two private consumers of one task over a done partition (24 rows,
// micro-batches of 4). A yields its first micro-batch while its
// prefetcher holds the next three (rows 4..15, consumed for the task); B
// then takes the rest (16..23) and finds the partition done with every
// row consumed. A breaks and gives its three batches back. B must not
// have ended meanwhile, or rows 4..15 reach no one: A's fetches hold their
// rows until A's loop takes them (engine.FetchRequest.Hold), so B waits
// for them instead of ending, and gets them.
func TestPrivateConsumerEndsBeforeAPeersGiveBack(t *testing.T) {
	e := cluster(t)
	ctx := context.Background()
	produce(t, e.Client, "p", 0, 24, nil)
	require.NoError(t, e.Client.MarkDone(ctx, "p"))
	cfg := config("p")
	cfg.Sampler, cfg.Prefetch = engine.SamplerSpec{Name: engine.SamplerSequential}, 3
	a, err := New(e.Client, cfg)
	require.NoError(t, err)
	cfg.Prefetch = 0
	b, err := New(e.Client, cfg)
	require.NoError(t, err)

	var gotA []int64
	gotB := make(chan []int64, 1)
	rowsB := make(chan int, 16)
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for batch, err := range a.All(ctx) {
		require.NoError(t, err)
		gotA = append(gotA, values(t, batch)...)
		// A's prefetcher holds three micro-batches.
		require.Eventually(t, func() bool { return consumedRows(t, e, "p") == 16 }, 10*time.Second, 5*time.Millisecond)
		go func() {
			var got []int64
			for bb, err := range b.All(tctx) {
				if !assert.NoError(t, err) {
					break
				}
				got = append(got, values(t, bb)...)
				rowsB <- len(got)
			}
			gotB <- got
		}()
		// B took every row nobody holds.
		for n := 0; n < 8; {
			select {
			case n = <-rowsB:
			case <-tctx.Done():
				t.Fatal("B did not get the rows nobody holds")
			}
		}
		break // A gives back rows 4..15
	}
	require.NoError(t, a.Err())
	all := append(gotA, <-gotB...)
	slices.Sort(all)
	require.Equal(t, upTo(24), all, "every row reaches one of the task's consumers")
}
