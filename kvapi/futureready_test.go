package kvapi

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// A future whose call ended before the waiter's context did hands out the
// result, whatever the context is now: a put that was acknowledged is not
// reported as the waiter's cancellation (a caller told so may put again).
func TestFutureReadyBeforeContextEnded(t *testing.T) {
	kv, _ := newKV(t)
	b := engine.MustBatch(engine.Field{Name: "v", Col: col(t, []int64{1})})
	f := kv.PutAsync(context.Background(), "p", "k", b, nil)
	<-f.Done()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 100 {
		m, err := f.Wait(ctx)
		require.NoError(t, err, "the put had been acknowledged before ctx ended")
		require.Equal(t, []string{"k"}, m.Keys)
	}
}
