"""wire/spec.md against the Python client: the error codes, ops, features
and limits it states are the ones tq.wire and tq.errors use."""

import os
import re

import pytest

import tq
from tq import errors, wire
from tq._pb import common_pb2

SPEC = os.path.join(os.path.dirname(__file__), "..", "..", "wire", "spec.md")


@pytest.fixture(scope="module")
def spec():
    with open(SPEC, encoding="utf-8") as f:
        return f.read()


def test_every_code_has_its_class():
    """Every code of common.proto but CODE_UNSPECIFIED raises its own class,
    whose code it is; a code this client does not know is a plain TQError
    that keeps it."""
    for name, code in common_pb2.Code.items():
        if code == 0:
            continue
        e = errors.from_code(code, "m", keys=["k"])
        assert type(e) is not errors.TQError, f"{name} has no class"
        assert e.code == code == type(e).code, name
        assert e.message == "m" and e.keys == ["k"], name
        assert name.removeprefix("CODE_").replace("_", "").lower() in type(e).__name__.lower(), \
            f"{name} raises {type(e).__name__}"
    e = errors.from_code(99, "m")
    assert type(e) is errors.TQError and e.code == 99
    assert issubclass(tq.TooLargeError, tq.CapacityError)
    assert issubclass(tq.ServerUnprovenError, tq.UnauthenticatedError)


def test_spec_lists_every_code(spec):
    listed = {int(n): name for n, name in re.findall(r"(?m)^\| (\d+) `(CODE_[A-Z_]+)` \|", spec)}
    assert listed == {code: name for name, code in common_pb2.Code.items() if code}


def test_every_error_class_is_exported():
    """``from tq.errors import *`` and ``tq.X`` give every error class."""
    classes = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, errors.TQError)}
    assert classes <= set(errors.__all__), classes - set(errors.__all__)
    assert classes <= set(tq.__all__), classes - set(tq.__all__)


def test_ops_are_the_specs(spec):
    """Each op tq.wire names has the number spec.md's op tables give it."""
    ops = {name: int(n) for n, name in re.findall(r"(?m)^\| (\d+) \| `([A-Z_]+)` \|", spec)}
    named = {name: getattr(wire, name) for name in ops if hasattr(wire, name)}
    assert {"HELLO", "PING", "CANCEL", "FETCH", "WRITE", "READ", "RESERVE", "ACQUIRE"} <= set(named)
    assert named == {name: ops[name] for name in named}


def test_features_are_the_specs(spec):
    table = spec.split("| Feature | What it covers | Without it |", 1)[1]
    listed = set(re.findall(r"(?m)^\| `([a-z_]+)` \|", table))
    assert listed == {v for n, v in vars(wire).items() if n.startswith("FEATURE_")}


def test_limits_are_the_specs(spec):
    flat = " ".join(spec.split())
    assert wire.HEADER.size == 32 and f"Every frame is a {wire.HEADER.size}-byte header" in flat
    assert wire.MAGIC == b"\x54\x51" and wire.VERSION == 1
    assert "bit 0 `REPLY`, bit 1 `ERROR`" in flat and (wire.FLAG_REPLY, wire.FLAG_ERROR) == (1 << 0, 1 << 1)
    assert f"| body length | ≤ {wire.MAX_BODY >> 20} MiB |" in flat
    assert f"| payload length | ≤ 2^{wire.MAX_PAYLOAD.bit_length() - 1} |" in flat
    assert f"both nonces are exactly {wire.AUTH_NONCE_LEN} bytes" in flat
    assert f"waits at most {wire.GIVE_UP_WAIT:g} s for its answer" in flat
    assert f"({wire.WRITE_FAIL_GRACE:g} s at most, in the Go and Python clients)" in flat
    assert f"a connection idle for {wire.IDLE_REDIAL_S / 60:g} minutes is closed rather than used again" in flat
    assert "Servers close connections that send nothing for 5 minutes" in flat and wire.IDLE_REDIAL_S < 300


def test_room_wait_is_the_specs(spec):
    """wait_ms: a little short of the time the call has left, "less a
    quarter, at most 250 ms", as the Go client's; 0 (the unit's own reserve
    wait) for a call that waits for good."""
    from tq.unit import room_wait_ms
    assert "(both TQ clients: less a quarter, at most 250 ms)" in " ".join(spec.split())
    assert room_wait_ms(None) == 0
    assert room_wait_ms(0.4) == 300
    assert room_wait_ms(2.0) == 1750
    assert room_wait_ms(0.0001) == 1


def test_lost_unit_is_the_specs(spec):
    from tq.addrs import UNIT_LOST
    assert UNIT_LOST == 2**31 - 1
    assert f"a cell with unit `{UNIT_LOST}` (2^31 − 1, no unit has it)" in " ".join(spec.split())


def test_dtypes_are_the_specs(spec):
    """Python reads and writes every dtype spec.md lists (bytes: opaque
    rows), with each element's size as the spec's "Cell bytes" gives it."""
    from tq.columns import DTYPES
    listed = re.search(r"\*\*dtype\*\* strings: `([^`]*)`", " ".join(spec.split())).group(1).split()
    assert set(listed) == set(DTYPES) | {"bytes"}
    sizes = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
             "complex64": 8, "complex128": 16, "bool": 1}
    for name, dt in DTYPES.items():
        want = sizes.get(name) or int(re.search(r"\d+", name).group()) // 8
        assert dt.itemsize == want, name
        assert dt.str[0] in "<|", f"{name} is not little-endian"
