package client_test

import (
	"errors"
	"math"
	"net"
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

// TestDrainMovesEveryCell drains a unit holding dense, ragged and opaque
// cells (empty ones included) with pages of three cells: every cell
// moves, the unit frees every byte, reads by key and reads through metas
// resolved before the drain (Get and GetInto, whose old locations were
// freed) return the same bytes, puts avoid the unit until it is back in
// service, and a second drain has nothing to move.
func TestDrainMovesEveryCell(t *testing.T) {
	ctx := t.Context()
	ctrl, err := controller.New(controller.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	u1 := joinUnit(t, addr, true)
	c, err := client.Connect(ctx, addr, client.ConnectConfig{Client: client.Config{Placement: client.Hash}})
	require.NoError(t, err)
	defer c.Close()
	kv := kvapi.New(c)
	keys := keyRange("k", 10)
	want := engine.MustBatch(
		engine.Field{Name: "x", Col: xBatch(t, 10).Col("x")},
		engine.Field{Name: "s", Col: engine.StringsOf([]string{"", "a", "bb", "", "cccc", "d", "", "eeeeee", "f", "gg"})},
		engine.Field{Name: "r", Col: engine.RaggedOf([][]int64{{}, {1}, {2, 3}, {}, {4}, {5, 6, 7}, {}, {8}, {9}, {}})},
	)
	_, err = kv.BatchPut(ctx, "p", keys, want, nil)
	require.NoError(t, err)
	stale, err := c.MetaByKeys(ctx, "p", keys, nil, false)
	require.NoError(t, err)
	for _, locs := range stale.Cells {
		for _, l := range locs {
			require.Equal(t, u1.u.ID(), l.Unit)
		}
	}

	u2 := joinUnit(t, addr, true)
	var steps int
	st, err := c.Drain(ctx, u1.u.ID(), client.DrainConfig{PageCells: 3, Settle: 10 * time.Millisecond, Progress: func(client.DrainStats) { steps++ }})
	require.NoError(t, err)
	assert.Equal(t, 30, st.Moved, "every cell of 10 rows × 3 fields")
	assert.Equal(t, 0, st.Skipped)
	assert.GreaterOrEqual(t, steps, 10, "pages of 3 cells")
	m := c.Meta().(*client.RemoteMeta)
	cells, _, err := m.UnitCells(ctx, u1.u.ID(), nil, 0, 0)
	require.NoError(t, err)
	assert.Empty(t, cells)
	require.Eventually(t, func() bool { return u1.u.Stats().Used == 0 }, 10*time.Second, 20*time.Millisecond,
		"the drained unit frees every byte")

	check := func(how string, got *engine.Batch, err error) {
		t.Helper()
		require.NoError(t, err, how)
		for _, f := range want.Fields() {
			assert.True(t, got.Col(f.Name).Equal(f.Col), "%s: field %q", how, f.Name)
		}
	}
	got, err := kv.BatchGetCopy(ctx, "p", keys)
	check("by key", got, err)
	got, err = c.GetCopy(ctx, stale)
	check("by a meta resolved before the drain", got, err)
	got, err = c.GetInto(ctx, stale, make([]byte, client.SizeOf(stale)))
	check("into a buffer by a meta resolved before the drain", got, err)

	fresh := keyRange("after", 16)
	_, err = kv.BatchPut(ctx, "q", fresh, xBatch(t, 16), nil)
	require.NoError(t, err)
	for _, id := range unitsOf(t, c, "q", fresh) {
		assert.Equal(t, u2.u.ID(), id, "a put placed on the draining unit")
	}
	st, err = c.Drain(ctx, u1.u.ID(), client.DrainConfig{Settle: time.Millisecond})
	require.NoError(t, err)
	assert.Zero(t, st.Moved, "a second drain")

	// Back in service: puts reach it again once the client re-lists.
	info, err := m.DrainUnit(ctx, u1.u.ID(), false)
	require.NoError(t, err)
	assert.False(t, info.Draining)
	require.Eventually(t, func() bool {
		_, err := kv.BatchPut(ctx, "r", fresh, xBatch(t, 16), nil)
		require.NoError(t, err)
		for _, id := range unitsOf(t, c, "r", fresh) {
			if id == u1.u.ID() {
				return true
			}
		}
		return false
	}, 10*time.Second, 100*time.Millisecond, "puts reach the undrained unit")

	_, err = c.Drain(ctx, 77, client.DrainConfig{})
	assert.True(t, errors.Is(err, engine.ErrNotFound), "drain of an unknown unit: %v", err)
}

// TestRebalanceSplitsTheExcess: cells written while one unit was alone
// move, about half of them, to a unit that joined later; every row reads
// the same.
func TestRebalanceSplitsTheExcess(t *testing.T) {
	ctx := t.Context()
	ctrl, err := controller.New(controller.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	u1 := joinUnit(t, addr, true)
	c, err := client.Connect(ctx, addr, client.ConnectConfig{})
	require.NoError(t, err)
	defer c.Close()
	kv := kvapi.New(c)
	const rows = 64
	vals := make([]float32, rows*1024)
	for i := range vals {
		vals[i] = float32(i)
	}
	col, err := engine.DenseOf(vals, 1024)
	require.NoError(t, err)
	want := engine.MustBatch(engine.Field{Name: "x", Col: col})
	keys := keyRange("k", rows)
	_, err = kv.BatchPut(ctx, "p", keys, want, nil)
	require.NoError(t, err)
	u2 := joinUnit(t, addr, true)
	m := c.Meta().(*client.RemoteMeta)
	require.Eventually(t, func() bool {
		us, err := m.Units(ctx)
		return err == nil && len(us) == 2 && us[0].Used >= rows*4096
	}, 10*time.Second, 50*time.Millisecond, "the units' heartbeats report their use")

	// A tolerance of 0 is the default, 0.05: the excess, half of 256 KiB,
	// is under 0.05 of 16 MiB, and nothing moves.
	st, err := c.Rebalance(ctx, client.RebalanceConfig{})
	require.NoError(t, err)
	assert.Zero(t, st.Moved, "a rebalance within the default tolerance")

	st, err = c.Rebalance(ctx, client.RebalanceConfig{Tolerance: 0.001})
	require.NoError(t, err)
	onU2 := 0
	for _, id := range unitsOf(t, c, "p", keys) {
		if id == u2.u.ID() {
			onU2++
		}
	}
	t.Logf("moved %d cells (%d bytes); %d of %d rows on the new unit", st.Moved, st.Bytes, onU2, rows)
	assert.Equal(t, st.Moved, onU2)
	assert.True(t, onU2 >= rows/4 && onU2 <= 3*rows/4, "%d of %d rows moved to the emptier unit, want about half", onU2, rows)
	got, err := kv.BatchGetCopy(ctx, "p", keys)
	require.NoError(t, err)
	assert.True(t, got.Col("x").Equal(want.Col("x")))
	assert.NotZero(t, u1.u.Stats().Used)

	// Out of [0, 1), NaN included (every comparison with it is false: it
	// used to pass and move nothing).
	for _, tol := range []float64{1, -0.1, math.NaN(), math.Inf(1)} {
		_, err = c.Rebalance(ctx, client.RebalanceConfig{Tolerance: tol})
		assert.True(t, errors.Is(err, engine.ErrInvalid), "tolerance %v: %v", tol, err)
	}
}

// benchUnit is joinUnit for a benchmark: a unit of 256 MiB registered with
// the controller at ctrlAddr, its data plane served over TCP.
func benchUnit(b *testing.B, ctrlAddr string) *storage.Unit {
	b.Helper()
	ctx := b.Context()
	cfg := storage.DefaultConfig()
	cfg.Capacity = 256 << 20
	u, err := storage.NewUnit(0, cfg)
	require.NoError(b, err)
	b.Cleanup(func() { u.Close() })
	_, err = storage.AssignID(ctx, ctrlAddr, u, storage.JoinConfig{})
	require.NoError(b, err)
	srv := storage.NewServer(u, storage.ServerConfig{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	done := make(chan struct{})
	go func() { srv.Serve(l); close(done) }()
	b.Cleanup(func() { srv.Close(); <-done })
	mem, err := storage.Join(ctx, ctrlAddr, u, storage.JoinConfig{Addrs: []string{"tcp://" + l.Addr().String()}})
	require.NoError(b, err)
	b.Cleanup(func() { mem.Close() })
	return u
}

// BenchmarkDrain moves 32 MiB of cells (rows of 64 KiB) from one unit to
// another and back per op, over TCP loopback, with pages of the default
// size: the mover's throughput (read, write, commit), without the
// settle a drain waits for its clients.
func BenchmarkDrain(b *testing.B) {
	ctx := b.Context()
	ctrl, err := controller.New(controller.Config{})
	require.NoError(b, err)
	b.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(b, ctrl, controller.ServerConfig{}, "unix")
	u1, u2 := benchUnit(b, addr), benchUnit(b, addr)
	c, err := client.Connect(ctx, addr, client.ConnectConfig{Transport: client.TransportTCP})
	require.NoError(b, err)
	defer c.Close()
	m := c.Meta().(*client.RemoteMeta)
	const rows, rowBytes = 512, 64 << 10
	col, err := engine.DenseOf(make([]byte, rows*rowBytes), rowBytes)
	require.NoError(b, err)
	_, err = kvapi.New(c).BatchPut(ctx, "p", keyRange("k", rows), engine.MustBatch(engine.Field{Name: "x", Col: col}), nil)
	require.NoError(b, err)
	from, to := u1.ID(), u2.ID()
	if n, _, _ := m.UnitCells(ctx, from, nil, 1, 0); len(n) == 0 {
		from, to = to, from
	}
	b.SetBytes(2 * rows * rowBytes)
	b.ReportAllocs()
	for b.Loop() {
		for range 2 {
			st, err := c.Drain(ctx, from, client.DrainConfig{Settle: time.Nanosecond})
			require.NoError(b, err)
			require.Equal(b, rows, st.Moved)
			_, err = m.DrainUnit(ctx, from, false)
			require.NoError(b, err)
			from, to = to, from
		}
	}
}

// TestPutPlacedOnADrainingUnitGoesElsewhere: a client that has not
// re-listed the units since one was marked draining places rows on it;
// the controller refuses the commit (the drain would not see the cells)
// and the client lists the units and writes them again elsewhere, for KV
// puts and puts into rows alike, and nothing is left on the unit.
func TestPutPlacedOnADrainingUnitGoesElsewhere(t *testing.T) {
	ctx := t.Context()
	ctrl, err := controller.New(controller.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	u1 := joinUnit(t, addr, true)
	u2 := joinUnit(t, addr, true)
	c, err := client.Connect(ctx, addr, client.ConnectConfig{Client: client.Config{Placement: client.Hash}})
	require.NoError(t, err)
	defer c.Close()
	// Marked through the controller directly: the client learns it only
	// when it next lists the units (at most once a second, or when a
	// commit is refused).
	_, err = ctrl.DrainUnit(u1.u.ID(), true)
	require.NoError(t, err)

	kv := kvapi.New(c)
	keys := keyRange("k", 32)
	rows := bigRows(t, 32)
	_, err = kv.BatchPut(ctx, "p", keys, rows, nil)
	require.NoError(t, err)
	for _, id := range unitsOf(t, c, "p", keys) {
		require.Equal(t, u2.u.ID(), id, "a KV put's cell on the draining unit")
	}
	got, err := kv.BatchGetCopy(ctx, "p", keys)
	require.NoError(t, err)
	assert.True(t, got.Col("x").Equal(rows.Col("x")))

	// A put into rows, by a client that listed the units while the unit
	// was in service.
	_, err = ctrl.DrainUnit(u1.u.ID(), false)
	require.NoError(t, err)
	c2, err := client.Connect(ctx, addr, client.ConnectConfig{Client: client.Config{Placement: client.Hash}})
	require.NoError(t, err)
	defer c2.Close()
	_, err = ctrl.DrainUnit(u1.u.ID(), true)
	require.NoError(t, err)
	meta, err := c2.PutNew(ctx, "q", rows)
	require.NoError(t, err)
	for _, l := range meta.Cells["x"] {
		require.Equal(t, u2.u.ID(), l.Unit, "a put's cell on the draining unit")
	}
	cells, _, err := c.Meta().(*client.RemoteMeta).UnitCells(ctx, u1.u.ID(), nil, 0, 0)
	require.NoError(t, err)
	assert.Empty(t, cells, "cells committed to the draining unit")
}

// bigRows is n rows of field "x", 4 KiB each: together past what a KV put
// sends through the controller.
func bigRows(t *testing.T, n int) *engine.Batch {
	t.Helper()
	data := make([]byte, n*4096)
	for i := range data {
		data[i] = byte(i * 7)
	}
	col, err := engine.NewDense(engine.Uint8, n, engine.Shape{4096}, data)
	require.NoError(t, err)
	return engine.MustBatch(engine.Field{Name: "x", Col: col})
}

// A reserved put (zero copy: filled in place on one unit) whose unit was
// marked draining after the reservation has its commit refused by the
// controller; the client reads the bytes back from the unit, frees them
// there and puts them on another unit, so the put succeeds and the
// draining unit keeps nothing. Into keys, and into rows.
func TestReservedPutOnADrainingUnitGoesElsewhere(t *testing.T) {
	ctx := t.Context()
	e, c := unitCluster(t, 2, 4<<20, client.DefaultConfig(), nil)
	spec := client.FieldSpec{Name: "x", DType: engine.Uint8, Shape: engine.Shape{4096}}
	want := bigRows(t, 4)
	fill := func(col *engine.Column) { copy(col.Data(), want.Col("x").Data()) }
	drainedKeepsNothing := func(id engine.UnitID) {
		t.Helper()
		cells, _, err := e.Controller.UnitCells(id, nil, 0, 0)
		require.NoError(t, err)
		assert.Empty(t, cells, "cells on the draining unit")
		for _, u := range e.Units {
			if u.ID() == id {
				assert.Zero(t, u.Stats().Used, "bytes on the draining unit")
			}
		}
		_, err = e.Controller.DrainUnit(id, false)
		require.NoError(t, err)
	}

	keys := keyRange("k", 4)
	kb, err := c.ReservePutKeys(ctx, "kv", keys, []engine.Tags{{"n": int64(0)}, nil, nil, nil}, spec)
	require.NoError(t, err)
	fill(kb.Column("x"))
	_, err = e.Controller.DrainUnit(kb.Unit().ID(), true)
	require.NoError(t, err)
	out, err := kb.Commit(ctx)
	require.NoError(t, err, "a reserved KV put whose unit began draining")
	assert.Equal(t, []string{"x"}, out.Fields)
	assert.Equal(t, engine.Tags{"n": int64(0)}, out.Tags[0])
	got, err := kvapi.New(c).BatchGetCopy(ctx, "kv", keys)
	require.NoError(t, err)
	assert.True(t, got.Col("x").Equal(want.Col("x")), "the bytes read back")
	drainedKeepsNothing(kb.Unit().ID())

	meta, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Mode: client.Insert, BatchSize: 4, Fields: []string{"x"}})
	require.NoError(t, err)
	pb, err := c.ReservePut(ctx, meta, spec)
	require.NoError(t, err)
	fill(pb.Column("x"))
	_, err = e.Controller.DrainUnit(pb.Unit().ID(), true)
	require.NoError(t, err)
	done, err := pb.Commit(ctx)
	require.NoError(t, err, "a reserved put into rows whose unit began draining")
	for _, l := range done.Cells["x"] {
		require.NotEqual(t, pb.Unit().ID(), l.Unit, "a cell on the draining unit")
	}
	rows, err := c.Get(ctx, done)
	require.NoError(t, err)
	assert.True(t, rows.Col("x").Equal(want.Col("x")), "the bytes read back")
	rows.Release()
	drainedKeepsNothing(pb.Unit().ID())
}

// A drain with the default settle lists the unit until a pass finds it
// empty at least three seconds after it was marked (twice the clients'
// once-a-second re-listing, and a second): a put placed by a client that
// had not re-listed yet lands within that time, and the drain would
// return before it had it listed.
func TestDrainSettlesThreeSeconds(t *testing.T) {
	ctx := t.Context()
	ctrl, err := controller.New(controller.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	u1 := joinUnit(t, addr, true)
	joinUnit(t, addr, true)
	c, err := client.Connect(ctx, addr, client.ConnectConfig{})
	require.NoError(t, err)
	defer c.Close()

	began := time.Now()
	st, err := c.Drain(ctx, u1.u.ID(), client.DrainConfig{})
	took := time.Since(began)
	require.NoError(t, err)
	assert.Zero(t, st.Moved, "an empty unit")
	assert.GreaterOrEqual(t, took, 3*time.Second, "the drain of an empty unit returned after %v", took)
	assert.Greater(t, st.Passes, 1, "passes listing the unit")
}
