"""A Python process killed in the middle of a put leaves no readable
partial cell: the key keeps its old value (or, new, does not exist), and
the unit frees what the put had written."""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import tq
from tq import wire
from tq._pb import data_pb2

HERE = os.path.dirname(os.path.abspath(__file__))

# The child puts 8 MiB per key to keys "old" (already holding ones) and
# "new", and SIGKILLs itself at the point named by argv[4]: "payload" half
# way through a WRITE's payload (tcp), "copy" half way through the copy into
# reserved shared memory, "commit" after the unit committed the extents but
# before the controller heard of them.
CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, sys.argv[5])
    import tq
    from tq import wire, unit as tqunit

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    where = sys.argv[4]
    if where == "payload":
        real = wire.Conn._send
        def send(self, op, rid, body, payload):
            if op == wire.WRITE:
                hdr = wire.HEADER.pack(wire.MAGIC, wire.VERSION, 0, op, 0, rid, len(body), 0,
                                       sum(len(memoryview(p).cast("B")) for p in payload))
                first = memoryview(payload[0]).cast("B")
                self.sock.sendall(hdr + body)
                self.sock.sendall(first[: len(first) // 2])
                die()
            return real(self, op, rid, body, payload)
        wire.Conn._send = send
    elif where == "copy":
        real_seg = tqunit.Unit.seg_array
        def seg_array(self, seg, off, n):
            a = real_seg(self, seg, off, n)
            a[: n // 2] = 0x55
            die()
        tqunit.Unit.seg_array = seg_array
    elif where == "commit":
        real_call = wire.Conn.call
        def call(self, op, *a, **kw):
            if op == wire.COMMIT_KEYS:
                die()
            return real_call(self, op, *a, **kw)
        wire.Conn.call = call
    c = tq.Client(sys.argv[1], transport=sys.argv[3])
    c.kv_batch_put(["old", "new"], sys.argv[2], {"x": np.full((2, 1 << 20), 7.0)})
    print("put finished: the kill did not happen", flush=True)
""")


@pytest.mark.parametrize("transport,where", [("tcp", "payload"), ("tcp", "commit"), ("shm", "copy"),
                                             ("shm", "commit")])
def test_killed_mid_put(server, part, transport, where):
    with server.client(transport=transport) as c:
        old = np.arange(2 << 20, dtype=np.float64).reshape(2, 1 << 20)[:1]
        c.kv_batch_put(["old"], part, {"x": old})
        r = subprocess.run([sys.executable, "-c", CHILD, server.address, part, transport, where,
                            os.path.dirname(HERE)], env=server.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == -9, (r.returncode, r.stdout, r.stderr)
        got = c.kv_batch_get(["old"], part)["x"]
        assert got.tobytes() == old.tobytes()
        with pytest.raises(tq.NotFoundError):
            c.kv_batch_get(["new"], part)
        assert set(c.kv_list(part)[part]) == {"old"}
        # The unit aborted the dead connection's reservations.
        deadline = time.monotonic() + 10
        while True:
            open_res = sum(u.pool.call(wire.UNIT_STATS, None, data_pb2.UnitStats).open_reservations
                           for u in c.units(refresh=True).values())
            if open_res == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert open_res == 0
        # A later put of the same keys goes through whole.
        c.kv_batch_put(["old", "new"], part, {"x": np.ones((2, 1 << 20))})
        assert np.all(c.kv_batch_get(["old", "new"], part)["x"] == 1.0)


# The parent takes a lease (a zero-copy view) and a reservation over shared
# memory, forks a child that only sleeps, and prints the child's pid.
FORKER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    import tq

    c = tq.Client(sys.argv[1], transport="shm")
    part = sys.argv[2]
    c.kv_batch_put(["a"], part, {"x": np.ones((1, 1 << 16))})
    view = c.kv_batch_get(["a"], part, copy=False)
    res = c.reserve_kv_put(["b"], part, {"x": ("float64", (1 << 16,))})
    pid = os.fork()
    if pid == 0:
        time.sleep(120)
        os._exit(0)
    print(pid, flush=True)
    time.sleep(120)
""")


def _alive(pid):
    """Whether pid runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killed_parent_with_a_forked_child_gives_its_holds_back(server, part):
    """A client killed while a child it forked without exec (a DataLoader
    worker) still runs loses its leases and reservations at once. The
    child used to keep its copies of the parent's sockets to the unit
    open, and the unit keeps a connection's holds while any process holds
    its socket: the parent's extents stayed pinned until the child
    exited."""
    def holds(c):
        st = [u.pool.call(wire.UNIT_STATS, None, data_pb2.UnitStats) for u in c.units(refresh=True).values()]
        return sum(s.leases for s in st), sum(s.open_reservations for s in st)

    with server.client(transport="shm") as c:
        if not any(u.shm for u in c.units().values()):
            pytest.skip("no storage unit serves shared memory here")
        before = holds(c)
        p = subprocess.Popen([sys.executable, "-c", FORKER, server.address, part, os.path.dirname(HERE)],
                             env=server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        child = 0
        try:
            line = p.stdout.readline()
            assert line.strip(), p.stderr.read()
            child = int(line)
            assert holds(c) == (before[0] + 1, before[1] + 1)
            p.kill()
            p.wait(10)
            deadline = time.monotonic() + 10
            while holds(c) != before and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _alive(child), "the child exited: the test shows nothing"
            assert holds(c) == before, "the unit kept the dead parent's lease or reservation"
        finally:
            p.kill()
            p.wait(10)
            if child:
                try:
                    os.kill(child, 9)
                except ProcessLookupError:
                    pass
