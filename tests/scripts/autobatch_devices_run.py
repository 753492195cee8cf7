"""FORS-diffusion on the autobatching driver; used by tests/test_autobatch.py in subprocesses.

Usage: python autobatch_devices_run.py OUT.npz
Runs 64 particles on 16 lanes (spread over however many devices XLA_FLAGS gives) and writes the
samples, the per-particle needed counts and the per-step sums.
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from scoresample import autobatch, targets  # noqa: E402
from scoresample.kernels import fors as F  # noqa: E402

mix = targets.four_modes_2d()
schedule = F.fors_schedule(0.3, 2, second_moment=8.0, growth=2.0)
machine = F.diffusion_machine(mix.score, schedule, dim=2)
out = autobatch.run_autobatched(jax.random.key(11), machine, 64, num_lanes=16)
print(f"devices {len(jax.devices())} lanes {out.num_lanes}")
np.savez(sys.argv[1], samples=np.asarray(out.carries), needed=np.asarray(out.num_needed),
         coins=np.asarray(out.step_sums.num_coins), divergent=np.asarray(out.is_divergent))
