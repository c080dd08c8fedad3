package main

// What SIGTERM's graceful shutdown lets finish when the controller and the
// storage units share the process: the puts whose bytes are on a unit
// commit, new ones are refused.

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// startInProcess starts tq serve's servers in the test's process: a
// controller and one storage unit on unix sockets, in memory, without a
// token, with the flags of args added (one of these that args give too
// is args', not repeated: tq serve refuses that). The caller shuts them
// down; close runs at cleanup.
func startInProcess(t *testing.T, args ...string) *server {
	t.Helper()
	args = serveArgs([]string{"--insecure", "--in-memory", "--listen=", "--socket-dir=" + t.TempDir(), "--data-dir=" + t.TempDir(), "--units=1", "--capacity=64MiB"}, args...)
	cfg, _, err := parseServeConfig(args, io.Discard)
	require.NoError(t, err)
	require.NoError(t, cfg.secure())
	bound, err := cfg.bindTCP()
	require.NoError(t, err)
	t.Cleanup(bound.close)
	s := &server{cfg: cfg, out: io.Discard, log: slog.New(slog.DiscardHandler), bound: bound}
	t.Cleanup(func() { assert.NoError(t, s.close()) })
	require.NoError(t, s.start(context.Background()))
	require.NoError(t, s.serveKV())
	return s
}

// TestShutdownLetsWrittenPutsCommit: a put is two steps, the bytes to a
// storage unit, then the commit to the controller. A put whose bytes were
// written (or were being written into a reservation) when the shutdown
// began commits after it: the units stop taking new writes first, and the
// controller serves on until every write on them is committed. A new put
// is refused with an error wrapping engine.ErrClosed and leaves nothing
// behind. Before, the controller shut down first, and the commit of a put
// written just before failed.
func TestShutdownLetsWrittenPutsCommit(t *testing.T) {
	s := startInProcess(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.Connect(ctx, s.local, client.ConnectConfig{WaitForUnits: true, Name: "shutdown-test"})
	require.NoError(t, err)
	defer c.Close()
	u := c.Units()[0]

	// One put has written its bytes, another has reserved its extents and
	// fills them after the shutdown began.
	written := []byte("written before the shutdown")
	addrs, err := u.Write(ctx, [][][]byte{{written}})
	require.NoError(t, err)
	meta, err := c.Meta().Insert(ctx, "p", 2, []string{"v"})
	require.NoError(t, err)
	first, err := meta.SelectRows([]int{0})
	require.NoError(t, err)
	second, err := meta.SelectRows([]int{1})
	require.NoError(t, err)
	buf, err := c.ReservePut(ctx, second, client.FieldSpec{Name: "v", RowBytes: []int{8}})
	require.NoError(t, err)

	shutdownCtx, stop := context.WithTimeout(context.Background(), time.Minute)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- s.shutdown(shutdownCtx) }()

	// The shutdown has begun once the unit refuses a write.
	var refused error
	require.Eventually(t, func() bool {
		a, err := u.Write(ctx, [][][]byte{{[]byte("a new put")}})
		if err == nil {
			require.NoError(t, u.Free(ctx, a))
		}
		refused = err
		return err != nil
	}, 30*time.Second, time.Millisecond, "the unit never refused a write")
	assert.ErrorIs(t, refused, engine.ErrClosed)
	assert.ErrorContains(t, refused, "shutting down")
	// A whole new put is refused too, and creates no key.
	col := engine.BytesOf([][]byte{[]byte("a new put")})
	_, err = kvapi.New(c).BatchPut(ctx, "p", []string{"new"}, engine.MustBatch(engine.Field{Name: "v", Col: col}), nil)
	assert.ErrorIs(t, err, engine.ErrClosed)

	select {
	case err := <-done:
		t.Fatalf("shutdown ended with two puts written and not committed: %v", err)
	default:
	}
	err = c.Meta().Commit(ctx, engine.CommitRequest{Partition: "p", Indexes: first.Indexes, Fields: []engine.CommitField{{
		Name: "v", DType: engine.Bytes, Kind: engine.Opaque,
		Locs: []engine.CellLoc{{Unit: u.ID(), Addr: addrs[0]}},
	}}})
	require.NoError(t, err, "commit of a put written before the shutdown")
	copy(buf.Column("v").Data(), "reserved")
	_, err = buf.Commit(ctx)
	require.NoError(t, err, "commit of a put reserved before the shutdown")
	require.NoError(t, <-done)

	st, err := s.ctrl.ProductionStatus("p", []string{"v"})
	require.NoError(t, err)
	assert.Equal(t, [][]bool{{true}, {true}}, st.Produced)
	_, err = s.ctrl.ResolveKeys("p", []string{"new"}, nil, false)
	assert.ErrorIs(t, err, engine.ErrNotFound, "the key of the refused put")
}

// TestShutdownLeavesAnAbandonedWriteToReconciliation: a put whose client
// died between its write to a unit and its commit never commits. The
// shutdown waits a moment for it (settleIdle), then goes on, long before
// its window ends, and without an error: that put was never acknowledged,
// and reconciliation frees its bytes. Before, it held the shutdown to the
// window's end, which then failed.
func TestShutdownLeavesAnAbandonedWriteToReconciliation(t *testing.T) {
	s := startInProcess(t)
	var out strings.Builder
	s.out = &out
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.Connect(ctx, s.local, client.ConnectConfig{WaitForUnits: true, Name: "shutdown-test"})
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Units()[0].Write(ctx, [][][]byte{{[]byte("never committed")}})
	require.NoError(t, err)

	shutdownSoon(t, s, "the shutdown waited for a put that never commits")
	assert.Contains(t, out.String(), "1 extents written and not committed are left to reconciliation")
}

// TestShutdownDoesNotWaitForAReservationInQuarantine: a same-host client
// whose connection ended without a goodbye, while it lives, leaves its
// reservation in the unit's quarantine (here for an hour), where it can
// never commit. The shutdown does not wait for it and reports nothing
// left: the unit gives it back as it closes. Before, it counted as an
// open reservation until it expired (30 s), then as an extent in flight,
// and was reported as an extent written and not committed.
func TestShutdownDoesNotWaitForAReservationInQuarantine(t *testing.T) {
	s := startInProcess(t, "--shm-quarantine", "1h")
	var out strings.Builder
	s.out = &out
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, _, err := wire.Dial(ctx, unitUnixAddr(t, s), &wirepb.Hello{Role: "client"}, wire.ConnConfig{})
	require.NoError(t, err)
	require.NoError(t, c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{4096}}, nil, &wirepb.ReserveReply{}, nil))
	c.Close() // no goodbye
	u := s.units[0].u
	require.Eventually(t, func() bool { return u.Stats().QuarantinedSessions == 1 }, 30*time.Second, 10*time.Millisecond)

	shutdownSoon(t, s, "the shutdown waited for a reservation in quarantine")
	assert.NotContains(t, out.String(), "left to reconciliation")
	assert.Zero(t, u.Stats().Used, "used bytes once the unit shut down")
}

// TestShutdownReportsAReservationStillOpen: a live client that holds a
// reservation open past half the shutdown's window is not waited for any
// longer, and the report says what is left: an extent reserved, not one
// written. Before, it said "written and not committed" of every extent.
func TestShutdownReportsAReservationStillOpen(t *testing.T) {
	s := startInProcess(t)
	var out strings.Builder
	s.out = &out
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, _, err := wire.Dial(ctx, unitUnixAddr(t, s), &wirepb.Hello{Role: "client"}, wire.ConnConfig{})
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{4096}}, nil, &wirepb.ReserveReply{}, nil))

	shutdownCtx, stop := context.WithTimeout(context.Background(), 2*time.Second)
	defer stop()
	s.shutdown(shutdownCtx) // the open reservation's connection holds the unit's shutdown to the end
	assert.Contains(t, out.String(), "tq serve: 1 extents reserved by puts still open are left to reconciliation")
}

// unitUnixAddr returns the unix address of s's one unit, once the
// controller knows it.
func unitUnixAddr(t *testing.T, s *server) string {
	t.Helper()
	require.Eventually(t, func() bool { return len(s.ctrl.Units().Units()) == 1 }, 30*time.Second, 10*time.Millisecond)
	addrs := s.ctrl.Units().Units()[0].Addrs
	for _, a := range addrs {
		if strings.HasPrefix(a, "unix://") {
			return a
		}
	}
	t.Fatalf("no unix address among the unit's %v", addrs)
	return ""
}

// shutdownSoon shuts s down under a 10-minute window and fails the test,
// with what, if that takes a minute: what it must not wait for.
func shutdownSoon(t *testing.T, s *server, what string) {
	t.Helper()
	ctx, stop := context.WithTimeout(context.Background(), 10*time.Minute)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- s.shutdown(ctx) }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(time.Minute):
		t.Fatal(what)
	}
}
