"""FORS-proximal: a gradient-only MCMC kernel for log-concave targets, ``scoresample.fors``.

For pi = exp(-V) it only calls ``jax.grad(logdensity_fn)`` (or a user's ``grad_fn``), never the
value:

    Y = X + sqrt(eta) xi;  x+ <- Y, then m times x+ <- Y - eta grad V(x+);  g = grad V(x+),
    x_hat = Y - eta g;  FORS with q = N(x_hat, eta I) and grad w(x) = g - grad V(x) returns X'.

The exact conditional pi(x | Y) is proportional to q(x) exp(w(x)), and
:func:`~scoresample.kernels.fors.rejection.fors_rejection` draws from it exactly (up to clipping).
When the prox iteration has not converged (|x_hat - x+| above ``prox_tolerance`` proposal sds, a
function of Y only) the step keeps X and moves it by a few smaller proximal steps on pi(x | Y),
which leaves pi invariant. Options: a metric (``inverse_mass_matrix``) and a curvature term in the
proposal (:func:`build_kernel`); :func:`~scoresample.kernels.fors.warmup.fors_warmup` tunes them.

Reference: Chen, Chewi, Daskalakis, Rakhlin, "High-accuracy sampling for diffusion models and
log-concave distributions", arXiv 2602.01338, 2026. See [the FORS page](../algorithms/fors.md).

Example:
    >>> algo = scoresample.fors(lambda x: -0.5 * x @ x, step_size=0.1)
    >>> state = algo.init(jnp.zeros(3))
    >>> state, info = jax.jit(algo.step)(jax.random.key(0), state)
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.base import build_sampling_algorithm
from jax.flatten_util import ravel_pytree

from scoresample.base import (
    KernelAPI,
    SamplingAlgorithm,
    check_array,
    check_callable,
    check_int,
    check_nonnegative,
    check_parameter,
    check_position,
)
from scoresample.kernels.fors.proximal_step import (
    FORSInfo,
    FORSState,
    ProximalParams,
    metric,
    proximal_functions,
)
from scoresample.kernels.fors.rejection import default_max_poisson, default_max_proposals

__all__ = ["FORSState", "FORSInfo", "init", "build_kernel", "as_top_level_api", "fors"]

Array = jax.Array


def flat_grad_fn(logdensity_fn, grad_fn, unravel):
    """grad log pi on flat vectors, from ``grad_fn`` or ``jax.grad(logdensity_fn)`` (never the value)."""
    base = grad_fn if grad_fn is not None else jax.grad(logdensity_fn)

    def fn(x_flat):
        return ravel_pytree(base(unravel(x_flat)))[0]

    return fn


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


def build_kernel(num_prox_steps: int = 1, max_proposals: int | None = None,
                 max_poisson: int | None = None, chunk_size: int = 1,
                 prox_tolerance: float | None = 1.0, num_substeps: int = 4):
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
        rescue step (after a rejection; eta_e = eta min(1/4, 1/(4 c)), c = the ratio of T's last
            two moves at Y, about eta L; 1/eta2 = 1/eta_e - 1/eta):
            Y2 = X' + sqrt(eta2) M^{1/2} xi2,  X' <- the step above (its own test, X' kept on
            failure) for pi(x | Y, Y2), centre (eta2 Y + eta Y2) / (eta + eta2), step eta_e

    kappa = 0 is the paper's proposal (x+ <- Y - eta M grad V(x+), q = N(Y - eta M g, eta M)).
    kappa = 1 takes M^-1 as a guess of the Hessian of V (a Laplace-type proposal; T is then a Newton
    step with that Hessian): on a Gaussian target with M its covariance, w is constant and any eta
    works; in general W scales with the Hessian's deviation from M^-1 instead of the Hessian itself.
    gamma has law q for every r and gamma_dot is independent of it, so E[W | x] = w(x) - E_q w. (With
    M = L L^T this is the identity-metric kernel on theta = L^-1 x.)

    The prox test guards against a diverging fixed-point iteration (eta L >> 1, where the clipped
    FORS would accept far-away proposals); the rescue steps let a chain leave a region where every Y
    fails it. Both decide from Y and fresh randomness only, never from X, so pi stays invariant:
    the argument is on [the FORS page](../algorithms/fors.md#prox-test-invariance). With
    num_prox_steps = 0 there is no iteration to test; r is reported and nothing is rejected.

    Args:
        num_prox_steps: iterations of T (m). The proposal's centre only has to be accurate to
            O(sqrt(eta)); on the targets measured m = 1 gave the same estimate spread as m = 3 for
            two fewer gradients per step.
        max_proposals, max_poisson: see
            :func:`~scoresample.kernels.fors.rejection.fors_rejection` (defaults from ``clip``:
            running out has probability below 1e-12 per step; a concrete ``clip`` is needed).
            Running out flags ``is_overflow`` and ``is_divergent`` and keeps X.
        chunk_size: must be 1: each unit of the step evaluates one gradient (the machine form,
            :mod:`~scoresample.kernels.fors.proximal_step`).
        prox_tolerance: reject the step when the last prox iteration moved the centre by more than
            this many proposal sds (default 1: beyond it the estimates are O(1) from the centre's
            error alone); None never rejects (the paper's kernel). May be traced.
        num_substeps: rescue steps on pi(x | Y) after a rejection (0: just keep X). They cost
            gradients only on rejected steps (counted in ``num_grad_evals``). May be traced.

    The step is :mod:`~scoresample.kernels.fors.proximal_step`'s state machine run to its end
    (one gradient per unit), so :func:`~scoresample.kernels.fors.proximal_step.proximal_machine`
    gives the same draws for many chains on :mod:`scoresample.autobatch`.

    Returns:
        ``kernel``, pure and single-particle; its info is :class:`FORSInfo`.

    Example:
        >>> kernel = build_kernel(num_prox_steps=1)
        >>> state = init(jnp.zeros(3), logdensity_fn)
        >>> state, info = kernel(jax.random.key(0), state, logdensity_fn, 0.1)
    """
    num_prox_steps = check_int("num_prox_steps", num_prox_steps, minimum=0)
    if max_proposals is not None:
        max_proposals = check_int("max_proposals", max_proposals)
    if max_poisson is not None:
        max_poisson = check_int("max_poisson", max_poisson)
    if check_int("chunk_size", chunk_size) != 1:
        raise ValueError(f"chunk_size must be 1 (one gradient per unit of work), got {chunk_size}")
    if not isinstance(num_substeps, jax.core.Tracer):
        num_substeps = check_int("num_substeps", num_substeps, minimum=0)
    if prox_tolerance is not None:
        prox_tolerance = check_parameter("prox_tolerance", prox_tolerance)
    is_tested = prox_tolerance is not None and num_prox_steps > 0

    def budgets(clip):
        if (max_proposals is None or max_poisson is None) and isinstance(clip, jax.core.Tracer):
            raise TypeError("max_proposals and max_poisson must be given when clip is traced")
        return (default_max_proposals(clip) if max_proposals is None else max_proposals,
                default_max_poisson(clip) if max_poisson is None else max_poisson)

    def kernel(rng_key, state: FORSState, logdensity_fn, step_size, clip=1.0,
               inverse_mass_matrix=None, curvature=0.0, *, grad_fn=None):
        x, unravel = ravel_pytree(state.position)
        grad_logp = flat_grad_fn(logdensity_fn, grad_fn, unravel)
        dtype = x.dtype
        m_prop, m_pois = budgets(clip)
        begin, query, advance = proximal_functions(
            num_prox_steps=num_prox_steps, max_proposals=m_prop, max_poisson=m_pois,
            prox_tolerance=prox_tolerance, num_substeps=num_substeps, is_tested=is_tested)
        kp = ProximalParams(jnp.asarray(step_size, dtype), clip,
                            metric(inverse_mass_matrix, dtype), jnp.asarray(curvature, dtype))

        def unit(work):
            point, aux = query(kp, work, x)
            return advance(kp, work, x, aux, grad_logp(point))

        _, x_new, _, info = jax.lax.while_loop(lambda c: ~c[2], lambda c: unit(c[0]),
                                               unit(begin(rng_key, x)))
        return FORSState(unravel(x_new)), info

    return kernel


def check_curvature(value):
    """``curvature`` must be in [0, 1] (traced values pass unchecked)."""
    if isinstance(value, jax.core.Tracer):
        return value
    value = check_nonnegative("curvature", float(value) if isinstance(value, jax.Array) else value)
    if value > 1.0:
        raise ValueError(f"curvature must be in [0, 1], got {value}")
    return value


def check_model(logdensity_fn, grad_fn):
    """Exactly one of ``logdensity_fn`` and ``grad_fn`` is given, and it is callable."""
    if (logdensity_fn is None) == (grad_fn is None):
        raise TypeError("give exactly one of logdensity_fn and grad_fn")
    if grad_fn is not None:
        check_callable("grad_fn", grad_fn)
    else:
        check_callable("logdensity_fn", logdensity_fn)


def as_top_level_api(logdensity_fn: Callable | None = None, step_size=None, clip=1.0,
                     inverse_mass_matrix=None, curvature=0.0, *, grad_fn: Callable | None = None,
                     num_prox_steps: int = 1, max_proposals: int | None = None,
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
        max_proposals: proposals per step before giving up (the chain then stays, flagged
            ``is_overflow`` and ``is_divergent``; default: running out has probability below
            1e-12 per step, :func:`default_max_proposals`).
        max_poisson: maximum coins per proposal (default: P(Poisson(2B) > max) < 1e-12).
        chunk_size: must be 1 (one gradient per unit of work).
        prox_tolerance: keep X when the last prox iteration moved the proposal's centre by more
            than this many proposal sds (a diverging prox; see :func:`build_kernel`); None never
            rejects.
        num_substeps: after a rejection, this many smaller proximal steps on pi(x | Y) (0: keep X).

    Returns:
        A ``SamplingAlgorithm`` with ``init(position, rng_key=None)`` and ``step(rng_key, state)``;
        infos are :class:`FORSInfo`.

    Example:
        >>> algo = scoresample.fors(lambda x: -0.5 * x @ x, step_size=0.1)
        >>> state = algo.init(jnp.zeros(3))
        >>> state, info = jax.jit(algo.step)(jax.random.key(0), state)
    """
    check_model(logdensity_fn, grad_fn)
    if step_size is None:
        raise TypeError("step_size is required")
    step_size = check_parameter("step_size", step_size)
    clip = check_parameter("clip", clip)
    inverse_mass_matrix = _check_inverse_mass_matrix(inverse_mass_matrix)
    curvature = check_curvature(curvature)
    if max_poisson is None or max_proposals is None:
        if isinstance(clip, jax.core.Tracer):
            raise TypeError("max_proposals and max_poisson must be given when clip is traced")
        max_poisson = default_max_poisson(clip) if max_poisson is None else max_poisson
        max_proposals = default_max_proposals(clip) if max_proposals is None else max_proposals
    kernel = build_kernel(num_prox_steps, max_proposals, max_poisson, chunk_size, prox_tolerance,
                          num_substeps)

    def init_fn(position, logdensity_fn):
        flat = ravel_pytree(position)[0]
        if not isinstance(flat, jax.core.Tracer):
            _check_inverse_mass_matrix(inverse_mass_matrix, flat.shape[0])
        return init(position, logdensity_fn, grad_fn=grad_fn)

    return build_sampling_algorithm(functools.partial(kernel, grad_fn=grad_fn), init_fn,
                                    logdensity_fn,
                                    kernel_args=(step_size, clip, inverse_mass_matrix, curvature))


fors = KernelAPI(as_top_level_api, init, build_kernel)
