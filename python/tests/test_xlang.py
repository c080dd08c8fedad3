"""Go writes, Python reads; Python writes, Go reads: every dtype bit-exact
(NaN payloads, ±Inf, −0, integer extremes), ragged and opaque, both
transports on both sides."""

import subprocess

import pytest

import xlang


# 3 rows go through the controller in one round trip; 3000 through the units.
ROWS = [3, 3000]


def _go(server, xlang_bin, cmd, part, transport, rows):
    r = subprocess.run([xlang_bin, cmd, server.address, part, transport, str(rows)], env=server.env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("go_transport", ["tcp", "shm"])
def test_go_writes_python_reads(server, client, part, xlang_bin, go_transport, rows):
    _go(server, xlang_bin, "put", part, go_transport, rows)
    want = xlang.batch(rows)
    xlang.assert_same(client.kv_batch_get(xlang.keys(rows), part), want)
    with client.kv_batch_get(xlang.keys(rows), part, copy=False) as v:
        xlang.assert_same(dict(v.items()), want)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("go_transport", ["tcp", "shm"])
def test_python_writes_go_reads(server, client, part, xlang_bin, go_transport, rows):
    client.kv_batch_put(xlang.keys(rows), part, xlang.batch(rows))
    _go(server, xlang_bin, "check", part, go_transport, rows)
