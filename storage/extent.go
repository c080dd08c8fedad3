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

import "github.com/tqgo/tq/engine"

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
	out := make([]span, 0, len(e.live)+len(cells))
	j := 0
	for _, s := range e.live {
		at := s.off
		for ; j < len(cells); j++ {
			if cells[j].Len == 0 {
				continue
			}
			lo := int64(cells[j].Offset)
			if lo >= s.end {
				break
			}
			if lo > at {
				out = append(out, span{at, lo})
			}
			at = lo + int64(cells[j].Len)
		}
		if at < s.end {
			out = append(out, span{at, s.end})
		}
	}
	e.live = out
	return len(out) == 0
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
