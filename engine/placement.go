package engine

// UnitID names a storage unit within a cluster. IDs are assigned by the
// controller when a unit registers and are never reused while it runs.
type UnitID uint32

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

// Stored reports whether the location points at stored bytes. Empty cells
// (a zero-length row) are stored with Unit set.
func (l CellLoc) Stored() bool { return l.Unit != 0 }

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
	Unit      UnitID
	Host      string // host identity (boot id) for same-host detection
	Addr      string // control address: "unix:///path" or "tcp://host:port"
	Transport string
	Handshake []byte
}
