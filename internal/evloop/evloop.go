// Package evloop is the plumbing of the event loops that serve small
// requests without a goroutine per connection (the Redis-protocol
// endpoint's and the wire server's): an epoll set with a wake-up, sockets
// taken from and given back to Go's poller, and reads and writes that go
// straight to the kernel.
//
// A loop serves a socket through a duplicate of its descriptor, taken with
// [Take] (which closes the net.Conn, so Go's poller stops watching it:
// with both watching, every request would also wake the scheduler's
// poller for nothing). [Give] turns the descriptor back into a net.Conn
// for a goroutine to serve.
package evloop

import (
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Poller is an epoll set, level-triggered, with an eventfd that [Poller.Poke]
// uses to wake [Poller.Wait]. Wait is for one goroutine; Add, Del and Poke
// may be called from any.
//
// Wait looks at the set without blocking and, when nothing is there,
// waits in Go's own poller, which watches the set like a socket (an epoll
// descriptor is readable while it has events). Blocking in epoll_wait
// instead kept a thread asleep in the kernel: every request had to wake
// it on another CPU, and its reply to wake the client's, where a
// goroutine that Go's poller wakes runs on the thread that found it ready,
// often the client's own. One sequential caller saw a round trip twice as
// long on average (BenchmarkRoundTrip in package wire, handler=loop).
type Poller struct {
	ep, wake int
	f        *os.File // ep, in Go's poller
	rc       syscall.RawConn
	deadline time.Time // f's read deadline, if set
	events   []unix.EpollEvent
	ready    []int
	// look is Wait's callback for rc.Read, made once (a closure per wait
	// was an allocation per pass of a loop that found nothing ready), and
	// n, err what its last call of epoll_wait returned.
	look func(uintptr) bool
	n    int
	err  error
	// closeMu orders Poke against Close: a Poke after Close would write
	// into whatever file has taken the eventfd's number since.
	closeMu sync.RWMutex
	closed  bool
}

// NewPoller returns a Poller, or the system's refusal.
func NewPoller() (*Poller, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(ep)
		return nil, os.NewSyscallError("eventfd", err)
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(ep)
		unix.Close(wake)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	// Non-blocking, so that os.NewFile hands it to Go's poller.
	if err := unix.SetNonblock(ep, true); err != nil {
		unix.Close(ep)
		unix.Close(wake)
		return nil, os.NewSyscallError("fcntl", err)
	}
	f := os.NewFile(uintptr(ep), "epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		unix.Close(wake)
		return nil, err
	}
	p := &Poller{ep: ep, wake: wake, f: f, rc: rc, events: make([]unix.EpollEvent, 128)}
	p.look = func(uintptr) bool {
		p.n, p.err = rawEpollWait(p.ep, p.events)
		return p.n > 0 || p.err != nil && p.err != unix.EINTR
	}
	return p, nil
}

// Add watches fd for input (and for the peer closing).
func (p *Poller) Add(fd int) error {
	if err := unix.EpollCtl(p.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)}); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// Del stops watching fd.
func (p *Poller) Del(fd int) { unix.EpollCtl(p.ep, unix.EPOLL_CTL_DEL, fd, nil) }

// Poke wakes Wait; after Close it does nothing.
func (p *Poller) Poke() {
	p.closeMu.RLock()
	defer p.closeMu.RUnlock()
	if !p.closed {
		unix.Write(p.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}
}

// Wait returns the descriptors with input, waiting up to timeoutMs
// milliseconds (-1: for ever) for one, or for a Poke (then it returns
// none); it may return none sooner. The slice is reused by the next Wait.
func (p *Poller) Wait(timeoutMs int) ([]int, error) {
	// Under load the next requests are often there already: look without
	// blocking, and without telling the scheduler.
	n, err := rawEpollWait(p.ep, p.events)
	if n == 0 && (err == nil || err == unix.EINTR) {
		p.setDeadline(timeoutMs)
		rerr := p.rc.Read(p.look)
		n, err = p.n, p.err
		if errors.Is(rerr, os.ErrDeadlineExceeded) {
			return nil, nil
		}
		if rerr != nil {
			return nil, rerr
		}
	}
	if err == unix.EINTR {
		return nil, nil
	}
	if err != nil {
		return nil, os.NewSyscallError("epoll_wait", err)
	}
	p.ready = p.ready[:0]
	for _, ev := range p.events[:n] {
		if fd := int(ev.Fd); fd != p.wake {
			p.ready = append(p.ready, fd)
			continue
		}
		var b [8]byte
		unix.Read(p.wake, b[:])
	}
	return p.ready, nil
}

// setDeadline bounds the next wait by timeoutMs. A deadline still ahead
// and no later than asked is kept, so that a busy loop does not reset a
// timer per wait.
func (p *Poller) setDeadline(timeoutMs int) {
	if timeoutMs < 0 {
		if !p.deadline.IsZero() {
			p.deadline = time.Time{}
			p.f.SetReadDeadline(p.deadline)
		}
		return
	}
	now := time.Now()
	asked := now.Add(time.Duration(timeoutMs) * time.Millisecond)
	if p.deadline.IsZero() || !p.deadline.After(now) || p.deadline.After(asked) {
		p.deadline = asked
		p.f.SetReadDeadline(p.deadline)
	}
}

// Close releases the epoll set; a second Close does nothing.
func (p *Poller) Close() {
	p.closeMu.Lock()
	defer p.closeMu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	p.f.Close()
	unix.Close(p.wake)
}

// Take returns a duplicate of nc's socket descriptor (close-on-exec,
// sharing the socket's file status, O_NONBLOCK included) and closes nc,
// which leaves the socket open. ok is false, nc untouched, for a
// connection without a socket to duplicate.
func Take(nc net.Conn) (fd int, ok bool) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return -1, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, false
	}
	fd, derr := -1, error(nil)
	if err := raw.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || derr != nil {
		return -1, false
	}
	nc.Close()
	return fd, true
}

// Give returns a net.Conn, watched by Go's poller, for a descriptor Take
// returned, and closes fd. The net.Conn is a descriptor of its own, so
// Give needs one more for a moment: out of them (EMFILE, ENFILE) or on
// any other failure it leaves fd open, the caller's to try again with or
// to close.
func Give(fd int, name string) (net.Conn, error) {
	// net.FileConn duplicates the file it is given, which is then closed:
	// hand it a duplicate, so that fd outlives whatever fails.
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	f := os.NewFile(uintptr(dup), name)
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	unix.Close(fd)
	return nc, nil
}

// GiveWaiting is [Give] that waits out a shortage of descriptors (see
// [OutOfFds]): after each such failure it waits as wait says (the accept
// loops' back-off) and tries again, until one frees, stop is closed or
// limit has passed since the first failure. On failure fd stays open, the
// caller's to close.
func GiveWaiting(fd int, name string, stop <-chan struct{}, limit time.Duration, wait func(time.Duration, <-chan struct{}) time.Duration) (net.Conn, error) {
	var delay time.Duration
	var until time.Time
	for {
		nc, err := Give(fd, name)
		if err == nil || !OutOfFds(err) {
			return nc, err
		}
		now := time.Now()
		if until.IsZero() {
			until = now.Add(limit)
		}
		select {
		case <-stop:
			return nil, err
		default:
		}
		if now.After(until) {
			return nil, err
		}
		delay = wait(delay, stop)
	}
}

// OutOfFds reports whether err says the process or the system is out of
// descriptors or of the memory for one, for now: a [Give] that failed so
// may succeed once some are closed.
func OutOfFds(err error) bool {
	return errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) || errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.ENOBUFS)
}

// The loops' sockets never block: their reads and writes, and a look for
// events that does not wait, go to the kernel without the scheduler's
// bookkeeping for calls that may block.

// Read reads from fd without blocking (unix.EAGAIN when nothing is there).
func Read(fd int, p []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return rawResult(n, e)
}

// Write writes to fd without blocking (unix.EAGAIN when the socket takes
// nothing more now).
func Write(fd int, p []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return rawResult(n, e)
}

// Flush writes out to fd without blocking. It returns out emptied
// (keeping its buffer, unless that grew past 1 MiB) once all of it is
// written; else out less what was written, and the error:
// unix.EAGAIN when the socket takes nothing more now.
func Flush(fd int, out []byte) ([]byte, error) {
	for w := 0; w < len(out); {
		n, err := Write(fd, out[w:])
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return append(out[:0], out[w:]...), err
		}
		w += n
	}
	if cap(out) > 1<<20 {
		return nil, nil
	}
	return out[:0], nil
}

func rawEpollWait(ep int, events []unix.EpollEvent) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(unsafe.SliceData(events))), uintptr(len(events)), 0, 0, 0)
	return rawResult(n, e)
}

func rawResult(n uintptr, e unix.Errno) (int, error) {
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
