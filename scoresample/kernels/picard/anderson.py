"""Triangular Anderson acceleration of the Picard iteration (ParaTAA).

The Picard map G of a block is triangular: G_m(Y) depends on Y_0, ..., Y_{m-1} only. Anderson
acceleration (type II, mixing 1) with a history of ``memory`` iterations replaces the Picard
update Y <- G(Y) = Y + R by

    Y_m <- G_m(Y) - (dX_m + dR_m) gamma_m,
    gamma_m = argmin_g  sum_{j <= m} | R_j - dR_j g |^2  (+ a small ridge),

where dX_j, dR_j (memory x d) hold the differences of the last iterates and residuals at point j.
Each point solves its own least-squares problem over the points before it: a point's update
depends only on earlier points' residuals, as the sampler it solves does. Tang, Tang, Luo, Wang,
Chang, "Accelerating Parallel Sampling of Diffusion Models", ICML 2024 (arXiv 2402.09970).

The callers keep exactness: a point whose predecessors have all converged takes the plain Picard
update G_m, which is then exact; so after k iterations the first k points are exact as with plain
Picard, and M iterations reproduce the sequential sampler (see
[the Picard page](../algorithms/picard.md)).
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["anderson_step", "anderson_update", "init_history", "push_history"]


def push_history(history, new):
    """Drop the oldest of the ``memory`` entries of ``history`` (memory, ...) and append ``new``."""
    return jnp.concatenate([history[1:], new[None]], axis=0)


def anderson_update(plain, residual, d_x, d_r, num_valid, accelerate, regularization=1e-8):
    """One triangular Anderson step for the M points of a block or window.

    Args:
        plain: (M, d) the Picard image G(Y).
        residual: (M, d) R = G(Y) - Y.
        d_x, d_r: (memory, M, d) differences of the last iterates and of their residuals, the
            newest last; entries a point has not seen are zero.
        num_valid: (M,) how many of the newest history entries are valid at each point.
        accelerate: (M,) where False, the point takes the plain update.
        regularization: ridge added to the normal equations, relative to their trace.

    Returns:
        (M, d) the next iterate.
    """
    memory = d_r.shape[0]
    slots = jnp.arange(memory)
    # entry i is valid at point m when it is among the num_valid[m] newest
    is_valid = slots[None, :] >= memory - num_valid[:, None]  # (M, memory)
    # normal equations summed over the points j <= m: a cumulative sum along the time axis
    gram = jnp.cumsum(jnp.einsum("imd,jmd->mij", d_r, d_r), axis=0)  # (M, memory, memory)
    rhs = jnp.cumsum(jnp.einsum("imd,md->mi", d_r, residual), axis=0)  # (M, memory)
    pair = is_valid[:, :, None] & is_valid[:, None, :]
    eye = jnp.eye(memory, dtype=plain.dtype)[None]
    gram = jnp.where(pair, gram, eye)
    scale = jnp.trace(gram, axis1=1, axis2=2) / memory
    gram = gram + (regularization * scale + jnp.finfo(plain.dtype).tiny)[:, None, None] * eye
    rhs = jnp.where(is_valid, rhs, 0.0)
    gamma = jnp.linalg.solve(gram, rhs[..., None])[..., 0]  # (M, memory)
    use = accelerate & (num_valid > 0) & jnp.all(jnp.isfinite(gamma), axis=-1)
    gamma = jnp.where(use[:, None], gamma, 0.0)
    correction = jnp.einsum("mi,imd->md", gamma, d_x + d_r)
    return plain - correction


def init_history(path, memory: int):
    """The Anderson history of a first guess ``path`` (M, d): (previous iterate, its residual,
    d_x, d_r), with nothing valid yet."""
    zeros = jnp.zeros((memory,) + path.shape, path.dtype)
    return path, jnp.zeros_like(path), zeros, zeros


def anderson_step(path, image, history, num_valid, accelerate):
    """Record the iterate ``path`` and its Picard image, and return the next iterate.

    The safeguard: at a point where the residual summed over the points up to it has grown since
    the previous iteration, the history is not trusted and the point takes the plain update.

    Args:
        path: (M, d) the iterate Y whose image was just evaluated.
        image: (M, d) its Picard image G(Y).
        history: from :func:`init_history` or the previous call.
        num_valid: (M,) history entries each point has (iterations it saw before this one,
            at most ``memory``).
        accelerate: (M,) points allowed to take the Anderson update.

    Returns:
        ``(next_path, history)``.
    """
    prev_path, prev_residual, d_x, d_r = history
    residual = image - path
    d_x = push_history(d_x, path - prev_path)
    d_r = push_history(d_r, residual - prev_residual)
    grew = (jnp.cumsum(jnp.sum(residual**2, axis=-1))
            > jnp.cumsum(jnp.sum(prev_residual**2, axis=-1)))
    accelerate = accelerate & ~grew
    new_path = anderson_update(image, residual, d_x, d_r, num_valid, accelerate)
    return new_path, (path, residual, d_x, d_r)
