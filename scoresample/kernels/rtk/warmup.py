"""Tuning the RTK proximal sampler: its :class:`~scoresample.adaptation.TuningSpec` and
:func:`rtk_warmup` (dual averaging of the outer step on the inner acceptance, in the package's one
warmup engine, :func:`scoresample.adaptation.staged_warmup`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
from blackjax.base import build_sampling_algorithm
from jax.flatten_util import ravel_pytree

from scoresample.adaptation import TuningSpec, staged_warmup
from scoresample.base import (
    check_callable,
    check_in,
    check_int,
    check_key,
    check_position,
    check_positive,
)
from scoresample.kernels.rtk.proximal import (
    INNER_SOLVERS,
    RTKState,
    build_kernel,
    default_inner_step_size,
    init,
)

__all__ = ["RTKWarmupResult", "rtk_warmup", "rtk_algorithm", "RTK_TUNING"]


class RTKWarmupResult(NamedTuple):
    """``state`` after warmup, ``parameters`` to pass as ``rtk(logdensity_fn, **parameters)``,
    and the gradient evaluations the warmup executed."""

    state: RTKState
    parameters: dict
    num_grad_evals: jax.Array


def rtk_algorithm(logdensity_fn: Callable, step_size, **options):
    """The RTK proximal sampler as a ``SamplingAlgorithm`` with the tuning's options (``inner``,
    ``num_inner_steps``, ``inner_step_size``, ``friction``): the builder of :data:`RTK_TUNING`.
    The step size may be traced; unknown options raise, naming themselves."""
    options = {**RTK_TUNING.defaults, **options}
    inner = options.pop("inner")
    check_in("inner", inner, INNER_SOLVERS)
    num_inner_steps = check_int("num_inner_steps", options.pop("num_inner_steps"))
    inner_step_size = options.pop("inner_step_size", None)
    friction = options.pop("friction", None)
    if inner_step_size is not None:
        inner_step_size = check_positive("inner_step_size", inner_step_size)
    if friction is not None:
        friction = check_positive("friction", friction)
    if options:
        raise ValueError(f"unknown rtk options {sorted(options)}; known: inner, num_inner_steps, "
                         "inner_step_size, friction")
    return build_sampling_algorithm(build_kernel(inner, num_inner_steps), init, logdensity_fn,
                                    kernel_args=(step_size, inner_step_size, friction))


def _warmup_options(options):
    # ULD has no acceptance to tune on: tune h with the MALA inner solver (ULD's defaults follow h)
    options = dict(options)
    if options.get("inner", "mala") == "uld":
        options.update(inner="mala")
        options.pop("inner_step_size", None)
        options.pop("friction", None)
    return options


#: how the staged warmup tunes the RTK proximal sampler: h by dual averaging on the mean inner
#: MALA acceptance (target 0.75). For small h the inner target is nearly N(y, h I) and the
#: acceptance is high; it falls once h L is of order one, which is the h the proximal sampler wants
RTK_TUNING = TuningSpec(
    name="rtk", build=rtk_algorithm, stat_fn=lambda info, step_size, options: info.acceptance_rate,
    target=0.75, initial_step_size=lambda dim, curvature: 0.5 / curvature,
    grad_evals_fn=lambda info: info.num_grad_evals, divergent_fn=lambda info: info.is_divergent,
    defaults={"inner": "mala", "num_inner_steps": 3}, warmup_options=_warmup_options)


def rtk_warmup(rng_key, logdensity_fn: Callable, position, num_steps: int = 500, *,
               inner: str = "mala", num_inner_steps: int = 3,
               target_acceptance: float | None = None,
               initial_step_size: float | None = None) -> RTKWarmupResult:
    """Tune the outer step h of ``scoresample.rtk`` on one chain (pure JAX: jit and vmap it).

    :func:`scoresample.adaptation.staged_warmup` with :data:`RTK_TUNING` and no preconditioner
    (the kernel has no metric): Stan's windows of dual averaging drive the mean inner MALA
    acceptance to ``target_acceptance`` (default 0.75), with the inner step following h,
    tau = h / (2 d^(1/3)) (:func:`default_inner_step_size`). With ``inner="uld"`` the warmup runs
    the MALA inner (ULD has no acceptance to tune on) and returns h with the ULD defaults
    tau = sqrt(h)/4 and friction 2/sqrt(h).

    Returns:
        :class:`RTKWarmupResult`; ``parameters`` holds ``step_size``, ``inner``,
        ``num_inner_steps`` and ``inner_step_size``.

    Example:
        >>> warm = rtk_warmup(key, logdensity_fn, jnp.zeros(2), 500)
        >>> algo = scoresample.rtk(logdensity_fn, **warm.parameters)
    """
    check_key("rng_key", rng_key)
    check_callable("logdensity_fn", logdensity_fn)
    check_position("position", position)
    num_steps = check_int("num_steps", num_steps)
    check_in("inner", inner, INNER_SOLVERS)
    num_inner_steps = check_int("num_inner_steps", num_inner_steps)
    spec = RTK_TUNING
    if target_acceptance is not None:
        target_acceptance = check_positive("target_acceptance", target_acceptance)
        if target_acceptance >= 1:
            raise ValueError(f"target_acceptance must be in (0, 1), got {target_acceptance}")
        spec = dataclasses.replace(spec, target=target_acceptance)
    if initial_step_size is not None:
        initial_step_size = check_positive("initial_step_size", initial_step_size)
        spec = dataclasses.replace(spec, initial_step_size=lambda dim, curvature: initial_step_size)
    flat0, unravel = ravel_pytree(position)
    _, res = staged_warmup(rng_key, spec, lambda x: logdensity_fn(unravel(x)), flat0[None],
                           num_steps, options={"inner": inner, "num_inner_steps": num_inner_steps},
                           preconditioner=None, preoptimize=False)
    final = jax.tree.map(lambda a: a[0], res.states)
    state = RTKState(unravel(final.position), final.logdensity, unravel(final.logdensity_grad))
    h = res.step_size
    parameters = dict(step_size=h, inner=inner, num_inner_steps=num_inner_steps,
                      inner_step_size=default_inner_step_size(h, flat0.shape[0], inner))
    return RTKWarmupResult(state, parameters, res.num_grad_evals)
