package client_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// TestPutWithNoUnitListedSaysSo: a controller that starts without its
// state lists none of the last one's units until they join it again, and
// a client that lists the units meanwhile drops every unit it knew (they
// are of another cluster). A put then has no unit to go to: it used to
// panic (index out of range) placing its rows; it fails naming why.
func TestPutWithNoUnitListedSaysSo(t *testing.T) {
	ctx := t.Context()
	ctrl1, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	addr, stop1 := serveControllerAt(t, ctrl1, "127.0.0.1:0")
	hostport := addr[len("tcp://"):]
	old := joinUnit(t, addr, true)
	c, err := client.Connect(ctx, addr, client.ConnectConfig{})
	require.NoError(t, err)
	defer c.Close()
	meta, err := kvapi.New(c).BatchPut(ctx, "p", []string{"a"}, ints1(t, 111), nil)
	require.NoError(t, err)
	require.NotNil(t, meta)
	m, err := c.MetaByKeys(ctx, "p", []string{"a"}, []string{"x"}, false)
	require.NoError(t, err)

	old.mem.Close()
	stop1()
	ctrl2, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	serveControllerAt(t, ctrl2, hostport)

	// The client meets the new controller, and a read lists its units:
	// none yet.
	_, err = c.Partitions(ctx)
	require.NoError(t, err)
	_, err = c.Get(ctx, m)
	require.Error(t, err)
	require.Empty(t, c.Units(), "units of the last cluster")

	require.NotPanics(t, func() {
		_, err = c.PutNew(ctx, "p", ints1(t, 222))
	}, "a put with no unit listed")
	require.ErrorIs(t, err, engine.ErrUnavailable)
	require.ErrorContains(t, err, "no storage unit")
	require.NotPanics(t, func() {
		_, err = c.PutKeys(ctx, "p", []string{"b"}, ints1(t, 222), nil)
	}, "a KV put with no unit listed")
	require.ErrorIs(t, err, engine.ErrUnavailable)
	require.NotPanics(t, func() {
		_, err = c.ReservePutKeys(ctx, "p", []string{"b"}, nil, client.FieldSpec{Name: "x", DType: engine.Int64})
	}, "a reserved put with no unit listed")
	require.ErrorIs(t, err, engine.ErrUnavailable)
}
