"""Load a posteriordb posterior (data, model, reference) into :class:`Posterior`.

Two sources, one interface:

- the subset shipped in this package (``scoresample/posteriordb/data``, BSD-3 notice of posteriordb in
  ``data/LICENCE.md``): each model's data and, for each posterior, a :class:`ReferenceSummary` of its
  gold-standard draws (mean, sd, their MCSEs, quantiles and a few draws), which is all the pass rule
  needs. Used when neither ``root`` nor ``SCORESAMPLE_POSTERIORDB`` is given;
- a full posteriordb checkout, in posteriordb's own layout::

      ROOT/posteriors/NAME.json                               model_name, data_name, reference name
      ROOT/data/data/DATA.json.zip                            the data (one JSON file in the zip)
      ROOT/reference_posteriors/draws/draws/NAME.json.zip     a list of chains, each {"beta[1]": [...]}
      ROOT/reference_posteriors/draws/info/NAME.info.json     how the reference draws were made

  ``ROOT`` is the ``root`` argument, else the environment variable ``SCORESAMPLE_POSTERIORDB``. The
  full reference draws (:attr:`Posterior.reference_draws`) exist only there.

``scripts/build_posteriordb_data.py`` rebuilds the shipped subset from a full checkout.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from scoresample.posteriordb.checks import ReferenceSummary, summarize
from scoresample.posteriordb.models import MODELS, ModelSpec, param_names

__all__ = ["Posterior", "load", "list_posteriors", "find_root", "ENV_VAR", "PACKAGE_DATA"]

ENV_VAR = "SCORESAMPLE_POSTERIORDB"

# The shipped subset: posteriors/NAME.json.gz ({"info", "reference", "reference_info"}) and
# data/DATA.json.gz (the data dict), beside posteriordb's licence.
PACKAGE_DATA = Path(__file__).resolve().parent / "data"


def find_root(root=None) -> Path | None:
    """The full posteriordb checkout to read: ``root``, else ``$SCORESAMPLE_POSTERIORDB``, else None
    (the subset shipped in the package, :data:`PACKAGE_DATA`).

    Raises:
        FileNotFoundError: naming ``root`` when the folder given has no ``posteriors`` subfolder.
    """
    if root is None:
        root = os.environ.get(ENV_VAR) or None
    if root is None:
        return None
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
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return json.load(fh)
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _as_arrays(data: dict) -> dict:
    return {key: np.asarray(value) if isinstance(value, list) else value
            for key, value in data.items()}


@functools.lru_cache(maxsize=64)
def _shipped_posterior(name: str) -> dict:
    return _read_json(PACKAGE_DATA / "posteriors" / f"{name}.json.gz")


def _posterior_info(root: Path | None, name: str) -> dict:
    if root is None:
        return _shipped_posterior(name)["info"]
    return _read_json(root / "posteriors" / f"{name}.json")


def _data(root: Path | None, data_name: str) -> dict:
    if root is None:
        return _read_json(PACKAGE_DATA / "data" / f"{data_name}.json.gz")
    return _read_json(root / "data" / "data" / f"{data_name}.json.zip")


def list_posteriors(root=None, *, supported_only: bool = True) -> list[str]:
    """Sorted posterior names (by default only those with a log-density here), shipped or in
    ``root``."""
    root = find_root(root)
    if root is None:
        names = sorted(p.name[: -len(".json.gz")]
                       for p in (PACKAGE_DATA / "posteriors").glob("*.json.gz"))
    else:
        names = sorted(p.name[: -len(".json")] for p in (root / "posteriors").glob("*.json"))
    if supported_only:
        names = [n for n in names if _posterior_info(root, n).get("model_name") in MODELS]
    return names


def _resolve(name: str, root: Path | None) -> str:
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
    """A posteriordb posterior: log-density on unconstrained space, transforms and its reference.

    Attributes:
        name: posterior name, e.g. ``"eight_schools-eight_schools_noncentered"``.
        data: the data dict (lists turned into numpy arrays).
        info: the posterior's JSON description (``posteriors/NAME.json``).
        root: the full posteriordb checkout it came from, or None for the subset shipped in the
            package.

    Properties and methods:
        dim: unconstrained dimension. ``logdensity_fn(z)``: unnormalised log-density of ``z`` of
        shape (dim,), Jacobians included. ``constrain(z)``: dict of reference parameters.
        ``unconstrain(x)``: its inverse, from such a dict or a flat vector in ``param_names`` order.
        ``to_reference_order(z)``: flat constrained vector in ``param_names`` order.
        ``param_names``: reference names (``"beta[1]"``, ..., ``"sigma"``). ``reference``: the
        :class:`ReferenceSummary` of the gold-standard draws (what ``pass_rule`` takes).
        ``reference_draws``: the draws themselves, numpy array (chains, draws,
        len(param_names)), from a full checkout only; ``reference_draws_dict()`` the same by name.
        ``initial_position()``: zeros (dim,).

    Example:
        >>> post = load("eight_schools")
        >>> z = post.initial_position()
        >>> post.logdensity_fn(z), post.to_reference_order(z).shape
    """

    name: str
    data: dict = dataclasses.field(repr=False)
    info: dict = dataclasses.field(repr=False)
    root: Path | None = dataclasses.field(repr=False)
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

    def _reference_path(self, kind: str) -> Path:
        if self.reference_name is None:
            raise FileNotFoundError(f"posterior {self.name!r} has no reference posterior")
        if self.root is None:
            raise FileNotFoundError(
                f"posterior {self.name!r}: the package ships a summary of the reference draws "
                f"(Posterior.reference), not the draws; pass root= or set {ENV_VAR} to a full "
                "posteriordb checkout for them")
        suffix = ".json.zip" if kind == "draws" else ".info.json"
        return self.root / "reference_posteriors" / "draws" / kind / f"{self.reference_name}{suffix}"

    @functools.cached_property
    def reference_draws(self) -> np.ndarray:
        """Gold-standard draws, float64 numpy array (chains, draws, len(param_names)); from a full
        posteriordb checkout only (``root=``).

        Raises:
            FileNotFoundError: for the shipped subset (use :attr:`reference`) or a posterior
                without reference.
        """
        path = self._reference_path("draws")
        chains = _read_json(path)
        names = self.param_names
        missing = [n for n in names if n not in chains[0]]
        if missing:
            raise ValueError(f"{path} lacks parameters {missing}")
        return np.stack([np.stack([np.asarray(chain[n], np.float64) for n in names], axis=-1)
                         for chain in chains])

    def reference_draws_dict(self) -> dict:
        """Reference draws as a dict name -> array (chains, draws) or (chains, draws, size); from a
        full posteriordb checkout only."""
        ref, out, start = self.reference_draws, {}, 0
        for name, size in self.spec.blocks:
            out[name] = ref[:, :, start] if size is None else ref[:, :, start:start + size]
            start += 1 if size is None else size
        return out

    @functools.cached_property
    def reference(self) -> ReferenceSummary:
        """The :class:`ReferenceSummary` of the gold-standard draws, in ``param_names`` order: the
        shipped one, or computed from the full draws of ``root``."""
        if self.root is not None:
            return summarize(self.reference_draws, param_names=self.param_names)
        if self.reference_name is None:
            raise FileNotFoundError(f"posterior {self.name!r} has no reference posterior")
        summary = ReferenceSummary.from_json(_shipped_posterior(self.name)["reference"])
        return summary.select(self.param_names)

    @property
    def reference_info(self) -> dict:
        """How the reference draws were made (posteriordb's ``info`` record: inference method,
        arguments and diagnostics)."""
        if self.root is None:
            return _shipped_posterior(self.name)["reference_info"]
        return _read_json(self._reference_path("info"))

    @property
    def reference_mean_position(self):
        """The reference posterior mean (of the constrained draws) mapped to unconstrained space."""
        return self.unconstrain(jnp.asarray(self.reference.mean))

    def unconstrain_draws(self, draws):
        """Map draws (..., len(param_names)) in reference order to unconstrained (..., dim)."""
        draws = jnp.asarray(draws)
        flat = draws.reshape((-1, draws.shape[-1]))
        return jax.vmap(self.unconstrain)(flat).reshape(draws.shape[:-1] + (self.dim,))


def load(name: str, root=None) -> Posterior:
    """Load a posterior by name (``"garch-garch11"``) or unambiguous alias (``"garch"``, ``"garch11"``).

    Args:
        name: a posterior name without ``.json``, or its data or model part.
        root: a full posteriordb checkout (default: ``$SCORESAMPLE_POSTERIORDB``, else the subset
            shipped in the package).

    Returns:
        A :class:`Posterior`; its reference is read on first access.

    Raises:
        TypeError: ``name`` is not a string.
        FileNotFoundError: ``root`` is not a posteriordb folder.
        ValueError: unknown or ambiguous name, or a model without a log-density here.

    Example:
        >>> post = load("eight_schools")
        >>> post.dim, post.reference.mean.shape
        (10, (10,))
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
    data = _as_arrays(_data(root, info["data_name"]))
    spec = MODELS[model_name](data)
    return Posterior(name=name, data=data, info=info, root=root, spec=spec)
