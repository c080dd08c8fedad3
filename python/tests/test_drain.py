"""A draining storage unit (`tq unit drain`, wire/spec.md "Draining a unit"):
the Python client's puts avoid it, and what it held reads the same from the
units it moved to."""

import subprocess
import time
import uuid

import numpy as np

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
            time.sleep(1.2)  # the client re-lists the units at most once a second
            fresh = [f"n{i}" for i in range(8)]
            c.kv_batch_put(fresh, part, {"x": rows})
            assert {int(u) for u in c.kv_retrieve_meta(fresh, part)._cells["x"].unit} == {2}
            assert c.units(refresh=True)[1].draining
        finally:
            c.close()
    finally:
        s.stop()
