package controller

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestReadIndex: a read of keys waits for the last records that changed
// those keys and no others; a key it found absent waits for the last
// clear of the partition; a dropped partition, a checkpoint load or cells
// marked lost make every read wait.
func TestReadIndex(t *testing.T) {
	c := openDurable(t, t.TempDir(), DefaultConfig())
	t.Cleanup(func() { c.Close() })
	loc := func(i int) []engine.CellLoc {
		return []engine.CellLoc{{Unit: 1, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: uint64(i) * 8, Len: 8}}}
	}
	put := func(key string, i int) uint64 {
		t.Helper()
		_, err := c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: []string{key},
			Fields: []engine.CommitField{{Name: "v", DType: engine.Bytes, Kind: engine.Opaque, Locs: loc(i)}}})
		require.NoError(t, err)
		return c.j.Last()
	}
	a := put("a", 0)
	b := put("b", 1)
	require.Less(t, a, b)
	assert.Equal(t, a, c.readIndex("p", []string{"a"}), "a read of a does not wait for b's put")
	assert.Equal(t, b, c.readIndex("p", []string{"a", "b"}))
	assert.Zero(t, c.readIndex("p", []string{"never"}), "nothing was cleared: an absent key waits for nothing")
	assert.Zero(t, c.readIndex("nope", []string{"a"}))

	// Tags and cells dropped count as changes of the key.
	_, err := c.DeleteTags("p", []string{"a"}, []string{"x"})
	require.NoError(t, err)
	assert.Equal(t, a, c.readIndex("p", []string{"a"}), "removing a tag a lacked changed nothing")
	putTags(t, c, "p", []string{"a"}, engine.Tags{"x": 1})
	tagged := c.j.Last()
	assert.Equal(t, tagged, c.readIndex("p", []string{"a"}))
	_, _, err = c.ClearFields("p", []string{"a"}, []string{"v"})
	require.NoError(t, err)
	cleared := c.j.Last()
	assert.Equal(t, cleared, c.readIndex("p", []string{"a"}))
	_, err = c.CompareAndSetTag(engine.TagSwap{Partition: "p", Key: "a", Name: "x", Old: 1, New: 2})
	require.NoError(t, err)
	assert.Equal(t, c.j.Last(), c.readIndex("p", []string{"a"}))

	// A key cleared: a read that finds it absent waits for the clear.
	_, err = c.ClearKeys("p", []string{"b"})
	require.NoError(t, err)
	clear := c.j.Last()
	assert.Equal(t, clear, c.readIndex("p", []string{"b"}))
	assert.Equal(t, clear, c.readIndex("p", []string{"never"}))
	assert.Less(t, c.readIndex("p", []string{"a"}), clear, "a key still there does not wait for the clear")

	// A partition dropped: every read waits for it.
	put2 := func() {
		_, err := c.CommitKeys(engine.KeysCommit{Partition: "q", Keys: []string{"z"}, Tags: []engine.Tags{{"k": 1}}})
		require.NoError(t, err)
	}
	put2()
	_, err = c.ClearPartition("q")
	require.NoError(t, err)
	dropped := c.j.Last()
	assert.Equal(t, dropped, c.readIndex("q", []string{"z"}))
	assert.Equal(t, dropped, c.readIndex("p", []string{"a"}))

	// And the waits end once durable.
	require.NoError(t, c.WaitRead(t.Context(), "p", []string{"a", "b"}))
	assert.GreaterOrEqual(t, c.j.Durable(), dropped)
}

// durableNow reports whether what a read of key saw is durable already:
// a wait with a context that has ended returns nil only then.
func durableNow(c *Controller, partition, key string) bool {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return c.WaitRead(ctx, partition, []string{key}) == nil
}

// TestCommitKeysReplyWaitsForItsRecord: COMMIT_KEYS is answered once its
// own record is durable. It waits for that record only (not for every
// record appended by then), so it is checked on each reply: a reply sent
// before its fsync would be seen here nearly every time.
func TestCommitKeysReplyWaitsForItsRecord(t *testing.T) {
	ctrl := newController(t, Config{Dir: t.TempDir()})
	_, addr := startServer(t, ctrl, ServerConfig{}, "unix")
	c := dialRaw(t, addr, "")
	var reg wirepb.RegisterReply
	require.NoError(t, do(c, wire.OpRegister, &wirepb.RegisterRequest{HostId: "h", Incarnation: 5}, &reg))
	for i := range 50 {
		key := fmt.Sprintf("k%d", i)
		locs := wire.RunsToPB([]engine.CellRun{{Unit: engine.UnitID(reg.UnitId), First: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: uint64(i) * 8, Len: 8}, Count: 1}})
		require.NoError(t, do(c, wire.OpCommitKeys, &wirepb.CommitKeysRequest{Partition: "p", Keys: []string{key},
			Fields: []*wirepb.CommitField{{Name: "v", Dtype: "int64", Kind: "dense", Shape: &wirepb.Shape{}, HasLocs: true, Locs: locs}}}, nil))
		require.True(t, durableNow(ctrl, "p", key), "put %d answered before its record was durable", i)
	}
}
