"""Models by name for ``scoresample sample``: posteriordb posteriors, example models, module:attr.

- :func:`resolve_model` turns a name (a posteriordb posterior, an example model of
  :mod:`scoresample.models`, or ``module:attribute``) into what :func:`scoresample.sample` takes,
  with the posterior's reference summary when it has one;
- :class:`LogDensityAdapter` gives an object with ``logdensity_fn`` and ``dim`` the
  ``initial_position`` / ``constrain`` methods that ``scoresample.sample`` looks for.
"""

from __future__ import annotations

import importlib

import jax.numpy as jnp
import numpy as np

from scoresample.models import EIGHT_SCHOOLS_DATA, breast_cancer_logistic, eight_schools_numpyro
from scoresample.posteriordb.loader import load

__all__ = ["resolve_model", "LogDensityAdapter"]


def resolve_model(name: str, posteriordb_root=None):
    """The arguments of :func:`scoresample.sample` for the model called ``name``.

    Args:
        name: ``breast_cancer`` (:func:`scoresample.models.breast_cancer_logistic`),
            ``eight_schools_numpyro`` (:func:`scoresample.models.eight_schools_numpyro` with its
            data), a posteriordb name or alias, or ``module:attribute`` (an object with
            ``logdensity_fn`` and ``dim``, or a zero-argument factory of one).
        posteriordb_root: a full posteriordb checkout for a posteriordb name (default: the subset
            shipped in the package, see :func:`scoresample.posteriordb.find_root`).

    Returns:
        ``(model, model_args, model_kwargs, reference)`` for :func:`scoresample.sample`, with
        ``reference`` the posterior's :class:`~scoresample.posteriordb.ReferenceSummary` or None.

    Example:
        >>> model, args, kwargs, reference = resolve_model("eight_schools")
        >>> reference.variable_names
        ('theta', 'mu', 'tau')
    """
    if name in ("breast_cancer", "breast_cancer_logistic", "logistic"):
        return LogDensityAdapter(breast_cancer_logistic()), (), None, None
    if name in ("eight_schools_numpyro", "eight_schools-numpyro"):
        return (eight_schools_numpyro, (np.asarray(EIGHT_SCHOOLS_DATA["sigma"]),),
                {"y": np.asarray(EIGHT_SCHOOLS_DATA["y"])}, None)
    if ":" in name:
        module, attr = name.split(":", 1)
        obj = getattr(importlib.import_module(module), attr)
        if callable(obj) and not hasattr(obj, "logdensity_fn"):
            try:
                made = obj()
            except TypeError:
                made = None
            if made is not None and hasattr(made, "logdensity_fn"):
                obj = made
        if hasattr(obj, "logdensity_fn") and not hasattr(obj, "initial_position"):
            obj = LogDensityAdapter(obj)
        return obj, (), None, None
    post = load(name, root=posteriordb_root)
    return post, (), None, post.reference


class LogDensityAdapter:
    """Adapts an object with ``logdensity_fn``, ``dim`` (and optional ``names``) for ``sample``.

    Chains start at the origin; :meth:`constrain` names the coordinates (``intercept`` and ``beta``
    for a regression model of :mod:`scoresample.models`, else one block ``x``).
    """

    def __init__(self, model):
        self.model = model
        self.logdensity_fn = model.logdensity_fn
        self.dim = int(model.dim)
        self.name = getattr(model, "description", type(model).__name__)
        self._zeros = jnp.zeros((self.dim,))

    def initial_position(self):
        return self._zeros

    def constrain(self, z):
        # the first coordinate of a regression model is its intercept (scoresample.models)
        names = getattr(self.model, "names", None)
        if names and names[0] == "intercept":
            return {"intercept": z[0], "beta": z[1:]}
        return {"x": z}

