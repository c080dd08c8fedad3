package controller

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// refusedSetup registers two units, drains the second and fences the
// first's segment 9 up to generation 5, so that commits naming either are
// refused under the partition's lock.
func refusedSetup(t *testing.T, c *Controller) (ok, draining engine.UnitID) {
	t.Helper()
	ok, err := c.units.Register(engine.UnitInfo{Incarnation: 1, Host: "h", Name: "ok"}, true)
	require.NoError(t, err)
	draining, err = c.units.Register(engine.UnitInfo{Incarnation: 2, Host: "h", Name: "draining"}, true)
	require.NoError(t, err)
	_, err = c.DrainUnit(draining, true)
	require.NoError(t, err)
	c.fences.mu.Lock()
	fs := []*wirepb.SegmentFence{{Segment: 9, Gen: 5}}
	c.fences.raiseLocked(ok, fs)
	c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Fence{Fence: &wirepb.FenceOp{UnitId: uint32(ok), Fences: fs}}})
	c.fences.mu.Unlock()
	return ok, draining
}

func int64Field(u engine.UnitID, seg, gen uint32) engine.CommitField {
	return engine.CommitField{Name: "v", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{},
		Locs: []engine.CellLoc{{Unit: u, Addr: engine.RemoteAddr{Segment: seg, Gen: gen, Len: 8}}}}
}

// TestRefusedFirstCommitCreatesNoPartition: a request that would create
// its partition and is refused under the partition's lock (a draining
// unit, a fenced segment, too many fields, fields a new partition lacks)
// leaves no partition behind: not listed, not found, nothing of it in the
// log (a restart that replays the log, and one from the snapshot, find
// none), and its pre-allocated indexes given back.
func TestRefusedFirstCommitCreatesNoPartition(t *testing.T) {
	manyFields := make([]engine.CommitField, maxFields+1)
	for i := range manyFields {
		manyFields[i] = engine.CommitField{Name: fmt.Sprintf("f%d", i), DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{}}
	}
	cases := []struct {
		name    string
		refused func(c *Controller, ok, draining engine.UnitID) error
		want    error
	}{
		{"draining unit", func(c *Controller, _, draining engine.UnitID) error {
			_, err := c.CommitKeys(engine.KeysCommit{Partition: "new", Keys: []string{"k"}, Fields: []engine.CommitField{int64Field(draining, 1, 1)}})
			return err
		}, ErrDraining},
		{"fenced segment", func(c *Controller, ok, _ engine.UnitID) error {
			_, err := c.CommitKeys(engine.KeysCommit{Partition: "new", Keys: []string{"k"}, Fields: []engine.CommitField{int64Field(ok, 9, 3)}})
			return err
		}, engine.ErrLost},
		{"too many fields", func(c *Controller, _, _ engine.UnitID) error {
			_, err := c.CommitKeys(engine.KeysCommit{Partition: "new", Keys: []string{"k"}, Fields: manyFields})
			return err
		}, engine.ErrCapacity},
		{"resolve keys with unknown fields", func(c *Controller, _, _ engine.UnitID) error {
			_, err := c.ResolveKeys("new", []string{"k"}, []string{"v"}, true)
			return err
		}, engine.ErrNotFound},
	}
	for _, tc := range cases {
		for _, preAlloc := range []int{0, 4} {
			t.Run(fmt.Sprintf("%s/prealloc=%d", tc.name, preAlloc), func(t *testing.T) {
				dir := t.TempDir()
				c := openDurable(t, dir, Config{PreAlloc: preAlloc})
				ok, draining := refusedSetup(t, c)
				_, err := c.CreatePartition("old")
				require.NoError(t, err)
				allocated, _ := c.Indexes()

				err = tc.refused(c, ok, draining)
				require.ErrorIs(t, err, tc.want)
				assert.Equal(t, []string{"old"}, c.Partitions(), "the refused request's partition is not listed")
				_, err = c.Stats("new")
				require.ErrorIs(t, err, engine.ErrNotFound)
				now, _ := c.Indexes()
				assert.Equal(t, allocated, now, "the new partition's pre-allocated indexes went back")

				// Nothing of it reached the log: a restart that replays the
				// log, and one from the snapshot Close takes, find none.
				crash(t, c)
				c = openDurable(t, dir, Config{PreAlloc: preAlloc})
				assert.Equal(t, []string{"old"}, c.Partitions(), "after a restart that replays the log")
				require.NoError(t, c.Close())
				c = openDurable(t, dir, Config{PreAlloc: preAlloc})
				defer c.Close()
				assert.Equal(t, []string{"old"}, c.Partitions(), "after a restart from the snapshot")

				// The partition can be made after all.
				_, err = c.CommitKeys(engine.KeysCommit{Partition: "new", Keys: []string{"k"}, Fields: []engine.CommitField{int64Field(ok, 1, 1)}})
				require.NoError(t, err)
				assert.Equal(t, []string{"new", "old"}, c.Partitions())
			})
		}
	}
}

// TestRefusedFirstCommitRacesCreator: refused and accepted first commits
// to the same new partition, concurrently: the refused ones take away
// nothing the accepted ones made (the partition, its keys, its record in
// the log), and a partition only refused requests reached does not exist.
func TestRefusedFirstCommitRacesCreator(t *testing.T) {
	dir := t.TempDir()
	c := openDurable(t, dir, Config{PreAlloc: 2})
	ok, draining := refusedSetup(t, c)
	const rounds, workers = 40, 8
	want := map[string]int{} // partition → keys
	for i := range rounds {
		pid := fmt.Sprintf("p%d", i)
		var wg sync.WaitGroup
		accepted := 0
		for w := range workers {
			// Round 0 mod 4: refused only. Otherwise every third worker is
			// accepted, and in odd rounds one more creates the partition
			// empty.
			good := i%4 != 0 && w%3 == 0
			create := i%2 == 1 && w == 1
			if good {
				accepted++
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if create {
					_, err := c.CreatePartition(pid)
					assert.NoError(t, err)
					return
				}
				u := draining
				if good {
					u = ok
				}
				_, err := c.CommitKeys(engine.KeysCommit{Partition: pid, Keys: []string{fmt.Sprintf("k%d", w)}, Fields: []engine.CommitField{int64Field(u, 1, 1)}})
				if good {
					assert.NoError(t, err)
				} else {
					assert.ErrorIs(t, err, ErrDraining)
				}
			}()
		}
		wg.Wait()
		if accepted > 0 || i%2 == 1 {
			want[pid] = accepted
		}
	}
	check := func(c *Controller, when string) {
		t.Helper()
		got := map[string]int{}
		for _, pid := range c.Partitions() {
			st, err := c.Stats(pid)
			require.NoError(t, err, when)
			got[pid] = st.Keys
		}
		assert.Equal(t, want, got, when)
	}
	check(c, "live")
	crash(t, c)
	c = openDurable(t, dir, Config{PreAlloc: 2})
	check(c, "after a restart that replays the log")
	require.NoError(t, c.Close())
	c = openDurable(t, dir, Config{PreAlloc: 2})
	defer c.Close()
	check(c, "after a restart from the snapshot")
}

// TestRefusedFirstCommitStateMatchesReplay: a refused first request
// leaves the live state exactly as a replay of the log finds it: the
// partition's gen and its pre-allocated indexes (fresh, or taken from the
// reuse queue) are given back as if never taken, so that a crash and a
// restart come back with the state the controller had.
func TestRefusedFirstCommitStateMatchesReplay(t *testing.T) {
	for _, preAlloc := range []int{0, 4} {
		for _, reuse := range []bool{false, true} {
			t.Run(fmt.Sprintf("prealloc=%d/reuse=%v", preAlloc, reuse), func(t *testing.T) {
				dir := t.TempDir()
				c := openDurable(t, dir, Config{PreAlloc: preAlloc})
				ok, draining := refusedSetup(t, c)
				_, err := c.CommitKeys(engine.KeysCommit{Partition: "old", Keys: []string{"a"}, Fields: []engine.CommitField{int64Field(ok, 1, 1)}})
				require.NoError(t, err)
				if reuse {
					// Indexes in the reuse queue: the pre-allocation takes
					// them first.
					_, err = c.CommitKeys(engine.KeysCommit{Partition: "gone", Keys: []string{"x", "y"}, Tags: []engine.Tags{{"t": 1}, {"t": 2}}})
					require.NoError(t, err)
					_, err = c.ClearPartition("gone")
					require.NoError(t, err)
				}
				_, err = c.CommitKeys(engine.KeysCommit{Partition: "new", Keys: []string{"k"}, Fields: []engine.CommitField{int64Field(draining, 1, 1)}})
				require.ErrorIs(t, err, ErrDraining)
				want := stateBytes(t, c)
				require.NoError(t, c.WaitDurable(context.Background()))
				crash(t, c)
				d := openDurable(t, dir, Config{PreAlloc: preAlloc})
				defer d.Close()
				assert.Equal(t, want, stateBytes(t, d), "the state a replay of the log finds")
			})
		}
	}
}
