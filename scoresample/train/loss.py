"""The denoising score-matching loss on the OU process, its training times and its optimiser.

Loss (Vincent 2011; Ho et al. 2020's eps form, Song et al. 2021's continuous time): with
X_t = a_t X_0 + s_t Z, a_t = e^-t, s_t^2 = -expm1(-2t) and the weighting lambda(t) = s_t^2,

    L(theta) = E_{t, X_0, Z} |eps_theta(X_t, t) - Z|^2 / d,     eps_theta = -s_t score_theta,

whose minimiser is score_theta(x, t) = grad log p_t(x) (the score of a network in any of the
parameterisations of :mod:`scoresample.nn`; the energy form is trained through its gradient).
Times are drawn stratified over the batch, log-uniformly on [t_min, t_max] (or uniformly in
log-SNR), so that small t, where the score is steep, and large t, where the samplers start, both
get weight.

The optimiser is optax AdamW with linear warmup, cosine decay and global-norm clipping.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from scoresample import nn, processes

__all__ = ["denoising_loss", "sample_times", "make_optimizer", "TIME_SAMPLINGS"]

TIME_SAMPLINGS = ("log-uniform", "log-snr")


def sample_times(rng_key, batch_size: int, t_min: float, t_max: float,
                 kind: str = "log-uniform", dtype=jnp.float32) -> jax.Array:
    """Stratified training times, shape (batch_size,).

    u_i = (i + U_i) / B (one uniform per stratum), then ``log-uniform``: t = t_min (t_max/t_min)^u;
    ``log-snr``: lambda uniform between lambda(t_max) and lambda(t_min), t = log1p(e^{-2 lambda}) / 2.
    """
    u = (jnp.arange(batch_size, dtype=dtype)
         + jax.random.uniform(rng_key, (batch_size,), dtype=dtype)) / batch_size
    if kind == "log-uniform":
        return jnp.exp(math.log(t_min) + u * (math.log(t_max) - math.log(t_min))).astype(dtype)
    # Python floats stay weakly typed, so lambda is computed in ``dtype``
    lam_hi = float(processes.log_snr(t_min))
    lam_lo = float(processes.log_snr(t_max))
    lam = lam_lo + u * (lam_hi - lam_lo)
    return processes.time_from_log_snr(lam).astype(dtype)


def denoising_loss(model: nn.ScoreModel, x0, rng_key, *, t_min: float = 1e-3, t_max: float = 10.0,
                   time_sampling: str = "log-uniform") -> jax.Array:
    """Mean over the batch and coordinates of |eps_theta(a_t x0 + s_t z, t) - z|^2 (a scalar)."""
    k_t, k_z = jax.random.split(rng_key)
    t = sample_times(k_t, x0.shape[0], t_min, t_max, time_sampling, dtype=x0.dtype)
    z = jax.random.normal(k_z, x0.shape, dtype=x0.dtype)
    a = processes.alpha(t)[:, None]
    s = processes.sigma(t)[:, None]
    eps_hat = model.eps(a * x0 + s * z, t)
    return jnp.mean(jnp.square(eps_hat - z))


def make_optimizer(learning_rate: float, num_steps: int, *, warmup_steps: int,
                   final_lr_fraction: float = 0.01, weight_decay: float = 0.0,
                   clip_norm: float = 1.0) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on a linear-warmup / cosine-decay learning-rate schedule."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
        decay_steps=max(num_steps, warmup_steps + 1), end_value=learning_rate * final_lr_fraction)
    return optax.chain(optax.clip_by_global_norm(clip_norm),
                       optax.adamw(schedule, weight_decay=weight_decay))
