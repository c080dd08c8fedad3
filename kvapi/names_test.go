package kvapi

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// Keys, partitions and fields that are not valid UTF-8 are refused with
// engine.ErrInvalid quoting them, and nothing is stored: the partition
// stays empty.
func TestInvalidUTF8Names(t *testing.T) {
	kv, e := newKV(t)
	const bad = "\xff\xfe"
	ids, err := engine.DenseOf([]int64{1, 2}, 1)
	require.NoError(t, err)
	good := engine.MustBatch(engine.Field{Name: "x", Col: ids})
	badField := engine.MustBatch(engine.Field{Name: bad, Col: ids})
	one := engine.MustBatch(engine.Field{Name: "x", Col: must[*engine.Column](t)(engine.DenseOf([]int64{1}, 1))})
	for _, tc := range []struct {
		name, what string
		op         func(ctx context.Context) error
	}{
		{"put: key", "key", func(ctx context.Context) error { _, err := kv.Put(ctx, "p", bad, one, nil); return err }},
		{"put: partition", "partition", func(ctx context.Context) error { _, err := kv.Put(ctx, bad, "k", one, nil); return err }},
		{"batch put: key", "key", func(ctx context.Context) error {
			_, err := kv.BatchPut(ctx, "p", []string{"a", bad}, good, nil)
			return err
		}},
		{"batch put: field", "field", func(ctx context.Context) error {
			_, err := kv.BatchPut(ctx, "p", []string{"a", "b"}, badField, nil)
			return err
		}},
		{"batch put async: key", "key", func(ctx context.Context) error {
			_, err := kv.BatchPutAsync(ctx, "p", []string{bad, "b"}, good, nil).Wait(ctx)
			return err
		}},
		{"batch get: key", "key", func(ctx context.Context) error { _, err := kv.BatchGet(ctx, "p", []string{bad}); return err }},
		{"batch get: field", "field", func(ctx context.Context) error { _, err := kv.BatchGet(ctx, "p", []string{"a"}, bad); return err }},
		{"batch get copy: partition", "partition", func(ctx context.Context) error {
			_, err := kv.BatchGetCopy(ctx, bad, []string{"a"})
			return err
		}},
		{"size of: key", "key", func(ctx context.Context) error { _, err := kv.SizeOf(ctx, "p", []string{bad}); return err }},
		{"list: partition", "partition", func(ctx context.Context) error { _, err := kv.List(ctx, bad); return err }},
		{"clear: key", "key", func(ctx context.Context) error { return kv.Clear(ctx, "p", []string{bad}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.op(t.Context())
			require.ErrorIs(t, err, engine.ErrInvalid)
			assert.Contains(t, err.Error(), fmt.Sprintf("%s %q", tc.what, bad))
		})
	}
	assert.Empty(t, e.Controller.Partitions(), "nothing was created")
}

// Names of exactly engine.MaxNameBytes are names like any other: a key,
// partition and field that long are put, read back and listed whole.
func TestLongestNames(t *testing.T) {
	kv, _ := newKV(t)
	name := func(c string) string { return strings.Repeat(c, engine.MaxNameBytes) }
	partition, key, field := name("p"), name("k"), name("f")
	ids, err := engine.DenseOf([]int64{7}, 1)
	require.NoError(t, err)
	_, err = kv.Put(t.Context(), partition, key, engine.MustBatch(engine.Field{Name: field, Col: ids}), nil)
	require.NoError(t, err)
	got, err := kv.BatchGetCopy(t.Context(), partition, []string{key}, field)
	require.NoError(t, err)
	col := got.Col(field)
	require.NotNil(t, col, "the field comes back under its whole name")
	assert.Equal(t, []int64{7}, must[[]int64](t)(engine.Values[int64](col)))
	listed, err := kv.List(t.Context(), partition)
	require.NoError(t, err)
	require.Len(t, listed[partition], 1)
	assert.Equal(t, key, listed[partition][0].Key)
}
