"""Memory for gets that return fresh arrays, reused once they are dropped.

A get into fresh arrays spends most of its time on the new pages, not on
the copy: the kernel zeroes and maps every page of a fresh allocation
(288 MiB read at ~1.5 GiB/s into new memory against ~10 into memory
already touched, on the same machine). A training loop fetches batches of
much the same size step after step and drops each when the step is done,
so the pool keeps the mappings of dropped results and hands them to the
next gets of the same size class.

A mapping goes back to the pool when the array a get allocated is gone:
every field, row and view made from it holds it (numpy's views keep their
base), and so does a tensor made from one with ``torch.from_numpy``. Its
bytes are only reused after that. The pool keeps at most ``max_idle``
bytes of dropped mappings (``$TQ_GET_POOL_BYTES``, default 1 GiB; 0 turns
it off), the oldest let go first; a forked child starts with an empty one.
"""

from __future__ import annotations

import collections
import mmap
import os
import threading
import weakref

import numpy as np

from . import _fork

MIN = 1 << 20  # below this, numpy's own allocation
ENV = "TQ_GET_POOL_BYTES"


def size_class(n: int) -> int:
    """n rounded up to one of 8 sizes per power of two (at most 12.5% more)."""
    step = 1 << max(n.bit_length() - 4, 12)
    return -(-n // step) * step


class BufferPool:
    """Anonymous mappings for get results, kept when dropped (up to
    ``max_idle`` bytes of them) and reused by size class."""

    def __init__(self, max_idle: int):
        if max_idle < 0:
            raise ValueError(f"max_idle {max_idle} is negative")
        self.max_idle = max_idle
        self._reset()
        _fork.reinit_in_child(self)

    def _reinit_in_child(self):
        # The parent's idle mappings are copy-on-write here: writing them
        # costs what fresh pages cost. They go, and the parent's lock with
        # them.
        self._reset()

    def _reset(self):
        self._lock = threading.Lock()
        self._idle = collections.OrderedDict()  # id → (size class, mapping), oldest first
        self._by_class = collections.defaultdict(list)  # size class → ids in _idle
        self._idle_bytes = 0
        # Mappings whose arrays were dropped, not filed yet: the drop may
        # come from any thread, in the middle of anything (the garbage
        # collector included), so it appends here, and files them only if
        # the lock is free.
        self._returned = collections.deque()
        self.hits = self.misses = 0

    @property
    def idle_bytes(self) -> int:
        """Bytes of dropped mappings the pool keeps (filed so far)."""
        self._lock.acquire()
        try:
            self._file()
            return self._idle_bytes
        finally:
            self._unlock()

    def alloc(self, n: int) -> np.ndarray:
        """n uninitialised bytes: a dropped mapping of n's size class if
        the pool has one, else a new one populated at once (MAP_POPULATE:
        faulting fresh pages in one by one is slower still)."""
        if n < MIN or not hasattr(mmap, "MAP_POPULATE"):
            return np.empty(n, dtype=np.uint8)
        c = size_class(n)
        m = None
        self._lock.acquire()
        try:
            self._file()
            ids = self._by_class.get(c)
            if ids:
                _, m = self._idle.pop(ids.pop())
                self._idle_bytes -= c
                self.hits += 1
            else:
                self.misses += 1
        finally:
            self._unlock()
        if m is None:
            m = mmap.mmap(-1, c, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
        a = np.frombuffer(m, dtype=np.uint8, count=n)
        weakref.finalize(a, self._give_back, c, m).atexit = False
        return a

    def _give_back(self, c, m):
        self._returned.append((c, m))
        # Filed now, when the lock is free, so that what is dropped past
        # max_idle is let go at once rather than at the next large alloc
        # (which may never come). Never waits: this thread may hold the
        # lock already (a collection inside _file); what is dropped while
        # another holds it is filed by that one as it lets go (_unlock).
        if self._lock.acquire(blocking=False):
            try:
                self._file()
            finally:
                self._unlock()

    def _unlock(self):
        """Releases _lock, then files what was dropped while it was held:
        a drop that found the lock taken appended before the holder let
        go, so the holder sees it here, or else a later holder does."""
        while True:
            self._lock.release()
            if not self._returned or not self._lock.acquire(blocking=False):
                return
            try:
                self._file()
            except BaseException:
                self._lock.release()
                raise

    def clear(self) -> None:
        """Lets every idle mapping go."""
        self._lock.acquire()
        try:
            self._file()
            self._idle.clear()
            self._by_class.clear()
            self._idle_bytes = 0
        finally:
            self._unlock()

    def _file(self):
        """Files the returned mappings, then lets the oldest go until at
        most max_idle bytes are idle. Under _lock."""
        while self._returned:
            c, m = self._returned.popleft()
            key = id(m)
            self._idle[key] = (c, m)
            self._by_class[c].append(key)
            self._idle_bytes += c
        while self._idle_bytes > self.max_idle:
            key, (c, _) = self._idle.popitem(last=False)
            self._by_class[c].remove(key)
            self._idle_bytes -= c
            # The mapping is unmapped once nothing refers to it (the
            # last view's base may still be on its way out).


def _max_idle_from_env() -> int:
    v = os.environ.get(ENV)
    if v is None or v == "":
        return 1 << 30
    try:
        n = int(v)
    except ValueError:
        raise ValueError(f"${ENV}={v!r} is not a number of bytes") from None
    if n < 0:
        raise ValueError(f"${ENV}={v!r} is negative")
    return n


pool = BufferPool(_max_idle_from_env())


def alloc(n: int) -> np.ndarray:
    """n uninitialised bytes for a get's result, from the process's pool."""
    return pool.alloc(n)
