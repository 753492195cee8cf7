"""The time grids of FORS-diffusion and the choice of their density from a pilot run.

Every grid here runs from t_max down to t_min through nodes uniform in a coordinate c(rho) of
rho = e^{2t} - 1, with spacing log(1 + 1/G):

- ``"geometric"``: c = log rho, so rho_{k+1} = rho_k (1 + 1/G): about G + 1/2 steps per e-fold of
  rho, geometric in t near t_min and uniform in t later (the paper's grid).
- ``"smooth"``: c = log(rho / (1 + L rho)) for an L-smooth log p_0 (``lipschitz`` = L, a bound on
  its Hessian). For a Gaussian p_0 of precision L the log-ratio w of a step has Hessian
  a^2 / (s^2 (a^2 + L s^2)), so an estimate's size is the step in log rho times 1 / (1 + L rho):
  steps evenly spaced in c keep it constant (geometric while L rho << 1, sparse at large t), and
  the number of steps is about G log(1 / (L rho_min)) instead of G log(rho_max / rho_min).
- ``"adaptive"``: c = the integral of a :class:`Density` over log rho, the density measured by a
  pilot (:func:`density_from_pilot`): steps where the estimates are large.

An estimate W is the derivative along the step's path of a log-ratio whose Hessian is of the size
of the step, so W scales with the step to first order: :func:`growth_from_pilot` reads the clip
rate of every G off a pilot run's tail of estimates and picks G. :func:`fors_schedule` builds the
grid from G, or from the formula G = C (d* + log(K/delta)) log(K/delta) of the reproduction when
``constant`` is given. The derivations are on [the FORS page](../algorithms/fors.md).

Reference: Chen, Chewi, Daskalakis, Rakhlin, "High-accuracy sampling for diffusion models and
log-concave distributions", arXiv 2602.01338, 2026.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np

from scoresample import processes
from scoresample.base import check_in, check_int, check_positive

__all__ = [
    "FORSSchedule",
    "StepCoefficients",
    "step_coefficients",
    "GRIDS",
    "time_window",
    "fors_schedule",
    "TAIL_LEVELS",
    "Density",
    "density_from_pilot",
    "growth_from_pilot",
    "predicted_clip_rate",
]

Array = jax.Array

GRIDS = ("adaptive", "geometric", "smooth")
MIN_DENSITY = 1.0 / 8.0  # an adaptive grid's steps are at most 8 times its densest steps

# Thresholds (in units of B) at which a pilot counts |W| above: log-spaced from B/50 to 50 B, so
# that the clip rate of a grid up to 50 times finer or coarser can be read off.
TAIL_LEVELS = np.exp(np.linspace(math.log(0.02), math.log(50.0), 64))


class FORSSchedule(NamedTuple):
    """The grid of FORS-diffusion in float64 numpy, in sampling order (index 0 leaves t_max).

    ``t_from[k] > t_to[k] = t_from[k + 1]``; ``alpha = exp(-(t_from - t_to))``,
    ``eta = expm1(2 (t_from - t_to))``, ``s2 = 1 - exp(-2 t_to)``,
    ``eta_bar = eta s2 / (eta + s2)``.
    """

    t_from: np.ndarray
    t_to: np.ndarray
    alpha: np.ndarray
    eta: np.ndarray
    s2: np.ndarray
    eta_bar: np.ndarray
    growth: float  # G: consecutive nodes are log(1 + 1/G) apart in the grid's coordinate
    t_min: float
    t_max: float

    @property
    def num_steps(self) -> int:
        return int(self.t_from.shape[0])


class StepCoefficients(NamedTuple):
    """Coefficients of one reverse step from t_from down to t_to (see :class:`FORSSchedule`)."""

    t_from: Array
    t_to: Array
    alpha: Array
    eta: Array
    s2: Array
    eta_bar: Array


def step_coefficients(t_from, t_to) -> StepCoefficients:
    """Float64 coefficients of the exact reverse kernel from ``t_from`` to ``t_to`` < ``t_from``."""
    t_from = np.asarray(t_from, dtype=np.float64)
    t_to = np.asarray(t_to, dtype=np.float64)
    if np.any(t_to <= 0) or np.any(t_from <= t_to):
        raise ValueError("need 0 < t_to < t_from")
    gap = t_from - t_to
    eta = processes.rho(gap)
    s2 = processes.sigma2(t_to)
    return StepCoefficients(t_from, t_to, processes.alpha(gap), eta, s2, eta * s2 / (eta + s2))


def check_delta(delta) -> float:
    """The accuracy must lie in (0, 1)."""
    delta = check_positive("delta", delta)
    if delta >= 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    return delta


def time_window(delta: float, dim: int, second_moment: float, t_min=None, t_max=None):
    """``(t_min, t_max)``: s_{t_min}^2 = delta^2 / (d + m2), t_max = 0.5 log((d + m2) / delta^2)
    unless given (m2 = ``second_moment``)."""
    scale = dim + second_moment
    if t_min is None:
        t_min = -0.5 * math.log1p(-min(delta**2 / scale, 0.5))
    t_min = check_positive("t_min", t_min)
    if t_max is None:
        t_max = 0.5 * math.log(scale / delta**2)
    t_max = check_positive("t_max", t_max)
    if t_min >= t_max:
        raise ValueError(f"t_min must be < t_max, got t_min={t_min}, t_max={t_max}")
    return t_min, t_max


class Density(NamedTuple):
    """An adaptive grid's density of steps per unit of log rho, relative to its densest region
    (in [MIN_DENSITY, 1]), piecewise linear between ``log_rho`` knots and constant beyond."""

    log_rho: np.ndarray
    density: np.ndarray


def density_from_pilot(log_rho_mid, rms) -> Density:
    """Steps where the pilot's estimates were large: density proportional to their RMS.

    ``rms[k]`` is the RMS of the pilot's raw estimates in its step k (centred at log rho
    ``log_rho_mid[k]``, ascending). An estimate scales with the step (module docstring), so a
    density proportional to the RMS gives every step of the new grid the RMS of the densest
    region's steps. The RMS is smoothed by a running maximum over 5 steps (conservative),
    normalised by its largest value and floored at :data:`MIN_DENSITY`.
    """
    rms = np.nan_to_num(np.asarray(rms, dtype=np.float64), nan=0.0)
    padded = np.pad(rms, 2, mode="edge")
    smooth = np.max(np.stack([padded[i:i + rms.size] for i in range(5)]), axis=0)
    top = float(np.max(smooth)) if smooth.size else 0.0
    density = np.clip(smooth / top, MIN_DENSITY, 1.0) if top > 0 else np.ones_like(smooth)
    return Density(np.asarray(log_rho_mid, dtype=np.float64), density)


def _coordinate(grid: str, lipschitz: float | None, density: Density | None = None):
    """``(c, c_inverse)`` on log rho for the grid kinds of :data:`GRIDS`."""
    if grid == "geometric":
        return (lambda lr: lr), (lambda c: c)
    if grid == "adaptive":
        # c = integral of the density over log rho, tabulated finely (both maps by interpolation)
        knots, q = density.log_rho, density.density
        table = np.linspace(knots[0] - 60.0, knots[-1] + 60.0, 16385)
        dens = np.interp(table, knots, q)
        c_table = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(table))])
        return (lambda lr: np.interp(lr, table, c_table)), (lambda c: np.interp(c, c_table, table))
    log_l = math.log(lipschitz)
    # c = log rho - log(1 + L rho); inverse: rho = e^c / (1 - L e^c), with L e^c < 1
    return ((lambda lr: lr - np.logaddexp(0.0, log_l + lr)),
            (lambda c: c - np.log(-np.expm1(log_l + c))))


def _nodes(grid: str, lipschitz, growth: float, t_min: float, t_max: float, density=None):
    """log rho at the nodes, ascending, from t_min to t_max (float64)."""
    c_of, lr_of = _coordinate(grid, lipschitz, density)
    lo = float(c_of(math.log(processes.rho(t_min))))
    hi = float(c_of(math.log(processes.rho(t_max))))
    num_steps = max(1, math.ceil((hi - lo) / math.log1p(1.0 / growth)))
    log_rho = lr_of(lo + (hi - lo) * np.arange(num_steps + 1, dtype=np.float64) / num_steps)
    log_rho[0], log_rho[-1] = math.log(processes.rho(t_min)), math.log(processes.rho(t_max))
    return log_rho


def _schedule(log_rho: np.ndarray, growth: float, t_min: float, t_max: float) -> FORSSchedule:
    times = processes.time_from_log_snr(-0.5 * log_rho)
    times[0], times[-1] = t_min, t_max
    gap = np.diff(log_rho)  # log(rho_{k+1} / rho_k)
    s2 = np.exp(log_rho[:-1] - np.logaddexp(0.0, log_rho[:-1]))  # rho / (1 + rho) = s_{t_to}^2
    eta = np.expm1(gap) * s2  # e^{2 (t_from - t_to)} - 1 = (rho_{k+1} - rho_k) / (1 + rho_k)
    alpha = np.exp(-0.5 * np.log1p(eta))
    eta_bar = eta * s2 / (eta + s2)
    rev = slice(None, None, -1)
    return FORSSchedule(times[1:][rev].copy(), times[:-1][rev].copy(), alpha[rev].copy(),
                        eta[rev].copy(), s2[rev].copy(), eta_bar[rev].copy(), float(growth),
                        float(t_min), float(t_max))


def fors_schedule(delta: float, dim: int, *, intrinsic_dim: float | None = None,
                  second_moment: float | None = None, constant: float = 0.55,
                  growth: float | None = None, t_min: float | None = None,
                  t_max: float | None = None, grid: str = "geometric",
                  lipschitz: float | None = None, density: Density | None = None) -> FORSSchedule:
    """A FORS-diffusion grid for the accuracy ``delta``, with G given or from the constant C.

    Nodes are uniform in the ``grid`` coordinate (see the module docstring) with spacing
    log(1 + 1/G). G = ``growth`` when given, else G = C (d* + log(K/delta)) log(K/delta) solved
    jointly with the number of steps K (d* = ``intrinsic_dim``, else ``dim``; C = ``constant``).
    Defaults: s_{t_min}^2 = delta^2 / (d + m2) and t_max = 0.5 log((d + m2) / delta^2) with
    m2 = ``second_moment`` (default d). Everything is float64 with expm1/log1p: eta =
    (rho_{k+1} - rho_k)/(1 + rho_k) = expm1(log rho_{k+1} - log rho_k) s_{t_k}^2 exactly.
    """
    delta = check_delta(delta)
    dim = check_int("dim", dim)
    grid = check_in("grid", grid, GRIDS)
    if grid == "adaptive" and density is None:
        raise ValueError("grid='adaptive' needs a density (from a pilot: density_from_pilot)")
    if grid == "smooth":
        if lipschitz is None:
            raise ValueError("grid='smooth' needs lipschitz (a bound on the Hessian of log p_0)")
        lipschitz = check_positive("lipschitz", lipschitz)
    d_star = float(dim) if intrinsic_dim is None else check_positive("intrinsic_dim", intrinsic_dim)
    m2 = float(dim) if second_moment is None else check_positive("second_moment", second_moment)
    constant = check_positive("constant", constant)
    t_min, t_max = time_window(delta, dim, m2, t_min, t_max)
    if growth is None:
        c_of, _ = _coordinate(grid, lipschitz, density)
        span = float(c_of(math.log(processes.rho(t_max))) - c_of(math.log(processes.rho(t_min))))
        num_steps = 100
        for _ in range(50):
            lk = math.log(num_steps / delta)
            g = constant * (d_star + lk) * lk
            new = max(1, math.ceil(span / math.log1p(1.0 / g)))
            if new == num_steps:
                break
            num_steps = new
        growth = g
    else:
        growth = check_positive("growth", growth)
    return _schedule(_nodes(grid, lipschitz, growth, t_min, t_max, density), growth, t_min, t_max)


def predicted_clip_rate(tail_counts: np.ndarray, num_coins: float, factor) -> np.ndarray:
    """The clip rate a pilot predicts for a grid whose steps are ``factor`` times the pilot's.

    An estimate W is a derivative along the step's path of a log-ratio whose Hessian is of the
    size of the step (module docstring), so W scales with the step to first order: a grid f times
    coarser clips where the pilot's |W| exceeded B / f. ``tail_counts[j]`` counts the pilot's
    estimates above ``TAIL_LEVELS[j] * B``. Between levels the tail is interpolated in log-log;
    beyond the last level with at least 10 counts it is extrapolated by an exponential tail
    fitted to the upper levels (at most a rough guide there; the run reports the measured rate).
    """
    factor = np.atleast_1d(np.asarray(factor, dtype=np.float64))
    counts = np.asarray(tail_counts, dtype=np.float64)
    level = 1.0 / factor  # the pilot's threshold in units of B
    rate = counts / max(float(num_coins), 1.0)
    good = np.flatnonzero(counts >= 10)
    out = np.empty_like(level)
    if good.size == 0:  # too few estimates even at the lowest level: predict nothing is clipped
        out[:] = 0.0
        return out
    last = good[-1]
    inside = level <= TAIL_LEVELS[last]
    lv = np.log(TAIL_LEVELS[: last + 1])
    lr = np.log(np.maximum(rate[: last + 1], 1e-300))
    out[inside] = np.exp(np.interp(np.log(np.maximum(level[inside], TAIL_LEVELS[0])), lv, lr))
    if np.any(~inside):
        upper = good[-min(8, good.size):]
        if upper.size >= 2 and np.ptp(TAIL_LEVELS[upper]) > 0:
            slope, intercept = np.polyfit(TAIL_LEVELS[upper], np.log(rate[upper]), 1)
            slope = min(slope, -1e-12)
        else:
            slope, intercept = -1.0 / TAIL_LEVELS[last], math.log(rate[last]) + 1.0
        out[~inside] = np.minimum(np.exp(intercept + slope * level[~inside]), rate[last])
    return out


def growth_from_pilot(tail_counts, num_coins, pilot_growth: float, target: float,
                      density=None, max_growth: float = 1e4) -> tuple[float, float]:
    """The smallest G whose predicted clip rate is at most ``target``, and that rate.

    The pilot ran with growth ``pilot_growth``; G's steps are log1p(1/G) / log1p(1/G0) times the
    pilot's (:func:`predicted_clip_rate`). G is searched on a fine logarithmic grid in
    [1, ``max_growth``]. With per-step tails (``tail_counts`` of shape (K, levels), ``num_coins``
    of shape (K,)) and an adaptive grid's ``density`` at the pilot's steps (K,), step k of the new
    grid around the pilot's step k is 1 / density[k] times longer: each pilot step predicts its
    own clips from its own tail, and the rate is their sum over the coins.
    """
    target = check_positive("target", target)
    candidates = np.exp(np.linspace(0.0, math.log(max_growth), 2001))
    factors = np.log1p(1.0 / candidates) / math.log1p(1.0 / pilot_growth)
    tail = np.asarray(tail_counts, dtype=np.float64)
    if tail.ndim == 1:
        rates = predicted_clip_rate(tail, num_coins, factors)
    else:
        coins = np.asarray(num_coins, dtype=np.float64)
        dens = np.ones(coins.shape) if density is None else np.asarray(density, np.float64)
        clipped = np.zeros_like(factors)
        for k in range(tail.shape[0]):  # a quiet step (no level with 10 counts) clips nothing
            clipped += coins[k] * predicted_clip_rate(tail[k], max(coins[k], 1.0),
                                                      factors / dens[k])
        rates = clipped / max(float(np.sum(coins)), 1.0)
    ok = np.flatnonzero(rates <= target)
    index = int(ok[0]) if ok.size else candidates.size - 1
    return float(candidates[index]), float(rates[index])
