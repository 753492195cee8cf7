"""Warmup pieces shared by every method of :func:`scoresample.sample` but NUTS: gradient-only
L-BFGS, the Laplace start, staged windows and the affine preconditioner."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scoresample.base import all_finite

Array = jax.Array


# =============================================================================================
# Warmup, stage 1: gradient-only L-BFGS.
# =============================================================================================


class _LBFGSState(NamedTuple):
    x: Array  # shape=(d,)
    g: Array  # gradient of the objective at x, shape=(d,)
    s_hist: Array  # shape=(m, d)
    y_hist: Array  # shape=(m, d)
    rho_hist: Array  # shape=(m,)
    num_pairs: Array  # pairs stored so far (ring buffer), int32
    iteration: Array  # int32
    num_grad_evals: Array  # int32
    done: Array  # bool


def _two_loop(g, s_hist, y_hist, rho_hist, num_pairs, gamma0):
    """L-BFGS two-loop recursion: ``-H g`` for the inverse-Hessian estimate H of the history.

    The history is a ring buffer; entry ``j`` steps back from the newest is valid if j < num_pairs.
    """
    m = s_hist.shape[0]

    def newest_first(j):
        return (num_pairs - 1 - j) % m, j < num_pairs

    def first(j, carry):
        q, alphas = carry
        k, valid = newest_first(j)
        a = jnp.where(valid, rho_hist[k] * jnp.dot(s_hist[k], q), 0.0)
        return q - a * y_hist[k], alphas.at[j].set(a)

    q, alphas = jax.lax.fori_loop(0, m, first, (g, jnp.zeros((m,), g.dtype)))
    newest = (num_pairs - 1) % m
    sy = jnp.dot(s_hist[newest], y_hist[newest])
    yy = jnp.dot(y_hist[newest], y_hist[newest])
    gamma = jnp.where(num_pairs > 0, sy / jnp.where(yy > 0, yy, 1.0), gamma0)

    def second(i, r):
        j = m - 1 - i
        k, valid = newest_first(j)
        b = rho_hist[k] * jnp.dot(y_hist[k], r)
        return r + jnp.where(valid, alphas[j] - b, 0.0) * s_hist[k]

    return -jax.lax.fori_loop(0, m, second, gamma * q)


def gradient_only_lbfgs(grad_fn: Callable, x0, *, max_iterations: int = 500, history: int = 30,
                        max_line_search: int = 20, curvature: float = 0.5,
                        max_step: float = 10.0, gtol: float = 1e-8):
    """Minimise f from its gradient alone: L-BFGS with a derivative-only line search.

    The line search brackets a zero of ``phi'(a) = <grad f(x + a p), p>`` (doubling while the
    derivative is negative, safeguarded secant steps once a bracket is found) and stops at the
    strong-Wolfe curvature condition ``|phi'(a)| <= curvature |phi'(0)|``. Since ``phi'(a) >
    phi'(0)`` there, ``s.y > 0`` and the L-BFGS update stays positive definite. Along a line where
    ``phi`` is convex the accepted point has ``phi(a) < phi(0)`` without ever computing ``phi``.
    A non-finite gradient counts as "past the minimum" (the bracket shrinks), so infinities are
    contained. Steps are capped at ``max_step`` in sup-norm.

    Args:
        grad_fn: gradient of the objective f (to minimise), one point (d,) -> (d,).
        x0: start, shape (d,).

    Returns:
        ``(x, num_grad_evals, num_iterations)``: the last point, the gradient evaluations executed and
        the iterations made.

    Example:
        >>> x, n, it = gradient_only_lbfgs(jax.grad(lambda x: jnp.sum((x - 3.0) ** 2)), jnp.zeros(2))
    """
    x0 = jnp.asarray(x0)
    d = x0.shape[0]
    dtype = x0.dtype
    g0 = grad_fn(x0)
    tiny = jnp.finfo(dtype).tiny

    def converged(g, x):
        return jnp.max(jnp.abs(g)) <= gtol * jnp.maximum(1.0, jnp.max(jnp.abs(x)))

    state = _LBFGSState(x0, g0, jnp.zeros((history, d), dtype), jnp.zeros((history, d), dtype),
                        jnp.zeros((history,), dtype), jnp.zeros((), jnp.int32),
                        jnp.zeros((), jnp.int32), jnp.ones((), jnp.int32),
                        ~jnp.all(jnp.isfinite(g0)) | converged(g0, x0))

    def line_search(x, p, d0):
        a_max = max_step / jnp.maximum(jnp.max(jnp.abs(p)), tiny)
        # (a, lo, d_lo, g_lo, hi, d_hi, found, a_ok, g_ok, n)
        init = (jnp.minimum(1.0, a_max).astype(dtype), jnp.zeros((), dtype), d0, jnp.zeros_like(x),
                jnp.full((), jnp.inf, dtype), jnp.full((), jnp.nan, dtype), jnp.zeros((), bool),
                jnp.zeros((), dtype), jnp.zeros_like(x), jnp.zeros((), jnp.int32))

        def cond(c):
            return (~c[6]) & (c[9] < max_line_search)

        def body(c):
            a, lo, d_lo, g_lo, hi, d_hi, found, a_ok, g_ok, n = c
            g_a = grad_fn(x + a * p)
            finite = jnp.all(jnp.isfinite(g_a))
            d_a = jnp.where(finite, jnp.dot(g_a, p), jnp.nan)
            ok = finite & (jnp.abs(d_a) <= curvature * jnp.abs(d0))
            at_cap = a >= a_max * (1 - 1e-12)
            # still descending at the cap: take the capped step (a trust-region step)
            ok = ok | (finite & (d_a < 0) & at_cap)
            is_past = (~finite) | (d_a > 0)
            new_lo = jnp.where(~ok & ~is_past, a, lo)
            new_d_lo = jnp.where(~ok & ~is_past, d_a, d_lo)
            new_g_lo = jnp.where(~ok & ~is_past, g_a, g_lo)
            new_hi = jnp.where(~ok & is_past, a, hi)
            new_d_hi = jnp.where(~ok & is_past, d_a, d_hi)
            bracketed = jnp.isfinite(new_hi)
            width = new_hi - new_lo
            secant = new_lo - new_d_lo * width / (new_d_hi - new_d_lo)
            secant = jnp.where(jnp.isfinite(secant), secant, new_lo + 0.5 * width)
            secant = jnp.clip(secant, new_lo + 0.1 * width, new_hi - 0.1 * width)
            next_a = jnp.where(bracketed, secant, jnp.minimum(2.0 * a, a_max))
            return (next_a, new_lo, new_d_lo, new_g_lo, new_hi, new_d_hi, ok,
                    jnp.where(ok, a, a_ok), jnp.where(ok, g_a, g_ok), n + 1)

        out = jax.lax.while_loop(cond, body, init)
        _, lo, _, g_lo, _, _, found, a_ok, g_ok, n = out
        # no point met the curvature condition: fall back on the last descending point, if any
        a_new = jnp.where(found, a_ok, lo)
        g_new = jnp.where(found, g_ok, g_lo)
        return a_new, g_new, n, found | (lo > 0)

    def cond(st):
        return (~st.done) & (st.iteration < max_iterations)

    def body(st):
        gamma0 = 1.0 / jnp.maximum(jnp.max(jnp.abs(st.g)), tiny)
        p = _two_loop(st.g, st.s_hist, st.y_hist, st.rho_hist, st.num_pairs, gamma0)
        d0 = jnp.dot(st.g, p)
        bad = ~(jnp.isfinite(d0) & (d0 < 0))
        # not a descent direction: restart from steepest descent and forget the history
        p = jnp.where(bad, -gamma0 * st.g, p)
        d0 = jnp.where(bad, -gamma0 * jnp.dot(st.g, st.g), d0)
        num_pairs = jnp.where(bad, 0, st.num_pairs)
        a, g_new, n, moved = line_search(st.x, p, d0)
        s = a * p
        x_new = jnp.where(moved, st.x + s, st.x)
        g_new = jnp.where(moved, g_new, st.g)
        y = g_new - st.g
        sy = jnp.dot(s, y)
        keep = moved & (sy > 1e-10 * jnp.sqrt(jnp.dot(s, s) * jnp.dot(y, y)))
        k = num_pairs % history
        s_hist = jnp.where(keep, st.s_hist.at[k].set(s), st.s_hist)
        y_hist = jnp.where(keep, st.y_hist.at[k].set(y), st.y_hist)
        rho_hist = jnp.where(keep, st.rho_hist.at[k].set(1.0 / jnp.where(keep, sy, 1.0)),
                             st.rho_hist)
        num_pairs = jnp.where(keep, num_pairs + 1, num_pairs)
        tiny_step = jnp.max(jnp.abs(s)) <= 1e-12 * jnp.maximum(1.0, jnp.max(jnp.abs(st.x)))
        done = (~moved) | converged(g_new, x_new) | (tiny_step & ~bad)
        return _LBFGSState(x_new, g_new, s_hist, y_hist, rho_hist, num_pairs, st.iteration + 1,
                           st.num_grad_evals + n, done)

    final = jax.lax.while_loop(cond, body, state)
    return final.x, final.num_grad_evals, final.iteration


# =============================================================================================
# Warmup, stage 2: Laplace approximation at the optimum.
# =============================================================================================


class _Laplace(NamedTuple):
    precision: Array  # -H at the optimum, symmetrised, shape=(d, d) (NaN when skipped)
    covariance: Array  # (-H)^-1, shape=(d, d) (a diagonal fallback when -H is not positive definite)
    chol_precision: Array  # Cholesky factor of -H, shape=(d, d) (identity when not usable)
    is_ok: Array  # bool: -H is positive definite and everything is finite
    num_grad_evals: Array  # int32


def _laplace(grad_logdensity, x, max_dim: int) -> _Laplace:
    d = x.shape[0]
    dtype = x.dtype
    eye = jnp.eye(d, dtype=dtype)
    if d > max_dim:
        return _Laplace(jnp.full((d, d), jnp.nan, dtype), eye, eye, jnp.zeros((), bool),
                        jnp.zeros((), jnp.int32))
    hess = jax.jacfwd(grad_logdensity)(x)
    precision = -0.5 * (hess + hess.T)
    chol = jnp.linalg.cholesky(precision)
    is_ok = jnp.all(jnp.isfinite(chol))
    chol = jnp.where(is_ok, chol, eye)
    inv_chol = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)
    covariance = inv_chol.T @ inv_chol
    diag = jnp.diagonal(precision)
    fallback = jnp.where(jnp.isfinite(diag) & (diag > 0), 1.0 / jnp.where(diag > 0, diag, 1.0), 1.0)
    is_ok = is_ok & jnp.all(jnp.isfinite(covariance))
    covariance = jnp.where(is_ok, covariance, jnp.diag(fallback))
    return _Laplace(precision, covariance, chol, is_ok, jnp.asarray(2 * d, jnp.int32))


def _laplace_draw(rng_key, x, lap: _Laplace, is_valid: Callable):
    """A start near ``N(x, (-H)^-1)``: the draw scaled by 1, 1/2, 1/4, 1/10 or 0, the first that
    ``is_valid`` accepts (finite gradient, and a finite value for kernels that use it).

    Returns the start and the evaluations spent checking.
    """
    xi = jax.random.normal(rng_key, x.shape, x.dtype)
    # x + L^-T xi ~ N(x, (L L^T)^-1)
    full = jax.scipy.linalg.solve_triangular(lap.chol_precision.T, xi, lower=False)
    diag = 0.5 * jnp.sqrt(jnp.diagonal(lap.covariance)) * xi
    offset = jnp.where(lap.is_ok, full, diag)
    chosen, found, evals = x, jnp.zeros((), bool), jnp.zeros((), jnp.int32)
    for factor in (1.0, 0.5, 0.25, 0.1):
        candidate = x + factor * offset
        ok = is_valid(candidate)
        evals = evals + jnp.where(found, 0, 1).astype(jnp.int32)
        take = ok & ~found
        chosen = jnp.where(take, candidate, chosen)
        found = found | ok
    return chosen, evals


# =============================================================================================
# Warmup, stage 3: staged windows on the preconditioned scale.
# =============================================================================================


def window_schedule(num_steps: int, *, init_buffer: int = 75, term_buffer: int = 50,
                    base_window: int = 25):
    """Stan's warmup schedule: ``(is_slow, is_window_end)`` boolean arrays of length ``num_steps``.

    A fast window of ``init_buffer`` steps (step size only), slow windows of doubling length from
    ``base_window`` that end by re-estimating the preconditioner, and a final fast window of
    ``term_buffer`` steps. Short warmups scale the buffers to 15% / 75% / 10% as Stan does.
    """
    is_slow = np.zeros(num_steps, bool)
    is_end = np.zeros(num_steps, bool)
    if num_steps < 20:
        return is_slow, is_end
    if init_buffer + base_window + term_buffer > num_steps:
        init_buffer = int(0.15 * num_steps)
        term_buffer = int(0.1 * num_steps)
        base_window = num_steps - init_buffer - term_buffer
    slow_end = num_steps - term_buffer
    start, size = init_buffer, base_window
    while start < slow_end:
        end = start + size
        if end + 2 * size > slow_end:
            end = slow_end
        is_slow[start:end] = True
        is_end[end - 1] = True
        start, size = end, 2 * size
    return is_slow, is_end


class _WarmupCarry(NamedTuple):
    states: Any  # kernel states, batched over chains
    shift: Array  # m, shape=(d,)
    scale: Array  # D, shape=(d,)
    da_state: Any  # dual averaging (shared by the chains)
    sum_x: Array  # shape=(d,)
    sum_x2: Array  # shape=(d,) (diagonal) or (d, d) (dense): sum of x x^T
    count: Array  # ()
    num_grad_evals: Array  # ()
    num_divergent: Array  # ()
    sum_z: Array  # shape=(d,): z (preconditioned) moments of the window, for its autocorrelation
    sum_z2: Array  # shape=(d,)
    sum_lag: Array  # shape=(d,): sum of z_t z_{t-1}
    num_lag: Array  # ()
    prev_z: Array  # shape=(num_chains, d)


def _to_x(shift, scale, z):
    """x = m + D z: ``scale`` is the diagonal D (d,) or a lower-triangular factor (d, d)."""
    return shift + (scale * z if scale.ndim == 1 else scale @ z)


def _to_z(shift, scale, x):
    if scale.ndim == 1:
        return (x - shift) / scale
    return jax.scipy.linalg.solve_triangular(scale, x - shift, lower=True)


def _affine(logdensity_fn, shift, scale):
    """The log-density of z where x = shift + scale z (the constant log|det D| is dropped)."""

    def logdensity_z(z):
        return logdensity_fn(_to_x(shift, scale, z))

    return logdensity_z


#: a step landing further than this many preconditioned standard deviations from the warmup's
#: centre is refused and flagged divergent (the position has run away, e.g. an approximate kernel
#: on a heavy tail); the target mass out there is negligible for any posterior with a variance
RUNAWAY_LIMIT = 1e3


def _safe_step(step, key, state, limit=None):
    """One step whose non-finite (or, with ``limit``, runaway) outcome is contained: keep the old
    state and flag it."""
    new_state, info = step(key, state)
    ok = all_finite(new_state.position)
    if limit is not None:
        ok = ok & (jnp.max(jnp.abs(new_state.position)) <= limit)
    new_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_state, state)
    return new_state, info, ~ok
