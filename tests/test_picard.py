"""Tests of the Picard family (ALGORITHMS.md sections 4 and 5): block Picard for the reverse SDE and
the probability-flow ODE, the ParaDiGMS window, and Picard Langevin.

The reference recursions below are written again from the formulas (ALGORITHMS.md 1b for the
exponential integrator, the DDPM posterior for the denoiser form, DDIM for the ODE, ULA for
Langevin), independently of scoresample.kernels.picard.
"""

import math
import os
import subprocess
import sys
import textwrap

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoresample
from scoresample import diffusion, processes, targets
from scoresample.kernels import picard

MIX = targets.four_modes_2d()


# ----- independent references --------------------------------------------------------------------


def _reference_path(score_fn, x_T, noise, ts, *, form, ode):
    """The sequential sampler, one step at a time in numpy, from the textbook formulas."""
    y = np.asarray(x_T, dtype=np.float64)
    for k in range(len(ts) - 1):
        s, t = ts[k], ts[k + 1]
        h = s - t
        score = np.asarray(score_fn(jnp.asarray(y), s))
        if form == "score":  # exponential integrator on dY = (Y + w score) dtau + sqrt(2 (1 - w)) dB
            if ode:
                y = math.exp(h) * y + math.expm1(h) * score
            else:
                y = (math.exp(h) * y + 2 * (math.exp(h) - 1) * score
                     + math.sqrt(math.exp(2 * h) - 1) * noise[k])
        else:
            a_s, a_t = math.exp(-s), math.exp(-t)
            v_s, v_t = 1 - math.exp(-2 * s), 1 - math.exp(-2 * t)
            x0 = (y + v_s * score) / a_s  # Tweedie
            if ode:  # DDIM
                y = math.sqrt(v_t / v_s) * y + (a_t - a_s * math.sqrt(v_t / v_s)) * x0
            else:  # DDPM posterior q(x_t | x_s, x0) with x0 = x0_hat
                a_st = a_s / a_t
                v_st = v_s - a_st**2 * v_t
                mean = a_st * v_t / v_s * y + a_t * v_st / v_s * x0
                y = mean + math.sqrt(v_st * v_t / v_s) * noise[k]
    return y


def _picard_path(score_fn, x_T, noise, ts, sizes, *, form, ode, num_iterations):
    """Block Picard run block by block with explicit noise (noise rows in grid order)."""
    a_coef, b_coef, c_coef = picard.step_coefficients(ts, ode=ode, form=form)
    eval_fn = picard.evaluation_fn(score_fn, form)
    y, start = jnp.asarray(x_T), 0
    for size in sizes:
        sl = slice(start, start + size)
        noise_term = jnp.asarray(c_coef[sl])[:, None] * noise[sl]
        path, _, _ = picard.picard_block(eval_fn, y, jnp.asarray(ts[sl]), jnp.asarray(a_coef[sl]),
                                         jnp.asarray(b_coef[sl]), noise_term,
                                         num_iterations=num_iterations)
        y, start = path[-1], start + size
    return y


# ----- the arithmetic of one step ------------------------------------------------------------------


@pytest.mark.parametrize("form", ["score", "denoiser"])
@pytest.mark.parametrize("ode", [False, True])
def test_sequential_sample_matches_textbook_recursion(form, ode):
    ts = processes.time_grid(60, 1e-3, 4.0, "log-snr")
    noise = np.asarray(jax.random.normal(jax.random.key(3), (60, 2)))
    x_T = np.array([0.4, -1.1])
    want = _reference_path(MIX.score, x_T, noise, ts, form=form, ode=ode)
    got = picard.sequential_sample(MIX.score, jnp.asarray(x_T), jnp.asarray(noise), ts, ode=ode, form=form)
    np.testing.assert_allclose(got[-1], want, rtol=0, atol=1e-11)


def test_step_coefficients_agree_with_the_baseline_tables():
    """The score form is the baselines' "ei" table; the denoiser ODE form is their DDIM table."""
    from scoresample.kernels import baselines

    ts = processes.time_grid(40, 1e-3, 5.0, "sqrt")
    a_coef, b_coef, c_coef = picard.step_coefficients(ts, form="score")
    w = baselines.ei_table(ts).weights[:, 0, :3]
    np.testing.assert_allclose(np.stack([a_coef, b_coef, c_coef], 1), w, rtol=1e-13)
    a_coef, b_coef, c_coef = picard.step_coefficients(ts, ode=True, form="denoiser")
    w = baselines.ddim_table(ts).weights[:, 0, :2]
    s2 = processes.sigma2(ts[:-1])
    # x' = A x + B (x + s^2 score)  <=>  x coefficient A + B, score coefficient B s^2
    np.testing.assert_allclose(np.stack([a_coef + b_coef, b_coef * s2], 1), w, rtol=1e-12)
    assert np.all(c_coef == 0)


def test_affine_prefix_is_the_recursion():
    rng = np.random.default_rng(0)
    a, c, y0 = rng.uniform(0.2, 3.0, 37), rng.standard_normal((37, 3)), rng.standard_normal(3)
    want, y = [], y0
    for k in range(37):
        y = a[k] * y + c[k]
        want.append(y)
    got = jax.jit(picard.affine_prefix)(jnp.asarray(a), jnp.asarray(c), jnp.asarray(y0))
    np.testing.assert_allclose(got, np.array(want), rtol=1e-12)


# ----- exactness: Picard with K = M is the sequential sampler with the same noise ------------------


@pytest.mark.parametrize("method", ["picard-sde", "picard-ode"])
@pytest.mark.parametrize("form", ["denoiser", "score"])
def test_picard_with_K_equal_M_reproduces_sequential(method, form, grad_counter):
    opts = dict(dim=2, num_samples=3, num_steps=24, form=form, block_sizes=(8, 6, 6, 4))
    key = jax.random.key(11)
    score = grad_counter.wrap(MIX.score)
    seq = diffusion.sample(key, method, score, sequential=True, **opts)
    # 24 steps, plus the executed padding of short blocks: 4 blocks x 8 points, counted as they ran
    assert grad_counter.count == 3 * seq.nfe == 3 * 32
    grad_counter.reset()
    par = diffusion.sample(key, method, score, num_iterations=8, **opts)
    np.testing.assert_allclose(par.samples, seq.samples, rtol=0, atol=1e-10)
    # padded blocks are evaluated at full width: 4 blocks x 8 iterations x 8 points
    assert grad_counter.count == 3 * par.nfe == 3 * 4 * 8 * 8
    assert seq.rounds == 32 and par.rounds == 32
    assert not np.any(par.is_divergent)


def test_picard_with_fewer_iterations_converges_superlinearly():
    ts = processes.time_grid(40, 1e-3, 4.0, "log-snr")
    noise = jax.random.normal(jax.random.key(5), (40, 2))
    x_T = jnp.array([0.3, 0.8])
    want = _reference_path(MIX.score, x_T, np.asarray(noise), ts, form="denoiser", ode=False)
    errs = []
    for k in (1, 2, 4, 8, 20):
        run = jax.jit(lambda x, xi: _picard_path(MIX.score, x, xi, ts, (20, 20), form="denoiser",
                                                 ode=False, num_iterations=k))
        errs.append(float(np.max(np.abs(run(x_T, noise) - want))))
    assert errs[-1] < 1e-10
    # superlinear: each doubling of K gains more than the last (the error is like (L h)^k / k!)
    ratios = [e2 / e1 for e1, e2 in zip(errs[:-2], errs[1:-1])]
    assert all(r2 < r1 for r1, r2 in zip(ratios[:-1], ratios[1:])) and ratios[-1] < 0.05, errs


def test_gaussian_data_output_covariance_is_closed_form():
    """Gaussian data: the sampler is linear in (x_T, noise); its output covariance by Jacobians of
    Picard (K = M) equals the textbook recursion of the sequential sampler."""
    cov0 = np.array([[0.5, 0.2, 0.0], [0.2, 1.0, -0.3], [0.0, -0.3, 2.0]])
    mean0 = np.array([1.0, -0.5, 0.0])
    gauss = targets.Gaussian(mean0, cov0)
    ts = processes.time_grid(24, 1e-2, 3.0, "log-snr")
    sizes = (8, 8, 8)

    def run(x_T, noise):
        return _picard_path(gauss.score, x_T, noise, ts, sizes, form="denoiser", ode=False,
                            num_iterations=8)

    zeros_x, zeros_n = jnp.zeros(3), jnp.zeros((24, 3))
    jx, jn = jax.jit(jax.jacfwd(run, argnums=(0, 1)))(zeros_x, zeros_n)
    jn = jn.reshape(3, -1)
    cov = jx @ jx.T + jn @ jn.T
    mean = jax.jit(run)(zeros_x, zeros_n)

    m, V = np.zeros(3), np.eye(3)
    for k in range(24):
        s, t = ts[k], ts[k + 1]
        a_s, a_t = math.exp(-s), math.exp(-t)
        v_s, v_t = 1 - math.exp(-2 * s), 1 - math.exp(-2 * t)
        prec = np.linalg.inv(a_s**2 * cov0 + v_s * np.eye(3))
        # x0_hat = (x + v_s score) / a_s with score = -prec (x - a_s mean0): affine in x
        x0_lin = (np.eye(3) - v_s * prec) / a_s
        x0_off = v_s * prec @ mean0
        a_st, v_st = a_s / a_t, v_s - (a_s / a_t) ** 2 * v_t
        G = a_st * v_t / v_s * np.eye(3) + a_t * v_st / v_s * x0_lin
        m = G @ m + a_t * v_st / v_s * x0_off
        V = G @ V @ G.T + v_st * v_t / v_s * np.eye(3)
    np.testing.assert_allclose(mean, m, atol=1e-11)
    np.testing.assert_allclose(cov, V, atol=1e-11)


def test_tolerance_mode_stays_within_tolerance(grad_counter):
    tol = 1e-4
    opts = dict(dim=2, num_samples=16, num_steps=200, num_blocks=4)
    key = jax.random.key(2)
    seq = diffusion.sample(key, "picard-sde", MIX.score, sequential=True, **opts)
    par = diffusion.sample(key, "picard-sde", grad_counter.wrap(MIX.score), tol=tol,
                           per_particle_info=True, **opts)
    assert grad_counter.count == 16 * par.nfe
    gap = np.sqrt(np.mean((np.asarray(par.samples) - np.asarray(seq.samples)) ** 2, axis=-1))
    assert np.max(gap) <= tol
    rounds = np.asarray(par.info.num_rounds)  # (blocks, particles)
    assert par.rounds == int(np.sum(np.max(rounds, axis=1)))
    assert par.rounds < 200  # fewer rounds than sequential steps
    assert np.all(np.asarray(par.info.num_grad_evals) == 50 * rounds)
    assert np.all(np.asarray(par.info.residual) <= tol)


def test_tolerance_mode_counts_what_the_vmapped_batch_executed():
    """Particles that need different numbers of Picard iterations run in lockstep under vmap: the
    while_loop of a block runs until the slowest particle converges and every particle's M points
    are evaluated each time. nfe must be that executed work, checked against a host-side count of
    the evaluations that really ran (one callback per evaluated point and particle)."""
    calls = [0]

    def counting_score(x, t):
        jax.debug.callback(lambda _: calls.__setitem__(0, calls[0] + 1), t)
        return MIX.score(x, t)

    n, width = 6, 8
    opts = dict(dim=2, num_samples=n, num_steps=24, num_blocks=3, tol=1e-4)
    key = jax.random.key(3)
    full = diffusion.sample(key, "picard-sde", counting_score, per_particle_info=True, **opts)
    full_calls = calls[0]
    rounds = np.asarray(full.info.num_rounds)  # (blocks, particles): what each particle needed
    assert rounds.shape == (3, n)
    assert np.any(rounds.min(axis=1) < rounds.max(axis=1))  # the particles do differ
    executed = width * int(np.sum(rounds.max(axis=1)))
    assert full.nfe == executed == full_calls / n
    assert full.rounds == int(np.sum(rounds.max(axis=1)))
    needed = np.asarray(full.info.num_grad_evals)
    np.testing.assert_array_equal(needed, width * rounds)
    assert full.nfe_needed == pytest.approx(np.mean(np.sum(needed, axis=0)))
    assert full.nfe_needed < full.nfe
    # the default, reduced Info reports the executed count per block (tests/test_diffusion_api.py)


@pytest.mark.parametrize("window, form", [(7, "denoiser"), (30, "score")])
def test_paradigms_with_zero_tolerance_reproduces_sequential(window, form, grad_counter):
    opts = dict(dim=2, num_samples=4, num_steps=30, form=form, window=window)
    key = jax.random.key(4)
    seq = diffusion.sample(key, "paradigms", MIX.score, sequential=True, **opts)
    par = diffusion.sample(key, "paradigms", grad_counter.wrap(MIX.score), tol=0.0, **opts)
    assert grad_counter.count == 4 * par.nfe
    np.testing.assert_allclose(par.samples, seq.samples, rtol=0, atol=1e-10)
    rounds = np.asarray(par.info.num_rounds)[0]
    assert np.all(rounds <= 30) and np.all(np.asarray(par.info.num_grad_evals)[0] == window * rounds)


def test_paradigms_gap_shrinks_with_the_tolerance_in_few_rounds():
    """tau bounds each accepted change relative to that step's noise sd, not the final gap; the gap
    must still fall with tau, and the rounds stay far below the N sequential steps."""
    opts = dict(dim=2, num_samples=16, num_steps=200, window=40)
    key = jax.random.key(8)
    seq = diffusion.sample(key, "paradigms", MIX.score, sequential=True, **opts)
    gaps, rounds = [], []
    for tol in (1e-3, 1e-5):
        par = diffusion.sample(key, "paradigms", MIX.score, tol=tol, **opts)
        gaps.append(np.sqrt(np.mean((np.asarray(par.samples) - np.asarray(seq.samples)) ** 2)))
        rounds.append(par.rounds)
    assert gaps[1] < 1e-5 and gaps[1] < gaps[0] / 100, gaps
    assert max(rounds) < 50, rounds


def test_paradigms_ode_reproduces_ddim_path(grad_counter):
    plan = picard.paradigms_plan(grad_counter.wrap(MIX.score), dim=2, num_steps=20, window=8,
                                 ode=True, tol=0.0, t_max=3.0)
    ts = processes.time_grid(20, 1e-3, 3.0, "log-snr")
    step = jax.jit(plan.algorithm.step)
    for i, x_T in enumerate([jnp.array([0.2, -1.0]), jnp.array([1.5, 0.3])]):
        grad_counter.reset()
        state, info = step(jax.random.key(i), plan.algorithm.init(x_T))
        want = _reference_path(MIX.score, x_T, None, ts, form="denoiser", ode=True)
        np.testing.assert_allclose(state.position, want, rtol=0, atol=1e-10)
        assert int(state.step) == 1
        assert grad_counter.count == int(info.num_grad_evals) == 8 * int(info.num_rounds)


# ----- the statistics of the output ------------------------------------------------------------------


def _never_called(x, t):
    raise AssertionError("score_fn must not be traced before the options are checked")


@pytest.mark.parametrize("plan_fn, options, error", [
    (picard.picard_sde_plan, dict(num_blocks=0), ValueError),
    (picard.picard_sde_plan, dict(num_steps=10, num_blocks=11), ValueError),
    (picard.picard_sde_plan, dict(num_steps=2.5), TypeError),
    (picard.picard_sde_plan, dict(num_iterations=3, tol=1e-3), ValueError),
    (picard.picard_sde_plan, dict(tol=-1.0), ValueError),
    (picard.picard_sde_plan, dict(max_iterations=0), ValueError),
    (picard.picard_sde_plan, dict(block_sizes=(3, 4), num_steps=10), ValueError),
    (picard.picard_sde_plan, dict(block_sizes=(3, 4), num_blocks=2, num_steps=7), ValueError),
    (picard.picard_sde_plan, dict(form="eps"), ValueError),
    (picard.picard_ode_plan, dict(t_min=2.0, t_max=1.0), ValueError),
    (picard.picard_ode_plan, dict(grid="cubic"), ValueError),
    (picard.picard_ode_plan, dict(sequential="yes"), TypeError),
    (picard.paradigms_plan, dict(window=0), ValueError),
    (picard.paradigms_plan, dict(tol=float("nan")), ValueError),
    (picard.paradigms_plan, dict(unknown_option=1), TypeError),
])
def test_bad_options_raise_before_tracing(plan_fn, options, error):
    with pytest.raises(error):
        plan_fn(_never_called, dim=2, **options)


def test_bad_score_fn_raises():
    with pytest.raises(TypeError, match="score_fn"):
        picard.picard_sde_plan("not a function", dim=2)
    with pytest.raises(ValueError, match="dim"):
        picard.paradigms_plan(MIX.score, dim=0)


@pytest.mark.parametrize("method", ["picard-sde", "paradigms"])
def test_non_finite_score_is_flagged_and_contained(method):
    def bad_score(x, t):
        return jnp.where(t < 0.05, jnp.nan, 1.0) * MIX.score(x, t)

    res = diffusion.sample(jax.random.key(0), method, bad_score, dim=2, num_samples=4, num_steps=20,
                           **({"num_blocks": 2} if method == "picard-sde" else {"window": 5}))
    assert np.all(res.is_divergent)
    assert np.all(np.isfinite(res.samples))


# ----- several devices: the time axis is sharded, the results do not change -----------------------

_DEVICE_SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from scoresample import diffusion, targets, picard_langevin
    from scoresample.kernels import picard
    mix = targets.four_modes_2d()
    key = jax.random.key(3)
    outs = []
    for method, opts in [("picard-sde", dict(num_blocks=3, tol=1e-6)),
                         ("paradigms", dict(window=8, tol=0.01))]:
        res = diffusion.sample(key, method, mix.score, dim=2, num_samples=3, num_steps=24, **opts)
        outs.append(np.asarray(res.samples).ravel())
    algo = picard_langevin(lambda x: -0.5 * jnp.sum(x**2), 0.2, num_points=4, num_iterations=3)
    state, _ = jax.jit(algo.step)(key, algo.init(jnp.ones(3)))
    outs.append(np.asarray(state.position))
    np.save(sys.argv[1], np.concatenate(outs))
    # the time axis really is split: the block's evaluation points carry a 4-way sharding
    f = jax.jit(lambda x: picard.shard_time_axis(x * 2.0))
    print("devices", len(jax.devices()), "time-shards", len(f(jnp.ones((8, 2))).sharding.device_set))
    def partitioned(shard):
        hlo = jax.jit(jax.vmap(lambda y: picard.picard_block(
            mix.score, y, jnp.linspace(1.0, 0.1, 8), jnp.ones(8), 0.01 * jnp.ones(8),
            jnp.zeros((8, 2)), num_iterations=2, shard=shard)[0])).lower(jnp.ones((3, 2))).compile().as_text()
        return any(op in hlo for op in ("all-gather", "collective-permute", "all-to-all", "all-reduce"))
    print("partitioned", partitioned(True), "unsharded", partitioned(False))
""")


@pytest.mark.slow
def test_four_devices_give_the_single_device_results(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_DEVICE_SCRIPT)
    outs = {}
    for n in (1, 4):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
        out = tmp_path / f"out{n}.npy"
        res = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"devices {n} time-shards {n}" in res.stdout
        if n == 4:
            assert "partitioned True unsharded False" in res.stdout
        outs[n] = np.load(out)
    assert np.all(np.isfinite(outs[1]))
    np.testing.assert_allclose(outs[4], outs[1], rtol=0, atol=1e-12)


# ----- Picard Langevin ------------------------------------------------------------------------


def _gaussian_logdensity(mean, prec):
    mean, prec = jnp.asarray(mean), jnp.asarray(prec)

    def logdensity_fn(x):
        r = x - mean
        return -0.5 * r @ prec @ r

    return logdensity_fn


def _ula_path(logdensity_fn, x, keys, step_size, num_points):
    """ULA with step h / M, the same noise as Picard Langevin (one (M, d) draw per epoch)."""
    eta = step_size / num_points
    grad = jax.grad(logdensity_fn)
    for key in keys:
        noise = np.asarray(jax.random.normal(key, (num_points,) + x.shape))
        for m in range(num_points):
            x = x + eta * np.asarray(grad(jnp.asarray(x))) + math.sqrt(2 * eta) * noise[m]
    return x


@pytest.mark.parametrize("target", ["gaussian", "logcosh"])
def test_picard_langevin_with_K_equal_M_is_ula(target, grad_counter):
    if target == "gaussian":
        logdensity_fn = _gaussian_logdensity([1.0, -2.0, 0.5], np.diag([1.0, 4.0, 0.5]))
    else:
        def logdensity_fn(x):
            return -jnp.sum(jnp.log(jnp.cosh(x - 1.0))) - 0.1 * jnp.sum(x**2)
    algo = scoresample.picard_langevin(grad_counter.wrap(logdensity_fn), 0.3, num_points=6,
                                       num_iterations=6)
    keys = jax.random.split(jax.random.key(1), 5)
    state = algo.init(jnp.array([0.5, 0.1, -0.3]))
    step = jax.jit(algo.step)
    for key in keys:
        grad_counter.reset()
        state, info = step(key, state)
    want = _ula_path(logdensity_fn, np.array([0.5, 0.1, -0.3]), keys, 0.3, 6)
    np.testing.assert_allclose(state.position, want, rtol=0, atol=1e-10)
    # K = M = 6 iterations: the start's gradient, then 5 points x 5 later iterations
    assert int(info.num_rounds) == 6
    assert grad_counter.count == int(info.num_grad_evals) == 1 + 5 * 5
    assert not bool(info.is_divergent)
    # one more iteration than points changes nothing: the fixed point was reached
    more = scoresample.picard_langevin(logdensity_fn, 0.3, num_points=6, num_iterations=7)
    _, info = jax.jit(more.step)(keys[0], state)
    assert float(info.residual) < 1e-12


def test_picard_langevin_jits_vmaps_and_runs_under_run_inference_algorithm(grad_counter):
    logdensity_fn = _gaussian_logdensity([0.0, 1.0], np.eye(2))
    algo = scoresample.picard_langevin(grad_counter.wrap(logdensity_fn), 0.2, 4, 3)
    state, info = jax.jit(algo.step)(jax.random.key(0), algo.init(jnp.zeros(2)))
    assert state.position.shape == (2,)
    assert grad_counter.count == int(info.num_grad_evals) == 1 + 2 * 3

    states = jax.vmap(algo.init)(jnp.zeros((5, 2)))
    new, infos = jax.jit(jax.vmap(algo.step))(jax.random.split(jax.random.key(1), 5), states)
    assert new.position.shape == (5, 2) and infos.num_rounds.shape == (5,)

    final, (trace, trace_info) = blackjax.util.run_inference_algorithm(
        jax.random.key(2), algo, 20, initial_position=jnp.zeros(2))
    assert trace.position.shape == (20, 2) and trace_info.num_rounds.shape == (20,)
    np.testing.assert_array_equal(final.position, trace.position[-1])

    # the raw kernel, with its numeric parameter at call time, and a pytree position
    kernel = scoresample.picard_langevin.build_kernel(num_points=3, num_iterations=2)

    def tree_logdensity(p):
        return -0.5 * jnp.sum(p["a"] ** 2) - 0.5 * p["b"] ** 2

    tree_state = scoresample.picard_langevin.init({"a": jnp.ones(2), "b": jnp.array(0.5)})
    out, _ = jax.jit(kernel, static_argnums=2)(jax.random.key(3), tree_state, tree_logdensity, 0.1)
    assert out.position["a"].shape == (2,) and out.position["b"].shape == ()


def test_picard_langevin_bad_inputs_raise_before_compiling():
    calls = []

    def logdensity_fn(x):
        calls.append(1)
        return -jnp.sum(x**2)

    for args, kwargs, error in [
        ((logdensity_fn, -0.1), {}, ValueError),
        ((logdensity_fn, 0.0), {}, ValueError),
        ((logdensity_fn, float("inf")), {}, ValueError),
        ((logdensity_fn, 0.1), {"num_points": 0}, ValueError),
        ((logdensity_fn, 0.1), {"num_points": 2.0}, TypeError),
        ((logdensity_fn, 0.1), {"num_iterations": 0}, ValueError),
        ((logdensity_fn, True), {}, TypeError),
        (("not callable", 0.1), {}, TypeError),
    ]:
        with pytest.raises(error):
            scoresample.picard_langevin(*args, **kwargs)
    with pytest.raises(ValueError, match="num_points"):
        scoresample.picard_langevin.build_kernel(num_points=-1)
    assert not calls


def test_picard_langevin_divergence_keeps_the_chain():
    def logdensity_fn(x):
        return jnp.where(jnp.sum(x) > 10.0, jnp.nan, 1.0) * -0.5 * jnp.sum(x**2) + 50.0 * jnp.sum(x)

    algo = scoresample.picard_langevin(logdensity_fn, 0.5, num_points=4, num_iterations=3)
    state, info = jax.jit(algo.step)(jax.random.key(0), algo.init(jnp.array([9.0, 0.9])))
    assert bool(info.is_divergent)
    np.testing.assert_array_equal(state.position, [9.0, 0.9])
