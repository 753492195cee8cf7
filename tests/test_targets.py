import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from scoresample import processes, targets


def _dense_logpdf(mix, x, t):
    a, s2 = np.exp(-t), -np.expm1(-2 * t)
    w = np.asarray(mix.weights)
    mus, covs = np.asarray(mix.means), np.asarray(mix.covs)
    d = mix.dim
    dens = [w[k] * multivariate_normal(a * mus[k], a**2 * covs[k] + s2 * np.eye(d)).pdf(x)
            for k in range(len(w))]
    return np.log(np.sum(dens))


@pytest.mark.parametrize("t", [0.01, 0.3, 2.0])
@pytest.mark.parametrize("which", ["four_modes_2d", "subspace"])
def test_logdensity_matches_dense_formula(t, which):
    mix = targets.four_modes_2d() if which == "four_modes_2d" else targets.subspace_mixture(dim=5)
    x = np.linspace(-1.5, 1.3, mix.dim)
    assert np.isclose(float(mix.logdensity_t(jnp.asarray(x), t)), _dense_logpdf(mix, x, t), rtol=1e-10)


@pytest.mark.parametrize("t", [0.02, 0.7])
def test_score_is_gradient_and_energy_consistent(t):
    mix = targets.subspace_mixture(dim=6)
    x = jnp.linspace(-1.0, 2.0, 6)
    auto = jax.grad(mix.logdensity_t)(x, t)
    np.testing.assert_allclose(mix.score(x, t), auto, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(jax.grad(mix.energy)(x, t), -auto, rtol=1e-10, atol=1e-10)


def test_score_is_tweedie_of_samples():
    # E[a X0 - X_t | X_t] / s^2 averaged over X_t equals E[score(X_t)] = 0; stronger: the score at t
    # is the posterior-mean denoiser; check E[score(X_t) X_t^T] = -I (Stein's identity).
    mix = targets.four_modes_2d()
    t = 0.5
    xs = mix.sample(jax.random.key(1), 200_000, t=t)
    sc = jax.vmap(mix.score, (0, None))(xs, t)
    stein = np.asarray(sc.T @ xs / xs.shape[0])
    se = np.std(np.asarray(sc[:, :, None] * xs[:, None, :]).reshape(len(xs), -1), axis=0) / np.sqrt(len(xs))
    z = (stein.ravel() + np.eye(2).ravel()) / se
    assert np.all(np.abs(z) < 4.5), z


def test_sample_moments_match():
    mix = targets.four_modes_2d()
    xs = np.asarray(mix.sample(jax.random.key(0), 100_000))
    se = xs.std(0) / np.sqrt(len(xs))
    assert np.all(np.abs(xs.mean(0) - np.asarray(mix.mean)) < 4.5 * se)
    np.testing.assert_allclose(np.cov(xs.T), mix.cov, rtol=0.02)
    # assign recovers component weights
    counts = np.bincount(np.asarray(mix.assign(xs)), minlength=4) / len(xs)
    w = np.asarray(mix.weights)
    assert np.all(np.abs(counts - w) < 4.5 * np.sqrt(w * (1 - w) / len(xs)) + 2e-3)


def test_gaussian_is_closed_form():
    cov = np.array([[2.0, 0.3], [0.3, 0.5]])
    g = targets.Gaussian(np.array([1.0, -1.0]), cov)
    x = jnp.array([0.2, 0.4])
    t = 0.4
    a, s2 = np.exp(-t), -np.expm1(-2 * t)
    ct = a**2 * cov + s2 * np.eye(2)
    np.testing.assert_allclose(g.score(x, t), -np.linalg.solve(ct, np.asarray(x) - a * np.array([1.0, -1.0])),
                               rtol=1e-12)


def test_schedules_are_float64_safe():
    ts = processes.time_grid(10, 1e-5, 3.0, "geometric")
    assert ts[0] == 3.0 and ts[-1] == 1e-5 and np.all(np.diff(ts) < 0)
    np.testing.assert_allclose(processes.sigma2(1e-9), 2e-9, rtol=1e-8)
    lam = processes.log_snr(ts)
    np.testing.assert_allclose(processes.time_from_log_snr(lam), ts, rtol=1e-12)
    ts = processes.time_grid(7, 1e-3, 2.0, "log-snr")
    assert np.allclose(np.diff(processes.log_snr(ts)), np.diff(processes.log_snr(ts))[0])
    betas, abar, times = processes.li_yan_schedule(100)
    assert betas[0] == 100.0**-2 and np.all(np.diff(times) > 0)
    np.testing.assert_allclose(np.exp(-2 * times), abar, rtol=1e-12)


@pytest.mark.parametrize("bad, match", [
    (dict(weights=[0.5, -0.5]), "weights"),
    (dict(means=[[0.0, 1.0]]), "weights has"),
    (dict(covs=[[[1.0]], [[-1.0]]]), "positive definite"),
    (dict(basis=np.ones((3, 1))), "orthonormal"),
    (dict(means=[[np.nan], [1.0]]), "means"),
])
def test_bad_mixture_inputs(bad, match):
    kw = dict(weights=[0.5, 0.5], means=[[0.0], [1.0]], covs=[[[1.0]], [[1.0]]])
    kw.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        targets.GaussianMixture(**kw)


def test_bad_grid_inputs():
    with pytest.raises(ValueError, match="t_min"):
        processes.time_grid(10, 2.0, 1.0)
    with pytest.raises(ValueError, match="grid"):
        processes.time_grid(10, 0.1, 1.0, "cosine")
    with pytest.raises(TypeError, match="num_steps"):
        processes.time_grid(2.5, 0.1, 1.0)
