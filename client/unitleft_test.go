package client_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
)

// unitByID returns c's handle for unit id, nil if its table has none.
func unitByID(c *client.Client, id engine.UnitID) client.DataUnit {
	for _, u := range c.Units() {
		if u.ID() == id {
			return u
		}
	}
	return nil
}

// A down unit that the client's discovery drops from its table (here the
// controller restarted without its state: its ids name other units now)
// has its redial stopped. A put or read still holding it used to fail
// with "storage unit N: client closed" (engine.ErrClosed) though the
// client was open, which a put does not place again: now such a call
// fails as the unit being gone (engine.ErrUnavailable, naming the unit
// and saying it left the cluster). Closing the client still reads as
// closed.
func TestUnitDroppedByDiscoveryReadsAsGone(t *testing.T) {
	ctx := t.Context()
	ctrl1, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	addr, stop1 := serveControllerAt(t, ctrl1, "127.0.0.1:0")
	hostport := addr[len("tcp://"):]
	live := joinUnit(t, addr, true)
	down := joinUnit(t, addr, false) // nothing listens: a redial handle
	hash := client.ConnectConfig{Client: client.Config{Placement: client.Hash}}
	c, err := client.Connect(ctx, addr, hash)
	require.NoError(t, err)
	defer c.Close()
	closing, err := client.Connect(ctx, addr, hash)
	require.NoError(t, err)
	defer closing.Close()
	m, err := c.PutNew(ctx, "p", ints1(t, 7))
	require.NoError(t, err)
	require.Equal(t, live.u.ID(), m.Cells["x"][0].Unit)

	held := unitByID(c, down.u.ID())
	require.NotNil(t, held)
	require.Equal(t, "none", held.Transport(), "unit %d is down", down.u.ID())
	_, err = held.Write(ctx, [][][]byte{{[]byte("abcd")}})
	require.ErrorIs(t, err, engine.ErrUnavailable, "a write to the down unit while listed")

	// The controller restarts without its state; another unit takes id 1.
	live.mem.Close()
	down.mem.Close()
	stop1()
	ctrl2, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	serveControllerAt(t, ctrl2, hostport)
	joinUnit(t, addr, true)
	require.Eventually(t, func() bool {
		c.PutNew(ctx, "q", ints1(t, 8)) // the client's controller connection meets the new cluster
		got, err := c.Get(ctx, m)       // which makes a read list its units first
		if err == nil {
			got.Release()
		}
		return unitByID(c, down.u.ID()) != held
	}, 10*time.Second, 20*time.Millisecond, "the old unit leaves the client's table")

	want := fmt.Sprintf("storage unit %d left the cluster", down.u.ID())
	_, err = held.Write(ctx, [][][]byte{{[]byte("abcd")}})
	require.ErrorIs(t, err, engine.ErrUnavailable, "a write still holding the dropped unit")
	assert.NotErrorIs(t, err, engine.ErrClosed)
	assert.ErrorContains(t, err, want)
	err = held.ReadInto(ctx, []engine.RemoteAddr{{}}, [][]byte{make([]byte, 4)})
	require.ErrorIs(t, err, engine.ErrUnavailable, "a read still holding the dropped unit")
	assert.NotErrorIs(t, err, engine.ErrClosed)
	assert.ErrorContains(t, err, want)
	_, err = held.(client.Reserver).ReserveExtents(ctx, []int64{4})
	require.ErrorIs(t, err, engine.ErrUnavailable, "a reservation still holding the dropped unit")
	assert.NotErrorIs(t, err, engine.ErrClosed)

	// A client closed: its units read as closed.
	other := unitByID(closing, down.u.ID())
	require.NotNil(t, other)
	require.NoError(t, closing.Close())
	_, err = other.Write(context.WithoutCancel(ctx), [][][]byte{{[]byte("abcd")}})
	require.ErrorIs(t, err, engine.ErrClosed, "a write through a closed client")
	assert.NotErrorIs(t, err, engine.ErrUnavailable)
}
