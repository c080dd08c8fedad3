package controller

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
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

// Null is absent on both sides of a compare-and-set, over the wire and in
// process alike: null as the new value deletes the tag (and creates no
// key), as a typed nil does in process.
func TestCompareAndSetTagNullIsAbsent(t *testing.T) {
	c := newController(t, DefaultConfig())
	_, addr := startServer(t, c, ServerConfig{}, "unix")
	conn := dialRaw(t, addr, "")
	putTags(t, c, "p", []string{"a", "b"}, engine.Tags{"lock": "me", "x": 1}, engine.Tags{"lock": "me", "x": 1})

	var r wirepb.CompareAndSetTagReply
	require.NoError(t, do(conn, wire.OpCompareAndSetTag, &wirepb.CompareAndSetTagRequest{Partition: "p", Key: "new", Name: "lock", NewValue: []byte("null")}, &r))
	assert.True(t, r.Swapped)
	assert.Equal(t, []bool{false}, c.HasKeys("p", []string{"new"}), "setting an absent tag to null makes nothing")
	require.NoError(t, do(conn, wire.OpCompareAndSetTag, &wirepb.CompareAndSetTagRequest{Partition: "p", Key: "a", Name: "lock", OldValue: []byte(`"me"`), NewValue: []byte("null")}, &r))
	assert.True(t, r.Swapped)
	done, err := c.CompareAndSetTag(engine.TagSwap{Partition: "p", Key: "b", Name: "lock", Old: "me", New: []any(nil)})
	require.NoError(t, err)
	assert.True(t, done.Swapped)
	done, err = c.CompareAndSetTag(engine.TagSwap{Partition: "p", Key: "b", Name: "x", Old: map[string]any(nil)})
	require.NoError(t, err)
	assert.Equal(t, engine.TagSwapped{Current: 1}, done, "a typed nil Old is absent, which x is not")
	assert.Equal(t, map[string]engine.Tags{"a": {"x": 1}, "b": {"x": 1}}, tagsOf(t, c, "p"))
}

// A controller without a log refuses the tags one with a log refuses:
// values with no JSON form (NaN, ±Inf, a number beyond a float64's range
// over the wire, a channel) would be kept, then fail every listing, change
// feed and checkpoint of the partition.
func TestTagsWithoutJSONRefused(t *testing.T) {
	durable := openDurable(t, t.TempDir(), Config{})
	t.Cleanup(func() { durable.Close() })
	mem := newController(t, DefaultConfig())
	for name, c := range map[string]*Controller{"durable": durable, "in memory": mem} {
		for _, tags := range []engine.Tags{
			{"score": math.NaN()},
			{"score": math.Inf(-1)},
			{"nested": map[string]any{"r": []any{1, float32(math.Inf(1))}}},
			{"ch": make(chan int)},
			{"n": json.Number("1e400")},       // the log would hold what no restart reads back
			{"n": json.Number("NaN")},         // not a JSON number: no listing could send it
			{"n": json.Number("01")},          // nor this
			{"u": uint64(math.MaxUint64 - 1)}, // it would read back as a float64
			{"s": "a\xffb"},                   // JSON would change its bytes
			{"": 1},
		} {
			_, err := c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: []string{"k"}, Tags: []engine.Tags{tags}})
			require.ErrorIs(t, err, engine.ErrInvalid, "%s: %v", name, tags)
			assert.Regexp(t, `key "k": (tag "|empty tag name)`, err.Error(), name)
			err = c.SetTags("p", []uint64{0}, []engine.Tags{tags})
			assert.ErrorIs(t, err, engine.ErrInvalid, "%s: SET_TAGS %v", name, tags)
		}
		assert.Equal(t, []bool{false}, c.HasKeys("p", []string{"k"}), name)
		require.NoError(t, c.Save(filepath.Join(t.TempDir(), "ck")), name)
	}
	// What is taken reads back the same after a restart.
	dir := t.TempDir()
	d := openDurable(t, dir, Config{})
	ok := engine.Tags{"i": uint64(math.MaxInt64), "n": json.Number("12.5"), "m": json.Number("-7"), "s": "ünï"}
	putTags(t, d, "p", []string{"k"}, ok)
	want := stateBytes(t, d)
	require.NoError(t, d.Close())
	d = openDurable(t, dir, Config{})
	t.Cleanup(func() { d.Close() })
	assert.Equal(t, want, stateBytes(t, d))
	assert.Equal(t, engine.Tags{"i": int64(math.MaxInt64), "n": 12.5, "m": int64(-7), "s": "ünï"}, tagsOf(t, d, "p")["k"])

	_, addr := startServer(t, mem, ServerConfig{}, "unix")
	conn := dialRaw(t, addr, "")
	putTags(t, mem, "q", []string{"good"}, engine.Tags{"status": "ok"})
	err := do(conn, wire.OpCommitKeys, &wirepb.CommitKeysRequest{Partition: "q", Keys: []string{"bad"}, HasTags: true, Tags: [][]byte{[]byte(`{"n":1e400}`)}}, &wirepb.CommitKeysReply{})
	assert.Equal(t, wirepb.Code_CODE_INVALID, codeOf(err), "%v", err)
	assert.Equal(t, []bool{false}, mem.HasKeys("q", []string{"bad"}), "a refused put makes no key")
	require.NoError(t, do(conn, wire.OpListKeys, &wirepb.ListKeysRequest{Partition: "q"}, &wirepb.ListKeysReply{}))
	require.NoError(t, do(conn, wire.OpKeyChanges, &wirepb.KeyChangesRequest{Partition: "q"}, &wirepb.KeyChangesReply{}))
}

// A page of keys or of changes closes by the size its tags take as JSON,
// not by their number: 4096 keys with 17 KB of tags each (68 MiB) would
// be a reply over the frame limit, refused on every try.
func TestKeyPagesCountTagBytes(t *testing.T) {
	c := newController(t, DefaultConfig())
	_, addr := startServer(t, c, ServerConfig{}, "unix")
	conn := dialRaw(t, addr, "")
	big := strings.Repeat("a", 17<<10)
	keys := make([]string, DefaultKeysPage)
	tags := make([]engine.Tags, len(keys))
	for i := range keys {
		keys[i] = fmt.Sprint("k", i)
		tags[i] = engine.Tags{"note": big}
		if i%2 == 1 {
			tags[i] = engine.Tags{"note": strings.Repeat("\x01", 3<<10)} // 6 bytes each as JSON
		}
	}
	// In puts of 512 keys: one answer carries at most 32 MiB of tags.
	for i := 0; i < len(keys); i += 512 {
		putTags(t, c, "p", keys[i:i+512], tags[i:i+512]...)
	}

	page, next, err := c.ListKeysPage("p", nil, 0)
	require.NoError(t, err)
	require.NotNil(t, next)
	n := 0
	for _, k := range page[0].Keys {
		b, err := json.Marshal(k.Tags)
		require.NoError(t, err)
		n += len(k.Key) + len(b)
	}
	assert.LessOrEqual(t, n, maxKeysPageBytes+(64<<10), "a page holds about %d bytes", maxKeysPageBytes)
	assert.Greater(t, n, maxKeysPageBytes/4)

	listed, feed := 0, 0
	for cur := []byte(nil); ; {
		var r wirepb.ListKeysReply
		require.NoError(t, do(conn, wire.OpListKeys, &wirepb.ListKeysRequest{Partition: "p", Cursor: cur}, &r), "LIST_KEYS")
		for _, p := range r.Partitions {
			listed += len(p.Keys)
		}
		if cur = r.Next; cur == nil {
			break
		}
	}
	for cur := []byte(nil); ; {
		var r wirepb.KeyChangesReply
		require.NoError(t, do(conn, wire.OpKeyChanges, &wirepb.KeyChangesRequest{Partition: "p", Cursor: cur}, &r), "KEY_CHANGES")
		feed += len(r.Changes)
		if cur = r.Cursor; !r.More {
			break
		}
	}
	assert.Equal(t, len(keys), listed)
	assert.Equal(t, len(keys), feed)
}

// A listing's cursor carries its partition's generation: keys of a
// partition cleared and made again between two pages are numbered from 1
// again, and are all listed, not skipped as if listed already.
func TestListKeysPagesAcrossPartitionClear(t *testing.T) {
	c := newController(t, DefaultConfig())
	putTags(t, c, "p", []string{"a1", "a2", "a3", "a4"}, nil, nil, nil, nil)
	page, next, err := c.ListKeysPage("p", nil, 2)
	require.NoError(t, err)
	require.Len(t, page[0].Keys, 2)
	require.NotNil(t, next)

	_, err = c.ClearPartition("p")
	require.NoError(t, err)
	putTags(t, c, "p", []string{"b1", "b2", "b3", "b4"}, nil, nil, nil, nil)
	var rest []string
	for cur := next; cur != nil; {
		page, cur, err = c.ListKeysPage("p", cur, 2)
		require.NoError(t, err)
		for _, pk := range page {
			for _, k := range pk.Keys {
				rest = append(rest, k.Key)
			}
		}
	}
	assert.Equal(t, []string{"b1", "b2", "b3", "b4"}, rest)
}

// KeyCount counts a partition's keys, tag-only keys among them, as
// Stats does, and names an unknown partition.
func TestKeyCount(t *testing.T) {
	c := newController(t, DefaultConfig())
	_, err := c.KeyCount("p")
	require.ErrorIs(t, err, engine.ErrNotFound)
	require.ErrorContains(t, err, `"p"`)
	putTags(t, c, "p", []string{"a", "b", "c"}, engine.Tags{"x": 1}, engine.Tags{"x": 2}, engine.Tags{"x": 3})
	n, err := c.KeyCount("p")
	require.NoError(t, err)
	assert.Equal(t, 3, n)
	_, _, err = c.ClearKeysCounted("p", []string{"b"})
	require.NoError(t, err)
	n, err = c.KeyCount("p")
	require.NoError(t, err)
	st, err := c.Stats("p")
	require.NoError(t, err)
	assert.Equal(t, st.Keys, n)
	assert.Equal(t, 2, n)
}

// TestTagNumbersMatchAcrossRestart: numbers compare by value wherever
// they sit, as they read back from the log. A json.Number ("1.0") or a
// -0 inside a list is kept as given until a durable controller restarts,
// then as the number JSON reads (float64 1, int64 0): filters and swaps
// must answer the same before and after.
func TestTagNumbersMatchAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	c := openDurable(t, dir, Config{})
	putTags(t, c, "p", []string{"a", "b", "c"},
		engine.Tags{"n": json.Number("1.0")},
		engine.Tags{"l": []any{math.Copysign(0, -1)}},
		engine.Tags{"m": map[string]any{"x": json.Number("2.50")}})
	where := []engine.TagFilter{
		{{Name: "n", Test: engine.TagEquals, Values: []any{1}}},
		{{Name: "l", Test: engine.TagEquals, Values: []any{[]any{0}}}},
		{{Name: "m", Test: engine.TagEquals, Values: []any{map[string]any{"x": 2.5}}}},
	}
	answers := func(c *Controller) []string {
		var out []string
		for _, f := range where {
			got, err := c.ListKeysWhere("p", f)
			require.NoError(t, err)
			keys := []string{}
			for _, k := range got["p"] {
				keys = append(keys, k.Key)
			}
			out = append(out, fmt.Sprintf("%v: %v", f, keys))
		}
		return out
	}
	want := []string{"[n == 1]: [a]", "[l == [0]]: [b]", "[m == map[x:2.5]]: [c]"}
	assert.Equal(t, want, answers(c), "before the restart")
	require.NoError(t, c.Close())
	c = openDurable(t, dir, Config{})
	t.Cleanup(func() { c.Close() })
	assert.Equal(t, want, answers(c), "after the restart")
}

// DeleteTags answers every key's tags: a call naming more keys than one
// answer can carry the tags of is refused before anything changes (it was
// applied, and its answer could not be sent). A key whose tags are past
// the bound already (from before it) may still shrink, not grow.
func TestTagBoundsOfDeletesAndShrinks(t *testing.T) {
	c := newController(t, DefaultConfig())
	big := strings.Repeat("b", engine.MaxTagsBytes-64)
	keys := make([]string, 40) // 40 MiB of tags: more than an answer's 32
	for i := range keys {
		keys[i] = fmt.Sprint("k", i)
		putTags(t, c, "p", keys[i:i+1], engine.Tags{"big": big, "small": 1})
	}
	_, err := c.DeleteTags("p", keys, []string{"small"})
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.ErrorContains(t, err, "name fewer keys at once")
	got, err := c.DeleteTags("p", keys[:20], []string{"small"})
	require.NoError(t, err)
	require.Len(t, got, 20)
	st, err := c.DeleteTags("p", keys[20:21], []string{"never"})
	require.NoError(t, err)
	require.Equal(t, 1, st[0]["small"], "the refused delete changed nothing")

	// A key past the bound (as a put before it could make).
	p := c.parts["p"]
	p.mu.Lock()
	r, _ := p.lookupKeys([]string{"k0"})
	p.setTags(r[0], engine.Tags{"big": big + big, "pad": strings.Repeat("p", 1000)})
	p.mu.Unlock()
	_, err = c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: []string{"k0"}, Tags: []engine.Tags{{"more": 1}}})
	require.ErrorIs(t, err, engine.ErrInvalid, "growing it")
	putTags(t, c, "p", []string{"k0"}, engine.Tags{"pad": 1}) // smaller, still past the bound
}

// TestDeleteTagsManyNamesOrTags: a delete naming far more tags than a key
// holds (and names twice), and a key holding far more tags than the
// delete names, each count and remove what the key had, and a restart
// replays the journal to the same tags.
func TestDeleteTagsManyNamesOrTags(t *testing.T) {
	dir := t.TempDir()
	c := openDurable(t, dir, DefaultConfig())
	many := engine.Tags{}
	for i := range 2000 {
		many[fmt.Sprintf("t-%d", i)] = int64(i) // as a replay reads it
	}
	putTags(t, c, "p", []string{"few", "many", "none"}, engine.Tags{"status": "running", "step": 1, "keep": true}, many, nil)
	names := []string{"status", "step", "status", "t-5", "t-1999", "t-5"}
	for i := range 1000 {
		names = append(names, fmt.Sprintf("absent-%d", i))
	}
	got, had, err := c.DeleteTagsCounted("p", []string{"few", "many", "none"}, names)
	require.NoError(t, err)
	assert.Equal(t, []int{2, 2, 0}, had, "how many of the names each key had")
	want := maps.Clone(many)
	delete(want, "t-5")
	delete(want, "t-1999")
	assert.Equal(t, []engine.Tags{{"keep": true}, want, nil}, got)
	got, had, err = c.DeleteTagsCounted("p", []string{"few"}, []string{"keep", "never"})
	require.NoError(t, err)
	assert.Equal(t, []int{1}, had)
	assert.Equal(t, []engine.Tags{nil}, got, "a key that lost every tag has none")
	wantAll := map[string]engine.Tags{"few": nil, "many": want, "none": nil}
	assert.Equal(t, wantAll, tagsOf(t, c, "p"))
	crash(t, c)
	c = openDurable(t, dir, DefaultConfig())
	defer c.Close()
	assert.Equal(t, wantAll, tagsOf(t, c, "p"), "after replay")
}
