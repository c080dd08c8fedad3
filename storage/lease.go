package storage

import (
	"fmt"
	"sync/atomic"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/invariants"
)

// Lease pins committed ranges for reading: while it is held, freeing their
// cells does not let the unit reuse the bytes, nor [Unit.Close] unmap
// them. Bytes returns views into the unit's memory (no copy), read-only
// by contract and valid until Release. Release is safe to call from any
// goroutine, and more than once.
type Lease struct {
	u        *Unit
	ents     []leaseEntry
	one      [1]leaseEntry
	released atomic.Bool

	quarantined bool // its session's quarantine keeps it; guarded by u.mu
}

type leaseEntry struct {
	e *extent // nil for a range of length 0
	b []byte
}

// Acquire takes a read lease on addrs. Every range of nonzero length must
// lie inside one committed extent and cover no freed cell; otherwise
// Acquire takes nothing and returns an error wrapping [engine.ErrNotFound]
// (the caller reports the cells as lost). Ranges of length 0 are accepted
// and read as empty. After [Unit.Close] it returns [engine.ErrClosed].
//
// Acquire checks and pins the ranges lockChunk at a time, letting go of
// the unit's lock between chunks, and releases what it pinned when a
// later range fails. Its result is still all or nothing, and as if taken
// at one moment: a cell once freed never comes back, so every range that
// was live when Acquire checked it was live when the call began. (The one
// exception, harmless: a range whose extent a racing Commit made
// readable during the call.)
func (u *Unit) Acquire(addrs []engine.RemoteAddr) (*Lease, error) {
	l := &Lease{u: u}
	if len(addrs) <= len(l.one) {
		l.ents = l.one[:len(addrs)]
	} else {
		l.ents = make([]leaseEntry, len(addrs))
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, u.opErr("acquire", fmt.Errorf("%d ranges: %w", len(addrs), engine.ErrClosed))
	}
	var e *extent
	for i, a := range addrs {
		if i > 0 && i%lockChunk == 0 {
			if u.relock() {
				u.unrefAll(l.ents[:i], false) // unpins them (see Close)
				return nil, u.opErr("acquire", fmt.Errorf("%d ranges: %w", len(addrs), engine.ErrClosed))
			}
			e = nil
		}
		if a.Len == 0 {
			l.ents[i].b = []byte{}
			continue
		}
		var lo, hi int64
		var err error
		e, lo, hi, err = u.lookup(a, e)
		if err == nil && e.liveSpan(lo, hi) < 0 {
			err = fmt.Errorf("covers freed cells: %w", engine.ErrNotFound)
		}
		if err != nil {
			if !u.unrefAll(l.ents[:i], false) {
				return nil, u.opErr("acquire", fmt.Errorf("%d ranges: %w", len(addrs), engine.ErrClosed))
			}
			return nil, u.opErr("acquire", fmt.Errorf("range %d %s: %w", i, fmtAddr(a), err))
		}
		l.ents[i] = leaseEntry{e: e, b: e.bytes(lo, hi)}
		// A live range keeps the cells' reference: e is not held by
		// quarantined leases only, before or after.
		e.refs++
	}
	u.leases++
	return l, nil
}

// unrefAll drops the references of ents (in quarantine or not), lockChunk
// at a time, letting go of u.mu between chunks, and wakes waiting
// Reserves if extents went back. After Close (before the call or between
// chunks) it unpins the entries left instead (see Unit.Close), and
// reports false. u.mu is held.
func (u *Unit) unrefAll(ents []leaseEntry, quarantined bool) bool {
	released := false
	for i, ent := range ents {
		if !u.closed && i > 0 && i%lockChunk == 0 {
			if released {
				u.signal()
				released = false
			}
			u.relock()
		}
		switch {
		case ent.e == nil:
		case u.closed:
			u.unpin(ent.e)
		case u.unref(ent.e, quarantined):
			released = true
		}
	}
	if released {
		u.signal()
	}
	return !u.closed
}

// Len returns the number of ranges.
func (l *Lease) Len() int { return len(l.ents) }

// Bytes returns range i. The slice aliases the unit's shared memory: do
// not write to it, and do not use it after Release.
func (l *Lease) Bytes(i int) []byte {
	if invariants.Enabled && l.released.Load() {
		panic("storage: Lease.Bytes after Release")
	}
	return l.ents[i].b
}

// Release ends the lease; extents whose cells were all freed meanwhile go
// back to the pool. Release is idempotent. After [Unit.Close] it lets go
// of the ranges' memory, which the unit unmaps once nothing else reaches
// it. It drops the ranges lockChunk at a time, letting go of the unit's
// lock between chunks.
func (l *Lease) Release() {
	if !l.released.CompareAndSwap(false, true) {
		return
	}
	u := l.u
	u.mu.Lock()
	defer u.mu.Unlock()
	// l.quarantined holds still: quarantineHolds skips a released lease.
	u.unrefAll(l.ents, l.quarantined)
	u.leases--
	if invariants.Enabled && !u.closed {
		u.checkLocked()
	}
}
