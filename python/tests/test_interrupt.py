"""Calls interrupted part way (KeyboardInterrupt, or any exception raised
by a signal handler or a callback) in a process that catches it and goes
on: the next call works, and nothing of the interrupted one stays taken."""

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
