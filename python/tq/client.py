"""The TQ client: KV and low-level calls over the wire protocol.

A :class:`Client` holds connections to the controller and to the storage
units it has used. It is safe for concurrent use from several threads: each
call takes a connection of its own from a pool.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import random
import socket
import threading
import time
import weakref
import zlib

import numpy as np

from . import _fork
from . import addrs as _addrs
from . import columns as _cols
from . import errors
from . import wire
from ._pb import cluster_pb2, control_pb2, data_pb2
from .meta import BatchMeta, KVBatchMeta, tags_from_json_list, tags_to_json, tags_to_json_list, value_to_json
from .unit import ROOM_GRACE, Lease, Pool, Unit, alloc, room_wait_ms

# The most bytes a KV put or get moves through the controller in one round
# trip (KV_PUT, KV_GET; KV_SET and KV_GET_VALUE for one value of one key);
# larger values go to the units. As the Go client.
KV_INLINE_MAX = 64 << 10
# MOVED_CHUNK bounds the cells of one MOVED request, as the Go client does.
MOVED_CHUNK = 1 << 16

# How often the client asks the controller which storage units are alive
# (when it places a put): a unit that died stops taking writes within this.
UNITS_REFRESH_S = 1.0
# How long a call to a storage unit waits before the client asks the
# controller whether the unit is dead (then again as often): see
# Client._watch_unit.
DEAD_CHECK_S = 2.0
DEAD_LOOK_S = 0.5  # how often the thread that does so looks at the calls in flight
DEAD_IDLE_S = 5.0  # and how long it goes on without calls before it ends


def _sel(fields):
    if fields is None:
        return control_pb2.FieldSelection(all=True)
    if isinstance(fields, str):
        fields = [fields]
    return control_pb2.FieldSelection(names=list(fields))


def _field_list(fields, op: str):
    """``fields`` (one name as a str; None stays None) as a list naming
    each field once. A name that is not a str, or a field named twice, is
    InvalidError naming it, raised before anything is sent, as the Go
    client (checkPartFields) refuses it and as a key named twice is: the
    controller keeps a repeated field once, so a get, fetch or insert
    naming one twice would answer it once, not what the caller asked
    for."""
    if fields is None:
        return None
    if isinstance(fields, str):
        return [fields]
    fields = list(fields)
    for i, f in enumerate(fields):
        if not isinstance(f, str):
            raise errors.InvalidError(f"field {i + 1} of {len(fields)} must be a str, not {type(f).__name__}",
                                      op=op, fields=[f])
    if len(set(fields)) != len(fields):
        seen = set()
        for f in fields:
            if f in seen:
                raise errors.InvalidError(f"field {f!r} appears twice", op=op, fields=[f])
            seen.add(f)
    return fields


def _as_keys(keys, partition, op=""):
    """keys as a list of str, and ``partition`` checked too. A key
    or a partition id that is not UTF-8 text (a lone surrogate) is
    InvalidError naming it, as the Go client refuses it, not a bare
    UnicodeEncodeError from protobuf."""
    if isinstance(keys, str):
        keys = [keys]
    keys = list(keys)
    # What the controller refuses of a key list (checkKeys: an empty key, a
    # key given twice), and what a request cannot carry, refused before
    # anything is sent: a put through the units would otherwise have
    # written its bytes (or a reservation taken its memory) first.
    if not all(type(k) is str for k in keys):
        for i, k in enumerate(keys):
            if not isinstance(k, str):
                raise errors.InvalidError(f"key {i + 1} of {len(keys)} must be a str, not {type(k).__name__}",
                                          op=op, keys=[k])
    if not all(keys):
        i = keys.index("")
        raise errors.InvalidError(f"empty key ({i + 1} of {len(keys)})", op=op, keys=[""])
    if len(set(keys)) != len(keys):
        seen, dups = set(), []
        for k in keys:
            if k in seen and k not in dups:
                dups.append(k)
            seen.add(k)
        raise errors.InvalidError(f"duplicate keys {errors.message_list(dups)}", op=op, keys=dups)
    joined = "".join(keys)
    if not joined.isascii():
        try:
            joined.encode()
        except UnicodeEncodeError:
            for i, k in enumerate(keys):
                try:
                    k.encode()
                except UnicodeEncodeError as e:
                    raise errors.InvalidError(f"key {k!r} ({i + 1} of {len(keys)}) is not UTF-8 text: {e.reason}",
                                              op=op, keys=[k]) from None
    if max(map(len, keys), default=0) > _cols.MAX_NAME_BYTES // 4:
        for i, k in enumerate(keys):
            _cols.check_name_size("key", k, f" ({i + 1} of {len(keys)})" if len(keys) > 1 else "", op=op, keys=[k])
    _text(partition, "partition_id", op, "partition")
    return keys


def _text(v, arg: str, op: str, name: str = "", *, optional: bool = False, bounded: bool = True):
    """``v`` (argument ``arg`` of ``op``) when it is text a request can
    carry: a str of UTF-8 text, or None when ``optional``; with
    ``bounded`` (a key, partition id or task name), of at most
    MAX_NAME_BYTES. Anything else (an int, bytes, None) is InvalidError
    naming the argument and the type, raised before anything is sent, not
    a bare TypeError from deep in protobuf as the request is built.
    ``name``: what the argument is, in a message about its text (``arg``
    when empty)."""
    if isinstance(v, str):
        if not v.isascii():
            try:
                v.encode()
            except UnicodeEncodeError as e:
                raise errors.InvalidError(f"{name or arg} {v!r} is not UTF-8 text: {e.reason}", op=op) from None
        if bounded:
            _cols.check_name_size(name or arg, v, op=op)
        return v
    if v is None and optional:
        return v
    raise errors.InvalidError(f"{arg} must be a str, not {type(v).__name__}", op=op)


def _number(v, arg: str, op: str, *, zero: bool = True, negative: bool = False, inf: bool = False,
            integer: bool = False):
    """``v`` (argument ``arg`` of ``op``) when it is a number that argument
    takes: an integer (not a bool) when ``integer``, else a real; not
    NaN; infinite only with ``inf``, negative only with ``negative``, 0
    only with ``zero``. Anything else is InvalidError (a ValueError) naming
    the argument and the value, raised where it is given, not an
    OverflowError or a wait that never ends deep inside a later call."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral if integer else numbers.Real):
        raise errors.InvalidError(f"{arg} must be {'an int' if integer else 'a number'}, "
                                  f"not {type(v).__name__} ({v!r})", op=op)
    why = ("is not a number" if math.isnan(v) else
           "must be finite" if math.isinf(v) and not inf else
           "must not be negative" if v < 0 and not negative else
           "must be more than 0" if v == 0 and not zero else "")
    if why:
        raise errors.InvalidError(f"{arg} {v!r} {why}", op=op)
    return v


class View:
    """Fields read in place from shared memory.

    A mapping of field name → value (dense: a read-only numpy array; ragged:
    a list of read-only arrays; opaque: a list of bytes). The arrays alias
    the storage unit's memory, which the view leases: the unit keeps it
    unchanged (even if the keys are overwritten or cleared) until
    :meth:`release`, the end of the ``with`` block, or — when neither
    happens — until the view and every array taken from it are garbage.
    Do not use the arrays after :meth:`release`. They are read-only:
    numpy refuses to flag one writable (ValueError), and a write through
    a torch tensor over one (:meth:`tensors`) faults. Each array keeps its
    segment's mapping open as long as it lives, even once the view is
    released and the unit dropped the segment. Values that could not be
    viewed (cells scattered over several places) are owned copies. Over TCP
    every value is an owned copy and :meth:`release` does nothing.

    Once released, the view hands out nothing more: ``view[f]``,
    :meth:`items`, :meth:`tensors` and ``data`` raise :class:`ClosedError`
    naming its partition and keys (over TCP too, so that code is correct on
    either transport). The field names (``keys()``, ``len``, iteration)
    stay.
    """

    def __init__(self, data, leases, *, partition: str = "", keys=None):
        self._data = data
        self._leases = leases
        self._partition = partition
        self._keys = keys
        # Taken, never let go, by the first release: a lock's non-blocking
        # acquire is one atomic test-and-set, so of two threads releasing
        # at once one gives the leases back and the other returns (as
        # Lease.release in unit.py).
        self._once = threading.Lock()

    @property
    def released(self) -> bool:
        """Whether :meth:`release` was called."""
        return self._once.locked()

    def _live(self, what: str) -> dict:
        """The fields, or ClosedError when the view was released: its
        memory is no longer leased, and the unit may have reused it."""
        if self.released:
            raise errors.ClosedError(
                f"view released: {what} would read memory it no longer leases (the cells may hold other "
                "data now); read before release(), or get with copy=True",
                op=f"View.{what}", partition=self._partition, keys=self._keys)
        return self._data

    @property
    def data(self) -> dict:
        """The fields, as a dict. ClosedError once released."""
        return self._live("data")

    def __getitem__(self, k):
        return self._live("__getitem__")[k]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def keys(self):
        return self._data.keys()

    def items(self):
        return self._live("items").items()

    def tensors(self) -> dict:
        """The views as torch tensors over the same memory (dense fields:
        a tensor; ragged: a list of tensors; opaque: as they are). Same
        lifetime as the view: ClosedError once it is released. Needs
        torch."""
        out = {}
        for k, v in self._live("tensors").items():
            if isinstance(v, np.ndarray):
                out[k] = _cols.to_tensor(v, k)
            elif v and isinstance(v[0], np.ndarray):
                out[k] = [_cols.to_tensor(a, k) for a in v]
            else:
                out[k] = v
        return out

    def release(self) -> None:
        """Give the leases back now, once: safe from any thread, and
        again. The arrays must not be used after."""
        if not self._once.acquire(blocking=False):
            return
        leases, self._leases = self._leases, []
        err = None
        for lease in leases:
            try:
                lease.release()
            except errors.TQError as e:
                err = err or e
        if err is not None:
            try:
                raise err
            finally:
                del err  # raised, it holds this frame: no cycle through it (see _wait_to_repeat)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()



# GIVE_BACK_S is how long a fetch's rows are offered back to their task
# while the controller cannot be reached (the Go client's RetryFor).
GIVE_BACK_S = 60.0

# KEEP_DIAL_S is how often a client that made held fetches makes sure it
# has a live connection to the controller (Client._keep_connected): a
# third of the controller's default grace for a client whose connections
# all closed, as the Go client's keeper.
KEEP_DIAL_S = 5.0

# RETRY_FOR is Client's retry_for default: how long a controller call that
# is safe to repeat keeps being sent again over new connections while the
# controller cannot be reached (the Go client's RetryFor).
RETRY_FOR = 60.0

# The controller ops that are safe to send again when their connection
# broke, which leaves unknown whether the controller got them: reads and
# listings, a keyed FETCH (asked again, it returns the rows the first took)
# and its UNCONSUME and ACKNOWLEDGE, and MARK_DONE; RESOLVE_KEYS unless it
# creates keys.
# The ops the Go client's RemoteMeta repeats (retry). A change (a commit,
# a clear, an insert, a put, tags set) is never repeated: whether it
# happened is unknown, and the caller decides.
_REPEATABLE = frozenset((
    wire.FETCH, wire.UNCONSUME, wire.ACKNOWLEDGE, wire.MARK_DONE, wire.FORCE_FETCH, wire.ROWS_META, wire.RESOLVE_KEYS,
    wire.KEYS_OF, wire.LIST_KEYS, wire.DELETE_TAGS, wire.KEY_CHANGES, wire.PRODUCTION_STATUS,
    wire.CONSUMPTION_STATUS, wire.PARTITIONS, wire.STATS, wire.STATS_PAGE, wire.FIELDS, wire.UNITS, wire.MOVED,
    wire.CHECKPOINTS, wire.CLUSTER_INFO, wire.KV_GET, wire.KV_GET_VALUE))


def _pause_round(began, deadline) -> bool:
    """Sleep until UNITS_REFRESH_S after ``began``, the start of a round of
    a put that waited for room, before the put is placed anew: no unit,
    nor the controller, is asked again and again. False, after sleeping
    until it, when ``deadline`` (time.monotonic(); None: none) comes
    first."""
    until = began + UNITS_REFRESH_S
    if deadline is not None and until >= deadline:
        time.sleep(max(0.0, deadline - time.monotonic()))
        return False
    time.sleep(max(0.0, until - time.monotonic()))
    return True


def _conn_lost(e: BaseException) -> bool:
    """Whether e says the connection failed (the request may or may not
    have reached the controller), or that the controller is shutting down
    (CODE_CLOSED: a restart is on its way), rather than answering."""
    return isinstance(e, (errors.UnavailableError, errors.ClosedError))


class _Repeater:
    """What a call sent again over new connections keeps between tries
    (the Go client's repeater): when it gives up, and its next pause."""

    __slots__ = ("give_up", "pause")

    def __init__(self):
        self.give_up = None
        self.pause = 0.01


# FETCH_MARGIN is the most a blocking fetch's wait on the server is cut
# short of the caller's timeout, so that the server gives up (consuming
# nothing) before the caller stops listening: the Go client's fetchMargin.
FETCH_MARGIN = 0.025


def _server_wait(deadline):
    """What a blocking FETCH asks the server for, (wait, timeout_ms): to
    wait until shortly before ``deadline`` (time.monotonic(); None: for the
    server's limit, 0), or, with less than a millisecond left, not to wait
    but take what there is (timeout_ms 0 would be the server's limit). As
    the Go client's serverWait."""
    if deadline is None:
        return True, 0
    left = deadline - time.monotonic()
    ms = int((left - min(left / 10, FETCH_MARGIN)) * 1000)
    if ms > 0:
        return True, ms
    return False, 0


# Errors with which the controller refused a fetch outright: it took nothing.
_FETCH_REFUSED = (errors.InvalidError, errors.NotFoundError, errors.DTypeMismatchError, errors.NotReadyError)


def _refused(e: BaseException) -> bool:
    """Whether the controller refused a change outright, so that nothing
    happened and what the change named may be freed. A broken connection,
    a reply that did not come in time, a server closing or failing leave the
    outcome unknown: the change may have happened, and freeing its cells
    would leave a key naming freed bytes (reconciliation frees what no cell
    names). The same classes as the Go client's."""
    return (isinstance(e, (errors.InvalidError, errors.NotFoundError, errors.DTypeMismatchError,
                           errors.NotReadyError, errors.LostError, errors.CapacityError))
            and not isinstance(e, errors.UnavailableError))

class Client:
    """A connection to one TQ cluster.

    ``address``: the controller (``tcp://host:port``, ``unix:///path``,
    ``host:port``); default $TQ_ADDRESS, else ``tcp://127.0.0.1:7370``.
    ``token``: default $TQ_TOKEN (refused when set but empty), else the
    token file in this user's data directory. ``transport``: ``"auto"`` (shared memory with units on this
    host, TCP with the others), ``"tcp"``, or ``"shm"`` (fail where shared
    memory is impossible). ``timeout``: how long, in seconds, each send
    and receive waits for its peer (a finite number above 0; anything
    else is :class:`InvalidError` naming it). ``retry_for``: how long, in seconds, a call
    that is safe to repeat (a read, a listing, a fetch, giving rows back,
    mark_done) keeps being sent again, with backoff, over new connections
    while the controller cannot be reached (it restarted, the network
    broke); 0 or less: never. A change (a put, a commit, a clear, an
    insert) is never sent again: it fails with :class:`UnavailableError`,
    whether it happened is unknown, and the next call dials afresh.
    ``require_server_proof``: refuse (:class:`ServerUnprovenError`) a
    controller or unit that answers the handshake without proving it knows
    the token (as a server run with --insecure does, and as any peer can);
    it needs a token. Default $TQ_REQUIRE_SERVER_PROOF ("1"), else off: a
    token found by itself would otherwise refuse every --insecure server.

    A client dropped without :meth:`close` closes its connections and
    unmaps its units' memory as soon as it is garbage (nothing holds it in
    a reference cycle); what a live view holds (its lease, its unit's
    mappings) stays until the view and its arrays are garbage too.
    """

    def __init__(self, address: str | None = None, *, token: str | None = None, name: str = "tq-python",
                 transport: str = "auto", timeout: float = 30.0, retry_for: float = RETRY_FOR,
                 require_server_proof: bool | None = None):
        if transport not in ("auto", "tcp", "shm"):
            raise errors.InvalidError(f"transport {transport!r}: want auto, tcp or shm")
        # Checked first: a socket takes an infinite timeout as an
        # OverflowError, NaN as a wait that never ends.
        timeout = float(_number(timeout, "timeout", "Client", zero=False))
        retry_for = float(_number(retry_for, "retry_for", "Client", negative=True, inf=True))
        self.address = address or os.environ.get(wire.ENV_ADDRESS) or wire.DEFAULT_ADDRESS
        self.token = wire.find_token(token)
        self.require_server_proof = wire.find_require_server_proof(require_server_proof)
        if self.require_server_proof and not self.token:
            raise errors.InvalidError(
                f"connect to {self.address}: require_server_proof (${wire.ENV_REQUIRE_SERVER_PROOF}) is set "
                f"but no token was found (token=, ${wire.ENV_TOKEN}, or the token file in {wire.data_dir()})")
        self.name = name
        self.transport = transport
        self.timeout = timeout
        self.retry_for = retry_for
        self.host = wire.host_id()
        self._ctl = Pool(self._dial_controller)
        self._units = {}
        self._units_at = 0.0
        # Unit ids name units within one cluster: _cluster_now is the
        # cluster of the last controller connection dialed, _units_cluster
        # the one the unit table was listed by (as known before the list).
        self._cluster_now = ""
        self._units_cluster = ""
        self._units_lock = threading.Lock()  # the table and its stamp, read and stored
        self._listing = threading.Lock()  # one list of the units (and their dials) at a time
        self._keeper = None  # this process's keeper thread (see _keep_connected)
        self._keeper_lock = threading.Lock()
        self._keeper_stop = threading.Event()
        _fork.reinit_in_child(self)
        self._no_kv_data = False
        self._no_value = False  # the controller answers KV_SET/KV_GET_VALUE NOT_SUPPORTED
        self._closed = False
        # The calls to units in flight (see _watch_unit), and the thread
        # that asks about the units of those that wait long.
        self._waits = {}
        self._waits_cond = threading.Condition(threading.Lock())
        self._watcher = None  # (pid, thread)
        # Fail early on a wrong address or token.
        c = self._ctl.take()
        self.cluster_id, self.epoch = c.server.cluster_id, c.server.epoch
        self._ctl.give(c)

    # ---- plumbing ------------------------------------------------------

    def _reinit_in_child(self) -> None:
        self._units_lock = threading.Lock()
        self._listing = threading.Lock()
        self._waits = {}
        self._waits_cond = threading.Condition(threading.Lock())
        self._watcher = None
        # The parent's keeper is not in the child (a fork copies one
        # thread): the child starts its own with its first held fetch.
        self._keeper = None
        self._keeper_lock = threading.Lock()
        self._keeper_stop = threading.Event()

    def _keep_connected(self) -> None:
        """Start, once per process, the thread that keeps a connection to
        the controller open while this client may hold rows (a held fetch,
        get_meta's ``_hold``): the controller gives a client's held rows to
        others once all its connections were closed from its side, or did
        not come back after a restart, for its grace (tq serve
        --held-client-grace, 15 s), and an idle loader (a long step, a full
        queue) sends nothing to notice its connection broke. Every
        KEEP_DIAL_S the thread drops the idle connections the controller
        closed and dials one when none is left, as the Go client's keeper
        does. It holds the client weakly, and ends with it or close()."""
        if self._keeper is not None:
            return
        with self._keeper_lock:
            if self._keeper is not None or self._closed:
                return
            ref, stop = weakref.ref(self), self._keeper_stop

            def run():
                while not stop.wait(KEEP_DIAL_S):
                    c = ref()
                    if c is None or c._closed:
                        return
                    try:
                        c._ctl.keep()
                    except (errors.TQError, OSError):
                        pass  # unreachable now: the next look tries again
                    del c
            t = threading.Thread(target=run, name="tq-keep-controller", daemon=True)
            t.start()
            self._keeper = t

    def _dial_controller(self) -> "wire.Conn":
        """A connection to the controller (see _dial_controller_at). A
        controller that started without the last one's state is another
        cluster, whose unit ids name other units: the unit table is listed
        again before it is used (see units)."""
        c = self._dial_controller_at()
        self._cluster_now = c.server.cluster_id
        return c

    def _dial_controller_at(self) -> "wire.Conn":
        """A connection to the controller: at the address given, moved to
        the unix socket the controller names (local_addrs) when it runs on
        this host, the socket is in a directory only this user may write to
        (wire.private_socket), and that socket's controller is the same one (cluster id
        and epoch), as the Go client does."""
        c = wire.Conn(self.address, token=self.token, name=self.name, timeout=self.timeout,
                      require_server_proof=self.require_server_proof)
        if c.family == socket.AF_UNIX or c.server.host_id != self.host:
            return c
        for a in c.server.local_addrs:
            path = a[len("unix://"):] if a.startswith("unix://") else ""
            if not os.path.isabs(path) or not wire.private_socket(path):
                continue  # missing, or where another user may have put it
            try:
                lc = wire.Conn(a, token=self.token, name=self.name, timeout=self.timeout,
                               require_server_proof=self.require_server_proof)
            except (errors.TQError, OSError):
                continue
            if lc.server.cluster_id == c.server.cluster_id and lc.server.epoch == c.server.epoch:
                c.close()
                return lc
            lc.close()
        return c

    def close(self) -> None:
        """Close every connection, those calls on other threads are in flight on
        included (each fails with ClosedError). Views still held stay valid
        until released."""
        if self._closed:
            return
        self._closed = True
        self._keeper_stop.set()
        with self._waits_cond:
            self._waits_cond.notify_all()  # the watcher ends
        self._ctl.close()
        with self._units_lock:
            units, self._units = list(self._units.values()), {}
        for u in units:
            u.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, op, req, reply_cls=None, *, op_name="", partition="", repeat=None, **kw):
        """One controller request. One that is safe to repeat (``repeat``;
        None: an op of _REPEATABLE) is sent again over a new connection
        when its connection fails, for up to retry_for."""
        if repeat is None:
            repeat = op in _REPEATABLE and not (op == wire.RESOLVE_KEYS and req.create)
        again = _Repeater()
        while True:
            try:
                return self._ctl.call(op, req, reply_cls, op_name=op_name, err_ctx={"partition": partition}, **kw)
            except errors.TQError as e:
                if not repeat:
                    raise
                self._wait_to_repeat(e, again)

    def _wait_to_repeat(self, e, again: _Repeater, deadline=None) -> None:
        """Decide whether a call that is safe to repeat and failed with
        ``e`` is sent again: returns after the call's pause if e is a lost
        connection and retry_for has not passed since its first failure
        (nor ``deadline``, time.monotonic(), come), else raises the error
        the call ends with. As the Go client's waitToRepeat."""
        try:
            if self.retry_for <= 0 or self._closed or not _conn_lost(e):
                raise e
            now = time.monotonic()
            if again.give_up is None:
                again.give_up = now + self.retry_for
            if now >= again.give_up:
                raise errors.UnavailableError(f"controller unreachable for {self.retry_for:g} s: {e.message}",
                                              op=e.op, partition=e.partition) from e
            if deadline is not None and now + again.pause >= deadline:
                raise e
            time.sleep(again.pause)
            again.pause = min(2 * again.pause, 1.0)
        finally:
            # The error raised here holds this frame (its traceback), and
            # so, through e, itself: a reference cycle that kept the
            # caller's frames and all they hold (a loader's iterator, a
            # batch's arrays) until the cyclic collector ran.
            del e

    def units(self, refresh: bool = False):
        """The storage units the controller knows: unit id → :class:`Unit`
        (connected lazily; dead units are left out). A table listed by
        another cluster than the one the controller answers for now is
        listed again."""
        with self._units_lock:
            if (self._units and not refresh and time.monotonic() - self._units_at < UNITS_REFRESH_S
                    and self._units_cluster == self._cluster_now):
                return dict(self._units)
        with self._listing:
            # Looked at again in its turn: threads that found the table
            # stale at once (puts waiting for room) share the one list the
            # first of them made, as the Go client's learnAfter.
            with self._units_lock:
                if (self._units and not refresh and time.monotonic() - self._units_at < UNITS_REFRESH_S
                        and self._units_cluster == self._cluster_now):
                    return dict(self._units)
            return self._list_units()

    def _list_units(self):
        """units(), listing them: one thread at a time (self._listing)."""
        cluster = self._cluster_now  # before the list: a table is never younger than its stamp
        rep = self._call(wire.UNITS, None, cluster_pb2.UnitsReply, op_name="units")
        self._units_at = time.monotonic()
        with self._units_lock:
            old = dict(self._units)
        fresh, made = {}, {}
        for info in rep.units:
            u = old.get(info.unit_id)
            if u is not None and u.incarnation == info.incarnation:
                u.alive = info.alive
                u.draining = info.draining
                if info.alive:
                    u.silent = False  # it answers again (SIGCONT, the network back)
                fresh[info.unit_id] = u
                continue
            if not info.alive:
                continue
            # Connected outside the table's lock: a unit that does not
            # answer must not hold up every other thread's lookups.
            try:
                u = Unit(info, token=self.token, name=self.name, host=self.host, transport=self.transport,
                         timeout=self.timeout, require_server_proof=self.require_server_proof)
                u.watcher = _weak_watcher(self)
                fresh[info.unit_id] = made[info.unit_id] = u
            except errors.NotSupportedError:
                for u in made.values():
                    u.close()
                raise  # transport='shm' and a unit it cannot reach so
            except errors.TQError:
                # Unreachable, or refusing this client (another process
                # at its address since a restart, shutting down, full):
                # left out, as the Go client's table marks it down.
                continue
        with self._units_lock:
            if self._closed:
                # close() took the table while the list dialed: what it
                # dialed is no one's.
                for u in made.values():
                    u.close()
                raise errors.ClosedError("client is closed (Client.close() or tq.close() was called)")
            for uid, u in self._units.items():
                if fresh.get(uid) is not u:
                    u.close()
            self._units, self._units_cluster = fresh, cluster
            return dict(fresh)

    # ---- units that go silent --------------------------------------------
    #
    # A storage unit that goes silent with its connections open (a hung
    # process, SIGSTOP, a host cut off the network) would hold a call to it
    # for the socket's timeout (the client's) and fail it as a DeadlineError:
    # not as the lost cells the README promises, nor as a unit to place a
    # put elsewhere from. A client that has not listed the units since the controller
    # reported the unit dead (a reader never lists them) still calls it. So,
    # as the Go client does (client/deadwatch.go), a call to a unit that has
    # not ended after DEAD_CHECK_S asks the controller about its unit, and
    # again every DEAD_CHECK_S while it waits: the client's slow calls share
    # one list a UNITS_REFRESH_S, which is after each began. Once the unit
    # is reported dead (silent for five heartbeats) its connections are
    # closed under the calls, those still in their handshake included
    # (the kernel of a stopped process accepts a dial; nothing answers
    # it), which fail naming the unit: a read as
    # UnitLostError (its cells are lost), a write as UnavailableError (the
    # put places its rows on the other units). The unit stays marked silent
    # until a list reports it alive: a call to it meanwhile asks for a list
    # (at most one a UNITS_REFRESH_S) and fails at once if it is still dead.
    # A unit the controller counts alive is never cut off, however long its
    # call takes; a call that ends sooner costs no round trip.

    def _watch_unit(self, u: Unit, what: str, call):
        """Run ``call``, a request to unit ``u`` (``what``: the Unit method),
        watched as above."""
        if u.silent:
            try:
                self.units()
            except errors.TQError:
                pass
            if u.silent:
                raise self._silent_error(u, what)
        w = [time.monotonic(), False]  # when last checked (at first: began), cut off
        with self._waits_cond:
            self._waits[id(w)] = (w, u)
            if self._watcher is None or self._watcher[0] != os.getpid():
                t = threading.Thread(target=_watch_dead, args=(weakref.ref(self), self._waits_cond),
                                     name="tq-dead-units", daemon=True)
                self._watcher = (os.getpid(), t)
                t.start()
        try:
            return call()
        except errors.TQError:
            if w[1] or u.silent:
                raise self._silent_error(u, what) from None
            raise
        finally:
            with self._waits_cond:
                self._waits.pop(id(w), None)

    @staticmethod
    def _silent_error(u: Unit, what: str) -> errors.TQError:
        msg = f"storage unit {u.id} did not answer in {DEAD_CHECK_S:g} s, and the controller reports it dead"
        if what == "write":
            return errors.UnavailableError(msg, op="write")
        return errors.UnitLostError(msg + ": its cells are lost to this read", op="read")

    def _check_dead(self, due) -> None:
        """Ask the controller about the units of ``due``, calls that waited
        DEAD_CHECK_S, and cut off those to a unit it reports dead."""
        try:
            table = self.units()  # listed within UNITS_REFRESH_S: after each due call began
        except errors.TQError:
            table = None
        now = time.monotonic()
        for w, u in due:
            w[0] = now
            if table is None or table.get(u.id) is u and u.alive:
                continue
            if table.get(u.id) is not None and table.get(u.id) is not u:
                continue  # another incarnation: the list closed this one, its calls fail so
            u.silent = True
            w[1] = True
            u.pool.cut()

    def _unit(self, uid: int, of: str = "") -> Unit:
        """The unit ``uid`` of the table; ``of``, when not "", the cluster of
        the meta naming it: a table of another cluster (the controller
        started anew without its state, and the ids name other units now) is
        LostError, checked against the table the unit is taken from, listed
        again first when the controller answers for another cluster."""
        with self._units_lock:  # a table and its stamp, not another thread's newer stamp
            units, cluster = self._units, self._units_cluster
        u = units.get(uid) if cluster == self._cluster_now else None  # else the id may name another unit now
        if u is None:
            self.units(refresh=True)
            with self._units_lock:
                units, cluster = self._units, self._units_cluster
            u = units.get(uid)
        if of and of != cluster:
            raise errors.LostError(f"cells named by the controller of cluster {of}, which started anew "
                                   f"as cluster {cluster} without its state", op="read")
        if u is None:
            raise errors.UnitLostError(f"storage unit {uid} is not registered or not alive", op="read")
        return u

    def _meta_of(self, pb, before: str) -> BatchMeta:
        """The meta of a reply, stamped with the cluster that answered it:
        ``before``, the cluster when the call began, if no controller
        connection dialed since named another (else not stamped: either may
        have answered)."""
        meta = BatchMeta.from_pb(pb)
        if self._cluster_now == before:
            meta._cluster = before
        return meta

    def _pick(self, h: int, exclude=()) -> Unit:
        """Local-first placement: a unit on this host (by hash ``h`` among
        several), else any alive unit by hash; never a draining one while
        another is alive."""
        alive = sorted((u for u in self._placeable() if u.id not in exclude), key=lambda u: u.id)
        if not alive:
            alive = sorted((u for u in self._placeable(refresh=True) if u.id not in exclude), key=lambda u: u.id)
            if not alive:
                raise errors.UnavailableError("no storage unit is alive", op="put")
        local = [u for u in alive if u.host_id == self.host]
        pool = local or alive
        return pool[h % len(pool)]

    def _placeable(self, refresh=False) -> list:
        """The units placement may pick: the alive ones that are not
        draining, or, with none, the alive ones. Whether a unit is draining
        is judged before a put leaves out those full or unreachable: one
        put on a draining unit has its commit refused (LostError), however
        full the others are."""
        alive = [u for u in self.units(refresh=refresh).values() if u.alive]
        return [u for u in alive if not u.draining] or alive

    # ---- reading cells -------------------------------------------------

    def _read_fields(self, n, schema, cells, names, row_keys, *, view=False, partition="", op="get",
                     check_only=False, of=""):
        """Read ``names`` of n rows: field → value, and the leases a view holds."""
        for f in names:
            c = cells.get(f)
            if c is None:
                raise errors.NotFoundError("field has no cells in this meta", op=op, partition=partition, fields=[f])
            missing = np.flatnonzero(c.unit == 0)
            if len(missing):
                raise errors.NotReadyError("cells not produced yet", op=op, partition=partition,
                                           keys=[row_keys[i] for i in missing], fields=[f])
            lost = np.flatnonzero(c.unit == _addrs.UNIT_LOST)
            if len(lost):
                raise errors.LostError("cells whose bytes are lost", op=op, partition=partition,
                                       keys=[row_keys[i] for i in lost], fields=[f])
        if check_only:
            return None, None
        units = set()
        for f in names:
            units.update(np.unique(cells[f].unit).tolist())
        data, leases = {}, []
        if view:
            return self._view_fields(n, schema, cells, names, units, partition, op, of)
        if len(units) == 1:
            u = self._unit(units.pop(), of)
            bufs = [alloc(int(cells[f].len.sum())) for f in names]
            u.read_many([cells[f] for f in names], bufs)
            for f, buf in zip(names, bufs):
                data[f] = self._value(schema[f], n, cells[f], buf)
            return data, leases
        for f in names:
            c = cells[f]
            ln = int(c.len.sum())
            buf = alloc(ln)
            dst = np.frombuffer(buf, dtype=np.uint8)
            for uid in np.unique(c.unit).tolist():
                pos = np.flatnonzero(c.unit == uid)
                _scatter(dst, c, pos, self._unit(uid, of).read(c.take(pos)))
            data[f] = self._value(schema[f], n, c, memoryview(buf))
        return data, leases

    @staticmethod
    def _value(s, n, c, buf):
        return _cols.from_bytes(s["dtype"], s["kind"], s.get("shape", ()), s.get("shapes"),
                                c.len.tolist() if s["kind"] == "opaque" else None, n, buf)

    def _view_fields(self, n, schema, cells, names, units, partition, op, of=""):
        leases, data = [], {}
        unit_objs = {uid: self._unit(uid, of) for uid in units}
        if not all(u.shm for u in unit_objs.values()):
            d, _ = self._read_fields(n, schema, cells, names, [None] * n, partition=partition, op=op, of=of)
            return d, []
        held = {}
        try:
            for uid, u in unit_objs.items():
                parts = [cells[f] if cells[f].run1 and len(cells[f]) and int(cells[f].unit[0]) == uid
                         else cells[f].take(np.flatnonzero(cells[f].unit == uid)) for f in names]
                conn, lease = u.acquire(parts)
                held[uid] = Lease(u, conn, lease)
                leases.append(held[uid])
            for f in names:
                s, c = schema[f], cells[f]
                if s["kind"] == "ragged":
                    dt = _cols.numpy_dtype(s["dtype"])
                    rows = []
                    for i, sh in enumerate(s["shapes"]):
                        uid = int(c.unit[i])
                        a = unit_objs[uid].seg_view(int(c.segment[i]), int(c.offset[i]), int(c.len[i]), held[uid])
                        rows.append(a.view(dt).reshape(sh))
                    data[f] = rows
                    continue
                one = c.run1 or (len(np.unique(c.unit)) == 1 and len(np.unique(c.segment)) == 1 and (
                    n <= 1 or bool(np.all(c.offset[1:] == c.offset[:-1] + c.len[:-1]))))
                if one and n:
                    uid = int(c.unit[0])
                    raw = unit_objs[uid].seg_view(int(c.segment[0]), int(c.offset[0]), int(c.len.sum()), held[uid])
                    data[f] = self._value(s, n, c, raw)
                else:
                    buf = np.empty(int(c.len.sum()), dtype=np.uint8)
                    dst = np.frombuffer(buf, dtype=np.uint8)
                    at = 0
                    for i in range(n):
                        L = int(c.len[i])
                        dst[at:at + L] = unit_objs[int(c.unit[i])].seg_array(int(c.segment[i]), int(c.offset[i]), L)
                        at += L
                    data[f] = self._value(s, n, c, memoryview(buf))
        except BaseException:
            for lease in leases:
                try:
                    lease.release()
                except errors.TQError:
                    pass
            raise
        return data, leases

    # ---- writing cells -------------------------------------------------

    def _write(self, unit: Unit, cols, no_wait=False, timeout=None):
        """Write cols to unit; returns each column's per-row Cells."""
        ext = unit.write(cols, no_wait=no_wait, timeout=timeout)
        return [_addrs.run(unit.id, int(ext.segment[i]), int(ext.gen[i]), int(ext.offset[i]), c.row_lens)
                for i, c in enumerate(cols)]

    def _place_and_write(self, h: int, cols, deadline=None):
        """Write cols to the units placement picks for hash h; returns the
        pieces written, (unit, locs), and each column's cells over all of
        them. A unit that cannot be reached is skipped for another (nothing
        of a failed write is readable, so writing again elsewhere is safe).
        A write does not wait for room (no_wait): a full unit refuses at
        once and the next unit is tried. When every unit refused the whole
        put, its rows are split in halves, each placed the same way, so a
        put that fits the cluster never fails for lack of room on one unit
        (as the Go client spills); only a single row that every unit
        refused waits for room on its first choice, until ``deadline``
        (time.monotonic(); None: for ever), see _place_rows. A failure
        frees the pieces already written."""
        pieces = []
        try:
            self._place_rows(h, cols, pieces, deadline)
        except BaseException:
            for unit, locs in pieces:
                self._free_quietly(unit, locs)
            raise
        if len(pieces) == 1:
            return pieces, pieces[0][1]
        return pieces, [_addrs.Cells.concat([locs[i] for _, locs in pieces]) for i in range(len(cols))]

    def _place_rows(self, h: int, cols, pieces, deadline=None):
        """_place_and_write's placement of cols. A row that no unit has
        room for waits for it on its first choice, which answers after its
        reserve wait (5 s, the unit's process bounds it) with CapacityError;
        then, while ``deadline`` has not come, the row is placed anew as at
        first, a UNITS_REFRESH_S after that round began, on the units as
        listed then (one list a UNITS_REFRESH_S, shared by the client's
        waiting puts): one that joined meanwhile, or one where frees made
        room, takes it. As the Go client's planner.again."""
        n = len(cols[0].row_lens) if cols else 0
        tried = {}  # units that could not be reached, left out of every round: id → their error, as text
        waited = last = None  # when the row began to wait for room, and the last refusal's text
        while True:
            full = set()
            while True:
                try:
                    unit = self._pick(h, exclude=tried.keys() | full)
                except errors.UnavailableError as e:
                    if tried and not full:
                        raise self._unreachable(tried) from e
                    if not full:
                        raise
                    if n > 1:  # no unit takes it whole: halves may fit where the whole did not
                        half = n // 2
                        self._place_rows(h, [c.rows(0, half) for c in cols], pieces, deadline)
                        self._place_rows(h + 1, [c.rows(half, n) for c in cols], pieces, deadline)
                        return
                    unit = self._pick(h, exclude=tried)
                    break  # no unit has room: wait for it
                try:
                    pieces.append((unit, self._write(unit, cols, no_wait=True)))
                    return
                except errors.CapacityError:
                    full.add(unit.id)
                except errors.UnavailableError as e:
                    tried[unit.id] = str(e)
                    if len(tried) >= 3:
                        raise self._unreachable(tried) from e
                    self.units(refresh=True)
            self._too_big(cols)
            began = time.monotonic()
            if waited is None:
                waited = began
            left = None if deadline is None else deadline - began
            if left is not None and left <= 0:
                raise self._waited_out(cols, waited, last)
            try:
                pieces.append((unit, self._write(unit, cols, timeout=left)))
                return
            except errors.TooLargeError:
                raise  # the unit could not hold the rows even empty: no wait helps
            except (errors.CapacityError, errors.DeadlineError) as e:
                # CapacityError: the unit waited out its reserve wait and
                # wrote nothing. DeadlineError: the put's time ran out in
                # the wait (the connection is dropped, and the unit gives
                # its reservation back).
                if deadline is None and isinstance(e, errors.DeadlineError):
                    raise  # the unit's, not a timeout of this client's
                if isinstance(e, errors.DeadlineError) or deadline is not None and time.monotonic() >= deadline:
                    # A unit's refusal says more than the timeout's cut.
                    raise self._waited_out(cols, waited, last if isinstance(e, errors.DeadlineError) and last
                                           else str(e)) from e
                last = str(e)  # not e: its traceback holds this frame, a cycle
            if not _pause_round(began, deadline):
                raise self._waited_out(cols, waited, last)

    @staticmethod
    def _unreachable(tried) -> errors.UnavailableError:
        """The error of a put that found no unit it could reach, naming
        each unit it tried (``tried``: id → its error, as text) and what
        went wrong there, as the Go client's does: "no unit is alive" alone
        hid a refused connection or a dial's timeout."""
        why = "; ".join(f"storage unit {uid}: {e}" for uid, e in tried.items())
        return errors.UnavailableError(f"no storage unit left to place the put on: every one it tried is "
                                       f"unreachable, nothing was written: {why}", op="put")

    def _largest(self) -> int:
        """The largest capacity of the units placement may pick (a
        draining unit's room is for nobody), or 0 when one's is unknown (an
        older controller's list): that unit may be larger, and a row
        refused for the others' capacity would fit it. As the Go client's
        planner.largest."""
        caps = [u.capacity for u in self._placeable()]
        return 0 if not caps or 0 in caps else max(caps)

    def _too_big(self, cols) -> None:
        """CapacityError naming a row of cols larger than the largest
        unit's capacity: it would wait for room that never comes."""
        most = self._largest()
        if not most:
            return
        sizes = np.zeros(len(cols[0].row_lens), dtype=np.int64)
        for c in cols:
            sizes += np.asarray(c.row_lens, dtype=np.int64)
        big = np.flatnonzero(sizes > most)
        if len(big):
            raise errors.CapacityError(f"a row of {int(sizes[big[0]])} bytes, more than the largest storage unit's "
                                       f"capacity ({most} bytes)", op="put")

    def _waited_out(self, cols, waited, last) -> errors.CapacityError:
        """The error of a put whose rows ``cols`` waited for room from
        ``waited`` (time.monotonic()) until the client's timeout came;
        ``last``: the error of its last try, if any, as text."""
        n = len(cols[0].row_lens) if cols else 0
        msg = (f"no storage unit had room for {n} row{'s' if n != 1 else ''} of {sum(c.nbytes for c in cols)} bytes: "
               f"the put waited for room {time.monotonic() - waited:.1f} s, until the client's timeout "
               f"({self.timeout:g} s) ended it")
        if last is not None:
            msg += f"; the last try: {last}"
        return errors.CapacityError(msg, op="put")

    def _free_pieces(self, pieces):
        for unit, locs in pieces:
            self._free_quietly(unit, locs)

    @staticmethod
    def _free_quietly(unit, locs):
        try:
            unit.free(_addrs.Cells.concat(locs))
        except errors.TQError:
            pass

    # ---- KV API --------------------------------------------------------

    def kv_batch_put(self, keys, partition_id: str, fields=None, tags=None) -> KVBatchMeta:
        """Write row i of ``fields`` to ``keys[i]`` and merge ``tags[i]`` into
        its tags, creating missing keys; readers see the whole put or none.
        A put that no storage unit has room for waits for room as long as
        the client's timeout allows (see _place_rows), then fails with
        CapacityError and frees what it wrote."""
        keys = _as_keys(keys, partition_id, "kv_batch_put")
        if not keys:
            raise errors.InvalidError("Received an empty list as keys.", op="kv_batch_put", partition=partition_id)
        if fields is None and tags is None:
            raise errors.InvalidError("a put needs fields or tags", op="kv_batch_put", partition=partition_id)
        if tags is not None:
            if hasattr(tags, "items"):
                raise errors.InvalidError("tags are one dict a key (a list of dicts), not a dict", op="kv_batch_put",
                                          partition=partition_id)
            tags = list(tags)  # any iterable, as keys
            if len(tags) != len(keys):
                raise errors.InvalidError(f"{len(tags)} tags for {len(keys)} keys", op="kv_batch_put",
                                          partition=partition_id)
        if fields is not None and not hasattr(fields, "items"):
            raise errors.InvalidError("fields must be a dict of name → value", op="kv_batch_put")
        cols = _cols.columns(fields, len(keys))
        if fields is not None and not cols:
            raise errors.InvalidError("a put with an empty field set", op="kv_batch_put", partition=partition_id)
        req = control_pb2.CommitKeysRequest(partition=partition_id, keys=keys)
        if tags is not None:
            req.has_tags = True
            req.tags.extend(tags_to_json_list(tags))
        ctx = {"op_name": "kv_batch_put", "partition": partition_id}
        if not cols:
            rep = self._call(wire.COMMIT_KEYS, req, control_pb2.CommitKeysReply, **ctx)
            return self._kvmeta(keys, partition_id, rep)
        inline = sum(c.nbytes for c in cols) <= KV_INLINE_MAX and not self._no_kv_data
        if (inline and len(keys) == 1 and tags is None and len(cols) == 1 and cols[0].kind == "opaque"
                and cols[0].dtype == "bytes" and not self._no_value):
            # One value of one key: KV_SET, its bytes straight to where they are stored.
            sreq = control_pb2.KVSetRequest(partition=partition_id, key=keys[0], field=cols[0].name)
            try:
                rep = self._call(wire.KV_SET, sreq, control_pb2.CommitKeysReply, payload=cols[0].bufs, **ctx)
                return self._kvmeta(keys, partition_id, rep)
            except errors.NotSupportedError:
                self._no_value = True  # KV_PUT below tells the reasons apart
            except errors.CapacityError:
                inline = False  # no room now: through the units, which wait
        if inline:
            kreq = control_pb2.KVPutRequest(put=req)
            kreq.put.fields.extend(c.commit_field() for c in cols)
            kreq.row_lens.extend(c.lens_pb() for c in cols)
            payload = [b for c in cols for b in c.bufs]
            try:
                rep = self._call(wire.KV_PUT, kreq, control_pb2.CommitKeysReply, payload=payload, **ctx)
                return self._kvmeta(keys, partition_id, rep)
            except errors.NotSupportedError:
                self._no_kv_data = True
            except errors.CapacityError:
                pass
        rep = self._write_and_commit(zlib.crc32(keys[0].encode()), cols, req, wire.COMMIT_KEYS,
                                     control_pb2.CommitKeysReply, ctx)
        return self._kvmeta(keys, partition_id, rep)

    def _write_and_commit(self, h, cols, req, op, reply_cls, ctx):
        """Place and write ``cols`` on the units (by hash ``h``), then commit
        them with ``req`` (``op``). A commit that refuses the cells written
        (LostError: a unit marked draining since this client last listed the
        units, or a generation its unit fenced) changed nothing: the pieces
        are freed and the put is placed again once, on the units as they
        are now. So are they when the put fails, or is interrupted
        (KeyboardInterrupt, an exception from a signal handler), before
        any of its commit was sent: it changed nothing."""
        # A put waits for room (no unit has any) until the client's timeout.
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        for attempt in (0, 1):
            self.units()
            req.cluster_id = self._units_cluster  # before placement: never younger than the units it picks
            pieces, locs = self._place_and_write(h, cols, deadline)
            sending = wire.Sending()
            try:
                del req.fields[:]
                req.fields.extend(c.commit_field(_addrs.to_pb(l)) for c, l in zip(cols, locs))
                return self._call(op, req, reply_cls, sending=sending, **ctx)
            except errors.LostError as e:
                if not _refused(e) and sending.started:
                    raise
                self._free_pieces(pieces)
                if attempt or not _refused(e):
                    raise
                self.units(refresh=True)
            except BaseException as e:
                if not sending.started or isinstance(e, errors.TQError) and _refused(e):
                    self._free_pieces(pieces)
                raise  # else the commit may have happened: reconciliation frees what no cell names

    @staticmethod
    def _kvmeta(keys, partition, rep) -> KVBatchMeta:
        return KVBatchMeta(keys=list(keys), tags=tags_from_json_list(rep.tags), partition_id=partition,
                           fields=list(rep.fields))

    def kv_put(self, key: str, partition_id: str, fields=None, tag=None) -> KVBatchMeta:
        """Put one key: each field value is that key's row (no batch dimension)."""
        _text(key, "key", "kv_put")
        if fields is not None:
            if not hasattr(fields, "items"):
                raise errors.InvalidError("fields must be a dict of name → value", op="kv_put")
            one = {}
            for k, v in fields.items():
                if isinstance(v, (str, bytes, bytearray, memoryview)):
                    one[k] = [v]
                elif isinstance(v, list):
                    raise errors.InvalidError(f"field {k!r}: a list is a batch; use kv_batch_put", fields=[k])
                elif _cols.is_tensor(v):
                    one[k] = v.unsqueeze(0)
                elif isinstance(v, _cols.Typed):
                    one[k] = _cols.Typed(v.array[None], v.dtype)
                else:
                    one[k] = np.asarray(v)[None]
            fields = one
        return self.kv_batch_put([key], partition_id, fields, [tag] if tag is not None else None)

    def kv_batch_get(self, keys, partition_id: str, select_fields=None, *, copy: bool = True, into=None,
                     device=None):
        """The fields of ``keys``, rows in key order: a dict field → value
        (a TensorDict when ``tensordict`` is importable and every field is
        dense). ``select_fields``: the fields to read (one as a str), each
        named once: a field named twice is :class:`InvalidError` naming it,
        and nothing is sent. Without it: the fields every key holds.
        ``copy=False`` returns a :class:`View` over shared memory.
        ``into``: a dict field → a C-contiguous numpy array of the field's
        dtype and shape that the cells are read into (a buffer the caller
        reuses; dense fields only; only those fields are read). The read
        cannot be stopped half way: :meth:`async_kv_batch_get`, cancelled,
        waits for it to end before it raises CancelledError, so that nothing
        writes into the arrays once the cancellation returns (what they
        hold then is unspecified).
        ``device``: a torch device (``"cuda"``, ``"cuda:1"``, ``"cpu"``): a
        dict field → tensor on it. Dense fields are read into page-locked
        host memory and copied to a CUDA device asynchronously, in the
        current stream's order (use them on that stream, or synchronize);
        ragged fields come as lists of tensors there, opaque ones as they
        are."""
        keys = _as_keys(keys, partition_id, "kv_batch_get")
        if not keys:
            raise errors.InvalidError("Received an empty list as keys.", op="kv_batch_get")
        select_fields = _field_list(select_fields, "kv_batch_get")
        dev = _device(device, into, copy, "kv_batch_get")
        ctx = {"op_name": "kv_batch_get", "partition": partition_id}
        # A put that replaces the keys' cells between the lookup and the
        # read makes the read fail (StaleError): look them up again.
        for attempt in range(16):
            try:
                if dev is not None:
                    return self._kv_batch_get_to(keys, partition_id, select_fields, dev, ctx)
                return self._kv_batch_get(keys, partition_id, select_fields, copy, into, ctx)
            except errors.StaleError:
                if attempt == 15:
                    raise
                time.sleep(random.uniform(0, 0.001 * min(attempt + 1, 10)))

    def _kv_batch_get(self, keys, partition_id, select_fields, copy, into, ctx):
        before = self._cluster_now
        if into is not None:
            names = list(into)
            req = control_pb2.ResolveKeysRequest(partition=partition_id, keys=keys, fields=_sel(names))
            rep = self._call(wire.RESOLVE_KEYS, req, control_pb2.ResolveKeysReply, **ctx)
            meta = self._meta_of(rep.meta, before)
            return self._read_into(meta, into, keys, partition_id, "kv_batch_get")
        if (copy and not self._no_kv_data and not self._no_value and len(keys) == 1 and select_fields is not None
                and len(select_fields) == 1):
            # One field of one key: KV_GET_VALUE; NOT_FOUND leaves it to KV_GET, which says why.
            vreq = control_pb2.KVGetValueRequest(partition=partition_id, key=keys[0], field=select_fields[0],
                                                 max_bytes=KV_INLINE_MAX)
            try:
                out = self._call(wire.KV_GET_VALUE, vreq, control_pb2.FieldSchema, max_payload=KV_INLINE_MAX, **ctx)
            except errors.NotSupportedError:
                self._no_value = True
            except errors.NotFoundError:
                pass
            else:
                f, payload = out if isinstance(out, tuple) else (out, b"")
                mv = memoryview(payload) if payload is not None else memoryview(b"")
                if f.kind in ("dense", "ragged"):
                    dims = f.shape.dims if f.kind == "dense" else (f.shapes[0].dims if len(f.shapes) == 1 else None)
                    want = None if dims is None else _cols.numpy_dtype(f.dtype).itemsize * math.prod(dims)
                    if want != len(mv):
                        shape = tuple(dims) if dims is not None else f"{len(f.shapes)} shapes for one row"
                        raise errors.CorruptError(f"KV_GET_VALUE: {len(mv)} payload bytes, where {f.kind} "
                                                  f"{f.dtype}{shape} takes {want}",
                                                  op="kv_batch_get", partition=partition_id, keys=keys,
                                                  fields=list(select_fields))
                data = {select_fields[0]: _cols.from_bytes(f.dtype, f.kind, tuple(f.shape.dims),
                                                           [tuple(s.dims) for s in f.shapes], [len(mv)], 1, mv)}
                return _maybe_tensordict(data, 1)
        if copy and not self._no_kv_data:
            req = control_pb2.KVGetRequest(partition=partition_id, keys=keys, fields=_sel(select_fields),
                                           max_bytes=KV_INLINE_MAX)
            try:
                out = self._call(wire.KV_GET, req, control_pb2.KVGetReply, max_payload=KV_INLINE_MAX, **ctx)
            except errors.NotSupportedError:
                self._no_kv_data = True
            else:
                rep, payload = out if isinstance(out, tuple) else (out, b"")
                if rep.has_data:
                    return self._inline(rep, len(keys), payload)
                return self._get_meta_data(self._meta_of(rep.meta, before), keys, partition_id,
                                           select_fields, copy=True, op="kv_batch_get")
        req = control_pb2.ResolveKeysRequest(partition=partition_id, keys=keys, fields=_sel(select_fields))
        rep = self._call(wire.RESOLVE_KEYS, req, control_pb2.ResolveKeysReply, **ctx)
        return self._get_meta_data(self._meta_of(rep.meta, before), keys, partition_id,
                                   select_fields, copy=copy, op="kv_batch_get")

    def _kv_batch_get_to(self, keys, partition_id, select_fields, dev, ctx):
        """kv_batch_get(device=...): see there."""
        before = self._cluster_now
        req = control_pb2.ResolveKeysRequest(partition=partition_id, keys=keys, fields=_sel(select_fields))
        rep = self._call(wire.RESOLVE_KEYS, req, control_pb2.ResolveKeysReply, **ctx)
        meta = self._meta_of(rep.meta, before)
        names = sorted(meta.field_schema) if select_fields is None else list(select_fields)
        return self._read_to(meta, meta._cells, names, keys, partition_id, "kv_batch_get", dev)

    def _read_to(self, meta, cells, names, row_keys, partition, op, dev):
        """The fields names of meta's rows (cells) as tensors on dev (see
        kv_batch_get's device=)."""
        torch = _cols._torch
        for f in names:
            if f not in meta.field_schema:
                raise errors.NotFoundError("unknown field", op=op, partition=partition, fields=[f])
        # Dense fields: into page-locked bytes that torch's caching host
        # allocator owns, so that the block outlives the asynchronous copy.
        pins, into = {}, {}
        for f in names:
            s = meta.field_schema[f]
            if s["kind"] != "dense":
                continue
            dt = _cols.numpy_dtype(s["dtype"])
            shape = (meta.size,) + tuple(s["shape"])
            pins[f] = torch.empty(math.prod(shape) * dt.itemsize, dtype=torch.uint8,
                                  pin_memory=dev.type == "cuda")
            into[f] = pins[f].numpy().view(dt).reshape(shape)
        out = {}
        if into:
            self._read_into(meta, into, row_keys, partition, op, cells=cells)
            for f, b in pins.items():
                t = b.to(dev, non_blocking=True)
                out[f] = t.view(_cols.torch_dtype(meta.field_schema[f]["dtype"])).reshape(into[f].shape)
        rest = [f for f in names if f not in pins]
        if rest:
            data, _ = self._read_fields(meta.size, meta.field_schema, cells, rest, row_keys, partition=partition,
                                        op=op, of=meta._cluster)
            for f in rest:
                v = data[f]
                if isinstance(v, np.ndarray):
                    out[f] = _cols.to_tensor(np.array(v), f).to(dev)
                elif v and isinstance(v[0], np.ndarray):
                    out[f] = [_cols.to_tensor(np.array(a), f).to(dev) for a in v]
                else:
                    out[f] = v
        return {f: out[f] for f in names}

    def _inline(self, rep, n, payload):
        data, at = {}, 0
        mv = memoryview(payload) if payload is not None else memoryview(b"")
        for f, rl in zip(rep.fields, rep.row_lens):
            dt = _cols.numpy_dtype(f.dtype).itemsize if f.kind != "opaque" else 1
            if f.kind == "dense":
                ln = n * dt * math.prod(f.shape.dims)
            elif f.kind == "ragged":
                ln = dt * sum(math.prod(s.dims) for s in f.shapes)
            else:
                ln = sum(rl.lens)
            data[f.name] = _cols.from_bytes(f.dtype, f.kind, tuple(f.shape.dims), [tuple(s.dims) for s in f.shapes],
                                            list(rl.lens), n, mv[at:at + ln])
            at += ln
        if at != len(mv):
            raise errors.CorruptError(f"KV_GET: the fields take {at} of {len(mv)} payload bytes")
        return _maybe_tensordict(data, n)

    def _get_meta_data(self, meta: BatchMeta, keys, partition, select_fields, *, copy, op):
        names = sorted(meta.field_schema) if select_fields is None else list(select_fields)
        for f in names:
            if f not in meta.field_schema:
                raise errors.NotFoundError("unknown field", op=op, partition=partition, fields=[f])
        data, leases = self._read_fields(meta.size, meta.field_schema, meta._cells, names, keys, view=not copy,
                                         partition=partition, op=op, of=meta._cluster)
        if not copy:
            return View(data, leases, partition=partition, keys=keys)
        return _maybe_tensordict(data, meta.size)

    def _read_into(self, meta: BatchMeta, into: dict, row_keys, partition, op, cells=None):
        cells = meta._cells if cells is None else cells
        for f, arr in into.items():
            s = meta.field_schema.get(f)
            if s is None:
                raise errors.NotFoundError("unknown field", op=op, partition=partition, fields=[f])
            if s["kind"] != "dense":
                raise errors.InvalidError(f"into= takes dense fields; {f!r} is {s['kind']}", op=op, fields=[f])
            want = (meta.size,) + tuple(s["shape"])
            # Little-endian: the cells' bytes go into it as they are, so a
            # big-endian array would hold its values byte-swapped.
            if not isinstance(arr, np.ndarray) or arr.shape != want or not arr.flags.c_contiguous \
                    or not arr.flags.writeable or arr.dtype.byteorder == ">" \
                    or _cols.tq_dtype(arr.dtype) != s["dtype"]:
                got = f"{arr.dtype} array of shape {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
                raise errors.InvalidError(f"into[{f!r}] must be a writable C-contiguous little-endian {s['dtype']} "
                                          f"array of shape {want}, not a {got}", op=op, fields=[f])
        self._read_fields(meta.size, meta.field_schema, cells, list(into), row_keys, partition=partition,
                          op=op, check_only=True)
        names = list(into)
        flats = [into[f].reshape(-1).view(np.uint8) for f in names]
        units = set()
        for f in names:
            units.update(np.unique(cells[f].unit).tolist())
        if len(units) == 1:
            # Every cell on one unit: one READ (or one lease) for all fields,
            # straight into the caller's arrays.
            u = self._unit(units.pop(), meta._cluster)
            u.read_many([cells[f] for f in names], flats)
            return into
        for f, arr in into.items():
            c = cells[f]
            flat = arr.reshape(-1).view(np.uint8)
            units = np.unique(c.unit).tolist()
            if len(units) == 1:
                self._unit(units[0], meta._cluster).read(c, into=flat)
                continue
            for uid in units:
                pos = np.flatnonzero(c.unit == uid)
                _scatter(flat, c, pos, self._unit(uid, meta._cluster).read(c.take(pos)))
        return into

    def kv_list(self, partition_id: str | None = None) -> dict:
        """partition → {key: tags}; every partition when ``partition_id`` is None."""
        _text(partition_id, "partition_id", "kv_list", "partition", optional=True)
        out, cursor = {}, b""
        while True:
            req = control_pb2.ListKeysRequest(partition=partition_id or "", cursor=cursor)
            try:
                rep = self._call(wire.LIST_KEYS, req, control_pb2.ListKeysReply, op_name="kv_list",
                                 partition=partition_id or "")
            except errors.NotFoundError:
                return out
            for p in rep.partitions:
                d = out.setdefault(p.partition, {})
                ks = p.keys
                d.update(zip([k.key for k in ks], tags_from_json_list([k.tags for k in ks])))
            if not rep.next:
                return out
            cursor = rep.next

    def kv_clear(self, keys, partition_id: str) -> None:
        """Remove ``keys`` (idempotent: unknown keys are skipped)."""
        keys = _as_keys(keys, partition_id, "kv_clear")
        if not keys:
            return
        self._call(wire.CLEAR_KEYS, control_pb2.ClearKeysRequest(partition=partition_id, keys=keys),
                   control_pb2.CellsReply, op_name="kv_clear", partition=partition_id)

    def kv_retrieve_keys(self, global_indexes, partition_id: str):
        _text(partition_id, "partition_id", "kv_retrieve_keys", "partition")
        idx = [global_indexes] if isinstance(global_indexes, int) else list(global_indexes)
        rep = self._call(wire.KEYS_OF, control_pb2.KeysOfRequest(partition=partition_id, indexes=idx),
                         control_pb2.KeysReply, op_name="kv_retrieve_keys", partition=partition_id)
        return [k or None for k in rep.keys]

    def kv_retrieve_meta(self, keys, partition_id: str, create: bool = False) -> BatchMeta:
        keys = _as_keys(keys, partition_id, "kv_retrieve_meta")
        before = self._cluster_now
        rep = self._call(wire.RESOLVE_KEYS, control_pb2.ResolveKeysRequest(
            partition=partition_id, keys=keys, fields=_sel(None), create=create),
            control_pb2.ResolveKeysReply, op_name="kv_retrieve_meta", partition=partition_id)
        return self._meta_of(rep.meta, before)

    # ---- low-level API -------------------------------------------------

    def get_meta(self, data_fields, batch_size: int, partition_id: str, mode: str = "fetch",
                 task_name: str | None = None, sampling_config: dict | None = None, *,
                 wait: bool = False, timeout: float | None = None, sampler=None,
                 token_budget: int | None = None, end_when_consumed: bool = False,
                 partition_must_exist: bool = False, partition_gen: int = 0, cluster_id: str = "",
                 _fetch_key: bytes | None = None, _hold: bool = False,
                 _hold_group: bytes | None = None) -> BatchMeta:
        """Rows of ``partition_id``.

        ``data_fields``: the fields (one as a str), each named once: a
        field named twice is :class:`InvalidError` naming it, and nothing
        is sent (as a key named twice is refused).
        ``mode="fetch"``: ``batch_size`` rows produced for every one of
        ``data_fields`` and not yet consumed by ``task_name``, chosen by the
        controller's sampler and marked consumed; without ``wait`` an empty
        meta when too few are ready, with it block up to ``timeout`` seconds
        (None: the server's limit, 5 minutes; 0: not at all) and then raise
        :class:`DeadlineError`. A timeout longer than the server's limit
        asks again each time that runs out.
        ``mode="insert"``: allocate ``batch_size`` new rows.
        ``mode="force_fetch"``: every row, nothing marked.
        ``sampling_config``: ``dp_rank``, ``batch_index`` and sampler
        parameters.
        ``sampler``: a built-in sampler for this fetch instead of the
        server's — a name (``"sequential"``, ``"rank_aware"``, ``"grpo"``,
        ``"seqlen_balanced"``, ``"token_budget"``) or a dict with ``name``,
        ``n`` and ``dp_size``. ``token_budget``: bound the batch by the sum
        of its rows' ``total_lengths`` tags rather than by ``batch_size``
        (which may then be 0); implies the token_budget sampler. A fetch
        from a partition marked done (:meth:`mark_done`) whose rows the
        task has all raises :class:`DoneError`. ``end_when_consumed``: the
        rows the partition has now, pre-allocated ones included, are all it
        will have: once every one is produced the fetch is as from a
        partition marked done (a short last batch, then DoneError).
        A partition the controller does not have (never made, or cleared)
        gives an empty meta, or with ``wait`` is waited for (a producer's
        first put makes it); ``partition_must_exist`` makes it an
        :class:`InvalidError` naming it (``partition "x" does not exist``)
        at once instead, wait or not. It needs a controller whose HELLO
        lists "fetch_must_exist" (else :class:`NotSupportedError`, and
        nothing is sent: an older one would wait).
        A fetch's meta has the generation of the partition that served it
        (``meta.partition_gen``; new each time a partition of that id is
        made, kept across the controller's restarts; 0: not known).
        ``partition_gen`` (not 0) is the generation the caller has been
        reading: a partition of another one (cleared and made again), or
        none (cleared), raises :class:`DoneError` naming the partition and
        the generation at once, wait or not, and so does a fetch waiting
        when its partition is cleared. It needs a controller whose HELLO
        lists "fetch_partition_gen" (else :class:`NotSupportedError`, and
        nothing is sent). ``cluster_id``, with ``partition_gen``, is the
        cluster whose controller gave the generation (that meta's
        ``_cluster``): a controller of another cluster (one that started
        anew without that cluster's state, numbering its partitions anew,
        so that a generation may match by chance) raises
        :class:`DoneError` as for a partition cleared. "": not checked.
        """
        ctx = {"op_name": f"get_meta({mode})", "partition": partition_id}
        _text(partition_id, "partition_id", ctx["op_name"], "partition")
        data_fields = _field_list(data_fields, ctx["op_name"])
        _text(task_name, "task_name", ctx["op_name"], optional=True)
        batch_size = int(_number(batch_size, "batch_size", ctx["op_name"], integer=True))
        if timeout is not None:
            _number(timeout, "timeout", ctx["op_name"])
        before = self._cluster_now
        if mode == "insert":
            if data_fields is None:
                raise errors.InvalidError("insert needs data_fields", **{"op": ctx["op_name"]})
            rep = self._call(wire.INSERT, control_pb2.InsertRequest(partition=partition_id, n=batch_size,
                                                                    fields=list(data_fields)),
                             control_pb2.MetaReply, **ctx)
            return self._meta_of(rep.meta, before)
        if mode == "force_fetch":
            rep = self._call(wire.FORCE_FETCH, control_pb2.ForceFetchRequest(partition=partition_id,
                                                                             fields=_sel(data_fields)),
                             control_pb2.MetaReply, **ctx)
            return self._meta_of(rep.meta, before)
        if mode != "fetch":
            raise errors.InvalidError(f"mode {mode!r}: want fetch, insert or force_fetch")
        if not task_name:
            raise errors.InvalidError("fetch needs a task_name", op=ctx["op_name"])
        sc = dict(sampling_config or {})
        opts = control_pb2.SamplingOptions()
        if "dp_rank" in sc:
            opts.has_rank = True
            opts.dp_rank = int(sc.pop("dp_rank"))
        if "batch_index" in sc:
            opts.batch_index = int(sc.pop("batch_index"))
        sc.pop("task_name", None)
        sc.pop("partition_id", None)
        if sc:
            opts.params = tags_to_json(sc)
        req = control_pb2.FetchRequest(partition=partition_id, task=task_name, fields=list(data_fields or []),
                                       batch_size=batch_size, options=opts, wait=wait,
                                       key=_fetch_key or os.urandom(16), end_when_consumed=end_when_consumed,
                                       hold=bool(_hold and _fetch_key),
                                       hold_group=(_hold_group or b"") if _hold and _fetch_key else b"",
                                       partition_must_exist=partition_must_exist,
                                       partition_gen=int(partition_gen), cluster_id=cluster_id or "")
        need = tuple(f for f, on in ((wire.FEATURE_HOLD_GROUP, req.hold_group),
                                     (wire.FEATURE_FETCH_MUST_EXIST, req.partition_must_exist),
                                     (wire.FEATURE_FETCH_PARTITION_GEN, req.partition_gen)) if on)
        if token_budget is not None:
            if int(token_budget) <= 0:
                raise errors.InvalidError(f"token_budget {token_budget}: must be positive", op=ctx["op_name"])
            req.token_budget = int(token_budget)
            if sampler is None:
                sampler = "token_budget"
        if sampler is not None:
            spec = {"name": sampler} if isinstance(sampler, str) else dict(sampler)
            req.sampler.CopyFrom(control_pb2.SamplerSpec(name=str(spec.get("name", "")), n=int(spec.get("n", 0)),
                                                         dp_size=int(spec.get("dp_size", 0))))
        if req.hold:
            self._keep_connected()
        deadline = time.monotonic() + timeout if wait and timeout is not None else None
        again = _Repeater()
        try:
            while True:
                sock_timeout = None
                if wait:
                    req.wait, req.timeout_ms = _server_wait(deadline)
                    left = deadline - time.monotonic() if deadline is not None else 600.0
                    sock_timeout = max(left, 0.0) + self.timeout
                try:
                    rep = self._call(wire.FETCH, req, control_pb2.MetaReply, timeout=sock_timeout, repeat=False,
                                     need=need, **ctx)
                except errors.DeadlineError:
                    # The server's own limit on a wait (5 minutes) ran out
                    # before the caller's timeout: wait again (the fetch
                    # took nothing, and its key stays unused).
                    if req.wait and deadline is not None and deadline - time.monotonic() > FETCH_MARGIN:
                        continue
                    raise
                except errors.TQError as e:
                    # The connection broke: the same keyed FETCH, asked again
                    # over a new one (with the time left), returns the rows
                    # the first one took, if it happened.
                    self._wait_to_repeat(e, again, deadline)
                    continue
                m = self._meta_of(rep.meta, before)
                m.partition_gen = rep.partition_gen
                if wait and not req.wait and m.size == 0:
                    raise errors.DeadlineError(f"wait for {batch_size} rows for task {task_name!r}: "
                                               f"none in {timeout:g} s", op=ctx["op_name"], partition=partition_id)
                return m
        except BaseException as e:
            # A late reply, a lost one, an interrupt while it arrived: the
            # rows it took, if any, go back to the task. A fetch never
            # consumes rows its caller did not receive.
            if not isinstance(e, _FETCH_REFUSED) or isinstance(e, errors.UnavailableError):
                self._give_back(partition_id, task_name, req.key)
            raise

    def _acknowledge(self, partition, task, key):
        """Keep the rows of the held fetch named ``key`` (``get_meta``'s
        ``_hold``): consumed for ``task`` for good. :class:`NotFoundError`
        says they were given back (the hold outlived the controller's
        held-fetch TTL): the caller must not use them."""
        self._call(wire.ACKNOWLEDGE, control_pb2.AcknowledgeRequest(partition=partition, task=task, key=key), None,
                   op_name="acknowledge", partition=partition)

    def _give_back_rows(self, partition, task, key, indexes):
        """Give back ``indexes``, some of the rows of the fetch named
        ``key``, to ``task``; the fetch keeps the others (held, until
        :meth:`_acknowledge` keeps them or :meth:`_give_back` gives them
        back). As the Go client's UnconsumeRows: only to a controller whose
        HELLO lists "unconsume_rows" (an older one would give back the whole
        fetch), else :class:`NotSupportedError` and nothing is sent; a row
        the fetch took that was cleared since gives nothing back (it is
        gone) and the others still go back; a row the fetch never took is
        :class:`InvalidError` naming it, and nothing goes back. Idempotent, so repeated over a new connection."""
        idx = [int(i) for i in indexes]
        if not idx:
            raise errors.InvalidError(f"rows of the fetch of task {task!r} given back: no row named",
                                      op="unconsume", partition=partition)
        req = control_pb2.UnconsumeRequest(partition=partition, task=task, key=key, indexes=idx)
        self._call(wire.UNCONSUME, req, None, op_name="unconsume", partition=partition,
                   need=(wire.FEATURE_UNCONSUME_ROWS,))

    def _give_back(self, partition, task, key):
        """Give the rows of the fetch named ``key`` back to ``task``: now, or
        while the controller cannot be reached, from a thread that tries
        again for up to GIVE_BACK_S. Giving back a fetch that took nothing
        changes nothing, and no fetch with that key can take rows after."""
        req = control_pb2.UnconsumeRequest(partition=partition, task=task, key=key)

        def once():
            try:
                self._call(wire.UNCONSUME, req, None, op_name="unconsume", partition=partition, repeat=False)
            except errors.TQError as e:
                # Unreachable, or shutting down: later() tries again.
                # Refused, or the client closed: nothing to try again.
                return not (_conn_lost(e) and not self._closed)
            return True

        if once():
            return

        def later():
            end, pause = time.monotonic() + GIVE_BACK_S, 0.05
            while not self._closed and time.monotonic() < end:
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
                if once():
                    return
        threading.Thread(target=later, name="tq-give-back", daemon=True).start()

    def put(self, data, metadata: BatchMeta | None = None, partition_id: str | None = None) -> BatchMeta:
        """Write the fields of ``data`` to the rows of ``metadata`` (new rows
        of ``partition_id`` when None); returns the rows' meta afterwards.
        It waits for room as :meth:`kv_batch_put` does."""
        if not hasattr(data, "items"):
            raise errors.InvalidError("data must be a dict of name → value", op="put")
        n = _rows_of(data)
        if metadata is None:
            if partition_id is None:
                raise errors.InvalidError("put needs metadata or a partition_id", op="put")
            _text(partition_id, "partition_id", "put", "partition")
            metadata = self.get_meta(list(data.keys()), n, partition_id, mode="insert")
        if metadata.size == 0:
            raise errors.InvalidError("put with an empty meta", op="put")
        parts = set(metadata.partition_ids)
        if len(parts) != 1:
            raise errors.InvalidError(f"put to rows of {len(parts)} partitions", op="put")
        part = parts.pop()
        cols = _cols.columns(data, metadata.size)
        if metadata._cluster:
            self.units()
            if metadata._cluster != self._units_cluster:
                # A controller that started anew may have given these row
                # indexes to other rows.
                raise errors.LostError(f"the rows are of cluster {metadata._cluster}, whose controller started anew "
                                       f"as cluster {self._units_cluster} without its state", op="put", partition=part)
        req = control_pb2.CommitRequest(partition=part, indexes=metadata.global_indexes)
        self._write_and_commit(metadata.global_indexes[0], cols, req, wire.COMMIT, control_pb2.CellsReply,
                               {"op_name": "put", "partition": part})
        if any(metadata.custom_meta):
            self.set_custom_meta(metadata)
        names = sorted(set(metadata.field_schema) | set(data.keys()))
        before = self._cluster_now
        rep = self._call(wire.ROWS_META, control_pb2.RowsMetaRequest(partition=part, indexes=metadata.global_indexes,
                                                                     fields=_sel(names)),
                         control_pb2.MetaReply, op_name="put", partition=part)
        out = self._meta_of(rep.meta, before)
        out.extra_info = dict(metadata.extra_info)
        return out

    def get_data(self, metadata: BatchMeta, *, copy: bool = True, fields=None, into=None, device=None):
        """The fields of ``metadata``'s rows, in its row order (dict, or
        TensorDict when importable). ``fields``: those to read (one as a
        str; default: every field of the meta), each named once: a field
        named twice is :class:`InvalidError` naming it, and nothing is read.
        ``copy=False``: a :class:`View`.
        ``into``: arrays to read dense fields into, and ``device``: a torch
        device to return tensors on, as for :meth:`kv_batch_get`.
        Cells a drain (``tq unit drain``) moved since the meta was taken are
        read where they went; the meta is left as it is."""
        dev = _device(device, into, copy, "get_data")
        fields = _field_list(fields, "get_data")
        names = list(into) if into is not None else fields if fields is not None else metadata.field_names
        if into is None and (metadata.size == 0 or not names):
            return View({}, []) if not copy else {}
        keys = metadata.keys if metadata.keys is not None else metadata.global_indexes
        part = metadata.partition_ids[0] if metadata.size else ""
        cells = metadata._cells
        # A unit that no longer holds the cells (StaleError) may have had
        # them moved off by a drain: the controller says where (MOVED).
        # Cells overwritten or cleared have no forwarding: the read fails
        # as it would have.
        for attempt in range(3):
            try:
                if dev is not None:
                    row_keys = [k if k is not None else i for k, i in zip(keys, metadata.global_indexes)]
                    return self._read_to(metadata, cells, names, row_keys, part, "get_data", dev)
                return self._get_data(metadata, cells, names, keys, part, copy, into)
            except errors.StaleError:
                moved = self._moved(cells, names, part) if attempt < 2 else None
                if moved is None:
                    raise
                cells = moved

    def _get_data(self, metadata, cells, names, keys, part, copy, into):
        if into is not None:
            return self._read_into(metadata, into, list(keys), part, "get_data", cells=cells)
        row_keys = [k if k is not None else i for k, i in zip(keys, metadata.global_indexes)]
        data, leases = self._read_fields(metadata.size, metadata.field_schema, cells, names, row_keys,
                                         view=not copy, partition=part, op="get_data", of=metadata._cluster)
        if not copy:
            return View(data, leases, partition=part, keys=row_keys)
        return _maybe_tensordict(data, metadata.size)

    def _moved(self, cells: dict, names, partition: str):
        """``cells`` with those of ``names`` that the controller reports
        moved at their new locations; None when none moved (or it cannot
        tell)."""
        out = None
        for f in names:
            c = cells[f]
            to_unit, to_seg, to_gen = c.unit.copy(), c.segment.copy(), c.gen.copy()
            to_off, to_len = c.offset.copy(), c.len.copy()
            any_moved = False
            for lo in range(0, len(c), MOVED_CHUNK):
                part = c.take(np.arange(lo, min(lo + MOVED_CHUNK, len(c))))
                req = cluster_pb2.MovedRequest()
                getattr(req, "from").CopyFrom(_addrs.to_pb(part))
                try:
                    rep = self._call(wire.MOVED, req, cluster_pb2.MovedReply, op_name="get_data", partition=partition)
                    to = _addrs.expand(rep.to, len(part))
                except errors.TQError:
                    return None
                moved = np.flatnonzero((to.unit != 0) & (to.unit != _addrs.UNIT_LOST))
                if len(moved) == 0:
                    continue
                any_moved = True
                at = moved + lo
                to_unit[at], to_seg[at], to_gen[at] = to.unit[moved], to.segment[moved], to.gen[moved]
                to_off[at], to_len[at] = to.offset[moved], to.len[moved]
            if any_moved:
                if out is None:
                    out = dict(cells)
                out[f] = _addrs.Cells(to_unit, to_seg, to_gen, to_off, to_len)
        return out

    def reserve_kv_put(self, keys, partition_id: str, specs: dict) -> "Reservation":
        """Shared memory for a KV put that the caller fills in place: no
        copy at all. ``specs``: field → (TQ dtype name or numpy dtype, row
        shape), dense fields. Returns a :class:`Reservation` whose
        ``fields`` are writable arrays of shape ``(len(keys),) + row shape``
        in the storage unit's memory; :meth:`Reservation.commit` makes them
        the keys' values (with tags), :meth:`Reservation.abort` gives the
        memory back. Needs a storage unit on this host
        (:class:`NotSupportedError` otherwise). With no room there it waits
        for room as :meth:`kv_batch_put` does."""
        keys = _as_keys(keys, partition_id, "reserve_kv_put")
        if not keys or not specs:
            raise errors.InvalidError("a reservation needs keys and fields", op="reserve_kv_put")
        n = len(keys)
        fields = []
        for name, spec in specs.items():
            _cols.check_name(name)
            dname, shape = _reserve_spec(name, spec)
            npdt = _cols.numpy_dtype(dname)
            row = npdt.itemsize * math.prod(shape)
            fields.append(_cols.Column(name, dname, "dense", shape, None, [row] * n, []))
        unit, conn, rep, cluster = self._reserve(keys, partition_id, fields)
        try:
            ext = _addrs.expand(rep.extents, len(fields), unit.id)
            arrays = {}
            for i, c in enumerate(fields):
                raw = unit.seg_array(int(ext.segment[i]), int(ext.offset[i]), c.nbytes)
                raw.flags.writeable = True
                arrays[c.name] = raw.view(_cols.numpy_dtype(c.dtype)).reshape((n,) + c.shape)
        except BaseException:
            # The unit's answer cannot be used (a range outside its
            # segment, a segment it would not hand over): give the
            # reservation back, and the connection with it.
            try:
                Reservation(self, unit, conn, rep.reservation, keys, partition_id, fields, None, {}, cluster).abort()
            except errors.TQError:
                pass  # the error that ended it says more
            raise
        return Reservation(self, unit, conn, rep.reservation, keys, partition_id, fields, ext, arrays, cluster)

    def _reserve(self, keys, partition, fields):
        """reserve_kv_put's RESERVE on a unit on this host that serves
        shared memory: (unit, conn, reply, the cluster of the unit table),
        the first of them with room. With none, it waits for room on its
        first choice, which answers after its reserve wait (5 s); the
        reservation then waits on, placed anew a UNITS_REFRESH_S after each
        round began on the units as listed then, until the client's timeout
        (as a put, see _place_rows)."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        h = zlib.crc32(keys[0].encode())
        size = sum(c.nbytes for c in fields)
        most = self._largest()
        if most and size > most:  # it would wait for room that never comes
            raise errors.CapacityError(f"a reservation of {size} bytes, more than the largest storage unit's "
                                       f"capacity ({most} bytes)", op="reserve_kv_put", partition=partition)
        waited = None
        while True:
            self.units()
            cluster = self._units_cluster  # before placement, for the commit
            unit = self._pick(h)
            if not unit.shm:
                local = [u for u in self.units().values() if u.shm and u.alive and not u.draining]
                if not local:
                    raise errors.NotSupportedError("no storage unit on this host serves shared memory",
                                                   op="reserve_kv_put")
                unit = local[h % len(local)]
            # Offered first without waiting to each unit here that serves
            # shared memory, the first choice first: one full unit must not
            # keep the reservation waiting while another has room.
            local = sorted((u for u in self._placeable() if u.shm and u.id != unit.id), key=lambda u: u.id)
            for u in [unit] + local[h % len(local):] + local[:h % len(local)] if local else [unit]:
                conn = u.pool.take()
                try:
                    rep = conn.call(wire.RESERVE, data_pb2.ReserveRequest(sizes=[c.nbytes for c in fields],
                                                                          no_wait=True),
                                    data_pb2.ReserveReply, op_name="reserve_kv_put")
                except errors.CapacityError:
                    u.pool.give(conn)
                    continue
                except BaseException:
                    u.pool.give(conn)
                    raise
                return u, conn, rep, cluster
            began = time.monotonic()
            if waited is None:
                waited = began
            conn = unit.pool.take()
            try:
                left = None if deadline is None else max(deadline - began, 0.001)
                rep = conn.call(wire.RESERVE, data_pb2.ReserveRequest(sizes=[c.nbytes for c in fields],
                                                                      wait_ms=room_wait_ms(left)),
                                data_pb2.ReserveReply, op_name="reserve_kv_put",
                                timeout=None if left is None else left + ROOM_GRACE)
            except (errors.CapacityError, errors.DeadlineError) as e:
                unit.pool.give(conn)
                if deadline is None and isinstance(e, errors.DeadlineError):
                    raise  # the unit's, not a timeout of this client's
                if isinstance(e, errors.DeadlineError) or not _pause_round(began, deadline):
                    raise errors.CapacityError(
                        f"no storage unit on this host had room for {size} bytes: the "
                        f"reservation waited for room {time.monotonic() - waited:.1f} s, until the client's timeout "
                        f"({self.timeout:g} s) ended it; the last try: {e}", op="reserve_kv_put",
                        partition=partition) from e
                continue
            except BaseException:
                unit.pool.give(conn)
                raise
            return unit, conn, rep, cluster

    def set_custom_meta(self, metadata: BatchMeta) -> None:
        """Merge each row's ``custom_meta`` into its tags."""
        by = {}
        for gi, p, t in zip(metadata.global_indexes, metadata.partition_ids, metadata.custom_meta):
            by.setdefault(p, ([], []))
            by[p][0].append(gi)
            by[p][1].append(tags_to_json(t or {}))
        for p, (idx, tags) in by.items():
            self._call(wire.SET_TAGS, control_pb2.SetTagsRequest(partition=p, indexes=idx, tags=tags), None,
                       op_name="set_custom_meta", partition=p)

    def clear_samples(self, metadata: BatchMeta) -> None:
        by = {}
        for gi, p in zip(metadata.global_indexes, metadata.partition_ids):
            by.setdefault(p, []).append(gi)
        for p, idx in by.items():
            self._call(wire.CLEAR_ROWS, control_pb2.ClearRowsRequest(partition=p, indexes=idx),
                       control_pb2.CellsReply, op_name="clear_samples", partition=p)

    def clear_partition(self, partition_id: str) -> None:
        _text(partition_id, "partition_id", "clear_partition", "partition")
        self._call(wire.CLEAR_PARTITION, control_pb2.ClearPartitionRequest(partition=partition_id),
                   control_pb2.CellsReply, op_name="clear_partition", partition=partition_id)

    def mark_done(self, partition_id: str) -> None:
        """Say the producer adds no more rows to ``partition_id``: fetches
        then return short last batches, and after them raise
        :class:`DoneError` (the streaming loader's finite mode ends)."""
        _text(partition_id, "partition_id", "mark_done", "partition")
        self._call(wire.MARK_DONE, control_pb2.MarkDoneRequest(partition=partition_id), control_pb2.Empty,
                   op_name="mark_done", partition=partition_id)

    def get_partition_list(self):
        return list(self._call(wire.PARTITIONS, None, control_pb2.PartitionsReply, op_name="partitions").partitions)

    def get_production_status(self, data_fields, partition_id: str):
        """(global indexes, produced) — produced is an int8 array rows ×
        ``data_fields``, which names each field once (a field named twice, or
        no list at all, is :class:`InvalidError`, and nothing is sent)."""
        _text(partition_id, "partition_id", "get_production_status", "partition")
        fields = _field_list(data_fields, "get_production_status")
        if fields is None:
            raise errors.InvalidError("data_fields is None: the status is per named field; name them",
                                      op="get_production_status")
        rep = self._call(wire.PRODUCTION_STATUS, control_pb2.ProductionStatusRequest(
            partition=partition_id, fields=list(fields)), control_pb2.ProductionStatusReply,
            op_name="get_production_status", partition=partition_id)
        idx = np.asarray(rep.indexes, dtype=np.int64)
        prod = np.asarray(rep.produced, dtype=np.int8).reshape(len(idx), len(rep.fields)) if len(idx) else \
            np.zeros((0, len(rep.fields)), np.int8)
        return idx, prod

    def _consumption(self, task_name: str, partition_id: str):
        _text(task_name, "task_name", "get_consumption_status")
        _text(partition_id, "partition_id", "get_consumption_status", "partition")
        return self._call(wire.CONSUMPTION_STATUS, control_pb2.ConsumptionStatusRequest(
            partition=partition_id, task=task_name), control_pb2.ConsumptionStatusReply,
            op_name="get_consumption_status", partition=partition_id)

    def get_consumption_status(self, task_name: str, partition_id: str):
        """(global indexes, consumed) — consumed is an int8 array."""
        rep = self._consumption(task_name, partition_id)
        return np.asarray(rep.indexes, dtype=np.int64), np.asarray(rep.consumed, dtype=np.int8)

    def check_production_status(self, data_fields, partition_id: str) -> bool:
        try:
            idx, prod = self.get_production_status(data_fields, partition_id)
        except errors.NotFoundError:
            return False
        return len(idx) > 0 and bool(np.all(prod == 1))

    def check_consumption_status(self, task_name: str, partition_id: str) -> bool:
        """Whether ``task_name`` consumed every row of the partition for
        good: False for an unknown or empty partition, and while a held
        fetch (a loader's, between its fetch and its yield) holds rows that
        may still come back."""
        try:
            rep = self._consumption(task_name, partition_id)
        except errors.NotFoundError:
            return False
        return len(rep.indexes) > 0 and all(rep.consumed) and not rep.held

    def reset_consumption(self, partition_id: str, task_name: str | None = None) -> bool:
        _text(partition_id, "partition_id", "reset_consumption", "partition")
        _text(task_name, "task_name", "reset_consumption", optional=True)
        self._call(wire.RESET_CONSUMPTION, control_pb2.ResetConsumptionRequest(partition=partition_id,
                                                                               task=task_name or ""),
                   None, op_name="reset_consumption", partition=partition_id)
        return True

    # Tags by key.
    def set_tags(self, partition_id: str, indexes, tags) -> None:
        _text(partition_id, "partition_id", "set_tags", "partition")
        self._call(wire.SET_TAGS, control_pb2.SetTagsRequest(partition=partition_id, indexes=list(indexes),
                                                             tags=[tags_to_json(t) for t in tags]),
                   None, op_name="set_tags", partition=partition_id)

    def delete_tags(self, keys, partition_id: str, names):
        keys = _as_keys(keys, partition_id, "delete_tags")
        rep = self._call(wire.DELETE_TAGS, control_pb2.DeleteTagsRequest(partition=partition_id, keys=keys,
                                                                         names=list(names)),
                         control_pb2.DeleteTagsReply, op_name="delete_tags", partition=partition_id)
        return tags_from_json_list(rep.tags)

    def compare_and_set_tag(self, key: str, partition_id: str, name: str, old=None, new=None, *,
                            old_absent: bool = False, delete: bool = False):
        """Set tag ``name`` of ``key`` to ``new`` if it holds ``old``
        (``old_absent``: if absent; ``delete``: remove it). None counts as
        absent on both sides, as a tag holding null does: ``old=None``
        matches an absent tag and ``new=None`` removes it. Returns
        (swapped, current value or None when absent)."""
        import json
        _text(key, "key", "compare_and_set_tag")
        if not key:
            raise errors.InvalidError("empty key", op="compare_and_set_tag", keys=[""])
        _text(partition_id, "partition_id", "compare_and_set_tag", "partition")
        _text(name, "name", "compare_and_set_tag", bounded=False)  # a tag name: the tags' bound holds
        req = control_pb2.CompareAndSetTagRequest(
            partition=partition_id, key=key, name=name,
            old_value=b"" if old_absent else value_to_json(old, f"tag {name!r}: old value"),
            new_value=b"" if delete else value_to_json(new, f"tag {name!r}: new value"))
        rep = self._call(wire.COMPARE_AND_SET_TAG, req, control_pb2.CompareAndSetTagReply,
                         op_name="compare_and_set_tag", partition=partition_id)
        return rep.swapped, (json.loads(rep.current) if rep.current else None)

    def list_keys(self, partition_id: str, where=None) -> dict:
        """key → tags of ``partition_id`` whose tags pass every condition of
        ``where``: ``{name: value}`` (equals; a list value equals a list),
        ``{name: {v1, v2}}`` (a set: in), ``{name: ...}`` (exists),
        ``{name: tq.ABSENT}`` (absent; ``None`` tests for a null value); see
        :func:`tag_conditions`."""
        _text(partition_id, "partition_id", "list_keys", "partition")
        out, cursor = {}, b""
        conds = tag_conditions(where or {})
        while True:
            rep = self._call(wire.LIST_KEYS, control_pb2.ListKeysRequest(partition=partition_id, cursor=cursor,
                                                                         where=conds),
                             control_pb2.ListKeysReply, op_name="list_keys", partition=partition_id)
            for p in rep.partitions:
                ks = p.keys
                out.update(zip([k.key for k in ks], tags_from_json_list([k.tags for k in ks])))
            if not rep.next:
                return out
            cursor = rep.next

    # Checkpoints (named; saved under the controller's data directory).
    def save_checkpoint(self, name: str, *, include_storage: bool = True, metadata: dict | None = None) -> dict:
        """Save the cluster's metadata and every cell's bytes as checkpoint
        ``name`` (1 to 128 letters, digits, '.', '_', '-', not starting
        with '.' or '-') under the controller's
        data directory, as ``tq checkpoint save``, and return what was
        saved (as an entry of :meth:`list_checkpoints`).

        ``metadata``, a dict that JSON can encode (at most 64 KiB encoded;
        a training step, say), is kept with the checkpoint:
        :meth:`list_checkpoints` lists it and :meth:`load_checkpoint`
        returns it. ``include_storage=False`` (TransferQueue's keyword)
        saves the bytes all the same, as the reference's SimpleStorage
        does, and warns once per process."""
        if not include_storage:
            _warn_once("include_storage", "TQ checkpoints always include the cells' bytes: "
                                          "save_checkpoint(include_storage=False) saves them all the same")
        req = control_pb2.CheckpointRequest(name=name)
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise TypeError(f"save_checkpoint: metadata must be a dict, not {type(metadata).__name__}")
            try:
                req.metadata = json.dumps(metadata, allow_nan=False).encode()
            except (TypeError, ValueError) as e:
                raise TypeError(f"save_checkpoint: metadata cannot be encoded as JSON: {e}") from None
        rep = self._call(wire.SAVE_CHECKPOINT, req, control_pb2.CheckpointInfo, op_name="save_checkpoint",
                         timeout=max(self.timeout, 600.0))
        return _checkpoint_info(rep)

    def load_checkpoint(self, name: str) -> dict | None:
        """Replace the cluster's state with checkpoint ``name``, as ``tq
        checkpoint load``, and return the metadata it was saved with (None
        when none)."""
        rep = self._call(wire.LOAD_CHECKPOINT, control_pb2.CheckpointRequest(name=name), control_pb2.CheckpointInfo,
                         op_name="load_checkpoint", timeout=max(self.timeout, 600.0))
        return _checkpoint_info(rep)["metadata"]

    def list_checkpoints(self) -> list:
        """The saved checkpoints: per checkpoint a dict of ``name``,
        ``saved_unix_ms``, ``bytes``, ``cells``, ``lost_cells``,
        ``metadata`` (the dict saved with it, or None) and ``unusable``
        (why :meth:`load_checkpoint` would refuse it, as for a checkpoint
        another build wrote; None when it loads)."""
        out, after = [], ""
        while True:  # page after page: CHECKPOINTS answers at most 1000 at a time
            rep = self._call(wire.CHECKPOINTS, control_pb2.CheckpointsRequest(after=after),
                             control_pb2.CheckpointsReply, op_name="checkpoints")
            out.extend(_checkpoint_info(c) for c in rep.checkpoints)
            # The last page; a server from before pages answers everything,
            # with no next.
            if not rep.next_after:
                return out
            after = _next_page(after, rep.next_after, "checkpoints")

    def metrics_endpoints(self) -> list:
        """The cluster's Prometheus endpoints (``"http://host:port/metrics"``):
        the controller's process's, then each live storage unit's that
        serves one, each once. Empty when no server runs with ``--metrics``.
        As the Go client's MetricsEndpoints (CLUSTER_INFO)."""
        rep = self._call(wire.CLUSTER_INFO, None, control_pb2.ClusterInfoReply, op_name="metrics_endpoints")
        return list(rep.metrics)

    def stats(self, partition_id: str):
        _text(partition_id, "partition_id", "stats", "partition")
        return self._call(wire.STATS, control_pb2.PartitionRequest(partition=partition_id),
                          control_pb2.PartitionStats, op_name="stats", partition=partition_id)

    def all_stats(self) -> list:
        """Every partition's ``PartitionStats``, by name, as :meth:`stats`
        gives one: a page of them a round trip (STATS_PAGE), where listing
        the partitions and asking each takes one per partition. From a
        controller without STATS_PAGE it does that, leaving out a
        partition cleared meanwhile. As the Go client's AllStats."""
        out, after = [], ""
        while True:
            try:
                rep = self._call(wire.STATS_PAGE, control_pb2.StatsPageRequest(after=after),
                                 control_pb2.StatsPageReply, op_name="stats_page")
            except errors.NotSupportedError:
                return self._stats_one_by_one()
            last = after
            for p in rep.partitions:
                if p.partition <= last:
                    raise errors.CorruptError(
                        f"the controller answered the page after {after!r} with partition {p.partition!r} "
                        f"after {last!r}, out of order", op="stats_page")
                last = p.partition
            out.extend(rep.partitions)
            if not rep.next_after:
                return out
            after = _next_page(after, rep.next_after, "stats_page")

    def _stats_one_by_one(self) -> list:
        out = []
        for p in self.get_partition_list():
            try:
                out.append(self.stats(p))
            except errors.NotFoundError:
                pass  # cleared meanwhile
        return out


class Reservation:
    """A KV put whose bytes the caller writes in place (see
    :meth:`Client.reserve_kv_put`). ``fields``: field → writable array in
    shared memory, valid until :meth:`commit` or :meth:`abort`; after that
    the memory belongs to the store (do not write it). A context manager:
    leaving the block without commit aborts."""

    def __init__(self, client, unit, conn, rid, keys, partition, cols, ext, arrays, cluster=""):
        self._client, self._unit, self._conn, self._rid = client, unit, conn, rid
        self._cluster = cluster  # of the unit table the unit was picked from
        self.keys, self.partition_id, self._cols, self._ext = keys, partition, cols, ext
        self.fields = arrays
        # Taken, never let go, by whichever of commit and abort ends the
        # reservation first: a lock's non-blocking acquire is one atomic
        # test-and-set, so a commit and an abort on two threads at once
        # end it once, and give its connection back once (given twice,
        # two callers would take the same connection), as View.release.
        self._once = threading.Lock()

    @property
    def done(self) -> bool:
        """Whether the reservation was committed or aborted."""
        return self._once.locked()

    def commit(self, tags=None) -> KVBatchMeta:
        if self.done:
            raise errors.ClosedError("reservation already committed or aborted")
        tags_json = None
        if tags is not None:
            tags_json = tags_to_json_list(tags)
            if len(tags_json) != len(self.keys):
                raise errors.InvalidError(f"{len(tags_json)} tag dicts for {len(self.keys)} keys",
                                          op="reserve commit", partition=self.partition_id)
        if not self._once.acquire(blocking=False):
            raise errors.ClosedError("reservation already committed or aborted")
        self.fields = {}
        unit, conn = self._unit, self._conn
        try:
            conn.call(wire.RESERVE_COMMIT, data_pb2.ReservationRequest(reservation=self._rid), None,
                      op_name="reserve commit")
        finally:
            unit.pool.give(conn)
        locs = [_addrs.run(unit.id, int(self._ext.segment[i]), int(self._ext.gen[i]), int(self._ext.offset[i]),
                           c.row_lens) for i, c in enumerate(self._cols)]
        req = control_pb2.CommitKeysRequest(partition=self.partition_id, keys=self.keys, cluster_id=self._cluster)
        req.fields.extend(c.commit_field(_addrs.to_pb(l)) for c, l in zip(self._cols, locs))
        if tags_json is not None:
            req.has_tags = True
            req.tags.extend(tags_json)
        try:
            rep = self._client._call(wire.COMMIT_KEYS, req, control_pb2.CommitKeysReply, op_name="reserve commit",
                                     partition=self.partition_id)
        except errors.LostError as e:
            if not _refused(e):
                raise
            # Refused as lost: the unit was marked draining (or its
            # generation fenced) since the reservation. The bytes are the
            # unit's, named by no cell: read them back, free them there
            # and put them on the units as they are now.
            again = {c.name: self._read_back(i, c) for i, c in enumerate(self._cols)}
            Client._free_quietly(unit, locs)
            self._client.units(refresh=True)
            return self._client.kv_batch_put(self.keys, self.partition_id, fields=again, tags=tags)
        except errors.TQError as e:
            if _refused(e):
                Client._free_quietly(unit, locs)
            raise
        return Client._kvmeta(self.keys, self.partition_id, rep)

    def _read_back(self, i, col):
        """A copy of field ``i``'s bytes, committed on the unit."""
        raw = self._unit.seg_array(int(self._ext.segment[i]), int(self._ext.offset[i]), col.nbytes)
        return raw.view(_cols.numpy_dtype(col.dtype)).reshape((len(self.keys),) + col.shape).copy()

    def abort(self) -> None:
        if not self._once.acquire(blocking=False):
            return
        self.fields = {}
        try:
            self._conn.call(wire.RESERVE_ABORT, data_pb2.ReservationRequest(reservation=self._rid), None,
                            op_name="reserve abort")
        finally:
            self._unit.pool.give(self._conn)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.abort()


def _async_twin(name):
    fn = getattr(Client, name)

    async def twin(self, *args, **kw):
        import asyncio
        if kw.get("into") is None:
            return await asyncio.to_thread(fn, self, *args, **kw)
        return await _ended_before_cancelled(asyncio.ensure_future(asyncio.to_thread(fn, self, *args, **kw)))
    twin.__name__ = twin.__qualname__ = "async_" + name
    twin.__doc__ = f"The asyncio twin of :meth:`{name}` (runs it on a worker thread)."
    if name in ("kv_batch_get", "get_data"):
        twin.__doc__ += (" Cancelled, a read into ``into=`` arrays raises CancelledError only once the read "
                         "ended: nothing writes into them after.")
    return twin


def _weak_watcher(client):
    """Client._watch_unit, holding the client weakly (a unit is the
    client's: a strong hold would keep a dropped client's connections open
    until the cyclic collector ran)."""
    ref = weakref.ref(client)

    def watcher(u, what, call):
        c = ref()
        if c is None:
            return call()
        return c._watch_unit(u, what, call)
    return watcher


def _watch_dead(ref, cond):
    """The thread that asks about the units of a client's calls that waited
    DEAD_CHECK_S (see Client._watch_unit). It looks at them every
    DEAD_LOOK_S (a call registers without waking it: a fast call costs no
    switch to this thread), holds the client weakly, and not while it
    waits; it ends with the client, or after DEAD_IDLE_S without calls."""
    idle_since = time.monotonic()
    while True:
        c = ref()
        if c is None:
            return
        with cond:
            if c._closed:
                return
            now = time.monotonic()
            waits = list(c._waits.values())
            if waits:
                idle_since = now
            elif now - idle_since >= DEAD_IDLE_S:
                c._watcher = None  # the next call starts another
                return
            due = [(w, u) for w, u in waits if now - w[0] >= DEAD_CHECK_S and not w[1]]
            if not due:
                wait = min([DEAD_LOOK_S] + [w[0] + DEAD_CHECK_S - now for w, _ in waits])
                del c, waits
                cond.wait(max(0.01, wait))
                continue
        del waits
        c._check_dead(due)
        del c, due


def _next_page(after: str, nxt: str, op: str) -> str:
    """A paged listing's next after: CorruptError for a next_after that
    does not advance past after (asking again would loop, and stopping
    would give part of the list as all of it)."""
    if nxt <= after:
        raise errors.CorruptError(
            f"the controller answered the page after {after!r} with next_after {nxt!r}, which does not advance",
            op=op)
    return nxt


async def _ended_before_cancelled(fut):
    """Await ``fut``, a call on a worker thread that writes into the
    caller's ``into=`` arrays. Cancelled, wait for the call to end all the
    same (a thread cannot be stopped) and then raise CancelledError: the
    caller may reuse the arrays once the cancellation returns, and nothing
    must write into them then. A cancellation while waiting waits on. The
    caller gets the cancellation, not the call's outcome: a call that
    failed (the arrays hold part of the read) goes to the event loop's
    exception handler, as asyncio reports an error nobody awaits."""
    import asyncio
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        while not fut.done():
            try:
                await asyncio.wait([fut])
            except asyncio.CancelledError:
                pass  # cancelled again: the read still writes
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:
            asyncio.get_running_loop().call_exception_handler({
                "message": "a cancelled read into the caller's arrays failed: they hold part of it",
                "exception": exc, "future": fut})
        raise


async def _on_own_thread(fn, *args, **kw):
    """``fn(*args, **kw)`` on a thread of its own rather than the event
    loop's executor, as asyncio.to_thread otherwise: a call that blocks
    until other calls are made (a blocking fetch, until its rows are put)
    must not hold one of the executor's few threads (min(32, CPUs + 4) by
    default), which those calls, made async in the same loop, queue for:
    as many blocking fetches as it has threads would leave the put they
    wait for queued until they time out. Cancelled, the call goes on (a
    thread cannot be stopped) and its outcome is dropped, as to_thread's."""
    import asyncio
    import contextvars
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    ctx = contextvars.copy_context()

    def settle(ok, v):
        if fut.done():  # cancelled
            return
        if ok:
            fut.set_result(v)
        else:
            fut.set_exception(v)

    def run():
        try:
            ok, v = True, ctx.run(fn, *args, **kw)
        except BaseException as e:  # noqa: B036 (handed to the awaiting task, as to_thread does)
            ok, v = False, e
        try:
            loop.call_soon_threadsafe(settle, ok, v)
        except RuntimeError:
            pass  # the loop closed: nobody awaits it
        del v

    threading.Thread(target=run, name="tq-async-wait", daemon=True).start()
    return await fut


async def _async_get_meta(self, *args, **kw):
    import asyncio
    import inspect
    a = inspect.signature(Client.get_meta).bind(self, *args, **kw)
    a.apply_defaults()
    if a.arguments["mode"] != "fetch" or a.arguments["_fetch_key"] is not None:
        return await asyncio.to_thread(Client.get_meta, self, *args, **kw)
    key = os.urandom(16)
    # A blocking fetch waits on a thread of its own: see _on_own_thread.
    run = _on_own_thread if a.arguments["wait"] else asyncio.to_thread
    try:
        return await run(Client.get_meta, self, *args, _fetch_key=key, **kw)
    except asyncio.CancelledError:
        # The fetch goes on in its thread, and rows it takes would reach
        # no one: give its key back, from a thread of its own (the event
        # loop must not wait on the controller). The rows it took go back
        # to the task, and once the key is given back a fetch with it
        # takes nothing (a blocked one fails when it wakes).
        threading.Thread(target=self._give_back, args=(a.arguments["partition_id"], a.arguments["task_name"], key),
                         name="tq-give-back", daemon=True).start()
        raise


_async_get_meta.__name__ = _async_get_meta.__qualname__ = "async_get_meta"
_async_get_meta.__doc__ = ("The asyncio twin of :meth:`get_meta` (runs it on a worker thread; a blocking fetch, "
                           "``wait=True``, on a thread of its own, so that it holds none of the event loop's "
                           "executor while it waits). Cancelled, a fetch gives back the rows it took or takes "
                           "later.")


# Every call has an async_ twin, as TransferQueue's AsyncTransferQueueClient.
for _name in ("kv_put", "kv_batch_put", "kv_batch_get", "kv_list", "kv_clear", "kv_retrieve_keys",
              "kv_retrieve_meta", "put", "get_data", "set_custom_meta", "clear_samples",
              "clear_partition", "mark_done", "get_partition_list", "get_production_status", "get_consumption_status",
              "check_production_status", "check_consumption_status", "reset_consumption", "set_tags",
              "delete_tags", "compare_and_set_tag", "list_keys", "save_checkpoint", "load_checkpoint",
              "list_checkpoints"):
    setattr(Client, "async_" + _name, _async_twin(_name))
Client.async_get_meta = _async_get_meta


def tag_conditions(where: dict):
    """``{name: value}`` → TagConditions: a value is tested for equality; a
    ``set`` or ``frozenset`` of values for membership; ``...`` (Ellipsis) for
    presence; :data:`ABSENT` for absence."""
    out = []
    for name, v in where.items():
        c = control_pb2.TagCondition(name=name)
        if v is Ellipsis:
            c.test = control_pb2.TAG_TEST_EXISTS
        elif v is ABSENT:
            c.test = control_pb2.TAG_TEST_ABSENT
        elif isinstance(v, (set, frozenset)):
            c.test = control_pb2.TAG_TEST_IN
            c.values.extend(value_to_json(x, f"tag {name!r}: value") for x in v)
        else:
            c.test = control_pb2.TAG_TEST_EQUALS
            c.values.append(value_to_json(v, f"tag {name!r}: value"))
        out.append(c)
    return out


class _Absent:
    def __repr__(self):
        return "tq.ABSENT"


ABSENT = _Absent()


def _scatter(dst: np.ndarray, c, pos, got) -> None:
    """Put the bytes ``got`` of cells ``pos`` of ``c`` (read back to back)
    where those cells go in ``dst`` (every cell of ``c`` back to back)."""
    got = np.frombuffer(got, dtype=np.uint8) if not isinstance(got, np.ndarray) else got
    L = int(c.len[0]) if len(c) else 0
    if len(c) and bool(np.all(c.len == L)) and L:
        # Cells of one size (a dense field): one fancy-indexed copy.
        dst.reshape(len(c), L)[pos] = got.reshape(len(pos), L)
        return
    starts = np.cumsum(c.len, dtype=np.uint64) - c.len
    at = 0
    for p in pos.tolist():
        ln, st = int(c.len[p]), int(starts[p])
        dst[st:st + ln] = got[at:at + ln]
        at += ln


_warned = set()


def _checkpoint_info(c) -> dict:
    """A CheckpointInfo as :meth:`Client.list_checkpoints` gives it."""
    meta = None
    if c.metadata:
        try:
            meta = json.loads(c.metadata)
        except ValueError as e:
            raise errors.CorruptError(f"checkpoint {c.name!r}: its metadata is not JSON: {e}") from None
    return {"name": c.name, "saved_unix_ms": c.saved_unix_ms, "bytes": c.bytes, "cells": c.cells,
            "lost_cells": c.lost_cells, "metadata": meta, "unusable": c.unusable or None}


def _warn_once(what: str, message: str) -> None:
    """A UserWarning, the first time ``what`` happens in this process."""
    if what in _warned:
        return
    _warned.add(what)
    import warnings
    warnings.warn(message, UserWarning, stacklevel=3)


def _rows_of(data) -> int:
    """The rows of ``data``: those of its first field's value."""
    for k, v in data.items():
        return _cols.rows_of(k, v)
    raise errors.InvalidError("data has no fields")


try:  # pragma: no cover - depends on the environment
    from tensordict import TensorDict as _TD  # type: ignore
except Exception:  # noqa: BLE001
    _TD = None


def _reserve_spec(name, spec):
    """reserve_kv_put's spec of field ``name``: (TQ dtype name, row shape),
    or an InvalidError naming the field."""
    def bad(why):
        return errors.InvalidError(f"field {name!r}: {why}", op="reserve_kv_put", fields=[name])
    if not isinstance(spec, (tuple, list)) or len(spec) != 2:
        raise bad(f"spec {spec!r} is not a (dtype, row shape) pair")
    dt, shape = spec
    if isinstance(dt, str):
        if dt not in _cols.DTYPES:
            raise bad(f"unknown TQ dtype {dt!r}")
        dname = dt
    else:
        try:
            dname = _cols.tq_dtype(np.dtype(dt))
        except (TypeError, ValueError, errors.InvalidError) as e:
            raise bad(f"dtype {dt!r}: {getattr(e, 'message', e)}") from None
    try:
        dims = tuple(shape)
    except TypeError:
        raise bad(f"row shape {shape!r} is not a sequence of dimensions") from None
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise bad(f"row shape {shape!r} needs non-negative integer dimensions")
    return dname, tuple(int(d) for d in dims)


def _device(device, into, copy, op):
    """The torch device that device= names, None for none; refused with
    into= or copy=False, or without torch."""
    if device is None:
        return None
    if into is not None or not copy:
        raise errors.InvalidError("device= reads into memory of its own: not with into= or copy=False", op=op)
    if _cols._torch is None:
        raise errors.NotSupportedError("device= needs torch, which is not importable", op=op)
    try:
        dev = _cols._torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise errors.InvalidError(f"device={device!r}: {e}", op=op) from None
    if dev.type == "cuda":
        # Refused here, before any read: torch would fail only at the
        # copy, with an error of its own (RuntimeError, AssertionError).
        cuda = _cols._torch.cuda
        if not cuda.is_available():
            raise errors.NotSupportedError(f"device={device!r}: torch sees no CUDA device", op=op)
        if dev.index is not None and dev.index >= cuda.device_count():
            raise errors.InvalidError(f"device={device!r}: torch sees {cuda.device_count()} CUDA devices", op=op)
    return dev


def _maybe_tensordict(data: dict, n: int):
    """A TensorDict when tensordict and torch are importable and every field
    is dense; else the dict itself."""
    if _TD is None or not data or not all(isinstance(v, np.ndarray) for v in data.values()):
        return data
    return _TD({k: _cols.to_tensor(np.array(v), k) for k, v in data.items()}, batch_size=[n])
