"""The ``scoresample`` command: the demo, sampling, benchmarks and training without writing Python.

    scoresample demo [--out outputs/demo/report.html] [--quick]
    scoresample sample --model eight_schools --method fors [--out run.nc] [--report run.html]
    scoresample bench --posteriordb PATH [--methods fors,rtk,nuts]
    scoresample train --dataset two-moons [--num-steps 20000] [--out outputs/train]

``main(argv=None)`` is the entry point (``pyproject``: ``scoresample = "scoresample.cli:main"``); it
returns the process exit code. This module only parses the command line; each sub-command calls
the library: :func:`scoresample.demo.run_demo`, :func:`scoresample.sample` on a model named by
:func:`scoresample.posteriordb.resolve_model`, :func:`scoresample.bench.main` and
:func:`scoresample.train.run_training`. Everything runs in float64 except the score network
(float32).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


def _log(msg: str):
    print(msg, flush=True)


def _cmd_demo(args) -> int:
    from scoresample.demo import run_demo

    run_demo(args.out, seed=args.seed, quick=args.quick, num_warmup=args.num_warmup,
             num_draws=args.num_draws, num_chains=args.num_chains,
             methods=tuple(args.methods.split(",")), train_steps=args.train_steps,
             progress_bar=args.progress, preconditioner=args.preconditioner)
    return 0


def _cmd_sample(args) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    import pandas as pd

    from scoresample import diagnostics
    from scoresample.bayes import sample
    from scoresample.posteriordb import resolve_model

    model, model_args, model_kwargs, reference = resolve_model(args.model, args.posteriordb)
    method_options = json.loads(args.method_options) if args.method_options else None
    dt = sample(jax.random.key(args.seed), model, method=args.method,
                num_chains=args.num_chains, num_warmup=args.num_warmup,
                num_draws=args.num_draws, model_args=model_args,
                model_kwargs=model_kwargs, progress_bar=not args.no_progress,
                output=args.output, resume=args.resume,
                method_options=method_options, preconditioner=args.preconditioner)
    table = diagnostics.summary(dt)
    with pd.option_context("display.max_rows", 200, "display.width", 160):
        print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    row = diagnostics.overview(dt)
    _log(f"\n{args.method}: min ESS {row['min_ess_bulk']:.0f}, max R-hat {row['max_r_hat']:.3f}, "
         f"{row['num_divergent']} divergent, {int(row['grad_evals_sampling']):,} gradient "
         f"evaluations ({row['ess_per_1000_grad']:.3g} ESS per 1000), {row['ess_per_s']:.3g} "
         f"ESS/s")
    if reference is not None:
        z = diagnostics.zscores(dt, reference)
        _log(f"against the posteriordb reference: max |z| {abs(z['z']).max():.2f}, max sd error "
             f"{abs(z['sd_ratio'] - 1).max():.1%}: "
             f"{'matches' if z.attrs['passed'] else 'DOES NOT match'}")
    if args.out:
        diagnostics.save(dt, args.out)
        _log(f"draws: {args.out}")
    if args.report:
        path = diagnostics.report({args.method: dt}, args.report, reference=reference,
                                  title=f"scoresample: {args.model} with {args.method}")
        _log(f"report: {path}")
    return 0


def _cmd_bench(args) -> int:
    root = Path(args.posteriordb).expanduser()
    if not (root / "posteriors").is_dir():
        _log(f"error: --posteriordb {str(root)!r} is not a posteriordb folder (no posteriors/)")
        return 2
    os.environ["SCORESAMPLE_POSTERIORDB"] = str(root)
    from scoresample import bench

    argv = ["--methods", args.methods, "--num-warmup", str(args.num_warmup), "--num-draws",
            str(args.num_draws), "--num-chains", str(args.num_chains), "--seed", str(args.seed),
            "--preconditioners", args.preconditioners, "--posteriors", args.posteriors,
            "--results", args.results, "--out", args.out, "--ess-out", args.ess_out]
    bench.main(argv)
    return 0


def _cmd_train(args) -> int:
    from scoresample.train import run_training

    trained = run_training(args.dataset, parameterization=args.parameterization,
                           num_steps=args.num_steps, batch_size=args.batch_size,
                           learning_rate=args.learning_rate, out=args.out, seed=args.seed,
                           resume=args.resume)
    _log(f"trained {args.dataset} ({args.parameterization}) for {trained.num_steps_done} steps; "
         f"final loss {float(trained.losses[-min(500, len(trained.losses)):].mean()):.4f}; "
         f"saved to {os.path.join(os.path.abspath(args.out), 'model')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``scoresample`` (sub-commands demo, sample, bench, train)."""
    parser = argparse.ArgumentParser(
        prog="scoresample",
        description="Provably fast samplers (FORS, RTK, Picard) for Bayesian models and "
                    "diffusion models, in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("demo", help="FORS, RTK and NUTS on shipped data, a score net, one report")
    p.add_argument("--out", default="outputs/demo/report.html", help="HTML report path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="fewer draws and training steps (smoke)")
    p.add_argument("--num-warmup", type=int, default=None)
    p.add_argument("--num-draws", type=int, default=None)
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--methods", default="fors,rtk,nuts")
    p.add_argument("--train-steps", type=int, default=None)
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.add_argument("--preconditioner", default="dense", choices=["diagonal", "dense"])
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("sample", help="sample one model with one method")
    p.add_argument("--model", required=True,
                   help="a posteriordb name (eight_schools, kidiq, ...), breast_cancer, "
                        "eight_schools_numpyro, or module:attribute")
    p.add_argument("--method", default="fors",
                   choices=["fors", "rtk", "picard", "nuts", "mala", "ula"])
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--num-warmup", type=int, default=1000)
    p.add_argument("--num-draws", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preconditioner", default="diagonal", choices=["diagonal", "dense"])
    p.add_argument("--method-options", default=None, help='JSON, e.g. \'{"clip": 2.0}\'')
    p.add_argument("--out", default=None, help="write the DataTree here (netCDF)")
    p.add_argument("--report", default=None, help="write an HTML report here")
    p.add_argument("--output", default=None, help="stream draws to this folder in chunks")
    p.add_argument("--resume", action="store_true", help="continue the run in --output")
    p.add_argument("--posteriordb", default=None,
                   help="a full posteriordb checkout (default: the subset shipped with the package)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("bench", help="pass rule and ESS tables on a posteriordb folder")
    p.add_argument("--posteriordb", required=True, help="posteriordb folder")
    p.add_argument("--methods", default="fors,rtk,nuts")
    p.add_argument("--posteriors", default="all")
    p.add_argument("--preconditioners", default="diagonal")
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--num-warmup", type=int, default=1000)
    p.add_argument("--num-draws", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default="outputs/bench/posteriordb_methods.json")
    p.add_argument("--out", default="outputs/bench/posteriordb_methods.md")
    p.add_argument("--ess-out", default="outputs/bench/ess.md")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("train", help="train a score network on a shipped data set")
    p.add_argument("--dataset", required=True,
                   help="8gaussians, two-moons, checkerboard, swiss-roll or digits")
    p.add_argument("--parameterization", default="eps", choices=["eps", "score", "energy"])
    p.add_argument("--num-steps", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--out", default="outputs/train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=_cmd_train)
    return parser


def main(argv=None) -> int:
    """Run ``scoresample`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _log("interrupted")
        return 130
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as err:
        _log(f"error: {err}")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
