package controller

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestServerFreesCells: the cells an overwrite or a clear drops reach their
// unit through UNIT_SYNC (coalesced), are sent again until the unit acks
// them, and are held back while a checkpoint is saved. Nothing is left for
// a client to free.
func TestServerFreesCells(t *testing.T) {
	for _, durable := range []bool{false, true} {
		name := "in memory"
		cfg := DefaultConfig()
		if durable {
			name, cfg.Dir = "durable", t.TempDir()
		}
		t.Run(name, func(t *testing.T) {
			ctrl := newController(t, cfg)
			s, addr := startServer(t, ctrl, ServerConfig{CheckpointDir: t.TempDir()}, "unix")
			c := dialRaw(t, addr, "")
			var reg wirepb.RegisterReply
			require.NoError(t, do(c, wire.OpRegister, &wirepb.RegisterRequest{HostId: "h", Incarnation: 5}, &reg))
			unit := reg.UnitId
			sync := func(ack uint64, wait time.Duration) *wirepb.UnitSyncReply {
				t.Helper()
				var r wirepb.UnitSyncReply
				require.NoError(t, do(c, wire.OpUnitSync, &wirepb.UnitSyncRequest{UnitId: unit, Incarnation: 5, WaitMs: uint64(wait / time.Millisecond), Ack: ack}, &r))
				return &r
			}
			put := func(keys []string, off uint64) *wirepb.CommitKeysReply {
				t.Helper()
				var r wirepb.CommitKeysReply
				locs := wire.RunsToPB([]engine.CellRun{{Unit: engine.UnitID(unit), First: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: off, Len: 8}, Count: len(keys)}})
				require.NoError(t, do(c, wire.OpCommitKeys, &wirepb.CommitKeysRequest{Partition: "p", Keys: keys,
					Fields: []*wirepb.CommitField{{Name: "v", Dtype: "int64", Kind: "dense", Shape: &wirepb.Shape{}, HasLocs: true, Locs: locs}}}, &r))
				return &r
			}
			put([]string{"a", "b", "c"}, 0)
			assert.Empty(t, sync(0, 0).GetFree().GetOffset(), "nothing to free yet")

			r := put([]string{"a", "b"}, 1024) // overwrites a and b
			assert.Empty(t, r.GetReplaced().GetOffset(), "the reply names nothing for the client to free")
			got := sync(0, time.Second)
			ranges, err := wire.RangesFromPB(got.Free)
			require.NoError(t, err)
			assert.Equal(t, []engine.RemoteAddr{{Segment: 1, Gen: 1, Offset: 0, Len: 16}}, ranges, "a and b's old cells, coalesced")
			require.NotZero(t, got.Seq)
			again := sync(0, 0) // not acked: sent again
			assert.Equal(t, got.Seq, again.Seq)
			assert.Equal(t, got.Free.Offset, again.Free.Offset)
			assert.Empty(t, sync(got.Seq, 0).GetFree().GetOffset(), "acked: nothing more")

			// While a checkpoint is saved, frees wait.
			release := s.frees.hold()
			require.NoError(t, do(c, wire.OpClearKeys, &wirepb.ClearKeysRequest{Partition: "p", Keys: []string{"c"}}, nil))
			assert.Empty(t, sync(got.Seq, 50*time.Millisecond).GetFree().GetOffset(), "held during a checkpoint")
			release()
			held := sync(got.Seq, time.Second)
			ranges, _ = wire.RangesFromPB(held.Free)
			assert.Equal(t, []engine.RemoteAddr{{Segment: 1, Gen: 1, Offset: 16, Len: 8}}, ranges)

			// A unit that is not registered as that incarnation is refused.
			err = do(c, wire.OpUnitSync, &wirepb.UnitSyncRequest{UnitId: unit, Incarnation: 6}, nil)
			assert.ErrorIs(t, err, engine.ErrNotFound)
			// A long poll ends when the server shuts down.
			done := make(chan error, 1)
			go func() {
				done <- do(c, wire.OpUnitSync, &wirepb.UnitSyncRequest{UnitId: unit, Incarnation: 5, WaitMs: 30_000, Ack: held.Seq}, &wirepb.UnitSyncReply{})
			}()
			time.Sleep(20 * time.Millisecond)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s.Shutdown(ctx)
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("UNIT_SYNC still waiting after Shutdown")
			}
		})
	}
}

// Frees for a unit the registry no longer hears from are not kept (a unit
// gone for good held them for ever, up to 2^24 ranges each, and every
// restarted unit leaves one such id): the unit is asked for a full
// reconcile instead, which frees the same once it is back.
func TestFreesForADeadUnit(t *testing.T) {
	alive := map[engine.UnitID]bool{1: true, 2: false}
	q := newFreeQueue(func(id engine.UnitID) bool { return alive[id] })
	cell := func(unit engine.UnitID, off uint64) engine.CellLoc {
		return engine.CellLoc{Unit: unit, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: off, Len: 8}}
	}
	for i := range uint64(1000) {
		q.add([]engine.CellLoc{cell(1, 16*i), cell(2, 16*i)})
	}
	ctx := context.Background()
	ranges, seq, reconcile := q.take(ctx, 1, 0, 0)
	assert.Len(t, ranges, 1000)
	assert.NotZero(t, seq)
	assert.False(t, reconcile)
	q.mu.Lock()
	assert.Empty(t, q.units[2].ranges, "kept frees for a dead unit")
	q.mu.Unlock()
	ranges, _, reconcile = q.take(ctx, 2, 0, 0)
	assert.Empty(t, ranges)
	assert.True(t, reconcile, "the dead unit, when back, is asked for a full reconcile")
}
