"""Block Picard ("picard-sde", "picard-ode") and ParaDiGMS ("paradigms"): diffusion plans.

Both run the sequential sampler (*) of :mod:`scoresample.kernels.picard.recursion` on a time grid
in sequential rounds of batched evaluation instead of sequential steps:

- ``picard_sde_plan`` / ``picard_ode_plan``: block Picard; one kernel step is one block. Blocks hold
  equal numbers of steps of a log-SNR grid by default, so they are O(1) long at large t and short
  near t_min. Chen, Ren, Ying, Rotskoff, NeurIPS 2024 (arXiv 2405.15986).
- ``paradigms_plan``: a sliding window of p steps over the whole N-step sampler with all noise drawn
  up front; one kernel step is the whole trajectory. Shih et al., "Parallel Sampling of Diffusion
  Models" (ParaDiGMS), NeurIPS 2023.

On the benchmark mixtures the denoiser form (the default) needs markedly fewer Picard rounds than
the score form, because the iterated map x -> a x0_hat(x) has a much smaller Lipschitz constant than
the score where the data concentrate (see [the Picard page](../algorithms/picard.md)).

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

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scoresample import processes
from scoresample.base import (
    DiffusionPlan,
    DiffusionState,
    SamplingAlgorithm,
    check_bool,
    check_callable,
    check_in,
    check_int,
    check_nonnegative,
    check_times,
)
from scoresample.kernels.picard.anderson import anderson_step, init_history
from scoresample.kernels.picard.recursion import (
    FORMS,
    affine_prefix,
    coarse_path,
    evaluation_fn,
    picard_block,
    sequential_block,
    shard_time_axis,
    step_coefficients,
)

__all__ = ["PicardInfo", "ACCELERATIONS", "picard_sde_plan", "picard_ode_plan",
           "paradigms_plan"]

ACCELERATIONS = ("anderson", None)
DEFAULT_MEMORY = 2


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


def _resolve_grid(dim, num_steps, t_min, t_max, grid):
    num_steps = check_int("num_steps", num_steps)
    t_min, t_max = check_times(t_min, processes.default_t_max(dim) if t_max is None else t_max)
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
    num_blocks = check_int("num_blocks", 1 if num_blocks is None else num_blocks)
    if num_blocks > num_steps:
        raise ValueError(f"num_blocks must be <= num_steps={num_steps}, got {num_blocks}")
    base, extra = divmod(num_steps, num_blocks)
    return [base + (i < extra) for i in range(num_blocks)]


def _resolve_memory(acceleration, memory):
    if not any(acceleration is a or acceleration == a for a in ACCELERATIONS):
        raise ValueError(f"unknown acceleration {acceleration!r}; choose 'anderson' or None")
    if acceleration is None:
        if memory not in (None, 0):
            raise ValueError("memory needs acceleration='anderson'")
        return 0
    return check_int("memory", DEFAULT_MEMORY if memory is None else memory)


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
        for table, coef in zip(tables, (a_coef, b_coef, c_coef), strict=True):
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
                 t_max=None, grid="log-snr", form="denoiser", acceleration="anderson", memory=None,
                 coarse_steps=0, sequential=False, shard=True):
    del energy_fn  # the Picard samplers only use the score
    dim = _check_common(score_fn, dim, form)
    num_steps, t_min, t_max, ts = _resolve_grid(dim, num_steps, t_min, t_max, grid)
    sizes = _resolve_blocks(num_steps, num_blocks, block_sizes)
    width = max(sizes)
    num_iterations, tol, max_iterations = _resolve_iterations(num_iterations, tol, max_iterations,
                                                              width)
    sequential = check_bool("sequential", sequential)
    shard = check_bool("shard", shard)
    memory = _resolve_memory(acceleration, memory)
    coarse_steps = check_int("coarse_steps", coarse_steps, minimum=0)
    if coarse_steps > width:
        raise ValueError(f"coarse_steps must be <= the block length {width}, got {coarse_steps}")

    a_coef, b_coef, c_coef = step_coefficients(ts, ode=ode, form=form)
    tables = [jnp.asarray(x) for x in _block_tables(ts, sizes, a_coef, b_coef, c_coef)]
    times, a_tab, b_tab, c_tab = tables
    eval_fn = evaluation_fn(score_fn, form)
    # what the coarse first guess holds fixed: x0_hat in the denoiser form, the score otherwise
    carry_weights = processes.alpha(times) if form == "denoiser" else jnp.ones_like(times)

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
            initial_path = None
            if coarse_steps:
                initial_path = coarse_path(eval_fn, y0, times[b], a_tab[b], b_tab[b], noise_term,
                                           carry_weights[b], coarse_steps)
            path, rounds, residual = picard_block(
                eval_fn, y0, times[b], a_tab[b], b_tab[b], noise_term,
                num_iterations=num_iterations, tol=tol, max_iterations=max_iterations, memory=memory,
                initial_path=initial_path, shard=shard)
            evals = rounds * width + coarse_steps
            rounds = rounds + coarse_steps
        new = path[-1]
        is_divergent = ~jnp.all(jnp.isfinite(new))
        new = jnp.where(is_divergent, y0, new)
        info = PicardInfo(jnp.asarray(evals, jnp.int32), jnp.asarray(rounds, jnp.int32), residual,
                          is_divergent)
        return DiffusionState(new, b + 1, state.aux), info

    settings = dict(method="picard-ode" if ode else "picard-sde", num_steps=num_steps,
                    block_sizes=tuple(sizes), num_blocks=len(sizes), num_iterations=num_iterations,
                    tol=tol, max_iterations=max_iterations, t_min=t_min, t_max=t_max, grid=grid,
                    form=form, acceleration=acceleration, memory=memory,
                    coarse_steps=coarse_steps, sequential=sequential,
                    shard=shard, time_axis_size=width if shard and not sequential else None)
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
        num_blocks: equal blocks (default 1: the whole trajectory is one block, the fewest
            rounds measured), or block_sizes: steps per block (summing to num_steps; shorter
            blocks are padded with identity steps whose evaluations still count).
        num_iterations: a fixed number K of Picard iterations per block; or
        tol, max_iterations: iterate until the largest RMS change of a block point is <= tol
            (absolute, in data units; default 1e-3), at most max_iterations times (default: the
            block length, which is exact).
        acceleration: "anderson" (default): triangular Anderson acceleration (ParaTAA) with a
            history of ``memory`` iterations (default 2), safeguarded so that K = M iterations
            stay exact (see :mod:`~scoresample.kernels.picard.anderson`); None: plain Picard.
        coarse_steps: start each block from a coarse sequential solve with this many
            evaluations (:func:`~scoresample.kernels.picard.recursion.coarse_path`; they count
            as rounds and evaluations) instead of copies of the block start (default 0).
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

    Info per block: ``num_grad_evals`` (iterations x M + coarse_steps, for this particle),
    ``num_rounds`` (iterations + coarse_steps), ``residual``, ``is_divergent``. In tolerance mode a
    vmapped batch runs every particle for the iterations of its slowest one; ``diffusion.sample``
    counts that in ``nfe``.

    Example:
        >>> mix = targets.four_modes_2d()
        >>> res = diffusion.sample(key, "picard-sde", mix.score, dim=2, num_samples=256,
        ...                        num_steps=1000, tol=2e-3)
        >>> res.rounds  # rounds of batched evaluation instead of 1000 steps (23 measured here,
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
                   acceleration="anderson", memory=None, sequential=False,
                   shard=True) -> DiffusionPlan:
    """ParaDiGMS ("paradigms"): a sliding window of p steps over the whole N-step sampler.

    All N noise vectors are drawn first. Each round evaluates F at the window's p points in one
    batched call, rebuilds the p points after them from the window start by a prefix scan of (*),
    and slides the window start past the leading points that have converged: the first point whose
    change has mean square (over coordinates) above tol^2 times the variance of that step's noise
    ends the converged run, and becomes the new start (it was computed from converged inputs).
    New window points start as copies of the last one. Shih et al., NeurIPS 2023.

    With ``acceleration="anderson"`` (the default) the window points after the first unconverged
    one take the triangular Anderson step (ParaTAA, the history kept per grid slot); the points up
    to it take the plain update, so the slots the window slides past are computed from converged
    inputs as in plain ParaDiGMS.

    Options: num_steps (N, default 1000), window (p, default 128), tol (tau, default 0.01;
    tol = 0 reproduces the sequential sampler exactly), t_min, t_max, grid, form, acceleration,
    memory as in :func:`picard_sde_plan`; ``ode=True`` windows over the ODE sampler (tolerance
    scaled by the SDE step's variance); ``sequential=True`` runs the sequential sampler with the
    same noise.

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
    memory = _resolve_memory(acceleration, memory)

    a_coef, b_coef, c_coef = step_coefficients(ts, ode=ode, form=form)
    variance = step_coefficients(ts, ode=False, form=form)[2] ** 2
    pad = window
    times = jnp.asarray(np.concatenate([ts[:-1], np.full(pad, ts[-1])]))
    a_pad = jnp.asarray(np.concatenate([a_coef, np.ones(pad)]))
    b_pad = jnp.asarray(np.concatenate([b_coef, np.zeros(pad)]))
    c_seq = jnp.asarray(c_coef)
    # padded steps never block the slide (their change is 0 and their variance infinite)
    var_pad = jnp.asarray(np.concatenate([variance, np.full(pad, np.inf)]))
    eval_fn = evaluation_fn(score_fn, form)
    tol2 = tol**2

    def init(position):
        return DiffusionState(jnp.asarray(position), jnp.asarray(0, jnp.int32))

    def window_slice(x, start):
        return jax.lax.dynamic_slice_in_dim(x, start, window, axis=0)

    def run_windows(y0, noise_term):
        size = num_steps + pad + 1
        noise_pad = jnp.concatenate([noise_term, jnp.zeros((pad, dim), y0.dtype)], axis=0)
        buffer = jnp.broadcast_to(y0[None, :], (size, dim))
        index = jnp.arange(size)
        local = jnp.arange(window)
        # Anderson history per grid slot: previous iterate and residual, differences, and how
        # many times the slot has been evaluated
        history = (init_history(buffer, memory), jnp.zeros(size, jnp.int32)) if memory else ()

        def cond(carry):
            begin, _, _, res, _ = carry
            return (begin < num_steps) & jnp.isfinite(res)

        def body(carry):
            begin, buffer, rounds, _, history = carry
            points = window_slice(buffer, begin)
            values = jax.vmap(eval_fn)(shard_time_axis(points, shard), window_slice(times, begin))
            offsets = window_slice(b_pad, begin)[:, None] * values + window_slice(noise_pad, begin)
            image = shard_time_axis(
                affine_prefix(window_slice(a_pad, begin), offsets, buffer[begin]), shard)
            old = window_slice(buffer, begin + 1)
            change2 = jnp.mean((image - old) ** 2, axis=-1)
            is_bad = ~(change2 <= tol2 * window_slice(var_pad, begin))
            first_bad = jnp.where(jnp.any(is_bad), jnp.argmax(is_bad), window).astype(jnp.int32)
            new_begin = jnp.minimum(begin + jnp.minimum(first_bad + 1, window), num_steps)
            new = image
            if memory:
                (prev_path, prev_residual, d_x, d_r), count = history
                slot = begin + 1

                def take(x, axis=0):
                    return jax.lax.dynamic_slice_in_dim(x, slot, window, axis=axis)

                def put(x, part, axis=0):
                    return jax.lax.dynamic_update_slice_in_dim(x, part, slot, axis=axis)

                num_valid = jnp.minimum(take(count), memory)
                # the points up to the first unconverged one keep the plain (exact) update
                new, (w_prev, w_res, w_dx, w_dr) = anderson_step(
                    old, image, (take(prev_path), take(prev_residual), take(d_x, 1),
                                 take(d_r, 1)), num_valid, local > first_bad)
                history = ((put(prev_path, w_prev), put(prev_residual, w_res),
                            put(d_x, w_dx, 1), put(d_r, w_dr, 1)), put(count, take(count) + 1))
                new = shard_time_axis(new, shard)
            buffer = jax.lax.dynamic_update_slice_in_dim(buffer, new, begin + 1, axis=0)
            fresh = (index > begin + window) & (index <= new_begin + window)
            buffer = jnp.where(fresh[:, None], new[-1][None, :], buffer)
            is_real = begin + local < num_steps
            res = jnp.max(jnp.where(is_real, jnp.sqrt(change2), 0.0))
            res = jnp.where(jnp.all(jnp.isfinite(image)), res, jnp.nan)
            return new_begin, buffer, rounds + 1, res, history

        init_carry = (jnp.asarray(0, jnp.int32), buffer, jnp.asarray(0, jnp.int32),
                      jnp.zeros((), y0.dtype), history)
        _, buffer, rounds, residual, _ = jax.lax.while_loop(cond, body, init_carry)
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
                    t_max=t_max, grid=grid, form=form, ode=ode, acceleration=acceleration,
                    memory=memory, sequential=sequential, shard=shard,
                    time_axis_size=window if shard and not sequential else None)
    return DiffusionPlan(_initial_position(dim), SamplingAlgorithm(init, step), 1,
                         lambda state: state.position, settings)

