// Package rdma is the data-plane transport between hosts with RDMA
// devices: ibverbs through cgo (the thin shim in csrc/), reliable-connected
// queue pairs, and one-sided RDMA READ and WRITE between the client's
// registered memory and a storage unit's arena, which the unit registers
// once per segment. The unit's CPU never touches the payload; only small
// control requests (reserve, commit, lease, release) go over the unit's
// framed connection.
//
//	tr := rdma.New(rdma.Config{Device: "mlx5_0", Token: token})
//	defer tr.Close()
//	conn, err := tr.Dial(ctx, engine.PeerInfo{Unit: id, Addr: "tcp://10.0.0.7:7401"})
//	if err != nil { … }                       // engine.ErrNotSupported: no device here, or the unit has none
//	addrs, err := conn.Write(ctx, [][][]byte{{col}}) // RESERVE, RDMA WRITE, RESERVE_COMMIT
//	err = conn.Read(ctx, addrs, [][]byte{dst})       // ACQUIRE, RDMA READ, RELEASE
//
// On the unit's side, a [Target] registers the arena and answers
// RDMA_CONNECT (storage.ServerConfig.RDMA = rdma.NewTarget(dev)).
//
// The verbs layer below (Device, MR, CQ, PreparedQP/QP) gives each verbs
// object one Go owner; the real one builds only with the build tag rdma
// (linux, cgo, libibverbs-dev), and every other build gets a stub whose
// constructors fail with an error wrapping engine.ErrNotSupported.
//
// Memory. Only memory outside the Go heap is registered: the unit's memfd
// segments, the transport's staging pool (Config.Staging, registered once
// when the device opens) and buffers a caller registers with
// [Transport.Register] (mmap'd or device memory it keeps for the
// transport's life). Bytes from or to any other buffer pass through the
// staging pool, one copy on this side; nothing is registered per request.
//
// Trust. A unit registers each arena segment once, whole, for remote
// read and write, and hands every segment's address and rkey to each
// client that passed the handshake (the cluster token, when the unit has
// one), in RDMA_CONNECT and RDMA_SEGMENTS. Through its queue pairs such a
// client can read and write any byte of any segment, at any time: RESERVE
// and ACQUIRE keep honest clients from each other's bytes, they do not
// stop a client that ignores them, as with shared memory (storage/shm.go).
// The unit's queue pairs live only as long as the client's authenticated
// connection, so a client that has gone can no longer use the keys it
// saw. A client's own memory is registered for local access only: a unit
// cannot read or write it. RDMA packets are not authenticated on the
// fabric: give the units a network (an InfiniBand partition, a RoCE VLAN)
// that only trusted hosts reach.
//
// Addressing. Queue pairs carry a global route header to the peer's GID,
// hop limit 64, from the port's GID at index $TQ_RDMA_GID_INDEX
// ([GIDIndexEnv]; 0 when unset, right for InfiniBand). On RoCE, entry 0
// is usually the RoCE v1 link-local GID: point it at the RoCE v2 entry of
// the address the hosts reach each other on, on clients and units alike.
//
// Testing without hardware. The emulated device emu0…emu3 (csrc/emu.c)
// implements the verbs with real semantics across processes of one host:
// the initiator does READ and WRITE alone through the target's shared
// memory, keys, access flags and bounds are checked, the QP state machine
// is enforced, and a dead peer produces retry-exceeded completions after
// the transport timeout. It is used only when named. Every failure is an
// [*engine.OpError] with Transport "rdma"; a verbs failure inside it is an
// [*Error] with the verb, the errno or the completion status.
package rdma
