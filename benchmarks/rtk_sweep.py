"""RTK-MALA's tuning on the ranking's exact 64-D target: why it loses to DPM-Solver++ at 100 calls.

    python benchmarks/rtk_sweep.py            # about 15 minutes on 2 CPU cores; docs/benchmarks/rtk_sweep.md

The ranking (benchmarks/ranking.py exact) scores RTK-MALA with the exact energy at 100 score calls
at a within-component KL of 0.045 against DPM-Solver++'s 0.011 (the floor). RTK's only error is
its inner chain (each segment's target is the exact reverse kernel; the start at t_max is N(0, I),
off by a KL of about 1e-9 here), so this sweep asks which of its knobs the loss answers to, on the
same target, t_min, sample sizes and metric as the ranking:

- the split of about 100 calls into K segments of S inner MALA steps (1 + K (1 + S) <= 100);
- the inner step (``inner_step_scale``, tau = scale / L with L the segment's Hessian bound);
- the grid of segment ends (``grid``) and the inner chain's start (``start``);
- S far beyond the budget at the default K (the inner chain run towards its law).

Every row: ``diffusion.sample(key, "rtk-mala", mix.score, energy_fn=mix.energy,
acceptance="energy", t_min=1e-5, ...)`` on ``targets.aniso_subspace_mixture()``, float64, 4 seeds
of 5,000 samples each scored by ``common.evaluate`` against as many exact draws, beside
DPM-Solver++ at 100 calls and the exact-versus-exact floor computed the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from common import evaluate, exact_floor, markdown_table, mean_sd, write_report  # noqa: E402

from scoresample import diffusion, targets  # noqa: E402

T_MIN = 1e-5  # the ranking's EXACT_T_MIN
REPORT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "benchmarks",
                      "rtk_sweep.md")

# (label, group, options of rtk-mala); the default at nfe = 100 is K = 24, S = 3, scale 0.5
ROWS = [
    ("K 24, S 3 (default at nfe 100)", "split", dict(nfe=100)),
    ("K 49, S 1", "split", dict(num_segments=49, num_inner_steps=1)),
    ("K 33, S 2", "split", dict(num_segments=33, num_inner_steps=2)),
    ("K 16, S 5", "split", dict(num_segments=16, num_inner_steps=5)),
    ("K 12, S 7", "split", dict(num_segments=12, num_inner_steps=7)),
    ("scale 0.25", "inner step", dict(nfe=100, inner_step_scale=0.25)),
    ("scale 1.0", "inner step", dict(nfe=100, inner_step_scale=1.0)),
    ("scale 1.5", "inner step", dict(nfe=100, inner_step_scale=1.5)),
    ("grid eta-rule", "grid, start", dict(nfe=100, grid="eta-rule")),
    ("grid uniform", "grid, start", dict(nfe=100, grid="uniform")),
    ("start posterior", "grid, start", dict(nfe=100, start="posterior")),
    ("start ei", "grid, start", dict(nfe=100, start="ei")),
    ("K 24, S 10", "more inner steps", dict(num_segments=24, num_inner_steps=10)),
    ("K 24, S 30", "more inner steps", dict(num_segments=24, num_inner_steps=30)),
]


def run(key, mix, options, seeds, num_samples, method="rtk-mala"):
    extra = dict(energy_fn=mix.energy, acceptance="energy") if method == "rtk-mala" else {}
    t0 = time.perf_counter()
    res = diffusion.sample(key, method, mix.score, dim=mix.dim, num_samples=seeds * num_samples,
                           t_min=T_MIN, **extra, **options)
    wall = time.perf_counter() - t0
    x = np.asarray(res.samples)
    per_seed = [evaluate(x[s * num_samples:(s + 1) * num_samples], mix,
                         jax.random.fold_in(key, 7 + s)) for s in range(seeds)]
    acc = getattr(res.info, "acceptance_rate", None)
    return dict(per_seed=per_seed, nfe=float(res.nfe_needed), wall=wall,
                acceptance=None if acc is None else float(np.mean(np.asarray(acc))),
                divergent=int(np.sum(np.asarray(res.is_divergent))),
                segments=res.settings.get("num_segments"),
                inner_steps=res.settings.get("num_inner_steps"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--report", default=REPORT)
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    mix = targets.aniso_subspace_mixture()
    start = time.perf_counter()
    floor = [exact_floor(mix, args.num_samples, jax.random.fold_in(jax.random.key(17), s))
             for s in range(args.seeds)]
    key = jax.random.key(23)
    results = [("dpm-solver++, 100 calls (the peer)", "peer",
                run(key, mix, dict(nfe=99, denoise=True), args.seeds, args.num_samples,
                    method="dpm-solver++"))]
    print(f"{results[0][0]}: KL {np.mean([d['component_kl'] for d in results[0][2]['per_seed']]):.4f}",
          flush=True)
    for label, group, options in ROWS:
        out = run(key, mix, options, args.seeds, args.num_samples)
        results.append((label, group, out))
        kl = [d["component_kl"] for d in out["per_seed"]]
        print(f"{label:34s} KL {np.mean(kl):.4f} ± {np.std(kl, ddof=1):.4f}  nfe "
              f"{out['nfe']:.0f}  acceptance {out['acceptance']}  {out['wall']:.0f} s", flush=True)

    header = ["rtk-mala (energy)", "knob", "K", "S", "score calls", "inner acceptance",
              "within-component KL", "mode-weight error", "energy distance"]
    rows = []
    for label, group, out in results:
        ps = out["per_seed"]
        rows.append([label, group, out["segments"] or "-", out["inner_steps"] or "-",
                     f"{out['nfe']:.0f}",
                     "-" if out["acceptance"] is None else f"{out['acceptance']:.3f}",
                     mean_sd([d["component_kl"] for d in ps], "{:.4f}"),
                     mean_sd([d["mode_weight_error"] for d in ps], "{:.4f}"),
                     mean_sd([d["energy_distance"] for d in ps], "{:.5f}")])
    rows.append(["exact draws (floor)", "", "", "", "", "",
                 mean_sd([d["component_kl"] for d in floor], "{:.4f}"),
                 mean_sd([d["mode_weight_error"] for d in floor], "{:.4f}"),
                 mean_sd([d["energy_distance"] for d in floor], "{:.5f}")])
    body = ("Command: `python benchmarks/rtk_sweep.py` "
            f"({(time.perf_counter() - start) / 60:.0f} min). Target "
            "`targets.aniso_subspace_mixture()` (64-D, eight thin anisotropic components on a 4-D "
            f"subspace), exact score and energy, t_min = {T_MIN:g}; each cell mean ± sd over "
            f"{args.seeds} seeds of {args.num_samples} samples (the ranking's sizes). Inner "
            "acceptance: the MALA acceptance rate averaged over segments and particles.\n\n"
            + markdown_table(header, rows))
    write_report(args.report, "RTK-MALA's knobs on the 64-D ranking target", body,
                 command="python benchmarks/rtk_sweep.py")
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min; wrote {args.report}")


if __name__ == "__main__":
    main()
