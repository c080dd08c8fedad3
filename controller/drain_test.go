package controller

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
)

func loc(unit engine.UnitID, seg, gen uint32, off, n uint64) engine.CellLoc {
	return engine.CellLoc{Unit: unit, Addr: engine.RemoteAddr{Segment: seg, Gen: gen, Offset: off, Len: n}}
}

// drainSetup registers units 1 and 2 and commits rows 0..n-1 of field "x"
// (8 bytes each) on unit 1, back to back in segment 1 generation 1.
func drainSetup(t *testing.T, c *Controller, n int) *engine.BatchMeta {
	t.Helper()
	for _, inc := range []uint64{0xa, 0xb} {
		_, err := c.units.Register(engine.UnitInfo{Incarnation: inc, Host: "h"}, true)
		require.NoError(t, err)
	}
	m, err := c.Insert("p", n, nil)
	require.NoError(t, err)
	locs := make([]engine.CellLoc, n)
	for i := range locs {
		locs[i] = loc(1, 1, 1, uint64(8*i), 8)
	}
	_, err = c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: []engine.CommitField{{
		Name: "x", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{}, Locs: locs}}})
	require.NoError(t, err)
	return m
}

// TestMoveCellsCompareAndSet: a move applies only to cells still at their
// old location; a repeated move reports moved without freeing twice; an
// overwritten cell is not moved; the old locations are handed back to be
// freed, Moved forwards them, and UnitCells of the drained unit comes up
// empty.
func TestMoveCellsCompareAndSet(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := drainSetup(t, c, 3)
	cells, next, err := c.UnitCells(1, nil, 0, 0)
	require.NoError(t, err)
	require.Nil(t, next)
	require.Len(t, cells, 3)
	assert.Equal(t, engine.UnitCell{Partition: "p", Index: m.Indexes[1], Field: "x", Loc: loc(1, 1, 1, 8, 8)}, cells[1])

	// Row 2 is overwritten before the mover commits its copy.
	_, err = c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes[2:], Fields: []engine.CommitField{{
		Name: "x", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{}, Locs: []engine.CellLoc{loc(1, 2, 1, 0, 8)}}}})
	require.NoError(t, err)
	moves := make([]engine.CellMove, 3)
	for i, cl := range cells {
		moves[i] = engine.CellMove{Index: cl.Index, Field: cl.Field, From: cl.Loc, To: loc(2, 1, 1, uint64(8*i), 8)}
	}
	moved, freed, err := c.MoveCells("p", moves)
	require.NoError(t, err)
	assert.Equal(t, []bool{true, true, false}, moved)
	assert.Equal(t, []engine.CellLoc{loc(1, 1, 1, 0, 8), loc(1, 1, 1, 8, 8)}, freed)

	again, freed, err := c.MoveCells("p", moves)
	require.NoError(t, err)
	assert.Equal(t, moved, again, "a repeated move reports what the first did")
	assert.Empty(t, freed, "a repeated move frees nothing more")

	assert.Equal(t, []engine.CellLoc{loc(2, 1, 1, 0, 8), {}}, c.Moved([]engine.CellLoc{loc(1, 1, 1, 0, 8), loc(1, 1, 1, 16, 8)}))
	got, err := c.RowsMeta("p", m.Indexes, nil)
	require.NoError(t, err)
	assert.Equal(t, []engine.CellLoc{loc(2, 1, 1, 0, 8), loc(2, 1, 1, 8, 8), loc(1, 2, 1, 0, 8)}, got.Cells["x"])
	cells, _, err = c.UnitCells(1, nil, 0, 0)
	require.NoError(t, err)
	assert.Len(t, cells, 1, "only the overwritten row's new cell is left on unit 1")
}

func TestMoveCellsRefuses(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := drainSetup(t, c, 2)
	from := loc(1, 1, 1, 0, 8)
	_, err := c.DrainUnit(2, true)
	require.NoError(t, err)
	for name, mv := range map[string]engine.CellMove{
		"to no unit":         {Index: m.Indexes[0], Field: "x", From: from, To: loc(0, 1, 1, 0, 8)},
		"to lost storage":    {Index: m.Indexes[0], Field: "x", From: from, To: loc(engine.LostUnit, 1, 1, 0, 8)},
		"to an unknown unit": {Index: m.Indexes[0], Field: "x", From: from, To: loc(9, 1, 1, 0, 8)},
		"to a draining unit": {Index: m.Indexes[0], Field: "x", From: from, To: loc(2, 1, 1, 0, 8)},
		"of another length":  {Index: m.Indexes[0], Field: "x", From: from, To: loc(1, 5, 1, 0, 4)},
	} {
		_, _, err := c.MoveCells("p", []engine.CellMove{mv})
		assert.ErrorIs(t, err, engine.ErrInvalid, name)
	}
	moved, freed, err := c.MoveCells("cleared", []engine.CellMove{{Index: 0, Field: "x", From: from, To: loc(1, 5, 1, 0, 8)}})
	require.NoError(t, err, "a partition cleared since its cells were listed")
	assert.Equal(t, []bool{false}, moved)
	assert.Empty(t, freed)
	_, _, err = c.UnitCells(9, nil, 0, 0)
	assert.ErrorIs(t, err, engine.ErrNotFound)
	_, _, err = c.UnitCells(1, []byte{0xff}, 0, 0)
	assert.ErrorIs(t, err, engine.ErrInvalid)
}

// TestUnitCellsPages: pages of one cell walk every row once, in order.
func TestUnitCellsPages(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := drainSetup(t, c, 5)
	var got []uint64
	var cursor []byte
	for range 10 {
		cells, next, err := c.UnitCells(1, cursor, 2, 0)
		require.NoError(t, err)
		for _, cl := range cells {
			got = append(got, cl.Index)
		}
		if next == nil {
			break
		}
		cursor = next
	}
	assert.Equal(t, m.Indexes, got)
}

// TestDrainUnitRules: an unknown unit, the last live unit that takes
// placements, and undrain.
func TestDrainUnitRules(t *testing.T) {
	c := newController(t, DefaultConfig())
	drainSetup(t, c, 1)
	_, err := c.DrainUnit(7, true)
	assert.ErrorIs(t, err, engine.ErrNotFound)
	u, err := c.DrainUnit(1, true)
	require.NoError(t, err)
	assert.True(t, u.Draining)
	_, err = c.DrainUnit(2, true)
	assert.True(t, errors.Is(err, engine.ErrCapacity), "draining the last unit that takes placements: %v", err)
	u, err = c.DrainUnit(1, false)
	require.NoError(t, err)
	assert.False(t, u.Draining)
	_, err = c.DrainUnit(2, true)
	require.NoError(t, err)
}

// TestDrainSurvivesRestart: the draining mark and the moved locations
// are in the log and in snapshots, and so is where MOVED says the cells
// went.
func TestDrainSurvivesRestart(t *testing.T) {
	for _, how := range []string{"log", "snapshot"} {
		t.Run(how, func(t *testing.T) {
			dir := t.TempDir()
			c := openDurable(t, dir, Config{})
			m := drainSetup(t, c, 2)
			_, err := c.DrainUnit(1, true)
			require.NoError(t, err)
			moved, _, err := c.MoveCells("p", []engine.CellMove{{Index: m.Indexes[0], Field: "x", From: loc(1, 1, 1, 0, 8), To: loc(2, 3, 1, 0, 8)}})
			require.NoError(t, err)
			require.Equal(t, []bool{true}, moved)
			if how == "log" {
				crash(t, c)
			} else {
				require.NoError(t, c.Close())
			}
			d := openDurable(t, dir, Config{})
			defer d.Close()
			u, ok := d.units.Unit(1)
			require.True(t, ok)
			assert.True(t, u.Draining, "unit 1 is draining after a restart")
			u, _ = d.units.Unit(2)
			assert.False(t, u.Draining)
			got, err := d.RowsMeta("p", m.Indexes, nil)
			require.NoError(t, err)
			assert.Equal(t, []engine.CellLoc{loc(2, 3, 1, 0, 8), loc(1, 1, 1, 8, 8)}, got.Cells["x"])
			assert.Equal(t, []engine.CellLoc{loc(2, 3, 1, 0, 8), {}}, d.Moved([]engine.CellLoc{loc(1, 1, 1, 0, 8), loc(1, 1, 1, 8, 8)}),
				"MOVED after a restart: where the moved cell went; nothing for the one not moved")
			_, err = d.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes[1:], Fields: []engine.CommitField{{
				Name: "x", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{}, Locs: []engine.CellLoc{loc(1, 4, 1, 0, 8)}}}})
			assert.ErrorIs(t, err, engine.ErrLost, "a commit onto the unit drained before the restart")
		})
	}
}

// TestCommitToDrainingUnitRefused: once a unit is marked draining, a
// commit naming a cell on it (a put its client placed before it learned)
// is refused with ErrLost and changes nothing, through Commit and
// CommitKeys, per cell and in runs; back in service, it is taken again.
func TestCommitToDrainingUnitRefused(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := drainSetup(t, c, 2)
	_, err := c.DrainUnit(1, true)
	require.NoError(t, err)
	field := func(l engine.CellLoc) []engine.CommitField {
		return []engine.CommitField{{Name: "x", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{}, Locs: []engine.CellLoc{l}}}
	}
	_, err = c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes[:1], Fields: field(loc(1, 3, 1, 0, 8))})
	require.ErrorIs(t, err, engine.ErrLost)
	assert.Contains(t, err.Error(), "storage unit 1 is draining")
	_, err = c.CommitKeys(engine.KeysCommit{Partition: "k", Keys: []string{"a"}, Fields: field(loc(1, 3, 1, 8, 8))})
	require.ErrorIs(t, err, engine.ErrLost)
	run := []engine.CommitField{{Name: "x", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{},
		Runs: []engine.CellRun{{Unit: 1, First: engine.RemoteAddr{Segment: 3, Gen: 1, Offset: 16, Len: 8}, Count: 2}}}}
	_, err = c.CommitKeys(engine.KeysCommit{Partition: "k", Keys: []string{"a", "b"}, Fields: run})
	require.ErrorIs(t, err, engine.ErrLost, "a run on the draining unit")
	_, err = c.ResolveKeys("k", []string{"a"}, nil, false)
	require.ErrorIs(t, err, engine.ErrNotFound, "a refused commit creates no key")
	got, err := c.RowsMeta("p", m.Indexes, nil)
	require.NoError(t, err)
	assert.Equal(t, []engine.CellLoc{loc(1, 1, 1, 0, 8), loc(1, 1, 1, 8, 8)}, got.Cells["x"], "a refused commit changes nothing")

	_, err = c.CommitKeys(engine.KeysCommit{Partition: "k", Keys: []string{"a"}, Fields: field(loc(2, 3, 1, 0, 8))})
	require.NoError(t, err, "another unit takes it")
	_, err = c.DrainUnit(1, false)
	require.NoError(t, err)
	_, err = c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes[:1], Fields: field(loc(1, 3, 1, 0, 8))})
	require.NoError(t, err, "back in service")
}

// A snapshot keeps the newest maxSavedMoves moves of a full table, and
// they take a small part of the header's bound, even with large segment,
// generation and offset numbers.
func TestSavedMovesFitTheHeader(t *testing.T) {
	c := openDurable(t, t.TempDir(), Config{})
	defer c.Close()
	drainSetup(t, c, 1) // something logged: a snapshot to write
	for i := range uint64(maxMoves + 10) {
		from := loc(engine.UnitID(1+i%64), uint32(i%1000), uint32(1<<20+i), i<<12, 4096)
		c.moves.add(from, loc(engine.UnitID(65+i%64), uint32(i%1000), uint32(1<<20+i), i<<12, 4096))
	}
	require.NoError(t, c.snapshot())
	head, err := readStateHeader(c.j.Snapshots()[0].Path)
	require.NoError(t, err)
	size := proto.Size(head)
	t.Logf("header with %d moves: %d bytes", len(head.MovedFrom.GetUnit()), size)
	assert.Less(t, size, int(maxStateMessage/4))
	from, err := wire.AddrsFromPB(head.MovedFrom)
	require.NoError(t, err)
	require.Len(t, from, maxSavedMoves)
	newest := uint64(maxMoves + 9)
	assert.Equal(t, loc(engine.UnitID(1+newest%64), uint32(newest%1000), uint32(1<<20+newest), newest<<12, 4096), from[len(from)-1])
}

// A move onto a unit the registry reports dead (silent past its
// timeout, so its cells read as lost) is refused: the cell stays where it
// can be read, and its copy there is not handed back to be freed.
func TestMoveCellsRefusesDeadTarget(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := drainSetup(t, c, 1)
	_, err := c.DrainUnit(1, true)
	require.NoError(t, err)
	c.units.mu.Lock()
	c.units.units[2].LastHeartbeat = time.Now().Add(-time.Hour)
	c.units.mu.Unlock()
	require.False(t, c.units.Alive(2))

	moved, freed, err := c.MoveCells("p", []engine.CellMove{{Index: m.Indexes[0], Field: "x", From: loc(1, 1, 1, 0, 8), To: loc(2, 1, 1, 0, 8)}})
	require.ErrorIs(t, err, engine.ErrUnavailable, "a move onto a dead unit")
	require.ErrorContains(t, err, "storage unit 2")
	assert.Empty(t, freed, "the readable copy on the live unit must not be freed")
	assert.NotEqual(t, []bool{true}, moved)
	got, err := c.RowsMeta("p", m.Indexes, nil)
	require.NoError(t, err)
	assert.Equal(t, loc(1, 1, 1, 0, 8), got.Cells["x"][0], "the cell stays where it can be read")
}

// A move checked against the registry before its target was marked
// draining, and committed after (it waited for the partition's lock while
// the drain listed the unit), must not land on the draining unit: the
// drain's listing, which holds the same lock, would not see it, and the
// drain would finish with the cell still there.
func TestMoveCellsRefusesTargetMarkedDrainingMeanwhile(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := drainSetup(t, c, 1)
	p, _ := c.lock("p") // the drain's listing of another unit holds it, say
	done := make(chan error, 1)
	go func() {
		_, _, err := c.MoveCells("p", []engine.CellMove{{Index: m.Indexes[0], Field: "x", From: loc(1, 1, 1, 0, 8), To: loc(2, 1, 1, 0, 8)}})
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // the move checks its target and waits for the lock
	_, err := c.DrainUnit(2, true)
	require.NoError(t, err)
	p.mu.Unlock()
	err = <-done
	require.ErrorIs(t, err, engine.ErrInvalid, "a move onto a unit marked draining before it took the partition's lock")
	cells, _, err := c.UnitCells(2, nil, 0, 0)
	require.NoError(t, err)
	assert.Empty(t, cells, "no cell is moved onto the draining unit")
}
