"""Targets with exact answers: Gaussians and Gaussian mixtures at every time of the OU flow."""

from scoresample.targets.cld import CLDMixture
from scoresample.targets.mixture import Gaussian, GaussianMixture
from scoresample.targets.standard import (
    BENCHMARK_MIXTURES,
    four_modes_2d,
    subspace_mixture,
    two_modes_1d,
)

__all__ = ["CLDMixture", "Gaussian", "GaussianMixture", "BENCHMARK_MIXTURES", "four_modes_2d",
           "subspace_mixture", "two_modes_1d"]
