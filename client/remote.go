package client

// RemoteMeta: the MetaService of a controller in another process, spoken
// over one multiplexed wire.Conn (see wire/spec.md and controller's
// handlers). Requests are encoded here and replies decoded and validated
// here; the controller's server does the reverse.

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// RemoteConfig configures [DialMeta].
type RemoteConfig struct {
	// Token is presented in the handshake. Empty means the one this user's
	// servers use, found as [Connect] finds it.
	Token string
	// Name identifies this client in the controller's logs.
	Name string
	// Conn tunes the connection (keepalive, ping timeout), and
	// Conn.RequireServerProof makes it refuse a controller that does not
	// prove it knows the token; $TQ_REQUIRE_SERVER_PROOF=1 sets it too
	// (see [RequireServerProof]).
	Conn wire.ConnConfig
	// RetryFor bounds how long a call that may safely be repeated (a
	// read, a keyed fetch, giving rows back) keeps trying to reach a
	// controller that went away (restarted, or the connection broke), on
	// top of its context (0: 60 s; negative: never retry).
	RetryFor time.Duration
	// Lanes bounds the connections over which the small-value KV puts
	// and gets (KV_PUT, KV_GET) of goroutines sharing this client spread:
	// each lane is a connection with its own reader and writer, served
	// by its own loop on the controller, so concurrent callers keep the
	// cores of both ends busy, while the callers of one lane still share
	// its frames and syscalls. A call takes the lane with the fewest calls
	// in flight; a lane is dialed only when every open one has a call in
	// flight, so a client used by one goroutine holds one connection.
	// Every other request goes over the first. 0: 4; 1: one connection.
	Lanes int
	// Host is this client's host identity; empty means [HostID]. A
	// client on the controller's host opens its connections at the
	// controller's unix socket when the controller names one (see
	// [DialMeta]); another value makes it keep to the address given,
	// as a client on another host does.
	Host string
}

// defaultLanes is RemoteConfig.Lanes' default: on a 2-core machine, 16
// goroutines sharing a client did 1.2x the KV puts and gets per second
// over 4 connections that they did over 1 (BenchmarkSmallKV, go-shared).
const defaultLanes = 4

// RemoteMeta is a [MetaService] backed by a controller server across the
// network. It is safe for concurrent use; calls are multiplexed over one
// connection, and small KV puts and gets of concurrent callers over up to
// RemoteConfig.Lanes. Every error it returns is an *[engine.OpError] naming the
// transport and the controller's address, wrapping the cause: an error
// reply from the controller unwraps to its engine sentinel, so
// errors.Is(err, engine.ErrNotFound) works as with a local controller.
//
// When the connection fails (the controller restarted, the network broke),
// calls in flight fail with an error wrapping [engine.ErrUnavailable] and
// the next call dials again. Calls that may be repeated safely — reads,
// listings, fetches (each carries a key: repeated, it returns the rows the
// first attempt took) — repeat themselves over the new connection, for up
// to RemoteConfig.RetryFor. A change (a commit, a clear, an insert) is
// never repeated: when its connection breaks, whether it happened is
// unknown, and the caller decides.
//
// A fetch its caller gives up on (its context ends, or the controller
// stays unreachable) gives its rows back to the task (UNCONSUME), in the
// background when the controller cannot be reached at once; Close waits
// for that. Everything a call returns belongs to the caller.
type RemoteMeta struct {
	kd        keyDataState
	addr      string
	cfg       RemoteConfig
	hello     *wirepb.Hello
	transport string // "tcp" or "unix"
	peer      string // the controller's address, without the scheme

	// lanes[0] carries every request; the others only KV_PUT and
	// KV_GET (RemoteConfig.Lanes).
	lanes []lane

	mu      sync.Mutex
	closing bool // Close waits for the background work
	closed  bool
	info    *wirepb.Hello // the controller's last handshake reply
	// clusterID is info's cluster id, read without mu (see [RemoteMeta.cluster]).
	clusterID atomic.Pointer[string]

	done chan struct{} // closed by Close: background work stops
	// Background give-backs (see giveBack), counted under mu rather than
	// with a sync.WaitGroup: they may start while Close waits for them
	// (closing), which a WaitGroup forbids once its counter is zero.
	bgN    int
	bgIdle chan struct{}      // closed when bgN drops to zero; made by Close's wait
	bgStop context.CancelFunc // ends the give-backs' calls, when Close gives up on them
	bgCtx  context.Context
	keeper sync.WaitGroup // keepConnected
}

var _ MetaService = (*RemoteMeta)(nil)

// lane is one connection of a RemoteMeta; its conn and dialing are
// guarded by the RemoteMeta's mu.
type lane struct {
	conn     *wire.Conn   // nil once it failed, until the next dial
	dialing  *laneDial    // the dial in progress, nil when none
	inflight atomic.Int32 // KV calls using the lane
	// idleUntil (unix ns) keeps a lane other than the first whose dial
	// failed (the controller refuses connections past its limit) out of
	// the choice for laneRetry, so calls do not each dial it again.
	idleUntil atomic.Int64
}

// laneDial is a lane's dial in progress.
type laneDial struct {
	done chan struct{} // closed when the dial ends
	// err is the dial's failure, set before done is closed: the outcome
	// of the calls that waited for it too. Nil when it failed because
	// its caller gave up (then a waiter dials again).
	err error
}

// laneRetry is how long a lane whose dial failed stays unused.
const laneRetry = time.Second

// keepDial is how often keepConnected looks at the first lane: a third of
// the controller's default grace for a client whose connections all
// closed (controller.DefaultHeldClientGrace). A variable for tests.
var keepDial = 5 * time.Second

// newClientID returns 16 random bytes: a client's id for as long as it
// lives (wirepb.Hello.client_id).
func newClientID() []byte {
	id := make([]byte, 16)
	rand.Read(id)
	return id
}

// DialMeta connects to the controller at addr ("tcp://host:port",
// "unix:///path" or "host:port") and performs the handshake. ctx bounds
// the dial and the handshake only.
//
// Every connection is opened at addr. When the controller's handshake
// reply says it runs on this host and serves a unix socket too (its
// local_addrs) in a directory of this user's that nobody else may write
// to (auth.CheckPeerSocket: elsewhere another user may have put a socket
// that relays the handshake), the connection moves there: the client
// opens the socket, shakes hands again, and keeps the new connection when
// that reply names the same cluster and epoch (else the one at addr). A
// request then costs about half the CPU it costs over loopback TCP, and
// the client need not be told the socket's path.
func DialMeta(ctx context.Context, addr string, cfg RemoteConfig) (*RemoteMeta, error) {
	network, address, err := wire.ParseAddr(addr)
	if err != nil {
		return nil, &engine.OpError{Op: "dial", Err: err}
	}
	if cfg.RetryFor == 0 {
		cfg.RetryFor = 60 * time.Second
	}
	token, err := FindToken(cfg.Token)
	if err != nil {
		return nil, &engine.OpError{Op: "dial", Transport: network, Peer: address, Err: err}
	}
	if cfg.Conn.RequireServerProof, err = RequireServerProof(cfg.Conn.RequireServerProof); err != nil {
		return nil, &engine.OpError{Op: "dial", Transport: network, Peer: address, Err: err}
	}
	if cfg.Lanes <= 0 {
		cfg.Lanes = defaultLanes
	}
	r := &RemoteMeta{
		addr: addr, cfg: cfg, transport: network, peer: address, done: make(chan struct{}),
		hello: &wirepb.Hello{Role: "client", HostId: cmp.Or(cfg.Host, HostID()), Token: token, Name: cfg.Name,
			// The same on every lane and redial: the controller takes the
			// client for gone, and gives back the rows it holds, once
			// this client closed them all and did not come back.
			ClientId: newClientID()},
		lanes: make([]lane, cfg.Lanes),
	}
	r.bgCtx, r.bgStop = context.WithCancel(context.Background())
	if _, err := r.connect(ctx); err != nil {
		if errors.Is(err, wire.ErrUnauthenticated) {
			err = fmt.Errorf("%w (%s)", err, auth.TokenHint())
		}
		return nil, r.opErr("dial", err)
	}
	r.keeper.Add(1)
	go r.keepConnected(keepDial)
	return r, nil
}

// keepConnected dials the first lane again, every tick, once its
// connection failed and no call came to dial it. The controller takes a
// client whose connections all closed for gone after its grace
// (tq serve --held-client-grace) and gives back the rows it holds: an
// idle client (a loader in a long step) that lost its connection comes
// back on its own. It ends when Close does.
func (r *RemoteMeta) keepConnected(tick time.Duration) {
	defer r.keeper.Done()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-r.done:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(r.bgCtx, tick)
		r.connect(ctx) // failed: the next tick tries again
		cancel()
	}
}

// Close closes the connection (calls in flight fail with an error
// wrapping [engine.ErrClosed]) once the background work (rows being given
// back) is done, or after closeGrace while the controller cannot be
// reached or does not answer; then the give-backs still running stop,
// and Close waits at most another closeGrace for them. It is idempotent.
func (r *RemoteMeta) Close() error {
	r.mu.Lock()
	if r.closed || r.closing {
		r.mu.Unlock()
		return nil
	}
	r.closing = true
	idle := r.bgIdleLocked()
	r.mu.Unlock()
	// Rows a cancelled fetch took go back before the connection does (a
	// program that cancels its fetches on SIGTERM, then closes, would
	// otherwise leave them consumed); give-backs that start meanwhile are
	// waited for too.
	grace := time.NewTimer(closeGrace)
	defer grace.Stop()
	select {
	case <-idle:
	case <-grace.C:
	}
	r.mu.Lock()
	r.closed = true // no give-back starts from now on
	close(r.done)
	r.bgStop() // those still running stop: their rows stay consumed
	var conns []*wire.Conn
	for i := range r.lanes {
		if c := r.lanes[i].conn; c != nil {
			conns = append(conns, c)
		}
	}
	idle = r.bgIdleLocked()
	r.mu.Unlock()
	r.keeper.Wait() // its dial, if any, ends with bgCtx
	select {
	case <-idle:
	case <-time.After(closeGrace): // a call that does not heed its ctx: the connection's Close ends it
	}
	var errs []error
	for _, c := range conns {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// ClusterID returns the id of the cluster the controller last answered
// for, and its epoch (it grows with every controller start).
func (r *RemoteMeta) ClusterID() (string, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.info == nil {
		return "", 0
	}
	return r.info.ClusterId, r.info.Epoch
}

// cluster returns the id of the cluster the controller answered for in
// the last handshake of any of the connections, "" before the first. It
// changes when a controller starts without the state of the last (in
// memory, or its data directory lost), whose connections are gone by then.
func (r *RemoteMeta) cluster() string {
	if id := r.clusterID.Load(); id != nil {
		return *id
	}
	return ""
}

func (r *RemoteMeta) opErr(op string, err error) error {
	return &engine.OpError{Op: op, Transport: r.transport, Peer: r.peer, Err: err}
}

// errNotSent marks the error of a call made with a context that had
// ended: the controller was sent nothing, so nothing of the call
// happened (see [commitWritten]).
var errNotSent = errors.New("not sent, its context had ended")

var errMetaClosed = fmt.Errorf("controller connection closed: %w", engine.ErrClosed)

// connect returns the first lane's connection, dialing a new one when the
// last failed.
func (r *RemoteMeta) connect(ctx context.Context) (*wire.Conn, error) {
	return r.connectLane(ctx, &r.lanes[0])
}

// kvLane returns the connection of the lane with the fewest KV calls in
// flight (the first among equals, so lanes open only as calls overlap),
// counting the caller's call in the lane it returns until its done runs.
// A lane other than the first that cannot be dialed leaves the call to the
// first.
func (r *RemoteMeta) kvLane(ctx context.Context) (c *wire.Conn, l *lane, err error) {
	l = &r.lanes[0]
	if n := l.inflight.Load(); n > 0 {
		for i := 1; i < len(r.lanes); i++ {
			if m := r.lanes[i].inflight.Load(); m < n && !r.lanes[i].idle() {
				l, n = &r.lanes[i], m
			}
		}
	}
	l.inflight.Add(1)
	if c, err = r.connectLane(ctx, l); err != nil && l != &r.lanes[0] && ctx.Err() == nil {
		l.idleUntil.Store(time.Now().Add(laneRetry).UnixNano())
		l.done()
		l = &r.lanes[0]
		l.inflight.Add(1)
		c, err = r.connectLane(ctx, l)
	}
	return c, l, err
}

// done ends a call kvLane counted in l.
func (l *lane) done() { l.inflight.Add(-1) }

// idle reports a lane kept out of the choice after a failed dial.
func (l *lane) idle() bool {
	t := l.idleUntil.Load()
	return t != 0 && time.Now().UnixNano() < t
}

// connectLane returns l's connection, dialing a new one when the last
// failed. One dial per lane runs at a time; others wait for it and share
// its failure, unless it failed because its caller gave up.
func (r *RemoteMeta) connectLane(ctx context.Context, l *lane) (*wire.Conn, error) {
	for {
		r.mu.Lock()
		switch {
		case r.closed:
			r.mu.Unlock()
			return nil, errMetaClosed
		case l.conn != nil && l.conn.Err() == nil:
			c := l.conn
			r.mu.Unlock()
			return c, nil
		case l.dialing != nil:
			d := l.dialing
			r.mu.Unlock()
			select {
			case <-d.done:
				if d.err != nil {
					return nil, d.err
				}
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if l.conn != nil {
			l.conn.Close() // failed: release its goroutines
			l.conn = nil
		}
		d := &laneDial{done: make(chan struct{})}
		l.dialing = d
		r.mu.Unlock()

		conn, reply, err := r.dial(ctx)
		r.mu.Lock()
		l.dialing = nil
		if err != nil && ctx.Err() == nil {
			d.err = err
		}
		close(d.done)
		if err != nil {
			r.mu.Unlock()
			return nil, err
		}
		if r.closed {
			r.mu.Unlock()
			conn.Close()
			return nil, errMetaClosed
		}
		l.conn = conn
		r.info = reply
		r.clusterID.Store(&reply.ClusterId)
		r.mu.Unlock()
		return conn, nil
	}
}

// dial opens a connection to the controller at r.addr and, when the
// controller names a unix socket on this host, moves it there (see
// DialMeta).
func (r *RemoteMeta) dial(ctx context.Context) (*wire.Conn, *wirepb.Hello, error) {
	conn, reply, err := r.handshake(ctx, r.addr)
	if err != nil {
		return nil, nil, err
	}
	if reply.HostId != r.hello.HostId || r.transport == "unix" {
		return conn, reply, nil
	}
	for _, a := range reply.LocalAddrs {
		path, ok := strings.CutPrefix(a, "unix://")
		if !ok || !filepath.IsAbs(path) {
			continue
		}
		if auth.CheckPeerSocket(path) != nil {
			continue // missing, or where another user may have put it
		}
		lc, lreply, err := r.handshake(ctx, a)
		if err != nil {
			continue
		}
		if lreply.ClusterId != reply.ClusterId || lreply.Epoch != reply.Epoch {
			lc.Close() // another controller (another container's, at the same path)
			continue
		}
		conn.Close()
		return lc, lreply, nil
	}
	return conn, reply, nil
}

// handshake dials addr and checks that a controller answers.
func (r *RemoteMeta) handshake(ctx context.Context, addr string) (*wire.Conn, *wirepb.Hello, error) {
	conn, reply, err := wire.Dial(ctx, addr, proto.Clone(r.hello).(*wirepb.Hello), r.cfg.Conn)
	if err == nil && reply.Role != "controller" {
		conn.Close()
		err = fmt.Errorf("peer is a %q, not a controller: %w", reply.Role, engine.ErrInvalid)
	}
	return conn, reply, err
}

// connLost reports an error that says the connection failed (the request
// may or may not have reached the controller), or that the controller is
// shutting down (CODE_CLOSED: a restart is on its way), rather than an
// answer to the request.
func connLost(err error) bool {
	var re *wire.RemoteError
	if errors.As(err, &re) {
		return re.Code == wirepb.Code_CODE_CLOSED
	}
	return errors.Is(err, engine.ErrUnavailable)
}

// do sends one request and decodes its reply into reply. A request that
// is safe to repeat (retry) is sent again over a new connection when its
// connection fails, for up to RetryFor.
func (r *RemoteMeta) do(ctx context.Context, name string, op wire.Op, req, reply proto.Message) error {
	return r.call(ctx, name, op, req, reply, false)
}

// retry is do for a request that is safe to repeat.
func (r *RemoteMeta) retry(ctx context.Context, name string, op wire.Op, req, reply proto.Message) error {
	return r.call(ctx, name, op, req, reply, true)
}

func (r *RemoteMeta) call(ctx context.Context, name string, op wire.Op, req, reply proto.Message, repeat bool) error {
	return r.callNeeding(ctx, nil, name, op, req, reply, repeat)
}

// callNeeding is call for a request that needs the controller features
// needs (see [wire.FeatureHoldGroup]): a controller whose HELLO does not
// list one would misread the request, so it is not sent, and the call
// fails with an error wrapping [engine.ErrNotSupported]. Each connection
// is checked, a redial's too.
func (r *RemoteMeta) callNeeding(ctx context.Context, needs []string, name string, op wire.Op, req, reply proto.Message, repeat bool) error {
	if err := ctx.Err(); err != nil {
		// Never sent (see wire.Conn.Do): nothing of it happened.
		return r.opErr(name, fmt.Errorf("%w: %w", errNotSent, err))
	}
	if reply == nil {
		reply = &wirepb.Empty{}
	}
	var again repeater
	for {
		c, err := r.connect(ctx)
		for _, need := range needs {
			if err != nil {
				break
			}
			if err = c.Need(need, name); err != nil {
				return r.opErr(name, err)
			}
		}
		if err == nil {
			if err = c.Do(ctx, op, req, nil, reply, nil); err == nil {
				return nil
			}
		} else if !errors.Is(err, engine.ErrClosed) && !errors.Is(err, wire.ErrUnauthenticated) &&
			!errors.Is(err, engine.ErrInvalid) && ctx.Err() == nil {
			// A controller that refuses this client (the token, or it is
			// no controller) will not change its mind: that is no lost
			// connection to dial again.
			err = fmt.Errorf("%w: %w", wire.ErrUnavailable, err)
		}
		if !repeat {
			return r.opErr(name, err)
		}
		if err = r.waitToRepeat(ctx, name, &again, err); err != nil {
			return err
		}
	}
}

// repeater is what a call sent again over new connections keeps between
// tries (see waitToRepeat).
type repeater struct {
	giveUp  time.Time
	backoff time.Duration
}

// waitToRepeat decides whether a call that is safe to repeat and failed
// with err is sent again: it returns nil after waiting the call's backoff
// if err is a lost connection and RetryFor has not passed since the first
// failure, else the error the call ends with.
func (r *RemoteMeta) waitToRepeat(ctx context.Context, name string, again *repeater, err error) error {
	if r.cfg.RetryFor < 0 || ctx.Err() != nil || !connLost(err) {
		return r.opErr(name, err)
	}
	if again.giveUp.IsZero() {
		again.giveUp, again.backoff = time.Now().Add(r.cfg.RetryFor), 10*time.Millisecond
	}
	if time.Now().After(again.giveUp) {
		return r.opErr(name, fmt.Errorf("controller unreachable for %v: %w", r.cfg.RetryFor, err))
	}
	select {
	case <-time.After(again.backoff):
	case <-ctx.Done():
		return r.opErr(name, ctx.Err())
	case <-r.done:
		return r.opErr(name, errMetaClosed)
	}
	again.backoff = min(2*again.backoff, time.Second)
	return nil
}

// doMeta sends a request whose reply is a MetaReply, repeating it over a
// new connection if repeat (see [RemoteMeta.retry]).
func (r *RemoteMeta) doMeta(ctx context.Context, name string, op wire.Op, req proto.Message, repeat bool) (*engine.BatchMeta, error) {
	return r.doMetaNeeding(ctx, nil, name, op, req, repeat)
}

// doMetaNeeding is doMeta for a request that needs the controller
// features needs (see [RemoteMeta.callNeeding]).
func (r *RemoteMeta) doMetaNeeding(ctx context.Context, needs []string, name string, op wire.Op, req proto.Message, repeat bool) (*engine.BatchMeta, error) {
	var reply wirepb.MetaReply
	before := r.cluster()
	if err := r.callNeeding(ctx, needs, name, op, req, &reply, repeat); err != nil {
		return nil, err
	}
	m, err := r.meta(name, reply.Meta, before)
	if err != nil {
		return nil, err
	}
	m.PartitionGen = reply.PartitionGen // a FETCH's (0 in other replies)
	return m, nil
}

// meta decodes a reply's meta, stamped with the cluster that answered
// (see [engine.BatchMeta]): before, the cluster when the call began, if
// no handshake since named another (else it is not stamped: a controller
// started anew during the call, and either may have answered).
func (r *RemoteMeta) meta(name string, p *wirepb.BatchMeta, before string) (*engine.BatchMeta, error) {
	m, err := wire.MetaFromPB(p)
	if err != nil {
		return nil, r.opErr(name, corruptReply(err))
	}
	if r.cluster() == before {
		m.Cluster = before
	}
	return m, nil
}

// corruptReply marks a reply that failed validation: the peer, not the
// caller, is at fault.
func corruptReply(err error) error {
	return fmt.Errorf("invalid reply: %w: %w", engine.ErrCorrupt, err)
}

// selectionToPB encodes a field list: nil selects every produced field.
func selectionToPB(fields []string) *wirepb.FieldSelection {
	if fields == nil {
		return &wirepb.FieldSelection{All: true}
	}
	return &wirepb.FieldSelection{Names: fields}
}

// Insert allocates n rows; see [github.com/tqgo/tq/controller.Controller.Insert].
func (r *RemoteMeta) Insert(ctx context.Context, partition string, n int, fields []string) (*engine.BatchMeta, error) {
	if err := checkPartFields(partition, fields); err != nil {
		return nil, r.opErr("insert", err)
	}
	return r.doMeta(ctx, "insert", wire.OpInsert, &wirepb.InsertRequest{Partition: partition, N: int64(n), Fields: fields}, false)
}

// fetchMargin is the most a blocking fetch's server-side wait is cut
// short of the caller's deadline, so that the server gives up (and
// consumes nothing) before the caller stops listening.
const fetchMargin = 25 * time.Millisecond

// Fetch returns a batch chosen by the controller's sampler; see
// [github.com/tqgo/tq/controller.Controller.Fetch]. With Wait it blocks
// until enough rows are ready or ctx ends: the server waits until shortly
// before ctx's deadline, and without a deadline the call repeats the wait
// each time the server's own limit (its MaxFetchWait) runs out.
//
// Every fetch carries a random key (engine.FetchRequest.Key, unless the
// caller set one). If its connection breaks, the fetch is asked again
// with the same key over a new one and returns the rows the first attempt
// took, if it took any. If the caller gives up (ctx ends) or the controller
// stays unreachable, the rows a late reply or a lost one held are given
// back to the task: a fetch never consumes rows its caller did not receive.
// A reply that does not answer the request (a row of another partition,
// other fields, more rows than a sequential fetch takes) is an error
// wrapping [engine.ErrCorrupt], and its rows are given back too.
func (r *RemoteMeta) Fetch(ctx context.Context, req engine.FetchRequest) (*engine.BatchMeta, error) {
	if err := checkFetch(req); err != nil {
		return nil, r.opErr("fetch", err)
	}
	if req.Key == "" {
		var k [16]byte
		rand.Read(k[:])
		req.Key = string(k[:])
	}
	pb := &wirepb.FetchRequest{
		Partition: req.Partition, Task: req.Task, Fields: req.Fields, BatchSize: int64(req.BatchSize),
		Options:            &wirepb.SamplingOptions{HasRank: req.Options.HasRank, DpRank: int64(req.Options.DPRank), BatchIndex: int64(req.Options.BatchIndex)},
		Key:                []byte(req.Key),
		Sampler:            wire.SamplerSpecToPB(req.Sampler),
		TokenBudget:        req.TokenBudget,
		EndWhenConsumed:    req.EndWhenConsumed,
		Hold:               req.Hold,
		HoldGroup:          []byte(req.HoldGroup),
		PartitionMustExist: req.PartitionMustExist,
		PartitionGen:       req.PartitionGen,
		ClusterId:          req.Cluster,
	}
	var err error
	if pb.Options.Params, err = wire.JSONToPB(req.Options.Params); err != nil {
		return nil, r.opErr("fetch", err)
	}
	m, err := r.fetch(ctx, req, pb)
	if err == nil {
		if cerr := checkFetchReply(req, m); cerr != nil {
			m, err = nil, r.opErr("fetch", corruptReply(cerr))
		}
	}
	if err != nil && !refusedFetch(err) {
		r.giveBack(req.Partition, req.Task, req.Key)
	}
	return m, err
}

// checkFetchReply refuses a FETCH reply that does not answer req: a row of
// another partition, other fields than those asked for, or more rows than
// the sampler ever returns (see fetchMax).
func checkFetchReply(req engine.FetchRequest, m *engine.BatchMeta) error {
	if m.Empty() {
		return nil // "not enough rows yet" names no fields
	}
	if err := checkPartition(m, req.Partition); err != nil {
		return err
	}
	if !sameFields(m, req.Fields) {
		return fmt.Errorf("%d rows with fields %s, asked for %s", m.Len(), engine.QuoteKeys(m.FieldNames()), engine.QuoteKeys(req.Fields))
	}
	if n, ok := fetchMax(req); ok && m.Len() > n {
		return fmt.Errorf("%d rows, asked for at most %d (sampler %s)", m.Len(), n, req.Sampler.Name)
	}
	return nil
}

// checkPartition refuses a reply with a row of another partition than
// the one asked for.
func checkPartition(m *engine.BatchMeta, partition string) error {
	for i, p := range m.Partitions {
		if p != partition {
			return fmt.Errorf("row %d of %d (index %d) is of partition %q, asked for %q", i+1, m.Len(), m.Indexes[i], p, partition)
		}
	}
	return nil
}

// sameFields reports whether m's fields are exactly the named ones.
func sameFields(m *engine.BatchMeta, fields []string) bool {
	for _, f := range fields {
		if _, ok := m.Schema[f]; !ok {
			return false
		}
	}
	for f := range m.Schema {
		if !slices.Contains(fields, f) {
			return false
		}
	}
	return true
}

// fetchMax returns the most rows a fetch returns, where a bound always
// holds: sequential takes at most BatchSize, and so does grpo without a
// rank. Others may return more: a batch kept for a DP group (rank_aware,
// grpo with a rank, token_budget) is the one a peer's request made,
// whatever its batch size; the parts of a final seqlen_balanced batch may
// be of any size; and without a spec the controller's own sampler, which
// may be anyone's, chooses.
func fetchMax(req engine.FetchRequest) (int, bool) {
	switch {
	case req.TokenBudget > 0:
		return 0, false
	case req.Sampler.Name == engine.SamplerSequential,
		req.Sampler.Name == engine.SamplerGRPO && !req.Options.HasRank:
		return req.BatchSize, true
	}
	return 0, false
}

// refusedFetch reports a fetch the controller answered with a refusal of
// its own (a bad request, an unknown field): it consumed nothing.
func refusedFetch(err error) bool {
	var re *wire.RemoteError
	if !errors.As(err, &re) {
		return false
	}
	switch re.Code {
	case wirepb.Code_CODE_INVALID, wirepb.Code_CODE_NOT_FOUND, wirepb.Code_CODE_DTYPE_MISMATCH, wirepb.Code_CODE_NOT_READY:
		return true
	}
	return false
}

func (r *RemoteMeta) fetch(ctx context.Context, req engine.FetchRequest, pb *wirepb.FetchRequest) (*engine.BatchMeta, error) {
	for {
		pb.Wait, pb.TimeoutMs = serverWait(ctx, req.Wait)
		var needs []string
		if len(pb.HoldGroup) > 0 {
			needs = append(needs, wire.FeatureHoldGroup)
		}
		if pb.PartitionMustExist {
			needs = append(needs, wire.FeatureFetchMustExist)
		}
		if pb.PartitionGen != 0 {
			needs = append(needs, wire.FeatureFetchPartitionGen)
		}
		m, err := r.doMetaNeeding(ctx, needs, "fetch", wire.OpFetch, pb, true)
		switch {
		case err == nil && req.Wait && !pb.Wait && m.Empty():
			return nil, r.opErr("fetch", fmt.Errorf("wait for %d rows for task %q: %w", req.BatchSize, req.Task, context.DeadlineExceeded))
		case err == nil:
			return m, nil
		case waitAgain(ctx, pb.Wait, err):
			continue
		}
		return nil, err
	}
}

// serverWait returns what a request that waits on the server (a blocking
// FETCH or KEY_CHANGES) asks for: to wait until shortly before ctx's
// deadline (0: the server's limit, when ctx has none), or, with no time
// left, not to wait but take what there is.
func serverWait(ctx context.Context, wait bool) (bool, uint64) {
	deadline, ok := ctx.Deadline()
	if !wait || !ok {
		return wait, 0
	}
	left := time.Until(deadline)
	if ms := (left - min(left/10, fetchMargin)) / time.Millisecond; ms > 0 {
		return true, uint64(ms)
	}
	return false, 0
}

// waitAgain reports whether a request that waited on the server ended
// with the server's limit (well before ctx's deadline): it is asked again.
func waitAgain(ctx context.Context, waited bool, err error) bool {
	deadline, ok := ctx.Deadline()
	return waited && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) &&
		(!ok || time.Until(deadline) > fetchMargin)
}

// giveBack gives the rows of the fetch named key back to the task, now
// or, while the controller cannot be reached, in the background until
// RetryFor passes or the RemoteMeta closes. Giving back a fetch that took
// nothing changes nothing, and a fetch with that key can no longer take
// rows.
func (r *RemoteMeta) giveBack(partition, task, key string) {
	req := &wirepb.UnconsumeRequest{Partition: partition, Task: task, Key: []byte(key)}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.bgN++
	r.mu.Unlock()
	go func() {
		defer r.bgDone()
		// r.retry stops when Close gives up on it; the rows then stay
		// consumed (the client is going away, and with it the consumer).
		r.retry(r.bgCtx, "unconsume", wire.OpUnconsume, req, nil)
	}()
}

// bgDone ends a background give-back.
func (r *RemoteMeta) bgDone() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.bgN--; r.bgN == 0 && r.bgIdle != nil {
		close(r.bgIdle)
		r.bgIdle = nil
	}
}

// bgIdleLocked returns a channel closed once no give-back runs. The
// caller holds mu.
func (r *RemoteMeta) bgIdleLocked() <-chan struct{} {
	if r.bgN == 0 {
		c := make(chan struct{})
		close(c)
		return c
	}
	if r.bgIdle == nil {
		r.bgIdle = make(chan struct{})
	}
	return r.bgIdle
}

// Unconsume gives back the rows of the fetch named key (see
// [engine.FetchRequest.Key]) to task, now: a caller that fetched with its
// own key and will not use the rows (a streaming loader that stopped with
// batches it never yielded) hands them to the task's other consumers. It
// repeats over a new connection as reads do; see
// [github.com/tqgo/tq/controller.Controller.Unconsume].
func (r *RemoteMeta) Unconsume(ctx context.Context, partition, task, key string) error {
	if err := checkPartFields(partition, nil); err != nil {
		return r.opErr("unconsume", err)
	}
	if err := checkName(nameTask, task); err != nil {
		return r.opErr("unconsume", err)
	}
	return r.retry(ctx, "unconsume", wire.OpUnconsume, &wirepb.UnconsumeRequest{Partition: partition, Task: task, Key: []byte(key)}, nil)
}

// UnconsumeRows gives back indexes, some of the rows of the fetch named
// key, to task, and the fetch keeps the others (held, until Acknowledge
// keeps them or Unconsume gives them back): a loader that yielded the
// first rows of a fetched batch and stopped hands the rest to the task's
// other consumers. It needs a controller whose HELLO lists
// [wire.FeatureUnconsumeRows] (an older one would give back the whole
// fetch): against another it sends nothing and fails with an error
// wrapping [engine.ErrNotSupported]. It repeats over a new connection as
// reads do; see
// [github.com/tqgo/tq/controller.Controller.UnconsumeRows].
func (r *RemoteMeta) UnconsumeRows(ctx context.Context, partition, task, key string, indexes []uint64) error {
	if err := checkPartFields(partition, nil); err != nil {
		return r.opErr("unconsume", err)
	}
	if err := checkName(nameTask, task); err != nil {
		return r.opErr("unconsume", err)
	}
	if len(indexes) == 0 {
		return r.opErr("unconsume", fmt.Errorf("rows of the fetch of task %q given back: no row named: %w", task, engine.ErrInvalid))
	}
	req := &wirepb.UnconsumeRequest{Partition: partition, Task: task, Key: []byte(key), Indexes: indexes}
	return r.callNeeding(ctx, []string{wire.FeatureUnconsumeRows}, "unconsume", wire.OpUnconsume, req, nil, true)
}

// Acknowledge keeps the rows of the held fetch named key (see
// [engine.FetchRequest.Hold]) for good; an error wrapping
// [engine.ErrNotFound] says they were given back and must not be used. It
// repeats over a new connection as reads do; see
// [github.com/tqgo/tq/controller.Controller.Acknowledge].
func (r *RemoteMeta) Acknowledge(ctx context.Context, partition, task, key string) error {
	if err := checkPartFields(partition, nil); err != nil {
		return r.opErr("acknowledge", err)
	}
	if err := checkName(nameTask, task); err != nil {
		return r.opErr("acknowledge", err)
	}
	return r.retry(ctx, "acknowledge", wire.OpAcknowledge, &wirepb.AcknowledgeRequest{Partition: partition, Task: task, Key: []byte(key)}, nil)
}

// MarkDone tells the controller that the partition's producer will add no
// more rows; see [github.com/tqgo/tq/controller.Controller.MarkDone]. It
// is idempotent, so it repeats over a new connection.
func (r *RemoteMeta) MarkDone(ctx context.Context, partition string) error {
	if err := checkPartFields(partition, nil); err != nil {
		return r.opErr("mark done", err)
	}
	return r.retry(ctx, "mark done", wire.OpMarkDone, &wirepb.MarkDoneRequest{Partition: partition}, nil)
}

// ForceFetch returns every row of a partition; see
// [github.com/tqgo/tq/controller.Controller.ForceFetch].
func (r *RemoteMeta) ForceFetch(ctx context.Context, partition string, fields []string) (*engine.BatchMeta, error) {
	if err := checkPartFields(partition, fields); err != nil {
		return nil, r.opErr("force fetch", err)
	}
	return r.partMeta(ctx, "force fetch", wire.OpForceFetch, partition, &wirepb.ForceFetchRequest{Partition: partition, Fields: selectionToPB(fields)})
}

// RowsMeta returns the meta of the given rows; see
// [github.com/tqgo/tq/controller.Controller.RowsMeta].
func (r *RemoteMeta) RowsMeta(ctx context.Context, partition string, indexes []uint64, fields []string) (*engine.BatchMeta, error) {
	if err := checkPartFields(partition, fields); err != nil {
		return nil, r.opErr("rows meta", err)
	}
	return r.partMeta(ctx, "rows meta", wire.OpRowsMeta, partition, &wirepb.RowsMetaRequest{Partition: partition, Indexes: indexes, Fields: selectionToPB(fields)})
}

// partMeta is doMeta, repeated, for a request of rows of one partition: a
// reply with a row of another is corrupt.
func (r *RemoteMeta) partMeta(ctx context.Context, name string, op wire.Op, partition string, req proto.Message) (*engine.BatchMeta, error) {
	m, err := r.doMeta(ctx, name, op, req, true)
	if err != nil {
		return nil, err
	}
	if err := checkPartition(m, partition); err != nil {
		return nil, r.opErr(name, corruptReply(err))
	}
	return m, nil
}

func commitToPB(req engine.CommitRequest) *wirepb.CommitRequest {
	return &wirepb.CommitRequest{Partition: req.Partition, Indexes: req.Indexes, Fields: wire.CommitFieldsToPB(req.Fields), ClusterId: req.Cluster}
}

// Commit records committed cells; see
// [github.com/tqgo/tq/controller.Controller.Commit]. The controller frees
// the cells it replaced.
func (r *RemoteMeta) Commit(ctx context.Context, req engine.CommitRequest) error {
	if err := checkCommit(req); err != nil {
		return r.opErr("commit", err)
	}
	return r.do(ctx, "commit", wire.OpCommit, commitToPB(req), &wirepb.CellsReply{})
}

// CommitKeys is a KV put's controller step; see
// [github.com/tqgo/tq/controller.Controller.CommitKeys].
func (r *RemoteMeta) CommitKeys(ctx context.Context, req engine.KeysCommit) (engine.KeysCommitted, error) {
	if err := checkCommitKeys(req); err != nil {
		return engine.KeysCommitted{}, r.opErr("commit keys", err)
	}
	p := &wirepb.CommitKeysRequest{Partition: req.Partition, Keys: req.Keys, Fields: wire.CommitFieldsToPB(req.Fields), ClusterId: req.Cluster}
	if req.Tags != nil {
		var err error
		if p.Tags, err = wire.TagsToPB(req.Tags); err != nil {
			return engine.KeysCommitted{}, r.opErr("commit keys", err)
		}
		p.HasTags = true
	}
	var reply wirepb.CommitKeysReply
	if err := r.do(ctx, "commit keys", wire.OpCommitKeys, p, &reply); err != nil {
		return engine.KeysCommitted{}, err
	}
	var out engine.KeysCommitted
	var err error
	if out.Replaced, err = wire.AddrsFromPB(reply.Replaced); err != nil {
		return engine.KeysCommitted{}, r.opErr("commit keys", corruptReply(err))
	}
	if len(out.Replaced) == 0 {
		out.Replaced = nil
	}
	if len(reply.Tags) != len(req.Keys) {
		return engine.KeysCommitted{}, r.opErr("commit keys", corruptReply(fmt.Errorf("%d tag maps for %d keys", len(reply.Tags), len(req.Keys))))
	}
	if out.Tags, err = wire.TagsFromPB(reply.Tags); err != nil {
		return engine.KeysCommitted{}, r.opErr("commit keys", corruptReply(err))
	}
	out.Fields = reply.Fields
	return out, nil
}

// ResolveKeys maps keys to rows, creating missing ones with create; see
// [github.com/tqgo/tq/controller.Controller.ResolveKeysCreated].
func (r *RemoteMeta) ResolveKeys(ctx context.Context, partition string, keys, fields []string, create bool) (*engine.BatchMeta, []int, error) {
	if err := checkPartKeys(partition, keys, fields); err != nil {
		return nil, nil, r.opErr("resolve keys", err)
	}
	var reply wirepb.ResolveKeysReply
	req := &wirepb.ResolveKeysRequest{Partition: partition, Keys: keys, Fields: selectionToPB(fields), Create: create}
	before := r.cluster()
	if err := r.call(ctx, "resolve keys", wire.OpResolveKeys, req, &reply, !create); err != nil {
		return nil, nil, err
	}
	m, err := r.meta("resolve keys", reply.Meta, before)
	if err != nil {
		return nil, nil, err
	}
	if m.Len() != len(keys) {
		return nil, nil, r.opErr("resolve keys", corruptReply(fmt.Errorf("%d rows for %d keys", m.Len(), len(keys))))
	}
	var created []int
	if len(reply.Created) > 0 {
		created = make([]int, len(reply.Created))
		for i, c := range reply.Created {
			if c < 0 || c >= int64(len(keys)) {
				return nil, nil, r.opErr("resolve keys", corruptReply(fmt.Errorf("created position %d of %d keys", c, len(keys))))
			}
			created[i] = int(c)
		}
	}
	return m, created, nil
}

// KeysOf returns each row's key; see [github.com/tqgo/tq/controller.Controller.KeysOf].
func (r *RemoteMeta) KeysOf(ctx context.Context, partition string, indexes []uint64) ([]string, error) {
	if err := checkName(namePartition, partition); err != nil {
		return nil, r.opErr("keys of", err)
	}
	var reply wirepb.KeysReply
	if err := r.retry(ctx, "keys of", wire.OpKeysOf, &wirepb.KeysOfRequest{Partition: partition, Indexes: indexes}, &reply); err != nil {
		return nil, err
	}
	if len(reply.Keys) != len(indexes) {
		return nil, r.opErr("keys of", corruptReply(fmt.Errorf("%d keys for %d rows", len(reply.Keys), len(indexes))))
	}
	return reply.Keys, nil
}

// SetTags merges tags into rows; see [github.com/tqgo/tq/controller.Controller.SetTags].
func (r *RemoteMeta) SetTags(ctx context.Context, partition string, indexes []uint64, tags []engine.Tags) error {
	if err := checkName(namePartition, partition); err != nil {
		return r.opErr("set tags", err)
	}
	// Each row named as the controller names it.
	if err := checkTags(tags, func(i int) string {
		if i < len(indexes) {
			return fmt.Sprintf("row %d", indexes[i])
		}
		return fmt.Sprintf("tag map %d (of %d for %d rows)", i, len(tags), len(indexes))
	}); err != nil {
		return r.opErr("set tags", err)
	}
	tb, err := wire.TagsToPB(tags)
	if err != nil {
		return r.opErr("set tags", err)
	}
	return r.do(ctx, "set tags", wire.OpSetTags, &wirepb.SetTagsRequest{Partition: partition, Indexes: indexes, Tags: tb}, nil)
}

// ListKeys returns each partition's keys with their tags; see
// [github.com/tqgo/tq/controller.Controller.ListKeys]. It reads every page
// (see [RemoteMeta.ListKeysPage]), so any number of keys can be listed.
// Whole-number tags come back as int64.
func (r *RemoteMeta) ListKeys(ctx context.Context, partition string) (map[string][]engine.KeyInfo, error) {
	return r.ListKeysWhere(ctx, partition, nil)
}

// ListKeysWhere is [RemoteMeta.ListKeys] of the keys whose tags pass
// where: the controller filters, so only those keys cross the wire.
func (r *RemoteMeta) ListKeysWhere(ctx context.Context, partition string, where engine.TagFilter) (map[string][]engine.KeyInfo, error) {
	out := map[string][]engine.KeyInfo{}
	var cursor []byte
	for {
		page, next, err := r.ListKeysPageWhere(ctx, partition, where, cursor, 0)
		if err != nil {
			return nil, err
		}
		for _, pk := range page {
			out[pk.Partition] = append(out[pk.Partition], pk.Keys...)
		}
		if next == nil {
			return out, nil
		}
		cursor = next
	}
}

// PartitionKeys is one partition's part of a page of keys.
type PartitionKeys struct {
	Partition string
	Keys      []engine.KeyInfo
}

// ListKeysPage returns one page of keys (see
// [github.com/tqgo/tq/controller.Controller.ListKeysPage]): pass nil for
// the first and the returned cursor for each next one, until it is nil.
// limit 0 takes the server's page size.
func (r *RemoteMeta) ListKeysPage(ctx context.Context, partition string, cursor []byte, limit int) ([]PartitionKeys, []byte, error) {
	return r.ListKeysPageWhere(ctx, partition, nil, cursor, limit)
}

// ListKeysPageWhere is [RemoteMeta.ListKeysPage] of the keys whose tags
// pass where (see
// [github.com/tqgo/tq/controller.Controller.ListKeysPageWhere]): a page
// may then hold no keys and still have a next cursor.
func (r *RemoteMeta) ListKeysPageWhere(ctx context.Context, partition string, where engine.TagFilter, cursor []byte, limit int) ([]PartitionKeys, []byte, error) {
	if err := checkUTF8(namePartition, partition); err != nil {
		return nil, nil, r.opErr("list keys", err)
	}
	pw, err := wire.TagFilterToPB(where)
	if err != nil {
		return nil, nil, r.opErr("list keys", err)
	}
	var reply wirepb.ListKeysReply
	if err := r.retry(ctx, "list keys", wire.OpListKeys, &wirepb.ListKeysRequest{Partition: partition, Cursor: cursor, Limit: int64(limit), Where: pw}, &reply); err != nil {
		return nil, nil, err
	}
	out := make([]PartitionKeys, len(reply.Partitions))
	for p, pk := range reply.Partitions {
		list := make([]engine.KeyInfo, len(pk.Keys))
		for i, k := range pk.Keys {
			tags, err := wire.JSONFromPB(k.Tags)
			if err != nil {
				return nil, nil, r.opErr("list keys", corruptReply(err))
			}
			list[i] = engine.KeyInfo{Key: k.Key, Index: k.Index, Tags: tags}
		}
		out[p] = PartitionKeys{Partition: pk.Partition, Keys: list}
	}
	switch {
	case len(reply.Next) == 0:
		return out, nil, nil
	case len(out) == 0 && len(where) == 0, bytes.Equal(reply.Next, cursor):
		// A page that does not move on would be asked for forever.
		return nil, nil, r.opErr("list keys", corruptReply(fmt.Errorf("a page that does not advance (%d partitions)", len(out))))
	}
	return out, reply.Next, nil
}

// DeleteTags removes the tags names from every one of keys, atomically;
// see [github.com/tqgo/tq/controller.Controller.DeleteTags]. Removing
// what is gone changes nothing, so the call is repeated over a new
// connection when its own breaks.
func (r *RemoteMeta) DeleteTags(ctx context.Context, partition string, keys, names []string) ([]engine.Tags, error) {
	if err := checkPartKeys(partition, keys, nil); err != nil {
		return nil, r.opErr("delete tags", err)
	}
	if err := checkTagNames(names); err != nil {
		return nil, r.opErr("delete tags", err)
	}
	var reply wirepb.DeleteTagsReply
	if err := r.retry(ctx, "delete tags", wire.OpDeleteTags, &wirepb.DeleteTagsRequest{Partition: partition, Keys: keys, Names: names}, &reply); err != nil {
		return nil, err
	}
	if len(reply.Tags) != len(keys) {
		return nil, r.opErr("delete tags", corruptReply(fmt.Errorf("%d tag maps for %d keys", len(reply.Tags), len(keys))))
	}
	tags, err := wire.TagsFromPB(reply.Tags)
	if err != nil {
		return nil, r.opErr("delete tags", corruptReply(err))
	}
	return tags, nil
}

// CompareAndSetTag sets one tag of one key if it holds req.Old; see
// [github.com/tqgo/tq/controller.Controller.CompareAndSetTag]. A swap is
// a change: when its connection breaks, whether it happened is unknown
// (the error wraps [engine.ErrUnavailable]); ask again with the value
// the caller last read.
func (r *RemoteMeta) CompareAndSetTag(ctx context.Context, req engine.TagSwap) (engine.TagSwapped, error) {
	if err := checkSwap(req); err != nil {
		return engine.TagSwapped{}, r.opErr("compare and set tag", err)
	}
	pb := &wirepb.CompareAndSetTagRequest{Partition: req.Partition, Key: req.Key, Name: req.Name}
	var err error
	if pb.OldValue, err = wire.TagValueToPB(req.Old); err != nil {
		return engine.TagSwapped{}, r.opErr("compare and set tag", err)
	}
	if pb.NewValue, err = wire.TagValueToPB(req.New); err != nil {
		return engine.TagSwapped{}, r.opErr("compare and set tag", err)
	}
	var reply wirepb.CompareAndSetTagReply
	if err := r.do(ctx, "compare and set tag", wire.OpCompareAndSetTag, pb, &reply); err != nil {
		return engine.TagSwapped{}, err
	}
	cur, err := wire.TagValueFromPB(reply.Current)
	if err != nil {
		return engine.TagSwapped{}, r.opErr("compare and set tag", corruptReply(err))
	}
	return engine.TagSwapped{Swapped: reply.Swapped, Current: cur}, nil
}

// KeyChanges lists the keys of a partition changed after a cursor; see
// [github.com/tqgo/tq/controller.Controller.KeyChanges]. With Wait it
// blocks until there is a change or ctx ends: the server waits until
// shortly before ctx's deadline, and without a deadline the call repeats
// the wait each time the server's own limit runs out. When ctx ends the
// client sends CANCEL, which ends the wait on the server. A listing
// changes nothing, so the call is repeated over a new connection when its
// own breaks.
func (r *RemoteMeta) KeyChanges(ctx context.Context, req engine.ChangesRequest) (engine.KeyChanges, error) {
	if err := checkChanges(req); err != nil {
		return engine.KeyChanges{}, r.opErr("key changes", err)
	}
	pb := &wirepb.KeyChangesRequest{Partition: req.Partition, Cursor: req.Cursor, Limit: int64(req.Limit)}
	for {
		pb.Wait, pb.TimeoutMs = serverWait(ctx, req.Wait)
		var reply wirepb.KeyChangesReply
		err := r.retry(ctx, "key changes", wire.OpKeyChanges, pb, &reply)
		switch {
		case err == nil && req.Wait && !pb.Wait && len(reply.Changes) == 0 && !reply.Reset_:
			return engine.KeyChanges{}, r.opErr("key changes", fmt.Errorf("wait for a change: %w", context.DeadlineExceeded))
		case err == nil:
			return r.keyChanges(&reply)
		case waitAgain(ctx, pb.Wait, err):
			continue
		}
		return engine.KeyChanges{}, err
	}
}

func (r *RemoteMeta) keyChanges(reply *wirepb.KeyChangesReply) (engine.KeyChanges, error) {
	out := engine.KeyChanges{Cursor: reply.Cursor, Reset: reply.Reset_, More: reply.More}
	if len(out.Cursor) == 0 {
		out.Cursor = nil
	}
	if len(reply.Changes) > 0 {
		out.Changes = make([]engine.KeyChange, len(reply.Changes))
	}
	for i, kc := range reply.Changes {
		tags, err := wire.JSONFromPB(kc.Tags)
		if err != nil {
			return engine.KeyChanges{}, r.opErr("key changes", corruptReply(err))
		}
		out.Changes[i] = engine.KeyChange{Key: kc.Key, Index: kc.Index, Tags: tags, Cleared: kc.Cleared}
	}
	return out, nil
}

// ProductionStatus reports production per row and field; see
// [github.com/tqgo/tq/controller.Controller.ProductionStatus].
func (r *RemoteMeta) ProductionStatus(ctx context.Context, partition string, fields []string) (engine.ProductionStatus, error) {
	if err := checkPartFields(partition, fields); err != nil {
		return engine.ProductionStatus{}, r.opErr("production status", err)
	}
	var reply wirepb.ProductionStatusReply
	if err := r.retry(ctx, "production status", wire.OpProductionStatus, &wirepb.ProductionStatusRequest{Partition: partition, Fields: fields}, &reply); err != nil {
		return engine.ProductionStatus{}, err
	}
	rows, nf := len(reply.Indexes), len(reply.Fields)
	if uint64(len(reply.Produced)) != uint64(rows)*uint64(nf) {
		return engine.ProductionStatus{}, r.opErr("production status", corruptReply(fmt.Errorf("%d production bits for %d rows × %d fields", len(reply.Produced), rows, nf)))
	}
	st := engine.ProductionStatus{Indexes: reply.Indexes, Fields: reply.Fields, Produced: make([][]bool, rows)}
	if st.Indexes == nil {
		st.Indexes = []uint64{}
	}
	for i := range st.Produced {
		st.Produced[i] = reply.Produced[i*nf : (i+1)*nf : (i+1)*nf]
	}
	return st, nil
}

// ConsumptionStatus reports a task's consumption per row; see
// [github.com/tqgo/tq/controller.Controller.ConsumptionStatus].
func (r *RemoteMeta) ConsumptionStatus(ctx context.Context, partition, task string) (engine.ConsumptionStatus, error) {
	if err := errors.Join(checkName(namePartition, partition), checkName(nameTask, task)); err != nil {
		return engine.ConsumptionStatus{}, r.opErr("consumption status", err)
	}
	var reply wirepb.ConsumptionStatusReply
	if err := r.retry(ctx, "consumption status", wire.OpConsumptionStatus, &wirepb.ConsumptionStatusRequest{Partition: partition, Task: task}, &reply); err != nil {
		return engine.ConsumptionStatus{}, err
	}
	if len(reply.Consumed) != len(reply.Indexes) {
		return engine.ConsumptionStatus{}, r.opErr("consumption status", corruptReply(fmt.Errorf("%d consumption bits for %d rows", len(reply.Consumed), len(reply.Indexes))))
	}
	st := engine.ConsumptionStatus{Indexes: reply.Indexes, Consumed: reply.Consumed, Held: reply.Held}
	if st.Indexes == nil {
		st.Indexes, st.Consumed = []uint64{}, []bool{}
	}
	return st, nil
}

// ResetConsumption makes a task's consumed rows fetchable again (every
// task's with task ""); see [github.com/tqgo/tq/controller.Controller.ResetConsumption].
func (r *RemoteMeta) ResetConsumption(ctx context.Context, partition, task string) error {
	if err := errors.Join(checkName(namePartition, partition), checkUTF8(nameTask, task)); err != nil {
		return r.opErr("reset consumption", err)
	}
	return r.do(ctx, "reset consumption", wire.OpResetConsumption, &wirepb.ResetConsumptionRequest{Partition: partition, Task: task}, nil)
}

// ClearRows removes rows and returns the locations of their cells; see
// [github.com/tqgo/tq/controller.Controller.ClearRows].
func (r *RemoteMeta) ClearRows(ctx context.Context, partition string, indexes []uint64) error {
	if err := checkName(namePartition, partition); err != nil {
		return r.opErr("clear rows", err)
	}
	return r.do(ctx, "clear rows", wire.OpClearRows, &wirepb.ClearRowsRequest{Partition: partition, Indexes: indexes}, &wirepb.CellsReply{})
}

// ClearKeys removes the rows of keys; see [github.com/tqgo/tq/controller.Controller.ClearKeys].
func (r *RemoteMeta) ClearKeys(ctx context.Context, partition string, keys []string) error {
	if err := checkPartKeys(partition, keys, nil); err != nil {
		return r.opErr("clear keys", err)
	}
	return r.do(ctx, "clear keys", wire.OpClearKeys, &wirepb.ClearKeysRequest{Partition: partition, Keys: keys}, &wirepb.CellsReply{})
}

// ClearPartition drops a partition; see
// [github.com/tqgo/tq/controller.Controller.ClearPartition].
func (r *RemoteMeta) ClearPartition(ctx context.Context, partition string) error {
	if err := checkName(namePartition, partition); err != nil {
		return r.opErr("clear partition", err)
	}
	return r.do(ctx, "clear partition", wire.OpClearPartition, &wirepb.ClearPartitionRequest{Partition: partition}, &wirepb.CellsReply{})
}

// Partitions lists partition ids in sorted order.
func (r *RemoteMeta) Partitions(ctx context.Context) ([]string, error) {
	var reply wirepb.PartitionsReply
	if err := r.retry(ctx, "partitions", wire.OpPartitions, &wirepb.Empty{}, &reply); err != nil {
		return nil, err
	}
	if reply.Partitions == nil {
		return []string{}, nil
	}
	return reply.Partitions, nil
}

func fieldStatsFromPB(p *wirepb.FieldStats) (engine.FieldStats, error) {
	f := engine.FieldStats{Name: p.Name, Produced: int(p.Produced)}
	var err error
	if f.DType, err = wire.DTypeFromPB(p.Dtype); err != nil {
		return f, err
	}
	if f.Kind, err = wire.KindFromPB(p.Kind); err != nil {
		return f, err
	}
	if p.Shape != nil { // absent: no shape (the server sends unknown for that)
		if f.Shape, err = wire.ShapeFromPB(p.Shape); err != nil {
			return f, err
		}
	}
	return f, nil
}

// Stats summarizes a partition; see [github.com/tqgo/tq/controller.Controller.Stats]. Created
// has millisecond precision.
func (r *RemoteMeta) Stats(ctx context.Context, partition string) (engine.PartitionStats, error) {
	if err := checkName(namePartition, partition); err != nil {
		return engine.PartitionStats{}, r.opErr("stats", err)
	}
	var p wirepb.PartitionStats
	if err := r.retry(ctx, "stats", wire.OpStats, &wirepb.PartitionRequest{Partition: partition}, &p); err != nil {
		return engine.PartitionStats{}, err
	}
	st, err := statsFromPB(&p)
	if err != nil {
		return engine.PartitionStats{}, r.opErr("stats", corruptReply(err))
	}
	return st, nil
}

// AllStats summarizes every partition, by name, as [RemoteMeta.Stats]
// does one: a page of them a round trip (STATS_PAGE answers up to 4096,
// or 8 MiB, at a time), where listing the partitions and asking each
// takes one per partition. Each partition's figures are of their own
// instant, not the page's. From a controller that predates STATS_PAGE
// (it answers an error wrapping [engine.ErrNotSupported]) it lists the
// partitions and asks each, leaving out one cleared meanwhile.
func (r *RemoteMeta) AllStats(ctx context.Context) ([]engine.PartitionStats, error) {
	all := []engine.PartitionStats{}
	after := ""
	for {
		var reply wirepb.StatsPageReply
		err := r.retry(ctx, "stats page", wire.OpStatsPage, &wirepb.StatsPageRequest{After: after}, &reply)
		if errors.Is(err, engine.ErrNotSupported) {
			return r.statsOneByOne(ctx)
		}
		if err != nil {
			return nil, err
		}
		last := after
		for _, p := range reply.Partitions {
			if p.Partition <= last {
				return nil, r.opErr("stats page", fmt.Errorf("the controller answered the page after %q with partition %q after %q, out of order: %w", after, p.Partition, last, engine.ErrCorrupt))
			}
			last = p.Partition
			st, err := statsFromPB(p)
			if err != nil {
				return nil, r.opErr("stats page", corruptReply(err))
			}
			all = append(all, st)
		}
		if reply.NextAfter == "" {
			return all, nil
		}
		if err := nextPage(after, reply.NextAfter); err != nil {
			return nil, r.opErr("stats page", err)
		}
		after = reply.NextAfter
	}
}

// nextPage refuses a paged listing's next_after that does not advance
// past after: asking again would loop, and stopping would give part of
// the list as all of it.
func nextPage(after, next string) error {
	if next <= after {
		return fmt.Errorf("the controller answered the page after %q with next_after %q, which does not advance: %w", after, next, engine.ErrCorrupt)
	}
	return nil
}

// statsOneByOne is AllStats from a controller without STATS_PAGE.
func (r *RemoteMeta) statsOneByOne(ctx context.Context) ([]engine.PartitionStats, error) {
	names, err := r.Partitions(ctx)
	if err != nil {
		return nil, err
	}
	all := []engine.PartitionStats{}
	for _, p := range names {
		st, err := r.Stats(ctx, p)
		if errors.Is(err, engine.ErrNotFound) {
			continue // cleared meanwhile
		}
		if err != nil {
			return nil, err // not a list short by a partition, given as whole
		}
		all = append(all, st)
	}
	return all, nil
}

func statsFromPB(p *wirepb.PartitionStats) (engine.PartitionStats, error) {
	st := engine.PartitionStats{
		Partition: p.Partition, Rows: int(p.Rows), Reserved: int(p.Reserved), Keys: int(p.Keys),
		Produced: int(p.Produced), Progress: p.Progress, IndexesUse: int(p.IndexesInUse), IndexesFree: int(p.IndexesFree), Done: p.Done,
	}
	if p.CreatedUnixMs != 0 {
		st.Created = time.UnixMilli(p.CreatedUnixMs)
	}
	for _, pf := range p.Fields {
		f, err := fieldStatsFromPB(pf)
		if err != nil {
			return engine.PartitionStats{}, err
		}
		st.Fields = append(st.Fields, f)
	}
	for _, t := range p.Tasks {
		st.Tasks = append(st.Tasks, engine.TaskStats{Task: t.Task, Consumed: int(t.Consumed), Progress: t.Progress, Held: int(t.Held)})
	}
	return st, nil
}

// Fields describes a partition's fields; see [github.com/tqgo/tq/controller.Controller.Fields].
func (r *RemoteMeta) Fields(ctx context.Context, partition string) ([]engine.FieldStats, error) {
	if err := checkName(namePartition, partition); err != nil {
		return nil, r.opErr("fields", err)
	}
	var reply wirepb.FieldsReply
	if err := r.retry(ctx, "fields", wire.OpFields, &wirepb.PartitionRequest{Partition: partition}, &reply); err != nil {
		return nil, err
	}
	out := make([]engine.FieldStats, len(reply.Fields))
	for i, pf := range reply.Fields {
		f, err := fieldStatsFromPB(pf)
		if err != nil {
			return nil, r.opErr("fields", corruptReply(err))
		}
		out[i] = f
	}
	return out, nil
}

// Units lists the storage units registered with the controller, by id.
// Units that stopped sending heartbeats are listed with Alive false;
// LastHeartbeat has millisecond precision.
func (r *RemoteMeta) Units(ctx context.Context) ([]engine.UnitInfo, error) {
	var reply wirepb.UnitsReply
	if err := r.retry(ctx, "units", wire.OpUnits, &wirepb.Empty{}, &reply); err != nil {
		return nil, err
	}
	out := make([]engine.UnitInfo, len(reply.Units))
	for i, u := range reply.Units {
		if u.UnitId == 0 {
			return nil, r.opErr("units", corruptReply(fmt.Errorf("unit id 0: %w", engine.ErrInvalid)))
		}
		out[i] = engine.UnitInfo{
			ID: engine.UnitID(u.UnitId), Incarnation: u.Incarnation, Host: u.HostId, Addrs: u.Addrs, Name: u.Name, Alive: u.Alive,
			Capacity: u.Capacity, Used: u.Used, Segments: u.Segments, PageSize: u.PageSize, HugePages: u.HugePages,
			Draining: u.Draining,
		}
		if u.LastHeartbeatUnixMs != 0 {
			out[i].LastHeartbeat = time.UnixMilli(u.LastHeartbeatUnixMs)
		}
	}
	return out, nil
}

// DrainUnit marks storage unit id draining (clients place no new cells on
// it; see [Client.Drain] for moving its cells off) or, with draining
// false, returns it to service, and returns the unit as the controller
// sees it now.
//
// Errors: [engine.ErrNotFound] for a unit not registered;
// [engine.ErrCapacity] when it is the last live unit that takes
// placements.
func (r *RemoteMeta) DrainUnit(ctx context.Context, id engine.UnitID, draining bool) (engine.UnitInfo, error) {
	var reply wirepb.UnitInfo
	if err := r.retry(ctx, "drain unit", wire.OpDrainUnit, &wirepb.DrainUnitRequest{UnitId: uint32(id), Draining: draining}, &reply); err != nil {
		return engine.UnitInfo{}, err
	}
	return engine.UnitInfo{ID: engine.UnitID(reply.UnitId), Incarnation: reply.Incarnation, Host: reply.HostId, Addrs: reply.Addrs,
		Name: reply.Name, Alive: reply.Alive, Capacity: reply.Capacity, Used: reply.Used, Draining: reply.Draining}, nil
}

// UnitCells returns a page of the cells located on unit, from cursor (nil
// for the first page): at most limit cells (0: the controller's page) and
// about maxBytes of them (0: its default). next is nil after the last
// page.
func (r *RemoteMeta) UnitCells(ctx context.Context, unit engine.UnitID, cursor []byte, limit int, maxBytes int64) ([]engine.UnitCell, []byte, error) {
	var reply wirepb.UnitCellsReply
	req := &wirepb.UnitCellsRequest{UnitId: uint32(unit), Cursor: cursor, Limit: int64(limit), MaxBytes: maxBytes}
	if err := r.retry(ctx, "unit cells", wire.OpUnitCells, req, &reply); err != nil {
		return nil, nil, err
	}
	locs, err := wire.AddrsFromPB(reply.Locs)
	n := len(reply.Indexes)
	if err == nil && (len(reply.Partitions) != n || len(reply.Fields) != n || len(locs) != n) {
		err = fmt.Errorf("%d rows, %d partitions, %d fields, %d locations: %w", n, len(reply.Partitions), len(reply.Fields), len(locs), engine.ErrInvalid)
	}
	if err != nil {
		return nil, nil, r.opErr("unit cells", corruptReply(err))
	}
	out := make([]engine.UnitCell, n)
	for i := range out {
		out[i] = engine.UnitCell{Partition: reply.Partitions[i], Index: reply.Indexes[i], Field: reply.Fields[i], Loc: locs[i]}
	}
	return out, reply.Next, nil
}

// MoveCells commits copies of cells of partition: cell i takes
// moves[i].To if it is still at moves[i].From. It returns, per cell,
// whether it is at To now; a copy not taken is the caller's to free. The
// request is safe to repeat (a cell already at To reports moved).
// cluster, when not "", is the cluster whose units the copies were placed
// on (see [engine.CommitRequest]): a controller of another cluster refuses
// the move with an error wrapping [engine.ErrLost].
func (r *RemoteMeta) MoveCells(ctx context.Context, partition string, moves []engine.CellMove, cluster string) ([]bool, error) {
	req := &wirepb.MoveCellsRequest{Partition: partition, Indexes: make([]uint64, len(moves)), Fields: make([]string, len(moves)), ClusterId: cluster}
	from := make([]engine.CellLoc, len(moves))
	to := make([]engine.CellLoc, len(moves))
	for i, m := range moves {
		req.Indexes[i], req.Fields[i], from[i], to[i] = m.Index, m.Field, m.From, m.To
	}
	req.From, req.To = wire.AddrsToPB(from), wire.AddrsToPB(to)
	var reply wirepb.MoveCellsReply
	if err := r.retry(ctx, "move cells", wire.OpMoveCells, req, &reply); err != nil {
		return nil, err
	}
	if len(reply.Moved) != len(moves) {
		return nil, r.opErr("move cells", corruptReply(fmt.Errorf("%d answers for %d cells: %w", len(reply.Moved), len(moves), engine.ErrInvalid)))
	}
	return reply.Moved, nil
}

// Moved returns where the cells that were at from live now (the zero
// CellLoc for a cell the controller knows of no move of).
func (r *RemoteMeta) Moved(ctx context.Context, from []engine.CellLoc) ([]engine.CellLoc, error) {
	var reply wirepb.MovedReply
	if err := r.retry(ctx, "moved", wire.OpMoved, &wirepb.MovedRequest{From: wire.AddrsToPB(from)}, &reply); err != nil {
		return nil, err
	}
	to, err := wire.AddrsFromPB(reply.To)
	if err == nil && len(to) != len(from) {
		err = fmt.Errorf("%d answers for %d cells: %w", len(to), len(from), engine.ErrInvalid)
	}
	if err != nil {
		return nil, r.opErr("moved", corruptReply(err))
	}
	return to, nil
}

// SaveCheckpoint makes the controller save checkpoint name (its metadata
// and, when it reaches the storage units, every cell's bytes) under its
// checkpoint directory; see
// [github.com/tqgo/tq/controller.Server.SaveCheckpoint].
// metadata, a JSON object (at most 64 KiB) or nil, is kept with it:
// Checkpoints lists it and LoadCheckpoint returns it. It returns what was
// saved.
func (r *RemoteMeta) SaveCheckpoint(ctx context.Context, name string, metadata []byte) (*wirepb.CheckpointInfo, error) {
	if err := checkName(nameDir, name); err != nil {
		return nil, r.opErr("save checkpoint", err)
	}
	var reply wirepb.CheckpointInfo
	if err := r.do(ctx, "save checkpoint", wire.OpSaveCheckpoint, &wirepb.CheckpointRequest{Name: name, Metadata: metadata}, &reply); err != nil {
		return nil, err
	}
	return &reply, nil
}

// LoadCheckpoint makes the controller replace its state with checkpoint
// name, and returns what was loaded (with the metadata it was saved
// with); see [github.com/tqgo/tq/controller.Server.LoadCheckpoint].
func (r *RemoteMeta) LoadCheckpoint(ctx context.Context, name string) (*wirepb.CheckpointInfo, error) {
	if err := checkName(nameDir, name); err != nil {
		return nil, r.opErr("load checkpoint", err)
	}
	var reply wirepb.CheckpointInfo
	if err := r.do(ctx, "load checkpoint", wire.OpLoadCheckpoint, &wirepb.CheckpointRequest{Name: name}, &reply); err != nil {
		return nil, err
	}
	return &reply, nil
}

// Checkpoints lists the controller's saved checkpoints, by name, asking
// page after page (CHECKPOINTS answers at most 1000, or 16 MiB, at a time).
func (r *RemoteMeta) Checkpoints(ctx context.Context) ([]*wirepb.CheckpointInfo, error) {
	var all []*wirepb.CheckpointInfo
	after := ""
	for {
		var reply wirepb.CheckpointsReply
		if err := r.retry(ctx, "checkpoints", wire.OpCheckpoints, &wirepb.CheckpointsRequest{After: after}, &reply); err != nil {
			return nil, err
		}
		all = append(all, reply.Checkpoints...)
		// The last page has no next; a server from before pages
		// answers everything, with none.
		if reply.NextAfter == "" {
			return all, nil
		}
		if err := nextPage(after, reply.NextAfter); err != nil {
			return nil, r.opErr("checkpoints", err)
		}
		after = reply.NextAfter
	}
}

// ClusterInfo returns the controller's identity and the state of its log.
func (r *RemoteMeta) ClusterInfo(ctx context.Context) (*wirepb.ClusterInfoReply, error) {
	var reply wirepb.ClusterInfoReply
	if err := r.retry(ctx, "cluster info", wire.OpClusterInfo, &wirepb.Empty{}, &reply); err != nil {
		return nil, err
	}
	return &reply, nil
}

// MetricsEndpoints returns the cluster's Prometheus endpoints
// ("http://host:port/metrics"): the controller's process's, then each
// live storage unit's that serves one, each once. Empty when no server
// runs with --metrics.
func (r *RemoteMeta) MetricsEndpoints(ctx context.Context) ([]string, error) {
	ci, err := r.ClusterInfo(ctx)
	if err != nil {
		return nil, err
	}
	return ci.Metrics, nil
}

// closeGrace bounds how long Close waits for rows being given back while
// the controller cannot be reached.
const closeGrace = 5 * time.Second
