package kvapi

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// Tags that JSON cannot carry unchanged (a tag name or string value that
// is not valid UTF-8, which encoding/json rewrites to U+FFFD; a NaN) are
// refused with ErrInvalid and change nothing, in process and through a
// controller server alike: the client checks them before it sends
// anything, as the controller checks what it is given.
func TestTagsJSONWouldChangeAreRefused(t *testing.T) {
	check := func(t *testing.T, kv *KV, used func() int64) {
		ctx := t.Context()
		_, err := kv.BatchPut(ctx, "p", demoKeys, demoBatch(t), demoTags())
		require.NoError(t, err)
		before, err := kv.List(ctx, "")
		require.NoError(t, err)
		u0 := used()
		for name, tags := range map[string][]engine.Tags{
			"nan (control: refused both ways)": {{"a": 1}, {"a": math.NaN()}, {}, {}},
			"string value not UTF-8":           {{"a": 1}, {"a": "\xff"}, {}, {}},
			"tag name not UTF-8":               {{"a": 1}, {"\xff": 1}, {}, {}},
		} {
			keys := []string{"1_0", "new1", "2_0", "new2"}
			_, err := kv.BatchPut(ctx, "p", keys, demoBatch(t), tags)
			assert.ErrorIs(t, err, engine.ErrInvalid, name)
		}
		_, _, err = kv.CompareAndSetTag(ctx, "p", "1_1", "status", "running", "\xff")
		assert.ErrorIs(t, err, engine.ErrInvalid, "swap to a value that is not UTF-8")
		_, err = kv.ListWhere(ctx, "p", Eq("status", "\xff"))
		assert.ErrorIs(t, err, engine.ErrInvalid, "a filter on a value that is not UTF-8")
		after, err := kv.List(ctx, "")
		require.NoError(t, err)
		assert.Equal(t, before, after, "bad tags changed keys or tags")
		assert.Equal(t, u0, used(), "bad tags changed storage use")
	}
	t.Run("embedded", func(t *testing.T) {
		kv, e := newKV(t)
		check(t, kv, func() int64 { return int64(e.Units[0].Stats().Used + e.Units[1].Stats().Used) })
	})
	t.Run("remote", func(t *testing.T) {
		sc := newServed(t, nil)
		check(t, sc.kv, func() int64 {
			var n int64
			for _, u := range sc.units {
				n += int64(u.Stats().Used)
			}
			return n
		})
	})
}
