package kvapi

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
)

func TestReservePut(t *testing.T) {
	ctx := context.Background()
	kv, e := newKV(t)
	spec := []client.FieldSpec{
		{Name: "x", DType: engine.Float32, Shape: engine.Shape{2}},
		{Name: "s", RowBytes: []int{3, 0}},
	}
	pb := must[*PutBuffer](t)(kv.ReservePut(ctx, "p", []string{"a", "b"}, spec...))
	x, err := engine.Values[float32](pb.Column("x"))
	if err != nil {
		t.Fatal(err)
	}
	copy(x, []float32{1, 2, 3, 4})
	copy(pb.Column("s").Data(), "abc")
	// The keys appear at commit, not before.
	if l := must[map[string][]Entry](t)(kv.List(ctx, "p")); len(l["p"]) != 0 {
		t.Fatalf("keys before commit: %v", l)
	}
	if _, err := kv.BatchGet(ctx, "p", []string{"a"}, "x"); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("get before commit: %v, want the key unknown", err)
	}
	m := must[*engine.KVMeta](t)(pb.Commit(ctx))
	if !slices.Equal(m.Keys, []string{"a", "b"}) || !slices.Equal(m.Fields, []string{"s", "x"}) {
		t.Fatalf("meta %+v", m)
	}
	got := must[*engine.Batch](t)(kv.BatchGet(ctx, "p", []string{"b", "a"}))
	defer got.Release()
	gx, _ := engine.Values[float32](got.Col("x"))
	if !slices.Equal(gx, []float32{3, 4, 1, 2}) || got.Col("s").String(1) != "abc" || got.Col("s").String(0) != "" {
		t.Fatalf("read back x=%v s=%q,%q", gx, got.Col("s").String(0), got.Col("s").String(1))
	}
	if _, err := pb.Commit(ctx); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("second commit: %v", err)
	}

	// An abort gives the memory back and removes only the keys it created.
	used := e.Units[0].Stats().Used
	pb = must[*PutBuffer](t)(kv.ReservePut(ctx, "p", []string{"a", "new"}, spec[0]))
	if err := pb.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if st := e.Units[0].Stats(); st.Used != used || st.OpenReservations != 0 {
		t.Fatalf("after abort: used %d (was %d), %d reservations", st.Used, used, st.OpenReservations)
	}
	keys := []string{}
	for _, en := range must[map[string][]Entry](t)(kv.List(ctx, "p"))["p"] {
		keys = append(keys, en.Key)
	}
	if !slices.Equal(keys, []string{"a", "b"}) {
		t.Fatalf("keys after abort: %v (%v)", keys, must[map[string][]Entry](t)(kv.List(ctx, "")))
	}
	again := must[*engine.Batch](t)(kv.BatchGet(ctx, "p", []string{"a"}, "x"))
	if v, _ := engine.Values[float32](again.Col("x")); !slices.Equal(v, []float32{1, 2}) {
		t.Fatalf("a after abort: %v", v)
	}
}

func TestReservePutRefusals(t *testing.T) {
	ctx := context.Background()
	kv, e := newKV(t)
	if _, err := kv.BatchPut(ctx, "p", []string{"k"}, engine.MustBatch(engine.Field{Name: "x", Col: col(t, []int64{1})}), nil); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		keys []string
		spec []client.FieldSpec
		want error
	}{
		"dtype":     {[]string{"new"}, []client.FieldSpec{{Name: "x", DType: engine.Float32}}, engine.ErrDTypeMismatch},
		"no keys":   {nil, []client.FieldSpec{{Name: "y", DType: engine.Float32}}, engine.ErrInvalid},
		"dup keys":  {[]string{"a", "a"}, []client.FieldSpec{{Name: "y", DType: engine.Float32}}, engine.ErrInvalid},
		"no fields": {[]string{"new"}, nil, engine.ErrInvalid},
		"rows":      {[]string{"new"}, []client.FieldSpec{{Name: "s", RowBytes: []int{1, 2}}}, engine.ErrInvalid},
	} {
		if _, err := kv.ReservePut(ctx, "p", tc.keys, tc.spec...); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	if l := must[map[string][]Entry](t)(kv.List(ctx, "p")); len(l["p"]) != 1 {
		t.Fatalf("refused puts left keys: %v", l)
	}

	// A unit that cannot lend memory: ErrNotSupported, nothing created.
	c, err := client.New(embedded.Meta(e.Controller), []client.DataUnit{noReserve{embedded.Unit(e.Units[0])}}, client.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(c).ReservePut(ctx, "p", []string{"new"}, client.FieldSpec{Name: "y", DType: engine.Float32}); !errors.Is(err, engine.ErrNotSupported) {
		t.Fatalf("unit without Reserver: %v", err)
	}
	if l := must[map[string][]Entry](t)(kv.List(ctx, "p")); len(l["p"]) != 1 {
		t.Fatalf("a refused put left keys: %v", l)
	}
}

// noReserve hides a unit's Reserver, as a tcp unit has none.
type noReserve struct{ client.DataUnit }

// Ending a buffer twice changes nothing: the committed keys stay.
func TestReservePutEndsOnce(t *testing.T) {
	ctx := context.Background()
	kv, _ := newKV(t)
	spec := client.FieldSpec{Name: "x", DType: engine.Float32}
	pb := must[*PutBuffer](t)(kv.ReservePut(ctx, "p", []string{"a", "b"}, spec))
	must[*engine.KVMeta](t)(pb.Commit(ctx))
	if _, err := pb.Commit(ctx); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("second commit: %v", err)
	}
	if err := pb.Abort(ctx); err != nil {
		t.Fatalf("abort after commit: %v", err)
	}
	if l := must[map[string][]Entry](t)(kv.List(ctx, "p")); len(l["p"]) != 2 {
		t.Fatalf("keys after a second commit and an abort: %v", l)
	}
}
