"""Metropolis-adjusted Langevin (MALA): the one Langevin proposal and acceptance ratio of the
package.

The proposal is one Euler step of the overdamped Langevin diffusion,

    x' = x + h grad log pi(x) + sqrt(2 h) xi,   xi ~ N(0, I),

and the Metropolis-Hastings log ratio of that Gaussian proposal is

    log pi(x') - log pi(x) - <x' - x, g + g'> / 2 + h (|g|^2 - |g'|^2) / 4,

with g, g' the gradients of log pi at x and x' (the ratio of the two Gaussian densities written
without |x' - x|^2, so nothing cancels). :func:`langevin_proposal` and :func:`mala_log_ratio`
are shared by every Langevin step of the package: this MALA kernel, the inner MALA of RTK
(:func:`scoresample.kernels.inner.mala_step`, on a potential U = -log pi) and the diagnostic ratio
of unadjusted Langevin (:mod:`scoresample.kernels.ula`). The accept/reject decision is
:func:`scoresample.kernels.proposal.metropolis_hastings`, which also flags non-finite proposals.

Paper: G. O. Roberts, R. L. Tweedie, "Exponential convergence of Langevin distributions and their
discrete approximations", Bernoulli 2 (1996).

Example:
    >>> algo = mala(logdensity_fn, 0.1)
    >>> state = algo.init(jnp.zeros(3))
    >>> state, info = jax.jit(algo.step)(jax.random.key(0), state)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from blackjax.base import build_sampling_algorithm

from scoresample.base import KernelAPI, SamplingAlgorithm, check_callable, check_parameter
from scoresample.kernels.proposal import metropolis_hastings

__all__ = [
    "MALAState",
    "MALAInfo",
    "init",
    "build_kernel",
    "as_top_level_api",
    "mala",
    "langevin_proposal",
    "mala_log_ratio",
    "langevin_algorithm",
]


class MALAState(NamedTuple):
    """A point of a Langevin chain with what the next step reuses."""

    position: jax.Array  # shape=(d,)
    logdensity: jax.Array  # shape=()
    logdensity_grad: jax.Array  # shape=(d,)


class MALAInfo(NamedTuple):
    """Info of one MALA step: the MH outcome, a divergence flag and the cost (one gradient)."""

    acceptance_rate: jax.Array
    is_accepted: jax.Array
    is_divergent: jax.Array
    num_grad_evals: jax.Array


def langevin_proposal(rng_key, position, logdensity_grad, step_size):
    """x + h grad log pi(x) + sqrt(2 h) xi with xi ~ N(0, I) drawn from ``rng_key``."""
    noise = jax.random.normal(rng_key, position.shape, dtype=position.dtype)
    return position + step_size * logdensity_grad + jnp.sqrt(2.0 * step_size) * noise


def mala_log_ratio(position, new_position, logdensity_grad, new_logdensity_grad, logdensity_diff,
                   step_size):
    """log pi(x') + log q(x | x') - log pi(x) - log q(x' | x) for the Langevin proposal q.

    Args:
        position, new_position: x and x'.
        logdensity_grad, new_logdensity_grad: g = grad log pi(x) and g' = grad log pi(x').
        logdensity_diff: log pi(x') - log pi(x).
        step_size: h.

    Returns:
        ``logdensity_diff - <x' - x, g + g'> / 2 + h (|g|^2 - |g'|^2) / 4``.
    """
    step = new_position - position
    return (logdensity_diff - 0.5 * jnp.vdot(step, logdensity_grad + new_logdensity_grad)
            + 0.25 * step_size * (jnp.vdot(logdensity_grad, logdensity_grad)
                                  - jnp.vdot(new_logdensity_grad, new_logdensity_grad)))


def init(position, logdensity_fn: Callable) -> MALAState:
    """Evaluate the log-density and its gradient at ``position`` (one gradient evaluation)."""
    logdensity, logdensity_grad = jax.value_and_grad(logdensity_fn)(position)
    return MALAState(position, logdensity, logdensity_grad)


def build_kernel():
    """``kernel(rng_key, state, logdensity_fn, step_size) -> (MALAState, MALAInfo)``.

    x' = x + h grad log pi(x) + sqrt(2 h) xi, accepted with probability min(1, exp(r)) where r is
    :func:`mala_log_ratio`; a non-finite proposal or ratio is rejected and flagged divergent.
    """

    def kernel(rng_key, state: MALAState, logdensity_fn: Callable, step_size):
        key_move, key_mh = jax.random.split(rng_key)
        new_position = langevin_proposal(key_move, state.position, state.logdensity_grad,
                                         step_size)
        new_state = init(new_position, logdensity_fn)
        log_ratio = mala_log_ratio(state.position, new_position, state.logdensity_grad,
                                   new_state.logdensity_grad,
                                   new_state.logdensity - state.logdensity, step_size)
        decision = metropolis_hastings(key_mh, log_ratio, new_state, state)
        info = MALAInfo(decision.acceptance_rate, decision.is_accepted, decision.is_divergent,
                        jnp.ones((), jnp.int32))
        return decision.state, info

    return kernel


def langevin_algorithm(kernel: Callable, logdensity_fn: Callable, step_size) -> SamplingAlgorithm:
    """The ``SamplingAlgorithm`` of a Langevin ``kernel(rng_key, state, logdensity_fn, step_size)``
    on :class:`MALAState`: a concrete h is checked (finite, > 0); a traced one, as in a warmup,
    passes through."""
    check_callable("logdensity_fn", logdensity_fn)
    step_size = check_parameter("step_size", step_size)

    return build_sampling_algorithm(kernel, init, logdensity_fn, kernel_args=(step_size,))


def as_top_level_api(logdensity_fn: Callable, step_size) -> SamplingAlgorithm:
    """MALA on ``logdensity_fn`` with step size h.

    Returns:
        A ``SamplingAlgorithm`` (``init(position)``, ``step(rng_key, state)``).

    Example:
        >>> algo = mala(lambda x: -0.5 * jnp.sum(x**2), 0.5)
        >>> state, info = algo.step(jax.random.key(0), algo.init(jnp.zeros(2)))
    """
    return langevin_algorithm(build_kernel(), logdensity_fn, step_size)


#: Metropolis-adjusted Langevin, ``mala(logdensity_fn, step_size) -> SamplingAlgorithm``.
mala = KernelAPI(as_top_level_api, init, build_kernel)
