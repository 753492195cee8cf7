"""Step-size warmup: dual averaging of the step size on a statistic of the kernel's info.

``blackjax.window_adaptation`` only takes kernels with ``(step_size, inverse_mass_matrix)`` that
report an acceptance rate, so the package's samplers tune here. A kernel provides
``kernel(rng_key, state, step_size) -> (state, info)`` and a statistic of its info that should sit
at ``target`` (the MH acceptance for MALA-type kernels; for FORS, the acceptance combined with the
clip rate). The scheme is Nesterov dual averaging as in Hoffman and Gelman (2014), reused from
BlackJAX.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from blackjax.adaptation.step_size import dual_averaging_adaptation

__all__ = ["dual_averaging_warmup", "WarmupResult", "bounded_statistic"]


class WarmupResult(NamedTuple):
    state: object  # the chain's state after warmup
    step_size: jax.Array  # the tuned step size (dual-averaged, shape=())
    infos: object  # the per-step infos of the warmup, stacked


def bounded_statistic(stat) -> jax.Array:
    """A warmup statistic clipped to [0, 1] in the default float dtype; non-finite values count as
    0, so that a divergent step makes dual averaging shrink the step size."""
    stat = jnp.asarray(stat, dtype=jnp.result_type(float))
    return jnp.where(jnp.isfinite(stat), jnp.clip(stat, 0.0, 1.0), 0.0)


def dual_averaging_warmup(rng_key, kernel: Callable, init_state, initial_step_size, num_steps: int,
                          *, target: float, stat_fn: Callable = lambda info: info.acceptance_rate,
                          max_step_size: float = jnp.inf) -> WarmupResult:
    """Tune ``step_size`` so that ``stat_fn(info)`` averages ``target``; a single chain, pure JAX.

    A statistic above target makes the step grow, below target shrink, so ``stat_fn`` must increase
    as the step shrinks (an acceptance rate; for a clip rate pass ``1 - clip_rate``). Non-finite
    statistics count as 0 so that a divergent step shrinks the step size.

    Returns the last state, the averaged step size and the warmup infos.

    Example:
        >>> kernel = lambda key, state, h: mala.build_kernel()(key, state, logdensity_fn, h)
        >>> result = dual_averaging_warmup(jax.random.key(0), kernel, state, 0.1, 500,
        ...                                target=0.574)
    """
    da_init, da_update, da_final = dual_averaging_adaptation(target)

    def body(carry, key):
        state, da_state = carry
        step_size = jnp.minimum(jnp.exp(da_state.log_step_size), max_step_size)
        new_state, info = kernel(key, state, step_size)
        da_state = da_update(da_state, bounded_statistic(stat_fn(info)))
        return (new_state, da_state), info

    keys = jax.random.split(rng_key, num_steps)
    (state, da_state), infos = jax.lax.scan(body, (init_state, da_init(initial_step_size)), keys)
    step_size = jnp.minimum(da_final(da_state), max_step_size)
    return WarmupResult(state, step_size, infos)
