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

__all__ = ["Tuned", "Runner", "staged_runner", "nuts_runner"]

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


def staged_runner(method: Method, options: dict, logdensity_fn: Callable, num_chains: int,
                  num_warmup: int, *, progress_bar: bool, preoptimize: bool, max_iterations: int,
                  laplace_max_dim: int, shrinkage: float, dense: bool,
                  sharding=None) -> Runner:
    """The runner of every method but NUTS: the package's staged warmup
    (:func:`scoresample.adaptation.laplace_start` then
    :func:`~scoresample.adaptation.window_adaptation` with the method's tuning spec) on all chains;
    sampling steps the kernel on the preconditioned scale. With ``sharding`` the chain axis is
    split over its devices (and processes) in the warmup too."""
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

        update, close = progress_callback(num_warmup, f"warmup ({method.name})", progress_bar)
        t1 = time.perf_counter()
        try:
            res = jax.jit(lambda key, start: window_adaptation(
                key, method, logdensity_fn, start, num_warmup, options=options, dense=dense,
                shrinkage=shrinkage, on_step=update, constrain=constrain))(key_windows, start)
            jax.block_until_ready(res.states)
        finally:
            close()
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
        return Tuned(res.states, params, int(res.num_grad_evals), details)

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
            def run(keys, x):
                keys, x = constrain_batch((keys, x), sharding)
                return jax.vmap(lambda k, x: adapt.run(k, x, num_warmup))(keys, x)

            (res, info) = jax.jit(run)(keys, x_init)
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
        return Tuned(states, (step_size, imm), evals, details)

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
