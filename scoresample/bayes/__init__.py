"""Bayesian sampling: :func:`sample` runs every log-density sampler of the package, and the
BlackJAX baselines beside them, on a log-density or a NumPyro model with the same warmup, and
returns an ArviZ ``xarray.DataTree``. ``scoresample.sample`` is :func:`sample`.

Modules: ``methods`` (the method table), ``model`` (log-densities, NumPyro models, starts),
``runners`` (warmup and chains, built on :mod:`scoresample.adaptation`), ``store`` (streaming to
disk and resume), ``api`` (:func:`sample`). The MALA and ULA baselines are the kernels
:mod:`scoresample.kernels.mala` and :mod:`scoresample.kernels.ula`.
"""

from scoresample.adaptation import RUNAWAY_LIMIT, gradient_only_lbfgs, window_schedule
from scoresample.bayes.api import sample
from scoresample.bayes.methods import METHODS, Method
from scoresample.bayes.model import PreparedModel, prepare_model
from scoresample.kernels.ula import ULAInfo, ULAState, ula

__all__ = ["sample", "METHODS", "Method", "ula", "ULAState", "ULAInfo", "prepare_model",
           "PreparedModel", "gradient_only_lbfgs", "window_schedule", "RUNAWAY_LIMIT"]
