"""FORS: first-order rejection sampling, for log-concave targets and for diffusion (gradients only).

The primitive (:func:`fors_rejection`) samples p(x) proportional to q(x) exp(w(x)) from draws of q and
unbiased estimates W of w(x) clipped to [-B, B] (Chen, Chewi, Daskalakis, Rakhlin, "High-accuracy
sampling for diffusion models and log-concave distributions", arXiv 2602.01338, 2026):

    repeat:  x ~ q;  J ~ Poisson(2B);  for j = 1..J: draw W_j, flip a coin with P(heads) = (B + W_j)/(2B),
             stop at the first tail (early rejection);  accept x when all J coins are heads.

Given x the acceptance probability is E_J[((B + w(x))/(2B))^J] = exp(w(x) - B) exactly, so the output
law is exact for the clipped estimator. W is the derivative of w along a random path gamma_r from an
independent draw of q to x, W = <gamma_dot_r, grad w(gamma_r)>, r ~ U[0, 1]: one gradient per coin,
and no value of w (hence no log-density value) is ever evaluated. With B = 1 a draw is accepted with
probability about e^-1 and costs about 3.4 estimator evaluations with early rejection (5.4 without).

Two samplers are built on it:

- :data:`fors` (FORS-proximal), a BlackJAX-style MCMC kernel for pi = exp(-V) that only calls
  ``jax.grad(logdensity_fn)`` (or a user's ``grad_fn``):
  Y = X + sqrt(eta) xi;  x+ <- Y, then m times x+ <- Y - eta grad V(x+);  g = grad V(x+),
  x_hat = Y - eta g;  FORS with q = N(x_hat, eta I) and grad w(x) = g - grad V(x) returns X'.
  The exact conditional pi(x | Y) is proportional to q(x) exp(w(x)). When the prox iteration has
  not converged (|x_hat - x+| above ``prox_tolerance`` proposal sds, a function of Y only) the step
  keeps X and moves it by a few smaller proximal steps on pi(x | Y), which leaves pi invariant
  (the argument is in :func:`build_kernel`). Options: a metric
  (``inverse_mass_matrix``) and a curvature term in the proposal (see :func:`build_kernel`);
  :func:`fors_warmup` finds the mode by gradient descent, a Hessian metric and the step size.
- :func:`fors_diffusion_plan` (method "fors" of :mod:`scoresample.diffusion`), the reverse diffusion
  whose every step draws from the exact reverse transition kernel
  p(x_k | x_{k+1}) ~ p_{t_k}(x) N(x; x_{k+1}/alpha, eta) on a geometric grid in rho = e^{2t} - 1.

Ragged loops (a random number of proposals, a random number of coins) run in ``lax.while_loop`` with
fixed maxima (``max_proposals``, ``max_poisson``) and a done flag. Estimates are evaluated in chunks of
``chunk_size`` (one sequential round of batched evaluation per chunk); every evaluation of an executed
chunk is counted, including entries masked because the proposal's coins ran out or a tail came first.
Counts are per particle: under ``jax.vmap`` a ``while_loop`` keeps computing finished lanes until the
slowest lane ends (as for NUTS), and those discarded lanes are not counted here; ``num_rounds`` (the
maximum over particles per step, as :func:`scoresample.diffusion.run_plan` reports it) measures that.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from scoresample.base import (
    DiffusionPlan,
    DiffusionState,
    KernelAPI,
    SamplingAlgorithm,
    all_finite,
    check_array,
    check_callable,
    check_int,
    check_key,
    check_nonnegative,
    check_parameter,
    check_position,
    check_positive,
)

__all__ = [
    "FORSRejection",
    "fors_rejection",
    "default_max_poisson",
    "FORSState",
    "FORSInfo",
    "init",
    "build_kernel",
    "as_top_level_api",
    "fors",
    "fors_warmup",
    "FORSWarmupResult",
    "warmup_statistic",
    "pooled_rates",
    "FORSSchedule",
    "fors_schedule",
    "StepCoefficients",
    "step_coefficients",
    "three_point_path",
    "FORSDiffusionInfo",
    "build_diffusion_kernel",
    "fors_diffusion_plan",
]

Array = jax.Array


# =============================================================================================
# The primitive
# =============================================================================================


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


def default_max_poisson(clip: float, tail: float = 1e-12) -> int:
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


def fors_rejection(rng_key, propose_fn: Callable, estimate_fn: Callable, clip, *,
                   max_proposals: int, max_poisson: int, chunk_size: int = 1,
                   is_active=True) -> FORSRejection:
    """First-order rejection sampling for p(x) ~ q(x) exp(w(x)), single particle (callers vmap).

    Args:
        rng_key: a PRNG key.
        propose_fn: ``propose_fn(rng_key) -> candidate``, one draw from q (no evaluation).
        estimate_fn: ``estimate_fn(rng_key, candidate) -> W``, an unbiased estimate of w(candidate)
            up to a constant that does not depend on the candidate (one evaluation).
        clip: B > 0; estimates are clipped to [-B, B] and J ~ Poisson(2B).
        max_proposals: proposals allowed before giving up (``is_overflow``; the last proposal is
            returned with ``is_accepted`` False).
        max_poisson: at most this many coins per proposal; a proposal whose J exceeds it and whose
            first ``max_poisson`` coins are all heads is rejected and flags ``is_overflow``.
        chunk_size: estimates evaluated together per round (1 is pure early rejection, the fewest
            evaluations; larger chunks trade evaluations for fewer sequential rounds).
        is_active: traced bool; when False nothing is evaluated and nothing is accepted.

    Returns:
        :class:`FORSRejection`. Non-finite estimates count as a tail and set ``is_divergent``.

    Example:
        >>> res = fors_rejection(key, lambda k: jax.random.normal(k),
        ...                      lambda k, x: 0.6 * jnp.sin(2 * x), 1.0,
        ...                      max_proposals=64, max_poisson=20)
    """
    clip = jnp.asarray(clip)
    two_b = 2.0 * clip
    int32 = jnp.int32
    dtype = jnp.result_type(float)
    # Poisson(2B) by inversion of its CDF on 0..max_poisson (loop-free; J = max_poisson + 1 stands
    # for "more than max_poisson"). jax.random.poisson runs a rejection loop per draw, which inside
    # the while loop below and under vmap cost more than the estimates themselves.
    ks = jnp.arange(max_poisson + 1, dtype=dtype)
    log_pmf = ks * jnp.log(two_b) - two_b - jax.lax.lgamma(ks + 1.0)
    cdf = jnp.cumsum(jnp.exp(log_pmf))

    def new_proposal(key_x, uniform_j):
        return propose_fn(key_x), jnp.sum(uniform_j > cdf, dtype=int32)

    key_first, key_loop = jax.random.split(rng_key)
    key_x0, key_j0 = jax.random.split(key_first)
    candidate, num_poisson = new_proposal(key_x0, jax.random.uniform(key_j0, (), dtype))
    is_active = jnp.asarray(is_active, dtype=bool)
    zero = jnp.zeros((), int32)
    carry = dict(
        candidate=candidate, num_poisson=num_poisson, coin=zero,
        num_proposals=jnp.ones((), int32), done=~is_active | (num_poisson == 0),
        accepted=is_active & (num_poisson == 0), num_evals=zero, num_rounds=zero, num_coins=zero,
        num_clipped=zero, sum_sq=jnp.zeros((), dtype), overflow=jnp.zeros((), bool),
        divergent=jnp.zeros((), bool),
    )
    offsets = jnp.arange(chunk_size, dtype=int32)

    def body(c):
        # few, wide random draws per round: on small problems the PRNG, not the estimate, is the cost
        keys = jax.random.split(jax.random.fold_in(key_loop, c["num_rounds"]), chunk_size + 2)
        w_raw = jax.vmap(estimate_fn, in_axes=(0, None))(keys[:chunk_size], c["candidate"])
        w_raw = jnp.reshape(w_raw, (chunk_size,))
        uniforms = jax.random.uniform(keys[chunk_size], (chunk_size + 1,), dtype)
        index = c["coin"] + offsets
        num_needed = jnp.minimum(c["num_poisson"], max_poisson)
        valid = index < num_needed
        finite = jnp.isfinite(w_raw)
        w_safe = jnp.where(finite, w_raw, 0.0)
        w_clipped = jnp.clip(w_safe, -clip, clip)
        heads = uniforms[:chunk_size] * two_b < clip + w_clipped
        tail = jnp.any(valid & (~heads | ~finite))
        nonfinite = jnp.any(valid & ~finite)
        counted = valid & finite
        coin = c["coin"] + chunk_size
        coins_done = coin >= num_needed
        poisson_overflow = coins_done & ~tail & (c["num_poisson"] > max_poisson)
        accept_now = coins_done & ~tail & ~poisson_overflow
        reject_now = tail | poisson_overflow
        out_of_proposals = reject_now & (c["num_proposals"] >= max_proposals)
        draw_new = reject_now & ~out_of_proposals

        new_candidate, new_poisson = new_proposal(keys[chunk_size + 1], uniforms[chunk_size])
        pick = lambda new, old: jnp.where(draw_new, new, old)
        return dict(
            candidate=jax.tree_util.tree_map(pick, new_candidate, c["candidate"]),
            num_poisson=pick(new_poisson, c["num_poisson"]),
            coin=jnp.where(draw_new, zero, coin),
            num_proposals=c["num_proposals"] + draw_new.astype(int32),
            done=accept_now | out_of_proposals | (draw_new & (new_poisson == 0)),
            accepted=accept_now | (draw_new & (new_poisson == 0)),
            num_evals=c["num_evals"] + chunk_size,
            num_rounds=c["num_rounds"] + 1,
            num_coins=c["num_coins"] + jnp.sum(counted, dtype=int32),
            num_clipped=c["num_clipped"] + jnp.sum(counted & (jnp.abs(w_raw) > clip), dtype=int32),
            sum_sq=c["sum_sq"] + jnp.sum(jnp.where(counted, w_safe**2, 0.0)).astype(dtype),
            overflow=c["overflow"] | poisson_overflow | out_of_proposals,
            divergent=c["divergent"] | nonfinite,
        )

    c = jax.lax.while_loop(lambda c: ~c["done"], body, carry)
    return FORSRejection(c["candidate"], c["accepted"], c["num_proposals"], c["num_evals"],
                         c["num_rounds"], c["num_coins"], c["num_clipped"], c["sum_sq"],
                         c["overflow"], c["divergent"])


def _rate(num, den):
    den_f = jnp.maximum(den, 1).astype(jnp.result_type(float))
    return jnp.where(den > 0, num / den_f, 0.0)


def pooled_rates(infos) -> dict:
    """Acceptance and clip rates pooled over steps as ratios of sums (never means of per-step rates).

    The per-step ``acceptance_rate`` (is_accepted / num_proposals) averaged over steps is biased upward:
    the unbiased FORS acceptance is sum(is_accepted) / sum(num_proposals); likewise the clip rate is
    sum(num_clipped) / sum(num_coins). Works on stacked infos of either FORS kernel (FORS-proximal
    adds ``prox_rejection_rate``, the fraction of steps whose prox test failed).
    """
    accepted = float(np.sum(np.asarray(infos.is_accepted)))
    proposals = float(np.sum(np.asarray(infos.num_proposals)))
    clipped = float(np.sum(np.asarray(infos.num_clipped)))
    coins = float(np.sum(np.asarray(infos.num_coins)))
    evals = float(np.sum(np.asarray(infos.num_grad_evals)))
    out = dict(acceptance=accepted / max(proposals, 1.0), clip_rate=clipped / max(coins, 1.0),
               evals_per_step=evals / max(np.asarray(infos.num_grad_evals).size, 1),
               overflow_rate=float(np.mean(np.asarray(infos.is_overflow))),
               divergent_rate=float(np.mean(np.asarray(infos.is_divergent))))
    if hasattr(infos, "is_prox_rejected"):  # FORS-proximal only
        out["prox_rejection_rate"] = float(np.mean(np.asarray(infos.is_prox_rejected)))
    return out


# =============================================================================================
# FORS-proximal: a gradient-only MCMC kernel for log-concave targets
# =============================================================================================


class FORSState(NamedTuple):
    """State of FORS-proximal: only the position (no log-density value is ever computed)."""

    position: object  # a pytree, like BlackJAX positions


class FORSInfo(NamedTuple):
    """Diagnostics of one FORS-proximal step.

    ``acceptance_rate`` is this step's is_accepted / num_proposals; pool over steps with
    :func:`pooled_rates` (ratio of sums). ``w_rms`` is the root mean square of the raw estimates
    (0 when no coin was flipped), the statistic the warmup tunes on. A step that ran no FORS (a
    non-finite gradient, or the prox test of :func:`build_kernel` failed) has ``num_proposals`` 0.
    """

    num_grad_evals: Array  # int32: prox gradients + 1 + executed estimator evaluations
    acceptance_rate: Array  # float
    is_accepted: Array  # bool: the chain moved
    is_divergent: Array  # bool: a non-finite gradient was met; that (sub)step kept its position
    clip_rate: Array  # float: num_clipped / num_coins (0 without coins)
    num_proposals: Array  # int32
    is_overflow: Array  # bool: a fixed maximum was hit; the chain kept its position
    num_clipped: Array  # int32
    num_coins: Array  # int32
    w_rms: Array  # float
    num_rounds: Array  # int32: sequential rounds of gradient evaluation in this step
    prox_residual: Array  # float: |T(x+) - x+| in proposal sds (inf when not finite)
    is_prox_rejected: Array  # bool: the residual exceeded prox_tolerance at Y (no FORS at Y)
    num_substeps: Array  # int32: rescue steps on pi(x | Y) run after a rejection (0 otherwise)


def _grad_flat(logdensity_fn, grad_fn, unravel):
    """grad log pi on flat vectors, from ``grad_fn`` or ``jax.grad(logdensity_fn)`` (never the value)."""
    base = grad_fn if grad_fn is not None else jax.grad(logdensity_fn)

    def fn(x_flat):
        return ravel_pytree(base(unravel(x_flat)))[0]

    return fn


def _metric(inverse_mass_matrix, dtype):
    """``(apply_m, apply_m_inv, root_m)``: v -> M v, v -> M^-1 v and xi -> M^{1/2} xi (so that
    M^{1/2} xi ~ N(0, M) for xi ~ N(0, I)), M = ``inverse_mass_matrix``.

    None is the identity, a vector a diagonal M, a matrix a dense M (factored by Cholesky).
    """
    if inverse_mass_matrix is None:
        same = lambda v: v
        return same, same, same
    m = jnp.asarray(inverse_mass_matrix, dtype)
    if m.ndim == 1:
        root = jnp.sqrt(m)
        return (lambda v: m * v), (lambda v: v / m), (lambda xi: root * xi)
    chol = jnp.linalg.cholesky(m)
    return ((lambda v: m @ v), (lambda v: jax.scipy.linalg.cho_solve((chol, True), v)),
            (lambda xi: chol @ xi))


def _check_inverse_mass_matrix(value, dim=None):
    """A concrete inverse mass matrix must be a positive vector or a symmetric positive-definite
    matrix (of the position's size when ``dim`` is known); traced values pass unchecked."""
    if value is None or isinstance(value, jax.core.Tracer):
        return value
    arr = check_array("inverse_mass_matrix", value)
    if arr.ndim == 1:
        if np.any(arr <= 0):
            raise ValueError("inverse_mass_matrix (diagonal) must be positive")
    elif arr.ndim == 2:
        if arr.shape[0] != arr.shape[1] or not np.allclose(arr, arr.T, rtol=1e-10, atol=1e-12):
            raise ValueError("inverse_mass_matrix must be a symmetric square matrix")
        if np.any(np.linalg.eigvalsh(arr) <= 0):
            raise ValueError("inverse_mass_matrix must be positive definite")
    else:
        raise ValueError(f"inverse_mass_matrix must be a vector or a matrix, got shape {arr.shape}")
    if dim is not None and arr.shape[0] != dim:
        raise ValueError(f"inverse_mass_matrix has size {arr.shape[0]} but the position has {dim}")
    return value


def init(position, logdensity_fn=None, rng_key=None, *, grad_fn=None) -> FORSState:
    """FORS-proximal state at ``position`` (an array or pytree of finite values).

    Nothing is evaluated: the gradient's output structure is checked abstractly (``jax.eval_shape``).
    """
    del rng_key
    check_position("position", position)
    flat, unravel = ravel_pytree(position)
    if not isinstance(flat, jax.core.Tracer):
        check_array("position", flat, ndim=1)
    fn = grad_fn if grad_fn is not None else (jax.grad(logdensity_fn) if logdensity_fn is not None
                                              else None)
    if fn is not None and not isinstance(flat, jax.core.Tracer):
        out = jax.eval_shape(fn, position)
        if (jax.tree_util.tree_structure(out) != jax.tree_util.tree_structure(position)
                or [o.shape for o in jax.tree_util.tree_leaves(out)]
                != [jnp.shape(p) for p in jax.tree_util.tree_leaves(position)]):
            name = "grad_fn" if grad_fn is not None else "logdensity_fn"
            raise ValueError(f"the gradient of {name} must have the position's structure and shapes")
    return FORSState(position)


def build_kernel(num_prox_steps: int = 1, max_proposals: int = 64, max_poisson: int = 20,
                 chunk_size: int = 1, prox_tolerance: float | None = 1.0, num_substeps: int = 4):
    """Build the FORS-proximal kernel ``kernel(rng_key, state, logdensity_fn, step_size, clip=1.0,
    inverse_mass_matrix=None, curvature=0.0, *, grad_fn=None) -> (state, info)``.

    One step with eta = step_size, metric M = inverse_mass_matrix (identity by default) and
    curvature kappa, after Chen, Chewi, Daskalakis, Rakhlin (2026), FORS on the proximal sampler's
    restricted Gaussian step pi(x | Y) ~ exp(-V(x) - |x - Y|^2_{M^-1} / (2 eta)):

        Y = X + sqrt(eta) M^{1/2} xi
        T(x) = (Y + kappa eta x - eta M grad V(x)) / (1 + kappa eta)
        x+ <- Y;  repeat num_prox_steps times: x+ <- T(x+)                     (approximate prox)
        g = grad V(x+);  x_hat = T(x+);  q = N(x_hat, Sigma),  Sigma = eta M / (1 + kappa eta)
        r = |x_hat - x+|_{Sigma^-1};  if r > prox_tolerance: no FORS at Y (is_prox_rejected),
            X' <- X, then num_substeps rescue steps on pi(x | Y) (below)
        FORS for pi(x | Y) ~ q(x) exp(w(x)), grad w(x) = g - grad V(x) + kappa M^-1 (x - x+):
            candidate x = x_hat + u, u ~ q - x_hat; per coin r ~ U, z ~ q - x_hat,
            a = sin(pi r/2), b = cos(pi r/2), gamma = x_hat + a u + b z,
            gamma_dot = (pi/2)(b u - a z),  W = <gamma_dot, grad w(gamma)>

    kappa = 0 is the paper's proposal (x+ <- Y - eta M grad V(x+), q = N(Y - eta M g, eta M)).
    kappa = 1 takes M^-1 as a guess of the Hessian of V (a Laplace-type proposal; T is then a Newton
    step with that Hessian): on a Gaussian target with M its covariance, w is constant and any eta
    works; in general W scales with the Hessian's deviation from M^-1 instead of the Hessian itself.
    gamma has law q for every r and gamma_dot is independent of it, so E[W | x] = w(x) - E_q w. (With
    M = L L^T this is the identity-metric kernel on theta = L^-1 x.)

    **The prox test.** r is how far the last fixed-point iteration moved the proposal's centre, in
    proposal standard deviations. Where eta L >> 1 (L the local curvature in the metric M; eight
    schools at large tau) T is not a contraction, the iterates run off geometrically, the estimates
    are huge and clipped, and the clipped FORS accepts far-away proposals: the chain runs away. A
    centre that moved by more than ``prox_tolerance`` sds is not trusted: the step runs no FORS at
    Y, keeps X and flags ``is_prox_rejected`` (its gradients are counted). With num_prox_steps = 0
    there is no iteration to test; r is reported and nothing is rejected.

    **Rescue steps.** Keeping X alone leaves a chain that has reached a region where eta L >> 1 for
    every Y stuck there (measured: eight schools at large tau). So after a rejection the kernel runs
    ``num_substeps`` proximal steps of a smaller size on the conditional pi(x | Y) itself, started
    from X: Y2 = X' + sqrt(eta2) M^{1/2} xi, then X' <- the same FORS step (with its own test, keep
    X' on failure) for pi(x | Y, Y2) ~ exp(-V(x) - |x - Y|^2 / (2 eta) - |x - Y2|^2 / (2 eta2)),
    a restricted Gaussian step with 1/eta_e = 1/eta + 1/eta2 and centre (eta2 Y + eta Y2) /
    (eta + eta2). eta_e = eta min(1/4, 1/(4 c)), c the contraction of T measured at Y (the ratio of
    its last two moves, about eta L), so that eta_e L is about 1/4 where the curvature is.

    **Why keeping X leaves pi invariant.** Take X ~ pi and Y = X + sqrt(eta) M^{1/2} xi. By Bayes,
    the law of X given Y is pi(x) N(Y; x, eta M) / p(Y) = pi(x | Y), the proximal sampler's
    conditional. The step returns X' = X on an event E and the FORS draw F otherwise, where E and F
    are functions of Y and of randomness drawn after Y only (r is a function of Y; the rejection
    loop uses fresh keys), never of X. So, given Y, E is independent of X, and the law of X given
    (Y, E) is still pi(x | Y); and F has law pi(x | Y) given (Y, not E) (E is decided before F's
    fresh randomness is drawn). Hence X' given Y has law pi(x | Y) whatever E is, and X' ~ pi.
    (Integrating, pi(x) P(x, dx') = int p(y) [(1 - 1_E(y)) pi(x | y) pi(x' | y) dx dx' +
    1_E(y) pi(x | y) delta_x(dx')] dy is symmetric in (x, x'): the kernel is pi-reversible.) The
    rescue steps keep this: given Y, X is an exact draw of pi_Y = pi(x | Y), and each rescue step is
    a proximal-sampler step for the target pi_Y (pi_Y(x) N(Y2; x, eta2 M) is the restricted Gaussian
    above; its own test depends on (Y, Y2) only), so it leaves pi_Y invariant by the same argument
    with pi_Y in place of pi; eta_e is a function of Y. So X' given Y still has law pi(x | Y). The
    same holds for the other decisions: a non-finite gradient at Y, ``max_proposals`` running
    out, or a non-finite estimate at a rejected candidate (the trials are i.i.d. given Y, so the
    accepted candidate is independent of what the rejected ones met). What would break it: a test
    that looks at X (say |X - x+|) or at the accepted candidate's coins (say "reject if a coin was
    clipped"), or stopping the rescue steps early on what they met. The argument needs F exact, and
    FORS is exact for the clipped estimator only: the chain's law is pi up to clipping. Measured on
    eight schools (without rescue steps), rejections also slow the exit from the regions where
    they are frequent, so a tighter tolerance at a fixed step made the clip bias worse, not
    better: the test is a guard against divergence, and accuracy comes from a step small enough that
    few estimates are clipped (see :func:`warmup_statistic`; ``clip_rate`` in the infos).

    Args:
        num_prox_steps: iterations of T (m). The proposal's centre only has to be accurate to
            O(sqrt(eta)); on the targets measured m = 1 gave the same estimate spread as m = 3 for
            two fewer gradients per step.
        max_proposals, max_poisson, chunk_size: see :func:`fors_rejection`.
        prox_tolerance: reject the step when the last prox iteration moved the centre by more than
            this many proposal sds (default 1: beyond it the estimates are O(1) from the centre's
            error alone); None never rejects (the kernel before the test existed). May be traced.
        num_substeps: rescue steps on pi(x | Y) after a rejection (0: just keep X). They cost
            gradients only on rejected steps (counted in ``num_grad_evals``). May be traced.
    """
    num_prox_steps = check_int("num_prox_steps", num_prox_steps, minimum=0)
    max_proposals = check_int("max_proposals", max_proposals)
    max_poisson = check_int("max_poisson", max_poisson)
    chunk_size = check_int("chunk_size", chunk_size)
    if not isinstance(num_substeps, jax.core.Tracer):
        num_substeps = check_int("num_substeps", num_substeps, minimum=0)
    if prox_tolerance is not None:
        prox_tolerance = check_parameter("prox_tolerance", prox_tolerance)
    is_tested = prox_tolerance is not None and num_prox_steps > 0
    half_pi = 0.5 * math.pi

    def kernel(rng_key, state: FORSState, logdensity_fn, step_size, clip=1.0,
               inverse_mass_matrix=None, curvature=0.0, *, grad_fn=None):
        x, unravel = ravel_pytree(state.position)
        grad_logp = _grad_flat(logdensity_fn, grad_fn, unravel)
        dim = x.shape[0]
        dtype = x.dtype
        apply_m, apply_m_inv, root_m = _metric(inverse_mass_matrix, dtype)
        eta = jnp.asarray(step_size, dtype=dtype)
        kappa = jnp.asarray(curvature, dtype=dtype)

        def m_norm(v):  # |v|_{M^-1}
            return jnp.sqrt(jnp.maximum(jnp.dot(v, apply_m_inv(v)), 0.0))

        def restricted(key, x_keep, y, eta):
            """X' ~ pi(x | y) ~ exp(-V(x) - |x - y|^2_{M^-1} / (2 eta)) by FORS, or x_keep when the
            prox test at y fails (or a non-finite value is met)."""
            denom = 1.0 + kappa * eta
            root = jnp.sqrt(eta / denom)

            def newton_map(xp):  # x <- x - Sigma grad F(x), F = V + |x - y|^2_{M^-1} / (2 eta)
                return (y + kappa * eta * xp + eta * apply_m(grad_logp(xp))) / denom

            x_before, x_prox = jax.lax.fori_loop(
                0, num_prox_steps, lambda _, c: (c[1], newton_map(c[1])), (y, y))
            grad_v = -grad_logp(x_prox)
            x_hat = (y + kappa * eta * x_prox - eta * apply_m(grad_v)) / denom
            is_finite = all_finite(x_hat) & all_finite(grad_v)
            # the test: everything here is a function of y (the prox iterates start at y)
            moved_last = m_norm(jnp.where(is_finite, x_hat - x_prox, 0.0))
            residual = moved_last * jnp.sqrt(denom / eta)
            residual = jnp.where(is_finite & jnp.isfinite(residual), residual, jnp.inf)
            # contraction of T along the last two iterates (about eta L / (1 + kappa eta))
            moved_before = m_norm(jnp.where(is_finite, x_prox - x_before, 0.0))
            ratio = jnp.where(moved_before > 0, moved_last / jnp.where(moved_before > 0,
                                                                          moved_before, 1.0), 0.0)
            is_rejected = (is_finite & ~(residual <= prox_tolerance) if is_tested
                           else jnp.zeros((), bool))
            is_ok = is_finite & ~is_rejected

            def propose_fn(key):
                return root * root_m(jax.random.normal(key, (dim,), dtype))

            def estimate_fn(key, u):
                xi = jax.random.normal(key, (dim + 1,), dtype)  # one draw: z and r = Phi(xi_d)
                r = jax.scipy.special.ndtr(xi[dim])
                z = root * root_m(xi[:dim])
                a, b = jnp.sin(half_pi * r), jnp.cos(half_pi * r)
                offset = a * u + b * z  # gamma - x_hat
                gamma = x_hat + offset
                gamma_dot = half_pi * (b * u - a * z)
                grad_w = grad_v + grad_logp(gamma) + kappa * apply_m_inv((x_hat - x_prox) + offset)
                return jnp.dot(gamma_dot, grad_w)

            res = fors_rejection(key, propose_fn, estimate_fn, clip, max_proposals=max_proposals,
                                 max_poisson=max_poisson, chunk_size=chunk_size, is_active=is_ok)
            x_new = x_hat + res.candidate
            moved = (res.is_accepted & ~res.is_divergent & ~res.is_overflow & is_ok
                     & all_finite(x_new))
            counts = dict(
                num_grad_evals=jnp.asarray(num_prox_steps + 1, jnp.int32) + res.num_evals,
                num_rounds=jnp.asarray(num_prox_steps + 1, jnp.int32) + res.num_rounds,
                num_accepted=moved.astype(jnp.int32),
                num_proposals=jnp.where(is_ok, res.num_proposals, 0),  # no FORS run, no proposal
                num_clipped=res.num_clipped, num_coins=res.num_coins, sum_sq=res.sum_sq,
                is_divergent=res.is_divergent | ~is_finite, is_overflow=res.is_overflow)
            return jnp.where(moved, x_new, x_keep), is_rejected, residual, ratio, counts

        key_y, key_fors = jax.random.split(rng_key)
        y = x + jnp.sqrt(eta) * root_m(jax.random.normal(key_y, (dim,), dtype))
        x_out, is_rejected, residual, ratio, counts = restricted(key_fors, x, y, eta)

        num_sub = jnp.zeros((), jnp.int32)
        if is_tested and (isinstance(num_substeps, jax.core.Tracer) or num_substeps > 0):
            # rescue: X is an exact draw of pi(x | Y); proximal steps of a smaller size eta2 on
            # that conditional (Y fixed) keep it one. Their restricted Gaussian step combines the
            # two quadratics: 1/eta_e = 1/eta + 1/eta2, centre (eta2 Y + eta Y2) / (eta + eta2).
            # eta_e aims at a contraction of 1/4 from the measured one (a function of Y only).
            shrink = jnp.clip(0.25 / jnp.where(jnp.isfinite(ratio) & (ratio > 0), ratio, 1e4),
                              1e-4, 0.25)
            eta_e = eta * shrink
            eta2 = eta * eta_e / (eta - eta_e)
            key_sub = jax.random.fold_in(rng_key, 1)
            todo = jnp.where(is_rejected, num_substeps, 0)

            def body(c):
                j, x_cur, acc = c
                k_y, k_f = jax.random.split(jax.random.fold_in(key_sub, j))
                y2 = x_cur + jnp.sqrt(eta2) * root_m(jax.random.normal(k_y, (dim,), dtype))
                y_bar = (eta2 * y + eta * y2) / (eta + eta2)
                x_next, _, _, _, cnt = restricted(k_f, x_cur, y_bar, eta_e)
                acc = {k: (acc[k] | cnt[k]) if acc[k].dtype == bool else acc[k] + cnt[k]
                       for k in acc}
                return j + 1, x_next, acc

            num_sub, x_out, counts = jax.lax.while_loop(
                lambda c: c[0] < todo, body, (jnp.zeros((), jnp.int32), x_out, counts))

        info = FORSInfo(
            num_grad_evals=counts["num_grad_evals"],
            acceptance_rate=_rate(counts["num_accepted"], counts["num_proposals"]),
            is_accepted=counts["num_accepted"] > 0,
            is_divergent=counts["is_divergent"],
            clip_rate=_rate(counts["num_clipped"], counts["num_coins"]),
            num_proposals=counts["num_proposals"],
            is_overflow=counts["is_overflow"],
            num_clipped=counts["num_clipped"],
            num_coins=counts["num_coins"],
            w_rms=jnp.sqrt(_rate(counts["sum_sq"], counts["num_coins"])),
            num_rounds=counts["num_rounds"],
            prox_residual=residual,
            is_prox_rejected=is_rejected,
            num_substeps=num_sub,
        )
        return FORSState(unravel(x_out)), info

    return kernel


def _check_curvature(value):
    if isinstance(value, jax.core.Tracer):
        return value
    value = check_nonnegative("curvature", float(value) if isinstance(value, jax.Array) else value)
    if value > 1.0:
        raise ValueError(f"curvature must be in [0, 1], got {value}")
    return value


def _check_model(logdensity_fn, grad_fn):
    if (logdensity_fn is None) == (grad_fn is None):
        raise TypeError("give exactly one of logdensity_fn and grad_fn")
    if grad_fn is not None:
        check_callable("grad_fn", grad_fn)
    else:
        check_callable("logdensity_fn", logdensity_fn)


def as_top_level_api(logdensity_fn: Callable | None = None, step_size=None, clip=1.0,
                     inverse_mass_matrix=None, curvature=0.0, *, grad_fn: Callable | None = None,
                     num_prox_steps: int = 1, max_proposals: int = 64,
                     max_poisson: int | None = None, chunk_size: int = 1,
                     prox_tolerance: float | None = 1.0,
                     num_substeps: int = 4) -> SamplingAlgorithm:
    """FORS-proximal: a high-accuracy MCMC kernel for log-concave targets that uses gradients only.

    It only ever differentiates ``logdensity_fn`` (``jax.grad``) and never uses its value, so a
    log-density known up to a non-computable term, or a bare ``grad_fn = grad log pi``, works.
    Update rule: see :func:`build_kernel`.

    Args:
        logdensity_fn: log pi on a position (array or pytree); or give ``grad_fn`` instead.
        step_size: the proximal step eta > 0. Tune it with :func:`fors_warmup` (the clip rate must
            stay small; theory: 1/eta ~ beta sqrt(d log(1/eps)) for a beta-smooth V).
        clip: B, the clipping level of the estimates (acceptance about e^-B).
        inverse_mass_matrix: the metric M (None = identity, a vector = diagonal, a matrix = dense);
            with M close to the posterior covariance, eta no longer scales with the condition number.
        curvature: kappa in [0, 1]; 0 is the paper's proposal, 1 uses M^-1 as the Hessian guess in
            the proposal (see :func:`build_kernel`; pair it with a Hessian-based M).
        grad_fn: ``grad_fn(position) -> grad log pi(position)``, instead of ``logdensity_fn``.
        num_prox_steps: fixed-point iterations for the approximate prox.
        max_proposals: proposals per step before giving up (the chain then stays, ``is_overflow``).
        max_poisson: maximum coins per proposal (default: P(Poisson(2B) > max) < 1e-12).
        chunk_size: estimates evaluated per batched round (1 = fewest evaluations).
        prox_tolerance: keep X when the last prox iteration moved the proposal's centre by more
            than this many proposal sds (a diverging prox; see :func:`build_kernel`, which also
            shows why pi stays invariant); None never rejects.
        num_substeps: after a rejection, this many smaller proximal steps on pi(x | Y) (0: keep X).

    Returns:
        A ``SamplingAlgorithm`` with ``init(position, rng_key=None)`` and ``step(rng_key, state)``;
        infos are :class:`FORSInfo`.

    Example:
        >>> algo = scoresample.fors(lambda x: -0.5 * x @ x, step_size=0.1)
        >>> state = algo.init(jnp.zeros(3))
        >>> state, info = jax.jit(algo.step)(jax.random.key(0), state)
    """
    _check_model(logdensity_fn, grad_fn)
    if step_size is None:
        raise TypeError("step_size is required")
    step_size = check_parameter("step_size", step_size)
    clip = check_parameter("clip", clip)
    inverse_mass_matrix = _check_inverse_mass_matrix(inverse_mass_matrix)
    curvature = _check_curvature(curvature)
    if max_poisson is None:
        if isinstance(clip, jax.core.Tracer):
            raise TypeError("max_poisson must be given when clip is traced")
        max_poisson = default_max_poisson(clip)
    kernel = build_kernel(num_prox_steps, max_proposals, max_poisson, chunk_size, prox_tolerance,
                          num_substeps)

    def init_fn(position, rng_key=None):
        flat = ravel_pytree(position)[0]
        if not isinstance(flat, jax.core.Tracer):
            _check_inverse_mass_matrix(inverse_mass_matrix, flat.shape[0])
        return init(position, logdensity_fn, rng_key, grad_fn=grad_fn)

    def step_fn(rng_key, state):
        return kernel(rng_key, state, logdensity_fn, step_size, clip, inverse_mass_matrix,
                      curvature, grad_fn=grad_fn)

    return SamplingAlgorithm(init_fn, step_fn)


fors = KernelAPI(as_top_level_api, init, build_kernel)


# ----- warmup ---------------------------------------------------------------------------------


class FORSWarmupResult(NamedTuple):
    """What :func:`fors_warmup` returns. ``scoresample.fors(logdensity_fn, **parameters)`` builds the
    tuned sampler (``parameters`` holds ``step_size``, ``inverse_mass_matrix``, ``curvature``);
    ``num_grad_evals`` counts every gradient the warmup executed (descent, Hessian columns, FORS
    steps)."""

    state: FORSState
    parameters: dict
    infos: FORSInfo
    num_grad_evals: Array


def warmup_statistic(info: FORSInfo, clip, target_w_scale) -> Array:
    """The statistic FORS warmup drives to 1/2: 2^-(w_rms / (target_w_scale B))^2.

    It decreases as the step grows, equals 1/2 when the raw estimates' RMS is ``target_w_scale`` times
    the clip level B, and is 1/2 (neutral) on a step that flipped no coin, 0 on a divergent or
    overflowing step and on a step whose prox test failed (``is_prox_rejected``: the step is too
    large for the curvature met there, so those steps pull it down). A continuous proxy of the
    clip rate: a clip is rare (about one estimate in 10^3) so the clip indicator alone gives dual
    averaging almost no signal.
    """
    ratio = info.w_rms / (clip * target_w_scale)
    stat = jnp.exp2(-(ratio**2))
    stat = jnp.where(info.num_coins > 0, stat, 0.5)
    return jnp.where(info.is_divergent | info.is_overflow | info.is_prox_rejected, 0.0, stat)


def _bb_descent(grad_logp, x0, num_steps, first_step):
    """Barzilai-Borwein gradient ascent on log pi with gradients only.

    Returns the iterate with the smallest gradient norm and the last BB step (an inverse-curvature
    scale). A step whose gradient is not finite is undone and the step halved.
    """
    g0 = grad_logp(x0)
    norm0 = jnp.sqrt(jnp.sum(g0**2))
    dtype = x0.dtype

    def body(_, c):
        x, g, step, best_x, best_norm = c
        x_new = x + step * g
        g_new = grad_logp(x_new)
        ok = all_finite(x_new) & all_finite(g_new)
        s, y = x_new - x, g_new - g  # y = -(grad V_new - grad V)
        curv = -jnp.dot(s, y)
        bb = jnp.dot(s, s) / jnp.where(curv > 0, curv, 1.0)
        step_new = jnp.where(ok & (curv > 0) & jnp.isfinite(bb), bb, 0.5 * step)
        norm = jnp.sqrt(jnp.sum(jnp.where(ok, g_new, 0.0) ** 2))
        better = ok & (norm < best_norm)
        return (jnp.where(ok, x_new, x), jnp.where(ok, g_new, g), step_new,
                jnp.where(better, x_new, best_x), jnp.where(better, norm, best_norm))

    init_carry = (x0, g0, jnp.asarray(first_step, dtype), x0,
                  jnp.where(jnp.isfinite(norm0), norm0, jnp.inf))
    _, _, step, best_x, _ = jax.lax.fori_loop(0, num_steps, body, init_carry)
    return best_x, step


def _hessian_metric(grad_logp, x, floor):
    """Inverse of the negative Hessian of log pi at x (d forward-mode passes through the gradient),
    symmetrised, with eigenvalues floored at ``floor`` times the largest (a non-convex point or a
    flat direction then still gives a positive-definite metric). None of it uses a log pi value."""
    hess = -jax.jacfwd(grad_logp)(x)
    hess = 0.5 * (hess + hess.T)
    evals, evecs = jnp.linalg.eigh(hess)
    top = jnp.max(jnp.abs(evals))
    evals = jnp.maximum(evals, floor * top)
    ok = all_finite(evals) & (top > 0)
    metric = (evecs / evals[None, :]) @ evecs.T
    return jnp.where(ok, 0.5 * (metric + metric.T), jnp.eye(x.shape[0], dtype=x.dtype)), ok


def fors_warmup(rng_key, logdensity_fn: Callable | None = None, initial_position=None,
                num_steps: int = 500, *, grad_fn: Callable | None = None,
                initial_step_size=None, clip=1.0, target_w_scale: float = 0.15,
                target_clip_rate: float = 1e-3, metric: str = "hessian", curvature=None,
                num_descent_steps: int = 50,
                max_step_size: float = 100.0, num_prox_steps: int = 1, max_proposals: int = 64,
                max_poisson: int | None = None, chunk_size: int = 1,
                prox_tolerance: float | None = 1.0, num_substeps: int = 4) -> FORSWarmupResult:
    """Tune FORS-proximal: gradient descent to the mode, a metric, then the step size.

    1. ``num_descent_steps`` Barzilai-Borwein steps on V = -log pi (gradients only) bring a far start
       near the mode: a chain with a step tuned for the typical set needs about 1/eta steps to walk
       there, and its tuning is meaningless on the way.
    2. ``metric="hessian"``: M = (-hess log pi)^-1 at that point, by ``jax.jacfwd`` of the gradient
       (d gradient-like passes; eigenvalues floored at 1e-8 of the largest), and by default
       ``curvature = 1`` (the proposal uses M^-1 as its Hessian guess). The step size then no longer
       scales with the condition number. ``metric="identity"`` keeps M = I (default curvature 0:
       the paper's kernel).
    3. ``num_steps`` FORS-proximal steps with :func:`scoresample.adaptation.dual_averaging_warmup`
       driving :func:`warmup_statistic` to 1/2: the RMS of the raw estimates is held at
       ``target_w_scale`` times B, a continuous proxy of the clip rate (a clip itself is too rare to
       steer by), while the acceptance stays near e^-B. The step is capped at ``max_step_size``
       (with an exact proposal nothing else would stop it growing). The first step size is
       1/sqrt(d) with the Hessian metric, 1/(beta_BB sqrt(d)) from the last BB step without it, or
       ``initial_step_size``.
    4. The clip rate pooled over the second half of warmup is compared with ``target_clip_rate``;
       if above, the step shrinks by (target / measured)^(1/3), at most 4-fold (the clip rate was
       measured to grow like eta^3 on the targets tried). Check ``clip_rate`` of the sampling run
       too: it must stay well below the accuracy wanted.

    Returns:
        :class:`FORSWarmupResult` ``(state, parameters, infos, num_grad_evals)``.

    Example:
        >>> res = fors_warmup(jax.random.key(0), logdensity_fn, jnp.zeros(5), num_steps=300)
        >>> algo = scoresample.fors(logdensity_fn, **res.parameters)
    """
    from scoresample.adaptation import dual_averaging_warmup

    check_key("rng_key", rng_key)
    _check_model(logdensity_fn, grad_fn)
    if initial_position is None:
        raise TypeError("initial_position is required")
    num_steps = check_int("num_steps", num_steps)
    num_descent_steps = check_int("num_descent_steps", num_descent_steps, minimum=0)
    clip = check_positive("clip", clip)
    target_w_scale = check_positive("target_w_scale", target_w_scale)
    max_step_size = check_positive("max_step_size", max_step_size)
    target_clip_rate = check_positive("target_clip_rate", target_clip_rate)
    if metric not in ("hessian", "identity"):
        raise ValueError(f"unknown metric {metric!r}; choose one of ['hessian', 'identity']")
    use_hessian = metric == "hessian"
    curvature = _check_curvature((1.0 if use_hessian else 0.0) if curvature is None else curvature)
    if initial_step_size is not None:
        initial_step_size = check_positive("initial_step_size", initial_step_size)
    if max_poisson is None:
        max_poisson = default_max_poisson(clip)
    init(initial_position, logdensity_fn, grad_fn=grad_fn)  # input checks, nothing evaluated
    kernel = build_kernel(num_prox_steps, max_proposals, max_poisson, chunk_size, prox_tolerance,
                          num_substeps)
    flat0, unravel = ravel_pytree(initial_position)
    dim = flat0.shape[0]

    @jax.jit
    def run(rng_key, flat0):
        grad_logp = _grad_flat(logdensity_fn, grad_fn, unravel)
        g0 = grad_logp(flat0)
        gnorm = jnp.sqrt(jnp.sum(g0**2))
        first = 1e-3 / jnp.where(jnp.isfinite(gnorm) & (gnorm > 0), gnorm, 1.0)
        x_start, bb_step = _bb_descent(grad_logp, flat0, num_descent_steps, first)
        if use_hessian:
            imm, _ = _hessian_metric(grad_logp, x_start, 1e-8)
            eta0 = jnp.asarray(1.0 / math.sqrt(dim), flat0.dtype)  # unit scale after the metric
        else:
            imm = None
            eta0 = bb_step / math.sqrt(dim)
        if initial_step_size is not None:
            eta0 = jnp.asarray(initial_step_size, flat0.dtype)

        def step(key, state, step_size):
            return kernel(key, state, logdensity_fn, step_size, clip, imm, curvature,
                          grad_fn=grad_fn)

        stat_fn = lambda info: warmup_statistic(info, clip, target_w_scale)
        res = dual_averaging_warmup(rng_key, step, FORSState(unravel(x_start)), eta0, num_steps,
                                    target=0.5, stat_fn=stat_fn, max_step_size=max_step_size)
        evals = (1 + num_descent_steps + (dim if use_hessian else 0)
                 + jnp.sum(res.infos.num_grad_evals))
        late = jax.tree_util.tree_map(lambda a: a[num_steps // 2:], res.infos)
        clip_rate = jnp.sum(late.num_clipped) / jnp.maximum(jnp.sum(late.num_coins), 1)
        factor = jnp.where(clip_rate > target_clip_rate,
                           jnp.maximum((target_clip_rate / jnp.maximum(clip_rate, 1e-300))
                                       ** (1.0 / 3.0), 0.25), 1.0)
        return res.state, res.step_size * factor, imm, res.infos, evals

    state, step_size, imm, infos, evals = run(rng_key, flat0)
    parameters = dict(step_size=float(step_size), inverse_mass_matrix=imm, curvature=curvature,
                      clip=clip, num_prox_steps=num_prox_steps, max_proposals=max_proposals,
                      max_poisson=max_poisson, chunk_size=chunk_size,
                      prox_tolerance=prox_tolerance, num_substeps=num_substeps)
    return FORSWarmupResult(state, parameters, infos, evals)


# =============================================================================================
# FORS-diffusion: exact reverse transition kernels on a geometric grid
# =============================================================================================


class FORSSchedule(NamedTuple):
    """The grid of FORS-diffusion in float64 numpy, in sampling order (index 0 leaves t_max).

    ``t_from[k] > t_to[k] = t_from[k + 1]``; ``alpha = exp(-(t_from - t_to))``,
    ``eta = expm1(2 (t_from - t_to))``, ``s2 = 1 - exp(-2 t_to)``, ``eta_bar = eta s2 / (eta + s2)``.
    """

    t_from: np.ndarray
    t_to: np.ndarray
    alpha: np.ndarray
    eta: np.ndarray
    s2: np.ndarray
    eta_bar: np.ndarray
    growth: float  # G: rho_{k+1} = rho_k (1 + 1/G) (the realised ratio is at most this)
    t_min: float
    t_max: float

    @property
    def num_steps(self) -> int:
        return int(self.t_from.shape[0])


def fors_schedule(delta: float, dim: int, *, intrinsic_dim: float | None = None,
                  second_moment: float | None = None, constant: float = 0.55,
                  growth: float | None = None, t_min: float | None = None,
                  t_max: float | None = None) -> FORSSchedule:
    """The geometric rho grid of FORS-diffusion, chosen from the accuracy ``delta``.

    rho = e^{2t} - 1 grows geometrically, rho_{k+1} = rho_k (1 + 1/G) (steps geometric in t near
    t_min, uniform later), with G = C (d* + log(K/delta)) log(K/delta) solved jointly with the number
    of steps K; d* = ``intrinsic_dim`` (else ``dim``). Defaults: s_{t_min}^2 = delta^2 / (d + m2) and
    t_max = 0.5 log((d + m2) / delta^2) with m2 = ``second_moment`` (default d). Everything is float64
    with expm1/log1p: eta = (rho_{k+1} - rho_k)/(1 + rho_k) exactly, never 1 - exp(-2t) by subtraction.
    """
    delta = check_positive("delta", delta)
    if delta >= 1.0:
        raise ValueError(f"delta must be < 1, got {delta}")
    dim = check_int("dim", dim)
    d_star = float(dim) if intrinsic_dim is None else check_positive("intrinsic_dim", intrinsic_dim)
    m2 = float(dim) if second_moment is None else check_positive("second_moment", second_moment)
    constant = check_positive("constant", constant)
    scale = dim + m2
    if t_min is None:
        t_min = -0.5 * math.log1p(-min(delta**2 / scale, 0.5))
    t_min = check_positive("t_min", t_min)
    if t_max is None:
        t_max = 0.5 * math.log(scale / delta**2)
    t_max = check_positive("t_max", t_max)
    if t_min >= t_max:
        raise ValueError(f"t_min must be < t_max, got t_min={t_min}, t_max={t_max}")
    log_ratio = math.log(math.expm1(2 * t_max)) - math.log(math.expm1(2 * t_min))

    if growth is None:
        num_steps = 100
        for _ in range(50):
            lk = math.log(num_steps / delta)
            g = constant * (d_star + lk) * lk
            new = max(1, math.ceil(log_ratio / math.log1p(1.0 / g)))
            if new == num_steps:
                break
            num_steps = new
        growth_value = g
    else:
        growth_value = check_positive("growth", growth)
        num_steps = max(1, math.ceil(log_ratio / math.log1p(1.0 / growth_value)))
    step_log = log_ratio / num_steps  # realised log(rho_{k+1} / rho_k) <= log1p(1/G)
    rho = math.expm1(2 * t_min) * np.exp(step_log * np.arange(num_steps + 1, dtype=np.float64))
    times = 0.5 * np.log1p(rho)
    times[0], times[-1] = t_min, t_max
    rho_lo = rho[:-1]
    eta = rho_lo * math.expm1(step_log) / (1.0 + rho_lo)
    alpha = np.exp(-0.5 * np.log1p(eta))
    s2 = rho_lo / (1.0 + rho_lo)
    eta_bar = eta * s2 / (eta + s2)
    rev = slice(None, None, -1)
    return FORSSchedule(times[1:][rev].copy(), times[:-1][rev].copy(), alpha[rev].copy(),
                        eta[rev].copy(), s2[rev].copy(), eta_bar[rev].copy(), float(growth_value),
                        float(t_min), float(t_max))


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
    eta = np.expm1(2 * gap)
    s2 = -np.expm1(-2 * t_to)
    return StepCoefficients(t_from, t_to, np.exp(-gap), eta, s2, eta * s2 / (eta + s2))


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

    num_grad_evals: Array  # int32: 1 (the score at x_{k+1}) + executed estimator evaluations
    num_rounds: Array  # int32: 1 + executed chunks (each a sequential round of batched scores)
    is_divergent: Array  # bool: a non-finite score was met
    acceptance_rate: Array  # float: is_accepted / num_proposals
    is_accepted: Array  # bool
    clip_rate: Array  # float
    num_proposals: Array  # int32
    is_overflow: Array  # bool: max_proposals ran out; the last (unaccepted) proposal was returned
    num_clipped: Array  # int32
    num_coins: Array  # int32


def build_diffusion_kernel(max_proposals: int = 64, max_poisson: int = 20, chunk_size: int = 1):
    """One FORS-diffusion step ``kernel(rng_key, x, score_fn, coeffs, clip=1.0) -> (x_new, info)``.

    From x = x_{k+1} at t_from to t_to (alpha, eta, s2, eta_bar from :class:`StepCoefficients`):

        s+ = score(x, t_from)                                   (one evaluation, reused)
        x_bar = x / alpha + alpha eta s+;  proposal N(x_bar, eta_bar I), candidate x_bar + u
        per coin: r ~ U, w, z ~ N(0, eta_bar/2 I), (a, b, a', b') = three_point_path(r),
            e = a u + (1 - a) w + b z,  e_dot = a' (u - w) + b' z,
            W = <e_dot, score(x_bar + e, t_to) + e / s2 - alpha s+>

    The target is the exact reverse kernel p_{t_to}(y) N(y; x / alpha, eta), whose log-ratio to the
    proposal has gradient score(y, t_to) + (y - x_bar)/s2 - alpha s+: it is written in the offset
    e = y - x_bar, never as a difference of two O(1) denoiser outputs times 1/s2. When the score at x
    is not finite the particle keeps x and flags ``is_divergent``; when ``max_proposals`` runs out the
    last proposal is returned and ``is_overflow`` flags it.
    """
    max_proposals = check_int("max_proposals", max_proposals)
    max_poisson = check_int("max_poisson", max_poisson)
    chunk_size = check_int("chunk_size", chunk_size)

    def kernel(rng_key, x, score_fn, coeffs: StepCoefficients, clip=1.0):
        dtype = x.dtype
        alpha, eta, s2, eta_bar = (jnp.asarray(c, dtype) for c in
                                   (coeffs.alpha, coeffs.eta, coeffs.s2, coeffs.eta_bar))
        t_from, t_to = jnp.asarray(coeffs.t_from, dtype), jnp.asarray(coeffs.t_to, dtype)
        s_plus = score_fn(x, t_from)
        x_bar = x / alpha + alpha * eta * s_plus
        is_ok = all_finite(x_bar)
        root = jnp.sqrt(eta_bar)
        root_half = jnp.sqrt(0.5 * eta_bar)
        shift = alpha * s_plus

        def propose_fn(key):
            return root * jax.random.normal(key, x.shape, dtype)

        def estimate_fn(key, u):
            dim = x.shape[0]
            xi = jax.random.normal(key, (2 * dim + 1,), dtype)  # one draw: w, z and r = Phi(xi)
            r = jax.scipy.special.ndtr(xi[2 * dim])
            w = root_half * xi[:dim]
            z = root_half * xi[dim:2 * dim]
            a, b, a_dot, b_dot = three_point_path(r)
            e = a * u + (1.0 - a) * w + b * z
            e_dot = a_dot * (u - w) + b_dot * z
            return jnp.dot(e_dot, score_fn(x_bar + e, t_to) + e / s2 - shift)

        res = fors_rejection(rng_key, propose_fn, estimate_fn, clip, max_proposals=max_proposals,
                             max_poisson=max_poisson, chunk_size=chunk_size, is_active=is_ok)
        x_new = x_bar + res.candidate
        good = is_ok & all_finite(x_new)
        x_out = jnp.where(good, x_new, x)
        moved = res.is_accepted & good
        info = FORSDiffusionInfo(
            num_grad_evals=1 + res.num_evals,
            num_rounds=1 + res.num_rounds,
            is_divergent=res.is_divergent | ~good,
            acceptance_rate=_rate(moved.astype(jnp.int32), res.num_proposals),
            is_accepted=moved,
            clip_rate=_rate(res.num_clipped, res.num_coins),
            num_proposals=res.num_proposals,
            is_overflow=res.is_overflow,
            num_clipped=res.num_clipped,
            num_coins=res.num_coins,
        )
        return x_out, info

    return kernel


def fors_diffusion_plan(score_fn, *, dim: int, energy_fn=None, delta: float = 1e-2,
                        intrinsic_dim: float | None = None, second_moment: float | None = None,
                        constant: float = 0.55, growth: float | None = None,
                        t_min: float | None = None, t_max: float | None = None, clip: float = 1.0,
                        max_proposals: int = 64, max_poisson: int | None = None,
                        chunk_size: int = 1) -> DiffusionPlan:
    """Method "fors" of :mod:`scoresample.diffusion`: FORS-diffusion with accuracy ``delta``.

    Starts at N(0, I) at t_max and applies :func:`build_diffusion_kernel` on the grid of
    :func:`fors_schedule`; the result approximates p_{t_min}. Cost per step is 1 + (about 3.4
    estimator evaluations at B = 1), and the number of steps grows like polylog(1/delta).

    Options: ``delta`` (target accuracy), ``intrinsic_dim`` (d* in G), ``second_moment`` (E|X_0|^2,
    default d), ``constant`` (C in G; smaller is cheaper, check the clip rate), ``growth`` (G itself),
    ``t_min``, ``t_max``, ``clip`` (B), ``max_proposals``, ``max_poisson``, ``chunk_size``.
    ``energy_fn`` is not used (FORS needs scores only).

    Example:
        >>> res = scoresample.diffusion.sample(key, "fors", mix.score, dim=1, num_samples=1000,
        ...                                    delta=1e-2, second_moment=4.25)
    """
    del energy_fn
    check_callable("score_fn", score_fn)
    dim = check_int("dim", dim)
    clip = check_positive("clip", clip)
    if max_poisson is None:
        max_poisson = default_max_poisson(clip)
    sched = fors_schedule(delta, dim, intrinsic_dim=intrinsic_dim, second_moment=second_moment,
                          constant=constant, growth=growth, t_min=t_min, t_max=t_max)
    kernel = build_diffusion_kernel(max_proposals, max_poisson, chunk_size)
    table = StepCoefficients(sched.t_from, sched.t_to, sched.alpha, sched.eta, sched.s2,
                             sched.eta_bar)

    def init_position(rng_key):
        return jax.random.normal(rng_key, (dim,), jnp.result_type(float))

    def init_fn(position, rng_key=None):
        del rng_key
        return DiffusionState(jnp.asarray(position), jnp.zeros((), jnp.int32), ())

    def step_fn(rng_key, state: DiffusionState):
        coeffs = StepCoefficients(*(jnp.asarray(c)[state.step] for c in table))
        x_new, info = kernel(rng_key, state.position, score_fn, coeffs, clip)
        return DiffusionState(x_new, state.step + 1, ()), info

    settings = dict(method="fors", delta=float(delta), num_steps=sched.num_steps,
                    growth=sched.growth, t_min=sched.t_min, t_max=sched.t_max, clip=clip,
                    max_proposals=max_proposals, max_poisson=max_poisson, chunk_size=chunk_size,
                    constant=constant, intrinsic_dim=intrinsic_dim, second_moment=second_moment)
    return DiffusionPlan(init_position, SamplingAlgorithm(init_fn, step_fn), sched.num_steps,
                         lambda state: state.position, settings)
