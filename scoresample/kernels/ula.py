"""Unadjusted Langevin (ULA): the Langevin proposal of MALA, always accepted.

    x' = x + h grad log pi(x) + sqrt(2 h) xi,   xi ~ N(0, I)   (Roberts and Tweedie 1996).

Biased for every h > 0 (the bias is O(h)); a baseline. Each step also reports the acceptance
probability a MALA test would have given the move (:func:`scoresample.kernels.mala.mala_log_ratio`):
it measures the discretisation error of the step, and warmups tune h on it.

Example:
    >>> algo = ula(logdensity_fn, 0.05)
    >>> state = algo.init(jnp.zeros(3))
    >>> state, info = jax.jit(algo.step)(jax.random.key(0), state)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from scoresample.base import KernelAPI, SamplingAlgorithm, all_finite
from scoresample.kernels.mala import MALAState, init, langevin_algorithm, langevin_proposal, mala_log_ratio

__all__ = ["ULAState", "ULAInfo", "init", "build_kernel", "as_top_level_api", "ula"]

#: the state of unadjusted Langevin is MALA's: position, log-density and its gradient
ULAState = MALAState


class ULAInfo(NamedTuple):
    """Info of one unadjusted Langevin step.

    ``acceptance_rate`` is 1 (nothing is rejected); ``mala_acceptance`` is the Metropolis-Hastings
    acceptance probability a MALA correction would have given the move (the warmup tunes on it;
    it measures the discretisation error of the step). ``num_grad_evals`` is 1.
    """

    acceptance_rate: jax.Array
    mala_acceptance: jax.Array
    is_divergent: jax.Array
    num_grad_evals: jax.Array


def build_kernel():
    """``kernel(rng_key, state, logdensity_fn, step_size) -> (ULAState, ULAInfo)``.

    x' = x + h grad log pi(x) + sqrt(2 h) xi, no Metropolis-Hastings test. A non-finite new point
    (or diagnostic ratio) is refused: the old point is kept and the step is flagged divergent.
    """

    def kernel(rng_key, state: ULAState, logdensity_fn: Callable, step_size):
        x = state.position
        new_state = init(langevin_proposal(rng_key, x, state.logdensity_grad, step_size),
                         logdensity_fn)
        log_ratio = mala_log_ratio(x, new_state.position, state.logdensity_grad,
                                   new_state.logdensity_grad,
                                   new_state.logdensity - state.logdensity, step_size)
        is_divergent = ~(all_finite(new_state) & jnp.isfinite(log_ratio))
        new_state = jax.tree.map(lambda a, b: jnp.where(is_divergent, b, a), new_state, state)
        proxy = jnp.where(is_divergent, 0.0, jnp.exp(jnp.minimum(log_ratio, 0.0)))
        info = ULAInfo(jnp.ones((), x.dtype), proxy.astype(x.dtype), is_divergent,
                       jnp.ones((), jnp.int32))
        return new_state, info

    return kernel


def as_top_level_api(logdensity_fn: Callable, step_size) -> SamplingAlgorithm:
    """Unadjusted Langevin on ``logdensity_fn`` with step size h, as a ``SamplingAlgorithm``.

    Example:
        >>> algo = ula(lambda x: -0.5 * jnp.sum(x**2), 0.1)
        >>> state, info = jax.jit(algo.step)(jax.random.key(0), algo.init(jnp.zeros(2)))
    """
    return langevin_algorithm(build_kernel(), logdensity_fn, step_size)


#: Unadjusted Langevin algorithm, ``ula(logdensity_fn, step_size) -> SamplingAlgorithm``.
ula = KernelAPI(as_top_level_api, init, build_kernel)
