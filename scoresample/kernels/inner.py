"""Inner solvers shared by every RTK variant (and reusable by any sampler with a log-concave subproblem).

A subproblem is a target exp(-U(z)) on R^d that is (close to) strongly log-concave. It is given by
``potential_fn(z) -> (U, grad U, aux)``: ``U`` may be a dummy 0 when U is known only through
differences, in which case an ``energy_diff_fn(old, new) -> U(new) - U(old)`` is passed too; ``aux``
is whatever the caller wants carried with the point (e.g. the score at z, reused by the next segment).

- :func:`mala_step` / :func:`mala_chain`: Metropolis-adjusted Langevin on U,
      z' = z - tau grad U(z) + sqrt(2 tau) xi,
  accepted by :func:`scoresample.kernels.proposal.metropolis_hastings` with
      log ratio = -(U(z') - U(z)) + <z' - z, g + g'> / 2 + tau (|g|^2 - |g'|^2) / 4
  (the usual ratio of Gaussian proposals written without |z' - z|^2, so nothing cancels).
- :func:`uld_step` / :func:`uld_chain`: underdamped Langevin dz = v dt, dv = -gamma v dt - grad U dt
  + sqrt(2 gamma) dB, integrated exactly with grad U frozen on a step of length tau (unadjusted).
- :func:`score_line_integral`: U(z') - U(z) = -int_0^1 <score(z + u (z' - z)), z' - z> du by a
  quadrature rule (:func:`quadrature_rule`: Gauss-Legendre, Gauss-Lobatto, trapezoid).

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
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpy.polynomial import legendre as _legendre

from scoresample.base import all_finite, check_in, check_int
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
    z, g = state.position, state.grad
    noise = jax.random.normal(key_noise, z.shape, dtype=z.dtype)
    z_new = z - step_size * g + jnp.sqrt(2.0 * step_size) * noise
    new_state = init_inner(z_new, potential_fn)
    if energy_diff_fn is None:
        delta_u = new_state.potential - state.potential
    else:
        delta_u = energy_diff_fn(state, new_state)
    g_new = new_state.grad
    step = z_new - z
    log_ratio = (-delta_u + 0.5 * jnp.vdot(step, g + g_new)
                 + 0.25 * step_size * (jnp.vdot(g, g) - jnp.vdot(g_new, g_new)))
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
