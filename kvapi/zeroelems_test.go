package kvapi

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// A field whose cells hold no elements (a zero dimension after others,
// shape (2,0)), dense or ragged, goes through the one-round-trip put and
// get (KV_PUT, KV_GET) like any other: its rows take no payload bytes.
func TestKVZeroElementCells(t *testing.T) {
	ctx := t.Context()
	kv := newServedKV(t).kv
	dense, err := engine.NewDense(engine.Float64, 1, engine.Shape{2, 0}, nil)
	require.NoError(t, err)
	ragged, err := engine.NewRagged(engine.Int32, []engine.Shape{{3, 0}}, nil)
	require.NoError(t, err)
	b := engine.MustBatch(engine.Field{Name: "d", Col: dense}, engine.Field{Name: "r", Col: ragged})
	_, err = kv.Put(ctx, "p", "a", b, nil)
	require.NoError(t, err)
	got, err := kv.BatchGet(ctx, "p", []string{"a"})
	require.NoError(t, err)
	defer got.Release()
	for _, f := range b.Fields() {
		assert.True(t, got.Col(f.Name).Equal(f.Col), "field %s: got shape %v, want %v", f.Name, got.Col(f.Name).RowShape(0), f.Col.RowShape(0))
	}
}
