package storage

import (
	"sync/atomic"

	"github.com/tqgo/tq/wire"
)

// Transports a unit server counts column bytes by ([Server.DataBytes]).
// The unit cannot see a shared-memory or RDMA transfer itself; it counts
// the bytes of the extents a client committed (RESERVE_COMMIT) or leased
// (ACQUIRE), by the connection that asked: a unix socket or control ring
// is the same host (shared memory), any other connection RDMA.
const (
	TransportTCP  = "tcp"  // WRITE and READ payloads over TCP
	TransportUnix = "unix" // WRITE and READ payloads over a unix socket or control ring
	TransportShm  = "shm"  // extents committed or leased by a same-host client
	TransportRDMA = "rdma" // extents committed or leased by a remote client
)

var transports = [...]string{TransportTCP, TransportUnix, TransportShm, TransportRDMA}

// DataBytes is the column bytes one transport moved to (Written) and from
// (Read) a unit server since it started.
type DataBytes struct {
	Transport     string
	Written, Read int64
	Writes, Reads int64 // operations: WRITE or RESERVE_COMMIT; READ or ACQUIRE
}

// traffic counts column bytes by transport, with atomics: a handful of
// adds per request.
type traffic struct {
	c [len(transports)]struct {
		written, read, writes, reads atomic.Int64
	}
}

// DataBytes returns the column bytes moved by each transport, in a fixed
// order (tcp, unix, shm, rdma). Safe for concurrent use.
func (s *Server) DataBytes() []DataBytes {
	out := make([]DataBytes, len(transports))
	for i, name := range transports {
		c := &s.traffic.c[i]
		out[i] = DataBytes{Transport: name, Written: c.written.Load(), Read: c.read.Load(), Writes: c.writes.Load(), Reads: c.reads.Load()}
	}
	return out
}

// payloadIdx is the transport of a WRITE or READ payload on req's
// connection; extentIdx that of RESERVE_COMMIT and ACQUIRE.
func payloadIdx(req *wire.Request) int {
	if s, ok := req.Session.(*session); ok && s.unix {
		return 1
	}
	return 0
}

func extentIdx(req *wire.Request) int {
	if s, ok := req.Session.(*session); ok && s.unix {
		return 2
	}
	return 3
}

func (t *traffic) wrote(i int, n int64) {
	t.c[i].written.Add(n)
	t.c[i].writes.Add(1)
}

func (t *traffic) readBytes(i int, n int64) {
	t.c[i].read.Add(n)
	t.c[i].reads.Add(1)
}

// asked returns the bytes asked for in the reservation's extents.
func (r *Reservation) asked() int64 {
	var n int64
	for _, e := range r.exts {
		if e != nil {
			n += e.size
		}
	}
	return n
}
