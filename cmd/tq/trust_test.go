package main

// Tests of identity and durability with real `tq serve` processes: the
// cases issue 11 observed, as a user and an attacker on the same host
// would meet them. The clients run in this test process.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// connectTo connects a client of this user (finding the server's token in
// its data directory) to addr.
func connectTo(t *testing.T, p *serveProc, addr string) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.Connect(ctx, addr, client.ConnectConfig{Token: p.token(t), WaitForUnits: true, Name: "trust-test"})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func putInt(t *testing.T, kv *kvapi.KV, part, key string, v int64) {
	t.Helper()
	col, _ := engine.DenseOf([]int64{v}, 1)
	_, err := kv.BatchPut(context.Background(), part, []string{key}, engine.MustBatch(engine.Field{Name: "v", Col: col}), nil)
	require.NoError(t, err)
}

// getInt reads key's value; err is the read's error.
func getInt(t *testing.T, kv *kvapi.KV, part, key string) ([]int64, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, err := kv.BatchGetCopy(ctx, part, []string{key})
	if err != nil {
		return nil, err
	}
	v, err := engine.Values[int64](b.Col("v"))
	require.NoError(t, err)
	return v, nil
}

// runTQ runs the tq binary as a client of p's user and returns its output.
func runTQ(t *testing.T, p *serveProc, bin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), p.env()...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestUnitIDNotReusedAfterControllerRestart is issue 11's first case: the
// controller restarts; a new unit starts while the old unit is still in
// its reconnect backoff; the old unit comes back. The new unit must not
// get the old one's id (it got it, and p2/y read back p1/x's bytes).
func TestUnitIDNotReusedAfterControllerRestart(t *testing.T) {
	bin := tqBinary(t)
	data, socks := t.TempDir(), t.TempDir()
	ctrlArgs := []string{"--role", "controller", "--listen", "", "--socket-dir", socks, "--heartbeat", "100ms"}
	ctrl := startServeIn(t, data, nil, bin, ctrlArgs...)
	addr := ctrl.addr("unix")
	unitArgs := func(name string) []string {
		return []string{"--role", "unit", "--controller", addr, "--unit-listen", "", "--socket-dir", socks, "--capacity", "16MiB", "--name", name}
	}
	oldUnit := startServeIn(t, data, nil, bin, unitArgs("old")...)
	c := connectTo(t, ctrl, addr)
	putInt(t, kvapi.New(c), "p1", "x", 111)
	c.Close()

	// The controller dies and comes back; a new unit joins at once, while
	// the old one waits out its backoff.
	ctrl.cmd.Process.Signal(syscall.SIGKILL)
	<-ctrl.done
	ctrl.done <- nil
	ctrl = startServeIn(t, data, nil, bin, ctrlArgs...)
	newUnit := startServeIn(t, data, nil, bin, unitArgs("new")...)
	require.NotEqual(t, oldUnit.units, newUnit.units, "the new unit took the old one's id (and its socket)")

	// Both registered and alive: the old unit is back under its own id.
	ctx := context.Background()
	m, err := client.DialMeta(ctx, addr, client.RemoteConfig{Token: ctrl.token(t)})
	require.NoError(t, err)
	defer m.Close()
	require.Eventually(t, func() bool {
		us, err := m.Units(ctx)
		alive := 0
		for _, u := range us {
			if u.Alive {
				alive++
			}
		}
		return err == nil && alive == 2
	}, 20*time.Second, 50*time.Millisecond)
	us, _ := m.Units(ctx)
	ids := []engine.UnitID{us[0].ID, us[1].ID}
	assert.Equal(t, []engine.UnitID{1, 2}, ids)
	assert.NotEqual(t, us[0].Incarnation, us[1].Incarnation)

	// p2/y goes wherever the placement puts it; each key reads its own
	// bytes.
	c2 := connectTo(t, ctrl, addr)
	kv := kvapi.New(c2)
	putInt(t, kv, "p2", "y", 222)
	x, err := getInt(t, kv, "p1", "x")
	require.NoError(t, err)
	assert.Equal(t, []int64{111}, x)
	y, err := getInt(t, kv, "p2", "y")
	require.NoError(t, err)
	assert.Equal(t, []int64{222}, y)
}

// TestCheckpointWithDataAcrossRestarts is issue 11's second case and the
// checkpoint CLI: save, restart tq serve (its units are new: their memory
// is gone), write p2/y at what may be the very same place, load the
// checkpoint: p1/x reads 111 again — never 222 — and a fresh cluster
// elsewhere (another data directory) loading the same checkpoint serves
// the same bytes, by tq checkpoint load or tq serve --restore.
func TestCheckpointWithDataAcrossRestarts(t *testing.T) {
	bin := tqBinary(t)
	data := t.TempDir()
	args := []string{"--listen", "", "--socket-dir", t.TempDir(), "--units", "1", "--capacity", "16MiB", "--heartbeat", "100ms"}
	p := startServeIn(t, data, nil, bin, args...)
	addr := p.addr("unix")
	c := connectTo(t, p, addr)
	kv := kvapi.New(c)
	putInt(t, kv, "p1", "x", 111)
	for i := range 20 {
		putInt(t, kv, "p3", "k"+string(rune('a'+i)), int64(i))
	}
	out, err := runTQ(t, p, bin, "checkpoint", "save", addr, "ck1")
	require.NoError(t, err, out)
	out, err = runTQ(t, p, bin, "checkpoint", "list", addr)
	require.NoError(t, err, out)
	assert.Contains(t, out, "ck1")
	c.Close()
	p.stop(t)

	// The same data directory: the controller remembers p1/x, but the unit
	// that held it is gone, so reading it is ErrLost, never other bytes.
	p = startServeIn(t, data, nil, bin, args...)
	// A save at once, while the old unit still counts as alive (one unit
	// timeout), waits for it to be declared dead and saves its cells as
	// lost: it does not fail or pass by when it ran.
	out, err = runTQ(t, p, bin, "checkpoint", "save", addr, "ck-restarted")
	require.NoError(t, err, out)
	assert.Contains(t, out, "cells lost when it was saved")
	c = connectTo(t, p, addr)
	kv = kvapi.New(c)
	_, err = getInt(t, kv, "p1", "x")
	require.ErrorIs(t, err, engine.ErrLost)
	putInt(t, kv, "p2", "y", 222)
	out, err = runTQ(t, p, bin, "checkpoint", "load", addr, "ck1")
	require.NoError(t, err, out)
	x, err := getInt(t, kv, "p1", "x")
	require.NoError(t, err)
	assert.Equal(t, []int64{111}, x)
	_, err = getInt(t, kv, "p2", "y")
	require.ErrorIs(t, err, engine.ErrNotFound, "p2 was not in the checkpoint")
	for i := range 20 {
		v, err := getInt(t, kv, "p3", "k"+string(rune('a'+i)))
		require.NoError(t, err)
		assert.Equal(t, []int64{int64(i)}, v)
	}
	// Names, not paths, come from the network.
	out, err = runTQ(t, p, bin, "checkpoint", "save", addr, "../escape")
	require.Error(t, err)
	assert.Contains(t, out, "checkpoint name")
	c.Close()
	p.stop(t)

	// A fresh cluster (another data directory) with the checkpoint copied
	// in: --restore serves the saved bytes.
	fresh := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(fresh, "checkpoints"), 0o700))
	require.NoError(t, os.Rename(filepath.Join(data, "checkpoints", "ck1"), filepath.Join(fresh, "checkpoints", "ck1")))
	q := startServeIn(t, fresh, nil, bin, append(args, "--restore", "ck1")...)
	kv = kvapi.New(connectTo(t, q, q.addr("unix")))
	x, err = getInt(t, kv, "p1", "x")
	require.NoError(t, err)
	assert.Equal(t, []int64{111}, x)
	list, err := kv.List(context.Background(), "p3")
	require.NoError(t, err)
	assert.Len(t, list["p3"], 20)
}

// TestCheckpointLoadAvoidsADrainingUnit: a checkpoint with data loaded
// after a unit was drained writes no cell to that unit (it had the most
// room, being empty: the load put its cells there, behind the drain).
func TestCheckpointLoadAvoidsADrainingUnit(t *testing.T) {
	bin := tqBinary(t)
	p := startServeIn(t, t.TempDir(), nil, bin, "--listen", "", "--socket-dir", t.TempDir(), "--units", "2", "--capacity", "16MiB")
	addr := p.addr("unix")
	c := connectTo(t, p, addr)
	kv := kvapi.New(c)
	var keys []string
	for i := range 20 {
		keys = append(keys, fmt.Sprintf("k%d", i))
		putInt(t, kv, "p", keys[i], int64(i))
	}
	out, err := runTQ(t, p, bin, "checkpoint", "save", addr, "ck")
	require.NoError(t, err, out)
	out, err = runTQ(t, p, bin, "unit", "drain", "--controller", addr, "1")
	require.NoError(t, err, out)
	out, err = runTQ(t, p, bin, "checkpoint", "load", addr, "ck")
	require.NoError(t, err, out)
	ctx := context.Background()
	meta, err := c.MetaByKeys(ctx, "p", keys, []string{"v"}, false)
	require.NoError(t, err)
	for i, l := range meta.Cells["v"] {
		require.NotEqual(t, engine.UnitID(1), l.Unit, "key %s loaded onto the drained unit", keys[i])
	}
	for i, k := range keys {
		v, err := getInt(t, kv, "p", k)
		require.NoError(t, err)
		assert.Equal(t, []int64{int64(i)}, v)
	}
}

// TestServeRecoversAfterKill: tq serve killed with SIGKILL (no clean
// shutdown) comes back with every acknowledged key; the units' memory is
// gone, so the values read as lost — and the controller's log, not a
// shutdown snapshot, brought the keys back.
func TestServeRecoversAfterKill(t *testing.T) {
	bin := tqBinary(t)
	data := t.TempDir()
	args := []string{"--listen", "", "--socket-dir", t.TempDir(), "--units", "1", "--capacity", "16MiB"}
	p := startServeIn(t, data, nil, bin, args...)
	addr := p.addr("unix")
	kv := kvapi.New(connectTo(t, p, addr))
	var keys []string
	for i := range 50 {
		k := "k" + strings.Repeat("x", i%3) + string(rune('A'+i))
		keys = append(keys, k)
		putInt(t, kv, "p", k, int64(i))
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	p.done <- nil

	p = startServeIn(t, data, nil, bin, args...)
	kv = kvapi.New(connectTo(t, p, addr))
	list, err := kv.List(context.Background(), "p")
	require.NoError(t, err)
	var got []string
	for _, e := range list["p"] {
		got = append(got, e.Key)
	}
	assert.Equal(t, keys, got, "every acknowledged key, in creation order")
	_, err = getInt(t, kv, "p", keys[0])
	require.ErrorIs(t, err, engine.ErrLost)
	// New puts work, and overwrite the lost values.
	putInt(t, kv, "p", keys[0], 7)
	v, err := getInt(t, kv, "p", keys[0])
	require.NoError(t, err)
	assert.Equal(t, []int64{7}, v)
}

// TestReservedPutOverShmOnADrainingUnit: a Go client's put filled in place
// in shared memory (ReservePutKeys) on a unit of tq serve that tq unit
// drain marks before the commit: the controller refuses the commit, the
// client reads the bytes back over shm, frees them and puts them on the
// other unit.
func TestReservedPutOverShmOnADrainingUnit(t *testing.T) {
	bin := tqBinary(t)
	p := startServeIn(t, t.TempDir(), nil, bin, "--listen", "", "--socket-dir", t.TempDir(), "--units", "2", "--capacity", "16MiB")
	addr := p.addr("unix")
	c := connectTo(t, p, addr)
	ctx := context.Background()
	keys := []string{"a", "b", "c", "d"}
	kb, err := c.ReservePutKeys(ctx, "p", keys, nil, client.FieldSpec{Name: "v", DType: engine.Int64, Shape: engine.Shape{512}})
	require.NoError(t, err)
	require.Equal(t, "shm", kb.Unit().Transport(), "the reservation is in shared memory")
	want := make([]int64, 4*512)
	for i := range want {
		want[i] = int64(i*7 + 1)
	}
	vals, err := engine.Values[int64](kb.Column("v"))
	require.NoError(t, err)
	copy(vals, want)
	drained := kb.Unit().ID()
	out, err := runTQ(t, p, bin, "unit", "drain", "--controller", addr, fmt.Sprint(drained))
	require.NoError(t, err, out)
	_, err = kb.Commit(ctx)
	require.NoError(t, err, "the commit of a reservation whose unit was drained since")
	meta, err := c.MetaByKeys(ctx, "p", keys, []string{"v"}, false)
	require.NoError(t, err)
	for _, l := range meta.Cells["v"] {
		require.NotEqual(t, drained, l.Unit, "a cell on the drained unit")
	}
	b, err := kvapi.New(c).BatchGetCopy(ctx, "p", keys)
	require.NoError(t, err)
	got, err := engine.Values[int64](b.Col("v"))
	require.NoError(t, err)
	assert.Equal(t, want, got)
}
