"""posteriordb: the shipped subset, loading, transforms, the pass rule, and every log-density
against an independent scipy.stats version.

The scipy densities below are written from the Stan programs of stan-dev/posteriordb on the
constrained scale, observation by observation, with their own numpy transforms and log-Jacobians;
they share no code with scoresample.posteriordb.models. Log-densities are compared up to an additive
constant (normalising constants may differ), i.e. through differences between points.

Everything runs on the data shipped in the package; a full posteriordb checkout (``root=``) is
exercised on a small one written here in posteriordb's layout.
"""

import gzip
import json
import math
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from scoresample import posteriordb as pdb
from scoresample.posteriordb.checks import QUANTILE_PROBS, ReferenceSummary, summarize
from scoresample.posteriordb.loader import PACKAGE_DATA

NAMES = pdb.list_posteriors(root=None)

EXPECTED_DIMS = {
    "eight_schools-eight_schools_noncentered": 10, "nes2000-nes": 10, "diamonds-diamonds": 26,
    "kidiq-kidscore_momhsiq": 4, "earnings-logearn_interaction": 5,
    "mesquite-logmesquite_logvash": 7, "sblrc-blr": 6, "arK-arK": 7, "garch-garch11": 4,
    "gp_pois_regr-gp_pois_regr": 13, "low_dim_gauss_mix-low_dim_gauss_mix": 5,
}


@pytest.fixture(scope="module")
def posteriors(monkeypatch_module):
    return {name: pdb.load(name) for name in NAMES}


@pytest.fixture(scope="module")
def monkeypatch_module():
    """The shipped subset even where ``SCORESAMPLE_POSTERIORDB`` is set."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(pdb.ENV_VAR, raising=False)
        yield mp


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
    draws = post.reference.points
    points = [z_mean, np.zeros(post.dim)]
    points += [np.asarray(post.unconstrain(draws[i])) for i in rng.choice(len(draws), 2, replace=False)]
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
    x = post.reference.points
    back = jax.vmap(lambda a: post.to_reference_order(post.unconstrain(a)))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(back), x, rtol=1e-9, atol=1e-9)
    z = jnp.asarray(np.random.default_rng(1).standard_normal(post.dim))
    np.testing.assert_allclose(np.asarray(post.unconstrain(post.constrain(z))), np.asarray(z),
                               rtol=1e-7, atol=1e-7)
    params = post.constrain(z)
    assert set(params) == {n.split("[")[0] for n in post.param_names}
    assert post.to_reference_order(z).shape == (len(post.param_names),)


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
    monkeypatch.delenv(pdb.ENV_VAR, raising=False)
    assert pdb.load("eight_schools").name == "eight_schools-eight_schools_noncentered"
    assert pdb.load("garch11").name == "garch-garch11"
    assert pdb.load("blr").name == "sblrc-blr"
    with pytest.raises(ValueError, match="name"):
        pdb.load("no_such_model")
    with pytest.raises(TypeError, match="name"):
        pdb.load(3)
    with pytest.raises(FileNotFoundError, match="root"):
        pdb.load("eight_schools", root=tmp_path)
    monkeypatch.setenv(pdb.ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="root"):
        pdb.load("eight_schools")


# ---------------------------------------------------------------------------------------------
# The shipped subset and a full checkout
# ---------------------------------------------------------------------------------------------

def test_shipped_subset_is_self_contained_small_and_licensed():
    assert pdb.find_root() is None or pdb.ENV_VAR in __import__("os").environ
    files = sorted(p.relative_to(PACKAGE_DATA).as_posix() for p in PACKAGE_DATA.rglob("*")
                   if p.is_file())
    assert "LICENCE.md" in files and "README.md" in files
    assert "BSD 3-Clause" in (PACKAGE_DATA / "LICENCE.md").read_text()
    assert {f"posteriors/{n}.json.gz" for n in EXPECTED_DIMS} <= set(files)
    assert all(f.endswith((".json.gz", ".md")) for f in files), files
    size = sum((PACKAGE_DATA / f).stat().st_size for f in files)
    assert size < 512 * 1024, size  # 340 KiB today, 290 KiB of it diamonds' 5000 x 25 data
    # nothing in the library looks for data outside the package
    import scoresample
    package = Path(scoresample.__file__).parent
    for source in package.rglob("*.py"):
        assert "shared/posteriordb" not in source.read_text(encoding="utf-8"), source


@pytest.mark.parametrize("name", sorted(EXPECTED_DIMS))
def test_shipped_reference_summary_is_consistent(posteriors, name):
    post = posteriors[name]
    ref = post.reference
    assert post.root is None and isinstance(ref, ReferenceSummary)
    k = len(post.param_names)
    assert ref.param_names == post.param_names and (ref.num_chains, ref.num_draws) == (10, 1000)
    assert ref.mean.shape == ref.sd.shape == ref.mcse_mean.shape == ref.mcse_sd.shape == (k,)
    assert np.all(ref.sd > 0) and np.all(ref.mcse_mean > 0) and np.all(ref.mcse_sd > 0)
    # about 10,000 effective draws (posteriordb's reference runs): mcse ~ sd / 100
    assert np.all(ref.mcse_mean < 0.03 * ref.sd) and np.all(ref.mcse_sd < 0.03 * ref.sd)
    np.testing.assert_array_equal(ref.quantile_probs, QUANTILE_PROBS)
    assert ref.quantiles.shape == (len(QUANTILE_PROBS), k)
    assert np.all(np.diff(ref.quantiles, axis=0) >= 0)
    assert np.all(ref.quantiles[0] <= ref.mean) and np.all(ref.mean <= ref.quantiles[-1])
    assert ref.points.shape == (8, k) and np.all(np.isfinite(ref.points))
    assert post.reference_info["inference"]["method"] == "stan_sampling"
    with pytest.raises(FileNotFoundError, match="root="):
        post.reference_draws  # noqa: B018 - the property reads the draws


def _write_checkout(root: Path, draws: np.ndarray, names) -> None:
    """A one-posterior posteriordb checkout (kidiq's model and data) with the given draws."""
    shipped = json.loads(gzip.decompress(
        (PACKAGE_DATA / "posteriors" / "kidiq-kidscore_momhsiq.json.gz").read_bytes()))
    data = gzip.decompress((PACKAGE_DATA / "data" / "kidiq.json.gz").read_bytes())
    (root / "posteriors").mkdir(parents=True)
    (root / "posteriors" / "kidiq-kidscore_momhsiq.json").write_text(json.dumps(shipped["info"]))
    for folder, member, payload in [
            ("data/data", "kidiq.json", data),
            ("reference_posteriors/draws/draws", "kidiq-kidscore_momhsiq.json",
             json.dumps([{n: chain[:, i].tolist() for i, n in enumerate(names)} for chain in draws]))]:
        (root / folder).mkdir(parents=True)
        with zipfile.ZipFile(root / folder / f"{member}.zip", "w") as archive:
            archive.writestr(member, payload)
    info = root / "reference_posteriors" / "draws" / "info"
    info.mkdir()
    (info / "kidiq-kidscore_momhsiq.info.json").write_text(json.dumps(shipped["reference_info"]))


def _ar1_chains(seed, mean, sd, shape=(4, 500), rho=0.3):
    """AR(1) chains (chains, draws, len(mean)) with the given stationary mean and sd."""
    rng = np.random.default_rng(seed)
    mean, sd = np.asarray(mean, float), np.asarray(sd, float)
    z = np.empty(shape + mean.shape)
    z[:, 0] = rng.standard_normal((shape[0],) + mean.shape)
    for t in range(1, shape[1]):
        z[:, t] = rho * z[:, t - 1] + math.sqrt(1 - rho**2) * rng.standard_normal(z[:, t].shape)
    return mean + sd * z


def test_full_checkout_reads_draws_and_summarises_them_like_the_shipped_data(tmp_path, monkeypatch,
                                                                            posteriors):
    shipped = posteriors["kidiq-kidscore_momhsiq"]
    draws = _ar1_chains(0, shipped.reference.mean, shipped.reference.sd, shape=(10, 300))
    _write_checkout(tmp_path, draws, shipped.param_names)
    full = pdb.load("kidiq", root=tmp_path)
    assert full.root == tmp_path and pdb.list_posteriors(tmp_path) == ["kidiq-kidscore_momhsiq"]
    np.testing.assert_array_equal(full.reference_draws, draws)
    by_name = full.reference_draws_dict()
    assert set(by_name) == {"beta", "sigma"} and by_name["beta"].shape == (10, 300, 3)
    assert full.reference_info == shipped.reference_info
    # the summary of a checkout is summarize() of its draws, the code that built the shipped ones
    want = summarize(draws, param_names=full.param_names)
    for field in ("mean", "sd", "mcse_mean", "mcse_sd", "quantiles", "points"):
        np.testing.assert_array_equal(getattr(full.reference, field), getattr(want, field))
    # the environment variable points at the same checkout
    monkeypatch.setenv(pdb.ENV_VAR, str(tmp_path))
    assert pdb.load("kidiq").root == tmp_path


def test_summary_round_trips_through_json_and_selects_by_name():
    draws = _ar1_chains(1, [0.0, 1.0, -2.0], [1.0, 2.0, 0.5])
    ref = summarize(draws, param_names=("a", "b[1]", "b[2]"))
    back = ReferenceSummary.from_json(json.loads(json.dumps(ref.to_json())))
    for field in ("mean", "sd", "mcse_mean", "mcse_sd", "quantiles", "points"):
        np.testing.assert_array_equal(getattr(back, field), getattr(ref, field))
    assert back.variable_names == ("a", "b")
    sub = ref.select_variables({"b": (2,), "a": ()})
    assert sub.param_names == ("b[1]", "b[2]", "a")
    np.testing.assert_array_equal(sub.mean, ref.mean[[1, 2, 0]])
    with pytest.raises(ValueError, match="not in the reference"):
        ref.select(["c"])


def test_pass_rule_from_a_summary_equals_the_rule_from_its_draws():
    """The verdict and every z-score and sd ratio from the summary are those from the draws."""
    ref = _ar1_chains(2, [1.0, -1.0, 3.0, 0.0], [0.5, 1.0, 2.0, 0.1], shape=(10, 1000))
    summary = summarize(ref)
    centre = ref.mean(axis=(0, 1))
    for seed, shift, scale in [(3, 0.0, 1.0), (4, 0.05, 1.0), (5, 0.0, 1.15), (6, 0.0, 0.95)]:
        x = _ar1_chains(seed, centre + shift, ref.std(axis=(0, 1)) * scale)
        a, b = pdb.pass_rule(x, ref), pdb.pass_rule(x, summary)
        assert a.passed == b.passed
        np.testing.assert_array_equal(a.z, b.z)
        np.testing.assert_array_equal(a.sd_ratio, b.sd_ratio)


def test_pass_rule_exact_and_failing_cases():
    ref = _ar1_chains(7, [1.0, -1.0, 3.0, 0.0], [0.5, 1.0, 2.0, 0.1], shape=(10, 1000))
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
    names = ("a", "b", "c", "d")
    res = pdb.pass_rule(shifted, summarize(ref[5:], param_names=names))
    assert not res.passed and res.failures == ("b",) and res.is_sd_ok.all()
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
    with pytest.raises(ValueError, match="draws"):
        pdb.pass_rule(ref[..., :2], summarize(ref))


@pytest.mark.parametrize("name", sorted(EXPECTED_DIMS))
def test_pass_rule_on_the_shipped_reference_sees_a_wrong_law(posteriors, name):
    """Independent Gaussian draws with the reference's means and sds pass against the shipped
    summary; the same draws with one sd 20% too large, or one mean moved by 8 combined standard
    errors, fail."""
    ref = posteriors[name].reference
    x = _ar1_chains(8, ref.mean, ref.sd, shape=(4, 1000), rho=0.0)
    assert pdb.pass_rule(x, ref).passed
    wide = x.copy()
    wide[..., 0] = ref.mean[0] + 1.2 * (x[..., 0] - ref.mean[0])
    assert not pdb.pass_rule(wide, ref).passed
    res = pdb.pass_rule(x, ref)
    moved = x.copy()
    moved[..., -1] += 8 * math.hypot(res.mcse[-1], res.ref_mcse[-1])
    assert pdb.pass_rule(moved, ref).failures == (ref.param_names[-1],)
