"""A draining storage unit (`tq unit drain`, wire/spec.md "Draining a unit"):
the Python client's puts avoid it, and what it held reads the same from the
units it moved to."""

import subprocess
import time
import uuid
import zlib

import numpy as np
import pytest

import tq

from conftest import Server, _bin


def test_puts_avoid_a_draining_unit():
    s = Server(extra=["--units", "2"])
    try:
        c = s.client(transport="tcp")
        try:
            part = "p-" + uuid.uuid4().hex[:12]
            # 128 KiB rows: through the units, not the controller's KV_PUT.
            rows = np.arange(8 * (32 << 10), dtype=np.float32).reshape(8, 32 << 10)
            keys = [f"k{i}" for i in range(8)]
            c.kv_batch_put(keys, part, {"x": rows})
            out = subprocess.run([_bin("TQ_BIN", "tq"), "unit", "drain", "--controller", s.address, "1"],
                                 env=s.env, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stdout + out.stderr
            assert "drained" in out.stdout
            got = c.kv_batch_get(keys, part)
            np.testing.assert_array_equal(np.asarray(got["x"]), rows)
            assert {int(u) for u in c.kv_retrieve_meta(keys, part)._cells["x"].unit} == {2}
            # The client re-lists the units at most once a second: as a
            # second later, its table stale.
            c._units_at -= tq.client.UNITS_REFRESH_S
            fresh = [f"n{i}" for i in range(8)]
            c.kv_batch_put(fresh, part, {"x": rows})
            assert {int(u) for u in c.kv_retrieve_meta(fresh, part)._cells["x"].unit} == {2}
            assert c.units(refresh=True)[1].draining
        finally:
            c.close()
    finally:
        s.stop()


def test_a_reservation_on_a_unit_drained_since_commits_elsewhere():
    """A KV put filled in place (reserve_kv_put) on a unit marked draining
    before its commit: the controller refuses the commit, and the client
    reads the bytes back from the unit, frees them there and puts them on
    the units as they are now; the commit returns as if nothing happened."""
    s = Server(extra=["--units", "2"])
    try:
        c = s.client()
        try:
            part = "p-" + uuid.uuid4().hex[:12]
            keys = [f"k{i}" for i in range(4)]
            rows = np.arange(4 * 1024, dtype=np.float32).reshape(4, 1024)
            r = c.reserve_kv_put(keys, part, {"x": ("float32", (1024,))})
            r.fields["x"][:] = rows
            uid = r._unit.id
            _drain(s, uid)
            meta = r.commit(tags=[{"n": i} for i in range(4)])
            assert meta.tags == [{"n": i} for i in range(4)]
            assert {int(u) for u in c.kv_retrieve_meta(keys, part)._cells["x"].unit} == {3 - uid}
            np.testing.assert_array_equal(np.asarray(c.kv_batch_get(keys, part)["x"]), rows)
        finally:
            c.close()
    finally:
        s.stop()


def _drain(s, uid):
    out = subprocess.run([_bin("TQ_BIN", "tq"), "unit", "drain", "--controller", s.address, str(uid)],
                         env=s.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def _wait_freed(c, cells, timeout=10.0):
    """Until the unit no longer holds ``cells`` (a drain frees the old
    locations once its moves are durable)."""
    u = c._unit(int(cells.unit[0]))
    deadline = time.monotonic() + timeout
    while True:
        try:
            u.read(cells)
        except tq.StaleError:
            return
        assert time.monotonic() < deadline, "the drained unit still holds the moved cells"
        time.sleep(0.05)


@pytest.mark.parametrize("transport", ["auto", "tcp"])
def test_a_meta_taken_before_a_drain_reads_after_it(transport):
    """A meta holding cells a drain moved reads them where they went (the
    controller's MOVED), as the Go client does: by copy, into arrays and
    as a view."""
    s = Server(extra=["--units", "2"])
    try:
        c = s.client(transport=transport)
        try:
            part = "p-" + uuid.uuid4().hex[:12]
            rows = np.arange(8 * (32 << 10), dtype=np.float32).reshape(8, 32 << 10)
            keys = [f"k{i}" for i in range(8)]
            c.kv_batch_put(keys, part, {"x": rows, "y": rows[:, :4] * 2})
            meta = c.kv_retrieve_meta(keys, part)
            old = meta._cells["x"]
            _drain(s, int(old.unit[0]))
            _wait_freed(c, old)
            got = c.get_data(meta)
            np.testing.assert_array_equal(np.asarray(got["x"]), rows)
            np.testing.assert_array_equal(np.asarray(got["y"]), rows[:, :4] * 2)
            into = {"x": np.zeros_like(rows)}
            c.get_data(meta, into=into)
            np.testing.assert_array_equal(into["x"], rows)
            with c.get_data(meta, copy=False) as v:
                np.testing.assert_array_equal(np.asarray(v["x"]), rows)
            # The meta itself is left as it was: it names where the cells were.
            assert meta._cells["x"] is old
        finally:
            c.close()
    finally:
        s.stop()


def test_a_put_placed_on_a_unit_drained_since_goes_elsewhere():
    """A client that has not re-listed the units since one was marked
    draining places a put on it; the controller refuses the commit (the
    drain would not see the cells) and the client writes the put again on
    the units as they are now, for kv_batch_put and put alike."""
    s = Server(extra=["--units", "2"])
    try:
        c, c2 = s.client(transport="tcp"), s.client(transport="tcp")
        try:
            for cl in (c, c2):
                assert sorted(cl.units(refresh=True)) == [1, 2]
                cl._units_at = time.monotonic() + 3600  # no re-listing before a refused commit
            _drain(s, 1)
            part = "p-" + uuid.uuid4().hex[:12]
            rows = np.arange(8 * (32 << 10), dtype=np.float32).reshape(8, 32 << 10)
            # Keys whose hash picks unit 1 of the two the client knows.
            first = next(f"k{i}" for i in range(100) if zlib.crc32(f"k{i}".encode()) % 2 == 0)
            keys = [first] + [f"r{i}" for i in range(7)]
            c.kv_batch_put(keys, part, {"x": rows})
            assert {int(u) for u in c.kv_retrieve_meta(keys, part)._cells["x"].unit} == {2}
            np.testing.assert_array_equal(np.asarray(c.kv_batch_get(keys, part)["x"]), rows)

            # Rows from an even index: the hash that picks unit 1.
            if c2.get_meta(["x"], 1, part, mode="insert").global_indexes[0] % 2 == 0:
                c2.get_meta(["x"], 1, part, mode="insert")
            meta = c2.get_meta(["x"], 8, part, mode="insert")
            assert meta.global_indexes[0] % 2 == 0
            out = c2.put({"x": rows}, meta)
            assert {int(u) for u in out._cells["x"].unit} == {2}
            np.testing.assert_array_equal(np.asarray(c2.get_data(out)["x"]), rows)
        finally:
            c.close()
            c2.close()
    finally:
        s.stop()
