// Package shm is the data-plane transport for a storage unit on the same
// host: the unit hands its memfd segments over a unix socket (SCM_RIGHTS)
// and the client maps each one once, so bytes move with one copy — or
// none. Only small control requests (reserve, commit, acquire, release)
// go to the unit, over a shared-memory ring when the unit offers one
// (Config.Control; see ring.go) or else its unix socket; no payload goes
// over a socket (a ring's doorbell is one byte on it, sent only when the
// other side stopped spinning and parked).
//
// A unit drops an empty segment as it grows, but its pages go only with
// the last process that maps it: a Conn asks the unit for its live
// segments every 5 s, and at once after it maps a new one, and unmaps
// the ones it dropped. A segment a lease or reservation of the Conn still
// reaches stays mapped until that ends; Close unmaps them all.
//
//	tr := shm.New(shm.Config{Token: token})
//	defer tr.Close()
//	conn, err := tr.DialConn(ctx, engine.PeerInfo{Unit: id, Addr: "unix:///run/tq/unit-1.sock"})
//	if err != nil { … }                       // engine.ErrNotSupported: not a same-host unit
//	addrs, err := conn.Write(ctx, [][][]byte{{col}}) // one copy into shared memory
//
//	lease, err := conn.View(ctx, addrs)        // zero copy
//	use(lease.Bytes(0))                        // read-only; valid until Release
//	lease.Release()
//
//	r, err := conn.Reserve(ctx, []int64{n})    // zero copy put
//	fill(r.Buf(0))                             // valid until Commit or Abort
//	err = r.Commit(ctx)                        // or r.Abort(ctx); r.Addr(0) is readable after Commit
//
// Every failure is an [*engine.OpError] with Transport "shm" and the
// unit's address as Peer. Views are mapped PROT_READ: writing through one
// faults instead of corrupting the store.
package shm
