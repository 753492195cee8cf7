"""The shared Metropolis-Hastings test and the inner solvers (MALA, frozen-gradient ULD, line integrals)."""

import math
from decimal import Decimal, getcontext

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from scipy import stats

from scoresample import targets
from scoresample.kernels.inner import (
    ULDState,
    factory_test,
    init_inner,
    mala_chain,
    mala_factory_chain,
    quadrature_rule,
    score_line_integral,
    trapezoid_correction,
    uld_chain,
    uld_coefficients,
)
from scoresample.kernels.proposal import metropolis_hastings

Z_MAX = 4.5


# ----- Metropolis-Hastings ----------------------------------------------------------------------------


def test_mh_accepts_with_probability_min_one_ratio():
    num = 20000
    keys = jax.random.split(jax.random.key(0), num)
    old, new = jnp.zeros(2), jnp.ones(2)
    decide = jax.jit(jax.vmap(lambda k, r: metropolis_hastings(k, r, new, old), in_axes=(0, None)))
    for prob in (0.3, 0.9):
        out = decide(keys, jnp.log(prob))
        np.testing.assert_allclose(out.acceptance_rate, prob, rtol=1e-12)
        freq = float(jnp.mean(out.is_accepted))
        assert abs(freq - prob) < Z_MAX * math.sqrt(prob * (1 - prob) / num)
        chosen = np.where(np.asarray(out.is_accepted)[:, None], 1.0, 0.0)
        np.testing.assert_array_equal(out.state, np.broadcast_to(chosen, (num, 2)))
        assert not bool(jnp.any(out.is_divergent))
    out = decide(keys[:100], jnp.asarray(2.0))
    assert bool(jnp.all(out.is_accepted)) and bool(jnp.all(out.acceptance_rate == 1.0))


@pytest.mark.parametrize("log_ratio", [jnp.nan, jnp.inf, -jnp.inf])
def test_mh_rejects_and_flags_non_finite_ratio(log_ratio):
    keys = jax.random.split(jax.random.key(1), 50)
    old = (jnp.zeros(3), jnp.zeros(()))
    new = (jnp.ones(3), jnp.ones(()))
    out = jax.vmap(lambda k: metropolis_hastings(k, log_ratio, new, old))(keys)
    assert not bool(jnp.any(out.is_accepted))
    assert bool(jnp.all(out.is_divergent))
    np.testing.assert_array_equal(out.acceptance_rate, 0.0)
    np.testing.assert_array_equal(out.state[0], 0.0)


def test_mh_rejects_non_finite_proposal():
    out = metropolis_hastings(jax.random.key(2), 5.0, jnp.array([1.0, jnp.nan]), jnp.zeros(2))
    assert not bool(out.is_accepted) and bool(out.is_divergent)
    np.testing.assert_array_equal(out.state, 0.0)


# ----- quadrature and line integrals ---------------------------------------------------------------


@pytest.mark.parametrize("name,num_nodes", [("gauss-legendre", 1), ("gauss-legendre", 3),
                                            ("gauss-lobatto", 0), ("gauss-lobatto", 1),
                                            ("gauss-lobatto", 3), ("trapezoid", 0)])
def test_quadrature_rules_are_exact_to_their_degree(name, num_nodes):
    rule = quadrature_rule(name, num_nodes)
    assert rule.num_evals == (0 if name == "trapezoid" else num_nodes)
    assert np.all((rule.nodes > 0) & (rule.nodes < 1))

    def integrate(k):
        return 2 * rule.endpoint_weight * (k == 0) + rule.endpoint_weight * (k > 0) + np.sum(
            rule.weights * rule.nodes**k)

    for k in range(rule.degree + 1):
        assert integrate(k) == pytest.approx(1.0 / (k + 1), abs=1e-14)
    assert abs(integrate(rule.degree + 1) - 1.0 / (rule.degree + 2)) > 1e-6  # the degree is sharp


def test_quadrature_rule_rejects_bad_input():
    with pytest.raises(ValueError, match="quadrature"):
        quadrature_rule("simpson", 1)
    with pytest.raises(ValueError, match="num_nodes"):
        quadrature_rule("gauss-legendre", 0)
    with pytest.raises(TypeError, match="num_nodes"):
        quadrature_rule("gauss-lobatto", 1.0)


@pytest.mark.parametrize("name,num_nodes", [("gauss-legendre", 1), ("gauss-legendre", 2),
                                            ("gauss-lobatto", 1), ("trapezoid", 0)])
def test_line_integral_equals_log_density_difference_on_gaussians(name, num_nodes):
    # the score of a Gaussian is affine, so every rule is exact
    gauss = targets.Gaussian(np.array([0.5, -1.0, 2.0]),
                             np.array([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 2.0]]))
    t = 0.37
    z, z_new = jnp.array([0.1, 0.2, -0.3]), jnp.array([2.0, -1.5, 0.7])
    score_at = lambda x: gauss.score(x, t)
    value = score_line_integral(score_at, z, z_new, score_at(z), score_at(z_new),
                                quadrature_rule(name, num_nodes))
    exact = gauss.logdensity_t(z_new, t) - gauss.logdensity_t(z, t)
    np.testing.assert_allclose(value, exact, rtol=1e-12, atol=1e-12)


def test_line_integral_converges_on_a_mixture():
    mix = targets.four_modes_2d()
    t = 0.2
    z, z_new = jnp.array([1.5, 1.0]), jnp.array([1.0, 2.6])
    score_at = lambda x: mix.score(x, t)
    exact = float(mix.logdensity_t(z_new, t) - mix.logdensity_t(z, t))
    errors = [abs(float(score_line_integral(score_at, z, z_new, score_at(z), score_at(z_new),
                                            quadrature_rule("gauss-legendre", n))) - exact)
              for n in (1, 2, 4, 8)]
    assert errors[-1] < 1e-7 * abs(exact)
    assert errors[3] < errors[2] < errors[1]
    lobatto = abs(float(score_line_integral(score_at, z, z_new, score_at(z), score_at(z_new),
                                            quadrature_rule("gauss-lobatto", 4))) - exact)
    assert lobatto < 1e-5 * abs(exact)


# ----- the frozen-gradient ULD step ------------------------------------------------------------------


def _uld_reference(tau, gamma):
    """Closed forms in 40-digit decimal arithmetic (no cancellation can hide there)."""
    getcontext().prec = 40
    tau_d, gamma_d = Decimal(repr(tau)), Decimal(repr(gamma))
    e = (-(gamma_d * tau_d)).exp()
    m = 1 - e
    return [float(v) for v in (e, m, (tau_d - m / gamma_d) / gamma_d,
                                (2 * gamma_d * tau_d - 3 + 4 * e - e * e) / gamma_d**2,
                                m * m / gamma_d, 1 - e * e)]


@pytest.mark.parametrize("tau,gamma", [(1e-5, 3.0), (1e-3, 2.0), (0.02, 4.9), (0.05, 2.1),
                                       (0.3, 1.0), (2.0, 3.0)])
def test_uld_coefficients_are_accurate(tau, gamma):
    got = [float(v) for v in uld_coefficients(jnp.asarray(tau), jnp.asarray(gamma))]
    np.testing.assert_allclose(got, _uld_reference(tau, gamma), rtol=1e-12)


@pytest.mark.parametrize("tau,gamma", [(0.1, 2.0), (0.7, 1.3)])
def test_uld_coefficients_match_the_exact_sde_solution(tau, gamma):
    # dz = v dt, dv = (-gamma v - G) dt + sqrt(2 gamma) dB: transition from matrix exponentials
    drift = np.array([[0.0, 1.0], [0.0, -gamma]])
    diffusion = np.diag([0.0, 2.0 * gamma])
    # affine part with constant G = 1: augment the state with the constant
    aug = np.zeros((3, 3))
    aug[:2, :2] = drift
    aug[1, 2] = -1.0
    flow = scipy.linalg.expm(aug * tau)
    van_loan = scipy.linalg.expm(np.block([[-drift, diffusion], [np.zeros((2, 2)), drift.T]]) * tau)
    phi = van_loan[2:, 2:].T
    noise_cov = phi @ van_loan[:2, 2:]
    e, m, c_zg, s_zz, s_zv, s_vv = (float(v) for v in uld_coefficients(tau, gamma))
    np.testing.assert_allclose(flow[:2, :2], [[1.0, m / gamma], [0.0, e]], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(flow[:2, 2], [-c_zg, -m / gamma], rtol=1e-12)
    np.testing.assert_allclose(noise_cov, [[s_zz, s_zv], [s_zv, s_vv]], rtol=1e-10)


def _uld_stationary_cov(precision, tau, gamma):
    """Stationary covariance of z for the linear chain ULD makes on N(mu, precision^-1)."""
    d = precision.shape[0]
    e, m, c_zg, s_zz, s_zv, s_vv = (float(v) for v in uld_coefficients(tau, gamma))
    eye = np.eye(d)
    a = np.block([[eye - c_zg * precision, (m / gamma) * eye], [-(m / gamma) * precision, e * eye]])
    q = np.block([[s_zz * eye, s_zv * eye], [s_zv * eye, s_vv * eye]])
    return scipy.linalg.solve_discrete_lyapunov(a, q)[:d, :d]


def _gaussian_potential(mean, precision):
    def potential_fn(z):
        r = z - mean
        return 0.5 * r @ precision @ r, precision @ r, ()

    return potential_fn


def _cov_z_scores(samples, mean, cov):
    n = samples.shape[0]
    mean_z = (samples.mean(0) - mean) / np.sqrt(np.diag(cov) / n)
    emp = np.cov(samples.T)
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    return mean_z, (emp - cov) / se


CORR_MEAN = np.array([1.0, -2.0])
CORR_COV = np.array([[1.0, 0.8], [0.8, 2.0]])


def test_mala_chain_keeps_a_gaussian_exactly_invariant_and_mixes():
    precision = np.linalg.inv(CORR_COV)
    potential_fn = _gaussian_potential(jnp.asarray(CORR_MEAN), jnp.asarray(precision))
    num = 4000

    def run(key, start, num_steps, step):
        state = init_inner(start, potential_fn)
        return mala_chain(key, state, potential_fn, step, num_steps)

    keys = jax.random.split(jax.random.key(3), num)
    # invariance: exact draws, a large step (acceptance about 0.5), a few steps
    exact = targets.Gaussian(CORR_MEAN, CORR_COV).sample(jax.random.key(4), num)
    final, info = jax.jit(jax.vmap(lambda k, x: run(k, x, 5, 1.2)))(keys, exact)
    assert 0.3 < float(jnp.mean(info.acceptance_rate)) < 0.8
    mz, cz = _cov_z_scores(np.asarray(final.position), CORR_MEAN, CORR_COV)
    assert np.max(np.abs(mz)) < Z_MAX and np.max(np.abs(cz)) < Z_MAX
    # mixing: from a far point
    start = jnp.broadcast_to(jnp.array([6.0, 4.0]), (num, 2))
    final, info = jax.jit(jax.vmap(lambda k, x: run(k, x, 200, 0.4)))(keys, start)
    mz, cz = _cov_z_scores(np.asarray(final.position), CORR_MEAN, CORR_COV)
    assert np.max(np.abs(mz)) < Z_MAX and np.max(np.abs(cz)) < Z_MAX
    assert int(jnp.sum(info.num_accepted)) > 0.5 * 200 * num


def test_mala_step_with_an_energy_difference_function():
    # U known only through differences: same chain as with the value
    precision = jnp.asarray(np.linalg.inv(CORR_COV))
    mean = jnp.asarray(CORR_MEAN)
    with_value = _gaussian_potential(mean, precision)

    def without_value(z):
        _, grad, _ = with_value(z)
        return jnp.zeros(()), grad, ()

    def diff_fn(old, new):
        return with_value(new.position)[0] - with_value(old.position)[0]

    start = jnp.array([0.3, 0.1])
    a, ia = mala_chain(jax.random.key(5), init_inner(start, with_value), with_value, 0.5, 20)
    b, ib = mala_chain(jax.random.key(5), init_inner(start, without_value), without_value, 0.5, 20,
                       diff_fn)
    np.testing.assert_allclose(a.position, b.position, rtol=1e-12)
    assert int(ia.num_accepted) == int(ib.num_accepted)


def test_mala_refuses_non_finite_points():
    def potential_fn(z):  # infinite outside the unit ball
        inside = jnp.sum(z**2) < 1.0
        return jnp.where(inside, 0.5 * jnp.sum(z**2), jnp.nan), z, ()

    state, info = mala_chain(jax.random.key(6), init_inner(jnp.zeros(2), potential_fn),
                             potential_fn, 2.0, 30)
    assert bool(jnp.all(jnp.isfinite(state.position))) and float(jnp.sum(state.position**2)) < 1
    assert bool(info.is_divergent)


def test_uld_chain_reaches_its_exact_discrete_stationary_law():
    precision = np.linalg.inv(CORR_COV)
    potential_fn = _gaussian_potential(jnp.asarray(CORR_MEAN), jnp.asarray(precision))
    tau, gamma = 0.5, 1.0
    num = 4000

    def run(key):
        key_v, key_run = jax.random.split(key)
        z0 = jnp.array([4.0, 3.0])
        _, g0, _ = potential_fn(z0)
        state = ULDState(z0, jax.random.normal(key_v, (2,)), g0, ())
        return uld_chain(key_run, state, potential_fn, tau, gamma, 300)

    final, info = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(7), num))
    assert float(jnp.min(info.acceptance_rate)) == 1.0 and not bool(jnp.any(info.is_divergent))
    stationary = _uld_stationary_cov(precision, tau, gamma)
    mz, cz = _cov_z_scores(np.asarray(final.position), CORR_MEAN, stationary)
    assert np.max(np.abs(mz)) < Z_MAX and np.max(np.abs(cz)) < Z_MAX
    # the test can tell the chain from the target: the bias (39% on the first variance here,
    # tau sqrt(L) = 0.77) is many Monte Carlo errors wide
    bias = np.abs(stationary - CORR_COV)
    se = np.sqrt((np.outer(np.diag(CORR_COV), np.diag(CORR_COV)) + CORR_COV**2) / num)
    assert np.max(bias / se) > 2 * Z_MAX


def test_uld_bias_vanishes_with_the_step():
    precision = np.linalg.inv(CORR_COV)
    errs = [np.max(np.abs(_uld_stationary_cov(precision, tau, 1.5) - CORR_COV))
            for tau in (0.2, 0.1, 0.05)]
    # first order in tau
    assert 1.6 < errs[0] / errs[1] < 2.4 and 1.6 < errs[1] / errs[2] < 2.4


# ----- MALA with the Bernoulli-factory test (scores only) ------------------------------------------


# two overlapping anisotropic components: the score bends along every MALA step, so the trapezoid
# energy difference is biased while a one-score estimate of its error is unbiased
FACTORY_MIX = targets.GaussianMixture(
    np.array([0.3, 0.7]), np.array([[-1.0, 0.0], [1.0, 0.5]]),
    np.array([0.25 * np.eye(2), [[0.3, 0.1], [0.1, 0.2]]]))


def _mixture_potentials(mix, t=0.0):
    with_value = lambda z: (mix.energy(z, t), -mix.score(z, t), ())
    gradient_only = lambda z: (jnp.zeros(()), -mix.score(z, t), ())
    return with_value, gradient_only


def _exact_correction_moments(potential_fn, start, new, clip):
    """delta = log r - log r_trap exactly, and E[clip(R / 2)] by a fine midpoint rule in u."""
    u = (np.arange(20000) + 0.5) / 20000
    step = new.position - start.position
    estimates = jax.vmap(lambda v: -jnp.vdot(
        potential_fn(start.position + v * step)[1] - (1 - v) * start.grad - v * new.grad, step))(
        jnp.asarray(u))
    delta = float(0.5 * jnp.vdot(step, start.grad + new.grad) - (new.potential - start.potential))
    return delta, float(jnp.mean(jnp.clip(estimates / 2, -clip, clip))), np.asarray(estimates)


@pytest.mark.parametrize("clip", [0.05, 1.0])
def test_factory_acceptance_equals_its_closed_form(clip):
    # given the states: P(accept) = min(1, e^{log r_trap}) exp(E[clip(R/2, B)] - B); with B = 0.05
    # some estimates are clipped and the closed form uses the clipped mean
    potential_fn, gradient_only = _mixture_potentials(FACTORY_MIX)
    start = init_inner(jnp.array([0.2, -0.4]), potential_fn)
    new = init_inner(jnp.array([0.7, 0.1]), potential_fn)
    delta, clipped_mean, estimates = _exact_correction_moments(potential_fn, start, new, clip)
    # the one-score estimate is unbiased for the trapezoid's error
    assert float(np.mean(estimates)) == pytest.approx(delta, rel=1e-6)
    assert (np.max(np.abs(estimates)) / 2 > clip) == (clip < 0.5)
    start_g, new_g = (init_inner(s.position, gradient_only) for s in (start, new))
    num = 200000
    keys = jax.random.split(jax.random.key(11), num)
    for log_ratio in (-0.7, 0.4):
        test = jax.jit(jax.vmap(lambda k: factory_test(k, log_ratio, start_g, new_g, gradient_only,
                                                        clip)[1]))
        info = test(keys)
        prob = min(1.0, math.exp(log_ratio)) * math.exp(clipped_mean - clip)
        freq = float(jnp.mean(info.is_accepted))
        assert abs(freq - prob) < Z_MAX * math.sqrt(prob * (1 - prob) / num)
        # coins run only after a first-stage acceptance, J ~ Poisson(2B) of them with early
        # rejection: E[evals] = P(first) sum_k P(J >= k) p^{k-1}, p = (B + E clip(W)) / (2B)
        p = (clip + clipped_mean) / (2 * clip)
        ks = np.arange(1, 200)
        tail = 1.0 - stats.poisson.cdf(ks - 1, 2 * clip)
        expected = min(1.0, math.exp(log_ratio)) * float(np.sum(tail * p ** (ks - 1)))
        evals = np.asarray(info.num_evals, dtype=np.float64)
        assert abs(evals.mean() - expected) < Z_MAX * evals.std() / math.sqrt(num)
        np.testing.assert_array_equal(info.num_evals, info.num_coins)
        assert (int(jnp.sum(info.num_clipped)) > 0) == (clip < 0.5)
        assert not bool(jnp.any(info.is_divergent))


def _moment_z_scores(samples, reference):
    """z-scores of the means, variances and P(x_0 < 0) of samples against a large exact sample."""
    def stats_of(x):
        return np.array([*x.mean(0), *x.var(0), np.mean(x[:, 0] < 0)])

    n = samples.shape[0]
    ref = stats_of(reference)
    centred = reference - reference.mean(0)
    sd = np.array([*reference.std(0), *np.std(centred**2, axis=0),
                   math.sqrt(ref[-1] * (1 - ref[-1]))]) / math.sqrt(n)
    return (stats_of(samples) - ref) / sd


@pytest.mark.parametrize("target,correction,passes", [
    ("gaussian", "unbiased", True),
    ("mixture", "unbiased", True),
    ("mixture", "trapezoid", False),  # MALA on the trapezoid difference alone: biased on a mixture
    ("mixture", "biased", False),  # the factory on a deliberately biased energy difference
])
def test_factory_mala_keeps_the_target_exactly_invariant(target, correction, passes):
    # exact draws in, 20 MALA steps from gradients only, exact law out; the negative controls run
    # the same test and fail it by many standard errors
    mix = (targets.GaussianMixture(np.ones(1), CORR_MEAN[None], CORR_COV[None])
           if target == "gaussian" else FACTORY_MIX)
    _, gradient_only = _mixture_potentials(mix)
    num = 20000
    start = mix.sample(jax.random.key(1), num)

    def biased(key, potential_fn, old, new):
        # estimates U(z') - U(z) + 0.1 (|z'|^2 - |z|^2): the chain then targets p exp(-0.1 |z|^2)
        return trapezoid_correction(key, potential_fn, old, new) + 0.1 * (
            jnp.vdot(new.position, new.position) - jnp.vdot(old.position, old.position))

    def trapezoid(old, new):
        return 0.5 * jnp.vdot(new.position - old.position, old.grad + new.grad)

    def run(key, x):
        state = init_inner(x, gradient_only)
        if correction == "trapezoid":
            return mala_chain(key, state, gradient_only, 0.1, 20, trapezoid)
        return mala_factory_chain(key, state, gradient_only, 0.1, 20, 1.0,
                                  correction_fn=biased if correction == "biased" else
                                  trapezoid_correction)

    final, info = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(3), num), start)
    assert not bool(jnp.any(info.is_divergent))
    if correction != "trapezoid":
        clip_rate = float(jnp.sum(info.num_clipped)) / float(jnp.sum(info.num_coins))
        assert clip_rate < 5e-3
    z = _moment_z_scores(np.asarray(final.position),
                         np.asarray(mix.sample(jax.random.key(2), 400000)))
    assert (np.max(np.abs(z)) < Z_MAX) == passes, z
    if not passes:
        assert np.max(np.abs(z)) > 2 * Z_MAX


def test_factory_mala_counts_every_evaluation():
    # one particle, no vmap: the callback fires once per executed evaluation
    calls = [0]

    def gradient_only(z):
        jax.debug.callback(lambda _: calls.__setitem__(0, calls[0] + 1), z)
        return jnp.zeros(()), -FACTORY_MIX.score(z, 0.0), ()

    chain = jax.jit(lambda k, x: mala_factory_chain(k, init_inner(x, gradient_only), gradient_only,
                                                    0.2, 10, 0.5))
    for seed in range(5):
        calls[0] = 0
        _, info = chain(jax.random.key(seed), jnp.array([0.3, -0.2]))
        jax.block_until_ready(info)
        assert calls[0] == 1 + 10 + int(info.num_evals)
        assert int(info.num_rounds) == int(info.num_evals)  # one coin per round


def test_factory_mala_refuses_non_finite_scores():
    # the gradient is NaN off the unit ball: such proposals and coin points are refused and flagged
    def gradient_only(z):
        inside = jnp.sum(z**2) < 1.0
        return jnp.zeros(()), jnp.where(inside, z + 0.3 * z**3, jnp.nan), ()

    state, info = mala_factory_chain(jax.random.key(6), init_inner(jnp.zeros(2), gradient_only),
                                     gradient_only, 0.8, 40, 0.5)
    assert bool(jnp.all(jnp.isfinite(state.position))) and float(jnp.sum(state.position**2)) < 1
    assert bool(info.is_divergent)
