package shm

// How a Conn works. One wire connection to the unit's unix socket carries
// the control requests; the unit keeps, per connection, the reservations
// and leases it opened (and gives them back when the connection ends).
// The bytes move through the client's own mappings of the unit's memfd
// segments, fetched from the unit's fd socket on first use (mapping.go):
//
//	Write   RESERVE(sizes) → id + extents; copy each piece into the
//	        read-write mapping in chunks below 1 MiB (so copy() stays
//	        cache-temporal); RESERVE_COMMIT(id). Any failure: RESERVE_ABORT.
//	Read    ACQUIRE(ranges) → lease id; copy out of the read-only mapping;
//	        RELEASE(id).
//	View    ACQUIRE; the caller reads the read-only mapping in place until
//	        Lease.Release sends RELEASE.
//	Reserve RESERVE; the caller fills the read-write mapping in place until
//	        Reservation.Commit or Abort.
//
// A request that opens a reservation or a lease is waited for a grace
// period past the caller's context, so that its id is known and the hold
// can be given back; a hold whose id is lost anyway (the connection broke)
// is given back by the unit when the connection ends.
//
// Close stops the copies in flight (they check between chunks), waits
// for them, and then says goodbye (SHM_GOODBYE) before it closes the
// connection: the unit gives the connection's holds back at once, and may
// hand their bytes to another put. A connection that ends otherwise — the
// unit hangs up, or a ping times out — stops the copies too, and a Read
// whose connection ended before its copy finished fails: the bytes may be
// another put's. A Write's copy can still run a moment past such an end,
// until this side sees it, and a caller can still write a Reservation's
// Buf or read a Lease's views; so the unit keeps the holds of a
// connection that ended without a goodbye in quarantine, out of reuse,
// until this process exits or the unit's quarantine
// (storage.ServerConfig.Quarantine, 30 s by default) passes
// (storage/quarantine.go).

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/internal/connset"
	"github.com/tqgo/tq/internal/hostid"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// Defaults.
const (
	DefaultGrace = time.Second
	// copyChunk is the most one copy() moves: Go's memmove switches to
	// non-temporal stores at 1 MiB, which sends the bytes to DRAM.
	copyChunk = 1<<20 - 4<<10
	// cleanupTimeout bounds a best-effort ABORT or RELEASE.
	cleanupTimeout = 2 * time.Second
)

// Config tunes a [Transport]. The zero value means the defaults.
type Config struct {
	// Token is presented in the handshake and on the fd socket to units
	// that require one.
	Token string
	// Name identifies this client in the units' logs.
	Name string
	// Grace is how long a request that opens or ends a reservation or a
	// lease keeps waiting for the unit's answer after the caller's
	// context ended (0: 1 s; negative: not at all), so that the hold can
	// be given back rather than left to the end of the connection.
	Grace time.Duration
	// Conn tunes the wire connection: keepalive pings detect a unit that
	// stops answering.
	Conn wire.ConnConfig
	// Control picks the channel for control requests (ring.go): a
	// shared-memory ring when the unit offers one (ControlAuto, the
	// default), or always the unit's socket, or always a ring.
	Control Control
	// RingSpin is how long a control ring's reader spins for an answer
	// before it parks until the unit rings (0: 10 µs; negative: not at
	// all).
	RingSpin time.Duration
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config { return Config{Grace: DefaultGrace} }

// Validate reports nothing today; it exists so that every transport's
// config is checked the same way.
func (c Config) Validate() error { return nil }

// Transport dials storage units on this host through shared memory. It is
// safe for concurrent use.
type Transport struct {
	cfg   Config
	conns connset.Set[*Conn]
}

var _ engine.Transport = (*Transport)(nil)

// New returns a transport.
func New(cfg Config) *Transport {
	if cfg.Grace == 0 {
		cfg.Grace = DefaultGrace
	}
	return &Transport{cfg: cfg}
}

// Name returns "shm".
func (t *Transport) Name() string { return "shm" }

// Dial connects to the unit whose wire socket is peer.Addr
// ("unix:///path") and returns a [*Conn].
func (t *Transport) Dial(ctx context.Context, peer engine.PeerInfo) (engine.DataConn, error) {
	c, err := t.DialConn(ctx, peer)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// DialConn is [Transport.Dial] returning the concrete type. It fails with
// an error wrapping [engine.ErrNotSupported] when the unit cannot share
// memory with this process: peer.Addr is not a unix socket, the unit runs
// on another host (its boot id differs), or it serves no fd socket. When
// peer.Unit is set, a server that answers as another unit is an error
// wrapping [engine.ErrLost].
func (t *Transport) DialConn(ctx context.Context, peer engine.PeerInfo) (*Conn, error) {
	c := &Conn{t: t, cfg: t.cfg, addr: peer.Addr, done: make(chan struct{}), segs: map[uint32]*segment{}, mapping: make(chan struct{}, 1), sweepKick: make(chan struct{}, 1)}
	if !strings.HasPrefix(peer.Addr, "unix://") {
		return nil, c.opErr("dial", fmt.Errorf("address %q is not a unix socket: %w", peer.Addr, engine.ErrNotSupported))
	}
	if !t.conns.Add(c) {
		return nil, c.opErr("dial", fmt.Errorf("transport closed: %w", engine.ErrClosed))
	}
	if err := c.dial(ctx, peer.Unit, peer.Incarnation); err != nil {
		err = c.opErr("dial", err) // before Close: it failed for its own reason
		c.Close()
		return nil, err
	}
	c.mu.RLock()
	wc := c.wc
	c.mu.RUnlock()
	c.watch.Go(func() {
		select {
		case <-wc.Done():
			c.gone.Store(true)
			if c.held.Load() == 0 {
				c.dropSegments()
			}
		case <-c.done:
		}
	})
	every := sweepEvery
	c.watch.Go(func() { c.sweepLoop(every, wc.Done()) })
	return c, nil
}

// Close closes every connection the transport made; later Dial calls fail
// with [engine.ErrClosed]. It is idempotent.
func (t *Transport) Close() error { return t.conns.Close() }

// Conn is a shared-memory connection to one storage unit on this host. It
// is safe for concurrent use. Buffers passed to Write and Read are the
// caller's again when the call returns. Slices from [Lease.Bytes] and
// [Reservation.Buf] point into the unit's segments as mapped by this Conn:
// they are valid until the lease is released or the reservation ends, and
// never after [Conn.Close], which unmaps the segments. The unit holds
// them for this connection only: once it ends ([Conn.Gone]), it may hand
// their bytes to others — after its quarantine, or at once after Close.
type Conn struct {
	t      *Transport
	cfg    Config
	addr   string
	wc     *wire.Conn
	ring   bool // wc runs over a control ring
	fdSock string
	unit   engine.UnitID // the unit's id, as its handshake gave it
	// fdToken is what the fd socket is sent for the token: the token, to
	// a unit whose handshake proved it knows it and whose fd socket is in
	// a directory only this user may write to (auth.CheckPeerSocket),
	// else nothing. The fd
	// socket's path is the unit's to name, and the token goes there in
	// clear: a peer that answered the HELLO without the challenge (as a
	// unit without a token does, and as any peer can) must not get it.
	fdToken string
	// inc is the incarnation the unit's handshake named: segment fetches
	// ask the fd socket for that run's segments only.
	inc uint64

	done      chan struct{} // closed by Close
	closeOnce sync.Once
	closeErr  error

	mu     sync.RWMutex
	closed bool
	ops    sync.WaitGroup // calls that may touch the mappings; Close waits
	copies sync.WaitGroup // Write's and Read's copies through a hold; Close waits before it ends the connection
	segs   map[uint32]*segment
	// mapping serializes fetching and mapping new segments: a lock of
	// one slot, which a caller waits for only as long as its context
	// lets it (the fetch under it may wait on a slow unit).
	mapping chan struct{}
	// sweepKick asks sweepLoop to look for segments the unit dropped
	// now (mapping.go): a call mapped a new one.
	sweepKick chan struct{}

	// held counts what may touch the mappings: calls in flight (begin),
	// leases not released and reservations not ended. Once the connection
	// to the unit has ended (gone) and nothing is held, the segments are
	// unmapped then rather than at Close: a unit's memory is freed only
	// when no process maps it, so a long-lived client would otherwise keep
	// every dead unit's memory it ever read.
	held  atomic.Int64
	gone  atomic.Bool
	watch sync.WaitGroup // the goroutines that see the connection end and sweep
}

var _ engine.DataConn = (*Conn)(nil)

func (c *Conn) dial(ctx context.Context, unit engine.UnitID, inc uint64) error {
	// The unit refuses the handshake if it is not the one meant (another
	// id, or a later run of it).
	hello := &wirepb.Hello{Role: "client", HostId: hostid.ID(), Token: c.cfg.Token, Name: c.cfg.Name, UnitId: uint32(unit), Incarnation: inc}
	wc, reply, err := wire.Dial(ctx, c.addr, hello, c.connConfig())
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		wc.Close()
		return c.errClosed()
	}
	c.wc = wc
	c.mu.Unlock()
	if err := wire.CheckUnit(reply, c.addr, unit, inc); err != nil {
		return err
	}
	if reply.HostId != hostid.ID() {
		return fmt.Errorf("unit runs on host %q, this is %q: %w", reply.HostId, hostid.ID(), engine.ErrNotSupported)
	}
	c.inc = reply.Incarnation
	c.unit = engine.UnitID(reply.UnitId)
	if wc.ServerProved() {
		c.fdToken = c.cfg.Token
	}
	var segs wirepb.ShmSegmentsReply
	if err := wc.Do(ctx, wire.OpShmSegments, &wirepb.Empty{}, nil, &segs, nil); err != nil {
		return fmt.Errorf("shm segments: %w", err)
	}
	c.fdSock = segs.FdSocket
	if auth.CheckPeerSocket(c.fdSock) != nil {
		// The token goes there in clear: not to a socket another user
		// may have put there (it may not exist yet: then the dial fails).
		c.fdToken = ""
	}
	if c.cfg.Control == ControlSocket {
		return nil
	}
	rwc, err := c.dialRing(ctx, hello)
	switch {
	case err == nil:
	case c.cfg.Control == ControlAuto && (errors.Is(err, engine.ErrNotSupported) || errors.Is(err, engine.ErrCapacity)):
		return nil // the unit offers no ring, or is busy: stay on the socket
	default:
		return fmt.Errorf("control ring: %w", err)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		rwc.Close()
		return c.errClosed()
	}
	c.wc, wc = rwc, c.wc
	c.ring = true
	c.mu.Unlock()
	wc.Close() // its session holds nothing
	return nil
}

// Control reports the channel the Conn sends its control requests over:
// ControlRing or ControlSocket.
func (c *Conn) Control() Control {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.ring {
		return ControlRing
	}
	return ControlSocket
}

// Close stops the copies of Write and Read in flight, tells the unit
// that this side touches none of the connection's holds again (waiting
// up to 2 s for its answer) — the unit then aborts its open reservations
// and releases its leases at once —
// closes the wire connection, fails calls in flight with errors wrapping
// [engine.ErrClosed], waits for them, and unmaps the segments. Slices
// from [Lease.Bytes] and [Reservation.Buf] must not be used once Close
// was called. It is idempotent.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		close(c.done)
		wc := c.wc
		c.mu.Unlock()
		// The copies stop at their next chunk; until they have, the
		// connection keeps the unit from reusing their extents.
		c.copies.Wait()
		var errs []error
		if wc != nil {
			c.goodbye(wc)
			errs = append(errs, wc.Close())
		}
		c.ops.Wait()
		c.watch.Wait()
		errs = append(errs, c.dropSegments()...)
		c.t.conns.Remove(c)
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// goodbye tells the unit, if the connection still stands, that this side
// touches none of its holds again, so that the unit gives them back at
// once rather than keep them in quarantine (storage/quarantine.go). It
// is best-effort: a unit that does not answer, or does not know the op,
// gives them back later.
func (c *Conn) goodbye(wc *wire.Conn) {
	if wc.Err() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	wc.Do(ctx, wire.OpShmGoodbye, &wirepb.Empty{}, nil, &wirepb.Empty{}, nil)
}

// Gone reports whether the connection to the unit has ended (the unit
// died, or the connection broke): every call fails from then on, and a
// new Conn must be dialed.
func (c *Conn) Gone() bool { return c.gone.Load() }

// dropSegments unmaps every segment mapped so far.
func (c *Conn) dropSegments() []error {
	c.mapping <- struct{}{} // a segment being mapped is dropped by its mapper
	defer func() { <-c.mapping }()
	c.mu.Lock()
	segs := c.segs
	c.segs = map[uint32]*segment{}
	c.mu.Unlock()
	var errs []error
	for _, s := range segs {
		errs = append(errs, s.unmap())
	}
	return errs
}

// unhold ends one of what held counts, and unmaps the segments when it
// was the last and the connection has ended.
func (c *Conn) unhold() {
	if c.held.Add(-1) == 0 && c.gone.Load() {
		c.dropSegments()
	}
}

// end ends a call that begin registered.
func (c *Conn) end() {
	c.ops.Done()
	c.unhold()
}

func (c *Conn) errClosed() error { return fmt.Errorf("connection closed: %w", engine.ErrClosed) }

// opErr wraps a failure; after Close every failure also wraps
// engine.ErrClosed.
func (c *Conn) opErr(op string, err error) error {
	select {
	case <-c.done:
		if !errors.Is(err, engine.ErrClosed) {
			err = fmt.Errorf("%w: %w", engine.ErrClosed, err)
		}
	default:
	}
	return &engine.OpError{Op: op, Transport: "shm", Peer: c.addr, Err: err}
}

// begin registers a call that may touch the mappings; end it with
// c.ops.Done. It fails after Close.
func (c *Conn) begin(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return c.errClosed()
	}
	c.ops.Add(1)
	c.held.Add(1)
	return nil
}

// do sends one request and waits for its reply.
func (c *Conn) do(ctx context.Context, op wire.Op, body, reply proto.Message) error {
	return c.wc.Do(ctx, op, body, nil, reply, nil)
}

// doHeld sends a request whose answer opens or ends a hold on the unit
// (or, for an inline WRITE, stores an extent): see wire.Conn.DoGrace.
func (c *Conn) doHeld(ctx context.Context, op wire.Op, body proto.Message, payload net.Buffers, reply proto.Message) error {
	return c.wc.DoGrace(ctx, c.cfg.Grace, op, body, payload, reply)
}

// connConfig is the config of the unit's connections, socket or ring: a
// lease or reservation whose answer came after its caller gave up is
// given back at once, not held until the connection ends.
func (c *Conn) connConfig() wire.ConnConfig {
	cc := c.cfg.Conn
	cc.LateReply = wire.HoldReleaser(c.cleanup)
	return cc
}

// cleanup sends a best-effort ABORT or RELEASE (wire.Conn.Cleanup).
func (c *Conn) cleanup(op wire.Op, body proto.Message) { c.wc.Cleanup(op, body) }

// Write stores each extent — the concatenation of its pieces — in a fresh
// extent of the unit: it reserves the extents, copies the pieces into
// shared memory and commits. Extents of length 0 get the zero address.
// Nothing of a write that fails stays on the unit. Errors wrap
// [engine.ErrCapacity] when the unit is full, [engine.ErrClosed] after
// Close, [wire.ErrUnavailable] when the unit stops answering, and ctx's
// error.
//
// The copy stops when the Conn closes (Close waits for it) or the
// connection ends. A connection that ends without Close — the unit
// hangs up, or stops answering pings — may have ended on the unit a
// moment before this side sees it, and the copy can write up to one chunk
// per copying goroutine into the reservation's extents before it stops;
// the unit keeps those extents in quarantine, out of other puts' reach,
// for that long (see the top of shm.go).
func (c *Conn) Write(ctx context.Context, extents [][][]byte) ([]engine.RemoteAddr, error) {
	if err := wire.CheckCount("extents", len(extents)); err != nil {
		return nil, c.opErr("write", err)
	}
	sizes := make([]int64, len(extents))
	for i, pieces := range extents {
		for _, p := range pieces {
			sizes[i] += int64(len(p))
		}
	}
	if err := c.begin(ctx); err != nil {
		return nil, c.opErr("write", err)
	}
	defer c.end()
	var total int64
	for _, n := range sizes {
		total += n
	}
	if c.Inline(uint64(total)) {
		addrs, err := c.writeInline(ctx, extents, sizes)
		if err != nil {
			return nil, c.opErr("write", err)
		}
		return addrs, nil
	}
	r, err := c.reserve(ctx, sizes)
	if err != nil {
		return nil, c.opErr("write", err)
	}
	var jobs []copyJob
	for i, pieces := range extents {
		buf := r.bufs[i]
		for _, p := range pieces {
			jobs = append(jobs, copyJob{buf, p})
			buf = buf[len(p):]
		}
	}
	if err := c.copyHeld(jobs); err != nil {
		r.abort()
		return nil, c.opErr("write", err)
	}
	if err := r.commit(ctx); err != nil {
		return nil, c.opErr("write", err)
	}
	return r.addrs, nil
}

// InlineMax is the most bytes a write or read carries through a control
// ring itself, in one round trip, instead of reserving (or leasing)
// shared memory and copying there in two: below it the second round trip
// costs more than the extra copy. 1 KiB KV put+get with 16 clients:
// 28.9k ops/s with every write reserved and every read leased, 30–31k
// with both inline (tcp: 30–32k). Over a socket the bytes never go
// inline.
const InlineMax = 16 << 10

// Inline reports whether an op on n bytes goes through the control ring
// (see [InlineMax]) rather than through shared memory.
func (c *Conn) Inline(n uint64) bool { return n <= InlineMax && c.Control() == ControlRing }

// writeInline is WRITE with the bytes in the request: the unit copies
// them from the ring into a fresh extent and commits it before it answers,
// whether or not we still wait: the answer is awaited past ctx like a
// hold's, so a caller that gives up leaves no extent nobody knows of.
func (c *Conn) writeInline(ctx context.Context, extents [][][]byte, sizes []int64) ([]engine.RemoteAddr, error) {
	usizes := make([]uint64, len(sizes))
	for i, n := range sizes {
		usizes[i] = uint64(n)
	}
	var reply wirepb.WriteReply
	if err := c.doHeld(ctx, wire.OpWrite, &wirepb.WriteRequest{Sizes: usizes, NoWait: engine.NoWait(ctx), WaitMs: engine.RoomWaitMillis(ctx)}, wire.WritePayload(extents), &reply); err != nil {
		return nil, err
	}
	return wire.WrittenExtents(&reply, usizes)
}

// copyJob is one copy of src into dst (at least as long).
type copyJob struct{ dst, src []byte }

// copyHeld runs jobs through a hold of this connection (a reservation or
// a lease) unless the Conn closes or the connection ends first, and fails
// if that happened before the copy was done: the unit gives the holds
// back when the connection ends. Close waits for it.
func (c *Conn) copyHeld(jobs []copyJob) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return c.errClosed()
	}
	c.copies.Add(1)
	c.mu.Unlock()
	defer c.copies.Done()
	ended := c.wc.Done()
	stop := func() bool {
		select {
		case <-c.done:
			return true
		case <-ended:
			return true
		default:
			return false
		}
	}
	if copyAll(jobs, stop) && c.wc.Err() == nil {
		return nil
	}
	select {
	case <-c.done:
		return c.errClosed()
	default:
	}
	if err := c.wc.Err(); err != nil {
		return fmt.Errorf("connection ended during the copy: %w", err)
	}
	return fmt.Errorf("connection ended during the copy: %w", wire.ErrUnavailable)
}

// parallelCopyMin is the smallest copy worth splitting across goroutines.
const parallelCopyMin = 16 << 20

// copyAll runs the copies, split into byte ranges of about equal size on
// up to GOMAXPROCS goroutines (at most 4) when they are large: one core
// does not saturate memory bandwidth here (machine.md §3a: 20–23 GB/s on
// one core, 24–26 on two). Each goroutine asks stop before every chunk
// and gives up when it says so; copyAll reports whether every byte was
// copied.
func copyAll(jobs []copyJob, stop func() bool) bool {
	total := 0
	for _, j := range jobs {
		total += len(j.src)
	}
	workers := min(runtime.GOMAXPROCS(0), 4, total/(parallelCopyMin/2))
	if total < parallelCopyMin || workers < 2 {
		for _, j := range jobs {
			if !copyChunked(j.dst, j.src, stop) {
				return false
			}
		}
		return true
	}
	share := (total + workers - 1) / workers
	var wg sync.WaitGroup
	var stopped atomic.Bool
	copyPart := func(part []copyJob) {
		for _, p := range part {
			if !copyChunked(p.dst, p.src, stop) {
				stopped.Store(true)
				return
			}
		}
	}
	var mine []copyJob
	left := share
	for _, j := range jobs {
		dst, src := j.dst, j.src
		for len(src) > 0 {
			n := min(len(src), left)
			mine = append(mine, copyJob{dst[:n], src[:n]})
			dst, src, left = dst[n:], src[n:], left-n
			if left == 0 {
				part := mine
				wg.Go(func() { copyPart(part) })
				mine, left = nil, share
			}
		}
	}
	copyPart(mine) // the last share, on this goroutine
	wg.Wait()
	return !stopped.Load()
}

// copyChunked copies src into dst (at least as long) in pieces below
// 1 MiB each, asking stop before each; it reports whether it copied all.
func copyChunked(dst, src []byte, stop func() bool) bool {
	for len(src) > 0 {
		if stop() {
			return false
		}
		n := copy(dst, src[:min(len(src), copyChunk)])
		dst, src = dst[n:], src[n:]
	}
	return true
}

// Read copies each range's bytes into dst[i], whose length must equal
// ranges[i].Len, out of shared memory under a lease. A range the unit no
// longer holds fails the whole read with an error wrapping
// [engine.ErrNotFound]. Other errors as for [Conn.Write], and
// [engine.ErrInvalid] for mismatched lengths. A Read whose connection
// ended (as far as this side has seen) before its copy was done fails —
// the unit released the lease then, and the bytes may be another put's —
// with an error wrapping [engine.ErrClosed] after Close; dst then holds
// garbage.
func (c *Conn) Read(ctx context.Context, ranges []engine.RemoteAddr, dst [][]byte) error {
	if err := wire.CheckReadBuffers(ranges, dst); err != nil {
		return c.opErr("read", err)
	}
	if err := c.begin(ctx); err != nil {
		return c.opErr("read", err)
	}
	defer c.end()
	var total uint64
	for _, r := range ranges {
		total += r.Len
	}
	if c.Inline(total) {
		err := c.wc.Do(ctx, wire.OpRead, &wirepb.ReadRequest{Ranges: wire.RangesToPB(ranges)}, nil, &wirepb.Empty{},
			func(wire.Header, proto.Message) ([][]byte, error) { return dst, nil })
		if err != nil {
			return c.opErr("read", err)
		}
		return nil
	}
	l, err := c.acquire(ctx, ranges)
	if err != nil {
		return c.opErr("read", err)
	}
	jobs := make([]copyJob, len(l.views))
	for i, v := range l.views {
		jobs[i] = copyJob{dst[i], v}
	}
	err = c.copyHeld(jobs)
	l.Release()
	if err != nil {
		return c.opErr("read", err)
	}
	return nil
}

// Free releases cells on the unit (see storage.Unit.Free: all or nothing;
// cells not stored, or freed already, are an error wrapping
// [engine.ErrNotFound]).
func (c *Conn) Free(ctx context.Context, cells []engine.RemoteAddr) error {
	if err := wire.CheckCount("cells", len(cells)); err != nil {
		return c.opErr("free", err)
	}
	if err := c.begin(ctx); err != nil {
		return c.opErr("free", err)
	}
	defer c.end()
	if len(cells) == 0 {
		return nil
	}
	if err := c.do(ctx, wire.OpFree, &wirepb.FreeRequest{Cells: wire.RangesToPB(cells)}, &wirepb.Empty{}); err != nil {
		return c.opErr("free", err)
	}
	return nil
}

// Stats asks the unit for its accounting (op UNIT_STATS).
func (c *Conn) Stats(ctx context.Context) (*wirepb.UnitStats, error) {
	if err := c.begin(ctx); err != nil {
		return nil, c.opErr("stats", err)
	}
	defer c.end()
	var st wirepb.UnitStats
	if err := c.do(ctx, wire.OpUnitStats, &wirepb.Empty{}, &st); err != nil {
		return nil, c.opErr("stats", err)
	}
	return &st, nil
}
