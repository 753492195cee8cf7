"""The affine preconditioner x = m + D z, and steps contained on its scale.

A warmup preconditions any kernel by running it on z with the log-density
``z -> log pi(m + D z)``, where D is a diagonal (d,) or a lower-triangular factor (d, d) of the
estimated covariance; the kernel itself is unchanged. On that scale the target has unit spread, so
a step landing :data:`RUNAWAY_LIMIT` standard deviations out is a runaway and is refused
(:func:`safe_step`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from scoresample.base import all_finite

__all__ = ["from_preconditioned", "to_preconditioned", "preconditioned_logdensity",
           "preconditioned_curvature", "RUNAWAY_LIMIT", "safe_step"]


def from_preconditioned(shift, scale, z):
    """x = m + D z: ``scale`` is the diagonal D (d,) or a lower-triangular factor (d, d)."""
    return shift + (scale * z if scale.ndim == 1 else scale @ z)


def to_preconditioned(shift, scale, x):
    """z = D^-1 (x - m), the inverse of :func:`from_preconditioned`."""
    if scale.ndim == 1:
        return (x - shift) / scale
    return jax.scipy.linalg.solve_triangular(scale, x - shift, lower=True)


def preconditioned_logdensity(logdensity_fn: Callable, shift, scale) -> Callable:
    """The log-density of z where x = shift + scale z (the constant log|det D| is dropped)."""

    def logdensity_z(z):
        return logdensity_fn(from_preconditioned(shift, scale, z))

    return logdensity_z


def preconditioned_curvature(precision, scale):
    """Largest eigenvalue of the Hessian of -log pi on the z scale (D^T P D) for the precision P
    on the x scale (NaN when P is)."""
    mat = jnp.diag(scale) if scale.ndim == 1 else scale
    hz = mat.T @ precision @ mat
    return jnp.max(jnp.linalg.eigvalsh(0.5 * (hz + hz.T)))


#: a step landing further than this many preconditioned standard deviations from the warmup's
#: centre is refused and flagged divergent (the position has run away, e.g. an approximate kernel
#: on a heavy tail); the target mass out there is negligible for any posterior with a variance
RUNAWAY_LIMIT = 1e3


def safe_step(step: Callable, rng_key, state, limit=None):
    """``step(rng_key, state)`` whose non-finite (or, with ``limit``, runaway: a coordinate beyond
    ``limit`` in absolute value) outcome is contained: the old state is kept and flagged.

    Returns:
        ``(state, info, is_bad)``.
    """
    new_state, info = step(rng_key, state)
    ok = all_finite(new_state.position)
    if limit is not None:
        ok = ok & (jnp.max(jnp.abs(new_state.position)) <= limit)
    new_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_state, state)
    return new_state, info, ~ok
