"""Fixtures: a real `tq serve` (bin/tq, built by make test) for the session,
and clients over each transport."""

import faulthandler
import gc
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the package from this checkout
sys.path.insert(0, HERE)

import tq  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))


def _bin(env, name):
    p = os.environ.get(env) or os.path.join(REPO, "bin", name)
    if not os.path.exists(p):
        pytest.skip(f"{p} not built (make pytest builds it)")
    return p


def _free_port():
    """A loopback port nothing listens on now, below the kernel's
    ephemeral range (as Go's testenv.FreeLoopbackAddr): a port picked by
    binding :0 is in that range, and a connection made before the server
    meant for it binds it (a client redialing, any other process) may take
    it as its local port."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        lo = 32768
    if lo <= 11000:
        lo = 65536
    for _ in range(200):
        p = random.randrange(10000, lo)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            s.close()
        return p
    raise RuntimeError(f"no free loopback port below {lo}")


def serve_args(defaults, extra):
    """`tq serve` flags: defaults, each one "--name=value" (or "--name" for
    a bool), less those that extra names too, then extra. A test overrides a
    default rather than repeating the flag, which tq serve refuses."""
    given = {a.lstrip("-").split("=", 1)[0] for a in extra if a.startswith("-")}
    return [d for d in defaults if d.lstrip("-").split("=", 1)[0] not in given] + list(extra)


class Server:
    """A running `tq serve --role all` with its own data and socket dirs."""

    def __init__(self, extra=()):
        self.dir = tempfile.mkdtemp(prefix="tqpy-")
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.data_dir = os.path.join(self.dir, "d")
        self.env = dict(os.environ, TQ_DATA_DIR=self.data_dir)
        self.env.pop("TQ_TOKEN", None)
        self.log = open(os.path.join(self.dir, "log"), "w+")
        # extra replaces a default it names (tq serve refuses a flag given twice).
        self.args = [_bin("TQ_BIN", "tq"), "serve", *serve_args(
            [f"--listen=127.0.0.1:{self.port}", "--socket-dir=" + os.path.join(self.dir, "s"),
             "--data-dir=" + self.data_dir, "--capacity=256MiB", "--huge-pages=false"], extra)]
        self._start()

    def _start(self):
        start = self.log.tell()
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.log.seek(start)
            if "tq serve: ready" in self.log.read():
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("tq serve did not start")
        if self.proc.poll() is not None:
            self.log.seek(0)
            raise RuntimeError("tq serve exited:\n" + self.log.read())
        with open(os.path.join(self.data_dir, "token")) as f:
            self.token = f.read().strip()

    def restart(self):
        """Stop the server and start it again at the same address, with the
        same data directory (its token): one --in-memory starts anew, as
        another cluster."""
        self.proc.terminate()
        self.proc.wait(15)
        self.log.seek(0, os.SEEK_END)
        self._start()

    def client(self, **kw):
        kw.setdefault("token", self.token)
        return tq.Client(self.address, **kw)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(params=["tcp", "shm"])
def transport(request):
    return request.param


@pytest.fixture
def client(server, transport):
    c = server.client(transport=transport)
    yield c
    c.close()


@pytest.fixture
def part():
    """A partition name of this test's own."""
    return "p-" + uuid.uuid4().hex[:12]


@pytest.fixture
def xlang_bin():
    return _bin("TQ_XLANG", "tqxlang")


# TQ_TEST_GC_PROBE=1: after each test, a gc.collect(), timed, then another
# (no garbage left: what walking the heap costs alone); the tests whose
# garbage took over GC_PROBE_SLOW_S more than that to collect are listed
# at the end of the session. Garbage in a reference cycle is freed when
# the cyclic collector next runs, in whatever later test and thread, and
# a slow finalizer there (torch's DataLoader iterator joining its workers,
# 5 s each) looks like that test's stall.
GC_PROBE_SLOW_S = 0.5
_gc_slow = []  # (test id, seconds the first collection took, the second)

if os.environ.get("TQ_TEST_GC_PROBE") == "1":
    @pytest.fixture(autouse=True)
    def _gc_probe(request):
        yield
        t0 = time.monotonic()
        gc.collect()
        t1 = time.monotonic()
        gc.collect()
        t2 = time.monotonic()
        if (t1 - t0) - (t2 - t1) > GC_PROBE_SLOW_S:
            _gc_slow.append((request.node.nodeid, t1 - t0, t2 - t1))


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("TQ_TEST_GC_PROBE") != "1":
        return
    terminalreporter.write_sep("=", f"TQ_TEST_GC_PROBE: {len(_gc_slow)} tests left garbage that took over "
                                    f"{GC_PROBE_SLOW_S} s to collect")
    for nodeid, took, walk in _gc_slow:
        terminalreporter.write_line(f"{took:6.2f} s (heap walk {walk:.2f} s)  {nodeid}")


# A test that hangs: make pytest runs the suite with pytest-timeout
# (Debian's python3-pytest-timeout) and --timeout=300, which fails it
# with the stacks of this process's threads. A hang in a process this
# one forked (a torch DataLoader worker that never sends its batch)
# shows only as the main thread's wait, so a little before that each
# forked child dumps its own threads too: they inherit this SIGUSR2
# handler, and the stderr pytest captures for the test.
HANG_DUMP_S = 240
faulthandler.register(signal.SIGUSR2, all_threads=True)


def _dump_hung():
    sys.stderr.write(f"conftest: test still running after {HANG_DUMP_S} s; stacks follow\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(all_threads=True)
    for p in multiprocessing.active_children():
        try:
            os.kill(p.pid, signal.SIGUSR2)
        except OSError:
            pass


@pytest.fixture(autouse=True)
def _hang_dump():
    t = threading.Timer(HANG_DUMP_S, _dump_hung)
    t.daemon = True
    t.start()
    yield
    t.cancel()
