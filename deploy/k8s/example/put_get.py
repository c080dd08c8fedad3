"""TQ's example client on Kubernetes.

Puts rows through the storage unit on this pod's node and reads them back
as a view over that unit's shared memory, then checks every byte. It exits
non-zero, saying why, when no unit on this node shares memory with the
pod (the unit not running here, /run/tq not mounted) or when a byte
differs. $TQ_ADDRESS and $TQ_TOKEN come from the Job.
"""

import os
import socket
import sys
import time

import numpy as np
import tq

ROWS, DIM = 256, 16384  # float32: 64 KiB a row, 16 MiB in all

c = tq.init(name="k8s-example@" + socket.gethostname())
local = [u for u in c.units().values() if u.host_id == c.host]
if not local:
    sys.exit(f"no storage unit registered from this node (boot id {c.host}): does tq-unit run here?")
if not any(u.transport == "shm" for u in local):
    sys.exit(f"the unit on this node is not reachable over shared memory (addresses via {[u.addr for u in local]}): "
             "is the host directory /run/tq mounted at /run/tq?")

partition = "k8s-example-" + socket.gethostname()
keys = [f"row-{i}" for i in range(ROWS)]
x = np.random.default_rng(0).standard_normal((ROWS, DIM), dtype=np.float32)
t0 = time.perf_counter()
tq.kv_batch_put(keys=keys, partition_id=partition, fields={"x": x})
t1 = time.perf_counter()
with tq.kv_batch_get(keys, partition, copy=False) as view:  # no copy: a view of the unit's memory
    t2 = time.perf_counter()
    if not np.array_equal(view["x"], x):
        sys.exit("the rows read back differ from the rows put")
tq.kv_clear(keys, partition)
tq.close()
mib = x.nbytes / (1 << 20)
print(f"put {mib:.0f} MiB in {1e3 * (t1 - t0):.1f} ms, viewed it in {1e3 * (t2 - t1):.1f} ms, "
      f"through unit {[u.id for u in local]} on this node over shared memory: ok")
