"""Data sets that ship or are generated: four 2-D toy sets and scikit-learn's 8x8 digits (no downloads).

2-D sets (``make(name, rng_key, num_samples) -> (num_samples, 2)``, generated in JAX, so a key fixes
the draw on every machine):

- ``"8gaussians"``: eight N(mu_k, 0.125 I) with mu_k = 2 sqrt 2 (cos k pi/4, sin k pi/4), equal weights
  (the FFJORD set: unit circle scaled by 4, sd 0.5, divided by sqrt 2). Its exact law is
  :func:`eight_gaussians_mixture`, a :class:`scoresample.targets.GaussianMixture`, so its score is known
  at every t.
- ``"two-moons"``: two interleaved half circles of radius 2 (scikit-learn's ``make_moons`` layout,
  centred and scaled by 2), Gaussian noise of sd 0.1.
- ``"checkerboard"``: uniform on the 8 dark squares of a 4 x 4 board of side-2 squares on [-4, 4]^2.
- ``"swiss-roll"``: the 2-D Swiss roll r (cos r, sin r) / 5 with r ~ U[1.5 pi, 4.5 pi], noise sd 0.2.

Images: ``"digits"``: the 1,797 8x8 handwritten digits that ship with scikit-learn (UCI optical
recognition set), flattened to d = 64 and scaled from {0, ..., 16} to [-1, 1] by x / 8 - 1.

Example:
    >>> x = make("two-moons", jax.random.key(0), 1000)          # (1000, 2)
    >>> train, test = train_test_split("digits", jax.random.key(0), num_test=200)
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from scoresample.base import check_in, check_int, check_key

__all__ = ["NAMES", "NAMES_2D", "make", "eight_gaussians_mixture", "load_digits",
           "train_test_split", "dim_of"]

NAMES_2D = ("8gaussians", "two-moons", "checkerboard", "swiss-roll")
NAMES = NAMES_2D + ("digits",)

_EIGHT_RADIUS = 2.0 * math.sqrt(2.0)
_EIGHT_SD = 0.5 / math.sqrt(2.0)


@partial(jax.jit, static_argnums=1)
def _eight_gaussians(key, n):
    k_c, k_z = jax.random.split(key)
    comp = jax.random.randint(k_c, (n,), 0, 8)
    angle = comp.astype(jnp.float32) * (math.pi / 4.0)
    centres = _EIGHT_RADIUS * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
    return centres + _EIGHT_SD * jax.random.normal(k_z, (n, 2))


@partial(jax.jit, static_argnums=1)
def _two_moons(key, n):
    k_side, k_ang, k_z = jax.random.split(key, 3)
    upper = jax.random.bernoulli(k_side, 0.5, (n,))
    theta = math.pi * jax.random.uniform(k_ang, (n,))
    outer = jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)
    inner = jnp.stack([1.0 - jnp.cos(theta), 0.5 - jnp.sin(theta)], axis=-1)
    pts = jnp.where(upper[:, None], outer, inner)
    pts = 2.0 * (pts - jnp.array([[0.5, 0.25]]))
    return pts + 0.1 * jax.random.normal(k_z, (n, 2))


@partial(jax.jit, static_argnums=1)
def _checkerboard(key, n):
    k_cell, k_u = jax.random.split(key)
    # dark squares of a 4 x 4 board: (i + j) even, i, j in 0..3 -> 8 cells
    cells = jnp.array([[i, j] for i in range(4) for j in range(4) if (i + j) % 2 == 0],
                      dtype=jnp.float32)
    idx = jax.random.randint(k_cell, (n,), 0, 8)
    corner = -4.0 + 2.0 * cells[idx]
    return corner + 2.0 * jax.random.uniform(k_u, (n, 2))


@partial(jax.jit, static_argnums=1)
def _swiss_roll(key, n):
    k_r, k_z = jax.random.split(key)
    r = 1.5 * math.pi * (1.0 + 2.0 * jax.random.uniform(k_r, (n,)))
    pts = jnp.stack([r * jnp.cos(r), r * jnp.sin(r)], axis=-1) / 5.0
    return pts + 0.2 * jax.random.normal(k_z, (n, 2))


_GENERATORS = {"8gaussians": _eight_gaussians, "two-moons": _two_moons,
               "checkerboard": _checkerboard, "swiss-roll": _swiss_roll}


def eight_gaussians_mixture():
    """The exact law of ``make("8gaussians", ...)`` as a :class:`~scoresample.targets.GaussianMixture`."""
    from scoresample.targets import GaussianMixture

    angle = np.arange(8) * (np.pi / 4.0)
    means = _EIGHT_RADIUS * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    covs = np.tile(_EIGHT_SD**2 * np.eye(2), (8, 1, 1))
    return GaussianMixture(np.full(8, 1.0 / 8.0), means, covs)


_DIGITS_CACHE: dict = {}


def load_digits(return_labels: bool = False):
    """scikit-learn's 8x8 digits as float32 (1797, 64) in [-1, 1] (and the labels if asked)."""
    if "x" not in _DIGITS_CACHE:
        from sklearn.datasets import load_digits as _sk_load_digits

        bunch = _sk_load_digits()
        _DIGITS_CACHE["x"] = (bunch.data.astype(np.float32) / 8.0 - 1.0)
        _DIGITS_CACHE["y"] = bunch.target.astype(np.int32)
    x, y = _DIGITS_CACHE["x"].copy(), _DIGITS_CACHE["y"].copy()
    return (x, y) if return_labels else x


def dim_of(name: str) -> int:
    """Data dimension of a named set (2, or 64 for digits)."""
    check_in("dataset", name, NAMES)
    return 64 if name == "digits" else 2


def make(name: str, rng_key, num_samples: int) -> jax.Array:
    """Draw ``num_samples`` points of a named set: (num_samples, 2), or (num_samples, 64) for digits.

    For ``"digits"`` the points are distinct images drawn without replacement (at most 1,797).
    """
    check_in("dataset", name, NAMES)
    check_key("rng_key", rng_key)
    num_samples = check_int("num_samples", num_samples)
    if name == "digits":
        x = load_digits()
        if num_samples > x.shape[0]:
            raise ValueError(f"num_samples must be <= {x.shape[0]} for digits, got {num_samples}")
        idx = np.asarray(jax.random.permutation(rng_key, x.shape[0]))[:num_samples]
        return jnp.asarray(x[idx])
    return _GENERATORS[name](rng_key, num_samples).astype(jnp.float32)


def train_test_split(name: str, rng_key, *, num_train: int | None = None, num_test: int = 2000):
    """A training set and a disjoint held-out set of a named data set.

    2-D sets: two independent draws (``num_train`` defaults to 50,000). Digits: a random split of the
    1,797 images (``num_train`` defaults to all that remain after ``num_test``).
    """
    check_in("dataset", name, NAMES)
    check_key("rng_key", rng_key)
    num_test = check_int("num_test", num_test)
    k_train, k_test = jax.random.split(rng_key)
    if name == "digits":
        x = load_digits()
        total = x.shape[0]
        num_train = total - num_test if num_train is None else check_int("num_train", num_train)
        if num_train + num_test > total:
            raise ValueError(f"num_train + num_test must be <= {total} for digits, got "
                             f"{num_train} + {num_test}")
        perm = np.asarray(jax.random.permutation(k_train, total))
        return jnp.asarray(x[perm[num_test:num_test + num_train]]), jnp.asarray(x[perm[:num_test]])
    num_train = 50_000 if num_train is None else check_int("num_train", num_train)
    return make(name, k_train, num_train), make(name, k_test, num_test)
