"""Placing particles, chains and Picard's time axis on several devices and hosts with jax.sharding.

Samplers are single-particle and every particle's randomness is derived from its index, so sharding
the particle (or chain) axis over devices changes where the work runs, never the draws. The Picard
samplers also have a time axis inside each particle (the grid points of a block, evaluated in one
batch). When both are used, one 2-D mesh ``("particles", "time")`` holds them: the devices are
split into groups, the particles over the groups and each particle's time axis over the devices
of its group,

    mesh.devices.shape == (P, T),   P * T == number of devices,   P | num_particles,   T | M.

Particles come first (they never communicate): T > 1 only when the particles alone cannot occupy
every device. Inside the driver the particle vmap names the "particles" axis
(``jax.vmap(..., spmd_axis_name="particles")``), so a time-axis constraint inside a kernel becomes a
``("particles", "time")`` sharding of the batched array: no resharding of the particle axis between
the driver and the kernel. Outside the driver (a Picard kernel jitted on its own), the time axis is
split over all devices on a 1-D ``("time",)`` mesh.

With several processes (``jax.distributed.initialize``), ``jax.devices()`` lists the global devices
and the same code shards over all of them; :func:`gather` brings the global result to every host.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "PARTICLES",
    "TIME",
    "particle_time_mesh",
    "use_mesh",
    "current_mesh",
    "batch_sharding",
    "constrain_batch",
    "constrain_time",
    "spmd_axis",
    "gather",
]

PARTICLES = "particles"
TIME = "time"

_MESH: contextvars.ContextVar = contextvars.ContextVar("scoresample_mesh", default=None)


def particle_time_mesh(num_particles: int, time_size: int | None = None,
                       devices=None) -> Mesh | None:
    """The 2-D mesh ("particles", "time") for ``num_particles`` particles with a time axis of
    ``time_size`` points each (None: no time axis), or None when nothing can be split.

    Among the splits P x T of the devices with P dividing ``num_particles`` and T dividing
    ``time_size`` (T = 1 without a time axis), the one with the most particle groups P is chosen.
    Returns None on one device or when no split divides evenly: the run is then not sharded and
    runs on one device, rather than padding, so that results never depend on the device count.
    """
    devices = jax.devices() if devices is None else list(devices)
    num_devices = len(devices)
    if num_devices < 2:
        return None
    for groups in sorted((p for p in range(1, num_devices + 1) if num_devices % p == 0),
                         reverse=True):
        width = num_devices // groups
        if num_particles % groups:
            continue
        if width > 1 and (time_size is None or time_size % width):
            continue
        if groups == 1 and width == 1:
            return None
        return Mesh(np.asarray(devices).reshape(groups, width), (PARTICLES, TIME))
    return None


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None):
    """While tracing inside this block, kernels see ``mesh`` as :func:`current_mesh`."""
    token = _MESH.set(mesh)
    try:
        yield mesh
    finally:
        _MESH.reset(token)


def current_mesh() -> Mesh | None:
    """The mesh set by the driver being traced (:func:`use_mesh`), or None."""
    return _MESH.get()


def batch_sharding(batch_size: int, devices=None) -> NamedSharding | None:
    """A sharding of a leading batch axis over all devices, or None on one device.

    It lives on the mesh ``particle_time_mesh(batch_size, None, devices)`` (T = 1). Returns None
    when the batch does not divide evenly over the devices.
    """
    mesh = particle_time_mesh(batch_size, None, devices)
    return None if mesh is None else NamedSharding(mesh, PartitionSpec(PARTICLES))


def _leading_sharding(mesh: Mesh, axis: str, leaf) -> NamedSharding:
    spec = PartitionSpec(axis, *([None] * (leaf.ndim - 1))) if leaf.ndim else PartitionSpec()
    return NamedSharding(mesh, spec)


def constrain_batch(tree, sharding: NamedSharding | Mesh | None):
    """Inside jit: keep every leaf's leading axis split over the particle axis of ``sharding``'s
    mesh (replicated over its time axis), or leave ``tree`` alone when ``sharding`` is None."""
    if sharding is None:
        return tree
    mesh = sharding if isinstance(sharding, Mesh) else sharding.mesh
    axis = PARTICLES if PARTICLES in mesh.axis_names else mesh.axis_names[0]
    return jax.tree_util.tree_map(
        lambda leaf: jax.lax.with_sharding_constraint(leaf, _leading_sharding(mesh, axis, leaf)),
        tree)


def constrain_time(x, enabled: bool = True):
    """Inside jit: split the leading (time-grid) axis of one particle's array ``x`` over devices.

    Inside the driver (a :func:`current_mesh` with a "time" axis) it uses that mesh's time axis,
    and the particle vmap adds the "particles" axis; otherwise all devices on a 1-D ("time",)
    mesh. A no-op on one device, with a time axis of one device, or when the length does not
    divide evenly (results never depend on padding).
    """
    if not enabled:
        return x
    mesh = current_mesh()
    if mesh is not None and TIME in mesh.axis_names:
        width = mesh.shape[TIME]
    else:
        devices = jax.devices()
        width = len(devices)
        mesh = Mesh(np.asarray(devices), (TIME,)) if width > 1 else None
    if mesh is None or width < 2 or x.ndim == 0 or x.shape[0] % width:
        return x
    return jax.lax.with_sharding_constraint(x, _leading_sharding(mesh, TIME, x))


def spmd_axis(mesh: Mesh | None) -> str | None:
    """The name to give the particle vmap (``spmd_axis_name``) on ``mesh``, or None."""
    if mesh is None or PARTICLES not in mesh.axis_names or math.prod(mesh.devices.shape) < 2:
        return None
    return PARTICLES


def gather(tree):
    """Every process gets the full (global) arrays; a no-op with one process."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
