package storage

// An extent is one block handed out by [Unit.Reserve]: one column slice of a
// put. Once committed, the controller cuts it into cells (sub-ranges, one
// per row) and frees them one by one as rows are overwritten or cleared.
// The extent remembers which of its bytes still belong to a live cell:
//
//	extent  [off ........................................ off+size)  (block may be larger)
//	cells   [ cell 0 ][ cell 1 ][cell 2][ cell 3 ]
//	live    [ cell 0 ]          [cell 2][ cell 3 ]   after Free(cell 1)
//
// live is a sorted list of disjoint spans. Freeing a cell must hit bytes
// that are all live (else it is a double free); it trims or splits a span.
// Spans never merge again, so a lookup is a binary search.
//
// refs counts who holds the extent: 1 for the cells while any live byte is
// left, plus 1 per lease entry. At 0 the block goes back to the allocator.
//
// For reconciliation (reconcile.go) a committed extent also keeps when it
// was committed and whether the controller confirmed that cells reference
// it; both are set under the unit's lock that Commit holds anyway.

import (
	"container/heap"

	"github.com/tqgo/tq/engine"
)

type extentState uint8

const (
	extentReserved extentState = iota + 1
	extentCommitted
)

type extent struct {
	seg       *segment
	gen       uint32 // see engine.RemoteAddr.Gen
	state     extentState
	confirmed bool // the controller said cells reference it (reconcile)
	// orphan: reserved for a reservation that can no longer commit (it
	// expired while held, or its session ended into quarantine); the
	// extent is not in flight (see inFlight and Unit.Unsettled).
	orphan    bool
	blk       block
	off       int64 // == blk.off
	size      int64 // bytes asked for; cells live in [off, off+size)
	refs      int
	qrefs     int   // of refs, the lease entries in quarantine (see Stats.Quarantined)
	committed int64 // when it was committed: nanoseconds since Unit.epoch
	live      []span
	liveOne   [1]span // backing store of live until the first split
}

// commit makes all of the extent's bytes one live range held by the cells,
// committed at now (nanoseconds since the unit's epoch).
func (e *extent) commit(now int64) {
	e.state = extentCommitted
	e.committed = now
	e.refs = 1
	e.liveOne[0] = span{e.off, e.off + e.size}
	e.live = e.liveOne[:1:1]
}

// holders returns how many leases' entries and reservations reach e's
// bytes: its references less the cells' one, or 1 while it is reserved
// (placed, open, or kept after its reservation expired while held).
func (e *extent) holders() int {
	switch {
	case e.state == extentReserved:
		return 1
	case len(e.live) > 0:
		return e.refs - 1
	default:
		return e.refs
	}
}

// liveSpan returns the index of the live span holding all of [lo, hi), or
// -1. hi > lo.
func (e *extent) liveSpan(lo, hi int64) int {
	// The first span that ends at or after hi is the only candidate.
	i, j := 0, len(e.live)
	for i < j {
		h := int(uint(i+j) >> 1)
		if e.live[h].end < hi {
			i = h + 1
		} else {
			j = h
		}
	}
	if i < len(e.live) && e.live[i].off <= lo {
		return i
	}
	return -1
}

// kill removes [lo, hi) from live span i, which holds it, and reports
// whether no live byte is left.
func (e *extent) kill(i int, lo, hi int64) bool {
	s := e.live[i]
	switch {
	case s.off == lo && s.end == hi:
		e.live = append(e.live[:i], e.live[i+1:]...)
	case s.off == lo:
		e.live[i].off = hi
	case s.end == hi:
		e.live[i].end = lo
	default:
		e.live = append(e.live, span{})
		copy(e.live[i+2:], e.live[i+1:])
		e.live[i] = span{s.off, lo}
		e.live[i+1] = span{hi, s.end}
	}
	return len(e.live) == 0
}

// killSorted removes cells, in offset order, disjoint and each inside a
// live span (cells of length 0 are skipped), from live in one pass, and
// reports whether no live byte is left.
func (e *extent) killSorted(cells []engine.RemoteAddr) bool {
	union := make([]span, 0, len(cells))
	for _, c := range cells {
		if c.Len > 0 {
			union = append(union, span{int64(c.Offset), int64(c.Offset + c.Len)})
		}
	}
	e.cut(union)
	return len(e.live) == 0
}

// cut removes union, disjoint spans in offset order, from the live spans
// in one pass.
func (e *extent) cut(union []span) {
	out := make([]span, 0, len(e.live)+len(union))
	j := 0 // the first piece of the union that ends after the span's start
	for _, s := range e.live {
		at := s.off
		for j < len(union) && union[j].end <= at {
			j++
		}
		for k := j; k < len(union) && union[k].off < s.end; k++ {
			if union[k].off > at {
				out = append(out, span{at, union[k].off})
			}
			at = union[k].end
		}
		if at < s.end {
			out = append(out, span{at, s.end})
		}
	}
	e.live = out
}

// killRange removes every live byte of [lo, hi) (hi > lo), some of which
// may be freed already, and reports whether any was live.
func (e *extent) killRange(lo, hi int64) bool {
	if i := e.liveSpan(lo, hi); i >= 0 {
		e.kill(i, lo, hi)
		return true
	}
	// No span holds all of [lo, hi), so none needs splitting: each is
	// kept, trimmed at one end, or dropped.
	killed := false
	out := e.live[:0]
	for _, s := range e.live {
		switch {
		case s.end <= lo || s.off >= hi:
		case s.off >= lo && s.end <= hi:
			killed = true
			continue
		case s.off < lo:
			s.end, killed = lo, true
		default:
			s.off, killed = hi, true
		}
		out = append(out, s)
	}
	e.live = out
	return killed
}

// bytes returns the extent's memory in [lo, hi), capacity clipped.
func (e *extent) bytes(lo, hi int64) []byte {
	return e.seg.mem[lo:hi:hi]
}

// killRanges removes every live byte of ranges[k] for each k of group:
// ranges inside the extent, of nonzero length, in offset order (ties in
// call order), some of whose bytes may be freed already and which may
// overlap each other. It returns how many of them freed bytes, taken in
// call order: a range counts if it holds a live byte that no range before
// it in the call holds. counted (one flag per range, false for those of
// the group) records them. It is O(n log n) in the ranges plus linear in
// the live spans.
func (e *extent) killRanges(ranges []engine.RemoteAddr, group []int, counted []bool) int {
	// Sweep the ranges by offset, keeping those that cover the point x in
	// a heap of call indices: the earliest covers [x, its end) up to the
	// next range's start, and frees bytes if that holds a live byte. The
	// union of the ranges is gathered on the way.
	var active idxHeap
	var union []span
	freed := 0
	p := 0 // the first live span that ends after x
	for n, k := range group {
		x := int64(ranges[k].Offset)
		end := x + int64(ranges[k].Len)
		if u := len(union) - 1; u >= 0 && x <= union[u].end {
			union[u].end = max(union[u].end, end)
		} else {
			union = append(union, span{x, end})
		}
		heap.Push(&active, k)
		next := int64(1<<63 - 1)
		if n+1 < len(group) {
			next = int64(ranges[group[n+1]].Offset)
		}
		for x < next && len(active) > 0 {
			top := active[0]
			end := int64(ranges[top].Offset + ranges[top].Len)
			if end <= x {
				heap.Pop(&active)
				continue
			}
			y := min(end, next)
			for p < len(e.live) && e.live[p].end <= x {
				p++
			}
			if p < len(e.live) && e.live[p].off < y && !counted[top] {
				counted[top] = true
				freed++
			}
			x = y
		}
	}
	e.cut(union) // disjoint and in order
	return freed
}

// idxHeap is a min-heap of call indices (see extent.killRanges), for
// container/heap.
type idxHeap []int

func (h idxHeap) Len() int           { return len(h) }
func (h idxHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h idxHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *idxHeap) Push(x any)        { *h = append(*h, x.(int)) }
func (h *idxHeap) Pop() any {
	a := *h
	x := a[len(a)-1]
	*h = a[:len(a)-1]
	return x
}
