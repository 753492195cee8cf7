"""The baseline diffusion samplers on exact-score mixtures: accuracy against cost.

For ``targets.four_modes_2d()`` and ``targets.subspace_mixture(16)`` with exact scores, every baseline
(ddpm, ddpm-large, ei, pf-ode, ddim, dpm-solver++ and CLD with SSCS on the exact velocity score) runs
at each budget of score evaluations per sample, and its samples are scored against exact samples by
``common.evaluate`` (energy distance, sliced W2, mode-weight error), next to the exact-versus-exact
floor. Seeds: one run of seeds x n particles is split into ``--seeds`` groups of n (particles are
independent, each with its own key), each group scored against its own exact reference sample; the
tables give mean ± sd over groups.

    python benchmarks/baselines.py                       # the full table (about 10 min here)
    python benchmarks/baselines.py --nfe 10,100 --seeds 2 --out /tmp/quick.md

writes docs/benchmarks/baselines.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from common import METRICS, exact_floor, markdown_table, run_cell, summarize, write_report  # noqa: E402

from scoresample import diffusion, targets  # noqa: E402
from scoresample.targets.cld import CLDMixture  # noqa: E402

FLOOR_GROUPS = 10
ALL_METHODS = ["ddpm", "ddpm-large", "ei", "pf-ode", "ddim", "dpm-solver++", "cld"]
TARGETS = {"four-modes-2d": targets.four_modes_2d,
           "subspace-16d": lambda: targets.subspace_mixture(16)}


def run_method(rng_key, method: str, mixture, nfe: int, num_samples: int):
    if method == "cld":
        law = CLDMixture(mixture)
        return diffusion.cld(rng_key, law.velocity_score, dim=mixture.dim, num_samples=num_samples,
                             nfe=nfe)
    return diffusion.sample(rng_key, method, mixture.score, dim=mixture.dim,
                            num_samples=num_samples, nfe=nfe)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=2000, help="samples per seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--nfe", default="10,20,50,100,200,500,1000")
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs",
                                                      "benchmarks", "baselines.md"))
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.nfe.split(",")]
    methods = args.methods.split(",")
    target_names = args.targets.split(",")
    n, seeds = args.num_samples, args.seeds
    start, cpu_start = time.perf_counter(), time.process_time()
    sections = []
    for t_index, name in enumerate(target_names):
        mixture = TARGETS[name]()
        base_key = jax.random.fold_in(jax.random.key(20240601), t_index)
        # The floor is cheap (no sampling), so it uses more groups than the samplers: its mean is
        # then a reliable yardstick (the V-statistic's expectation is 2 E|X - X'| / n, not 0).
        floor = [exact_floor(mixture, n, jax.random.fold_in(jax.random.fold_in(base_key, 10**6), s))
                 for s in range(max(seeds, FLOOR_GROUPS))]
        results = {}  # (method, nfe) -> (per-seed metrics, measured nfe, wall seconds, divergent)
        for m_index, method in enumerate(methods):
            for nfe in budgets:
                key = jax.random.fold_in(jax.random.fold_in(base_key, m_index), nfe)
                res, per_seed, wall = run_cell(key, method, mixture, nfe, n, seeds, run_method)
                results[method, nfe] = (per_seed, res.nfe, wall, int(np.sum(res.is_divergent)))
                print(f"{name:14s} {method:13s} nfe={nfe:5d} measured={res.nfe:7.1f} "
                      f"ED={np.mean([d['energy_distance'] for d in per_seed]):.4f} "
                      f"MWE={np.mean([d['mode_weight_error'] for d in per_seed]):.4f} "
                      f"div={results[method, nfe][3]} ({wall:.1f}s)", flush=True)
        body = [f"## {name} (dim {mixture.dim}, {mixture.num_components} modes, weights "
                f"{', '.join(f'{w:.1f}' for w in np.asarray(mixture.weights))})", ""]
        for key_name, label in METRICS.items():
            header = ["method \\ nfe"] + [str(b) for b in budgets]
            rows = [[method] + [summarize(results[method, b][0], key_name) for b in budgets]
                    for method in methods]
            rows.append(["exact vs exact"] + [summarize(floor, key_name)] * len(budgets))
            body += [f"### {label}", "", markdown_table(header, rows)]
        # Smallest budget whose mean energy distance is within the exact floor's mean + 2 sd.
        ed_floor = np.array([d["energy_distance"] for d in floor])
        threshold = ed_floor.mean() + 2 * ed_floor.std(ddof=1)
        first = []
        for method in methods:
            ok = [b for b in budgets
                  if np.mean([d["energy_distance"] for d in results[method, b][0]]) <= threshold]
            first.append([method, min(ok) if ok else f"> {max(budgets)}"])
        body += [f"### smallest nfe with mean energy distance <= {threshold:.4f} "
                 "(exact floor mean + 2 sd)", "", markdown_table(["method", "nfe"], first)]
        measured = {(m, b): results[m, b][1] for m in methods for b in budgets}
        exact_cost = all(abs(measured[m, b] - b) < 1e-9 for m in methods for b in budgets)
        divergent = sum(results[m, b][3] for m in methods for b in budgets)
        walls = [results[m, b][2] for m in methods for b in budgets]
        body += [f"Measured score evaluations per sample equal the budget in every cell: {exact_cost}. "
                 f"Divergent (flagged) samples: {divergent}. Wall time per cell (compile included): "
                 f"{min(walls):.1f} to {max(walls):.1f} s.", ""]
        sections.append("\n".join(body))
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    intro = (f"Each cell: mean ± sd over {seeds} groups of {n} samples, each scored against its own "
             f"{n} exact draws by `benchmarks/common.py:evaluate` (energy distance: V-statistic; sliced "
             "W2: 128 random directions; mode-weight error: total variation between the component "
             "frequencies and the weights). The row 'exact vs exact' scores exact draws the same way "
             f"({max(seeds, FLOOR_GROUPS)} groups): nothing can do better at this sample size; the "
             f"V-statistic energy distance of two exact samples of size n has mean 2 E|X - X'| / n "
             f"and a skewed spread, so cells within about the floor's mean + 2 sd are at the floor. "
             "Exact scores (`mixture.score`); CLD uses the "
             "exact velocity score of `scoresample.targets.cld.CLDMixture` and SSCS with one "
             "evaluation per step. Defaults of every method (t_min = 1e-3; t_max = "
             "`processes.default_t_max(dim)` for the OU samplers, the Li-Yan schedule for ddpm, "
             "t_max = 1 for CLD; grids uniform in sqrt t for ei, pf-ode, ddim and cld, uniform in "
             "log-SNR for dpm-solver++; pf-ode is Heun in EDM's scaled coordinates). nfe = score "
             "evaluations per sample. Process CPU time "
             f"{cpu / 60:.1f} min (the machine was shared, so wall time overstates the cost).\n")
    write_report(args.out, "Baseline diffusion samplers on exact-score mixtures",
                 intro + "\n" + "\n".join(sections), wall_time=wall)
    print(f"wrote {args.out} in {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
