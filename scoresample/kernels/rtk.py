"""RTK: reverse transition kernels, on a score (diffusion) and on a log-density (proximal sampler).

Diffusion (Huang et al. 2024). Split [t_min, T] into K segments. From x at time t to t' = t - eta,
the exact reverse transition kernel is

    p(z | x) ∝ exp(-g(z)),   g(z) = f_{t'}(z) + |z - e^eta x|^2 / (2 (e^{2 eta} - 1)),

with f_{t'} = -log p_{t'}: a restricted Gaussian oracle centred at e^eta x with variance
rho = e^{2 eta} - 1, and grad g(z) = -score(z, t') + (z - e^eta x) / rho. Each segment starts from the
DDPM one-step proposal z_0 = e^eta x + 2 (e^eta - 1) score(x, t) + sqrt(rho) xi and runs S inner steps
of MALA (``"rtk-mala"``) or of exact frozen-gradient underdamped Langevin (``"rtk-uld"``) on g. The
score at the last inner point is reused as score(x, t) of the next segment, so a run costs
1 + K (1 + S c) score evaluations, c = 1 for ULD and MALA with an exact energy, c = 1 + n for MALA with
an n-node Gauss-Legendre energy difference. MALA with an exact ``energy_fn`` also makes K (1 + S)
energy evaluations (counted apart, in ``num_energy_evals``; with an energy network both come from one
value-and-grad pass).

Log-density (the proximal sampler; RTK with no time). For pi ∝ exp(-V) and step h:

    y ~ N(x, h I);  then x' from S inner steps on pi_y(z) ∝ exp(-V(z) - |z - y|^2 / (2h)),

started at the current x. With MALA inside, the x-update leaves pi_y invariant, so the whole step is
Metropolis-within-Gibbs on (x, y) and keeps pi exactly invariant for every S >= 1. With ULD inside
(unadjusted) the chain has a bias; see :func:`as_top_level_api`.

Reference: Huang, Zou, Dong, Zhang, Ma, Zhang, "Reverse Transition Kernel: A Flexible Framework to
Accelerate Diffusion Inference", NeurIPS 2024 (arXiv 2405.16387); the proximal sampler of Lee, Shen,
Tian (2021) and Chen, Chewi, Salim, Wibisono (2022).

Example:
    >>> from scoresample import diffusion, targets
    >>> mix = targets.four_modes_2d()
    >>> res = diffusion.sample(jax.random.key(0), "rtk-mala", mix.score, dim=2, num_samples=1000,
    ...                        nfe=100, energy_fn=mix.energy)   # or no energy_fn: quadrature
    >>> warm = rtk_warmup(jax.random.key(1), logdensity_fn, jnp.zeros(2), 500)
    >>> algo = scoresample.rtk(logdensity_fn, **warm.parameters)   # a blackjax SamplingAlgorithm
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from blackjax.base import build_sampling_algorithm
import numpy as np
from jax.flatten_util import ravel_pytree

from scoresample.adaptation import dual_averaging_warmup
from scoresample.base import (
    DiffusionPlan,
    DiffusionState,
    KernelAPI,
    SamplingAlgorithm,
    all_finite,
    check_callable,
    check_in,
    check_int,
    check_key,
    check_parameter,
    check_position,
    check_positive,
)
from scoresample.kernels.baselines import ei_table
from scoresample.kernels.inner import (
    InnerState,
    ULDState,
    init_inner,
    mala_chain,
    quadrature_rule,
    score_line_integral,
    uld_chain,
)
from scoresample.processes import GRID_KINDS, default_t_max, score_to_x0, time_grid

__all__ = [
    "RTKState",
    "RTKInfo",
    "init",
    "build_kernel",
    "as_top_level_api",
    "rtk",
    "rtk_warmup",
    "RTKWarmupResult",
    "default_inner_step_size",
    "RTKDiffusionInfo",
    "rtk_mala_plan",
    "rtk_uld_plan",
    "rtk_grid",
    "subproblem_moments_gaussian",
    "INNER_SOLVERS",
    "RTK_ULD_COV_BIAS",
    "RTK_ULD_SD_BIAS",
]

INNER_SOLVERS = ("mala", "uld")

# The bias of the ULD inner solver at the diffusion defaults (tau sqrt(L) = 1, gamma / sqrt(L) = 4):
# on a Gaussian subproblem whose precision is at most L, the stationary covariance of the
# frozen-gradient chain exceeds the exact one by at most 13.8% (relative, per eigendirection; worst
# at the stiffest direction, computed from the chain's discrete Lyapunov equation).
RTK_ULD_COV_BIAS = 0.15

# The bias of the proximal sampler with the ULD inner at its defaults (tau = sqrt(h)/4,
# gamma = 2/sqrt(h), 3 inner steps) on a Gaussian target, per eigendirection of precision lambda:
# stationary sd / exact sd - 1 = 1.7%, 2.6%, 3.6%, 5.7%, 10.6% at h lambda = 0.01, 0.5, 1, 2, 4
# (exact, from the linear chain's covariance recursion). RTK_ULD_SD_BIAS bounds it for h lambda <= 1.
RTK_ULD_SD_BIAS = 0.04


# =====================================================================================================
# Log-density: the proximal sampler with an RTK inner solver
# =====================================================================================================


class RTKState(NamedTuple):
    """State of the RTK proximal sampler: the point, its log-density and gradient (reused)."""

    position: object  # array or pytree
    logdensity: jax.Array  # shape=()
    logdensity_grad: object  # like position


class RTKInfo(NamedTuple):
    """Diagnostics of one RTK proximal step.

    - ``acceptance_rate``: mean MH acceptance probability of the inner MALA steps (1 for ULD).
    - ``is_accepted``: at least one inner proposal was accepted (the point moved).
    - ``num_accepted``: accepted inner proposals.
    - ``num_grad_evals``: log-density value-and-gradient evaluations executed (= num_inner_steps).
    - ``is_divergent``: a non-finite value was met (the offending proposal was refused).
    """

    acceptance_rate: jax.Array
    is_accepted: jax.Array
    num_accepted: jax.Array
    num_grad_evals: jax.Array
    is_divergent: jax.Array


def init(position, logdensity_fn: Callable) -> RTKState:
    """Evaluate the log-density and its gradient at ``position`` (array or pytree)."""
    check_position("position", position)
    check_callable("logdensity_fn", logdensity_fn)
    logdensity, grad = jax.value_and_grad(logdensity_fn)(position)
    return RTKState(position, logdensity, grad)


def default_inner_step_size(step_size, dim: int, inner: str = "mala"):
    """The inner step used when none is given, relative to the outer step h.

    MALA: tau = h / (2 d^(1/3)). The inner target has Hessian hess V + I/h >= I/h, so tau (1/h) =
    1 / (2 d^(1/3)) keeps the inner MALA acceptance high even as h -> 0 (the usual d^(-1/3) MALA
    scaling), and the acceptance falls as h grows past 1/L: the warmup tunes h on that acceptance.
    ULD: tau = sqrt(h) / 4, friction 2 / sqrt(h) (critical damping of the I/h part); see
    :data:`RTK_ULD_SD_BIAS` for the bias this leaves.
    """
    if inner == "mala":
        return step_size / (2.0 * dim ** (1.0 / 3.0))
    return 0.25 * jnp.sqrt(step_size)


def build_kernel(inner: str = "mala", num_inner_steps: int = 3):
    """Build the RTK proximal kernel with a MALA or ULD inner solver of ``num_inner_steps`` steps.

    Returns ``kernel(rng_key, state, logdensity_fn, step_size, inner_step_size=None,
    friction=None) -> (RTKState, RTKInfo)``; ``None`` inner parameters follow
    :func:`default_inner_step_size` (and friction 2 / sqrt(h) for ULD).
    """
    check_in("inner", inner, INNER_SOLVERS)
    num_inner_steps = check_int("num_inner_steps", num_inner_steps)

    def kernel(rng_key, state: RTKState, logdensity_fn: Callable, step_size,
               inner_step_size=None, friction=None) -> tuple[RTKState, RTKInfo]:
        x, unravel = ravel_pytree(state.position)
        grad_x, _ = ravel_pytree(state.logdensity_grad)
        h = jnp.asarray(step_size, dtype=x.dtype)
        tau = default_inner_step_size(h, x.shape[0], inner) if inner_step_size is None else (
            jnp.asarray(inner_step_size, dtype=x.dtype))
        key_y, key_v, key_inner = jax.random.split(rng_key, 3)
        y = x + jnp.sqrt(h) * jax.random.normal(key_y, x.shape, dtype=x.dtype)

        def flat_value_and_grad(z):
            value, grad = jax.value_and_grad(logdensity_fn)(unravel(z))
            return value, ravel_pytree(grad)[0]

        def potential_fn(z):
            logdensity, grad = flat_value_and_grad(z)
            offset = z - y
            return (-logdensity + 0.5 * jnp.vdot(offset, offset) / h, -grad + offset / h,
                    (logdensity, grad))

        def energy_diff_fn(old, new):
            # -(log pi(z') - log pi(z)) + (|z' - y|^2 - |z - y|^2) / (2h), without cancellation
            step = new.position - old.position
            quad = 0.5 * jnp.vdot(step, new.position + old.position - 2.0 * y) / h
            return -(new.aux[0] - old.aux[0]) + quad

        offset = x - y
        if inner == "mala":
            start = InnerState(x, jnp.zeros((), x.dtype), -grad_x + offset / h,
                               (state.logdensity, grad_x))
            final, info = mala_chain(key_inner, start, potential_fn, tau, num_inner_steps,
                                     energy_diff_fn)
        else:
            gamma = 2.0 / jnp.sqrt(h) if friction is None else jnp.asarray(friction, x.dtype)
            velocity = jax.random.normal(key_v, x.shape, dtype=x.dtype)
            start = ULDState(x, velocity, -grad_x + offset / h, (state.logdensity, grad_x))
            final, info = uld_chain(key_inner, start, potential_fn, tau, gamma, num_inner_steps)
        logdensity, grad = final.aux
        new_state = RTKState(unravel(final.position), logdensity, unravel(grad))
        return new_state, RTKInfo(info.acceptance_rate, info.is_accepted, info.num_accepted,
                                  jnp.asarray(num_inner_steps, jnp.int32), info.is_divergent)

    return kernel


def as_top_level_api(logdensity_fn: Callable, step_size, *, inner: str = "mala",
                     num_inner_steps: int = 3, inner_step_size=None, friction=None
                     ) -> SamplingAlgorithm:
    """RTK proximal sampler on exp(logdensity_fn): ``SamplingAlgorithm(init, step)``.

    One step: y = x + sqrt(h) xi, then ``num_inner_steps`` steps of the inner solver on
    pi_y(z) ∝ pi(z) exp(-|z - y|^2 / (2h)), started at x.

    - ``inner="mala"``: each inner step is MALA with step tau and its own MH test; pi is exactly
      invariant for every h, tau and number of inner steps (Metropolis-within-Gibbs on (x, y)).
    - ``inner="uld"``: frozen-gradient underdamped Langevin (fresh velocity each outer step, friction
      gamma), unadjusted. Its stationary law is biased by O(tau). On a Gaussian with the defaults
      (tau = sqrt(h)/4, gamma = 2/sqrt(h), 3 inner steps) the stationary sd exceeds the exact one
      by 1.7% to 3.6% in directions with h lambda <= 1, 5.7% at h lambda = 2 and 10.6% at 4
      (lambda an eigenvalue of the precision; :data:`RTK_ULD_SD_BIAS`). Use it when MH rejections
      are the bottleneck, not for exact answers.

    Args:
        logdensity_fn: log pi up to a constant, on an array or a pytree.
        step_size: outer step h > 0 (for L-smooth V, h <= 1/L keeps pi_y well conditioned).
        inner: "mala" or "uld".
        num_inner_steps: S >= 1 inner steps (S value-and-gradient evaluations per step).
        inner_step_size: tau; default :func:`default_inner_step_size`.
        friction: ULD friction gamma; default 2 / sqrt(h) (ULD only).

    Example:
        >>> algo = scoresample.rtk(logdensity_fn, 0.5, inner="mala", num_inner_steps=3)
        >>> state = algo.init(jnp.zeros(2))
        >>> state, info = jax.jit(algo.step)(jax.random.key(0), state)
    """
    check_callable("logdensity_fn", logdensity_fn)
    step_size = check_parameter("step_size", step_size)
    check_in("inner", inner, INNER_SOLVERS)
    num_inner_steps = check_int("num_inner_steps", num_inner_steps)
    if inner_step_size is not None:
        inner_step_size = check_parameter("inner_step_size", inner_step_size)
    if friction is not None:
        if inner != "uld":
            raise ValueError("friction is a parameter of the ULD inner solver; use inner='uld'")
        friction = check_parameter("friction", friction)
    kernel = build_kernel(inner, num_inner_steps)

    return build_sampling_algorithm(kernel, init, logdensity_fn,
                                    kernel_args=(step_size, inner_step_size, friction))


rtk = KernelAPI(as_top_level_api, init, build_kernel)


class RTKWarmupResult(NamedTuple):
    """``state`` after warmup, ``parameters`` to pass as ``rtk(logdensity_fn, **parameters)``,
    and the warmup ``infos``."""

    state: RTKState
    parameters: dict
    infos: RTKInfo


def rtk_warmup(rng_key, logdensity_fn: Callable, position, num_steps: int = 500, *,
               inner: str = "mala", num_inner_steps: int = 3, target_acceptance: float = 0.75,
               initial_step_size: float = 0.1) -> RTKWarmupResult:
    """Tune the outer step h of :func:`rtk` by dual averaging on the inner MALA acceptance.

    Rule: the inner step follows h, tau = h / (2 d^(1/3)) (:func:`default_inner_step_size`), and
    h is tuned so that the mean inner MALA acceptance averages ``target_acceptance``. For small h the
    inner target is nearly N(y, h I) and the acceptance is high; it falls once h L is of order one,
    which is the h the proximal sampler wants. With ``inner="uld"`` the warmup runs the MALA inner
    (ULD has no acceptance to tune on) and returns h with the ULD defaults tau = sqrt(h)/4 and
    friction 2/sqrt(h).

    Returns:
        :class:`RTKWarmupResult`; ``parameters`` holds ``step_size``, ``inner``,
        ``num_inner_steps`` and ``inner_step_size``.

    Example:
        >>> warm = rtk_warmup(key, logdensity_fn, jnp.zeros(2), 500)
        >>> algo = scoresample.rtk(logdensity_fn, **warm.parameters)
    """
    check_key("rng_key", rng_key)
    check_callable("logdensity_fn", logdensity_fn)
    num_steps = check_int("num_steps", num_steps)
    check_in("inner", inner, INNER_SOLVERS)
    num_inner_steps = check_int("num_inner_steps", num_inner_steps)
    target_acceptance = check_positive("target_acceptance", target_acceptance)
    if target_acceptance >= 1:
        raise ValueError(f"target_acceptance must be in (0, 1), got {target_acceptance}")
    initial_step_size = check_positive("initial_step_size", initial_step_size)
    mala_kernel = build_kernel("mala", num_inner_steps)
    state = init(position, logdensity_fn)

    def kernel(key, state, h):
        return mala_kernel(key, state, logdensity_fn, h)

    result = dual_averaging_warmup(rng_key, kernel, state, initial_step_size, num_steps,
                                   target=target_acceptance)
    h = result.step_size
    dim = ravel_pytree(position)[0].shape[0]
    parameters = dict(step_size=h, inner=inner, num_inner_steps=num_inner_steps,
                      inner_step_size=default_inner_step_size(h, dim, inner))
    return RTKWarmupResult(result.state, parameters, result.infos)


# =====================================================================================================
# Diffusion: RTK-MALA and RTK-ULD on a score
# =====================================================================================================


class RTKDiffusionInfo(NamedTuple):
    """Diagnostics of one RTK segment (one ``step`` of the diffusion kernel).

    ``num_grad_evals`` counts score evaluations executed in the segment (the first segment also
    counts the score at x_T made by ``init``); ``num_energy_evals`` counts ``energy_fn`` calls;
    ``num_rounds`` sequential rounds of batched evaluation; ``acceptance_rate`` the mean inner MALA
    acceptance (1 for ULD); ``num_accepted`` accepted inner proposals.
    """

    num_grad_evals: jax.Array
    num_energy_evals: jax.Array
    num_rounds: jax.Array
    is_divergent: jax.Array
    acceptance_rate: jax.Array
    num_accepted: jax.Array


GRIDS = ("eta-rule",) + GRID_KINDS


def _eta_rule_next(t):
    """t' with e^{2(t - t')} - 1 = s_{t'}^2 / 2: the rule eta = 0.5 log(1 + 1/(2 L)), L = 1/s_{t'}^2."""
    return 0.5 * np.log1p(2.0 * np.expm1(2.0 * t) / 3.0)


def rtk_grid(t_min: float, t_max: float, num_segments: int | None = None,
             kind: str = "eta-rule") -> np.ndarray:
    """The segment end points t_0 = t_max > ... > t_K = t_min (float64 numpy).

    ``"eta-rule"`` without ``num_segments``: every segment has e^{2 eta} - 1 = s_{t - eta}^2 / 2, the
    step-size rule eta = 0.5 log(1 + 1/(2L)) with the local bound L_t = 1/s_t^2 on -hess log p_t,
    which makes each subproblem well conditioned (about 0.2 long for large t, geometric with ratio
    2/3 near 0). With ``num_segments`` it is the same grid stretched to K segments (uniform in the
    rule's own segment count). Other kinds are :func:`scoresample.processes.time_grid`.
    """
    check_in("grid", kind, GRIDS)
    if kind != "eta-rule":
        return time_grid(check_int("num_segments", num_segments), t_min, t_max, kind)
    ts = [t_max]
    while ts[-1] > t_min:
        ts.append(max(_eta_rule_next(ts[-1]), t_min))
    ts = np.asarray(ts, dtype=np.float64)
    if len(ts) > 2 and ts[-2] - ts[-1] < 0.25 * (ts[-3] - ts[-2]):
        ts = np.delete(ts, -2)  # do not leave a sliver of a last segment
    if num_segments is None:
        return ts
    num_segments = check_int("num_segments", num_segments)
    # fractional rule count c(t) (piecewise linear in log t between rule points), then uniform in c
    counts = np.arange(len(ts), dtype=np.float64)
    targets = np.linspace(0.0, counts[-1], num_segments + 1)
    out = np.exp(np.interp(targets, counts, np.log(ts)))
    out[0], out[-1] = t_max, t_min
    return out


def subproblem_moments_gaussian(mean, cov, x, t: float, eta: float):
    """Exact mean and covariance of the RTK subproblem when the data law is N(mean, cov).

    p_{t'} = N(a mean, a^2 cov + s^2 I) with t' = t - eta, times N(e^eta x, rho I), rho = e^{2 eta} - 1:
    precision P = C^-1 + I/rho, mean P^-1 (C^-1 a mean + e^eta x / rho). Used by the exact tests.
    """
    mean, cov, x = (np.asarray(v, dtype=np.float64) for v in (mean, cov, x))
    t_next = t - eta
    a = math.exp(-t_next)
    s2 = -math.expm1(-2.0 * t_next)
    rho = math.expm1(2.0 * eta)
    dim = mean.shape[0]
    c_inv = np.linalg.inv(a**2 * cov + s2 * np.eye(dim))
    precision = c_inv + np.eye(dim) / rho
    cov_sub = np.linalg.inv(precision)
    return cov_sub @ (c_inv @ (a * mean) + math.exp(eta) * x / rho), cov_sub


def _ei_proposal(coefficients, x, score_x, rng_key):
    """z_0 = e^eta x + 2 (e^eta - 1) score(x, t) + sqrt(e^{2 eta} - 1) xi, coefficients from ei_table."""
    noise = jax.random.normal(rng_key, x.shape, dtype=x.dtype)
    return coefficients[0] * x + coefficients[1] * score_x + coefficients[2] * noise


def _segment_potential(score_fn, energy_fn, t_next, center, rho, use_energy: bool):
    """potential_fn of the subproblem g at one segment: (g or 0, grad g, score at z)."""

    def potential_fn(z):
        score = score_fn(z, t_next)
        offset = z - center
        grad = -score + offset / rho
        if use_energy:
            value = energy_fn(z, t_next) + 0.5 * jnp.vdot(offset, offset) / rho
        else:
            value = jnp.zeros((), z.dtype)
        return value, grad, score

    return potential_fn


def _quadrature_energy_diff(score_fn, t_next, center, rho, rule):
    """g(z') - g(z) from a line integral of the score (quadratic part exact)."""

    def energy_diff_fn(old, new):
        integral = score_line_integral(lambda p: score_fn(p, t_next), old.position, new.position,
                                       old.aux, new.aux, rule)
        step = new.position - old.position
        quad = 0.5 * jnp.vdot(step, new.position + old.position - 2.0 * center) / rho
        return -integral + quad

    return energy_diff_fn


MIN_SEGMENTS = 24


def _resolve_segments(nfe, num_segments, num_inner_steps, evals_per_inner_step,
                      default_inner_steps):
    """K and S from the budget 1 + K (1 + S c) <= nfe (the paper's equal split over segments).

    With ``nfe`` alone, segments come first: S = clip(floor(((nfe - 1) / 24 - 1) / c), 1,
    ``default_inner_steps``), then K = floor((nfe - 1) / (1 + S c)); so a small budget keeps at least
    24 segments with fewer inner steps and a large one adds segments. (Measured on the benchmark
    mixtures at nfe = 50: K = 24, S = 1 beat K = 12, S = 3; at nfe = 100 K = 24, S = 3 was best or
    tied; see docs/benchmarks/rtk.md.)
    """
    if nfe is None:
        return num_segments, (default_inner_steps if num_inner_steps is None else num_inner_steps)
    c = evals_per_inner_step
    if num_segments is not None and num_inner_steps is not None:
        cost = 1 + num_segments * (1 + num_inner_steps * c)
        if cost > nfe:
            raise ValueError(f"nfe={nfe} is below the cost 1 + K (1 + S c) = {cost} of "
                             f"num_segments={num_segments}, num_inner_steps={num_inner_steps}; "
                             "give at most two of nfe, num_segments, num_inner_steps")
        return num_segments, num_inner_steps
    if num_segments is not None:
        inner_steps = ((nfe - 1) // num_segments - 1) // c
        if inner_steps < 1:
            raise ValueError(f"nfe={nfe} leaves no inner step for num_segments={num_segments} "
                             f"(each segment costs 1 + S * {c} evaluations); raise nfe or lower "
                             "num_segments")
        return num_segments, inner_steps
    if num_inner_steps is None:
        inner_steps = ((nfe - 1) // MIN_SEGMENTS - 1) // c
        inner_steps = int(min(max(inner_steps, 1), default_inner_steps))
    else:
        inner_steps = num_inner_steps
    segments = (nfe - 1) // (1 + inner_steps * c)
    if segments < 1:
        raise ValueError(f"nfe={nfe} is too small for num_inner_steps={inner_steps} "
                         f"(one segment costs {1 + inner_steps * c} evaluations plus 1)")
    return segments, inner_steps


def _common_plan(method, score_fn, dim, nfe, num_segments, num_inner_steps, t_min,
                 t_max, grid, inner_step_scale, evals_per_inner_step, default_inner_steps,
                 denoise):
    check_callable("score_fn", score_fn)
    dim = check_int("dim", dim)
    if nfe is not None:
        nfe = check_int("nfe", nfe, minimum=3)
    if num_segments is not None:
        num_segments = check_int("num_segments", num_segments)
    if num_inner_steps is not None:
        num_inner_steps = check_int("num_inner_steps", num_inner_steps)
    t_min = check_positive("t_min", t_min)
    t_max = default_t_max(dim) if t_max is None else check_positive("t_max", t_max)
    if t_min >= t_max:
        raise ValueError(f"t_min must be < t_max, got t_min={t_min}, t_max={t_max}")
    if grid is not None:
        check_in("grid", grid, GRIDS)
    inner_step_scale = check_positive("inner_step_scale", inner_step_scale)
    if not isinstance(denoise, (bool, np.bool_)):
        raise TypeError(f"denoise must be a bool, got {denoise!r}")
    num_segments, num_inner_steps = _resolve_segments(
        nfe, num_segments, num_inner_steps, evals_per_inner_step, default_inner_steps)
    if grid is None:
        # the eta rule when it sets K; with K fixed (by the user or a budget), a log-SNR grid:
        # measured best or tied among the kinds on both benchmark mixtures at nfe = 100
        grid = "eta-rule" if num_segments is None else "log-snr"
    if num_segments is None and grid != "eta-rule":
        raise ValueError(f"grid={grid!r} needs num_segments or nfe")
    ts = rtk_grid(t_min, t_max, num_segments, grid)
    t_next = ts[1:]
    eta = ts[:-1] - ts[1:]
    rho = np.expm1(2.0 * eta)
    # a bound on the Hessian of g: -hess log p_{t'} <= I / s_{t'}^2, plus the quadratic part
    lipschitz = 1.0 / -np.expm1(-2.0 * t_next) + 1.0 / rho
    # the DDPM one-step (exponential-integrator) proposal: one formula, baselines.ei_table
    ei = ei_table(ts).weights[:, 0, :3]  # (K, 3): coefficients of x, score(x, t), noise
    settings = dict(method=method, num_segments=len(eta), num_inner_steps=num_inner_steps,
                    denoise=denoise,
                    t_min=t_min, t_max=t_max, grid=grid, times=ts.tolist(),
                    inner_step_scale=inner_step_scale,
                    expected_nfe=1 + len(eta) * (1 + num_inner_steps * evals_per_inner_step))
    return dim, ts, t_next, eta, ei, lipschitz, num_inner_steps, settings


def _finalize(t_min: float, denoise: bool):
    """The sample: the last position, or its Tweedie denoising with the cached score."""
    if not isinstance(denoise, (bool, np.bool_)):
        raise TypeError(f"denoise must be a bool, got {denoise!r}")
    if not denoise:
        return lambda state: state.position
    return lambda state: score_to_x0(state.aux, state.position, t_min)


def _diffusion_algorithm(score_fn, ts, make_step):
    """init (one score evaluation at x_T, counted in the first segment) and the segment step."""
    t_first = float(ts[0])

    def init_fn(position):
        score = score_fn(position, jnp.asarray(t_first, dtype=position.dtype))
        return DiffusionState(position, jnp.zeros((), jnp.int32), score)

    return SamplingAlgorithm(init_fn, make_step)


def _finish_segment(state, final_position, final_score, inner_ok, z0_ok, evals, energy_evals,
                    rounds, info):
    """Assemble the next DiffusionState and its info; contain a non-finite start of segment."""
    first = (state.step == 0).astype(jnp.int32)
    position = jnp.where(z0_ok, final_position, state.position)
    score = jnp.where(z0_ok, final_score, state.aux)
    new_state = DiffusionState(position, state.step + 1, score)
    out = RTKDiffusionInfo(jnp.asarray(evals, jnp.int32) + first,
                           jnp.asarray(energy_evals, jnp.int32),
                           jnp.asarray(rounds, jnp.int32) + first,
                           ~z0_ok | ~inner_ok | info.is_divergent,
                           info.acceptance_rate, info.num_accepted)
    return new_state, out


def rtk_mala_plan(score_fn, *, dim: int, energy_fn=None, nfe: int | None = None,
                  num_segments: int | None = None, num_inner_steps: int | None = None,
                  t_min: float = 1e-3, t_max: float | None = None, grid: str | None = None,
                  inner_step_scale: float = 0.5, energy: str = "auto",
                  quadrature: str = "gauss-legendre", num_nodes: int = 1,
                  denoise: bool = True) -> DiffusionPlan:
    """RTK-MALA on a score: K segments, each S MALA steps on the exact reverse-kernel target.

    Per segment from t to t' = t - eta (rho = e^{2 eta} - 1, c = e^eta x):
        z_0 = e^eta x + 2 (e^eta - 1) score(x, t) + sqrt(rho) xi         (score(x, t) reused)
        S MALA steps on g(z) = f_{t'}(z) + |z - c|^2 / (2 rho), step tau_k = scale / L_k,
        L_k = 1 / s_{t'}^2 + 1 / rho (a bound on hess g), energy differences g(z') - g(z) from
        ``energy_fn`` ("exact") or -int_0^1 <score(z + u (z' - z), t'), z' - z> du + quadratic part
        ("quadrature", ``quadrature`` rule with ``num_nodes`` interior nodes; "trapezoid" costs no
        extra evaluation but is exact only for Gaussian data).

    Options:
        nfe: score-evaluation budget; spread equally over segments as in the paper,
            1 + K (1 + S c) <= nfe with c = 1 (exact energy) or 1 + (quadrature nodes).
            Give at most two of ``nfe``, ``num_segments``, ``num_inner_steps``; with ``nfe`` alone
            segments come first (at least 24 when the budget allows, S between 1 and 3, then more
            segments; :func:`_resolve_segments`).
        num_segments: K; without it (and without nfe) the eta rule of :func:`rtk_grid` sets K.
        num_inner_steps: S (default 3).
        t_min, t_max: the time interval (default t_max = ``default_t_max(dim)``).
        grid: "eta-rule" or a :func:`scoresample.processes.time_grid` kind. Default: "eta-rule" when
            the rule sets K, "log-snr" when K is given or follows from ``nfe`` (the best or tied
            kind on both benchmark mixtures at nfe = 100, see docs/benchmarks/rtk.md).
        inner_step_scale: the MALA step is ``inner_step_scale / L_k``.
        energy: "auto" (exact when ``energy_fn`` is given), "exact" or "quadrature".
        quadrature, num_nodes: the line-integral rule (:func:`scoresample.kernels.inner.quadrature_rule`).
        denoise: return Tweedie's x0_hat = (x + s_{t_min}^2 score(x, t_min)) / a_{t_min} instead of
            x ~ p_{t_min}; free, since the last segment already evaluated that score.

    Example:
        >>> res = diffusion.sample(key, "rtk-mala", mix.score, dim=2, num_samples=1000, nfe=100,
        ...                        energy_fn=mix.energy)
    """
    check_in("energy", energy, ("auto", "exact", "quadrature"))
    if energy == "auto":
        energy = "exact" if energy_fn is not None else "quadrature"
    if energy == "exact":
        if energy_fn is None:
            raise ValueError("energy='exact' needs energy_fn")
        check_callable("energy_fn", energy_fn)
        rule = None
        evals_per_step = 1
    else:
        rule = quadrature_rule(quadrature, num_nodes)
        evals_per_step = 1 + rule.num_evals
    dim, ts, t_next_np, eta_np, ei_np, lipschitz, num_inner_steps, settings = _common_plan(
        "rtk-mala", score_fn, dim, nfe, num_segments, num_inner_steps, t_min, t_max,
        grid, inner_step_scale, evals_per_step, 3, denoise)
    tau_np = inner_step_scale / lipschitz
    settings.update(energy=energy, quadrature=None if rule is None else rule.name,
                    num_nodes=None if rule is None else rule.num_evals,
                    inner_step_sizes=tau_np.tolist())
    use_energy = energy == "exact"
    t_next_all, eta_all, tau_all, ei_all = (jnp.asarray(v)
                                            for v in (t_next_np, eta_np, tau_np, ei_np))
    per_segment_evals = 1 + num_inner_steps * evals_per_step
    per_segment_energy = (1 + num_inner_steps) if use_energy else 0

    def step(rng_key, state):
        x, score_x = state.position, state.aux
        k = state.step
        dtype = x.dtype
        t_next, eta, tau = (v[k].astype(dtype) for v in (t_next_all, eta_all, tau_all))
        key_init, key_inner = jax.random.split(rng_key)
        rho = jnp.expm1(2.0 * eta)
        center = jnp.exp(eta) * x
        z0 = _ei_proposal(ei_all[k].astype(dtype), x, score_x, key_init)
        potential_fn = _segment_potential(score_fn, energy_fn, t_next, center, rho, use_energy)
        diff_fn = None if use_energy else _quadrature_energy_diff(score_fn, t_next, center, rho,
                                                                  rule)
        start = init_inner(z0, potential_fn)
        z0_ok = all_finite(start)
        final, info = mala_chain(key_inner, start, potential_fn, tau, num_inner_steps, diff_fn)
        return _finish_segment(state, final.position, final.aux, all_finite(final.position), z0_ok,
                               per_segment_evals, per_segment_energy, 1 + num_inner_steps, info)

    algorithm = _diffusion_algorithm(score_fn, ts, step)
    return DiffusionPlan(lambda key: jax.random.normal(key, (dim,)), algorithm, len(eta_np),
                         _finalize(t_min, denoise), settings)


def rtk_uld_plan(score_fn, *, dim: int, energy_fn=None, nfe: int | None = None,
                 num_segments: int | None = None, num_inner_steps: int | None = None,
                 t_min: float = 1e-3, t_max: float | None = None, grid: str | None = None,
                 inner_step_scale: float = 1.0, friction: float = 4.0,
                 denoise: bool = True) -> DiffusionPlan:
    """RTK-ULD on a score: K segments, each S exact frozen-gradient ULD steps on the RTK target.

    Per segment: z_0 the DDPM one-step proposal (as in :func:`rtk_mala_plan`), v_0 ~ N(0, I), then S
    steps of :func:`scoresample.kernels.inner.uld_step` on g with tau_k = scale / sqrt(L_k) and
    friction gamma_k = friction * sqrt(L_k), L_k = 1/s_{t'}^2 + 1/rho_k, so gamma tau =
    scale * friction on every segment. The defaults (scale 1, friction 4: gamma tau = 4, close to
    the overdamped regime) measured best among (0.5, 2), (0.7, 2), (0.5, 4), (1, 4) on both benchmark
    mixtures at nfe = 100. Unadjusted (no energy needed): at the defaults, a Gaussian subproblem's
    stationary covariance is overestimated by at most :data:`RTK_ULD_COV_BIAS`. Cost 1 + K (1 + S).
    ``energy_fn`` is accepted and ignored. Other options as in :func:`rtk_mala_plan`.
    """
    del energy_fn
    friction = check_positive("friction", friction)
    dim, ts, t_next_np, eta_np, ei_np, lipschitz, num_inner_steps, settings = _common_plan(
        "rtk-uld", score_fn, dim, nfe, num_segments, num_inner_steps, t_min, t_max, grid,
        inner_step_scale, 1, 3, denoise)
    tau_np = inner_step_scale / np.sqrt(lipschitz)
    gamma_np = friction * np.sqrt(lipschitz)
    settings.update(friction=friction, inner_step_sizes=tau_np.tolist(),
                    frictions=gamma_np.tolist())
    t_next_all, eta_all, tau_all, gamma_all, ei_all = (
        jnp.asarray(v) for v in (t_next_np, eta_np, tau_np, gamma_np, ei_np))
    per_segment_evals = 1 + num_inner_steps

    def step(rng_key, state):
        x, score_x = state.position, state.aux
        k = state.step
        dtype = x.dtype
        t_next, eta, tau, gamma = (v[k].astype(dtype)
                                   for v in (t_next_all, eta_all, tau_all, gamma_all))
        key_init, key_v, key_inner = jax.random.split(rng_key, 3)
        rho = jnp.expm1(2.0 * eta)
        center = jnp.exp(eta) * x
        z0 = _ei_proposal(ei_all[k].astype(dtype), x, score_x, key_init)
        potential_fn = _segment_potential(score_fn, None, t_next, center, rho, False)
        _, grad0, score0 = potential_fn(z0)
        start = ULDState(z0, jax.random.normal(key_v, x.shape, dtype=dtype), grad0, score0)
        z0_ok = all_finite(start)
        final, info = uld_chain(key_inner, start, potential_fn, tau, gamma, num_inner_steps)
        return _finish_segment(state, final.position, final.aux, all_finite(final.position), z0_ok,
                               per_segment_evals, 0, 1 + num_inner_steps, info)

    algorithm = _diffusion_algorithm(score_fn, ts, step)
    return DiffusionPlan(lambda key: jax.random.normal(key, (dim,)), algorithm, len(eta_np),
                         _finalize(t_min, denoise), settings)
