"""The streaming loader over a real tq serve."""

import threading
import time
import weakref

import numpy as np
import pytest

import tq
from tq import loader


def test_stream_micro_batches_until_consumed(server, transport, part):
    total, bs, mbs = 12, 4, 3
    with server.client() as c:
        # Rows made up front, so that "all consumed" is known early.
        m = c.get_meta(["x", "r"], total, part, mode="insert")

        def produce():
            for i in range(0, total, 2):
                time.sleep(0.02)
                c.put({"x": np.arange(i, i + 2, dtype=np.float32),
                       "r": [np.arange(i), np.arange(i + 1)]}, metadata=m.select_samples([i, i + 1]))
        th = threading.Thread(target=produce)
        th.start()
        with server.client(transport=transport) as cc:
            it = tq.StreamIterator(bs, mbs, ["x", "r"], part, "train", dp_rank=0,
                                   should_check_consumption_status=True, client=cc, fetch_timeout=0.5)
            seen, sizes = [], []
            for data, meta in it:
                assert data["x"].shape[0] == meta.size == len(data["r"])
                sizes.append(meta.size)
                seen.extend(data["x"].tolist())
            th.join()
            assert sorted(seen) == list(range(total))
            assert sizes == [3, 1] * (total // bs)
            assert len(it.get_buffer()) == total // bs
            # reset() replays the buffered batches.
            it.reset()
            replay = [d["x"].tolist() for d, _ in it]
            assert sum(replay, []) == seen


def test_stream_ends_with_a_done_partition(server, part):
    """A partition marked done ends the iteration once the task has had
    every row (it raised DoneError instead)."""
    with server.client() as c:
        c.put({"x": np.arange(6, dtype=np.float32)}, partition_id=part)
        c.mark_done(part)
        it = tq.StreamIterator(4, 2, ["x"], part, "train", dp_rank=0, client=c, fetch_timeout=5)
        seen = [x for data, _ in it for x in data["x"].tolist()]
        assert sorted(seen) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_stream_copy_false_reads_views(client, transport, part):
    """StreamIterator(copy=False) reads its batches as get_data(copy=False)
    does: a tq.View (read-only arrays in the unit's memory over shared
    memory); copy=True, the default, owned arrays."""
    client.put({"x": np.arange(4, dtype=np.float32)}, partition_id=part)
    client.mark_done(part)
    for copy in (True, False):
        it = tq.StreamIterator(4, 2, ["x"], part, f"t-{copy}", client=client, fetch_timeout=5, copy=copy)
        got = [(data["x"].tolist(), data["x"].flags.writeable) for data, _ in it]
        assert [x for xs, _ in got for x in xs] == [0.0, 1.0, 2.0, 3.0]
        assert isinstance(it.get_buffer()[0][0], tq.View) == (not copy)
        if transport == "shm":
            assert all(w == copy for _, w in got)
        for data, _ in it.get_buffer():
            if not copy:
                data.release()


def test_bad_arguments():
    with pytest.raises(tq.InvalidError):
        tq.StreamIterator(4, 0, ["x"], "p", "t")
    with pytest.raises(tq.InvalidError):
        tq.StreamIterator(4, 2, [], "p", "t")
    with pytest.raises(tq.InvalidError):
        tq.StreamIterator(4, 2, ["x"], "p", "t", dp_rank=-1)


@pytest.mark.parametrize("arg,value", [
    ("batch_size", 2.5), ("batch_size", "4"), ("batch_size", True), ("batch_size", 0),
    ("micro_batch_size", 1.5), ("micro_batch_size", -2),
    ("dp_rank", 0.5),
    ("fetch_timeout", float("nan")), ("fetch_timeout", -1.0), ("fetch_timeout", float("inf")), ("fetch_timeout", "1"),
    ("missing_partition_warn_s", float("nan")), ("missing_partition_warn_s", -5),
])
def test_bad_loader_arguments_are_named(arg, value):
    """Refused where the loader is built, naming the argument: a float
    batch size was taken (and its batches split at float indexes), a NaN
    or negative timeout or warning time a wait, or a warning at once."""
    kw = {"batch_size": 4, "micro_batch_size": 2}
    kw[arg] = value
    with pytest.raises(tq.InvalidError, match=arg):
        tq.StreamIterator(data_fields=["x"], partition_id="p", task_name="t", **kw)


def test_loader_arguments_that_are_fine():
    it = tq.StreamIterator(np.int64(4), 2, ["x"], "p", "t", dp_rank=np.int32(1), fetch_timeout=0,
                           missing_partition_warn_s=float("inf"))
    assert (it.batch_size, it.dp_rank) == (4, 1) and type(it.batch_size) is int
    assert tq.StreamIterator(4, 2, ["x"], "p", "t", fetch_timeout=None, missing_partition_warn_s=None)


def test_split():
    meta = tq.BatchMeta(range(5), ["p"] * 5)
    parts = loader.split({"x": np.arange(5), "s": list("abcde")}, meta, 2)
    assert [p[1].size for p in parts] == [2, 2, 1]
    assert parts[2][0]["s"] == ["e"] and parts[1][0]["x"].tolist() == [2, 3]


def test_torch_dataset(server, part):
    torch = pytest.importorskip("torch", reason="torch is not installed: the torch IterableDataset is untested here")
    with server.client() as c:
        c.put({"x": np.arange(4, dtype=np.float32)}, partition_id=part)
        ds = tq.StreamingDataset(4, 2, ["x"], part, "t", client=c)
        assert isinstance(ds, torch.utils.data.IterableDataset)
        data, meta = next(iter(ds))
        assert torch.equal(data["x"], torch.tensor([0.0, 1.0]))


def test_torch_dataloader(server, part):
    """StreamingDataLoader with its defaults (no prefetch_factor: torch
    before 2.0 refuses one without workers) yields the dataset's
    micro-batches as they are."""
    torch = pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    with server.client() as c:
        c.put({"x": np.arange(6, dtype=np.float32)}, partition_id=part)
        dl = tq.StreamingDataLoader(tq.StreamingDataset(6, 2, ["x"], part, "t", client=c))
        assert isinstance(dl, torch.utils.data.DataLoader)
        got = []
        for data, meta in dl:
            assert isinstance(data["x"], torch.Tensor) and meta.size == 2
            got += data["x"].tolist()
            if len(got) == 6:
                break
        assert sorted(got) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]



def _done_rows(server, part, n):
    """Rows 0..n-1 of field x (int64) in partition part of server, marked
    done."""
    with server.client() as c:
        c.put({"x": np.arange(n, dtype=np.int64)}, partition_id=part)
        c.mark_done(part)


@pytest.fixture(scope="module")
def rank_aware_server():
    from conftest import Server
    s = Server(extra=["--sampler", "rank-aware", "--in-memory"])
    yield s
    s.stop()


def test_rank_aware_groups(rank_aware_server, part):
    """Under tq serve --sampler rank-aware, the ranks of one data-parallel
    group (same dp_rank) get the same batches; another group gets others."""
    s = rank_aware_server
    with s.client() as c:
        c.put({"x": np.arange(8, dtype=np.int64)}, partition_id=part)

        def first_batches(dp_rank, k):
            it = tq.StreamIterator(2, 2, ["x"], part, "train", dp_rank=dp_rank, client=c, fetch_timeout=0.3)
            out = []
            for data, _ in it:
                out.append(data["x"].tolist())
                if len(out) == k:
                    return out
        a0 = first_batches(0, 2)
        a1 = first_batches(0, 2)  # a peer of the same group
        b = first_batches(1, 2)
    assert a0 == a1
    assert not set(sum(a0, [])) & set(sum(b, []))
    assert sorted(sum(a0, []) + sum(b, [])) == list(range(8))


def test_rank_aware_end_when_consumed_peer_race(rank_aware_server, part):
    """A rank whose wait for a batch timed out, and whose peer (same
    dp_rank) fetched that batch index before the rank checked consumption,
    still gets the batch: the check says all is consumed, but the peer's
    batch is the group's, and the rank asks once more before it ends."""
    s = rank_aware_server
    with s.client() as c, s.client() as cc:
        m = c.get_meta(["x"], 4, part, mode="insert")
        c.put({"x": np.arange(2, dtype=np.int64)}, metadata=m.select_samples([0, 1]))
        peer = tq.StreamIterator(4, 4, ["x"], part, "train", dp_rank=0, client=c, fetch_timeout=5)
        check = cc.check_consumption_status

        def peer_first(task, partition):
            # The rest is produced and the peer takes batch 0 in between.
            c.put({"x": np.arange(2, 4, dtype=np.int64)}, metadata=m.select_samples([2, 3]))
            got = peer._fetch()
            assert got is not None and got is not loader._DONE
            return check(task, partition)
        cc.check_consumption_status = peer_first
        it = tq.StreamIterator(4, 4, ["x"], part, "train", dp_rank=0, should_check_consumption_status=True,
                               client=cc, fetch_timeout=0.3)
        got = [data["x"].tolist() for data, _ in it]
        assert got == [[0, 1, 2, 3]]


def test_stream_until_consumed_ends_with_a_short_batch(server, part):
    """With should_check_consumption_status, rows made up front whose
    number is not a multiple of batch_size (10 rows, batches of 4) end
    with a short last batch once all are produced, as the reference's
    loader yields them, though nobody marks the partition done (its
    fetches say end_when_consumed): the last 2 rows were never fetched,
    and iteration never ended."""
    with server.client() as c:
        m = c.get_meta(["x"], 10, part, mode="insert")
        c.put({"x": np.arange(10, dtype=np.float32)}, metadata=m)
        it = tq.StreamIterator(4, 4, ["x"], part, "train", dp_rank=0, should_check_consumption_status=True,
                               client=c, fetch_timeout=0.3)
        got = []
        th = threading.Thread(target=lambda: got.extend(data["x"].tolist() for data, _ in it), daemon=True)
        th.start()
        th.join(30)
        assert not th.is_alive(), f"iteration never ended after batches {got}"
        assert [len(b) for b in got] == [4, 4, 2]
        assert sorted(sum(got, [])) == list(range(10))


def test_stream_gives_back_a_batch_it_could_not_read(server, part):
    """A batch whose rows were fetched but whose read failed (a unit that
    could not be reached) is given back to the task, as the Go loader
    does: iterating again gets its rows. They stayed consumed, and the
    iteration ended without them. (A failed read has the loader fetch
    again once, in case a peer cleared the partition: the unit fails that
    read too, and the iteration ends with its error.)"""
    with server.client() as c:
        c.put({"x": np.arange(4, dtype=np.float32)}, partition_id=part)
        c.mark_done(part)
        get_data, reads = c.get_data, []

        def unreachable(meta, **kw):
            reads.append(meta.size)
            if len(reads) == 2:
                c.get_data = get_data
            raise tq.UnavailableError("storage unit unreachable", op="get_data")
        c.get_data = unreachable
        it = tq.StreamIterator(4, 2, ["x"], part, "train", client=c, fetch_timeout=5)
        with pytest.raises(tq.UnavailableError):
            next(iter(it))
        assert reads == [4, 4], "the rows given back were not fetched again"
        seen = [x for data, _ in it for x in data["x"].tolist()]
        assert sorted(seen) == [0.0, 1.0, 2.0, 3.0]


def test_dataloader_workers_take_turns(rank_aware_server, part):
    """A StreamingDataLoader with two workers under a rank-aware sampler
    yields every row once: worker w asks for batch indexes w, w + 2, ...
    Both used to ask for batch 0, 1, ..., and the sampler, which gives a
    batch index's rows to every fetch of the group, gave both the same
    batches: each row twice."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    s = rank_aware_server
    with s.client() as c:
        c.put({"x": np.arange(16, dtype=np.int64)}, partition_id=part)
        c.mark_done(part)
    ds = tq.StreamingDataset(4, 2, ["x"], part, "train", dp_rank=0, address=s.address, token=s.token,
                             fetch_timeout=0.3)
    got = [data["x"].tolist() for data, _ in tq.StreamingDataLoader(ds, num_workers=2)]
    assert sorted(sum(got, [])) == list(range(16))
    # In turn: worker 0's batch 0 (two micro-batches interleaved with
    # worker 1's batch 1), then batches 2 and 3.
    assert len(got) == 8


def test_dataloader_reset_and_step_reach_persistent_workers(server, part):
    """With persistent workers, the loader's reset() and step() reach the
    workers' datasets, at the next iteration: reset replays the batches
    each worker buffered, step moves them to another partition. They used
    to change only the main process's copy, which iterates nothing: the
    workers kept their place (an epoch after reset yielded nothing, the
    partition being done) and their partition."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    other = part + "-next"
    with server.client() as c:
        c.put({"x": np.arange(16, dtype=np.int64)}, partition_id=part)
        c.mark_done(part)
        c.put({"x": np.arange(100, 108, dtype=np.int64)}, partition_id=other)
        c.mark_done(other)
    ds = tq.StreamingDataset(4, 2, ["x"], part, "train", address=server.address, token=server.token,
                             fetch_timeout=0.3)
    dl = tq.StreamingDataLoader(ds, num_workers=2, persistent_workers=True)

    def epoch():
        return [data["x"].tolist() for data, _ in dl]
    first = epoch()
    assert sorted(sum(first, [])) == list(range(16))
    assert epoch() == [], "without reset, the done partition has nothing more"
    dl.reset()
    replay = epoch()
    assert sorted(sum(replay, [])) == list(range(16)), "reset did not replay the workers' buffers"
    dl.step(other)
    assert sorted(sum(epoch(), [])) == list(range(100, 108)), "step did not move the workers"
    dl.reset()
    assert sorted(sum(epoch(), [])) == list(range(100, 108))


def test_dataloader_calls_that_cannot_reach_workers_raise(server, part):
    """Without persistent workers each iteration starts new workers, whose
    buffers end with them: reset() has nothing to replay, and get_buffer()
    (the main process buffers nothing) has nothing to show; both say so
    rather than do nothing. step() works: the next workers start there."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    other = part + "-next"
    with server.client() as c:
        c.put({"x": np.arange(4, dtype=np.int64)}, partition_id=other)
        c.mark_done(other)
    ds = tq.StreamingDataset(4, 2, ["x"], part, "train", address=server.address, token=server.token,
                             fetch_timeout=0.3)
    dl = tq.StreamingDataLoader(ds, num_workers=2)
    with pytest.raises(tq.NotSupportedError, match="persistent_workers"):
        dl.reset()
    with pytest.raises(tq.NotSupportedError, match="worker"):
        dl.get_buffer()
    dl.step(other)
    assert sorted(x for data, _ in dl for x in data["x"].tolist()) == [0, 1, 2, 3]
    persistent = tq.StreamingDataLoader(ds, num_workers=2, persistent_workers=True)
    with pytest.raises(tq.NotSupportedError, match="worker"):
        persistent.get_buffer()


def test_peer_waits_for_rows_a_failed_read_gives_back(server, part):
    """Two consumers of one task over a done partition. A's read of its
    batch is slow and then fails; meanwhile B takes the rest and finds
    nothing left. B must wait rather than end: A's fetch holds its rows
    until A keeps them, and A gives them back, so B gets them. B used to
    end at once, and A's rows reached no one. (A fetches again once after
    its failed read: it gets the rows again, fails to read them again and
    gives them back, or finds B has them, and ends.)"""
    with server.client() as c:
        c.put({"x": np.arange(6, dtype=np.float32)}, partition_id=part)
        c.mark_done(part)
        with server.client() as ca:
            get_data = ca.get_data
            reading, fail = threading.Event(), threading.Event()

            def slow_then_unreachable(meta, **kw):
                reading.set()
                fail.wait(10)
                raise tq.UnavailableError("storage unit unreachable", op="get_data")
            ca.get_data = slow_then_unreachable
            a = tq.StreamIterator(4, 4, ["x"], part, "train", client=ca, fetch_timeout=5)
            a_err = []

            def run_a():
                try:
                    next(iter(a))
                except (tq.UnavailableError, StopIteration) as e:
                    a_err.append(e)
            th = threading.Thread(target=run_a)
            th.start()
            assert reading.wait(10)
            assert not c.check_consumption_status("train", part), "A's rows are held, not consumed for good"
            b = tq.StreamIterator(4, 4, ["x"], part, "train", client=c, fetch_timeout=5)
            seen = []
            for data, _ in b:
                seen.extend(data["x"].tolist())
                if len(seen) == 2:
                    fail.set()  # B waits at the end now: A gives its rows back
            th.join()
            assert a_err
            assert sorted(seen) == [float(i) for i in range(6)]
            assert c.check_consumption_status("train", part)


def test_acknowledge_of_rows_given_back_is_refused(client, part):
    client.put({"x": np.arange(2, dtype=np.float32)}, partition_id=part)
    key = b"k" * 16
    m = client.get_meta(["x"], 2, part, task_name="t", _fetch_key=key, _hold=True)
    assert m.size == 2
    assert not client.check_consumption_status("t", part)
    client._give_back(part, "t", key)
    with pytest.raises(tq.NotFoundError, match="given back"):
        client._acknowledge(part, "t", key)
    key2 = b"j" * 16
    client.get_meta(["x"], 2, part, task_name="t", _fetch_key=key2, _hold=True)
    client._acknowledge(part, "t", key2)
    client._acknowledge(part, "t", key2)  # idempotent
    assert client.check_consumption_status("t", part)


def test_give_back_rows_of_a_held_fetch(client, part):
    """UNCONSUME with indexes (_give_back_rows): two of the four rows of a
    held fetch go back to the task, the fetch keeps the other two, and
    once acknowledged they stay consumed: the next fetch gets exactly the
    two given back and the two never fetched. A row the fetch did not
    take is refused naming it, and nothing goes back."""
    put = client.put({"x": np.arange(6, dtype=np.float32)}, partition_id=part)
    key = b"r" * 16
    m = client.get_meta(["x"], 4, part, task_name="t", _fetch_key=key, _hold=True)
    assert m.size == 4
    with pytest.raises(tq.InvalidError, match="99"):
        client._give_back_rows(part, "t", key, [m.global_indexes[0], 99])
    client._give_back_rows(part, "t", key, m.global_indexes[2:])
    client._give_back_rows(part, "t", key, m.global_indexes[2:])  # idempotent
    client._acknowledge(part, "t", key)
    again = client.get_meta(["x"], 4, part, task_name="t")
    fresh = sorted(set(put.global_indexes) - set(m.global_indexes))
    assert sorted(again.global_indexes) == sorted(list(m.global_indexes[2:]) + fresh)
    assert client.check_consumption_status("t", part)


def test_dataloader_break_gives_back_what_workers_fetched_ahead(server, part):
    """A StreamingDataLoader with workers fetches ahead: batches sit in its
    queue when the loop breaks after the first. Those rows were never
    yielded, so the next consumer of the task must get them, promptly. The
    workers acknowledge each batch as they read it, and the queued rows
    used to stay consumed for good and reach no one; now the workers give
    back, as they exit, what the main process did not take."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    with server.client() as c:
        c.put({"x": np.arange(16, dtype=np.int64)}, partition_id=part)
        c.mark_done(part)
        ds = tq.StreamingDataset(2, 2, ["x"], part, "train", address=server.address, token=server.token,
                                 fetch_timeout=0.3)
        dl = tq.StreamingDataLoader(ds, num_workers=2, prefetch_factor=2)
        taken = []
        for data, _ in dl:
            taken += data["x"].tolist()
            break  # the workers' other fetches were queued: they must come back
        rest = []

        def drain():
            it = tq.StreamIterator(2, 2, ["x"], part, "train", client=c, fetch_timeout=0.3)
            for data, _ in it:
                rest.extend(data["x"].tolist())
        th = threading.Thread(target=drain, daemon=True)
        th.start()
        th.join(20)
        assert not th.is_alive(), f"the task's next consumer waits for held rows (took {taken}, then {rest})"
        assert len(taken) == 2
        assert sorted(taken + rest) == list(range(16))


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent-workers", "new-workers"])
def test_dataloader_second_iteration_after_a_break_loses_nothing(server, part, persistent):
    """A loop that breaks after its first micro-batch, then the loader
    iterated again: every row once, over both.

    Persistent workers do not exit at the break: what they fetched ahead
    and the main process did not take goes back as the next iteration
    starts, and that iteration yields it.

    Without persistent_workers each iteration starts new workers, whose
    count of their fetches starts again at 1, while the main process's
    record of each worker's taken and given-back fetches (shared memory,
    kept across iterations) still had the last iteration's counts: the new
    workers' first batches were dropped by the main process as given back
    already, or left held. And in the old workers' hold group the new ones
    ended without the batches the old ones gave back as they exited."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    with server.client() as c:
        c.put({"x": np.arange(16, dtype=np.int64)}, partition_id=part)
        c.mark_done(part)
    ds = tq.StreamingDataset(2, 2, ["x"], part, "train", address=server.address, token=server.token,
                             fetch_timeout=0.3)
    dl = tq.StreamingDataLoader(ds, num_workers=2, prefetch_factor=2, persistent_workers=persistent)
    taken = []
    for data, _ in dl:
        taken += data["x"].tolist()
        break
    rest = [x for data, _ in dl for x in data["x"].tolist()]
    assert len(taken) == 2
    assert sorted(taken + rest) == list(range(16)), f"took {taken}, then {rest}"


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent-workers", "new-workers"])
def test_dataloader_rank_aware_second_iteration_yields_each_row_once(rank_aware_server, part, persistent):
    """Under a rank-aware sampler, a loop that breaks after a few
    micro-batches and the loader iterated again: every row once, over
    both. The sampler keeps each (dp_rank, batch index) batch for the
    group, so the batch index must not go back for the rank. New workers
    (no persistent_workers) counted their batch indexes from their worker
    id again: the second iteration was handed the first one's batches
    again (each row it had yielded, twice). Now each new worker goes on
    from the batch after the last one the main process took of the last
    iteration's worker in its place; those it had fetched ahead and given
    back it fetches again (the sampler keeps them for the index)."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    s = rank_aware_server
    _done_rows(s, part, 24)
    ds = tq.StreamingDataset(2, 2, ["x"], part, "train", dp_rank=0, address=s.address, token=s.token,
                             fetch_timeout=0.3)
    dl = tq.StreamingDataLoader(ds, num_workers=2, prefetch_factor=2, persistent_workers=persistent)
    taken = []
    for data, _ in dl:
        taken += data["x"].tolist()
        if len(taken) == 6:
            break
    rest = []
    th = threading.Thread(target=lambda: rest.extend(x for data, _ in dl for x in data["x"].tolist()), daemon=True)
    th.start()
    th.join(60)
    assert not th.is_alive(), f"the second iteration never ended (took {taken}, then {rest})"
    assert sorted(taken + rest) == list(range(24)), f"took {taken}, then {rest}"


def test_dataloader_rank_aware_worker_that_ends_first_loses_no_batch(rank_aware_server, part):
    """Under a rank-aware sampler, a worker that runs out of batches while
    the main process still waits for a slower sibling's: every row once.

    Torch stops such a worker (without persistent_workers) as soon as its
    end arrives, though its last batch waits in the main process behind
    the sibling's. The worker gave that batch back as it exited, and the
    main process then dropped it; the sampler keeps the batch for the
    group, so its rows went to no one (about 3 runs in 100 of
    test_dataloader_rank_aware_second_iteration_yields_each_row_once).
    Worker 1 here fetches slowly, so that worker 0 always ends first."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")

    class SlowSecondWorker(tq.StreamingDataset):
        def _fetch(self, wait=True):
            if self._worker == 1:
                time.sleep(0.3)
            return super()._fetch(wait)

    s = rank_aware_server
    _done_rows(s, part, 12)
    ds = SlowSecondWorker(2, 2, ["x"], part, "train", dp_rank=0, address=s.address, token=s.token,
                          fetch_timeout=0.3)
    dl = tq.StreamingDataLoader(ds, num_workers=2, prefetch_factor=2)
    got = []
    th = threading.Thread(target=lambda: got.extend(x for data, _ in dl for x in data["x"].tolist()), daemon=True)
    th.start()
    th.join(60)
    assert not th.is_alive(), f"the iteration never ended (took {got})"
    assert sorted(got) == list(range(12)), f"took {got}"


def test_dataloader_reset_does_not_replay_a_dropped_batch(server, part):
    """With persistent workers, a batch the main process dropped because
    the controller had given its rows back before it was acknowledged (the
    hold outlived its TTL: the rows are the task's again, and the workers
    fetch them again) is not in the replay after reset(): every row once
    per epoch."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    _done_rows(server, part, 8)
    ds = tq.StreamingDataset(2, 2, ["x"], part, "train", address=server.address, token=server.token,
                             fetch_timeout=0.3)
    dl = tq.StreamingDataLoader(ds, num_workers=2, persistent_workers=True)
    main = ds._get_client()
    acknowledge, gave_back = main._acknowledge, []

    def given_back_first(partition, task, key):
        if not gave_back:
            gave_back.append(key)
            main._give_back(partition, task, key)
        return acknowledge(partition, task, key)
    main._acknowledge = given_back_first
    first = [x for data, _ in dl for x in data["x"].tolist()]
    assert gave_back and sorted(first) == list(range(8))
    dl.reset()
    replay = [x for data, _ in dl for x in data["x"].tolist()]
    assert sorted(replay) == list(range(8)), f"replayed {replay}"


@pytest.mark.parametrize("sampler", ["default", "rank-aware"])
@pytest.mark.parametrize("workers,persistent", [(0, False), (1, False), (1, True), (2, False), (2, True)],
                         ids=["no-workers", "1-new", "1-persistent", "2-new", "2-persistent"])
def test_dataloader_break_mid_batch_yields_the_batch_again(request, part, workers, persistent, sampler):
    """Batches of 4 split into micro-batches of 2: a loop that breaks
    after the first micro-batch, then the loader iterated again, which
    yields every row the loop has not had, once. With workers the main
    process gives back the other rows of the batch it left half-taken
    (UNCONSUME with indexes) and keeps the two it yielded; under a
    rank-aware sampler, which keeps the batch for the group (not held),
    the batch index is yielded again whole (its first micro-batch twice,
    no row lost). A reset() after replays every row once. With workers
    the whole batch used to be given back under any sampler, so its first
    micro-batch came twice. The main process used to
    keep (acknowledge) a worker's batch as it took the first micro-batch,
    and without workers the iterator went on past the batch: its other
    micro-batch was never yielded, yet its rows stayed consumed for the
    task."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    server = request.getfixturevalue("rank_aware_server" if sampler == "rank-aware" else "server")
    _done_rows(server, part, 16)
    ds = tq.StreamingDataset(4, 2, ["x"], part, "train", dp_rank=0, address=server.address, token=server.token,
                             fetch_timeout=0.3)
    extra = {"prefetch_factor": 2, "persistent_workers": persistent} if workers else {}
    dl = tq.StreamingDataLoader(ds, num_workers=workers, **extra)
    taken = []
    for data, _ in dl:
        taken += data["x"].tolist()
        break

    def epoch():
        got = []
        th = threading.Thread(target=lambda: got.extend(x for data, _ in dl for x in data["x"].tolist()),
                              daemon=True)
        th.start()
        th.join(60)
        assert not th.is_alive(), f"the iteration never ended (took {taken}, then {got})"
        return got
    rest = epoch()
    assert len(taken) == 2
    if workers and sampler == "rank-aware":
        assert sorted(rest) == list(range(16)), f"took {taken}, then {rest}"
    else:
        # The rows the loop has not had, each once: without workers the
        # iterator goes on after the micro-batches it yielded
        # (test_iterator_break_mid_batch_goes_on_after_...); with workers
        # the main process gave back the batch's other rows alone.
        assert sorted(taken + rest) == list(range(16)), f"took {taken}, then {rest}"
    if persistent or not workers:
        dl.reset()
        replay = epoch()
        assert sorted(replay) == list(range(16)), f"replayed {replay}"


@pytest.mark.parametrize("persistent", [False, True], ids=["new", "persistent"])
def test_dataloader_break_mid_batch_failed_give_back_loses_nothing(server, part, monkeypatch, persistent):
    """With a worker, a loop that breaks inside a held batch has the main
    process give back the rows it did not yield; when that fails (here
    every partial give-back raises UnavailableError), the batch goes back
    whole and the next iteration yields every row (the first micro-batch's
    again: at least once, none lost). It used to leave the batch taken
    from its worker and held until the hold's TTL: with a persistent
    worker (which does not exit, so does not give back its fetches) the
    next iteration ended without the batch's rows ([0, 1], then 4..15)."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")

    calls = []

    def fail(*a, **kw):
        calls.append(a)
        raise tq.UnavailableError("controller unreachable (the test's)")
    monkeypatch.setattr(tq.Client, "_give_back_rows", fail)
    _done_rows(server, part, 16)
    ds = tq.StreamingDataset(4, 2, ["x"], part, "train", address=server.address, token=server.token,
                             fetch_timeout=0.3)
    dl = tq.StreamingDataLoader(ds, num_workers=1, prefetch_factor=2, persistent_workers=persistent)
    taken = []
    for data, _ in dl:
        taken += data["x"].tolist()
        break
    got = []
    th = threading.Thread(target=lambda: got.extend(x for data, _ in dl for x in data["x"].tolist()), daemon=True)
    th.start()
    th.join(60)
    assert not th.is_alive(), f"the iteration never ended (took {taken}, then {got})"
    assert len(taken) == 2
    assert calls, "the partial give-back was never tried: the test shows nothing"
    assert sorted(got) == list(range(16)), f"took {taken}, then {got}"


def test_dataloader_spawned_workers(server, part):
    """A StreamingDataLoader whose workers are spawned (not forked) yields
    every row once. The default collate_fn was a lambda, which spawn
    cannot pickle: iterating raised before any worker started."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    _done_rows(server, part, 8)
    ds = tq.StreamingDataset(4, 2, ["x"], part, "train", address=server.address, token=server.token,
                             fetch_timeout=0.3)
    dl = tq.StreamingDataLoader(ds, num_workers=2, multiprocessing_context="spawn")
    got = [x for data, _ in dl for x in data["x"].tolist()]
    assert sorted(got) == list(range(8)), f"took {got}"


def test_stream_warns_of_a_partition_the_controller_does_not_list(server, part, caplog):
    """A loader waiting on a partition the controller does not have (a
    misspelled id) logs a warning naming it, and the close names the
    controller has, once it waited missing_partition_warn_s; it still
    waits (producers may create it later) and yields once rows come. One
    waiting on a partition that exists but has no ready rows says nothing.
    Before, both waited in silence."""
    import logging
    caplog.set_level(logging.WARNING, logger="tq.loader")
    with server.client() as c:
        c.put({"x": np.arange(2, dtype=np.float32)}, partition_id=part + "-train")
        missing = part + "-trian"
        it = tq.StreamIterator(2, 2, ["x"], missing, "t", client=c, fetch_timeout=0.2,
                               missing_partition_warn_s=0.5)
        got = []
        th = threading.Thread(target=lambda: got.append(next(iter(it))))
        th.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not caplog.records:
            time.sleep(0.05)
        msgs = [r.getMessage() for r in caplog.records]
        assert len(msgs) == 1, msgs
        assert repr(missing) in msgs[0] and "does not list" in msgs[0] and repr(part + "-train") in msgs[0], msgs
        c.put({"x": np.arange(2, dtype=np.float32)}, partition_id=missing)  # created late: it still waited
        th.join(30)
        assert not th.is_alive() and got[0][1].size == 2
        assert len(caplog.records) == 1

        caplog.clear()
        c.put({"y": np.arange(2, dtype=np.float32)}, partition_id=part)  # exists; no "x" ready
        it = tq.StreamIterator(2, 2, ["x"], part, "t", client=c, fetch_timeout=0.2, missing_partition_warn_s=0.5)
        got = []
        th = threading.Thread(target=lambda: got.append(next(iter(it))))
        th.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and it._partition_checked != part:
            time.sleep(0.05)
        assert it._partition_checked == part
        c.put({"x": np.arange(2, dtype=np.float32)}, partition_id=part)
        th.join(30)
        assert not th.is_alive() and got[0][1].size == 2
        assert caplog.records == []


def _batches_to_the_end(it, waited):
    """The x values of each batch it yields, on a thread, then "end" (or
    the exception that ended it); fails saying waited if it does not end
    within 60 s."""
    out = []

    def run():
        try:
            out.extend(d["x"].tolist() for d, _ in it)
            out.append("end")
        except Exception as e:  # noqa: BLE001
            out.append(e)
    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(60)
    assert not th.is_alive(), waited
    return out


def _must_exist_fails(it_factory, missing):
    """Run the loop of it_factory() on a thread; the InvalidError it ends
    with, or a failure when it still waited after 60 s (before, it waited
    for good)."""
    out = []

    def run():
        try:
            for _ in it_factory():
                out.append("batch")
        except tq.TQError as e:
            # Kept with its traceback, whose frames hold the loader's
            # iterator (a cycle, through out): the failed iteration
            # stopped its workers already, so the collector that frees it
            # later, in whatever test, has none to wait for (it did, 5 s).
            out.append(e)
    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(60)
    assert not th.is_alive(), "the loader waited for a partition that does not exist"
    assert len(out) == 1 and isinstance(out[0], tq.InvalidError), out
    assert not isinstance(out[0], tq.NotFoundError)
    assert f'partition "{missing}" does not exist' in str(out[0]), str(out[0])
    return out[0]


def test_stream_partition_must_exist(server, part):
    """A loader with partition_must_exist=True over a partition the
    controller does not have (a misspelled id) raises InvalidError naming
    it into the loop at once, instead of waiting for a producer to make it
    (get_meta's partition_must_exist; the controller's FETCH). A partition
    that exists is read as usual."""
    with server.client() as c:
        c.put({"x": np.arange(2, dtype=np.float32)}, partition_id=part)
        c.mark_done(part)
        missing = part + "-trian"
        with pytest.raises(tq.InvalidError) as e:
            c.get_meta(["x"], 2, missing, task_name="t", wait=True, timeout=60, partition_must_exist=True)
        assert f'partition "{missing}" does not exist' in str(e.value)
        _must_exist_fails(lambda: tq.StreamIterator(2, 2, ["x"], missing, "t", client=c, fetch_timeout=30,
                                                    partition_must_exist=True), missing)
        it = tq.StreamIterator(2, 2, ["x"], part, "t", client=c, fetch_timeout=30, partition_must_exist=True)
        assert [d["x"].tolist() for d, _ in it] == [[0.0, 1.0]]


def test_streaming_data_loader_partition_must_exist(server, part):
    """Through a StreamingDataLoader, with workers or not, the
    InvalidError of a dataset with partition_must_exist=True over a
    partition the controller does not have reaches the loop."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    missing = part + "-trian"
    for workers in (0, 1):
        ds = tq.StreamingDataset(2, 2, ["x"], missing, "t", address=server.address, token=server.token,
                                 fetch_timeout=30, partition_must_exist=True)
        _must_exist_fails(lambda: tq.StreamingDataLoader(ds, num_workers=workers, multiprocessing_context="spawn"
                                                         if workers else None), missing)


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent-workers", "new-workers"])
def test_dataloader_failed_iteration_stops_its_workers(server, part, persistent):
    """An iteration that ends with an error (a worker's, which torch
    raises in the loop: here a partition that does not exist) stops its
    workers before the loop gets it, while the error, whose traceback's
    frames hold the iterator, is still held. They used to live until the
    iterator was freed: by the cyclic collector, later, in whatever thread
    ran it, where torch's shutdown waited up to 5 s for them. The next
    iteration starts new workers (persistent ones too: torch would have
    resumed the stopped ones) and reads the partition, once made."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    ds = tq.StreamingDataset(2, 2, ["x"], part, "t", address=server.address, token=server.token,
                             fetch_timeout=0.3, partition_must_exist=True)
    dl = tq.StreamingDataLoader(ds, num_workers=2, persistent_workers=persistent)
    it = iter(dl)
    with pytest.raises(tq.InvalidError, match="does not exist") as e:
        for _ in it:
            pass
    assert e.value.__traceback__ is not None
    workers = it._it._workers
    assert len(workers) == 2
    deadline = time.monotonic() + 30
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    assert not any(w.is_alive() for w in workers), "the failed iteration's workers are still running"
    with pytest.raises(StopIteration):
        next(it)
    with server.client() as c:
        c.put({"x": np.arange(8, dtype=np.int64)}, partition_id=part)
        c.mark_done(part)
    assert sorted(x for data, _ in dl for x in data["x"].tolist()) == list(range(8))
    assert e.value.__traceback__ is not None
    # Freed now, with its persistent workers, though e's traceback (which
    # holds this frame, a cycle) holds the failed iteration's iterator:
    # that does not hold the loader. Left to the collector, in a later
    # test, torch's shutdown waited 5 s for each worker (the queues that
    # tell them to stop were closed first).
    ref = weakref.ref(dl)
    del dl
    assert ref() is None, "the failed iteration's iterator holds the loader"


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent-workers", "new-workers"])
@pytest.mark.parametrize("fail_at", [(1, 1), (2, 1), (1, 3)])
@pytest.mark.parametrize("where", ["keep", "acknowledge"])
def test_dataloader_fails_twice_mid_batch_then_breaks_and_loses_nothing(server, part, monkeypatch, persistent,
                                                                       fail_at, where):
    """Two iterations in a row fail in the main process as they take a
    batch of 4 whose first micro-batch of 2 they yielded (its keep raises,
    or its acknowledge: a controller that did not answer), each stopping
    its workers (persistent ones replaced, with a record of their own,
    twice); a third breaks after its first micro-batch; a fourth reads
    on. Every row comes once: the half-taken batch's yielded rows used to
    come again (forgotten before it was kept, it was left to its worker,
    which gave it back whole, or to the hold's TTL)."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    with server.client() as c:
        c.put({"x": np.arange(32, dtype=np.int64)}, partition_id=part)
        c.mark_done(part)
    # The nth batch each failing iteration takes fails (fail_at), once.
    at = {"n": 0, "fail": 0}

    def planted(real):
        def f(*a):
            at["n"] += 1
            if at["n"] == at["fail"]:
                at["fail"] = 0
                if where == "keep":
                    raise RuntimeError("planted failure")
                raise tq.UnavailableError("planted failure")
            return real(*a)
        return f
    if where == "keep":
        monkeypatch.setattr(tq.loader._Controls, "keep", planted(tq.loader._Controls.keep))
    else:
        monkeypatch.setattr(tq.StreamingDataLoader, "_acknowledge",
                            staticmethod(planted(tq.StreamingDataLoader._acknowledge)))
    ds = tq.StreamingDataset(4, 2, ["x"], part, "train", address=server.address, token=server.token,
                             fetch_timeout=0.3)
    dl = tq.StreamingDataLoader(ds, num_workers=2, prefetch_factor=2, persistent_workers=persistent)
    got, errs = [], []
    for n in fail_at:
        at["n"], at["fail"] = 0, n
        with pytest.raises((RuntimeError, tq.UnavailableError), match="planted failure") as e:
            for data, _ in dl:
                got += data["x"].tolist()
        errs.append(e.value)  # held: their tracebacks hold the failed iterators
    for data, _ in dl:
        got += data["x"].tolist()
        break
    got += [x for data, _ in dl for x in data["x"].tolist()]
    assert sorted(got) == list(range(32)), f"got {got}"
    # Freed now with its persistent workers: errs' tracebacks hold this
    # frame (a cycle), which the collector would free in a later test,
    # where torch's shutdown waited 5 s for each worker.
    del dl


def test_dataloader_timeout_ends_a_wait_for_rows_and_stops_the_workers(server, part):
    """timeout (torch's) bounds the loop's wait for a worker's next
    micro-batch: a partition whose rows are never produced fails the loop
    after it (RuntimeError), which stops the worker; the rows, once
    there, are read by the next iteration. Without it the loop waits as
    long as the rows do not come."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    ds = tq.StreamingDataset(2, 2, ["x"], part, "t", address=server.address, token=server.token,
                             fetch_timeout=0.3, missing_partition_warn_s=None)
    dl = tq.StreamingDataLoader(ds, num_workers=1, timeout=1)
    it = iter(dl)
    with pytest.raises(RuntimeError, match="timed out"):
        next(it)
    deadline = time.monotonic() + 30
    for w in it._it._workers:
        w.join(max(0.0, deadline - time.monotonic()))
    assert not any(w.is_alive() for w in it._it._workers), "the timed-out iteration's worker still runs"
    _done_rows(server, part, 4)
    assert sorted(x for data, _ in dl for x in data["x"].tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "1", None])
def test_dataloader_timeout_is_checked(server, part, bad):
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    ds = tq.StreamingDataset(2, 2, ["x"], part, "t", address=server.address, token=server.token)
    with pytest.raises(tq.InvalidError, match="timeout"):
        tq.StreamingDataLoader(ds, num_workers=1, timeout=bad)


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent-workers", "new-workers"])
def test_dataloader_iteration_failed_in_the_main_process_loses_nothing(server, part, monkeypatch, persistent):
    """An iteration that fails in the main process (here its second
    batch's keep raises), after it took a batch, stops its workers, which
    give back what they fetched ahead; the next iteration's new workers
    yield every other row. Persistent workers stopped so are replaced by
    new ones with a record of their own: the old record (the old workers'
    fetches, given back, by their counts) had the main process drop the
    new workers' first batches as given back."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    with server.client() as c:
        c.put({"x": np.arange(16, dtype=np.int64)}, partition_id=part)
        c.mark_done(part)
    keep, calls = tq.loader._Controls.keep, []

    def failing_keep(self, *a):
        calls.append(a)
        if len(calls) == 2:
            raise RuntimeError("planted keep failure")
        return keep(self, *a)
    monkeypatch.setattr(tq.loader._Controls, "keep", failing_keep)
    ds = tq.StreamingDataset(2, 2, ["x"], part, "train", address=server.address, token=server.token,
                             fetch_timeout=0.3)
    dl = tq.StreamingDataLoader(ds, num_workers=2, prefetch_factor=2, persistent_workers=persistent)
    taken = []
    with pytest.raises(RuntimeError, match="planted keep failure"):
        for data, _ in dl:
            taken += data["x"].tolist()
    rest = [x for data, _ in dl for x in data["x"].tolist()]
    assert len(taken) == 2
    assert sorted(taken + rest) == list(range(16)), f"took {taken}, then {rest}"


@pytest.mark.parametrize("sampler", ["default", "rank-aware"])
def test_iterator_break_mid_batch_goes_on_after_the_micro_batches_it_yielded(request, part, sampler):
    """Without workers a batch is fetched and kept whole, then split: 16
    rows, batches of 4, micro-batches of 2, a loop that breaks after the
    first micro-batch; the next iteration yields exactly the 14 others,
    none twice (it used to yield the half-taken batch again, whole: rows 0
    and 1 twice), and a reset() replays all 16 once."""
    server = request.getfixturevalue("rank_aware_server" if sampler == "rank-aware" else "server")
    with server.client() as c:
        c.put({"x": np.arange(16, dtype=np.int64)}, partition_id=part)
        c.mark_done(part)
    it = tq.StreamIterator(4, 2, ["x"], part, "train", dp_rank=0, address=server.address, token=server.token,
                           fetch_timeout=0.3)
    taken = []
    for data, _ in it:
        taken += data["x"].tolist()
        break
    rest = [x for data, _ in it for x in data["x"].tolist()]
    assert len(taken) == 2
    assert sorted(taken + rest) == list(range(16)), f"took {taken}, then {rest}"
    it.reset()
    replay = [x for data, _ in it for x in data["x"].tolist()]
    assert sorted(replay) == list(range(16)), f"replayed {replay}"
    it.close()


@pytest.mark.parametrize("made_again", [False, True])
def test_lagging_rank_ends_with_a_cleared_partition(rank_aware_server, part, made_again):
    """Two data-parallel ranks read a done partition; rank 1 takes its
    first batch, then rank 0 reads all it has and clears the partition (and
    a producer makes one of the same id again). Rank 1's loop ends
    (StopIteration) instead of waiting for the partition for good, or
    reading the new partition's rows as the old one's: its fetches name the
    generation of its first batch (get_meta's partition_gen)."""
    s = rank_aware_server
    with s.client() as c:
        c.put({"x": np.arange(16, dtype=np.int64)}, partition_id=part)
        c.mark_done(part)
        lag = iter(tq.StreamIterator(2, 2, ["x"], part, "train", dp_rank=1, client=c, fetch_timeout=1))
        got = [next(lag)[0]["x"].tolist()]
        first = [d["x"].tolist() for d, _ in tq.StreamIterator(2, 2, ["x"], part, "train", dp_rank=0, client=c,
                                                                fetch_timeout=1)]
        assert first
        c.clear_partition(part)
        if made_again:
            c.put({"x": np.arange(1000, 1016, dtype=np.int64)}, partition_id=part)
            c.mark_done(part)
        out = _batches_to_the_end(lag, "the lagging rank waited for the partition cleared")
    assert out[-1] == "end", out
    assert not [b for b in out[:-1] if any(x >= 1000 for x in b)], f"rows of the partition made again: {out}"
    assert got[0] not in first


def test_loader_ends_a_partition_of_a_controller_started_anew(part):
    """A loader reads its first batch of a partition from a controller that
    keeps its state in memory; the controller starts anew (another cluster)
    and a producer makes a partition of that id there, whose generation is
    by chance the one the loader remembers (each cluster numbers its
    partitions from 1). The loop ends, as for a partition cleared (the old
    one cannot exist in the new cluster): it used to read the new
    partition's rows as the rest of the old one's."""
    from conftest import Server
    s = Server(extra=["--in-memory"])
    try:
        with s.client() as c:
            c.put({"x": np.arange(16, dtype=np.int64)}, partition_id=part)
            c.mark_done(part)
            si = tq.StreamIterator(2, 2, ["x"], part, "train", client=c, fetch_timeout=1)
            it = iter(si)
            next(it)
            s.restart()
            with s.client() as p:
                p.put({"x": np.arange(1000, 1016, dtype=np.int64)}, partition_id=part)
                p.mark_done(part)
                peek = p.get_meta(["x"], 1, part, task_name="peek")
            assert peek.partition_gen == si._partition_gen != 0, "another generation: the test shows nothing"
            out = _batches_to_the_end(it, "the loader waited")
        assert out[-1] == "end", out
        assert not [b for b in out[:-1] if any(x >= 1000 for x in b)], f"rows of the new cluster's partition: {out}"
    finally:
        s.stop()


@pytest.mark.parametrize("in_body", [False, True], ids=["after-the-break", "in-the-loop"])
@pytest.mark.parametrize("persistent", [False, True], ids=["new", "persistent"])
def test_dataloader_ends_with_a_partition_cleared_after_a_break(server, part, persistent, in_body):
    """With a worker, a loop that breaks after its first micro-batch, the
    partition cleared (in the loop or after it), then the loader iterated
    again: that iteration ends, as it does without workers or with
    persistent ones. New workers (no persistent_workers) started from the
    dataset as the main process has it, which had never fetched, so had no
    partition generation to name: they waited for the partition to be made
    again, for good. The main process now learns the generation from the
    micro-batches it takes."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    _done_rows(server, part, 16)
    ds = tq.StreamingDataset(4, 2, ["x"], part, "train", address=server.address, token=server.token,
                             fetch_timeout=0.3)
    dl = tq.StreamingDataLoader(ds, num_workers=1, prefetch_factor=2, persistent_workers=persistent)
    c = ds._get_client()
    taken = []
    for data, _ in dl:
        taken += data["x"].tolist()
        if in_body:
            c.clear_partition(part)
        break
    if not in_body:
        c.clear_partition(part)
    got = []
    th = threading.Thread(target=lambda: got.extend(x for data, _ in dl for x in data["x"].tolist()), daemon=True)
    th.start()
    th.join(60)
    assert not th.is_alive(), f"the iteration after the clear waits for the partition (took {taken}, then {got})"
    assert len(taken) == 2 and not got, f"took {taken}, then {got}"


def test_dataloader_worker_exits_when_the_iterator_is_dropped_after_a_clear(server, part, monkeypatch):
    """A worker (no persistent_workers) exits as the iterator is dropped,
    after a loop that took one micro-batch, cleared the partition and
    broke, and leaves no multiprocessing temp dir behind. The iterator's
    settling asked the consumption status of the cleared partition, and
    the client's NotFoundError came back in a reference cycle (the error
    and the frame of Client._wait_to_repeat, which re-raised it), whose
    traceback kept the iterator's frames, so the iterator, alive. Torch's
    iterator was then freed by the cyclic collector, which stops its
    queues' feeder threads before torch stops the workers: the worker
    never read its end, and was killed 5 s later, its pymp dir (the
    listener passing its tensors' fds) left behind."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    import gc
    import multiprocessing
    import pathlib
    import shutil
    import tempfile
    # The worker makes its own temp dir (pymp-*) here, to share its
    # tensors' fds, and removes it as it exits. Not pytest's tmp_path: the
    # fd listener's socket path (pymp-*/listener-*) past 107 bytes failed
    # to bind in the worker's queue feeder, which dropped the batch, and
    # the loop waited for it for good (a $TMPDIR of 25 bytes did it).
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="tqpy-"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delitem(multiprocessing.current_process()._config, "tempdir", raising=False)
    _done_rows(server, part, 16)
    ds = tq.StreamingDataset(4, 2, ["x"], part, "train", address=server.address, token=server.token,
                             fetch_timeout=0.3)
    dl = tq.StreamingDataLoader(ds, num_workers=1, prefetch_factor=2, persistent_workers=False)
    c = ds._get_client()
    before = set(multiprocessing.active_children())
    it = iter(dl)
    workers = [p for p in multiprocessing.active_children() if p not in before]
    assert len(workers) == 1
    for _ in it:
        c.clear_partition(part)
        break
    gc.disable()  # the iterator must go as its last reference does
    try:
        del it
        workers[0].join(10)
    finally:
        gc.enable()
    assert workers[0].exitcode is not None, "the worker still runs after the iterator was dropped"
    assert not list(tmp_path.glob("pymp-*")), "the worker left its multiprocessing temp dir"
    shutil.rmtree(tmp_path)


def test_dataloader_iterator_alive_at_the_next_iteration_yields_each_row_once(server, part):
    """With a persistent worker, a loop that takes one micro-batch of a
    batch from an iterator it keeps (not garbage yet), then iterates the
    loader again: every row once. Torch resumes the same workers for the
    new iteration, and the worker gave back the half-taken batch whole, as
    the old iterator had not settled it yet (it does so when it is
    garbage): its first micro-batch came twice ([0, 1], then 0..15). The
    loader now settles the last iteration's half-taken batches as the next
    one starts."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    _done_rows(server, part, 16)
    ds = tq.StreamingDataset(4, 2, ["x"], part, "train", address=server.address, token=server.token,
                             fetch_timeout=0.3)
    dl = tq.StreamingDataLoader(ds, num_workers=1, prefetch_factor=2, persistent_workers=True)
    it = iter(dl)
    taken = next(it)[0]["x"].tolist()
    got = []
    th = threading.Thread(target=lambda: got.extend(x for data, _ in dl for x in data["x"].tolist()), daemon=True)
    th.start()
    th.join(60)
    del it
    assert not th.is_alive(), f"the iteration never ended (took {taken}, then {got})"
    assert sorted(taken + got) == list(range(16)), f"took {taken}, then {got}"


@pytest.mark.parametrize("sampler", ["default", "rank-aware"])
def test_lagging_rank_ends_when_its_read_meets_the_clear(request, part, transport, sampler):
    """A lagging rank's fetch gets rows, then a DP peer that finished first
    clears the partition before the rank reads them: the loop ends
    (StopIteration), as for a partition cleared before the fetch. Its read
    failed ("cells are gone from storage unit ... freed") and the loop
    ended with that error. The clear comes right after the second fetch's
    answer (get_meta wrapped), and the rank reads once the unit has freed
    the rows (it frees them in the background)."""
    server = request.getfixturevalue("rank_aware_server" if sampler == "rank-aware" else "server")
    with server.client(transport=transport) as c:
        c.put({"x": np.arange(8, dtype=np.int64)}, partition_id=part)
        c.mark_done(part)
        get_meta, fetches = c.get_meta, []

        def clear_after_the_second(*a, **kw):
            meta = get_meta(*a, **kw)
            fetches.append(meta.size)
            if len(fetches) == 2:
                c.clear_partition(part)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        c.get_data(meta)
                    except tq.StaleError:
                        break
                    time.sleep(0.01)
                else:
                    pytest.fail("the rows of the partition cleared can still be read after 30 s")
            return meta
        c.get_meta = clear_after_the_second
        it = tq.StreamIterator(2, 2, ["x"], part, "train", dp_rank=1, client=c, fetch_timeout=1)
        out = _batches_to_the_end(it, "the lagging rank waited for the partition cleared")
    assert fetches[:2] == [2, 2], f"the clear came after no rows: fetches {fetches}"
    assert out[-1] == "end", out
    assert len(out) == 2, f"batches after the clear: {out}"


def test_dataloader_worker_ends_when_its_read_meets_the_clear(server, part, monkeypatch):
    """As test_lagging_rank_ends_when_its_read_meets_the_clear, in a
    StreamingDataLoader's (forked) worker: the iteration ends instead of
    raising the read's error."""
    pytest.importorskip("torch", reason="torch is not installed: the torch DataLoader is untested here")
    _done_rows(server, part, 8)
    get_meta, fetches = tq.Client.get_meta, []

    def clear_after_the_second(self, *a, **kw):
        meta = get_meta(self, *a, **kw)
        fetches.append(meta.size)
        if len(fetches) == 2:
            self.clear_partition(part)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    self.get_data(meta)
                except tq.StaleError:
                    break
                time.sleep(0.01)
        return meta
    monkeypatch.setattr(tq.Client, "get_meta", clear_after_the_second)
    ds = tq.StreamingDataset(2, 2, ["x"], part, "train", address=server.address, token=server.token,
                             fetch_timeout=0.3)
    dl = tq.StreamingDataLoader(ds, num_workers=1, multiprocessing_context="fork")
    out = _batches_to_the_end(dl, "the worker waited for the partition cleared")
    assert out[-1] == "end", out
    assert len(out) == 2, f"batches after the clear: {out}"
