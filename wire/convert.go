package wire

// Conversions between engine types and wire messages. Decoders validate
// everything they return: lengths within MaxSegments, per-row arrays of
// equal length, known dtypes and kinds.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

func bad(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, engine.ErrInvalid)...)
}

// CheckCount rejects a count above MaxSegments.
func CheckCount(what string, n int) error {
	if n > MaxSegments {
		return bad("%d %s exceed the limit of %d", n, what, MaxSegments)
	}
	return nil
}

// ShapeToPB encodes a shape; nil encodes as unknown.
func ShapeToPB(s engine.Shape) *wirepb.Shape {
	if s == nil {
		return &wirepb.Shape{Unknown: true}
	}
	dims := make([]int64, len(s))
	for i, d := range s {
		dims[i] = int64(d)
	}
	return &wirepb.Shape{Dims: dims}
}

// ShapeFromPB decodes a shape; unknown decodes as nil, an absent message
// as the scalar shape ().
func ShapeFromPB(p *wirepb.Shape) (engine.Shape, error) {
	if p == nil {
		return engine.Shape{}, nil
	}
	if p.Unknown {
		return nil, nil
	}
	if len(p.Dims) > 64 {
		return nil, bad("shape of %d dimensions", len(p.Dims))
	}
	s := make(engine.Shape, len(p.Dims))
	for i, d := range p.Dims {
		if d < 0 || d > math.MaxInt32 {
			return nil, bad("shape dimension %d", d)
		}
		s[i] = int(d)
	}
	return s, nil
}

// DTypeFromPB decodes a dtype name; "" is InvalidDType (a placeholder).
func DTypeFromPB(s string) (engine.DType, error) {
	if s == "" || s == "invalid" {
		return engine.InvalidDType, nil
	}
	return engine.ParseDType(s)
}

// DTypeToPB encodes a dtype.
func DTypeToPB(d engine.DType) string {
	if d == engine.InvalidDType {
		return ""
	}
	return d.String()
}

// KindFromPB decodes a column kind; "" is InvalidKind.
func KindFromPB(s string) (engine.Kind, error) {
	var k engine.Kind
	if err := k.UnmarshalText([]byte(s)); err != nil {
		return 0, err
	}
	return k, nil
}

// KindToPB encodes a column kind.
func KindToPB(k engine.Kind) string {
	if k == engine.InvalidKind {
		return ""
	}
	return k.String()
}

// AddrsToPB encodes cell locations (unit included).
func AddrsToPB(locs []engine.CellLoc) *wirepb.Addrs {
	a := &wirepb.Addrs{
		Unit: make([]uint32, len(locs)), Segment: make([]uint32, len(locs)), Gen: make([]uint32, len(locs)),
		Offset: make([]uint64, len(locs)), Len: make([]uint64, len(locs)),
	}
	for i, l := range locs {
		a.Unit[i], a.Segment[i], a.Gen[i], a.Offset[i], a.Len[i] = uint32(l.Unit), l.Addr.Segment, l.Addr.Gen, l.Addr.Offset, l.Addr.Len
	}
	return a
}

// RangesToPB encodes byte ranges of one unit (no unit ids).
func RangesToPB(rs []engine.RemoteAddr) *wirepb.Addrs {
	a := &wirepb.Addrs{
		Segment: make([]uint32, len(rs)), Gen: make([]uint32, len(rs)),
		Offset: make([]uint64, len(rs)), Len: make([]uint64, len(rs)),
	}
	for i, r := range rs {
		a.Segment[i], a.Gen[i], a.Offset[i], a.Len[i] = r.Segment, r.Gen, r.Offset, r.Len
	}
	return a
}

func addrsLen(a *wirepb.Addrs, withUnit bool) (int, error) {
	if a == nil {
		return 0, nil
	}
	n := len(a.Offset)
	if len(a.Segment) != n || len(a.Gen) != n || len(a.Len) != n || (withUnit && len(a.Unit) != n) || (!withUnit && len(a.Unit) != 0 && len(a.Unit) != n) {
		return 0, bad("address arrays of different lengths")
	}
	return n, CheckCount("addresses", n)
}

// AddrsFromPB decodes cell locations.
func AddrsFromPB(a *wirepb.Addrs) ([]engine.CellLoc, error) {
	n, err := addrsLen(a, true)
	if err != nil {
		return nil, err
	}
	out := make([]engine.CellLoc, n)
	for i := range out {
		out[i] = engine.CellLoc{Unit: engine.UnitID(a.Unit[i]), Addr: engine.RemoteAddr{Segment: a.Segment[i], Gen: a.Gen[i], Offset: a.Offset[i], Len: a.Len[i]}}
	}
	return out, nil
}

// RangesFromPB decodes byte ranges (ignoring unit ids).
func RangesFromPB(a *wirepb.Addrs) ([]engine.RemoteAddr, error) {
	n, err := addrsLen(a, false)
	if err != nil {
		return nil, err
	}
	out := make([]engine.RemoteAddr, n)
	for i := range out {
		out[i] = engine.RemoteAddr{Segment: a.Segment[i], Gen: a.Gen[i], Offset: a.Offset[i], Len: a.Len[i]}
	}
	return out, nil
}

// JSONToPB encodes a tag map (or extra info) as JSON; nil encodes as empty.
func JSONToPB(m map[string]any) ([]byte, error) {
	if m == nil {
		return nil, nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode tags: %w: %w", engine.ErrInvalid, err)
	}
	return b, nil
}

// JSONFromPB decodes a JSON object; empty decodes as nil. Whole numbers
// that fit come back as int64, others as float64, so tags compare the same
// on both sides of the wire.
func JSONFromPB(b []byte) (map[string]any, error) {
	if len(b) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, bad("tags are not a JSON object: %s", err.Error())
	}
	for k, v := range m {
		m[k] = numbers(v)
	}
	return m, nil
}

func numbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case map[string]any:
		for k, e := range x {
			x[k] = numbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = numbers(e)
		}
	}
	return v
}

// TagsToPB encodes per-row tags.
func TagsToPB(tags []engine.Tags) ([][]byte, error) {
	out := make([][]byte, len(tags))
	for i, t := range tags {
		b, err := JSONToPB(t)
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

// TagsFromPB decodes per-row tags.
func TagsFromPB(bs [][]byte) ([]engine.Tags, error) {
	out := make([]engine.Tags, len(bs))
	for i, b := range bs {
		m, err := JSONFromPB(b)
		if err != nil {
			return nil, fmt.Errorf("row %d: %w", i, err)
		}
		out[i] = m
	}
	return out, nil
}

// SchemaToPB encodes a field schema.
func SchemaToPB(s engine.FieldSchema) *wirepb.FieldSchema {
	p := &wirepb.FieldSchema{Dtype: DTypeToPB(s.DType), Kind: KindToPB(s.Kind)}
	if s.Kind == engine.Dense {
		p.Shape = ShapeToPB(s.Shape)
		if s.Shape == nil {
			p.Shape = &wirepb.Shape{}
		}
	}
	for _, sh := range s.Shapes {
		p.Shapes = append(p.Shapes, ShapeToPB(sh))
	}
	return p
}

// SchemaFromPB decodes a field schema.
func SchemaFromPB(p *wirepb.FieldSchema) (engine.FieldSchema, error) {
	var s engine.FieldSchema
	var err error
	if p == nil {
		return s, nil
	}
	if s.DType, err = DTypeFromPB(p.Dtype); err != nil {
		return s, err
	}
	if s.Kind, err = KindFromPB(p.Kind); err != nil {
		return s, err
	}
	if s.Kind == engine.Dense {
		if s.Shape, err = ShapeFromPB(p.Shape); err != nil {
			return s, err
		}
		if s.Shape == nil {
			s.Shape = engine.Shape{}
		}
	}
	if err := CheckCount("shapes", len(p.Shapes)); err != nil {
		return s, err
	}
	if len(p.Shapes) > 0 {
		s.Shapes = make([]engine.Shape, len(p.Shapes))
		for i, sh := range p.Shapes {
			if s.Shapes[i], err = ShapeFromPB(sh); err != nil {
				return s, err
			}
		}
	}
	return s, nil
}

// MetaToPB encodes a BatchMeta.
func MetaToPB(m *engine.BatchMeta) (*wirepb.BatchMeta, error) {
	if m == nil {
		return &wirepb.BatchMeta{}, nil
	}
	p := &wirepb.BatchMeta{Indexes: m.Indexes, Partitions: m.Partitions, Ready: m.Ready}
	if m.Keys != nil {
		p.HasKeys, p.Keys = true, m.Keys
	}
	var err error
	if p.Tags, err = TagsToPB(m.Tags); err != nil {
		return nil, err
	}
	if len(m.Schema) > 0 {
		p.Schema = make(map[string]*wirepb.FieldSchema, len(m.Schema))
		for k, s := range m.Schema {
			p.Schema[k] = SchemaToPB(s)
		}
	}
	if len(m.Cells) > 0 {
		p.Cells = make(map[string]*wirepb.Addrs, len(m.Cells))
		for k, c := range m.Cells {
			p.Cells[k] = AddrsToPB(c)
		}
	}
	if p.Extra, err = JSONToPB(m.Extra); err != nil {
		return nil, err
	}
	return p, nil
}

// MetaFromPB decodes and validates a BatchMeta.
func MetaFromPB(p *wirepb.BatchMeta) (*engine.BatchMeta, error) {
	if p == nil {
		return &engine.BatchMeta{}, nil
	}
	if err := CheckCount("rows", len(p.Indexes)); err != nil {
		return nil, err
	}
	m := &engine.BatchMeta{Indexes: p.Indexes, Partitions: p.Partitions, Ready: p.Ready}
	if m.Indexes == nil {
		m.Indexes = []uint64{}
	}
	if m.Partitions == nil {
		m.Partitions = []string{}
	}
	if m.Ready == nil {
		m.Ready = []bool{}
	}
	if p.HasKeys {
		m.Keys = p.Keys
		if m.Keys == nil {
			m.Keys = []string{}
		}
	}
	var err error
	if m.Tags, err = TagsFromPB(p.Tags); err != nil {
		return nil, err
	}
	if len(p.Schema) > 0 {
		m.Schema = make(map[string]engine.FieldSchema, len(p.Schema))
		for k, s := range p.Schema {
			if m.Schema[k], err = SchemaFromPB(s); err != nil {
				return nil, fmt.Errorf("field %q: %w", k, err)
			}
		}
	} else {
		m.Schema = map[string]engine.FieldSchema{}
	}
	if len(p.Cells) > 0 {
		m.Cells = make(map[string][]engine.CellLoc, len(p.Cells))
		for k, c := range p.Cells {
			if m.Cells[k], err = AddrsFromPB(c); err != nil {
				return nil, fmt.Errorf("cells of field %q: %w", k, err)
			}
		}
	} else {
		m.Cells = map[string][]engine.CellLoc{}
	}
	if m.Extra, err = JSONFromPB(p.Extra); err != nil {
		return nil, err
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}
