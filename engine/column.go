package engine

// A Column holds the bytes of one field for a batch of rows in one of three
// layouts:
//
//	Dense   one dtype, one per-row shape; row i is data[i*stride:(i+1)*stride]
//	Ragged  one dtype, a shape per row; row i is data[offs[i]:offs[i+1]]
//	Opaque  one byte string per row (strings, JSON, user-encoded objects);
//	        row i is data[offs[i]:offs[i+1]]
//
// The bytes are always contiguous, so a column slice moves as one extent.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"reflect"
	"slices"
)

// Kind is a column's layout.
type Kind uint8

// Column layouts.
const (
	InvalidKind Kind = iota
	Dense
	Ragged
	Opaque
)

func (k Kind) String() string {
	switch k {
	case Dense:
		return "dense"
	case Ragged:
		return "ragged"
	case Opaque:
		return "opaque"
	}
	return "invalid"
}

// MarshalText implements encoding.TextMarshaler.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *Kind) UnmarshalText(b []byte) error {
	switch string(b) {
	case "dense":
		*k = Dense
	case "ragged":
		*k = Ragged
	case "opaque":
		*k = Opaque
	case "invalid", "":
		*k = InvalidKind
	default:
		return fmt.Errorf("unknown column kind %q: %w", b, ErrInvalid)
	}
	return nil
}

// Elem is the set of Go element types a column can be built from or viewed
// as. [F16], [BF16], [F8E4M3FN] and [F8E5M2] are bit patterns whose
// underlying types (uint16, uint8) are in the set; [DTypeOf] tells them
// apart from the integers by their exact type.
type Elem interface {
	~float64 | ~float32 | ~int64 | ~int32 | ~int16 | ~int8 |
		~uint64 | ~uint32 | ~uint16 | ~uint8 | ~bool | ~complex64 | ~complex128
}

// DTypeOf returns the dtype matching T. F16, BF16, F8E4M3FN and F8E5M2 map
// to their float dtypes; every other type maps through its underlying kind,
// so `type Score float32` is Float32 and a type defined on F16 is Uint16.
func DTypeOf[T Elem]() DType {
	t := reflect.TypeFor[T]()
	switch t {
	case reflect.TypeFor[F16]():
		return Float16
	case reflect.TypeFor[BF16]():
		return BFloat16
	case reflect.TypeFor[F8E4M3FN]():
		return Float8E4M3FN
	case reflect.TypeFor[F8E5M2]():
		return Float8E5M2
	}
	switch t.Kind() {
	case reflect.Float64:
		return Float64
	case reflect.Float32:
		return Float32
	case reflect.Int64:
		return Int64
	case reflect.Int32:
		return Int32
	case reflect.Int16:
		return Int16
	case reflect.Int8:
		return Int8
	case reflect.Uint64:
		return Uint64
	case reflect.Uint32:
		return Uint32
	case reflect.Uint16:
		return Uint16
	case reflect.Uint8:
		return Uint8
	case reflect.Bool:
		return Bool
	case reflect.Complex64:
		return Complex64
	case reflect.Complex128:
		return Complex128
	}
	return InvalidDType
}

// Column is an immutable-by-convention batch of cells of one field. A column
// built from caller memory (see [DenseOf]) aliases it; the caller must not
// change that memory while the column is in use. Columns are safe for
// concurrent reads.
type Column struct {
	kind   Kind
	dtype  DType
	n      int
	shape  Shape   // Dense: per-row shape
	shapes []Shape // Ragged: shape of each row
	offs   []int   // Ragged, Opaque: n+1 byte offsets into data
	data   []byte
}

// NewDense builds a dense column over data, which it aliases. len(data) must
// be rows × rowShape.NumElems() × dt.Size(), and one row at most
// [MaxCellBytes].
func NewDense(dt DType, rows int, rowShape Shape, data []byte) (*Column, error) {
	if !dt.Valid() || dt == Bytes {
		return nil, fmt.Errorf("dense column of dtype %v: %w", dt, ErrInvalid)
	}
	if rows < 0 {
		return nil, fmt.Errorf("dense column with %d rows: %w", rows, ErrInvalid)
	}
	stride, err := rowShape.CellBytes(dt)
	if err != nil {
		return nil, err
	}
	if stride > 0 && rows > math.MaxInt/stride {
		return nil, fmt.Errorf("dense %v column of %d rows of shape %v needs more than %d bytes: %w",
			dt, rows, rowShape, math.MaxInt, ErrInvalid)
	}
	want := rows * stride
	if len(data) != want {
		return nil, fmt.Errorf("dense %v column of %d rows of shape %v needs %d bytes, got %d: %w",
			dt, rows, rowShape, want, len(data), ErrInvalid)
	}
	shape := rowShape.Clone()
	if shape == nil {
		shape = Shape{} // a scalar row: nil would read as "not dense" (see Column.Shape)
	}
	return &Column{kind: Dense, dtype: dt, n: rows, shape: shape, data: data}, nil
}

// NewRagged builds a ragged column whose row i has shape shapes[i] (nil,
// like [], is a scalar row); data holds the rows back to back and is
// aliased.
func NewRagged(dt DType, shapes []Shape, data []byte) (*Column, error) {
	if !dt.Valid() || dt == Bytes {
		return nil, fmt.Errorf("ragged column of dtype %v: %w", dt, ErrInvalid)
	}
	offs := make([]int, len(shapes)+1)
	cp := make([]Shape, len(shapes))
	for i, s := range shapes {
		b, err := s.CellBytes(dt)
		if err != nil {
			return nil, fmt.Errorf("row %d: %w", i, err)
		}
		if b > math.MaxInt-offs[i] {
			return nil, fmt.Errorf("ragged %v column needs more than %d bytes by row %d of shape %v: %w", dt, math.MaxInt, i, s, ErrInvalid)
		}
		cp[i] = s.Clone()
		if cp[i] == nil {
			cp[i] = Shape{} // a scalar row: nil would go out as an unknown shape (see wire.ShapeToPB)
		}
		offs[i+1] = offs[i] + b
	}
	if len(data) != offs[len(shapes)] {
		return nil, fmt.Errorf("ragged %v column needs %d bytes, got %d: %w", dt, offs[len(shapes)], len(data), ErrInvalid)
	}
	return &Column{kind: Ragged, dtype: dt, n: len(shapes), shapes: cp, offs: offs, data: data}, nil
}

// NewOpaque builds an opaque column from per-row byte strings. offs has one
// entry per row plus one and indexes data, which is aliased.
func NewOpaque(offs []int, data []byte) (*Column, error) {
	if len(offs) == 0 || offs[0] != 0 || offs[len(offs)-1] != len(data) {
		return nil, fmt.Errorf("opaque column offsets do not cover %d bytes: %w", len(data), ErrInvalid)
	}
	for i := 1; i < len(offs); i++ {
		if offs[i] < offs[i-1] {
			return nil, fmt.Errorf("opaque column offsets decrease at row %d: %w", i-1, ErrInvalid)
		}
	}
	return &Column{kind: Opaque, dtype: Bytes, n: len(offs) - 1, offs: slices.Clone(offs), data: data}, nil
}

// DenseOf builds a dense column that aliases vals. rowShape is the shape of
// one row; with no rowShape each row is a scalar (shape ()).
func DenseOf[T Elem](vals []T, rowShape ...int) (*Column, error) {
	s := Shape(rowShape)
	if err := s.Validate(); err != nil {
		return nil, err
	}
	per := s.NumElems()
	if per == 0 {
		if len(vals) != 0 {
			return nil, fmt.Errorf("row shape %v holds no elements but %d values given: %w", s, len(vals), ErrInvalid)
		}
		return NewDense(DTypeOf[T](), 0, s, nil)
	}
	if len(vals)%per != 0 {
		return nil, fmt.Errorf("%d values do not split into rows of shape %v: %w", len(vals), s, ErrInvalid)
	}
	return NewDense(DTypeOf[T](), len(vals)/per, s, asBytes(vals))
}

// MatrixOf builds a dense column with one 1-D row per element of rows. All
// rows must have the same length. The values are copied.
func MatrixOf[T Elem](rows [][]T) (*Column, error) {
	w := 0
	if len(rows) > 0 {
		w = len(rows[0])
	}
	flat := make([]T, 0, len(rows)*w)
	for i, r := range rows {
		if len(r) != w {
			return nil, fmt.Errorf("row %d has %d values, row 0 has %d (use RaggedOf): %w", i, len(r), w, ErrInvalid)
		}
		flat = append(flat, r...)
	}
	return NewDense(DTypeOf[T](), len(rows), Shape{w}, asBytes(flat))
}

// RaggedOf builds a ragged column with one 1-D row per element of rows. The
// values are copied.
func RaggedOf[T Elem](rows [][]T) *Column {
	total := 0
	for _, r := range rows {
		total += len(r)
	}
	flat := make([]T, 0, total)
	shapes := make([]Shape, len(rows))
	for i, r := range rows {
		flat = append(flat, r...)
		shapes[i] = Shape{len(r)}
	}
	c, err := NewRagged(DTypeOf[T](), shapes, asBytes(flat))
	if err != nil {
		panic(err) // unreachable: shapes and data are consistent by construction
	}
	return c
}

// StringsOf builds an opaque column from strings (copied).
func StringsOf(vals []string) *Column {
	offs := make([]int, len(vals)+1)
	for i, s := range vals {
		offs[i+1] = offs[i] + len(s)
	}
	data := make([]byte, 0, offs[len(vals)])
	for _, s := range vals {
		data = append(data, s...)
	}
	return &Column{kind: Opaque, dtype: Bytes, n: len(vals), offs: offs, data: data}
}

// BytesOf builds an opaque column from byte strings (copied).
func BytesOf(vals [][]byte) *Column {
	offs := make([]int, len(vals)+1)
	for i, s := range vals {
		offs[i+1] = offs[i] + len(s)
	}
	data := make([]byte, 0, offs[len(vals)])
	for _, s := range vals {
		data = append(data, s...)
	}
	return &Column{kind: Opaque, dtype: Bytes, n: len(vals), offs: offs, data: data}
}

// Kind returns the column's layout.
func (c *Column) Kind() Kind { return c.kind }

// DType returns the element type (Bytes for opaque columns).
func (c *Column) DType() DType { return c.dtype }

// Len returns the number of rows.
func (c *Column) Len() int { return c.n }

// Shape returns the per-row shape of a dense column, nil otherwise. It is
// the column's own: do not modify it (Clone it to change it); a change
// would make the column read its rows at other offsets.
func (c *Column) Shape() Shape { return c.shape }

// RowShape returns row i's shape (for opaque rows: the byte length as a 1-D
// shape). A dense or ragged column's is its own, as for Shape: do not
// modify it.
func (c *Column) RowShape(i int) Shape {
	switch c.kind {
	case Dense:
		return c.shape
	case Ragged:
		return c.shapes[i]
	default:
		return Shape{c.offs[i+1] - c.offs[i]}
	}
}

// Shapes returns every row's shape (a fresh slice).
func (c *Column) Shapes() []Shape {
	out := make([]Shape, c.n)
	for i := range out {
		out[i] = c.RowShape(i).Clone()
	}
	return out
}

// Data returns the column's contiguous bytes. The slice aliases the column.
func (c *Column) Data() []byte { return c.data }

// Offsets returns the n+1 byte offsets of the rows within [Column.Data].
// The result is fresh for dense columns and shared otherwise; do not modify it.
func (c *Column) Offsets() []int {
	if c.kind == Dense {
		stride := c.stride()
		offs := make([]int, c.n+1)
		for i := range offs {
			offs[i] = i * stride
		}
		return offs
	}
	return c.offs
}

// Size returns the number of payload bytes.
func (c *Column) Size() int { return len(c.data) }

func (c *Column) stride() int { return c.shape.NumElems() * c.dtype.Size() }

// RowBytes returns row i's bytes, aliasing the column.
func (c *Column) RowBytes(i int) []byte {
	if c.kind == Dense {
		s := c.stride()
		return c.data[i*s : (i+1)*s : (i+1)*s]
	}
	return c.data[c.offs[i]:c.offs[i+1]:c.offs[i+1]]
}

// String returns row i of an opaque column as a string (copied).
func (c *Column) String(i int) string { return string(c.RowBytes(i)) }

// Strings returns every row as a string. It fails for non-opaque columns.
func (c *Column) Strings() ([]string, error) {
	if c.kind != Opaque {
		return nil, fmt.Errorf("strings of a %v column: %w", c.kind, ErrInvalid)
	}
	out := make([]string, c.n)
	for i := range out {
		out[i] = string(c.RowBytes(i))
	}
	return out, nil
}

// Values returns all elements of a dense or ragged column as a []T without
// copying when the memory is suitably aligned (always, for memory TQ
// allocated) and as a copy otherwise. T must match the column's dtype.
//
// A bool element is a byte, 0 or 1, but nothing keeps a writer from
// storing others (a torch .view(torch.bool), any raw put). Values reads
// each nonzero byte as true, as numpy and torch do: where a bool column
// holds other bytes it returns a copy, so every value is a valid Go bool
// and the column's bytes are left as they are.
func Values[T Elem](c *Column) ([]T, error) {
	if c.kind == Opaque {
		return nil, fmt.Errorf("values of an opaque column: %w", ErrInvalid)
	}
	if dt := DTypeOf[T](); dt != c.dtype {
		return nil, fmt.Errorf("view %v column as %v: %w", c.dtype, dt, ErrDTypeMismatch)
	}
	return view[T](c.dtype, c.data), nil
}

// Row returns row i of a dense or ragged column as a []T (see [Values]).
func Row[T Elem](c *Column, i int) ([]T, error) {
	if c.kind == Opaque {
		return nil, fmt.Errorf("values of an opaque column: %w", ErrInvalid)
	}
	if dt := DTypeOf[T](); dt != c.dtype {
		return nil, fmt.Errorf("view %v column as %v: %w", c.dtype, dt, ErrDTypeMismatch)
	}
	if i < 0 || i >= c.n {
		return nil, fmt.Errorf("row %d of %d: %w", i, c.n, ErrInvalid)
	}
	return view[T](c.dtype, c.RowBytes(i)), nil
}

// view returns b, bytes of dtype dt, as a []T (see [Values]).
func view[T Elem](dt DType, b []byte) []T {
	if dt == Bool {
		b = boolBytes(b)
	}
	var z [1]T
	size := len(asBytes(z[:]))
	if aligned(b, alignOf[T]()) {
		return fromBytes[T](b)
	}
	out := make([]T, len(b)/size)
	copy(asBytes(out), b)
	return out
}

// boolBytes returns b when each of its bytes is 0 or 1, and otherwise a
// copy with each nonzero byte 1. Reading such a byte as a Go bool gives a
// value that is neither true nor false (v == true fails, two of them are
// distinct map keys). The scan, 8 bytes at a time, is the only cost a
// valid column pays, and only bool columns pay it.
func boolBytes(b []byte) []byte {
	i := 0
	for ; i+8 <= len(b); i += 8 {
		if binary.LittleEndian.Uint64(b[i:])&0xfefefefefefefefe != 0 {
			break
		}
	}
	for ; i < len(b); i++ {
		if b[i] > 1 {
			break
		}
	}
	if i == len(b) {
		return b
	}
	out := make([]byte, len(b))
	copy(out, b[:i])
	for j := i; j < len(b); j++ {
		if b[j] != 0 {
			out[j] = 1
		}
	}
	return out
}

// Take returns a new column holding rows[i] of c, in order, with freshly
// allocated bytes.
func (c *Column) Take(rows []int) (*Column, error) {
	for _, r := range rows {
		if r < 0 || r >= c.n {
			return nil, fmt.Errorf("row %d of %d: %w", r, c.n, ErrInvalid)
		}
	}
	total := 0
	for _, r := range rows {
		total += len(c.RowBytes(r))
	}
	data := make([]byte, 0, total)
	for _, r := range rows {
		data = append(data, c.RowBytes(r)...)
	}
	switch c.kind {
	case Dense:
		return &Column{kind: Dense, dtype: c.dtype, n: len(rows), shape: c.shape.Clone(), data: data}, nil
	default:
		out := &Column{kind: c.kind, dtype: c.dtype, n: len(rows), offs: make([]int, len(rows)+1), data: data}
		if c.kind == Ragged {
			out.shapes = make([]Shape, len(rows))
		}
		for i, r := range rows {
			out.offs[i+1] = out.offs[i] + len(c.RowBytes(r))
			if c.kind == Ragged {
				out.shapes[i] = c.shapes[r].Clone()
			}
		}
		return out, nil
	}
}

// Slice returns rows [lo, hi) as a column that aliases c's bytes.
func (c *Column) Slice(lo, hi int) (*Column, error) {
	if lo < 0 || hi > c.n || lo > hi {
		return nil, fmt.Errorf("slice [%d:%d] of %d rows: %w", lo, hi, c.n, ErrInvalid)
	}
	switch c.kind {
	case Dense:
		s := c.stride()
		return &Column{kind: Dense, dtype: c.dtype, n: hi - lo, shape: c.shape, data: c.data[lo*s : hi*s : hi*s]}, nil
	default:
		base := c.offs[lo]
		offs := make([]int, hi-lo+1)
		for i := range offs {
			offs[i] = c.offs[lo+i] - base
		}
		out := &Column{kind: c.kind, dtype: c.dtype, n: hi - lo, offs: offs, data: c.data[base:c.offs[hi]:c.offs[hi]]}
		if c.kind == Ragged {
			out.shapes = c.shapes[lo:hi:hi]
		}
		return out, nil
	}
}

// Clone returns a deep copy of c.
func (c *Column) Clone() *Column {
	out := *c
	out.data = bytes.Clone(c.data)
	if out.data == nil && c.data != nil {
		out.data = []byte{}
	}
	out.shape = c.shape.Clone()
	if c.shapes != nil {
		out.shapes = make([]Shape, len(c.shapes))
		for i, s := range c.shapes {
			out.shapes[i] = s.Clone()
		}
	}
	out.offs = slices.Clone(c.offs)
	return &out
}

// Equal reports whether two columns hold the same rows bit for bit, with the
// same dtype and shapes. A dense column and a ragged column with the same
// rows are equal.
func (c *Column) Equal(o *Column) bool {
	if c.dtype != o.dtype || c.n != o.n || (c.kind == Opaque) != (o.kind == Opaque) {
		return false
	}
	for i := 0; i < c.n; i++ {
		if !c.RowShape(i).Equal(o.RowShape(i)) || !bytes.Equal(c.RowBytes(i), o.RowBytes(i)) {
			return false
		}
	}
	return true
}

// Uniform reports whether every row of a dense or ragged column has the
// same shape, and returns it.
func (c *Column) Uniform() (Shape, bool) {
	switch c.kind {
	case Dense:
		return c.shape, true
	case Ragged:
		if c.n == 0 {
			return nil, false
		}
		for _, s := range c.shapes[1:] {
			if !s.Equal(c.shapes[0]) {
				return nil, false
			}
		}
		return c.shapes[0], true
	}
	return nil, false
}

// Densify returns c as a dense column when every row has the same shape
// (aliasing the bytes), and c itself otherwise.
func (c *Column) Densify() *Column {
	if c.kind != Ragged {
		return c
	}
	s, ok := c.Uniform()
	if !ok {
		return c
	}
	return &Column{kind: Dense, dtype: c.dtype, n: c.n, shape: s, data: c.data}
}

// ConcatColumns joins columns row-wise into a new column with fresh bytes.
// All must share a dtype; the result is dense when every input row has the
// same shape, ragged otherwise, opaque for opaque inputs.
func ConcatColumns(cols ...*Column) (*Column, error) {
	if len(cols) == 0 {
		return nil, fmt.Errorf("concat of no columns: %w", ErrInvalid)
	}
	dt := cols[0].dtype
	opaque := cols[0].kind == Opaque
	total, rows := 0, 0
	for i, c := range cols {
		if c.dtype != dt || (c.kind == Opaque) != opaque {
			return nil, fmt.Errorf("concat column %d of %v %v onto %v: %w", i, c.kind, c.dtype, dt, ErrDTypeMismatch)
		}
		total += len(c.data)
		rows += c.n
	}
	data := make([]byte, 0, total)
	for _, c := range cols {
		data = append(data, c.data...)
	}
	if sameDenseShape(cols) {
		// Checked before the ragged path so that dense inputs with no rows
		// stay dense (a ragged column of zero rows has no uniform shape).
		return &Column{kind: Dense, dtype: dt, n: rows, shape: cols[0].shape.Clone(), data: data}, nil
	}
	if opaque {
		offs := make([]int, 1, rows+1)
		for _, c := range cols {
			for i := 0; i < c.n; i++ {
				offs = append(offs, offs[len(offs)-1]+c.offs[i+1]-c.offs[i])
			}
		}
		return &Column{kind: Opaque, dtype: Bytes, n: rows, offs: offs, data: data}, nil
	}
	shapes := make([]Shape, 0, rows)
	for _, c := range cols {
		for i := 0; i < c.n; i++ {
			shapes = append(shapes, c.RowShape(i))
		}
	}
	r, err := NewRagged(dt, shapes, data)
	if err != nil {
		return nil, err
	}
	return r.Densify(), nil
}

// sameDenseShape reports whether every column is dense with one row shape.
func sameDenseShape(cols []*Column) bool {
	for _, c := range cols {
		if c.kind != Dense || !c.shape.Equal(cols[0].shape) {
			return false
		}
	}
	return true
}
