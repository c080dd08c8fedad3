package client_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
)

func newEmbedded(t *testing.T, place client.Placement, units int) *embedded.Cluster {
	t.Helper()
	cfg := embedded.DefaultConfig()
	cfg.Units = units
	cfg.Client.Placement = place
	cfg.Storage.Capacity = 32 << 20
	cfg.Storage.SegmentSize = 8 << 20
	e, err := embedded.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func ints(t *testing.T, name string, vals []int64, shape ...int) *engine.Batch {
	t.Helper()
	c, err := engine.DenseOf(vals, shape...)
	if err != nil {
		t.Fatal(err)
	}
	return engine.MustBatch(engine.Field{Name: name, Col: c})
}

func values(t *testing.T, b *engine.Batch, name string) []int64 {
	t.Helper()
	v, err := engine.Values[int64](b.Col(name))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func used(e *embedded.Cluster) (n int64) {
	for _, u := range e.Units {
		n += u.Stats().Used
	}
	return n
}

func TestPlacement(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		place client.Placement
		want  map[engine.UnitID]int // rows per unit for indexes 0..5
	}{
		{client.Hash, map[engine.UnitID]int{1: 2, 2: 2, 3: 2}},
		{client.LocalFirst, map[engine.UnitID]int{1: 6}},
	} {
		t.Run(tc.place.String(), func(t *testing.T) {
			e := newEmbedded(t, tc.place, 3)
			m, err := e.Client.PutNew(ctx, "p", ints(t, "x", []int64{0, 1, 2, 3, 4, 5}))
			if err != nil {
				t.Fatal(err)
			}
			got := map[engine.UnitID]int{}
			for _, l := range m.Cells["x"] {
				got[l.Unit]++ // hash: equal rows, equal bytes per unit
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("rows per unit (-want +got):\n%s", diff)
			}
			// The same rows land the same way whatever the batch order.
			back, err := e.Client.Get(ctx, m)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]int64{0, 1, 2, 3, 4, 5}, values(t, back, "x")); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
		})
	}
}

// Two puts on different units, then an update of rows that straddle both
// with a changed field and a new field: force-fetch shows the update only
// where it was written.
func TestCrossUnitOverlappingUpdate(t *testing.T) {
	ctx := context.Background()
	e := newEmbedded(t, client.Hash, 2)
	c := e.Client
	first, err := c.PutNew(ctx, "p", ints(t, "a", []int64{0, 1, 2, 3}))
	if err != nil {
		t.Fatal(err)
	}
	second, err := c.PutNew(ctx, "p", ints(t, "a", []int64{4, 5, 6, 7}))
	if err != nil {
		t.Fatal(err)
	}
	all, _ := engine.ConcatMetas(first, second)
	mid, _ := all.SelectRows([]int{2, 3, 4, 5})
	upd := engine.MustBatch(
		engine.Field{Name: "a", Col: ints(t, "a", []int64{20, 30, 40, 50}).Col("a")},
		engine.Field{Name: "b", Col: ints(t, "b", []int64{-2, -3, -4, -5}).Col("b")},
	)
	if _, err := c.Put(ctx, upd, mid); err != nil {
		t.Fatal(err)
	}
	ff, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Mode: client.ForceFetch, Fields: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Get(ctx, ff)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int64{0, 1, 20, 30, 40, 50, 6, 7}, values(t, got, "a")); diff != "" {
		t.Fatalf("a after update (-want +got):\n%s", diff)
	}
	ffb, _ := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Mode: client.ForceFetch, Fields: []string{"b"}})
	if diff := cmp.Diff([]bool{false, false, true, true, true, true, false, false}, ffb.Ready); diff != "" {
		t.Fatalf("b readiness (-want +got):\n%s", diff)
	}
	if _, err := c.Get(ctx, ffb); !errors.Is(err, engine.ErrNotReady) {
		t.Fatalf("get of partly produced b: got %v, want ErrNotReady", err)
	}
	bm, _ := ffb.SelectRows([]int{2, 3, 4, 5})
	gb, err := c.Get(ctx, bm)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int64{-2, -3, -4, -5}, values(t, gb, "b")); diff != "" {
		t.Fatalf("b (-want +got):\n%s", diff)
	}
	// Overwritten cells were freed: only 8 a-cells and 4 b-cells are live.
	if err := c.ClearPartition(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	if n := used(e); n != 0 {
		t.Fatalf("%d bytes still used after clearing the partition", n)
	}
}

// The streaming pattern through the batch API: producers put, a consumer
// waits for ready rows, computes, and writes a new column back.
func TestFetchComputePutBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e := newEmbedded(t, client.LocalFirst, 2)
	c := e.Client
	go func() {
		time.Sleep(20 * time.Millisecond)
		c.PutNew(ctx, "train", ints(t, "prompt", []int64{1, 2, 3, 4}))
	}()
	m, err := c.GetMeta(ctx, client.MetaRequest{Partition: "train", Fields: []string{"prompt"}, BatchSize: 4, Task: "rollout", Wait: true})
	if err != nil || m.Len() != 4 {
		t.Fatalf("blocking fetch: %v rows, %v", m.Len(), err)
	}
	data, err := c.Get(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	resp := values(t, data, "prompt")
	for i := range resp {
		resp[i] *= 10
	}
	if _, err := c.Put(ctx, ints(t, "response", resp), m); err != nil {
		t.Fatal(err)
	}
	ok, err := c.CheckProduction(ctx, "train", []string{"prompt", "response"})
	if err != nil || !ok {
		t.Fatalf("CheckProduction = %v, %v", ok, err)
	}
	ok, _ = c.CheckConsumption(ctx, "train", "rollout")
	if !ok {
		t.Fatal("rollout has not consumed everything")
	}
	if again, _ := c.GetMeta(ctx, client.MetaRequest{Partition: "train", Fields: []string{"prompt"}, BatchSize: 1, Task: "rollout"}); again.Len() != 0 {
		t.Fatalf("consumed rows fetched again: %v", again.Indexes)
	}
	tr, _ := c.GetMeta(ctx, client.MetaRequest{Partition: "train", Fields: []string{"prompt", "response"}, BatchSize: 4, Task: "train"})
	got, err := c.Get(ctx, tr)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int64{10, 20, 30, 40}, values(t, got, "response")); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	if err := c.ResetConsumption(ctx, "train", "rollout"); err != nil {
		t.Fatal(err)
	}
	if again, _ := c.GetMeta(ctx, client.MetaRequest{Partition: "train", Fields: []string{"prompt"}, BatchSize: 4, Task: "rollout"}); again.Len() != 4 {
		t.Fatalf("after reset: %d rows", again.Len())
	}
	tags := tr.Clone()
	for i := range tags.Tags {
		tags.Tags[i] = engine.Tags{"step": i}
	}
	if err := c.SetTags(ctx, tags); err != nil {
		t.Fatal(err)
	}
	ff, _ := c.GetMeta(ctx, client.MetaRequest{Partition: "train", Mode: client.ForceFetch})
	if ff.Tags[3]["step"] != 3 {
		t.Fatalf("tags: %v", ff.Tags)
	}
	if err := c.Clear(ctx, ff); err != nil {
		t.Fatal(err)
	}
	if err := c.Clear(ctx, ff); err != nil {
		t.Fatalf("second clear: %v", err)
	}
	if n := used(e); n != 0 {
		t.Fatalf("%d bytes used after clearing every row", n)
	}
}

func TestViewIsZeroCopy(t *testing.T) {
	ctx := context.Background()
	e := newEmbedded(t, client.LocalFirst, 1)
	m, err := e.Client.PutNew(ctx, "p", ints(t, "x", make([]int64, 4096), 64))
	if err != nil {
		t.Fatal(err)
	}
	v1, err := e.Client.GetView(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	defer v1.Release()
	v2, err := e.Client.GetView(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Release()
	d1, d2 := v1.Col("x").Data(), v2.Col("x").Data()
	if &d1[0] != &d2[0] {
		t.Fatal("two views of the same cells point at different memory: the view copied")
	}
	g, _ := e.Client.Get(ctx, m)
	if &g.Col("x").Data()[0] == &d1[0] {
		t.Fatal("a copying get returned storage memory")
	}
}

func TestCapacity(t *testing.T) {
	cfg := embedded.DefaultConfig()
	cfg.Units = 1
	cfg.Storage.Capacity = 1 << 20
	cfg.Storage.SegmentSize = 1 << 20
	e, err := embedded.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	big := ints(t, "x", make([]int64, 256<<10)) // 2 MiB
	_, err = e.Client.PutNew(ctx, "p", big)
	if !errors.Is(err, engine.ErrCapacity) {
		t.Fatalf("put larger than the unit: got %v, want ErrCapacity", err)
	}
	if parts, _ := e.Client.Partitions(ctx); len(parts) != 1 {
		t.Fatalf("partitions: %v", parts)
	}
	if ff, _ := e.Client.GetMeta(ctx, client.MetaRequest{Partition: "p", Mode: client.ForceFetch}); ff.Len() != 0 {
		t.Fatalf("a failed put left rows: %v", ff.Indexes)
	}
	if n := used(e); n != 0 {
		t.Fatalf("a failed put left %d bytes reserved", n)
	}
}

func TestPutBadInput(t *testing.T) {
	ctx := context.Background()
	e := newEmbedded(t, client.LocalFirst, 1)
	m, err := e.Client.PutNew(ctx, "p", ints(t, "x", []int64{1, 2}))
	if err != nil {
		t.Fatal(err)
	}
	f32, _ := engine.DenseOf([]float32{1, 2})
	for _, tc := range []struct {
		name string
		b    *engine.Batch
		m    *engine.BatchMeta
		want error
	}{
		{"row mismatch", ints(t, "x", []int64{1}), m, engine.ErrInvalid},
		{"no fields", engine.MustBatch(), m, engine.ErrInvalid},
		{"empty meta", ints(t, "x", []int64{1, 2}), &engine.BatchMeta{}, engine.ErrInvalid},
		{"dtype change", engine.MustBatch(engine.Field{Name: "x", Col: f32}), m, engine.ErrDTypeMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := e.Client.Put(ctx, tc.b, tc.m); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := e.Client.GetMeta(ctx, client.MetaRequest{Partition: "p", Mode: client.Insert, BatchSize: 1}); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("insert without fields: %v", err)
	}
	if _, err := client.New(nil, nil, client.DefaultConfig()); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("client without services: %v", err)
	}
}

func TestKeysThroughClient(t *testing.T) {
	ctx := context.Background()
	e := newEmbedded(t, client.LocalFirst, 1)
	m, err := e.Client.MetaByKeys(ctx, "p", []string{"a", "b"}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := e.Client.KeysOf(ctx, "p", m.Indexes)
	if err != nil || !cmp.Equal(keys, []string{"a", "b"}) {
		t.Fatalf("KeysOf = %v, %v", keys, err)
	}
	st, err := e.Client.Stats(ctx, "p")
	if err != nil || st.Keys != 2 {
		t.Fatalf("stats: %+v %v", st, err)
	}
}

// A reader whose meta went stale (rows cleared, memory reused by another
// put) gets ErrLost, never the other put's bytes.
func TestStaleMetaIsLostNotWrong(t *testing.T) {
	ctx := context.Background()
	e := newEmbedded(t, client.LocalFirst, 1)
	c := e.Client
	m, err := c.PutNew(ctx, "p", ints(t, "x", []int64{1, 2, 3, 4}))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Clear(ctx, m); err != nil {
		t.Fatal(err)
	}
	m2, err := c.PutNew(ctx, "q", ints(t, "x", []int64{9, 9, 9, 9}))
	if err != nil {
		t.Fatal(err)
	}
	if m2.Cells["x"][0].Addr.Offset != m.Cells["x"][0].Addr.Offset {
		t.Skip("the second put did not reuse the first put's memory")
	}
	if _, err := c.Get(ctx, m); !errors.Is(err, engine.ErrLost) {
		t.Fatalf("get with a stale meta: got %v, want ErrLost", err)
	}
}

// TestPutAcrossPartitionsNamesWhatItCommitted: a put whose rows span two
// partitions commits them one after the other, in name order; when the
// second fails, the first stays committed and the error says so.
func TestPutAcrossPartitionsNamesWhatItCommitted(t *testing.T) {
	ctx := context.Background()
	c := newEmbedded(t, client.LocalFirst, 1).Client
	insert := func(part string) *engine.BatchMeta {
		m, err := c.GetMeta(ctx, client.MetaRequest{Mode: client.Insert, Partition: part, BatchSize: 2, Fields: []string{"x"}})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	// The partitions' order in the meta is not their name order.
	m, err := engine.ConcatMetas(insert("b"), insert("a"), insert("c"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ClearPartition(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	_, err = c.Put(ctx, ints(t, "x", []int64{1, 2, 3, 4, 5, 6}), m)
	if err == nil || !strings.Contains(err.Error(), `partition "b"`) || !strings.Contains(err.Error(), `the rows of partitions ["a"] before it were committed`) {
		t.Fatalf("put into a cleared partition: %v", err)
	}
	st, err := c.ProductionStatus(ctx, "a", []string{"x"})
	if err != nil || !st.Produced[0][0] {
		t.Errorf("partition a, committed before the failure: %v, %v", st, err)
	}
	// Partition c, after it, was not committed: it has no field x.
	if _, err := c.ProductionStatus(ctx, "c", []string{"x"}); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("partition c, after the failure: %v", err)
	}
}
