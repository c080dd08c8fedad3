package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/storage"
)

// servedUnit is a storage unit registered with a controller, its data
// plane served over TCP at addr (or not yet, or no longer).
type servedUnit struct {
	u    *storage.Unit
	srv  *storage.Server
	mem  *storage.Membership
	addr string // host:port

	mu     sync.Mutex
	served chan struct{}
}

// joinUnit registers a unit whose data plane listens on addr (a free
// port); with serve false nothing listens there yet. Its heartbeats go on
// until the test ends, so the controller counts it alive whatever its
// data plane does: a unit that just died, as far as the controller knows.
func joinUnit(t *testing.T, ctrlAddr string, serve bool) *servedUnit {
	t.Helper()
	ctx := t.Context()
	cfg := storage.DefaultConfig()
	cfg.Capacity = 16 << 20
	u, err := storage.NewUnit(0, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	_, err = storage.AssignID(ctx, ctrlAddr, u, storage.JoinConfig{})
	require.NoError(t, err)
	s := &servedUnit{u: u, srv: storage.NewServer(u, storage.ServerConfig{})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s.addr = l.Addr().String()
	if serve {
		s.serve(t, l)
	} else {
		l.Close()
	}
	t.Cleanup(func() { s.stop() })
	s.mem, err = storage.Join(ctx, ctrlAddr, u, storage.JoinConfig{Addrs: []string{"tcp://" + s.addr}})
	require.NoError(t, err)
	t.Cleanup(func() { s.mem.Close() })
	return s
}

func (s *servedUnit) serve(t *testing.T, l net.Listener) {
	t.Helper()
	if l == nil {
		var err error
		l, err = net.Listen("tcp", s.addr)
		require.NoError(t, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.served = make(chan struct{})
	go func() { s.srv.Serve(l); close(s.served) }()
}

// stop ends the data plane: connections are refused from now on.
func (s *servedUnit) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.served != nil {
		s.srv.Close()
		<-s.served
		s.served = nil
	}
}

// unitsOf returns the unit each row of keys is stored on.
func unitsOf(t *testing.T, c *client.Client, partition string, keys []string) []engine.UnitID {
	t.Helper()
	m, err := c.MetaByKeys(t.Context(), partition, keys, []string{"x"}, false)
	require.NoError(t, err)
	out := make([]engine.UnitID, len(keys))
	for i, l := range m.Cells["x"] {
		out[i] = l.Unit
	}
	return out
}

func xBatch(t *testing.T, n int) *engine.Batch {
	t.Helper()
	vals := make([]int64, n)
	for i := range vals {
		vals[i] = int64(i)
	}
	return ints(t, "x", vals)
}

func keyRange(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return keys
}

// A unit that died before the controller noticed does not fail Connect:
// the client writes to the other unit, reads of the dead unit's cells
// fail at once naming it, and the rest reads as before.
func TestConnectWithAUnitDown(t *testing.T) {
	ctx := t.Context()
	ctrl, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	u1 := joinUnit(t, addr, true)
	u2 := joinUnit(t, addr, true)
	hash := client.ConnectConfig{Client: client.Config{Placement: client.Hash}}

	before, err := client.Connect(ctx, addr, hash)
	require.NoError(t, err)
	keys := keyRange("k", 8)
	_, err = kvapi.New(before).BatchPut(ctx, "p", keys, xBatch(t, 8), nil)
	require.NoError(t, err)
	where := unitsOf(t, before, "p", keys)
	require.NoError(t, before.Close())
	var on1, on2 []string
	for i, id := range where {
		switch id {
		case u1.u.ID():
			on1 = append(on1, keys[i])
		case u2.u.ID():
			on2 = append(on2, keys[i])
		}
	}
	require.NotEmpty(t, on1)
	require.NotEmpty(t, on2, "hash placement put rows on both units")

	u2.stop()
	c, err := client.Connect(ctx, addr, hash)
	require.NoError(t, err, "connect with one of two units down")
	defer c.Close()
	require.Len(t, c.Units(), 2, "the unit that is down stays in the table")
	kv := kvapi.New(c)

	start := time.Now()
	_, err = kv.BatchGet(ctx, "p", keys)
	require.Error(t, err)
	assert.True(t, errors.Is(err, engine.ErrUnavailable) || errors.Is(err, engine.ErrLost), "read of the dead unit's cells: %v", err)
	assert.Contains(t, err.Error(), fmt.Sprintf("unit %d", u2.u.ID()))
	assert.Less(t, time.Since(start), 2*time.Second, "the read fails at once")
	t.Logf("read of the dead unit: %v", err)

	got, err := kv.BatchGet(ctx, "p", on1)
	require.NoError(t, err, "cells on the live unit")
	got.Release()

	fresh := keyRange("new", 8)
	_, err = kv.BatchPut(ctx, "p", fresh, xBatch(t, 8), nil)
	require.NoError(t, err, "a put with one unit down")
	for i, id := range unitsOf(t, c, "p", fresh) {
		assert.Equal(t, u1.u.ID(), id, "row %s", fresh[i])
	}
	// Local-first placement, the default, skips it the same way.
	lc, err := client.Connect(ctx, addr, client.ConnectConfig{})
	require.NoError(t, err)
	defer lc.Close()
	_, err = kvapi.New(lc).BatchPut(ctx, "q", fresh, xBatch(t, 8), nil)
	require.NoError(t, err)
	for _, id := range unitsOf(t, lc, "q", fresh) {
		assert.Equal(t, u1.u.ID(), id)
	}
}

// Connect fails when no unit at all can be reached, with an error naming
// them.
func TestConnectNoUnitReachable(t *testing.T) {
	ctrl, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	a := joinUnit(t, addr, false)
	b := joinUnit(t, addr, false)
	start := time.Now()
	_, err = client.Connect(t.Context(), addr, client.ConnectConfig{})
	require.ErrorIs(t, err, engine.ErrUnavailable)
	for _, u := range []*servedUnit{a, b} {
		assert.Contains(t, err.Error(), fmt.Sprintf("storage unit %d", u.u.ID()))
	}
	assert.Less(t, time.Since(start), 5*time.Second)
}

// A unit that was down at Connect comes back by itself: once it serves,
// the client dials it again and writes reach it.
func TestConnectRedialsAUnit(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	ctrl, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	joinUnit(t, addr, true)
	late := joinUnit(t, addr, false)
	c, err := client.Connect(ctx, addr, client.ConnectConfig{Client: client.Config{Placement: client.Hash}})
	require.NoError(t, err)
	defer c.Close()
	var down client.DataUnit
	for _, u := range c.Units() {
		if u.ID() == late.u.ID() {
			down = u
		}
	}
	require.NotNil(t, down)
	assert.Equal(t, "none", down.Transport())

	late.serve(t, nil)
	kv := kvapi.New(c)
	for i := 0; ; i++ {
		keys := keyRange(fmt.Sprintf("r%d-", i), 4)
		_, err := kv.BatchPut(ctx, "p", keys, xBatch(t, 4), nil)
		require.NoError(t, err)
		ids := unitsOf(t, c, "p", keys)
		if strings.Contains(fmt.Sprint(ids), fmt.Sprint(late.u.ID())) {
			got, err := kv.BatchGet(ctx, "p", keys)
			require.NoError(t, err, "read back from the unit that came back")
			got.Release()
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no write reached unit %d after it came back (transport %q)", late.u.ID(), down.Transport())
		}
		time.Sleep(20 * time.Millisecond)
	}
	assert.Equal(t, "tcp", down.Transport())
}

// A connected client learns of units that join after Connect (a restarted
// unit comes back under a new id): it reads their cells, which it used to
// report lost, and writes to them; and it stops writing to a unit the
// controller reports dead.
func TestClientLearnsUnits(t *testing.T) {
	ctx := t.Context()
	ctrl, err := controller.New(controller.Config{UnitTimeout: 300 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	u1 := joinUnit(t, addr, true)
	hash := client.ConnectConfig{Client: client.Config{Placement: client.Hash}}
	early, err := client.Connect(ctx, addr, hash)
	require.NoError(t, err)
	defer early.Close()
	require.Len(t, early.Units(), 1)

	u2 := joinUnit(t, addr, true)
	late, err := client.Connect(ctx, addr, hash)
	require.NoError(t, err)
	defer late.Close()
	keys := keyRange("k", 8)
	_, err = kvapi.New(late).BatchPut(ctx, "p", keys, xBatch(t, 8), nil)
	require.NoError(t, err)
	require.Contains(t, unitsOf(t, late, "p", keys), u2.u.ID())

	// The early client reads the cells on the unit it did not know.
	got, err := kvapi.New(early).BatchGet(ctx, "p", keys)
	require.NoError(t, err, "cells on a unit that joined after Connect")
	assert.True(t, got.Col("x").Equal(xBatch(t, 8).Col("x")))
	got.Release()
	require.Len(t, early.Units(), 2)

	// u1 dies; once the controller says so, puts go to u2 only (the first
	// may fail, naming u1).
	u1.mem.Close()
	u1.stop()
	fresh := keyRange("new", 8)
	failed := 0
	require.Eventually(t, func() bool {
		if _, err := kvapi.New(early).BatchPut(ctx, "q", fresh, xBatch(t, 8), nil); err != nil {
			if failed++; failed == 1 {
				t.Logf("put while u1 is dying: %v", err)
			}
			return false
		}
		for _, id := range unitsOf(t, early, "q", fresh) {
			if id != u2.u.ID() {
				return false
			}
		}
		return true
	}, 10*time.Second, 50*time.Millisecond, "puts avoid the dead unit")
}

// shmServedUnit is a storage unit registered with a controller whose data
// plane is served on a unix socket, and its shared memory on the fd socket
// beside it, when serve runs (again, after a stop).
type shmServedUnit struct {
	u    *storage.Unit
	sock string
}

// shmUnitCluster starts an in-memory controller on a unix socket and a
// unit of 16 MiB registered with it, which heartbeats until the test ends
// and advertises its unix and shm addresses; the caller serves it.
func shmUnitCluster(t *testing.T) (string, *shmServedUnit) {
	t.Helper()
	ctx := t.Context()
	ctrl, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	cfg := storage.DefaultConfig()
	cfg.Capacity = 16 << 20
	u, err := storage.NewUnit(0, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	_, err = storage.AssignID(ctx, addr, u, storage.JoinConfig{})
	require.NoError(t, err)
	su := &shmServedUnit{u: u, sock: filepath.Join(t.TempDir(), "unit.sock")}
	mem, err := storage.Join(ctx, addr, u, storage.JoinConfig{Addrs: []string{"unix://" + su.sock, "shm://" + su.sock + ".shm"}})
	require.NoError(t, err)
	t.Cleanup(func() { mem.Close() })
	return addr, su
}

// serve serves the unit until the returned stop is called.
func (su *shmServedUnit) serve(t *testing.T) (stop func()) {
	t.Helper()
	srv := storage.NewServer(su.u, storage.ServerConfig{})
	l, err := net.Listen("unix", su.sock)
	require.NoError(t, err)
	fl, err := net.ListenUnix("unix", &net.UnixAddr{Name: su.sock + ".shm", Net: "unix"})
	require.NoError(t, err)
	var wg sync.WaitGroup
	srv.RegisterShm(fl)
	wg.Go(func() { srv.Serve(l) })
	wg.Go(func() { srv.ServeShm(fl) })
	return func() { srv.Close(); wg.Wait() }
}

// A unit reached over shared memory whose connection breaks while the
// unit lives on (here its server restarts; a keepalive or frame timeout
// does the same) is dialed again: an shm connection does not redial by
// itself, and the client used to write to it, and read its cells as
// lost, for good.
func TestShmConnectionRedialed(t *testing.T) {
	ctx := t.Context()
	addr, su := shmUnitCluster(t)
	stop := su.serve(t)
	c, err := client.Connect(ctx, addr, client.ConnectConfig{Transport: client.TransportShm})
	require.NoError(t, err)
	defer c.Close()
	kv := kvapi.New(c)
	_, err = kv.BatchPut(ctx, "p", []string{"a"}, xBatch(t, 1), nil)
	require.NoError(t, err)

	stop()
	stop = su.serve(t)
	defer stop()
	require.Eventually(t, func() bool {
		_, err := kv.BatchPut(ctx, "p", []string{"b"}, xBatch(t, 1), nil)
		return err == nil
	}, 5*time.Second, 20*time.Millisecond, "a put after the unit's server restarted")
	got, err := kv.BatchGet(ctx, "p", []string{"a", "b"})
	require.NoError(t, err, "cells written before and after")
	got.Release()
	assert.Equal(t, "shm", c.Units()[0].Transport())
}

// A read of cells on a unit that registered a moment after the client's
// last learn learns again. It used to skip any learn within 100 ms of the
// last and report the cells lost (the fault matrix's seed 611 met it: a
// consumer read a restarted unit's cells as lost).
func TestReadLearnsUnitJoinedJustAfterALearn(t *testing.T) {
	ctx := t.Context()
	ctrl, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	joinUnit(t, addr, true)
	hash := client.ConnectConfig{Client: client.Config{Placement: client.Hash}}
	early, err := client.Connect(ctx, addr, hash)
	require.NoError(t, err)
	defer early.Close()
	nowhere := &engine.BatchMeta{Indexes: []uint64{1}, Partitions: []string{"p"}, Ready: []bool{true}, Tags: []engine.Tags{nil},
		Schema: map[string]engine.FieldSchema{"x": {DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{}}},
		Cells:  map[string][]engine.CellLoc{"x": {{Unit: 9999, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Len: 8}}}}}
	for round := range 3 {
		// A read of a unit nobody knows: the early client learns now.
		_, err := early.Get(ctx, nowhere)
		require.ErrorIs(t, err, engine.ErrLost)
		learned := time.Now()
		u := joinUnit(t, addr, true)
		late, err := client.Connect(ctx, addr, hash)
		require.NoError(t, err)
		keys := keyRange(fmt.Sprint("r", round, "k"), 16)
		_, err = kvapi.New(late).BatchPut(ctx, "p", keys, xBatch(t, 16), nil)
		require.NoError(t, err)
		require.Contains(t, unitsOf(t, late, "p", keys), u.u.ID())
		late.Close()
		got, err := kvapi.New(early).BatchGet(ctx, "p", keys)
		require.NoError(t, err, "cells on a unit that joined %v after the last learn", time.Since(learned))
		got.Release()
	}
}

// TestReadOfAnUnknownUnitWithTheControllerGone: a read of cells on a unit
// the client does not know asks the controller about it; when the
// controller cannot be asked, the read fails as unavailable, not as if
// the cells were lost for good.
func TestReadOfAnUnknownUnitWithTheControllerGone(t *testing.T) {
	ctx := t.Context()
	ctrl, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	srv, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	joinUnit(t, addr, true)
	c, err := client.Connect(ctx, addr, client.ConnectConfig{})
	require.NoError(t, err)
	defer c.Close()
	nowhere := &engine.BatchMeta{Indexes: []uint64{1}, Partitions: []string{"p"}, Ready: []bool{true}, Tags: []engine.Tags{nil},
		Schema: map[string]engine.FieldSchema{"x": {DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{}}},
		Cells:  map[string][]engine.CellLoc{"x": {{Unit: 9999, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Len: 8}}}}}
	_, err = c.Get(ctx, nowhere)
	require.ErrorIs(t, err, engine.ErrLost, "a unit the controller does not know either")
	srv.Close()
	_, err = c.Get(ctx, nowhere)
	require.Error(t, err)
	require.NotErrorIs(t, err, engine.ErrLost)
	require.ErrorIs(t, err, engine.ErrUnavailable)
	require.ErrorContains(t, err, "storage unit 9999, which the controller could not be asked about")
}
