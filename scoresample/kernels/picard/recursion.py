"""The affine recursion behind every Picard sampler, its Picard iteration and its sequential run.

A sequential sampler of N steps, written as the affine recursion

    Y_{m+1} = A_m Y_m + B_m F(Y_m, t_m) + C_m xi_m,                                        (*)

needs N evaluations of F one after another. Picard iteration guesses the whole path of a block of
M steps, evaluates F at every point of the guess in ONE batched call (the time grid rides on the
batch axis), and rebuilds the path by a prefix scan of (*):

    Y^{k+1}_m = P_m y_n + sum_{j<m} (P_m / P_{j+1}) (B_j F(Y^k_j, t_j) + C_j xi_j),
    P_m = prod_{i<m} A_i.

The noise xi of a block is drawn once and reused by every iteration, so the fixed point is the
sequential sampler with the same noise: after k iterations the first k points are exact, and K = M
iterations reproduce the sequential path to rounding. The coefficients of the two forms of (*) on
the OU process, and where they come from, are on [the Picard page](../algorithms/picard.md).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from scoresample import parallel, processes
from scoresample.base import check_in
from scoresample.kernels.picard.anderson import anderson_step, init_history

__all__ = [
    "FORMS",
    "step_coefficients",
    "evaluation_fn",
    "affine_prefix",
    "shard_time_axis",
    "rms",
    "picard_block",
    "coarse_path",
    "sequential_block",
    "sequential_sample",
]

FORMS = ("denoiser", "score")


def step_coefficients(ts, *, ode: bool = False, form: str = "denoiser"):
    """Coefficients (A, B, C) of the steps t_m -> t_{m+1} of a decreasing grid ``ts`` (float64).

    The step from s = t_m to t = t_{m+1} (h = s - t, s_t^2 = -expm1(-2t)) is
    Y_{m+1} = A Y_m + B F(Y_m, s) + C xi_m with

    - ``form="denoiser"``: F(x, s) = x + s_s^2 score(x, s) = a_s x0_hat. SDE (the DDPM posterior
      step with x0_hat plugged in, first-order SDE-DPM-Solver++): A = e^-h s_t^2 / s_s^2,
      B = 2 sinh(h) / s_s^2, C^2 = s_t^2 (-expm1(-2h)) / s_s^2. ODE (DDIM): A = s_t / s_s,
      B = expm1(2h) / (s_s (e^h s_s + s_t)), C = 0.
    - ``form="score"``: F = score, the exponential integrator. SDE: A = e^h, B = 2 expm1(h),
      C^2 = expm1(2h). ODE (probability flow): A = e^h, B = expm1(h), C = 0.

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
        c_coef = np.zeros_like(h) if ode else np.sqrt(processes.rho(h))
        return a_coef, b_coef, c_coef
    s2_s, s2_t = processes.sigma2(s), processes.sigma2(t)
    if ode:
        sd_s, sd_t = processes.sigma(s), processes.sigma(t)
        a_coef = sd_t / sd_s
        b_coef = processes.rho(h) / (sd_s * (np.exp(h) * sd_s + sd_t))
        c_coef = np.zeros_like(h)
    else:
        a_coef = processes.alpha(h) * s2_t / s2_s
        b_coef = 2.0 * np.sinh(h) / s2_s
        c_coef = np.sqrt(s2_t * processes.sigma2(h) / s2_s)
    return a_coef, b_coef, c_coef


def evaluation_fn(score_fn: Callable, form: str) -> Callable:
    """F(x, t) of (*): the score, or the scaled denoiser a_t x0_hat = x + s_t^2 score(x, t)."""
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


def rms(x):
    """Root mean square over the last axis (over coordinates)."""
    return jnp.sqrt(jnp.mean(x**2, axis=-1))


def picard_block(eval_fn: Callable, y0, times, a_coef, b_coef, noise_term, *,
                 num_iterations: int | None = None, tol: float | None = None,
                 max_iterations: int | None = None, memory: int = 0, initial_path=None,
                 shard: bool = True):
    """Picard iteration over one block of M steps of (*), for one particle.

    Every iteration evaluates ``eval_fn`` at Y_0, ..., Y_{M-1} of the current guess in one vmapped
    call over the time axis (sharded over devices when possible) and rebuilds the Picard image
    G(Y) = (Y_1, ..., Y_M) with :func:`affine_prefix`. Plain Picard takes G(Y) as the next guess;
    with ``memory`` > 0 the next guess is the triangular Anderson step of
    :func:`~scoresample.kernels.picard.anderson.anderson_update` on the last ``memory`` iterates,
    except at the points whose predecessors have all converged (the first k after k iterations,
    and those before the first point whose change exceeds ``tol``), which take G(Y) and are then
    exact. Either way K = M iterations reproduce the sequential recursion.

    Args:
        eval_fn: F(x, t) for one point.
        y0: (d,) the block's start (exact).
        times: (M,) the times t_m at which F is evaluated.
        a_coef, b_coef: (M,) the step coefficients.
        noise_term: (M, d) the fixed C_m xi_m.
        num_iterations: run exactly K iterations; or
        tol, max_iterations: iterate until the largest RMS change G(Y) - Y of a point is <= tol,
            at most ``max_iterations`` times.
        memory: Anderson history (0: plain Picard).
        initial_path: (M, d) the first guess of Y_1..Y_M (default: y0 at every point).
        shard: split the time axis over devices when there are several.

    Returns:
        ``(path, num_rounds, residual)``: path (M, d) = G(Y) of the last iteration, the number
        of iterations run (each is one round of M evaluations), and the last iteration's largest
        RMS change.
    """
    num_points = times.shape[0]
    index = jnp.arange(num_points)
    fixed = num_iterations is not None
    if fixed:
        max_iterations, tol = num_iterations, 0.0

    def picard_image(path):
        points = jnp.concatenate([y0[None, :], path[:-1]], axis=0)
        values = jax.vmap(eval_fn)(shard_time_axis(points, shard), times)
        offsets = b_coef[:, None] * values + noise_term
        return shard_time_axis(affine_prefix(a_coef, offsets, y0), shard)

    def cond(carry):
        k, res = carry[0], carry[3]
        # res > tol is False for NaN: a non-finite iterate stops the loop (and is flagged later).
        return (k < max_iterations) & ((res > tol) | fixed)

    def body(carry):
        k, path, _, _, history = carry
        image = picard_image(path)
        residual = image - path
        change = rms(residual)
        k = k + 1
        if memory == 0:
            return k, image, image, jnp.max(change), history
        num_valid = jnp.broadcast_to(jnp.minimum(k - 1, memory), (num_points,))
        # points up to the first one still changing by more than tol have converged inputs
        is_bad = ~(change <= tol)
        first_bad = jnp.where(jnp.any(is_bad), jnp.argmax(is_bad), num_points)
        accelerate = (index >= k) & (index > first_bad)
        new_path, history = anderson_step(path, image, history, num_valid, accelerate)
        return k, shard_time_axis(new_path, shard), image, jnp.max(change), history

    path = (jnp.broadcast_to(y0[None, :], (num_points, y0.shape[0])) if initial_path is None
            else initial_path)
    if memory == 0:
        history = ()
    else:
        history = init_history(path, memory)
    init = (jnp.asarray(0, jnp.int32), path, path, jnp.asarray(jnp.inf, y0.dtype), history)
    k, _, image, residual, _ = jax.lax.while_loop(cond, body, init)
    return image, k, residual


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
    eval_fn = evaluation_fn(score_fn, form)
    noise_term = jnp.asarray(c_coef)[:, None] * noise
    return sequential_block(eval_fn, x_T, jnp.asarray(np.asarray(ts)[:-1]), jnp.asarray(a_coef),
                            jnp.asarray(b_coef), noise_term)


def coarse_path(eval_fn: Callable, y0, times, a_coef, b_coef, noise_term, carry_weights,
                num_segments: int):
    """A first guess of a block's path from a coarse sequential solve with the same noise.

    The M steps are cut into ``num_segments`` runs of nearly equal length; on each run F is
    evaluated once, at its first point, and held as F_l = F_i w_l / w_i (``carry_weights`` w: the
    data prediction x0_hat held fixed in the denoiser form, w = a_t; the score held fixed in the
    score form, w = 1) while the fine steps of (*) are rolled out with the fine noise. In the
    denoiser form this is the ``num_segments``-step DDIM (ODE) or DDPM-posterior sampler (SDE)
    whose noise is the fine noise composed, evaluated on the fine grid. Costs ``num_segments``
    sequential rounds of one evaluation.

    Returns:
        (M, d): the guess of Y_1, ..., Y_M.
    """
    num_points = times.shape[0]
    bounds = np.linspace(0, num_points, num_segments + 1).round().astype(int)
    y, pieces = y0, []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        if stop == start:
            continue
        value = eval_fn(y, times[start])
        held = value[None, :] * (carry_weights[start:stop] / carry_weights[start])[:, None]
        piece = affine_prefix(a_coef[start:stop], b_coef[start:stop, None] * held
                              + noise_term[start:stop], y)
        pieces.append(piece)
        y = piece[-1]
    return jnp.concatenate(pieces, axis=0)
