"""Where FORS-proximal's gap to NUTS comes from, on whitened logistic regressions (issue 15).

    python benchmarks/fors_gap.py            # about 25 min on 2 shared cores
    python benchmarks/fors_gap.py --quick    # fewer steps, for a smoke test

writes docs/benchmarks/fors_proximal_gap.md. On two logistic regressions (scikit-learn's breast
cancer with its 30 features, and with its first 14, plus an intercept; prior N(0, I)):

1. ``scoresample.sample`` at its defaults, NUTS and FORS (ESS per 1000 gradients, the tuned FORS
   step, clip rate, kernel steps per draw);
2. the FORS-proximal kernel itself on the target whitened by the posterior covariance (from the
   NUTS run), on a grid of steps eta, for the paper's proposal (curvature 0) and the one that
   takes the whitening as its Hessian guess (curvature 1), with clip levels B = 1 and 2, and with
   0 or 1 prox iteration: clip rate, estimate RMS, acceptance, gradients per step and ESS per
   1000 gradients, beside the exact proximal sampler's ESS per step on a standard Gaussian,
   eta / (2 + eta) (lag-one autocorrelation 1 / (1 + eta));
3. for each variant, the step at which the clip rate reaches the warmup's aim (half of the
   default tolerance 1e-3), interpolated log-log, and the ESS per 1000 gradients there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import time
import warnings
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import arviz_stats  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import scoresample  # noqa: E402
from scoresample.diagnostics import ConvergenceWarning  # noqa: E402
from scoresample.kernels.fors import fors, pooled_rates  # noqa: E402
from scoresample.models import breast_cancer_logistic  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "fors_proximal_gap.md"
AIM = 5e-4  # the warmup's aim: half of the default clip_tolerance


def regression(num_features):
    model = breast_cancer_logistic(num_features=num_features)
    return model.logdensity_fn, model.dim


def min_ess(draws):
    return float(np.min(arviz_stats.ess(draws, method="bulk", chain_axis=0, draw_axis=1)))


def run_kernel(logdensity_z, dim, eta, curvature, clip, num_prox_steps, chains, steps, seed=1):
    algo = fors(logdensity_z, eta, clip, None, curvature, num_prox_steps=num_prox_steps)

    def chain(key):
        key_init, key_run = jax.random.split(key)
        state = algo.init(jax.random.normal(key_init, (dim,)))

        def body(state, k):
            state, info = algo.step(k, state)
            return state, (state.position, info)

        return jax.lax.scan(body, state, jax.random.split(key_run, steps))[1]

    positions, infos = jax.jit(jax.vmap(chain))(jax.random.split(jax.random.key(seed), chains))
    burn = steps // 5
    kept = np.asarray(positions)[:, burn:]
    grads = float(np.sum(np.asarray(infos.num_grad_evals)[:, burn:]))
    rates = pooled_rates(infos)
    ess = min_ess(kept)
    return {"eta": eta, "clip_rate": rates["clip_rate"], "num_clipped":
            int(np.sum(infos.num_clipped)), "w_rms": float(np.sqrt(np.mean(np.asarray(
                infos.w_rms) ** 2))), "acceptance": rates["acceptance"],
            "grads_per_step": rates["evals_per_step"], "ess_per_1000_grad": 1000 * ess / grads,
            "prox_rejected": rates["prox_rejection_rate"],
            "ideal_per_1000_grad": 1000 * eta / (2 + eta) / rates["evals_per_step"]}


def at_aim(rows):
    """log-log interpolation of eta and ESS/1k grad at the clip rate AIM."""
    pts = [(r["eta"], r["clip_rate"], r["ess_per_1000_grad"]) for r in rows if r["clip_rate"] > 0]
    below = [p for p in pts if p[1] <= AIM]
    above = [p for p in pts if p[1] > AIM]
    if not below or not above:
        return None
    (e0, c0, s0), (e1, c1, s1) = max(below), min(above)
    t = (math.log(AIM) - math.log(c0)) / (math.log(c1) - math.log(c0))
    eta = math.exp(math.log(e0) + t * (math.log(e1) - math.log(e0)))
    ess = math.exp(math.log(s0) + t * (math.log(s1) - math.log(s0)))
    slope = (math.log(c1) - math.log(c0)) / (math.log(e1) - math.log(e0))
    return eta, ess, slope


def model_section(name, num_features, args):
    logdensity_fn, dim = regression(num_features)
    lines = [f"## {name} (d = {dim})", ""]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        nuts = scoresample.sample(jax.random.key(0), logdensity_fn, init=jnp.zeros(dim),
                                  method="nuts", num_draws=args.reference_draws,
                                  progress_bar=False)
        t1 = time.perf_counter()
        fors_dt = scoresample.sample(jax.random.key(1), logdensity_fn, init=jnp.zeros(dim),
                                     method="fors", progress_bar=False)
        t2 = time.perf_counter()
    nuts_row = scoresample.diagnostics.overview(nuts)
    fors_row = scoresample.diagnostics.overview(fors_dt)
    stats = fors_dt["sample_stats"]
    clip = float(stats["num_clipped"].values.sum() / stats["num_coins"].values.sum())
    details = json.loads(fors_dt.attrs["warmup_details"])
    lines += ["`scoresample.sample` at its defaults (4 chains, 1000 warmup steps; dense "
              "preconditioner; FORS with `thin=\"auto\"`):", "",
              "| method | kept draws | steps per draw | min bulk ESS | max R-hat | ESS / 1k grad | "
              "step | clip rate | wall (s) |", "|---|---|---|---|---|---|---|---|---|",
              f"| NUTS | {4 * args.reference_draws} | 1 | {nuts_row['min_ess_bulk']:.0f} | "
              f"{nuts_row['max_r_hat']:.3f} | {nuts_row['ess_per_1000_grad']:.3g} | "
              f"{float(np.mean(nuts['sample_stats']['step_size'].values)):.3g} | | {t1 - t0:.0f} |",
              f"| FORS | 4000 | {fors_dt.attrs['thin']} | {fors_row['min_ess_bulk']:.0f} | "
              f"{fors_row['max_r_hat']:.3f} | {fors_row['ess_per_1000_grad']:.3g} | "
              f"{details['step_size']:.3g} | {clip:.1e} | {t2 - t1:.0f} |", "",
              "FORS / NUTS, ESS per gradient: "
              f"**{fors_row['ess_per_1000_grad'] / nuts_row['ess_per_1000_grad']:.3f}**.", ""]
    # the posterior covariance from NUTS whitens the target for the kernel runs
    flat = nuts["posterior"]["x"].values.reshape(-1, dim)
    chol = jnp.asarray(np.linalg.cholesky(np.cov(flat.T)))
    mean = jnp.asarray(flat.mean(axis=0))

    def logdensity_z(z):
        return logdensity_fn(mean + chol @ z)

    lines += ["FORS-proximal kernel on the target whitened by the posterior covariance "
              f"({args.chains} chains x {args.steps} steps, the first fifth dropped):", "",
              "| curvature | B | prox iterations | eta | clip rate (clips) | estimate RMS | "
              "acceptance | grads/step | prox rejected | ESS / 1k grad | exact proximal "
              "sampler's ESS / 1k grad at this eta and cost |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for curvature, clip_level, etas in args.grid[num_features]:
        rows = []
        for eta in etas:
            r = run_kernel(logdensity_z, dim, eta, curvature, clip_level, 1, args.chains,
                           args.steps)
            rows.append(r)
            lines.append(f"| {curvature:g} | {clip_level:g} | 1 | {eta:g} | {r['clip_rate']:.1e} "
                         f"({r['num_clipped']}) | {r['w_rms']:.3f} | {r['acceptance']:.3f} | "
                         f"{r['grads_per_step']:.2f} | {r['prox_rejected']:.3f} | "
                         f"{r['ess_per_1000_grad']:.3g} | {r['ideal_per_1000_grad']:.3g} |")
            print(name, curvature, clip_level, eta, r, flush=True)
        summary.append((curvature, clip_level, at_aim(rows)))
    eta0 = args.grid[num_features][0][2][1]
    r = run_kernel(logdensity_z, dim, eta0, 1.0, 1.0, 0, args.chains, args.steps)
    lines.append(f"| 1 | 1 | 0 | {eta0:g} | {r['clip_rate']:.1e} ({r['num_clipped']}) | "
                 f"{r['w_rms']:.3f} | {r['acceptance']:.3f} | {r['grads_per_step']:.2f} | "
                 f"{r['prox_rejected']:.3f} | {r['ess_per_1000_grad']:.3g} | "
                 f"{r['ideal_per_1000_grad']:.3g} |")
    lines += ["", f"At the warmup's aim (clip rate {AIM:g}, interpolated log-log between the grid "
              "points around it):", "", "| curvature | B | eta | ESS / 1k grad | ... / NUTS's | "
              "clip rate ~ eta^k, k = |", "|---|---|---|---|---|---|"]
    for curvature, clip_level, found in summary:
        if found is None:
            lines.append(f"| {curvature:g} | {clip_level:g} | not bracketed by the grid | | | |")
            continue
        eta, ess, slope = found
        lines.append(f"| {curvature:g} | {clip_level:g} | {eta:.3g} | {ess:.3g} | "
                     f"{ess / nuts_row['ess_per_1000_grad']:.3f} | {slope:.1f} |")
    lines.append("")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    args.chains, args.steps = (4, 600) if args.quick else (8, 3000)
    args.reference_draws = 1000 if args.quick else 2500
    args.grid = {30: [(0.0, 1.0, (0.01, 0.02, 0.04)), (1.0, 1.0, (0.01, 0.02, 0.04, 0.08)),
                      (1.0, 2.0, (0.02, 0.04, 0.08))],
                 14: [(0.0, 1.0, (0.02, 0.04, 0.08)), (1.0, 1.0, (0.04, 0.08, 0.16, 0.32)),
                      (1.0, 2.0, (0.08, 0.16, 0.32))]}
    tic = time.perf_counter()
    lines = ["# FORS-proximal: where the gap to NUTS comes from", "",
             f"Produced by `python benchmarks/fors_gap.py{' --quick' if args.quick else ''}` on "
             f"{datetime.date.today()} ({platform.machine()}, shared 2-core CPU, float64).", ""]
    for name, k in (("Breast cancer, 30 features + intercept", 30),
                    ("Breast cancer, first 14 features + intercept", 14)):
        lines += model_section(name, k, args)
    lines.append(f"Total wall time {time.perf_counter() - tic:.0f} s.")
    notes = Path(args.out).with_name("fors_proximal_gap_notes.md")
    if notes.exists():
        lines += ["", notes.read_text()]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
