"""Inner solvers shared by every RTK variant (and reusable by any sampler with a log-concave subproblem).

A subproblem is a target exp(-U(z)) on R^d that is (close to) strongly log-concave. It is given by
``potential_fn(z) -> (U, grad U, aux)``: ``U`` may be a dummy 0 when U is known only through
differences, in which case an ``energy_diff_fn(old, new) -> U(new) - U(old)`` is passed too; ``aux``
is whatever the caller wants carried with the point (e.g. the score at z, reused by the next segment).

- :func:`mala_step` / :func:`mala_chain`: Metropolis-adjusted Langevin on U,
      z' = z - tau grad U(z) + sqrt(2 tau) xi,
  accepted by :func:`scoresample.kernels.proposal.metropolis_hastings` with
      log ratio = -(U(z') - U(z)) + <z' - z, g + g'> / 2 + tau (|g|^2 - |g'|^2) / 4
  (:func:`scoresample.kernels.mala.mala_log_ratio` with grad log pi = -g: the same proposal and
  ratio as the MALA kernel).
- :func:`uld_step` / :func:`uld_chain`: underdamped Langevin dz = v dt, dv = -gamma v dt - grad U dt
  + sqrt(2 gamma) dB, integrated exactly with grad U frozen on a step of length tau (unadjusted).
- :func:`score_line_integral`: U(z') - U(z) = -int_0^1 <score(z + u (z' - z)), z' - z> du by a
  quadrature rule (:func:`quadrature_rule`: Gauss-Legendre, Gauss-Lobatto, trapezoid).
- :func:`mala_factory_step` / :func:`mala_factory_chain`: MALA on U known through its gradient
  only, with an exact accept/reject test: a Metropolis-Hastings test on the trapezoid energy
  difference (free: it uses the two gradients the step has), then a Bernoulli-factory coin
  (:func:`scoresample.kernels.fors.fors_rejection`) on unbiased one-gradient estimates of what the
  trapezoid rule missed (:func:`trapezoid_correction`). See :func:`factory_test`.

Example (a Gaussian potential, 10 MALA steps):
    >>> potential_fn = lambda z: (0.5 * z @ z, z, ())
    >>> state = init_inner(jnp.ones(2), potential_fn)
    >>> state, info = mala_chain(jax.random.key(0), state, potential_fn, 0.3, 10)

Papers: Huang, Zou, Dong, Zhang, Ma, Zhang, "Reverse Transition Kernel: A Flexible Framework to
Accelerate Diffusion Inference", NeurIPS 2024 (arXiv 2405.16387), section 4 (MALA and ULD inner
samplers); the ULD step is the frozen-gradient integrator of Cheng, Chatterji, Bartlett, Jordan,
"Underdamped Langevin MCMC: a non-asymptotic analysis", COLT 2018.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpy.polynomial import legendre as _legendre

from scoresample.base import all_finite, check_in, check_int
from scoresample.kernels.fors.rejection import default_max_poisson, fors_rejection
from scoresample.kernels.mala import langevin_proposal, mala_log_ratio
from scoresample.kernels.proposal import metropolis_hastings

__all__ = [
    "InnerState",
    "init_inner",
    "InnerInfo",
    "ULDState",
    "mala_step",
    "mala_chain",
    "uld_step",
    "uld_chain",
    "uld_coefficients",
    "QuadratureRule",
    "QUADRATURE_RULES",
    "quadrature_rule",
    "score_line_integral",
    "FactoryInfo",
    "trapezoid_correction",
    "factory_test",
    "mala_factory_step",
    "mala_factory_chain",
]


class InnerState(NamedTuple):
    """A point of an inner MALA chain with what the next step needs."""

    position: jax.Array  # shape=(d,)
    potential: jax.Array  # shape=(), U(position) up to a constant (0 if known by differences only)
    grad: jax.Array  # shape=(d,), grad U(position)
    aux: Any = ()  # carried with the point (e.g. the score at position)


class ULDState(NamedTuple):
    """A point of an inner underdamped Langevin chain (unit mass)."""

    position: jax.Array  # shape=(d,)
    velocity: jax.Array  # shape=(d,)
    grad: jax.Array  # shape=(d,), grad U(position)
    aux: Any = ()


class InnerInfo(NamedTuple):
    """What an inner step or chain reports.

    For a chain: ``acceptance_rate`` is the mean MH acceptance probability over its steps,
    ``num_accepted`` counts accepted proposals, ``is_divergent`` is True if any step met a non-finite
    value (and kept the old point). ULD reports acceptance 1 (it is unadjusted).
    """

    acceptance_rate: jax.Array
    is_accepted: jax.Array  # a step: bool; a chain: any step accepted
    num_accepted: jax.Array
    is_divergent: jax.Array


# ----- MALA ----------------------------------------------------------------------------------------


def init_inner(position, potential_fn: Callable) -> InnerState:
    """Evaluate ``potential_fn`` once at ``position`` (one evaluation)."""
    potential, grad, aux = potential_fn(position)
    return InnerState(position, potential, grad, aux)


def mala_step(rng_key, state: InnerState, potential_fn: Callable, step_size,
              energy_diff_fn: Callable | None = None) -> tuple[InnerState, InnerInfo]:
    """One MALA step on exp(-U); one call of ``potential_fn`` and one of ``energy_diff_fn``.

    Update: z' = z - tau g + sqrt(2 tau) xi with g = grad U(z); accept with probability
    min(1, exp(-(U(z') - U(z)) + <z' - z, g + g'>/2 + tau (|g|^2 - |g'|^2)/4)).

    Args:
        rng_key: a PRNG key.
        state: :class:`InnerState` at the current point.
        potential_fn: ``z -> (U(z), grad U(z), aux)``.
        step_size: tau > 0 (a scalar, may be traced).
        energy_diff_fn: ``(old_state, new_state) -> U(new) - U(old)``; by default the difference of
            the ``potential`` fields.

    Returns:
        ``(state, InnerInfo)``; a non-finite proposal or ratio is rejected and flagged divergent.
    """
    key_noise, key_mh = jax.random.split(rng_key)
    # the MALA proposal and ratio with grad log pi = -grad U; negation is exact in floating point
    z_new = langevin_proposal(key_noise, state.position, -state.grad, step_size)
    new_state = init_inner(z_new, potential_fn)
    if energy_diff_fn is None:
        delta_u = new_state.potential - state.potential
    else:
        delta_u = energy_diff_fn(state, new_state)
    log_ratio = mala_log_ratio(state.position, z_new, -state.grad, -new_state.grad, -delta_u,
                               step_size)
    decision = metropolis_hastings(key_mh, log_ratio, new_state, state)
    info = InnerInfo(decision.acceptance_rate, decision.is_accepted,
                     decision.is_accepted.astype(jnp.int32), decision.is_divergent)
    return decision.state, info


def mala_chain(rng_key, state: InnerState, potential_fn: Callable, step_size, num_steps: int,
               energy_diff_fn: Callable | None = None) -> tuple[InnerState, InnerInfo]:
    """``num_steps`` (static) MALA steps; returns the last state and the chain's summary info."""

    def body(carry, key):
        new, info = mala_step(key, carry, potential_fn, step_size, energy_diff_fn)
        return new, info

    keys = jax.random.split(rng_key, num_steps)
    state, infos = jax.lax.scan(body, state, keys)
    return state, InnerInfo(jnp.mean(infos.acceptance_rate), jnp.any(infos.is_accepted),
                            jnp.sum(infos.num_accepted), jnp.any(infos.is_divergent))


# ----- ULD with the gradient frozen on each step ----------------------------------------------------


def _series(x, coefficients):
    """sum_k c_k x^k for small x (Horner), coefficients listed from k = 0."""
    out = jnp.zeros_like(x)
    for c in reversed(coefficients):
        out = out * x + c
    return out


# x + expm1(-x) = sum_{k>=2} (-1)^k x^k / k!
_X_MINUS_M = [0.0, 0.0] + [(-1) ** k / math.factorial(k) for k in range(2, 14)]
# 2x - 3 + 4 e^-x - e^-2x = sum_{k>=3} (-1)^k (4 - 2^k) x^k / k!
_SZZ = [0.0, 0.0, 0.0] + [(-1) ** k * (4 - 2**k) / math.factorial(k) for k in range(3, 16)]
_SMALL = 0.1


def uld_coefficients(step_size, friction):
    """The exact frozen-gradient ULD update coefficients for x = gamma tau.

    Returns ``(e, m, c_zg, s_zz, s_zv, s_vv)`` with e = exp(-x), m = 1 - e,
    c_zg = (tau - m/gamma)/gamma (the coefficient of -G in z'), and the per-coordinate noise
    covariance S_zz = (2x - 3 + 4e - e^2)/gamma^2, S_zv = m^2/gamma, S_vv = 1 - e^2.
    Small-x values use Taylor series so that no cancellation occurs.
    """
    step_size = jnp.asarray(step_size)
    friction = jnp.asarray(friction, dtype=step_size.dtype)
    x = friction * step_size
    e = jnp.exp(-x)
    m = -jnp.expm1(-x)
    xs = jnp.minimum(x, _SMALL)
    x_minus_m = jnp.where(x < _SMALL, _series(xs, _X_MINUS_M), x - m)
    szz_num = jnp.where(x < _SMALL, _series(xs, _SZZ), 2.0 * x - 3.0 + 4.0 * e - e**2)
    c_zg = x_minus_m / friction**2
    s_zz = szz_num / friction**2
    s_zv = m**2 / friction
    s_vv = -jnp.expm1(-2.0 * x)
    return e, m, c_zg, s_zz, s_zv, s_vv


def uld_step(rng_key, state: ULDState, potential_fn: Callable, step_size, friction
             ) -> tuple[ULDState, InnerInfo]:
    """One exact frozen-gradient ULD step (one call of ``potential_fn``, at the new point).

    With e = exp(-gamma tau), G = grad U(z):
        z' = z + (1 - e)/gamma v - (tau - (1 - e)/gamma)/gamma G + xi_z
        v' = e v - (1 - e)/gamma G + xi_v
    and (xi_z, xi_v) Gaussian with per-coordinate covariance [[S_zz, S_zv], [S_zv, S_vv]]
    (:func:`uld_coefficients`). Unadjusted: the bias on a Gaussian is O(tau) in the covariance.
    A non-finite new point is refused (the old point is kept) and flagged divergent.
    """
    z, v, g = state.position, state.velocity, state.grad
    e, m, c_zg, s_zz, s_zv, s_vv = uld_coefficients(step_size, friction)
    n_1, n_2 = jax.random.normal(rng_key, (2,) + z.shape, dtype=z.dtype)
    # Cholesky with z first: S_vv - S_zv^2 / S_zz stays well conditioned for small gamma tau.
    sd_z = jnp.sqrt(s_zz)
    xi_z = sd_z * n_1
    xi_v = (s_zv / sd_z) * n_1 + jnp.sqrt(jnp.maximum(s_vv - s_zv**2 / s_zz, 0.0)) * n_2
    z_new = z + (m / friction) * v - c_zg * g + xi_z
    v_new = e * v - (m / friction) * g + xi_v
    _, g_new, aux_new = potential_fn(z_new)
    new_state = ULDState(z_new, v_new, g_new, aux_new)
    ok = all_finite(new_state)
    state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_state, state)
    info = InnerInfo(jnp.ones((), z.dtype), ok, ok.astype(jnp.int32), ~ok)
    return state, info


def uld_chain(rng_key, state: ULDState, potential_fn: Callable, step_size, friction,
              num_steps: int) -> tuple[ULDState, InnerInfo]:
    """``num_steps`` (static) ULD steps; returns the last state and the chain's summary info."""

    def body(carry, key):
        return uld_step(key, carry, potential_fn, step_size, friction)

    keys = jax.random.split(rng_key, num_steps)
    state, infos = jax.lax.scan(body, state, keys)
    return state, InnerInfo(jnp.mean(infos.acceptance_rate), jnp.all(infos.is_accepted),
                            jnp.sum(infos.num_accepted), jnp.any(infos.is_divergent))


# ----- energy differences from a line integral of the score ----------------------------------------


class QuadratureRule(NamedTuple):
    """int_0^1 h(u) du ~ w_end (h(0) + h(1)) + sum_i w_i h(u_i).

    ``nodes``/``weights`` are the interior points (each costs one evaluation); the endpoint values
    are the gradients a MALA step already has, so they cost nothing. ``degree`` is the polynomial
    degree integrated exactly.
    """

    name: str
    nodes: np.ndarray  # shape=(n,), in (0, 1)
    weights: np.ndarray  # shape=(n,)
    endpoint_weight: float
    degree: int

    @property
    def num_evals(self) -> int:
        return int(self.nodes.shape[0])


QUADRATURE_RULES = ("gauss-legendre", "gauss-lobatto", "trapezoid")


def quadrature_rule(name: str = "gauss-legendre", num_nodes: int = 2) -> QuadratureRule:
    """A rule on [0, 1] with ``num_nodes`` interior nodes (float64 numpy, built once).

    - "gauss-legendre": n >= 1 interior nodes, exact to degree 2n - 1, n evaluations.
    - "gauss-lobatto": the endpoints plus n >= 0 interior nodes (roots of P'_{n+1}), exact to degree
      2n + 1, n evaluations (n = 0 is the trapezoid rule, n = 1 Simpson's rule).
    - "trapezoid": endpoints only, exact to degree 1, no evaluation (``num_nodes`` ignored).
    """
    check_in("quadrature", name, QUADRATURE_RULES)
    if name == "trapezoid":
        return QuadratureRule(name, np.zeros(0), np.zeros(0), 0.5, 1)
    if name == "gauss-legendre":
        n = check_int("num_nodes", num_nodes, minimum=1)
        x, w = _legendre.leggauss(n)
        return QuadratureRule(name, 0.5 * (x + 1.0), 0.5 * w, 0.0, 2 * n - 1)
    n = check_int("num_nodes", num_nodes, minimum=0)
    if n == 0:
        return QuadratureRule(name, np.zeros(0), np.zeros(0), 0.5, 1)
    p = _legendre.Legendre.basis(n + 1)
    x = np.sort(np.real(p.deriv().roots()))
    w = 2.0 / ((n + 2) * (n + 1) * p(x) ** 2)
    w_end = 2.0 / ((n + 2) * (n + 1))
    return QuadratureRule(name, 0.5 * (x + 1.0), 0.5 * w, 0.5 * w_end, 2 * n + 1)


def score_line_integral(score_at: Callable, position, new_position, score, new_score,
                        rule: QuadratureRule):
    """int_0^1 <score(z + u (z' - z)), z' - z> du, i.e. log p(z') - log p(z), by ``rule``.

    ``score`` and ``new_score`` are the scores already known at z and z' (used by rules with
    endpoint weights); ``score_at(x)`` is evaluated at the ``rule.num_evals`` interior nodes in one
    batch. An energy difference is the negative of this.
    """
    step = new_position - position
    total = rule.endpoint_weight * jnp.vdot(score + new_score, step)
    if rule.num_evals:
        nodes = jnp.asarray(rule.nodes, dtype=position.dtype)
        weights = jnp.asarray(rule.weights, dtype=position.dtype)
        points = position[None, :] + nodes[:, None] * step[None, :]
        scores = jax.vmap(score_at)(points)
        total = total + jnp.vdot(weights, scores @ step)
    return total


# ----- MALA with an exact test from gradients only: a Bernoulli factory ---------------------------


class FactoryInfo(NamedTuple):
    """What :func:`factory_test`, :func:`mala_factory_step` or :func:`mala_factory_chain` report.

    ``acceptance_rate`` is the realised acceptance (1 or 0 for a step, the mean over a chain's
    steps): the acceptance probability itself contains E[clip(W)], which is known only through
    estimates. ``num_evals`` counts the potential evaluations of the coins (the one at the proposal
    is not included), ``num_rounds`` their sequential rounds; ``num_coins`` estimates entered a
    coin and ``num_clipped`` of them had |W| > B (the clip rate is ``num_clipped / num_coins``).
    """

    acceptance_rate: jax.Array
    is_accepted: jax.Array
    num_accepted: jax.Array
    is_divergent: jax.Array
    num_evals: jax.Array
    num_rounds: jax.Array
    num_coins: jax.Array
    num_clipped: jax.Array


def trapezoid_correction(rng_key, potential_fn: Callable, state: InnerState, new_state: InnerState):
    """One-evaluation unbiased estimate of log r - log r_trap, r the MALA ratio from z to z'.

    With step = z' - z, G = grad U and u ~ U(0, 1):

        R = -<G(z + u step) - (1 - u) G(z) - u G(z'), step>,
        E[R] = <G(z) + G(z'), step> / 2 - int_0^1 <G(z + u step), step> du
             = (trapezoid U(z') - U(z)) - (U(z') - U(z)).

    The linear interpolation of the end-point gradients is a control variate: R is 0 when G is
    affine (a Gaussian U) and small when the step is short against the scale on which G bends.
    The estimate from z' back to z at 1 - u is -R, so the reverse move's estimates have the law
    of -R: what makes :func:`factory_test` reversible.
    """
    step = new_state.position - state.position
    u = jax.random.uniform(rng_key, (), dtype=step.dtype)
    _, grad, _ = potential_fn(state.position + u * step)
    line = (1.0 - u) * state.grad + u * new_state.grad
    return -jnp.vdot(grad - line, step)


def factory_test(rng_key, log_ratio, state, new_state, potential_fn: Callable, clip, *,
                 max_poisson: int | None = None, correction_fn: Callable = trapezoid_correction
                 ) -> tuple[Any, FactoryInfo]:
    """Delayed-acceptance test: Metropolis-Hastings on ``log_ratio``, then a Bernoulli-factory coin.

    Accepts ``new_state`` with probability

        min(1, exp(log_ratio)) * exp(E[clip(W, -B, B)] - B),   W = correction_fn(...) / 2,

    the second factor by :func:`scoresample.kernels.fors.fors_rejection` with one proposal
    (J ~ Poisson(2B) coins, each heads with probability (B + W_j) / (2B); every coin must be
    heads). When ``correction_fn`` is an unbiased estimate of delta = log r - ``log_ratio`` whose
    reverse-move law is that of its negative (:func:`trapezoid_correction`) and |W| <= B, the
    acceptance is a(z, z') with a(z, z') / a(z', z) = r exactly (Christen and Fox's delayed
    acceptance; the coin gives exp(delta / 2 - B), whose ratio over the reverse move is
    exp(delta)): the chain keeps the target exactly invariant. Clipped estimates (|W| > B) are the
    only approximation; their rate is reported. The coins run only when the first stage accepts.

    Args:
        rng_key: a PRNG key.
        log_ratio: the first-stage log ratio (e.g. MALA's with the trapezoid energy difference).
        state, new_state: the current and proposed states (:class:`InnerState`).
        potential_fn: evaluated by ``correction_fn`` (one call per coin).
        clip: B > 0. Each accepted move also pays a factor about e^-B, and costs about 2B
            evaluations in expectation.
        max_poisson: the loop bound on J (default
            :func:`~scoresample.kernels.fors.default_max_poisson` of ``clip``, which then must be a
            Python number).
        correction_fn: ``(rng_key, potential_fn, state, new_state) -> estimate``.

    Returns:
        ``(chosen state, FactoryInfo)``; a non-finite ratio, proposal or estimate rejects the move
        and flags ``is_divergent``.
    """
    if max_poisson is None:
        max_poisson = default_max_poisson(float(clip))
    key_mh, key_coin = jax.random.split(rng_key)
    first = metropolis_hastings(key_mh, log_ratio, new_state, state)
    dtype = new_state.position.dtype

    def estimate_fn(key, candidate):
        del candidate
        return 0.5 * correction_fn(key, potential_fn, state, new_state)

    coin = fors_rejection(key_coin, lambda key: jnp.zeros((), dtype), estimate_fn, clip,
                          max_proposals=1, max_poisson=max_poisson, is_active=first.is_accepted)
    accepted = first.is_accepted & coin.is_accepted
    chosen = jax.tree.map(lambda new, old: jnp.where(accepted, new, old), new_state, state)
    info = FactoryInfo(accepted.astype(dtype), accepted, accepted.astype(jnp.int32),
                       first.is_divergent | coin.is_divergent, coin.num_evals, coin.num_rounds,
                       coin.num_coins, coin.num_clipped)
    return chosen, info


def mala_factory_step(rng_key, state: InnerState, potential_fn: Callable, step_size, clip, *,
                      max_poisson: int | None = None,
                      correction_fn: Callable = trapezoid_correction
                      ) -> tuple[InnerState, FactoryInfo]:
    """One MALA step on exp(-U) with an exact test that needs grad U only (no value of U).

    Proposal z' = z - tau g + sqrt(2 tau) xi (one call of ``potential_fn``, whose value is
    ignored); first stage: MH with U(z') - U(z) replaced by the trapezoid rule <g + g', z' - z> / 2,
    which makes the log ratio tau (|g|^2 - |g'|^2) / 4; second stage: the factory coin of
    :func:`factory_test` on :func:`trapezoid_correction` (about 2B more calls in expectation, only
    after a first-stage acceptance). Exact up to the clipped estimates.
    """
    key_noise, key_test = jax.random.split(rng_key)
    z_new = langevin_proposal(key_noise, state.position, -state.grad, step_size)
    new_state = init_inner(z_new, potential_fn)
    trapezoid = 0.5 * jnp.vdot(z_new - state.position, state.grad + new_state.grad)
    log_ratio = mala_log_ratio(state.position, z_new, -state.grad, -new_state.grad, -trapezoid,
                               step_size)
    return factory_test(key_test, log_ratio, state, new_state, potential_fn, clip,
                        max_poisson=max_poisson, correction_fn=correction_fn)


def mala_factory_chain(rng_key, state: InnerState, potential_fn: Callable, step_size,
                       num_steps: int, clip, *, max_poisson: int | None = None,
                       correction_fn: Callable = trapezoid_correction
                       ) -> tuple[InnerState, FactoryInfo]:
    """``num_steps`` (static) :func:`mala_factory_step` steps; the last state and summed counts."""
    if max_poisson is None:
        max_poisson = default_max_poisson(float(clip))

    def body(carry, key):
        return mala_factory_step(key, carry, potential_fn, step_size, clip,
                                 max_poisson=max_poisson, correction_fn=correction_fn)

    keys = jax.random.split(rng_key, num_steps)
    state, infos = jax.lax.scan(body, state, keys)
    return state, FactoryInfo(jnp.mean(infos.acceptance_rate), jnp.any(infos.is_accepted),
                              jnp.sum(infos.num_accepted), jnp.any(infos.is_divergent),
                              jnp.sum(infos.num_evals), jnp.sum(infos.num_rounds),
                              jnp.sum(infos.num_coins), jnp.sum(infos.num_clipped))
