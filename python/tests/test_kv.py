"""The KV API against a real tq serve, over tcp and shm."""

import asyncio
import os
import signal
import threading
import time
import zlib

import numpy as np
import pytest

import tq
import xlang


def test_dense_ragged_opaque_round_trip(client, part):
    keys = ["a", "b", "c"]
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    r = [np.arange(2, dtype=np.int64), np.arange(0, dtype=np.int64), np.arange(5, dtype=np.int64)]
    s = ["hi", b"\x00yo", ""]
    m = client.kv_batch_put(keys, part, {"x": x, "r": r, "s": s}, [{"n": 1}, {"n": 2}, {}])
    assert m.keys == keys and m.partition_id == part and m.fields == ["r", "s", "x"]
    assert m.tags == [{"n": 1}, {"n": 2}, {}]
    got = client.kv_batch_get(["c", "a"], part)
    np.testing.assert_array_equal(got["x"], x[[2, 0]])
    assert [a.tolist() for a in got["r"]] == [[0, 1, 2, 3, 4], [0, 1]]
    assert got["s"] == [b"", b"hi"]
    got = client.kv_batch_get("b", part, select_fields="x")
    assert list(got) == ["x"]
    np.testing.assert_array_equal(got["x"], x[1:2])


def test_values_offsets_form(client, part):
    vals = np.arange(10, dtype=np.int32)
    offs = [0, 3, 3, 10]
    client.kv_batch_put(["a", "b", "c"], part, {"seq": (vals, offs)})
    got = client.kv_batch_get(["a", "b", "c"], part)["seq"]
    assert [g.tolist() for g in got] == [[0, 1, 2], [], list(range(3, 10))]


@pytest.mark.parametrize("size", [1, 100, 100_000])
def test_sizes(client, part, size):
    """Inline (KV_PUT/KV_GET) and through the units."""
    x = np.random.default_rng(size).random((4, size))
    client.kv_batch_put(["k0", "k1", "k2", "k3"], part, {"x": x})
    got = client.kv_batch_get(["k3", "k0"], part)
    assert got["x"].tobytes() == x[[3, 0]].tobytes()


def test_every_dtype_bit_exact(client, part):
    want = xlang.batch()
    client.kv_batch_put(xlang.keys(3), part, want)
    xlang.assert_same(client.kv_batch_get(xlang.keys(3), part), want)


def test_every_dtype_bit_exact_large(client, part):
    """The same dtypes through the units (more than the inline limit)."""
    rng = np.random.default_rng(1)
    want = {}
    for dt, d in tq.columns.DTYPES.items():
        raw = rng.integers(0, 256, size=(64, 1100 * d.itemsize), dtype=np.uint8)
        if dt == "bool":
            raw &= 1
        want["f_" + dt] = raw.view(d).reshape(64, -1)
    keys = [f"k{i}" for i in range(64)]
    client.kv_batch_put(keys, part, want)
    xlang.assert_same(client.kv_batch_get(keys, part), want)


def test_bfloat16_marks(client, part):
    bits = np.array([[0x3F80, 0x7FC1], [0xFF80, 0x8000]], dtype=np.uint16)
    client.kv_batch_put(["a", "b"], part, {"w": bits.view(tq.bfloat16), "t": tq.Typed(bits, "bfloat16")})
    got = client.kv_batch_get(["a", "b"], part)
    for f in ("w", "t"):
        assert got[f].dtype.metadata == {"tq_dtype": "bfloat16"}
        assert got[f].view(np.uint16).tolist() == bits.tolist()
    # Plain uint16 is another dtype: a mismatch, naming the field.
    with pytest.raises(tq.DTypeMismatchError):
        client.kv_batch_put(["c"], part, {"w": bits[:1]})


def test_typed_and_as_dtype_keep_big_endian_values(client, part):
    """A big-endian array given a TQ dtype (tq.Typed, tq.as_dtype) keeps
    its values: it is converted to little-endian, not its memory
    reinterpreted (0x3F80, bfloat16 1.0, stored as 0x803F)."""
    bits = np.array([[0x3F80, 0x7FC1]], dtype=">u2")
    assert tq.as_dtype(bits, "bfloat16").view(np.uint16).tolist() == bits.tolist()
    assert tq.as_dtype(bits.astype(">f2"), "float16").tolist() == bits.astype(">f2").tolist()
    client.kv_batch_put(["a"], part, {"t": tq.Typed(bits, "bfloat16"), "u": tq.Typed(bits, "uint16")})
    got = client.kv_batch_get(["a"], part)
    assert got["t"].dtype.metadata == {"tq_dtype": "bfloat16"}
    assert got["t"].view(np.uint16).tolist() == bits.tolist() and got["u"].tolist() == bits.tolist()


def test_kv_put_one_key(client, part):
    m = client.kv_put("a", part, {"x": np.arange(3, dtype=np.int16), "s": "text"}, {"state": "new"})
    assert m.tags == [{"state": "new"}]
    got = client.kv_batch_get("a", part)
    assert got["x"].tolist() == [[0, 1, 2]] and got["s"] == [b"text"]
    m = client.kv_put("a", part, tag={"score": 1.5})
    assert m.tags == [{"state": "new", "score": 1.5}]


def test_kv_put_takes_typed(client, part):
    """kv_put adds the batch dimension to a tq.Typed value (its array),
    keeping its TQ dtype, as kv_batch_put takes it."""
    client.kv_put("k", part, {"t": tq.Typed(np.array([0x3F80, 0x7FC1], np.uint16), "bfloat16"),
                              "s": tq.Typed(np.array(0x3C00, np.uint16), "float16")})
    got = client.kv_batch_get(["k"], part)
    assert got["t"].dtype.metadata == {"tq_dtype": "bfloat16"}
    assert got["t"].view(np.uint16).tolist() == [[0x3F80, 0x7FC1]] and got["s"].tolist() == [1.0]


def test_list_and_clear(client, part):
    client.kv_batch_put(["a", "b"], part, {"x": np.zeros((2, 1))}, [{"i": 1}, {"i": 2}])
    client.kv_put("t", part, tag={"only": True})
    assert client.kv_list(part) == {part: {"a": {"i": 1}, "b": {"i": 2}, "t": {"only": True}}}
    assert part in client.kv_list()
    assert client.kv_list("no-such-" + part) == {}
    client.kv_clear(["a", "zzz"], part)
    assert set(client.kv_list(part)[part]) == {"b", "t"}
    client.kv_clear(["zzz"], "no-such-" + part)  # idempotent
    with pytest.raises(tq.NotFoundError):
        client.kv_batch_get(["a"], part)


def test_errors_name_what_was_wrong(client, part):
    client.kv_batch_put(["a", "b"], part, {"x": np.zeros((2, 2), np.float32)})
    with pytest.raises(tq.NotFoundError) as e:
        client.kv_batch_get(["a", "nope"], part)
    assert "nope" in str(e.value) and e.value.partition == part and e.value.code == 2
    assert isinstance(e.value, KeyError)
    # The unknown keys as data too (the server's Error.keys), whichever way
    # the get goes: KV_GET, RESOLVE_KEYS (views), one field of one key.
    assert e.value.keys == ["nope"]
    assert str(e.value).count("nope") == 1, f"named twice: {e.value}"
    for want, get in ((["nope", "nope2"], lambda: client.kv_batch_get(["a", "nope", "b", "nope2"], part, copy=False)),
                      (["nope"], lambda: client.kv_batch_get(["nope"], part, select_fields=["x"])),
                      (["nope"], lambda: client.kv_batch_get(["nope", "a"], part,
                                                             into={"x": np.zeros((2, 2), np.float32)}))):
        with pytest.raises(tq.NotFoundError) as e:
            get()
        assert e.value.keys == want
    with pytest.raises(tq.NotFoundError):
        client.kv_batch_get(["a"], part, select_fields=["nofield"])
    with pytest.raises(tq.DTypeMismatchError) as e:
        client.kv_batch_put(["c"], part, {"x": np.zeros((1, 2), np.float64)})
    assert "x" in str(e.value)
    # A field that some keys lack is not ready for them: the keys and field are named.
    client.kv_batch_put(["a"], part, {"y": np.ones((1,), np.int8)})
    with pytest.raises(tq.NotReadyError) as e:
        client.kv_batch_get(["a", "b"], part, select_fields=["y"])
    assert e.value.keys == ["b"] and e.value.fields == ["y"]
    with pytest.raises(tq.InvalidError):
        client.kv_batch_put(["a", "a"], part, {"x": np.zeros((2, 2), np.float32)})
    with pytest.raises(tq.InvalidError):
        client.kv_batch_put(["a", "b"], part, {"x": np.zeros((3, 2), np.float32)})
    with pytest.raises(tq.InvalidError):
        client.kv_batch_put([], part, {"x": np.zeros((0, 2), np.float32)})
    with pytest.raises(tq.InvalidError):
        client.kv_batch_put(["a"], part)
    with pytest.raises(tq.InvalidError, match="key 1 of 1 must be a str, not int"):
        client.kv_batch_put([1], part, tags=[{}])


def test_without_select_fields_the_common_fields(client, part):
    client.kv_batch_put(["a", "b"], part, {"x": np.zeros((2, 1))})
    client.kv_batch_put(["a"], part, {"y": np.zeros((1, 1))})
    assert list(client.kv_batch_get(["a", "b"], part)) == ["x"]
    assert sorted(client.kv_batch_get(["a"], part)) == ["x", "y"]


def test_view_and_copy(client, part, transport):
    x = np.random.default_rng(0).random((64, 4096))  # through the units
    keys = [f"k{i}" for i in range(64)]
    client.kv_batch_put(keys, part, {"x": x, "r": [x[i, :i] for i in range(64)]})
    with client.kv_batch_get(keys, part, copy=False) as v:
        assert np.array_equal(v["x"], x)
        assert [a.tolist() for a in v["r"]] == [x[i, :i].tolist() for i in range(64)]
        if transport == "shm":
            assert not v["x"].flags.writeable and not v["x"].flags.owndata
            with pytest.raises(ValueError):
                v["x"][0, 0] = 1
    assert v.released
    owned = client.kv_batch_get(keys, part)
    owned["x"][0, 0] = 7.0  # owned and writable
    assert client.kv_batch_get(["k0"], part)["x"][0, 0] == x[0, 0]


def test_module_api_and_async(server, part, monkeypatch):
    monkeypatch.setenv("TQ_ADDRESS", server.address)
    monkeypatch.setenv("TQ_DATA_DIR", server.data_dir)
    tq.close()
    with pytest.raises(tq.ClosedError):
        tq.get_client()
    c = tq.init()
    try:
        assert tq.init() is c and tq.get_client() is c
        tq.kv_put("a", part, {"x": np.arange(2.0)}, {"t": 1})
        m = tq.kv_batch_put(["b"], part, {"x": np.ones((1, 2))}, [{"t": 2}])
        assert tq.kv_batch_get_by_meta(m)["x"].tolist() == [[1.0, 1.0]]

        async def go():
            await tq.async_kv_batch_put(["c", "d"], part, {"x": np.zeros((2, 2))})
            got = await asyncio.gather(tq.async_kv_batch_get(["a"], part), tq.async_kv_batch_get(["c", "d"], part))
            lst = await tq.async_kv_list(part)
            await tq.async_kv_clear(["a"], part)
            one = await tq.async_kv_put("e", part, tag={"z": 0})
            return got, lst, one
        got, lst, one = asyncio.run(go())
        assert got[0]["x"].tolist() == [[0.0, 1.0]] and got[1]["x"].shape == (2, 2)
        assert set(lst[part]) == {"a", "b", "c", "d"}
        assert one.tags == [{"z": 0}]
        assert "a" not in tq.kv_list(part)[part]
    finally:
        tq.close()


def test_module_checkpoints(server, part, monkeypatch):
    """The module has the three checkpoint calls the README names:
    save_checkpoint and load_checkpoint, and list_checkpoints to see
    what a save kept (it was only on the Client)."""
    monkeypatch.setenv("TQ_ADDRESS", server.address)
    monkeypatch.setenv("TQ_DATA_DIR", server.data_dir)
    tq.close()
    tq.init()
    try:
        name = "ck-mod-" + part
        tq.save_checkpoint(name, metadata={"global_steps": 7})
        listed = {c["name"]: c for c in tq.list_checkpoints()}
        assert listed[name]["metadata"] == {"global_steps": 7}
        assert tq.load_checkpoint(name) == {"global_steps": 7}
    finally:
        tq.close()
    assert "list_checkpoints" in tq.__all__


def test_metrics_endpoints(server, monkeypatch):
    """tq.get_metrics_endpoint() (TransferQueue's, which verl registers
    with its tracker) gives the controller's Prometheus endpoint as
    "host:port", None without one or before init; the client lists every
    endpoint as URLs (CLUSTER_INFO), as the Go client's MetricsEndpoints."""
    import conftest
    tq.close()
    assert tq.get_metrics_endpoint() is None
    monkeypatch.setenv("TQ_ADDRESS", server.address)
    monkeypatch.setenv("TQ_DATA_DIR", server.data_dir)
    tq.init()
    try:
        assert tq.get_metrics_endpoint() is None and tq.get_client().metrics_endpoints() == []
    finally:
        tq.close()
    port = conftest._free_port()
    with_metrics = conftest.Server(extra=["--metrics", f"127.0.0.1:{port}"])
    try:
        monkeypatch.setenv("TQ_ADDRESS", with_metrics.address)
        monkeypatch.setenv("TQ_DATA_DIR", with_metrics.data_dir)
        tq.init()
        assert tq.get_client().metrics_endpoints() == [f"http://127.0.0.1:{port}/metrics"]
        assert tq.get_metrics_endpoint() == f"127.0.0.1:{port}"
    finally:
        tq.close()
        with_metrics.stop()


def test_concurrent_threads(client, part):
    from concurrent.futures import ThreadPoolExecutor

    def work(i):
        x = np.full((2, 1000), i, dtype=np.int32)
        client.kv_batch_put([f"a{i}", f"b{i}"], part, {"x": x})
        return client.kv_batch_get([f"b{i}"], part)["x"][0, 0]
    with ThreadPoolExecutor(8) as ex:
        assert list(ex.map(work, range(32))) == list(range(32))


def test_wrong_token(server):
    with pytest.raises(tq.UnauthenticatedError):
        server.client(token="not-the-token")


def test_unreachable():
    with pytest.raises(tq.UnavailableError):
        tq.Client("tcp://127.0.0.1:1", token="x")


def test_get_into_reused_arrays(client, part):
    x = np.random.default_rng(2).random((32, 3000)).astype(np.float32)
    keys = [f"k{i}" for i in range(32)]
    client.kv_batch_put(keys[:16], part, {"x": x[:16], "y": np.arange(16)})
    client.kv_batch_put(keys[16:], part, {"x": x[16:], "y": np.arange(16, 32)})  # maybe another unit
    out = {"x": np.zeros((32, 3000), np.float32)}
    assert client.kv_batch_get(keys, part, into=out) is out
    assert out["x"].tobytes() == x.tobytes()
    with pytest.raises(tq.InvalidError):
        client.kv_batch_get(keys, part, into={"x": np.zeros((32, 3000), np.float64)})
    m = client.kv_retrieve_meta(keys[::-1], part)
    client.get_data(m, into=out)
    assert out["x"].tobytes() == x[::-1].tobytes()


def test_get_into_refuses_a_big_endian_array(client, part):
    """into= takes the cells' bytes as they are, little-endian: a
    big-endian array of the field's dtype took them too, and held the
    values byte-swapped (1.5 read as 6.9e-41). It is refused, naming the
    field, and the array is left as it was."""
    x = np.array([[1.5, 2.5], [3.5, 4.5]], np.float32)
    client.kv_batch_put(["a", "b"], part, {"x": x})
    out = {"x": np.full((2, 2), 9, ">f4")}
    with pytest.raises(tq.InvalidError) as ei:
        client.kv_batch_get(["a", "b"], part, into=out)
    assert ei.value.fields == ["x"] and "little-endian" in str(ei.value)
    with pytest.raises(tq.InvalidError):
        client.get_data(client.kv_retrieve_meta(["a", "b"], part), into=out)
    assert out["x"].tolist() == [[9, 9], [9, 9]]
    ok = {"x": np.zeros((2, 2), "<f4")}
    assert client.kv_batch_get(["a", "b"], part, into=ok)["x"].tolist() == x.tolist()


def test_put_of_a_tensor_with_no_data_names_the_field(client, part):
    """A tensor whose bytes cannot be brought to the host (a meta tensor,
    as a model initialised on torch's "meta" device holds) raised torch's
    bare NotImplementedError, naming no field. It is an InvalidError
    naming the field and the device, and nothing of the put is stored."""
    torch = pytest.importorskip("torch")
    client.kv_batch_put(["a"], part, {"keep": np.zeros((1, 2), np.float32)})
    for put in (lambda: client.kv_batch_put(["a", "b"], part, {"ok": np.ones((2, 2), np.float32),
                                                               "w": torch.empty(2, 3, device="meta")}),
                lambda: client.kv_put("a", part, {"ok": np.ones(2, np.float32), "w": torch.empty(3, device="meta")})):
        with pytest.raises(tq.InvalidError) as ei:
            put()
        assert ei.value.fields == ["w"] and "meta" in str(ei.value)
    assert client.kv_batch_get(["a"], part)["keep"].tolist() == [[0.0, 0.0]]
    assert set(client.kv_batch_get(["a"], part)) == {"keep"} and list(client.kv_list(part)[part]) == ["a"]


def test_get_to_cuda_without_a_cuda_device_is_not_supported(client, part, monkeypatch):
    """device="cuda" where torch sees no CUDA device failed deep in torch
    (RuntimeError "Pinned memory requires CUDA" for a dense field,
    AssertionError "Torch not compiled with CUDA enabled" for a ragged
    one), after the controller lookup. It is a NotSupportedError naming
    the device and the op, before any read."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    client.kv_batch_put(["a", "b"], part, {"x": np.ones((2, 3), np.float32),
                                           "r": [np.arange(2, dtype=np.int64), np.arange(1, dtype=np.int64)]})
    meta = client.kv_retrieve_meta(["a", "b"], part)
    for sel in (["x"], ["r"]):
        for get in (lambda: client.kv_batch_get(["a", "b"], part, select_fields=sel, device="cuda:0"),
                    lambda: client.get_data(meta, fields=sel, device="cuda:0")):
            with pytest.raises(tq.NotSupportedError) as ei:
                get()
            assert "'cuda:0'" in str(ei.value) and ei.value.op in ("kv_batch_get", "get_data")
    got = client.kv_batch_get(["a", "b"], part, device="cpu")
    assert got["x"].tolist() == [[1.0] * 3] * 2 and [r.tolist() for r in got["r"]] == [[0, 1], [0]]


@pytest.mark.parametrize("how", ["kv_batch_get", "get_data"])
def test_cancelled_async_get_into_returns_once_nothing_writes_into_the_arrays(client, part, monkeypatch, how):
    """A cancelled async get into the caller's arrays raised CancelledError
    at once while its worker thread went on reading into them: a caller
    that reused the arrays after the cancellation had them overwritten
    under it. Now the cancellation returns only once the read has ended.
    The read is held at its start until the test lets it go: a call that
    ends before then left its read running."""
    keys = [f"k{i}" for i in range(4)]
    client.kv_batch_put(keys, part, {"x": np.full((4, 5000), 2.0)})
    into = {"x": np.zeros((4, 5000))}
    started, go = threading.Event(), threading.Event()
    read_into = tq.Client._read_into

    def held(self, *a, **kw):
        started.set()
        go.wait()
        return read_into(self, *a, **kw)
    monkeypatch.setattr(tq.Client, "_read_into", held)
    if how == "kv_batch_get":
        call = lambda: client.async_kv_batch_get(keys, part, into=into)  # noqa: E731
    else:
        meta = client.kv_retrieve_meta(keys, part)
        call = lambda: client.async_get_data(meta, into=into)  # noqa: E731

    async def main():
        t = asyncio.create_task(call())
        await asyncio.to_thread(started.wait)
        t.cancel()
        at_end = []
        t.add_done_callback(lambda _: at_end.append(into["x"].copy()))
        try:
            # Bounds how long an early end may take to show; a right
            # implementation cannot end here, whatever the timing.
            ended, _ = await asyncio.wait({t}, timeout=0.5)
        finally:
            go.set()
        with pytest.raises(asyncio.CancelledError):
            await t
        return ended, at_end[0]
    ended, at_end = asyncio.run(main())
    assert not ended, "the cancelled get returned while its read was still to write into the arrays"
    assert (at_end == 2.0).all()


@pytest.mark.parametrize("how", ["kv_batch_get", "get_data"])
def test_cancelled_async_get_into_reports_the_reads_error(client, part, monkeypatch, how):
    """A cancelled async get into the caller's arrays waits for its read
    to end, then raises CancelledError; a read that failed meanwhile (a
    unit lost, a connection broken) had its error retrieved and dropped,
    leaving the caller's arrays half written with no word of it anywhere.
    The error now goes to the event loop's exception handler (logged by
    asyncio's default one), as asyncio reports an error nobody awaits."""
    keys = [f"k{i}" for i in range(4)]
    client.kv_batch_put(keys, part, {"x": np.full((4, 5000), 2.0)})
    into = {"x": np.zeros((4, 5000))}
    started, go = threading.Event(), threading.Event()

    def failing(self, *a, **kw):
        started.set()
        go.wait()
        raise tq.UnitLostError("storage unit 1 is unreachable: gone", op=how)
    monkeypatch.setattr(tq.Client, "_read_into", failing)
    if how == "kv_batch_get":
        call = lambda: client.async_kv_batch_get(keys, part, into=into)  # noqa: E731
    else:
        meta = client.kv_retrieve_meta(keys, part)
        call = lambda: client.async_get_data(meta, into=into)  # noqa: E731

    async def main():
        reported = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))
        t = asyncio.create_task(call())
        await asyncio.to_thread(started.wait)
        t.cancel()
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await t
        return reported
    reported = asyncio.run(main())
    assert [type(c.get("exception")) for c in reported] == [tq.UnitLostError], reported
    assert "cancelled" in reported[0]["message"]


def test_reserve_put_in_place(client, part, transport):
    keys = ["a", "b", "c"]
    if transport == "tcp":
        # A tcp client reaches units through their unix sockets only with
        # transport="auto"; forced tcp has no shared memory to reserve.
        with pytest.raises(tq.NotSupportedError):
            client.reserve_kv_put(keys, part, {"x": ("float32", (4,))})
        return
    with client.reserve_kv_put(keys, part, {"x": ("float32", (4,)), "w": (tq.bfloat16, ())}) as r:
        assert r.fields["x"].shape == (3, 4) and r.fields["w"].shape == (3,)
        r.fields["x"][:] = np.arange(12, dtype=np.float32).reshape(3, 4)
        r.fields["w"][:] = [0x3F80, 0x7FC1, 0x8000]
        m = r.commit([{"i": 0}, {"i": 1}, {"i": 2}])
    assert m.fields == ["w", "x"] and m.tags[2] == {"i": 2}
    got = client.kv_batch_get(keys, part)
    assert got["x"].tolist() == np.arange(12).reshape(3, 4).tolist()
    assert got["w"].view(np.uint16).tolist() == [0x3F80, 0x7FC1, 0x8000]
    with client.reserve_kv_put(["z"], part, {"x": ("float32", (4,))}) as r:
        r.fields["x"][:] = 1
    with pytest.raises(tq.NotFoundError):  # aborted: nothing of it is readable
        client.kv_batch_get(["z"], part)


@pytest.mark.parametrize("spec", [("float", (2,)), (">f4", (2,)), (np.dtype("U2"), (2,)), ("float32", (-1,)),
                                  ("float32", (2.5,)), "float32", ("float32",)])
def test_reserve_with_a_bad_spec_names_the_field(client, part, spec):
    """A spec reserve_kv_put cannot take was a CorruptError (an unknown
    dtype name: the error for bytes a server sent wrong), an InvalidError
    naming no field (a numpy dtype TQ has not), or a bare ValueError (a
    negative dimension, from protobuf; a spec that is not a pair). Each is
    an InvalidError naming the field, before anything is reserved."""
    with pytest.raises(tq.InvalidError) as ei:
        client.reserve_kv_put(["a"], part, {"ok": ("float32", (2,)), "bad": spec})
    assert ei.value.fields == ["bad"] and ei.value.op == "reserve_kv_put"
    with pytest.raises(tq.NotFoundError):
        client.kv_batch_get(["a"], part)


def test_reservation_committed_and_aborted_at_once_gives_its_connection_back_once(client, part, transport,
                                                                                   monkeypatch):
    """Reservation.commit checked ``done``, then turned the tags into JSON,
    then set ``done``: an abort on another thread in between (a ``with``
    block left while a commit runs on a worker thread) aborted the
    reservation, and the commit went on to send RESERVE_COMMIT on the
    connection abort had already given back, and gave it back again: the
    pool held it twice, for two callers to take at once. Now commit and
    abort end the reservation once, under a lock's test-and-set, as a
    View's release does: the one that comes second does nothing."""
    if transport == "tcp":
        pytest.skip("a reservation needs shared memory")
    import tq.client as tqc
    r = client.reserve_kv_put(["a", "b"], part, {"x": ("float32", (4,))})
    conn, pool = r._conn, r._unit.pool
    real = tqc.tags_to_json_list

    def abort_meanwhile(tags):
        t = threading.Thread(target=r.abort)
        t.start()
        t.join()
        return real(tags)
    monkeypatch.setattr(tqc, "tags_to_json_list", abort_meanwhile)
    with pytest.raises(tq.ClosedError, match="already committed or aborted"):
        r.commit([{"i": 0}, {"i": 1}])
    assert r.done
    assert sum(c is conn for c in pool._idle) == 1, "the connection was given back twice"
    with pytest.raises(tq.NotFoundError):  # aborted: nothing of it is readable
        client.kv_batch_get(["a"], part)


def test_torch_tensors(client, part):
    torch = pytest.importorskip("torch", reason="torch is not installed: the torch paths are untested here")
    x = torch.randn(3, 4).to(torch.bfloat16)
    client.kv_batch_put(["a", "b", "c"], part, {"x": x, "r": [torch.arange(i) for i in range(3)]})
    got = client.kv_batch_get(["a", "b", "c"], part)
    assert got["x"].dtype.metadata == {"tq_dtype": "bfloat16"}
    t = tq.columns.to_tensor(np.array(got["x"]))
    assert t.dtype == torch.bfloat16 and torch.equal(t, x)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_torch_lazy_conjugate_and_negation_are_put_by_value(client, part):
    """A torch tensor with its conjugate or negative bit set (z.conj(),
    z.conj().imag: views .numpy() refuses) is stored with the values it
    shows; a tensor numpy cannot hold (complex32, a sparse layout) is an
    InvalidError naming the field, not torch's own error."""
    torch = pytest.importorskip("torch", reason="torch is not installed: the torch paths are untested here")
    z = torch.tensor([[1 + 2j], [3 - 4j]], dtype=torch.complex64)
    assert z.conj().is_conj() and z.conj().imag.is_neg()
    client.kv_batch_put(["a", "b"], part, {"z": z.conj(), "i": z.conj().imag, "r": [z[0].conj(), z[1].conj()]})
    got = client.kv_batch_get(["a", "b"], part)
    assert got["z"].tolist() == [[1 - 2j], [3 + 4j]] and got["i"].tolist() == [[-2.0], [4.0]]
    assert got["r"].tolist() == [[1 - 2j], [3 + 4j]]  # ragged rows of one shape read back dense
    for bad in (torch.zeros(2, 1, dtype=torch.complex32), torch.zeros(2, 2).to_sparse()):
        with pytest.raises(tq.InvalidError) as ei:
            client.kv_batch_put(["a", "b"], part, {"bad": bad})
        assert ei.value.fields == ["bad"]


def test_get_while_the_keys_are_overwritten(server, transport, part):
    """Reads of keys a writer keeps replacing see whole values, never an error."""
    keys = [f"k{i}" for i in range(8)]
    stop = threading.Event()
    with server.client(transport=transport) as w, server.client(transport=transport) as r:
        w.kv_batch_put(keys, part, {"x": np.zeros((8, 20000))})

        def write():
            v = 0
            while not stop.is_set():
                v += 1
                w.kv_batch_put(keys, part, {"x": np.full((8, 20000), float(v))})
        th = threading.Thread(target=write)
        th.start()
        try:
            for _ in range(100):
                x = r.kv_batch_get(keys, part)["x"]
                assert np.all(x == x[0, 0])  # one put's value, whole
                with r.kv_batch_get(keys, part, copy=False) as v:
                    assert np.all(v["x"] == v["x"][0, 0])
        finally:
            stop.set()
            th.join()


def test_empty_cells(client, part):
    """Rows of no bytes (empty ragged rows, empty strings) next to a large field: their extents
    are empty and name no segment."""
    keys = ["a", "b"]
    client.kv_batch_put(keys, part, {"big": np.zeros((2, 100000)), "e": [np.zeros(0), np.zeros(0)], "o": [b"", b""]})
    for copy in (True, False):
        got = client.kv_batch_get(keys, part, copy=copy)
        assert [len(x) for x in got["e"]] == [0, 0] and list(got["o"]) == [b"", b""]
        assert got["big"].shape == (2, 100000)
        if not copy:
            got.release()


def test_ragged_rows_of_one_shape_read_back_dense(client, part):
    """The controller describes a ragged field whose rows (in this get) share one shape as dense."""
    client.kv_batch_put(["a", "b", "c"], part, {"r": [np.arange(2), np.arange(3), np.arange(3)]})
    assert [x.tolist() for x in client.kv_batch_get(["a", "b"], part)["r"]] == [[0, 1], [0, 1, 2]]
    same = client.kv_batch_get(["b", "c"], part)["r"]
    assert isinstance(same, np.ndarray) and same.shape == (2, 3)


def test_ragged_rows_of_scalars_keep_their_shape(client, part):
    """A list of scalars (0-d arrays, numpy scalars, Python floats, 0-d
    torch tensors) is rows of shape (): they read back as an array of
    shape (n,), not (n, 1). A single scalar is no rows at all."""
    vals = {"arr0d": [np.array(0.5), np.array(1.5)], "np_scalar": [np.float64(0.5), np.float64(1.5)],
            "py_float": [0.5, 1.5], "py_int": [1, 2]}
    try:
        import torch
        vals["torch0d"] = [torch.tensor(0.5), torch.tensor(1.5)]
    except ImportError:
        pass
    client.kv_batch_put(["a", "b"], part, vals)
    got = client.kv_batch_get(["a", "b"], part)
    for f in vals:
        assert got[f].shape == (2,), f
        assert got[f].tolist() == ([1, 2] if f == "py_int" else [0.5, 1.5]), f
    with pytest.raises(tq.InvalidError, match="first dimension"):
        client.kv_batch_put(["a"], part, {"x": 0.5})


def test_view_as_torch_tensors(client, part, transport):
    torch = pytest.importorskip("torch", reason="torch is not installed: tensors over views are untested here")
    x = np.random.default_rng(3).random((16, 5000)).astype(np.float32)
    client.kv_batch_put([f"k{i}" for i in range(16)], part, {"x": x})
    with client.kv_batch_get([f"k{i}" for i in range(16)], part, copy=False) as v:
        t = v.tensors()["x"]
        assert torch.equal(t, torch.from_numpy(x))


def test_released_view_refuses_to_be_read(client, part, transport):
    """A released view no longer leases its memory (the unit may reuse the
    cells for other puts), yet tensors(), v[f], items() and data went on
    handing out arrays over it. Now each is a ClosedError naming the
    partition and the keys; arrays and tensors taken before the release
    are left as they were, and the field names are still there."""
    torch = pytest.importorskip("torch", reason="torch is not installed: tensors over views are untested here")
    keys = [f"k{i}" for i in range(4)]
    client.kv_batch_put(keys, part, {"x": np.ones((4, 1000), dtype=np.float32)})
    for how in ("kv_batch_get", "get_data"):
        if how == "kv_batch_get":
            v = client.kv_batch_get(keys, part, copy=False)
        else:
            v = client.get_data(client.kv_retrieve_meta(keys, part), copy=False)
        before = v.tensors()["x"]
        v.release()
        assert isinstance(before, torch.Tensor) and before.shape == (4, 1000), how
        for name, read in (("tensors", lambda: v.tensors()), ("getitem", lambda: v["x"]),
                           ("items", lambda: v.items()), ("data", lambda: v.data)):
            with pytest.raises(tq.ClosedError, match="released") as ei:
                read()
            assert ei.value.partition == part, (how, name)
            assert ei.value.keys == keys, (how, name)
        assert list(v) == ["x"] and list(v.keys()) == ["x"] and len(v) == 1, how


def unit_leases(c):
    """The leases the units of c's cluster hold, by their UNIT_STATS, asked
    through c's own connections."""
    return sum(u.pool.call(tq.wire.UNIT_STATS, None, tq._pb.data_pb2.UnitStats).leases
               for u in c.units(refresh=True).values())


def test_view_arrays_outlive_their_view(client, part, transport):
    """An array taken from a view that is never released keeps its lease:
    a later put of the same keys does not change it; once the array is
    garbage, the lease goes back."""
    import gc
    keys = [f"k{i}" for i in range(8)]
    client.kv_batch_put(keys, part, {"x": np.full((8, 20000), 1.0)})
    x = client.kv_batch_get(keys, part, copy=False)["x"]  # the View itself is garbage at once
    gc.collect()
    for v in (2.0, 3.0):
        client.kv_batch_put(keys, part, {"x": np.full((8, 20000), v)})
    assert np.all(x == 1.0)
    del x
    gc.collect()
    assert np.all(client.kv_batch_get(keys, part)["x"] == 3.0)
    if transport == "shm":
        deadline = time.monotonic() + 5
        while True:
            client.kv_batch_get(keys, part, copy=False).release()  # gives the orphaned lease back
            leases = unit_leases(client)
            if leases == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert leases == 0


@pytest.fixture
def lease_keys(server, client, part, transport):
    """The lease tests' setup (shared memory only): 8 keys of x, ones, in
    part; a function that counts the leases the units hold, asked through
    a client of its own (its calls must not touch client's units); and
    that client."""
    if transport != "shm":
        pytest.skip("leases are taken over shared memory only")
    keys = [f"k{i}" for i in range(8)]
    client.kv_batch_put(keys, part, {"x": np.full((8, 20000), 1.0)})
    with server.client() as watcher:
        yield keys, lambda: unit_leases(watcher), watcher


def test_garbage_lease_goes_back_while_the_client_is_idle(client, part, lease_keys):
    """A view that ends as garbage gives its lease back without another
    call on its unit: a client that stops reading does not pin the extents
    until it exits. The lease used to wait for the unit's next acquire, and
    the unit no longer ends an idle same-host connection that holds one."""
    import gc
    keys, leases, _ = lease_keys
    before = leases()
    x = client.kv_batch_get(keys, part, copy=False)["x"]
    assert leases() == before + 1
    del x
    gc.collect()
    deadline = time.monotonic() + 30
    while leases() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leases() == before


def test_forked_child_leaves_the_parents_leases_and_connections_alone(server, client, part, lease_keys):
    """A child forked without exec inherits the client: its unit objects,
    their pooled connections (the parent's sockets) and the parent's live
    views. It must send nothing on what it inherited. A view the child drops
    used to be queued as the child's orphan and given back by the child's
    sweeper on the parent's socket, freeing the lease the parent still read
    through (its view then showed other puts' bytes); and the child's own
    calls took the parent's pooled connections, leaving replies there the
    parent did not wait for."""
    import gc
    keys, leases, watcher = lease_keys
    before = leases()
    holder = [client.kv_batch_get(keys, part, copy=False)["x"]]  # the parent keeps this view
    assert leases() == before + 1
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            # The child drops its copy of the parent's view (a worker
            # clearing an inherited cache), then reads with the
            # inherited client, zero copy (its first Lease starts the
            # child's sweeper) and copying.
            holder.clear()
            gc.collect()
            v = client.kv_batch_get(keys, part, copy=False)["x"]
            assert (v == 1.0).all()
            del v
            gc.collect()
            assert (client.kv_batch_get(keys, part)["x"] == 1.0).all()
            # A round of the child's sweeper (its orphans, its segments),
            # run here rather than waited for (ORPHAN_SWEEP_S apart).
            for u in list(tq.unit._sweep_units):
                tq.unit._sweep_one(u)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    # The child's own lease went with its connection when it exited.
    deadline = time.monotonic() + 30
    while leases() != before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leases() == before + 1, "the child gave back the parent's lease, or left its own"
    # Overwrite the keys and fill the unit: a lease that went back
    # would let these puts reuse the bytes the parent's view shows.
    watcher.kv_batch_put(keys, part, {"x": np.full((8, 20000), 2.0)})
    for j in range(4):
        watcher.kv_batch_put([f"o{j}-{i}" for i in range(8)], part, {"x": np.full((8, 20000), 3.0 + j)})
    assert (holder[0] == 1.0).all(), "the parent's view changed under it"
    # The parent's pooled connections are in step: its calls work.
    assert (client.kv_batch_get(keys, part)["x"] == 2.0).all()
    assert (client.kv_batch_get(keys, part, copy=False)["x"] == 2.0).all()
    holder.clear()


def test_view_whose_sweeper_cannot_start_gives_its_lease_back(client, part, lease_keys, monkeypatch):
    """The first Lease starts the sweeper thread; when it cannot (no thread
    left to the process), the get fails, the lease it had acquired goes
    back at once, and the next Lease tries again. The lease used to be
    nobody's: not yet among the get's leases, which its error path
    releases, so it went back only once garbage and at the unit's next
    call."""
    keys, leases, _ = lease_keys
    before = leases()

    class NoThread(threading.Thread):
        def start(self):
            raise RuntimeError("can't start new thread")
    tq.unit._sweeper = None  # as in a process whose first Lease this is
    with monkeypatch.context() as m:
        m.setattr(tq.unit.threading, "Thread", NoThread)
        with pytest.raises(RuntimeError, match="can't start new thread") as e:
            client.kv_batch_get(keys, part, copy=False)
    # The thread that did not start is not taken for a sweeper: the
    # next Lease starts one. (It used to be kept, and no sweeper ran
    # for the rest of the process.)
    assert tq.unit._sweeper is None, "a sweeper that never started was kept"
    deadline = time.monotonic() + 30
    while leases() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leases() == before, "the get left its lease held"
    del e
    # The client is in step afterwards, and its next lease started the
    # sweeper.
    assert (client.kv_batch_get(keys, part, copy=False)["x"] == 1.0).all()
    assert tq.unit._sweeper is not None and tq.unit._sweeper.is_alive(), "no sweeper runs"


def test_lease_released_by_two_threads_at_once_goes_back_once():
    """Two threads releasing one Lease at once (a view released by two, or
    by one while another drops it): the lease went back twice, its
    connection given to the pool twice, when the second thread came in
    between the first's test of done and its set. Each release here
    stops at every line of Lease.release in turn while another thread
    runs a whole release: the unit is asked once, every time."""
    import collections
    import sys

    class Unit:
        def __init__(self):
            self.orphans, self.released = collections.deque(), []

        def release(self, conn, lease):
            self.released.append(lease)

    code = tq.unit.Lease.release.__code__
    for stop_at in range(1, 20):
        unit = Unit()
        lease = tq.unit.Lease(unit, object(), stop_at)
        at_stop, go = threading.Event(), threading.Event()
        stopped = []

        def local(frame, event, arg):
            if event == "line":
                local.lines += 1
                if local.lines == stop_at:
                    stopped.append(frame.f_lineno)
                    at_stop.set()
                    go.wait()
            return local
        local.lines = 0

        def tracer(frame, event, arg):
            return local if frame.f_code is code else None

        def first():
            sys.settrace(tracer)
            try:
                lease.release()
            finally:
                sys.settrace(None)
                at_stop.set()  # ended before line stop_at
        t = threading.Thread(target=first)
        t.start()
        at_stop.wait()
        if not stopped:
            t.join()
            break  # every line of release has been a stopping point
        lease.release()  # the second thread, while the first is stopped
        go.set()
        t.join()
        assert unit.released == [stop_at], f"stopped at line {stopped[0]}: released {len(unit.released)} times"
        assert lease.done
    assert stop_at > 2, "release was never stopped inside"


def test_view_released_by_two_threads_at_once_goes_over_its_leases_once():
    """Two threads releasing one View at once: its released flag was tested
    and set without a lock, so both could pass the test and both take the
    lease list and release every lease (each Lease releases once, but the
    loop ran twice). Here the first release stops at each bytecode of
    View.release in turn, then the second at each in turn, then the first
    runs on, then the second: each lease is asked once, every time."""
    import sys

    class Lease:
        def __init__(self):
            self.calls = 0

        def release(self):
            self.calls += 1

    code = tq.client.View.release.__code__

    def stopping(view, stop_at):
        """A thread running view.release() that stops before its opcode
        stop_at; at_stop is set when it stopped or ended, go lets it on."""
        at_stop, go, stopped = threading.Event(), threading.Event(), []
        ops = [0]

        def local(frame, event, arg):
            if event == "opcode":
                ops[0] += 1
                if ops[0] == stop_at:
                    stopped.append(frame.f_lasti)
                    at_stop.set()
                    go.wait()
            return local

        def tracer(frame, event, arg):
            if frame.f_code is not code:
                return None
            frame.f_trace_opcodes = True
            return local

        def run():
            sys.settrace(tracer)
            try:
                view.release()
            finally:
                sys.settrace(None)
                at_stop.set()  # ended before opcode stop_at
        t = threading.Thread(target=run)
        t.start()
        at_stop.wait()
        return t, go, stopped

    pairs = 0
    for i in range(1, 200):
        ended = False
        for j in range(1, 200):
            leases = [Lease(), Lease()]
            view = tq.client.View({}, list(leases))
            a, a_go, a_stopped = stopping(view, i)
            if not a_stopped:
                a.join()
                ended = True
                break  # every opcode of release has been a stopping point
            b, b_go, b_stopped = stopping(view, j)
            a_go.set()
            a.join()
            b_go.set()
            b.join()
            pairs += 1
            assert [l.calls for l in leases] == [1, 1], (
                f"first stopped at opcode {a_stopped[0]}, second at {b_stopped[:1]}: "
                f"leases released {[l.calls for l in leases]} times")
            assert view.released
            if not b_stopped:
                break
        if ended:
            break
    assert pairs > 10, "release was never stopped inside"


def test_get_across_units(client, part):
    """Keys written by many puts land on both units (placement hashes each
    put's first key): a get of all of them gathers every field in key order."""
    keys = [f"key{i}" for i in range(40)]
    x = np.random.default_rng(5).random((40, 3000))
    for i in range(0, 40, 4):
        client.kv_batch_put(keys[i:i + 4], part, {"x": x[i:i + 4], "r": [x[j, :j] for j in range(i, i + 4)],
                                                  "s": [str(j) for j in range(i, i + 4)]})
    units = {int(client.kv_retrieve_meta([k], part)._cells["x"].unit[0]) for k in keys[::4]}
    assert len(units) == 2
    order = list(np.random.default_rng(6).permutation(40))
    got = client.kv_batch_get([keys[i] for i in order], part)
    assert got["x"].tobytes() == x[order].tobytes()
    assert [a.tolist() for a in got["r"]] == [x[j, :j].tolist() for j in order]
    assert got["s"] == [str(j).encode() for j in order]
    out = {"x": np.empty((40, 3000))}
    client.kv_batch_get([keys[i] for i in order], part, into=out)
    assert out["x"].tobytes() == x[order].tobytes()
    with client.kv_batch_get([keys[i] for i in order], part, copy=False) as v:
        assert v["x"].tobytes() == x[order].tobytes()


def test_single_value_ops(client, part):
    """One value of one key goes as KV_SET and comes back through
    KV_GET_VALUE, with the same results as KV_PUT/KV_GET give."""
    ops = []
    call = client._call

    def spy(op, *a, **kw):
        ops.append(op)
        return call(op, *a, **kw)

    client._call = spy
    client.kv_put("a", part, fields={"v": b"\x00hello\r\n"})
    r = [np.arange(3, dtype=np.int64), np.arange(5, dtype=np.int64)]
    client.kv_batch_put(["a", "b"], part, {"x": np.arange(8, dtype=np.float32).reshape(2, 4), "r": r})
    client.kv_put("e", part, fields={"v": b""})
    assert ops[0] == tq.wire.KV_SET and tq.wire.KV_SET not in ops[1:2]
    got = {}
    for key, field in [("a", "v"), ("a", "x"), ("b", "r"), ("e", "v")]:
        ops.clear()
        got[key, field] = client.kv_batch_get([key], part, field)
        assert ops == [tq.wire.KV_GET_VALUE], (key, field, ops)
    assert got["a", "v"]["v"] == [b"\x00hello\r\n"]
    assert got["e", "v"]["v"] == [b""]
    np.testing.assert_array_equal(got["a", "x"]["x"], [[0, 1, 2, 3]])
    # Absent: KV_GET_VALUE leaves it to KV_GET, which names what is missing.
    ops.clear()
    with pytest.raises(tq.errors.NotFoundError):
        client.kv_batch_get(["nope"], part, "v")
    assert ops[:2] == [tq.wire.KV_GET_VALUE, tq.wire.KV_GET]
    # The same reads through KV_GET.
    client._no_value = True
    for (key, field), want in got.items():
        ops.clear()
        same = client.kv_batch_get([key], part, field)
        assert tq.wire.KV_GET_VALUE not in ops
        assert list(same) == list(want)
        for a, b in zip(np.atleast_1d(same[field]) if field == "x" else same[field],
                        np.atleast_1d(want[field]) if field == "x" else want[field]):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_get_to_a_device(client, part):
    """kv_batch_get(device=...) gives torch tensors there, bit-exact: dense
    fields of any dtype, ragged ones as lists, opaque ones as they are;
    not with into= or copy=False."""
    torch = pytest.importorskip("torch", reason="torch is not installed: device= is untested here")
    x = torch.randn(4, 3).to(torch.bfloat16)
    y = np.arange(8, dtype=np.int16).reshape(4, 2)
    z = np.array([True, False, True, True])
    r = [np.arange(i + 1, dtype=np.float64) for i in range(4)]
    keys = ["a", "b", "c", "d"]
    client.kv_batch_put(keys, part, {"x": x, "y": y, "z": z, "r": r, "o": [b"1", b"22", b"", b"4444"]})
    got = client.kv_batch_get(keys, part, device="cpu")
    assert sorted(got) == ["o", "r", "x", "y", "z"]
    assert got["x"].dtype == torch.bfloat16 and torch.equal(got["x"], x)
    assert got["y"].dtype == torch.int16 and got["y"].numpy().tolist() == y.tolist()
    assert got["z"].dtype == torch.bool and got["z"].tolist() == z.tolist()
    assert [t.tolist() for t in got["r"]] == [a.tolist() for a in r]
    assert list(got["o"]) == [b"1", b"22", b"", b"4444"]
    one = client.kv_batch_get(["c"], part, select_fields=["y"], device=torch.device("cpu"))
    assert list(one) == ["y"] and one["y"].tolist() == [[4, 5]]
    with pytest.raises(tq.InvalidError, match="device="):
        client.kv_batch_get(keys, part, device="cpu", copy=False)
    with pytest.raises(tq.InvalidError, match="device="):
        client.kv_batch_get(keys, part, device="no-such-device")
    with pytest.raises(tq.NotFoundError):
        client.kv_batch_get(keys, part, select_fields=["nope"], device="cpu")


def test_get_data_to_a_device(client, part):
    """The batch API's get_data(meta, device=...) as kv_batch_get's: tensors there, bit-exact."""
    torch = pytest.importorskip("torch", reason="torch is not installed: device= is untested here")
    x = torch.arange(12, dtype=torch.float16).reshape(4, 3)
    meta = client.put({"x": x, "r": [np.arange(i) for i in range(4)]}, partition_id=part)
    got = client.get_data(meta, device="cpu")
    assert sorted(got) == ["r", "x"] and got["x"].dtype == torch.float16 and torch.equal(got["x"], x)
    assert [t.tolist() for t in got["r"]] == [list(range(i)) for i in range(4)]
    assert list(client.get_data(meta, fields=["x"], device="cpu")) == ["x"]
    with pytest.raises(tq.InvalidError, match="device="):
        client.get_data(meta, device="cpu", copy=False)


@pytest.mark.parametrize("err", [tq.DeadlineError, tq.ClosedError, tq.InternalError])
def test_commit_of_unknown_outcome_keeps_what_it_wrote(server, part, err):
    """A put through the units whose commit may have happened (its reply
    did not come in time, the controller was closing or failed) keeps the
    cells it wrote: freeing them would leave the key naming freed bytes.
    Only a refusal frees them."""
    c = server.client(transport="tcp")
    try:
        big = np.arange(40000, dtype=np.int64).reshape(1, -1)  # 320 KB: through the units
        c.kv_batch_put(["k"], part, fields={"x": big})
        real = c._call

        def reply_lost(op, req, *a, **kw):
            out = real(op, req, *a, **kw)
            if op == tq.wire.COMMIT_KEYS:
                raise err("the commit's reply was lost (simulated)")
            return out
        c._call = reply_lost
        with pytest.raises(err):
            c.kv_batch_put(["k"], part, fields={"x": big + 1})
        c._call = real
        got = np.asarray(c.kv_batch_get(["k"], part)["x"])
        assert (got == big + 1).all(), "the commit happened: the key holds the new value"
    finally:
        c.close()


def _run_forked(fn, timeout=60.0):
    """Run fn in a child forked without exec; fail if it raises, or if it
    has not exited within timeout (then it is killed)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung (killed after %.0f s)" % timeout)
        time.sleep(0.02)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the forked child failed"


def test_forked_child_makes_its_own_locks_and_threads(client, part):
    """A child forked while other threads of the parent held the client's
    locks (and tq's own), and after the parent's large copies had started
    their thread pool, uses the inherited client as its own. The child has none of the
    parent's threads: a lock one of them held at the fork would never be
    released there, and a pool that counts them idle would take work no
    thread runs. The child used to hang in its first large copy (the
    parent's copy threads were gone) or on the locks."""
    keys = [f"k{i}" for i in range(4)]
    big = np.random.default_rng(7).random((4, 1 << 20))  # 32 MiB: copies and transfers go in parallel
    client.kv_batch_put(keys, part, {"x": big})
    assert client.kv_batch_get(keys, part)["x"].tobytes() == big.tobytes()
    client.units()  # the unit objects exist, and their pools
    held = threading.Event()
    release = threading.Event()
    locks = [tq._lock, client._units_lock, client._ctl._lock]
    locks += [lk for u in client.units().values() for lk in (u.pool._lock, u._seg_lock)]

    def hold():
        for lk in locks:
            lk.acquire()
        held.set()
        release.wait()
        for lk in locks:
            lk.release()
    t = threading.Thread(target=hold)
    t.start()
    try:
        held.wait()

        def child():
            tq.close()  # takes tq's module lock
            assert client.kv_batch_get(keys, part)["x"].tobytes() == big.tobytes()
            client.kv_batch_put(keys, part, {"x": big + 1})
            assert client.kv_batch_get(keys, part)["x"].tobytes() == (big + 1).tobytes()
        _run_forked(child)
    finally:
        release.set()
        t.join()
    assert client.kv_batch_get(keys, part)["x"].tobytes() == (big + 1).tobytes()
    # The session's server is shared: give its room back (a checkpoint
    # load elsewhere rewrites every cell the cluster holds).
    client.kv_clear(keys, part)


class _LazyTags:
    """Rows' tag dicts made as they are iterated, as a dataset view makes
    them: each is freed before the next is made."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __iter__(self):
        return ({"i": i} for i in range(self.n))


def test_tags_made_as_iterated_stay_on_their_rows(server, client, part):
    """Tags were encoded once per dict id, and a dict made after an earlier
    one was freed could reuse its id: rows got another row's tags, silently
    ([0, 1, 0, 1, ...])."""
    keys = [f"k{i}" for i in range(6)]
    meta = client.kv_batch_put(keys, part, {"x": np.zeros((6, 2))}, tags=_LazyTags(6))
    assert [t["i"] for t in meta.tags] == list(range(6))
    with server.client(transport="shm") as c:
        r = c.reserve_kv_put([f"r{i}" for i in range(6)], part, {"y": ("float32", (2,))})
        r.fields["y"][:] = 1
        meta = r.commit(tags=({"i": i} for i in range(6)))
        assert [t["i"] for t in meta.tags] == list(range(6))
        r = c.reserve_kv_put(["s0", "s1"], part, {"y": ("float32", (2,))})
        with pytest.raises(tq.InvalidError, match="3 tag dicts for 2 keys"):
            r.commit(tags=[{}, {}, {}])
        r.abort()


def test_kv_batch_put_takes_tags_as_any_iterable(client, part):
    """kv_batch_put's tags as a generator were a bare TypeError (len() of
    a generator), where its keys and Reservation.commit's tags take any
    iterable; a single dict given as tags was taken as its names, one per
    key ("a tag must be a dict, not str"). Now a generator is the rows'
    tags in order, and a dict is InvalidError saying tags are one dict a
    key; nothing of a refused put is written."""
    meta = client.kv_batch_put(["a", "b"], part, {"x": np.arange(2)}, tags=({"i": i} for i in range(2)))
    assert meta.tags == [{"i": 0}, {"i": 1}]
    with pytest.raises(tq.InvalidError, match="3 tags for 2 keys"):
        client.kv_batch_put(["a", "b"], part, {"x": np.arange(2)}, tags=({"i": i} for i in range(3)))
    for tags in ({"i": 5}, {"i": 5, "j": 6}):
        with pytest.raises(tq.InvalidError, match="one dict a key"):
            client.kv_batch_put(["c", "d"][:len(tags)], part, {"x": np.arange(len(tags))}, tags=tags)
    assert client.kv_list(part)[part] == {"a": {"i": 0}, "b": {"i": 1}}


def test_empty_dense_value_round_trips(client, part):
    """A value with a zero in its shape failed to send (memoryview cannot
    cast such a shape): a TypeError, and the connection closed."""
    client.kv_put("e", part, {"o": b""})
    assert client.kv_batch_get(["e"], part, ["o"])["o"] == [b""]
    client.kv_put("d", part, {"z": np.zeros((0, 3), np.float32)})
    got = client.kv_batch_get(["d"], part, ["z"])["z"]
    assert got.shape == (1, 0, 3) and got.dtype == np.float32
    client.kv_batch_put(["d2", "d3"], part, {"z": np.zeros((2, 0, 3), np.float32)})
    assert client.kv_batch_get(["d2", "d3"], part, ["z"])["z"].shape == (2, 0, 3)


def test_put_memoryview_is_opaque_as_in_a_batch(client, part):
    client.kv_put("a", part, {"v": memoryview(b"abc")})
    client.kv_batch_put(["b"], part, {"v": [memoryview(b"abc")]})
    assert client.kv_batch_get(["a", "b"], part, ["v"])["v"] == [b"abc", b"abc"]


def test_bad_value_error_names_the_field(client, part):
    with pytest.raises(tq.InvalidError) as ei:
        client.kv_batch_put(["a", "b"], part, {"myfield": ["x", None]})
    assert "myfield" in str(ei.value) and ei.value.fields == ["myfield"]


def test_tags_json_would_change_are_refused(client, part):
    """Tags go out as UTF-8 JSON: non-ASCII text round-trips as it is,
    and a string JSON cannot carry unchanged (a lone surrogate, which a
    \\u escape would carry and the server read as U+FFFD) or a NaN is
    refused before anything is sent, naming the value; nothing changes."""
    client.kv_put("a", part, tag={"状态": "完成 ✓", "e": "😀"})
    assert client.kv_list(part)[part]["a"] == {"状态": "完成 ✓", "e": "😀"}
    with pytest.raises(tq.InvalidError, match="surrogate"):
        client.kv_put("b", part, tag={"s": "bad \ud800"})
    with pytest.raises(tq.InvalidError, match="surrogate"):
        client.compare_and_set_tag("a", part, "e", "😀", "\udfff")
    with pytest.raises(tq.InvalidError, match="JSON"):
        client.compare_and_set_tag("a", part, "e", "😀", float("nan"))
    with pytest.raises(tq.InvalidError, match="surrogate"):
        client.list_keys(part, where={"e": "\ud800"})
    assert client.kv_list(part)[part] == {"a": {"状态": "完成 ✓", "e": "😀"}}


def test_tags_numbers_past_int64_and_keys_not_str_are_refused(client, part):
    """A tag JSON would carry but the server would not keep as given is
    refused before anything is sent, as the Go client refuses it
    (engine.CheckTagValue): an int past int64 (the server would keep a
    float, its low digits gone) and a dict key that is not a str (JSON
    would make it one: 1 and "1" would read back as one key). The int64
    bounds themselves round-trip; nothing of a refused put changes."""
    lo, hi = -(2 ** 63), 2 ** 63 - 1
    client.kv_put("a", part, tag={"n": hi, "m": lo})
    assert client.kv_list(part)[part]["a"] == {"n": hi, "m": lo}
    for bad in ({"n": 2 ** 63}, {"n": lo - 1}, {"n": [1, 2 ** 70]}, {"n": {"d": 2 ** 64}},
                {1: "x"}, {"n": {None: 1}}, {"n": [{True: 1}]}, {"n": {1.5: 1}}):
        with pytest.raises(tq.InvalidError):
            client.kv_put("a", part, tag=bad)
        with pytest.raises(tq.InvalidError):
            client.kv_batch_put(["b", "a"], part, {"x": np.arange(2)}, tags=[{}, bad])
    with pytest.raises(tq.InvalidError, match="int64"):
        client.compare_and_set_tag("a", part, "n", hi, 2 ** 63)
    with pytest.raises(tq.InvalidError, match="int64"):
        client.list_keys(part, where={"n": 2 ** 64})
    assert client.kv_list(part)[part] == {"a": {"n": hi, "m": lo}}


def test_single_value_of_the_wrong_length_is_corrupt(client, part):
    """A KV_GET_VALUE reply whose payload is not the bytes its schema's
    shape needs (a damaged or hostile controller) is CorruptError naming
    both lengths, not a value silently cut short or read past."""
    client.kv_batch_put(["a"], part, {"x": np.arange(4, dtype=np.float32).reshape(1, 4),
                                      "r": [np.arange(3, dtype=np.int64)]})
    call = client._call

    def doctored(extra):
        def spy(op, *a, **kw):
            out = call(op, *a, **kw)
            if op == tq.wire.KV_GET_VALUE:
                f, payload = out if isinstance(out, tuple) else (out, b"")
                return f, bytes(payload) + b"\0" * extra if extra > 0 else bytes(payload)[:extra]
            return out
        return spy

    for field, want in (("x", 16), ("r", 24)):
        for extra in (4, -4):
            client._call = doctored(extra)
            with pytest.raises(tq.errors.CorruptError) as e:
                client.kv_batch_get(["a"], part, field)
            assert f"{want + extra} payload bytes, where " in e.value.message, e.value.message
            assert e.value.message.endswith(f"takes {want}"), e.value.message
    client._call = call
    np.testing.assert_array_equal(client.kv_batch_get(["a"], part, "x")["x"], [[0, 1, 2, 3]])


def test_reservation_whose_memory_cannot_be_mapped_is_given_back(server, part, monkeypatch):
    """A reserve_kv_put whose reserved memory cannot be mapped (here the
    segment's range is refused) gives the reservation back and returns its
    connection: it used to keep both, a connection out of the pool and the
    unit's extents reserved until the connection ended."""
    from tq import unit as tqunit
    from tq._pb import data_pb2
    c = server.client(transport="shm")
    try:
        c.kv_batch_put(["warm"], part, {"x": np.zeros((1, 4), np.float32)})
        u = c._pick(zlib.crc32(b"k"))
        idle = len(u.pool._idle)

        def refused(self, seg, off, n):
            raise tq.CorruptError(f"range [segment {seg} offset {off} len {n}] refused by the test")
        monkeypatch.setattr(tqunit.Unit, "seg_array", refused)
        with pytest.raises(tq.CorruptError):
            c.reserve_kv_put(["k"], part, {"x": ("float32", (4,))})
        monkeypatch.undo()
        assert len(u.pool._idle) == max(idle, 1), "the reservation's connection back in the pool"
        conn = u.pool.take()
        try:
            rep = conn.call(tq.wire.UNIT_STATS, None, data_pb2.UnitStats, op_name="stats")
        finally:
            u.pool.give(conn)
        assert rep.open_reservations == 0, rep
    finally:
        c.close()


def test_fd_socket_serves_the_run_a_fetch_names(server, part):
    """A segment fetch names the run of the unit it means (TQF2): another run
    at the same fd socket (a unit restarted there numbers its segments anew)
    refuses it as lost rather than hand over its own segment under the
    same number."""
    from tq.unit import _recv_fd
    c = server.client(transport="shm")
    try:
        c.kv_batch_put(["k"], part, {"x": np.zeros((1, 4096), np.float32)})
        cells = c.kv_retrieve_meta(["k"], part)._cells["x"]
        u = c.units()[int(cells.unit[0])]
        seg = int(cells.segment[0])
        fd, size, _ = _recv_fd(u.fd_socket, seg, server.token, u.incarnation)
        os.close(fd)
        assert size > 0
        with pytest.raises(tq.LostError) as e:
            _recv_fd(u.fd_socket, seg, server.token, u.incarnation ^ 1)
        assert "another run of the unit" in e.value.message
    finally:
        c.close()


def units_used(c):
    """The bytes the units of c's cluster hold, by their UNIT_STATS."""
    return sum(u.pool.call(tq.wire.UNIT_STATS, None, tq._pb.data_pb2.UnitStats).used
               for u in c.units(refresh=True).values())


@pytest.mark.parametrize("name", [1, ("x",), "bad\ud800"], ids=["int", "tuple", "surrogate"])
def test_field_name_that_is_not_text_is_refused_before_anything_is_written(client, part, transport, name):
    """A field name the request cannot carry (not a str, or a str that is
    not UTF-8) failed only once the column's bytes were on a unit: a bare
    TypeError or UnicodeEncodeError from protobuf, and the extents left
    written, named by no cell, until the unit's reconciliation."""
    x = np.ones((4, 1 << 16))  # through the units
    before = units_used(client)
    with pytest.raises(tq.InvalidError, match="field name") as ei:
        client.kv_batch_put(["a", "b", "c", "d"], part, {"ok": x, name: x})
    assert ei.value.fields == [name]
    meta = client.get_meta(["ok"], 4, part, mode="insert")
    with pytest.raises(tq.InvalidError, match="field name"):
        client.put({"ok": x, name: x}, meta)
    assert units_used(client) - before < x.nbytes
    if transport == "shm":
        with pytest.raises(tq.InvalidError, match="field name"):
            client.reserve_kv_put(["a"], part, {name: ("float32", (4,))})


def test_key_or_partition_that_is_not_text_is_invalid_naming_it(client, part):
    """A key or partition id that is not UTF-8 text (a lone surrogate)
    was a bare UnicodeEncodeError from protobuf naming neither it nor its
    place, where a field name is InvalidError and the Go client refuses
    such a key as ErrInvalid naming it (client.checkAt). Now
    InvalidError naming it, from each KV call and its async twin; nothing
    is written."""
    x = np.ones((3, 1 << 15))  # through the units
    client.kv_put("a", part, {"x": np.ones(1 << 15)})
    bad = "b\ud800"
    calls = (lambda k, p: client.kv_batch_put(k, p, {"x": x}),
             lambda k, p: client.kv_batch_put(k, p, tags=[{}] * 3),
             lambda k, p: client.kv_batch_get(k, p),
             lambda k, p: client.kv_clear(k, p),
             lambda k, p: client.delete_tags(k, p, ["t"]),
             lambda k, p: asyncio.run(client.async_kv_batch_put(k, p, {"x": x})))
    for call in calls:
        with pytest.raises(tq.InvalidError, match="not UTF-8") as ei:
            call(["a", bad, "c"], part)
        assert ei.value.keys == [bad] and "2 of 3" in ei.value.message
        with pytest.raises(tq.InvalidError, match="partition .* not UTF-8"):
            call(["a", "b", "c"], part + "\udfff")
    assert client.kv_list(part)[part] == {"a": {}}


@pytest.mark.parametrize("bad", [7, b"p", None], ids=["int", "bytes", "None"])
def test_partition_task_or_key_that_is_not_a_str_is_invalid_before_anything_is_sent(client, part, transport,
                                                                                    monkeypatch, bad):
    """A partition id, task name or key that is not a str (an int, bytes,
    None) was a bare TypeError from deep in protobuf, naming neither the
    argument nor the call, and some calls (a put through the units) had
    written bytes by then. Now every public call taking one raises
    InvalidError naming the argument and the type, and sends nothing."""
    x = np.ones((1, 1 << 15))
    client.kv_put("a", part, {"x": x[0]})

    def no_request(*a, **kw):
        raise AssertionError("a request went out")
    monkeypatch.setattr(tq.wire.Conn, "call", no_request)
    monkeypatch.setattr(tq.wire.Conn, "send_only", no_request)
    by_partition = {
        "kv_batch_put": lambda p: client.kv_batch_put(["a"], p, {"x": x}),
        "kv_put": lambda p: client.kv_put("a", p, {"x": x[0]}),
        "kv_batch_get": lambda p: client.kv_batch_get(["a"], p),
        "kv_clear": lambda p: client.kv_clear(["a"], p),
        "kv_retrieve_keys": lambda p: client.kv_retrieve_keys([0], p),
        "kv_retrieve_meta": lambda p: client.kv_retrieve_meta(["a"], p),
        "get_meta(insert)": lambda p: client.get_meta(["x"], 1, p, mode="insert"),
        "get_meta(fetch)": lambda p: client.get_meta(["x"], 1, p, task_name="t"),
        "get_meta(force_fetch)": lambda p: client.get_meta(["x"], 1, p, mode="force_fetch"),
        "clear_partition": client.clear_partition,
        "mark_done": client.mark_done,
        "get_production_status": lambda p: client.get_production_status(["x"], p),
        "get_consumption_status": lambda p: client.get_consumption_status("t", p),
        "check_consumption_status": lambda p: client.check_consumption_status("t", p),
        "reset_consumption": client.reset_consumption,
        "set_tags": lambda p: client.set_tags(p, [0], [{}]),
        "delete_tags": lambda p: client.delete_tags(["a"], p, ["t"]),
        "compare_and_set_tag": lambda p: client.compare_and_set_tag("a", p, "t", new=1),
        "list_keys": client.list_keys,
        "stats": client.stats,
        "async_kv_batch_get": lambda p: asyncio.run(client.async_kv_batch_get(["a"], p)),
        "async_get_meta": lambda p: asyncio.run(client.async_get_meta(["x"], 1, p, task_name="t")),
    }
    if bad is not None:  # None: every partition, or a put's rows from its meta
        by_partition["kv_list"] = client.kv_list
        by_partition["put"] = lambda p: client.put({"x": x}, partition_id=p)
    if transport == "shm":
        by_partition["reserve_kv_put"] = lambda p: client.reserve_kv_put(["a"], p, {"x": ("float64", (4,))})
    checks = [(op, call, "partition_id") for op, call in by_partition.items()]
    checks += [
        ("get_consumption_status task", lambda b: client.get_consumption_status(b, part), "task_name"),
        ("kv_put key", lambda b: client.kv_put(b, part, {"x": x[0]}), "key"),
        ("compare_and_set_tag key", lambda b: client.compare_and_set_tag(b, part, "t", new=1), "key"),
        ("compare_and_set_tag name", lambda b: client.compare_and_set_tag("a", part, b, new=1), "name"),
    ]
    if bad is not None:  # None: no task, which get_meta and reset_consumption take
        checks.append(("get_meta(fetch) task", lambda b: client.get_meta(["x"], 1, part, task_name=b), "task_name"))
        checks.append(("reset_consumption task", lambda b: client.reset_consumption(part, b), "task_name"))
    for op, call, arg in checks:
        with pytest.raises(tq.InvalidError) as ei:
            call(bad)
        assert f"{arg} must be a str, not {type(bad).__name__}" in str(ei.value), op


def test_many_duplicate_keys_name_16_and_how_many_more(client, part):
    """The duplicate keys' message named the first 16 and no count; now it
    says how many more there are, as the Go server's checkKeys. e.keys
    holds every one."""
    keys = [f"k{i}" for i in range(100)] * 2
    with pytest.raises(tq.InvalidError, match=r"duplicate keys \['k0', .*'k15'\] and 84 more") as ei:
        client.kv_batch_get(keys, part)
    assert ei.value.keys == keys[:100]


@pytest.mark.parametrize("keys,what", [(["a", "b", "a"], "duplicate keys \\['a'\\]"), (["a", ""], "empty key"),
                                       (["a", 1], "key 2 of 2 must be a str, not int"),
                                       (["a", b"b"], "key 2 of 2 must be a str, not bytes")],
                         ids=["duplicate", "empty", "int", "bytes"])
def test_bad_keys_are_invalid_before_anything_is_sent(client, part, transport, monkeypatch, keys, what):
    """A key list the controller refuses (an empty key, a key given twice:
    checkKeys in controller/ and kvapi/) went out as it was: a put through
    the units wrote every field's bytes first (a reservation took its
    memory), which the refused commit then had to free; a key not a str
    was a bare TypeError. Now every call taking keys raises InvalidError
    naming the keys before any request goes out."""
    x = np.ones((len(keys), 1 << 15))  # through the units

    def no_request(*a, **kw):
        raise AssertionError("a request went out")
    client.units()  # the unit list, which a put asks for first
    monkeypatch.setattr(tq.wire.Conn, "call", no_request)
    monkeypatch.setattr(tq.wire.Conn, "send_only", no_request)
    calls = {
        "kv_batch_put": lambda: client.kv_batch_put(keys, part, {"x": x}),
        "kv_batch_put(tags)": lambda: client.kv_batch_put(keys, part, tags=[{}] * len(keys)),
        "kv_batch_get": lambda: client.kv_batch_get(keys, part),
        "kv_batch_get(into)": lambda: client.kv_batch_get(keys, part, into={"x": np.empty_like(x)}),
        "kv_clear": lambda: client.kv_clear(keys, part),
        "kv_retrieve_meta": lambda: client.kv_retrieve_meta(keys, part),
        "delete_tags": lambda: client.delete_tags(keys, part, ["t"]),
        "async_kv_batch_put": lambda: asyncio.run(client.async_kv_batch_put(keys, part, {"x": x})),
    }
    if transport == "shm":
        calls["reserve_kv_put"] = lambda: client.reserve_kv_put(keys, part, {"x": ("float64", (4,))})
    for op, call in calls.items():
        with pytest.raises(tq.InvalidError, match=what) as ei:
            call()
        assert ei.value.op == op.split("(")[0].removeprefix("async_"), op
        assert ei.value.keys and set(ei.value.keys) <= set(keys), op
    with pytest.raises(tq.InvalidError, match="empty key"):
        client.compare_and_set_tag("", part, "t", new=1)


def test_field_named_twice_is_invalid_before_anything_is_sent(client, part, transport, monkeypatch):
    """A field list naming a field twice went out as it was:
    get_meta(["x", "y", "x"], ...) (insert, fetch, force fetch) answered a
    meta of x and y, get_data(meta, fields=["x", "y", "x"]) a dict of x and
    y, get_production_status a column per name, x's twice, and
    kv_batch_get was refused only by the controller, once the request was
    out. The Go client refuses such a list (field "x" appears twice,
    ErrInvalid) before anything is sent, as a key named twice is. Now
    every call taking a field list raises InvalidError naming the field,
    and sends nothing; so does a loader built with such data_fields."""
    client.kv_put("a", part, {"x": np.ones(4), "y": np.zeros(4)})
    meta = client.kv_retrieve_meta(["a"], part)
    fields = ["x", "y", "x"]

    def no_request(*a, **kw):
        raise AssertionError("a request went out")
    monkeypatch.setattr(tq.wire.Conn, "call", no_request)
    monkeypatch.setattr(tq.wire.Conn, "send_only", no_request)
    calls = [  # (op the error names, call)
        ("kv_batch_get", lambda: client.kv_batch_get(["a"], part, fields)),
        ("kv_batch_get", lambda: client.kv_batch_get(["a"], part, fields, copy=False)),
        ("kv_batch_get", lambda: client.kv_batch_get(["a"], part, fields, device="cpu")),
        ("kv_batch_get", lambda: asyncio.run(client.async_kv_batch_get(["a"], part, fields))),
        ("get_meta(insert)", lambda: client.get_meta(fields, 1, part, mode="insert")),
        ("get_meta(fetch)", lambda: client.get_meta(fields, 1, part, task_name="t")),
        ("get_meta(fetch)", lambda: asyncio.run(client.async_get_meta(fields, 1, part, task_name="t"))),
        ("get_meta(force_fetch)", lambda: client.get_meta(fields, 1, part, mode="force_fetch")),
        ("get_data", lambda: client.get_data(meta, fields=fields)),
        ("get_data", lambda: client.get_data(meta, fields=fields, copy=False)),
        ("get_production_status", lambda: client.get_production_status(fields, part)),
        ("get_production_status", lambda: client.check_production_status(fields, part)),
        ("StreamingDataset", lambda: tq.StreamingDataset(1, 1, fields, part, "t", client=client)),
    ]
    for i, (op, call) in enumerate(calls):
        with pytest.raises(tq.InvalidError, match="field 'x' appears twice") as ei:
            call()
        assert (ei.value.op, ei.value.fields) == (op, ["x"]), i
    # The check takes each name as a str (a set of them is how it finds
    # one named twice): anything else is refused naming its place and type.
    with pytest.raises(tq.InvalidError, match="field 2 of 2 must be a str, not list"):
        client.kv_batch_get(["a"], part, ["x", ["y"]])


def test_production_status_without_fields_is_invalid(client, part):
    """get_production_status(None, part) raised a bare TypeError from
    list(None) deep in the request's making; the status is per named
    field, so no fields is InvalidError naming the argument, and nothing
    is sent."""
    client.kv_put("a", part, {"x": np.ones(4)})
    for call in (lambda: client.get_production_status(None, part),
                 lambda: client.check_production_status(None, part)):
        with pytest.raises(tq.InvalidError, match="data_fields") as ei:
            call()
        assert ei.value.op == "get_production_status"


_WRITE_THROUGH_A_VIEW = """
import sys
import numpy as np
sys.path.insert(0, {pkg!r})
import tq
c = tq.Client({address!r}, token={token!r}, transport="shm")
v = c.kv_batch_get({keys!r}, {part!r}, copy=False)
if {how!r} == "torch":
    v.tensors()["x"][0, 0] = -1.0
else:
    a = v["x"]
    a.flags.writeable = True
    a[0, 0] = -1.0
print("wrote through the view")
"""


@pytest.mark.parametrize("how", ["numpy", "torch"])
def test_write_through_a_view_leaves_the_stored_cells_alone(server, client, part, transport, how):
    """A view's arrays are read-only by contract, but they were over the
    segment's read-write mapping: an array flagged writable again, or a
    torch tensor over one (View.tensors; torch makes it writable), wrote
    straight into the unit's memory, changing the cells for every other
    reader. Views now use a read-only mapping, as the Go client's do and
    wire/spec.md says: such a write faults instead. A numpy array of a
    view cannot even be flagged writable (its base, unit._Leased, offers
    no writable buffer): ValueError."""
    import resource
    import subprocess
    import sys
    if transport != "shm":
        pytest.skip("views alias the unit's memory over shared memory only")
    if how == "torch":
        pytest.importorskip("torch")
    keys = [f"k{i}" for i in range(8)]
    x = np.arange(8 * 20000, dtype=np.float32).reshape(8, 20000)
    client.kv_batch_put(keys, part, {"x": x})
    code = _WRITE_THROUGH_A_VIEW.format(pkg=os.path.dirname(os.path.dirname(tq.__file__)), address=server.address,
                                        token=server.token, keys=keys, part=part, how=how)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)))
    assert "wrote through the view" not in p.stdout
    if how == "torch":
        assert p.returncode == -signal.SIGSEGV, p.stderr
    else:
        assert p.returncode == 1 and "cannot set WRITEABLE flag" in p.stderr, p.stderr
    assert np.array_equal(client.kv_batch_get(keys, part)["x"], x)
    with client.kv_batch_get(keys, part, copy=False) as v:  # views still read the cells
        assert np.array_equal(v["x"], x)


def test_reserve_reply_that_cannot_be_read_aborts_the_reservation(server, part, monkeypatch):
    """A RESERVE reply whose extents could not be expanded (CorruptError)
    left the reservation open on a connection that went back to the pool:
    the unit keeps an idle same-host connection that holds one, so its
    extents stayed reserved until the client process exited."""
    from tq import unit as tqunit

    def corrupt(*a, **kw):
        raise tq.CorruptError("addrs: a hostile reply")
    with server.client(transport="shm") as c, server.client() as watcher:
        c.kv_batch_put(["warm"], part, {"x": np.ones((1, 1 << 16))})  # the units dialed
        monkeypatch.setattr(tqunit._addrs, "expand", corrupt)
        with pytest.raises(tq.CorruptError, match="hostile"):
            c.kv_batch_put(["a"], part, {"x": np.ones((1, 1 << 16))})
        monkeypatch.undo()
        deadline = time.monotonic() + 5
        while True:
            held = sum(u.pool.call(tq.wire.UNIT_STATS, None, tq._pb.data_pb2.UnitStats).open_reservations
                       for u in watcher.units(refresh=True).values())
            if held == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert held == 0


def test_module_calls_say_whether_tq_was_never_initialized_or_closed(server, part, monkeypatch):
    """A module-level call with no client says why: never initialized, or
    closed by tq.close() (it said "not been initialized yet" after a close
    too). A call in flight on another thread when tq.close() runs ends
    with ClosedError saying the client was closed."""
    monkeypatch.setenv("TQ_ADDRESS", server.address)
    monkeypatch.setenv("TQ_DATA_DIR", server.data_dir)
    tq.close()
    monkeypatch.setattr(tq, "_closed_by_close", False, raising=False)  # as in a fresh process
    with pytest.raises(tq.ClosedError, match=r"not been initialized.*tq\.init\(\)"):
        tq.kv_list(part)
    tq.init()
    tq.kv_put("a", part, {"x": np.arange(2.0)})
    out = []

    def fetch():
        try:
            tq.get_client().get_meta(["x"], 1, part + "-empty", task_name="t", wait=True, timeout=120)
        except tq.TQError as e:
            out.append(e)
    th = threading.Thread(target=fetch)
    th.start()
    time.sleep(0.3)  # the fetch is waiting at the controller
    tq.close()
    th.join(30)
    assert not th.is_alive(), "the fetch still waits after tq.close()"
    assert len(out) == 1 and isinstance(out[0], tq.ClosedError), out
    assert "closed" in str(out[0]) and "close()" in str(out[0]), out[0]
    for call in (lambda: tq.kv_list(part), lambda: tq.kv_batch_get(["a"], part), tq.get_client):
        with pytest.raises(tq.ClosedError, match=r"closed by tq\.close\(\).*tq\.init\(\)"):
            call()
    with pytest.raises(tq.ClosedError, match=r"closed by tq\.close\(\)"):
        asyncio.run(tq.async_kv_list(part))
    tq.init()
    try:
        assert "a" in tq.kv_list(part)[part]
    finally:
        tq.close()
    with pytest.raises(tq.ClosedError, match=r"closed by tq\.close\(\)"):
        tq.kv_list(part)


def test_name_over_the_bound_is_invalid_before_anything_is_sent(client, part, monkeypatch):
    """A key, partition id, field or task name longer than 64 KiB (Go's
    engine.MaxNameBytes) was sent, and kept by a controller that did not
    bound it, then listed whole. Now InvalidError naming which name, its
    length and the limit, quoting only its first bytes; nothing is sent.
    A name of exactly the limit is taken."""
    most = "m" * tq.MAX_NAME_BYTES
    client.kv_put(most, part, {most: np.ones(4)})
    assert list(client.kv_list(part)[part]) == [most]
    long = "n" * (tq.MAX_NAME_BYTES + 1)
    x = np.ones((1, 4))

    def no_request(*a, **kw):
        raise AssertionError("a request went out")
    monkeypatch.setattr(tq.wire.Conn, "call", no_request)
    monkeypatch.setattr(tq.wire.Conn, "send_only", no_request)
    for what, call in (("key", lambda: client.kv_batch_put(["a", long], part, {"x": np.ones((2, 4))})),
                       ("key", lambda: client.kv_put(long, part, {"x": x[0]})),
                       ("key", lambda: client.kv_batch_put([long], part, tags=[{"a": 1}])),
                       ("partition", lambda: client.kv_batch_put(["a"], long, {"x": x})),
                       ("partition", lambda: client.get_meta(["x"], 1, long, mode="insert")),
                       ("field name", lambda: client.kv_batch_put(["a"], part, {long: x})),
                       ("task_name", lambda: client.get_meta(["x"], 1, part, task_name=long))):
        with pytest.raises(tq.InvalidError, match=f"{what} 'nnnn.* is {len(long)} bytes long, past the limit of "
                                                  f"{tq.MAX_NAME_BYTES}") as ei:
            call()
        assert len(str(ei.value)) < 1024


@pytest.mark.parametrize("rows, what", [
    (["x", None], r"row 1 is None, not str or bytes"),
    ([b"x", 3], r"row 1 is a int, not str or bytes"),
    (["ok", "caf\udce9"], r"row 1 is not valid Unicode text \(surrogates not allowed"),
    ([np.arange(2), None], r"row 1 is None"),
    ([np.arange(2), np.array([None])], r"row 1: an array of object"),
    ([1, 2 ** 70], r"row 1: an array of object"),
    ([np.arange(2.), np.arange(2)], r"mixes dtypes \['float64', 'int64'\] \(row 0 float64, row 1 int64\)"),
])
def test_bad_row_of_a_list_field_names_its_row_and_nothing_is_stored(client, part, rows, what):
    # Before: a list field's bad row was named by nothing but the field:
    # ["x", None] said "an array of <U1 is not a tensor field (use a list
    # of str or bytes)" (the None was the fault, the str row the one
    # named), [arr, None] "an array of object", and a str with a lone
    # surrogate (a filename decoded with surrogateescape) raised a bare
    # UnicodeEncodeError naming neither the field nor the row.
    with pytest.raises(tq.InvalidError, match=what) as ei:
        client.kv_batch_put(["a", "b"], part, {"myfield": rows})
    assert ei.value.fields == ["myfield"] and "field 'myfield'" in str(ei.value)
    assert client.kv_list(part) == {}
    # Good rows of each kind round-trip as they were.
    client.kv_batch_put(["a", "b"], part, {"s": ["é日", b"\x00\xff"], "r": [np.arange(2)[::-1], np.int64(3)]})
    got = client.kv_batch_get(["a", "b"], part)
    assert got["s"] == ["é日".encode(), b"\x00\xff"]
    assert [r.tolist() for r in got["r"]] == [[1, 0], 3]


def test_typed_and_as_dtype_refuse_what_has_no_bits_and_take_torch_tensors(client, part):
    # Before: tq.Typed(np.array([None, None]), "uint64") was made, and the
    # put raised a bare TypeError from numpy ("Cannot change data-type for
    # object array"), naming no field; tq.Typed(np.array(["ab", "cd"]),
    # "float64") stored the str's UCS-4 code points as float64 bits,
    # silently; tq.Typed of a torch bfloat16 tensor raised torch's bare
    # "Got unsupported ScalarType BFloat16"; tq.as_dtype(a, "bf16") a bare
    # KeyError.
    for bad, want in ((np.array([None, None]), "an array of object"), (np.array(["ab", "cd"]), "an array of <U2"),
                      ([b"abcdefgh"], "an array of |S8")):
        with pytest.raises(tq.InvalidError, match=want):
            tq.Typed(bad, "float64")
        with pytest.raises(tq.InvalidError, match=want):
            tq.as_dtype(bad, "float64")
    with pytest.raises(tq.InvalidError, match="unknown TQ dtype 'bf16'"):
        tq.as_dtype(np.zeros(2, np.uint16), "bf16")
    torch = pytest.importorskip("torch")
    t = torch.tensor([[1.0, -2.5], [0.0, 3.0]], dtype=torch.bfloat16)
    bits = t.view(torch.int16).numpy().view(np.uint16)
    client.kv_batch_put(["a", "b"], part, {"t": tq.Typed(t.t(), "bfloat16"),
                                           "u": tq.Typed(t.view(torch.int16), "bfloat16")})
    assert tq.as_dtype(t, "bfloat16").view(np.uint16).tolist() == bits.tolist()
    got = client.kv_batch_get(["a", "b"], part)
    assert got["t"].view(np.uint16).tolist() == bits.T.tolist()
    assert got["u"].view(np.uint16).tolist() == bits.tolist()


def test_masked_array_is_refused_and_nothing_is_stored(client, part):
    # Before: np.asarray took a masked array's data and dropped its mask,
    # so the value it hid (2 here) was stored as if valid, without a word.
    masked = np.ma.array([1, 2], mask=[0, 1])
    with pytest.raises(tq.InvalidError, match=r"a masked array \(1 of 2 values masked\)"):
        client.kv_batch_put(["a", "b"], part, {"f": masked})
    with pytest.raises(tq.InvalidError, match=r"row 1: a masked array \(1 of 2 values masked\)"):
        client.kv_batch_put(["a", "b"], part, {"f": [np.ma.array([1.0]), np.ma.array([2.0, 3.0], mask=[1, 0])]})
    with pytest.raises(tq.InvalidError, match=r"a masked array \(1 of 2 values masked\)"):
        tq.Typed(masked, "int64")
    assert client.kv_list(part) == {}
    # One that masks nothing loses nothing: it is stored as its data.
    client.kv_batch_put(["a", "b"], part, {"f": np.ma.array([1, 2])})
    assert client.kv_batch_get(["a", "b"], part)["f"].tolist() == [1, 2]
