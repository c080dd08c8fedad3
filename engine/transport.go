package engine

import "context"

// DataConn moves bytes between a client's memory and one storage unit's
// arena. Implementations: in-process, shm, tcp, rdma. A DataConn is safe
// for concurrent use.
type DataConn interface {
	// Write stores each extent — the concatenation of its pieces, read
	// straight from the caller's buffers — in a fresh extent of the unit
	// and commits it before returning one address per extent. The caller's
	// buffers are its own again when Write returns.
	Write(ctx context.Context, extents [][][]byte) ([]RemoteAddr, error)
	// Read copies each range's bytes into dst[i], whose length must equal
	// ranges[i].Len. A range the unit no longer holds is an error wrapping
	// ErrNotFound.
	Read(ctx context.Context, ranges []RemoteAddr, dst [][]byte) error
	// Free releases cells (see the storage package).
	Free(ctx context.Context, cells []RemoteAddr) error
	// Close releases the connection; calls waiting on it return ErrClosed.
	Close() error
}

// Transport dials storage units. Optional abilities (registering memory,
// handing out views) are separate interfaces found by type assertion.
type Transport interface {
	// Name is "tcp", "shm", "rdma", …
	Name() string
	// Dial connects to the unit described by peer.
	Dial(ctx context.Context, peer PeerInfo) (DataConn, error)
	// Close closes every connection the transport made.
	Close() error
}
