package controller

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller/journal"
	"github.com/tqgo/tq/controller/sampler"
	"github.com/tqgo/tq/engine"
	"google.golang.org/protobuf/proto"
)

func openDurable(t *testing.T, dir string, cfg Config) *Controller {
	t.Helper()
	cfg.Dir = dir
	c, err := New(cfg)
	require.NoError(t, err)
	return c
}

// crash stops a durable controller the way a killed process would: no
// final snapshot; the journal keeps what it wrote.
func crash(t testing.TB, c *Controller) {
	t.Helper()
	close(c.snapStop)
	<-c.snapDone
	require.NoError(t, c.j.Close())
	c.j = nil
	c.closeOnce.Do(func() { close(c.done) })
}

// stateBytes encodes c's whole state (without the time it was taken), for
// comparing two controllers.
func stateBytes(t *testing.T, c *Controller) []byte {
	t.Helper()
	unlock := c.lockAll()
	st := c.copyState()
	unlock()
	require.NoError(t, c.samplerState(st.head))
	st.head.SavedUnixMs, st.head.LogIndex, st.head.Epoch = 0, 0, 0
	for _, p := range st.parts {
		for _, f := range p.fetches {
			f.AtUnixMs = 0
		}
	}
	var b bytes.Buffer
	require.NoError(t, st.write(&b, nil))
	return b.Bytes()
}

// workload makes every kind of change the log records.
func workload(t *testing.T, c *Controller) {
	t.Helper()
	ctx := context.Background()
	u1, err := c.units.Register(engine.UnitInfo{Incarnation: 11, Host: "h", Addrs: []string{"tcp://127.0.0.1:1"}, Name: "u1", Capacity: 1 << 20}, true)
	require.NoError(t, err)
	_, err = c.units.Register(engine.UnitInfo{Incarnation: 22, Host: "h", Name: "u2"}, true)
	require.NoError(t, err)
	m := insert(t, c, "train", 6, "x")
	// x's rows of float32 (1), (2), (2), (3) back to back in segment 1.
	loc := func(off, n uint64) engine.CellLoc {
		return engine.CellLoc{Unit: u1, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: off, Len: n}}
	}
	_, err = c.Commit(engine.CommitRequest{Partition: "train", Indexes: m.Indexes[:4], Fields: []engine.CommitField{
		{Name: "x", DType: engine.Float32, Kind: engine.Ragged, Shapes: []engine.Shape{{1}, {2}, {2}, {3}}, Locs: []engine.CellLoc{loc(0, 4), loc(4, 8), loc(12, 8), loc(20, 12)}},
		{Name: "d", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{2}, Runs: []engine.CellRun{{Unit: u1, First: engine.RemoteAddr{Segment: 2, Gen: 1, Len: 16}, Count: 4}}},
		{Name: "s", DType: engine.Bytes, Kind: engine.Opaque},
	}})
	require.NoError(t, err)
	_, err = c.CommitKeys(engine.KeysCommit{Partition: "kv", Keys: []string{"a", "b"},
		Fields: []engine.CommitField{{Name: "v", DType: engine.Int8, Kind: engine.Dense, Shape: engine.Shape{}, Runs: []engine.CellRun{{Unit: u1, First: engine.RemoteAddr{Segment: 3, Gen: 2, Len: 1}, Count: 2}}}},
		Tags:   []engine.Tags{{"status": "running"}, nil}})
	require.NoError(t, err)
	_, err = c.CommitKeys(engine.KeysCommit{Partition: "kv", Keys: []string{"b", "c"}, Tags: []engine.Tags{{"step": 2}, {"n": []any{1, "x"}}}})
	require.NoError(t, err)
	_, err = c.ResolveKeys("kv", []string{"d"}, nil, true)
	require.NoError(t, err)
	// Tags removed and swapped, a key made by a swap and one cleared:
	// the change feed's numbers and cleared keys come back too.
	_, err = c.DeleteTags("kv", []string{"b", "c"}, []string{"step", "never-set"})
	require.NoError(t, err)
	// A field dropped from one key (HDEL): the key stays, with its tags.
	n, _, err := c.ClearFields("kv", []string{"b", "c"}, []string{"v", "never-written"})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	for _, sw := range []engine.TagSwap{
		{Partition: "kv", Key: "a", Name: "status", Old: "running", New: "done"},
		{Partition: "kv", Key: "e", Name: "n", New: 1},
		{Partition: "kv", Key: "c", Name: "n", Old: []any{1, "x"}},
	} {
		done, err := c.CompareAndSetTag(sw)
		require.NoError(t, err)
		require.True(t, done.Swapped, "%+v", sw)
	}
	_, err = c.ClearKeys("kv", []string{"d"})
	require.NoError(t, err)
	require.NoError(t, c.SetTags("train", m.Indexes[:1], []engine.Tags{{"status": "done"}}))
	_, err = c.Fetch(ctx, engine.FetchRequest{Partition: "train", Task: "actor", Fields: []string{"x"}, BatchSize: 2, Key: "key-1"})
	require.NoError(t, err)
	_, err = c.Fetch(ctx, engine.FetchRequest{Partition: "train", Task: "critic", Fields: []string{"x"}, BatchSize: 2, Key: "key-2"})
	require.NoError(t, err)
	require.NoError(t, c.Unconsume("train", "critic", "key-2"))
	require.NoError(t, c.Unconsume("train", "critic", "key-never-fetched"))
	for _, key := range []string{"key-3", "key-4"} { // held: key-3 acknowledged, key-4 still held
		_, err = c.Fetch(ctx, engine.FetchRequest{Partition: "train", Task: "judge", Fields: []string{"x"}, BatchSize: 1, Key: key, Hold: true})
		require.NoError(t, err)
	}
	require.NoError(t, c.Acknowledge("train", "judge", "key-3"))
	require.NoError(t, c.ResetConsumption("train", "nobody"))
	_, err = c.ClearRows("train", m.Indexes[5:])
	require.NoError(t, err)
	insert(t, c, "gone", 3, "x")
	_, err = c.ClearPartition("gone")
	require.NoError(t, err)
	insert(t, c, "gone", 1, "y") // the same id again: a new gen
	res, err := c.Reconcile(ReconcileRequest{Unit: u1, Incarnation: 11, Full: true, Segments: []uint32{1, 2, 3},
		Fences:  []SegmentFence{{1, 1}, {2, 1}, {3, 2}},
		Extents: []engine.RemoteAddr{{Segment: 1, Gen: 1, Offset: 0, Len: 16}, {Segment: 2, Gen: 1, Len: 64}, {Segment: 3, Gen: 2, Len: 2}},
		Last:    true, LiveSegments: []uint32{1, 2, 3}, NextSegment: 4})
	require.NoError(t, err)
	require.Equal(t, 2, res.Lost, "x of rows 2 and 3 lie outside the extents reported")
}

// TestDurableRecovery: a controller that restarts — after a clean close
// (from its final snapshot), after a crash (replaying its log), or after a
// crash with snapshots taken along the way (a snapshot and the log after
// it) — comes back with exactly the state it had, in a new epoch.
func TestDurableRecovery(t *testing.T) {
	for _, tc := range []struct {
		name          string
		snapshotBytes int64
		stop          func(*testing.T, *Controller)
	}{
		{"clean close", 0, func(t *testing.T, c *Controller) { require.NoError(t, c.Close()) }},
		{"crash, log only", 1 << 40, func(t *testing.T, c *Controller) { crash(t, c) }},
		{"crash after snapshots", 1, func(t *testing.T, c *Controller) { crash(t, c) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			rank := func() engine.Sampler { g, _ := sampler.NewGRPO(1); return g } // caches per rank
			c := openDurable(t, dir, Config{PreAlloc: 2, Sampler: rank(), SnapshotBytes: tc.snapshotBytes})
			workload(t, c)
			if tc.snapshotBytes == 1 {
				require.NoError(t, c.snapshot())
				insert(t, c, "after", 2, "z") // and more log after it
			}
			// A fetch with a rank leaves a cache entry (journaled).
			rm := insert(t, c, "ranked", 4, "r")
			commitDense(t, c, "ranked", rm.Indexes, "r")
			ranked, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "ranked", Task: "t", Fields: []string{"r"}, BatchSize: 2,
				Options: engine.SamplingOptions{HasRank: true, DPRank: 0, BatchIndex: 0}})
			require.NoError(t, err)
			require.Len(t, ranked.Indexes, 2)
			want := stateBytes(t, c)
			info := c.Info()
			require.NoError(t, c.WaitDurable(context.Background()))
			tc.stop(t, c)

			d := openDurable(t, dir, Config{PreAlloc: 2, Sampler: rank()})
			defer d.Close()
			assert.Equal(t, want, stateBytes(t, d), "state after recovery")
			assert.Equal(t, info.ClusterID, d.Info().ClusterID)
			assert.Equal(t, info.Epoch+1, d.Info().Epoch, "a new epoch per start")
			// The keyed fetch asked again returns what it took; the one given
			// back does not come back.
			m, err := d.Fetch(context.Background(), engine.FetchRequest{Partition: "train", Task: "actor", Fields: []string{"x"}, BatchSize: 2, Key: "key-1"})
			require.NoError(t, err)
			assert.Len(t, m.Indexes, 2)
			_, err = d.Fetch(context.Background(), engine.FetchRequest{Partition: "train", Task: "critic", Fields: []string{"x"}, BatchSize: 2, Key: "key-2"})
			require.ErrorIs(t, err, context.Canceled)
			// The rank's peer gets the same batch from the replayed cache.
			peer, err := d.Fetch(context.Background(), engine.FetchRequest{Partition: "ranked", Task: "t", Fields: []string{"r"}, BatchSize: 2,
				Options: engine.SamplingOptions{HasRank: true, DPRank: 0, BatchIndex: 0}})
			require.NoError(t, err)
			assert.Equal(t, ranked.Indexes, peer.Indexes)
			// Unit ids continue past the ones given out.
			id, err := d.units.Register(engine.UnitInfo{Incarnation: 33, Host: "h"}, true)
			require.NoError(t, err)
			assert.Equal(t, engine.UnitID(3), id)
		})
	}
}

// TestDurableRandomOps: random changes, a crash at a random point, and the
// recovered state equals the state before the crash (every change was
// waited for, as the server waits before it answers). Two tasks fetch, so
// that a fetch of nothing makes a task the other's consumption follows.
func TestDurableRandomOps(t *testing.T) {
	for seed := range uint64(24) {
		t.Run("", func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 1))
			dir := t.TempDir()
			c := openDurable(t, dir, Config{SnapshotBytes: 1 << 40})
			ctx := context.Background()
			parts := []string{"a", "b", "c"}
			for i := range 300 {
				p := parts[rng.IntN(len(parts))]
				key := string(rune('k' + rng.IntN(5)))
				switch rng.IntN(10) {
				case 8:
					_, err := c.DeleteTags(p, []string{key}, []string{"i", "n"})
					if err != nil {
						require.ErrorIs(t, err, engine.ErrNotFound)
					}
				case 9:
					done, err := c.CompareAndSetTag(engine.TagSwap{Partition: p, Key: key, Name: "n"})
					require.NoError(t, err)
					var next any = 1
					if n, ok := (engine.Tags{"n": done.Current}).Int("n"); ok && n < 3 {
						next = n + 1
					} else if ok {
						next = nil
					}
					_, err = c.CompareAndSetTag(engine.TagSwap{Partition: p, Key: key, Name: "n", Old: done.Current, New: next})
					require.NoError(t, err)
				case 0, 1:
					m, err := c.Insert(p, 1+rng.IntN(4), []string{"x"})
					require.NoError(t, err)
					_, err = c.Commit(engine.CommitRequest{Partition: p, Indexes: m.Indexes, Fields: []engine.CommitField{{Name: "x", DType: engine.Int32, Kind: engine.Dense, Shape: engine.Shape{1}}}})
					require.NoError(t, err)
				case 2:
					keys := []string{string(rune('k' + rng.IntN(5))), string(rune('p' + rng.IntN(5)))}
					if keys[0] == keys[1] {
						keys = keys[:1]
					}
					tags := make([]engine.Tags, len(keys))
					for j := range tags {
						tags[j] = engine.Tags{"i": i}
					}
					_, err := c.CommitKeys(engine.KeysCommit{Partition: p, Keys: keys, Tags: tags})
					require.NoError(t, err)
				case 3:
					// Fetch keys are the task's own: t's are A to T, u's a to t.
					task, key := "t", string(rune('A'+rng.IntN(20)))
					if rng.IntN(2) == 0 {
						task, key = "u", strings.ToLower(key)
					}
					_, err := c.Fetch(ctx, engine.FetchRequest{Partition: p, Task: task, Fields: []string{"x"}, BatchSize: 1 + rng.IntN(3), Key: key})
					if err != nil {
						require.ErrorIs(t, err, context.Canceled)
					}
				case 4:
					task, key := "t", string(rune('A'+rng.IntN(20)))
					if rng.IntN(2) == 0 {
						task, key = "u", strings.ToLower(key)
					}
					require.NoError(t, c.Unconsume(p, task, key))
				case 5:
					ff, err := c.ForceFetch(p, nil)
					if err == nil && ff.Len() > 0 {
						_, err = c.ClearRows(p, ff.Indexes[:1+rng.IntN(ff.Len())])
						require.NoError(t, err)
					}
				case 6:
					if rng.IntN(4) == 0 {
						_, err := c.ClearPartition(p)
						require.NoError(t, err)
					}
				case 7:
					if rng.IntN(3) == 0 {
						require.NoError(t, c.snapshot())
					}
				}
			}
			want := stateBytes(t, c)
			require.NoError(t, c.WaitDurable(ctx))
			crash(t, c)
			d := openDurable(t, dir, Config{})
			defer d.Close()
			require.Equal(t, want, stateBytes(t, d))
		})
	}
}

// TestUnitIDsSurviveRestart is the first case of issue 11 at the
// controller: after a restart, a new unit never gets the id of one that
// is still coming back, and the old one comes back under its own id.
func TestUnitIDsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	c := openDurable(t, dir, Config{})
	old, err := c.units.Register(engine.UnitInfo{Incarnation: 0xa, Host: "h"}, true)
	require.NoError(t, err)
	cluster := c.Info().ClusterID
	require.NoError(t, c.Close())

	d := openDurable(t, dir, Config{})
	defer d.Close()
	fresh, err := d.units.Register(engine.UnitInfo{Incarnation: 0xb, Host: "h"}, true)
	require.NoError(t, err)
	assert.NotEqual(t, old, fresh, "a new unit got the id of one in its reconnect backoff")
	back, err := d.units.Register(engine.UnitInfo{ID: old, Incarnation: 0xa, Host: "h"}, cluster == d.Info().ClusterID)
	require.NoError(t, err)
	assert.Equal(t, old, back, "the old unit comes back under its id")

	// An in-memory controller forgets everything: a unit that comes back
	// from another cluster is new, under a new id.
	e := newController(t, DefaultConfig())
	e.units.Register(engine.UnitInfo{Incarnation: 0xb, Host: "h"}, true) // takes id 1
	back, err = e.units.Register(engine.UnitInfo{ID: old, Incarnation: 0xa, Host: "h"}, cluster == e.Info().ClusterID)
	require.NoError(t, err)
	assert.Equal(t, engine.UnitID(2), back)
	assert.NotEqual(t, cluster, e.Info().ClusterID)
}

// TestCheckpointAfterUnitsRestarted is the second case of issue 11: a
// checkpoint saved, the units restarted (new incarnations, new ids), a
// new key written at the very same segment, generation and offset on the
// new unit, the checkpoint loaded: the old key's cell still names the old
// unit (dead: reading it is engine.ErrLost), never the new bytes.
func TestCheckpointAfterUnitsRestarted(t *testing.T) {
	c := newController(t, DefaultConfig())
	u1, _ := c.units.Register(engine.UnitInfo{Incarnation: 0xa, Host: "h"}, true)
	at := engine.RemoteAddr{Segment: 1, Gen: 1, Offset: 0, Len: 8}
	put := func(part, key string, u engine.UnitID) {
		_, err := c.CommitKeys(engine.KeysCommit{Partition: part, Keys: []string{key}, Fields: []engine.CommitField{
			{Name: "v", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{}, Locs: []engine.CellLoc{{Unit: u, Addr: at}}}}})
		require.NoError(t, err)
	}
	put("p1", "x", u1)
	dir := t.TempDir()
	require.NoError(t, c.Save(dir))
	u2, _ := c.units.Register(engine.UnitInfo{Incarnation: 0xb, Host: "h"}, true) // the restarted unit
	require.NotEqual(t, u1, u2)
	put("p2", "y", u2)
	_, err := c.Load(dir)
	require.NoError(t, err)
	m, err := c.ResolveKeys("p1", []string{"x"}, nil, false)
	require.NoError(t, err)
	assert.Equal(t, u1, m.Cells["v"][0].Unit, "the cell names the unit that held it")
	u, _ := c.units.Unit(u1)
	assert.Equal(t, uint64(0xa), u.Incarnation)
}

func TestFetchKeys(t *testing.T) {
	ctx := context.Background()
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 6, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	f := func(key string, n int) (*engine.BatchMeta, error) {
		return c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: n, Key: key})
	}
	a, err := f("a", 2)
	require.NoError(t, err)
	again, err := f("a", 2)
	require.NoError(t, err)
	assert.Equal(t, a.Indexes, again.Indexes, "asked again: the same rows, none more")
	st, _ := c.ConsumptionStatus("p", "t")
	assert.Equal(t, 2, trues(st.Consumed))

	// Given back: fetchable again, and the key is spent.
	require.NoError(t, c.Unconsume("p", "t", "a"))
	require.NoError(t, c.Unconsume("p", "t", "a"), "idempotent")
	_, err = f("a", 2)
	require.ErrorIs(t, err, context.Canceled)
	st, _ = c.ConsumptionStatus("p", "t")
	assert.Equal(t, 0, trues(st.Consumed))

	// An unconsume that arrives before its fetch: the fetch takes nothing.
	require.NoError(t, c.Unconsume("p", "t", "b"))
	_, err = f("b", 2)
	require.ErrorIs(t, err, context.Canceled)
	st, _ = c.ConsumptionStatus("p", "t")
	assert.Equal(t, 0, trues(st.Consumed))

	// A key belongs to its task.
	_, err = f("c", 1)
	require.NoError(t, err)
	_, err = c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "other", Fields: []string{"x"}, BatchSize: 1, Key: "c"})
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.ErrorIs(t, c.Unconsume("p", "other", "c"), engine.ErrInvalid)

	// A canceled blocking fetch consumes nothing, even when rows arrive.
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := c.Fetch(wctx, engine.FetchRequest{Partition: "q", Task: "t", Fields: []string{"x"}, BatchSize: 1, Wait: true, Key: "w"})
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	mq := insert(t, c, "q", 1, "x")
	commitDense(t, c, "q", mq.Indexes, "x")
	stq, _ := c.ConsumptionStatus("q", "t")
	assert.Equal(t, 0, trues(stq.Consumed), "the canceled fetch took the row produced after it")
}

func trues(bs []bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

// TestReconcile: fences refuse late commits; a full report frees what no
// cell references, keeps (and tells which ranges of) extents referenced in
// part, and marks lost the cells whose bytes are gone.
func TestReconcile(t *testing.T) {
	c := newController(t, DefaultConfig())
	u, _ := c.units.Register(engine.UnitInfo{Incarnation: 7, Host: "h"}, true)
	commit := func(part string, seg, gen uint32, off uint64, n int) error {
		m, err := c.Insert(part, n, []string{"x"})
		require.NoError(t, err)
		_, err = c.Commit(engine.CommitRequest{Partition: part, Indexes: m.Indexes, Fields: []engine.CommitField{
			{Name: "x", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{}, Runs: []engine.CellRun{{Unit: u, First: engine.RemoteAddr{Segment: seg, Gen: gen, Offset: off, Len: 8}, Count: n}}}}})
		return err
	}
	require.NoError(t, commit("p", 1, 1, 0, 4))    // extent 1/1: 32 bytes, whole
	require.NoError(t, commit("p", 1, 2, 4096, 2)) // extent 1/2: 64 bytes, half referenced
	require.NoError(t, commit("p", 2, 5, 0, 2))    // segment 2: gone at the unit
	res, err := c.Reconcile(ReconcileRequest{Unit: u, Incarnation: 7, Full: true, Segments: []uint32{1},
		Fences: []SegmentFence{{1, 3}},
		Extents: []engine.RemoteAddr{
			{Segment: 1, Gen: 1, Offset: 0, Len: 32},
			{Segment: 1, Gen: 2, Offset: 4096, Len: 64},
			{Segment: 1, Gen: 3, Offset: 8192, Len: 100}, // nobody's
		},
		Last: true, LiveSegments: []uint32{1}, NextSegment: 3})
	require.NoError(t, err)
	assert.Equal(t, []engine.RemoteAddr{{Segment: 1, Gen: 3, Offset: 8192, Len: 100}}, res.Free)
	assert.Equal(t, []engine.RemoteAddr{{Segment: 1, Gen: 2, Offset: 4096, Len: 16}}, res.Keep)
	assert.Equal(t, 2, res.Lost, "the cells of segment 2")
	ff, _ := c.ForceFetch("p", nil)
	lost := 0
	for _, l := range ff.Cells["x"] {
		if l.Lost() {
			lost++
		}
	}
	assert.Equal(t, 2, lost)

	// A commit into a fenced generation is refused, a newer one is not.
	require.ErrorIs(t, commit("q", 1, 3, 8192, 1), engine.ErrLost)
	require.NoError(t, commit("q", 1, 4, 0, 1))
	// Another unit's fences are its own.
	v, _ := c.units.Register(engine.UnitInfo{Incarnation: 8, Host: "h"}, true)
	_, err = c.Commit(engine.CommitRequest{Partition: "p", Indexes: ff.Indexes[:1], Fields: []engine.CommitField{
		{Name: "x", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{}, Locs: []engine.CellLoc{{Unit: v, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Len: 8}}}}}})
	require.NoError(t, err)

	// Reports from a unit not registered as that incarnation are refused,
	// as are malformed ones.
	_, err = c.Reconcile(ReconcileRequest{Unit: u, Incarnation: 99})
	require.ErrorIs(t, err, engine.ErrNotFound)
	_, err = c.Reconcile(ReconcileRequest{Unit: u, Incarnation: 7, Extents: []engine.RemoteAddr{{Segment: 9, Gen: 1, Len: 8}}})
	require.ErrorIs(t, err, engine.ErrInvalid, "an extent in a segment without a fence")
	// While a checkpoint is saved, reconciling waits.
	c.pins.Lock()
	_, err = c.Reconcile(ReconcileRequest{Unit: u, Incarnation: 7})
	require.ErrorIs(t, err, engine.ErrNotReady)
	c.pins.Unlock()
}

// TestUnreferenced: of the extents given, those no cell of the unit
// names, by segment and generation, whatever part of them the cells use.
func TestUnreferenced(t *testing.T) {
	c := newController(t, DefaultConfig())
	u, _ := c.units.Register(engine.UnitInfo{Incarnation: 7, Host: "h"}, true)
	v, _ := c.units.Register(engine.UnitInfo{Incarnation: 8, Host: "h"}, true)
	commit := func(part string, unit engine.UnitID, a engine.RemoteAddr) {
		m, err := c.Insert(part, 1, []string{"x"})
		require.NoError(t, err)
		_, err = c.Commit(engine.CommitRequest{Partition: part, Indexes: m.Indexes, Fields: []engine.CommitField{
			{Name: "x", DType: engine.Bytes, Kind: engine.Opaque, Locs: []engine.CellLoc{{Unit: unit, Addr: a}}}}})
		require.NoError(t, err)
	}
	commit("p", u, engine.RemoteAddr{Segment: 1, Gen: 1, Offset: 0, Len: 8})
	commit("q", u, engine.RemoteAddr{Segment: 1, Gen: 2, Offset: 4096, Len: 8})
	commit("q", v, engine.RemoteAddr{Segment: 1, Gen: 3, Offset: 8192, Len: 8})
	extents := []engine.RemoteAddr{
		{Segment: 1, Gen: 1, Offset: 0, Len: 64},    // named whole
		{Segment: 1, Gen: 2, Offset: 4096, Len: 64}, // named in part
		{Segment: 1, Gen: 3, Offset: 8192, Len: 64}, // named by another unit's cell
		{Segment: 2, Gen: 1, Offset: 0, Len: 64},    // named by none
	}
	assert.Equal(t, extents[2:], c.Unreferenced(u, extents))
	assert.Empty(t, c.Unreferenced(u, nil))
}

// TestListKeysPages: pages in creation order, partition by partition, a
// page bounded by count; any number of keys comes back through the pages.
func TestListKeysPages(t *testing.T) {
	c := newController(t, DefaultConfig())
	var want []string
	for _, p := range []string{"b", "a"} {
		keys := make([]string, 10)
		for i := range keys {
			keys[i] = p + string(rune('0'+i))
		}
		_, err := c.ResolveKeys(p, keys, nil, true)
		require.NoError(t, err)
	}
	for _, p := range []string{"a", "b"} {
		for i := range 10 {
			want = append(want, p+string(rune('0'+i)))
		}
	}
	c.ClearKeys("a", []string{"a3"})
	want = append(want[:3], want[4:]...)
	var got []string
	var cursor []byte
	pages := 0
	for {
		page, next, err := c.ListKeysPage("", cursor, 3)
		require.NoError(t, err)
		pages++
		n := 0
		for _, pk := range page {
			for _, k := range pk.Keys {
				got = append(got, k.Key)
				n++
			}
		}
		assert.LessOrEqual(t, n, 3)
		if next == nil {
			break
		}
		cursor = next
	}
	assert.Equal(t, want, got)
	assert.Equal(t, 7, pages)
	_, _, err := c.ListKeysPage("", []byte{0xff}, 0)
	require.ErrorIs(t, err, engine.ErrInvalid)
	_, _, err = c.ListKeysPage("a", encodeKeysCursor("b", 0, 1), 0)
	require.ErrorIs(t, err, engine.ErrInvalid)
	_, _, err = c.ListKeysPage("", nil, maxKeysPage+1)
	require.ErrorIs(t, err, engine.ErrInvalid)
}

// TestDurableConfig: a bad fsync mode or snapshot size is refused.
func TestDurableConfig(t *testing.T) {
	_, err := New(Config{Dir: t.TempDir(), Fsync: journal.Fsync(9)})
	require.ErrorIs(t, err, engine.ErrInvalid)
	_, err = New(Config{SnapshotBytes: -1})
	require.ErrorIs(t, err, engine.ErrInvalid)
}

// indexSet, which checks a state file's rows and reusable indexes for
// repeats.
func TestIndexSet(t *testing.T) {
	var s indexSet
	assert.False(t, s.has(7))
	for _, gi := range []uint64{0, 63, 64, 65535, 65536, 1<<32 - 1} {
		assert.True(t, s.add(gi), "first add of %d", gi)
		assert.True(t, s.has(gi))
		assert.False(t, s.add(gi), "second add of %d", gi)
	}
	assert.False(t, s.has(1))
	assert.False(t, s.has(65537))
	assert.Len(t, s.pages, 3)
}

// A snapshot this configuration cannot take (saved with a sampler that
// keeps state, reopened with one that keeps none) fails the start and is
// not set aside as damaged: reopened as it was saved, the controller comes
// back whole (it used to rename both snapshots .bad for good).
func TestRecoveryRefusesAnotherSampler(t *testing.T) {
	dir := t.TempDir()
	rank := func() engine.Sampler { g, _ := sampler.NewGRPO(1); return g }
	c := openDurable(t, dir, Config{Sampler: rank()})
	rm := insert(t, c, "ranked", 4, "r")
	commitDense(t, c, "ranked", rm.Indexes, "r")
	_, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "ranked", Task: "t", Fields: []string{"r"}, BatchSize: 2,
		Options: engine.SamplingOptions{HasRank: true}})
	require.NoError(t, err)
	want := stateBytes(t, c)
	require.NoError(t, c.Close()) // a snapshot with the sampler's state

	_, err = New(Config{Dir: dir, Sampler: sampler.NewSequential()})
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), "sampler")
	bad, _ := filepath.Glob(filepath.Join(dir, "*.bad"))
	assert.Empty(t, bad, "a snapshot was set aside")

	d := openDurable(t, dir, Config{Sampler: rank()})
	defer d.Close()
	got := stateBytes(t, d)
	assert.Equal(t, want, got)
}

// A fetch that takes no rows but leaves the sampler remembering something
// (the last batch split across ranks, asked for by a rank whose part is
// empty) is logged too: after a crash the split is the same, and so the
// batches the other ranks get.
func TestSamplerStateOfAnEmptyFetchSurvives(t *testing.T) {
	dir := t.TempDir()
	seqlen := func() engine.Sampler { s, _ := sampler.NewSeqlenBalanced(1, 2); return s }
	c := openDurable(t, dir, Config{Sampler: seqlen(), SnapshotBytes: 1 << 40})
	m := insert(t, c, "p", 1, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	require.NoError(t, c.MarkDone("p"))
	// The last batch, of one row, balanced over two ranks: rank 1's part
	// is empty, and its fetch takes the batch for rank 0.
	_, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 2,
		Options: engine.SamplingOptions{HasRank: true, DPRank: 1}})
	require.ErrorIs(t, err, engine.ErrDone, "rank 1 gets nothing")
	want := stateBytes(t, c)
	require.NoError(t, c.WaitDurable(context.Background()))
	crash(t, c)
	d := openDurable(t, dir, Config{Sampler: seqlen()})
	defer d.Close()
	assert.Equal(t, want, stateBytes(t, d), "the split was lost")
}

// A checkpoint saved over another replaces it in one step, leaving no
// temporary directory; what a save cut short left (hidden siblings, never
// listed) goes when a server starts on the directory.
func TestCheckpointReplaceAndSweep(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "ck")
	c := newController(t, DefaultConfig())
	insert(t, c, "first", 1, "x")
	require.NoError(t, c.Save(dir))
	insert(t, c, "second", 1, "x")
	require.NoError(t, c.Save(dir))
	entries, err := os.ReadDir(root)
	require.NoError(t, err)
	require.Len(t, entries, 1, "left beside the checkpoint: %v", entries)
	d := newController(t, DefaultConfig())
	_, err = d.Load(dir)
	require.NoError(t, err)
	assert.Equal(t, []string{"first", "second"}, d.Partitions())

	for _, stale := range []string{".ck.tmp-0123", ".ck.old-4567"} {
		require.NoError(t, os.Mkdir(filepath.Join(root, stale), 0o700))
	}
	NewServer(c, ServerConfig{CheckpointDir: root})
	entries, err = os.ReadDir(root)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	assert.Equal(t, "ck", entries[0].Name())
}

// A save over a checkpoint on a file system that cannot exchange two
// directories moves the old one aside, then renames the new one in; a
// process killed between the two left neither under the name, and the
// sweep at the next start deleted both: the checkpoint was gone. The
// sweep puts the old one back.
func TestCheckpointSweepPutsBackACheckpointMovedAside(t *testing.T) {
	root := t.TempDir()
	c := newController(t, DefaultConfig())
	insert(t, c, "first", 1, "x")
	require.NoError(t, c.Save(filepath.Join(root, "v1.old-2")))
	require.NoError(t, os.Rename(filepath.Join(root, "v1.old-2"), filepath.Join(root, ".v1.old-2.old-0123")))
	insert(t, c, "second", 1, "x")
	require.NoError(t, c.Save(filepath.Join(root, "next")))
	require.NoError(t, os.Rename(filepath.Join(root, "next"), filepath.Join(root, ".v1.old-2.tmp-4567")))

	s := NewServer(c, ServerConfig{CheckpointDir: root})
	t.Cleanup(func() { s.Close() })
	entries, err := os.ReadDir(root)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	require.Equal(t, []string{"v1.old-2"}, names, "what the sweep left")
	d := newController(t, DefaultConfig())
	_, err = d.Load(filepath.Join(root, "v1.old-2"))
	require.NoError(t, err)
	assert.Equal(t, []string{"first"}, d.Partitions())
}

// A snapshot whose messages outgrow the bound a state stream of unknown
// length has is read back whole: in a file, what is left of it bounds a
// message. (Its header used to be refused past 64 MiB — a controller
// that had released millions of row indexes, or a partition remembering
// 65536 long cleared keys, wrote snapshots it could not start from. The
// bound is lowered here so that small messages outgrow it.)
func TestSnapshotMessagesPastTheStreamBound(t *testing.T) {
	defer func(old uint64) { maxStateMessage = old }(maxStateMessage)
	maxStateMessage = 1 << 10
	dir := t.TempDir()
	c := openDurable(t, dir, Config{})
	m := insert(t, c, "p", 2000, "x")
	_, err := c.ClearRows("p", m.Indexes[:1500]) // 1500 reusable indexes: a header of ~3 KB
	require.NoError(t, err)
	long := strings.Repeat("k", 100)
	var keys []string
	for i := range 40 {
		keys = append(keys, fmt.Sprintf("%s%d", long, i))
	}
	tags := make([]engine.Tags, len(keys))
	for i := range tags {
		tags[i] = engine.Tags{"status": "new"}
	}
	_, err = c.CommitKeys(engine.KeysCommit{Partition: "q", Keys: keys, Tags: tags}) // tag-only keys
	require.NoError(t, err)
	_, err = c.ClearKeys("q", keys) // 40 cleared keys of 100 bytes: a partition of ~4 KB
	require.NoError(t, err)
	want := stateBytes(t, c)
	require.NoError(t, c.Close()) // a snapshot of it

	head, err := readStateHeader(c.j.Snapshots()[0].Path)
	require.NoError(t, err)
	require.Greater(t, uint64(proto.Size(head)), maxStateMessage, "the header outgrows the stream bound")
	d := openDurable(t, dir, Config{})
	defer d.Close()
	assert.Equal(t, want, stateBytes(t, d))
	_, reusable := d.idx.stats()
	assert.Equal(t, 1500, reusable)
	bad, _ := filepath.Glob(filepath.Join(dir, "*.bad"))
	assert.Empty(t, bad, "a snapshot was set aside")
}

// A state file whose message claims more bytes than the file has left is
// refused as damaged, before anything that size is allocated.
func TestStateMessageLongerThanTheFile(t *testing.T) {
	var b []byte
	b = binary.AppendUvarint(b, 1<<40)
	b = append(b, make([]byte, 16)...)
	_, err := readState(bytes.NewReader(b), int64(len(b)))
	require.ErrorIs(t, err, engine.ErrCorrupt)
	assert.Contains(t, err.Error(), "header at byte 0: 1099511627776 bytes, 16 left in the file")
}

// The records a restart replays (those after the newest snapshot) count
// toward the next snapshot: a controller killed each time before its log
// reached SnapshotBytes (a crash loop, an OOM kill) used to restart
// counting from zero, so the log after the snapshot, and the time a
// restart takes to replay it, grew by one run's worth per restart.
func TestLogSinceSnapshotSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	const limit = 256 << 10
	big := strings.Repeat("x", 10<<10)
	var idx []uint64
	for cycle := range 4 {
		c := openDurable(t, dir, Config{SnapshotBytes: limit})
		if idx == nil {
			idx = insert(t, c, "p", 1, "x").Indexes
		}
		for i := range 20 { // about 200 KiB of records: under the limit
			require.NoError(t, c.SetTags("p", idx, []engine.Tags{{"v": big, "i": cycle*100 + i}}))
		}
		require.NoError(t, c.WaitDurable(context.Background()))
		crash(t, c)
	}
	c := openDurable(t, dir, Config{SnapshotBytes: limit})
	defer c.Close()
	// 4 runs of ~200 KiB are in the log after the (absent) snapshot.
	assert.GreaterOrEqual(t, c.Info().LogBytes, int64(3*limit), "Info().LogBytes: the bytes logged since the newest snapshot")
	// The snapshotter (every second) snapshots once the log since the
	// last snapshot outgrows SnapshotBytes: it does here, already.
	assert.Eventually(t, func() bool { return c.Info().SnapshotIndex > 0 }, 3*time.Second, 100*time.Millisecond,
		"no snapshot although ~800 KiB were logged since the last (SnapshotBytes %d)", limit)
}

// A checkpoint load that fails says "a restart undoes the load", and
// stops the journal; its snapshot's cleanup failing after the snapshot is
// in place (the log not truncated, an old snapshot file not removed:
// here a non-empty directory stands in the old file's place, as EACCES or
// EIO would) is no failure of the load: the restart keeps the loaded
// state, so the load must report success.
func TestLoadFailsOnlyIfRestartUndoesIt(t *testing.T) {
	dir := t.TempDir()
	c := openDurable(t, dir, Config{SnapshotBytes: 1 << 40})
	insert(t, c, "p", 3, "x")
	ck := filepath.Join(t.TempDir(), "ck")
	require.NoError(t, c.Save(ck))
	require.NoError(t, c.snapshot())
	insert(t, c, "q", 2, "x")
	require.NoError(t, c.snapshot())
	snaps := c.j.Snapshots()
	require.Len(t, snaps, 2)
	oldest := snaps[1].Path
	require.NoError(t, os.Remove(oldest))
	require.NoError(t, os.MkdirAll(filepath.Join(oldest, "x"), 0o700))
	insert(t, c, "r", 1, "x")
	require.NoError(t, c.WaitDurable(context.Background()))
	before := stateBytes(t, c)

	_, loadErr := c.Load(ck)
	loaded := stateBytes(t, c)
	c.Close()

	d, err := New(Config{Dir: dir})
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, loadErr, "a load whose snapshot is in place")
	assert.NotEqual(t, before, loaded)
	assert.Equal(t, loaded, stateBytes(t, d), "the restart keeps the loaded state")
}

// Stats lists the tasks that consumed rows, by name, the same before a
// crash and after: a fetch that takes nothing (nothing ready yet) makes
// its task a slot (which, before TestFetchOfNothingMakesItsTaskAsReplayDoes,
// a replay of the log did not), and slots follow first use.
func TestTasksOfStatsSurviveACrash(t *testing.T) {
	dir := t.TempDir()
	c := openDurable(t, dir, Config{SnapshotBytes: 1 << 40})
	m := insert(t, c, "p", 2, "x")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	commitDense(t, c, "p", m.Indexes[:1], "x")
	// One row is ready, the fetch of "early" wants two: it takes nothing.
	got, err := c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "early", Fields: []string{"x"}, BatchSize: 2})
	if err == nil {
		require.Zero(t, got.Len())
	}
	commitDense(t, c, "p", m.Indexes[1:], "x")
	fetch(t, c, "p", "late", 1, "x")
	before, err := c.Stats("p")
	require.NoError(t, err)
	require.Equal(t, []engine.TaskStats{{Task: "late", Consumed: 1, Progress: 0.5}}, before.Tasks, "the task that consumed a row")
	require.NoError(t, c.WaitDurable(context.Background()))
	crash(t, c)

	d := openDurable(t, dir, Config{})
	defer d.Close()
	after, err := d.Stats("p")
	require.NoError(t, err)
	assert.Equal(t, before.Tasks, after.Tasks, "Stats' tasks before the crash and after")
}

// A fetch that consumes nothing (too few rows ready, a wait that times
// out, a keyed fetch, the end of a done partition) still makes its task a
// slot in the partition, through the ready view it reads. Nothing was
// logged for it: a controller restarted from its log alone did not know
// the task, and gave the next task to consume the slot the running one
// had given the first, so its state, its checkpoints and the tasks it
// counts against maxTasks were not the running one's.
func TestFetchOfNothingMakesItsTaskAsReplayDoes(t *testing.T) {
	for _, setup := range []struct {
		name string
		// fetch makes partition "p" with field x and fetches nothing for
		// task "idle"; its error is checked by want.
		fetch func(t *testing.T, c *Controller) error
		want  error
	}{
		{"too few rows", func(t *testing.T, c *Controller) error {
			m := insert(t, c, "p", 2, "x")
			commitDense(t, c, "p", m.Indexes[:1], "x")
			got, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "idle", Fields: []string{"x"}, BatchSize: 2})
			require.Zero(t, got.Len())
			return err
		}, nil},
		{"wait timed out", func(t *testing.T, c *Controller) error {
			m := insert(t, c, "p", 2, "x")
			commitDense(t, c, "p", m.Indexes[:1], "x")
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			defer cancel()
			_, err := c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "idle", Fields: []string{"x"}, BatchSize: 2, Wait: true})
			return err
		}, context.DeadlineExceeded},
		{"named sampler", func(t *testing.T, c *Controller) error {
			m := insert(t, c, "p", 2, "x")
			commitDense(t, c, "p", m.Indexes[:1], "x")
			got, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "idle", Fields: []string{"x"}, BatchSize: 2, Sampler: engine.SamplerSpec{Name: engine.SamplerGRPO, N: 2}})
			require.Zero(t, got.Len())
			return err
		}, nil},
		{"keyed", func(t *testing.T, c *Controller) error {
			m := insert(t, c, "p", 2, "x")
			commitDense(t, c, "p", m.Indexes[:1], "x")
			got, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "idle", Fields: []string{"x"}, BatchSize: 2, Key: "k"})
			require.Zero(t, got.Len())
			return err
		}, nil},
		{"done", func(t *testing.T, c *Controller) error {
			m := insert(t, c, "p", 2, "x")
			commitDense(t, c, "p", m.Indexes, "x")
			_, err := c.ClearRows("p", m.Indexes)
			require.NoError(t, err)
			require.NoError(t, c.MarkDone("p"))
			_, err = c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "idle", Fields: []string{"x"}, BatchSize: 2})
			return err
		}, engine.ErrDone},
	} {
		for _, way := range restartWays {
			t.Run(setup.name+"/"+way.name, func(t *testing.T) {
				dir := t.TempDir()
				cfg := Config{SnapshotBytes: 1 << 40}
				c := openDurable(t, dir, cfg)
				if err := setup.fetch(t, c); setup.want != nil {
					require.ErrorIs(t, err, setup.want)
				} else {
					require.NoError(t, err)
				}
				// A task that consumes after it: the running controller
				// gave it the second slot.
				m := insert(t, c, "p", 1, "x")
				commitDense(t, c, "p", m.Indexes, "x")
				require.Equal(t, 1, fetch(t, c, "p", "late", 1, "x").Len())
				require.NoError(t, c.WaitDurable(context.Background()))
				want := stateBytes(t, c)
				way.stop(t, c)

				c = openDurable(t, dir, cfg)
				defer c.Close()
				require.Equal(t, want, stateBytes(t, c), "the state after the restart")
			})
		}
	}
}

// Tasks lists every task the partition knows, those Stats leaves out
// (nothing consumed: a fetch that took nothing, a reset) at 0, and the
// same after a crash: the metrics keep a task's series at 0 by it.
func TestTasksListsTasksWithNothingConsumed(t *testing.T) {
	dir := t.TempDir()
	c := openDurable(t, dir, Config{SnapshotBytes: 1 << 40})
	m := insert(t, c, "p", 2, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	require.Equal(t, 2, fetch(t, c, "p", "reset", 2, "x").Len())
	got, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "idle", Fields: []string{"x"}, BatchSize: 3})
	require.NoError(t, err)
	require.Zero(t, got.Len())
	require.Equal(t, 1, fetch(t, c, "p", "late", 1, "x").Len())
	require.NoError(t, c.ResetConsumption("p", "reset"))

	want := []engine.TaskStats{{Task: "idle"}, {Task: "late", Consumed: 1, Progress: 0.5}, {Task: "reset"}}
	tasks, err := c.Tasks("p")
	require.NoError(t, err)
	require.Equal(t, want, tasks)
	st, err := c.Stats("p")
	require.NoError(t, err)
	require.Equal(t, want[1:2], st.Tasks, "Stats lists the tasks with rows consumed")
	_, err = c.Tasks("nope")
	require.ErrorContains(t, err, `"nope"`)

	require.NoError(t, c.WaitDurable(context.Background()))
	crash(t, c)
	d := openDurable(t, dir, Config{})
	defer d.Close()
	tasks, err = d.Tasks("p")
	require.NoError(t, err)
	assert.Equal(t, want, tasks, "Tasks after the crash")
}

// durability.md, "Snapshots": a snapshot is due once the log written since
// the last one outgrows both SnapshotBytes and that snapshot, after a
// restart too (the records replayed count, and the snapshot's size is
// read from its file).
func TestSnapshotDueOnceTheLogOutgrowsBoth(t *testing.T) {
	dir := t.TempDir()
	const bound = 64 << 10
	// The test asks when a snapshot is due; none is taken meanwhile.
	open := func() *Controller {
		c := openDurable(t, dir, Config{SnapshotBytes: bound})
		close(c.snapStop)
		<-c.snapDone
		c.snapStop = make(chan struct{}) // for Close
		return c
	}
	c := open()
	defer func() { c.Close() }()
	idx := insert(t, c, "p", 64, "x").Indexes
	tags := make([]engine.Tags, len(idx))
	for i := range tags {
		tags[i] = engine.Tags{"v": strings.Repeat("s", 8<<10)}
	}
	require.NoError(t, c.SetTags("p", idx, tags)) // a state of about 512 KiB
	require.NoError(t, c.snapshot())
	snap := c.lastSnapBytes.Load()
	require.Greater(t, snap, int64(8*bound))
	require.False(t, c.snapshotDue())

	small := strings.Repeat("t", 16<<10)
	setTag := func() {
		require.NoError(t, c.SetTags("p", idx[:1], []engine.Tags{{"w": small}}))
		require.NoError(t, c.WaitDurable(context.Background()))
	}
	for c.j.SinceSnapshot() < 2*bound {
		setTag()
	}
	assert.False(t, c.snapshotDue(), "%d bytes logged since a snapshot of %d: past SnapshotBytes, not past the snapshot", c.j.SinceSnapshot(), snap)

	crash(t, c)
	c = open()
	assert.Equal(t, snap, c.lastSnapBytes.Load(), "the snapshot's size, read at the restart")
	assert.False(t, c.snapshotDue(), "after the restart")
	for c.j.SinceSnapshot() < snap {
		setTag()
	}
	assert.True(t, c.snapshotDue(), "%d bytes logged since a snapshot of %d", c.j.SinceSnapshot(), snap)
}
