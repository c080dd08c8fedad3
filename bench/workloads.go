package bench

// The reference performance test's workloads (inventory §8): a batch of
// rows with a number of fields of seq values each. The simple case is all
// dense float32; the complex case splits the fields into thirds (rounded
// up): dense float32, ragged float32 with row lengths 1…seq in arithmetic
// progression, and strings of seq×4 hex characters. Contents are a pure
// function of (row, field, position), so every process that builds a
// workload builds the same bytes.

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"

	"github.com/cespare/xxhash/v2"

	"github.com/tqgo/tq/engine"
)

// Workload is the shape of one benchmark batch.
type Workload struct {
	Name   string
	Batch  int // rows
	Fields int
	Seq    int // values per row per field
}

// The named workloads. Tiny is for tests of the harness itself.
var (
	Small  = Workload{Name: "small", Batch: 1024, Fields: 9, Seq: 8192}   // 288 MiB simple
	Medium = Workload{Name: "medium", Batch: 2048, Fields: 8, Seq: 32768} // 2 GiB simple
	Tiny   = Workload{Name: "tiny", Batch: 16, Fields: 3, Seq: 64}
)

// Workloads returns the named workloads: "all" is small and medium.
func Workloads(name string) ([]Workload, error) {
	switch name {
	case "small":
		return []Workload{Small}, nil
	case "medium":
		return []Workload{Medium}, nil
	case "tiny":
		return []Workload{Tiny}, nil
	case "all":
		return []Workload{Small, Medium}, nil
	}
	return nil, fmt.Errorf("workload %q (want small, medium or all): %w", name, engine.ErrInvalid)
}

// The cases.
const (
	Simple  = "simple"
	Complex = "complex"
)

// Cases returns the named cases: "all" is simple and complex.
func Cases(name string) ([]string, error) {
	switch name {
	case Simple, Complex:
		return []string{name}, nil
	case "all":
		return []string{Simple, Complex}, nil
	}
	return nil, fmt.Errorf("case %q (want simple, complex or all): %w", name, engine.ErrInvalid)
}

// split returns how many fields of each kind the case has.
func (w Workload) split(cs string) (dense, ragged, strs int) {
	if cs != Complex {
		return w.Fields, 0, 0
	}
	dense = (w.Fields + 2) / 3
	ragged = (w.Fields - dense + 1) / 2
	return dense, ragged, w.Fields - dense - ragged
}

// raggedLen is the length of row r of a ragged field: 1…seq in arithmetic
// progression over the rows.
func (w Workload) raggedLen(r int) int {
	if w.Batch == 1 {
		return w.Seq
	}
	return 1 + r*(w.Seq-1)/(w.Batch-1)
}

// Bytes returns the payload bytes of the workload in the given case.
func (w Workload) Bytes(cs string) int64 {
	dense, ragged, strs := w.split(cs)
	n := int64(dense) * int64(w.Batch) * int64(w.Seq) * 4
	for r := range w.Batch {
		n += int64(ragged) * int64(w.raggedLen(r)) * 4
	}
	return n + int64(strs)*int64(w.Batch)*int64(w.Seq)*4
}

// Keys returns the batch's keys, test_key_0 … test_key_{batch-1}.
func (w Workload) Keys() []string {
	keys := make([]string, w.Batch)
	for i := range keys {
		keys[i] = fmt.Sprintf("test_key_%d", i)
	}
	return keys
}

// Build makes the workload's batch in the given case. Fields are named
// field_00, field_01, … in the order dense, ragged, strings.
func (w Workload) Build(cs string) (*engine.Batch, error) {
	if cs != Simple && cs != Complex {
		return nil, fmt.Errorf("case %q: %w", cs, engine.ErrInvalid)
	}
	if w.Batch <= 0 || w.Fields <= 0 || w.Seq <= 0 {
		return nil, fmt.Errorf("workload %+v: %w", w, engine.ErrInvalid)
	}
	dense, ragged, _ := w.split(cs)
	fs := make([]engine.Field, w.Fields)
	for f := range fs {
		var col *engine.Column
		var err error
		switch {
		case f < dense:
			data := make([]byte, w.Batch*w.Seq*4)
			for r := range w.Batch {
				fillFloats(data[r*w.Seq*4:(r+1)*w.Seq*4], r, f)
			}
			col, err = engine.NewDense(engine.Float32, w.Batch, engine.Shape{w.Seq}, data)
		case f < dense+ragged:
			shapes := make([]engine.Shape, w.Batch)
			total := 0
			for r := range shapes {
				shapes[r] = engine.Shape{w.raggedLen(r)}
				total += w.raggedLen(r)
			}
			data := make([]byte, total*4)
			at := 0
			for r, s := range shapes {
				fillFloats(data[at:at+s[0]*4], r, f)
				at += s[0] * 4
			}
			col, err = engine.NewRagged(engine.Float32, shapes, data)
		default:
			per := w.Seq * 4
			offs := make([]int, w.Batch+1)
			data := make([]byte, w.Batch*per)
			for r := range w.Batch {
				offs[r+1] = offs[r] + per
				fillHex(data[offs[r]:offs[r+1]], r, f)
			}
			col, err = engine.NewOpaque(offs, data)
		}
		if err != nil {
			return nil, fmt.Errorf("build field %d: %w", f, err)
		}
		fs[f] = engine.Field{Name: fmt.Sprintf("field_%02d", f), Col: col}
	}
	return engine.NewBatch(fs...)
}

// fillFloats writes little-endian float32 values for row r of field f.
func fillFloats(b []byte, r, f int) {
	base := float32(r%4099) + float32(f)*0.25
	for j := 0; j+4 <= len(b); j += 4 {
		binary.LittleEndian.PutUint32(b[j:], math.Float32bits(base+float32(j>>2)))
	}
}

// fillHex writes hex characters from a splitmix64 stream seeded by row and
// field.
func fillHex(b []byte, r, f int) {
	const hex = "0123456789abcdef"
	x := uint64(r)<<20 ^ uint64(f)
	for i := 0; i < len(b); i += 16 {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
		z = (z ^ z>>27) * 0x94d049bb133111eb
		z ^= z >> 31
		for k := 0; k < 16 && i+k < len(b); k++ {
			b[i+k] = hex[z>>(4*k)&15]
		}
	}
}

// Checksum hashes a batch: for every field in name order its name, kind,
// dtype, row count, row offsets (ragged and opaque) and bytes. Two batches
// with the same checksum hold the same fields with the same contents, in
// whatever order their fields come.
func Checksum(b *engine.Batch) uint64 {
	d := xxhash.New()
	names := b.Names()
	slices.Sort(names)
	var n [8]byte
	word := func(v int) {
		binary.LittleEndian.PutUint64(n[:], uint64(v))
		d.Write(n[:])
	}
	for _, name := range names {
		c := b.Col(name)
		d.WriteString(name)
		word(int(c.Kind()))
		word(int(c.DType()))
		word(c.Len())
		if c.Kind() != engine.Dense {
			for _, o := range c.Offsets() {
				word(o)
			}
		}
		d.Write(c.Data())
	}
	return d.Sum64()
}
