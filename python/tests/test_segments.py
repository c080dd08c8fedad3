"""A client's mappings of a unit's memfd segments follow the unit's: once
the unit dropped a segment (to map a larger one) and no view of the
client reads it, the client unmaps it, so that the memory goes back to
the host while the client lives on."""

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
