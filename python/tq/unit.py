"""A storage unit as a client sees it: its data plane over TCP or, on the
same host, over its unix socket with its memfd segments mapped (wire/spec.md,
"Data plane" and "Shared memory")."""

from __future__ import annotations

import collections
import fcntl
import inspect
import mmap
import os
import socket
import struct
import threading
import time
import weakref

import numpy as np

from . import _fork
from . import addrs as _addrs
from .bufpool import alloc
from . import errors
from . import wire
from ._pb import control_pb2, data_pb2


def _weakly(f):
    """``f``, holding its object weakly when it is a bound method. A pool
    is its owner's (a client's, a unit's), and its dial is the owner's
    method: held as it is, owner and pool made a reference cycle, and an
    owner dropped without close() kept its connections and mappings open
    until the cyclic collector ran. Called once the owner is gone, it
    raises ClosedError."""
    if f is None or not inspect.ismethod(f):
        return f
    m = weakref.WeakMethod(f)
    what = f"{type(f.__self__).__name__}.{f.__name__}"

    def call(*args, **kw):
        g = m()
        if g is None:
            raise errors.ClosedError(f"{what}: its {what.split('.')[0]} was dropped (garbage)")
        return g(*args, **kw)
    return call


class Pool:
    """Idle connections to one address, handed out one caller at a time.
    ``before_take``, when given, runs (outside the pool's lock) before each
    connection is handed out. A forked child never gets one its parent
    dialed (it closed its copies of the parent's sockets, see wire.Conn):
    it dials its own. A bound method given as either is held weakly (see
    _weakly). With ``cut_dials``, each dial (the pool's, or take's) is
    called with ``on_connect`` (see wire.Conn), so that cut() closes the
    dials in progress too."""

    def __init__(self, dial, before_take=None, cut_dials=False):
        self._dial = _weakly(dial)
        self._cut_dials = cut_dials
        # Connections being dialed (their handshake not done): cut()
        # closes them too, with cut_dials.
        self._dialing = set()
        self._before_take = _weakly(before_take)
        self._idle = []
        # Connections a call() is in flight on, which close() closes too
        # (not those taken by take(): a lease holds its connection past
        # close, its view valid until released).
        self._calling = set()
        # Connections handed out by take() and not given back yet (calls,
        # leases, reservations): cut() closes them.
        self._out = set()
        self._lock = threading.Lock()
        self._closed = False
        _fork.reinit_in_child(self)

    def _reinit_in_child(self) -> None:
        # The idle connections stay, closed (a child closes its copies of
        # the parent's sockets, see wire.Conn): take drops them, and give
        # keeps none of them. The parent's calls in flight are not here.
        self._calling = set()
        self._out = set()
        self._dialing = set()
        self._lock = threading.Lock()

    def take(self, dial=None) -> wire.Conn:
        """An idle connection, or one ``dial`` (the pool's own dial if
        None) makes."""
        if self._before_take is not None:
            self._before_take()
        with self._lock:
            if self._closed:
                raise errors.ClosedError("client is closed (Client.close() or tq.close() was called)")
            while self._idle:
                c = self._idle.pop()
                if not c.closed and c.pid == os.getpid() and time.monotonic() - c.last_used < wire.IDLE_REDIAL_S:
                    self._out.add(c)
                    return c
                c.close()
        c = self._dial_watched(dial or self._dial)
        with self._lock:
            self._out.add(c)
        return c

    def _dial_watched(self, dial) -> wire.Conn:
        """dial(), with cut_dials one that cut() closes while it dials: a
        peer gone silent with its connections open (see Unit.silent)
        accepts a connection but never answers its handshake, which would
        wait out the client's timeout."""
        if not self._cut_dials:
            return dial()
        mine = []

        def started(c):
            with self._lock:
                self._dialing.add(c)
                mine.append(c)
        try:
            return dial(on_connect=started)
        finally:
            with self._lock:
                for c in mine:
                    self._dialing.discard(c)

    def give(self, c: wire.Conn) -> None:
        with self._lock:
            self._out.discard(c)
            if any(x is c for x in self._idle):
                # Given back twice (a caller's bug, as two threads ending
                # one lease or reservation were): kept once, or two
                # callers would take it and mix their frames.
                return
            if self._closed or c.closed or c.pid != os.getpid() or len(self._idle) >= 16:
                c.close()
                return
            self._idle.append(c)

    def call(self, *args, dial=None, **kw):
        """Call on a connection of take(dial)'s."""
        c = self.take(dial)
        with self._lock:
            closed = self._closed
            self._calling.add(c)
        try:
            if closed:  # closed since the take: close() did not see c
                raise errors.ClosedError("client is closed (Client.close() or tq.close() was called)")
            return c.call(*args, **kw)
        except (errors.UnavailableError, errors.ClosedError):
            # The peer went away (or is going): the idle connections are
            # most likely to the same dead process, and each would fail a
            # call of its own. The next call dials afresh.
            self.drop_idle()
            raise
        finally:
            with self._lock:
                self._calling.discard(c)
            self.give(c)

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._closed

    def keep(self) -> None:
        """Keep a live connection to the peer for a client it must see
        connected (the controller gives back the rows a client holds once
        all its connections were closed from its side, or never came back
        after a restart, for its grace): the idle connections the peer
        closed are dropped, and one is dialed when none is left idle."""
        with self._lock:
            if self._closed:
                return
            live = []
            for c in self._idle:
                if c.closed or c.pid != os.getpid() or c.peer_closed():
                    c.close()
                else:
                    live.append(c)
            self._idle = live
            if live:
                return
        self.give(self._dial())

    def drop_idle(self) -> None:
        """Close the idle connections (those in use are closed when they fail)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    def cut(self) -> None:
        """Close every connection of the pool, idle or handed out: each call
        in flight on one wakes and fails (ClosedError). The pool stays open:
        the next call dials afresh. For a peer that went silent with its
        connections open (see Unit.silent)."""
        with self._lock:
            idle, self._idle = self._idle, []
            out = list(self._out) + list(self._dialing)
        for c in idle + out:
            c.close()

    def close(self) -> None:
        """Close the idle connections, and those calls are in flight on:
        each such call wakes and fails with ClosedError (a blocking fetch
        does not wait out its timeout on a closed client)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            calling = list(self._calling)
        for c in idle + calling:
            c.close()


def _segment_limit() -> int:
    """The largest segment a unit is mapped from: this host's physical
    memory. A unit's segment is at most its capacity, which tq serve keeps
    within the host's memory; a larger memfd, sealed and sparse, is a
    hostile unit's, and MAP_POPULATE would fault its pages in here until
    the host ran out."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 1 << 62


# A fetch the unit answers busy (status 6: other fetches in flight, or out
# of descriptors for now) is asked again, up to FD_BUSY_TRIES times,
# waiting FD_BUSY_WAIT_S after the first, doubling up to
# FD_BUSY_MAX_WAIT_S (about 2.3 s in all), as the Go client does.
FD_BUSY_TRIES = 10
FD_BUSY_WAIT_S = 0.005
FD_BUSY_MAX_WAIT_S = 1.0


class _FdBusy(errors.CapacityError):
    """The fd socket answered status 6: try again."""


def _recv_fd(path: str, segment: int, token: str, incarnation: int = 0):
    """Fetch a segment's memfd from a unit's fd socket: (fd, size, huge).
    With ``incarnation``, only from that run of the unit: a unit restarted
    at the same path numbers its segments anew (LostError). A unit that
    answers busy is asked again (FD_BUSY_TRIES); still busy, CapacityError
    saying how often it was asked."""
    wait = FD_BUSY_WAIT_S
    for n in range(1, FD_BUSY_TRIES + 1):
        try:
            return _recv_fd_once(path, segment, token, incarnation)
        except _FdBusy as e:
            if n == FD_BUSY_TRIES:
                raise errors.CapacityError(f"{e.message} (asked {n} times)") from None
        time.sleep(wait)
        wait = min(2 * wait, FD_BUSY_MAX_WAIT_S)


def _recv_fd_once(path: str, segment: int, token: str, incarnation: int = 0):
    """One exchange of _recv_fd."""
    tok = token.encode()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fds = []
    try:
        s.settimeout(10)
        s.connect(path)
        if incarnation:
            s.sendall(b"TQF2" + struct.pack("<IQH", segment, incarnation, len(tok)) + tok)
        else:
            s.sendall(b"TQF1" + struct.pack("<IH", segment, len(tok)) + tok)
        msg, fds, _, _ = socket.recv_fds(s, 16, 1, socket.MSG_CMSG_CLOEXEC)
        while len(msg) < 16:
            more = s.recv(16 - len(msg))
            if not more:
                break
            msg += more
    except OSError as e:
        for fd in fds:  # received with a reply cut short
            os.close(fd)
        raise errors.UnavailableError(f"fd socket {path}: {e}") from None
    finally:
        s.close()
    if len(msg) != 16 or msg[:4] != b"TQF1":
        for fd in fds:
            os.close(fd)
        raise errors.CorruptError(f"fd socket {path}: bad reply")
    status, flags, _, size = struct.unpack("<BBHQ", msg[4:])
    if status != 0:
        for fd in fds:
            os.close(fd)
        why = {1: "wrong or missing token", 2: "no live segment with that id", 3: "malformed request",
               4: "the unit is closing", 5: "the unit offers no control ring",
               6: "the unit is busy (too many fetches pending, or out of descriptors): try again",
               7: "another run of the unit answers there (it restarted)"}.get(status, f"status {status}")
        cls = {1: errors.UnauthenticatedError, 2: errors.NotFoundError, 3: errors.InvalidError,
               4: errors.ClosedError, 5: errors.NotSupportedError, 6: _FdBusy,
               7: errors.LostError}.get(status, errors.TQError)
        raise cls(f"fd socket {path}: segment {segment}: {why}")
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise errors.CorruptError(f"fd socket {path}: {len(fds)} fds with the reply")
    # A memfd its sender may still shrink would let it take pages from
    # under a mapping (SIGBUS on the next touch): sealed or refused, as
    # the Go client does.
    want = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
    try:
        seals = fcntl.fcntl(fds[0], fcntl.F_GET_SEALS)
    except OSError as e:
        seals, why = 0, f" ({e})"
    else:
        why = ""
    if seals & want != want:
        os.close(fds[0])
        raise errors.CorruptError(f"fd socket {path}: segment {segment}: memfd not sealed against resizing "
                                  f"(seals {seals:#x}{why})")
    return fds[0], size, bool(flags & 1)


def _stale(fn):
    """Unit reads: a range the unit no longer holds is a StaleError; a unit
    that cannot be reached, or that answered closed (it is shutting down),
    is a UnitLostError, as the Go client's read says ErrLost. A
    ClosedError once this client closed the unit (Client.close, or the unit
    leaving its table) stays one: the cells are not known lost."""
    import functools

    @functools.wraps(fn)
    def wrapped(*a, **kw):
        try:
            return fn(*a, **kw)
        except errors.StaleError:
            raise
        except errors.NotFoundError as e:
            raise errors.StaleError(e.message, op=e.op, partition=e.partition, keys=e.keys, fields=e.fields) from None
        except errors.UnitLostError:
            raise
        except errors.UnavailableError as e:
            raise errors.UnitLostError(f"storage unit {a[0].id} is unreachable: {e.message}", op=e.op) from None
        except errors.ClosedError as e:
            if a[0].pool.closed:
                raise  # this client (or its table) closed the unit: the read failed for that
            raise errors.UnitLostError(f"storage unit {a[0].id} is closed (its memory went with it), its cells "
                                       f"are lost to this read: {e.message}", op=e.op) from None
    return wrapped


def _watched(fn):
    """Unit calls that wait on the unit (reads, leases, writes): run under
    the client's watcher (Unit.watcher, see Client._watch_unit), which cuts
    the call off once the controller reports the unit dead while the call
    waits, and fails it with an error naming the unit."""
    import functools

    @functools.wraps(fn)
    def wrapped(self, *a, **kw):
        w = self.watcher
        if w is None or self.shm and fn.__name__ in _SHM_LEASED:
            return fn(self, *a, **kw)
        return w(self, fn.__name__, lambda: fn(self, *a, **kw))
    return wrapped


# Reads that, over shared memory, wait on the unit only in acquire (itself
# watched): watched over TCP only, a call watched once.
_SHM_LEASED = ("read", "read_many")


# How often the sweeper thread gives back the leases that ended as garbage
# on units no call used since (see Lease).
ORPHAN_SWEEP_S = 1.0

# How often a unit whose segments this process maps is asked which of them
# it still has, so that the mappings of those it dropped go (see
# Unit._forget_dropped), besides at once after a new segment is mapped: the
# unit drops empty segments when it grows, which another client may make it
# do, and this one, having mapped every segment the unit had, may never map
# a new one. The sweeper thread asks, not the caller's calls. As the Go
# client's sweepEvery.
SEGMENT_SWEEP_S = 5.0

# How long the sweeper waits for a unit's answer to that ask (and for a
# connection to it, when none is idle), not the client's timeout: the
# sweeper is one thread for every unit of the process, and a unit that
# takes the ask and never answers (its process stopped) would hold the
# other units' sweeps (their orphaned leases) for the whole timeout,
# round after round.
SEGMENT_ASK_S = 2.0

_sweep_lock = threading.Lock()
# Units that handed out a Lease or map segments, closed ones too (a view
# may outlive its client): they leave when they are garbage. Guarded by
# _sweep_lock.
_sweep_units = weakref.WeakSet()
_sweeper = None  # the sweeper thread, started by the first Lease or mapping


def _sweep_forever():
    while True:
        time.sleep(min(ORPHAN_SWEEP_S, SEGMENT_SWEEP_S))
        with _sweep_lock:
            if _sweeper is not threading.current_thread():
                return  # replaced (a test): one sweeper runs at a time
            units = list(_sweep_units)
        # Popped, each held only while it is swept: a loop variable would
        # hold the round's last unit through the sleep and into the next
        # round, and a dropped client's unit (its mappings, connections)
        # would never go.
        while units:
            _sweep_one(units.pop())


def _sweep_one(u) -> None:
    # Each is best-effort: the sweeper goes on; the unit's next call meets
    # the error, and the next round asks again.
    if u.orphans:
        try:
            u.give_back_orphans()
        except Exception:
            pass
    try:
        if u.segments_due():
            u._forget_dropped(timeout=SEGMENT_ASK_S)
    except Exception:
        pass


def _sweep(unit) -> None:
    """Have the sweeper look at ``unit``'s orphans and segments, starting it
    if need be."""
    global _sweeper
    with _sweep_lock:
        _sweep_units.add(unit)
        if _sweeper is None:
            # Kept only once it started: a start that failed (no thread
            # left to the process, for a moment) is tried again by the
            # next Lease, not taken for a sweeper that runs.
            t = threading.Thread(target=_sweep_forever, name="tq-lease-sweeper", daemon=True)
            t.start()
            _sweeper = t


def _after_fork() -> None:
    # The child has no sweeper thread (nor the lock's holder, if any), and
    # the parent's units are the parent's to sweep: the child gives back
    # only the leases it took (Lease.pid), on connections it dialed. Nor
    # has it the stripe threads: a pool that counts them idle would take
    # work no thread runs, so the child starts its own.
    global _sweep_lock, _sweep_units, _sweeper, _executor, _executor_lock
    _sweep_lock, _sweep_units, _sweeper = threading.Lock(), weakref.WeakSet(), None
    _executor, _executor_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


class Lease:
    """A lease on ranges of a unit (ACQUIRE), held by a :class:`View` and by
    every array viewing its memory (through their buffers' base), so that it
    ends when the view is released, or else when the view and the last such
    array are garbage. A lease that ends as garbage is handed to its unit
    (no I/O runs inside the garbage collector), which gives it back at its
    next call, or within ORPHAN_SWEEP_S by a background thread if none
    comes: the unit does not end an idle same-host connection that holds a
    lease, so a client that stops reading would pin the extents until it
    exits. A lease belongs to the process that took it: in a child forked
    without exec, releasing an inherited view, or its becoming garbage,
    gives nothing back (the parent may still read through it); the
    parent's own release does, and so does its exit, children or not: a
    child closes its copies of the parent's connections as it starts
    (wire.Conn), so the unit, which keeps a connection's holds while its
    socket is open, sees the parent go. An inherited view stays mapped in
    the child, but only the parent's lease holds its bytes: once the
    parent releases it or exits, the unit may reuse them. A child that
    reads on takes a view (or a copy) of its own."""

    __slots__ = ("unit", "conn", "lease", "_once", "pid", "__weakref__")

    def __init__(self, unit, conn, lease):
        self.unit, self.conn, self.lease = unit, conn, lease
        # Taken, never let go, by whichever of release and __del__ ends the
        # lease first: a lock's non-blocking acquire is one atomic
        # test-and-set, so two threads releasing at once (a view released
        # by two threads, or by one while another drops it) give the lease
        # back once, and its connection to the pool once (given twice, two
        # callers would take the same connection). It never waits, so the
        # collector cannot find it held by __del__.
        self._once = threading.Lock()
        self.pid = os.getpid()
        try:
            _sweep(unit)
        except BaseException:
            # The sweeper did not start (no thread left): the caller has no
            # Lease to release, so this one gives the lease back itself.
            self.release()
            raise

    @property
    def done(self) -> bool:
        """Whether the lease ended (released, or handed to its unit as garbage)."""
        return self._once.locked()

    def release(self) -> None:
        """Give the lease back, once: safe from any thread, and again."""
        if not self._once.acquire(blocking=False):
            return
        if self.pid == os.getpid():
            self.unit.release(self.conn, self.lease)

    def __del__(self):
        once = getattr(self, "_once", None)  # None: __init__ did not get that far
        if once is not None and once.acquire(blocking=False) and self.pid == os.getpid():
            self.unit.orphans.append((self.conn, self.lease))


class _Leased:
    """The base of an array that views ``pin``'s bytes: it holds ``pin``
    (the mapping) and ``lease`` as long as the array, or an array taken
    from it, lives. (Not a ctypes array: each length would make a ctypes
    type, which only the cyclic collector frees, a type referring to
    itself.)"""

    __slots__ = ("__array_interface__", "_pin", "_lease")

    def __init__(self, pin: np.ndarray, lease):
        self._pin, self._lease = pin, lease
        self.__array_interface__ = {"version": 3, "shape": pin.shape, "typestr": "|u1",
                                    "data": (pin.__array_interface__["data"][0], True)}


# How long past its timeout a write that waits for room still waits for
# the unit's answer (as the Go transports' grace): a unit that answers late
# (a loaded host) may have taken room for it, which a dropped connection
# would leave to nobody (an extent written over TCP stays until
# reconciliation frees it).
ROOM_GRACE = 1.0


def room_wait_ms(timeout) -> int:
    """WriteRequest.wait_ms (ReserveRequest's) for a call that waits at
    most ``timeout`` seconds (None: the unit's reserve wait, 0): a little
    less, so that a unit with no room refuses (CapacityError) before the
    call gives up and drops its connection, which would leave the unit to
    take the room that comes next for nobody."""
    if timeout is None:
        return 0
    return max(1, int((timeout - min(timeout / 4, 0.25)) * 1000))


class Unit:
    """One storage unit. Safe for concurrent use."""

    def __init__(self, info, *, token: str, name: str, host: str, transport: str, timeout: float,
                 require_server_proof: bool = False):
        self.id = info.unit_id
        self.incarnation = info.incarnation
        self.capacity = info.capacity  # bytes: a row larger than every unit's never fits
        self.host_id = info.host_id
        self.alive = info.alive
        # A draining unit (tq unit drain) takes no new placements; its
        # cells are being moved off, and it stays readable.
        self.draining = info.draining
        # Set by the client when the controller reported the unit dead
        # while a call to it went unanswered (a hung process, a host cut
        # off the network, its connections open), cleared when a list
        # reports it alive again; and the client's watcher, through which
        # each call that waits on the unit runs (see _watched).
        self.silent = False
        self.watcher = None
        self.token = token
        self.shm = False
        # segment id → (read-write mmap, read-only mmap), of the unit's
        # live segments and of the ones it dropped since this client last
        # asked (_forget_dropped).
        self._segs = {}
        # When this client last asked the unit for its live segments, and
        # whether the sweeper of this process looks at the unit.
        self._looked = time.monotonic()
        self._watched = False
        # (conn, lease) of leases that ended as garbage: Lease.__del__
        # appends (a deque's append and popleft are atomic, and take no lock
        # the collector could find held), give_back_orphans pops.
        self.orphans = collections.deque()
        self._seg_lock = threading.Lock()
        _fork.reinit_in_child(self)
        self.fd_socket = ""
        self._fd_token = ""  # what the fd socket is sent for the token
        addr = None
        if transport in ("auto", "shm") and info.host_id == host:
            # Sockets only in a directory no other user may write to (see
            # wire.private_socket): elsewhere, TCP.
            ux = [a for a in info.addrs if a.startswith("unix://") and wire.private_socket(a[7:])]
            if ux and any(a.startswith("shm://") for a in info.addrs):
                addr = ux[0]
                self.shm = True
        if addr is None:
            if transport == "shm":
                raise errors.NotSupportedError(f"unit {self.id}: no shared memory from this host (transport='shm')")
            tcp = [a for a in info.addrs if a.startswith("tcp://")]
            if not tcp:
                raise errors.UnavailableError(f"unit {self.id} has no address this client can reach: {list(info.addrs)}")
            addr = tcp[0]
        self.addr = addr
        self.transport = "shm" if self.shm else "tcp"
        # Every call on the unit takes a connection: it first gives the
        # orphaned leases back (_before_call).
        self._dial_args = dict(token=token, name=name, timeout=timeout, require_server_proof=require_server_proof)
        self.pool = Pool(self._dial, before_take=self._before_call, cut_dials=True)
        if self.shm:
            c = self.pool.take()
            try:
                rep = c.call(wire.SHM_SEGMENTS, None, data_pb2.ShmSegmentsReply, op_name="shm segments")
                # The fd socket gets the token in clear, at the path the unit
                # names: only a unit that proved it knows the token may have
                # it (one that did not has no token, and asks for none), and
                # only at a socket no other user may have put there.
                self._fd_token = token if c.server_proved and wire.private_socket(rep.fd_socket) else ""
            finally:
                self.pool.give(c)
            self.fd_socket = rep.fd_socket

    def _dial(self, **kw) -> wire.Conn:
        return wire.Conn(self.addr, unit_id=self.id, incarnation=self.incarnation, **self._dial_args, **kw)

    def _dial_within(self, timeout: float, **kw) -> wire.Conn:
        """A connection dialed (handshake included) within ``timeout``,
        whose calls then wait the client's timeout, as _dial's do."""
        c = wire.Conn(self.addr, unit_id=self.id, incarnation=self.incarnation,
                      **dict(self._dial_args, timeout=timeout), **kw)
        c.timeout = self._dial_args["timeout"]
        return c

    def _reinit_in_child(self) -> None:
        # The mappings stay: the child inherited them, views included. The
        # child's sweeper (none yet) looks at the unit once the child
        # calls it (_before_call) or maps a segment of its own: a forked
        # worker that never calls the unit dials it for no sweep.
        self._seg_lock = threading.Lock()
        self._watched = False

    def _before_call(self) -> None:
        """Run as each call takes a connection: give the orphaned leases
        back, and have this process's sweeper look at a unit whose
        segments it maps (a forked child's, after fork)."""
        self.give_back_orphans()
        if self._segs and not self._watched:
            self._watch()

    def _watch(self) -> None:
        """Have the sweeper look at this unit (its segments). Best-effort:
        a sweeper that cannot start (no thread left to the process, for a
        moment) is tried again at the next call."""
        try:
            _sweep(self)
        except Exception:
            return
        self._watched = True

    def segments_due(self) -> bool:
        """Whether the unit should be asked for its live segments: this
        client maps some, it is open, and SEGMENT_SWEEP_S passed since it
        last asked."""
        return bool(self._segs) and not self.pool.closed and \
            time.monotonic() - self._looked >= SEGMENT_SWEEP_S

    def close(self) -> None:
        self.give_back_orphans()
        self.pool.close()
        with self._seg_lock:
            segs, self._segs = self._segs, {}
        for m in (m for pair in segs.values() for m in pair):
            try:
                m.close()
            except BufferError:
                pass  # a view still holds it; the mapping goes when the view does

    # ---- shared memory -------------------------------------------------

    def segment(self, seg: int) -> mmap.mmap:
        """The read-write mapping of segment ``seg`` (fetched and mapped once)."""
        return self._mappings(seg)[0]

    def _mappings(self, seg: int):
        """Segment ``seg``'s two mappings, (read-write, read-only), fetched
        and mapped once. Views go through the read-only one (wire/spec.md,
        "The fd socket"), as the Go client's do: a write through a view (its
        array flagged writable again, a torch tensor over it, which torch
        makes writable) faults instead of changing the cells under every
        other reader of the unit."""
        ms = self._segs.get(seg)
        if ms is not None:
            return ms
        with self._seg_lock:
            ms = self._segs.get(seg)
            if ms is not None:
                return ms
            fd, size, _ = _recv_fd(self.fd_socket, seg, self._fd_token, self.incarnation)
            try:
                # Size and memfd are the unit's to choose: mapped only at
                # the memfd's size (mmap takes 0 as the whole file) and
                # within the host's memory, as the Go client maps them.
                st = os.fstat(fd)
                if st.st_size != size or size == 0:
                    raise errors.CorruptError(
                        f"unit {self.id}: segment {seg}: memfd of {st.st_size} bytes, {size} announced")
                limit = _segment_limit()
                if size > limit:
                    raise errors.CorruptError(f"unit {self.id}: segment {seg}: memfd of {size} bytes, "
                                              f"more than this host's memory ({limit} bytes)")
                # Pre-faulted: first touch of each page would otherwise cost
                # a fault on the hot path (as the Go client maps them).
                flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
                rw = mmap.mmap(fd, size, flags, mmap.PROT_READ | mmap.PROT_WRITE)
                try:
                    ro = mmap.mmap(fd, size, flags, mmap.PROT_READ)
                except BaseException:
                    rw.close()
                    raise
            finally:
                os.close(fd)
            self._segs[seg] = ms = (rw, ro)
        self._watch()
        self._forget_dropped(seg)
        return ms

    def _forget_dropped(self, new: int | None = None, timeout: float | None = None) -> None:
        """Unmap the segments the unit dropped: it drops empty ones when it
        grows, and a memfd's pages go back to the host only when no process
        maps it, so a client that lives for days would keep every segment
        it ever mapped. Asked right after a new segment (``new``) is mapped
        (the unit grew), and by the sweeper every SEGMENT_SWEEP_S (another
        client may have made it grow). It asks the unit for its live
        segments (SHM_SEGMENTS) and closes the mappings, made before it
        asked, of the others: a segment mapped since may be newer than the
        answer. No lease or reservation reaches those (its extents keep
        their segment on the unit), and ids are not reused; a mapping an
        array still views refuses to close (BufferError) and goes when that
        array does. An answer naming no segment at all closes nothing (a
        unit that dropped every segment and is mapping a new one names
        none, as would a wrong unit; a closed one answers ClosedError): a
        later sweep asks again, as it does after any failed ask. With
        ``timeout`` (the sweeper's SEGMENT_ASK_S), the ask, and a dial if
        no connection is idle, wait that long, not the client's timeout.
        Called without _seg_lock (the call waits on the unit)."""
        with self._seg_lock:
            mapped = dict(self._segs)
        if not mapped:
            return
        self._looked = time.monotonic()
        try:
            rep = self.pool.call(wire.SHM_SEGMENTS, None, data_pb2.ShmSegmentsReply, op_name="shm segments",
                                 timeout=timeout,
                                 dial=None if timeout is None else (lambda **kw: self._dial_within(timeout, **kw)))
        except errors.TQError:
            return
        live = {s.id for s in rep.segments}
        if not live:
            return
        drops = []
        with self._seg_lock:
            for seg, ms in mapped.items():
                # Unless mapped anew (or closed) meanwhile.
                if seg != new and seg not in live and self._segs.get(seg) is ms:
                    del self._segs[seg]
                    drops.extend(ms)
        for m in drops:
            try:
                m.close()
            except BufferError:
                pass

    def seg_view(self, seg: int, offset: int, nbytes: int, holder) -> np.ndarray:
        """A read-only uint8 array over ``nbytes`` of segment ``seg`` at
        ``offset``, in the read-only mapping, whose buffer keeps ``holder``
        (a :class:`Lease`) alive."""
        if nbytes == 0:
            return np.empty(0, dtype=np.uint8)
        # pin holds the mapping open (an mmap with an export refuses to
        # close) as long as the array does; the array's base carries the
        # lease.
        pin = self._array(seg, offset, nbytes, ro=True)
        a = np.asarray(_Leased(pin, holder))
        a.flags.writeable = False
        return a

    def give_back_orphans(self) -> None:
        """Release the leases that ended as garbage, each on its own
        connection (which only that lease held). Safe from any thread: each
        orphan is popped by one. In a forked child, the orphans the parent
        had not yet given back are dropped: they are the parent's."""
        while self.orphans:
            try:
                conn, lease = self.orphans.popleft()
            except IndexError:
                return
            if conn.pid != os.getpid():
                continue
            try:
                self.release(conn, lease)
            except errors.TQError:
                pass

    def seg_array(self, seg: int, offset: int, nbytes: int) -> np.ndarray:
        """A uint8 array over ``nbytes`` of segment ``seg`` at ``offset``."""
        if nbytes == 0:
            return np.empty(0, dtype=np.uint8)  # an empty cell names no segment
        return self._array(seg, offset, nbytes)

    def _array(self, seg: int, offset: int, nbytes: int, ro: bool = False) -> np.ndarray:
        """A uint8 array over ``nbytes`` of segment ``seg``'s mapping
        (read-only with ``ro``) at ``offset``, once the range is checked to
        lie in it (CorruptError naming the range otherwise). The array's
        export holds the mapping open: a sweep's close refuses it.

        The table is read without the lock, so a sweep may close the
        mapping between that read and the array. It closes only segments
        the unit says it dropped, which no lease or reservation reaches: a
        correct unit names every segment the caller's lease or reservation
        reaches, so only a wrong answer does that. The segment is then
        fetched again: a unit that still has it hands it over, one that has
        not says so naming it (NotFoundError, a read's StaleError). Closed
        by Unit.close, it is ClosedError."""
        for _ in range(2):
            m = self._mappings(seg)[1 if ro else 0]
            try:
                size = len(m)
                if offset < 0 or nbytes < 0 or offset + nbytes > size:
                    raise errors.CorruptError(f"storage unit {self.id}: range [segment {seg} offset {offset} len "
                                              f"{nbytes}] outside the segment's {size} bytes")
                return np.frombuffer(m, dtype=np.uint8, count=nbytes, offset=offset)
            except ValueError:
                if not m.closed:
                    raise
            if self.pool.closed:
                raise errors.ClosedError(f"storage unit {self.id} is closed (Client.close()), its segment {seg} "
                                         f"unmapped")
            with self._seg_lock:
                ms = self._segs.get(seg)
                if ms is not None and m in ms:
                    del self._segs[seg]  # closed and left there: fetched afresh
        raise errors.CorruptError(f"storage unit {self.id}: segment {seg}: its mapping was closed under this call "
                                  f"twice (the unit said it dropped the segment, which this call's lease or "
                                  f"reservation reaches)")

    # ---- data plane ----------------------------------------------------
    #
    # A call waits the client's timeout (Client(timeout=)) for each socket
    # operation, over TCP as over shm: the timeout bounds each send and
    # recv, not the transfer, so a large read or write that keeps moving
    # needs no floor by its size, and a unit that stops answering fails the
    # call (DeadlineError) within the client's timeout.

    @_watched
    def write(self, cols, no_wait=False, timeout=None):
        """Put each column's bytes in an extent of its own; returns one
        (segment, gen, offset) per column. Over shm: RESERVE, copy into the
        mapping, RESERVE_COMMIT; over tcp: one WRITE. With ``no_wait`` a
        full unit refuses at once (CapacityError) instead of waiting for
        room (up to its reserve wait, 5 s), and nothing of the write stays.
        ``timeout``: what each socket operation waits, instead of the
        client's timeout (a put waiting for room with less time left); a
        write that waits for room waits ROOM_GRACE more for the answer."""
        sizes = [c.nbytes for c in cols]
        if timeout is None:
            timeout = self._dial_args["timeout"]
        wait_ms = room_wait_ms(timeout)
        if not no_wait and timeout is not None:
            timeout += ROOM_GRACE
        if self.shm:
            conn = self.pool.take()
            try:
                rep = conn.call(wire.RESERVE, data_pb2.ReserveRequest(sizes=sizes, no_wait=no_wait,
                                                                      wait_ms=wait_ms),
                                data_pb2.ReserveReply, op_name="reserve", timeout=timeout)
                try:
                    ext = _addrs.expand(rep.extents, len(cols), self.id)
                    for i, c in enumerate(cols):
                        if not sizes[i]:
                            continue
                        dst = self.seg_array(int(ext.segment[i]), int(ext.offset[i]), sizes[i])
                        at = 0
                        for b in c.bufs:
                            src = np.frombuffer(memoryview(b).cast("B"), dtype=np.uint8) if not isinstance(b, np.ndarray) \
                                else b.reshape(-1).view(np.uint8)
                            pcopy(dst[at:at + len(src)], src)
                            at += len(src)
                    conn.call(wire.RESERVE_COMMIT, data_pb2.ReservationRequest(reservation=rep.reservation), None,
                              op_name="reserve commit")
                except BaseException:
                    if not conn.closed:
                        try:
                            conn.call(wire.RESERVE_ABORT, data_pb2.ReservationRequest(reservation=rep.reservation),
                                      None, op_name="reserve abort")
                        except errors.TQError:
                            pass
                    raise
            finally:
                self.pool.give(conn)
        else:
            def one(group):
                payload = [b for i in group for b in cols[i].bufs]
                gs = [sizes[i] for i in group]
                rep = self.pool.call(wire.WRITE, data_pb2.WriteRequest(sizes=gs, no_wait=no_wait,
                                                                       wait_ms=wait_ms), data_pb2.WriteReply,
                                     payload=payload, op_name="write", timeout=timeout)
                return _addrs.expand(rep.extents, len(group), self.id)
            def caught(group):
                try:
                    return one(group), None
                except errors.TQError as e:
                    return None, e
            groups = _stripes(sizes)
            # A caller interrupted while the stripes are written frees
            # each stripe written after it gave up, as it ends.
            results = _parallel(caught, groups, abandon=lambda r: r[0] is not None and len(r[0]) and
                                self._free_quietly(r[0]))
            failed = [e for _, e in results if e is not None]
            if failed:
                # One stripe refused (no room, a broken connection): the
                # others' extents would be nobody's until reconciliation.
                done = [p for p, _ in results if p is not None and len(p)]
                if done:
                    try:
                        self.free(_addrs.Cells.concat(done))
                    except errors.TQError:
                        pass
                raise failed[0]
            parts = [p for p, _ in results]
            ext = _addrs.Cells.concat(parts)
            order = np.argsort(np.concatenate([np.asarray(g, dtype=np.int64) for g in groups]), kind="stable")
            ext = ext.take(order)
        return ext

    @_stale
    @_watched
    def read(self, cells: _addrs.Cells, into=None):
        """The bytes of ``cells`` back to back (into ``into`` when given)."""
        total = int(cells.len.sum())
        buf = into if into is not None else alloc(total)
        if total == 0:
            return buf
        if self.shm:
            return self._read_shm(cells, buf)
        req = data_pb2.ReadRequest(ranges=_addrs.ranges_pb([cells]))
        self.pool.call(wire.READ, req, None, into=buf, op_name="read")
        return buf

    @_stale
    @_watched
    def read_many(self, cells_list, bufs) -> None:
        """Read each Cells of ``cells_list`` into the matching buffer of
        ``bufs`` (exactly its size): one READ, or one lease over shm."""
        if sum(int(c.len.sum()) for c in cells_list) == 0:
            return
        if self.shm:
            conn, lease = self.acquire(cells_list)
            try:
                for cells, buf in zip(cells_list, bufs):
                    at = 0
                    for seg, off, ln in _runs(cells):
                        pcopy(buf[at:at + ln], self.seg_array(seg, off, ln))
                        at += ln
            finally:
                self.release(conn, lease)
            return
        def one(group):
            parts = [cells_list[i] for i in group]
            total = sum(int(c.len.sum()) for c in parts)
            if total == 0:
                return
            req = data_pb2.ReadRequest(ranges=_addrs.ranges_pb(parts))
            self.pool.call(wire.READ, req, None, into=[bufs[i] for i in group if len(bufs[i])], op_name="read")
        _parallel(one, _stripes([int(c.len.sum()) for c in cells_list]))

    @_stale
    @_watched
    def acquire(self, cells):
        """Lease ``cells`` (a Cells or a list of them) for reading in place:
        (conn, lease id)."""
        ranges = _addrs.ranges_pb(cells if isinstance(cells, list) else [cells])
        conn = self.pool.take()
        try:
            rep = conn.call(wire.ACQUIRE, data_pb2.AcquireRequest(ranges=ranges),
                            data_pb2.AcquireReply, op_name="acquire")
        except BaseException:
            self.pool.give(conn)
            raise
        return conn, rep.lease

    def release(self, conn, lease) -> None:
        """Give a lease back. Its reply is not waited for (it is read before
        the connection's next request): nothing the caller does depends on
        it, and the unit releases the lease in order, before that request."""
        try:
            conn.send_only(wire.RELEASE, data_pb2.ReleaseRequest(lease=lease))
        finally:
            self.pool.give(conn)

    def _read_shm(self, cells, buf):
        conn, lease = self.acquire(cells)
        try:
            dst = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf.reshape(-1).view(np.uint8)
            at = 0
            for seg, off, ln in _runs(cells):
                pcopy(dst[at:at + ln], self.seg_array(seg, off, ln))
                at += ln
        finally:
            self.release(conn, lease)
        return buf

    def _free_quietly(self, cells: _addrs.Cells) -> None:
        """free, its error dropped (the unit's reconciliation frees what no
        cell names)."""
        try:
            self.free(cells)
        except errors.TQError:
            pass

    def free(self, cells: _addrs.Cells) -> None:
        self.pool.call(wire.FREE, data_pb2.FreeRequest(cells=_addrs.to_pb(cells, with_unit=False)), None,
                       op_name="free")


def _runs(cells: _addrs.Cells):
    """(segment, offset, nbytes) of the back-to-back stretches of ``cells``."""
    n = len(cells)
    if n == 0:
        return []
    brk = np.ones(n, dtype=bool)
    brk[1:] = (cells.segment[1:] != cells.segment[:-1]) | (cells.offset[1:] != cells.offset[:-1] + cells.len[:-1])
    starts = np.flatnonzero(brk)
    ends = np.append(starts[1:], n)
    cs = np.concatenate([[0], np.cumsum(cells.len, dtype=np.uint64)])
    return [(int(cells.segment[s]), int(cells.offset[s]), int(cs[e] - cs[s])) for s, e in zip(starts, ends)]


# Large transfers over tcp go over several connections at once (the
# socket calls release the GIL), as the Go client stripes them.
STRIPE_MIN = 8 << 20
STRIPES = 4


def _stripes(sizes):
    """Indexes of ``sizes`` in up to STRIPES groups of about equal bytes
    (one group when the total is small), each in order."""
    total = sum(sizes)
    k = min(STRIPES, len(sizes), max(1, total // STRIPE_MIN))
    if k <= 1:
        return [list(range(len(sizes)))]
    groups, load = [[] for _ in range(k)], [0] * k
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        g = load.index(min(load))
        groups[g].append(i)
        load[g] += sizes[i]
    return [sorted(g) for g in groups if g]


_executor = None
_executor_lock = threading.Lock()


def _parallel(fn, groups, abandon=None):
    """[fn(g) for g in groups], on the stripe threads when there are
    several; a group's error is raised (the first in order) once all
    ended. A caller that stops waiting (an interrupt: KeyboardInterrupt, an
    exception a signal handler raised) must not leave threads working for
    it: a group not started by then is not run; with ``abandon``, the
    result of each group that ended, or ends, well is handed to it (on the
    thread that ran it when it ends later), for what the group made to be
    undone; without, the caller waits for the groups running to end before
    the interrupt goes on, so that none still copies into or out of memory
    the caller may reuse or give back."""
    if len(groups) == 1:
        return [fn(groups[0])]
    global _executor
    with _executor_lock:
        if _executor is None:
            from concurrent.futures import ThreadPoolExecutor
            _executor = ThreadPoolExecutor(max_workers=2 * STRIPES, thread_name_prefix="tq-stripe")
    st = _Stripes(fn, len(groups), abandon)
    try:
        for i, g in enumerate(groups):
            # The stripe, not the future, tells whether its caller is
            # still there: an interrupt may land inside submit, after the
            # work was queued and before its future was handed back.
            _executor.submit(st.run, i, g)
        with st.cond:
            while st.ended < len(groups):
                st.cond.wait()
        for e in st.errors:
            if e is not None:
                raise e
        return st.results
    except BaseException:
        with st.cond:
            st.gave_up = True
            ok = [r for r, d, e in zip(st.results, st.done, st.errors) if d and e is None]
        if abandon is not None:
            for r in ok:
                abandon(r)
        else:
            while True:  # through further interrupts: the first one goes on once they ended
                try:
                    with st.cond:
                        while st.running:
                            st.cond.wait()
                    break
                except BaseException:
                    continue
        raise
    finally:
        # An error raised here holds this frame (its traceback) and the
        # stripe thread's frames, whose callers' (f_back: the executor's
        # work item) hold st: neither may lead back to the error, or the
        # reference cycle kept the frames, the stripes' results and the
        # caller's buffers until the cyclic collector ran (see
        # client._wait_to_repeat).
        with st.cond:
            st.errors = [None if x is None else _FAILED for x in st.errors]
        st = e = None


# What a stripe's error becomes in its _Stripes once _parallel is done
# with it (see there).
_FAILED = object()


class _Stripes:
    """The groups of one _parallel call, as their threads and its caller
    see them (under cond)."""

    def __init__(self, fn, n, abandon):
        self.fn, self.abandon = fn, abandon
        self.cond = threading.Condition(threading.Lock())
        self.results, self.errors, self.done = [None] * n, [None] * n, [False] * n
        self.ended = self.running = 0
        self.gave_up = False

    def run(self, i, g):
        with self.cond:
            if self.gave_up:
                return
            self.running += 1
        r = e = None
        try:
            r = self.fn(g)
        except BaseException as x:  # noqa: B036 (handed to the caller, as a future does)
            e = x
        with self.cond:
            self.running -= 1
            self.ended += 1
            self.results[i], self.errors[i], self.done[i] = r, e, True
            late = self.gave_up and e is None and self.abandon is not None
            self.cond.notify_all()
        if late:
            self.abandon(r)
        # An error's traceback holds this frame, which must not lead back
        # to it (e, self.errors): see _parallel.
        del self, e


# Copies of more than PCOPY_MIN bytes are split over threads (numpy releases
# the GIL while it copies): one core's memcpy does not saturate memory.
PCOPY_MIN = 4 << 20
PCOPY_THREADS = max(1, min(4, os.cpu_count() or 1))


def pcopy(dst: np.ndarray, src: np.ndarray) -> None:
    """dst[:] = src (uint8 arrays of one length), in parallel when large."""
    n = len(src)
    k = min(PCOPY_THREADS, n // PCOPY_MIN)
    if k <= 1:
        dst[:] = src
        return
    step = -(-n // k)
    step += -step % 4096

    def one(i):
        dst[i:i + step] = src[i:i + step]
    _parallel(one, list(range(0, n, step)))
