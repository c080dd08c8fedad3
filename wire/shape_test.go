package wire

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// Each dimension fitting in an int32 is not enough: a shape is decoded
// only when its element count fits a cell (engine.MaxCellBytes), so a
// product of dims that wraps around never reaches the controller or a
// column.
func TestShapeFromPBRefusesAnOverflowingShape(t *testing.T) {
	all := make([]int64, 64)
	for i := range all {
		all[i] = math.MaxInt32
	}
	for _, tc := range []struct {
		name string
		dims []int64
	}{
		{"elements wrap to zero", []int64{1 << 30, 1 << 30, 16}},
		{"64 dims of 2^31-1", all},
		{"more elements than a cell holds", []int64{1 << 20, 1 << 20, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ShapeFromPB(&wirepb.Shape{Dims: tc.dims})
			require.ErrorIs(t, err, engine.ErrInvalid, "decoded %v", s)
			// The field decoded through it is refused too.
			_, err = CommitFieldsFromPB([]*wirepb.CommitField{{Name: "f", Dtype: "float32", Kind: "dense", Shape: &wirepb.Shape{Dims: tc.dims}}}, 1)
			require.ErrorIs(t, err, engine.ErrInvalid)
		})
	}
	s, err := ShapeFromPB(&wirepb.Shape{Dims: []int64{1 << 20, 1 << 20}})
	require.NoError(t, err)
	assert.Equal(t, engine.Shape{1 << 20, 1 << 20}, s)
	s, err = ShapeFromPB(&wirepb.Shape{Dims: []int64{math.MaxInt32, math.MaxInt32, 0}})
	require.NoError(t, err, "a shape with a zero dimension holds nothing")
	assert.Equal(t, 0, s.NumElems())
}

// A cell a shape allows must fit in one frame's payload.
func TestMaxCellBytesFitsAPayload(t *testing.T) {
	assert.LessOrEqual(t, uint64(engine.MaxCellBytes), uint64(MaxPayloadLen))
}
