// Package shmring is a byte-stream channel between two processes on one
// host through shared memory: two single-producer, single-consumer byte
// rings in one memfd, one per direction, exposed as a [net.Conn] so that a
// framed protocol (package wire) runs over it unchanged. The storage unit
// and its same-host clients (transport/shm) use it for their control
// requests instead of a unix socket.
//
// Layout of the shared region (offsets in bytes; integers are in the
// host's byte order, atomics 8-byte aligned; every word a side writes
// often sits on a 128-byte line of its own, so the two processes never
// write the same cache line on the hot path):
//
//	0      "TQR1" | version u32 (2) | ring size u32 (bytes per direction)
//	64     closed u32: bit 0 side A (client) closed, bit 1 side B (unit)
//	256    ring 0 (A→B) control:
//	         +0    tail u64        bytes ever written (producer)
//	         +128  head u64        bytes ever read (consumer)
//	         +256  (unused u32) | data sleep u32    consumer waits here
//	         +384  (unused u32) | space sleep u32  producer waits here
//	768    ring 1 (B→A) control, the same
//	4096   ring 0 data, ring size bytes (a power of two)
//	4096+size  ring 1 data
//
// A ring holds bytes [head, tail) at offsets modulo its size. The
// producer copies into the free space and publishes with one store of
// tail; the consumer copies out and publishes with one store of head.
// Each side keeps its own index privately and only reads the peer's, and
// checks it (tail-head never exceeds the size), so a peer that scribbles
// on the region can garble its own stream but not make this side read or
// write outside the ring.
//
// Waiting. A side with nothing to read (or no space to write) spins for a
// bounded time ([Config.Spin], a few µs; the peer usually answers within
// it), then parks. Before it parks it sets the bell's sleep word and
// checks once more; the other side, after publishing its index, rings the
// bell only when the sleep word is set: it swaps it to 0 and writes the
// bell's id, one byte, on the liveness socket, without blocking (a
// socket too full to take it means the peer stopped reading its
// doorbells: the channel fails with [ErrCorrupt]). Both steps are
// sequentially consistent atomics, so either the sleeper sees the new
// index or the publisher sees the sleeper: no wake-up is lost and an
// uncontended publish costs no system call. The sleeper parks on a
// channel that its side's socket reader fills, so a parked side holds no
// thread: the wait is Go's netpoller's, as for any socket. (Version 1
// slept in FUTEX_WAIT, which kept a P in a system call per sleeping side;
// with 16 clients on 2 cores that cost two thirds of the throughput.)
//
// Liveness. The channel is set up over a unix socket (the memfd travels
// as SCM_RIGHTS) that stays open while the channel lives. Each side reads
// it on a goroutine of its own (dispatching doorbells); EOF means the peer is gone — closed, or
// killed with SIGKILL — and the side marks the channel broken and wakes
// its own sleepers, so blocked calls return [ErrPeerGone] at once. A
// clean [Conn.Close] also sets the side's closed bit and wakes the peer's
// sleepers: the peer reads what is left, then io.EOF.
//
// Usage (see storage/shm.go and transport/shm for the real setup):
//
//	fd, mem, err := shmring.Create(64 << 10)    // one side
//	c, err := shmring.NewConn(mem, shmring.SideB, link, unmap, shmring.Config{})
//	… send fd over link with SCM_RIGHTS, close it …
//	mem, err := shmring.Map(fd)                 // the other side
//	c, err := shmring.NewConn(mem, shmring.SideA, link, unmap, shmring.Config{})
//	wc := wire.NewConn(c, wire.ConnConfig{})
package shmring
