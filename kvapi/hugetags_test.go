package kvapi

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestHugeTagsRefused: tags that grow past what one key may hold, by one
// put or by merging puts, and a put whose answer would hold more tags
// than a frame carries, are refused naming the key, change nothing, and
// leave the partition listable and its change feed readable. (A put that
// grew a key's tags past the frame limit used to be applied and then
// fail to answer, and every List and Changes of the partition failed
// from then on.)
func TestHugeTagsRefused(t *testing.T) {
	bothWays(t, func(t *testing.T, kv *KV) {
		ctx := t.Context()
		// Just past the bound (the name and quotes add the rest): it is the
		// bound that is checked, and 25 MiB tags through JSON under -race
		// took most of kvapi's test time.
		big := strings.Repeat("x", engine.MaxTagsBytes)
		half := strings.Repeat("h", engine.MaxTagsBytes/2)
		_, err := kv.Put(ctx, "p", "k", nil, engine.Tags{"a": "small"})
		require.NoError(t, err)
		for _, n := range []string{"a", "b", "c"} {
			_, err = kv.Put(ctx, "p", "k", nil, engine.Tags{n: big})
			require.ErrorIs(t, err, engine.ErrInvalid, "tag %q of 1 MiB", n)
			assert.Contains(t, err.Error(), `"k"`, "the error names the key")
		}
		// Each put under the bound, their merge past it.
		_, err = kv.Put(ctx, "p", "k", nil, engine.Tags{"b": half})
		require.NoError(t, err)
		_, err = kv.Put(ctx, "p", "k", nil, engine.Tags{"c": half})
		require.ErrorIs(t, err, engine.ErrInvalid, "two halves merged")
		assert.Contains(t, err.Error(), `"k"`, "the error names the key")
		ok, _, err := kv.CompareAndSetTag(ctx, "p", "k", "a", "small", big)
		require.ErrorIs(t, err, engine.ErrInvalid)
		assert.False(t, ok)
		assert.Equal(t, map[string]engine.Tags{"k": {"a": "small", "b": half}}, listed(t, kv, "p"), "nothing applied")

		// Many keys near the limit each: one put of a small tag to all of
		// them would answer more than a frame holds.
		near := strings.Repeat("y", engine.MaxTagsBytes-64)
		keys := make([]string, 70)
		for i := range keys {
			keys[i] = fmt.Sprintf("n%02d", i)
			_, err = kv.Put(ctx, "p", keys[i], nil, engine.Tags{"note": near})
			require.NoError(t, err)
		}
		tags := make([]engine.Tags, len(keys))
		for i := range tags {
			tags[i] = engine.Tags{"status": "done"}
		}
		_, err = kv.BatchPut(ctx, "p", keys, nil, tags)
		require.ErrorIs(t, err, engine.ErrInvalid)
		all := listed(t, kv, "p", Exists("status"))
		assert.Empty(t, all, "nothing applied")
		_, err = kv.BatchPut(ctx, "p", keys[:20], nil, tags[:20])
		require.NoError(t, err, "fewer keys at once")

		cs, err := kv.Changes(ctx, "p", nil)
		require.NoError(t, err)
		assert.NotEmpty(t, cs.Changes)
	})
}
