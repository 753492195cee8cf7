"""Picard-parallel samplers: sequential rounds of batched evaluation instead of sequential steps.

- :mod:`~scoresample.kernels.picard.recursion`: the affine recursion (*) every sampler here
  iterates, its Picard iteration over a block, a coarse first guess and its sequential run.
- :mod:`~scoresample.kernels.picard.anderson`: triangular Anderson acceleration of the Picard
  iteration (ParaTAA; Tang et al., ICML 2024), the default of the diffusion samplers.
- :mod:`~scoresample.kernels.picard.diffusion`: block Picard ("picard-sde", "picard-ode") and
  ParaDiGMS ("paradigms"), the plans for ``diffusion.sample``.
- :mod:`~scoresample.kernels.picard.langevin`: Picard Langevin on a log-density,
  ``scoresample.picard_langevin``.

After k iterations the first k points of a block are exact and the error falls like (L h)^k / k!
(Chen, Ren, Ying, Rotskoff, NeurIPS 2024, arXiv 2405.15986; Shih et al., "Parallel Sampling of
Diffusion Models" (ParaDiGMS), NeurIPS 2023; Anari, Chewi, Vuong, "Fast parallel sampling under
isoperimetry", 2024). See [the Picard page](../algorithms/picard.md).
"""

from scoresample.kernels.picard.diffusion import (
    ACCELERATIONS,
    PicardInfo,
    paradigms_plan,
    picard_ode_plan,
    picard_sde_plan,
)
from scoresample.kernels.picard.langevin import (
    PicardLangevinInfo,
    PicardLangevinState,
    as_top_level_api,
    build_kernel,
    init,
    picard_langevin,
)
from scoresample.kernels.picard.recursion import (
    FORMS,
    affine_prefix,
    coarse_path,
    evaluation_fn,
    picard_block,
    sequential_block,
    sequential_sample,
    shard_time_axis,
    step_coefficients,
)

__all__ = [
    "FORMS",
    "ACCELERATIONS",
    "PicardInfo",
    "step_coefficients",
    "evaluation_fn",
    "affine_prefix",
    "shard_time_axis",
    "picard_block",
    "coarse_path",
    "sequential_block",
    "sequential_sample",
    "picard_sde_plan",
    "picard_ode_plan",
    "paradigms_plan",
    "PicardLangevinState",
    "PicardLangevinInfo",
    "init",
    "build_kernel",
    "as_top_level_api",
    "picard_langevin",
]
