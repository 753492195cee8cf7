"""Every sampler on every posteriordb posterior: posteriordb's pass rule, ESS and what it cost.

For each posterior of ``scoresample.posteriordb`` and each method, ``scoresample.sample`` runs 4
chains (1000 warmup, 1000 kept draws by default); the draws are mapped to the reference parameters
and compared with the gold-standard draws by ``posteriordb.pass_rule`` (every mean within 4
combined MCSE, every sd within 10%). ESS is the smallest bulk ESS over the reference parameters;
cost columns divide it by the gradient evaluations and the seconds of the sampling phase. BlackJAX
NUTS runs in the same process, side by side, first. With ``--budget defaults`` (the default) every
method runs at ``scoresample.sample``'s defaults (``thin="auto"``: FORS takes the steps a kept
draw needs); with ``--budget nuts`` every other method is thinned so that a kept draw costs about
what a NUTS draw costs on that posterior, from the gradient evaluations per kernel step of
``scoresample.bayes.methods.METHODS``.

Results are cached per (posterior, method, preconditioner) in a JSON file, so the tables can be
built from several invocations (each one process); every row records the command that made it.
:func:`main` takes the command line of ``benchmarks/posteriordb_methods.py`` (which calls it) and of
``scoresample bench``:

    python benchmarks/posteriordb_methods.py --methods nuts,fors,rtk,picard,mala
    python benchmarks/posteriordb_methods.py --render-only

writes docs/benchmarks/posteriordb_methods.md (pass table) and docs/benchmarks/ess.md (cost table).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
import zlib
from pathlib import Path

# the defaults write into a source checkout's docs/benchmarks (where the published tables live)
ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks"
# the runs at the defaults of issue 15; posteriordb_methods.json keeps the earlier runs
DEFAULT_RESULTS = DOCS / "posteriordb_defaults.json"
SCRIPT = "benchmarks/posteriordb_methods.py"

__all__ = ["main", "run_one", "render", "load_results", "save_results"]


def _worst(names, values):
    import numpy as np

    values = np.where(np.isfinite(values), values, np.inf)
    return names[int(np.argmax(values))]


def run_one(post, method: str, preconditioner: str, args, thin="auto") -> dict:
    """Sample ``post`` with ``method`` (settings from the parsed ``args``); the row of the tables.

    A crash is a result too: the row then holds ``error`` and ``wall``.
    """
    import arviz_stats
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scoresample import posteriordb
    from scoresample.bayes import sample

    key = jax.random.fold_in(jax.random.key(args.seed), zlib.crc32(post.name.encode()) % (2**31))
    # a scout given on the command line, for every method but NUTS (else sample's default)
    given = getattr(args, "warmup_scout", None)
    scout = {"warmup_scout": given} if given is not None and method != "nuts" else {}
    t0 = time.perf_counter()
    try:
        dt = sample(key, post, method=method, num_chains=args.num_chains,
                    num_warmup=args.num_warmup, num_draws=args.num_draws,
                    preconditioner=preconditioner, thin=thin, progress_bar=False,
                    **scout)
    except Exception as err:  # a crash is a result too
        return {"error": f"{type(err).__name__}: {err}", "wall": time.perf_counter() - t0}
    z = jnp.asarray(dt["unconstrained_posterior"]["z"].values)
    draws = np.asarray(jax.vmap(jax.vmap(post.to_reference_order))(z))
    finite = bool(np.all(np.isfinite(draws)) and np.all(np.abs(draws) < 1e150))
    res = posteriordb.pass_rule(draws, post.reference, param_names=post.param_names)
    if finite:
        ess = np.asarray(arviz_stats.ess(draws, method="bulk", chain_axis=0, draw_axis=1))
        rhat = np.asarray(arviz_stats.rhat(draws, chain_axis=0, draw_axis=1))
    else:
        ess = np.zeros(draws.shape[-1])
        rhat = np.full(draws.shape[-1], np.inf)
    stats = dt["sample_stats"]
    details = json.loads(dt.attrs["warmup_details"])
    grads = int(dt.attrs["num_grad_evals_sampling"])
    seconds = float(dt.attrs["wall_time_sampling"])
    min_ess = float(np.min(ess))
    out = {
        "passed": bool(res.passed) and finite,
        "finite": finite,
        "max_abs_z": float(np.nan_to_num(res.max_abs_z, nan=np.inf)),
        "max_sd_error": float(np.nan_to_num(res.max_sd_error, nan=np.inf)),
        "failures": list(res.failures),
        "worst_z_param": _worst(post.param_names, np.abs(res.z)),
        "worst_sd_param": _worst(post.param_names, np.abs(res.sd_ratio - 1)),
        "min_ess_bulk": min_ess,
        "max_r_hat": float(np.max(rhat)),
        "grad_evals_sampling": grads,
        "grad_evals_warmup": int(dt.attrs["num_grad_evals_warmup"]),
        "grads_per_draw": grads / (args.num_chains * args.num_draws),
        "thin": int(dt.attrs.get("thin", 1)),
        "preconditioner_used": json.loads(dt.attrs["settings"])["preconditioner"],
        "warmup_scout": json.loads(dt.attrs["settings"]).get("warmup_scout"),
        "ess_per_1000_grad": min_ess / (grads / 1000.0),
        "ess_per_s": min_ess / seconds if seconds > 0 else float("nan"),
        "wall_sampling": seconds,
        "wall_warmup": float(dt.attrs["wall_time_warmup"]),
        "wall_total": time.perf_counter() - t0,
        "divergent": int(np.sum(stats["diverging"].values)),
        "acceptance": float(np.mean(stats["acceptance_rate"].values)),
        "step_size": float(np.mean(stats["step_size"].values)),
        "laplace_curvature": details.get("laplace_curvature"),
    }
    if {"num_clipped", "num_coins"} <= set(stats.data_vars):  # pooled: clips / estimates
        out["clip_rate"] = float(stats["num_clipped"].values.sum()
                                 / max(int(stats["num_coins"].values.sum()), 1))
    elif "clip_rate" in stats.data_vars:
        out["clip_rate"] = float(np.mean(stats["clip_rate"].values))
    for name in ("prox_rejected", "is_prox_rejected"):  # FORS's prox test, if sample reports it
        if name in stats.data_vars:
            out["prox_rejection_rate"] = float(np.mean(stats[name].values))
    return out


def load_results(path: Path) -> dict:
    """The cached rows, keyed ``posterior|method|preconditioner`` (empty if ``path`` is missing)."""
    if path.exists():
        return json.loads(path.read_text())
    return {}


def save_results(path: Path, results: dict):
    """Write the rows atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _label(method, preconditioner):
    """Columns: the method at the default preconditioner ("auto"), or with the one named."""
    return method if preconditioner == "auto" else f"{method} ({preconditioner})"


def _pct(value: float) -> str:
    return ">1000%" if not value <= 10 else f"{value:.0%}"


def _why(r: dict) -> str:
    """A short reason for a failed row, from what was measured."""
    if "error" in r:
        return "crashed: " + r["error"][:80]
    reasons = []
    if not r.get("finite", True):
        reasons.append("chains ran away (overflowing draws)")
    if r["min_ess_bulk"] < 100 or r["max_r_hat"] > 1.05:
        reasons.append(f"does not mix (min ESS {r['min_ess_bulk']:.0f}, R-hat {r['max_r_hat']:.2f})")
    if r["divergent"]:
        reasons.append(f"{r['divergent']} divergent draws")
    if r.get("clip_rate", 0) > 0.01:
        reasons.append(f"clip rate {r['clip_rate']:.1%} (bias)")
    if r["max_sd_error"] > 0.1:
        reasons.append(f"sd off by {_pct(r['max_sd_error'])} ({r['worst_sd_param']})")
    if r["max_abs_z"] > 4:
        reasons.append(f"mean |z| = {r['max_abs_z']:.1f} ({r['worst_z_param']})")
    return "; ".join(reasons) or "?"


def _budget_text(rows) -> str:
    budgets = sorted({r.get("budget", "nuts") for r in rows})
    text = {"defaults": "Budget `defaults`: every method at `scoresample.sample`'s defaults, "
                        "`thin=\"auto\"` (one kernel step per kept draw, except the proximal "
                        "samplers FORS and RTK, which take ceil(1 / step size) steps per draw; "
                        "column `thin` of the details).",
            "nuts": "Budget `nuts`: NUTS runs first on each posterior; every other method is "
                    "thinned (`thin` kernel steps per kept draw) so that a kept draw costs about "
                    "the gradient evaluations of a NUTS draw there (`thin = round(NUTS grads per "
                    "draw / method grads per step)`, at least 1): *at NUTS's gradient budget, does "
                    "the method get the posterior right?*",
            "draws": "Budget `draws`: every method keeps num_draws consecutive kernel steps."}
    return " ".join(text.get(b, b) for b in budgets)


def render(results: dict, args):
    """Write the pass table to ``args.out`` and the cost table to ``args.ess_out``."""
    rows = sorted(results.values(), key=lambda r: (r["posterior"], r["method"], r["preconditioner"]))
    posteriors = sorted({r["posterior"] for r in rows})
    columns = []
    for r in rows:
        lab = _label(r["method"], r["preconditioner"])
        if lab not in columns:
            columns.append(lab)
    order = [f"{m}{p}" for m in ("fors", "rtk", "nuts", "picard", "mala", "ula")
             for p in ("", " (dense)", " (diagonal)")]
    columns.sort(key=lambda c: order.index(c) if c in order else 99)
    table = {(r["posterior"], _label(r["method"], r["preconditioner"])): r for r in rows}
    commands = sorted({r["command"] for r in rows})
    if getattr(args, "merge", ""):
        commands.append(f"python {SCRIPT} --render-only --merge "
                        + args.merge + "   # merges the result files into these tables")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    settings = sorted({(r["num_chains"], r["num_warmup"], r["num_draws"]) for r in rows})

    # ---- pass table ----
    lines = ["# posteriordb: does each sampler pass?", "",
             f"Generated by `{SCRIPT}` (the commands are listed at the end) "
             f"on {now}, on a shared 2-core CPU, float64.", "",
             "Rule (posteriordb): a run passes when, for every reference parameter, the mean is within "
             "4 combined Monte Carlo standard errors of the reference mean and the sd within 10% of "
             "the reference sd (`scoresample.posteriordb.pass_rule`). Runs: "
             + ", ".join(f"{c} chains x ({w} warmup + {n} kept draws)" for c, w, n in settings)
             + ", `scoresample.sample` otherwise at its defaults (gradient-only L-BFGS to the mode, "
             "a Laplace start, staged step-size and preconditioner windows, the preconditioner "
             "dense up to 200 dimensions; FORS keeps its clip rate below 1e-3; NUTS: BlackJAX "
             "NUTS tuned by `blackjax.window_adaptation` to an acceptance of 0.9, with the same "
             "kind of mass matrix). A column named "
             "`method (dense)` or `method (diagonal)` forced that preconditioner.", "",
             _budget_text(rows), ""]
    count = {c: sum(1 for p in posteriors if (p, c) in table and table[(p, c)].get("passed"))
             for c in columns}
    ran = {c: sum(1 for p in posteriors if (p, c) in table) for c in columns}
    lines.append("| posterior | d | " + " | ".join(columns) + " |")
    lines.append("|---|---|" + "---|" * len(columns))
    for p in posteriors:
        cells = []
        dim = next((r["dim"] for r in rows if r["posterior"] == p), "")
        for c in columns:
            r = table.get((p, c))
            if r is None:
                cells.append("")
            elif "error" in r:
                cells.append("crash")
            elif r["passed"]:
                cells.append(f"pass (ESS {r['min_ess_bulk']:.0f})")
            elif not r.get("finite", True):
                cells.append("**FAIL** (runaway)")
            else:
                cells.append(f"**FAIL** (\\|z\\| {r['max_abs_z']:.1f}, sd {_pct(r['max_sd_error'])}, "
                             f"ESS {r['min_ess_bulk']:.0f})")
        lines.append(f"| {p} | {dim} | " + " | ".join(cells) + " |")
    lines.append("| **passed** | | " + " | ".join(f"**{count[c]}/{ran[c]}**" for c in columns) + " |")
    lines += ["", "Cells: verdict, then for failures the largest \\|z\\| of a mean, the largest relative "
              "sd error and the smallest bulk ESS over the reference parameters.", "",
              "## Where a method fails, and why", "",
              "Reasons are read off the measurements (ESS, R-hat, divergences, FORS clip rate, which "
              "parameter is off).", "", "| posterior | method | why |", "|---|---|---|"]
    for p in posteriors:
        for c in columns:
            r = table.get((p, c))
            if r is not None and not r.get("passed", False):
                lines.append(f"| {p} | {c} | {_why(r)} |")
    lines += ["", "## Details", "",
              "| posterior | method | thin | min ESS | max R-hat | grads/draw | step size | accept | "
              "clip rate | divergent | Laplace curvature | wall (s) | run (UTC) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in posteriors:
        for c in columns:
            r = table.get((p, c))
            if r is None or "error" in r:
                continue
            clip = f"{r['clip_rate']:.2%}" if "clip_rate" in r else ""
            curv = r.get("laplace_curvature")
            lines.append(f"| {p} | {c} | {r.get('thin', 1)} | {r['min_ess_bulk']:.0f} | "
                         f"{r['max_r_hat']:.3f} | "
                         f"{r['grads_per_draw']:.1f} | {r['step_size']:.3g} | {r['acceptance']:.2f} | "
                         f"{clip} | {r['divergent']} | {'' if curv is None else f'{curv:.3g}'} | "
                         f"{r['wall_total']:.0f} | {r.get('date', 'earlier (undated)')} |")
    lines += ["", "## Commands", "", "```"] + commands + ["```", "",
              f"Machine: {platform.machine()}, Python {platform.python_version()}, "
              f"{os.cpu_count()} cores shared with other jobs (wall times are loaded-machine times).",
              ""]
    if args.notes and Path(args.notes).exists():
        lines += [Path(args.notes).read_text()]
    Path(args.out).write_text("\n".join(lines))

    # ---- ESS table ----
    lines = ["# ESS per gradient evaluation and per second, every method on every posterior", "",
             f"Generated by `{SCRIPT}` on {now}, from the runs of "
             "`docs/benchmarks/posteriordb_methods.md`: on each posterior BlackJAX NUTS ran first "
             "and every other method in the same process beside it (commands at the end).", "",
             "ESS = the smallest bulk ESS over the reference parameters (ArviZ), of "
             + ", ".join(f"{c} chains x {n} kept draws" for c, _, n in settings)
             + " (the budget is stated on the pass table). `ESS/1k grad` "
             "divides it by the gradient evaluations of the sampling phase (per 1000), `ESS/s` by "
             "its wall time (compilation excluded; a loaded 2-core CPU, so compare within a row). "
             "Warmup costs are in the last column. A cost figure means little where the run fails "
             "the pass rule (marked FAIL): a biased sampler can be cheap.", ""]
    lines.append("| posterior | method | pass | min ESS | ESS/1k grad | ESS/s | grads/draw | "
                 "warmup grads |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for p in posteriors:
        for c in columns:
            r = table.get((p, c))
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {p} | {c} | crash | | | | | |")
                continue
            lines.append(f"| {p} | {c} | {'pass' if r['passed'] else 'FAIL'} | "
                         f"{r['min_ess_bulk']:.0f} | {r['ess_per_1000_grad']:.3g} | "
                         f"{r['ess_per_s']:.3g} | {r['grads_per_draw']:.1f} | "
                         f"{r['grad_evals_warmup']:,} |")
    lines += ["", "## Relative to NUTS", "",
              "Geometric mean over posteriors of (method's ESS/1k grad) / (NUTS's ESS/1k grad, same "
              "preconditioner), over the posteriors where both ran (and where both pass).", "",
              "| method | posteriors | ratio (all) | posteriors both pass | ratio (both pass) |",
              "|---|---|---|---|---|"]
    for c in columns:
        base = "nuts" + c[len(c.split(" ")[0]):]  # NUTS with the same preconditioner
        if c == base:
            continue
        pairs, pairs_pass = [], []
        for p in posteriors:
            a, b = table.get((p, c)), table.get((p, base))
            if a is None or b is None or "error" in a or "error" in b:
                continue
            if a["ess_per_1000_grad"] > 0 and b["ess_per_1000_grad"] > 0:
                ratio = a["ess_per_1000_grad"] / b["ess_per_1000_grad"]
                pairs.append(ratio)
                if a["passed"] and b["passed"]:
                    pairs_pass.append(ratio)

        def gmean(v):
            return math.exp(sum(math.log(x) for x in v) / len(v)) if v else float("nan")

        lines.append(f"| {c} | {len(pairs)} | {gmean(pairs):.3g} | {len(pairs_pass)} | "
                     f"{gmean(pairs_pass):.3g} |")
    lines += ["", "## Commands", "", "```"] + commands + ["```", ""]
    Path(args.ess_out).write_text("\n".join(lines))
    print(f"wrote {args.out} and {args.ess_out}")


def main(argv=None):
    """Run the benchmark with command-line arguments ``argv`` (default ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--posteriors", default="all",
                        help="comma-separated posterior names or aliases (default: all)")
    parser.add_argument("--methods", default="nuts,fors,rtk")
    parser.add_argument("--preconditioners", default="auto",
                        help="comma-separated: auto (scoresample.sample's default), dense, diagonal")
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", default="defaults", choices=["defaults", "nuts", "draws"],
                        help="defaults: every method at scoresample.sample's defaults (thin "
                             "'auto'); nuts: thin every other method so that a kept draw costs "
                             "about the gradient evaluations of a NUTS draw on that posterior (NUTS "
                             "runs first); draws: every method keeps num_draws consecutive steps")
    parser.add_argument("--warmup-scout", default=None, choices=["nuts"],
                        help="scoresample.sample's warmup_scout for every method but NUTS "
                             "(default: sample's own default, 'auto')")
    parser.add_argument("--results", default=str(DEFAULT_RESULTS))
    parser.add_argument("--out", default=str(DOCS / "posteriordb_methods.md"))
    parser.add_argument("--ess-out", default=str(DOCS / "ess.md"))
    parser.add_argument("--notes", default=str(DOCS / "posteriordb_methods_notes.md"),
                        help="a markdown file appended to the pass table (if it exists)")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--merge", default="",
                        help="comma-separated result files to merge into the tables (entries of "
                             "--results win)")
    parser.add_argument("--reverse", action="store_true", help="posteriors in reverse order")
    parser.add_argument("--skip-done", action="store_true",
                        help="do not rerun (posterior, method, preconditioner) already in results")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    results_path = Path(args.results)
    results = load_results(results_path)
    if not args.render_only:
        import jax

        jax.config.update("jax_enable_x64", True)
        from scoresample import posteriordb
        from scoresample.bayes.methods import METHODS

        names = posteriordb.list_posteriors() if args.posteriors == "all" else [
            posteriordb.load(n).name for n in args.posteriors.split(",")]
        command = "python " + " ".join(shlex.quote(a) for a in [SCRIPT] + argv)
        for name in (names[::-1] if args.reverse else names):
            post = posteriordb.load(name)
            for preconditioner in args.preconditioners.split(","):
                methods = args.methods.split(",")
                if args.budget == "nuts":  # NUTS first: its cost per draw sets the others' thinning
                    methods = sorted(methods, key=lambda m: m != "nuts")
                nuts_cost = None
                for method in methods:
                    key = f"{name}|{method}|{preconditioner}"
                    nuts_key = f"{name}|nuts|{preconditioner}"
                    if nuts_key in results and "error" not in results[nuts_key]:
                        nuts_cost = results[nuts_key]["grads_per_draw"]
                    if args.skip_done and key in results:
                        continue
                    thin = "auto" if args.budget == "defaults" else 1
                    if args.budget == "nuts" and method != "nuts" and nuts_cost is not None:
                        thin = max(1, round(nuts_cost / METHODS[method].nominal_grads_per_step))
                    r = run_one(post, method, preconditioner, args, thin)
                    r.update(posterior=name, method=method, preconditioner=preconditioner,
                             dim=post.dim, command=command, num_chains=args.num_chains,
                             num_warmup=args.num_warmup, num_draws=args.num_draws, seed=args.seed,
                             budget=args.budget, date=datetime.datetime.now(
                                 datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"))
                    results[key] = r
                    save_results(results_path, results)
                    if "error" in r:
                        print(f"{name:42s} {_label(method, preconditioner):14s} CRASH {r['error']}",
                              flush=True)
                    else:
                        print(f"{name:42s} {_label(method, preconditioner):14s} "
                              f"{'pass' if r['passed'] else 'FAIL'} |z|={r['max_abs_z']:.2f} "
                              f"sd={r['max_sd_error']:.3f} ESS={r['min_ess_bulk']:.0f} "
                              f"ESS/1kgrad={r['ess_per_1000_grad']:.3g} ESS/s={r['ess_per_s']:.3g} "
                              f"div={r['divergent']} t={r['wall_total']:.0f}s", flush=True)
    merged = {}
    for extra in [f for f in args.merge.split(",") if f]:
        merged.update(load_results(Path(extra)))
    merged.update(results)
    render(merged, args)
