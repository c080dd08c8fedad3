package engine

import (
	"fmt"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func mustKV(t *testing.T, partition string, keys []string, tags []Tags, fields []string) *KVMeta {
	t.Helper()
	m, err := NewKVMeta(partition, keys, tags, fields)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// kvKeys returns n keys named prefix0, prefix1, ….
func kvKeys(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

func TestNewKVMeta(t *testing.T) {
	t.Run("basic", func(t *testing.T) {
		keys := []string{"a", "b"}
		tags := []Tags{{"x": 1}, nil}
		fields := []string{"f1", "f2"}
		m := mustKV(t, "train", keys, tags, fields)
		want := &KVMeta{
			Partition: "train",
			Keys:      []string{"a", "b"},
			Tags:      []Tags{{"x": 1}, {}},
			Fields:    []string{"f1", "f2"},
		}
		if diff := cmp.Diff(want, m); diff != "" {
			t.Errorf("meta (-want +got):\n%s", diff)
		}
		if m.Len() != 2 {
			t.Errorf("Len: got %d, want 2", m.Len())
		}
		// Reference: test_kv_batch_meta_deepcopy_tags.
		keys[0], fields[0] = "changed", "changed"
		tags[0]["x"] = 2
		if diff := cmp.Diff(want, m); diff != "" {
			t.Errorf("changing the arguments changed the meta (-want +got):\n%s", diff)
		}
	})
	t.Run("one key", func(t *testing.T) {
		// One allocation holds what a one-key meta has, up to
		// oneKeyFields fields; it is copied all the same.
		for _, fields := range [][]string{nil, {}, {"f1"}, {"f1", "f2", "f3", "f4"}, {"f1", "f2", "f3", "f4", "f5"}} {
			keys, tags := []string{"k"}, []Tags{{"x": 1}}
			m := mustKV(t, "p", keys, tags, fields)
			want := &KVMeta{Partition: "p", Keys: []string{"k"}, Tags: []Tags{{"x": 1}}, Fields: slices.Clone(fields)}
			if diff := cmp.Diff(want, m); diff != "" {
				t.Errorf("%d fields: meta (-want +got):\n%s", len(fields), diff)
			}
			if (m.Fields == nil) != (fields == nil) {
				t.Errorf("fields %#v became %#v", fields, m.Fields)
			}
			keys[0], tags[0]["x"] = "changed", 2
			if len(fields) > 0 {
				fields[0] = "changed"
			}
			if diff := cmp.Diff(want, m); diff != "" {
				t.Errorf("%d fields: changing the arguments changed the meta (-want +got):\n%s", len(fields), diff)
			}
			// The slices share one allocation: each is capped at its
			// length, so that an append to one cannot write into another.
			if cap(m.Keys) != len(m.Keys) || cap(m.Tags) != len(m.Tags) || cap(m.Fields) != len(m.Fields) {
				t.Errorf("%d fields: capacities %d/%d/%d for lengths %d/%d/%d", len(fields),
					cap(m.Keys), cap(m.Tags), cap(m.Fields), len(m.Keys), len(m.Tags), len(m.Fields))
			}
		}
		if n := testing.AllocsPerRun(100, func() { NewKVMeta("p", []string{"k"}, nil, []string{"v"}) }); n != 2 {
			t.Errorf("a one-key meta made %v allocations, want 2 (the meta, its empty tag map)", n)
		}
	})
	t.Run("nil tags", func(t *testing.T) {
		m := mustKV(t, "", []string{"a", "b"}, nil, nil)
		if diff := cmp.Diff([]Tags{{}, {}}, m.Tags); diff != "" {
			t.Errorf("tags (-want +got):\n%s", diff)
		}
		if m.Fields != nil {
			t.Errorf("fields: got %q, want nil", m.Fields)
		}
	})
	t.Run("empty", func(t *testing.T) {
		m := mustKV(t, "", nil, nil, nil)
		if diff := cmp.Diff(emptyKV(), m); diff != "" {
			t.Errorf("meta (-want +got):\n%s", diff)
		}
		if m.Len() != 0 || (*KVMeta)(nil).Len() != 0 {
			t.Error("Len: want 0")
		}
	})
	bad := []struct {
		name   string
		keys   []string
		tags   []Tags
		fields []string
	}{
		{"keys tags mismatch", []string{"a", "b"}, []Tags{{}}, nil},
		{"empty tags for keys", []string{"a"}, []Tags{}, nil},
		{"duplicate keys", []string{"a", "b", "a"}, nil, nil},
		{"duplicate fields", []string{"a"}, nil, []string{"f", "g", "f"}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewKVMeta("p", tt.keys, tt.tags, tt.fields)
			wantErrIs(t, err, ErrInvalid)
		})
	}
}

func testKV(t *testing.T) *KVMeta {
	t.Helper()
	m := mustKV(t, "p", []string{"k0", "k1", "k2", "k3"},
		[]Tags{{"i": 0, "l": []any{"a"}}, {"i": 1}, {"i": 2}, {"i": 3}}, []string{"f", "g"})
	m.Extra = map[string]any{"step": 1, "m": map[string]any{"x": []any{1}}}
	return m
}

func mutateKV(m *KVMeta) {
	for i := range m.Keys {
		m.Keys[i] += "x"
		m.Tags[i]["i"] = -1
		if l, ok := m.Tags[i]["l"].([]any); ok {
			l[0] = "changed"
		}
	}
	for i := range m.Fields {
		m.Fields[i] += "x"
	}
	m.Extra["m"].(map[string]any)["x"].([]any)[0] = "changed"
	m.Extra["step"] = -1
}

// Reference: test_kv_batch_meta_deepcopy_extra_info.
func TestKVMetaClone(t *testing.T) {
	m := testKV(t)
	c := m.Clone()
	if diff := cmp.Diff(testKV(t), c); diff != "" {
		t.Fatalf("clone (-want +got):\n%s", diff)
	}
	mutateKV(c)
	if diff := cmp.Diff(testKV(t), m); diff != "" {
		t.Errorf("changing the clone changed the source (-want +got):\n%s", diff)
	}
	if (*KVMeta)(nil).Clone() != nil {
		t.Error("Clone of nil: got non-nil")
	}
}

func TestKVSelectKeys(t *testing.T) {
	m := testKV(t)
	got, err := m.SelectKeys([]string{"k2", "k0"})
	if err != nil {
		t.Fatal(err)
	}
	want := &KVMeta{
		Partition: "p",
		Keys:      []string{"k2", "k0"},
		Tags:      []Tags{{"i": 2}, {"i": 0, "l": []any{"a"}}},
		Fields:    []string{"f", "g"},
		Extra:     testKV(t).Extra,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("meta (-want +got):\n%s", diff)
	}
	mutateKV(got)
	if diff := cmp.Diff(testKV(t), m); diff != "" {
		t.Errorf("changing the selection changed the source (-want +got):\n%s", diff)
	}
	none, err := m.SelectKeys(nil)
	if err != nil || none.Len() != 0 {
		t.Errorf("no keys: got %v, %v", none, err)
	}

	_, err = m.SelectKeys([]string{"k1", "k1"})
	wantErrIs(t, err, ErrInvalid)
	_, err = m.SelectKeys([]string{"k1", "nope", "gone"})
	wantErrIs(t, err, ErrNotFound)
}

func TestKVReorder(t *testing.T) {
	m := testKV(t)
	got, err := m.Reorder([]int{3, 2, 1, 0})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"k3", "k2", "k1", "k0"}, got.Keys); diff != "" {
		t.Errorf("keys (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(Tags{"i": 3}, got.Tags[0]); diff != "" {
		t.Errorf("tags (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(testKV(t), m); diff != "" {
		t.Errorf("Reorder changed its receiver (-want +got):\n%s", diff)
	}
	bad := []struct {
		name string
		pos  []int
	}{
		{"size mismatch", []int{0, 1, 2}},
		{"duplicate indexes", []int{0, 1, 1, 2}},
		{"out of range", []int{0, 1, 2, 4}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := m.Reorder(tt.pos)
			wantErrIs(t, err, ErrInvalid)
		})
	}
}

func TestKVChunk(t *testing.T) {
	m := mustKV(t, "p", kvKeys("k", 10), nil, []string{"f"})
	m.Extra = map[string]any{"e": "v"}
	tests := []struct {
		n     int
		sizes []int
	}{
		{3, []int{4, 3, 3}},
		{1, []int{10}},
		// Reference: test_kv_batch_meta_chunk_with_more_chunks_than_samples.
		{12, []int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.n), func(t *testing.T) {
			chunks, err := m.Chunk(tt.n)
			if err != nil {
				t.Fatal(err)
			}
			sizes := make([]int, len(chunks))
			for i, c := range chunks {
				sizes[i] = c.Len()
				if c.Partition != "p" || len(c.Fields) != 1 || c.Extra["e"] != "v" || len(c.Tags) != c.Len() {
					t.Errorf("chunk %d: got %+v, want partition, fields, extra and tags kept", i, c)
				}
			}
			if diff := cmp.Diff(tt.sizes, sizes); diff != "" {
				t.Errorf("sizes (-want +got):\n%s", diff)
			}
			back, err := ConcatKV(chunks...)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(m, back); diff != "" {
				t.Errorf("chunk then concat (-want +got):\n%s", diff)
			}
		})
	}
	for _, n := range []int{0, -3} {
		_, err := m.Chunk(n)
		wantErrIs(t, err, ErrInvalid)
	}
	chunks, err := m.Chunk(2)
	if err != nil {
		t.Fatal(err)
	}
	chunks[0].Tags[0]["x"] = 1
	chunks[0].Extra["e"] = "changed"
	if len(m.Tags[0]) != 0 || m.Extra["e"] != "v" {
		t.Error("changing a chunk changed the source")
	}
}

func TestConcatKV(t *testing.T) {
	a := mustKV(t, "p", []string{"a", "b"}, []Tags{{"i": 0}, {"i": 1}}, []string{"f", "g"})
	b := mustKV(t, "p", []string{"c"}, []Tags{{"i": 2}}, []string{"g", "f"})
	t.Run("basic", func(t *testing.T) {
		got, err := ConcatKV(a, b)
		if err != nil {
			t.Fatal(err)
		}
		want := &KVMeta{
			Partition: "p",
			Keys:      []string{"a", "b", "c"},
			Tags:      []Tags{{"i": 0}, {"i": 1}, {"i": 2}},
			Fields:    []string{"f", "g"},
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("meta (-want +got):\n%s", diff)
		}
		got.Tags[0]["i"] = 9
		if a.Tags[0]["i"] != 0 {
			t.Error("result's tags alias an input's")
		}
	})
	t.Run("with empty chunks", func(t *testing.T) {
		other := mustKV(t, "elsewhere", nil, nil, []string{"z"})
		got, err := ConcatKV(nil, a, other, b, mustKV(t, "", nil, nil, nil))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"a", "b", "c"}, got.Keys); diff != "" {
			t.Errorf("keys (-want +got):\n%s", diff)
		}
	})
	t.Run("empty list", func(t *testing.T) {
		for _, in := range [][]*KVMeta{nil, {nil, emptyKV()}} {
			got, err := ConcatKV(in...)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(emptyKV(), got); diff != "" {
				t.Errorf("meta (-want +got):\n%s", diff)
			}
		}
	})
	t.Run("nil fields match any", func(t *testing.T) {
		n := mustKV(t, "p", []string{"n"}, nil, nil)
		got, err := ConcatKV(n, a)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"f", "g"}, got.Fields); diff != "" {
			t.Errorf("fields (-want +got):\n%s", diff)
		}
	})
	t.Run("extra", func(t *testing.T) {
		x, y := a.Clone(), b.Clone()
		x.Extra = map[string]any{"same": []any{1.0}, "x": 1}
		y.Extra = map[string]any{"same": []any{1.0}, "y": 2}
		got, err := ConcatKV(x, y)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(map[string]any{"same": []any{1.0}, "x": 1, "y": 2}, got.Extra); diff != "" {
			t.Errorf("extra (-want +got):\n%s", diff)
		}
	})
	bad := []struct {
		name string
		in   func() []*KVMeta
	}{
		{"field mismatch", func() []*KVMeta {
			return []*KVMeta{a, mustKV(t, "p", []string{"c"}, nil, []string{"f"})}
		}},
		{"field superset", func() []*KVMeta {
			return []*KVMeta{a, mustKV(t, "p", []string{"c"}, nil, []string{"f", "g", "h"})}
		}},
		{"partition mismatch", func() []*KVMeta {
			return []*KVMeta{a, mustKV(t, "q", []string{"c"}, nil, []string{"f", "g"})}
		}},
		{"extra info conflict", func() []*KVMeta {
			x, y := a.Clone(), b.Clone()
			x.Extra = map[string]any{"step": 1}
			y.Extra = map[string]any{"step": 2}
			return []*KVMeta{x, y}
		}},
		{"duplicate keys", func() []*KVMeta {
			return []*KVMeta{a, mustKV(t, "p", []string{"c", "a"}, nil, nil)}
		}},
		{"invalid input", func() []*KVMeta {
			x := b.Clone()
			x.Tags = nil
			return []*KVMeta{a, x}
		}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ConcatKV(tt.in()...)
			wantErrIs(t, err, ErrInvalid)
		})
	}
}
