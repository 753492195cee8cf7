"""Run scoresample.sample with several methods on a small model and save the draws
(tests/test_devices.py runs it under different forced host device counts)."""

import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import scoresample  # noqa: E402


def logdensity(x):
    scales = jnp.array([1.0, 2.0, 0.5])
    return -0.5 * jnp.sum((x / scales) ** 2) - 0.025 * jnp.sum(x**4)


out, methods = sys.argv[1], sys.argv[2].split(",")
draws = {}
for method in methods:
    dt = scoresample.sample(jax.random.key(3), logdensity, init=jnp.zeros(3), method=method,
                            num_chains=8, num_warmup=100, num_draws=50, progress_bar=False)
    draws[method] = np.asarray(dt["posterior"]["x"].values)
    print(method, "chain devices", dt.attrs["num_chain_devices"])
print("devices", jax.device_count())
np.savez(out, **draws)
