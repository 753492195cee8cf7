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
    return np.load(out), res.stdout


@pytest.mark.slow
def test_eight_devices_equal_one(tmp_path):
    one, stdout_one = _run(tmp_path, "one", 1)
    eight, stdout_eight = _run(tmp_path, "eight", 8)
    assert one.shape == (64, 2) and np.all(np.isfinite(one))
    np.testing.assert_array_equal(one, eight)
    # Picard, 4 particles with 8-point blocks, on 8 devices: particles and time share one 2-D
    # mesh, 4 particle groups x 2 time devices, and a time constraint in the kernel splits both.
    assert "mesh none" in stdout_one
    assert "mesh 4x2" in stdout_eight
    assert "picard-spec particles,time\n" in stdout_eight
    picard_one, picard_eight = (np.load(tmp_path / f"{n}.picard.npy") for n in ("one", "eight"))
    assert picard_one.shape == (4 * 2 + 2,) and np.all(np.isfinite(picard_one))
    np.testing.assert_allclose(picard_eight, picard_one, rtol=0, atol=1e-12)
    assert picard_eight[-2:].tolist() == picard_one[-2:].tolist()  # nfe and rounds


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    one, _ = _run(tmp_path, "single", 1)
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
    # Picard's 2-D mesh spans the devices of both processes (4 x 2 over 2 hosts x 4 devices)
    np.testing.assert_allclose(np.load(tmp_path / "dist.picard.npy"),
                               np.load(tmp_path / "single.picard.npy"), rtol=0, atol=1e-12)


BAYES_SCRIPT = Path(__file__).parent / "scripts" / "bayes_devices_run.py"


@pytest.mark.slow
def test_sample_chains_on_eight_devices_equal_one(tmp_path):
    """scoresample.sample shards its chains over the devices; the draws agree with one device.

    Not bit for bit: XLA compiles a per-device batch of 1 chain differently from a batch of 8
    (the reductions inside the log-density may fuse in another order), so they agree to rounding.
    """
    methods = ["fors", "rtk", "nuts"]
    draws = {}
    for n in (1, 8):
        out = tmp_path / f"bayes{n}.npz"
        res = subprocess.run([sys.executable, str(BAYES_SCRIPT), str(out), ",".join(methods)],
                             env=_env(n), capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"devices {n}" in res.stdout
        for method in methods:
            assert f"{method} chain devices {n}" in res.stdout  # the chain axis really was split
        draws[n] = np.load(out)
    for method in methods:
        one, eight = draws[1][method], draws[8][method]
        assert one.shape == (8, 50, 3) and np.all(np.isfinite(one))
        assert np.any(one[:, 1:] != one[:, :-1])  # the chains moved
        np.testing.assert_allclose(eight, one, rtol=0, atol=1e-10, err_msg=method)


@pytest.mark.slow
def test_sample_chains_split_over_two_processes_equal_one(tmp_path):
    """Under jax.distributed, scoresample.sample splits its chains over the processes (warmup and
    sampling); every process gets every chain's draws, equal to one process's to rounding."""
    methods = ["fors", "rtk", "nuts"]
    one = tmp_path / "bayes_one.npz"
    res = subprocess.run([sys.executable, str(BAYES_SCRIPT), str(one), ",".join(methods)],
                         env=_env(1), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    port = _free_port()
    out = tmp_path / "bayes_dist.npz"
    procs = [subprocess.Popen([sys.executable, str(BAYES_SCRIPT), str(out), ",".join(methods),
                               str(i), "2", str(port)], env=_env(4), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    digests = []
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, se[-3000:]
        assert "devices 8" in so
        for method in methods:  # 8 chains on 8 devices over 2 processes
            assert f"{method} chain devices 8 processes 2" in so
        digests.append([line.split("digest")[1] for line in so.splitlines() if "digest" in line])
    assert digests[0] == digests[1]  # every process holds every chain's draws
    single, dist = np.load(one), np.load(out)
    for method in methods:
        assert single[method].shape == (8, 50, 3) and np.all(np.isfinite(single[method]))
        # a per-device batch of one chain compiles the log-density's reductions differently from
        # a batch of 8 (as on one host with 8 devices); NUTS's 100 adaptation trajectories then
        # amplify that rounding to about 1e-7
        atol = 1e-6 if method == "nuts" else 1e-10
        np.testing.assert_allclose(dist[method], single[method], rtol=0, atol=atol,
                                   err_msg=method)
