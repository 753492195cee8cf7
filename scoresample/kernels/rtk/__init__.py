"""RTK: reverse transition kernels, on a score (diffusion) and on a log-density (proximal sampler).

- :mod:`~scoresample.kernels.rtk.proximal`: the proximal sampler on a log-density
  (``scoresample.rtk``).
- :mod:`~scoresample.kernels.rtk.warmup`: tuning its outer step, :data:`RTK_TUNING` and
  :func:`rtk_warmup`.
- :mod:`~scoresample.kernels.rtk.grid`: the segment grid and the split of a budget into segments.
- :mod:`~scoresample.kernels.rtk.diffusion`: the plans of ``"rtk-mala"`` and ``"rtk-uld"``.

Reference: Huang, Zou, Dong, Zhang, Ma, Zhang, "Reverse Transition Kernel: A Flexible Framework to
Accelerate Diffusion Inference", NeurIPS 2024 (arXiv 2405.16387). See
[the RTK page](../algorithms/rtk.md).

Example:
    >>> from scoresample import diffusion, targets
    >>> mix = targets.four_modes_2d()
    >>> res = diffusion.sample(jax.random.key(0), "rtk-mala", mix.score, dim=2, num_samples=1000,
    ...                        nfe=100)   # scores only: the exact Bernoulli-factory test
    >>> warm = rtk_warmup(jax.random.key(1), logdensity_fn, jnp.zeros(2), 500)
    >>> algo = scoresample.rtk(logdensity_fn, **warm.parameters)   # a blackjax SamplingAlgorithm
"""

from scoresample.kernels.rtk.diffusion import (
    ACCEPTANCES,
    RTK_ULD_COV_BIAS,
    STARTS,
    RTKDiffusionInfo,
    rtk_mala_plan,
    rtk_uld_plan,
    subproblem_moments_gaussian,
)
from scoresample.kernels.rtk.grid import rtk_grid
from scoresample.kernels.rtk.proximal import (
    INNER_SOLVERS,
    RTK_ULD_SD_BIAS,
    RTKInfo,
    RTKState,
    as_top_level_api,
    build_kernel,
    default_inner_step_size,
    init,
    rtk,
)
from scoresample.kernels.rtk.warmup import RTK_TUNING, RTKWarmupResult, rtk_algorithm, rtk_warmup

__all__ = [
    "RTKState",
    "RTKInfo",
    "init",
    "build_kernel",
    "as_top_level_api",
    "rtk",
    "rtk_warmup",
    "RTKWarmupResult",
    "rtk_algorithm",
    "RTK_TUNING",
    "default_inner_step_size",
    "RTKDiffusionInfo",
    "rtk_mala_plan",
    "rtk_uld_plan",
    "rtk_grid",
    "subproblem_moments_gaussian",
    "INNER_SOLVERS",
    "ACCEPTANCES",
    "STARTS",
    "RTK_ULD_COV_BIAS",
    "RTK_ULD_SD_BIAS",
]
