"""Critically damped Langevin diffusion (CLD) sampled with SSCS (symmetric splitting CLD sampler).

Dockhorn, Vahdat, Kreis, "Score-based generative modeling with critically-damped Langevin
diffusion", ICLR 2022. The process, its constants (M^-1 = 4, Gamma = 1, beta = 4, v_0 ~ N(0, 0.01 I))
and the closed-form 2 x 2 flows live in :mod:`scoresample.processes.cld`. A network (or the exact
:class:`scoresample.targets.CLDMixture`) gives only the velocity score
``velocity_score_fn(x, v, t) = grad_v log p_t(x, v)``.

The generative SDE splits into an exactly solvable linear part (L) and a score part (S):

    (L)  dx = -beta M^-1 v dt,  dv = beta (x - Gamma M^-1 v) dt + sqrt(2 Gamma beta) dB
    (S)  dv = 2 Gamma beta (velocity_score(x, v, t) + M^-1 v) dt

One SSCS step from t to t - h (one score evaluation):

    (x, v) <- E(h/2) (x, v) + N(0, Q(h/2))                       exact half step of (L)
    v      <- v + 2 Gamma beta h (velocity_score(x, v, t - h/2) + M^-1 v)     Euler step of (S)
    (x, v) <- E(h/2) (x, v) + N(0, Q(h/2))                       exact half step of (L)

The score is taken at the step's midpoint time (symmetric splitting; Dockhorn's code uses the
start of the step). Sampling starts from the stationary law N(0, I) x N(0, M I) at t_max (default 1,
Dockhorn's horizon) and returns x at t_min (default 1e-3), on a grid uniform in sqrt t by default.
:func:`cld_plan` builds the plan; :func:`scoresample.diffusion.cld` runs it.

Example:
    >>> from scoresample import diffusion, targets
    >>> exact = targets.CLDMixture(targets.four_modes_2d())
    >>> res = diffusion.cld(jax.random.key(0), exact.velocity_score, dim=2, num_samples=1000, nfe=100)
"""

from __future__ import annotations

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
    check_callable,
    check_int,
    check_times,
)
from scoresample.processes.cld import BETA, GAMMA, MASS_INV, STATIONARY_V_VAR, reverse_linear_flow

__all__ = ["SSCSTable", "SSCSInfo", "init", "build_kernel", "as_top_level_api", "sscs_table",
           "cld_plan", "DEFAULT_T_MIN", "DEFAULT_T_MAX"]

Array = jax.Array

DEFAULT_T_MIN = 1e-3
DEFAULT_T_MAX = 1.0


class SSCSTable(NamedTuple):
    """Per-step constants of SSCS: score times, step sizes and the half-step linear flows."""

    score_times: np.ndarray  # shape=(K,): t_k - h_k / 2
    step_sizes: np.ndarray  # shape=(K,): h_k
    half_flow: np.ndarray  # shape=(K, 2, 2): E(h_k / 2) acting on (x, v)
    half_chol: np.ndarray  # shape=(K, 2, 2): lower Cholesky factor of Q(h_k / 2)

    @property
    def num_steps(self) -> int:
        return int(self.step_sizes.shape[0])


class SSCSInfo(NamedTuple):
    num_grad_evals: Array  # shape=(), int32: velocity-score evaluations in the step (1)
    num_rounds: Array  # shape=(), int32
    is_divergent: Array  # shape=(), bool: a non-finite update was rejected


def sscs_table(ts: np.ndarray) -> SSCSTable:
    """SSCS constants along a decreasing time grid ``ts`` (len(ts) - 1 steps), float64."""
    ts = np.asarray(ts, np.float64)
    h = ts[:-1] - ts[1:]
    flows, chols = [], []
    for hk in h:
        expm, cov = reverse_linear_flow(0.5 * float(hk))
        flows.append(expm)
        chols.append(np.linalg.cholesky(cov))
    return SSCSTable(ts[:-1] - 0.5 * h, h, np.stack(flows), np.stack(chols))


def init(position) -> DiffusionState:
    """``position`` is the pair (x, v)."""
    x, v = position
    return DiffusionState((jnp.asarray(x), jnp.asarray(v)), jnp.zeros((), jnp.int32), ())


def _half_linear(x, v, flow, chol, noise):
    x_new = flow[0, 0] * x + flow[0, 1] * v + chol[0, 0] * noise[0]
    v_new = flow[1, 0] * x + flow[1, 1] * v + chol[1, 0] * noise[0] + chol[1, 1] * noise[1]
    return x_new, v_new


def build_kernel() -> Callable:
    """Build the SSCS kernel.

    Returns:
        ``kernel(rng_key, state, velocity_score_fn, table) -> (state, SSCSInfo)``; a non-finite
        update is rejected (the old (x, v) is kept, the step index advances) and flagged.
    """

    def kernel(rng_key, state: DiffusionState, velocity_score_fn: Callable, table: SSCSTable):
        x, v = state.position
        k = state.step
        dtype = x.dtype
        flow = jnp.asarray(table.half_flow, dtype)[k]
        chol = jnp.asarray(table.half_chol, dtype)[k]
        h = jnp.asarray(table.step_sizes, dtype)[k]
        t_mid = jnp.asarray(table.score_times, dtype)[k]
        key_a, key_b = jax.random.split(rng_key)
        noise_a = jax.random.normal(key_a, (2,) + x.shape, dtype)
        noise_b = jax.random.normal(key_b, (2,) + x.shape, dtype)
        x1, v1 = _half_linear(x, v, flow, chol, noise_a)
        score_v = velocity_score_fn(x1, v1, t_mid)
        v2 = v1 + 2.0 * GAMMA * BETA * h * (score_v + MASS_INV * v1)
        x3, v3 = _half_linear(x1, v2, flow, chol, noise_b)
        is_ok = all_finite((x3, v3))
        position = (jnp.where(is_ok, x3, x), jnp.where(is_ok, v3, v))
        info = SSCSInfo(jnp.ones((), jnp.int32), jnp.ones((), jnp.int32), ~is_ok)
        return DiffusionState(position, k + 1, ()), info

    return kernel


def as_top_level_api(velocity_score_fn: Callable, table: SSCSTable) -> SamplingAlgorithm:
    """Close the SSCS kernel over the velocity score and the step table.

    ``init((x, v), rng_key=None)`` and ``step(rng_key, state)``.
    """
    kernel = build_kernel()

    def init_fn(position, rng_key=None):
        del rng_key
        return init(position)

    return SamplingAlgorithm(init_fn,
                             lambda rng_key, state: kernel(rng_key, state, velocity_score_fn, table))


def _check_velocity_score_fn(fn, dim):
    check_callable("velocity_score_fn", fn)
    spec = jax.ShapeDtypeStruct((dim,), jnp.result_type(float))
    try:
        out = jax.eval_shape(fn, spec, spec, jax.ShapeDtypeStruct((), jnp.result_type(float)))
    except Exception as err:  # a shape error inside the user's function: report it as theirs
        raise ValueError(f"velocity_score_fn(x, v, t) failed for x, v of shape ({dim},) and a scalar "
                         f"t (is dim={dim} right?): {err}") from err
    if getattr(out, "shape", None) != (dim,):
        raise ValueError(f"velocity_score_fn(x, v, t) must return shape ({dim},) for x, v of shape "
                         f"({dim},), got {getattr(out, 'shape', type(out).__name__)}")


def cld_plan(velocity_score_fn, *, dim: int, nfe: int = 100, t_min: float | None = None,
             t_max: float | None = None, grid: str = "sqrt") -> DiffusionPlan:
    """Validate the options and build the SSCS plan (nothing is compiled).

    Args:
        velocity_score_fn: ``velocity_score_fn(x, v, t) -> grad_v log p_t(x, v)``, x and v of shape (dim,).
        dim: data dimension.
        nfe: velocity-score evaluations per sample (= SSCS steps).
        t_min: final time (default 1e-3).
        t_max: initial time (default 1.0, Dockhorn et al.'s horizon with beta = 4).
        grid: a :data:`scoresample.processes.GRID_KINDS` kind (default "sqrt": uniform in sqrt t,
            Dockhorn et al.'s "quadratic striding"; the uniform grid is unstable at small budgets
            where the data has directions without variance: the Euler step on the velocity score is
            stiff near t_min there).

    Returns:
        A :class:`scoresample.base.DiffusionPlan` whose state position is (x, v) and whose
        ``finalize`` returns x.
    """
    dim = check_int("dim", dim)
    _check_velocity_score_fn(velocity_score_fn, dim)
    nfe = check_int("nfe", nfe)
    t_min, t_max = check_times(DEFAULT_T_MIN if t_min is None else t_min,
                               DEFAULT_T_MAX if t_max is None else t_max)
    ts = processes.time_grid(nfe, t_min, t_max, grid)  # checks grid
    table = sscs_table(ts)
    dtype = jnp.result_type(float)

    def init_position(rng_key):
        key_x, key_v = jax.random.split(rng_key)
        x = jax.random.normal(key_x, (dim,), dtype)
        v = jnp.sqrt(jnp.asarray(STATIONARY_V_VAR, dtype)) * jax.random.normal(key_v, (dim,), dtype)
        return (x, v)

    settings = dict(method="cld", sampler="sscs", nfe=nfe, t_min=t_min, t_max=t_max, grid=grid,
                    num_steps=table.num_steps, time_grid=ts, mass_inv=MASS_INV, gamma=GAMMA,
                    beta=BETA)
    return DiffusionPlan(init_position, as_top_level_api(velocity_score_fn, table), table.num_steps,
                         lambda state: state.position[0], settings)

