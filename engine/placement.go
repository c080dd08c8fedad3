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

// PeerInfo describes how to reach a storage unit. Handshake is opaque,
// transport-specific data (shm: boot id and socket path; rdma: endpoint).
type PeerInfo struct {
	Unit      UnitID
	Host      string // host identity (boot id) for same-host detection
	Addr      string // control address: "unix:///path" or "tcp://host:port"
	Transport string
	Handshake []byte
}
