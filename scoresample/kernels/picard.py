"""Picard-parallel samplers: sequential rounds of batched evaluation instead of sequential steps.

A sequential sampler of N steps, written as the affine recursion

    Y_{m+1} = A_m Y_m + B_m F(Y_m, t_m) + C_m xi_m,                                        (*)

needs N score calls one after another. Picard iteration guesses the whole path of a block of M steps,
evaluates F at every point of the guess in ONE batched call (the time grid rides on the batch axis),
and rebuilds the path by a prefix scan of (*):

    Y^{k+1}_m = P_m y_n + sum_{j<m} (P_m / P_{j+1}) (B_j F(Y^k_j, t_j) + C_j xi_j),   P_m = prod_{i<m} A_i.

The noise xi of a block is drawn once and reused by every iteration, so the fixed point is the
sequential sampler with the same noise: after k iterations the first k points are exact, K = M
iterations reproduce the sequential path to rounding, and the error falls like (L h)^k / k!
(Chen, Ren, Ying, Rotskoff, NeurIPS 2024, arXiv 2405.15986; Shih et al., "Parallel Sampling of
Diffusion Models" (ParaDiGMS), NeurIPS 2023; Anari, Chewi, Vuong, "Fast parallel sampling under
isoperimetry", 2024).

Two ways of writing (*) on the OU process dX = -X dt + sqrt(2) dB (step from s = t_m to t = t_{m+1},
h = s - t, a = exp(-t), s^2 = -expm1(-2t)):

- ``form="denoiser"`` (default): the score is written as (a_s x0_hat - x) / s_s^2, the linear part
  is integrated exactly and only F(x, s) = x + s_s^2 score(x, s) = a_s x0_hat is iterated. SDE:
  A = e^-h s_t^2 / s_s^2, B = 2 sinh(h) / s_s^2, C^2 = s_t^2 (-expm1(-2h)) / s_s^2 (the DDPM posterior
  step with x0_hat plugged in, i.e. first-order SDE-DPM-Solver++). ODE: A = s_t / s_s,
  B = expm1(2h) / (s_s (e^h s_s + s_t)), C = 0 (DDIM).
- ``form="score"``: F = score, the exponential integrator of ALGORITHMS.md 1b. SDE: A = e^h,
  B = 2 expm1(h), C^2 = expm1(2h). ODE (probability flow): A = e^h, B = expm1(h), C = 0.

On the benchmark mixtures the denoiser form needs markedly fewer Picard rounds, because the iterated
map x -> a x0_hat(x) has a much smaller Lipschitz constant than the score where the data concentrate.

Samplers here:
- ``picard_sde_plan`` / ``picard_ode_plan`` ("picard-sde", "picard-ode"): block Picard; one kernel step
  is one block. Blocks hold equal numbers of steps of a log-SNR grid by default, so they are O(1)
  long at large t and short near t_min.
- ``paradigms_plan`` ("paradigms"): a sliding window of p steps over the whole N-step sampler with
  all noise drawn up front; one kernel step is the whole trajectory.
- ``picard_langevin``: Picard epochs of the Langevin diffusion on a log-density (BlackJAX-style).

Counting: the kernels are single-particle, and ``num_grad_evals`` counts what the kernel executes
for one particle run alone: every batched call counts its full batch, padded slots included, so a
block costs (iterations it needed) x M and a ParaDiGMS run (rounds it needed) x p. In tolerance mode
the loops are ``while_loop`` s; vmapped over particles (the driver, a GPU batch, particles sharded
over devices) they run in lockstep until the slowest particle has converged, and the converged
particles' evaluations are computed and masked. What a batch executes per particle in a step is
therefore the largest per-particle ``num_grad_evals`` of that step: ``diffusion.sample`` reports
that as ``nfe`` (summed over steps) and as the reduced ``info.num_grad_evals``, and the mean of the
per-particle counts as ``nfe_needed``; ``rounds`` sums the largest per-particle round counts.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from blackjax.base import build_sampling_algorithm
import numpy as np
from jax.flatten_util import ravel_pytree

from scoresample import parallel, processes
from scoresample.base import (
    DiffusionPlan,
    DiffusionState,
    KernelAPI,
    SamplingAlgorithm,
    check_bool,
    check_callable,
    check_in,
    check_int,
    check_nonnegative,
    check_position,
    check_positive,
    check_times,
)

__all__ = [
    "FORMS",
    "PicardInfo",
    "step_coefficients",
    "affine_prefix",
    "shard_time_axis",
    "picard_block",
    "sequential_block",
    "sequential_sample",
    "picard_sde_plan",
    "picard_ode_plan",
    "paradigms_plan",
    "PicardLangevinState",
    "PicardLangevinInfo",
    "init",
    "build_kernel",
    "as_top_level_api",
    "picard_langevin",
]

FORMS = ("denoiser", "score")
TIME_AXIS = parallel.TIME


class PicardInfo(NamedTuple):
    """Per-step diagnostics of the diffusion Picard samplers (one block, or one whole ParaDiGMS run).

    - ``num_grad_evals``: score evaluations this particle executes run alone (batch sizes of every
      call); a vmapped batch executes the maximum over its particles (see the module docstring).
    - ``num_rounds``: sequential rounds of batched evaluation this particle needed.
    - ``residual``: RMS (over coordinates) change of the last iteration, largest over the points.
    - ``is_divergent``: a non-finite value was met; the position was then left unchanged.
    """

    num_grad_evals: jax.Array  # shape=(), int32
    num_rounds: jax.Array  # shape=(), int32
    residual: jax.Array  # shape=()
    is_divergent: jax.Array  # shape=(), bool


# ---------------------------------------------------------------------------------------------
# The arithmetic of one step (float64 numpy, built once per plan).
# ---------------------------------------------------------------------------------------------


def step_coefficients(ts, *, ode: bool = False, form: str = "denoiser"):
    """Coefficients (A, B, C) of the steps t_m -> t_{m+1} of a decreasing grid ``ts`` (float64 numpy).

    The step is Y_{m+1} = A_m Y_m + B_m F(Y_m, t_m) + C_m xi_m with F the score (``form="score"``)
    or F(x, t) = x + s_t^2 score(x, t) = a_t x0_hat (``form="denoiser"``); see the module docstring.
    A step of length 0 is the identity (A = 1, B = C = 0), which pads blocks of unequal length.
    """
    check_in("form", form, FORMS)
    ts = np.asarray(ts, dtype=np.float64)
    s, t = ts[:-1], ts[1:]
    h = s - t
    if np.any(h < 0):
        raise ValueError("ts must be non-increasing")
    if form == "score":
        a_coef = np.exp(h)
        b_coef = np.expm1(h) if ode else 2.0 * np.expm1(h)
        c_coef = np.zeros_like(h) if ode else np.sqrt(np.expm1(2.0 * h))
        return a_coef, b_coef, c_coef
    s2_s, s2_t = processes.sigma2(s), processes.sigma2(t)
    if ode:
        sd_s, sd_t = np.sqrt(s2_s), np.sqrt(s2_t)
        a_coef = sd_t / sd_s
        b_coef = np.expm1(2.0 * h) / (sd_s * (np.exp(h) * sd_s + sd_t))
        c_coef = np.zeros_like(h)
    else:
        a_coef = np.exp(-h) * s2_t / s2_s
        b_coef = 2.0 * np.sinh(h) / s2_s
        c_coef = np.sqrt(s2_t * -np.expm1(-2.0 * h) / s2_s)
    return a_coef, b_coef, c_coef


def _evaluation_fn(score_fn: Callable, form: str) -> Callable:
    """F(x, t): the score itself, or the scaled denoiser a_t x0_hat = x + s_t^2 score(x, t)."""
    if form == "score":
        return score_fn

    def denoiser(x, t):
        return x + processes.sigma2(t) * score_fn(x, t)

    return denoiser


def affine_prefix(a_coef, offsets, y0):
    """All points of the recursion Y_{m+1} = A_m Y_m + c_m from Y_0 = y0, as a parallel prefix scan.

    Args:
        a_coef: (M,) the multipliers A_m.
        offsets: (M, d) the offsets c_m.
        y0: (d,) the start.

    Returns:
        (M, d): Y_1, ..., Y_M. Depth log M; the values equal the sequential recursion to rounding.
    """

    def compose(first, second):
        a1, c1 = first
        a2, c2 = second
        return a2 * a1, a2[..., None] * c1 + c2

    cum_a, cum_c = jax.lax.associative_scan(compose, (a_coef, offsets))
    return cum_a[:, None] * y0[None, :] + cum_c


def shard_time_axis(x, enabled: bool = True):
    """Ask XLA to split the leading (time-grid) axis of ``x`` over devices.

    Inside ``diffusion.sample`` (the driver's 2-D ("particles", "time") mesh) the axis is split over
    the "time" devices of each particle group; run on its own, over all devices. A no-op on one
    device, or when the axis does not divide evenly (so results never depend on padding). See
    :func:`scoresample.parallel.constrain_time`.
    """
    return parallel.constrain_time(x, enabled)


def _rms(x):
    return jnp.sqrt(jnp.mean(x**2, axis=-1))


# ---------------------------------------------------------------------------------------------
# One block: Picard and sequential.
# ---------------------------------------------------------------------------------------------


def picard_block(eval_fn: Callable, y0, times, a_coef, b_coef, noise_term, *,
                 num_iterations: int | None = None, tol: float | None = None,
                 max_iterations: int | None = None, shard: bool = True):
    """Picard iteration over one block of M steps of (*), for one particle.

    Every iteration evaluates ``eval_fn`` at Y_0, ..., Y_{M-1} of the current guess in one vmapped
    call over the time axis (sharded over devices when possible) and rebuilds Y_1, ..., Y_M with
    :func:`affine_prefix`. The guess starts constant at y0; the noise term (C_m xi_m) is fixed.

    Args:
        eval_fn: F(x, t) for one point.
        y0: (d,) the block's start (exact).
        times: (M,) the times t_m at which F is evaluated.
        a_coef, b_coef: (M,) the step coefficients.
        noise_term: (M, d) the fixed C_m xi_m.
        num_iterations: run exactly K iterations; or
        tol, max_iterations: iterate until the largest RMS change of a point is <= tol, at most
            ``max_iterations`` times.
        shard: split the time axis over devices when there are several.

    Returns:
        ``(path, num_rounds, residual)``: path (M, d) = Y_1..Y_M of the last iteration, the number
        of iterations run (each is one round of M evaluations), and the last iteration's change.
    """
    num_points = times.shape[0]

    def sweep(path):
        points = jnp.concatenate([y0[None, :], path[:-1]], axis=0)
        values = jax.vmap(eval_fn)(shard_time_axis(points, shard), times)
        offsets = b_coef[:, None] * values + noise_term
        new_path = shard_time_axis(affine_prefix(a_coef, offsets, y0), shard)
        return new_path, jnp.max(_rms(new_path - path))

    path = jnp.broadcast_to(y0[None, :], (num_points, y0.shape[0]))
    if num_iterations is not None:
        def body(carry, _):
            new_path, res = sweep(carry[0])
            return (new_path, res), None

        (path, residual), _ = jax.lax.scan(body, (path, jnp.asarray(jnp.inf, y0.dtype)), None,
                                           length=num_iterations)
        return path, jnp.asarray(num_iterations, jnp.int32), residual

    def cond(carry):
        k, _, res = carry
        # res > tol is False for NaN: a non-finite iterate stops the loop (and is flagged later).
        return (k < max_iterations) & (res > tol)

    def body(carry):
        k, path, _ = carry
        new_path, res = sweep(path)
        return k + 1, new_path, res

    init = (jnp.asarray(0, jnp.int32), path, jnp.asarray(jnp.inf, y0.dtype))
    k, path, residual = jax.lax.while_loop(cond, body, init)
    return path, k, residual


def sequential_block(eval_fn: Callable, y0, times, a_coef, b_coef, noise_term):
    """The same M steps of (*) one after another (M rounds of one evaluation). Returns (M, d)."""

    def body(y, inputs):
        t, a, b, c = inputs
        y = a * y + b * eval_fn(y, t) + c
        return y, y

    _, path = jax.lax.scan(body, y0, (times, a_coef, b_coef, noise_term))
    return path


def sequential_sample(score_fn: Callable, x_T, noise, ts, *, ode: bool = False,
                      form: str = "denoiser"):
    """The sequential sampler the Picard samplers parallelise, on a given grid with given noise.

    Args:
        score_fn: score(x, t) for one point.
        x_T: (d,) the start at ts[0].
        noise: (N, d) standard normal xi_m for the N = len(ts) - 1 steps (ignored by the ODE).
        ts: decreasing grid, float64.
        ode, form: which recursion (*) (see :func:`step_coefficients`).

    Returns:
        (N, d): Y_1, ..., Y_N.

    Example:
        >>> ts = processes.time_grid(100, 1e-3, 5.0, "log-snr")
        >>> xi = jax.random.normal(jax.random.key(1), (100, 2))
        >>> path = sequential_sample(mix.score, jnp.zeros(2), xi, ts, form="score")  # EI
    """
    a_coef, b_coef, c_coef = step_coefficients(ts, ode=ode, form=form)
    eval_fn = _evaluation_fn(score_fn, form)
    noise_term = jnp.asarray(c_coef)[:, None] * noise
    return sequential_block(eval_fn, x_T, jnp.asarray(np.asarray(ts)[:-1]), jnp.asarray(a_coef),
                            jnp.asarray(b_coef), noise_term)


# ---------------------------------------------------------------------------------------------
# Plans for scoresample.diffusion.
# ---------------------------------------------------------------------------------------------


def _resolve_grid(dim, num_steps, t_min, t_max, grid):
    num_steps = check_int("num_steps", num_steps)
    t_min = check_positive("t_min", t_min)
    t_max = processes.default_t_max(dim) if t_max is None else check_positive("t_max", t_max)
    check_times(t_min, t_max)
    check_in("grid", grid, processes.GRID_KINDS)
    return num_steps, t_min, t_max, processes.time_grid(num_steps, t_min, t_max, grid)


def _resolve_iterations(num_iterations, tol, max_iterations, default_max):
    if num_iterations is not None and (tol is not None or max_iterations is not None):
        raise ValueError("give either num_iterations, or tol (with optional max_iterations), not both")
    if num_iterations is not None:
        return check_int("num_iterations", num_iterations), None, None
    tol = 1e-3 if tol is None else check_nonnegative("tol", tol)
    max_iterations = (default_max if max_iterations is None
                      else check_int("max_iterations", max_iterations))
    return None, tol, max_iterations


def _resolve_blocks(num_steps, num_blocks, block_sizes):
    if num_blocks is not None and block_sizes is not None:
        raise ValueError("give either num_blocks or block_sizes, not both")
    if block_sizes is not None:
        if isinstance(block_sizes, (str, bytes)) or not hasattr(block_sizes, "__len__"):
            raise TypeError(f"block_sizes must be a sequence of integers, got {block_sizes!r}")
        sizes = [check_int("block_sizes entry", b) for b in block_sizes]
        if len(sizes) == 0 or sum(sizes) != num_steps:
            raise ValueError(f"block_sizes must sum to num_steps={num_steps}, got sum {sum(sizes)}")
        return sizes
    num_blocks = check_int("num_blocks", 5 if num_blocks is None else num_blocks)
    if num_blocks > num_steps:
        raise ValueError(f"num_blocks must be <= num_steps={num_steps}, got {num_blocks}")
    base, extra = divmod(num_steps, num_blocks)
    return [base + (i < extra) for i in range(num_blocks)]


def _block_tables(ts, sizes, a_coef, b_coef, c_coef):
    """Stack the blocks' grids, padded at their ends with identity steps to the longest block."""
    width = max(sizes)
    num_blocks = len(sizes)
    times = np.empty((num_blocks, width))
    tables = [np.ones((num_blocks, width)), np.zeros((num_blocks, width)), np.zeros((num_blocks, width))]
    start = 0
    for i, size in enumerate(sizes):
        stop = start + size
        times[i, :size] = ts[start:stop]
        times[i, size:] = ts[stop]
        for table, coef in zip(tables, (a_coef, b_coef, c_coef)):
            table[i, :size] = coef[start:stop]
        start = stop
    return times, *tables


def _check_common(score_fn, dim, form):
    check_callable("score_fn", score_fn)
    dim = check_int("dim", dim)
    check_in("form", form, FORMS)
    return dim


def _initial_position(dim):
    def init_position(rng_key):
        return jax.random.normal(rng_key, (dim,), dtype=jnp.result_type(float))

    return init_position


def _picard_plan(score_fn, *, dim, energy_fn=None, ode, num_steps=1000, num_blocks=None,
                 block_sizes=None, num_iterations=None, tol=None, max_iterations=None, t_min=1e-3,
                 t_max=None, grid="log-snr", form="denoiser", sequential=False, shard=True):
    del energy_fn  # the Picard samplers only use the score
    dim = _check_common(score_fn, dim, form)
    num_steps, t_min, t_max, ts = _resolve_grid(dim, num_steps, t_min, t_max, grid)
    sizes = _resolve_blocks(num_steps, num_blocks, block_sizes)
    width = max(sizes)
    num_iterations, tol, max_iterations = _resolve_iterations(num_iterations, tol, max_iterations,
                                                              width)
    sequential = check_bool("sequential", sequential)
    shard = check_bool("shard", shard)

    a_coef, b_coef, c_coef = step_coefficients(ts, ode=ode, form=form)
    tables = [jnp.asarray(x) for x in _block_tables(ts, sizes, a_coef, b_coef, c_coef)]
    times, a_tab, b_tab, c_tab = tables
    eval_fn = _evaluation_fn(score_fn, form)

    def init(position):
        return DiffusionState(jnp.asarray(position), jnp.asarray(0, jnp.int32))

    def step(rng_key, state):
        b = state.step
        y0 = state.position
        noise = jax.random.normal(rng_key, (width, dim), dtype=y0.dtype)
        noise_term = c_tab[b][:, None] * noise
        if sequential:
            path = sequential_block(eval_fn, y0, times[b], a_tab[b], b_tab[b], noise_term)
            # the padded identity steps of a short block are executed too, so they count
            evals = rounds = width
            residual = jnp.zeros((), y0.dtype)
        else:
            path, rounds, residual = picard_block(
                eval_fn, y0, times[b], a_tab[b], b_tab[b], noise_term,
                num_iterations=num_iterations, tol=tol, max_iterations=max_iterations, shard=shard)
            evals = rounds * width
        new = path[-1]
        is_divergent = ~jnp.all(jnp.isfinite(new))
        new = jnp.where(is_divergent, y0, new)
        info = PicardInfo(jnp.asarray(evals, jnp.int32), jnp.asarray(rounds, jnp.int32), residual,
                          is_divergent)
        return DiffusionState(new, b + 1, state.aux), info

    settings = dict(method="picard-ode" if ode else "picard-sde", num_steps=num_steps,
                    block_sizes=tuple(sizes), num_blocks=len(sizes), num_iterations=num_iterations,
                    tol=tol, max_iterations=max_iterations, t_min=t_min, t_max=t_max, grid=grid,
                    form=form, sequential=sequential, shard=shard,
                    time_axis_size=width if shard and not sequential else None)
    return DiffusionPlan(_initial_position(dim), SamplingAlgorithm(init, step), len(sizes),
                         lambda state: state.position, settings)


def picard_sde_plan(score_fn, *, dim, energy_fn=None, **options) -> DiffusionPlan:
    """Block Picard over the reverse SDE ("picard-sde"): the plan for ``diffusion.sample``.

    The sequential sampler (num_steps steps of (*) on a ``grid`` from t_max to t_min) is split into
    blocks; each kernel step runs one block by Picard iteration with the block's noise drawn once:

        Y^{k+1}_m = P_m [ y_n + sum_{j<m} (B_j F(Y^k_j, t_j) + C_j xi_j) / P_{j+1} ],

    one batched evaluation of F over the block's M grid points per iteration. With K = M iterations
    the result equals the sequential sampler with the same noise (``sequential=True``) to rounding.
    Chen, Ren, Ying, Rotskoff (NeurIPS 2024, arXiv 2405.15986).

    Options:
        num_steps: steps of the sequential sampler (default 1000).
        num_blocks: equal blocks (default 5), or block_sizes: steps per block (summing to
            num_steps; shorter blocks are padded with identity steps whose evaluations still count).
        num_iterations: a fixed number K of Picard iterations per block; or
        tol, max_iterations: iterate until the largest RMS change of a block point is <= tol
            (absolute, in data units; default 1e-3), at most max_iterations times (default: the
            block length, which is exact).
        t_min (1e-3), t_max (``processes.default_t_max(dim)``), grid ("log-snr": equal blocks are
            long at large t and short near t_min).
        form: "denoiser" (default; iterate a_t x0_hat, linear part exact) or "score" (iterate the
            score, exponential integrator).
        sequential: run the matching sequential sampler with the same noise instead (reference;
            one round of one evaluation per step, padded steps of short blocks included).
        shard: split the block's time axis over devices when there are several (default True;
            ``diffusion.sample`` then puts particles and time on one 2-D device mesh, the
            particles first, see :mod:`scoresample.parallel`; ``settings["time_axis_size"]``
            tells it the axis length).

    Info per block: ``num_grad_evals`` (iterations x M, for this particle), ``num_rounds``
    (iterations), ``residual``, ``is_divergent``. In tolerance mode a vmapped batch runs every
    particle for the iterations of its slowest one; ``diffusion.sample`` counts that in ``nfe``.

    Example:
        >>> mix = targets.four_modes_2d()
        >>> res = diffusion.sample(key, "picard-sde", mix.score, dim=2, num_samples=256,
        ...                        num_steps=1000, num_blocks=5, tol=2e-3)
        >>> res.rounds  # rounds of batched evaluation instead of 1000 steps (42 measured here,
        ...             # see docs/benchmarks/picard.md)
    """
    return _picard_plan(score_fn, dim=dim, energy_fn=energy_fn, ode=False, **options)


def picard_ode_plan(score_fn, *, dim, energy_fn=None, **options) -> DiffusionPlan:
    """Block Picard over the probability-flow ODE ("picard-ode"): half the score weight, no noise.

    Same options as :func:`picard_sde_plan`; the sequential sampler is DDIM (``form="denoiser"``) or
    the exponential integrator of dY = (Y + score) dtau (``form="score"``).
    """
    return _picard_plan(score_fn, dim=dim, energy_fn=energy_fn, ode=True, **options)


def paradigms_plan(score_fn, *, dim, energy_fn=None, num_steps=1000, window=None, tol=None,
                   t_min=1e-3, t_max=None, grid="log-snr", form="denoiser", ode=False,
                   sequential=False, shard=True) -> DiffusionPlan:
    """ParaDiGMS ("paradigms"): a sliding window of p steps over the whole N-step sampler.

    All N noise vectors are drawn first. Each round evaluates F at the window's p points in one
    batched call, rebuilds the p points after them from the window start by a prefix scan of (*),
    and slides the window start past the leading points that have converged: the first point whose
    change has mean square (over coordinates) above tol^2 times the variance of that step's noise
    ends the converged run, and becomes the new start (it was computed from converged inputs).
    New window points start as copies of the last one. Shih et al., NeurIPS 2023.

    Options: num_steps (N, default 1000), window (p, default 128), tol (tau, default 0.01;
    tol = 0 reproduces the sequential sampler exactly), t_min, t_max, grid, form as in
    :func:`picard_sde_plan`; ``ode=True`` windows over the ODE sampler (tolerance scaled by the SDE
    step's variance); ``sequential=True`` runs the sequential sampler with the same noise.

    One kernel step is the whole trajectory. Info: ``num_rounds`` (rounds), ``num_grad_evals``
    (rounds x p executed for this particle, padded slots past the end included), ``residual``
    (largest RMS change in the last round), ``is_divergent``. A vmapped batch runs every particle
    for the rounds of its slowest one; ``diffusion.sample`` counts that in ``nfe``.
    """
    del energy_fn
    dim = _check_common(score_fn, dim, form)
    num_steps, t_min, t_max, ts = _resolve_grid(dim, num_steps, t_min, t_max, grid)
    window = check_int("window", 128 if window is None else window)
    window = min(window, num_steps)
    tol = 0.01 if tol is None else check_nonnegative("tol", tol)
    ode = check_bool("ode", ode)
    sequential = check_bool("sequential", sequential)
    shard = check_bool("shard", shard)

    a_coef, b_coef, c_coef = step_coefficients(ts, ode=ode, form=form)
    variance = step_coefficients(ts, ode=False, form=form)[2] ** 2
    pad = window
    times = jnp.asarray(np.concatenate([ts[:-1], np.full(pad, ts[-1])]))
    a_pad = jnp.asarray(np.concatenate([a_coef, np.ones(pad)]))
    b_pad = jnp.asarray(np.concatenate([b_coef, np.zeros(pad)]))
    c_seq = jnp.asarray(c_coef)
    # padded steps never block the slide (their change is 0 and their variance infinite)
    var_pad = jnp.asarray(np.concatenate([variance, np.full(pad, np.inf)]))
    eval_fn = _evaluation_fn(score_fn, form)
    tol2 = tol**2

    def init(position):
        return DiffusionState(jnp.asarray(position), jnp.asarray(0, jnp.int32))

    def window_slice(x, start):
        return jax.lax.dynamic_slice_in_dim(x, start, window, axis=0)

    def run_windows(y0, noise_term):
        noise_pad = jnp.concatenate([noise_term, jnp.zeros((pad, dim), y0.dtype)], axis=0)
        buffer = jnp.broadcast_to(y0[None, :], (num_steps + pad + 1, dim))
        index = jnp.arange(num_steps + pad + 1)

        def cond(carry):
            begin, _, _, res = carry
            return (begin < num_steps) & jnp.isfinite(res)

        def body(carry):
            begin, buffer, rounds, _ = carry
            points = window_slice(buffer, begin)
            values = jax.vmap(eval_fn)(shard_time_axis(points, shard), window_slice(times, begin))
            offsets = window_slice(b_pad, begin)[:, None] * values + window_slice(noise_pad, begin)
            new = shard_time_axis(affine_prefix(window_slice(a_pad, begin), offsets, buffer[begin]),
                                  shard)
            old = window_slice(buffer, begin + 1)
            change2 = jnp.mean((new - old) ** 2, axis=-1)
            is_bad = ~(change2 <= tol2 * window_slice(var_pad, begin))
            first_bad = jnp.where(jnp.any(is_bad), jnp.argmax(is_bad), window).astype(jnp.int32)
            new_begin = jnp.minimum(begin + jnp.minimum(first_bad + 1, window), num_steps)
            buffer = jax.lax.dynamic_update_slice_in_dim(buffer, new, begin + 1, axis=0)
            fresh = (index > begin + window) & (index <= new_begin + window)
            buffer = jnp.where(fresh[:, None], new[-1][None, :], buffer)
            is_real = begin + jnp.arange(window) < num_steps
            res = jnp.max(jnp.where(is_real, jnp.sqrt(change2), 0.0))
            res = jnp.where(jnp.all(jnp.isfinite(new)), res, jnp.nan)
            return new_begin, buffer, rounds + 1, res

        init_carry = (jnp.asarray(0, jnp.int32), buffer, jnp.asarray(0, jnp.int32),
                      jnp.zeros((), y0.dtype))
        _, buffer, rounds, residual = jax.lax.while_loop(cond, body, init_carry)
        return buffer[num_steps], rounds, residual

    def step(rng_key, state):
        y0 = state.position
        noise = jax.random.normal(rng_key, (num_steps, dim), dtype=y0.dtype)
        noise_term = c_seq[:, None] * noise
        if sequential:
            path = sequential_block(eval_fn, y0, times[:num_steps], a_pad[:num_steps],
                                    b_pad[:num_steps], noise_term)
            new, rounds, evals = path[-1], num_steps, num_steps
            residual = jnp.zeros((), y0.dtype)
        else:
            new, rounds, residual = run_windows(y0, noise_term)
            evals = rounds * window
        is_divergent = ~jnp.all(jnp.isfinite(new)) | ~jnp.isfinite(residual)
        new = jnp.where(is_divergent, y0, new)
        info = PicardInfo(jnp.asarray(evals, jnp.int32), jnp.asarray(rounds, jnp.int32), residual,
                          is_divergent)
        return DiffusionState(new, state.step + 1, state.aux), info

    settings = dict(method="paradigms", num_steps=num_steps, window=window, tol=tol, t_min=t_min,
                    t_max=t_max, grid=grid, form=form, ode=ode, sequential=sequential, shard=shard,
                    time_axis_size=window if shard and not sequential else None)
    return DiffusionPlan(_initial_position(dim), SamplingAlgorithm(init, step), 1,
                         lambda state: state.position, settings)


# ---------------------------------------------------------------------------------------------
# Picard Langevin on a log-density (BlackJAX-style kernel).
# ---------------------------------------------------------------------------------------------


class PicardLangevinState(NamedTuple):
    """State of Picard Langevin: the position (an array or a pytree)."""

    position: object


class PicardLangevinInfo(NamedTuple):
    """Diagnostics of one Picard Langevin epoch.

    - ``num_grad_evals``: gradients executed: 1 + (K - 1)(M - 1) (the first iteration needs only
      the gradient at the start, the later ones the M - 1 interior points in one batch).
    - ``num_rounds``: K sequential rounds of batched evaluation.
    - ``residual``: largest RMS change of a point in the last iteration.
    - ``is_divergent``: a non-finite value was met; the chain then stays where it was.
    """

    num_grad_evals: jax.Array
    num_rounds: jax.Array
    residual: jax.Array
    is_divergent: jax.Array


def init(position, logdensity_fn: Callable | None = None) -> PicardLangevinState:
    """Picard Langevin keeps only the position (the gradient at the start is evaluated in round 1)."""
    del logdensity_fn
    return PicardLangevinState(check_position("position", position))


def build_kernel(num_points: int = 8, num_iterations: int = 4, *, shard: bool = True):
    """Build a Picard Langevin kernel with M = ``num_points`` points and K = ``num_iterations``.

    One call advances the Langevin diffusion dX = grad log pi(X) dt + sqrt(2) dB by time h
    (``step_size``) through K Picard iterations on M points with the Brownian path shared by all of
    them:

        X^{k+1}_m = x + (h / M) sum_{j<m} grad log pi(X^k_j) + sqrt(2) B_{m h / M},  m = 1..M,

    starting from X^0 = x. Its fixed point (K = M) is M steps of ULA with step h / M and the same
    noise. Anari, Chewi, Vuong, "Fast parallel sampling under isoperimetry" (2024); Picard
    contracts when beta h <= 1/2 for a beta-smooth log-density.

    Returns:
        ``kernel(rng_key, state, logdensity_fn, step_size) -> (state, info)``.
    """
    num_points = check_int("num_points", num_points)
    num_iterations = check_int("num_iterations", num_iterations)
    shard = check_bool("shard", shard)

    def kernel(rng_key, state: PicardLangevinState, logdensity_fn: Callable, step_size):
        flat_x, unravel = ravel_pytree(state.position)

        def grad_flat(x):
            return ravel_pytree(jax.grad(logdensity_fn)(unravel(x)))[0]

        h = jnp.asarray(step_size, flat_x.dtype) / num_points
        noise = jax.random.normal(rng_key, (num_points,) + flat_x.shape, dtype=flat_x.dtype)
        brownian = jnp.cumsum(jnp.sqrt(2.0 * h) * noise, axis=0)  # sqrt(2) B at m h / M, m = 1..M
        grad0 = grad_flat(flat_x)
        steps = jnp.arange(1, num_points + 1, dtype=flat_x.dtype)[:, None]
        path = flat_x[None, :] + steps * h * grad0[None, :] + brownian  # iteration 1 (one gradient)

        def body(carry, _):
            path, _ = carry
            interior = shard_time_axis(path[:-1], shard) if num_points > 1 else path[:-1]
            grads = jnp.concatenate([grad0[None, :], jax.vmap(grad_flat)(interior)], axis=0)
            new_path = flat_x[None, :] + h * jnp.cumsum(grads, axis=0) + brownian
            return (new_path, jnp.max(_rms(new_path - path))), None

        first_change = jnp.max(_rms(path - flat_x[None, :]))
        (path, residual), _ = jax.lax.scan(body, (path, first_change), None,
                                           length=num_iterations - 1)
        new = path[-1]
        is_divergent = ~jnp.all(jnp.isfinite(new)) | ~jnp.all(jnp.isfinite(grad0))
        new = jnp.where(is_divergent, flat_x, new)
        num_evals = 1 + (num_iterations - 1) * (num_points - 1)
        info = PicardLangevinInfo(jnp.asarray(num_evals, jnp.int32),
                                  jnp.asarray(num_iterations, jnp.int32), residual, is_divergent)
        return PicardLangevinState(unravel(new)), info

    return kernel


def as_top_level_api(logdensity_fn: Callable, step_size, num_points: int = 8,
                     num_iterations: int = 4, *, shard: bool = True) -> SamplingAlgorithm:
    """Picard Langevin: one Picard epoch of length ``step_size`` per step (see :func:`build_kernel`).

    Args:
        logdensity_fn: log pi(x) up to a constant, for one position (an array or a pytree); only
            its gradient is used.
        step_size: h, the time the Langevin diffusion advances per step (the fixed point is ULA with
            step h / num_points).
        num_points: M, points per epoch (the batch of one round).
        num_iterations: K, Picard iterations (rounds) per epoch; K = M reproduces ULA exactly.
        shard: split the M points over devices when there are several.

    Returns:
        A ``SamplingAlgorithm`` whose ``step`` works under jit, vmap and
        ``blackjax.util.run_inference_algorithm``.

    Example:
        >>> algo = scoresample.picard_langevin(logdensity_fn, 0.5, num_points=8, num_iterations=4)
        >>> state = algo.init(jnp.zeros(3))
        >>> state, info = jax.jit(algo.step)(jax.random.key(0), state)
    """
    check_callable("logdensity_fn", logdensity_fn)
    step_size = check_positive("step_size", step_size)
    kernel = build_kernel(num_points, num_iterations, shard=shard)

    return build_sampling_algorithm(kernel, init, logdensity_fn, kernel_args=(step_size,))


picard_langevin = KernelAPI(as_top_level_api, init, build_kernel)
