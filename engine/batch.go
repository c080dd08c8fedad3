package engine

import (
	"fmt"
	"slices"
	"sync"
)

// Field pairs a name with a column, for building a [Batch].
type Field struct {
	Name string
	Col  *Column
}

// Batch is an ordered set of named columns over the same rows. A batch is
// immutable once built and safe for concurrent reads; it aliases the
// columns it was built from.
//
// A batch may alias memory it does not own — a get over shared memory
// returns views into the storage unit's arena, read-only — in which case
// [Batch.Release] gives that memory back; for a batch that owns its
// columns, Release does nothing. [Batch.Select] and [Batch.Slice] of such a
// batch alias the same memory and share its release; [Batch.Take] and
// [Batch.Clone] copy, and own what they return.
type Batch struct {
	names []string
	cols  []*Column
	index map[string]int // name to position; nil for a few fields, which Col scans
	rows  int

	release *releaser // nil: owns its columns; shared by Select and Slice
}

type releaser struct {
	once sync.Once
	f    func()
}

// Views returns a batch over the same columns that runs release at its
// first [Batch.Release]: for stores whose batches alias memory they lend.
func (b *Batch) Views(release func()) *Batch {
	v := *b
	v.release = &releaser{f: release}
	return &v
}

// Aliased reports whether the batch lends memory that [Batch.Release]
// gives back: its columns are read-only and valid until then.
func (b *Batch) Aliased() bool { return b.release != nil }

// Release gives back the memory a batch of views aliases. A batch of views
// and the batches derived from it by Select or Slice share one release:
// Release on any of them gives the memory back, once, and none of their
// columns may be used afterwards; so a caller that keeps only a selection
// releases the selection. Release is idempotent, safe to call from several
// goroutines, and does nothing for a batch that owns its columns.
func (b *Batch) Release() {
	if b != nil && b.release != nil {
		b.release.once.Do(b.release.f)
	}
}

// NewBatch validates and builds a batch: names non-empty and unique, no nil
// column, every column with the same row count.
func NewBatch(fields ...Field) (*Batch, error) {
	b := &Batch{rows: -1, names: make([]string, 0, len(fields)), cols: make([]*Column, 0, len(fields))}
	if len(fields) > scanFields {
		b.index = make(map[string]int, len(fields))
	}
	for _, f := range fields {
		if f.Name == "" {
			return nil, fmt.Errorf("batch field with an empty name: %w", ErrInvalid)
		}
		if f.Col == nil {
			return nil, fmt.Errorf("batch field %q has no column: %w", f.Name, ErrInvalid)
		}
		if b.find(f.Name) >= 0 {
			return nil, fmt.Errorf("batch field %q appears twice: %w", f.Name, ErrInvalid)
		}
		if b.rows >= 0 && f.Col.Len() != b.rows {
			return nil, fmt.Errorf("batch field %q has %d rows, %q has %d: %w", f.Name, f.Col.Len(), b.names[0], b.rows, ErrInvalid)
		}
		b.rows = f.Col.Len()
		if b.index != nil {
			b.index[f.Name] = len(b.names)
		}
		b.names = append(b.names, f.Name)
		b.cols = append(b.cols, f.Col)
	}
	if b.rows < 0 {
		b.rows = 0
	}
	return b, nil
}

// OneValue returns a batch of one row of one opaque field, name, holding
// data (which it aliases), in one allocation: a small KV get's result,
// built per call. name must not be empty.
func OneValue(name string, data []byte) *Batch {
	v := &struct {
		b     Batch
		col   Column
		names [1]string
		cols  [1]*Column
		offs  [2]int
	}{names: [1]string{name}, offs: [2]int{0, len(data)}}
	v.col = Column{kind: Opaque, dtype: Bytes, n: 1, offs: v.offs[:], data: data}
	v.cols[0] = &v.col
	v.b = Batch{names: v.names[:], cols: v.cols[:], rows: 1}
	return &v.b
}

// MustBatch is [NewBatch] that panics on error, for tests and examples.
func MustBatch(fields ...Field) *Batch {
	b, err := NewBatch(fields...)
	if err != nil {
		panic(err)
	}
	return b
}

// Rows returns the number of rows.
func (b *Batch) Rows() int { return b.rows }

// Names returns the field names in order (a fresh slice).
func (b *Batch) Names() []string { return slices.Clone(b.names) }

// NumFields returns the number of columns.
func (b *Batch) NumFields() int { return len(b.cols) }

// scanFields is the most fields a batch finds by scanning its names
// rather than through a map: a small KV value's batch of one field was
// two allocations cheaper without it.
const scanFields = 8

// find returns the position of field name, or -1.
func (b *Batch) find(name string) int {
	if b.index != nil {
		if i, ok := b.index[name]; ok {
			return i
		}
		return -1
	}
	for i, n := range b.names {
		if n == name {
			return i
		}
	}
	return -1
}

// Col returns the column for name, or nil.
func (b *Batch) Col(name string) *Column {
	if i := b.find(name); i >= 0 {
		return b.cols[i]
	}
	return nil
}

// At returns the i-th field.
func (b *Batch) At(i int) Field { return Field{b.names[i], b.cols[i]} }

// Fields returns all fields in order.
func (b *Batch) Fields() []Field {
	out := make([]Field, len(b.cols))
	for i := range b.cols {
		out[i] = Field{b.names[i], b.cols[i]}
	}
	return out
}

// Select returns a batch with only the named fields, in the given order,
// aliasing b: over views, it shares b's [Batch.Release]. Unknown names are
// an error that lists them.
func (b *Batch) Select(names ...string) (*Batch, error) {
	var missing []string
	fs := make([]Field, 0, len(names))
	for _, n := range names {
		c := b.Col(n)
		if c == nil {
			missing = append(missing, n)
			continue
		}
		fs = append(fs, Field{n, c})
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("fields %s not in batch: %w", QuoteKeys(missing), ErrNotFound)
	}
	return b.derived(NewBatch(fs...))
}

// Take returns a batch of rows[i] of every column, copied: it owns its
// columns even when b is a batch of views.
func (b *Batch) Take(rows []int) (*Batch, error) {
	fs := make([]Field, len(b.cols))
	for i, c := range b.cols {
		t, err := c.Take(rows)
		if err != nil {
			return nil, fmt.Errorf("field %q: %w", b.names[i], err)
		}
		fs[i] = Field{b.names[i], t}
	}
	return NewBatch(fs...)
}

// Slice returns rows [lo, hi) of every column, aliasing b: over views, it
// shares b's [Batch.Release].
func (b *Batch) Slice(lo, hi int) (*Batch, error) {
	fs := make([]Field, len(b.cols))
	for i, c := range b.cols {
		s, err := c.Slice(lo, hi)
		if err != nil {
			return nil, err
		}
		fs[i] = Field{b.names[i], s}
	}
	return b.derived(NewBatch(fs...))
}

// derived gives a batch built over b's columns b's release, so that it
// lends the same memory as b and gives it back as b does.
func (b *Batch) derived(d *Batch, err error) (*Batch, error) {
	if err != nil {
		return nil, err
	}
	d.release = b.release
	return d, nil
}

// Clone returns a deep copy of b, which owns its columns.
func (b *Batch) Clone() *Batch {
	fs := make([]Field, len(b.cols))
	for i, c := range b.cols {
		fs[i] = Field{b.names[i], c.Clone()}
	}
	return MustBatch(fs...)
}

// Size returns the total payload bytes.
func (b *Batch) Size() int {
	n := 0
	for _, c := range b.cols {
		n += c.Size()
	}
	return n
}
