"""Tuning FORS-proximal: its :class:`~scoresample.adaptation.TuningSpec` and :func:`fors_warmup`.

FORS-proximal is exact only up to the clipping of its estimates, so its tuning puts accuracy first:
the step is steered by a continuous proxy of the clip rate (:func:`warmup_statistic`, the RMS of
the estimates as a fraction ``target_w_scale`` of the clip level B) and that fraction is
recalibrated at every warmup window from the clips counted there, so that the clip rate stays
below ``clip_tolerance`` (default 1e-3; the warmup aims at half of it). Everything else is the
package's one warmup engine, :func:`scoresample.adaptation.staged_warmup` (gradient-only L-BFGS,
a Laplace start, Stan's windows for the step and a dense preconditioner), with gradients only,
like the kernel.

Example:
    >>> res = fors_warmup(jax.random.key(0), logdensity_fn, jnp.zeros(5), num_steps=300)
    >>> algo = scoresample.fors(logdensity_fn, **res.parameters)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from blackjax.base import build_sampling_algorithm
from jax.flatten_util import ravel_pytree

from scoresample.adaptation import Calibration, TuningSpec, from_preconditioned, staged_warmup
from scoresample.base import check_in, check_int, check_key, check_positive
from scoresample.kernels.fors.proximal import (
    FORSInfo,
    FORSState,
    build_kernel,
    check_curvature,
    check_model,
    init,
)
from scoresample.kernels.fors.proximal_step import KERNEL_OPTIONS

__all__ = ["FORSWarmupResult", "fors_warmup", "warmup_statistic", "fors_algorithm",
           "FORS_TUNING", "KERNEL_OPTIONS"]

Array = jax.Array



class FORSWarmupResult(NamedTuple):
    """What :func:`fors_warmup` returns. ``scoresample.fors(logdensity_fn, **parameters)`` builds
    the tuned sampler (``parameters`` holds ``step_size``, ``inverse_mass_matrix``, ``curvature``,
    ``clip`` and the kernel's options); ``num_grad_evals`` counts every gradient the warmup executed
    (L-BFGS, Hessian columns, FORS steps); ``clip_rate`` is the rate measured over the last two
    windows and ``target_w_scale`` the calibrated estimate scale."""

    state: FORSState
    parameters: dict
    num_grad_evals: Array
    clip_rate: float
    target_w_scale: float


def warmup_statistic(info: FORSInfo, clip, target_w_scale) -> Array:
    """The statistic FORS warmup drives to 1/2: 2^-(w_rms / (target_w_scale B))^2.

    It decreases as the step grows, equals 1/2 when the raw estimates' RMS is ``target_w_scale``
    times the clip level B, and is 1/2 (neutral) on a step that flipped no coin, 0 on a divergent or
    overflowing step and on a step whose prox test failed (``is_prox_rejected``: the step is too
    large for the curvature met there, so those steps pull it down). A continuous proxy of the
    clip rate: a clip is rare (about one estimate in 10^3) so the clip indicator alone gives dual
    averaging almost no signal; the warmup recalibrates ``target_w_scale`` from the clips counted.
    """
    ratio = info.w_rms / (clip * target_w_scale)
    stat = jnp.exp2(-(ratio**2))
    stat = jnp.where(info.num_coins > 0, stat, 0.5)
    return jnp.where(info.is_divergent | info.is_overflow | info.is_prox_rejected, 0.0, stat)


def fors_algorithm(logdensity_fn: Callable, step_size, **options):
    """FORS-proximal as a ``SamplingAlgorithm`` with the tuning's options (the builder of
    :data:`FORS_TUNING`): ``clip``, ``curvature``, ``clip_tolerance`` and ``target_w_scale``
    (tuning only), and the options of :func:`~scoresample.kernels.fors.proximal.build_kernel`. The
    step size may be traced; unknown options raise, naming themselves."""
    options = {**FORS_TUNING.defaults, **options}
    clip = check_positive("clip", options.pop("clip"))
    curvature = check_curvature(options.pop("curvature"))
    check_positive("target_w_scale", options.pop("target_w_scale"))
    tolerance = check_positive("clip_tolerance", options.pop("clip_tolerance"))
    if tolerance >= 1:
        raise ValueError(f"clip_tolerance must be in (0, 1), got {tolerance}")
    unknown = sorted(set(options) - set(KERNEL_OPTIONS))
    if unknown:
        raise ValueError(f"unknown fors options {unknown}; known: clip, curvature, clip_tolerance, "
                         f"target_w_scale, {', '.join(KERNEL_OPTIONS)}")
    kernel = build_kernel(**options)
    return build_sampling_algorithm(kernel, init, logdensity_fn,
                                    kernel_args=(step_size, clip, None, curvature))


def _stat(info, step_size, options):
    del step_size
    return warmup_statistic(info, options["clip"], options["target_w_scale"])


def _reject(info, step_size, options):
    # a step whose estimates were clipped often is far from exact: FORS is exact only up to clipping
    del step_size, options
    return info.is_divergent | info.is_overflow | ~(info.clip_rate <= 0.05)


#: how the staged warmup tunes FORS-proximal (and the one home of its tuning defaults): on the
#: preconditioned scale, curvature 1 takes the preconditioner's covariance as the Hessian guess of
#: the proposal, so the estimates only see the target's departure from it
FORS_TUNING = TuningSpec(
    name="fors", build=fors_algorithm, stat_fn=_stat, target=0.5,
    initial_step_size=lambda dim, curvature: 1.0 / (curvature * math.sqrt(dim)),
    grad_evals_fn=lambda info: info.num_grad_evals,
    divergent_fn=lambda info: info.is_divergent | info.is_overflow,
    defaults={"clip": 1.0, "curvature": 1.0, "clip_tolerance": 1e-3, "target_w_scale": 0.15},
    warmup_reject=_reject, first_step_factor=1.0, max_step_size=100.0, uses_value=False,
    init_grad_evals=0,
    calibration=Calibration("target_w_scale", "clip_tolerance",
                            lambda info: (info.num_clipped, info.num_coins),
                            rate_name="clip_rate"))


def _value_free(grad_fn: Callable, unravel) -> Callable:
    """A flat log-density whose gradient is ``grad_fn`` and whose value is NaN (never used)."""

    @jax.custom_jvp
    def logdensity(x):
        return jnp.nan * jnp.sum(x)

    @logdensity.defjvp
    def logdensity_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return logdensity(x), jnp.dot(ravel_pytree(grad_fn(unravel(x)))[0], t)

    return logdensity


def fors_warmup(rng_key, logdensity_fn: Callable | None = None, initial_position=None,
                num_steps: int = 500, *, grad_fn: Callable | None = None, metric: str = "hessian",
                initial_step_size=None, max_preopt_iterations: int = 500,
                **options) -> FORSWarmupResult:
    """Tune FORS-proximal on one chain with the package's staged warmup (gradients only).

    1. ``metric="hessian"``: gradient-only L-BFGS to the mode, the Laplace approximation there
       (``jax.jacfwd`` of the gradient) and a start drawn from it; its covariance is the first
       metric M, re-estimated (dense) in Stan's slow windows. The proposal uses M^-1 as its Hessian
       guess (``curvature`` 1 by default), so the step no longer scales with the condition number.
       ``metric="identity"`` keeps M = I and starts at ``initial_position`` (default curvature 0:
       the paper's kernel).
    2. ``num_steps`` FORS-proximal steps in Stan's windows: dual averaging drives
       :func:`warmup_statistic` to 1/2 (the estimates' RMS at ``target_w_scale`` B), and at every
       window end ``target_w_scale`` is recalibrated from the clips counted so that the clip rate
       aims at half of ``clip_tolerance`` (:class:`scoresample.adaptation.Calibration`). The step
       is capped at 100 (with an exact proposal nothing else would stop it growing).

    Args:
        rng_key: a PRNG key.
        logdensity_fn: log pi (only its gradient is used); or give ``grad_fn``.
        initial_position: an array or pytree.
        num_steps: FORS steps of the windows.
        grad_fn: ``grad log pi`` instead of ``logdensity_fn``.
        metric: ``"hessian"`` or ``"identity"``.
        initial_step_size: the first step (default 1 / (lambda sqrt(d)), lambda the largest
            eigenvalue of the preconditioned Laplace Hessian).
        max_preopt_iterations: L-BFGS iterations.
        **options: ``clip`` (1), ``curvature``, ``clip_tolerance`` (1e-3), ``target_w_scale``
            (0.15, the first estimate scale) and the options of
            :func:`~scoresample.kernels.fors.proximal.build_kernel`.

    Returns:
        :class:`FORSWarmupResult`.

    Example:
        >>> res = fors_warmup(jax.random.key(0), logdensity_fn, jnp.zeros(5), num_steps=300)
        >>> algo = scoresample.fors(logdensity_fn, **res.parameters)
    """
    check_key("rng_key", rng_key)
    check_model(logdensity_fn, grad_fn)
    if initial_position is None:
        raise TypeError("initial_position is required")
    num_steps = check_int("num_steps", num_steps)
    max_preopt_iterations = check_int("max_preopt_iterations", max_preopt_iterations, minimum=0)
    check_in("metric", metric, ("hessian", "identity"))
    use_metric = metric == "hessian"
    options = {**FORS_TUNING.defaults, "curvature": 1.0 if use_metric else 0.0, **options}
    if initial_step_size is not None:
        initial_step_size = check_positive("initial_step_size", initial_step_size)
    init(initial_position, logdensity_fn, grad_fn=grad_fn)  # input checks, nothing evaluated
    flat0, unravel = ravel_pytree(initial_position)
    if grad_fn is not None:
        flat_logdensity = _value_free(grad_fn, unravel)
    else:
        flat_logdensity = lambda x: logdensity_fn(unravel(x))  # noqa: E731
    # the option values, on an abstract position, before anything is compiled
    jax.eval_shape(lambda x: fors_algorithm(flat_logdensity, 0.1, **options).init(x), flat0)
    spec = FORS_TUNING
    if initial_step_size is not None:
        spec = dataclasses.replace(spec, initial_step_size=lambda dim, curvature: initial_step_size)

    @jax.jit
    def run(rng_key, flat0):
        _, res = staged_warmup(rng_key, spec, flat_logdensity, flat0[None], num_steps,
                               options=options, preconditioner="dense" if use_metric else None,
                               preoptimize=use_metric, max_iterations=max_preopt_iterations)
        x = from_preconditioned(res.shift, res.scale, res.states.position[0])
        return x, res

    x, res = run(rng_key, flat0)
    imm = res.scale @ res.scale.T if use_metric else None
    parameters = dict(step_size=float(res.step_size), inverse_mass_matrix=imm,
                      curvature=options["curvature"], clip=options["clip"],
                      **{k: v for k, v in options.items() if k in KERNEL_OPTIONS})
    clip_rate = float(res.num_events) / max(float(res.num_trials), 1.0)
    return FORSWarmupResult(FORSState(unravel(x)), parameters, res.num_grad_evals, clip_rate,
                            float(res.calibrated_value))
