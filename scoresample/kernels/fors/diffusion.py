"""FORS-diffusion: the reverse diffusion whose every step is an exact reverse transition kernel.

Method ``"fors"`` of :mod:`scoresample.diffusion`. Each step from x_{k+1} at t_{k+1} to t_k draws
from

    p(x_k | x_{k+1}) ~ p_{t_k}(x) N(x; x_{k+1} / alpha, eta)

by first-order rejection sampling (:mod:`~scoresample.kernels.fors.rejection`): one score
evaluation at x_{k+1} builds a Gaussian proposal (the exact Tweedie mean), and coins along
:func:`three_point_path` correct it. The grid (:mod:`~scoresample.kernels.fors.grid`) is uniform in
a coordinate of rho = e^{2t} - 1 and its density G is chosen from a pilot run so that the clip rate
stays well below ``delta``; the number of steps grows like polylog(1/delta).

The step is a state machine (:func:`diffusion_machine`) whose every unit evaluates the score
once: "the score at the step's start" or "one coin's estimate". The batch runs on the
autobatching driver (:mod:`scoresample.autobatch`), so a particle that needs many proposals does
not hold up the others.

Reference: Chen, Chewi, Daskalakis, Rakhlin, "High-accuracy sampling for diffusion models and
log-concave distributions", arXiv 2602.01338, 2026. See [the FORS page](../algorithms/fors.md).

Example:
    >>> mix = targets.two_modes_1d()
    >>> res = scoresample.diffusion.sample(key, "fors", mix.score, dim=1, num_samples=1000,
    ...                                    delta=1e-2)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scoresample.autobatch import INIT_FOLD, Machine, MachinePlan, step_bucket
from scoresample.base import (
    DiffusionState,
    SamplingAlgorithm,
    all_finite,
    check_callable,
    check_in,
    check_int,
    check_positive,
)
from scoresample.kernels.fors.grid import (
    GRIDS,
    TAIL_LEVELS,
    FORSSchedule,
    StepCoefficients,
    check_delta,
    density_from_pilot,
    fors_schedule,
    growth_from_pilot,
)
from scoresample.kernels.fors.rejection import (
    RejectionState,
    default_max_poisson,
    default_max_proposals,
    poisson_table,
    safe_rate,
    start_proposal,
    take_coin,
)
from scoresample.prng import box_muller, open_uniform

__all__ = [
    "three_point_path",
    "FORSDiffusionInfo",
    "DiffusionWork",
    "build_diffusion_kernel",
    "diffusion_machine",
    "fors_diffusion_plan",
    "PILOT_GROWTH",
]

Array = jax.Array

PILOT_GROWTH = 4.0  # the pilot's grid: rho grows by 1/4 per step (about 4.5 steps per e-fold)


def three_point_path(r):
    """The path coefficients of FORS-diffusion at r in [0, 1]: ``(a, b, a_dot, b_dot)``.

    th = (2 pi / 3)(1 - r), a = (1 + 2 cos th)/3, b = (2/sqrt 3) sin th and their r-derivatives.
    For u ~ N(0, v I), w, z ~ N(0, v/2 I): e = a u + (1 - a) w + b z has law N(0, v I) for every r
    (a^2 + (1 - a)^2/2 + b^2/2 = 1), e(1) = u, e(0) = w + z is independent of u, and
    e_dot = a_dot (u - w) + b_dot z is independent of e with variance (8 pi^2 / 27) v.
    """
    th = (2.0 * math.pi / 3.0) * (1.0 - r)
    a = (1.0 + 2.0 * jnp.cos(th)) / 3.0
    b = (2.0 / math.sqrt(3.0)) * jnp.sin(th)
    a_dot = (4.0 * math.pi / 9.0) * jnp.sin(th)
    b_dot = -(4.0 * math.pi / (3.0 * math.sqrt(3.0))) * jnp.cos(th)
    return a, b, a_dot, b_dot


class FORSDiffusionInfo(NamedTuple):
    """Diagnostics of one FORS-diffusion step (pool rates with :func:`pooled_rates`)."""

    num_grad_evals: Array  # int32: 1 (the score at x_{k+1}) + the coins' estimates
    num_rounds: Array  # int32: the same (one evaluation per unit of work)
    is_divergent: Array  # bool: a non-finite score was met, or a budget ran out (is_overflow)
    acceptance_rate: Array  # float: is_accepted / num_proposals
    is_accepted: Array  # bool
    clip_rate: Array  # float
    num_proposals: Array  # int32
    is_overflow: Array  # bool: max_proposals (or the Poisson cap) ran out: not an exact draw
    num_clipped: Array  # int32
    num_coins: Array  # int32
    sum_sq: Array  # float: sum of the raw estimates' squares (their RMS is sqrt(sum_sq/num_coins))
    w_tail: Array  # int32 (len(levels),): estimates with |W| > level * B (a pilot's tail counts)


class DiffusionWork(NamedTuple):
    """A particle's place inside one FORS-diffusion step (between two score evaluations)."""

    step_key: Array  # the step's key: every draw of the step is a stream of it (see _streams)
    is_start: Array  # bool: the next evaluation is the score at x_{k+1}
    x_bar: Array  # shape=(d,): the proposal's mean
    shift: Array  # shape=(d,): alpha * score(x_{k+1}, t_{k+1})
    rejection: RejectionState  # candidate: the proposal's offset u from x_bar, shape=(d,)
    is_ok: Array  # bool: the score at x_{k+1} was finite
    num_evals: Array  # int32: evaluations so far in this step
    w_tail: Array  # int32 (len(levels),)


COIN_BITS = 12  # coin c of proposal p is stream 1 + p 2^COIN_BITS + c of the step's key
PROPOSAL_STREAM = 2**31  # proposal p (its offset u and its J) is stream PROPOSAL_STREAM + p


def _streams(proposal, coin, next_proposal):
    """The streams of the step's key (:func:`scoresample.prng.uniform`) that a unit draws
    from: coin ``coin`` of proposal ``proposal``, and proposal ``next_proposal``. Streams, not
    ``fold_in`` keys: a unit's draws are then hashed straight from the step's key."""
    coin_stream = (np.uint32(1) + (proposal.astype(jnp.uint32) << COIN_BITS)
                   + coin.astype(jnp.uint32))
    return coin_stream, np.uint32(PROPOSAL_STREAM) + next_proposal.astype(jnp.uint32)


def _coefficients(coeffs: StepCoefficients, dtype):
    return StepCoefficients(*(jnp.asarray(c, dtype) for c in coeffs))


def _step_functions(score_fn, clip, max_proposals: int, max_poisson: int, levels, dim: int):
    """``(begin, query, advance)`` of one step with coefficients given per call (see
    :func:`diffusion_machine`); ``score_fn`` is called by the caller on ``query``'s output."""
    levels = np.asarray(levels, dtype=np.float64)
    half = (dim + 1) // 2  # normal pairs of a proposal
    if max_poisson >= 2**COIN_BITS or max_proposals >= 2**(31 - COIN_BITS):
        raise ValueError(f"max_poisson must be < {2**COIN_BITS} and max_proposals < "
                         f"{2**(31 - COIN_BITS)} (the streams of a step's key), got "
                         f"{max_poisson} and {max_proposals}")

    def begin(step_key, x):
        dtype = x.dtype
        zero = jnp.zeros((dim,), dtype)
        rejection = start_proposal(None, zero, jnp.zeros((), dtype),
                                   jnp.ones((max_poisson + 1,), dtype))
        return DiffusionWork(step_key, jnp.ones((), bool), zero, zero, rejection,
                             jnp.ones((), bool), jnp.zeros((), jnp.int32),
                             jnp.zeros(levels.shape, jnp.int32))

    def query(work: DiffusionWork, x, coeffs: StepCoefficients):
        dtype = x.dtype
        co = _coefficients(coeffs, dtype)
        # this unit's coin, and the proposal a rejection (or the start) would draw next
        index = jnp.where(work.is_start, 0, work.rejection.num_proposals)
        coin_stream, prop_stream = _streams(jnp.maximum(work.rejection.num_proposals - 1, 0),
                                            work.rejection.coin, index)
        coin, prop = jax.lax.optimization_barrier((
            open_uniform(work.step_key, 2 * dim + 2, dtype, stream=coin_stream),
            open_uniform(work.step_key, 2 * half + 1, dtype, stream=prop_stream)))
        # normals: the coin's w and z, then the proposal's u; uniforms: r, the coin, J
        normals = jnp.concatenate([box_muller(coin[:2 * dim]), box_muller(prop[:2 * half])[:dim]])
        uniforms = 0.5 * (jnp.stack([coin[2 * dim], coin[2 * dim + 1], prop[2 * half]]) + 1.0)
        # barriers keep XLA from recomputing the draws in each of their consumers
        normals, uniforms = jax.lax.optimization_barrier((normals, uniforms))
        root_half = jnp.sqrt(0.5 * co.eta_bar)
        # a barrier: fused into each of e and e_dot, the trigonometry would run once per entry
        a, b, a_dot, b_dot = jax.lax.optimization_barrier(three_point_path(uniforms[0]))
        u = work.rejection.candidate
        w, z = root_half * normals[:dim], root_half * normals[dim:2 * dim]
        e = a * u + (1.0 - a) * w + b * z
        e_dot = a_dot * (u - w) + b_dot * z
        point = jnp.where(work.is_start, x, work.x_bar + e)
        t = jnp.where(work.is_start, co.t_from, co.t_to)
        proposal = (jnp.sqrt(co.eta_bar) * normals[2 * dim:], uniforms[2])
        return (point, t), (e, e_dot, uniforms[1], proposal)

    def advance(work: DiffusionWork, x, coeffs: StepCoefficients, aux, score):
        dtype = x.dtype
        co = _coefficients(coeffs, dtype)
        e, e_dot, uniform_c, (candidate, uniform_j) = aux
        clip_ = jnp.asarray(clip, dtype)
        cdf = poisson_table(clip, max_poisson, dtype)
        start = work.is_start
        # the start: the proposal N(x_bar, eta_bar I) from the score at x_{k+1}
        x_bar = jnp.where(start, x / co.alpha + co.alpha * co.eta * score, work.x_bar)
        shift = jnp.where(start, co.alpha * score, work.shift)
        is_ok = jnp.where(start, all_finite(x_bar), work.is_ok)
        # a coin: W = <e_dot, grad of the log-ratio at x_bar + e>, in offset coordinates
        w_raw = jnp.sum(e_dot * (score + e / co.s2 - work.shift))  # no batched dot: slow
        x_bar, shift, is_ok, w_raw = jax.lax.optimization_barrier((x_bar, shift, is_ok, w_raw))
        coined, needs = take_coin(work.rejection, w_raw, uniform_c, clip_, max_poisson=max_poisson,
                                  max_proposals=max_proposals, where=~start)
        live = ~start & ~work.rejection.is_done
        w_tail = work.w_tail + (live & jnp.isfinite(w_raw)
                                & (jnp.abs(w_raw) > jnp.asarray(levels, dtype) * clip_))
        # the next proposal (drawn in query): the first one at the start, or after a rejection
        first = start_proposal(None, candidate, uniform_j, cdf)
        first = first._replace(is_done=first.is_done | ~is_ok,
                               is_accepted=first.is_accepted & is_ok)
        later = start_proposal(coined, candidate, uniform_j, cdf, where=needs)
        pick = lambda a, b: jnp.where(start, a, b)
        rejection = jax.tree_util.tree_map(pick, first, later)
        num_evals = work.num_evals + 1
        new = DiffusionWork(work.step_key, jnp.zeros((), bool), x_bar, shift, rejection,
                            is_ok, num_evals, w_tail)
        done = rejection.is_done
        # accepted: x_bar + u; a budget ran out: the last proposal (a Gaussian step, flagged)
        x_new = x_bar + rejection.candidate
        good = is_ok & all_finite(x_new)
        x_out = jnp.where(good, x_new, x)
        moved = rejection.is_accepted & good
        info = FORSDiffusionInfo(
            num_grad_evals=num_evals, num_rounds=num_evals,
            is_divergent=rejection.is_divergent | rejection.is_overflow | ~good,
            acceptance_rate=safe_rate(moved.astype(jnp.int32), rejection.num_proposals),
            is_accepted=moved, clip_rate=safe_rate(rejection.num_clipped, rejection.num_coins),
            num_proposals=rejection.num_proposals, is_overflow=rejection.is_overflow,
            num_clipped=rejection.num_clipped, num_coins=rejection.num_coins,
            sum_sq=rejection.sum_sq, w_tail=w_tail)
        return new, x_out, done, info

    return begin, query, advance


def build_diffusion_kernel(max_proposals: int | None = None, max_poisson: int | None = None, *,
                           levels=()):
    """One FORS-diffusion step ``kernel(rng_key, x, score_fn, coeffs, clip=1.0) -> (x_new, info)``.

    From x = x_{k+1} at t_from to t_to (alpha, eta, s2, eta_bar from :class:`StepCoefficients`):

        s+ = score(x, t_from)                                   (one evaluation, reused)
        x_bar = x / alpha + alpha eta s+;  proposal N(x_bar, eta_bar I), candidate x_bar + u
        per coin: r ~ U, w, z ~ N(0, eta_bar/2 I), (a, b, a', b') = three_point_path(r),
            e = a u + (1 - a) w + b z,  e_dot = a' (u - w) + b' z,
            W = <e_dot, score(x_bar + e, t_to) + e / s2 - alpha s+>

    The target is the exact reverse kernel p_{t_to}(y) N(y; x / alpha, eta), whose log-ratio to the
    proposal has gradient score(y, t_to) + (y - x_bar)/s2 - alpha s+: it is written in the offset
    e = y - x_bar, never as a difference of two O(1) denoiser outputs times 1/s2. When the score
    at x is not finite the particle keeps x; when a budget runs out (``is_overflow``) the last proposal
    is returned. Both set ``is_divergent``. This is :func:`diffusion_machine`'s step run to its end
    with the key ``rng_key`` (the same draws).

    Defaults: ``max_proposals`` from the clip level (:func:`default_max_proposals`) and
    ``max_poisson`` likewise (both need a concrete ``clip``).
    """
    if max_proposals is not None:
        max_proposals = check_int("max_proposals", max_proposals)
    if max_poisson is not None:
        max_poisson = check_int("max_poisson", max_poisson)

    def kernel(rng_key, x, score_fn, coeffs: StepCoefficients, clip=1.0):
        m_prop = default_max_proposals(clip) if max_proposals is None else max_proposals
        m_pois = default_max_poisson(clip) if max_poisson is None else max_poisson
        begin, query, advance = _step_functions(score_fn, clip, m_prop, m_pois, levels,
                                                x.shape[0])

        def body(c):
            work, _, _, _ = c
            args, aux = query(work, x, coeffs)
            return advance(work, x, coeffs, aux, score_fn(*args))

        work = begin(rng_key, x)
        args, aux = query(work, x, coeffs)
        first = advance(work, x, coeffs, aux, score_fn(*args))
        _, x_new, _, info = jax.lax.while_loop(lambda c: ~c[2], body, first)
        return x_new, info

    return kernel


def diffusion_machine(score_fn, schedule: FORSSchedule, *, dim: int, clip=1.0,
                      max_proposals: int | None = None, max_poisson: int | None = None,
                      levels=()) -> Machine:
    """FORS-diffusion on ``schedule`` as a :class:`~scoresample.autobatch.Machine`.

    A particle's carry is its position; it starts at N(0, I) (key ``fold_in(particle_key,
    INIT_FOLD)``) and step k uses the key ``fold_in(particle_key, k)``. Each unit evaluates the
    score once: at x_{k+1} (the step's first unit) or at one coin's point. ``levels`` (in units of
    B) makes each step's info count the estimates above them (a pilot's tail counts).
    """
    m_prop = default_max_proposals(clip) if max_proposals is None else max_proposals
    m_pois = default_max_poisson(clip) if max_poisson is None else max_poisson
    begin, query, advance = _step_functions(score_fn, clip, m_prop, m_pois, levels, dim)
    max_steps = step_bucket(schedule.num_steps)
    pad = lambda c: np.concatenate([c, np.full(max_steps - c.shape[0], c[-1])])
    dtype = jnp.result_type(float)
    # the grid is data (not a constant of the program): grids of one bucket share a compilation
    table = StepCoefficients(*(jnp.asarray(pad(np.asarray(c)), dtype) for c in (
        schedule.t_from, schedule.t_to, schedule.alpha, schedule.eta, schedule.s2,
        schedule.eta_bar)))

    def coefficients(table, step):
        return StepCoefficients(*(c[step] for c in table))

    def init(table, particle_key, index):
        del table, index
        return jax.random.normal(jax.random.fold_in(particle_key, INIT_FOLD), (dim,), dtype)

    return Machine(
        init=init,
        begin=lambda table, step_key, x, step: begin(step_key, x),
        query=lambda table, work, x, step: query(work, x, coefficients(table, step)),
        evaluate=lambda table, args: score_fn(*args),
        advance=lambda table, work, x, step, aux, value: advance(
            work, x, coefficients(table, step), aux, value),
        params=table, num_steps=schedule.num_steps, max_steps=max_steps,
        program_key=("fors-diffusion", score_fn, float(clip), m_prop, m_pois,
                     tuple(float(v) for v in np.ravel(levels)), dim,
                     str(dtype)))


def _pilot_moment(positions, dim: int, t_min: float) -> float:
    """E|X_0|^2 from pilot draws at t_min: mean |x|^2 - d s_{t_min}^2 (finite draws only)."""
    x = np.asarray(positions, dtype=np.float64)
    x = x[np.all(np.isfinite(x), axis=1)]
    if x.shape[0] == 0:
        return float("nan")
    return max(float(np.mean(np.sum(x**2, axis=1))) - dim * -math.expm1(-2.0 * t_min), 1e-12)


def fors_diffusion_plan(score_fn, *, dim: int, energy_fn=None, delta: float = 1e-2,
                        intrinsic_dim: float | None = None, second_moment: float | None = None,
                        constant: float | None = None, growth: float | None = None,
                        t_min: float | None = None, t_max: float | None = None, clip: float = 1.0,
                        max_proposals: int | None = None, max_poisson: int | None = None,
                        grid: str = "adaptive", lipschitz: float | None = None,
                        clip_rate_target: float | None = None, pilot_size: int = 256,
                        num_lanes: int | None = None, driver: str = "autobatch") -> MachinePlan:
    """Method "fors" of :mod:`scoresample.diffusion`: FORS-diffusion with accuracy ``delta``.

    Starts at N(0, I) at t_max and applies the step of :func:`build_diffusion_kernel` down to
    t_min; the result approximates p_{t_min}. By default a pilot chooses the grid from
    ``delta`` (:mod:`~scoresample.kernels.fors.grid`): ``pilot_size`` particles run on the
    geometric grid with G = :data:`PILOT_GROWTH`; the RMS of their estimates along rho gives the
    adaptive grid's density (steps where the estimates are large, few where p_t is nearly
    Gaussian), each pilot step's tail of estimates predicts the clip rate of every G, and the
    smallest G whose predicted rate is at most ``clip_rate_target`` (default delta / 20; the
    measured rate came out about twice the prediction on the targets tried, so about delta / 10)
    is used. G: consecutive nodes are log(1 + 1/G) apart in the grid's coordinate (in its
    densest region about G + 1/2 steps per e-fold of rho). The pilot also estimates
    ``second_moment`` when it is not given (mean |x|^2 of its draws). Its evaluations count in
    ``nfe``; ``settings`` reports G, the predicted clip rate and the pilot's cost (``nfe_pilot``,
    evaluations in all).

    Options: ``delta`` in (0, 1); ``grid``: "adaptive" (default), "geometric" (rho_{k+1} =
    rho_k (1 + 1/G)) or "smooth" (with ``lipschitz``, see :func:`fors_schedule`); ``growth``
    (G itself) or ``constant`` (C in G = C (d* + log(K/delta)) log(K/delta), with
    ``intrinsic_dim`` d*) override the pilot's G; ``second_moment`` (E|X_0|^2); ``t_min``,
    ``t_max``; ``clip`` (B); ``max_proposals``, ``max_poisson`` (defaults: running out has
    probability below 1e-12 per step; running out flags the sample divergent);
    ``clip_rate_target``; ``pilot_size``; ``num_lanes`` and ``driver`` ("autobatch" or
    "lockstep", see :mod:`scoresample.autobatch`). With ``grid`` "geometric" or "smooth" and G and
    the second moment given, no pilot runs and the plan also has the step-by-step ``algorithm``.
    ``energy_fn`` is not used (FORS needs scores only).

    Example:
        >>> res = scoresample.diffusion.sample(key, "fors", mix.score, dim=1, num_samples=1000,
        ...                                    delta=1e-2)
        >>> res.settings["growth"], res.settings["clip_rate_predicted"]
    """
    del energy_fn
    check_callable("score_fn", score_fn)
    dim = check_int("dim", dim)
    delta = check_delta(delta)
    clip = check_positive("clip", clip)
    grid = check_in("grid", grid, GRIDS)
    driver = check_in("driver", driver, ("autobatch", "lockstep"))
    pilot_size = check_int("pilot_size", pilot_size)
    if num_lanes is not None:
        num_lanes = check_int("num_lanes", num_lanes)
    if max_proposals is None:
        max_proposals = default_max_proposals(clip)
    max_proposals = check_int("max_proposals", max_proposals)
    max_poisson = default_max_poisson(clip) if max_poisson is None else check_int(
        "max_poisson", max_poisson)
    if constant is not None:
        constant = check_positive("constant", constant)
    if growth is not None:
        growth = check_positive("growth", growth)
    if second_moment is not None:
        second_moment = check_positive("second_moment", second_moment)
    target = delta / 20.0 if clip_rate_target is None else check_positive(
        "clip_rate_target", clip_rate_target)
    # the pilot's grid: geometric for an adaptive grid (whose density the pilot measures)
    pilot_grid = "geometric" if grid == "adaptive" else grid
    window = dict(intrinsic_dim=intrinsic_dim, t_min=t_min, t_max=t_max, lipschitz=lipschitz)
    # the options are checked here, before anything is compiled (the pilot runs in run_plan)
    fors_schedule(delta, dim, second_moment=second_moment, constant=constant or 0.55,
                  growth=growth, grid=pilot_grid, **window)
    needs_pilot = (grid == "adaptive" or (growth is None and constant is None)
                   or second_moment is None)
    kernel_options = dict(dim=dim, clip=clip, max_proposals=max_proposals, max_poisson=max_poisson)

    def finalize(x):
        return x

    def init_position(rng_key):
        return jax.random.normal(rng_key, (dim,), jnp.result_type(float))

    def build(pilot) -> tuple[Machine, dict]:
        """The machine of the run, and what the pilot decided (None: no pilot ran)."""
        m2, g, extra, density = second_moment, growth, {}, None
        if pilot is not None:
            sums = pilot.step_sums
            num_divergent = int(np.sum(np.asarray(pilot.is_divergent)))
            if num_divergent == pilot_size:
                raise ValueError(f"score_fn met non-finite values in every one of the "
                                 f"{pilot_size} pilot particles: the grid cannot be chosen "
                                 "(check score_fn, or pass growth and second_moment)")
            if m2 is None:
                m2 = _pilot_moment(pilot.carries, dim, pilot_schedule.t_min)
            coins_k = np.asarray(sums.num_coins, dtype=np.float64)  # per pilot step
            tail_k = np.asarray(sums.w_tail, dtype=np.float64)
            extra = dict(pilot_growth=PILOT_GROWTH, pilot_size=pilot_size,
                         pilot_clip_rate=float(np.sum(sums.num_clipped)) / max(
                             float(np.sum(coins_k)), 1.0),
                         pilot_divergent=num_divergent, second_moment_estimate=m2)
            step_density = None
            if grid == "adaptive":
                # the pilot's steps in ascending rho: RMS of their estimates -> the density
                mid = 0.5 * (np.log(np.expm1(2 * pilot_schedule.t_from))
                             + np.log(np.expm1(2 * pilot_schedule.t_to)))
                rms = np.sqrt(np.asarray(sums.sum_sq) / np.maximum(coins_k, 1.0))
                density = density_from_pilot(mid[::-1], rms[::-1])
                step_density = density.density[::-1]  # back in the pilot's (sampling) order
                extra["steps_saved_by_density"] = float(1.0 - np.mean(density.density))
            if g is None and constant is None:
                g, predicted = growth_from_pilot(tail_k, coins_k, PILOT_GROWTH, target,
                                                 density=step_density)
                extra["clip_rate_predicted"] = predicted
        schedule = fors_schedule(delta, dim, second_moment=m2, constant=constant or 0.55,
                                 growth=g, grid=grid, density=density, **window)
        settings = dict(num_steps=schedule.num_steps, growth=schedule.growth,
                        t_min=schedule.t_min, t_max=schedule.t_max, second_moment=m2, **extra)
        return diffusion_machine(score_fn, schedule, **kernel_options), settings

    pilot_machine, pilot_schedule = None, None
    if needs_pilot:
        pilot_schedule = fors_schedule(delta, dim, second_moment=second_moment or float(dim),
                                       growth=PILOT_GROWTH, grid=pilot_grid, **window)
        pilot_machine = diffusion_machine(score_fn, pilot_schedule, levels=TAIL_LEVELS,
                                          **kernel_options)

    algorithm, num_steps = None, None
    if not needs_pilot:  # the grid is known now: the step-by-step form exists too
        schedule = fors_schedule(delta, dim, second_moment=second_moment,
                                 constant=constant or 0.55, growth=growth, grid=grid, **window)
        algorithm, num_steps = _step_algorithm(schedule, score_fn, clip, max_proposals,
                                               max_poisson), schedule.num_steps

    settings = dict(method="fors", delta=float(delta), clip=clip, max_proposals=max_proposals,
                    max_poisson=max_poisson, constant=constant, intrinsic_dim=intrinsic_dim,
                    second_moment=second_moment, grid=grid, lipschitz=lipschitz,
                    clip_rate_target=target, driver=driver, num_lanes=num_lanes,
                    pilot_size=pilot_size if needs_pilot else 0)
    return MachinePlan(init_position, algorithm, num_steps, finalize, settings, build,
                       pilot_machine, pilot_size, num_lanes, driver)


def _step_algorithm(schedule: FORSSchedule, score_fn, clip, max_proposals, max_poisson):
    """The plan's step-by-step form: ``init(x_T)`` and ``step(rng_key, state)``."""
    kernel = build_diffusion_kernel(max_proposals, max_poisson)
    table = StepCoefficients(schedule.t_from, schedule.t_to, schedule.alpha, schedule.eta,
                             schedule.s2, schedule.eta_bar)

    def init_fn(position, rng_key=None):
        del rng_key
        return DiffusionState(jnp.asarray(position), jnp.zeros((), jnp.int32), ())

    def step_fn(rng_key, state: DiffusionState):
        coeffs = StepCoefficients(*(jnp.asarray(c)[state.step] for c in table))
        x_new, info = kernel(rng_key, state.position, score_fn, coeffs, clip)
        return DiffusionState(x_new, state.step + 1, ()), info

    return SamplingAlgorithm(init_fn, step_fn)

