"""The posteriordb pass rule: do a sampler's draws agree with the gold-standard reference?

A sampler passes on a posterior when, for every parameter,

    |mean - ref_mean| <= 4 sqrt(mcse^2 + ref_mcse^2)     and     |sd / ref_sd - 1| <= 0.1,

where ``mcse`` is the Monte Carlo standard error of the mean, ``sd / sqrt(ESS_mean)``, computed by
``arviz_stats.mcse(method="mean")`` from the chains (Vehtari et al. 2021, "Rank-normalization,
folding, and localization: an improved R-hat", Bayesian Analysis). Non-finite draws fail.

The rule needs of the reference only its per-parameter mean, sd and MCSE of the mean, so a
:class:`ReferenceSummary` (what :func:`summarize` computes from reference draws, and what the
package ships for each posterior) gives the same verdict, to the last bit, as the draws it was
computed from.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["PassResult", "ReferenceSummary", "pass_rule", "summarize", "QUANTILE_PROBS"]

# the quantiles a ReferenceSummary records
QUANTILE_PROBS = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclasses.dataclass(frozen=True)
class PassResult:
    """Per-parameter comparison of draws with a reference, and the overall verdict.

    Arrays have one entry per parameter: ``z = (mean - ref_mean) / sqrt(mcse^2 + ref_mcse^2)``,
    ``sd_ratio = sd / ref_sd``; ``is_mean_ok = |z| <= z_max``, ``is_sd_ok = |sd_ratio - 1| <= sd_tol``.
    ``passed`` is True when every parameter passes both.
    """

    param_names: tuple
    mean: np.ndarray
    ref_mean: np.ndarray
    mcse: np.ndarray
    ref_mcse: np.ndarray
    z: np.ndarray
    sd: np.ndarray
    ref_sd: np.ndarray
    sd_ratio: np.ndarray
    is_mean_ok: np.ndarray
    is_sd_ok: np.ndarray
    passed: bool
    z_max: float
    sd_tol: float

    @property
    def max_abs_z(self) -> float:
        return float(np.max(np.abs(self.z)))

    @property
    def max_sd_error(self) -> float:
        """max |sd / ref_sd - 1| over parameters."""
        return float(np.max(np.abs(self.sd_ratio - 1.0)))

    @property
    def failures(self) -> tuple:
        """Names of the parameters that fail either test."""
        bad = ~(self.is_mean_ok & self.is_sd_ok)
        return tuple(n for n, b in zip(self.param_names, bad) if b)

    def to_markdown(self) -> str:
        """A markdown table, one row per parameter."""
        lines = ["| parameter | mean | ref mean | z | sd | ref sd | sd ratio | ok |",
                 "|---|---|---|---|---|---|---|---|"]
        for i, name in enumerate(self.param_names):
            ok = "yes" if (self.is_mean_ok[i] and self.is_sd_ok[i]) else "NO"
            lines.append(f"| {name} | {self.mean[i]:.4g} | {self.ref_mean[i]:.4g} | {self.z[i]:+.2f} "
                         f"| {self.sd[i]:.4g} | {self.ref_sd[i]:.4g} | {self.sd_ratio[i]:.3f} | {ok} |")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True, eq=False)
class ReferenceSummary:
    """Per-parameter summary of reference draws: all the pass rule needs, and a little more.

    Attributes:
        param_names: parameter names, posteriordb style (``"theta[1]"``, ..., ``"tau"``).
        mean, sd: mean and standard deviation (ddof=1) over all chains and draws, shape (params,).
        mcse_mean, mcse_sd: their Monte Carlo standard errors (``arviz_stats.mcse``, methods
            ``"mean"`` and ``"sd"``), shape (params,).
        quantile_probs: the probabilities of ``quantiles`` (:data:`QUANTILE_PROBS`).
        quantiles: shape (len(quantile_probs), params).
        num_chains, num_draws: the layout of the draws summarised.
        points: a few of the draws themselves, shape (k, params) (test points on the support).

    Example:
        >>> ref = summarize(reference_draws, param_names=("a", "b"))
        >>> pass_rule(my_draws, ref).passed
    """

    param_names: tuple
    mean: np.ndarray
    sd: np.ndarray
    mcse_mean: np.ndarray
    mcse_sd: np.ndarray
    quantile_probs: np.ndarray
    quantiles: np.ndarray
    num_chains: int
    num_draws: int
    points: np.ndarray

    @property
    def num_params(self) -> int:
        return len(self.param_names)

    @property
    def variable_names(self) -> tuple:
        """The variables the parameters belong to (``"theta[3]"`` belongs to ``"theta"``), in order."""
        out = []
        for name in self.param_names:
            base = name.split("[", 1)[0]
            if base not in out:
                out.append(base)
        return tuple(out)

    def select(self, names) -> ReferenceSummary:
        """The summary of the parameters ``names`` (a sequence of ``param_names``), in that order."""
        names = tuple(names)
        index = {n: i for i, n in enumerate(self.param_names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise ValueError(f"names {missing} are not in the reference ({list(self.param_names)})")
        idx = np.array([index[n] for n in names], dtype=int)
        return dataclasses.replace(
            self, param_names=names, mean=self.mean[idx], sd=self.sd[idx],
            mcse_mean=self.mcse_mean[idx], mcse_sd=self.mcse_sd[idx],
            quantiles=self.quantiles[:, idx], points=self.points[:, idx])

    def select_variables(self, shapes: dict) -> ReferenceSummary:
        """The summary in the order of ``shapes`` (variable name -> shape of one draw), each variable
        flattened in C order with posteriordb's 1-based names (``theta`` of shape (8,) ->
        ``theta[1]``, ..., ``theta[8]``; shape (2, 3) -> ``a[1,1]``, ``a[1,2]``, ...)."""
        names = []
        for var, shape in shapes.items():
            shape = tuple(shape)
            if not shape:
                names.append(var)
            else:
                names.extend(f"{var}[{','.join(str(i + 1) for i in idx)}]"
                             for idx in np.ndindex(*shape))
        return self.select(names)

    def to_json(self) -> dict:
        """A JSON-ready dict (floats written exactly: ``float`` repr round-trips float64)."""
        def floats(a):
            return np.asarray(a, np.float64).tolist()
        return {"param_names": list(self.param_names), "mean": floats(self.mean),
                "sd": floats(self.sd), "mcse_mean": floats(self.mcse_mean),
                "mcse_sd": floats(self.mcse_sd), "quantile_probs": floats(self.quantile_probs),
                "quantiles": floats(self.quantiles), "num_chains": int(self.num_chains),
                "num_draws": int(self.num_draws), "points": floats(self.points)}

    @classmethod
    def from_json(cls, obj: dict) -> ReferenceSummary:
        """Inverse of :meth:`to_json`."""
        names = tuple(obj["param_names"])
        k = len(names)

        def arr(key, shape):
            a = np.asarray(obj[key], np.float64)
            if a.shape != shape:
                raise ValueError(f"reference summary field {key!r} has shape {a.shape}, "
                                 f"expected {shape}")
            return a

        probs = arr("quantile_probs", (len(obj["quantile_probs"]),))
        points = np.asarray(obj["points"], np.float64).reshape(-1, k)
        return cls(names, arr("mean", (k,)), arr("sd", (k,)), arr("mcse_mean", (k,)),
                   arr("mcse_sd", (k,)), probs, arr("quantiles", (len(probs), k)),
                   int(obj["num_chains"]), int(obj["num_draws"]), points)


def _as_chains(name: str, draws) -> np.ndarray:
    arr = np.asarray(draws, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape (chains, draws, params) or (draws, params), "
                         f"got {arr.shape}")
    if arr.shape[1] < 4:
        raise ValueError(f"{name} needs at least 4 draws per chain, got shape {arr.shape}")
    return arr


def _mean_sd_mcse(arr: np.ndarray, method: str = "mean"):
    import arviz_stats  # imported here: the rest of posteriordb does not need ArviZ

    mean = arr.mean(axis=(0, 1))
    sd = arr.std(axis=(0, 1), ddof=1)
    if np.all(np.isfinite(arr)):
        mcse = np.asarray(arviz_stats.mcse(arr, method=method, chain_axis=0, draw_axis=1),
                          dtype=np.float64)
    else:
        mcse = np.full(arr.shape[-1], np.nan)
    return mean, sd, mcse


def _names(param_names, num_params: int) -> tuple:
    if param_names is None:
        return tuple(f"x[{i}]" for i in range(num_params))
    param_names = tuple(param_names)
    if len(param_names) != num_params:
        raise ValueError(f"param_names has {len(param_names)} names for {num_params} parameters")
    return param_names


def summarize(draws, *, param_names=None, num_points: int = 8) -> ReferenceSummary:
    """Summarise reference draws (chains, draws, params) or (draws, params) for :func:`pass_rule`.

    ``num_points`` draws are kept as test points: the last draw of each of the first chains (then
    earlier draws of the same chains, when there are fewer chains).
    """
    arr = _as_chains("draws", draws)
    names = _names(param_names, arr.shape[-1])
    mean, sd, mcse_mean = _mean_sd_mcse(arr)
    _, _, mcse_sd = _mean_sd_mcse(arr, method="sd")
    probs = np.asarray(QUANTILE_PROBS, np.float64)
    quantiles = np.quantile(arr.reshape(-1, arr.shape[-1]), probs, axis=0)
    chains, draws_per_chain = arr.shape[:2]
    picks = [(i % chains, draws_per_chain - 1 - i // chains) for i in range(num_points)]
    points = np.stack([arr[c, d] for c, d in picks]) if picks else np.zeros((0, arr.shape[-1]))
    return ReferenceSummary(names, mean, sd, mcse_mean, mcse_sd, probs, quantiles,
                            chains, draws_per_chain, points)


def pass_rule(draws, reference, *, param_names=None, z_max: float = 4.0,
              sd_tol: float = 0.1) -> PassResult:
    """Compare ``draws`` with ``reference`` by posteriordb's rule (see the module docstring).

    Args:
        draws: the sampler's draws on the reference (constrained) scale, shape
            (chains, draws, params) or (draws, params) for one chain; e.g.
            ``jax.vmap(jax.vmap(posterior.to_reference_order))(positions)``.
        reference: a :class:`ReferenceSummary` (e.g. ``posterior.reference``) or reference draws
            in the layout of ``draws`` and the same parameter order.
        param_names: names for the table (default: the summary's names, else ``"x[0]"``, ...).
        z_max: the bound on |z| (4 in posteriordb's rule).
        sd_tol: the bound on |sd / ref_sd - 1| (0.1).

    Returns:
        :class:`PassResult` with per-parameter ``z`` and ``sd_ratio`` and the verdict ``passed``.

    Example:
        >>> post = load("kidiq")
        >>> res = pass_rule(my_draws, post.reference, param_names=post.param_names)
        >>> res.passed, res.max_abs_z, res.max_sd_error
    """
    draws = _as_chains("draws", draws)
    if not isinstance(reference, ReferenceSummary):
        reference = summarize(_as_chains("reference", reference), num_points=0)
    elif param_names is None:
        param_names = reference.param_names
    if draws.shape[-1] != reference.num_params:
        raise ValueError(f"draws has {draws.shape[-1]} parameters, reference "
                         f"{reference.num_params}")
    if not (z_max > 0 and sd_tol > 0):
        raise ValueError(f"z_max and sd_tol must be > 0, got {z_max}, {sd_tol}")
    param_names = _names(param_names, draws.shape[-1])

    mean, sd, mcse = _mean_sd_mcse(draws)
    ref_mean, ref_sd, ref_mcse = reference.mean, reference.sd, reference.mcse_mean
    diff = mean - ref_mean
    scale = np.sqrt(mcse**2 + ref_mcse**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(diff == 0.0, 0.0, diff / scale)
        sd_ratio = sd / ref_sd
    is_mean_ok = np.abs(z) <= z_max  # NaN compares False: non-finite draws fail
    is_sd_ok = np.abs(sd_ratio - 1.0) <= sd_tol
    passed = bool(np.all(is_mean_ok & is_sd_ok))
    return PassResult(param_names, mean, ref_mean, mcse, ref_mcse, z, sd, ref_sd, sd_ratio,
                      is_mean_ok, is_sd_ok, passed, float(z_max), float(sd_tol))
