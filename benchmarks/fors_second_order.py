"""Research: does a second-order proposal make FORS-diffusion cheaper? (issue 14, item 4)

Standalone: reimplements the FORS-diffusion step with a general Gaussian proposal N(z + Delta, S)
(z = x_{k+1} / alpha) and runs the library's rejection primitive (fors_rejection, chunk 1 = pure
early rejection) under vmap. Every step of every variant targets the exact reverse kernel

    p(x_k | x_{k+1}) ~ p_{t_k}(y) N(y; z, eta),

so grad log(target / proposal)(y) = score_k(y) + Q e - Delta / eta, with e = y - z - Delta and
Q = S^{-1} - I / eta (written in offset form as the library does). Coins: the three-point path of
the library (e has law N(0, S) along the path).

Variants (extra score calls per step in brackets):
  tweedie   [0]  the library's: Delta = alpha eta s+, S = eta_bar I (point-mass covariance)
  refined   [1]  Tweedie mean refined by one score call at the Tweedie mean at t_k (Laplace-type
                 anchor: the linearisation of score_k about x_bar uses score_k(x_bar) instead of
                 alpha s+), S = eta_bar I
  midpoint  [1]  DPM-Solver-2 style: Tweedie half step to t_mid (rho_mid = sqrt(rho_k rho_k+1)),
                 score at the midpoint mean, Tweedie from there to t_k; S = eta_bar I
  hess_iso  [1]  Tweedie mean, isotropic second-order Tweedie covariance
                 S = eta (1 + alpha^2 eta h) I, h = v^T H v / v^T v from ONE Hessian-vector
                 product of log p_{t_k+1} at x_{k+1} (v Rademacher; counted as one call)
  hessian   [d]  Tweedie mean, full second-order Tweedie covariance
                 S = Cov[x_k | x_k+1] = eta (I + alpha^2 eta H_{k+1}(x_{k+1})) (d JVPs, counted
                 as d calls; exact for exact scores)

Writes one json of per-grid results (``--out``) and prints a line per grid. The sweep behind
the table in docs/algorithms/fors.md ("Cheaper proposals"): for each target in two_modes_1d,
eight_modes_2d, lumpy_1d and subspace_mixture4/8/16, ``--variants all --growths 1,2,4,8,16`` on
``--grid geometric`` and ``--grid adaptive``, batch 2,000 (1,000 for subspace_mixture); a
grid's accuracy is checked on a second run with ``--batch 10000``. About 40 min in all on two cores.

    python benchmarks/fors_second_order.py --target eight_modes_2d --variants tweedie,hessian \
        --growths 8 --grid adaptive --batch 2000 --out second_order.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import ks_to_exact  # noqa: E402

from scoresample import metrics, targets  # noqa: E402
from scoresample.kernels.fors.diffusion import three_point_path  # noqa: E402
from scoresample.kernels.fors.grid import density_from_pilot, fors_schedule  # noqa: E402
from scoresample.kernels.fors.rejection import fors_rejection  # noqa: E402

VARIANTS = ("tweedie", "refined", "midpoint", "hess_iso", "hessian", "hessian_fd32")
DELTA = 1e-2
CLIP = 1.0


def extra_calls(variant, dim):
    return {"tweedie": 0, "refined": 1, "midpoint": 1, "hess_iso": 1, "hessian": dim,
            "hessian_fd32": dim}[variant]


def coefficients(sched):
    """Per step: t_from, t_to, alpha, eta, s2, eta_bar, and the midpoint's t_mid, a1, eta1, a2,
    eta2 (float64 numpy, shape (K, 11))."""
    t_from, t_to = np.asarray(sched.t_from), np.asarray(sched.t_to)
    lr_from = np.log(np.expm1(2 * t_from))
    lr_to = np.log(np.expm1(2 * t_to))
    t_mid = 0.5 * np.log1p(np.exp(0.5 * (lr_from + lr_to)))
    a1, eta1 = np.exp(-(t_from - t_mid)), np.expm1(2 * (t_from - t_mid))
    a2, eta2 = np.exp(-(t_mid - t_to)), np.expm1(2 * (t_mid - t_to))
    return np.stack([t_from, t_to, sched.alpha, sched.eta, sched.s2, sched.eta_bar,
                     t_mid, a1, eta1, a2, eta2], axis=1)


def make_step(mix, variant, dim, clip=CLIP):
    score = mix.score

    def step(key, x, co):
        t_from, t_to, alpha, eta, s2, eta_bar, t_mid, a1, eta1, a2, eta2 = (co[i] for i in range(11))
        key_prop, key_rej = jax.random.split(key)
        sp = score(x, t_from)
        z = x / alpha
        d_tw = alpha * eta * sp
        eye = jnp.eye(dim, dtype=x.dtype)
        # defaults: Tweedie mean, point-mass covariance (eigenbasis I, eigenvalues eta_bar, Q 1/s2)
        delta, basis = d_tw, eye
        sig = jnp.full((dim,), eta_bar)
        q = jnp.full((dim,), 1.0 / s2)
        if variant == "refined":
            g = score(z + d_tw, t_to)
            delta = eta_bar * (d_tw / s2 + g)
        elif variant == "midpoint":
            x_mid = x / a1 + a1 * eta1 * sp
            g = score(x_mid, t_mid)
            delta = a1 * eta1 * sp / a2 + a2 * eta2 * g
        elif variant in ("hess_iso", "hessian", "hessian_fd32"):
            if variant == "hessian_fd32":
                # d one-sided differences of plain score calls in float32 (a float32 network's
                # precision): each is an ordinary score unit, eps = 3e-3 s_{t_k+1}
                eps = 3e-3 * jnp.sqrt(-jnp.expm1(-2.0 * t_from))
                x32, t32 = x.astype(jnp.float32), t_from.astype(jnp.float32)
                s32 = score(x32, t32)
                cols = jax.vmap(lambda v: score(x32 + (eps * v).astype(jnp.float32), t32))(
                    jnp.eye(dim, dtype=jnp.float32))
                hess = ((cols - s32[None, :]).astype(x.dtype) / eps).T
                hess = 0.5 * (hess + hess.T)
                h, basis = jnp.linalg.eigh(hess)
            elif variant == "hessian":
                hess = jax.jacfwd(lambda y: score(y, t_from))(x)
                hess = 0.5 * (hess + hess.T)
                h, basis = jnp.linalg.eigh(hess)
            else:
                v = jax.random.rademacher(key_prop, (dim,), dtype=x.dtype)
                _, hv = jax.jvp(lambda y: score(y, t_from), (x,), (v,))
                h = jnp.full((dim,), jnp.dot(v, hv) / jnp.dot(v, v))
            c = jnp.maximum(1.0 + alpha**2 * eta * h, 1e-8)  # S = eta c (exactly >= 0)
            sig = eta * c
            q = (1.0 - c) / (eta * c)  # S^{-1} - 1/eta
        root = jnp.sqrt(sig)

        def to_space(coords):
            return basis @ coords

        def propose(k):
            return to_space(root * jax.random.normal(k, (dim,), x.dtype))

        def estimate(k, u):
            kr, kw, kz = jax.random.split(k, 3)
            r = jax.random.uniform(kr, (), x.dtype)
            a, b, a_dot, b_dot = three_point_path(r)
            w = to_space(root * math.sqrt(0.5) * jax.random.normal(kw, (dim,), x.dtype))
            zz = to_space(root * math.sqrt(0.5) * jax.random.normal(kz, (dim,), x.dtype))
            e = a * u + (1.0 - a) * w + b * zz
            e_dot = a_dot * (u - w) + b_dot * zz
            grad = score(z + delta + e, t_to) + basis @ (q * (basis.T @ e)) - delta / eta
            return jnp.sum(e_dot * grad)

        ok = jnp.all(jnp.isfinite(delta)) & jnp.all(jnp.isfinite(sig))
        res = fors_rejection(key_rej, propose, estimate, clip, is_active=ok)
        x_new = jnp.where(ok, z + delta + res.candidate, x)
        calls = 1 + extra_calls(variant, dim) + res.num_evals
        return x_new, dict(calls=calls, coins=res.num_coins, clipped=res.num_clipped,
                           sum_sq=res.sum_sq, proposals=res.num_proposals,
                           overflow=res.is_overflow, divergent=res.is_divergent | ~ok)

    return jax.jit(jax.vmap(step, in_axes=(0, 0, None)))


def run_chain(mix, variant, sched, batch, seed, clip=CLIP):
    dim = mix.dim
    step = make_step(mix, variant, dim, clip)
    co = coefficients(sched)
    key = jax.random.key(seed)
    x = jax.random.normal(jax.random.fold_in(key, 10**6), (batch, dim))
    rows = []
    for k in range(co.shape[0]):
        keys = jax.random.split(jax.random.fold_in(key, k), batch)
        x, info = step(keys, x, jnp.asarray(co[k]))
        rows.append({n: np.asarray(v) for n, v in info.items()})
    per = {n: np.stack([r[n] for r in rows]) for n in rows[0]}  # (K, batch)
    return np.asarray(x), per


def summarise(per, sched, batch):
    coins = per["coins"].sum(1).astype(float)
    clipped = per["clipped"].sum(1).astype(float)
    sum_sq = per["sum_sq"].sum(1)
    steps = per["calls"].shape[0]
    calls = per["calls"].sum() / batch
    return dict(
        steps=steps,
        calls_per_sample=float(calls),
        calls_per_step=float(calls / steps),
        coins_per_step=float(coins.sum() / batch / steps),
        proposals_per_step=float(per["proposals"].sum() / batch / steps),
        clip_rate=float(clipped.sum() / max(coins.sum(), 1.0)),
        rms_w=float(math.sqrt(sum_sq.sum() / max(coins.sum(), 1.0))),
        max_step_clip=float(np.max(clipped / np.maximum(coins, 1.0))),
        overflow=int(per["overflow"].sum()), divergent_samples=int(per["divergent"].any(0).sum()),
        step_rms=np.sqrt(sum_sq / np.maximum(coins, 1.0)).tolist(),
        step_clip=(clipped / np.maximum(coins, 1.0)).tolist(),
        step_calls=(per["calls"].sum(1) / batch).tolist(),
        step_log_rho_mid=(0.5 * (np.log(np.expm1(2 * np.asarray(sched.t_from)))
                                 + np.log(np.expm1(2 * np.asarray(sched.t_to))))).tolist(),
    )


def accuracy(x, mix, t_min, seed):
    key = jax.random.key(seed + 777)
    ref = np.asarray(mix.sample(key, x.shape[0], t=t_min))
    ref2 = np.asarray(mix.sample(jax.random.fold_in(key, 1), x.shape[0], t=t_min))
    out = dict(energy=float(metrics.energy_distance(x, ref)),
               energy_floor=float(metrics.energy_distance(ref2, ref)),
               mode_err=float(metrics.mode_weight_error(x, mix)))
    if mix.dim == 1:
        out["ks_p"] = ks_to_exact(x, mix, t_min)[1]
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", default="two_modes_1d")
    p.add_argument("--variants", default="all")
    p.add_argument("--growths", default="1,2,4,8,16")
    p.add_argument("--grid", default="geometric", choices=("geometric", "adaptive"))
    p.add_argument("--pilot-growth", type=float, default=4.0)
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip", type=float, default=CLIP)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if args.target.startswith("subspace_mixture"):  # e.g. subspace_mixture16: d = 16, intrinsic 2
        mix = targets.subspace_mixture(dim=int(args.target[len("subspace_mixture"):]))
    elif args.target == "lumpy_1d":  # smooth, non-Gaussian: 13 overlapping components
        means = np.linspace(-3.0, 3.0, 13)
        w = np.exp(-np.abs(means - 0.5))
        mix = targets.GaussianMixture(w / w.sum(), means[:, None], np.full((13, 1, 1), 0.16))
    else:
        mix = getattr(targets, args.target)()
    variants = VARIANTS if args.variants == "all" else tuple(args.variants.split(","))
    growths = [float(g) for g in args.growths.split(",")]
    m2 = mix.second_moment()
    results = []
    for variant in variants:
        density = None
        if args.grid == "adaptive":  # the variant's own pilot: geometric G0, its RMS -> density
            pil = fors_schedule(DELTA, mix.dim, second_moment=m2, growth=args.pilot_growth,
                                grid="geometric")
            _, per = run_chain(mix, variant, pil, min(args.batch, 1000), args.seed + 99, args.clip)
            s = summarise(per, pil, min(args.batch, 1000))
            lr = np.asarray(s["step_log_rho_mid"])[::-1]
            density = density_from_pilot(lr, np.asarray(s["step_rms"])[::-1])
        for g in growths:
            sched = fors_schedule(DELTA, mix.dim, second_moment=m2, growth=g, grid=args.grid,
                                  density=density)
            tic = time.perf_counter()
            x, per = run_chain(mix, variant, sched, args.batch, args.seed, args.clip)
            s = summarise(per, sched, args.batch)
            s.update(accuracy(x, mix, sched.t_min, args.seed))
            s.update(variant=variant, growth=g, clip=args.clip, target=args.target, grid=args.grid,
                     batch=args.batch, wall=time.perf_counter() - tic)
            results.append(s)
            print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v)
                              for k, v in s.items() if not k.startswith("step_")}), flush=True)
            with open(args.out, "w") as f:
                json.dump(results, f)


if __name__ == "__main__":
    main()
