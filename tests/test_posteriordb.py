"""posteriordb: loading, transforms, and every log-density against an independent scipy.stats version.

The scipy densities below are written from the Stan programs (summarised in
shared/posteriordb/README.md) on the constrained scale, observation by observation, with their own
numpy transforms and log-Jacobians; they share no code with scoresample.posteriordb.models. Log-
densities are compared up to an additive constant (normalising constants may differ), i.e. through
differences between points.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from scoresample import posteriordb as pdb

try:
    ROOT = pdb.find_root()
except FileNotFoundError:  # pragma: no cover - the data folder is not shipped with the package
    pytest.skip("no posteriordb folder (set SCORESAMPLE_POSTERIORDB)", allow_module_level=True)

NAMES = pdb.list_posteriors(ROOT)

EXPECTED_DIMS = {
    "eight_schools-eight_schools_noncentered": 10, "nes2000-nes": 10, "diamonds-diamonds": 26,
    "kidiq-kidscore_momhsiq": 4, "earnings-logearn_interaction": 5,
    "mesquite-logmesquite_logvash": 7, "sblrc-blr": 6, "arK-arK": 7, "garch-garch11": 4,
    "gp_pois_regr-gp_pois_regr": 13, "low_dim_gauss_mix-low_dim_gauss_mix": 5,
}


@pytest.fixture(scope="module")
def posteriors():
    return {name: pdb.load(name, root=ROOT) for name in NAMES}


# ---------------------------------------------------------------------------------------------
# Independent scipy.stats log-densities, z -> log p(z) up to a constant
# ---------------------------------------------------------------------------------------------

def _logit_jac(u):
    p = special.expit(u)
    return p, math.log(p) + math.log1p(-p)


def _regression(x, y, z, log_prior=lambda coef, sigma: 0.0):
    coef, sigma = z[:-1], math.exp(z[-1])
    return (stats.norm.logpdf(y, loc=x @ coef, scale=sigma).sum() + log_prior(coef, sigma) + z[-1])


def sp_eight_schools(d, z):
    theta_trans, mu, tau = z[:8], z[8], math.exp(z[9])
    theta = mu + tau * theta_trans
    return (stats.norm.logpdf(theta_trans).sum() + stats.norm.logpdf(d["y"], theta, d["sigma"]).sum()
            + stats.norm.logpdf(mu, 0, 5) + stats.halfcauchy.logpdf(tau, scale=5) + z[9])


def sp_nes(d, z):
    age = d["age_discrete"]
    x = np.column_stack([np.ones(len(age)), d["real_ideo"], d["race_adj"], age == 2, age == 3,
                         age == 4, d["educ1"], d["gender"], d["income"]]).astype(float)
    return _regression(x, d["partyid7"], z)


def sp_diamonds(d, z):
    xc = d["X"][:, 1:] - d["X"][:, 1:].mean(axis=0)
    b, intercept, sigma = z[:24], z[24], math.exp(z[25])
    return (stats.norm.logpdf(d["Y"], intercept + xc @ b, sigma).sum() + stats.norm.logpdf(b).sum()
            + stats.t.logpdf(intercept, 3, 8, 10) + stats.t.logpdf(sigma, 3, 0, 10) + z[25])


def sp_kidiq(d, z):
    x = np.column_stack([np.ones(len(d["kid_score"])), d["mom_hs"], d["mom_iq"]])
    return _regression(x, d["kid_score"], z,
                       lambda c, s: stats.halfcauchy.logpdf(s, scale=2.5))


def sp_earnings(d, z):
    h, m = d["height"].astype(float), d["male"].astype(float)
    x = np.column_stack([np.ones(len(h)), h, m, h * m])
    return _regression(x, np.log(d["earn"]), z)


def sp_mesquite(d, z):
    d1, d2 = d["diam1"], d["diam2"]
    x = np.column_stack([np.ones(len(d1)), np.log(d1 * d2 * d["canopy_height"]), np.log(d1 * d2),
                         np.log(d1 / d2), np.log(d["total_height"]), d["group"]])
    return _regression(x, np.log(d["weight"]), z)


def sp_blr(d, z):
    return _regression(d["X"], d["y"], z, lambda c, s: stats.norm.logpdf(c, 0, 10).sum()
                       + stats.halfnorm.logpdf(s, scale=10))


def sp_ark(d, z):
    y, k = d["y"], int(d["K"])
    alpha, beta, sigma = z[0], z[1:1 + k], math.exp(z[-1])
    total = stats.norm.logpdf(alpha, 0, 10) + stats.norm.logpdf(beta, 0, 10).sum()
    total += stats.halfcauchy.logpdf(sigma, scale=2.5) + z[-1]
    for t in range(k, len(y)):  # Stan's t = K+1..T, 1-based
        mean = alpha + sum(beta[j] * y[t - 1 - j] for j in range(k))
        total += stats.norm.logpdf(y[t], mean, sigma)
    return total


def sp_garch(d, z):
    y = d["y"]
    mu, alpha0 = z[0], math.exp(z[1])
    alpha1, jac1 = _logit_jac(z[2])
    frac, jac2 = _logit_jac(z[3])
    beta1 = (1 - alpha1) * frac
    total = z[1] + jac1 + math.log(1 - alpha1) + jac2
    sigma = float(d["sigma1"])
    for t in range(len(y)):
        if t > 0:
            sigma = math.sqrt(alpha0 + alpha1 * (y[t - 1] - mu) ** 2 + beta1 * sigma**2)
        total += stats.norm.logpdf(y[t], mu, sigma)
    return total


def sp_gp(d, z):
    x = d["x"].astype(float)
    rho, alpha, f_tilde = math.exp(z[0]), math.exp(z[1]), z[2:]
    cov = alpha**2 * np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * rho**2)) + 1e-10 * np.eye(len(x))
    f = np.linalg.cholesky(cov) @ f_tilde
    return (stats.gamma.logpdf(rho, 25, scale=1 / 4) + stats.halfnorm.logpdf(alpha, scale=2)
            + stats.norm.logpdf(f_tilde).sum() + stats.poisson.logpmf(d["k"], np.exp(f)).sum()
            + z[0] + z[1])


def sp_mix(d, z):
    mu = np.array([z[0], z[0] + math.exp(z[1])])
    sigma = np.exp(z[2:4])
    theta, jac = _logit_jac(z[4])
    lik = np.log(theta * stats.norm.pdf(d["y"], mu[0], sigma[0])
                 + (1 - theta) * stats.norm.pdf(d["y"], mu[1], sigma[1])).sum()
    return (stats.norm.logpdf(mu, 0, 2).sum() + stats.halfnorm.logpdf(sigma, scale=2).sum()
            + stats.beta.logpdf(theta, 5, 5) + lik + z[1] + z[2] + z[3] + jac)


SCIPY = {
    "eight_schools-eight_schools_noncentered": sp_eight_schools, "nes2000-nes": sp_nes,
    "diamonds-diamonds": sp_diamonds, "kidiq-kidscore_momhsiq": sp_kidiq,
    "earnings-logearn_interaction": sp_earnings, "mesquite-logmesquite_logvash": sp_mesquite,
    "sblrc-blr": sp_blr, "arK-arK": sp_ark, "garch-garch11": sp_garch,
    "gp_pois_regr-gp_pois_regr": sp_gp, "low_dim_gauss_mix-low_dim_gauss_mix": sp_mix,
}


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------

def test_all_eleven_listed():
    assert sorted(NAMES) == sorted(EXPECTED_DIMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_DIMS))
def test_logdensity_matches_scipy(posteriors, name):
    post = posteriors[name]
    assert post.dim == EXPECTED_DIMS[name]
    rng = np.random.default_rng(0)
    z_mean = np.asarray(post.reference_mean_position)
    draws = post.reference_draws.reshape(-1, len(post.param_names))
    points = [z_mean, np.zeros(post.dim)]
    points += [np.asarray(post.unconstrain(draws[i])) for i in rng.choice(len(draws), 2)]
    points += [z_mean + 0.1 * rng.standard_normal(post.dim)]
    ours = np.array([float(jax.jit(post.logdensity_fn)(jnp.asarray(p))) for p in points])
    theirs = np.array([SCIPY[name](post.data, p) for p in points])
    assert np.all(np.isfinite(ours)) and np.all(np.isfinite(theirs))
    # equal up to one additive constant, to 1e-8 relative to the size of the log-densities
    scale = max(1.0, np.max(np.abs(theirs)))
    np.testing.assert_allclose(ours - ours[0], theirs - theirs[0], rtol=0, atol=1e-8 * scale)


@pytest.mark.parametrize("name", sorted(EXPECTED_DIMS))
def test_finite_value_and_gradient(posteriors, name):
    post = posteriors[name]
    value_and_grad = jax.jit(jax.value_and_grad(post.logdensity_fn))
    for z in (post.initial_position(), post.reference_mean_position):
        assert z.shape == (post.dim,)
        value, grad = value_and_grad(z)
        assert np.isfinite(value) and grad.shape == (post.dim,) and np.all(np.isfinite(grad))
    # a gradient check against central differences at the reference mean
    z = np.asarray(post.reference_mean_position)
    grad = np.asarray(value_and_grad(jnp.asarray(z))[1])
    i = int(np.argmax(np.abs(grad)))
    step = 1e-5 * max(1.0, abs(z[i]))
    e = np.zeros(post.dim)
    e[i] = step
    logp = post.logdensity_fn
    fd = (float(logp(jnp.asarray(z + e))) - float(logp(jnp.asarray(z - e)))) / (2 * step)
    np.testing.assert_allclose(grad[i], fd, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(EXPECTED_DIMS))
def test_transforms_round_trip(posteriors, name):
    post = posteriors[name]
    x = post.reference_draws[3, :20]
    back = jax.vmap(lambda a: post.to_reference_order(post.unconstrain(a)))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(back), x, rtol=1e-9, atol=1e-9)
    z = jnp.asarray(np.random.default_rng(1).standard_normal(post.dim))
    np.testing.assert_allclose(np.asarray(post.unconstrain(post.constrain(z))), np.asarray(z),
                               rtol=1e-7, atol=1e-7)
    params = post.constrain(z)
    assert set(params) == {n.split("[")[0] for n in post.param_names}
    assert post.to_reference_order(z).shape == (len(post.param_names),)
    assert post.reference_draws.shape == (10, 1000, len(post.param_names))
    assert np.all(np.isfinite(post.reference_draws))
    by_name = post.reference_draws_dict()
    assert set(by_name) == set(params)
    for name, value in by_name.items():
        assert value.shape == (10, 1000) + np.shape(params[name])


def test_param_names_and_constraints(posteriors):
    post = posteriors["eight_schools-eight_schools_noncentered"]
    assert post.param_names == tuple(f"theta[{i}]" for i in range(1, 9)) + ("mu", "tau")
    garch = posteriors["garch-garch11"]
    for z in np.random.default_rng(2).normal(scale=3.0, size=(20, 4)):
        p = garch.constrain(jnp.asarray(z))
        assert p["alpha0"] > 0 and 0 < p["alpha1"] < 1 and 0 < p["beta1"] < 1 - p["alpha1"]
    mix = posteriors["low_dim_gauss_mix-low_dim_gauss_mix"]
    mu = mix.constrain(jnp.asarray([1.0, -3.0, 0.0, 0.0, 0.0]))["mu"]
    assert mu[0] < mu[1]


def test_aliases_and_errors(tmp_path, monkeypatch):
    assert pdb.load("eight_schools", root=ROOT).name == "eight_schools-eight_schools_noncentered"
    assert pdb.load("garch11", root=ROOT).name == "garch-garch11"
    assert pdb.load("blr", root=ROOT).name == "sblrc-blr"
    with pytest.raises(ValueError, match="name"):
        pdb.load("no_such_model", root=ROOT)
    with pytest.raises(FileNotFoundError, match="root"):
        pdb.load("eight_schools", root=tmp_path)
    monkeypatch.setenv(pdb.ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="root"):
        pdb.load("eight_schools")
    monkeypatch.setenv(pdb.ENV_VAR, str(ROOT))
    assert pdb.load("kidiq").dim == 4


def test_pass_rule_exact_and_failing_cases(posteriors):
    ref = posteriors["kidiq-kidscore_momhsiq"].reference_draws
    same = pdb.pass_rule(ref, ref)
    assert same.passed and np.all(same.z == 0) and np.allclose(same.sd_ratio, 1.0)
    # halves of the reference agree with each other
    half = pdb.pass_rule(ref[:5], ref[5:])
    assert half.passed, half.to_markdown()
    # the combined standard error is sqrt(mcse^2 + ref_mcse^2)
    np.testing.assert_allclose(half.z, (half.mean - half.ref_mean)
                               / np.hypot(half.mcse, half.ref_mcse))
    # a mean shift of 6 combined standard errors in one parameter fails the mean test only
    shifted = ref[:5].copy()
    shifted[..., 1] += 6 * np.hypot(half.mcse[1], half.ref_mcse[1])
    res = pdb.pass_rule(shifted, ref[5:], param_names=posteriors["kidiq-kidscore_momhsiq"].param_names)
    assert not res.passed and res.failures == ("beta[2]",) and res.is_sd_ok.all()
    # a 20% wider spread fails the sd test
    mean = ref[:5].mean(axis=(0, 1))
    wide = mean + 1.2 * (ref[:5] - mean)
    res = pdb.pass_rule(wide, ref[5:])
    assert not res.passed and not res.is_sd_ok.any()
    # non-finite draws fail
    bad = ref[:5].copy()
    bad[0, 0, 0] = np.nan
    assert not pdb.pass_rule(bad, ref[5:]).passed
    with pytest.raises(ValueError, match="draws"):
        pdb.pass_rule(ref[..., :2], ref)
