"""FORS benchmarks: FORS-diffusion at DDPM's price, FORS-proximal chains, and FORS-proximal
against MALA and NUTS.

Part "diffusion" (docs/benchmarks/fors.md): FORS-diffusion with exact scores on
``targets.two_modes_1d()`` and ``targets.eight_modes_2d()``, default options (the grid chosen by
the pilot from delta, the autobatching driver with its default lanes):

1. the headline, batch 10,000 at delta = 1e-2 beside DDPM with 1000 steps in the same process:
   executed and needed score calls per sample, accuracy against exact draws in groups (energy
   distance, mode-weight error, sliced W2; mean and standard error over groups) beside the
   exact-versus-exact floor, and wall times. Wall times: "cold" is the first call (compilation
   included), "warm" the same call again with JAX's persistent compilation cache on (what a
   user who samples again pays; FORS's grid is data, so another seed hits the cache too);
2. lanes: executed / needed and wall time against the number of lanes;
3. cost against delta (1e-1 ... 1e-4) on the 1-D mixture, with the accuracy of DDPM at several
   budgets beside it;
4. cost against the ambient dimension d = 2 ... 1024 of ``targets.subspace_mixture(dim=d)``
   (intrinsic dimension 2), DDPM beside it;
5. Picard's tolerance mode and ParaDiGMS: executed / needed of their lockstep runs (what
   autobatching could save).

Part "chains" (appended to docs/benchmarks/fors.md): FORS-proximal chains inside
``scoresample.sample`` with 4 and 64 chains: evaluations the autobatched chains executed against
what they needed, and what the lockstep (vmapped, step by step) loop would have executed for the
same draws (both from the per-draw counts).

Part "proximal" (docs/benchmarks/fors_proximal.md): FORS-proximal against MALA (blackjax.mala,
step tuned by dual averaging to acceptance 0.574) and NUTS (blackjax window adaptation) on a
correlated Gaussian (d = 20, exact moments) and on the Bayesian logistic regression of
``scoresample.models.breast_cancer_logistic``.

    python benchmarks/fors.py --parts diffusion,chains   # about 40 min alone on 2 cores
    python benchmarks/fors.py --parts diffusion --quick --out-diffusion /tmp/fors.md  # a check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import blackjax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import evaluate, ks_to_exact, markdown_table, write_report  # noqa: E402

import scoresample  # noqa: E402
from scoresample import diffusion, targets  # noqa: E402
from scoresample.kernels import fors as F  # noqa: E402
from scoresample.models import breast_cancer_logistic  # noqa: E402

# =============================================================================================
# Part 1: FORS-diffusion at DDPM's price
# =============================================================================================

def use_compilation_cache(path):
    """JAX's persistent compilation cache in ``path``: a second identical call loads its program."""
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def grouped(samples, mixture, key, groups):
    """``evaluate`` on ``groups`` equal groups: mean and standard error of each metric."""
    n = samples.shape[0] // groups
    rows = [evaluate(samples[g * n:(g + 1) * n], mixture, jax.random.fold_in(key, g))
            for g in range(groups)]
    out = {}
    for name in ("energy_distance", "mode_weight_error", "sliced_w2"):
        v = np.array([r[name] for r in rows])
        out[name] = (float(v.mean()), float(v.std(ddof=1) / math.sqrt(groups)))
    if mixture.dim == 1:
        out["ks"] = ks_to_exact(samples, mixture, 0.0)
    return out


def cell(metric):
    return f"{metric[0]:.5f} ± {metric[1]:.5f}"


def sample_timed(key, method, mixture, num_samples, **options):
    """``diffusion.sample``, called twice (cold, then warm from the compilation cache)."""
    walls = []
    for _ in range(2):
        tic = time.perf_counter()
        res = diffusion.sample(key, method, mixture.score, dim=mixture.dim,
                               num_samples=num_samples, **options)
        jax.block_until_ready(res.samples)
        walls.append(time.perf_counter() - tic)
    return res, walls


def fors_facts(res):
    st = res.settings
    rates = F.pooled_rates(res.info)
    return dict(steps=st["num_steps"], growth=st["growth"], predicted=st.get("clip_rate_predicted"),
                clip=rates["clip_rate"], acceptance=rates["acceptance"],
                pilot=st["nfe_pilot"] / res.samples.shape[0], lanes=st["num_lanes"],
                overflow=rates["overflow_rate"], divergent=int(np.sum(res.is_divergent)),
                m2=st.get("second_moment_estimate"))


def headline(args, lines):
    base = jax.random.key(20261201)
    n, groups = args.batch, args.groups
    lines += [f"## Headline: batch {n:,}, delta = 1e-2, default options, beside DDPM-1000", "",
              "Exact scores. FORS: every option at its default (the pilot chooses the grid's "
              "density G and the second moment; "
              f"{F.PILOT_GROWTH:g} is the pilot's G; lanes = N / 8). nfe executed = score calls "
              "the batch ran per sample (every lane of every iteration, idle lanes and the "
              "pilot's calls included); needed = what the particles' own work took (plus the "
              "pilot's share). Accuracy: each run's samples in "
              f"{groups} groups of {n // groups:,}, each scored against as many fresh exact "
              "draws (`common.evaluate`); mean ± standard error over the groups, and the same "
              "for exact draws (the floor). KS: one test of all samples against the exact CDF "
              "(1-D). Wall: cold = first call (compilation included), warm = the same call "
              "again (programs from the persistent compilation cache).", ""]
    header = ["target", "sampler", "nfe executed", "needed", "executed / needed",
              "energy distance", "mode-weight error", "sliced W2", "KS (p)", "wall cold s",
              "wall warm s"]
    rows, facts = [], []
    for t_index, name in enumerate(args.targets):
        mix = getattr(targets, name)()
        key = jax.random.fold_in(base, t_index)
        ddpm, ddpm_wall = sample_timed(jax.random.fold_in(key, 1), "ddpm", mix, n, nfe=1000)
        fors, fors_wall = sample_timed(jax.random.fold_in(key, 2), "fors", mix, n, delta=1e-2)
        exact = np.asarray(mix.sample(jax.random.fold_in(key, 3), n))
        for label, res, wall in (("DDPM-1000", ddpm, ddpm_wall), ("FORS", fors, fors_wall),
                                 ("exact draws", None, None)):
            x = exact if res is None else np.asarray(res.samples)
            acc = grouped(x, mix, jax.random.fold_in(key, 4), groups)
            ks = f"{acc['ks'][0]:.4f} ({acc['ks'][1]:.2g})" if "ks" in acc else ""
            if res is None:
                rows.append([name, label, "", "", "", cell(acc["energy_distance"]),
                             cell(acc["mode_weight_error"]), cell(acc["sliced_w2"]), ks, "", ""])
                continue
            rows.append([name, label, f"{res.nfe:.0f}", f"{res.nfe_needed:.0f}",
                         f"{res.nfe / res.nfe_needed:.3f}", cell(acc["energy_distance"]),
                         cell(acc["mode_weight_error"]), cell(acc["sliced_w2"]), ks,
                         f"{wall[0]:.1f}", f"{wall[1]:.1f}"])
            print(label, name, rows[-1], flush=True)
        f = fors_facts(fors)
        facts.append(
            f"- {name}: G = {f['growth']:.2f} ({f['steps']} steps), predicted clip rate "
            f"{f['predicted']:.1e}, measured {f['clip']:.1e} (target 1e-3), acceptance "
            f"{f['acceptance']:.3f}, pilot {f['pilot']:.1f} calls per sample, second moment "
            f"estimated {f['m2']:.2f}, {f['divergent']} divergent samples; wall ratio FORS / "
            f"DDPM-1000: cold {fors_wall[0] / ddpm_wall[0]:.2f}, warm "
            f"{fors_wall[1] / ddpm_wall[1]:.2f}.")
    lines += [markdown_table(header, rows), *facts, ""]


def lanes_table(args, lines):
    mix = targets.two_modes_1d()
    n = args.batch
    key = jax.random.key(20261202)
    rows = []
    for fraction in args.lane_fractions:
        lanes = max(1, int(round(n * fraction)))
        res, wall = sample_timed(key, "fors", mix, n, delta=1e-2, num_lanes=lanes)
        st = res.settings
        rows.append([f"{lanes:,} (N/{round(1 / fraction)})", f"{st['nfe_executed_run']:.1f}",
                     f"{st['nfe_needed_run']:.1f}",
                     f"{st['nfe_executed_run'] / st['nfe_needed_run']:.3f}", f"{wall[1]:.1f}"])
        print("lanes", rows[-1], flush=True)
    lines += ["## Lanes", "",
              f"`two_modes_1d`, batch {n:,}, delta = 1e-2, the same key (so the same grid and "
              "draws: a particle's draws do not depend on the lanes). executed and needed are the "
              "run's own (without the pilot); wall warm.", "",
              markdown_table(["lanes", "executed / sample", "needed / sample",
                              "executed / needed", "wall warm s"], rows)]


def delta_table(args, lines):
    mix = targets.two_modes_1d()
    n = args.delta_batch
    base = jax.random.key(20261203)
    rows = []
    for delta in args.deltas:
        key = jax.random.fold_in(base, int(round(-math.log10(delta))))
        res, wall = sample_timed(key, "fors", mix, n, delta=delta)
        f = fors_facts(res)
        ks = ks_to_exact(np.asarray(res.samples), mix, res.settings["t_min"])
        rows.append([f"{delta:g}", f"{f['growth']:.2f}", f["steps"], f"{res.nfe:.0f}",
                     f"{res.nfe_needed:.0f}", f"{f['pilot']:.0f}", f"{f['predicted']:.1e}",
                     f"{f['clip']:.1e}", f"{ks[0]:.4f} ({ks[1]:.2g})", f"{wall[1]:.1f}"])
        print("delta", rows[-1], flush=True)
    ddpm_rows = []
    for nfe in args.ddpm_nfe:
        key = jax.random.fold_in(base, 100 + nfe)
        res = diffusion.sample(key, "ddpm", mix.score, dim=1, num_samples=n, nfe=nfe)
        ks = ks_to_exact(np.asarray(res.samples), mix, float(res.settings.get("t_min", 0.0)))
        left = float(np.mean(np.asarray(res.samples)[:, 0] < 0)) - 0.3
        ddpm_rows.append([nfe, f"{ks[0]:.4f} ({ks[1]:.2g})", f"{left:+.4f}"])
        print("ddpm", ddpm_rows[-1], flush=True)
    exact = np.asarray(mix.sample(jax.random.fold_in(base, 999), n))
    ks = ks_to_exact(exact, mix, 0.0)
    ddpm_rows.append(["exact draws", f"{ks[0]:.4f} ({ks[1]:.2g})",
                      f"{float(np.mean(exact[:, 0] < 0)) - 0.3:+.4f}"])
    lines += ["## Cost against delta", "",
              f"`two_modes_1d`, {n:,} samples per run, default options. G, steps, the clip "
              "rate predicted by the pilot and measured; nfe executed and needed per sample "
              "(pilot included); KS: distance of all samples to the exact CDF of p_{t_min} and "
              f"its p-value (floor about {0.87 / math.sqrt(n):.4f}; a p-value below 1e-3 is a "
              "detected error).", "",
              markdown_table(["delta", "G", "steps", "nfe executed", "needed",
                              "pilot / sample", "clip predicted", "clip measured", "KS (p)",
                              "wall warm s"], rows),
              f"DDPM (Li-Yan coefficients) at several budgets, {n:,} samples each: the KS "
              "distance to the exact CDF and the error of the left mode's weight (standard error "
              f"{math.sqrt(0.21 / n):.4f}).", "",
              markdown_table(["DDPM nfe", "KS (p)", "left weight - 0.3"], ddpm_rows)]


def dimension_table(args, lines):
    n = args.dim_batch
    base = jax.random.key(20261204)
    rows = []
    for d in args.dims:
        mix = targets.subspace_mixture(dim=d)
        key = jax.random.fold_in(base, d)
        res, wall = sample_timed(key, "fors", mix, n, delta=1e-2)
        f = fors_facts(res)
        acc = grouped(np.asarray(res.samples), mix, jax.random.fold_in(key, 1), args.groups)
        floor = grouped(np.asarray(mix.sample(jax.random.fold_in(key, 2), n)), mix,
                        jax.random.fold_in(key, 3), args.groups)
        ddpm_cells = []
        for nfe in args.dim_ddpm_nfe:
            dres = diffusion.sample(jax.random.fold_in(key, 10 + nfe), "ddpm", mix.score, dim=d,
                                    num_samples=n, nfe=nfe)
            dacc = grouped(np.asarray(dres.samples), mix, jax.random.fold_in(key, 1), args.groups)
            ddpm_cells.append(f"{nfe}: {dacc['mode_weight_error'][0]:.4f}")
        rows.append([d, f"{f['growth']:.2f}", f["steps"], f"{res.nfe:.0f}",
                     f"{res.nfe_needed:.0f}", f"{f['clip']:.1e}", cell(acc["mode_weight_error"]),
                     cell(floor["mode_weight_error"]), "; ".join(ddpm_cells), f"{wall[1]:.1f}"])
        print("dim", rows[-1], flush=True)
    lines += ["## Cost against the ambient dimension (intrinsic dimension 2)", "",
              f"`targets.subspace_mixture(dim=d)` (the four-mode 2-D mixture on a random 2-D "
              f"subspace of R^d), {n:,} samples, delta = 1e-2, default options. Mode-weight "
              f"error: mean ± standard error over {args.groups} groups, beside exact draws "
              "(the floor); DDPM's mode-weight error at several budgets on the same groups.", "",
              markdown_table(["d", "G", "steps", "nfe executed", "needed", "clip measured",
                              "FORS mode-weight error", "exact draws", "DDPM nfe: error",
                              "wall warm s"], rows)]


def picard_table(args, lines):
    mix = targets.four_modes_2d()
    rows = []
    for method, options in (("picard-sde", dict(num_steps=64, num_blocks=4, tol=1e-3)),
                            ("paradigms", dict(num_steps=64, window=16, tol=1e-3))):
        for n in (64, 1024):
            try:
                res = diffusion.sample(jax.random.key(5), method, mix.score, dim=2,
                                       num_samples=n, **options)
            except (TypeError, ValueError) as err:  # an option this method does not take
                rows.append([method, n, f"not run: {err}", "", ""])
                continue
            rows.append([method, n, f"{res.nfe:.1f}", f"{res.nfe_needed:.1f}",
                         f"{res.nfe / res.nfe_needed:.3f}"])
            print("picard", rows[-1], flush=True)
    lines += ["## Picard's tolerance mode and ParaDiGMS in lockstep", "",
              "`four_modes_2d`, exact scores. Both run their data-dependent loops in lockstep "
              "(`jax.vmap`): executed / needed is the most autobatching could save.", "",
              markdown_table(["method", "particles", "nfe executed", "needed",
                              "executed / needed"], rows)]


def run_diffusion(args):
    lines = []
    headline(args, lines)
    if args.lane_fractions:
        lanes_table(args, lines)
    if args.deltas:
        delta_table(args, lines)
    if args.dims:
        dimension_table(args, lines)
    picard_table(args, lines)
    return "\n".join(lines) + "\n"


def run_chains(args):
    """FORS-proximal chains in scoresample.sample: executed / needed with 4 and 64 chains."""
    model = breast_cancer_logistic()
    rows = []
    for chains in (4, 64):
        tic = time.perf_counter()
        dt = scoresample.sample(jax.random.key(20261205), model.logdensity_fn,
                                init=jnp.zeros(model.dim), method="fors", num_chains=chains,
                                num_warmup=args.chain_warmup, num_draws=args.chain_draws,
                                progress_bar=False)
        wall = time.perf_counter() - tic
        need = np.asarray(dt.sample_stats["num_grad_evals"].values, dtype=np.int64)  # (C, draws)
        chunk = json.loads(dt.attrs["settings"])["chunk_size"]
        # autobatched: one lane per chain, so a chunk lasts as long as its busiest chain's total
        auto = sum(chains * int(need[:, i:i + chunk].sum(1).max())
                   for i in range(0, need.shape[1], chunk))
        # lockstep: each draw lasts as long as its busiest chain's draw (thin steps each)
        lock = chains * int(need.max(axis=0).sum())
        needed = int(need.sum())
        rows.append([chains, f"{needed / need.size:.1f}", f"{auto / needed:.3f}",
                     f"{lock / needed:.3f}", f"{dt.attrs['wall_time_sampling']:.1f}",
                     f"{wall:.0f}"])
        print("chains", rows[-1], flush=True)
    return "\n".join([
        "## FORS-proximal chains in `scoresample.sample`", "",
        f"`models.breast_cancer_logistic()` (d = 31), {args.chain_warmup} warmup steps, "
        f"{args.chain_draws} draws per chain, default options. needed = gradient evaluations "
        "per draw (per chain); executed / needed of the autobatched chains (one lane per chain, "
        "each chain runs its chunk of steps without waiting) and of the lockstep loop that "
        "vmapped chains step by step would run for the same draws (each step as long as its "
        "busiest chain's).", "",
        markdown_table(["chains", "needed / draw", "autobatched executed / needed",
                        "lockstep executed / needed", "sampling wall s", "total wall s"],
                       rows)]) + "\n"


# =============================================================================================
# Part 2: FORS-proximal against MALA and NUTS
# =============================================================================================

def _gaussian_problem(d=20, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    cov = (q * np.geomspace(0.3, 3.0, d)) @ q.T
    cov = 0.5 * (cov + cov.T)
    mean = np.linspace(-1.0, 1.0, d)
    prec = jnp.asarray(np.linalg.inv(cov))
    logdensity = lambda x: -0.5 * (x - mean) @ prec @ (x - mean)
    return logdensity, mean, cov


def _chains(key, algo, state, num_chains, num_steps):
    def one(k):
        return blackjax.util.run_inference_algorithm(k, algo, num_steps, initial_state=state)[1]

    states, infos = jax.jit(jax.vmap(one))(jax.random.split(key, num_chains))
    return np.asarray(states.position), infos


def _summary(name, draws, grads, warm_grads, ref_mean, ref_var, ref_ess, wall, note=""):
    ess = np.asarray(blackjax.ess(jnp.asarray(draws), chain_axis=0, sample_axis=1))
    flat = draws.reshape(-1, draws.shape[-1])
    se2 = flat.var(0) / ess + (0.0 if ref_ess is None else ref_var / ref_ess)
    z = np.max(np.abs((flat.mean(0) - ref_mean) / np.sqrt(se2)))
    row = dict(name=name, ess_min=float(ess.min()), ess_median=float(np.median(ess)),
               grads=float(grads), warm=float(warm_grads), z=float(z), wall=wall, note=note)
    print(f"{name:34s} ESS min {row['ess_min']:8.1f} median {row['ess_median']:8.1f} grads "
          f"{grads:10.0f} min ESS/1000 grads {1000 * row['ess_min'] / grads:7.3f} max|z| {z:.2f} "
          f"{note} ({wall:.0f}s)", flush=True)
    return row


def _mala(key, logdensity, x0, num_warmup, num_chains, num_draws):
    from scoresample.adaptation import dual_averaging_warmup

    kernel = blackjax.mala.build_kernel()
    state0 = blackjax.mala.init(x0, logdensity)
    step = lambda k, s, h: kernel(k, s, logdensity, h)
    key_w, key_s = jax.random.split(key)
    warm = jax.jit(lambda k: dual_averaging_warmup(k, step, state0, 0.01, num_warmup,
                                                   target=0.574))(key_w)
    algo = blackjax.mala(logdensity, warm.step_size)
    draws, infos = _chains(key_s, algo, warm.state, num_chains, num_draws)
    return draws, num_chains * num_draws, num_warmup + 1, float(warm.step_size), \
        float(np.mean(np.asarray(infos.acceptance_rate)))


def _nuts(key, logdensity, x0, num_warmup, num_chains, num_draws):
    key_w, key_s = jax.random.split(key)
    (state, params), winfo = blackjax.window_adaptation(blackjax.nuts, logdensity).run(
        key_w, x0, num_warmup)
    draws, infos = _chains(key_s, blackjax.nuts(logdensity, **params), state, num_chains,
                           num_draws)
    grads = float(np.sum(np.asarray(infos.num_integration_steps)))
    warm = float(np.sum(np.asarray(winfo.info.num_integration_steps)))
    return draws, grads, warm


def _fors(key, logdensity, x0, num_warmup, num_chains, num_draws, **warm_kw):
    key_w, key_s = jax.random.split(key)
    warm = F.fors_warmup(key_w, logdensity, x0, num_warmup, **warm_kw)
    algo = scoresample.fors(logdensity, **warm.parameters)
    draws, infos = _chains(key_s, algo, warm.state, num_chains, num_draws)
    grads = float(np.sum(np.asarray(infos.num_grad_evals)))
    return draws, grads, float(warm.num_grad_evals), warm.parameters, F.pooled_rates(infos)


def run_proximal(args):
    chains, draws_n, warmup = args.chains, args.draws, args.warmup
    base = jax.random.key(20260302)
    sections = []
    problems = []
    logd_g, mean_g, cov_g = _gaussian_problem()
    problems.append(("correlated Gaussian, d = 20 (covariance eigenvalues 0.3 to 3)", logd_g,
                     jnp.asarray(mean_g) + 3.0, mean_g, np.diag(cov_g), None))
    model = breast_cancer_logistic()
    tic = time.perf_counter()
    ref_draws, _, _ = _nuts(jax.random.fold_in(base, 99), model.logdensity_fn, jnp.zeros(model.dim),
                            1000, 4, args.reference_draws)
    ref_flat = ref_draws.reshape(-1, model.dim)
    ref_ess = np.asarray(blackjax.ess(jnp.asarray(ref_draws), chain_axis=0, sample_axis=1))
    print(f"NUTS reference: {ref_flat.shape[0]} draws, min ESS {ref_ess.min():.0f} "
          f"({time.perf_counter() - tic:.0f}s)", flush=True)
    problems.append((f"Bayesian logistic regression, breast cancer (d = {model.dim}); reference: "
                     f"NUTS, 4 x {args.reference_draws} draws", model.logdensity_fn,
                     jnp.full(model.dim, 1.0), ref_flat.mean(0), ref_flat.var(0), ref_ess))

    for p_index, (title, logd, x0, ref_mean, ref_var, ref_e) in enumerate(problems):
        key = jax.random.fold_in(base, p_index)
        rows = []
        dim = x0.shape[0]

        tic = time.perf_counter()
        d, g, w = _nuts(jax.random.fold_in(key, 0), logd, x0, warmup, chains, draws_n // 5)
        rows.append(_summary("NUTS (window adaptation, diag)", d, g, w, ref_mean, ref_var, ref_e,
                             time.perf_counter() - tic, f"{draws_n // 5} draws/chain"))

        tic = time.perf_counter()
        d, g, w, h, acc = _mala(jax.random.fold_in(key, 1), logd, x0, warmup, chains, draws_n)
        rows.append(_summary("MALA (identity)", d, g, w, ref_mean, ref_var, ref_e,
                             time.perf_counter() - tic, f"step {h:.3g}, acceptance {acc:.2f}"))

        # whitened coordinates from the Laplace approximation: the same metric FORS's warmup uses
        mode = F.bb_descent(jax.grad(logd), x0, 200, 1e-3)[0]
        hess = -np.asarray(jax.hessian(logd)(mode))
        chol = np.linalg.cholesky(np.linalg.inv(0.5 * (hess + hess.T)))
        chol_j, mode_j = jnp.asarray(chol), jnp.asarray(mode)
        logd_w = lambda th: logd(mode_j + chol_j @ th)
        tic = time.perf_counter()
        d, g, w, h, acc = _mala(jax.random.fold_in(key, 2), logd_w, jnp.zeros(dim), warmup,
                                chains, draws_n)
        d = np.asarray(mode)[None, None, :] + np.einsum("ij,cnj->cni", chol, d)
        rows.append(_summary("MALA (Laplace-whitened)", d, g, w + 200 + dim, ref_mean, ref_var,
                             ref_e, time.perf_counter() - tic,
                             f"step {h:.3g}, acceptance {acc:.2f}"))

        for label, kw in [("FORS-proximal (identity, kappa 0)", dict(metric="identity")),
                          ("FORS-proximal (Hessian, kappa 0)", dict(metric="hessian",
                                                                  curvature=0.0)),
                          ("FORS-proximal (Hessian, kappa 1)", dict(metric="hessian",
                                                                  curvature=1.0))]:
            tic = time.perf_counter()
            d, g, w, params, rates = _fors(jax.random.fold_in(key, 3 + len(rows)), logd, x0,
                                           warmup, chains, draws_n, **kw)
            rows.append(_summary(label, d, g, w, ref_mean, ref_var, ref_e,
                                 time.perf_counter() - tic,
                                 f"step {params['step_size']:.3g}, clip rate "
                                 f"{rates['clip_rate']:.1e}, acceptance {rates['acceptance']:.3f}, "
                                 f"{rates['evals_per_step']:.2f} grads/step"))
        header = ["sampler", "min ESS", "median ESS", "sampling grads", "min ESS per 1000 grads",
                  "median ESS per 1000 grads", "warmup grads", "max abs z (means)", "notes"]
        table = [[r["name"], f"{r['ess_min']:.0f}", f"{r['ess_median']:.0f}", f"{r['grads']:.0f}",
                  f"{1000 * r['ess_min'] / r['grads']:.3f}",
                  f"{1000 * r['ess_median'] / r['grads']:.3f}", f"{r['warm']:.0f}",
                  f"{r['z']:.2f}", r["note"]] for r in rows]
        sections += [f"### {title}", "", markdown_table(header, table)]
        per_grad = {r["name"]: r["ess_min"] / r["grads"] for r in rows}
        best_fors = max((k for k in per_grad if k.startswith("FORS")), key=per_grad.get)
        sections += [
            f"Best FORS-proximal variant here: {best_fors}, min ESS per gradient "
            f"{per_grad[best_fors] / per_grad['MALA (identity)']:.3g} times MALA's (identity) and "
            f"{per_grad[best_fors] / per_grad['MALA (Laplace-whitened)']:.3g} times MALA's "
            "(Laplace-whitened). The paper's kernel (identity, kappa 0) reached "
            f"{per_grad['FORS-proximal (identity, kappa 0)'] / per_grad['MALA (identity)']:.3g} "
            "times MALA's (identity).", ""]
    intro = [
        "## FORS-proximal against MALA and NUTS", "",
        f"{chains} chains; MALA and FORS {draws_n} draws per chain after {warmup} warmup steps, NUTS "
        f"{draws_n // 5}. Starts: mean + 3 (Gaussian), beta = 1 (logistic). ESS: BlackJAX's "
        "multi-chain estimator per coordinate. Gradients: MALA one per step (value and gradient "
        "together), NUTS its integration steps, FORS the executed evaluations it counts (prox, "
        "proposal gradient and every estimator, rejected proposals included). Warmup gradients of "
        "the Laplace-whitened MALA include the 200 descent steps and d for the Hessian, as FORS's "
        "count does. max |z|: largest over coordinates of |mean - reference| / standard error (from "
        "the ESS, and the reference's own when it is a NUTS run). FORS 'identity, kappa 0' is the "
        "paper's kernel; 'Hessian' runs it in the metric M = (-hess log pi)^-1 at the mode found by "
        "the warmup's gradient descent; kappa 1 also uses M^-1 as the Hessian in the proposal.", ""]
    return "\n".join(intro + sections)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="diffusion,chains",
                        help="diffusion (and chains) -> docs/benchmarks/fors.md, proximal -> "
                             "fors_proximal.md")
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    parser.add_argument("--targets", default="two_modes_1d,eight_modes_2d")
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--lanes", default="0.25,0.125,0.0625,0.03125",
                        help="lane counts as fractions of the batch")
    parser.add_argument("--deltas", default="1e-1,1e-2,1e-3,1e-4")
    parser.add_argument("--delta-batch", type=int, default=10_000)
    parser.add_argument("--ddpm-nfe", default="100,300,1000,3000,10000")
    parser.add_argument("--dims", default="2,8,32,128,512,1024")
    parser.add_argument("--dim-batch", type=int, default=2000)
    parser.add_argument("--dim-ddpm-nfe", default="100,1000")
    parser.add_argument("--chain-warmup", type=int, default=1000)
    parser.add_argument("--chain-draws", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--reference-draws", type=int, default=2000)
    parser.add_argument("--cache", default=None, help="compilation cache folder (default: temp)")
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks")
    parser.add_argument("--out-diffusion", default=os.path.join(here, "fors.md"))
    parser.add_argument("--out-proximal", default=os.path.join(here, "fors_proximal.md"))
    args = parser.parse_args(argv)
    floats = lambda s: [float(v) for v in s.split(",") if v]
    ints = lambda s: [int(v) for v in s.split(",") if v]
    args.targets = [t for t in args.targets.split(",") if t]
    args.lane_fractions = floats(args.lanes)
    args.deltas = floats(args.deltas)
    args.ddpm_nfe = ints(args.ddpm_nfe)
    args.dims = ints(args.dims)
    args.dim_ddpm_nfe = ints(args.dim_ddpm_nfe)
    if args.quick:
        args.batch, args.groups, args.delta_batch, args.dim_batch = 2000, 4, 1000, 400
        args.lane_fractions, args.deltas, args.dims = [0.125], [1e-1, 1e-2], [2, 32]
        args.ddpm_nfe, args.dim_ddpm_nfe = [100, 1000], [100]
        args.chain_warmup, args.chain_draws = 200, 200
    use_compilation_cache(args.cache or tempfile.mkdtemp(prefix="fors-bench-cache-"))
    parts = args.parts.split(",")
    start = time.perf_counter()
    body = ""
    if "diffusion" in parts:
        body += run_diffusion(args)
    if "chains" in parts:
        body += "\n" + run_chains(args)
    if body:
        wall = time.perf_counter() - start
        write_report(args.out_diffusion, "FORS-diffusion at DDPM's price", body, wall_time=wall)
        print(f"wrote {args.out_diffusion} in {wall / 60:.1f} min")
    if "proximal" in parts:
        start = time.perf_counter()
        body = run_proximal(args)
        wall = time.perf_counter() - start
        write_report(args.out_proximal, "FORS-proximal: gradient-only MCMC against MALA and NUTS",
                     body, wall_time=wall)
        print(f"wrote {args.out_proximal} in {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
