"""Objects whose locks (and other per-process state) a child forked
without exec makes anew: a thread of the parent may have held a lock at
the fork, and the child has none of the parent's threads to release it.
Each registered object has a ``_reinit_in_child`` method; it leaves the
registry when it is garbage."""

from __future__ import annotations

import os
import threading
import weakref

_objs = weakref.WeakSet()
_lock = threading.Lock()


def reinit_in_child(obj) -> None:
    """Have a child this process forks call ``obj._reinit_in_child()``."""
    with _lock:
        _objs.add(obj)


def _after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    for o in list(_objs):
        try:
            o._reinit_in_child()
        except Exception:  # the others are made anew all the same
            pass


os.register_at_fork(after_in_child=_after_fork)
