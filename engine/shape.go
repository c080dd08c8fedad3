package engine

import (
	"fmt"
	"slices"
	"strings"
)

// Shape is the per-row shape of a cell: [] for a scalar, [n] for a vector,
// [h w] for a matrix.
type Shape []int

// NumElems returns the number of elements a cell of this shape holds.
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

// Validate reports a negative dimension.
func (s Shape) Validate() error {
	for _, d := range s {
		if d < 0 {
			return fmt.Errorf("shape %v has a negative dimension: %w", s, ErrInvalid)
		}
	}
	return nil
}

func (s Shape) String() string {
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = fmt.Sprint(d)
	}
	return "(" + strings.Join(parts, ",") + ")"
}
