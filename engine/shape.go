package engine

import (
	"fmt"
	"slices"
	"strings"
)

// Shape is the per-row shape of a cell: [] for a scalar, [n] for a vector,
// [h w] for a matrix.
type Shape []int

// MaxCellBytes bounds one cell: a shape whose cell would hold more bytes
// (its elements times the dtype's size) is invalid. It is the largest
// payload a frame carries (wire.MaxPayloadLen), so no larger cell could be
// written or read, and it keeps every count of a valid shape's elements or
// bytes far from overflowing int.
const MaxCellBytes = 1 << 40

// NumElems returns the number of elements a cell of this shape holds. The
// count is exact for a shape that passes [Shape.Validate]; for any other it
// may have wrapped around.
func (s Shape) NumElems() int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

// Equal reports whether two shapes are identical.
func (s Shape) Equal(o Shape) bool { return slices.Equal(s, o) }

// Clone returns a copy that shares nothing with s.
func (s Shape) Clone() Shape {
	if s == nil {
		return nil
	}
	return append(Shape{}, s...)
}

// Validate reports a negative dimension, or more elements than a cell of
// any dtype can hold ([MaxCellBytes]).
func (s Shape) Validate() error {
	_, err := s.elems()
	return err
}

// CellBytes returns the bytes of one cell of shape s and dtype dt, counted
// without overflow. It fails, naming the shape, where s is invalid or the
// cell would exceed [MaxCellBytes].
func (s Shape) CellBytes(dt DType) (int, error) {
	n, err := s.elems()
	if err != nil {
		return 0, err
	}
	// n ≤ MaxCellBytes and a dtype's size ≤ 16: the product fits.
	if b := n * dt.Size(); b <= MaxCellBytes {
		return b, nil
	}
	return 0, fmt.Errorf("a cell of shape %v and dtype %v exceeds %d bytes: %w", s, dt, MaxCellBytes, ErrInvalid)
}

// elems returns the number of elements of s, failing where a dimension is
// negative or the count exceeds MaxCellBytes. A zero dimension makes the
// count 0 whatever the other dimensions are. It costs O(len(s)).
func (s Shape) elems() (int, error) {
	n, over := 1, false
	for _, d := range s {
		switch {
		case d < 0:
			return 0, fmt.Errorf("shape %v has a negative dimension: %w", s, ErrInvalid)
		case n != 0 && d > MaxCellBytes/n:
			over = true // n stays as it was, so later products cannot wrap either
		default:
			n *= d
		}
	}
	if over && n != 0 {
		return 0, fmt.Errorf("shape %v holds more than %d elements: %w", s, MaxCellBytes, ErrInvalid)
	}
	return n, nil
}

func (s Shape) String() string {
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = fmt.Sprint(d)
	}
	return "(" + strings.Join(parts, ",") + ")"
}
