"""One FORS-proximal step as a state machine of one-gradient units.

The step of :func:`scoresample.kernels.fors.proximal.build_kernel` (Y = X + sqrt(eta) M^{1/2} xi,
a few prox iterations, FORS on pi(x | Y), rescue substeps after a failed prox test) cut into units
that each evaluate the gradient once: "one prox iteration", "the gradient at x+", "one coin", and
the same inside every rescue substep. :func:`proximal_functions` gives the units
(``begin``/``query``/``advance``); the kernel runs them to the end of a step, and
:func:`proximal_machine` hands them to :mod:`scoresample.autobatch` for many chains.

Randomness is keyed by the step, the level (0 for the step on pi(x | Y), l for rescue substep l),
the proposal and the coin: proposal p of level l uses ``fold_in(step_key, 2^21 l + 2 p)`` and its
coin c ``fold_in(fold_in(step_key, 2^21 l + 2 p + 1), c)``; level l draws its Y from
``fold_in(step_key, 2^30 + l)``.
The math and the invariance argument are on [the FORS page](../algorithms/fors.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from scoresample.autobatch import Machine
from scoresample.base import all_finite
from scoresample.kernels.fors.rejection import (
    RejectionState,
    default_max_poisson,
    default_max_proposals,
    poisson_table,
    safe_rate,
    start_proposal,
    take_coin,
    unit_draws,
)

__all__ = ["FORSState", "FORSInfo", "Metric", "metric", "ProximalParams", "ProximalWork",
           "proximal_functions", "proximal_machine", "chain_machine", "KERNEL_OPTIONS"]

Array = jax.Array

#: options of :func:`~scoresample.kernels.fors.proximal.build_kernel` that the tuning passes through
KERNEL_OPTIONS = ("num_prox_steps", "max_proposals", "max_poisson", "chunk_size", "prox_tolerance",
                  "num_substeps")

Y_FOLD = 2**30  # level l draws its Y from fold_in(step_key, Y_FOLD + l)
LEVEL_STRIDE = 2**21  # proposal p of level l: fold_in(step_key, LEVEL_STRIDE l + 2 p)


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
    is_divergent: Array  # bool: a non-finite gradient was met, or a budget ran out (is_overflow)
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


class Metric(NamedTuple):
    """The metric M of FORS-proximal as arrays: ``kind`` 0 identity, 1 diagonal, 2 dense."""

    matrix: Array  # M: (), (d,) or (d, d)
    factor: Array  # M^{1/2}: (), sqrt of the diagonal, or the Cholesky factor


def metric(inverse_mass_matrix, dtype) -> Metric:
    """M = ``inverse_mass_matrix`` (None: identity, a vector: diagonal, a matrix: dense)."""
    if inverse_mass_matrix is None:
        one = jnp.ones((), dtype)
        return Metric(one, one)
    m = jnp.asarray(inverse_mass_matrix, dtype)
    return Metric(m, jnp.sqrt(m) if m.ndim == 1 else jnp.linalg.cholesky(m))


def _apply(met: Metric):
    """``(v -> M v, v -> M^-1 v, xi -> M^{1/2} xi)``; ``blackjax.mcmc.metrics`` gives the same
    M v and M^{1/2} xi bit for bit but no M^-1 v (built from its two M^{-1/2} scalings it changes
    the last bits, and the draws)."""
    if met.matrix.ndim < 2:
        return (lambda v: met.matrix * v), (lambda v: v / met.matrix), (lambda xi: met.factor * xi)
    return ((lambda v: met.matrix @ v),
            (lambda v: jax.scipy.linalg.cho_solve((met.factor, True), v)),
            (lambda xi: met.factor @ xi))


class ProximalParams(NamedTuple):
    """The numeric parameters of one step (any may be traced)."""

    step_size: Array  # eta
    clip: Array  # B
    metric: Metric
    curvature: Array  # kappa


class ProximalWork(NamedTuple):
    """A chain's place inside one FORS-proximal step (between two gradient evaluations)."""

    step_key: Array
    level: Array  # int32: 0 the step on pi(x | Y), l >= 1 rescue substep l
    is_level_start: Array  # bool: the next unit draws this level's Y
    is_coin: Array  # bool: the next unit is a coin (else a prox iteration or the gradient at x+)
    prox_count: Array  # int32: prox iterations done at this level
    y: Array  # shape=(d,): the centre of this level's restricted Gaussian
    y_main: Array  # shape=(d,): the step's Y (level 0)
    eta: Array  # this level's step size
    x_keep: Array  # shape=(d,): the position this level keeps on failure
    x_prev: Array  # shape=(d,): the prox iterate before x_cur
    x_cur: Array  # shape=(d,): the current prox iterate (x+ once prox_count = m)
    x_hat: Array  # shape=(d,): the proposal's centre
    grad_v: Array  # shape=(d,): grad V(x+)
    is_ok: Array  # bool: this level runs FORS (finite, prox test passed)
    rejection: RejectionState  # candidate: the offset u from x_hat, shape=(d,)
    coin_key: Array
    ratio: Array  # the contraction of T measured at Y (level 0), for the rescue step size
    residual: Array  # level 0's prox residual
    is_rejected: Array  # bool: level 0's prox test failed
    counts: dict  # num_grad_evals, num_accepted, num_proposals, num_clipped, num_coins,
    # num_substeps (int32), sum_sq (float), is_divergent, is_overflow (bool)


def _count_zeros(dtype):
    zero = jnp.zeros((), jnp.int32)
    no = jnp.zeros((), bool)
    return dict(num_grad_evals=zero, num_accepted=zero, num_proposals=zero, num_clipped=zero,
                num_coins=zero, sum_sq=jnp.zeros((), dtype), is_divergent=no, is_overflow=no,
                num_substeps=zero)


def proximal_functions(*, num_prox_steps: int, max_proposals: int, max_poisson: int,
                       prox_tolerance, num_substeps, is_tested: bool):
    """``(begin, query, advance)`` of one FORS-proximal step (see the module docstring).

    ``begin(step_key, x) -> work``; ``query(kp, work, x) -> (point, aux)`` (the gradient of
    log pi is then evaluated at ``point``); ``advance(kp, work, x, aux, grad) -> (work, x_new,
    is_done, info)`` with ``kp`` a :class:`ProximalParams`. ``num_substeps`` may be traced.
    """
    m = num_prox_steps
    half_pi = 0.5 * math.pi

    def begin(step_key, x):
        dtype = x.dtype
        zero = jnp.zeros_like(x)
        rejection = start_proposal(None, zero, jnp.zeros((), dtype),
                                   jnp.ones((max_poisson + 1,), dtype))
        no = jnp.zeros((), bool)
        scalar = jnp.zeros((), dtype)
        return ProximalWork(step_key, jnp.zeros((), jnp.int32), jnp.ones((), bool), no,
                            jnp.zeros((), jnp.int32), zero, zero, scalar, zero, zero, zero, zero,
                            zero, no, rejection, step_key, scalar, scalar, no,
                            _count_zeros(dtype))

    def query(kp: ProximalParams, work: ProximalWork, x):
        dtype = x.dtype
        dim = x.shape[0]
        _, _, root_m = _apply(kp.metric)
        eta = jnp.asarray(kp.step_size, dtype)
        kappa = jnp.asarray(kp.curvature, dtype)
        # this unit's coin, the proposal drawn next (at x+ or after a rejection), the level's Y
        index = LEVEL_STRIDE * work.level + 2 * jnp.where(work.is_coin,
                                                         work.rejection.num_proposals, 0)
        keys, v = unit_draws(
            jnp.stack([work.coin_key, work.step_key, work.step_key, work.step_key]),
            jnp.stack([work.rejection.coin, index, Y_FOLD + work.level, index + 1]), dim + 2,
            dtype, num_drawn=3)
        normals = math.sqrt(2.0) * jax.scipy.special.erfinv(v[:, :dim])
        uniforms = 0.5 * (v[:, dim:] + 1.0)
        # barriers keep XLA from recomputing the draws in each of their consumers
        normals, uniforms = jax.lax.optimization_barrier((normals, uniforms))
        # a level's start: its centre y (level 0: Y = X + sqrt(eta) xi; level l: the restricted
        # Gaussian of pi(x | Y, Y2) with Y2 = X' + sqrt(eta2) xi, centre (eta2 Y + eta Y2) / (...))
        shrink = jnp.clip(0.25 / jnp.where(jnp.isfinite(work.ratio) & (work.ratio > 0),
                                           work.ratio, 1e4), 1e-4, 0.25)
        eta_e = eta * shrink
        eta2 = eta * eta_e / (eta - eta_e)
        main = work.level == 0
        noise = root_m(normals[2])
        y_new = jnp.where(main, x + jnp.sqrt(eta) * noise,
                          (eta2 * work.y_main + eta * (work.x_keep + jnp.sqrt(eta2) * noise))
                          / (eta + eta2))
        eta_level = jnp.where(main, eta, eta_e)
        start = work.is_level_start
        y = jnp.where(start, y_new, work.y)
        eta_r = jnp.where(start, eta_level, work.eta)
        x_cur = jnp.where(start, y_new, work.x_cur)
        # a coin's point on the path gamma_r from an independent proposal draw to the candidate
        denom = 1.0 + kappa * eta_r
        root = jnp.sqrt(eta_r / denom)
        a = jnp.sin(half_pi * uniforms[0, 0])
        b = jnp.cos(half_pi * uniforms[0, 0])
        z = root * root_m(normals[0])
        u = work.rejection.candidate
        offset = a * u + b * z
        gamma_dot = half_pi * (b * u - a * z)
        point = jnp.where(work.is_coin, work.x_hat + offset, x_cur)
        proposal = (root * root_m(normals[1]), uniforms[1, 0], keys[3])
        return point, (y, eta_r, x_cur, offset, gamma_dot, uniforms[0, 1], proposal)

    def advance(kp: ProximalParams, work: ProximalWork, x, aux, grad):
        dtype = x.dtype
        apply_m, apply_m_inv, _ = _apply(kp.metric)
        clip = jnp.asarray(kp.clip, dtype)
        kappa = jnp.asarray(kp.curvature, dtype)
        cdf = poisson_table(kp.clip, max_poisson, dtype)
        y, eta_r, x_cur, offset, gamma_dot, uniform, proposal = aux
        candidate, uniform_j, next_coin_key = proposal
        denom = 1.0 + kappa * eta_r
        is_coin = work.is_coin
        is_iter = ~is_coin & (work.prox_count < m)
        is_grad = ~is_coin & (work.prox_count >= m)

        def m_norm(v):  # |v|_{M^-1}
            return jnp.sqrt(jnp.maximum(jnp.sum(v * apply_m_inv(v)), 0.0))

        # a prox iteration: x_cur <- T(x_cur)
        x_next = (y + kappa * eta_r * x_cur + eta_r * apply_m(grad)) / denom
        # the gradient at x+ = x_cur: the proposal's centre and the prox test (functions of y)
        grad_v_new = -grad
        x_hat_new = (y + kappa * eta_r * x_cur - eta_r * apply_m(grad_v_new)) / denom
        is_finite = all_finite(x_hat_new) & all_finite(grad_v_new)
        moved_last = m_norm(jnp.where(is_finite, x_hat_new - x_cur, 0.0))
        residual = moved_last * jnp.sqrt(denom / eta_r)
        residual = jnp.where(is_finite & jnp.isfinite(residual), residual, jnp.inf)
        x_before = jnp.where(work.is_level_start, x_cur, work.x_prev)
        moved_before = m_norm(jnp.where(is_finite, x_cur - x_before, 0.0))
        ratio = jnp.where(moved_before > 0, moved_last / jnp.where(moved_before > 0,
                                                                      moved_before, 1.0), 0.0)
        rejected = (is_finite & ~(residual <= prox_tolerance) if is_tested
                    else jnp.zeros((), bool))
        ok_new = is_finite & ~rejected
        # a coin: W = <gamma_dot, grad w(gamma)>, grad w = g - grad V(gamma) + kappa M^-1 (...)
        grad_w = work.grad_v + grad + kappa * apply_m_inv((work.x_hat - work.x_cur) + offset)
        w_raw = jnp.sum(gamma_dot * grad_w)  # a batched dot of small vectors is slow
        w_raw, x_next, x_hat_new, residual, ratio = jax.lax.optimization_barrier(
            (w_raw, x_next, x_hat_new, residual, ratio))
        coined, needs = take_coin(work.rejection, w_raw, uniform, clip, max_poisson=max_poisson,
                                  max_proposals=max_proposals, where=is_coin)
        first = start_proposal(None, candidate, uniform_j, cdf)
        first = first._replace(is_done=first.is_done | ~ok_new, is_accepted=first.is_accepted
                               & ok_new)
        later = start_proposal(coined, candidate, uniform_j, cdf, where=needs)
        rejection = jax.tree_util.tree_map(lambda a, b: jnp.where(is_grad, a, b), first, later)
        coin_key = jnp.where(is_grad | (is_coin & needs), next_coin_key, work.coin_key)
        x_hat = jnp.where(is_grad, x_hat_new, work.x_hat)
        grad_v = jnp.where(is_grad, grad_v_new, work.grad_v)
        is_ok = jnp.where(is_grad, ok_new, work.is_ok)
        x_cur_out = jnp.where(is_iter, x_next, x_cur)
        x_prev = jnp.where(is_iter, x_cur, x_before)
        prox_count = work.prox_count + is_iter.astype(jnp.int32)
        # the level ends when its FORS ends (or when it runs none)
        level_done = (is_grad | is_coin) & rejection.is_done
        x_new = x_hat + rejection.candidate
        moved = (rejection.is_accepted & ~rejection.is_divergent & ~rejection.is_overflow
                 & is_ok & all_finite(x_new))
        x_level = jnp.where(moved, x_new, work.x_keep)
        c = work.counts
        add = lambda v: jnp.where(level_done, v, 0)
        counts = dict(
            num_grad_evals=c["num_grad_evals"] + 1,
            num_accepted=c["num_accepted"] + add(moved.astype(jnp.int32)),
            num_proposals=c["num_proposals"] + add(jnp.where(is_ok, rejection.num_proposals, 0)),
            num_clipped=c["num_clipped"] + add(rejection.num_clipped),
            num_coins=c["num_coins"] + add(rejection.num_coins),
            sum_sq=c["sum_sq"] + add(rejection.sum_sq),
            is_divergent=c["is_divergent"] | (level_done & (
            rejection.is_divergent | ~jnp.where(is_grad, is_finite, all_finite(work.x_hat)))),
            is_overflow=c["is_overflow"] | (level_done & rejection.is_overflow),
            num_substeps=c["num_substeps"] + (level_done & (work.level > 0)).astype(jnp.int32))
        main = work.level == 0
        main_done = level_done & main
        residual0 = jnp.where(main & is_grad, residual, work.residual)
        rejected0 = jnp.where(main_done, jnp.where(is_grad, rejected, False), work.is_rejected)
        ratio0 = jnp.where(main & is_grad, ratio, work.ratio)
        todo = jnp.where(rejected0, num_substeps, 0)
        next_level = work.level + 1
        go_on = level_done & (next_level <= todo)
        step_done = level_done & ~go_on
        new = ProximalWork(
            work.step_key, jnp.where(go_on, next_level, work.level), go_on,
            ~level_done & (is_grad | is_coin) & ~rejection.is_done,
            jnp.where(go_on, 0, prox_count), y, jnp.where(main & work.is_level_start, y,
                                                          work.y_main),
            eta_r, jnp.where(level_done, x_level, jnp.where(work.is_level_start & main, x,
                                                            work.x_keep)),
            x_prev, x_cur_out, x_hat, grad_v, is_ok, rejection, coin_key, ratio0, residual0,
            rejected0, counts)
        info = FORSInfo(
            num_grad_evals=counts["num_grad_evals"],
            acceptance_rate=safe_rate(counts["num_accepted"], counts["num_proposals"]),
            is_accepted=counts["num_accepted"] > 0,
            is_divergent=counts["is_divergent"] | counts["is_overflow"],
            clip_rate=safe_rate(counts["num_clipped"], counts["num_coins"]),
            num_proposals=counts["num_proposals"], is_overflow=counts["is_overflow"],
            num_clipped=counts["num_clipped"], num_coins=counts["num_coins"],
            w_rms=jnp.sqrt(safe_rate(counts["sum_sq"], counts["num_coins"])),
            num_rounds=counts["num_grad_evals"], prox_residual=residual0,
            is_prox_rejected=rejected0, num_substeps=counts["num_substeps"])
        return new, jnp.where(step_done, x_level, x), step_done, info

    return begin, query, advance


def proximal_machine(grad_fn: Callable, params, *, num_steps: int, positions, step_size,
                     clip=1.0, inverse_mass_matrix=None, curvature=0.0, num_prox_steps: int = 1,
                     max_proposals: int | None = None, max_poisson: int | None = None,
                     chunk_size: int = 1, prox_tolerance=1.0, num_substeps: int = 4,
                     position_limit=None) -> Machine:
    """FORS-proximal chains as a :class:`~scoresample.autobatch.Machine`.

    Chain i starts at ``positions[i]`` (flat), uses the step size ``step_size[i]`` and the
    gradient ``grad_fn(params_i, x)`` of its log-density (``params_i`` the i-th slice of
    ``params`` along the leading axis, e.g. a preconditioner); the other options are those of
    :func:`~scoresample.kernels.fors.proximal.build_kernel`, with the same defaults. A step whose
    new position is not finite or leaves ``[-position_limit, position_limit]`` keeps the old one
    and sets the carry's ``bad`` flag (``safe_step``'s rule). The carry is
    ``{"x", "index", "bad"}``.
    """
    if chunk_size != 1:
        raise ValueError(f"chunk_size must be 1 (one gradient per unit of work), got {chunk_size}")
    is_tested = prox_tolerance is not None and num_prox_steps > 0
    begin, query, advance = proximal_functions(
        num_prox_steps=num_prox_steps,
        max_proposals=default_max_proposals(clip) if max_proposals is None else max_proposals,
        max_poisson=default_max_poisson(clip) if max_poisson is None else max_poisson,
        prox_tolerance=prox_tolerance, num_substeps=num_substeps, is_tested=is_tested)
    dtype = jnp.asarray(positions).dtype
    data = dict(params=params, positions=jnp.asarray(positions),
                step_size=jnp.asarray(step_size, dtype), clip=jnp.asarray(clip, dtype),
                metric=metric(inverse_mass_matrix, dtype),
                curvature=jnp.asarray(curvature, dtype))

    def kernel_params(data, index):
        return ProximalParams(data["step_size"][index], data["clip"], data["metric"],
                              data["curvature"])

    def init(data, key, index):
        del key
        return dict(x=data["positions"][index], index=jnp.asarray(index, jnp.int32),
                    bad=jnp.zeros((), bool))

    def begin_m(data, step_key, carry, step):
        del data, step
        return begin(step_key, carry["x"])

    def query_m(data, work, carry, step):
        point, aux = query(kernel_params(data, carry["index"]), work, carry["x"])
        return (point, carry["index"]), aux

    def evaluate(data, args):
        point, index = args
        params_i = jax.tree_util.tree_map(lambda a: a[index], data["params"])
        return grad_fn(params_i, point)

    def advance_m(data, work, carry, step, aux, grad):
        work, x_new, done, info = advance(kernel_params(data, carry["index"]), work, carry["x"],
                                          aux, grad)
        ok = all_finite(x_new)
        if position_limit is not None:
            ok = ok & (jnp.max(jnp.abs(x_new)) <= position_limit)
        return work, dict(x=jnp.where(ok, x_new, carry["x"]), index=carry["index"],
                          bad=~ok), done, info

    return Machine(init, begin_m, query_m, evaluate, advance_m, data, num_steps, num_steps)


def chain_machine(logdensity_fn: Callable, to_x: Callable, params, positions, step_size,
                  options: dict, *, num_steps: int, position_limit=None) -> Machine:
    """The FORS-proximal chains of :func:`scoresample.sample` as a machine.

    Chain i samples z with log-density ``logdensity_fn(to_x(FORSState(z), params_i))`` (its
    preconditioned scale; only gradients are taken), from ``positions[i]`` with
    ``step_size[i]``. ``options`` are the method's options: ``clip``, ``curvature`` and the
    kernel's (those of :func:`~scoresample.kernels.fors.proximal.build_kernel`); tuning-only
    options are ignored.
    """
    def grad_fn(params_i, z):
        return jax.grad(lambda zz: logdensity_fn(to_x(FORSState(zz), params_i)))(z)

    kernel = {k: options[k] for k in KERNEL_OPTIONS if options.get(k) is not None}
    return proximal_machine(grad_fn, params, num_steps=num_steps, positions=positions,
                            step_size=step_size, clip=options.get("clip", 1.0),
                            curvature=options.get("curvature", 0.0),
                            position_limit=position_limit, **kernel)
