"""Calls interrupted part way (KeyboardInterrupt, or any exception raised
by a signal handler or a callback) in a process that catches it and goes
on: the next call works, and nothing of the interrupted one stays taken."""

import signal
import threading
import time

import numpy as np
import pytest

import tq
from tq import wire


def units_used(c):
    """The bytes the units of c's cluster hold, by their UNIT_STATS."""
    return sum(u.pool.call(wire.UNIT_STATS, None, tq._pb.data_pb2.UnitStats).used
               for u in c.units(refresh=True).values())


def wait_used(c, want, deadline_s=20.0):
    """units_used(c) once it is ``want``, or what it is after deadline_s."""
    end = time.monotonic() + deadline_s
    while True:
        got = units_used(c)
        if got == want or time.monotonic() > end:
            return got
        time.sleep(0.05)


def _interrupt_on(monkeypatch, op):
    """Have the next controller request of ``op`` raise KeyboardInterrupt
    on its way to the connection (nothing of it sent), once."""
    real = tq.Client._call
    hit = []

    def call(self, o, *a, **kw):
        if o == op and not hit:
            hit.append(o)
            raise KeyboardInterrupt
        return real(self, o, *a, **kw)
    monkeypatch.setattr(tq.Client, "_call", call)
    return hit


@pytest.mark.parametrize("how", ["kv_batch_put", "put"])
def test_put_interrupted_before_its_commit_frees_what_it_wrote(client, part, monkeypatch, how):
    """A put interrupted after its bytes were on a unit and before its
    commit went out left the extents taken, named by no cell, until the
    unit's reconciliation: nothing freed them, as a commit that may have
    happened must not be. Nothing of this commit reached the controller:
    the put changed nothing, and frees what it wrote."""
    x = np.arange(4 << 15, dtype=np.float64).reshape(4, -1)  # through the units
    keys = ["a", "b", "c", "d"]
    meta = client.get_meta(["x"], 4, part, mode="insert") if how == "put" else None
    before = units_used(client)
    op = wire.COMMIT if how == "put" else wire.COMMIT_KEYS
    hit = _interrupt_on(monkeypatch, op)
    with pytest.raises(KeyboardInterrupt):
        if how == "put":
            client.put({"x": x}, meta)
        else:
            client.kv_batch_put(keys, part, {"x": x})
    assert hit, "the commit was never sent (the test proves nothing)"
    assert wait_used(client, before) == before
    monkeypatch.undo()
    # The process goes on: the same put, again, works and reads back.
    if how == "put":
        np.testing.assert_array_equal(client.get_data(client.put({"x": x}, meta))["x"], x)
    else:
        client.kv_batch_put(keys, part, {"x": x})
        np.testing.assert_array_equal(client.kv_batch_get(keys, part)["x"], x)


@pytest.fixture
def sigusr1_interrupts():
    """SIGUSR1 raises KeyboardInterrupt in the main thread (as Ctrl-C
    does), for as long as the test runs."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGUSR1, handler)
    yield lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, old)


def _hold_stripe(monkeypatch, op, interrupt):
    """Have the first request of ``op`` sent from a stripe thread interrupt
    the main thread, then wait (at most 10 s) for the returned event
    before it goes on."""
    real = wire.Conn.call
    go, hit = threading.Event(), []

    def call(self, o, *a, **kw):
        if o == op and threading.current_thread() is not threading.main_thread() and not hit:
            hit.append(o)
            interrupt()
            go.wait(10)
        return real(self, o, *a, **kw)
    monkeypatch.setattr(wire.Conn, "call", call)
    return go, hit


def test_striped_write_interrupted_frees_its_stripes(server, part, monkeypatch, sigusr1_interrupts):
    """A put over tcp large enough to go over several connections at once
    (stripe threads) whose caller was interrupted while it waited for them
    left the stripes the threads went on to write taken, named by no cell,
    until the unit's reconciliation. Now each stripe that ends after its
    caller gave up is freed as it ends."""
    monkeypatch.setattr(tq.unit, "STRIPE_MIN", 1 << 16)
    c = server.client(transport="tcp")
    try:
        keys = ["a", "b", "c", "d"]
        fields = {f"f{i}": np.full((4, 1 << 13), i, dtype=np.float64) for i in range(4)}  # 256 KiB each
        before = units_used(c)
        go, hit = _hold_stripe(monkeypatch, wire.WRITE, sigusr1_interrupts)
        try:
            with pytest.raises(KeyboardInterrupt):
                c.kv_batch_put(keys, part, fields)
        finally:
            go.set()
        assert hit, "no stripe thread wrote (the test proves nothing)"
        assert wait_used(c, before) == before
        monkeypatch.undo()
        c.kv_batch_put(keys, part, fields)
        got = c.kv_batch_get(keys, part)
        for k, v in fields.items():
            np.testing.assert_array_equal(got[k], v)
    finally:
        c.close()


@pytest.mark.parametrize("transport", ["tcp", "shm"])
def test_striped_read_interrupted_returns_once_nothing_writes_into_the_arrays(server, part, monkeypatch,
                                                                             sigusr1_interrupts, transport):
    """A get into the caller's arrays split over stripe threads (several
    connections over tcp, several copying threads over shm) whose caller
    was interrupted while it waited raised at once while the threads went
    on writing into the arrays: a caller that caught the interrupt and
    reused them (the next get into the same arrays) had them overwritten
    under it. Now the interrupt goes on only once the threads ended."""
    monkeypatch.setattr(tq.unit, "STRIPE_MIN", 1 << 16)
    monkeypatch.setattr(tq.unit, "PCOPY_MIN", 1 << 16)
    c = server.client(transport=transport)
    try:
        keys = ["a", "b", "c", "d"]
        fields = {f"f{i}": np.full((4, 1 << 13), 2.0) for i in range(4)}
        c.kv_batch_put(keys, part, fields)
        into = {k: np.zeros_like(v) for k, v in fields.items()}
        if transport == "tcp":
            go, hit = _hold_stripe(monkeypatch, wire.READ, sigusr1_interrupts)
        else:
            go, hit = threading.Event(), []
            real = tq.unit._parallel

            def parallel(fn, groups, *a, **kw):
                def one(g):
                    if not hit:
                        hit.append(g)
                        sigusr1_interrupts()
                        go.wait(10)
                    return fn(g)
                return real(one, groups, *a, **kw)
            monkeypatch.setattr(tq.unit, "_parallel", parallel)
        ended = []
        # Lets the held thread go; a right implementation cannot have
        # returned by then, whatever the timing.
        t = threading.Timer(0.5, lambda: (ended.append(bool(caught)), go.set()))
        caught = []
        t.start()
        try:
            c.kv_batch_get(keys, part, into=into)
        except KeyboardInterrupt:
            caught.append(True)
        finally:
            t.join()
            go.set()
        assert hit and caught, "no stripe thread was held, or no interrupt (the test proves nothing)"
        assert ended == [False], "the interrupt went on while a stripe thread was still to write into the arrays"
    finally:
        c.close()
