"""Bayesian latency: Picard Langevin against NUTS in effective samples per sequential round.

A round is one batched gradient call that cannot start before the previous one has finished.
NUTS builds its trajectory one leapfrog step at a time, so each gradient is a round; a Picard
Langevin epoch with K iterations is K rounds, whatever its number of points M (the M gradients
of a round are one batch, the axis that is split over devices). For each posteriordb posterior,
``scoresample.bayes.sample`` runs NUTS (BlackJAX window adaptation) and Picard Langevin (step
tuned on the Picard residual) with the same chains, warmup and draws and a dense preconditioner,
and the table gives, per chain,

    ESS per round = (smallest bulk ESS over the reference parameters / chains)
                    / (sequential rounds of one chain in the sampling phase),

next to posteriordb's pass rule (every mean within 4 combined MCSE, every sd within 10%), so that
the rates are compared where both samplers get the posterior right. NUTS's rounds are its
gradient evaluations of each chain as if run alone.

The run forces ``--devices`` host devices (XLA_FLAGS) before JAX starts, as a check that the
sharded time axis runs: the table header records the device count, and the script compiles one
Picard Langevin step and reports whether XLA partitioned its time axis (collectives in the HLO).

    python benchmarks/picard_langevin.py                 # about 20 min on 2 cores
    python benchmarks/picard_langevin.py --names arK-arK --num-draws 300 --out /tmp/pl.md

writes docs/benchmarks/picard_langevin.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _force_devices(argv):
    for i, arg in enumerate(argv):
        if arg == "--devices" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--devices="):
            return int(arg.split("=", 1)[1])
    return 8


NUM_DEVICES = _force_devices(sys.argv[1:])
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={NUM_DEVICES}").strip()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import arviz_stats  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import markdown_table, write_report  # noqa: E402

from scoresample import picard_langevin, posteriordb  # noqa: E402
from scoresample.bayes import sample  # noqa: E402

NAMES = ["arK-arK", "eight_schools-eight_schools_noncentered", "garch-garch11",
         "kidiq-kidscore_momhsiq", "sblrc-blr"]
# (label, method options). M - 1 interior points are evaluated per round, so M = 9 and 33 put
# 8 and 32 points on the time axis: both split evenly over 8 devices.
PICARD_SETTINGS = [("M=9, K=4", {"num_points": 9, "num_iterations": 4}),
                   ("M=33, K=6", {"num_points": 33, "num_iterations": 6})]


def run(post, method, options, args, key):
    start = time.perf_counter()
    dt = sample(key, post, method=method, num_chains=args.num_chains, num_warmup=args.num_warmup,
                num_draws=args.num_draws, method_options=options or None,
                preconditioner="dense", progress_bar=False)
    z = jnp.asarray(dt["unconstrained_posterior"]["z"].values)
    draws = np.asarray(jax.vmap(jax.vmap(post.to_reference_order))(z))
    verdict = posteriordb.pass_rule(draws, post.reference, param_names=post.param_names)
    ess = float(np.min(arviz_stats.ess(draws, method="bulk", chain_axis=0, draw_axis=1)))
    evals = np.asarray(dt["sample_stats"]["num_grad_evals"].values)  # (chain, draw)
    if method == "nuts":
        rounds = float(np.mean(np.sum(evals, axis=1)))  # one gradient per leapfrog step
    else:
        rounds = float(args.num_draws * options["num_iterations"])
    per_chain_ess = ess / args.num_chains
    return {"passed": bool(verdict.passed), "max_abs_z": float(verdict.max_abs_z),
            "max_sd_error": float(verdict.max_sd_error), "ess": ess, "rounds": rounds,
            "ess_per_round": per_chain_ess / rounds,
            "grads": float(np.mean(np.sum(evals, axis=1))),
            "step_size": float(np.mean(dt["sample_stats"]["step_size"].values)),
            "wall": time.perf_counter() - start}


def sharding_check():
    """Compile one Picard Langevin step with M = 9 (8 interior points per round) and report whether
    XLA split its time axis over the devices."""
    algo = picard_langevin(lambda x: -0.5 * jnp.sum(x**2), 0.5, num_points=9, num_iterations=3)
    hlo = jax.jit(algo.step).lower(jax.random.key(0), algo.init(jnp.ones(4))).compile().as_text()
    return any(op in hlo for op in ("all-gather", "collective-permute", "all-to-all",
                                    "all-reduce"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="+", default=NAMES)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--num-warmup", type=int, default=500)
    parser.add_argument("--num-draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "..", "docs", "benchmarks",
                                                      "picard_langevin.md"))
    args = parser.parse_args(argv)
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)

    partitioned = sharding_check()
    log(f"{jax.device_count()} devices; Picard Langevin time axis partitioned: {partitioned}")
    rows, ratios = [], []
    for name in args.names:
        post = posteriordb.load(name)
        key = jax.random.key(args.seed)
        nuts = run(post, "nuts", {}, args, key)
        log(f"{name}: nuts pass {nuts['passed']} ESS {nuts['ess']:.0f} "
            f"ESS/round {nuts['ess_per_round']:.2e} ({nuts['wall']:.0f}s)")
        rows.append([name, post.dim, "NUTS", "yes" if nuts["passed"] else "**no**",
                     f"{nuts['ess']:.0f}", f"{nuts['rounds']:.0f}", f"{nuts['grads']:.0f}",
                     f"{nuts['ess_per_round']:.2e}", "1", f"{nuts['wall']:.0f}"])
        for label, options in PICARD_SETTINGS:
            res = run(post, "picard", options, args, key)
            ratio = res["ess_per_round"] / nuts["ess_per_round"]
            ratios.append((name, label, ratio, res["passed"] and nuts["passed"]))
            log(f"  picard {label}: pass {res['passed']} ESS {res['ess']:.0f} "
                f"ESS/round {res['ess_per_round']:.2e} = {ratio:.2f} x NUTS, "
                f"h {res['step_size']:.3g} ({res['wall']:.0f}s)")
            rows.append([name, post.dim, f"Picard Langevin {label}, h={res['step_size']:.3g}",
                         "yes" if res["passed"] else "**no**", f"{res['ess']:.0f}",
                         f"{res['rounds']:.0f}", f"{res['grads']:.0f}",
                         f"{res['ess_per_round']:.2e}", f"{ratio:.2f}", f"{res['wall']:.0f}"])
    both = [r for r in ratios if r[3]]
    best = {}
    for name, _, ratio, _ in both:
        best[name] = max(best.get(name, 0.0), ratio)
    summary = ("Where both pass, the best Picard Langevin setting per posterior reaches "
               + ", ".join(f"{n.split('-')[0]} {r:.2f}x" for n, r in best.items())
               + " NUTS's ESS per round.") if best else "No posterior where both pass."
    body = [f"{jax.device_count()} forced host devices (XLA_FLAGS "
            f"`--xla_force_host_platform_device_count={args.devices}`); Picard Langevin's time "
            f"axis partitioned by XLA: {partitioned}. {args.num_chains} chains, "
            f"{args.num_warmup} warmup steps, {args.num_draws} draws, dense preconditioner, "
            f"seed {args.seed}, float64, on a shared 2-core CPU (wall seconds include "
            "compilation and warmup).", "",
            "`ESS` is the smallest bulk ESS over the reference parameters (all chains); `rounds` "
            "and `grads` are per chain in the sampling phase; `ESS/round` is per chain; "
            "`x NUTS` divides it by NUTS's on the same posterior; `pass` is posteriordb's rule.",
            "", markdown_table(["posterior", "d", "sampler", "pass", "ESS", "rounds", "grads",
                                "ESS/round", "x NUTS", "wall s"], rows), "", summary, ""]
    write_report(args.out, "Picard Langevin against NUTS: effective samples per sequential round",
                 "\n".join(body), wall_time=time.perf_counter() - start)
    log(f"wrote {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()
