"""The baseline diffusion samplers: DDPM (Li-Yan and sigma^2 = beta), exponential integrator,
Heun on the probability-flow ODE, DDIM and DPM-Solver++(2M).

Every baseline is one score evaluation followed by a linear combination. A kernel step k evaluates
s = score_fn(x, t_k) at the current position and forms, with z ~ N(0, I) and the carried vectors
``aux`` (the previous denoiser of DPM-Solver++, the start and slope of a Heun step),

    [x', aux'] = W_k [x, s, z, aux]            (one row of coefficients per output vector)

so each method is a coefficient table (``StepTable``: times t_k and matrices W_k, float64 numpy
built with expm1/log1p) and a single kernel runs them all. A step of the kernel is one evaluation:
a Heun step is two kernel steps, and the optional final Tweedie step x0 = (x + s_t^2 s) / a_t is one
more. Hence ``num_grad_evals`` is exactly 1 per kernel step and the budget ``nfe`` is spent exactly.

Update rules (forward OU process dX = -X dt + sqrt(2) dB, a_t = e^-t, s_t^2 = 1 - e^-2t,
lambda_t = log(a_t / s_t); the reverse time runs from t_max down to t_min):

- DDPM (Ho et al. 2020) on the Li-Yan schedule beta_k (:func:`scoresample.processes.li_yan_schedule`,
  OU time t_k = -0.5 log abar_k), for k = T, ..., 2 (so T - 1 = nfe evaluations; the output is Y_1,
  a draw of p_{t_1}, t_1 = -0.5 log(1 - T^-c0)):
      Y <- (Y + beta_k score(Y, t_k) + sigma_k Z) / sqrt(alpha_k)
  with sigma_k^2 = beta_k alpha_k (1 - abar_{k-1}) / (1 - abar_k) ("ddpm", Li and Yan 2024, which
  adapts to low intrinsic dimension) or sigma_k^2 = beta_k ("ddpm-large").
- Exponential integrator (Chen et al. 2023), score frozen on a step h = t_k - t_{k+1}:
      Y <- e^h Y + 2 (e^h - 1) score(Y, t_k) + sqrt(e^{2h} - 1) Z.
- Heun on the probability-flow ODE dY/dtau = Y + score(Y, t) (tau = reverse time), by default in
  EDM's coordinates x~ = Y / a_t, sigma_t = sqrt(e^{2t} - 1), where the ODE is
  dx~/dsigma = -s_t score(Y, t) =: d(Y, t) (Karras et al. 2022):
      x~_e = x~ + (sigma' - sigma) d(Y, t),  x~ <- x~ + (sigma' - sigma) (d(Y, t) + d(Y_e, t')) / 2;
  with an odd budget the last step is the Euler step (which is the DDIM step).
- DDIM (eta = 0, Song et al. 2021) and DPM-Solver++(2M) (Lu et al. 2022) in the data prediction
  m = (Y + s_t^2 score) / a_t, with h = lambda_{k+1} - lambda_k and r = h_{k-1} / h:
      Y <- (s_{k+1} / s_k) Y - a_{k+1} expm1(-h) (m_k + (m_k - m_{k-1}) / (2 r))
  (DDIM: the bracket is m_k; DPM-Solver++(2M) uses DDIM on its first step).

Default grids: ei, pf-ode and ddim "sqrt", dpm-solver++ "log-snr" (the best kinds at small budgets
in a sweep on the exact mixtures, see the algorithm page docs/algorithms/baselines.md). Defaults
t_min = 1e-3 and t_max = ``processes.default_t_max(dim)`` = 0.5 log((dim + 1) / 1e-4) (5.15 in 2-D,
6.0 in 16-D).

Each plan function (``ddpm_plan``, ``ddpm_large_plan``, ``ei_plan``, ``pf_ode_plan``, ``ddim_plan``,
``dpm_solver_pp_plan``) validates its options and returns a :class:`scoresample.base.DiffusionPlan`;
:func:`scoresample.diffusion.sample` runs it.

Example:
    >>> from scoresample import diffusion, targets
    >>> mix = targets.four_modes_2d()
    >>> res = diffusion.sample(jax.random.key(0), "dpm-solver++", mix.score, dim=2,
    ...                        num_samples=1000, nfe=20)
    >>> res.nfe
    20.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
    check_in,
    check_int,
    check_positive,
    check_times,
)

__all__ = [
    "StepTable",
    "BaselineInfo",
    "init",
    "build_kernel",
    "as_top_level_api",
    "ddpm_table",
    "ei_table",
    "heun_table",
    "ddim_table",
    "dpm_solver_pp_table",
    "ddpm_plan",
    "ddpm_large_plan",
    "ei_plan",
    "pf_ode_plan",
    "ddim_plan",
    "dpm_solver_pp_plan",
    "DEFAULT_T_MIN",
]

Array = jax.Array

DEFAULT_T_MIN = 1e-3

# Columns of a coefficient row: the current position, the score there, the Gaussian noise; then aux.
_X, _S, _Z, _AUX = 0, 1, 2, 3


class StepTable(NamedTuple):
    """The coefficients of a one-evaluation linear sampler.

    Step k evaluates the score at (position, ``times[k]``) and sets
    ``[position, aux] = weights[k] @ [position, score, noise, aux]``.
    """

    times: np.ndarray  # shape=(K,), float64: where step k evaluates the score
    weights: np.ndarray  # shape=(K, 1 + num_aux, 3 + num_aux), float64

    @property
    def num_steps(self) -> int:
        return int(self.times.shape[0])

    @property
    def num_aux(self) -> int:
        return int(self.weights.shape[1] - 1)


class BaselineInfo(NamedTuple):
    num_grad_evals: Array  # shape=(), int32: score evaluations executed in the step (always 1)
    num_rounds: Array  # shape=(), int32: sequential rounds of evaluation (always 1)
    is_divergent: Array  # shape=(), bool: the update was non-finite and the step was rejected


# ----- BlackJAX layers ---------------------------------------------------------------------------


def init(position, table: StepTable) -> DiffusionState:
    """The state at the first grid time: ``aux`` zero-filled to (num_aux, d)."""
    position = jnp.asarray(position)
    aux = jnp.zeros((table.num_aux,) + position.shape, dtype=position.dtype)
    return DiffusionState(position, jnp.zeros((), jnp.int32), aux)


def build_kernel() -> Callable:
    """Build the kernel of the one-evaluation linear samplers.

    Returns:
        ``kernel(rng_key, state, score_fn, table) -> (state, BaselineInfo)``. A non-finite update is
        rejected (position and aux are kept, the step index still advances) and flagged.
    """

    def kernel(rng_key, state: DiffusionState, score_fn: Callable, table: StepTable):
        x = state.position
        k = state.step
        t = jnp.asarray(table.times, x.dtype)[k]
        w = jnp.asarray(table.weights, x.dtype)[k]  # (1 + m, 3 + m)
        score = score_fn(x, t)
        noise = jax.random.normal(rng_key, x.shape, x.dtype)
        inputs = jnp.concatenate([jnp.stack([x, score, noise]), state.aux], axis=0)
        out = jnp.tensordot(w, inputs, axes=1)  # (1 + m, d)
        is_ok = all_finite(out)
        position = jnp.where(is_ok, out[0], x)
        aux = jnp.where(is_ok, out[1:], state.aux)
        info = BaselineInfo(jnp.ones((), jnp.int32), jnp.ones((), jnp.int32), ~is_ok)
        return DiffusionState(position, k + 1, aux), info

    return kernel


def as_top_level_api(score_fn: Callable, table: StepTable) -> SamplingAlgorithm:
    """Close the kernel over ``score_fn`` and a coefficient table.

    ``init(position, rng_key=None)`` (the key is unused, accepted for
    ``blackjax.util.run_inference_algorithm``) and ``step(rng_key, state)``.
    """
    kernel = build_kernel()

    def init_fn(position, rng_key=None):
        del rng_key
        return init(position, table)

    return SamplingAlgorithm(init_fn, lambda rng_key, state: kernel(rng_key, state, score_fn, table))


# ----- coefficient tables (float64 numpy) ----------------------------------------------------------


def _rows(num_steps: int, num_aux: int) -> np.ndarray:
    return np.zeros((num_steps, 1 + num_aux, 3 + num_aux), dtype=np.float64)


def _tweedie_row(t: float, num_aux: int) -> np.ndarray:
    """x0_hat = (x + s_t^2 score) / a_t; aux is left as it is."""
    w = np.zeros((1 + num_aux, 3 + num_aux))
    a, s2 = processes.alpha(t), processes.sigma2(t)
    w[0, _X], w[0, _S] = 1.0 / a, s2 / a
    for j in range(num_aux):
        w[1 + j, _AUX + j] = 1.0
    return w


def _with_denoise(table: StepTable, t_final: float) -> StepTable:
    times = np.append(table.times, t_final)
    weights = np.concatenate([table.weights, _tweedie_row(t_final, table.num_aux)[None]], axis=0)
    return StepTable(times, weights)


def ddpm_table(num_steps: int, c0: float = 2.0, c1: float = 4.0, variance: str = "li-yan"):
    """DDPM ancestral steps k = T, ..., 2 on the Li-Yan schedule with T = num_steps + 1.

    Returns ``(table, t_out)`` where t_out = t_1 is the time of the output's law.
    """
    check_in("variance", variance, ("li-yan", "beta"))
    betas, _, times = processes.li_yan_schedule(num_steps + 1, c0, c1)
    one_minus_abar = processes.sigma2(times)  # 1 - abar_k = s_{t_k}^2, index 0 is k = 1
    w = _rows(num_steps, 0)
    eval_times = np.empty(num_steps)
    for row, i in enumerate(range(num_steps, 0, -1)):  # i = k - 1 for k = T, ..., 2
        beta = betas[i]
        alpha = 1.0 - beta
        if variance == "li-yan":
            var = beta * alpha * one_minus_abar[i - 1] / one_minus_abar[i]
        else:
            var = beta
        w[row, 0, _X] = 1.0 / math.sqrt(alpha)
        w[row, 0, _S] = beta / math.sqrt(alpha)
        w[row, 0, _Z] = math.sqrt(var / alpha)
        eval_times[row] = times[i]
    return StepTable(eval_times, w), float(times[0])


def ei_table(ts: np.ndarray) -> StepTable:
    """Exponential-integrator steps along the decreasing grid ``ts`` (len(ts) - 1 steps)."""
    h = ts[:-1] - ts[1:]
    w = _rows(h.shape[0], 0)
    w[:, 0, _X] = np.exp(h)
    w[:, 0, _S] = 2.0 * np.expm1(h)
    w[:, 0, _Z] = np.sqrt(processes.rho(h))  # sqrt(e^{2h} - 1)
    return StepTable(np.asarray(ts[:-1], np.float64), w)


def heun_table(ts: np.ndarray, last_euler: bool, coordinates: str = "scaled") -> StepTable:
    """Heun steps of the probability-flow ODE along ``ts``, two kernel steps each.

    ``coordinates="scaled"`` (Karras et al. 2022, EDM): Heun on dx~/dsigma = (x~ - m(x, t)) / sigma
    = -s_t score(x, t) with x~ = x / a_t and sigma_t = sqrt(e^{2t} - 1); its Euler step is exactly
    DDIM, and directions where the data has no variance are integrated exactly.
    ``coordinates="time"``: Heun on dY/dtau = Y + score(Y, t) in the time variable itself.
    aux = [Y, score(Y)] holds the start of the Heun step; with ``last_euler`` the last interval is
    one Euler step.
    """
    check_in("coordinates", coordinates, ("scaled", "time"))
    ts = np.asarray(ts, np.float64)
    num_heun = ts.shape[0] - 1 - (1 if last_euler else 0)
    rows, times = [], []
    for j in range(ts.shape[0] - 1):
        t0, t1 = float(ts[j]), float(ts[j + 1])
        predictor = np.zeros((3, 5))
        corrector = np.zeros((3, 5))
        predictor[1, _X] = 1.0  # aux_Y <- Y
        predictor[2, _S] = 1.0  # aux_s <- s
        if coordinates == "time":
            h = t0 - t1
            predictor[0, _X], predictor[0, _S] = 1.0 + h, h  # Y~ = Y + h (Y + s)
            # Y + h/2 (Y + s1) + h/2 (Y~ + s2), with Y, s1 from aux and Y~, s2 the current ones.
            corrector[0, _X], corrector[0, _S] = 0.5 * h, 0.5 * h
            corrector[0, _AUX], corrector[0, _AUX + 1] = 1.0 + 0.5 * h, 0.5 * h
        else:
            ratio = math.exp(t0 - t1)  # a_{t1} / a_{t0}
            a1 = processes.alpha(t1)
            s0, s1 = processes.sigma(t0), processes.sigma(t1)
            dsigma = math.sqrt(processes.rho(t1)) - math.sqrt(processes.rho(t0))
            # x~' = x~ + dsigma d1, d = -s_t score; back to x by a_{t1}
            predictor[0, _X], predictor[0, _S] = ratio, -a1 * dsigma * s0
            corrector[0, _S] = -0.5 * a1 * dsigma * s1
            corrector[0, _AUX], corrector[0, _AUX + 1] = ratio, -0.5 * a1 * dsigma * s0
        for k in range(2):  # the corrector keeps aux
            corrector[1 + k, _AUX + k] = 1.0
        rows.append(predictor)
        times.append(t0)
        if j < num_heun:
            rows.append(corrector)
            times.append(t1)
    return StepTable(np.asarray(times, np.float64), np.stack(rows))


def _data_prediction_coefficients(t_s: float, t_t: float):
    """(s_t / s_s, -a_t expm1(-h)) with h = lambda_t - lambda_s: x_t = c_x x_s + c_m m."""
    h = float(processes.log_snr(t_t) - processes.log_snr(t_s))
    c_x = math.sqrt(processes.sigma2(t_t) / processes.sigma2(t_s))
    c_m = -processes.alpha(t_t) * math.expm1(-h)
    return c_x, c_m, h


def _multistep_table(ts: np.ndarray, order: int) -> StepTable:
    """DDIM (order 1) or DPM-Solver++(2M) (order 2, first step order 1); aux = [m_prev]."""
    num = ts.shape[0] - 1
    w = _rows(num, 1)
    h_prev = None
    for j in range(num):
        t_s, t_t = float(ts[j]), float(ts[j + 1])
        a_s, s2_s = processes.alpha(t_s), processes.sigma2(t_s)
        c_x, c_m, h = _data_prediction_coefficients(t_s, t_t)
        # weight on m_s and on m_prev; m_s = (x + s_s^2 score) / a_s
        if order == 2 and h_prev is not None:
            r = h_prev / h
            w_cur, w_prev = c_m * (1.0 + 0.5 / r), -c_m * 0.5 / r
        else:
            w_cur, w_prev = c_m, 0.0
        w[j, 0, _X] = c_x + w_cur / a_s
        w[j, 0, _S] = w_cur * s2_s / a_s
        w[j, 0, _AUX] = w_prev
        w[j, 1, _X], w[j, 1, _S] = 1.0 / a_s, s2_s / a_s  # m_prev <- m_s
        h_prev = h
    return StepTable(np.asarray(ts[:-1], np.float64), w)


def ddim_table(ts: np.ndarray) -> StepTable:
    return _multistep_table(ts, order=1)


def dpm_solver_pp_table(ts: np.ndarray) -> StepTable:
    return _multistep_table(ts, order=2)


# ----- plans ------------------------------------------------------------------------------------


def _resolve_times(dim, t_min, t_max):
    return check_times(DEFAULT_T_MIN if t_min is None else t_min,
                       processes.default_t_max(dim) if t_max is None else t_max)


def _make_plan(score_fn, dim: int, table: StepTable, settings: dict) -> DiffusionPlan:
    algorithm = as_top_level_api(score_fn, table)
    dtype = jnp.result_type(float)

    def init_position(rng_key):
        return jax.random.normal(rng_key, (dim,), dtype=dtype)

    settings = dict(settings, num_steps=table.num_steps, evaluation_times=table.times)
    return DiffusionPlan(init_position, algorithm, table.num_steps, lambda state: state.position,
                         settings)


def _ddpm(score_fn, dim, variance, nfe, c0, c1, denoise, t_min, t_max, method):
    check_int("dim", dim)
    nfe = check_int("nfe", nfe)
    c0 = check_positive("c0", c0)
    c1 = check_positive("c1", c1)
    denoise = check_bool("denoise", denoise)
    for name, value in (("t_min", t_min), ("t_max", t_max)):
        if value is not None:
            raise ValueError(f"{name} is not an option of {method!r}: its times are those of the Li-Yan "
                             "schedule (set nfe, c0, c1); t_min = -0.5 log(1 - (nfe + 1)^-c0)")
    table, t_out = ddpm_table(nfe, c0, c1, variance)
    if denoise:
        table = _with_denoise(table, t_out)
    settings = dict(method=method, nfe=nfe, c0=c0, c1=c1, denoise=denoise, t_min=t_out,
                    t_max=float(table.times[0]), schedule_length=nfe + 1)
    return _make_plan(score_fn, dim, table, settings)


def ddpm_plan(score_fn, *, dim: int, energy_fn=None, nfe: int = 100, c0: float = 2.0, c1: float = 4.0,
              denoise: bool = False, t_min=None, t_max=None) -> DiffusionPlan:
    """DDPM ancestral sampling with the Li-Yan variance
    sigma_k^2 = beta_k alpha_k (1 - abar_{k-1}) / (1 - abar_k).

    Li and Yan, "Adapting to unknown low-dimensional structures in score-based diffusion models",
    NeurIPS 2024. The chain runs k = T, ..., 2 on the Li-Yan schedule with T = nfe + 1, so it takes
    nfe steps and nfe evaluations; its times are the schedule's (t_max = -0.5 log abar_T, output at
    t_1 = -0.5 log(1 - T^-c0)), so ``t_min``/``t_max`` are rejected.

    Args:
        score_fn: score_fn(x, t) for one point x of shape (dim,).
        dim: data dimension.
        energy_fn: unused.
        nfe: score evaluations per sample (= steps).
        c0, c1: schedule constants (beta_1 = T^-c0, growth rate c1 log T / T).
        denoise: add a final Tweedie step at t_1 (one more evaluation, counted).
    """
    del energy_fn
    return _ddpm(score_fn, dim, "li-yan", nfe, c0, c1, denoise, t_min, t_max, "ddpm")


def ddpm_large_plan(score_fn, *, dim: int, energy_fn=None, nfe: int = 100, c0: float = 2.0,
                    c1: float = 4.0, denoise: bool = False, t_min=None, t_max=None) -> DiffusionPlan:
    """DDPM ancestral sampling with sigma_k^2 = beta_k (score_sde's "ancestral"), Li-Yan schedule.

    Same schedule, steps and options as :func:`ddpm_plan`; this variance does not adapt to a low
    intrinsic dimension (about 9e-3 KL per null direction at T = 100).
    """
    del energy_fn
    return _ddpm(score_fn, dim, "beta", nfe, c0, c1, denoise, t_min, t_max, "ddpm-large")


def _grid_plan(score_fn, dim, method, nfe, t_min, t_max, grid, denoise, make_table, steps_for):
    check_int("dim", dim)
    nfe = check_int("nfe", nfe)
    t_min, t_max = _resolve_times(dim, t_min, t_max)
    check_in("grid", grid, processes.GRID_KINDS)
    denoise = check_bool("denoise", denoise)
    num_intervals = steps_for(nfe)
    ts = processes.time_grid(num_intervals, t_min, t_max, grid)
    table = make_table(ts, nfe)
    if table.num_steps != nfe:  # pragma: no cover - guards the bookkeeping of every table
        raise AssertionError(f"{method}: table has {table.num_steps} evaluations, budget {nfe}")
    if denoise:
        table = _with_denoise(table, t_min)
    settings = dict(method=method, nfe=nfe, t_min=t_min, t_max=t_max, grid=grid, denoise=denoise,
                    num_intervals=num_intervals, time_grid=ts)
    return _make_plan(score_fn, dim, table, settings)


def ei_plan(score_fn, *, dim: int, energy_fn=None, nfe: int = 100, t_min: float | None = None,
            t_max: float | None = None, grid: str = "sqrt", denoise: bool = False) -> DiffusionPlan:
    """Exponential integrator for the reverse SDE: Y <- e^h Y + 2 (e^h - 1) score + sqrt(e^{2h} - 1) Z.

    Chen, Chewi, Li, Li, Salim, Zhang, "Sampling is as easy as learning the score", ICLR 2023.
    nfe steps on ``processes.time_grid(nfe, t_min, t_max, grid)``.

    Args:
        nfe: evaluations per sample (= steps).
        t_min: final time (default 1e-3).
        t_max: initial time (default ``processes.default_t_max(dim)`` = 0.5 log((dim + 1) / 1e-4)).
        grid: "uniform", "geometric" (uniform in log t), "sqrt" (default; uniform in sqrt t) or
            "log-snr" (uniform in lambda).
        denoise: add a final Tweedie step at t_min (one more evaluation, counted).
    """
    del energy_fn
    return _grid_plan(score_fn, dim, "ei", nfe, t_min, t_max, grid, denoise,
                      lambda ts, nfe: ei_table(ts), lambda nfe: nfe)


def pf_ode_plan(score_fn, *, dim: int, energy_fn=None, nfe: int = 100, t_min: float | None = None,
                t_max: float | None = None, grid: str = "sqrt", coordinates: str = "scaled",
                denoise: bool = False) -> DiffusionPlan:
    """Heun's method on the probability-flow ODE dY/dtau = Y + score(Y, t).

    Karras, Aittala, Aila, Laine, "Elucidating the design space of diffusion-based generative
    models" (EDM), NeurIPS 2022. Two evaluations per step. An even ``nfe`` gives nfe / 2 Heun steps;
    an odd ``nfe`` gives (nfe - 1) / 2 Heun steps and a last Euler step (EDM's convention), so
    exactly nfe evaluations.

    Args:
        nfe: evaluations per sample.
        t_min, t_max: as in :func:`ei_plan`.
        grid: grid kind (default "sqrt").
        coordinates: "scaled" (default; EDM's x / a_t against sigma_t = sqrt(e^{2t} - 1), stable
            in directions where the data has no variance) or "time" (Heun in t on Y itself, which
            blows up there at small budgets: 16-D data on a 2-D subspace at nfe = 10).
        denoise: add a final Tweedie step at t_min (one more evaluation, counted).
    """
    del energy_fn
    check_in("coordinates", coordinates, ("scaled", "time"))
    plan = _grid_plan(score_fn, dim, "pf-ode", nfe, t_min, t_max, grid, denoise,
                      lambda ts, nfe: heun_table(ts, nfe % 2 == 1, coordinates),
                      lambda nfe: (nfe + 1) // 2)
    return plan._replace(settings=dict(plan.settings, coordinates=coordinates))


def ddim_plan(score_fn, *, dim: int, energy_fn=None, nfe: int = 100, t_min: float | None = None,
              t_max: float | None = None, grid: str = "sqrt", denoise: bool = False) -> DiffusionPlan:
    """DDIM with eta = 0: Y <- (s_t / s_s) Y - a_t expm1(-h) m_s, m_s the Tweedie denoiser at s.

    Song, Meng, Ermon, "Denoising diffusion implicit models", ICLR 2021 (the first-order
    DPM-Solver++ step). nfe steps on the grid; options as in :func:`ei_plan` (default grid "sqrt").
    """
    del energy_fn
    return _grid_plan(score_fn, dim, "ddim", nfe, t_min, t_max, grid, denoise,
                      lambda ts, nfe: ddim_table(ts), lambda nfe: nfe)


def dpm_solver_pp_plan(score_fn, *, dim: int, energy_fn=None, nfe: int = 100,
                       t_min: float | None = None, t_max: float | None = None, grid: str = "log-snr",
                       denoise: bool = False) -> DiffusionPlan:
    """DPM-Solver++(2M): second-order multistep in the data prediction, first step DDIM.

    Lu, Zhou, Bao, Chen, Li, Zhu, "DPM-Solver++: Fast solver for guided sampling of diffusion
    probabilistic models", 2022. With h = lambda_t - lambda_s, r = h_prev / h and
    D = (m_s - m_prev) / r: Y <- (s_t / s_s) Y - a_t expm1(-h) (m_s + D / 2); the previous denoiser
    m_prev is carried in ``DiffusionState.aux``. nfe steps; options as in :func:`ei_plan`, but the
    default grid is "log-snr" (uniform in lambda, DPM-Solver's choice).
    """
    del energy_fn
    return _grid_plan(score_fn, dim, "dpm-solver++", nfe, t_min, t_max, grid, denoise,
                      lambda ts, nfe: dpm_solver_pp_table(ts), lambda nfe: nfe)
