"""The FORS primitive: first-order rejection sampling with gradients only.

:func:`fors_rejection` samples p(x) proportional to q(x) exp(w(x)) from draws of q and unbiased
estimates W of w(x) clipped to [-B, B] (Chen, Chewi, Daskalakis, Rakhlin, "High-accuracy sampling
for diffusion models and log-concave distributions", arXiv 2602.01338, 2026):

    repeat:  x ~ q;  J ~ Poisson(2B);
             for j = 1..J: draw W_j, flip a coin with P(heads) = (B + W_j)/(2B),
             stop at the first tail (early rejection);  accept x when all J coins are heads.

Given x the acceptance probability is E_J[((B + w(x))/(2B))^J] = exp(w(x) - B) exactly, so the
output law is exact for the clipped estimator. The samplers built on it take W as the derivative
of w along a random path gamma_r from an independent draw of q to x,
W = <gamma_dot_r, grad w(gamma_r)>, r ~ U[0, 1]: one gradient per coin, and no value of w (hence
no log-density value) is ever evaluated. With B = 1 a draw is accepted with probability about
e^-1 and costs about 3.4 estimator evaluations with early rejection (5.4 without). See
[the FORS page](../algorithms/fors.md).

The loop is written as two transitions on a :class:`RejectionState`, :func:`start_proposal` (no
evaluation) and :func:`take_coin` (consumes one estimate), so that the samplers can run it as a
state machine that does one evaluation per unit of work (:mod:`scoresample.autobatch`).
Randomness is keyed by (proposal index, coin index), never by the loop's iteration, so a run
gives the same draws however its coins are grouped into rounds.

Budgets: ``max_proposals`` (default :func:`default_max_proposals`, running out has probability
below 1e-12 per run whatever the target) and ``max_poisson`` (default :func:`default_max_poisson`).
Running out of either sets ``is_overflow``: the run is then not an exact draw, and the samplers
fold it into ``is_divergent``.

Example:
    >>> res = fors_rejection(jax.random.key(0), lambda k: jax.random.normal(k),
    ...                      lambda k, x: 0.6 * jnp.sin(2 * x), 1.0)
    >>> res.candidate, res.is_accepted
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scoresample.base import check_int, check_positive
from scoresample.prng import fold_in, open_uniform

__all__ = [
    "FORSRejection",
    "fors_rejection",
    "default_max_poisson",
    "default_max_proposals",
    "pooled_rates",
    "RejectionState",
    "poisson_table",
    "start_proposal",
    "take_coin",
    "unit_draws",
]

Array = jax.Array

TAIL = 1e-12  # the probability allowed for running out of a budget, per run of the primitive


class FORSRejection(NamedTuple):
    """What one run of :func:`fors_rejection` returns (all scalars except ``candidate``)."""

    candidate: object  # the last proposal drawn: the accepted one when is_accepted
    is_accepted: Array  # bool
    num_proposals: Array  # int32, proposals drawn (the accepted one included)
    num_evals: Array  # int32, estimator evaluations executed (masked chunk entries included)
    num_rounds: Array  # int32, chunks executed (sequential rounds of batched evaluation)
    num_coins: Array  # int32, estimates that entered a coin (unmasked)
    num_clipped: Array  # int32, of those, how many had |W| > B
    sum_sq: Array  # float, sum of W^2 over the num_coins estimates (finite ones)
    is_overflow: Array  # bool: max_proposals ran out, or J > max_poisson decided a proposal
    is_divergent: Array  # bool: a non-finite estimate was met (its proposal was rejected)


def default_max_poisson(clip: float, tail: float = TAIL) -> int:
    """Smallest M with P(Poisson(2 clip) > M) < ``tail`` (a Python int, for the fixed loop bound)."""
    lam = 2.0 * float(clip)
    term = math.exp(-lam)
    cdf = term
    m = 0
    while 1.0 - cdf >= tail and m < 10_000:
        m += 1
        term *= lam / m
        cdf += term
    return max(m, 1)


def default_max_proposals(clip: float, tail: float = TAIL) -> int:
    """Smallest M with (1 - e^{-2B})^M < ``tail``, B = ``clip``.

    Every clipped estimate is at least -B, so given any candidate the acceptance probability
    exp(E[W_clipped | x] - B) is at least e^{-2B}, whatever the target: M proposals all fail with
    probability below ``tail``. (Non-finite estimates, which also reject, are flagged anyway.)
    """
    clip = check_positive("clip", clip)
    floor = -math.expm1(-2.0 * clip)  # 1 - e^{-2B}, accurate for small B
    if floor <= 0.0:
        return 1
    return max(1, math.ceil(math.log(tail) / math.log(floor)))


class RejectionState(NamedTuple):
    """The FORS loop of one particle between two evaluations (scalars except ``candidate``)."""

    candidate: object  # the current proposal
    num_poisson: Array  # int32: J of the current proposal (max_poisson + 1 stands for "more")
    coin: Array  # int32: coins flipped for the current proposal
    num_proposals: Array  # int32: proposals drawn, the current one included
    num_coins: Array  # int32: finite estimates that entered a coin
    num_clipped: Array  # int32: of those, how many had |W| > B
    sum_sq: Array  # float: sum of their W^2
    is_done: Array  # bool: accepted, or a budget ran out
    is_accepted: Array  # bool
    is_overflow: Array  # bool: max_proposals ran out or J > max_poisson decided a proposal
    is_divergent: Array  # bool: a non-finite estimate was met


def poisson_table(clip, max_poisson: int, dtype):
    """The CDF of Poisson(2B) on 0..max_poisson, for :func:`start_proposal` (inversion is
    loop-free; ``jax.random.poisson`` runs a rejection loop per draw). A constant when ``clip``
    is concrete."""
    if not isinstance(clip, jax.core.Tracer):
        lam = 2.0 * float(clip)
        ks = np.arange(max_poisson + 1)
        log_pmf = ks * math.log(lam) - lam - np.array([math.lgamma(k + 1.0) for k in ks])
        return jnp.asarray(np.cumsum(np.exp(log_pmf)), dtype)
    two_b = 2.0 * jnp.asarray(clip, dtype)
    ks = jnp.arange(max_poisson + 1, dtype=dtype)
    return jnp.cumsum(jnp.exp(ks * jnp.log(two_b) - two_b - jax.lax.lgamma(ks + 1.0)))


def unit_draws(parents, indices, num: int, dtype, num_drawn: int):
    """The keys ``fold_in(parents[i], indices[i])`` and ``num`` draws from each of the first
    ``num_drawn`` of them: ``(keys, v)`` with v of shape (num_drawn, num), uniform on (-1, 1)
    (``jax.random.uniform``'s draws). ``sqrt(2) erfinv(v)`` are standard normals
    (``jax.random.normal``'s own construction) and ``(v + 1) / 2`` uniforms on (0, 1).

    All of a unit's keys go through one ``fold_in``: each PRNG call site costs compilation and, in
    the autobatched loop, a kernel launch per iteration; the hashes are
    :func:`scoresample.prng.threefry2x32` written out for threefry keys (the same bits).
    """
    keys = jax.vmap(fold_in)(parents, indices)
    rows = tuple(open_uniform(keys[i], num, dtype) for i in range(num_drawn))
    # a barrier keeps XLA from fusing the hashes into each consumer of a draw (recomputing them)
    keys, rows = jax.lax.optimization_barrier((keys, rows))
    return keys, jnp.stack(rows)


def start_proposal(state: RejectionState | None, candidate, uniform_j, cdf,
                   where=True) -> RejectionState:
    """Take ``candidate`` as the next proposal (the first when ``state`` is None), with J drawn by
    inverting ``cdf`` at ``uniform_j``; a proposal with J = 0 is accepted at once. Only lanes with
    ``where`` change (a traced bool)."""
    # written out over the table's entries: an elementwise sum, cheaper than a batched reduction
    num_poisson = sum((uniform_j > cdf[k]).astype(jnp.int32) for k in range(cdf.shape[0]))
    if state is None:
        zero = jnp.zeros((), jnp.int32)
        no = jnp.zeros((), bool)
        state = RejectionState(candidate, num_poisson, zero, zero, zero, zero,
                               jnp.zeros((), cdf.dtype), no, no, no, no)
    where = jnp.asarray(where, bool)
    accept = where & (num_poisson == 0)
    pick = lambda new, old: jnp.where(where, new, old)
    return state._replace(
        candidate=jax.tree_util.tree_map(pick, candidate, state.candidate),
        num_poisson=pick(num_poisson, state.num_poisson),
        coin=pick(jnp.zeros((), jnp.int32), state.coin),
        num_proposals=state.num_proposals + where.astype(jnp.int32),
        is_done=state.is_done | accept, is_accepted=state.is_accepted | accept)


def take_coin(state: RejectionState, w_raw, uniform, clip, *, max_poisson: int,
              max_proposals: int, where=True):
    """Flip the current proposal's next coin with the raw estimate ``w_raw`` and a uniform.

    Returns ``(state, needs_proposal)``: ``needs_proposal`` is True when the proposal was rejected
    (a tail, a non-finite estimate, or J > max_poisson after max_poisson heads) and the budget
    allows another; pass the next proposal to :func:`start_proposal` with ``where=needs_proposal``.
    Only lanes with ``where`` (and not done) change.
    """
    live = jnp.asarray(where, bool) & ~state.is_done
    finite = jnp.isfinite(w_raw)
    w_safe = jnp.where(finite, w_raw, 0.0)
    heads = finite & (uniform * (2.0 * clip) < clip + jnp.clip(w_safe, -clip, clip))
    coin = state.coin + 1
    poisson_overflow = heads & (coin >= max_poisson) & (state.num_poisson > max_poisson)
    accept = live & heads & (coin >= state.num_poisson) & ~poisson_overflow
    reject = live & (~heads | poisson_overflow)
    out_of_budget = reject & (state.num_proposals >= max_proposals)
    counted = live & finite
    new = state._replace(
        coin=jnp.where(live, coin, state.coin),
        num_coins=state.num_coins + counted.astype(jnp.int32),
        num_clipped=state.num_clipped + (counted & (jnp.abs(w_raw) > clip)).astype(jnp.int32),
        sum_sq=state.sum_sq + jnp.where(counted, w_safe**2, 0.0).astype(state.sum_sq.dtype),
        is_done=state.is_done | accept | out_of_budget,
        is_accepted=state.is_accepted | accept,
        is_overflow=state.is_overflow | (live & poisson_overflow) | out_of_budget,
        is_divergent=state.is_divergent | (live & ~finite))
    return new, reject & ~out_of_budget


def fors_rejection(rng_key, propose_fn: Callable, estimate_fn: Callable, clip, *,
                   max_proposals: int | None = None, max_poisson: int | None = None,
                   chunk_size: int = 1, is_active=True) -> FORSRejection:
    """First-order rejection sampling for p(x) ~ q(x) exp(w(x)), single particle (callers vmap).

    Proposal p uses the keys ``fold_in(rng_key, 2 p)`` (the candidate and J) and coin c of it
    ``fold_in(fold_in(rng_key, 2 p + 1), c)``; so the accepted draw does not depend on
    ``chunk_size``.

    Args:
        rng_key: a PRNG key.
        propose_fn: ``propose_fn(rng_key) -> candidate``, one draw from q (no evaluation).
        estimate_fn: ``estimate_fn(rng_key, candidate) -> W``, an unbiased estimate of w(candidate)
            up to a constant that does not depend on the candidate (one evaluation).
        clip: B > 0; estimates are clipped to [-B, B] and J ~ Poisson(2B).
        max_proposals: proposals allowed before giving up (``is_overflow``; the last proposal is
            returned with ``is_accepted`` False). Default :func:`default_max_proposals` (concrete
            ``clip`` only).
        max_poisson: at most this many coins per proposal; a proposal whose J exceeds it and whose
            first ``max_poisson`` coins are all heads is rejected and flags ``is_overflow``.
            Default :func:`default_max_poisson`.
        chunk_size: estimates evaluated together per round (1 is pure early rejection, the fewest
            evaluations; larger chunks trade evaluations for fewer sequential rounds).
        is_active: traced bool; when False nothing is evaluated and nothing is accepted.

    Returns:
        :class:`FORSRejection`. Non-finite estimates count as a tail and set ``is_divergent``.

    Example:
        >>> res = fors_rejection(key, lambda k: jax.random.normal(k),
        ...                      lambda k, x: 0.6 * jnp.sin(2 * x), 1.0)
    """
    if max_proposals is None:
        max_proposals = default_max_proposals(clip)
    if max_poisson is None:
        max_poisson = default_max_poisson(check_positive("clip", clip))
    max_proposals = check_int("max_proposals", max_proposals)
    max_poisson = check_int("max_poisson", max_poisson)
    chunk_size = check_int("chunk_size", chunk_size)
    clip = jnp.asarray(clip)
    dtype = jnp.result_type(float)
    cdf = poisson_table(clip, max_poisson, dtype)

    def proposal(index):
        key_x, key_j = jax.random.split(jax.random.fold_in(rng_key, 2 * index))
        return propose_fn(key_x), jax.random.uniform(key_j, (), dtype)

    candidate, uniform_j = proposal(0)
    state = start_proposal(None, candidate, uniform_j, cdf)
    is_active = jnp.asarray(is_active, bool)
    state = state._replace(is_done=state.is_done | ~is_active,
                           is_accepted=state.is_accepted & is_active)
    offsets = jnp.arange(chunk_size, dtype=jnp.int32)

    def body(carry):
        state, num_rounds = carry
        coin_parent = jax.random.fold_in(rng_key, 2 * (state.num_proposals - 1) + 1)

        def coin_draws(offset):
            key_w, key_u = jax.random.split(jax.random.fold_in(coin_parent, state.coin + offset))
            return (estimate_fn(key_w, state.candidate),
                    jax.random.uniform(key_u, (), dtype))

        w_raw, uniforms = jax.vmap(coin_draws)(offsets)
        w_raw = jnp.reshape(w_raw, (chunk_size,)).astype(dtype)

        def one_coin(carry, inputs):  # the chunk's coins in order; after a decision, masked
            state, pending = carry
            state, rejected = take_coin(state, inputs[0], inputs[1], clip,
                                        max_poisson=max_poisson, max_proposals=max_proposals,
                                        where=~pending)
            return (state, pending | rejected), None

        (state, rejected), _ = jax.lax.scan(one_coin, (state, jnp.zeros((), bool)),
                                            (w_raw, uniforms))
        candidate, uniform_j = proposal(state.num_proposals)
        state = start_proposal(state, candidate, uniform_j, cdf, where=rejected)
        return state, num_rounds + 1

    state, num_rounds = jax.lax.while_loop(lambda c: ~c[0].is_done, body,
                                           (state, jnp.zeros((), jnp.int32)))
    return FORSRejection(state.candidate, state.is_accepted, state.num_proposals,
                         num_rounds * chunk_size, num_rounds, state.num_coins, state.num_clipped,
                         state.sum_sq, state.is_overflow, state.is_divergent)


def safe_rate(num, den):
    """``num / den`` as a float, and 0 where ``den`` is 0 (a rate over no trials)."""
    den_f = jnp.maximum(den, 1).astype(jnp.result_type(float))
    return jnp.where(den > 0, num / den_f, 0.0)


def pooled_rates(infos) -> dict:
    """Acceptance and clip rates pooled over steps as ratios of sums (never means of per-step rates).

    The per-step ``acceptance_rate`` (is_accepted / num_proposals) averaged over steps is biased upward:
    the unbiased FORS acceptance is sum(is_accepted) / sum(num_proposals); likewise the clip rate is
    sum(num_clipped) / sum(num_coins). Works on stacked infos of either FORS kernel, per particle
    or reduced to means over particles (FORS-proximal adds ``prox_rejection_rate``, the fraction
    of steps whose prox test failed).
    """
    accepted = float(np.sum(np.asarray(infos.is_accepted, dtype=np.float64)))
    proposals = float(np.sum(np.asarray(infos.num_proposals, dtype=np.float64)))
    clipped = float(np.sum(np.asarray(infos.num_clipped, dtype=np.float64)))
    coins = float(np.sum(np.asarray(infos.num_coins, dtype=np.float64)))
    evals = np.asarray(infos.num_grad_evals, dtype=np.float64)
    out = dict(acceptance=accepted / max(proposals, 1e-300) if proposals > 0 else 0.0,
               clip_rate=clipped / coins if coins > 0 else 0.0,
               evals_per_step=float(np.sum(evals)) / max(evals.size, 1),
               overflow_rate=float(np.mean(np.asarray(infos.is_overflow, dtype=np.float64))),
               divergent_rate=float(np.mean(np.asarray(infos.is_divergent, dtype=np.float64))))
    if hasattr(infos, "is_prox_rejected"):  # FORS-proximal only
        out["prox_rejection_rate"] = float(np.mean(np.asarray(infos.is_prox_rejected,
                                                              dtype=np.float64)))
    return out
