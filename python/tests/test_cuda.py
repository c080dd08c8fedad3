"""GPU tensors through the Python client (inventory §9, requirement 30:
GPU tensors accepted, copied to host): a CUDA tensor put through the KV
and batch APIs reads back bit-exact in every dtype, contiguous or not,
dense or ragged, and a loader with pin_memory hands out pinned tensors
that reach the GPU unchanged.

These need a CUDA device: where torch sees none (CI) they are skipped,
with the reason; on a GPU host `make pytest` runs them."""

import numpy as np
import pytest

import tq

torch = pytest.importorskip("torch", reason="torch is not installed: the GPU paths are untested here")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="torch sees no CUDA device: the GPU paths are untested here")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int8,
          torch.uint8, torch.bool] + [getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)]


def _bits(t):
    """t's bytes, as the host sees them (NaN payloads and -0.0 included)."""
    t = t.detach().cpu().contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes()


def _cuda(dtype, shape, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, device="cuda", generator=g).bool()
    if dtype.is_floating_point:
        x = torch.randn(shape, device="cuda", generator=g, dtype=torch.float32)
        k = min(4, x.numel())
        x.view(-1)[:k] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0], device="cuda")[:k]
        return x.to(dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, device="cuda", generator=g).to(dtype)


def _tensor(a):
    """A got field as a torch tensor of its dtype (bfloat16 and float8 come back as numpy with a tq_dtype)."""
    return tq.columns.to_tensor(np.ascontiguousarray(a))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_cuda_tensor_put_and_get(client, part, dtype):
    x = _cuda(dtype, (8, 33), 1)
    keys = [f"k{i}" for i in range(8)]
    client.kv_batch_put(keys, part, {"x": x})
    t = _tensor(client.kv_batch_get(keys, part)["x"])
    assert t.dtype == dtype and tuple(t.shape) == (8, 33)
    assert _bits(t) == _bits(x)
    # And back onto the device, unchanged.
    assert _bits(t.cuda()) == _bits(x)


def test_cuda_tensors_not_contiguous(client, part):
    """Transposed and strided views of device memory are put as their values, row by row."""
    base = _cuda(torch.float32, (16, 24), 2)
    for name, x in {"t": base.t(), "s": base[:, ::3], "n": base.t()[2:10]}.items():
        assert not x.is_contiguous()
        keys = [f"{name}{i}" for i in range(x.shape[0])]
        client.kv_batch_put(keys, part, {"x": x})
        assert _bits(_tensor(client.kv_batch_get(keys, part)["x"])) == _bits(x)


def test_cuda_ragged_rows_and_one_key(client, part):
    rows = [_cuda(torch.bfloat16, (n, 4), 3 + n) for n in (1, 5, 2)]
    client.kv_batch_put(["a", "b", "c"], part, {"r": rows})
    got = client.kv_batch_get(["a", "b", "c"], part)["r"]
    assert [_bits(_tensor(g)) for g in got] == [_bits(r) for r in rows]
    one = _cuda(torch.float16, (7,), 9)
    client.kv_put("solo", part, {"y": one})
    assert _bits(_tensor(client.kv_batch_get(["solo"], part)["y"])[0]) == _bits(one)


def test_cuda_put_then_pinned_loader(server, part):
    """The batch API takes device tensors; a StreamingDataLoader with
    pin_memory=True yields page-locked host tensors that copy to the GPU
    asynchronously and arrive unchanged."""
    x = _cuda(torch.float32, (8, 1000), 5)
    with server.client() as c:
        c.put({"x": x}, partition_id=part)
        ds = tq.StreamingDataset(8, 4, ["x"], part, "train", client=c)
        dl = tq.StreamingDataLoader(ds, pin_memory=True)
        seen = []
        for data, meta in dl:
            t = data["x"]
            assert t.is_pinned(), "pin_memory=True gave a pageable tensor"
            seen.append(t.cuda(non_blocking=True))
            if sum(s.shape[0] for s in seen) == 8:
                break
        torch.cuda.synchronize()
        got = torch.cat(seen)
        # Rows come in the order the sampler hands them out: compare as sets of rows.
        want = sorted(_bits(r) for r in x)
        assert sorted(_bits(r) for r in got) == want


def test_get_to_the_gpu(client, part):
    """kv_batch_get(device="cuda"): dense fields of every dtype land on the
    GPU bit-exact (page-locked staging, asynchronous copies); ragged rows
    as lists of CUDA tensors; gets in a row do not overwrite each other's
    staging before their copies are done."""
    import gc
    fields = {f"f{i}": _cuda(d, (6, 17), 20 + i) for i, d in enumerate(DTYPES)}
    fields["r"] = [_cuda(torch.float32, (n,), 40 + n) for n in (3, 1, 4, 1, 5, 9)]
    keys = [f"k{i}" for i in range(6)]
    client.kv_batch_put(keys, part, fields)
    gots = [client.kv_batch_get(keys, part, device="cuda") for _ in range(4)]
    gc.collect()  # the staging blocks go back to torch's cache, maybe to the next get
    torch.cuda.synchronize()
    for got in gots:
        for name, want in fields.items():
            if name == "r":
                assert all(g.is_cuda for g in got["r"])
                assert [_bits(g) for g in got["r"]] == [_bits(w) for w in want]
            else:
                assert got[name].is_cuda and got[name].dtype == want.dtype, name
                assert _bits(got[name]) == _bits(want), name


def test_get_data_to_the_gpu(server, part):
    """The batch API: get_data(meta, device="cuda") after a put of device tensors."""
    x = _cuda(torch.bfloat16, (5, 64), 60)
    with server.client() as c:
        meta = c.put({"x": x, "y": _cuda(torch.int32, (5, 2), 61)}, partition_id=part)
        got = c.get_data(meta, fields=["x"], device="cuda")
        torch.cuda.synchronize()
        assert list(got) == ["x"] and got["x"].is_cuda and _bits(got["x"]) == _bits(x)
