package storage

// How a unit holds its memory:
//
//	Unit ── segs ──▶ segment 1 (memfd, 64 MiB) ── alloc: allocator of offsets
//	     │                                      ├─ byGen: extents by generation
//	     │                                      │  (cell address → extent in one step)
//	     │           segment 2 …                └─ gen: last extent generation handed out
//	     ├─ open reservations: a list in deadline order; the reaper aborts its head
//	     └─ wake: a channel closed and replaced when space comes back
//
// One mutex guards all of it. A call naming many extents (up to
// wire.MaxSegments) works on them lockChunk at a time and lets go of the
// mutex between chunks, so that it stalls other callers for one chunk, not
// for the whole call: Reserve places, and gives back on failure, and
// Abort frees in chunks (see lockChunk for what others can see between).
// Reserve tries every segment in turn; when
// none has room it maps a new segment (outside the lock) if Capacity
// allows, dropping empty segments that are too small for the request, and
// otherwise waits on wake until a Free, Release or Abort returns space, its
// context ends, or the unit closes. A segment that handed out its last
// generation (maxGen), or that the segment watcher refused (watch.go), is
// skipped, and dropped once empty.
//
// The accounting: mapped (segment bytes) ≤ Capacity, and used (extent
// bytes at their rounded sizes: reserved, committed, or freed but still
// leased) ≤ mapped, so the unit never over-commits.

import (
	"cmp"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/invariants"
)

// Unit is a storage unit's memory: an arena of memfd segments, the extents
// allocated in it, their commit state, and the read leases on them. It is
// safe for concurrent use.
//
// Memory returned by [Reservation.Buf] and [Lease.Bytes] belongs to the
// unit; it is valid until the reservation is committed or aborted, or the
// lease released, even across [Unit.Close], which unmaps a segment only
// once no lease or reservation reaches it.
type Unit struct {
	ident       atomic.Pointer[identity]
	identMu     sync.Mutex // serializes changes of ident
	incarnation uint64
	cfg         Config
	epoch       time.Time // NewUnit's time; extents' commit times count from it

	done       chan struct{} // closed by Close
	reaperDone chan struct{}

	mu         sync.Mutex
	closed     bool
	refusing   bool  // see StopReserving
	hugetlb    bool  // new segments use hugetlb pages
	thp        bool  // new segments get MADV_HUGEPAGE
	segPage    int64 // segment sizes are multiples of this
	segs       []*segment
	byID       map[uint32]*segment
	retired    []*segment // dropped segments, unmapped at Close
	lastID     uint32
	growingIDs []uint32 // ids of segments being mapped outside the lock
	mapped     int64    // bytes of live segments
	growing    int64    // bytes of segments being mapped outside the lock
	used       int64
	reserved   int64
	quarRes    int64 // bytes of the reservations in quarantine
	quarLeased int64 // bytes of the extents only leases in quarantine hold
	quarSess   int   // see Stats.QuarantinedSessions
	extents    int
	leases     int
	openHead   *Reservation
	openTail   *Reservation
	open       int
	waiters    int            // Reserve calls waiting on wake
	wake       chan struct{}  // closed and replaced when space comes back
	spaceGen   uint64         // counts signal calls: space came back
	killGen    uint64         // bumped whenever live cell bytes may have been freed
	lateErrs   []error        // teardown errors of dropped segments, for Close
	lingering  int            // after Close: segments still mapped for their holders
	watch      SegmentWatcher // told of segments mapped and dropped; nil: none
}

// identity is what names a unit to the cluster; it changes as a whole
// (see Unit.SetID).
type identity struct {
	id      engine.UnitID
	cluster string // the cluster id was assigned in; "" before
	name    string // "unit 7", the Peer of the unit's errors
}

// Stats is a snapshot of a unit's accounting.
type Stats struct {
	Capacity int64 // [Config.Capacity]
	Mapped   int64 // bytes of segments mapped
	// Used counts extents at their rounded sizes: reserved, committed, or
	// freed but still leased.
	Used             int64
	Reserved         int64 // bytes of extents in open reservations
	Segments         int
	Extents          int
	OpenReservations int
	Leases           int
	Waiting          int   // Reserve calls (a WRITE's included) waiting for room
	HugePages        bool  // new segments use hugetlb pages
	PageSize         int64 // page size of new segments: 4 KiB or 2 MiB
	// Quarantined is the bytes that only the quarantine of same-host
	// connections that ended without a goodbye keeps out of reuse (see
	// ServerConfig.Quarantine), counted once each at their rounded sizes
	// as Used counts them: the extents of the reservations in quarantine
	// (which can no longer commit), and the extents whose cells were all
	// freed and that only leases in quarantine still hold. An extent with
	// live cells is not counted, however many leases in quarantine cover
	// it: its cells keep it anyway. It is at most Used.
	Quarantined int64
	// QuarantinedSessions is how many such connections' holds are in
	// quarantine.
	QuarantinedSessions int
}

// SegmentInfo describes one segment for handing it to another process.
// Fd belongs to the unit: it stays open until the unit closes or drops the
// segment (only an empty one, when a larger segment is needed); a receiver
// that keeps it must dup it.
type SegmentInfo struct {
	ID        uint32
	Size      int64
	Fd        int
	HugePages bool
}

// NewUnit validates cfg and returns a unit with no segments yet; they are
// mapped as reservations need them. It draws the unit's incarnation
// ([Unit.Incarnation]) and starts the reaper goroutine that [Unit.Close]
// stops. id may be 0 for a unit that gets its id from the controller
// ([AssignID]).
func NewUnit(id engine.UnitID, cfg Config) (*Unit, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	u := &Unit{
		incarnation: newIncarnation(),
		cfg:         cfg,
		epoch:       time.Now(),
		done:        make(chan struct{}),
		reaperDone:  make(chan struct{}),
		segPage:     pageSize,
		byID:        map[uint32]*segment{},
		wake:        make(chan struct{}),
	}
	u.setIdentity(id, "")
	if cfg.HugePages {
		if cfg.Capacity >= hugePageSize && probeHugetlb() {
			u.hugetlb, u.segPage = true, hugePageSize
		} else {
			u.thp = true
		}
	}
	go u.reap()
	return u, nil
}

// newIncarnation draws a random, nonzero incarnation.
func newIncarnation() uint64 {
	var b [8]byte
	for {
		crand.Read(b[:]) // never fails (it crashes the program instead)
		if n := binary.LittleEndian.Uint64(b[:]); n != 0 {
			return n
		}
	}
}

// ID returns the unit's id: the one it was created with, or the last one
// given to [Unit.SetID].
func (u *Unit) ID() engine.UnitID { return u.ident.Load().id }

// SetID gives the unit a new id, as the controller does when it does not
// know the old one for this incarnation (see [Join]): the unit is then a
// new unit to the cluster. Errors and stats name the new id from now on.
// The unit's memory is untouched; addresses carry no unit id.
func (u *Unit) SetID(id engine.UnitID) {
	u.identMu.Lock()
	defer u.identMu.Unlock()
	u.setIdentityLocked(id, u.ident.Load().cluster)
}

// Incarnation returns the random number the unit drew when it was
// created, never 0: a unit process that starts again is a new
// incarnation, and the controller binds a unit id to one incarnation.
func (u *Unit) Incarnation() uint64 { return u.incarnation }

// ClusterID returns the id of the cluster the unit last registered with,
// or "" before it registered (or when the controller names no cluster).
func (u *Unit) ClusterID() string { return u.ident.Load().cluster }

// setIdentity sets the unit's id and cluster together, so that a reader
// never sees the id of one registration with the cluster of another.
func (u *Unit) setIdentity(id engine.UnitID, cluster string) {
	u.identMu.Lock()
	defer u.identMu.Unlock()
	u.setIdentityLocked(id, cluster)
}

func (u *Unit) setIdentityLocked(id engine.UnitID, cluster string) {
	u.ident.Store(&identity{id: id, cluster: cluster, name: fmt.Sprintf("unit %d", id)})
}

func (u *Unit) opErr(op string, err error) error {
	return &engine.OpError{Op: op, Peer: u.ident.Load().name, Err: err}
}

// Reserve allocates one extent per entry of sizes (one per column slice of
// a put, not one per cell) and returns them as an open [Reservation]. A
// size of 0 gets an empty buffer and an address of length 0.
//
// When the unit is full, Reserve waits until frees make room, ctx ends, or
// the unit closes. It fails with an error wrapping [engine.ErrCapacity]
// (and the context's error) when ctx ends first, and at once when the
// request could not fit even in an empty unit ([engine.ErrTooLarge], which
// wraps ErrCapacity), when the host has no
// memory for the new segment it needs (its mmap or memfd fails with
// ENOMEM), or when ctx comes from
// [engine.WithoutWait] (a client that spills to other units). Waiting is all or nothing:
// space is never held while waiting. Fragmentation across segments can
// keep a request waiting even when [Stats] shows enough free bytes. Other
// errors: [engine.ErrInvalid] for a negative size, [engine.ErrClosed]
// after [Unit.Close] or [Unit.StopReserving].
func (u *Unit) Reserve(ctx context.Context, sizes []int64) (*Reservation, error) {
	return u.reserve(ctx, sizes, false)
}

// ReserveHeld is [Unit.Reserve] for a filler that is certain to end the
// reservation itself, by Commit or Abort, and may still be writing
// [Reservation.Buf] when the timeout passes: one that reads a payload
// from a peer straight into the extents, as the unit server's handlers
// and an in-process KV_SET do, or a caller filling a client's reserved
// put in place. When such a reservation times out, the unit
// makes it uncommittable but keeps its extents allocated until the filler
// calls Abort, so a slow payload never lands in memory handed to someone
// else meanwhile. A filler that may leave the reservation open must use
// Reserve, or end it some other way (a client's reserved put is aborted
// when its buffer is collected): a held reservation nobody ends keeps its
// extents for good.
func (u *Unit) ReserveHeld(ctx context.Context, sizes []int64) (*Reservation, error) {
	return u.reserve(ctx, sizes, true)
}

func (u *Unit) reserve(ctx context.Context, sizes []int64, held bool) (*Reservation, error) {
	need, err := u.checkSizes(sizes)
	if err != nil {
		return nil, u.opErr("reserve", err)
	}
	r := newReservation(u, len(sizes))
	r.held = held
	placed := 0
	var order []int // the order to place sizes in; nil: as given
	waited := false
	u.mu.Lock()
	for {
		if waited {
			u.waiters--
			waited = false
		}
		if u.closed {
			u.rollback(r)
			u.mu.Unlock()
			return nil, u.opErr("reserve", fmt.Errorf("%d extents: %w", len(sizes), engine.ErrClosed))
		}
		if u.refusing {
			u.rollback(r)
			u.mu.Unlock()
			return nil, u.opErr("reserve", fmt.Errorf("%d extents: the unit is shutting down and takes no new writes: %w", len(sizes), engine.ErrClosed))
		}
		var st placeState
		switch placed, st = u.place(r, sizes, order, placed); st {
		case placedAll:
			u.openLocked(r)
			u.mu.Unlock()
			return r, nil
		case placedChunk:
			// Others get the lock between chunks, and see the space
			// taken so far.
			r.visible = true
			u.relock()
			continue
		}
		next := placed
		if order != nil {
			next = order[placed]
		}
		if size, drops := u.planGrowth(sizes[next]); size > 0 {
			if placed > 0 {
				r.visible = true // others see the space taken while we map
			}
			if err := u.grow(size, drops); err != nil {
				u.rollback(r)
				u.mu.Unlock()
				return nil, u.opErr("reserve", fmt.Errorf("%d extents of %d bytes: %w", len(sizes), need, err))
			}
			continue
		}
		missed := u.rollback(r)
		placed = 0
		if missed {
			// Space came back while the rollback let go of the lock:
			// waiting now could sleep through that wake-up.
			continue
		}
		if u.extents == 0 && u.growing == 0 && order == nil && nonzero(sizes) > 1 {
			// The unit is empty, yet the request did not fit: its first
			// extents pinned segments (mapped by earlier requests, or
			// just now for them) that left no room to map one for the
			// next. Try once more in an empty arena, largest extents
			// first.
			order = largestFirst(sizes)
			for len(u.segs) > 0 {
				u.dropClosed(u.segs[0])
			}
			continue
		}
		if u.extents == 0 && u.growing == 0 {
			u.mu.Unlock()
			return nil, u.opErr("reserve", fmt.Errorf("%d extents of %d bytes do not fit in an empty unit: %w",
				len(sizes), need, engine.ErrTooLarge))
		}
		if engine.NoWait(ctx) {
			u.mu.Unlock()
			return nil, u.opErr("reserve", fmt.Errorf("%d extents of %d bytes: no room now, and the caller would not wait: %w",
				len(sizes), need, engine.ErrCapacity))
		}
		wake := u.wake
		u.waiters++
		waited = true
		u.mu.Unlock()
		select {
		case <-wake:
			u.mu.Lock()
			continue
		case <-ctx.Done():
			err = fmt.Errorf("%d extents of %d bytes: %w: %w", len(sizes), need, engine.ErrCapacity, context.Cause(ctx))
		case <-u.done:
			err = fmt.Errorf("%d extents: %w", len(sizes), engine.ErrClosed)
		}
		u.mu.Lock()
		u.waiters--
		u.mu.Unlock()
		return nil, u.opErr("reserve", err)
	}
}

// StopReserving makes every later [Unit.Reserve] and [Unit.ReserveHeld]
// fail at once with an error wrapping [engine.ErrClosed], and those
// waiting for space return it too; everything else goes on: open
// reservations commit or abort, reads and frees are served. A server
// shutting down calls it first, so that no new put begins while the puts
// that hold reservations, or have written, finish (see [Unit.Unsettled]).
// It cannot be undone.
func (u *Unit) StopReserving() {
	u.mu.Lock()
	u.refusing = true
	u.signal()
	u.mu.Unlock()
}

// checkSizes rejects negative sizes and requests larger than the capacity,
// and returns the bytes the request accounts for.
func (u *Unit) checkSizes(sizes []int64) (int64, error) {
	var need int64
	for i, n := range sizes {
		switch {
		case n < 0:
			return 0, fmt.Errorf("extent %d has negative size %d: %w", i, n, engine.ErrInvalid)
		case n == 0:
			continue
		case n > u.cfg.Capacity:
			return 0, fmt.Errorf("extent %d of %d bytes exceeds capacity %d: %w", i, n, u.cfg.Capacity, engine.ErrTooLarge)
		}
		need = min(need, math.MaxInt64-blockSize(n)) + blockSize(n) // saturates
	}
	if need > u.cfg.Capacity {
		return 0, fmt.Errorf("%d extents of %d bytes exceed capacity %d: %w", len(sizes), need, u.cfg.Capacity, engine.ErrTooLarge)
	}
	return need, nil
}

// place allocates extents for sizes in order (nil: as given), from the
// from-th on, stopping at the first that does not fit; it returns the
// position of that one in order, or len(sizes).
func (u *Unit) place(r *Reservation, sizes []int64, order []int, from int) (int, placeState) {
	for k := from; k < len(sizes); k++ {
		if k-from == lockChunk {
			return k, placedChunk
		}
		i := k
		if order != nil {
			i = order[k]
		}
		if sizes[i] == 0 {
			continue
		}
		e := u.allocExtent(sizes[i])
		if e == nil {
			return k, placedNone
		}
		r.exts[i] = e
		r.bytes += e.blk.size
	}
	return len(sizes), placedAll
}

// lockChunk bounds the items (extents to place or free) that one call
// works on while it holds u.mu; calls naming more let go of it between
// chunks. About a millisecond of work: a request of wire.MaxSegments
// items used to hold the lock for up to seconds.
//
// Between chunks others see a state no caller asked for, which is safe
// because of what those states are: a Reserve's extents placed so far are
// space taken (as while Reserve maps a segment) that nobody can read,
// and a reservation being aborted or rolled back is aborted already (its
// Commit fails, its Abort does nothing) while its extents go back one
// chunk at a time.
const lockChunk = 1024

// placeState is how far a place call got.
type placeState uint8

const (
	placedNone  placeState = iota // a size did not fit
	placedChunk                   // lockChunk sizes placed, more to go
	placedAll
)

// relockHook, when set (by tests only), runs in relock while u.mu is
// let go of.
var relockHook func(*Unit)

// relock lets go of u.mu and takes it again, so that callers waiting for
// it get a turn between two chunks of a long call (see lockChunk). It
// reports whether the unit closed meanwhile.
func (u *Unit) relock() (closed bool) {
	u.mu.Unlock()
	if relockHook != nil {
		relockHook(u)
	}
	// A caller woken by the Unlock would lose the lock to the Lock below
	// until it had waited 1 ms (sync.Mutex's starvation mode): yield so
	// that it gets it now.
	runtime.Gosched()
	u.mu.Lock()
	return u.closed
}

func nonzero(sizes []int64) int {
	n := 0
	for _, size := range sizes {
		if size > 0 {
			n++
		}
	}
	return n
}

// largestFirst returns the indexes of sizes, largest size first.
func largestFirst(sizes []int64) []int {
	order := make([]int, len(sizes))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(sizes[b], sizes[a]) })
	return order
}

// allocExtent places one extent of n > 0 bytes in the first segment with
// room and generations left, or returns nil.
func (u *Unit) allocExtent(n int64) *extent {
	for _, s := range u.segs {
		if n > s.size() || s.closedToNew() {
			continue
		}
		b, ok := s.alloc.alloc(n)
		if !ok {
			continue
		}
		s.gen++
		e := &extent{seg: s, blk: b, off: b.off, size: n, state: extentReserved, gen: s.gen}
		s.byGen[e.gen] = e
		s.extents++
		u.extents++
		u.used += b.size
		return e
	}
	return nil
}

// release returns an extent's block to its segment's allocator; in
// invariants builds it first fills the block with 0xdb so that a reader
// holding a stale view sees poison rather than someone else's data.
func (u *Unit) release(e *extent, poison bool) {
	s := e.seg
	delete(s.byGen, e.gen)
	s.extents--
	u.extents--
	u.used -= e.blk.size
	if invariants.Enabled && poison {
		fillPoison(s.mem[e.blk.off : e.blk.off+e.blk.size])
	}
	s.alloc.free(e.blk)
	e.state = 0
	// After Close (a Reserve rolling back while Close unmaps) the
	// segments are Close's to tear down, not dropClosed's.
	if s.extents == 0 && s.closedToNew() && !u.closed {
		u.dropClosed(s)
	}
}

// dropClosed drops an empty segment that takes no new extent (it has
// handed out its last generation, or the watcher refused it): its
// capacity goes back to the unit for a new segment. Rare enough (once per
// 2^32 extents of one segment) that the syscalls run under the lock.
func (u *Unit) dropClosed(s *segment) {
	if i := slices.Index(u.segs, s); i >= 0 {
		u.segs = slices.Delete(u.segs, i, i+1)
	}
	delete(u.byID, s.id)
	u.mapped -= s.size()
	u.dropped(s)
	if err := s.retire(); err != nil {
		u.lateErrs = append(u.lateErrs, err)
	}
	u.retired = append(u.retired, s)
	u.signal() // a waiting Reserve may map a segment now
}

const poisonByte = 0xdb

func fillPoison(b []byte) {
	if len(b) == 0 {
		return
	}
	b[0] = poisonByte
	for n := 1; n < len(b); n *= 2 {
		copy(b[n:], b[:n])
	}
}

// rollback gives back the extents of a reservation that could not be
// completed, waking waiters if others could have seen them taken. It lets
// go of u.mu between chunks of lockChunk extents, and reports whether
// anyone else gave space back meanwhile (a caller about to wait must not
// sleep through it). After Close (before the call or between chunks) it
// unpins the extents left instead (see Unit.Close).
func (u *Unit) rollback(r *Reservation) (missed bool) {
	gen, n := u.spaceGen, 0
	for i, e := range r.exts {
		if e == nil {
			continue
		}
		if !u.closed && n > 0 && n%lockChunk == 0 {
			r.visible = true
			u.relock()
		}
		if u.closed {
			u.unpin(e)
		} else {
			u.release(e, false)
		}
		r.exts[i] = nil
		n++
	}
	missed = u.spaceGen != gen
	r.bytes = 0
	if r.visible {
		r.visible = false
		u.signal()
	}
	return missed
}

// planGrowth returns the size of a new segment that would hold a request
// of n bytes within Capacity, and the empty segments to drop to make room
// (removed from the unit already); 0 when no segment can be added now.
func (u *Unit) planGrowth(n int64) (int64, []*segment) {
	minSize := roundUp(footprint(n), u.segPage)
	want := max(minSize, roundUp(u.cfg.SegmentSize, u.segPage))
	avail := u.cfg.Capacity - u.mapped - u.growing
	if avail >= want {
		return want, nil
	}
	if roundDown(avail, u.segPage) >= minSize {
		return roundDown(avail, u.segPage), nil
	}
	// Every empty segment is too small for n (or n would be in it): drop
	// as many as it takes to map one that fits.
	var empty int64
	for _, s := range u.segs {
		if s.extents == 0 {
			empty += s.size()
		}
	}
	if roundDown(avail+empty, u.segPage) < minSize {
		return 0, nil
	}
	var drops []*segment
	kept := u.segs[:0]
	for _, s := range u.segs {
		if s.extents == 0 && roundDown(avail, u.segPage) < minSize {
			drops = append(drops, s)
			delete(u.byID, s.id)
			u.mapped -= s.size()
			avail += s.size()
			continue
		}
		kept = append(kept, s)
	}
	clear(u.segs[len(kept):])
	u.segs = kept
	return min(want, roundDown(avail, u.segPage)), drops
}

// grow retires drops and maps a new segment of size bytes. It is called
// with u.mu held, releases it while it makes syscalls, and returns with it
// held again.
func (u *Unit) grow(size int64, drops []*segment) error {
	u.growing += size
	u.lastID++
	id := u.lastID
	u.growingIDs = append(u.growingIDs, id)
	opts := mapOptions{hugetlb: u.hugetlb, thp: u.thp, prefault: u.cfg.Prefault}
	for _, s := range drops {
		u.dropped(s)
	}
	u.mu.Unlock()

	var dropErr error
	for _, s := range drops {
		dropErr = errors.Join(dropErr, s.retire())
	}
	s, err := mapSegment(id, size, opts)
	fellBack := false
	if err != nil && opts.hugetlb {
		// The hugetlb pool ran dry: 4 KiB pages from now on.
		opts.hugetlb, opts.thp = false, true
		s, err = mapSegment(id, size, opts)
		fellBack = true
	}

	u.mu.Lock()
	u.growing -= size
	if i := slices.Index(u.growingIDs, id); i >= 0 {
		u.growingIDs = slices.Delete(u.growingIDs, i, i+1)
	}
	if u.closed {
		// Close did not see these; unmap them here.
		for _, d := range drops {
			dropErr = errors.Join(dropErr, d.close())
		}
		if err == nil {
			err = errors.Join(engine.ErrClosed, s.close())
		}
		return errors.Join(err, dropErr)
	}
	if dropErr != nil {
		u.lateErrs = append(u.lateErrs, dropErr)
	}
	u.retired = append(u.retired, drops...)
	if fellBack {
		u.hugetlb, u.thp, u.segPage = false, true, pageSize
	}
	if err != nil {
		u.signal() // the bytes held in growing are free again
		if outOfMemory(err) {
			// The host (or the process's limits) has no memory for the
			// segment now: no room, as a full unit, for the caller to
			// wait or go elsewhere.
			return fmt.Errorf("map segment of %d bytes: the host has no memory for it: %w: %w", size, engine.ErrCapacity, err)
		}
		return fmt.Errorf("map segment of %d bytes: %w", size, err)
	}
	if u.watch != nil {
		if err := u.watch.SegmentMapped(s.id, s.mem, s.fd); err != nil {
			// An extent here would be out of the watcher's clients'
			// reach (an RDMA device that could not register it):
			// unmap it and give its bytes back.
			u.watch.SegmentDropped(s.id)
			if cerr := s.close(); cerr != nil {
				u.lateErrs = append(u.lateErrs, cerr)
			}
			u.signal()
			return fmt.Errorf("new segment: %w: %w", engine.ErrCapacity, err)
		}
	}
	u.segs = append(u.segs, s)
	u.byID[id] = s
	u.mapped += size
	u.signal()
	return nil
}

// outOfMemory reports whether a segment's memfd_create, ftruncate or
// mmap failed for want of memory (ENOMEM; ENOSPC from a tmpfs or hugetlb
// pool that is full).
func outOfMemory(err error) bool {
	return errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.ENOSPC)
}

// signal wakes every waiting Reserve.
func (u *Unit) signal() {
	u.spaceGen++
	if u.waiters > 0 {
		close(u.wake)
		u.wake = make(chan struct{})
	}
}

// openLocked starts r's clock and puts it at the tail of the open list,
// which stays in deadline order because every reservation gets the same
// timeout.
func (u *Unit) openLocked(r *Reservation) {
	r.deadline = time.Now().Add(u.cfg.ReserveTimeout)
	r.state = reservationOpen
	r.visible = false
	r.prev, r.next = u.openTail, nil
	if u.openTail != nil {
		u.openTail.next = r
	} else {
		// The reaper needs no wake-up: it looks again within
		// ReserveTimeout, before r can expire.
		u.openHead = r
	}
	u.openTail = r
	u.open++
	u.reserved += r.bytes
	if invariants.Enabled {
		u.checkLocked()
	}
}

func (u *Unit) unlinkOpen(r *Reservation) {
	if r.prev != nil {
		r.prev.next = r.next
	} else {
		u.openHead = r.next
	}
	if r.next != nil {
		r.next.prev = r.prev
	} else {
		u.openTail = r.prev
	}
	r.prev, r.next = nil, nil
	u.open--
	u.reserved -= r.bytes
}

// abortLocked frees an open reservation's extents, leaving it in state
// (reservationAborted or reservationReaped).
func (u *Unit) abortLocked(r *Reservation, state reservationState) {
	u.unlinkOpen(r)
	u.releaseReservedLocked(r, state)
}

// expireLocked ends an open reservation whose deadline passed: it is
// aborted, unless it is held (see ReserveHeld), in which case it can no
// longer commit but keeps its extents until its filler calls Abort.
// Either way a later Commit says it expired.
func (u *Unit) expireLocked(r *Reservation) {
	if !r.held {
		u.abortLocked(r, reservationReaped) // Abort finds nothing to free
		return
	}
	u.unlinkOpen(r)
	r.state = reservationExpired
	orphan(r)
}

// releaseReservedLocked frees the extents of a reservation already off the
// open list, leaving it in state. The reservation takes that state at
// once; its extents go back lockChunk at a time, u.mu let go of between
// chunks; after Close (before the call or between chunks) it unpins the
// extents left instead (see Unit.Close). r.exts stays as it is: Buf and
// Addr read it without the lock.
func (u *Unit) releaseReservedLocked(r *Reservation, state reservationState) {
	r.state = state
	if r.quarantined {
		r.quarantined = false
		u.quarRes -= r.bytes
	}
	released, n := false, 0
	for _, e := range r.exts {
		if e == nil {
			continue
		}
		if !u.closed && n > 0 && n%lockChunk == 0 {
			if released {
				u.signal()
				released = false
			}
			u.relock()
		}
		if u.closed {
			u.unpin(e)
			continue
		}
		u.release(e, true)
		released = true
		n++
	}
	if released {
		u.signal()
	}
	if invariants.Enabled && !u.closed {
		u.checkLocked()
	}
}

// reap expires reservations that outlive ReserveTimeout. It sleeps until the
// head of the open list expires, or for ReserveTimeout when the list is
// empty.
func (u *Unit) reap() {
	defer close(u.reaperDone)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		u.mu.Lock()
		if u.closed {
			u.mu.Unlock()
			return
		}
		now := time.Now()
		for r := u.openHead; r != nil && !now.Before(r.deadline) && !u.closed; r = u.openHead {
			u.expireLocked(r) // may let go of u.mu (see lockChunk)
		}
		if u.closed {
			u.mu.Unlock()
			return
		}
		// With nothing open, sleep ReserveTimeout: a reservation opened
		// meanwhile expires no sooner, so opening one costs no wake-up.
		wait := u.cfg.ReserveTimeout
		if u.openHead != nil {
			wait = u.openHead.deadline.Sub(now)
		}
		timer.Reset(wait)
		u.mu.Unlock()
		select {
		case <-u.done:
			timer.Stop()
			return
		case <-timer.C:
		}
		timer.Stop()
	}
}

// Free releases cells: sub-ranges of committed extents, as handed out by
// [Reservation.Addr] or cut from them. An extent goes back to the free pool
// once every byte of it has been freed and no lease covers it, so the
// cells cut from an extent must cover all of it (the rows of a column
// slice are contiguous); freeing the extent's whole address works too.
// Cells of length 0 are accepted and change nothing.
//
// Free is all or nothing: if any cell is not inside a committed extent, or
// any of its bytes were freed already (a double free), Free changes nothing
// and returns an error wrapping [engine.ErrNotFound]. After [Unit.Close] it
// returns [engine.ErrClosed].
//
// A Free of many cells checks them, then frees them, lockChunk at a time,
// letting go of the unit's lock between chunks: others may see some of its
// cells freed and the rest not yet, as if it had been sent as several
// Frees. The one case where it changes something and still fails is a
// double free by another caller running at the same time (a Free or
// FreeRanges of the same cells, or a reconcile) that frees, between two
// chunks, cells this Free has yet to free: the error says so.
func (u *Unit) Free(cells []engine.RemoteAddr) error {
	// Cells out of (segment, offset) order are sorted, and checked for
	// overlaps, before the lock: the frees below walk them in that order.
	sorted, disjoint := cells, error(nil)
	if !ascending(cells) {
		sorted, disjoint = sortedCells(cells)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	closedErr := func() error {
		return u.opErr("free", fmt.Errorf("%d cells: %w", len(cells), engine.ErrClosed))
	}
	if u.closed {
		return closedErr()
	}
	// Check every cell first, lockChunk at a time. A cell live when
	// checked stays live unless someone frees bytes meanwhile (killGen):
	// then check again, holding the lock throughout.
	gen := u.killGen
	if err := u.checkFree(cells, true); err != nil {
		if u.closed {
			return closedErr()
		}
		return u.opErr("free", err)
	}
	if u.killGen != gen {
		if err := u.checkFree(cells, false); err != nil {
			return u.opErr("free", err)
		}
	}
	if disjoint != nil {
		return u.opErr("free", disjoint)
	}
	// The cells of one extent are consecutive in sorted: each extent's
	// live spans are cut once for all of them, so that the work stays
	// linear in the cells and spans however a peer orders or interleaves
	// them (cutting them one by one shifts the spans after each). The
	// extents are cut in chunks of about lockChunk cells (one extent's
	// cells are never split), letting go of the lock between chunks; if
	// someone freed bytes meanwhile, the cells left are checked again.
	released := false
	var e *extent
	done := 0 // cells cut since the lock was last let go of
	for i := 0; i < len(sorted); {
		if done >= lockChunk {
			done = 0
			if released {
				u.signal()
				released = false
			}
			gen := u.killGen
			if u.relock() {
				return closedErr()
			}
			e = nil
			if u.killGen != gen {
				if err := u.checkFree(sorted[i:], false); err != nil {
					return u.opErr("free", fmt.Errorf("another free ran meanwhile; the cells before %s are freed, of those left: %w", fmtAddr(sorted[i]), err))
				}
			}
		}
		c := sorted[i]
		if c.Len == 0 {
			i++
			continue
		}
		var lo, hi int64
		e, lo, hi, _ = u.lookup(c, e)
		j := i + 1
		for j < len(sorted) && (sorted[j].Len == 0 || sorted[j].Segment == c.Segment && sorted[j].Gen == c.Gen) {
			j++
		}
		var dead bool
		if j == i+1 {
			dead = e.kill(e.liveSpan(lo, hi), lo, hi)
		} else {
			dead = e.killSorted(sorted[i:j])
		}
		u.killGen++
		done += j - i
		i = j
		if dead && u.unref(e, false) {
			released = true
		}
	}
	if released {
		u.signal()
	}
	if invariants.Enabled {
		u.checkLocked()
	}
	return nil
}

// checkFree checks that every cell of nonzero length is live in a
// committed extent, letting go of u.mu every lockChunk cells when chunked
// (it then returns an error wrapping engine.ErrClosed if the unit closed
// meanwhile). The errors name the cells by their index in cells. u.mu is
// held.
func (u *Unit) checkFree(cells []engine.RemoteAddr, chunked bool) error {
	var e *extent
	for i, c := range cells {
		if chunked && i > 0 && i%lockChunk == 0 {
			if u.relock() {
				return engine.ErrClosed
			}
			e = nil
		}
		if c.Len == 0 {
			continue
		}
		var lo, hi int64
		var err error
		e, lo, hi, err = u.lookup(c, e)
		if err != nil {
			return fmt.Errorf("cell %d %s: %w", i, fmtAddr(c), err)
		}
		if e.liveSpan(lo, hi) < 0 {
			return fmt.Errorf("cell %d %s freed already: %w", i, fmtAddr(c), engine.ErrNotFound)
		}
	}
	return nil
}

// lookup finds the committed extent holding all of a (a.Len > 0). hint,
// if not nil, is tried first: consecutive cells of a call usually share an
// extent.
func (u *Unit) lookup(a engine.RemoteAddr, hint *extent) (*extent, int64, int64, error) {
	if e := hint; e != nil && e.state == extentCommitted && e.seg.id == a.Segment && e.gen == a.Gen &&
		a.Offset >= uint64(e.off) && a.Len <= uint64(e.size) && a.Offset-uint64(e.off) <= uint64(e.size)-a.Len {
		lo := int64(a.Offset)
		return e, lo, lo + int64(a.Len), nil
	}
	s := u.byID[a.Segment]
	if s == nil {
		return nil, 0, 0, fmt.Errorf("no segment %d: %w", a.Segment, engine.ErrNotFound)
	}
	size := uint64(len(s.mem))
	if a.Offset > size || a.Len > size-a.Offset {
		return nil, 0, 0, fmt.Errorf("outside segment of %d bytes: %w", size, engine.ErrNotFound)
	}
	lo := int64(a.Offset)
	hi := lo + int64(a.Len)
	switch e := s.byGen[a.Gen]; {
	case e == nil:
		return nil, 0, 0, fmt.Errorf("no extent of generation %d (freed): %w", a.Gen, engine.ErrNotFound)
	case lo < e.off || hi > e.off+e.size:
		return nil, 0, 0, fmt.Errorf("outside the extent of generation %d [offset %d len %d]: %w", a.Gen, e.off, e.size, engine.ErrNotFound)
	case e.state != extentCommitted:
		return nil, 0, 0, fmt.Errorf("not in a committed extent: %w", engine.ErrNotFound)
	default:
		return e, lo, hi, nil
	}
}

func fmtAddr(a engine.RemoteAddr) string {
	return fmt.Sprintf("[segment %d gen %d offset %d len %d]", a.Segment, a.Gen, a.Offset, a.Len)
}

// addrBefore reports whether a ends at or before b starts, in (segment,
// offset) order.
func addrBefore(a, b engine.RemoteAddr) bool {
	return a.Segment < b.Segment || a.Segment == b.Segment && a.Offset+a.Len <= b.Offset
}

// ascending reports whether the cells of nonzero length are in
// (segment, offset) order and disjoint.
func ascending(cells []engine.RemoteAddr) bool {
	var prev engine.RemoteAddr
	for _, c := range cells {
		if c.Len == 0 {
			continue
		}
		if prev.Len != 0 && !addrBefore(prev, c) {
			return false
		}
		prev = c
	}
	return true
}

// sortedCells returns the cells of nonzero length of one Free call in
// (segment, offset) order, and an error if any two share bytes.
func sortedCells(cells []engine.RemoteAddr) ([]engine.RemoteAddr, error) {
	sorted := make([]engine.RemoteAddr, 0, len(cells))
	for _, c := range cells {
		if c.Len > 0 {
			sorted = append(sorted, c)
		}
	}
	slices.SortFunc(sorted, func(a, b engine.RemoteAddr) int {
		return cmp.Or(cmp.Compare(a.Segment, b.Segment), cmp.Compare(a.Offset, b.Offset))
	})
	for i := 1; i < len(sorted); i++ {
		if !addrBefore(sorted[i-1], sorted[i]) {
			return sorted, fmt.Errorf("cells %s and %s overlap (freed twice): %w",
				fmtAddr(sorted[i-1]), fmtAddr(sorted[i]), engine.ErrNotFound)
		}
	}
	return sorted, nil
}

// checkLocked panics if the accounting does not add up (invariants builds).
func (u *Unit) checkLocked() {
	var used int64
	extents := 0
	for _, s := range u.segs {
		used += s.alloc.used
		extents += s.extents
		if len(s.byGen) != s.extents {
			panic(fmt.Sprintf("storage: segment %d finds %d extents by generation, counts %d", s.id, len(s.byGen), s.extents))
		}
	}
	if used != u.used || extents != u.extents || u.reserved > u.used || u.mapped+u.growing > u.cfg.Capacity {
		panic(fmt.Sprintf("storage: accounting: used %d (segments %d), extents %d (segments %d), reserved %d, mapped %d+%d of %d",
			u.used, used, u.extents, extents, u.reserved, u.mapped, u.growing, u.cfg.Capacity))
	}
}

// Stats returns a snapshot of the unit's accounting.
func (u *Unit) Stats() Stats {
	u.mu.Lock()
	defer u.mu.Unlock()
	return Stats{
		Capacity:            u.cfg.Capacity,
		Mapped:              u.mapped,
		Used:                u.used,
		Reserved:            u.reserved,
		Segments:            len(u.segs),
		Extents:             u.extents,
		OpenReservations:    u.open,
		Leases:              u.leases,
		Waiting:             u.waiters,
		HugePages:           u.hugetlb,
		PageSize:            u.segPage,
		Quarantined:         u.quarRes + u.quarLeased,
		QuarantinedSessions: u.quarSess,
	}
}

// Segments describes the unit's live segments, in the order they were
// mapped: none once the unit is closed. The result is a fresh slice; see
// [SegmentInfo] for the fds.
func (u *Unit) Segments() []SegmentInfo {
	segs, _ := u.liveSegments()
	return segs
}

// liveSegments is [Unit.Segments], with an error wrapping
// [engine.ErrClosed] once the unit is closed: a closed unit has no live
// segment, and a client told so (SHM_SEGMENTS) would drop every mapping
// it holds, where the truth is that the unit no longer answers.
func (u *Unit) liveSegments() ([]SegmentInfo, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, u.opErr("segments", engine.ErrClosed)
	}
	out := make([]SegmentInfo, len(u.segs))
	for i, s := range u.segs {
		out[i] = SegmentInfo{ID: s.id, Size: s.size(), Fd: s.fd, HugePages: s.huge}
	}
	return out, nil
}

// Close stops the reaper, waits for it, then unmaps every segment and
// closes its memfd. Waiting Reserve calls return [engine.ErrClosed], as do
// later calls (a Commit too).
//
// A segment that a live [Lease] or a reservation not yet ended (open, or
// expired while held) still reaches stays mapped until the last of them
// is released, committed or aborted: its holder may be copying out of
// [Lease.Bytes] or into [Reservation.Buf] outside the unit's lock, and
// those bytes stay valid until then. A lease never released, or a
// reservation never committed or aborted (the reaper ends none after
// Close), keeps its segments mapped for good: the caller's leak, not a
// crash. Close is idempotent.
func (u *Unit) Close() error {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil
	}
	u.closed = true
	close(u.done)
	var segs []*segment // those nothing reaches any more
	for _, s := range u.segs {
		u.dropped(s)
		for _, e := range s.byGen {
			s.pins += e.holders()
		}
		if s.pins == 0 {
			segs = append(segs, s)
		} else {
			u.lingering++
		}
	}
	u.watch = nil
	segs = append(segs, u.retired...)
	errs := u.lateErrs
	u.segs, u.retired, u.byID, u.lateErrs = nil, nil, nil, nil
	u.mu.Unlock()

	// No holder reaches segs, and nothing else touches their memory
	// after closed is set; wait for the reaper (rule: every goroutine's
	// owner waits for it) before tearing down.
	<-u.reaperDone
	for _, s := range segs {
		errs = append(errs, s.close())
	}
	return errors.Join(errs...)
}

// unpin drops a closed unit's hold on e's segment for one lease entry or
// reserved extent that reached it (see Close), and unmaps the segment
// when it was the last. u.mu is held.
func (u *Unit) unpin(e *extent) {
	s := e.seg
	s.pins--
	if invariants.Enabled && s.pins < 0 {
		panic(fmt.Sprintf("storage: segment %d unpinned more often than pinned at Close", s.id))
	}
	if s.pins == 0 {
		u.lingering--
		// Dropped: munmap of our own mapping and close of our own fd
		// fail only on a bug, and Close, which returned already, was the
		// one to tell; the unit has no logger.
		_ = s.close()
	}
}
