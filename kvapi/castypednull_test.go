package kvapi

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// A tag holding null counts as absent for CompareAndSetTag whether the
// null was put as nil or as a typed nil ([]string(nil), whose JSON is
// null too): over the network both arrive as nil, and in process, where
// the typed nil is kept as it is, it compares equal to nil. (It did not:
// the swap from nil failed and reported a current value that, passed back
// as old, failed again for ever.)
func TestCompareAndSetTypedNullIsAbsent(t *testing.T) {
	bothWays(t, func(t *testing.T, kv *KV) {
		ctx := t.Context()
		_, err := kv.Put(ctx, "p", "k", nil, engine.Tags{"s": []string(nil), "keep": 1})
		require.NoError(t, err)
		ok, cur, err := kv.CompareAndSetTag(ctx, "p", "k", "s", nil, "x")
		require.NoError(t, err)
		if !ok {
			// Try again with what it said is there, as the doc says to.
			ok, cur, err = kv.CompareAndSetTag(ctx, "p", "k", "s", cur, "x")
			require.NoError(t, err)
		}
		assert.True(t, ok, "a tag holding null counts as absent (current %#v)", cur)
		assert.Equal(t, "x", cur)
	})
}
