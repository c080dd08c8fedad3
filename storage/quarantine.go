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
//	later       otherwise — the unit hung up on a client that lives (a
//	            refused frame, replies it stopped reading; not its idle
//	            timeout, which spares a session that holds anything
//	            while any process holds its socket: see
//	            session.Holding), or the connection broke under it —
//	            when the client process exits or ServerConfig.Quarantine
//	            passes, whichever comes first.
//
// Holds that cover no byte (a lease of empty ranges, a reservation of no
// or empty sizes) go back at once: the client can touch nothing through
// them.
//
// The client process is known by its pid and a pidfd taken when it
// connects (SO_PEERCRED's pid; SO_PEERPIDFD, else pidfd_open of that
// pid), which names that process and no later one with the same pid. The
// quarantined sessions of one client process share one pidfd and one
// goroutine, which waits for the pidfd to turn readable (the process
// exited) on the runtime's poller, with the earliest session's end as the
// read deadline: a client that ends many sessions costs the unit one fd
// and one goroutine. Sessions whose process is unknown (an old kernel, a
// client in a pid namespace the unit cannot see) share one goroutine that
// only their deadlines end. At most MaxQuarantinedPerProcess sessions of
// one process (those of unknown processes counting as one) are in
// quarantine at once, and at most MaxQuarantined in all. Past either
// bound, a session that ends makes room by giving back the holds of its
// own process's oldest session in quarantine (the closest to its end,
// whose client has had the longest to stop its copies; the session
// ending now is the likeliest to have one in flight), or its own holds
// go back at once when its process has none there; the server logs it.
// The quarantine protects well-behaved clients from a race with their
// own copies, not the unit from its clients (a client given a segment
// can write anywhere in it anyway), so what the bounds keep is fairness:
// a process that ends many sessions uses up only its own share, and a
// few cannot fill the whole.
//
// A reservation in quarantine can no longer commit, as if it had expired
// while held (its Commit fails with engine.ErrInvalid and says it is in
// quarantine): it is no open reservation (Stats.OpenReservations) and its
// extents are not in flight ([Unit.Unsettled]). Quarantined holds stay
// allocated: Used (and so the heartbeats) counts them,
// [Stats.Quarantined] says how many bytes only the quarantine keeps out
// of reuse and [Stats.QuarantinedSessions] of how many sessions
// (UNIT_STATS and the tq_unit_quarantined_* metrics report both), and a
// unit full of them answers RESERVE and WRITE with CODE_CAPACITY, as when
// full, until they end. Server.Close and Server.Shutdown give them back at
// once: waiting would hold the unit's shutdown for the quarantine.

import (
	"errors"
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

// MaxQuarantinedPerProcess bounds the sessions of one client process a
// server holds in quarantine at once (sessions whose process it does not
// know count as one process); past it, each of that process's sessions
// that ends without a goodbye gives back the holds of its oldest one in
// quarantine. A process over its share loses only its own protection.
const MaxQuarantinedPerProcess = 1024

// MaxQuarantined bounds the sessions a server holds in quarantine at once,
// whatever their process (each may hold up to MaxSessionHolds reservations
// and leases): a bound on the memory they take, which 64 processes at
// MaxQuarantinedPerProcess reach. Past it, a session that ends without a
// goodbye gives back the holds of its process's oldest one in quarantine,
// or its own at once when its process has none there.
const MaxQuarantined = 64 * MaxQuarantinedPerProcess

// quarantine is one ended session's holds, kept out of reuse until
// deadline or its client process's exit.
type quarantine struct {
	res      []*Reservation
	leases   []*Lease
	deadline time.Time
}

// procQuarantine is the quarantined sessions of one client process,
// waited for by one goroutine on one pidfd; or, with pid 0 and no pidfd,
// those of processes the unit does not know, which only their deadlines
// end.
type procQuarantine struct {
	pid   int32
	pidfd int      // proc's fd, read under quarantines.mu; -1: none
	proc  *os.File // nil: none
	// sessions, in deadline order (all get the same quarantine), and
	// full: logged that they reached quarantines.maxProc, since they
	// were below. Guarded by quarantines.mu.
	sessions []*quarantine
	full     bool
}

// quarantines are a server's quarantined sessions; Server.Close ends them.
type quarantines struct {
	mu      sync.Mutex
	closed  bool
	max     int                          // MaxQuarantined
	maxProc int                          // MaxQuarantinedPerProcess
	n       int                          // sessions in quarantine
	full    bool                         // logged that n reached max, since it was below
	byPid   map[int32]*procQuarantine    // the processes sessions may join
	procs   map[*procQuarantine]struct{} // every process waited for
	stop    chan struct{}                // closed by endQuarantines
	wg      sync.WaitGroup
}

// peerPidfd returns the pid of the process at the other end of nc (a unix
// socket, or a control ring with its liveness socket) and a pidfd of it,
// or 0 and -1 when the kernel will not say. The fd is close-on-exec.
func peerPidfd(nc net.Conn) (pid int32, pidfd int) {
	if l, ok := nc.(interface{ Link() net.Conn }); ok {
		nc = l.Link()
	}
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return 0, -1
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, -1
	}
	pidfd = -1
	raw.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil || cred.Pid <= 0 {
			return // the pid groups a process's sessions: none without it
		}
		// SO_PEERPIDFD (Linux 6.5) names the process that connected even
		// if it is gone; pidfd_open of its pid could name a later one.
		if pfd, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD); err == nil {
			pid, pidfd = cred.Pid, pfd
			return
		}
		if pfd, err := unix.PidfdOpen(int(cred.Pid), 0); err == nil {
			pid, pidfd = cred.Pid, pfd
		}
	})
	return pid, pidfd
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

// coversBytes reports whether r or l holds any extent.
func (r *Reservation) coversBytes() bool { return r.bytes > 0 }

func (l *Lease) coversBytes() bool {
	for _, ent := range l.ents {
		if ent.e != nil {
			return true
		}
	}
	return false
}

// quarantine keeps the holds of a session that ended without a goodbye
// out of reuse while the client process may still touch them (see the
// top of this file). It takes pidfd (-1: none) of the process pid.
func (s *Server) quarantine(res []*Reservation, leases []*Lease, pid int32, pidfd int) {
	// Holds of no bytes go back now.
	q := &quarantine{}
	for _, r := range res {
		if r.coversBytes() {
			q.res = append(q.res, r)
		} else {
			r.Abort()
		}
	}
	for _, l := range leases {
		if l.coversBytes() {
			q.leases = append(q.leases, l)
		} else {
			l.Release()
		}
	}
	if len(q.res)+len(q.leases) == 0 || pidfd >= 0 && exited(pidfd) {
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
		giveBack(q.res, q.leases)
		return
	}
	if pidfd < 0 {
		pid = 0
	}
	q.deadline = time.Now().Add(s.cfg.Quarantine)
	qs := &s.quar
	qs.mu.Lock()
	// A process waited for that has not exited is this session's: two
	// live processes never share a pid. One that exited is a former
	// process with the pid, whose waiter ends its sessions now.
	p := qs.byPid[pid]
	if p != nil && p.pidfd >= 0 && exited(p.pidfd) {
		p = nil
	}
	// Past a bound, a process that has sessions in quarantine makes room
	// by giving back its own oldest one's holds: the closest to its end,
	// whose client has had the longest to see its connection end and
	// stop its copies; the session ending now is the likeliest to have a
	// copy in flight. One with none there gives this session's back now.
	var evicted *quarantine
	if !qs.closed && p != nil && len(p.sessions) > 0 && (qs.n >= qs.max || len(p.sessions) >= qs.maxProc) {
		var log string
		if qs.n >= qs.max && !qs.full {
			qs.full = true
			log = "storage: quarantine full: a process's oldest session in quarantine gives its holds back when another of its sessions ends without a goodbye, and others' go back at once"
		} else if qs.n < qs.max && !p.full {
			p.full = true
			log = "storage: a client process's share of the quarantine is full: its oldest session's holds go back as another of its sessions ends without a goodbye"
		}
		evicted = p.sessions[0]
		p.sessions[0] = nil
		p.sessions = p.sessions[1:]
		qs.n--
		if log != "" && s.cfg.Logger != nil {
			defer s.cfg.Logger.Warn(log, "sessions", qs.max, "per_process", qs.maxProc, "pid", pid)
		}
	}
	if qs.closed || qs.n >= qs.max {
		// Logged once until there is room again.
		var log string
		if !qs.closed && !qs.full {
			qs.full = true
			log = "storage: quarantine full: the holds of sessions that end without a goodbye go back at once"
		}
		qs.mu.Unlock()
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
		giveBack(q.res, q.leases)
		if log != "" && s.cfg.Logger != nil {
			s.cfg.Logger.Warn(log, "sessions", qs.max, "per_process", qs.maxProc, "pid", pid)
		}
		return
	}
	if qs.byPid == nil {
		qs.byPid = map[int32]*procQuarantine{}
		qs.procs = map[*procQuarantine]struct{}{}
		qs.stop = make(chan struct{})
	}
	if p != nil {
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
	} else {
		p = &procQuarantine{pid: pid, pidfd: -1}
		if pidfd >= 0 {
			p.watch(pidfd)
		}
		qs.byPid[pid] = p
		qs.procs[p] = struct{}{}
		qs.wg.Add(1)
		go func() {
			defer qs.wg.Done()
			s.waitQuarantine(p)
		}()
	}
	p.sessions = append(p.sessions, q)
	qs.n++
	s.u.quarantineHolds(q.res, q.leases)
	qs.mu.Unlock()
	if evicted != nil {
		giveBack(evicted.res, evicted.leases)
		s.u.quarantineEnded()
	}
}

// watch makes pidfd p's, on the runtime's poller: a nonblocking fd there
// wakes a read when it turns readable or its deadline passes. A pidfd the
// poller will not take is closed: only the deadlines end p's sessions.
func (p *procQuarantine) watch(pidfd int) {
	if unix.SetNonblock(pidfd, true) != nil {
		unix.Close(pidfd)
		return
	}
	f := os.NewFile(uintptr(pidfd), "pidfd")
	if f.SetReadDeadline(time.Now().Add(time.Hour)) != nil {
		f.Close()
		return
	}
	p.proc, p.pidfd = f, pidfd
}

// waitQuarantine ends p's sessions as their deadlines pass, all of them
// when the process exits or the server closes, and returns once none is
// left.
func (s *Server) waitQuarantine(p *procQuarantine) {
	qs := &s.quar
	gone := false
	for {
		qs.mu.Lock()
		now, all := time.Now(), gone || qs.closed
		i := 0
		for i < len(p.sessions) && (all || !now.Before(p.sessions[i].deadline)) {
			i++
		}
		due := p.sessions[:i:i]
		p.sessions = p.sessions[i:]
		qs.n -= len(due)
		qs.full = qs.full && qs.n >= qs.max
		p.full = p.full && len(p.sessions) >= qs.maxProc
		last := len(p.sessions) == 0
		var next time.Time
		if last {
			// Gone from the maps before its pidfd closes: nothing joins
			// it, and endQuarantines touches it no more.
			if qs.byPid[p.pid] == p {
				delete(qs.byPid, p.pid)
			}
			delete(qs.procs, p)
		} else {
			next = p.sessions[0].deadline
			if p.proc != nil {
				// Under the lock: endQuarantines' deadline of now wins.
				p.proc.SetReadDeadline(next)
			}
		}
		stop := qs.stop
		qs.mu.Unlock()
		for _, q := range due {
			giveBack(q.res, q.leases)
			s.u.quarantineEnded()
		}
		if last {
			if p.proc != nil {
				p.proc.Close()
			}
			return
		}
		gone = p.wait(next, stop)
	}
}

// wait returns when p's process exits (reporting true), next passes, or
// stop is closed.
func (p *procQuarantine) wait(next time.Time, stop <-chan struct{}) bool {
	if p.proc != nil {
		if raw, err := p.proc.SyscallConn(); err == nil {
			// Read calls the func, and while it says false waits until
			// the fd is readable or the deadline (which endQuarantines
			// moves to now) passes.
			err = raw.Read(func(fd uintptr) bool { return exited(int(fd)) })
			if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				return err == nil
			}
		}
	}
	t := time.NewTimer(time.Until(next))
	defer t.Stop()
	select {
	case <-t.C:
	case <-stop:
	}
	return false
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
		for p := range qs.procs {
			if p.proc != nil {
				p.proc.SetReadDeadline(time.Now())
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
	sessions = qs.n
	qs.mu.Unlock()
	return sessions, s.u.Stats().Quarantined
}

// quarantineHolds counts a session's holds in quarantine. Its
// reservations can no longer commit, as if they had expired while held
// (a Commit says they are in quarantine), and keep their extents until aborted; its leases' extents count in
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
			r.quarOpen = true
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
			was := ent.e.quarantinedOnly()
			ent.e.qrefs++
			u.quarAccount(ent.e, was)
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

// quarantinedOnly reports whether only lease entries in quarantine hold
// e: its cells were all freed, and every other lease released. Such
// extents' bytes are Stats.Quarantined's, kept in u.quarLeased.
func (e *extent) quarantinedOnly() bool { return e.qrefs > 0 && e.refs == e.qrefs }

// quarAccount updates u.quarLeased after e's refs or qrefs changed; was is
// what e.quarantinedOnly reported before. Stats reads the sum and walks
// nothing, however many extents the quarantine holds.
func (u *Unit) quarAccount(e *extent, was bool) {
	if is := e.quarantinedOnly(); is != was {
		if is {
			u.quarLeased += e.blk.size
		} else {
			u.quarLeased -= e.blk.size
		}
	}
}

// unref drops one reference to e (a lease entry, which quarantined says
// is in quarantine, or the cells' once all are freed) and gives e back to
// its segment at none, reporting whether it did. u.mu is held.
func (u *Unit) unref(e *extent, quarantined bool) bool {
	was := e.quarantinedOnly()
	e.refs--
	if quarantined {
		e.qrefs--
	}
	u.quarAccount(e, was)
	if e.refs == 0 {
		u.release(e, true)
		return true
	}
	return false
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
