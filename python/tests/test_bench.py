"""The benchmark harness (python3 -m tq.bench)."""

import pytest


def test_bench_harness(server):
    """python3 -m tq.bench runs end to end (the tiny workload, no Go side)."""
    from tq import bench
    rows = bench.main(["--address", server.address, "--token", server.token, "--workload", "tiny", "--iters", "1"])
    names = [r[0] for r in rows]
    assert names == ["python shm", "python tcp", "pyzmq ipc copy=False", "pyzmq tcp copy=False"]
    assert all(v > 0 for _, vals, _ in rows for v in vals.values())


def test_bench_values(server, capsys):
    """--workload values: TQ's rows, and redis-py's against a redis-server
    of its own when both are installed (CI installs them). The report says
    what each side persists: the session's server is durable (its log
    fsync batch), the redis-server persists nothing."""
    import shutil

    from tq import bench
    rows = bench.main(["--address", server.address, "--token", server.token, "--workload", "values",
                       "--iters", "50", "--transports", "tcp"])
    try:
        import redis  # noqa: F401
        have_redis = shutil.which("redis-server") is not None
    except ImportError:
        have_redis = False
    assert [r[0] for r in rows] == ["python tcp"] + (["redis-py"] if have_redis else [])
    for _, v in rows:
        assert set(v) == {"set", "get", "tag"}
        assert all(ops > 0 and 0 < p50 <= p99 for ops, p50, p99 in v.values())
    persists = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("persistence:")]
    assert len(persists) == 1, persists
    assert "TQ logs" in persists[0] and "fsync batch" in persists[0] and "not the values" in persists[0], persists
    if have_redis:
        assert "redis-server persists nothing" in persists[0], persists


def test_bench_values_in_memory_says_neither_persists(capsys, monkeypatch, tmp_path):
    """Without --address the values workload starts tq serve --in-memory,
    and says that neither side persists anything."""
    import conftest
    from tq import bench
    monkeypatch.setenv("TQ_DATA_DIR", str(tmp_path))  # the bench's server sets it: put back after
    bench.main(["--tq-bin", conftest._bin("TQ_BIN", "tq"), "--workload", "values", "--iters", "20",
                "--transports", "tcp"])
    persists = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("persistence:")]
    assert len(persists) == 1 and "TQ persists nothing (--in-memory)" in persists[0], persists


def test_bench_rows(server):
    """--workload rows: put, get and list of 4096 small rows a call."""
    from tq import bench
    rows = bench.main(["--address", server.address, "--token", server.token, "--workload", "rows",
                       "--iters", "2"])
    assert [r[0] for r in rows] == ["python shm", "python tcp"]
    assert all(set(v) == {"put", "get", "list"} and all(x[0] > 0 for x in v.values()) for _, v in rows)


def test_time_ops_percentiles_are_nearest_rank(monkeypatch):
    """_time_ops's p50 and p99 are nearest-rank percentiles, as the Go
    benchmarks' (reportLatency): of 100 calls taking 1..100 µs, p50 is 50
    µs and p99 is 99 µs, not the upper median (51) and the maximum (100);
    the rate is the calls over the time they took. (A clock of our own: no
    timing.)"""
    import types

    from tq import bench
    now = [0.0]
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def op(i):
        now[0] += (100 - i % 100) * 1e-6  # 100, 99, ..., 1 µs

    ops, p50, p99 = bench._time_ops({"x": op}, 100)["x"]
    assert ops == pytest.approx(100 / 5050e-6)
    assert p50 == pytest.approx(50)
    assert p99 == pytest.approx(99)
    # One call: every percentile is it.
    assert bench._time_ops({"x": lambda i: op(99)}, 1)["x"][1:] == (pytest.approx(1), pytest.approx(1))
