"""FORS: the rejection primitive, its paths, FORS-diffusion and FORS-proximal.

Exact answers where the math gives them (path identities, the acceptance probability exp(w - B), the
reverse kernel of a 1-D mixture, the cost of early rejection); Monte Carlo z-scores with fixed seeds
elsewhere (|z| < 4.5).
"""

import functools
import math

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import scoresample
from scoresample import diffusion, targets
from scoresample.kernels import fors as F
from scoresample.models import breast_cancer_logistic

B = 1.0
Z_MAX = 4.5


# ----- the primitive on q = N(0, 1), w(x) = 0.6 sin 2x ------------------------------------------

def _w(x):
    return 0.6 * jnp.sin(2.0 * x)


def _noisy_estimate(key, x):
    # unbiased for w(x) and inside [-B, B], so nothing is clipped and the output law is exact
    return _w(x) + 0.4 * jax.random.uniform(key, (), minval=-1.0, maxval=1.0)


_GRID = np.linspace(-12.0, 12.0, 240_001)
_Q = stats.norm.pdf(_GRID)
_WG = 0.6 * np.sin(2.0 * _GRID)


def _quad(values):
    return np.trapezoid(values, _GRID)


def _primitive_case(key, fixed, x0, nan_right):
    """One FORS run on q = N(0, 1) (or q = delta_{x0} when ``fixed``), with the noisy estimate of
    w, made NaN on x > 0 when ``nan_right``: one compiled program serves several tests."""

    def propose(k):
        return jnp.where(fixed, x0, jax.random.normal(k))

    def estimate(k, x):
        return jnp.where(nan_right & (x > 0), jnp.nan, _noisy_estimate(k, x))

    return F.fors_rejection(key, propose, estimate, B, max_proposals=64, max_poisson=16)


_run_primitive = jax.jit(jax.vmap(_primitive_case, in_axes=(0, None, None, None)))


def test_primitive_chi_square_and_exact_cost():
    n = 20_000
    res = _run_primitive(jax.random.split(jax.random.key(0), n), False, 0.0, False)
    assert bool(jnp.all(res.is_accepted)) and not bool(jnp.any(res.is_overflow))
    assert int(jnp.sum(res.num_clipped)) == 0
    x = np.asarray(res.candidate)

    # chi-square against p ~ N(0, 1) exp(0.6 sin 2x), on 25 bins of equal target mass
    dens = _Q * np.exp(_WG)
    cdf = np.cumsum(dens)
    cdf /= cdf[-1]
    edges = np.interp(np.linspace(0, 1, 26)[1:-1], cdf, _GRID)
    counts = np.bincount(np.searchsorted(edges, x), minlength=25)
    assert stats.chisquare(counts).pvalue > 1e-3
    # the same test rejects the proposal law itself (the test has power)
    q_counts = np.bincount(np.searchsorted(edges, np.asarray(
        jax.random.normal(jax.random.key(1), (n,)))), minlength=25)
    assert stats.chisquare(q_counts).pvalue < 1e-6

    # exact cost (Wald): E[proposals] = 1 / E_q[e^{w - B}], and one proposal executes
    # sum_{k>=1} P(J >= k) p(x)^{k-1} evaluations, p(x) = (B + w(x)) / 2B the mean heads probability
    accept = _quad(_Q * np.exp(_WG - B))
    lam = 2 * B
    tail = 1 - np.cumsum([math.exp(-lam) * lam**j / math.factorial(j) for j in range(40)])
    p = (B + _WG) / (2 * B)
    per_proposal = _quad(_Q * sum(tail[k - 1] * p ** (k - 1) for k in range(1, 40)))
    for got, want in [(res.num_proposals, 1 / accept), (res.num_evals, per_proposal / accept)]:
        got = np.asarray(got, float)
        z = (got.mean() - want) / (got.std() / math.sqrt(n))
        assert abs(z) < Z_MAX, (got.mean(), want)
    # one coin per round with chunk_size = 1, and every counted coin is an evaluation
    np.testing.assert_array_equal(res.num_evals, res.num_rounds)
    np.testing.assert_array_equal(res.num_evals, res.num_coins)


def test_primitive_acceptance_given_x_is_exp_w_minus_b():
    # with q = delta_x the number of proposals is geometric with success probability exp(w(x) - B)
    n = 20_000
    keys = jax.random.split(jax.random.key(2), n)
    for x0 in [-0.9, 0.0, 0.7]:
        res = _run_primitive(keys, True, x0, False)
        assert bool(jnp.all(res.is_accepted)) and not bool(jnp.any(res.is_overflow))
        np.testing.assert_array_equal(res.candidate, x0)
        p = math.exp(0.6 * math.sin(2 * x0) - B)
        proposals = np.asarray(res.num_proposals, float)
        z = (proposals.mean() - 1 / p) / math.sqrt((1 - p) / p**2 / n)
        assert abs(z) < Z_MAX, (x0, n / proposals.sum(), p)


def test_primitive_chunks_count_masked_work_and_inactive_does_nothing():
    n = 4000

    def one(key, active):
        return F.fors_rejection(key, lambda kk: jax.random.normal(kk), _noisy_estimate, B,
                                max_proposals=64, max_poisson=16, chunk_size=4,
                                is_active=active)

    run = jax.jit(jax.vmap(one, in_axes=(0, None)))
    keys = jax.random.split(jax.random.key(3), n)
    res = run(keys, True)
    np.testing.assert_array_equal(res.num_evals, 4 * res.num_rounds)
    assert bool(jnp.all(res.num_coins <= res.num_evals))
    assert float(jnp.mean(res.num_evals - res.num_coins)) > 0.5  # masked entries were counted
    # the law is the same: mean of the output against the exact mean of p
    want = _quad(_GRID * _Q * np.exp(_WG)) / _quad(_Q * np.exp(_WG))
    x = np.asarray(res.candidate)
    assert abs(x.mean() - want) / (x.std() / math.sqrt(n)) < Z_MAX

    off = run(keys, False)
    assert not bool(jnp.any(off.is_accepted)) and int(jnp.sum(off.num_evals)) == 0


def test_primitive_nonfinite_estimates_reject_and_flag():
    res = _run_primitive(jax.random.split(jax.random.key(4), 4000), False, 0.0, True)
    x = np.asarray(res.candidate)
    assert bool(jnp.all(res.is_accepted)) and bool(jnp.any(res.is_divergent))
    # a positive candidate is accepted only when J = 0 (no coin flipped; probability e^-2), a
    # negative one with probability e^{w(x) - B}: P(accepted draw > 0) = A+ / (A+ + A-)
    a_pos = 0.5 * math.exp(-2 * B)
    a_neg = _quad(np.where(_GRID < 0, _Q * np.exp(_WG - B), 0.0))
    want = a_pos / (a_pos + a_neg)
    got = float(np.mean(x > 0))
    assert abs(got - want) / math.sqrt(want * (1 - want) / x.size) < Z_MAX
    # a run is flagged exactly when it met a positive proposal that flipped a coin, which also
    # happens in runs that end on a negative draw
    assert np.mean(np.asarray(res.is_divergent)[x < 0]) > 0.1


def test_default_max_poisson_tail():
    m = F.default_max_poisson(1.0)
    assert stats.poisson.sf(m, 2.0) < 1e-12 <= stats.poisson.sf(m - 1, 2.0)


def test_default_max_proposals_bounds_the_worst_case():
    # every clipped estimate is >= -B, so a proposal is accepted with probability >= e^{-2B}
    for clip in (0.5, 1.0, 3.0):
        m = F.default_max_proposals(clip)
        fail = 1.0 - math.exp(-2.0 * clip)
        assert fail**m < 1e-12 <= fail ** (m - 1)
    assert F.default_max_proposals(1.0) == 191


# ----- paths ------------------------------------------------------------------------------------

def test_three_point_path_identities():
    r = jnp.linspace(0.0, 1.0, 1001)
    a, b, a_dot, b_dot = F.three_point_path(r)
    np.testing.assert_allclose(a**2 + (1 - a) ** 2 / 2 + b**2 / 2, 1.0, atol=1e-14)
    # Cov(e, e_dot) / v = a a' - (1 - a) a' / 2 + b b' / 2 = 0 and Var(e_dot) / v = 8 pi^2 / 27
    np.testing.assert_allclose(a * a_dot - (1 - a) * a_dot / 2 + b * b_dot / 2, 0.0, atol=1e-14)
    np.testing.assert_allclose(a_dot**2 + a_dot**2 / 2 + b_dot**2 / 2, 8 * math.pi**2 / 27,
                               rtol=1e-14)
    # the derivatives are those of (a, b); the endpoints are u (r = 1) and w + z (r = 0)
    da = jax.vmap(jax.grad(lambda s: F.three_point_path(s)[0]))(r)
    db = jax.vmap(jax.grad(lambda s: F.three_point_path(s)[1]))(r)
    np.testing.assert_allclose(da, a_dot, atol=1e-12)
    np.testing.assert_allclose(db, b_dot, atol=1e-12)
    np.testing.assert_allclose([a[-1], b[-1], a[0], b[0]], [1.0, 0.0, 0.0, 1.0], atol=1e-15)


def test_three_point_path_law_by_monte_carlo():
    # e ~ N(0, v) for every r, e_dot independent of e with variance (8 pi^2 / 27) v
    v, n = 0.37, 200_000
    ku, kw, kz, kr = jax.random.split(jax.random.key(5), 4)
    u = math.sqrt(v) * jax.random.normal(ku, (n,))
    w = math.sqrt(v / 2) * jax.random.normal(kw, (n,))
    z = math.sqrt(v / 2) * jax.random.normal(kz, (n,))
    a, b, a_dot, b_dot = F.three_point_path(jax.random.uniform(kr, (n,)))
    e = np.asarray(a * u + (1 - a) * w + b * z)
    e_dot = np.asarray(a_dot * (u - w) + b_dot * z)
    checks = [(e**2, v), (e_dot**2, 8 * math.pi**2 / 27 * v), (e * e_dot, 0.0),
              (e**2 * e_dot**2, v * 8 * math.pi**2 / 27 * v)]  # fourth: independence
    for sample, want in checks:
        assert abs(sample.mean() - want) / (sample.std() / math.sqrt(n)) < Z_MAX


# ----- the schedule -----------------------------------------------------------------------------

def test_schedule_is_geometric_in_rho_and_float64():
    s = F.fors_schedule(1e-3, 4, second_moment=4.0, constant=0.3)
    assert s.t_from.dtype == np.float64 and s.num_steps == len(s.t_to) > 10
    np.testing.assert_array_equal(s.t_to[:-1], s.t_from[1:])
    assert s.t_from[0] == s.t_max and s.t_to[-1] == s.t_min
    assert np.all(np.diff(s.t_from) < 0)
    np.testing.assert_allclose(-np.expm1(-2 * s.t_min), 1e-6 / 8, rtol=1e-12)
    np.testing.assert_allclose(s.t_max, 0.5 * math.log(8 / 1e-6), rtol=1e-14)
    rho_from, rho_to = np.expm1(2 * s.t_from), np.expm1(2 * s.t_to)
    ratio = rho_from / rho_to
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)
    assert ratio[0] <= 1 + 1 / s.growth + 1e-12
    # the coefficients of every step match the exact ones computed in float64 from the times
    co = F.step_coefficients(s.t_from, s.t_to)
    for name in ["alpha", "eta", "s2", "eta_bar"]:
        np.testing.assert_allclose(getattr(s, name), getattr(co, name), rtol=1e-9)
    # G = C (d* + log(K/delta)) log(K/delta); a lower intrinsic dimension and a larger delta
    # give fewer steps
    lk = math.log(s.num_steps / 1e-3)
    assert abs(s.growth - 0.3 * (4 + lk) * lk) / s.growth < 0.02
    assert F.fors_schedule(1e-3, 4, second_moment=4.0, constant=0.3,
                           intrinsic_dim=1).num_steps < s.num_steps
    assert F.fors_schedule(1e-2, 4, second_moment=4.0, constant=0.3).num_steps < s.num_steps


# ----- FORS-diffusion ---------------------------------------------------------------------------

def _exact_reverse_kernel(mix, x0, co):
    """The reverse kernel p_{t_to}(y) N(y; x0/alpha, eta) of a 1-D mixture: weights, means, vars."""
    a = math.exp(-float(co.t_to))
    s2 = float(co.s2)
    eta = float(co.eta)
    w = np.asarray(mix.weights)
    mu = a * np.asarray(mix.means)[:, 0]
    var = a**2 * np.asarray(mix.covs)[:, 0, 0] + s2
    c = x0 / float(co.alpha)
    lw = np.log(w) + stats.norm.logpdf(c, mu, np.sqrt(var + eta))
    ww = np.exp(lw - lw.max())
    ww /= ww.sum()
    return ww, (mu * eta + c * var) / (var + eta), var * eta / (var + eta)


def test_one_diffusion_step_reproduces_the_exact_reverse_kernel():
    mix = targets.two_modes_1d()
    co = F.step_coefficients(0.31, 0.30)
    x0 = 0.0
    n = 20_000
    kernel = F.build_diffusion_kernel(64, 16)
    out, info = jax.jit(jax.vmap(lambda k: kernel(k, jnp.array([x0]), mix.score, co, B)))(
        jax.random.split(jax.random.key(6), n))
    y = np.asarray(out[:, 0])
    ww, mk, vk = _exact_reverse_kernel(mix, x0, co)
    mean = ww @ mk
    var = ww @ (vk + mk**2) - mean**2
    central4 = ww @ (3 * vk**2 + 6 * vk * (mk - mean) ** 2 + (mk - mean) ** 4)
    # the proposal's mean is already exact (Tweedie); its variance and shape are not
    assert abs(y.mean() - mean) / math.sqrt(var / n) < Z_MAX
    assert abs(y.var() - var) / math.sqrt((central4 - var**2) / n) < Z_MAX
    # power: the Gaussian proposal alone has a variance 10% too small (about 10 standard errors)
    assert (var - float(co.eta_bar)) / math.sqrt((central4 - var**2) / n) > 8
    cdf = lambda q: ww @ stats.norm.cdf((q[None, :] - mk[:, None]) / np.sqrt(vk)[:, None])
    assert stats.kstest(y, cdf).pvalue > 1e-3

    # acceptance: e^{-B} E_q[e^{w - E_q w}] = e^{-B} exp(KL(q || p)), with KL by quadrature
    rates = F.pooled_rates(info)
    s_plus = float(mix.score(jnp.array([x0]), 0.31)[0])
    x_bar = x0 / float(co.alpha) + float(co.alpha * co.eta) * s_plus
    grid = x_bar + math.sqrt(float(co.eta_bar)) * np.linspace(-12, 12, 200_001)
    log_q = stats.norm.logpdf(grid, x_bar, math.sqrt(float(co.eta_bar)))
    log_p = np.log(np.sum(ww[:, None] * stats.norm.pdf(grid[None, :], mk[:, None],
                                                       np.sqrt(vk)[:, None]), axis=0))
    kl = np.trapezoid(np.exp(log_q) * (log_q - log_p), grid)
    want = math.exp(-B + kl)
    proposals = float(np.sum(np.asarray(info.num_proposals)))
    assert abs(rates["acceptance"] - want) / math.sqrt(want * (1 - want) / proposals) < Z_MAX
    assert abs(want - math.exp(-1)) < 0.01  # "accepts at about e^-1"
    assert rates["clip_rate"] < 5e-3
    # one score at x_{k+1} plus the estimates; rounds likewise
    np.testing.assert_array_equal(info.num_grad_evals, 1 + info.num_coins)
    np.testing.assert_array_equal(info.num_rounds, info.num_grad_evals)


def test_fors_diffusion_sample_on_two_modes():
    mix = targets.two_modes_1d()
    n = 600
    res = diffusion.sample(jax.random.key(7), "fors", mix.score, dim=1, num_samples=n,
                           delta=1e-1, second_moment=mix.second_moment(), constant=0.1,
                           grid="geometric")
    t_min = res.settings["t_min"]
    x = np.asarray(res.samples[:, 0])
    assert np.all(np.isfinite(x)) and not bool(jnp.any(res.is_divergent))
    # mode weights and moments of p_{t_min}
    left = float(np.mean(x < 0))
    assert abs(left - 0.3) / math.sqrt(0.3 * 0.7 / n) < Z_MAX
    a, s2 = math.exp(-t_min), -math.expm1(-2 * t_min)
    mean = a * float(mix.mean[0])
    var = a**2 * float(mix.cov[0, 0]) + s2
    assert abs(x.mean() - mean) / math.sqrt(var / n) < Z_MAX
    # autobatched: nfe is what the batch executed (idle lanes included), nfe_needed what the
    # particles needed; the info is the per-step mean over particles, so its evaluations add up
    # to nfe_needed (no pilot ran: G and the second moment were given)
    assert res.settings["nfe_pilot"] == 0
    assert res.nfe >= res.nfe_needed
    assert float(np.sum(res.info.num_grad_evals)) == pytest.approx(res.nfe_needed, rel=1e-12)
    assert res.rounds * res.settings["num_lanes"] == pytest.approx(res.nfe * n, rel=1e-12)
    assert res.settings["num_steps"] == res.info.num_grad_evals.shape[0]
    rates = F.pooled_rates(res.info)
    assert rates["overflow_rate"] == 0.0 and rates["clip_rate"] < 1e-2
    assert abs(rates["acceptance"] - math.exp(-1)) < 0.02


def _left_weight_z(x, t_min, weight=0.3):
    """z-score of the left mode's weight at t_min (the mixture's modes sit far from 0)."""
    n = x.shape[0]
    return (float(np.mean(x < 0)) - weight) / math.sqrt(weight * (1 - weight) / n)


@pytest.mark.slow
def test_fors_diffusion_overflow_is_flagged_and_counted():
    # With B = 3 a proposal is accepted with probability about e^-3: four proposals run out in
    # most steps, and every such step flags its sample (never a silent draw). With the default
    # budget (from B) nothing runs out and the law is right.
    mix = targets.two_modes_1d()
    n = 400
    opts = dict(dim=1, num_samples=n, delta=0.2, second_moment=mix.second_moment(),
                growth=1.5, clip=3.0, grid="geometric")
    short = diffusion.sample(jax.random.key(30), "fors", mix.score, max_proposals=4, **opts)
    assert np.mean(np.asarray(short.is_divergent)) > 0.95
    rates = F.pooled_rates(short.info)
    assert rates["overflow_rate"] > 0.2 and rates["divergent_rate"] >= rates["overflow_rate"]
    full = diffusion.sample(jax.random.key(30), "fors", mix.score, **opts)
    assert full.settings["max_proposals"] == F.default_max_proposals(3.0)
    assert not bool(np.any(np.asarray(full.is_divergent)))
    assert F.pooled_rates(full.info)["overflow_rate"] == 0.0
    x = np.asarray(full.samples[:, 0])
    assert abs(_left_weight_z(x, full.settings["t_min"])) < Z_MAX
    # negative control: the same test rejects exact draws of a mixture whose weight is 0.45
    wrong = targets.GaussianMixture(np.array([0.45, 0.55]), np.asarray(mix.means),
                                    np.asarray(mix.covs))
    assert abs(_left_weight_z(np.asarray(wrong.sample(jax.random.key(31), n))[:, 0], 0.0)) > Z_MAX


def test_fors_diffusion_keeps_position_when_the_score_is_not_finite():
    plan = diffusion.build_plan("fors", lambda x, t: jnp.where(t > 1.0, jnp.nan, -x),
                                dim=2, delta=0.1, constant=0.1, second_moment=2.0,
                                grid="geometric")
    state = plan.algorithm.init(jnp.ones(2))
    new, info = jax.jit(plan.algorithm.step)(jax.random.key(8), state)
    assert bool(info.is_divergent) and bool(jnp.all(new.position == state.position))
    assert int(new.step) == 1


def test_fors_diffusion_pilot_chooses_the_grid_and_counts_its_cost():
    mix = targets.two_modes_1d()
    n = 300
    res = diffusion.sample(jax.random.key(40), "fors", mix.score, dim=1, num_samples=n,
                           delta=0.1, pilot_size=128)
    st = res.settings
    # the pilot's evaluations are in nfe (and in nfe_needed): per sample, beside the run's own
    assert st["nfe_pilot"] > 0 and st["pilot_size"] == 128
    assert res.nfe == pytest.approx(st["nfe_executed_run"] + st["nfe_pilot"] / n, rel=1e-12)
    assert res.nfe_needed > st["nfe_needed_run"]
    # the second moment E|X_0|^2 = 4.25, estimated from the pilot's 128 draws
    assert abs(st["second_moment_estimate"] - mix.second_moment()) < 0.6
    # G is the smallest whose predicted clip rate is below delta / 20 on the adaptive grid (its
    # density from the pilot's estimates); the run's measured rate stays well below delta
    assert st["grid"] == "adaptive" and st["clip_rate_target"] == pytest.approx(0.005)
    assert st["clip_rate_predicted"] <= 0.005 and 1.0 < st["growth"] < 10.0
    assert 0.2 < st["steps_saved_by_density"] < 0.8
    measured = F.pooled_rates(res.info)["clip_rate"]
    assert 0.2 * st["clip_rate_predicted"] < measured < 0.03
    assert abs(_left_weight_z(np.asarray(res.samples[:, 0]), st["t_min"])) < Z_MAX


def test_predicted_clip_rate_reads_the_pilot_tail():
    # |W| exponential with mean 0.1 B: P(|W| > level B) = exp(-10 level); a grid f times coarser
    # clips where the pilot's |W| > B / f
    levels = F.grid.TAIL_LEVELS
    num = 1e6
    counts = np.floor(num * np.exp(-10.0 * levels))
    for f in (1.0, 3.0, 10.0):
        got = F.predicted_clip_rate(counts, num, f)[0]
        assert got == pytest.approx(math.exp(-10.0 / f), rel=0.05)
    # beyond the measured tail (fewer than 10 counts) an exponential fit extrapolates
    for f in (0.5, 0.3):
        got = F.predicted_clip_rate(counts, num, f)[0]
        assert got == pytest.approx(math.exp(-10.0 / f), rel=0.5)
    growth, rate = F.growth_from_pilot(counts, num, 4.0, 1e-3)
    # the largest f with exp(-10 / f) <= 1e-3 is f = 10 / log(1000); G from f log1p(1/4)
    want = 1.0 / math.expm1(10.0 / math.log(1000.0) * math.log1p(0.25))
    assert growth == pytest.approx(want, rel=0.02) and rate <= 1e-3


def test_smooth_grid_is_geometric_early_and_coarse_late():
    s = F.fors_schedule(1e-2, 2, second_moment=2.0, growth=5.0, grid="smooth", lipschitz=4.0)
    g = F.fors_schedule(1e-2, 2, second_moment=2.0, growth=5.0)
    assert s.num_steps < 0.8 * g.num_steps
    rho_from, rho_to = np.expm1(2 * s.t_from), np.expm1(2 * s.t_to)
    ratio = rho_from / rho_to
    # near t_min (L rho << 1) consecutive rho differ by the factor 1 + 1/G, later by more
    assert 1.19 < ratio[-1] <= 1.2 and ratio[0] > 2.0
    c = np.log(rho_from / (1 + 4.0 * rho_from)) - np.log(rho_to / (1 + 4.0 * rho_to))
    np.testing.assert_allclose(c, c[0], rtol=1e-9)
    co = F.step_coefficients(s.t_from, s.t_to)
    for name in ["alpha", "eta", "s2", "eta_bar"]:
        np.testing.assert_allclose(getattr(s, name), getattr(co, name), rtol=1e-9)


def test_fors_diffusion_bad_inputs_and_a_broken_pilot():
    score = lambda x, t: -x
    for options, name in [(dict(delta=0.0), "delta"), (dict(delta=1.0), "delta"),
                          (dict(delta=float("nan")), "delta"), (dict(growth=-1.0), "growth"),
                          (dict(growth=float("inf")), "growth"),
                          (dict(second_moment=-1.0), "second_moment"),
                          (dict(second_moment=float("nan")), "second_moment"),
                          (dict(clip=float("nan")), "clip"), (dict(pilot_size=0), "pilot_size"),
                          (dict(grid="cubic"), "grid"), (dict(grid="smooth"), "lipschitz"),
                          (dict(grid="smooth", lipschitz=-1.0), "lipschitz"),
                          (dict(clip_rate_target=0.0), "clip_rate_target"),
                          (dict(num_lanes=0), "num_lanes"), (dict(driver="vmap"), "driver"),
                          (dict(max_poisson=0), "max_poisson")]:
        with pytest.raises(ValueError, match=name):
            diffusion.build_plan("fors", score, dim=2, **options)
    # a score that is NaN everywhere: the pilot cannot estimate anything, and says so
    with pytest.raises(ValueError, match="score_fn"):
        diffusion.sample(jax.random.key(41), "fors", lambda x, t: jnp.nan * x, dim=2,
                         num_samples=4, delta=0.3, pilot_size=8)


# ----- FORS-proximal ----------------------------------------------------------------------------

def _gaussian_problem(d=20, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    cov = (q * np.geomspace(0.3, 3.0, d)) @ q.T
    cov = 0.5 * (cov + cov.T)
    return np.linspace(-1.0, 1.0, d), cov


def _nan_valued(grad_fn):
    """A log-density whose value is NaN and whose (custom) derivative is ``grad_fn``."""

    @jax.custom_jvp
    def logdensity(x):
        return jnp.nan * jnp.sum(x)

    @logdensity.defjvp
    def _jvp(primals, tangents):
        (x,), (dx,) = primals, tangents
        return logdensity(x), jnp.dot(grad_fn(x), dx)

    return logdensity


def _ess(draws):
    """Per-coordinate ESS of (chains, draws, d) with BlackJAX's multi-chain estimator."""
    return np.asarray(blackjax.ess(jnp.asarray(draws), chain_axis=0, sample_axis=1))


def _check_moments(draws, mean, var, ess, var_ess=None):
    """|z| < 4.5 for every coordinate's mean and variance (z from the ESS)."""
    flat = draws.reshape(-1, draws.shape[-1])
    z_mean = (flat.mean(0) - mean) / np.sqrt(var / ess)
    z_var = (flat.var(0) / var - 1) / np.sqrt(2 / (ess if var_ess is None else var_ess))
    assert np.max(np.abs(z_mean)) < Z_MAX, z_mean
    assert np.max(np.abs(z_var)) < Z_MAX, z_var


def _run_chains(key, algo, state, num_chains, num_steps):
    def one(k):
        return blackjax.util.run_inference_algorithm(k, algo, num_steps, initial_state=state)[1]

    return jax.jit(jax.vmap(one))(jax.random.split(key, num_chains))


@pytest.mark.slow
def test_fors_proximal_gradients_only_correlated_gaussian():
    mean, cov = _gaussian_problem()
    prec = jnp.asarray(np.linalg.inv(cov))
    logdensity = _nan_valued(lambda x: -prec @ (x - jnp.asarray(mean)))
    x0 = jnp.asarray(mean) + 10.0
    assert math.isnan(float(logdensity(x0)))
    # the paper's proposal (curvature 0) in the Hessian metric, from a start 10 away in every
    # coordinate
    warm = F.fors_warmup(jax.random.key(9), logdensity, x0, 300, curvature=0.0)
    params = warm.parameters
    assert 1e-3 < params["step_size"] < 1.0
    algo = scoresample.fors(logdensity, **params)
    states, infos = _run_chains(jax.random.key(10), algo, warm.state, 8, 1500)
    draws = np.asarray(states.position)[:, 200:]
    assert np.all(np.isfinite(draws)) and not bool(jnp.any(infos.is_divergent))
    _check_moments(draws, mean, np.diag(cov), _ess(draws))
    rates = F.pooled_rates(infos)
    assert rates["clip_rate"] < 5e-3 and rates["overflow_rate"] == 0.0
    assert abs(rates["acceptance"] - math.exp(-1)) < 0.03



def test_fors_proximal_exact_proposal_samples_iid():
    # curvature 1 with M the covariance makes the proposal exact: W = 0 up to rounding, any step works
    mean, cov = _gaussian_problem(d=5, seed=1)
    prec = jnp.asarray(np.linalg.inv(cov))
    algo = scoresample.fors(grad_fn=lambda x: -prec @ (x - jnp.asarray(mean)), step_size=50.0,
                            inverse_mass_matrix=cov, curvature=1.0)
    states, infos = _run_chains(jax.random.key(11), algo, algo.init(jnp.asarray(mean)), 4, 500)
    assert float(jnp.max(infos.w_rms)) < 1e-8
    draws = np.asarray(states.position)
    # the exact proximal chain on a Gaussian is AR(1) with coefficient rho = 1 / (1 + eta) in
    # whitened coordinates, so the ESS of n draws is n (1 - rho) / (1 + rho)
    rho = 1.0 / (1.0 + 50.0)
    ess = draws.shape[0] * draws.shape[1] * (1 - rho) / (1 + rho)
    _check_moments(draws, mean, np.diag(cov), np.full(5, ess))


@pytest.mark.slow
def test_fors_proximal_logistic_regression_matches_nuts():
    model = breast_cancer_logistic()
    nuts_warm = blackjax.window_adaptation(blackjax.nuts, model.logdensity_fn)
    (nuts_state, nuts_params), _ = nuts_warm.run(jax.random.key(12), jnp.zeros(model.dim), 200)
    nuts = blackjax.nuts(model.logdensity_fn, **nuts_params)
    ref_states, _ = _run_chains(jax.random.key(13), nuts, nuts_state, 1, 600)
    ref = np.asarray(ref_states.position)
    ref_ess = _ess(ref)

    grad = jax.grad(model.logdensity_fn)
    logdensity = _nan_valued(grad)
    warm = F.fors_warmup(jax.random.key(14), logdensity, jnp.full(model.dim, 2.0), 300)
    algo = scoresample.fors(logdensity, **warm.parameters)
    states, infos = _run_chains(jax.random.key(15), algo, warm.state, 4, 2000)
    draws = np.asarray(states.position)[:, 200:]
    ess = _ess(draws)
    # the slowest coordinate needs about 2 / eta steps per independent draw; an ESS of 20 or more
    # keeps the z-scores below meaningful
    assert np.all(np.isfinite(draws)) and np.min(ess) > 20, np.min(ess)
    flat, ref_flat = draws.reshape(-1, model.dim), ref.reshape(-1, model.dim)
    z_mean = (flat.mean(0) - ref_flat.mean(0)) / np.sqrt(flat.var(0) / ess + ref_flat.var(0) / ref_ess)
    ratio = flat.var(0) / ref_flat.var(0)
    z_var = (ratio - 1) / np.sqrt(2 / ess + 2 / ref_ess)
    assert np.max(np.abs(z_mean)) < Z_MAX, z_mean
    assert np.max(np.abs(z_var)) < Z_MAX, z_var
    assert F.pooled_rates(infos)["clip_rate"] < 1e-2


def test_fors_jits_vmaps_and_runs_under_run_inference_algorithm():
    logdensity = lambda p: -0.5 * jnp.sum(p["a"] ** 2) - 0.5 * jnp.sum((p["b"] - 1.0) ** 2)
    algo = scoresample.fors(logdensity, 0.05)
    position = {"a": jnp.zeros(2), "b": jnp.ones(())}
    state = algo.init(position)
    # the log-density form, the bare-gradient form and the raw kernel give the same jitted step
    g_algo = scoresample.fors(grad_fn=jax.grad(logdensity), step_size=0.05)
    kernel = scoresample.fors.build_kernel()

    @jax.jit
    def three(key):
        raw, _ = kernel(key, scoresample.fors.init(position, logdensity), logdensity, 0.05, 1.0)
        return algo.step(key, state), g_algo.step(key, state)[0], raw

    (new, info), via_grad, raw = three(jax.random.key(0))
    np.testing.assert_allclose(via_grad.position["a"], new.position["a"], rtol=1e-12)
    np.testing.assert_allclose(raw.position["a"], new.position["a"], rtol=1e-12)
    assert jax.tree_util.tree_structure(new.position) == jax.tree_util.tree_structure(position)
    assert int(info.num_grad_evals) >= 2 and info.num_grad_evals.dtype == jnp.int32
    assert set(F.FORSInfo._fields) >= {"num_grad_evals", "acceptance_rate", "is_accepted",
                                       "is_divergent", "clip_rate", "num_proposals", "is_overflow"}
    # jit of vmap of run_inference_algorithm: all three in one program
    run = jax.jit(jax.vmap(lambda k: blackjax.util.run_inference_algorithm(
        k, algo, 20, initial_position=position)))
    final, (states, infos) = run(jax.random.split(jax.random.key(1), 3))
    assert states.position["a"].shape == (3, 20, 2) and infos.num_grad_evals.shape == (3, 20)
    assert np.all(np.isfinite(np.asarray(states.position["a"])))
    assert np.all(np.asarray(infos.num_grad_evals) >= 2)
    batched = jax.vmap(algo.init)({"a": jnp.zeros((3, 2)), "b": jnp.zeros(3)})
    assert batched.position["a"].shape == (3, 2)


@pytest.mark.parametrize("num_substeps", [0, 4])
def test_fors_proximal_never_returns_nan(num_substeps):
    # the gradient is NaN on half the space: the chain keeps its point there and flags it
    grad_fn = lambda x: jnp.where(x[0] > 0.5, jnp.nan, -x)
    algo = scoresample.fors(grad_fn=grad_fn, step_size=0.5, num_substeps=num_substeps)
    states, infos = _run_chains(jax.random.key(16), algo, algo.init(jnp.zeros(2)), 4, 300)
    assert np.all(np.isfinite(np.asarray(states.position)))
    assert bool(jnp.any(infos.is_divergent))
    moved_and_flagged = np.asarray(infos.is_accepted) & np.asarray(infos.is_divergent)
    if num_substeps == 0:  # one proximal step: a step that met a NaN never moved
        assert not np.any(moved_and_flagged)
    else:  # only a step with rescue substeps (one met a NaN, another moved) can be both
        assert not np.any(moved_and_flagged & (np.asarray(infos.num_substeps) == 0))


_PROX_VAR = np.array([1.0, 2.0])


@functools.lru_cache(maxsize=1)
def _prox_chains():
    """One compiled program for the prox-test tests: 32 chains of 600 FORS-proximal steps on 2-D
    targets, with the step size, tolerance, number of rescue steps and the target traced.

    ``is_quartic``: V = sum x^4 / 4 + x^2 / 2, whose curvature 3 x^2 + 1 grows without bound (like
    eight schools in theta_trans at large tau), so a step tuned near 0 meets eta L >> 1 further
    out; otherwise N(0, diag(1, 2)).
    """

    @jax.jit
    def run(key, starts, step_size, tolerance, num_substeps, is_quartic):
        def grad_fn(x):
            return jnp.where(is_quartic, -(x**3 + x), -x / jnp.asarray(_PROX_VAR))

        algo = scoresample.fors(grad_fn=grad_fn, step_size=step_size, prox_tolerance=tolerance,
                                num_substeps=num_substeps)

        def one(k, x0):
            return blackjax.util.run_inference_algorithm(k, algo, 600, initial_position=x0)[1]

        return jax.vmap(one)(jax.random.split(key, 32), starts)

    return run


@pytest.mark.slow
def test_fors_prox_test_keeps_x_where_the_prox_diverges():
    # from X = (1.5, 1.5) with eta = 0.5, eta L = 3.9: for most Y the iteration x+ <- T(x+) runs
    # off. Without rescue steps, a rejected step must keep X exactly
    x0 = jnp.full((32, 2), 1.5)
    states, info = _prox_chains()(jax.random.key(17), x0, 0.5, 1.0, 0, True)
    position = np.asarray(states.position)
    before = np.concatenate([np.asarray(x0)[:, None, :], position[:, :-1]], axis=1)
    rejected = np.asarray(info.is_prox_rejected)
    # at X0 a Y passes the test with probability 0.03 (by Monte Carlo): both outcomes in the
    # first ten steps of 32 chains
    assert 0.2 < rejected[:, :10].mean() < 0.99
    np.testing.assert_array_equal(rejected, np.asarray(info.prox_residual) > 1.0)
    # a rejected step keeps X exactly, runs no FORS, is flagged but not divergent, and its two
    # gradients (one prox iteration, then g) are counted
    assert np.all(position[rejected] == before[rejected])
    assert not np.any(np.asarray(info.is_accepted)[rejected])
    assert not np.any(np.asarray(info.is_divergent))
    assert np.all(np.asarray(info.num_coins)[rejected] == 0)
    assert np.all(np.asarray(info.num_proposals)[rejected] == 0)
    assert np.all(np.asarray(info.num_grad_evals)[rejected] == 2)
    assert np.all(np.asarray(info.num_proposals)[~rejected] >= 1)
    assert np.all(np.asarray(info.num_substeps) == 0)
    # warmup: a rejected step pulls the step size down like a divergent one
    stat = np.asarray(F.warmup_statistic(info, 1.0, 0.25))
    assert np.all(stat[rejected] == 0.0)
    assert F.pooled_rates(info)["prox_rejection_rate"] == pytest.approx(rejected.mean())
    # every chain stays where the target lives
    assert np.max(np.abs(position)) < 4.0

    # without the test (a tolerance it never meets before the chain has left) the clipped FORS
    # accepts far-away proposals: the chains run away
    states, info = _prox_chains()(jax.random.key(17), x0, 0.5, 1e300, 0, True)
    assert np.max(np.abs(np.asarray(states.position))) > 1e3


@pytest.mark.slow
def test_fors_rescue_steps_move_a_chain_the_prox_test_would_hold():
    # at X = (3, 3) (eta L = 14) almost every Y fails the test: with num_substeps = 0 a chain
    # stays put for hundreds of steps; four rescue steps on pi(x | Y), of size eta L ~ 1/4,
    # bring every chain back towards the mode within 40 steps
    x0 = jnp.full((32, 2), 3.0)
    states, info = _prox_chains()(jax.random.key(21), x0, 0.5, 1.0, 0, True)
    assert np.mean(np.all(np.asarray(states.position)[:, 39] == 3.0, axis=-1)) > 0.5
    states, info = _prox_chains()(jax.random.key(21), x0, 0.5, 1.0, 4, True)
    position = np.asarray(states.position)
    # every chain has reached the bulk (|x| < 2, where the target has nearly all its mass; a
    # chain may wander out again, as the target allows) within the 40 steps
    reached = np.any(np.all(np.abs(position[:, :40]) < 2.0, axis=-1), axis=1)
    assert np.all(reached), position[:, 39]
    rejected = np.asarray(info.is_prox_rejected)
    substeps = np.asarray(info.num_substeps)
    assert rejected[:, 0].all()
    np.testing.assert_array_equal(substeps, np.where(rejected, 4, 0))
    # each rescue step costs at least its two prox gradients, and they are counted
    assert np.all(np.asarray(info.num_grad_evals)[rejected] >= 2 + 4 * 2)
    assert not np.any(np.asarray(info.is_divergent))


@pytest.mark.slow
def test_fors_prox_rejections_keep_a_gaussian_invariant():
    # rejections that depend on Y only leave pi invariant, and so do the rescue steps on pi(x | Y):
    # on N(0, diag(1, 2)) with eta = 0.1 the residual is |T(x+) - x+| / sqrt(eta) =
    # eta^1.5 |Y_i| / var_i per coordinate, so a tolerance of 0.03 rejects the steps with large
    # |Y| (about 40% of them). That must not change the law (a rule that looked at X would: large
    # |X| would then stay and inflate the variance). The clip rate is far below the Monte Carlo
    # error.
    start = (jax.random.normal(jax.random.key(19), (32, 2))
             * jnp.sqrt(jnp.asarray(_PROX_VAR))[None, :])
    for num_substeps in (0, 4):
        states, infos = _prox_chains()(jax.random.key(20), start, 0.1, 0.03, num_substeps, False)
        rates = F.pooled_rates(infos)
        assert 0.2 < rates["prox_rejection_rate"] < 0.6, rates
        assert rates["clip_rate"] < 2e-3 and rates["divergent_rate"] == 0.0, rates
        draws = np.asarray(states.position)
        _check_moments(draws, np.zeros(2), _PROX_VAR, _ess(draws))


def test_bad_inputs_raise_before_compiling():
    traced = []

    def logdensity(x):
        traced.append(1)
        return -0.5 * jnp.sum(x**2)

    with pytest.raises(ValueError, match="step_size"):
        scoresample.fors(logdensity, -0.1)
    with pytest.raises(TypeError, match="step_size"):
        scoresample.fors(logdensity)
    with pytest.raises(ValueError, match="clip"):
        scoresample.fors(logdensity, 0.1, clip=0.0)
    with pytest.raises(TypeError, match="exactly one"):
        scoresample.fors(logdensity, 0.1, grad_fn=jax.grad(logdensity))
    with pytest.raises(TypeError, match="grad_fn"):
        scoresample.fors(grad_fn="not a function", step_size=0.1)
    with pytest.raises(ValueError, match="inverse_mass_matrix"):
        scoresample.fors(logdensity, 0.1, inverse_mass_matrix=np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="curvature"):
        scoresample.fors(logdensity, 0.1, curvature=2.0)
    with pytest.raises(ValueError, match="num_prox_steps"):
        scoresample.fors(logdensity, 0.1, num_prox_steps=-1)
    with pytest.raises(ValueError, match="max_proposals"):
        scoresample.fors(logdensity, 0.1, max_proposals=0)
    with pytest.raises(ValueError, match="prox_tolerance"):
        scoresample.fors(logdensity, 0.1, prox_tolerance=0.0)
    with pytest.raises(ValueError, match="num_substeps"):
        scoresample.fors(logdensity, 0.1, num_substeps=-1)
    algo = scoresample.fors(logdensity, 0.1, inverse_mass_matrix=np.ones(3))
    with pytest.raises(ValueError, match="position"):
        algo.init(jnp.array([0.0, jnp.nan, 1.0]))
    with pytest.raises(ValueError, match="inverse_mass_matrix"):
        algo.init(jnp.zeros(2))
    with pytest.raises(ValueError, match="gradient"):
        scoresample.fors(grad_fn=lambda x: x[:2], step_size=0.1).init(jnp.zeros(3))
    with pytest.raises(ValueError, match="metric"):
        F.fors_warmup(jax.random.key(0), logdensity, jnp.zeros(2), 10, metric="dense")
    with pytest.raises(ValueError, match="num_steps"):
        F.fors_warmup(jax.random.key(0), logdensity, jnp.zeros(2), 0)
    assert not traced  # nothing was traced, let alone compiled

    score = lambda x, t: -x
    for options, name in [(dict(delta=0.0), "delta"), (dict(delta=1.5), "delta"),
                          (dict(intrinsic_dim=-1.0), "intrinsic_dim"),
                          (dict(clip=-1.0), "clip"),
                          (dict(max_proposals=0), "max_proposals"),
                          (dict(t_min=1.0, t_max=0.5), "t_min"),
                          (dict(constant=0.0), "constant")]:
        with pytest.raises(ValueError, match=name):
            diffusion.build_plan("fors", score, dim=2, **options)
    with pytest.raises(TypeError):
        diffusion.build_plan("fors", score, dim=2, delta="small")


def test_breast_cancer_logistic_model():
    model = breast_cancer_logistic()
    assert model.dim == 31 and len(model.names) == 31 and model.names[0] == "intercept"
    x = model.data["X"]
    np.testing.assert_allclose(x[:, 1:].mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(x[:, 1:].std(0), 1.0, rtol=1e-12)
    # at beta = 0 every term is -log 2 and the prior term vanishes
    assert float(model.logdensity_fn(jnp.zeros(31))) == pytest.approx(-569 * math.log(2), rel=1e-12)
    beta = jnp.linspace(-0.3, 0.3, 31)
    eta = x @ np.asarray(beta)
    want = x.T @ (model.data["y"] - 1 / (1 + np.exp(-eta))) - np.asarray(beta)
    np.testing.assert_allclose(jax.grad(model.logdensity_fn)(beta), want, rtol=1e-10)
    with pytest.raises(ValueError, match="prior_scale"):
        breast_cancer_logistic(prior_scale=0.0)
