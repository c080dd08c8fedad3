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
