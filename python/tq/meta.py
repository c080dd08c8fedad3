"""BatchMeta and KVBatchMeta: what the controller hands out."""

from __future__ import annotations

import collections.abc as _abc
import copy as _copy
import json
import operator
from dataclasses import dataclass, field

import numpy as np

from . import addrs as _addrs
from . import errors


# One encoder for every tag: json.dumps builds a new one per call when
# given options, which cost more than encoding a small tag.
# Strings go out as UTF-8, not \u escapes: a lone surrogate, which an
# escape would carry and the server would read as U+FFFD, cannot be
# encoded and is refused here.
_ENC = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_PLAIN = frozenset((str, float, bool, type(None)))


def _changed_by_json(v):
    """Why the server would not keep v as given, or None: an int past
    int64 (it would keep a float) or a dict key that is not a str (JSON
    would write it as one), at any depth, as the Go client's
    CheckTagValue refuses them. The rest the encoder judges."""
    t = type(v)
    if t in _PLAIN:
        return None
    if t is dict:
        # The common case, a tag's flat dict of plain values, checked
        # without a call per value; anything else takes the walk below.
        for k, x in v.items():
            tx = type(x)
            if type(k) is not str or not (tx in _PLAIN or (tx is int and _INT64_MIN <= x <= _INT64_MAX)):
                break
        else:
            return None
    if isinstance(v, int) and not isinstance(v, bool):
        if not _INT64_MIN <= v <= _INT64_MAX:
            return f"{v} is beyond an int64, and would read back as {float(v)!r}"
        return None
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                return f"key {k!r} is of type {type(k).__name__}, not str (JSON would write it as a string)"
            why = _changed_by_json(x)
            if why is not None:
                return f"{k!r}: {why}"
        return None
    if isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            why = _changed_by_json(x)
            if why is not None:
                return f"[{i}]: {why}"
    return None


def value_to_json(v, what: str = "tag value") -> bytes:
    """v as JSON, as the server keeps it; InvalidError for what JSON
    cannot carry unchanged (NaN, a string with a lone surrogate) or the
    server would not keep as given (an int past int64, a dict key that is
    not a str)."""
    why = _changed_by_json(v)
    if why is not None:
        raise errors.InvalidError(f"{what} {v!r}: {why}")
    try:
        return _ENC.encode(v).encode()
    except UnicodeEncodeError as e:
        raise errors.InvalidError(f"{what} {v!r}: a string is not valid Unicode ({e.reason}: {e.object[e.start:e.end]!r})") from None
    except (ValueError, TypeError) as e:
        raise errors.InvalidError(f"{what} {v!r} cannot be written as JSON: {e}") from None


def tags_to_json(t) -> bytes:
    if t is None:
        return b""
    if not isinstance(t, dict):
        raise errors.InvalidError(f"a tag must be a dict, not {type(t).__name__}")
    return value_to_json(t, "tags")


def tags_to_json_list(ts) -> list:
    """tags_to_json of each of ts (None as {}), each distinct object once: a
    batch often repeats one dict for every row."""
    # Held in a list while their ids serve as keys: an id is unique only
    # while its object lives, and rows made as they are iterated would
    # otherwise reuse a freed row's id, and get its tags.
    ts = list(ts)
    seen, out = {}, []
    for t in ts:
        b = seen.get(id(t))
        if b is None:
            b = seen[id(t)] = tags_to_json(t if t is not None else {})
        out.append(b)
    return out


def tags_from_json(b: bytes) -> dict:
    return json.loads(b) if b else {}


def tags_from_json_list(bs) -> list:
    """tags_from_json of each of bs: a new dict a row, even where rows' tags
    are equal. Rows whose bytes differ from the row before's are parsed in
    one parse (the tags as one JSON array); a row with the bytes of the row
    before (a batch's rows mostly carry the same tags) gets a copy of its
    dict, or, when that holds lists or dicts, a parse of its own, so that
    no two rows share anything."""
    bs = list(bs)
    firsts = [i for i, b in enumerate(bs) if b and (i == 0 or b != bs[i - 1])]
    out = [None] * len(bs)
    for i, t in zip(firsts, _parse_objects([bs[i] for i in firsts])):
        out[i] = t
    flat = False
    for i, b in enumerate(bs):
        if not b:
            out[i] = {}
        elif i and b == bs[i - 1]:
            out[i] = out[i - 1].copy() if flat else tags_from_json(b)
        else:
            t = out[i]
            flat = type(t) is dict and not any(type(v) in (dict, list) for v in t.values())
    return out


def _parse_objects(bs) -> list:
    """tags_from_json of each of bs (none empty), in one parse when it can."""
    if len(bs) > 1 and all(b[:1] == b"{" and b[-1:] == b"}" for b in bs):
        try:
            got = json.loads(b"[" + b",".join(bs) + b"]")
        except ValueError:
            got = None
        # The server writes each tag as one JSON object; anything else is
        # parsed alone, where its error names it.
        if got is not None and len(got) == len(bs) and all(type(t) is dict for t in got):
            return got
    return [tags_from_json(b) for b in bs]


def _indexes(idx) -> list:
    """idx as a list of ints. An index that is not an integer (1.5, "11",
    a bool) is InvalidError naming it and its row: int() would have made
    it another row's."""
    if isinstance(idx, np.ndarray) and idx.dtype.kind in "iu":
        return idx.reshape(-1).tolist()
    return _integers(idx, "global index", "row")


def _integers(xs, what: str, where: str, bool_hint: str = "") -> list:
    """xs as a list of ints. One that is not an integer (a bool, a float, a
    str) is InvalidError naming it, ``what`` it is and its place (``where``
    and its number), with ``bool_hint`` for a bool: int() of it would have
    made it another row."""
    out = []
    for i, x in enumerate(xs):
        is_bool = isinstance(x, (bool, np.bool_))
        try:
            if is_bool:
                raise TypeError
            out.append(operator.index(x))
        except TypeError:
            raise errors.InvalidError(f"{what} {x!r} ({where} {i}) is not an integer"
                                      f"{bool_hint if is_bool else ''}") from None
    return out


def _check_len(rows, what: str, n: int) -> None:
    """InvalidError unless the per-row list ``rows`` has one entry a row."""
    if len(rows) != n:
        raise errors.InvalidError(f"{len(rows)} {what} for {n} rows")


class BatchMeta:
    """Rows of one or more partitions and where their cells live.

    ``global_indexes``, ``partition_ids``, ``keys`` (None for rows without a
    key), ``field_schema`` (field → ``{"dtype", "kind", "shape"}`` with
    ``"shapes"``, one per row, for ragged fields), ``production_status``
    (numpy int8, 1 when every field of the schema is produced for the row),
    ``custom_meta`` (each row's tags), ``extra_info``. Built by hand, each
    per-row list must have one entry a row, each index be an integer and
    each partition id a str: else InvalidError naming the list or the row.
    Not safe for concurrent mutation.
    """

    # The cluster whose controller answered with this meta ("": unknown):
    # its cells' unit ids name that cluster's units only (see
    # Client.get_data).
    _cluster = ""
    # In a fetch's meta: the generation of the partition that served it
    # (FETCH's MetaReply.partition_gen; 0: not known), new each time a
    # partition of that id is made. get_meta's partition_gen takes it.
    partition_gen = 0

    def __init__(self, global_indexes=(), partition_ids=(), keys=None, field_schema=None,
                 production_status=None, custom_meta=None, extra_info=None, cells=None):
        self.global_indexes = _indexes(global_indexes)
        n = len(self.global_indexes)
        self.partition_ids = list(partition_ids)
        _check_len(self.partition_ids, "partition ids", n)
        for i, p in enumerate(self.partition_ids):
            if type(p) is not str:
                raise errors.InvalidError(f"partition id {p!r} (row {i}) is a {type(p).__name__}, not a str")
        self.keys = list(keys) if keys is not None else None
        if self.keys is not None:
            _check_len(self.keys, "keys", n)
        self.field_schema = dict(field_schema or {})
        for name, s in self.field_schema.items():
            if isinstance(s, dict) and s.get("shapes") is not None and len(s["shapes"]) != n:
                raise errors.InvalidError(f"field {name!r} has {len(s['shapes'])} ragged row shapes for {n} rows",
                                          fields=[name])
        self.production_status = (np.asarray(production_status, dtype=np.int8).reshape(-1)
                                  if production_status is not None else np.zeros(n, dtype=np.int8))
        _check_len(self.production_status, "production statuses", n)
        if custom_meta is not None:
            custom_meta = list(custom_meta)
            _check_len(custom_meta, "custom_meta dicts", n)
            for i, t in enumerate(custom_meta):
                if not isinstance(t, dict):
                    raise errors.InvalidError(f"custom_meta of row {i} is a {type(t).__name__}, not a dict")
            self.custom_meta = [dict(t) for t in custom_meta]
        else:
            self.custom_meta = [{} for _ in range(n)]
        self.extra_info = dict(extra_info or {})
        self._cells = dict(cells or {})  # field → addrs.Cells

    @classmethod
    def from_pb(cls, m) -> "BatchMeta":
        n = len(m.indexes)
        schema, cells = {}, {}
        for name, fs in m.schema.items():
            s = {"dtype": fs.dtype, "kind": fs.kind, "shape": tuple(fs.shape.dims)}
            if fs.kind == "ragged":
                s["shapes"] = [None if sh.unknown else tuple(sh.dims) for sh in fs.shapes]
            schema[name] = s
        for name, a in m.cells.items():
            cells[name] = _addrs.expand(a, n)
        # Built in place: the constructor's checks and copies cost more than
        # the rest of decoding a meta of many rows.
        self = cls.__new__(cls)
        self.global_indexes = list(m.indexes)
        self.partition_ids = list(m.partitions)
        self.keys = [k or None for k in m.keys] if m.has_keys else None
        self.field_schema = schema
        self.production_status = (np.asarray(m.ready, dtype=np.int8) if len(m.ready)
                                  else np.zeros(n, dtype=np.int8))
        self.custom_meta = tags_from_json_list(m.tags) if len(m.tags) else [{} for _ in range(n)]
        self.extra_info = json.loads(m.extra) if m.extra else {}
        self._cells = cells
        if len(self.partition_ids) != n or len(self.production_status) != n or len(self.custom_meta) != n \
                or (self.keys is not None and len(self.keys) != n):
            raise errors.CorruptError(f"meta: per-row lists of unequal length for {n} rows")
        return self

    @classmethod
    def empty(cls) -> "BatchMeta":
        return cls()

    @property
    def size(self) -> int:
        return len(self.global_indexes)

    def __len__(self) -> int:
        return self.size

    @property
    def field_names(self):
        return sorted(self.field_schema)

    @property
    def is_ready(self) -> bool:
        return self.size > 0 and bool(np.all(self.production_status == 1))

    def get_all_custom_meta(self):
        return _copy.deepcopy(self.custom_meta)

    def update_custom_meta(self, tags) -> None:
        if len(tags) != self.size:
            raise errors.InvalidError(f"{len(tags)} tag dicts for {self.size} rows")
        for i, new in enumerate(tags):
            if new is not None and not isinstance(new, _abc.Mapping):
                raise errors.InvalidError(f"tags of row {i} are a {type(new).__name__}, not a dict")
        for mine, new in zip(self.custom_meta, tags):
            mine.update(new or {})

    def select_samples(self, positions) -> "BatchMeta":
        """The rows at ``positions`` (integers, negative ones from the end;
        one may repeat), in that order. A position that is not an integer
        (a bool, as in a mask, a float, a str) is InvalidError: int() of it
        would pick another row."""
        pos = _integers(positions, "position", "argument", " (for a mask, select np.flatnonzero(mask))")
        for p in pos:
            if not -self.size <= p < self.size:
                raise errors.InvalidError(f"position {p} out of range for {self.size} rows")
        pos = [p % self.size for p in pos] if self.size else []
        schema = {}
        for k, s in self.field_schema.items():
            s = dict(s)
            if "shapes" in s:
                s["shapes"] = [s["shapes"][p] for p in pos]
            schema[k] = s
        ipos = np.asarray(pos, dtype=np.int64)
        out = BatchMeta([self.global_indexes[p] for p in pos], [self.partition_ids[p] for p in pos],
                        [self.keys[p] for p in pos] if self.keys is not None else None, schema,
                        self.production_status[ipos] if len(pos) else np.zeros(0, np.int8),
                        [_copy.deepcopy(self.custom_meta[p]) for p in pos], self.extra_info,
                        {k: c.take(ipos) for k, c in self._cells.items()})
        out._cluster = self._cluster
        out.partition_gen = self.partition_gen  # the same rows, of the same partition
        return out

    def __getitem__(self, i):
        """``meta[i]``: a slice, one integer position (numpy ones too), or a
        sequence or array of positions, each a BatchMeta as select_samples
        gives it; a bool, alone or in the positions, is InvalidError as
        there."""
        if isinstance(i, slice):
            return self.select_samples(range(*i.indices(self.size)))
        if isinstance(i, (bool, np.bool_)):
            return self.select_samples([i])  # refused, naming the mask
        if isinstance(i, (np.ndarray, _abc.Sequence)) and not isinstance(i, (str, bytes, bytearray)):
            return self.select_samples(np.ravel(i) if isinstance(i, np.ndarray) and i.ndim == 0 else i)
        try:
            p = operator.index(i)
        except TypeError:
            raise TypeError(f"BatchMeta indices must be integers, slices or sequences of integers, "
                            f"not {type(i).__name__}") from None
        return self.select_samples([p])

    def select_fields(self, names) -> "BatchMeta":
        """The rows with only the fields ``names`` (one name as a str). A
        name the meta has no field of is NotFoundError whose ``fields`` lists
        every such name (its message the first 16), as the Go SelectFields
        refuses it (TransferQueue's drops it, leaving a meta whose get_data
        is empty). A field named twice is InvalidError naming it, as
        get_data's fields refuse one: the meta would hold it once, not what
        was listed."""
        names = [names] if isinstance(names, str) else list(names)
        missing = list(dict.fromkeys(n for n in names if n not in self.field_schema))
        if missing:
            raise errors.NotFoundError(f"fields {errors.message_list(missing)} not in the meta (it has "
                                       f"{errors.message_list(self.field_names)})",
                                       op="select_fields", fields=missing)
        seen = set()
        for n in names:
            if n in seen:
                raise errors.InvalidError(f"field {n!r} appears twice", op="select_fields", fields=[n])
            seen.add(n)
        keep = names
        m = self.select_samples(range(self.size))
        m.field_schema = {k: m.field_schema[k] for k in keep}
        m._cells = {k: v for k, v in m._cells.items() if k in keep}
        return m

    def chunk(self, n: int):
        """n chunks; the first ``size % n`` get one row more."""
        if n <= 0:
            raise errors.InvalidError(f"chunk count {n} must be positive")
        q, r = divmod(self.size, n)
        out, at = [], 0
        for i in range(n):
            k = q + (1 if i < r else 0)
            out.append(self.select_samples(range(at, at + k)))
            at += k
        return out

    def __repr__(self) -> str:
        return (f"BatchMeta(size={self.size}, partitions={sorted(set(self.partition_ids))}, "
                f"fields={self.field_names}, ready={self.is_ready})")


@dataclass
class KVBatchMeta:
    """What a KV put reports: the keys, each key's tags after the merge, the
    partition, and the fields every key holds."""

    keys: list = field(default_factory=list)
    tags: list = field(default_factory=list)
    partition_id: str | None = None
    fields: list | None = None
    extra_info: dict | None = None

    @property
    def size(self) -> int:
        return len(self.keys)

    def __len__(self) -> int:
        return self.size
