"""A trained score network: pure-JAX ``score_fn`` / ``energy_fn`` for the samplers, and its files.

:meth:`TrainedScore.save` writes a directory with ``config.json`` (format tag, dimension,
parameterisation, the network's ``get_config()`` and the training settings) and an orbax checkpoint
``arrays/`` of the EMA weights and the loss curve; :func:`load` rebuilds the network from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scoresample import nn
from scoresample.base import jsonable

__all__ = ["TrainedScore", "load"]

_FORMAT = "scoresample.TrainedScore/1"


@dataclasses.dataclass
class TrainedScore:
    """A trained score network (EMA weights) as pure-JAX functions for the samplers.

    Attributes:
        dim: data dimension. parameterization: "eps", "score" or "energy".
        config: the model's ``get_config()`` (None for a custom backbone without one).
        losses: (num_steps_done,) float32 training loss per step.
        settings: the training settings.
    """

    graphdef: Any
    params: Any
    rest: Any
    dim: int
    parameterization: str
    config: dict | None
    losses: np.ndarray
    settings: dict

    @property
    def model(self) -> nn.ScoreModel:
        """A fresh :class:`~scoresample.nn.ScoreModel` holding the EMA weights."""
        return nnx.merge(self.graphdef, self.params, self.rest)

    @property
    def num_steps_done(self) -> int:
        return int(self.losses.shape[0])

    def score_fn(self, x, t):
        """grad log p_t(x) for a point x of shape (dim,) (or a batch (..., dim)); pure JAX.

        It merges the graph definition with the EMA arrays at trace time, so it can be used under
        ``jax.jit``, ``jax.vmap`` and ``jax.grad`` by any sampler.
        """
        return nnx.merge(self.graphdef, self.params, self.rest).score(x, t)

    @property
    def energy_fn(self) -> Callable:
        """``energy_fn(x, t) -> scalar`` with score = -grad energy (energy parameterisation only)."""
        if self.parameterization != "energy":
            raise AttributeError(f"energy_fn exists only for parameterization='energy', this "
                                 f"network is {self.parameterization!r}")

        def energy_fn(x, t):
            return nnx.merge(self.graphdef, self.params, self.rest).energy(x, t)

        return energy_fn

    def save(self, path: str, *, overwrite: bool = False) -> str:
        """Write the network to directory ``path`` (config.json + an orbax checkpoint of the arrays).

        Returns the absolute path. Raises FileExistsError if ``path`` exists unless ``overwrite``.
        """
        import orbax.checkpoint as ocp

        path = os.path.abspath(os.fspath(path))
        if os.path.exists(path):
            if not overwrite:
                raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
            if os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")):
                raise FileExistsError(f"{path} exists and is not a saved TrainedScore; not replacing it")
        os.makedirs(path, exist_ok=True)
        meta = dict(format=_FORMAT, dim=self.dim, parameterization=self.parameterization,
                    config=self.config, settings=self.settings)
        with open(os.path.join(path, "config.json"), "w") as fh:
            json.dump(jsonable(meta), fh, indent=1, sort_keys=True)
        arrays = dict(params=self.params, losses=jnp.asarray(self.losses))
        if jax.tree_util.tree_leaves(self.rest):
            arrays["rest"] = self.rest
        ckpt = ocp.StandardCheckpointer()
        ckpt.save(os.path.join(path, "arrays"), arrays, force=True)
        ckpt.wait_until_finished()
        return path


def load(path: str, *, model: nn.ScoreModel | None = None) -> TrainedScore:
    """Read a network written by :meth:`TrainedScore.save`.

    ``model`` is needed only for a custom backbone that has no ``get_config``: any instance of the same
    architecture (its weights are replaced).
    """
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    cfg_file = os.path.join(path, "config.json")
    if not os.path.exists(cfg_file):
        raise FileNotFoundError(f"no saved TrainedScore at {path} (config.json missing)")
    with open(cfg_file) as fh:
        meta = json.load(fh)
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{path} holds format {meta.get('format')!r}, expected {_FORMAT!r}")
    if model is None:
        if meta["config"] is None:
            raise ValueError("this network has a custom backbone: pass model= (same architecture)")
        abstract = nnx.eval_shape(lambda: nn.build(meta["config"]))
    else:
        abstract = model
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    target = dict(params=params, losses=jax.ShapeDtypeStruct(
        (meta["settings"].get("num_steps_done", 0),), jnp.float32))
    if jax.tree_util.tree_leaves(rest):
        target["rest"] = rest
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    arrays = ocp.StandardCheckpointer().restore(os.path.join(path, "arrays"), target)
    return TrainedScore(graphdef, arrays["params"], arrays.get("rest", rest), int(meta["dim"]),
                        meta["parameterization"], meta["config"], np.asarray(arrays["losses"]),
                        meta["settings"])

