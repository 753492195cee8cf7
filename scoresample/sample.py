"""``scoresample.sample``: a Bayesian model in, an ArviZ ``xarray.DataTree`` of draws out.

One entry point runs every log-density sampler of the package, and the BlackJAX baselines beside
them, on the same model with the same warmup, so that their costs can be compared honestly:

    dt = scoresample.sample(rng_key, model, method="fors", num_chains=4,
                            num_warmup=1000, num_draws=1000)

``model`` is one of

- a log-density callable on an array or a pytree (``init`` gives a position; pytrees are flattened
  with ``jax.flatten_util.ravel_pytree``);
- a NumPyro model function (``model_args``/``model_kwargs`` are its arguments): it is turned into the
  log-density of its unconstrained latent sites by ``numpyro.infer.util.initialize_model``, and draws
  are mapped back to the constrained sites, with their names, by its ``postprocess_fn``;
- an object with ``logdensity_fn`` and ``initial_position()`` (a :class:`scoresample.posteriordb.Posterior`),
  reported through its ``constrain`` map when it has one.

Methods (:data:`METHODS`): ``"fors"``, ``"rtk"``, ``"picard"`` (this package's kernels) and the
baselines ``"nuts"`` (``blackjax.nuts`` tuned by ``blackjax.window_adaptation``), ``"mala"``
(``blackjax.mala``) and ``"ula"`` (unadjusted Langevin, below).

Warmup (every method but NUTS, which keeps BlackJAX's own window adaptation as the reference):

1. *Gradient-only pre-optimisation.* L-BFGS on ``-logdensity`` whose line search looks only at the
   directional derivative (it brackets a zero of ``phi'(a) = <grad f(x + a p), p>`` and stops at
   the curvature condition ``|phi'(a)| <= c2 |phi'(0)|``), so no log-density value is ever used,
   as FORS requires. From a start far out in the tails (a start at 0 on a regression with many
   observations) small Langevin steps do not reach the typical set in a thousand steps; an
   optimiser does, in a few dozen gradient evaluations.
2. *Laplace start.* At the optimum the Hessian (forward-over-reverse differentiation of the
   gradient, counted as two gradient evaluations per column) gives the Laplace covariance
   ``Sigma = (-H)^-1``. Its diagonal is the first preconditioner, and every chain starts from its
   own draw of ``N(x*, Sigma)``: dispersed, in the typical set of a near-Gaussian posterior.
3. *Staged windows* (as Stan's window adaptation): a fast window tuning the step size by dual
   averaging on the method's statistic, slow windows of doubling length estimating the diagonal
   variance (pooled over chains, shrunk towards the previous estimate), and a final fast window.
   The preconditioner is an affine change of variables ``x = m + D z`` applied to the
   log-density, so it works for every kernel unchanged; the kernels run on ``z``.

Sampling runs all chains vmapped in one compiled scan per chunk of draws. The key of draw ``i`` of
chain ``c`` is ``fold_in(fold_in(sample_key, c), i)``, so draws do not depend on the chunking; with
``output=PATH`` every chunk is written to disk as it is made and ``resume=True`` continues a killed
run to the very draws an uninterrupted run gives.

Non-finite values met inside a run are contained: a step that yields a non-finite position keeps
the old state and is flagged ``diverging``; a NaN is never returned as a draw. So is a step that
lands more than :data:`RUNAWAY_LIMIT` preconditioned standard deviations away (a runaway chain).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from scoresample.base import (SamplingAlgorithm, all_finite, check_callable, check_in, check_int,
                              check_key)

__all__ = ["sample", "METHODS", "Method", "ula", "ULAState", "ULAInfo", "prepare_model",
           "PreparedModel", "gradient_only_lbfgs", "window_schedule"]

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
    kernel = _ula_build_kernel()

    def init_fn(position, rng_key=None):
        del rng_key
        return _ula_init(position, logdensity_fn)

    def step_fn(rng_key, state):
        return kernel(rng_key, state, logdensity_fn, step_size)

    return SamplingAlgorithm(init_fn, step_fn)


from scoresample.base import KernelAPI  # noqa: E402

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


def _algorithm(kernel_api, build_args: dict, kernel_args: tuple, logdensity_fn, init_kwargs=None):
    """A ``SamplingAlgorithm`` from a KernelAPI's ``build_kernel`` and ``init`` (traced parameters
    are fine, unlike the top-level functions that check concrete values)."""
    kernel = kernel_api.build_kernel(**build_args)

    def init_fn(position, rng_key=None):
        del rng_key
        return kernel_api.init(position, logdensity_fn, **(init_kwargs or {}))

    def step_fn(rng_key, state):
        return kernel(rng_key, state, logdensity_fn, *kernel_args)

    return SamplingAlgorithm(init_fn, step_fn)


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

    def init_fn(position, rng_key=None):
        del rng_key
        return blackjax.mala.init(position, logdensity_fn)

    def step_fn(rng_key, state):
        return kernel(rng_key, state, logdensity_fn, step_size)

    return SamplingAlgorithm(init_fn, step_fn)


def _build_ula(logdensity_fn, step_size, **options):
    if options:
        raise ValueError(f"ula takes no options, got {sorted(options)}")
    return ula(logdensity_fn, step_size)


_FORS_BUILD = ("num_prox_steps", "max_proposals", "max_poisson", "chunk_size")


def _build_fors(logdensity_fn, step_size, **options):
    from scoresample.kernels import fors as fors_module

    options = dict(options)
    clip = options.pop("clip", 1.0)
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
        extra_stats=(("clip_rate", lambda i: i.clip_rate), ("is_overflow", lambda i: i.is_overflow)),
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


# =============================================================================================
# Models: a log-density on R^d, starting points, and the map of draws to reported variables.
# =============================================================================================


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedModel:
    """A model reduced to what the samplers need.

    ``logdensity_fn(x)`` on flat unconstrained ``x`` of shape (dim,); ``init_fn(rng_key)`` a start for
    one chain; ``to_output(x)`` the reported variables (dict name -> array) of one flat draw;
    ``dims`` the dimension names of each reported variable; ``kind`` and ``description`` for reports.
    """

    logdensity_fn: Callable
    dim: int
    init_fn: Callable
    to_output: Callable
    dims: dict
    kind: str
    description: str
    unconstrained: Callable | None = None  # x -> dict of unconstrained variables, or None
    unconstrained_dims: dict = dataclasses.field(default_factory=dict)


def _is_numpyro_model(model, model_args, model_kwargs) -> bool:
    try:
        import numpyro
    except ImportError:  # pragma: no cover - numpyro is a dependency
        return False
    try:
        with numpyro.handlers.block():
            trace = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(
                *model_args, **model_kwargs)
    except Exception:
        return False
    return any(site["type"] == "sample" and not site.get("is_observed", False)
               for site in trace.values())


def _leaf_names(tree) -> list[str]:
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    names = []
    for path, _ in paths:
        if not path:
            names.append("x")
            continue
        parts = []
        for entry in path:
            if isinstance(entry, jax.tree_util.DictKey):
                parts.append(str(entry.key))
            elif isinstance(entry, jax.tree_util.GetAttrKey):
                parts.append(str(entry.name))
            elif isinstance(entry, jax.tree_util.SequenceKey):
                parts.append(f"x{entry.idx}" if not parts else str(entry.idx))
            else:
                parts.append(str(entry).strip("[]."))
        names.append(".".join(parts))
    return names


def _default_dims(example: dict) -> dict:
    return {name: [f"{name}_dim_{i}" for i in range(np.ndim(value))]
            for name, value in example.items()}


def prepare_model(rng_key, model, *, model_args=(), model_kwargs=None, init=None) -> PreparedModel:
    """Reduce ``model`` (log-density callable, NumPyro model, or posterior object) to a flat model.

    See :func:`sample` for what each kind of model and ``init`` may be.
    """
    model_kwargs = {} if model_kwargs is None else dict(model_kwargs)
    if not isinstance(model_args, (tuple, list)):
        raise TypeError(f"model_args must be a tuple, got {type(model_args).__name__}")

    # a posterior object (scoresample.posteriordb.Posterior or anything shaped like it)
    if hasattr(model, "logdensity_fn") and callable(getattr(model, "logdensity_fn")):
        if model_args or model_kwargs:
            raise ValueError("model_args/model_kwargs are only for NumPyro models")
        logdensity = model.logdensity_fn
        if init is None:
            if not hasattr(model, "initial_position"):
                raise ValueError("init is required: the model object has no initial_position()")
            init = model.initial_position()
        start_flat, unravel = ravel_pytree(init)
        flat_logdensity = lambda x: logdensity(unravel(x))  # noqa: E731
        if hasattr(model, "constrain"):
            def to_output(x):
                return dict(model.constrain(unravel(x)))
        else:
            names = _leaf_names(init)

            def to_output(x):
                return dict(zip(names, jax.tree_util.tree_leaves(unravel(x))))
        start = jnp.asarray(start_flat)
        example = jax.eval_shape(to_output, start)
        _check_start(flat_logdensity, start)
        unconstrained = (lambda x: {"z": x}) if hasattr(model, "constrain") else None
        return PreparedModel(flat_logdensity, int(start.shape[0]), lambda key: start, to_output,
                             _default_dims(example), "posterior",
                             str(getattr(model, "name", type(model).__name__)), unconstrained,
                             {"z": ["z_dim_0"]})

    check_callable("model", model)
    if _is_numpyro_model(model, model_args, model_kwargs):
        return _prepare_numpyro(rng_key, model, model_args, model_kwargs, init)
    if model_args or model_kwargs:
        raise ValueError("model_args/model_kwargs were given but model is not a NumPyro model "
                         "(tracing it found no latent sample site)")
    if init is None:
        raise ValueError("init is required when model is a log-density callable: pass one "
                         "position (array or pytree) or a function rng_key -> position")
    if callable(init):
        example = init(jax.random.key(0) if not _raw_key(rng_key) else jax.random.PRNGKey(0))
        start_flat, unravel = ravel_pytree(example)

        def init_fn(key):
            return ravel_pytree(init(key))[0]
    else:
        start_flat, unravel = ravel_pytree(init)
        start_flat = jnp.asarray(start_flat)

        def init_fn(key):
            del key
            return start_flat
    if start_flat.size == 0:
        raise ValueError("init has no entries: the model has dimension 0")
    if not jnp.issubdtype(start_flat.dtype, jnp.floating):
        raise TypeError(f"init must hold floating-point values, got dtype {start_flat.dtype}")
    flat_logdensity = lambda x: model(unravel(x))  # noqa: E731
    out = jax.eval_shape(flat_logdensity, start_flat)
    if out.shape != ():
        raise ValueError(f"model (the log-density) must return a scalar, returned shape {out.shape}")
    names = _leaf_names(unravel(start_flat))

    def to_output(x):
        return dict(zip(names, jax.tree_util.tree_leaves(unravel(x))))

    if not callable(init):
        _check_start(flat_logdensity, start_flat)
    example = jax.eval_shape(to_output, start_flat)
    return PreparedModel(flat_logdensity, int(start_flat.shape[0]), init_fn, to_output,
                         _default_dims(example), "logdensity", getattr(model, "__name__", "logdensity"))


def _raw_key(key) -> bool:
    return not (hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key))


def _check_start(flat_logdensity, start):
    if not bool(jnp.all(jnp.isfinite(start))):
        raise ValueError("init contains non-finite values")
    grad = jax.grad(flat_logdensity)(start)
    if not bool(jnp.all(jnp.isfinite(grad))):
        raise ValueError("init: the gradient of the log-density is not finite at the starting "
                         "position; choose another init")


def _prepare_numpyro(rng_key, model, model_args, model_kwargs, init) -> PreparedModel:
    from numpyro.infer import init_to_uniform, init_to_value
    from numpyro.infer.util import initialize_model

    if init is not None and not isinstance(init, dict):
        raise TypeError("init for a NumPyro model must be a dict of site values (constrained)")
    strategy = init_to_value(values=init) if init is not None else init_to_uniform()
    key0 = rng_key if _raw_key(rng_key) else jax.random.key_data(rng_key)
    info, potential_fn, postprocess_fn, _ = initialize_model(
        key0, model, model_args=tuple(model_args), model_kwargs=model_kwargs,
        init_strategy=strategy, dynamic_args=False)
    z0 = info.z
    start_flat, unravel = ravel_pytree(z0)

    def flat_logdensity(x):
        return -potential_fn(unravel(x))

    def init_fn(key):
        # init_to_uniform: each chain its own uniform(-2, 2) draw on the unconstrained scale,
        # as NumPyro does; a given init is used for every chain.
        if init is not None:
            return start_flat
        return jax.random.uniform(key, start_flat.shape, start_flat.dtype, -2.0, 2.0)

    def to_output(x):
        return dict(postprocess_fn(unravel(x)))

    def unconstrained(x):
        return dict(unravel(x))

    example = jax.eval_shape(to_output, start_flat)
    name = getattr(model, "__name__", "numpyro_model")
    return PreparedModel(flat_logdensity, int(start_flat.shape[0]), init_fn, to_output,
                         _default_dims(example), "numpyro", name, unconstrained,
                         _default_dims(jax.eval_shape(unconstrained, start_flat)))


# =============================================================================================
# Warmup, stage 1: gradient-only L-BFGS.
# =============================================================================================


class _LBFGSState(NamedTuple):
    x: Array  # shape=(d,)
    g: Array  # gradient of the objective at x, shape=(d,)
    s_hist: Array  # shape=(m, d)
    y_hist: Array  # shape=(m, d)
    rho_hist: Array  # shape=(m,)
    num_pairs: Array  # pairs stored so far (ring buffer), int32
    iteration: Array  # int32
    num_grad_evals: Array  # int32
    done: Array  # bool


def _two_loop(g, s_hist, y_hist, rho_hist, num_pairs, gamma0):
    """L-BFGS two-loop recursion: ``-H g`` for the inverse-Hessian estimate H of the history.

    The history is a ring buffer; entry ``j`` steps back from the newest is valid if j < num_pairs.
    """
    m = s_hist.shape[0]

    def newest_first(j):
        return (num_pairs - 1 - j) % m, j < num_pairs

    def first(j, carry):
        q, alphas = carry
        k, valid = newest_first(j)
        a = jnp.where(valid, rho_hist[k] * jnp.dot(s_hist[k], q), 0.0)
        return q - a * y_hist[k], alphas.at[j].set(a)

    q, alphas = jax.lax.fori_loop(0, m, first, (g, jnp.zeros((m,), g.dtype)))
    newest = (num_pairs - 1) % m
    sy = jnp.dot(s_hist[newest], y_hist[newest])
    yy = jnp.dot(y_hist[newest], y_hist[newest])
    gamma = jnp.where(num_pairs > 0, sy / jnp.where(yy > 0, yy, 1.0), gamma0)

    def second(i, r):
        j = m - 1 - i
        k, valid = newest_first(j)
        b = rho_hist[k] * jnp.dot(y_hist[k], r)
        return r + jnp.where(valid, alphas[j] - b, 0.0) * s_hist[k]

    return -jax.lax.fori_loop(0, m, second, gamma * q)


def gradient_only_lbfgs(grad_fn: Callable, x0, *, max_iterations: int = 500, history: int = 30,
                        max_line_search: int = 20, curvature: float = 0.5,
                        max_step: float = 10.0, gtol: float = 1e-8):
    """Minimise f from its gradient alone: L-BFGS with a derivative-only line search.

    The line search brackets a zero of ``phi'(a) = <grad f(x + a p), p>`` (doubling while the
    derivative is negative, safeguarded secant steps once a bracket is found) and stops at the
    strong-Wolfe curvature condition ``|phi'(a)| <= curvature |phi'(0)|``. Since ``phi'(a) >
    phi'(0)`` there, ``s.y > 0`` and the L-BFGS update stays positive definite. Along a line where
    ``phi`` is convex the accepted point has ``phi(a) < phi(0)`` without ever computing ``phi``.
    A non-finite gradient counts as "past the minimum" (the bracket shrinks), so infinities are
    contained. Steps are capped at ``max_step`` in sup-norm.

    Args:
        grad_fn: gradient of the objective f (to minimise), one point (d,) -> (d,).
        x0: start, shape (d,).

    Returns:
        ``(x, num_grad_evals, num_iterations)``: the last point, the gradient evaluations executed and
        the iterations made.

    Example:
        >>> x, n, it = gradient_only_lbfgs(jax.grad(lambda x: jnp.sum((x - 3.0) ** 2)), jnp.zeros(2))
    """
    x0 = jnp.asarray(x0)
    d = x0.shape[0]
    dtype = x0.dtype
    g0 = grad_fn(x0)
    tiny = jnp.finfo(dtype).tiny

    def converged(g, x):
        return jnp.max(jnp.abs(g)) <= gtol * jnp.maximum(1.0, jnp.max(jnp.abs(x)))

    state = _LBFGSState(x0, g0, jnp.zeros((history, d), dtype), jnp.zeros((history, d), dtype),
                        jnp.zeros((history,), dtype), jnp.zeros((), jnp.int32),
                        jnp.zeros((), jnp.int32), jnp.ones((), jnp.int32),
                        ~jnp.all(jnp.isfinite(g0)) | converged(g0, x0))

    def line_search(x, p, d0):
        a_max = max_step / jnp.maximum(jnp.max(jnp.abs(p)), tiny)
        # (a, lo, d_lo, g_lo, hi, d_hi, found, a_ok, g_ok, n)
        init = (jnp.minimum(1.0, a_max).astype(dtype), jnp.zeros((), dtype), d0, jnp.zeros_like(x),
                jnp.full((), jnp.inf, dtype), jnp.full((), jnp.nan, dtype), jnp.zeros((), bool),
                jnp.zeros((), dtype), jnp.zeros_like(x), jnp.zeros((), jnp.int32))

        def cond(c):
            return (~c[6]) & (c[9] < max_line_search)

        def body(c):
            a, lo, d_lo, g_lo, hi, d_hi, found, a_ok, g_ok, n = c
            g_a = grad_fn(x + a * p)
            finite = jnp.all(jnp.isfinite(g_a))
            d_a = jnp.where(finite, jnp.dot(g_a, p), jnp.nan)
            ok = finite & (jnp.abs(d_a) <= curvature * jnp.abs(d0))
            at_cap = a >= a_max * (1 - 1e-12)
            # still descending at the cap: take the capped step (a trust-region step)
            ok = ok | (finite & (d_a < 0) & at_cap)
            is_past = (~finite) | (d_a > 0)
            new_lo = jnp.where(~ok & ~is_past, a, lo)
            new_d_lo = jnp.where(~ok & ~is_past, d_a, d_lo)
            new_g_lo = jnp.where(~ok & ~is_past, g_a, g_lo)
            new_hi = jnp.where(~ok & is_past, a, hi)
            new_d_hi = jnp.where(~ok & is_past, d_a, d_hi)
            bracketed = jnp.isfinite(new_hi)
            width = new_hi - new_lo
            secant = new_lo - new_d_lo * width / (new_d_hi - new_d_lo)
            secant = jnp.where(jnp.isfinite(secant), secant, new_lo + 0.5 * width)
            secant = jnp.clip(secant, new_lo + 0.1 * width, new_hi - 0.1 * width)
            next_a = jnp.where(bracketed, secant, jnp.minimum(2.0 * a, a_max))
            return (next_a, new_lo, new_d_lo, new_g_lo, new_hi, new_d_hi, ok,
                    jnp.where(ok, a, a_ok), jnp.where(ok, g_a, g_ok), n + 1)

        out = jax.lax.while_loop(cond, body, init)
        _, lo, _, g_lo, _, _, found, a_ok, g_ok, n = out
        # no point met the curvature condition: fall back on the last descending point, if any
        a_new = jnp.where(found, a_ok, lo)
        g_new = jnp.where(found, g_ok, g_lo)
        return a_new, g_new, n, found | (lo > 0)

    def cond(st):
        return (~st.done) & (st.iteration < max_iterations)

    def body(st):
        gamma0 = 1.0 / jnp.maximum(jnp.max(jnp.abs(st.g)), tiny)
        p = _two_loop(st.g, st.s_hist, st.y_hist, st.rho_hist, st.num_pairs, gamma0)
        d0 = jnp.dot(st.g, p)
        bad = ~(jnp.isfinite(d0) & (d0 < 0))
        # not a descent direction: restart from steepest descent and forget the history
        p = jnp.where(bad, -gamma0 * st.g, p)
        d0 = jnp.where(bad, -gamma0 * jnp.dot(st.g, st.g), d0)
        num_pairs = jnp.where(bad, 0, st.num_pairs)
        a, g_new, n, moved = line_search(st.x, p, d0)
        s = a * p
        x_new = jnp.where(moved, st.x + s, st.x)
        g_new = jnp.where(moved, g_new, st.g)
        y = g_new - st.g
        sy = jnp.dot(s, y)
        keep = moved & (sy > 1e-10 * jnp.sqrt(jnp.dot(s, s) * jnp.dot(y, y)))
        k = num_pairs % history
        s_hist = jnp.where(keep, st.s_hist.at[k].set(s), st.s_hist)
        y_hist = jnp.where(keep, st.y_hist.at[k].set(y), st.y_hist)
        rho_hist = jnp.where(keep, st.rho_hist.at[k].set(1.0 / jnp.where(keep, sy, 1.0)),
                             st.rho_hist)
        num_pairs = jnp.where(keep, num_pairs + 1, num_pairs)
        tiny_step = jnp.max(jnp.abs(s)) <= 1e-12 * jnp.maximum(1.0, jnp.max(jnp.abs(st.x)))
        done = (~moved) | converged(g_new, x_new) | (tiny_step & ~bad)
        return _LBFGSState(x_new, g_new, s_hist, y_hist, rho_hist, num_pairs, st.iteration + 1,
                           st.num_grad_evals + n, done)

    final = jax.lax.while_loop(cond, body, state)
    return final.x, final.num_grad_evals, final.iteration


# =============================================================================================
# Warmup, stage 2: Laplace approximation at the optimum.
# =============================================================================================


class _Laplace(NamedTuple):
    precision: Array  # -H at the optimum, symmetrised, shape=(d, d) (NaN when skipped)
    covariance: Array  # (-H)^-1, shape=(d, d) (a diagonal fallback when -H is not positive definite)
    chol_precision: Array  # Cholesky factor of -H, shape=(d, d) (identity when not usable)
    is_ok: Array  # bool: -H is positive definite and everything is finite
    num_grad_evals: Array  # int32


def _laplace(grad_logdensity, x, max_dim: int) -> _Laplace:
    d = x.shape[0]
    dtype = x.dtype
    eye = jnp.eye(d, dtype=dtype)
    if d > max_dim:
        return _Laplace(jnp.full((d, d), jnp.nan, dtype), eye, eye, jnp.zeros((), bool),
                        jnp.zeros((), jnp.int32))
    hess = jax.jacfwd(grad_logdensity)(x)
    precision = -0.5 * (hess + hess.T)
    chol = jnp.linalg.cholesky(precision)
    is_ok = jnp.all(jnp.isfinite(chol))
    chol = jnp.where(is_ok, chol, eye)
    inv_chol = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)
    covariance = inv_chol.T @ inv_chol
    diag = jnp.diagonal(precision)
    fallback = jnp.where(jnp.isfinite(diag) & (diag > 0), 1.0 / jnp.where(diag > 0, diag, 1.0), 1.0)
    is_ok = is_ok & jnp.all(jnp.isfinite(covariance))
    covariance = jnp.where(is_ok, covariance, jnp.diag(fallback))
    return _Laplace(precision, covariance, chol, is_ok, jnp.asarray(2 * d, jnp.int32))


def _laplace_draw(rng_key, x, lap: _Laplace, is_valid: Callable):
    """A start near ``N(x, (-H)^-1)``: the draw scaled by 1, 1/2, 1/4, 1/10 or 0, the first that
    ``is_valid`` accepts (finite gradient, and a finite value for kernels that use it).

    Returns the start and the evaluations spent checking.
    """
    xi = jax.random.normal(rng_key, x.shape, x.dtype)
    # x + L^-T xi ~ N(x, (L L^T)^-1)
    full = jax.scipy.linalg.solve_triangular(lap.chol_precision.T, xi, lower=False)
    diag = 0.5 * jnp.sqrt(jnp.diagonal(lap.covariance)) * xi
    offset = jnp.where(lap.is_ok, full, diag)
    chosen, found, evals = x, jnp.zeros((), bool), jnp.zeros((), jnp.int32)
    for factor in (1.0, 0.5, 0.25, 0.1):
        candidate = x + factor * offset
        ok = is_valid(candidate)
        evals = evals + jnp.where(found, 0, 1).astype(jnp.int32)
        take = ok & ~found
        chosen = jnp.where(take, candidate, chosen)
        found = found | ok
    return chosen, evals


# =============================================================================================
# Warmup, stage 3: staged windows on the preconditioned scale.
# =============================================================================================


def window_schedule(num_steps: int, *, init_buffer: int = 75, term_buffer: int = 50,
                    base_window: int = 25):
    """Stan's warmup schedule: ``(is_slow, is_window_end)`` boolean arrays of length ``num_steps``.

    A fast window of ``init_buffer`` steps (step size only), slow windows of doubling length from
    ``base_window`` that end by re-estimating the preconditioner, and a final fast window of
    ``term_buffer`` steps. Short warmups scale the buffers to 15% / 75% / 10% as Stan does.
    """
    is_slow = np.zeros(num_steps, bool)
    is_end = np.zeros(num_steps, bool)
    if num_steps < 20:
        return is_slow, is_end
    if init_buffer + base_window + term_buffer > num_steps:
        init_buffer = int(0.15 * num_steps)
        term_buffer = int(0.1 * num_steps)
        base_window = num_steps - init_buffer - term_buffer
    slow_end = num_steps - term_buffer
    start, size = init_buffer, base_window
    while start < slow_end:
        end = start + size
        if end + 2 * size > slow_end:
            end = slow_end
        is_slow[start:end] = True
        is_end[end - 1] = True
        start, size = end, 2 * size
    return is_slow, is_end


class _WarmupCarry(NamedTuple):
    states: Any  # kernel states, batched over chains
    shift: Array  # m, shape=(d,)
    scale: Array  # D, shape=(d,)
    da_state: Any  # dual averaging (shared by the chains)
    sum_x: Array  # shape=(d,)
    sum_x2: Array  # shape=(d,) (diagonal) or (d, d) (dense): sum of x x^T
    count: Array  # ()
    num_grad_evals: Array  # ()
    num_divergent: Array  # ()
    sum_z: Array  # shape=(d,): z (preconditioned) moments of the window, for its autocorrelation
    sum_z2: Array  # shape=(d,)
    sum_lag: Array  # shape=(d,): sum of z_t z_{t-1}
    num_lag: Array  # ()
    prev_z: Array  # shape=(num_chains, d)


def _to_x(shift, scale, z):
    """x = m + D z: ``scale`` is the diagonal D (d,) or a lower-triangular factor (d, d)."""
    return shift + (scale * z if scale.ndim == 1 else scale @ z)


def _to_z(shift, scale, x):
    if scale.ndim == 1:
        return (x - shift) / scale
    return jax.scipy.linalg.solve_triangular(scale, x - shift, lower=True)


def _affine(logdensity_fn, shift, scale):
    """The log-density of z where x = shift + scale z (the constant log|det D| is dropped)."""

    def logdensity_z(z):
        return logdensity_fn(_to_x(shift, scale, z))

    return logdensity_z


#: a step landing further than this many preconditioned standard deviations from the warmup's
#: centre is refused and flagged divergent (the position has run away, e.g. an approximate kernel
#: on a heavy tail); the target mass out there is negligible for any posterior with a variance
RUNAWAY_LIMIT = 1e3


def _safe_step(step, key, state, limit=None):
    """One step whose non-finite (or, with ``limit``, runaway) outcome is contained: keep the old
    state and flag it."""
    new_state, info = step(key, state)
    ok = all_finite(new_state.position)
    if limit is not None:
        ok = ok & (jnp.max(jnp.abs(new_state.position)) <= limit)
    new_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_state, state)
    return new_state, info, ~ok


# =============================================================================================
# Runners: warmup then a per-draw step on every chain.
# =============================================================================================


class _Tuned(NamedTuple):
    states: Any  # batched over chains
    params: Any  # per-chain parameters of the sampling step (pytree, leading axis = chain)
    num_grad_evals: int
    details: dict  # json-able warmup facts for the attrs


class _Runner(NamedTuple):
    method: Method
    warmup: Callable  # (rng_key, x_init (C, d)) -> _Tuned
    step: Callable  # (rng_key, state, params) -> (state, info, is_bad)
    to_x: Callable  # (state, params) -> flat x
    step_size: Callable  # params -> step size (per chain)
    template: Callable  # x_init (C, d) -> (states, params) with the structure warmup returns


def _preconditioned_curvature(precision, scale):
    """Largest eigenvalue of the Hessian of -log pi on the z scale (D^T P D), or NaN."""
    mat = jnp.diag(scale) if scale.ndim == 1 else scale
    hz = mat.T @ precision @ mat
    return jnp.max(jnp.linalg.eigvalsh(0.5 * (hz + hz.T)))


def _staged_runner(method: Method, options: dict, logdensity_fn: Callable, num_chains: int,
                   num_warmup: int, *, progress_bar: bool, preoptimize: bool, max_iterations: int,
                   laplace_max_dim: int, shrinkage: float, dense: bool) -> _Runner:
    grad_logdensity = jax.grad(logdensity_fn)
    warm_options = method.warmup_options(dict(options))

    def is_valid(x):
        # a start must have a finite gradient, and a finite value for kernels that use values
        if method.uses_value:
            value, grad = jax.value_and_grad(logdensity_fn)(x)
            return jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
        return jnp.all(jnp.isfinite(grad_logdensity(x)))

    def build(shift, scale, step_size, warm=False):
        opts = warm_options if warm else options
        return method.build(_affine(logdensity_fn, shift, scale), step_size, **dict(opts))

    def stat_of(infos, step_size):
        stat = jnp.asarray(method.stat_fn(infos, step_size, warm_options),
                           dtype=jnp.result_type(float))
        stat = jnp.where(jnp.isfinite(stat), jnp.clip(stat, 0.0, 1.0), 0.0)
        return jnp.mean(stat)

    def warmup(rng_key, x_init):
        from blackjax.adaptation.step_size import dual_averaging_adaptation

        key_start, key_win = jax.random.split(rng_key)
        d = x_init.shape[1]
        dtype = x_init.dtype
        details = {}
        t0 = time.perf_counter()

        @jax.jit
        def pre(x_init, keys):
            if max_iterations > 0:
                x_opt, n_opt, it = jax.vmap(lambda x: gradient_only_lbfgs(
                    lambda y: -grad_logdensity(y), x, max_iterations=max_iterations))(x_init)
            else:
                x_opt, n_opt = x_init, jnp.zeros((num_chains,), jnp.int32)
                it = jnp.zeros((num_chains,), jnp.int32)
            lap = jax.vmap(lambda x: _laplace(grad_logdensity, x, laplace_max_dim))(x_opt)
            starts, check_evals = jax.vmap(functools.partial(_laplace_draw, is_valid=is_valid))(
                keys, x_opt, lap)
            covariance = jnp.mean(lap.covariance, axis=0)
            precision = jnp.mean(lap.precision, axis=0)
            shift = jnp.mean(x_opt, axis=0)
            if dense:
                chol = jnp.linalg.cholesky(0.5 * (covariance + covariance.T))
                ok = jnp.all(jnp.isfinite(chol))
                scale = jnp.where(ok, chol, jnp.diag(jnp.sqrt(jnp.diagonal(covariance))))
            else:
                scale = jnp.sqrt(jnp.diagonal(covariance))
            curvature = _preconditioned_curvature(precision, scale)
            return (starts, shift, scale, curvature, n_opt, it, lap.is_ok,
                    lap.num_grad_evals + check_evals)

        if preoptimize:
            keys = jax.random.split(key_start, num_chains)
            starts, shift, scale, curvature, n_opt, it, lap_ok, lap_evals = pre(x_init, keys)
            num_evals = int(jnp.sum(n_opt)) + int(jnp.sum(lap_evals))
            curvature = float(curvature)
            details.update(preopt_iterations=[int(i) for i in it],
                           preopt_grad_evals=int(jnp.sum(n_opt)),
                           laplace_ok=[bool(b) for b in lap_ok],
                           laplace_grad_evals=int(jnp.sum(lap_evals)),
                           laplace_curvature=curvature)
        else:
            starts, num_evals, curvature = x_init, 0, float("nan")
            shift = jnp.zeros((d,), dtype)
            scale = jnp.eye(d, dtype=dtype) if dense else jnp.ones((d,), dtype)
        if not (math.isfinite(curvature) and curvature > 0):
            curvature = 1.0
        details["preopt_seconds"] = time.perf_counter() - t0

        is_slow, is_end = window_schedule(num_warmup)
        # dual averaging restarts after every window end; its average over the final fast window
        # is the step size of the run
        da_init_blackjax, da_update, da_final = dual_averaging_adaptation(method.target)

        def da_init(step_size):
            state = da_init_blackjax(step_size)
            return state._replace(mu=jnp.log(method.first_step_factor * step_size))

        update, close = _progress(num_warmup, f"warmup ({method.name})", progress_bar)
        eps0 = jnp.asarray(method.initial_step_size(d, curvature), dtype)
        to_z = jax.vmap(_to_z, in_axes=(None, None, 0))
        to_x = jax.vmap(_to_x, in_axes=(None, None, 0))

        @jax.jit
        def run(starts, shift, scale, key):
            alg0 = build(shift, scale, eps0, warm=True)
            states = jax.vmap(alg0.init)(to_z(shift, scale, starts))
            zeros = jnp.zeros((d,), dtype)
            carry = _WarmupCarry(states, shift, scale, da_init(eps0), zeros,
                                 jnp.zeros((d, d) if dense else (d,), dtype), jnp.zeros((), dtype),
                                 jnp.asarray(num_chains * method.init_grad_evals, jnp.int32),
                                 jnp.zeros((), jnp.int32), zeros, zeros, zeros,
                                 jnp.zeros((), dtype), states.position)

            def body(carry, xs):
                i, slow, end = xs
                step_size = jnp.exp(carry.da_state.log_step_size).astype(dtype)
                alg = build(carry.shift, carry.scale, step_size, warm=True)
                keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.fold_in(key, c), i))(
                    jnp.arange(num_chains))
                states, infos, is_bad = jax.vmap(functools.partial(
                    _safe_step, alg.step, limit=RUNAWAY_LIMIT))(keys, carry.states)
                if method.warmup_reject is not None:
                    undo = method.warmup_reject(infos, step_size, warm_options)
                    states = jax.tree.map(
                        lambda new, old: jnp.where(
                            jnp.reshape(undo, undo.shape + (1,) * (new.ndim - 1)), old, new),
                        states, carry.states)
                stat = stat_of(infos, step_size)
                da_state = da_update(carry.da_state, stat)
                x = to_x(carry.shift, carry.scale, states.position)
                w = jnp.where(slow, 1.0, 0.0).astype(dtype)
                sum_x = carry.sum_x + w * jnp.sum(x, axis=0)
                second = x.T @ x if dense else jnp.sum(x**2, axis=0)
                sum_x2 = carry.sum_x2 + w * second
                count = carry.count + w * num_chains
                z = states.position
                sum_z = carry.sum_z + w * jnp.sum(z, axis=0)
                sum_z2 = carry.sum_z2 + w * jnp.sum(z**2, axis=0)
                lag_w = w * jnp.where(carry.count > 0, 1.0, 0.0).astype(dtype)
                sum_lag = carry.sum_lag + lag_w * jnp.sum(z * carry.prev_z, axis=0)
                num_lag = carry.num_lag + lag_w * num_chains
                evals = carry.num_grad_evals + jnp.sum(method.grad_evals_fn(infos)).astype(jnp.int32)
                ndiv = carry.num_divergent + jnp.sum(method.divergent_fn(infos) | is_bad).astype(
                    jnp.int32)
                update(i)

                def window_end(args):
                    states, shift, scale, da_state, sum_x, sum_x2, count = args[:7]
                    sum_z, sum_z2, sum_lag, num_lag = args[7:]
                    mean = sum_x / count
                    # effective draws of the window: count / tau, with tau the AR(1) integrated
                    # autocorrelation time of the slowest coordinate; a slow chain's covariance
                    # estimate is too narrow and must not replace a better previous one
                    z_mean = sum_z / count
                    z_var = sum_z2 / count - z_mean**2
                    rho = (sum_lag / jnp.maximum(num_lag, 1.0) - z_mean**2) / jnp.where(
                        z_var > 0, z_var, 1.0)
                    rho = jnp.clip(jnp.where(jnp.isfinite(rho), rho, 1.0), 0.0, 0.999)
                    tau = jnp.max((1.0 + rho) / (1.0 - rho))
                    n_eff = count / jnp.clip(tau, 1.0, count / num_chains)
                    # pooled over chains, shrunk towards the previous estimate
                    # (a pseudo-count of ``shrinkage`` draws)
                    if dense:
                        cov = sum_x2 / count - jnp.outer(mean, mean)
                        cov = (n_eff * cov + shrinkage * scale @ scale.T) / (n_eff + shrinkage)
                        new_scale = jnp.linalg.cholesky(0.5 * (cov + cov.T))
                        good = jnp.all(jnp.isfinite(new_scale))
                        new_scale = jnp.where(good, new_scale, scale)
                    else:
                        var = jnp.maximum(sum_x2 / count - mean**2, 0.0)
                        var = (n_eff * var + shrinkage * scale**2) / (n_eff + shrinkage)
                        good = jnp.isfinite(var) & (var > 0)
                        new_scale = jnp.where(good, jnp.sqrt(var), scale)
                    new_shift = jnp.where(jnp.isfinite(mean), mean, shift)
                    x = to_x(shift, scale, states.position)
                    new_step = da_final(da_state)
                    alg_new = build(new_shift, new_scale, new_step, warm=True)
                    new_states = jax.vmap(alg_new.init)(to_z(new_shift, new_scale, x))
                    zero = jnp.zeros_like(sum_z)
                    return (new_states, new_shift, new_scale, da_init(new_step),
                            jnp.zeros_like(sum_x), jnp.zeros_like(sum_x2), jnp.zeros_like(count),
                            zero, zero, zero, jnp.zeros_like(num_lag))

                args = (states, carry.shift, carry.scale, da_state, sum_x, sum_x2, count, sum_z,
                        sum_z2, sum_lag, num_lag)
                (states, shift, scale, da_state, sum_x, sum_x2, count, sum_z, sum_z2, sum_lag,
                 num_lag) = jax.lax.cond(end, window_end, lambda a: a, args)
                evals = evals + jnp.where(end, num_chains * method.init_grad_evals, 0).astype(
                    jnp.int32)
                carry = _WarmupCarry(states, shift, scale, da_state, sum_x, sum_x2, count, evals,
                                     ndiv, sum_z, sum_z2, sum_lag, num_lag, states.position)
                return carry, (stat, step_size)

            xs = (jnp.arange(num_warmup), jnp.asarray(is_slow), jnp.asarray(is_end))
            carry, stats = jax.lax.scan(body, carry, xs)
            step_size = (da_final(carry.da_state) if num_warmup > 0 else eps0).astype(dtype)
            # the run starts from the warmup's positions with the final step size
            alg = build(carry.shift, carry.scale, step_size)
            states = jax.vmap(alg.init)(carry.states.position)
            evals = carry.num_grad_evals + num_chains * method.init_grad_evals
            return states, carry.shift, carry.scale, step_size, evals, carry.num_divergent, stats

        t1 = time.perf_counter()
        try:
            states, shift, scale, step_size, evals, ndiv, stats = run(starts, shift, scale, key_win)
            jax.block_until_ready(states)
        finally:
            close()
        details["window_seconds"] = time.perf_counter() - t1
        num_evals += int(evals)
        stats, step_sizes = np.asarray(stats[0]), np.asarray(stats[1])
        tail = slice(-min(50, len(stats)), None)
        sd = jnp.sqrt(jnp.sum(scale**2, axis=1)) if dense else scale
        details.update(warmup_divergences=int(ndiv), initial_step_size=float(eps0),
                       final_window_statistic=float(stats[tail].mean()) if len(stats) else None,
                       warmup_target=method.target, step_size=float(step_size),
                       preconditioner="dense" if dense else "diagonal",
                       preconditioner_sd_range=[float(jnp.min(sd)), float(jnp.max(sd))],
                       step_size_trace=step_sizes[:: max(1, len(step_sizes) // 20)].tolist())
        params = (jnp.broadcast_to(step_size, (num_chains,)),
                  jnp.broadcast_to(shift, (num_chains,) + shift.shape),
                  jnp.broadcast_to(scale, (num_chains,) + scale.shape))
        return _Tuned(states, params, num_evals, details)

    def step(key, state, params):
        step_size, shift, scale = params
        alg = build(shift, scale, step_size)
        return _safe_step(alg.step, key, state, limit=RUNAWAY_LIMIT)

    def to_x(state, params):
        _, shift, scale = params
        return _to_x(shift, scale, state.position)

    def template(x_init):
        num, d = x_init.shape
        scale = jnp.ones((num, d, d) if dense else (num, d), x_init.dtype)
        params = (jnp.ones((num,), x_init.dtype), jnp.zeros((num, d), x_init.dtype), scale)
        alg = build(params[1][0], params[2][0], params[0][0])
        return jax.vmap(alg.init)(x_init), params

    return _Runner(method, warmup, step, to_x, lambda params: params[0], template)


def _nuts_runner(method: Method, options: dict, logdensity_fn: Callable, num_chains: int,
                 num_warmup: int, *, progress_bar: bool, dense: bool, **unused) -> _Runner:
    import blackjax
    from blackjax.adaptation.base import get_filter_adapt_info_fn

    del unused
    options = dict(options)
    target = options.pop("target_acceptance_rate", method.target)
    if options:
        raise ValueError(f"method_options: nuts takes only target_acceptance_rate, got "
                         f"{sorted(options)}")

    def warmup(rng_key, x_init):
        t0 = time.perf_counter()
        if progress_bar:
            print(f"warmup (nuts): blackjax.window_adaptation, {num_warmup} steps x "
                  f"{num_chains} chains ...", flush=True)
        adapt = blackjax.window_adaptation(
            blackjax.nuts, logdensity_fn, target_acceptance_rate=target,
            is_mass_matrix_diagonal=not dense,
            adaptation_info_fn=get_filter_adapt_info_fn(
                info_keys={"num_integration_steps", "is_divergent"}))
        keys = jax.random.split(rng_key, num_chains)
        if num_warmup > 0:
            (res, info) = jax.jit(jax.vmap(lambda k, x: adapt.run(k, x, num_warmup)))(keys, x_init)
            step_size = res.parameters["step_size"]
            imm = res.parameters["inverse_mass_matrix"]
            positions = res.state.position
            evals = int(jnp.sum(info.info.num_integration_steps))
            ndiv = int(jnp.sum(info.info.is_divergent))
        else:
            step_size = jnp.ones((num_chains,), x_init.dtype)
            imm = (jnp.broadcast_to(jnp.eye(x_init.shape[1], dtype=x_init.dtype),
                                    (num_chains,) + (x_init.shape[1],) * 2) if dense
                   else jnp.ones_like(x_init))
            positions = x_init
            evals, ndiv = 0, 0
        states = jax.vmap(lambda x: blackjax.nuts.init(x, logdensity_fn))(positions)
        evals += num_chains  # the initial gradient of every chain
        details = {"window_seconds": time.perf_counter() - t0, "warmup_divergences": ndiv,
                   "warmup_target": target}
        return _Tuned(states, (step_size, imm), evals, details)

    def step(key, state, params):
        step_size, imm = params
        alg = blackjax.nuts(logdensity_fn, step_size, imm)
        return _safe_step(alg.step, key, state)

    def to_x(state, params):
        del params
        return state.position

    def template(x_init):
        states = jax.vmap(lambda x: blackjax.nuts.init(x, logdensity_fn))(x_init)
        num, d = x_init.shape
        imm = jnp.ones((num, d, d) if dense else (num, d), x_init.dtype)
        return states, (jnp.ones((num,), x_init.dtype), imm)

    return _Runner(method, warmup, step, to_x, lambda params: params[0], template)


# =============================================================================================
# Progress bar and the chunked sampling loop.
# =============================================================================================


def _progress(num_steps, label, enabled):
    from scoresample.driver import progress_callback

    return progress_callback(num_steps, label, enabled)


_LAST_STATS = ("energy", "tree_depth")


def _aggregate(name, values):
    """Combine the stats of the ``thin`` steps behind one kept draw (axis 0)."""
    if name in _LAST_STATS:
        return values[-1]
    if values.dtype == jnp.bool_:
        return jnp.any(values, axis=0)
    if jnp.issubdtype(values.dtype, jnp.integer):
        return jnp.sum(values, axis=0).astype(values.dtype)
    return jnp.mean(values, axis=0)


def _sampling_fn(runner: _Runner, to_output: Callable, num_chains: int, chunk: int, thin: int,
                 update):
    """A jitted ``run(states, params, chain_keys, start)`` making draws start..start+chunk-1.

    Draw i of a chain applies ``thin`` kernel steps with keys ``fold_in(chain_key, i * thin + t)``;
    the stats of those steps are combined (sums of evaluations, any divergence, mean rates).
    """
    method = runner.method

    def stats_of(info, is_bad, params):
        out = {"acceptance_rate": method.acceptance_fn(info),
               "diverging": method.divergent_fn(info) | is_bad,
               "num_grad_evals": method.grad_evals_fn(info).astype(jnp.int32),
               "step_size": runner.step_size(params)}
        for name, fn in method.extra_stats:
            out[name] = fn(info)
        return out

    def one_chain(chain_key, i, state, params):
        def one_step(state, t):
            key = jax.random.fold_in(chain_key, i * thin + t)
            new_state, info, is_bad = runner.step(key, state, params)
            return new_state, stats_of(info, is_bad, params)

        if thin == 1:
            state, stats = one_step(state, 0)
        else:
            state, stats = jax.lax.scan(one_step, state, jnp.arange(thin))
            stats = {name: _aggregate(name, value) for name, value in stats.items()}
        x = runner.to_x(state, params)
        return state, to_output(x), stats

    @jax.jit
    def run(states, params, chain_keys, start):
        def body(states, j):
            i = start + j
            states, draws, stats = jax.vmap(one_chain, in_axes=(0, None, 0, 0))(
                chain_keys, i, states, params)
            update(i)
            return states, (draws, stats)

        return jax.lax.scan(body, states, jnp.arange(chunk))

    return run


def _default_chunk(num_draws: int, num_chains: int, dim: int) -> int:
    # about 2**22 numbers per chunk in memory, never more than the run
    per_draw = max(1, num_chains * dim)
    return int(max(1, min(num_draws, 1000, 2**22 // per_draw)))


# =============================================================================================
# The public entry point.
# =============================================================================================


def sample(rng_key, model, *, method: str = "fors", num_chains: int = 4, num_warmup: int = 1000,
           num_draws: int = 1000, model_args=(), model_kwargs=None, init=None,
           progress_bar: bool = True, output=None, resume: bool = False,
           method_options: dict | None = None, preconditioner: str = "diagonal",
           preoptimize: bool = True, max_preopt_iterations: int = 500, thin: int = 1,
           chunk_size: int | None = None):
    """Sample a Bayesian model with one of the package's samplers; return an ArviZ DataTree.

    The warmup (for every method but ``"nuts"``) is: gradient-only L-BFGS to the mode region,
    a Laplace start (each chain draws from ``N(x*, (-H)^-1)``; the diagonal is the first
    preconditioner), then Stan-like windows tuning the step size by dual averaging of the method's
    statistic and the diagonal preconditioner ``x = m + D z``. ``"nuts"`` is BlackJAX NUTS tuned by
    ``blackjax.window_adaptation`` from the same starting points. See the module docstring.

    Args:
        rng_key: a JAX PRNG key.
        model: a log-density callable (array or pytree position; needs ``init``), a NumPyro model
            function, or an object with ``logdensity_fn`` and ``initial_position()`` (e.g. a
            :class:`scoresample.posteriordb.Posterior`).
        method: one of :data:`METHODS`: ``"fors"``, ``"rtk"``, ``"picard"``, ``"nuts"``,
            ``"mala"``, ``"ula"``.
        num_chains, num_warmup, num_draws: chains (vmapped), warmup steps, kept draws per chain.
        model_args, model_kwargs: arguments of a NumPyro model.
        init: log-density callables: one position (every chain starts there), or a function
            ``rng_key -> position`` (a start per chain). NumPyro models: a dict of constrained site
            values (default: NumPyro's uniform(-2, 2) on the unconstrained scale, per chain).
            Posterior objects: default ``model.initial_position()``.
        progress_bar: show tqdm bars for warmup and sampling.
        output: a folder; draws are written to it chunk by chunk as they are made.
        resume: continue the run that ``output`` holds (same key and settings) and return the
            draws an uninterrupted run gives.
        method_options: options of the kernel (``{"clip": 2.0}`` for FORS, ``{"num_inner_steps":
            5}`` for RTK, ...).
        preconditioner: ``"diagonal"`` (default) or ``"dense"``: the affine map x = m + D z uses a
            diagonal D, or a lower-triangular factor of the estimated covariance (for NUTS: a
            dense inverse mass matrix in ``blackjax.window_adaptation``).
        preoptimize: run the gradient-only L-BFGS and the Laplace start (not for ``"nuts"``).
        max_preopt_iterations: L-BFGS iterations per chain.
        thin: kernel steps per kept draw (the stats of a draw sum the evaluations of its steps).
        chunk_size: draws per compiled chunk (and per file with ``output``); fixed by the run.

    Returns:
        ``xarray.DataTree`` with groups ``posterior`` (dims chain, draw, ...; constrained sites by
        name for NumPyro models) and ``sample_stats`` (``acceptance_rate``, ``diverging``,
        ``num_grad_evals``, ``step_size`` and method extras), and attrs ``sampler``, ``settings``
        (JSON), ``num_grad_evals_warmup``, ``num_grad_evals_sampling``, ``num_grad_evals_total``,
        ``wall_time_warmup``, ``wall_time_sampling``, ``wall_time_total`` (seconds).

    Example:
        >>> import jax, jax.numpy as jnp, scoresample
        >>> dt = scoresample.sample(jax.random.key(0), lambda x: -0.5 * jnp.sum(x**2),
        ...                         init=jnp.zeros(3), method="mala", num_draws=200)
        >>> dt.posterior["x"].shape
        (4, 200, 3)
    """
    rng_key = check_key("rng_key", rng_key)
    check_in("method", method, METHODS)
    num_chains = check_int("num_chains", num_chains)
    num_warmup = check_int("num_warmup", num_warmup, minimum=0)
    num_draws = check_int("num_draws", num_draws)
    thin = check_int("thin", thin)
    max_preopt_iterations = check_int("max_preopt_iterations", max_preopt_iterations, minimum=0)
    if not isinstance(progress_bar, (bool, np.bool_)):
        raise TypeError(f"progress_bar must be a bool, got {progress_bar!r}")
    if not isinstance(resume, (bool, np.bool_)):
        raise TypeError(f"resume must be a bool, got {resume!r}")
    if resume and output is None:
        raise ValueError("resume=True needs output=PATH (the folder of the run to continue)")
    if method_options is not None and not isinstance(method_options, dict):
        raise TypeError(f"method_options must be a dict, got {type(method_options).__name__}")
    options = {**METHODS[method].defaults, **(method_options or {})}
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size)
    check_in("preconditioner", preconditioner, ("diagonal", "dense"))
    spec = METHODS[method]
    if spec.build is None and method != "nuts":  # pragma: no cover - table invariant
        raise ValueError(f"method {method!r} has no builder")

    t_start = time.perf_counter()
    key_model, key_init, key_warmup, key_sample = jax.random.split(rng_key, 4)
    prepared = prepare_model(key_model, model, model_args=model_args, model_kwargs=model_kwargs,
                             init=init)
    chunk = chunk_size or _default_chunk(num_draws, num_chains, prepared.dim)

    # check the options before anything is compiled: build once on the abstract log-density
    if method != "nuts":
        try:
            jax.eval_shape(lambda x: spec.build(prepared.logdensity_fn, 0.1, **dict(options)).init(x),
                           jnp.zeros((prepared.dim,)))
        except (TypeError, ValueError) as err:
            raise type(err)(f"method_options for {method!r}: {err}") from err

    common = dict(progress_bar=bool(progress_bar), preoptimize=bool(preoptimize),
                  max_iterations=max_preopt_iterations, laplace_max_dim=512, shrinkage=10.0,
                  dense=preconditioner == "dense")
    make = _nuts_runner if method == "nuts" else _staged_runner
    runner = make(spec, options, prepared.logdensity_fn, num_chains, num_warmup, **common)

    settings = {"method": method, "num_chains": num_chains, "num_warmup": num_warmup,
                "num_draws": num_draws, "method_options": _jsonable(options),
                "preoptimize": bool(preoptimize) and method != "nuts",
                "max_preopt_iterations": max_preopt_iterations, "chunk_size": chunk,
                "preconditioner": preconditioner, "thin": thin,
                "model": prepared.description, "model_kind": prepared.kind, "dim": prepared.dim,
                "warmup_statistic_target": spec.target,
                "key": np.asarray(jax.random.key_data(rng_key) if not _raw_key(rng_key)
                                  else rng_key).tolist()}

    run_store = None
    if output is not None:
        run_store = _RunStore(output, settings, resume=bool(resume))

    # ---- warmup (or its saved result) ----
    t_warm = time.perf_counter()
    x_init = jax.vmap(prepared.init_fn)(jax.random.split(key_init, num_chains))
    tuned = run_store.load_warmup() if run_store is not None else None
    if tuned is None:
        tuned = runner.warmup(key_warmup, x_init)
        warm_time = time.perf_counter() - t_warm
        tuned.details["wall_time_warmup"] = warm_time
        if run_store is not None:
            run_store.save_warmup(tuned)
    else:
        tuned = _restore_tuned(runner, x_init, tuned)
        warm_time = float(tuned.details.get("wall_time_warmup", 0.0))
    tuned.details["wall_time_warmup"] = warm_time

    # ---- sampling, chunk by chunk ----
    chain_keys = jax.vmap(lambda c: jax.random.fold_in(key_sample, c))(jnp.arange(num_chains))
    update, close = _progress(num_draws, f"sampling ({method})", bool(progress_bar))
    def outputs(x):
        # one flat dict "group::variable" so that chunks stream as plain arrays
        out = {f"posterior::{k}": v for k, v in prepared.to_output(x).items()}
        if prepared.unconstrained is not None:
            out.update({f"unconstrained_posterior::{k}": v
                        for k, v in prepared.unconstrained(x).items()})
        return out

    run_full = _sampling_fn(runner, outputs, num_chains, chunk, thin, update)
    last = num_draws % chunk
    run_last = _sampling_fn(runner, outputs, num_chains, last, thin, update) if last else None

    states, params = tuned.states, tuned.params
    draws_chunks, stats_chunks = [], []
    start = 0
    sample_time = 0.0
    compile_time = 0.0
    if run_store is not None:
        restored = run_store.load_chunks(jax.eval_shape(runner.template, x_init)[0])
        if restored is not None:
            states, draws_chunks, stats_chunks, start, sample_time = restored
    compiled = {}
    try:
        while start < num_draws:
            length = min(chunk, num_draws - start)
            fn = run_full if length == chunk else run_last
            if length not in compiled:
                t_c = time.perf_counter()
                compiled[length] = fn.lower(states, params, chain_keys, jnp.asarray(start)).compile()
                compile_time += time.perf_counter() - t_c
            t_s = time.perf_counter()
            states, (draws, stats) = compiled[length](states, params, chain_keys, jnp.asarray(start))
            jax.block_until_ready((states, draws, stats))
            sample_time += time.perf_counter() - t_s
            draws = jax.tree.map(lambda a: np.swapaxes(np.asarray(a), 0, 1), draws)
            stats = jax.tree.map(lambda a: np.swapaxes(np.asarray(a), 0, 1), stats)
            draws_chunks.append(draws)
            stats_chunks.append(stats)
            start += length
            if run_store is not None:
                run_store.save_chunk(start, states, draws, stats, sample_time)
    finally:
        close()

    groups = {}
    for key in draws_chunks[0]:
        group, name = key.split("::", 1)
        groups.setdefault(group, {})[name] = np.concatenate([c[key] for c in draws_chunks], axis=1)
    sample_stats = {k: np.concatenate([c[k] for c in stats_chunks], axis=1)
                    for k in stats_chunks[0]}
    sampling_evals = int(np.sum(sample_stats["num_grad_evals"], dtype=np.int64))
    total_time = time.perf_counter() - t_start
    attrs = {
        "sampler": method,
        "sampler_description": spec.description,
        "settings": json.dumps(settings),
        "warmup_details": json.dumps(_jsonable(tuned.details)),
        "num_grad_evals_warmup": int(tuned.num_grad_evals),
        "num_grad_evals_sampling": sampling_evals,
        "num_grad_evals_total": int(tuned.num_grad_evals) + sampling_evals,
        "wall_time_warmup": float(warm_time),
        "wall_time_sampling": float(sample_time),
        "wall_time_compile": float(compile_time),
        "wall_time_total": float(total_time),
        "num_divergent": int(np.sum(sample_stats["diverging"])),
        "model": prepared.description,
        "inference_library": "scoresample",
    }
    from scoresample import __version__

    attrs["inference_library_version"] = __version__
    dims = {"posterior": prepared.dims, "unconstrained_posterior": prepared.unconstrained_dims}
    dt = _build_datatree(groups, sample_stats, dims, attrs)
    if run_store is not None:
        run_store.finish(dt)
    return dt


def _restore_tuned(runner, x_init, saved):
    """Rebuild a warmup result saved by :class:`_RunStore` on the structure of a fresh init."""
    template = jax.eval_shape(runner.template, x_init)
    states = jax.tree.unflatten(jax.tree.structure(template[0]), saved["states"])
    params = jax.tree.unflatten(jax.tree.structure(template[1]), saved["params"])
    return _Tuned(states, params, int(saved["num_grad_evals"]), dict(saved["details"]))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, (np.ndarray, jax.Array)):
        return np.asarray(obj).tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def _build_datatree(groups: dict, sample_stats: dict, dims: dict, attrs: dict):
    import arviz_base

    data = dict(groups)
    data["sample_stats"] = sample_stats
    all_dims = {}
    for group, variables in groups.items():
        all_dims.update({k: v for k, v in dims.get(group, {}).items() if k in variables})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dt = arviz_base.from_dict(data, dims=all_dims)
    dt.attrs.update(attrs)
    for group in data:
        dt[group].attrs.update({k: attrs[k] for k in ("sampler", "inference_library",
                                                       "inference_library_version")})
    return dt


# =============================================================================================
# Streaming to disk and resuming.
# =============================================================================================


class _RunStore:
    """A run folder: ``run.json`` (settings), ``warmup.nc``, ``chunk_XXXXXXXX.nc`` per chunk.

    Every file is written to a temporary name and renamed, so a killed run leaves only whole files.
    A chunk file holds the chunk's draws and sample stats and the chains' kernel states after it,
    so a resumed run continues from exactly where the killed one stopped; the per-draw keys
    (``fold_in`` of the chain key with the draw index) make its draws those of an uninterrupted run.
    The finished run is also written whole to ``result.nc`` (read it with :func:`load_run`).
    """

    def __init__(self, path, settings: dict, *, resume: bool):
        self.path = Path(path).expanduser()
        self.settings = _jsonable(settings)
        meta = self.path / "run.json"
        if meta.exists():
            if not resume:
                raise FileExistsError(f"output {str(self.path)!r} already holds a run; pass "
                                      "resume=True to continue it or choose another folder")
            saved = json.loads(meta.read_text())
            if saved != self.settings:
                diff = sorted(k for k in set(saved) | set(self.settings)
                              if saved.get(k) != self.settings.get(k))
                raise ValueError(f"resume: the run in {str(self.path)!r} was made with other "
                                 f"settings (differing: {diff})")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self._atomic_write_text(meta, json.dumps(self.settings, indent=1))

    @staticmethod
    def _atomic_write_text(path: Path, text: str):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    @staticmethod
    def _write_dataset(path: Path, data: dict, attrs: dict):
        import xarray as xr

        from scoresample.diagnostics.datatree import write_dataset

        variables = {}
        for name, value in data.items():
            value = np.asarray(value)
            variables[name] = (tuple(f"{name}_{i}" for i in range(value.ndim)), value)
        tmp = path.with_name(path.name + ".tmp")
        write_dataset(xr.Dataset(variables, attrs=attrs), tmp)
        os.replace(tmp, path)

    @staticmethod
    def _read_dataset(path: Path):
        from scoresample.diagnostics.datatree import read_dataset

        ds = read_dataset(path)
        data = {name: np.asarray(ds[name].values) for name in ds.data_vars}
        return data, dict(ds.attrs)

    def save_warmup(self, tuned: _Tuned):
        states = jax.tree.leaves(tuned.states)
        params = jax.tree.leaves(tuned.params)
        data = {f"state{i}": a for i, a in enumerate(states)}
        data.update({f"param{i}": a for i, a in enumerate(params)})
        attrs = {"num_states": len(states), "num_params": len(params),
                 "num_grad_evals": int(tuned.num_grad_evals),
                 "details": json.dumps(_jsonable(tuned.details))}
        self._write_dataset(self.path / "warmup.nc", data, attrs)

    def load_warmup(self):
        path = self.path / "warmup.nc"
        if not path.exists():
            return None
        data, attrs = self._read_dataset(path)
        details = json.loads(attrs["details"])
        return {"states": [jnp.asarray(data[f"state{i}"]) for i in range(int(attrs["num_states"]))],
                "params": [jnp.asarray(data[f"param{i}"]) for i in range(int(attrs["num_params"]))],
                "num_grad_evals": int(attrs["num_grad_evals"]), "details": details}

    def save_chunk(self, end: int, states, draws: dict, stats: dict, sample_time: float):
        leaves = jax.tree.leaves(states)
        data = {f"state{i}": a for i, a in enumerate(leaves)}
        names = {"draws": list(draws), "stats": list(stats)}
        data.update({f"draw{i}": draws[k] for i, k in enumerate(names["draws"])})
        data.update({f"stat{i}": stats[k] for i, k in enumerate(names["stats"])})
        attrs = {"end": int(end), "num_states": len(leaves), "names": json.dumps(names),
                 "sample_time": float(sample_time)}
        self._write_dataset(self.path / f"chunk_{end:09d}.nc", data, attrs)

    def load_chunks(self, states_template):
        files = sorted(self.path.glob("chunk_*.nc"))
        if not files:
            return None
        treedef = jax.tree.structure(states_template)
        draws_chunks, stats_chunks = [], []
        start, sample_time, states = 0, 0.0, None
        for file in files:
            data, attrs = self._read_dataset(file)
            names = json.loads(attrs["names"])
            draws = {k: data[f"draw{i}"] for i, k in enumerate(names["draws"])}
            stats = {k: data[f"stat{i}"] for i, k in enumerate(names["stats"])}
            length = next(iter(stats.values())).shape[1]
            if int(attrs["end"]) != start + length:
                raise ValueError(f"resume: chunk files in {str(self.path)!r} are not contiguous "
                                 f"({file.name} ends at {attrs['end']}, expected {start + length})")
            draws_chunks.append(draws)
            stats_chunks.append(stats)
            start = int(attrs["end"])
            sample_time = float(attrs["sample_time"])
            states = [jnp.asarray(data[f"state{i}"]) for i in range(int(attrs["num_states"]))]
        return (jax.tree.unflatten(treedef, states), draws_chunks, stats_chunks, start,
                sample_time)

    def finish(self, dt):
        from scoresample.diagnostics.datatree import save

        save(dt, self.path / "result.nc")


class _CallableModule(type(os)):
    """``scoresample.sample`` is both this module and its function: once the module has been
    imported as a submodule, ``scoresample.sample`` names the module; calling it calls
    :func:`sample`."""

    def __call__(self, *args, **kwargs):
        return sample(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
