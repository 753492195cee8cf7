"""Results do not depend on the number of devices or hosts (issue: reliability and scale)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).parent / "scripts" / "devices_run.py"


def _env(num_devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run(tmp_path, name, num_devices):
    out = tmp_path / f"{name}.npy"
    res = subprocess.run([sys.executable, str(SCRIPT), str(out)], env=_env(num_devices),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"devices {num_devices}" in res.stdout
    assert f"shards {num_devices}" in res.stdout  # the particle axis really was split
    return np.load(out)


@pytest.mark.slow
def test_eight_devices_equal_one(tmp_path):
    one = _run(tmp_path, "one", 1)
    eight = _run(tmp_path, "eight", 8)
    assert one.shape == (64, 2) and np.all(np.isfinite(one))
    np.testing.assert_array_equal(one, eight)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    one = _run(tmp_path, "single", 1)
    port = _free_port()
    out = tmp_path / "dist.npy"
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), str(out), str(i), "2", str(port)],
                              env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, se[-3000:]
        assert "devices 8 processes 2" in so
    np.testing.assert_array_equal(one, np.load(out))
