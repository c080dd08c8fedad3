package controller

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

var writeSeeds = flag.Bool("write-fuzz-seeds", false, "rewrite testdata/fuzz/FuzzHandlers from fuzzSeeds")

// fuzzServer returns a server (never serving: the fuzzer calls its
// handlers directly) over a controller with a little state: partition "p"
// with rows 0–3, field x produced on rows 0–1, keys a and b in partition
// "kv", one registered unit. Checkpoints go under a path below a regular
// file, so they fail at once instead of writing and fsyncing.
func fuzzServer(t *testing.T, blocker string) *Server {
	c := newController(t, DefaultConfig())
	insert(t, c, "p", 4, "x")
	commitDense(t, c, "p", []uint64{0, 1}, "x")
	if _, err := c.ResolveKeys("kv", []string{"a", "b"}, nil, true); err != nil {
		t.Fatal(err)
	}
	s := NewServer(c, ServerConfig{CheckpointDir: filepath.Join(blocker, "ck"), MaxFetchWait: time.Millisecond})
	t.Cleanup(func() { s.Close() })
	if _, err := c.units.Register(engine.UnitInfo{Incarnation: 1, Host: "h", Addrs: []string{"tcp://127.0.0.1:1"}}, true); err != nil {
		t.Fatal(err)
	}
	return s
}

func controlOps() []wire.Op {
	return slices.Sorted(maps.Keys((&Server{}).handlerTable()))
}

// FuzzHandlers feeds each input, whole and split in two, as the body of
// every control op to the real handlers. A handler must never panic, must
// always produce a reply or an error, and must classify its errors (no
// internal error outside the checkpoint ops, whose file system errors are
// unclassified); a reply must encode and fit a frame.
func FuzzHandlers(f *testing.F) {
	blocker := filepath.Join(f.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		f.Fatal(err)
	}
	ops := controlOps()
	canceled, cancel := context.WithCancel(context.Background())
	cancel() // a blocking fetch returns at once
	f.Fuzz(func(t *testing.T, data []byte) {
		s := fuzzServer(t, blocker)
		k := 0
		if len(data) > 0 {
			k = int(data[0]) % (len(data) + 1)
		}
		for _, op := range ops {
			for _, body := range [][]byte{data, data[:k], data[k:]} {
				reply, err := s.call(canceled, op, body, &effects{})
				checkOutcome(t, op, reply, err)
			}
		}
	})
}

func checkOutcome(t *testing.T, op wire.Op, reply proto.Message, err error) {
	t.Helper()
	switch {
	case (reply == nil) == (err == nil):
		t.Fatalf("%v: reply %v and error %v", op, reply, err)
	case errors.Is(err, errInternal):
		t.Fatalf("%v: %v", op, err)
	case err != nil && wire.CodeOf(err) == wirepb.Code_CODE_INTERNAL && op != wire.OpSaveCheckpoint && op != wire.OpLoadCheckpoint && op != wire.OpCheckpoints:
		t.Fatalf("%v: unclassified error %v", op, err)
	case err == nil:
		b, merr := proto.Marshal(reply)
		if merr != nil || len(b) > wire.MaxBodyLen {
			t.Fatalf("%v: reply of %d bytes does not encode: %v", op, len(b), merr)
		}
	}
}

// fuzzSeeds are the checked-in corpus: a valid request for every op
// (against fuzzServer's state) and a few malformed bodies.
func fuzzSeeds() map[string]proto.Message {
	sel := &wirepb.FieldSelection{Names: []string{"x"}}
	all := &wirepb.FieldSelection{All: true}
	locs := &wirepb.Addrs{Unit: []uint32{1, 1}, Segment: []uint32{0, 0}, Gen: []uint32{1, 1}, Offset: []uint64{0, 8}, Len: []uint64{8, 8}} // float32(2) cells
	return map[string]proto.Message{
		"insert":             &wirepb.InsertRequest{Partition: "p", N: 2, Fields: []string{"x", "y"}},
		"fetch":              &wirepb.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 2},
		"fetch_key":          &wirepb.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Key: []byte("0123456789abcdef")},
		"unconsume":          &wirepb.UnconsumeRequest{Partition: "p", Task: "t", Key: []byte("0123456789abcdef")},
		"mark_done":          &wirepb.MarkDoneRequest{Partition: "p"},
		"fetch_sampler":      &wirepb.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, TokenBudget: 64, Sampler: &wirepb.SamplerSpec{Name: "token_budget", N: 1, DpSize: 2}, Options: &wirepb.SamplingOptions{HasRank: true, DpRank: 1}},
		"fetch_wait":         &wirepb.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 3, Wait: true, TimeoutMs: 1},
		"fetch_options":      &wirepb.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Options: &wirepb.SamplingOptions{HasRank: true, DpRank: 1, BatchIndex: 2, Params: []byte(`{"n":1}`)}},
		"force_fetch":        &wirepb.ForceFetchRequest{Partition: "p", Fields: all},
		"rows_meta":          &wirepb.RowsMetaRequest{Partition: "p", Indexes: []uint64{0, 3}, Fields: sel},
		"commit_dense":       &wirepb.CommitRequest{Partition: "p", Indexes: []uint64{2, 3}, Fields: []*wirepb.CommitField{{Name: "x", Dtype: "float32", Kind: "dense", Shape: &wirepb.Shape{Dims: []int64{2}}, HasLocs: true, Locs: locs}}},
		"commit_ragged":      &wirepb.CommitRequest{Partition: "p", Indexes: []uint64{0, 1}, Fields: []*wirepb.CommitField{{Name: "r", Dtype: "int64", Kind: "ragged", Shapes: []*wirepb.Shape{{Dims: []int64{3}}, {Dims: []int64{5}}}}}},
		"commit_opaque":      &wirepb.CommitRequest{Partition: "p", Indexes: []uint64{0}, Fields: []*wirepb.CommitField{{Name: "s", Dtype: "bytes", Kind: "opaque", HasLocs: true, Locs: &wirepb.Addrs{Unit: []uint32{1}, Segment: []uint32{0}, Gen: []uint32{1}, Offset: []uint64{0}, Len: []uint64{5}}}}},
		"resolve_keys":       &wirepb.ResolveKeysRequest{Partition: "kv", Keys: []string{"a", "c"}, Create: true},
		"resolve_unknown":    &wirepb.ResolveKeysRequest{Partition: "kv", Keys: []string{"zz"}, Fields: sel},
		"keys_of":            &wirepb.KeysOfRequest{Partition: "kv", Indexes: []uint64{4, 5, 99}},
		"set_tags":           &wirepb.SetTagsRequest{Partition: "p", Indexes: []uint64{0, 1}, Tags: [][]byte{[]byte(`{"status":"running","step":1}`), nil}},
		"list_keys":          &wirepb.ListKeysRequest{},
		"list_keys_page":     &wirepb.ListKeysRequest{Partition: "kv", Limit: 1, Cursor: []byte{1, 0, 'k', 'v'}},
		"production_status":  &wirepb.ProductionStatusRequest{Partition: "p", Fields: []string{"x"}},
		"consumption_status": &wirepb.ConsumptionStatusRequest{Partition: "p", Task: "t"},
		"reset_consumption":  &wirepb.ResetConsumptionRequest{Partition: "p"},
		"clear_rows":         &wirepb.ClearRowsRequest{Partition: "p", Indexes: []uint64{1, 2}},
		"clear_keys":         &wirepb.ClearKeysRequest{Partition: "kv", Keys: []string{"a"}},
		"clear_partition":    &wirepb.ClearPartitionRequest{Partition: "p"},
		"partition":          &wirepb.PartitionRequest{Partition: "p"},
		"empty":              &wirepb.Empty{},
		"cluster_info":       &wirepb.Empty{},
		"checkpoint":         &wirepb.CheckpointRequest{Name: "ck1"},
		"register":           &wirepb.RegisterRequest{HostId: "h", Addrs: []string{"unix:///u"}, Name: "u", Capacity: 1 << 30, Incarnation: 7},
		"reregister":         &wirepb.RegisterRequest{HostId: "h", UnitId: 1, Incarnation: 1},
		"heartbeat":          &wirepb.HeartbeatRequest{UnitId: 1, Incarnation: 1, Capacity: 1 << 30, Used: 1 << 20, Segments: 4, HugePages: true, PageSize: 2 << 20},
		"unit_sync":          &wirepb.UnitSyncRequest{UnitId: 1, Incarnation: 1, WaitMs: 1},
		"reconcile":          &wirepb.ReconcileRequest{UnitId: 1, Incarnation: 1, Full: true, Segments: []uint32{0}, Fences: []*wirepb.SegmentFence{{Segment: 0, Gen: 1}}, Extents: &wirepb.Addrs{Segment: []uint32{0}, Gen: []uint32{1}, Offset: []uint64{0}, Len: []uint64{128}}, Last: true, LiveSegments: []uint32{0}, NextSegment: 1},
		"list_keys_where": &wirepb.ListKeysRequest{Where: []*wirepb.TagCondition{
			{Name: "status", Test: wirepb.TagTest_TAG_TEST_IN, Values: [][]byte{[]byte(`"running"`), []byte(`1`)}},
			{Name: "x", Test: wirepb.TagTest_TAG_TEST_ABSENT},
		}},
		"delete_tags":         &wirepb.DeleteTagsRequest{Partition: "kv", Keys: []string{"a", "b"}, Names: []string{"status"}},
		"compare_and_set_tag": &wirepb.CompareAndSetTagRequest{Partition: "kv", Key: "a", Name: "status", NewValue: []byte(`"running"`)},
		"key_changes":         &wirepb.KeyChangesRequest{Partition: "kv", Limit: 1},
		"key_changes_wait":    &wirepb.KeyChangesRequest{Partition: "kv", Cursor: []byte{1, 1, 2, 0, 0, 'k', 'v'}, Wait: true, TimeoutMs: 1},
		"bad_truncated":       rawBody([]byte{0x0a, 0x05, 'p'}),
		"bad_wiretype":        rawBody([]byte{0x0f, 0xff, 0xff, 0xff, 0xff, 0xff}),
		"bad_varint":          rawBody([]byte{0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}),
		"bad_huge_length":     rawBody([]byte{0x1a, 0xff, 0xff, 0xff, 0xff, 0x0f}),
		"bad_utf8":            rawBody([]byte{0x0a, 0x02, 0xc3, 0x28}),
	}
}

// TestFuzzSeeds checks that the checked-in corpus matches fuzzSeeds
// (rewrite it with -write-fuzz-seeds) and that every valid seed succeeds
// for the op it was written for.
func TestFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzHandlers")
	seeds := fuzzSeeds()
	if *writeSeeds {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, m := range seeds {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatalf("seed %s: %v", name, err)
		}
		file := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		path := filepath.Join(dir, name)
		if *writeSeeds {
			if err := os.WriteFile(path, []byte(file), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != file {
			t.Errorf("seed %s is missing or stale (err %v); run go test -run TestFuzzSeeds ./controller -write-fuzz-seeds", name, err)
		}
	}
	// Each valid seed works for its op.
	for name, op := range map[string]wire.Op{
		"insert": wire.OpInsert, "fetch": wire.OpFetch, "fetch_options": wire.OpFetch, "force_fetch": wire.OpForceFetch,
		"rows_meta": wire.OpRowsMeta, "commit_dense": wire.OpCommit, "commit_ragged": wire.OpCommit, "commit_opaque": wire.OpCommit,
		"resolve_keys": wire.OpResolveKeys, "keys_of": wire.OpKeysOf, "set_tags": wire.OpSetTags, "list_keys": wire.OpListKeys,
		"production_status": wire.OpProductionStatus, "consumption_status": wire.OpConsumptionStatus,
		"reset_consumption": wire.OpResetConsumption, "clear_rows": wire.OpClearRows, "clear_keys": wire.OpClearKeys,
		"clear_partition": wire.OpClearPartition, "partition": wire.OpStats, "empty": wire.OpPartitions, "register": wire.OpRegister,
		"reregister": wire.OpRegister, "heartbeat": wire.OpHeartbeat, "fetch_key": wire.OpFetch, "unconsume": wire.OpUnconsume,
		"list_keys_page": wire.OpListKeys, "unit_sync": wire.OpUnitSync, "reconcile": wire.OpReconcile, "cluster_info": wire.OpClusterInfo,
		"list_keys_where": wire.OpListKeys, "delete_tags": wire.OpDeleteTags, "compare_and_set_tag": wire.OpCompareAndSetTag,
		"key_changes": wire.OpKeyChanges, "mark_done": wire.OpMarkDone, "fetch_sampler": wire.OpFetch,
	} {
		t.Run(name, func(t *testing.T) {
			s := fuzzServer(t, t.TempDir())
			b, _ := proto.Marshal(seeds[name])
			if _, err := s.call(context.Background(), op, b, &effects{}); err != nil {
				t.Fatalf("%v with seed %s: %v", op, name, err)
			}
		})
	}
	for name, want := range map[string]error{"resolve_unknown": engine.ErrNotFound, "bad_utf8": engine.ErrInvalid, "bad_truncated": engine.ErrInvalid} {
		s := fuzzServer(t, t.TempDir())
		b, _ := proto.Marshal(seeds[name])
		if _, err := s.call(context.Background(), wire.OpResolveKeys, b, &effects{}); !errors.Is(err, want) {
			t.Errorf("RESOLVE_KEYS with seed %s: %v, want %v", name, err, want)
		}
	}
}
