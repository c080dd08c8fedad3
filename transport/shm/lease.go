package shm

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/invariants"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// Lease is a read lease on ranges of the unit, held by the Conn's
// connection: while it is held the unit does not reuse the bytes. Its
// views point into this process's read-only mapping of the unit's
// segments (no copy). Release is safe from any goroutine and more than
// once.
type Lease struct {
	c        *Conn
	id       uint64
	views    [][]byte
	segs     []*segment // pinned until Release (see segment.pins)
	seg1     [1]*segment
	released atomic.Bool
}

// View leases ranges and returns views of them in shared memory, valid
// until [Lease.Release] (and never after [Conn.Close]). The views are
// mapped PROT_READ: writing through one raises SIGSEGV. A range the unit
// no longer holds is an error wrapping [engine.ErrNotFound]; other errors
// as for [Conn.Read].
func (c *Conn) View(ctx context.Context, ranges []engine.RemoteAddr) (*Lease, error) {
	if err := c.begin(ctx); err != nil {
		return nil, c.opErr("view", err)
	}
	defer c.end()
	l, err := c.acquire(ctx, ranges)
	if err != nil {
		return nil, c.opErr("view", err)
	}
	return l, nil
}

// acquire sends ACQUIRE and maps the views. The caller holds c.ops.
func (c *Conn) acquire(ctx context.Context, ranges []engine.RemoteAddr) (*Lease, error) {
	if err := wire.CheckCount("ranges", len(ranges)); err != nil {
		return nil, err
	}
	var reply wirepb.AcquireReply
	if err := c.doHeld(ctx, wire.OpAcquire, &wirepb.AcquireRequest{Ranges: wire.RangesToPB(ranges)}, nil, &reply); err != nil {
		return nil, err
	}
	l := &Lease{c: c, id: reply.Lease, views: make([][]byte, len(ranges))}
	l.segs = l.seg1[:0]
	c.held.Add(1) // until Release
	err := ctx.Err()
	for i, a := range ranges {
		if err != nil {
			break
		}
		if a.Len == 0 {
			l.views[i] = []byte{}
			continue
		}
		var s *segment
		if s, err = c.segment(ctx, a.Segment); err == nil {
			l.segs = append(l.segs, s)
			l.views[i], err = window(s.ro, a)
		}
	}
	if err != nil {
		l.Release()
		return nil, err
	}
	return l, nil
}

// Len returns the number of ranges.
func (l *Lease) Len() int { return len(l.views) }

// Bytes returns range i: a read-only view of the unit's memory, valid
// until Release.
func (l *Lease) Bytes(i int) []byte {
	if invariants.Enabled && l.released.Load() {
		panic("shm: Lease.Bytes after Release")
	}
	return l.views[i]
}

// Release ends the lease: the views must not be used afterwards. It
// sends RELEASE to the unit without waiting for the answer (the caller
// gives the memory up; nothing it does depends on when the unit takes it
// back), so a get costs one round trip, not two. After the Conn closed the
// unit released the lease already. Release is idempotent.
func (l *Lease) Release() {
	if !l.released.CompareAndSwap(false, true) {
		return
	}
	unpin(l.segs)
	l.c.unhold()
	if l.c.begin(context.Background()) != nil {
		return
	}
	go func() {
		defer l.c.end()
		l.c.cleanup(wire.OpRelease, &wirepb.ReleaseRequest{Lease: l.id})
	}()
}

// Reservation is the write half of a zero-copy put: extents reserved on
// the unit that the caller fills in place through [Reservation.Buf] and
// then commits or aborts. Nobody can read them before Commit. The unit
// owns the memory; the caller may write it until Commit or Abort. A
// reservation neither committed nor aborted is aborted by the unit when
// the Conn closes; one left open past the unit's reservation timeout can
// no longer commit. Its methods are safe for concurrent use, but a
// reservation is meant to be filled by one put.
type Reservation struct {
	c     *Conn
	id    uint64
	addrs []engine.RemoteAddr
	bufs  [][]byte
	segs  []*segment // pinned until it ends (see segment.pins)
	seg1  [1]*segment
	ended atomic.Bool
}

// Reserve reserves one extent per size on the unit and maps them for
// writing. Errors wrap [engine.ErrInvalid] for a negative size,
// [engine.ErrCapacity] when the unit stays full, and as for [Conn.Write].
func (c *Conn) Reserve(ctx context.Context, sizes []int64) (*Reservation, error) {
	if err := c.begin(ctx); err != nil {
		return nil, c.opErr("reserve", err)
	}
	defer c.end()
	r, err := c.reserve(ctx, sizes)
	if err != nil {
		return nil, c.opErr("reserve", err)
	}
	return r, nil
}

// reserve sends RESERVE and maps the extents. The caller holds c.ops.
func (c *Conn) reserve(ctx context.Context, sizes []int64) (*Reservation, error) {
	if err := wire.CheckCount("extents", len(sizes)); err != nil {
		return nil, err
	}
	us := make([]uint64, len(sizes))
	for i, n := range sizes {
		if n < 0 {
			return nil, fmt.Errorf("extent %d of %d bytes: %w", i, n, engine.ErrInvalid)
		}
		us[i] = uint64(n)
	}
	var reply wirepb.ReserveReply
	if err := c.doHeld(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: us, NoWait: engine.NoWait(ctx), WaitMs: engine.RoomWaitMillis(ctx)}, nil, &reply); err != nil {
		return nil, err
	}
	r := &Reservation{c: c, id: reply.Reservation, bufs: make([][]byte, len(sizes))}
	r.segs = r.seg1[:0]
	c.held.Add(1) // until it ends
	addrs, err := reservedExtents(reply.Extents, us)
	if err == nil {
		err = ctx.Err()
	}
	r.addrs = addrs
	for i := 0; err == nil && i < len(sizes); i++ {
		a := addrs[i]
		switch {
		case a.Len == 0:
			r.bufs[i] = []byte{}
		default:
			var s *segment
			if s, err = c.segment(ctx, a.Segment); err == nil {
				r.segs = append(r.segs, s)
				r.bufs[i], err = window(s.rw, a)
			}
		}
	}
	if err != nil {
		r.abort()
		return nil, err
	}
	return r, nil
}

// reservedExtents decodes the extents of a RESERVE reply, checking that
// they are one of each size asked for. Their count is checked before
// they are decoded, which allocates each one the reply claims.
func reservedExtents(extents *wirepb.Addrs, sizes []uint64) ([]engine.RemoteAddr, error) {
	if n := wire.AddrCount(extents); n != uint64(len(sizes)) {
		return nil, fmt.Errorf("unit reserved %d extents, asked for %d: %w", n, len(sizes), engine.ErrCorrupt)
	}
	addrs, err := wire.RangesFromPB(extents)
	for i := 0; err == nil && i < len(sizes); i++ {
		if addrs[i].Len != sizes[i] {
			err = fmt.Errorf("unit reserved extent %d with %d bytes, asked for %d: %w", i, addrs[i].Len, sizes[i], engine.ErrCorrupt)
		}
	}
	return addrs, err
}

// Len returns the number of extents.
func (r *Reservation) Len() int { return len(r.bufs) }

// Buf returns the writable bytes of extent i, exactly as many as were
// asked for, valid until Commit or Abort.
func (r *Reservation) Buf(i int) []byte { return r.bufs[i] }

// Addr returns the address of extent i, readable once committed.
func (r *Reservation) Addr(i int) engine.RemoteAddr { return r.addrs[i] }

// Addrs returns the addresses of every extent (a fresh slice).
func (r *Reservation) Addrs() []engine.RemoteAddr {
	return append([]engine.RemoteAddr(nil), r.addrs...)
}

// Commit makes the extents readable. A failed commit aborts them; the
// caller must treat the put as failed. A second Commit, or a Commit after
// Abort, is an error wrapping [engine.ErrInvalid].
func (r *Reservation) Commit(ctx context.Context) error {
	if err := r.commit(ctx); err != nil {
		return r.c.opErr("commit", err)
	}
	return nil
}

func (r *Reservation) commit(ctx context.Context) error {
	if !r.ended.CompareAndSwap(false, true) {
		return fmt.Errorf("reservation ended already: %w", engine.ErrInvalid)
	}
	unpin(r.segs)
	r.c.unhold()
	if err := ctx.Err(); err != nil {
		r.c.cleanup(wire.OpReserveAbort, &wirepb.ReservationRequest{Reservation: r.id})
		return err
	}
	err := r.c.doHeld(ctx, wire.OpReserveCommit, &wirepb.ReservationRequest{Reservation: r.id}, nil, &wirepb.Empty{})
	if err != nil {
		// The unit aborts a reservation whose commit failed; one whose
		// answer was lost is aborted here, or when the connection ends.
		r.c.cleanup(wire.OpReserveAbort, &wirepb.ReservationRequest{Reservation: r.id})
	}
	return err
}

// Abort gives the extents back. It does nothing after Commit or a first
// Abort, or after [Conn.Close] (the unit aborted the reservation when the
// connection ended). An error means the unit did not answer; it gives the
// extents back when the connection ends.
func (r *Reservation) Abort(ctx context.Context) error {
	if !r.ended.CompareAndSwap(false, true) {
		return nil
	}
	unpin(r.segs)
	r.c.unhold()
	select {
	case <-r.c.done:
		return nil
	default:
	}
	if err := r.c.doHeld(ctx, wire.OpReserveAbort, &wirepb.ReservationRequest{Reservation: r.id}, nil, &wirepb.Empty{}); err != nil {
		return r.c.opErr("abort", err)
	}
	return nil
}

// abort is a best-effort Abort bounded by its own timeout.
func (r *Reservation) abort() {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	r.Abort(ctx)
}
