"""Exact and calibrated checks of the sample-quality distances."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from scoresample import metrics, targets


def test_energy_distance_of_two_point_masses():
    # All within-sample distances vanish; cross distances are |a - b| = 5.
    x = np.tile([[0.0, 0.0]], (7, 1))
    y = np.tile([[3.0, 4.0]], (5, 1))
    assert metrics.energy_distance(x, y) == pytest.approx(10.0, rel=1e-14)
    assert metrics.energy_distance(x, y, unbiased=True) == pytest.approx(10.0, rel=1e-14)


def test_energy_distance_zero_for_identical_sets():
    x = np.asarray(jax.random.normal(jax.random.key(0), (301, 3)))
    assert metrics.energy_distance(x, x, block_size=64) == 0.0


def test_energy_distance_matches_scipy_in_1d():
    # scipy returns sqrt(2 int (F - G)^2), which equals the square root of our V-statistic.
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=123), rng.normal(0.3, 1.5, size=77)
    ours = metrics.energy_distance(u[:, None], v[:, None], block_size=16)
    assert ours == pytest.approx(scipy.stats.energy_distance(u, v) ** 2, rel=1e-12)


def test_energy_distance_u_and_v_statistics_closed_form():
    # Three points against two, all distances by hand.
    x = np.array([[0.0], [1.0], [3.0]])
    y = np.array([[1.0], [2.0]])
    cross = (1 + 2 + 0 + 1 + 2 + 1) / 6
    within_x = 2 * (1 + 3 + 2)
    within_y = 2 * 1
    v_stat = 2 * cross - within_x / 9 - within_y / 4
    u_stat = 2 * cross - within_x / 6 - within_y / 2
    assert metrics.energy_distance(x, y) == pytest.approx(v_stat, rel=1e-14)
    assert metrics.energy_distance(x, y, unbiased=True) == pytest.approx(u_stat, rel=1e-14)


def test_blocking_does_not_change_the_result():
    key_x, key_y = jax.random.split(jax.random.key(3))
    x = jax.random.normal(key_x, (61, 4))
    y = jax.random.normal(key_y, (40, 4)) + 0.2
    ref = metrics.energy_distance(x, y, block_size=1000)
    for block in (1, 7):
        assert metrics.energy_distance(x, y, block_size=block) == pytest.approx(ref, rel=1e-12)
    assert metrics.mmd(x, y, 1.3, block_size=5) == pytest.approx(metrics.mmd(x, y, 1.3), rel=1e-12)


def _abs_normal_mean(mu, var):
    s = math.sqrt(var)
    return (s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * var))
            + mu * (1 - 2 * scipy.stats.norm.cdf(-mu / s)))


def test_energy_distance_monte_carlo_calibration():
    # U-statistic: unbiased for the population distance between N(0, 1) and N(0.5, 1.5^2);
    # V-statistic of two samples of one law: mean (1/n + 1/m) E|X - X'|.
    mu, sd = 0.5, 1.5
    population = (2 * _abs_normal_mean(mu, 1 + sd**2) - _abs_normal_mean(0.0, 2.0)
                  - _abs_normal_mean(0.0, 2 * sd**2))
    n, m, reps = 200, 150, 40
    keys = jax.random.split(jax.random.key(7), reps)
    u_vals, v_vals = [], []
    for key in keys:
        kx, ky, kz = jax.random.split(key, 3)
        x = jax.random.normal(kx, (n, 1))
        y = mu + sd * jax.random.normal(ky, (m, 1))
        x2 = jax.random.normal(kz, (m, 1))
        u_vals.append(metrics.energy_distance(x, y, unbiased=True))
        v_vals.append(metrics.energy_distance(x, x2))
    u_vals, v_vals = np.array(u_vals), np.array(v_vals)
    z_u = (u_vals.mean() - population) / (u_vals.std(ddof=1) / math.sqrt(reps))
    expected_floor = (1 / n + 1 / m) * _abs_normal_mean(0.0, 2.0)
    z_v = (v_vals.mean() - expected_floor) / (v_vals.std(ddof=1) / math.sqrt(reps))
    assert abs(z_u) < 4.5, (u_vals.mean(), population)
    assert abs(z_v) < 4.5, (v_vals.mean(), expected_floor)


def test_mmd_closed_forms():
    # Point masses: k(a, b) = exp(-|a-b|^2 / (2 h^2)); MMD^2 = 2 - 2 k(a, b).
    x = np.zeros((4, 2))
    y = np.tile([[1.0, 1.0]], (3, 1))
    h = 0.7
    assert metrics.mmd(x, y, h) == pytest.approx(2 - 2 * math.exp(-2 / (2 * h**2)), rel=1e-13)
    assert metrics.mmd(x, x, h) == 0.0
    # Unbiased removes the k(x, x) = 1 diagonal.
    pts = np.array([[0.0], [1.0]])
    other = np.array([[0.5], [2.0]])
    k = lambda a, b: math.exp(-((a - b) ** 2) / (2 * h**2))
    kxx = k(0, 1)
    kyy = k(0.5, 2)
    kxy = (k(0, 0.5) + k(0, 2) + k(1, 0.5) + k(1, 2)) / 4
    assert metrics.mmd(pts, other, h, unbiased=True) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-13)
    assert metrics.mmd(pts, other, h) == pytest.approx((2 + 2 * kxx) / 4 + (2 + 2 * kyy) / 4 - 2 * kxy,
                                                       rel=1e-13)


def test_mmd_monte_carlo_calibration():
    # E k(X, Y) for X ~ N(a, s1^2), Y ~ N(b, s2^2) is h / sqrt(h^2 + s1^2 + s2^2) exp(-(a-b)^2 / (2 (...))).
    h, mu, sd = 1.0, 0.8, 1.2

    def ek(a, b, v):
        return h / math.sqrt(h**2 + v) * math.exp(-((a - b) ** 2) / (2 * (h**2 + v)))

    population = ek(0, 0, 2.0) + ek(mu, mu, 2 * sd**2) - 2 * ek(0, mu, 1 + sd**2)
    reps, n = 40, 150
    vals = []
    for key in jax.random.split(jax.random.key(11), reps):
        kx, ky = jax.random.split(key)
        vals.append(metrics.mmd(jax.random.normal(kx, (n, 1)), mu + sd * jax.random.normal(ky, (n, 1)),
                                h, unbiased=True))
    vals = np.array(vals)
    z = (vals.mean() - population) / (vals.std(ddof=1) / math.sqrt(reps))
    assert abs(z) < 4.5, (vals.mean(), population)


def test_median_bandwidth_exact():
    # Pooled points 0, 1, 3 (x) and 6 (y): distances 1, 3, 6, 2, 5, 3 -> median 3.
    assert metrics.median_bandwidth(np.array([[0.0], [1.0], [3.0]]), np.array([[6.0]])) == 3.0


def test_sliced_wasserstein_is_exact_w_in_1d():
    rng = np.random.default_rng(2)
    u, v = rng.normal(size=50), rng.gamma(2.0, size=37)
    sw1 = metrics.sliced_wasserstein(jax.random.key(0), u[:, None], v[:, None], 8, p=1)
    assert sw1 == pytest.approx(scipy.stats.wasserstein_distance(u, v), rel=1e-12)
    # W_2 of a shifted copy is the shift, whatever the direction.
    sw2 = metrics.sliced_wasserstein(jax.random.key(1), u[:, None], u[:, None] + 0.75, 4)
    assert sw2 == pytest.approx(0.75, rel=1e-12)


def test_sliced_wasserstein_point_masses_in_2d():
    # SW_2^2(delta_0, delta_b) = E (theta . b)^2 = |b|^2 / d, within Monte-Carlo error over theta.
    b = np.array([[3.0, 4.0]])
    num = 4000
    sw = metrics.sliced_wasserstein(jax.random.key(5), np.zeros((3, 2)), np.tile(b, (2, 1)), num)
    # (theta . b)^2 / |b|^2 = cos^2 phi has variance 1/8 for phi uniform on the circle.
    se = 25.0 * math.sqrt(1 / 8 / num)
    assert abs(sw**2 - 12.5) < 4.5 * se


def test_mode_weight_error_exact():
    mix = targets.four_modes_2d()
    means = np.asarray(mix.means)
    # 10 points: component counts 4, 3, 2, 1 against weights 0.1, 0.2, 0.3, 0.4.
    pts = np.concatenate([np.tile(means[k], (c, 1)) for k, c in enumerate([4, 3, 2, 1])])
    expected = 0.5 * (0.3 + 0.1 + 0.1 + 0.3)
    assert metrics.mode_weight_error(pts, mix) == pytest.approx(expected, abs=1e-14)
    exact = np.concatenate([np.tile(means[k], (c, 1)) for k, c in enumerate([1, 2, 3, 4])])
    assert metrics.mode_weight_error(exact, mix) == pytest.approx(0.0, abs=1e-14)


def test_mode_weight_error_on_subspace_mixture():
    mix = targets.subspace_mixture(6)
    xs = mix.sample(jax.random.key(0), 5000)
    err = metrics.mode_weight_error(xs, mix)
    # Each frequency has sd sqrt(w (1 - w) / n); the TV of exact draws is of that order.
    assert err < 4.5 * 0.5 * sum(math.sqrt(w * (1 - w) / 5000) for w in (0.1, 0.2, 0.3, 0.4))


def _placed(mix, counts, scale, shift, seed=0):
    """Points per component whose mean is mu_k + L_k shift and covariance scale^2 C_k exactly."""
    rng = np.random.default_rng(seed)
    basis = None if mix.basis is None else np.asarray(mix.basis)
    out = []
    for c, n in enumerate(counts):
        u = rng.standard_normal((n, mix.latent_dim))
        u -= u.mean(axis=0)
        u = u @ np.linalg.inv(np.linalg.cholesky(np.cov(u, rowvar=False))).T  # cov exactly I
        chol = np.linalg.cholesky(np.asarray(mix.covs_latent[c]))
        z = np.asarray(mix.means_latent[c]) + (scale * u + shift) @ chol.T
        out.append(z if basis is None else z @ basis.T)
    return np.concatenate(out)


@pytest.mark.parametrize("scale,shift", [(1.0, 0.0), (1.3, 0.0), (0.8, 0.5)])
def test_component_kl_exact(scale, shift):
    # Per component KL = 0.5 k (s^2 - 1 - ln s^2) + 0.5 |shift|^2 k (shift in whitened coordinates,
    # the same in each of the k directions); weighted by the mixture weights, which sum to 1.
    mix = targets.aniso_subspace_mixture(dim=8, latent_dim=4)
    counts = [40 + 5 * c for c in range(8)]
    pts = _placed(mix, counts, scale, shift)
    labels = np.asarray(mix.assign(jnp.asarray(pts)))
    assert np.array_equal(labels, np.repeat(np.arange(8), counts))  # the assignment is the placement
    k = 4
    expected = 0.5 * k * (scale**2 - 1 - math.log(scale**2)) + 0.5 * k * shift**2
    assert metrics.component_kl(pts, mix) == pytest.approx(expected, abs=1e-10)


def test_component_kl_floor_and_negative_control():
    # Exact draws sit near the finite-sample floor sum_k w_k k (k + 3) / (4 n_k); draws blurred by
    # 10% in the latent space (what a sampler leaving too much noise does) are far above it.
    mix = targets.aniso_subspace_mixture(dim=16, latent_dim=4)
    n = 8000
    xs = np.asarray(mix.sample(jax.random.key(3), n))
    w = np.asarray(mix.weights)
    floor = float(np.sum(w * 4 * 7 / (4 * n * w)))
    exact = metrics.component_kl(xs, mix)
    assert 0.3 * floor < exact < 2.5 * floor
    basis = np.asarray(mix.basis)
    labels = np.asarray(mix.assign(jnp.asarray(xs)))
    z = xs @ basis
    centre = np.asarray(mix.means_latent)[labels]
    blurred = (centre + 1.1 * (z - centre)) @ basis.T
    assert metrics.component_kl(blurred, mix) > 0.5 * 4 * (1.21 - 1 - math.log(1.21)) > 5 * floor
    one_lost = xs[labels != 0]
    assert metrics.component_kl(one_lost, mix) == math.inf


def test_bad_inputs_raise():
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="dimension"):
        metrics.energy_distance(x, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="x"):
        metrics.energy_distance(np.zeros(3), x)
    with pytest.raises(ValueError, match="bandwidth"):
        metrics.mmd(x, x + 1, bandwidth=-1.0)
    with pytest.raises(TypeError, match="rng_key"):
        metrics.sliced_wasserstein(0, x, x)
    with pytest.raises(ValueError, match="samples"):
        metrics.mode_weight_error(np.zeros((3, 3)), targets.four_modes_2d())
    with pytest.raises(TypeError, match="mixture"):
        metrics.component_kl(np.zeros((3, 2)), "mix")
