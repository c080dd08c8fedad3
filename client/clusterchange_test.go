package client_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/wire"
)

// serveControllerAt serves c on the TCP address hostport (a restarted
// controller takes its predecessor's port) until the test ends or the
// returned stop is called.
func serveControllerAt(t *testing.T, c *controller.Controller, hostport string) (addr string, stop func()) {
	t.Helper()
	var l net.Listener
	require.Eventually(t, func() bool {
		var err error
		l, err = net.Listen("tcp", hostport)
		return err == nil
	}, 5*time.Second, 10*time.Millisecond, "listen on %s", hostport)
	s := controller.NewServer(c, controller.ServerConfig{})
	served := make(chan struct{})
	go func() { s.Serve(l); close(served) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			s.Close()
			<-served
			c.Close()
		}
	}
	t.Cleanup(stop)
	return wire.FormatAddr("tcp", l.Addr().String()), stop
}

func ints1(t *testing.T, v int64) *engine.Batch { return ints(t, "x", []int64{v}) }

// A controller that restarts without its state (in memory, or its data
// directory lost) is a new cluster, and hands unit ids out from 1 again: id
// 1 names another unit now. A client connected before used to keep its
// table, so it read another unit's bytes under a cell's id (wrong bytes),
// and wrote to the old unit and committed the cells under the new one's id
// (an acknowledged put that read back as lost, or as another's bytes). Now
// it lists the new cluster's units before it reads by id, a meta from the
// old cluster reads as lost, and a commit of cells placed on the units of
// another cluster is refused, and the put placed again.
func TestControllerWithoutItsStateIsANewCluster(t *testing.T) {
	ctx := t.Context()
	ctrl1, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	addr, stop1 := serveControllerAt(t, ctrl1, "127.0.0.1:0")
	hostport := addr[len("tcp://"):]
	old := joinUnit(t, addr, true) // unit 1 of the first cluster
	hash := client.ConnectConfig{Client: client.Config{Placement: client.Hash}}
	reader, err := client.Connect(ctx, addr, hash)
	require.NoError(t, err)
	defer reader.Close()
	writer, err := client.Connect(ctx, addr, hash)
	require.NoError(t, err)
	defer writer.Close()
	_, err = kvapi.New(reader).BatchPut(ctx, "p", []string{"a"}, ints1(t, 111), nil)
	require.NoError(t, err)
	aMeta, err := reader.MetaByKeys(ctx, "p", []string{"a"}, []string{"x"}, false)
	require.NoError(t, err)
	rows, err := writer.GetMeta(ctx, client.MetaRequest{Partition: "q", Mode: client.Insert, BatchSize: 1, Fields: []string{"x"}})
	require.NoError(t, err)

	// The controller restarts without its state; the old unit stays out
	// of it (its data plane lives on, and the clients' connections to
	// it), and another unit takes id 1.
	old.mem.Close()
	stop1()
	ctrl2, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	serveControllerAt(t, ctrl2, hostport)
	fresh := joinUnit(t, addr, true)
	require.Equal(t, old.u.ID(), fresh.u.ID(), "the new cluster hands out the old unit's id")
	newcomer, err := client.Connect(ctx, addr, hash)
	require.NoError(t, err)
	defer newcomer.Close()

	_, err = kvapi.New(newcomer).BatchPut(ctx, "p", []string{"b"}, ints1(t, 222), nil)
	require.NoError(t, err)
	got, err := kvapi.New(reader).BatchGet(ctx, "p", []string{"b"})
	require.NoError(t, err, "a read through a client of the old cluster")
	assert.Equal(t, ints1(t, 222).Col("x"), got.Col("x"), "the bytes of the unit the new cluster calls %d", fresh.u.ID())
	got.Release()

	// A's meta, from before the restart, names unit 1 of the old cluster:
	// its cells are lost, not the bytes unit 1 of the new one holds there.
	_, err = reader.Get(ctx, aMeta)
	require.ErrorIs(t, err, engine.ErrLost, "a read of a meta of the old cluster")
	assert.ErrorContains(t, err, "which started anew as cluster")

	// Rows inserted before the restart: their indexes name other rows now.
	qm, err := newcomer.PutNew(ctx, "q", ints1(t, 444))
	require.NoError(t, err)
	require.Equal(t, rows.Indexes, qm.Indexes, "the new cluster gave the same row index to another row")
	_, err = writer.Put(ctx, ints1(t, 555), rows)
	require.ErrorIs(t, err, engine.ErrLost, "a put into rows of the old cluster")
	got, err = newcomer.Get(ctx, qm)
	require.NoError(t, err)
	assert.Equal(t, ints1(t, 444).Col("x"), got.Col("x"), "the new cluster's row after a put into the old one's")
	got.Release()

	held := old.u.Stats().Used
	_, err = kvapi.New(writer).BatchPut(ctx, "p", []string{"c"}, ints1(t, 333), nil)
	require.NoError(t, err, "a put through a client of the old cluster")
	got, err = kvapi.New(newcomer).BatchGet(ctx, "p", []string{"c"})
	require.NoError(t, err, "a read of its put")
	assert.Equal(t, ints1(t, 333).Col("x"), got.Col("x"), "the bytes it put")
	got.Release()
	assert.Equal(t, held, old.u.Stats().Used, "bytes the refused try left on the unit of the old cluster")
}

// A drain's or rebalance's move of cells whose copies were placed on the
// units of another cluster is refused as lost and changes nothing: the
// copies' unit ids name other units here. One naming this cluster, or
// none, is taken.
func TestMoveOfAnotherClustersCopiesIsLost(t *testing.T) {
	ctx := t.Context()
	ctrl, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	joinUnit(t, addr, true)
	joinUnit(t, addr, true)
	c, err := client.Connect(ctx, addr, client.ConnectConfig{})
	require.NoError(t, err)
	defer c.Close()
	_, err = kvapi.New(c).BatchPut(ctx, "p", []string{"k"}, ints1(t, 7), nil)
	require.NoError(t, err)
	m, err := c.MetaByKeys(ctx, "p", []string{"k"}, []string{"x"}, false)
	require.NoError(t, err)
	from := m.Cells["x"][0]
	to := from
	to.Unit = 3 - from.Unit // the other unit, at an address nothing holds: only the answer matters
	mv := []engine.CellMove{{Index: m.Indexes[0], Field: "x", From: from, To: to}}
	remote := c.Meta().(interface {
		MoveCells(context.Context, string, []engine.CellMove, string) ([]bool, error)
	})
	cluster := ctrl.Info().ClusterID
	_, err = remote.MoveCells(ctx, "p", mv, "not-"+cluster)
	require.ErrorIs(t, err, engine.ErrLost)
	assert.ErrorContains(t, err, "written to the storage units of cluster not-"+cluster)
	after, err := c.MetaByKeys(ctx, "p", []string{"k"}, []string{"x"}, false)
	require.NoError(t, err)
	assert.Equal(t, from, after.Cells["x"][0], "the cell after a refused move")
	moved, err := remote.MoveCells(ctx, "p", mv, cluster)
	require.NoError(t, err)
	assert.Equal(t, []bool{true}, moved)
}
