package client

import (
	"context"
	"fmt"
	"math"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/hostid"
	"github.com/tqgo/tq/transport/shm"
)

// DataUnit is the client's handle on one storage unit's data plane: write
// extents, read cells under a lease, free cells. In one process it is the
// unit itself (see [github.com/tqgo/tq/embedded.Unit]); across processes
// it wraps an [engine.DataConn] (see [RemoteUnit]).
type DataUnit interface {
	ID() engine.UnitID
	// Host identifies the machine the unit runs on (its boot id), for
	// local-first placement.
	Host() string
	// Transport names how bytes move ("local", "tcp", "shm", "rdma").
	Transport() string
	// Write stores each extent — the concatenation of its pieces — in a
	// new committed extent and returns one address per extent.
	Write(ctx context.Context, extents [][][]byte) ([]engine.RemoteAddr, error)
	Acquire(ctx context.Context, addrs []engine.RemoteAddr) (Lease, error)
	// ReadInto copies each range into dst[i] (len(dst[i]) == addrs[i].Len).
	ReadInto(ctx context.Context, addrs []engine.RemoteAddr, dst [][]byte) error
	Free(ctx context.Context, cells []engine.RemoteAddr) error
}

// Lease keeps cells alive while a reader looks at them. Bytes(i) is a view
// of the i-th acquired range, valid until Release; it must not be written.
type Lease interface {
	Bytes(i int) []byte
	Release()
}

// RemoteUnit adapts a data connection to a unit in another process to
// [DataUnit]: reads copy into client memory, so a lease is just the
// buffers.
func RemoteUnit(id engine.UnitID, host, transport string, conn engine.DataConn) DataUnit {
	return remoteUnit{id: id, host: host, transport: transport, conn: conn}
}

type remoteUnit struct {
	id        engine.UnitID
	host      string
	transport string
	conn      engine.DataConn
}

func (r remoteUnit) ID() engine.UnitID { return r.id }
func (r remoteUnit) Host() string      { return r.host }
func (r remoteUnit) Transport() string { return r.transport }

func (r remoteUnit) Write(ctx context.Context, extents [][][]byte) ([]engine.RemoteAddr, error) {
	return r.conn.Write(ctx, extents)
}

func (r remoteUnit) Acquire(ctx context.Context, addrs []engine.RemoteAddr) (Lease, error) {
	return readOwned(ctx, addrs, r.conn.Read)
}

// readOwned reads addrs with read into one fresh buffer, as a lease that
// pins nothing.
func readOwned(ctx context.Context, addrs []engine.RemoteAddr, read func(context.Context, []engine.RemoteAddr, [][]byte) error) (*ownedLease, error) {
	l := &ownedLease{offs: make([]uint64, len(addrs)+1)}
	for i, a := range addrs {
		l.offs[i+1] = l.offs[i] + a.Len
		if l.offs[i+1] < l.offs[i] || l.offs[i+1] > math.MaxInt {
			// No unit holds these: their lengths add up past what one
			// buffer can hold (wrapping around, the buffer would be
			// too short for them).
			return nil, fmt.Errorf("read of %d cells of %d bytes and more: %w", len(addrs), l.offs[i], engine.ErrCorrupt)
		}
	}
	l.mem = make([]byte, l.offs[len(addrs)])
	dst := make([][]byte, len(addrs))
	for i := range addrs {
		dst[i] = l.Bytes(i)
	}
	if err := read(ctx, addrs, dst); err != nil {
		return nil, err
	}
	return l, nil
}

func (r remoteUnit) ReadInto(ctx context.Context, addrs []engine.RemoteAddr, dst [][]byte) error {
	return r.conn.Read(ctx, addrs, dst)
}

func (r remoteUnit) Free(ctx context.Context, cells []engine.RemoteAddr) error {
	return r.conn.Free(ctx, cells)
}

// ShmUnit adapts a shared-memory connection to a unit on this host to
// [DataUnit]: writes copy once into the unit's memory, and Acquire returns
// the shm lease itself, whose views are the unit's memory mapped
// read-only in this process, so [Client.GetView] and kvapi's BatchGetView
// copy nothing across processes. Such views are valid until released and
// never after the connection (the client) closes, which unmaps them.
func ShmUnit(id engine.UnitID, host string, conn *shm.Conn) DataUnit {
	return shmUnit{id: id, host: host, conn: conn}
}

type shmUnit struct {
	id   engine.UnitID
	host string
	conn *shm.Conn
}

var _ DataUnit = shmUnit{}

// broken reports a connection that ended: an shm Conn does not dial
// again by itself (see redialUnit).
func (s shmUnit) broken() bool { return s.conn.Gone() }

func (s shmUnit) ID() engine.UnitID { return s.id }
func (s shmUnit) Host() string      { return s.host }
func (s shmUnit) Transport() string { return "shm" }

func (s shmUnit) Write(ctx context.Context, extents [][][]byte) ([]engine.RemoteAddr, error) {
	return s.conn.Write(ctx, extents)
}

func (s shmUnit) Acquire(ctx context.Context, addrs []engine.RemoteAddr) (Lease, error) {
	l, err := s.conn.View(ctx, addrs)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Inline reports whether a read of n bytes comes in the unit's answer
// (see [shm.InlineMax]).
func (s shmUnit) Inline(n uint64) bool { return s.conn.Inline(n) }

func (s shmUnit) ReadInto(ctx context.Context, addrs []engine.RemoteAddr, dst [][]byte) error {
	return s.conn.Read(ctx, addrs, dst)
}

func (s shmUnit) Free(ctx context.Context, cells []engine.RemoteAddr) error {
	return s.conn.Free(ctx, cells)
}

// ownedLease holds ranges already copied into one client-owned buffer,
// back to back in request order. Nothing is pinned on the unit, so its
// bytes may be handed to the caller as they are.
type ownedLease struct {
	mem  []byte
	offs []uint64
}

func (l *ownedLease) Bytes(i int) []byte {
	return l.mem[l.offs[i]:l.offs[i+1]:l.offs[i+1]]
}

func (l *ownedLease) Release() {}

// Span returns ranges [lo, hi) as one slice of the caller-owned buffer.
func (l *ownedLease) Span(lo, hi int) []byte { return l.mem[l.offs[lo]:l.offs[hi]:l.offs[hi]] }

// owned is a lease whose bytes belong to the caller already (copied out of
// the unit): a get hands them over instead of copying again.
type owned interface {
	Span(lo, hi int) []byte
}

// HostID returns this machine's identity: the kernel's boot id, which two
// processes share exactly when they run on the same booted host.
func HostID() string { return hostid.ID() }

// Reserver is implemented by data units that let a put fill the unit's
// memory in place instead of handing it bytes to copy (see
// [Client.ReservePut]): the in-process unit
// ([github.com/tqgo/tq/embedded.Unit]) and the shared-memory unit
// ([ShmUnit]). Units reached over tcp do not implement it.
type Reserver interface {
	// ReserveExtents reserves one extent per size on the unit. The caller
	// fills them through [Reserved.Buf] and then commits or aborts.
	ReserveExtents(ctx context.Context, sizes []int64) (Reserved, error)
}

// Reserved is a reservation of extents on a storage unit. The unit owns
// the memory: Buf(i) is the writable bytes of extent i, exactly as many as
// were asked for, valid until Commit or Abort; writing through it
// afterwards corrupts the store. A reservation that outlives the unit's
// reserve timeout can no longer commit, but the unit keeps its extents
// until it is ended, so a slow filler never writes into memory given to
// another put. Addr(i) is the address of extent i, readable once committed. A failed
// Commit leaves the extents given back or to be given back by Abort; Abort
// does nothing after Commit or a first Abort.
type Reserved interface {
	Buf(i int) []byte
	Addr(i int) engine.RemoteAddr
	Commit(ctx context.Context) error
	Abort(ctx context.Context) error
}

var (
	_ Reserver = shmUnit{}
	_ Reserved = (*shm.Reservation)(nil)
)

// ReserveExtents reserves extents on the unit and maps them writable in
// this process (see [shm.Conn.Reserve]); they are unmapped when the
// connection closes.
func (s shmUnit) ReserveExtents(ctx context.Context, sizes []int64) (Reserved, error) {
	r, err := s.conn.Reserve(ctx, sizes)
	if err != nil {
		return nil, err
	}
	return r, nil
}
