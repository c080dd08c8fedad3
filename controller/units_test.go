package controller

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

func alive(us []engine.UnitInfo) map[engine.UnitID]bool {
	out := map[engine.UnitID]bool{}
	for _, u := range us {
		out[u.ID] = u.Alive
	}
	return out
}

func TestRegistryLiveness(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := NewRegistry(5 * time.Second)
		a, err := r.Register(engine.UnitInfo{Incarnation: 0xa, Host: "h1", Addrs: []string{"unix:///a"}, Name: "a", Capacity: 100}, true)
		if err != nil {
			t.Fatal(err)
		}
		b, err := r.Register(engine.UnitInfo{Incarnation: 0xb, Host: "h2", Name: "b"}, true)
		if err != nil {
			t.Fatal(err)
		}
		if a != 1 || b != 2 {
			t.Fatalf("ids = %d, %d; want 1, 2", a, b)
		}
		start := time.Now()
		for range 10 {
			time.Sleep(time.Second)
			if err := r.Heartbeat(engine.UnitInfo{ID: a, Incarnation: 0xa, Capacity: 100, Used: 40, Segments: 2, PageSize: 4096, HugePages: true}); err != nil {
				t.Fatal(err)
			}
		}
		want := map[engine.UnitID]bool{1: true, 2: false}
		if diff := cmp.Diff(want, alive(r.Units())); diff != "" {
			t.Fatalf("liveness after 10 s (-want +got):\n%s", diff)
		}
		u, ok := r.Unit(a)
		wantA := engine.UnitInfo{ID: 1, Incarnation: 0xa, Host: "h1", Addrs: []string{"unix:///a"}, Name: "a", Capacity: 100, Used: 40, Segments: 2,
			PageSize: 4096, HugePages: true, LastHeartbeat: start.Add(10 * time.Second), Alive: true}
		if diff := cmp.Diff(wantA, u); !ok || diff != "" {
			t.Fatalf("unit %d (-want +got):\n%s", a, diff)
		}
		// A dead unit comes back with a heartbeat or a re-registration.
		if got, err := r.Register(engine.UnitInfo{ID: b, Incarnation: 0xb, Host: "h2", Name: "b2"}, true); err != nil || got != b {
			t.Fatalf("re-register %d = %d, %v", b, got, err)
		}
		if u, _ := r.Unit(b); !u.Alive || u.Name != "b2" {
			t.Fatalf("re-registered unit = %+v, want alive and renamed", u)
		}
		// The boundary: alive at exactly the timeout, dead just after.
		time.Sleep(5 * time.Second)
		if u, _ := r.Unit(b); !u.Alive {
			t.Fatal("unit dead at exactly the timeout")
		}
		time.Sleep(time.Nanosecond)
		if u, _ := r.Unit(b); u.Alive {
			t.Fatal("unit alive after the timeout")
		}
	})
}

// TestRegistryIDs: ids are never reused, and an id stays bound to the
// incarnation it was assigned to: a unit that comes back as another
// incarnation, with an id the registry does not know, or from another
// cluster, is a new unit under a new id.
func TestRegistryIDs(t *testing.T) {
	r := NewRegistry(time.Second)
	for want := engine.UnitID(1); want <= 3; want++ {
		if got, err := r.Register(engine.UnitInfo{Incarnation: uint64(want), Host: "h"}, true); err != nil || got != want {
			t.Fatalf("register = %d, %v; want %d", got, err, want)
		}
	}
	for _, tc := range []struct {
		name  string
		u     engine.UnitInfo
		known bool
		want  engine.UnitID
	}{
		{"re-register the same incarnation", engine.UnitInfo{ID: 2, Incarnation: 2, Host: "h"}, true, 2},
		{"another incarnation under a known id", engine.UnitInfo{ID: 2, Incarnation: 99, Host: "h"}, true, 4},
		{"an id this registry never gave", engine.UnitInfo{ID: 10, Incarnation: 10, Host: "h"}, true, 5},
		{"the same incarnation from another cluster", engine.UnitInfo{ID: 3, Incarnation: 3, Host: "h"}, false, 6},
	} {
		got, err := r.Register(tc.u, tc.known)
		if err != nil || got != tc.want {
			t.Fatalf("%s: register = %d, %v; want %d", tc.name, got, err, tc.want)
		}
	}
	// Id 2 still names its first incarnation.
	if u, _ := r.Unit(2); u.Incarnation != 2 {
		t.Fatalf("unit 2 is incarnation %x, want 2", u.Incarnation)
	}
	if !r.bound(4, 99) || r.bound(2, 99) {
		t.Fatal("incarnation 99 is not bound to unit 4 alone")
	}
	if err := r.Heartbeat(engine.UnitInfo{ID: 2, Incarnation: 99}); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("heartbeat of unit 2 from another incarnation: %v, want ErrNotFound", err)
	}
	r.next = engine.LostUnit
	if _, err := r.Register(engine.UnitInfo{Incarnation: 7, Host: "h"}, true); !errors.Is(err, engine.ErrCapacity) {
		t.Fatalf("register with the ids spent: %v, want ErrCapacity", err)
	}
}

func TestRegistryBadInput(t *testing.T) {
	r := NewRegistry(time.Minute)
	if _, err := r.Register(engine.UnitInfo{Incarnation: 1, Host: "h1"}, true); err != nil {
		t.Fatal(err)
	}
	long := string(make([]byte, maxUnitString+1))
	for _, tc := range []struct {
		name string
		u    engine.UnitInfo
	}{
		{"negative capacity", engine.UnitInfo{Incarnation: 2, Capacity: -1}},
		{"empty address", engine.UnitInfo{Incarnation: 2, Addrs: []string{""}}},
		{"too many addresses", engine.UnitInfo{Incarnation: 2, Addrs: make([]string, maxUnitAddrs+1)}},
		{"long name", engine.UnitInfo{Incarnation: 2, Name: long}},
		{"no incarnation", engine.UnitInfo{Host: "h2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := r.Register(tc.u, true); !errors.Is(err, engine.ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
		})
	}
	if err := r.Heartbeat(engine.UnitInfo{ID: 7, Incarnation: 1}); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("heartbeat of an unknown unit: %v, want ErrNotFound", err)
	}
	if err := r.Heartbeat(engine.UnitInfo{ID: 1, Incarnation: 1, Used: -5}); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("heartbeat with negative figures: %v, want ErrInvalid", err)
	}
}

func TestRegistryFullEvictsDead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := NewRegistry(time.Second)
		for i := range MaxUnits {
			if _, err := r.Register(engine.UnitInfo{Incarnation: uint64(i + 1)}, true); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := r.Register(engine.UnitInfo{Incarnation: 1 << 40}, true); !errors.Is(err, engine.ErrCapacity) {
			t.Fatalf("register into a full registry of live units: %v, want ErrCapacity", err)
		}
		time.Sleep(2 * time.Second)
		id, err := r.Register(engine.UnitInfo{Incarnation: 1 << 41}, true)
		if err != nil {
			t.Fatalf("register after every unit died: %v", err)
		}
		if id != MaxUnits+1 {
			t.Fatalf("new id = %d, want %d (ids are never reused)", id, MaxUnits+1)
		}
		if n := len(r.Units()); n != MaxUnits {
			t.Fatalf("%d units after eviction, want %d", n, MaxUnits)
		}
	})
}

func unitIDs(us []engine.UnitInfo) []engine.UnitID {
	out := make([]engine.UnitID, 0, len(us))
	for _, u := range us {
		out = append(out, u.ID)
	}
	return out
}

// A dead unit evicted from a full registry stays evicted across a
// restart, whether the restart replays the eviction from the log (with
// or without a snapshot from before it) or reads a snapshot taken after
// it: the same units are listed, the evicted one's heartbeat is refused,
// and its cells still name it (a unit no one lists: they read as lost).
// Replay used to bring the evicted unit back, alive for a timeout, with
// the registry over its bound.
func TestUnitEvictionSurvivesRestart(t *testing.T) {
	for _, tc := range []struct {
		name       string
		snapBefore bool // a snapshot of the state before the eviction
		stop       func(testing.TB, *Controller)
	}{
		{"log", false, crash},
		{"snapshot before and log", true, crash},
		{"snapshot after", false, func(t testing.TB, c *Controller) { require.NoError(t, c.Close()) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c := openDurable(t, dir, Config{})
			c.units.maxUnits = 2
			a, err := c.units.Register(engine.UnitInfo{Incarnation: 0xa, Host: "h"}, true)
			require.NoError(t, err)
			b, err := c.units.Register(engine.UnitInfo{Incarnation: 0xb, Host: "h"}, true)
			require.NoError(t, err)
			_, err = c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: []string{"k"}, Fields: []engine.CommitField{
				{Name: "v", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{}, Locs: []engine.CellLoc{{Unit: a, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Len: 8}}}}}})
			require.NoError(t, err)
			// a's reconcile fenced a segment it reclaimed.
			c.fences.mu.Lock()
			fs := []*wirepb.SegmentFence{{Segment: 2, Gen: 1}}
			c.fences.raiseLocked(a, fs)
			c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Fence{Fence: &wirepb.FenceOp{UnitId: uint32(a), Fences: fs}}})
			c.fences.mu.Unlock()
			if tc.snapBefore {
				require.NoError(t, c.snapshot())
			}
			c.units.mu.Lock()
			c.units.units[a].LastHeartbeat = time.Now().Add(-time.Hour) // dead
			c.units.mu.Unlock()
			n, err := c.units.Register(engine.UnitInfo{Incarnation: 0xc, Host: "h"}, true)
			require.NoError(t, err, "register into a full registry with a dead unit")
			require.Equal(t, []engine.UnitID{b, n}, unitIDs(c.units.Units()), "a was evicted")
			require.NoError(t, c.WaitDurable(context.Background()))
			tc.stop(t, c)

			d := openDurable(t, dir, Config{})
			defer d.Close()
			assert.Equal(t, []engine.UnitID{b, n}, unitIDs(d.units.Units()), "the units after the restart")
			assert.ErrorIs(t, d.units.Heartbeat(engine.UnitInfo{ID: a, Incarnation: 0xa}), engine.ErrNotFound, "the evicted unit's heartbeat")
			m, err := d.ResolveKeys("p", []string{"k"}, nil, false)
			require.NoError(t, err)
			assert.Equal(t, a, m.Cells["v"][0].Unit, "the cell on the evicted unit")
			assert.NotContains(t, d.fences.m, a, "the evicted unit's fences")
			_, err = d.CommitKeys(engine.KeysCommit{Partition: "p", Keys: []string{"k2"}, Fields: []engine.CommitField{
				{Name: "v", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{}, Locs: []engine.CellLoc{{Unit: a, Addr: engine.RemoteAddr{Segment: 1, Gen: 2, Len: 8}}}}}})
			assert.ErrorIs(t, err, engine.ErrLost, "a commit naming the evicted unit")
			again, err := d.units.Register(engine.UnitInfo{Incarnation: 0xd, Host: "h"}, true)
			require.NoError(t, err)
			assert.Equal(t, n+1, again, "ids are never handed out twice")
		})
	}
}

// What the controller keeps per unit goes with a unit evicted from the
// registry (units come and go: each restart of a unit process is a new
// id): its fences (kept in memory, logged, in every snapshot) and its
// free queue. A commit naming an evicted unit is refused with ErrLost.
func TestUnitChurnForgetsEvictedUnits(t *testing.T) {
	c := newController(t, DefaultConfig())
	c.units.maxUnits = 2
	s := NewServer(c, ServerConfig{})
	t.Cleanup(func() { s.Close() })
	const rounds = 20
	for i := range rounds {
		inc := uint64(100 + i)
		id, err := c.units.Register(engine.UnitInfo{Incarnation: inc, Host: "h"}, true)
		require.NoError(t, err)
		// The unit reconciles after registering (fences), and something
		// freed on it is queued.
		_, err = c.Reconcile(ReconcileRequest{Unit: id, Incarnation: inc, Full: true, Segments: []uint32{1},
			Fences: []SegmentFence{{1, 1}}, Last: true, LiveSegments: []uint32{1}, NextSegment: 2})
		require.NoError(t, err)
		s.frees.add([]engine.CellLoc{loc(id, 1, 1, 0, 8)})
		// Then it dies (its process restarts: a new incarnation, a new id).
		c.units.mu.Lock()
		c.units.units[id].LastHeartbeat = time.Now().Add(-time.Hour)
		c.units.mu.Unlock()
	}
	require.NoError(t, c.WaitDurable(context.Background()))
	assert.LessOrEqual(t, len(c.units.Units()), 2, "the registry is bounded")

	registered := map[engine.UnitID]bool{}
	for _, u := range c.units.Units() {
		registered[u.ID] = true
	}
	c.fences.mu.RLock()
	var fenced []engine.UnitID
	for id := range c.fences.m {
		if !registered[id] {
			fenced = append(fenced, id)
		}
	}
	c.fences.mu.RUnlock()
	assert.Empty(t, fenced, "fences kept (and snapshotted) for units evicted from the registry")

	s.frees.mu.Lock()
	var queued []engine.UnitID
	for id := range s.frees.units {
		if !registered[id] {
			queued = append(queued, id)
		}
	}
	s.frees.mu.Unlock()
	assert.Empty(t, queued, "free queues kept for units evicted from the registry")

	_, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: insert(t, c, "p", 1, "x").Indexes, Fields: []engine.CommitField{
		{Name: "x", DType: engine.Bytes, Kind: engine.Opaque, Locs: []engine.CellLoc{loc(1, 1, 1, 0, 8)}},
	}})
	require.ErrorIs(t, err, engine.ErrLost, "a commit naming an evicted unit")
	require.ErrorContains(t, err, "storage unit 1 was evicted")
}
