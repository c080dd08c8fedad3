package storage

// Shared memory for clients on the same host (transport/shm). Two parts:
//
//	fd socket   ServeShm answers, on a unix socket of its own, a request
//	            for one segment with the segment's memfd (SCM_RIGHTS; the
//	            codec is in wire/fdsock.go). The client maps it once and
//	            reads and writes the arena through its own mapping.
//	sessions    the ops SHM_SEGMENTS, RESERVE, RESERVE_COMMIT,
//	            RESERVE_ABORT, ACQUIRE and RELEASE run on the unit's wire
//	            connections. Each connection has a session that tracks,
//	            by id, the reservations and leases it opened; when the
//	            connection ends the session aborts the reservations and
//	            releases the leases, so a dead client gives its memory
//	            back: at once after the client's SHM_GOODBYE or when the
//	            client process is gone (killed with SIGKILL, say), and
//	            otherwise after a quarantine, since a live client may
//	            still be copying into them (quarantine.go). While a
//	            session holds any, its connection is not ended for
//	            idleness, whichever process holds its socket: the client
//	            uses them without a frame, and may send no pings
//	            (session.Holding).
//
// Reservations made for a session are "held" (see Unit.ReserveHeld): when
// one outlives Config.ReserveTimeout it can no longer commit, but its
// extents stay allocated until the session aborts it, so a slow client
// never writes into memory handed to someone else.
//
//	rings       a client may also ask the fd socket for a control ring
//	            (internal/shmring): the unit creates the ring memfd, hands
//	            it over, and serves its wire protocol over the ring
//	            (wire.Server.ServeConn), with a session like a socket
//	            connection's. The fd socket connection stays open as the
//	            ring's liveness signal: when the client dies, it reads EOF,
//	            the ring breaks and the session gives the holds back (it
//	            knows the client process by that socket's peer).
//
// Trust: a client that was given a segment can read and write all of it,
// but not resize it: segment memfds are sealed (see segment.go).
// The fd socket asks for the cluster token and should be reachable by the
// unit's own user only (cmd/tq makes it 0600), like the unit's wire socket.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/internal/shmring"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// MaxSessionHolds bounds the reservations and leases one connection may
// hold open at once; beyond it RESERVE and ACQUIRE fail with
// [engine.ErrCapacity].
const MaxSessionHolds = 1 << 16

// fdRequestTimeout bounds one fd socket exchange.
const fdRequestTimeout = 5 * time.Second

// session is one wire connection's reservations and leases.
type session struct {
	srv  *Server
	unix bool // the connection is a unix socket or a control ring: same host
	// pid and pidfd are the client process's on a same-host connection,
	// taken when it connected (see quarantine.go); 0 and -1 when unknown.
	// The session's end closes pidfd or hands it to the quarantine.
	pid   int32
	pidfd int

	mu     sync.Mutex
	closed bool
	next   uint64
	res    map[uint64]*Reservation
	leases map[uint64]*Lease
	rdma   io.Closer // the connection's RDMA queue pairs (rdma.go)
}

var _ wire.Holder = (*session)(nil)

func (s *Server) newSession(_ *wirepb.Hello, nc net.Conn) wire.Session {
	network := nc.LocalAddr().Network()
	sess := &session{
		srv:    s,
		unix:   network == "unix" || network == shmring.Network,
		pidfd:  -1,
		res:    map[uint64]*Reservation{},
		leases: map[uint64]*Lease{},
	}
	if sess.unix && s.cfg.Quarantine > 0 {
		sess.pid, sess.pidfd = peerPidfd(nc)
	}
	return sess
}

// Close ends the session without the client's goodbye: see end.
func (s *session) Close() { s.end(false) }

// Holding reports whether a same-host session holds a reservation or a
// lease. Its client fills and reads them through its own mapping without
// a frame (and a client may send no pings: the Python client does not),
// so the wire server does not end such a session for idleness (see
// wire.Holder); a dead client's session ends with its socket, or its
// ring's liveness socket. That holds even once the process that connected
// has exited: its socket stays open only while another process holds it,
// which with our clients (their sockets are close-on-exec) is a child it
// forked without exec, one that inherited the segments' mappings and any
// views with it and may still read and write them. The session ends when
// the last holder closes the socket, and its holds go back then (at once,
// the connecting process being gone). A session from another host is
// ended for idleness as any: a dead peer's TCP connection may never say
// so.
func (s *session) Holding() bool {
	if !s.unix {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.res)+len(s.leases) > 0
}

// end closes the RDMA queue pairs and gives the holds back: at once after
// the client's goodbye, on a connection from another host (only the
// queue pairs reached the memory), or when the client process is gone;
// otherwise the holds go to quarantine (quarantine.go). It runs once;
// later calls do nothing.
func (s *session) end(goodbye bool) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	res, leases, qps := s.res, s.leases, s.rdma
	s.res, s.leases, s.rdma = nil, nil, nil
	s.mu.Unlock()
	if qps != nil {
		qps.Close()
	}
	rs := make([]*Reservation, 0, len(res))
	for _, r := range res {
		rs = append(rs, r)
	}
	ls := make([]*Lease, 0, len(leases))
	for _, l := range leases {
		ls = append(ls, l)
	}
	if !goodbye && s.unix && s.srv.cfg.Quarantine > 0 && len(rs)+len(ls) > 0 {
		s.srv.quarantine(rs, ls, s.pid, s.pidfd)
		return
	}
	if s.pidfd >= 0 {
		unix.Close(s.pidfd)
	}
	giveBack(rs, ls)
}

func sessionOf(req *wire.Request) (*session, error) {
	s, ok := req.Session.(*session)
	if !ok {
		return nil, fmt.Errorf("op %v without a session: %w", req.Op, engine.ErrNotSupported)
	}
	return s, nil
}

// holdingSessionOf is sessionOf for the ops that open holds (RESERVE,
// ACQUIRE): a connection from another host can fill or read what they
// hold only over RDMA, so a unit without it refuses them there. A client
// that cannot use a reservation could otherwise keep its extents (one
// past the reservation timeout can no longer commit, but stays allocated
// until aborted) for as long as it keeps its connection alive.
func (s *Server) holdingSessionOf(req *wire.Request) (*session, error) {
	sess, err := sessionOf(req)
	if err == nil && !sess.unix && s.cfg.RDMA == nil {
		err = fmt.Errorf("op %v on a connection from another host needs a unit with RDMA (this one has none; WRITE and READ carry the bytes): %w", req.Op, engine.ErrNotSupported)
	}
	return sess, err
}

// add records a reservation or a lease and returns its id; it fails when
// the session is closed or full.
func (s *session) add(r *Reservation, l *Lease) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return 0, fmt.Errorf("connection closed: %w", engine.ErrClosed)
	case len(s.res)+len(s.leases) >= MaxSessionHolds:
		return 0, fmt.Errorf("connection holds %d reservations and leases: %w", MaxSessionHolds, engine.ErrCapacity)
	}
	s.next++
	if r != nil {
		s.res[s.next] = r
	} else {
		s.leases[s.next] = l
	}
	return s.next, nil
}

func (s *session) takeReservation(id uint64) (*Reservation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.res[id]
	if !ok {
		return nil, fmt.Errorf("no open reservation %d on this connection: %w", id, engine.ErrNotFound)
	}
	delete(s.res, id)
	return r, nil
}

func (s *session) takeLease(id uint64) (*Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.leases[id]
	if !ok {
		return nil, fmt.Errorf("no lease %d on this connection: %w", id, engine.ErrNotFound)
	}
	delete(s.leases, id)
	return l, nil
}

// shmSegments serves SHM_SEGMENTS: Empty → ShmSegmentsReply.
func (s *Server) shmSegments(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	sess, err := sessionOf(req)
	if err == nil {
		err = req.Decode(&wirepb.Empty{})
	}
	if err != nil {
		rw.Error(err)
		return
	}
	if !sess.unix {
		rw.Error(fmt.Errorf("shared memory is offered on unix sockets only: %w", engine.ErrNotSupported))
		return
	}
	path := s.fdPath()
	if path == "" {
		rw.Error(fmt.Errorf("unit serves no fd socket: %w", engine.ErrNotSupported))
		return
	}
	segs, err := s.u.liveSegments()
	if err != nil {
		rw.Error(err)
		return
	}
	m := &wirepb.ShmSegmentsReply{FdSocket: path, Segments: make([]*wirepb.ShmSegment, len(segs))}
	for i, sg := range segs {
		m.Segments[i] = &wirepb.ShmSegment{Id: sg.ID, Size: uint64(sg.Size), HugePages: sg.HugePages}
	}
	rw.Reply(m, nil, nil)
}

// reserve serves RESERVE: ReserveRequest → ReserveReply. It may wait for
// space, so it runs on a goroutine of its own.
func (s *Server) reserve(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	sess, err := s.holdingSessionOf(req)
	var m wirepb.ReserveRequest
	if err == nil {
		err = req.Decode(&m)
	}
	var sizes []int64
	if err == nil {
		sizes, err = reserveSizes(m.Sizes)
	}
	if err != nil {
		rw.Error(err)
		return
	}
	rctx, cancel := s.roomWait(ctx, m.NoWait, m.WaitMs)
	r, err := s.u.ReserveHeld(rctx, sizes)
	cancel()
	if err != nil {
		rw.Error(err)
		return
	}
	id, err := sess.add(r, nil)
	if err != nil {
		r.Abort()
		rw.Error(err)
		return
	}
	addrs := make([]engine.RemoteAddr, len(sizes))
	for i := range addrs {
		addrs[i] = r.Addr(i)
	}
	rw.Reply(&wirepb.ReserveReply{Reservation: id, Extents: wire.RangesToPB(addrs)}, nil, nil)
}

// reserveSizes checks a RESERVE's sizes (their sum bounded like a WRITE's
// payload).
func reserveSizes(sizes []uint64) ([]int64, error) {
	var total uint64
	for _, n := range sizes {
		if total += n; total < n || total > wire.MaxPayloadLen {
			return nil, fmt.Errorf("%d extents exceed the limit of %d bytes: %w", len(sizes), uint64(wire.MaxPayloadLen), engine.ErrInvalid)
		}
	}
	return writeSizes(sizes, total)
}

// reserveCommit serves RESERVE_COMMIT: ReservationRequest → Empty. A
// failed commit aborts the reservation.
func (s *Server) reserveCommit(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	r, err := s.takeReservation(req)
	if err == nil {
		if err = r.Commit(); err != nil {
			r.Abort()
		}
	}
	if err != nil {
		rw.Error(err)
		return
	}
	s.traffic.wrote(extentIdx(req), r.asked())
	rw.Reply(&wirepb.Empty{}, nil, nil)
}

// reserveAbort serves RESERVE_ABORT: ReservationRequest → Empty.
func (s *Server) reserveAbort(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	r, err := s.takeReservation(req)
	if err != nil {
		rw.Error(err)
		return
	}
	r.Abort()
	rw.Reply(&wirepb.Empty{}, nil, nil)
}

func (s *Server) takeReservation(req *wire.Request) (*Reservation, error) {
	sess, err := sessionOf(req)
	if err != nil {
		return nil, err
	}
	var m wirepb.ReservationRequest
	if err := req.Decode(&m); err != nil {
		return nil, err
	}
	return sess.takeReservation(m.Reservation)
}

// acquire serves ACQUIRE: AcquireRequest → AcquireReply.
func (s *Server) acquire(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	sess, err := s.holdingSessionOf(req)
	var m wirepb.AcquireRequest
	if err == nil {
		err = req.Decode(&m)
	}
	var ranges []engine.RemoteAddr
	if err == nil {
		ranges, err = wire.RangesFromPB(m.Ranges)
	}
	if err == nil {
		err = wire.CheckCount("ranges", len(ranges))
	}
	if err != nil {
		rw.Error(err)
		return
	}
	l, err := s.u.Acquire(ranges)
	if err != nil {
		rw.Error(err)
		return
	}
	id, err := sess.add(nil, l)
	if err != nil {
		l.Release()
		rw.Error(err)
		return
	}
	var n uint64
	for _, a := range ranges {
		n += a.Len
	}
	s.traffic.readBytes(extentIdx(req), int64(n))
	rw.Reply(&wirepb.AcquireReply{Lease: id}, nil, nil)
}

// release serves RELEASE: ReleaseRequest → Empty.
func (s *Server) release(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	sess, err := sessionOf(req)
	var m wirepb.ReleaseRequest
	if err == nil {
		err = req.Decode(&m)
	}
	var l *Lease
	if err == nil {
		l, err = sess.takeLease(m.Lease)
	}
	if err != nil {
		rw.Error(err)
		return
	}
	l.Release()
	rw.Reply(&wirepb.Empty{}, nil, nil)
}

// goodbye serves SHM_GOODBYE: Empty → Empty. The client will touch none
// of the connection's holds again (it stopped its copies, and its views
// and reservations are invalid from now on): they are given back at once,
// with no quarantine, and the connection opens no more.
func (s *Server) goodbye(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
	sess, err := sessionOf(req)
	if err == nil {
		err = req.Decode(&wirepb.Empty{})
	}
	if err != nil {
		rw.Error(err)
		return
	}
	sess.end(true)
	rw.Reply(&wirepb.Empty{}, nil, nil)
}

// RegisterShm makes l the unit's fd socket from now on, before
// [Server.ServeShm] serves it: `srv.RegisterShm(l); go srv.ServeShm(l)`.
// It reports false (and closes l) when the server is closed. Close closes
// l whether or not it was served.
func (s *Server) RegisterShm(l *net.UnixListener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.registerShmLocked(l)
}

func (s *Server) registerShmLocked(l *net.UnixListener) bool {
	if s.closed {
		l.Close()
		return false
	}
	s.fdLs[l] = struct{}{} // Close closes it
	if s.fdSock == "" {
		s.fdSock = l.Addr().String()
	}
	return true
}

// ServeShm serves the fd socket on l until the server closes: each
// connection asks for one segment and gets its memfd (see wire/fdsock.go).
// At most 256 connections may be waiting for their request at once; one
// more is answered FdBusy and closed.
// The SHM_SEGMENTS op names l's path as the unit's fd socket, so serve
// one fd socket per server. It returns nil after [Server.Close] or
// [Server.Shutdown]. Accept errors that pass (out of file descriptors
// or memory) do not end it: it backs off and tries again.
//
// Run as a goroutine, ServeShm may not have started when a client asks
// for the fd socket, and that client would be told there is none (and
// pick another transport): call [Server.RegisterShm] first.
func (s *Server) ServeShm(l *net.UnixListener) error {
	s.mu.Lock()
	if !s.registerShmLocked(l) {
		s.mu.Unlock()
		return nil
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	var delay time.Duration
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			if closed || !wire.TemporaryAcceptError(err) {
				delete(s.fdLs, l)
			}
			s.mu.Unlock()
			switch {
			case closed || errors.Is(err, net.ErrClosed):
				return nil
			case wire.TemporaryAcceptError(err):
				// Out of file descriptors or memory for now: back off
				// and try again, as the wire server's listeners do.
				if delay == 0 && s.cfg.Logger != nil {
					s.cfg.Logger.Warn("storage: fd socket accept failing; backing off and retrying", "addr", l.Addr().String(), "err", err)
				}
				delay = wire.BackOffAccept(delay, s.fdStop)
				continue
			}
			// Closed here, as Close would have: a client's connect must
			// be refused, not left in the backlog of a socket nobody
			// accepts on.
			l.Close()
			return fmt.Errorf("accept: %w", err)
		}
		if delay != 0 {
			delay = 0
			if s.cfg.Logger != nil {
				s.cfg.Logger.Info("storage: fd socket accepting again", "addr", l.Addr().String())
			}
		}
		if s.fdPending.Add(1) > s.maxFdPending {
			s.fdPending.Add(-1)
			c.SetWriteDeadline(time.Now().Add(fdRequestTimeout))
			c.Write(wire.FdReply{Status: wire.FdBusy}.Append(nil))
			c.Close()
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			s.fdPending.Add(-1)
			c.Close()
			continue
		}
		s.fdConns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serveFd(c)
			s.mu.Lock()
			delete(s.fdConns, c)
			s.mu.Unlock()
			c.Close()
		}()
	}
}

func (s *Server) fdPath() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fdSock
}

// serveFd answers one fd request; a ring request is then served until
// the ring ends.
func (s *Server) serveFd(c *net.UnixConn) {
	c.SetDeadline(time.Now().Add(fdRequestTimeout))
	req, err := wire.ReadFdRequest(c)
	s.fdPending.Add(-1)
	var rep wire.FdReply
	fd := -1
	switch {
	case err != nil:
		// Malformed, or not whole within fdRequestTimeout: that
		// deadline has passed for the reply too, so give it its own,
		// and the peer reads why it is cut off rather than EOF.
		c.SetWriteDeadline(time.Now().Add(fdRequestTimeout))
		rep.Status = wire.FdBadRequest
	case s.cfg.Token != "" && !auth.Equal(s.cfg.Token, req.Token) &&
		!(s.cfg.TrustPeerCred && wire.SameUser(c)):
		// A client of this user is admitted without the token here as
		// on the wire socket, which its segments and ring come with.
		rep.Status = wire.FdUnauthenticated
	case req.Ring:
		s.serveRing(c, req.RingSize)
		return
	case req.Incarnation != 0 && req.Incarnation != s.u.Incarnation():
		rep.Status = wire.FdNotThisUnit
	default:
		var info SegmentInfo
		fd, info, err = s.u.DupSegment(req.Segment)
		switch {
		case errors.Is(err, engine.ErrClosed):
			rep.Status = wire.FdClosed
		case errors.Is(err, engine.ErrNotFound):
			rep.Status = wire.FdNotFound
		case err != nil:
			// The segment is live, but its memfd could not be dup'd
			// (out of file descriptors for now): "try again", never
			// "no such segment", which a client reads as its cells
			// lost.
			rep.Status = wire.FdBusy
		default:
			rep.Size, rep.HugePages = uint64(info.Size), info.HugePages
		}
	}
	var oob []byte
	if fd >= 0 {
		defer unix.Close(fd)
		oob = unix.UnixRights(fd)
	}
	c.WriteMsgUnix(rep.Append(nil), oob, nil)
}

// ringSize is the ring size the unit grants a client that asked for n
// bytes: its default for 0, else n rounded up to a power of two within
// [shmring.MinRingSize, MaxRingSize].
func ringSize(n uint32) int {
	if n == 0 {
		return shmring.DefaultRingSize
	}
	size := shmring.MinRingSize
	for size < int(n) && size < MaxRingSize {
		size *= 2
	}
	return size
}

// MaxRingSize bounds the rings of a client's control channel.
const MaxRingSize = 1 << 20

// serveRing creates a control ring, hands its memfd over c and serves the
// wire protocol over it until it ends. c stays open as the ring's
// liveness socket; the ring owns it.
func (s *Server) serveRing(c *net.UnixConn, size uint32) {
	if s.cfg.NoRing {
		c.WriteMsgUnix(wire.FdReply{Status: wire.FdNotSupported}.Append(nil), nil, nil)
		return
	}
	// A unit that cannot make a ring (out of memory or fds, or at its
	// bound) still serves the client over its socket.
	refuse := func() { c.WriteMsgUnix(wire.FdReply{Status: wire.FdNotSupported}.Append(nil), nil, nil) }
	if s.rings.Add(1) > int64(s.cfg.MaxRings) {
		s.rings.Add(-1)
		refuse()
		return
	}
	defer s.rings.Add(-1)
	fd, mem, err := shmring.Create(ringSize(size))
	if err != nil {
		refuse()
		return
	}
	defer unix.Close(fd)
	// The ring reads c from now on, for as long as the client lives.
	c.SetReadDeadline(time.Time{})
	// The ring is this side's before the client can touch the region.
	rc, err := shmring.NewConn(mem, shmring.SideB, c, func() error { return shmring.Unmap(mem) }, shmring.Config{Spin: s.cfg.RingSpin})
	if err != nil {
		shmring.Unmap(mem)
		refuse()
		return
	}
	rep := wire.FdReply{Size: uint64(len(mem))}
	if _, _, err := c.WriteMsgUnix(rep.Append(nil), unix.UnixRights(fd), nil); err != nil {
		rc.Close()
		return
	}
	c.SetWriteDeadline(time.Time{})
	s.ws.ServeConn(rc)
}
