"""RTK-MALA and RTK-ULD against DDPM and DPM-Solver++ on exact-score mixtures (the RTK paper's protocol).

For ``targets.four_modes_2d()``, ``targets.subspace_mixture(16)`` and
``targets.aniso_subspace_mixture()`` (64-D) with exact scores, at each budget of score evaluations
per sample (nfe in 50, 100, 200, 500, 1000) the rows are:

- ``ddpm``: DDPM with the Li-Yan coefficients (nfe steps, output at t_1 of its schedule).
- ``dpm-solver++``: DPM-Solver++(2M) on a log-SNR grid with nfe - 1 steps and a final Tweedie step
  (so its output is denoised like RTK's, at the same budget).
- ``rtk-uld``: RTK with the exact frozen-gradient ULD inner solver.
- ``rtk-mala-energy``: RTK-MALA with energy differences from the exact ``mixture.energy``
  (the energy evaluations are reported apart; an energy network gives both in one pass).
- ``rtk-mala-factory``: RTK-MALA from scores only with the exact Bernoulli-factory test (its cost
  is random: the measured evaluations per particle are reported, the clip rate beside them).
- ``rtk-mala-quad``: RTK-MALA from scores only, energy differences by a 1-node Gauss-Legendre line
  integral of the score (each inner step costs 2 evaluations, all counted in nfe).
- ``rtk-mala-trap``: the same with the trapezoid rule on the two gradients a MALA step already has
  (no extra evaluation; exact for Gaussian data, an O(|z' - z|^3) error otherwise).

RTK runs its defaults for a budget (``diffusion.sample(..., nfe=N)``): at least 24 segments when the
budget allows, 1 to 3 inner steps each, then more segments; a log-SNR grid; free Tweedie denoising
at t_min = 1e-3 (the last segment already evaluated the score there).
Samples are scored by ``common.evaluate`` against exact draws (energy distance, sliced W2,
mode-weight error) beside the exact-versus-exact floor. Seeds: one run of seeds x n particles is split
into ``--seeds`` groups of n, each scored against its own exact reference sample.

    python benchmarks/rtk.py --ablation                       # the full report
    python benchmarks/rtk.py                                  # without the design ablations
    python benchmarks/rtk.py --nfe 100,1000 --seeds 2 --out /tmp/quick.md

writes docs/benchmarks/rtk.md (an analysis written between the notes markers of that file is kept).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from common import (  # noqa: E402
    METRICS,
    evaluate,
    exact_floor,
    markdown_table,
    run_cell,
    summarize,
    write_report,
)

from scoresample import diffusion, targets  # noqa: E402

ALL_METHODS = ["ddpm", "dpm-solver++", "rtk-uld", "rtk-mala-energy", "rtk-mala-factory",
               "rtk-mala-quad", "rtk-mala-trap"]
TARGETS = {"four-modes-2d": targets.four_modes_2d,
           "subspace-16d": lambda: targets.subspace_mixture(16),
           "aniso-64d": targets.aniso_subspace_mixture}


def run_method(rng_key, method: str, mixture, nfe: int, num_samples: int):
    common = dict(dim=mixture.dim, num_samples=num_samples)
    if method == "ddpm":
        return diffusion.sample(rng_key, "ddpm", mixture.score, nfe=nfe, **common)
    if method == "dpm-solver++":
        return diffusion.sample(rng_key, "dpm-solver++", mixture.score, nfe=nfe - 1, denoise=True,
                                **common)
    if method == "rtk-uld":
        return diffusion.sample(rng_key, "rtk-uld", mixture.score, nfe=nfe, **common)
    if method == "rtk-mala-energy":
        return diffusion.sample(rng_key, "rtk-mala", mixture.score, energy_fn=mixture.energy,
                                nfe=nfe, **common)
    if method == "rtk-mala-factory":
        return diffusion.sample(rng_key, "rtk-mala", mixture.score, nfe=nfe,
                                acceptance="factory", **common)
    if method == "rtk-mala-quad":
        return diffusion.sample(rng_key, "rtk-mala", mixture.score, nfe=nfe,
                                acceptance="quadrature", quadrature="gauss-legendre", num_nodes=1,
                                **common)
    if method == "rtk-mala-trap":
        return diffusion.sample(rng_key, "rtk-mala", mixture.score, nfe=nfe,
                                acceptance="quadrature", quadrature="trapezoid", **common)
    raise ValueError(f"unknown method {method!r}")


NOTES_BEGIN, NOTES_END = "<!-- notes: kept when the script rewrites this file -->", "<!-- /notes -->"


def _read_notes(path: str) -> str:
    """The hand-written analysis between the notes markers of an existing report, kept verbatim."""
    if not os.path.exists(path):
        return ""
    text = open(path).read()
    if NOTES_BEGIN not in text or NOTES_END not in text:
        return ""
    inner = text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0]
    return NOTES_BEGIN + inner + NOTES_END + "\n\n"


# Design ablations (run with --ablation): name -> (nfe, method, options). Each row changes one choice
# of the defaults; "factory" rows use scores only, "energy" rows the exact energy.
FACTORY = dict(acceptance="factory")
ENERGY = dict(acceptance="energy")
ABLATIONS = {
    "factory: B=0.5, step 0.5/L, S from the budget (default)": (100, "rtk-mala", FACTORY),
    "factory: S=2": (100, "rtk-mala", dict(FACTORY, num_inner_steps=2)),
    "factory: S=3": (100, "rtk-mala", dict(FACTORY, num_inner_steps=3)),
    "factory: step 0.25/L": (100, "rtk-mala", dict(FACTORY, inner_step_scale=0.25)),
    "factory: step 1/L": (100, "rtk-mala", dict(FACTORY, inner_step_scale=1.0)),
    "factory: B=0.25": (100, "rtk-mala", dict(FACTORY, clip=0.25)),
    "factory: B=1": (100, "rtk-mala", dict(FACTORY, clip=1.0)),
    "factory: start at the DDPM posterior step": (100, "rtk-mala", dict(FACTORY,
                                                                        start="posterior")),
    "factory: sqrt grid": (100, "rtk-mala", dict(FACTORY, grid="sqrt")),
    "factory, nfe 50 (default)": (50, "rtk-mala", FACTORY),
    "energy: K=24, S=3, log-SNR grid (default at 100)": (100, "rtk-mala", ENERGY),
    "energy: K=49, S=1": (100, "rtk-mala", dict(ENERGY, num_inner_steps=1)),
    "energy: K=5 equal segments, S=18 (the paper's setting)": (
        100, "rtk-mala", dict(ENERGY, num_segments=5, grid="uniform")),
    "energy, nfe 50: K=24, S=1 (default at 50)": (50, "rtk-mala", ENERGY),
    "ULD, tau sqrt(L)=1, gamma/sqrt(L)=4 (default)": (100, "rtk-uld", {}),
    "ULD, tau sqrt(L)=0.5, gamma/sqrt(L)=2": (100, "rtk-uld", dict(inner_step_scale=0.5,
                                                                  friction=2.0)),
}


def run_ablations(mixture, base_key, n, seeds):
    rows = []
    for a_index, (label, (nfe, method, options)) in enumerate(ABLATIONS.items()):
        key = jax.random.fold_in(jax.random.fold_in(base_key, 4 * 10**6 + a_index), nfe)
        extra = dict(energy_fn=mixture.energy) if options.get("acceptance") == "energy" else {}
        res = diffusion.sample(key, method, mixture.score, dim=mixture.dim, num_samples=n * seeds,
                               nfe=nfe, **extra, **options)
        samples = np.asarray(res.samples)
        per_seed = [evaluate(samples[s * n:(s + 1) * n], mixture,
                             jax.random.fold_in(jax.random.fold_in(key, 7), s))
                    for s in range(seeds)]
        acc = float(np.mean(np.asarray(res.info.acceptance_rate)))
        rows.append([label, f"{res.nfe_needed:.0f}", res.settings["num_segments"],
                     res.settings["num_inner_steps"], f"{acc:.3f}", _clip_rate(res.info),
                     summarize(per_seed, "energy_distance", "{:.5f}"),
                     summarize(per_seed, "mode_weight_error", "{:.4f}")])
        print(f"ablation {label:55s} ED={_mean(per_seed, 'energy_distance'):.5f} "
              f"MWE={_mean(per_seed, 'mode_weight_error'):.4f}", flush=True)
    return rows


def _clip_rate(info) -> str:
    """The factory's clip rate, sum(num_clipped) / sum(num_coins) ("-" for other tests)."""
    coins = float(np.sum(np.asarray(getattr(info, "num_coins", 0))))
    if coins == 0:
        return "-"
    return f"{float(np.sum(np.asarray(info.num_clipped))) / coins:.4f}"


def _diff(a, b, fmt="{:+.5f}"):
    """Difference of means of two per-seed lists ± its standard error."""
    diff = np.mean(a) - np.mean(b)
    se = math.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))
    return f"{fmt.format(diff)} ± {se:.5f}"


def _verdict_rows(name, focus, seeds):
    """One row per focus run: each metric, and its difference to the floor and the two baselines."""
    rows = []
    refs = [focus["floor", 0], focus.get(("dpm-solver++", 100)), focus.get(("ddpm", 1000))]
    for (method, nfe), per_seed in focus.items():
        label = "exact vs exact" if method == "floor" else f"{method} @ {nfe}"
        row = [name, label]
        for key_name in ("energy_distance", "mode_weight_error"):
            vals = [d[key_name] for d in per_seed]
            row.append(summarize(per_seed, key_name, "{:.5f}"))
            for ref in refs:
                row.append("-" if ref is None or ref is per_seed or seeds < 2 else
                           _diff(vals, [d[key_name] for d in ref]))
        rows.append(row)
    return rows


def _mean(per_seed, key):
    return float(np.mean([d[key] for d in per_seed]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=2000, help="samples per seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--nfe", default="50,100,200,500,1000")
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--focus-samples", type=int, default=10000,
                        help="samples per seed of the RTK@100 vs DDPM@1000 comparison (0: use the "
                             "main table's)")
    parser.add_argument("--ablation", action="store_true",
                        help="also run the design ablations at nfe = 100 (and 50) with "
                             "--focus-samples samples per seed")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs",
                                                      "benchmarks", "rtk.md"))
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.nfe.split(",")]
    methods = args.methods.split(",")
    target_names = args.targets.split(",")
    n, seeds = args.num_samples, args.seeds
    start = time.perf_counter()
    sections, verdicts, ablation_sections = [], [], []
    for t_index, name in enumerate(target_names):
        mixture = TARGETS[name]()
        base_key = jax.random.fold_in(jax.random.key(20240602), t_index)
        floor = [exact_floor(mixture, n, jax.random.fold_in(jax.random.fold_in(base_key, 10**6), s))
                 for s in range(seeds)]
        results = {}
        for m_index, method in enumerate(methods):
            for nfe in budgets:
                key = jax.random.fold_in(jax.random.fold_in(base_key, m_index), nfe)
                res, per_seed, wall = run_cell(key, method, mixture, nfe, n, seeds, run_method)
                info = res.info
                extra = dict(
                    energy=float(np.sum(np.asarray(info.num_energy_evals), axis=0).mean())
                    if hasattr(info, "num_energy_evals") else 0.0,
                    acceptance=float(np.mean(np.asarray(info.acceptance_rate)))
                    if hasattr(info, "acceptance_rate") else float("nan"),
                    segments=res.settings.get("num_segments"),
                    inner=res.settings.get("num_inner_steps"), needed=res.nfe_needed,
                    clip_rate=_clip_rate(info))
                results[method, nfe] = (per_seed, res.nfe, wall, int(np.sum(res.is_divergent)),
                                        extra)
                print(f"{name:14s} {method:15s} nfe={nfe:5d} measured={res.nfe:7.1f} "
                      f"ED={_mean(per_seed, 'energy_distance'):.5f} "
                      f"MWE={_mean(per_seed, 'mode_weight_error'):.4f} "
                      f"K={extra['segments']} S={extra['inner']} acc={extra['acceptance']:.3f} "
                      f"div={results[method, nfe][3]} ({wall:.1f}s)", flush=True)
        body = [f"## {name} (dim {mixture.dim}, {mixture.num_components} modes)", ""]
        for key_name, label in METRICS.items():
            fmt = "{:.5f}" if key_name == "energy_distance" else "{:.4f}"
            header = ["method \\ nfe"] + [str(b) for b in budgets]
            rows = [[method] + [summarize(results[method, b][0], key_name, fmt) for b in budgets]
                    for method in methods]
            rows.append(["exact vs exact"] + [summarize(floor, key_name, fmt)] * len(budgets))
            body += [f"### {label}", "", markdown_table(header, rows)]
        header = ["method", "nfe budget", "score evals per particle", "batch evals",
                  "energy evals", "segments K", "inner steps S", "mean acceptance", "clip rate",
                  "divergent", "wall s"]
        rows = []
        for method in methods:
            for b in budgets:
                _, measured, wall, div, extra = results[method, b]
                rows.append([method, b, f"{extra['needed']:.1f}", f"{measured:.0f}",
                             f"{extra['energy']:.1f}",
                             extra["segments"] if extra["segments"] is not None else "-",
                             extra["inner"] if extra["inner"] is not None else "-",
                             "-" if np.isnan(extra["acceptance"]) else f"{extra['acceptance']:.3f}",
                             extra["clip_rate"], div, f"{wall:.1f}"])
        body += ["### cost and diagnostics", "", markdown_table(header, rows)]
        sections.append("\n".join(body))
        focus = {}
        if args.focus_samples:
            nf = args.focus_samples
            focus_floor = [exact_floor(mixture, nf, jax.random.fold_in(
                jax.random.fold_in(base_key, 2 * 10**6), s)) for s in range(seeds)]
            runs = [("ddpm", 1000), ("dpm-solver++", 100)] + [(m, 100) for m in methods
                                                              if m.startswith("rtk")]
            focus["floor", 0] = focus_floor
            for f_index, (method, nfe) in enumerate(runs):
                key = jax.random.fold_in(jax.random.fold_in(base_key, 3 * 10**6 + f_index), nfe)
                res = run_method(key, method, mixture, nfe, nf * seeds)
                samples = np.asarray(res.samples)
                focus[method, nfe] = [evaluate(samples[s * nf:(s + 1) * nf], mixture,
                                               jax.random.fold_in(jax.random.fold_in(key, 7), s))
                                      for s in range(seeds)]
                print(f"{name:14s} focus {method:15s} nfe={nfe:5d} "
                      f"ED={_mean(focus[method, nfe], 'energy_distance'):.5f} "
                      f"MWE={_mean(focus[method, nfe], 'mode_weight_error'):.4f}", flush=True)
        if args.ablation:
            nf = args.focus_samples or n
            rows = run_ablations(mixture, base_key, nf, seeds)
            floor_ab = [exact_floor(mixture, nf, jax.random.fold_in(
                jax.random.fold_in(base_key, 5 * 10**6), s)) for s in range(seeds)]
            rows.append(["exact vs exact", "-", "-", "-", "-", "-",
                         summarize(floor_ab, "energy_distance", "{:.5f}"),
                         summarize(floor_ab, "mode_weight_error", "{:.4f}")])
            ablation_sections.append("\n".join([
                f"### {name}", "", markdown_table(
                    ["configuration", "score evals", "K", "S", "acceptance", "clip rate",
                     "energy distance", "mode-weight error"], rows)]))
        if focus:
            verdicts += _verdict_rows(name, focus, seeds)
    wall = time.perf_counter() - start
    intro = (f"Each cell: mean ± sd over {seeds} groups of {n} samples, each scored against its own "
             f"{n} exact draws by `benchmarks/common.py:evaluate` (energy distance: V-statistic; "
             "sliced W2: 128 random directions; mode-weight error: total variation between the "
             "component frequencies and the weights). The row 'exact vs exact' scores exact draws "
             "the same way: nothing can do better at this sample size. nfe = score evaluations per "
             "sample, all counted (rtk-mala-energy also makes the 'energy evals' of the cost "
             "table; "
             "the factory's cost is random: evaluations per particle, and what the vmapped batch "
             "executed beside them). "
             "t_min = 1e-3, t_max = `processes.default_t_max(dim)` for dpm-solver++ and RTK; the "
             "Li-Yan schedule for ddpm.\n")
    verdict = ""
    if verdicts:
        nf = args.focus_samples or n
        verdict = ("## RTK at 100 evaluations against the floor, DPM-Solver++ at 100 and DDPM at "
                   "1000\n\n"
                   f"A separate run with {seeds} groups of {nf} samples (more than the tables below, "
                   "to resolve differences near the floor). Each metric: mean ± sd over seeds, then "
                   "the difference of means to the exact-versus-exact floor, to DPM-Solver++ at 100 "
                   "and to DDPM at 1000, ± its standard error (negative: the row is better).\n\n"
                   + markdown_table(["target", "row", "energy distance", "- floor",
                                     "- DPM-Solver++@100", "- DDPM@1000", "mode-weight error",
                                     "- floor", "- DPM-Solver++@100", "- DDPM@1000"], verdicts))
    if ablation_sections:
        nf = args.focus_samples or n
        verdict += ("\n## Design ablations\n\n"
                    f"RTK at nfe = 100 (and 50), {seeds} groups of {nf} samples (mean ± sd); "
                    "'factory' rows use scores only, 'energy' rows the exact energy. Each row "
                    "changes one choice of the defaults. Evaluations are per particle.\n\n"
                    + "\n".join(ablation_sections) + "\n")
    notes = _read_notes(args.out)
    write_report(args.out, "RTK samplers on exact-score mixtures",
                 intro + "\n" + notes + verdict + "\n" + "\n".join(sections), wall_time=wall)
    print(f"wrote {args.out} in {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
