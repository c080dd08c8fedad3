package controller

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// keyTags returns the stored tag maps of keys (not copies: for checking
// which rows share one).
func keyTags(t *testing.T, c *Controller, partition string, keys ...string) []engine.Tags {
	t.Helper()
	p, _ := c.lock(partition)
	require.NotNil(t, p, "partition %q", partition)
	defer p.mu.Unlock()
	rows, missing := p.lookupKeys(keys)
	require.Empty(t, missing)
	out := make([]engine.Tags, len(rows))
	for i, r := range rows {
		out[i] = p.tagsOf(r)
	}
	return out
}

// The rows of a batch that carries one tag map share one merged map (the
// controller never changes a row's map in place), and the sharing never
// shows: a caller's maps are copied on the way in, the tags CommitKeys
// returns are copies, and a later change to one row leaves the rows it
// shared a map with as they were.
func TestTagMergeSharing(t *testing.T) {
	c := newController(t, DefaultConfig())
	mine := engine.Tags{"status": "generated", "nested": map[string]any{"a": []any{int64(1)}}}
	want := engine.Tags{"status": "generated", "nested": map[string]any{"a": []any{int64(1)}}}
	out, err := c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: []string{"a", "b", "c"}, Tags: []engine.Tags{mine, mine, mine}})
	require.NoError(t, err)
	stored := keyTags(t, c, "p", "a", "b", "c")
	assert.True(t, stored[0].Same(stored[1]) && stored[1].Same(stored[2]), "one map for the batch")
	assert.False(t, stored[0].Same(mine), "the caller's map is copied")

	mine["status"] = "changed"
	mine["nested"].(map[string]any)["a"].([]any)[0] = int64(9)
	out.Tags[0]["status"] = "changed too"
	out.Tags[1]["nested"].(map[string]any)["a"].([]any)[0] = int64(8)
	for i, tags := range keyTags(t, c, "p", "a", "b", "c") {
		assert.Equal(t, want, tags, "row %d after the caller changed its maps and the reply's", i)
	}
	assert.Equal(t, "generated", out.Tags[2]["status"], "each reply row is its own copy")

	// One row changes: the others keep the map they shared.
	_, err = c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: []string{"b"}, Tags: []engine.Tags{{"status": "scored"}}})
	require.NoError(t, err)
	got := keyTags(t, c, "p", "a", "b", "c")
	assert.Equal(t, want, got[0])
	assert.Equal(t, "scored", got[1]["status"])
	assert.Equal(t, want, got[2])

	// One map merged into rows whose tags differ: each row its own merge
	// (a, b, c: the last merge remembered is b's, c's old map is a's).
	step := engine.Tags{"step": int64(3)}
	require.NoError(t, c.SetTags("p", []uint64{0, 1, 2}, []engine.Tags{step, step, step}))
	got = keyTags(t, c, "p", "a", "b", "c")
	assert.Equal(t, engine.Tags{"status": "generated", "step": int64(3), "nested": want["nested"]}, got[0])
	assert.Equal(t, engine.Tags{"status": "scored", "step": int64(3), "nested": want["nested"]}, got[1])
	assert.Equal(t, got[0], got[2])
	assert.False(t, got[0].Same(got[1]))
}

// The server hands CommitKeys the maps it decoded (rows with equal bytes
// share one) and encodes the reply at once: the controller keeps the
// decoded map and the reply names the stored one, encoded once for the
// batch.
func TestCommitKeysSharedTags(t *testing.T) {
	c := newController(t, DefaultConfig())
	enc := []byte(`{"status":"generated"}`)
	tags, err := wire.TagsFromPBShared([][]byte{enc, enc, enc, []byte(`{"status":"other"}`)})
	require.NoError(t, err)
	require.True(t, tags[0].Same(tags[2]))
	require.False(t, tags[2].Same(tags[3]))
	out, err := c.commitKeys(engine.KeysCommit{Partition: "p", Keys: []string{"a", "b", "c", "d"}, Tags: tags}, true)
	require.NoError(t, err)
	stored := keyTags(t, c, "p", "a", "b", "c", "d")
	for i := range stored {
		assert.True(t, stored[i].Same(tags[i]), "row %d keeps the decoded map", i)
		assert.True(t, out.Tags[i].Same(stored[i]), "row %d: the reply names the stored map", i)
	}
	b, err := wire.TagsToPB(out.Tags)
	require.NoError(t, err)
	assert.Equal(t, []string{string(enc), string(enc), string(enc), `{"status":"other"}`},
		[]string{string(b[0]), string(b[1]), string(b[2]), string(b[3])})

	// Merged into existing tags, the decoded maps are kept as values.
	more, err := wire.TagsFromPBShared([][]byte{[]byte(`{"step":1}`), []byte(`{"step":1}`)})
	require.NoError(t, err)
	_, err = c.commitKeys(engine.KeysCommit{Partition: "p", Keys: []string{"a", "b"}, Tags: more}, true)
	require.NoError(t, err)
	got := keyTags(t, c, "p", "a", "b", "c")
	assert.Equal(t, engine.Tags{"status": "generated", "step": int64(1)}, got[0])
	assert.True(t, got[0].Same(got[1]))
	assert.Equal(t, engine.Tags{"status": "generated"}, got[2], "c keeps the map a and b had")
	assert.True(t, got[2].Same(tags[2]))
}

// Rows that shared one map before a restart come back right, still
// sharing it, whether replayed from the log or read from a snapshot, and
// a change to one of them after it changes no other.
func TestSharedTagsAfterRestart(t *testing.T) {
	for _, snapshot := range []bool{false, true} {
		t.Run(fmt.Sprintf("snapshot=%v", snapshot), func(t *testing.T) {
			dir := t.TempDir()
			c := openDurable(t, dir, Config{})
			one := engine.Tags{"status": "generated"}
			_, err := c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: []string{"a", "b", "c", "d"}, Tags: []engine.Tags{one, one, one, {"status": "other"}}})
			require.NoError(t, err)
			if snapshot {
				require.NoError(t, c.snapshot())
			}
			crash(t, c)

			c = openDurable(t, dir, Config{})
			defer c.Close()
			got := keyTags(t, c, "p", "a", "b", "c", "d")
			for i := range 3 {
				assert.Equal(t, one, got[i], "row %d", i)
			}
			assert.Equal(t, engine.Tags{"status": "other"}, got[3])
			assert.True(t, got[0].Same(got[2]), "read back as one map")
			assert.False(t, got[2].Same(got[3]))
			_, err = c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: []string{"b"}, Tags: []engine.Tags{{"status": "scored"}}})
			require.NoError(t, err)
			got = keyTags(t, c, "p", "a", "b", "c")
			assert.Equal(t, one, got[0])
			assert.Equal(t, engine.Tags{"status": "scored"}, got[1])
			assert.Equal(t, one, got[2])
		})
	}
}

// Listing keys and reading their changes: the methods give copies, and the
// server, which encodes the rows' own maps, encodes a map the keys share
// once.
func TestListAndChangesSharedTags(t *testing.T) {
	c := newController(t, DefaultConfig())
	s := NewServer(c, ServerConfig{})
	t.Cleanup(func() { s.Close() })
	one := engine.Tags{"status": "generated"}
	_, err := c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: []string{"a", "b", "c"}, Tags: []engine.Tags{one, one, {"status": "other"}}})
	require.NoError(t, err)
	ctx := context.Background()

	page, _, err := c.ListKeysPage("p", nil, 0)
	require.NoError(t, err)
	page[0].Keys[0].Tags["status"] = "changed"
	ch, err := c.KeyChanges(ctx, engine.ChangesRequest{Partition: "p"})
	require.NoError(t, err)
	require.Len(t, ch.Changes, 3)
	ch.Changes[1].Tags["status"] = "changed"
	assert.Equal(t, []engine.Tags{one, one, {"status": "other"}}, keyTags(t, c, "p", "a", "b", "c"), "copies")

	call := func(op wire.Op, req, reply proto.Message) {
		t.Helper()
		body, err := proto.Marshal(req)
		require.NoError(t, err)
		got, err := s.call(ctx, op, body, &effects{})
		require.NoError(t, err)
		b, err := proto.Marshal(got)
		require.NoError(t, err)
		require.NoError(t, proto.Unmarshal(b, reply))
		// Shared in the reply the server built (the bytes above are a
		// copy of it).
		var tags [][]byte
		switch r := got.(type) {
		case *wirepb.ListKeysReply:
			for _, k := range r.Partitions[0].Keys {
				tags = append(tags, k.Tags)
			}
		case *wirepb.KeyChangesReply:
			for _, k := range r.Changes {
				tags = append(tags, k.Tags)
			}
		}
		require.Len(t, tags, 3)
		assert.Same(t, &tags[0][0], &tags[1][0], "%v: a shared map encoded once", op)
		assert.NotSame(t, &tags[1][0], &tags[2][0])
	}
	var lr wirepb.ListKeysReply
	call(wire.OpListKeys, &wirepb.ListKeysRequest{Partition: "p"}, &lr)
	var kr wirepb.KeyChangesReply
	call(wire.OpKeyChanges, &wirepb.KeyChangesRequest{Partition: "p"}, &kr)
	for i, want := range []string{`{"status":"generated"}`, `{"status":"generated"}`, `{"status":"other"}`} {
		assert.Equal(t, want, string(lr.Partitions[0].Keys[i].Tags), "list, key %d", i)
		assert.Equal(t, want, string(kr.Changes[i].Tags), "changes, key %d", i)
	}
}

// Rows share tag maps with each other and with the replies the server
// encodes outside the partition's lock: that holds only while no one
// changes a map in place. Tagged puts, tag deletes and compare-and-sets
// race reads that encode the maps, through the server's handlers, under
// the race detector.
func TestSharedTagsRace(t *testing.T) {
	c := newController(t, Config{Sampler: replacementSampler{}})
	unit, err := c.units.Register(engine.UnitInfo{Incarnation: 1, Host: "h", Addrs: []string{"tcp://127.0.0.1:1"}}, true)
	require.NoError(t, err)
	s := NewServer(c, ServerConfig{})
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	keys := make([]string, 64)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}
	call := func(op wire.Op, req proto.Message) {
		body, err := proto.Marshal(req)
		if err != nil {
			t.Error(err)
			return
		}
		reply, err := s.call(ctx, op, body, &effects{})
		if err != nil {
			t.Errorf("%v: %v", op, err)
			return
		}
		if _, err := proto.Marshal(reply); err != nil {
			t.Errorf("%v reply: %v", op, err)
		}
	}
	put := func(keys []string, tags string) {
		enc := make([][]byte, len(keys))
		for i := range enc {
			enc[i] = []byte(tags)
		}
		call(wire.OpCommitKeys, &wirepb.CommitKeysRequest{Partition: "p", Keys: keys, HasTags: true, Tags: enc})
	}
	put(keys, `{"status":"generated"}`)
	// A field on every key, for the fetches (which sample without
	// consuming: "t" is a task of the replacement sampler).
	call(wire.OpCommitKeys, &wirepb.CommitKeysRequest{Partition: "p", Keys: keys,
		Fields: []*wirepb.CommitField{{Name: "v", Dtype: "int64", Kind: "dense", Shape: &wirepb.Shape{}, HasLocs: true,
			Locs: wire.RunsToPB([]engine.CellRun{{Unit: unit, First: engine.RemoteAddr{Segment: 1, Gen: 1, Len: 8}, Count: len(keys)}})}}})
	const rounds = 100
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range rounds {
			put(keys, fmt.Sprintf(`{"status":"generated","round":%d}`, i))
		}
	})
	wg.Go(func() {
		for i := range rounds {
			put(keys[:32], fmt.Sprintf(`{"score":%d.5}`, i))
		}
	})
	wg.Go(func() {
		for range rounds {
			call(wire.OpDeleteTags, &wirepb.DeleteTagsRequest{Partition: "p", Keys: keys[16:48], Names: []string{"score"}})
			call(wire.OpCompareAndSetTag, &wirepb.CompareAndSetTagRequest{Partition: "p", Key: keys[0], Name: "lock", NewValue: []byte(`"me"`)})
			call(wire.OpCompareAndSetTag, &wirepb.CompareAndSetTagRequest{Partition: "p", Key: keys[0], Name: "lock", OldValue: []byte(`"me"`)})
		}
	})
	wg.Go(func() {
		for range rounds {
			call(wire.OpListKeys, &wirepb.ListKeysRequest{Partition: "p"})
			call(wire.OpKeyChanges, &wirepb.KeyChangesRequest{Partition: "p"})
			call(wire.OpResolveKeys, &wirepb.ResolveKeysRequest{Partition: "p", Keys: keys})
			call(wire.OpFetch, &wirepb.FetchRequest{Partition: "p", Task: "t", Fields: []string{"v"}, BatchSize: 8})
		}
	})
	wg.Wait()
	got := keyTags(t, c, "p", keys...)
	for i, tags := range got {
		assert.Equal(t, "generated", tags["status"], "key %d", i)
	}
}

// Fetch and ResolveKeys give copies of the rows' tags; the server, which
// encodes the meta at once, takes the rows' own maps.
func TestFetchAndResolveSharedTags(t *testing.T) {
	c := newController(t, Config{Sampler: replacementSampler{}})
	one := engine.Tags{"status": "generated", "n": []any{int64(1)}}
	keys := []string{"a", "b", "c"}
	_, err := c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: keys, Tags: []engine.Tags{one, one, one},
		Fields: []engine.CommitField{{Name: "v", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{},
			Locs: []engine.CellLoc{{Unit: 1, Addr: engine.RemoteAddr{Segment: 1, Len: 8}}, {Unit: 1, Addr: engine.RemoteAddr{Segment: 1, Offset: 8, Len: 8}}, {Unit: 1, Addr: engine.RemoteAddr{Segment: 1, Offset: 16, Len: 8}}}}}})
	require.NoError(t, err)
	stored := keyTags(t, c, "p", keys...)
	ctx := context.Background()

	m, err := c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"v"}, BatchSize: 3})
	require.NoError(t, err)
	require.Len(t, m.Tags, 3)
	r, err := c.ResolveKeys("p", keys, nil, false)
	require.NoError(t, err)
	for i := range 3 {
		assert.False(t, m.Tags[i].Same(stored[0]), "fetch row %d: a copy", i)
		assert.False(t, r.Tags[i].Same(stored[0]), "resolve row %d: a copy", i)
	}
	m.Tags[0]["n"].([]any)[0] = int64(9)
	r.Tags[1]["status"] = "changed"
	assert.Equal(t, []engine.Tags{one, one, one}, keyTags(t, c, "p", keys...))

	m, err = c.fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"v"}, BatchSize: 3}, &fetchReply{max: wire.MaxBodyLen})
	require.NoError(t, err)
	r, _, err = c.resolveKeys("p", keys, []string{"v"}, false, true)
	require.NoError(t, err)
	for i := range 3 {
		assert.True(t, m.Tags[i].Same(stored[0]), "fetch row %d: the row's own map", i)
		assert.True(t, r.Tags[i].Same(stored[0]), "resolve row %d: the row's own map", i)
	}
}
