package shmring

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Network is the network name of a channel's addresses.
const Network = "shmring"

// DefaultSpin is how long a side with nothing to do spins before it parks
// until the peer rings its doorbell. Waking a sleeping process on another vCPU costs 5–30 µs
// on the reference VM; a peer that answers within the spin costs no
// system call on either side. A storage unit's round trip takes a few µs:
// with 3 µs the client mostly slept (UNIT_STATS p50 27 µs), with 10 µs it
// mostly did not (2.6 µs), and longer spins bought no better median (see
// transport/shm/ring.go for the numbers).
const DefaultSpin = 10 * time.Microsecond

// Config tunes a [Conn]. The zero value means the defaults.
type Config struct {
	// Spin is how long a blocked read or write spins before it sleeps
	// (0: DefaultSpin; negative: not at all).
	Spin time.Duration
}

// Addr is a channel's address under [Network]: the liveness socket's,
// and for the remote end the peer's pid as well (see [Conn.RemoteAddr]).
type Addr string

// Network returns [Network].
func (Addr) Network() string { return Network }

func (a Addr) String() string { return string(a) }

// Local state bits.
const (
	stClosed  = 1 << iota // Close was called
	stGone                // the liveness socket broke: the peer is gone
	stCorrupt             // the peer's index was impossible
	stDeaf                // the peer left its doorbells unread until the socket filled
)

// Conn is one side of a channel, as a [net.Conn]. It is safe for
// concurrent use: reads are serialized with each other, and so are
// writes, so a Write's bytes are never interleaved with another's. Read
// and Write copy; the caller's buffers are its own again when they
// return. Deadlines are supported; an expired one fails a blocked call
// with an error wrapping [os.ErrDeadlineExceeded].
type Conn struct {
	in, out  ring
	closedW  *atomic.Uint32 // shared: the sides' closed bits
	myBit    uint32
	peerBit  uint32
	spin     time.Duration
	link     net.Conn     // the liveness socket; nil in tests
	release  func() error // unmaps the region; run by Close
	addr     Addr
	raddr    Addr          // addr's path (or the socket's peer's) and the peer's pid
	state    atomic.Uint32 // st* bits
	rdl, wdl atomic.Int64  // deadlines in Unix ns, 0: none
	watchOut chan struct{} // closed when the link watcher exits

	// raw is link's fd (nil for a link without one). bellFns write bell
	// i's byte on it without blocking, leaving the error in bellErrs[i]:
	// built once, so that ringing allocates nothing. A bell is rung by
	// one goroutine at a time (under rmu or wmu).
	raw      syscall.RawConn
	bellFns  [4]func(fd uintptr) bool
	bellErrs [4]error

	rmu, wmu sync.Mutex // one reader, one writer at a time

	// wake holds a token for this side's sleeper on each bell (by bell
	// id): the watcher puts one there when the peer rings, and so do
	// local events (deadline changes, Close, corruption).
	wake [4]chan struct{}

	mu        sync.Mutex
	closed    bool
	ops       sync.WaitGroup // reads and writes touching the region; Close waits
	closeOnce sync.Once
	closeErr  error
}

var _ net.Conn = (*Conn)(nil)

// NewConn returns side's end of the channel in b, a region formatted with
// [Format] (by whichever side created it; the creator must call NewConn
// before the peer can touch the region, so that the ring size it reads is
// its own). The Conn owns link and release: it reads link until EOF — the
// peer is gone — and closes it on Close, then runs release (unmap b) once
// no call touches b any more. link and release may be nil.
func NewConn(b []byte, side Side, link net.Conn, release func() error, cfg Config) (*Conn, error) {
	size, err := check(b)
	if err != nil {
		return nil, err
	}
	if side != SideA && side != SideB {
		return nil, fmt.Errorf("side %d: %w", side, ErrCorrupt)
	}
	c := &Conn{
		closedW:  u32At(b, offClosed),
		myBit:    1 << side,
		peerBit:  1 << (1 - side),
		spin:     cfg.Spin,
		link:     link,
		release:  release,
		addr:     Network,
		raddr:    Network,
		watchOut: make(chan struct{}),
	}
	for i := range c.wake {
		c.wake[i] = make(chan struct{}, 1)
	}
	if c.spin == 0 {
		c.spin = DefaultSpin
	}
	r0, r1 := ringAt(b, 0, size), ringAt(b, 1, size)
	if side == SideA {
		c.in, c.out = r1, r0
	} else {
		c.in, c.out = r0, r1
	}
	// Pick up where the indices are (0 on a fresh region).
	c.in.mine = c.in.head.Load()
	c.out.mine = c.out.tail.Load()
	if link != nil {
		local := addrName(link.LocalAddr())
		c.addr = Addr(local)
		remote := addrName(link.RemoteAddr())
		if remote == "" {
			remote = local // a unit's end: the client's has no name
		}
		if sc, ok := link.(syscall.Conn); ok {
			if c.raw, err = sc.SyscallConn(); err != nil {
				return nil, fmt.Errorf("liveness socket: %w", err)
			}
			if pid := peerPid(c.raw); pid > 0 {
				remote = strings.TrimSpace(fmt.Sprintf("%s pid %d", remote, pid))
			}
			for i := range c.bellFns {
				c.bellFns[i] = func(fd uintptr) bool {
					for {
						_, err := unix.Write(int(fd), bellIDs[i:i+1])
						if err != unix.EINTR {
							c.bellErrs[i] = err
							return true // never wait for room
						}
					}
				}
			}
		}
		c.raddr = Addr(remote)
		go c.watch()
	} else {
		close(c.watchOut)
	}
	return c, nil
}

// addrName returns a's name, or "" for none (an unnamed unix socket's
// end, which Go names "@").
func addrName(a net.Addr) string {
	if a == nil {
		return ""
	}
	if s := a.String(); s != "@" {
		return s
	}
	return ""
}

// peerPid returns the pid of the process at the other end of raw, a unix
// socket, as the kernel recorded it when the socket was connected
// (SO_PEERCRED); 0 when it will not say.
func peerPid(raw syscall.RawConn) int32 {
	var pid int32
	raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			pid = cred.Pid
		}
	})
	return pid
}

// watch reads the liveness socket until it breaks, then marks the channel
// gone and wakes every sleeper of this process. Each byte the peer sends
// is a doorbell: the id of the bell whose sleeper it wakes.
func (c *Conn) watch() {
	defer close(c.watchOut)
	var buf [64]byte
	for {
		n, err := c.link.Read(buf[:])
		for _, id := range buf[:n] {
			if int(id) < len(c.wake) {
				c.notify(id)
			}
		}
		if err != nil {
			break
		}
	}
	c.state.Or(stGone)
	c.wakeAll()
}

// notify wakes this process's sleeper on bell id, or the next one to
// sleep there (which then looks again and finds nothing new).
func (c *Conn) notify(id byte) {
	select {
	case c.wake[id] <- struct{}{}:
	default:
	}
}

// wakeAll wakes every sleeper of this process.
func (c *Conn) wakeAll() {
	for id := range c.wake {
		c.notify(byte(id))
	}
}

// ring wakes the peer's waiter on b if it said it sleeps. The load keeps
// the common case (nobody asleep) to one read of a line the waiter rarely
// writes; otherwise it costs one write of one byte on the liveness socket,
// which the peer's watcher reads through Go's netpoller. (A FUTEX_WAKE was
// cheaper per wake, but the FUTEX_WAIT on the other end held a P in a
// system call: with 16 clients, small KV ops ran at a third of the
// socket's rate.)
//
// The write never blocks: a peer that keeps a sleep word set and never
// reads its end of the socket would otherwise fill the socket's buffer
// (a few hundred one-byte writes) and then hold this side's Read or Write
// in the write past every deadline. A full buffer means a broken peer
// (one whose watcher reads the socket leaves a few doorbells unread at
// most) and fails the channel with an error wrapping [ErrCorrupt].
func (c *Conn) ring(b *bell) {
	if b.sleep.Load() == 0 || b.sleep.Swap(0) == 0 || c.link == nil {
		return
	}
	if c.raw == nil {
		c.link.Write(bellIDs[b.id : b.id+1]) // a link without an fd (tests)
		return
	}
	// Other failures mean the peer is gone; the watcher sees it.
	if c.raw.Write(c.bellFns[b.id]) == nil && c.bellErrs[b.id] == unix.EAGAIN {
		c.state.Or(stDeaf)
		c.wakeAll()
	}
}

// bellIDs are the doorbell bytes, sliced from here so that ringing
// allocates nothing.
var bellIDs = []byte{0, 1, 2, 3}

func (c *Conn) enter() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errClosed
	}
	c.ops.Add(1)
	return nil
}

var errClosed = fmt.Errorf("shmring: %w", net.ErrClosed)

// Read reads what the peer wrote, up to len(p) bytes, waiting while there
// is nothing. After the peer closed it returns what is left, then io.EOF;
// after the peer died, what is left, then an error wrapping
// [ErrPeerGone]; after Close, an error wrapping [net.ErrClosed]. A ring
// found corrupt fails with an error wrapping [ErrCorrupt] instead, whether
// or not the peer is still there.
func (c *Conn) Read(p []byte) (int, error) {
	if err := c.enter(); err != nil {
		return 0, err
	}
	defer c.ops.Done()
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if c.state.Load()&stDeaf != 0 {
			return 0, c.stopErr(true)
		}
		n, err := c.in.read(p)
		if err != nil {
			return 0, c.corrupt(err)
		}
		if n > 0 {
			c.ring(&c.in.space)
			return n, nil
		}
		if err := c.stopErr(true); err != nil {
			if h := testHookDrain; h != nil {
				h()
			}
			// Bytes published before the stop are still owed. A ring
			// found corrupt on the way says more than the stop: the
			// peer scribbled on it before it closed or died.
			n, rerr := c.in.read(p)
			if rerr != nil {
				return 0, c.corrupt(rerr)
			}
			if n > 0 {
				c.ring(&c.in.space)
				return n, nil
			}
			return 0, err
		}
		if err := c.wait(&c.in.data, &c.rdl, true); err != nil {
			return 0, err
		}
	}
}

// Write writes all of p, waiting for space while the ring is full. It
// fails with an error wrapping [ErrPeerClosed] or [ErrPeerGone] once the
// peer closed or died, and [net.ErrClosed] after Close; a Write that
// put all of p in the ring returns len(p) and nil, whatever the peer did
// meanwhile.
func (c *Conn) Write(p []byte) (int, error) {
	if err := c.enter(); err != nil {
		return 0, err
	}
	defer c.ops.Done()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	total := 0
	for {
		if err := c.stopErr(false); err != nil {
			return total, err
		}
		if len(p) == 0 {
			return total, nil
		}
		n, err := c.out.write(p)
		if err != nil {
			return total, c.corrupt(err)
		}
		if n > 0 {
			c.ring(&c.out.data)
			total += n
			if p = p[n:]; len(p) == 0 {
				// All of p is in the ring: a stop seen now (the peer
				// closing after the last chunk) fails no byte of it.
				return total, nil
			}
			continue
		}
		if err := c.wait(&c.out.space, &c.wdl, false); err != nil {
			return total, err
		}
	}
}

func (c *Conn) corrupt(err error) error {
	c.state.Or(stCorrupt)
	c.wakeAll()
	return err
}

// stopErr returns why the channel can no longer move bytes, or nil.
func (c *Conn) stopErr(read bool) error {
	st := c.state.Load()
	switch {
	case st&stClosed != 0:
		return errClosed
	case st&stCorrupt != 0:
		return fmt.Errorf("peer's index out of range: %w", ErrCorrupt)
	case st&stDeaf != 0:
		return fmt.Errorf("peer reads none of its doorbells (liveness socket full): %w", ErrCorrupt)
	case c.closedW.Load()&c.peerBit != 0:
		if read {
			return io.EOF
		}
		return ErrPeerClosed
	case st&stGone != 0:
		return ErrPeerGone
	}
	return nil
}

func (c *Conn) ready(read bool) bool {
	if c.state.Load() != 0 || c.closedW.Load()&c.peerBit != 0 {
		return true
	}
	if read {
		return c.in.readable()
	}
	return c.out.writable()
}

// wait returns once the ring may be readable (read) or writable, the
// channel stopped, or the deadline in dl passed (an error). It spins for
// c.spin (see trySpin), then sleeps on b.
func (c *Conn) wait(b *bell, dl *atomic.Int64, read bool) error {
	if c.spin > 0 && c.trySpin(read) {
		return nil
	}
	return c.sleepWait(b, dl, read)
}

// spinners counts the waits spinning in this process. Past maxSpinners
// a wait sleeps at once: with many rings (a unit serving 16 clients)
// spinners would only take turns burning the cores the peers need, which
// measured at half the socket's throughput before this bound.
var spinners atomic.Int32

// maxSpinners lets half the process's Ps spin, at least one.
func maxSpinners() int32 { return int32(max(1, runtime.GOMAXPROCS(0)/2)) }

// trySpin spins up to c.spin for the ring to become ready, when fewer
// than maxSpinners waits spin already, and reports whether it became
// ready.
func (c *Conn) trySpin(read bool) bool {
	defer spinners.Add(-1)
	if spinners.Add(1) > maxSpinners() {
		return false
	}
	// A goroutine this one just woke (the caller whose reply it read) runs
	// here first, instead of waiting for another thread.
	runtime.Gosched()
	start := time.Now()
	for i := 1; ; i++ {
		if c.ready(read) {
			return true
		}
		if i%64 == 0 {
			if time.Since(start) > c.spin {
				return false
			}
			runtime.Gosched() // let this process's other goroutines run
		}
	}
}

// sleepWait parks until the ring may be ready, the deadline in dl
// passes, or the channel stops. Without a liveness socket (tests) nobody
// rings, and it looks again every pollEvery.
func (c *Conn) sleepWait(b *bell, dl *atomic.Int64, read bool) error {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		b.sleep.Store(1)
		if c.ready(read) {
			b.sleep.Store(0)
			return nil
		}
		var d time.Duration
		if t := dl.Load(); t != 0 {
			if d = time.Until(time.Unix(0, t)); d <= 0 {
				b.sleep.Store(0)
				return os.ErrDeadlineExceeded
			}
		}
		if c.link == nil && (d == 0 || d > pollEvery) {
			d = pollEvery
		}
		var expired <-chan time.Time
		if d > 0 {
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			expired = timer.C
		}
		select {
		case <-c.wake[b.id]:
		case <-expired:
		}
		b.sleep.Store(0)
		if c.ready(read) {
			return nil
		}
	}
}

// testHookDrain, if set, runs in Read between finding the ring empty and
// the channel stopped and draining the ring once more: tests act there
// as a peer that scribbles on the ring as it goes.
var testHookDrain func()

// pollEvery is how often a Conn without a liveness socket looks at its
// rings while it waits.
const pollEvery = 50 * time.Microsecond

// Close marks this side closed — the peer reads what is left, then EOF —
// wakes every sleeper of both sides, closes the liveness socket, waits for
// calls in flight to return and unmaps the region. It is idempotent.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.state.Or(stClosed)
		c.closedW.Or(c.myBit)
		c.wakeAll()
		var errs []error
		if c.link != nil {
			if err := c.link.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, fmt.Errorf("close liveness socket: %w", err))
			}
		}
		<-c.watchOut
		c.ops.Wait()
		if c.release != nil {
			errs = append(errs, c.release())
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// Link returns the liveness socket NewConn was given (nil if none), for
// asking the kernel about the peer (SO_PEERCRED); the Conn owns it, so
// the caller must neither read, write nor close it.
func (c *Conn) Link() net.Conn { return c.link }

// LocalAddr returns the liveness socket's local address under [Network].
func (c *Conn) LocalAddr() net.Addr { return c.addr }

// RemoteAddr names the peer: the liveness socket's path (on a storage
// unit, which accepted it, the unit's own socket's, as LocalAddr) and the
// peer's pid as the kernel knows it (SO_PEERCRED), as in
// "/run/tq/unit.sock pid 1234", so that a unit's logs about a client say
// which process it is. It is computed once, by NewConn.
func (c *Conn) RemoteAddr() net.Addr { return c.raddr }

// SetDeadline sets both deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	return errors.Join(c.SetReadDeadline(t), c.SetWriteDeadline(t))
}

// SetReadDeadline sets the read deadline (zero: none) and wakes a
// sleeping reader so that it looks at it.
func (c *Conn) SetReadDeadline(t time.Time) error {
	return c.setDeadline(&c.rdl, t, &c.in.data)
}

// SetWriteDeadline sets the write deadline (zero: none) and wakes a
// writer sleeping on a full ring so that it looks at it.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	return c.setDeadline(&c.wdl, t, &c.out.space)
}

func (c *Conn) setDeadline(dl *atomic.Int64, t time.Time, b *bell) error {
	if err := c.enter(); err != nil {
		return err // the region may be unmapped
	}
	defer c.ops.Done()
	var ns int64
	if !t.IsZero() {
		ns = max(t.UnixNano(), 1)
	}
	dl.Store(ns)
	// Wake the sleeper whether or not its sleep word is set: the word is
	// in the shared region, and a peer that clears it must not keep this
	// side parked past its own deadline. A sleeper that finds the token
	// with nothing to do looks once more and parks again.
	c.notify(b.id)
	return nil
}
