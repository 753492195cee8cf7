"""Targets with exact answers: Gaussians and Gaussian mixtures at every time of the OU flow, and
Gaussian mixtures under critically damped Langevin diffusion (:class:`CLDMixture`)."""

from scoresample.targets.cld import CLDMixture
from scoresample.targets.mixture import Gaussian, GaussianMixture
from scoresample.targets.standard import (
    BENCHMARK_MIXTURES,
    aniso_subspace_mixture,
    eight_modes_2d,
    four_modes_2d,
    subspace_mixture,
    two_modes_1d,
)

__all__ = ["CLDMixture", "Gaussian", "GaussianMixture", "BENCHMARK_MIXTURES", "four_modes_2d",
           "subspace_mixture", "two_modes_1d", "eight_modes_2d", "aniso_subspace_mixture"]
