package kvapi

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
)

// README's batch API section: GRPO groups each run of n rows of a put
// from its first, and of a KV put only its new keys count. A put of
// [c, b, d] where b exists writes b in place and makes c and d, one
// group of two; a batch holds each group's rows side by side, in its
// put's order.
func TestGRPOGroupsAKVPutsNewKeys(t *testing.T) {
	bothWays(t, func(t *testing.T, kv *KV) {
		ctx := t.Context()
		x := func(vs ...int64) *engine.Batch {
			return engine.MustBatch(engine.Field{Name: "x", Col: col(t, vs)})
		}
		_, err := kv.BatchPut(ctx, "train", []string{"a", "b"}, x(1, 2), nil)
		require.NoError(t, err)
		_, err = kv.BatchPut(ctx, "train", []string{"c", "b", "d"}, x(3, 20, 4), nil)
		require.NoError(t, err)
		c := kv.Client()
		m, err := c.GetMeta(ctx, client.MetaRequest{Partition: "train", Task: "actor", Fields: []string{"x"}, BatchSize: 4,
			Sampler: engine.SamplerSpec{Name: engine.SamplerGRPO, N: 2}})
		require.NoError(t, err)
		got, err := c.Get(ctx, m)
		require.NoError(t, err)
		defer got.Release()
		vals, err := engine.Values[int64](got.Col("x"))
		require.NoError(t, err)
		assert.Equal(t, []int64{1, 20, 3, 4}, vals, "groups {a, b} and {c, d}")
	})
}
