package storage

// Quarantine of a dead session's holds. A same-host client fills
// reservations and reads leases through its own mapping of the unit's
// segments, so the unit may give a hold back, and hand its bytes to
// another put, only once that client cannot touch it any more. When a
// unix or control-ring connection ends, its session's holds go back
//
//	at once     after the client's SHM_GOODBYE (transport/shm's Close sends
//	            it once its copies stopped; the client promises to touch
//	            none of them again), or when the client process is gone
//	            (its mappings went with it);
//	later       otherwise — the unit hung up on a client that lives (idle
//	            timeout, a refused frame), or the connection broke under
//	            it — when the client process exits or
//	            ServerConfig.Quarantine passes, whichever comes first.
//
// The client process is known by a pidfd taken when it connects
// (SO_PEERPIDFD, else pidfd_open of SO_PEERCRED's pid), which names that
// process and no later one with the same pid. A quarantine waits for the
// pidfd to turn readable (the process exited) on the runtime's poller,
// with the quarantine's end as the read deadline. Without a pidfd (an old
// kernel, a client in a pid namespace the unit cannot see) only the
// deadline ends it.
//
// A reservation in quarantine can no longer commit, as if it had expired
// while held: it is no open reservation (Stats.OpenReservations) and its
// extents are not in flight ([Unit.Unsettled]). Quarantined holds stay
// allocated: Used (and so the heartbeats) counts them,
// [Stats.Quarantined] says how many bytes only the quarantine keeps out
// of reuse and [Stats.QuarantinedSessions] of how many sessions
// (UNIT_STATS and the tq_unit_quarantined_* metrics report both), and a
// unit full of them answers RESERVE and WRITE with CODE_CAPACITY, as when
// full, until they end. Server.Close and Server.Shutdown give them back at once: waiting
// would hold the unit's shutdown for the quarantine.

import (
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultQuarantine is ServerConfig.Quarantine's default: three of a
// client's default ping timeouts, long past the moment a live client sees
// its connection end and stops its copies.
const DefaultQuarantine = 30 * time.Second

// quarantine is one ended session's holds, kept out of reuse.
type quarantine struct {
	res    []*Reservation
	leases []*Lease
	proc   *os.File // the client's pidfd; nil: none
}

// quarantines are a server's quarantined sessions; Server.Close ends them.
type quarantines struct {
	mu     sync.Mutex
	closed bool
	set    map[*quarantine]struct{}
	stop   chan struct{} // closed by end
	wg     sync.WaitGroup
}

// peerPidfd returns a pidfd of the process at the other end of nc (a unix
// socket, or a control ring with its liveness socket), or -1 when the
// kernel will not say. The fd is close-on-exec.
func peerPidfd(nc net.Conn) int {
	if l, ok := nc.(interface{ Link() net.Conn }); ok {
		nc = l.Link()
	}
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return -1
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return -1
	}
	pidfd := -1
	raw.Control(func(fd uintptr) {
		// SO_PEERPIDFD (Linux 6.5) names the process that connected even
		// if it is gone; pidfd_open of its pid could name a later one.
		if pfd, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD); err == nil {
			pidfd = pfd
			return
		}
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil || cred.Pid <= 0 {
			return
		}
		if pfd, err := unix.PidfdOpen(int(cred.Pid), 0); err == nil {
			pidfd = pfd
		}
	})
	return pidfd
}

// exited reports whether the process of pidfd has exited (a zombie
// counts: its mappings are gone).
func exited(pidfd int) bool {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0 && fds[0].Revents&(unix.POLLIN|unix.POLLHUP) != 0
}

// giveBack aborts the reservations and releases the leases.
func giveBack(res []*Reservation, leases []*Lease) {
	for _, r := range res {
		r.Abort()
	}
	for _, l := range leases {
		l.Release()
	}
}

// quarantine keeps the holds of a session that ended without a goodbye
// out of reuse while the client process may still touch them (see the
// top of this file). It takes pidfd (-1: none).
func (s *Server) quarantine(res []*Reservation, leases []*Lease, pidfd int) {
	if pidfd >= 0 && exited(pidfd) {
		unix.Close(pidfd)
		giveBack(res, leases)
		return
	}
	q := &quarantine{res: res, leases: leases}
	deadline := time.Now().Add(s.cfg.Quarantine)
	if pidfd >= 0 {
		// A nonblocking fd goes on the runtime's poller, which wakes a
		// read when the pidfd turns readable or its deadline passes.
		if unix.SetNonblock(pidfd, true) == nil {
			q.proc = os.NewFile(uintptr(pidfd), "pidfd")
			if q.proc.SetReadDeadline(deadline) != nil {
				q.proc.Close() // not pollable: the deadline alone ends it
				q.proc = nil
			}
		} else {
			unix.Close(pidfd)
		}
	}
	qs := &s.quar
	qs.mu.Lock()
	if qs.closed {
		qs.mu.Unlock()
		q.end()
		return
	}
	if qs.set == nil {
		qs.set = map[*quarantine]struct{}{}
		qs.stop = make(chan struct{})
	}
	qs.set[q] = struct{}{}
	qs.wg.Add(1)
	stop := qs.stop
	s.u.quarantineHolds(res, leases)
	qs.mu.Unlock()
	go func() {
		defer qs.wg.Done()
		q.wait(deadline, stop)
		qs.mu.Lock()
		delete(qs.set, q) // before end closes the pidfd that endQuarantines touches
		qs.mu.Unlock()
		q.end()
		s.u.quarantineEnded()
	}()
}

// wait returns when the client process exits, the deadline passes, or
// stop is closed.
func (q *quarantine) wait(deadline time.Time, stop <-chan struct{}) {
	if q.proc != nil {
		raw, err := q.proc.SyscallConn()
		if err == nil {
			// Read calls the func, and while it says false waits until
			// the fd is readable or the deadline (which end moves to now)
			// passes.
			raw.Read(func(fd uintptr) bool { return exited(int(fd)) })
			return
		}
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-t.C:
	case <-stop:
	}
}

// end gives the holds back and closes the pidfd.
func (q *quarantine) end() {
	if q.proc != nil {
		q.proc.Close()
	}
	giveBack(q.res, q.leases)
}

// endQuarantines gives every quarantined session's holds back now, and
// those of sessions that end later at once; it waits for the quarantines'
// goroutines.
func (s *Server) endQuarantines() {
	qs := &s.quar
	qs.mu.Lock()
	if !qs.closed {
		qs.closed = true
		if qs.stop != nil {
			close(qs.stop)
		}
		for q := range qs.set {
			if q.proc != nil {
				q.proc.SetReadDeadline(time.Now())
			}
		}
	}
	qs.mu.Unlock()
	qs.wg.Wait()
}

// Quarantined reports the sessions whose holds this server keeps in
// quarantine, and the bytes that only the unit's quarantine keeps out of
// reuse ([Stats.Quarantined]).
func (s *Server) Quarantined() (sessions int, bytes int64) {
	qs := &s.quar
	qs.mu.Lock()
	sessions = len(qs.set)
	qs.mu.Unlock()
	return sessions, s.u.Stats().Quarantined
}

// quarantineHolds counts a session's holds in quarantine. Its
// reservations can no longer commit, as if they had expired while held,
// and keep their extents until aborted; its leases' extents count in
// Stats.Quarantined once only they hold them.
func (u *Unit) quarantineHolds(res []*Reservation, leases []*Lease) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.quarSess++
	if u.closed {
		return
	}
	for _, r := range res {
		if r.state == reservationOpen {
			u.unlinkOpen(r)
			r.state = reservationExpired
			orphan(r)
		}
		if r.state == reservationExpired && !r.quarantined {
			r.quarantined = true
			u.quarRes += r.bytes
		}
	}
	for _, l := range leases {
		if l.released.Load() || l.quarantined {
			continue
		}
		l.quarantined = true
		for _, ent := range l.ents {
			if ent.e == nil {
				continue
			}
			if ent.e.qrefs++; ent.e.qrefs == 1 {
				if u.quarExts == nil {
					u.quarExts = map[*extent]struct{}{}
				}
				u.quarExts[ent.e] = struct{}{}
			}
		}
	}
}

// quarantineEnded counts a session out of quarantine, its holds given
// back.
func (u *Unit) quarantineEnded() {
	u.mu.Lock()
	u.quarSess--
	u.mu.Unlock()
}

// unquarantineLocked counts one lease entry in quarantine on e out, as
// the lease is released.
func (u *Unit) unquarantineLocked(e *extent) {
	if e.qrefs--; e.qrefs == 0 {
		delete(u.quarExts, e)
	}
}

// quarantinedLocked returns Stats.Quarantined: the reservations' bytes,
// and the extents that only leases in quarantine hold (their cells, which
// hold a reference while any is live, are all freed).
func (u *Unit) quarantinedLocked() int64 {
	n := u.quarRes
	for e := range u.quarExts {
		if e.refs == e.qrefs {
			n += e.blk.size
		}
	}
	return n
}

// orphan marks the extents of r, which can no longer commit, as out of
// flight.
func orphan(r *Reservation) {
	for _, e := range r.exts {
		if e != nil {
			e.orphan = true
		}
	}
}
