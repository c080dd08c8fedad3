package storage

// Reconciliation: the unit and the controller agree on which extents hold
// cells (RECONCILE, wire/spec.md). The unit reports committed extents; the
// controller answers with those no cell references, which the unit frees,
// and fences each reported segment: it refuses from then on any commit
// naming a range of that segment at or below the fence's generation, so a
// late commit never names memory the unit freed.
//
// The fence of a segment is the highest generation G such that no extent
// of the segment with a generation at or below G is in flight:
//
//	in flight   reserved (an open reservation, or a WRITE being read in;
//	            not a reservation that can no longer commit: one held
//	            that expired, or one in quarantine), or committed less
//	            than the grace ago and not confirmed (its client may
//	            still be committing it to the controller)
//
//	segment 3   gen 1 committed, confirmed      fence = 3: gens 1–3 are
//	            gen 2 freed                     settled, 4 is in flight, and
//	            gen 3 committed long ago        every extent placed later
//	            gen 4 reserved                  gets a generation above 4
//	            gen 5 committed just now
//
// It is computed exactly by a scan of the segment's extents, under the
// unit's lock. A fence stays true as time passes: extents only leave
// flight, and new ones get higher generations.
//
// A full reconcile reports every committed extent, page by page, each
// page covering whole segments (ReconcileFull); a periodic one reports
// the extents committed at least the grace ago that the controller has
// not confirmed yet (ReconcilePeriodic). ApplyReconcile applies the
// answer: it frees the reported extents the controller lists, and marks
// the other reported ones confirmed, so a periodic reconcile never
// reports them again. Only extents at or below their segment's fence
// count: the controller may judge nothing above it (a commit may still
// come), so such an extent is neither freed nor confirmed.
//
// An extent's commit time and confirmed flag are all the data path pays:
// Commit stores the time it reads anyway, under the lock it holds anyway.

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/tqgo/tq/engine"
)

// SegmentFence is a segment's fence in a reconcile report: no extent of
// the segment with a generation at or below Gen is in flight.
type SegmentFence struct {
	Segment uint32
	Gen     uint32
}

// ReconcileReport is the content of one RECONCILE request (see
// wirepb.ReconcileRequest), built by [Unit.ReconcileFull] or
// [Unit.ReconcilePeriodic] and answered through [Unit.ApplyReconcile].
type ReconcileReport struct {
	// Full: Segments are covered completely (Extents lists every
	// committed extent in them).
	Full     bool
	Segments []uint32
	// Extents are whole committed extents; their Unit is 0.
	Extents []engine.RemoteAddr
	// Fences has one entry per covered segment (Full) or per segment of
	// Extents, in segment order.
	Fences []SegmentFence
	// Last is set on the last page of a full reconcile, which also lists
	// every live segment and the next segment id the unit would assign.
	Last         bool
	LiveSegments []uint32
	NextSegment  uint32
}

// DefaultReconcilePage is the most extents a reconcile report lists
// unless told otherwise (a segment with more is a page of its own): a
// page stays well under a megabyte on the wire.
const DefaultReconcilePage = 16384

// nowNs returns the time in nanoseconds since the unit's epoch, the clock
// of extents' commit times.
func (u *Unit) nowNs() int64 { return int64(time.Since(u.epoch)) }

// inFlight reports whether e is reserved by a reservation that may still
// commit, or committed less than grace (nanoseconds) before now and not
// confirmed. An orphan (its reservation expired while held, or is in
// quarantine) is not: no commit can name it, and reconciliation frees
// only committed extents, so the fence may pass it.
func inFlight(e *extent, now, grace int64) bool {
	switch e.state {
	case extentReserved:
		return !e.orphan
	case extentCommitted:
		return !e.confirmed && now-e.committed < grace
	}
	return false
}

// reportable reports whether e is a committed extent whose cells hold it:
// committed, and not every byte freed (one that is kept only by a lease
// was freed already and is not the controller's to judge).
func reportable(e *extent) bool {
	return e.state == extentCommitted && len(e.live) > 0
}

// Unsettled returns, whole, the unit's extents in flight with the given
// grace: reserved by a reservation that may still commit, or committed
// less than grace ago, holding cells, and not confirmed by a reconcile. A
// put may still commit the cells of such an extent to the controller; one
// the controller names no cell of is a put not finished yet (or one that
// will never be: its writer died). A server shutting down waits for them
// (see [Unit.StopReserving]). The extents of a held reservation that
// expired, or of one in a dead session's quarantine, are not listed: no
// put can commit them any more.
func (u *Unit) Unsettled(grace time.Duration) []engine.RemoteAddr {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := u.nowNs()
	var out []engine.RemoteAddr
	for _, s := range u.segs {
		for _, e := range s.byGen {
			if e.state == extentReserved && !e.orphan || reportable(e) && inFlight(e, now, int64(grace)) {
				out = append(out, extentAddr(e))
			}
		}
	}
	byAddr(out)
	return out
}

// byAddr sorts extents of a report by segment, then offset.
func byAddr(as []engine.RemoteAddr) {
	slices.SortFunc(as, func(a, b engine.RemoteAddr) int {
		return cmp.Or(cmp.Compare(a.Segment, b.Segment), cmp.Compare(a.Offset, b.Offset))
	})
}

// fenceLocked returns s's fence at now.
func fenceLocked(s *segment, now, grace int64) uint32 {
	fence := s.gen
	for _, e := range s.byGen {
		if e.gen <= fence && inFlight(e, now, grace) {
			fence = e.gen - 1
		}
	}
	return fence
}

func extentAddr(e *extent) engine.RemoteAddr {
	return engine.RemoteAddr{Segment: e.seg.id, Gen: e.gen, Offset: uint64(e.off), Len: uint64(e.size)}
}

// liveIDsLocked returns the ids of the unit's segments, those being
// mapped included, in order.
func (u *Unit) liveIDsLocked() []uint32 {
	ids := make([]uint32, 0, len(u.segs)+len(u.growingIDs))
	for _, s := range u.segs {
		ids = append(ids, s.id)
	}
	ids = append(ids, u.growingIDs...)
	slices.Sort(ids)
	return ids
}

// ReconcileFull returns the page of a full reconcile that starts at
// segment id from (0 for the first page), and the from of the next page.
// A page covers whole segments in id order and lists at most maxExtents
// extents (0: [DefaultReconcilePage]), unless one segment alone has more:
// that segment is then a page of its own. Extents committed less than
// grace ago and not confirmed are in flight and keep their segment's
// fence below them. The last page (Last) also lists every segment the
// unit has, those being mapped included, and the next id it would assign.
//
// Send the pages in order and apply each answer with [Unit.ApplyReconcile]
// before building the next. After [Unit.Close] it returns an error
// wrapping [engine.ErrClosed].
func (u *Unit) ReconcileFull(from uint32, grace time.Duration, maxExtents int) (ReconcileReport, uint32, error) {
	if maxExtents <= 0 {
		maxExtents = DefaultReconcilePage
	}
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return ReconcileReport{}, from, u.opErr("reconcile", engine.ErrClosed)
	}
	rep, next := u.reconcileFullLocked(from, grace, maxExtents)
	u.mu.Unlock()
	byAddr(rep.Extents) // outside the lock
	return rep, next, nil
}

func (u *Unit) reconcileFullLocked(from uint32, grace time.Duration, maxExtents int) (ReconcileReport, uint32) {
	now := u.nowNs()
	rep := ReconcileReport{Full: true, Extents: make([]engine.RemoteAddr, 0, min(u.extents, maxExtents))}
	var segs []*segment
	for _, s := range u.segs {
		if s.id >= from {
			segs = append(segs, s)
		}
	}
	slices.SortFunc(segs, func(a, b *segment) int { return cmp.Compare(a.id, b.id) })
	next := from
	for _, s := range segs {
		// s.extents bounds the extents s reports.
		if len(rep.Segments) > 0 && len(rep.Extents)+s.extents > maxExtents {
			return rep, next
		}
		rep.Segments = append(rep.Segments, s.id)
		rep.Fences = append(rep.Fences, SegmentFence{Segment: s.id, Gen: fenceLocked(s, now, int64(grace))})
		for _, e := range s.byGen {
			if reportable(e) {
				rep.Extents = append(rep.Extents, extentAddr(e))
			}
		}
		next = s.id + 1
	}
	rep.Last = true
	rep.LiveSegments = u.liveIDsLocked()
	rep.NextSegment = u.lastID + 1
	return rep, next
}

// ReconcilePeriodic returns the report of a periodic reconcile: at most
// maxExtents (0: [DefaultReconcilePage]) committed extents the controller
// has not confirmed, committed at least grace ago and at or below their
// segment's fence, with the fences of their segments. An empty report
// means there is nothing to send. It locks the unit one segment at a
// time. After [Unit.Close] it returns an error wrapping
// [engine.ErrClosed].
func (u *Unit) ReconcilePeriodic(grace time.Duration, maxExtents int) (ReconcileReport, error) {
	if maxExtents <= 0 {
		maxExtents = DefaultReconcilePage
	}
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return ReconcileReport{}, u.opErr("reconcile", engine.ErrClosed)
	}
	segs := slices.Clone(u.segs)
	u.mu.Unlock()
	slices.SortFunc(segs, func(a, b *segment) int { return cmp.Compare(a.id, b.id) })
	var rep ReconcileReport
	for _, s := range segs {
		if len(rep.Extents) >= maxExtents {
			break
		}
		u.mu.Lock()
		// A dropped segment leaves byID under the lock before it is
		// retired (after it): its retired flag is not the lock's to read.
		if u.closed || u.byID[s.id] != s {
			u.mu.Unlock()
			continue
		}
		now := u.nowNs()
		fence := fenceLocked(s, now, int64(grace))
		n := len(rep.Extents)
		for _, e := range s.byGen {
			if reportable(e) && !e.confirmed && e.gen <= fence && now-e.committed >= int64(grace) {
				rep.Extents = append(rep.Extents, extentAddr(e))
			}
		}
		u.mu.Unlock()
		// The lowest offsets first, as a scan in offset order finds them.
		byAddr(rep.Extents[n:])
		rep.Extents = rep.Extents[:min(len(rep.Extents), maxExtents)]
		if len(rep.Extents) > n {
			rep.Fences = append(rep.Fences, SegmentFence{Segment: s.id, Gen: fence})
		}
	}
	return rep, nil
}

// ApplyReconcile applies the controller's answer to rep: free lists the
// reported extents that no cell references. Each one is freed whole (its
// cells' bytes that are still live; a lease keeps the memory until it is
// released) when it was reported in rep, is at or below its segment's
// fence in rep, and is still the same committed extent (not gone, and not
// another generation since); anything else in free is skipped. Every
// other reported extent at or below its fence is marked confirmed. It
// returns the number of extents freed; after [Unit.Close], an error
// wrapping [engine.ErrClosed].
//
// keep gives, for reported extents the controller finds referenced only in
// part, the ranges still referenced: every other byte of such an extent is
// freed (leniently), so bytes whose frees were lost (a controller that
// restarted with frees still queued) come back too. A keep range whose
// end overflows is refused: nothing of the answer is applied, and the
// error, wrapping [engine.ErrInvalid], names the range.
func (u *Unit) ApplyReconcile(rep ReconcileReport, free, keep []engine.RemoteAddr) (int, error) {
	for i, k := range keep {
		if k.Offset+k.Len < k.Offset {
			// Its end would wrap to a small offset, and the bytes it
			// names would be freed as outside it.
			return 0, u.opErr("reconcile", fmt.Errorf("keep range %d %s ends past 2^64: %w", i, fmtAddr(k), engine.ErrInvalid))
		}
	}
	type key struct {
		seg, gen uint32
		off      uint64
	}
	fences := make(map[uint32]uint32, len(rep.Fences))
	for _, f := range rep.Fences {
		fences[f.Segment] = f.Gen
	}
	judged := func(a engine.RemoteAddr) bool {
		f, ok := fences[a.Segment]
		return ok && a.Gen <= f
	}
	listed := make(map[key]bool, len(rep.Extents))
	for _, a := range rep.Extents {
		if judged(a) {
			listed[key{a.Segment, a.Gen, a.Offset}] = true
		}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return 0, u.opErr("reconcile", fmt.Errorf("%d extents: %w", len(free), engine.ErrClosed))
	}
	freed := 0
	for _, a := range free {
		k := key{a.Segment, a.Gen, a.Offset}
		if !listed[k] {
			continue // not reported, above the fence, or listed twice
		}
		delete(listed, k)
		if e := u.extentAt(a); e != nil && reportable(e) {
			u.killAll(e)
			freed++
		}
	}
	type segGen struct{ seg, gen uint32 }
	kept := make(map[segGen][]engine.RemoteAddr)
	for _, k := range keep {
		kept[segGen{k.Segment, k.Gen}] = append(kept[segGen{k.Segment, k.Gen}], k)
	}
	released := false
	for _, a := range rep.Extents {
		if !listed[key{a.Segment, a.Gen, a.Offset}] {
			continue
		}
		e := u.extentAt(a)
		if e == nil || e.state != extentCommitted {
			continue
		}
		if ks := kept[segGen{a.Segment, a.Gen}]; len(ks) > 0 {
			// Referenced in part: free the bytes between the kept ranges.
			slices.SortFunc(ks, func(x, y engine.RemoteAddr) int { return cmp.Compare(x.Offset, y.Offset) })
			at, end := a.Offset, a.Offset+a.Len
			var gaps []engine.RemoteAddr
			for _, k := range ks {
				if k.Offset+k.Len <= at || k.Offset >= end {
					continue
				}
				if k.Offset > at {
					gaps = append(gaps, engine.RemoteAddr{Segment: a.Segment, Gen: a.Gen, Offset: at, Len: k.Offset - at})
				}
				at = max(at, k.Offset+k.Len)
			}
			if at < end {
				gaps = append(gaps, engine.RemoteAddr{Segment: a.Segment, Gen: a.Gen, Offset: at, Len: end - at})
			}
			for _, g := range gaps {
				var rel bool
				if e, _, rel = u.freeRangeLocked(g, e); rel {
					released = true
					break
				}
			}
			if e == nil {
				continue
			}
		}
		e.confirmed = true
	}
	if freed > 0 || released {
		u.signal()
	}
	return freed, nil
}

// extentAt returns the extent that starts at a's offset in a's segment
// with a's generation, or nil.
func (u *Unit) extentAt(a engine.RemoteAddr) *extent {
	s := u.byID[a.Segment]
	if s == nil || a.Offset > uint64(len(s.mem)) {
		return nil
	}
	e := s.byGen[a.Gen]
	if e == nil || e.off != int64(a.Offset) {
		return nil
	}
	return e
}

// killAll frees every live byte of a committed extent: the cells' hold
// on it goes, and with it the extent unless a lease keeps it.
func (u *Unit) killAll(e *extent) {
	e.live = e.live[:0]
	u.killGen++
	u.unref(e, false)
}

// FreeRanges frees cell ranges that the controller no longer references
// (UNIT_SYNC): like [Unit.Free], sub-ranges of committed extents, an
// extent going back to the pool once all its bytes are freed and no lease
// holds it. Unlike Free, each range stands on its own and nothing is an
// error: a range not inside a committed extent of its generation is
// skipped, and of a range whose bytes were partly freed already only the
// live bytes are freed, so the same ranges may be applied twice (a reply
// delivered again after a reconnect) or after a reconcile freed their
// extent. Ranges of length 0 are skipped. It returns the number of ranges
// that freed bytes; after [Unit.Close], an error wrapping
// [engine.ErrClosed].
func (u *Unit) FreeRanges(ranges []engine.RemoteAddr) (int, error) {
	// The ranges of nonzero length are put in (segment, generation,
	// offset, call) order before the lock, so that each extent's live
	// spans are cut once for all its ranges: cutting them one by one
	// shifts the spans after each, quadratic on a fragmented extent.
	var order []int
	if len(ranges) > 1 {
		order = make([]int, 0, len(ranges))
		for i, a := range ranges {
			if a.Len > 0 {
				order = append(order, i)
			}
		}
		slices.SortFunc(order, func(i, j int) int {
			a, b := ranges[i], ranges[j]
			return cmp.Or(cmp.Compare(a.Segment, b.Segment), cmp.Compare(a.Gen, b.Gen), cmp.Compare(a.Offset, b.Offset), cmp.Compare(i, j))
		})
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return 0, u.opErr("free", fmt.Errorf("%d ranges: %w", len(ranges), engine.ErrClosed))
	}
	u.killGen++ // see Free
	if len(ranges) == 1 {
		_, freed, released := u.freeRangeLocked(ranges[0], nil)
		if released {
			u.signal()
		}
		if freed {
			return 1, nil
		}
		return 0, nil
	}
	freed, released := 0, false
	var group []int // of order, the ranges inside one committed extent
	counted := make([]bool, len(ranges))
	for i := 0; i < len(order); {
		a := ranges[order[i]]
		j := i + 1
		for j < len(order) && ranges[order[j]].Segment == a.Segment && ranges[order[j]].Gen == a.Gen {
			j++
		}
		var e *extent
		group = group[:0]
		for _, k := range order[i:j] {
			if h, _, _, err := u.lookup(ranges[k], e); err == nil {
				e = h
				group = append(group, k)
			}
		}
		i = j
		if e == nil || len(e.live) == 0 {
			continue
		}
		freed += e.killRanges(ranges, group, counted)
		if len(e.live) == 0 && u.unref(e, false) {
			released = true
		}
	}
	if released {
		u.signal()
	}
	return freed, nil
}

// freeRangeLocked frees range a (leniently: a range not live, or not in a
// committed extent of its generation, is skipped) and returns the extent
// it lay in (a hint for the next range; nil once released), whether it
// freed anything and whether the extent went back to the pool. u.mu is
// held.
func (u *Unit) freeRangeLocked(a engine.RemoteAddr, hint *extent) (e *extent, freed, released bool) {
	if a.Len == 0 {
		return hint, false, false
	}
	e, lo, hi, err := u.lookup(a, hint)
	if err != nil {
		return nil, false, false
	}
	if len(e.live) == 0 || !e.killRange(lo, hi) {
		return e, false, false
	}
	if len(e.live) == 0 && u.unref(e, false) {
		return nil, true, true
	}
	return e, true, false
}
