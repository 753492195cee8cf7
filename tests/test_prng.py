"""Counter-based draws (scoresample.prng): jax.random's bits where they claim them, the right laws
(each with a negative control the same test rejects) and independent streams."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from scoresample import prng

KEYS = [jax.random.key(0), jax.random.key(12345), jax.random.fold_in(jax.random.key(7), 3)]


@pytest.mark.parametrize("data", [0, 1, 17, 2**31 - 1, 2**32 - 2])
def test_fold_in_is_jax_fold_in(data):
    for key in KEYS:
        ours = jax.random.key_data(prng.fold_in(key, data))
        np.testing.assert_array_equal(ours, jax.random.key_data(jax.random.fold_in(key, data)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("num", [1, 2, 7, 64])
def test_stream_zero_is_jax_uniform(dtype, num):
    # the same bits on [0, 1); on another range the affine map may round differently in the
    # last place (a fused multiply-add or not), so equal to an ulp there
    ulp = float(jnp.finfo(dtype).eps)
    for key in KEYS:
        np.testing.assert_array_equal(prng.uniform(key, num, dtype, 0.0, 1.0),
                                      jax.random.uniform(key, (num,), dtype))
        np.testing.assert_allclose(prng.uniform(key, num, dtype, -2.0, 3.0),
                                   jax.random.uniform(key, (num,), dtype, -2.0, 3.0),
                                   rtol=0, atol=4 * ulp)
    low = jnp.nextafter(jnp.asarray(-1.0, dtype), jnp.asarray(0.0, dtype))
    np.testing.assert_allclose(prng.open_uniform(KEYS[0], num, dtype),
                               jax.random.uniform(KEYS[0], (num,), dtype, low, 1.0),
                               rtol=0, atol=2 * ulp)


def test_threefry_hash_matches_jax_on_counters():
    # jax.random.bits of a key hashes the counters (0, j) (partitionable threefry): the same words
    key = KEYS[1]
    words = jax.random.key_data(key)
    y0, y1 = prng.threefry2x32(words[0], words[1], jnp.zeros(4, jnp.uint32),
                               jnp.arange(4, dtype=jnp.uint32))
    bits = jax.random.bits(key, (4,), jnp.uint64)
    np.testing.assert_array_equal((np.asarray(y0, np.uint64) << np.uint64(32)) | np.asarray(y1),
                                  np.asarray(bits))


def test_other_key_kinds_fall_back_to_jax_random():
    key = jax.random.key(3, impl="rbg")
    np.testing.assert_array_equal(prng.uniform(key, 5, jnp.float64, 0.0, 1.0),
                                  jax.random.uniform(key, (5,), jnp.float64))
    other = prng.uniform(key, 5, jnp.float64, 0.0, 1.0, stream=4)
    assert np.all((other >= 0) & (other < 1)) and not np.allclose(other, prng.uniform(
        key, 5, jnp.float64, 0.0, 1.0))


N = 200_000


def test_streams_are_uniform_and_uncorrelated():
    key = KEYS[2]
    a = np.asarray(prng.uniform(key, N, jnp.float64, 0.0, 1.0, stream=1))
    b = np.asarray(prng.uniform(key, N, jnp.float64, 0.0, 1.0, stream=2**31 + 5))
    for v in (a, b):
        assert scipy.stats.kstest(v, "uniform").pvalue > 1e-3
    # negative control: a law 2% off in its exponent is rejected by the same test at this size
    assert scipy.stats.kstest(a**1.02, "uniform").pvalue < 1e-3
    # streams differ from each other and from stream 0, and are uncorrelated (|r| < 4 / sqrt(N));
    # the control: a stream against itself shifted by one is uncorrelated, against itself is not
    zero = np.asarray(prng.uniform(key, N, jnp.float64, 0.0, 1.0))
    for x, y in ((a, b), (a, zero), (b, zero), (a[1:], a[:-1])):
        assert abs(np.corrcoef(x, y)[0, 1]) < 4.0 / np.sqrt(N)
    assert np.corrcoef(a, a)[0, 1] > 0.99


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_box_muller_gives_standard_normals(dtype):
    v = prng.open_uniform(KEYS[0], N, dtype, stream=3)
    z = np.asarray(prng.box_muller(v), np.float64)
    assert z.shape == (N,) and np.all(np.isfinite(z))
    assert scipy.stats.kstest(z, "norm").pvalue > 1e-3
    # negative control: a 3% error in the scale is rejected by the same test at this size
    assert scipy.stats.kstest(1.03 * z, "norm").pvalue < 1e-3
    # the two halves (cosines and sines of the same radii) are uncorrelated
    half = N // 2
    assert abs(np.corrcoef(z[:half], z[half:])[0, 1]) < 4.0 / np.sqrt(half)


def test_box_muller_is_finite_at_the_ends():
    dtype = jnp.float64
    low = jnp.nextafter(jnp.asarray(-1.0, dtype), jnp.asarray(0.0, dtype))
    high = jnp.nextafter(jnp.asarray(1.0, dtype), jnp.asarray(0.0, dtype))
    z = prng.box_muller(jnp.stack([low, high, low, high]))
    assert np.all(np.isfinite(np.asarray(z)))
