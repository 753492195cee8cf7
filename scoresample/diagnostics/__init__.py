"""Diagnostics of sampler output: ArviZ DataTrees, summaries with cost columns, HTML reports.

- :func:`to_datatree` turns arrays of shape (chain, draw, ...) and a kernel's stacked infos into an
  ArviZ 1.x ``xarray.DataTree`` (what :func:`scoresample.sample` returns);
- :func:`summary` is ``arviz_stats.summary`` (mean, sd, interval, bulk and tail ESS, R-hat, MCSE)
  plus cost columns: ESS per 1000 gradient evaluations and ESS per second of sampling;
  :func:`overview` condenses a run to one row (worst ESS, worst R-hat, divergences, cost);
- :func:`zscores` compares a run with reference draws (posteriordb's rule);
- :func:`report` writes one self-contained HTML page (tables and ArviZ plots as embedded PNG);
- :class:`ConvergenceWarning` is what :func:`scoresample.sample` warns with when R-hat, ESS,
  divergences or FORS's clip rate say a run may not have converged
  (:func:`convergence_problems`); the report marks the same rows;
- :func:`save` / :func:`load` write and read a DataTree as netCDF (h5netcdf).

Example:
    >>> dt = scoresample.sample(jax.random.key(0), model, method="fors")
    >>> scoresample.diagnostics.summary(dt)
    >>> scoresample.diagnostics.report(dt, "report.html")
"""

from scoresample.diagnostics.convergence import ConvergenceWarning, convergence_problems
from scoresample.diagnostics.datatree import load, save, to_datatree
from scoresample.diagnostics.report import report
from scoresample.diagnostics.summary import overview, summary, zscores

__all__ = ["to_datatree", "summary", "overview", "zscores", "report", "save", "load",
           "ConvergenceWarning", "convergence_problems"]
