package client_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// shortWait is the reserve wait of the units of these tests: a put that
// waits for room outlives many of them.
const shortWait = 50 * time.Millisecond

// joinShortUnit registers a unit of 1 MiB served over TCP whose WRITEs
// wait shortWait for room before they are answered CODE_CAPACITY.
func joinShortUnit(t *testing.T, ctrlAddr string) *storage.Unit {
	t.Helper()
	return joinWaitingUnit(t, ctrlAddr, shortWait)
}

// joinWaitingUnit is joinShortUnit with a reserve wait of wait.
func joinWaitingUnit(t *testing.T, ctrlAddr string, wait time.Duration) *storage.Unit {
	t.Helper()
	ctx := t.Context()
	cfg := storage.DefaultConfig()
	cfg.Capacity = 1 << 20
	cfg.SegmentSize = 1 << 20
	u, err := storage.NewUnit(0, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	_, err = storage.AssignID(ctx, ctrlAddr, u, storage.JoinConfig{})
	require.NoError(t, err)
	s := &servedUnit{u: u, srv: storage.NewServer(u, storage.ServerConfig{ReserveWait: wait})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s.addr = l.Addr().String()
	s.serve(t, l)
	t.Cleanup(func() { s.stop() })
	s.mem, err = storage.Join(ctx, ctrlAddr, u, storage.JoinConfig{Addrs: []string{"tcp://" + s.addr}})
	require.NoError(t, err)
	t.Cleanup(func() { s.mem.Close() })
	return u
}

// shortWaitCluster is a controller in its own server with one unit of
// joinShortUnit, a client that puts and one that fills and frees.
func shortWaitCluster(t *testing.T) (addr string, u *storage.Unit, c, filler *client.Client) {
	t.Helper()
	ctrl, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr = serveController(t, ctrl, controller.ServerConfig{}, "unix")
	u = joinShortUnit(t, addr)
	c, err = client.Connect(t.Context(), addr, client.ConnectConfig{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	filler, err = client.Connect(t.Context(), addr, client.ConnectConfig{})
	require.NoError(t, err)
	t.Cleanup(func() { filler.Close() })
	return addr, u, c, filler
}

// fillUnit fills the cluster with rows of 64 KiB, one a put, until a put
// finds no room, and returns the puts.
func fillUnit(t *testing.T, c *client.Client) []*engine.BatchMeta {
	t.Helper()
	var metas []*engine.BatchMeta
	for {
		short, cancel := context.WithTimeout(t.Context(), time.Second)
		m, err := c.PutNew(short, "fill", opaque([]int{64 << 10}))
		cancel()
		if err != nil {
			require.ErrorIs(t, err, engine.ErrCapacity)
			require.NotEmpty(t, metas, "an empty unit had no room")
			return metas
		}
		metas = append(metas, m)
	}
}

// stillWaits fails the test if the put done answers within several
// reserve waits of its unit: its ctx has minutes left.
func stillWaits(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("the put gave up after its unit's reserve wait while its ctx had minutes left: %v", err)
	case <-time.After(10 * shortWait):
	}
}

// A put on a full unit in another process waits for room past the
// unit's reserve wait, as long as its ctx allows: room another client
// frees later takes it, and its bytes read back.
func TestPutWaitsPastTheReserveWait(t *testing.T) {
	ctx := t.Context()
	_, u, c, filler := shortWaitCluster(t)
	metas := fillUnit(t, filler)
	// Room for one row: the put writes it at once and waits for the rest.
	require.NoError(t, filler.Clear(ctx, metas[0]))
	want := opaque(repeat(4, 64<<10))
	done := make(chan error, 1)
	var got *engine.BatchMeta
	go func() {
		pctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		var err error
		got, err = c.PutNew(pctx, "p", want)
		done <- err
	}()
	stillWaits(t, done)
	for _, m := range metas[1:] {
		require.NoError(t, filler.Clear(ctx, m))
	}
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("the put still waits after rows were cleared")
	}
	b, err := c.GetCopy(ctx, got)
	require.NoError(t, err)
	assert.Equal(t, want.Col("v").Data(), b.Col("v").Data(), "the put's bytes do not read back")
	assert.Positive(t, u.Stats().Used)
}

// A put whose ctx ends while no unit has room fails with ErrCapacity and
// ctx's error, and frees what it wrote: the unit's used bytes are as
// before.
func TestPutWaitingForRoomEndsWithCtx(t *testing.T) {
	ctx := t.Context()
	_, u, c, filler := shortWaitCluster(t)
	metas := fillUnit(t, filler)
	require.NoError(t, filler.Clear(ctx, metas[0]))
	require.Eventually(t, func() bool { return u.Stats().Extents == len(metas)-1 }, 10*time.Second, 10*time.Millisecond)
	before := u.Stats().Used
	pctx, cancel := context.WithTimeout(ctx, 20*shortWait)
	defer cancel()
	_, err := c.PutNew(pctx, "p", opaque(repeat(4, 64<<10)))
	require.ErrorIs(t, err, engine.ErrCapacity)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the put gave up before its ctx ended")
	require.Eventually(t, func() bool { return u.Stats().Used == before }, 10*time.Second, 10*time.Millisecond,
		"the unit's used bytes after the failed put: want %d as before", before)
}

// A KV put waiting on a full unit is placed again when a unit joins:
// its rows land there.
func TestPutKeysWaitingForRoomTakesAUnitThatJoins(t *testing.T) {
	ctx := t.Context()
	addr, _, c, filler := shortWaitCluster(t)
	fillUnit(t, filler)
	keys := keyRange("k", 4)
	want := opaque(repeat(4, 64<<10))
	done := make(chan error, 1)
	go func() {
		pctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		_, err := c.PutKeys(pctx, "kv", keys, want, nil)
		done <- err
	}()
	stillWaits(t, done)
	joined := joinShortUnit(t, addr)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("the put still waits after a unit with room joined")
	}
	m, err := c.MetaByKeys(ctx, "kv", keys, []string{"v"}, false)
	require.NoError(t, err)
	b, err := c.GetCopy(ctx, m)
	require.NoError(t, err)
	assert.Equal(t, want.Col("v").Data(), b.Col("v").Data(), "the put's bytes do not read back")
	assert.Positive(t, joined.Stats().Used, "no row went to the unit that joined")
}

// A reserved put on a full unit in another process (over shared memory)
// waits for room past the unit's reserve wait, and reserves once room is
// freed.
func TestReservePutWaitsPastTheReserveWait(t *testing.T) {
	ctx := t.Context()
	scfg := storage.DefaultConfig()
	scfg.Capacity = 1 << 20
	scfg.SegmentSize = 1 << 20
	c, u := shmClientServed(t, client.DefaultConfig(), scfg, storage.ServerConfig{ReserveWait: shortWait})
	// The unit's controller does not know it: fill and free it in place.
	var filled []engine.RemoteAddr
	for {
		r, err := u.Reserve(engine.WithoutWait(ctx), []int64{64 << 10})
		if err != nil {
			require.ErrorIs(t, err, engine.ErrCapacity)
			break
		}
		require.NoError(t, r.Commit())
		filled = append(filled, r.Addr(0))
	}
	meta, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Mode: client.Insert, BatchSize: 2, Fields: []string{"v"}})
	require.NoError(t, err)
	done := make(chan error, 1)
	var buf *client.PutBuffer
	go func() {
		pctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		var err error
		buf, err = c.ReservePut(pctx, meta, client.FieldSpec{Name: "v", RowBytes: repeat(2, 64<<10)})
		done <- err
	}()
	stillWaits(t, done)
	require.NoError(t, u.Free(filled))
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("the reserved put still waits after room was freed")
	}
	want := opaque(repeat(2, 64<<10))
	copy(buf.Column("v").Data(), want.Col("v").Data())
	m, err := buf.Commit(ctx)
	require.NoError(t, err)
	b, err := c.GetCopy(ctx, m)
	require.NoError(t, err)
	assert.Equal(t, want.Col("v").Data(), b.Col("v").Data(), "the put's bytes do not read back")
	assert.Positive(t, u.Stats().Used)
}

// A put that may not wait (engine.WithoutWait) on a full unit in another
// process is refused at once, as before waiting puts were placed again:
// its unit's refusal is final, not a reason to place it anew until ctx
// ends (a caller with no deadline would wait for good).
func TestPutWithoutWaitOnAFullUnitIsRefused(t *testing.T) {
	ctx := t.Context()
	_, u, c, filler := shortWaitCluster(t)
	fillUnit(t, filler)
	before := u.Stats().Used
	done := make(chan error, 1)
	go func() {
		_, err := c.PutNew(engine.WithoutWait(ctx), "p", opaque([]int{64 << 10}))
		done <- err
	}()
	select {
	case err := <-done:
		require.ErrorIs(t, err, engine.ErrCapacity)
	case <-time.After(30 * time.Second):
		t.Fatal("a put that may not wait was still placed again after 30 s")
	}
	assert.Equal(t, before, u.Stats().Used, "the refused put left bytes on its unit")
}
