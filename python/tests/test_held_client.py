"""A loader killed on another host while it holds rows: the controller
gives them back to a consumer waiting at the end within its grace, since
every connection of the dead client was closed from the client's side
(each HELLO names the process: wire.py's client id)."""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import tq
from conftest import Server

HERE = os.path.dirname(os.path.abspath(__file__))

# Holds every row of the partition for task "t", says how many, and waits
# to be killed. Its TQ_HOST_ID is not the controller's: it stays on TCP, as
# a client on another host does.
HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[3])
    import tq

    c = tq.Client(sys.argv[1], token=sys.argv[4])
    m = c.get_meta(["x"], 4, sys.argv[2], task_name="t", _fetch_key=b"k" * 16, _hold=True)
    print(m.size, flush=True)
    time.sleep(120)
""")


@pytest.fixture(scope="module")
def graceful():
    s = Server(extra=["--held-client-grace", "300ms"])
    yield s
    s.stop()


def test_rows_of_a_killed_remote_holder_go_back(graceful, part):
    with graceful.client() as c:
        c.put({"x": np.arange(4, dtype=np.int64)}, partition_id=part)
        c.mark_done(part)
        env = dict(graceful.env, TQ_HOST_ID="another-host")
        p = subprocess.Popen([sys.executable, "-c", HOLDER, graceful.address, part, os.path.dirname(HERE), graceful.token],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = p.stdout.readline()
            assert line.strip() == "4", p.stderr.read()
            with pytest.raises(tq.DeadlineError):
                c.get_meta(["x"], 4, part, task_name="t", wait=True, timeout=1)
            p.kill()
            p.wait(10)
            t0 = time.monotonic()
            m = c.get_meta(["x"], 4, part, task_name="t", wait=True, timeout=10)
            assert m.size == 4, "the killed holder's rows"
            assert time.monotonic() - t0 < 5, "within the grace and a look, not the held-fetch TTL"
        finally:
            p.kill()
            p.wait(10)


def test_a_forked_child_is_a_client_of_its_own():
    """A child forked without exec names itself anew: its connections are
    not its parent's."""
    from tq import wire
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, wire._client_id)
        os._exit(0)
    os.close(w)
    child = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    assert len(child) == 16 and len(wire._client_id) == 16
    assert child != wire._client_id


def _kill_workers_after_they_fetched_ahead(server, c, part):
    """Put 16 rows in part (done), iterate a StreamingDataLoader with 2
    workers until they fetched ahead, take one micro-batch, SIGKILL both
    workers; returns the loader and the rows taken."""
    import multiprocessing
    import signal
    c.put({"x": np.arange(16, dtype=np.int64)}, partition_id=part)
    c.mark_done(part)
    ds = tq.StreamingDataset(2, 2, ["x"], part, "train", address=server.address, token=server.token,
                             fetch_timeout=0.3)
    # Children an earlier test's loader left (a spawned worker on its way
    # out) are not this loader's workers.
    before = {p.pid for p in multiprocessing.active_children()}
    dl = tq.StreamingDataLoader(ds, num_workers=2, prefetch_factor=2)
    it = iter(dl)
    data, _ = next(it)
    taken = data["x"].tolist()

    def consumed():
        return sum(t.consumed for t in c.stats(part).tasks if t.task == "train")
    deadline = time.monotonic() + 10
    while consumed() < 8 and time.monotonic() < deadline:  # the workers fetched ahead
        time.sleep(0.02)
    assert consumed() >= 8, "the workers did not fetch ahead: the test shows nothing"
    workers = [p for p in multiprocessing.active_children() if p.pid not in before]
    assert len(workers) == 2, workers
    # torch's SIGCHLD handler raises in this thread once a worker dies:
    # the iteration is over anyway.
    old = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        for w in workers:
            os.kill(w.pid, signal.SIGKILL)
        for w in workers:
            w.join(10)
        del it
    finally:
        signal.signal(signal.SIGCHLD, old)
    return dl, taken


def _rows_of(loop, timeout):
    """The x values loop() yields, on a thread; None if it did not end
    within timeout seconds."""
    import threading
    rows = []

    def run():
        for data, _ in loop():
            rows.extend(data["x"].tolist())
    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(timeout)
    return None if th.is_alive() else rows


def test_dataloader_workers_killed_lose_nothing(graceful, part):
    """A StreamingDataLoader's workers fetch ahead; killed (torch's timeout,
    the OOM killer), they used to lose what they had queued for the main
    process: each acknowledged its fetches as it read them, so those rows
    stayed consumed for the task and reached no one. The workers' fetches
    now stay held (in the loader's hold group) until the main process takes
    and acknowledges them, and a dead worker's holds go back to the task's
    next consumer."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    with graceful.client() as c:
        _, taken = _kill_workers_after_they_fetched_ahead(graceful, c, part)
        rest = _rows_of(lambda: tq.StreamIterator(2, 2, ["x"], part, "train", client=c, fetch_timeout=0.3), 20)
        assert rest is not None, f"the task's next consumer waits for the dead workers' rows (took {taken})"
        assert sorted(taken + rest) == list(range(16))


def test_dataloader_after_killed_workers_gets_their_rows(graceful, part):
    """The same loader iterated again after its workers were killed: its
    new workers are in the same hold group as the dead ones, whose holds
    they were told not to wait for (ErrDone), so the epoch ended without
    the rows the dead workers held (they came back only after the
    held-fetch TTL). A group's fetch at the end now waits for the holds of
    a member the controller knows is gone, and gets them."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    with graceful.client() as c:
        dl, taken = _kill_workers_after_they_fetched_ahead(graceful, c, part)
        rest = _rows_of(lambda: dl, 30)  # new workers, the loader's hold group
        assert rest is not None, f"the loader's next iteration did not end (took {taken})"
        assert sorted(taken + rest) == list(range(16))



# Holds every row of the partition for task "t" through the controller
# address it is given (the test's proxy), says how many, and acknowledges
# them when told to, printing "acked" or the error. Its keeper looks every
# argv[5] seconds.
IDLE_HOLDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[3])
    import tq
    from tq import client as tqclient
    tqclient.KEEP_DIAL_S = float(sys.argv[5])

    c = tq.Client(sys.argv[1], token=sys.argv[4], transport="tcp")
    key = b"k" * 16
    m = c.get_meta(["x"], 4, sys.argv[2], task_name="t", _fetch_key=key, _hold=True)
    print(m.size, flush=True)
    sys.stdin.readline()
    try:
        c._acknowledge(sys.argv[2], "t", key)
        print("acked", flush=True)
    except tq.TQError as e:
        print(type(e).__name__, e, flush=True)
""")


class _Proxy:
    """A TCP proxy to addr ("tcp://host:port") whose connections break()
    closes, as a network that fails under them; it accepts new ones."""

    def __init__(self, addr):
        import socket
        import threading
        host, port = addr[len("tcp://"):].rsplit(":", 1)
        self.target = (host, int(port))
        self.ls = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.ls.getsockname()[1]}"
        self.socks, self.lock = [], threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        import threading
        while True:
            try:
                a, _ = self.ls.accept()
            except OSError:
                return
            b = socket.create_connection(self.target)
            with self.lock:
                self.socks += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(x, y), daemon=True).start()

    @staticmethod
    def _pipe(x, y):
        try:
            while True:
                d = x.recv(65536)
                if not d:
                    break
                y.sendall(d)
        except OSError:
            pass
        for s in (x, y):
            try:
                s.shutdown(2)
            except OSError:
                pass

    def break_all(self):
        import socket
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.ls.close()
        self.break_all()


@pytest.mark.parametrize("keep_s,kept", [(0.1, True), (1000.0, False)], ids=["keeper", "no-keeper"])
def test_idle_holder_whose_connection_broke_comes_back(graceful, part, keep_s, kept):
    """A client holding rows (a loader in a long step) whose idle
    connection to the controller broke is taken for gone after the grace,
    and its rows go to the next consumer waiting at the end, though it
    lives and will acknowledge them: its acknowledgement then fails, the
    work on those rows lost. Its keeper notices the dead connection and
    dials again within KEEP_DIAL_S, so the rows stay its own, as the Go
    client's keeper does. (Without one, "no-keeper", the rows go.)"""
    proxy = _Proxy(graceful.address)
    with graceful.client() as c:
        c.put({"x": np.arange(4, dtype=np.int64)}, partition_id=part)
        c.mark_done(part)
        env = dict(graceful.env, TQ_HOST_ID="another-host")
        p = subprocess.Popen([sys.executable, "-c", IDLE_HOLDER, proxy.address, part, os.path.dirname(HERE),
                              graceful.token, str(keep_s)],
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = p.stdout.readline()
            assert line.strip() == "4", p.stderr.read()
            proxy.break_all()
            time.sleep(1.0)  # the grace (0.3 s) and several looks of the keeper
            # A gone holder's rows come back within a second or two (the
            # grace and a look: test_rows_of_a_killed_remote_holder_go_back),
            # and at once to a consumer that waits after the grace (as
            # "no-keeper" shows): 1.5 s more shows they stay.
            if kept:
                with pytest.raises(tq.DeadlineError):
                    c.get_meta(["x"], 4, part, task_name="t", wait=True, timeout=1.5)
            else:
                assert c.get_meta(["x"], 4, part, task_name="t", wait=True, timeout=4).size == 4
            p.stdin.write("ack\n")
            p.stdin.flush()
            out = p.stdout.readline().strip()
            assert (out == "acked") == kept, (out, p.stderr.read() if p.poll() is not None else "")
        finally:
            p.kill()
            p.wait(10)
            proxy.close()
