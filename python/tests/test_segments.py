"""A client's mappings of a unit's memfd segments follow the unit's: once
the unit dropped a segment (to map a larger one) and no view of the
client reads it, the client unmaps it (it asks the unit as it maps a new
segment, and every SEGMENT_SWEEP_S), so that the memory goes back to the
host while the client lives on."""

import os

import numpy as np
import pytest

from conftest import Server
from tq import wire
from tq._pb import data_pb2


@pytest.fixture(scope="module")
def small_server():
    # 128 MiB in 64 MiB segments: two 64 MiB fields, then one of 100 MiB,
    # make the unit drop every segment it has and map new ones.
    s = Server(extra=["--capacity=128MiB", "--units=1"])
    yield s
    s.stop()


def _live(u):
    rep = u.pool.call(wire.SHM_SEGMENTS, None, data_pb2.ShmSegmentsReply, op_name="shm segments")
    return {s.id for s in rep.segments}


def _stale_maps(live):
    """Lines of /proc/self/maps naming a segment memfd not in ``live``
    (the unit runs in another process: every such line is this one's)."""
    n = 0
    with open("/proc/self/maps") as f:
        for line in f:
            _, sep, rest = line.partition("memfd:tq-segment-")
            if sep and int(rest.split()[0]) not in live:
                n += 1
    return n


def _stale_memfds(live):
    """This process's fds of segment memfds not in ``live`` (CPython's mmap
    keeps a dup of the fd it maps, one per mapping)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        _, sep, rest = target.partition("/memfd:tq-segment-")
        n += bool(sep) and int(rest.split()[0]) not in live
    return n


def test_dropped_segments_unmapped(small_server, part):
    """Rounds that make the unit drop its segments, each mapping the new
    ones, leave the client mapping only live ones (its table,
    /proc/self/maps, the fds CPython's mmap keeps). The client used to
    keep every segment it had mapped until close: after six rounds it
    mapped segments 1-9 (six of 64 MiB, three of 100 MiB) while the unit
    had 9."""
    c = small_server.client(transport="shm")
    try:
        for rnd in range(6):
            n = 64 << 20 if rnd % 2 == 0 else 100 << 20
            fields = {f"f{i}": np.full((1, n), rnd * 2 + i + 1, np.uint8) for i in range(2 if rnd % 2 == 0 else 1)}
            m = c.put(fields, partition_id=part)
            got = c.get_data(m)
            for k, v in fields.items():
                assert np.array_equal(np.asarray(got[k]), v), (rnd, k)
            del got
            c.clear_partition(part)
        (u,) = [u for u in c.units().values() if u.shm]
        live = _live(u)
        assert set(u._segs) <= live, f"client maps segments {sorted(u._segs)}, the unit has {sorted(live)}"
        assert _stale_maps(live) == 0
        assert _stale_memfds(live) == 0
        c.clear_partition(part)
    finally:
        c.close()


def test_segments_dropped_later_unmapped_without_a_new_one(small_server, part, monkeypatch):
    """A client that mapped segments the unit drops afterwards (another
    client made it grow), and that maps no new segment since, unmaps them
    within the sweep period (SEGMENT_SWEEP_S) all the same, whether it
    calls the unit again or not. The client used to ask the unit for its
    live segments only when it mapped a new one: a trainer that had mapped
    every segment the unit then had kept the dropped ones (and their
    memory) mapped until it closed."""
    import time
    import tq.unit
    monkeypatch.setattr(tq.unit, "SEGMENT_SWEEP_S", 0.2)
    monkeypatch.setattr(tq.unit, "ORPHAN_SWEEP_S", 0.2)
    c, other = small_server.client(transport="shm"), small_server.client(transport="shm")
    try:
        # c maps 64 MiB segments, and empties them.
        fields = {f"f{i}": np.full((1, 64 << 20), i + 1, np.uint8) for i in range(2)}
        m = c.put(fields, partition_id=part)
        got = c.get_data(m)
        assert all(np.array_equal(np.asarray(got[k]), v) for k, v in fields.items())
        del got
        c.clear_partition(part)
        (u,) = [u for u in c.units().values() if u.shm]
        mapped = set(u._segs)
        # The other client makes the unit grow: it drops c's segments.
        big = {"g": np.full((1, 100 << 20), 9, np.uint8)}
        m2 = other.put(big, partition_id=part + "-o")
        (uo,) = [x for x in other.units().values() if x.shm]
        live = _live(uo)
        assert mapped - live, f"the unit kept every segment c maps ({sorted(mapped)}; it has {sorted(live)})"
        # c maps nothing new, and calls nothing: its mappings of the
        # dropped segments go within the period all the same (the sweep
        # takes them from the table, then unmaps them).
        def gone():
            return set(u._segs) <= live and _stale_maps(live) == 0 and _stale_memfds(live) == 0
        deadline = time.monotonic() + 30
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(u._segs) <= live, f"client maps segments {sorted(u._segs)}, the unit has {sorted(live)}"
        assert _stale_maps(live) == 0
        assert _stale_memfds(live) == 0
        other.clear_partition(part + "-o")
        del m2
    finally:
        other.close()
        c.close()


@pytest.mark.parametrize("copy", [True, False])
def test_mapping_closed_under_a_read_is_fetched_again(small_server, part, copy):
    """A sweep that took a wrong answer for its word (the unit names none of
    the segments a read's lease reaches) closes the mapping another thread
    has just taken from the client's table, before it reads through it:
    the read fetches the segment again, and gets its bytes. It used to fail
    with numpy's bare ValueError (mmap closed or invalid), naming no unit
    or segment."""
    c = small_server.client(transport="shm")
    try:
        x = np.arange(1 << 16, dtype=np.int64).reshape(4, -1)
        m = c.put({"x": x}, partition_id=part)
        assert np.array_equal(np.asarray(c.get_data(m)["x"]), x)  # mapped
        (u,) = [u for u in c.units().values() if u.shm]
        real_call = u.pool.call

        def wrong(op, *a, **kw):
            if op == wire.SHM_SEGMENTS:
                return data_pb2.ShmSegmentsReply(segments=[data_pb2.ShmSegment(id=1 << 31)])
            return real_call(op, *a, **kw)

        class Racy(dict):
            """The table, whose first lookup that finds a mapping has a
            sweep with the wrong answer run right after it."""
            armed = True

            def get(self, k, d=None):
                v = dict.get(self, k, d)
                if v is not None and Racy.armed:
                    Racy.armed = False
                    u.pool.call = wrong
                    try:
                        u._forget_dropped()
                    finally:
                        del u.pool.call
                    assert all(mm.closed for mm in v), "the sweep left the mapping open"
                return v
        with u._seg_lock:
            u._segs = Racy(u._segs)
        got = c.get_data(m, copy=copy)
        assert not Racy.armed
        assert np.array_equal(np.asarray(got["x"]), x)
        if not copy:
            got.release()
        del got
    finally:
        c.close()


def test_sweeper_keeps_no_dropped_clients_unit(small_server, part, monkeypatch):
    """A client dropped without close(), whose unit the sweeper has looked
    at, goes as its last reference does, and with it the unit and its
    mappings: the sweeper holds its units weakly between rounds. It used to
    keep the last unit of a round in its loop variable through the sleep
    and into the next round, which took it from the weak set again: a
    process's only unit was never freed, its memfd segments mapped and its
    connections open until exit."""
    import gc
    import time
    import weakref
    import tq.unit
    monkeypatch.setattr(tq.unit, "SEGMENT_SWEEP_S", 0.02)
    monkeypatch.setattr(tq.unit, "ORPHAN_SWEEP_S", 0.02)
    gc.collect()
    gc.disable()  # the unit must go as its last reference does
    try:
        c = small_server.client(transport="shm")
        m = c.put({"x": np.ones((2, 8), np.float32)}, partition_id=part)
        assert np.asarray(c.get_data(m)["x"]).sum() == 16
        (u,) = [u for u in c.units().values() if u.shm]
        assert u._segs, "the client mapped no segment"
        # The sweeper asks the unit (a round held it), twice over.
        for _ in range(2):
            looked = u._looked
            deadline = time.monotonic() + 30
            while u._looked == looked and time.monotonic() < deadline:
                time.sleep(0.01)
            assert u._looked != looked, "the sweeper never asked the unit"
        ref = weakref.ref(u)
        del u, c, m
        deadline = time.monotonic() + 30
        while ref() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ref() is None, "the sweeper kept a dropped client's unit alive"
    finally:
        gc.enable()


@pytest.mark.parametrize("idle", [True, False], ids=["idle-conn", "dial"])
def test_stopped_unit_holds_the_sweeper_briefly(part, monkeypatch, idle):
    """A unit that takes the sweep's ask and never answers (its process
    stopped) holds the process's one sweeper for SEGMENT_ASK_S, not for
    the client's timeout, whether the ask goes on an idle connection or
    dials one (whose handshake goes unanswered): the orphaned leases of
    the other units are given back all the same. The ask used to wait out
    the connection's timeout (30 s by default, 120 s here), round after
    round, and another unit's orphaned lease waited with it."""
    import signal
    import time
    import tq.unit
    monkeypatch.setattr(tq.unit, "SEGMENT_SWEEP_S", 0.05)
    monkeypatch.setattr(tq.unit, "ORPHAN_SWEEP_S", 0.05)
    monkeypatch.setattr(tq.unit, "SEGMENT_ASK_S", 0.5)  # 2 s by default, the timeout 120 s here
    a, b = Server(extra=["--units=1"]), Server(extra=["--units=1"])
    ca = a.client(transport="shm", timeout=120)
    cb = b.client(transport="shm", timeout=120)
    stopped = False
    try:
        ca.put({"x": np.ones((2, 8), np.float32)}, partition_id=part)
        m = cb.put({"x": np.ones((2, 8), np.float32)}, partition_id=part)
        (ua,) = [u for u in ca.units().values() if u.shm]
        (ub,) = [u for u in cb.units().values() if u.shm]
        os.kill(a.proc.pid, signal.SIGSTOP)
        stopped = True
        if not idle:
            ua.pool.drop_idle()
        # The sweeper has asked the stopped unit since it stopped.
        looked = ua._looked
        deadline = time.monotonic() + 30
        while ua._looked == looked and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ua._looked != looked, "the sweeper never asked the stopped unit"
        v = cb.get_data(m, copy=False)
        assert np.asarray(v["x"]).sum() == 16
        del v  # its lease is orphaned: the sweeper gives it back
        assert ub.orphans, "the dropped view's lease was not handed to its unit"
        deadline = time.monotonic() + 30
        while ub.orphans and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not ub.orphans, "a stopped unit's sweep held another unit's orphaned lease"
    finally:
        if stopped:
            os.kill(a.proc.pid, signal.SIGCONT)
        cb.close()
        ca.close()
        a.stop()
        b.stop()


def test_fork_while_the_sweep_asks(small_server, part, monkeypatch):
    """Children forked while the parent's sweeper asks its unit (a sweep
    every 0.5 ms: one is in flight at most forks, holding the segment
    table's lock or a connection's) neither hang nor read wrong bytes: one
    that reads (copies and a view) starts its own sweeper, one that never
    calls the unit dials nothing for it, and the parent reads on, its
    mappings its own, after they all exit."""
    import signal
    import time
    import tq.unit
    monkeypatch.setattr(tq.unit, "SEGMENT_SWEEP_S", 0.0005)
    monkeypatch.setattr(tq.unit, "ORPHAN_SWEEP_S", 0.0005)

    def sockets():
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
            except OSError:
                pass
        return n

    c = small_server.client(transport="shm")
    try:
        x = np.arange(1 << 12, dtype=np.int64).reshape(4, -1)
        m = c.put({"x": x}, partition_id=part)
        assert np.array_equal(np.asarray(c.get_data(m)["x"]), x)
        for i in range(50):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    if i % 2:
                        before = sockets()
                        time.sleep(0.02)
                        code = 0 if sockets() == before else 3
                    else:
                        ok = np.array_equal(np.asarray(c.get_data(m)["x"]), x)
                        with c.get_data(m, copy=False) as v:
                            ok = ok and np.array_equal(np.asarray(v["x"]), x)
                        time.sleep(0.01)  # its sweeper asks
                        code = 0 if ok else 4
                finally:
                    os._exit(code)
            deadline = time.monotonic() + 60
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    pytest.fail(f"child {i} hung (forked while the sweep asked)")
                time.sleep(0.001)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, \
                f"child {i}: {'dialed a unit it never called' if i % 2 else 'read wrong bytes or failed'} ({status})"
        assert np.array_equal(np.asarray(c.get_data(m)["x"]), x)
        with c.get_data(m, copy=False) as v:
            assert np.array_equal(np.asarray(v["x"]), x)
        c.clear_partition(part)
    finally:
        c.close()


def test_calls_race_the_sweep_as_the_unit_drops_segments(part, monkeypatch):
    """Puts, copies and views on three threads, a sweep every 10 ms, and
    another client that makes the unit drop its segments and map new ones
    round after round (two 60 MiB fields, then one of 100 MiB): every read
    gets the bytes put, and no call fails (no ValueError of a mapping the
    sweep closed, no CorruptError)."""
    import threading
    import time
    import tq
    import tq.unit
    monkeypatch.setattr(tq.unit, "SEGMENT_SWEEP_S", 0.01)
    monkeypatch.setattr(tq.unit, "ORPHAN_SWEEP_S", 0.01)
    # A unit of its own: 64 MiB segments to begin with, as the rounds need.
    server = Server(extra=["--capacity=128MiB", "--units=1"])
    c, other = server.client(transport="shm"), server.client(transport="shm")
    stop = time.monotonic() + float(os.environ.get("TQ_RACE_S", "3"))
    errs, seen = [], set()

    def calls(k):
        try:
            i = 0
            while time.monotonic() < stop:
                i += 1
                p = f"{part}-{k}-{i % 4}"
                x = np.full((2, (1 + (i * 7 + k) % 300) << 10), (i + k) % 251, np.uint8)
                m = c.put({"x": x}, partition_id=p)
                for copy in (True, False):
                    got = c.get_data(m, copy=copy)
                    if not np.array_equal(np.asarray(got["x"]), x):
                        errs.append(f"thread {k} round {i} copy={copy}: wrong bytes")
                    if not copy:
                        got.release()
                    del got
                c.clear_partition(p)
                if i % 4 == 0:
                    time.sleep(0.05)  # the unit empties: it may drop every segment
        except BaseException as e:
            errs.append(f"thread {k}: {e!r}")

    def churn():
        try:
            i = 0
            while time.monotonic() < stop:
                i += 1
                n, f = (100 << 20, 1) if i % 2 else (60 << 20, 2)
                try:
                    other.put({f"g{j}": np.full((1, n), 9, np.uint8) for j in range(f)}, partition_id=part + "-o")
                except tq.CapacityError:
                    pass  # the callers' cells were in the way
                other.clear_partition(part + "-o")
                for u in c.units().values():
                    seen.update(u._segs)
        except BaseException as e:
            errs.append(f"churn: {e!r}")

    ts = [threading.Thread(target=calls, args=(k,)) for k in range(3)] + [threading.Thread(target=churn)]
    try:
        for t in ts:
            t.start()
    finally:
        for t in ts:
            t.join()
        other.close()
        c.close()
        server.stop()
    assert not errs, errs[:5]
    assert len(seen) > 2, f"the unit dropped no segment the client mapped (it mapped {sorted(seen)})"
