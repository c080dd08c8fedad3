package client_test

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// TestKVBatchGetViewsOverShm holds README's KV API paragraph on views:
// over shared memory a BatchGet lends read-only views (a write faults)
// until Release, and a small one comes as a copy; a Select or Slice
// aliases the same memory and shares its Release, so releasing only a
// selection gives the lease back; Take and Clone copy; BatchGetCopy
// always copies.
func TestKVBatchGetViewsOverShm(t *testing.T) {
	ctx := t.Context()
	c, u := shmClient(t, client.DefaultConfig())
	kv := kvapi.New(c)
	keys := []string{"a", "b", "c"}
	vals := make([]float32, 3*4096) // 3 rows of 16 KiB
	for i := range vals {
		vals[i] = float32(i)
	}
	big, err := engine.DenseOf(vals, 4096)
	require.NoError(t, err)
	small, err := engine.DenseOf(vals[:6], 2)
	require.NoError(t, err)
	_, err = kv.BatchPut(ctx, "p", keys, engine.MustBatch(engine.Field{Name: "x", Col: big}, engine.Field{Name: "s", Col: small}), nil)
	require.NoError(t, err)
	leasesDrop := func(why string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for u.Stats().Leases != 0 {
			require.True(t, time.Now().Before(deadline), "%s: leases %d", why, u.Stats().Leases)
			time.Sleep(time.Millisecond)
		}
	}

	got, err := kv.BatchGet(ctx, "p", keys)
	require.NoError(t, err)
	require.True(t, got.Aliased(), "a BatchGet over shm copied")
	view, _ := engine.Values[float32](got.Col("x"))
	require.Equal(t, vals, view)
	assert.True(t, faults(func() { view[0] = 42 }), "a write through a view did not fault")

	sel, err := got.Select("x")
	require.NoError(t, err)
	part, err := got.Slice(1, 2)
	require.NoError(t, err)
	taken, err := got.Take([]int{2})
	require.NoError(t, err)
	clone := got.Clone()
	assert.True(t, sel.Aliased() && part.Aliased(), "Select and Slice alias")
	for name, b := range map[string]*engine.Batch{"Take": taken, "Clone": clone} {
		owned, _ := engine.Values[float32](b.Col("x"))
		assert.False(t, b.Aliased(), name)
		assert.False(t, faults(func() { owned[0] = 42 }), "%s: not a writable copy", name)
	}
	assert.NotZero(t, u.Stats().Leases)
	sel.Release() // a caller that keeps only a selection releases it
	leasesDrop("the selection released")
	got.Release() // shared: harmless again
	part.Release()

	one, err := kv.BatchGet(ctx, "p", keys, "s") // 48 bytes: in the unit's answer
	require.NoError(t, err)
	s, _ := engine.Values[float32](one.Col("s"))
	assert.False(t, one.Aliased(), "a small BatchGet comes as a copy")
	assert.Equal(t, vals[:6], s)
	one.Release()

	cp, err := kv.BatchGetCopy(ctx, "p", keys, "x")
	require.NoError(t, err)
	owned, _ := engine.Values[float32](cp.Col("x"))
	assert.False(t, cp.Aliased())
	assert.True(t, slices.Equal(owned, vals))
	assert.False(t, faults(func() { owned[0] = 42 }), "BatchGetCopy: not a writable copy")
	leasesDrop("BatchGetCopy")
}
