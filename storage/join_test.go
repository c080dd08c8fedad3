package storage

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// fakeController implements REGISTER, HEARTBEAT, UNIT_SYNC and RECONCILE
// as cluster.proto describes them, on a unix socket it can stop and
// restart (its state survives, as a durable controller's does; tests
// clear it to play one that lost it).
type fakeController struct {
	path     string
	interval time.Duration

	mu        sync.Mutex
	cluster   string // "" plays a controller that predates cluster ids
	next      uint32
	forceID   uint32 // answer every REGISTER with this id
	units     map[uint32]*wirepb.RegisterRequest
	known     map[uint32]uint64 // with cluster: the incarnation each id is bound to
	registers []uint32          // ids asked for, in order
	beats     map[uint32][]*wirepb.HeartbeatRequest
	srv       *wire.Server
	served    chan struct{}

	holdReg    chan struct{}                  // the next REGISTER waits for it to close
	legacy     bool                           // answer UNIT_SYNC and RECONCILE with CODE_NOT_SUPPORTED
	syncs      int                            // UNIT_SYNC requests
	frees      map[uint32][]engine.RemoteAddr // per unit: ranges the next UNIT_SYNC hands out
	askFull    map[uint32]bool                // per unit: the next UNIT_SYNC asks for a full reconcile
	changed    chan struct{}                  // closed and replaced when frees or askFull change
	refs       map[uint32][]engine.RemoteAddr // per unit: the cells the controller references
	notReady   int                            // answer this many RECONCILEs with CODE_NOT_READY
	reconciles []reconcileSeen
}

// reconcileSeen is a RECONCILE the fake answered, decoded.
type reconcileSeen struct {
	at          time.Time
	unit        uint32
	incarnation uint64
	rep         ReconcileReport
	free        []engine.RemoteAddr
}

func newFakeController(t *testing.T, token string) *fakeController {
	fc := &fakeController{
		path:     filepath.Join(t.TempDir(), "controller.sock"),
		interval: 10 * time.Millisecond,
		units:    map[uint32]*wirepb.RegisterRequest{},
		known:    map[uint32]uint64{},
		beats:    map[uint32][]*wirepb.HeartbeatRequest{},
		frees:    map[uint32][]engine.RemoteAddr{},
		askFull:  map[uint32]bool{},
		changed:  make(chan struct{}),
		refs:     map[uint32][]engine.RemoteAddr{},
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
	srv.Handle(wire.OpUnitSync, fc.unitSync)
	srv.Handle(wire.OpReconcile, fc.reconcile)
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

func (fc *fakeController) register(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	var m wirepb.RegisterRequest
	if err := req.Decode(&m); err != nil {
		rw.Error(err)
		return
	}
	if req.Peer.GetRole() != Role {
		rw.Error(fmt.Errorf("REGISTER from a %q: %w", req.Peer.GetRole(), engine.ErrInvalid))
		return
	}
	if m.Incarnation == 0 {
		rw.Error(fmt.Errorf("REGISTER without an incarnation: %w", engine.ErrInvalid))
		return
	}
	fc.mu.Lock()
	if hold := fc.holdReg; hold != nil {
		fc.holdReg = nil
		fc.mu.Unlock()
		select {
		case <-hold:
		case <-ctx.Done():
			return
		}
		fc.mu.Lock()
	}
	defer fc.mu.Unlock()
	fc.registers = append(fc.registers, m.UnitId)
	id := m.UnitId
	if fc.cluster != "" && id != 0 && (m.ClusterId != fc.cluster || fc.known[id] != m.Incarnation) {
		id = 0 // not this unit in this cluster: a new one
	}
	if id == 0 {
		fc.next++
		id = fc.next
	}
	if fc.forceID != 0 {
		id = fc.forceID
	}
	fc.units[id] = &m
	fc.known[id] = m.Incarnation
	rw.Reply(&wirepb.RegisterReply{UnitId: id, HeartbeatIntervalMs: uint64(fc.interval / time.Millisecond), ClusterId: fc.cluster}, nil, nil)
}

func (fc *fakeController) heartbeat(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	var m wirepb.HeartbeatRequest
	if err := req.Decode(&m); err != nil {
		rw.Error(err)
		return
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.units[m.UnitId] == nil || fc.cluster != "" && fc.known[m.UnitId] != m.Incarnation {
		rw.Error(fmt.Errorf("storage unit %d is not registered: %w", m.UnitId, engine.ErrNotFound))
		return
	}
	fc.beats[m.UnitId] = append(fc.beats[m.UnitId], &m)
	rw.Reply(&wirepb.Empty{}, nil, nil)
}

// unitSync holds the poll until the unit has something or wait_ms passed.
func (fc *fakeController) unitSync(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	var m wirepb.UnitSyncRequest
	if err := req.Decode(&m); err != nil {
		rw.Error(err)
		return
	}
	timer := time.NewTimer(time.Duration(m.WaitMs) * time.Millisecond)
	defer timer.Stop()
	fc.mu.Lock()
	fc.syncs++
	for {
		switch {
		case fc.legacy:
			fc.mu.Unlock()
			rw.Error(fmt.Errorf("op %v: %w", req.Op, engine.ErrNotSupported))
			return
		case fc.units[m.UnitId] == nil:
			fc.mu.Unlock()
			rw.Error(fmt.Errorf("storage unit %d is not registered: %w", m.UnitId, engine.ErrNotFound))
			return
		case len(fc.frees[m.UnitId]) > 0 || fc.askFull[m.UnitId]:
			reply := &wirepb.UnitSyncReply{Free: wire.RangesToPB(fc.frees[m.UnitId]), Reconcile: fc.askFull[m.UnitId]}
			delete(fc.frees, m.UnitId)
			delete(fc.askFull, m.UnitId)
			fc.mu.Unlock()
			rw.Reply(reply, nil, nil)
			return
		}
		changed := fc.changed
		fc.mu.Unlock()
		select {
		case <-changed:
		case <-timer.C:
			rw.Reply(&wirepb.UnitSyncReply{}, nil, nil)
			return
		case <-ctx.Done():
			rw.Error(ctx.Err())
			return
		}
		fc.mu.Lock()
	}
}

// queue hands ranges to unit's next UNIT_SYNC, and a full reconcile
// request with them.
func (fc *fakeController) queue(unit uint32, full bool, ranges ...engine.RemoteAddr) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.frees[unit] = append(fc.frees[unit], ranges...)
	fc.askFull[unit] = fc.askFull[unit] || full
	close(fc.changed)
	fc.changed = make(chan struct{})
}

// reconcile answers with the reported extents at or below their fence
// that no referenced cell lies in.
func (fc *fakeController) reconcile(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	var m wirepb.ReconcileRequest
	if err := req.Decode(&m); err != nil {
		rw.Error(err)
		return
	}
	extents, err := wire.RangesFromPB(m.Extents)
	if err != nil {
		rw.Error(err)
		return
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	switch {
	case fc.legacy:
		rw.Error(fmt.Errorf("op %v: %w", req.Op, engine.ErrNotSupported))
		return
	case fc.notReady > 0:
		fc.notReady--
		rw.Error(fmt.Errorf("saving a checkpoint: %w", engine.ErrNotReady))
		return
	case fc.units[m.UnitId] == nil || fc.known[m.UnitId] != m.Incarnation:
		rw.Error(fmt.Errorf("storage unit %d is not registered: %w", m.UnitId, engine.ErrNotFound))
		return
	}
	rep := ReconcileReport{Full: m.Full, Segments: m.Segments, Extents: extents, Last: m.Last, LiveSegments: m.LiveSegments, NextSegment: m.NextSegment}
	fences := map[uint32]uint32{}
	for _, f := range m.Fences {
		fences[f.Segment] = f.Gen
		rep.Fences = append(rep.Fences, SegmentFence{Segment: f.Segment, Gen: f.Gen})
	}
	var free []engine.RemoteAddr
	for _, e := range extents {
		if f, ok := fences[e.Segment]; ok && e.Gen <= f && !fc.referencedLocked(m.UnitId, e) {
			free = append(free, e)
		}
	}
	fc.reconciles = append(fc.reconciles, reconcileSeen{at: time.Now(), unit: m.UnitId, incarnation: m.Incarnation, rep: rep, free: free})
	rw.Reply(&wirepb.ReconcileReply{Free: wire.RangesToPB(free)}, nil, nil)
}

func (fc *fakeController) referencedLocked(unit uint32, e engine.RemoteAddr) bool {
	for _, c := range fc.refs[unit] {
		if c.Segment == e.Segment && c.Gen == e.Gen && c.Offset >= e.Offset && c.Offset < e.Offset+e.Len {
			return true
		}
	}
	return false
}

// reconcilesSince returns the RECONCILEs answered after the first n.
func (fc *fakeController) reconcilesSince(n int) []reconcileSeen {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return slices.Clone(fc.reconciles[min(n, len(fc.reconciles)):])
}

func (fc *fakeController) reconcileCount() int {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return len(fc.reconciles)
}

func (fc *fakeController) beatCount(id uint32) int {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return len(fc.beats[id])
}

// waitFor polls cond for up to 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); {
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
		// Pings often; wire's ping timeout (10 s): no test here is
		// about a controller that stops answering, and a 1 s one failed
		// live connections on a loaded machine.
		Conn: wire.ConnConfig{KeepAlive: 20 * time.Millisecond},
	}
}

// TestJoin walks the documented sequence: an id first, then the unit,
// then membership with heartbeats until Close.
func TestJoin(t *testing.T) {
	fc := newFakeController(t, "")
	ctx := t.Context()
	cfg := joinConfig()
	u := newUnitWithID(t, 0)
	id, err := AssignID(ctx, fc.addr(), u, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if id != 1 {
		t.Fatalf("AssignID = %d, want 1", id)
	}
	if u.ID() != id {
		t.Fatalf("after AssignID the unit has id %d, want %d", u.ID(), id)
	}
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
	if reg.Incarnation != u.Incarnation() || beat.Incarnation != u.Incarnation() {
		t.Errorf("registration incarnation %#x, heartbeat %#x, want the unit's %#x", reg.Incarnation, beat.Incarnation, u.Incarnation())
	}
	waitFor(t, "a UNIT_SYNC", func() bool { fc.mu.Lock(); defer fc.mu.Unlock(); return fc.syncs > 0 })
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	m.Close()
	if g := membershipGoroutines(); g != "" {
		t.Errorf("goroutines of the membership after Close:\n%s", g)
	}
	n := fc.beatCount(1)
	fc.mu.Lock()
	syncs := fc.syncs
	fc.mu.Unlock()
	reconciles := fc.reconcileCount()
	time.Sleep(5 * fc.interval)
	if got := fc.beatCount(1); got != n {
		t.Errorf("%d heartbeats after Close", got-n)
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.syncs != syncs || len(fc.reconciles) != reconciles {
		t.Errorf("%d UNIT_SYNCs and %d RECONCILEs after Close", fc.syncs-syncs, len(fc.reconciles)-reconciles)
	}
}

// membershipGoroutines returns the stacks of goroutines running a
// Membership's code.
// membershipGoroutines returns the stacks of the membership's goroutines
// still there after up to a second: one that has run its deferred
// wg.Done may still be on its way out when Close returns (it once showed
// as runnable at its return statement), but one that stays is a leak.
func membershipGoroutines() string {
	var g string
	for deadline := time.Now().Add(time.Second); ; time.Sleep(10 * time.Millisecond) {
		if g = membershipStacks(); g == "" || time.Now().After(deadline) {
			return g
		}
	}
}

func membershipStacks() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var found []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "storage.(*Membership)") {
			found = append(found, g)
		}
	}
	return strings.Join(found, "\n\n")
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
	if _, err := AssignID(ctx, fc.addr(), newUnitWithID(t, 0), wrong); !errors.Is(err, wire.ErrUnauthenticated) {
		t.Errorf("AssignID with a wrong token: got %v, want an error wrapping %v", err, wire.ErrUnauthenticated)
	}
	if _, err := AssignID(ctx, "unix://"+filepath.Join(t.TempDir(), "none.sock"), newUnitWithID(t, 0), cfg); !errors.Is(err, wire.ErrUnavailable) {
		t.Errorf("AssignID without a controller: got %v, want an error wrapping %v", err, wire.ErrUnavailable)
	}
	var oe *engine.OpError
	_, err := AssignID(ctx, fc.addr(), newUnitWithID(t, 0), wrong)
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

// joinUnit creates a unit of cfg, gets it an id from fc and joins, for
// tests of reconciliation.
func joinUnit(t *testing.T, fc *fakeController, ucfg Config, cfg JoinConfig) (*Unit, *Membership) {
	t.Helper()
	u, err := NewUnit(0, ucfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	if _, err := AssignID(t.Context(), fc.addr(), u, cfg); err != nil {
		t.Fatal(err)
	}
	m, err := Join(t.Context(), fc.addr(), u, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return u, m
}

func (fc *fakeController) setCluster(id string) {
	fc.mu.Lock()
	fc.cluster = id
	fc.mu.Unlock()
}

func (fc *fakeController) reference(unit engine.UnitID, cells ...engine.RemoteAddr) {
	fc.mu.Lock()
	fc.refs[uint32(unit)] = append(fc.refs[uint32(unit)], cells...)
	fc.mu.Unlock()
}

// confirmed reports whether the unit's extent at a is confirmed.
func confirmed(u *Unit, a engine.RemoteAddr) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	e := u.extentAt(a)
	return e != nil && e.confirmed
}

// TestJoinReidentified: a controller that does not know the unit's id in
// its cluster (here: another cluster answers at the address after a
// restart) gives it a new id; the unit takes it and the full reconcile
// that follows frees what no cell references — all of it, to the new
// cluster.
func TestJoinReidentified(t *testing.T) {
	fc := newFakeController(t, "")
	fc.setCluster("cluster-a")
	cfg := joinConfig()
	cfg.ReconcileInterval = 10 * time.Millisecond
	cfg.ReconcileGrace = 30 * time.Millisecond
	u, err := NewUnit(0, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := AssignID(t.Context(), fc.addr(), u, cfg); err != nil {
		t.Fatal(err)
	}
	if u.ID() != 1 || u.ClusterID() != "cluster-a" {
		t.Fatalf("after AssignID: unit %d of cluster %q, want 1 of cluster-a", u.ID(), u.ClusterID())
	}
	addrs := put(t, u, pattern(1, 1000), pattern(2, 1000))
	kept := addrs[0]
	fc.reference(1, cut(kept, 4)...)
	m, err := Join(t.Context(), fc.addr(), u, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// Past the grace a periodic reconcile frees the extent no cell
	// references and confirms the other.
	waitFor(t, "the unreferenced extent to be freed", func() bool { return u.Stats().Extents == 1 })
	waitFor(t, "the referenced extent to be confirmed", func() bool { return confirmed(u, kept) })

	fc.stop()
	fc.setCluster("cluster-b")
	fc.start(t, "")
	waitFor(t, "the unit to take its new id", func() bool { return u.ID() == 2 })
	if u.ClusterID() != "cluster-b" || m.ID() != 2 {
		t.Errorf("re-identified: unit %d (membership %d) of cluster %q, want 2 of cluster-b", u.ID(), m.ID(), u.ClusterID())
	}
	waitFor(t, "the full reconcile to free every extent", func() bool { return u.Stats().Extents == 0 })
	waitFor(t, "heartbeats of unit 2", func() bool { return fc.beatCount(2) >= 2 })
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if reg := fc.units[2]; reg.UnitId != 1 || reg.ClusterId != "cluster-a" || reg.Incarnation != u.Incarnation() {
		t.Errorf("the registration that got id 2 asked for unit %d of %q, incarnation %#x; want 1 of cluster-a, %#x",
			reg.UnitId, reg.ClusterId, reg.Incarnation, u.Incarnation())
	}
	var full bool
	for _, r := range fc.reconciles {
		if r.unit == 2 && r.rep.Full && slices.Contains(r.free, kept) {
			full = true
		}
	}
	if !full {
		t.Errorf("no full reconcile of unit 2 freed the extent unit 1's cells referenced")
	}
}

// TestJoinFullReconcilePages: after a controller restart the unit runs a
// full reconcile in pages of whole segments with exact fences; a
// reservation held open across it keeps its segment's fence below it, so
// its commit afterwards is above the fence. A CODE_NOT_READY answer is
// retried.
func TestJoinFullReconcilePages(t *testing.T) {
	fc := newFakeController(t, "")
	fc.setCluster("c")
	cfg := joinConfig()
	cfg.ReconcileInterval = time.Hour
	cfg.ReconcileGrace = time.Millisecond
	cfg.ReconcilePage = 4
	cfg.SyncWait = 20 * time.Millisecond
	ucfg := testConfig()
	ucfg.SegmentSize = minSegmentSize
	ucfg.Capacity = 1 << 20
	u, m := joinUnit(t, fc, ucfg, cfg)
	waitFor(t, "the first full reconcile", func() bool { return fc.reconcileCount() > 0 })

	// Segment 1: six 1 KiB extents (one slab fills it). Segments 2 and 3:
	// one of 40 KiB each. Segment 4: a reservation, then a committed
	// extent above it.
	small := put(t, u, pattern(1, 1<<10), pattern(2, 1<<10), pattern(3, 1<<10), pattern(4, 1<<10), pattern(5, 1<<10), pattern(6, 1<<10))
	big1 := put(t, u, pattern(7, 40<<10))[0]
	big2 := put(t, u, pattern(8, 40<<10))[0]
	r := reserve(t, u, 16<<10)
	above := put(t, u, pattern(9, 16<<10))[0]
	held := r.Addr(0)
	layout := []engine.RemoteAddr{small[0], small[5], big1, big2, held, above}
	if want := []engine.RemoteAddr{
		{Segment: 1, Gen: 1, Offset: 0, Len: 1 << 10}, {Segment: 1, Gen: 6, Offset: 5 << 10, Len: 1 << 10},
		{Segment: 2, Gen: 1, Offset: 0, Len: 40 << 10}, {Segment: 3, Gen: 1, Offset: 0, Len: 40 << 10},
		{Segment: 4, Gen: 1, Offset: 0, Len: 16 << 10}, {Segment: 4, Gen: 2, Offset: 16 << 10, Len: 16 << 10},
	}; !slices.Equal(layout, want) {
		t.Fatalf("the allocator placed the extents at %v, the test expects %v", layout, want)
	}
	committed := append(slices.Clone(small), big1, big2, above)
	fc.reference(u.ID(), committed...)
	time.Sleep(2 * cfg.ReconcileGrace) // the committed extents are out of flight

	n := fc.reconcileCount()
	fc.stop()
	fc.mu.Lock()
	fc.notReady = 1
	fc.mu.Unlock()
	fc.start(t, "")
	waitFor(t, "a full reconcile after the restart", func() bool {
		for _, r := range fc.reconcilesSince(n) {
			if r.rep.Last {
				return true
			}
		}
		return false
	})
	var pages []ReconcileReport
	for _, r := range fc.reconcilesSince(n) {
		if r.unit != uint32(u.ID()) || r.incarnation != u.Incarnation() {
			t.Errorf("RECONCILE of unit %d incarnation %#x, want %d %#x", r.unit, r.incarnation, u.ID(), u.Incarnation())
		}
		pages = append(pages, r.rep)
	}
	want := []ReconcileReport{{
		// More than 4 extents, but one segment: a page of its own.
		Full: true, Segments: []uint32{1}, Extents: small, Fences: []SegmentFence{{1, 6}},
	}, {
		Full: true, Segments: []uint32{2, 3, 4}, Extents: []engine.RemoteAddr{big1, big2, above},
		Fences: []SegmentFence{{2, 1}, {3, 1}, {4, 0}}, Last: true, LiveSegments: []uint32{1, 2, 3, 4}, NextSegment: 5,
	}}
	if diff := cmp.Diff(want, pages); diff != "" {
		t.Errorf("full reconcile after the restart (-want +got):\n%s", diff)
	}
	fc.mu.Lock()
	notReady := fc.notReady
	fc.mu.Unlock()
	if notReady != 0 {
		t.Errorf("the CODE_NOT_READY answer was never asked for")
	}
	if err := r.Commit(); err != nil {
		t.Fatal(err)
	}
	if fence := pages[len(pages)-1].Fences[2]; fence.Segment != held.Segment || held.Gen <= fence.Gen {
		t.Errorf("the held reservation, committed now, is %v; its segment's fence %v", held, fence)
	}
	// Above the fence, the committed extent of segment 4 was not judged;
	// the others were, and are confirmed once the unit has the answer to
	// the last page (the fake controller records the page before it
	// answers).
	waitFor(t, "the judged extents to be confirmed", func() bool { return confirmed(u, big1) && confirmed(u, small[0]) })
	if confirmed(u, above) || !confirmed(u, big1) || !confirmed(u, small[0]) {
		t.Errorf("confirmed: above the fence %v, below %v %v; want false, true, true", confirmed(u, above), confirmed(u, big1), confirmed(u, small[0]))
	}
	waitFor(t, "SyncErr to clear after the restart", func() bool { return m.SyncErr() == nil })
}

// TestJoinPeriodicReconcile: a periodic reconcile reports only extents
// not confirmed yet and committed at least the grace ago, and never a
// confirmed one again.
func TestJoinPeriodicReconcile(t *testing.T) {
	fc := newFakeController(t, "")
	fc.setCluster("c")
	cfg := joinConfig()
	cfg.ReconcileInterval = 5 * time.Millisecond
	cfg.ReconcileGrace = 40 * time.Millisecond
	u, _ := joinUnit(t, fc, testConfig(), cfg)
	waitFor(t, "the first full reconcile", func() bool { return fc.reconcileCount() > 0 })

	before := time.Now()
	addrs := put(t, u, pattern(1, 1000), pattern(2, 1000))
	a := addrs[0]
	fc.reference(u.ID(), cut(a, 2)...)
	waitFor(t, "the unreferenced extent to be freed", func() bool { return u.Stats().Extents == 1 })
	waitFor(t, "the referenced one to be confirmed", func() bool { return confirmed(u, a) })
	n := fc.reconcileCount()

	before2 := time.Now()
	c := put(t, u, pattern(3, 1000))[0]
	fc.reference(u.ID(), c)
	waitFor(t, "the new extent to be confirmed", func() bool { return confirmed(u, c) })
	for i, r := range fc.reconcilesSince(0) {
		if r.rep.Full {
			continue
		}
		for _, e := range r.rep.Extents {
			committedAfter := before
			if e == c {
				committedAfter = before2
			}
			if r.at.Sub(committedAfter) < cfg.ReconcileGrace {
				t.Errorf("periodic reconcile reported %v %v after the put began, before the grace of %v", e, r.at.Sub(committedAfter), cfg.ReconcileGrace)
			}
			if i >= n && e == a {
				t.Errorf("periodic reconcile reported the confirmed extent %v again", a)
			}
		}
	}
}

// TestJoinUnitSync: what UNIT_SYNC hands out is freed, cells or runs of
// cells; a repeated free is harmless; a reply may ask for a full
// reconcile.
func TestJoinUnitSync(t *testing.T) {
	fc := newFakeController(t, "")
	fc.setCluster("c")
	cfg := joinConfig()
	cfg.ReconcileInterval = time.Hour
	cfg.SyncWait = 50 * time.Millisecond
	u, m := joinUnit(t, fc, testConfig(), cfg)
	id := uint32(u.ID())
	x := put(t, u, pattern(1, 4000))[0]
	cells := cut(x, 4)
	live := func(c engine.RemoteAddr) bool {
		l, err := u.Acquire([]engine.RemoteAddr{c})
		if err != nil {
			return false
		}
		l.Release()
		return true
	}
	drained := func() bool {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		return len(fc.frees[id]) == 0
	}

	fc.queue(id, false, cells[0], cells[1])
	waitFor(t, "two cells freed", func() bool { return !live(cells[0]) && !live(cells[1]) })
	if !live(cells[2]) || u.Stats().Extents != 1 {
		t.Fatalf("freeing two cells freed more")
	}
	// Delivered again, with the rest as one run.
	rest := engine.RemoteAddr{Segment: x.Segment, Gen: x.Gen, Offset: cells[2].Offset, Len: cells[2].Len + cells[3].Len}
	fc.queue(id, false, cells[0], cells[1], rest)
	waitFor(t, "the extent freed", func() bool { return u.Stats().Extents == 0 })
	// The whole extent once more, after its memory went to a new one.
	y := put(t, u, pattern(2, 4000))[0]
	fc.queue(id, false, x, cells[1])
	waitFor(t, "the repeated free delivered", drained)
	if !live(y) {
		t.Errorf("a repeated free of a freed extent freed the extent now there")
	}
	if err := m.SyncErr(); err != nil {
		t.Errorf("SyncErr() = %v", err)
	}

	n := fc.reconcileCount()
	fc.queue(id, true)
	waitFor(t, "the full reconcile UNIT_SYNC asked for", func() bool {
		for _, r := range fc.reconcilesSince(n) {
			if r.rep.Full && r.rep.Last {
				return true
			}
		}
		return false
	})
}

// TestJoinLegacyController: a controller without UNIT_SYNC and RECONCILE
// keeps the unit registered; the unit backs off instead of spinning and
// says why in SyncErr.
func TestJoinLegacyController(t *testing.T) {
	fc := newFakeController(t, "")
	fc.mu.Lock()
	fc.legacy = true
	fc.mu.Unlock()
	cfg := joinConfig()
	cfg.ReconcileInterval = 10 * time.Millisecond
	u, m := joinUnit(t, fc, testConfig(), cfg)
	put(t, u, pattern(1, 100))
	start := time.Now()
	waitFor(t, "ten heartbeats", func() bool { return fc.beatCount(uint32(u.ID())) >= 10 })
	if err := m.Err(); err != nil {
		t.Errorf("Err() = %v", err)
	}
	if err := m.SyncErr(); !errors.Is(err, engine.ErrNotSupported) {
		t.Errorf("SyncErr() = %v, want an error wrapping %v", err, engine.ErrNotSupported)
	}
	fc.mu.Lock()
	syncs := fc.syncs
	fc.mu.Unlock()
	// Backoff from 10 ms (the heartbeat interval) doubling to 20 ms.
	if limit := int(time.Since(start)/(5*time.Millisecond)) + 2; syncs > limit {
		t.Errorf("%d UNIT_SYNCs in %v: spinning", syncs, time.Since(start))
	}
}

// TestJoinIntervalOfNewRegistration: a controller that comes back asking
// for another heartbeat interval gets heartbeats at that one (it reports
// a unit silent for a few of its intervals dead).
func TestJoinIntervalOfNewRegistration(t *testing.T) {
	fc := newFakeController(t, "")
	fc.mu.Lock()
	fc.interval = time.Minute
	fc.mu.Unlock()
	u := newUnitWithID(t, 5)
	m, err := Join(t.Context(), fc.addr(), u, joinConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	waitFor(t, "the first heartbeat", func() bool { return fc.beatCount(5) >= 1 })
	fc.stop()
	waitFor(t, "the membership to notice", func() bool { return m.Err() != nil })
	fc.mu.Lock()
	fc.interval = 10 * time.Millisecond
	fc.beats = map[uint32][]*wirepb.HeartbeatRequest{}
	fc.mu.Unlock()
	fc.start(t, "")
	waitFor(t, "heartbeats every 10ms to the new controller", func() bool { return fc.beatCount(5) >= 5 })
	if got := m.Interval(); got != 10*time.Millisecond {
		t.Errorf("Interval() = %v after the new registration, want 10ms", got)
	}
}

// TestJoinForgottenRegisterUnanswered: a REGISTER sent again after
// CODE_NOT_FOUND that the controller does not answer is given up on in
// bounded time, and sent again; heartbeats resume.
func TestJoinForgottenRegisterUnanswered(t *testing.T) {
	fc := newFakeController(t, "")
	u := newUnitWithID(t, 3)
	m, err := Join(t.Context(), fc.addr(), u, joinConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	waitFor(t, "a heartbeat", func() bool { return fc.beatCount(3) >= 1 })
	hold := make(chan struct{})
	defer close(hold)
	fc.mu.Lock()
	fc.holdReg = hold
	delete(fc.units, 3)
	fc.beats[3] = nil
	fc.mu.Unlock()
	waitFor(t, "heartbeats after registering again", func() bool { return fc.beatCount(3) >= 2 })
	waitFor(t, "Err() to clear", func() bool { return m.Err() == nil })
}
