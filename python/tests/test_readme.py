"""The README's Python section, claim by claim where no other test holds it:
its code examples run as written against a real tq serve, and the calls,
error classes and forms it names behave as it says."""

import ast
import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import tq

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(os.path.dirname(os.path.dirname(HERE)), "README.md")


def readme_python_blocks():
    """The ```python blocks of the README's "## Python" section."""
    with open(README) as f:
        text = f.read()
    section = text[text.index("\n## Python\n"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def run_python(server, code, timeout=60):
    """Run code in a fresh python3 that imports this checkout's tq and
    finds the cluster as a user's process would: $TQ_ADDRESS, and the
    token in its data directory."""
    env = dict(server.env, TQ_ADDRESS=server.address,
               PYTHONPATH=os.path.dirname(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)


def test_readme_kv_example_runs_as_written(server):
    code = readme_python_blocks()[0]
    assert "tq.kv_batch_put" in code
    r = run_python(server, code)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    listed = [ln.split(" | tag=") for ln in lines if ln.startswith("    - key=")]
    assert [k for k, _ in listed] == [f"    - key='{k}'" for k in ("1_0", "1_1", "1_2", "2_0")]
    assert all(ast.literal_eval(t) == {"global_steps": 1, "status": "running", "model_version": 1} for _, t in listed)
    assert "  Fields: ['attention_mask', 'input_ids']" in lines
    # kv_clear at the end took every key, the one kv_put tagged too.
    with server.client() as c:
        assert c.kv_list("test") == {}


NO_TORCH = "import sys; sys.modules['torch'] = None  # import torch fails\n"


@pytest.mark.parametrize("torch", ["torch", "no torch"])
def test_readme_streaming_example_runs_as_written(server, part, torch):
    """The StreamingDataset example yields every row once and its put adds
    log_prob to the rows it read: a torch IterableDataset, and without
    torch a plain iterator (tq.StreamIterator)."""
    if torch == "torch":
        pytest.importorskip("torch")
    code = readme_python_blocks()[1]
    assert "tq.StreamingDataset" in code and '"train"' in code
    with server.client() as c:
        c.kv_batch_put([f"k{i}" for i in range(16)], part,
                       {"prompt": np.arange(16 * 3, dtype=np.int64).reshape(16, 3),
                        "reward": np.arange(16, dtype=np.float32)})
        prelude = "import sys\n" + (NO_TORCH if torch == "no torch" else "") + textwrap.dedent("""
            import numpy as np
            import tq
            tq.init()
            if "torch" in sys.modules and sys.modules["torch"] is not None:
                assert isinstance(tq.StreamingDataset, type) and issubclass(
                    tq.StreamingDataset, sys.modules["torch"].utils.data.IterableDataset)
            else:
                assert tq.StreamingDataset is tq.StreamIterator
                try:
                    tq.StreamingDataLoader(None)
                except tq.NotSupportedError:
                    pass
                else:
                    raise AssertionError("StreamingDataLoader without torch")
            def compute(data):
                return np.asarray(data["reward"]) * 2
            """)
        r = run_python(server, prelude + code.replace('"train"', repr(part)) + "print('done')\n")
        assert r.returncode == 0 and r.stdout.strip() == "done", r.stdout + r.stderr
        got = c.kv_batch_get([f"k{i}" for i in range(16)], part, select_fields=["reward", "log_prob"])
        np.testing.assert_array_equal(got["log_prob"], got["reward"] * 2)


def test_error_classes_are_one_hierarchy():
    for cls, also in ((tq.NotFoundError, KeyError), (tq.UnavailableError, ConnectionError),
                      (tq.InvalidError, ValueError)):
        assert issubclass(cls, tq.TQError) and issubclass(cls, also), cls
    for cls in (tq.NotReadyError, tq.DTypeMismatchError, tq.CapacityError, tq.LostError, tq.DeadlineError,
                tq.DoneError, tq.ClosedError, tq.NotSupportedError):
        assert issubclass(cls, tq.TQError), cls


def test_error_from_the_server_names_its_op(client, part):
    """.partition, .code, .keys and .fields: test_kv's
    test_errors_name_what_was_wrong."""
    client.kv_batch_put(["a"], part, {"x": np.zeros((1, 2), np.float32)})
    with pytest.raises(tq.NotFoundError) as e:
        client.kv_batch_get(["a", "gone"], part)
    assert e.value.op == "kv_batch_get" and e.value.partition == part and "gone" in str(e.value)


def test_unreachable_cluster_is_a_connection_error():
    with pytest.raises(ConnectionError):
        tq.Client("tcp://127.0.0.1:1", token="t" * 32, retry_for=0, timeout=2).kv_list()


def test_get_returns_a_tensordict_when_every_field_is_dense(client, part, monkeypatch):
    """With tensordict importable (here a stand-in for it, which records
    what the client gives it), a get whose fields are all dense returns a
    TensorDict of torch tensors over the rows; one with a ragged or opaque
    field returns the dict."""
    torch = pytest.importorskip("torch")

    class TD(dict):
        def __init__(self, fields, batch_size):
            super().__init__(fields)
            self.batch_size = batch_size

    monkeypatch.setattr(tq.client, "_TD", TD)
    client.kv_batch_put(["a", "b"], part, {"x": np.arange(4, dtype=np.float32).reshape(2, 2),
                                           "r": [np.arange(1), np.arange(2)], "s": ["u", "v"]})
    got = client.kv_batch_get(["a", "b"], part, select_fields=["x"])
    assert isinstance(got, TD) and got.batch_size == [2]
    assert torch.equal(got["x"], torch.arange(4, dtype=torch.float32).reshape(2, 2))
    for sel in (["x", "r"], ["x", "s"]):
        assert type(client.kv_batch_get(["a", "b"], part, select_fields=sel)) is dict, sel


def test_async_kv_batch_get_by_meta(server, part, monkeypatch):
    monkeypatch.setenv("TQ_ADDRESS", server.address)
    monkeypatch.setenv("TQ_DATA_DIR", server.data_dir)
    tq.close()
    tq.init()
    try:
        m = tq.kv_batch_put(["a", "b"], part, {"x": np.ones((2, 2)), "y": np.zeros((2, 1))})
        got = asyncio.run(tq.async_kv_batch_get_by_meta(m, select_fields=["y"]))
        assert list(got) == ["y"] and got["y"].tolist() == [[0.0], [0.0]]
    finally:
        tq.close()


def test_write_through_a_views_tensor_faults(server, part):
    """Over shared memory a view's torch tensors map the unit's memory
    read-only: a write kills the writer (SIGSEGV), the cells unchanged."""
    pytest.importorskip("torch")
    with server.client() as c:
        c.kv_batch_put(["a"], part, {"x": np.ones((1, 100_000), np.float32)})  # through the unit
        code = textwrap.dedent(f"""
            import tq
            c = tq.Client(transport="shm")
            v = c.kv_batch_get(["a"], {part!r}, copy=False)
            t = v.tensors()["x"]
            print("mapped", flush=True)
            t[0, 0] = 7
            print("wrote", flush=True)
            """)
        r = run_python(server, code)
        assert r.stdout.strip() == "mapped" and r.returncode in (-signal.SIGSEGV, -signal.SIGBUS), (r.returncode, r.stdout + r.stderr)
        assert c.kv_batch_get(["a"], part)["x"][0, 0] == 1.0


def test_retry_for_zero_never_sends_again(tmp_path):
    from conftest import Server
    s = Server()
    try:
        c = s.client(transport="tcp", retry_for=0)
        c.kv_list()
        s.proc.terminate()
        s.proc.wait(15)
        with pytest.raises(tq.UnavailableError) as e:
            c.kv_list()
        assert "unreachable for" not in str(e.value)
        c.close()
    finally:
        s.stop()


def test_fetch_and_mark_done_are_sent_again_once_the_controller_is_back():
    """A fetch and mark_done, safe to repeat, wait out a controller restart
    (within retry_for) rather than fail."""
    from conftest import Server
    s = Server()
    try:
        c = s.client(transport="tcp")
        part = "p"
        c.put({"x": np.arange(4, dtype=np.float32)}, partition_id=part)
        for call in (lambda: c.get_meta(["x"], 2, part, task_name="t"), lambda: c.mark_done(part)):
            s.proc.terminate()
            s.proc.wait(15)
            s.log.seek(0, os.SEEK_END)
            back = threading.Thread(target=lambda: (time.sleep(0.3), s._start()))
            back.start()
            try:
                r = call()
            finally:
                back.join()
            if r is not None:
                assert r.size == 2
        assert c.get_meta(["x"], 2, part, task_name="t").size == 2
        with pytest.raises(tq.DoneError):
            c.get_meta(["x"], 2, part, task_name="t")
        c.close()
    finally:
        s.stop()


def test_auto_transport_is_shm_on_the_units_host_and_tcp_forces_tcp(server, part):
    """tq.Client's default reaches a unit on its host over shared memory
    (views into the unit's memory, read-only); transport="tcp" forces TCP
    (a view's arrays are the client's own)."""
    with server.client() as auto, server.client(transport="tcp") as tcp:
        auto.kv_batch_put(["a"], part, {"x": np.ones((1, 100_000), np.float32)})  # through the unit
        assert {u.transport for u in auto.units().values()} == {"shm"}
        assert {u.transport for u in tcp.units().values()} == {"tcp"}
        with auto.kv_batch_get(["a"], part, copy=False) as v:
            assert not v["x"].flags.writeable
        with tcp.kv_batch_get(["a"], part, copy=False) as v:
            assert v["x"].flags.writeable and v["x"][0, 0] == 1.0


def test_defaults_address_and_token_file(tmp_path, monkeypatch):
    """tq.init()'s defaults: $TQ_ADDRESS, else tcp://127.0.0.1:7370; the
    token from $TQ_TOKEN, else ~/.local/state/tq/token."""
    for v in ("TQ_ADDRESS", "TQ_TOKEN", "TQ_DATA_DIR", "XDG_STATE_HOME"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    d = tmp_path / ".local" / "state" / "tq"
    d.mkdir(parents=True)
    (d / "token").write_text("fromfile\n")
    os.chmod(d / "token", 0o600)
    assert tq.wire.find_token() == "fromfile"
    monkeypatch.setenv("TQ_TOKEN", "fromenv")
    assert tq.wire.find_token() == "fromenv"
    with pytest.raises(tq.TQError) as e:
        tq.Client(retry_for=0, timeout=2).kv_list()
    if not isinstance(e.value, tq.UnavailableError):  # another token's cluster answers there
        pytest.skip(f"a tq serve listens at 127.0.0.1:7370: {e.value}")
    assert "127.0.0.1:7370" in str(e.value)


def test_view_arrays_cannot_be_flagged_writable(server, part):
    """Over shared memory numpy refuses to flag a view's array writable,
    ragged rows too; the view can be released by a with block."""
    with server.client(transport="shm") as c:
        c.kv_batch_put(["a", "b"], part, {"x": np.ones((2, 50_000), np.float32),
                                          "r": [np.ones(50_000, np.float32), np.ones(3, np.float32)]})
        with c.kv_batch_get(["a", "b"], part, copy=False) as v:
            for a in (v["x"], v["r"][0]):
                with pytest.raises(ValueError):
                    a.setflags(write=True)
        assert v.released
