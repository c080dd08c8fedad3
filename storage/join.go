package storage

// Cluster membership. A unit process joins a cluster in three steps:
//
//	u := NewUnit(0, …)               the unit exists first: its incarnation
//	                                 is drawn here
//	AssignID(ctx, ctrl, u, cfg)      REGISTER with unit_id 0 and the
//	                                 incarnation: the controller picks an
//	                                 id, which the unit takes
//	serve u                          its server starts on its listeners
//	m := Join(ctx, ctrl, u, cfg)     REGISTER again with the id, now with the
//	                                 unit's addresses and capacity, then
//	                                 everything below until m.Close
//
// Membership owns three goroutines, each on the one controller connection:
//
//	heartbeats  HEARTBEAT every interval the controller asked for. When the
//	            connection fails it redials with a capped exponential
//	            backoff and registers again; when the controller answers
//	            CODE_NOT_FOUND (it forgot the unit) it registers again on
//	            the same connection.
//	sync        UNIT_SYNC, a long poll: the cell ranges the controller no
//	            longer references come back and are freed (Unit.FreeRanges),
//	            and a reply may ask for a full reconcile.
//	reconcile   RECONCILE (reconcile.go): a full one after every successful
//	            registration and whenever UNIT_SYNC asks, page by page, each
//	            answer applied before the next page; a periodic one every
//	            JoinConfig.ReconcileInterval.
//
// Every registration carries the unit's incarnation and the cluster id it
// last registered with. A controller that does not know the id for this
// incarnation in this cluster answers with another id: the unit takes it
// (Unit.SetID) and is a new unit to the cluster, and the full reconcile
// that follows frees what no cell references.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// JoinConfig says how a unit presents itself to the controller.
type JoinConfig struct {
	// Token is the controller's shared secret, if it requires one.
	Token string
	// Addrs are the addresses clients reach the unit at: "tcp://host:port",
	// "unix:///path".
	Addrs []string
	// Name is free-form, for logs and stat output.
	Name string
	// HostID is the unit's host identity; empty means [HostID].
	HostID string
	// Conn tunes the controller connection (keepalive pings).
	Conn wire.ConnConfig
	// MaxBackoff caps the wait between attempts to reach the controller
	// again after the connection dropped (which also waits at most two
	// heartbeat intervals), and between failed UNIT_SYNC and RECONCILE
	// exchanges (0: 5 s).
	MaxBackoff time.Duration
	// ReconcileInterval is the time between periodic reconciles (0:
	// 30 s).
	ReconcileInterval time.Duration
	// ReconcileGrace is how long after its commit an extent the
	// controller has not confirmed is in flight: its client may still be
	// committing its cells to the controller, so reconciles fence below
	// it and periodic ones do not report it yet (0: 60 s). A client
	// whose COMMIT reaches the controller later than this after its
	// WRITE may be refused.
	ReconcileGrace time.Duration
	// ReconcilePage bounds the extents of one RECONCILE request (0:
	// [DefaultReconcilePage]); a segment with more is a page of its own.
	ReconcilePage int
	// SyncWait is how long the controller may hold a UNIT_SYNC when it
	// has nothing for the unit (0: 5 s; at most 30 s).
	SyncWait time.Duration
}

// Defaults of [JoinConfig].
const (
	DefaultMaxBackoff        = 5 * time.Second
	DefaultReconcileInterval = 30 * time.Second
	DefaultReconcileGrace    = 60 * time.Second
	DefaultSyncWait          = 5 * time.Second
	maxSyncWait              = 30 * time.Second
)

func (c JoinConfig) withDefaults() JoinConfig {
	if c.HostID == "" {
		c.HostID = HostID()
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.ReconcileInterval <= 0 {
		c.ReconcileInterval = DefaultReconcileInterval
	}
	if c.ReconcileGrace <= 0 {
		c.ReconcileGrace = DefaultReconcileGrace
	}
	if c.ReconcilePage <= 0 {
		c.ReconcilePage = DefaultReconcilePage
	}
	if c.SyncWait <= 0 {
		c.SyncWait = DefaultSyncWait
	}
	c.SyncWait = min(c.SyncWait, maxSyncWait)
	return c
}

// Heartbeat intervals accepted from the controller.
const (
	defaultHeartbeat = time.Second
	minHeartbeat     = 10 * time.Millisecond
	maxHeartbeat     = time.Minute
)

// AssignID registers u, which has no id yet, with the controller at
// controllerAddr (unit_id 0, its incarnation, no capacity: nobody uses
// it yet), gives u the id the controller assigned and
// the cluster id it named, and returns the id. Then serve u and [Join].
// Errors wrap [wire.ErrUnavailable] when the controller cannot be reached
// and [wire.ErrUnauthenticated] for a wrong token.
func AssignID(ctx context.Context, controllerAddr string, u *Unit, cfg JoinConfig) (engine.UnitID, error) {
	cfg = cfg.withDefaults()
	conn, err := dialController(ctx, controllerAddr, cfg)
	if err != nil {
		return 0, joinErr("assign id", controllerAddr, err)
	}
	defer conn.Close()
	reply, err := register(ctx, conn, cfg, &wirepb.RegisterRequest{Incarnation: u.Incarnation(), Addrs: cfg.Addrs})
	if err != nil {
		return 0, joinErr("assign id", controllerAddr, err)
	}
	id := engine.UnitID(reply.UnitId)
	u.setIdentity(id, reply.ClusterId)
	return id, nil
}

// Membership keeps a unit registered with the controller and reconciled
// with it: it heartbeats, frees what the controller no longer references,
// reconciles, and reconnects and registers again when the controller
// connection drops. It is safe for concurrent use.
type Membership struct {
	u        *Unit
	addr     string
	cfg      JoinConfig
	interval atomic.Int64 // nanoseconds: what the last registration asked for

	cancel context.CancelFunc // ends the loops; called by Close
	wg     sync.WaitGroup     // the loops

	// full asks the reconcile loop for a full reconcile; regs counts the
	// registrations, so a full reconcile started under one that was
	// superseded (a new connection, maybe a new id) stops early.
	full chan struct{}
	regs atomic.Uint64
	// syncAck is the seq of the last UNIT_SYNC reply applied, under the
	// registration syncRegs counted (both owned by the sync loop): a new
	// registration starts again from 0, since the controller's sequence
	// starts again with it (after a restart, or for a new id).
	syncAck, syncRegs uint64

	mu       sync.Mutex
	conn     *wire.Conn    // replaced by the heartbeat loop on reconnect
	replaced chan struct{} // closed when conn is replaced
	err      error         // the last heartbeat failure; nil while heartbeats succeed
	syncErr  error         // the last UNIT_SYNC failure; nil after a success
	recErr   error         // the last RECONCILE failure; nil after a success
}

// Join registers u with the controller at controllerAddr under u's id and
// starts the membership's loops; [Membership.Close] stops them. u's id
// must be the one the controller assigned (see [AssignID]); a unit with id
// 0 is an error wrapping [engine.ErrInvalid]. A controller that answers
// with another id and names its cluster re-identifies the unit (see
// [Unit.SetID]); one that names no cluster does not know unit
// incarnations, and another id from it is an error wrapping
// [engine.ErrInvalid]. ctx bounds the initial registration only.
func Join(ctx context.Context, controllerAddr string, u *Unit, cfg JoinConfig) (*Membership, error) {
	if u.ID() == 0 {
		return nil, joinErr("join", controllerAddr, fmt.Errorf("unit id 0 (get one with AssignID first): %w", engine.ErrInvalid))
	}
	cfg = cfg.withDefaults()
	conn, err := dialController(ctx, controllerAddr, cfg)
	if err != nil {
		return nil, joinErr("join", controllerAddr, err)
	}
	lctx, cancel := context.WithCancel(context.Background())
	m := &Membership{
		u: u, addr: controllerAddr, cfg: cfg, cancel: cancel,
		full: make(chan struct{}, 1), conn: conn, replaced: make(chan struct{}),
	}
	if err = m.register(ctx, conn); err != nil {
		cancel()
		conn.Close()
		return nil, joinErr("join", controllerAddr, err)
	}
	m.wg.Add(3)
	go m.heartbeats(lctx)
	go m.syncLoop(lctx)
	go m.reconcileLoop(lctx)
	return m, nil
}

// ID returns the unit's id.
func (m *Membership) ID() engine.UnitID { return m.u.ID() }

// Interval returns the heartbeat interval the controller asked for at
// the last registration.
func (m *Membership) Interval() time.Duration { return time.Duration(m.interval.Load()) }

// Err returns the last failure to reach the controller (a heartbeat or a
// reconnection), or nil while heartbeats succeed.
func (m *Membership) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// SyncErr returns the last failure of UNIT_SYNC and the last of
// RECONCILE, each forgotten once an exchange of its kind succeeds, or nil.
// A controller that does not implement them answers with errors wrapping
// [engine.ErrNotSupported].
func (m *Membership) SyncErr() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return errors.Join(m.syncErr, m.recErr)
}

// Close stops the membership's loops, closes the controller connection
// and waits for the loops. The controller then sees the unit as dead
// after its timeout. Close is idempotent.
func (m *Membership) Close() error {
	m.cancel()
	m.wg.Wait()
	return nil
}

func (m *Membership) setErr(err error) {
	m.mu.Lock()
	m.err = err
	m.mu.Unlock()
}

func (m *Membership) setSyncErr(err error) {
	m.mu.Lock()
	m.syncErr = err
	m.mu.Unlock()
}

func (m *Membership) setReconcileErr(err error) {
	m.mu.Lock()
	m.recErr = err
	m.mu.Unlock()
}

// current returns the controller connection and a channel closed when it
// is replaced.
func (m *Membership) current() (*wire.Conn, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.conn, m.replaced
}

// register registers the unit on conn under its id, applies the answer
// (a new id, the cluster id, the heartbeat interval) and asks for a full
// reconcile.
func (m *Membership) register(ctx context.Context, conn *wire.Conn) error {
	asked := m.u.ID()
	reply, err := register(ctx, conn, m.cfg, &wirepb.RegisterRequest{
		UnitId: uint32(asked), Incarnation: m.u.Incarnation(), ClusterId: m.u.ClusterID(),
		Addrs: m.cfg.Addrs, Capacity: m.u.Stats().Capacity,
	})
	if err != nil {
		return err
	}
	got, cluster := engine.UnitID(reply.UnitId), reply.ClusterId
	if got != asked && cluster == "" {
		return fmt.Errorf("registered as unit %d, controller answered %d: %w", asked, got, engine.ErrInvalid)
	}
	if cluster == "" {
		cluster = m.u.ClusterID()
	}
	// A new id, or the same number in another cluster: either way, no
	// cell the controller knows references the unit's extents, and the
	// full reconcile below frees them.
	m.u.setIdentity(got, cluster)
	m.regs.Add(1)
	select {
	case m.full <- struct{}{}:
	default: // one is pending already
	}
	interval := defaultHeartbeat
	if reply.HeartbeatIntervalMs > 0 {
		interval = time.Duration(min(reply.HeartbeatIntervalMs, uint64(maxHeartbeat/time.Millisecond))) * time.Millisecond
	}
	m.interval.Store(int64(max(interval, minHeartbeat)))
	return nil
}

func (m *Membership) heartbeats(ctx context.Context) {
	defer m.wg.Done()
	defer func() {
		conn, _ := m.current()
		conn.Close()
	}()
	interval := m.Interval()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	// Report stats at once, so the controller's view (and `tq stat`) does
	// not wait a whole interval for the first numbers.
	m.setErr(m.heartbeat(ctx))
	for {
		conn, _ := m.current()
		select {
		case <-ctx.Done():
			return
		case <-conn.Done():
			m.setErr(joinErr("heartbeat", m.addr, conn.Err()))
			conn.Close()
			if !m.reconnect(ctx) {
				return
			}
		case <-tick.C:
			err := m.heartbeat(ctx)
			if errors.Is(err, engine.ErrNotFound) {
				// The controller forgot the unit: register again,
				// bounded as a reconnection's registration is.
				rctx, cancel := context.WithTimeout(ctx, max(2*m.Interval(), 2*time.Second))
				err = m.register(rctx, conn)
				cancel()
			}
			if err != nil {
				err = joinErr("heartbeat", m.addr, err)
			}
			m.setErr(err)
		}
		// A registration may have asked for another interval.
		if i := m.Interval(); i != interval {
			interval = i
			tick.Reset(interval)
		}
	}
}

func (m *Membership) heartbeat(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, max(2*m.Interval(), time.Second))
	defer cancel()
	st := m.u.Stats()
	hb := &wirepb.HeartbeatRequest{
		UnitId: uint32(m.u.ID()), Incarnation: m.u.Incarnation(), Capacity: st.Capacity, Used: st.Used,
		Segments: int64(st.Segments), HugePages: st.HugePages, PageSize: st.PageSize,
	}
	conn, _ := m.current()
	return conn.Do(ctx, wire.OpHeartbeat, hb, nil, &wirepb.Empty{}, nil)
}

// reconnect dials and registers until it succeeds (true) or ctx ends
// (false), waiting a jittered, doubling backoff between attempts.
func (m *Membership) reconnect(ctx context.Context) bool {
	b := m.newBackoff(min(m.Interval(), m.cfg.MaxBackoff))
	// At most two heartbeat intervals apart: a restarted controller
	// presumes its units alive for a few intervals, and a unit must be
	// back before it reports the unit dead (clients would read its cells
	// as lost meanwhile).
	b.max = max(b.first, min(b.max, 2*m.Interval()))
	for {
		if !b.wait(ctx, nil) {
			return false
		}
		actx, cancel := context.WithTimeout(ctx, max(2*m.Interval(), 2*time.Second))
		conn, err := dialController(actx, m.addr, m.cfg)
		if err == nil {
			if err = m.register(actx, conn); err != nil {
				conn.Close()
			}
		}
		cancel()
		if err == nil {
			m.mu.Lock()
			m.conn, m.err = conn, nil
			close(m.replaced)
			m.replaced = make(chan struct{})
			m.mu.Unlock()
			return true
		}
		m.setErr(joinErr("reconnect", m.addr, err))
	}
}

// syncLoop long-polls UNIT_SYNC and frees what the controller sends.
func (m *Membership) syncLoop(ctx context.Context) {
	defer m.wg.Done()
	b := m.newBackoff(min(m.Interval(), m.cfg.MaxBackoff))
	for {
		conn, replaced := m.current()
		start := time.Now()
		worked, err := m.unitSync(ctx, conn)
		if ctx.Err() != nil {
			return
		}
		m.setSyncErr(err)
		if err == nil && (worked || time.Since(start) >= m.cfg.SyncWait/2) {
			b.reset()
			continue
		}
		// A failure, or an empty answer long before the wait was up (a
		// controller that does not hold the poll): wait before the next
		// poll, never spin. A broken connection is being replaced by the
		// heartbeat loop; the new one ends the wait early.
		if !b.wait(ctx, replaced) {
			return
		}
	}
}

// unitSync runs one UNIT_SYNC on conn and reports whether the answer had
// anything in it.
func (m *Membership) unitSync(ctx context.Context, conn *wire.Conn) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.SyncWait+max(2*m.Interval(), 5*time.Second))
	defer cancel()
	if regs := m.regs.Load(); regs != m.syncRegs {
		m.syncAck, m.syncRegs = 0, regs
	}
	regs := m.syncRegs
	req := &wirepb.UnitSyncRequest{
		UnitId: uint32(m.u.ID()), Incarnation: m.u.Incarnation(), WaitMs: uint64(m.cfg.SyncWait / time.Millisecond),
		Ack: m.syncAck,
	}
	var reply wirepb.UnitSyncReply
	if err := conn.Do(ctx, wire.OpUnitSync, req, nil, &reply, nil); err != nil {
		return false, joinErr("unit sync", m.addr, err)
	}
	free, err := wire.RangesFromPB(reply.Free)
	if err != nil {
		return false, joinErr("unit sync", m.addr, err)
	}
	if _, err := m.u.FreeRanges(free); err != nil {
		return false, err
	}
	if reply.Seq != 0 && m.regs.Load() == regs {
		m.syncAck = reply.Seq // applied: the controller may forget it
	}
	if reply.Reconcile {
		m.requestFull()
	}
	return len(free) > 0 || reply.Reconcile, nil
}

func (m *Membership) requestFull() {
	select {
	case m.full <- struct{}{}:
	default:
	}
}

// reconcileLoop runs full reconciles when asked and periodic ones every
// ReconcileInterval.
func (m *Membership) reconcileLoop(ctx context.Context) {
	defer m.wg.Done()
	tick := time.NewTicker(m.cfg.ReconcileInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.full:
			m.fullReconcile(ctx)
		case <-tick.C:
			select {
			case <-m.full: // a full one covers everything
				m.fullReconcile(ctx)
			default:
				m.periodicReconcile(ctx)
			}
		}
	}
}

// errSuperseded stops a full reconcile whose registration was followed by
// another one, which asked for a full reconcile of its own.
var errSuperseded = errors.New("storage: registered again")

// fullReconcile runs a full reconcile until it completes, retrying with a
// capped backoff. It gives up when ctx ends, when a newer registration
// asked for another one, when the controller does not know the unit (the
// heartbeat loop registers it again, which asks for another), when the
// controller does not implement RECONCILE or is closing, or when the unit
// is closed.
func (m *Membership) fullReconcile(ctx context.Context) {
	b := m.newBackoff(min(m.Interval(), m.cfg.MaxBackoff))
	for {
		// This attempt answers every request made so far.
		select {
		case <-m.full:
		default:
		}
		regs := m.regs.Load()
		err := m.fullOnce(ctx, regs)
		if errors.Is(err, errSuperseded) {
			return
		}
		m.setReconcileErr(err)
		switch {
		case err == nil, ctx.Err() != nil, errors.Is(err, engine.ErrNotFound),
			errors.Is(err, engine.ErrNotSupported), errors.Is(err, engine.ErrClosed):
			return
		}
		_, replaced := m.current()
		if !b.wait(ctx, replaced) {
			return
		}
	}
}

// fullOnce sends the pages of one full reconcile, each answer applied
// before the next page is built.
func (m *Membership) fullOnce(ctx context.Context, regs uint64) error {
	var from uint32
	for {
		if m.regs.Load() != regs {
			return errSuperseded
		}
		rep, next, err := m.u.ReconcileFull(from, m.cfg.ReconcileGrace, m.cfg.ReconcilePage)
		if err != nil {
			return err
		}
		if err := m.reconcile(ctx, rep); err != nil {
			return err
		}
		if rep.Last {
			return nil
		}
		from = next
	}
}

// periodicReconcile reports the extents old enough and not confirmed, as
// many pages as it takes; a failure waits for the next period.
func (m *Membership) periodicReconcile(ctx context.Context) {
	for {
		rep, err := m.u.ReconcilePeriodic(m.cfg.ReconcileGrace, m.cfg.ReconcilePage)
		if err == nil && len(rep.Extents) == 0 {
			return
		}
		if err == nil {
			err = m.reconcile(ctx, rep)
		}
		m.setReconcileErr(err)
		// Every extent listed was freed or confirmed, so the next report
		// holds others; a short one was the last.
		if err != nil || len(rep.Extents) < m.cfg.ReconcilePage {
			return
		}
	}
}

// reconcile sends one RECONCILE and applies its answer; an answer of
// CODE_NOT_READY (the controller is saving a checkpoint) is retried
// after a short, growing backoff.
func (m *Membership) reconcile(ctx context.Context, rep ReconcileReport) error {
	req := &wirepb.ReconcileRequest{
		UnitId: uint32(m.u.ID()), Incarnation: m.u.Incarnation(), Full: rep.Full, Segments: rep.Segments,
		Extents: wire.RangesToPB(rep.Extents), Fences: make([]*wirepb.SegmentFence, len(rep.Fences)),
		Last: rep.Last, LiveSegments: rep.LiveSegments, NextSegment: rep.NextSegment,
	}
	for i, f := range rep.Fences {
		req.Fences[i] = &wirepb.SegmentFence{Segment: f.Segment, Gen: f.Gen}
	}
	b := m.newBackoff(min(notReadyBackoff, m.cfg.MaxBackoff))
	for {
		conn, replaced := m.current()
		var reply wirepb.ReconcileReply
		rctx, cancel := context.WithTimeout(ctx, max(4*m.Interval(), 10*time.Second))
		err := conn.Do(rctx, wire.OpReconcile, req, nil, &reply, nil)
		cancel()
		if errors.Is(err, engine.ErrNotReady) && ctx.Err() == nil {
			if !b.wait(ctx, replaced) {
				return ctx.Err()
			}
			continue
		}
		if err != nil {
			return joinErr("reconcile", m.addr, err)
		}
		free, err := wire.RangesFromPB(reply.Free)
		if err != nil {
			return joinErr("reconcile", m.addr, err)
		}
		keep, err := wire.RangesFromPB(reply.Keep)
		if err != nil {
			return joinErr("reconcile", m.addr, err)
		}
		_, err = m.u.ApplyReconcile(rep, free, keep)
		return err
	}
}

// notReadyBackoff is the first wait before a RECONCILE answered with
// CODE_NOT_READY is sent again.
const notReadyBackoff = 50 * time.Millisecond

// backoff is a jittered wait that doubles up to JoinConfig.MaxBackoff.
type backoff struct {
	first, cur, max time.Duration
}

func (m *Membership) newBackoff(first time.Duration) *backoff {
	first = max(first, time.Millisecond)
	return &backoff{first: first, cur: first, max: max(first, m.cfg.MaxBackoff)}
}

func (b *backoff) reset() { b.cur = b.first }

// wait sleeps for the current backoff, jittered to [cur/2, cur], and
// doubles it. It returns early, true, when wake is closed, and false when
// ctx ends.
func (b *backoff) wait(ctx context.Context, wake <-chan struct{}) bool {
	d := b.cur/2 + rand.N(b.cur/2+1)
	b.cur = min(2*b.cur, b.max)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-wake:
		return true
	case <-t.C:
		return true
	}
}

func dialController(ctx context.Context, addr string, cfg JoinConfig) (*wire.Conn, error) {
	conn, _, err := wire.Dial(ctx, addr, &wirepb.Hello{Role: Role, HostId: cfg.HostID, Token: cfg.Token, Name: cfg.Name}, cfg.Conn)
	return conn, err
}

// register sends REGISTER (host id and name filled in from cfg) and
// returns the controller's answer, checked.
func register(ctx context.Context, conn *wire.Conn, cfg JoinConfig, req *wirepb.RegisterRequest) (*wirepb.RegisterReply, error) {
	req.HostId, req.Name = cfg.HostID, cfg.Name
	var reply wirepb.RegisterReply
	if err := conn.Do(ctx, wire.OpRegister, req, nil, &reply, nil); err != nil {
		return nil, fmt.Errorf("register: %w", err)
	}
	if reply.UnitId == 0 {
		return nil, fmt.Errorf("controller assigned unit id 0: %w", engine.ErrCorrupt)
	}
	return &reply, nil
}

func joinErr(op, addr string, err error) error {
	return &engine.OpError{Op: op, Peer: addr, Err: err}
}
