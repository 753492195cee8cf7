"""The shipped and generated data sets: exact laws where they are known, shapes, ranges, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from scoresample import datasets


@pytest.mark.parametrize("name", datasets.NAMES_2D)
def test_2d_sets_shape_dtype_and_determinism(name):
    x = datasets.make(name, jax.random.key(0), 500)
    assert x.shape == (500, 2) and x.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(x)))
    np.testing.assert_array_equal(x, datasets.make(name, jax.random.key(0), 500))
    assert not np.array_equal(x, datasets.make(name, jax.random.key(1), 500))


def test_eight_gaussians_follows_its_exact_mixture():
    mix = datasets.eight_gaussians_mixture()
    n = 40_000
    x = np.asarray(datasets.make("8gaussians", jax.random.key(3), n), dtype=np.float64)
    # component counts: chi-square against equal weights (7 dof)
    comp = np.asarray(jax.jit(jax.vmap(mix.assign))(jnp.asarray(x)))
    counts = np.bincount(comp, minlength=8)
    assert stats.chisquare(counts).pvalue > 1e-4
    # mean and second moment against the closed form, z-scores from the exact variances
    mean, cov = np.asarray(mix.mean), np.asarray(mix.cov)
    z_mean = (x.mean(0) - mean) / np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(z_mean) < 4.5)
    sq = np.sum(x**2, axis=1)
    exact_m2 = 8.0 + 2 * 0.125  # radius^2 + d sd^2
    assert abs(sq.mean() - exact_m2) / (sq.std() / np.sqrt(n)) < 4.5
    # within a component the offsets are N(0, 0.125 I)
    resid = x - np.asarray(mix.means)[comp]
    assert abs(resid.var() - 0.125) / (0.125 * np.sqrt(2.0 / resid.size)) < 4.5


def test_two_moons_mean_is_zero_and_points_lie_near_the_arcs():
    n = 20_000
    x = np.asarray(datasets.make("two-moons", jax.random.key(1), n), dtype=np.float64)
    # outer arc mean (0, 2/pi) and inner arc mean (1, 1/2 - 2/pi) average to the centring offset
    z = x.mean(0) / (x.std(0) / np.sqrt(n))
    assert np.all(np.abs(z) < 4.5)
    centres = np.array([[-1.0, -0.5], [1.0, 0.5]])  # arc centres after centring and scaling by 2
    dist = np.min(np.abs(np.linalg.norm(x[:, None, :] - centres[None], axis=-1) - 2.0), axis=1)
    assert np.quantile(dist, 0.99) < 0.1 * 4.0


def test_checkerboard_fills_only_dark_squares_uniformly():
    n = 16_000
    x = np.asarray(datasets.make("checkerboard", jax.random.key(2), n), dtype=np.float64)
    assert np.all(np.abs(x) <= 4.0)
    cell = np.floor((x + 4.0) / 2.0).astype(int)
    assert np.all((cell[:, 0] + cell[:, 1]) % 2 == 0)
    counts = np.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16)
    dark = counts[[i * 4 + j for i in range(4) for j in range(4) if (i + j) % 2 == 0]]
    assert stats.chisquare(dark).pvalue > 1e-4


def test_swiss_roll_radius_range():
    x = np.asarray(datasets.make("swiss-roll", jax.random.key(4), 5000))
    r = np.linalg.norm(x, axis=1)
    noise = 0.2 * 4.5 * np.sqrt(2)
    assert r.min() > 1.5 * np.pi / 5 - noise and r.max() < 4.5 * np.pi / 5 + noise


def test_digits_scaled_to_unit_interval_and_split_disjoint():
    x, y = datasets.load_digits(return_labels=True)
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    train, test = datasets.train_test_split("digits", jax.random.key(0), num_test=200)
    assert train.shape == (1597, 64) and test.shape == (200, 64)
    # a partition of the 1,797 images: the rows of train and test together are those of the set
    both = np.concatenate([np.asarray(train), np.asarray(test)])
    np.testing.assert_array_equal(np.unique(both, axis=0, return_counts=True)[1],
                                  np.unique(x, axis=0, return_counts=True)[1])
    np.testing.assert_array_equal(np.unique(both, axis=0), np.unique(x, axis=0))
    sub = np.asarray(datasets.make("digits", jax.random.key(0), 100))
    assert sub.shape == (100, 64)
    assert {r.tobytes() for r in sub} <= {r.tobytes() for r in x}
    assert datasets.dim_of("digits") == 64 and datasets.dim_of("two-moons") == 2


def test_2d_train_test_split_is_independent_draws():
    train, test = datasets.train_test_split("two-moons", jax.random.key(0), num_train=300,
                                            num_test=100)
    assert train.shape == (300, 2) and test.shape == (100, 2)
    assert not np.any(np.all(np.asarray(train)[:100] == np.asarray(test), axis=1))


@pytest.mark.parametrize("kwargs, error", [
    (dict(name="moons", rng_key=jax.random.key(0), num_samples=10), ValueError),
    (dict(name="two-moons", rng_key=jax.random.key(0), num_samples=0), ValueError),
    (dict(name="two-moons", rng_key=jax.random.key(0), num_samples=10.0), TypeError),
    (dict(name="two-moons", rng_key=0, num_samples=10), TypeError),
    (dict(name="digits", rng_key=jax.random.key(0), num_samples=5000), ValueError),
])
def test_bad_inputs_raise(kwargs, error):
    with pytest.raises(error):
        datasets.make(**kwargs)


def test_bad_split_raises():
    with pytest.raises(ValueError, match="num_train"):
        datasets.train_test_split("digits", jax.random.key(0), num_train=1700, num_test=200)
