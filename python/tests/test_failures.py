"""A storage unit that dies: reads of its cells are LostError (and
UnavailableError), never a hang or wrong data; puts go to the units left.
A controller that restarts: the calls safe to repeat are sent again."""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import numpy as np
import pytest

import tq
from conftest import _bin, _free_port, serve_args


class Split:
    """A controller and storage units (two of 64 MiB unless told), each a
    process of its own. ``heartbeat``: the controller's, which reports a
    unit silent for five of them dead; ``reserve_wait``: the units'
    (tq serve --reserve-wait)."""

    def __init__(self, units=2, capacity="64MiB", heartbeat="100ms", reserve_wait=None):
        self.dir = tempfile.mkdtemp(prefix="tqpy-split-")
        port = _free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        d = os.path.join(self.dir, "d")
        self.env = dict(os.environ, TQ_DATA_DIR=d)
        self.env.pop("TQ_TOKEN", None)
        self.procs, self.logs = [], []
        # The units heartbeat at the interval their controller tells them.
        self.controller_args = ["--role", "controller", "--listen", f"127.0.0.1:{port}", "--in-memory",
                                "--heartbeat", heartbeat]
        self.controller, _ = self._start("c", self.controller_args)
        self.units = {}
        self.capacity = capacity
        self.unit_args = [] if reserve_wait is None else ["--reserve-wait", reserve_wait]
        for _ in range(units):
            self.add_unit()
        with open(os.path.join(d, "token")) as f:
            self.token = f.read().strip()

    def add_unit(self) -> int:
        """Start one more storage unit; returns its id."""
        p, log = self._start(f"u{len(self.units) + 1}", ["--role", "unit", "--controller", self.address,
                                                          "--capacity", self.capacity, "--huge-pages=false",
                                                          *self.unit_args])
        uid = int(re.search(r"storage unit (\d+)", log).group(1))
        self.units[uid] = p
        return uid

    def _start(self, name, args):
        logp = os.path.join(self.dir, name + ".log")
        log = open(logp, "w+")
        p = subprocess.Popen([_bin("TQ_BIN", "tq"), "serve", *serve_args(
                                 ["--socket-dir=" + os.path.join(self.dir, "s" + name),
                                  "--data-dir=" + os.path.join(self.dir, "d")], args)],
                             stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.procs.append(p)
        for _ in range(600):
            log.seek(0)
            text = log.read()
            if "tq serve: ready" in text:
                return p, text
            if p.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"tq serve {name} did not start:\n{text}")

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def sigstop(p):
    """SIGSTOP process p and wait until every thread of it is stopped: the
    stop reaches the threads only once one of them has run to take the
    signal, and on a loaded machine the others may meanwhile serve a
    request sent after the kill (a put this test meant for a silent unit,
    answered)."""
    p.send_signal(signal.SIGSTOP)
    task = f"/proc/{p.pid}/task"
    for _ in range(2000):
        states = []
        for tid in os.listdir(task):
            try:
                with open(f"{task}/{tid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:
                pass
        if states and all(st in "tT" for st in states):
            return
        time.sleep(0.005)
    raise AssertionError(f"process {p.pid} not stopped 10 s after SIGSTOP: thread states {states}")


@pytest.fixture
def split():
    s = Split()
    yield s
    s.stop()


@pytest.mark.parametrize("transport", ["tcp", "shm"])
def test_unit_dies(split, transport):
    c = tq.Client(split.address, token=split.token, transport=transport)
    try:
        big = np.arange(2 * 100000, dtype=np.float64).reshape(2, 100000)
        for k in range(8):  # keys land on both units (placement hashes the first key)
            c.kv_batch_put([f"a{k}", f"b{k}"], "p", {"x": big + k})
        where = {}
        for k in range(8):
            m = c.kv_retrieve_meta([f"a{k}"], "p")
            where[k] = int(m._cells["x"].unit[0])
        assert set(where.values()) == set(split.units), where
        dead = sorted(split.units)[0]
        split.units[dead].send_signal(signal.SIGKILL)
        split.units[dead].wait()
        for k, uid in where.items():
            if uid == dead:
                with pytest.raises(tq.LostError) as e:
                    c.kv_batch_get([f"a{k}", f"b{k}"], "p")
                assert isinstance(e.value, tq.UnavailableError)
            else:
                assert np.array_equal(c.kv_batch_get([f"a{k}", f"b{k}"], "p")["x"], big + k)
        # Puts go on, to the unit left.
        for k in range(8):
            c.kv_batch_put([f"n{k}"], "p", {"x": big[:1]})
            assert np.array_equal(c.kv_batch_get([f"n{k}"], "p")["x"], big[:1])
    finally:
        c.close()


@pytest.mark.parametrize("transport", ["tcp", "shm"])
def test_capacity(split, transport):
    """A put bigger than a unit's memory is CapacityError, and leaves nothing."""
    c = tq.Client(split.address, token=split.token, transport=transport)
    try:
        with pytest.raises(tq.CapacityError):
            c.kv_batch_put(["big"], "p", {"x": np.zeros((1, 80 << 17))})  # 80 MiB, units of 64 MiB
        with pytest.raises(tq.NotFoundError):
            c.kv_batch_get(["big"], "p")
        c.kv_batch_put(["small"], "p", {"x": np.zeros((1, 1 << 17))})  # the client goes on
        assert c.kv_batch_get(["small"], "p")["x"].shape == (1, 1 << 17)
    finally:
        c.close()


@pytest.mark.parametrize("transport", ["tcp", "shm"])
def test_full_unit_does_not_hold_up_put(split, transport):
    """Puts whose first choice is full go to the other unit instead of
    waiting there for room (and failing after the unit's reserve wait)."""
    import zlib
    c = tq.Client(split.address, token=split.token, transport=transport)
    try:
        a, b = sorted(split.units)
        keys = [k for k in (f"k{i}" for i in range(200)) if zlib.crc32(k.encode()) % 2 == 0][:24]
        val = np.ones((1, 1 << 20), dtype=np.float32)  # 4 MiB: 24 of them are 96 MiB, unit a holds 64
        on = {a: 0, b: 0}
        for i, k in enumerate(keys):
            c.kv_batch_put([k], "p", {"x": val * i})  # every key's first choice is unit a
            on[int(c.kv_retrieve_meta([k], "p")._cells["x"].unit[0])] += 1
        assert on[a] >= 12 and on[b] >= 8, on
        for i, k in enumerate(keys):
            assert np.array_equal(c.kv_batch_get([k], "p")["x"], val * i)
    finally:
        c.close()


@pytest.mark.parametrize("transport", ["tcp", "shm"])
def test_put_spills_across_units(split, transport):
    """A put bigger than any one unit but within the cluster's room is
    split over the units (96 MiB into two of 64 MiB), reads back
    bit-exact, and clears to nothing."""
    c = tq.Client(split.address, token=split.token, transport=transport)
    try:
        keys = [f"s{i}" for i in range(24)]
        val = np.arange(24 * (1 << 20), dtype=np.float32).reshape(24, 1 << 20)  # 24 rows of 4 MiB
        c.kv_batch_put(keys, "spill", {"x": val, "t": [f"row {i}" for i in range(24)]})
        meta = c.kv_retrieve_meta(keys, "spill")
        assert set(meta._cells["x"].unit.tolist()) == set(split.units)
        got = c.kv_batch_get(keys, "spill")
        assert np.array_equal(got["x"], val)
        assert list(got["t"]) == [f"row {i}".encode() for i in range(24)]  # opaque rows read back as bytes
        c.kv_clear(keys, "spill")
        m = c.put({"x": val}, partition_id="spill-batch")  # the batch API spills too
        assert np.array_equal(c.get_data(m)["x"], val)
        c.clear_samples(m)
    finally:
        c.close()


def test_calls_after_the_controller_restarts(tmp_path):
    """A controller that restarts leaves the client's pooled connections
    dead. A call that is safe to repeat (a listing, a read) is sent again
    over a new connection, with backoff, until the controller answers, for
    up to retry_for; a change (a put) is never sent again: it fails with
    UnavailableError once, and the idle connections to the dead process go
    with it, so that the next call dials afresh rather than failing once
    per pooled connection."""
    port = _free_port()
    data = str(tmp_path / "d")
    args = [_bin("TQ_BIN", "tq"), "serve", "--listen", f"127.0.0.1:{port}", "--socket-dir", str(tmp_path / "s"),
            "--data-dir", data, "--capacity", "64MiB", "--huge-pages=false"]
    env = dict(os.environ, TQ_DATA_DIR=data)
    env.pop("TQ_TOKEN", None)
    logp = tmp_path / "log"
    started = []

    def start():
        with open(logp, "a+") as log:
            p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        started.append(p)
        for _ in range(600):
            if logp.read_text().count("tq serve: ready") == len(started):
                return p
            assert p.poll() is None, "tq serve exited:\n" + logp.read_text()
            time.sleep(0.05)
        raise RuntimeError("tq serve did not start")

    def stop(p):
        p.terminate()
        p.wait(15)

    p = start()
    try:
        token = open(os.path.join(data, "token")).read().strip()
        c = tq.Client(f"tcp://127.0.0.1:{port}", token=token, transport="tcp")
        brief = tq.Client(f"tcp://127.0.0.1:{port}", token=token, transport="tcp", retry_for=0.3)
        c.kv_batch_put(["a"], "part", {"x": np.ones((1, 2), np.float32)})
        assert "part" in c.kv_list() and "part" in brief.kv_list()
        conns = [c._ctl.take() for _ in range(3)]  # three idle connections in the pool
        for conn in conns:
            c._ctl.give(conn)

        stop(p)
        t0 = time.monotonic()
        with pytest.raises(tq.UnavailableError, match="unreachable for 0.3 s"):
            brief.kv_list()
        assert 0.3 <= time.monotonic() - t0 < 5

        p = start()
        with pytest.raises(tq.UnavailableError):
            c.kv_batch_put(["b"], "part", {"x": np.ones((1, 2), np.float32)})  # not sent again, and the
        c.kv_batch_put(["b"], "part", {"x": np.ones((1, 2), np.float32)})  # dead idle ones went with it
        assert "part" in c.kv_list()
        stop(p)
        t0 = time.monotonic()
        with pytest.raises(tq.UnavailableError):
            c.kv_batch_put(["c"], "part", {"x": np.ones((1, 2), np.float32)})  # down: not sent again
        assert time.monotonic() - t0 < 5

        # A listing while the controller is down waits for it to come back.
        restart = threading.Thread(target=lambda: (time.sleep(0.5), start()))
        restart.start()
        try:
            t0 = time.monotonic()
            c.kv_list()
            c.get_partition_list()
            assert time.monotonic() - t0 >= 0.4
        finally:
            restart.join()
        brief.close()
        c.close()
    finally:
        for q in started:
            if q.poll() is None:
                stop(q)


def test_a_controller_without_its_state_is_a_new_cluster(split):
    """A controller restarted in memory is a new cluster and hands unit ids
    out again: here the units come back under each other's ids. A client
    connected before lists the units again before it reads by id (it used
    to read one unit's cells from the other: wrong bytes, or lost), a meta
    from before reads as lost, and its puts land where the new cluster says
    they are."""
    c = tq.Client(split.address, token=split.token, transport="tcp")
    fresh = None
    try:
        big = np.arange(4 * 50000, dtype=np.float64).reshape(4, 50000)  # through the units
        c.kv_batch_put(["a"], "p", {"x": big[:1]})
        a_meta = c.kv_retrieve_meta(["a"], "p")
        q_rows = c.get_meta(["x"], 1, "q", mode="insert")
        was = {uid: u.incarnation for uid, u in c.units().items()}
        assert sorted(was) == [1, 2]
        split.controller.kill()
        split.controller.wait()
        # Unit 1 waits while unit 2 registers with the new controller, as 1.
        sigstop(split.units[1])
        try:
            split._start("c2", split.controller_args)
            fresh = tq.Client(split.address, token=split.token, transport="tcp")
            _until(lambda: {u: x.incarnation for u, x in fresh.units(refresh=True).items()} == {1: was[2]})
        finally:
            split.units[1].send_signal(signal.SIGCONT)
        _until(lambda: {u: x.incarnation for u, x in fresh.units(refresh=True).items()} == {1: was[2], 2: was[1]})
        keys = [f"k{i}" for i in range(8)]
        for i, k in enumerate(keys):
            fresh.kv_batch_put([k], "p", {"x": big[i % 4:i % 4 + 1] + i})
        assert {int(fresh.kv_retrieve_meta([k], "p")._cells["x"].unit[0]) for k in keys} == {1, 2}
        for i, k in enumerate(keys):
            np.testing.assert_array_equal(c.kv_batch_get([k], "p")["x"], big[i % 4:i % 4 + 1] + i)
        # A meta from before the restart names the old cluster's units: lost.
        with pytest.raises(tq.LostError) as e:
            c.get_data(a_meta)
        assert "started anew" in e.value.message, e.value.message
        # And its rows: the new cluster may give their indexes to other rows.
        q_new = fresh.put({"x": big[:1] + 7}, partition_id="q")
        with pytest.raises(tq.LostError) as e:
            c.put({"x": big[:1] - 7}, metadata=q_rows)
        assert "started anew" in e.value.message, e.value.message
        np.testing.assert_array_equal(fresh.get_data(q_new)["x"], big[:1] + 7)
        for i in range(8):
            c.kv_batch_put([f"n{i}"], "p", {"x": big[:1] - i})
            np.testing.assert_array_equal(fresh.kv_batch_get([f"n{i}"], "p")["x"], big[:1] - i)
    finally:
        c.close()
        if fresh is not None:
            fresh.close()


@pytest.mark.parametrize("how", ["kv_batch_get", "kv_batch_get view", "get_data"])
def test_cells_read_after_their_controller_started_anew_are_lost(split, how):
    """A read takes its cells' units from the table when it reads them. If
    the controller that named the cells starts anew without its state
    (another cluster, handing the unit ids out again) after it answered, and
    another thread lists the units meanwhile, the ids name other units: the
    read is lost, not another key's bytes (kv_batch_get's metas were not
    stamped, and get_data checked the cluster only before the read)."""
    c = tq.Client(split.address, token=split.token, transport="tcp")
    fresh = None
    try:
        big = np.arange(4 * 50000, dtype=np.float64).reshape(4, 50000)  # through the units
        c.kv_batch_put(["a"], "p", {"x": big[:1]})
        a_meta = c.kv_retrieve_meta(["a"], "p")
        q_rows = c.get_meta(["x"], 1, "q", mode="insert")
        was = {uid: u.incarnation for uid, u in c.units().items()}
        real, done = c._read_fields, []

        def restart_first(*args, **kw):
            nonlocal fresh
            if not done:
                done.append(1)
                split.controller.kill()
                split.controller.wait()
                sigstop(split.units[1])  # unit 2 registers first, as 1
                try:
                    split._start("c2", split.controller_args)
                    fresh = tq.Client(split.address, token=split.token, transport="tcp")
                    _until(lambda: {u: x.incarnation for u, x in fresh.units(refresh=True).items()} == {1: was[2]})
                finally:
                    split.units[1].send_signal(signal.SIGCONT)
                _until(lambda: {u: x.incarnation for u, x in fresh.units(refresh=True).items()}
                       == {1: was[2], 2: was[1]})
                for i in range(8):  # both units hold bytes where "a" was
                    fresh.kv_batch_put([f"k{i}"], "p", {"x": big[i % 4:i % 4 + 1] + 1000 + i})
                c.units(refresh=True)  # another thread's list, under the new cluster
            return real(*args, **kw)

        c._read_fields = restart_first
        try:
            if how == "get_data":
                got = c.get_data(a_meta)
            else:
                got = c.kv_batch_get(["a"], "p", copy=how == "kv_batch_get")
        except tq.LostError as e:
            assert "started anew" in e.message, e.message
        else:
            x = np.asarray(got["x"]).copy()
            if isinstance(got, tq.View):
                got.release()
            pytest.fail(f"read {x[0, :3]}... for key a, written as {big[0, :3]}...")
        assert done
    finally:
        c.close()
        if fresh is not None:
            fresh.close()


def _until(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)

@pytest.mark.parametrize("code", [8, 6])  # CODE_LOST, CODE_CLOSED
def test_unit_that_refuses_its_hello_is_left_out(server, tmp_path, code):
    """A unit on this host that the controller still lists as alive but
    that refuses the client's HELLO (another process took its socket after
    a restart: CODE_LOST; it is shutting down: CODE_CLOSED) is left out of
    the unit table like one that cannot be reached: puts go to the other
    units, rather than every call that lists the units failing with the
    refusal."""
    import socket as _socket
    from tq import wire
    from tq._pb import cluster_pb2, common_pb2

    path = str(tmp_path / "unit.sock")
    ls = _socket.socket(_socket.AF_UNIX)
    ls.bind(path)
    ls.listen(8)

    def refuse():
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            try:
                hdr = b""
                while len(hdr) < 32:
                    hdr += c.recv(32 - len(hdr))
                _, _, _, op, _, rid, blen, _, _ = wire.HEADER.unpack(hdr)
                while blen > 0:
                    blen -= len(c.recv(blen))
                body = common_pb2.Error(code=code, message="not the unit you expect").SerializeToString()
                c.sendall(wire.HEADER.pack(wire.MAGIC, 1, wire.FLAG_REPLY | wire.FLAG_ERROR, op, 0, rid,
                                           len(body), 0, 0) + body)
            except OSError:
                pass
            finally:
                c.close()
    threading.Thread(target=refuse, daemon=True).start()

    c = server.client(transport="auto")
    real = c._call

    def with_stale_unit(op, req, reply_cls=None, **kw):
        rep = real(op, req, reply_cls, **kw)
        if op == wire.UNITS:
            rep.units.append(cluster_pb2.UnitInfo(unit_id=999999, host_id=c.host, alive=True, incarnation=7,
                                                  addrs=[f"unix://{path}", f"shm://{path}.shm"]))
        return rep
    c._call = with_stale_unit
    try:
        units = c.units(refresh=True)
        assert 999999 not in units and units
        c.kv_batch_put(["stale-unit"], "p-stale", {"x": np.ones((1, 1 << 17), np.float32)})
        assert np.array_equal(c.kv_batch_get(["stale-unit"], "p-stale")["x"], np.ones((1, 1 << 17), np.float32))
    finally:
        c.close()
        ls.close()


def test_a_put_no_unit_can_take_names_each_unit_and_its_error(server, monkeypatch):
    """A put whose units all failed to be reached (a refused connection,
    a dial's timeout) failed "no storage unit is alive": what went wrong
    on each unit was lost. As the Go client's, the error names each unit
    tried and its error."""
    c = server.client(transport="tcp")
    try:
        ids = sorted(c.units(refresh=True))

        def refused(self, cols, **kw):
            raise tq.UnavailableError(f"dial tcp://192.0.2.{self.id}:7371: [Errno 111] Connection refused",
                                      op="write")
        monkeypatch.setattr(tq.unit.Unit, "write", refused)
        with pytest.raises(tq.UnavailableError) as ei:
            c.kv_batch_put(["k"], "p-unreachable", {"x": np.ones((1, 1 << 17), np.float32)})  # not inline
        msg = str(ei.value)
        assert "every one it tried is unreachable" in msg, msg
        tried = [uid for uid in ids if f"storage unit {uid}: write: dial tcp://192.0.2.{uid}:7371: " in msg]
        assert tried and len(tried) == min(len(ids), 3), msg
        assert msg.count("Connection refused") == len(tried), msg
    finally:
        c.close()


def test_a_row_is_too_big_only_when_every_units_capacity_is_known():
    """A put or reservation larger than the largest unit's capacity fails
    at once (it would wait for room that never comes). With a unit whose
    capacity is unknown (0: listed by an older controller) the largest
    known one was taken, and a row that unit may hold was refused; the Go
    client (planner.largest) skips the check then, as this one does now."""
    import types

    c = tq.Client.__new__(tq.Client)
    c.timeout = 5.0
    units = [types.SimpleNamespace(capacity=1 << 20), types.SimpleNamespace(capacity=0)]
    c._placeable = lambda refresh=False: units
    c.units = lambda refresh=False: {}
    c._units_cluster = ""

    class Placed(Exception):
        pass

    def pick(*a, **kw):
        raise Placed
    c._pick = pick
    row = np.ones((1, 2 << 20), np.uint8)
    c._too_big(tq.columns.columns({"x": row}, 1))  # unit 2 may hold it
    with pytest.raises(Placed):
        c.reserve_kv_put(["k"], "p", {"x": ("uint8", (2 << 20,))})
    units[1].capacity = 1 << 20
    with pytest.raises(tq.CapacityError, match=r"more than the largest storage unit's capacity \(1048576 bytes\)"):
        c._too_big(tq.columns.columns({"x": row}, 1))
    with pytest.raises(tq.CapacityError, match=r"more than the largest storage unit's capacity \(1048576 bytes\)"):
        c.reserve_kv_put(["k"], "p", {"x": ("uint8", (2 << 20,))})


def test_a_read_takes_its_unit_from_the_table_it_checked():
    """A read looks a unit up by id only in a table of the cluster the
    controller answers for now. _unit took the unit from the table it
    found, then compared the stamp of whatever table there was by then: a
    thread that listed the new cluster's units in between (a read after
    the controller started anew) made it hand out the old cluster's unit
    under an id that names another unit now (wrong bytes)."""
    c = tq.Client.__new__(tq.Client)
    c._units_lock = threading.Lock()
    c._cluster_now = "new"
    old_unit, new_unit = object(), object()

    def list_new(refresh=False):
        c._units, c._units_cluster = {1: new_unit}, "new"
        return dict(c._units)

    class Racing(dict):
        def get(self, *a):
            got = dict.get(self, *a)
            list_new()  # another thread, between the look-up and the check
            return got

    c._units, c._units_cluster = Racing({1: old_unit}), "old"
    c.units = list_new
    assert c._unit(1) is new_unit


def test_a_unit_that_does_not_answer_holds_up_no_lookup(tmp_path):
    """A unit that registered and whose sockets accept but never answer: the
    thread whose list of the units dials it waits for its timeout, and
    other threads' lookups of the units they know go on meanwhile. The
    dial used to run under the table's lock, stalling every read of every
    thread for the timeout (30 s by default)."""
    import random
    import socket as _socket
    from conftest import Server
    from tq import wire
    from tq._pb import cluster_pb2
    s = Server()
    c = None
    try:
        c = s.client(timeout=3)
        known = sorted(c.units())[0]
        sock = str(tmp_path / "mute.sock")
        listeners = []
        for path in (sock, sock + ".shm"):  # accept (the backlog does), never answer
            ls = _socket.socket(_socket.AF_UNIX)
            ls.bind(path)
            ls.listen(16)
            listeners.append(ls)
        reg = wire.Conn(s.address, token=s.token)
        try:
            reg.call(48, cluster_pb2.RegisterRequest(host_id=wire.host_id(), addrs=[f"unix://{sock}", f"shm://{sock}.shm"],
                                                     name="mute", incarnation=random.getrandbits(63) | 1),
                     cluster_pb2.RegisterReply, op_name="register")
        finally:
            reg.close()
        listing = threading.Thread(target=lambda: c.units(refresh=True))
        listing.start()
        time.sleep(0.3)  # the list is dialing the mute unit
        assert listing.is_alive(), "the list did not wait for the mute unit"
        t0 = time.monotonic()
        assert c._unit(known).id == known
        took = time.monotonic() - t0
        listing.join(10)
        assert took < 1.0, f"a lookup of a known unit waited {took:.1f} s for another thread's dial"
        for ls in listeners:
            ls.close()
    finally:
        if c is not None:
            c.close()
        s.stop()


def _closed_reads(monkeypatch, before=None):
    """Have every read of a unit (READ, ACQUIRE) answered CODE_CLOSED, as a
    unit shutting down answers the requests that reach it (the Go wire
    server's refuseDraining); ``before``, when given, runs first."""
    from tq import errors, wire
    real = wire.Conn.call

    def call(self, op, req, reply_cls=None, **kw):
        if op in (wire.READ, wire.ACQUIRE):
            if before is not None:
                before()
            raise errors.from_code(errors.ClosedError.code, "server is shutting down: engine: closed",
                                   op=kw.get("op_name"))
        return real(self, op, req, reply_cls, **kw)
    monkeypatch.setattr(wire.Conn, "call", call)


def test_a_read_of_a_closed_unit_says_its_cells_are_lost(client, part, monkeypatch):
    """A unit that answers a read CODE_CLOSED (it is shutting down, its
    memory going with it) leaves the cells lost to the read, as the Go
    client says (ErrLost, "storage unit N is closed"): UnitLostError
    naming the unit and that it closed. It was a plain ClosedError, which
    says nothing of the cells and reads as this client's own close."""
    client.kv_batch_put(["k"], part, {"x": np.ones((1, 1 << 17))})
    uid = int(client.kv_retrieve_meta(["k"], part)._cells["x"].unit[0])
    _closed_reads(monkeypatch)
    with pytest.raises(tq.UnitLostError) as e:
        client.kv_batch_get(["k"], part)
    assert isinstance(e.value, tq.LostError) and isinstance(e.value, tq.UnavailableError)
    assert f"storage unit {uid} is closed" in str(e.value), e.value


def test_a_read_by_a_client_closed_meanwhile_stays_closed(server, transport, part, monkeypatch):
    """A read that fails once this client was closed, while it ran, is
    ClosedError, not UnitLostError, whatever the unit answered (here
    CODE_CLOSED, the answer that is a lost unit otherwise): the read
    failed for the close, and the unit may well hold the cells."""
    c = server.client(transport=transport)
    try:
        c.kv_batch_put(["k"], part, {"x": np.ones((1, 1 << 17))})
        _closed_reads(monkeypatch, before=c.close)
        with pytest.raises(tq.ClosedError) as e:
            c.kv_batch_get(["k"], part)
        assert not isinstance(e.value, tq.LostError), e.value
    finally:
        c.close()


def test_silent_unit_cuts_off_a_dial_in_progress(split):
    """A read that dials a unit gone silent with its connections open
    (SIGSTOP: the kernel accepts the connection, nothing answers its
    handshake) fails as UnitLostError once the controller reports the unit
    dead, as a call on a connection dialed before does: cutting the unit's
    connections off missed the one being dialed, and the read waited out
    the client's timeout (60 s here)."""
    writer = tq.Client(split.address, token=split.token, transport="tcp")
    reader = tq.Client(split.address, token=split.token, transport="tcp", timeout=60)
    try:
        big = np.arange(100000, dtype=np.float64).reshape(1, 100000)  # through the units, not inline
        where = {}
        for k in range(8):
            writer.kv_batch_put([f"a{k}"], "p", {"x": big + k})
            where[k] = int(writer.kv_retrieve_meta([f"a{k}"], "p")._cells["x"].unit[0])
        dead = where[0]
        reader.units(refresh=True)  # the reader has dialed no unit yet (tcp)
        sigstop(split.units[dead])
        try:
            began = time.monotonic()
            with pytest.raises(tq.UnitLostError) as e:
                reader.kv_batch_get(["a0"], "p")
            took = time.monotonic() - began
            assert f"storage unit {dead}" in e.value.message, e.value.message
            assert took < 40, f"the read waited {took:.1f} s, out the client's timeout"  # a hang check only
        finally:
            split.units[dead].send_signal(signal.SIGCONT)
    finally:
        reader.close()
        writer.close()


@pytest.mark.parametrize("transport", ["tcp", "shm"])
def test_silent_unit_is_lost_and_takes_no_writes(split, transport):
    """A unit that goes silent with its connections open (SIGSTOP here; a
    hung process, a host cut off the network) is reported dead by the
    controller after five heartbeats. A client that has not listed the
    units since (a reader never does) used to wait on it for the socket's
    timeout (30 s, whatever the client's) and fail with DeadlineError:
    reads of its cells now fail as UnitLostError naming it, and puts placed
    on it go to the other unit, once the controller is asked (after 2 s)."""
    import zlib
    reader = tq.Client(split.address, token=split.token, transport=transport)
    writer = tq.Client(split.address, token=split.token, transport=transport)
    try:
        big = np.arange(100000, dtype=np.float64).reshape(1, 100000)  # through the units, not inline
        for k in range(8):
            reader.kv_batch_put([f"a{k}"], "p", {"x": big + k})
        where = {k: int(reader.kv_retrieve_meta([f"a{k}"], "p")._cells["x"].unit[0]) for k in range(8)}
        assert set(where.values()) == set(split.units), where
        ids = sorted(split.units)
        dead = where[0]
        gone = [k for k, u in where.items() if u == dead]
        left = [k for k, u in where.items() if u != dead]
        meta = reader.kv_retrieve_meta([f"a{gone[0]}"], "p")
        # A put that placement sends to the dead unit: by its first key, by its first row.
        kv_key = next(f"b{i}" for i in range(1000) if ids[zlib.crc32(f"b{i}".encode()) % len(ids)] == dead)
        rows = next(m for m in iter(lambda: writer.get_meta(["x"], 1, "q", mode="insert"), None)
                    if ids[m.global_indexes[0] % len(ids)] == dead)
        for c in (reader, writer):  # connected to both units, their table fresh
            for k in (gone[0], left[0]):
                c.kv_batch_get([f"a{k}"], "p")
            c.units(refresh=True)
        wrote = {}

        def write():  # at once, the unit not yet known dead: placed on it
            try:
                writer.kv_batch_put([kv_key], "p", {"x": big - 1})
                wrote["kv"] = writer.kv_retrieve_meta([kv_key], "p")
                wrote["put"] = writer.put({"x": big - 2}, metadata=rows)
            except Exception as e:
                wrote["error"] = e
        sigstop(split.units[dead])
        try:
            w = threading.Thread(target=write)
            w.start()
            for read in (lambda: reader.kv_batch_get([f"a{gone[0]}"], "p"),
                         lambda: reader.kv_batch_get([f"a{gone[-1]}"], "p", copy=False),
                         lambda: reader.get_data(meta)):
                with pytest.raises(tq.UnitLostError) as e:
                    read()
                assert f"storage unit {dead}" in e.value.message, e.value.message
            np.testing.assert_array_equal(reader.kv_batch_get([f"a{left[0]}"], "p")["x"], big + left[0])
            w.join(90)
            assert "error" not in wrote, wrote
            assert int(wrote["kv"]._cells["x"].unit[0]) != dead
            np.testing.assert_array_equal(writer.kv_batch_get([kv_key], "p")["x"], big - 1)
            assert int(wrote["put"]._cells["x"].unit[0]) != dead
            np.testing.assert_array_equal(writer.get_data(wrote["put"])["x"], big - 2)
        finally:
            split.units[dead].send_signal(signal.SIGCONT)
    finally:
        reader.close()
        writer.close()


def test_a_read_from_a_silent_unit_ends_with_the_clients_timeout():
    """A read over TCP from a unit that stops answering (SIGSTOP) while the
    controller still counts it alive (its heartbeat is long) fails with
    DeadlineError after the client's timeout: a read used to wait at least
    30 s, whatever the client's timeout."""
    s = Split(units=1, heartbeat="20s")  # reported dead after 100 s
    c = tq.Client(s.address, token=s.token, transport="tcp", timeout=2)
    try:
        big = np.arange(1 << 20, dtype=np.float64).reshape(1, 1 << 20)  # through the unit, not inline
        c.kv_batch_put(["k"], "p", {"x": big})
        np.testing.assert_array_equal(c.kv_batch_get(["k"], "p")["x"], big)  # connected to the unit
        unit = next(iter(s.units.values()))
        sigstop(unit)
        try:
            began = time.monotonic()
            with pytest.raises(tq.DeadlineError):
                c.kv_batch_get(["k"], "p")
            took = time.monotonic() - began
            assert took < 15, f"the read of a silent unit took {took:.1f} s with a client timeout of 2 s"
        finally:
            unit.send_signal(signal.SIGCONT)
    finally:
        c.close()
        s.stop()


def test_row_a_unit_could_never_hold_fails_at_once():
    """A row whose bytes fit the unit's capacity but whose extents, rounded
    to the unit's blocks, do not is refused by the unit as TooLargeError
    (CODE_TOO_LARGE) and the put fails at once: as a CapacityError it was
    taken for a unit that waited out its reserve wait, and the put waited
    for room for good."""
    split = Split(units=1, capacity="1MiB")
    c = tq.Client(split.address, token=split.token, transport="tcp")
    try:
        half = 1 << 19
        got = {}

        def put():
            try:
                c.kv_batch_put(["k"], "p", {"a": np.zeros((1, half + 1), np.uint8),
                                            "b": np.zeros((1, half - 1), np.uint8)})
            except Exception as e:
                got["error"] = e
        t = threading.Thread(target=put, daemon=True)
        t.start()
        t.join(30)  # a hang check only
        assert not t.is_alive(), "the put of a row its unit could never hold waited for room"
        assert isinstance(got.get("error"), tq.TooLargeError), got
        assert isinstance(got["error"], tq.CapacityError)
        assert "1048576" in got["error"].message, got["error"].message
    finally:
        c.close()
        split.stop()
