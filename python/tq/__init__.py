"""TQ's Python client: TransferQueue's API over TQ's wire protocol.

    import tq
    tq.init()                                   # $TQ_ADDRESS, else tcp://127.0.0.1:7370
    tq.kv_batch_put(["a", "b"], "train", {"x": np.ones((2, 3), np.float32)}, [{"s": 1}, {"s": 2}])
    tq.kv_batch_get(["a"], "train")             # {"x": array([[1., 1., 1.]], dtype=float32)}
    tq.kv_list("train")                          # {"train": {"a": {"s": 1}, "b": {"s": 2}}}
    tq.kv_clear(["a", "b"], "train")
    tq.close()

Every ``kv_*`` call has an ``async_`` twin (a coroutine run on a worker
thread). :func:`get_client` returns the :class:`Client` for the low-level
API (``get_meta``, ``put``, ``get_data``, …).
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import urllib.parse

from . import errors
from .client import ABSENT, Client, View, tag_conditions
from .columns import MAX_NAME_BYTES, Typed, as_dtype, bfloat16, float8_e4m3fn, float8_e5m2
from .errors import (CanceledError, CapacityError, ClosedError, CorruptError, DeadlineError, DoneError, DTypeMismatchError,
                     InternalError, InvalidError, LostError, NotFoundError, NotReadyError, NotSupportedError, StaleError,
                     ServerUnprovenError, TooLargeError, TQError, UnauthenticatedError, UnavailableError, UnitLostError)
from .meta import BatchMeta, KVBatchMeta

__version__ = "0.1.0"

__all__ = [
    "init", "close", "get_client", "get_metrics_endpoint", "kv_put", "kv_batch_put", "kv_batch_get", "kv_batch_get_by_meta", "kv_list",
    "kv_clear", "async_kv_put", "async_kv_batch_put", "async_kv_batch_get", "async_kv_batch_get_by_meta",
    "async_kv_list", "async_kv_clear", "save_checkpoint", "load_checkpoint", "list_checkpoints",
    "Client", "TransferQueueClient",
    "BatchMeta", "KVBatchMeta", "View", "StreamingDataset", "StreamingDataLoader", "StreamIterator",
    "bfloat16", "float8_e4m3fn", "float8_e5m2", "as_dtype", "MAX_NAME_BYTES", "Typed", "ABSENT", "tag_conditions", "errors",
    "TQError", "InvalidError", "NotFoundError", "StaleError", "DTypeMismatchError", "NotReadyError", "CapacityError", "TooLargeError", "ClosedError", "NotSupportedError",
    "LostError", "CorruptError", "DeadlineError", "CanceledError", "UnauthenticatedError", "ServerUnprovenError", "InternalError",
    "UnavailableError", "UnitLostError", "DoneError",
]

TransferQueueClient = Client

_client: Client | None = None
_closed_by_close = False  # tq.close() closed a client, and no init() since
_lock = threading.Lock()


def _after_fork() -> None:
    # A thread of the parent may have held it at the fork.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


def init(address: str | None = None, *, token: str | None = None, transport: str = "auto",
         name: str = "tq-python", **kw) -> Client:
    """Connect this process to the TQ cluster at ``address`` (default
    $TQ_ADDRESS, else tcp://127.0.0.1:7370). Calling it again returns the
    same client. Starts nothing: run ``tq serve`` first."""
    global _client, _closed_by_close
    with _lock:
        if _client is None:
            _client = Client(address, token=token, transport=transport, name=name, **kw)
            _closed_by_close = False
        return _client


def close() -> None:
    """Close this process's connections (the cluster keeps running). Calls
    in flight on other threads fail with ClosedError; module-level calls
    made after it fail with ClosedError too, until :func:`init` is called
    again."""
    global _client, _closed_by_close
    with _lock:
        c, _client = _client, None
        if c is not None:
            _closed_by_close = True
    if c is not None:
        c.close()


def get_client() -> Client:
    """The client :func:`init` made; ClosedError before it, or after
    :func:`close`, each saying which."""
    c = _client
    if c is None:
        if _closed_by_close:
            raise errors.ClosedError("tq was closed by tq.close(); call tq.init() again to use it")
        raise errors.ClosedError("tq has not been initialized yet; call tq.init() first")
    return c


def get_metrics_endpoint() -> str | None:
    """The cluster's Prometheus endpoint as TransferQueue's
    get_metrics_endpoint gives it: ``"host:port"``, its metrics at
    ``http://host:port/metrics``. That is the first endpoint the
    controller lists: its own process's when it serves one (``tq serve
    --metrics``), which for ``--role all`` covers its storage units too.
    None when no server serves metrics, or before :func:`init`.
    ``get_client().metrics_endpoints()`` lists every one, as URLs."""
    c = _client
    if c is None:
        return None
    eps = c.metrics_endpoints()
    if not eps:
        return None
    return urllib.parse.urlsplit(eps[0]).netloc or eps[0]


def kv_put(key, partition_id, fields=None, tag=None) -> KVBatchMeta:
    return get_client().kv_put(key, partition_id, fields, tag)


def kv_batch_put(keys, partition_id, fields=None, tags=None) -> KVBatchMeta:
    return get_client().kv_batch_put(keys, partition_id, fields, tags)


def kv_batch_get(keys, partition_id, select_fields=None, *, copy=True, device=None):
    return get_client().kv_batch_get(keys, partition_id, select_fields, copy=copy, device=device)


def kv_batch_get_by_meta(meta: KVBatchMeta, select_fields=None, *, copy=True):
    if meta.partition_id is None:
        raise errors.InvalidError("meta has no partition_id")
    if select_fields is not None:
        sel = [select_fields] if isinstance(select_fields, str) else list(select_fields)
        unknown = [f for f in sel if meta.fields is not None and f not in meta.fields]
        if unknown:
            raise errors.InvalidError("Some fields assigned in select_fields not found in meta", fields=unknown)
    else:
        sel = meta.fields
    return kv_batch_get(meta.keys, meta.partition_id, sel, copy=copy)


def kv_list(partition_id=None) -> dict:
    return get_client().kv_list(partition_id)


def kv_clear(keys, partition_id) -> None:
    return get_client().kv_clear(keys, partition_id)


def save_checkpoint(name: str, *, include_storage: bool = True, metadata: dict | None = None) -> dict:
    """Save the cluster's metadata and every cell's bytes as checkpoint
    ``name`` under the controller's data directory, with ``metadata`` (a
    dict) kept beside them; see :meth:`Client.save_checkpoint`."""
    return get_client().save_checkpoint(name, include_storage=include_storage, metadata=metadata)


def load_checkpoint(name: str) -> dict | None:
    """Replace the cluster's state with checkpoint ``name``; returns the
    metadata it was saved with (see :meth:`Client.load_checkpoint`)."""
    return get_client().load_checkpoint(name)


def list_checkpoints() -> list:
    """The saved checkpoints, each a dict with its ``metadata`` (see
    :meth:`Client.list_checkpoints`)."""
    return get_client().list_checkpoints()


def _async(fn):
    @functools.wraps(fn)
    async def twin(*args, **kw):
        return await asyncio.to_thread(fn, *args, **kw)
    twin.__name__ = "async_" + fn.__name__
    twin.__doc__ = f"The asyncio twin of :func:`{fn.__name__}` (runs it on a worker thread)."
    return twin


async_kv_put = _async(kv_put)
async_kv_batch_put = _async(kv_batch_put)
async_kv_batch_get = _async(kv_batch_get)
async_kv_batch_get_by_meta = _async(kv_batch_get_by_meta)
async_kv_list = _async(kv_list)
async_kv_clear = _async(kv_clear)


def __getattr__(name):
    if name in ("StreamingDataset", "StreamingDataLoader", "StreamIterator"):
        from . import loader
        return getattr(loader, name)
    raise AttributeError(f"module 'tq' has no attribute {name!r}")
