"""The cross-language batch: the recipe internal/xlang/main.go builds, in Python."""

import struct

import numpy as np

import tq

ELEMS = 5
RAGGED_LENS = [0, 2, 7]
SPECIALS = {
    "float64": [0x7ff8000000000001, 0xfff4000000000000, 0x7ff0000000000000, 0xfff0000000000000, 0x8000000000000000, 1],
    "float32": [0x7fc00001, 0xffa00000, 0x7f800000, 0xff800000, 0x80000000, 1],
    "float16": [0x7e01, 0xfd00, 0x7c00, 0xfc00, 0x8000, 1],
    "bfloat16": [0x7fc1, 0xff81, 0x7f80, 0xff80, 0x8000, 1],
    "float8_e4m3fn": [0x7f, 0xff, 0x80, 0x7e, 0x01],
    "float8_e5m2": [0x7c, 0xfc, 0x7d, 0xfe, 0x80, 0x01],
    "complex64": [0x7fc00001, 0xff800000, 0x80000000, 0x7f800000],
    "complex128": [0x7ff8000000000001, 0xfff0000000000000, 0x8000000000000000, 0x7ff0000000000000],
    "int64": [0x8000000000000000, 0x7fffffffffffffff, 0xffffffffffffffff],
    "int32": [0x80000000, 0x7fffffff, 0xffffffff],
    "int16": [0x8000, 0x7fff, 0xffff],
    "int8": [0x80, 0x7f, 0xff],
    "uint64": [0xffffffffffffffff, 0x8000000000000000],
    "uint32": [0xffffffff, 0x80000000],
    "uint16": [0xffff, 0x8000],
    "uint8": [0xff, 0x80],
    "bool": [1, 0, 1],
}
DTYPES = ["float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "complex64", "complex128",
          "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "bool"]
M32, M64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF


def fill(dt: str, nbytes: int, seed: int) -> bytes:
    word = {"complex64": 4, "complex128": 8}.get(dt) or tq.columns.DTYPES[dt].itemsize
    out = bytearray()
    x = (seed * 2654435761 + 12345) & M32
    i = 0
    while len(out) < nbytes:
        sp = SPECIALS[dt]
        if i < len(sp):
            v = sp[i]
        else:
            x = (x * 1103515245 + 12345) & M32
            v = ((x >> 8) | (x << 24) | (x << 48)) & M64
            if dt == "bool":
                v &= 1
        out += struct.pack("<Q", v)[:word]
        i += 1
    return bytes(out[:nbytes])


def keys(rows: int) -> list:
    return [f"k{i}" for i in range(rows)]


def batch(rows: int = 3) -> dict:
    """field → value for ``rows`` rows, as a put takes it."""
    ROWS = rows
    lens = [RAGGED_LENS[r % 3] for r in range(rows)]
    f = {}
    for i, dt in enumerate(DTYPES):
        d = tq.columns.DTYPES[dt]
        f["d_" + dt] = np.frombuffer(fill(dt, ROWS * ELEMS * d.itemsize, i), dtype=d).reshape(ROWS, ELEMS)
    for i, dt in enumerate(["float32", "bfloat16", "int64"]):
        d = tq.columns.DTYPES[dt]
        flat = np.frombuffer(fill(dt, sum(lens) * d.itemsize, 100 + i), dtype=d)
        offs = np.concatenate([[0], np.cumsum(lens)])
        f["r_" + dt] = [flat[offs[r]:offs[r + 1]] for r in range(ROWS)]
    f["o_bytes"] = [[b"", "héllo".encode(), bytes([0, 1, 2, 0xFF, 0xFE])][r % 3] for r in range(rows)]
    return f


def assert_same(got: dict, want: dict) -> None:
    """Bit-exact: same dtypes (TQ names), shapes and bytes."""
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        g = got[k]
        if isinstance(w, np.ndarray):
            assert tq.columns.tq_dtype(g.dtype) == tq.columns.tq_dtype(w.dtype), k
            assert g.shape == w.shape, k
            assert g.tobytes() == w.tobytes(), f"{k}: {g.tobytes().hex()} != {w.tobytes().hex()}"
        elif w and isinstance(w[0], np.ndarray):
            assert len(g) == len(w), k
            for r, (a, b) in enumerate(zip(g, w)):
                assert tq.columns.tq_dtype(a.dtype) == tq.columns.tq_dtype(b.dtype), (k, r)
                assert a.shape == b.shape and a.tobytes() == b.tobytes(), (k, r)
        else:
            assert [bytes(x) for x in g] == [bytes(x) for x in w], k
