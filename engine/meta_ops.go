package engine

// Operations on BatchMeta. Functions that return a meta return a new one
// that shares no slice or map with any input: per-row slices, schemas,
// shapes, cell locations, tags and Extra are all copied (tags and Extra
// deeply, see [Tags.Clone]). Only MergeTags and AddFields change a meta in
// place.
//
// Every operation that returns an error first checks its inputs with
// [BatchMeta.Validate], so a malformed meta is reported rather than
// indexed out of range. A nil *BatchMeta behaves as a meta with no rows.

import (
	"fmt"
	"reflect"
	"slices"
	"sort"
)

// NewBatchMeta returns a meta for indexes, all in one partition, with no
// fields, no row ready, and an empty tag map per row. indexes is copied.
func NewBatchMeta(partition string, indexes []uint64) *BatchMeta {
	n := len(indexes)
	m := &BatchMeta{
		Indexes:    append(make([]uint64, 0, n), indexes...),
		Partitions: make([]string, n),
		Schema:     map[string]FieldSchema{},
		Ready:      make([]bool, n),
		Tags:       make([]Tags, n),
	}
	for i := range n {
		m.Partitions[i] = partition
		m.Tags[i] = Tags{}
	}
	return m
}

// emptyMeta returns a meta with no rows and no fields.
func emptyMeta() *BatchMeta { return NewBatchMeta("", nil) }

// Clone returns a deep copy of m that shares no memory with it; nil and
// empty slices and maps keep their nil-ness. Clone of nil is nil.
func (m *BatchMeta) Clone() *BatchMeta {
	if m == nil {
		return nil
	}
	out := &BatchMeta{
		Indexes:    slices.Clone(m.Indexes),
		Partitions: slices.Clone(m.Partitions),
		Keys:       slices.Clone(m.Keys),
		Ready:      slices.Clone(m.Ready),
		Tags:       cloneTagList(m.Tags),
		Extra:      cloneExtra(m.Extra),
		Cluster:    m.Cluster,

		PartitionGen: m.PartitionGen,
	}
	if m.Schema != nil {
		out.Schema = make(map[string]FieldSchema, len(m.Schema))
		for name, s := range m.Schema {
			out.Schema[name] = s.Clone()
		}
	}
	if m.Cells != nil {
		out.Cells = make(map[string][]CellLoc, len(m.Cells))
		for name, locs := range m.Cells {
			out.Cells[name] = slices.Clone(locs)
		}
	}
	return out
}

// SelectRows returns a meta of the rows at positions pos (0-based within
// m), in that order. A position may repeat. A position outside [0, Len)
// is an error wrapping [ErrInvalid].
func (m *BatchMeta) SelectRows(pos []int) (*BatchMeta, error) {
	m = orEmpty(m)
	if err := m.Validate(); err != nil {
		return nil, err
	}
	n := m.Len()
	for i, p := range pos {
		if p < 0 || p >= n {
			return nil, fmt.Errorf("select row position %d (argument %d) of %d rows: %w", p, i, n, ErrInvalid)
		}
	}
	return m.take(pos), nil
}

// SelectFields returns a meta with only the named fields in its schema and
// cell locations; the rows, tags and Extra are copied unchanged. Unlike the
// reference implementation, which drops unknown names silently, a name
// that is not in m's schema is an error wrapping [ErrNotFound] that lists
// every such name. A name listed twice is an error wrapping [ErrInvalid]
// that names it, as [Batch.Select] and the clients' gets refuse one: the
// meta would hold the field once, not what the caller listed.
//
// Ready is kept as it is: a row whose fields are all produced also has
// every subset of them produced. (A row that is not ready may have all the
// selected fields produced; the meta cannot tell, and so stays not ready.)
func (m *BatchMeta) SelectFields(names []string) (*BatchMeta, error) {
	m = orEmpty(m)
	if err := m.Validate(); err != nil {
		return nil, err
	}
	var missing []string
	for _, name := range names {
		if _, ok := m.Schema[name]; !ok && !slices.Contains(missing, name) {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("fields %s not in meta: %w", QuoteKeys(missing), ErrNotFound)
	}
	if d := duplicates(names); len(d) > 0 {
		return nil, fmt.Errorf("select fields: field %q appears twice: %w", d[0], ErrInvalid)
	}
	out := &BatchMeta{
		Indexes:    slices.Clone(m.Indexes),
		Partitions: slices.Clone(m.Partitions),
		Keys:       slices.Clone(m.Keys),
		Schema:     make(map[string]FieldSchema, len(names)),
		Ready:      slices.Clone(m.Ready),
		Tags:       cloneTagList(m.Tags),
		Extra:      cloneExtra(m.Extra),
		Cluster:    m.Cluster,

		PartitionGen: m.PartitionGen,
	}
	for _, name := range names {
		out.Schema[name] = m.Schema[name].Clone()
		if locs, ok := m.Cells[name]; ok {
			if out.Cells == nil {
				out.Cells = make(map[string][]CellLoc)
			}
			out.Cells[name] = slices.Clone(locs)
		}
	}
	return out, nil
}

// Reorder returns a meta whose row i is m's row pos[i]. pos must be a
// permutation of 0..Len-1; a length mismatch, a position out of range or a
// repeated position is an error wrapping [ErrInvalid]. (The reference
// reorders in place; this returns a new meta and leaves m alone.)
func (m *BatchMeta) Reorder(pos []int) (*BatchMeta, error) {
	m = orEmpty(m)
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if err := checkPermutation(pos, m.Len()); err != nil {
		return nil, err
	}
	return m.take(pos), nil
}

// Chunk splits m into n metas of consecutive rows. Sizes differ by at most
// one: the first Len%n chunks get one extra row. When n > Len the last
// chunks have no rows (they keep the schema and Extra). n <= 0, or n past
// both Len and [MaxChunks], is an error wrapping [ErrInvalid].
func (m *BatchMeta) Chunk(n int) ([]*BatchMeta, error) {
	m = orEmpty(m)
	if err := checkChunks(n, m.Len()); err != nil {
		return nil, err
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	bounds := chunkBounds(m.Len(), n)
	out := make([]*BatchMeta, n)
	for i, b := range bounds {
		out[i] = m.take(span(b[0], b[1]))
	}
	return out, nil
}

// ChunkByPartition splits m into one meta per partition, in the order each
// partition first appears; rows keep their relative order. A meta with no
// rows gives none. m must be valid (see [BatchMeta.Validate]); a meta with
// fewer partitions than rows makes it panic.
func (m *BatchMeta) ChunkByPartition() []*BatchMeta {
	if m.Empty() {
		return nil
	}
	var order []string
	groups := map[string][]int{}
	for i := range m.Len() {
		p := m.Partitions[i]
		if _, ok := groups[p]; !ok {
			order = append(order, p)
		}
		groups[p] = append(groups[p], i)
	}
	out := make([]*BatchMeta, len(order))
	for i, p := range order {
		out[i] = m.take(groups[p])
	}
	return out
}

// Union returns a meta over the same rows as m and other with the fields
// of both. The two must list the same indexes and partitions in the same
// order (else an error wrapping [ErrInvalid]); when either has no rows the
// result is a copy of the other.
//
// For a field in both, other's schema and cell locations win (if other has
// no cell locations for it, the result has none either, since m's would
// describe bytes other replaced). A row is ready only if it is ready in
// both. Extra is merged with other's values winning, and each row's tags
// are merged with other's keys winning. Keys are taken from whichever side
// has them; two different non-empty keys for one row are an error wrapping
// [ErrInvalid]. Cluster is that of the cells the result keeps: other's
// when all are other's, "" when they are of two clusters.
func (m *BatchMeta) Union(other *BatchMeta) (*BatchMeta, error) {
	if err := orEmpty(m).Validate(); err != nil {
		return nil, err
	}
	if err := orEmpty(other).Validate(); err != nil {
		return nil, fmt.Errorf("other: %w", err)
	}
	switch {
	case other.Empty():
		if m == nil {
			return emptyMeta(), nil
		}
		return m.Clone(), nil
	case m.Empty():
		return other.Clone(), nil
	}
	if m.Len() != other.Len() {
		return nil, fmt.Errorf("union of %d rows with %d rows: %w", m.Len(), other.Len(), ErrInvalid)
	}
	for i := range m.Len() {
		if m.Indexes[i] != other.Indexes[i] {
			return nil, fmt.Errorf("union: row %d has index %d and %d: %w", i, m.Indexes[i], other.Indexes[i], ErrInvalid)
		}
		if m.Partitions[i] != other.Partitions[i] {
			return nil, fmt.Errorf("union: row %d is in partition %q and %q: %w", i, m.Partitions[i], other.Partitions[i], ErrInvalid)
		}
	}

	out := m.Clone()
	switch {
	case other.Keys == nil:
	case out.Keys == nil:
		out.Keys = slices.Clone(other.Keys)
	default:
		for i, k := range other.Keys {
			switch {
			case k == "" || k == out.Keys[i]:
			case out.Keys[i] == "":
				out.Keys[i] = k
			default:
				return nil, fmt.Errorf("union: row %d has key %q and %q: %w", i, out.Keys[i], k, ErrInvalid)
			}
		}
	}
	if len(other.Schema) > 0 && out.Schema == nil {
		out.Schema = make(map[string]FieldSchema, len(other.Schema))
	}
	for name, s := range other.Schema {
		out.Schema[name] = s.Clone()
		delete(out.Cells, name)
		if locs, ok := other.Cells[name]; ok {
			if out.Cells == nil {
				out.Cells = make(map[string][]CellLoc)
			}
			out.Cells[name] = slices.Clone(locs)
		}
	}
	// The cluster whose unit ids the result's cells name: other's when
	// every cell is other's, none ("") when cells of two clusters remain.
	if len(out.Cells) > 0 || len(other.Cells) > 0 {
		mine := false
		for name := range out.Cells {
			if _, ok := other.Schema[name]; !ok {
				mine = true
			}
		}
		switch {
		case !mine:
			out.Cluster = other.Cluster
		case len(other.Cells) > 0 && other.Cluster != m.Cluster:
			out.Cluster = "" // of several clusters: not checked
		}
	}
	// The rows' generation: the one side's when the other knows none
	// (a put's meta), none when the two differ.
	switch {
	case out.PartitionGen == 0:
		out.PartitionGen = other.PartitionGen
	case other.PartitionGen != 0 && other.PartitionGen != out.PartitionGen:
		out.PartitionGen = 0
	}
	for i, r := range other.Ready {
		out.Ready[i] = out.Ready[i] && r
	}
	for i, t := range other.Tags {
		out.Tags[i] = out.Tags[i].Merge(t)
	}
	for k, v := range other.Extra {
		if out.Extra == nil {
			out.Extra = make(map[string]any, len(other.Extra))
		}
		out.Extra[k] = cloneValue(v)
	}
	return out, nil
}

// ConcatMetas joins metas row-wise, skipping those with no rows (nil
// included). With no rows at all the result is an empty meta.
//
// Every non-empty input must have the same field names (else an error
// wrapping [ErrInvalid] naming the differing fields) and, per field, the
// same dtype (else [ErrDTypeMismatch] naming the field). A field that is
// ragged in any input, or dense with different row shapes across inputs,
// becomes ragged with every row's shape; a dense input contributes its row
// shape for each of its rows. Other layouts must agree ([ErrInvalid]).
//
// Cell locations are concatenated for every field any input has them for
// (zero [CellLoc] for rows of inputs without). Keys are nil when no input
// has keys, else one per row ("" for rows of inputs without). Extra is the
// union of the inputs' Extra maps; a key present in several inputs with
// values that are not [reflect.DeepEqual] is an error wrapping
// [ErrInvalid] naming the key. (int 1 and float64 1 differ, so compare
// values that went through the same encoding.) A row (partition and
// index) in two inputs, or twice in one, is an error wrapping
// [ErrInvalid] naming it.
func ConcatMetas(metas ...*BatchMeta) (*BatchMeta, error) {
	var parts []*BatchMeta
	var argPos []int // each part's position in metas, for messages
	for i, m := range metas {
		if m.Empty() {
			continue
		}
		if err := m.Validate(); err != nil {
			return nil, fmt.Errorf("concat meta %d: %w", i, err)
		}
		parts = append(parts, m)
		argPos = append(argPos, i)
	}
	if len(parts) == 0 {
		return emptyMeta(), nil
	}

	first := parts[0]
	names := first.FieldNames()
	for j, p := range parts[1:] {
		if only0, onlyJ := diffNames(first.Schema, p.Schema); len(only0)+len(onlyJ) > 0 {
			return nil, fmt.Errorf("concat: fields %q only in meta %d, %q only in meta %d: %w",
				only0, argPos[0], onlyJ, argPos[j+1], ErrInvalid)
		}
	}

	rows := 0
	hasKeys := false
	for _, p := range parts {
		rows += p.Len()
		hasKeys = hasKeys || p.Keys != nil
	}
	if err := concatDistinct(parts, argPos, rows); err != nil {
		return nil, err
	}
	out := &BatchMeta{
		Indexes:    make([]uint64, 0, rows),
		Partitions: make([]string, 0, rows),
		Schema:     make(map[string]FieldSchema, len(names)),
		Ready:      make([]bool, 0, rows),
		Tags:       make([]Tags, 0, rows),
		Cluster:    first.Cluster,

		PartitionGen: first.PartitionGen,
	}
	for _, p := range parts {
		if p.Cluster != first.Cluster {
			out.Cluster = "" // of several clusters: not checked
		}
		if p.Cluster != first.Cluster || p.PartitionGen != first.PartitionGen {
			out.PartitionGen = 0 // rows of several generations
		}
	}
	if hasKeys {
		out.Keys = make([]string, 0, rows)
	}
	for _, p := range parts {
		out.Indexes = append(out.Indexes, p.Indexes...)
		out.Partitions = append(out.Partitions, p.Partitions...)
		out.Ready = append(out.Ready, p.Ready...)
		for _, t := range p.Tags {
			out.Tags = append(out.Tags, t.Clone())
		}
		if hasKeys {
			if p.Keys != nil {
				out.Keys = append(out.Keys, p.Keys...)
			} else {
				out.Keys = append(out.Keys, make([]string, p.Len())...)
			}
		}
	}

	for _, name := range names {
		s, err := concatSchema(name, parts, argPos)
		if err != nil {
			return nil, err
		}
		out.Schema[name] = s
		if locs := concatCells(name, parts, rows); locs != nil {
			if out.Cells == nil {
				out.Cells = make(map[string][]CellLoc)
			}
			out.Cells[name] = locs
		}
	}

	for j, p := range parts {
		for k, v := range p.Extra {
			if have, ok := out.Extra[k]; ok {
				if !reflect.DeepEqual(have, v) {
					return nil, fmt.Errorf("concat: extra %q differs between metas (meta %d has %v, an earlier one %v): %w",
						k, argPos[j], v, have, ErrInvalid)
				}
				continue
			}
			if out.Extra == nil {
				out.Extra = make(map[string]any)
			}
			out.Extra[k] = cloneValue(v)
		}
	}
	return out, nil
}

// concatDistinct refuses a row (partition and index) that parts name
// twice: a put of the result would write its cells twice, and a get
// would read it twice, a sample trained on twice without a word.
func concatDistinct(parts []*BatchMeta, argPos []int, rows int) error {
	type rowKey struct {
		partition string
		index     uint64
	}
	seen := make(map[rowKey]int, rows) // the meta that named it first
	for j, p := range parts {
		for i, gi := range p.Indexes {
			k := rowKey{p.Partitions[i], gi}
			if first, dup := seen[k]; dup {
				where := fmt.Sprintf("in meta %d and meta %d", first, argPos[j])
				if first == argPos[j] {
					where = fmt.Sprintf("twice in meta %d", first)
				}
				return fmt.Errorf("concat: row %d of partition %q is %s: %w", gi, k.partition, where, ErrInvalid)
			}
			seen[k] = argPos[j]
		}
	}
	return nil
}

// concatSchema joins one field's schema across parts (see [ConcatMetas]).
func concatSchema(name string, parts []*BatchMeta, argPos []int) (FieldSchema, error) {
	first := parts[0].Schema[name]
	otherKind := -1 // a part whose layout differs from the first's
	sameShape, denseOrRagged := true, true
	for j, p := range parts {
		s := p.Schema[name]
		if s.DType != first.DType {
			return FieldSchema{}, fmt.Errorf("concat: field %q is %v in meta %d and %v in meta %d: %w",
				name, first.DType, argPos[0], s.DType, argPos[j], ErrDTypeMismatch)
		}
		if s.Kind != first.Kind && otherKind < 0 {
			otherKind = j
		}
		sameShape = sameShape && s.Shape.Equal(first.Shape)
		denseOrRagged = denseOrRagged && (s.Kind == Dense || s.Kind == Ragged)
	}
	switch {
	case otherKind < 0 && first.Kind == Dense && sameShape:
		return FieldSchema{DType: first.DType, Kind: Dense, Shape: first.Shape.Clone()}, nil
	case denseOrRagged:
		out := FieldSchema{DType: first.DType, Kind: Ragged}
		for _, p := range parts {
			s := p.Schema[name]
			for i := range p.Len() {
				out.Shapes = append(out.Shapes, s.RowShape(i).Clone())
			}
		}
		return out, nil
	case otherKind < 0:
		// Opaque, or a placeholder (InvalidKind) for a field not produced
		// yet: nothing per row to carry.
		return FieldSchema{DType: first.DType, Kind: first.Kind, Shape: first.Shape.Clone()}, nil
	}
	return FieldSchema{}, fmt.Errorf("concat: field %q is %v in meta %d and %v in meta %d: %w",
		name, first.Kind, argPos[0], parts[otherKind].Schema[name].Kind, argPos[otherKind], ErrInvalid)
}

// concatCells joins one field's cell locations across parts, or returns nil
// when no part has any.
func concatCells(name string, parts []*BatchMeta, rows int) []CellLoc {
	found := false
	for _, p := range parts {
		if _, ok := p.Cells[name]; ok {
			found = true
		}
	}
	if !found {
		return nil
	}
	out := make([]CellLoc, 0, rows)
	for _, p := range parts {
		if locs, ok := p.Cells[name]; ok {
			out = append(out, locs...)
		} else {
			out = append(out, make([]CellLoc, p.Len())...)
		}
	}
	return out
}

// MergeTags merges tags[i] into row i's tags, tags[i]'s keys winning. The
// values are copied. len(tags) must equal Len (else an error wrapping
// [ErrInvalid]). It changes m in place.
func (m *BatchMeta) MergeTags(tags []Tags) error {
	if len(tags) != m.Len() {
		return fmt.Errorf("merge %d tag maps into a meta of %d rows: %w", len(tags), m.Len(), ErrInvalid)
	}
	if m == nil {
		return nil // no rows, no tags
	}
	if len(m.Tags) != m.Len() {
		return fmt.Errorf("meta has %d rows but %d tag maps: %w", m.Len(), len(m.Tags), ErrInvalid)
	}
	for i, t := range tags {
		m.Tags[i] = m.Tags[i].Merge(t)
	}
	return nil
}

// AddFields records b's columns in m's schema, replacing fields of the
// same name, and marks every row ready (the reference add_fields with
// set_all_ready). b must have Len rows (else an error wrapping
// [ErrInvalid]); a nil batch or one with no fields changes nothing. Cell
// locations are left as they are: a new field has none until its bytes are
// placed. It changes m in place; Ready is replaced by a new slice.
func (m *BatchMeta) AddFields(b *Batch) error {
	if b == nil || b.NumFields() == 0 {
		return nil
	}
	if b.Rows() != m.Len() {
		return fmt.Errorf("add fields of %d rows to a meta of %d rows: %w", b.Rows(), m.Len(), ErrInvalid)
	}
	if m == nil {
		return fmt.Errorf("add fields to a nil meta: %w", ErrInvalid)
	}
	if m.Schema == nil {
		m.Schema = make(map[string]FieldSchema, b.NumFields())
	}
	for _, f := range b.Fields() {
		m.Schema[f.Name] = SchemaOf(f.Col)
	}
	m.Ready = make([]bool, m.Len())
	for i := range m.Ready {
		m.Ready[i] = true
	}
	return nil
}

// take returns a meta of m's rows at pos, which the caller has checked.
func (m *BatchMeta) take(pos []int) *BatchMeta {
	n := m.Len()
	out := &BatchMeta{
		Indexes:    pick(m.Indexes, pos),
		Partitions: pick(m.Partitions, pos),
		Ready:      pick(m.Ready, pos),
		Tags:       make([]Tags, len(pos)),
		Extra:      cloneExtra(m.Extra),
		Cluster:    m.Cluster,

		PartitionGen: m.PartitionGen,
	}
	if m.Keys != nil {
		out.Keys = pick(m.Keys, pos)
	}
	for i, p := range pos {
		out.Tags[i] = m.Tags[p].Clone()
	}
	if m.Schema != nil {
		out.Schema = make(map[string]FieldSchema, len(m.Schema))
		for name, s := range m.Schema {
			ns := FieldSchema{DType: s.DType, Kind: s.Kind, Shape: s.Shape.Clone()}
			switch {
			case s.Shapes != nil && len(s.Shapes) == n:
				ns.Shapes = make([]Shape, len(pos))
				for i, p := range pos {
					ns.Shapes[i] = s.Shapes[p].Clone()
				}
			case s.Shapes != nil:
				// Not row-aligned (only ragged fields are checked by
				// Validate): keep as is rather than guess.
				ns.Shapes = s.Clone().Shapes
			}
			out.Schema[name] = ns
		}
	}
	if m.Cells != nil {
		out.Cells = make(map[string][]CellLoc, len(m.Cells))
		for name, locs := range m.Cells {
			out.Cells[name] = pick(locs, pos)
		}
	}
	return out
}

func orEmpty(m *BatchMeta) *BatchMeta {
	if m == nil {
		return emptyMeta()
	}
	return m
}

func pick[T any](s []T, pos []int) []T {
	out := make([]T, len(pos))
	for i, p := range pos {
		out[i] = s[p]
	}
	return out
}

// span returns lo, lo+1, …, hi-1.
func span(lo, hi int) []int {
	out := make([]int, hi-lo)
	for i := range out {
		out[i] = lo + i
	}
	return out
}

// MaxChunks bounds the parts Chunk splits a meta into beyond its rows: a
// meta of fewer rows splits into at most MaxChunks parts (the last ones
// empty), one of more into at most as many parts as it has rows.
const MaxChunks = 1 << 20

// checkChunks refuses to split rows into n parts when n is not positive,
// or when it is past both the rows and MaxChunks: each part is a meta of
// its own, and a count such as 1<<40 would allocate them all.
func checkChunks(n, rows int) error {
	switch {
	case n <= 0:
		return fmt.Errorf("chunk into %d parts: %w", n, ErrInvalid)
	case n > max(rows, MaxChunks):
		return fmt.Errorf("chunk %d rows into %d parts: more than the rows and the limit of %d parts: %w", rows, n, MaxChunks, ErrInvalid)
	}
	return nil
}

// chunkBounds splits size rows into n [lo, hi) ranges, the first size%n
// one row longer.
func chunkBounds(size, n int) [][2]int {
	base, extra := size/n, size%n
	out := make([][2]int, n)
	lo := 0
	for i := range out {
		hi := lo + base
		if i < extra {
			hi++
		}
		out[i] = [2]int{lo, hi}
		lo = hi
	}
	return out
}

// checkPermutation reports why pos is not a permutation of 0..n-1.
func checkPermutation(pos []int, n int) error {
	if len(pos) != n {
		return fmt.Errorf("reorder with %d positions, want %d: %w", len(pos), n, ErrInvalid)
	}
	seen := make([]bool, n)
	for _, p := range pos {
		if p < 0 || p >= n {
			return fmt.Errorf("reorder position %d out of range [0, %d): %w", p, n, ErrInvalid)
		}
		if seen[p] {
			return fmt.Errorf("reorder position %d appears twice: %w", p, ErrInvalid)
		}
		seen[p] = true
	}
	return nil
}

// diffNames returns the sorted keys only in a and only in b.
func diffNames(a, b map[string]FieldSchema) (onlyA, onlyB []string) {
	for k := range a {
		if _, ok := b[k]; !ok {
			onlyA = append(onlyA, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			onlyB = append(onlyB, k)
		}
	}
	sort.Strings(onlyA)
	sort.Strings(onlyB)
	return onlyA, onlyB
}

// duplicates returns each value that appears more than once in s, in order
// of its second appearance.
func duplicates(s []string) []string {
	if len(s) <= 16 {
		// Few names (a put's keys, its fields): compared pairwise, with
		// no map to allocate.
		var out []string
		for i, v := range s {
			if n := countOf(s[:i], v); n == 1 {
				out = append(out, v)
			}
		}
		return out
	}
	seen := make(map[string]int, len(s))
	var out []string
	for _, v := range s {
		seen[v]++
		if seen[v] == 2 {
			out = append(out, v)
		}
	}
	return out
}

func countOf(s []string, v string) int {
	n := 0
	for _, w := range s {
		if w == v {
			n++
		}
	}
	return n
}

func cloneTagList(tags []Tags) []Tags {
	if tags == nil {
		return nil
	}
	out := make([]Tags, len(tags))
	for i, t := range tags {
		out[i] = t.Clone()
	}
	return out
}

// cloneExtra deep-copies an Extra map (nil stays nil).
func cloneExtra(e map[string]any) map[string]any {
	if e == nil {
		return nil
	}
	out := make(map[string]any, len(e))
	for k, v := range e {
		out[k] = cloneValue(v)
	}
	return out
}
