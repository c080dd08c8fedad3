package shmring

import (
	"fmt"
	"sync/atomic"

	"github.com/tqgo/tq/internal/invariants"
)

// bell is one direction's doorbell: the waiter sets sleep before it
// parks; the other side, after publishing its index, swaps sleep to 0 and,
// if it was set, sends the bell's id over the liveness socket (see
// Conn.ring). seq is unused since version 2 (it was the futex word).
type bell struct {
	sleep *atomic.Uint32
	id    byte // 0 ring 0 data, 1 ring 0 space, 2 ring 1 data, 3 ring 1 space
}

func bellAt(b []byte, off int, id byte) bell {
	return bell{sleep: u32At(b, off+4), id: id}
}

// ring is one direction of a channel. The producer side uses write and
// knows tail; the consumer side uses read and knows head. Each keeps its
// own index in a private copy and only loads the peer's.
type ring struct {
	tail, head  *atomic.Uint64
	data, space bell // data: the consumer waits; space: the producer waits
	buf         []byte
	size, mask  uint64
	mine        uint64 // this side's index: tail for the producer, head for the consumer
}

func ringAt(b []byte, r int, size int) ring {
	ctl := offRing0 + r*ringCtlLen
	data := HeaderSize + r*size
	return ring{
		tail:  u64At(b, ctl+offTail),
		head:  u64At(b, ctl+offHead),
		data:  bellAt(b, ctl+offData, byte(2*r)),
		space: bellAt(b, ctl+offSpace, byte(2*r+1)),
		buf:   b[data : data+size : data+size],
		size:  uint64(size),
		mask:  uint64(size - 1),
	}
}

// used returns the bytes in the ring, checking the peer's index.
func (r *ring) used(tail, head uint64) (uint64, error) {
	n := tail - head
	if n > r.size {
		return 0, fmt.Errorf("ring holds %d bytes of %d (tail %d, head %d): %w", n, r.size, tail, head, ErrCorrupt)
	}
	return n, nil
}

// write copies as much of p as fits and publishes it; it returns the
// bytes written (0 when the ring is full). Producer only.
func (r *ring) write(p []byte) (int, error) {
	head := r.head.Load() // once: the peer may move it at any time
	used, err := r.used(r.mine, head)
	if err != nil {
		return 0, err
	}
	n := min(uint64(len(p)), r.size-used)
	if n == 0 {
		return 0, nil
	}
	at := r.mine & r.mask
	k := copy(r.buf[at:], p[:n])
	copy(r.buf, p[k:n])
	r.mine += n
	r.tail.Store(r.mine)
	// Against the head checked above, not a fresh load: the peer may
	// have moved it since, which is its fault, not this code's.
	if invariants.Enabled && r.mine-head > r.size {
		panic(fmt.Sprintf("shmring: wrote past the head: tail %d, head %d, size %d", r.mine, head, r.size))
	}
	return int(n), nil
}

// readable reports whether the ring holds bytes. Consumer only.
func (r *ring) readable() bool { return r.tail.Load() != r.mine }

// writable reports whether the ring has space. Producer only.
func (r *ring) writable() bool { return r.mine-r.head.Load() != r.size }

// read copies up to len(p) bytes out and frees their space; it returns
// the bytes read (0 when the ring is empty). Consumer only.
func (r *ring) read(p []byte) (int, error) {
	used, err := r.used(r.tail.Load(), r.mine)
	if err != nil {
		return 0, err
	}
	n := min(uint64(len(p)), used)
	if n == 0 {
		return 0, nil
	}
	at := r.mine & r.mask
	k := copy(p[:n], r.buf[at:])
	copy(p[k:n], r.buf)
	r.mine += n
	r.head.Store(r.mine)
	return int(n), nil
}
