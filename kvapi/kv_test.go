package kvapi

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
)

func newKV(t *testing.T) (*KV, *embedded.Cluster) {
	t.Helper()
	cfg := embedded.DefaultConfig()
	cfg.Storage.Capacity = 64 << 20
	cfg.Storage.SegmentSize = 16 << 20
	e, err := embedded.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return New(e.Client), e
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func col[T engine.Elem](t *testing.T, vals []T, shape ...int) *engine.Column {
	t.Helper()
	return must[*engine.Column](t)(engine.DenseOf(vals, shape...))
}

// demoBatch is the reference KV example: four keys with input_ids and
// attention_mask.
func demoBatch(t *testing.T) *engine.Batch {
	ids := col(t, []int64{4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, 3)
	mask := col(t, []int64{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, 3)
	return engine.MustBatch(engine.Field{Name: "input_ids", Col: ids}, engine.Field{Name: "attention_mask", Col: mask})
}

var demoKeys = []string{"1_0", "1_1", "1_2", "2_0"}

func demoTags() []engine.Tags {
	out := make([]engine.Tags, 4)
	for i := range out {
		out[i] = engine.Tags{"global_steps": 1, "status": "running", "model_version": 1}
	}
	return out
}

func TestDemoFlow(t *testing.T) {
	kv, e := newKV(t)
	ctx := context.Background()
	meta := must[*engine.KVMeta](t)(kv.BatchPut(ctx, "test", demoKeys, demoBatch(t), demoTags()))
	if diff := cmp.Diff([]string{"attention_mask", "input_ids"}, meta.Fields); diff != "" {
		t.Fatalf("fields (-want +got):\n%s", diff)
	}
	list := must[map[string][]Entry](t)(kv.List(ctx, "test"))
	var keys []string
	for _, en := range list["test"] {
		keys = append(keys, en.Key)
		if en.Tags["status"] != "running" {
			t.Fatalf("tag of %s = %v", en.Key, en.Tags)
		}
	}
	if diff := cmp.Diff(demoKeys, keys); diff != "" {
		t.Fatalf("listed keys (-want +got):\n%s", diff)
	}
	all := must[*engine.Batch](t)(kv.BatchGet(ctx, "test", keys))
	if !all.Col("input_ids").Equal(demoBatch(t).Col("input_ids")) {
		t.Fatal("input_ids did not round-trip")
	}
	// Update one field of one key, and its tag.
	upd := engine.MustBatch(engine.Field{Name: "input_ids", Col: col(t, []int64{40, 50, 60}, 3)})
	m := must[*engine.KVMeta](t)(kv.Put(ctx, "test", "1_1", upd, engine.Tags{"status": "done"}))
	if m.Tags[0]["status"] != "done" || m.Tags[0]["global_steps"] != 1 {
		t.Fatalf("merged tag = %v", m.Tags[0])
	}
	got := must[*engine.Batch](t)(kv.BatchGet(ctx, "test", []string{"1_0", "1_1"}, "input_ids"))
	vals := must[[]int64](t)(engine.Values[int64](got.Col("input_ids")))
	if diff := cmp.Diff([]int64{4, 5, 6, 40, 50, 60}, vals); diff != "" {
		t.Fatalf("after update (-want +got):\n%s", diff)
	}
	if got.NumFields() != 1 {
		t.Fatalf("field selection returned %v", got.Names())
	}
	if err := kv.Clear(ctx, "test", keys); err != nil {
		t.Fatal(err)
	}
	if l := must[map[string][]Entry](t)(kv.List(ctx, "test")); len(l["test"]) != 0 {
		t.Fatalf("keys after clear: %v", l)
	}
	for _, u := range e.Units {
		if st := u.Stats(); st.Used != 0 {
			t.Fatalf("unit %d still uses %d bytes after clearing everything", u.ID(), st.Used)
		}
	}
}

// Every value kind survives a put and a get bit for bit.
func TestAllValueKinds(t *testing.T) {
	kv, e := newKV(t)
	ctx := context.Background()
	nan64 := math.Float64frombits(0x7ff8_0000_dead_beef)
	nan32 := math.Float32frombits(0x7fc0_1234)
	long := strings.Repeat("ünïcødé ✓ ", 2000)
	fields := []engine.Field{
		{Name: "f64", Col: col(t, []float64{1.5, nan64, math.Inf(1), math.Inf(-1), math.Copysign(0, -1), 7}, 2)},
		{Name: "f32", Col: col(t, []float32{nan32, float32(math.Inf(1)), 1, 2, 3, -4}, 2)},
		{Name: "f16", Col: col(t, []engine.F16{0x7e01, 0x7c00, 0xfc00, 0x3c00, 0, 0x8000}, 2)},
		{Name: "bf16", Col: col(t, []engine.BF16{0x7fc1, 0x7f80, 0xff80, 0x3f80, 1, 2}, 2)},
		{Name: "i64", Col: col(t, []int64{math.MinInt64, math.MaxInt64, 0}, 1)},
		{Name: "i32", Col: col(t, []int32{math.MinInt32, 1, math.MaxInt32})},
		{Name: "i16", Col: col(t, []int16{-1, 2, 3})},
		{Name: "i8", Col: col(t, []int8{-128, 0, 127})},
		{Name: "u8", Col: col(t, []uint8{0, 128, 255})},
		{Name: "bool", Col: col(t, []bool{true, false, true})},
		{Name: "ragged", Col: engine.RaggedOf([][]float32{{nan32}, {}, {1, 2, 3}})},
		{Name: "text", Col: engine.StringsOf([]string{long, "", `{"json": [1, 2, {"a": null}]}`})},
		{Name: "blob", Col: engine.BytesOf([][]byte{{0, 1, 2}, {255}, nil})},
	}
	b := engine.MustBatch(fields...)
	keys := []string{"a", "b", "c"}
	must[*engine.KVMeta](t)(kv.BatchPut(ctx, "p", keys, b, nil))
	got := must[*engine.Batch](t)(kv.BatchGet(ctx, "p", keys))
	for _, f := range fields {
		g := got.Col(f.Name)
		if g == nil || !g.Equal(f.Col) {
			t.Errorf("field %s did not round-trip bit-exactly", f.Name)
		}
	}
	if got.Col("ragged").Kind() != engine.Ragged || got.Col("f32").Kind() != engine.Dense || got.Col("text").Kind() != engine.Opaque {
		t.Fatalf("kinds: ragged %v f32 %v text %v", got.Col("ragged").Kind(), got.Col("f32").Kind(), got.Col("text").Kind())
	}
	// A subset of rows whose ragged shapes agree comes back dense.
	sub := must[*engine.Batch](t)(kv.BatchGet(ctx, "p", []string{"a"}, "ragged"))
	if sub.Col("ragged").Kind() != engine.Dense {
		t.Fatalf("single ragged row came back %v", sub.Col("ragged").Kind())
	}
	// Zero-length cells (an empty string, an empty ragged row) free cleanly.
	if err := kv.Clear(ctx, "p", keys); err != nil {
		t.Fatal(err)
	}
	for _, u := range e.Units {
		if st := u.Stats(); st.Used != 0 {
			t.Fatalf("unit %d uses %d bytes after clearing everything", u.ID(), st.Used)
		}
	}
}

func TestPartialUpdatesAndCumulativeFields(t *testing.T) {
	kv, _ := newKV(t)
	ctx := context.Background()
	a := engine.MustBatch(engine.Field{Name: "prompt", Col: col(t, []int32{1, 2}, 1)})
	must[*engine.KVMeta](t)(kv.BatchPut(ctx, "p", []string{"k1", "k2"}, a, nil))
	r := engine.MustBatch(engine.Field{Name: "reward", Col: col(t, []float32{0.5})})
	m := must[*engine.KVMeta](t)(kv.Put(ctx, "p", "k1", r, nil))
	if diff := cmp.Diff([]string{"prompt", "reward"}, m.Fields); diff != "" {
		t.Fatalf("cumulative fields (-want +got):\n%s", diff)
	}
	// Only the field every key has comes back when none is named.
	both := must[*engine.Batch](t)(kv.BatchGet(ctx, "p", []string{"k1", "k2"}))
	if diff := cmp.Diff([]string{"prompt"}, both.Names()); diff != "" {
		t.Fatalf("common fields (-want +got):\n%s", diff)
	}
	_, err := kv.BatchGet(ctx, "p", []string{"k1", "k2"}, "reward")
	if !errors.Is(err, engine.ErrNotReady) || !strings.Contains(err.Error(), "k2") {
		t.Fatalf("reward for k2: got %v, want ErrNotReady naming k2", err)
	}
	// Tag-only put.
	tm := must[*engine.KVMeta](t)(kv.Put(ctx, "p", "k2", nil, engine.Tags{"score": 3}))
	if tm.Tags[0]["score"] != 3 {
		t.Fatalf("tag-only put: %v", tm.Tags)
	}
	byMeta := must[*engine.Batch](t)(kv.BatchGetByMeta(ctx, m, "reward"))
	if byMeta.Rows() != 1 {
		t.Fatalf("get by meta: %d rows", byMeta.Rows())
	}
	if _, err := kv.BatchGetByMeta(ctx, m, "nope"); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("get by meta with unknown field: %v", err)
	}
}

func TestErrorsNameWhatWasWrong(t *testing.T) {
	kv, _ := newKV(t)
	ctx := context.Background()
	must[*engine.KVMeta](t)(kv.BatchPut(ctx, "p", demoKeys, demoBatch(t), nil))
	_, err := kv.BatchGet(ctx, "p", []string{"1_0", "ghost", "phantom"})
	if !errors.Is(err, engine.ErrNotFound) || !strings.Contains(err.Error(), "ghost") || !strings.Contains(err.Error(), "phantom") {
		t.Fatalf("unknown keys: %v", err)
	}
	_, err = kv.BatchGet(ctx, "p", []string{"1_0"}, "input_ids", "nosuch")
	if !errors.Is(err, engine.ErrNotFound) || !strings.Contains(err.Error(), "nosuch") {
		t.Fatalf("unknown field: %v", err)
	}
	if _, err := kv.BatchGet(ctx, "elsewhere", []string{"1_0"}); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("unknown partition: %v", err)
	}
}

// Bad input returns a clear error and changes nothing.
func TestBadInputChangesNothing(t *testing.T) {
	kv, e := newKV(t)
	ctx := context.Background()
	must[*engine.KVMeta](t)(kv.BatchPut(ctx, "p", demoKeys, demoBatch(t), demoTags()))
	before := must[map[string][]Entry](t)(kv.List(ctx, ""))
	used := e.Units[0].Stats().Used + e.Units[1].Stats().Used
	wrongDType := engine.MustBatch(engine.Field{Name: "input_ids", Col: col(t, []float32{1, 2, 3}, 3)})
	for _, tc := range []struct {
		name string
		run  func() error
		want error
	}{
		{"rows and keys differ", func() error {
			_, err := kv.BatchPut(ctx, "p", []string{"x"}, demoBatch(t), nil)
			return err
		}, engine.ErrInvalid},
		{"tags and keys differ", func() error {
			_, err := kv.BatchPut(ctx, "p", []string{"x", "y"}, nil, []engine.Tags{{}})
			return err
		}, engine.ErrInvalid},
		{"empty key list", func() error { _, err := kv.BatchPut(ctx, "p", nil, nil, []engine.Tags{}); return err }, engine.ErrInvalid},
		{"neither fields nor tag", func() error { _, err := kv.Put(ctx, "p", "new", nil, nil); return err }, engine.ErrInvalid},
		{"duplicate keys", func() error {
			_, err := kv.BatchPut(ctx, "p", []string{"d", "d"}, nil, []engine.Tags{{}, {}})
			return err
		}, engine.ErrInvalid},
		{"wrong dtype for existing field", func() error {
			_, err := kv.Put(ctx, "p", "brand_new", wrongDType, engine.Tags{"a": 1})
			return err
		}, engine.ErrDTypeMismatch},
		{"get of unknown keys", func() error { _, err := kv.BatchGet(ctx, "p", []string{"zzz"}); return err }, engine.ErrNotFound},
		{"get with no keys", func() error { _, err := kv.BatchGet(ctx, "p", nil); return err }, engine.ErrInvalid},
		{"multi-row batch for one key", func() error { _, err := kv.Put(ctx, "p", "x", demoBatch(t), nil); return err }, engine.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.run(); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	after := must[map[string][]Entry](t)(kv.List(ctx, ""))
	if diff := cmp.Diff(before, after); diff != "" {
		t.Fatalf("bad input changed keys or tags (-before +after):\n%s", diff)
	}
	if now := e.Units[0].Stats().Used + e.Units[1].Stats().Used; now != used {
		t.Fatalf("bad input changed storage use: %d -> %d bytes", used, now)
	}
}

func TestPartitionIsolationAndClear(t *testing.T) {
	kv, _ := newKV(t)
	ctx := context.Background()
	a := engine.MustBatch(engine.Field{Name: "v", Col: col(t, []int64{1})})
	b := engine.MustBatch(engine.Field{Name: "v", Col: col(t, []int64{2})})
	must[*engine.KVMeta](t)(kv.Put(ctx, "train", "k", a, nil))
	must[*engine.KVMeta](t)(kv.Put(ctx, "val", "k", b, nil))
	must[*engine.KVMeta](t)(kv.Put(ctx, "other", "k", a, nil))
	if err := kv.Clear(ctx, "train", []string{"k"}); err != nil {
		t.Fatal(err)
	}
	// The cleared index is reused by a new key in another partition; the
	// old partition must not see it.
	must[*engine.KVMeta](t)(kv.Put(ctx, "val", "fresh", a, nil))
	if _, err := kv.BatchGet(ctx, "train", []string{"k"}); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("cleared key still readable: %v", err)
	}
	got := must[*engine.Batch](t)(kv.BatchGet(ctx, "val", []string{"k", "fresh"}))
	vals := must[[]int64](t)(engine.Values[int64](got.Col("v")))
	if diff := cmp.Diff([]int64{2, 1}, vals); diff != "" {
		t.Fatalf("val (-want +got):\n%s", diff)
	}
	for range 2 { // idempotent, unknown keys and partitions included
		if err := kv.Clear(ctx, "train", []string{"k", "never"}); err != nil {
			t.Fatal(err)
		}
		if err := kv.Clear(ctx, "nowhere", []string{"k"}); err != nil {
			t.Fatal(err)
		}
	}
	all := must[map[string][]Entry](t)(kv.List(ctx, ""))
	if len(all["val"]) != 2 || len(all["other"]) != 1 || len(all["train"]) != 0 {
		t.Fatalf("list after clears: %v", all)
	}
	if l := must[map[string][]Entry](t)(kv.List(ctx, "unknown")); len(l) != 0 {
		t.Fatalf("unknown partition listed %v", l)
	}
}

func TestResultsAreSafeToModify(t *testing.T) {
	kv, _ := newKV(t)
	ctx := context.Background()
	must[*engine.KVMeta](t)(kv.BatchPut(ctx, "p", demoKeys, demoBatch(t), nil))
	got := must[*engine.Batch](t)(kv.BatchGet(ctx, "p", demoKeys, "input_ids"))
	vals := must[[]int64](t)(engine.Values[int64](got.Col("input_ids")))
	for i := range vals {
		vals[i] = -1
	}
	again := must[*engine.Batch](t)(kv.BatchGet(ctx, "p", demoKeys, "input_ids"))
	if !again.Col("input_ids").Equal(demoBatch(t).Col("input_ids")) {
		t.Fatal("writing to a get's result changed storage")
	}
	// Views alias storage and survive a clear until released.
	v := must[*client.View](t)(kv.BatchGetView(ctx, "p", demoKeys, "input_ids"))
	if err := kv.Clear(ctx, "p", demoKeys); err != nil {
		t.Fatal(err)
	}
	must[*engine.KVMeta](t)(kv.BatchPut(ctx, "p", demoKeys, engine.MustBatch(engine.Field{Name: "input_ids", Col: col(t, make([]int64, 12), 3)}), nil))
	if !v.Col("input_ids").Equal(demoBatch(t).Col("input_ids")) {
		t.Fatal("a view saw its rows' memory reused before release")
	}
	v.Release()
	v.Release()
}

func TestShapeChangeMakesRagged(t *testing.T) {
	kv, _ := newKV(t)
	ctx := context.Background()
	must[*engine.KVMeta](t)(kv.BatchPut(ctx, "p", []string{"a", "b"}, engine.MustBatch(engine.Field{Name: "x", Col: col(t, make([]float32, 8), 4)}), nil))
	must[*engine.KVMeta](t)(kv.BatchPut(ctx, "p", []string{"c", "d"}, engine.MustBatch(engine.Field{Name: "x", Col: col(t, make([]float32, 12), 6)}), nil))
	got := must[*engine.Batch](t)(kv.BatchGet(ctx, "p", []string{"a", "b", "c", "d"}, "x"))
	c := got.Col("x")
	if c.Kind() != engine.Ragged || c.Len() != 4 || !c.RowShape(0).Equal(engine.Shape{4}) || !c.RowShape(3).Equal(engine.Shape{6}) {
		t.Fatalf("after a shape change: kind %v rows %d shapes %v", c.Kind(), c.Len(), c.Shapes())
	}
}

func TestAsyncManyInFlight(t *testing.T) {
	kv, _ := newKV(t)
	ctx := context.Background()
	var puts []*Future[*engine.KVMeta]
	for i := range 32 {
		key := string(rune('a'+i%26)) + strings.Repeat("x", i/26)
		b := engine.MustBatch(engine.Field{Name: "v", Col: col(t, []int64{int64(i)})})
		puts = append(puts, kv.PutAsync(ctx, "p", key, b, engine.Tags{"i": i}))
	}
	var keys []string
	for _, f := range puts {
		m, err := f.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, m.Keys[0])
	}
	got, err := kv.BatchGetAsync(ctx, "p", keys).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vals := must[[]int64](t)(engine.Values[int64](got.Col("v")))
	want := make([]int64, 32)
	for i := range want {
		want[i] = int64(i)
	}
	if diff := cmp.Diff(want, vals); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	l, err := kv.ListAsync(ctx, "p").Wait(ctx)
	if err != nil || len(l["p"]) != 32 {
		t.Fatalf("list: %d keys, %v", len(l["p"]), err)
	}
	if _, err := kv.ClearAsync(ctx, "p", keys).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	meta, err := kv.BatchPutAsync(ctx, "p", []string{"z"}, nil, []engine.Tags{{"t": 1}}).Wait(ctx)
	if err != nil || !slices.Equal(meta.Keys, []string{"z"}) {
		t.Fatalf("batch put async: %v %v", meta, err)
	}
	if _, err := kv.BatchGetByMetaAsync(ctx, meta).Wait(ctx); err != nil {
		t.Fatalf("get by meta of a tag-only key: %v", err)
	}
}

func TestBatchGetInto(t *testing.T) {
	kv, _ := newKV(t)
	ctx := context.Background()
	b := engine.MustBatch(
		engine.Field{Name: "ids", Col: col(t, []int64{1, 2, 3, 4, 5, 6}, 3)},
		engine.Field{Name: "r", Col: engine.RaggedOf([][]float32{{1}, {2, 3}})},
		engine.Field{Name: "s", Col: engine.StringsOf([]string{"a", "ünï"})},
	)
	keys := []string{"x", "y"}
	must[*engine.KVMeta](t)(kv.BatchPut(ctx, "p", keys, b, nil))
	n := must[int](t)(kv.SizeOf(ctx, "p", keys))
	if n != b.Size() {
		t.Fatalf("SizeOf = %d, want %d", n, b.Size())
	}
	if _, err := kv.BatchGetInto(ctx, "p", keys, make([]byte, n-1)); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("short buffer: got %v, want ErrInvalid", err)
	}
	buf := make([]byte, n)
	for range 2 { // the buffer is reusable
		got := must[*engine.Batch](t)(kv.BatchGetInto(ctx, "p", keys, buf))
		for _, f := range b.Fields() {
			if !got.Col(f.Name).Equal(f.Col) {
				t.Fatalf("field %s differs", f.Name)
			}
		}
		// Writing the buffer shows through the result: it lives there.
		saved := append([]byte(nil), buf...)
		clear(buf)
		if v, _ := engine.Values[int64](got.Col("ids")); v[0] != 0 {
			t.Fatal("the result does not live in the caller's buffer")
		}
		copy(buf, saved)
	}
}

// A put of one key whose batch has no fields is refused for that, not as
// a batch of the wrong row count (it used to say "0-row batch (use
// BatchPut)", which BatchPut refuses too), and changes nothing.
func TestPutOfNoFieldsSaysSo(t *testing.T) {
	kv, _ := newKV(t)
	ctx := context.Background()
	_, err := kv.Put(ctx, "p", "k", engine.MustBatch(), engine.Tags{"a": 1})
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), "empty field set")
	assert.NotContains(t, err.Error(), "BatchPut")
	l, err := kv.List(ctx, "")
	require.NoError(t, err)
	assert.Empty(t, l)
}

// A get that names a field twice is refused, naming it, as one that names
// a key twice is: it does not quietly return the field once. Every form
// of the get, on keys that hold the field.
func TestGetOfAFieldNamedTwiceIsRefused(t *testing.T) {
	kv, _ := newKV(t)
	ctx := context.Background()
	meta := must[*engine.KVMeta](t)(kv.BatchPut(ctx, "p", demoKeys, demoBatch(t), demoTags()))
	fields := []string{"input_ids", "attention_mask", "input_ids"}
	for name, get := range map[string]func() error{
		"batch get":      func() error { _, err := kv.BatchGet(ctx, "p", demoKeys, fields...); return err },
		"batch get copy": func() error { _, err := kv.BatchGetCopy(ctx, "p", demoKeys, fields...); return err },
		"batch get view": func() error { _, err := kv.BatchGetView(ctx, "p", demoKeys, fields...); return err },
		"batch get into": func() error {
			_, err := kv.BatchGetInto(ctx, "p", demoKeys, make([]byte, 1<<10), fields...)
			return err
		},
		"size of": func() error { _, err := kv.SizeOf(ctx, "p", demoKeys, fields...); return err },
		"by meta": func() error { _, err := kv.BatchGetByMeta(ctx, meta, fields...); return err },
		"one key": func() error { _, err := kv.BatchGet(ctx, "p", demoKeys[:1], "input_ids", "input_ids"); return err },
		"async":   func() error { _, err := kv.BatchGetAsync(ctx, "p", demoKeys, fields...).Wait(ctx); return err },
	} {
		err := get()
		require.ErrorIs(t, err, engine.ErrInvalid, name)
		require.ErrorContains(t, err, `field "input_ids" appears twice`, name)
	}
}
