"""Values ↔ TQ columns (wire/spec.md, "Cell bytes").

A field's value for n rows is one of:

* **dense**: a numpy array (or a torch tensor) whose first dimension is n;
  every row has the shape ``value.shape[1:]``.
* **ragged**: a list of n arrays of one dtype and any shapes (a scalar,
  a Python number or a 0-d array or tensor, is a row of shape ()), a
  torch nested tensor, or a tuple ``(values, offsets)`` of a flat array and n+1
  offsets (row i is ``values[offsets[i]:offsets[i+1]]``), the form packed
  sequences take.
* **opaque**: a list of n ``str`` or ``bytes`` (str is stored as UTF-8).

A row a list cannot take (None, a str among arrays, a str with a lone
surrogate, which UTF-8 cannot carry) is an InvalidError naming the field
and the row; nothing is sent.

numpy has no bfloat16 or float8 types. TQ stores them bit-exact and numpy
holds their bit patterns: :data:`bfloat16` is a ``uint16`` dtype and
:data:`float8_e4m3fn`/:data:`float8_e5m2` are ``uint8`` dtypes, each marked
with numpy dtype metadata so that a put knows them (``arr.view(tq.bfloat16)``)
and a get returns them marked the same way. :func:`as_dtype` wraps an array
with an explicit TQ dtype instead. torch tensors of ``torch.bfloat16`` and the
float8 types are converted both ways when torch is importable.

A bool cell is one byte, 0 or 1, and a put sends a bool array's bytes as
they are. numpy and torch bools are 0 or 1, except an array made by
reinterpreting other bytes (``arr.view(bool)``, ``t.view(torch.bool)``):
TQ stores such bytes unchanged and a Go reader takes any nonzero byte as
true, but numpy's own vectorised operations on them can misbehave, so
convert with ``arr != 0`` before a put.
"""

from __future__ import annotations

import math

import numpy as np

from . import errors
from ._pb import control_pb2

__all__ = ["bfloat16", "float8_e4m3fn", "float8_e5m2", "as_dtype", "Typed", "tq_dtype",
           "numpy_dtype", "DTYPES"]

bfloat16 = np.dtype("<u2", metadata={"tq_dtype": "bfloat16"})
float8_e4m3fn = np.dtype("u1", metadata={"tq_dtype": "float8_e4m3fn"})
float8_e5m2 = np.dtype("u1", metadata={"tq_dtype": "float8_e5m2"})

# TQ dtype name → numpy dtype (little-endian: cell bytes are little-endian).
DTYPES = {
    "float64": np.dtype("<f8"), "float32": np.dtype("<f4"), "float16": np.dtype("<f2"),
    "bfloat16": bfloat16, "float8_e4m3fn": float8_e4m3fn, "float8_e5m2": float8_e5m2,
    "int64": np.dtype("<i8"), "int32": np.dtype("<i4"), "int16": np.dtype("<i2"), "int8": np.dtype("i1"),
    "uint64": np.dtype("<u8"), "uint32": np.dtype("<u4"), "uint16": np.dtype("<u2"), "uint8": np.dtype("u1"),
    "complex64": np.dtype("<c8"), "complex128": np.dtype("<c16"), "bool": np.dtype("?"),
}
_BY_KIND = {(d.kind, d.itemsize): name for name, d in DTYPES.items() if d.metadata is None}


class Typed:
    """An array with an explicit TQ dtype: ``Typed(bits_uint16, "bfloat16")``.
    ``array``: anything np.asarray takes, or a torch tensor (its values
    brought to the host); an array of objects, str or bytes, whose memory
    holds no values' bits, is InvalidError."""

    __slots__ = ("array", "dtype")

    def __init__(self, array, dtype: str):
        if dtype not in DTYPES:
            raise errors.InvalidError(f"unknown TQ dtype {dtype!r}")
        a = _bits(array)
        want = DTYPES[dtype]
        if a.dtype.itemsize != want.itemsize:
            raise errors.InvalidError(f"a {a.dtype} array cannot hold {dtype} ({want.itemsize}-byte elements)")
        self.array, self.dtype = a, dtype


def as_dtype(array, dtype: str) -> np.ndarray:
    """``array``'s values' bits as an array of TQ dtype ``dtype``: a view of
    a C-contiguous little-endian array (no copy), else of a C-contiguous
    little-endian copy (a big-endian ``>u2`` array keeps its values)."""
    if dtype not in DTYPES:
        raise errors.InvalidError(f"unknown TQ dtype {dtype!r}")
    a = _little(_bits(array))
    want = DTYPES[dtype]
    if a.dtype.itemsize != want.itemsize:
        raise errors.InvalidError(f"a {a.dtype} array cannot hold {dtype}")
    return a.view(want)


def _bits(v) -> np.ndarray:
    """v as a numpy array whose bits a TQ dtype may be given (Typed,
    as_dtype): a torch tensor's values on the host (bfloat16 and float8 as
    their bits), anything else by np.asarray. An array of objects, str,
    bytes or records has no such bits: InvalidError naming its dtype."""
    if is_tensor(v):
        return _from_tensor(v)
    _unmasked(v)
    try:
        a = np.asarray(v)
    except (ValueError, TypeError) as e:
        raise errors.InvalidError(f"a {type(v).__name__} that numpy cannot make an array of: {e}") from None
    if a.dtype.kind in "OUSV":
        raise errors.InvalidError(f"an array of {a.dtype} has no bits a TQ dtype can be given")
    return a


def tq_dtype(dt: np.dtype) -> str:
    """The TQ dtype name of a numpy dtype (metadata marks bfloat16 and float8)."""
    md = dt.metadata
    if md and "tq_dtype" in md:
        return md["tq_dtype"]
    name = _BY_KIND.get((dt.kind, dt.itemsize))
    if name is None:
        raise errors.InvalidError(f"numpy dtype {dt} has no TQ dtype")
    return name


def numpy_dtype(name: str) -> np.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise errors.CorruptError(f"unknown dtype {name!r}") from None


# torch, when importable.
try:  # pragma: no cover - depends on the environment
    import torch as _torch
except Exception:  # noqa: BLE001
    _torch = None

_TORCH_SPECIAL = {}
if _torch is not None:  # pragma: no cover
    _TORCH_SPECIAL[_torch.bfloat16] = ("bfloat16", _torch.int16)
    for _n in ("float8_e4m3fn", "float8_e5m2"):
        if hasattr(_torch, _n):
            _TORCH_SPECIAL[getattr(_torch, _n)] = (_n, _torch.uint8)


def is_tensor(v) -> bool:
    return _torch is not None and isinstance(v, _torch.Tensor)


def _from_tensor(t) -> np.ndarray:
    """A numpy array of t's values on the host. A tensor numpy cannot
    hold (a dtype it has not, a sparse layout) or whose values cannot be
    brought to the host (a meta tensor) is an InvalidError."""
    t = t.detach()
    try:
        if t.device.type == "cuda":
            t = _to_pinned(t)
        elif t.device.type != "cpu":
            t = t.cpu()
    except (RuntimeError, NotImplementedError) as e:
        # A tensor with no bytes to copy (device "meta"), or a device the
        # copy fails on: torch's own error named no field.
        raise errors.InvalidError(f"a torch tensor on device {t.device} cannot be copied to the host: {e}") from None
    try:
        # A lazy conjugate (t.conj()) or negation (its .imag) is a view
        # whose values numpy cannot see (.numpy() refuses it): materialise.
        t = t.resolve_conj().resolve_neg().contiguous()
        sp = _TORCH_SPECIAL.get(t.dtype)
        if sp is not None:
            return t.view(sp[1]).numpy().view(DTYPES[sp[0]])
        return t.numpy()
    except (RuntimeError, TypeError) as e:
        raise errors.InvalidError(f"a torch tensor of {t.dtype} ({t.layout}) has no numpy form: {e}") from None


def torch_dtype(name: str):
    """The torch dtype of the TQ dtype ``name``."""
    if _torch is None:
        raise errors.NotSupportedError("torch is not importable")
    return to_tensor(np.empty(0, dtype=numpy_dtype(name))).dtype


def _to_pinned(t):
    """t, a CUDA tensor, copied to page-locked host memory (torch's caching
    host allocator keeps the block for the next put). Copied into fresh
    pageable memory (.cpu()), 288 MiB left an H200 at ~1.3 GiB/s; into
    page-locked memory the copy runs at the link's speed (tq.bench
    --device cuda). Where memory cannot be page-locked, .cpu()."""
    try:
        host = _torch.empty(tuple(t.shape), dtype=t.dtype, pin_memory=True)
    except RuntimeError:
        return t.cpu()
    host.copy_(t)
    return host


def to_tensor(a: np.ndarray, field: str | None = None):
    """A torch tensor over ``a`` (no copy; bfloat16/float8 keep their torch
    dtype). A dtype this torch has no tensors of (uint16/32/64 before torch
    2.3) is NotSupportedError naming it, and ``field`` when given."""
    if _torch is None:
        raise errors.NotSupportedError("torch is not importable")
    name = tq_dtype(a.dtype)
    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        a = a.view(np.int16 if name == "bfloat16" else np.uint8)
    try:
        if not a.flags.writeable:
            # A read-only view stays read-only by contract; torch only warns
            # that it cannot mark the tensor so.
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = _torch.from_numpy(a)
        else:
            t = _torch.from_numpy(a)
    except TypeError:
        of = f"field {field!r}: " if field is not None else ""
        raise errors.NotSupportedError(f"{of}torch {_torch.__version__} has no {name} tensors (torch 2.3 added "
                                       f"uint16, uint32 and uint64): read it as a numpy array",
                                       fields=[field] if field is not None else None) from None
    if name == "bfloat16":
        return t.view(_torch.bfloat16)
    if name in ("float8_e4m3fn", "float8_e5m2") and hasattr(_torch, name):
        return t.view(getattr(_torch, name))
    return t


def _array(v):
    """A C-contiguous little-endian numpy array and its TQ dtype name."""
    if isinstance(v, Typed):
        a, name = _little(v.array), v.dtype
        return a.view(DTYPES[name]) if a.dtype.itemsize == DTYPES[name].itemsize else a, name
    if is_tensor(v):
        a = _from_tensor(v)
    else:
        _unmasked(v)
        try:
            a = np.asarray(v)
        except (ValueError, TypeError) as e:  # rows of unequal lengths, say
            raise errors.InvalidError(f"a {type(v).__name__} that numpy cannot make an array of: {e}") from None
    if a.dtype.kind in "OUSV":
        raise errors.InvalidError(f"an array of {a.dtype} is not a tensor field (use a list of str or bytes)")
    return _little(a), tq_dtype(a.dtype)


def _unmasked(v) -> None:
    """InvalidError for a numpy masked array that masks a value: np.asarray
    takes its data and drops the mask, so the values it hides would be
    stored as if valid. One that masks nothing is its data."""
    if isinstance(v, np.ma.MaskedArray) and np.ma.count_masked(v):
        raise errors.InvalidError(f"a masked array ({np.ma.count_masked(v)} of {v.size} values masked) would be stored "
                                  "without its mask: pass a.filled(value), or the rows without masked values")


def _little(a: np.ndarray) -> np.ndarray:
    """a's values in a C-contiguous little-endian array (cell bytes are
    little-endian): a itself when it is one. A big-endian array is
    converted, not reinterpreted, so that its values are kept. A 0-d array
    stays 0-d (np.ascontiguousarray makes it 1-d): a row of a scalar keeps
    the shape ()."""
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


JOIN_ROWS_BELOW = 64 << 10  # a ragged field's rows, on average smaller, go as one buffer


def _marked(dt: np.dtype):
    """The TQ dtype that dt's metadata marks it as (bfloat16, float8), or None."""
    md = dt.metadata
    return md.get("tq_dtype") if md else None


def _plain_rows(v):
    """v's rows as they are when every one is a C-contiguous native numpy
    array of one plain dtype (the common case, checked without _array's
    per-row work); else None."""
    if not all(type(x) is np.ndarray for x in v):
        return None
    # numpy's dtype equality ignores metadata: uint16 and bfloat16 (or the
    # two float8 kinds) are one dtype to a set, so the metadata goes in too.
    dts = {(x.dtype, _marked(x.dtype)) for x in v}
    if len(dts) != 1:
        return None  # _array's path names the mix
    d, _ = dts.pop()
    if d.kind in "OUSV" or d.byteorder == ">":
        return None
    if not all(x.flags.c_contiguous for x in v):
        return None
    return list(v)


class Column:
    """One field's value in wire form: its schema, its rows' byte lengths, and
    the buffers that hold its bytes back to back."""

    __slots__ = ("name", "dtype", "kind", "shape", "shapes", "row_lens", "bufs", "nbytes")

    def __init__(self, name, dtype, kind, shape, shapes, row_lens, bufs):
        self.name, self.dtype, self.kind = name, dtype, kind
        self.shape, self.shapes, self.row_lens, self.bufs = shape, shapes, row_lens, bufs
        self.nbytes = sum(row_lens)

    def commit_field(self, locs=None) -> control_pb2.CommitField:
        f = control_pb2.CommitField(name=self.name, dtype=self.dtype, kind=self.kind)
        if self.kind == "dense":
            f.shape.dims.extend(self.shape)
        elif self.kind == "ragged":
            for s in self.shapes:
                f.shapes.add().dims.extend(s)
        if locs is not None:
            f.has_locs = True
            f.locs.CopyFrom(locs)
        return f

    def rows(self, lo: int, hi: int) -> "Column":
        """Rows lo..hi of the column: the same schema, the bytes a view of
        this column's (no copy), for writing part of a put elsewhere."""
        cum = np.concatenate(([0], np.cumsum(self.row_lens, dtype=np.int64)))
        start, stop = int(cum[lo]), int(cum[hi])
        bufs, at = [], 0
        for b in self.bufs:
            flat = b.reshape(-1).view(np.uint8) if isinstance(b, np.ndarray) else \
                np.frombuffer(memoryview(b).cast("B"), dtype=np.uint8)
            end = at + len(flat)
            if end > start and at < stop:
                bufs.append(flat[max(start - at, 0):min(stop, end) - at])
            at = end
        return Column(self.name, self.dtype, self.kind, self.shape,
                      self.shapes[lo:hi] if self.shapes is not None else None, self.row_lens[lo:hi], bufs)

    def lens_pb(self) -> control_pb2.RowLens:
        return control_pb2.RowLens(lens=self.row_lens if self.kind == "opaque" else [])


def to_column(name: str, v, n: int) -> Column:
    """Convert a field's value for n rows (see the module doc). A value it
    cannot take is an InvalidError naming the field."""
    try:
        return _to_column(name, v, n)
    except errors.InvalidError as e:
        if e.fields:
            raise
        raise errors.InvalidError(f"field {name!r}: {e.message}", op=e.op, partition=e.partition,
                                  keys=e.keys, fields=[name]) from e


def _is_nested(v) -> bool:
    return is_tensor(v) and getattr(v, "is_nested", False)


def _is_packed(v) -> bool:
    """Whether v is the ragged form (values, offsets), not two rows."""
    return isinstance(v, tuple) and len(v) == 2 and not isinstance(v[0], (str, bytes))


def rows_of(name: str, v) -> int:
    """The number of rows of field ``name``'s value ``v``, told apart as
    :func:`to_column` tells its forms apart. A value with no first
    dimension (a scalar) is an InvalidError naming the field."""
    if _is_nested(v):
        return int(v.size(0))
    if _is_packed(v):
        return len(v[1]) - 1
    if isinstance(v, (list, tuple)):
        return len(v)
    if isinstance(v, Typed):
        shape = v.array.shape
    elif is_tensor(v):
        shape = tuple(v.shape)
    else:
        shape = np.shape(v)
    if not shape:
        raise errors.InvalidError(f"field {name!r} has no first dimension (its rows): a "
                                  f"{type(v).__name__} of shape ()", fields=[name])
    return int(shape[0])


# The longest key, partition id, field or task name, in UTF-8 bytes: Go's
# engine.MaxNameBytes, which the controller enforces too.
MAX_NAME_BYTES = 64 << 10


def check_name_size(what: str, name: str, at: str = "", **info) -> None:
    """InvalidError if ``name`` (UTF-8 text) is longer than
    MAX_NAME_BYTES, saying ``what`` it is (``at``: where in a list), its
    length and the limit, quoting only its first characters."""
    if len(name) <= MAX_NAME_BYTES // 4:  # at most 4 bytes a character
        return
    n = len(name) if name.isascii() else len(name.encode())
    if n > MAX_NAME_BYTES:
        raise errors.InvalidError(f"{what} {name[:32]!r}…{at} is {n} bytes long, past the limit of {MAX_NAME_BYTES}",
                                  **info)


def check_name(name) -> None:
    """InvalidError unless ``name`` can name a field: a non-empty str the
    request carries as UTF-8, of at most MAX_NAME_BYTES. Checked before
    any byte of a put is written (protobuf would refuse it only once they
    were on a unit)."""
    if not isinstance(name, str):
        raise errors.InvalidError(f"field name {name!r} is a {type(name).__name__}, not a str", fields=[name])
    if not name:
        raise errors.InvalidError("empty field name", fields=[name])
    try:
        name.encode()
    except UnicodeEncodeError as e:
        raise errors.InvalidError(f"field name {name!r} is not UTF-8 text: {e.reason}", fields=[name]) from None
    check_name_size("field name", name, fields=[name])


_OPAQUE = (str, bytes, bytearray, memoryview)


def _bad_text(v) -> None:
    """InvalidError naming the first row of v, a list of str and bytes,
    that is a str UTF-8 cannot carry (a lone surrogate, as a name decoded
    with surrogateescape holds)."""
    for i, x in enumerate(v):
        if isinstance(x, str):
            try:
                x.encode()
            except UnicodeEncodeError as e:
                raise errors.InvalidError(f"row {i} is not valid Unicode text ({e.reason}: "
                                          f"{e.object[e.start:e.end]!r} at {e.start}): pass its bytes") from None


def _what(x) -> str:
    return "None" if x is None else f"a {type(x).__name__}"


def _row_arrays(v) -> list:
    """_array of each row of v, a list field's value; a row it cannot take
    is an InvalidError naming the row. A row of str or bytes (which no
    array holds) among others says so: the field is opaque only when
    every row is."""
    text = next((i for i, x in enumerate(v) if isinstance(x, (str, bytes))), None)
    if text is not None:
        i, x = next((i, x) for i, x in enumerate(v) if not isinstance(x, _OPAQUE))
        raise errors.InvalidError(f"row {i} is {_what(x)}, not str or bytes as row {text} is")
    out = []
    for i, x in enumerate(v):
        if x is None:
            raise errors.InvalidError(f"row {i} is None")
        try:
            out.append(_array(x))
        except errors.InvalidError as e:
            raise errors.InvalidError(f"row {i}: {e.message}") from None
    return out


def _to_column(name: str, v, n: int) -> Column:
    check_name(name)
    if _is_nested(v):
        v = list(v.unbind())  # a nested tensor is ragged: one tensor per row
    if _is_packed(v):
        a, dt = _array(v[0])
        try:
            offs = np.asarray(v[1])
        except (ValueError, TypeError) as e:
            raise errors.InvalidError(f"field {name!r}: offsets that numpy cannot make an array of: {e}",
                                      fields=[name]) from None
        if offs.dtype.kind not in "iu":
            # Not cast: float offsets would be truncated, and the rows
            # taken split where nobody said.
            raise errors.InvalidError(f"field {name!r}: offsets of {offs.dtype}, want integers", fields=[name])
        offs = offs.astype(np.int64)
        if a.ndim != 1 or offs.ndim != 1 or len(offs) != n + 1 or offs[0] != 0 or offs[-1] != len(a) \
                or np.any(np.diff(offs) < 0):
            raise errors.InvalidError(f"field {name!r}: (values, offsets) needs 1-D values and {n + 1} "
                                      "non-decreasing offsets from 0 to len(values)", fields=[name])
        lens = (np.diff(offs) * a.itemsize).tolist()
        shapes = [(int(x),) for x in np.diff(offs)]
        return Column(name, dt, "ragged", None, shapes, lens, [a])
    if isinstance(v, (list, tuple)):
        if len(v) != n:
            raise errors.InvalidError(f"field {name!r} has {len(v)} rows, want {n}", fields=[name])
        if n and all(isinstance(x, _OPAQUE) for x in v):
            try:
                rows = [x.encode() if isinstance(x, str) else bytes(x) for x in v]
            except UnicodeEncodeError:
                _bad_text(v)
                raise
            return Column(name, "bytes", "opaque", None, None, [len(r) for r in rows], [b"".join(rows)])
        rows = _plain_rows(v)
        if rows is not None:
            dt = tq_dtype(rows[0].dtype)
        else:
            arrs = _row_arrays(v)
            dts = {d for _, d in arrs}
            if len(dts) != 1:
                first = {}
                for i, (_, d) in enumerate(arrs):
                    first.setdefault(d, i)
                at = ", ".join(f"row {first[d]} {d}" for d in sorted(dts))
                raise errors.InvalidError(f"ragged field {name!r} mixes dtypes {sorted(dts)} ({at})", fields=[name])
            dt = dts.pop()
            rows = [a for a, _ in arrs]
        lens = [a.nbytes for a in rows]
        bufs = rows
        if n > 1 and sum(lens) < n * JOIN_ROWS_BELOW:
            # Many small rows: one buffer (one copy, in C) instead of a
            # buffer a row, each of which costs the send and the write a
            # Python step.
            bufs = [b"".join(rows)]
        return Column(name, dt, "ragged", None, [a.shape for a in rows], lens, bufs)
    a, dt = _array(v)
    if a.ndim == 0 or a.shape[0] != n:
        raise errors.InvalidError(f"field {name!r} has shape {a.shape}: its first dimension must be the {n} rows",
                                  fields=[name])
    row = a.nbytes // n if n else 0
    return Column(name, dt, "dense", a.shape[1:], None, [row] * n, [a])


def columns(fields, n: int):
    if fields is None:
        return []
    if hasattr(fields, "items"):
        items = list(fields.items())
    else:
        raise errors.InvalidError("fields must be a dict of name → value")
    return [to_column(k, v, n) for k, v in items]


def from_bytes(dtype: str, kind: str, shape, shapes, row_lens, n: int, buf, *, owned=True):
    """A field's value over ``buf`` (the field's rows back to back): a dense
    array, a list of arrays (ragged) or a list of bytes (opaque). The arrays
    alias ``buf``. A ``buf`` whose length is not what the rows take (or
    row lengths or shapes that are not one a row) is CorruptError: a reply
    that does not agree with its metadata."""
    mv = memoryview(buf).cast("B") if not isinstance(buf, np.ndarray) else buf
    if kind == "opaque":
        if len(row_lens) != n or sum(row_lens) != len(mv):
            raise errors.CorruptError(f"{n} opaque rows: {len(row_lens)} row lengths of {sum(row_lens)} bytes "
                                      f"over {len(mv)} bytes")
        out, at = [], 0
        for L in row_lens:
            out.append(bytes(mv[at:at + L]))
            at += L
        return out
    dt = numpy_dtype(dtype)
    if kind == "dense":
        shape = tuple(shape)
        if n * math.prod(shape) * dt.itemsize != len(mv):
            raise errors.CorruptError(f"{n} dense rows of {dtype}{list(shape)} take {n * math.prod(shape) * dt.itemsize} "
                                      f"bytes, not {len(mv)}")
        return np.frombuffer(mv, dtype=dt, count=n * math.prod(shape)).reshape((n,) + shape)
    if kind == "ragged":
        # One array over all rows, sliced a row at a time (a slice costs
        # a fifth of a frombuffer); reshaped only where a row is not 1-D.
        counts = [math.prod(s) for s in shapes]
        if len(shapes) != n or sum(counts) * dt.itemsize != len(mv):
            raise errors.CorruptError(f"{n} ragged rows of {dtype}: {len(shapes)} shapes of {sum(counts) * dt.itemsize} "
                                      f"bytes over {len(mv)} bytes")
        flat = np.frombuffer(mv, dtype=dt, count=sum(counts))
        out, at = [], 0
        for s, cnt in zip(shapes, counts):
            a = flat[at:at + cnt]
            out.append(a if len(s) == 1 else a.reshape(tuple(s)))
            at += cnt
        return out
    raise errors.CorruptError(f"unknown kind {kind!r}")
