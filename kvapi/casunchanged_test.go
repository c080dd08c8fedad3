package kvapi

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// A compare-and-set whose new value equals the one there (a worker that
// re-asserts "running") swaps and changes nothing: the change feed has
// nothing to report after it, as for a DeleteTags of a tag the key lacks
// or a swap deleting an absent tag. (It counted as a change: every
// follower of the feed woke up and got the key again.)
func TestCompareAndSetSameValueIsNoChange(t *testing.T) {
	bothWays(t, func(t *testing.T, kv *KV) {
		ctx := t.Context()
		_, err := kv.Put(ctx, "p", "k", nil, engine.Tags{"status": "running", "n": 1})
		require.NoError(t, err)
		cs, err := kv.Changes(ctx, "p", nil)
		require.NoError(t, err)
		require.Len(t, cs.Changes, 1)

		for _, same := range []struct{ old, new any }{{"running", "running"}, {1, 1.0}, {1.0, int64(1)}} {
			name := "status"
			if same.old != "running" {
				name = "n"
			}
			ok, cur, err := kv.CompareAndSetTag(ctx, "p", "k", name, same.old, same.new)
			require.NoError(t, err)
			assert.True(t, ok, "%v to %v swaps", same.old, same.new)
			assert.True(t, engine.TagValueEqual(same.new, cur), "current %#v, want %#v", cur, same.new)
		}

		short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		got, err := kv.Changes(short, "p", cs.Cursor)
		if err == nil {
			t.Fatalf("a swap to the same value is a change: got %+v, want the wait to time out", got.Changes)
		}
		require.ErrorIs(t, err, context.DeadlineExceeded)

		// A real swap after is reported, once.
		ok, _, err := kv.CompareAndSetTag(ctx, "p", "k", "status", "running", "done")
		require.NoError(t, err)
		require.True(t, ok)
		got, err = kv.Changes(ctx, "p", cs.Cursor)
		require.NoError(t, err)
		assert.Equal(t, []Change{{Key: "k", Tags: engine.Tags{"status": "done", "n": int64(1)}}}, normalize(got.Changes))
	})
}
