"""Read a posteriordb folder (posteriors, zipped data, zipped reference draws) into :class:`Posterior`.

The layout is posteriordb's own::

    ROOT/posteriors/NAME.json                               model_name, data_name, reference name
    ROOT/data/data/DATA.json.zip                            the data (one JSON file in the zip)
    ROOT/reference_posteriors/draws/draws/NAME.json.zip     a list of chains, each {"beta[1]": [...]}

``ROOT`` is the ``root`` argument, else the environment variable ``SCORESAMPLE_POSTERIORDB``, else the
first ``shared/posteriordb`` found beside a parent folder of this package.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import zipfile
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from scoresample.posteriordb.models import MODELS, ModelSpec, param_names

__all__ = ["Posterior", "load", "list_posteriors", "find_root", "ENV_VAR"]

ENV_VAR = "SCORESAMPLE_POSTERIORDB"


def find_root(root=None) -> Path:
    """The posteriordb folder: ``root``, else ``$SCORESAMPLE_POSTERIORDB``, else a sibling
    ``shared/posteriordb`` of a parent folder of the package.

    Raises:
        FileNotFoundError: naming ``root`` when no folder with a ``posteriors`` subfolder is found.
    """
    if root is None:
        root = os.environ.get(ENV_VAR) or None
    if root is None:
        for parent in Path(__file__).resolve().parents:
            candidate = parent / "shared" / "posteriordb"
            if (candidate / "posteriors").is_dir():
                return candidate
        raise FileNotFoundError(
            f"root: no posteriordb folder given and none found; pass root=PATH or set {ENV_VAR} "
            "to a folder holding posteriors/, data/data/ and reference_posteriors/draws/draws/")
    path = Path(root).expanduser()
    if not (path / "posteriors").is_dir():
        raise FileNotFoundError(f"root: {str(path)!r} is not a posteriordb folder "
                                "(it has no 'posteriors' subfolder)")
    return path


def _read_json(path: Path):
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if m.endswith(".json")]
            if len(members) != 1:
                raise ValueError(f"{path} should hold exactly one .json file, holds {members}")
            return json.loads(archive.read(members[0]))
    with open(path) as fh:
        return json.load(fh)


def _as_arrays(data: dict) -> dict:
    return {key: np.asarray(value) if isinstance(value, list) else value
            for key, value in data.items()}


def _posterior_info(root: Path, name: str) -> dict:
    return _read_json(root / "posteriors" / f"{name}.json")


def list_posteriors(root=None, *, supported_only: bool = True) -> list[str]:
    """Sorted posterior names in the folder (by default only those with a log-density here)."""
    root = find_root(root)
    names = sorted(p.name[: -len(".json")] for p in (root / "posteriors").glob("*.json"))
    if supported_only:
        names = [n for n in names if _posterior_info(root, n).get("model_name") in MODELS]
    return names


def _resolve(name: str, root: Path) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    available = list_posteriors(root, supported_only=False)
    if name in available:
        return name
    matches = [n for n in available if name in n.split("-", 1)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"name {name!r} is ambiguous: it could be any of {matches}")
    raise ValueError(f"unknown name {name!r}; choose one of {available}")


@dataclasses.dataclass(frozen=True, eq=False)
class Posterior:
    """A posteriordb posterior: log-density on unconstrained space, transforms and reference draws.

    Attributes:
        name: posterior name, e.g. ``"eight_schools-eight_schools_noncentered"``.
        data: the data dict (lists turned into numpy arrays).
        info: the posterior's JSON description (``posteriors/NAME.json``).
        root: the posteriordb folder it came from.

    Properties and methods:
        dim: unconstrained dimension. ``logdensity_fn(z)``: unnormalised log-density of ``z`` of
        shape (dim,), Jacobians included. ``constrain(z)``: dict of reference parameters.
        ``unconstrain(x)``: its inverse, from such a dict or a flat vector in ``param_names`` order.
        ``to_reference_order(z)``: flat constrained vector in ``param_names`` order.
        ``param_names``: reference names (``"beta[1]"``, ..., ``"sigma"``). ``reference_draws``:
        numpy array (chains, draws, len(param_names)); ``reference_draws_dict()`` the same by name.
        ``initial_position()``: zeros (dim,).

    Example:
        >>> post = load("eight_schools")
        >>> z = post.initial_position()
        >>> post.logdensity_fn(z), post.to_reference_order(z).shape
    """

    name: str
    data: dict = dataclasses.field(repr=False)
    info: dict = dataclasses.field(repr=False)
    root: Path = dataclasses.field(repr=False)
    spec: ModelSpec = dataclasses.field(repr=False)

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def logdensity_fn(self) -> Callable:
        return self.spec.logdensity_fn

    @property
    def param_names(self) -> tuple[str, ...]:
        return param_names(self.spec.blocks)

    def constrain(self, z) -> dict:
        """Map an unconstrained vector (dim,) to the reference parameters (dict name -> array)."""
        return self.spec.constrain_fn(jnp.asarray(z))

    def to_reference_order(self, z):
        """Map an unconstrained vector (dim,) to the flat constrained vector in ``param_names`` order."""
        params = self.constrain(z)
        return jnp.concatenate([jnp.reshape(params[name], (-1,)) for name, _ in self.spec.blocks])

    def unconstrain(self, x):
        """Inverse of :meth:`constrain` (a dict) or :meth:`to_reference_order` (a flat vector)."""
        if not isinstance(x, dict):
            x = jnp.asarray(x)
            if x.shape != (len(self.param_names),):
                raise ValueError(f"x must be a dict or have shape ({len(self.param_names)},), "
                                 f"got {x.shape}")
            out, start = {}, 0
            for name, size in self.spec.blocks:
                out[name] = x[start] if size is None else x[start:start + size]
                start += 1 if size is None else size
            x = out
        return self.spec.unconstrain_fn(x)

    def initial_position(self):
        """Zeros on unconstrained space (every model has finite log-density and gradient there)."""
        return jnp.zeros((self.dim,))

    @property
    def reference_name(self) -> str | None:
        return self.info.get("reference_posterior_name")

    @functools.cached_property
    def reference_draws(self) -> np.ndarray:
        """Gold-standard draws, float64 numpy array (chains, draws, len(param_names))."""
        if self.reference_name is None:
            raise FileNotFoundError(f"posterior {self.name!r} has no reference posterior")
        path = self.root / "reference_posteriors" / "draws" / "draws" / f"{self.reference_name}.json.zip"
        chains = _read_json(path)
        names = self.param_names
        missing = [n for n in names if n not in chains[0]]
        if missing:
            raise ValueError(f"{path} lacks parameters {missing}")
        return np.stack([np.stack([np.asarray(chain[n], np.float64) for n in names], axis=-1)
                         for chain in chains])

    def reference_draws_dict(self) -> dict:
        """Reference draws as a dict name -> array (chains, draws) or (chains, draws, size)."""
        ref, out, start = self.reference_draws, {}, 0
        for name, size in self.spec.blocks:
            out[name] = ref[:, :, start] if size is None else ref[:, :, start:start + size]
            start += 1 if size is None else size
        return out

    @property
    def reference_mean_position(self):
        """The reference posterior mean (of the constrained draws) mapped to unconstrained space."""
        mean = self.reference_draws.mean(axis=(0, 1))
        return self.unconstrain(jnp.asarray(mean))

    def unconstrain_draws(self, draws):
        """Map draws (..., len(param_names)) in reference order to unconstrained (..., dim)."""
        draws = jnp.asarray(draws)
        flat = draws.reshape((-1, draws.shape[-1]))
        return jax.vmap(self.unconstrain)(flat).reshape(draws.shape[:-1] + (self.dim,))


def load(name: str, root=None) -> Posterior:
    """Load a posterior by name (``"garch-garch11"``) or unambiguous alias (``"garch"``, ``"garch11"``).

    Args:
        name: a file name in ``ROOT/posteriors`` without ``.json``, or its data or model part.
        root: the posteriordb folder (default: ``$SCORESAMPLE_POSTERIORDB``, else the repository's
            ``shared/posteriordb``).

    Returns:
        A :class:`Posterior`; its reference draws are read on first access.

    Raises:
        FileNotFoundError: no posteriordb folder at ``root``.
        ValueError: unknown or ambiguous name, or a model without a log-density here.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    root = find_root(root)
    name = _resolve(name, root)
    info = _posterior_info(root, name)
    model_name = info.get("model_name")
    if model_name not in MODELS:
        raise ValueError(f"name {name!r}: no log-density for model {model_name!r} "
                         f"(implemented: {sorted(MODELS)})")
    data = _as_arrays(_read_json(root / "data" / "data" / f"{info['data_name']}.json.zip"))
    spec = MODELS[model_name](data)
    return Posterior(name=name, data=data, info=info, root=root, spec=spec)
