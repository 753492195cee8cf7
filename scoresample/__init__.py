"""scoresample: provably fast samplers (RTK, FORS, Picard) for log-densities and diffusion models.

Public names load on first use, so that ``import scoresample`` stays fast and the Flax/ArviZ layers
are imported only by users who need them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute or None for the module itself)
_PUBLIC = {
    "rtk": ("scoresample.kernels.rtk", "rtk"),
    "fors": ("scoresample.kernels.fors", "fors"),
    "picard_langevin": ("scoresample.kernels.picard", "picard_langevin"),
    "sample": ("scoresample.bayes", "sample"),
    "bayes": ("scoresample.bayes", None),
    "diffusion": ("scoresample.diffusion", None),
    "targets": ("scoresample.targets", None),
    "processes": ("scoresample.processes", None),
    "metrics": ("scoresample.metrics", None),
    "diagnostics": ("scoresample.diagnostics", None),
    "nn": ("scoresample.nn", None),
    "train": ("scoresample.train", None),
    "datasets": ("scoresample.datasets", None),
    "posteriordb": ("scoresample.posteriordb", None),
    "adaptation": ("scoresample.adaptation", None),
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'scoresample' has no attribute {name!r}")
    module, attr = _PUBLIC[name]
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__():
    return __all__
