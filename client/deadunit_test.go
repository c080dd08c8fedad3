package client_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// deadUnitCluster starts a controller with two TCP units and a client
// connected to both, then ends the data plane of the second: a unit that
// died after Connect, which the controller still counts alive.
func deadUnitCluster(t *testing.T, cfg client.Config) (c *client.Client, live, dead *servedUnit) {
	t.Helper()
	ctrl, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	live = joinUnit(t, addr, true)
	dead = joinUnit(t, addr, true)
	c, err = client.Connect(t.Context(), addr, client.ConnectConfig{Client: cfg})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	for _, u := range c.Units() {
		require.Equal(t, "tcp", u.Transport(), "unit %d connected", u.ID())
	}
	dead.stop()
	return c, live, dead
}

func randInts(n int) []int64 {
	v := make([]int64, n)
	for i := range v {
		v[i] = rand.Int64()
	}
	return v
}

// A put placed partly on a unit that died after Connect (nothing written
// there) moves those rows to the unit left, and reads back bit-exact.
func TestPutMovesOffADeadUnit(t *testing.T) {
	ctx := t.Context()
	c, live, _ := deadUnitCluster(t, client.Config{Placement: client.Hash})
	for i := range 4 {
		vals := randInts(64)
		m, err := c.PutNew(ctx, "p", ints(t, "x", vals))
		require.NoError(t, err, "put %d with a unit dead", i)
		for r, l := range m.Cells["x"] {
			assert.Equal(t, live.u.ID(), l.Unit, "row %d", r)
		}
		got, err := c.Get(ctx, m)
		require.NoError(t, err)
		assert.Equal(t, vals, values(t, got, "x"))
		got.Release()
	}
}

// The KV put paths move off the dead unit too: hash placement
// (writePlaced) and local-first, whose whole-batch write to one unit may
// pick the dead one.
func TestKVPutMovesOffADeadUnit(t *testing.T) {
	for _, pl := range []client.Placement{client.Hash, client.LocalFirst} {
		t.Run(fmt.Sprint(pl), func(t *testing.T) {
			ctx := t.Context()
			c, live, _ := deadUnitCluster(t, client.Config{Placement: pl})
			kv := kvapi.New(c)
			for i := range 16 {
				keys := keyRange(fmt.Sprintf("k%d-", i), 8)
				vals := randInts(8)
				_, err := kv.BatchPut(ctx, "p", keys, ints(t, "x", vals), nil)
				require.NoError(t, err, "put %d with a unit dead", i)
				for r, id := range unitsOf(t, c, "p", keys) {
					assert.Equal(t, live.u.ID(), id, "row %s", keys[r])
				}
				got, err := kv.BatchGet(ctx, "p", keys)
				require.NoError(t, err)
				assert.Equal(t, vals, values(t, got, "x"))
				got.Release()
			}
		})
	}
}

// With every unit dead the put fails, naming each unit it tried, and
// leaves no row behind.
func TestPutWithEveryUnitDead(t *testing.T) {
	ctx := t.Context()
	c, live, dead := deadUnitCluster(t, client.Config{Placement: client.Hash})
	live.stop()
	_, err := c.PutNew(ctx, "p", ints(t, "x", randInts(64)))
	require.ErrorIs(t, err, engine.ErrUnavailable)
	for _, u := range []*servedUnit{live, dead} {
		assert.Contains(t, err.Error(), fmt.Sprintf("unit %d", u.u.ID()))
	}
	_, err = kvapi.New(c).BatchPut(ctx, "q", keyRange("k", 8), ints(t, "x", randInts(8)), nil)
	require.ErrorIs(t, err, engine.ErrUnavailable)
	for _, u := range []*servedUnit{live, dead} {
		assert.Contains(t, err.Error(), fmt.Sprintf("unit %d", u.u.ID()))
	}
}
