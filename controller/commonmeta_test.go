package controller

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// bytesOf is how many bytes fn allocates: the least of three calls (see
// allocated), so that another goroutine's allocations in one of them do
// not count. fn must be safe to call three times.
func bytesOf(fn func()) uint64 {
	least := ^uint64(0)
	for range 3 {
		least = min(least, allocated(fn))
	}
	return least
}

// TestCommonMetaCostsItsFields: a get of keys with all fields (the meta
// over the fields every key holds) costs the keys and the fields it
// answers with, not keys × the partition's fields. Each key here holds a
// field of its own, so no field is common: a get of 4× the keys, of a
// partition with 4× the fields, must not allocate 16× (it did: a cell of
// every key for every field of the partition, found not common after).
func TestCommonMetaCostsItsFields(t *testing.T) {
	get := func(n int) uint64 {
		c := newController(t, DefaultConfig())
		p := fmt.Sprintf("p%d", n)
		keys := make([]string, n)
		for i := range keys {
			keys[i] = fmt.Sprintf("k%d", i)
			_, err := c.CommitKeys(keysCommit(p, keys[i:i+1], 1, fmt.Sprintf("f%d", i)))
			require.NoError(t, err)
		}
		var m *engine.BatchMeta
		b := bytesOf(func() {
			var err error
			m, err = c.ResolveKeys(p, keys, nil, false)
			require.NoError(t, err)
		})
		require.Empty(t, m.FieldNames(), "keys of fields of their own have none in common")
		require.Len(t, m.Keys, n)
		return b
	}
	small, large := get(256), get(1024)
	require.LessOrEqualf(t, large, 5*small, "a get of 256 keys allocated %d bytes, of 1024 keys %d", small, large)
}
