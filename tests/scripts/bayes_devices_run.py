"""Run scoresample.sample with several methods on a small model and save the draws
(tests/test_devices.py runs it under different forced host device counts, and in two processes).

Usage: python bayes_devices_run.py OUT.npz METHODS [PROCESS_ID NUM_PROCESSES PORT]
With the three extra arguments it joins a jax.distributed run on loopback first; every process
then receives every chain's draws, and process 0 writes them.
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)
if len(sys.argv) > 3:
    pid, nproc, port = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                               process_id=pid)

import warnings  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import scoresample  # noqa: E402

warnings.simplefilter("ignore", scoresample.diagnostics.ConvergenceWarning)  # short runs


def logdensity(x):
    scales = jnp.array([1.0, 2.0, 0.5])
    return -0.5 * jnp.sum((x / scales) ** 2) - 0.025 * jnp.sum(x**4)


out, methods = sys.argv[1], sys.argv[2].split(",")
draws = {}
for method in methods:
    dt = scoresample.sample(jax.random.key(3), logdensity, init=jnp.zeros(3), method=method,
                            num_chains=8, num_warmup=100, num_draws=50, thin=1,
                            progress_bar=False)
    draws[method] = np.asarray(dt["posterior"]["x"].values)
    print(method, "chain devices", dt.attrs["num_chain_devices"], "processes",
          dt.attrs["num_processes"], "digest", float(np.sum(draws[method])))
print("devices", jax.device_count())
if jax.process_index() == 0:
    np.savez(out, **draws)
