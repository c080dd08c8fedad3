package engine

import (
	"fmt"
	"slices"
	"sort"
)

// FieldSchema describes one field over the rows of a [BatchMeta].
type FieldSchema struct {
	DType DType `json:"dtype"`
	Kind  Kind  `json:"kind"`
	// Shape is the per-row shape of a dense field.
	Shape Shape `json:"shape,omitempty"`
	// Shapes holds each row's shape for a ragged field, aligned with the
	// meta's rows; a nil entry means the row's shape is not known (the cell
	// is not produced).
	Shapes []Shape `json:"shapes,omitempty"`
}

// Clone returns a deep copy.
func (s FieldSchema) Clone() FieldSchema {
	out := s
	out.Shape = s.Shape.Clone()
	if s.Shapes != nil {
		out.Shapes = make([]Shape, len(s.Shapes))
		for i, sh := range s.Shapes {
			out.Shapes[i] = sh.Clone()
		}
	}
	return out
}

// Validate checks the schema of field name on its own: a known kind, a
// dtype that kind can hold (Bytes, and only Bytes, for an opaque field),
// and shapes a cell can have (a dense field's; each known row shape of a
// ragged one), or a placeholder for a field no row holds yet (no kind, no
// shapes). How many
// row shapes a ragged field has is the meta's to check.
func (s FieldSchema) Validate(name string) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("meta field %q: %s: %w", name, fmt.Sprintf(format, args...), ErrInvalid)
	}
	switch s.Kind {
	case InvalidKind:
		// A placeholder: registered (perhaps with a dtype), not produced.
		if s.DType != InvalidDType && !s.DType.Valid() || len(s.Shape) > 0 || s.Shapes != nil {
			return bad("a placeholder (no kind) with dtype %v, shape %v and %d row shapes", s.DType, s.Shape, len(s.Shapes))
		}
		return nil
	case Dense, Ragged:
		if !s.DType.Valid() || s.DType == Bytes {
			return bad("a %v field of dtype %v", s.Kind, s.DType)
		}
	case Opaque:
		if s.DType != Bytes {
			return bad("an opaque field of dtype %v (opaque fields are bytes)", s.DType)
		}
	default:
		return bad("kind %v", s.Kind)
	}
	if s.Kind != Ragged && s.Shapes != nil {
		return bad("%v field with row shapes", s.Kind)
	}
	if s.Kind != Dense && len(s.Shape) > 0 {
		return bad("%v field with a shape %v", s.Kind, s.Shape)
	}
	if s.Kind == Dense {
		if _, err := s.Shape.CellBytes(s.DType); err != nil {
			return fmt.Errorf("meta field %q: %w", name, err)
		}
	}
	for i, sh := range s.Shapes {
		if sh == nil {
			continue
		}
		if _, err := sh.CellBytes(s.DType); err != nil {
			return fmt.Errorf("meta field %q, row %d: %w", name, i, err)
		}
	}
	return nil
}

// RowShape returns row i's shape under this schema (nil if unknown).
func (s FieldSchema) RowShape(i int) Shape {
	switch s.Kind {
	case Dense:
		return s.Shape
	case Ragged:
		if i < len(s.Shapes) {
			return s.Shapes[i]
		}
	}
	return nil
}

// SchemaOf describes a column as a field schema for its rows.
func SchemaOf(c *Column) FieldSchema {
	switch c.Kind() {
	case Dense:
		return FieldSchema{DType: c.DType(), Kind: Dense, Shape: c.Shape().Clone()}
	case Ragged:
		return FieldSchema{DType: c.DType(), Kind: Ragged, Shapes: c.Shapes()}
	default:
		return FieldSchema{DType: Bytes, Kind: Opaque}
	}
}

// BatchMeta is what the controller hands out for a batch of rows: where the
// rows are (partition, global index, key), what their fields look like,
// whether they are produced, their tags, and where each cell's bytes live.
// It is columnar: every per-row slice has one entry per row, in order.
//
// A BatchMeta is a plain value: not safe for concurrent mutation; the
// operations in this package return new metas and never alias the input's
// slices or maps.
type BatchMeta struct {
	Indexes    []uint64 `json:"indexes"`
	Partitions []string `json:"partitions"`
	// Keys holds each row's KV key; nil when no row has one, "" for a row
	// without a key.
	Keys   []string               `json:"keys,omitempty"`
	Schema map[string]FieldSchema `json:"schema,omitempty"`
	// Ready reports, per row, whether every field in Schema is produced.
	Ready []bool `json:"ready"`
	Tags  []Tags `json:"tags"`
	// Cells maps a field to the location of each row's bytes (zero
	// [CellLoc] for a cell not produced).
	Cells map[string][]CellLoc `json:"cells,omitempty"`
	// Extra is batch-level information a caller attaches.
	Extra map[string]any `json:"extra,omitempty"`
	// Cluster, when not "", is the cluster whose controller answered with
	// the meta: its cells' unit ids name units of that cluster only, and a
	// client reading them after its controller started anew (another
	// cluster) finds them lost rather than another unit's bytes.
	Cluster string `json:"cluster,omitempty"`
	// PartitionGen, in a fetch's meta, is the generation of the partition
	// that served it: the controller's number for it, new each time a
	// partition of that id is made (one cleared and made again has
	// another), kept across the controller's restarts (a checkpoint load
	// numbers the partitions it loads anew). 0: not known (a controller
	// from before it; metas other than a fetch's). A later fetch passes
	// it as [FetchRequest.PartitionGen]. A meta made from one (Clone,
	// SelectRows, SelectFields, Chunk, Union with a meta that has none)
	// keeps it; ConcatMetas of rows of several generations, or a Union of
	// two that differ, has none.
	PartitionGen uint64 `json:"partition_gen,omitempty"`
}

// Len returns the number of rows.
func (m *BatchMeta) Len() int {
	if m == nil {
		return 0
	}
	return len(m.Indexes)
}

// Empty reports whether the meta has no rows.
func (m *BatchMeta) Empty() bool { return m.Len() == 0 }

// FieldNames returns the field names in sorted order.
func (m *BatchMeta) FieldNames() []string {
	out := make([]string, 0, len(m.Schema))
	for k := range m.Schema {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// IsReady reports whether the meta has rows and all of them are produced.
func (m *BatchMeta) IsReady() bool {
	if m.Len() == 0 {
		return false
	}
	return !slices.Contains(m.Ready, false)
}

// Validate checks that every per-row slice has one entry per row, that
// ragged shapes and cell locations are aligned with the rows, and that the
// schema is well formed.
func (m *BatchMeta) Validate() error {
	n := len(m.Indexes)
	check := func(what string, l int) error {
		if l != n {
			return fmt.Errorf("meta has %d rows but %d %s: %w", n, l, what, ErrInvalid)
		}
		return nil
	}
	if err := check("partitions", len(m.Partitions)); err != nil {
		return err
	}
	if m.Keys != nil {
		if err := check("keys", len(m.Keys)); err != nil {
			return err
		}
	}
	if err := check("ready flags", len(m.Ready)); err != nil {
		return err
	}
	if err := check("tag maps", len(m.Tags)); err != nil {
		return err
	}
	for name, s := range m.Schema {
		if name == "" {
			return fmt.Errorf("meta field with an empty name: %w", ErrInvalid)
		}
		if err := s.Validate(name); err != nil {
			return err
		}
		if s.Kind == Ragged {
			if err := check(fmt.Sprintf("shapes for ragged field %q", name), len(s.Shapes)); err != nil {
				return err
			}
		}
	}
	for name, locs := range m.Cells {
		if _, ok := m.Schema[name]; !ok {
			return fmt.Errorf("meta has cell locations for field %q that is not in its schema: %w", name, ErrInvalid)
		}
		if err := check(fmt.Sprintf("cell locations for field %q", name), len(locs)); err != nil {
			return err
		}
	}
	return nil
}

// KVMeta is the KV API's view of a batch: keys of one partition with their
// tags and the fields they hold.
type KVMeta struct {
	Partition string         `json:"partition"`
	Keys      []string       `json:"keys"`
	Tags      []Tags         `json:"tags"`
	Fields    []string       `json:"fields,omitempty"`
	Extra     map[string]any `json:"extra,omitempty"`
}

// Len returns the number of keys.
func (m *KVMeta) Len() int {
	if m == nil {
		return 0
	}
	return len(m.Keys)
}
