package engine

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/require"
)

func loc(unit UnitID, off uint64) CellLoc {
	return CellLoc{Unit: unit, Addr: RemoteAddr{Offset: off, Len: 8}}
}

// testMeta returns a valid meta of 4 rows in two partitions with a dense,
// a ragged and an opaque field, keys, tags, cells and Extra.
func testMeta() *BatchMeta {
	return &BatchMeta{
		Indexes:    []uint64{10, 11, 12, 13},
		Partitions: []string{"p0", "p1", "p0", "p1"},
		Keys:       []string{"k0", "k1", "k2", "k3"},
		Schema: map[string]FieldSchema{
			"ids":  {DType: Int64, Kind: Dense, Shape: Shape{3}},
			"resp": {DType: Float32, Kind: Ragged, Shapes: []Shape{{1}, {2}, {3}, {4}}},
			"text": {DType: Bytes, Kind: Opaque},
		},
		Ready: []bool{true, false, true, true},
		Tags: []Tags{
			{"i": 0, "nested": map[string]any{"v": []any{"a"}}},
			{"i": 1},
			{"i": 2},
			{"i": 3},
		},
		Cells: map[string][]CellLoc{
			"ids": {loc(1, 0), loc(2, 0), loc(1, 8), {}},
		},
		Extra: map[string]any{"step": 7, "list": []any{1, 2}},
	}
}

// metaOf returns a meta of n rows starting at index first, all in
// partition p and ready, with one dense field per name.
func metaOf(p string, first uint64, n int, fields ...string) *BatchMeta {
	idx := make([]uint64, n)
	for i := range idx {
		idx[i] = first + uint64(i)
	}
	m := NewBatchMeta(p, idx)
	for i := range m.Ready {
		m.Ready[i] = true
	}
	for _, f := range fields {
		m.Schema[f] = FieldSchema{DType: Float32, Kind: Dense, Shape: Shape{2}}
	}
	return m
}

func wantErrIs(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("got error %v, want %v", err, target)
	}
}

func TestNewBatchMeta(t *testing.T) {
	idx := []uint64{3, 1, 2}
	m := NewBatchMeta("train", idx)
	want := &BatchMeta{
		Indexes:    []uint64{3, 1, 2},
		Partitions: []string{"train", "train", "train"},
		Schema:     map[string]FieldSchema{},
		Ready:      []bool{false, false, false},
		Tags:       []Tags{{}, {}, {}},
	}
	if diff := cmp.Diff(want, m); diff != "" {
		t.Errorf("meta (-want +got):\n%s", diff)
	}
	idx[0] = 99
	if m.Indexes[0] != 3 {
		t.Error("NewBatchMeta aliases its indexes")
	}
	if err := m.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	if m.IsReady() {
		t.Error("IsReady: got true with no row produced")
	}
}

// Reference: test_basic_init, test_size_property,
// test_production_status_vector.
func TestBatchMetaBasic(t *testing.T) {
	m := testMeta()
	if err := m.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if m.Len() != 4 || m.Empty() {
		t.Errorf("got Len %d, Empty %v, want 4, false", m.Len(), m.Empty())
	}
	if diff := cmp.Diff([]string{"ids", "resp", "text"}, m.FieldNames()); diff != "" {
		t.Errorf("field names (-want +got):\n%s", diff)
	}
	if m.IsReady() {
		t.Error("IsReady: got true with row 1 not produced")
	}
	m.Ready[1] = true
	if !m.IsReady() {
		t.Error("IsReady: got false with every row produced")
	}
	var nilMeta *BatchMeta
	if nilMeta.Len() != 0 || !nilMeta.Empty() || nilMeta.IsReady() {
		t.Error("nil meta: want no rows, empty, not ready")
	}
	if emptyMeta().IsReady() {
		t.Error("empty meta: got ready, want not ready")
	}
	if got := m.Schema["resp"].RowShape(2); !got.Equal(Shape{3}) {
		t.Errorf("RowShape: got %v, want (3)", got)
	}
	if got := m.Schema["ids"].RowShape(2); !got.Equal(Shape{3}) {
		t.Errorf("dense RowShape: got %v, want (3)", got)
	}
}

func TestBatchMetaValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(m *BatchMeta)
	}{
		{"partitions short", func(m *BatchMeta) { m.Partitions = m.Partitions[:3] }},
		{"keys long", func(m *BatchMeta) { m.Keys = append(m.Keys, "k4") }},
		{"ready short", func(m *BatchMeta) { m.Ready = nil }},
		{"tags short", func(m *BatchMeta) { m.Tags = m.Tags[:1] }},
		{"ragged shapes short", func(m *BatchMeta) {
			s := m.Schema["resp"]
			s.Shapes = s.Shapes[:2]
			m.Schema["resp"] = s
		}},
		{"empty field name", func(m *BatchMeta) { m.Schema[""] = FieldSchema{DType: Bool, Kind: Dense} }},
		{"cells short", func(m *BatchMeta) { m.Cells["ids"] = m.Cells["ids"][:2] }},
		{"cells for an unknown field", func(m *BatchMeta) { m.Cells["nope"] = make([]CellLoc, 4) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := testMeta()
			tt.change(m)
			wantErrIs(t, m.Validate(), ErrInvalid)
		})
	}
	t.Run("nil keys", func(t *testing.T) {
		m := testMeta()
		m.Keys = nil
		if err := m.Validate(); err != nil {
			t.Errorf("got %v, want nil", err)
		}
	})
}

// Reference: test_shallow_copy_isolation_global_indexes / _extra_info /
// _field_schema.
func TestBatchMetaClone(t *testing.T) {
	orig := testMeta()
	c := orig.Clone()
	if diff := cmp.Diff(testMeta(), c); diff != "" {
		t.Fatalf("clone (-want +got):\n%s", diff)
	}
	mutateMeta(c)
	if diff := cmp.Diff(testMeta(), orig); diff != "" {
		t.Errorf("changing the clone changed the source (-want +got):\n%s", diff)
	}
	if (*BatchMeta)(nil).Clone() != nil {
		t.Error("Clone of nil: got non-nil")
	}
	// nil and empty keep their nil-ness.
	m := NewBatchMeta("p", nil)
	if diff := cmp.Diff(m, m.Clone()); diff != "" {
		t.Errorf("clone of an empty meta (-want +got):\n%s", diff)
	}
}

// mutateMeta changes every slice, map and nested value a meta built by
// testMeta reaches (whatever rows and fields are left).
func mutateMeta(m *BatchMeta) {
	for i := range m.Indexes {
		m.Indexes[i] += 100
		m.Partitions[i] += "x"
		m.Ready[i] = !m.Ready[i]
		if m.Keys != nil {
			m.Keys[i] += "x"
		}
		m.Tags[i]["i"] = -1
		m.Tags[i]["added"] = true
		if n, ok := m.Tags[i]["nested"].(map[string]any); ok {
			n["v"].([]any)[0] = "changed"
			n["new"] = 1
		}
	}
	for name, s := range m.Schema {
		for _, sh := range s.Shapes {
			if len(sh) > 0 {
				sh[0] = -1
			}
		}
		if len(s.Shape) > 0 {
			s.Shape[0] = -1
		}
		m.Schema[name] = s
	}
	m.Schema["added"] = FieldSchema{}
	for _, locs := range m.Cells {
		for i := range locs {
			locs[i].Unit = 77
		}
	}
	if l, ok := m.Extra["list"].([]any); ok {
		l[0] = "changed"
	}
	m.Extra["step"] = -1
	m.Extra["added"] = true
}

func TestSelectRows(t *testing.T) {
	m := testMeta()
	got, err := m.SelectRows([]int{3, 0, 3})
	if err != nil {
		t.Fatal(err)
	}
	want := &BatchMeta{
		Indexes:    []uint64{13, 10, 13},
		Partitions: []string{"p1", "p0", "p1"},
		Keys:       []string{"k3", "k0", "k3"},
		Schema: map[string]FieldSchema{
			"ids":  {DType: Int64, Kind: Dense, Shape: Shape{3}},
			"resp": {DType: Float32, Kind: Ragged, Shapes: []Shape{{4}, {1}, {4}}},
			"text": {DType: Bytes, Kind: Opaque},
		},
		Ready: []bool{true, true, true},
		Tags:  []Tags{{"i": 3}, {"i": 0, "nested": map[string]any{"v": []any{"a"}}}, {"i": 3}},
		Cells: map[string][]CellLoc{"ids": {{}, loc(1, 0), {}}},
		Extra: map[string]any{"step": 7, "list": []any{1, 2}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("meta (-want +got):\n%s", diff)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	mutateMeta(got)
	if diff := cmp.Diff(testMeta(), m); diff != "" {
		t.Errorf("changing the selection changed the source (-want +got):\n%s", diff)
	}

	none, err := m.SelectRows(nil)
	if err != nil || none.Len() != 0 || len(none.Schema["resp"].Shapes) != 0 {
		t.Errorf("no rows: got %+v, %v", none, err)
	}
	for _, pos := range [][]int{{4}, {-1}, {0, 1, 9}} {
		t.Run(fmt.Sprint(pos), func(t *testing.T) {
			_, err := m.SelectRows(pos)
			wantErrIs(t, err, ErrInvalid)
		})
	}
	t.Run("invalid meta", func(t *testing.T) {
		bad := testMeta()
		bad.Ready = bad.Ready[:1]
		_, err := bad.SelectRows([]int{0})
		wantErrIs(t, err, ErrInvalid)
	})
	t.Run("nil meta", func(t *testing.T) {
		got, err := (*BatchMeta)(nil).SelectRows(nil)
		if err != nil || got.Len() != 0 {
			t.Errorf("got %v, %v, want an empty meta", got, err)
		}
	})
}

// Reference: test_select_fields_isolation_extra_info / _custom_meta. We
// differ: an unknown field is an error.
func TestSelectFields(t *testing.T) {
	m := testMeta()
	got, err := m.SelectFields([]string{"ids", "resp"})
	if err != nil {
		t.Fatal(err)
	}
	want := testMeta()
	delete(want.Schema, "text")
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("meta (-want +got):\n%s", diff)
	}
	mutateMeta(got)
	if diff := cmp.Diff(testMeta(), m); diff != "" {
		t.Errorf("changing the selection changed the source (-want +got):\n%s", diff)
	}

	// Ready is kept, not recomputed.
	got, err = m.SelectFields([]string{"text"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(m.Ready, got.Ready); diff != "" {
		t.Errorf("ready (-want +got):\n%s", diff)
	}
	if got.Cells != nil {
		t.Errorf("cells: got %v, want none (text has none)", got.Cells)
	}
	if diff := cmp.Diff([]string{"text"}, got.FieldNames()); diff != "" {
		t.Errorf("fields (-want +got):\n%s", diff)
	}

	none, err := m.SelectFields(nil)
	if err != nil || len(none.Schema) != 0 || none.Len() != 4 {
		t.Errorf("no fields: got %+v, %v", none, err)
	}

	_, err = m.SelectFields([]string{"ids", "nope", "gone"})
	wantErrIs(t, err, ErrNotFound)
}

// A field named twice is refused, naming it, as Batch.Select and the
// clients' get and fetch refuse it: the meta would hold it once, not what
// the caller listed.
func TestSelectFieldsRefusesAFieldNamedTwice(t *testing.T) {
	m := testMeta()
	for _, names := range [][]string{{"ids", "resp", "ids"}, {"text", "text"}} {
		got, err := m.SelectFields(names)
		require.ErrorIs(t, err, ErrInvalid, "%q", names)
		require.ErrorContains(t, err, fmt.Sprintf("field %q appears twice", names[len(names)-1]), "%q", names)
		require.Nil(t, got)
	}
	// A repeat of a field the meta lacks names the missing field first.
	_, err := m.SelectFields([]string{"nope", "nope"})
	require.ErrorIs(t, err, ErrNotFound)
}

func TestReorder(t *testing.T) {
	m := testMeta()
	got, err := m.Reorder([]int{2, 3, 0, 1})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]uint64{12, 13, 10, 11}, got.Indexes); diff != "" {
		t.Errorf("indexes (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Shape{{3}, {4}, {1}, {2}}, got.Schema["resp"].Shapes); diff != "" {
		t.Errorf("shapes (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]bool{true, true, true, false}, got.Ready); diff != "" {
		t.Errorf("ready (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]CellLoc{loc(1, 8), {}, loc(1, 0), loc(2, 0)}, got.Cells["ids"]); diff != "" {
		t.Errorf("cells (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(testMeta(), m); diff != "" {
		t.Errorf("Reorder changed its receiver (-want +got):\n%s", diff)
	}
	back, err := got.Reorder([]int{2, 3, 0, 1})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(m, back); diff != "" {
		t.Errorf("reordering twice (-want +got):\n%s", diff)
	}

	bad := []struct {
		name string
		pos  []int
	}{
		{"too short", []int{0, 1, 2}},
		{"too long", []int{0, 1, 2, 3, 0}},
		{"duplicate", []int{0, 1, 1, 3}},
		{"out of range", []int{0, 1, 2, 4}},
		{"negative", []int{0, 1, 2, -1}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := m.Reorder(tt.pos)
			wantErrIs(t, err, ErrInvalid)
		})
	}
}

// Reference: test_chunk, test_chunk_concat_roundtrip_preserves_extra_info.
func TestChunk(t *testing.T) {
	m := metaOf("p", 0, 10, "f")
	m.Extra = map[string]any{"step": 3}
	tests := []struct {
		n     int
		sizes []int
	}{
		{1, []int{10}},
		{3, []int{4, 3, 3}},
		{4, []int{3, 3, 2, 2}},
		{10, []int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}},
		{12, []int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.n), func(t *testing.T) {
			chunks, err := m.Chunk(tt.n)
			if err != nil {
				t.Fatal(err)
			}
			sizes := make([]int, len(chunks))
			next := uint64(0)
			for i, c := range chunks {
				sizes[i] = c.Len()
				if err := c.Validate(); err != nil {
					t.Errorf("chunk %d: %v", i, err)
				}
				for _, idx := range c.Indexes {
					if idx != next {
						t.Errorf("chunk %d: got index %d, want %d", i, idx, next)
					}
					next++
				}
				if diff := cmp.Diff(m.Extra, c.Extra); diff != "" {
					t.Errorf("chunk %d extra (-want +got):\n%s", i, diff)
				}
				if diff := cmp.Diff(m.Schema, c.Schema); diff != "" {
					t.Errorf("chunk %d schema (-want +got):\n%s", i, diff)
				}
			}
			if diff := cmp.Diff(tt.sizes, sizes); diff != "" {
				t.Errorf("sizes (-want +got):\n%s", diff)
			}
			back, err := ConcatMetas(chunks...)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(m, back); diff != "" {
				t.Errorf("chunk then concat (-want +got):\n%s", diff)
			}
		})
	}
	for _, n := range []int{0, -1} {
		_, err := m.Chunk(n)
		wantErrIs(t, err, ErrInvalid)
	}
	t.Run("ragged", func(t *testing.T) {
		chunks, err := testMeta().Chunk(2)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]Shape{{3}, {4}}, chunks[1].Schema["resp"].Shapes); diff != "" {
			t.Errorf("shapes (-want +got):\n%s", diff)
		}
		back, err := ConcatMetas(chunks...)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(testMeta(), back); diff != "" {
			t.Errorf("chunk then concat (-want +got):\n%s", diff)
		}
	})
}

// Reference: test_chunk_by_partition.
func TestChunkByPartition(t *testing.T) {
	m := NewBatchMeta("", []uint64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	for i := range m.Partitions {
		m.Partitions[i] = fmt.Sprintf("partition_%d", i%4)
		m.Tags[i] = Tags{"i": i}
	}
	chunks := m.ChunkByPartition()
	type part struct {
		Partitions []string
		Indexes    []uint64
	}
	var got []part
	for _, c := range chunks {
		got = append(got, part{c.Partitions, c.Indexes})
	}
	want := []part{
		{[]string{"partition_0", "partition_0", "partition_0"}, []uint64{0, 4, 8}},
		{[]string{"partition_1", "partition_1", "partition_1"}, []uint64{1, 5, 9}},
		{[]string{"partition_2", "partition_2"}, []uint64{2, 6}},
		{[]string{"partition_3", "partition_3"}, []uint64{3, 7}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("chunks (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Tags{{"i": 1}, {"i": 5}, {"i": 9}}, chunks[1].Tags); diff != "" {
		t.Errorf("tags (-want +got):\n%s", diff)
	}
	// First-appearance order, not sorted.
	m2 := NewBatchMeta("b", []uint64{1, 2})
	m2.Partitions[1] = "a"
	if c := m2.ChunkByPartition(); len(c) != 2 || c[0].Partitions[0] != "b" {
		t.Errorf("got %d chunks, want b first", len(c))
	}
	if c := emptyMeta().ChunkByPartition(); len(c) != 0 {
		t.Errorf("empty meta: got %d chunks, want none", len(c))
	}
	if c := (*BatchMeta)(nil).ChunkByPartition(); len(c) != 0 {
		t.Errorf("nil meta: got %d chunks, want none", len(c))
	}
}

// Reference: test_concat and its extra_info cases.
func TestConcatMetas(t *testing.T) {
	t.Run("basic", func(t *testing.T) {
		a, b := metaOf("p", 0, 2, "f"), metaOf("p", 2, 2, "f")
		b.Ready[1] = false
		b.Tags[0]["x"] = 1
		got, err := ConcatMetas(a, b)
		if err != nil {
			t.Fatal(err)
		}
		want := &BatchMeta{
			Indexes:    []uint64{0, 1, 2, 3},
			Partitions: []string{"p", "p", "p", "p"},
			Schema:     map[string]FieldSchema{"f": {DType: Float32, Kind: Dense, Shape: Shape{2}}},
			Ready:      []bool{true, true, true, false},
			Tags:       []Tags{{}, {}, {"x": 1}, {}},
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("meta (-want +got):\n%s", diff)
		}
	})
	t.Run("skips empty", func(t *testing.T) {
		a := metaOf("p", 0, 2, "f")
		odd := metaOf("p", 0, 0, "other") // empty: its fields do not count
		got, err := ConcatMetas(nil, odd, a, emptyMeta())
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(a, got); diff != "" {
			t.Errorf("meta (-want +got):\n%s", diff)
		}
	})
	t.Run("nothing", func(t *testing.T) {
		for _, in := range [][]*BatchMeta{nil, {nil}, {emptyMeta(), metaOf("p", 0, 0)}} {
			got, err := ConcatMetas(in...)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(emptyMeta(), got); diff != "" {
				t.Errorf("meta (-want +got):\n%s", diff)
			}
		}
	})
	t.Run("same row twice", func(t *testing.T) {
		a, b := metaOf("p", 0, 3, "f"), metaOf("p", 2, 2, "f")
		_, err := ConcatMetas(a, nil, b)
		wantErrIs(t, err, ErrInvalid)
		require.ErrorContains(t, err, `row 2 of partition "p" is in meta 0 and meta 2`)
		one := metaOf("p", 0, 2, "f")
		one.Indexes[1] = 0
		_, err = ConcatMetas(one)
		require.ErrorContains(t, err, `row 0 of partition "p" is twice in meta 0`)
		other := metaOf("q", 0, 2, "f") // the same indexes of another partition
		got, err := ConcatMetas(metaOf("p", 0, 2, "f"), other)
		require.NoError(t, err)
		require.Equal(t, []string{"p", "p", "q", "q"}, got.Partitions)
	})
	t.Run("extra scalar conflict", func(t *testing.T) {
		a, b := metaOf("p", 0, 1), metaOf("p", 1, 1)
		a.Extra = map[string]any{"step": 1}
		b.Extra = map[string]any{"step": 2}
		_, err := ConcatMetas(a, b)
		wantErrIs(t, err, ErrInvalid)
	})
	t.Run("extra key union", func(t *testing.T) {
		a, b, c := metaOf("p", 0, 1), metaOf("p", 1, 1), metaOf("p", 2, 1)
		a.Extra = map[string]any{"a": 1, "same": "x"}
		b.Extra = map[string]any{"b": 2, "same": "x"}
		got, err := ConcatMetas(a, b, c)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(map[string]any{"a": 1, "b": 2, "same": "x"}, got.Extra); diff != "" {
			t.Errorf("extra (-want +got):\n%s", diff)
		}
	})
	t.Run("extra equal lists preserved", func(t *testing.T) {
		a, b := metaOf("p", 0, 1), metaOf("p", 1, 1)
		a.Extra = map[string]any{"l": []any{1.0, "x"}, "m": map[string]any{"k": []int64{1}}}
		b.Extra = map[string]any{"l": []any{1.0, "x"}, "m": map[string]any{"k": []int64{1}}}
		got, err := ConcatMetas(a, b)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(a.Extra, got.Extra); diff != "" {
			t.Errorf("extra (-want +got):\n%s", diff)
		}
		got.Extra["l"].([]any)[0] = "changed"
		if a.Extra["l"].([]any)[0] != 1.0 {
			t.Error("result's Extra aliases an input's")
		}
		b.Extra["l"] = []any{2.0}
		_, err = ConcatMetas(a, b)
		wantErrIs(t, err, ErrInvalid)
	})
	t.Run("field mismatch", func(t *testing.T) {
		_, err := ConcatMetas(metaOf("p", 0, 1, "a", "b"), metaOf("p", 1, 1, "a", "c"))
		wantErrIs(t, err, ErrInvalid)
	})
	t.Run("dtype mismatch", func(t *testing.T) {
		a, b := metaOf("p", 0, 1, "f"), metaOf("p", 1, 1, "f")
		b.Schema["f"] = FieldSchema{DType: Float64, Kind: Dense, Shape: Shape{2}}
		_, err := ConcatMetas(a, b)
		wantErrIs(t, err, ErrDTypeMismatch)
	})
	t.Run("kind mismatch", func(t *testing.T) {
		a, b := metaOf("p", 0, 1, "f"), metaOf("p", 1, 1, "f")
		a.Schema["f"] = FieldSchema{DType: Bytes, Kind: Opaque}
		b.Schema["f"] = FieldSchema{DType: Bytes, Kind: Dense}
		_, err := ConcatMetas(a, b)
		wantErrIs(t, err, ErrInvalid)
	})
	t.Run("dense shapes differ becomes ragged", func(t *testing.T) {
		a, b := metaOf("p", 0, 2, "f"), metaOf("p", 2, 1, "f")
		b.Schema["f"] = FieldSchema{DType: Float32, Kind: Dense, Shape: Shape{5}}
		got, err := ConcatMetas(a, b)
		if err != nil {
			t.Fatal(err)
		}
		want := FieldSchema{DType: Float32, Kind: Ragged, Shapes: []Shape{{2}, {2}, {5}}}
		if diff := cmp.Diff(want, got.Schema["f"]); diff != "" {
			t.Errorf("schema (-want +got):\n%s", diff)
		}
		if err := got.Validate(); err != nil {
			t.Error(err)
		}
	})
	t.Run("ragged in one input makes ragged", func(t *testing.T) {
		a, b := metaOf("p", 0, 1, "f"), metaOf("p", 1, 2, "f")
		b.Schema["f"] = FieldSchema{DType: Float32, Kind: Ragged, Shapes: []Shape{{2}, nil}}
		got, err := ConcatMetas(a, b)
		if err != nil {
			t.Fatal(err)
		}
		want := FieldSchema{DType: Float32, Kind: Ragged, Shapes: []Shape{{2}, {2}, nil}}
		if diff := cmp.Diff(want, got.Schema["f"]); diff != "" {
			t.Errorf("schema (-want +got):\n%s", diff)
		}
	})
	t.Run("opaque stays opaque", func(t *testing.T) {
		a, b := metaOf("p", 0, 1, "f"), metaOf("p", 1, 1, "f")
		a.Schema["f"] = FieldSchema{DType: Bytes, Kind: Opaque}
		b.Schema["f"] = FieldSchema{DType: Bytes, Kind: Opaque}
		got, err := ConcatMetas(a, b)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(FieldSchema{DType: Bytes, Kind: Opaque}, got.Schema["f"]); diff != "" {
			t.Errorf("schema (-want +got):\n%s", diff)
		}
	})
	t.Run("keys", func(t *testing.T) {
		a, b, c := metaOf("p", 0, 1), metaOf("p", 1, 2), metaOf("p", 3, 1)
		got, err := ConcatMetas(a, b, c)
		if err != nil {
			t.Fatal(err)
		}
		if got.Keys != nil {
			t.Errorf("no input has keys: got %q, want nil", got.Keys)
		}
		b.Keys = []string{"x", "y"}
		got, err = ConcatMetas(a, b, c)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"", "x", "y", ""}, got.Keys); diff != "" {
			t.Errorf("keys (-want +got):\n%s", diff)
		}
	})
	t.Run("cells", func(t *testing.T) {
		a, b := metaOf("p", 0, 1, "f", "g"), metaOf("p", 1, 2, "f", "g")
		b.Cells = map[string][]CellLoc{"f": {loc(1, 0), loc(1, 8)}}
		got, err := ConcatMetas(a, b)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string][]CellLoc{"f": {{}, loc(1, 0), loc(1, 8)}}
		if diff := cmp.Diff(want, got.Cells); diff != "" {
			t.Errorf("cells (-want +got):\n%s", diff)
		}
		if err := got.Validate(); err != nil {
			t.Error(err)
		}
	})
	// Reference: test_concat_no_double_copy_regression — and the result
	// shares nothing with the inputs.
	t.Run("isolation", func(t *testing.T) {
		m := testMeta()
		chunks, err := m.Chunk(2)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ConcatMetas(chunks...)
		if err != nil {
			t.Fatal(err)
		}
		before := make([]*BatchMeta, len(chunks))
		for i, c := range chunks {
			before[i] = c.Clone()
		}
		mutateMeta(got)
		if diff := cmp.Diff(before, chunks); diff != "" {
			t.Errorf("changing the result changed the inputs (-want +got):\n%s", diff)
		}
	})
	t.Run("invalid input", func(t *testing.T) {
		bad := metaOf("p", 0, 2)
		bad.Tags = nil
		_, err := ConcatMetas(metaOf("p", 2, 1), bad)
		wantErrIs(t, err, ErrInvalid)
	})
}

// Reference: test_union_*.
func TestUnion(t *testing.T) {
	t.Run("basic", func(t *testing.T) {
		a, b := metaOf("p", 0, 2, "f1", "f2"), metaOf("p", 0, 2, "f2", "f3")
		a.Extra = map[string]any{"info1": "value1"}
		b.Extra = map[string]any{"info2": "value2"}
		got, err := a.Union(b)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"f1", "f2", "f3"}, got.FieldNames()); diff != "" {
			t.Errorf("fields (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(map[string]any{"info1": "value1", "info2": "value2"}, got.Extra); diff != "" {
			t.Errorf("extra (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]uint64{0, 1}, got.Indexes); diff != "" {
			t.Errorf("indexes (-want +got):\n%s", diff)
		}
	})
	t.Run("overlapping fields other wins", func(t *testing.T) {
		a, b := metaOf("p", 0, 2, "f", "g"), metaOf("p", 0, 2, "f")
		a.Cells = map[string][]CellLoc{"f": {loc(1, 0), loc(1, 8)}, "g": {loc(1, 16), loc(1, 24)}}
		b.Schema["f"] = FieldSchema{DType: Int8, Kind: Ragged, Shapes: []Shape{{1}, {7}}}
		b.Cells = map[string][]CellLoc{"f": {loc(2, 0), loc(2, 8)}}
		b.Extra = map[string]any{"k": "b"}
		a.Extra = map[string]any{"k": "a", "only": 1}
		a.Tags[0] = Tags{"t": "a", "keep": 1}
		b.Tags[0] = Tags{"t": "b"}
		got, err := a.Union(b)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(b.Schema["f"], got.Schema["f"]); diff != "" {
			t.Errorf("schema (-want +got):\n%s", diff)
		}
		want := map[string][]CellLoc{"f": b.Cells["f"], "g": a.Cells["g"]}
		if diff := cmp.Diff(want, got.Cells); diff != "" {
			t.Errorf("cells (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(map[string]any{"k": "b", "only": 1}, got.Extra); diff != "" {
			t.Errorf("extra (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(Tags{"t": "b", "keep": 1}, got.Tags[0]); diff != "" {
			t.Errorf("tags (-want +got):\n%s", diff)
		}
		// other's field without cells drops self's stale cells.
		b.Cells = nil
		got, err = a.Union(b)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := got.Cells["f"]; ok {
			t.Errorf("got cells for f %v, want none", got.Cells["f"])
		}
	})
	t.Run("cluster of the cells", func(t *testing.T) {
		// The stamp says whose unit ids the cells name: a union must not
		// put other's cells under self's cluster, nor drop the cluster of
		// cells that are all other's.
		a, b := metaOf("p", 0, 2, "f", "g"), metaOf("p", 0, 2, "f")
		a.Cells = map[string][]CellLoc{"f": {loc(1, 0), loc(1, 8)}, "g": {loc(1, 16), loc(1, 24)}}
		b.Cells = map[string][]CellLoc{"f": {loc(1, 0), loc(1, 8)}}
		a.Cluster, b.Cluster = "new", "old"
		got, err := a.Union(b)
		if err != nil {
			t.Fatal(err)
		}
		if got.Cluster == "new" {
			t.Errorf("union of a meta of cluster new with cells of cluster old is stamped %q", got.Cluster)
		}
		bare := metaOf("p", 0, 2, "f") // a meta the caller built: no cells, no cluster
		got, err = bare.Union(b)
		if err != nil {
			t.Fatal(err)
		}
		if got.Cluster != "old" {
			t.Errorf("union whose cells are all of cluster old is stamped %q, want %q", got.Cluster, "old")
		}
	})
	t.Run("ready AND", func(t *testing.T) {
		a, b := metaOf("p", 0, 4, "f"), metaOf("p", 0, 4, "g")
		a.Ready = []bool{true, true, false, false}
		b.Ready = []bool{true, false, true, false}
		got, err := a.Union(b)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]bool{true, false, false, false}, got.Ready); diff != "" {
			t.Errorf("ready (-want +got):\n%s", diff)
		}
	})
	t.Run("keys", func(t *testing.T) {
		a, b := metaOf("p", 0, 2), metaOf("p", 0, 2)
		b.Keys = []string{"x", ""}
		got, err := a.Union(b)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"x", ""}, got.Keys); diff != "" {
			t.Errorf("keys (-want +got):\n%s", diff)
		}
		a.Keys = []string{"", "y"}
		got, err = a.Union(b)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"x", "y"}, got.Keys); diff != "" {
			t.Errorf("keys (-want +got):\n%s", diff)
		}
		a.Keys = []string{"z", "y"}
		_, err = a.Union(b)
		wantErrIs(t, err, ErrInvalid)
	})
	mismatch := []struct {
		name   string
		change func(b *BatchMeta)
	}{
		{"global index mismatch", func(b *BatchMeta) { b.Indexes[1] = 7 }},
		{"partition mismatch", func(b *BatchMeta) { b.Partitions[0] = "q" }},
		{"length mismatch", func(b *BatchMeta) { *b = *metaOf("p", 0, 3) }},
		{"other invalid", func(b *BatchMeta) { b.Ready = nil }},
	}
	for _, tt := range mismatch {
		t.Run(tt.name, func(t *testing.T) {
			a, b := metaOf("p", 0, 2, "f"), metaOf("p", 0, 2, "g")
			tt.change(b)
			_, err := a.Union(b)
			wantErrIs(t, err, ErrInvalid)
		})
	}
	t.Run("invalid beside an empty meta", func(t *testing.T) {
		// The empty side gives no rows to compare, but the other is still
		// checked: its copy would be the result.
		for _, empty := range []*BatchMeta{nil, emptyMeta()} {
			bad := testMeta()
			bad.Cells["ids"] = bad.Cells["ids"][:1]
			_, err := bad.Union(empty)
			wantErrIs(t, err, ErrInvalid)
			_, err = empty.Union(bad)
			wantErrIs(t, err, ErrInvalid)
		}
	})
	t.Run("empty other returns copy", func(t *testing.T) {
		a := testMeta()
		for _, other := range []*BatchMeta{nil, emptyMeta()} {
			got, err := a.Union(other)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(testMeta(), got); diff != "" {
				t.Errorf("meta (-want +got):\n%s", diff)
			}
			mutateMeta(got)
			if diff := cmp.Diff(testMeta(), a); diff != "" {
				t.Errorf("result aliases the receiver (-want +got):\n%s", diff)
			}
		}
	})
	t.Run("empty self returns copy", func(t *testing.T) {
		b := testMeta()
		for _, self := range []*BatchMeta{nil, emptyMeta()} {
			got, err := self.Union(b)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(testMeta(), got); diff != "" {
				t.Errorf("meta (-want +got):\n%s", diff)
			}
			mutateMeta(got)
			if diff := cmp.Diff(testMeta(), b); diff != "" {
				t.Errorf("result aliases the argument (-want +got):\n%s", diff)
			}
		}
	})
	t.Run("both nil", func(t *testing.T) {
		got, err := (*BatchMeta)(nil).Union(nil)
		if err != nil || got == nil || got.Len() != 0 {
			t.Errorf("got %v, %v, want an empty meta", got, err)
		}
	})
	t.Run("isolation", func(t *testing.T) {
		a, b := testMeta(), testMeta()
		got, err := a.Union(b)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(testMeta(), got); diff != "" {
			t.Errorf("union with itself (-want +got):\n%s", diff)
		}
		mutateMeta(got)
		if diff := cmp.Diff(testMeta(), a); diff != "" {
			t.Errorf("result aliases the receiver (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(testMeta(), b); diff != "" {
			t.Errorf("result aliases the argument (-want +got):\n%s", diff)
		}
	})
}

// Reference: test_custom_meta_update.
func TestMergeTags(t *testing.T) {
	m := metaOf("p", 0, 2)
	m.Tags[0] = Tags{"a": 1, "b": 1}
	upd := []Tags{{"b": 2, "l": []any{"x"}}, nil}
	if err := m.MergeTags(upd); err != nil {
		t.Fatal(err)
	}
	want := []Tags{{"a": 1, "b": 2, "l": []any{"x"}}, {}}
	if diff := cmp.Diff(want, m.Tags); diff != "" {
		t.Errorf("tags (-want +got):\n%s", diff)
	}
	upd[0]["l"].([]any)[0] = "changed"
	if diff := cmp.Diff(want, m.Tags); diff != "" {
		t.Errorf("merged values alias the argument (-want +got):\n%s", diff)
	}
	wantErrIs(t, m.MergeTags([]Tags{{}}), ErrInvalid)
	wantErrIs(t, m.MergeTags(nil), ErrInvalid)

	bad := metaOf("p", 0, 2)
	bad.Tags = nil
	wantErrIs(t, bad.MergeTags([]Tags{{}, {}}), ErrInvalid)

	var nilMeta *BatchMeta
	if err := nilMeta.MergeTags(nil); err != nil {
		t.Errorf("nil meta, no tags: got %v, want nil", err)
	}
	wantErrIs(t, nilMeta.MergeTags([]Tags{{}}), ErrInvalid)
}

func TestAddFields(t *testing.T) {
	m := testMeta()
	b := MustBatch(
		Field{"ids", RaggedOf([][]int64{{1}, {2, 3}, {}, {4}})},
		Field{"score", mustDense(t, []float32{1, 2, 3, 4})},
		Field{"name", StringsOf([]string{"a", "b", "c", "d"})},
	)
	if err := m.AddFields(b); err != nil {
		t.Fatal(err)
	}
	want := testMeta()
	want.Schema["ids"] = FieldSchema{DType: Int64, Kind: Ragged, Shapes: []Shape{{1}, {2}, {0}, {1}}}
	want.Schema["score"] = FieldSchema{DType: Float32, Kind: Dense, Shape: Shape{}}
	want.Schema["name"] = FieldSchema{DType: Bytes, Kind: Opaque}
	want.Ready = []bool{true, true, true, true}
	if diff := cmp.Diff(want, m); diff != "" {
		t.Errorf("meta (-want +got):\n%s", diff)
	}
	if !m.IsReady() {
		t.Error("IsReady: got false after AddFields")
	}
	if err := m.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}

	t.Run("row mismatch", func(t *testing.T) {
		m := testMeta()
		err := m.AddFields(MustBatch(Field{"x", mustDense(t, []float32{1})}))
		wantErrIs(t, err, ErrInvalid)
		if diff := cmp.Diff(testMeta(), m); diff != "" {
			t.Errorf("failed AddFields changed the meta (-want +got):\n%s", diff)
		}
	})
	t.Run("empty batch", func(t *testing.T) {
		m := testMeta()
		for _, b := range []*Batch{nil, MustBatch()} {
			if err := m.AddFields(b); err != nil {
				t.Fatal(err)
			}
		}
		if diff := cmp.Diff(testMeta(), m); diff != "" {
			t.Errorf("meta (-want +got):\n%s", diff)
		}
	})
	t.Run("nil meta", func(t *testing.T) {
		var m *BatchMeta
		err := m.AddFields(MustBatch(Field{"x", mustDense(t, []int8{})}))
		wantErrIs(t, err, ErrInvalid)
	})
	t.Run("nil schema", func(t *testing.T) {
		m := &BatchMeta{Indexes: []uint64{1}, Partitions: []string{"p"}, Ready: []bool{false}, Tags: []Tags{{}}}
		if err := m.AddFields(MustBatch(Field{"x", mustDense(t, []int8{1})})); err != nil {
			t.Fatal(err)
		}
		if !m.IsReady() || m.Schema["x"].DType != Int8 {
			t.Errorf("got %+v", m)
		}
	})
}

// TestBatchMetaValidateSchema: a meta's field schemas are checked on
// their own (kind, a dtype the kind holds, shapes a cell can have), each
// refusal naming the field; placeholders and good schemas pass.
func TestBatchMetaValidateSchema(t *testing.T) {
	meta := func(s FieldSchema) *BatchMeta {
		return &BatchMeta{Partitions: []string{"p", "p"}, Indexes: []uint64{0, 1}, Ready: []bool{true, true},
			Tags: []Tags{nil, nil}, Schema: map[string]FieldSchema{"f": s}}
	}
	for _, s := range []FieldSchema{
		{},
		{DType: Int8},
		{DType: Float32, Kind: Dense, Shape: Shape{2, 3}},
		{DType: Float32, Kind: Dense},
		{DType: Int64, Kind: Ragged, Shapes: []Shape{{4}, nil}},
		{DType: Bytes, Kind: Opaque},
	} {
		if err := meta(s).Validate(); err != nil {
			t.Errorf("%+v: %v", s, err)
		}
	}
	for _, c := range []struct {
		s    FieldSchema
		want string
	}{
		{FieldSchema{DType: Float32, Kind: 9}, "kind invalid"},
		{FieldSchema{DType: 200, Kind: Dense}, "dense field of dtype"},
		{FieldSchema{DType: Bytes, Kind: Dense}, "dense field of dtype bytes"},
		{FieldSchema{DType: Bytes, Kind: Ragged, Shapes: []Shape{nil, nil}}, "ragged field of dtype bytes"},
		{FieldSchema{DType: Float32, Kind: Opaque}, "opaque field of dtype float32"},
		{FieldSchema{DType: Float32, Kind: Dense, Shape: Shape{-1}}, "negative"},
		{FieldSchema{DType: Float32, Kind: Dense, Shape: Shape{1 << 40, 1 << 40}}, "shape"},
		{FieldSchema{DType: Float32, Kind: Dense, Shapes: []Shape{{1}, {1}}}, "dense field with row shapes"},
		{FieldSchema{DType: Int64, Kind: Ragged, Shapes: []Shape{{1}, {-2}}}, "row 1"},
		{FieldSchema{DType: Int64, Kind: Ragged, Shape: Shape{1}, Shapes: []Shape{{1}, {1}}}, "ragged field with a shape (1)"},
		{FieldSchema{DType: Bytes, Kind: Opaque, Shape: Shape{3}}, "opaque field with a shape (3)"},
		{FieldSchema{DType: 200}, "placeholder"},
		{FieldSchema{Shape: Shape{2}}, "placeholder"},
	} {
		err := meta(c.s).Validate()
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), `"f"`) {
			t.Errorf("%+v: got %v, want ErrInvalid naming field \"f\" and %q", c.s, err, c.want)
		}
	}
}
