package wire

// A batch whose bytes travel as a frame's payload (KV_PUT, KV_GET): each
// field's schema as a CommitField without locations, an opaque field's
// row lengths, and the fields' bytes back to back, field after field.

import (
	"fmt"
	"net"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// BatchToPB describes b's fields and returns the payload to send with
// them (the columns' own bytes, not copied).
func BatchToPB(b *engine.Batch) ([]*wirepb.CommitField, []*wirepb.RowLens, net.Buffers) {
	fields := b.Fields()
	cfs := make([]engine.CommitField, len(fields))
	lens := make([]*wirepb.RowLens, len(fields))
	var payload net.Buffers
	for i, f := range fields {
		cfs[i] = engine.CommitField{Name: f.Name, DType: f.Col.DType(), Kind: f.Col.Kind()}
		lens[i] = &wirepb.RowLens{}
		switch f.Col.Kind() {
		case engine.Dense:
			cfs[i].Shape = f.Col.Shape()
		case engine.Ragged:
			cfs[i].Shapes = f.Col.Shapes()
		case engine.Opaque:
			offs := f.Col.Offsets()
			lens[i].Lens = make([]uint64, len(offs)-1)
			for r := range lens[i].Lens {
				lens[i].Lens[r] = uint64(offs[r+1] - offs[r])
			}
		}
		if d := f.Col.Data(); len(d) > 0 {
			payload = append(payload, d)
		}
	}
	return CommitFieldsToPB(cfs), lens, payload
}

// BatchFromPB rebuilds n rows of columns over data (aliased) from what
// BatchToPB sent; schema, row lengths and size must agree, counted
// without overflow. No fields and no data is a nil batch.
func BatchFromPB(fs []*wirepb.CommitField, lens []*wirepb.RowLens, n int, data []byte) (*engine.Batch, error) {
	if len(fs) == 0 {
		if len(data) > 0 {
			return nil, fmt.Errorf("%d payload bytes and no fields: %w", len(data), engine.ErrInvalid)
		}
		return nil, nil
	}
	if len(lens) != len(fs) {
		return nil, fmt.Errorf("%d row length lists for %d fields: %w", len(lens), len(fs), engine.ErrInvalid)
	}
	cfs, err := CommitFieldsFromPB(fs, n)
	if err != nil {
		return nil, err
	}
	fields := make([]engine.Field, len(cfs))
	at := 0
	for i, cf := range cfs {
		var size int
		left := len(data) - at
		switch cf.Kind {
		case engine.Dense:
			row, ok := shapeBytes(cf.Shape, cf.DType.Size(), left)
			if !ok || (row > 0 && n > left/row) {
				return nil, fmt.Errorf("field %q: %d rows of shape %v exceed the %d payload bytes left: %w", cf.Name, n, cf.Shape, left, engine.ErrInvalid)
			}
			size = n * row
		case engine.Ragged:
			for r, sh := range cf.Shapes {
				row, ok := shapeBytes(sh, cf.DType.Size(), left-size)
				if !ok {
					return nil, fmt.Errorf("field %q: row %d of shape %v exceeds the %d payload bytes left: %w", cf.Name, r, sh, left-size, engine.ErrInvalid)
				}
				size += row
			}
		case engine.Opaque:
			if len(lens[i].Lens) != n {
				return nil, fmt.Errorf("field %q: %d row lengths for %d keys: %w", cf.Name, len(lens[i].Lens), n, engine.ErrInvalid)
			}
			for _, l := range lens[i].Lens {
				if l > uint64(left-size) {
					return nil, fmt.Errorf("field %q: a row of %d bytes, %d payload bytes left: %w", cf.Name, l, left-size, engine.ErrInvalid)
				}
				size += int(l)
			}
		default:
			return nil, fmt.Errorf("field %q of kind %v: %w", cf.Name, cf.Kind, engine.ErrInvalid)
		}
		part := data[at : at+size : at+size]
		at += size
		var col *engine.Column
		switch cf.Kind {
		case engine.Dense:
			col, err = engine.NewDense(cf.DType, n, cf.Shape, part)
		case engine.Ragged:
			col, err = engine.NewRagged(cf.DType, cf.Shapes, part)
		default:
			offs := make([]int, n+1)
			for r, l := range lens[i].Lens {
				offs[r+1] = offs[r] + int(l)
			}
			col, err = engine.NewOpaque(offs, part)
		}
		if err != nil {
			return nil, fmt.Errorf("field %q: %w", cf.Name, err)
		}
		fields[i] = engine.Field{Name: cf.Name, Col: col}
	}
	if at != len(data) {
		return nil, fmt.Errorf("the fields take %d of %d payload bytes: %w", at, len(data), engine.ErrInvalid)
	}
	return engine.NewBatch(fields...)
}

// shapeBytes returns the bytes of one row of shape, false when they would
// exceed limit (counted without overflow). A zero dimension anywhere makes
// the row empty, whatever the dimensions before it: (2,0) fits in no bytes.
func shapeBytes(shape engine.Shape, elem, limit int) (int, bool) {
	for _, d := range shape {
		switch {
		case d < 0:
			return 0, false
		case d == 0:
			return 0, true
		}
	}
	n := elem
	for _, d := range shape {
		if n > limit/d {
			return 0, false
		}
		n *= d
	}
	return n, n <= limit
}
