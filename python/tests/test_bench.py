"""The benchmark harness (python3 -m tq.bench)."""


def test_bench_harness(server):
    """python3 -m tq.bench runs end to end (the tiny workload, no Go side)."""
    from tq import bench
    rows = bench.main(["--address", server.address, "--token", server.token, "--workload", "tiny", "--iters", "1"])
    names = [r[0] for r in rows]
    assert names == ["python shm", "python tcp", "pyzmq ipc copy=False", "pyzmq tcp copy=False"]
    assert all(v > 0 for _, vals, _ in rows for v in vals.values())
