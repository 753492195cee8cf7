"""Convergence checks after sampling, as NumPyro and Stan make them: a warning naming the culprits.

:func:`scoresample.sample` calls :func:`warn_if_not_converged` on every run it returns; the HTML
report marks the same summary rows (:func:`flagged_rows`). A run is flagged when

- the rank-normalised split R-hat of a component exceeds :data:`MAX_R_HAT` (1.01, Vehtari et al.
  2021, the threshold of ArviZ and Stan);
- its bulk or tail ESS is below :data:`MIN_ESS_PER_CHAIN` (100) times the number of chains: the
  rule of Vehtari et al. 2021 and of rstan's warnings ("Bulk/Tail Effective Samples Size (ESS) is
  too low"), below which R-hat and the MCSE themselves are unreliable;
- any transition diverged (``sample_stats.diverging``: a non-finite or runaway step, a NUTS
  divergence, a FORS overflow);
- FORS's clip rate, pooled over the run (clipped estimates / estimates), exceeds the run's
  ``clip_tolerance``: beyond it the clipping bias may no longer be negligible.

Example:
    >>> problems = convergence_problems(dt)   # [] on a healthy run
    >>> warn_if_not_converged(dt)             # a ConvergenceWarning naming them, if any
"""

from __future__ import annotations

import json
import warnings

import numpy as np

__all__ = ["ConvergenceWarning", "convergence_problems", "warn_if_not_converged", "flagged_rows",
           "MAX_R_HAT", "MIN_ESS_PER_CHAIN"]

#: the largest R-hat of a converged run (Vehtari, Gelman, Simpson, Carpenter, Buerkner, 2021)
MAX_R_HAT = 1.01
#: the smallest bulk and tail ESS per chain of a converged run (the same paper; rstan's warnings)
MIN_ESS_PER_CHAIN = 100


class ConvergenceWarning(UserWarning):
    """The chains of a run may not have converged (R-hat, ESS, divergences or FORS's clip rate);
    the message names the variables and the numbers."""


def _num_chains(dt) -> int:
    return int(dt["posterior"].sizes.get("chain", 1))


def flagged_rows(table, num_chains: int) -> np.ndarray:
    """Which rows of a :func:`~scoresample.diagnostics.summary` table fail the R-hat or ESS rule."""
    min_ess = MIN_ESS_PER_CHAIN * num_chains
    r_hat = table["r_hat"].to_numpy(dtype=float)
    bulk = table["ess_bulk"].to_numpy(dtype=float)
    tail = table["ess_tail"].to_numpy(dtype=float)
    return ~((r_hat <= MAX_R_HAT) & (bulk >= min_ess) & (tail >= min_ess))


def _listed(items: list[str], limit: int = 5) -> str:
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f" and {more} more" if more > 0 else "")


def convergence_problems(dt, table=None) -> list[str]:
    """The reasons to doubt a run, one sentence each ([] for a healthy run).

    Args:
        dt: a DataTree from :func:`scoresample.sample` (a ``posterior`` group, and
            ``sample_stats`` with ``diverging`` and, for FORS, ``num_clipped`` / ``num_coins``).
        table: its :func:`~scoresample.diagnostics.summary`, if already computed.
    """
    from scoresample.diagnostics.summary import summary

    if table is None:
        table = summary(dt)
    chains = _num_chains(dt)
    min_ess = MIN_ESS_PER_CHAIN * chains
    names = [str(n) for n in table.index]
    out = []
    r_hat = table["r_hat"].to_numpy(dtype=float)
    bad = [f"{n} ({v:.3f})" for n, v in zip(names, r_hat, strict=True) if not v <= MAX_R_HAT]
    if bad:
        out.append(f"R-hat above {MAX_R_HAT} for {_listed(bad)}")
    for column, label in (("ess_bulk", "bulk"), ("ess_tail", "tail")):
        ess = table[column].to_numpy(dtype=float)
        bad = [f"{n} ({v:.0f})" for n, v in zip(names, ess, strict=True) if not v >= min_ess]
        if bad:
            out.append(f"{label} ESS below {min_ess} ({MIN_ESS_PER_CHAIN} per chain x {chains} "
                       f"chains) for {_listed(bad)}")
    stats = dt["sample_stats"] if "sample_stats" in dt.children else None
    if stats is not None and "diverging" in stats.data_vars:
        num_divergent = int(np.sum(stats["diverging"].values))
        if num_divergent:
            total = int(stats["diverging"].size)
            out.append(f"{num_divergent} of {total} transitions diverged (non-finite, runaway "
                       "or overflowing steps)")
    if stats is not None and {"num_clipped", "num_coins"} <= set(stats.data_vars):
        coins = int(np.sum(stats["num_coins"].values, dtype=np.int64))
        clipped = int(np.sum(stats["num_clipped"].values, dtype=np.int64))
        settings = json.loads(dt.attrs.get("settings", "{}") or "{}")
        tolerance = (settings.get("method_options") or {}).get("clip_tolerance")
        if coins and tolerance is not None and clipped / coins > float(tolerance):
            out.append(f"clip rate {clipped / coins:.2e} ({clipped} of {coins} estimates) above "
                       f"clip_tolerance {float(tolerance):g}")
    return out


def warn_if_not_converged(dt, table=None, *, stacklevel: int = 3) -> list[str]:
    """Issue one :class:`ConvergenceWarning` listing :func:`convergence_problems` (if any); return
    them."""
    problems = convergence_problems(dt, table)
    if problems:
        sampler = dt.attrs.get("sampler", "?")
        warnings.warn(f"scoresample.sample ({sampler}) may not have converged: "
                      + "; ".join(problems) + ". Run longer (num_warmup, num_draws or thin) or "
                      "reparameterise before trusting these draws.", ConvergenceWarning,
                      stacklevel=stacklevel)
    return problems
