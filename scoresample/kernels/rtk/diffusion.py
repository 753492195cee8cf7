"""RTK-MALA and RTK-ULD on a score: reverse transition kernels over a few large segments.

Split [t_min, T] into K segments. From x at time t to t' = t - eta, the exact reverse transition
kernel is

    p(z | x) ∝ exp(-g(z)),   g(z) = f_{t'}(z) + |z - e^eta x|^2 / (2 (e^{2 eta} - 1)),

with f_{t'} = -log p_{t'}: a restricted Gaussian oracle centred at e^eta x with variance
rho = e^{2 eta} - 1, and grad g(z) = -score(z, t') + (z - e^eta x) / rho. Each segment starts from the
DDPM one-step proposal z_0 = e^eta x + 2 (e^eta - 1) score(x, t) + sqrt(rho) xi and runs S inner steps
of MALA (``"rtk-mala"``) or of exact frozen-gradient underdamped Langevin (``"rtk-uld"``) on g. The
score at the last inner point is reused as score(x, t) of the next segment, so a run costs
1 + K (1 + S c) score evaluations, where c is the cost of one inner step: 1 for ULD and for MALA
with ``acceptance="energy"``, 1 + n for ``acceptance="quadrature"`` with n nodes, and 1 plus a
random number of coin evaluations (at most 2B in expectation) for ``acceptance="factory"``.
``acceptance="energy"`` also makes K (1 + S) ``energy_fn`` evaluations (counted apart, in
``num_energy_evals``; with an energy network both come from one value-and-grad pass). What each
acceptance makes exact, and why the segments are well conditioned, is on
[the RTK page](../algorithms/rtk.md).

Reference: Huang, Zou, Dong, Zhang, Ma, Zhang, "Reverse Transition Kernel: A Flexible Framework to
Accelerate Diffusion Inference", NeurIPS 2024 (arXiv 2405.16387).

Example:
    >>> from scoresample import diffusion, targets
    >>> mix = targets.four_modes_2d()
    >>> res = diffusion.sample(jax.random.key(0), "rtk-mala", mix.score, dim=2, num_samples=1000,
    ...                        nfe=100)   # scores only: the exact factory test
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scoresample import processes
from scoresample.base import (
    DiffusionPlan,
    DiffusionState,
    SamplingAlgorithm,
    all_finite,
    check_bool,
    check_callable,
    check_in,
    check_int,
    check_positive,
    check_times,
)
from scoresample.kernels.baselines import ei_table
from scoresample.kernels.fors.rejection import default_max_poisson
from scoresample.kernels.inner import (
    ULDState,
    init_inner,
    mala_chain,
    mala_factory_chain,
    quadrature_rule,
    score_line_integral,
    uld_chain,
)
from scoresample.kernels.rtk.grid import GRIDS, resolve_segments, rtk_grid

__all__ = [
    "ACCEPTANCES",
    "STARTS",
    "posterior_table",
    "RTKDiffusionInfo",
    "rtk_mala_plan",
    "rtk_uld_plan",
    "subproblem_moments_gaussian",
    "RTK_ULD_COV_BIAS",
]

# The bias of the ULD inner solver at the diffusion defaults (tau sqrt(L) = 1, gamma / sqrt(L) = 4):
# on a Gaussian subproblem whose precision is at most L, the stationary covariance of the
# frozen-gradient chain exceeds the exact one by at most 13.8% (relative, per eigendirection; worst
# at the stiffest direction, computed from the chain's discrete Lyapunov equation).
RTK_ULD_COV_BIAS = 0.15

# The Metropolis tests of RTK-MALA (see rtk_mala_plan)
ACCEPTANCES = ("energy", "factory", "quadrature")
# Where each segment's inner chain starts (see rtk_mala_plan)
STARTS = ("auto", "ei", "posterior")
# start="auto": the posterior start on segments longer than this (in t), the EI start on the
# others. The EI start's coefficient 2 (e^eta - 1) on the score throws a long segment's chain far
# from its target (measured on targets.aniso_subspace_mixture() at t_min = 1e-5, 5000 samples:
# RTK-MALA with the exact energy at nfe = 10 (longest eta 3.0) has a within-component KL of 1.5e5
# with EI starts and 10 with posterior starts, at nfe = 20 (eta 1.35) 1.85 and 0.60; at nfe = 50
# and 100 (eta <= 0.5) the EI start is better: mode-weight error 0.045 against 0.051 and 0.019
# against 0.044).
LONG_SEGMENT = 1.0


class RTKDiffusionInfo(NamedTuple):
    """Diagnostics of one RTK segment (one ``step`` of the diffusion kernel).

    ``num_grad_evals`` counts score evaluations executed in the segment (the first segment also
    counts the score at x_T made by ``init``); ``num_energy_evals`` counts ``energy_fn`` calls;
    ``num_rounds`` sequential rounds of batched evaluation; ``acceptance_rate`` the mean inner MALA
    acceptance (1 for ULD; for ``acceptance="factory"`` the realised acceptance, the probability
    being known only through estimates); ``num_accepted`` accepted inner proposals.
    ``num_coins`` and ``num_clipped`` (``acceptance="factory"`` only, else 0): estimates that
    entered a factory coin, and of those how many were clipped; the clip rate of a run is
    sum(num_clipped) / sum(num_coins), and the inner chain is exact up to it.

    With ``acceptance="factory"`` the counts are what this particle executed. Under ``jax.vmap``
    the coin loop of each inner step runs until the batch's slowest particle is done, so a batch
    executes more evaluations than the largest per-particle count (masked lanes).
    """

    num_grad_evals: jax.Array
    num_energy_evals: jax.Array
    num_rounds: jax.Array
    is_divergent: jax.Array
    acceptance_rate: jax.Array
    num_accepted: jax.Array
    num_coins: jax.Array
    num_clipped: jax.Array


def subproblem_moments_gaussian(mean, cov, x, t: float, eta: float):
    """Exact mean and covariance of the RTK subproblem when the data law is N(mean, cov).

    p_{t'} = N(a mean, a^2 cov + s^2 I) with t' = t - eta, times N(e^eta x, rho I), rho = e^{2 eta} - 1:
    precision P = C^-1 + I/rho, mean P^-1 (C^-1 a mean + e^eta x / rho). Used by the exact tests.
    """
    mean, cov, x = (np.asarray(v, dtype=np.float64) for v in (mean, cov, x))
    t_next = t - eta
    a = processes.alpha(t_next)
    s2 = processes.sigma2(t_next)
    rho = processes.rho(eta)
    dim = mean.shape[0]
    c_inv = np.linalg.inv(a**2 * cov + s2 * np.eye(dim))
    precision = c_inv + np.eye(dim) / rho
    cov_sub = np.linalg.inv(precision)
    return cov_sub @ (c_inv @ (a * mean) + math.exp(eta) * x / rho), cov_sub


def posterior_table(ts: np.ndarray) -> np.ndarray:
    """(K, 3) coefficients of x, score(x, t) and noise of the DDPM posterior step t -> t' = t - eta.

    With x0_hat = (x + s_t^2 score) / a_t (Tweedie), the law of X_{t'} given X_t = x and
    X_0 = x0_hat is N(a_{t'} beta / s_t^2 x0_hat + e^-eta s_{t'}^2 / s_t^2 x, s_{t'}^2 beta / s_t^2), beta =
    1 - e^{-2 eta}: z_0 = ((e^eta - e^-eta) + e^-eta s_{t'}^2) / s_t^2 x + (e^eta - e^-eta) score +
    sqrt(s_{t'}^2 beta / s_t^2) xi. Unlike the exponential-integrator step (coefficient
    2 (e^eta - 1) on the score), it stays bounded for long segments: exact for point-mass data.
    """
    t, t_next = ts[:-1], ts[1:]
    eta = t - t_next
    beta = -np.expm1(-2.0 * eta)
    s2, s2_next = processes.sigma2(t), processes.sigma2(t_next)
    two_sinh = np.exp(eta) * beta  # e^eta - e^-eta
    return np.stack([(two_sinh + np.exp(-eta) * s2_next) / s2, two_sinh,
                     np.sqrt(s2_next * beta / s2)], axis=1)


def _first_proposal(coefficients, x, score_x, rng_key):
    """z_0 = c_x x + c_s score(x, t) + c_z xi for one row of the start table."""
    noise = jax.random.normal(rng_key, x.shape, dtype=x.dtype)
    return coefficients[0] * x + coefficients[1] * score_x + coefficients[2] * noise


def _segment_potential(score_fn, energy_fn, t_next, center, rho, use_energy: bool):
    """potential_fn of the subproblem g at one segment: (g or 0, grad g, score at z)."""

    def potential_fn(z):
        score = score_fn(z, t_next)
        offset = z - center
        grad = -score + offset / rho
        if use_energy:
            value = energy_fn(z, t_next) + 0.5 * jnp.vdot(offset, offset) / rho
        else:
            value = jnp.zeros((), z.dtype)
        return value, grad, score

    return potential_fn


def _quadrature_energy_diff(score_fn, t_next, center, rho, rule):
    """g(z') - g(z) from a line integral of the score (quadratic part exact)."""

    def energy_diff_fn(old, new):
        integral = score_line_integral(lambda p: score_fn(p, t_next), old.position, new.position,
                                       old.aux, new.aux, rule)
        step = new.position - old.position
        quad = 0.5 * jnp.vdot(step, new.position + old.position - 2.0 * center) / rho
        return -integral + quad

    return energy_diff_fn


def _common_plan(method, score_fn, dim, nfe, num_segments, num_inner_steps, t_min,
                 t_max, grid, inner_step_scale, evals_per_inner_step, default_inner_steps,
                 denoise, start):
    check_callable("score_fn", score_fn)
    dim = check_int("dim", dim)
    if nfe is not None:
        nfe = check_int("nfe", nfe, minimum=3)
    if num_segments is not None:
        num_segments = check_int("num_segments", num_segments)
    if num_inner_steps is not None:
        num_inner_steps = check_int("num_inner_steps", num_inner_steps)
    t_min, t_max = check_times(t_min, processes.default_t_max(dim) if t_max is None else t_max)
    if grid is not None:
        check_in("grid", grid, GRIDS)
    inner_step_scale = check_positive("inner_step_scale", inner_step_scale)
    denoise = check_bool("denoise", denoise)
    check_in("start", start, STARTS)
    num_segments, num_inner_steps = resolve_segments(
        nfe, num_segments, num_inner_steps, evals_per_inner_step, default_inner_steps)
    if grid is None:
        # the eta rule when it sets K; with K fixed (by the user or a budget), a log-SNR grid:
        # measured best or tied among the kinds on both benchmark mixtures at nfe = 100
        grid = "eta-rule" if num_segments is None else "log-snr"
    if num_segments is None and grid != "eta-rule":
        raise ValueError(f"grid={grid!r} needs num_segments or nfe")
    ts = rtk_grid(t_min, t_max, num_segments, grid)
    t_next = ts[1:]
    eta = ts[:-1] - ts[1:]
    rho = processes.rho(eta)
    # a bound on the Hessian of g: -hess log p_{t'} <= I / s_{t'}^2, plus the quadratic part
    lipschitz = 1.0 / processes.sigma2(t_next) + 1.0 / rho
    # the inner chain's start from score(x, t): the DDPM posterior step, or the
    # exponential-integrator step (one formula, baselines.ei_table)
    long = eta > LONG_SEGMENT if start == "auto" else np.full(eta.shape, start == "posterior")
    table = np.where(long[:, None], posterior_table(ts), ei_table(ts).weights[:, 0, :3])
    settings = dict(method=method, num_segments=len(eta), num_inner_steps=num_inner_steps,
                    denoise=denoise, start=start,
                    t_min=t_min, t_max=t_max, grid=grid, times=ts.tolist(),
                    inner_step_scale=inner_step_scale,
                    expected_nfe=1 + len(eta) * (1 + num_inner_steps * evals_per_inner_step))
    return dim, ts, t_next, eta, table, lipschitz, num_inner_steps, settings


def _finalize(t_min: float, denoise: bool):
    """The sample: the last position, or its Tweedie denoising with the cached score."""
    if not denoise:
        return lambda state: state.position
    return lambda state: processes.score_to_x0(state.aux, state.position, t_min)


def _diffusion_algorithm(score_fn, ts, make_step):
    """init (one score evaluation at x_T, counted in the first segment) and the segment step."""
    t_first = float(ts[0])

    def init_fn(position):
        score = score_fn(position, jnp.asarray(t_first, dtype=position.dtype))
        return DiffusionState(position, jnp.zeros((), jnp.int32), score)

    return SamplingAlgorithm(init_fn, make_step)


def _finish_segment(state, final_position, final_score, inner_ok, z0_ok, evals, energy_evals,
                    rounds, info, num_coins=0, num_clipped=0):
    """Assemble the next DiffusionState and its info; contain a non-finite start of segment."""
    first = (state.step == 0).astype(jnp.int32)
    position = jnp.where(z0_ok, final_position, state.position)
    score = jnp.where(z0_ok, final_score, state.aux)
    new_state = DiffusionState(position, state.step + 1, score)
    out = RTKDiffusionInfo(jnp.asarray(evals, jnp.int32) + first,
                           jnp.asarray(energy_evals, jnp.int32),
                           jnp.asarray(rounds, jnp.int32) + first,
                           ~z0_ok | ~inner_ok | info.is_divergent,
                           info.acceptance_rate, info.num_accepted,
                           jnp.asarray(num_coins, jnp.int32), jnp.asarray(num_clipped, jnp.int32))
    return new_state, out


def rtk_mala_plan(score_fn, *, dim: int, energy_fn=None, nfe: int | None = None,
                  num_segments: int | None = None, num_inner_steps: int | None = None,
                  t_min: float = 1e-3, t_max: float | None = None, grid: str | None = None,
                  inner_step_scale: float = 0.5, acceptance: str | None = None,
                  clip: float = 0.5, quadrature: str = "gauss-legendre", num_nodes: int = 1,
                  start: str = "auto", denoise: bool = True) -> DiffusionPlan:
    """RTK-MALA on a score: K segments, each S MALA steps on the exact reverse-kernel target.

    Per segment from t to t' = t - eta (rho = e^{2 eta} - 1, c = e^eta x):
        z_0 = e^eta x + 2 (e^eta - 1) score(x, t) + sqrt(rho) xi         (score(x, t) reused)
        S MALA steps on g(z) = f_{t'}(z) + |z - c|^2 / (2 rho), step tau_k = scale / L_k,
        L_k = 1 / s_{t'}^2 + 1 / rho (a bound on hess g).

    The Metropolis test needs g(z') - g(z); ``acceptance`` says where it comes from:

    - ``"energy"``: from ``energy_fn`` (exact; the inner chain leaves the segment's law invariant).
    - ``"factory"``: from scores only, exact up to the clip rate: MH on the trapezoid rule
      <grad g(z) + grad g(z'), z' - z> / 2 (free), then a Bernoulli-factory coin on unbiased
      one-score estimates of the trapezoid's error at a uniform point of the segment
      (:func:`scoresample.kernels.inner.mala_factory_step`). Each accepted move pays about e^-B
      and ``2 B`` expected extra scores; estimates with |W| > B are clipped (``num_clipped``).
    - ``"quadrature"``: -int_0^1 <score(z + u (z' - z), t'), z' - z> du + quadratic part by a
      ``quadrature`` rule with ``num_nodes`` interior nodes (approximate: exact for Gaussian data).

    Options:
        nfe: score-evaluation budget; spread equally over segments as in the paper,
            1 + K (1 + S c) <= nfe with c = 1 ("energy"), 1 + 2 (1 - e^-B) ("factory": the
            expected coin cost when the first stage accepts, met on average per particle) or
            1 + (quadrature nodes).
            Give at most two of ``nfe``, ``num_segments``, ``num_inner_steps``; with ``nfe`` alone
            segments come first (at least 24 when the budget allows, S between 1 and 3, then more
            segments; :func:`scoresample.kernels.rtk.grid.resolve_segments`).
        num_segments: K; without it (and without nfe) the eta rule of :func:`rtk_grid` sets K.
        num_inner_steps: S (default 3).
        t_min, t_max: the time interval (default t_max = ``default_t_max(dim)``).
        grid: "eta-rule" or a :func:`scoresample.processes.time_grid` kind. Default: "eta-rule" when
            the rule sets K, "log-snr" when K is given or follows from ``nfe`` (the best or tied
            kind on both benchmark mixtures at nfe = 100, see docs/benchmarks/rtk.md).
        inner_step_scale: the MALA step is ``inner_step_scale / L_k``.
        acceptance: "energy" (needs ``energy_fn``), "factory" or "quadrature"; default "energy"
            when ``energy_fn`` is given, else "factory".
        clip: B of the factory coin ("factory" only).
        quadrature, num_nodes: the line-integral rule ("quadrature" only,
            :func:`scoresample.kernels.inner.quadrature_rule`).
        start: the inner chain's start z_0: "ei" (the exponential-integrator step above),
            "posterior" (:func:`posterior_table`: the DDPM posterior step given Tweedie's
            denoiser, bounded for long segments but narrower; measured worse at nfe >= 50) or
            "auto" (default): "posterior" on segments longer than :data:`LONG_SEGMENT` in t
            (small budgets), "ei" on the others.
        denoise: return Tweedie's x0_hat = (x + s_{t_min}^2 score(x, t_min)) / a_{t_min} instead of
            x ~ p_{t_min}; free, since the last segment already evaluated that score.

    Example:
        >>> res = diffusion.sample(key, "rtk-mala", mix.score, dim=2, num_samples=1000, nfe=100,
        ...                        energy_fn=mix.energy)        # or acceptance="factory"
    """
    if acceptance is None:
        acceptance = "energy" if energy_fn is not None else "factory"
    check_in("acceptance", acceptance, ACCEPTANCES)
    clip = check_positive("clip", clip)
    rule = quadrature_rule(quadrature, num_nodes)
    if acceptance == "energy":
        if energy_fn is None:
            raise ValueError("acceptance='energy' needs energy_fn (or use acceptance='factory', "
                             "which needs scores only)")
        check_callable("energy_fn", energy_fn)
        evals_per_step = 1
    elif acceptance == "factory":
        max_poisson = default_max_poisson(clip)
        # a coin is heads with probability about 1/2, so with early rejection the coins of one
        # test cost sum_k P(J >= k) 2^(1-k) = 2 (1 - e^-B) evaluations in expectation, J ~
        # Poisson(2B), and fewer when the first stage rejects
        evals_per_step = 1 + 2 * -math.expm1(-clip)
    else:
        evals_per_step = 1 + rule.num_evals
    dim, ts, t_next_np, eta_np, start_np, lipschitz, num_inner_steps, settings = _common_plan(
        "rtk-mala", score_fn, dim, nfe, num_segments, num_inner_steps, t_min, t_max,
        grid, inner_step_scale, evals_per_step, 3, denoise, start)
    tau_np = inner_step_scale / lipschitz
    settings.update(acceptance=acceptance, inner_step_sizes=tau_np.tolist())
    if acceptance == "factory":
        settings.update(clip=clip, max_poisson=max_poisson)
    if acceptance == "quadrature":
        settings.update(quadrature=rule.name, num_nodes=rule.num_evals)
    use_energy = acceptance == "energy"
    t_next_all, eta_all, tau_all, start_all = (jnp.asarray(v)
                                            for v in (t_next_np, eta_np, tau_np, start_np))
    per_segment_energy = (1 + num_inner_steps) if use_energy else 0

    def step(rng_key, state):
        x, score_x = state.position, state.aux
        k = state.step
        dtype = x.dtype
        t_next, eta, tau = (v[k].astype(dtype) for v in (t_next_all, eta_all, tau_all))
        key_init, key_inner = jax.random.split(rng_key)
        rho = processes.rho(eta)
        center = jnp.exp(eta) * x
        z0 = _first_proposal(start_all[k].astype(dtype), x, score_x, key_init)
        potential_fn = _segment_potential(score_fn, energy_fn, t_next, center, rho, use_energy)
        start = init_inner(z0, potential_fn)
        z0_ok = all_finite(start)
        if acceptance == "factory":
            final, info = mala_factory_chain(key_inner, start, potential_fn, tau, num_inner_steps,
                                             clip, max_poisson=max_poisson)
            return _finish_segment(state, final.position, final.aux, all_finite(final.position),
                                   z0_ok, 1 + num_inner_steps + info.num_evals, 0,
                                   1 + num_inner_steps + info.num_rounds, info, info.num_coins,
                                   info.num_clipped)
        diff_fn = None if use_energy else _quadrature_energy_diff(score_fn, t_next, center, rho,
                                                                  rule)
        final, info = mala_chain(key_inner, start, potential_fn, tau, num_inner_steps, diff_fn)
        evals = 1 + num_inner_steps * evals_per_step
        return _finish_segment(state, final.position, final.aux, all_finite(final.position), z0_ok,
                               evals, per_segment_energy, 1 + num_inner_steps, info)

    algorithm = _diffusion_algorithm(score_fn, ts, step)
    return DiffusionPlan(lambda key: jax.random.normal(key, (dim,)), algorithm, len(eta_np),
                         _finalize(t_min, denoise), settings)


def rtk_uld_plan(score_fn, *, dim: int, energy_fn=None, nfe: int | None = None,
                 num_segments: int | None = None, num_inner_steps: int | None = None,
                 t_min: float = 1e-3, t_max: float | None = None, grid: str | None = None,
                 inner_step_scale: float = 1.0, friction: float = 4.0,
                 start: str = "auto", denoise: bool = True) -> DiffusionPlan:
    """RTK-ULD on a score: K segments, each S exact frozen-gradient ULD steps on the RTK target.

    Per segment: z_0 the DDPM one-step proposal (as in :func:`rtk_mala_plan`), v_0 ~ N(0, I), then S
    steps of :func:`scoresample.kernels.inner.uld_step` on g with tau_k = scale / sqrt(L_k) and
    friction gamma_k = friction * sqrt(L_k), L_k = 1/s_{t'}^2 + 1/rho_k, so gamma tau =
    scale * friction on every segment. The defaults (scale 1, friction 4: gamma tau = 4, close to
    the overdamped regime) measured best among (0.5, 2), (0.7, 2), (0.5, 4), (1, 4) on both benchmark
    mixtures at nfe = 100. Unadjusted (no energy needed): at the defaults, a Gaussian subproblem's
    stationary covariance is overestimated by at most :data:`RTK_ULD_COV_BIAS`. Cost 1 + K (1 + S).
    ``energy_fn`` is accepted and ignored. Other options (``start`` included) as in
    :func:`rtk_mala_plan`.
    """
    del energy_fn
    friction = check_positive("friction", friction)
    dim, ts, t_next_np, eta_np, start_np, lipschitz, num_inner_steps, settings = _common_plan(
        "rtk-uld", score_fn, dim, nfe, num_segments, num_inner_steps, t_min, t_max, grid,
        inner_step_scale, 1, 3, denoise, start)
    tau_np = inner_step_scale / np.sqrt(lipschitz)
    gamma_np = friction * np.sqrt(lipschitz)
    settings.update(friction=friction, inner_step_sizes=tau_np.tolist(),
                    frictions=gamma_np.tolist())
    t_next_all, eta_all, tau_all, gamma_all, start_all = (
        jnp.asarray(v) for v in (t_next_np, eta_np, tau_np, gamma_np, start_np))
    per_segment_evals = 1 + num_inner_steps

    def step(rng_key, state):
        x, score_x = state.position, state.aux
        k = state.step
        dtype = x.dtype
        t_next, eta, tau, gamma = (v[k].astype(dtype)
                                   for v in (t_next_all, eta_all, tau_all, gamma_all))
        key_init, key_v, key_inner = jax.random.split(rng_key, 3)
        rho = processes.rho(eta)
        center = jnp.exp(eta) * x
        z0 = _first_proposal(start_all[k].astype(dtype), x, score_x, key_init)
        potential_fn = _segment_potential(score_fn, None, t_next, center, rho, False)
        _, grad0, score0 = potential_fn(z0)
        start = ULDState(z0, jax.random.normal(key_v, x.shape, dtype=dtype), grad0, score0)
        z0_ok = all_finite(start)
        final, info = uld_chain(key_inner, start, potential_fn, tau, gamma, num_inner_steps)
        return _finish_segment(state, final.position, final.aux, all_finite(final.position), z0_ok,
                               per_segment_evals, 0, 1 + num_inner_steps, info)

    algorithm = _diffusion_algorithm(score_fn, ts, step)
    return DiffusionPlan(lambda key: jax.random.normal(key, (dim,)), algorithm, len(eta_np),
                         _finalize(t_min, denoise), settings)
