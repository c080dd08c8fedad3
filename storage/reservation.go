package storage

import (
	"context"
	"fmt"
	"time"

	"github.com/tqgo/tq/engine"
)

type reservationState uint8

const (
	reservationPending reservationState = iota // being placed by Reserve
	reservationOpen
	reservationCommitted
	reservationAborted
	reservationExpired // timed out while held: extents kept until Abort
	reservationReaped  // timed out and aborted by the unit: extents freed
)

// Reservation is the write half of a put: extents allocated by
// [Unit.Reserve] that nobody can read until [Reservation.Commit]. The
// caller fills [Reservation.Buf] and then either commits or aborts; a
// reservation that is still open after [Config.ReserveTimeout] is aborted
// by the unit, so a writer that dies leaves no readable bytes and no leaked
// space (one from [Unit.ReserveHeld] can no longer commit, and keeps its
// extents until Abort).
//
// Its methods are safe for concurrent use, but a reservation is meant to
// be filled by one put. The unit owns the memory of [Reservation.Buf].
type Reservation struct {
	u       *Unit
	exts    []*extent // nil entries for sizes of 0
	one     [1]*extent
	bytes   int64 // rounded bytes of exts
	visible bool  // extents were held across an unlock while placing
	held    bool  // see Unit.ReserveHeld

	// Guarded by u.mu.
	state       reservationState
	quarantined bool // its session's quarantine keeps it (see Stats.Quarantined)
	// quarOpen: it was still open when its session went to quarantine,
	// which is what ended it (not its timeout). Commit says so.
	quarOpen   bool
	deadline   time.Time
	prev, next *Reservation // open list
}

func newReservation(u *Unit, n int) *Reservation {
	r := &Reservation{u: u}
	if n <= len(r.one) {
		r.exts = r.one[:n]
	} else {
		r.exts = make([]*extent, n)
	}
	return r
}

// Len returns the number of extents, one per size passed to Reserve.
func (r *Reservation) Len() int { return len(r.exts) }

// Buf returns the writable bytes of extent i, exactly as many as were
// asked for. The slice is valid until Commit or Abort (or the reservation
// times out); afterwards the bytes belong to the unit and a write through
// it corrupts the store.
func (r *Reservation) Buf(i int) []byte {
	e := r.exts[i]
	if e == nil {
		return []byte{}
	}
	return e.bytes(e.off, e.off+e.size)
}

// Addr returns the descriptor of extent i: the address a reader passes to
// [Unit.Acquire] and the range the cells of this extent are cut from. An
// extent of size 0 has the zero address.
func (r *Reservation) Addr(i int) engine.RemoteAddr {
	e := r.exts[i]
	if e == nil {
		return engine.RemoteAddr{}
	}
	return engine.RemoteAddr{Segment: e.seg.id, Gen: e.gen, Offset: uint64(e.off), Len: uint64(e.size)}
}

// Commit makes the extents readable. Each starts with one reference held
// by its cells (see [Unit.Free]). Commit fails with an error wrapping
// [engine.ErrInvalid] when the reservation was committed or aborted
// already, including by the timeout; the caller must then treat the put as
// failed. After [Unit.Close] it returns [engine.ErrClosed], and ends an
// open reservation as Abort does.
func (r *Reservation) Commit() error {
	u := r.u
	now := time.Now()
	u.mu.Lock()
	defer u.mu.Unlock()
	if err := r.errLocked(now, "reservation", engine.ErrInvalid); err != nil {
		switch {
		case r.state != reservationOpen:
		case u.closed:
			u.abortLocked(r, reservationAborted)
		default:
			u.abortLocked(r, reservationReaped) // its deadline passed
		}
		return u.opErr("commit", err)
	}
	at := int64(now.Sub(u.epoch))
	for _, e := range r.exts {
		if e != nil {
			e.commit(at)
		}
	}
	u.unlinkOpen(r)
	r.state = reservationCommitted
	return nil
}

// Err returns nil while the reservation can still commit: it is open and
// its timeout has not passed. Otherwise it returns why not, naming the
// reservation: an error wrapping [context.DeadlineExceeded] when it
// expired (whether or not the unit has reaped it yet), [engine.ErrInvalid]
// when it was committed or aborted, [engine.ErrClosed] after
// [Unit.Close]. A filler that takes long, such as a WRITE reading its
// payload from a peer, checks it as it goes, to stop filling space that
// can no longer commit; Err changes nothing, so the filler still ends the
// reservation (Abort).
func (r *Reservation) Err() error {
	u := r.u
	now := time.Now()
	u.mu.Lock()
	defer u.mu.Unlock()
	if err := r.errLocked(now, r.describe(), context.DeadlineExceeded); err != nil {
		return u.opErr("reserve", err)
	}
	return nil
}

// errLocked says why r, called name, cannot commit at now, nil if it
// can; an expiry wraps expired. u.mu is held.
func (r *Reservation) errLocked(now time.Time, name string, expired error) error {
	u := r.u
	switch {
	case r.state == reservationCommitted:
		return fmt.Errorf("%s committed already: %w", name, engine.ErrInvalid)
	case r.state == reservationAborted:
		return fmt.Errorf("%s aborted: %w", name, engine.ErrInvalid)
	case r.state == reservationExpired && r.quarOpen:
		return fmt.Errorf("%s in quarantine: its connection ended without a goodbye while it was open, and its client may still be writing into it: %w", name, engine.ErrInvalid)
	case r.state == reservationExpired && r.quarantined:
		return fmt.Errorf("%s expired after %v, and is in quarantine since its connection ended without a goodbye: %w", name, u.cfg.ReserveTimeout, expired)
	case r.state == reservationExpired || r.state == reservationReaped:
		return fmt.Errorf("%s expired after %v: %w", name, u.cfg.ReserveTimeout, expired)
	case u.closed:
		return fmt.Errorf("%s: %w", name, engine.ErrClosed)
	case now.After(r.deadline):
		return fmt.Errorf("%s expired after %v: %w", name, u.cfg.ReserveTimeout, expired)
	}
	return nil
}

// describe names r by its extents' count, bytes and first address.
func (r *Reservation) describe() string {
	n, first := 0, -1
	var size int64
	for i, e := range r.exts {
		if e != nil {
			if first < 0 {
				first = i
			}
			n++
			size += e.size
		}
	}
	s := fmt.Sprintf("%d extents", n)
	if n == 1 {
		s = "1 extent"
	}
	if first < 0 {
		return "reservation of " + s
	}
	return fmt.Sprintf("reservation of %s (%d bytes, the first at %s)", s, size, fmtAddr(r.Addr(first)))
}

// Abort frees the extents. It is idempotent and does nothing after
// Commit. After [Unit.Close] it lets go of the extents' memory, which the
// unit unmaps once nothing else reaches it.
func (r *Reservation) Abort() {
	u := r.u
	u.mu.Lock()
	defer u.mu.Unlock()
	switch {
	case r.state == reservationOpen:
		u.abortLocked(r, reservationAborted)
	case r.state == reservationExpired:
		u.releaseReservedLocked(r, reservationAborted)
	}
}
