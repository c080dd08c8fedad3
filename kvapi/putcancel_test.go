package kvapi

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// A put whose context ends while its bytes go to the unit either commits
// (and says so) or fails having changed nothing and left nothing behind:
// what it wrote is freed at once, not left for the units' reconciliation
// a minute later. (The write waits out its grace for the unit's answer
// and returned the extents, then the commit, asked with the ended
// context, was never sent; the put failed with the context's error and
// the extents stayed allocated, unreferenced: puts that time out under
// load filled the units.)
func TestPutCanceledDuringWriteLeavesNothing(t *testing.T) {
	sc := newServed(t, nil)
	kv := sc.kv
	ctx := t.Context()
	used := func() (n int64) {
		for _, u := range sc.units {
			n += int64(u.Stats().Used)
		}
		return n
	}
	vals := make([]float32, 64<<10)
	b := engine.MustBatch(engine.Field{Name: "v", Col: col(t, vals, len(vals))})
	var failed int
	for i := range 40 {
		k := fmt.Sprint("k", i)
		cctx, cancel := context.WithCancel(ctx)
		stop := make(chan struct{})
		watched := make(chan struct{})
		go func() { // cancel as soon as the bytes reach the unit
			defer close(watched)
			for used() == 0 {
				select {
				case <-stop:
					return
				default:
				}
			}
			cancel()
		}()
		_, err := kv.Put(cctx, "p", k, b, engine.Tags{"i": i})
		close(stop)
		<-watched
		cancel()
		if err != nil {
			failed++
			require.True(t, errors.Is(err, context.Canceled), "%s: %v", k, err)
			_, gerr := kv.BatchGet(ctx, "p", []string{k})
			require.ErrorIs(t, gerr, engine.ErrNotFound, "%s: a put that failed made its key", k)
			require.Zero(t, used(), "%s: a put that failed (%v) left its bytes on the unit", k, err)
			continue
		}
		got, err := kv.BatchGet(ctx, "p", []string{k})
		require.NoError(t, err, "%s: a put that succeeded", k)
		got.Release()
		require.NoError(t, kv.Clear(ctx, "p", []string{k}))
		require.Eventually(t, func() bool { return used() == 0 }, 10*time.Second, time.Millisecond, "%s: cleared", k)
	}
	t.Logf("%d of 40 puts canceled", failed)
}
