"""Runners: warmup, then one step of every chain per draw (the staged runner for this package's
kernels, BlackJAX window adaptation for NUTS)."""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scoresample.bayes.methods import Method
from scoresample.bayes.warmup import (RUNAWAY_LIMIT, _affine, _laplace, _laplace_draw, _safe_step,
                                      _to_x, _to_z, _WarmupCarry, gradient_only_lbfgs,
                                      window_schedule)

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


def _progress(num_steps, label, enabled):
    from scoresample.driver import progress_callback

    return progress_callback(num_steps, label, enabled)
