package controller

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// newPartitionRequests are the requests that create their partition, each
// on partition pid.
var newPartitionRequests = []struct {
	name string
	do   func(c *Controller, pid string) error
}{
	{"create", func(c *Controller, pid string) error { _, err := c.CreatePartition(pid); return err }},
	{"insert", func(c *Controller, pid string) error { _, err := c.Insert(pid, 1, nil); return err }},
	{"commit keys", func(c *Controller, pid string) error {
		_, err := c.CommitKeys(engine.KeysCommit{Partition: pid, Keys: []string{"k"}, Fields: []engine.CommitField{int64Field(0, 0, 0)}})
		return err
	}},
	{"tag-only put", func(c *Controller, pid string) error {
		_, err := c.CommitKeys(engine.KeysCommit{Partition: pid, Keys: []string{"k"}, Tags: []engine.Tags{{"a": "b"}}})
		return err
	}},
	{"resolve keys", func(c *Controller, pid string) error {
		_, err := c.ResolveKeys(pid, []string{"k"}, nil, true)
		return err
	}},
	{"set tag", func(c *Controller, pid string) error {
		_, err := c.CompareAndSetTag(engine.TagSwap{Partition: pid, Key: "k", Name: "a", New: "b"})
		return err
	}},
	{"mark done", func(c *Controller, pid string) error { return c.MarkDone(pid) }},
}

// requireRefusedPartition checks that err refuses partition pid as one
// past a limit of max partitions.
func requireRefusedPartition(t *testing.T, err error, pid string, max int) {
	t.Helper()
	require.ErrorIs(t, err, engine.ErrCapacity)
	assert.Contains(t, err.Error(), fmt.Sprintf("the limit is %d", max))
	assert.Contains(t, err.Error(), fmt.Sprintf("partition %q", pid))
}

// TestMaxPartitions: with MaxPartitions 3, every request that would make
// a 4th partition is refused with an error wrapping engine.ErrCapacity
// that names the limit and the partition; the three keep working;
// clearing one makes room for one more.
func TestMaxPartitions(t *testing.T) {
	c := newController(t, Config{MaxPartitions: 3})
	for i, pid := range []string{"a", "b", "c"} {
		require.NoError(t, newPartitionRequests[i].do(c, pid))
	}
	for _, r := range newPartitionRequests {
		requireRefusedPartition(t, r.do(c, "d"), "d", 3)
	}
	assert.Equal(t, []string{"a", "b", "c"}, c.Partitions())
	for _, r := range newPartitionRequests {
		require.NoError(t, r.do(c, "a"), "%s in a partition that exists", r.name)
	}

	_, err := c.ClearPartition("b")
	require.NoError(t, err)
	require.NoError(t, c.MarkDone("d"), "clearing a partition freed a slot")
	requireRefusedPartition(t, c.MarkDone("e"), "e", 3)
	assert.Equal(t, []string{"a", "c", "d"}, c.Partitions())
}

// TestMaxPartitionsDefault: 0 is DefaultMaxPartitions; a negative limit
// is none.
func TestMaxPartitionsDefault(t *testing.T) {
	c := newController(t, Config{})
	assert.Equal(t, DefaultMaxPartitions, c.maxPartitions())
	c = newController(t, Config{MaxPartitions: -1})
	for i := range 10 {
		_, err := c.CreatePartition(fmt.Sprint(i))
		require.NoError(t, err)
	}
}

// TestMaxPartitionsRefusedCreateFreesSlot: a first request refused for
// another reason does not hold a slot.
func TestMaxPartitionsRefusedCreateFreesSlot(t *testing.T) {
	c := newController(t, Config{MaxPartitions: 1})
	_, draining := refusedSetup(t, c)
	_, err := c.CommitKeys(engine.KeysCommit{Partition: "a", Keys: []string{"k"}, Fields: []engine.CommitField{int64Field(draining, 1, 1)}})
	require.ErrorIs(t, err, ErrDraining)
	require.NoError(t, c.MarkDone("b"))
	requireRefusedPartition(t, c.MarkDone("a"), "a", 1)
}

// TestMaxPartitionsRestart: a restart (from the log alone, and from a
// snapshot) keeps the count; a log that holds more partitions than a
// lower limit allows loads whole, and new ones are refused until enough
// are cleared.
func TestMaxPartitionsRestart(t *testing.T) {
	dir := t.TempDir()
	c := openDurable(t, dir, Config{MaxPartitions: 3})
	for _, pid := range []string{"a", "b", "c"} {
		require.NoError(t, c.MarkDone(pid))
	}
	crash(t, c)
	c = openDurable(t, dir, Config{MaxPartitions: 3})
	requireRefusedPartition(t, c.MarkDone("d"), "d", 3)
	require.NoError(t, c.Close())
	c = openDurable(t, dir, Config{MaxPartitions: 3})
	requireRefusedPartition(t, c.MarkDone("d"), "d", 3)
	require.NoError(t, c.Close())

	c = openDurable(t, dir, Config{MaxPartitions: 2})
	assert.Equal(t, []string{"a", "b", "c"}, c.Partitions(), "a lower limit loads every partition")
	requireRefusedPartition(t, c.MarkDone("d"), "d", 2)
	_, err := c.ClearPartition("a")
	require.NoError(t, err)
	requireRefusedPartition(t, c.MarkDone("d"), "d", 2)
	_, err = c.ClearPartition("b")
	require.NoError(t, err)
	require.NoError(t, c.MarkDone("d"))
	require.NoError(t, c.Close())
}

// TestMaxPartitionsWire: over the wire the refusal is CODE_CAPACITY with
// the message naming the limit and the partition.
func TestMaxPartitionsWire(t *testing.T) {
	_, addr := startServer(t, newController(t, Config{MaxPartitions: 3}), ServerConfig{}, "unix")
	conn := dialRaw(t, addr, "")
	for _, pid := range []string{"a", "b", "c"} {
		require.NoError(t, do(conn, wire.OpInsert, &wirepb.InsertRequest{Partition: pid, N: 1}, &wirepb.MetaReply{}))
	}
	err := do(conn, wire.OpInsert, &wirepb.InsertRequest{Partition: "d", N: 1}, &wirepb.MetaReply{})
	assert.Equal(t, wirepb.Code_CODE_CAPACITY, codeOf(err))
	requireRefusedPartition(t, err, "d", 3)
	err = do(conn, wire.OpCommitKeys, &wirepb.CommitKeysRequest{Partition: "d", Keys: []string{"k"}, HasTags: true, Tags: [][]byte{[]byte(`{"a":1}`)}}, &wirepb.CommitKeysReply{})
	assert.Equal(t, wirepb.Code_CODE_CAPACITY, codeOf(err))
	requireRefusedPartition(t, err, "d", 3)
	require.NoError(t, do(conn, wire.OpCommitKeys, &wirepb.CommitKeysRequest{Partition: "a", Keys: []string{"k"}, HasTags: true, Tags: [][]byte{[]byte(`{"a":1}`)}}, &wirepb.CommitKeysReply{}))
	require.NoError(t, do(conn, wire.OpClearPartition, &wirepb.ClearPartitionRequest{Partition: "b"}, nil))
	require.NoError(t, do(conn, wire.OpInsert, &wirepb.InsertRequest{Partition: "d", N: 1}, &wirepb.MetaReply{}))
}
