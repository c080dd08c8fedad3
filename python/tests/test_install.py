"""`pip install ./python` works offline (Debian's setuptools, no build
isolation), and the README's KV example runs against a real cluster."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.dirname(HERE)


def test_pip_install_offline(server):
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        pytest.skip("pip is not installed (apt-get install python3-pip)")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        shutil.copytree(PKG, src, ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__"))
        target = os.path.join(tmp, "site")
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-build-isolation", "--no-deps",
                            "--target", target, src], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        env = dict(server.env, PYTHONPATH=target, TQ_ADDRESS=server.address)
        ex = os.path.join(PKG, "examples", "kv_example.py")
        r = subprocess.run([sys.executable, "-c", f"import tq, runpy; assert tq.__file__.startswith({target!r}); "
                            f"runpy.run_path({ex!r}, run_name='__main__')"],
                           capture_output=True, text=True, timeout=60, env=env, cwd=tmp)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "key='2_0'" in r.stdout and "Fields: ['attention_mask', 'input_ids']" in r.stdout
