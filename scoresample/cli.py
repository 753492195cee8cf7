"""The ``scoresample`` command: the demo, sampling, benchmarks and training without writing Python.

    scoresample demo [--out outputs/demo/report.html] [--quick]
    scoresample sample --model eight_schools --method fors [--out run.nc] [--report run.html]
    scoresample bench --posteriordb PATH [--methods fors,rtk,nuts]
    scoresample train --dataset two-moons [--num-steps 20000] [--out outputs/train]

``main(argv=None)`` is the entry point (``pyproject``: ``scoresample = "scoresample.cli:main"``); it
returns the process exit code. Everything runs in float64 except the score network (float32).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser", "demo", "eight_schools_numpyro", "EIGHT_SCHOOLS_DATA"]

#: Rubin's eight schools: estimated effects y and their standard errors sigma.
EIGHT_SCHOOLS_DATA = {"y": [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0],
                      "sigma": [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]}


def eight_schools_numpyro(sigma, y=None):
    """Non-centred eight schools as a NumPyro model (the posteriordb program, written in NumPyro).

    mu ~ N(0, 5), tau ~ half-Cauchy(0, 5), theta_trans_j ~ N(0, 1), theta = mu + tau theta_trans,
    y_j ~ N(theta_j, sigma_j).
    """
    import numpyro
    import numpyro.distributions as dist

    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", len(sigma)):
        theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_trans)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


#: gradient evaluations of one kernel step (FORS: 3 prox steps + 1 + about 1.4 estimates,
#: measured; Picard: 1 + 3 x 7), to thin each method to NUTS's budget per kept draw
NOMINAL_GRADS_PER_STEP = {"fors": 5.4, "rtk": 3.0, "picard": 22.0, "mala": 1.0, "ula": 1.0}


def _enable_x64():
    import jax

    jax.config.update("jax_enable_x64", True)


def _log(msg: str):
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# Models by name (for `scoresample sample`).
# ---------------------------------------------------------------------------------------------


def _resolve_model(name: str, posteriordb_root=None):
    """A model object for ``name``: ``breast_cancer``, ``eight_schools_numpyro``, a posteriordb name,
    or ``module:attribute`` (a log-density-bearing object, or a zero-argument factory of one).

    Returns ``(model, model_args, model_kwargs, reference)`` with ``reference`` a dict of draws or None.
    """
    if name in ("breast_cancer", "breast_cancer_logistic", "logistic"):
        from scoresample import models

        return _LogDensity(models.breast_cancer_logistic()), (), None, None
    if name in ("eight_schools_numpyro", "eight_schools-numpyro"):
        import numpy as np

        return (eight_schools_numpyro, (np.asarray(EIGHT_SCHOOLS_DATA["sigma"]),),
                {"y": np.asarray(EIGHT_SCHOOLS_DATA["y"])}, None)
    if ":" in name:
        import importlib

        module, attr = name.split(":", 1)
        obj = getattr(importlib.import_module(module), attr)
        if callable(obj) and not hasattr(obj, "logdensity_fn"):
            try:
                made = obj()
            except TypeError:
                made = None
            if made is not None and hasattr(made, "logdensity_fn"):
                obj = made
        if hasattr(obj, "logdensity_fn") and not hasattr(obj, "initial_position"):
            obj = _LogDensity(obj)
        return obj, (), None, None
    from scoresample import posteriordb

    post = posteriordb.load(name, root=posteriordb_root)
    return post, (), None, reference_dict(post)


class _LogDensity:
    """Adapts an object with ``logdensity_fn``, ``dim`` (and optional ``names``) for ``sample``."""

    def __init__(self, model):
        import jax.numpy as jnp

        self.model = model
        self.logdensity_fn = model.logdensity_fn
        self.dim = int(model.dim)
        self.name = getattr(model, "description", type(model).__name__)
        self._zeros = jnp.zeros((self.dim,))

    def initial_position(self):
        return self._zeros

    def constrain(self, z):
        # the first coordinate of a regression model is its intercept (scoresample.models)
        names = getattr(self.model, "names", None)
        if names and names[0] == "intercept":
            return {"intercept": z[0], "beta": z[1:]}
        return {"x": z}


def reference_dict(post) -> dict:
    """A posteriordb posterior's reference draws as a dict name -> (chain, draw, ...) array."""
    import numpy as np

    ref = np.asarray(post.reference_draws)
    out, start = {}, 0
    for name, size in post.spec.blocks:
        if size is None:
            out[name] = ref[:, :, start]
            start += 1
        else:
            out[name] = ref[:, :, start:start + size]
            start += size
    return out


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------


def _score_net_section(seed: int, quick: bool, num_train_steps: int | None):
    """Train a tiny score network on a 2-D set and sample it; returns (html, figure, rows) or raises."""
    import jax
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np
    from flax import nnx

    from scoresample import datasets, diffusion, metrics, nn, train

    key = jax.random.key(seed + 7)
    k_data, k_test, k_model, k_fit, k_sample = jax.random.split(key, 5)
    name = "8gaussians"
    data = np.asarray(datasets.make(name, k_data, 4000))
    test = np.asarray(datasets.make(name, k_test, 2000))
    steps = num_train_steps or (300 if quick else 2500)
    t0 = time.perf_counter()
    model = nn.score_model(2, parameterization="eps", kind="mlp",
                           data_std=float(np.sqrt(np.mean(data**2))),
                           rngs=nnx.Rngs(params=k_model), hidden=64, depth=2)
    trained = train.fit_score(k_fit, data, model=model, num_steps=steps, batch_size=256,
                              learning_rate=3e-3, progress_bar=False)
    train_time = time.perf_counter() - t0
    rows = []
    samples = {}
    mixture = datasets.eight_gaussians_mixture()
    for method, options in (("dpm-solver++", {"nfe": 20}), ("ddpm", {"nfe": 100})):
        t1 = time.perf_counter()
        res = diffusion.sample(k_sample, method, trained.score_fn, dim=2, num_samples=1000,
                               **options)
        x = np.asarray(res.samples, dtype=np.float64)
        samples[method] = x
        rows.append({"sampler": method, "score evals per sample": res.nfe,
                     "energy distance to held-out data": float(metrics.energy_distance(x, test)),
                     "mode-weight error": float(metrics.mode_weight_error(x, mixture)),
                     "wall (s)": time.perf_counter() - t1})
    baseline = float(metrics.energy_distance(np.asarray(datasets.make(
        name, jax.random.fold_in(k_test, 1), 1000)), test))
    rows.append({"sampler": "fresh data (reference)", "score evals per sample": float("nan"),
                 "energy distance to held-out data": baseline,
                 "mode-weight error": float(metrics.mode_weight_error(
                     np.asarray(datasets.make(name, jax.random.fold_in(k_test, 1), 1000)),
                     mixture)), "wall (s)": float("nan")})
    fig, axes = plt.subplots(1, 1 + len(samples), figsize=(4 * (1 + len(samples)), 4),
                             sharex=True, sharey=True)
    axes[0].scatter(test[:1000, 0], test[:1000, 1], s=2, alpha=0.5)
    axes[0].set_title(f"held-out data ({name})")
    for ax, (method, x) in zip(axes[1:], samples.items()):
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, color="C1")
        ax.set_title(f"score net + {method}")
    for ax in axes:
        ax.set_aspect("equal")
    fig.tight_layout()
    intro = (f"<p>A score network (MLP, width 64, 2 residual blocks, eps-parameterisation) trained "
             f"by denoising score matching for {steps} steps (batch 256) on 4000 points of "
             f"<code>{name}</code> in {train_time:.0f} s, then sampled with two diffusion "
             f"samplers (<code>scoresample.diffusion.sample</code>). Final training loss "
             f"{float(np.mean(trained.losses[-50:])):.3f}.</p>")
    return intro, fig, rows, train_time


def _rows_table_html(rows) -> str:
    from scoresample.diagnostics.report import _table

    return _table(rows)


def _print_table(rows: list[dict], columns: list[tuple[str, str, str]]):
    """Print rows with (key, header, format) columns, widths fitted to the content."""
    cells = []
    for row in rows:
        line = []
        for key, _, fmt in columns:
            value = row.get(key, "")
            try:
                text = format(value, fmt) if fmt and value != "" else str(value)
            except (TypeError, ValueError):
                text = str(value)
            line.append("" if text == "nan" else text)
        cells.append(line)
    widths = [max([len(head)] + [len(line[i]) for line in cells])
              for i, (_, head, _) in enumerate(columns)]
    header = "  ".join(h.ljust(w) if i < 2 else h.rjust(w)
                       for i, ((_, h, _), w) in enumerate(zip(columns, widths)))
    _log(header)
    _log("-" * len(header))
    for line in cells:
        _log("  ".join(t.ljust(w) if i < 2 else t.rjust(w)
                       for i, (t, w) in enumerate(zip(line, widths))))


def demo(out="outputs/demo/report.html", *, seed: int = 0, quick: bool = False,
         num_warmup: int | None = None, num_draws: int | None = None, num_chains: int = 4,
         methods=("fors", "rtk", "nuts"), train_steps: int | None = None,
         progress_bar: bool = False, preconditioner: str = "dense") -> dict:
    """The demo: FORS, RTK and NUTS on two real posteriors, a score network on a 2-D set, one report.

    1. Bayesian logistic regression on scikit-learn's breast-cancer data (d = 31,
       :func:`scoresample.models.breast_cancer_logistic`).
    2. Eight schools, non-centred (:mod:`scoresample.posteriordb`), compared with posteriordb's
       reference draws (z-scores in the report).
    3. A tiny score network trained on ``8gaussians`` and sampled with diffusion samplers.

    Every method gets the same warmup recipe and ``preconditioner`` (dense by default: both
    posteriors have correlated coordinates, where a diagonal preconditioner leaves the
    Langevin-type samplers slow). A piece whose module is missing is skipped with a message; the
    rest still runs.

    Returns:
        ``{"report": path, "rows": [...], "skipped": [...]}``.
    """
    _enable_x64()
    import jax

    from scoresample import diagnostics
    from scoresample.bayes import sample

    num_warmup = num_warmup or (200 if quick else 500)
    num_draws = num_draws or (200 if quick else 500)
    key = jax.random.key(seed)
    runs, references, rows, skipped, extras = {}, {}, [], [], []

    def run_model(section, model, reference=None):
        runs[section] = {}
        if reference is not None:
            references[section] = reference
        nuts_cost = None
        # NUTS first: every other method is thinned to about NUTS's gradient cost per kept draw,
        # so that the table compares the methods at the same budget
        for i, method in sorted(enumerate(methods), key=lambda im: im[1] != "nuts"):
            thin = 1
            if method != "nuts" and nuts_cost is not None:
                thin = max(1, round(nuts_cost / NOMINAL_GRADS_PER_STEP.get(method, 1.0)))
            _log(f"[demo] {section}: {method} ({num_chains} chains x {num_warmup} warmup + "
                 f"{num_draws} draws, thin {thin}) ...")
            t0 = time.perf_counter()
            dt = sample(jax.random.fold_in(key, 100 * len(runs) + i), model,
                        method=method, num_chains=num_chains, num_warmup=num_warmup,
                        num_draws=num_draws, progress_bar=progress_bar,
                        preconditioner=preconditioner, thin=thin)
            if method == "nuts":
                nuts_cost = dt.attrs["num_grad_evals_sampling"] / (num_chains * num_draws)
            runs[section][method] = dt
            row = {"model": section, **diagnostics.overview(dt)}
            if reference is not None:
                z = diagnostics.zscores(dt, reference)
                row["max |z|"] = float(abs(z["z"]).max())
                row["matches ref"] = "yes" if z.attrs["passed"] else "NO"
            row["wall (s)"] = time.perf_counter() - t0
            rows.append(row)

    # 1. logistic regression
    try:
        from scoresample import models

        logistic = _LogDensity(models.breast_cancer_logistic())
    except (ImportError, AttributeError) as err:
        skipped.append(f"logistic regression: scoresample.models.breast_cancer_logistic is "
                       f"missing ({err})")
    else:
        run_model("logistic regression (breast cancer, d=31)", logistic)

    # 2. eight schools
    try:
        from scoresample import posteriordb

        post = posteriordb.load("eight_schools")
        reference = reference_dict(post)
    except (ImportError, AttributeError, FileNotFoundError, ValueError) as err:
        skipped.append(f"eight schools: scoresample.posteriordb could not load it ({err})")
    else:
        run_model("eight schools (non-centred, d=10)", post, reference)

    # 3. score network
    try:
        from scoresample import train  # noqa: F401
    except ImportError as err:
        skipped.append(f"score network: scoresample.train is missing ({err})")
    else:
        _log("[demo] score network: training on 8gaussians and sampling ...")
        try:
            intro, fig, net_rows, _ = _score_net_section(seed, quick, train_steps)
        except (ImportError, AttributeError) as err:
            skipped.append(f"score network: a piece is missing ({err})")
        else:
            extras.append(("Score network on a 2-D set", intro + _rows_table_html(net_rows)))
            extras.append(("Score network samples", fig))
            for r in net_rows:
                rows.append({"model": "score net (8gaussians)", "sampler": r["sampler"],
                             "energy distance": r["energy distance to held-out data"],
                             "grad_evals_sampling": r["score evals per sample"]})

    if not runs and not extras:
        raise RuntimeError("demo: no piece could run: " + "; ".join(skipped))
    notes = (f"Draws from <code>scoresample.sample</code> ({num_chains} chains, {num_warmup} "
             f"warmup steps, {num_draws} kept draws; NUTS runs first and every other method is "
             f"thinned so that a kept draw costs about what a NUTS draw costs; warmup: gradient-only L-BFGS to the mode, a "
             f"Laplace start, staged step-size and {preconditioner}-preconditioner windows; NUTS is "
             f"BlackJAX's, tuned by <code>window_adaptation</code> with a {preconditioner} mass "
             f"matrix).")
    if skipped:
        notes += "<br>Skipped: " + "; ".join(skipped)
    path = diagnostics.report(runs, out, reference=references or None,
                              title="scoresample demo: FORS, RTK and NUTS on real posteriors",
                              extra_sections=extras, notes=notes)
    _log("")
    _print_table(rows, [("model", "model", ""), ("sampler", "sampler", ""),
                        ("min_ess_bulk", "min ESS", ".0f"), ("max_r_hat", "R-hat", ".3f"),
                        ("ess_per_1000_grad", "ESS/1k grad", ".3g"), ("ess_per_s", "ESS/s", ".3g"),
                        ("num_divergent", "div", ""), ("matches ref", "ref", ""),
                        ("energy distance", "E-dist", ".3g")])
    for msg in skipped:
        _log(f"skipped: {msg}")
    _log(f"\nreport: {path}")
    return {"report": str(path), "rows": rows, "skipped": skipped}


# ---------------------------------------------------------------------------------------------
# sub-commands
# ---------------------------------------------------------------------------------------------


def _cmd_demo(args) -> int:
    demo(args.out, seed=args.seed, quick=args.quick, num_warmup=args.num_warmup,
         num_draws=args.num_draws, num_chains=args.num_chains,
         methods=tuple(args.methods.split(",")), train_steps=args.train_steps,
         progress_bar=args.progress, preconditioner=args.preconditioner)
    return 0


def _cmd_sample(args) -> int:
    _enable_x64()
    import jax

    from scoresample import diagnostics
    from scoresample.bayes import sample

    model, model_args, model_kwargs, reference = _resolve_model(args.model, args.posteriordb)
    method_options = json.loads(args.method_options) if args.method_options else None
    dt = sample(jax.random.key(args.seed), model, method=args.method,
                            num_chains=args.num_chains, num_warmup=args.num_warmup,
                            num_draws=args.num_draws, model_args=model_args,
                            model_kwargs=model_kwargs, progress_bar=not args.no_progress,
                            output=args.output, resume=args.resume,
                            method_options=method_options, preconditioner=args.preconditioner)
    table = diagnostics.summary(dt)
    with_pd_options(lambda: print(table.to_string(float_format=lambda v: f"{v:.4g}")))
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


def with_pd_options(fn):
    import pandas as pd

    with pd.option_context("display.max_rows", 200, "display.width", 160):
        fn()


def _cmd_bench(args) -> int:
    root = Path(args.posteriordb).expanduser()
    if not (root / "posteriors").is_dir():
        _log(f"error: --posteriordb {str(root)!r} is not a posteriordb folder (no posteriors/)")
        return 2
    os.environ["SCORESAMPLE_POSTERIORDB"] = str(root)
    bench = _load_benchmark_module()
    if bench is None:
        _log("error: benchmarks/posteriordb_methods.py not found (it ships with the source tree)")
        return 2
    argv = ["--methods", args.methods, "--num-warmup", str(args.num_warmup), "--num-draws",
            str(args.num_draws), "--num-chains", str(args.num_chains), "--seed", str(args.seed),
            "--preconditioners", args.preconditioners, "--posteriors", args.posteriors,
            "--results", args.results, "--out", args.out, "--ess-out", args.ess_out]
    bench.main(argv)
    return 0


def _load_benchmark_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "posteriordb_methods.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("scoresample_bench_posteriordb", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cmd_train(args) -> int:
    try:
        from scoresample.train import run_training
    except ImportError as err:
        _log(f"error: scoresample.train is not available ({err})")
        return 2
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
    p.add_argument("--posteriordb", default=None, help="posteriordb folder (default: shared copy)")
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
