package controller

import (
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
