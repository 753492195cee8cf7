"""Gradient-only L-BFGS: a minimiser that never evaluates the objective, only its gradient.

Warmups use it to move chains from a start far in the tails to the mode region in a few dozen
gradient evaluations, for kernels (FORS) that never see log-density values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["gradient_only_lbfgs"]

Array = jax.Array


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
