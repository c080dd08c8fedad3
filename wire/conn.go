package wire

// Conn is the client side of a connection. Three goroutines own it:
//
//	writer     the only one that writes to the socket; it takes frames from
//	           a queue and writes several at once with writev (net.Buffers)
//	reader     the only one that reads; it matches replies to pending calls
//	           by request id and reads a reply's payload straight into the
//	           buffers the call provides
//	keepalive  pings the peer; a peer that stops answering (and sends
//	           nothing else, and takes nothing being written to it) fails
//	           the connection, and with it every pending call
//
// A call whose context ends before its reply arrives is abandoned, and a
// CANCEL for it is queued on the writer (written by a short-lived
// goroutine when the writer is idle, so that Do never waits on the
// socket); a reply that still comes is skipped. A request still queued,
// which nobody has started writing, is dropped from the queue instead: the
// peer never sees it.
//
// A call's payload buffers belong to the caller again only when Do
// returns; Do never returns while the writer or the reader may still touch
// them.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// ConnConfig tunes a [Conn].
type ConnConfig struct {
	// KeepAlive is the interval between pings; 0 means 5 s, negative
	// disables pings.
	KeepAlive time.Duration
	// PingTimeout is how long a ping may go unanswered before the peer is
	// declared dead; 0 means 10 s.
	PingTimeout time.Duration
	// WriteTimeout bounds a stall in writing requests: a peer that takes
	// none of the bytes being written for this long is declared dead,
	// and the connection fails, at the latest 2.5 times it after the
	// peer took its last byte (the writer renews a deadline 1.25 times
	// it ahead when a write under it moved bytes, and a stall may begin
	// just after one was renewed). The keepalive cannot tell a peer that
	// stopped reading from one slow to take a large request, and TCP
	// takes many minutes to give up on a host that is gone. 0 means
	// DefaultWriteTimeout; negative, no bound.
	WriteTimeout time.Duration
	// LateReply, when set, takes the op and body of each successful
	// reply to a call its caller gave up on (Do returned without it,
	// [Conn.DoGrace]'s grace included): one that opened a hold on the peer
	// (a lease, a reservation) nobody learned of, which the connection
	// would otherwise keep until it ends. It runs on the connection's
	// reader goroutine and must not block: send the release from another.
	LateReply func(op Op, body []byte)
	// MaxInFlight bounds the calls in flight at once, PING aside: more
	// wait in Do for one to end. 0: the bound the server's HELLO reply
	// names (DefaultMaxInFlight when it names none); a positive value
	// lowers it; negative: no bound. A server stops reading a connection
	// with as many requests running as it allows, and calls past that
	// would hold up the keepalive's PING behind them until it timed out.
	MaxInFlight int
	// RequireServerProof makes [Conn.Hello] refuse, with an error wrapping
	// [ErrServerUnproven], a server that answers the HELLO without the
	// challenge, that is without proving it knows the token — as a
	// server run with --insecure answers, and as any peer can — and send
	// it nothing more. It needs a token: without one, [Dial] and Hello
	// fail with [engine.ErrInvalid] before anything is sent. Off by
	// default: a client that finds a token by itself (a leftover token
	// file, an inherited $TQ_TOKEN) would otherwise refuse every
	// --insecure server. Clients turn it on with $TQ_REQUIRE_SERVER_PROOF
	// (see client.RequireServerProof).
	RequireServerProof bool
}

// errNoTokenToProve is the configuration error of RequireServerProof
// without a token.
func errNoTokenToProve(addr string) error {
	return fmt.Errorf("handshake with %s: RequireServerProof ($TQ_REQUIRE_SERVER_PROOF) is set but the client has no token for the server to prove it knows: %w", addr, engine.ErrInvalid)
}

// DefaultMaxInFlight is the most requests a server runs at once on one
// connection when its HELLO reply names no bound (and ServerConfig's
// default).
const DefaultMaxInFlight = 1024

func (c ConnConfig) withDefaults() ConnConfig {
	if c.KeepAlive == 0 {
		c.KeepAlive = 5 * time.Second
	}
	if c.PingTimeout == 0 {
		c.PingTimeout = 10 * time.Second
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	return c
}

// Conn multiplexes requests over one stream connection (TCP or unix). It
// is safe for concurrent use; many calls can be in flight at once.
type Conn struct {
	nc   net.Conn
	cfg  ConnConfig
	addr string // the peer, for errors: what Dial dialed, else the socket's
	// proved: the peer answered the challenge handshake with the right
	// server proof (see [Conn.ServerProved]). Set by Hello.
	proved atomic.Bool
	// features: what the peer's HELLO reply lists (see [Conn.Serves]).
	features atomic.Pointer[[]string]

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]*call
	// abandoned holds the ids of calls given up on after their request
	// may have gone out, while ConnConfig.LateReply is set: only their
	// answers go to it (not a hostile peer's answers to ids never
	// asked). At most maxAbandoned; an answer of any kind removes one.
	abandoned map[uint64]struct{}
	err       error // why the connection failed; set once
	// max bounds len(pending) for calls other than PING (0: none; see
	// ConnConfig.MaxInFlight), set by Hello; room, when not nil, is
	// closed when a call leaves pending while others wait for room.
	max  int
	room chan struct{}

	w         *frameWriter
	read      atomic.Int64  // bytes the reader took off the socket (see keepAlive)
	done      chan struct{} // closed when the connection fails or closes
	readerOut chan struct{}
	kaOut     chan struct{}
	posts     sync.WaitGroup // goroutines writing CANCELs, or frames a caller left queued
	failOnce  sync.Once
}

type outFrame struct {
	buf     []byte      // header and body
	payload net.Buffers // raw payload segments, written in place
	written chan error  // buffered; receives the write's outcome
	after   func()      // if set, runs once the outcome is known (the payload may go)
	done    func()      // if set, runs after after
}

// finish reports the write's outcome and lets the payload go. It reads
// nothing of f after the outcome is sent: a client's frame is reused
// once its caller has it.
func (f *outFrame) finish(err error) {
	after, done := f.after, f.done
	f.written <- err
	if after != nil {
		after()
	}
	if done != nil {
		done()
	}
}

type call struct {
	op        Op // asked: its reply carries the same op
	reply     proto.Message
	into      func(Header, proto.Message) ([][]byte, error)
	done      chan struct{} // buffered: receives once, when the call is finished or failed
	err       error
	receiving bool // the reader is filling the call's buffers
}

// request is a call and its frame, reused from call to call (requests):
// a small request then allocates nothing of its own on its way.
type request struct {
	cl call
	f  outFrame
}

var requests = sync.Pool{New: func() any {
	return &request{cl: call{done: make(chan struct{}, 1)}, f: outFrame{written: make(chan error, 1)}}
}}

// putRequest returns r to the pool once neither the writer nor the
// reader holds it (Do's outcome is known, and the frame's).
func putRequest(r *request) {
	if cap(r.f.buf) > 4<<10 {
		r.f.buf = nil // do not keep a large body's buffer
	}
	r.f.buf, r.f.payload = r.f.buf[:0], nil
	r.cl.reply, r.cl.into, r.cl.err, r.cl.receiving = nil, nil, nil, false
	requests.Put(r)
}

// remoteName names nc's peer for errors: network://address.
func remoteName(nc net.Conn) string {
	ra := nc.RemoteAddr()
	if ra == nil {
		return "the server"
	}
	return ra.Network() + "://" + ra.String()
}

// NewConn takes over nc. The caller should then [Conn.Hello].
func NewConn(nc net.Conn, cfg ConnConfig) *Conn {
	c := &Conn{
		nc:        nc,
		addr:      remoteName(nc),
		cfg:       cfg.withDefaults(),
		pending:   make(map[uint64]*call),
		done:      make(chan struct{}),
		readerOut: make(chan struct{}),
		kaOut:     make(chan struct{}),
	}
	c.w = newFrameWriter(nc, func(err error) { c.failWrite(fmt.Errorf("write: %w: %w", ErrUnavailable, err)) })
	c.w.bg = &c.posts
	c.w.timeout, c.w.progress = max(c.cfg.WriteTimeout, 0), true
	go c.readLoop()
	go c.keepAlive()
	return c
}

// Dial connects to addr ("tcp://host:port", "unix:///path", or a bare
// host:port) and performs the handshake.
func Dial(ctx context.Context, addr string, hello *wirepb.Hello, cfg ConnConfig) (*Conn, *wirepb.Hello, error) {
	network, address, err := ParseAddr(addr)
	if err != nil {
		return nil, nil, err
	}
	if cfg.RequireServerProof && (hello == nil || hello.Token == "") {
		return nil, nil, errNoTokenToProve(addr)
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, nil, fmt.Errorf("dial %s: %w: %w", addr, ErrUnavailable, err)
	}
	c := NewConn(nc, cfg)
	c.addr = addr
	reply, err := c.Hello(ctx, hello)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, reply, nil
}

// ServerProved reports whether the peer proved, in [Conn.Hello]'s
// challenge, that it knows the token. A peer that answered the HELLO at
// once, as a server without a token does, proved nothing: any peer can
// answer so. Whatever else carries the token (a unit's fd socket, whose
// path the peer names) must go only to a peer that proved it.
func (c *Conn) ServerProved() bool { return c.proved.Load() }

// The optional parts of protocol version 1 a controller names in its
// HELLO reply (Hello.features; spec.md "Versioning"). A request that
// needs one is refused by the client when the reply lacks it: an older
// controller would ignore the field that asks for it.
const (
	// FeatureClientHolds: Hello.client_id; a gone client's held rows go
	// back after the grace rather than the held-fetch TTL.
	FeatureClientHolds = "client_holds"
	// FeatureHoldGroup: FetchRequest.hold_group.
	FeatureHoldGroup = "hold_group"
	// FeatureFetchMustExist: FetchRequest.partition_must_exist.
	FeatureFetchMustExist = "fetch_must_exist"
	// FeatureFetchPartitionGen: FetchRequest.partition_gen and
	// MetaReply.partition_gen.
	FeatureFetchPartitionGen = "fetch_partition_gen"
	// FeatureUnconsumeRows: UnconsumeRequest.indexes.
	FeatureUnconsumeRows = "unconsume_rows"
)

// Serves reports whether the peer's HELLO reply listed feature (see
// FeatureHoldGroup). False before the handshake.
func (c *Conn) Serves(feature string) bool {
	f := c.features.Load()
	return f != nil && slices.Contains(*f, feature)
}

// Need returns nil when the peer serves feature, else an error for the
// request named what that names the feature and the peer and wraps
// [engine.ErrNotSupported]: nothing of the request was sent.
func (c *Conn) Need(feature, what string) error {
	if c.Serves(feature) {
		return nil
	}
	return fmt.Errorf("%s needs the feature %q, which the server at %s does not list in its HELLO (an older tq serve: upgrade it): %w",
		what, feature, c.addr, engine.ErrNotSupported)
}

// Hello performs the handshake. A token in h is never sent: the client
// proves it knows the token with the challenge handshake (see auth.go and
// spec.md "Handshake"), and refuses with [ErrServerUnproven] a server
// that answers the challenge without proving it knows the token too. A
// server without a token answers the HELLO at once, as before; with
// [ConnConfig.RequireServerProof] such an answer is refused too.
func (c *Conn) Hello(ctx context.Context, h *wirepb.Hello) (*wirepb.Hello, error) {
	if h == nil {
		h = &wirepb.Hello{}
	}
	h.Version = Version
	token := h.Token
	if c.cfg.RequireServerProof && token == "" {
		return nil, errNoTokenToProve(c.addr)
	}
	var cn, first []byte
	if token != "" {
		h = proto.Clone(h).(*wirepb.Hello) // the caller's keeps its token
		h.Token, h.AuthNonce = "", authNonce()
		cn = h.AuthNonce
	}
	if n := proto.Size(h); n > MaxHelloLen {
		return nil, fmt.Errorf("handshake: hello of %d bytes exceeds %d: %w", n, MaxHelloLen, engine.ErrInvalid)
	}
	if token != "" {
		// The bytes Do sends: the same message marshals the same way.
		var err error
		if first, err = AppendMessage(nil, h); err != nil {
			return nil, fmt.Errorf("handshake: encode hello: %w", err)
		}
	}
	reply := &wirepb.Hello{}
	if err := c.Do(ctx, OpHello, h, nil, reply, nil); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if len(reply.AuthNonce) != 0 || len(reply.AuthProof) != 0 {
		// A challenge.
		sn := reply.AuthNonce
		switch {
		case token == "":
			return nil, fmt.Errorf("handshake: %s sent a challenge to a HELLO that asked for none: %w", c.addr, engine.ErrCorrupt)
		case !validNonce(sn) || !hmac.Equal(reply.AuthProof, serverProof(token, cn, sn)):
			// Say so with a proof-less answer, which a server refuses as
			// it refuses a wrong token (logged, counted), and leave: a
			// peer that could not prove the token gets nothing made
			// from it. Briefly: one that stalls is not waited on.
			gctx, cancel := context.WithTimeout(ctx, giveUpWait)
			c.Do(gctx, OpHello, &wirepb.Hello{Version: Version}, nil, &wirepb.Hello{}, nil)
			cancel()
			return nil, fmt.Errorf("handshake: %s did not prove it knows this client's token (it holds another token, or it is not the server meant): %w", c.addr, ErrServerUnproven)
		}
		reply = &wirepb.Hello{}
		if err := c.Do(ctx, OpHello, &wirepb.Hello{Version: Version, AuthProof: clientProof(token, sn, cn, first)}, nil, reply, nil); err != nil {
			return nil, fmt.Errorf("handshake: %w", err)
		}
		if len(reply.AuthNonce) != 0 || len(reply.AuthProof) != 0 {
			return nil, fmt.Errorf("handshake: %s answered the challenge's proof with another challenge: %w", c.addr, engine.ErrCorrupt)
		}
		c.proved.Store(true)
	} else if c.cfg.RequireServerProof {
		// Nothing more goes to it: the caller closes the connection.
		return nil, fmt.Errorf("handshake: %s answered without the challenge, proving nothing about the token (as a server run with --insecure does, or any peer), and this client requires the proof (RequireServerProof, $TQ_REQUIRE_SERVER_PROOF): %w", c.addr, ErrServerUnproven)
	}
	c.features.Store(&reply.Features)
	limit := int(reply.MaxInFlight)
	if limit == 0 {
		limit = DefaultMaxInFlight
	}
	switch m := c.cfg.MaxInFlight; {
	case m < 0:
		limit = 0
	case m > 0:
		limit = min(limit, m)
	}
	c.mu.Lock()
	c.max = limit
	c.mu.Unlock()
	return reply, nil
}

// leftLocked wakes the calls waiting for room, after one left pending.
// c.mu is held.
func (c *Conn) leftLocked() {
	if c.room != nil {
		close(c.room)
		c.room = nil
	}
}

// Done is closed when the connection has failed or been closed.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection failed, or nil while it works. It may
// be set a moment before Done closes: a connection whose write failed
// takes no new calls but still reads answers (see failWrite).
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// RemoteAddr returns the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// Close fails every pending call with [engine.ErrClosed], closes the
// socket and waits for the connection's goroutines. It is idempotent.
func (c *Conn) Close() error {
	c.fail(fmt.Errorf("connection closed: %w", engine.ErrClosed))
	<-c.readerOut
	<-c.kaOut
	c.posts.Wait()
	return nil
}

// fail ends the connection at once: err is why, unless a failed write
// gave a reason first (see failWrite).
func (c *Conn) fail(err error) {
	c.failOnce.Do(func() {
		c.mu.Lock()
		if c.err == nil {
			c.err = err
		}
		err = c.err
		c.mu.Unlock()
		close(c.done)
		c.nc.Close()
		c.w.fail(err)
	})
}

// failWrite ends the connection after a failed write, but not its reads.
// A peer that answers a request and closes without reading the rest of
// it (a server refusing a large request from its header) makes the write
// fail while its answer waits in the socket: closing the socket at once
// would lose the answer, and the caller would see a broken pipe instead
// of the reason. So new calls and queued frames fail with err now, the
// write side is shut (a peer reading a frame cut short sees its end), and
// the reader goes on delivering what arrives until the peer closes, or
// for writeFailGrace at most; then every call still waiting fails with
// err.
func (c *Conn) failWrite(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	c.mu.Unlock()
	c.w.fail(err)
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.nc.SetReadDeadline(time.Now().Add(writeFailGrace))
}

// writeFailGrace bounds how long a connection whose write failed keeps
// reading answers (see failWrite).
const writeFailGrace = 2 * time.Second

// DoGrace is Do for a request whose answer opens or ends a hold on the
// peer (a reservation, a lease, an extent written): it keeps waiting for
// the answer up to grace past ctx, so that the caller learns of the hold
// and can give it back rather than leave it to the end of the
// connection. A negative grace waits no longer than ctx. When ctx ended
// meanwhile but the answer arrived, it returns nil and the caller decides.
func (c *Conn) DoGrace(ctx context.Context, grace time.Duration, op Op, body proto.Message, payload net.Buffers, reply proto.Message) error {
	if grace < 0 {
		return c.Do(ctx, op, body, payload, reply, nil)
	}
	dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(grace, cancel) })
	defer stop()
	if err := c.Do(dctx, op, body, payload, reply, nil); err != nil {
		if dctx.Err() != nil && ctx.Err() != nil {
			return fmt.Errorf("no answer from the peer %v after the deadline: %w", grace, context.Cause(ctx))
		}
		return err
	}
	return nil
}

// maxAbandoned bounds the calls given up on whose late answers a
// connection watches for (see ConnConfig.LateReply).
const maxAbandoned = 4096

// HoldReleaser returns a [ConnConfig.LateReply] that gives back the hold
// a late ACQUIRE or RESERVE answer opened (a lease, a reservation nobody
// learned of): RELEASE or RESERVE_ABORT, sent through cleanup (say
// [Conn.Cleanup]) from a goroutine of its own.
func HoldReleaser(cleanup func(op Op, body proto.Message)) func(Op, []byte) {
	return func(op Op, body []byte) {
		switch op {
		case OpAcquire:
			var r wirepb.AcquireReply
			if proto.Unmarshal(body, &r) == nil {
				go cleanup(OpRelease, &wirepb.ReleaseRequest{Lease: r.Lease})
			}
		case OpReserve:
			var r wirepb.ReserveReply
			if proto.Unmarshal(body, &r) == nil {
				go cleanup(OpReserveAbort, &wirepb.ReservationRequest{Reservation: r.Reservation})
			}
		}
	}
}

// Cleanup sends a best-effort request that gives a hold back (an abort, a
// release), bounded by 2 s: a failure is harmless, as the peer gives the
// connection's holds back when it ends.
func (c *Conn) Cleanup(op Op, body proto.Message) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c.Do(ctx, op, body, nil, &wirepb.Empty{}, nil)
}

// Do sends a request and waits for its reply. body is the request
// message; payload, if any, is written after it straight from the given
// buffers. reply receives the reply body. into, when the reply carries a
// payload, returns the buffers to read it into (their lengths must add up
// to the payload length); it runs on the reader goroutine and must not
// block.
//
// An error reply is returned as a *[RemoteError]. A ctx that has already
// ended sends nothing: Do returns its error. If ctx ends first, Do
// returns ctx's error — but only once neither the writer nor the reader
// can still touch payload or the buffers into returned — and the server
// is sent a CANCEL for the request (not for HELLO or PING), which ends the
// handler's context there; the reply, if one still comes, is dropped.
func (c *Conn) Do(ctx context.Context, op Op, body proto.Message, payload net.Buffers, reply proto.Message, into func(Header, proto.Message) ([][]byte, error)) error {
	done := ctx.Done()
	if done != nil {
		select {
		case <-done:
			// Sent anyway, the request would race its own CANCEL, and
			// the caller would see its outcome or ctx's error by chance.
			return ctx.Err()
		default:
		}
	}
	r := requests.Get().(*request)
	b, err := AppendMessage(append(r.f.buf[:0], zeroHeader[:]...), body)
	r.f.buf = b
	if err != nil {
		putRequest(r)
		return fmt.Errorf("encode %v request: %w", op, err)
	}
	if len(b)-HeaderSize > MaxBodyLen {
		putRequest(r)
		return fmt.Errorf("%v request body of %d bytes exceeds %d: %w", op, len(b)-HeaderSize, MaxBodyLen, engine.ErrInvalid)
	}
	var plen uint64
	for _, p := range payload {
		plen += uint64(len(p))
	}
	cl, f := &r.cl, &r.f
	cl.op, cl.reply, cl.into = op, reply, into
	c.mu.Lock()
	for c.err == nil && c.max > 0 && len(c.pending) >= c.max && op != OpPing {
		// As many calls in flight as the server runs: wait for one to end.
		if c.room == nil {
			c.room = make(chan struct{})
		}
		room := c.room
		c.mu.Unlock()
		select {
		case <-room:
		case <-done:
			putRequest(r)
			return ctx.Err()
		case <-c.done:
		}
		c.mu.Lock()
	}
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		putRequest(r)
		return err
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = cl
	c.mu.Unlock()
	h := Header{Version: Version, Op: op, ID: id, BodyLen: uint32(len(b) - HeaderSize), PayloadLen: plen}
	h.Append(b[:0])
	f.payload = payload

	c.w.sendWithin(ctx, f) // writes now if the socket is idle, else queues
	if done == nil {
		// A context that never ends: only the reply, or the reader
		// failing every call when the connection fails, ends the wait.
		<-cl.done
		return c.finished(r)
	}
	select {
	case <-cl.done:
		return c.finished(r)
	case <-done:
	case <-c.done:
	}
	// A reply that arrived before the context ended or the connection
	// failed wins: select picks among ready cases at random.
	select {
	case <-cl.done:
		return c.finished(r)
	default:
	}
	canceled := ctx.Err() != nil
	if c.abandon(id, cl, f, canceled && op != OpHello && op != OpPing) {
		putRequest(r)
	}
	if canceled {
		return ctx.Err()
	}
	return c.Err()
}

// finished returns the outcome of r's call, whose reply has been read,
// once the writer is done with its frame too (mostly it is: a caller
// that finds the socket idle writes its own frame), and reuses r.
func (c *Conn) finished(r *request) error {
	<-r.f.written
	err := r.cl.err
	putRequest(r)
	return err
}

func (c *Conn) forget(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.leftLocked()
	c.mu.Unlock()
}

// abandon gives up on a call without leaving goroutines that still touch
// its buffers. A frame still queued, which nobody has started writing, is
// taken out of the queue: the peer never sees the request, and nothing
// else on the connection waits for it. Otherwise, with cancel, a call
// whose reply has not started arriving is canceled on the server; abandon
// waits for a payload being received to finish, and for a payload being
// written, failing the connection if that takes longer than abandonGrace
// (a frame without a payload holds none of the caller's buffers: the
// writer finishes it on its own). It reports whether the call and its
// frame may be reused: neither the writer nor the reader holds them (the
// reader could still, for a moment, when the connection failed
// meanwhile).
func (c *Conn) abandon(id uint64, cl *call, f *outFrame, cancel bool) (reuse bool) {
	c.mu.Lock()
	receiving := cl.receiving
	_, pending := c.pending[id]
	// Never sent: the peer never sees the request, and no answer comes
	// to watch for.
	unqueued := c.w.unqueue(f)
	if pending && !receiving {
		delete(c.pending, id)
		if !unqueued {
			if cancel {
				// Queued before the call leaves its room: a call that
				// takes the room goes out after the CANCEL, which the
				// server must read to free the slot the call still
				// holds there (it reads nothing behind a request that
				// waits for a slot).
				c.cancel(id)
			}
			if c.cfg.LateReply != nil && len(c.abandoned) < maxAbandoned {
				if c.abandoned == nil {
					c.abandoned = make(map[uint64]struct{})
				}
				c.abandoned[id] = struct{}{}
			}
		}
		c.leftLocked()
	}
	c.mu.Unlock()
	if unqueued {
		if receiving {
			// A peer that answers a request before it was sent (none but
			// a broken or hostile one): the reader holds the call and
			// its buffers until it finishes it.
			<-cl.done
			return true
		}
		return pending
	}
	if receiving {
		// The reader is filling the caller's buffers: let it finish
		// for a moment, then fail the connection to take them back.
		select {
		case <-cl.done:
		case <-time.After(abandonGrace):
			c.fail(fmt.Errorf("a call was abandoned while its reply was being read: %w", ErrUnavailable))
			<-cl.done
		}
	}
	select {
	case <-f.written:
		return pending || receiving
	default:
	}
	if len(f.payload) == 0 {
		return false // the writer still holds the frame
	}
	select {
	case <-f.written:
	case <-time.After(abandonGrace):
		// The payload is mid-write (a large one on a slow or dead peer).
		// The caller's buffers cannot be returned while the writer may
		// read them: give up on the connection to stop it.
		c.fail(fmt.Errorf("a call was abandoned while its request was being written: %w", ErrUnavailable))
		<-f.written
	}
	return pending || receiving
}

// cancel queues a CANCEL of request id behind its request (frames go out
// in order), without waiting for it to be written.
func (c *Conn) cancel(id uint64) {
	select {
	case <-c.done:
		return
	default:
	}
	b, err := AppendMessage(make([]byte, HeaderSize, HeaderSize+16), &wirepb.Cancel{Id: id})
	if err != nil {
		return
	}
	Header{Version: Version, Op: OpCancel, BodyLen: uint32(len(b) - HeaderSize)}.Append(b[:0])
	c.w.post(&outFrame{buf: b, written: make(chan error, 1)}, &c.posts)
}

// abandonGrace is how long an abandoned call waits for its request's
// payload to finish writing before it fails the connection.
const abandonGrace = 100 * time.Millisecond

func (c *Conn) readLoop() {
	defer close(c.readerOut)
	br := bufio.NewReaderSize(countingReader{c.nc, &c.read}, 64<<10)
	var hb [HeaderSize]byte
	var err error
	for err == nil {
		err = c.readOne(br, hb[:])
	}
	if !errors.Is(err, engine.ErrClosed) {
		c.fail(err)
	}
	// Fail every call still waiting.
	c.mu.Lock()
	cerr := c.err
	pending := c.pending
	c.pending = map[uint64]*call{}
	c.mu.Unlock()
	for _, cl := range pending {
		cl.err = cerr
		cl.done <- struct{}{}
	}
}

func (c *Conn) readOne(br *bufio.Reader, hb []byte) error {
	if _, err := io.ReadFull(br, hb); err != nil {
		return c.readErr(err)
	}
	h, err := DecodeHeader(hb)
	if err != nil {
		return err
	}
	if h.Flags&FlagReply == 0 {
		return fmt.Errorf("request frame (op %v) on a client connection: %w", h.Op, ErrFrame)
	}
	body, err := peekBody(br, int(h.BodyLen))
	if err != nil {
		return c.readErr(err)
	}
	if h.ID == 0 {
		return c.ended(h, body)
	}
	c.mu.Lock()
	cl := c.pending[h.ID]
	if cl != nil {
		cl.receiving = true
	}
	c.mu.Unlock()
	if cl == nil { // abandoned call: skip its reply
		c.mu.Lock()
		_, late := c.abandoned[h.ID]
		delete(c.abandoned, h.ID)
		c.mu.Unlock()
		if late && h.Flags&FlagError == 0 {
			c.cfg.LateReply(h.Op, bytes.Clone(body))
		}
		_, err := io.CopyN(io.Discard, br, int64(h.PayloadLen))
		return c.readErr(err)
	}
	cerr, err := c.fill(br, h, body, cl)
	c.mu.Lock()
	delete(c.pending, h.ID)
	c.leftLocked()
	c.mu.Unlock()
	cl.err = cerr
	if err != nil && cerr == nil {
		cl.err = err
	}
	cl.done <- struct{}{}
	return err
}

// ended takes a connection error, an error reply with request id 0 (no
// request has it): the server ends the connection over something this
// side sent, and its message says what. The connection fails with it,
// and so does every call in flight, over a write that failed meanwhile
// (that failure is the server closing).
func (c *Conn) ended(h Header, body []byte) error {
	var e wirepb.Error
	var err error
	switch {
	case h.Flags&FlagError == 0:
		err = fmt.Errorf("%v reply with request id 0, which no request has: %w", h.Op, ErrFrame)
	case proto.Unmarshal(body, &e) != nil:
		err = fmt.Errorf("decode a connection error: %w", ErrFrame)
	default:
		err = fmt.Errorf("the server ended the connection: %w", FromReply(&e))
	}
	c.mu.Lock()
	select {
	case <-c.done: // closed already
	default:
		c.err = err
	}
	c.mu.Unlock()
	c.fail(err)
	return err
}

// peekBody reads a reply's body of n bytes. One that fits br's buffer is
// not copied out of it: the slice holds until br's next read, and a
// reply's decoders copy what they keep before fill reads the payload. A
// larger one is allocated as its bytes arrive, as a server reads request
// bodies (readBody): a peer that claims 64 MiB and sends little costs
// little.
func peekBody(br *bufio.Reader, n int) ([]byte, error) {
	if n > br.Size() {
		return readBody(br, n, func(int) bool { return true })
	}
	body, err := br.Peek(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF // the header came: the frame is cut short
	}
	if err != nil {
		return nil, err
	}
	br.Discard(n)
	return body, nil
}

// fill decodes a reply into its call and reads its payload. cerr is the
// call's outcome; err is a connection-level failure.
func (c *Conn) fill(br *bufio.Reader, h Header, body []byte, cl *call) (cerr, err error) {
	discard := func() error {
		_, err := io.CopyN(io.Discard, br, int64(h.PayloadLen))
		return c.readErr(err)
	}
	if h.Op != cl.op {
		return fmt.Errorf("%v reply to a %v request: %w", h.Op, cl.op, engine.ErrCorrupt), discard()
	}
	if h.Flags&FlagError != 0 {
		if h.PayloadLen != 0 {
			// An error reply's payload is empty (spec.md "Frames"): the
			// stream is out of step, and nothing is read for the claim.
			err := fmt.Errorf("%v error reply with %d payload bytes: %w", h.Op, h.PayloadLen, ErrFrame)
			return err, err
		}
		var e wirepb.Error
		if err := proto.Unmarshal(body, &e); err != nil {
			return fmt.Errorf("decode %v error reply: %v: %w", h.Op, err.Error(), ErrFrame), discard()
		}
		if e.Code == wirepb.Code_CODE_UNSPECIFIED {
			return fmt.Errorf("%v error reply without a code (message %q): %w", h.Op, e.Message, engine.ErrCorrupt), discard()
		}
		return FromReply(&e), discard()
	}
	if cl.reply != nil {
		var err error
		if d, ok := cl.reply.(BodyDecoder); ok {
			err = d.DecodeBody(body)
		} else {
			err = proto.Unmarshal(body, cl.reply)
		}
		if err != nil {
			return fmt.Errorf("decode %v reply: %v: %w", h.Op, err.Error(), engine.ErrCorrupt), discard()
		}
	}
	if cl.into == nil {
		if h.PayloadLen == 0 {
			return nil, nil
		}
		return fmt.Errorf("%v reply carries %d payload bytes nobody asked for: %w", h.Op, h.PayloadLen, engine.ErrCorrupt), discard()
	}
	// A call with buffers for a payload gets them filled exactly, or an
	// error: an answer without its payload would leave them as they were.
	bufs, ierr := cl.into(h, cl.reply)
	var total uint64
	for _, b := range bufs {
		total += uint64(len(b))
	}
	if ierr == nil && total != h.PayloadLen {
		ierr = fmt.Errorf("%v reply payload is %d bytes, buffers hold %d: %w", h.Op, h.PayloadLen, total, engine.ErrCorrupt)
	}
	if ierr != nil {
		return ierr, discard()
	}
	for _, b := range bufs {
		if _, err := io.ReadFull(br, b); err != nil {
			err = c.readErr(err)
			return err, err
		}
	}
	return nil, nil
}

// BodyDecoder is a reply message that decodes its body itself (on the
// reader goroutine, like into): a caller's shortcut for a reply it
// recognizes by its bytes, or decodes faster, falling back to
// proto.Unmarshal. body holds only during the call: what the message
// keeps of it, it copies.
type BodyDecoder interface {
	proto.Message
	DecodeBody(body []byte) error
}

func (c *Conn) readErr(err error) error {
	if err == nil {
		return nil
	}
	select {
	case <-c.done:
		return c.Err()
	default:
	}
	return fmt.Errorf("read: %w: %w", ErrUnavailable, err)
}

// Ping sends a ping and waits for the answer.
func (c *Conn) Ping(ctx context.Context) error {
	return c.Do(ctx, OpPing, &wirepb.Ping{}, nil, &wirepb.Ping{}, nil)
}

// keepAlive pings the peer every KeepAlive and fails the connection when
// a ping goes unanswered for PingTimeout while the peer shows no other
// sign of life. Frames go each way in order: a working peer's pong may
// come late, after a large reply it is still sending, and the ping may go
// out late, after a large request still being written to it. So bytes
// read since the ping, or a write in progress when the ping was asked or
// when it was given up, count as an answer; the peer is asked again
// later.
func (c *Conn) keepAlive() {
	defer close(c.kaOut)
	if c.cfg.KeepAlive < 0 {
		<-c.done
		return
	}
	t := time.NewTicker(c.cfg.KeepAlive)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		read, writing := c.read.Load(), c.w.writing.Load()
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.PingTimeout)
		err := c.Ping(ctx)
		cancel()
		if err != nil && ctx.Err() != nil {
			// A write in progress when the ping was asked, and finished
			// since, went out ahead of the ping: the peer took it, and
			// may still be taking in what it sent.
			if c.read.Load() != read || writing || c.w.writing.Load() {
				continue
			}
			c.fail(fmt.Errorf("peer stopped answering (no pong in %v): %w", c.cfg.PingTimeout, ErrUnavailable))
			return
		}
	}
}

// countingReader counts the bytes read through it into n.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (r countingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.n.Add(int64(n))
	return n, err
}
