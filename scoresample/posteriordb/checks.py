"""The posteriordb pass rule: do a sampler's draws agree with the gold-standard reference draws?

A sampler passes on a posterior when, for every parameter,

    |mean - ref_mean| <= 4 sqrt(mcse^2 + ref_mcse^2)     and     |sd / ref_sd - 1| <= 0.1,

where ``mcse`` is the Monte Carlo standard error of the mean, ``sd / sqrt(ESS_mean)``, computed by
``arviz_stats.mcse(method="mean")`` from the chains (Vehtari et al. 2021, "Rank-normalization,
folding, and localization: an improved R-hat", Bayesian Analysis). Non-finite draws fail.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["PassResult", "pass_rule"]


@dataclasses.dataclass(frozen=True)
class PassResult:
    """Per-parameter comparison of draws with reference draws, and the overall verdict.

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


def _mean_sd_mcse(arr: np.ndarray):
    import arviz_stats  # imported here: the rest of posteriordb does not need ArviZ

    mean = arr.mean(axis=(0, 1))
    sd = arr.std(axis=(0, 1), ddof=1)
    if np.all(np.isfinite(arr)):
        mcse = np.asarray(arviz_stats.mcse(arr, method="mean", chain_axis=0, draw_axis=1),
                          dtype=np.float64)
    else:
        mcse = np.full(arr.shape[-1], np.nan)
    return mean, sd, mcse


def pass_rule(draws, reference, *, param_names=None, z_max: float = 4.0,
              sd_tol: float = 0.1) -> PassResult:
    """Compare ``draws`` with ``reference`` by posteriordb's rule (see the module docstring).

    Args:
        draws: the sampler's draws on the reference (constrained) scale, shape
            (chains, draws, params) or (draws, params) for one chain; e.g.
            ``jax.vmap(jax.vmap(posterior.to_reference_order))(positions)``.
        reference: reference draws, same layout and parameter order, e.g.
            ``posterior.reference_draws``.
        param_names: names for the table (default ``"x[0]"``, ...).
        z_max: the bound on |z| (4 in posteriordb's rule).
        sd_tol: the bound on |sd / ref_sd - 1| (0.1).

    Returns:
        :class:`PassResult` with per-parameter ``z`` and ``sd_ratio`` and the verdict ``passed``.

    Example:
        >>> post = load("kidiq")
        >>> res = pass_rule(my_draws, post.reference_draws, param_names=post.param_names)
        >>> res.passed, res.max_abs_z, res.max_sd_error
    """
    draws = _as_chains("draws", draws)
    reference = _as_chains("reference", reference)
    if draws.shape[-1] != reference.shape[-1]:
        raise ValueError(f"draws has {draws.shape[-1]} parameters, reference "
                         f"{reference.shape[-1]}")
    if not (z_max > 0 and sd_tol > 0):
        raise ValueError(f"z_max and sd_tol must be > 0, got {z_max}, {sd_tol}")
    num_params = draws.shape[-1]
    if param_names is None:
        param_names = tuple(f"x[{i}]" for i in range(num_params))
    param_names = tuple(param_names)
    if len(param_names) != num_params:
        raise ValueError(f"param_names has {len(param_names)} names for {num_params} parameters")

    mean, sd, mcse = _mean_sd_mcse(draws)
    ref_mean, ref_sd, ref_mcse = _mean_sd_mcse(reference)
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
