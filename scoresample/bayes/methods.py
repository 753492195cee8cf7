"""The method table of :func:`scoresample.sample`: how each sampler is built, warmed up and
counted.

A :class:`Method` is a kernel's :class:`~scoresample.adaptation.TuningSpec` (what the staged warmup
needs) plus what the sampling phase reports. FORS and RTK bring their specs from beside their
kernels (:data:`~scoresample.kernels.fors.FORS_TUNING`,
:data:`~scoresample.kernels.rtk.RTK_TUNING`); the MALA, ULA and Picard specs are here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
from blackjax.base import build_sampling_algorithm

from scoresample.adaptation import TuningSpec
from scoresample.base import check_positive
from scoresample.kernels.fors import FORS_TUNING
from scoresample.kernels.mala import mala
from scoresample.kernels.rtk import RTK_TUNING
from scoresample.kernels.ula import ula

__all__ = ["Method", "METHODS"]


def _acceptance(info, *unused):
    rate = info.acceptance_rate
    return jnp.where(jnp.isfinite(rate), rate, 0.0)


@dataclasses.dataclass(frozen=True)
class Method(TuningSpec):
    """How ``sample`` runs one sampler: its :class:`~scoresample.adaptation.TuningSpec` (``build``,
    ``stat_fn``, ``target``, ``initial_step_size``, ``grad_evals_fn``, ``divergent_fn``,
    ``defaults``, ...) and what the sampling phase reports.

    Attributes:
        acceptance_fn: the acceptance rate reported in ``sample_stats``.
        extra_stats: further ``(name, fn(info))`` reported in ``sample_stats`` (integer stats
            are summed over the ``thin`` steps of a draw, booleans or-ed, floats averaged).
        nominal_grads_per_step: the typical gradient evaluations of one sampling step, for thinning
            runs of different methods to equal cost (None for NUTS, whose cost varies).
        draw_time: with ``thin="auto"``, a kept draw spans this much "time" (steps x step size):
            the proximal sampler's autocorrelation on a unit-scale target decays like
            (1 + h)^-k ~ e^(-k h), so a draw time of 1 (FORS, RTK) makes a kept draw about as
            informative as a NUTS draw where the preconditioner fits (None: one step per draw).
        description: one line for reports.
    """

    acceptance_fn: Callable = _acceptance
    extra_stats: tuple = ()
    nominal_grads_per_step: float | None = None
    draw_time: float | None = None
    description: str = ""

    @classmethod
    def from_spec(cls, spec: TuningSpec, **fields) -> Method:
        """A method from a kernel's tuning spec and the reporting ``fields``."""
        tuning = {f.name: getattr(spec, f.name) for f in dataclasses.fields(TuningSpec)}
        return cls(**tuning, **fields)


def _one_eval(info):
    del info
    return jnp.ones((), jnp.int32)


def _no_options(name: str, options: dict):
    if options:
        raise ValueError(f"{name} takes no options, got {sorted(options)}")


def _build_mala(logdensity_fn, step_size, **options):
    _no_options("mala", options)
    return build_sampling_algorithm(mala.build_kernel(), mala.init, logdensity_fn,
                                    kernel_args=(step_size,))


def _build_ula(logdensity_fn, step_size, **options):
    _no_options("ula", options)
    return build_sampling_algorithm(ula.build_kernel(), ula.init, logdensity_fn,
                                    kernel_args=(step_size,))


def _build_picard(logdensity_fn, step_size, **options):
    from scoresample.kernels import picard as picard_module

    options = dict(options)
    build_args = {"num_points": options.pop("num_points", 8),
                  "num_iterations": options.pop("num_iterations", 4)}
    if options.get("residual_tolerance") is not None:
        check_positive("residual_tolerance", options["residual_tolerance"])
    options.pop("residual_tolerance", None)
    if options:
        raise ValueError(f"unknown picard options {sorted(options)}; known: num_points, "
                         "num_iterations, residual_tolerance")
    api = picard_module.picard_langevin
    return build_sampling_algorithm(api.build_kernel(**build_args), api.init, logdensity_fn,
                                    kernel_args=(step_size,))


def _picard_stat(info, step_size, options):
    """2^-(residual / (tol sqrt(2h))): the last Picard correction relative to the epoch's noise.

    Picard Langevin is unadjusted; what the step must ensure is that the K iterations converge
    to the fixed point (ULA with step h / M), which needs beta h of order one. The statistic
    falls as h grows and is 1/2 at the target: the warmup holds the last iteration's RMS change
    at ``residual_tolerance`` (default 5%) of the noise RMS sqrt(2h).
    """
    tol = options.get("residual_tolerance", 0.05)
    relative = info.residual / (tol * jnp.sqrt(2.0 * step_size))
    stat = jnp.exp(-relative * jnp.log(2.0))
    return jnp.where(info.is_divergent, 0.0, stat)


def _picard_reject(info, step_size, options):
    # the Picard iteration has not converged at all: its last correction exceeds the noise
    return info.is_divergent | ~(info.residual <= jnp.sqrt(2.0 * step_size))


def _ula_reject(info, step_size, options):
    del step_size, options
    return info.is_divergent | ~(info.mala_acceptance >= 0.05)


def _nuts_grad_evals(info):
    # one gradient per leapfrog step (velocity Verlet reuses the last gradient)
    return info.num_integration_steps.astype(jnp.int32)


def _info_divergent(info):
    return info.is_divergent


def _constant(value):
    return lambda dim, curvature: value / curvature


def _fors_counts(name):
    return lambda info: getattr(info, name)


METHODS: dict[str, Method] = {
    # target 0.9 rather than Stan's 0.8: with the dense mass matrix of the default preconditioner,
    # 0.8 diverged and failed posteriordb's pass rule on 2 of 4 seeds of gp_pois_regr (a
    # funnel-like posterior), 0.9 passed on every seed tried
    "nuts": Method(
        name="nuts", build=None, stat_fn=_acceptance, target=0.9,
        initial_step_size=_constant(1.0), grad_evals_fn=_nuts_grad_evals,
        divergent_fn=_info_divergent,
        extra_stats=(("n_steps", lambda i: i.num_integration_steps),
                     ("tree_depth", lambda i: i.num_trajectory_expansions),
                     ("energy", lambda i: i.energy)),
        description="BlackJAX NUTS tuned by blackjax.window_adaptation (the same mass matrix "
                    "kind as the other methods' preconditioner)"),
    "mala": Method(
        name="mala", build=_build_mala, stat_fn=_acceptance, target=0.574,
        initial_step_size=lambda dim, lam: 1.0 / (lam * dim ** (1.0 / 3.0)),
        grad_evals_fn=_one_eval, divergent_fn=_info_divergent, nominal_grads_per_step=1.0,
        description="MALA (kernels.mala); staged warmup on the acceptance (target 0.574)"),
    "ula": Method(
        name="ula", build=_build_ula, stat_fn=lambda i, h, o: i.mala_acceptance, target=0.9,
        initial_step_size=lambda dim, lam: 0.5 / (lam * dim ** (1.0 / 3.0)),
        grad_evals_fn=_one_eval, acceptance_fn=lambda i: i.acceptance_rate,
        divergent_fn=_info_divergent,
        extra_stats=(("mala_acceptance", lambda i: i.mala_acceptance),), warmup_reject=_ula_reject,
        first_step_factor=1.0, nominal_grads_per_step=1.0,
        description="unadjusted Langevin (biased); step tuned so that a MALA test would accept "
                    "90%"),
    "fors": Method.from_spec(
        FORS_TUNING,
        extra_stats=(("clip_rate", lambda i: i.clip_rate), ("is_overflow", lambda i: i.is_overflow),
                     ("prox_rejected", lambda i: i.is_prox_rejected),
                     ("num_clipped", _fors_counts("num_clipped")),
                     ("num_coins", _fors_counts("num_coins"))),
        nominal_grads_per_step=5.4, draw_time=1.0,
        description="FORS-proximal (gradients only); step tuned on the estimates' RMS, "
                    "recalibrated so that the clip rate stays below clip_tolerance"),
    "rtk": Method.from_spec(
        RTK_TUNING, nominal_grads_per_step=3.0, draw_time=1.0,
        description="RTK proximal sampler, inner MALA; h tuned on the inner acceptance (0.75)"),
    "picard": Method(
        name="picard", build=_build_picard, stat_fn=_picard_stat, target=0.5,
        initial_step_size=_constant(0.5), grad_evals_fn=lambda i: i.num_grad_evals,
        acceptance_fn=lambda i: jnp.ones_like(i.residual), divergent_fn=_info_divergent,
        extra_stats=(("residual", lambda i: i.residual), ("num_rounds", lambda i: i.num_rounds)),
        warmup_reject=_picard_reject, first_step_factor=1.0, init_grad_evals=0,
        nominal_grads_per_step=22.0,
        description="Picard Langevin epochs (unadjusted); h tuned on the Picard residual"),
}
