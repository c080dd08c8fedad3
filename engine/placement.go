package engine

// UnitID names a storage unit within a cluster. IDs are assigned by the
// controller when a unit registers, below [LostUnit], and never reused:
// an id stands for one run of one unit process (one incarnation).
type UnitID uint32

// LostUnit is the unit of a cell whose bytes are lost for good (its
// storage unit came back without them): reading it fails with an error
// wrapping [ErrLost]. No unit has this id.
const LostUnit UnitID = 1<<31 - 1

// RemoteAddr is a byte range inside a storage unit's arena: which segment,
// where in it, how long. It is a plain descriptor: transports turn it into
// a live mapping, registration or socket request.
//
// Gen is the generation of the extent the range lies in. A unit hands out
// a new generation every time it reuses memory for a new extent and
// refuses an address whose generation does not match, so a reader holding
// stale locations (rows cleared and their memory reused since) gets an
// error instead of someone else's bytes.
type RemoteAddr struct {
	Segment uint32
	Gen     uint32
	Offset  uint64
	Len     uint64
}

// CellLoc says where one (row, field) cell's bytes live. The zero value
// means "no bytes stored" (not produced).
type CellLoc struct {
	Unit UnitID
	Addr RemoteAddr
}

// Stored reports whether the cell is produced: its location points at
// stored bytes, or at [LostUnit] for bytes lost for good. Empty cells (a
// zero-length row) are stored with Unit set.
func (l CellLoc) Stored() bool { return l.Unit != 0 }

// Lost reports a cell whose bytes are lost for good (see [LostUnit]).
func (l CellLoc) Lost() bool { return l.Unit == LostUnit }

// CellRun is Count cells stored back to back on one unit, each of
// First.Len bytes: cell k starts at First.Offset + k*First.Len. A column
// slice written by one put is one run, and a run costs the same to send
// or record whether it holds one cell or a thousand.
type CellRun struct {
	Unit  UnitID
	First RemoteAddr
	Count int
}

// Cell returns the location of cell k of the run.
func (r CellRun) Cell(k int) CellLoc {
	a := r.First
	a.Offset += uint64(k) * a.Len
	return CellLoc{Unit: r.Unit, Addr: a}
}

// Span is the run's bytes as one range.
func (r CellRun) Span() RemoteAddr {
	a := r.First
	a.Len *= uint64(r.Count)
	return a
}

// PeerInfo describes how to reach a storage unit. Handshake is opaque,
// transport-specific data (shm: boot id and socket path; rdma: endpoint).
type PeerInfo struct {
	Unit UnitID
	// Incarnation, when not 0, is the unit process the caller means: a
	// unit of another incarnation (it restarted) refuses the connection
	// with an error wrapping ErrLost.
	Incarnation uint64
	Host        string // host identity (boot id) for same-host detection
	Addr        string // control address: "unix:///path" or "tcp://host:port"
	Transport   string
	Handshake   []byte
}

// CoalesceRanges merges ranges that continue one another in one extent
// (same segment and generation, one starting where the other ends) into
// one range: a unit frees by bytes, so freeing the range frees every cell
// in it, and a cleared batch of 1024 rows × 9 fields goes to its unit as 9
// ranges instead of 9216 for it to sort. A range given twice is never
// merged with itself. It may reuse addrs' memory.
func CoalesceRanges(addrs []RemoteAddr) []RemoteAddr {
	if len(addrs) < 2 {
		return addrs
	}
	out := make([]RemoteAddr, 0, len(addrs))
	// open holds the ranges of out a cell may still continue, at most
	// maxOpen. Cells come row by row, a field after another, so the cell
	// after one that continued open[k] usually continues open[k+1]: the
	// probe starts there and mostly hits at once.
	const maxOpen = 64
	open := make([]int, 0, maxOpen)
	next := 0
	for _, a := range addrs {
		hit := -1
		for t := range open {
			k := (next + t) % len(open)
			if r := out[open[k]]; a.Len > 0 && r.Len > 0 && r.Segment == a.Segment && r.Gen == a.Gen && r.Offset+r.Len == a.Offset {
				hit = k
				break
			}
		}
		if hit >= 0 {
			out[open[hit]].Len += a.Len
			next = (hit + 1) % len(open)
			continue
		}
		out = append(out, a)
		if len(open) < maxOpen {
			open = append(open, len(out)-1)
		} else {
			open[next] = len(out) - 1
		}
	}
	return out
}
