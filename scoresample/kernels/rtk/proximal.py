"""The RTK proximal sampler on a log-density: reverse transition kernels with no time.

For pi ∝ exp(-V) and step h, one step is

    y ~ N(x, h I);  then x' from S inner steps on pi_y(z) ∝ exp(-V(z) - |z - y|^2 / (2h)),

started at the current x. With MALA inside, the x-update leaves pi_y invariant, so the whole step is
Metropolis-within-Gibbs on (x, y) and keeps pi exactly invariant for every S >= 1. With ULD inside
(unadjusted) the chain has a bias; see :func:`as_top_level_api` and :data:`RTK_ULD_SD_BIAS`.

Reference: the proximal sampler of Lee, Shen, Tian (COLT 2021) and Chen, Chewi, Salim, Wibisono
(COLT 2022); the RTK framework of Huang et al. (NeurIPS 2024, arXiv 2405.16387). See
[the RTK page](../algorithms/rtk.md).

Example:
    >>> algo = scoresample.rtk(logdensity_fn, 0.5, inner="mala", num_inner_steps=3)
    >>> state = algo.init(jnp.zeros(2))
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
    check_callable,
    check_in,
    check_int,
    check_parameter,
    check_position,
)
from scoresample.kernels.inner import InnerState, ULDState, mala_chain, uld_chain

__all__ = [
    "RTKState",
    "RTKInfo",
    "init",
    "build_kernel",
    "as_top_level_api",
    "rtk",
    "default_inner_step_size",
    "INNER_SOLVERS",
    "RTK_ULD_SD_BIAS",
]

INNER_SOLVERS = ("mala", "uld")

# The bias of the proximal sampler with the ULD inner at its defaults (tau = sqrt(h)/4,
# gamma = 2/sqrt(h), 3 inner steps) on a Gaussian target, per eigendirection of precision lambda:
# stationary sd / exact sd - 1 = 1.7%, 2.6%, 3.6%, 5.7%, 10.6% at h lambda = 0.01, 0.5, 1, 2, 4
# (exact, from the linear chain's covariance recursion). RTK_ULD_SD_BIAS bounds it for h lambda <= 1.
RTK_ULD_SD_BIAS = 0.04


class RTKState(NamedTuple):
    """State of the RTK proximal sampler: the point, its log-density and gradient (reused)."""

    position: object  # array or pytree
    logdensity: jax.Array  # shape=()
    logdensity_grad: object  # like position


class RTKInfo(NamedTuple):
    """Diagnostics of one RTK proximal step.

    - ``acceptance_rate``: mean MH acceptance probability of the inner MALA steps (1 for ULD).
    - ``is_accepted``: at least one inner proposal was accepted (the point moved).
    - ``num_accepted``: accepted inner proposals.
    - ``num_grad_evals``: log-density value-and-gradient evaluations executed (= num_inner_steps).
    - ``is_divergent``: a non-finite value was met (the offending proposal was refused).
    """

    acceptance_rate: jax.Array
    is_accepted: jax.Array
    num_accepted: jax.Array
    num_grad_evals: jax.Array
    is_divergent: jax.Array


def init(position, logdensity_fn: Callable) -> RTKState:
    """Evaluate the log-density and its gradient at ``position`` (array or pytree)."""
    check_position("position", position)
    check_callable("logdensity_fn", logdensity_fn)
    logdensity, grad = jax.value_and_grad(logdensity_fn)(position)
    return RTKState(position, logdensity, grad)


def default_inner_step_size(step_size, dim: int, inner: str = "mala"):
    """The inner step used when none is given, relative to the outer step h.

    MALA: tau = h / (2 d^(1/3)). The inner target has Hessian hess V + I/h >= I/h, so tau (1/h) =
    1 / (2 d^(1/3)) keeps the inner MALA acceptance high even as h -> 0 (the usual d^(-1/3) MALA
    scaling), and the acceptance falls as h grows past 1/L: the warmup tunes h on that acceptance.
    ULD: tau = sqrt(h) / 4, friction 2 / sqrt(h) (critical damping of the I/h part); see
    :data:`RTK_ULD_SD_BIAS` for the bias this leaves.
    """
    if inner == "mala":
        return step_size / (2.0 * dim ** (1.0 / 3.0))
    return 0.25 * jnp.sqrt(step_size)


def build_kernel(inner: str = "mala", num_inner_steps: int = 3):
    """Build the RTK proximal kernel with a MALA or ULD inner solver of ``num_inner_steps`` steps.

    Returns ``kernel(rng_key, state, logdensity_fn, step_size, inner_step_size=None,
    friction=None) -> (RTKState, RTKInfo)``; ``None`` inner parameters follow
    :func:`default_inner_step_size` (and friction 2 / sqrt(h) for ULD).
    """
    check_in("inner", inner, INNER_SOLVERS)
    num_inner_steps = check_int("num_inner_steps", num_inner_steps)

    def kernel(rng_key, state: RTKState, logdensity_fn: Callable, step_size,
               inner_step_size=None, friction=None) -> tuple[RTKState, RTKInfo]:
        x, unravel = ravel_pytree(state.position)
        grad_x, _ = ravel_pytree(state.logdensity_grad)
        h = jnp.asarray(step_size, dtype=x.dtype)
        tau = default_inner_step_size(h, x.shape[0], inner) if inner_step_size is None else (
            jnp.asarray(inner_step_size, dtype=x.dtype))
        key_y, key_v, key_inner = jax.random.split(rng_key, 3)
        y = x + jnp.sqrt(h) * jax.random.normal(key_y, x.shape, dtype=x.dtype)

        def flat_value_and_grad(z):
            value, grad = jax.value_and_grad(logdensity_fn)(unravel(z))
            return value, ravel_pytree(grad)[0]

        def potential_fn(z):
            logdensity, grad = flat_value_and_grad(z)
            offset = z - y
            return (-logdensity + 0.5 * jnp.vdot(offset, offset) / h, -grad + offset / h,
                    (logdensity, grad))

        def energy_diff_fn(old, new):
            # -(log pi(z') - log pi(z)) + (|z' - y|^2 - |z - y|^2) / (2h), without cancellation
            step = new.position - old.position
            quad = 0.5 * jnp.vdot(step, new.position + old.position - 2.0 * y) / h
            return -(new.aux[0] - old.aux[0]) + quad

        offset = x - y
        if inner == "mala":
            start = InnerState(x, jnp.zeros((), x.dtype), -grad_x + offset / h,
                               (state.logdensity, grad_x))
            final, info = mala_chain(key_inner, start, potential_fn, tau, num_inner_steps,
                                     energy_diff_fn)
        else:
            gamma = 2.0 / jnp.sqrt(h) if friction is None else jnp.asarray(friction, x.dtype)
            velocity = jax.random.normal(key_v, x.shape, dtype=x.dtype)
            start = ULDState(x, velocity, -grad_x + offset / h, (state.logdensity, grad_x))
            final, info = uld_chain(key_inner, start, potential_fn, tau, gamma, num_inner_steps)
        logdensity, grad = final.aux
        new_state = RTKState(unravel(final.position), logdensity, unravel(grad))
        return new_state, RTKInfo(info.acceptance_rate, info.is_accepted, info.num_accepted,
                                  jnp.asarray(num_inner_steps, jnp.int32), info.is_divergent)

    return kernel


def as_top_level_api(logdensity_fn: Callable, step_size, *, inner: str = "mala",
                     num_inner_steps: int = 3, inner_step_size=None, friction=None
                     ) -> SamplingAlgorithm:
    """RTK proximal sampler on exp(logdensity_fn): ``SamplingAlgorithm(init, step)``.

    One step: y = x + sqrt(h) xi, then ``num_inner_steps`` steps of the inner solver on
    pi_y(z) ∝ pi(z) exp(-|z - y|^2 / (2h)), started at x.

    - ``inner="mala"``: each inner step is MALA with step tau and its own MH test; pi is exactly
      invariant for every h, tau and number of inner steps (Metropolis-within-Gibbs on (x, y)).
    - ``inner="uld"``: frozen-gradient underdamped Langevin (fresh velocity each outer step, friction
      gamma), unadjusted. Its stationary law is biased by O(tau). On a Gaussian with the defaults
      (tau = sqrt(h)/4, gamma = 2/sqrt(h), 3 inner steps) the stationary sd exceeds the exact one
      by 1.7% to 3.6% in directions with h lambda <= 1, 5.7% at h lambda = 2 and 10.6% at 4
      (lambda an eigenvalue of the precision; :data:`RTK_ULD_SD_BIAS`). Use it when MH rejections
      are the bottleneck, not for exact answers.

    Args:
        logdensity_fn: log pi up to a constant, on an array or a pytree.
        step_size: outer step h > 0 (for L-smooth V, h <= 1/L keeps pi_y well conditioned).
        inner: "mala" or "uld".
        num_inner_steps: S >= 1 inner steps (S value-and-gradient evaluations per step).
        inner_step_size: tau; default :func:`default_inner_step_size`.
        friction: ULD friction gamma; default 2 / sqrt(h) (ULD only).

    Example:
        >>> algo = scoresample.rtk(logdensity_fn, 0.5, inner="mala", num_inner_steps=3)
        >>> state = algo.init(jnp.zeros(2))
        >>> state, info = jax.jit(algo.step)(jax.random.key(0), state)
    """
    check_callable("logdensity_fn", logdensity_fn)
    step_size = check_parameter("step_size", step_size)
    check_in("inner", inner, INNER_SOLVERS)
    num_inner_steps = check_int("num_inner_steps", num_inner_steps)
    if inner_step_size is not None:
        inner_step_size = check_parameter("inner_step_size", inner_step_size)
    if friction is not None:
        if inner != "uld":
            raise ValueError("friction is a parameter of the ULD inner solver; use inner='uld'")
        friction = check_parameter("friction", friction)
    kernel = build_kernel(inner, num_inner_steps)

    return build_sampling_algorithm(kernel, init, logdensity_fn,
                                    kernel_args=(step_size, inner_step_size, friction))


rtk = KernelAPI(as_top_level_api, init, build_kernel)
