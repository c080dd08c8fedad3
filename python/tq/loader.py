"""The streaming loader: micro-batches of a partition for one rank, as
TransferQueue's ``StreamingDataset`` yields them, over ``get_meta`` and
``get_data``.

    ds = tq.StreamingDataset(batch_size=8, micro_batch_size=2, data_fields=["prompt", "reward"],
                             partition_id="train", task_name="actor", dp_rank=0,
                             should_check_consumption_status=True)
    for data, meta in ds:          # data: field → value for micro_batch_size rows
        ...
        tq.get_client().put({"logp": logp}, metadata=meta)

Rows are chosen by the controller's sampler (``tq serve --sampler``);
``dp_rank`` and the batch counter travel with each fetch, so a rank-aware
sampler hands identical batches to the ranks of one data-parallel group. A
batch is fetched with a blocking ``get_meta`` (the controller wakes it as
soon as enough rows are produced), so an idle loader costs no polling.
Iteration ends when ``should_check_consumption_status`` is set and every
row of the partition has been consumed by the task (pre-allocate the rows,
``tq serve --pre-alloc``, so that the total is known before producers
finish); otherwise it never ends and the caller breaks out. Its fetches
then tell the controller that the rows there are are all there will be:
once every one is produced, the last batch may be short, as from a
partition marked done.

A partition that does not exist yet is waited for, as the controller's
fetches and the Go loader (stream) wait for it: the trainer may start
before the producers' first put. So a misspelled ``partition_id`` waits
for good, without an error (as a Go loader does). Once it has waited
``missing_partition_warn_s`` (default 60 s; None: never) without a batch,
the loader asks the controller's partition list once, and logs a warning
(logger ``tq.loader``) naming the id, and the listed ids close to it, when
the list does not have it. ``partition_must_exist=True`` makes it an
error instead: the fetch raises :class:`InvalidError` naming the partition
at once (``get_meta``'s ``partition_must_exist``), and the loop gets it; a
partition given to :meth:`StreamIterator.step` must then exist too when
the loader fetches from it.

A partition cleared under the loader ends its iteration, as one done and
drained does: the loader remembers the partition's generation from its
first batch of it (``meta.partition_gen``) and names it in its later
fetches (``get_meta``'s ``partition_gen``; :meth:`StreamIterator.step`
forgets it), so that when a data-parallel peer that finished first clears
the partition, this rank's next fetch, or the one waiting, ends the loop
(StopIteration) instead of waiting for the partition for good or reading
the rows of one made again under the same id (the fetches name the
generation's cluster too, ``get_meta``'s ``cluster_id``: a controller
started anew in memory, whose generations start again, ends it so as
well). A rank whose fetch got rows that the clear removed before it read
them ends so too: the failed read gives the rows back and makes the
loader fetch again, once, naming their generation (a read that fails
again raises its error into the loop). Until it has had a batch of a
partition the loader waits for it to be made, as above.

When torch is importable, :class:`StreamingDataset` is a
``torch.utils.data.IterableDataset`` (each DataLoader worker connects on its
first ``__iter__``; nothing is pickled but the settings) and
:class:`StreamingDataLoader` wraps ``torch.utils.data.DataLoader``.
:class:`StreamIterator` is the same without torch.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import time
import weakref

import numpy as np

from . import errors, wire
from ._pb import control_pb2
from .client import Client, _field_list, _number

log = logging.getLogger(__name__)

try:  # pragma: no cover - depends on the environment
    import torch as _torch
    from torch.utils.data import DataLoader as _DataLoader
    from torch.utils.data import IterableDataset as _IterableDataset
except Exception:  # noqa: BLE001
    _torch = None
    _DataLoader = None
    _IterableDataset = object


def split(data: dict, meta, micro_batch_size: int):
    """``(data, meta)`` in ceil(B/m) micro-batches of ``micro_batch_size``
    rows (the last may be smaller)."""
    n = meta.size
    if micro_batch_size < 1:
        raise errors.InvalidError(f"micro_batch_size {micro_batch_size} must be at least 1")
    if n == 0:
        raise errors.InvalidError("cannot split an empty batch")
    out = []
    for i in range(math.ceil(n / micro_batch_size)):
        lo, hi = i * micro_batch_size, min(n, (i + 1) * micro_batch_size)
        out.append(({k: v[lo:hi] for k, v in data.items()}, meta.select_samples(range(lo, hi))))
    return out


def _as_is(x):
    """StreamingDataLoader's default collate_fn: the dataset's (data,
    meta) as it is. A module function, not a lambda, so that workers
    started by spawn or forkserver, which pickle it, can run it."""
    return x


# What _fetch answers for a partition that is done for the task.
_DONE = object()


class StreamIterator:
    """Micro-batches for one rank; see the module doc. Not safe for
    concurrent use (one iterator per consumer). ``copy=False`` reads each
    batch as ``get_data(meta, copy=False)`` does: a :class:`~tq.View` whose
    arrays, over shared memory, alias the storage unit's memory, leased
    until the view is released or it and its arrays are garbage (the
    buffer keeps each batch until :meth:`step`). A loop that stops inside
    a batch (a break after one of its micro-batches) goes on, at its next
    iteration, with the batch's micro-batches it has not had: each row
    once. (Through a :class:`StreamingDataLoader` with workers, each row
    once under the controller's default sampler, whose fetches are held;
    under one that keeps batches for a DP group (rank_aware, grpo, ...),
    or a controller without "unconsume_rows", the batch comes again
    whole: see :class:`StreamingDataset`.)"""

    def __init__(self, batch_size: int, micro_batch_size: int, data_fields, partition_id: str, task_name: str,
                 dp_rank: int = 0, should_check_consumption_status: bool = False, *, address: str | None = None,
                 client: Client | None = None, token: str | None = None, transport: str = "auto",
                 fetch_timeout: float = 1.0, sampling_config: dict | None = None, copy: bool = True,
                 missing_partition_warn_s: float | None = 60.0, partition_must_exist: bool = False):
        # Checked here, naming the argument, not at the first fetch (a NaN
        # timeout) or never (a float batch size, a negative warning time).
        op = type(self).__name__
        batch_size = int(_number(batch_size, "batch_size", op, zero=False, integer=True))
        micro_batch_size = int(_number(micro_batch_size, "micro_batch_size", op, zero=False, integer=True))
        dp_rank = int(_number(dp_rank, "dp_rank", op, integer=True))
        if fetch_timeout is not None:
            _number(fetch_timeout, "fetch_timeout", op)
        if missing_partition_warn_s is not None:
            _number(missing_partition_warn_s, "missing_partition_warn_s", op, inf=True)
        if not data_fields:
            raise errors.InvalidError("data_fields is empty")
        self.batch_size, self.micro_batch_size = batch_size, micro_batch_size
        # Refused here, not at the first fetch: a field named twice.
        self.data_fields = _field_list(data_fields, type(self).__name__)
        self.partition_id, self.task_name, self.dp_rank = partition_id, task_name, dp_rank
        self.should_check_consumption_status = should_check_consumption_status
        self.fetch_timeout = fetch_timeout
        self.sampling_config = dict(sampling_config or {})
        self.copy = copy
        self.missing_partition_warn_s = missing_partition_warn_s
        self.partition_must_exist = partition_must_exist
        self._waiting_since = None  # time.monotonic() of the first fetch that came back empty since a batch
        self._partition_checked = None  # the partition id looked up in the controller's list
        self._partition_gen = 0  # the generation of partition_id its batches came from (0: none yet)
        # The cluster whose controller gave _partition_gen ("": not known):
        # a controller started anew in memory numbers its partitions anew.
        self._partition_cluster = ""
        self._address, self._token, self._transport = address, token, transport
        self._client = client
        self._own_client = False
        self.buffer = []  # (data, meta) of every batch fetched since the last step()
        self.batch_index = 0
        # The micro-batches of buffer[batch_index] a loop that stopped
        # inside it had (__iter__): the next iteration goes on after them.
        self._micro_yielded = 0
        # This iterator's batches are the sampler's batch indexes first,
        # first + stride, ...: a DataLoader worker takes its turn among the
        # others (StreamingDataset.__iter__); one alone takes them all.
        self._first, self._stride = 0, 1

    def _get_client(self) -> Client:
        if self._client is None:
            import tq
            if self._address is None and tq._client is not None:
                self._client = tq._client
            else:
                self._client = Client(self._address, token=self._token, transport=self._transport)
                self._own_client = True
        return self._client

    def __getstate__(self):
        st = dict(self.__dict__)
        st["_client"], st["_own_client"], st["buffer"] = None, False, []
        return st

    def reset(self) -> None:
        """Replay the buffered batches from the first (another epoch over them)."""
        self.batch_index, self._micro_yielded = 0, 0

    def step(self, partition_id: str) -> None:
        """Drop the buffer and go on with another partition."""
        self.buffer, self.batch_index, self._micro_yielded, self.partition_id = [], 0, 0, partition_id
        self._waiting_since = None
        self._partition_gen, self._partition_cluster = 0, ""

    def _waited(self) -> None:
        """A fetch came back without a batch: once the loader has waited
        missing_partition_warn_s since its last batch, look the partition up
        in the controller's list (once a partition id) and warn if it is not
        there. A partition created later is still waited for."""
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        warn_s = self.missing_partition_warn_s
        if warn_s is None or now - self._waiting_since < warn_s or self._partition_checked == self.partition_id:
            return
        part = self._partition_checked = self.partition_id
        try:
            listed = self._get_client().get_partition_list()
        except errors.TQError:
            return  # a hint only: the fetches say what is wrong with the controller
        if part in listed:
            return
        close = difflib.get_close_matches(part, listed, n=3)
        log.warning("partition %r: the loader (task %r) has waited %.0f s for a batch, and the controller does "
                    "not list this partition%s; it waits on (a producer may create it)", part, self.task_name,
                    now - self._waiting_since,
                    f" (close ids it lists: {', '.join(map(repr, close))})" if close else
                    f" ({len(listed)} partitions listed, none close)")

    def get_buffer(self):
        return list(self.buffer)

    # In a DataLoader's worker (StreamingDataset): the worker's fetches
    # are held in the DataLoader's hold group and left unacknowledged, for
    # the main process to acknowledge as it takes them.
    _hold_group = None

    def _fetch(self, wait=True):
        """The next batch, None when none came in time, or _DONE when the
        partition is marked done and the task has all of it. A batch is
        kept (acknowledged) here, unless it is held for a DataLoader's main
        process (_hold_group), and :meth:`_fetched` told of it."""
        c = self._get_client()
        index = self._first + self.batch_index * self._stride
        sc = dict(self.sampling_config, dp_rank=self.dp_rank, batch_index=index)
        # Set once a read of fetched rows failed: the fetch is asked again,
        # naming the rows' generation, once.
        reread = False
        while True:
            key = os.urandom(16)
            try:
                # Held until read and kept (_acknowledge below): till then
                # the task's other consumers wait for the rows rather than
                # end without them, should they come back. (A batch a
                # shared sampler keeps for the group is not held.)
                meta = c.get_meta(self.data_fields, self.batch_size, self.partition_id, task_name=self.task_name,
                                  sampling_config=sc, wait=wait, timeout=self.fetch_timeout,
                                  end_when_consumed=self.should_check_consumption_status,
                                  partition_must_exist=self.partition_must_exist,
                                  partition_gen=self._partition_gen, cluster_id=self._partition_cluster, _fetch_key=key,
                                  _hold=True, _hold_group=self._hold_group)
            except (errors.DeadlineError, errors.NotFoundError):
                return None
            except errors.DoneError:
                return _DONE
            if meta.size == 0:
                return None
            if not self._partition_gen:
                self._partition_gen, self._partition_cluster = meta.partition_gen, meta._cluster
            try:
                data = c.get_data(meta, fields=self.data_fields, copy=self.copy)
            except BaseException as e:
                # The rows were fetched and never yielded: back to the task
                # (as the Go loader does), or they would stay consumed for
                # it. A batch a shared sampler keeps for the group stays
                # kept (the controller's give-back returns nothing of it),
                # and the same batch index gets it again.
                c._give_back(self.partition_id, self.task_name, key)
                if reread or not meta.partition_gen or not isinstance(e, errors.TQError):
                    raise
                # A DP peer may have cleared the partition between the
                # fetch and the read: the fetch, asked again naming the
                # rows' generation (_partition_gen, set above), says so
                # (_DONE: the partition ends as a drained one does), or
                # the read fails again and raises.
                reread = True
                continue
            if self._hold_group is not None:
                self._fetched(key, meta, index)
                return data, meta
            try:
                c._acknowledge(self.partition_id, self.task_name, key)
            except errors.NotSupportedError:
                pass  # a controller from before held fetches held nothing
            except errors.NotFoundError:
                # The controller gave the rows back meanwhile (the hold
                # outlived its TTL): another consumer may have them.
                if hasattr(data, "release"):
                    data.release()
                continue
            except BaseException:
                c._give_back(self.partition_id, self.task_name, key)
                raise
            self._fetched(key, meta, index)
            return data, meta

    def _fetched(self, key, meta, index) -> None:
        """A batch fetched under key, at the sampler's batch index, and
        kept: a DataLoader worker follows it (StreamingDataset)."""

    def batches(self):
        """Whole batches: (data, meta). They end when the partition is
        marked done and the task has had all of it, or (with
        should_check_consumption_status) when every row is consumed."""
        while True:
            if self.batch_index < len(self.buffer):
                b = self.buffer[self.batch_index]
                self.batch_index += 1
                yield b
                continue
            got = self._fetch()
            if got is _DONE:
                return
            if got is not None:
                self._waiting_since = None
                self.buffer.append(got)
                continue
            self._waited()
            if self.should_check_consumption_status and \
                    self._get_client().check_consumption_status(self.task_name, self.partition_id):
                # Between the wait and the check a peer of this rank (same
                # dp_rank) may have fetched this batch index, which a
                # rank-aware sampler keeps for the group: its rows count as
                # consumed, yet they are this rank's next batch. Ask once
                # more without waiting: rows are the batch, none the end.
                got = self._fetch(wait=False)
                if got is None or got is _DONE:
                    return
                self.buffer.append(got)

    def __iter__(self):
        for data, meta in self.batches():
            at, n = self.batch_index, self._micro_yielded
            self._micro_yielded = 0
            parts = split(data, meta, self.micro_batch_size)
            try:
                for d, m in parts[n:]:
                    d = self._convert(d)
                    n += 1  # had once yielded: a break closes the generator at the yield
                    yield d, m
            finally:
                if n < len(parts) and self.batch_index == at:
                    # The loop stopped inside the batch (a break): the
                    # batch is kept (acknowledged at its fetch) and
                    # buffered, so the next iteration goes on with its
                    # first micro-batch the loop has not had, neither
                    # past the others nor yielding the first ones twice
                    # (unless reset() or step() moved the iterator since).
                    self.batch_index -= 1
                    self._micro_yielded = n

    def _convert(self, d):
        return d

    def close(self) -> None:
        if self._own_client and self._client is not None:
            self._client.close()
        self._client = None


# The longest partition id (in UTF-8 bytes) that step() hands to a
# DataLoader's workers.
MAX_SHARED_PARTITION = 4096


class _Controls:
    """A dataset's reset() and step() calls, in memory its DataLoader's
    worker processes share (forked or spawned, the arrays go with the
    dataset): each worker's copy applies those it has not seen as it
    starts an iteration (StreamingDataset.__iter__, which each worker
    calls at each ``iter(loader)``). ``gen`` counts the calls, ``step_gen``
    is the count at the last step, whose partition id follows. Written by
    the main process between iterations only (the workers read it once
    ``iter(loader)`` has told them to start over), so nothing locks it."""

    def __init__(self, persistent: bool, workers: int = 1, context=None):
        import ctypes
        import multiprocessing
        from multiprocessing import sharedctypes
        self.persistent = persistent
        self._words = sharedctypes.RawArray(ctypes.c_int64, 3)  # gen, step_gen, partition id length
        self._partition = sharedctypes.RawArray(ctypes.c_char, MAX_SHARED_PARTITION)
        # The workers' held fetches (StreamingDataset): per worker, the
        # last batch the main process kept and the last one the worker
        # gave back, by the worker's count of its fetches. Under _lock:
        # a batch is either kept or given back, never both.
        self._holds = sharedctypes.RawArray(ctypes.c_int64, 2 * max(workers, 1))
        # Per worker, one more than the highest sampler batch index of
        # the batches the main process took from the worker in that place
        # (0: none) since the last step, across iterations: a new worker
        # goes on from the next (next_index). Under a rank-aware sampler
        # the batch index names the group's batch; counted from the
        # worker id again, new workers were handed the batches the last
        # ones had yielded.
        self._taken = sharedctypes.RawArray(ctypes.c_int64, max(workers, 1))
        self.workers = max(workers, 1)
        # The workers' hold group (FETCH's hold_group): a worker at the end
        # of a done partition does not wait for its siblings' held
        # batches, which the main process acknowledges only as it takes
        # them, after that worker's own next one.
        self.group = os.urandom(16)
        if isinstance(context, str):
            context = multiprocessing.get_context(context)
        self._lock = (context or multiprocessing).Lock()
        # Wakes a worker that waits, as it exits, for the main process to
        # take its batches (give_back): keep and end notify it.
        self._cond = (context or multiprocessing).Condition(self._lock)
        # Set (end) once the main process's iteration over these workers
        # ended: a batch it has not taken, it never will.
        self._over = sharedctypes.RawArray(ctypes.c_int64, 1)
        # Per persistent worker, the batches (its fetch counts) the main
        # process took and then dropped, the controller having given
        # their rows back before the main process acknowledged them: the
        # worker forgets them at its next iteration (a replay after
        # reset() yielded them again, though the task's other fetches
        # had their rows).
        self._drops = [(context or multiprocessing).SimpleQueue() for _ in range(self.workers)] \
            if persistent else None

    def for_new_workers(self, context=None) -> "_Controls":
        """These controls for an iteration that starts new workers (no
        persistent_workers, or persistent ones after an iteration that
        failed stopped the last: _Kept._stop): the same calls, and a record
        of held fetches and a hold group of their own. A new worker counts
        its fetches from 1 again, so the last iteration's record would
        have the main process drop the new workers' first batches as
        given back, and the workers forget them as taken (left held). And
        the last iteration's workers may still hold batches as they exit
        (they give back what the main process did not take): in the same
        group the new workers would end without waiting for those rows.
        For persistent workers, the record of dropped batches is new too
        (context: the DataLoader's multiprocessing_context): the old
        workers' counts would have the new ones forget their own."""
        import copy
        import ctypes
        import multiprocessing
        from multiprocessing import sharedctypes
        new = copy.copy(self)
        new._holds = sharedctypes.RawArray(ctypes.c_int64, len(self._holds))
        new._over = sharedctypes.RawArray(ctypes.c_int64, 1)
        new.group = os.urandom(16)
        if self._drops is not None:
            if isinstance(context, str):
                context = multiprocessing.get_context(context)
            new._drops = [(context or multiprocessing).SimpleQueue() for _ in range(self.workers)]
        return new

    def keep(self, worker: int, seq: int, index: int) -> bool:
        """The main process takes worker's batch seq, of the sampler's
        batch index: False when the worker gave it back already (the main
        process must drop it)."""
        with self._cond:
            if seq <= self._holds[2 * worker + 1]:
                return False
            self._holds[2 * worker] = max(seq, self._holds[2 * worker])
            self._taken[worker] = max(index + 1, self._taken[worker])
            self._cond.notify_all()
            return True

    def given_back(self, worker: int, seq: int) -> bool:
        """Whether worker gave back its batch seq already."""
        return seq <= self._holds[2 * worker + 1]

    def end(self) -> None:
        """The main process's iteration over these workers ended: a worker
        waiting to give back what it did not take (give_back) does so."""
        with self._cond:
            self._over[0] = 1
            self._cond.notify_all()

    def drop(self, worker: int, seq: int, kept_rows: int = 0) -> None:
        """The main process dropped worker's batch seq, which it had taken
        (keep): its rows went back to the task, but for its first
        kept_rows, which it yielded (the batch is trimmed to them)."""
        if self._drops is not None:
            self._drops[worker].put((seq, kept_rows))

    def keep_part(self, worker: int, seq: int) -> bool:
        """The main process takes part of worker's batch seq (it gives
        back the rest itself): False when the worker gave it back
        already. Unlike keep, the batch index is not marked taken: a batch
        a shared sampler keeps for the group is asked for again."""
        with self._cond:
            if seq <= self._holds[2 * worker + 1]:
                return False
            self._holds[2 * worker] = max(seq, self._holds[2 * worker])
            self._cond.notify_all()
            return True

    def dropped(self, worker: int) -> list:
        """The batches of worker's that the main process dropped since
        the last call (in worker)."""
        q, out = self._drops[worker] if self._drops is not None else None, []
        while q is not None and not q.empty():
            out.append(q.get())
        return out

    def next_index(self, worker: int) -> int:
        """The first sampler batch index of a new worker in worker's
        place: the one after the last the main process took from that
        place (a batch fetched ahead and given back is fetched again: a
        rank-aware sampler keeps it for the index), or the worker's id."""
        t = self._taken[worker]
        return worker if t == 0 else t - 1 + self.workers

    def kept(self, worker: int) -> int:
        """The last of worker's batches the main process took."""
        return self._holds[2 * worker]

    def give_back(self, worker: int, upto: int, parent: int | None = None) -> int:
        """Worker gives back its batches up to upto that the main process
        has not taken; returns the last one it took (keep refuses the
        others from now on). With parent (the main process's pid), a
        worker that exits first waits until the main process took them
        all, or ended its iteration (end), or is gone."""
        with self._cond:
            while parent is not None and self._holds[2 * worker] < upto and not self._over[0] \
                    and os.getppid() == parent:
                self._cond.wait(1.0)
            self._holds[2 * worker + 1] = max(upto, self._holds[2 * worker + 1])
            return self._holds[2 * worker]

    @property
    def gen(self) -> int:
        return self._words[0]

    def reset(self) -> None:
        self._words[0] += 1

    def step(self, partition_id: str) -> None:
        b = partition_id.encode()
        if len(b) > MAX_SHARED_PARTITION:
            raise errors.InvalidError(f"partition id of {len(b)} bytes: a DataLoader's workers take at most "
                                      f"{MAX_SHARED_PARTITION}")
        self._partition[:len(b)] = b
        self._words[2] = len(b)
        self._taken[:] = [0] * len(self._taken)  # batch indexes count per partition
        self._words[1] = self._words[0] + 1
        self._words[0] += 1

    def apply(self, it: StreamIterator, seen: int) -> int:
        """Bring ``it`` (a worker's copy) up to the calls after ``seen``;
        returns the count it is up to."""
        gen, step_gen, n = self._words[0], self._words[1], self._words[2]
        if gen == seen:
            return seen
        if step_gen > seen:
            it.step(self._partition[:n].decode())
        else:
            it.reset()
        return gen


if _torch is not None:  # pragma: no cover - exercised only where torch is installed
    from .columns import to_tensor

    class StreamingDataset(StreamIterator, _IterableDataset):
        """:class:`StreamIterator` as a torch ``IterableDataset``: dense
        fields become tensors (ragged fields lists of tensors; opaque lists
        of bytes). In a DataLoader with several workers each worker takes
        its turn: worker w of W asks for the sampler's batch indexes w,
        w + W, ..., and the DataLoader yields the workers' micro-batches
        in turn. Without that every worker asked for batch 0, 1, ...: under
        a rank-aware sampler, which gives a batch index's rows to every
        fetch of the group, each worker yielded the same batches (a known
        fault of TransferQueue's loader).

        In a DataLoader with workers, each worker iterates a copy of the
        dataset and keeps its own buffer. :meth:`reset` and :meth:`step`
        reach them through memory they share with the main process
        (:class:`StreamingDataLoader` sets it up): each worker applies
        them as it starts its next iteration, so a call made during an
        iteration takes effect at the next ``iter(loader)``. Without
        ``persistent_workers`` each iteration starts new workers with
        empty buffers: :meth:`reset` has nothing to replay, and raises
        NotSupportedError, as :meth:`get_buffer` does with any workers
        (the main process buffers nothing)."""

        _controls = None  # a _Controls, while a DataLoader with workers iterates this
        _controls_seen = 0  # the calls of _controls this copy has applied
        # In a StreamingDataLoader's worker: its id, and its fetches the
        # main process has not taken (yet), (seq, partition, key, meta) by
        # its count of its fetches (seq).
        _worker = None
        _pending = None
        _fetch_seq = 0

        def __iter__(self):
            info = _torch.utils.data.get_worker_info()
            if info is not None:
                self._first, self._stride = info.id, info.num_workers
                if self._controls is not None:
                    if self._worker is None:
                        import multiprocessing.util
                        self._worker, self._pending, self._by_seq = info.id, [], {}
                        self._parent = os.getppid()
                        self._hold_group = self._controls.group
                        multiprocessing.util.Finalize(self, self._give_back_at_exit, exitpriority=10)
                        # A new worker (each iteration's, without
                        # persistent_workers) goes on from the batches
                        # the last one in its place yielded.
                        self._first = self._controls.next_index(info.id)
                    else:
                        # A persistent worker's next iteration: torch
                        # dropped what the last one queued and the main
                        # process did not take; the main process dropped
                        # what the controller had given back.
                        self._give_back_untaken()
                        self._forget_dropped()
                    self._controls_seen = self._controls.apply(self, self._controls_seen)
                    return self._worker_iter()
            return super().__iter__()

        # A worker fetches ahead: torch queues its micro-batches for the
        # main process and drops them when the loop ends early (a break)
        # or a worker dies. So a worker's fetches stay held (FETCH's hold,
        # in the DataLoader's hold group) and each micro-batch goes out
        # tagged with its fetch; the main process (StreamingDataLoader's
        # iterator) marks the fetch taken, and acknowledges it, as it takes
        # the batch's last micro-batch; a loop that stops inside a batch
        # has the main process give back the rows it did not yield and
        # keep the others (_Kept._settle_parts: a held fetch only; a batch
        # a shared sampler keeps for the group is left untaken, to be
        # yielded again whole, rather than lose the rest of its rows),
        # and the worker gives back
        # (UNCONSUME) every fetch the main process did not take when it
        # exits (torch stops the workers once the iteration ended or was
        # dropped) or, persistent, when its next iteration starts: never
        # before, as the main process may take a queued batch until then.
        # Torch stops a worker that ran out of batches (without
        # persistent_workers) as soon as its end arrives, though its last
        # batches may wait in the main process behind a slower sibling's:
        # that worker waits, as it exits, until the main process took them
        # or ended its iteration (_Controls.give_back and end); given back
        # at once, they were dropped, and a batch a rank-aware sampler
        # keeps for the group went to no one.
        # _Controls.keep and give_back decide, under one lock, which side a
        # batch goes to. A worker killed holds its batches until the
        # controller sees it gone (its connections closed) and gives them
        # back to a consumer waiting at the end. The hold group lets a
        # worker at the end of a done partition end though its siblings'
        # batches are held: the main process takes those only after that
        # worker's own next one.

        def _fetched(self, key, meta, index) -> None:
            if self._worker is None:
                return
            self._fetch_seq += 1
            self._by_seq[self._fetch_seq] = meta
            kept = self._controls.kept(self._worker)
            self._pending = [h for h in self._pending if h[0] > kept]
            self._pending.append((self._fetch_seq, self.partition_id, key, meta, index))

        def _worker_iter(self):
            for data, meta in self.batches():
                h = next((h for h in self._pending if h[3] is meta), None)
                parts = split(data, meta, self.micro_batch_size)
                for i, (d, m) in enumerate(parts):
                    last = i == len(parts) - 1
                    tag = None if h is None else (self._worker, h[0], h[1], h[2], h[4], last,
                                                  None if last else meta.global_indexes)
                    yield self._convert(d), m, tag

        def _give_back_at_exit(self) -> None:
            """As the worker exits: a new worker (no persistent_workers)
            may exit before the main process took its last batches (see
            the worker comment), and waits for it."""
            self._give_back_untaken(None if self._controls.persistent else self._parent)

        def _give_back_untaken(self, parent: int | None = None) -> None:
            """Give back the fetches the main process did not take, and
            forget their batches (a replay must not yield them); with
            parent, once it took them or ended its iteration
            (_Controls.give_back)."""
            if not self._pending:
                return
            kept = self._controls.give_back(self._worker, self._pending[-1][0], parent)
            back, self._pending = [h for h in self._pending if h[0] > kept], []
            if not back:
                return
            self._forget([h[0] for h in back])
            c = self._get_client()
            for _, part, key, _, _ in back:
                c._give_back(part, self.task_name, key)

        def _forget_dropped(self) -> None:
            """Forget the batches the main process dropped (a replay must
            not yield them: their rows went back to the task), and trim
            those it took part of to the rows it took (the others went
            back)."""
            gone = []
            for seq, n in self._controls.dropped(self._worker):
                if n == 0:
                    gone.append(seq)
                    continue
                meta = self._by_seq.get(seq)
                for i, (d, m) in enumerate(self.buffer):
                    if m is meta:
                        m2 = m.select_samples(range(n))
                        self.buffer[i] = ({k: v[:n] for k, v in d.items()}, m2)
                        self._by_seq[seq] = m2
            self._forget(gone)

        def _forget(self, seqs) -> None:
            """Take the batches of these fetch counts out of the buffer."""
            metas = [m for m in (self._by_seq.pop(s, None) for s in seqs) if m is not None]
            if not metas:
                return
            before = self.buffer[:self.batch_index]
            self.batch_index -= sum(1 for _, m in before if any(m is x for x in metas))
            self.buffer = [b for b in self.buffer if not any(b[1] is x for x in metas)]

        def _in_main(self) -> bool:
            return self._controls is not None and _torch.utils.data.get_worker_info() is None

        def reset(self) -> None:
            """Replay the buffered batches from the first (another epoch
            over them); with workers, theirs, from their next iteration."""
            if self._in_main():
                if not self._controls.persistent:
                    raise errors.NotSupportedError(
                        "reset: the DataLoader starts new workers, with empty buffers, at each iteration; "
                        "replaying their batches needs persistent_workers=True")
                self._controls.reset()
                self._controls_seen = self._controls.gen
            super().reset()

        def step(self, partition_id: str) -> None:
            """Drop the buffer and go on with another partition; with
            workers, theirs, from their next iteration."""
            if self._in_main():
                self._controls.step(partition_id)
                self._controls_seen = self._controls.gen
            if self._worker is not None:
                self._by_seq = {}
            super().step(partition_id)

        def get_buffer(self):
            if self._in_main():
                raise errors.NotSupportedError("get_buffer: the DataLoader's worker processes hold the batches, "
                                               "each its own; the main process buffers none")
            return super().get_buffer()

        def _convert(self, d):
            out = {}
            for k, v in d.items():
                if isinstance(v, np.ndarray):
                    out[k] = to_tensor(np.array(v), k)
                elif v and isinstance(v[0], np.ndarray):
                    out[k] = [to_tensor(np.array(a), k) for a in v]
                else:
                    out[k] = v
            return out

    class StreamingDataLoader(_DataLoader):
        """A torch DataLoader over a :class:`StreamingDataset` that yields
        its ``(data, meta)`` pairs as they are (no batching, no collation).
        With workers, :meth:`reset` and :meth:`step` reach them at the next
        iteration (see :class:`StreamingDataset`). An iteration that ends
        with an error stops its workers before the loop gets it; the next
        one starts new workers, persistent ones too (with empty buffers).

        ``timeout`` (seconds, 0: none) is torch's: how long the loop waits
        for a worker's next micro-batch before it fails (RuntimeError) and
        so stops the workers. A worker waits for rows as long as they are
        not produced, so set it above the longest a producer may lag; it
        bounds too a batch a worker fetched and could not send (torch's
        queue drops what it fails to pickle: a tensor's fd too long a path
        for a unix socket under a long $TMPDIR), which the loop would
        otherwise wait for without end."""

        def __init__(self, dataset, num_workers=0, collate_fn=None, pin_memory=False, worker_init_fn=None,
                     multiprocessing_context=None, prefetch_factor=None, persistent_workers=False,
                     pin_memory_device="", timeout=0):
            # torch's own check lets NaN through (a wait that never ends)
            # and takes inf to a queue that refuses it.
            _number(timeout, "timeout", type(self).__name__)
            # prefetch_factor None is torch's own default from 2.0; before,
            # the default was 2 and None (or any other value with no
            # workers) was refused: pass it only when set.
            extra = {} if prefetch_factor is None else {"prefetch_factor": prefetch_factor}
            super().__init__(dataset, batch_size=None, num_workers=num_workers,
                             collate_fn=collate_fn or _as_is, pin_memory=pin_memory,
                             worker_init_fn=worker_init_fn, multiprocessing_context=multiprocessing_context,
                             persistent_workers=persistent_workers, pin_memory_device=pin_memory_device,
                             timeout=timeout, **extra)
            self.dataset_ref = dataset
            # Before the workers start (they take the dataset with them).
            if isinstance(dataset, StreamingDataset):
                dataset._controls = _Controls(persistent_workers, num_workers, multiprocessing_context) \
                    if num_workers > 0 else None
                dataset._controls_seen = 0

        def __iter__(self):
            ds = self.dataset_ref
            if isinstance(ds, StreamingDataset) and ds._controls is not None and not ds._controls.persistent:
                # Before the workers start (they take the dataset with them).
                ds._controls = ds._controls.for_new_workers()
            last = self.__dict__.pop("_last_kept", lambda: None)()
            if last is not None and last._controls.persistent:
                # Torch resumes the same workers (and its same iterator):
                # the last iteration's iterator, still alive (kept in a
                # variable), settles its half-taken batches now, before
                # the workers give back what it did not take, whole.
                last._settle_parts()
            it = super().__iter__()
            if not isinstance(ds, StreamingDataset) or ds._controls is None:
                return it
            kept = _Kept(it, ds, ds._controls, self)
            self._last_kept = weakref.ref(kept)
            return kept

        @staticmethod
        def _acknowledge(ds, part, key) -> bool:
            """Keep the held fetch of a batch the main process takes: False
            when the controller gave its rows back meanwhile (another
            consumer may have them: the batch is dropped)."""
            try:
                ds._get_client()._acknowledge(part, ds.task_name, key)
            except errors.NotSupportedError:
                pass  # a controller from before held fetches held nothing
            except errors.NotFoundError:
                return False
            return True

        def reset(self):
            self.dataset_ref.reset()

        def step(self, partition_id):
            self.dataset_ref.step(partition_id)

        def get_buffer(self):
            return self.dataset_ref.get_buffer()
    class _Kept:
        """The workers' micro-batches, each batch's fetch marked taken as
        its last micro-batch is (see StreamingDataset's worker comment);
        a batch its worker gave back already is dropped. Not a generator:
        dropped (a break, or never iterated), it ends the iteration for
        the workers (_Controls.end) before torch's iterator, which it
        holds, stops them and waits for them to exit. An iteration that
        fails stops them at once (_stop)."""

        def __init__(self, it, ds, controls, loader):
            self._it, self._ds, self._controls = it, ds, controls
            # Weak: a kept error's traceback holds this iterator, and so
            # would hold the loader, with its next iteration's workers.
            self._loader = weakref.ref(loader)
            self._stopped = False
            # Per worker, the batch the loop has had some micro-batches
            # of: (seq, partition, key, its rows, how many yielded).
            self._part = {}
            # The dataset's reset() and step() calls at the start (_learn).
            self._seen = ds._controls_seen

        def __iter__(self):
            return self

        def __next__(self):
            if self._stopped:
                raise StopIteration
            try:
                return self._next()
            except StopIteration:
                raise
            except BaseException:
                self._stop()
                raise

        def _stop(self) -> None:
            """The iteration failed (a worker's error, which torch raises
            here, or one of this iterator's): end it for the workers and
            stop them now. Left to __del__, they lived as long as anything
            held the error's traceback, whose frames hold this iterator:
            kept (a logged exc_info, a list of errors), the cyclic
            collector freed it later, at any point of any thread, where
            torch's shutdown joined the workers for up to 5 s."""
            self._stopped = True
            try:
                try:
                    self._settle_parts()
                finally:
                    self._controls.end()
            except Exception:  # noqa: BLE001 - the loop gets the first error
                pass
            shutdown = getattr(self._it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            loader = self._loader()
            if loader is not None and loader._iterator is self._it:
                # Persistent workers: torch would resume these, stopped, at
                # the next iter(loader); it starts new ones instead, which
                # need a record of their own (as each iteration's do
                # without persistent_workers).
                loader._iterator = None
                self._ds._controls = self._controls.for_new_workers(loader.multiprocessing_context)

        def _next(self):
            while True:
                data, meta, tag = next(self._it)
                if tag is not None:
                    w, seq, part, key, index, last, rows = tag
                    if not last:
                        # Not the batch's last micro-batch: yielded unless
                        # the worker gave the batch back already.
                        if self._controls.given_back(w, seq):
                            continue
                        p = self._part.get(w)
                        n = (p[4] if p is not None and p[0] == seq else 0) + meta.size
                        self._part[w] = (seq, part, key, rows, n)
                    else:
                        # Forgotten once kept or dropped: a failure before
                        # (keep's, the acknowledge's, an interrupt) leaves
                        # the micro-batches yielded to _settle_parts, which
                        # keeps them and gives back the rest (the worker
                        # would give the batch back whole: rows twice).
                        if not self._controls.keep(w, seq, index):
                            self._part.pop(w, None)
                            continue
                        if not StreamingDataLoader._acknowledge(self._ds, part, key):
                            self._part.pop(w, None)
                            self._controls.drop(w, seq)
                            continue
                        self._part.pop(w, None)
                    self._learn(part, meta)
                return data, meta

        def _learn(self, part, meta) -> None:
            """The workers learn the partition's generation from their
            first batch of it, and the main process's dataset from the
            micro-batches it takes: new workers (each iteration's, without
            persistent_workers) start from the main process's copy, and so
            name the generation too (a partition cleared since ends their
            iteration instead of being waited for). Not once step() or
            reset() was called during this iteration: the next one is of
            another partition, or of the same one anew."""
            ds = self._ds
            if ds._partition_gen or not meta.partition_gen or part != ds.partition_id \
                    or ds._controls_seen != self._seen:
                return
            ds._partition_gen, ds._partition_cluster = meta.partition_gen, meta._cluster

        def _settle_parts(self) -> None:
            """The loop stopped inside batches (a break): give back the rows
            it has not had (UNCONSUME with indexes) and keep the ones it had
            (ACKNOWLEDGE), so each row is yielded once. Only for a batch the
            controller holds for this fetch (the default sampler's): one a
            shared sampler keeps for the group (rank_aware, grpo, ...) is
            not held, its rows cannot go back, and it is left to its worker,
            whose batch index is asked for again (the batch comes again
            whole). Against a controller without "unconsume_rows" the batch
            goes back whole, as before."""
            parts, self._part = self._part, {}
            if not parts:
                return
            c = self._ds._get_client()
            task = self._ds.task_name
            for w, (seq, part, key, rows, n) in parts.items():
                try:
                    held = set(c._call(wire.CONSUMPTION_STATUS,
                                       control_pb2.ConsumptionStatusRequest(partition=part, task=task),
                                       control_pb2.ConsumptionStatusReply, op_name="consumption status",
                                       partition=part).held)
                except errors.TQError:
                    continue  # left to its worker, which gives it back whole
                if not all(i in held for i in rows) or not self._controls.keep_part(w, seq):
                    continue
                # Taken from the worker: whatever fails from here, the
                # batch goes back whole (its rows may come again, none is
                # lost) and the other workers' batches are still settled.
                try:
                    c._give_back_rows(part, task, key, rows[n:])
                    kept = StreamingDataLoader._acknowledge(self._ds, part, key)
                except errors.TQError:
                    kept = False
                if kept:
                    self._controls.drop(w, seq, n)
                    continue
                try:
                    c._give_back(part, task, key)
                except errors.TQError:
                    pass  # the controller gives it back at the hold's TTL
                self._controls.drop(w, seq)

        def __del__(self):
            try:
                try:
                    self._settle_parts()
                finally:
                    self._controls.end()
            except Exception:  # noqa: BLE001 - at interpreter exit
                pass
else:
    StreamingDataset = StreamIterator

    class StreamingDataLoader:  # noqa: D101
        def __init__(self, *a, **kw):
            raise errors.NotSupportedError("StreamingDataLoader needs torch; iterate a StreamingDataset instead")
