"""Summaries: ArviZ's table plus what the draws cost; one-row overviews; z-scores against a reference."""

from __future__ import annotations

import json
import math

import numpy as np

__all__ = ["summary", "overview", "zscores", "cost", "flatten_draws"]


def _check_dt(dt, name: str = "dt", group: str | None = "posterior"):
    """``dt`` must be an ``xarray.DataTree`` (with ``group`` when given)."""
    if not (hasattr(dt, "children") and hasattr(dt, "attrs")):
        raise TypeError(f"{name} must be an xarray.DataTree (as scoresample.sample returns), got "
                        f"{type(dt).__name__}")
    if group is not None and group not in dt.children:
        raise ValueError(f"{name} has no group {group!r} (groups: {sorted(dt.children)})")


def _check_var_names(var_names, dt, group: str):
    if var_names is None:
        return None
    names = [var_names] if isinstance(var_names, str) else list(var_names)
    missing = [n for n in names if n not in dt[group].data_vars]
    if missing:
        raise ValueError(f"var_names {missing} are not in group {group!r} "
                         f"(it has {sorted(dt[group].data_vars)})")
    return names


def cost(dt) -> dict:
    """Gradient evaluations and seconds spent on the kept draws (and on warmup) of a run.

    Uses the attrs written by :func:`scoresample.sample` and falls back on the ``num_grad_evals``
    sample stat (sampling only) when they are absent. Missing values are NaN.
    """
    _check_dt(dt, group=None)
    attrs = dict(dt.attrs)
    nan = float("nan")
    sampling = attrs.get("num_grad_evals_sampling")
    if sampling is None and "sample_stats" in dt.children and \
            "num_grad_evals" in dt["sample_stats"].data_vars:
        sampling = int(np.sum(dt["sample_stats"]["num_grad_evals"].values, dtype=np.int64))
    return {"num_grad_evals_sampling": float(sampling) if sampling is not None else nan,
            "num_grad_evals_warmup": float(attrs.get("num_grad_evals_warmup", nan)),
            "num_grad_evals_total": float(attrs.get("num_grad_evals_total", nan)),
            "wall_time_sampling": float(attrs.get("wall_time_sampling", nan)),
            "wall_time_warmup": float(attrs.get("wall_time_warmup", nan)),
            "wall_time_total": float(attrs.get("wall_time_total", nan))}


def summary(dt, *, var_names=None, group: str = "posterior", ci_prob: float | None = None,
            round_to="none"):
    """``arviz_stats.summary`` of ``dt`` plus cost columns.

    Columns: mean, sd, the equal-tailed interval (89% by default), ess_bulk, ess_tail, r_hat,
    mcse_mean, mcse_sd (ArviZ), then ``ess_bulk_per_1000_grad`` (bulk ESS per 1000 gradient
    evaluations of the sampling phase) and ``ess_bulk_per_s`` (bulk ESS per second of sampling,
    compilation excluded). Warmup is reported by :func:`overview`, not charged here.

    Args:
        dt: a DataTree with a ``posterior`` group (as returned by :func:`scoresample.sample`).
        var_names: variables to keep (default all).
        group: the group to summarise.
        ci_prob: interval probability (ArviZ default 0.89).
        round_to: passed to ArviZ ("none": raw numbers).

    Returns:
        pandas DataFrame, one row per scalar component ("theta[0]").
    """
    import arviz_stats

    _check_dt(dt, group=group)
    var_names = _check_var_names(var_names, dt, group)
    if ci_prob is not None:
        ci_prob = float(ci_prob)
        if not 0.0 < ci_prob < 1.0:
            raise ValueError(f"ci_prob must be in (0, 1), got {ci_prob}")
    table = arviz_stats.summary(dt, var_names=var_names, group=group, ci_prob=ci_prob,
                                round_to=round_to)
    spend = cost(dt)
    grads = spend["num_grad_evals_sampling"]
    seconds = spend["wall_time_sampling"]
    ess = table["ess_bulk"].astype(float)
    table["ess_bulk_per_1000_grad"] = ess / (grads / 1000.0) if grads > 0 else math.nan
    table["ess_bulk_per_s"] = ess / seconds if seconds > 0 else math.nan
    return table


def overview(dt, *, var_names=None) -> dict:
    """One row for a run: worst-case diagnostics and cost.

    Keys: ``sampler``, ``min_ess_bulk``, ``min_ess_tail``, ``max_r_hat``, ``num_divergent``,
    ``mean_acceptance``, ``grad_evals_warmup``, ``grad_evals_sampling``,
    ``ess_per_1000_grad`` (min bulk ESS per 1000 sampling gradient evaluations),
    ``ess_per_s`` (min bulk ESS per second of sampling), ``wall_time_total``.
    """
    table = summary(dt, var_names=var_names)
    spend = cost(dt)
    stats = dt["sample_stats"] if "sample_stats" in dt.children else None
    ndiv = int(np.sum(stats["diverging"].values)) if stats is not None and \
        "diverging" in stats.data_vars else 0
    acc = float(np.mean(stats["acceptance_rate"].values)) if stats is not None and \
        "acceptance_rate" in stats.data_vars else math.nan
    min_ess = float(table["ess_bulk"].min())
    grads, seconds = spend["num_grad_evals_sampling"], spend["wall_time_sampling"]
    return {
        "sampler": str(dt.attrs.get("sampler", "?")),
        "min_ess_bulk": min_ess,
        "min_ess_tail": float(table["ess_tail"].min()),
        "max_r_hat": float(table["r_hat"].max()),
        "num_divergent": ndiv,
        "mean_acceptance": acc,
        "grad_evals_warmup": spend["num_grad_evals_warmup"],
        "grad_evals_sampling": grads,
        "ess_per_1000_grad": min_ess / (grads / 1000.0) if grads > 0 else math.nan,
        "ess_per_s": min_ess / seconds if seconds > 0 else math.nan,
        "wall_time_total": spend["wall_time_total"],
    }


def flatten_draws(variables: dict) -> tuple[np.ndarray, list[str]]:
    """Stack a dict name -> (chain, draw, ...) into (chain, draw, k) with names ``"theta[0]"``."""
    columns, names = [], []
    for name, value in variables.items():
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim < 2:
            raise ValueError(f"variable {name!r} must have shape (chain, draw, ...), got {arr.shape}")
        flat = arr.reshape(arr.shape[:2] + (-1,))
        columns.append(flat)
        if arr.ndim == 2:
            names.append(name)
        else:
            names.extend(f"{name}[{','.join(map(str, idx))}]" for idx in np.ndindex(*arr.shape[2:]))
    return np.concatenate(columns, axis=-1), names


def _reference_variables(reference, names) -> dict:
    if hasattr(reference, "children") and "posterior" in reference.children:
        ds = reference["posterior"]
        return {n: np.asarray(ds[n].values) for n in names if n in ds.data_vars}
    if isinstance(reference, dict):
        out = {}
        for n in names:
            if n in reference:
                arr = np.asarray(reference[n], dtype=np.float64)
                out[n] = arr
        return out
    raise TypeError("reference must be a DataTree with a posterior group or a dict name -> draws "
                    "of shape (chain, draw, ...)")


def zscores(dt, reference, *, z_max: float = 4.0, sd_tol: float = 0.1):
    """Compare a run with a reference, variable by variable (posteriordb's rule, computed by
    :func:`scoresample.posteriordb.pass_rule`).

    ``z = (mean - ref_mean) / sqrt(mcse^2 + ref_mcse^2)`` (MCSE of the mean from ArviZ, for the
    run and for the reference), and ``sd_ratio = sd / ref_sd``. A component passes when
    ``|z| <= z_max`` and ``|sd_ratio - 1| <= sd_tol``.

    Args:
        dt: the run (a DataTree with ``posterior``).
        reference: a DataTree with ``posterior``, a dict name -> draws (chain, draw, ...) (a
            (draw, ...) array is taken as one chain), or a
            :class:`~scoresample.posteriordb.ReferenceSummary` (posteriordb's 1-based names,
            ``theta[1]`` for the run's ``theta[0]``); only variables present in both are compared.

    Returns:
        pandas DataFrame, one row per scalar component, with mean, ref_mean, z, sd, ref_sd, sd_ratio
        and ok; ``df.attrs["passed"]`` is True when every row passes.
    """
    from scoresample.posteriordb.checks import ReferenceSummary, pass_rule

    _check_dt(dt)
    posterior = dt["posterior"]
    if isinstance(reference, ReferenceSummary):
        shapes = {n: posterior[n].shape[2:] for n in posterior.data_vars
                  if n in reference.variable_names}
        if not shapes:
            raise ValueError("reference shares no variable with the run's posterior "
                             f"({sorted(posterior.data_vars)})")
        x, names = flatten_draws({n: posterior[n].values for n in shapes})
        res = pass_rule(x, reference.select_variables(shapes), param_names=names, z_max=z_max,
                        sd_tol=sd_tol)
        return _zscore_table(res, names, z_max, sd_tol)
    ref = _reference_variables(reference, list(posterior.data_vars))
    if not ref:
        raise ValueError("reference shares no variable with the run's posterior "
                         f"({sorted(posterior.data_vars)})")
    run = {n: np.asarray(posterior[n].values) for n in ref}
    for n, arr in ref.items():
        want = run[n].shape[2:]
        if arr.shape[-len(want):] != want if want else False:
            raise ValueError(f"reference[{n!r}] has trailing shape {arr.shape}, the run {want}")
        if arr.ndim == run[n].ndim - 1:
            ref[n] = arr[None]
    x, names = flatten_draws(run)
    r, _ = flatten_draws(ref)

    res = pass_rule(x, r, param_names=names, z_max=z_max, sd_tol=sd_tol)
    return _zscore_table(res, names, z_max, sd_tol)


def _zscore_table(res, names, z_max, sd_tol):
    import pandas as pd

    ok = res.is_mean_ok & res.is_sd_ok
    table = pd.DataFrame({"mean": res.mean, "ref_mean": res.ref_mean, "z": res.z, "sd": res.sd,
                          "ref_sd": res.ref_sd, "sd_ratio": res.sd_ratio, "ok": ok}, index=names)
    table.attrs["passed"] = bool(np.all(ok))
    table.attrs["z_max"] = z_max
    table.attrs["sd_tol"] = sd_tol
    return table


def settings_of(dt) -> dict:
    """The run's settings (the JSON attr written by :func:`scoresample.sample`), or {}."""
    raw = dt.attrs.get("settings")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return {"settings": str(raw)}
