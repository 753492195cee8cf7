"""The exact-score mixtures every diffusion benchmark and statistical test uses (one definition)."""

from __future__ import annotations

import numpy as np

from scoresample.base import check_int
from scoresample.targets.mixture import GaussianMixture

__all__ = ["four_modes_2d", "subspace_mixture", "two_modes_1d", "BENCHMARK_MIXTURES"]


def four_modes_2d() -> GaussianMixture:
    """2-D, four modes on a square of side 4 with unequal weights (0.1, 0.2, 0.3, 0.4), sd 0.4."""
    means = np.array([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
    covs = np.tile(0.16 * np.eye(2), (4, 1, 1))
    return GaussianMixture(np.array([0.1, 0.2, 0.3, 0.4]), means, covs)


def subspace_mixture(dim: int = 16, seed: int = 0) -> GaussianMixture:
    """The same four-mode 2-D mixture embedded in R^dim by a fixed random orthonormal basis."""
    dim = check_int("dim", dim, minimum=2)
    seed = check_int("seed", seed, minimum=0)
    base = four_modes_2d()
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, 2)))
    return GaussianMixture(np.asarray(base.weights), np.asarray(base.means_latent),
                           np.asarray(base.covs_latent), basis=basis)


def two_modes_1d() -> GaussianMixture:
    """1-D, weights (0.3, 0.7), means -2 and 2, sd 0.5."""
    return GaussianMixture(np.array([0.3, 0.7]), np.array([[-2.0], [2.0]]),
                           np.array([[[0.25]], [[0.25]]]))


BENCHMARK_MIXTURES = {"four-modes-2d": four_modes_2d, "subspace-16d": subspace_mixture}
