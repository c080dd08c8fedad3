"""The low-level API (get_client()): get_meta's modes and blocking wait,
put, get_data, clears, tags, production and consumption status, and
checkpoints."""

import os
import socket
import threading
import time

import numpy as np
import pytest

import tq
from tq import wire
from tq._pb import common_pb2, control_pb2

from conftest import Server


def test_insert_put_fetch_get(client, part):
    m = client.get_meta(["prompt", "len"], 4, part, mode="insert")
    assert m.size == 4 and not m.is_ready
    prompts = [np.arange(i + 1, dtype=np.int64) for i in range(4)]
    m2 = client.put({"prompt": prompts, "len": np.arange(1, 5, dtype=np.int32)}, metadata=m)
    assert m2.global_indexes == m.global_indexes and m2.is_ready
    assert m2.field_schema["prompt"]["kind"] == "ragged" and m2.field_schema["len"]["dtype"] == "int32"
    # A second task column added to the same rows.
    client.put({"reward": np.ones(4, np.float32)}, metadata=m2)
    f = client.get_meta(["prompt", "reward"], 3, part, task_name="train")
    assert f.size == 3 and f.is_ready
    d = client.get_data(f)
    assert [a.tolist() for a in d["prompt"]] == [list(range(i + 1)) for i in range(3)]
    assert d["reward"].tolist() == [1.0, 1.0, 1.0]
    # Too few left: polling returns an empty meta at once.
    assert client.get_meta(["prompt"], 3, part, task_name="train").size == 0
    # Another task sees every row.
    assert client.get_meta(["prompt"], 4, part, task_name="other").size == 4
    ff = client.get_meta(["prompt"], 0, part, mode="force_fetch")
    assert ff.size == 4


def test_put_with_partition_id(client, part):
    m = client.put({"x": np.zeros((3, 2), np.float16), "s": ["a", "b", "c"]}, partition_id=part)
    assert m.size == 3 and m.is_ready and m.field_names == ["s", "x"]
    assert client.get_data(m)["s"] == [b"a", b"b", b"c"]


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_put_with_partition_id_counts_rows_of_every_form(client, part):
    """put(partition_id=...) allocates as many rows as its first field has,
    telling the forms apart as a put does: a 2-tuple of str is two opaque
    rows (not values and offsets), (values, offsets) len(offsets) - 1
    rows, a tq.Typed its array's, a torch nested tensor its tensors'. A
    value with no first dimension is an InvalidError naming the field."""
    assert client.put({"s": ("x", "yy")}, partition_id=part).size == 2
    assert client.put({"p": (np.arange(5, dtype=np.int32), [0, 2, 5])}, partition_id=part).size == 2
    assert client.put({"t": tq.Typed(np.zeros((3, 2), np.uint16), "bfloat16")}, partition_id=part).size == 3
    for bad in (0.5, np.float32(0.5), np.array(1)):
        with pytest.raises(tq.InvalidError) as ei:
            client.put({"r": bad}, partition_id=part)
        assert ei.value.fields == ["r"]
    try:
        import torch
    except ImportError:
        return
    assert client.put({"n": torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])}, partition_id=part).size == 2
    with pytest.raises(tq.InvalidError):
        client.put({"r": torch.tensor(0.5)}, partition_id=part)


def test_blocking_fetch(client, server, part):
    t0 = time.monotonic()
    with pytest.raises(tq.DeadlineError):
        client.get_meta(["x"], 2, part, task_name="t", wait=True, timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 10

    def later():
        time.sleep(0.3)
        with server.client() as c:
            c.put({"x": np.arange(2.0)}, partition_id=part)
    th = threading.Thread(target=later)
    th.start()
    m = client.get_meta(["x"], 2, part, task_name="t", wait=True, timeout=20)
    th.join()
    assert m.size == 2 and client.get_data(m)["x"].tolist() == [0.0, 1.0]


def test_blocking_fetch_with_no_time_left_does_not_wait(server, part):
    """A blocking fetch with under a millisecond left (timeout 0, 0.4 ms)
    asks the server not to wait, as the Go client does: timeout_ms 0 would
    mean the server's own limit (5 minutes), and the call would hang until
    the socket's timeout. With no rows it is a DeadlineError at once."""
    with server.client(transport="tcp", timeout=3) as c:
        for timeout in (0, 0.0004):
            t0 = time.monotonic()
            with pytest.raises(tq.DeadlineError):
                c.get_meta(["x"], 1, part, task_name="t", wait=True, timeout=timeout)
            assert time.monotonic() - t0 < 1.5
        c.put({"x": np.arange(2.0)}, partition_id=part)
        assert c.get_meta(["x"], 2, part, task_name="t", wait=True, timeout=0).size == 2


@pytest.mark.parametrize("kw,want", [
    ({"timeout": float("inf")}, "timeout inf must be finite"),
    ({"timeout": float("nan")}, "timeout nan is not a number"),
    ({"timeout": -1}, "timeout -1 must not be negative"),
    ({"timeout": 0}, "timeout 0 must be more than 0"),
    ({"timeout": "30"}, "timeout must be a number, not str ('30')"),
    ({"timeout": None}, "timeout must be a number, not NoneType (None)"),
    ({"timeout": True}, "timeout must be a number, not bool (True)"),
    ({"retry_for": float("nan")}, "retry_for nan is not a number"),
    ({"retry_for": "60"}, "retry_for must be a number, not str ('60')"),
])
def test_client_refuses_a_bad_timeout_naming_it(server, kw, want):
    """tq.Client's timeout and retry_for were taken as given: an infinite
    timeout was an OverflowError from the socket once the client dialed,
    NaN a wait that never ended, a str a TypeError at the first failed
    call. Each is now refused where the client is built, naming the
    argument and its value; retry_for may be infinite (try for ever) or
    0 or less (never), as documented."""
    with pytest.raises(tq.InvalidError) as ei:
        tq.Client(server.address, token=server.token, **kw)
    assert want in str(ei.value) and isinstance(ei.value, ValueError)
    for retry_for in (float("inf"), -1, 0):
        tq.Client(server.address, token=server.token, retry_for=retry_for, timeout=5).close()


@pytest.mark.parametrize("kw,want", [
    ({"batch_size": 1.5}, "batch_size must be an int, not float (1.5)"),
    ({"batch_size": -1}, "batch_size -1 must not be negative"),
    ({"timeout": float("inf"), "wait": True}, "timeout inf must be finite"),
    ({"timeout": float("nan"), "wait": True}, "timeout nan is not a number"),
    ({"timeout": -0.5, "wait": True}, "timeout -0.5 must not be negative"),
])
def test_get_meta_refuses_a_bad_batch_size_or_timeout(client, part, kw, want):
    """get_meta's batch_size and timeout were unchecked: an infinite or
    NaN timeout failed deep in the wait (OverflowError, ValueError from
    int()), a float batch_size as protobuf's TypeError naming no argument."""
    kw = {"batch_size": 1, **kw}
    with pytest.raises(tq.InvalidError) as ei:
        client.get_meta(["x"], kw.pop("batch_size"), part, task_name="t", **kw)
    assert want in str(ei.value)


def test_blocking_fetch_asks_again_when_the_servers_limit_runs_out():
    """A blocking fetch whose wait the server ends (CODE_DEADLINE) well
    before the caller's timeout, its own limit being shorter, is asked
    again with the same key and the time left, until the timeout; only
    then is it a DeadlineError (a fake controller whose limit is 0.1 s)."""
    from test_wire import _reply
    fetches = []

    def read(c):
        buf = b""
        while len(buf) < 32:
            got = c.recv(32 - len(buf))
            if not got:
                return None
            buf += got
        _, _, _, op, _, rid, blen, _, plen = wire.HEADER.unpack(buf)
        body = b""
        while len(body) < blen + plen:
            body += c.recv(blen + plen - len(body))
        return op, rid, body[:blen]

    def controller(c):
        op, rid, _ = read(c)
        _reply(c, op, rid, common_pb2.Hello(version=1, role="controller", host_id="elsewhere"))
        while (f := read(c)) is not None:
            op, rid, body = f
            if op != wire.FETCH:
                _reply(c, op, rid, control_pb2.Empty())
                continue
            fetches.append((time.monotonic(), control_pb2.FetchRequest.FromString(body)))
            time.sleep(0.1)
            _reply(c, op, rid, common_pb2.Error(code=10, message="waited 0.1 s"),
                   flags=wire.FLAG_REPLY | wire.FLAG_ERROR)

    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)

    def serve():
        c, _ = ls.accept()
        with c:
            controller(c)
    threading.Thread(target=serve, daemon=True).start()
    with tq.Client(f"tcp://127.0.0.1:{ls.getsockname()[1]}", token="t", transport="tcp") as c:
        t0 = time.monotonic()
        with pytest.raises(tq.DeadlineError):
            c.get_meta(["x"], 1, "p", task_name="t", wait=True, timeout=0.6)
        took = time.monotonic() - t0
    ls.close()
    # It waits out the caller's timeout, not the server's limit; the upper
    # bound only catches a fetch that kept asking after it, for good (a
    # loaded machine added 4.5 s once: the fake controller shares this
    # process's GIL).
    assert 0.55 < took < 30
    assert len(fetches) >= 4
    assert len({f.key for _, f in fetches}) == 1
    # Each asks for no more than the time left when it was sent. Timed by
    # when the fake controller saw the one before, not this one: the fake
    # shares this process, and under load (full make test runs, twice) it
    # saw a fetch seconds after it was sent. A fetch is sent after the
    # reply to the one before, which came 0.1 s after that one arrived.
    prev = None
    for at, f in fetches:
        assert f.wait and 0 < f.timeout_ms <= 600, f.timeout_ms
        if prev is not None:
            left_ms = (t0 + 0.6 - (prev + 0.1)) * 1000
            assert f.timeout_ms <= left_ms, (f.timeout_ms, left_ms)
        prev = at


def test_statuses_tags_and_clears(client, part):
    m = client.put({"x": np.zeros(4)}, partition_id=part)
    idx, prod = client.get_production_status(["x"], part)
    assert idx.tolist() == m.global_indexes and prod.tolist() == [[1]] * 4
    assert client.check_production_status(["x"], part)
    assert not client.check_consumption_status("t", part)
    f = client.get_meta(["x"], 4, part, task_name="t")
    assert f.size == 4
    idx, cons = client.get_consumption_status("t", part)
    assert cons.tolist() == [1] * 4 and client.check_consumption_status("t", part)
    client.reset_consumption(part, "t")
    assert not client.check_consumption_status("t", part)
    # Tags (custom_meta) ride along in every meta.
    f.custom_meta[0]["score"] = 0.5
    f.update_custom_meta([{"step": i} for i in range(4)])
    client.set_custom_meta(f)
    again = client.get_meta(["x"], 0, part, mode="force_fetch")
    assert again.custom_meta[0] == {"score": 0.5, "step": 0} and again.custom_meta[3] == {"step": 3}
    client.clear_samples(again[:2])
    assert client.get_meta(["x"], 0, part, mode="force_fetch").size == 2
    assert part in client.get_partition_list()
    client.clear_partition(part)
    assert part not in client.get_partition_list()
    assert not client.check_production_status(["x"], part)


def test_get_data_of_unproduced_names_rows_and_field(client, part):
    m = client.get_meta(["x", "y"], 2, part, mode="insert")
    client.put({"x": np.zeros(2)}, metadata=m)
    client.put({"y": np.zeros(1)}, metadata=m[1:])
    meta = client.get_meta(["x", "y"], 0, part, mode="force_fetch")
    assert meta.production_status.tolist() == [0, 1]
    with pytest.raises(tq.NotReadyError) as e:
        client.get_data(meta, fields=["y"])
    assert e.value.fields == ["y"] and e.value.keys == [m.global_indexes[0]]
    with pytest.raises(tq.NotFoundError) as e:
        client.get_data(meta, fields=["never"])
    assert e.value.fields == ["never"]


def test_meta_chunk_and_select(client, part):
    m = client.put({"x": np.arange(10.0), "r": [np.arange(i) for i in range(10)]}, partition_id=part)
    parts = m.chunk(3)
    assert [p.size for p in parts] == [4, 3, 3]
    got = [client.get_data(p) for p in parts]
    assert np.concatenate([g["x"] for g in got]).tolist() == list(range(10))
    assert [len(a) for g in got for a in g["r"]] == list(range(10))
    sel = m.select_samples([9, 0])
    assert client.get_data(sel)["x"].tolist() == [9.0, 0.0]
    assert client.get_data(m.select_fields(["x"])).keys() == {"x"}


def test_tags_by_key(client, part):
    client.kv_batch_put(["a", "b"], part, tags=[{"status": "new"}, {"status": "done", "n": 1}])
    assert client.list_keys(part, where={"status": "new"}) == {"a": {"status": "new"}}
    assert set(client.list_keys(part, where={"status": {"new", "done"}})) == {"a", "b"}
    assert set(client.list_keys(part, where={"n": ...})) == {"b"}
    assert set(client.list_keys(part, where={"n": tq.ABSENT})) == {"a"}
    ok, cur = client.compare_and_set_tag("a", part, "status", "new", "running")
    assert ok and cur == "running"
    ok, cur = client.compare_and_set_tag("a", part, "status", "new", "running")
    assert not ok and cur == "running"
    assert client.delete_tags(["b"], part, ["n"]) == [{"status": "done"}]


def test_checkpoint_save_load(client, part):
    client.kv_batch_put(["a", "b"], part, {"x": np.arange(4.0).reshape(2, 2)}, [{"v": 1}, {"v": 2}])
    name = "ck-" + part
    client.save_checkpoint(name)
    assert name in [c["name"] for c in client.list_checkpoints()]
    client.kv_clear(["a"], part)
    client.kv_batch_put(["b"], part, {"x": np.zeros((1, 2))})
    client.load_checkpoint(name)
    got = client.kv_batch_get(["a", "b"], part)
    assert got["x"].tolist() == [[0.0, 1.0], [2.0, 3.0]]
    assert client.kv_list(part)[part] == {"a": {"v": 1}, "b": {"v": 2}}
    with pytest.raises(tq.TQError):
        client.load_checkpoint("no-such-" + name)


@pytest.fixture(scope="module")
def small_server():
    """A server holding only what its tests put: a checkpoint of the
    session's writes, and a load rewrites, every cell the suite left there
    (seconds, late in the suite)."""
    s = Server()
    yield s
    s.stop()


@pytest.fixture
def small_client(small_server, transport):
    with small_server.client(transport=transport) as c:
        yield c


def test_save_checkpoint_takes_the_references_keywords(small_client, part, monkeypatch):
    """save_checkpoint takes TransferQueue's keywords (verl passes
    metadata={"global_steps": step}): metadata is kept with the checkpoint
    (it used to be dropped with a warning), listed and returned by a load;
    include_storage=False, which a TQ checkpoint cannot honour, warns once
    per process instead of being dropped silently. (On a server of its
    own: test_checkpoint_save_load saves and loads the session's.)"""
    client = small_client
    monkeypatch.setattr(tq.client, "_warned", set(), raising=False)
    name = "ck-meta-" + part
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        saved = client.save_checkpoint(name, metadata={"global_steps": 3, "tags": ["a", "é"]})
    assert saved["name"] == name and saved["metadata"] == {"global_steps": 3, "tags": ["a", "é"]}
    listed = {c["name"]: c for c in client.list_checkpoints()}
    assert listed[name]["metadata"] == {"global_steps": 3, "tags": ["a", "é"]}
    assert listed[name]["unusable"] is None, "saved by this build: it loads"
    assert client.load_checkpoint(name) == {"global_steps": 3, "tags": ["a", "é"]}
    with pytest.warns(UserWarning, match="include_storage=False"):
        client.save_checkpoint(name, include_storage=False)
    listed = {c["name"]: c for c in client.list_checkpoints()}
    assert listed[name]["metadata"] is None, "saved again without metadata"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        saved = client.save_checkpoint(name, include_storage=False, metadata={"global_steps": 4})  # warned once
    assert saved["metadata"] == {"global_steps": 4}


def test_save_checkpoint_refuses_bad_metadata(client, part):
    """Metadata that is not a dict JSON can encode is refused before
    anything is saved, naming what is wrong; so is one too large (by the
    server)."""
    name = "ck-bad-" + part
    with pytest.raises(TypeError, match="metadata must be a dict, not list"):
        client.save_checkpoint(name, metadata=[1, 2])
    with pytest.raises(TypeError, match="cannot be encoded as JSON"):
        client.save_checkpoint(name, metadata={"x": object()})
    with pytest.raises(TypeError, match="cannot be encoded as JSON"):
        client.save_checkpoint(name, metadata={"x": float("nan")})
    with pytest.raises(tq.TQError, match="checkpoint metadata of"):
        client.save_checkpoint(name, metadata={"x": "y" * (64 << 10)})
    assert name not in [c["name"] for c in client.list_checkpoints()]


def test_async_twins(client, part):
    import asyncio

    async def go():
        m = await client.async_put({"x": np.arange(3.0)}, partition_id=part)
        f = await client.async_get_meta(["x"], 3, part, task_name="t", wait=True, timeout=5)
        d, parts = await asyncio.gather(client.async_get_data(f), client.async_get_partition_list())
        await client.async_clear_partition(part)
        return m, d, parts
    m, d, parts = asyncio.run(go())
    assert m.size == 3 and d["x"].tolist() == [0.0, 1.0, 2.0] and part in parts
    assert part not in client.get_partition_list()


def test_cancelled_async_get_meta_gives_its_rows_back(server, part, monkeypatch):
    """A cancelled async_get_meta leaves its fetch running on a worker
    thread; the rows that fetch takes reach no one, so they go back to the
    task: rows produced after the cancel (the blocked fetch would have
    taken them), and rows the fetch took before it (its reply late)."""
    import asyncio

    async def cancelled(c, wait):
        t = asyncio.ensure_future(c.async_get_meta(["x"], 2, part, task_name="t", wait=wait, timeout=10))
        await asyncio.sleep(0.3)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    with server.client(transport="tcp") as c:
        async def produced_after():
            await cancelled(c, True)
            c.put({"x": np.ones((2, 1), np.float32)}, partition_id=part)
        asyncio.run(produced_after())  # waits for the worker thread
        assert c.get_meta(["x"], 2, part, task_name="t", wait=True, timeout=5).size == 2

        c.put({"x": np.ones((2, 1), np.float32)}, partition_id=part)
        real = tq.wire.Conn._read_header

        def late(self):
            h = real(self)  # the reply is here: the controller consumed the rows
            if h[3] == tq.wire.FETCH:
                time.sleep(0.6)
            return h
        monkeypatch.setattr(tq.wire.Conn, "_read_header", late)
        asyncio.run(cancelled(c, False))
        monkeypatch.setattr(tq.wire.Conn, "_read_header", real)
        assert c.get_meta(["x"], 2, part, task_name="t", wait=True, timeout=5).size == 2


def test_samplers_per_fetch_token_budget_and_done(client, part):
    """A fetch names its sampler; a token budget bounds a batch by its rows'
    total_lengths; a partition marked done ends with short batches, then
    DoneError."""
    # A freed index for the put to reuse first: its indexes are then not
    # consecutive, and GRPO's groups are still its rows 0-1 and 2-3.
    scratch = client.put({"x": np.zeros(2, np.float32)}, partition_id=part + "-scratch")
    client.clear_samples(scratch.select_samples([0]))
    m = client.put({"x": np.zeros(16, np.float32)}, partition_id=part)
    client.clear_partition(part + "-scratch")
    client.set_tags(part, m.global_indexes, [{"total_lengths": 10 * (1 + i % 3)} for i in range(16)])
    # GRPO with a rank: the group's peers get the same rows.
    g = client.get_meta(["x"], 4, part, task_name="t", sampling_config={"dp_rank": 0, "batch_index": 0},
                        sampler={"name": "grpo", "n": 2})
    peer = client.get_meta(["x"], 4, part, task_name="t", sampling_config={"dp_rank": 0, "batch_index": 0},
                           sampler={"name": "grpo", "n": 2})
    assert g.global_indexes == m.global_indexes[:4] == peer.global_indexes
    b = client.get_meta(["x"], 0, part, task_name="t", sampling_config={"dp_rank": 0, "batch_index": 0},
                        token_budget=40)
    assert b.size > 0 and sum(t["total_lengths"] for t in b.custom_meta) <= 40
    with pytest.raises(tq.InvalidError, match="nope"):
        client.get_meta(["x"], 4, part, task_name="t", sampler="nope")
    with pytest.raises(tq.InvalidError, match="token_budget"):
        client.get_meta(["x"], 4, part, task_name="t", token_budget=0)
    client.mark_done(part)
    got = g.size + b.size
    for batch in range(16):
        try:
            f = client.get_meta(["x"], 5, part, task_name="t", sampling_config={"dp_rank": 1, "batch_index": batch},
                                sampler="rank_aware")
        except tq.DoneError:
            break
        got += f.size
    else:
        pytest.fail("no DoneError after every row")
    assert got == 16, "every row once; the last batch short"


def test_interrupted_fetch_gives_its_rows_back(client, part):
    """A fetch whose reply arrives while the caller is interrupted
    (KeyboardInterrupt, a signal handler's exception) took rows the caller
    never received: they go back to the task."""
    client.put({"x": np.arange(4, dtype=np.int64)}, partition_id=part)
    real = tq.wire.Conn._read_header
    armed = [True]

    def interrupted(self):
        h = real(self)  # the reply is here: the controller consumed the rows
        if armed[0] and h[3] == tq.wire.FETCH:
            armed[0] = False
            raise KeyboardInterrupt
        return h
    tq.wire.Conn._read_header = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            client.get_meta(["x"], 4, part, task_name="t")
    finally:
        tq.wire.Conn._read_header = real
    assert not armed[0]
    again = client.get_meta(["x"], 4, part, task_name="t")
    assert again.size == 4, client.get_consumption_status("t", part)



@pytest.mark.parametrize("pages, want, err", [
    ({"": (["a", "b"], "b"), "b": (["c"], "")}, ["a", "b", "c"], None),
    ({"": (["a"], "")}, ["a"], None),
    ({"": (["a", "b"], "b"), "b": (["c"], "b")}, None, "next_after 'b', which does not advance"),
    ({"": (["a", "b"], "b"), "b": (["c"], "a")}, None, "next_after 'a', which does not advance"),
])
def test_list_checkpoints_pages(client, monkeypatch, pages, want, err):
    """list_checkpoints asks page after page until one has no next_after;
    a controller whose next_after does not advance is an error, not part of
    the list passed for all of it."""
    asked = []

    def fake_call(op, req, reply_type, **kw):
        assert op == wire.CHECKPOINTS
        asked.append(req.after)
        names, nxt = pages[req.after]
        return control_pb2.CheckpointsReply(checkpoints=[control_pb2.CheckpointInfo(name=n) for n in names],
                                            next_after=nxt)
    monkeypatch.setattr(client, "_call", fake_call)
    if err:
        with pytest.raises(tq.CorruptError, match=err):
            client.list_checkpoints()
    else:
        assert [c["name"] for c in client.list_checkpoints()] == want
    assert len(asked) == len(pages)


@pytest.mark.parametrize("pages, want, err", [
    ({"": (["a", "b"], "b"), "b": (["c"], "")}, ["a", "b", "c"], None),
    ({"": (["a", "b"], "b"), "b": (["c"], "b")}, None, "next_after 'b', which does not advance"),
    ({"": (["a", "b"], "b"), "b": (["b", "c"], "")}, None, "partition 'b' after 'b', out of order"),
])
def test_all_stats_pages(client, monkeypatch, pages, want, err):
    """all_stats asks STATS_PAGE page after page until one has no
    next_after; one that does not advance is an error, not a short list."""
    asked = []

    def fake_call(op, req, reply_type, **kw):
        assert op == wire.STATS_PAGE
        asked.append(req.after)
        names, nxt = pages[req.after]
        return control_pb2.StatsPageReply(partitions=[control_pb2.PartitionStats(partition=n) for n in names],
                                          next_after=nxt)
    monkeypatch.setattr(client, "_call", fake_call)
    if err:
        with pytest.raises(tq.CorruptError, match=err):
            client.all_stats()
    else:
        assert [p.partition for p in client.all_stats()] == want
    assert len(asked) == len(pages)


def test_all_stats_matches_stats(client, part):
    """all_stats gives each partition as stats does (the real controller:
    STATS_PAGE)."""
    client.put({"x": np.zeros((3, 2), np.float32)}, partition_id=part)
    got = {p.partition: p for p in client.all_stats()}
    assert got[part] == client.stats(part)


def test_async_blocking_fetches_leave_the_executor_to_the_put_they_wait_for(client, part):
    """Blocking async_get_meta calls do not hold the event loop's executor
    while they wait: with as many of them as the executor has threads, an
    async_put in the same loop (whose rows they wait for) still runs.
    Before, each waited on an executor thread, and the put queued behind
    them until their timeout."""
    import asyncio
    import concurrent.futures

    async def go():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=2))
        fetches = [asyncio.ensure_future(client.async_get_meta(["x"], 1, part, task_name=f"t{i}", wait=True,
                                                               timeout=45)) for i in range(2)]
        await asyncio.sleep(0.2)
        await asyncio.wait_for(client.async_put({"x": np.arange(1.0)}, partition_id=part), 20)
        return await asyncio.wait_for(asyncio.gather(*fetches), 30)
    metas = asyncio.run(go())
    assert [m.size for m in metas] == [1, 1]


def test_close_ends_a_blocking_fetch_in_flight(server, part):
    """close() closes the connections calls are in flight on too: a
    blocking fetch waiting on another thread fails with ClosedError rather
    than waiting out its timeout on a closed client. Before, only the idle
    connections were closed, and the fetch waited its full 120 s."""
    c = server.client(transport="tcp")
    out = []

    def fetch():
        try:
            c.get_meta(["x"], 1, part, task_name="t", wait=True, timeout=120)
        except tq.TQError as e:
            out.append(e)
    th = threading.Thread(target=fetch)
    th.start()
    time.sleep(0.3)  # the fetch is waiting at the controller
    c.close()
    th.join(30)
    assert not th.is_alive(), "the fetch still waits after close"
    assert len(out) == 1 and isinstance(out[0], tq.ClosedError), out


@pytest.mark.parametrize("positions", [[True, False, True], np.array([True, False, True]), [0.9, 2], ["1"]])
def test_select_samples_refuses_positions_that_are_not_integers(positions):
    # Before: each position went through int(), so a boolean mask selected
    # rows 1, 0, 1 (not 0 and 2), 0.9 row 0 and "1" row 1, silently: a put
    # with that meta writes the batch's data into other rows.
    m = tq.BatchMeta([10, 11, 12], ["p"] * 3)
    with pytest.raises(tq.InvalidError, match="position"):
        m.select_samples(positions)
    assert m.select_samples(np.flatnonzero(np.array([True, False, True]))).global_indexes == [10, 12]
    assert m.select_samples([np.int64(2), -1]).global_indexes == [12, 12]


def test_batchmeta_index_takes_numpy_integers_and_position_lists():
    # Before: __getitem__ took only int and slice, so m[np.int64(2)] (a
    # position from np.flatnonzero or argsort) and m[[0, 2]] were TypeError.
    m = tq.BatchMeta([10, 11, 12], ["p"] * 3)
    assert m[np.int64(2)].global_indexes == [12]
    assert m[np.int32(-1)].global_indexes == [12]
    assert m[[2, 0]].global_indexes == [12, 10]
    assert m[(0, 0)].global_indexes == [10, 10]
    assert m[np.array([1, -1])].global_indexes == [11, 12]
    assert m[np.flatnonzero(np.array([True, False, True]))].global_indexes == [10, 12]
    assert m[range(1, 3)].global_indexes == [11, 12]
    assert m[[]].size == 0
    for bad in ([True, False, True], np.array([True, False, True]), True, np.bool_(False), [0.9, 2]):
        with pytest.raises(tq.InvalidError, match="not an integer"):
            m[bad]
    with pytest.raises(tq.InvalidError, match="out of range"):
        m[np.int64(3)]
    for bad in (1.0, "1", None, {0: 1}):
        with pytest.raises(TypeError, match="BatchMeta indices"):
            m[bad]


def test_select_fields_takes_one_name_and_refuses_unknown_ones():
    # Before: a str was iterated (select_fields("resp") kept fields "r",
    # "e", "s", "p") and unknown names were dropped, so both gave a meta
    # with no fields, whose get_data is {}; the Go SelectFields refuses them.
    m = tq.BatchMeta([10, 11], ["p"] * 2, field_schema={"resp": {"dtype": "int64", "kind": "dense", "shape": ()},
                                                         "x": {"dtype": "int64", "kind": "dense", "shape": ()}})
    m.partition_gen = 7
    one = m.select_fields("resp")
    assert one.field_names == ["resp"] and one.partition_gen == 7
    with pytest.raises(tq.NotFoundError) as e:
        m.select_fields(["resp", "respons", "y"])
    assert e.value.fields == ["respons", "y"]


def test_error_messages_name_at_most_16_items_and_how_many_more():
    """A message named every key, field or field name of a request (an
    error's "(fields [...])", select_fields' unknown names and the meta's):
    a request of 100k names gave a message of megabytes. Now the first 16
    and "and N more", as the Go server's messages; the attributes hold
    every one."""
    names = [f"f{i:05}" for i in range(100_000)]
    e = tq.TQError("bad", op="put", keys=names, fields=names)
    assert len(str(e)) < 1000 and str(e).count("and 99984 more") == 2, str(e)[:2000]
    assert "'f00015'" in str(e) and "'f00016'" not in str(e)
    assert e.keys == names and e.fields == names
    m = tq.BatchMeta([10], ["p"], field_schema={n: {"dtype": "int64", "kind": "dense", "shape": ()} for n in names})
    with pytest.raises(tq.NotFoundError) as ei:
        m.select_fields(["x" + n for n in names])
    assert len(str(ei.value)) < 2000 and str(ei.value).count("and 99984 more") == 3, str(ei.value)[:2000]
    assert len(ei.value.fields) == len(names)
    short = tq.TQError("bad", fields=["a", "b"])  # a short list reads as its repr
    assert str(short) == "bad (fields ['a', 'b'])"


def test_select_fields_refuses_a_field_named_twice():
    # Before: select_fields(["resp", "x", "resp"]) gave a meta of resp and
    # x, the repeat dropped; the Go SelectFields and get_data's fields
    # refuse it.
    m = tq.BatchMeta([10, 11], ["p"] * 2, field_schema={"resp": {"dtype": "int64", "kind": "dense", "shape": ()},
                                                         "x": {"dtype": "int64", "kind": "dense", "shape": ()}})
    with pytest.raises(tq.InvalidError, match="field 'resp' appears twice") as e:
        m.select_fields(["resp", "x", "resp"])
    assert e.value.fields == ["resp"]


@pytest.mark.parametrize("kw, what", [
    ({"keys": ["a"]}, "1 keys"),
    ({"production_status": [1]}, "1 production statuses"),
    ({"custom_meta": [{"x": 1}]}, "1 custom_meta dicts"),
    ({"field_schema": {"resp": {"dtype": "int64", "kind": "ragged", "shape": (), "shapes": [(1,)]}}},
     "field 'resp' has 1 ragged row shapes"),
    ({"global_indexes": [10, 1.5]}, r"global index 1\.5 \(row 1\) is not an integer"),
    ({"global_indexes": [10, "11"]}, r"global index '11' \(row 1\) is not an integer"),
    ({"partition_ids": ["p", 7]}, r"partition id 7 \(row 1\) is a int, not a str"),
    ({"custom_meta": [{}, "ab"]}, r"custom_meta of row 1 is a str, not a dict"),
])
def test_batchmeta_built_by_hand_with_per_row_lists_that_do_not_fit_is_invalid(kw, what):
    # Before: only partition_ids' length was checked. keys, production
    # statuses, custom_meta and ragged shapes of another length were kept:
    # production_status [1] for 2 rows made is_ready True, custom_meta of
    # one dict for 2 rows tagged row 0 only on put (zip stopped short),
    # select_samples failed with an IndexError. A global index of 1.5 was
    # row 1 (int()), "11" row 11, a partition id 7 a TypeError from
    # protobuf at put, custom_meta "ab" a bare ValueError from dict().
    args = {"global_indexes": [10, 11], "partition_ids": ["p", "p"], **kw}
    with pytest.raises(tq.InvalidError, match=what):
        tq.BatchMeta(**args)
    # The forms a meta is legitimately built from still are.
    m = tq.BatchMeta(np.arange(10, 12), ("p", "p"), keys=["a", None], production_status=np.ones(2),
                     custom_meta=[{"x": 1}, {}],
                     field_schema={"resp": {"dtype": "int64", "kind": "ragged", "shape": (), "shapes": [(1,), (2,)]}})
    assert m.global_indexes == [10, 11] and type(m.global_indexes[0]) is int and m.is_ready
    assert m.select_samples([1, 0]).keys == [None, "a"]


def test_update_custom_meta_refuses_a_row_that_is_not_tags_and_changes_nothing():
    # Before: update_custom_meta([{"a": 1}, 5]) updated row 0 and then
    # raised a bare TypeError from dict.update, naming no row.
    m = tq.BatchMeta([10, 11], ["p", "p"], custom_meta=[{"x": 1}, {}])
    with pytest.raises(tq.InvalidError, match="tags of row 1 are a int, not a dict"):
        m.update_custom_meta([{"a": 1}, 5])
    assert m.custom_meta == [{"x": 1}, {}]
    m.update_custom_meta([None, {"y": 2}])
    assert m.custom_meta == [{"x": 1}, {"y": 2}]


@pytest.mark.parametrize("args, what", [
    (("int64", "dense", (2,), None, None, 2, bytes(24)), r"2 dense rows of int64\[2\] take 32 bytes, not 24"),
    (("int64", "dense", (2,), None, None, 2, bytes(40)), r"take 32 bytes, not 40"),
    (("int32", "ragged", (), [(1,), (2,)], None, 2, bytes(8)), r"2 ragged rows of int32: 2 shapes of 12 bytes over 8"),
    (("int32", "ragged", (), [(1,)], None, 2, bytes(4)), r"2 ragged rows of int32: 1 shapes"),
    (("bytes", "opaque", (), None, [3, 4], 2, b"abcde"), r"2 opaque rows: 2 row lengths of 7 bytes over 5 bytes"),
    (("bytes", "opaque", (), None, [3], 2, b"abc"), r"2 opaque rows: 1 row lengths"),
])
def test_from_bytes_refuses_a_buffer_that_is_not_what_its_rows_take(args, what):
    # Before: a short opaque buffer gave short rows silently, a long dense
    # or ragged one was read for its prefix, a short one raised numpy's
    # bare ValueError: a reply that disagrees with its metadata.
    from tq import columns
    with pytest.raises(tq.CorruptError, match=what):
        columns.from_bytes(*args)
    good = columns.from_bytes("int64", "dense", (2,), None, None, 2, np.arange(4, dtype="<i8").tobytes())
    assert good.tolist() == [[0, 1], [2, 3]]


def test_failed_repeatable_call_keeps_nothing_of_its_caller(client, part):
    """A call safe to repeat that fails (here with NotFoundError) leaves no
    reference cycle: what its caller's frame held is freed as the caller
    returns, not only when the cyclic collector runs. The error, re-raised
    by Client._wait_to_repeat, held that frame, which held the error, and
    its traceback every frame it came through: a DataLoader's iterator so
    kept went to the collector, which stopped its workers' queues first."""
    import gc
    import weakref

    class Held:
        pass

    def caller(held):
        try:
            client.get_consumption_status("train", part + "-missing")
        except tq.NotFoundError:
            return True
        return False

    gc.disable()
    try:
        held = Held()
        ref = weakref.ref(held)
        assert caller(held), "get_consumption_status of a missing partition did not raise NotFoundError"
        del held
        assert ref() is None, "the failed call's error kept its caller's frame alive"
    finally:
        gc.enable()


def _freed_after(call):
    """Whether the object call(held) is given is freed once call returns,
    with the cyclic collector off: no reference cycle kept it. (A thread
    pool's worker may drop its work item a moment after the call saw it
    end: up to 5 s are allowed for that.)"""
    import gc
    import weakref

    class Held:
        pass

    gc.disable()
    try:
        held = Held()
        ref = weakref.ref(held)
        call(held)
        del held
        deadline = time.monotonic() + 5
        while ref() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        return ref() is None
    finally:
        gc.enable()


def test_view_release_error_keeps_nothing_of_the_view():
    """A View whose lease fails to release raises the error without a
    reference cycle: the view, and the arrays it holds, are freed as the
    caller drops them. The error, raised from release's frame, held that
    frame (its traceback), which held the error and the view."""
    class FailingLease:
        def release(self):
            raise tq.UnavailableError("the unit went away")

    def call(held):
        v = tq.client.View({"x": held}, [FailingLease()], partition="p", keys=["k"])
        with pytest.raises(tq.UnavailableError):
            v.release()

    assert _freed_after(call), "a failed release kept its view alive"


def test_failed_stripe_keeps_nothing_of_its_caller():
    """A striped call (unit._parallel) with a group that fails raises its
    error without a reference cycle: the groups, their results and what the
    caller's frame held are freed as it returns. The error, raised from
    _parallel's frame, held the frame, which held the error (and the
    stripes' results)."""
    def fn(g):
        if g[0] == 1:
            raise tq.UnavailableError("stripe 1 failed")
        return g

    def call(held):
        with pytest.raises(tq.UnavailableError):
            tq.unit._parallel(fn, [[0, held], [1, held], [2, held]])

    assert _freed_after(call), "a failed stripe kept its caller's objects alive"


def test_dropped_client_closes_its_connections_at_once(server, transport, part):
    """A Client dropped without close() (a StreamingDataset's own client,
    one per partition) is freed as its last reference goes, and with it
    its connections and the units' mappings: no reference cycle keeps them
    until the cyclic collector runs. Before, the client held its controller
    pool, whose dial was the client's bound method, and each unit held its
    pool, whose dial and before_take held the unit: a dropped client kept
    its sockets (5 fds over shm, 2 over tcp) and its memfd mappings open."""
    import gc
    import weakref

    def fds():
        return len(os.listdir("/proc/self/fd"))

    gc.collect()
    gc.disable()
    try:
        before = fds()
        c = server.client(transport=transport)
        c.kv_batch_put(["a", "b"], part, {"x": np.ones((2, 3), np.float32)})
        assert c.kv_batch_get(["a"], part)["x"].tolist() == [[1.0, 1.0, 1.0]]
        with c.kv_batch_get(["b"], part, copy=False) as v:
            assert v["x"].tolist() == [[1.0, 1.0, 1.0]]
        del v
        units = [weakref.ref(u) for u in c._units.values()]
        assert units, "the client dialed no unit"
        ref = weakref.ref(c)
        del c
        assert ref() is None, "a dropped client was kept alive by a reference cycle"
        assert all(u() is None for u in units), "a dropped client's unit was kept alive by a reference cycle"
        assert fds() == before, "a dropped client left its connections open"
    finally:
        gc.enable()


def test_churn_leaves_nothing_behind(server, transport):
    """Rounds of put, get, views released and dropped, kv_put, kv_get,
    listings, a StreamingDataset's iteration and clears, with errors on the
    way (a missing partition, a cleared one, a refused put, a closed
    client), leave the process as the first round left it: its fds,
    threads and shared-memory mappings, the client's unit table, the
    count of tq's objects, and nothing for the cyclic collector (run off
    through the rounds: what it then finds is a reference cycle made on
    the way). Before, each view over shared memory made a ctypes array
    type (one per distinct size), freed only by the collector."""
    import collections
    import gc
    import uuid

    c = server.client(transport=transport)

    def fail(call, err=tq.TQError):
        with pytest.raises(err):
            call()

    def round_(i):
        part = "churn-" + uuid.uuid4().hex[:8]
        n = 3 + i  # a size of its own each round
        x = np.arange(4 * n, dtype=np.float32).reshape(n, 4)
        keys = [f"k{j}" for j in range(n)]
        c.kv_batch_put(keys, part, {"x": x})
        c.kv_put("solo", part, {"x": x[:1]})
        assert c.kv_batch_get(keys, part)["x"].tolist() == x.tolist()
        with c.kv_batch_get(keys[:2], part, copy=False) as v:
            assert v["x"].tolist() == x[:2].tolist()
        v = c.kv_batch_get(keys[1:], part, copy=False)
        assert v["x"].tolist() == x[1:].tolist()
        del v  # dropped, not released
        assert set(c.kv_list(part)[part]) == set(keys) | {"solo"}
        assert part in c.get_partition_list()
        m = c.put({"y": np.arange(2 * n, dtype=np.int64).reshape(n, 2)}, partition_id=part)
        assert c.get_data(m)["y"].shape == (n, 2)
        c.get_data(m, copy=False).release()
        v = c.get_data(m, copy=False)
        del v
        got = []
        for data, meta in tq.StreamIterator(n, 2, ["y"], part, "train", client=c):
            got += meta.global_indexes
            if len(got) == n:
                break
        assert sorted(got) == sorted(m.global_indexes)
        fail(lambda: c.kv_batch_get(["k0"], part + "-missing"), tq.NotFoundError)
        fail(lambda: c.get_consumption_status("train", part + "-missing"), tq.NotFoundError)
        fail(lambda: c.kv_put("k0", part, {"x": np.ones((1, 4), np.int32)}))  # another dtype: refused
        c.clear_partition(part)
        fail(lambda: c.get_consumption_status("train", part))
        fail(lambda: c.kv_batch_get(["k0"], part))
        closed = server.client(transport=transport)
        closed.close()
        fail(lambda: closed.kv_list(part), tq.ClosedError)

    def state():
        maps = 0
        with open("/proc/self/maps") as f:
            for line in f:
                maps += "memfd" in line
        objs = collections.Counter(type(o).__qualname__ for o in gc.get_objects()
                                   if (type(o).__module__ or "").startswith("tq."))
        # A round may map a unit's segment for the first time (its first
        # rows there): each segment is two mappings (read-write and
        # read-only), each with an fd of its own (Python's mmap dups it).
        # Beyond them, nothing more may be held.
        mapped = 2 * sum(len(u._segs) for u in c._units.values())
        # A client's dead-unit watcher (Client._watch_unit) runs while
        # calls to units are in flight and ends 5 s after the last: there
        # or not by timing alone, so counted apart: at most one of this
        # client's (its thread's first argument is a weak reference to
        # its client), and none of other clients' (earlier tests', still
        # ending) in the count of threads.
        threads = threading.enumerate()
        watchers = [t for t in threads if t.name == "tq-dead-units"]
        mine = sum(t._args[0]() is c for t in watchers)
        return {"fds beyond the mappings": len(os.listdir("/proc/self/fd")) - mapped,
                "memfd maps beyond the units' segments": maps - mapped,
                "threads": len(threads) - len(watchers), "at most one dead-unit watcher": mine <= 1,
                "units": len(c._units), "tq objects": dict(objs)}

    try:
        # The warm-up: the units dialed, their segments mapped, the lease
        # sweeper started, and two idle connections to each unit (a
        # round's rows may all go to one; a call that maps a new segment
        # asks the unit for its live ones on a second).
        round_(0)
        for u in c._units.values():
            a, b = u.pool.take(), u.pool.take()
            u.pool.give(a)
            u.pool.give(b)
        gc.collect()
        before = state()
        gc.disable()
        try:
            for i in range(1, 6):
                round_(i)
            found = gc.collect()
        finally:
            gc.enable()
        assert found == 0, f"the rounds left {found} objects that only the cyclic collector frees"
        assert state() == before
    finally:
        c.close()
