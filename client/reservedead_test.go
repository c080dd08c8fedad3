package client_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
)

// reserveDeadCluster starts a controller with a unit served over shared
// memory (live) and a TCP unit that nothing serves (dead, left down since
// Connect), connects a hash-placing client over shared memory, and fills
// live a little, so that placement prefers the empty dead unit. Then the
// live unit's server restarts: the client's connection to it broke, and
// it is dialed again only when a call needs it. Every unit is down in the
// client's table then, so a put's plan holds them all (see writable), the
// dead one first.
func reserveDeadCluster(t *testing.T) (c *client.Client, live *shmServedUnit, dead *servedUnit, restart func()) {
	t.Helper()
	ctx := t.Context()
	addr, live := shmUnitCluster(t)
	stop := live.serve(t)
	t.Cleanup(func() { stop() })
	dead = joinUnit(t, addr, false)
	c, err := client.Connect(ctx, addr, client.ConnectConfig{Transport: client.TransportAuto, Client: client.Config{Placement: client.Hash}})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	m, err := c.PutNew(ctx, "fill", bigRows(t, 64))
	require.NoError(t, err)
	require.Equal(t, live.u.ID(), m.Cells["x"][0].Unit)
	stop()
	require.Eventually(t, func() bool { return unitByID(c, live.u.ID()).Transport() == "none" }, 5*time.Second, 5*time.Millisecond,
		"the client sees its connection to unit %d end", live.u.ID())
	time.Sleep(250 * time.Millisecond) // the dead unit's redial is due
	restart = func() { stop = live.serve(t) }
	return c, live, dead, restart
}

// A reserved put placed on a unit that cannot be reached (nothing was
// reserved there) moves to another unit, as writePlaced's puts do; it
// used to fail with "storage unit N is unreachable".
func TestReservePutMovesOffADeadUnit(t *testing.T) {
	ctx := t.Context()
	c, live, _, restart := reserveDeadCluster(t)
	restart()
	meta, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Mode: client.Insert, BatchSize: len(reserveWords), Fields: []string{"x", "s"}})
	require.NoError(t, err)
	pb, err := c.ReservePut(ctx, meta, reserveSpecs()...)
	require.NoError(t, err, "a reserved put with a unit dead")
	assert.Equal(t, live.u.ID(), pb.Unit().ID())
	wantX := fillReserved(t, pb)
	out, err := pb.Commit(ctx)
	require.NoError(t, err)
	b, err := c.Get(ctx, out)
	require.NoError(t, err)
	defer b.Release()
	gotX, err := engine.Values[float32](b.Col("x"))
	require.NoError(t, err)
	assert.Equal(t, wantX, gotX)
	gotS, err := b.Col("s").Strings()
	require.NoError(t, err)
	assert.Equal(t, reserveWords, gotS)
}

// With every unit unreachable a reserved put fails, having tried each
// once, and names them all.
func TestReservePutWithEveryUnitDead(t *testing.T) {
	ctx := t.Context()
	c, live, dead, _ := reserveDeadCluster(t)
	meta, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Mode: client.Insert, BatchSize: len(reserveWords), Fields: []string{"x", "s"}})
	require.NoError(t, err)
	_, err = c.ReservePut(ctx, meta, reserveSpecs()...)
	require.ErrorIs(t, err, engine.ErrUnavailable)
	for _, id := range []engine.UnitID{live.u.ID(), dead.u.ID()} {
		assert.Contains(t, err.Error(), fmt.Sprintf("unit %d", id))
	}
}
