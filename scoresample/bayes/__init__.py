"""Bayesian sampling: :func:`sample` runs every log-density sampler of the package, and the
BlackJAX baselines beside them, on a log-density or a NumPyro model with the same warmup, and
returns an ArviZ ``xarray.DataTree``. ``scoresample.sample`` is :func:`sample`.

Modules: ``methods`` (the method table, ULA), ``model`` (log-densities, NumPyro models, starts),
``warmup`` (gradient-only L-BFGS, Laplace start, windows, preconditioner), ``runners`` (warmup and
chains), ``store`` (streaming to disk and resume), ``api`` (:func:`sample`).
"""

from scoresample.bayes.api import sample
from scoresample.bayes.methods import METHODS, Method, ULAInfo, ULAState, ula
from scoresample.bayes.model import PreparedModel, prepare_model
from scoresample.bayes.warmup import RUNAWAY_LIMIT, gradient_only_lbfgs, window_schedule

__all__ = ["sample", "METHODS", "Method", "ula", "ULAState", "ULAInfo", "prepare_model",
           "PreparedModel", "gradient_only_lbfgs", "window_schedule", "RUNAWAY_LIMIT"]
