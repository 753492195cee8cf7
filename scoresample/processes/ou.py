"""The Ornstein-Uhlenbeck forward process, its time grids and schedules.

Forward process of every OU sampler: dX = -X dt + sqrt(2) dB, so X_t = a_t X_0 + s_t Z with
a_t = exp(-t) and s_t^2 = 1 - exp(-2t) = -expm1(-2t); the stationary law is N(0, I). Every schedule
is built in float64 numpy with expm1/log1p (1 - exp(-2t) by subtraction loses all digits at small t)
and only then handed to JAX.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from scoresample.base import check_in, check_int, check_positive, check_times

__all__ = [
    "alpha",
    "sigma2",
    "sigma",
    "rho",
    "log_snr",
    "time_from_log_snr",
    "time_grid",
    "GRID_KINDS",
    "li_yan_schedule",
    "default_t_max",
    "score_to_x0",
]


# ----- marginal coefficients (work on numpy or jax inputs) -----------------------------------

def array_module(t):
    """numpy for Python and numpy numbers and arrays (float64 schedules), else jax.numpy."""
    return np if isinstance(t, (float, int, np.ndarray, np.floating)) else jnp


def alpha(t):
    """a_t = exp(-t)."""
    return array_module(t).exp(-t)


def sigma2(t):
    """s_t^2 = 1 - exp(-2t), computed as -expm1(-2t)."""
    return -array_module(t).expm1(-2.0 * t)


def sigma(t):
    """s_t = sqrt(1 - exp(-2t))."""
    return array_module(t).sqrt(sigma2(t))


def rho(t):
    """rho_t = e^{2t} - 1 = s_t^2 / a_t^2 (the variance of the noise in x0-scaled units)."""
    return array_module(t).expm1(2.0 * t)


def log_snr(t):
    """lambda_t = log(a_t / s_t) = -0.5 log(e^{2t} - 1)."""
    return -0.5 * array_module(t).log(rho(t))


def time_from_log_snr(lam):
    """Inverse of :func:`log_snr`: t = 0.5 log1p(exp(-2 lambda))."""
    xp = array_module(lam)
    return 0.5 * xp.log1p(xp.exp(-2.0 * lam))


def score_to_x0(score, x, t):
    """Tweedie's denoiser x0_hat = (x + s_t^2 score) / a_t."""
    return (x + sigma2(t) * score) / alpha(t)


# ----- time grids ------------------------------------------------------------------------------

GRID_KINDS = ("uniform", "geometric", "sqrt", "log-snr")


def time_grid(num_steps: int, t_min: float, t_max: float, kind: str = "uniform") -> np.ndarray:
    """A decreasing float64 grid t_0 = t_max > ... > t_{num_steps} = t_min.

    ``uniform`` in t; ``geometric`` uniform in log t (fine near t_min); ``sqrt`` uniform in sqrt t;
    ``log-snr`` uniform in lambda = log(a_t / s_t) (the DPM-Solver grid).
    """
    num_steps = check_int("num_steps", num_steps)
    t_min, t_max = check_times(t_min, t_max)
    check_in("grid", kind, GRID_KINDS)
    u = np.linspace(0.0, 1.0, num_steps + 1, dtype=np.float64)
    if kind == "uniform":
        ts = t_max + (t_min - t_max) * u
    elif kind == "geometric":
        ts = np.exp(np.log(t_max) + (np.log(t_min) - np.log(t_max)) * u)
    elif kind == "sqrt":
        ts = (np.sqrt(t_max) + (np.sqrt(t_min) - np.sqrt(t_max)) * u) ** 2
    else:
        lam = log_snr(t_max) + (log_snr(t_min) - log_snr(t_max)) * u
        ts = time_from_log_snr(lam)
    ts[0], ts[-1] = t_max, t_min
    return ts


def li_yan_schedule(num_steps: int, c0: float = 2.0, c1: float = 4.0):
    """The DDPM schedule of Li and Yan (2024): returns ``(betas, abar, times)``, each of length T.

    beta_1 = T^-c0 and beta_{k+1} = (c1 log T / T) min(beta_1 (1 + c1 log T / T)^k, 1);
    abar_k = prod_{j<=k} (1 - beta_j) = exp(cumsum(log1p(-beta))); the OU time of step k is
    t_k = -0.5 log abar_k, so ``times`` increases with k (k = 1 is the least noisy).
    """
    T = check_int("num_steps", num_steps, minimum=2)
    c0 = check_positive("c0", c0)
    c1 = check_positive("c1", c1)
    k = np.arange(T, dtype=np.float64)
    r = c1 * math.log(T) / T
    beta1 = T ** (-c0)
    betas = np.empty(T, dtype=np.float64)
    betas[0] = beta1
    betas[1:] = r * np.minimum(beta1 * (1.0 + r) ** k[1:], 1.0)
    betas = np.minimum(betas, 1.0 - 1e-12)
    log_abar = np.cumsum(np.log1p(-betas))
    abar = np.exp(log_abar)
    times = -0.5 * log_abar
    return betas, abar, times


def default_t_max(dim: int, second_moment: float = 1.0, eps: float = 1e-2) -> float:
    """T about 0.5 log((d + m2) / eps^2): where KL(p_T || N(0, I)) is of order eps^2."""
    return 0.5 * math.log((dim + second_moment) / eps**2)
