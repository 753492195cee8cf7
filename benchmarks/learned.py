"""Learned scores: how accurate a trained network is, and how each sampler does on it.

Three parts, each run on its own (each well under ten minutes of CPU; the machine is shared, so wall
time is longer), each updating docs/benchmarks/learned.json and rewriting docs/benchmarks/learned.md
from everything that file holds:

    python benchmarks/learned.py score-error   # 8 Gaussians: relative L2 error of the learned score
    python benchmarks/learned.py samplers      # two moons, checkerboard: energy distance per sampler
    python benchmarks/learned.py digits        # 8x8 digits: conv net, sample grid, copy check

score-error: the 8-Gaussian mixture (``datasets.eight_gaussians_mixture()``, exact score at every t)
is learned from 50,000 draws by an eps network and an energy network (MLP, width 128, 3 residual
blocks); the relative L2 error sqrt(E|s_hat - s|^2 / E|s|^2) under p_t is estimated from 8,192 exact
draws of p_t at 25 times log-spaced over [0.05, 2] and compared with the Gaussian baseline the
untrained network starts from.

samplers: for two moons and checkerboard, an eps network and an energy network are trained on 50,000
points; each sampler of ``diffusion.METHODS`` named in the issue (ddpm, dpm-solver++, rtk-uld,
rtk-mala with the energy network, fors, picard-sde) draws 3 x 1,000 samples at budgets of 50, 100
and 500 score evaluations per sample; each group of 1,000 is scored by the energy distance to 1,000
held-out points (mean ± sd over the 3 groups), beside the distance of fresh data sets of that size
to the same held-out points (the floor). Networks are saved under
outputs/learned/ (gitignored) and reused by later runs unless --retrain.

digits: the small conv net (:class:`scoresample.nn.ConvNet`, 16 channels) is trained on 1,597 digits;
DDPM and DPM-Solver++ draw 256 samples each; for every sample the distance to the nearest training
image is compared with that of the 200 held-out images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from common import command_line, markdown_table  # noqa: E402

from scoresample import datasets, diffusion, metrics, nn, processes, train  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "docs", "benchmarks", "learned.json")
REPORT = os.path.join(ROOT, "docs", "benchmarks", "learned.md")
IMG = os.path.join(ROOT, "docs", "img")
MODELS = os.path.join(ROOT, "outputs", "learned")

BUDGETS = (50, 100, 500)
FORS_DELTAS = {50: 0.3, 100: 0.1, 500: 0.03}  # FORS has no budget knob: one delta per column
# method -> (network, options at budget n)
SAMPLERS = {
    "ddpm": ("eps", lambda n: dict(nfe=n)),
    "dpm-solver++": ("eps", lambda n: dict(nfe=n)),
    "rtk-uld": ("eps", lambda n: dict(nfe=n)),
    "rtk-mala": ("energy", lambda n: dict(nfe=n)),
    "fors": ("eps", lambda n: dict(delta=FORS_DELTAS[n], constant=0.1)),
    "picard-sde": ("eps", lambda n: dict(num_steps=n, num_blocks=5, tol=1e-3)),
    "ddpm (energy net)": ("energy", lambda n: dict(nfe=n)),
}


def _cpu():
    return time.process_time()


def _load_results():
    if os.path.exists(RESULTS):
        with open(RESULTS) as fh:
            return json.load(fh)
    return {}


def _store(part, value):
    results = _load_results()
    results[part] = value
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as fh:
        json.dump(results, fh, indent=1, sort_keys=True)
    write_markdown(results)


# ----- part 1: score error on the 8 Gaussians ------------------------------------------------------

def part_score_error(args):
    mix = datasets.eight_gaussians_mixture()
    data = datasets.make("8gaussians", jax.random.key(0), 50_000)
    data_std = float(np.sqrt(np.mean(np.square(np.asarray(data)))))
    times = np.geomspace(0.05, 2.0, 25)

    def baseline(x, t):  # the untrained network: the score of N(0, data_std^2 I)
        return -x / (data_std**2 * jax.numpy.exp(-2.0 * t) + processes.sigma2(t))

    out = dict(command=command_line(), times=times.tolist(), steps=args.steps,
               batch_size=args.batch_size, learning_rate=args.learning_rate,
               baseline=metrics.relative_score_error(jax.random.key(9), baseline, mix,
                                                     times).tolist())
    for param in ("eps", "energy"):
        model = nn.score_model(2, parameterization=param, data_std=data_std, rngs=nnx_rngs(1))
        cpu, wall = _cpu(), time.perf_counter()
        trained = train.fit_score(jax.random.key(1), data, model=model, num_steps=args.steps,
                                  batch_size=args.batch_size, learning_rate=args.learning_rate,
                                  progress_bar=args.progress)
        cpu, wall = _cpu() - cpu, time.perf_counter() - wall
        err = metrics.relative_score_error(jax.random.key(9), trained.score_fn, mix, times)
        print(f"{param}: max relative error {err.max():.4f} over t in [0.05, 2]; training "
              f"{cpu:.0f} s CPU, {wall:.0f} s wall")
        out[param] = dict(error=err.tolist(), cpu=cpu, wall=wall,
                          final_loss=float(np.mean(trained.losses[-500:])))
    _store("score_error", out)


def nnx_rngs(seed):
    from flax import nnx

    return nnx.Rngs(seed)


# ----- part 2: samplers on learned 2-D scores -------------------------------------------------------

def _network(dataset, param, data, args):
    path = os.path.join(MODELS, f"{dataset}-{param}")
    if os.path.exists(os.path.join(path, "config.json")) and not args.retrain:
        net = train.load(path)
        if net.settings.get("num_steps") == args.steps:
            print(f"reusing {path}")
            return net, None
    model = nn.score_model(2, parameterization=param,
                           data_std=float(np.sqrt(np.mean(np.square(np.asarray(data))))),
                           rngs=nnx_rngs(1))
    cpu = _cpu()
    net = train.fit_score(jax.random.key(2), data, model=model, num_steps=args.steps,
                          batch_size=args.batch_size, learning_rate=args.learning_rate,
                          progress_bar=args.progress)
    cpu = _cpu() - cpu
    net.save(path, overwrite=True)
    return net, cpu


NUM_FLOOR_DRAWS = 10


def _floor(dataset, held_out):
    """Energy distance of fresh data sets (same size) to the held-out set: mean, sd over draws."""
    vals = [metrics.energy_distance(np.asarray(datasets.make(dataset, jax.random.key(12345 + i),
                                                             held_out.shape[0])), held_out)
            for i in range(NUM_FLOOR_DRAWS)]
    return dict(mean=float(np.mean(vals)), sd=float(np.std(vals, ddof=1)), values=vals)


def _held_out(dataset, num_samples):
    _, held_out = datasets.train_test_split(dataset, jax.random.key(0), num_test=num_samples)
    return np.asarray(held_out, dtype=np.float64)


def part_samplers(args):
    out = dict(command=command_line(), steps=args.steps, num_samples=args.num_samples,
               seeds=args.seeds, budgets=list(BUDGETS),
               fors_deltas={str(k): v for k, v in FORS_DELTAS.items()},
               datasets={})
    pictures = {}
    for dataset in args.datasets:
        data, held_out = datasets.train_test_split(dataset, jax.random.key(0),
                                                   num_test=args.num_samples)
        held_out = np.asarray(held_out, dtype=np.float64)  # = _held_out(dataset, num_samples)
        floor = _floor(dataset, held_out)
        nets, cpu = {}, {}
        for param in ("eps", "energy"):
            nets[param], cpu[param] = _network(dataset, param, data, args)
        m2 = float(np.mean(np.sum(np.square(np.asarray(data, dtype=np.float64)), axis=1)))
        rows = {}
        pictures[dataset] = {"held-out data": held_out}
        for method, (param, options) in SAMPLERS.items():
            net = nets[param]
            for budget in BUDGETS:
                opts = options(budget)
                if method == "fors":
                    opts["second_moment"] = m2
                wall = time.perf_counter()
                total = args.seeds * args.num_samples
                try:
                    # particles are independent (each has its own key), so one run of
                    # seeds x n particles split into groups of n gives the seed-to-seed spread
                    res = diffusion.sample(jax.random.key(budget), method.split(" ")[0],
                                           net.score_fn, dim=2, num_samples=total,
                                           energy_fn=net.energy_fn if param == "energy" else None,
                                           **opts)
                except Exception as err:  # a crash is a result too: record it and go on
                    print(f"{dataset} {method} {budget}: failed: {type(err).__name__}: {err}")
                    rows.setdefault(method, {})[str(budget)] = dict(error=f"{type(err).__name__}")
                    continue
                wall = time.perf_counter() - wall
                samples = np.asarray(res.samples, dtype=np.float64)
                ok = ~np.asarray(res.is_divergent) & np.all(np.isfinite(samples), axis=1)
                eds = []
                for g in range(args.seeds):
                    part = slice(g * args.num_samples, (g + 1) * args.num_samples)
                    kept = samples[part][ok[part]]
                    eds.append(metrics.energy_distance(kept, held_out) if kept.shape[0] > 1
                               else float("nan"))
                rows.setdefault(method, {})[str(budget)] = dict(
                    energy_distance=eds, nfe=res.nfe, rounds=res.rounds, wall=wall,
                    divergent=int((~ok).sum()))
                print(f"{dataset:12s} {method:18s} budget {budget:4d}: energy distance "
                      f"{np.mean(eds):.4f} ± {np.std(eds, ddof=1):.4f}  nfe {res.nfe:7.1f}  "
                      f"rounds {res.rounds:5d}  {wall:6.1f} s wall  {int((~ok).sum())} divergent")
                if budget == 100:
                    first = samples[:args.num_samples][ok[:args.num_samples]]
                    pictures[dataset][f"{method} ({res.nfe:.0f} evals)"] = first
        out["datasets"][dataset] = dict(floor=floor, rows=rows, train_cpu=cpu,
                                        command=command_line())
        _scatter_grid(os.path.join(IMG, f"learned_{dataset}.png"), pictures[dataset])
    # runs on one data set at a time keep the other data sets' results
    previous = _load_results().get("samplers", {}).get("datasets", {})
    out["datasets"] = dict(previous, **out["datasets"])
    _store("samplers", out)


def _scatter_grid(path, panels):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    ncol = min(4, n)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.2 * ncol, 1.6 * nrow))
    axes = np.ravel(axes)
    for ax in axes:
        ax.axis("off")
    ref = next(iter(panels.values()))  # the data: fixes the axes of every panel
    lo, hi = ref.min(axis=0) - 0.5, ref.max(axis=0) + 0.5
    for ax, (name, pts) in zip(axes, panels.items()):
        ax.scatter(pts[:, 0], pts[:, 1], s=0.5, alpha=0.4, rasterized=True)
        ax.set_title(name, fontsize=7)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=70)
    plt.close(fig)


# ----- part 3: digits ----------------------------------------------------------------------------------

def part_digits(args):
    from train_digits import copy_check, save_grid

    k_data, k_model, k_train = jax.random.split(jax.random.key(0), 3)
    train_x, test_x = datasets.train_test_split("digits", k_data, num_test=200)
    model = train.default_model("digits", "eps", train_x, k_model)
    cpu, wall = _cpu(), time.perf_counter()
    net = train.fit_score(k_train, train_x, model=model, num_steps=args.digit_steps,
                          batch_size=128, learning_rate=2e-3, progress_bar=args.progress)
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    net.save(os.path.join(MODELS, "digits-eps"), overwrite=True)
    out = dict(command=command_line(), steps=args.digit_steps, batch_size=128, train_cpu=cpu,
               train_wall=wall, config=net.config, final_loss=float(np.mean(net.losses[-200:])),
               methods={})
    for method, nfe in (("ddpm", 100), ("dpm-solver++", 50)):
        wall = time.perf_counter()
        res = diffusion.sample(jax.random.key(7), method, net.score_fn, dim=64, num_samples=256,
                               nfe=nfe, denoise=True)
        wall = time.perf_counter() - wall
        samples = np.asarray(res.samples)
        check = copy_check(samples, train_x, test_x)
        check.pop("distances")
        idx = check.pop("nearest_index")
        out["methods"][method] = dict(check, nfe=res.nfe, wall=wall)
        print(f"digits {method}: {check}")
        if method == "ddpm":
            save_grid(os.path.join(IMG, "learned_digits.png"), samples)
            save_grid(os.path.join(IMG, "learned_digits_nearest.png"), samples[:16],
                      nearest=np.asarray(train_x)[idx[:16]], nrow=4)
    _store("digits", out)


# ----- the page -----------------------------------------------------------------------------------------

def _describe(config):
    bb = config["backbone"]
    extra = (f"{bb['channels']} channels, GroupNorm with {bb['groups']} groups"
             if bb["type"] == "ConvNet" else f"width {bb['hidden']}, {bb['depth']} blocks")
    return (f"{bb['type']} ({extra}, {bb['time_embedding']} embedding of the log-SNR with "
            f"{bb['time_features']} features), {config['parameterization']} output")


def write_markdown(results):
    lines = ["# Learned scores: network accuracy and the samplers on trained networks", "",
             "Produced by `benchmarks/learned.py` (each section names the command that produced "
             "it) on a shared 2-core CPU machine with JAX " + jax.__version__ + ". Training runs in "
             "float32; CPU seconds are process CPU time (wall time depends on how many other jobs "
             "shared the two cores, up to about seven).", ""]
    se = results.get("score_error")
    if se:
        t = np.asarray(se["times"])
        lines += ["## Learned score on the 8-Gaussian mixture (exact score known)", "",
                  f"Command: `{se['command']}`. Training: {se['steps']} steps, batch "
                  f"{se['batch_size']}, peak learning rate {se['learning_rate']}, MLP width 128 with "
                  "3 residual blocks, 50,000 training points. Relative L2 error "
                  "sqrt(E|s_hat - s|^2 / E|s|^2) under p_t, 8,192 exact draws of p_t per time, 25 "
                  "times log-spaced over [0.05, 2] (a selection shown; max over all 25).", ""]
        show = [0, 4, 8, 12, 16, 20, 24]
        header = ["network"] + [f"t = {t[i]:.3g}" for i in show] + ["max over [0.05, 2]",
                                                                     "training CPU s"]
        rows = [["untrained (Gaussian baseline)"]
                + [f"{se['baseline'][i]:.3f}" for i in show]
                + [f"{max(se['baseline']):.3f}", "-"]]
        for param in ("eps", "energy"):
            if param in se:
                err = se[param]["error"]
                rows.append([param] + [f"{err[i]:.4f}" for i in show]
                            + [f"**{max(err):.4f}**", f"{se[param]['cpu']:.0f}"])
        lines += [markdown_table(header, rows)]
    sm = results.get("samplers")
    if sm:
        lines += ["## Samplers on learned 2-D scores", "",
                  "Networks: MLP width 128, 3 residual blocks, "
                  f"{sm['steps']} steps of batch 512 on 50,000 points (eps network for every "
                  "sampler except RTK-MALA, which uses the energy network for its Metropolis "
                  "correction; the row 'ddpm (energy net)' separates the network from the "
                  "sampler). Each cell: energy distance (V-statistic, lower is better) of "
                  f"{sm['num_samples']} samples to {sm['num_samples']} held-out points, "
                  + (f"mean ± sd over {sm['seeds']} independent groups of samples, "
                     if sm.get("seeds", 1) > 1 else "") + "then the "
                  "measured score evaluations per sample and, for Picard, the sequential rounds. "
                  "Budget columns are the `nfe` option; FORS has none, so its columns are "
                  f"delta = {', '.join(str(sm['fors_deltas'][str(b)]) for b in sm['budgets'])} "
                  "(constant "
                  "0.1); Picard-SDE's columns are the steps of the sequential sampler it "
                  "parallelises (5 blocks, tol 1e-3), so it spends more evaluations in fewer "
                  "rounds.", ""]
        lines += ["How to read it: with this many samples the energy distance of exact data to the "
                  "held-out set (the floor) is not 0, and its spread is of the same order as the "
                  "differences between cells; a cell within about two sds of the floor is as good as "
                  "exact data at this resolution. The table therefore shows that each sampler runs "
                  "on a trained network and how many evaluations it spent, more than a ranking; "
                  "the accuracy-versus-cost comparisons on exact scores are in the other benchmark "
                  "pages.", ""]
        names = sorted(sm["datasets"], key=lambda n: (datasets.NAMES.index(n), n))
        for dataset in names:
            res = sm["datasets"][dataset]
            floor = res["floor"]
            if isinstance(floor, dict):
                floor_text = (f"**{floor['mean']:.4f} ± {floor['sd']:.4f}** (mean ± sd over "
                              f"{len(floor['values'])} fresh data sets against the same held-out "
                              "set; a sampler inside this band is as good as exact data)")
            else:
                floor_text = f"**{floor:.4f}** (one fresh data set against the held-out set)"
            lines += [f"### {dataset}", "",
                      f"Command: `{res.get('command', sm['command'])}`. Floor: {floor_text}.", ""]
            header = ["method"] + [f"budget {b}" for b in sm["budgets"]]
            rows = []
            order = [m for m in SAMPLERS if m in res["rows"]]
            for method in order:
                cells = res["rows"][method]
                row = [method]
                for b in sm["budgets"]:
                    c = cells.get(str(b))
                    if c is None or "error" in c:
                        row.append("failed" if c else "-")
                        continue
                    extra = f", {c['rounds']} rounds" if method.startswith("picard") else ""
                    div = f", {c['divergent']} divergent" if c["divergent"] else ""
                    ed = np.atleast_1d(c["energy_distance"])
                    cell = f"{ed.mean():.4f}" + (f" ± {ed.std(ddof=1):.4f}" if ed.size > 1 else "")
                    row.append(f"{cell} ({c['nfe']:.0f} evals{extra}{div})")
                rows.append(row)
            lines += [markdown_table(header, rows),
                      f"![{dataset}: samples at budget 100](../img/learned_{dataset}.png)", ""]
    dg = results.get("digits")
    if dg:
        lines += ["## 8x8 digits with the conv net", "",
                  f"Command: `{dg['command']}`. Network: {_describe(dg['config'])}; "
                  f"{dg['steps']} steps of batch {dg['batch_size']} on 1,597 images "
                  f"({dg['train_cpu']:.0f} s CPU). 256 samples per method, with a final Tweedie "
                  "denoising step. Copy check: the distance from each sample to its nearest "
                  "training image, against the same distance for the 200 held-out images (new "
                  "handwriting); a sampler that copied training images would give distances near "
                  "0.", ""]
        header = ["method", "evals", "median NN distance (samples)",
                  "median NN distance (held-out)", "closest sample",
                  "samples closer than the 1% quantile of held-out"]
        rows = [[m, f"{c['nfe']:.0f}", f"{c['median_sample']:.2f}", f"{c['median_held_out']:.2f}",
                 f"{c['min_sample']:.2f}",
                 f"{100 * c['fraction_below_q01']:.1f}% (quantile {c['q01_held_out']:.2f})"]
                for m, c in dg["methods"].items()]
        lines += [markdown_table(header, rows),
                  "![digits: 64 DDPM samples](../img/learned_digits.png)", "",
                  "Each DDPM sample (left) beside its nearest training image (right):", "",
                  "![digits: nearest training images](../img/learned_digits_nearest.png)", ""]
    with open(REPORT, "w") as fh:
        fh.write("\n".join(lines).rstrip() + "\n")


def part_report(args):
    """Rewrite the page; fill in the floor band of data sets stored with a single floor value."""
    results = _load_results()
    for dataset, res in results.get("samplers", {}).get("datasets", {}).items():
        if not isinstance(res["floor"], dict):
            res["floor"] = _floor(dataset, _held_out(dataset, results["samplers"]["num_samples"]))
    with open(RESULTS, "w") as fh:
        json.dump(results, fh, indent=1, sort_keys=True)
    write_markdown(results)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["score-error", "samplers", "digits", "report"])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=["two-moons", "checkerboard"])
    parser.add_argument("--digit-steps", type=int, default=4000)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    {"score-error": part_score_error, "samplers": part_samplers, "digits": part_digits,
     "report": part_report}[args.part](args)
    print(f"done in {time.perf_counter() - start:.0f} s wall, {_cpu():.0f} s CPU; wrote {REPORT}")


if __name__ == "__main__":
    main()
