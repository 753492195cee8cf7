"""The demo behind ``scoresample demo``: samplers on real posteriors and a score network, one report.

:func:`run_demo` runs FORS, RTK and NUTS on two real posteriors, trains two small score networks
(eps and energy heads) on a 2-D set and samples them with DPM-Solver++, DDPM, RTK-MALA (factory and
energy head), FORS and Picard-SDE (:data:`NET_SAMPLERS`), then writes one HTML report; everything
runs in float64 except the score networks (float32).

Example:
    >>> from scoresample.demo import run_demo
    >>> result = run_demo("outputs/demo/report.html", quick=True)
    >>> result["report"], result["skipped"]  # the page written, and the pieces that could not run
"""

from __future__ import annotations

import functools
import time

__all__ = ["run_demo"]


def _log(msg: str):
    print(msg, flush=True)


#: the diffusion samplers of the demo's score-network section: (label, method, network, options)
NET_SAMPLERS = (
    ("dpm-solver++", "dpm-solver++", "eps", {"nfe": 20}),
    ("ddpm", "ddpm", "eps", {"nfe": 100}),
    ("rtk-mala (factory)", "rtk-mala", "eps", {"nfe": 100, "acceptance": "factory"}),
    ("rtk-mala (energy head)", "rtk-mala", "energy", {"nfe": 100, "acceptance": "energy"}),
    ("fors", "fors", "eps", {"delta": 0.1}),
    ("picard-sde", "picard-sde", "eps", {"num_steps": 100}),
)


class _CompileTimer:
    """Seconds JAX spent tracing, lowering and compiling while active (jax.monitoring events), so
    that a wall time can be reported without compilation."""

    def __init__(self):
        import jax

        self.seconds = 0.0
        self.active = False
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, name, secs, **kwargs):
        if self.active and name.startswith("/jax/core/compile/"):
            self.seconds += secs

    def run(self, fn):
        """``(fn(), wall seconds, compile seconds)`` of a call ``fn()``."""
        self.seconds, self.active = 0.0, True
        t0 = time.perf_counter()
        try:
            out = fn()
        finally:
            self.active = False
        return out, time.perf_counter() - t0, self.seconds


def _score_net_section(seed: int, quick: bool, num_train_steps: int | None):
    """Train two tiny score networks (eps and energy heads) on a 2-D set and sample them with
    :data:`NET_SAMPLERS`; returns (html, figure, rows)."""
    import jax
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
    nets = {}
    for i, head in enumerate(("eps", "energy")):
        model = nn.score_model(2, parameterization=head, kind="mlp",
                               data_std=float(np.sqrt(np.mean(data**2))),
                               rngs=nnx.Rngs(params=jax.random.fold_in(k_model, i)), hidden=64,
                               depth=2)
        nets[head] = train.fit_score(jax.random.fold_in(k_fit, i), data, model=model,
                                     num_steps=steps, batch_size=256, learning_rate=3e-3,
                                     progress_bar=False)
    train_time = time.perf_counter() - t0
    timer = _CompileTimer()
    rows = []
    samples = {}
    mixture = datasets.eight_gaussians_mixture()
    for label, method, head, options in NET_SAMPLERS:
        net = nets[head]
        energy = {"energy_fn": net.energy_fn} if head == "energy" else {}
        res, wall, compile_s = timer.run(functools.partial(
            diffusion.sample, k_sample, method, net.score_fn, dim=2, num_samples=1000, **energy,
            **options))
        x = np.asarray(res.samples, dtype=np.float64)
        samples[label] = x
        rows.append({"sampler": label, "score evals per sample": res.nfe, "rounds": res.rounds,
                     "energy distance to held-out data": float(metrics.energy_distance(x, test)),
                     "mode-weight error": float(metrics.mode_weight_error(x, mixture)),
                     "divergent": int(np.sum(np.asarray(res.is_divergent))),
                     "wall without compilation (s)": wall - compile_s})
    fresh = np.asarray(datasets.make(name, jax.random.fold_in(k_test, 1), 1000))
    rows.append({"sampler": "fresh data (reference)", "score evals per sample": float("nan"),
                 "rounds": float("nan"),
                 "energy distance to held-out data": float(metrics.energy_distance(fresh, test)),
                 "mode-weight error": float(metrics.mode_weight_error(fresh, mixture)),
                 "divergent": 0, "wall without compilation (s)": float("nan")})
    cols = 1 + len(samples)
    fig, axes = plt.subplots(2, (cols + 1) // 2, figsize=(3.2 * ((cols + 1) // 2), 6.4),
                             sharex=True, sharey=True)
    axes = axes.ravel()
    axes[0].scatter(test[:1000, 0], test[:1000, 1], s=2, alpha=0.5)
    axes[0].set_title(f"held-out data ({name})", fontsize=9)
    for ax, (label, x) in zip(axes[1:], samples.items()):
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, color="C1")
        ax.set_title(f"score net + {label}", fontsize=9)
    for ax in axes[cols:]:
        ax.set_visible(False)
    for ax in axes:
        ax.set_aspect("equal")
    fig.tight_layout()
    losses = ", ".join(f"{head} {float(np.mean(net.losses[-50:])):.3f}" for head, net in nets.items())
    intro = (f"<p>Two score networks (MLP, width 64, 2 residual blocks; one with an eps head, one "
             f"with an energy head whose gradient is the score) trained by denoising score "
             f"matching for {steps} steps each (batch 256) on 4000 points of <code>{name}</code> "
             f"in {train_time:.0f} s (final losses {losses}), then sampled with "
             f"<code>scoresample.diffusion.sample</code>. RTK-MALA (factory) uses only the eps "
             f"network's scores (an exact Metropolis test by a Bernoulli factory); RTK-MALA "
             f"(energy head) uses the energy network's energy in its test. Score evals per sample "
             f"count what ran (for FORS and Picard, which have random costs, what the batch "
             f"executed); rounds are sequential rounds of batched evaluation; the wall time "
             f"excludes JAX's tracing and compilation.</p>")
    return intro, fig, rows


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


def _sample_until_converged(rng_key, model, method: str, *, num_chains: int, max_runs: int,
                            **kwargs):
    """``scoresample.sample`` at its defaults; a run that has not converged (R-hat above 1.01, or a
    bulk ESS below 100 per chain: :mod:`scoresample.diagnostics.convergence`) is run again with
    twice the kernel steps per kept draw, up to ``max_runs`` runs. Returns ``(dt, runs)``."""
    import warnings

    from scoresample import diagnostics
    from scoresample.bayes import sample
    from scoresample.diagnostics.convergence import MAX_R_HAT, MIN_ESS_PER_CHAIN

    thin = "auto"
    for run in range(1, max_runs + 1):
        with warnings.catch_warnings():
            # the demo reports convergence in its table (and the report marks the rows)
            warnings.simplefilter("ignore", diagnostics.ConvergenceWarning)
            dt = sample(rng_key, model, method=method, num_chains=num_chains, thin=thin, **kwargs)
        row = diagnostics.overview(dt)
        if (row["max_r_hat"] <= MAX_R_HAT and row["min_ess_bulk"] >= MIN_ESS_PER_CHAIN * num_chains
                or run == max_runs):
            return dt, run
        thin = 2 * int(dt.attrs["thin"])
        _log(f"[demo]   {method}: R-hat {row['max_r_hat']:.3f}, min bulk ESS "
             f"{row['min_ess_bulk']:.0f}: not converged; again with thin {thin}")
    raise AssertionError("unreachable")  # pragma: no cover


def run_demo(out="outputs/demo/report.html", *, seed: int = 0, quick: bool = False,
             num_warmup: int | None = None, num_draws: int | None = None, num_chains: int = 4,
             methods=("fors", "rtk", "nuts"), train_steps: int | None = None,
             progress_bar: bool = False, preconditioner: str = "auto",
             max_runs: int | None = None) -> dict:
    """The demo: FORS, RTK and NUTS on two real posteriors, a score network on a 2-D set, one report.

    1. Bayesian logistic regression on scikit-learn's breast-cancer data (d = 31,
       :func:`scoresample.models.breast_cancer_logistic`).
    2. Eight schools, non-centred (:mod:`scoresample.posteriordb`, shipped with the package),
       compared with posteriordb's reference (z-scores in the report).
    3. Two tiny score networks trained on ``8gaussians`` and sampled with :data:`NET_SAMPLERS`
       (score calls, rounds, energy distance, mode-weight error, wall time without compilation).

    Every method runs at ``scoresample.sample``'s defaults (the same warmup recipe, the dense
    preconditioner on these posteriors, ``thin="auto"``). A method whose run has not converged
    (R-hat above 1.01 or a bulk ESS below 100 per chain, 400 for 4 chains) is run again with twice
    the kernel steps per kept draw, up to ``max_runs`` runs (3; 1 with ``quick``), and the table
    says so (columns ``thin`` and ``runs``): the comparison stays per gradient and per second.
    A section that cannot run is listed in ``skipped`` (and in the report's notes); the rest still
    runs.

    Returns:
        ``{"report": path, "rows": [...], "skipped": [...]}``.
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    from scoresample import diagnostics, models, posteriordb
    from scoresample.diagnostics.report import html_table
    from scoresample.posteriordb import LogDensityAdapter

    num_warmup = num_warmup or (200 if quick else 1000)
    num_draws = num_draws or (200 if quick else 1000)
    max_runs = max_runs or (1 if quick else 3)
    key = jax.random.key(seed)
    runs, references, rows, skipped, extras = {}, {}, [], [], []

    def run_model(section, model, reference=None):
        runs[section] = {}
        if reference is not None:
            references[section] = reference
        for i, method in enumerate(methods):
            _log(f"[demo] {section}: {method} ({num_chains} chains x {num_warmup} warmup + "
                 f"{num_draws} draws) ...")
            t0 = time.perf_counter()
            dt, num_runs = _sample_until_converged(
                jax.random.fold_in(key, 100 * len(runs) + i), model, method,
                num_chains=num_chains, max_runs=max_runs, num_warmup=num_warmup,
                num_draws=num_draws, progress_bar=progress_bar, preconditioner=preconditioner)
            runs[section][method] = dt
            row = {"model": section, **diagnostics.overview(dt), "thin": int(dt.attrs["thin"]),
                   "runs": num_runs}
            row["converged"] = "yes" if not diagnostics.convergence_problems(dt) else "NO"
            if reference is not None:
                z = diagnostics.zscores(dt, reference)
                row["max |z|"] = float(abs(z["z"]).max())
                row["matches ref"] = "yes" if z.attrs["passed"] else "NO"
            row["wall (s)"] = time.perf_counter() - t0
            rows.append(row)

    # 1. logistic regression
    run_model("logistic regression (breast cancer, d=31)",
              LogDensityAdapter(models.breast_cancer_logistic()))

    # 2. eight schools: data and reference summary ship with the package (a SCORESAMPLE_POSTERIORDB
    # that points at a broken folder still leaves the rest of the demo running)
    try:
        post = posteriordb.load("eight_schools")
        reference = post.reference
    except (FileNotFoundError, ValueError) as err:
        skipped.append(f"eight schools: scoresample.posteriordb could not load it ({err})")
    else:
        run_model("eight schools (non-centred, d=10)", post, reference)

    # 3. score network
    _log("[demo] score network: training on 8gaussians and sampling ...")
    intro, fig, net_rows = _score_net_section(seed, quick, train_steps)
    extras.append(("Score network on a 2-D set", intro + html_table(net_rows)))
    extras.append(("Score network samples", fig))
    for r in net_rows:
        rows.append({"model": "score net (8gaussians)", "sampler": r["sampler"],
                     "energy distance": r["energy distance to held-out data"],
                     "grad_evals_sampling": r["score evals per sample"],
                     "wall (s)": r["wall without compilation (s)"]})

    notes = (f"Draws from <code>scoresample.sample</code> at its defaults ({num_chains} chains, "
             f"{num_warmup} warmup steps, {num_draws} kept draws, <code>thin=\"auto\"</code>: FORS "
             "and RTK take ceil(1 / step size) kernel steps per kept draw; warmup: gradient-only L-BFGS "
             "to the mode, a Laplace start, staged step-size and preconditioner windows, the "
             f"preconditioner {preconditioner}; NUTS is BlackJAX's, tuned by "
             "<code>window_adaptation</code> with the same kind of mass matrix). A method whose "
             "run had not converged (R-hat above 1.01 or a bulk ESS below 100 per chain) was run "
             f"again with twice the kernel steps per kept draw, up to {max_runs} runs: the "
             "columns thin and runs of the table say what it needed; the cost columns are per "
             "gradient and per second of that run.")
    if skipped:
        notes += "<br>Skipped: " + "; ".join(skipped)
    path = diagnostics.report(runs, out, reference=references or None,
                              title="scoresample demo: FORS, RTK and NUTS on real posteriors",
                              extra_sections=extras, notes=notes)
    _log("")
    _print_table(rows, [("model", "model", ""), ("sampler", "sampler", ""),
                        ("min_ess_bulk", "min ESS", ".0f"), ("max_r_hat", "R-hat", ".3f"),
                        ("thin", "thin", ""), ("runs", "runs", ""), ("converged", "conv", ""),
                        ("ess_per_1000_grad", "ESS/1k grad", ".3g"), ("ess_per_s", "ESS/s", ".3g"),
                        ("num_divergent", "div", ""), ("matches ref", "ref", ""),
                        ("energy distance", "E-dist", ".3g")])
    for msg in skipped:
        _log(f"skipped: {msg}")
    _log(f"\nreport: {path}")
    return {"report": str(path), "rows": rows, "skipped": skipped}
