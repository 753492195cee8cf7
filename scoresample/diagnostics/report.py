"""One self-contained HTML page for one or many runs: tables, ArviZ plots, reference z-scores.

Plots come from ``arviz_plots`` (trace and marginal densities, rank plots, ESS per quantile), drawn
with matplotlib, saved as PNG and embedded as base64 ``<img>`` tags, so the page is one file with no
script and no external resource.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from scoresample.base import check_int
from scoresample.diagnostics.convergence import (
    MAX_R_HAT,
    MIN_ESS_PER_CHAIN,
    convergence_problems,
    flagged_rows,
)
from scoresample.diagnostics.summary import overview, settings_of, summary, zscores

__all__ = ["report", "figure_to_img", "plot_images", "html_table"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { border-bottom: 2px solid #345; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { margin-top: 1.5em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.88em; display: block;
        overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #eef2f6; }
td:first-child, th:first-child { text-align: left; }
tr.bad td { background: #fde2e2; }
.note { color: #555; font-size: 0.9em; }
.plots img { max-width: 100%; border: 1px solid #ddd; margin: .4em 0; display: block; }
.pass { color: #176b2c; font-weight: bold; } .fail { color: #a11; font-weight: bold; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def _esc(text) -> str:
    return html.escape(str(text))


def _fmt(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return _esc(value)
    if math.isnan(v):
        return "&ndash;"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.3e}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.4g}"


def html_table(rows: list[dict], *, bad=None, cls="") -> str:
    """An HTML ``<table>``, one column per key of ``rows[0]``; rows flagged in ``bad`` are red."""
    if not rows:
        return "<p class='note'>(empty)</p>"
    columns = list(rows[0])
    out = [f"<table class='{cls}'><thead><tr>"]
    out += [f"<th>{_esc(c)}</th>" for c in columns]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(rows):
        klass = " class='bad'" if bad is not None and bad[i] else ""
        out.append(f"<tr{klass}>" + "".join(f"<td>{_fmt(row[c])}</td>" for c in columns) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _frame_table(df, *, bad=None) -> str:
    rows = []
    for name, row in df.iterrows():
        rows.append({"": name, **{c: row[c] for c in df.columns}})
    return html_table(rows, bad=bad, cls="summary")


def figure_to_img(fig, alt: str, *, dpi: int = 72) -> str:
    """A matplotlib figure as an embedded ``<img>`` (PNG, base64)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<img alt='{_esc(alt)}' src='data:image/png;base64,{data}'>"


def _png_to_img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img alt='{_esc(alt)}' src='data:image/png;base64,{data}'>"


def _plot_subset(dt, max_components: int):
    """A DataTree holding at most ``max_components`` scalar components of the posterior."""
    import xarray as xr

    posterior = dt["posterior"].to_dataset()
    keep, total = {}, 0
    for name in posterior.data_vars:
        var = posterior[name]
        extra = [d for d in var.dims if d not in ("chain", "draw")]
        size = int(np.prod([var.sizes[d] for d in extra])) if extra else 1
        if total >= max_components:
            break
        if total + size > max_components and extra:
            room = max_components - total
            # keep the first entries along the first extra dim, the first along the others
            sel = {extra[0]: slice(0, max(1, room))}
            sel.update({d: slice(0, 1) for d in extra[1:]})
            var = var.isel(sel)
            size = min(size, max(1, room))
        keep[name] = var
        total += size
    tree = {"posterior": xr.Dataset(keep)}
    if "sample_stats" in dt.children:
        tree["sample_stats"] = dt["sample_stats"].to_dataset()
    return xr.DataTree.from_dict(tree), total


def plot_images(dt, label: str, *, max_components: int = 8, dpi: int = 60) -> list[str]:
    """Trace/density, rank and ESS plots of a run (``arviz_plots``), as embedded ``<img>`` tags.

    A plot that fails is replaced by a note naming the error, so one bad plot never loses a report.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import arviz_plots
    import matplotlib.pyplot as plt

    subset, shown = _plot_subset(dt, max_components)
    plots = [("trace and marginal densities", arviz_plots.plot_trace_dist),
             ("rank plots", arviz_plots.plot_rank),
             ("ESS (bulk, local) per quantile", arviz_plots.plot_ess)]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (title, fn) in enumerate(plots):
            path = Path(tmp) / f"plot{i}.png"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pc = fn(subset, backend="matplotlib")
                    pc.savefig(str(path), dpi=dpi)
                out.append(f"<h4>{_esc(title)}</h4>" + _png_to_img(path, f"{label}: {title}"))
            except Exception as err:  # a plot must not lose the report
                out.append(f"<p class='note'>{_esc(title)}: not drawn ({_esc(type(err).__name__)}: "
                           f"{_esc(err)})</p>")
            finally:
                plt.close("all")
    total = sum(int(np.prod([v.sizes[d] for d in v.dims if d not in ("chain", "draw")]) or 1)
                for v in dt["posterior"].data_vars.values())
    if shown < total:
        out.insert(0, f"<p class='note'>Plots show {shown} of {total} components.</p>")
    return out


def _runs(dt_or_dict) -> dict:
    """Normalise to {section: {label: dt}}."""
    if hasattr(dt_or_dict, "children"):
        return {"": {str(dt_or_dict.attrs.get("sampler", "run")): dt_or_dict}}
    if not isinstance(dt_or_dict, dict) or not dt_or_dict:
        raise TypeError("dt_or_dict must be a DataTree, a dict label -> DataTree, or a dict "
                        "section -> {label: DataTree}")
    values = list(dt_or_dict.values())
    if all(hasattr(v, "children") for v in values):
        return {"": {str(k): v for k, v in dt_or_dict.items()}}
    if all(isinstance(v, dict) and all(hasattr(w, "children") for w in v.values()) for v in values):
        return {str(s): {str(k): v for k, v in runs.items()} for s, runs in dt_or_dict.items()}
    raise TypeError("dt_or_dict must be a DataTree, a dict label -> DataTree, or a dict "
                    "section -> {label: DataTree}")


def _reference_for(reference, section: str, sections: list[str]):
    if reference is None:
        return None
    if isinstance(reference, dict) and reference and set(reference) <= set(sections) and \
            not any(isinstance(v, np.ndarray) for v in reference.values()):
        return reference.get(section)
    return reference


def _settings_rows(dt) -> list[dict]:
    attrs = dt.attrs
    settings = settings_of(dt)
    keep = ["method", "num_chains", "num_warmup", "num_draws", "method_options", "model", "dim"]
    row = {k: settings.get(k, "") for k in keep if k in settings}
    for key in ("num_grad_evals_warmup", "num_grad_evals_sampling", "wall_time_warmup",
                "wall_time_sampling", "wall_time_total"):
        if key in attrs:
            row[key] = attrs[key]
    return [row] if row else []


def report(dt_or_dict, path, reference=None, *, title: str = "scoresample report",
           max_plot_components: int = 8, extra_sections=None, notes: str | None = None) -> Path:
    """Write one self-contained HTML page describing one or many runs.

    Args:
        dt_or_dict: a DataTree (from :func:`scoresample.sample`), a dict label -> DataTree (a
            comparison), or a dict section -> {label: DataTree} (several models).
        path: the HTML file to write (folders are created).
        reference: draws to compare with: a DataTree with ``posterior`` or a dict name -> draws
            (chain, draw, ...); with sections, a dict section -> such a reference. Each run then
            gets a z-score table (posteriordb's rule: |z| <= 4, sd within 10%).
        title: page title.
        max_plot_components: scalar components shown in the plots of each run.
        extra_sections: list of ``(heading, html_or_matplotlib_figure)`` appended to the page.
        notes: a paragraph (HTML) placed under the title.

    Returns:
        The path written.

    Example:
        >>> report({"fors": dt_fors, "nuts": dt_nuts}, "out/report.html")
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
    max_plot_components = check_int("max_plot_components", max_plot_components)
    sections = _runs(dt_or_dict)
    path = Path(path).expanduser()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<h1>{_esc(title)}</h1>", f"<p class='note'>Written {now} by scoresample.</p>"]
    if notes:
        body.append(f"<p>{notes}</p>")
    names = list(sections)
    for section, runs in sections.items():
        if section:
            body.append(f"<h2>{_esc(section)}</h2>")
        ref = _reference_for(reference, section, names)
        rows, verdicts = [], {}
        z_tables = {}
        for label, dt in runs.items():
            row = {"run": label, **overview(dt)}
            if ref is not None:
                try:
                    z = zscores(dt, ref)
                    z_tables[label] = z
                    verdicts[label] = z.attrs["passed"]
                    row["max |z|"] = float(np.nanmax(np.abs(z["z"].values)))
                    row["max |sd ratio - 1|"] = float(np.nanmax(np.abs(z["sd_ratio"].values - 1)))
                    row["matches reference"] = bool(z.attrs["passed"])
                except (ValueError, TypeError) as err:
                    z_tables[label] = str(err)
            rows.append(row)
        body.append("<h3>Comparison</h3>")
        body.append("<p class='note'>ESS is the smallest bulk ESS over all components; cost "
                    "columns divide it by the gradient evaluations (per 1000) and seconds of the "
                    "sampling phase (warmup listed apart).</p>")
        body.append(html_table(rows, cls="comparison"))
        for label, dt in runs.items():
            body.append(f"<h3 id='{_esc(section)}-{_esc(label)}'>{_esc(label)}"
                        f"{(' &mdash; ' + _esc(section)) if section else ''}</h3>")
            body.append(html_table(_settings_rows(dt), cls="settings"))
            table = summary(dt)
            bad = list(flagged_rows(table, int(dt["posterior"].sizes.get("chain", 1))))
            body.append("<h4>Summary</h4>")
            problems = convergence_problems(dt, table)
            if problems:
                body.append("<p class='fail'>May not have converged: "
                            + "; ".join(_esc(p) for p in problems) + ".</p>")
            body.append(f"<p class='note'>Rows are marked where R-hat &gt; {MAX_R_HAT} or the "
                        f"bulk or tail ESS is below {MIN_ESS_PER_CHAIN} per chain (the rule of "
                        "<code>scoresample.diagnostics.ConvergenceWarning</code>).</p>")
            body.append(_frame_table(table, bad=bad))
            if label in z_tables:
                z = z_tables[label]
                if isinstance(z, str):
                    body.append(f"<p class='note'>z-scores not computed: {_esc(z)}</p>")
                else:
                    verdict = "<span class='pass'>matches</span>" if z.attrs["passed"] else \
                        "<span class='fail'>does not match</span>"
                    body.append(f"<h4>Against the reference: {verdict}</h4>")
                    body.append("<p class='note'>z = (mean - ref mean) / sqrt(mcse^2 + "
                                "ref mcse^2); a row is flagged when |z| &gt; 4 or the sd is more "
                                "than 10% off.</p>")
                    body.append(_frame_table(z, bad=list(~z["ok"].values)))
            body.append("<div class='plots'>")
            body.extend(plot_images(dt, label, max_components=max_plot_components))
            body.append("</div>")
    for heading, content in extra_sections or []:
        body.append(f"<h2>{_esc(heading)}</h2>")
        if hasattr(content, "savefig"):
            body.append("<div class='plots'>" + figure_to_img(content, heading, dpi=80) + "</div>")
        else:
            body.append(str(content))
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
