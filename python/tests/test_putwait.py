"""A put that no unit has room for waits for room as long as the client's
timeout allows: a unit in another process answers a waiting write after
its reserve wait (5 s by default; 1 s here), and the client then places
the rows anew, once a UNITS_REFRESH_S, until they are written or the
timeout ends the put."""

import subprocess
import threading
import time
import zlib

import numpy as np
import pytest

import tq
import tq.client
import tq.unit
from conftest import _bin
from test_failures import Split

ROW = 1 << 20  # bytes a row: through the units, not inline
RESERVE_WAIT = 1.0  # the units' reserve wait (tq serve --reserve-wait; 5 s by default)


@pytest.fixture
def small():
    """A controller and one storage unit of 8 MiB."""
    s = Split(units=1, capacity="8MiB", reserve_wait=f"{RESERVE_WAIT:g}s")
    yield s
    s.stop()


def row(v, n=1):
    return {"x": np.full((n, ROW // 8), v, dtype=np.float64)}


def fill(c, part):
    """Put rows of ROW bytes, one a put, until the cluster has no room;
    returns their keys. ``c``'s timeout is short: the put that finds no
    room fails after it. Once no unit taking placements has a row's room
    left, as its stats count, the puts go through a client of a shorter
    timeout still, which that put waits out."""
    keys = []
    quick = tq.Client(c.address, token=c.token, transport=c.transport, timeout=RESERVE_WAIT / 2)
    try:
        while True:
            k = f"fill{len(keys)}"
            units = [u for u in c.units(refresh=True).values() if not u.draining]
            stats = [u.pool.call(tq.wire.UNIT_STATS, None, tq._pb.data_pb2.UnitStats) for u in units]
            full = all(st.capacity - st.used < ROW for st in stats)
            try:
                (quick if full else c).kv_batch_put([k], part, row(len(keys)))
            except tq.CapacityError:
                assert keys, "an empty unit had no room"
                return keys
            keys.append(k)
    finally:
        quick.close()


def put_on_thread(c, how, keys, part, want):
    """Put ``want`` (field x) on a thread of its own, ``how``: kv_batch_put,
    put (the batch API) or reserve_kv_put; returns the thread and a dict
    where it leaves "read" (reading the rows back) or "error"."""
    done = {}

    def run():
        try:
            if how == "kv":
                c.kv_batch_put(keys, part, {"x": want})
                done["read"] = lambda: c.kv_batch_get(keys, part)["x"]
            elif how == "put":
                m = c.put({"x": want}, partition_id=part)
                done["read"] = lambda: c.get_data(m)["x"]
            else:
                with c.reserve_kv_put(keys, part, {"x": ("float64", want.shape[1:])}) as r:
                    r.fields["x"][:] = want
                    r.commit()
                done["read"] = lambda: c.kv_batch_get(keys, part)["x"]
        except Exception as e:
            done["error"] = e
    t = threading.Thread(target=run)
    t.start()
    return t, done


@pytest.mark.parametrize("transport,how", [("tcp", "kv"), ("shm", "kv"), ("tcp", "put"), ("shm", "reserve")])
def test_put_waits_past_the_reserve_wait(small, transport, how):
    """A put on a full unit outlives the unit's reserve wait, and room a
    clear makes later takes it: the rows it wrote at once and those it
    waited for read back, committed once."""
    filler = tq.Client(small.address, token=small.token, transport=transport, timeout=RESERVE_WAIT + 0.5)
    c = tq.Client(small.address, token=small.token, transport=transport, timeout=60)
    try:
        keys = fill(filler, "f")
        filler.kv_clear(keys[:1], "f")  # room for one row: a put writes it at once and waits for the rest
        want = np.arange(4 * ROW // 8, dtype=np.float64).reshape(4, ROW // 8)
        t, done = put_on_thread(c, how, [f"p{i}" for i in range(4)], "p", want)
        t.join(RESERVE_WAIT + 1)
        assert t.is_alive(), f"the put ended after its unit's reserve wait, with 60 s to go: {done}"
        filler.kv_clear(keys[1:], "f")
        t.join(30)
        assert not t.is_alive(), "the put still waits after the rows were cleared"
        assert "error" not in done, done
        np.testing.assert_array_equal(done["read"](), want)
    finally:
        c.close()
        filler.close()


def test_put_waiting_for_room_ends_with_the_timeout(small):
    """A put whose rows no unit has room for until the client's timeout
    fails then with CapacityError saying it waited and how long, and frees
    what it wrote: the room it took at once takes another row again."""
    filler = tq.Client(small.address, token=small.token, timeout=RESERVE_WAIT + 0.5)
    timeout = RESERVE_WAIT * 3.5  # the last round has less time left than the unit's reserve wait
    c = tq.Client(small.address, token=small.token, timeout=timeout)
    again = tq.Client(small.address, token=small.token, timeout=RESERVE_WAIT + 2)
    try:
        keys = fill(filler, "f")
        filler.kv_clear(keys[:1], "f")  # room for one row: the put writes it at once and waits for the rest
        began = time.monotonic()
        with pytest.raises(tq.CapacityError) as e:
            c.kv_batch_put([f"p{i}" for i in range(4)], "p", row(7, 4))
        took = time.monotonic() - began
        assert "waited for room" in e.value.message and f"({timeout:g} s)" in e.value.message, e.value.message
        # The last refusal is the unit's: each write told the unit to wait
        # no longer than the put had left (wait_ms), so no wait was cut
        # off by the timeout, its connection dropped with the unit still
        # waiting to take the next room for nobody.
        assert "no room within the request's wait" in e.value.message, e.value.message
        # Not cut short at the unit's reserve wait: it waited its timeout.
        assert took >= timeout - 0.5, f"the put gave up after {took:.1f} s of its {timeout} s"
        with pytest.raises(tq.NotFoundError):
            c.kv_batch_get(["p0"], "p")
        # What it wrote was freed and nothing took it: a row fits again
        # (a row it left behind, or a reservation its dropped connection
        # left to the unit, would have this put wait and fail).
        again.kv_batch_put(["again"], "f", row(9))
    finally:
        again.close()
        c.close()
        filler.close()


def test_waiting_put_takes_a_unit_that_joins(small):
    """A put waiting on a full unit is placed anew when a unit joins: its
    rows land there."""
    filler = tq.Client(small.address, token=small.token, timeout=RESERVE_WAIT + 0.5)
    c = tq.Client(small.address, token=small.token, timeout=60)
    try:
        fill(filler, "f")
        t, done = put_on_thread(c, "kv", ["a", "b"], "p", row(3, 2)["x"])
        t.join(RESERVE_WAIT + 1)
        assert t.is_alive(), f"the put ended after its unit's reserve wait, with 60 s to go: {done}"
        uid = small.add_unit()
        t.join(30)
        assert not t.is_alive(), "the put still waits after a unit joined"
        assert "error" not in done, done
        m = c.kv_retrieve_meta(["a", "b"], "p")
        assert set(m._cells["x"].unit.tolist()) == {uid}
        np.testing.assert_array_equal(done["read"](), row(3, 2)["x"])
    finally:
        c.close()
        filler.close()


def test_a_draining_unit_takes_no_put_the_others_have_no_room_for(small):
    """A draining unit (here larger than the other) is no room for a put:
    a row only it could hold fails at once, naming the other's capacity,
    and a put the other unit is full for waits for room there, rather than
    land on the draining unit and have its commit refused (LostError)."""
    small.capacity = "32MiB"
    drained = small.add_unit()
    out = subprocess.run([_bin("TQ_BIN", "tq"), "unit", "drain", "--controller", small.address, str(drained)],
                         env=small.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    filler = tq.Client(small.address, token=small.token, timeout=RESERVE_WAIT + 0.5)
    c = tq.Client(small.address, token=small.token, timeout=60)
    try:
        assert c.units(refresh=True)[drained].draining
        with pytest.raises(tq.CapacityError) as e:
            c.kv_batch_put(["big"], "p", {"x": np.zeros((1, 16 * ROW // 8))})
        assert "capacity (8388608 bytes)" in e.value.message, e.value.message
        keys = fill(filler, "f")
        t, done = put_on_thread(c, "kv", ["a"], "p", row(3)["x"])
        t.join(RESERVE_WAIT + 1)
        assert t.is_alive(), f"the put ended with room only on the draining unit: {done}"
        filler.kv_clear(keys[:1], "f")
        t.join(30)
        assert not t.is_alive(), "the put still waits after a clear made room"
        assert "error" not in done, done
        assert set(c.kv_retrieve_meta(["a"], "p")._cells["x"].unit.tolist()) != {drained}
        np.testing.assert_array_equal(done["read"](), row(3)["x"])
    finally:
        c.close()
        filler.close()


def test_a_reservation_takes_room_on_another_unit_before_it_waits():
    """reserve_kv_put whose first choice is full takes room another unit
    on the host has, as a put does, rather than wait on the full one for
    its whole timeout."""
    s = Split(units=2, capacity="8MiB", reserve_wait=f"{RESERVE_WAIT:g}s")
    filler = tq.Client(s.address, token=s.token, timeout=RESERVE_WAIT + 0.5)
    c = tq.Client(s.address, token=s.token, timeout=3 * RESERVE_WAIT)
    try:
        keys = fill(filler, "f")
        held = filler.kv_retrieve_meta(keys, "f")._cells["x"].unit.tolist()
        first, other = sorted(set(held))
        filler.kv_clear([k for k, u in zip(keys, held) if u == other], "f")
        key = next(k for k in (f"k{i}" for i in range(64)) if c._pick(zlib.crc32(k.encode())).id == first)
        with c.reserve_kv_put([key], "p", {"x": ("float64", (ROW // 8,))}) as r:
            r.fields["x"][:] = 3
            r.commit()
        assert c.kv_retrieve_meta([key], "p")._cells["x"].unit.tolist() == [other]
        np.testing.assert_array_equal(c.kv_batch_get([key], "p")["x"], row(3)["x"])
    finally:
        c.close()
        filler.close()
        s.stop()


@pytest.mark.parametrize("transport,how", [("tcp", "kv"), ("tcp", "put")])
def test_a_unit_answering_past_the_timeout_is_heard(transport, how, monkeypatch):
    """A waiting write the unit answers a little after the put's timeout
    (here: a unit that ignores wait_ms, as a loaded host may answer late)
    is heard, as the Go client's grace: its room granted then is the put's,
    not held for a connection dropped at the timeout (quarantined, or an
    extent nobody commits). Over shm the unit sees the dropped connection
    and stops waiting; a TCP WRITE's payload keeps it from looking."""
    s = Split(units=1, capacity="8MiB", reserve_wait="2s", heartbeat="1s")
    # Filled before the writes stop telling the unit how long to wait: the
    # put that finds no room ends at its client's timeout (the unit
    # answers then), not after the unit's 2 s and a round more.
    with tq.Client(s.address, token=s.token, timeout=1) as f:
        keys = fill(f, "f")
    monkeypatch.setattr(tq.unit, "room_wait_ms", lambda timeout: 0)  # the unit's own 2 s
    monkeypatch.setattr(tq.client, "room_wait_ms", lambda timeout: 0)
    filler = tq.Client(s.address, token=s.token, timeout=3)
    c = tq.Client(s.address, token=s.token, transport=transport, timeout=0.5)
    try:
        t, done = put_on_thread(c, how, ["a"], "p", row(3)["x"])
        time.sleep(0.8)  # past c's timeout, within the unit's wait and ROOM_GRACE
        filler.kv_clear(keys[:1], "f")
        t.join(30)
        assert not t.is_alive()
        if "error" not in done:
            np.testing.assert_array_equal(done["read"](), row(3)["x"])
        # A late commit or free may still be on its way: wait for it, well
        # within the unit's 30 s reserve timeout, which would free an
        # extent nobody commits and hide the leak.
        rows = len(keys) - 1 + ("error" not in done)
        deadline = time.monotonic() + 5
        while True:
            st = [u.pool.call(tq.wire.UNIT_STATS, None, tq._pb.data_pb2.UnitStats) for u in filler.units().values()]
            settled = sum(u.quarantined for u in st) == 0 and sum(u.used for u in st) == rows * ROW
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert sum(u.quarantined for u in st) == 0, st
        assert sum(u.used for u in st) == rows * ROW, (done, st)
    finally:
        c.close()
        filler.close()
        s.stop()



def test_threads_that_find_the_unit_table_stale_share_one_list(server):
    """Threads that find the unit table stale at once (puts waiting for
    room, placed anew each second) list the units once between them, not
    one after another."""
    c = server.client()
    try:
        c.units()
        lists = []
        slow = c._list_units

        def counted():
            lists.append(1)
            time.sleep(0.2)  # the others queue meanwhile
            return slow()
        c._list_units = counted
        c._units_at -= tq.client.UNITS_REFRESH_S  # the table is stale, as a second later
        ts = [threading.Thread(target=c.units) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert len(lists) == 1, f"{len(lists)} lists of the units for 8 threads at once"
    finally:
        c.close()
