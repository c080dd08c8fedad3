package engine

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// randMeta returns a valid meta of up to 9 rows with random fields of
// every kind, keys (or none), tags, cells and Extra. Empty Cells and Extra
// are nil, as the operations leave them.
func randMeta(r *rand.Rand) *BatchMeta {
	n := r.IntN(10)
	m := &BatchMeta{
		Indexes:    make([]uint64, n),
		Partitions: make([]string, n),
		Schema:     map[string]FieldSchema{},
		Ready:      make([]bool, n),
		Tags:       make([]Tags, n),
		Cluster:    []string{"", "c1"}[r.IntN(2)],
	}
	if r.IntN(2) == 0 {
		m.Keys = make([]string, n)
	}
	for i := range n {
		m.Indexes[i] = uint64(r.IntN(1000))
		m.Partitions[i] = fmt.Sprint("p", r.IntN(3))
		m.Ready[i] = r.IntN(2) == 0
		if m.Keys != nil && r.IntN(4) > 0 {
			m.Keys[i] = fmt.Sprint("k", i)
		}
		switch r.IntN(3) {
		case 0:
			m.Tags[i] = Tags{}
		case 1:
			m.Tags[i] = Tags{"i": int64(i), "l": []any{"x", map[string]any{"y": 1.5}}}
		}
	}
	for f := range r.IntN(4) {
		name := fmt.Sprint("f", f)
		var s FieldSchema
		switch r.IntN(4) {
		case 0:
			s = FieldSchema{DType: Float32, Kind: Dense, Shape: Shape{r.IntN(3), 2}}
		case 1:
			s = FieldSchema{DType: Int64, Kind: Ragged, Shapes: make([]Shape, n)}
			for i := range n {
				if r.IntN(4) > 0 {
					s.Shapes[i] = Shape{r.IntN(5)}
				}
			}
		case 2:
			s = FieldSchema{DType: Bytes, Kind: Opaque}
		case 3:
			s = FieldSchema{DType: Int8} // a placeholder, not produced yet
		}
		m.Schema[name] = s
		if s.Kind != InvalidKind && r.IntN(2) == 0 {
			if m.Cells == nil {
				m.Cells = map[string][]CellLoc{}
			}
			locs := make([]CellLoc, n)
			for i := range locs {
				locs[i] = loc(UnitID(1+r.IntN(3)), uint64(r.IntN(100)))
			}
			m.Cells[name] = locs
		}
	}
	if r.IntN(2) == 0 {
		m.Extra = map[string]any{"step": int64(r.IntN(10)), "l": []any{"a", nil}, "none": []any(nil)}
	}
	return m
}

// rowOf returns row i of m as a meta of one row, for comparing rows.
func rowOf(t *testing.T, m *BatchMeta, i int) *BatchMeta {
	t.Helper()
	r, err := m.SelectRows([]int{i})
	if err != nil {
		t.Fatalf("select row %d: %v", i, err)
	}
	return r
}

func TestMetaOpsProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := range 200 {
		m := randMeta(r)
		if err := m.Validate(); err != nil {
			t.Fatalf("iter %d: generated meta: %v", iter, err)
		}
		orig := m.Clone()
		n := m.Len()

		// Chunk, then concatenate: the original, for a meta with rows.
		k := 1 + r.IntN(n+2)
		chunks, err := m.Chunk(k)
		if err != nil {
			t.Fatalf("iter %d: chunk %d: %v", iter, k, err)
		}
		sizes := 0
		for _, c := range chunks {
			if err := c.Validate(); err != nil {
				t.Fatalf("iter %d: chunk: %v", iter, err)
			}
			sizes += c.Len()
		}
		if sizes != n {
			t.Fatalf("iter %d: chunks hold %d rows, want %d", iter, sizes, n)
		}
		if n > 0 {
			back, err := ConcatMetas(chunks...)
			if err != nil {
				t.Fatalf("iter %d: concat of %d chunks: %v", iter, k, err)
			}
			if diff := cmp.Diff(orig, back); diff != "" {
				t.Fatalf("iter %d: concat of %d chunks (-want +got):\n%s", iter, k, diff)
			}
			scribble(back)
		}
		for _, c := range chunks {
			scribble(c)
		}

		// Select rows, repeats allowed: row i is m's row pos[i].
		pos := make([]int, r.IntN(2*n+1))
		for i := range pos {
			if n > 0 {
				pos[i] = r.IntN(n)
			}
		}
		if n == 0 {
			pos = nil
		}
		sel, err := m.SelectRows(pos)
		if err != nil {
			t.Fatalf("iter %d: select %v: %v", iter, pos, err)
		}
		if err := sel.Validate(); err != nil {
			t.Fatalf("iter %d: selected: %v", iter, err)
		}
		for i, p := range pos {
			if diff := cmp.Diff(rowOf(t, m, p), rowOf(t, sel, i)); diff != "" {
				t.Fatalf("iter %d: selected row %d is not row %d (-want +got):\n%s", iter, i, p, diff)
			}
		}
		for _, bad := range [][]int{{-1}, {n}, {0, n + 5}} {
			if _, err := m.SelectRows(bad); err == nil {
				t.Fatalf("iter %d: select %v of %d rows: no error", iter, bad, n)
			}
		}
		scribble(sel)

		// Reorder by a permutation, then by its inverse: the original.
		perm := r.Perm(n)
		inv := make([]int, n)
		for i, p := range perm {
			inv[p] = i
		}
		re, err := m.Reorder(perm)
		if err != nil {
			t.Fatalf("iter %d: reorder: %v", iter, err)
		}
		back, err := re.Reorder(inv)
		if err != nil {
			t.Fatalf("iter %d: reorder back: %v", iter, err)
		}
		if diff := cmp.Diff(orig, back); diff != "" {
			t.Fatalf("iter %d: reorder and back (-want +got):\n%s", iter, diff)
		}
		scribble(re)
		scribble(back)

		// Split the fields in two overlapping sets and unite them again.
		names := m.FieldNames()
		var a, b []string
		for _, name := range names {
			switch r.IntN(3) {
			case 0:
				a = append(a, name)
			case 1:
				b = append(b, name)
			default:
				a, b = append(a, name), append(b, name)
			}
		}
		ma, err := m.SelectFields(a)
		if err != nil {
			t.Fatalf("iter %d: select fields %v: %v", iter, a, err)
		}
		mb, err := m.SelectFields(b)
		if err != nil {
			t.Fatalf("iter %d: select fields %v: %v", iter, b, err)
		}
		u, err := ma.Union(mb)
		if err != nil {
			t.Fatalf("iter %d: union: %v", iter, err)
		}
		if n > 0 {
			if diff := cmp.Diff(orig, u); diff != "" {
				t.Fatalf("iter %d: union of fields %v and %v (-want +got):\n%s", iter, a, b, diff)
			}
		}
		scribble(u)
		scribble(ma)

		// ChunkByPartition: every row once, in order within its partition.
		var seen []uint64
		for _, c := range m.ChunkByPartition() {
			if err := c.Validate(); err != nil {
				t.Fatalf("iter %d: chunk by partition: %v", iter, err)
			}
			for i := range c.Len() {
				if c.Partitions[i] != c.Partitions[0] {
					t.Fatalf("iter %d: chunk of partition %q holds a row of %q", iter, c.Partitions[0], c.Partitions[i])
				}
			}
			seen = append(seen, c.Indexes...)
			scribble(c)
		}
		if !slices.Equal(sortedU(m.Indexes), sortedU(seen)) {
			t.Fatalf("iter %d: chunks by partition hold indexes %v, want %v", iter, seen, m.Indexes)
		}

		// No result shares memory with m.
		if diff := cmp.Diff(orig, m); diff != "" {
			t.Fatalf("iter %d: changing results changed the source (-want +got):\n%s", iter, diff)
		}
	}
}

func sortedU(s []uint64) []uint64 {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// scribble writes to every slice, map and nested value m reaches, and
// appends to its per-row slices, as a caller owning m may.
func scribble(m *BatchMeta) {
	for i := range m.Indexes {
		m.Indexes[i] += 100
		m.Partitions[i] += "x"
		m.Ready[i] = !m.Ready[i]
		if m.Keys != nil {
			m.Keys[i] += "x"
		}
		if m.Tags[i] != nil {
			if l, ok := m.Tags[i]["l"].([]any); ok {
				l[0] = "changed"
				l[1].(map[string]any)["y"] = -1
			}
			m.Tags[i]["added"] = true
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
		s.Shapes = append(s.Shapes, Shape{9})
		m.Schema[name] = s
	}
	for name, locs := range m.Cells {
		for i := range locs {
			locs[i].Unit = 77
		}
		m.Cells[name] = append(locs, CellLoc{Unit: 78})
	}
	if l, ok := m.Extra["l"].([]any); ok {
		l[0] = "changed"
	}
	if m.Extra != nil {
		m.Extra["added"] = true
	}
	m.Indexes = append(m.Indexes, 1)
	m.Partitions = append(m.Partitions, "x")
	m.Ready = append(m.Ready, true)
	m.Tags = append(m.Tags, Tags{})
	if m.Keys != nil {
		m.Keys = append(m.Keys, "x")
	}
}
