"""Warmup machinery for every log-density sampler: the tuning stack of the package.

- :mod:`~scoresample.adaptation.staged`: the engine, :func:`staged_warmup` (a Laplace start, then
  Stan's windows for the step size and the preconditioner), driven by a kernel's
  :class:`TuningSpec`; kernels define their spec beside them (``kernels.fors.FORS_TUNING``,
  ``kernels.rtk.RTK_TUNING``) and :func:`scoresample.sample` runs the same engine on many chains;
- :mod:`~scoresample.adaptation.step_size`: dual averaging of the step size on a statistic of the
  kernel's info (:func:`dual_averaging_warmup`), as in Hoffman and Gelman (2014);
- :mod:`~scoresample.adaptation.lbfgs`: gradient-only L-BFGS, to reach the mode region from a start
  in the tails without log-density values (:func:`gradient_only_lbfgs`);
- :mod:`~scoresample.adaptation.laplace`: the Laplace approximation at the optimum and chain starts
  drawn from it;
- :mod:`~scoresample.adaptation.windows`: Stan's staged warmup windows (:func:`window_schedule`);
- :mod:`~scoresample.adaptation.preconditioner`: the affine preconditioner x = m + D z and steps
  whose non-finite or runaway outcome is contained (:func:`safe_step`, :data:`RUNAWAY_LIMIT`).

It imports no sampler: kernels' own warmups and :func:`scoresample.sample` both build on it.

Example:
    >>> from scoresample.kernels.fors import FORS_TUNING
    >>> start, res = staged_warmup(jax.random.key(0), FORS_TUNING, logdensity_fn, x0[None], 500)
"""

from scoresample.adaptation.laplace import Laplace, laplace_approximation, laplace_draw
from scoresample.adaptation.lbfgs import gradient_only_lbfgs
from scoresample.adaptation.preconditioner import (
                                                   RUNAWAY_LIMIT,
                                                   from_preconditioned,
                                                   preconditioned_curvature,
                                                   preconditioned_logdensity,
                                                   safe_step,
                                                   to_preconditioned,
)
from scoresample.adaptation.staged import (
                                                   CALIBRATION_MARGIN,
                                                   Calibration,
                                                   StagedWarmup,
                                                   Start,
                                                   TuningSpec,
                                                   identity_start,
                                                   laplace_start,
                                                   preconditioned_algorithm,
                                                   staged_warmup,
                                                   window_adaptation,
)
from scoresample.adaptation.step_size import WarmupResult, bounded_statistic, dual_averaging_warmup
from scoresample.adaptation.windows import window_schedule

__all__ = [
    "TuningSpec",
    "Calibration",
    "CALIBRATION_MARGIN",
    "staged_warmup",
    "laplace_start",
    "identity_start",
    "window_adaptation",
    "Start",
    "StagedWarmup",
    "preconditioned_algorithm",
    "dual_averaging_warmup",
    "WarmupResult",
    "bounded_statistic",
    "gradient_only_lbfgs",
    "Laplace",
    "laplace_approximation",
    "laplace_draw",
    "window_schedule",
    "from_preconditioned",
    "to_preconditioned",
    "preconditioned_logdensity",
    "preconditioned_curvature",
    "RUNAWAY_LIMIT",
    "safe_step",
]
