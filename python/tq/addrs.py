"""Addrs (wire/spec.md, "Shared types"): byte ranges per cell, per cell or in runs.

Cells are handled as five parallel numpy arrays (unit, segment, gen, offset,
len), which is what :func:`expand` returns and :func:`to_pb` takes.
"""

from __future__ import annotations

import numpy as np

from . import errors
from ._pb import control_pb2

UNIT_LOST = 2147483647  # a produced cell whose bytes are lost for good

_U32, _U64 = np.uint32, np.uint64


class Cells:
    """The ranges of n cells: parallel arrays unit, segment, gen, offset, len."""

    __slots__ = ("unit", "segment", "gen", "offset", "len", "run1")

    def __init__(self, unit, segment, gen, offset, len_, run1=False):
        self.unit, self.segment, self.gen = unit, segment, gen
        self.offset, self.len = offset, len_
        # run1: the cells are one run of the controller's (back to back in
        # one extent, on one unit), so they can be read or leased as one range.
        self.run1 = run1

    def __len__(self):
        return len(self.offset)

    def take(self, pos) -> "Cells":
        pos = np.asarray(pos, dtype=np.int64)
        # Consecutive rows of a run are a run.
        run1 = bool(self.run1 and len(pos) and pos[-1] - pos[0] == len(pos) - 1 and np.all(np.diff(pos) == 1))
        return Cells(self.unit[pos], self.segment[pos], self.gen[pos], self.offset[pos], self.len[pos], run1)

    @staticmethod
    def concat(parts) -> "Cells":
        return Cells(*(np.concatenate([getattr(p, a) for p in parts]) for a in Cells.__slots__[:5]))


def expand(a: control_pb2.Addrs, n: int | None = None, default_unit: int = 0) -> Cells:
    """The per-cell arrays of ``a`` (either form)."""
    if len(a.run_count) == 1 and len(a.run_len) == 1 and len(a.run_segment) == 1 and len(a.run_gen) == 1 \
            and len(a.run_offset) == 1 and len(a.run_unit) <= 1:
        # One run of equal cells (a column written by one put): the common case.
        total, L = int(a.run_count[0]), int(a.run_len[0])
        unit = a.run_unit[0] if len(a.run_unit) else default_unit
        cells = Cells(np.full(total, unit, _U32), np.full(total, a.run_segment[0], _U32),
                      np.full(total, a.run_gen[0], _U32),
                      np.arange(total, dtype=_U64) * _U64(L) + _U64(a.run_offset[0]), np.full(total, L, _U64),
                      run1=True)
    elif len(a.run_count):
        counts = np.asarray(a.run_count, dtype=np.int64)
        total = int(counts.sum())
        nr = len(counts)
        for name in ("run_segment", "run_gen", "run_offset"):
            if len(getattr(a, name)) != nr:
                raise errors.CorruptError(f"addrs: {name} has {len(getattr(a, name))} entries for {nr} runs")
        rl = np.asarray(a.run_len, dtype=_U64)
        if len(rl) == 1:
            lens = np.full(total, rl[0], dtype=_U64)
        elif len(rl) == total:
            lens = rl
        else:
            raise errors.CorruptError(f"addrs: {len(rl)} run lengths for {total} cells")
        units = np.asarray(a.run_unit, dtype=_U32) if len(a.run_unit) else np.full(nr, default_unit, dtype=_U32)
        excl = np.cumsum(lens, dtype=_U64) - lens  # bytes before each cell, over all runs
        starts = np.cumsum(counts) - counts
        base = np.asarray(a.run_offset, dtype=_U64) - (excl[starts] if total else np.zeros(nr, _U64))
        off = np.repeat(base, counts) + excl
        cells = Cells(np.repeat(units, counts), np.repeat(np.asarray(a.run_segment, dtype=_U32), counts),
                      np.repeat(np.asarray(a.run_gen, dtype=_U32), counts), off, lens)
    else:
        m = len(a.offset)
        unit = np.asarray(a.unit, dtype=_U32) if len(a.unit) else np.full(m, default_unit, dtype=_U32)
        cells = Cells(unit, np.asarray(a.segment, dtype=_U32), np.asarray(a.gen, dtype=_U32),
                      np.asarray(a.offset, dtype=_U64), np.asarray(a.len, dtype=_U64))
        if not (len(cells.unit) == len(cells.segment) == len(cells.gen) == m == len(cells.len)):
            raise errors.CorruptError("addrs: per-cell arrays of unequal length")
    if n is not None and len(cells) != n:
        raise errors.CorruptError(f"addrs: {len(cells)} cells for {n} rows")
    return cells


def to_pb(c: Cells, with_unit: bool = True) -> control_pb2.Addrs:
    """``c`` as Addrs: in runs when that at least halves the entries."""
    n = len(c)
    a = control_pb2.Addrs()
    if n == 0:
        return a
    brk = np.ones(n, dtype=bool)
    if n > 1:
        brk[1:] = ((c.unit[1:] != c.unit[:-1]) | (c.segment[1:] != c.segment[:-1]) | (c.gen[1:] != c.gen[:-1])
                   | (c.offset[1:] != c.offset[:-1] + c.len[:-1]))
    starts = np.flatnonzero(brk)
    if len(starts) * 2 <= n:
        counts = np.diff(np.append(starts, n))
        a.run_count.extend(counts.tolist())
        if with_unit:
            a.run_unit.extend(c.unit[starts].tolist())
        a.run_segment.extend(c.segment[starts].tolist())
        a.run_gen.extend(c.gen[starts].tolist())
        a.run_offset.extend(c.offset[starts].tolist())
        if np.all(c.len == c.len[0]):
            a.run_len.append(int(c.len[0]))
        else:
            a.run_len.extend(c.len.tolist())
    else:
        if with_unit:
            a.unit.extend(c.unit.tolist())
        a.segment.extend(c.segment.tolist())
        a.gen.extend(c.gen.tolist())
        a.offset.extend(c.offset.tolist())
        a.len.extend(c.len.tolist())
    return a


def ranges_pb(parts) -> control_pb2.Addrs:
    """The ranges to READ or ACQUIRE for the cells of ``parts`` (in order),
    without units: a run of the controller's as one range (the same bytes
    back to back), other cells one range each."""
    one = [c for c in parts if len(c)]
    if all(c.run1 for c in one):
        a = control_pb2.Addrs()
        for c in one:
            a.segment.append(int(c.segment[0]))
            a.gen.append(int(c.gen[0]))
            a.offset.append(int(c.offset[0]))
            a.len.append(int(c.len.sum()))
        return a
    return to_pb(Cells.concat(one) if one else Cells(*(np.zeros(0, t) for t in (_U32, _U32, _U32, _U64, _U64))),
                 with_unit=False)


def run(unit: int, segment: int, gen: int, offset: int, lens) -> Cells:
    """Cells lying back to back from ``offset`` in one extent."""
    lens = np.asarray(lens, dtype=_U64)
    n = len(lens)
    off = offset + (np.cumsum(lens, dtype=_U64) - lens)
    return Cells(np.full(n, unit, _U32), np.full(n, segment, _U32), np.full(n, gen, _U32), off, lens)
