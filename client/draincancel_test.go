package client_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/kvapi"
)

// A drain whose context ends the moment its copies reach the target unit
// fails with the context's error, and a remote controller, sent nothing
// then, moved nothing: the copies are freed at once (the target holds no
// byte), not left allocated until the target's reconciliation, and every
// cell still reads from the draining unit.
func TestDrainCanceledAtItsMoveFreesItsCopies(t *testing.T) {
	ctx := t.Context()
	ctrl, err := controller.New(controller.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	u1 := joinUnit(t, addr, true)
	c0, err := client.Connect(ctx, addr, client.ConnectConfig{})
	require.NoError(t, err)
	defer c0.Close()
	keys := keyRange("k", 10)
	_, err = kvapi.New(c0).BatchPut(ctx, "p", keys, xBatch(t, 10), nil)
	require.NoError(t, err)
	u2 := joinUnit(t, addr, true)

	cn := &canceler{}
	c, err := client.New(dialMeta(t, addr, client.RemoteConfig{}),
		[]client.DataUnit{embedded.Unit(u1.u), cancelingUnit{embedded.Unit(u2.u), cn}}, client.DefaultConfig())
	require.NoError(t, err)
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cn.atUnit = cancel
	_, err = c.Drain(dctx, u1.u.ID(), client.DrainConfig{Settle: time.Millisecond})
	require.True(t, cn.unitHit, "the drain's copies never reached the target")
	require.ErrorIs(t, err, context.Canceled)
	require.Zero(t, u2.u.Stats().Used, "a drain whose moves were never sent (%v) left its copies on the target", err)
	require.ErrorContains(t, err, "the move changed nothing")

	got, err := kvapi.New(c0).BatchGetCopy(ctx, "p", keys)
	require.NoError(t, err)
	require.Equal(t, values(t, xBatch(t, 10), "x"), values(t, got, "x"))
}
