"""The exact-score mixtures every diffusion benchmark and statistical test uses (one definition)."""

from __future__ import annotations

import numpy as np

from scoresample.base import check_int
from scoresample.targets.mixture import GaussianMixture

__all__ = ["four_modes_2d", "subspace_mixture", "two_modes_1d", "eight_modes_2d",
           "aniso_subspace_mixture", "BENCHMARK_MIXTURES"]


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


def eight_modes_2d() -> GaussianMixture:
    """2-D, eight modes on a circle of radius 3 with weights k / 36 (k = 1..8), sd 0.3.

    Neighbouring modes are 2.3 apart (7.7 sds): a sampler must move mass between well separated
    modes of unequal weight, which the four-mode square does with only four."""
    angles = 2.0 * np.pi * np.arange(8) / 8
    means = 3.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    covs = np.tile(0.09 * np.eye(2), (8, 1, 1))
    return GaussianMixture(np.arange(1.0, 9.0) / 36.0, means, covs)


def aniso_subspace_mixture(dim: int = 64, latent_dim: int = 4, seed: int = 0) -> GaussianMixture:
    """``dim``-D, eight anisotropic components with small within-component scale on a
    ``latent_dim``-D subspace (fixed random orthonormal basis and component parameters).

    Means on a sphere of radius 2.5 in the latent space; each component's covariance has
    standard deviations from 0.05 to 0.3 along random axes; weights from 0.05 to 0.2. Hard
    enough that diffusion samplers at 50-200 score evaluations differ measurably (mode weights and
    the thin within-component scales), yet every score is exact."""
    dim = check_int("dim", dim, minimum=2)
    latent_dim = check_int("latent_dim", latent_dim, minimum=2)
    seed = check_int("seed", seed, minimum=0)
    if latent_dim > dim:
        raise ValueError(f"latent_dim must be <= dim, got latent_dim={latent_dim}, dim={dim}")
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, latent_dim)))
    directions = rng.standard_normal((8, latent_dim))
    means = 2.5 * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    covs = np.empty((8, latent_dim, latent_dim))
    for k in range(8):
        axes, _ = np.linalg.qr(rng.standard_normal((latent_dim, latent_dim)))
        sds = np.geomspace(0.05, 0.3, latent_dim)
        covs[k] = (axes * sds**2) @ axes.T
        covs[k] = 0.5 * (covs[k] + covs[k].T)
    weights = np.linspace(0.05, 0.2, 8)
    return GaussianMixture(weights / weights.sum(), means, covs, basis=basis)


BENCHMARK_MIXTURES = {"four-modes-2d": four_modes_2d, "subspace-16d": subspace_mixture}
