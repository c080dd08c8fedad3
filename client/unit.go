package client

import (
	"context"
	"os"
	"strings"
	"sync"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// DataUnit is the client's handle on one storage unit's data plane: reserve
// extents and fill them, read cells under a lease, free cells. In one
// process it is the unit itself (see [LocalUnit]); across processes it is a
// transport connection (shm, tcp, rdma).
type DataUnit interface {
	ID() engine.UnitID
	// Host identifies the machine the unit runs on (its boot id), for
	// local-first placement.
	Host() string
	// Transport names how bytes move ("local", "shm", "tcp", "rdma").
	Transport() string
	Reserve(ctx context.Context, sizes []int64) (Reservation, error)
	Acquire(ctx context.Context, addrs []engine.RemoteAddr) (Lease, error)
	Free(ctx context.Context, cells []engine.RemoteAddr) error
}

// Reservation is extents reserved for one put: fill Buf(i), then Commit or
// Abort. Buf's memory belongs to the unit and is valid until then.
type Reservation interface {
	Len() int
	Buf(i int) []byte
	Addr(i int) engine.RemoteAddr
	Commit() error
	Abort()
}

// Lease keeps cells alive while a reader looks at them. Bytes(i) is a view
// of the i-th acquired range, valid until Release; it must not be written.
type Lease interface {
	Bytes(i int) []byte
	Release()
}

// LocalUnit adapts a storage unit in this process to [DataUnit].
func LocalUnit(u *storage.Unit) DataUnit { return localUnit{u} }

type localUnit struct{ u *storage.Unit }

var _ DataUnit = localUnit{}

func (l localUnit) ID() engine.UnitID { return l.u.ID() }
func (l localUnit) Host() string      { return HostID() }
func (l localUnit) Transport() string { return "local" }
func (l localUnit) Reserve(ctx context.Context, sizes []int64) (Reservation, error) {
	r, err := l.u.Reserve(ctx, sizes)
	if err != nil {
		return nil, err
	}
	return r, nil
}

func (l localUnit) Acquire(_ context.Context, addrs []engine.RemoteAddr) (Lease, error) {
	ls, err := l.u.Acquire(addrs)
	if err != nil {
		return nil, err
	}
	return ls, nil
}

func (l localUnit) Free(_ context.Context, cells []engine.RemoteAddr) error { return l.u.Free(cells) }

var hostOnce = sync.OnceValue(func() string {
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		return strings.TrimSpace(string(b))
	}
	h, _ := os.Hostname()
	return h
})

// HostID returns this machine's identity: the kernel's boot id, which two
// processes share exactly when they run on the same booted host.
func HostID() string { return hostOnce() }
