package controller

import (
	"math"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

func tagsOf(t *testing.T, c *Controller, partition string) map[string]engine.Tags {
	t.Helper()
	out := map[string]engine.Tags{}
	for _, k := range c.ListKeys(partition)[partition] {
		out[k.Key] = k.Tags
	}
	return out
}

func putTags(t *testing.T, c *Controller, partition string, keys []string, tags ...engine.Tags) {
	t.Helper()
	_, err := c.CommitKeys(engine.KeysCommit{Partition: partition, Keys: keys, Tags: tags})
	require.NoError(t, err)
}

func TestDeleteTags(t *testing.T) {
	c := newController(t, DefaultConfig())
	putTags(t, c, "p", []string{"a", "b", "c"},
		engine.Tags{"status": "running", "step": 1, "keep": true},
		engine.Tags{"status": "done"},
		engine.Tags{"keep": 1})

	got, err := c.DeleteTags("p", []string{"a", "b", "c"}, []string{"status", "step", "never"})
	require.NoError(t, err)
	assert.Equal(t, []engine.Tags{{"keep": true}, nil, {"keep": 1}}, got, "each key's tags after")
	assert.Equal(t, map[string]engine.Tags{"a": {"keep": true}, "b": nil, "c": {"keep": 1}}, tagsOf(t, c, "p"))

	// Again: nothing to remove, nothing changes (idempotent).
	before := c.get("p").feed.seq
	_, err = c.DeleteTags("p", []string{"a", "b"}, []string{"status"})
	require.NoError(t, err)
	assert.Equal(t, before, c.get("p").feed.seq, "removing absent tags is no change")

	// Bad input changes nothing and says what was wrong.
	for _, tc := range []struct {
		name        string
		part        string
		keys, names []string
		want        error
		says        string
	}{
		{"unknown keys", "p", []string{"a", "zz", "yy"}, []string{"keep"}, engine.ErrNotFound, `["zz" "yy"]`},
		{"unknown partition", "nope", []string{"a"}, []string{"keep"}, engine.ErrNotFound, `"nope"`},
		{"no names", "p", []string{"a"}, nil, engine.ErrInvalid, "no tag names"},
		{"empty name", "p", []string{"a"}, []string{"keep", ""}, engine.ErrInvalid, "empty tag name"},
		{"bad name", "p", []string{"a"}, []string{"\xff"}, engine.ErrInvalid, "UTF-8"},
		{"no keys", "p", nil, []string{"keep"}, engine.ErrInvalid, "empty key list"},
		{"repeated key", "p", []string{"a", "a"}, []string{"keep"}, engine.ErrInvalid, `"a"`},
	} {
		_, err := c.DeleteTags(tc.part, tc.keys, tc.names)
		require.ErrorIs(t, err, tc.want, tc.name)
		assert.Contains(t, err.Error(), tc.says, tc.name)
	}
	assert.Equal(t, map[string]engine.Tags{"a": {"keep": true}, "b": nil, "c": {"keep": 1}}, tagsOf(t, c, "p"))
}

func TestCompareAndSetTag(t *testing.T) {
	c := newController(t, DefaultConfig())
	cas := func(key, name string, old, new any) engine.TagSwapped {
		t.Helper()
		done, err := c.CompareAndSetTag(engine.TagSwap{Partition: "p", Key: key, Name: name, Old: old, New: new})
		require.NoError(t, err)
		return done
	}
	// Absent partition and key: only "absent" matches.
	assert.Equal(t, engine.TagSwapped{}, cas("a", "status", "pending", "running"))
	assert.Equal(t, engine.TagSwapped{Swapped: true}, cas("a", "status", nil, nil))
	assert.Empty(t, c.Partitions(), "a swap that sets nothing makes nothing")
	// Old nil creates the key, a tag-only key.
	assert.Equal(t, engine.TagSwapped{Swapped: true, Current: "pending"}, cas("a", "status", nil, "pending"))
	assert.Equal(t, map[string]engine.Tags{"a": {"status": "pending"}}, tagsOf(t, c, "p"))
	// A mismatch returns the value found and changes nothing.
	assert.Equal(t, engine.TagSwapped{Current: "pending"}, cas("a", "status", nil, "x"))
	assert.Equal(t, engine.TagSwapped{Current: "pending"}, cas("a", "status", "running", "x"))
	assert.Equal(t, engine.TagSwapped{Swapped: true, Current: "running"}, cas("a", "status", "pending", "running"))
	// Numbers compare by value.
	assert.True(t, cas("a", "n", nil, 1).Swapped)
	assert.True(t, cas("a", "n", 1.0, int64(2)).Swapped)
	assert.Equal(t, engine.TagSwapped{Current: int64(2)}, cas("a", "n", "2", 3))
	// New nil deletes; a tag holding null counts as absent.
	assert.True(t, cas("a", "n", 2, nil).Swapped)
	putTags(t, c, "p", []string{"a"}, engine.Tags{"z": nil})
	assert.Equal(t, engine.TagSwapped{Swapped: true, Current: "set"}, cas("a", "z", nil, "set"))
	assert.Equal(t, map[string]engine.Tags{"a": {"status": "running", "z": "set"}}, tagsOf(t, c, "p"))
	// Structured values.
	assert.True(t, cas("a", "l", nil, []any{1, "x", map[string]any{"k": true}}).Swapped)
	assert.True(t, cas("a", "l", []any{1.0, "x", map[string]any{"k": true}}, nil).Swapped)

	// Bad input: an error, and nothing changes.
	seq := c.get("p").feed.seq
	for _, tc := range []struct {
		name string
		sw   engine.TagSwap
		says string
	}{
		{"empty partition", engine.TagSwap{Key: "a", Name: "n", New: 1}, "empty partition"},
		{"empty key", engine.TagSwap{Partition: "p", Name: "n", New: 1}, "empty key"},
		{"empty name", engine.TagSwap{Partition: "p", Key: "a", New: 1}, "empty tag name"},
		{"bad key", engine.TagSwap{Partition: "p", Key: "\xff", Name: "n", New: 1}, "UTF-8"},
		{"bad value", engine.TagSwap{Partition: "p", Key: "b", Name: "n", New: math.NaN()}, "not JSON"},
		{"bad old", engine.TagSwap{Partition: "p", Key: "a", Name: "n", Old: func() {}, New: 1}, "not JSON"},
	} {
		_, err := c.CompareAndSetTag(tc.sw)
		require.ErrorIs(t, err, engine.ErrInvalid, tc.name)
		assert.Contains(t, err.Error(), tc.says, tc.name)
	}
	assert.Equal(t, seq, c.get("p").feed.seq)
	assert.Equal(t, map[string]engine.Tags{"a": {"status": "running", "z": "set"}}, tagsOf(t, c, "p"))
}

// TestCompareAndSetTagCounter: goroutines increment a counter tag with
// read-modify-write through CompareAndSetTag; the counter ends at exactly
// the number of swaps that succeeded.
func TestCompareAndSetTagCounter(t *testing.T) {
	c := newController(t, DefaultConfig())
	const workers, tries = 16, 200
	var wg sync.WaitGroup
	wins := make([]int, workers)
	for w := range workers {
		wg.Go(func() {
			for range tries {
				done, err := c.CompareAndSetTag(engine.TagSwap{Partition: "p", Key: "k", Name: "n"})
				if !assert.NoError(t, err) {
					return
				}
				var next int64 = 1
				if n, ok := (engine.Tags{"n": done.Current}).Int("n"); ok {
					next = n + 1
				}
				done, err = c.CompareAndSetTag(engine.TagSwap{Partition: "p", Key: "k", Name: "n", Old: done.Current, New: next})
				if !assert.NoError(t, err) {
					return
				}
				if done.Swapped {
					wins[w]++
				}
			}
		})
	}
	wg.Wait()
	total := 0
	for _, n := range wins {
		total += n
	}
	require.Positive(t, total)
	n, ok := tagsOf(t, c, "p")["k"].Int("n")
	require.True(t, ok)
	assert.Equal(t, int64(total), n)
}

func TestListKeysWhere(t *testing.T) {
	c := newController(t, DefaultConfig())
	putTags(t, c, "p", []string{"a", "b", "c", "d", "e"},
		engine.Tags{"status": "finished", "n": 1},
		engine.Tags{"status": "running", "n": 2.0},
		engine.Tags{"status": "failure"},
		engine.Tags{"is_prompt": true},
		nil)
	putTags(t, c, "q", []string{"x"}, engine.Tags{"status": "finished", "n": int64(1)})
	keys := func(where ...engine.TagCondition) map[string][]string {
		t.Helper()
		got, err := c.ListKeysWhere("", where)
		require.NoError(t, err)
		out := map[string][]string{}
		for p, ks := range got {
			for _, k := range ks {
				out[p] = append(out[p], k.Key)
			}
		}
		return out
	}
	eq := func(n string, v any) engine.TagCondition {
		return engine.TagCondition{Name: n, Test: engine.TagEquals, Values: []any{v}}
	}
	assert.Equal(t, map[string][]string{"p": {"a"}, "q": {"x"}}, keys(eq("status", "finished")))
	assert.Equal(t, map[string][]string{"p": {"a", "c"}, "q": {"x"}},
		keys(engine.TagCondition{Name: "status", Test: engine.TagIn, Values: []any{"finished", "failure"}}))
	assert.Equal(t, map[string][]string{"p": {"a", "b"}, "q": {"x"}}, keys(engine.TagCondition{Name: "n", Test: engine.TagIn, Values: []any{2, 1.0}}))
	assert.Equal(t, map[string][]string{"p": {"b"}}, keys(engine.TagCondition{Name: "n", Test: engine.TagIn, Values: []any{2, 1.0}}, eq("status", "running")))
	assert.Equal(t, map[string][]string{"p": {"d"}}, keys(engine.TagCondition{Name: "is_prompt", Test: engine.TagExists}))
	assert.Equal(t, map[string][]string{"p": {"d", "e"}}, keys(engine.TagCondition{Name: "status", Test: engine.TagAbsent}))
	assert.Equal(t, map[string][]string{"p": {"a", "b", "c", "d", "e"}, "q": {"x"}}, keys())

	// Pages: limit counts the keys that pass; the cursor runs on.
	var got []string
	var cursor []byte
	for {
		page, next, err := c.ListKeysPageWhere("p", engine.TagFilter{{Name: "status", Test: engine.TagExists}}, cursor, 1)
		require.NoError(t, err)
		for _, pk := range page {
			for _, k := range pk.Keys {
				got = append(got, k.Key)
			}
		}
		if next == nil {
			break
		}
		cursor = next
	}
	assert.Equal(t, []string{"a", "b", "c"}, got)

	for _, bad := range []engine.TagFilter{
		{{Name: "", Test: engine.TagExists}},
		{{Name: "s", Test: engine.TagEquals}},
		{{Name: "s", Test: engine.TagEquals, Values: []any{1, 2}}},
		{{Name: "s", Test: engine.TagAbsent, Values: []any{1}}},
		{{Name: "s", Test: 9}},
		{{Name: "s", Test: engine.TagIn}},
		{{Name: "s", Test: engine.TagEquals, Values: []any{math.Inf(1)}}},
	} {
		_, err := c.ListKeysWhere("p", bad)
		assert.ErrorIs(t, err, engine.ErrInvalid, "%v", bad)
	}
}

// TestListKeysWhereScansBounded: a filter few keys pass reads a bounded
// number of keys per page; pages may then be empty and still go on.
func TestListKeysWhereScansBounded(t *testing.T) {
	c := newController(t, DefaultConfig())
	n := maxKeysScan + 10
	keys := make([]string, n)
	tags := make([]engine.Tags, n)
	for i := range keys {
		keys[i] = string(rune(0x4e00+i%20000)) + string(rune('a'+i/20000))
	}
	tags[n-1] = engine.Tags{"last": true}
	_, err := c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: keys, Tags: tags})
	require.NoError(t, err)
	where := engine.TagFilter{{Name: "last", Test: engine.TagExists}}
	page, next, err := c.ListKeysPageWhere("p", where, nil, 0)
	require.NoError(t, err)
	assert.Empty(t, page)
	require.NotNil(t, next, "the scan stopped at its bound")
	page, next, err = c.ListKeysPageWhere("p", where, next, 0)
	require.NoError(t, err)
	assert.Nil(t, next)
	require.Len(t, page, 1)
	assert.Equal(t, keys[n-1], page[0].Keys[0].Key)
}
