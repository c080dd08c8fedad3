package storage

// Cluster membership. A unit process joins a cluster in three steps:
//
//	id := AssignID(ctx, ctrl, cfg)   REGISTER with unit_id 0: the controller
//	                                 picks an id (no unit exists yet)
//	u := NewUnit(id, …); serve u     the unit is created with that id and its
//	                                 server starts on its listeners
//	m := Join(ctx, ctrl, u, cfg)     REGISTER again with the id, now with the
//	                                 unit's addresses and capacity, then
//	                                 HEARTBEAT every interval the controller
//	                                 asked for, until m.Close
//
// Membership owns one goroutine. It heartbeats over one controller
// connection; when the connection fails it redials with a capped
// exponential backoff and registers again under the same id, and when the
// controller answers a heartbeat with CODE_NOT_FOUND (it forgot the unit,
// e.g. after a restart) it registers again on the same connection.

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
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
	// again after the connection dropped (0: 5 s).
	MaxBackoff time.Duration
}

func (c JoinConfig) withDefaults() JoinConfig {
	if c.HostID == "" {
		c.HostID = HostID()
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 5 * time.Second
	}
	return c
}

// Heartbeat intervals accepted from the controller.
const (
	defaultHeartbeat = time.Second
	minHeartbeat     = 10 * time.Millisecond
	maxHeartbeat     = time.Minute
)

// AssignID registers a unit that does not exist yet (unit_id 0, no
// capacity) with the controller at controllerAddr and returns the id the
// controller assigned. Create the unit with it ([NewUnit]) and then
// [Join]. Errors wrap [wire.ErrUnavailable] when the controller cannot be
// reached and [wire.ErrUnauthenticated] for a wrong token.
func AssignID(ctx context.Context, controllerAddr string, cfg JoinConfig) (engine.UnitID, error) {
	cfg = cfg.withDefaults()
	conn, err := dialController(ctx, controllerAddr, cfg)
	if err != nil {
		return 0, joinErr("assign id", controllerAddr, err)
	}
	defer conn.Close()
	id, _, err := register(ctx, conn, cfg, 0, 0)
	if err != nil {
		return 0, joinErr("assign id", controllerAddr, err)
	}
	return id, nil
}

// Membership keeps a unit registered with the controller: it heartbeats,
// and reconnects and registers again when the controller connection
// drops. It is safe for concurrent use.
type Membership struct {
	u        *Unit
	addr     string
	cfg      JoinConfig
	interval time.Duration

	cancel   context.CancelFunc // ends the loop; called by Close
	loopDone chan struct{}

	mu   sync.Mutex
	conn *wire.Conn // owned by the loop
	err  error      // the last failure; nil while heartbeats succeed
}

// Join registers u with the controller at controllerAddr under u's id and
// starts heartbeating; [Membership.Close] stops it. u's id must be the one
// the controller assigned (see [AssignID]): a controller that answers with
// another id is an error wrapping [engine.ErrInvalid], as is a unit with
// id 0. ctx bounds the initial registration only.
func Join(ctx context.Context, controllerAddr string, u *Unit, cfg JoinConfig) (*Membership, error) {
	if u.ID() == 0 {
		return nil, joinErr("join", controllerAddr, fmt.Errorf("unit id 0 (get one with AssignID first): %w", engine.ErrInvalid))
	}
	cfg = cfg.withDefaults()
	conn, err := dialController(ctx, controllerAddr, cfg)
	if err != nil {
		return nil, joinErr("join", controllerAddr, err)
	}
	_, interval, err := register(ctx, conn, cfg, u.ID(), u.Stats().Capacity)
	if err != nil {
		conn.Close()
		return nil, joinErr("join", controllerAddr, err)
	}
	lctx, cancel := context.WithCancel(context.Background())
	m := &Membership{u: u, addr: controllerAddr, cfg: cfg, interval: interval, cancel: cancel, loopDone: make(chan struct{}), conn: conn}
	go m.run(lctx)
	return m, nil
}

// ID returns the unit's id.
func (m *Membership) ID() engine.UnitID { return m.u.ID() }

// Interval returns the heartbeat interval the controller asked for.
func (m *Membership) Interval() time.Duration { return m.interval }

// Err returns the last failure to reach the controller (a heartbeat or a
// reconnection), or nil while heartbeats succeed.
func (m *Membership) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// Close stops heartbeating, closes the controller connection and waits for
// the membership's goroutine. The controller then sees the unit as dead
// after its timeout. Close is idempotent.
func (m *Membership) Close() error {
	m.cancel()
	<-m.loopDone
	return nil
}

func (m *Membership) setErr(err error) {
	m.mu.Lock()
	m.err = err
	m.mu.Unlock()
}

func (m *Membership) run(ctx context.Context) {
	defer close(m.loopDone)
	defer func() { m.conn.Close() }()
	tick := time.NewTicker(m.interval)
	defer tick.Stop()
	// Report stats at once, so the controller's view (and `tq stat`) does
	// not wait a whole interval for the first numbers.
	m.setErr(m.heartbeat(ctx))
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.conn.Done():
			m.setErr(joinErr("heartbeat", m.addr, m.conn.Err()))
			m.conn.Close()
			if !m.reconnect(ctx) {
				return
			}
		case <-tick.C:
			err := m.heartbeat(ctx)
			if errors.Is(err, engine.ErrNotFound) {
				// The controller forgot the unit: register again.
				_, _, err = register(ctx, m.conn, m.cfg, m.u.ID(), m.u.Stats().Capacity)
			}
			if err != nil {
				err = joinErr("heartbeat", m.addr, err)
			}
			m.setErr(err)
		}
	}
}

func (m *Membership) heartbeat(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, max(2*m.interval, time.Second))
	defer cancel()
	st := m.u.Stats()
	hb := &wirepb.HeartbeatRequest{
		UnitId: uint32(m.u.ID()), Incarnation: processIncarnation, Capacity: st.Capacity, Used: st.Used, Segments: int64(st.Segments),
		HugePages: st.HugePages, PageSize: st.PageSize,
	}
	return m.conn.Do(ctx, wire.OpHeartbeat, hb, nil, &wirepb.Empty{}, nil)
}

// reconnect dials and registers until it succeeds (true) or ctx ends
// (false), waiting a jittered, doubling backoff between attempts.
func (m *Membership) reconnect(ctx context.Context) bool {
	backoff := min(m.interval, m.cfg.MaxBackoff)
	for {
		wait := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
		}
		actx, cancel := context.WithTimeout(ctx, max(2*m.interval, 2*time.Second))
		conn, err := dialController(actx, m.addr, m.cfg)
		if err == nil {
			_, _, err = register(actx, conn, m.cfg, m.u.ID(), m.u.Stats().Capacity)
			if err != nil {
				conn.Close()
			}
		}
		cancel()
		if err == nil {
			m.mu.Lock()
			m.conn, m.err = conn, nil
			m.mu.Unlock()
			return true
		}
		m.setErr(joinErr("reconnect", m.addr, err))
		backoff = min(2*backoff, m.cfg.MaxBackoff)
	}
}

func dialController(ctx context.Context, addr string, cfg JoinConfig) (*wire.Conn, error) {
	conn, _, err := wire.Dial(ctx, addr, &wirepb.Hello{Role: Role, HostId: cfg.HostID, Token: cfg.Token, Name: cfg.Name}, cfg.Conn)
	return conn, err
}

// register sends REGISTER with id (0: assign one) and returns the id the
// controller answered with and the heartbeat interval it asked for. An id
// other than the one asked for is an error wrapping [engine.ErrInvalid].
func register(ctx context.Context, conn *wire.Conn, cfg JoinConfig, id engine.UnitID, capacity int64) (engine.UnitID, time.Duration, error) {
	clusterMu.Lock()
	cluster := clusterOf[id]
	clusterMu.Unlock()
	req := &wirepb.RegisterRequest{HostId: cfg.HostID, Addrs: cfg.Addrs, Name: cfg.Name, Capacity: capacity, UnitId: uint32(id), Incarnation: processIncarnation, ClusterId: cluster}
	var reply wirepb.RegisterReply
	if err := conn.Do(ctx, wire.OpRegister, req, nil, &reply, nil); err != nil {
		return 0, 0, fmt.Errorf("register: %w", err)
	}
	clusterMu.Lock()
	clusterOf[engine.UnitID(reply.UnitId)] = reply.ClusterId
	clusterMu.Unlock()
	got := engine.UnitID(reply.UnitId)
	switch {
	case got == 0:
		return 0, 0, fmt.Errorf("controller assigned unit id 0: %w", engine.ErrCorrupt)
	case id != 0 && got != id:
		return 0, 0, fmt.Errorf("registered as unit %d, controller answered %d: %w", id, got, engine.ErrInvalid)
	}
	interval := defaultHeartbeat
	if reply.HeartbeatIntervalMs > 0 {
		interval = time.Duration(min(reply.HeartbeatIntervalMs, uint64(maxHeartbeat/time.Millisecond))) * time.Millisecond
	}
	return got, max(interval, minHeartbeat), nil
}

func joinErr(op, addr string, err error) error {
	return &engine.OpError{Op: op, Peer: addr, Err: err}
}

// processIncarnation stands for the incarnation of every unit of this
// process until units draw their own.
var processIncarnation = func() uint64 {
	var b [8]byte
	for {
		crand.Read(b[:])
		if v := binary.LittleEndian.Uint64(b[:]); v != 0 {
			return v
		}
	}
}()

// clusterOf remembers the cluster each unit id of this process was
// assigned in, until units keep their own.
var (
	clusterMu sync.Mutex
	clusterOf = map[engine.UnitID]string{}
)
