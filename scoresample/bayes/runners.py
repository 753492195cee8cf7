"""Runners: warmup, then one step of every chain per draw (the staged runner for this package's
kernels, BlackJAX window adaptation for NUTS)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scoresample.adaptation import (
    RUNAWAY_LIMIT,
    Start,
    from_preconditioned,
    identity_start,
    laplace_start,
    preconditioned_algorithm,
    safe_step,
    window_adaptation,
)
from scoresample.bayes.methods import Method
from scoresample.driver import progress_callback
from scoresample.parallel import constrain_batch, gather

__all__ = ["Tuned", "Runner", "staged_runner", "nuts_runner", "NUTSWarmup", "nuts_window_warmup",
           "scouted_start", "SCOUTS"]

#: ``scoresample.sample(..., warmup_scout=...)`` besides None (no scout): what may learn the
#: preconditioner before the staged windows tune the method's step on it ("auto": NUTS, when the
#: method's own warmup moved its chains too little; see :func:`staged_runner`)
SCOUTS = ("auto", "nuts")
#: "auto" calls the scout when the windows covered fewer than this many of the method's draw
#: times (steps x step size / draw_time: about the effective draws of a chain's warmup), too few
#: to estimate a covariance. Measured at the defaults on the posteriordb set (step x 1000 warmup
#: steps, from `benchmarks/posteriordb_methods.py --budget defaults`): FORS covers 5 on
#: gp_pois_regr (where its own windows leave a preconditioner 16 times too narrow in one
#: direction, and it fails), 19 to 730 on the 10 others; RTK 114 to 1,007.
SCOUT_MIN_DRAW_TIMES = 10.0
#: nor with a warmup this short (a scout of so few steps learns no covariance either)
SCOUT_MIN_WARMUP = 100
#: the scout's NUTS aims at the acceptance of ``method="nuts"`` (0.9; see bayes.methods: with a
#: dense mass matrix 0.8 diverged in the funnel of gp_pois_regr)
SCOUT_TARGET = 0.9
SCOUT_FOLD = 0x5C0  # the scout's key is fold_in(warmup key, SCOUT_FOLD), the windows' second pass
# fold_in(warmup key, SCOUT_FOLD + 1); the rest split the warmup key

Array = jax.Array

# =============================================================================================
# Runners: warmup then a per-draw step on every chain.
# =============================================================================================


class Tuned(NamedTuple):
    """A warmup's result: what the sampling phase starts from."""

    states: Any  # batched over chains
    params: Any  # per-chain parameters of the sampling step (pytree, leading axis = chain)
    num_grad_evals: int
    details: dict  # json-able warmup facts for the attrs


class Runner(NamedTuple):
    """How :func:`scoresample.sample` warms up and steps the chains of one method."""

    method: Method
    warmup: Callable  # (rng_key, x_init (C, d)) -> Tuned
    step: Callable  # (rng_key, state, params) -> (state, info, is_bad)
    to_x: Callable  # (state, params) -> flat x
    step_size: Callable  # params -> step size (per chain)
    template: Callable  # x_init (C, d) -> (states, params) with the structure warmup returns


class NUTSWarmup(NamedTuple):
    """What BlackJAX's window adaptation of NUTS leaves, per chain."""

    positions: Array  # shape=(num_chains, d)
    step_size: Array  # shape=(num_chains,)
    inverse_mass_matrix: Array  # shape=(num_chains, d, d) (dense) or (num_chains, d)
    num_grad_evals: int  # leapfrog gradients, summed over chains
    num_divergent: int  # divergent warmup transitions, summed over chains


def nuts_window_warmup(rng_key, logdensity_fn: Callable, x_init, num_warmup: int, *,
                       target: float, dense: bool, sharding=None) -> NUTSWarmup:
    """``blackjax.window_adaptation`` of NUTS on every chain (each adapts on its own; with
    ``sharding``, on its own device): NUTS's warmup, and the scout of the staged warmup."""
    import blackjax
    from blackjax.adaptation.base import get_filter_adapt_info_fn

    num_chains, d = x_init.shape
    if num_warmup == 0:
        imm = (jnp.broadcast_to(jnp.eye(d, dtype=x_init.dtype), (num_chains, d, d)) if dense
               else jnp.ones_like(x_init))
        return NUTSWarmup(x_init, jnp.ones((num_chains,), x_init.dtype), imm, 0, 0)
    adapt = blackjax.window_adaptation(
        blackjax.nuts, logdensity_fn, target_acceptance_rate=target,
        is_mass_matrix_diagonal=not dense,
        adaptation_info_fn=get_filter_adapt_info_fn(
            info_keys={"num_integration_steps", "is_divergent"}))

    def run(keys, x):
        keys, x = constrain_batch((keys, x), sharding)
        return jax.vmap(lambda k, x: adapt.run(k, x, num_warmup))(keys, x)

    res, info = jax.jit(run)(jax.random.split(rng_key, num_chains), x_init)
    return NUTSWarmup(res.state.position, res.parameters["step_size"],
                      res.parameters["inverse_mass_matrix"],
                      int(jnp.sum(info.info.num_integration_steps)),
                      int(jnp.sum(info.info.is_divergent)))


def scouted_start(scout: NUTSWarmup, start: Start, dense: bool) -> Start:
    """The staged warmup's start from a scout: its chains' positions, their mean as the shift and
    the chains' mean covariance (NUTS's inverse mass matrix) as the preconditioner."""
    cov = jnp.mean(scout.inverse_mass_matrix, axis=0)
    scale = jnp.linalg.cholesky(0.5 * (cov + cov.T)) if dense else jnp.sqrt(cov)
    return start._replace(positions=scout.positions, shift=jnp.mean(scout.positions, axis=0),
                          scale=scale, curvature=jnp.ones_like(start.curvature))


def staged_runner(method: Method, options: dict, logdensity_fn: Callable, num_chains: int,
                  num_warmup: int, *, progress_bar: bool, preoptimize: bool, max_iterations: int,
                  laplace_max_dim: int, shrinkage: float, dense: bool,
                  sharding=None, scout: str | None = None) -> Runner:
    """The runner of every method but NUTS: the package's staged warmup
    (:func:`scoresample.adaptation.laplace_start` then
    :func:`~scoresample.adaptation.window_adaptation` with the method's tuning spec) on all chains;
    sampling steps the kernel on the preconditioned scale. With ``sharding`` the chain axis is
    split over its devices (and processes) in the warmup too.

    ``scout="nuts"``: between the two, ``num_warmup`` steps of NUTS's window adaptation
    (:func:`nuts_window_warmup`) learn the covariance, which becomes the preconditioner
    (:func:`scouted_start`); the windows then tune only the method's step, on it. For a method
    whose chains move too little in its own warmup to learn the covariance (FORS at a small
    step on a funnel); the scout's gradients count in the warmup's. ``scout="auto"``: the
    windows first; if the method has a ``draw_time`` and they covered fewer than
    :data:`SCOUT_MIN_DRAW_TIMES` of it (with at least :data:`SCOUT_MIN_WARMUP` steps), the scout
    runs from the same start and the windows run again on its preconditioner (every gradient of
    both passes counted)."""
    options = {**method.defaults, **options}

    def constrain(tree):
        return constrain_batch(tree, sharding)

    def build(shift, scale, step_size):
        return preconditioned_algorithm(method, logdensity_fn, options, shift, scale, step_size)

    def warmup(rng_key, x_init):
        key_start, key_windows = jax.random.split(rng_key)
        details = {}
        t0 = time.perf_counter()
        if preoptimize:
            start = jax.jit(lambda key, x: laplace_start(
                key, logdensity_fn, constrain(x), dense=dense, uses_value=method.uses_value,
                max_iterations=max_iterations, laplace_max_dim=laplace_max_dim))(key_start, x_init)
            details.update(preopt_iterations=[int(i) for i in gather(start.iterations)],
                           preopt_grad_evals=int(start.lbfgs_grad_evals),
                           laplace_ok=[bool(b) for b in gather(start.laplace_ok)],
                           laplace_grad_evals=int(start.laplace_grad_evals),
                           laplace_curvature=float(start.curvature))
        else:
            start = identity_start(jnp.asarray(x_init), dense)
        details["preopt_seconds"] = time.perf_counter() - t0

        def run_scout(start):
            t_scout = time.perf_counter()
            found = nuts_window_warmup(jax.random.fold_in(rng_key, SCOUT_FOLD), logdensity_fn,
                                       start.positions, num_warmup, target=SCOUT_TARGET,
                                       dense=dense, sharding=sharding)
            details.update(scout_grad_evals=found.num_grad_evals,
                           scout_divergences=found.num_divergent,
                           scout_seconds=time.perf_counter() - t_scout)
            return scouted_start(found, start, dense), found.num_grad_evals

        def windows(start, adapt, key):
            update, close = progress_callback(num_warmup, f"warmup ({method.name})",
                                              progress_bar)
            try:
                res = jax.jit(lambda key, start: window_adaptation(
                    key, method, logdensity_fn, start, num_warmup, options=options, dense=dense,
                    adapt=adapt, shrinkage=shrinkage, on_step=update,
                    constrain=constrain))(key, start)
                jax.block_until_ready(res.states)
            finally:
                close()
            return res

        t1 = time.perf_counter()
        extra_evals = 0
        if scout == "nuts":
            start, extra_evals = run_scout(start)
            details["scout"] = "nuts"
        res = windows(start, scout != "nuts", key_windows)
        if scout == "auto" and method.draw_time is not None and num_warmup >= SCOUT_MIN_WARMUP:
            covered = num_warmup * float(res.step_size) / method.draw_time
            details["warmup_draw_times"] = covered
            if covered < SCOUT_MIN_DRAW_TIMES:
                # the first windows' gradients (the start's included) stay counted; the second
                # pass reuses the start, whose gradients are then not counted again
                extra_evals = int(res.num_grad_evals)
                start, scout_evals = run_scout(start._replace(
                    lbfgs_grad_evals=jnp.zeros_like(start.lbfgs_grad_evals),
                    laplace_grad_evals=jnp.zeros_like(start.laplace_grad_evals)))
                extra_evals += scout_evals
                details.update(scout="nuts (auto)", first_step_size=float(res.step_size))
                res = windows(start, False, jax.random.fold_in(rng_key, SCOUT_FOLD + 1))
        details["window_seconds"] = time.perf_counter() - t1
        stats, step_sizes = np.asarray(res.statistic), np.asarray(res.step_sizes)
        tail = slice(-min(50, len(stats)), None)
        scale = res.scale
        sd = jnp.sqrt(jnp.sum(scale**2, axis=1)) if dense else scale
        details.update(warmup_divergences=int(res.num_divergent),
                       initial_step_size=float(res.step_sizes[0]) if num_warmup else
                       float(res.step_size),
                       final_window_statistic=float(stats[tail].mean()) if len(stats) else None,
                       warmup_target=method.target, step_size=float(res.step_size),
                       preconditioner="dense" if dense else "diagonal",
                       preconditioner_sd_range=[float(jnp.min(sd)), float(jnp.max(sd))],
                       step_size_trace=step_sizes[:: max(1, len(step_sizes) // 20)].tolist())
        calibration = method.calibration
        if calibration is not None:
            trials = float(res.num_trials)
            details.update({
                f"warmup_{calibration.option}": float(res.calibrated_value),
                f"warmup_{calibration.tolerance_option}": float(
                    options[calibration.tolerance_option]),
                f"warmup_{calibration.rate_name}": float(res.num_events) / trials if trials
                else None,
                f"warmup_{calibration.rate_name}_trials": int(trials)})
        params = (jnp.broadcast_to(res.step_size, (num_chains,)),
                  jnp.broadcast_to(res.shift, (num_chains,) + res.shift.shape),
                  jnp.broadcast_to(scale, (num_chains,) + scale.shape))
        return Tuned(res.states, params, int(res.num_grad_evals) + extra_evals, details)

    def step(key, state, params):
        step_size, shift, scale = params
        alg = build(shift, scale, step_size)
        return safe_step(alg.step, key, state, limit=RUNAWAY_LIMIT)

    def to_x(state, params):
        _, shift, scale = params
        return from_preconditioned(shift, scale, state.position)

    def template(x_init):
        num, d = x_init.shape
        scale = jnp.ones((num, d, d) if dense else (num, d), x_init.dtype)
        params = (jnp.ones((num,), x_init.dtype), jnp.zeros((num, d), x_init.dtype), scale)
        alg = build(params[1][0], params[2][0], params[0][0])
        return jax.vmap(alg.init)(x_init), params

    return Runner(method, warmup, step, to_x, lambda params: params[0], template)


def nuts_runner(method: Method, options: dict, logdensity_fn: Callable, num_chains: int,
                num_warmup: int, *, progress_bar: bool, dense: bool, sharding=None,
                **unused) -> Runner:
    """BlackJAX NUTS tuned by ``blackjax.window_adaptation`` (the reference baseline); every chain
    adapts on its own (with ``sharding``, on its own device)."""
    import blackjax

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
        adapted = nuts_window_warmup(rng_key, logdensity_fn, x_init, num_warmup, target=target,
                                     dense=dense, sharding=sharding)
        states = jax.vmap(lambda x: blackjax.nuts.init(x, logdensity_fn))(adapted.positions)
        evals = adapted.num_grad_evals + num_chains  # the initial gradient of every chain
        details = {"window_seconds": time.perf_counter() - t0,
                   "warmup_divergences": adapted.num_divergent, "warmup_target": target}
        return Tuned(states, (adapted.step_size, adapted.inverse_mass_matrix), evals, details)

    def step(key, state, params):
        step_size, imm = params
        alg = blackjax.nuts(logdensity_fn, step_size, imm)
        return safe_step(alg.step, key, state)

    def to_x(state, params):
        del params
        return state.position

    def template(x_init):
        states = jax.vmap(lambda x: blackjax.nuts.init(x, logdensity_fn))(x_init)
        num, d = x_init.shape
        imm = jnp.ones((num, d, d) if dense else (num, d), x_init.dtype)
        return states, (jnp.ones((num,), x_init.dtype), imm)

    return Runner(method, warmup, step, to_x, lambda params: params[0], template)
