package embedded

import (
	"context"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// Unit adapts a storage unit in this process to [client.DataUnit]: writes
// copy once into the arena, reads are views.
func Unit(u *storage.Unit) client.DataUnit { return localUnit{u} }

type localUnit struct{ u *storage.Unit }

var _ client.DataUnit = localUnit{}

func (l localUnit) ID() engine.UnitID { return l.u.ID() }
func (l localUnit) Host() string      { return client.HostID() }
func (l localUnit) Transport() string { return "local" }

func (l localUnit) Write(ctx context.Context, extents [][][]byte) ([]engine.RemoteAddr, error) {
	return WriteReserved(ctx, l.u, extents)
}

// WriteReserved writes extents into a storage unit in this process:
// reserve, copy each extent's pieces in, commit.
func WriteReserved(ctx context.Context, u *storage.Unit, extents [][][]byte) ([]engine.RemoteAddr, error) {
	sizes := make([]int64, len(extents))
	for i, pieces := range extents {
		for _, p := range pieces {
			sizes[i] += int64(len(p))
		}
	}
	r, err := u.Reserve(ctx, sizes)
	if err != nil {
		return nil, err
	}
	addrs := make([]engine.RemoteAddr, len(extents))
	for i, pieces := range extents {
		buf := r.Buf(i)
		at := 0
		for _, p := range pieces {
			at += copy(buf[at:], p)
		}
		addrs[i] = r.Addr(i)
	}
	if err := r.Commit(); err != nil {
		r.Abort()
		return nil, err
	}
	return addrs, nil
}

func (l localUnit) Acquire(_ context.Context, addrs []engine.RemoteAddr) (client.Lease, error) {
	ls, err := l.u.Acquire(addrs)
	if err != nil {
		return nil, err
	}
	return ls, nil
}

func (l localUnit) ReadInto(_ context.Context, addrs []engine.RemoteAddr, dst [][]byte) error {
	ls, err := l.u.Acquire(addrs)
	if err != nil {
		return err
	}
	defer ls.Release()
	for i := range addrs {
		copy(dst[i], ls.Bytes(i))
	}
	return nil
}

func (l localUnit) Free(_ context.Context, cells []engine.RemoteAddr) error { return l.u.Free(cells) }

// Room reports the unit's capacity and used bytes, for the client's
// placement (a unit in this process answers without a round trip).
func (l localUnit) Room() (capacity, used int64) {
	st := l.u.Stats()
	return st.Capacity, st.Used
}

var _ client.Reserver = localUnit{}

// ReserveExtents reserves extents in the unit's arena. The caller fills
// them for as long as it takes (a [client.PutBuffer] may be written until
// Commit or Abort), so they are held (see [storage.Unit.ReserveHeld]): a
// fill slower than the unit's reserve timeout makes the reservation fail
// to commit but never writes into extents given to another put, as over
// shared memory.
func (l localUnit) ReserveExtents(ctx context.Context, sizes []int64) (client.Reserved, error) {
	r, err := l.u.ReserveHeld(ctx, sizes)
	if err != nil {
		return nil, err
	}
	return localReserved{r}, nil
}

// localReserved adapts a [storage.Reservation] to [client.Reserved].
type localReserved struct{ r *storage.Reservation }

func (l localReserved) Buf(i int) []byte               { return l.r.Buf(i) }
func (l localReserved) Addr(i int) engine.RemoteAddr   { return l.r.Addr(i) }
func (l localReserved) Commit(_ context.Context) error { return l.r.Commit() }
func (l localReserved) Abort(_ context.Context) error  { l.r.Abort(); return nil }
