// Package storage is a storage unit's memory: an arena of memfd segments,
// an extent allocator, the commit protocol of a put, capacity accounting
// with back-pressure, and read leases.
//
// A put reserves one extent per column slice, fills it in place, and
// commits it; only then can anyone read it. The controller cuts committed
// extents into cells and frees each cell when its row is overwritten or
// cleared. A get leases the cells' ranges and reads views of the shared
// memory, with no copy, until it releases the lease:
//
//	u, err := storage.NewUnit(1, storage.DefaultConfig())
//	if err != nil { … }
//	defer u.Close()
//
//	r, err := u.Reserve(ctx, []int64{int64(len(col))}) // waits for space until ctx ends
//	if err != nil { … }                                 // engine.ErrCapacity when full
//	copy(r.Buf(0), col)
//	if err := r.Commit(); err != nil { … }              // engine.ErrInvalid after a timeout: the put failed
//	addr := r.Addr(0)                                   // engine.RemoteAddr{Segment, Offset, Len}
//
//	l, err := u.Acquire([]engine.RemoteAddr{addr})      // engine.ErrNotFound: the cells are lost
//	if err != nil { … }
//	use(l.Bytes(0))                                     // a view, valid until Release
//	l.Release()
//
//	err = u.Free([]engine.RemoteAddr{addr})             // cells overwritten or cleared
//
// Everything above works in one process; the segments are memfds so that
// a unit server can hand them to colocated clients by fd, and addresses
// are plain [engine.RemoteAddr] descriptors. A segment the unit drops (an
// empty one, as it grows) keeps its pages until every client that mapped
// it unmaps it, as transport/shm and the Python client do once the unit
// no longer names it (SHM_SEGMENTS).
//
// # On the network
//
// [Server] serves a unit with the framed protocol of package wire (ops
// WRITE, READ, FREE, UNIT_STATS): a WRITE's payload is read from the
// socket straight into reserved extents and committed, or aborted if the
// client goes away half-way; a READ's reply is written with writev
// straight from the leased arena. Clients use transport/tcp.
//
// A unit process joins a cluster in three steps: it creates the unit
// (which draws its incarnation) and asks the controller for an id
// ([AssignID]), serves it, then registers the unit's addresses and
// capacity under that id and keeps a heartbeat going ([Join]). The
// [Membership] reconnects and registers again whenever the controller
// connection drops, frees the cells the controller no longer references,
// and reconciles the unit's extents with the controller's cells:
//
//	ls, addrs := listen()                                  // bind first: clients may dial at once
//	u, err := storage.NewUnit(0, cfg)
//	id, err := storage.AssignID(ctx, ctrl, u, storage.JoinConfig{Token: tok})
//	srv := storage.NewServer(u, storage.ServerConfig{Token: tok})
//	go srv.Serve(ls[0])
//	m, err := storage.Join(ctx, ctrl, u, storage.JoinConfig{Token: tok, Addrs: addrs})
//	…
//	m.Close(); srv.Close(); u.Close()                      // in this order: the server uses the unit's memory
package storage
