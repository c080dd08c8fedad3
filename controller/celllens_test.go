package controller

import (
	"context"
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// cellsFrom returns cells on unit 1 of the given lengths, back to back
// from base.
func cellsFrom(base uint64, lens ...uint64) []engine.CellLoc {
	out := make([]engine.CellLoc, len(lens))
	for i, n := range lens {
		out[i] = engine.CellLoc{Unit: 1, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: base, Len: n}}
		base += n
	}
	return out
}

// A commit whose location for a cell is not as long as the cell's shape
// needs (product(dims) × the dtype's size) is refused, naming the
// partition, field, row and both lengths, and changes nothing: readers
// would refuse the cell as corrupt on every read. Cells of the right
// length, opaque cells of any length and cells without a location are
// taken.
func TestCommitRefusesCellsOfTheWrongLength(t *testing.T) {
	dense := func(locs []engine.CellLoc) engine.CommitField {
		return engine.CommitField{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2, 3}, Locs: locs}
	}
	ragged := func(locs []engine.CellLoc) engine.CommitField {
		return engine.CommitField{Name: "x", DType: engine.Int16, Kind: engine.Ragged, Shapes: []engine.Shape{{3}, {}, {2, 0}}, Locs: locs}
	}
	run := func(f engine.CommitField, count int, n uint64) engine.CommitField {
		f.Locs, f.Runs = nil, []engine.CellRun{{Unit: 1, First: engine.RemoteAddr{Segment: 1, Gen: 1, Len: n}, Count: count}}
		return f
	}
	for _, tc := range []struct {
		name string
		cf   engine.CommitField
		want string // "" for a commit that is taken
	}{
		{"dense", dense(cellsFrom(0, 24, 24, 24)), ""},
		{"dense short", dense(cellsFrom(0, 24, 23, 24)), `field "x" of partition "p", row 1: location holds 23 bytes, float32(2,3) needs 24`},
		{"dense long", dense(cellsFrom(0, 24, 24, 64)), `row 2: location holds 64 bytes, float32(2,3) needs 24`},
		{"dense run", run(dense(nil), 3, 24), ""},
		{"dense run of another length", run(dense(nil), 3, 8), `row 0: location holds 8 bytes, float32(2,3) needs 24`},
		{"scalar", engine.CommitField{Name: "x", DType: engine.Float64, Kind: engine.Dense, Locs: cellsFrom(0, 8, 8, 8)}, ""},
		{"scalar of another length", engine.CommitField{Name: "x", DType: engine.Float64, Kind: engine.Dense, Locs: cellsFrom(0, 8, 4, 8)}, `row 1: location holds 4 bytes, float64() needs 8`},
		{"ragged", ragged(cellsFrom(0, 6, 2, 0)), ""},
		{"ragged row of another shape's length", ragged(cellsFrom(0, 6, 6, 0)), `row 1: location holds 6 bytes, int16() needs 2`},
		{"ragged empty row with bytes", ragged(cellsFrom(0, 6, 2, 4)), `row 2: location holds 4 bytes, int16(2,0) needs 0`},
		{"ragged run", run(ragged(nil), 3, 2), `row 0: location holds 2 bytes, int16(3) needs 6`},
		{"opaque of any length", engine.CommitField{Name: "x", DType: engine.Bytes, Kind: engine.Opaque, Locs: cellsFrom(0, 0, 5, 1000)}, ""},
		{"no locations", engine.CommitField{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2, 3}}, ""},
		{"cells not stored", dense([]engine.CellLoc{{}, {}, {}}), ""},
		// Counts whose sum wraps around to the rows' 3 passed the count
		// check: this commit was taken (with a ragged field the length
		// check indexed past the shapes instead: a panic).
		{"runs whose counts wrap around", func() engine.CommitField {
			f := dense(nil)
			f.Locs = nil
			for _, n := range []int{math.MaxInt, math.MaxInt, 5} {
				f.Runs = append(f.Runs, engine.CellRun{Unit: 1, First: engine.RemoteAddr{Segment: 1, Gen: 1, Len: 24}, Count: n})
			}
			return f
		}(), `field "x" has a run of 9223372036854775807 cells (0 of 3 rows covered before it)`},
		{"runs of more cells than rows", run(dense(nil), 4, 24), `field "x" has a run of 4 cells (0 of 3 rows covered before it)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newController(t, DefaultConfig())
			m := insert(t, c, "p", 3, "x")
			_, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: []engine.CommitField{tc.cf}})
			st, serr := c.ProductionStatus("p", []string{"x"})
			if tc.want == "" {
				require.NoError(t, err)
				require.NoError(t, serr)
				assert.Equal(t, [][]bool{{true}, {true}, {true}}, st.Produced, "rows produced")
				return
			}
			require.ErrorIs(t, err, engine.ErrInvalid)
			assert.Contains(t, err.Error(), tc.want)
			assert.ErrorIs(t, serr, engine.ErrNotFound, "x after a refused commit: no row has it")
		})
	}
}

// A refused overwrite leaves the cell it would have replaced as it was.
func TestCommitOfTheWrongLengthKeepsThePreviousCell(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 2, "x")
	x := func(locs []engine.CellLoc) []engine.CommitField {
		return []engine.CommitField{{Name: "x", DType: engine.Int32, Kind: engine.Dense, Shape: engine.Shape{4}, Locs: locs}}
	}
	_, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: x(cellsFrom(0, 16, 16))})
	require.NoError(t, err)
	before, err := c.RowsMeta("p", m.Indexes, []string{"x"})
	require.NoError(t, err)

	_, err = c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: x(cellsFrom(1024, 16, 12))})
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), fmt.Sprintf(`field "x" of partition "p", row %d: location holds 12 bytes, int32(4) needs 16`, m.Indexes[1]))
	after, err := c.RowsMeta("p", m.Indexes, []string{"x"})
	require.NoError(t, err)
	assert.Equal(t, before.Cells, after.Cells, "cells after a refused overwrite")

	replaced, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: x(cellsFrom(1024, 16, 16))})
	require.NoError(t, err)
	assert.Equal(t, before.Cells["x"], replaced, "a right-length overwrite replaces the old cells")
}

// CommitKeys refuses a cell of the wrong length as Commit does, naming
// the key, before it creates the partition or any key.
func TestCommitKeysRefusesCellsOfTheWrongLength(t *testing.T) {
	c := newController(t, DefaultConfig())
	req := keysCommit("p", []string{"a", "b"}, 1, "x") // float32(2): 8 bytes a cell
	req.Fields[0].Locs[1].Addr.Len = 16
	_, err := c.CommitKeys(req)
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), `field "x" of partition "p", key "b": location holds 16 bytes, float32(2) needs 8`)
	assert.Empty(t, c.Partitions(), "partitions after a refused put")

	_, err = c.CommitKeys(keysCommit("p", []string{"a"}, 1, "x"))
	require.NoError(t, err)
	before, err := c.ResolveKeys("p", []string{"a"}, []string{"x"}, false)
	require.NoError(t, err)
	req = keysCommit("p", []string{"a", "new"}, 2, "x")
	req.Fields[0].Locs[0].Addr.Len = 4
	_, err = c.CommitKeys(req)
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), `key "a": location holds 4 bytes, float32(2) needs 8`)
	after, err := c.ResolveKeys("p", []string{"a"}, []string{"x"}, false)
	require.NoError(t, err)
	assert.Equal(t, before.Cells, after.Cells, "a's cell after a refused overwrite")
	assert.Equal(t, []bool{true, false}, c.HasKeys("p", []string{"a", "new"}), "keys after a refused put")
}

// A log written before commits were checked may hold a commit of the
// wrong length; replaying it takes it as the controller took it then, so
// the log still loads (reads of that row fail as they did).
func TestReplayTakesALoggedCommitOfTheWrongLength(t *testing.T) {
	dir := t.TempDir()
	c := openDurable(t, dir, Config{SnapshotBytes: 1 << 40})
	m := insert(t, c, "p", 1, "x")
	loc := engine.CellLoc{Unit: 1, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Len: 64}}
	p, _ := c.lock("p")
	c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Commit{Commit: commitOp(p, m.Indexes, []engine.CommitField{
		{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}, Locs: []engine.CellLoc{loc}},
	})}})
	p.mu.Unlock()
	require.NoError(t, c.WaitDurable(context.Background()))
	crash(t, c)

	d := openDurable(t, dir, Config{})
	defer d.Close()
	got, err := d.RowsMeta("p", m.Indexes, []string{"x"})
	require.NoError(t, err)
	assert.Equal(t, []engine.CellLoc{loc}, got.Cells["x"])
}
