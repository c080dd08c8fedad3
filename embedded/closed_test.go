package embedded

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// TestCallsAfterCloseSayClosed: once the cluster is closed, its client's
// calls fail with an error wrapping engine.ErrClosed that says the
// embedded cluster was closed, rather than answer from the closed
// controller's memory (a fetch that takes rows no read can get).
func TestCallsAfterCloseSayClosed(t *testing.T) {
	ctx := context.Background()
	c, col, m := clusterWithRows(t)
	first, err := col.Slice(0, 1)
	require.NoError(t, err)
	one := engine.MustBatch(engine.Field{Name: "x", Col: first})
	kv := kvapi.New(c.Client)
	_, err = kv.BatchPut(ctx, "kv", []string{"k"}, one, nil)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	require.NoError(t, c.Close(), "a second Close")

	for name, call := range map[string]func() error{
		"fetch": func() error {
			_, err := c.Client.GetMeta(ctx, client.MetaRequest{Mode: client.Fetch, Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 2})
			return err
		},
		"mark done":  func() error { return c.Client.MarkDone(ctx, "p") },
		"partitions": func() error { _, err := c.Client.Partitions(ctx); return err },
		"stats":      func() error { _, err := c.Client.Stats(ctx, "p"); return err },
		"consumption": func() error {
			_, err := c.Client.ConsumptionStatus(ctx, "p", "t")
			return err
		},
		"clear":  func() error { return c.Client.ClearPartition(ctx, "p") },
		"kv get": func() error { _, err := kv.BatchGet(ctx, "kv", []string{"k"}, "x"); return err },
		"put": func() error {
			_, err := c.Client.PutNew(ctx, "p", engine.MustBatch(engine.Field{Name: "x", Col: col}))
			return err
		},
		"get":     func() error { _, err := c.Client.Get(ctx, m); return err },
		"kv list": func() error { _, err := kv.List(ctx, "kv"); return err },
	} {
		err := call()
		require.ErrorIs(t, err, engine.ErrClosed, name)
		if name != "put" && name != "get" { // the units say so, naming themselves
			require.ErrorContains(t, err, "embedded cluster closed", name)
		}
	}
}

// TestReadAfterCloseSaysTheUnitIsClosed: a read of cells after the
// cluster's Close says the unit is closed and its cells lost with its
// memory (engine.ErrLost, keeping the unit's engine.ErrClosed), rather
// than call the unit unreachable.
func TestReadAfterCloseSaysTheUnitIsClosed(t *testing.T) {
	ctx := context.Background()
	c, _, m := clusterWithRows(t)
	require.NoError(t, c.Close())

	for name, read := range map[string]func() error{
		"get":      func() error { _, err := c.Client.Get(ctx, m); return err },
		"get copy": func() error { _, err := c.Client.GetCopy(ctx, m); return err },
		"get view": func() error { _, err := c.Client.GetView(ctx, m); return err },
		"get into": func() error { _, err := c.Client.GetInto(ctx, m, make([]byte, 1<<10)); return err },
	} {
		err := read()
		require.ErrorIs(t, err, engine.ErrClosed, name)
		require.ErrorIs(t, err, engine.ErrLost, name)
		require.ErrorContains(t, err, fmt.Sprintf("storage unit %d is closed", m.Cells["x"][0].Unit), name)
		require.NotContains(t, err.Error(), "unreachable", name)
	}
}

// clusterWithRows is a cluster of one unit (closed by the test itself)
// with rows 1..4 of field x put in partition "p": their column and meta.
func clusterWithRows(t *testing.T) (*Cluster, *engine.Column, *engine.BatchMeta) {
	t.Helper()
	c, err := New(smallConfig(1))
	require.NoError(t, err)
	col, err := engine.DenseOf([]int64{1, 2, 3, 4}, 1)
	require.NoError(t, err)
	m, err := c.Client.PutNew(context.Background(), "p", engine.MustBatch(engine.Field{Name: "x", Col: col}))
	require.NoError(t, err)
	return c, col, m
}
