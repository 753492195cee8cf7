"""scoresample.sample at its defaults can be trusted (issue 15): exact expectations on non-Gaussian
targets for FORS and RTK, FORS on a 14-feature logistic regression, dense preconditioning by
default, and convergence warnings that fire on a run that cannot have converged and stay silent on
a healthy one."""

import json
import warnings

import arviz_stats
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoresample
from scoresample.bayes import sample
from scoresample.bayes.api import DENSE_MAX_DIM
from scoresample.diagnostics import ConvergenceWarning, convergence_problems
from scoresample.kernels.ula import ula

# pi(x) ~ exp(-sum_i |z_i|^p / p) with z = A x: the z_i are independent with E|z_i|^p = 1 exactly
# for every p >= 1 (|z_i|^p / p is Gamma(1/p, 1)), and Var |z_i|^p = p. The tests sample p = 3 on
# x[:4] and p = 4 on x[4:] in one run (d = 8).
_Q = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))[0]
A = _Q @ np.diag([1.0, 1.5, 2.0, 0.7]) @ _Q.T  # condition number 2.9, correlated coordinates
MAX_MCSE = 0.0075  # a 3% bias is then more than 4 Monte Carlo standard errors: the test has power


def _logdensity(x):
    """The product of the p = 3 target on x[:4] and the p = 4 target on x[4:] (one run checks both)."""
    a = jnp.asarray(A)
    return -jnp.sum(jnp.abs(a @ x[:4]) ** 3) / 3 - jnp.sum(jnp.abs(a @ x[4:]) ** 4) / 4


def _moment(x, p):
    """The mean over draws and coordinates of |z_i|^p, and its MCSE from ArviZ's ESS of the
    per-draw statistic (x has shape (chain, draw, 4))."""
    z = np.einsum("ij,cnj->cni", A, x)
    f = np.mean(np.abs(z) ** p, axis=-1)
    ess = float(arviz_stats.ess(f, method="mean", chain_axis=0, draw_axis=1))
    return float(f.mean()), float(f.std() / np.sqrt(ess))


def _is_exact(x, p):
    mean, mcse = _moment(x, p)
    assert mcse < MAX_MCSE, f"too few effective draws to detect a 3% bias (MCSE {mcse:.4f})"
    return abs(mean - 1.0) < 4.0 * mcse, mean, mcse


@pytest.mark.slow
@pytest.mark.parametrize("method,num_chains,num_draws", [("fors", 64, 10000), ("rtk", 16, 4000)])
def test_exact_expectations_at_defaults(method, num_chains, num_draws):
    # every tuning option at its default (FORS: clip rate below 1e-3); only the length of the run
    # is set (thin=1, so that the number of kernel steps is fixed), long enough that the MCSE is
    # below 0.75%
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        dt = sample(jax.random.key(1), _logdensity, init=jnp.zeros(8), method=method,
                    num_chains=num_chains, num_draws=num_draws, thin=1, progress_bar=False)
    x = dt["posterior"]["x"].values
    for p, block in ((3.0, x[..., :4]), (4.0, x[..., 4:])):
        ok, mean, mcse = _is_exact(block, p)
        assert ok, f"{method}: E|z|^{p} = {mean:.4f} +- {mcse:.4f}, exact 1"
        # negative control: the same draws, mis-scaled by 2% (a 6% or 8% bias), fail the test
        assert not _is_exact(1.02 * block, p)[0]
    assert not dt["sample_stats"]["diverging"].values.any()
    if method == "fors":
        stats = dt["sample_stats"]
        rate = stats["num_clipped"].values.sum() / stats["num_coins"].values.sum()
        assert rate <= 1e-3, rate
        details = json.loads(dt.attrs["warmup_details"])
        assert details["warmup_clip_tolerance"] == 1e-3
        assert details["warmup_clip_rate_trials"] > 0 and 0 <= details["warmup_clip_rate"] < 1
        assert dt.attrs["clip_rate"] == rate


@pytest.mark.slow
def test_exact_expectations_reject_ula_at_a_large_step():
    # negative control: unadjusted Langevin at h = 0.03 is biased by 3.5% (p = 3) and 6% (p = 4)
    algo = ula(_logdensity, 0.03)

    def chain(key):
        def body(state, k):
            state, _ = algo.step(k, state)
            return state, state.position

        return jax.lax.scan(body, algo.init(jnp.zeros(8)), jax.random.split(key, 20000))[1]

    x = np.asarray(jax.jit(jax.vmap(chain))(jax.random.split(jax.random.key(0), 16)))[:, 2000:]
    for p, block in ((3.0, x[..., :4]), (4.0, x[..., 4:])):
        ok, mean, _ = _is_exact(block, p)
        assert not ok and mean > 1.03


def _regression(num_features=14):
    """Logistic regression on the first 14 standardised features of scikit-learn's breast-cancer
    data, plus an intercept (d = 15), prior N(0, I)."""
    from scoresample.models import breast_cancer_logistic

    model = breast_cancer_logistic(num_features=num_features)
    return model.logdensity_fn, model.dim


@pytest.mark.slow
def test_fors_at_defaults_converges_on_a_14_feature_logistic_regression():
    logdensity_fn, dim = _regression()
    reference = sample(jax.random.key(0), logdensity_fn, init=jnp.zeros(dim), method="nuts",
                       num_draws=5000, progress_bar=False)
    ref_sd = reference["posterior"]["x"].values.reshape(-1, dim).std(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # a healthy run: no warning
        dt = sample(jax.random.key(1), logdensity_fn, init=jnp.zeros(dim), method="fors",
                    progress_bar=False)
    settings = json.loads(dt.attrs["settings"])
    assert settings["preconditioner"] == "dense" and dim <= DENSE_MAX_DIM
    assert dt["posterior"]["x"].shape == (4, 1000, dim)
    table = scoresample.diagnostics.summary(dt)
    assert table["r_hat"].max() <= 1.01
    assert table["ess_bulk"].min() >= 200
    sd = dt["posterior"]["x"].values.reshape(-1, dim).std(axis=0)
    assert np.all(np.abs(sd / ref_sd - 1) <= 0.1), sd / ref_sd


def test_a_run_that_cannot_have_converged_warns_with_the_numbers():
    # defaults (FORS; thin=1, not the automatic thinning that spans the draws apart), 5 warmup
    # steps and 20 draws on a non-Gaussian target whose coordinates are
    # scaled from 1e-2 to 1e2 and correlated
    scales = jnp.asarray([1e-2, 1.0, 1e2])
    rotation = jnp.asarray(np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0])

    def logdensity_fn(x):
        u = rotation @ x / scales
        return -0.5 * jnp.sum(u**2) - 0.1 * jnp.sum(u**4)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dt = sample(jax.random.key(0), logdensity_fn, init=jnp.full(3, 5.0), num_warmup=5,
                    num_draws=20, thin=1, progress_bar=False)
    messages = [str(r.message) for r in record if issubclass(r.category, ConvergenceWarning)]
    assert len(messages) == 1
    assert "R-hat above 1.01 for x[0] (" in messages[0]
    assert "bulk ESS below 400 (100 per chain x 4 chains) for x[0] (" in messages[0]
    # the same problems, as data
    problems = convergence_problems(dt)
    assert problems[0].startswith("R-hat above 1.01") and problems[1].startswith("bulk ESS")


def test_a_healthy_run_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        dt = sample(jax.random.key(2), lambda x: -0.5 * jnp.sum((x / jnp.array([1.0, 3.0])) ** 2),
                    init=jnp.zeros(2), method="mala", num_warmup=300, num_draws=2000,
                    progress_bar=False)
    assert convergence_problems(dt) == []


def test_divergences_and_clip_rate_are_problems():
    rng = np.random.default_rng(0)
    stats = {"diverging": np.zeros((4, 500), bool), "num_clipped": np.zeros((4, 500), np.int32),
             "num_coins": np.full((4, 500), 4, np.int32)}
    stats["diverging"][1, 7] = True
    stats["num_clipped"][0, :20] = 1  # 20 of 8000 estimates: 2.5e-3
    dt = scoresample.diagnostics.to_datatree({"x": rng.normal(size=(4, 500))}, stats)
    dt.attrs["settings"] = json.dumps({"method_options": {"clip_tolerance": 1e-3}})
    problems = convergence_problems(dt)
    assert problems == ["1 of 2000 transitions diverged (non-finite, runaway or overflowing steps)",
                        "clip rate 2.50e-03 (20 of 8000 estimates) above clip_tolerance 0.001"]
    dt.attrs["settings"] = json.dumps({"method_options": {"clip_tolerance": 1e-2}})
    assert len(convergence_problems(dt)) == 1


def test_auto_preconditioner_is_dense_up_to_the_threshold():
    kwargs = dict(method="mala", num_warmup=30, num_draws=10, num_chains=2, progress_bar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        small = sample(jax.random.key(0), lambda x: -0.5 * jnp.sum(x**2), init=jnp.zeros(3),
                       **kwargs)
        large = sample(jax.random.key(0), lambda x: -0.5 * jnp.sum(x**2),
                       init=jnp.zeros(DENSE_MAX_DIM + 1), preoptimize=False, **kwargs)
    assert json.loads(small.attrs["settings"])["preconditioner"] == "dense"
    assert json.loads(large.attrs["settings"])["preconditioner"] == "diagonal"
