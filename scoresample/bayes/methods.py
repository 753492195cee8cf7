"""The method table of :func:`scoresample.sample`: how each sampler is built, warmed up and
counted, and the unadjusted Langevin baseline."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from blackjax.base import build_sampling_algorithm

from scoresample.base import (KernelAPI, SamplingAlgorithm, all_finite,
                              check_callable, check_positive)

Array = jax.Array


# =============================================================================================
# Unadjusted Langevin: the baseline without a Metropolis correction.
# =============================================================================================


class ULAState(NamedTuple):
    """State of unadjusted Langevin: the position and what the next step reuses."""

    position: Array  # shape=(d,)
    logdensity: Array  # shape=()
    logdensity_grad: Array  # shape=(d,)


class ULAInfo(NamedTuple):
    """Info of one unadjusted Langevin step.

    ``acceptance_rate`` is 1 (nothing is rejected); ``mala_acceptance`` is the Metropolis-Hastings
    acceptance probability a MALA correction would have given the move (the warmup tunes on it;
    it measures the discretisation error of the step). ``num_grad_evals`` is 1.
    """

    acceptance_rate: Array
    mala_acceptance: Array
    is_divergent: Array
    num_grad_evals: Array


def _ula_init(position, logdensity_fn) -> ULAState:
    logdensity, grad = jax.value_and_grad(logdensity_fn)(position)
    return ULAState(position, logdensity, grad)


def _ula_build_kernel():
    """``kernel(rng_key, state, logdensity_fn, step_size)`` of unadjusted Langevin.

    x' = x + h grad log pi(x) + sqrt(2 h) xi,  xi ~ N(0, I)   (Roberts and Tweedie 1996; no MH test).
    """

    def kernel(rng_key, state: ULAState, logdensity_fn, step_size):
        x, g = state.position, state.logdensity_grad
        noise = jax.random.normal(rng_key, x.shape, x.dtype)
        new_x = x + step_size * g + jnp.sqrt(2.0 * step_size) * noise
        new_logdensity, new_g = jax.value_and_grad(logdensity_fn)(new_x)
        new_state = ULAState(new_x, new_logdensity, new_g)
        # log pi(x') + log q(x | x') - log pi(x) - log q(x' | x), for the diagnostic only
        fwd = jnp.sum((new_x - x - step_size * g) ** 2)
        bwd = jnp.sum((x - new_x - step_size * new_g) ** 2)
        log_ratio = new_logdensity - state.logdensity - (bwd - fwd) / (4.0 * step_size)
        is_divergent = ~(all_finite(new_state) & jnp.isfinite(log_ratio))
        new_state = jax.tree.map(lambda a, b: jnp.where(is_divergent, b, a), new_state, state)
        proxy = jnp.where(is_divergent, 0.0, jnp.exp(jnp.minimum(log_ratio, 0.0)))
        info = ULAInfo(jnp.ones((), x.dtype), proxy.astype(x.dtype), is_divergent,
                       jnp.ones((), jnp.int32))
        return new_state, info

    return kernel


def _ula_top_level(logdensity_fn, step_size) -> SamplingAlgorithm:
    check_callable("logdensity_fn", logdensity_fn)
    if not isinstance(step_size, jax.core.Tracer):  # traced inside the warmup: checked there
        step_size = check_positive("step_size", step_size)
    kernel = _ula_build_kernel()

    return build_sampling_algorithm(kernel, _ula_init, logdensity_fn, kernel_args=(step_size,))


#: Unadjusted Langevin algorithm, ``ula(logdensity_fn, step_size) -> SamplingAlgorithm``:
#: x' = x + h grad log pi(x) + sqrt(2 h) xi. Biased for every h > 0 (the bias is O(h)); a baseline.
ula = KernelAPI(_ula_top_level, _ula_init, _ula_build_kernel)


# =============================================================================================
# The method table.
# =============================================================================================


def _one_eval(info):
    del info
    return jnp.ones((), jnp.int32)


@dataclasses.dataclass(frozen=True)
class Method:
    """How ``sample`` runs one sampler.

    Attributes:
        name: the method name.
        build: ``build(logdensity_fn, step_size, **options) -> SamplingAlgorithm`` (``init(position)``,
            ``step(rng_key, state)``); the step size may be a traced value; states have a
            ``position`` field.
        stat_fn: ``stat_fn(info, step_size, options)``, the warmup statistic of one step; it must
            increase as the step size shrinks.
        target: the value of ``stat_fn`` the step-size warmup aims at (dual averaging).
        initial_step_size: ``initial_step_size(dim, curvature)``, the first step of the warmup on
            the preconditioned scale; ``curvature`` is the largest eigenvalue of the Laplace
            Hessian of -log pi there (1 when unknown).
        grad_evals_fn: gradient evaluations executed in one step, from its info.
        acceptance_fn: the acceptance rate reported in ``sample_stats``.
        divergent_fn: whether a step met non-finite values.
        extra_stats: further ``(name, fn(info))`` reported in ``sample_stats``.
        defaults: default options passed to ``build``.
        warmup_options: ``warmup_options(options) -> options`` used during the step-size warmup
            (e.g. RTK with an unadjusted inner solver tunes with the MALA inner one).
        warmup_reject: ``warmup_reject(info, step_size, options) -> bool``: during warmup only, a
            step of an unadjusted method that this flags is undone (the chain stays). Dual averaging
            tries steps ten times its start early on; one such step of an unadjusted kernel can
            throw a chain out of the typical set for good.
        first_step_factor: dual averaging shrinks towards ``log(first_step_factor * step)`` after
            each restart (10 in Stan and BlackJAX); approximate kernels use 1.
        uses_value: whether the kernel evaluates log-density values (FORS does not).
        init_grad_evals: gradient evaluations of ``init`` (charged at every re-initialisation).
        description: one line for reports.
    """

    name: str
    build: Callable | None
    stat_fn: Callable
    target: float
    initial_step_size: Callable
    grad_evals_fn: Callable
    acceptance_fn: Callable
    divergent_fn: Callable
    extra_stats: tuple = ()
    defaults: dict = dataclasses.field(default_factory=dict)
    warmup_options: Callable = dict
    warmup_reject: Callable | None = None
    first_step_factor: float = 10.0
    uses_value: bool = True
    init_grad_evals: int = 1
    description: str = ""


def _algorithm(kernel_api, build_args: dict, kernel_args: tuple, logdensity_fn):
    """A ``SamplingAlgorithm`` from a KernelAPI's ``build_kernel`` and ``init`` (traced parameters
    are fine, unlike the top-level functions that check concrete values)."""
    kernel = kernel_api.build_kernel(**build_args)

    return build_sampling_algorithm(kernel, kernel_api.init, logdensity_fn, kernel_args=kernel_args)


class MALAInfo(NamedTuple):
    """Info of one MALA step (``blackjax.mala``'s fields plus a divergence flag and the cost)."""

    acceptance_rate: Array
    is_accepted: Array
    is_divergent: Array
    num_grad_evals: Array


def _mala_build_kernel():
    """BlackJAX's MALA (its Langevin proposal and transition energies) with the package's
    Metropolis-Hastings step, which flags a non-finite proposal as divergent.

    ``blackjax.mala`` maps a NaN log acceptance to -inf: the step is rejected, as it should be,
    but nothing reports it. Here the same proposal and ratio go through
    :func:`scoresample.kernels.proposal.metropolis_hastings`.
    """
    from blackjax.mcmc import diffusions
    from blackjax.mcmc.mala import MALAState

    from scoresample.kernels.proposal import metropolis_hastings

    def transition_energy(state, new_state, step_size):
        # -log pi(new) + |x - new - h grad(new)|^2 / (4h): blackjax.mala's transition energy
        theta = state.position - new_state.position - step_size * new_state.logdensity_grad
        return -new_state.logdensity + 0.25 / step_size * jnp.sum(theta * theta)

    def kernel(rng_key, state, logdensity_fn, step_size):
        key_move, key_mh = jax.random.split(rng_key)
        integrator = diffusions.overdamped_langevin(jax.value_and_grad(logdensity_fn))
        new_state = MALAState(*integrator(key_move, state, step_size))
        log_ratio = (transition_energy(new_state, state, step_size)
                     - transition_energy(state, new_state, step_size))
        decision = metropolis_hastings(key_mh, log_ratio, new_state, state)
        info = MALAInfo(decision.acceptance_rate, decision.is_accepted, decision.is_divergent,
                        jnp.ones((), jnp.int32))
        return decision.state, info

    return kernel


def _build_mala(logdensity_fn, step_size, **options):
    import blackjax

    if options:
        raise ValueError(f"mala takes no options, got {sorted(options)}")
    kernel = _mala_build_kernel()

    return build_sampling_algorithm(kernel, blackjax.mala.init, logdensity_fn,
                                    kernel_args=(step_size,))


def _build_ula(logdensity_fn, step_size, **options):
    if options:
        raise ValueError(f"ula takes no options, got {sorted(options)}")
    return ula(logdensity_fn, step_size)


_FORS_BUILD = ("num_prox_steps", "max_proposals", "max_poisson", "chunk_size", "prox_tolerance",
               "num_substeps")


def _build_fors(logdensity_fn, step_size, **options):
    from scoresample.kernels import fors as fors_module

    options = dict(options)
    clip = check_positive("clip", options.pop("clip", 1.0))
    if options.get("target_w_scale") is not None:
        check_positive("target_w_scale", options["target_w_scale"])
    options.pop("target_w_scale", None)
    unknown = sorted(set(options) - set(_FORS_BUILD))
    if unknown:
        raise ValueError(f"unknown fors options {unknown}; known: clip, target_w_scale, "
                         f"{', '.join(_FORS_BUILD)}")
    if options.get("max_poisson") is None:
        options["max_poisson"] = fors_module.default_max_poisson(float(clip))
    return _algorithm(fors_module.fors, options, (step_size, clip), logdensity_fn)


def _fors_stat(info, step_size, options):
    from scoresample.kernels.fors import warmup_statistic

    del step_size
    return warmup_statistic(info, options.get("clip", 1.0), options.get("target_w_scale", 0.25))


def _build_rtk(logdensity_fn, step_size, **options):
    from scoresample.kernels import rtk as rtk_module

    options = dict(options)
    build_args = {"inner": options.pop("inner", "mala"),
                  "num_inner_steps": options.pop("num_inner_steps", 3)}
    inner_step_size = options.pop("inner_step_size", None)
    friction = options.pop("friction", None)
    if inner_step_size is not None:
        inner_step_size = check_positive("inner_step_size", inner_step_size)
    if friction is not None:
        friction = check_positive("friction", friction)
    if options:
        raise ValueError(f"unknown rtk options {sorted(options)}; known: inner, num_inner_steps, "
                         "inner_step_size, friction")
    return _algorithm(rtk_module.rtk, build_args, (step_size, inner_step_size, friction),
                      logdensity_fn)


def _rtk_warmup_options(options):
    # ULD has no acceptance to tune on: tune h with the MALA inner solver, as rtk_warmup does
    options = dict(options)
    if options.get("inner", "mala") == "uld":
        options.update(inner="mala")
        options.pop("inner_step_size", None)
        options.pop("friction", None)
    return options


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
    return _algorithm(picard_module.picard_langevin, build_args, (step_size,), logdensity_fn)


def _picard_stat(info, step_size, options):
    """1 - residual / (tol sqrt(2h)): the last Picard correction relative to the epoch's noise.

    Picard Langevin is unadjusted; what the step must ensure is that the K iterations converge
    to the fixed point (ULA with step h / M), which needs beta h of order one. The statistic
    falls as h grows and equals 1 - 1/``residual_tolerance``... at the target: the warmup holds the
    last iteration's RMS change at ``residual_tolerance`` (default 5%) of the noise RMS sqrt(2h).
    """
    tol = options.get("residual_tolerance", 0.05)
    relative = info.residual / (tol * jnp.sqrt(2.0 * step_size))
    stat = jnp.exp(-relative * jnp.log(2.0))  # 1/2 at the tolerance
    return jnp.where(info.is_divergent, 0.0, stat)


def _fors_reject(info, step_size, options):
    # a step whose estimates were clipped often is far from exact: FORS is exact only up to clipping
    del step_size, options
    return info.is_divergent | info.is_overflow | ~(info.clip_rate <= 0.05)


def _picard_reject(info, step_size, options):
    # the Picard iteration has not converged at all: its last correction exceeds the noise
    return info.is_divergent | ~(info.residual <= jnp.sqrt(2.0 * step_size))


def _ula_reject(info, step_size, options):
    del step_size, options
    return info.is_divergent | ~(info.mala_acceptance >= 0.05)


def _nuts_grad_evals(info):
    # one gradient per leapfrog step (velocity Verlet reuses the last gradient)
    return info.num_integration_steps.astype(jnp.int32)


def _acceptance(info, *unused):
    rate = info.acceptance_rate
    return jnp.where(jnp.isfinite(rate), rate, 0.0)


def _info_divergent(info):
    return info.is_divergent


def _constant(value):
    return lambda dim, curvature: value / curvature


METHODS: dict[str, Method] = {
    "nuts": Method(
        name="nuts", build=None, stat_fn=_acceptance, target=0.8,
        initial_step_size=_constant(1.0), grad_evals_fn=_nuts_grad_evals,
        acceptance_fn=_acceptance, divergent_fn=_info_divergent,
        extra_stats=(("n_steps", lambda i: i.num_integration_steps),
                     ("tree_depth", lambda i: i.num_trajectory_expansions),
                     ("energy", lambda i: i.energy)),
        description="BlackJAX NUTS tuned by blackjax.window_adaptation (diagonal mass matrix)"),
    "mala": Method(
        name="mala", build=_build_mala, stat_fn=_acceptance, target=0.574,
        initial_step_size=lambda dim, lam: 1.0 / (lam * dim ** (1.0 / 3.0)),
        grad_evals_fn=_one_eval, acceptance_fn=_acceptance, divergent_fn=_info_divergent,
        description="MALA (BlackJAX's proposal; the package's MH step); staged warmup on the "
                    "acceptance (target 0.574)"),
    "ula": Method(
        name="ula", build=_build_ula, stat_fn=lambda i, h, o: i.mala_acceptance, target=0.9,
        initial_step_size=lambda dim, lam: 0.5 / (lam * dim ** (1.0 / 3.0)),
        grad_evals_fn=_one_eval, acceptance_fn=lambda i: i.acceptance_rate, divergent_fn=_info_divergent,
        extra_stats=(("mala_acceptance", lambda i: i.mala_acceptance),), warmup_reject=_ula_reject,
        first_step_factor=1.0,
        description="unadjusted Langevin (biased); step tuned so that a MALA test would accept 90%"),
    "fors": Method(
        name="fors", build=_build_fors, stat_fn=_fors_stat, target=0.5,
        initial_step_size=lambda dim, lam: 1.0 / (lam * math.sqrt(dim)),
        grad_evals_fn=lambda i: i.num_grad_evals,
        acceptance_fn=_acceptance, divergent_fn=lambda i: i.is_divergent | i.is_overflow,
        extra_stats=(("clip_rate", lambda i: i.clip_rate), ("is_overflow", lambda i: i.is_overflow),
                     ("prox_rejected", lambda i: i.is_prox_rejected)),
        warmup_reject=_fors_reject, first_step_factor=1.0, uses_value=False, init_grad_evals=0,
        description="FORS-proximal (gradients only); step tuned on the estimates' RMS "
                    "(kernels.fors.warmup_statistic)"),
    "rtk": Method(
        name="rtk", build=_build_rtk, stat_fn=_acceptance, target=0.75,
        initial_step_size=_constant(0.5), grad_evals_fn=lambda i: i.num_grad_evals,
        acceptance_fn=_acceptance, divergent_fn=_info_divergent,
        warmup_options=_rtk_warmup_options,
        description="RTK proximal sampler, inner MALA; h tuned on the inner acceptance (0.75)"),
    "picard": Method(
        name="picard", build=_build_picard, stat_fn=_picard_stat, target=0.5,
        initial_step_size=_constant(0.5), grad_evals_fn=lambda i: i.num_grad_evals,
        acceptance_fn=lambda i: jnp.ones_like(i.residual), divergent_fn=_info_divergent,
        extra_stats=(("residual", lambda i: i.residual), ("num_rounds", lambda i: i.num_rounds)),
        warmup_reject=_picard_reject, first_step_factor=1.0,
        init_grad_evals=0,
        description="Picard Langevin epochs (unadjusted); h tuned on the Picard residual"),
}
