package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/testenv"
	"github.com/tqgo/tq/kvapi"
)

// freeAddr returns a loopback TCP address nothing listens on now, for a
// process that must come back at the same address after a restart.
func freeAddr(t *testing.T) string {
	t.Helper()
	return testenv.FreeLoopbackAddr(t)
}

// unitsByID lists the controller's storage units, by id.
func unitsByID(t *testing.T, m *client.RemoteMeta) map[engine.UnitID]engine.UnitInfo {
	t.Helper()
	us, err := m.Units(context.Background())
	require.NoError(t, err)
	out := map[engine.UnitID]engine.UnitInfo{}
	for _, u := range us {
		out[u.ID] = u
	}
	return out
}

// TestRestartedUnitIsANewUnit is the README's "Restarts and failures":
// a storage unit killed with SIGKILL and started again at the very same
// address is a new unit, with a new id and another incarnation, and the
// cells of the unit it replaces read as ErrLost, never as the new unit's
// bytes (a client that kept its connection redials the same address).
// Then the controller is killed and restarted with a --restore of a
// checkpoint that does not exist: it recovers partitions from its data
// directory, so it does not look for the checkpoint and starts
// (TestUnitIDNotReusedAfterControllerRestart has the unit register again
// under its id).
func TestRestartedUnitIsANewUnit(t *testing.T) {
	bin := tqBinary(t)
	data := t.TempDir()
	ctrlAddr := freeAddr(t)
	ctrlArgs := []string{"--role", "controller", "--listen", ctrlAddr, "--socket-dir", "", "--heartbeat", "100ms"}
	ctrl := startServeIn(t, data, nil, bin, ctrlArgs...)
	addr := ctrl.addr("tcp")
	unitArgs := []string{"--role", "unit", "--controller", addr, "--socket-dir", "", "--unit-listen", freeAddr(t), "--capacity", "16MiB"}
	unit := startServeIn(t, data, nil, bin, unitArgs...)
	c := connectTo(t, ctrl, addr)
	kv := kvapi.New(c)
	putInt(t, kv, "p", "x", 111)
	ctx := context.Background()
	mx, err := c.MetaByKeys(ctx, "p", []string{"x"}, nil, false)
	require.NoError(t, err)
	x := mx.Cells["v"][0]

	m, err := client.DialMeta(ctx, addr, client.RemoteConfig{Token: ctrl.token(t)})
	require.NoError(t, err)
	defer m.Close()
	old := unitsByID(t, m)[x.Unit]

	unit.kill()
	unit = startServeIn(t, data, nil, bin, unitArgs...)
	// Once the old unit is declared dead (five heartbeats), puts go to the
	// new one.
	require.Eventually(t, func() bool {
		us := unitsByID(t, m)
		return len(us) == 2 && !us[x.Unit].Alive
	}, 20*time.Second, 20*time.Millisecond, "the restarted unit registered and the old one declared dead")
	var fresh engine.UnitInfo
	for id, u := range unitsByID(t, m) {
		if id != x.Unit {
			fresh = u
		}
	}
	assert.NotEqual(t, old.ID, fresh.ID, "the restarted unit took the old one's id")
	assert.NotEqual(t, old.Incarnation, fresh.Incarnation)
	assert.Equal(t, old.Addrs, fresh.Addrs, "the restarted unit listens where the old one did")

	putInt(t, kv, "p", "y", 222)
	my, err := c.MetaByKeys(ctx, "p", []string{"y"}, nil, false)
	require.NoError(t, err)
	t.Logf("p/x at unit %d %+v, p/y at unit %d %+v", x.Unit, x.Addr, my.Cells["v"][0].Unit, my.Cells["v"][0].Addr)
	_, err = getInt(t, kv, "p", "x")
	require.ErrorIs(t, err, engine.ErrLost, "p/x, whose unit was killed")
	// A get by the metadata taken before the kill, over the connection to
	// that address, also finds the unit gone.
	_, err = c.Get(ctx, mx)
	require.ErrorIs(t, err, engine.ErrLost, "p/x by its old metadata")
	y, err := getInt(t, kv, "p", "y")
	require.NoError(t, err)
	assert.Equal(t, []int64{222}, y)
	c.Close()

	// The controller is killed and restarted with --restore of no
	// checkpoint: it recovers p, so it does not look for it.
	ctrl.kill()
	_, lines := startServeLogged(t, data, bin, append(ctrlArgs, "--restore", "nosuch")...)
	assert.Contains(t, lines.String(), "tq serve: not restoring checkpoint nosuch")
	_, err = os.Stat(filepath.Join(data, "checkpoints", "nosuch"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// TestInMemoryKeepsNoState: tq serve --in-memory writes no controller
// state to its data directory, and a restart of it holds nothing of the
// one before.
func TestInMemoryKeepsNoState(t *testing.T) {
	bin := tqBinary(t)
	data := t.TempDir()
	args := []string{"--in-memory", "--listen", "", "--socket-dir", t.TempDir(), "--units", "1", "--capacity", "16MiB"}
	p := startServeIn(t, data, nil, bin, args...)
	putInt(t, kvapi.New(connectTo(t, p, p.addr("unix"))), "p", "x", 1)
	p.stop(t)
	_, err := os.Stat(filepath.Join(data, "controller"))
	require.ErrorIs(t, err, os.ErrNotExist, "--in-memory wrote controller state")

	p = startServeIn(t, data, nil, bin, args...)
	list, err := kvapi.New(connectTo(t, p, p.addr("unix"))).List(context.Background(), "p")
	require.NoError(t, err)
	assert.Empty(t, list["p"], "p's keys after a restart of an --in-memory tq serve")
}
