package controller

// shapeTable holds a ragged field's per-row shapes (those other than its
// base: see field) without a pointer per row (see rowtable.go for why): a
// shape of up to inlineDims dimensions, nearly every one (a token sequence
// is one), sits by value in a map the garbage collector does not scan;
// longer shapes go to a map of slices.
// It is not safe for concurrent use (the partition's lock guards it).

import (
	"encoding/binary"

	"github.com/tqgo/tq/engine"
)

const inlineDims = 3

type inlineShape struct {
	n int // dimensions
	d [inlineDims]int
}

type shapeTable struct {
	short map[uint64]inlineShape
	long  map[uint64]engine.Shape
}

func newShapeTable(n int) *shapeTable {
	return &shapeTable{short: make(map[uint64]inlineShape, n)}
}

func (t *shapeTable) len() int { return len(t.short) + len(t.long) }

// put stores a copy of row gi's shape.
func (t *shapeTable) put(gi uint64, s engine.Shape) {
	if len(s) <= inlineDims {
		var in inlineShape
		in.n = copy(in.d[:], s)
		t.short[gi] = in
		delete(t.long, gi)
		return
	}
	if t.long == nil {
		t.long = make(map[uint64]engine.Shape)
	}
	t.long[gi] = s.Clone()
	delete(t.short, gi)
}

// get returns row gi's shape (a new slice).
func (t *shapeTable) get(gi uint64) (engine.Shape, bool) {
	if in, ok := t.short[gi]; ok {
		return engine.Shape(in.d[:in.n]).Clone(), true
	}
	s, ok := t.long[gi]
	return s.Clone(), ok
}

// key returns shapeKey of row gi's shape.
func (t *shapeTable) key(gi uint64) string {
	if in, ok := t.short[gi]; ok {
		var buf [inlineDims * binary.MaxVarintLen64]byte
		b := buf[:0]
		for _, d := range in.d[:in.n] {
			b = binary.AppendUvarint(b, uint64(d))
		}
		return string(b)
	}
	return shapeKey(t.long[gi])
}

func (t *shapeTable) has(gi uint64) bool {
	_, short := t.short[gi]
	_, long := t.long[gi]
	return short || long
}

func (t *shapeTable) del(gi uint64) {
	delete(t.short, gi)
	delete(t.long, gi)
}

// any returns one of the shapes (nil when there is none).
func (t *shapeTable) any() engine.Shape {
	for gi := range t.short {
		s, _ := t.get(gi)
		return s
	}
	for _, s := range t.long {
		return s.Clone()
	}
	return nil
}
