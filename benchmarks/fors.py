"""FORS benchmarks: the cost of FORS-diffusion against the accuracy delta, and FORS-proximal against MALA.

Part "diffusion": FORS-diffusion on ``targets.two_modes_1d()`` with exact scores, for several target
accuracies delta and two schedule constants C (G = C (d* + log(K/delta)) log(K/delta)), against DDPM
(Li-Yan coefficients) at several budgets. Samples are scored by ``benchmarks/common.py:evaluate``
against exact draws (energy distance, sliced W2, mode-weight error), beside the exact-versus-exact
floor, and by the Kolmogorov-Smirnov distance to the exact CDF of p_{t_out} (1-D, so the exact CDF is
available; its floor is about 0.87 / sqrt(n)). Evaluations per sample (nfe) are those the vmapped batch
executed (DiffusionResult.nfe), beside what one particle needed alone (nfe_needed); rounds are
sequential rounds of batched evaluation for the whole batch.

Part "proximal": FORS-proximal against MALA (blackjax.mala, step tuned by dual averaging to
acceptance 0.574) and NUTS (blackjax window adaptation) on a correlated Gaussian (d = 20, exact
moments) and on the Bayesian logistic regression of ``scoresample.models.breast_cancer_logistic``:
effective sample size (BlackJAX's multi-chain ESS, min and median over coordinates) per gradient
evaluation of the sampling phase, warmup gradients listed apart, and the largest |z| of the
posterior means against the truth (or a long NUTS run).

    python benchmarks/fors.py --parts diffusion   # about 12 min here, writes docs/benchmarks/fors.md
    python benchmarks/fors.py --parts proximal    # about 8 min, writes docs/benchmarks/fors_proximal.md
    python benchmarks/fors.py --parts diffusion --fors-small 1e-1,1e-2 --fors-large 1e-1 \
        --ddpm-nfe 10,100 --accuracy-samples 1000 --out-diffusion /tmp/fors.md   # a quick check
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import blackjax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import evaluate, markdown_table, write_report  # noqa: E402
from scipy import stats  # noqa: E402

import scoresample  # noqa: E402
from scoresample import diffusion, targets  # noqa: E402
from scoresample.adaptation import dual_averaging_warmup  # noqa: E402
from scoresample.kernels import fors as F  # noqa: E402
from scoresample.models import breast_cancer_logistic  # noqa: E402


# =============================================================================================
# Part 1: FORS-diffusion against DDPM on a 1-D two-mode mixture
# =============================================================================================

def ks_to_exact(samples, mixture, t, *, with_pvalue=False):
    """Kolmogorov-Smirnov distance between 1-D samples and the exact CDF of p_t (and its p-value)."""
    a, s2 = math.exp(-t), -math.expm1(-2 * t)
    w = np.asarray(mixture.weights)
    mu = a * np.asarray(mixture.means)[:, 0]
    sd = np.sqrt(a**2 * np.asarray(mixture.covs)[:, 0, 0] + s2)
    cdf = lambda x: np.sum(w[:, None] * stats.norm.cdf((x[None, :] - mu[:, None]) / sd[:, None]), 0)
    res = stats.kstest(np.asarray(samples)[:, 0], cdf)
    return (float(res.statistic), float(res.pvalue)) if with_pvalue else float(res.statistic)


def run_reduced(rng_key, method, mixture, num_samples, **options):
    """``diffusion.sample`` (whose info is reduced over particles, so memory stays O(steps)) and
    FORS's pooled rates. ``res.nfe`` counts what the vmapped batch executed per sample (every step
    costs every particle the slowest particle's evaluations); ``res.nfe_needed`` what a particle's
    own loop needed (what it would cost run alone)."""
    res = diffusion.sample(rng_key, method, mixture.score, dim=mixture.dim,
                           num_samples=num_samples, **options)
    rates = F.pooled_rates(res.info) if hasattr(res.info, "num_proposals") else {}
    return res, rates


def run_diffusion(args):
    mix = targets.two_modes_1d()
    m2 = mix.second_moment()
    base = jax.random.key(20260301)

    # ---- cost against delta (few samples: the counts barely vary between particles) ----------
    n_cost = args.num_samples
    cost_rows = []
    for c_index, (constant, deltas) in enumerate(args.fors_grid):
        for delta in deltas:
            key = jax.random.fold_in(jax.random.fold_in(base, 100 + c_index),
                                     int(round(-math.log10(delta))))
            sched = F.fors_schedule(delta, 1, second_moment=m2, constant=constant)
            res, rates = run_reduced(key, "fors", mix, n_cost, delta=delta, second_moment=m2,
                                     constant=constant)
            row = dict(constant=constant, delta=delta, steps=sched.num_steps, growth=sched.growth,
                       nfe=res.nfe, needed=res.nfe_needed, rounds=res.rounds,
                       wall=res.settings["wall_time"],
                       ks=ks_to_exact(res.samples, mix, sched.t_min),
                       divergent=int(np.sum(res.is_divergent)), **rates)
            cost_rows.append(row)
            print(f"cost C={constant} delta={delta:g}: steps {row['steps']} nfe {row['nfe']:.1f} "
                  f"needed {row['needed']:.1f} "
                  f"rounds {row['rounds']} clip {row['clip_rate']:.2e} acc "
                  f"{row['acceptance']:.4f} KS {row['ks']:.3f} ({row['wall']:.0f}s)", flush=True)

    # ---- accuracy at a fixed, larger sample size: DDPM budgets and FORS deltas ----------------
    n_acc = args.accuracy_samples
    acc_rows = []

    def accuracy(name, res, key, t_out):
        x = np.asarray(res.samples)
        ev = evaluate(x, mix, key)
        ks, pvalue = ks_to_exact(x, mix, t_out, with_pvalue=True)
        row = [name, f"{res.nfe:.0f}", f"{res.nfe_needed:.0f}", f"{ev['energy_distance']:.5f}",
               f"{ev['mode_weight_error']:.4f}", f"{float(np.mean(x[:, 0] < 0)) - 0.3:+.4f}",
               f"{ks:.4f}", f"{pvalue:.2g}", f"{res.settings['wall_time']:.0f}"]
        acc_rows.append(row)
        print("accuracy", row, flush=True)

    for nfe in args.ddpm_nfe:
        key = jax.random.fold_in(jax.random.fold_in(base, 200), nfe)
        res, _ = run_reduced(key, "ddpm", mix, n_acc, nfe=nfe)
        accuracy(f"ddpm nfe={nfe}", res, jax.random.fold_in(key, 7),
                 float(res.settings.get("t_min", 0.0)))
    for delta in args.fors_accuracy:
        key = jax.random.fold_in(jax.random.fold_in(base, 300), int(round(-math.log10(delta))))
        res, rates = run_reduced(key, "fors", mix, n_acc, delta=delta, second_moment=m2,
                                 constant=0.1)
        accuracy(f"fors C=0.1 delta={delta:g} (clip rate {rates['clip_rate']:.1e})", res,
                 jax.random.fold_in(key, 7), float(res.settings["t_min"]))
    key_floor = jax.random.fold_in(base, 400)
    ref = np.asarray(mix.sample(key_floor, n_acc))
    ev = evaluate(ref, mix, jax.random.fold_in(key_floor, 1))
    ks, pvalue = ks_to_exact(ref, mix, 0.0, with_pvalue=True)
    acc_rows.append(["exact draws", "", "", f"{ev['energy_distance']:.5f}",
                     f"{ev['mode_weight_error']:.4f}", f"{float(np.mean(ref[:, 0] < 0)) - 0.3:+.4f}",
                     f"{ks:.4f}", f"{pvalue:.2g}", ""])

    # ---- growth of the cost: nfe against log(1/delta) -----------------------------------------
    summary = []
    for constant, _ in args.fors_grid:
        sel = [r for r in cost_rows if r["constant"] == constant]
        if len(sel) < 2:
            continue
        log_log = np.log(np.log(1 / np.array([r["delta"] for r in sel])))
        for field, label in (("nfe", "executed in the batch"), ("needed", "needed per particle")):
            p = np.polyfit(log_log, np.log(np.array([r[field] for r in sel])), 1)[0]
            per_decade = [sel[i + 1][field] / sel[i][field] for i in range(len(sel) - 1)]
            deltas = ", ".join(f"{r['delta']:g}" for r in sel)
            costs = ", ".join(f"{r[field]:.0f}" for r in sel)
            factors = ", ".join(f"{q:.2f}" for q in per_decade)
            summary.append(
                f"- C = {constant}, {label}: delta = {deltas} cost {costs} evaluations per sample; "
                f"each tenfold decrease of delta multiplied it by {factors} (a fit "
                f"nfe ~ log(1/delta)^p gives p = {p:.2f}). A cost proportional to delta^-2 would "
                "grow 100-fold per decade.")

    cost_table = markdown_table(
        ["C", "delta", "G", "steps", "nfe / sample (executed)", "needed / particle", "rounds",
         "clip rate", "acceptance",
         "overflow", f"KS to exact (n = {n_cost})", "wall s"],
        [[r["constant"], f"{r['delta']:g}", f"{r['growth']:.1f}", r["steps"], f"{r['nfe']:.0f}",
          f"{r['needed']:.0f}", r["rounds"], f"{r['clip_rate']:.1e}", f"{r['acceptance']:.4f}",
          f"{r['overflow_rate']:.0e}", f"{r['ks']:.3f}", f"{r['wall']:.0f}"] for r in cost_rows])
    acc_table = markdown_table(
        ["sampler", "nfe / sample (executed)", "needed / particle", "energy distance",
         "mode-weight error",
         "left-mode weight - 0.3", "KS to exact", "KS p-value", "wall s"], acc_rows)
    lines = [
        "## FORS-diffusion on `targets.two_modes_1d()` with exact scores", "",
        "Weights 0.3 and 0.7, means -2 and 2, sd 0.5. FORS: second_moment = "
        f"{m2:.2f} (t_max = 0.5 log((d + m2)/delta^2), s_{{t_min}}^2 = delta^2/(d + m2)), clip B = 1, "
        "chunk_size = 1 (pure early rejection), G = C (d + log(K/delta)) log(K/delta). nfe "
        "(executed) = score evaluations the vmapped batch ran per sample: the particles run in "
        "lockstep, so each step costs every particle what its slowest particle needed (rejected "
        "proposals and masked work included; `DiffusionResult.nfe`); needed / particle = what a "
        "particle's own loop needed, i.e. its cost run alone (`DiffusionResult.nfe_needed`). The "
        "gap grows with the batch size (the maximum of more particles' proposal counts). rounds = "
        "sum over steps of the largest per-particle number of sequential rounds (the batch's "
        "sequential depth); clip rate and acceptance pooled as "
        "ratios of sums. KS to exact: Kolmogorov-Smirnov distance to the exact CDF of the law at "
        "the sampler's output time, floor about 0.87 / sqrt(n).", "",
        f"### Cost against the target accuracy delta ({n_cost} samples per run)", "",
        cost_table, *summary, "",
        f"### Accuracy at n = {n_acc} samples, against DDPM", "",
        "Each row one run of n samples scored against n fresh exact draws "
        "(`common.evaluate`: V-statistic energy distance, mode-weight error) and against the exact "
        f"CDF; 'exact draws' is what a perfect sampler scores (the standard error of the left-mode "
        f"weight is {math.sqrt(0.21 / n_acc):.4f}, the KS floor about "
        f"{0.87 / math.sqrt(n_acc):.4f}; a KS p-value below about 1e-3 is a detected error). DDPM: "
        "Li-Yan coefficients on its default schedule.", "",
        acc_table]
    return "\n".join(lines) + "\n"


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
        mode = F._bb_descent(jax.grad(logd), x0, 200, 1e-3)[0]
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
    parser.add_argument("--parts", default="diffusion,proximal",
                        help="diffusion -> docs/benchmarks/fors.md, proximal -> fors_proximal.md")
    parser.add_argument("--num-samples", type=int, default=200, help="samples per cost run")
    parser.add_argument("--accuracy-samples", type=int, default=5000)
    parser.add_argument("--fors-accuracy", default="1e-1,1e-2",
                        help="deltas (C = 0.1) of the accuracy table")
    parser.add_argument("--fors-small", default="1e-1,1e-2,1e-3,1e-4",
                        help="deltas for C = 0.1")
    parser.add_argument("--fors-large", default="1e-1,1e-2,1e-3", help="deltas for C = 0.55")
    parser.add_argument("--ddpm-nfe", default="10,30,100,300,1000,3000")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--reference-draws", type=int, default=2000)
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks")
    parser.add_argument("--out-diffusion", default=os.path.join(here, "fors.md"))
    parser.add_argument("--out-proximal", default=os.path.join(here, "fors_proximal.md"))
    args = parser.parse_args(argv)
    floats = lambda s: [float(v) for v in s.split(",") if v]
    args.fors_grid = [(0.1, floats(args.fors_small)), (0.55, floats(args.fors_large))]
    args.fors_accuracy = floats(args.fors_accuracy)
    args.ddpm_nfe = [int(v) for v in args.ddpm_nfe.split(",") if v]
    parts = args.parts.split(",")
    if "diffusion" in parts:
        start = time.perf_counter()
        body = run_diffusion(args)
        wall = time.perf_counter() - start
        write_report(args.out_diffusion, "FORS-diffusion: cost against accuracy", body,
                     wall_time=wall)
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
