package storage

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// fakeController implements REGISTER and HEARTBEAT as cluster.proto
// describes them, on a unix socket it can stop and restart.
type fakeController struct {
	path     string
	interval time.Duration

	mu        sync.Mutex
	next      uint32
	forceID   uint32 // answer every REGISTER with this id
	units     map[uint32]*wirepb.RegisterRequest
	registers []uint32 // ids asked for, in order
	beats     map[uint32][]*wirepb.HeartbeatRequest
	srv       *wire.Server
	served    chan struct{}
}

func newFakeController(t *testing.T, token string) *fakeController {
	fc := &fakeController{
		path:     filepath.Join(t.TempDir(), "controller.sock"),
		interval: 10 * time.Millisecond,
		units:    map[uint32]*wirepb.RegisterRequest{},
		beats:    map[uint32][]*wirepb.HeartbeatRequest{},
	}
	fc.start(t, token)
	t.Cleanup(fc.stop)
	return fc
}

func (fc *fakeController) addr() string { return "unix://" + fc.path }

func (fc *fakeController) start(t *testing.T, token string) {
	t.Helper()
	srv := wire.NewServer(wire.ServerConfig{Hello: &wirepb.Hello{Role: "controller"}, Token: token})
	srv.Handle(wire.OpRegister, fc.register)
	srv.Handle(wire.OpHeartbeat, fc.heartbeat)
	l, err := net.Listen("unix", fc.path)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(l) }()
	fc.mu.Lock()
	fc.srv, fc.served = srv, served
	fc.mu.Unlock()
}

func (fc *fakeController) stop() {
	fc.mu.Lock()
	srv, served := fc.srv, fc.served
	fc.srv = nil
	fc.mu.Unlock()
	if srv != nil {
		srv.Close()
		<-served
	}
}

func (fc *fakeController) register(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	var m wirepb.RegisterRequest
	if err := req.Decode(&m); err != nil {
		rw.Error(err)
		return
	}
	if req.Peer.GetRole() != Role {
		rw.Error(fmt.Errorf("REGISTER from a %q: %w", req.Peer.GetRole(), engine.ErrInvalid))
		return
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.registers = append(fc.registers, m.UnitId)
	id := m.UnitId
	if id == 0 {
		fc.next++
		id = fc.next
	}
	if fc.forceID != 0 {
		id = fc.forceID
	}
	fc.units[id] = &m
	rw.Reply(&wirepb.RegisterReply{UnitId: id, HeartbeatIntervalMs: uint64(fc.interval / time.Millisecond)}, nil, nil)
}

func (fc *fakeController) heartbeat(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	var m wirepb.HeartbeatRequest
	if err := req.Decode(&m); err != nil {
		rw.Error(err)
		return
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.units[m.UnitId] == nil {
		rw.Error(fmt.Errorf("storage unit %d is not registered: %w", m.UnitId, engine.ErrNotFound))
		return
	}
	fc.beats[m.UnitId] = append(fc.beats[m.UnitId], &m)
	rw.Reply(&wirepb.Empty{}, nil, nil)
}

func (fc *fakeController) beatCount(id uint32) int {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return len(fc.beats[id])
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func joinConfig() JoinConfig {
	return JoinConfig{
		Addrs:      []string{"unix:///run/tq/unit.sock", "tcp://10.0.0.7:7401"},
		Name:       "unit-a",
		MaxBackoff: 20 * time.Millisecond,
		Conn:       wire.ConnConfig{KeepAlive: 20 * time.Millisecond, PingTimeout: time.Second},
	}
}

// TestJoin walks the documented sequence: an id first, then the unit,
// then membership with heartbeats until Close.
func TestJoin(t *testing.T) {
	fc := newFakeController(t, "")
	ctx := t.Context()
	cfg := joinConfig()
	id, err := AssignID(ctx, fc.addr(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if id != 1 {
		t.Fatalf("AssignID = %d, want 1", id)
	}
	u := newUnitWithID(t, id)
	m, err := Join(ctx, fc.addr(), u, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if m.ID() != id || m.Interval() != fc.interval {
		t.Errorf("membership of unit %d every %v, want unit %d every %v", m.ID(), m.Interval(), id, fc.interval)
	}
	waitFor(t, "three heartbeats", func() bool { return fc.beatCount(1) >= 3 })
	if err := m.Err(); err != nil {
		t.Errorf("Err() = %v while heartbeats arrive", err)
	}
	fc.mu.Lock()
	reg := fc.units[1]
	beat := fc.beats[1][len(fc.beats[1])-1]
	registers := slices.Clone(fc.registers)
	fc.mu.Unlock()
	if !slices.Equal(registers, []uint32{0, 1}) {
		t.Errorf("REGISTER asked for ids %v, want [0 1]", registers)
	}
	if !slices.Equal(reg.Addrs, cfg.Addrs) || reg.Name != "unit-a" || reg.HostId != HostID() || reg.Capacity != u.Stats().Capacity || reg.UnitId != 1 {
		t.Errorf("registration %v", reg)
	}
	if st := u.Stats(); beat.UnitId != 1 || beat.Capacity != st.Capacity || beat.Used != st.Used || beat.PageSize != st.PageSize {
		t.Errorf("heartbeat %v, unit stats %+v", beat, st)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	m.Close()
	n := fc.beatCount(1)
	time.Sleep(5 * fc.interval)
	if got := fc.beatCount(1); got != n {
		t.Errorf("%d heartbeats after Close", got-n)
	}
}

func newUnitWithID(t *testing.T, id engine.UnitID) *Unit {
	t.Helper()
	u, err := NewUnit(id, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}

// TestJoinReconnects: when the controller goes away and comes back
// (empty, as after a restart), the unit registers again under its id.
func TestJoinReconnects(t *testing.T) {
	fc := newFakeController(t, "")
	u := newUnitWithID(t, 5)
	m, err := Join(t.Context(), fc.addr(), u, joinConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	waitFor(t, "a heartbeat", func() bool { return fc.beatCount(5) >= 1 })
	fc.stop()
	waitFor(t, "the membership to notice", func() bool { return m.Err() != nil })
	if !errors.Is(m.Err(), wire.ErrUnavailable) {
		t.Errorf("Err() during the outage = %v, want an error wrapping %v", m.Err(), wire.ErrUnavailable)
	}
	fc.mu.Lock()
	fc.units = map[uint32]*wirepb.RegisterRequest{}
	fc.beats = map[uint32][]*wirepb.HeartbeatRequest{}
	fc.registers = nil
	fc.mu.Unlock()
	fc.start(t, "")
	waitFor(t, "heartbeats to the new controller", func() bool { return fc.beatCount(5) >= 2 })
	fc.mu.Lock()
	registers := slices.Clone(fc.registers)
	fc.mu.Unlock()
	if len(registers) == 0 || registers[0] != 5 {
		t.Errorf("after the restart REGISTER asked for %v, want unit 5", registers)
	}
	waitFor(t, "Err() to clear", func() bool { return m.Err() == nil })
}

// TestJoinForgotten: a controller that answers a heartbeat with
// CODE_NOT_FOUND gets a registration on the same connection.
func TestJoinForgotten(t *testing.T) {
	fc := newFakeController(t, "")
	u := newUnitWithID(t, 3)
	m, err := Join(t.Context(), fc.addr(), u, joinConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	waitFor(t, "a heartbeat", func() bool { return fc.beatCount(3) >= 1 })
	fc.mu.Lock()
	delete(fc.units, 3)
	fc.beats[3] = nil
	fc.mu.Unlock()
	waitFor(t, "heartbeats after registering again", func() bool { return fc.beatCount(3) >= 2 })
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if got := fc.registers; !slices.Equal(got, []uint32{3, 3}) {
		t.Errorf("REGISTER asked for %v, want [3 3]", got)
	}
}

func TestJoinErrors(t *testing.T) {
	fc := newFakeController(t, "tok")
	ctx := t.Context()
	cfg := joinConfig()
	cfg.Token = "tok"
	if _, err := Join(ctx, fc.addr(), newUnitWithID(t, 0), cfg); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("Join of unit 0: got %v, want an error wrapping %v", err, engine.ErrInvalid)
	}
	fc.mu.Lock()
	fc.forceID = 9
	fc.mu.Unlock()
	if _, err := Join(ctx, fc.addr(), newUnitWithID(t, 4), cfg); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("Join answered with another id: got %v, want an error wrapping %v", err, engine.ErrInvalid)
	}
	wrong := cfg
	wrong.Token = "nope"
	if _, err := AssignID(ctx, fc.addr(), wrong); !errors.Is(err, wire.ErrUnauthenticated) {
		t.Errorf("AssignID with a wrong token: got %v, want an error wrapping %v", err, wire.ErrUnauthenticated)
	}
	if _, err := AssignID(ctx, "unix://"+filepath.Join(t.TempDir(), "none.sock"), cfg); !errors.Is(err, wire.ErrUnavailable) {
		t.Errorf("AssignID without a controller: got %v, want an error wrapping %v", err, wire.ErrUnavailable)
	}
	var oe *engine.OpError
	_, err := AssignID(ctx, fc.addr(), wrong)
	if !errors.As(err, &oe) || oe.Peer != fc.addr() {
		t.Errorf("AssignID error %v is not an OpError naming the controller", err)
	}
}

// TestJoinCloseDuringOutage: Close returns promptly while the membership
// is retrying a controller that is gone.
func TestJoinCloseDuringOutage(t *testing.T) {
	fc := newFakeController(t, "")
	cfg := joinConfig()
	cfg.MaxBackoff = time.Hour // Close must not wait out the backoff
	m, err := Join(t.Context(), fc.addr(), newUnitWithID(t, 2), cfg)
	if err != nil {
		t.Fatal(err)
	}
	fc.stop()
	waitFor(t, "the membership to notice", func() bool { return m.Err() != nil })
	time.Sleep(20 * time.Millisecond)
	start := time.Now()
	m.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
}
