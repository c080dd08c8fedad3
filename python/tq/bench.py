"""``python3 -m tq.bench``: the reference small workload through the Python
client, next to the Go client and a pyzmq zero-copy transfer of the same
bytes, in one run.

The small workload (inventory §8) is 1024 keys with 9 float32 fields of
8192 values each: 288 MiB a batch. For each transport (shm: this host's
shared memory; tcp: loopback) it times, per iteration:

* ``put``: ``kv_batch_put`` of the batch (the keys cleared first, untimed);
* ``get``: ``kv_batch_get`` into new arrays, dropped before the next
  iteration as a training step drops its batch (from the second on, the
  client reuses their memory: ``tq.bufpool``; ``TQ_GET_POOL_BYTES=0``
  times fresh memory every time);
* ``get_into``: ``kv_batch_get(..., into=arrays)`` into arrays reused
  across iterations;
* ``get_view``: ``kv_batch_get(..., copy=False)`` and its release (shared
  memory: views, no copy).

The Go client (``bin/tqxlang bench``) runs the same ops against the same
server, one iteration after each of Python's (so that both see the same
load on a shared machine). The pyzmq baseline moves the same nine 32 MiB columns between this
process and a peer process with ``copy=False`` on both sides, as
TransferQueue's own data path does: "put" sends them to the peer and waits
for its acknowledgement, "get" asks for them and receives them (ipc:// as
the same-host baseline, tcp:// over loopback).

With ``--device cuda`` (the reference perftest's ``--device gpu``) the
fields are CUDA tensors: ``put`` takes them from the device (the client
copies them to the host), and every get ends with the fields on the
device again, inside the timed region: ``get`` and ``get_view`` copy what
they return to the GPU, ``get_into`` reads into page-locked host tensors
reused across iterations and copies those, and ``get_device`` is
``kv_batch_get(..., device="cuda")``. A row ``torch copies`` times the
same bytes through torch alone — to page-locked host memory (``put``), and
back from pageable (``get``, ``get_view``) or page-locked memory
(``get_into``) — the floor of any store that keeps its bytes in host
memory, and ``python/torch`` the client's share of it.

``--workload values`` times small values instead, one key per call as a
trainer's status updates and rewards go: ``set`` (``kv_put`` of a 1 KiB
value), ``get`` (``kv_batch_get`` of that key), ``tag`` (``kv_put`` of a
tag alone), each op's rate and its p50/p99 latency, one caller, next to
redis-py's SET, GET and HSET against a ``redis-server`` (no persistence,
as the benchmark's ``tq serve --in-memory``) that it starts on loopback
when both are installed. Its ``persistence:`` line says what each side
makes durable, TQ's as the controller reports it (CLUSTER_INFO): with
``--address`` of a durable cluster TQ logs each set's key and each tag
(not the 1 KiB values, which stay in the storage units' memory) before
replying, at its ``--fsync``, while the redis-server still persists
nothing; the two sides then do not do the same work.

``--workload rows`` times a batch of many small rows, as a rollout's
results come: 4096 keys, each with a float32 reward, 64 float32
log-probs, a response of 1–200 int32 tokens (ragged) and a status tag;
``put`` (``kv_batch_put``), ``get`` (``kv_batch_get``) and ``list``
(``kv_list`` of the partition), per call.

Without ``--address`` it starts a ``tq serve`` of its own (``--tq-bin``,
default bin/tq of this checkout or ``tq`` on PATH).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import tq
from tq import wire
from tq._pb import control_pb2

ROWS, FIELDS, SEQ = 1024, 9, 8192
WORKLOADS = {"small": (1024, 9, 8192), "tiny": (16, 3, 64)}  # tiny: to check the harness
VALUE = 1024  # --workload values: bytes a value

PEER = r"""
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.PAIR)
s.connect(sys.argv[1])
held = None
while True:
    cmd = s.recv()
    if cmd == b"put":
        held = s.recv_multipart(copy=False)
        s.send(b"ok")
    elif cmd == b"get":
        s.send_multipart(held, copy=False)
    else:
        break
"""


def _repo_bin(name):
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = os.path.join(here, "bin", name)
    return p if os.path.exists(p) else shutil.which(name)


def workload():
    keys = [f"k{i}" for i in range(ROWS)]
    fields = {}
    for f in range(FIELDS):
        i = np.arange(ROWS * SEQ, dtype=np.uint32) * 4
        fields[f"f{f}"] = (i * 31 + f).view(np.float32).reshape(ROWS, SEQ)
    return keys, fields


def _med(xs):
    return statistics.median(xs) if xs else float("nan")


def bench_python(c, part, keys, fields, iters, ops, between=None, dev=None):
    """Times ops on fields (numpy arrays; with dev, a _Device, CUDA tensors
    whose gets end on the device)."""
    nbytes = sum(a.nbytes if isinstance(a, np.ndarray) else a.numel() * a.element_size() for a in fields.values())
    c.kv_batch_put(keys, part, fields)  # warm up: map segments, dial units
    if dev is None:
        into = {k: np.empty_like(v) for k, v in fields.items()}
    else:
        into = {k: dev.pinned(v) for k, v in fields.items()}
    c.kv_batch_get(keys, part, into=into)
    t = {op: [] for op in ops}
    for _ in range(iters):
        c.kv_clear(keys, part)
        if "put" in ops:
            s = time.perf_counter()
            c.kv_batch_put(keys, part, fields)
            t["put"].append(time.perf_counter() - s)
        else:
            c.kv_batch_put(keys, part, fields)
        if "get" in ops:
            s = time.perf_counter()
            got = c.kv_batch_get(keys, part)
            if dev is not None:
                dev.upload(got)
            t["get"].append(time.perf_counter() - s)
            del got  # as a training step drops its batch
        if "get_into" in ops:
            s = time.perf_counter()
            c.kv_batch_get(keys, part, into=into)
            if dev is not None:
                dev.upload(into, pinned=True)
            t["get_into"].append(time.perf_counter() - s)
        if "get_device" in ops:
            s = time.perf_counter()
            on_dev = c.kv_batch_get(keys, part, device="cuda")
            dev.torch.cuda.synchronize()
            t["get_device"].append(time.perf_counter() - s)
        if "get_view" in ops:
            s = time.perf_counter()
            v = c.kv_batch_get(keys, part, copy=False)
            if dev is not None:
                dev.upload(v)
            v.release()
            t["get_view"].append(time.perf_counter() - s)
        if between is not None:
            between()
    for k in fields:
        if dev is None:
            assert np.array_equal(into[k], fields[k])
        else:
            assert dev.equal(into[k], fields[k]), f"field {k} read back from the GPU differs"
            if "get_device" in ops:
                assert dev.torch.equal(on_dev[k], fields[k]), f"field {k} of get(device=) differs"
    c.kv_clear(keys, part)
    return {op: nbytes / _med(xs) / 2**30 for op, xs in t.items()}, {op: _med(xs) for op, xs in t.items()}


class _Device:
    """The CUDA side of --device cuda (torch)."""

    def __init__(self):
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device")
        self.torch = torch

    def fields(self, fields: dict) -> dict:
        return {k: self.torch.from_numpy(v).cuda() for k, v in fields.items()}

    def pinned(self, t):
        """A numpy array over page-locked host memory, of t's shape and dtype."""
        return self.torch.empty(tuple(t.shape), dtype=t.dtype, pin_memory=True).numpy()

    def upload(self, got, pinned=False) -> list:
        """Copies every field of got (numpy arrays) to the GPU and waits."""
        out = [tq.columns.to_tensor(np.asarray(got[k])).to("cuda", non_blocking=pinned) for k in got.keys()]
        self.torch.cuda.synchronize()
        return out

    def equal(self, host: np.ndarray, t) -> bool:
        return bool(self.torch.equal(self.torch.from_numpy(host).cuda(), t))

    def baseline(self, fields: dict, iters: int) -> dict:
        """torch alone: the fields to page-locked host memory, and back from
        pageable and from page-locked memory."""
        torch = self.torch
        nbytes = sum(t.numel() * t.element_size() for t in fields.values())
        pinned = {k: torch.empty(tuple(t.shape), dtype=t.dtype, pin_memory=True) for k, t in fields.items()}
        t = {"put": [], "get": [], "get_into": [], "get_view": []}
        for i in range(iters + 1):
            s = time.perf_counter()
            for k, v in fields.items():
                pinned[k].copy_(v)
            put = time.perf_counter() - s
            host = {k: v.cpu() for k, v in fields.items()}
            s = time.perf_counter()
            for v in host.values():
                v.to("cuda")
            torch.cuda.synchronize()
            get = time.perf_counter() - s
            s = time.perf_counter()
            for v in pinned.values():
                v.to("cuda", non_blocking=True)
            torch.cuda.synchronize()
            get_into = time.perf_counter() - s
            if i:  # the first is a warm-up
                t["put"].append(put)
                t["get"].append(get)
                t["get_view"].append(get)
                t["get_into"].append(get_into)
        return {op: nbytes / _med(xs) / 2**30 for op, xs in t.items()}


def go_iteration(xlang, address, env, part, transport, into: dict) -> None:
    """One iteration of the Go client's ops (bin/tqxlang bench, after its
    own warm-up); appends each op's seconds to ``into``."""
    r = subprocess.run([xlang, "bench", address, part, transport, "1"], env=env, capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    for op, xs in json.loads(r.stdout.strip().splitlines()[-1]).items():
        into.setdefault(op, []).extend(xs)


def rates(secs: dict):
    nbytes = ROWS * FIELDS * SEQ * 4
    return {op: nbytes / _med(xs) / 2**30 for op, xs in secs.items()}, {op: _med(xs) for op, xs in secs.items()}


def bench_zmq(endpoint, fields, iters):
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.PAIR)
    if endpoint.startswith("tcp"):
        port = s.bind_to_random_port("tcp://127.0.0.1")
        endpoint = f"tcp://127.0.0.1:{port}"
    else:
        s.bind(endpoint)
    peer = subprocess.Popen([sys.executable, "-c", PEER, endpoint])
    cols = [np.ascontiguousarray(a) for a in fields.values()]
    nbytes = sum(a.nbytes for a in cols)
    t = {"put": [], "get": []}
    try:
        for i in range(iters + 1):
            st = time.perf_counter()
            s.send(b"put", zmq.SNDMORE)  # noqa: the peer reads "put" then the frames
            s.send_multipart(cols, copy=False)
            assert s.recv() == b"ok"
            put = time.perf_counter() - st
            st = time.perf_counter()
            s.send(b"get")
            got = s.recv_multipart(copy=False)
            get = time.perf_counter() - st
            assert sum(len(f.buffer) for f in got) == nbytes
            if i:  # the first is a warm-up
                t["put"].append(put)
                t["get"].append(get)
        s.send(b"stop")
    finally:
        peer.wait(10)
        s.close(linger=0)
        ctx.term()
    return {op: nbytes / _med(xs) / 2**30 for op, xs in t.items()}


def _free_port() -> int:
    """A loopback port free now, for a server the benchmark starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _time_ops(ops, n):
    """Runs each op of ops (name → f(i)) n times after a warm-up, in turn
    (so that all see the same load): name → (ops/s, p50 µs, p99 µs), the
    percentiles nearest-rank ones (_rank)."""
    for f in ops.values():
        for i in range(min(n, 200)):
            f(i)
    lat = {name: [] for name in ops}
    for i in range(n):
        for name, f in ops.items():
            t0 = time.perf_counter()
            f(i)
            lat[name].append(time.perf_counter() - t0)
    out = {}
    for name, xs in lat.items():
        xs.sort()
        out[name] = (len(xs) / sum(xs), _rank(xs, 0.50) * 1e6, _rank(xs, 0.99) * 1e6)
    return out


def _rank(xs, q):
    """The nearest-rank q-quantile of sorted xs, the ceil(q·n)-th smallest,
    as the Go benchmarks take theirs (bench's reportLatency): of 100
    samples p99 is the 99th, not the maximum."""
    return xs[min(max(math.ceil(q * len(xs)) - 1, 0), len(xs) - 1)]


def bench_values(c, part, n):
    """Small values through the client, one key per call."""
    val = np.random.default_rng(0).integers(0, 256, VALUE, dtype=np.uint8).tobytes()

    def get(i):
        got = c.kv_batch_get(f"k{i}", part)
        assert bytes(got["v"][0]) == val

    return _time_ops({
        "set": lambda i: c.kv_put(f"k{i}", part, {"v": val}),
        "get": get,
        "tag": lambda i: c.kv_put(f"t{i}", part, tag={"status": "finished"}),
    }, n)


REDIS_PERSISTS = "redis-server persists nothing (--save '' --appendonly no)"


def persistence(c, redis_why="") -> str:
    """The report's line saying what each side of --workload values makes
    durable: TQ's as its controller reports it (CLUSTER_INFO), or an
    assumption said as one when it cannot tell; redis-server's as _Redis
    starts it (``redis_why``: why there is none)."""
    try:
        ci = c._call(wire.CLUSTER_INFO, None, control_pb2.ClusterInfoReply, op_name="cluster_info")
    except tq.TQError as e:
        ours = f"TQ's durability unknown (cluster info: {e}), assumed durable as tq serve's default"
    else:
        if ci.durable:
            ours = (f"TQ logs each set's key and each tag before replying (fsync {ci.fsync or 'unknown'}), "
                    "not the values (they stay in the storage units' memory)")
        else:
            ours = "TQ persists nothing (--in-memory)"
    theirs = f"no redis-server ({redis_why})" if redis_why else REDIS_PERSISTS
    return f"persistence: {ours}; {theirs}"


class _Redis:
    """A redis-server on loopback, without persistence."""

    def __init__(self):
        import redis  # Debian's python3-redis
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
        port = _free_port()
        # What REDIS_PERSISTS says.
        self.proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        self.client = redis.Redis(port=port)
        for _ in range(200):
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with status {self.proc.returncode}") from None
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not answer in 10 s")

    def bench(self, n):
        r = self.client
        val = np.random.default_rng(0).integers(0, 256, VALUE, dtype=np.uint8).tobytes()

        def get(i):
            assert r.get(f"k{i}") == val

        return _time_ops({
            "set": lambda i: r.set(f"k{i}", val),
            "get": get,
            "tag": lambda i: r.hset(f"t{i}", "status", "finished"),
        }, n)

    def stop(self):
        self.client.close()
        self.proc.terminate()
        self.proc.wait(20)


ROWS_KEYS = 4096  # --workload rows


def rows_main(a, address):
    """--workload rows: a batch of many small rows a call."""
    rng = np.random.default_rng(0)
    n = ROWS_KEYS
    keys = [f"r{i}" for i in range(n)]
    fields = {"reward": rng.random(n, dtype=np.float32), "logp": rng.random((n, 64), dtype=np.float32),
              "response": [rng.integers(0, 50000, rng.integers(1, 201)).astype(np.int32) for _ in range(n)]}
    tags = [{"status": "finished"}] * n
    rows = []
    for tr in a.transports.split(","):
        with tq.Client(address, transport=tr, token=a.token) as c:
            part = "bench-rows-" + tr

            def get(i):
                got = c.kv_batch_get(keys, part)
                assert len(got["response"]) == n

            rows.append((f"python {tr}", _time_ops({
                "put": lambda i: c.kv_batch_put(keys, part, fields, tags),
                "get": get,
                "list": lambda i: c.kv_list(part),
            }, a.iters)))
    print(f"rows: {n} keys a call (reward, 64 log-probs, 1–200 response tokens, a tag); {a.iters} calls an op; "
          "ms a call (p50 / p99)")
    ops = ["put", "get", "list"]
    print(f"{'':16}" + "".join(f"{op:>24}" for op in ops))
    for name, v in rows:
        print(f"{name:16}" + "".join(f"{1e3 / v[op][0]:>10.2f} ({v[op][1] / 1e3:5.2f} / {v[op][2] / 1e3:5.2f})"
                                     for op in ops))
    return rows


def values_main(a, address):
    """--workload values: one table of small-value ops, TQ and redis-py."""
    n = a.iters
    rows = []
    red, why, persists = None, "", ""
    try:
        red = _Redis()
    except (ImportError, RuntimeError) as e:
        why = str(e)
    try:
        for tr in a.transports.split(","):
            with tq.Client(address, transport=tr, token=a.token) as c:
                if not persists:
                    persists = persistence(c, why)
                rows.append((f"python {tr}", bench_values(c, "bench-values-" + tr, n)))
            if red is not None:
                rows.append(("redis-py", red.bench(n)))
    finally:
        if red is not None:
            red.stop()
    print(f"values: {VALUE} B a value, one key per call, one caller, {n} calls an op; "
          "ops/s (p50 / p99 µs)" + (f"; no redis rows: {why}" if why else ""))
    print(persists)
    ops = ["set", "get", "tag"]
    print(f"{'':16}" + "".join(f"{op:>26}" for op in ops))
    for name, v in rows:
        print(f"{name:16}" + "".join(f"{v[op][0]:>10.0f} ({v[op][1]:5.0f} / {v[op][2]:5.0f})" for op in ops))
    # Each TQ row against the redis-py run that followed it.
    for (name, v), (after, r) in zip(rows, rows[1:]):
        if name.startswith("python") and after == "redis-py":
            print(f"{name + '/redis':16}" + "".join(f"{v[op][0] / r[op][0]:>25.2f}×" for op in ops))
    return rows


class _Server:
    def __init__(self, binary):
        self.dir = tempfile.mkdtemp(prefix="tqbench-")
        port = _free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        self.env = dict(os.environ, TQ_DATA_DIR=os.path.join(self.dir, "d"))
        self.log = open(os.path.join(self.dir, "log"), "w+")
        self.proc = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{port}", "--socket-dir",
                                      os.path.join(self.dir, "s"), "--data-dir", os.path.join(self.dir, "d"),
                                      "--in-memory", "--capacity", "2GiB"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        for _ in range(600):
            self.log.seek(0)
            if "tq serve: ready" in self.log.read() or self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if self.proc.poll() is not None:
            self.log.seek(0)
            raise RuntimeError("tq serve exited:\n" + self.log.read())
        os.environ["TQ_DATA_DIR"] = self.env["TQ_DATA_DIR"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(20)
        shutil.rmtree(self.dir, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m tq.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--address", help="a running cluster (default: start tq serve)")
    ap.add_argument("--tq-bin", default=_repo_bin("tq"), help="tq binary to serve with")
    ap.add_argument("--xlang", default=_repo_bin("tqxlang"), help="the Go client's bench (bin/tqxlang)")
    ap.add_argument("--iters", type=int)
    ap.add_argument("--token", help="the cluster's token (default: $TQ_TOKEN, else the data directory's)")
    ap.add_argument("--transports", default="shm,tcp")
    ap.add_argument("--no-go", action="store_true")
    ap.add_argument("--no-zmq", action="store_true")
    ap.add_argument("--workload", default="small", choices=sorted(WORKLOADS) + ["values", "rows"],
                    help="small (the reference), tiny (a few KiB, to check the harness; no Go side), "
                    "values (1 KiB values one key per call, against redis-py on a redis-server that persists "
                    "nothing; its persistence: line says what TQ persists; --iters calls an op, default 5000), or rows (4096 small rows a call; --iters calls an op, default 50)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where the fields live: cuda puts from the GPU and ends each get there (torch)")
    a = ap.parse_args(argv)
    if a.iters is None:
        a.iters = {"values": 5000, "rows": 50}.get(a.workload, 3)
    if a.iters < 1:
        ap.error(f"--iters {a.iters}: want at least 1")
    if a.workload in ("values", "rows"):
        if a.device != "cpu":
            ap.error(f"--workload {a.workload} runs on the host: no --device")
        srv = None
        if a.address is None:
            if not a.tq_bin:
                ap.error("no --address and no tq binary (build it: make build)")
            srv = _Server(a.tq_bin)
        try:
            run = values_main if a.workload == "values" else rows_main
            return run(a, srv.address if srv else a.address)
        finally:
            if srv is not None:
                srv.stop()
    global ROWS, FIELDS, SEQ
    ROWS, FIELDS, SEQ = WORKLOADS[a.workload]
    if a.workload != "small":
        a.no_go = True  # bin/tqxlang bench runs the small workload only
    dev = None
    if a.device == "cuda":
        dev = _Device()
        a.no_go, a.no_zmq = True, True  # their bytes stay on the host
    srv = None
    if a.address is None:
        if not a.tq_bin:
            ap.error("no --address and no tq binary (build it: make build)")
        srv = _Server(a.tq_bin)
        address, env = srv.address, srv.env
    else:
        address, env = a.address, dict(os.environ)
    keys, fields = workload()
    if dev is not None:
        fields = dev.fields(fields)
    gib = ROWS * FIELDS * SEQ * 4 / 2**30
    print(f"{a.workload} workload: {ROWS} keys × {FIELDS} float32 fields × {SEQ} = {gib * 1024:.0f} MiB"
          f"{' on the GPU' if dev else ''}; median of {a.iters}; GiB/s (seconds)")
    rows = []
    try:
        for tr in a.transports.split(","):
            go_secs = {}
            between = None
            if not a.no_go and a.xlang:
                # The Go client's iterations alternate with Python's, so that
                # both see the same load on a shared machine.
                def between(tr=tr):
                    go_iteration(a.xlang, address, env, "bench-go-" + tr, tr, go_secs)
            with tq.Client(address, transport=tr, token=a.token) as c:
                ops = ["put", "get", "get_into"] + (["get_view"] if tr == "shm" else []) + \
                    (["get_device"] if dev is not None else [])
                py, pys = bench_python(c, "bench-py-" + tr, keys, fields, a.iters, ops, between, dev)
            rows.append((f"python {tr}", py, pys))
            if dev is not None:
                base = dev.baseline(fields, a.iters)
                rows.append((f"torch copies ({tr} run)", {k: v for k, v in base.items() if k in ops}, None))
                rows.append((f"python/torch {tr}", {op: py[op] / base[op] for op in ops if op in base}, None))
            if go_secs:
                go, gos = rates(go_secs)
                rows.append((f"go {tr}", {k: v for k, v in go.items() if k in ops},
                             {k: v for k, v in gos.items() if k in ops}))
                ratio = {op: py[op] / go[op] for op in ops if op in go}
                rows.append((f"python/go {tr}", ratio, None))
        if not a.no_zmq:
            for ep in ("ipc://" + os.path.join(tempfile.gettempdir(), f"tqbench-{os.getpid()}.ipc"), "tcp"):
                z = bench_zmq(ep, fields, a.iters)
                rows.append((f"pyzmq {ep.split(':')[0]} copy=False", z, None))
    finally:
        if srv is not None:
            srv.stop()
    ops = ["put", "get", "get_into", "get_view"] + (["get_device"] if dev is not None else [])
    print(f"{'':28}" + "".join(f"{op:>18}" for op in ops))
    for name, v, secs in rows:
        cells = []
        for op in ops:
            if op not in v:
                cells.append(f"{'-':>18}")
            elif name.startswith(("python/go", "python/torch")):
                cells.append(f"{v[op]:>17.2f}×")
            elif secs is not None:
                cells.append(f"{v[op]:>9.2f} ({secs[op] * 1000:5.0f}ms)")
            else:
                cells.append(f"{v[op]:>18.2f}")
        print(f"{name:28}" + "".join(cells))
    return rows


if __name__ == "__main__":
    main()
