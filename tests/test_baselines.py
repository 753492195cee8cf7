"""Exact tests of the baseline diffusion samplers (ALGORITHMS.md sections 1 and 5).

The coefficients below are written again from the formulas of ALGORITHMS.md, independently of the
tables in scoresample.kernels.baselines: on Gaussian data every score is linear, so the stochastic
samplers are linear Gaussian chains whose output mean and covariance follow by recursion, and the
probability-flow ODE has a closed-form solution.
"""

import math

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresample import diffusion, processes, targets
from scoresample.kernels import baselines

ALL_METHODS = ["ddpm", "ddpm-large", "ei", "pf-ode", "ddim", "dpm-solver++"]


# ----- independent reference recursions --------------------------------------------------------


def _gaussian_precision(cov0, t):
    """(a_t^2 S + s_t^2 I)^-1 for data covariance S (possibly singular)."""
    a2, s2 = math.exp(-2 * t), -math.expm1(-2 * t)
    return np.linalg.inv(a2 * cov0 + s2 * np.eye(cov0.shape[0]))


def _ddpm_coefficients(T, variance, c0=2.0, c1=4.0):
    """(A, B, C, t) for Y <- (Y + beta s + sigma Z) / sqrt(alpha), steps k = T..2 (ALGORITHMS 1a)."""
    betas, abar, times = processes.li_yan_schedule(T, c0, c1)
    rows = []
    for k in range(T, 1, -1):
        beta, ab, ab_prev = betas[k - 1], abar[k - 1], abar[k - 2]
        alpha = 1 - beta
        var = (1 - alpha) * alpha * (1 - ab_prev) / (1 - ab) if variance == "star" else beta
        rows.append((1 / math.sqrt(alpha), beta / math.sqrt(alpha), math.sqrt(var / alpha), times[k - 1]))
    return rows, times[0]


def _ei_coefficients(ts):
    """(A, B, C, t) for Y <- e^h Y + 2 (e^h - 1) s + sqrt(e^{2h} - 1) Z (ALGORITHMS 1b)."""
    return [(math.exp(h), 2 * math.expm1(h), math.sqrt(math.expm1(2 * h)), t)
            for t, h in zip(ts[:-1], ts[:-1] - ts[1:])]


def _linear_chain_moments(rows, mean0, cov0):
    """Mean and covariance of the chain started at N(0, I) with score -P_t (x - a_t mean0)."""
    d = mean0.shape[0]
    m, V = np.zeros(d), np.eye(d)
    for A, B, C, t in rows:
        P = _gaussian_precision(cov0, t)
        G = A * np.eye(d) - B * P
        m = G @ m + B * P @ (math.exp(-t) * mean0)
        V = G @ V @ G.T + C**2 * np.eye(d)
    return m, V


def _marginal(mean0, cov0, t):
    a2, s2 = math.exp(-2 * t), -math.expm1(-2 * t)
    return math.exp(-t) * mean0, a2 * cov0 + s2 * np.eye(cov0.shape[0])


def _kl_gauss_1d(v, v_ref):
    r = v / v_ref
    return 0.5 * (r - 1 - math.log(r))


# ----- Li-Yan null directions ---------------------------------------------------------------------


def _subspace_gaussian(d=4, k=2):
    basis, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((d, k)))
    latent_mean = np.array([0.7, -0.4])
    latent_cov = np.array([[0.6, 0.15], [0.15, 0.3]])
    mix = targets.GaussianMixture(np.ones(1), latent_mean[None], latent_cov[None], basis=basis)
    return mix, basis @ latent_mean, basis @ latent_cov @ basis.T, basis


def test_li_yan_variance_reproduces_null_directions_by_recursion():
    # In a null direction p_t = N(0, 1 - abar_k); the chain is linear in that coordinate.
    _, mean0, cov0, basis = _subspace_gaussian()
    null = np.linalg.svd(basis, full_matrices=True)[0][:, 2:]
    T = 100
    results = {}
    for variance in ("star", "beta"):
        rows, t_out = _ddpm_coefficients(T, variance)
        _, V = _linear_chain_moments(rows, mean0, cov0)
        v_null = np.diag(null.T @ V @ null)
        v_ref = -math.expm1(-2 * t_out)
        results[variance] = [_kl_gauss_1d(v, v_ref) for v in v_null]
    assert max(results["star"]) < 1e-12
    assert all(8e-3 < kl < 1e-2 for kl in results["beta"]), results["beta"]


@pytest.mark.parametrize("method,variance", [("ddpm", "star"), ("ddpm-large", "beta")])
def test_ddpm_sampled_moments_equal_linear_recursion(method, variance):
    mix, mean0, cov0, basis = _subspace_gaussian()
    nfe, n = 99, 4000  # Li-Yan T = nfe + 1 = 100
    res = diffusion.sample(jax.random.key(3), method, mix.score, dim=4, num_samples=n, nfe=nfe)
    rows, t_out = _ddpm_coefficients(nfe + 1, variance)
    assert res.settings["t_min"] == pytest.approx(t_out, rel=1e-12)
    np.testing.assert_allclose(res.settings["evaluation_times"], [r[3] for r in rows], rtol=1e-12)
    m, V = _linear_chain_moments(rows, mean0, cov0)
    _assert_moments(np.asarray(res.samples), m, V)
    # The output law is N(m, V); its null-direction variance decides sigma* vs beta.
    null = np.linalg.svd(basis, full_matrices=True)[0][:, 2:]
    xs = np.asarray(res.samples) @ null
    ratio = np.mean(xs**2) / (-math.expm1(-2 * t_out))
    se = math.sqrt(2.0 / xs.size)  # (chi-square, 2 null directions x n draws)
    expected = 1.0 if variance == "star" else np.mean(np.diag(null.T @ V @ null)) / (-math.expm1(-2 * t_out))
    assert abs(ratio - expected) < 4.5 * se * expected
    if variance == "beta":
        assert expected > 1.15  # about 20 % too wide: what the 9e-3 KL per direction means


def _assert_moments(xs, m, V):
    """|z| < 4.5 for every mean coordinate and covariance entry (standard errors from the draws)."""
    n = xs.shape[0]
    mean_z = (xs.mean(0) - m) / np.sqrt(np.diag(V) / n)
    assert np.all(np.abs(mean_z) < 4.5), mean_z
    c = xs - xs.mean(0)
    prods = c[:, :, None] * c[:, None, :]
    cov_se = prods.std(0) / math.sqrt(n)
    cov_z = (prods.mean(0) - V) / cov_se
    assert np.all(np.abs(cov_z) < 4.5), cov_z


@pytest.mark.parametrize("grid", ["sqrt", "geometric"])
def test_ei_sampled_moments_equal_linear_recursion(grid):
    mean0 = np.array([1.0, -0.5, 0.25])
    cov0 = np.array([[0.5, 0.2, 0.0], [0.2, 0.3, -0.05], [0.0, -0.05, 0.2]])
    g = targets.Gaussian(mean0, cov0)
    nfe, t_min, t_max = 12, 1e-2, 3.0
    res = diffusion.sample(jax.random.key(5), "ei", g.score, dim=3, num_samples=4000, nfe=nfe,
                           t_min=t_min, t_max=t_max, grid=grid)
    rows = _ei_coefficients(processes.time_grid(nfe, t_min, t_max, grid))
    m, V = _linear_chain_moments(rows, mean0, cov0)
    _assert_moments(np.asarray(res.samples), m, V)
    # The recursion itself: with a fine grid the chain's law is close to p_{t_min}.
    m_fine, V_fine = _linear_chain_moments(_ei_coefficients(processes.time_grid(4000, t_min, 8.0, grid)),
                                           mean0, cov0)
    m_true, V_true = _marginal(mean0, cov0, t_min)
    assert np.max(np.abs(m_fine - m_true)) < 5e-3 and np.max(np.abs(V_fine - V_true)) < 5e-3


# ----- convergence orders of the deterministic samplers ----------------------------------------------


def _exact_flow(mean0, cov0, x_T, t_max, t_min):
    """The probability-flow ODE on Gaussian data:
    x_t = a_t mu + Q diag(sqrt(v_t / v_T)) Q^T (x_T - a_T mu)."""
    lam, Q = np.linalg.eigh(cov0)
    v = lambda t: math.exp(-2 * t) * lam - math.expm1(-2 * t)
    scale = Q @ np.diag(np.sqrt(v(t_min) / v(t_max))) @ Q.T
    return math.exp(-t_min) * mean0[None] + (x_T - math.exp(-t_max) * mean0[None]) @ scale.T


_ORDER_TARGET = targets.Gaussian(np.array([1.0, -0.5]), np.array([[0.5, 0.2], [0.2, 0.3]]))
_MAX_ROWS = 256


@jax.jit
def _run_table(table, num_steps, x_T, key):
    """Run the shared kernel on a coefficient table padded to _MAX_ROWS rows, from given x_T.

    The table is an argument and the trip count is traced, so every budget of a method shares one
    compilation (one per number of aux vectors).
    """
    kernel = baselines.build_kernel()
    states = jax.vmap(baselines.init, (0, None))(x_T, table)

    def body(i, states):
        keys = jax.random.split(jax.random.fold_in(key, i), x_T.shape[0])
        states, _ = jax.vmap(kernel, (0, 0, None, None))(keys, states, _ORDER_TARGET.score, table)
        return states

    return jax.lax.fori_loop(0, num_steps, body, states).position


def _padded(table):
    pad = _MAX_ROWS - table.num_steps
    return baselines.StepTable(np.pad(table.times, (0, pad)),
                               np.pad(table.weights, ((0, pad), (0, 0), (0, 0))))


_ORDER_TABLES = {
    # method: (order, budgets, (nfe, t_min, t_max) -> table)
    "ddim": (1, (16, 32, 64, 128),
             lambda n, a, b: baselines.ddim_table(processes.time_grid(n, a, b, "sqrt"))),
    "dpm-solver++": (2, (32, 64, 128, 256),
                     lambda n, a, b: baselines.dpm_solver_pp_table(processes.time_grid(n, a, b, "log-snr"))),
    "pf-ode": (2, (32, 64, 128, 256),
               lambda n, a, b: baselines.heun_table(processes.time_grid(n // 2, a, b, "sqrt"), False)),
    "pf-ode-time": (2, (32, 64, 128, 256),
                    lambda n, a, b: baselines.heun_table(processes.time_grid(n // 2, a, b, "sqrt"), False,
                                                         "time")),
}


@pytest.mark.parametrize("method", list(_ORDER_TABLES))
def test_empirical_convergence_order(method):
    order, budgets, make_table = _ORDER_TABLES[method]
    mean0, cov0 = np.asarray(_ORDER_TARGET.mean), np.asarray(_ORDER_TARGET.cov)
    t_min, t_max = 1e-2, 4.0
    x_T = np.asarray(jax.random.normal(jax.random.key(0), (8, 2)))
    exact = _exact_flow(mean0, cov0, x_T, t_max, t_min)
    errors = []
    for nfe in budgets:
        table = make_table(nfe, t_min, t_max)
        assert table.num_steps == nfe
        out = _run_table(_padded(table), nfe, jnp.asarray(x_T), jax.random.key(1))
        errors.append(np.max(np.abs(np.asarray(out) - exact)))
    slope = -np.polyfit(np.log(budgets), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.25, (errors, slope)
    # Deterministic given x_T: another noise key changes nothing.
    again = _run_table(_padded(table), budgets[-1], jnp.asarray(x_T), jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(again), np.asarray(out))


# ----- cost accounting, jit / vmap / run_inference_algorithm ---------------------------------------


class _CountingScore:
    """A score that counts its Python calls: run eagerly, each call is one executed evaluation."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("nfe", [1, 2, 7])
@pytest.mark.parametrize("denoise", [False, True])
def test_exact_nfe_counting(method, nfe, denoise):
    mix = targets.two_modes_1d()
    score = _CountingScore(mix.score)
    plan = diffusion.build_plan(method, score, dim=1, nfe=nfe, denoise=denoise)
    score.calls = 0  # build_plan traced it once for shape checking
    state = plan.algorithm.init(jnp.array([0.3]))
    total = 0
    with jax.disable_jit():
        for i in range(plan.num_steps):
            state, info = plan.algorithm.step(jax.random.key(i), state)
            total += int(info.num_grad_evals)
            assert int(info.num_rounds) == 1 and not bool(info.is_divergent)
    expected = nfe + (1 if denoise else 0)
    assert score.calls == expected == total
    assert int(state.step) == plan.num_steps


@pytest.mark.parametrize("method", ALL_METHODS)
def test_jit_vmap_and_run_inference_algorithm(method):
    # One compilation per method: run_inference_algorithm (which jits its scan) vmapped over
    # particles under jax.jit, against stepping one particle by hand (eagerly) with the same keys.
    mix = targets.four_modes_2d()
    plan = diffusion.build_plan(method, mix.score, dim=2, nfe=5)
    x_T = jax.random.normal(jax.random.key(0), (3, 2))
    keys = jax.random.split(jax.random.key(1), 3)

    @jax.jit
    def run(keys, x_T):
        def one(key, x):
            final, _ = blackjax.util.run_inference_algorithm(key, plan.algorithm, plan.num_steps,
                                                              initial_position=x)
            return final

        return jax.vmap(one)(keys, x_T)

    finals = run(keys, x_T)
    assert finals.position.shape == (3, 2) and np.all(np.asarray(finals.step) == plan.num_steps)
    state = plan.algorithm.init(x_T[1])
    run_key, _ = jax.random.split(keys[1])  # run_inference_algorithm's own split
    for key in jax.random.split(run_key, plan.num_steps):
        state, info = plan.algorithm.step(key, state)
    assert int(info.num_grad_evals) == 1
    np.testing.assert_allclose(finals.position[1], state.position, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_sample_counts_and_rejects_non_finite(method):
    # The score is NaN at late times: those steps are rejected, samples stay finite and are flagged;
    # the cost report counts every executed evaluation, the Tweedie step included.
    def score(x, t):
        return jnp.where(t < 0.5, jnp.nan, -x)

    res = diffusion.sample(jax.random.key(0), method, score, dim=2, num_samples=4, nfe=8,
                           denoise=True)
    assert res.nfe == 9.0 and res.rounds == 9
    assert res.info.num_grad_evals.shape == (9,)  # per step, reduced over the particles
    assert bool(jnp.all(res.is_divergent))
    assert bool(jnp.all(jnp.isfinite(res.samples)))
    assert bool(jnp.any(res.info.is_divergent)) and not bool(jnp.all(res.info.is_divergent))


def test_dpm_solver_first_step_is_ddim_and_ddim_is_first_order_dpm():
    # DDIM = the order-1 data-prediction step; DPM-Solver++(2M)'s first step is that step.
    ts = processes.time_grid(5, 1e-3, 3.0, "log-snr")
    ddim, dpm = baselines.ddim_table(ts), baselines.dpm_solver_pp_table(ts)
    np.testing.assert_allclose(ddim.weights[0], dpm.weights[0], rtol=1e-14)
    # DDIM on a step s -> t multiplies x by a_t / a_s when the score is zero... up to the score term:
    # weights on x and on the score reproduce x_t = a_t m + s_t eps with m, eps from Tweedie.
    t_s, t_t = ts[0], ts[1]
    x, s = 0.7, -1.3
    a_s, s_s = math.exp(-t_s), math.sqrt(-math.expm1(-2 * t_s))
    a_t, s_t = math.exp(-t_t), math.sqrt(-math.expm1(-2 * t_t))
    m = (x + s_s**2 * s) / a_s
    eps = -s_s * s
    w = ddim.weights[0][0]
    assert w[0] * x + w[1] * s == pytest.approx(a_t * m + s_t * eps, rel=1e-13)


def test_scaled_heun_euler_step_is_ddim_and_null_directions_are_exact():
    ts = processes.time_grid(3, 1e-3, 4.0, "sqrt")
    euler = baselines.heun_table(ts[-2:], last_euler=True)  # one Euler step
    np.testing.assert_allclose(euler.weights[0][0, :3], baselines.ddim_table(ts[-2:]).weights[0][0, :3],
                               rtol=1e-13)
    # Where the data has no variance the score is -x / s_t^2 and the scaled ODE is linear in sigma:
    # x_t / a_t proportional to sigma_t; one Heun step reproduces it exactly.
    heun = baselines.heun_table(ts[:2], last_euler=False)
    t0, t1 = ts[0], ts[1]
    x = 1.7
    w1, w2 = heun.weights[0], heun.weights[1]
    pred = w1[0, 0] * x + w1[0, 1] * (-x / -math.expm1(-2 * t0))
    new = (w2[0, 0] * pred + w2[0, 1] * (-pred / -math.expm1(-2 * t1))
           + w2[0, 3] * x + w2[0, 4] * (-x / -math.expm1(-2 * t0)))
    exact = (x * math.exp(-t1) * math.sqrt(math.expm1(2 * t1))
             / (math.exp(-t0) * math.sqrt(math.expm1(2 * t0))))
    assert new == pytest.approx(exact, rel=1e-13)


def test_heun_pf_ode_budget_layout():
    # Even budget: all Heun steps; odd budget: a last Euler step; evaluation times follow the grid.
    g = targets.Gaussian(np.zeros(1), np.eye(1))
    even = baselines.pf_ode_plan(g.score, dim=1, nfe=6, t_min=0.1, t_max=1.0, grid="uniform")
    odd = baselines.pf_ode_plan(g.score, dim=1, nfe=7, t_min=0.1, t_max=1.0, grid="uniform")
    np.testing.assert_allclose(even.settings["evaluation_times"], [1.0, 0.7, 0.7, 0.4, 0.4, 0.1])
    np.testing.assert_allclose(odd.settings["evaluation_times"],
                               [1.0, 0.775, 0.775, 0.55, 0.55, 0.325, 0.325])


@pytest.mark.parametrize("method", ["ddpm", "ddpm-large"])
def test_ddpm_rejects_time_options(method):
    g = targets.Gaussian(np.zeros(1), np.eye(1))
    with pytest.raises(ValueError, match="t_min"):
        diffusion.build_plan(method, g.score, dim=1, nfe=5, t_min=1e-3)
