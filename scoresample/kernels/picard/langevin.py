"""Picard Langevin on a log-density: Picard epochs of the Langevin diffusion (BlackJAX-style).

One step advances dX = grad log pi(X) dt + sqrt(2) dB by time h through K Picard iterations on M
points that share one Brownian path; its fixed point (K = M) is M steps of ULA with step h / M and
the same noise. Anari, Chewi, Vuong, "Fast parallel sampling under isoperimetry" (2024); see
[the Picard page](../algorithms/picard.md).

Example:
    >>> algo = scoresample.picard_langevin(logdensity_fn, 0.5, num_points=8, num_iterations=4)
    >>> state = algo.init(jnp.zeros(3))
    >>> state, info = jax.jit(algo.step)(jax.random.key(0), state)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from blackjax.base import build_sampling_algorithm
from jax.flatten_util import ravel_pytree

from scoresample.base import (
    KernelAPI,
    SamplingAlgorithm,
    check_bool,
    check_callable,
    check_int,
    check_parameter,
    check_position,
)
from scoresample.kernels.picard.recursion import rms, shard_time_axis

__all__ = [
    "PicardLangevinState",
    "PicardLangevinInfo",
    "init",
    "build_kernel",
    "as_top_level_api",
    "picard_langevin",
]


class PicardLangevinState(NamedTuple):
    """State of Picard Langevin: the position (an array or a pytree)."""

    position: object


class PicardLangevinInfo(NamedTuple):
    """Diagnostics of one Picard Langevin epoch.

    - ``num_grad_evals``: gradients executed: 1 + (K - 1)(M - 1) (the first iteration needs only
      the gradient at the start, the later ones the M - 1 interior points in one batch).
    - ``num_rounds``: K sequential rounds of batched evaluation.
    - ``residual``: largest RMS change of a point in the last iteration.
    - ``is_divergent``: a non-finite value was met; the chain then stays where it was.
    """

    num_grad_evals: jax.Array
    num_rounds: jax.Array
    residual: jax.Array
    is_divergent: jax.Array


def init(position, logdensity_fn: Callable | None = None) -> PicardLangevinState:
    """Picard Langevin keeps only the position (the gradient at the start is evaluated in round 1)."""
    del logdensity_fn
    return PicardLangevinState(check_position("position", position))


def build_kernel(num_points: int = 8, num_iterations: int = 4, *, shard: bool = True):
    """Build a Picard Langevin kernel with M = ``num_points`` points and K = ``num_iterations``.

    One call advances the Langevin diffusion dX = grad log pi(X) dt + sqrt(2) dB by time h
    (``step_size``) through K Picard iterations on M points with the Brownian path shared by all of
    them:

        X^{k+1}_m = x + (h / M) sum_{j<m} grad log pi(X^k_j) + sqrt(2) B_{m h / M},  m = 1..M,

    starting from X^0 = x. Its fixed point (K = M) is M steps of ULA with step h / M and the same
    noise. Anari, Chewi, Vuong, "Fast parallel sampling under isoperimetry" (2024); Picard
    contracts when beta h <= 1/2 for a beta-smooth log-density.

    Returns:
        ``kernel(rng_key, state, logdensity_fn, step_size) -> (state, info)``.
    """
    num_points = check_int("num_points", num_points)
    num_iterations = check_int("num_iterations", num_iterations)
    shard = check_bool("shard", shard)

    def kernel(rng_key, state: PicardLangevinState, logdensity_fn: Callable, step_size):
        flat_x, unravel = ravel_pytree(state.position)

        def grad_flat(x):
            return ravel_pytree(jax.grad(logdensity_fn)(unravel(x)))[0]

        h = jnp.asarray(step_size, flat_x.dtype) / num_points
        noise = jax.random.normal(rng_key, (num_points,) + flat_x.shape, dtype=flat_x.dtype)
        brownian = jnp.cumsum(jnp.sqrt(2.0 * h) * noise, axis=0)  # sqrt(2) B at m h / M, m = 1..M
        grad0 = grad_flat(flat_x)
        steps = jnp.arange(1, num_points + 1, dtype=flat_x.dtype)[:, None]
        path = flat_x[None, :] + steps * h * grad0[None, :] + brownian  # iteration 1 (one gradient)

        def body(carry, _):
            path, _ = carry
            interior = shard_time_axis(path[:-1], shard) if num_points > 1 else path[:-1]
            grads = jnp.concatenate([grad0[None, :], jax.vmap(grad_flat)(interior)], axis=0)
            new_path = flat_x[None, :] + h * jnp.cumsum(grads, axis=0) + brownian
            return (new_path, jnp.max(rms(new_path - path))), None

        first_change = jnp.max(rms(path - flat_x[None, :]))
        (path, residual), _ = jax.lax.scan(body, (path, first_change), None,
                                           length=num_iterations - 1)
        new = path[-1]
        is_divergent = ~jnp.all(jnp.isfinite(new)) | ~jnp.all(jnp.isfinite(grad0))
        new = jnp.where(is_divergent, flat_x, new)
        num_evals = 1 + (num_iterations - 1) * (num_points - 1)
        info = PicardLangevinInfo(jnp.asarray(num_evals, jnp.int32),
                                  jnp.asarray(num_iterations, jnp.int32), residual, is_divergent)
        return PicardLangevinState(unravel(new)), info

    return kernel


def as_top_level_api(logdensity_fn: Callable, step_size, num_points: int = 8,
                     num_iterations: int = 4, *, shard: bool = True) -> SamplingAlgorithm:
    """Picard Langevin: one Picard epoch of length ``step_size`` per step (see :func:`build_kernel`).

    Args:
        logdensity_fn: log pi(x) up to a constant, for one position (an array or a pytree); only
            its gradient is used.
        step_size: h, the time the Langevin diffusion advances per step (the fixed point is ULA with
            step h / num_points).
        num_points: M, points per epoch (the batch of one round).
        num_iterations: K, Picard iterations (rounds) per epoch; K = M reproduces ULA exactly.
        shard: split the M points over devices when there are several.

    Returns:
        A ``SamplingAlgorithm`` whose ``step`` works under jit, vmap and
        ``blackjax.util.run_inference_algorithm``.

    Example:
        >>> algo = scoresample.picard_langevin(logdensity_fn, 0.5, num_points=8, num_iterations=4)
        >>> state = algo.init(jnp.zeros(3))
        >>> state, info = jax.jit(algo.step)(jax.random.key(0), state)
    """
    check_callable("logdensity_fn", logdensity_fn)
    step_size = check_parameter("step_size", step_size)
    kernel = build_kernel(num_points, num_iterations, shard=shard)

    return build_sampling_algorithm(kernel, init, logdensity_fn, kernel_args=(step_size,))


picard_langevin = KernelAPI(as_top_level_api, init, build_kernel)
