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
    workers = multiprocessing.active_children()
    assert len(workers) == 2
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
