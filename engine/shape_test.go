package engine

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A shape's element and byte counts are checked, not wrapped: a product
// of dims that overflows int (or merely exceeds what any cell can hold)
// is refused, naming the shape, instead of turning into a small or
// negative count that a column's bytes then "match".
func TestShapeCellBytes(t *testing.T) {
	tests := []struct {
		name  string
		shape Shape
		dt    DType
		want  int // -1: refused
	}{
		{"scalar", Shape{}, Float64, 8},
		{"nil scalar", nil, Bool, 1},
		{"matrix", Shape{2, 3}, Int16, 12},
		{"zero dim", Shape{4, 0}, Float32, 0},
		{"zero dim after huge dims", Shape{1 << 30, 1 << 30, 1 << 30, 0}, Float32, 0},
		{"largest cell", Shape{1 << 20, 1 << 20}, Uint8, MaxCellBytes},
		{"negative dim", Shape{2, -1}, Float32, -1},
		{"elements wrap to zero", Shape{1 << 30, 1 << 30, 16}, Float32, -1},
		{"elements wrap to a small count", Shape{1<<32 + 1, 1<<32 - 1}, Int8, -1},
		{"bytes wrap to 4", Shape{1<<62 + 1}, Float32, -1},
		{"bytes go negative", Shape{1 << 62}, Int16, -1},
		{"64 dims of 2^31-1", func() Shape {
			s := make(Shape, 64)
			for i := range s {
				s[i] = math.MaxInt32
			}
			return s
		}(), Uint8, -1},
		{"one byte over the limit", Shape{MaxCellBytes + 1}, Uint8, -1},
		{"elements fit, bytes do not", Shape{MaxCellBytes}, Complex128, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.shape.CellBytes(tt.dt)
			if tt.want < 0 {
				require.ErrorIs(t, err, ErrInvalid, "got %d bytes", got)
				assert.Contains(t, err.Error(), tt.shape.String())
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
	// Validate, which knows no dtype, refuses what no dtype could hold.
	require.ErrorIs(t, (Shape{1 << 30, 1 << 30, 16}).Validate(), ErrInvalid)
	require.ErrorIs(t, (Shape{MaxCellBytes + 1}).Validate(), ErrInvalid)
	require.NoError(t, (Shape{MaxCellBytes}).Validate())
}

func TestNewDenseRefusesAnOverflowingShape(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rows  int
		shape Shape
		data  []byte
	}{
		{"elements wrap to zero", 3, Shape{1 << 30, 1 << 30, 16}, nil},
		{"bytes wrap to 4", 1, Shape{1<<62 + 1}, make([]byte, 4)},
		{"rows times row bytes wrap to zero", 1 << 34, Shape{1 << 28}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewDense(Float32, tc.rows, tc.shape, tc.data)
			require.ErrorIs(t, err, ErrInvalid, "accepted %d rows of shape %v over %d bytes", tc.rows, tc.shape, len(tc.data))
			assert.Nil(t, c)
			assert.Contains(t, err.Error(), tc.shape.String())
		})
	}
	// DenseOf goes through the same check.
	_, err := DenseOf([]float32{}, 1<<30, 1<<30, 16)
	require.ErrorIs(t, err, ErrInvalid)
}

func TestNewRaggedRefusesAnOverflowingShape(t *testing.T) {
	for _, tc := range []struct {
		name   string
		dt     DType
		shapes []Shape
		data   []byte
	}{
		// Each row is 2^63 bytes: before, the offsets went negative and
		// RowBytes(0) panicked.
		{"rows of 2^63 bytes", Int16, []Shape{{1 << 62}, {1 << 62}}, nil},
		{"a row whose elements wrap to zero", Float32, []Shape{{1}, {1 << 30, 1 << 30, 16}}, make([]byte, 4)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c *Column
			var err error
			require.NotPanics(t, func() { c, err = NewRagged(tc.dt, tc.shapes, tc.data) })
			require.ErrorIs(t, err, ErrInvalid, "accepted shapes %v over %d bytes", tc.shapes, len(tc.data))
			assert.Nil(t, c)
		})
	}
}
