"""The Laplace approximation at an optimum, and chain starts drawn from it.

At the optimum x* of log pi, the Hessian H (forward-over-reverse differentiation of the gradient,
counted as two gradient evaluations per column) gives the Laplace covariance Sigma = (-H)^-1. Its
diagonal is a first preconditioner, and every chain starts from its own draw of N(x*, Sigma):
dispersed, and in the typical set of a near-Gaussian posterior.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Laplace", "laplace_approximation", "laplace_draw"]

Array = jax.Array


class Laplace(NamedTuple):
    """The Laplace approximation N(x*, (-H)^-1) at an optimum x*."""

    precision: Array  # -H at the optimum, symmetrised, shape=(d, d) (NaN when skipped)
    covariance: Array  # (-H)^-1, shape=(d, d) (diagonal fallback if -H is not positive definite)
    chol_precision: Array  # Cholesky factor of -H, shape=(d, d) (identity when not usable)
    is_ok: Array  # bool: -H is positive definite and everything is finite
    num_grad_evals: Array  # int32


def laplace_approximation(grad_logdensity: Callable, x, max_dim: int) -> Laplace:
    """The Laplace approximation of the density whose log has gradient ``grad_logdensity``, at x.

    Costs 2 d gradient evaluations (``jax.jacfwd`` of the gradient). Above ``max_dim`` dimensions
    the Hessian is skipped: the covariance is the identity and ``is_ok`` is False. When -H is not
    positive definite the covariance falls back on the inverse of its positive diagonal entries.

    Example:
        >>> lap = laplace_approximation(jax.grad(logdensity_fn), x_opt, max_dim=512)
    """
    d = x.shape[0]
    dtype = x.dtype
    eye = jnp.eye(d, dtype=dtype)
    if d > max_dim:
        return Laplace(jnp.full((d, d), jnp.nan, dtype), eye, eye, jnp.zeros((), bool),
                       jnp.zeros((), jnp.int32))
    hess = jax.jacfwd(grad_logdensity)(x)
    precision = -0.5 * (hess + hess.T)
    chol = jnp.linalg.cholesky(precision)
    is_ok = jnp.all(jnp.isfinite(chol))
    chol = jnp.where(is_ok, chol, eye)
    inv_chol = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)
    covariance = inv_chol.T @ inv_chol
    diag = jnp.diagonal(precision)
    fallback = jnp.where(jnp.isfinite(diag) & (diag > 0), 1.0 / jnp.where(diag > 0, diag, 1.0), 1.0)
    is_ok = is_ok & jnp.all(jnp.isfinite(covariance))
    covariance = jnp.where(is_ok, covariance, jnp.diag(fallback))
    return Laplace(precision, covariance, chol, is_ok, jnp.asarray(2 * d, jnp.int32))


def laplace_draw(rng_key, x, lap: Laplace, is_valid: Callable):
    """A start near ``N(x, (-H)^-1)``: the draw scaled by 1, 1/2, 1/4, 1/10 or 0, the first that
    ``is_valid`` accepts (finite gradient, and a finite value for kernels that use it).

    Returns the start and the evaluations spent checking.
    """
    xi = jax.random.normal(rng_key, x.shape, x.dtype)
    # x + L^-T xi ~ N(x, (L L^T)^-1)
    full = jax.scipy.linalg.solve_triangular(lap.chol_precision.T, xi, lower=False)
    diag = 0.5 * jnp.sqrt(jnp.diagonal(lap.covariance)) * xi
    offset = jnp.where(lap.is_ok, full, diag)
    chosen, found, evals = x, jnp.zeros((), bool), jnp.zeros((), jnp.int32)
    for factor in (1.0, 0.5, 0.25, 0.1):
        candidate = x + factor * offset
        ok = is_valid(candidate)
        evals = evals + jnp.where(found, 0, 1).astype(jnp.int32)
        take = ok & ~found
        chosen = jnp.where(take, candidate, chosen)
        found = found | ok
    return chosen, evals
