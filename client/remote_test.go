package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

func newController(t testing.TB) *controller.Controller {
	t.Helper()
	c, err := controller.New(controller.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// servedController makes a controller (units dead after a minute without
// a heartbeat) and serves it on a unix socket; both close at cleanup.
func servedController(t *testing.T) (*controller.Controller, string) {
	t.Helper()
	ctrl, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	return ctrl, addr
}

// serveController serves c on a fresh "unix" or "tcp" listener and
// returns the server and its address; the server closes at cleanup.
func serveController(t testing.TB, c *controller.Controller, cfg controller.ServerConfig, network string) (*controller.Server, string) {
	t.Helper()
	s := controller.NewServer(c, cfg)
	var l net.Listener
	var err error
	if network == "unix" {
		l, err = net.Listen("unix", filepath.Join(t.TempDir(), "ctl.sock"))
	} else {
		l, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, wire.FormatAddr(network, l.Addr().String())
}

func dialMeta(t testing.TB, addr string, cfg client.RemoteConfig) *client.RemoteMeta {
	t.Helper()
	r, err := client.DialMeta(context.Background(), addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

var sentinels = []error{
	engine.ErrInvalid, engine.ErrNotFound, engine.ErrDTypeMismatch, engine.ErrNotReady, engine.ErrCapacity,
	engine.ErrClosed, engine.ErrNotSupported, engine.ErrLost, engine.ErrCorrupt, context.DeadlineExceeded,
}

// sentinelOf names the sentinels err wraps ("" for nil).
func sentinelOf(err error) string {
	if err == nil {
		return ""
	}
	var names []string
	for _, s := range sentinels {
		if errors.Is(err, s) {
			names = append(names, s.Error())
		}
	}
	if len(names) == 0 {
		return "unclassified: " + err.Error()
	}
	return strings.Join(names, ", ")
}

// step is one call made the same way on a local and a remote controller.
type step struct {
	name string
	run  func(ctx context.Context, m client.MetaService) (any, error)
}

// locs returns n cells of size bytes each, back to back from base. A
// commit's cells must be as long as their shapes need (the controller
// refuses others).
func locs(unit engine.UnitID, n int, base, size uint64) []engine.CellLoc {
	lens := make([]uint64, n)
	for i := range lens {
		lens[i] = size
	}
	return cellsAt(unit, base, lens...)
}

// cellsAt returns cells of the given lengths, back to back from base.
func cellsAt(unit engine.UnitID, base uint64, lens ...uint64) []engine.CellLoc {
	out := make([]engine.CellLoc, len(lens))
	for i, n := range lens {
		out[i] = engine.CellLoc{Unit: unit, Addr: engine.RemoteAddr{Segment: 1, Gen: 3, Offset: base, Len: n}}
		base += n
	}
	return out
}

// script exercises every MetaService method, errors included. Indexes are
// deterministic on a fresh controller: "train" gets rows 0–3, "kv" 4–.
var script = []step{
	{"insert", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.Insert(ctx, "train", 4, []string{"prompt", "resp"})
	}},
	{"commit prompt", func(ctx context.Context, m client.MetaService) (any, error) {
		return nil, m.Commit(ctx, engine.CommitRequest{Partition: "train", Indexes: []uint64{0, 1, 2, 3}, Fields: []engine.CommitField{
			{Name: "prompt", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{8}, Locs: locs(1, 4, 0, 64)},
		}})
	}},
	{"fetch before resp", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.Fetch(ctx, engine.FetchRequest{Partition: "train", Task: "actor", Fields: []string{"prompt", "resp"}, BatchSize: 2})
	}},
	{"commit resp ragged and a scalar", func(ctx context.Context, m client.MetaService) (any, error) {
		return nil, m.Commit(ctx, engine.CommitRequest{Partition: "train", Indexes: []uint64{0, 1, 2}, Fields: []engine.CommitField{
			{Name: "resp", DType: engine.Float32, Kind: engine.Ragged, Shapes: []engine.Shape{{3}, {5}, {2, 2}}, Locs: cellsAt(2, 1024, 12, 20, 16)},
			{Name: "reward", DType: engine.Float64, Kind: engine.Dense, Shape: engine.Shape{}},
		}})
	}},
	{"fetch", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.Fetch(ctx, engine.FetchRequest{Partition: "train", Task: "actor", Fields: []string{"prompt", "resp"}, BatchSize: 2,
			Options: engine.SamplingOptions{Params: map[string]any{"seed": 1}}})
	}},
	{"fetch rest", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.Fetch(ctx, engine.FetchRequest{Partition: "train", Task: "actor", Fields: []string{"prompt", "resp"}, BatchSize: 2})
	}},
	{"force fetch all", func(ctx context.Context, m client.MetaService) (any, error) { return m.ForceFetch(ctx, "train", nil) }},
	{"force fetch one field", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.ForceFetch(ctx, "train", []string{"resp"})
	}},
	{"force fetch no fields", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.ForceFetch(ctx, "train", []string{})
	}},
	{"force fetch unknown", func(ctx context.Context, m client.MetaService) (any, error) { return m.ForceFetch(ctx, "nope", nil) }},
	{"rows meta", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.RowsMeta(ctx, "train", []uint64{3, 0}, nil)
	}},
	{"rows meta unknown", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.RowsMeta(ctx, "train", []uint64{77}, []string{"prompt"})
	}},
	{"resolve keys create", func(ctx context.Context, m client.MetaService) (any, error) {
		meta, created, err := m.ResolveKeys(ctx, "kv", []string{"a", "b", "c"}, nil, true)
		return []any{meta, created}, err
	}},
	{"commit kv", func(ctx context.Context, m client.MetaService) (any, error) {
		return nil, m.Commit(ctx, engine.CommitRequest{Partition: "kv", Indexes: []uint64{4, 5}, Fields: []engine.CommitField{
			{Name: "text", DType: engine.Bytes, Kind: engine.Opaque, Locs: locs(1, 2, 4096, 64)},
		}})
	}},
	{"resolve keys again", func(ctx context.Context, m client.MetaService) (any, error) {
		meta, created, err := m.ResolveKeys(ctx, "kv", []string{"b", "a", "d"}, nil, true)
		return []any{meta, created}, err
	}},
	{"resolve keys fields", func(ctx context.Context, m client.MetaService) (any, error) {
		meta, created, err := m.ResolveKeys(ctx, "kv", []string{"a", "b"}, []string{"text"}, false)
		return []any{meta, created}, err
	}},
	{"resolve unknown keys", func(ctx context.Context, m client.MetaService) (any, error) {
		meta, created, err := m.ResolveKeys(ctx, "kv", []string{"a", "zz", "yy"}, nil, false)
		return []any{meta, created}, err
	}},
	{"resolve duplicate keys", func(ctx context.Context, m client.MetaService) (any, error) {
		_, _, err := m.ResolveKeys(ctx, "kv", []string{"a", "a"}, nil, true)
		return nil, err
	}},
	{"keys of", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.KeysOf(ctx, "kv", []uint64{5, 4, 99})
	}},
	{"keys of nothing", func(ctx context.Context, m client.MetaService) (any, error) { return m.KeysOf(ctx, "kv", nil) }},
	{"set tags", func(ctx context.Context, m client.MetaService) (any, error) {
		return nil, m.SetTags(ctx, "kv", []uint64{4, 5}, []engine.Tags{{"status": "running", "step": 1}, {"nested": map[string]any{"x": 2.5, "l": []any{1, "s"}}}})
	}},
	{"merge tags", func(ctx context.Context, m client.MetaService) (any, error) {
		return nil, m.SetTags(ctx, "kv", []uint64{4, 5}, []engine.Tags{{"step": 2}, nil})
	}},
	{"set tags count", func(ctx context.Context, m client.MetaService) (any, error) {
		return nil, m.SetTags(ctx, "kv", []uint64{4, 5}, []engine.Tags{{"step": 2}})
	}},
	{"commit keys", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.CommitKeys(ctx, engine.KeysCommit{Partition: "kv", Keys: []string{"b", "e"}, Fields: []engine.CommitField{
			{Name: "text", DType: engine.Bytes, Kind: engine.Opaque, Locs: locs(2, 2, 0, 64)},
			{Name: "score", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}, Locs: locs(2, 2, 128, 8)},
		}, Tags: []engine.Tags{{"step": 3}, {"new": true}}})
	}},
	{"commit keys tags only", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.CommitKeys(ctx, engine.KeysCommit{Partition: "kv2", Keys: []string{"x"}, Tags: []engine.Tags{{"k": "v"}}})
	}},
	{"commit keys dtype mismatch", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.CommitKeys(ctx, engine.KeysCommit{Partition: "kv", Keys: []string{"f"}, Fields: []engine.CommitField{
			{Name: "score", DType: engine.Int8, Kind: engine.Dense, Shape: engine.Shape{2}, Locs: locs(2, 1, 0, 2)},
		}})
	}},
	{"delete tags", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.(client.KeyService).DeleteTags(ctx, "kv", []string{"b", "e"}, []string{"step", "none"})
	}},
	{"delete tags of unknown keys", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.(client.KeyService).DeleteTags(ctx, "kv", []string{"b", "zz"}, []string{"new"})
	}},
	{"delete tags without names", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.(client.KeyService).DeleteTags(ctx, "kv", []string{"b"}, nil)
	}},
	{"compare and set a new key", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.(client.KeyService).CompareAndSetTag(ctx, engine.TagSwap{Partition: "kv", Key: "cas", Name: "n", New: int64(1)})
	}},
	{"compare and set", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.(client.KeyService).CompareAndSetTag(ctx, engine.TagSwap{Partition: "kv", Key: "cas", Name: "n", Old: int64(1), New: []any{"x", int64(2)}})
	}},
	{"compare and set mismatch", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.(client.KeyService).CompareAndSetTag(ctx, engine.TagSwap{Partition: "kv", Key: "cas", Name: "n", Old: int64(1), New: 3})
	}},
	{"compare and set bad name", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.(client.KeyService).CompareAndSetTag(ctx, engine.TagSwap{Partition: "kv", Key: "cas", New: 3})
	}},
	{"list keys where", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.(client.KeyService).ListKeysWhere(ctx, "", engine.TagFilter{{Name: "new", Test: engine.TagExists}, {Name: "status", Test: engine.TagAbsent}})
	}},
	{"list keys bad filter", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.(client.KeyService).ListKeysWhere(ctx, "", engine.TagFilter{{Name: "new", Test: engine.TagEquals}})
	}},
	{"key changes", func(ctx context.Context, m client.MetaService) (any, error) {
		ch, err := m.(client.KeyService).KeyChanges(ctx, engine.ChangesRequest{Partition: "kv"})
		return []any{ch.Changes, ch.Reset, ch.More}, err // cursors name their controller
	}},
	{"key changes bad cursor", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.(client.KeyService).KeyChanges(ctx, engine.ChangesRequest{Partition: "kv", Cursor: []byte("junk")})
	}},
	{"list keys", func(ctx context.Context, m client.MetaService) (any, error) { return m.ListKeys(ctx, "kv") }},
	{"list keys all", func(ctx context.Context, m client.MetaService) (any, error) { return m.ListKeys(ctx, "") }},
	{"list keys unknown", func(ctx context.Context, m client.MetaService) (any, error) { return m.ListKeys(ctx, "nope") }},
	{"production status", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.ProductionStatus(ctx, "train", []string{"prompt", "resp"})
	}},
	{"production status no fields", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.ProductionStatus(ctx, "train", nil)
	}},
	{"production status unknown field", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.ProductionStatus(ctx, "train", []string{"prompt", "ghost"})
	}},
	{"consumption status", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.ConsumptionStatus(ctx, "train", "actor")
	}},
	{"consumption status no task", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.ConsumptionStatus(ctx, "train", "")
	}},
	{"reset consumption", func(ctx context.Context, m client.MetaService) (any, error) {
		return nil, m.ResetConsumption(ctx, "train", "actor")
	}},
	{"fetch after reset", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.Fetch(ctx, engine.FetchRequest{Partition: "train", Task: "actor", Fields: []string{"prompt"}, BatchSize: 4})
	}},
	{"held fetch", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.Fetch(ctx, engine.FetchRequest{Partition: "train", Task: "judge", Fields: []string{"prompt"}, BatchSize: 2, Key: "h1", Hold: true})
	}},
	{"held fetch 2", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.Fetch(ctx, engine.FetchRequest{Partition: "train", Task: "judge", Fields: []string{"prompt"}, BatchSize: 1, Key: "h2", Hold: true})
	}},
	{"held fetch without key", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.Fetch(ctx, engine.FetchRequest{Partition: "train", Task: "judge", Fields: []string{"prompt"}, BatchSize: 1, Hold: true})
	}},
	{"consumption status held", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.ConsumptionStatus(ctx, "train", "judge")
	}},
	{"stats held", func(ctx context.Context, m client.MetaService) (any, error) { return m.Stats(ctx, "train") }},
	{"acknowledge", func(ctx context.Context, m client.MetaService) (any, error) {
		return nil, m.(client.StreamService).Acknowledge(ctx, "train", "judge", "h1")
	}},
	{"give back held", func(ctx context.Context, m client.MetaService) (any, error) {
		return nil, m.(client.StreamService).Unconsume(ctx, "train", "judge", "h2")
	}},
	{"acknowledge given back", func(ctx context.Context, m client.MetaService) (any, error) {
		return nil, m.(client.StreamService).Acknowledge(ctx, "train", "judge", "h2")
	}},
	{"consumption status settled", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.ConsumptionStatus(ctx, "train", "judge")
	}},
	{"overwrite", func(ctx context.Context, m client.MetaService) (any, error) {
		return nil, m.Commit(ctx, engine.CommitRequest{Partition: "train", Indexes: []uint64{0}, Fields: []engine.CommitField{
			{Name: "prompt", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{8}, Locs: locs(2, 1, 8192, 64)},
		}})
	}},
	{"dtype mismatch", func(ctx context.Context, m client.MetaService) (any, error) {
		return nil, m.Commit(ctx, engine.CommitRequest{Partition: "train", Indexes: []uint64{1}, Fields: []engine.CommitField{
			{Name: "prompt", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{8}},
		}})
	}},
	{"commit of the wrong length", func(ctx context.Context, m client.MetaService) (any, error) {
		return nil, m.Commit(ctx, engine.CommitRequest{Partition: "train", Indexes: []uint64{1}, Fields: []engine.CommitField{
			{Name: "prompt", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{8}, Locs: locs(2, 1, 8192, 32)},
		}})
	}},
	{"fields", func(ctx context.Context, m client.MetaService) (any, error) { return m.Fields(ctx, "train") }},
	{"stats", func(ctx context.Context, m client.MetaService) (any, error) { return m.Stats(ctx, "train") }},
	{"stats unknown", func(ctx context.Context, m client.MetaService) (any, error) { return m.Stats(ctx, "nope") }},
	{"partitions", func(ctx context.Context, m client.MetaService) (any, error) { return m.Partitions(ctx) }},
	{"clear rows", func(ctx context.Context, m client.MetaService) (any, error) {
		return nil, m.ClearRows(ctx, "train", []uint64{0, 3, 99})
	}},
	{"clear keys", func(ctx context.Context, m client.MetaService) (any, error) {
		return nil, m.ClearKeys(ctx, "kv", []string{"a", "nope"})
	}},
	{"clear nothing", func(ctx context.Context, m client.MetaService) (any, error) {
		return nil, m.ClearRows(ctx, "nope", []uint64{1})
	}},
	{"reuse cleared indexes", func(ctx context.Context, m client.MetaService) (any, error) { return m.Insert(ctx, "val", 3, nil) }},
	{"clear partition", func(ctx context.Context, m client.MetaService) (any, error) {
		return nil, m.ClearPartition(ctx, "train")
	}},
	{"partitions after clear", func(ctx context.Context, m client.MetaService) (any, error) { return m.Partitions(ctx) }},
	{"bad insert", func(ctx context.Context, m client.MetaService) (any, error) { return m.Insert(ctx, "train", 0, nil) }},
	{"bad fetch", func(ctx context.Context, m client.MetaService) (any, error) {
		return m.Fetch(ctx, engine.FetchRequest{Partition: "kv", Fields: []string{"text"}, BatchSize: 1})
	}},
}

// scriptErrors is the error class of each step of script that fails,
// so that a step meant to succeed cannot fail on both sides unnoticed.
var scriptErrors = map[string]error{
	"force fetch unknown":             engine.ErrNotFound,
	"rows meta unknown":               engine.ErrNotFound,
	"resolve unknown keys":            engine.ErrNotFound,
	"resolve duplicate keys":          engine.ErrInvalid,
	"keys of nothing":                 engine.ErrInvalid,
	"set tags count":                  engine.ErrInvalid,
	"commit keys dtype mismatch":      engine.ErrDTypeMismatch,
	"delete tags of unknown keys":     engine.ErrNotFound,
	"delete tags without names":       engine.ErrInvalid,
	"compare and set bad name":        engine.ErrInvalid,
	"list keys bad filter":            engine.ErrInvalid,
	"key changes bad cursor":          engine.ErrInvalid,
	"production status unknown field": engine.ErrNotFound,
	"consumption status no task":      engine.ErrInvalid,
	"dtype mismatch":                  engine.ErrDTypeMismatch,
	"commit of the wrong length":      engine.ErrInvalid,
	"stats unknown":                   engine.ErrNotFound,
	"bad insert":                      engine.ErrInvalid,
	"bad fetch":                       engine.ErrInvalid,
	"held fetch without key":          engine.ErrInvalid,
	"acknowledge given back":          engine.ErrNotFound,
}

// TestRemoteMatchesLocal runs the script on a local controller and on a
// remote one, and compares every result and error class.
func TestRemoteMatchesLocal(t *testing.T) {
	opts := cmp.Options{
		cmpopts.EquateEmpty(),
		cmpopts.IgnoreFields(engine.PartitionStats{}, "Created"),
		cmpopts.IgnoreFields(engine.BatchMeta{}, "Cluster"), // the cluster that answered, noted by a remote meta
	}
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			ctx := context.Background()
			local := embedded.Meta(newController(t))
			remoteCtl := newController(t)
			_, addr := serveController(t, remoteCtl, controller.ServerConfig{}, network)
			remote := dialMeta(t, addr, client.RemoteConfig{Name: "test"})
			for _, st := range script {
				want, werr := st.run(ctx, local)
				got, gerr := st.run(ctx, remote)
				if sentinelOf(werr) != sentinelOf(scriptErrors[st.name]) {
					t.Fatalf("%s: local error %v, want %v", st.name, werr, scriptErrors[st.name])
				}
				if sentinelOf(werr) != sentinelOf(gerr) {
					t.Fatalf("%s: error %v, local error %v", st.name, gerr, werr)
				}
				if werr != nil {
					var oe *engine.OpError
					if !errors.As(gerr, &oe) || oe.Transport != network || !strings.HasSuffix(addr, oe.Peer) {
						t.Fatalf("%s: error %#v is not an OpError naming transport %s and peer %s", st.name, gerr, network, addr)
					}
					continue
				}
				if diff := cmp.Diff(want, got, opts); diff != "" {
					t.Fatalf("%s (-local +remote):\n%s", st.name, diff)
				}
			}
		})
	}
}

func TestRemoteErrorsNameWhatIsWrong(t *testing.T) {
	ctx := context.Background()
	c := newController(t)
	_, addr := serveController(t, c, controller.ServerConfig{}, "unix")
	r := dialMeta(t, addr, client.RemoteConfig{})
	if _, _, err := r.ResolveKeys(ctx, "kv", []string{"a"}, nil, true); err != nil {
		t.Fatal(err)
	}
	_, _, err := r.ResolveKeys(ctx, "kv", []string{"a", "zz", "yy"}, nil, false)
	if !errors.Is(err, engine.ErrNotFound) || !strings.Contains(err.Error(), `"zz" "yy"`) {
		t.Fatalf("unknown keys: %v, want ErrNotFound naming zz and yy", err)
	}
	var re *wire.RemoteError
	if !errors.As(err, &re) || re.Code != wirepb.Code_CODE_NOT_FOUND {
		t.Fatalf("unknown keys: %#v, want a RemoteError with CODE_NOT_FOUND", err)
	}
	err = r.Commit(ctx, engine.CommitRequest{Partition: "kv", Indexes: []uint64{0}, Fields: []engine.CommitField{{Name: "f", DType: engine.Int8, Kind: engine.Dense}}})
	if err != nil {
		t.Fatal(err)
	}
	err = r.Commit(ctx, engine.CommitRequest{Partition: "kv", Indexes: []uint64{0}, Fields: []engine.CommitField{{Name: "f", DType: engine.Int16, Kind: engine.Dense}}})
	if !errors.Is(err, engine.ErrDTypeMismatch) {
		t.Fatalf("dtype change: %v, want ErrDTypeMismatch", err)
	}
}

func TestRemoteBlockingFetch(t *testing.T) {
	ctx := context.Background()
	c := newController(t)
	_, addr := serveController(t, c, controller.ServerConfig{MaxFetchWait: 30 * time.Millisecond}, "tcp")
	consumer := dialMeta(t, addr, client.RemoteConfig{Name: "consumer"})
	producer := dialMeta(t, addr, client.RemoteConfig{Name: "producer"})
	m, err := producer.Insert(ctx, "p", 2, []string{"x"})
	if err != nil {
		t.Fatal(err)
	}
	req := engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 2, Wait: true}

	t.Run("deadline", func(t *testing.T) {
		// Timed from before the deadline is set: however late this
		// goroutine runs after, the client cannot give up sooner.
		start := time.Now()
		dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		_, err := consumer.Fetch(dctx, req)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want DeadlineExceeded", err)
		}
		// The client stops asking once less than fetchMargin (25 ms) is
		// left: with the server's 30 ms waits it may give up at 75 ms.
		if took := time.Since(start); took < 75*time.Millisecond || took > 2*time.Second {
			t.Fatalf("took %v, want 75 to 100 ms", took)
		}
	})
	t.Run("no time left", func(t *testing.T) {
		dctx, cancel := context.WithTimeout(ctx, time.Microsecond)
		defer cancel()
		time.Sleep(time.Millisecond)
		if _, err := consumer.Fetch(dctx, req); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want DeadlineExceeded", err)
		}
	})
	t.Run("woken by a commit", func(t *testing.T) {
		// No deadline: the client outlasts the server's 30 ms limit by
		// asking again, until the producer's commit arrives.
		got := make(chan *engine.BatchMeta, 1)
		errc := make(chan error, 1)
		go func() {
			m, err := consumer.Fetch(ctx, req)
			got <- m
			errc <- err
		}()
		time.Sleep(100 * time.Millisecond)
		if err := producer.Commit(ctx, engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: []engine.CommitField{
			{Name: "x", DType: engine.Uint8, Kind: engine.Dense, Shape: engine.Shape{4}, Locs: locs(1, 2, 0, 4)},
		}}); err != nil {
			t.Fatal(err)
		}
		select {
		case fm := <-got:
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(m.Indexes, fm.Indexes); diff != "" || !fm.IsReady() {
				t.Fatalf("woken fetch rows (-want +got):\n%s", diff)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("blocked fetch not woken by the commit")
		}
	})
	t.Run("ready rows with a short deadline", func(t *testing.T) {
		if err := producer.ResetConsumption(ctx, "p", "t"); err != nil {
			t.Fatal(err)
		}
		dctx, cancel := context.WithTimeout(ctx, time.Millisecond)
		defer cancel()
		fm, err := consumer.Fetch(dctx, req)
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatal(err)
		}
		if err == nil && fm.Len() != 2 {
			t.Fatalf("fetch returned %d rows, want 2", fm.Len())
		}
	})
}

// fakeMeta builds the meta of n rows of partition with one int64 field.
func fakeMeta(partition, field string, n int) *engine.BatchMeta {
	m := &engine.BatchMeta{
		Indexes: make([]uint64, n), Partitions: make([]string, n), Ready: make([]bool, n), Tags: make([]engine.Tags, n),
		Schema: map[string]engine.FieldSchema{field: {Kind: engine.Dense, DType: engine.Int64, Shape: engine.Shape{1}}},
		Cells:  map[string][]engine.CellLoc{field: make([]engine.CellLoc, n)},
	}
	for i := range n {
		m.Indexes[i], m.Partitions[i], m.Ready[i] = uint64(10+i), partition, true
	}
	return m
}

// A reply that does not answer the request is corrupt, and a fetch's rows
// are given back: a FETCH reply with a row of another partition, other
// fields than those asked for, or more rows than a sequential fetch
// takes; a FORCE_FETCH or ROWS_META reply with a row of another
// partition. The client used to hand such a reply to its caller (a
// loader then yielded rows of "other" as a micro-batch of "p"). More rows
// than asked for are a rank_aware group's cached batch (a peer's request
// made it), and an empty reply names no fields: both are accepted.
func TestRemoteReplyNotMatchingRequest(t *testing.T) {
	var reply atomic.Pointer[engine.BatchMeta]
	gaveBack := make(chan string, 10)
	srv := wire.NewServer(wire.ServerConfig{Hello: &wirepb.Hello{Role: "controller"}})
	answer := func(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
		pb, err := wire.MetaToPB(reply.Load())
		if err != nil {
			rw.Error(err)
			return
		}
		rw.Reply(&wirepb.MetaReply{Meta: pb}, nil, nil)
	}
	srv.Handle(wire.OpFetch, answer)
	srv.Handle(wire.OpForceFetch, answer)
	srv.Handle(wire.OpRowsMeta, answer)
	srv.Handle(wire.OpUnconsume, func(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
		var u wirepb.UnconsumeRequest
		if err := req.Decode(&u); err != nil {
			rw.Error(err)
			return
		}
		gaveBack <- string(u.Key)
		rw.Reply(&wirepb.Empty{}, nil, nil)
	})
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "c.sock"))
	require.NoError(t, err)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	r := dialMeta(t, "unix://"+l.Addr().String(), client.RemoteConfig{RetryFor: -1})
	ctx := t.Context()

	fetch := engine.FetchRequest{Partition: "p", Task: "train", Fields: []string{"x"}, BatchSize: 2,
		Sampler: engine.SamplerSpec{Name: engine.SamplerSequential}}
	ranked := fetch
	ranked.Sampler = engine.SamplerSpec{Name: engine.SamplerRankAware}
	ranked.Options = engine.SamplingOptions{HasRank: true}
	for _, tc := range []struct {
		name  string
		req   engine.FetchRequest
		reply *engine.BatchMeta
		bad   string // what the error names; "" for a reply accepted
	}{
		{"another partition", fetch, fakeMeta("other", "y", 5), `is of partition "other", asked for "p"`},
		{"other fields", fetch, fakeMeta("p", "y", 2), `fields ["y"], asked for ["x"]`},
		{"more rows", fetch, fakeMeta("p", "x", 5), "5 rows, asked for at most 2"},
		{"a group's cached batch", ranked, fakeMeta("p", "x", 5), ""},
		{"no rows", fetch, &engine.BatchMeta{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reply.Store(tc.reply)
			tc.req.Key = fmt.Sprintf("%-16.16s", tc.name)
			m, err := r.Fetch(ctx, tc.req)
			if tc.bad == "" {
				require.NoError(t, err)
				require.Equal(t, tc.reply.Len(), m.Len())
				return
			}
			require.ErrorIs(t, err, engine.ErrCorrupt)
			require.ErrorContains(t, err, tc.bad)
			require.Nil(t, m)
			select {
			case key := <-gaveBack:
				require.Equal(t, tc.req.Key, key)
			case <-time.After(10 * time.Second):
				t.Fatal("the fetch's rows were not given back")
			}
		})
	}
	reply.Store(fakeMeta("other", "x", 2))
	_, err = r.ForceFetch(ctx, "p", []string{"x"})
	require.ErrorIs(t, err, engine.ErrCorrupt)
	require.ErrorContains(t, err, `is of partition "other", asked for "p"`)
	_, err = r.RowsMeta(ctx, "p", []uint64{10, 11}, []string{"x"})
	require.ErrorIs(t, err, engine.ErrCorrupt)
	require.ErrorContains(t, err, `is of partition "other", asked for "p"`)
}

func TestRemoteCheckpoint(t *testing.T) {
	ctx := context.Background()
	c := newController(t)
	_, addr := serveController(t, c, controller.ServerConfig{CheckpointDir: t.TempDir()}, "unix")
	r := dialMeta(t, addr, client.RemoteConfig{})
	if _, _, err := r.ResolveKeys(ctx, "kv", []string{"a", "b"}, nil, true); err != nil {
		t.Fatal(err)
	}
	before, err := r.ListKeys(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	saved, err := r.SaveCheckpoint(ctx, "ck", []byte(`{"step": 1200}`))
	if err != nil {
		t.Fatal(err)
	}
	if saved.Name != "ck" || string(saved.Metadata) != `{"step": 1200}` {
		t.Fatalf("saved %q with metadata %q", saved.Name, saved.Metadata)
	}
	if err := r.ClearPartition(ctx, "kv"); err != nil {
		t.Fatal(err)
	}
	loaded, err := r.LoadCheckpoint(ctx, "ck")
	if err != nil {
		t.Fatal(err)
	}
	if string(loaded.Metadata) != `{"step": 1200}` || loaded.SavedUnixMs != saved.SavedUnixMs {
		t.Fatalf("loaded metadata %q saved at %d, want %q at %d", loaded.Metadata, loaded.SavedUnixMs, `{"step": 1200}`, saved.SavedUnixMs)
	}
	list, err := r.Checkpoints(ctx)
	if err != nil || len(list) != 1 || string(list[0].Metadata) != `{"step": 1200}` {
		t.Fatalf("checkpoints: %v, %v", list, err)
	}
	after, err := r.ListKeys(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, after); diff != "" {
		t.Fatalf("keys after save, clear, load (-before +after):\n%s", diff)
	}
	if _, err := r.LoadCheckpoint(ctx, "none"); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("load of a missing checkpoint: %v, want ErrNotFound", err)
	}
	if _, err := r.SaveCheckpoint(ctx, "relative/dir", nil); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("save to a path: %v, want ErrInvalid", err)
	}
	for _, bad := range []string{`[1, 2]`, `{"step": `, `null`, `"x"`, `{"big": "` + strings.Repeat("x", 64<<10) + `"}`} {
		_, err := r.SaveCheckpoint(ctx, "ck", []byte(bad))
		if !errors.Is(err, engine.ErrInvalid) || !strings.Contains(err.Error(), "checkpoint metadata") {
			t.Fatalf("save with metadata %.20q: %v, want ErrInvalid naming the metadata", bad, err)
		}
	}
	if list, err := r.Checkpoints(ctx); err != nil || len(list) != 1 || string(list[0].Metadata) != `{"step": 1200}` {
		t.Fatalf("after refused saves, checkpoints: %v, %v", list, err)
	}
}

func TestRemoteUnits(t *testing.T) {
	ctx := context.Background()
	ctrl, err := controller.New(controller.Config{UnitTimeout: 250 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctrl.Close() })
	s, addr := serveController(t, ctrl, controller.ServerConfig{HeartbeatInterval: 10 * time.Millisecond}, "unix")
	unitConn, _, err := wire.Dial(ctx, addr, &wirepb.Hello{Role: "unit"}, wire.ConnConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer unitConn.Close()
	for i, name := range []string{"u1", "u2"} {
		req := &wirepb.RegisterRequest{HostId: client.HostID(), Addrs: []string{"unix:///" + name}, Name: name, Capacity: 100, Incarnation: uint64(i + 1)}
		if err := unitConn.Do(ctx, wire.OpRegister, req, nil, &wirepb.RegisterReply{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	r := dialMeta(t, addr, client.RemoteConfig{})
	deadline := time.Now().Add(5 * time.Second)
	var units []engine.UnitInfo
	for {
		if err := unitConn.Do(ctx, wire.OpHeartbeat, &wirepb.HeartbeatRequest{UnitId: 1, Incarnation: 1, Capacity: 100, Used: 10}, nil, &wirepb.Empty{}, nil); err != nil {
			t.Fatal(err)
		}
		if units, err = r.Units(ctx); err != nil {
			t.Fatal(err)
		}
		if len(units) == 2 && !units[1].Alive {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("unit 2 still alive after 5 s: %+v", units)
		}
		time.Sleep(10 * time.Millisecond)
	}
	want := []engine.UnitInfo{
		{ID: 1, Incarnation: 1, Host: client.HostID(), Addrs: []string{"unix:///u1"}, Name: "u1", Capacity: 100, Used: 10, Alive: true},
		{ID: 2, Incarnation: 2, Host: client.HostID(), Addrs: []string{"unix:///u2"}, Name: "u2", Capacity: 100, Alive: false},
	}
	if diff := cmp.Diff(want, units, cmpopts.IgnoreFields(engine.UnitInfo{}, "LastHeartbeat", "Alive")); diff != "" {
		t.Fatalf("units (-want +got):\n%s", diff)
	}
	if !units[0].Alive || units[0].LastHeartbeat.Before(units[1].LastHeartbeat) {
		t.Fatalf("unit 1 = %+v, want alive with the later heartbeat than unit 2", units[0])
	}
	if diff := cmp.Diff(s.Units(), units, cmpopts.EquateApproxTime(time.Millisecond), cmpopts.IgnoreFields(engine.UnitInfo{}, "Alive")); diff != "" {
		t.Fatalf("remote units differ from the server's (-server +remote):\n%s", diff)
	}
}

func TestRemoteToken(t *testing.T) {
	_, addr := serveController(t, newController(t), controller.ServerConfig{Token: "tok"}, "tcp")
	_, err := client.DialMeta(context.Background(), addr, client.RemoteConfig{})
	var oe *engine.OpError
	if !errors.Is(err, wire.ErrUnauthenticated) || !errors.As(err, &oe) || oe.Op != "dial" {
		t.Fatalf("dial without the token: %v, want an OpError wrapping ErrUnauthenticated", err)
	}
	r := dialMeta(t, addr, client.RemoteConfig{Token: "tok"})
	if _, err := r.Partitions(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestDialMetaNotAController(t *testing.T) {
	s := wire.NewServer(wire.ServerConfig{Hello: &wirepb.Hello{Role: "unit"}})
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "u.sock"))
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	defer s.Close()
	if _, err := client.DialMeta(context.Background(), "unix://"+l.Addr().String(), client.RemoteConfig{}); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("dial a storage unit as a controller: %v, want ErrInvalid", err)
	}
	if _, err := client.DialMeta(context.Background(), "udp://x", client.RemoteConfig{}); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("dial a bad address: %v, want ErrInvalid", err)
	}
}

// TestRemoteServerDeath: calls in flight when the controller goes away, and
// calls after, fail once RetryFor has passed instead of hanging.
func TestRemoteServerDeath(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			ctx := context.Background()
			c := newController(t)
			s, addr := serveController(t, c, controller.ServerConfig{}, network)
			r := dialMeta(t, addr, client.RemoteConfig{RetryFor: 200 * time.Millisecond})
			errc := blockFetch(t, c, r)
			s.Close()
			select {
			case err := <-errc:
				if err == nil {
					t.Fatal("fetch in flight succeeded after the server died")
				}
			case <-time.After(2 * time.Second):
				t.Fatal("fetch in flight still blocked 2 s after the server died")
			}
			dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			if _, err := r.Partitions(dctx); err == nil || dctx.Err() != nil {
				t.Fatalf("call after the server died: %v (ctx %v), want a prompt error", err, dctx.Err())
			}
		})
	}
}

// blockFetch starts a waiting fetch of 2 rows of "p" (which has 1 ready)
// and returns once the controller is waiting on it; the fetch's error
// arrives on the channel.
func blockFetch(t *testing.T, c *controller.Controller, r *client.RemoteMeta) <-chan error {
	t.Helper()
	ctx := context.Background()
	m, err := r.Insert(ctx, "p", 1, []string{"x"})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Commit(ctx, engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: []engine.CommitField{{Name: "x", DType: engine.Int8, Kind: engine.Dense}}}); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := r.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 2, Wait: true})
		errc <- err
	}()
	// The fetch waits once the controller counts it blocked.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c.BlockedFetches() > 0 {
			return errc
		}
		if time.Now().After(deadline) {
			t.Fatal("fetch not waiting after 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRemoteGracefulShutdown(t *testing.T) {
	ctx := context.Background()
	c := newController(t)
	s, addr := serveController(t, c, controller.ServerConfig{}, "unix")
	// No retries: the fetch shows the server's answer (by default it would
	// ask again, waiting for the controller to come back).
	r := dialMeta(t, addr, client.RemoteConfig{RetryFor: -1})
	errc := blockFetch(t, c, r)
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.Shutdown(sctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	select {
	case err := <-errc:
		var re *wire.RemoteError
		if !errors.Is(err, engine.ErrClosed) || !errors.As(err, &re) {
			t.Fatalf("blocked fetch got %v, want a reply wrapping ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("blocked fetch got nothing after shutdown")
	}
}

func TestRemoteCloseIdempotent(t *testing.T) {
	_, addr := serveController(t, newController(t), controller.ServerConfig{}, "unix")
	r, err := client.DialMeta(context.Background(), addr, client.RemoteConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Partitions(context.Background()); !errors.Is(err, engine.ErrClosed) {
		t.Fatalf("call after Close: %v, want ErrClosed", err)
	}
}

// TestMetaRoundTrip encodes a BatchMeta with keys, tags, a ragged schema
// and cells, marshals it, and decodes it back.
func TestMetaRoundTrip(t *testing.T) {
	m := &engine.BatchMeta{
		Indexes:    []uint64{7, 3, 9},
		Partitions: []string{"p", "p", "q"},
		Keys:       []string{"a", "", "c"},
		Schema: map[string]engine.FieldSchema{
			"ids":  {DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{128}},
			"resp": {DType: engine.Float32, Kind: engine.Ragged, Shapes: []engine.Shape{{3}, nil, {2, 2}}},
			"text": {DType: engine.Bytes, Kind: engine.Opaque},
			"todo": {},
		},
		Ready: []bool{true, false, true},
		Tags:  []engine.Tags{{"step": 1, "ok": true, "nested": map[string]any{"x": []any{1, 2.5}}}, nil, {"s": "v"}},
		Cells: map[string][]engine.CellLoc{
			"ids":  locs(1, 3, 0, 1024), // int64(128)
			"resp": {{Unit: 2, Addr: engine.RemoteAddr{Segment: 4, Gen: 1, Offset: 10, Len: 12}}, {}, {Unit: 2, Addr: engine.RemoteAddr{Offset: 30, Len: 16}}},
		},
		Extra: map[string]any{"batch": 3},
	}
	p, err := wire.MetaToPB(m)
	if err != nil {
		t.Fatal(err)
	}
	b, err := proto.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var q wirepb.BatchMeta
	if err := proto.Unmarshal(b, &q); err != nil {
		t.Fatal(err)
	}
	got, err := wire.MetaFromPB(&q)
	if err != nil {
		t.Fatal(err)
	}
	// Whole numbers come back as int64 (and 2.5 as float64).
	want := *m
	want.Extra = map[string]any{"batch": int64(3)}
	if diff := cmp.Diff(&want, got); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s", diff)
	}
	if fmt.Sprint(got.Tags[0]["step"]) != "1" {
		t.Fatalf("tag step = %#v", got.Tags[0]["step"])
	}
}

// TestListHugePartition is issue 11's ninth case: a listing past the 64
// MiB frame limit failed whole (that partition, and List("") of all of
// them). Listing pages it, whatever the size. The 300k keys with
// 256-byte tags (about 80 MB) are 75k keys with 1 KiB tags here: as far
// past a frame, at a quarter of the keys to make and list under -race.
func TestListHugePartition(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 75k-key partition of 80 MB")
	}
	c, err := controller.New(controller.DefaultConfig())
	require.NoError(t, err)
	defer c.Close()
	const keys, chunk = 75_000, 5_000
	tag := engine.Tags{"note": strings.Repeat("x", 1000)}
	require.Greater(t, keys*tag.JSONSize(), wire.MaxBodyLen, "the keys' tags alone are more than a frame holds")
	for lo := 0; lo < keys; lo += chunk {
		ks := make([]string, chunk)
		for i := range ks {
			ks[i] = fmt.Sprintf("key-%07d", lo+i)
		}
		m, err := c.ResolveKeys("big", ks, nil, true)
		require.NoError(t, err)
		tags := make([]engine.Tags, chunk)
		for i := range tags {
			tags[i] = tag
		}
		require.NoError(t, c.SetTags("big", m.Indexes, tags))
	}
	_, err = c.ResolveKeys("small", []string{"a", "b"}, nil, true)
	require.NoError(t, err)
	_, addr := serveController(t, c, controller.ServerConfig{}, "unix")
	m := dialMeta(t, addr, client.RemoteConfig{})
	for _, part := range []string{"big", ""} {
		got, err := m.ListKeys(t.Context(), part)
		require.NoError(t, err, "list %q", part)
		require.Len(t, got["big"], keys)
		assert.Equal(t, "key-0012345", got["big"][12345].Key)
		assert.Equal(t, tag, got["big"][keys-1].Tags)
		if part == "" {
			assert.Len(t, got["small"], 2)
		}
	}
}

// What answers where the controller was and refuses this client (another
// token, or no controller at all) is not a lost connection to retry for
// RetryFor: the call fails at once.
func TestRemoteRefusedAfterRestart(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	serve := func(s interface {
		Serve(net.Listener) error
		Close() error
	}) func() {
		l, err := net.Listen("unix", sock)
		require.NoError(t, err)
		done := make(chan struct{})
		go func() { s.Serve(l); close(done) }()
		return func() { s.Close(); <-done }
	}
	for _, tc := range []struct {
		name string
		next interface {
			Serve(net.Listener) error
			Close() error
		}
		want error
	}{
		{"another token", controller.NewServer(newController(t), controller.ServerConfig{Token: "new"}), wire.ErrUnauthenticated},
		{"not a controller", wire.NewServer(wire.ServerConfig{Hello: &wirepb.Hello{Role: "unit"}}), engine.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stop := serve(controller.NewServer(newController(t), controller.ServerConfig{Token: "old"}))
			r := dialMeta(t, "unix://"+sock, client.RemoteConfig{Token: "old"})
			_, err := r.Partitions(t.Context())
			require.NoError(t, err)
			stop()
			defer serve(tc.next)()
			start := time.Now()
			_, err = r.Partitions(t.Context())
			require.ErrorIs(t, err, tc.want)
			assert.Less(t, time.Since(start), 5*time.Second, "retried a refusal")
		})
	}
}
