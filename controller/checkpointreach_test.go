package controller

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// reachCluster is a controller (unit timeout 5 s) with two units: unit
// "gone", whose data plane refuses connections (its process went with a
// controller restart's old one), and unit "up", reachable, each holding
// the cells of one field of partition "p" (2 rows). beat, while the test
// runs, heartbeats the units it names. goneDial, if set, is how a dial of
// unit "gone" fails instead of refused.
func reachCluster(t *testing.T, beat func(name string) bool, goneDial ...func(context.Context) error) (*Controller, *Server, string) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.UnitTimeout = 5 * time.Second
	c := newController(t, cfg)
	ids := map[string]engine.UnitID{}
	for i, name := range []string{"gone", "up"} {
		id, err := c.units.Register(engine.UnitInfo{Incarnation: uint64(i + 1), Host: "h", Addrs: []string{"tcp://127.0.0.1:1"}, Name: name, Capacity: 1 << 30}, true)
		require.NoError(t, err)
		ids[name] = id
	}
	up := newCkptUnit()
	up.segs[1] = []byte("AAAAAAAABBBBBBBB")
	m := insert(t, c, "p", 2, "x", "y")
	_, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: []engine.CommitField{
		{Name: "x", DType: engine.Bytes, Kind: engine.Opaque, Runs: []engine.CellRun{{Unit: ids["gone"], First: engine.RemoteAddr{Segment: 1, Gen: 1, Len: 8}, Count: 2}}},
		{Name: "y", DType: engine.Bytes, Kind: engine.Opaque, Runs: []engine.CellRun{{Unit: ids["up"], First: engine.RemoteAddr{Segment: 1, Gen: 1, Len: 8}, Count: 2}}},
	}})
	require.NoError(t, err)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			for i, name := range []string{"gone", "up"} {
				if beat(name) {
					assert.NoError(t, c.units.Heartbeat(engine.UnitInfo{ID: ids[name], Incarnation: uint64(i + 1), Capacity: 1 << 30}))
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	dir := t.TempDir()
	s := NewServer(c, ServerConfig{CheckpointDir: dir, Dial: func(ctx context.Context, u engine.UnitInfo) (engine.DataConn, error) {
		if u.ID == ids["gone"] {
			if len(goneDial) > 0 {
				return nil, goneDial[0](ctx)
			}
			return nil, fmt.Errorf("dial %s: %w", u.Addrs[0], syscall.ECONNREFUSED)
		}
		return up, nil
	}})
	t.Cleanup(func() { s.Close() })
	return c, s, dir
}

// TestCheckpointSaveWaitsForAnUnreachableUnitToDie: right after a
// controller restart the units that went with the old process still
// count as alive for one unit timeout. A save then waits for such a unit
// (its data plane refuses connections) to be declared dead, and saves its
// cells as lost and the reachable unit's cells with their bytes, as a
// save a few seconds later would, instead of failing with "connection
// refused".
func TestCheckpointSaveWaitsForAnUnreachableUnitToDie(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, s, dir := reachCluster(t, func(name string) bool { return name == "up" })
		info, err := s.SaveCheckpoint(context.Background(), "ck", nil)
		require.NoError(t, err)
		assert.Equal(t, int64(4), info.Cells, "cells saved")
		assert.Equal(t, int64(2), info.Lost, "cells lost (those of the unreachable unit)")
		b, err := os.ReadFile(filepath.Join(dir, "ck", dataFile))
		require.NoError(t, err)
		assert.Equal(t, "AAAAAAAABBBBBBBB", string(b), "data.bin")
	})
}

// TestCheckpointSaveFailsOnAnUnreachableLiveUnit: a unit that keeps
// heartbeating but whose data plane this host cannot reach is not dead:
// a save fails, once it has waited a unit timeout for it, naming the
// unit and wrapping engine.ErrUnavailable and the dial's error, and
// leaves no checkpoint.
func TestCheckpointSaveFailsOnAnUnreachableLiveUnit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, s, dir := reachCluster(t, func(string) bool { return true })
		_, err := s.SaveCheckpoint(context.Background(), "ck", nil)
		require.ErrorIs(t, err, engine.ErrUnavailable)
		require.ErrorIs(t, err, syscall.ECONNREFUSED)
		assert.ErrorContains(t, err, "storage unit 1 (gone)")
		_, statErr := os.Stat(filepath.Join(dir, "ck"))
		assert.ErrorIs(t, statErr, os.ErrNotExist, "a checkpoint after the failed save")
	})
}

// TestCheckpointSaveWaitEndsWithItsContext: a save waiting for an
// unreachable unit ends when its context does, with the context's error,
// naming the unit.
func TestCheckpointSaveWaitEndsWithItsContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, s, _ := reachCluster(t, func(string) bool { return true })
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := s.SaveCheckpoint(ctx, "ck", nil)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		assert.ErrorContains(t, err, "storage unit 1 (gone)")
	})
}

// blackholed is a dial of a host that drops what is sent to it: it
// fails only when its context ends (the kernel's own connect timeout is
// minutes).
func blackholed(ctx context.Context) error {
	<-ctx.Done()
	return fmt.Errorf("dial tcp 127.0.0.1:1: %w", ctx.Err())
}

// TestCheckpointSaveBoundsADialThatHangs: a dial of a unit whose host is
// gone (its packets dropped: no refusal comes) hangs until its context
// ends. The save bounds each dial by its wait, so such a unit that no
// longer heartbeats is declared dead within a unit timeout and its cells
// saved lost, and one that still heartbeats fails the save then, naming
// it, rather than the save hanging as long as the dial does (here until
// the save's own 10-minute context ends).
func TestCheckpointSaveBoundsADialThatHangs(t *testing.T) {
	t.Run("dead", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			_, s, dir := reachCluster(t, func(name string) bool { return name == "up" }, blackholed)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			info, err := s.SaveCheckpoint(ctx, "ck", nil)
			require.NoError(t, err)
			assert.Equal(t, int64(2), info.Lost, "cells lost (those of the unreachable unit)")
			b, err := os.ReadFile(filepath.Join(dir, "ck", dataFile))
			require.NoError(t, err)
			assert.Equal(t, "AAAAAAAABBBBBBBB", string(b), "data.bin")
		})
	})
	t.Run("heartbeating", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			_, s, _ := reachCluster(t, func(string) bool { return true }, blackholed)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			_, err := s.SaveCheckpoint(ctx, "ck", nil)
			require.ErrorIs(t, err, engine.ErrUnavailable)
			assert.NoError(t, ctx.Err(), "the save's context")
			assert.ErrorContains(t, err, "storage unit 1 (gone) still heartbeats")
		})
	})
}
