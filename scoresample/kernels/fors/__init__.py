"""FORS: first-order rejection sampling on a log-concave density and on a diffusion, gradients only.

- :mod:`~scoresample.kernels.fors.rejection`: the primitive, :func:`fors_rejection`, which samples
  q(x) exp(w(x)) from draws of q and clipped unbiased estimates of w, and :func:`pooled_rates`.
- :mod:`~scoresample.kernels.fors.proximal`: FORS-proximal, the MCMC kernel ``scoresample.fors``;
  :mod:`~scoresample.kernels.fors.proximal_step`: its step as a state machine of one-gradient
  units (:func:`proximal_machine`, :func:`chain_machine` for :mod:`scoresample.autobatch`).
- :mod:`~scoresample.kernels.fors.warmup`: tuning FORS-proximal, :data:`FORS_TUNING` and
  :func:`fors_warmup`.
- :mod:`~scoresample.kernels.fors.diffusion`: FORS-diffusion, method ``"fors"`` of
  :mod:`scoresample.diffusion` (:func:`fors_diffusion_plan`), as a state machine
  (:func:`diffusion_machine`) for :mod:`scoresample.autobatch`.
- :mod:`~scoresample.kernels.fors.grid`: its time grids and the choice of their density from a
  pilot run (:func:`fors_schedule`, :func:`growth_from_pilot`).

Reference: Chen, Chewi, Daskalakis, Rakhlin, "High-accuracy sampling for diffusion models and
log-concave distributions", arXiv 2602.01338, 2026. See [the FORS page](../algorithms/fors.md).

Example:
    >>> warm = fors_warmup(jax.random.key(0), logdensity_fn, jnp.zeros(5), num_steps=300)
    >>> algo = scoresample.fors(logdensity_fn, **warm.parameters)   # a blackjax SamplingAlgorithm
    >>> res = scoresample.diffusion.sample(key, "fors", mix.score, dim=1, num_samples=1000,
    ...                                    delta=1e-2)
"""

from scoresample.kernels.fors.diffusion import (
    PILOT_GROWTH,
    DiffusionWork,
    FORSDiffusionInfo,
    build_diffusion_kernel,
    diffusion_machine,
    fors_diffusion_plan,
    three_point_path,
)
from scoresample.kernels.fors.grid import (
    GRIDS,
    FORSSchedule,
    StepCoefficients,
    fors_schedule,
    growth_from_pilot,
    predicted_clip_rate,
    step_coefficients,
)
from scoresample.kernels.fors.proximal import (
    FORSInfo,
    FORSState,
    as_top_level_api,
    build_kernel,
    fors,
    init,
)
from scoresample.kernels.fors.proximal_step import (
    ProximalWork,
    chain_machine,
    proximal_machine,
)
from scoresample.kernels.fors.rejection import (
    FORSRejection,
    RejectionState,
    default_max_poisson,
    default_max_proposals,
    fors_rejection,
    pooled_rates,
    start_proposal,
    take_coin,
)
from scoresample.kernels.fors.warmup import (
    FORS_TUNING,
    FORSWarmupResult,
    fors_algorithm,
    fors_warmup,
    warmup_statistic,
)

__all__ = [
    "FORSRejection",
    "fors_rejection",
    "default_max_poisson",
    "default_max_proposals",
    "RejectionState",
    "start_proposal",
    "take_coin",
    "FORSState",
    "FORSInfo",
    "init",
    "build_kernel",
    "as_top_level_api",
    "fors",
    "fors_warmup",
    "FORSWarmupResult",
    "warmup_statistic",
    "fors_algorithm",
    "FORS_TUNING",
    "pooled_rates",
    "FORSSchedule",
    "fors_schedule",
    "StepCoefficients",
    "step_coefficients",
    "three_point_path",
    "FORSDiffusionInfo",
    "build_diffusion_kernel",
    "diffusion_machine",
    "DiffusionWork",
    "fors_diffusion_plan",
    "PILOT_GROWTH",
    "ProximalWork",
    "proximal_machine",
    "chain_machine",
    "GRIDS",
    "growth_from_pilot",
    "predicted_clip_rate",
]
