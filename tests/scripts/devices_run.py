"""Run a small diffusion sample and print a digest; used by tests/test_devices.py in subprocesses.

Usage: python devices_run.py OUT.npy [PROCESS_ID NUM_PROCESSES PORT]
With the three extra arguments it joins a jax.distributed run on loopback first.
Writes OUT.npy (64 particles of an EI sampler through the driver) and OUT.picard.npy (4 particles
of block Picard, whose 8-point blocks put particles and time on one 2-D mesh: 4 x 2 on 8 devices).
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)
if len(sys.argv) > 2:
    pid, nproc, port = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                               process_id=pid)

import numpy as np  # noqa: E402

from scoresample import targets  # noqa: E402
from scoresample.driver import scan_particles  # noqa: E402

mix = targets.four_modes_2d()
ts = np.linspace(2.0, 0.05, 21)


def ei_scan(key):
    import jax.numpy as jnp

    grid = jnp.asarray(ts)

    def step(k, state):
        x, i = state
        h = grid[i] - grid[i + 1]
        x = jnp.exp(h) * x + 2 * jnp.expm1(h) * mix.score(x, grid[i]) + jnp.sqrt(jnp.expm1(2 * h)) * \
            jax.random.normal(k, x.shape)
        return (x, i + 1), jnp.sum(x**2)

    return scan_particles(key, lambda k: (jax.random.normal(k, (2,)), 0), step, 64, len(ts) - 1)


(states, _), stats = ei_scan(jax.random.key(7))
print("shards", len(states.sharding.device_set) if hasattr(states, "sharding") else 1)
out = np.asarray(states)

# Block Picard in tolerance mode: 4 particles, blocks of 8 points (24 steps, 3 blocks).
from scoresample import diffusion, parallel  # noqa: E402

res = diffusion.sample(jax.random.key(3), "picard-sde", mix.score, dim=2, num_samples=4,
                       num_steps=24, num_blocks=3, tol=1e-6)
picard = np.concatenate([np.asarray(res.samples).ravel(), [res.nfe, res.rounds]])
mesh = parallel.particle_time_mesh(4, res.settings["time_axis_size"])
print("mesh", "x".join(map(str, mesh.devices.shape)) if mesh is not None else "none")
if mesh is not None:  # a time constraint inside the particle vmap splits both axes
    with parallel.use_mesh(mesh):
        f = jax.jit(jax.vmap(lambda x: parallel.constrain_time(2.0 * x),
                             spmd_axis_name=parallel.spmd_axis(mesh)))
        spec = f(np.ones((4, 8, 2))).sharding.spec
    names = [str(a) for a in spec]
    while names and names[-1] == "None":  # jax may or may not spell out trailing replicated axes
        names.pop()
    print("picard-spec", ",".join(names))
if jax.process_index() == 0:
    np.save(sys.argv[1], out)
    np.save(sys.argv[1].replace(".npy", ".picard.npy"), picard)
print("devices", len(jax.devices()), "processes", jax.process_count(), "digest", float(np.sum(out)))
