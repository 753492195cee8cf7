"""BlackJAX NUTS on every posteriordb posterior, checked against the reference draws by the pass rule.

This validates the log-densities of scoresample.posteriordb: NUTS with window adaptation is the
gold-standard sampler, so a posterior that fails here points at the log-density (or at a posterior
that is hard for NUTS with this budget). Per posterior: 4 chains, 1000 warmup steps of BlackJAX
window adaptation (step size and diagonal inverse mass matrix; --dense for a dense one), 1000 draws,
chains vmapped, one jit per posterior; initial points uniform in (-2, 2) on the unconstrained scale
(Stan's default). Draws are mapped to the reference parameters and compared with
``scoresample.posteriordb.pass_rule``.

Usage:
    .venv/bin/python benchmarks/posteriordb_nuts.py [--names a b ...] [--dense] [--seed 0]
        [--target-accept 0.8] [--output docs/benchmarks/posteriordb_nuts.md] [--append]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import blackjax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from blackjax.adaptation.base import get_filter_adapt_info_fn  # noqa: E402

from scoresample import posteriordb  # noqa: E402


def run_nuts(rng_key, logdensity_fn, init_positions, *, num_warmup, num_draws, dense,
             target_accept=0.8):
    """Window adaptation then NUTS, vmapped over chains. Returns positions and per-draw stats."""
    warmup = blackjax.window_adaptation(
        blackjax.nuts, logdensity_fn, is_mass_matrix_diagonal=not dense,
        target_acceptance_rate=target_accept,
        adaptation_info_fn=get_filter_adapt_info_fn(info_keys={"num_integration_steps",
                                                               "is_divergent"}))

    def one_chain(key, position):
        warmup_key, sample_key = jax.random.split(key)
        (state, params), warmup_info = warmup.run(warmup_key, position, num_steps=num_warmup)
        step = blackjax.nuts(logdensity_fn, **params).step

        def body(state, key):
            state, info = step(key, state)
            return state, (state.position, info.num_integration_steps, info.is_divergent,
                           info.acceptance_rate)

        _, (positions, steps, divergent, accept) = jax.lax.scan(
            body, state, jax.random.split(sample_key, num_draws))
        return {"positions": positions, "steps": steps, "divergent": divergent, "accept": accept,
                "warmup_steps": jnp.sum(warmup_info.info.num_integration_steps),
                "step_size": params["step_size"]}

    keys = jax.random.split(rng_key, init_positions.shape[0])
    return jax.vmap(one_chain)(keys, init_positions)


def bench_one(name, *, seed, num_chains, num_warmup, num_draws, dense, target_accept=0.8):
    post = posteriordb.load(name)
    key = jax.random.key(seed)
    init_key, run_key = jax.random.split(key)
    init = post.initial_position()[None, :] + jax.random.uniform(
        init_key, (num_chains, post.dim), minval=-2.0, maxval=2.0)
    fn = jax.jit(lambda k, x: run_nuts(k, post.logdensity_fn, x, num_warmup=num_warmup,
                                       num_draws=num_draws, dense=dense,
                                       target_accept=target_accept))
    start = time.perf_counter()
    out = jax.block_until_ready(fn(run_key, init))
    wall = time.perf_counter() - start
    draws = jax.vmap(jax.vmap(post.to_reference_order))(out["positions"])
    result = posteriordb.pass_rule(np.asarray(draws), post.reference,
                                   param_names=post.param_names)
    steps = np.asarray(out["steps"])
    row = {
        "name": post.name, "dim": post.dim, "passed": result.passed, "max_abs_z": result.max_abs_z,
        "max_sd_error": result.max_sd_error, "failures": result.failures,
        "divergences": int(np.sum(out["divergent"])), "mean_steps": float(steps.mean()),
        "max_steps": int(steps.max()), "accept": float(np.mean(out["accept"])),
        "step_size": np.asarray(out["step_size"]),
        "grad_evals": int(steps.sum() + np.sum(out["warmup_steps"])), "wall": wall,
        "reference_control": _reference_control(post),
    }
    return row, result


def _reference_control(post):
    """The Stan control settings the reference draws were made with (adapt_delta, max_treedepth)."""
    try:
        control = post.reference_info["inference"]["method_arguments"].get("control") or {}
    except (OSError, KeyError, ValueError):
        return "?"
    return f"{control.get('adapt_delta', 0.8)} / {control.get('max_treedepth', 10)}"


def write_report(path, rows, results, args, command, *, append=False):
    num_passed = sum(r["passed"] for r in rows)
    mass = "dense" if args.dense else "diagonal"
    header = [
        "# BlackJAX NUTS on the posteriordb subset",
        "",
        "Validates `scoresample.posteriordb`'s log-densities: gold-standard NUTS draws, mapped to the",
        "reference parameters, against the posteriordb reference draws by "
        "`scoresample.posteriordb.pass_rule`",
        "(every mean within 4 combined Monte Carlo standard errors, every sd within 10%).",
        "The reference draws are 10 x 1000 thinned draws of long Stan runs; the column 'reference",
        "adapt_delta / treedepth' gives the Stan settings they needed. Every section below was written",
        "by the command it shows.",
        "",
    ]
    lines = [
        f"## Run: `{command}`",
        "",
        f"Settings: {args.num_chains} chains (vmapped), {args.num_warmup} warmup steps of BlackJAX "
        f"window adaptation ({mass} inverse mass matrix, target acceptance {args.target_accept}), "
        f"{args.num_draws} draws per chain, max tree depth 10, initial points uniform(-2, 2) on the "
        f"unconstrained scale, seed {args.seed}, float64, jax {jax.__version__}, blackjax "
        f"{blackjax.__version__}. Wall time includes compilation, on a shared 2-core machine.",
        "",
        f"**{num_passed} of {len(rows)} posteriors pass.**",
        "",
        "| posterior | d | pass | max abs z | max sd error | divergences | mean leapfrog steps "
        "| max steps | accept | grad evals (warmup + draws) | wall s "
        "| reference adapt_delta / treedepth |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['dim']} | {'yes' if r['passed'] else '**NO**'} "
            f"| {r['max_abs_z']:.2f} | {r['max_sd_error']:.3f} | {r['divergences']} "
            f"| {r['mean_steps']:.1f} | {r['max_steps']} | {r['accept']:.2f} "
            f"| {r['grad_evals']:,} | {r['wall']:.1f} | {r['reference_control']} |")
    for r, res in zip(rows, results):
        if not r["passed"]:
            lines += ["", f"### Fails: {r['name']}", "",
                      f"Failing parameters: {', '.join(r['failures'])}. Adapted step sizes per "
                      f"chain: {np.array2string(r['step_size'], precision=4)}.", "",
                      res.to_markdown()]
    text = "\n".join(lines) + "\n\n"
    if append and os.path.exists(path):
        with open(path, "a") as fh:
            fh.write(text)
    else:
        with open(path, "w") as fh:
            fh.write("\n".join(header) + "\n" + text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="*", default=None, help="posteriors (default: all)")
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-draws", type=int, default=1000)
    parser.add_argument("--dense", action="store_true", help="dense inverse mass matrix")
    parser.add_argument("--target-accept", type=float, default=0.8,
                        help="window adaptation's target acceptance rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="docs/benchmarks/posteriordb_nuts.md")
    parser.add_argument("--append", action="store_true",
                        help="add this run as a new section of --output instead of overwriting it")
    args = parser.parse_args(argv)
    names = args.names or posteriordb.list_posteriors()
    rows, results = [], []
    for name in names:
        row, result = bench_one(name, seed=args.seed, num_chains=args.num_chains,
                                num_warmup=args.num_warmup, num_draws=args.num_draws,
                                dense=args.dense, target_accept=args.target_accept)
        rows.append(row)
        results.append(result)
        print(f"{name:45s} d={row['dim']:3d} pass={row['passed']!s:5s} "
              f"max|z|={row['max_abs_z']:6.2f} max sd err={row['max_sd_error']:.3f} "
              f"div={row['divergences']:4d} steps={row['mean_steps']:7.1f} "
              f"wall={row['wall']:6.1f}s {' '.join(row['failures'])}", flush=True)
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        command = "python " + " ".join(["benchmarks/posteriordb_nuts.py"] + sys.argv[1:])
        write_report(args.output, rows, results, args, command, append=args.append)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
