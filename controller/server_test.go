package controller

// Tests of the controller server at the protocol level, with a raw
// wire.Conn. The end-to-end tests through the client's RemoteMeta live in
// client/remote_test.go (a controller test may not import client).

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/hostid"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// startServer serves c on a fresh listener ("unix" or "tcp") and returns
// the server and its address. The server closes at cleanup.
func startServer(t *testing.T, c *Controller, cfg ServerConfig, network string) (*Server, string) {
	t.Helper()
	s := NewServer(c, cfg)
	var l net.Listener
	var err error
	if network == "unix" {
		l, err = net.Listen("unix", filepath.Join(t.TempDir(), "c.sock"))
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

func dialRaw(t *testing.T, addr, token string) *wire.Conn {
	t.Helper()
	c, hello, err := wire.Dial(context.Background(), addr, &wirepb.Hello{Role: "unit", Token: token}, wire.ConnConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if hello.Role != "controller" || hello.HostId != hostid.ID() || hello.HostId == "" {
		t.Errorf("hello reply = %v, want role controller and host %q", hello, hostid.ID())
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func do(c *wire.Conn, op wire.Op, req, reply proto.Message) error {
	if reply == nil {
		reply = &wirepb.Empty{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Do(ctx, op, req, nil, reply, nil)
}

func codeOf(err error) wirepb.Code {
	var re *wire.RemoteError
	if errors.As(err, &re) {
		return re.Code
	}
	return wirepb.Code_CODE_UNSPECIFIED
}

// TestUnitsLeavesOutUnitsWithoutAddresses: a unit that registered to get
// its id, before it could name its sockets, is not listed until it
// registers its addresses. A client that listed it would have kept the
// address-less entry for the id (the fault matrix's RDMA reader failed
// every read of such a unit until it died).
func TestUnitsLeavesOutUnitsWithoutAddresses(t *testing.T) {
	_, addr := startServer(t, newController(t, Config{}), ServerConfig{}, "unix")
	c := dialRaw(t, addr, "")
	var reg wirepb.RegisterReply
	require.NoError(t, do(c, wire.OpRegister, &wirepb.RegisterRequest{Incarnation: 7}, &reg))
	var reply wirepb.UnitsReply
	require.NoError(t, do(c, wire.OpUnits, &wirepb.Empty{}, &reply))
	assert.Empty(t, reply.Units, "a unit with no address yet")
	require.NoError(t, do(c, wire.OpRegister, &wirepb.RegisterRequest{UnitId: reg.UnitId, Incarnation: 7, ClusterId: reg.ClusterId,
		HostId: "h", Addrs: []string{"unix:///run/tq/unit-1.sock", "rdma://emu0"}, Capacity: 1 << 20}, &reg))
	require.NoError(t, do(c, wire.OpUnits, &wirepb.Empty{}, &reply))
	require.Len(t, reply.Units, 1)
	assert.Equal(t, []string{"unix:///run/tq/unit-1.sock", "rdma://emu0"}, reply.Units[0].Addrs)
}

func TestServerUnits(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			s, addr := startServer(t, newController(t, Config{UnitTimeout: 250 * time.Millisecond}), ServerConfig{HeartbeatInterval: 10 * time.Millisecond}, network)
			c := dialRaw(t, addr, "")
			var ids []uint32
			for i, name := range []string{"beating", "silent"} {
				var reply wirepb.RegisterReply
				err := do(c, wire.OpRegister, &wirepb.RegisterRequest{HostId: "h", Addrs: []string{"tcp://127.0.0.1:1"}, Name: name, Capacity: 1 << 20, Incarnation: uint64(i + 1)}, &reply)
				if err != nil {
					t.Fatal(err)
				}
				if reply.HeartbeatIntervalMs != 10 {
					t.Errorf("heartbeat interval = %d ms, want 10", reply.HeartbeatIntervalMs)
				}
				ids = append(ids, reply.UnitId)
			}
			if diff := cmp.Diff([]uint32{1, 2}, ids); diff != "" {
				t.Fatalf("unit ids (-want +got):\n%s", diff)
			}
			// Heartbeat unit 1 until unit 2 is reported dead.
			deadline := time.Now().Add(5 * time.Second)
			for {
				if err := do(c, wire.OpHeartbeat, &wirepb.HeartbeatRequest{UnitId: 1, Incarnation: 1, Capacity: 1 << 20, Used: 7}, nil); err != nil {
					t.Fatal(err)
				}
				if !s.Units()[1].Alive {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("silent unit still alive after 5 s")
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := do(c, wire.OpHeartbeat, &wirepb.HeartbeatRequest{UnitId: 1, Incarnation: 1, Capacity: 1 << 20, Used: 7}, nil); err != nil {
				t.Fatal(err)
			}
			var reply wirepb.UnitsReply
			if err := do(c, wire.OpUnits, &wirepb.Empty{}, &reply); err != nil {
				t.Fatal(err)
			}
			type unit struct {
				ID          uint32
				Name        string
				Alive       bool
				Used        int64
				RecentHeart bool
			}
			var got []unit
			for _, u := range reply.Units {
				got = append(got, unit{u.UnitId, u.Name, u.Alive, u.Used, time.Since(time.UnixMilli(u.LastHeartbeatUnixMs)) < time.Minute})
			}
			want := []unit{{1, "beating", true, 7, true}, {2, "silent", false, 0, true}}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("UNITS (-want +got):\n%s", diff)
			}
			// A heartbeat for a unit the controller does not know asks it to
			// register again.
			if err := do(c, wire.OpHeartbeat, &wirepb.HeartbeatRequest{UnitId: 9, Incarnation: 9}, nil); !errors.Is(err, engine.ErrNotFound) {
				t.Fatalf("heartbeat of unknown unit: %v, want ErrNotFound", err)
			}
		})
	}
}

func TestServerToken(t *testing.T) {
	_, addr := startServer(t, newController(t, DefaultConfig()), ServerConfig{Token: "s3cret"}, "tcp")
	for _, token := range []string{"", "wrong"} {
		_, _, err := wire.Dial(context.Background(), addr, &wirepb.Hello{Token: token}, wire.ConnConfig{})
		if !errors.Is(err, wire.ErrUnauthenticated) {
			t.Fatalf("dial with token %q: %v, want ErrUnauthenticated", token, err)
		}
	}
	c := dialRaw(t, addr, "s3cret")
	if err := do(c, wire.OpPartitions, &wirepb.Empty{}, &wirepb.PartitionsReply{}); err != nil {
		t.Fatal(err)
	}
}

func TestServerBadRequests(t *testing.T) {
	root := t.TempDir()
	ctrl := newController(t, DefaultConfig())
	insert(t, ctrl, "p", 2, "x")
	_, addr := startServer(t, ctrl, ServerConfig{CheckpointDir: root}, "unix")
	c := dialRaw(t, addr, "")
	garbage := []byte{0xff, 0xff, 0xff}
	dense := func(f *wirepb.CommitField) *wirepb.CommitRequest {
		return &wirepb.CommitRequest{Partition: "p", Indexes: []uint64{0, 1}, Fields: []*wirepb.CommitField{f}}
	}
	addrs := func(n int) *wirepb.Addrs {
		a := &wirepb.Addrs{}
		for range n {
			a.Unit, a.Segment, a.Gen, a.Offset, a.Len = append(a.Unit, 1), append(a.Segment, 0), append(a.Gen, 0), append(a.Offset, 0), append(a.Len, 8)
		}
		return a
	}
	for _, tc := range []struct {
		name string
		op   wire.Op
		body any // proto.Message or raw []byte
		want error
	}{
		{"garbage insert", wire.OpInsert, garbage, engine.ErrInvalid},
		{"garbage fetch", wire.OpFetch, garbage, engine.ErrInvalid},
		{"garbage units", wire.OpUnits, garbage, engine.ErrInvalid},
		{"too many rows", wire.OpInsert, &wirepb.InsertRequest{Partition: "p", N: wire.MaxSegments + 1}, engine.ErrInvalid},
		{"huge batch", wire.OpFetch, &wirepb.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1 << 40}, engine.ErrInvalid},
		{"no rows", wire.OpInsert, &wirepb.InsertRequest{Partition: "p"}, engine.ErrInvalid},
		{"all and names", wire.OpForceFetch, &wirepb.ForceFetchRequest{Partition: "p", Fields: &wirepb.FieldSelection{All: true, Names: []string{"x"}}}, engine.ErrInvalid},
		{"bad dtype", wire.OpCommit, dense(&wirepb.CommitField{Name: "y", Dtype: "float9", Kind: "dense"}), engine.ErrInvalid},
		{"bad kind", wire.OpCommit, dense(&wirepb.CommitField{Name: "y", Dtype: "float32", Kind: "lumpy"}), engine.ErrInvalid},
		{"ragged shapes short", wire.OpCommit, dense(&wirepb.CommitField{Name: "y", Dtype: "float32", Kind: "ragged", Shapes: []*wirepb.Shape{{Dims: []int64{1}}}}), engine.ErrInvalid},
		{"dense with shapes", wire.OpCommit, dense(&wirepb.CommitField{Name: "y", Dtype: "float32", Kind: "dense", Shapes: []*wirepb.Shape{{}, {}}}), engine.ErrInvalid},
		{"negative dim", wire.OpCommit, dense(&wirepb.CommitField{Name: "y", Dtype: "float32", Kind: "dense", Shape: &wirepb.Shape{Dims: []int64{-1}}}), engine.ErrInvalid},
		{"locs short", wire.OpCommit, dense(&wirepb.CommitField{Name: "y", Dtype: "float32", Kind: "dense", HasLocs: true, Locs: addrs(1)}), engine.ErrInvalid},
		{"locs ragged arrays", wire.OpCommit, dense(&wirepb.CommitField{Name: "y", Dtype: "float32", Kind: "dense", HasLocs: true, Locs: &wirepb.Addrs{Offset: []uint64{1, 2}}}), engine.ErrInvalid},
		{"locs without has_locs", wire.OpCommit, dense(&wirepb.CommitField{Name: "y", Dtype: "float32", Kind: "dense", Locs: addrs(2)}), engine.ErrInvalid},
		{"unknown rows", wire.OpCommit, &wirepb.CommitRequest{Partition: "p", Indexes: []uint64{99}, Fields: []*wirepb.CommitField{{Name: "y", Dtype: "float32", Kind: "dense"}}}, engine.ErrNotFound},
		{"tags not json", wire.OpSetTags, &wirepb.SetTagsRequest{Partition: "p", Indexes: []uint64{0}, Tags: [][]byte{[]byte("[1]")}}, engine.ErrInvalid},
		{"tags count", wire.OpSetTags, &wirepb.SetTagsRequest{Partition: "p", Indexes: []uint64{0, 1}, Tags: [][]byte{nil}}, engine.ErrInvalid},
		{"params not json", wire.OpFetch, &wirepb.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Options: &wirepb.SamplingOptions{Params: []byte("{")}}, engine.ErrInvalid},
		{"checkpoint escapes root", wire.OpSaveCheckpoint, &wirepb.CheckpointRequest{Dir: "../x"}, engine.ErrInvalid},
		{"checkpoint absolute under root", wire.OpSaveCheckpoint, &wirepb.CheckpointRequest{Dir: root}, engine.ErrInvalid},
		{"checkpoint root itself", wire.OpLoadCheckpoint, &wirepb.CheckpointRequest{Dir: "."}, engine.ErrInvalid},
		{"heartbeat no id", wire.OpHeartbeat, &wirepb.HeartbeatRequest{}, engine.ErrInvalid},
		{"register negative", wire.OpRegister, &wirepb.RegisterRequest{Capacity: -1}, engine.ErrInvalid},
		{"unknown op", wire.Op(63), &wirepb.Empty{}, engine.ErrNotSupported}, // no op has 63
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body proto.Message
			switch b := tc.body.(type) {
			case []byte:
				// Send the bytes as they are: an Addrs body whose unknown
				// field carries them.
				body = rawBody(b)
			case proto.Message:
				body = b
			}
			err := do(c, tc.op, body, nil)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	// The partition is untouched by the rejected commits.
	if fs, _ := ctrl.Fields("p"); len(fs) != 0 {
		t.Fatalf("rejected commits left fields %v", fs)
	}
	// A control request with a payload is refused; the connection lives.
	err := c.Do(context.Background(), wire.OpPartitions, &wirepb.Empty{}, net.Buffers{[]byte("xyz")}, &wirepb.PartitionsReply{}, nil)
	if !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("request with payload: %v, want ErrInvalid", err)
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// rawBody is a message that marshals to exactly its bytes.
func rawBody(b []byte) proto.Message {
	m := &wirepb.Empty{}
	m.ProtoReflect().SetUnknown(b)
	return m
}

type panicSampler struct{}

func (panicSampler) Sample(engine.SampleRequest) ([]uint64, []uint64, error) { panic("sampler bug") }

func TestServerRecoversPanics(t *testing.T) {
	ctrl := newController(t, Config{Sampler: panicSampler{}})
	insert(t, ctrl, "p", 2, "x")
	commitDense(t, ctrl, "p", []uint64{0, 1}, "x")
	var logged []string
	var mu sync.Mutex
	s := NewServer(ctrl, ServerConfig{Logf: func(format string, args ...any) {
		mu.Lock()
		logged = append(logged, format)
		mu.Unlock()
	}})
	s.handlers[wire.OpStats] = func(context.Context, []byte, *effects) (proto.Message, error) {
		var m map[string]int
		m["x"]++ // nil map write
		return nil, nil
	}
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "c.sock"))
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	c := dialRaw(t, wire.FormatAddr("unix", l.Addr().String()), "")
	err = do(c, wire.OpStats, &wirepb.PartitionRequest{Partition: "p"}, &wirepb.PartitionStats{})
	if codeOf(err) != wirepb.Code_CODE_INTERNAL || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("panicking handler: %v, want an internal error reply", err)
	}
	// A panicking sampler: the partition must not stay locked.
	for range 2 {
		err = do(c, wire.OpFetch, &wirepb.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1}, &wirepb.MetaReply{})
		if codeOf(err) != wirepb.Code_CODE_INTERNAL {
			t.Fatalf("panicking sampler: %v, want an internal error reply", err)
		}
	}
	var meta wirepb.MetaReply
	if err := do(c, wire.OpForceFetch, &wirepb.ForceFetchRequest{Partition: "p"}, &meta); err != nil || len(meta.Meta.Indexes) != 2 {
		t.Fatalf("force fetch after the panics: %v, %v", meta.Meta, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(logged) != 3 {
		t.Fatalf("%d panics logged, want 3", len(logged))
	}
}

func TestServerFetchWaitBounds(t *testing.T) {
	ctrl := newController(t, DefaultConfig())
	insert(t, ctrl, "p", 1, "x")
	for _, tc := range []struct {
		name      string
		limit     time.Duration
		timeoutMs uint64
		min, max  time.Duration
	}{
		{"own timeout", time.Minute, 10, 10 * time.Millisecond, 30 * time.Second},
		{"server limit", 50 * time.Millisecond, 0, 50 * time.Millisecond, 30 * time.Second},
		{"timeout above the limit", 50 * time.Millisecond, 1 << 62, 50 * time.Millisecond, 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr := startServer(t, ctrl, ServerConfig{MaxFetchWait: tc.limit}, "unix")
			c := dialRaw(t, addr, "")
			start := time.Now()
			err := do(c, wire.OpFetch, &wirepb.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Wait: true, TimeoutMs: tc.timeoutMs}, &wirepb.MetaReply{})
			took := time.Since(start)
			if !errors.Is(err, context.DeadlineExceeded) || codeOf(err) != wirepb.Code_CODE_DEADLINE {
				t.Fatalf("got %v, want a deadline reply", err)
			}
			if took < tc.min || took > tc.max {
				t.Fatalf("took %v, want between %v and %v", took, tc.min, tc.max)
			}
		})
	}
}

func TestServerShutdownAnswersBlockedFetch(t *testing.T) {
	ctrl := newController(t, DefaultConfig())
	insert(t, ctrl, "p", 1, "x")
	commitDense(t, ctrl, "p", []uint64{0}, "x")
	s, addr := startServer(t, ctrl, ServerConfig{}, "tcp")
	c := dialRaw(t, addr, "")
	got := make(chan error, 1)
	go func() {
		got <- do(c, wire.OpFetch, &wirepb.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 2, Wait: true}, &wirepb.MetaReply{})
	}()
	// Wait until the fetch is blocked in the controller.
	waitFor(t, func() bool { return fetchWaiting(ctrl, "p") })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	err := <-got
	if codeOf(err) != wirepb.Code_CODE_CLOSED || !errors.Is(err, engine.ErrClosed) {
		t.Fatalf("blocked fetch got %v, want a CODE_CLOSED reply", err)
	}
	// The controller lives on.
	if _, err := ctrl.Insert("p", 1, nil); err != nil {
		t.Fatal(err)
	}
}

// fetchWaiting reports whether a fetch has registered a readiness view on
// the partition, i.e. has looked at it at least once.
func fetchWaiting(c *Controller, partition string) bool {
	p, _ := c.lock(partition)
	if p == nil {
		return false
	}
	defer p.mu.Unlock()
	return len(p.views) > 0
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestServerCheckpointNames: checkpoints are named, kept under the
// server's checkpoint directory; a path from the network is refused
// (another local user once made the controller write into a directory of
// its choosing).
func TestServerCheckpointNames(t *testing.T) {
	root := t.TempDir()
	ctrl := newController(t, DefaultConfig())
	insert(t, ctrl, "p", 3, "x")
	_, addr := startServer(t, ctrl, ServerConfig{CheckpointDir: root}, "unix")
	c := dialRaw(t, addr, "")
	if err := do(c, wire.OpSaveCheckpoint, &wirepb.CheckpointRequest{Name: "ck-1"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "ck-1", stateFile)); err != nil {
		t.Fatalf("checkpoint not under the checkpoint directory: %v", err)
	}
	if _, err := ctrl.ClearPartition("p"); err != nil {
		t.Fatal(err)
	}
	if err := do(c, wire.OpLoadCheckpoint, &wirepb.CheckpointRequest{Name: "ck-1"}, nil); err != nil {
		t.Fatal(err)
	}
	if got := ctrl.Partitions(); !cmp.Equal(got, []string{"p"}) {
		t.Fatalf("partitions after load = %v", got)
	}
	var list wirepb.CheckpointsReply
	if err := do(c, wire.OpCheckpoints, &wirepb.Empty{}, &list); err != nil || len(list.Checkpoints) != 1 || list.Checkpoints[0].Name != "ck-1" {
		t.Fatalf("CHECKPOINTS = %v, %v", list.Checkpoints, err)
	}
	for _, tc := range []struct {
		name string
		req  *wirepb.CheckpointRequest
	}{
		{"absolute path", &wirepb.CheckpointRequest{Dir: filepath.Join(t.TempDir(), "abs")}},
		{"relative path", &wirepb.CheckpointRequest{Dir: "ck/2"}},
		{"name with a slash", &wirepb.CheckpointRequest{Name: "../escape"}},
		{"dot name", &wirepb.CheckpointRequest{Name: ".."}},
		{"empty name", &wirepb.CheckpointRequest{}},
		{"long name", &wirepb.CheckpointRequest{Name: strings.Repeat("x", 129)}},
	} {
		for _, op := range []wire.Op{wire.OpSaveCheckpoint, wire.OpLoadCheckpoint} {
			if err := do(c, op, tc.req, nil); !errors.Is(err, engine.ErrInvalid) {
				t.Fatalf("%v with %s: %v, want ErrInvalid", op, tc.name, err)
			}
		}
	}
	if err := do(c, wire.OpLoadCheckpoint, &wirepb.CheckpointRequest{Name: "missing"}, nil); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("load of a missing checkpoint: %v, want ErrNotFound", err)
	}
	// Save refuses to replace a directory that is not a checkpoint.
	os.MkdirAll(filepath.Join(root, "other", "stuff"), 0o700)
	if err := do(c, wire.OpSaveCheckpoint, &wirepb.CheckpointRequest{Name: "other"}, nil); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("save over a non-checkpoint directory: %v, want ErrInvalid", err)
	}
	// Without a checkpoint directory there are none.
	_, addr2 := startServer(t, ctrl, ServerConfig{}, "unix")
	c2 := dialRaw(t, addr2, "")
	if err := do(c2, wire.OpSaveCheckpoint, &wirepb.CheckpointRequest{Name: "x"}, nil); !errors.Is(err, engine.ErrNotSupported) {
		t.Fatalf("save without a checkpoint directory: %v, want ErrNotSupported", err)
	}
}

func TestServerCloseIdempotent(t *testing.T) {
	s := NewServer(newController(t, DefaultConfig()), ServerConfig{})
	for range 2 {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(l); err != nil {
		t.Fatalf("Serve after Close = %v, want nil", err)
	}
}
