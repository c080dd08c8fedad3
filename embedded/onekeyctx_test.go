package embedded

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
)

// TestOneKeyPutWhoseContextEndedSaysItMayHaveHappened: a one-key put (or
// KV_SET) of a durable controller whose ctx ended took the change all
// the same (the controller in this process ignores ctx) and failed only
// waiting for its record: its error says the put may have happened, as
// the general path's does, rather than a bare "context canceled" for a
// put a later get sees.
func TestOneKeyPutWhoseContextEndedSaysItMayHaveHappened(t *testing.T) {
	_, _, kd, _ := kvPair(t)
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	ctx := context.Background()
	failed := 0
	for i := range 32 {
		key := fmt.Sprintf("k%d", i)
		var err error
		if i%2 == 0 {
			b := engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{[]byte(key)})})
			_, err = kd.PutKeys(gone, "p", []string{key}, b, nil)
		} else {
			_, err = kd.SetValue(gone, "p", key, "v", len(key), controller.ReadFunc(func(dst []byte) error { copy(dst, key); return nil }))
		}
		if err == nil {
			continue
		}
		failed++
		require.ErrorIs(t, err, context.Canceled, key)
		require.ErrorContains(t, err, "may have happened", key)
		b, ok, gerr := kd.one.Get(ctx, "p", key, []string{"v"}, 1<<20)
		require.NoError(t, gerr)
		require.True(t, ok, "%s: the put that failed happened", key)
		b.Release()
	}
	require.NotZero(t, failed, "no put failed waiting for its record: the test proves nothing")
}
