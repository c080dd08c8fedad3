package client_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// unitCluster is an in-process cluster of units with capacity bytes each,
// whose client reaches each unit through wrap (nil: as it is).
func unitCluster(t *testing.T, n int, capacity int64, cfg client.Config, wrap func(i int, u client.DataUnit) client.DataUnit) (*embedded.Cluster, *client.Client) {
	t.Helper()
	ecfg := embedded.DefaultConfig()
	ecfg.Units = n
	ecfg.Storage.Capacity = capacity
	ecfg.Storage.SegmentSize = min(capacity, 8<<20)
	e, err := embedded.New(ecfg)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	dus := make([]client.DataUnit, n)
	for i, u := range e.Units {
		dus[i] = embedded.Unit(u)
		if wrap != nil {
			dus[i] = wrap(i, dus[i])
		}
	}
	c, err := client.New(embedded.Meta(e.Controller, e.Units...), dus, cfg)
	require.NoError(t, err)
	return e, c
}

// plainUnit is a real unit seen only through client.DataUnit: the client
// cannot ask it for its room, as it cannot a unit in another process
// until the controller's list says.
type plainUnit struct{ client.DataUnit }

// opaque is a batch of one opaque field "v" whose row i holds sizes[i]
// bytes of a pattern of i.
func opaque(sizes []int) *engine.Batch {
	rows := make([][]byte, len(sizes))
	for i, n := range sizes {
		// The pattern repeats every 256 bytes: write that much, copy the
		// rest (a byte at a time, tens of MiB took seconds under -race).
		r := make([]byte, n)
		for j := range min(n, 256) {
			r[j] = byte(i*7 + j)
		}
		for k := 256; k < n; k *= 2 {
			copy(r[k:], r[:k])
		}
		rows[i] = r
	}
	return engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf(rows)})
}

func repeat(n, size int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = size
	}
	return out
}

// cellsPerUnit counts the cells of field per unit.
func cellsPerUnit(m *engine.BatchMeta, field string) map[engine.UnitID]int {
	out := map[engine.UnitID]int{}
	for _, l := range m.Cells[field] {
		out[l.Unit]++
	}
	return out
}

func usedOf(e *embedded.Cluster) []int64 {
	out := make([]int64, len(e.Units))
	for i, u := range e.Units {
		out[i] = u.Stats().Used
	}
	return out
}

// A put bigger than its local unit spills to the other: 12 MiB into two
// 8 MiB units (local-first used to put it whole on one and fail), as a
// batch put, a KV put and over units whose room the client does not know
// (it learns from their refusals). It reads back bit-exact.
func TestPutSpills(t *testing.T) {
	ctx := t.Context()
	want := opaque(repeat(96, 128<<10)) // 12 MiB
	for _, tc := range []struct {
		name string
		wrap func(int, client.DataUnit) client.DataUnit
	}{
		{"room known", nil},
		{"room learned from refusals", func(_ int, u client.DataUnit) client.DataUnit { return plainUnit{u} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, c := unitCluster(t, 2, 8<<20, client.DefaultConfig(), tc.wrap)
			m, err := c.PutNew(ctx, "p", want)
			require.NoError(t, err)
			assert.Len(t, cellsPerUnit(m, "v"), 2, "the put spans both units")
			got, err := c.GetCopy(ctx, m)
			require.NoError(t, err)
			assert.Equal(t, want.Col("v").Data(), got.Col("v").Data())

			require.NoError(t, c.Clear(ctx, m))
			kv := kvapi.New(c)
			keys := keyRange("k", 96)
			_, err = kv.BatchPut(ctx, "kv", keys, want, nil)
			require.NoError(t, err)
			back, err := kv.BatchGet(ctx, "kv", keys, "v")
			require.NoError(t, err)
			assert.Equal(t, want.Col("v").Data(), back.Col("v").Data())
			back.Release()
			assert.Positive(t, e.Units[0].Stats().Used)
			assert.Positive(t, e.Units[1].Stats().Used)
		})
	}
}

// A put whose first choice is full goes to the unit with room at once:
// the full unit refuses (the client did not know it was full) and the
// rows are placed again. The put has no deadline: had it waited on the
// full unit, it would hang until the test's timeout.
func TestFullUnitDoesNotHoldUpPut(t *testing.T) {
	ctx := t.Context()
	e, c := unitCluster(t, 2, 1<<20, client.DefaultConfig(), func(_ int, u client.DataUnit) client.DataUnit { return plainUnit{u} })
	// Fill both units' first choice for row index 0 (the lowest index
	// picks among local units): unit 1 when seeded with 0.
	filled := 0
	for _, u := range c.Units() {
		if u.ID() != e.Units[0].ID() {
			continue
		}
		for {
			_, err := u.Write(engine.WithoutWait(ctx), [][][]byte{{make([]byte, 64<<10)}})
			if err != nil {
				require.ErrorIs(t, err, engine.ErrCapacity)
				break
			}
			filled++
		}
	}
	require.Positive(t, filled)
	for i := range 4 {
		m, err := c.PutNew(ctx, "p", opaque(repeat(4, 32<<10)))
		require.NoError(t, err, "put %d", i)
		assert.Equal(t, map[engine.UnitID]int{e.Units[1].ID(): 4}, cellsPerUnit(m, "v"), "put %d", i)
	}
}

// When no unit has room, a put waits (as before) and lands once a clear
// makes room; it is not refused while a wait could succeed.
func TestPutWaitsOnlyWhenNoUnitHasRoom(t *testing.T) {
	ctx := t.Context()
	_, c := unitCluster(t, 2, 1<<20, client.DefaultConfig(), nil)
	var first *engine.BatchMeta
	for {
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		m, err := c.PutNew(short, "p", opaque(repeat(4, 64<<10)))
		cancel()
		if err != nil {
			require.ErrorIs(t, err, engine.ErrCapacity)
			break
		}
		if first == nil {
			first = m
		}
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.PutNew(ctx, "p", opaque(repeat(4, 64<<10)))
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("a put with no room anywhere did not wait: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	require.NoError(t, c.Clear(ctx, first))
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("the put still waits after rows were cleared")
	}
}

// A row bigger than every unit fails at once with a capacity error that
// names its size and the largest unit's.
func TestRowBiggerThanEveryUnit(t *testing.T) {
	_, c := unitCluster(t, 2, 1<<20, client.DefaultConfig(), nil)
	_, err := c.PutNew(t.Context(), "p", opaque([]int{10, 2 << 20}))
	require.ErrorIs(t, err, engine.ErrCapacity)
	assert.Contains(t, err.Error(), "row 1 holds 2097152 bytes")
	assert.Contains(t, err.Error(), "(1048576 bytes)")
}

// Hash placement balances bytes, not rows: rows whose size follows their
// index (every fourth is 64 times larger) put index mod units' bytes all
// on one unit; by bytes, after 100 puts every unit holds within 10% of
// the mean (one large row is under 1% of a unit's share).
func TestHashBalancesBytes(t *testing.T) {
	ctx := t.Context()
	e, c := unitCluster(t, 4, 64<<20, client.Config{Placement: client.Hash}, nil)
	sizes := make([]int, 8)
	for i := range sizes {
		sizes[i] = 1 << 10
		if i%4 == 0 {
			sizes[i] = 64 << 10
		}
	}
	before := usedOf(e)
	for range 100 {
		_, err := c.PutNew(ctx, "p", opaque(sizes))
		require.NoError(t, err)
	}
	used := usedOf(e)
	var total int64
	for i := range used {
		used[i] -= before[i]
		total += used[i]
	}
	mean := float64(total) / float64(len(used))
	for i, n := range used {
		assert.InEpsilon(t, mean, float64(n), 0.10, "unit %d holds %d bytes, mean %.0f (all: %v)", i, n, mean, used)
	}
}

// barrierUnit holds each Write, Acquire and ReadInto until every unit of
// its barrier has one in flight: a client that talked to its units one
// after another would never get past the first.
type barrierUnit struct {
	client.DataUnit
	b *barrier
}

type barrier struct {
	t       *testing.T
	parties int
	mu      sync.Mutex
	seen    map[engine.UnitID]bool
	all     chan struct{}
}

func newBarrier(t *testing.T, parties int) *barrier {
	return &barrier{t: t, parties: parties, seen: map[engine.UnitID]bool{}, all: make(chan struct{})}
}

// arrive notes a request on unit id and waits for one on every unit; it
// reports false if that did not happen within a generous time.
func (b *barrier) arrive(id engine.UnitID) bool {
	b.mu.Lock()
	b.seen[id] = true
	if len(b.seen) == b.parties {
		select {
		case <-b.all:
		default:
			close(b.all)
		}
	}
	b.mu.Unlock()
	select {
	case <-b.all:
		return true
	case <-time.After(20 * time.Second):
		return false
	}
}

// reset starts the next round.
func (b *barrier) reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seen, b.all = map[engine.UnitID]bool{}, make(chan struct{})
}

var errSerial = fmt.Errorf("the units' requests ran one after another: %w", engine.ErrUnavailable)

func (u barrierUnit) Write(ctx context.Context, extents [][][]byte) ([]engine.RemoteAddr, error) {
	if !u.b.arrive(u.ID()) {
		return nil, errSerial
	}
	return u.DataUnit.Write(ctx, extents)
}

func (u barrierUnit) Acquire(ctx context.Context, addrs []engine.RemoteAddr) (client.Lease, error) {
	if !u.b.arrive(u.ID()) {
		return nil, errSerial
	}
	return u.DataUnit.Acquire(ctx, addrs)
}

func (u barrierUnit) ReadInto(ctx context.Context, addrs []engine.RemoteAddr, dst [][]byte) error {
	if !u.b.arrive(u.ID()) {
		return errSerial
	}
	return u.DataUnit.ReadInto(ctx, addrs, dst)
}

// A put, a get, a get into a buffer and a KV put and get that span three
// units talk to all three at once: each unit's request waits until the
// other two have theirs in flight (a barrier, no clock), which a client
// that went from one unit to the next would never pass.
func TestUnitIOIsParallel(t *testing.T) {
	ctx := t.Context()
	b := newBarrier(t, 3)
	_, c := unitCluster(t, 3, 16<<20, client.Config{Placement: client.Hash}, func(_ int, u client.DataUnit) client.DataUnit {
		return barrierUnit{u, b}
	})
	want := opaque(repeat(6, 1<<10))
	m, err := c.PutNew(ctx, "p", want)
	require.NoError(t, err)
	require.Len(t, cellsPerUnit(m, "v"), 3)
	b.reset()
	got, err := c.GetCopy(ctx, m)
	require.NoError(t, err)
	assert.Equal(t, want.Col("v").Data(), got.Col("v").Data())
	b.reset()
	got, err = c.GetInto(ctx, m, make([]byte, client.SizeOf(m)))
	require.NoError(t, err)
	assert.Equal(t, want.Col("v").Data(), got.Col("v").Data())

	kv := kvapi.New(c)
	keys := keyRange("k", 6)
	b.reset()
	_, err = kv.BatchPut(ctx, "kv", keys, want, nil)
	require.NoError(t, err)
	b.reset()
	back, err := kv.BatchGet(ctx, "kv", keys, "v")
	require.NoError(t, err)
	assert.Equal(t, want.Col("v").Data(), back.Col("v").Data())
	back.Release()
}

// countingUnit records how many of its client's unit requests are in
// flight at once.
type countingUnit struct {
	client.DataUnit
	now, most *atomic.Int32
	gate      chan struct{} // each request waits for a token
}

func (u countingUnit) Write(ctx context.Context, extents [][][]byte) ([]engine.RemoteAddr, error) {
	n := u.now.Add(1)
	defer u.now.Add(-1)
	for {
		m := u.most.Load()
		if n <= m || u.most.CompareAndSwap(m, n) {
			break
		}
	}
	<-u.gate
	return u.DataUnit.Write(ctx, extents)
}

// Config.MaxUnitIO bounds a client's requests in flight over all its
// calls: eight units, eight concurrent puts, a bound of 2.
func TestMaxUnitIO(t *testing.T) {
	ctx := t.Context()
	var now, most atomic.Int32
	gate := make(chan struct{})
	_, c := unitCluster(t, 8, 4<<20, client.Config{Placement: client.Hash, MaxUnitIO: 2}, func(_ int, u client.DataUnit) client.DataUnit {
		return countingUnit{u, &now, &most, gate}
	})
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range 8 {
		wg.Go(func() { _, errs[i] = c.PutNew(ctx, "p", opaque(repeat(8, 1<<10))) })
	}
	// Both slots taken (and nothing more) before any write proceeds; then
	// tokens until every put is done: the bound holds whatever the order.
	require.Eventually(t, func() bool { return now.Load() == 2 }, 20*time.Second, time.Millisecond)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for {
		select {
		case gate <- struct{}{}:
			continue
		case <-done:
		}
		break
	}
	for i, err := range errs {
		require.NoError(t, err, "put %d", i)
	}
	assert.Equal(t, int32(2), most.Load(), "most unit writes in flight at once")

	_, err := client.New(nil, nil, client.Config{MaxUnitIO: -1})
	require.ErrorIs(t, err, engine.ErrInvalid)
}

// failingUnit is a real unit whose writes fail once armed, after the
// others' have gone through: the failure meets a put half-way.
type failingUnit struct {
	client.DataUnit
	armed *atomic.Bool
	b     *barrier
}

func (u failingUnit) Write(ctx context.Context, extents [][][]byte) ([]engine.RemoteAddr, error) {
	if !u.armed.Load() {
		return u.DataUnit.Write(ctx, extents)
	}
	u.b.arrive(u.ID()) // the other units' writes are in flight too
	// Not ErrUnavailable: the rows of an unreachable unit are placed
	// again on the others (see TestPutMovesOffADeadUnit).
	return nil, fmt.Errorf("unit %d refuses on purpose: %w", u.ID(), engine.ErrCorrupt)
}

type arrivingUnit struct {
	client.DataUnit
	armed *atomic.Bool
	b     *barrier
}

func (u arrivingUnit) Write(ctx context.Context, extents [][][]byte) ([]engine.RemoteAddr, error) {
	if u.armed.Load() {
		u.b.arrive(u.ID())
	}
	return u.DataUnit.Write(ctx, extents)
}

// A put whose write fails on one unit while the others' succeed frees
// what the others wrote, batch and KV alike: every unit's used bytes are
// back where they were, and nothing is readable.
func TestFailedSpanningPutFreesEveryUnit(t *testing.T) {
	ctx := t.Context()
	var armed atomic.Bool
	b := newBarrier(t, 3)
	e, c := unitCluster(t, 3, 16<<20, client.Config{Placement: client.Hash}, func(i int, u client.DataUnit) client.DataUnit {
		if i == 1 {
			return failingUnit{u, &armed, b}
		}
		return arrivingUnit{u, &armed, b}
	})
	kv := kvapi.New(c)
	_, err := kv.BatchPut(ctx, "kv", []string{"old"}, opaque([]int{100}), nil)
	require.NoError(t, err)
	before := usedOf(e)
	armed.Store(true)
	_, err = c.PutNew(ctx, "p", opaque(repeat(6, 4<<10)))
	require.ErrorIs(t, err, engine.ErrCorrupt)
	assert.Equal(t, before, usedOf(e), "used bytes per unit after a failed batch put")
	b.reset()
	_, err = kv.BatchPut(ctx, "kv", keyRange("k", 6), opaque(repeat(6, 4<<10)), nil)
	require.ErrorIs(t, err, engine.ErrCorrupt)
	assert.Equal(t, before, usedOf(e), "used bytes per unit after a failed KV put")
	all, err := kv.List(ctx, "kv")
	require.NoError(t, err)
	var keys []string
	for _, e := range all["kv"] {
		keys = append(keys, e.Key)
	}
	assert.Equal(t, []string{"old"}, keys, "keys after the failed put")
}

// A reserved put (one unit, zero copy) goes to a unit with room for all
// of it when its first choice is full, without waiting there.
func TestReservePutSpills(t *testing.T) {
	ctx := t.Context()
	e, c := unitCluster(t, 2, 1<<20, client.DefaultConfig(), nil)
	m, err := c.PutNew(ctx, "p", opaque(repeat(3, 300<<10))) // most of unit 1 (the first choice of index 0)
	require.NoError(t, err)
	require.Equal(t, map[engine.UnitID]int{e.Units[0].ID(): 3}, cellsPerUnit(m, "v"))
	meta, err := c.GetMeta(ctx, client.MetaRequest{Partition: "r", Mode: client.Insert, BatchSize: 4, Fields: []string{"x"}})
	require.NoError(t, err)
	if meta.Indexes[0]%2 != 0 { // keep unit 1 the first choice
		meta, err = c.GetMeta(ctx, client.MetaRequest{Partition: "r", Mode: client.Insert, BatchSize: 4, Fields: []string{"x"}})
		require.NoError(t, err)
	}
	pb, err := c.ReservePut(ctx, meta, client.FieldSpec{Name: "x", DType: engine.Uint8, Shape: engine.Shape{64 << 10}})
	require.NoError(t, err)
	assert.Equal(t, e.Units[1].ID(), pb.Unit().ID(), "the reservation's unit")
	require.NoError(t, pb.Abort(ctx))
	kb, err := c.ReservePutKeys(ctx, "kv", []string{"a", "b", "c", "d"}, nil, client.FieldSpec{Name: "x", DType: engine.Uint8, Shape: engine.Shape{64 << 10}})
	require.NoError(t, err)
	assert.Equal(t, e.Units[1].ID(), kb.Unit().ID(), "the KV reservation's unit")
	require.NoError(t, kb.Abort(ctx))
}

// Puts waiting in a full unit for room take none of the client's unit
// I/O slots: with MaxUnitIO of them waiting, a get of rows already stored
// (whose clear could make the room) used to wait for a slot until its
// deadline.
func TestWaitingPutsDoNotStarveGets(t *testing.T) {
	cfg := client.DefaultConfig() // MaxUnitIO 8
	_, c := unitCluster(t, 1, 1<<20, cfg, nil)
	var first *engine.BatchMeta
	for {
		short, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		m, err := c.PutNew(short, "p", opaque(repeat(4, 64<<10)))
		cancel()
		if err != nil {
			if !errors.Is(err, engine.ErrCapacity) {
				t.Fatal(err)
			}
			break
		}
		if first == nil {
			first = m
		}
	}
	putCtx, stopPuts := context.WithCancel(t.Context())
	done := make(chan error, cfg.MaxUnitIO)
	for range cfg.MaxUnitIO {
		go func() {
			_, err := c.PutNew(putCtx, "p", opaque(repeat(4, 64<<10)))
			done <- err
		}()
	}
	defer func() {
		stopPuts()
		for range cfg.MaxUnitIO {
			<-done
		}
	}()
	time.Sleep(300 * time.Millisecond) // the puts are waiting for room
	getCtx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	if _, err := c.GetCopy(getCtx, first); err != nil {
		t.Fatalf("a get while puts wait for room: %v", err)
	}
}

// A row's fields always go to one unit, under either placement, when a
// put spills over several units and when the fields' sizes differ (a
// planner that placed each field on its own would cut them at different
// rows).
func TestRowFieldsShareAUnit(t *testing.T) {
	ctx := t.Context()
	rows := 40
	small := make([][]byte, rows)
	large := make([][]byte, rows)
	for i := range rows {
		small[i] = make([]byte, 1<<10)
		large[i] = make([]byte, (i%5+1)*100<<10)
	}
	b := engine.MustBatch(
		engine.Field{Name: "small", Col: engine.BytesOf(small)},
		engine.Field{Name: "large", Col: engine.BytesOf(large)},
	)
	for _, placement := range []client.Placement{client.LocalFirst, client.Hash} {
		t.Run(placement.String(), func(t *testing.T) {
			cfg := client.DefaultConfig()
			cfg.Placement = placement
			_, c := unitCluster(t, 3, 8<<20, cfg, nil) // 12 MiB spills over them
			m, err := c.PutNew(ctx, "p", b)
			require.NoError(t, err)
			require.Greater(t, len(cellsPerUnit(m, "large")), 1, "the put spans units")
			for i := range rows {
				assert.Equal(t, m.Cells["large"][i].Unit, m.Cells["small"][i].Unit, "row %d's fields", i)
			}
		})
	}
}

// Hash placement cuts a put's rows into one contiguous stretch per unit
// (a get then reads one range per field from each), whatever the rows'
// sizes.
func TestHashCutsOneStretchPerUnit(t *testing.T) {
	ctx := t.Context()
	_, c := unitCluster(t, 4, 16<<20, client.Config{Placement: client.Hash}, nil)
	sizes := make([]int, 40)
	for i := range sizes {
		sizes[i] = (i%7 + 1) << 10
	}
	for put := range 5 {
		m, err := c.PutNew(ctx, "p", opaque(sizes))
		require.NoError(t, err)
		rows := map[engine.UnitID][]int{}
		for i, l := range m.Cells["v"] {
			rows[l.Unit] = append(rows[l.Unit], i)
		}
		require.Greater(t, len(rows), 1, "put %d spans units", put)
		for u, rs := range rows {
			assert.Equal(t, len(rs), rs[len(rs)-1]-rs[0]+1, "put %d: rows on unit %d are %v, not one stretch", put, u, rs)
		}
	}
}
