"""Picard-parallel diffusion samplers: sequential rounds needed to match a 1000-step sampler.

Part 1 (exact scores). For ``targets.four_modes_2d()`` and ``targets.subspace_mixture(16)``, each
Picard configuration (block Picard on the SDE and the ODE, denoiser form and score form; ParaDiGMS)
runs on ``--particles`` particles next to its own sequential sampler with the SAME noise
(``sequential=True``, same key, same block layout). A ladder of tolerances (or of fixed iteration
counts) is walked from loose to strict, and the first rung whose RMS gap to the sequential sample,
divided by the data scale sqrt(tr Cov / d), is at most 1e-3 is reported:

- ``rounds``: sequential rounds of batched evaluation for the whole batch (sum over blocks of the
  largest per-particle iteration count; for ParaDiGMS the largest per-particle round count);
- ``evals (needed)``: mean over particles of the evaluations that particle's own loop ran
  (``DiffusionResult.nfe_needed``);
- ``evals (batch)``: evaluations per particle the vmapped batch executed, ``DiffusionResult.nfe``
  (rounds x block width, or rounds x window, checked here), since a vmapped while_loop runs every
  particle until the slowest converges.

Part 2 (wall clock). A small MLP score (``scoresample.nn`` residual MLP, width 64, 2 blocks, trained
for ``--train-steps`` steps by denoising score matching on draws of the 2-D mixture) drives the
1000-step sequential sampler and the Picard samplers on 256 particles; each Picard sampler runs at
the loosest rung of its ladder that reaches the same 1e-3 relative gap, and the compiled runs are
timed side by side (alternating, ``--repeats`` times, median reported).

    python benchmarks/picard.py                  # both parts (about 35 min here)
    python benchmarks/picard.py --part exact --targets four-modes-2d --out /tmp/picard.md

writes docs/benchmarks/picard.md.
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
from common import markdown_table, write_report  # noqa: E402

from scoresample import diffusion, targets  # noqa: E402
from scoresample.driver import scan_particles  # noqa: E402

TARGETS = {"four-modes-2d": targets.four_modes_2d,
           "subspace-16d": lambda: targets.subspace_mixture(16)}
GAP = 1e-3
NUM_STEPS = 1000

# (label, method, fixed options, ladder parameter, ladder values). Block-Picard tolerances are in
# units of the data scale (multiplied by it before use); ParaDiGMS's tau is relative to each step's
# noise standard deviation already. "plain" is acceleration=None; "TAA" the triangular Anderson
# default (memory 2); "coarse 5" starts each block from a 5-segment coarse solve (5 more rounds).
TOLS = [3e-3, 1e-3, 3e-4]
PLAIN = dict(acceleration=None)
CONFIGS = [
    ("picard-sde, plain, 5 blocks", "picard-sde", dict(num_blocks=5, **PLAIN), "tol", TOLS),
    ("picard-sde, TAA, 5 blocks", "picard-sde", dict(num_blocks=5), "tol", TOLS),
    ("picard-sde, plain, 1 block", "picard-sde", dict(num_blocks=1, **PLAIN), "tol", TOLS),
    ("picard-sde, TAA, 1 block (default)", "picard-sde", dict(), "tol", TOLS),
    ("picard-sde, TAA, 1 block, coarse 5", "picard-sde", dict(coarse_steps=5), "tol", TOLS),
    ("picard-sde, score form, plain, 10 blocks", "picard-sde",
     dict(form="score", num_blocks=10, **PLAIN), "tol", TOLS),
    ("picard-ode 100 steps, plain, 1 block", "picard-ode", dict(num_steps=100, **PLAIN), "tol",
     TOLS),
    ("picard-ode 100 steps, TAA, 1 block (default)", "picard-ode", dict(num_steps=100), "tol",
     TOLS),
    ("picard-ode 100 steps, TAA, coarse 3", "picard-ode", dict(num_steps=100, coarse_steps=3),
     "tol", TOLS),
    ("paradigms, plain, window 128", "paradigms", dict(window=128, **PLAIN), "tol",
     [0.03, 0.01, 0.003, 0.001]),
    ("paradigms, TAA, window 128 (default)", "paradigms", dict(window=128), "tol",
     [0.03, 0.01, 0.003, 0.001]),
]
WALL_CONFIGS = ["picard-sde, plain, 5 blocks", "picard-sde, TAA, 1 block (default)",
                "picard-ode 100 steps, plain, 1 block",
                "picard-ode 100 steps, TAA, 1 block (default)", "paradigms, plain, window 128",
                "paradigms, TAA, window 128 (default)"]


NOTES = """\
- Exactness is tested, not benchmarked: with K equal to the block length (or tau = 0 for
  ParaDiGMS) the Picard samplers equal their sequential sampler with the same noise to 1e-10 in
  float64, with the acceleration on or off (tests/test_picard.py, tests/test_picard_anderson.py).
- The rounds of a batch are those of its slowest particle, and the slowest particles sit near a
  boundary between modes at the time the modes separate: the reverse flow amplifies any
  difference there, the iterate stays in the wrong mode for many iterations, and a tolerance on
  the per-iteration change does not bound every particle's final gap (see `worst particle`).
  `evals (needed)` / block width is the mean particle's iteration count, far below the rounds.
- TAA (triangular Anderson acceleration, memory 2, the default) needs fewer rounds than plain
  Picard in every configuration here; one block over the whole trajectory needs fewer rounds than
  5 blocks (rounds add up over blocks) at about 3 times the executed evaluations.
- A coarse first guess ("coarse 5": 5 evaluations per block, counted) saves evaluations of the
  typical particle but not rounds: the particles that set the round count start no closer.
- "denoiser" iterates only a_t x0_hat(x, t) and integrates the linear part of the score exactly;
  "score" iterates the score (exponential integrator) and needs about twice the rounds.
- On this CPU a batched call of B points costs about as much as B single-point calls (compare the
  microseconds per evaluated point), so the wall-clock ratio follows the evaluations executed,
  not the rounds. Picard pays off in wall clock only where a round of M points costs about one
  evaluation: idle accelerator lanes, or the time axis sharded over several devices.
"""


def data_scale(mixture) -> float:
    return float(np.sqrt(np.trace(np.asarray(mixture.cov)) / mixture.dim))


def rel_gap(a, b, scale) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2))) / scale


def batch_width(method, res) -> int:
    s = res.settings
    return s["window"] if method == "paradigms" else max(s["block_sizes"])


def ladder_options(param, value, scale):
    if param == "tol":
        return {"tol": value * scale}
    return {param: value}


def walk_ladder(rng_key, score_fn, dim, scale, method, fixed, param, values, num_particles, log):
    """Run the sequential reference, then the ladder until the gap is <= GAP. Returns rows."""
    fixed = dict(fixed)
    common = dict(dim=dim, num_samples=num_particles, num_steps=fixed.pop("num_steps", NUM_STEPS),
                  **fixed)
    layout = {k: v for k, v in common.items() if k not in ("acceleration", "coarse_steps")}
    ref = diffusion.sample(rng_key, method, score_fn, sequential=True, **layout)
    rows, chosen = [], None
    for value in values:
        res = diffusion.sample(rng_key, method, score_fn, **common,
                               **ladder_options(param, value, scale if method != "paradigms" else 1.0))
        gap = rel_gap(res.samples, ref.samples, scale)
        worst = float(np.max(np.sqrt(np.mean((np.asarray(res.samples) - np.asarray(ref.samples)) ** 2,
                                             axis=-1)))) / scale
        batch = int(res.nfe)  # what the vmapped batch executed per particle
        coarse = res.settings.get("coarse_steps", 0) * res.settings.get("num_blocks", 1)
        width = batch_width(method, res)
        if batch != (res.rounds - coarse) * width + coarse:
            raise RuntimeError(f"nfe {res.nfe} != (rounds {res.rounds} - coarse {coarse}) x width "
                               f"{width} + coarse")
        row = dict(param=param, value=value, rounds=res.rounds, needed=res.nfe_needed, batch=batch,
                   gap=gap, worst=worst, divergent=int(np.sum(np.asarray(res.is_divergent))),
                   wall=res.settings["wall_time"])
        rows.append(row)
        log(f"  {param}={value}: rounds {res.rounds}, evals needed {res.nfe_needed:.0f}, "
            f"batch {batch}, gap {gap:.2e} (worst particle {worst:.1e}), {row['wall']:.1f}s")
        if gap <= GAP:
            chosen = row
            break
    return rows, chosen, ref


def part_exact(args, log):
    key = jax.random.key(args.seed)
    summary_rows, ladder_rows = [], []
    for name in args.targets:
        mix = TARGETS[name]()
        scale = data_scale(mix)
        log(f"{name}: dim {mix.dim}, data scale {scale:.3f}")
        for label, method, fixed, param, values in CONFIGS:
            if args.configs and label not in args.configs:
                continue
            log(f" {label}")
            rows, chosen, _ = walk_ladder(key, mix.score, mix.dim, scale, method, fixed, param,
                                          values, args.particles, log)
            for r in rows:
                ladder_rows.append([name, label, f"{r['param']}={r['value']:g}", r["rounds"],
                                    f"{r['needed']:.0f}", r["batch"], f"{r['gap']:.1e}",
                                    f"{r['worst']:.1e}", r["divergent"]])
            if chosen is None:
                summary_rows.append([name, label, "not reached", "", "", "", f"{rows[-1]['gap']:.1e}"])
            else:
                summary_rows.append([name, label, f"{param}={chosen['value']:g}", chosen["rounds"],
                                     f"{chosen['needed']:.0f}", chosen["batch"], f"{chosen['gap']:.1e}"])
    body = [f"Sequential sampler: {NUM_STEPS} steps (100 for the picard-ode rows) on the log-SNR "
            "grid from t_max = "
            "0.5 log((d + 1) / 1e-4) to t_min = 1e-3, exact mixture scores, "
            f"{args.particles} particles, seed {args.seed}. Gap: RMS over particles and coordinates "
            "of (Picard - sequential with the same noise) / sqrt(tr Cov / d); target "
            f"<= {GAP:g}. Block-Picard tolerances are given in units of the data scale. "
            "`rounds` = sequential rounds of batched evaluation; `evals (needed)` = mean per particle "
            "of what its own loop ran (`nfe_needed`); `evals (batch)` = per particle, what the "
            "vmapped batch executed (`nfe` of `diffusion.sample`); `worst particle` = the largest "
            "per-particle relative gap.", "",
            "### Rounds to reach the target gap (first rung of each ladder that does)", "",
            markdown_table(["target", "sampler", "setting", "rounds", "evals (needed)",
                            "evals (batch)", "gap"], summary_rows),
            "### Every rung run", "",
            markdown_table(["target", "sampler", "setting", "rounds", "evals (needed)",
                            "evals (batch)", "gap", "worst particle", "divergent"], ladder_rows)]
    return "\n".join(body)


def small_mlp_score(args, log):
    """Train the small MLP on exact draws of the 2-D mixture; return (score_fn, settings)."""
    from flax import nnx

    from scoresample import nn, train

    mix = targets.four_modes_2d()
    data = np.asarray(mix.sample(jax.random.key(100), 20_000))
    model = nn.score_model(2, parameterization="eps", hidden=64, depth=2,
                           data_std=float(np.sqrt(np.mean(data**2))), rngs=nnx.Rngs(1))
    start = time.perf_counter()
    trained = train.fit_score(jax.random.key(101), data, model=model, num_steps=args.train_steps,
                              batch_size=256, learning_rate=2e-3, progress_bar=False)
    log(f"trained the MLP for {args.train_steps} steps in {time.perf_counter() - start:.0f}s, "
        f"final loss {float(np.mean(trained.losses[-100:])):.3f}")
    return trained.score_fn, mix


def timed_runner(plan, num_particles):
    """A compiled function key -> samples for ``plan`` (compile once, time later calls)."""

    def init_fn(k):
        return plan.algorithm.init(plan.init_position(k))

    @jax.jit
    def run(rng_key):
        states, infos = scan_particles(rng_key, init_fn, plan.algorithm.step, num_particles,
                                       plan.num_steps)
        return jax.vmap(plan.finalize)(states), infos.num_rounds

    return run


def part_wallclock(args, log):
    score_fn, mix = small_mlp_score(args, log)
    scale = data_scale(mix)
    n = args.wall_particles
    key = jax.random.key(args.seed)
    wall_configs = [c for c in CONFIGS if c[0] in WALL_CONFIGS]
    rows = []
    for label, method, fixed, param, values in wall_configs:
        log(f" {label} (MLP score)")
        _, chosen, _ = walk_ladder(key, score_fn, 2, scale, method, fixed, param, values, n, log)
        if chosen is None:
            rows.append([label, "", "not reached", "", "", "", "", "", "", ""])
            continue
        opts = dict(fixed)
        opts = dict(dim=2, num_steps=opts.pop("num_steps", NUM_STEPS), **opts)
        num_steps = opts["num_steps"]
        seq_plan = diffusion.build_plan(method, score_fn, sequential=True,
                                        **{k: v for k, v in opts.items() if k != "acceleration"})
        par_plan = diffusion.build_plan(method, score_fn, **opts,
                                        **ladder_options(param, chosen["value"],
                                                         scale if method != "paradigms" else 1.0))
        run_seq, run_par = timed_runner(seq_plan, n), timed_runner(par_plan, n)
        x_seq, _ = jax.block_until_ready(run_seq(key))  # compile both first
        x_par, rounds = jax.block_until_ready(run_par(key))
        gap = rel_gap(x_par, x_seq, scale)
        t_seq, t_par = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(run_seq(key))
            t_seq.append(time.perf_counter() - start)
            start = time.perf_counter()
            jax.block_until_ready(run_par(key))
            t_par.append(time.perf_counter() - start)
        med_seq, med_par = float(np.median(t_seq)), float(np.median(t_par))
        total_rounds = int(np.sum(np.max(np.asarray(rounds), axis=1)))
        executed = total_rounds * (fixed["window"] if method == "paradigms"
                                   else max(par_plan.settings["block_sizes"]))
        per_point_seq = 1e6 * med_seq / (n * num_steps)
        per_point_par = 1e6 * med_par / (n * executed)
        log(f"  sequential {med_seq:.2f}s, {label} {med_par:.2f}s (ratio {med_par / med_seq:.2f}), "
            f"rounds {total_rounds}, executed evals per particle {executed}, gap {gap:.1e}")
        rows.append([label, num_steps, f"{param}={chosen['value']:g}", total_rounds, executed,
                     f"{gap:.1e}",
                     f"{med_seq:.2f}", f"{med_par:.2f}", f"{med_par / med_seq:.2f}",
                     f"{per_point_seq:.1f} / {per_point_par:.1f}"])
    body = [f"Small MLP score (scoresample.nn residual MLP, width 64, 2 blocks, eps output, trained "
            f"{args.train_steps} steps on 20,000 draws of four_modes_2d), {n} particles, float64, "
            "sequential sampler vs Picard at the first ladder rung with gap <= "
            f"{GAP:g}; compiled runs timed alternately {args.repeats} times, medians in seconds. "
            f"{os.cpu_count()} CPU cores shared with other jobs, XLA_FLAGS="
            f"{os.environ.get('XLA_FLAGS', '')!r}.", "",
            markdown_table(["Picard sampler", "sequential steps", "setting", "rounds",
                            "evals (batch)", "gap",
                            "sequential (s)", "Picard (s)", "Picard / sequential",
                            "us per evaluated point (seq / Picard)"], rows),
            "The sequential sampler executes one evaluation per particle per step, one step per "
            "round.", ""]
    return "\n".join(body)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "exact", "wallclock"], default="all")
    parser.add_argument("--targets", type=lambda s: s.split(","), default=list(TARGETS))
    parser.add_argument("--configs", type=lambda s: s.split(";"), default=None,
                        help="labels of CONFIGS to run, separated by ';' (default all)")
    parser.add_argument("--particles", type=int, default=256)
    parser.add_argument("--wall-particles", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "..", "docs", "benchmarks", "picard.md"))
    args = parser.parse_args(argv)
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)

    sections = []
    if args.part in ("all", "exact"):
        sections += ["## Rounds against a 1000-step sequential sampler (exact scores)", "",
                     part_exact(args, log), ""]
    if args.part in ("all", "wallclock"):
        sections += ["## Wall clock with a small MLP score", "", part_wallclock(args, log), ""]
    sections += ["## Reading these numbers", "", NOTES]
    wall = time.perf_counter() - start
    write_report(args.out, "Picard-parallel samplers", "\n".join(sections), wall_time=wall)
    log(f"wrote {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()
