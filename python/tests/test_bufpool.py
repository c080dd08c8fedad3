"""The pool behind gets into fresh arrays: a dropped result's memory is
reused, never while anything still refers to it."""

import gc
import os

import numpy as np
import pytest

from tq import bufpool
from tq.bufpool import BufferPool, size_class

MiB = 1 << 20


def addr(a):
    return a.__array_interface__["data"][0]


def test_size_classes():
    for n in [MiB, MiB + 1, 3 * MiB - 100, 288 * MiB, (1 << 33) + 7]:
        c = size_class(n)
        assert n <= c <= n * 1.125, n
        assert c % 4096 == 0
    assert size_class(3 * MiB - 100) == size_class(3 * MiB - 1)


def test_reused_only_once_dropped():
    p = BufferPool(1 << 30)
    a = p.alloc(3 * MiB)
    at = addr(a)
    view = a[16:32].view(np.float32)
    rows = a.view(np.int64).reshape(-1, 8)
    del a
    gc.collect()
    assert p.idle_bytes == 0, "its views still refer to it"
    b = p.alloc(3 * MiB)
    assert addr(b) != at
    b[:] = 7
    del view, rows
    assert p.idle_bytes == size_class(3 * MiB)
    c = p.alloc(3 * MiB - 4096)  # the same size class
    assert addr(c) == at and p.idle_bytes == 0
    assert (p.hits, p.misses) == (1, 2)
    assert p.alloc(5 * MiB) is not None and p.misses == 3, "another class is not reused"


def test_a_tensor_holds_it():
    torch = pytest.importorskip("torch")
    p = BufferPool(1 << 30)
    a = p.alloc(2 * MiB)
    t = torch.from_numpy(a.view(np.float32))
    t.fill_(1.5)
    del a
    assert p.idle_bytes == 0
    b = p.alloc(2 * MiB)
    b[:] = 0
    assert bool((t == 1.5).all()), "a new get does not write what a tensor still shows"
    del t
    assert p.idle_bytes == size_class(2 * MiB)


def test_keeps_at_most_max_idle_oldest_out_first():
    p = BufferPool(5 * MiB)
    a, b, c = p.alloc(2 * MiB), p.alloc(2 * MiB), p.alloc(2 * MiB)
    ats = [addr(a), addr(b), addr(c)]
    del a, b, c  # dropped in that order: a is the oldest
    assert p.idle_bytes == 4 * MiB
    b, c = p.alloc(2 * MiB), p.alloc(2 * MiB)
    assert {addr(b), addr(c)} == set(ats[1:]) and p.hits == 2, "the oldest went first"
    p.alloc(2 * MiB)
    assert p.misses == 4
    off = BufferPool(0)
    x = off.alloc(2 * MiB)
    del x
    assert off.idle_bytes == 0, "max_idle 0 keeps nothing"
    with pytest.raises(ValueError, match="negative"):
        BufferPool(-1)


def test_small_ones_are_numpy_s():
    p = BufferPool(1 << 30)
    a = p.alloc(1000)
    assert a.flags.owndata and len(a) == 1000
    del a
    assert p.idle_bytes == 0


def test_env(monkeypatch):
    monkeypatch.setenv(bufpool.ENV, "12345")
    assert bufpool._max_idle_from_env() == 12345
    monkeypatch.setenv(bufpool.ENV, "1GiB")
    with pytest.raises(ValueError, match=r"\$TQ_GET_POOL_BYTES='1GiB' is not a number of bytes"):
        bufpool._max_idle_from_env()
    monkeypatch.setenv(bufpool.ENV, "-1")
    with pytest.raises(ValueError, match="negative"):
        bufpool._max_idle_from_env()


def test_a_forked_child_starts_empty():
    p = BufferPool(1 << 30)
    a = p.alloc(2 * MiB)
    del a
    assert p.idle_bytes == 2 * MiB
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok = p.idle_bytes == 0
        b = p.alloc(2 * MiB)
        b[:] = 3
        del b
        ok = ok and p.idle_bytes == 2 * MiB
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(pid, 0)
    assert p.idle_bytes == 2 * MiB, "the parent keeps its own"


def test_gets_reuse_a_dropped_result(client, part):
    rng = np.random.default_rng(5)
    x1 = rng.random((64, 8192), dtype=np.float32)  # 2 MiB
    x2 = rng.random((64, 8192), dtype=np.float32)
    keys = [f"k{i}" for i in range(64)]
    client.kv_batch_put(keys, part, {"x": x1})
    first = client.kv_batch_get(keys, part)["x"]
    np.testing.assert_array_equal(first, x1)
    at = addr(first)
    row = first[3]
    del first
    client.kv_batch_put(keys, part, {"x": x2})
    second = client.kv_batch_get(keys, part)["x"]
    np.testing.assert_array_equal(second, x2)
    assert addr(second) != at, "a row of the first result is still held"
    np.testing.assert_array_equal(row, x1[3], "and it still shows what it did")
    del row, second
    third = client.kv_batch_get(keys, part)["x"]
    np.testing.assert_array_equal(third, x2)
    hits = bufpool.pool.hits
    del third
    again = client.kv_batch_get(keys, part)["x"]
    np.testing.assert_array_equal(again, x2)
    assert bufpool.pool.hits > hits, "a dropped result's memory serves the next get"


def test_dropped_beyond_max_idle_are_let_go_at_once():
    """Mappings dropped past max_idle are unmapped as they are dropped,
    not kept until the pool's next large get: a process that made 8 MiB of
    large gets, dropped them, and makes no more (or only small ones),
    holds at most max_idle of them. Before, every dropped mapping waited
    in the returned queue for the next large alloc."""
    import weakref
    p = BufferPool(2 * MiB)
    held = [p.alloc(MiB) for _ in range(8)]
    maps = [weakref.ref(a.base.obj) for a in held]  # the mmap under the memoryview
    del held
    gc.collect()
    p.alloc(1000)  # a small get files nothing either
    alive = sum(r() is not None for r in maps)
    assert alive * MiB <= 2 * MiB, f"{alive} MiB of dropped mappings held, max_idle 2 MiB"
    assert p.idle_bytes == 2 * MiB


def test_a_drop_while_another_thread_holds_the_lock_is_filed_as_it_lets_go():
    """A mapping dropped while another thread holds the pool's lock (and
    is past filing) is filed when that thread lets go. Before, it stayed
    in the returned queue until the pool's next large get: one mapping
    held past max_idle, for good in a process that makes no more."""
    import threading
    import weakref
    p = BufferPool(0)
    a = p.alloc(MiB)
    m = weakref.ref(a.base.obj)
    inside, go = threading.Event(), threading.Event()
    real = p._file

    def file():  # the other thread, holding the lock, past filing
        real()
        inside.set()
        go.wait(30)
    p._file = file
    th = threading.Thread(target=lambda: p.idle_bytes)
    th.start()
    assert inside.wait(30)
    del a  # dropped here, while the other thread holds the lock
    assert m() is not None, "not filed while the lock is held"
    p._file = real
    go.set()
    th.join(30)
    assert not th.is_alive()
    assert m() is None, "the dropped mapping is still held after the lock was let go"
