"""The one Metropolis-Hastings accept/reject step of the package.

Every Metropolis-adjusted kernel (the inner MALA of RTK, any MH-corrected sampler) computes its log
acceptance ratio and hands it here with the proposed and the current state. One function decides,
so that the treatment of non-finite values is the same everywhere:

    accept with probability  min(1, exp(log_ratio)),

and a non-finite ``log_ratio`` (NaN, +inf or -inf), or a proposal with a non-finite leaf, is
rejected and flagged ``is_divergent``: the old state is kept and no NaN ever becomes a sample.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from scoresample.base import all_finite

__all__ = ["MHDecision", "metropolis_hastings"]


class MHDecision(NamedTuple):
    """The outcome of one Metropolis-Hastings test.

    - ``state``: the chosen state (the proposal if accepted, else the old state).
    - ``is_accepted``: bool, shape ().
    - ``acceptance_rate``: min(1, exp(log_ratio)) in [0, 1], 0 when the ratio is non-finite.
    - ``is_divergent``: bool, shape (); a non-finite ratio or proposal was met (and rejected).
    """

    state: Any
    is_accepted: jax.Array
    acceptance_rate: jax.Array
    is_divergent: jax.Array


def metropolis_hastings(rng_key, log_ratio, new_state, old_state) -> MHDecision:
    """Accept ``new_state`` with probability min(1, exp(log_ratio)), else keep ``old_state``.

    Args:
        rng_key: a JAX PRNG key (one uniform is drawn).
        log_ratio: scalar log acceptance ratio
            log pi(new) + log q(old | new) - log pi(old) - log q(new | old).
        new_state: the proposed state (any pytree).
        old_state: the current state (a pytree with the same structure).

    Returns:
        :class:`MHDecision` ``(state, is_accepted, acceptance_rate, is_divergent)``.

    Example:
        >>> decision = metropolis_hastings(key, jnp.log(0.3), x_new, x_old)
        >>> decision.acceptance_rate  # 0.3
    """
    log_ratio = jnp.asarray(log_ratio)
    is_divergent = ~(jnp.isfinite(log_ratio) & all_finite(new_state))
    safe_log_ratio = jnp.where(is_divergent, -jnp.inf, log_ratio)
    acceptance_rate = jnp.exp(jnp.minimum(safe_log_ratio, 0.0))
    # log u < log_ratio with u ~ U(0, 1]; log(u) is finite, so a -inf ratio always rejects.
    log_u = jnp.log1p(-jax.random.uniform(rng_key, (), dtype=acceptance_rate.dtype))
    is_accepted = log_u < safe_log_ratio
    state = jax.tree.map(lambda new, old: jnp.where(is_accepted, new, old), new_state, old_state)
    return MHDecision(state, is_accepted, acceptance_rate, is_divergent)
