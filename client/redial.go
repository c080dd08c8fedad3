package client

// A storage unit that Connect could not reach, one the controller reports
// dead, and every unit reached over shared memory (whose connection does
// not dial again by itself when it breaks) stay in the client's table as
// a redialUnit: placement leaves it out while it is down, so writes go to
// the other units; a read of its cells fails at once with an error
// wrapping engine.ErrUnavailable that names it, never a hang. It is dialed
// again, no more often than a backoff allows, always in the background:
// when placement next considers it, or when a call needs it, which then
// waits for that dial (as do calls that find one under way) with its own
// context. Once a dial succeeds it serves like any unit. A connection
// that ends after it served a call (the unit restarted) is dialed again
// at once; one that ends before (a peer that completes the handshake and
// drops the connection) counts as a failed dial, so such a peer is
// dialed no more often than the backoff allows, not on every call.

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tqgo/tq/engine"
)

// Redial backoff: the first retry after redialMin, doubling up to
// redialMax; each dial is bounded by redialTimeout.
const (
	redialMin     = 200 * time.Millisecond
	redialMax     = 10 * time.Second
	redialTimeout = 5 * time.Second
)

// redialUnit is a [DataUnit] that may not be connected yet. It is safe
// for concurrent use; Close stops a background dial and waits for it.
type redialUnit struct {
	id   engine.UnitID
	host string
	dial func(ctx context.Context) (DataUnit, error)

	mu      sync.Mutex
	du      DataUnit // nil until a dial succeeds
	err     error    // the last dial's error
	next    time.Time
	backoff time.Duration
	dialed  time.Time // when the dial of du succeeded; zero for one made elsewhere
	// proven: du served a call. Until then the backoff stands, and a
	// connection that ends counts as a failed dial.
	proven  atomic.Bool
	dialing chan struct{} // closed when the dial under way ends; nil when none
	closed  bool
	// left marks a unit the client's discovery dropped from its table
	// (see [redialUnit.leave]): closed, but the client is open.
	left   bool
	cancel context.CancelFunc // the background dial's, while one runs
	wg     sync.WaitGroup     // the background dial
}

// broken is a unit whose connection ended for good (see shmUnit).
type broken interface{ broken() bool }

// connectedLocked returns the connected unit, or nil when there is none or
// its connection ended: then the next call dials again at once if it
// served a call, else once the backoff from its dial has passed. The
// caller holds mu.
func (u *redialUnit) connectedLocked() DataUnit {
	if b, ok := u.du.(broken); ok && b.broken() {
		u.du, u.err, u.next = nil, fmt.Errorf("connection to storage unit %d ended: %w", u.id, engine.ErrUnavailable), time.Time{}
		if !u.proven.Load() {
			u.next = u.dialed.Add(u.backoff)
			u.backoff = min(2*u.backoff, redialMax)
		}
	}
	return u.du
}

// served records that du served a call: its connection works, so the
// backoff starts over.
func (u *redialUnit) served() {
	if u.proven.Load() {
		return
	}
	u.mu.Lock()
	u.proven.Store(true)
	u.backoff = redialMin
	u.mu.Unlock()
}

var (
	_ DataUnit = (*redialUnit)(nil)
	_ Reserver = (*redialUnit)(nil)
)

// newRedialUnit returns a unit that the first dial, which failed with err,
// could not reach; dial connects to it.
func newRedialUnit(id engine.UnitID, host string, err error, dial func(ctx context.Context) (DataUnit, error)) *redialUnit {
	return &redialUnit{id: id, host: host, dial: dial, err: err, backoff: redialMin, next: time.Now().Add(redialMin)}
}

func (u *redialUnit) ID() engine.UnitID { return u.id }
func (u *redialUnit) Host() string      { return u.host }

// Transport names the connected unit's transport, "none" while down.
func (u *redialUnit) Transport() string {
	if du := u.connected(); du != nil {
		return du.Transport()
	}
	return "none"
}

func (u *redialUnit) connected() DataUnit {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.connectedLocked()
}

// unavailableLocked is the error of a call while the unit is down.
func (u *redialUnit) unavailableLocked() error {
	if u.left {
		// Not the client closing: a put still holding the unit places its
		// rows again (see unreachable in place.go), a read reads its
		// cells as lost.
		return fmt.Errorf("storage unit %d left the cluster (the controller no longer lists it under this id), nothing was sent to it: %w",
			u.id, engine.ErrUnavailable)
	}
	if u.closed {
		return fmt.Errorf("storage unit %d: client closed: %w", u.id, engine.ErrClosed)
	}
	return fmt.Errorf("storage unit %d is unreachable (next try in %v): %w: %w",
		u.id, time.Until(u.next).Round(time.Millisecond), engine.ErrUnavailable, u.err)
}

// begin reports whether the caller may dial now, and marks a dial in
// flight if so.
func (u *redialUnit) beginLocked() bool {
	if u.connectedLocked() != nil || u.closed || u.dialing != nil || time.Now().Before(u.next) {
		return false
	}
	u.dialing = make(chan struct{})
	return true
}

// end records a dial's outcome.
func (u *redialUnit) end(du DataUnit, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	close(u.dialing)
	u.dialing, u.cancel = nil, nil
	if err == nil {
		// The backoff starts over once du serves a call (see served).
		u.du, u.err, u.dialed = du, nil, time.Now()
		u.proven.Store(false)
		return
	}
	u.err = err
	u.backoff = min(2*u.backoff, redialMax)
	u.next = time.Now().Add(u.backoff)
}

// get returns the connected unit, dialing it first when it is down and
// due. The dial runs on its own (bounded by redialTimeout), not under
// ctx: a caller that gives up stops waiting for it, but neither ends it
// nor makes its own cancellation the unit's failure, which every other
// caller would meet until the next try.
func (u *redialUnit) get(ctx context.Context) (DataUnit, error) {
	u.mu.Lock()
	if du := u.connectedLocked(); du != nil {
		u.mu.Unlock()
		return du, nil
	}
	if u.dialing == nil && !u.startLocked() {
		err := u.unavailableLocked()
		u.mu.Unlock()
		return nil, err
	}
	// This call's dial, or another call's: its outcome is this call's too.
	wait := u.dialing
	u.mu.Unlock()
	select {
	case <-wait:
	case <-ctx.Done():
		return nil, fmt.Errorf("storage unit %d: %w", u.id, ctx.Err())
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if du := u.connectedLocked(); du != nil {
		return du, nil
	}
	if u.closed {
		return nil, u.unavailableLocked()
	}
	return nil, fmt.Errorf("storage unit %d is unreachable: %w: %w", u.id, engine.ErrUnavailable, u.err)
}

// Available reports whether the unit is connected. When it is not but a
// dial is due, it starts one in the background (placement does not wait
// for it: the unit is used once it is back).
func (u *redialUnit) Available() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.connectedLocked() != nil {
		return true
	}
	u.startLocked()
	return false
}

// startLocked starts a dial in the background if one is due, and reports
// whether it did.
func (u *redialUnit) startLocked() bool {
	if !u.beginLocked() {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), redialTimeout)
	u.cancel = cancel
	u.wg.Go(func() {
		defer cancel()
		du, err := u.dial(ctx)
		u.end(du, err)
	})
	return true
}

// Close stops a background dial and waits for it. The connection a dial
// made belongs to the client's transports, which close it. A call while
// the unit is down fails with an error wrapping [engine.ErrClosed].
func (u *redialUnit) Close() error { return u.close(false) }

// leave is Close for a unit the client's discovery dropped from its table
// while the client stays open: a call that still holds the unit and finds
// it down fails with an error wrapping [engine.ErrUnavailable] that says
// it left the cluster, not that the client closed.
func (u *redialUnit) leave() error { return u.close(true) }

func (u *redialUnit) close(left bool) error {
	u.mu.Lock()
	if !u.closed {
		u.left = left
	}
	u.closed = true
	if u.cancel != nil {
		u.cancel()
	}
	u.mu.Unlock()
	u.wg.Wait()
	return nil
}

func (u *redialUnit) Write(ctx context.Context, extents [][][]byte) ([]engine.RemoteAddr, error) {
	du, err := u.get(ctx)
	if err != nil {
		return nil, err
	}
	addrs, err := du.Write(ctx, extents)
	if err == nil {
		u.served()
	}
	return addrs, err
}

func (u *redialUnit) Acquire(ctx context.Context, addrs []engine.RemoteAddr) (Lease, error) {
	du, err := u.get(ctx)
	if err != nil {
		return nil, err
	}
	l, err := du.Acquire(ctx, addrs)
	if err == nil {
		u.served()
	}
	return l, err
}

func (u *redialUnit) ReadInto(ctx context.Context, addrs []engine.RemoteAddr, dst [][]byte) error {
	du, err := u.get(ctx)
	if err != nil {
		return err
	}
	if err := du.ReadInto(ctx, addrs, dst); err != nil {
		return err
	}
	u.served()
	return nil
}

func (u *redialUnit) Free(ctx context.Context, cells []engine.RemoteAddr) error {
	du, err := u.get(ctx)
	if err != nil {
		return err
	}
	if err := du.Free(ctx, cells); err != nil {
		return err
	}
	u.served()
	return nil
}

// Inline is the connected unit's answer (see [shm.InlineMax]); false
// while down.
func (u *redialUnit) Inline(n uint64) bool {
	in, ok := u.connected().(inliner)
	return ok && in.Inline(n)
}

// ReserveExtents reserves on the connected unit when it can reserve (see
// [Reserver]).
func (u *redialUnit) ReserveExtents(ctx context.Context, sizes []int64) (Reserved, error) {
	du, err := u.get(ctx)
	if err != nil {
		return nil, err
	}
	rv, ok := du.(Reserver)
	if !ok {
		return nil, fmt.Errorf("unit %d (%s) cannot reserve memory for a put: %w", u.id, du.Transport(), engine.ErrNotSupported)
	}
	r, err := rv.ReserveExtents(ctx, sizes)
	if err == nil {
		u.served()
	}
	return r, err
}
