package shm

// Segments. A Conn maps each of the unit's memfd segments once, twice
// over: read-only (PROT_READ) for views and reads, so that a caller
// writing through a view faults instead of corrupting the store, and
// read-write for reservations. Both are MAP_SHARED|MAP_POPULATE: the unit
// pre-faulted the pages, and populating the page tables up front keeps
// minor faults off the first transfer. A segment id the Conn has not seen
// (the unit's arena grew) is fetched from the unit's fd socket on first
// use:
//
//	client ── connect(fd socket) ── "TQF1" | id | token ──▶ unit
//	client ◀── "TQF1" | status | flags | size  + memfd (SCM_RIGHTS) ──
//
// The fd is received close-on-exec (Go's ReadMsgUnix passes
// MSG_CMSG_CLOEXEC), so no child inherits it, and closed as soon as it is
// mapped: the mappings keep the pages alive. Segment ids are never reused
// by a unit, so a mapping never goes stale. A unit drops an empty segment
// to map a larger one (or one that ran out of generations), but its pages
// go only with the last process that maps it: so a Conn that maps
// segments asks the unit for its live ones (SHM_SEGMENTS) every
// sweepEvery (5 s), and at once after it mapped a new one (the unit grew,
// and drops when it grows), and unmaps the ones the unit dropped (sweep).
// No view should reach those: a lease or a reservation keeps its segment
// on the unit. But the sweep does not take the unit's word for it: each
// segment counts the leases and reservations of this Conn whose views
// reach it (pins), and one still pinned stays mapped whatever the unit
// answers (a closed unit, or a hostile one, names no segment at all).
// Only Close, and a connection that ended once nothing is held, unmap
// every segment. A unit restarted at the
// same paths numbers them afresh, so a segment fetched once the
// connection has ended is not mapped: it may be the new unit's.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

type segment struct {
	ro, rw []byte
	// pins counts the leases and reservations of the Conn whose views
	// reach this segment: sweep leaves a pinned segment mapped. Taken
	// under the Conn's mu (read-locked will do) while the segment is in
	// its table, so that a sweep, which unmaps under mu, sees it.
	pins atomic.Int64
}

// unpin drops one pin of each segment in segs.
func unpin(segs []*segment) {
	for _, s := range segs {
		s.pins.Add(-1)
	}
}

func (s *segment) unmap() error {
	return errors.Join(unix.Munmap(s.ro), unix.Munmap(s.rw))
}

// window returns bytes [off, off+n) of the mapping m, checking that the
// unit's range lies inside the segment.
func window(m []byte, a engine.RemoteAddr) ([]byte, error) {
	if a.Offset > uint64(len(m)) || a.Len > uint64(len(m))-a.Offset {
		return nil, fmt.Errorf("range %d+%d outside segment %d of %d bytes: %w", a.Offset, a.Len, a.Segment, len(m), engine.ErrCorrupt)
	}
	return m[a.Offset : a.Offset+a.Len : a.Offset+a.Len], nil
}

// segment returns segment id's mappings, fetching and mapping it on first
// use, pinned (see segment.pins): the caller unpins it when its lease or
// reservation ends. The caller holds c.ops.
func (c *Conn) segment(ctx context.Context, id uint32) (*segment, error) {
	if s := c.pinned(id); s != nil {
		return s, nil
	}
	select {
	case c.mapping <- struct{}{}:
		defer func() { <-c.mapping }()
	case <-ctx.Done():
		return nil, fmt.Errorf("segment %d: waiting while another call fetches a segment: %w", id, context.Cause(ctx))
	case <-c.done:
		return nil, c.errClosed()
	}
	if s := c.pinned(id); s != nil {
		return s, nil
	}
	fd, size, err := c.fetch(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("fetch segment %d: %w", id, err)
	}
	// A unit restarted at the same paths numbers its segments afresh:
	// once the connection has ended, the fd socket may be another
	// unit's, and so may the segment it handed over.
	select {
	case <-c.wc.Done():
		unix.Close(fd)
		return nil, fmt.Errorf("segment %d: connection to the unit ended before it was mapped (the fd socket may serve another unit now): %w", id, c.wc.Err())
	default:
	}
	s, err := mapSegment(fd, size)
	if cerr := unix.Close(fd); err == nil && cerr != nil {
		err = fmt.Errorf("close memfd: %w", cerr)
		if s != nil {
			s.unmap()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("segment %d: %w", id, err)
	}
	s.pins.Store(1)
	c.mu.Lock()
	c.segs[id] = s // Close waits for c.ops, so it has not unmapped yet
	c.mu.Unlock()
	select {
	case c.sweepKick <- struct{}{}: // the unit grew: it may have dropped some
	default:
	}
	return s, nil
}

// pinned returns segment id's mappings pinned, or nil if it is not
// mapped.
func (c *Conn) pinned(id uint32) *segment {
	c.mu.RLock()
	defer c.mu.RUnlock()
	s := c.segs[id]
	if s != nil {
		s.pins.Add(1)
	}
	return s
}

// segmentLimit returns the largest segment a Conn maps: this host's
// physical memory. A unit's segment is at most its capacity, which tq
// serve keeps within the host's memory (or a container's limit, which is
// lower). The size of a larger memfd, sealed and sparse, is a hostile
// unit's choice, and MAP_POPULATE would fault its pages in here until
// the host ran out. A variable: tests lower it.
var segmentLimit = func() uint64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil || si.Totalram == 0 {
		return math.MaxInt
	}
	return min(si.Totalram*uint64(si.Unit), math.MaxInt)
}

func mapSegment(fd int, size int) (*segment, error) {
	ro, err := unix.Mmap(fd, 0, size, unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes read-only: %w", size, err)
	}
	rw, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("mmap %d bytes read-write: %w", size, err), unix.Munmap(ro))
	}
	return &segment{ro: ro, rw: rw}, nil
}

// fdBusyTries bounds the exchanges of one segment fetch that the unit
// answers FdBusy (other exchanges in flight, or out of descriptors for
// now); it waits fdBusyWait after the first, doubling up to
// fdBusyMaxWait (about 2.3 s in all). Tests lower them.
var (
	fdBusyTries   = 10
	fdBusyWait    = 5 * time.Millisecond
	fdBusyMaxWait = time.Second
)

// fetch asks the unit's fd socket for segment id's memfd and returns it
// with the segment's size. A unit that answers FdBusy is asked again, up
// to fdBusyTries times, backing off between tries.
func (c *Conn) fetch(ctx context.Context, id uint32) (int, int, error) {
	wait := fdBusyWait
	for try := 1; ; try++ {
		uc, fd, size, err := c.fdExchange(ctx, wire.FdRequest{Segment: id, Token: c.fdToken, Incarnation: c.inc})
		if err == nil {
			uc.Close()
			return fd, size, nil
		}
		var busy fdBusyError
		if !errors.As(err, &busy) {
			return -1, 0, err
		}
		if try == fdBusyTries {
			return -1, 0, fmt.Errorf("%w (asked %d times)", err, try)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return -1, 0, fmt.Errorf("%w (asked %d times, then %w)", err, try, context.Cause(ctx))
		case <-c.done:
			t.Stop()
			return -1, 0, c.errClosed()
		}
		wait = min(2*wait, fdBusyMaxWait)
	}
}

// fdBusyError is the error of an exchange the unit answered FdBusy: try
// again.
type fdBusyError struct{ error }

func (e fdBusyError) Unwrap() error { return e.error }

// fdExchange sends one request to the unit's fd socket and returns the
// connection, still open, with the memfd it got and the memfd's size
// (checked with fstat against the reply).
func (c *Conn) fdExchange(ctx context.Context, req wire.FdRequest) (*net.UnixConn, int, int, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", c.fdSock)
	if err != nil {
		return nil, -1, 0, fmt.Errorf("dial fd socket %s: %w: %w", c.fdSock, wire.ErrUnavailable, err)
	}
	uc := nc.(*net.UnixConn)
	fd, size, err := c.exchange(ctx, uc, req)
	if err != nil {
		uc.Close()
		return nil, -1, 0, err
	}
	return uc, fd, size, nil
}

func (c *Conn) exchange(ctx context.Context, uc *net.UnixConn, req wire.FdRequest) (int, int, error) {
	// cut ends the exchange at once, unless it is over: uc may outlive
	// it as a control ring's liveness socket, and a deadline set there
	// later would read as the unit gone. (Dial closes the socket
	// connection, wc below, right after the ring's exchange, and a watch
	// that had not run yet used to cut the ring's socket then.)
	var cutMu sync.Mutex
	over, wasCut := false, false
	cut := func() {
		cutMu.Lock()
		defer cutMu.Unlock()
		if !over {
			uc.SetDeadline(time.Now())
			wasCut = true
		}
	}
	end := func() bool {
		cutMu.Lock()
		defer cutMu.Unlock()
		over = true
		return wasCut
	}
	defer end()
	stop := context.AfterFunc(ctx, cut)
	defer stop()
	// Neither Close nor a caller without a deadline must wait on a unit
	// that never answers: the exchange ends with the connection, whose
	// keepalive notices a unit that stopped answering.
	c.mu.RLock()
	wc := c.wc
	c.mu.RUnlock()
	exchanged := make(chan struct{})
	defer close(exchanged)
	watch := func() {
		select {
		case <-c.done:
			cut()
		case <-wc.Done():
			cut()
		case <-exchanged:
		}
	}
	hook := testHookFdWatch.Load() // as the exchange starts, not as the goroutine does
	go func() {
		if hook != nil {
			(*hook)(watch)
			return
		}
		watch()
	}()
	select {
	case <-c.done:
		return -1, 0, c.errClosed()
	default:
	}
	if _, err := uc.Write(req.Append(nil)); err != nil {
		return -1, 0, c.fetchErr(ctx, wc, err)
	}
	buf := make([]byte, wire.FdReplySize)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, flags, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return -1, 0, c.fetchErr(ctx, wc, err)
	}
	fds, ferr := receivedFds(oob[:oobn])
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	rep, err := decodeFdReply(buf[:n], len(fds), flags&unix.MSG_CTRUNC != 0, ferr)
	if err == nil {
		err = c.checkMemfd(fds[0], rep)
	}
	if err != nil {
		closeAll()
		return -1, 0, err
	}
	if end() {
		closeAll()
		return -1, 0, c.fetchErr(ctx, wc, os.ErrDeadlineExceeded)
	}
	return fds[0], int(rep.Size), nil
}

// decodeFdReply decodes what the fd socket answered: the reply's bytes b,
// the number of fds that came with them, whether the kernel cut the
// control data (MSG_CTRUNC: more fds than room was made for), and the
// error parsing the control data gave. It succeeds only for an FdOK
// reply with exactly one fd; an FdBusy one is an fdBusyError.
func decodeFdReply(b []byte, nfds int, ctrunc bool, ferr error) (wire.FdReply, error) {
	rep, err := wire.ParseFdReply(b)
	if err == nil {
		err = ferr
	}
	if err == nil {
		err = rep.Status.Err()
		if rep.Status == wire.FdBusy {
			err = fdBusyError{err}
		}
	}
	switch {
	case err != nil:
	case ctrunc:
		// Room is made for one: the kernel closed the ones past it.
		err = fmt.Errorf("fd reply carries more fds than the one it may: %w", wire.ErrFrame)
	case nfds != 1:
		err = fmt.Errorf("fd reply carries %d fds, not one: %w", nfds, wire.ErrFrame)
	}
	return rep, err
}

// checkMemfd checks the memfd fd that came with rep, an FdOK reply: it
// must be sealed against resizing, hold rep.Size bytes, and no more than
// this host's memory. Seals first: the peer that sent fd holds it too,
// and may shrink it until it seals it, so a size read before the seals
// were checked may no longer hold (a mapping past a memfd's end is SIGBUS
// on every access).
func (c *Conn) checkMemfd(fd int, rep wire.FdReply) error {
	if err := checkSealed(fd); err != nil {
		return fmt.Errorf("unit %d: %w", c.unit, err)
	}
	if h := testHookMemfdChecks; h != nil {
		h(fd)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || uint64(st.Size) != rep.Size || rep.Size == 0 {
		return fmt.Errorf("unit %d: memfd of %d bytes for a region of %d: %w", c.unit, st.Size, rep.Size, engine.ErrCorrupt)
	}
	if limit := segmentLimit(); rep.Size > limit {
		return fmt.Errorf("unit %d: memfd of %d bytes, more than this host's memory (%d bytes): %w", c.unit, rep.Size, limit, engine.ErrCorrupt)
	}
	return nil
}

// testHookMemfdChecks, if set, runs between checkMemfd's first check of
// a memfd and its second: tests act there as the peer that sent it.
var testHookMemfdChecks func(fd int)

// checkSealed fails unless fd is a memfd sealed against shrinking and
// growing, so that no process can resize it under this one's mappings
// (a mapping past a shrunk file's end is SIGBUS on every access). A
// 4 KiB-page segment is always sealed (storage/segment.go); a hugetlb one
// is too, except on kernels before 4.16, which cannot seal a hugetlb
// memfd: F_GET_SEALS fails there, and only then does an unsealed fd pass,
// when fstatfs says it is on hugetlbfs. The reply's HugePages flag is the
// peer's word and is not trusted for this.
func checkSealed(fd int) error {
	const want = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		var fs unix.Statfs_t
		if errors.Is(err, unix.EINVAL) && unix.Fstatfs(fd, &fs) == nil && fs.Type == unix.HUGETLBFS_MAGIC {
			return nil
		}
		return fmt.Errorf("fd is not a sealable memfd (F_GET_SEALS: %w): %w", err, engine.ErrCorrupt)
	}
	if seals&want != want {
		return fmt.Errorf("memfd not sealed against resizing (seals %#x): %w", seals, engine.ErrCorrupt)
	}
	return nil
}

// testHookFdWatch, if set, runs an fd socket exchange's watch of the
// Conn and its connection in place of the exchange's goroutine: tests
// run the watch late.
var testHookFdWatch atomic.Pointer[func(watch func())]

func (c *Conn) fetchErr(ctx context.Context, wc *wire.Conn, err error) error {
	select {
	case <-c.done:
		return c.errClosed()
	default:
	}
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	select {
	case <-wc.Done():
		return fmt.Errorf("connection to the unit ended during the fd socket exchange: %w", wc.Err())
	default:
	}
	return fmt.Errorf("fd socket: %w: %w", wire.ErrUnavailable, err)
}

// receivedFds returns the fds of SCM_RIGHTS messages in oob. If part of
// oob does not parse it closes the fds of the messages before that part
// (the kernel installed them in this process) and returns an error; the
// part that does not parse is left alone, as its words may not be fds
// this process was given.
func receivedFds(oob []byte) ([]int, error) {
	var fds []int
	for rest := oob; len(rest) >= unix.CmsgLen(0); {
		h, data, next, err := unix.ParseOneSocketControlMessage(rest)
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
			return nil, fmt.Errorf("parse control message at byte %d of %d: %w", len(oob)-len(rest), len(oob), err)
		}
		got, err := unix.ParseUnixRights(&unix.SocketControlMessage{Header: h, Data: data})
		if err == nil {
			fds = append(fds, got...)
		}
		rest = next
	}
	return fds, nil
}

// sweepEvery is how often a Conn that maps segments asks the unit which
// of them it still has (see sweep). A variable: tests lower it.
var sweepEvery = 5 * time.Second

// sweepLoop runs sweep every so often (sweepEvery), and at once when a call mapped
// a new segment (the unit grew, which is when it drops empty segments
// too), until the Conn closes or its connection ends (then the watch in
// DialConn unmaps everything).
func (c *Conn) sweepLoop(every time.Duration, ended <-chan struct{}) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-ended:
			return
		case <-t.C:
		case <-c.sweepKick:
		}
		c.sweep()
	}
}

// sweep unmaps the segments this Conn maps that the unit dropped. It
// asks the unit for its live segments (SHM_SEGMENTS) and unmaps those
// mapped before it asked that the answer does not name and that no lease
// or reservation of this Conn pins. A lease or a reservation keeps its
// extents, and so their segment, on the unit, so a segment the unit
// dropped should hold nothing this Conn may still touch; the pins make
// sure of it whatever the unit says (a closed unit answers ErrClosed, but
// a buggy or hostile one may name no segment). Segment ids are never
// reused, so a dropped segment never comes back. A segment mapped after
// the question may be newer than the answer, and is left alone; so is a
// pinned one, until a later sweep.
func (c *Conn) sweep() {
	c.mu.RLock()
	mapped := maps.Clone(c.segs)
	c.mu.RUnlock()
	if len(mapped) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if c.begin(ctx) != nil {
		return
	}
	defer c.end()
	var reply wirepb.ShmSegmentsReply
	if c.do(ctx, wire.OpShmSegments, &wirepb.Empty{}, &reply) != nil {
		return // the next sweep asks again; a connection that ended unmaps all
	}
	c.unmapDropped(mapped, &reply)
}

// unmapDropped unmaps those of mapped (the segments this Conn mapped
// before it asked) that reply does not name, that are still the Conn's,
// and that nothing pins.
func (c *Conn) unmapDropped(mapped map[uint32]*segment, reply *wirepb.ShmSegmentsReply) {
	live := make(map[uint32]bool, len(reply.Segments))
	for _, sg := range reply.Segments {
		live[sg.Id] = true
	}
	var drops []*segment
	c.mu.Lock()
	for id, s := range mapped {
		// Unless dropSegments took it meanwhile, or a view reaches it.
		if !live[id] && c.segs[id] == s && s.pins.Load() == 0 {
			delete(c.segs, id)
			drops = append(drops, s)
		}
	}
	c.mu.Unlock()
	for _, s := range drops {
		s.unmap()
	}
}
