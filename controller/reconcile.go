package controller

// Reconciliation: a storage unit reports the extents it holds; the
// controller answers with those no cell references, which the unit frees,
// and marks lost the cells whose bytes the unit no longer has (a full
// reconcile). A fence makes this safe against commits in flight: before
// looking, the controller records, per segment of the unit, the highest
// generation nothing at or below which is still being written or
// committed (the unit computes it), and from then on refuses any commit of
// a range in a fenced generation. So an extent it decides no cell
// references can never be referenced later: the commit that would have
// is refused instead (engine.ErrLost, "write again"), and a late commit
// never names freed memory.
//
// Cells are found by walking every partition, one lock at a time: a
// reconcile costs O(cells). Units ask for one after each registration and
// then only for extents they have not had confirmed yet, so it is rare.

import (
	"cmp"
	"fmt"
	"slices"
	"sync"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// fenceTable holds each unit's fences: segment → highest fenced
// generation. Commits read it under their partition's lock (RLock); a
// reconcile raises it before it walks the partitions.
type fenceTable struct {
	mu sync.RWMutex
	m  map[engine.UnitID]map[uint32]uint32
}

// raiseLocked raises unit's fences to at least fs and returns the ones
// that changed. The caller holds mu (or is replaying).
func (f *fenceTable) raiseLocked(unit engine.UnitID, fs []*wirepb.SegmentFence) []*wirepb.SegmentFence {
	if f.m == nil {
		f.m = make(map[engine.UnitID]map[uint32]uint32)
	}
	segs := f.m[unit]
	if segs == nil {
		segs = make(map[uint32]uint32)
		f.m[unit] = segs
	}
	var changed []*wirepb.SegmentFence
	for _, sf := range fs {
		if old, ok := segs[sf.Segment]; !ok || sf.Gen > old {
			segs[sf.Segment] = sf.Gen
			changed = append(changed, sf)
		}
	}
	return changed
}

// drop forgets an evicted unit's fences: commits naming it are refused
// from then on (see checkDraining). The registry's lock is held.
func (f *fenceTable) drop(unit engine.UnitID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.m, unit)
}

// fencedLocked reports whether a range of unit in segment seg, generation
// gen, lies in fenced generations. The caller holds mu for reading.
func (f *fenceTable) fencedLocked(unit engine.UnitID, seg, gen uint32) (uint32, bool) {
	g, ok := f.m[unit][seg]
	return g, ok && gen <= g
}

func (f *fenceTable) copyLocked() []*wirepb.FenceOp {
	out := make([]*wirepb.FenceOp, 0, len(f.m))
	for u, segs := range f.m {
		op := &wirepb.FenceOp{UnitId: uint32(u)}
		for s, g := range segs {
			op.Fences = append(op.Fences, &wirepb.SegmentFence{Segment: s, Gen: g})
		}
		slices.SortFunc(op.Fences, func(a, b *wirepb.SegmentFence) int { return cmp.Compare(a.Segment, b.Segment) })
		out = append(out, op)
	}
	slices.SortFunc(out, func(a, b *wirepb.FenceOp) int { return cmp.Compare(a.UnitId, b.UnitId) })
	return out
}

func (f *fenceTable) restore(ops []*wirepb.FenceOp) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m = nil
	for _, op := range ops {
		if op.UnitId == 0 {
			return corrupt("fences of unit 0")
		}
		f.raiseLocked(engine.UnitID(op.UnitId), op.Fences)
	}
	return nil
}

// checkFences refuses cells that name fenced generations. The caller holds
// the partition's lock; it takes the fences' read lock.
func (c *Controller) checkFences(fields []engine.CommitField) error {
	c.fences.mu.RLock()
	defer c.fences.mu.RUnlock()
	if len(c.fences.m) == 0 {
		return nil
	}
	check := func(u engine.UnitID, a engine.RemoteAddr) error {
		if g, fenced := c.fences.fencedLocked(u, a.Segment, a.Gen); fenced {
			return fmt.Errorf("storage unit %d reclaimed the extents of segment %d up to generation %d (unreferenced longer than the reconcile grace), and this commit names generation %d; write again: %w",
				u, a.Segment, g, a.Gen, engine.ErrLost)
		}
		return nil
	}
	for i := range fields {
		cf := &fields[i]
		for _, r := range cf.Runs {
			if err := check(r.Unit, r.First); err != nil {
				return fmt.Errorf("field %q: %w", cf.Name, err)
			}
		}
		var last engine.CellLoc
		for _, l := range cf.Locs {
			if !l.Stored() || l.Unit == last.Unit && l.Addr.Segment == last.Addr.Segment && l.Addr.Gen == last.Addr.Gen {
				continue
			}
			last = l
			if err := check(l.Unit, l.Addr); err != nil {
				return fmt.Errorf("field %q: %w", cf.Name, err)
			}
		}
	}
	return nil
}

// ErrDraining is in the refusal of a commit that names a cell on a
// draining unit. It reads and unwraps as [engine.ErrLost] (CODE_LOST on
// the wire, which clients answer by writing the cells again elsewhere);
// callers in the controller's process tell it from other losses with
// errors.Is.
var ErrDraining error = drainingErr{}

type drainingErr struct{}

func (drainingErr) Error() string { return engine.ErrLost.Error() }
func (drainingErr) Unwrap() error { return engine.ErrLost }

// checkDraining refuses a commit naming a cell on a draining unit
// ([Registry.SetDraining]): a drain lists the unit's cells after marking
// it, under the partitions' locks, so a commit checked here before the
// mark is in what it lists, and one checked after would land behind it.
// The error wraps [ErrDraining], and so [engine.ErrLost], as a fenced
// generation's does: the bytes written will not be taken, and the client
// writes them again, elsewhere once it has listed the units. A cell on a
// unit evicted from the registry is refused the same way, with
// [engine.ErrLost]: the unit is gone, and its fences with it.
func (c *Controller) checkDraining(fields []engine.CommitField) error {
	var last engine.UnitID
	draining := func(name string, u engine.UnitID) error {
		if u == last || u == 0 || u == engine.LostUnit {
			return nil
		}
		last = u
		switch draining, evicted := c.units.refusing(u); {
		case draining:
			return fmt.Errorf("field %q: storage unit %d is draining (tq unit drain) and takes no new cells; write them to another unit: %w", name, u, ErrDraining)
		case evicted:
			// Its fences went with it.
			return fmt.Errorf("field %q: storage unit %d was evicted from the registry (dead, its place taken by another unit); write the cells to another unit: %w", name, u, engine.ErrLost)
		}
		return nil
	}
	for i := range fields {
		cf := &fields[i]
		for _, r := range cf.Runs {
			if err := draining(cf.Name, r.Unit); err != nil {
				return err
			}
		}
		for _, l := range cf.Locs {
			if err := draining(cf.Name, l.Unit); err != nil {
				return err
			}
		}
	}
	return nil
}

// SegmentFence is a unit's fence for one segment (see [ReconcileRequest]).
type SegmentFence struct {
	Segment, Gen uint32
}

// ReconcileRequest is a unit's report of the extents it holds (see
// ReconcileRequest in wire/proto/cluster.proto, which it mirrors).
type ReconcileRequest struct {
	Unit        engine.UnitID
	Incarnation uint64
	Full        bool
	// Segments are the segments this report covers completely (Full).
	Segments []uint32
	// Extents are committed extents, each its whole range.
	Extents []engine.RemoteAddr
	Fences  []SegmentFence
	// Last, LiveSegments and NextSegment close a full reconcile.
	Last         bool
	LiveSegments []uint32
	NextSegment  uint32
}

// ReconcileResult is what a reconcile decided.
type ReconcileResult struct {
	// Free are the reported extents no cell references, in fenced
	// generations: the unit frees them.
	Free []engine.RemoteAddr
	// Keep are, for reported extents (in fenced generations) that cells
	// reference in part only, the referenced ranges: the unit frees every
	// other byte of those extents.
	Keep []engine.RemoteAddr
	// Lost counts the cells this report marked lost.
	Lost int
}

type segGen struct{ seg, gen uint32 }

// Reconcile compares a unit's report with the cells that name it. It
// raises the unit's fences first (recorded in the log), so that a commit of
// a range it is about to declare unreferenced is refused from now on;
// then it walks every partition. With req.Full it also marks lost the
// cells of covered segments, at or below their fence, whose bytes lie in
// no reported extent, and (req.Last) the cells of segments the unit no
// longer has.
//
// Errors: [engine.ErrNotFound] for a unit not registered with that
// incarnation; [engine.ErrInvalid] for a malformed report;
// [engine.ErrNotReady] while a checkpoint is being saved (try again).
func (c *Controller) Reconcile(req ReconcileRequest) (ReconcileResult, error) {
	var res ReconcileResult
	if err := c.closed(); err != nil {
		return res, fmt.Errorf("reconcile of storage unit %d: %w", req.Unit, err)
	}
	if !c.units.bound(req.Unit, req.Incarnation) {
		return res, fmt.Errorf("storage unit %d (incarnation %x) is not registered: %w", req.Unit, req.Incarnation, engine.ErrNotFound)
	}
	fence := make(map[uint32]uint32, len(req.Fences))
	fs := make([]*wirepb.SegmentFence, 0, len(req.Fences))
	for _, f := range req.Fences {
		if _, dup := fence[f.Segment]; dup {
			return res, fmt.Errorf("segment %d fenced twice: %w", f.Segment, engine.ErrInvalid)
		}
		fence[f.Segment] = f.Gen
		fs = append(fs, &wirepb.SegmentFence{Segment: f.Segment, Gen: f.Gen})
	}
	covered := make(map[uint32]bool, len(req.Segments))
	for _, s := range req.Segments {
		covered[s] = true
		if _, ok := fence[s]; !ok {
			return res, fmt.Errorf("segment %d is covered but not fenced: %w", s, engine.ErrInvalid)
		}
	}
	reported := make(map[segGen]engine.RemoteAddr, len(req.Extents))
	for _, e := range req.Extents {
		if _, ok := fence[e.Segment]; !ok {
			return res, fmt.Errorf("extent in segment %d, which is not fenced: %w", e.Segment, engine.ErrInvalid)
		}
		if req.Full && !covered[e.Segment] {
			return res, fmt.Errorf("extent in segment %d, which the report does not cover: %w", e.Segment, engine.ErrInvalid)
		}
		k := segGen{e.Segment, e.Gen}
		if _, dup := reported[k]; dup {
			return res, fmt.Errorf("extent of segment %d generation %d reported twice: %w", e.Segment, e.Gen, engine.ErrInvalid)
		}
		reported[k] = e
	}
	live := make(map[uint32]bool, len(req.LiveSegments))
	for _, s := range req.LiveSegments {
		live[s] = true
	}
	if !c.pins.TryRLock() {
		return res, fmt.Errorf("a checkpoint is being saved; reconcile later: %w", engine.ErrNotReady)
	}
	defer c.pins.RUnlock()

	c.fences.mu.Lock()
	if changed := c.fences.raiseLocked(req.Unit, fs); len(changed) > 0 {
		c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Fence{Fence: &wirepb.FenceOp{UnitId: uint32(req.Unit), Fences: changed}}})
	}
	c.fences.mu.Unlock()

	// First pass: mark lost what is gone, and count the bytes cells
	// reference in each reported extent (cells never overlap).
	refBytes := make(map[segGen]uint64, len(reported))
	gone := func(cl cell) bool {
		if !req.Full {
			return false
		}
		g, ok := fence[cl.seg]
		if covered[cl.seg] {
			if !ok || cl.gen > g {
				return false // newer than the report: it may be mid-commit
			}
			e, found := reported[segGen{cl.seg, cl.gen}]
			return !found || cl.off < e.Offset || cl.off+cl.len > e.Offset+e.Len
		}
		return req.Last && cl.seg < req.NextSegment && !live[cl.seg]
	}
	c.eachCellOf(req.Unit, func(p *partition, r *row, slot int, lost *[]*wirepb.LostOp) {
		cl := p.rows.cell(r, slot)
		if gone(cl) {
			p.rows.set(r, slot, lostCell(cl))
			if len(*lost) == 0 || (*lost)[len(*lost)-1].Partition != p.id {
				*lost = append(*lost, &wirepb.LostOp{Partition: p.id, Gen: p.gen})
			}
			o := (*lost)[len(*lost)-1]
			o.Indexes = append(o.Indexes, r.index)
			o.Fields = append(o.Fields, p.order[slot].name)
			res.Lost++
			return
		}
		if k := (segGen{cl.seg, cl.gen}); reported[k].Len > 0 {
			refBytes[k] += cl.len
		}
	})
	partial := make(map[segGen][]engine.RemoteAddr)
	for k, e := range reported {
		switch n := refBytes[k]; {
		case k.gen > fence[k.seg]:
			// Not fenced: a commit may still name it.
		case n == 0:
			res.Free = append(res.Free, e)
		case n < e.Len:
			partial[k] = nil
		}
	}
	if len(partial) > 0 {
		// Second pass, for the extents cells reference in part only: their
		// referenced ranges. A cell dropped meanwhile is freed through the
		// queue; none can be added (the generations are fenced).
		c.eachCellOf(req.Unit, func(p *partition, r *row, slot int, _ *[]*wirepb.LostOp) {
			cl := p.rows.cell(r, slot)
			k := segGen{cl.seg, cl.gen}
			if rs, ok := partial[k]; ok {
				partial[k] = append(rs, engine.RemoteAddr{Segment: cl.seg, Gen: cl.gen, Offset: cl.off, Len: cl.len})
			}
		})
		for _, rs := range partial {
			slices.SortFunc(rs, func(a, b engine.RemoteAddr) int { return cmp.Compare(a.Offset, b.Offset) })
			res.Keep = append(res.Keep, engine.CoalesceRanges(rs)...)
		}
	}
	byAddr := func(a, b engine.RemoteAddr) int {
		return cmp.Or(cmp.Compare(a.Segment, b.Segment), cmp.Compare(a.Offset, b.Offset))
	}
	slices.SortFunc(res.Free, byAddr)
	slices.SortFunc(res.Keep, byAddr)
	return res, nil
}

// Unreferenced returns those of extents, whole extents of storage unit
// unit, that no cell names (by segment and generation, as reconciles
// judge them). For an extent a put wrote and has not committed yet, or
// never will, it is so; a shutdown waits for that to change (see
// storage.Unit.Unsettled). It reads every cell of the unit, one partition
// at a time, and changes nothing.
func (c *Controller) Unreferenced(unit engine.UnitID, extents []engine.RemoteAddr) []engine.RemoteAddr {
	if len(extents) == 0 {
		return nil
	}
	named := make(map[segGen]bool, len(extents))
	for _, e := range extents {
		named[segGen{e.Segment, e.Gen}] = false
	}
	c.eachCellOf(unit, func(p *partition, r *row, slot int, _ *[]*wirepb.LostOp) {
		cl := p.rows.cell(r, slot)
		if k := (segGen{cl.seg, cl.gen}); !named[k] {
			if _, asked := named[k]; asked {
				named[k] = true
			}
		}
	})
	var out []engine.RemoteAddr
	for _, e := range extents {
		if !named[segGen{e.Segment, e.Gen}] {
			out = append(out, e)
		}
	}
	return out
}

// eachCellOf calls fn for every stored cell (of non-zero length) of unit,
// one partition at a time under its lock, and records the lost ops fn
// collects for the partition.
func (c *Controller) eachCellOf(unit engine.UnitID, fn func(p *partition, r *row, slot int, lost *[]*wirepb.LostOp)) {
	for _, id := range c.partitionIDs(true) {
		p, _ := c.lock(id)
		if p == nil {
			continue // cleared, or the controller closed
		}
		var lost []*wirepb.LostOp
		p.rows.all(func(r *row) {
			p.rows.cells(r, func(slot int, cl cell) {
				if engine.UnitID(cl.unit&^producedBit) == unit && cl.len > 0 {
					fn(p, r, slot, &lost)
				}
			})
		})
		for _, o := range lost {
			// Rare: every read waits for it.
			c.noteRemoved(c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Lost{Lost: o}}))
		}
		if len(lost) > 0 {
			p.notify()
		}
		p.mu.Unlock()
	}
}

// lostCell is cl after its bytes were lost: produced, on engine.LostUnit.
func lostCell(cl cell) cell {
	return cell{len: cl.len, unit: uint32(engine.LostUnit) | producedBit}
}
