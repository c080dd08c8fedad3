package controller

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

func newController(t *testing.T, cfg Config) *Controller {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func seq(lo, hi uint64) []uint64 {
	var out []uint64
	for i := lo; i < hi; i++ {
		out = append(out, i)
	}
	return out
}

// dense commits float32 cells of shape (2) for fields of rows.
func commitDense(t *testing.T, c *Controller, partition string, idx []uint64, fields ...string) []engine.CellLoc {
	t.Helper()
	req := engine.CommitRequest{Partition: partition, Indexes: idx}
	for _, f := range fields {
		req.Fields = append(req.Fields, engine.CommitField{Name: f, DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}})
	}
	rep, err := c.Commit(req)
	if err != nil {
		t.Fatalf("commit %v of %q: %v", fields, partition, err)
	}
	return rep
}

func insert(t *testing.T, c *Controller, partition string, n int, fields ...string) *engine.BatchMeta {
	t.Helper()
	m, err := c.Insert(partition, n, fields)
	if err != nil {
		t.Fatalf("insert %d into %q: %v", n, partition, err)
	}
	return m
}

func fetch(t *testing.T, c *Controller, partition, task string, n int, fields ...string) *engine.BatchMeta {
	t.Helper()
	m, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: partition, Task: task, Fields: fields, BatchSize: n})
	if err != nil {
		t.Fatalf("fetch %d for %q: %v", n, task, err)
	}
	return m
}

func TestSinglePartitionLifecycle(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "train_0", 32, "prompt", "response")
	if diff := cmp.Diff(seq(0, 32), m.Indexes); diff != "" {
		t.Fatalf("insert indexes (-want +got):\n%s", diff)
	}
	if m.IsReady() || slices.Contains(m.Ready, true) {
		t.Fatalf("freshly inserted rows are ready: %v", m.Ready)
	}
	if got := m.FieldNames(); !slices.Equal(got, []string{"prompt", "response"}) {
		t.Fatalf("insert meta fields = %v, want placeholders for prompt, response", got)
	}

	if got := fetch(t, c, "train_0", "gen", 32, "prompt", "response"); got.Len() != 0 {
		t.Fatalf("fetch before production returned %d rows, want 0", got.Len())
	}
	commitDense(t, c, "train_0", m.Indexes, "prompt", "response")
	if !c.CheckProduction("train_0", []string{"prompt", "response"}) {
		t.Fatal("CheckProduction = false after commit")
	}
	if c.CheckConsumption("train_0", "gen") {
		t.Fatal("CheckConsumption = true before any fetch")
	}
	got := fetch(t, c, "train_0", "gen", 32, "prompt", "response")
	if diff := cmp.Diff(seq(0, 32), got.Indexes); diff != "" {
		t.Fatalf("fetch indexes (-want +got):\n%s", diff)
	}
	if !got.IsReady() {
		t.Fatal("fetched meta is not ready")
	}
	if !c.CheckConsumption("train_0", "gen") {
		t.Fatal("CheckConsumption = false after fetching every row")
	}
	if again := fetch(t, c, "train_0", "gen", 1, "prompt"); again.Len() != 0 {
		t.Fatalf("second fetch returned %d consumed rows", again.Len())
	}

	ff, err := c.ForceFetch("train_0", []string{"response"})
	if err != nil {
		t.Fatal(err)
	}
	if ff.Len() != 32 || !ff.IsReady() || !slices.Equal(ff.FieldNames(), []string{"response"}) {
		t.Fatalf("force fetch: %d rows, ready %v, fields %v", ff.Len(), ff.IsReady(), ff.FieldNames())
	}

	if _, err := c.ClearPartition("train_0"); err != nil {
		t.Fatal(err)
	}
	if got := c.Partitions(); len(got) != 0 {
		t.Fatalf("partitions after clear = %v", got)
	}
	if _, err := c.ForceFetch("train_0", nil); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("force fetch of a cleared partition: got %v, want ErrNotFound", err)
	}
	if _, err := c.ClearPartition("train_0"); err != nil {
		t.Fatalf("second clear: %v", err)
	}
}

func TestResetConsumption(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 4, "a")
	commitDense(t, c, "p", m.Indexes, "a")
	fetch(t, c, "p", "t1", 4, "a")
	fetch(t, c, "p", "t2", 4, "a")
	if err := c.ResetConsumption("p", "t1"); err != nil {
		t.Fatal(err)
	}
	st, _ := c.ConsumptionStatus("p", "t1")
	if slices.Contains(st.Consumed, true) {
		t.Fatalf("t1 after reset: %v", st.Consumed)
	}
	st, _ = c.ConsumptionStatus("p", "t2")
	if slices.Contains(st.Consumed, false) {
		t.Fatalf("t2 after resetting t1: %v", st.Consumed)
	}
	if got := fetch(t, c, "p", "t1", 4, "a"); got.Len() != 4 {
		t.Fatalf("t1 refetch after reset: %d rows, want 4", got.Len())
	}
	if err := c.ResetConsumption("p", ""); err != nil {
		t.Fatal(err)
	}
	for _, task := range []string{"t1", "t2"} {
		if c.CheckConsumption("p", task) {
			t.Fatalf("%s still consumed after reset of all tasks", task)
		}
	}
	if err := c.ResetConsumption("nope", ""); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("reset of unknown partition: got %v, want ErrNotFound", err)
	}
}

func TestIndexReuseAcrossPartitions(t *testing.T) {
	c := newController(t, DefaultConfig())
	a := insert(t, c, "train_0", 32, "x")
	b := insert(t, c, "val_0", 16, "x")
	if diff := cmp.Diff(seq(32, 48), b.Indexes); diff != "" {
		t.Fatalf("val_0 indexes (-want +got):\n%s", diff)
	}
	commitDense(t, c, "train_0", a.Indexes, "x")
	commitDense(t, c, "val_0", b.Indexes, "x")
	if _, err := c.ClearPartition("train_0"); err != nil {
		t.Fatal(err)
	}
	if !c.CheckProduction("val_0", []string{"x"}) {
		t.Fatal("clearing train_0 changed val_0")
	}
	m := insert(t, c, "train_1", 64, "x")
	want := append(seq(0, 32), seq(48, 80)...)
	if diff := cmp.Diff(want, m.Indexes); diff != "" {
		t.Fatalf("train_1 indexes (-want +got):\n%s", diff)
	}
	// A cleared partition's reused index must not look produced in its new home.
	if c.CheckProduction("train_1", []string{"x"}) {
		t.Fatal("reused rows inherited production from the cleared partition")
	}
	if got := c.Partitions(); !slices.Equal(got, []string{"train_1", "val_0"}) {
		t.Fatalf("partitions = %v", got)
	}
}

func TestClearRows(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 8, "a")
	commitDense(t, c, "p", m.Indexes, "a")
	if _, err := c.ClearRows("p", []uint64{0, 1, 2, 3, 6}); err != nil {
		t.Fatal(err)
	}
	ff, _ := c.ForceFetch("p", nil)
	if diff := cmp.Diff([]uint64{4, 5, 7}, ff.Indexes); diff != "" {
		t.Fatalf("rows after clear (-want +got):\n%s", diff)
	}
	// Idempotent: unknown rows, unknown partition, repeats.
	for _, tc := range []struct {
		part string
		idx  []uint64
	}{{"p", []uint64{0, 1}}, {"p", []uint64{99}}, {"nope", []uint64{4}}} {
		if _, err := c.ClearRows(tc.part, tc.idx); err != nil {
			t.Fatalf("clear %v of %q: %v", tc.idx, tc.part, err)
		}
	}
	ff, _ = c.ForceFetch("p", nil)
	if ff.Len() != 3 {
		t.Fatalf("idempotent clears removed rows: %v", ff.Indexes)
	}
}

func TestTagsMerge(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 3, "a")
	if err := c.SetTags("p", []uint64{0, 2}, []engine.Tags{{"status": "running", "step": 1}, {"step": 2}}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetTags("p", []uint64{0}, []engine.Tags{{"step": 3}}); err != nil {
		t.Fatal(err)
	}
	got, _ := c.RowsMeta("p", m.Indexes, nil)
	want := []engine.Tags{{"status": "running", "step": 3}, nil, {"step": 2}}
	if diff := cmp.Diff(want, got.Tags); diff != "" {
		t.Fatalf("tags (-want +got):\n%s", diff)
	}
	if err := c.SetTags("p", []uint64{0, 1}, []engine.Tags{{}}); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("tag count mismatch: got %v, want ErrInvalid", err)
	}
	if err := c.SetTags("p", []uint64{42}, []engine.Tags{{"a": 1}}); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("tags for unknown row: got %v, want ErrNotFound", err)
	}
	// Tags are copies: changing the returned map does not change the controller.
	got.Tags[0]["status"] = "mutated"
	again, _ := c.RowsMeta("p", []uint64{0}, nil)
	if again.Tags[0]["status"] != "running" {
		t.Fatal("returned tags alias controller state")
	}
}

func TestResolveKeys(t *testing.T) {
	c := newController(t, DefaultConfig())
	m, err := c.ResolveKeys("p", []string{"a", "b", "c"}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]uint64{0, 1, 2}, m.Indexes); diff != "" {
		t.Fatalf("created indexes (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"a", "b", "c"}, m.Keys); diff != "" {
		t.Fatalf("keys (-want +got):\n%s", diff)
	}
	again, err := c.ResolveKeys("p", []string{"c", "a"}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]uint64{2, 0}, again.Indexes); diff != "" {
		t.Fatalf("existing keys map to other rows (-want +got):\n%s", diff)
	}
	// Mixed: new keys get rows, old keys keep theirs.
	mixed, _ := c.ResolveKeys("p", []string{"b", "d"}, nil, true)
	if diff := cmp.Diff([]uint64{1, 3}, mixed.Indexes); diff != "" {
		t.Fatalf("mixed create (-want +got):\n%s", diff)
	}

	for _, tc := range []struct {
		name string
		part string
		keys []string
		want error
	}{
		{"unknown key names it", "p", []string{"a", "zz"}, engine.ErrNotFound},
		{"unknown partition", "q", []string{"a"}, engine.ErrNotFound},
		{"empty list", "p", nil, engine.ErrInvalid},
		{"duplicate keys", "p", []string{"a", "a"}, engine.ErrInvalid},
		{"empty key", "p", []string{""}, engine.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.ResolveKeys(tc.part, tc.keys, nil, false)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := c.ResolveKeys("p", []string{"a", "a"}, nil, true); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("duplicate keys with create: got %v", err)
	}
	ff, _ := c.ForceFetch("p", nil)
	if ff.Len() != 4 {
		t.Fatalf("failed resolves created rows: %v", ff.Indexes)
	}
}

func TestResolveKeysFields(t *testing.T) {
	c := newController(t, DefaultConfig())
	m, _ := c.ResolveKeys("p", []string{"k1", "k2"}, nil, true)
	commitDense(t, c, "p", m.Indexes, "input_ids")
	commitDense(t, c, "p", m.Indexes[:1], "reward")
	got, err := c.ResolveKeys("p", []string{"k1", "k2"}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.FieldNames(), []string{"input_ids"}) || !got.IsReady() {
		t.Fatalf("intersection fields %v ready %v, want [input_ids] ready", got.FieldNames(), got.IsReady())
	}
	one, _ := c.ResolveKeys("p", []string{"k1"}, nil, false)
	if !slices.Equal(one.FieldNames(), []string{"input_ids", "reward"}) {
		t.Fatalf("k1 fields = %v", one.FieldNames())
	}
	sel, err := c.ResolveKeys("p", []string{"k1", "k2"}, []string{"reward"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]bool{true, false}, sel.Ready); diff != "" {
		t.Fatalf("ready with selected field (-want +got):\n%s", diff)
	}
	if _, err := c.ResolveKeys("p", []string{"k1"}, []string{"nope"}, false); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("unknown selected field: got %v, want ErrNotFound", err)
	}
}

func TestKeysAcrossPartitions(t *testing.T) {
	c := newController(t, DefaultConfig())
	a, _ := c.ResolveKeys("train", []string{"k"}, nil, true)
	b, _ := c.ResolveKeys("val", []string{"k"}, nil, true)
	if a.Indexes[0] != 0 || b.Indexes[0] != 1 {
		t.Fatalf("same key in two partitions: rows %d and %d, want 0 and 1 (shared index space)", a.Indexes[0], b.Indexes[0])
	}
	keys, err := c.KeysOf("val", []uint64{1, 0, 7})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"k", "", ""}, keys); diff != "" {
		t.Fatalf("KeysOf (-want +got):\n%s", diff)
	}
	if _, err := c.KeysOf("val", nil); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("KeysOf empty: got %v", err)
	}
	if _, err := c.KeysOf("nope", []uint64{0}); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("KeysOf unknown partition: got %v", err)
	}
	if _, err := c.ClearKeys("train", []string{"k", "unknown"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ResolveKeys("val", []string{"k"}, nil, false); err != nil {
		t.Fatalf("clearing train's key touched val's: %v", err)
	}
	if _, err := c.ResolveKeys("train", []string{"k"}, nil, false); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("cleared key still resolves: %v", err)
	}
}

func TestListKeys(t *testing.T) {
	c := newController(t, DefaultConfig())
	m, _ := c.ResolveKeys("p", []string{"z", "a", "m"}, nil, true)
	c.SetTags("p", m.Indexes, []engine.Tags{{"i": 0}, {"i": 1}, {"i": 2}})
	c.ResolveKeys("q", []string{"a"}, nil, true)
	got := c.ListKeys("p")
	var keys []string
	for _, k := range got["p"] {
		keys = append(keys, k.Key)
	}
	if diff := cmp.Diff([]string{"z", "a", "m"}, keys); diff != "" {
		t.Fatalf("keys in creation order (-want +got):\n%s", diff)
	}
	if got["p"][1].Tags["i"] != 1 {
		t.Fatalf("tags of a = %v", got["p"][1].Tags)
	}
	all := c.ListKeys("")
	if len(all) != 2 || len(all["q"]) != 1 {
		t.Fatalf("all partitions: %v", all)
	}
	if got := c.ListKeys("unknown"); len(got) != 0 {
		t.Fatalf("unknown partition listed %v", got)
	}
}

func TestFieldSchema(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 4, "x")
	idx := m.Indexes
	mustCommit := func(req engine.CommitRequest) {
		t.Helper()
		if _, err := c.Commit(req); err != nil {
			t.Fatal(err)
		}
	}
	mustCommit(engine.CommitRequest{Partition: "p", Indexes: idx[:2], Fields: []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2, 4}}}})
	mustCommit(engine.CommitRequest{Partition: "p", Indexes: idx[2:], Fields: []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2, 6}}}})
	ff, _ := c.ForceFetch("p", []string{"x"})
	s := ff.Schema["x"]
	if s.Kind != engine.Ragged {
		t.Fatalf("shape change: kind %v, want ragged", s.Kind)
	}
	want := []engine.Shape{{2, 4}, {2, 4}, {2, 6}, {2, 6}}
	if diff := cmp.Diff(want, s.Shapes); diff != "" {
		t.Fatalf("per-row shapes (-want +got):\n%s", diff)
	}
	// A batch whose rows agree gets a dense schema even though the field is ragged.
	sub, _ := c.RowsMeta("p", idx[2:], []string{"x"})
	if sub.Schema["x"].Kind != engine.Dense || !sub.Schema["x"].Shape.Equal(engine.Shape{2, 6}) {
		t.Fatalf("uniform sub-batch schema = %+v", sub.Schema["x"])
	}
	// Clearing the odd rows makes the field dense again.
	c.ClearRows("p", idx[:2])
	st, _ := c.Stats("p")
	if st.Fields[0].Kind != engine.Dense || !st.Fields[0].Shape.Equal(engine.Shape{2, 6}) {
		t.Fatalf("after clearing the (2,4) rows: %+v, want dense (2,6)", st.Fields[0])
	}

	// Dtype conflict: rejected, and the commit's other field is not applied either.
	_, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: idx[2:], Fields: []engine.CommitField{
		{Name: "y", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{}},
		{Name: "x", DType: engine.Float64, Kind: engine.Dense, Shape: engine.Shape{2, 6}},
	}})
	if !errors.Is(err, engine.ErrDTypeMismatch) {
		t.Fatalf("dtype conflict: got %v, want ErrDTypeMismatch", err)
	}
	if _, err := c.ProductionStatus("p", []string{"y"}); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("rejected commit registered field y: %v", err)
	}

	// Opaque fields.
	mustCommit(engine.CommitRequest{Partition: "p", Indexes: idx[2:], Fields: []engine.CommitField{{Name: "text", DType: engine.Bytes, Kind: engine.Opaque}}})
	ff, _ = c.RowsMeta("p", idx[2:], []string{"text"})
	if ff.Schema["text"].Kind != engine.Opaque || !ff.IsReady() {
		t.Fatalf("opaque schema %+v ready %v", ff.Schema["text"], ff.IsReady())
	}
	// Empty commit is a no-op.
	mustCommit(engine.CommitRequest{Partition: "p"})
}

func TestCommitReplacesAndClearFrees(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 2, "x")
	loc := func(u engine.UnitID, off uint64) engine.CellLoc {
		return engine.CellLoc{Unit: u, Addr: engine.RemoteAddr{Segment: 1, Offset: off, Len: 8}}
	}
	first := []engine.CellLoc{loc(1, 0), loc(1, 8)}
	rep, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}, Locs: first}}})
	if err != nil || len(rep) != 0 {
		t.Fatalf("first commit replaced %v (err %v)", rep, err)
	}
	second := []engine.CellLoc{loc(2, 0)}
	rep, err = c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes[1:], Fields: []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}, Locs: second}}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(first[1:], rep); diff != "" {
		t.Fatalf("replaced (-want +got):\n%s", diff)
	}
	got, _ := c.RowsMeta("p", m.Indexes, []string{"x"})
	if diff := cmp.Diff([]engine.CellLoc{first[0], second[0]}, got.Cells["x"]); diff != "" {
		t.Fatalf("cells (-want +got):\n%s", diff)
	}
	freed, _ := c.ClearPartition("p")
	if diff := cmp.Diff([]engine.CellLoc{first[0], second[0]}, freed); diff != "" {
		t.Fatalf("freed (-want +got):\n%s", diff)
	}
}

func TestPreAllocation(t *testing.T) {
	c := newController(t, Config{PreAlloc: 8})
	if _, err := c.CreatePartition("p"); err != nil {
		t.Fatal(err)
	}
	st, _ := c.ConsumptionStatus("p", "train")
	if diff := cmp.Diff(seq(0, 8), st.Indexes); diff != "" {
		t.Fatalf("reserved rows in consumption status (-want +got):\n%s", diff)
	}
	m := insert(t, c, "p", 3, "x")
	if diff := cmp.Diff(seq(0, 3), m.Indexes); diff != "" {
		t.Fatalf("insert takes the lowest reserved rows (-want +got):\n%s", diff)
	}
	commitDense(t, c, "p", m.Indexes, "x")
	if got := fetch(t, c, "p", "train", 4, "x"); got.Len() != 0 {
		t.Fatalf("reserved, unproduced rows were fetched: %v", got.Indexes)
	}
	big := insert(t, c, "p", 7, "x") // 5 reserved left, then 2 new
	if diff := cmp.Diff([]uint64{3, 4, 5, 6, 7, 8, 9}, big.Indexes); diff != "" {
		t.Fatalf("mixed activation (-want +got):\n%s", diff)
	}
	fetch(t, c, "p", "train", 3, "x")
	if c.CheckConsumption("p", "train") {
		t.Fatal("all consumed although 7 rows are unconsumed")
	}
	if created, _ := c.CreatePartition("p"); created {
		t.Fatal("CreatePartition of an existing partition reported created")
	}
}

func TestBadInput(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 2, "x")
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		run  func() error
		want error
	}{
		{"fetch batch 0", func() error {
			_, err := c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}})
			return err
		}, engine.ErrInvalid},
		{"fetch negative batch", func() error {
			_, err := c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: -1})
			return err
		}, engine.ErrInvalid},
		{"fetch without task", func() error {
			_, err := c.Fetch(ctx, engine.FetchRequest{Partition: "p", Fields: []string{"x"}, BatchSize: 1})
			return err
		}, engine.ErrInvalid},
		{"fetch without fields", func() error {
			_, err := c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", BatchSize: 1})
			return err
		}, engine.ErrInvalid},
		{"insert zero", func() error { _, err := c.Insert("p", 0, nil); return err }, engine.ErrInvalid},
		{"insert empty partition id", func() error { _, err := c.Insert("", 1, nil); return err }, engine.ErrInvalid},
		{"commit unknown partition", func() error {
			_, err := c.Commit(engine.CommitRequest{Partition: "q", Indexes: []uint64{0}})
			return err
		}, engine.ErrNotFound},
		{"commit unknown rows", func() error {
			_, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: []uint64{0, 77}, Fields: []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense}}})
			return err
		}, engine.ErrNotFound},
		{"commit repeated row", func() error {
			_, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: []uint64{0, 0}})
			return err
		}, engine.ErrInvalid},
		{"commit ragged shape count", func() error {
			_, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: []engine.CommitField{{Name: "r", DType: engine.Int64, Kind: engine.Ragged, Shapes: []engine.Shape{{1}}}}})
			return err
		}, engine.ErrInvalid},
		{"commit bad dtype", func() error {
			_, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: []engine.CommitField{{Name: "r", Kind: engine.Dense}}})
			return err
		}, engine.ErrInvalid},
		{"commit opaque with float dtype", func() error {
			_, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: []engine.CommitField{{Name: "r", DType: engine.Float32, Kind: engine.Opaque}}})
			return err
		}, engine.ErrInvalid},
		{"commit location count", func() error {
			_, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: []engine.CommitField{{Name: "r", DType: engine.Float32, Kind: engine.Dense, Locs: make([]engine.CellLoc, 1)}}})
			return err
		}, engine.ErrInvalid},
		{"production status unknown field", func() error { _, err := c.ProductionStatus("p", []string{"nope"}); return err }, engine.ErrNotFound},
		{"consumption status without task", func() error { _, err := c.ConsumptionStatus("p", ""); return err }, engine.ErrInvalid},
		{"stats unknown partition", func() error { _, err := c.Stats("nope"); return err }, engine.ErrNotFound},
		{"negative pre-allocation", func() error { _, err := New(Config{PreAlloc: -1}); return err }, engine.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	ff, _ := c.ForceFetch("p", nil)
	if ff.Len() != 2 || len(ff.Schema) != 0 {
		t.Fatalf("bad input changed the partition: %d rows, fields %v", ff.Len(), ff.FieldNames())
	}
}

func TestOpErrorNamesPartition(t *testing.T) {
	c := newController(t, DefaultConfig())
	_, err := c.ForceFetch("missing", nil)
	var oe *engine.OpError
	if !errors.As(err, &oe) || oe.Op != "force fetch" || oe.Peer != "missing" {
		t.Fatalf("got %#v, want an OpError for force fetch on missing", err)
	}
}

func TestConsumptionPerTask(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 6, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	a := fetch(t, c, "p", "log_prob", 4, "x")
	b := fetch(t, c, "p", "reward", 6, "x")
	if a.Len() != 4 || b.Len() != 6 {
		t.Fatalf("independent tasks got %d and %d rows", a.Len(), b.Len())
	}
	rest := fetch(t, c, "p", "log_prob", 2, "x")
	if diff := cmp.Diff([]uint64{4, 5}, rest.Indexes); diff != "" {
		t.Fatalf("rest for log_prob (-want +got):\n%s", diff)
	}
}

func TestReadinessPerField(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 4, "prompt", "response")
	commitDense(t, c, "p", m.Indexes, "prompt")
	commitDense(t, c, "p", m.Indexes[:2], "response")
	if got := fetch(t, c, "p", "t", 3, "prompt", "response"); got.Len() != 0 {
		t.Fatalf("fetched %v with only 2 rows ready", got.Indexes)
	}
	got := fetch(t, c, "p", "t", 2, "prompt", "response")
	if diff := cmp.Diff([]uint64{0, 1}, got.Indexes); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	if p := fetch(t, c, "p", "t2", 4, "prompt"); p.Len() != 4 {
		t.Fatalf("prompt-only fetch got %d rows", p.Len())
	}
	st, _ := c.ProductionStatus("p", []string{"prompt", "response"})
	want := [][]bool{{true, true}, {true, true}, {true, false}, {true, false}}
	if diff := cmp.Diff(want, st.Produced); diff != "" {
		t.Fatalf("production matrix (-want +got):\n%s", diff)
	}
}

func TestBlockingFetch(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 4, "x")
	type result struct {
		m   *engine.BatchMeta
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		got, err := c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Wait: true})
		done <- result{got, err}
	}()
	commitDense(t, c, "p", m.Indexes[:2], "x")
	select {
	case r := <-done:
		t.Fatalf("fetch returned with 2 of 4 rows ready: %v %v", r.m, r.err)
	case <-time.After(50 * time.Millisecond):
	}
	commitDense(t, c, "p", m.Indexes[2:], "x")
	r := <-done
	if r.err != nil || r.m.Len() != 4 {
		t.Fatalf("woken fetch: %v rows, err %v", r.m.Len(), r.err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Wait: true})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("fetch past deadline: got %v, want DeadlineExceeded", err)
	}
}

func TestBlockingFetchWaitsForPartition(t *testing.T) {
	c := newController(t, DefaultConfig())
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		m, err := c.Fetch(ctx, engine.FetchRequest{Partition: "later", Task: "t", Fields: []string{"x"}, BatchSize: 2, Wait: true})
		if err == nil && m.Len() != 2 {
			err = fmt.Errorf("got %d rows", m.Len())
		}
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	m := insert(t, c, "later", 2, "x")
	commitDense(t, c, "later", m.Indexes, "x")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestCloseWakesFetch(t *testing.T) {
	c := newController(t, DefaultConfig())
	insert(t, c, "p", 1, "x")
	done := make(chan error, 1)
	go func() {
		_, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Wait: true})
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	if err := <-done; !errors.Is(err, engine.ErrClosed) {
		t.Fatalf("got %v, want ErrClosed", err)
	}
	c.Close() // idempotent
}

func TestClearWakesAndFetchSurvives(t *testing.T) {
	c := newController(t, DefaultConfig())
	insert(t, c, "p", 1, "x")
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		m, err := c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Wait: true})
		if err == nil && m.Len() != 1 {
			err = fmt.Errorf("got %d rows", m.Len())
		}
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	c.ClearPartition("p")
	m := insert(t, c, "p", 1, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// reverseSampler is a user sampler: the last BatchSize ready rows, newest
// first, consuming nothing.
type reverseSampler struct{}

func (reverseSampler) Sample(req engine.SampleRequest) ([]uint64, []uint64, error) {
	var all []uint64
	req.Ready.Ascend(func(i uint64) bool { all = append(all, i); return true })
	slices.Reverse(all)
	return all[:req.BatchSize], nil, nil
}

func TestCustomSampler(t *testing.T) {
	c := newController(t, Config{Sampler: reverseSampler{}})
	m := insert(t, c, "p", 5, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	for range 2 {
		got := fetch(t, c, "p", "t", 2, "x")
		if diff := cmp.Diff([]uint64{4, 3}, got.Indexes); diff != "" {
			t.Fatalf("custom sampler (-want +got):\n%s", diff)
		}
	}
}

type badSampler struct{}

func (badSampler) Sample(req engine.SampleRequest) ([]uint64, []uint64, error) {
	return []uint64{999}, nil, nil
}

func TestSamplerReturningUnknownRow(t *testing.T) {
	c := newController(t, Config{Sampler: badSampler{}})
	m := insert(t, c, "p", 1, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	_, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1})
	if !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("got %v, want ErrInvalid", err)
	}
}

func TestStats(t *testing.T) {
	c := newController(t, Config{PreAlloc: 2})
	m := insert(t, c, "p", 4, "x")
	commitDense(t, c, "p", m.Indexes[:3], "x")
	c.ResolveKeys("p", []string{"k"}, nil, true)
	fetch(t, c, "p", "t", 2, "x")
	st, err := c.Stats("p")
	if err != nil {
		t.Fatal(err)
	}
	if st.Rows != 5 || st.Reserved != 0 || st.Produced != 3 || st.Keys != 1 {
		t.Fatalf("stats: %+v", st)
	}
	if len(st.Tasks) != 1 || st.Tasks[0].Consumed != 2 {
		t.Fatalf("task stats: %+v", st.Tasks)
	}
	if len(st.Fields) != 1 || st.Fields[0].Produced != 3 || st.Fields[0].DType != engine.Float32 {
		t.Fatalf("field stats: %+v", st.Fields)
	}
}

func TestConcurrentPartitions(t *testing.T) {
	c := newController(t, DefaultConfig())
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			part := fmt.Sprintf("p%d", w%4)
			for i := range 50 {
				m, err := c.Insert(part, 4, []string{"x"})
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := c.Commit(engine.CommitRequest{Partition: part, Indexes: m.Indexes, Fields: []engine.CommitField{{Name: "x", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{1}}}}); err != nil {
					t.Error(err)
					return
				}
				got, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: part, Task: "t", Fields: []string{"x"}, BatchSize: 2})
				if err != nil {
					t.Error(err)
					return
				}
				if i%10 == 0 {
					c.ClearRows(part, got.Indexes)
				}
			}
		})
	}
	wg.Wait()
	seen := map[uint64]string{}
	for _, p := range c.Partitions() {
		ff, _ := c.ForceFetch(p, nil)
		for _, gi := range ff.Indexes {
			if other, dup := seen[gi]; dup {
				t.Fatalf("row %d in %q and %q", gi, other, p)
			}
			seen[gi] = p
		}
	}
}

// registerUnits registers n units (incarnations base+1..base+n) with a
// fresh c: ids 1..n.
func registerUnits(t *testing.T, c *Controller, n int, base uint64) {
	t.Helper()
	for i := range n {
		if _, err := c.units.Register(engine.UnitInfo{Incarnation: base + uint64(i+1), Host: "h"}, true); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCheckpointRoundTrip(t *testing.T) {
	c := newController(t, Config{PreAlloc: 2})
	registerUnits(t, c, 3, 0)
	m := insert(t, c, "train", 6, "x")
	loc := engine.CellLoc{Unit: 3, Addr: engine.RemoteAddr{Segment: 2, Offset: 4096, Len: 8}}
	if _, err := c.Commit(engine.CommitRequest{Partition: "train", Indexes: m.Indexes[:4], Fields: []engine.CommitField{
		{Name: "x", DType: engine.Float32, Kind: engine.Ragged, Shapes: []engine.Shape{{1}, {2}, {2}, {3}}},
		{Name: "s", DType: engine.Bytes, Kind: engine.Opaque, Locs: []engine.CellLoc{loc, loc, loc, loc}},
	}}); err != nil {
		t.Fatal(err)
	}
	keys, _ := c.ResolveKeys("val", []string{"a", "b"}, nil, true)
	c.SetTags("val", keys.Indexes, []engine.Tags{{"status": "running", "global_steps": 1}, {"n": []any{1, "x"}}})
	fetch(t, c, "train", "t", 2, "x")
	c.ClearRows("train", m.Indexes[5:])

	dir := filepath.Join(t.TempDir(), "ck")
	if err := c.Save(dir); err != nil {
		t.Fatal(err)
	}
	if err := c.Save(dir); err != nil { // overwrite an existing checkpoint
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Dir(dir))
	if len(entries) != 1 {
		t.Fatalf("checkpoint left %d entries beside it, want only ck", len(entries))
	}
	want := map[string]*engine.BatchMeta{}
	wantConsumed := map[string]engine.ConsumptionStatus{}
	for _, part := range []string{"train", "val"} {
		want[part], _ = c.ForceFetch(part, nil)
		wantConsumed[part], _ = c.ConsumptionStatus(part, "t")
	}
	nextA, _ := c.Insert("new", 3, nil)

	// The same controller, changed since, goes back to what it saved: its
	// units are the same, so the cells keep their locations.
	insert(t, c, "junk", 3, "y")
	c.ClearPartition("val")
	freed, err := c.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range freed {
		if l.Stored() {
			t.Fatalf("load frees %+v, a cell the loaded state references", l)
		}
	}
	if got := c.Partitions(); !slices.Equal(got, []string{"train", "val"}) {
		t.Fatalf("partitions after load = %v", got)
	}
	for _, part := range []string{"train", "val"} {
		got, _ := c.ForceFetch(part, nil)
		if diff := cmp.Diff(want[part], got); diff != "" {
			t.Fatalf("partition %q after load (-want +got):\n%s", part, diff)
		}
		gs, _ := c.ConsumptionStatus(part, "t")
		if diff := cmp.Diff(wantConsumed[part], gs); diff != "" {
			t.Fatalf("consumption of %q (-want +got):\n%s", part, diff)
		}
	}
	// The index allocator came along: new rows reuse the cleared index
	// first, then continue, as they did right after the save.
	nextB, _ := c.Insert("new", 3, nil)
	if diff := cmp.Diff(nextA.Indexes, nextB.Indexes); diff != "" {
		t.Fatalf("allocation after load differs (-orig +loaded):\n%s", diff)
	}
	if got := fetch(t, c, "train", "t", 2, "x"); got.Len() != 2 {
		t.Fatalf("fetch after load: %d rows", got.Len())
	}

	// A fresh controller does not know those units: the metadata comes
	// back, every stored cell is lost (never another unit's bytes).
	d := newController(t, Config{PreAlloc: 2})
	registerUnits(t, d, 3, 100) // ids 1..3 again, but other incarnations
	if _, err := d.Load(dir); err != nil {
		t.Fatal(err)
	}
	got, _ := d.ForceFetch("train", nil)
	for _, l := range got.Cells["s"][:4] {
		if !l.Lost() {
			t.Fatalf("a cell of another incarnation's unit kept its location %+v", l)
		}
	}
	if !slices.Equal(got.Indexes, want["train"].Indexes) || !got.Ready[0] {
		t.Fatalf("rows after load into a fresh controller = %v ready %v", got.Indexes, got.Ready)
	}
}

// writeStateFile writes a state file of head and parts (each a
// StatePartition and its rows), with a correct trailer unless trailer is
// given.
func writeStateFile(t *testing.T, path string, head *wirepb.StateHeader, parts []*wirepb.StatePartition, rows [][]*wirepb.StateRow, trailer *wirepb.StateTrailer) {
	t.Helper()
	var buf bytes.Buffer
	sw := &stateWriter{w: bufio.NewWriter(&buf)}
	if head.Partitions == 0 {
		head.Partitions = uint64(len(parts))
	}
	var n struct{ rows, cells uint64 }
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(sw.put(head))
	for i, sp := range parts {
		var rs []*wirepb.StateRow
		if i < len(rows) {
			rs = rows[i]
		}
		if sp.Rows == 0 {
			sp.Rows = uint64(len(rs))
		}
		must(sw.put(sp))
		if len(rs) > 0 {
			must(sw.put(&wirepb.StateRows{Rows: rs}))
		}
		for _, r := range rs {
			n.rows++
			n.cells += uint64(len(r.Cells))
		}
	}
	if trailer == nil {
		trailer = &wirepb.StateTrailer{Partitions: uint64(len(parts)), Rows: n.rows, Cells: n.cells, Crc32C: sw.crc}
	}
	must(sw.put(trailer))
	must(sw.w.Flush())
	must(os.WriteFile(path, buf.Bytes(), 0o600))
}

func TestCheckpointLoadErrors(t *testing.T) {
	c := newController(t, DefaultConfig())
	insert(t, c, "keep", 2, "x")
	if _, err := c.Load(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("load of missing dir: got %v, want ErrNotExist", err)
	}
	head := func() *wirepb.StateHeader {
		return &wirepb.StateHeader{Format: stateFormat, Version: stateVersion, NextIndex: 9, NextGen: 5, NextUnitId: 1}
	}
	part := func(id string) *wirepb.StatePartition { return &wirepb.StatePartition{Partition: id, Gen: 1} }
	dense := &wirepb.StateField{Name: "x", Dtype: "float32"}
	cellOf := func(field uint32) *wirepb.StateCell {
		return &wirepb.StateCell{Field: field, Unit: 1, Len: 4, Shape: &wirepb.Shape{}}
	}
	type spec struct {
		head    *wirepb.StateHeader
		parts   []*wirepb.StatePartition
		rows    [][]*wirepb.StateRow
		trailer *wirepb.StateTrailer
		raw     []byte
	}
	for _, tc := range []struct {
		name string
		s    spec
	}{
		{"not a state file", spec{raw: []byte("{")}},
		{"truncated", spec{raw: []byte{0x80}}},
		{"wrong format", spec{head: &wirepb.StateHeader{Format: "x", Version: 1}}},
		{"future version", spec{head: &wirepb.StateHeader{Format: stateFormat, Version: 99}}},
		{"row beyond next", spec{head: head(), parts: []*wirepb.StatePartition{part("p")}, rows: [][]*wirepb.StateRow{{{Index: 9}}}}},
		{"next beyond 2^32", spec{head: &wirepb.StateHeader{Format: stateFormat, Version: stateVersion, NextIndex: 1 << 40}}},
		{"row in two partitions", spec{head: head(), parts: []*wirepb.StatePartition{part("p"), part("q")}, rows: [][]*wirepb.StateRow{{{Index: 5}}, {{Index: 5}}}}},
		{"reusable in use", spec{head: func() *wirepb.StateHeader { h := head(); h.Reusable = []uint64{5}; return h }(), parts: []*wirepb.StatePartition{part("p")}, rows: [][]*wirepb.StateRow{{{Index: 5}}}}},
		{"cell of unknown field", spec{head: head(), parts: []*wirepb.StatePartition{part("p")}, rows: [][]*wirepb.StateRow{{{Index: 5, Cells: []*wirepb.StateCell{cellOf(3)}}}}}},
		{"bad dtype", spec{head: head(), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1, Fields: []*wirepb.StateField{{Name: "x", Dtype: "float99"}}}}}},
		{"dense cell without a shape", spec{head: head(), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1, Fields: []*wirepb.StateField{dense}}},
			rows: [][]*wirepb.StateRow{{{Index: 5, Cells: []*wirepb.StateCell{{Field: 0, Unit: 1, Len: 4}}}}}}},
		{"partition gen beyond next", spec{head: head(), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 9}}}},
		{"sampler state for a stateless sampler", spec{head: func() *wirepb.StateHeader { h := head(); h.Sampler = []byte(`{"x":1}`); return h }()}},
		{"bad checksum", spec{head: head(), trailer: &wirepb.StateTrailer{Crc32C: 1}}},
		{"trailer counts more rows", spec{head: head(), parts: []*wirepb.StatePartition{part("p")}, rows: [][]*wirepb.StateRow{{{Index: 5}}},
			trailer: &wirepb.StateTrailer{Partitions: 1, Rows: 2}}},
		{"row made after the partition's last", spec{head: head(), parts: []*wirepb.StatePartition{part("p")},
			rows: [][]*wirepb.StateRow{{{Index: 5, Made: 1, InsertLen: 1}}}}},
		{"place past its insert", spec{head: head(), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1, Made: 3}},
			rows: [][]*wirepb.StateRow{{{Index: 5, Made: 2, InsertPos: 2, InsertLen: 2}}}}},
		{"place without a creation number", spec{head: head(), parts: []*wirepb.StatePartition{part("p")},
			rows: [][]*wirepb.StateRow{{{Index: 5, InsertPos: 1, InsertLen: 2}}}}},
		{"reserved row made", spec{head: head(), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1, Made: 3}},
			rows: [][]*wirepb.StateRow{{{Index: 5, Reserved: true, Made: 2, InsertLen: 1}}}}},
		{"made before its insert began", spec{head: head(), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1, Made: 3}},
			rows: [][]*wirepb.StateRow{{{Index: 5, Made: 1, InsertPos: 1, InsertLen: 2}}}}},
		{"an active row unnumbered among numbered ones", spec{head: head(), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1, Made: 3}},
			rows: [][]*wirepb.StateRow{{{Index: 5}}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, stateFile)
			if tc.s.raw != nil {
				os.WriteFile(path, tc.s.raw, 0o600)
			} else {
				writeStateFile(t, path, tc.s.head, tc.s.parts, tc.s.rows, tc.s.trailer)
			}
			if _, err := c.Load(dir); !errors.Is(err, engine.ErrCorrupt) && !errors.Is(err, engine.ErrInvalid) && !errors.Is(err, engine.ErrNotSupported) {
				t.Fatalf("got %v, want ErrCorrupt", err)
			}
			if got := c.Partitions(); !slices.Equal(got, []string{"keep"}) {
				t.Fatalf("failed load changed partitions to %v", got)
			}
		})
	}
}

func TestCheckpointFailedSaveLeavesNothing(t *testing.T) {
	c := newController(t, DefaultConfig())
	insert(t, c, "p", 1, "x")
	parent := t.TempDir()
	blocker := filepath.Join(parent, "file")
	os.WriteFile(blocker, nil, 0o644)
	// The parent of the target is a file: Save must fail and leave no temp dir.
	if err := c.Save(filepath.Join(blocker, "ck")); err == nil {
		t.Fatal("save under a file succeeded")
	}
	entries, _ := os.ReadDir(parent)
	if len(entries) != 1 {
		t.Fatalf("failed save left %d entries", len(entries))
	}
}

// A done partition ends its stream though pre-allocated rows were never
// taken: MarkDone means no more rows, and those will never be produced.
func TestDoneWithUnusedPreAllocatedRows(t *testing.T) {
	c := newController(t, Config{PreAlloc: 8})
	m := insert(t, c, "p", 3, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	require.NoError(t, c.MarkDone("p"))
	req := engine.FetchRequest{Partition: "p", Task: "train", Fields: []string{"x"}, BatchSize: 2}
	got, err := c.Fetch(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, 2, got.Len())
	got, err = c.Fetch(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, 1, got.Len(), "the short last batch")
	_, err = c.Fetch(context.Background(), req)
	require.ErrorIs(t, err, engine.ErrDone, "5 pre-allocated rows never taken")
}

// Stats counts the rows with a produced cell without walking them (a
// count kept as cells are set and rows go): through commits, overwrites,
// cleared fields and rows, and a restart from the log and from a
// snapshot. Race builds also check the count against a walk in Stats.
func TestStatsProducedCount(t *testing.T) {
	dir := t.TempDir()
	c := openDurable(t, dir, Config{PreAlloc: 4})
	produced := func(c *Controller) int {
		st, err := c.Stats("p")
		require.NoError(t, err)
		return st.Produced
	}
	m := insert(t, c, "p", 6, "x", "y")
	require.Equal(t, 0, produced(c), "inserted rows")
	commitDense(t, c, "p", m.Indexes[:4], "x")
	require.Equal(t, 4, produced(c))
	commitDense(t, c, "p", m.Indexes[2:], "y") // rows 2, 3 get a second cell
	require.Equal(t, 6, produced(c))
	commitDense(t, c, "p", m.Indexes[:2], "x", "y") // overwrites
	require.Equal(t, 6, produced(c))
	_, err := c.ClearRows("p", m.Indexes[:1])
	require.NoError(t, err)
	require.Equal(t, 5, produced(c))
	putTags(t, c, "p", []string{"a", "b"}, engine.Tags{"n": 1}, engine.Tags{"n": 2})
	_, err = c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: []string{"a"}, Fields: []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}}}})
	require.NoError(t, err)
	require.Equal(t, 6, produced(c), "a key's cell")
	_, _, err = c.ClearFields("p", []string{"a"}, []string{"x"})
	require.NoError(t, err)
	require.Equal(t, 5, produced(c), "the key's only cell cleared")
	require.NoError(t, c.WaitDurable(context.Background()))
	crash(t, c)

	d := openDurable(t, dir, Config{PreAlloc: 4})
	require.Equal(t, 5, produced(d), "after replaying the log")
	require.NoError(t, d.Close())
	e := openDurable(t, dir, Config{PreAlloc: 4})
	defer e.Close()
	require.Equal(t, 5, produced(e), "after a snapshot")
}

// A fetch that says EndWhenConsumed is final once every row the partition
// has, pre-allocated ones included, is produced: a short last batch, then
// ErrDone, though nobody marked the partition done; while a pre-allocated
// row is not produced it is not, and without the flag only full batches
// come. Over the wire too.
func TestFetchEndWhenConsumed(t *testing.T) {
	c := newController(t, Config{PreAlloc: 10})
	m := insert(t, c, "p", 9, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	req := engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, EndWhenConsumed: true}
	sizes := func(req engine.FetchRequest) []int {
		var out []int
		for {
			got, err := c.Fetch(context.Background(), req)
			if errors.Is(err, engine.ErrDone) {
				return append(out, -1)
			}
			require.NoError(t, err)
			if got.Len() == 0 {
				return out
			}
			out = append(out, got.Len())
		}
	}
	require.Equal(t, []int{4, 4}, sizes(req), "a pre-allocated row not produced yet")
	last := insert(t, c, "p", 1, "x")
	commitDense(t, c, "p", last.Indexes, "x")
	plain := req
	plain.EndWhenConsumed = false
	require.Empty(t, sizes(plain), "without the flag, 2 rows make no batch of 4")

	_, addr := startServer(t, c, ServerConfig{}, "unix")
	conn := dialRaw(t, addr, "")
	var r wirepb.MetaReply
	require.NoError(t, do(conn, wire.OpFetch, &wirepb.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, EndWhenConsumed: true}, &r))
	require.Len(t, r.Meta.Indexes, 2, "the short last batch, over the wire")
	require.Equal(t, []int{-1}, sizes(req), "then the end")
}
