package controller

// The controller server: the control plane over the framed protocol of
// package wire (wire/spec.md). Every control op has a handler, a plain
// function from a request body to a reply message or an error
// (handlers.go); one adapter turns each into a wire.HandlerFunc, so tests
// and the fuzzer run exactly the code the network runs. The adapter
// recovers panics into internal-error replies and bounds the reply size.
//
// A blocking FETCH (or KEY_CHANGES) waits at most its timeout_ms, at most
// MaxFetchWait, and only while its connection and the server live. Shutdown first wakes the
// blocked fetches (they reply with CODE_CLOSED, or with data that arrived
// in time), then lets the wire server drain and close.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/controller/journal"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/hostid"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// ServerConfig configures a [Server]. The zero value serves without a
// token, with the defaults below.
type ServerConfig struct {
	// Token, when set, must be presented by every connecting peer.
	Token string
	// TrustPeerCred admits a peer on a unix socket that runs as this
	// process's user (SO_PEERCRED) without the token.
	TrustPeerCred bool
	// RefuseClearToken refuses a peer that sends the token in clear (a
	// client older than the challenge handshake, wire/spec.md
	// "Handshake"); by default such a peer is still admitted.
	RefuseClearToken bool
	// Logger receives the wire server's rare events (a listener out of
	// file descriptors, refused connections); nil discards them.
	Logger *slog.Logger
	// HeartbeatInterval is what storage units are told to heartbeat at
	// (0: 1 s). How long a silent unit stays alive is the controller's
	// Config.UnitTimeout.
	HeartbeatInterval time.Duration
	// MaxFetchWait bounds a blocking FETCH or KEY_CHANGES, with or
	// without timeout_ms (0: 5 min).
	MaxFetchWait time.Duration
	// Name is sent in the handshake reply, for logs and stat output.
	Name string
	// LocalAddrs are addresses this server also serves on that only its
	// own host reaches (unix://path), sent in the handshake reply: a
	// client on this host opens its connections there (a unix socket
	// costs about half of loopback TCP per request).
	LocalAddrs []string
	// CheckpointDir is where SAVE_CHECKPOINT and LOAD_CHECKPOINT keep
	// checkpoints, one directory per name (names, never paths, come from
	// the network). Empty refuses both ops (CODE_NOT_SUPPORTED).
	// NewServer removes what saves cut short by a killed process left
	// there.
	CheckpointDir string
	// Dial connects the controller to a storage unit's data plane, for
	// checkpoints with data (reading every cell at save, writing them at
	// load). Nil saves and loads metadata only: loaded cells whose unit is
	// not the one that held them are lost.
	Dial func(ctx context.Context, u engine.UnitInfo) (engine.DataConn, error)
	// Logf, if set, receives reports of handler panics (with the stack)
	// and of a journal that cannot be written.
	Logf func(format string, args ...any)
	// Observer, if set, sees every request answered (metrics; see
	// [wire.ServerConfig.Observer]).
	Observer wire.Observer
	// MetricsAddrs are the URLs of this process's metrics endpoints
	// ("http://host:port/metrics"), given to clients in CLUSTER_INFO.
	MetricsAddrs []string
	// Loops is how many event loops serve connections while they send
	// small requests that need no goroutine (see
	// [wire.ServerConfig.Loops]): without a journal, KV puts and gets and
	// metadata operations; with one, only pings. 0 means half the CPUs,
	// at least one; negative, none.
	Loops int
	// PeerTimeout is how long the host of a peer on TCP may go without
	// answering before its connections end as the peer's doing (see
	// [wire.ServerConfig.PeerTimeout]): a client there counts as one that
	// closed its connections, and what it held goes back after
	// Config.HeldClientGrace. 0 means [wire.DefaultPeerTimeout];
	// negative keeps the system's keepalive.
	PeerTimeout time.Duration
}

func (c ServerConfig) withDefaults() ServerConfig {
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = time.Second
	}
	if c.MaxFetchWait <= 0 {
		c.MaxFetchWait = 5 * time.Minute
	}
	return c
}

// Server serves a [Controller] (its metadata, and its registry of storage
// units) over the wire protocol, on any number of listeners. It does not
// own the controller: closing the server leaves the controller open. Safe
// for concurrent use.
//
// A durable controller's server answers a request only once the changes
// it made, and those it saw, are durable; cells a request dropped go on
// their units' free queues at that point too.
type Server struct {
	c        *Controller
	cfg      ServerConfig
	ws       *wire.Server
	handlers map[wire.Op]handler
	kv       atomic.Pointer[KVData] // see ServeKV
	frees    *freeQueue
	// unwatch ends the free queue's watch of evictions: an evicted
	// unit's queue is dropped.
	unwatch func()
	bg      sync.WaitGroup // frees waiting for durability after their caller left
	logOnce sync.Once      // a failed journal is reported once

	// ckpt serializes checkpoint saves and loads.
	ckpt sync.Mutex

	// stop is canceled, with errShuttingDown as its cause, when Shutdown
	// or Close begins; blocked fetches and unit polls watch it.
	stop   context.Context
	cancel context.CancelCauseFunc

	// holding, while set, is why connections other than storage units'
	// are refused (see HoldClients).
	holding atomic.Pointer[string]
}

// handler serves one control op: it decodes body and returns the reply
// message, or an error that becomes an error reply. Cells it dropped go in
// fx, to be freed once the change is durable.
type handler func(ctx context.Context, body []byte, fx *effects) (proto.Message, error)

// effects is what a handler leaves for after its change is durable.
type effects struct {
	// peerPID is the requesting process on a unix socket (0: unknown);
	// peer, its HELLO.
	peerPID int32
	peer    *wirepb.Hello
	freed   []engine.CellLoc
	// read, set by a handler that only read keys, or that changed only
	// them (COMMIT_KEYS, once it succeeded), narrows the wait to the
	// keys' last changes (Controller.WaitRead).
	read *keysRead
}

type keysRead struct {
	partition string
	keys      []string
}

var (
	errShuttingDown = fmt.Errorf("controller server is shutting down: %w", engine.ErrClosed)
	errInternal     = errors.New("controller: internal error")
)

// NewServer returns a server for c. Call [Server.Serve] to accept
// connections.
func NewServer(c *Controller, cfg ServerConfig) *Server {
	cfg = cfg.withDefaults()
	if cfg.CheckpointDir != "" {
		sweepTemps(cfg.CheckpointDir)
	}
	stop, cancel := context.WithCancelCause(context.Background())
	s := &Server{
		c:      c,
		cfg:    cfg,
		frees:  newFreeQueue(c.units.Alive),
		stop:   stop,
		cancel: cancel,
	}
	s.unwatch = c.units.watchEvictions(s.frees.drop)
	ci := c.Info()
	hello := &wirepb.Hello{
		Role: "controller", HostId: hostid.ID(), Name: cfg.Name, ClusterId: ci.ClusterID, Epoch: ci.Epoch, LocalAddrs: cfg.LocalAddrs,
		Features: []string{wire.FeatureClientHolds, wire.FeatureHoldGroup, wire.FeatureFetchMustExist, wire.FeatureFetchPartitionGen, wire.FeatureUnconsumeRows},
	}
	s.ws = wire.NewServer(wire.ServerConfig{
		Hello:            hello,
		Token:            cfg.Token,
		TrustPeerCred:    cfg.TrustPeerCred,
		RefuseClearToken: cfg.RefuseClearToken,
		Logger:           cfg.Logger,
		Observer:         cfg.Observer,
		Loops:            cfg.Loops,
		PeerTimeout:      cfg.PeerTimeout,
		CheckHello:       s.checkHello,
		OnConnect:        func(peer *wirepb.Hello) { c.clients.connected(clientID(peer)) },
		OnDisconnect: func(peer *wirepb.Hello, byPeer bool) {
			c.clients.disconnected(clientID(peer), byPeer, time.Now(), c.heldTTL())
		},
	})
	s.handlers = s.handlerTable()
	// They carry payloads: their own wire handlers. With a journal a put
	// waits for its fsync: a goroutine each; a get waits only for the
	// records of the keys it read that are not on disk yet, mostly none:
	// it runs where it was read unless it has to wait. In memory both
	// take microseconds and run on the read loop (one with a body over
	// wire.DefaultInlineMaxBody, a goroutine of its own); a put then never
	// waits for room (the client puts through the units instead, which
	// wait).
	if c.Durable() {
		s.ws.Handle(wire.OpKVPut, s.kvPut)
		s.ws.Handle(wire.OpKVSet, s.kvSet)
		s.ws.HandleTry(wire.OpKVGet, s.tryKVGet, s.kvGet)
		s.ws.HandleTry(wire.OpKVGetValue, s.tryKVGetValue, s.kvGetValue)
	} else {
		s.ws.HandleInline(wire.OpKVPut, func(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
			s.kvPut(noWait, req, rw)
		})
		s.ws.HandleInline(wire.OpKVGet, s.kvGet)
		s.ws.HandleInline(wire.OpKVSet, func(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
			s.kvSet(noWait, req, rw)
		})
		s.ws.HandleInline(wire.OpKVGetValue, s.kvGetValue)
	}
	for op := range s.handlers {
		switch {
		case op == wire.OpResolveKeys || op == wire.OpFetch || op == wire.OpKeyChanges || op == wire.OpUnitSync || op == wire.OpSaveCheckpoint || op == wire.OpLoadCheckpoint || op == wire.OpCheckpoints || op == wire.OpReconcile || op == wire.OpUnitCells || op == wire.OpStatsPage:
			// May wait (a blocking fetch, a wait for key changes, a unit's
			// poll), do disk I/O (CHECKPOINTS reads a directory and a
			// header per checkpoint) or walk every partition (STATS_PAGE
			// too): a goroutine each.
			// RESOLVE_KEYS too: it encodes a batch's metadata, enough work
			// that a loop (one core) holds its readers up: 16 of them did
			// 10% better with a goroutine each on 2 CPUs, where there is
			// one loop (BenchmarkLog/workload=kvgetcopy, log=off, 26.9k
			// vs 29.7k ops/s).
			s.ws.Handle(op, s.adapt(op))
		case c.Durable():
			// A change's reply waits for its fsync: a goroutine each, so
			// the connection's other requests share the next one.
			s.ws.Handle(op, s.adapt(op))
		default:
			// Metadata operations take microseconds: run them on the
			// connection's read loop, with no goroutine hand-off. One
			// with a large body (wire.DefaultInlineMaxBody) runs in a
			// goroutine of its own, so that the connection's pings are
			// answered meanwhile: these handlers run so in a durable
			// controller anyway.
			s.ws.HandleInline(op, s.adapt(op))
		}
	}
	return s
}

// unitRole is the role storage units give in their Hello
// (storage.Role).
const unitRole = "unit"

// HoldClients refuses, until AdmitClients, every connection but those of
// storage units, with an error wrapping [engine.ErrNotReady] that gives
// why: while a checkpoint named at start is restored, the units must
// register and take its cells, and a change a client made meanwhile would
// be acknowledged and then replaced by the load. Connections open already
// are not affected.
func (s *Server) HoldClients(why string) { s.holding.Store(&why) }

// AdmitClients ends HoldClients.
func (s *Server) AdmitClients() { s.holding.Store(nil) }

func (s *Server) checkHello(peer *wirepb.Hello) (*wirepb.Hello, error) {
	if why := s.holding.Load(); why != nil && peer.Role != unitRole {
		return nil, fmt.Errorf("the controller is %s; connect again once it is ready: %w", *why, engine.ErrNotReady)
	}
	return nil, nil
}

// maxClientID bounds a client id the controller follows (a longer one
// is ignored).
const maxClientID = 64

// clientID returns the id a client named itself with in its HELLO ("":
// none, or not a client).
func clientID(peer *wirepb.Hello) string {
	if peer == nil || peer.Role != "client" || len(peer.ClientId) > maxClientID {
		return ""
	}
	return string(peer.ClientId)
}

// Serve accepts connections on l until the server closes; it returns nil
// after Shutdown or Close.
func (s *Server) Serve(l net.Listener) error { return s.ws.Serve(l) }

// Shutdown stops accepting, wakes blocked fetches (each gets a reply: data
// that was ready, or an error wrapping engine.ErrClosed), waits for the
// requests in flight until ctx ends, then closes every connection.
func (s *Server) Shutdown(ctx context.Context) error {
	s.cancel(errShuttingDown)
	err := s.ws.Shutdown(ctx)
	s.bg.Wait()
	return err
}

// Close stops everything at once and waits for the server's goroutines.
// Requests in flight may get no reply. It is idempotent.
func (s *Server) Close() error {
	s.cancel(errShuttingDown)
	err := s.ws.Close()
	s.bg.Wait()
	s.unwatch()
	return err
}

// Conns returns the connections the server holds open.
func (s *Server) Conns() int { return s.ws.Conns() }

// Units lists the registered storage units by id, dead ones included with
// Alive false.
func (s *Server) Units() []engine.UnitInfo { return s.c.units.Units() }

// adapt turns the handler of op into a wire handler.
func (s *Server) adapt(op wire.Op) wire.HandlerFunc {
	return func(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
		if req.PayloadLen != 0 {
			rw.Error(fmt.Errorf("%v request with %d payload bytes; control requests carry none: %w", op, req.PayloadLen, engine.ErrInvalid))
			return
		}
		fx := effects{peerPID: req.PeerPID, peer: req.Peer}
		reply, err := s.call(ctx, op, req.Body, &fx)
		// What the request changed, and what it saw, is durable before
		// anyone hears of it.
		derr := s.durable(ctx, &fx)
		if derr != nil && err == nil {
			reply, err = nil, derr
		}
		if err != nil {
			rw.Error(err)
			return
		}
		rw.Reply(reply, nil, nil)
	}
}

// durable waits until what a handler changed and saw is durable (fx.read's
// keys' last changes, or everything logged so far), then queues the cells
// it dropped for their units. A caller that gives up first leaves the
// frees to a goroutine that waits on.
func (s *Server) durable(ctx context.Context, fx *effects) error {
	var err error
	if fx.read != nil {
		err = s.c.WaitRead(ctx, fx.read.partition, fx.read.keys)
	} else {
		err = s.c.WaitDurable(ctx)
	}
	freed := fx.freed
	switch {
	case err == nil:
		s.frees.add(freed)
	case errors.Is(err, journal.ErrFailed):
		s.logOnce.Do(func() {
			if s.cfg.Logf != nil {
				s.cfg.Logf("controller: the journal cannot be written; no change is acknowledged any more: %v", err)
			}
		})
	case len(freed) > 0:
		s.bg.Go(func() {
			if s.c.WaitDurable(context.Background()) == nil {
				s.frees.add(freed)
			}
		})
	}
	return err
}

// call runs the handler of op on body. It never panics and always returns
// a reply or an error: a panic becomes an error wrapping errInternal, a
// reply too large for a frame an error wrapping engine.ErrInvalid.
func (s *Server) call(ctx context.Context, op wire.Op, body []byte, fx *effects) (reply proto.Message, err error) {
	h, ok := s.handlers[op]
	if !ok {
		return nil, fmt.Errorf("op %v: %w", op, engine.ErrNotSupported)
	}
	defer func() {
		if v := recover(); v != nil {
			if s.cfg.Logf != nil {
				s.cfg.Logf("controller: %v handler panicked: %v\n%s", op, v, debug.Stack())
			}
			reply, err = nil, fmt.Errorf("%v handler panicked: %v: %w", op, v, errInternal)
		}
	}()
	reply, err = h(ctx, body, fx)
	if err != nil {
		return nil, err
	}
	if reply == nil {
		reply = &wirepb.Empty{}
	}
	if n := proto.Size(reply); n > wire.MaxBodyLen {
		return nil, fmt.Errorf("%v reply of %d bytes exceeds the frame limit of %d; ask for fewer rows: %w", op, n, wire.MaxBodyLen, engine.ErrInvalid)
	}
	return reply, nil
}

// waitCtx bounds a blocking fetch: timeoutMs (0: MaxFetchWait), never more
// than MaxFetchWait, and no longer than the server lives.
func (s *Server) waitCtx(ctx context.Context, timeoutMs uint64) (context.Context, context.CancelFunc) {
	wait := s.cfg.MaxFetchWait
	if timeoutMs > 0 && timeoutMs < uint64(wait/time.Millisecond) {
		wait = time.Duration(timeoutMs) * time.Millisecond
	}
	ctx, cancelTimeout := context.WithTimeout(ctx, wait)
	ctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(s.stop, func() { cancel(context.Cause(s.stop)) })
	return ctx, func() {
		stop()
		cancel(nil)
		cancelTimeout()
	}
}
