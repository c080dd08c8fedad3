package engine

import (
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func mustDense[T Elem](t *testing.T, vals []T, rowShape ...int) *Column {
	t.Helper()
	c, err := DenseOf(vals, rowShape...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testBatch(t *testing.T) *Batch {
	t.Helper()
	b, err := NewBatch(
		Field{"ids", mustDense(t, []int64{1, 2, 3, 4, 5, 6}, 2)},
		Field{"resp", RaggedOf([][]float32{{0.5}, {0.1, 0.2}, {}})},
		Field{"text", StringsOf([]string{"a", "bb", "ccc"})},
	)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNewBatch(t *testing.T) {
	three := mustDense(t, []float32{1, 2, 3})
	two := mustDense(t, []float32{1, 2})
	tests := []struct {
		name   string
		fields []Field
	}{
		{"empty name", []Field{{"", three}}},
		{"duplicate name", []Field{{"a", three}, {"a", three}}},
		{"row mismatch", []Field{{"a", three}, {"b", two}}},
		{"nil column", []Field{{"a", three}, {"b", nil}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewBatch(tt.fields...); !errors.Is(err, ErrInvalid) {
				t.Errorf("got %v, want ErrInvalid", err)
			}
		})
	}
	// Past scanFields a batch finds its fields through a map: both ways
	// find every field and refuse a name given twice.
	for _, n := range []int{scanFields, scanFields + 1, 3 * scanFields} {
		t.Run(fmt.Sprintf("%d fields", n), func(t *testing.T) {
			fs := make([]Field, n)
			for i := range fs {
				fs[i] = Field{fmt.Sprintf("f%d", i), mustDense(t, []int32{int32(i)})}
			}
			b, err := NewBatch(fs...)
			if err != nil {
				t.Fatal(err)
			}
			for i, f := range fs {
				if got := b.Col(f.Name); got != f.Col {
					t.Errorf("Col(%q) = %v, want field %d's column", f.Name, got, i)
				}
			}
			if b.Col("f-absent") != nil {
				t.Error("Col of an absent name is not nil")
			}
			if _, err := NewBatch(append(fs, Field{"f1", fs[0].Col})...); !errors.Is(err, ErrInvalid) {
				t.Errorf("a name given twice among %d: got %v, want ErrInvalid", n+1, err)
			}
		})
	}
	t.Run("no fields", func(t *testing.T) {
		b, err := NewBatch()
		if err != nil || b.Rows() != 0 || b.NumFields() != 0 {
			t.Errorf("got %v, %v, want an empty batch", b, err)
		}
	})
	t.Run("MustBatch panics", func(t *testing.T) {
		defer func() {
			if recover() == nil {
				t.Error("got no panic")
			}
		}()
		MustBatch(Field{"", three})
	})
}

func TestBatchAccessors(t *testing.T) {
	b := testBatch(t)
	if b.Rows() != 3 || b.NumFields() != 3 {
		t.Fatalf("got %d rows, %d fields, want 3, 3", b.Rows(), b.NumFields())
	}
	names := b.Names()
	if diff := cmp.Diff([]string{"ids", "resp", "text"}, names); diff != "" {
		t.Errorf("names (-want +got):\n%s", diff)
	}
	names[0] = "changed"
	if b.Names()[0] != "ids" {
		t.Error("changing Names() changed the batch")
	}
	if b.Col("nope") != nil {
		t.Error("Col of an unknown name: got a column")
	}
	if f := b.At(1); f.Name != "resp" || f.Col != b.Col("resp") {
		t.Errorf("At(1): got %q", f.Name)
	}
	if got := len(b.Fields()); got != 3 {
		t.Errorf("Fields: got %d, want 3", got)
	}
	if got, want := b.Size(), 6*8+3*4+6; got != want {
		t.Errorf("Size: got %d, want %d", got, want)
	}
}

func TestBatchSelect(t *testing.T) {
	b := testBatch(t)
	s, err := b.Select("text", "ids")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"text", "ids"}, s.Names()); diff != "" {
		t.Errorf("names (-want +got):\n%s", diff)
	}
	if s.Col("ids") != b.Col("ids") {
		t.Error("Select copied a column, want it shared")
	}
	if _, err := b.Select("ids", "nope", "also"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown field: got %v, want ErrNotFound", err)
	}
	if _, err := b.Select("ids", "ids"); !errors.Is(err, ErrInvalid) {
		t.Errorf("field twice: got %v, want ErrInvalid", err)
	}
}

func TestBatchTakeSlice(t *testing.T) {
	b := testBatch(t)
	tk, err := b.Take([]int{2, 0})
	if err != nil {
		t.Fatal(err)
	}
	if tk.Rows() != 2 {
		t.Fatalf("Take rows: got %d, want 2", tk.Rows())
	}
	ids, _ := Values[int64](tk.Col("ids"))
	if diff := cmp.Diff([]int64{5, 6, 1, 2}, ids); diff != "" {
		t.Errorf("ids (-want +got):\n%s", diff)
	}
	resp, _ := Values[float32](tk.Col("resp"))
	if diff := cmp.Diff([]float32{0.5}, resp); diff != "" {
		t.Errorf("resp (-want +got):\n%s", diff)
	}
	text, _ := tk.Col("text").Strings()
	if diff := cmp.Diff([]string{"ccc", "a"}, text); diff != "" {
		t.Errorf("text (-want +got):\n%s", diff)
	}
	if _, err := b.Take([]int{3}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Take out of range: got %v, want ErrInvalid", err)
	}

	sl, err := b.Slice(1, 3)
	if err != nil {
		t.Fatal(err)
	}
	text, _ = sl.Col("text").Strings()
	if diff := cmp.Diff([]string{"bb", "ccc"}, text); diff != "" {
		t.Errorf("Slice text (-want +got):\n%s", diff)
	}
	if _, err := b.Slice(2, 4); !errors.Is(err, ErrInvalid) {
		t.Errorf("Slice out of range: got %v, want ErrInvalid", err)
	}

	cl := b.Clone()
	cl.Col("ids").Data()[0] = 99
	if v, _ := Values[int64](b.Col("ids")); v[0] != 1 {
		t.Errorf("changing a clone changed its source: got %d, want 1", v[0])
	}
}

// BenchmarkNewBatch: a small KV value's batch (one field), and a wide one.
func BenchmarkNewBatch(b *testing.B) {
	for _, n := range []int{1, 16} {
		b.Run(fmt.Sprintf("fields=%d", n), func(b *testing.B) {
			fs := make([]Field, n)
			for i := range fs {
				c, _ := DenseOf([]int32{int32(i)})
				fs[i] = Field{fmt.Sprintf("f%d", i), c}
			}
			b.ReportAllocs()
			for b.Loop() {
				bt, err := NewBatch(fs...)
				if err != nil || bt.Col(fs[n-1].Name) == nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestOneValue(t *testing.T) {
	data := []byte("a value")
	col, err := NewOpaque([]int{0, len(data)}, data)
	if err != nil {
		t.Fatal(err)
	}
	want := MustBatch(Field{"v", col})
	got := OneValue("v", data)
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(Batch{}, Column{})); diff != "" {
		t.Errorf("OneValue differs from NewBatch of NewOpaque (-want +got):\n%s", diff)
	}
	if &got.Col("v").RowBytes(0)[0] != &data[0] {
		t.Error("OneValue copied its data; it aliases it")
	}
	// What a caller may do with it: select, slice, take, clone.
	if s, err := got.Select("v"); err != nil || string(s.Col("v").RowBytes(0)) != "a value" {
		t.Errorf("Select: %v", err)
	}
	if c := got.Clone(); string(c.Col("v").RowBytes(0)) != "a value" {
		t.Error("Clone lost the value")
	}
	if n := testing.AllocsPerRun(100, func() { OneValue("v", data) }); n != 1 {
		t.Errorf("OneValue made %v allocations, want 1", n)
	}
}
