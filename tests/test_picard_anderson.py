"""Tests of the Picard accelerations: triangular Anderson (ParaTAA) and the coarse first guess.

Exactness (K = M iterations, or tau = 0 for ParaDiGMS, equal the sequential sampler) with the
acceleration on, counts checked against a host-side count of the evaluations that ran, causality
of the Anderson step, and the plain iteration kept reachable with ``acceleration=None``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresample import diffusion, processes, targets
from scoresample.kernels import picard
from scoresample.kernels.picard import anderson

MIX = targets.four_modes_2d()


def _counting(score_fn, calls):
    def counted(x, t):
        jax.debug.callback(lambda _: calls.__setitem__(0, calls[0] + 1), t)
        return score_fn(x, t)

    return counted


@pytest.mark.parametrize("method", ["picard-sde", "picard-ode"])
@pytest.mark.parametrize("options", [dict(memory=3), dict(memory=2, coarse_steps=3)])
def test_accelerated_picard_with_K_equal_M_reproduces_sequential(method, options):
    opts = dict(dim=2, num_samples=3, num_steps=24, block_sizes=(8, 6, 6, 4))
    key = jax.random.key(11)
    seq = diffusion.sample(key, method, MIX.score, sequential=True, **opts)
    par = diffusion.sample(key, method, MIX.score, num_iterations=8, acceleration="anderson",
                           **options, **opts)
    np.testing.assert_allclose(par.samples, seq.samples, rtol=0, atol=1e-10)
    coarse = options.get("coarse_steps", 0)
    assert par.rounds == 4 * (8 + coarse) and par.nfe == 4 * (8 * 8 + coarse)


def test_accelerated_paradigms_with_zero_tolerance_reproduces_sequential():
    opts = dict(dim=2, num_samples=4, num_steps=30, window=7)
    key = jax.random.key(4)
    seq = diffusion.sample(key, "paradigms", MIX.score, sequential=True, **opts)
    par = diffusion.sample(key, "paradigms", MIX.score, tol=0.0, memory=3, **opts)
    np.testing.assert_allclose(par.samples, seq.samples, rtol=0, atol=1e-10)
    assert np.all(np.asarray(par.info.num_rounds) <= 30)


@pytest.mark.parametrize("method, options, width", [
    ("picard-sde", dict(num_blocks=3, tol=1e-4), 8),
    ("picard-sde", dict(num_blocks=3, tol=1e-4, coarse_steps=2), 8),
    ("picard-ode", dict(num_blocks=2, tol=1e-4), 12),
    ("paradigms", dict(window=6, tol=1e-3), 6),
])
def test_counts_with_acceleration_equal_what_ran(method, options, width):
    """nfe and rounds against a host callback that counts every evaluated point and particle."""
    calls = [0]
    n = 5
    res = diffusion.sample(jax.random.key(3), method, _counting(MIX.score, calls), dim=2,
                           num_samples=n, num_steps=24, per_particle_info=True, **options)
    coarse = options.get("coarse_steps", 0)
    rounds = np.asarray(res.info.num_rounds)  # (steps, particles)
    assert res.rounds == int(np.sum(rounds.max(axis=1)))
    num_steps = rounds.shape[0]
    executed = width * (res.rounds - coarse * num_steps) + coarse * num_steps
    assert res.nfe == executed == calls[0] / n
    needed = np.asarray(res.info.num_grad_evals)
    np.testing.assert_array_equal(needed, width * (rounds - coarse) + coarse)


def test_plain_iteration_is_reachable_and_unchanged():
    """acceleration=None runs the plain Picard iteration: K iterations of Y <- G(Y)."""
    ts = processes.time_grid(16, 1e-3, 3.0, "log-snr")
    a_coef, b_coef, c_coef = picard.step_coefficients(ts)
    eval_fn = picard.evaluation_fn(MIX.score, "denoiser")
    times, a_coef, b_coef = jnp.asarray(ts[:-1]), jnp.asarray(a_coef), jnp.asarray(b_coef)
    noise = jnp.asarray(c_coef)[:, None] * jax.random.normal(jax.random.key(0), (16, 2))
    y0 = jnp.array([0.3, -0.7])
    path = jnp.broadcast_to(y0, (16, 2))
    for _ in range(3):
        points = jnp.concatenate([y0[None], path[:-1]])
        values = jax.vmap(eval_fn)(points, times)
        path = picard.affine_prefix(a_coef, b_coef[:, None] * values + noise, y0)
    got, rounds, _ = picard.picard_block(eval_fn, y0, times, a_coef, b_coef, noise,
                                         num_iterations=3, memory=0)
    np.testing.assert_allclose(got, path, rtol=0, atol=1e-14)
    assert int(rounds) == 3
    plan = picard.picard_sde_plan(MIX.score, dim=2, acceleration=None)
    assert plan.settings["memory"] == 0


def test_anderson_update_is_causal_and_exact_on_a_linear_map():
    rng = np.random.default_rng(0)
    num_points, dim, memory = 12, 3, 2
    plain = rng.standard_normal((num_points, dim))
    residual = rng.standard_normal((num_points, dim))
    d_x = rng.standard_normal((memory, num_points, dim))
    d_r = rng.standard_normal((memory, num_points, dim))
    valid = jnp.full(num_points, memory)
    accelerate = jnp.ones(num_points, bool)
    out = anderson.anderson_update(plain, residual, d_x, d_r, valid, accelerate)
    # changing the residuals of the later points changes nothing before them
    residual2, d_r2 = residual.copy(), d_r.copy()
    residual2[7:] += 5.0
    d_r2[:, 7:] -= 3.0
    out2 = anderson.anderson_update(plain, residual2, d_x, d_r2, valid, accelerate)
    np.testing.assert_allclose(out2[:7], out[:7], rtol=0, atol=1e-14)
    assert not np.allclose(out2[7:], out[7:])
    # points not accelerated (or without history) take the plain update
    mask = jnp.arange(num_points) >= 5
    out3 = anderson.anderson_update(plain, residual, d_x, d_r, valid, mask)
    np.testing.assert_array_equal(out3[:5], plain[:5])
    out4 = anderson.anderson_update(plain, residual, d_x, d_r, jnp.zeros(num_points, int),
                                    accelerate)
    np.testing.assert_array_equal(out4, plain)


def test_anderson_beats_plain_on_gaussian_data():
    """Gaussian data make the Picard map affine: there Anderson must converge faster."""
    gauss = targets.Gaussian(np.array([1.0, -2.0]), np.array([[2.0, 0.9], [0.9, 0.6]]))
    ts = processes.time_grid(100, 1e-3, 5.0, "log-snr")
    a_coef, b_coef, _ = picard.step_coefficients(ts, ode=True)
    eval_fn = picard.evaluation_fn(gauss.score, "denoiser")
    args = (jnp.asarray(ts[:-1]), jnp.asarray(a_coef), jnp.asarray(b_coef), jnp.zeros((100, 2)))
    y0 = jnp.array([0.5, 1.5])
    want = picard.sequential_block(eval_fn, y0, *args)[-1]
    errors = {}
    for memory in (0, 2):
        got, _, _ = jax.jit(lambda y, m=memory: picard.picard_block(
            eval_fn, y, *args, num_iterations=8, memory=m))(y0)
        errors[memory] = float(jnp.max(jnp.abs(got[-1] - want)))
    assert errors[2] < errors[0] / 10, errors


def _never_called(x, t):
    raise AssertionError("score_fn must not be traced before the options are checked")


@pytest.mark.parametrize("plan_fn, options, error", [
    (picard.picard_sde_plan, dict(acceleration="newton"), ValueError),
    (picard.picard_sde_plan, dict(acceleration=None, memory=2), ValueError),
    (picard.picard_sde_plan, dict(memory=0), ValueError),
    (picard.picard_sde_plan, dict(memory=1.5), TypeError),
    (picard.picard_ode_plan, dict(coarse_steps=-1), ValueError),
    (picard.picard_ode_plan, dict(num_steps=10, coarse_steps=11), ValueError),
    (picard.paradigms_plan, dict(acceleration="x"), ValueError),
])
def test_bad_acceleration_options_raise_before_tracing(plan_fn, options, error):
    with pytest.raises(error):
        plan_fn(_never_called, dim=2, **options)
