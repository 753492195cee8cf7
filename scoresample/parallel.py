"""Placing particles and chains on several devices and hosts with jax.sharding.

Samplers are single-particle and every particle's randomness is derived from its index, so sharding
the particle (or chain) axis over a 1-D device mesh changes where the work runs, never the draws.
With several processes (``jax.distributed.initialize``), ``jax.devices()`` lists the global devices
and the same code shards over all of them; :func:`gather` brings the global result to every host.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["batch_sharding", "constrain_batch", "gather"]

AXIS = "batch"


def batch_sharding(batch_size: int, devices=None) -> NamedSharding | None:
    """A sharding of a leading batch axis over all devices, or None on one device.

    Returns None when the batch does not divide evenly over the devices (the run then stays
    replicated rather than padding, so that results never depend on the device count).
    """
    devices = jax.devices() if devices is None else list(devices)
    if len(devices) < 2 or batch_size % len(devices) != 0:
        return None
    mesh = Mesh(np.asarray(devices), (AXIS,))
    return NamedSharding(mesh, PartitionSpec(AXIS))


def constrain_batch(tree, sharding: NamedSharding | None):
    """Inside jit: ask XLA to keep every leaf's leading axis sharded by ``sharding``."""
    if sharding is None:
        return tree
    mesh = sharding.mesh

    def one(leaf):
        spec = PartitionSpec(AXIS, *([None] * (leaf.ndim - 1))) if leaf.ndim else PartitionSpec()
        return jax.lax.with_sharding_constraint(leaf, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map(one, tree)


def gather(tree):
    """Every process gets the full (global) arrays; a no-op with one process."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
