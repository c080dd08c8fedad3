package controller

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// A commit whose shape's cell size overflows, or exceeds what a cell can
// hold, is refused before it changes anything: before, only negative
// dimensions were, and a dense (2^30,2^30,16) float32 field (2^64 bytes a
// cell, 0 once wrapped) reached readers with zero-length cells.
func TestCommitRefusesAShapeWhoseCellOverflows(t *testing.T) {
	c := newController(t, Config{})
	m := insert(t, c, "p", 2)
	for _, tc := range []struct {
		name string
		f    engine.CommitField
	}{
		{"dense elements wrap to zero", engine.CommitField{Name: "f", DType: engine.Float32, Kind: engine.Dense,
			Shape: engine.Shape{1 << 30, 1 << 30, 16}}},
		{"dense bytes exceed a cell", engine.CommitField{Name: "f", DType: engine.Complex128, Kind: engine.Dense,
			Shape: engine.Shape{engine.MaxCellBytes}}},
		{"ragged bytes go negative", engine.CommitField{Name: "f", DType: engine.Int16, Kind: engine.Ragged,
			Shapes: []engine.Shape{{1}, {1 << 62}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: []engine.CommitField{tc.f}})
			require.ErrorIs(t, err, engine.ErrInvalid)
			fs, err := c.Fields("p")
			require.NoError(t, err)
			assert.Empty(t, fs, "the refused commit left a field")
		})
	}
	// The largest cell there is still commits.
	_, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: []engine.CommitField{
		{Name: "f", DType: engine.Uint8, Kind: engine.Dense, Shape: engine.Shape{1 << 20, 1 << 20}},
	}})
	require.NoError(t, err)
}

// TestShapeFlipCostsTheRow: a one-row commit that gives a row of a dense
// field another shape, and then its shape back, costs that row, not the
// partition: n flips over n rows and 4n flips over 4n rows allocate at
// most 5× apart (each flip to mixed shapes copied every row's shape into
// a table, 16× apart). What the meta and the field stats report per row
// stays: the flipped row's shape beside the others', dense where the
// rows asked for agree.
func TestShapeFlipCostsTheRow(t *testing.T) {
	dense := func(s engine.Shape) engine.CommitField {
		return engine.CommitField{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: s}
	}
	flips := func(n int) uint64 {
		c := newController(t, DefaultConfig())
		keys := make([]string, n)
		for i := range keys {
			keys[i] = fmt.Sprintf("k%d", i)
		}
		_, err := c.CommitKeys(keysCommit("p", keys, 1, "x"))
		require.NoError(t, err)
		flip := func(s engine.Shape) {
			_, err := c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: keys[:1], Fields: []engine.CommitField{dense(s)}})
			require.NoError(t, err)
		}
		b := bytesOf(func() {
			for range n / 3 {
				flip(engine.Shape{3})
				flip(engine.Shape{2})
			}
		})
		flip(engine.Shape{3})
		m, err := c.ResolveKeys("p", keys[:2], []string{"x"}, false)
		require.NoError(t, err)
		require.Equal(t, engine.FieldSchema{DType: engine.Float32, Kind: engine.Ragged, Shapes: []engine.Shape{{3}, {2}}}, m.Schema["x"], "k0 flipped beside k1")
		m, err = c.ResolveKeys("p", keys[1:3], []string{"x"}, false)
		require.NoError(t, err)
		require.Equal(t, engine.FieldSchema{DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}}, m.Schema["x"], "k1 and k2 agree")
		fs, err := c.Fields("p")
		require.NoError(t, err)
		require.Equal(t, []engine.FieldStats{{Name: "x", DType: engine.Float32, Kind: engine.Ragged, Produced: n}}, fs)
		flip(engine.Shape{2})
		fs, err = c.Fields("p")
		require.NoError(t, err)
		require.Equal(t, []engine.FieldStats{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}, Produced: n}}, fs)
		return b
	}
	small, large := flips(384), flips(1536)
	require.LessOrEqualf(t, large, 5*small, "128 flips over 384 rows allocated %d bytes, 512 over 1536 %d", small, large)
}
