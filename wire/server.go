package wire

// Server is the serving side. Per connection, one goroutine reads frames;
// each request runs its handler in a goroutine of its own, so a slow
// request (a blocking fetch) does not hold up the others — or, for
// handlers registered with HandleInline, right on the read loop, unless
// its body is over ServerConfig.InlineMaxBody: decoding and applying a
// large body takes long enough (seconds for tens of MiB under load or
// -race) that the connection's PINGs would go unanswered and its client
// take the server for dead, so such a request runs in a goroutine of its
// own as any other. A request in a goroutine has a context of its own,
// which a CANCEL from the client ends. A request's payload is still on
// the socket when its handler starts: the handler reads it straight into
// its destination (ReadPayload), and the read loop waits until the
// payload is consumed before it reads the next frame.
// Replies go through the connection's combining writer (frameWriter).
//
// A malformed frame closes its connection only; the server goes on serving
// the others.
//
// While a connection sends only small requests for inline handlers, its
// goroutine lends it to an event loop, which serves many connections
// without a goroutine hand-off per request, and takes it back for
// anything else (loop.go).

import (
	"bufio"
	"container/list"
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/internal/invariants"
	"github.com/tqgo/tq/internal/linger"
	"github.com/tqgo/tq/wire/wirepb"
)

// HandlerFunc serves one request. It must call exactly one of rw's reply
// methods (or none, in which case an internal error is sent). Until it has
// read or skipped its payload (ReadPayload, DiscardPayload) the
// connection reads nothing else, so it should wait on nothing unbounded
// before: a CANCEL, or the peer closing, cannot reach it until then. ctx ends
// when the connection or the server closes, and, for a handler that runs
// in a goroutine of its own ([Server.Handle], and [Server.HandleInline]
// for a body over InlineMaxBody), when the client cancels the
// request: then context.Cause(ctx) wraps context.Canceled, and an error
// reply with ctx.Err() says CODE_CANCELED. The request, its Body and rw
// are the server's again once the handler returns (a loop serves its next
// request in them): a handler keeps none of them, and copies what it
// needs to keep. (In builds with the invariants or race tag, a loop serves
// each request in a Request of its own, and a handler that uses one after
// it returned panics: "wire: request OP used after its handler returned".)
type HandlerFunc func(ctx context.Context, req *Request, rw *ReplyWriter)

// TryFunc serves a request in place if it can do so without waiting:
// it replies and returns true, or returns false having neither replied
// nor read the payload (see [Server.HandleTry]).
type TryFunc func(ctx context.Context, req *Request, rw *ReplyWriter) bool

// ServerConfig configures a [Server].
type ServerConfig struct {
	// Hello is what the server answers the handshake with (role, host id,
	// unit id).
	Hello *wirepb.Hello
	// Token, when set, must be presented in the client's Hello.
	Token string
	// TrustPeerCred admits without the token a peer on a unix socket whose
	// uid (SO_PEERCRED) is this process's effective uid: the same user,
	// who could read the token anyway. TCP peers always need the token
	// when one is set.
	TrustPeerCred bool
	// RefuseClearToken refuses, with CODE_UNAUTHENTICATED, a HELLO that
	// carries the token in clear (a client older than the challenge
	// handshake) instead of proving it knows the token. Default: accepted.
	RefuseClearToken bool
	// CheckHello, if set, runs on the peer's Hello once the peer has
	// authenticated and returns the server's answer (nil: Hello); an error
	// is sent as the HELLO's error reply (its code from [CodeOf]) and the
	// connection closed. A storage unit answers with its current identity
	// (its id changes when the controller re-identifies it) and refuses
	// clients that expect another unit with it.
	CheckHello func(peer *wirepb.Hello) (*wirepb.Hello, error)
	// MaxInFlight bounds concurrent requests per connection, PING aside
	// (0: DefaultMaxInFlight). The HELLO reply names it, and clients keep
	// no more in flight.
	MaxInFlight int
	// MaxRequests bounds the requests in flight on all connections
	// together (0: DefaultMaxRequests): a request counts from when it
	// takes its connection's slot until its handler returned (its reply
	// sent, or the request canceled). CANCEL and PING take no slot and
	// count nowhere, so they always get through. Past it a connection
	// waits (reads nothing more) up to FrameTimeout for a request to
	// finish; one that gets no room within it is answered with a
	// connection error (CODE_CAPACITY, naming the limit) and closed, as
	// one that gets no room for a body (MaxBuffered). Closures are logged
	// once per episode. Without it, MaxConns × MaxInFlight requests that
	// wait (blocking fetches) would pin a goroutine each: about 4M.
	// Requests a loop serves (see Loops) take no slot and do not count:
	// each is answered before the loop reads the next.
	MaxRequests int
	// MaxConns bounds the connections the server holds open, those still
	// in their handshake included (0: DefaultMaxConns; negative: no
	// limit). A connection past it gets an error reply to its HELLO
	// (CODE_CAPACITY, naming the limit) and is closed; it may take at most
	// a second to send its HELLO. Refusals are logged once per episode.
	MaxConns int
	// MaxHandshakes bounds the connections still in their handshake: not
	// yet authenticated, their HELLO not yet answered (0:
	// DefaultMaxHandshakes, or a quarter of MaxConns where that is
	// smaller; negative: no limit). They count against MaxConns too. A
	// connection accepted past it makes room by closing the oldest
	// connection in its handshake, with a connection error
	// (CODE_CAPACITY, naming the limit): a client sends its HELLO at
	// once and is answered within a round trip, so the oldest is the one
	// most likely never to authenticate. Peers that open connections and
	// never authenticate thus hold at most MaxHandshakes of MaxConns, for
	// at most HandshakeTimeout each, and cannot lock out a client unless
	// they open MaxHandshakes connections within its round trip. At most
	// 64 evicted connections are answered and linger at once; past that
	// one is closed at once, so that evictions hold no more sockets than
	// refusals do. Evictions are logged once per episode.
	MaxHandshakes int
	// HandshakeTimeout bounds the wait for the first frame (0:
	// DefaultHandshakeTimeout).
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection with no frame for this long, or up
	// to a quarter longer (0: 5 min), unless its session is a [Holder]
	// that holds something then (it is looked at again after each
	// IdleTimeout). Clients ping every few seconds, so only dead peers
	// hit it.
	IdleTimeout time.Duration
	// PeerTimeout is how long the host of a TCP peer may go without
	// answering before the connection ends as the peer's doing
	// (OnDisconnect's byPeer): the kernel probes a connection that went
	// quiet (TCP keepalive, from half of it on) and gives up on bytes the
	// peer does not acknowledge (TCP_USER_TIMEOUT) once it has passed. A
	// host that crashed or dropped off the network closes nothing: this
	// is how the server learns its peers there are gone — a controller
	// then gives back what their clients held after its grace, not after
	// the held-fetch TTL. 0 means DefaultPeerTimeout; negative keeps the
	// listener's own settings (Go's keepalive: about 2.5 min to give up).
	PeerTimeout time.Duration
	// FrameTimeout bounds the wait for the rest of a frame once its header
	// arrived: the whole body must arrive within it, and each 4 MiB of a
	// payload a handler reads or skips (0: DefaultFrameTimeout). A peer
	// that stops sending mid-frame is closed after it.
	FrameTimeout time.Duration
	// WriteTimeout bounds each write of a reply: the server writes in
	// chunks of at most 4 MiB, and a peer that does not take a chunk
	// within it, or up to a quarter longer (it stopped reading its
	// replies), is disconnected (0: DefaultWriteTimeout).
	WriteTimeout time.Duration
	// MaxConnBuffered bounds the request body bytes one connection holds:
	// a body counts as its buffer is allocated (at once up to 64 KiB,
	// larger ones as their bytes arrive) until its handler returns, and
	// the connection's read loop waits (reads nothing more) until the
	// body fits. A CANCEL or PING of a few bytes is read all the same
	// (and counts nowhere): the requests holding the bytes may wait for
	// it. 0 means DefaultMaxConnBuffered; a smaller value than MaxBodyLen
	// is raised to it.
	MaxConnBuffered int64
	// MaxBuffered bounds the request body bytes all connections hold
	// together, counted the same way, so a peer that claims a large body
	// and sends little holds little of it. A connection waits for room
	// before reading more of a body; one that gets none within
	// FrameTimeout is closed.
	// 0 means DefaultMaxBuffered; a smaller value than MaxBodyLen is
	// raised to it.
	//
	// With these bounds a server's memory for requests is at most
	// MaxBuffered (bodies; payloads are not buffered but read into the
	// handlers' destinations) plus about 80 KiB per connection once it
	// authenticated (its 64 KiB read buffer, goroutine and state; before
	// that, about 12 KiB with a MaxHelloLen HELLO), plus about 6 KiB per
	// request in flight, at most MaxRequests of them (a handler's
	// goroutine, the Request and its context; more for a handler whose
	// stack grows), plus what handlers allocate (replies). With the
	// defaults: 1 GiB + 4096 × 80 KiB + 64Ki × 6 KiB ≈ 1.7 GiB, and at
	// most 64 connections being refused past MaxConns, and 64 evicted
	// past MaxHandshakes, add under 1 MiB each.
	MaxBuffered int64
	// Logger receives the server's rare events: a listener whose accepts
	// fail (the server backs off and retries: a process out of file
	// descriptors keeps its listeners), connections refused past MaxConns,
	// clients refused for a wrong or missing token, connections closed
	// for want of buffer room or of room for a request (MaxRequests).
	// Recurring trouble is logged when it starts and when it ends, never
	// per request. nil discards them.
	Logger *slog.Logger
	// OnConnect, if set, runs once a connection's handshake succeeded,
	// with the peer's Hello; OnDisconnect then runs for it too.
	OnConnect func(peer *wirepb.Hello)
	// OnDisconnect, if set, runs when a connection ends, with the peer's
	// Hello (nil if the handshake never completed), and whether the peer
	// ended it: it closed the connection (its process exited, or closed
	// it) or reset it, or its host stopped answering (PeerTimeout). False when the server closed it (idle, shutting
	// down, a broken frame, a reply not read in time).
	OnDisconnect func(peer *wirepb.Hello, byPeer bool)
	// NewSession, if set, runs once a connection's handshake succeeded and
	// returns the connection's session: each of the connection's requests
	// carries it in [Request.Session], and its Close runs once when the
	// connection ends, after the connection's last handler returned and
	// before OnDisconnect. It is how a server gives back what a client
	// held when the client dies. nc tells a unix socket from TCP (its
	// LocalAddr); the session must not read or write it.
	NewSession func(peer *wirepb.Hello, nc net.Conn) Session
	// Observer, if set, sees every request the server answered, once its
	// handler returned (metrics). It runs on the request's goroutine and
	// must be cheap and must not block. nil costs nothing, not even a
	// clock read.
	Observer Observer
	// Loops is how many event loops serve connections while they send
	// only small requests that handlers registered with HandleInline
	// answer (and PINGs), with no goroutine parked and woken per request
	// (see loop.go). 0 means half the CPUs, at least one; negative, none:
	// a goroutine serves each connection throughout. A connection with a
	// session (NewSession) is never on a loop.
	Loops int
	// InlineMaxBody is the largest body of a request that a handler
	// registered with HandleInline serves on the connection's read loop
	// (or a loop); a request with a larger body runs in a goroutine of its
	// own, with a context a CANCEL ends, as a Handle handler's does, and
	// the connection goes on reading (its PINGs answered) meanwhile. Its
	// payload does not count: the read loop waits for a payload to be
	// read wherever its handler runs, so a handler that decodes a large
	// body before it takes its payload holds the connection's reading up
	// until it does. 0 means DefaultInlineMaxBody; negative, no limit.
	InlineMaxBody int
}

// Observer sees the requests a [Server] answered (see
// [ServerConfig.Observer]). Implementations must be safe for concurrent
// use.
type Observer interface {
	Observe(r Served)
}

// Served describes one answered request to an [Observer].
type Served struct {
	Op Op
	// Network is the connection's: "tcp", "unix", or "shmring" (a
	// shared-memory control ring, package internal/shmring).
	Network string
	// Duration runs from the request's header read to its handler's
	// return (the reply was sent by then).
	Duration time.Duration
	// In is the request frame's bytes (header, body and payload); Out is
	// the reply's.
	In, Out int64
	// Code is the error reply's code; CODE_UNSPECIFIED (0) for a reply
	// that is not an error.
	Code wirepb.Code
}

// DefaultInlineMaxBody is ServerConfig.InlineMaxBody's default: far
// above the small requests inline handlers are for (a metadata operation
// or KV put of a few keys is well under a KiB, and every request a loop
// serves, up to 64 KiB, stays within it), far below a body whose decoding
// and applying hold the read loop long: a 256 KiB body of some 16k keys
// decodes in under 2 ms (under 10 ms with -race), against the client's
// 10 s ping timeout, and a goroutine hand-off (microseconds) is nothing
// beside that.
const DefaultInlineMaxBody = 256 << 10

// DefaultHandshakeTimeout is ServerConfig.HandshakeTimeout's default: a
// peer that has not authenticated within it is closed.
const DefaultHandshakeTimeout = 10 * time.Second

// DefaultPeerTimeout is ServerConfig.PeerTimeout's default: a live host
// answers the kernel's probes within a round trip, however busy its
// process, so only a host that is down or cut off for this long is taken
// for gone; half a minute more than the default grace for clients that
// left, far under the held-fetch TTL.
const DefaultPeerTimeout = 30 * time.Second

// DefaultFrameTimeout is ServerConfig.FrameTimeout's default: long enough
// for a 64 MiB body over a slow link (about 2 MiB/s), short enough that a
// peer that stalls mid-frame does not hold its buffers for minutes.
const DefaultFrameTimeout = 30 * time.Second

// DefaultWriteTimeout is ServerConfig.WriteTimeout's and
// ConnConfig.WriteTimeout's default, the same as
// the frame timeout's for the same reasons: 4 MiB within it is a slow link
// indeed, and a peer that stopped reading holds a goroutine and its
// reply's memory for at most that long.
const DefaultWriteTimeout = 30 * time.Second

// DefaultMaxConns is ServerConfig.MaxConns' default: far more connections
// than a cluster's clients and units open (a client pools a few per
// peer), few enough that their read buffers stay under 256 MiB, and under
// the usual file descriptor limits (Go raises the soft limit to the hard
// one, commonly 65536 or more; below that, accepts back off on EMFILE).
const DefaultMaxConns = 4096

// DefaultMaxHandshakes is ServerConfig.MaxHandshakes' default (where a
// quarter of MaxConns is not smaller): a handshake lasts one round trip,
// so even a reconnect storm of a few hundred clients has far fewer in
// their handshake at once and does not evict one another; 256 of them
// cost about 3 MiB (about 12 KiB each) and hold 1/16 of DefaultMaxConns,
// so idle peers that never authenticate leave the rest to clients that
// do. The quarter keeps a small MaxConns mostly for authenticated
// clients too.
const DefaultMaxHandshakes = 256

// DefaultMaxConnBuffered is ServerConfig.MaxConnBuffered's default: two
// bodies of the largest size, so one large request does not stall the
// connection's next.
const DefaultMaxConnBuffered = 2 * MaxBodyLen

// DefaultMaxBuffered is ServerConfig.MaxBuffered's default: 1 GiB, sixteen
// bodies of the largest size at once, far more than a controller or unit
// holds in normal use (bodies are metadata; bulk bytes are payloads).
const DefaultMaxBuffered = 1 << 30

// DefaultMaxRequests is ServerConfig.MaxRequests' default: 64Ki requests,
// sixteen connections' worth of MaxInFlight each waiting, far more than
// a cluster's clients keep waiting at once (a client blocks a few
// fetches per task), few enough that their goroutines, requests and
// contexts (about 6 KiB each while they wait) take about 400 MiB.
const DefaultMaxRequests = 64 << 10

// Session is per-connection state a server keeps for its handlers (see
// [ServerConfig.NewSession]). Handlers of one connection may run
// concurrently, so a session guards its own state.
type Session interface {
	// Close releases what the connection still holds. It is called once.
	Close()
}

// Holder is a [Session] whose peer may use what the session holds for it
// without sending a frame (a storage unit's shared-memory reservations and
// leases, which a same-host client fills and reads through its own
// mapping). While Holding reports true, the connection is not closed for
// idleness ([ServerConfig.IdleTimeout]): its peer's silence is no sign
// that it is gone. It must be safe to call from the connection's
// goroutine while handlers run.
type Holder interface {
	Holding() bool
}

// Server serves the protocol on any number of listeners. Safe for
// concurrent use.
type Server struct {
	cfg ServerConfig
	// By op, below maxOps; arrays, not maps: every request looks both up
	// (a map keyed by a uint16 takes the generic, hashing lookup).
	handlers [maxOps]HandlerFunc
	inline   [maxOps]bool
	tries    [maxOps]TryFunc

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{}
	nconns    int // connections admitted (counted against MaxConns)
	nrefusing int // connections being refused
	nevicted  int // connections evicted from their handshake, closing
	// handshaking lists the admitted connections still in their
	// handshake, oldest first (counted against MaxHandshakes).
	handshaking list.List
	draining    bool
	stop        chan struct{} // closed when draining starts
	inflight    sync.WaitGroup
	wg          sync.WaitGroup
	// idleWork hands a request to a handler goroutine waiting for one;
	// workers counts those goroutines (see spawn).
	idleWork  chan func()
	workers   sync.WaitGroup
	ctx       context.Context
	cancel    context.CancelFunc
	closeOnce sync.Once

	bytesIn, bytesOut atomic.Int64 // frame bytes read and written, all connections
	writes            atomic.Int64 // batches of frames written, all connections

	log       *slog.Logger
	buffered  budget  // request body bytes, all connections (MaxBuffered)
	requests  budget  // requests in flight, all connections (MaxRequests)
	crowded   episode // connections closed for want of room for a request
	starved   episode // connections closed for want of buffered room
	refusals  episode // connections refused past MaxConns
	evictions episode // handshakes closed past MaxHandshakes
	unauth    episode // handshakes refused for a wrong or missing token
	euid      int     // this process's, for TrustPeerCred

	// loops serve connections while their requests need no goroutine
	// (started by the first connection that goes to one; see loop.go);
	// nextLoop picks the next one; loopsWG waits for them. Under mu.
	loops    []*loop
	nextLoop int
	loopsWG  sync.WaitGroup
}

// Traffic returns the bytes this server has read and written on its
// connections (headers, bodies and payloads), for accounting and for tests
// that prove a payload did not cross a socket.
func (s *Server) Traffic() (in, out int64) { return s.bytesIn.Load(), s.bytesOut.Load() }

// Writes returns how many batches of reply frames the server has written,
// all connections: a writev each (large replies take one per 4 MiB). Replies
// to requests that arrived together share one.
func (s *Server) Writes() int64 { return s.writes.Load() }

// Conns returns the connections the server holds open now, those still
// in their handshake included.
func (s *Server) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nconns + s.nrefusing + s.nevicted
}

// NewServer returns a server with no handlers.
func NewServer(cfg ServerConfig) *Server {
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	if cfg.FrameTimeout <= 0 {
		cfg.FrameTimeout = DefaultFrameTimeout
	}
	if cfg.PeerTimeout == 0 {
		cfg.PeerTimeout = DefaultPeerTimeout
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.MaxHandshakes == 0 {
		cfg.MaxHandshakes = DefaultMaxHandshakes
		if cfg.MaxConns > 0 {
			cfg.MaxHandshakes = min(cfg.MaxHandshakes, max(1, cfg.MaxConns/4))
		}
	}
	if cfg.MaxConnBuffered <= 0 {
		cfg.MaxConnBuffered = DefaultMaxConnBuffered
	}
	cfg.MaxConnBuffered = max(cfg.MaxConnBuffered, MaxBodyLen)
	if cfg.MaxBuffered <= 0 {
		cfg.MaxBuffered = DefaultMaxBuffered
	}
	cfg.MaxBuffered = max(cfg.MaxBuffered, MaxBodyLen)
	if cfg.MaxRequests <= 0 {
		cfg.MaxRequests = DefaultMaxRequests
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Hello == nil {
		cfg.Hello = &wirepb.Hello{}
	}
	if cfg.Loops == 0 {
		cfg.Loops = max(1, runtime.GOMAXPROCS(0)/2)
	}
	if cfg.InlineMaxBody == 0 {
		cfg.InlineMaxBody = DefaultInlineMaxBody
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:       cfg,
		log:       log,
		listeners: map[net.Listener]struct{}{},
		conns:     map[*serverConn]struct{}{},
		ctx:       ctx,
		cancel:    cancel,
		stop:      make(chan struct{}),
		idleWork:  make(chan func()),
	}
	s.buffered.init(cfg.MaxBuffered)
	s.requests.init(int64(cfg.MaxRequests))
	s.starved = episode{log: log, quiet: time.Second}
	s.crowded = episode{log: log, quiet: time.Second}
	s.refusals = episode{log: log, quiet: time.Second}
	s.evictions = episode{log: log, quiet: time.Second}
	s.unauth = episode{log: log, quiet: time.Second}
	s.euid = os.Geteuid()
	return s
}

// Handle registers the handler for an op; each request runs in a goroutine
// of its own, with a context the client can cancel (CANCEL). Call before
// serving.
func (s *Server) Handle(op Op, h HandlerFunc) { s.handlers[checkOp(op)] = h }

// maxOps bounds the ops a server registers handlers for; frames of
// others are answered as not supported.
const maxOps = 256

func checkOp(op Op) Op {
	if op >= maxOps {
		panic(fmt.Sprintf("wire: op %d is beyond the %d a server handles", op, maxOps))
	}
	return op
}

// handler returns op's handler, nil for none.
func (s *Server) handler(op Op) HandlerFunc {
	if op >= maxOps {
		return nil
	}
	return s.handlers[op]
}

// inlines reports whether a request like h runs on the read loop: its
// op's handler was registered with HandleInline and its body is within
// InlineMaxBody.
func (s *Server) inlines(h Header) bool {
	return h.Op < maxOps && s.inline[h.Op] && (s.cfg.InlineMaxBody < 0 || int64(h.BodyLen) <= int64(s.cfg.InlineMaxBody))
}

// HandleInline registers a handler that runs on the connection's read
// loop: no goroutine hand-off, so a small request costs the least, but the
// connection reads nothing else until it returns (a CANCEL for it included:
// its context is the connection's). Use it for handlers that never wait on
// anything slow. A request whose body is over
// [ServerConfig.InlineMaxBody] runs in a goroutine of its own instead, as
// [Server.Handle]'s do (a CANCEL ends its context), so h must be safe to
// run concurrently with the connection's other requests, and a client
// must not count on it finishing before the requests sent after it.
func (s *Server) HandleInline(op Op, h HandlerFunc) {
	s.handlers[checkOp(op)] = h
	s.inline[op] = true
}

// HandleTry registers h for op as [Server.Handle] does, and try to run
// first where the request was read, on a loop or the connection's read
// goroutine: a request that try serves costs what an inline one does,
// and one it declines (it would wait: for the log, for room) runs in a
// goroutine of its own through h. try must not wait, and returns false
// only before it has replied or read any payload.
func (s *Server) HandleTry(op Op, try TryFunc, h HandlerFunc) {
	s.handlers[checkOp(op)] = h
	s.tries[op] = try
}

// try returns op's TryFunc, nil for none.
func (s *Server) try(op Op) TryFunc {
	if op >= maxOps {
		return nil
	}
	return s.tries[op]
}

// Serve accepts connections on l until the server closes. It returns nil
// after Close or Shutdown. Accept errors that pass (out of file
// descriptors or memory, a connection aborted before it was accepted) do
// not end it: it backs off (5 ms, doubling up to 1 s) and tries again,
// logging when the trouble starts and when it ends. Any other error ends
// it.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	addr := l.Addr().String()
	trouble := episode{log: s.log}
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			draining := s.draining
			s.mu.Unlock()
			switch {
			case draining || errors.Is(err, net.ErrClosed):
				err = nil
			case temporary(err):
				trouble.hit("wire: accept failing; backing off and retrying", "addr", addr, "err", err)
				delay = BackOffAccept(delay, s.stop)
				continue
			default:
				s.log.Error("wire: accept failed; listener stopped", "addr", addr, "err", err)
				err = fmt.Errorf("accept: %w", err)
			}
			s.mu.Lock()
			delete(s.listeners, l)
			s.mu.Unlock()
			return err
		}
		if delay != 0 {
			delay = 0
			trouble.clear("wire: accepting again", "addr", addr)
		}
		if sc := s.admit(nc); sc != nil {
			go sc.serve()
		}
	}
}

// temporaryErrnos are accept errors that pass: the process is out of
// file descriptors or memory for now, or one connection went wrong before
// it was accepted.
var temporaryErrnos = []syscall.Errno{
	syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
	syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR, syscall.EAGAIN,
	syscall.EPROTO, syscall.EPERM,
}

// TemporaryAcceptError reports whether err, returned by a listener's
// Accept, passes (see temporaryErrnos): an accept loop other than
// [Server.Serve]'s backs off and tries again after it, as Serve does.
func TemporaryAcceptError(err error) bool { return temporary(err) }

// BackOffAccept waits after a temporary accept error (see
// [TemporaryAcceptError]) for twice the last delay, from 5 ms up to 1 s,
// or until stop closes, and returns the delay for the next error.
func BackOffAccept(delay time.Duration, stop <-chan struct{}) time.Duration {
	delay = min(max(2*delay, 5*time.Millisecond), time.Second)
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-stop:
	}
	return delay
}

func temporary(err error) bool {
	for _, errno := range temporaryErrnos {
		if errors.Is(err, errno) {
			return true
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var te interface{ Temporary() bool } // listeners of other kinds
	return errors.As(err, &te) && te.Temporary()
}

// refuseTimeout bounds how long a connection refused past MaxConns may
// take to send its HELLO, and to take the refusal.
const refuseTimeout = time.Second

// maxRefusing bounds the connections being refused at once; past it a
// new connection is closed without a reply.
const maxRefusing = 64

// admit registers nc as one of the server's connections and returns it,
// to be served; past MaxConns it is marked to be refused. It returns nil,
// nc closed, when the server is draining or too many refusals are under
// way. A connection admitted to be served is in its handshake; past
// MaxHandshakes the oldest connection in its handshake is evicted to make
// room (see [ServerConfig.MaxHandshakes]).
func (s *Server) admit(nc net.Conn) *serverConn {
	if err := setPeerTimeout(nc, s.cfg.PeerTimeout); err != nil {
		s.log.Debug("wire: cannot set the peer timeout", "peer", nc.RemoteAddr(), "err", err)
	}
	sc := newServerConn(s, nc)
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		nc.Close()
		return nil
	}
	n, limit := s.nconns, s.cfg.MaxConns
	if limit > 0 && n >= limit {
		if s.nrefusing >= maxRefusing {
			s.mu.Unlock()
			nc.Close()
			s.refusals.hit("wire: refusing connections past the limit", "conns", n, "limit", limit)
			return nil
		}
		s.nrefusing++
		sc.refused = fmt.Errorf("server has %d connections, the limit is %d: %w", n, limit, engine.ErrCapacity)
		sc.w.timeout = refuseTimeout
	} else {
		s.nconns++
	}
	var evicted *serverConn
	if sc.refused == nil {
		if hl := s.cfg.MaxHandshakes; hl > 0 && s.handshaking.Len() >= hl {
			evicted = s.handshaking.Remove(s.handshaking.Front()).(*serverConn)
			evicted.hs = nil
			// On its way out (at most linger.Time): its slot under
			// MaxConns is free again.
			s.nconns--
			// At most maxRefusing are answered and linger at once, as
			// with refusals: a peer that opens connections faster than
			// they linger would hold a socket for each otherwise. Past
			// it one is closed at once, unanswered.
			if s.nevicted >= maxRefusing {
				evicted.hurried = true
			} else {
				s.nevicted++
			}
			evicted.evicted = fmt.Errorf("server has %d connections in their handshake, the limit is %d (MaxHandshakes); this one, the oldest, is closed to make room: %w", hl, hl, engine.ErrCapacity)
		}
		sc.hs = s.handshaking.PushBack(sc)
	}
	s.conns[sc] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	if evicted != nil {
		if evicted.hurried {
			evicted.close()
		} else {
			// Wakes its handshake's read (see handshake).
			evicted.nc.SetReadDeadline(time.Unix(1, 0))
		}
		s.evictions.hit("wire: closing the oldest connections in their handshake past the limit", "limit", s.cfg.MaxHandshakes)
	}
	if sc.refused != nil {
		s.refusals.hit("wire: refusing connections past the limit", "conns", n, "limit", limit)
	} else {
		s.refusals.clear("wire: accepting connections again", "conns", n+1, "limit", limit)
	}
	return sc
}

// ServeConn serves one connection that came from no listener (a
// shared-memory channel set up on another socket) and returns when it
// ends. The server owns nc from then on: it closes nc when the connection
// ends or the server closes, and runs the connection's session like any
// other's. After Close or Shutdown it closes nc at once. It counts against
// MaxConns like any other connection.
func (s *Server) ServeConn(nc net.Conn) {
	if sc := s.admit(nc); sc != nil {
		sc.serve()
	}
}

// Shutdown stops accepting, answers new requests with CODE_CLOSED, waits
// for in-flight requests until ctx ends, then closes every connection.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.drain()
	for l := range s.listeners {
		l.Close()
	}
	s.mu.Unlock()
	idle := make(chan struct{})
	go func() { s.inflight.Wait(); close(idle) }()
	var err error
	select {
	case <-idle:
	case <-ctx.Done():
		err = fmt.Errorf("shutdown with requests in flight: %w", ctx.Err())
	}
	return errors.Join(err, s.Close())
}

// Close stops everything at once and waits for the server's goroutines
// (handlers included). It is idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.drain()
		for l := range s.listeners {
			l.Close()
		}
		for c := range s.conns {
			c.close()
		}
		s.mu.Unlock()
		s.cancel()
	})
	s.wg.Wait() // every connection, and so every handler, has ended: nothing spawns
	s.stopLoops()
	s.inflight.Wait()
	s.workers.Wait()
	return nil
}

// workerIdle is how long a handler goroutine waits for another request
// before it exits.
const workerIdle = 10 * time.Second

// spawn runs f, a request's handler, on a handler goroutine that is
// waiting for work, or on a new one. A handler goroutine that finishes
// waits workerIdle for another request before it exits, so its stack,
// grown by the handlers it ran, serves the next: with a goroutine per
// request every request grew a stack again, and a durable controller
// under small KV puts spent 15% of its CPU in runtime.copystack.
func (s *Server) spawn(f func()) {
	select {
	case s.idleWork <- f:
	default:
		s.workers.Add(1)
		go s.worker(f)
	}
}

func (s *Server) worker(f func()) {
	defer s.workers.Done()
	t := time.NewTimer(workerIdle)
	defer t.Stop()
	for {
		f()
		t.Reset(workerIdle)
		select {
		case f = <-s.idleWork:
		case <-t.C:
			return
		case <-s.ctx.Done():
			return
		}
	}
}

// drain marks the server draining; s.mu is held.
func (s *Server) drain() {
	if !s.draining {
		s.draining = true
		close(s.stop)
	}
}

type serverConn struct {
	s       *Server
	nc      net.Conn
	w       *frameWriter
	done    chan struct{}
	once    sync.Once
	peer    *wirepb.Hello
	peerUID int     // the peer's uid on a unix socket, else -1
	peerPID int32   // the peer's pid on a unix socket, else 0
	sess    Session // nil without ServerConfig.NewSession
	network string  // nc's: "tcp", "unix", "shmring"

	buffered budget // request body bytes held (MaxConnBuffered)
	refused  error  // past MaxConns: the error its HELLO gets
	// hs is the connection's element of s.handshaking while it is in its
	// handshake; evicted, the error it is closed with once it was evicted
	// from there past MaxHandshakes. Both under s.mu.
	hs      *list.Element
	evicted error
	// hurried: evicted while maxRefusing others were closing, closed
	// at once and not counted among them (under s.mu).
	hurried bool
	// byPeer is set once a read found the peer closed or reset the
	// connection, or a write that it reset it (see closedByPeer); it does
	// not count once linger is set (the server ended the connection).
	byPeer atomic.Bool
	// linger is set once the connection was answered with a refusal
	// that ends it: it ends lingering (see serve), so that the answer
	// survives what the peer still sends. A reply a handler sends
	// meanwhile fails on the shut side without closing the socket under
	// the lingering (see newServerConn).
	linger atomic.Bool

	sem      chan struct{}  // a slot per request in flight (MaxInFlight)
	handlers sync.WaitGroup // handlers running in goroutines

	mu      sync.Mutex
	running map[uint64]*Request // requests in goroutines, by id, for CANCEL
	async   atomic.Int32        // handlers running in goroutines

	// ctx is the connection's, which the handlers a loop runs get; ncMu
	// guards nc, which changes each time a loop gives the connection
	// back (see loop.go for the rest).
	ctx  context.Context
	ncMu sync.Mutex
	onLoop
}

func newServerConn(s *Server, nc net.Conn) *serverConn {
	c := &serverConn{s: s, nc: nc, done: make(chan struct{}), peerUID: -1}
	if a := nc.LocalAddr(); a != nil {
		c.network = a.Network()
	}
	c.buffered.init(s.cfg.MaxConnBuffered)
	c.w = newFrameWriter(nc, func(err error) {
		if closedByPeer(err) {
			c.byPeer.Store(true)
		}
		if c.linger.Load() {
			return // serve closes it once the lingering ends
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			s.log.Debug("wire: closing a connection that stopped reading its replies", "peer", nc.RemoteAddr(), "write_timeout", c.w.timeout)
		}
		c.close()
	})
	c.w.written = &s.bytesOut
	c.w.writes = &s.writes
	c.w.timeout = s.cfg.WriteTimeout
	return c
}

// holding reports whether the connection's session holds something its
// peer uses without frames (see [Holder]).
func (c *serverConn) holding() bool {
	h, ok := c.sess.(Holder)
	return ok && h.Holding()
}

func (c *serverConn) close() {
	c.once.Do(func() {
		close(c.done) // before nc is read: see toLoop
		c.ncMu.Lock()
		nc := c.nc
		c.ncMu.Unlock()
		nc.Close()
		c.w.fail(net.ErrClosed)
	})
}

func (c *serverConn) serve() {
	defer c.s.wg.Done()
	ctx, cancel := context.WithCancel(c.s.ctx)
	defer func() {
		if c.linger.Load() {
			c.ncMu.Lock()
			nc := c.nc
			c.ncMu.Unlock()
			linger.Drain(nc, linger.Time)
		}
		c.close()
		cancel()
		c.handlers.Wait()
		if c.sess != nil {
			c.sess.Close()
		}
		c.s.mu.Lock()
		delete(c.s.conns, c)
		if c.hs != nil {
			c.s.handshaking.Remove(c.hs)
			c.hs = nil
		}
		switch {
		case c.hurried:
		case c.evicted != nil:
			c.s.nevicted--
		case c.refused != nil:
			c.s.nrefusing--
		default:
			c.s.nconns--
		}
		c.s.mu.Unlock()
		if c.s.cfg.OnDisconnect != nil {
			// A connection the server refused (lingering) was ended by
			// the server, whatever its writes met since: a reply written
			// on its shut sending side fails with EPIPE.
			c.s.cfg.OnDisconnect(c.peer, c.byPeer.Load() && !c.linger.Load())
		}
	}()
	if c.refused != nil {
		c.refuse()
		return
	}
	c.peerUID, c.peerPID = peerCred(c.nc)
	err := c.handshake()
	c.s.leaveHandshake(c) // a handshake refused
	if err != nil {
		return
	}
	if c.s.cfg.OnConnect != nil {
		c.s.cfg.OnConnect(c.peer)
	}
	if c.s.cfg.NewSession != nil {
		c.sess = c.s.cfg.NewSession(c.peer, c.nc)
	}
	// The handshake was read straight from the socket, so nothing is
	// buffered yet: the connection's read buffer is allocated only now
	// that the peer authenticated.
	c.ctx = ctx
	rd := &connReader{corkingReader: corkingReader{c.nc, c.w}, byPeer: &c.byPeer}
	br := bufio.NewReaderSize(rd, readBufSize)
	c.sem = make(chan struct{}, c.s.cfg.MaxInFlight)
	var hb [HeaderSize]byte
	// streak counts the requests in a row a loop could have served: the
	// connection goes to a loop (back) once it has loopStreak of them
	// and nothing else to do, and right after its handshake.
	streak := loopStreak
	// idle is the idle deadline the socket has; zero once another was set
	// (a frame's or a payload's). It is set a quarter beyond IdleTimeout
	// and renewed only once that margin is used up, so that a busy
	// connection updates no timer per frame (a deadline set and cleared
	// around every small request was ~4% of its CPU): an idle connection
	// is closed between IdleTimeout and 1.25 × IdleTimeout after its last
	// frame.
	var idle time.Time
	for {
		if streak >= loopStreak && br.Buffered() == 0 && len(rd.pre) == 0 && c.mayLoop() {
			nc, pre, ok := c.toLoop()
			if !ok {
				return // closed while on the loop
			}
			if nc != nil {
				rd.nc, rd.pre = nc, pre
				idle, streak = time.Time{}, 0
			}
		}
		if br.Buffered() < HeaderSize {
			if now := time.Now(); idle.Sub(now) < c.s.cfg.IdleTimeout {
				idle = now.Add(c.s.cfg.IdleTimeout + c.s.cfg.IdleTimeout/4)
				c.nc.SetReadDeadline(idle)
			}
		}
		if n, err := io.ReadFull(br, hb[:]); err != nil {
			if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) && c.holding() {
				// Idle, but the session holds what its peer uses
				// without frames: wait another IdleTimeout.
				idle = time.Time{}
				continue
			}
			return
		}
		h, err := DecodeHeader(hb[:])
		if err == nil && h.Flags&FlagReply != 0 {
			err = fmt.Errorf("a reply frame (op %v) from the client: %w", h.Op, ErrFrame)
		}
		if err != nil {
			c.refuseConn(err) // this connection only
			return
		}
		c.s.bytesIn.Add(int64(HeaderSize) + int64(h.BodyLen) + int64(h.PayloadLen))
		if c.s.loopable(h) {
			streak++
		} else {
			streak = 0
		}
		var deadline time.Time
		if int(h.BodyLen) > br.Buffered() {
			// The rest of the frame must follow promptly, idle timeout
			// or not.
			deadline = time.Now().Add(c.s.cfg.FrameTimeout)
			c.nc.SetReadDeadline(deadline)
			idle = time.Time{}
		}
		var held uint32
		control := (h.Op == OpCancel || h.Op == OpPing) && h.BodyLen <= maxControlBody
		body, err := readBody(br, int(h.BodyLen), func(n int) bool {
			if control {
				// Outside the budget: the request that holds it may
				// be waiting for this CANCEL, and its peer for a PONG.
				return true
			}
			start := time.Now()
			if !c.hold(uint32(n)) {
				return false
			}
			held += uint32(n)
			if waited := time.Since(start); !deadline.IsZero() && waited > time.Millisecond {
				// Waiting for room is the server's doing, not the
				// peer's: it does not count against the frame timeout.
				deadline = deadline.Add(waited)
				c.nc.SetReadDeadline(deadline)
			}
			return true
		})
		if err != nil {
			c.unhold(held)
			if errors.Is(err, errNoRoom) {
				c.refuseConn(fmt.Errorf("no room for a request body of %d bytes within %v: the server's memory for request bodies is taken: %w",
					h.BodyLen, c.s.cfg.FrameTimeout, engine.ErrCapacity))
			}
			return
		}
		if h.Op == OpCancel {
			// No reply, no slot: it only ends another request's context.
			c.cancelRequest(body)
			c.unhold(held)
			if h.PayloadLen != 0 {
				c.refuseConn(fmt.Errorf("CANCEL with a payload of %d bytes: %w", h.PayloadLen, ErrFrame))
				return
			}
			continue
		}
		req := &Request{Header: h, Body: body, Peer: c.peer, PeerUID: c.peerUID, PeerPID: c.peerPID, Session: c.sess, br: br, nc: c.nc, timeout: c.s.cfg.FrameTimeout, left: h.PayloadLen, idle: &idle, in: &c.s.bytesIn}
		if c.s.cfg.Observer != nil {
			req.start = time.Now()
		}
		req.rw = ReplyWriter{c: c, h: h}
		if h.PayloadLen != 0 {
			req.consumed = make(chan struct{})
		}
		req.handler = c.s.handler(h.Op)
		if h.Op == OpPing {
			req.handler = pong
		}
		c.s.mu.Lock()
		req.draining = c.s.draining
		if !req.draining {
			c.s.inflight.Add(1)
			req.rw.written = c.s.inflight.Done
		}
		c.s.mu.Unlock()
		switch {
		case req.draining:
			req.handler = refuseDraining
		case req.handler == nil:
			req.handler = notSupported
		}
		// A PING takes no slot: a peer whose MaxInFlight requests all
		// wait (long fetches) must still hear that the connection lives.
		if h.Op != OpPing && !c.slot() {
			if !req.draining {
				c.s.inflight.Done()
			}
			c.unhold(h.BodyLen)
			return
		}
		if h.Op == OpPing {
			c.handle(ctx, req)
			c.unhold(held)
		} else if c.s.inlines(h) {
			c.run(ctx, req)
		} else if try := c.s.try(h.Op); try != nil && !req.draining && c.tryHandle(ctx, try, req) {
			c.served(req)
			c.unhold(req.BodyLen)
			c.unslot()
		} else {
			// A context of its own, which CANCEL ends.
			rctx, cancel := context.WithCancelCause(ctx)
			req.cancel = cancel
			c.mu.Lock()
			if c.running == nil {
				c.running = make(map[uint64]*Request)
			}
			c.running[h.ID] = req
			c.mu.Unlock()
			c.handlers.Add(1)
			c.async.Add(1)
			c.s.spawn(func() { c.runAsync(rctx, req) })
		}
		if h.PayloadLen == 0 {
			continue
		}
		// The payload belongs to the handler until consumed. A handler
		// may wait before it reads it (for room to put it in): let the
		// corked replies out first, in case that wait is on the peer.
		select {
		case <-req.consumed:
		default:
			c.w.uncork()
			select {
			case <-req.consumed:
			case <-c.done:
				return
			}
		}
		if req.broken {
			if req.cut != nil {
				c.refuseConn(req.cut)
			}
			return
		}
	}
}

// slot takes a request slot: one of the connection's, waiting for one
// while MaxInFlight of its requests run, and one of the server's
// (MaxRequests), waiting at most FrameTimeout, else the connection is
// answered with a connection error and closed. False when it got none,
// or the connection closed meanwhile. Where there is room, it costs a
// channel send and an atomic compare-and-swap; unslot gives both back.
func (c *serverConn) slot() bool {
	select {
	case c.sem <- struct{}{}:
	default:
		// Let corked replies out while waiting: the requests they
		// answer may be what holds the slots.
		c.w.uncork()
		select {
		case c.sem <- struct{}{}:
		case <-c.done:
			return false
		}
	}
	if !c.s.requests.tryAcquire(1) && !c.waitRoom() {
		<-c.sem
		return false
	}
	c.s.crowded.clear("wire: requests fit again")
	return true
}

// waitRoom waits up to FrameTimeout for room for a request among the
// server's (MaxRequests) and takes it; without it, it ends the
// connection with a connection error naming the limit.
func (c *serverConn) waitRoom() bool {
	c.w.uncork() // as slot: a request holding the room may wait for the peer
	cfg := &c.s.cfg
	if c.s.requests.acquire(1, cfg.FrameTimeout, c.done) {
		return true
	}
	select {
	case <-c.done:
		return false
	default:
	}
	c.s.crowded.hit("wire: closing connections that found no room for a request in flight within the frame timeout",
		"max_requests", cfg.MaxRequests, "frame_timeout", cfg.FrameTimeout)
	c.refuseConn(fmt.Errorf("no room for a request within %v: the server has %d requests in flight, the limit is %d (MaxRequests): %w",
		cfg.FrameTimeout, cfg.MaxRequests, cfg.MaxRequests, engine.ErrCapacity))
	return false
}

// unslot gives back what slot took.
func (c *serverConn) unslot() {
	c.s.requests.release(1)
	<-c.sem
}

// corkingReader is what a connection's read loop reads the socket
// through: replies corked while the loop served requests it had already
// read go out before it reads again (and may block), and the replies to
// what it reads now are corked until its next read, so that requests that
// arrived together are answered in one writev.
type corkingReader struct {
	nc net.Conn
	w  *frameWriter
}

func (r corkingReader) Read(p []byte) (int, error) {
	r.w.uncork()
	n, err := r.nc.Read(p)
	r.w.cork()
	return n, err
}

// connReader reads first pre, what a loop read of the connection but did
// not serve, then the socket.
type connReader struct {
	pre    []byte
	byPeer *atomic.Bool // set once a read finds the peer ended the connection
	corkingReader
}

func (r *connReader) Read(p []byte) (int, error) {
	if len(r.pre) > 0 {
		n := copy(p, r.pre)
		r.pre = r.pre[n:]
		return n, nil
	}
	n, err := r.corkingReader.Read(p)
	if err != nil && closedByPeer(err) {
		r.byPeer.Store(true)
	}
	return n, err
}

// closedByPeer reports whether err, from a read or a write of a
// connection, says that the peer closed or reset it, or that its host
// stopped answering (ETIMEDOUT: the kernel gave up on it, see
// ServerConfig.PeerTimeout; a deadline the server set is
// os.ErrDeadlineExceeded, not this).
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ETIMEDOUT)
}

// setPeerTimeout makes the kernel give up on nc's peer, if nc is TCP,
// once its host has not answered for d (ServerConfig.PeerTimeout): the
// connection is probed from d/2 of quiet on (setKeepAlive), and bytes
// sent and not acknowledged for d end it (TCP_USER_TIMEOUT, which also
// ends the probing at d). Either way the connection's next read or write
// fails with ETIMEDOUT. d ≤ 0 changes nothing.
func setPeerTimeout(nc net.Conn, d time.Duration) error {
	tc, ok := nc.(*net.TCPConn)
	if !ok || d <= 0 {
		return nil
	}
	if err := setKeepAlive(tc, d); err != nil {
		return err
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d.Milliseconds()))
	}); err != nil {
		return err
	}
	return serr
}

// setKeepAlive has the kernel probe nc, if it is TCP, from d/2 of quiet
// on, at most four times, d/8 apart (whole seconds, at least one:
// Linux's unit); d ≤ 0 changes nothing. It is the part of setPeerTimeout
// that net.FileConn undoes (see serverConn.toLoop); TCP_USER_TIMEOUT
// stays with the socket.
func setKeepAlive(nc net.Conn, d time.Duration) error {
	tc, ok := nc.(*net.TCPConn)
	if !ok || d <= 0 {
		return nil
	}
	return tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: max(d/2, time.Second), Interval: max(d/8, time.Second), Count: 4})
}

func refuseDraining(_ context.Context, _ *Request, rw *ReplyWriter) {
	rw.Error(fmt.Errorf("server is shutting down: %w", engine.ErrClosed))
}

func notSupported(_ context.Context, req *Request, rw *ReplyWriter) {
	rw.Error(fmt.Errorf("op %v: %w", req.Op, engine.ErrNotSupported))
}

// run serves req on the calling goroutine: the handler, an error reply if
// it sent none, what is left of the payload skipped, then its slot and
// its body's bytes given back.
func (c *serverConn) run(ctx context.Context, req *Request) {
	c.handle(ctx, req)
	c.unhold(req.BodyLen)
	c.unslot()
}

// handle runs req's handler, sends an error reply if it sent none, skips
// what is left of the payload and shows the request to the Observer.
func (c *serverConn) handle(ctx context.Context, req *Request) {
	func() {
		defer c.recovered(req, nil)
		req.handler(ctx, req, &req.rw)
	}()
	c.served(req)
}

// tryHandle runs req's TryFunc: false when it would wait. A try that
// panicked has handled req (with an error reply).
func (c *serverConn) tryHandle(ctx context.Context, try TryFunc, req *Request) (handled bool) {
	defer c.recovered(req, &handled)
	return try(ctx, req, &req.rw)
}

// recovered, deferred around a handler (itself: recover works only
// there), turns its panic into an error reply (unless it replied
// already) and a log line with the stack, rather than the end of the
// process and every connection it serves; it sets *handled, if given,
// when there was one.
func (c *serverConn) recovered(req *Request, handled *bool) {
	v := recover()
	if v == nil {
		return
	}
	if handled != nil {
		*handled = true
	}
	c.s.log.Error("wire: a handler panicked", "op", req.Op, "peer", c.nc.RemoteAddr(), "panic", v, "stack", string(debug.Stack()))
	if !req.rw.sent {
		req.rw.Error(fmt.Errorf("op %v: the server's handler failed (it panicked: %v): %w", req.Op, v, errInternal))
	}
}

// served finishes req once its handler returned: an error reply if it
// sent none, what is left of the payload skipped, the request shown to
// the Observer.
func (c *serverConn) served(req *Request) {
	if !req.rw.sent {
		req.rw.Error(fmt.Errorf("op %v: handler sent no reply: %w", req.Op, errInternal))
	}
	req.DiscardPayload()
	if o := c.s.cfg.Observer; o != nil {
		o.Observe(Served{
			Op: req.Op, Network: c.network, Duration: time.Since(req.start),
			In: int64(HeaderSize) + int64(req.BodyLen) + int64(req.PayloadLen-req.missed), Out: req.rw.out, Code: req.rw.code,
		})
	}
}

// runAsync runs req on a goroutine of its own, cancelable by id.
func (c *serverConn) runAsync(ctx context.Context, req *Request) {
	defer c.handlers.Done()
	defer c.async.Add(-1)
	c.run(ctx, req)
	c.mu.Lock()
	if c.running[req.ID] == req {
		delete(c.running, req.ID)
	}
	c.mu.Unlock()
	req.cancel(nil)
}

// errCanceled is the cause of a request's context that the client
// canceled.
var errCanceled = fmt.Errorf("wire: request canceled by the client: %w", context.Canceled)

// cancelRequest serves CANCEL: it ends the context of the named request,
// if it is running in a goroutine of its own. Unknown or finished ids, and
// bodies that do not decode, are ignored: CANCEL has no reply to complain
// in.
func (c *serverConn) cancelRequest(body []byte) {
	var m wirepb.Cancel
	if proto.Unmarshal(body, &m) != nil {
		return
	}
	c.mu.Lock()
	req := c.running[m.Id]
	c.mu.Unlock()
	if req != nil {
		req.cancel(errCanceled)
	}
}

var errInternal = errors.New("wire: internal error")

// hold takes a body's n bytes from the connection's budget (waiting for
// its own requests to give some back) and from the server's (waiting at
// most FrameTimeout, else the connection is closed). Before it waits, it
// lets the corked replies out, as slot does: a request holding the bytes
// may be waiting for the peer, and the peer for one of those replies.
func (c *serverConn) hold(n uint32) bool {
	if n == 0 {
		return true
	}
	if !c.buffered.tryAcquire(int64(n)) {
		c.w.uncork()
		if !c.buffered.acquire(int64(n), 0, c.done) {
			return false
		}
	}
	ok := c.s.buffered.tryAcquire(int64(n))
	if !ok {
		c.w.uncork()
		ok = c.s.buffered.acquire(int64(n), c.s.cfg.FrameTimeout, c.done)
	}
	if !ok {
		c.buffered.release(int64(n))
		select {
		case <-c.done:
		default:
			c.s.starved.hit("wire: closing connections that found no room for a request body within the frame timeout",
				"max_buffered", c.s.cfg.MaxBuffered, "frame_timeout", c.s.cfg.FrameTimeout)
		}
		return false
	}
	c.s.starved.clear("wire: request bodies fit again")
	return true
}

// maxControlBody is the largest body of a CANCEL or PING read outside
// the body budgets (hold): theirs take a few bytes.
const maxControlBody = 64

// unhold gives back what hold took.
func (c *serverConn) unhold(n uint32) {
	if n == 0 {
		return
	}
	c.s.buffered.release(int64(n))
	c.buffered.release(int64(n))
}

func pong(_ context.Context, req *Request, rw *ReplyWriter) {
	var p wirepb.Ping
	if err := req.Decode(&p); err != nil {
		rw.Error(err)
		return
	}
	rw.Reply(&p, nil, nil)
}

// readBufSize is the read buffer of an authenticated connection.
const readBufSize = 64 << 10

// bodyChunk is how much of a frame body is allocated before its bytes
// arrive. A larger body's buffer grows (doubling, up to the length the
// header claims) as they do, so a peer that claims 64 MiB and sends 1 KiB
// costs about a chunk, not 64 MiB.
const bodyChunk = 64 << 10

// errNoRoom reports a body that found no room in the buffer budgets.
var errNoRoom = errors.New("wire: no room for a request body")

// readBody reads a body of n bytes, taking each byte it allocates from
// the buffer budgets with hold first (n in all when it succeeds). A body
// that is small or already buffered is allocated at once, as one slice
// of exactly n bytes; a larger one as its bytes arrive, so that a peer
// that claims much and sends little holds little of the budgets that all
// connections share.
func readBody(br *bufio.Reader, n int, hold func(n int) bool) ([]byte, error) {
	if n <= bodyChunk || n <= br.Buffered() {
		if !hold(n) {
			return nil, errNoRoom
		}
		b := make([]byte, n)
		_, err := io.ReadFull(br, b)
		return b, err
	}
	if !hold(bodyChunk) {
		return nil, errNoRoom
	}
	b := make([]byte, 0, bodyChunk)
	for len(b) < n {
		if len(b) == cap(b) {
			grown := min(2*cap(b), n)
			if !hold(grown - cap(b)) {
				return nil, errNoRoom
			}
			b = append(make([]byte, 0, grown), b...)
		}
		m, err := br.Read(b[len(b):cap(b)])
		b = b[:len(b)+m]
		if err != nil && len(b) < n {
			return nil, err
		}
	}
	return b, nil
}

// readHello reads the first frame, which must be a HELLO of at most
// MaxHelloLen body bytes, within timeout. It reads straight from the
// socket, exactly the frame's bytes: a connection that has not
// authenticated has no read buffer, and a larger claim is refused before
// anything is read or allocated for it.
func (c *serverConn) readHello(timeout time.Duration) (Header, []byte, error) {
	c.nc.SetReadDeadline(time.Now().Add(timeout))
	if c.s.evictedErr(c) != nil {
		// Evicted before the deadline above was set: admit's wake-up
		// came first and was overwritten.
		c.nc.SetReadDeadline(time.Unix(1, 0))
	}
	hb := make([]byte, HeaderSize)
	if _, err := io.ReadFull(c.nc, hb); err != nil {
		return Header{}, nil, err
	}
	h, err := DecodeHeader(hb)
	if err != nil {
		return Header{}, nil, err
	}
	switch {
	case h.Op != OpHello:
		return Header{}, nil, fmt.Errorf("first frame is %v, not HELLO: %w", h.Op, ErrFrame)
	case h.Flags != 0:
		return Header{}, nil, fmt.Errorf("HELLO with flags %#x (a request has none): %w", uint8(h.Flags), ErrFrame)
	case h.PayloadLen != 0:
		return Header{}, nil, fmt.Errorf("HELLO with a payload of %d bytes (it has none): %w", h.PayloadLen, ErrFrame)
	}
	if h.BodyLen > MaxHelloLen {
		return Header{}, nil, fmt.Errorf("HELLO of %d bytes exceeds %d: %w", h.BodyLen, MaxHelloLen, ErrFrame)
	}
	body := make([]byte, h.BodyLen)
	if _, err := io.ReadFull(c.nc, body); err != nil {
		return Header{}, nil, err
	}
	return h, body, nil
}

// refuse answers the connection's HELLO with its refusal, giving it
// refuseTimeout to send the HELLO.
func (c *serverConn) refuse() {
	h, _, err := c.readHello(min(refuseTimeout, c.s.cfg.HandshakeTimeout))
	if err != nil {
		c.refuseConn(err)
		return
	}
	c.answerHello(h, c.refused)
}

// answerHello refuses the connection's HELLO (h) with err, which ends the
// connection.
func (c *serverConn) answerHello(h Header, err error) {
	start := c.helloStart()
	rw := &ReplyWriter{c: c, h: h}
	rw.Error(err)
	c.linger.Store(true)
	c.observeHello(h, rw, start)
}

// helloStart is the time a HELLO's answer starts, for the Observer (none
// read without one).
func (c *serverConn) helloStart() time.Time {
	if c.s.cfg.Observer == nil {
		return time.Time{}
	}
	return time.Now()
}

// observeHello shows the Observer a HELLO answered by rw, accepted or
// refused, as it sees every other request.
func (c *serverConn) observeHello(h Header, rw *ReplyWriter, start time.Time) {
	if o := c.s.cfg.Observer; o != nil {
		o.Observe(Served{Op: OpHello, Network: c.network, Duration: time.Since(start), In: int64(HeaderSize) + int64(h.BodyLen), Out: rw.out, Code: rw.code})
	}
}

// refuseConn answers a connection the server ends over what it sent — a
// frame that does not decode or breaks the protocol's rules, a request
// body there is no room for, a payload slower than its handler's
// minimum rate — with a connection error: an error reply
// with request id 0, which no request uses, whose message names what was
// wrong. The peer fails whatever it has in flight with it. A read that
// failed gets no answer (nobody may be there to read it), nor does a peer
// whose first bytes are not TQ's magic: it does not speak the protocol.
func (c *serverConn) refuseConn(err error) {
	answerable := errors.Is(err, ErrFrame) || errors.Is(err, engine.ErrCapacity) || errors.Is(err, context.DeadlineExceeded)
	if !answerable || errors.Is(err, errNotTQ) {
		return
	}
	select {
	case <-c.done:
		return
	default:
	}
	c.s.log.Debug("wire: ending a connection over what it sent", "peer", c.nc.RemoteAddr(), "err", err)
	c.w.uncork() // replies held back go first
	rw := &ReplyWriter{c: c}
	rw.Error(err)
	c.linger.Store(true)
}

// evictedErr returns the error c was evicted from its handshake with
// past MaxHandshakes, nil if it was not.
func (s *Server) evictedErr(c *serverConn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return c.evicted
}

// leaveHandshake takes c, whose handshake ends, out of the connections
// in their handshake, and returns the error it was evicted with before,
// nil if it was not: once it left, it is not evicted.
func (s *Server) leaveHandshake(c *serverConn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.hs != nil {
		s.handshaking.Remove(c.hs)
		c.hs = nil
	}
	return c.evicted
}

// sameUser reports whether the peer may skip the token: TrustPeerCred is
// set and the peer is a process of this process's user on a unix socket.
func (c *serverConn) sameUser() bool {
	return c.s.cfg.TrustPeerCred && c.peerUID >= 0 && c.peerUID == c.s.euid
}

func (c *serverConn) handshake() error {
	began := time.Now()
	h, body, err := c.readHello(c.s.cfg.HandshakeTimeout)
	if evicted := c.s.evictedErr(c); evicted != nil {
		if err != nil {
			c.refuseConn(evicted)
		} else {
			c.answerHello(h, evicted)
		}
		return evicted
	}
	if err != nil {
		c.refuseConn(err)
		return err
	}
	var hello wirepb.Hello
	if err := proto.Unmarshal(body, &hello); err != nil {
		c.answerHello(h, fmt.Errorf("decode hello: %v: %w", err.Error(), engine.ErrInvalid))
		return err
	}
	if hello.Version != Version {
		err := fmt.Errorf("client speaks version %d, server %d: %w", hello.Version, Version, engine.ErrNotSupported)
		c.answerHello(h, err)
		return err
	}
	switch t := c.s.cfg.Token; {
	case t == "":
		// No token to check: a client nonce asks for a challenge this
		// server cannot make, and the plain answer tells the client so.
	case hello.Token != "" && c.s.cfg.RefuseClearToken:
		err := fmt.Errorf("token sent in clear, which this server refuses (RefuseClearToken): the client must prove it knows the token with the challenge handshake (a newer client): %w", ErrUnauthenticated)
		c.s.unauth.hit("wire: refusing clients that send the token in clear", "peer", c.nc.RemoteAddr().String(), "name", hello.Name)
		c.answerHello(h, err)
		return err
	case hello.Token != "":
		// An older client: the token in clear.
		if !auth.Equal(t, hello.Token) && !c.sameUser() {
			return c.unauthenticated(h, &hello)
		}
	case len(hello.AuthNonce) != 0:
		if h, err = c.challenge(h, body, &hello, began); err != nil {
			return err
		}
	case !c.sameUser():
		return c.unauthenticated(h, &hello)
	}
	c.s.unauth.clear("wire: no client refused for its token since")
	answer := c.s.cfg.Hello
	if check := c.s.cfg.CheckHello; check != nil {
		a, err := check(&hello)
		if err != nil {
			c.answerHello(h, err)
			return err
		}
		if a != nil {
			answer = a
		}
	}
	if evicted := c.s.leaveHandshake(c); evicted != nil {
		c.answerHello(h, evicted)
		return evicted
	}
	c.peer = &hello
	reply := proto.Clone(answer).(*wirepb.Hello)
	reply.Version = Version
	reply.MaxInFlight = uint32(c.s.cfg.MaxInFlight)
	start := c.helloStart()
	rw := &ReplyWriter{c: c, h: h}
	rw.Reply(reply, nil, nil)
	c.observeHello(h, rw, start)
	return nil
}

// unauthenticated refuses the HELLO h of a peer without the right token.
func (c *serverConn) unauthenticated(h Header, hello *wirepb.Hello) error {
	err := fmt.Errorf("wrong or missing token: %w", ErrUnauthenticated)
	c.s.unauth.hit("wire: refusing clients with a wrong or missing token", "peer", c.nc.RemoteAddr().String(), "name", hello.Name)
	c.answerHello(h, err)
	return err
}

// challenge runs the server's part of the challenge handshake (see
// auth.go) for the HELLO h, whose body first asked for it with its client
// nonce: it answers with the server's nonce and proof, and reads and
// checks the client's proof, all within what is left of the handshake
// timeout since began. It returns the header of the client's second HELLO,
// which the handshake's answer goes to.
func (c *serverConn) challenge(h Header, first []byte, hello *wirepb.Hello, began time.Time) (Header, error) {
	token := c.s.cfg.Token
	cn := hello.AuthNonce
	if !validNonce(cn) {
		err := fmt.Errorf("auth_nonce of %d bytes, not %d: %w", len(cn), AuthNonceLen, engine.ErrInvalid)
		c.answerHello(h, err)
		return h, err
	}
	sn := authNonce()
	rw := &ReplyWriter{c: c, h: h}
	rw.Reply(&wirepb.Hello{Version: Version, AuthNonce: sn, AuthProof: serverProof(token, cn, sn)}, nil, nil)
	left := c.s.cfg.HandshakeTimeout - time.Since(began)
	if left <= 0 {
		left = time.Nanosecond // the read times out: the handshake took too long
	}
	h2, body, err := c.readHello(left)
	if evicted := c.s.evictedErr(c); evicted != nil {
		if err != nil {
			c.refuseConn(evicted)
		} else {
			c.answerHello(h2, evicted)
		}
		return h2, evicted
	}
	if err != nil {
		c.refuseConn(err)
		return h2, err
	}
	var proof wirepb.Hello
	if err := proto.Unmarshal(body, &proof); err != nil {
		err = fmt.Errorf("decode the challenge's answer: %v: %w", err.Error(), engine.ErrInvalid)
		c.answerHello(h2, err)
		return h2, err
	}
	if !hmac.Equal(proof.AuthProof, clientProof(token, sn, cn, first)) {
		// A peer that asked to be judged by the token is, even where
		// its credentials would have admitted it without one.
		return h2, c.unauthenticated(h2, hello)
	}
	return h2, nil
}

// Request is one request as the handler sees it.
type Request struct {
	Header
	Body []byte
	// Peer is the client's Hello.
	Peer *wirepb.Hello
	// PeerUID is the client's uid on a unix socket (SO_PEERCRED), -1 on
	// TCP or where it is unknown.
	PeerUID int
	// PeerPID is the client's process id on a unix socket (SO_PEERCRED,
	// as it was when the client connected), 0 on TCP or where it is
	// unknown (a client in a pid namespace the server cannot see).
	PeerPID int32
	// Session is the connection's session (nil without
	// [ServerConfig.NewSession]).
	Session Session

	br       *bufio.Reader // nil for a request a loop serves, whose payload is mem
	mem      []byte
	nc       net.Conn
	timeout  time.Duration // progress deadline per chunk of payload
	idle     *time.Time    // the read loop's idle deadline, zeroed when a payload read sets another
	left     uint64
	consumed chan struct{} // closed once the payload is read or skipped; nil without one
	once     sync.Once
	broken   bool // set before consumed closes; read by the loop after
	// cut, set with broken, is the error of a payload past the deadline
	// of ReadPayloadAtRate, or one ReadPayloadWhile's live stopped: the
	// loop answers the connection with it.
	cut      error
	deadline bool // a payload read set the socket's read deadline
	// missed is the payload that never came (the connection broke before
	// it did): counted out of the traffic, which counted the whole of it
	// at the header (in, the server's count; nil on a loop).
	missed uint64
	in     *atomic.Int64

	// How the connection serves it (one allocation with the request).
	rw       ReplyWriter
	handler  HandlerFunc
	draining bool                    // answered CODE_CLOSED, not counted in flight
	dead     bool                    // served by a loop, its handler returned (invariants only)
	cancel   context.CancelCauseFunc // nil for a request run on the read loop
	start    time.Time               // header read; set only with an Observer
}

// kill marks r, which a loop served, dead (invariants only): its handler
// returned, so r, its Body and its ReplyWriter are the server's again,
// and what a handler that kept them calls on them panics (usedDead).
func (r *Request) kill() {
	r.Body, r.mem, r.dead, r.rw.dead = nil, nil, true, true
}

// usedDead panics: a handler used the request op after it returned.
func usedDead(op Op, what string) {
	panic(fmt.Sprintf("wire: request %v used after its handler returned (%s)", op, what))
}

// Decode unmarshals the request body; a malformed body is an error
// wrapping [engine.ErrInvalid].
func (r *Request) Decode(m proto.Message) error {
	if invariants.Enabled && r.dead {
		usedDead(r.Op, "Request.Decode")
	}
	if err := proto.Unmarshal(r.Body, m); err != nil {
		return fmt.Errorf("decode %v request: %v: %w", r.Op, err.Error(), engine.ErrInvalid)
	}
	return nil
}

// ReadPayload reads the whole payload into dst, whose lengths must add up
// to the payload length. It can be called once.
func (r *Request) ReadPayload(dst [][]byte) error {
	if invariants.Enabled && r.dead {
		usedDead(r.Op, "Request.ReadPayload")
	}
	return r.ReadPayloadAtRate(dst, 0)
}

// ReadPayloadAtRate is [Request.ReadPayload] for a payload that must also
// come as a whole at no less than minRate bytes a second: within
// FrameTimeout plus its length ÷ minRate from the call (minRate <= 0: no
// such bound, only ReadPayload's per 4 MiB). A handler that holds
// something for the payload's length (space reserved for it) bounds with
// it how long a peer that trickles the payload holds that. A payload past
// its deadline ends the connection: the call returns an error wrapping
// [ErrUnavailable] and [context.DeadlineExceeded] that names the rate and
// the bytes that came, and the server answers the connection with that
// error (a connection error, CODE_DEADLINE) and closes it, the stream
// being cut inside the payload.
func (r *Request) ReadPayloadAtRate(dst [][]byte, minRate int64) error {
	if invariants.Enabled && r.dead {
		usedDead(r.Op, "Request.ReadPayloadAtRate")
	}
	return r.ReadPayloadWhile(dst, minRate, nil)
}

// ReadPayloadWhile is [Request.ReadPayloadAtRate] for a payload whose
// destination may stop being worth filling before the payload is in
// (space reserved for it that times out): after each 4 MiB read from
// the socket, live (if not nil) says whether to go on. When it returns an
// error the rest of the payload is not read: the call returns an error
// wrapping it and [ErrUnavailable] that names the bytes that came, and,
// as for a payload past its rate, the server answers the connection with
// it (when it wraps [context.DeadlineExceeded]: a connection error,
// CODE_DEADLINE) and closes it, the stream being cut inside the payload.
// live runs on the handler's goroutine, between socket reads, never
// while one writes into dst.
func (r *Request) ReadPayloadWhile(dst [][]byte, minRate int64, live func() error) error {
	if invariants.Enabled && r.dead {
		usedDead(r.Op, "Request.ReadPayloadWhile")
	}
	var total uint64
	for _, b := range dst {
		total += uint64(len(b))
	}
	if total != r.left {
		return fmt.Errorf("%v payload is %d bytes, request describes %d: %w", r.Op, r.left, total, engine.ErrInvalid)
	}
	defer r.finish()
	if total == 0 {
		return nil // the read loop may be reading the next frame: leave its deadline be
	}
	if r.br == nil {
		for _, b := range dst {
			r.mem = r.mem[copy(b, r.mem):]
		}
		r.left = 0
		return nil
	}
	defer r.clearDeadline()
	var by time.Time // the whole payload's deadline; zero: none
	var within time.Duration
	if minRate > 0 {
		within = min(r.timeout, math.MaxInt64-rateTime(total, minRate)) + rateTime(total, minRate)
		by = time.Now().Add(within)
	}
	var unchecked int // read since live last said go on
	for _, b := range dst {
		// Read in bounded chunks, each with a deadline, so a client that
		// stops sending mid-payload frees the handler (and what it
		// reserved) after the frame timeout.
		for len(b) > 0 {
			if live != nil && unchecked >= payloadChunk {
				if err := live(); err != nil {
					r.cut = fmt.Errorf("%v payload of %d bytes cut off after %d of them came: %w: %w", r.Op, total, total-r.left, err, ErrUnavailable)
					r.brokenOff()
					return r.cut
				}
				unchecked = 0
			}
			n := min(len(b), payloadChunk)
			last := r.chunkDeadline(n, by)
			if got, err := io.ReadFull(r.br, b[:n]); err != nil {
				r.left -= uint64(got)
				if last && errors.Is(err, os.ErrDeadlineExceeded) {
					r.cut = fmt.Errorf("%v payload of %d bytes came slower than the minimum rate of %d bytes/s: %d of them came within its deadline of %v: %w: %w",
						r.Op, total, minRate, total-r.left, within, ErrUnavailable, context.DeadlineExceeded)
					r.brokenOff()
					return r.cut
				}
				r.brokenOff()
				return fmt.Errorf("read payload: %w: %w", ErrUnavailable, err)
			}
			r.left -= uint64(n)
			unchecked += n
			b = b[n:]
		}
	}
	return nil
}

// brokenOff marks the request broken: what is left of its payload never
// comes, and is counted out of the traffic.
func (r *Request) brokenOff() {
	r.broken, r.missed = true, r.left
	if r.in != nil {
		r.in.Add(-int64(r.left))
	}
	r.left = 0
}

// ReadPayloadTo is [Request.ReadPayload] into one buffer.
func (r *Request) ReadPayloadTo(dst []byte) error {
	if invariants.Enabled && r.dead {
		usedDead(r.Op, "Request.ReadPayloadTo")
	}
	return r.ReadPayload([][]byte{dst})
}

// rateTime is how long n bytes take at rate bytes a second (> 0),
// saturated.
func rateTime(n uint64, rate int64) time.Duration {
	d := float64(n) / float64(rate) * float64(time.Second)
	if d >= math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(d)
}

// chunkDeadline gives the next n bytes of payload the frame timeout to
// arrive, or until by where that is sooner (zero: no such bound), unless
// they are buffered already (reading them cannot wait: a small request's
// payload mostly came with its header). It reports whether by is the
// deadline set.
func (r *Request) chunkDeadline(n int, by time.Time) bool {
	if r.br.Buffered() >= n {
		return false
	}
	d := time.Now().Add(r.timeout)
	last := !by.IsZero() && by.Before(d)
	if last {
		d = by
	}
	r.nc.SetReadDeadline(d)
	r.deadline = true
	return last
}

// clearDeadline takes away a deadline the payload's reads set; the read
// loop then sets its idle one again.
func (r *Request) clearDeadline() {
	if r.deadline {
		r.nc.SetReadDeadline(time.Time{})
		if r.idle != nil {
			*r.idle = time.Time{}
		}
		r.deadline = false
	}
}

// DiscardPayload skips whatever payload is left unread. After the payload
// was consumed (or its read failed) it does nothing.
func (r *Request) DiscardPayload() {
	if invariants.Enabled && r.dead {
		usedDead(r.Op, "Request.DiscardPayload")
	}
	select {
	case <-r.consumed:
		return // the read loop owns the stream again
	default:
	}
	if r.br == nil {
		r.mem, r.left = nil, 0
	}
	for r.left > 0 {
		n := min(r.left, payloadChunk)
		r.chunkDeadline(int(n), time.Time{})
		if got, err := io.CopyN(io.Discard, r.br, int64(n)); err != nil {
			r.left -= uint64(got)
			r.brokenOff()
			break
		}
		r.left -= n
	}
	r.clearDeadline()
	r.finish()
}

// payloadChunk is how much payload must arrive within each FrameTimeout.
const payloadChunk = 4 << 20

func (r *Request) finish() {
	if r.consumed != nil {
		r.once.Do(func() { close(r.consumed) })
	}
}

// ReplyWriter sends a request's reply.
type ReplyWriter struct {
	c    *serverConn
	h    Header
	sent bool
	// written, if set, runs once the reply is written or dropped: the
	// request counts as in flight (for Shutdown) until then, a corked
	// reply included.
	written func()
	out     int64       // the reply frame's bytes, once sent
	code    wirepb.Code // the error reply's code, once sent
	// loop: the request came from a loop, which writes the reply with
	// the others it collects (c.out) once it served what it read.
	loop bool
	dead bool      // its request is dead (see [Request.kill])
	one  [1][]byte // ReplyBytes's payload, as net.Buffers
}

// Reply sends body and payload (written straight from its buffers). after,
// if set, runs once the payload has been written or dropped (release
// leases there). body is encoded before Reply returns. A reply corked
// behind requests read with it is written after Reply returns: the
// payload's buffers belong to the writer until after runs, which may be
// on another goroutine.
func (rw *ReplyWriter) Reply(body proto.Message, payload net.Buffers, after func()) {
	if invariants.Enabled && rw.dead {
		usedDead(rw.h.Op, "ReplyWriter.Reply")
	}
	rw.send(0, body, payload, after)
}

// ReplyBytes is [ReplyWriter.Reply] with a payload of one buffer.
func (rw *ReplyWriter) ReplyBytes(body proto.Message, payload []byte, after func()) {
	if invariants.Enabled && rw.dead {
		usedDead(rw.h.Op, "ReplyWriter.ReplyBytes")
	}
	rw.one[0] = payload
	rw.send(0, body, rw.one[:], after)
}

// Error sends an error reply classifying err.
func (rw *ReplyWriter) Error(err error) {
	if invariants.Enabled && rw.dead {
		usedDead(rw.h.Op, "ReplyWriter.Error")
	}
	rw.send(FlagError, ErrorReply(err), nil, nil)
}

var zeroHeader [HeaderSize]byte

func (rw *ReplyWriter) send(flags Flags, body proto.Message, payload net.Buffers, after func()) {
	if rw.sent {
		if after != nil {
			after()
		}
		return
	}
	rw.sent = true
	// On a loop the frame is encoded at the end of the connection's
	// output, else into a buffer of its own.
	var base []byte
	if rw.loop {
		base = rw.c.out
	} else {
		base = make([]byte, 0, HeaderSize+64)
	}
	mark := len(base)
	b, err := AppendMessage(append(base, zeroHeader[:]...), body)
	var instead error
	switch {
	case err != nil:
		instead = fmt.Errorf("encode reply: %v: %w", err.Error(), errInternal)
	case len(b)-mark-HeaderSize > MaxBodyLen:
		// The peer would reject the frame and drop the connection: answer
		// with an error instead.
		instead = fmt.Errorf("%v reply of %d bytes exceeds the %d-byte frame limit; ask for fewer rows: %w", rw.h.Op, len(b)-mark-HeaderSize, MaxBodyLen, engine.ErrInvalid)
	}
	if instead != nil {
		// The error sent is what the observer counts.
		body = ErrorReply(instead)
		b, _ = AppendMessage(append(base, zeroHeader[:]...), body)
		flags, payload = FlagError, nil
	}
	var plen uint64
	for _, p := range payload {
		plen += uint64(len(p))
	}
	h := Header{Version: Version, Flags: FlagReply | flags, Op: rw.h.Op, ID: rw.h.ID, BodyLen: uint32(len(b) - mark - HeaderSize), PayloadLen: plen}
	h.Append(b[mark:mark])
	rw.out = int64(len(b)-mark) + int64(plen)
	if flags&FlagError != 0 {
		if e, ok := body.(*wirepb.Error); ok {
			rw.code = e.Code
		} else {
			rw.code = wirepb.Code_CODE_INTERNAL
		}
	}
	if rw.loop {
		// The payload is copied into the output (a loop's requests
		// are small, their replies mostly too), and may go at once.
		for _, p := range payload {
			b = append(b, p...)
		}
		rw.c.out = b
		if after != nil {
			after()
		}
		return
	}
	// after runs once the frame is written or dropped: the payload's
	// owner may let go of it then.
	f := &outFrame{buf: b, payload: payload, written: make(chan error, 1), after: after, done: rw.written}
	if rw.c.w.send(f) {
		// Corked: it goes out with the replies to the requests the read
		// loop has already read, before the loop next reads the socket.
		return
	}
	// Hold on until the frame is written or dropped, so that a handler
	// that replies faster than its peer reads is held back. (A handshake
	// rejection relies on this too: its reply is out before the close.)
	<-f.written
}
