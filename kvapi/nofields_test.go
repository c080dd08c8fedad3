package kvapi

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestBatchGetNoCommonField reads, naming no field, keys that share no
// field (a tag-only key among them): every path answers with the same
// empty batch, including a controller that carries the bytes (KV_GET),
// whose answer of no fields once came back as no batch and no meta.
func TestBatchGetNoCommonField(t *testing.T) {
	k0, _ := newKV(t)
	for _, tc := range []struct {
		name string
		kv   *KV
	}{
		{"embedded", k0},
		{"remote", newServed(t, nil).kv},
		{"remote carrying bytes", newServedKV(t).kv},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			_, err := tc.kv.Put(ctx, "p", "tagged", nil, engine.Tags{"step": 1})
			require.NoError(t, err)
			_, err = tc.kv.Put(ctx, "p", "x", engine.MustBatch(engine.Field{Name: "x", Col: col(t, []int64{1})}), nil)
			require.NoError(t, err)
			for _, keys := range [][]string{{"tagged"}, {"tagged", "x"}} {
				b, err := tc.kv.BatchGet(ctx, "p", keys)
				require.NoError(t, err, "keys %q", keys)
				require.NotNil(t, b, "keys %q", keys)
				assert.Equal(t, 0, b.NumFields(), "keys %q", keys)
				b.Release()
			}
		})
	}
}
