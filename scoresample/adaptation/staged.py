"""The staged warmup: one tuning engine for every log-density kernel of the package.

A kernel describes how it is tuned with a :class:`TuningSpec` (how to build it on a log-density,
which statistic of its info steers the step size and towards which target, how to count its
gradients, what to undo during warmup). :func:`staged_warmup` then runs, for any number of chains:

1. :func:`laplace_start` (optional): gradient-only L-BFGS to the mode region, the Laplace
   approximation there, one start per chain drawn from it, and the Laplace covariance as the first
   preconditioner x = m + D z (dense or diagonal D);
2. :func:`window_adaptation`: Stan's windows. Dual averaging of the step size on the statistic, slow
   windows of doubling length that re-estimate the preconditioner (pooled over chains, each
   window's estimate weighted by its effective draws and shrunk towards the previous one), and a
   final fast window. A spec with a :class:`Calibration` (FORS) also recalibrates one option of its
   statistic at every window end so that a rare event (a clipped estimate) stays below a tolerance.

Everything is pure JAX: a kernel's own warmup (``fors_warmup``, ``rtk_warmup``) calls it with one
chain, under ``jit`` and ``vmap`` if it likes, and :func:`scoresample.sample` with many.

Example:
    >>> res = staged_warmup(jax.random.key(0), spec, logdensity_fn, jnp.zeros((4, 3)), 1000)
    >>> res.step_size, res.scale
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from blackjax.adaptation.step_size import dual_averaging_adaptation

from scoresample.adaptation.laplace import laplace_approximation, laplace_draw
from scoresample.adaptation.lbfgs import gradient_only_lbfgs
from scoresample.adaptation.preconditioner import (
    RUNAWAY_LIMIT,
    from_preconditioned,
    preconditioned_curvature,
    preconditioned_logdensity,
    safe_step,
    to_preconditioned,
)
from scoresample.adaptation.step_size import bounded_statistic
from scoresample.adaptation.windows import window_schedule
from scoresample.base import all_finite

__all__ = ["TuningSpec", "Calibration", "Start", "StagedWarmup", "staged_warmup", "laplace_start",
           "identity_start", "window_adaptation", "preconditioned_algorithm", "CALIBRATION_MARGIN"]

Array = jax.Array

#: the calibration aims at this fraction of the tolerance, so that the rate measured over a run
#: (a Poisson count) rarely exceeds the tolerance itself when the tuning is on target
CALIBRATION_MARGIN = 0.5


class Calibration(NamedTuple):
    """An option of a statistic that the warmup recalibrates so that a rare event stays rare.

    FORS steers its step by a continuous proxy (the RMS of its estimates, as a fraction
    ``target_w_scale`` of the clip level) because a clip is too rare to steer by; the clip rate
    itself is what bounds its bias. At every window end the pooled count of events (clips) and
    trials (estimates) of the window updates the option value v:

        rate = (events + 1) / (trials + 1 / tau),   tau = CALIBRATION_MARGIN * tolerance
        v <- v * clip((tau / rate)^(1 / exponent), 1/2, growth)

    (a Gamma prior worth one event at the aimed rate, so that a window with few trials moves v
    little; ``growth`` is 3/2, and 1 at the last slow window: the final step never grows on a
    rate the run has not measured). The rate is modelled as growing like v^exponent.
    """

    option: str  # the option of stat_fn that is recalibrated (e.g. "target_w_scale")
    tolerance_option: str  # the option holding the tolerated rate (e.g. "clip_tolerance")
    counts_fn: Callable  # counts_fn(info) -> (num_events, num_trials) of one step
    exponent: float = 3.0
    rate_name: str = "event_rate"  # what the rate is called in reports (e.g. "clip_rate")


@dataclasses.dataclass(frozen=True)
class TuningSpec:
    """How :func:`staged_warmup` tunes one kernel.

    Attributes:
        name: the kernel's name.
        build: ``build(logdensity_fn, step_size, **options) -> SamplingAlgorithm``
            (``init(position)``, ``step(rng_key, state)``; states have a ``position`` field); the
            step size may be traced. It validates the options (unknown names raise).
        stat_fn: ``stat_fn(info, step_size, options)``, the warmup statistic of one step; it must
            increase as the step size shrinks.
        target: the value of ``stat_fn`` that dual averaging aims at.
        initial_step_size: ``initial_step_size(dim, curvature)``, the first step on the
            preconditioned scale; ``curvature`` is the largest eigenvalue of the preconditioned
            Laplace Hessian (1 when unknown). May be traced.
        grad_evals_fn: gradient evaluations executed in one step, from its info.
        divergent_fn: whether a step met non-finite values.
        defaults: the default options of the kernel's tuning (the one home of these defaults).
        warmup_options: ``warmup_options(options) -> options`` used during warmup (e.g. RTK with
            an unadjusted inner solver tunes with the MALA inner one).
        warmup_reject: ``warmup_reject(info, step_size, options) -> bool``: during warmup only, a
            step that this flags is undone (the chain stays). Dual averaging tries steps ten times
            its start early on; one such step of an unadjusted kernel can throw a chain out of the
            typical set for good.
        first_step_factor: dual averaging shrinks towards ``log(first_step_factor * step)`` after
            each restart (10 in Stan and BlackJAX); approximate kernels use 1.
        max_step_size: a cap on the step (an exact proposal would let it grow without end).
        uses_value: whether the kernel evaluates log-density values (FORS does not): starts are
            then checked on the value too.
        init_grad_evals: gradient evaluations of ``init`` (charged at every re-initialisation).
        calibration: a :class:`Calibration` of the statistic, or None.
    """

    name: str
    build: Callable | None
    stat_fn: Callable
    target: float
    initial_step_size: Callable
    grad_evals_fn: Callable
    divergent_fn: Callable
    defaults: dict = dataclasses.field(default_factory=dict)
    warmup_options: Callable = dict
    warmup_reject: Callable | None = None
    first_step_factor: float = 10.0
    max_step_size: float = math.inf
    uses_value: bool = True
    init_grad_evals: int = 1
    calibration: Calibration | None = None


class Start(NamedTuple):
    """Where the windows start: chain positions and the first preconditioner."""

    positions: Array  # shape=(num_chains, d)
    shift: Array  # m, shape=(d,)
    scale: Array  # D, shape=(d,) (diagonal) or (d, d) (dense, lower triangular)
    curvature: Array  # (): largest eigenvalue of the preconditioned Laplace Hessian, 1 if unknown
    iterations: Array  # shape=(num_chains,): L-BFGS iterations
    lbfgs_grad_evals: Array  # (): summed over chains
    laplace_ok: Array  # shape=(num_chains,) bool
    laplace_grad_evals: Array  # (): Hessian columns and start checks, summed over chains


class StagedWarmup(NamedTuple):
    """The result of :func:`window_adaptation` (and :func:`staged_warmup`)."""

    states: Any  # kernel states on the preconditioned scale, batched over chains
    shift: Array  # shape=(d,)
    scale: Array  # shape=(d,) or (d, d)
    step_size: Array  # ()
    calibrated_value: Array  # (): the calibrated option's final value (NaN without calibration)
    num_grad_evals: Array  # (): every gradient of the warmup (the start's included)
    num_divergent: Array  # (): warmup steps flagged divergent (or runaway), over chains
    statistic: Array  # shape=(num_steps,): the statistic of each step, mean over chains
    step_sizes: Array  # shape=(num_steps,)
    calibrated: Array  # shape=(num_steps,): the calibrated option's value at each step (or NaN)
    num_events: Array  # (): calibration events (clips) of the last slow and final windows
    num_trials: Array  # (): their trials (estimates)


def preconditioned_algorithm(spec: TuningSpec, logdensity_fn: Callable, options: dict, shift,
                             scale, step_size):
    """The kernel of ``spec`` on the preconditioned scale z, x = shift + scale z."""
    return spec.build(preconditioned_logdensity(logdensity_fn, shift, scale), step_size,
                      **dict(options))


def identity_start(x_init, dense: bool) -> Start:
    """No pre-optimisation: the chains start at ``x_init``, the preconditioner is the identity."""
    num_chains, d = x_init.shape
    dtype = x_init.dtype
    zero = jnp.zeros((), jnp.int32)
    scale = jnp.eye(d, dtype=dtype) if dense else jnp.ones((d,), dtype)
    return Start(x_init, jnp.zeros((d,), dtype), scale, jnp.ones((), dtype),
                 jnp.zeros((num_chains,), jnp.int32), zero, jnp.zeros((num_chains,), bool), zero)


def laplace_start(rng_key, logdensity_fn: Callable, x_init, *, dense: bool, uses_value: bool = True,
                  max_iterations: int = 500, laplace_max_dim: int = 512) -> Start:
    """Gradient-only L-BFGS from every start, the Laplace approximation at each optimum, one start
    per chain drawn from it, and the chain-averaged Laplace covariance as the first preconditioner
    (its Cholesky factor when ``dense``, else its diagonal's square root).

    A start must have a finite gradient, and a finite value when ``uses_value``.
    """
    num_chains = x_init.shape[0]
    grad_logdensity = jax.grad(logdensity_fn)

    def is_valid(x):
        if uses_value:
            value, grad = jax.value_and_grad(logdensity_fn)(x)
            return jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
        return jnp.all(jnp.isfinite(grad_logdensity(x)))

    if max_iterations > 0:
        x_opt, n_opt, iterations = jax.vmap(lambda x: gradient_only_lbfgs(
            lambda y: -grad_logdensity(y), x, max_iterations=max_iterations))(x_init)
    else:
        x_opt, n_opt = x_init, jnp.zeros((num_chains,), jnp.int32)
        iterations = jnp.zeros((num_chains,), jnp.int32)
    lap = jax.vmap(lambda x: laplace_approximation(grad_logdensity, x, laplace_max_dim))(x_opt)
    keys = jax.random.split(rng_key, num_chains)
    starts, check_evals = jax.vmap(functools.partial(laplace_draw, is_valid=is_valid))(
        keys, x_opt, lap)
    covariance = jnp.mean(lap.covariance, axis=0)
    precision = jnp.mean(lap.precision, axis=0)
    shift = jnp.mean(x_opt, axis=0)
    if dense:
        chol = jnp.linalg.cholesky(0.5 * (covariance + covariance.T))
        scale = jnp.where(all_finite(chol), chol,
                          jnp.diag(jnp.sqrt(jnp.diagonal(covariance))))
    else:
        scale = jnp.sqrt(jnp.diagonal(covariance))
    curvature = preconditioned_curvature(precision, scale)
    curvature = jnp.where(jnp.isfinite(curvature) & (curvature > 0), curvature, 1.0)
    return Start(starts, shift, scale, curvature.astype(x_init.dtype), iterations,
                 jnp.sum(n_opt), lap.is_ok, jnp.sum(lap.num_grad_evals + check_evals))


class _Carry(NamedTuple):
    states: Any  # kernel states, batched over chains
    shift: Array  # m, shape=(d,)
    scale: Array  # D, shape=(d,) (diagonal) or (d, d) (dense)
    da_state: Any  # dual averaging (shared by the chains)
    log_value: Array  # (): log of the calibrated option (0 without a calibration)
    sum_x: Array  # shape=(d,)
    sum_x2: Array  # shape=(d,) (diagonal) or (d, d) (dense): sum of x x^T
    count: Array  # ()
    sum_z: Array  # shape=(d,): z moments of the window, for its autocorrelation
    sum_z2: Array  # shape=(d,)
    sum_lag: Array  # shape=(d,): sum of z_t z_{t-1}
    num_lag: Array  # ()
    prev_z: Array  # shape=(num_chains, d)
    events: Array  # (): calibration events since the last window end
    trials: Array  # ()
    last_events: Array  # (): those of the last slow window, at its end
    last_trials: Array  # ()
    num_grad_evals: Array  # ()
    num_divergent: Array  # ()


def _window_scale(carry: _Carry, mean, count, num_chains: int, shrinkage: float, dense: bool):
    """The preconditioner re-estimated at a window end (the previous one where it fails)."""
    # effective draws of the window: count / tau, with tau the AR(1) integrated autocorrelation
    # time of the slowest coordinate; a slow chain's covariance estimate is too narrow and must
    # not replace a better previous one
    z_mean = carry.sum_z / count
    z_var = carry.sum_z2 / count - z_mean**2
    rho = (carry.sum_lag / jnp.maximum(carry.num_lag, 1.0) - z_mean**2) / jnp.where(
        z_var > 0, z_var, 1.0)
    rho = jnp.clip(jnp.where(jnp.isfinite(rho), rho, 1.0), 0.0, 0.999)
    tau = jnp.max((1.0 + rho) / (1.0 - rho))
    n_eff = count / jnp.clip(tau, 1.0, count / num_chains)
    scale = carry.scale
    # pooled over chains, shrunk towards the previous estimate (a pseudo-count of ``shrinkage``)
    if dense:
        cov = carry.sum_x2 / count - jnp.outer(mean, mean)
        cov = (n_eff * cov + shrinkage * scale @ scale.T) / (n_eff + shrinkage)
        new_scale = jnp.linalg.cholesky(0.5 * (cov + cov.T))
        return jnp.where(all_finite(new_scale), new_scale, scale)
    var = jnp.maximum(carry.sum_x2 / count - mean**2, 0.0)
    var = (n_eff * var + shrinkage * scale**2) / (n_eff + shrinkage)
    good = jnp.isfinite(var) & (var > 0)
    return jnp.where(good, jnp.sqrt(var), scale)


def _calibrate(log_value, events, trials, tolerance, exponent: float, is_last):
    """One window end of :class:`Calibration`: the new log option value."""
    aim = CALIBRATION_MARGIN * tolerance
    rate = (events + 1.0) / (trials + 1.0 / aim)
    growth = jnp.where(is_last, 0.0, math.log(1.5))
    change = jnp.clip(jnp.log(aim / rate) / exponent, -math.log(2.0), growth)
    return log_value + change


def window_adaptation(rng_key, spec: TuningSpec, logdensity_fn: Callable, start: Start,
                      num_steps: int, *, options: dict | None = None, dense: bool = False,
                      adapt: bool = True, shrinkage: float = 10.0, on_step: Callable | None = None,
                      constrain: Callable | None = None) -> StagedWarmup:
    """Stan's staged windows from ``start``: the step size by dual averaging of ``spec.stat_fn``
    (shared by the chains), and with ``adapt`` the preconditioner at every slow window's end.

    Args:
        rng_key: the key; step i of chain c uses ``fold_in(fold_in(rng_key, c), i)``.
        spec: the kernel's :class:`TuningSpec`.
        logdensity_fn: log pi on flat positions (d,).
        start: a :class:`Start` (:func:`laplace_start` or :func:`identity_start`).
        num_steps: warmup steps (0 keeps the start and the initial step size).
        options: the kernel's options (``spec.defaults`` fill the missing ones).
        dense: the preconditioner is dense (``start.scale`` is (d, d)).
        adapt: re-estimate the preconditioner at window ends (False keeps ``start``'s).
        shrinkage: pseudo-count of draws of the previous estimate in each re-estimate.
        on_step: ``on_step(i)`` called inside the scan (a progress bar), or None.
        constrain: applied to chain-batched arrays inside the scan (a sharding constraint), or None.

    Returns:
        :class:`StagedWarmup`; its ``states`` are ready for sampling with ``step_size``.
    """
    options = {**spec.defaults, **(options or {})}
    warm_options = spec.warmup_options(dict(options))
    calibration = spec.calibration
    constrain = constrain or (lambda tree: tree)
    num_chains, d = start.positions.shape
    dtype = start.positions.dtype
    is_slow, is_end = window_schedule(num_steps)
    last_end = jnp.arange(num_steps) == (int(is_end.nonzero()[0][-1]) if is_end.any() else -1)
    da_init_blackjax, da_update, da_final = dual_averaging_adaptation(spec.target)

    def da_init(step_size):
        state = da_init_blackjax(step_size)
        return state._replace(mu=jnp.log(spec.first_step_factor * step_size))

    def clipped(step_size):
        return jnp.minimum(step_size, spec.max_step_size).astype(dtype)

    def stat_options(log_value):
        if calibration is None:
            return warm_options
        return {**warm_options, calibration.option: jnp.exp(log_value)}

    def build(shift, scale, step_size, opts):
        return preconditioned_algorithm(spec, logdensity_fn, opts, shift, scale, step_size)

    to_z = jax.vmap(to_preconditioned, in_axes=(None, None, 0))
    to_x = jax.vmap(from_preconditioned, in_axes=(None, None, 0))
    eps0 = jnp.asarray(spec.initial_step_size(d, start.curvature), dtype)
    log_value0 = (jnp.log(jnp.asarray(options[calibration.option], dtype)) if calibration
                  else jnp.zeros((), dtype))
    tolerance = options[calibration.tolerance_option] if calibration else None
    limit = RUNAWAY_LIMIT if adapt else None

    shift, scale = start.shift, start.scale
    states = constrain(jax.vmap(build(shift, scale, eps0, warm_options).init)(
        to_z(shift, scale, start.positions)))
    zeros = jnp.zeros((d,), dtype)
    zero = jnp.zeros((), dtype)
    carry = _Carry(states, shift, scale, da_init(eps0), log_value0, zeros,
                   jnp.zeros((d, d) if dense else (d,), dtype), zero, zeros, zeros, zeros, zero,
                   states.position, zero, zero, zero, zero,
                   jnp.asarray(num_chains * spec.init_grad_evals, jnp.int32)
                   + start.lbfgs_grad_evals + start.laplace_grad_evals, jnp.zeros((), jnp.int32))

    def body(carry, xs):
        i, slow, end, last = xs
        step_size = clipped(jnp.exp(carry.da_state.log_step_size))
        alg = build(carry.shift, carry.scale, step_size, warm_options)
        keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.fold_in(rng_key, c), i))(
            jnp.arange(num_chains))
        states, infos, is_bad = jax.vmap(functools.partial(safe_step, alg.step, limit=limit))(
            keys, carry.states)
        if spec.warmup_reject is not None:
            undo = spec.warmup_reject(infos, step_size, warm_options)
            states = jax.tree.map(
                lambda new, old: jnp.where(jnp.reshape(undo, undo.shape + (1,) * (new.ndim - 1)),
                                           old, new), states, carry.states)
        states = constrain(states)
        opts = stat_options(carry.log_value)
        stat = jnp.mean(bounded_statistic(spec.stat_fn(infos, step_size, opts)))
        da_state = da_update(carry.da_state, stat)
        x = to_x(carry.shift, carry.scale, states.position)
        w = jnp.where(slow, 1.0, 0.0).astype(dtype)
        z = states.position
        lag_w = w * jnp.where(carry.count > 0, 1.0, 0.0).astype(dtype)
        events, trials = carry.events, carry.trials
        if calibration is not None:
            n_events, n_trials = calibration.counts_fn(infos)
            events = events + jnp.sum(n_events).astype(dtype)
            trials = trials + jnp.sum(n_trials).astype(dtype)
        carry = carry._replace(
            states=states, da_state=da_state,
            sum_x=carry.sum_x + w * jnp.sum(x, axis=0),
            sum_x2=carry.sum_x2 + w * (x.T @ x if dense else jnp.sum(x**2, axis=0)),
            count=carry.count + w * num_chains,
            sum_z=carry.sum_z + w * jnp.sum(z, axis=0),
            sum_z2=carry.sum_z2 + w * jnp.sum(z**2, axis=0),
            sum_lag=carry.sum_lag + lag_w * jnp.sum(z * carry.prev_z, axis=0),
            num_lag=carry.num_lag + lag_w * num_chains, prev_z=z, events=events, trials=trials,
            num_grad_evals=carry.num_grad_evals
            + jnp.sum(spec.grad_evals_fn(infos)).astype(jnp.int32),
            num_divergent=carry.num_divergent
            + jnp.sum(spec.divergent_fn(infos) | is_bad).astype(jnp.int32))
        if on_step is not None:
            on_step(i)

        def window_end(carry):
            mean = carry.sum_x / carry.count
            shift, scale = carry.shift, carry.scale
            if adapt:
                scale = _window_scale(carry, mean, carry.count, num_chains, shrinkage, dense)
                shift = jnp.where(jnp.isfinite(mean), mean, carry.shift)
            log_value = carry.log_value
            if calibration is not None:
                log_value = _calibrate(log_value, carry.events, carry.trials, tolerance,
                                       calibration.exponent, last)
            new_step = clipped(da_final(carry.da_state))
            x = to_x(carry.shift, carry.scale, carry.states.position)
            states = constrain(jax.vmap(build(shift, scale, new_step, warm_options).init)(
                to_z(shift, scale, x)))
            zero = jnp.zeros_like(carry.count)
            return carry._replace(
                states=states, shift=shift, scale=scale, da_state=da_init(new_step),
                log_value=log_value, sum_x=jnp.zeros_like(carry.sum_x),
                sum_x2=jnp.zeros_like(carry.sum_x2), count=zero,
                sum_z=jnp.zeros_like(carry.sum_z), sum_z2=jnp.zeros_like(carry.sum_z2),
                sum_lag=jnp.zeros_like(carry.sum_lag), num_lag=zero, prev_z=states.position,
                events=zero, trials=zero,
                last_events=jnp.where(last, carry.events, carry.last_events),
                last_trials=jnp.where(last, carry.trials, carry.last_trials),
                num_grad_evals=carry.num_grad_evals + num_chains * spec.init_grad_evals)

        carry = jax.lax.cond(end, window_end, lambda c: c, carry)
        value = jnp.exp(carry.log_value) if calibration else jnp.full((), jnp.nan, dtype)
        return carry, (stat, step_size, value)

    xs = (jnp.arange(num_steps), jnp.asarray(is_slow), jnp.asarray(is_end), last_end)
    carry, (statistic, step_sizes, calibrated) = jax.lax.scan(body, carry, xs)
    step_size = clipped(da_final(carry.da_state)) if num_steps > 0 else clipped(eps0)
    value = jnp.exp(carry.log_value) if calibration else jnp.full((), jnp.nan, dtype)
    # the run starts from the warmup's positions with the final step size
    alg = build(carry.shift, carry.scale, step_size, options)
    states = constrain(jax.vmap(alg.init)(carry.states.position))
    return StagedWarmup(states, carry.shift, carry.scale, step_size, value,
                        carry.num_grad_evals + num_chains * spec.init_grad_evals,
                        carry.num_divergent, statistic, step_sizes, calibrated,
                        carry.last_events + carry.events, carry.last_trials + carry.trials)


def staged_warmup(rng_key, spec: TuningSpec, logdensity_fn: Callable, x_init, num_steps: int, *,
                  options: dict | None = None, preconditioner: str | None = "dense",
                  preoptimize: bool = True, max_iterations: int = 500,
                  laplace_max_dim: int = 512, shrinkage: float = 10.0,
                  on_step: Callable | None = None) -> tuple[Start, StagedWarmup]:
    """The whole staged warmup of ``spec``'s kernel: :func:`laplace_start` (with ``preoptimize``)
    then :func:`window_adaptation`; pure JAX, any number of chains.

    Args:
        rng_key: a PRNG key.
        spec: the kernel's :class:`TuningSpec`.
        logdensity_fn: log pi on flat positions (d,).
        x_init: chain starts, shape (num_chains, d).
        num_steps: window steps.
        options: the kernel's options (``spec.defaults`` fill the missing ones).
        preconditioner: ``"dense"``, ``"diagonal"``, or None (no preconditioner: the kernel runs
            on x itself, e.g. a kernel without a metric).
        preoptimize: run the L-BFGS and Laplace start (with a preconditioner only).
        max_iterations, laplace_max_dim: see :func:`laplace_start`.
        shrinkage, on_step: see :func:`window_adaptation`.

    Returns:
        ``(start, result)``: the :class:`Start` and the :class:`StagedWarmup`.

    Example:
        >>> start, res = staged_warmup(jax.random.key(0), spec, logdensity_fn, x0[None], 500)
        >>> x = from_preconditioned(res.shift, res.scale, res.states.position[0])
    """
    if preconditioner not in ("dense", "diagonal", None):
        raise ValueError(f"preconditioner must be 'dense', 'diagonal' or None, got "
                         f"{preconditioner!r}")
    dense = preconditioner == "dense"
    key_start, key_windows = jax.random.split(rng_key)
    if preoptimize and preconditioner is not None:
        start = laplace_start(key_start, logdensity_fn, x_init, dense=dense,
                              uses_value=spec.uses_value, max_iterations=max_iterations,
                              laplace_max_dim=laplace_max_dim)
    else:
        start = identity_start(x_init, dense)
    result = window_adaptation(key_windows, spec, logdensity_fn, start, num_steps,
                               options=options, dense=dense, adapt=preconditioner is not None,
                               shrinkage=shrinkage, on_step=on_step)
    return start, result
