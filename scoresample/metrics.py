"""Sample quality: distances between point clouds, a mixture's mode weights, a learned score's error.

The distances take concrete arrays of shape (n, d) and (m, d) and return Python floats. Pairwise
sums are computed in blocks of rows (``block_size``), so 5000 x 5000 points in 16 dimensions need a few
tens of megabytes, never the full (n, m, d) difference tensor.

- :func:`energy_distance`: D(X, Y) = 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely's energy distance,
  the squared form; ``scipy.stats.energy_distance`` returns its square root in 1-D).
- :func:`mmd`: squared maximum mean discrepancy with the Gaussian kernel, median-heuristic bandwidth.
- :func:`sliced_wasserstein`: SW_p over random directions, each 1-D W_p computed exactly (unequal
  sample sizes allowed).
- :func:`mode_weight_error`: total variation between the empirical component frequencies and the
  mixture weights.
- :func:`component_kl`: the mean over a mixture's components of the Gaussian KL divergence between
  the samples assigned to a component (their mean and covariance) and the component itself; it
  sees a blurred or squeezed component that the distances above average away.
- :func:`relative_score_error`: the relative L2 error of a (learned) score under p_t against the
  exact score of a target, one value per time.

Calibration: with ``unbiased=False`` (the V-statistic, the default) two independent samples of sizes
n and m from the same law give E[energy_distance] = (1/n + 1/m) E|X - X'| > 0; report it next to the
exact-versus-exact distance. With ``unbiased=True`` (the U-statistic) the expectation is exactly the
population distance (0 for equal laws), and single values can be negative.

Example:
    >>> from scoresample import metrics, targets
    >>> mix = targets.four_modes_2d()
    >>> x, y = mix.sample(jax.random.key(0), 2000), mix.sample(jax.random.key(1), 2000)
    >>> metrics.energy_distance(x, y), metrics.mode_weight_error(x, mix)
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from scoresample.base import (
    check_array,
    check_bool,
    check_callable,
    check_int,
    check_key,
    check_positive,
)

__all__ = ["energy_distance", "mmd", "median_bandwidth", "sliced_wasserstein", "mode_weight_error",
           "component_kl", "pairwise_sum", "relative_score_error"]

_DEFAULT_BLOCK = 256


def _two_clouds(x, y):
    x = check_array("x", x, ndim=2)
    y = check_array("y", y, ndim=2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got x {x.shape} and y {y.shape}")
    if x.shape[0] < 1 or y.shape[0] < 1:
        raise ValueError("x and y must each hold at least one point")
    dtype = jnp.result_type(float)
    return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


@partial(jax.jit, static_argnames=("kind", "block_size"))
def _pairwise_sum(x, y, scale, *, kind: str, block_size: int):
    """sum_{i, j} k(|x_i - y_j|) with k = |.| ("distance") or exp(-|.|^2 / (2 scale^2)) ("gauss")."""
    n = x.shape[0]
    num_blocks = -(-n // block_size)
    pad = num_blocks * block_size - n
    xb = jnp.pad(x, ((0, pad), (0, 0))).reshape(num_blocks, block_size, x.shape[1])
    mask = (jnp.arange(num_blocks * block_size) < n).reshape(num_blocks, block_size)

    def block(args):
        xi, mi = args
        sq = jnp.sum((xi[:, None, :] - y[None, :, :]) ** 2, axis=-1)  # (block, m)
        if kind == "distance":
            vals = jnp.sqrt(sq)
        else:
            vals = jnp.exp(-0.5 * sq / scale**2)
        return jnp.sum(jnp.where(mi[:, None], vals, 0.0))

    return jnp.sum(jax.lax.map(block, (xb, mask)))


def pairwise_sum(x, y, *, kind: str = "distance", bandwidth: float = 1.0,
                 block_size: int = _DEFAULT_BLOCK) -> float:
    """sum_{i,j} k(x_i, y_j) in blocks: k = |x - y| (``kind="distance"``) or the Gaussian kernel."""
    if kind not in ("distance", "gauss"):
        raise ValueError(f"unknown kind {kind!r}; choose 'distance' or 'gauss'")
    x, y = _two_clouds(x, y)
    block_size = check_int("block_size", block_size)
    # Keep a block's (block, m) slab of distances modest whatever m is.
    block_size = max(1, min(block_size, x.shape[0], (1 << 22) // max(1, y.shape[0] * x.shape[1])))
    return float(_pairwise_sum(x, y, jnp.asarray(bandwidth, x.dtype), kind=kind, block_size=block_size))


def _mean_within(x, kind, bandwidth, unbiased, block_size):
    n = x.shape[0]
    total = pairwise_sum(x, x, kind=kind, bandwidth=bandwidth, block_size=block_size)
    if not unbiased:
        return total / n**2
    if n < 2:
        raise ValueError("the unbiased estimate needs at least two points in each sample")
    diagonal = 0.0 if kind == "distance" else float(n)  # k(x, x) = 0 or 1
    return (total - diagonal) / (n * (n - 1))


def energy_distance(x, y, *, unbiased: bool = False, block_size: int = _DEFAULT_BLOCK) -> float:
    """Energy distance D = 2 E|X - Y| - E|X - X'| - E|Y - Y'| between two samples.

    Args:
        x: (n, d) sample.
        y: (m, d) sample.
        unbiased: False (default) gives the V-statistic (all pairs, diagonal included; always >= 0,
            equal to 2 int (F - G)^2 in 1-D, i.e. the square of ``scipy.stats.energy_distance``).
            True gives the U-statistic (the within-sample means exclude i = j; unbiased, may be < 0).
        block_size: rows of ``x`` per block of the pairwise computation.

    Returns:
        D as a float (the squared form: no square root is taken).
    """
    unbiased = check_bool("unbiased", unbiased)
    xj, yj = _two_clouds(x, y)
    cross = pairwise_sum(xj, yj, kind="distance", block_size=block_size) / (xj.shape[0] * yj.shape[0])
    within_x = _mean_within(xj, "distance", 1.0, unbiased, block_size)
    within_y = _mean_within(yj, "distance", 1.0, unbiased, block_size)
    return 2.0 * cross - within_x - within_y


def median_bandwidth(x, y, *, max_points: int = 1000) -> float:
    """Median heuristic: the median distance between distinct points of the pooled sample.

    At most ``max_points`` points (evenly strided, deterministic) enter the median.
    """
    xj, yj = _two_clouds(x, y)
    pooled = np.asarray(jnp.concatenate([xj, yj], axis=0))
    stride = max(1, -(-pooled.shape[0] // max_points))
    pooled = pooled[::stride]
    sq = np.sum((pooled[:, None, :] - pooled[None, :, :]) ** 2, axis=-1)
    upper = sq[np.triu_indices(pooled.shape[0], k=1)]
    if upper.size == 0:
        raise ValueError("the median heuristic needs at least two points")
    med = float(np.sqrt(np.median(upper)))
    if med <= 0.0:
        raise ValueError("the median pairwise distance is 0 (too many repeated points); "
                         "pass bandwidth explicitly")
    return med


def mmd(x, y, bandwidth: float | None = None, *, unbiased: bool = False,
        block_size: int = _DEFAULT_BLOCK) -> float:
    """Squared maximum mean discrepancy with the Gaussian kernel k(a, b) = exp(-|a - b|^2 / (2 h^2)).

    MMD^2 = E k(X, X') + E k(Y, Y') - 2 E k(X, Y).

    Args:
        x: (n, d) sample.
        y: (m, d) sample.
        bandwidth: h; None uses :func:`median_bandwidth` of the pooled sample.
        unbiased: False (default) gives the V-statistic (>= 0); True the U-statistic.

    Returns:
        MMD^2 as a float (squared, like :func:`energy_distance`).
    """
    unbiased = check_bool("unbiased", unbiased)
    xj, yj = _two_clouds(x, y)
    h = median_bandwidth(xj, yj) if bandwidth is None else check_positive("bandwidth", bandwidth)
    cross = pairwise_sum(xj, yj, kind="gauss", bandwidth=h, block_size=block_size) / (
        xj.shape[0] * yj.shape[0])
    within_x = _mean_within(xj, "gauss", h, unbiased, block_size)
    within_y = _mean_within(yj, "gauss", h, unbiased, block_size)
    return within_x + within_y - 2.0 * cross


@partial(jax.jit, static_argnames=("p",))
def _wasserstein_1d_pow(u, v, p):
    """Exact W_p^p between the empirical laws of 1-D samples u (n,) and v (m,) (quantile coupling)."""
    n, m = u.shape[0], v.shape[0]
    us, vs = jnp.sort(u), jnp.sort(v)
    # Both quantile functions are constant between consecutive levels of the merged grid.
    levels = jnp.sort(jnp.concatenate([jnp.arange(1, n + 1) / n, jnp.arange(1, m + 1) / m]))
    lower = jnp.concatenate([jnp.zeros(1, levels.dtype), levels[:-1]])
    widths = levels - lower
    mid = 0.5 * (levels + lower)
    iu = jnp.clip(jnp.floor(mid * n).astype(jnp.int32), 0, n - 1)
    iv = jnp.clip(jnp.floor(mid * m).astype(jnp.int32), 0, m - 1)
    return jnp.sum(widths * jnp.abs(us[iu] - vs[iv]) ** p)


def sliced_wasserstein(rng_key, x, y, num_projections: int = 256, *, p: int = 2) -> float:
    """Sliced Wasserstein distance SW_p = (E_theta W_p^p(theta^T X, theta^T Y))^(1/p).

    theta is uniform on the unit sphere (``num_projections`` Monte-Carlo directions, the only
    randomness); each 1-D W_p between the projected empirical laws is exact, also for n != m.
    In 1-D every direction is +-1, so the result is the exact W_p.

    Args:
        rng_key: key for the directions.
        x: (n, d) sample.
        y: (m, d) sample.
        num_projections: number of random directions.
        p: the order (integer >= 1).

    Returns:
        SW_p as a float.
    """
    check_key("rng_key", rng_key)
    num_projections = check_int("num_projections", num_projections)
    p = check_int("p", p)
    xj, yj = _two_clouds(x, y)
    theta = jax.random.normal(rng_key, (num_projections, xj.shape[1]), dtype=xj.dtype)
    theta = theta / jnp.linalg.norm(theta, axis=-1, keepdims=True)
    pu, pv = xj @ theta.T, yj @ theta.T  # (n, P), (m, P)
    per = jax.lax.map(lambda uv: _wasserstein_1d_pow(uv[0], uv[1], p), (pu.T, pv.T))
    return float(jnp.mean(per) ** (1.0 / p))


def mode_weight_error(samples, mixture) -> float:
    """Total variation 0.5 sum_k |f_k - w_k| between component frequencies and mixture weights.

    f_k is the fraction of ``samples`` that ``mixture.assign`` gives to component k (the most
    responsible component); w = ``mixture.weights``.

    Args:
        samples: (n, d) points.
        mixture: a :class:`scoresample.targets.GaussianMixture` (anything with ``assign``,
            ``weights`` and ``dim``).

    Returns:
        The error in [0, 1] as a float.
    """
    samples, labels = _check_mixture(samples, mixture)
    weights = np.asarray(mixture.weights, dtype=np.float64)
    freq = np.bincount(labels, minlength=weights.shape[0]) / samples.shape[0]
    return float(0.5 * np.sum(np.abs(freq - weights)))


def _check_mixture(samples, mixture):
    if not all(hasattr(mixture, name) for name in ("assign", "weights", "dim")):
        raise TypeError("mixture must be a GaussianMixture (with assign, weights and dim), got "
                        f"{type(mixture).__name__}")
    samples = check_array("samples", samples, ndim=2)
    if samples.shape[1] != mixture.dim:
        raise ValueError(f"samples must have shape (n, {mixture.dim}), got {samples.shape}")
    labels = np.asarray(mixture.assign(jnp.asarray(samples, jnp.result_type(float))))
    return samples, labels


def component_kl(samples, mixture) -> float:
    """sum_k w_k KL(N(m_k, S_k) || N(mu_k, C_k)): each component against its assigned samples.

    The samples that ``mixture.assign`` gives to component k have mean m_k and covariance S_k
    (divisor n_k - 1); C_k and mu_k are the component's, in its own coordinates (the latent
    coordinates ``basis.T x`` when the mixture lives on a subspace, so that the singular ambient
    covariance is never inverted). With exact draws the value is the finite-sample floor,
    about sum_k w_k k (k + 3) / (4 n_k) for latent dimension k; a sampler that blurs thin
    components (too much variance left) or squeezes them pays 0.5 k (s^2 - 1 - ln s^2) for a scale
    error s in k directions.

    Args:
        samples: (n, d) points.
        mixture: a :class:`scoresample.targets.GaussianMixture`.

    Returns:
        The weighted KL as a float; ``inf`` when a component has fewer than latent dimension + 1
        samples (a lost mode: its covariance is singular).
    """
    samples, labels = _check_mixture(samples, mixture)
    x = np.asarray(samples, dtype=np.float64)
    basis = getattr(mixture, "basis", None)
    z = x if basis is None else x @ np.asarray(basis, dtype=np.float64)
    weights = np.asarray(mixture.weights, dtype=np.float64)
    means = np.asarray(mixture.means_latent, dtype=np.float64)
    covs = np.asarray(mixture.covs_latent, dtype=np.float64)
    k = z.shape[1]
    total = 0.0
    for c in range(weights.shape[0]):
        zc = z[labels == c]
        if zc.shape[0] < k + 1:
            return float("inf")
        m, s = zc.mean(axis=0), np.cov(zc, rowvar=False).reshape(k, k)
        chol = np.linalg.cholesky(covs[c])
        w = np.linalg.solve(chol, np.linalg.solve(chol, s).T)  # C^-1/2 S C^-T/2
        r = np.linalg.solve(chol, m - means[c])
        sign, logdet = np.linalg.slogdet(w)
        kl = np.inf if sign <= 0 else 0.5 * (np.trace(w) + r @ r - k - logdet)
        total += weights[c] * kl
    return float(total)


def relative_score_error(rng_key, score_fn, target, times, *, num_samples: int = 8192) -> np.ndarray:
    """Relative L2 error of ``score_fn`` under p_t, for each t in ``times``.

    err(t) = sqrt( E_{x ~ p_t} |score_fn(x, t) - s_t(x)|^2 / E_{x ~ p_t} |s_t(x)|^2 ), with the exact
    score s_t and exact draws from p_t of ``target`` (a :mod:`scoresample.targets` object with
    ``.sample(rng_key, n, t)`` and ``.score(x, t)``), estimated from ``num_samples`` draws per time.
    """
    check_key("rng_key", rng_key)
    check_callable("score_fn", score_fn)
    num_samples = check_int("num_samples", num_samples)
    times = check_array("times", np.atleast_1d(np.asarray(times, dtype=np.float64)), ndim=1)
    if np.any(times <= 0):
        raise ValueError("times must be > 0")

    @jax.jit
    def error(x, t):
        exact = jax.vmap(lambda y: target.score(y, t))(x)
        approx = jax.vmap(lambda y: score_fn(y, t))(x)
        return jnp.sqrt(jnp.mean(jnp.sum(jnp.square(approx - exact), axis=-1))
                        / jnp.mean(jnp.sum(jnp.square(exact), axis=-1)))

    keys = jax.random.split(rng_key, times.shape[0])
    return np.array([float(error(target.sample(k, num_samples, t=float(t)), t))
                     for k, t in zip(keys, times)])
