"""Running single-particle kernels on many particles or chains: vmap inside one compiled scan.

Randomness is derived per particle (``fold_in`` of the particle's key with the step index), so a
particle's trajectory does not depend on how many particles run beside it or on which device: the
property the multi-device tests rely on. With several devices the particle axis is sharded over
them, and a kernel's time axis (Picard) over the devices left in each particle group, on one 2-D
mesh (:mod:`scoresample.parallel`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from scoresample.parallel import constrain_batch, gather, particle_time_mesh, spmd_axis, use_mesh

__all__ = ["scan_particles", "progress_callback"]


def progress_callback(num_steps: int, label: str = "sampling", enabled: bool = True):
    """A host callback ``update(i)`` that drives a tqdm bar from inside a compiled scan.

    Returns a pair ``(update, close)``; ``update`` is a no-op when ``enabled`` is False.
    """
    if not enabled or num_steps < 2:
        return (lambda i: None), (lambda: None)
    from tqdm.auto import tqdm

    bar = tqdm(total=num_steps, desc=label, leave=False)
    every = max(1, num_steps // 50)

    def _host(i):
        i = int(i)
        if (i + 1) % every == 0 or i + 1 == num_steps:
            bar.n = i + 1
            bar.refresh()

    def update(i):
        jax.debug.callback(_host, i, ordered=True)

    return update, bar.close


def scan_particles(rng_key, init_fn: Callable, step_fn: Callable, num_particles: int,
                   num_steps: int, *, progress_bar: bool = False, label: str = "sampling",
                   info_transform: Callable | None = None, time_size: int | None = None):
    """Apply ``step_fn`` ``num_steps`` times to ``num_particles`` independent particles.

    Args:
        rng_key: one key; particle i uses ``fold_in(rng_key, i)``; its init key is
            ``fold_in(that, 2^31 - 1)`` and its step-j key ``fold_in(that, j)``.
        init_fn: ``init_fn(rng_key) -> state`` for one particle.
        step_fn: ``step_fn(rng_key, state) -> (state, info)`` for one particle.
        info_transform: optional map applied to the batched info of each step before stacking
            (to keep only what is needed when steps are many).
        time_size: the length of the time axis the kernel shards with
            :func:`scoresample.parallel.constrain_time` (a Picard block's width), or None. With
            several devices the run uses the mesh ``parallel.particle_time_mesh(num_particles,
            time_size)``: particles over its "particles" axis, each particle's time axis over its
            "time" axis.

    Returns:
        ``(final_states, infos)`` with infos stacked as (num_steps, num_particles, ...).
    """
    update, close = progress_callback(num_steps, label, progress_bar)
    mesh = particle_time_mesh(num_particles, time_size)
    vmap = functools.partial(jax.vmap, spmd_axis_name=spmd_axis(mesh))

    @jax.jit
    def run(rng_key):
        particle_keys = jax.vmap(lambda i: jax.random.fold_in(rng_key, i))(jnp.arange(num_particles))
        particle_keys = constrain_batch(particle_keys, mesh)
        init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2**31 - 1))(particle_keys)
        states = constrain_batch(vmap(init_fn)(init_keys), mesh)

        def body(states, i):
            keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(particle_keys)
            states, infos = vmap(step_fn)(keys, states)
            update(i)
            if info_transform is not None:
                infos = info_transform(infos)
            return constrain_batch(states, mesh), infos

        return jax.lax.scan(body, states, jnp.arange(num_steps))

    try:
        with use_mesh(mesh):  # kernels traced inside see the mesh (parallel.constrain_time)
            return gather(run(rng_key))
    finally:
        close()
