package tcp

// How a Conn moves bytes. Each Conn keeps a pool of Config.Conns
// multiplexed wire connections to one unit, dialed on first use and
// replaced when they fail:
//
//	Conn ── slot 0 ─▶ wire.Conn (writer, reader, keepalive goroutines)
//	     ├─ slot 1 ─▶ wire.Conn
//	     └─ …
//
// A call that moves at most StripeSize bytes is one request on the next
// slot in turn. A larger one is split into up to Conns stripes of about
// equal bytes, sent concurrently on different slots:
//
//	WRITE  stripes are runs of whole extents (the unit reserves one extent
//	       per size, so an extent never spans two requests); each piece of
//	       the caller's extents is written with writev from its own buffer
//	READ   stripes are byte ranges of the whole read, cutting ranges where
//	       needed; each stripe's reply is read from the socket straight
//	       into the matching windows of the caller's dst
//
// The calls that start the stripes wait for all of them, so the caller's
// buffers are its own again when a call returns.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/connset"
	"github.com/tqgo/tq/internal/hostid"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// Defaults.
const (
	DefaultConns      = 4
	DefaultStripeSize = 8 << 20
	DefaultWriteGrace = time.Second
	// MaxConns bounds Config.Conns.
	MaxConns = 64
)

// Config tunes a [Transport]. The zero value means the defaults.
type Config struct {
	// Conns is the number of connections kept to each unit (0: 4).
	Conns int
	// StripeSize is the size above which a transfer is split across
	// connections (0: 8 MiB). Writes split between extents, never inside
	// one; reads split anywhere.
	StripeSize int64
	// Token is presented in the handshake to units that require one.
	Token string
	// Name identifies this client in the units' logs.
	Name string
	// WriteGrace is how long a write whose context ended keeps waiting
	// for the unit's answer (0: 1 s; negative: not at all). A unit that
	// has read the payload commits the extents whether or not anyone
	// waits; waiting a little lets the write return them instead of
	// leaving them allocated with nobody knowing their address.
	WriteGrace time.Duration
	// Conn tunes each wire connection: keepalive pings detect a unit that
	// stops answering.
	Conn wire.ConnConfig
}

// DefaultConfig returns the defaults: 4 connections per unit, 8 MiB
// stripes.
func DefaultConfig() Config {
	return Config{Conns: DefaultConns, StripeSize: DefaultStripeSize, WriteGrace: DefaultWriteGrace}
}

// Validate reports a config with negative sizes or too many connections,
// wrapping [engine.ErrInvalid].
func (c Config) Validate() error {
	switch {
	case c.Conns < 0 || c.Conns > MaxConns:
		return fmt.Errorf("tcp config: %d connections per unit, want 0 to %d: %w", c.Conns, MaxConns, engine.ErrInvalid)
	case c.StripeSize < 0:
		return fmt.Errorf("tcp config: negative stripe size %d: %w", c.StripeSize, engine.ErrInvalid)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Conns <= 0 {
		c.Conns = DefaultConns
	}
	c.Conns = min(c.Conns, MaxConns)
	if c.StripeSize <= 0 {
		c.StripeSize = DefaultStripeSize
	}
	if c.WriteGrace == 0 {
		c.WriteGrace = DefaultWriteGrace
	}
	return c
}

// Transport dials storage units over TCP or unix sockets with the framed
// protocol of package wire. It is safe for concurrent use.
type Transport struct {
	cfg   Config
	conns connset.Set[*Conn]
}

var _ engine.Transport = (*Transport)(nil)

// New returns a transport. Invalid settings (see [Config.Validate]) fall
// back to the defaults.
func New(cfg Config) *Transport {
	if cfg.Validate() != nil {
		cfg = DefaultConfig()
	}
	return &Transport{cfg: cfg.withDefaults()}
}

// Name returns "tcp".
func (t *Transport) Name() string { return "tcp" }

// Dial connects to the unit at peer.Addr ("tcp://host:port",
// "unix:///path" or a bare host:port) and returns a [*Conn]. It dials one
// connection at once, so an unreachable unit fails here; the others are
// dialed when a transfer needs them. When peer.Unit is set, a server that
// answers as another unit is an error wrapping [engine.ErrLost].
func (t *Transport) Dial(ctx context.Context, peer engine.PeerInfo) (engine.DataConn, error) {
	c, err := t.DialConn(ctx, peer)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// DialConn is [Transport.Dial] returning the concrete type.
func (t *Transport) DialConn(ctx context.Context, peer engine.PeerInfo) (*Conn, error) {
	c := &Conn{
		t:     t,
		cfg:   t.cfg,
		addr:  peer.Addr,
		unit:  peer.Unit,
		inc:   peer.Incarnation,
		done:  make(chan struct{}),
		slots: make([]slot, t.cfg.Conns),
	}
	if _, _, err := wire.ParseAddr(peer.Addr); err != nil {
		return nil, c.opErr("dial", err)
	}
	if !t.conns.Add(c) {
		return nil, c.opErr("dial", fmt.Errorf("transport closed: %w", engine.ErrClosed))
	}
	if _, err := c.get(ctx, 0); err != nil {
		err = c.opErr("dial", err) // before Close: it failed for its own reason
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close closes every connection the transport made; later Dial calls fail
// with [engine.ErrClosed]. It is idempotent.
func (t *Transport) Close() error { return t.conns.Close() }

// Conn is a data connection to one storage unit: a small pool of wire
// connections. It is safe for concurrent use. The buffers passed to its
// methods are read or filled in place and belong to the caller again when
// the method returns.
type Conn struct {
	t    *Transport
	cfg  Config
	addr string
	unit engine.UnitID
	inc  uint64 // the unit's incarnation (0: any)

	done      chan struct{} // closed by Close
	closeOnce sync.Once
	next      atomic.Uint64 // round robin over slots

	mu      sync.Mutex
	closed  bool
	slots   []slot
	dialing sync.WaitGroup // dials in progress, and failed connections left to end; Close waits for them
}

type slot struct {
	conn  *wire.Conn
	ready chan struct{} // set while a dial is in progress; closed when it ends
}

var _ engine.DataConn = (*Conn)(nil)

// Close closes the pooled connections, failing calls in flight with errors
// wrapping [engine.ErrClosed], and waits for their goroutines. It is
// idempotent.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		close(c.done)
		var conns []*wire.Conn
		for i := range c.slots {
			if s := &c.slots[i]; s.conn != nil {
				conns = append(conns, s.conn)
				s.conn = nil
			}
		}
		c.mu.Unlock()
		for _, wc := range conns {
			wc.Close()
		}
		c.dialing.Wait()
		c.t.conns.Remove(c)
	})
	return nil
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
	return &engine.OpError{Op: op, Transport: "tcp", Peer: c.addr, Err: err}
}

// get returns slot i's connection, dialing it if it is missing or failed.
func (c *Conn) get(ctx context.Context, i int) (*wire.Conn, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, c.errClosed()
		}
		s := &c.slots[i]
		if s.conn != nil && s.conn.Err() == nil {
			wc := s.conn
			c.mu.Unlock()
			return wc, nil
		}
		if s.ready != nil { // someone else is dialing this slot
			ready := s.ready
			c.mu.Unlock()
			select {
			case <-ready:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-c.done:
				return nil, c.errClosed()
			}
		}
		if failed := s.conn; failed != nil {
			// A connection whose write failed still reads answers for a
			// while (see wire.Conn.Err): closing it now would fail the
			// calls waiting for them with the write's error. It ends on
			// its own; closing it then ends its goroutines.
			c.dialing.Go(func() {
				select {
				case <-failed.Done():
				case <-c.done:
				}
				failed.Close()
			})
		}
		s.conn = nil
		ready := make(chan struct{})
		s.ready = ready
		c.dialing.Add(1)
		c.mu.Unlock()

		wc, err := c.dial(ctx)

		c.mu.Lock()
		s.ready = nil
		close(ready)
		var stale *wire.Conn
		switch {
		case err != nil:
		case c.closed:
			stale, wc, err = wc, nil, c.errClosed()
		default:
			s.conn = wc
		}
		c.mu.Unlock()
		if stale != nil {
			stale.Close()
		}
		c.dialing.Done()
		return wc, err
	}
}

// dial opens one wire connection; Close cancels it.
func (c *Conn) dial(ctx context.Context) (*wire.Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-c.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	// The unit refuses the handshake if it is not the one meant (another
	// id, or a later run of it): the connection is bound to that unit
	// process for its life.
	hello := &wirepb.Hello{Role: "client", HostId: hostid.ID(), Token: c.cfg.Token, Name: c.cfg.Name, UnitId: uint32(c.unit), Incarnation: c.inc}
	wc, reply, err := wire.Dial(ctx, c.addr, hello, c.cfg.Conn)
	if err != nil {
		return nil, err
	}
	if err := wire.CheckUnit(reply, c.addr, c.unit, c.inc); err != nil {
		wc.Close()
		return nil, err
	}
	return wc, nil
}

// stripes returns how many requests a transfer of total bytes is split
// into.
func (c *Conn) stripes(total uint64) int {
	size := uint64(c.cfg.StripeSize)
	if total <= size {
		return 1
	}
	return int(min(uint64(c.cfg.Conns), (total+size-1)/size))
}

// run calls f(ctx, wc, k) for k in [0, n), each on a different slot,
// concurrently when n > 1, and returns the first failure. With
// cancelOnError, the first failure cancels the others.
func (c *Conn) run(ctx context.Context, n int, cancelOnError bool, f func(ctx context.Context, wc *wire.Conn, k int) error) error {
	start := int(c.next.Add(uint64(n)) % uint64(len(c.slots)))
	one := func(ctx context.Context, k int) error {
		wc, err := c.get(ctx, (start+k)%len(c.slots))
		if err != nil {
			return err
		}
		return f(ctx, wc, k)
	}
	if n == 1 {
		return one(ctx, 0)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
	)
	do := func(k int) {
		if err := one(ctx, k); err != nil {
			mu.Lock()
			if first == nil {
				first = err
			}
			mu.Unlock()
			if cancelOnError {
				cancel()
			}
		}
	}
	for k := 1; k < n; k++ {
		wg.Go(func() { do(k) })
	}
	do(0)
	wg.Wait()
	return first
}

// Write stores each extent — the concatenation of its pieces, written
// from the caller's buffers with no copy — in a fresh extent of the unit
// and returns one address per extent, in order. Extents of length 0 get
// the zero address. A write split into stripes that fails part-way frees
// the extents its other stripes stored.
//
// When ctx ends after the payload went out, Write waits up to
// [Config.WriteGrace] for the unit's answer (see there). Errors wrap
// [engine.ErrCapacity] when the unit is full, [engine.ErrClosed] after
// Close, [wire.ErrUnavailable] when the unit is unreachable or stops
// answering, and ctx's error.
func (c *Conn) Write(ctx context.Context, extents [][][]byte) ([]engine.RemoteAddr, error) {
	if err := ctx.Err(); err != nil {
		return nil, c.opErr("write", err)
	}
	if err := wire.CheckCount("extents", len(extents)); err != nil {
		return nil, c.opErr("write", err)
	}
	out := make([]engine.RemoteAddr, len(extents))
	if len(extents) == 0 {
		return out, nil
	}
	sizes := make([]uint64, len(extents))
	var total uint64
	for i, pieces := range extents {
		for _, p := range pieces {
			sizes[i] += uint64(len(p))
		}
		total += sizes[i]
	}
	if total > wire.MaxPayloadLen {
		return nil, c.opErr("write", fmt.Errorf("%d bytes exceed the limit of %d: %w", total, uint64(wire.MaxPayloadLen), engine.ErrInvalid))
	}
	cuts := splitExtents(sizes, total, c.stripes(total))
	done := make([]bool, len(cuts)-1)
	err := c.run(ctx, len(cuts)-1, false, func(ctx context.Context, wc *wire.Conn, k int) error {
		lo, hi := cuts[k], cuts[k+1]
		first := lo // the stripe's errors name the caller's extents
		if len(cuts) == 2 {
			first = -1 // the whole write
		}
		if err := c.writeStripe(ctx, wc, extents[lo:hi], sizes[lo:hi], out[lo:hi], first); err != nil {
			return err
		}
		done[k] = true
		return nil
	})
	if err != nil {
		c.freeStored(out, cuts, done)
		return nil, c.opErr("write", err)
	}
	return out, nil
}

// splitExtents cuts extents into at most k runs of about equal bytes and
// returns the cut points: run g is extents [cuts[g], cuts[g+1]). Each cut
// falls on the extent boundary nearest to an even share.
func splitExtents(sizes []uint64, total uint64, k int) []int {
	cuts := make([]int, 1, k+1)
	kk := uint64(k)
	j := uint64(1) // the next share boundary, total*j/k
	var cum uint64 // bytes before extent i
	for i, n := range sizes {
		next := cum + n
		for j < kk && next*kk >= total*j { // extent i reaches boundary j
			b := total * j
			last := cuts[len(cuts)-1]
			switch {
			case i > last && b-cum*kk < next*kk-b:
				cuts = append(cuts, i) // the boundary is nearer the start of extent i
			case i+1 < len(sizes) && i+1 > last:
				cuts = append(cuts, i+1)
			}
			j++
		}
		cum = next
	}
	return append(cuts, len(sizes))
}

// freeStored frees, best effort, the extents of the stripes of a failed
// write that were stored.
func (c *Conn) freeStored(out []engine.RemoteAddr, cuts []int, done []bool) {
	var stored []engine.RemoteAddr
	for k, ok := range done {
		if ok {
			stored = append(stored, out[cuts[k]:cuts[k+1]]...)
		}
	}
	if len(stored) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c.Free(ctx, stored)
}

// writeStripe writes extents, the caller's from first on (negative: the
// whole write), in one request.
func (c *Conn) writeStripe(ctx context.Context, wc *wire.Conn, extents [][][]byte, sizes []uint64, out []engine.RemoteAddr, first int) error {
	payload := wire.WritePayload(extents)
	// The unit commits what it has read whether or not we wait, so a
	// caller that gives up only stops the wait after the grace period.
	grace := c.cfg.WriteGrace
	if grace <= 0 {
		grace = -1
	}
	var reply wirepb.WriteReply
	if err := wc.DoGrace(ctx, grace, wire.OpWrite, &wirepb.WriteRequest{Sizes: sizes, NoWait: engine.NoWait(ctx), WaitMs: engine.RoomWaitMillis(ctx)}, payload, &reply); err != nil {
		return err
	}
	addrs, err := wire.WrittenExtentsAt(&reply, sizes, first)
	if err != nil {
		return err
	}
	copy(out, addrs)
	return nil
}

// Read copies each range's bytes into dst[i], whose length must equal
// ranges[i].Len, straight from the socket. A range the unit no longer
// holds fails the whole read with an error wrapping
// [engine.ErrNotFound]; dst may then hold part of the data. Other errors
// as for [Conn.Write], and [engine.ErrInvalid] for mismatched lengths.
func (c *Conn) Read(ctx context.Context, ranges []engine.RemoteAddr, dst [][]byte) error {
	if err := ctx.Err(); err != nil {
		return c.opErr("read", err)
	}
	if err := c.checkRead(ranges, dst); err != nil {
		return c.opErr("read", err)
	}
	var total uint64
	for _, r := range ranges {
		total += r.Len
	}
	var pieces []readPiece
	if k := c.stripes(total); k == 1 {
		pieces = []readPiece{{ranges: ranges, dst: dst}}
	} else {
		pieces = splitRanges(ranges, dst, total, k)
	}
	err := c.run(ctx, len(pieces), true, func(ctx context.Context, wc *wire.Conn, k int) error {
		p := pieces[k]
		return wc.Do(ctx, wire.OpRead, &wirepb.ReadRequest{Ranges: wire.RangesToPB(p.ranges)}, nil, &wirepb.Empty{},
			func(wire.Header, proto.Message) ([][]byte, error) { return p.dst, nil })
	})
	if err != nil {
		return c.opErr("read", err)
	}
	return nil
}

func (c *Conn) checkRead(ranges []engine.RemoteAddr, dst [][]byte) error {
	if err := wire.CheckReadBuffers(ranges, dst); err != nil {
		return err
	}
	var total uint64
	for _, r := range ranges {
		if total += r.Len; total > wire.MaxPayloadLen {
			return fmt.Errorf("ranges exceed the limit of %d bytes: %w", uint64(wire.MaxPayloadLen), engine.ErrInvalid)
		}
	}
	return nil
}

// readPiece is one stripe of a read: sub-ranges and the windows of the
// caller's buffers they land in.
type readPiece struct {
	ranges []engine.RemoteAddr
	dst    [][]byte
}

// splitRanges cuts a read of total bytes into k stripes of about equal
// bytes, splitting ranges at the cuts. Ranges of length 0 are left out.
func splitRanges(ranges []engine.RemoteAddr, dst [][]byte, total uint64, k int) []readPiece {
	pieces := make([]readPiece, 0, k)
	var cur readPiece
	var at uint64 // bytes placed so far
	j := uint64(1)
	kk := uint64(k)
	bound := func() uint64 { return total * j / kk }
	for i, r := range ranges {
		off := uint64(0)
		for off < r.Len {
			n := r.Len - off
			if j < kk && at+n > bound() {
				n = bound() - at
			}
			if n > 0 {
				cur.ranges = append(cur.ranges, engine.RemoteAddr{Segment: r.Segment, Gen: r.Gen, Offset: r.Offset + off, Len: n})
				cur.dst = append(cur.dst, dst[i][off:off+n])
				off += n
				at += n
			}
			if j < kk && at == bound() {
				if len(cur.ranges) > 0 {
					pieces = append(pieces, cur)
					cur = readPiece{}
				}
				j++
			}
		}
	}
	if len(cur.ranges) > 0 {
		pieces = append(pieces, cur)
	}
	return pieces
}

// Free releases cells on the unit in one request (see storage.Unit.Free:
// all or nothing; cells not stored, or freed already, are an error
// wrapping [engine.ErrNotFound]).
func (c *Conn) Free(ctx context.Context, cells []engine.RemoteAddr) error {
	if err := ctx.Err(); err != nil {
		return c.opErr("free", err)
	}
	if err := wire.CheckCount("cells", len(cells)); err != nil {
		return c.opErr("free", err)
	}
	if len(cells) == 0 {
		return nil
	}
	err := c.run(ctx, 1, false, func(ctx context.Context, wc *wire.Conn, _ int) error {
		return wc.Do(ctx, wire.OpFree, &wirepb.FreeRequest{Cells: wire.RangesToPB(cells)}, nil, &wirepb.Empty{}, nil)
	})
	if err != nil {
		return c.opErr("free", err)
	}
	return nil
}

// Stats asks the unit for its accounting (op UNIT_STATS).
func (c *Conn) Stats(ctx context.Context) (*wirepb.UnitStats, error) {
	var st wirepb.UnitStats
	err := c.run(ctx, 1, false, func(ctx context.Context, wc *wire.Conn, _ int) error {
		return wc.Do(ctx, wire.OpUnitStats, &wirepb.Empty{}, nil, &st, nil)
	})
	if err != nil {
		return nil, c.opErr("stats", err)
	}
	return &st, nil
}
