"""Shared helpers of the diffusion benchmarks: exact-reference metrics and markdown output.

Every diffusion benchmark (baselines, RTK, FORS, Picard) scores its samples the same way:

    from common import evaluate, exact_floor, markdown_table, write_report   # scripts in benchmarks/

- :func:`evaluate` compares ``samples`` with a fresh exact sample of the same size from ``mixture``
  (drawn with ``rng_key``) and returns a dict of floats:
  ``energy_distance`` (V-statistic, :func:`scoresample.metrics.energy_distance`),
  ``sliced_w2`` (sliced 2-Wasserstein, 128 directions), ``mode_weight_error`` (total variation of the
  component frequencies) and ``num_nonfinite`` (rows dropped before scoring).
- :func:`exact_floor` is :func:`evaluate` applied to exact samples: what a perfect sampler scores at
  this sample size (the V-statistic energy distance of two exact samples of size n has mean
  2 E|X - X'| / n, not 0). Always print it beside the samplers' numbers.
- :func:`summarize` turns per-seed dicts into "mean ± sd" cells; :func:`markdown_table` and
  :func:`write_report` write docs/benchmarks/NAME.md with the command that produced it.

This interface is stable: add keys to the dicts, do not rename them.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import shlex
import sys
import time

import jax
import numpy as np
from scipy import stats

from scoresample import metrics

__all__ = ["METRICS", "evaluate", "exact_floor", "ks_to_exact", "summarize", "mean_sd", "frechet_distance",
           "markdown_table", "write_report", "command_line"]

# The keys of evaluate()'s dict, in display order, with a short label.
METRICS = {
    "energy_distance": "energy distance",
    "sliced_w2": "sliced W2",
    "mode_weight_error": "mode-weight error",
}


def evaluate(samples, mixture, rng_key, *, num_projections: int = 128) -> dict:
    """Score ``samples`` (n, d) against n fresh exact draws of ``mixture``.

    Args:
        samples: the sampler's output; non-finite rows are dropped and counted.
        mixture: a :class:`scoresample.targets.GaussianMixture` (exact ``sample`` and ``assign``).
        rng_key: key for the exact reference sample and the sliced-Wasserstein directions.

    Returns:
        dict with ``energy_distance``, ``sliced_w2``, ``mode_weight_error``, ``component_kl``
        (floats) and ``num_nonfinite`` (int).
    """
    samples = np.asarray(samples, dtype=np.float64)
    finite = np.all(np.isfinite(samples), axis=1)
    kept = samples[finite]
    key_ref, key_sw = jax.random.split(rng_key)
    reference = np.asarray(mixture.sample(key_ref, max(1, samples.shape[0])))
    if kept.shape[0] < 2:
        nan = float("nan")
        return dict(energy_distance=nan, sliced_w2=nan, mode_weight_error=nan, component_kl=nan,
                    num_nonfinite=int((~finite).sum()))
    return dict(
        energy_distance=metrics.energy_distance(kept, reference),
        sliced_w2=metrics.sliced_wasserstein(key_sw, kept, reference, num_projections),
        mode_weight_error=metrics.mode_weight_error(kept, mixture),
        component_kl=metrics.component_kl(kept, mixture),
        num_nonfinite=int((~finite).sum()),
    )


def ks_to_exact(samples, mixture, t):
    """Kolmogorov-Smirnov distance between 1-D samples and the exact CDF of p_t, and its p-value."""
    a, s2 = math.exp(-t), -math.expm1(-2 * t)
    w = np.asarray(mixture.weights)
    mu = a * np.asarray(mixture.means)[:, 0]
    sd = np.sqrt(a**2 * np.asarray(mixture.covs)[:, 0, 0] + s2)
    cdf = lambda x: np.sum(w[:, None] * stats.norm.cdf((x[None, :] - mu[:, None]) / sd[:, None]), 0)
    res = stats.kstest(np.asarray(samples)[:, 0], cdf)
    return float(res.statistic), float(res.pvalue)


def exact_floor(mixture, num_samples: int, rng_key) -> dict:
    """:func:`evaluate` of ``num_samples`` exact draws: the score of a perfect sampler."""
    key_draw, key_eval = jax.random.split(rng_key)
    return evaluate(mixture.sample(key_draw, num_samples), mixture, key_eval)


def run_cell(key, method: str, mixture, nfe: int, num_samples: int, seeds: int, run_method):
    """One table cell: ``run_method(key, method, mixture, nfe, num_samples * seeds)`` timed, its
    samples cut into ``seeds`` groups of ``num_samples`` and each group scored by :func:`evaluate`.

    Returns ``(result, per_seed, wall_seconds)``.
    """
    tic = time.perf_counter()
    res = run_method(key, method, mixture, nfe, num_samples * seeds)
    samples = np.asarray(res.samples)
    wall = time.perf_counter() - tic
    per_seed = [evaluate(samples[s * num_samples:(s + 1) * num_samples], mixture,
                         jax.random.fold_in(jax.random.fold_in(key, 7), s))
                for s in range(seeds)]
    return res, per_seed, wall


def mean_sd(values, fmt: str = "{:.4f}") -> str:
    """'mean ± sd' of ``values`` (just the value when there is one)."""
    vals = np.asarray(values, dtype=np.float64)
    if vals.size == 1:
        return fmt.format(vals[0])
    return f"{fmt.format(vals.mean())} ± {fmt.format(vals.std(ddof=1))}"


def summarize(per_seed: list[dict], key: str, fmt: str = "{:.4f}") -> str:
    """'mean ± sd' over seeds of ``key`` (just the value for one seed)."""
    return mean_sd([d[key] for d in per_seed], fmt)


def frechet_distance(x, y) -> float:
    """FID's formula on two feature samples (n, k) and (m, k): the Frechet (2-Wasserstein) distance
    between the Gaussians with their means and covariances,
    |mu_x - mu_y|^2 + tr(C_x + C_y - 2 (C_x C_y)^(1/2)). It has a finite-sample bias of order
    1/n: compare values computed from samples of the same sizes."""
    import scipy.linalg

    x, y = (np.asarray(v, dtype=np.float64) for v in (x, y))
    diff = x.mean(0) - y.mean(0)
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(cx @ cy)
    return float(diff @ diff + np.trace(cx + cy - 2.0 * np.real(root)))


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; cells are converted with str()."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |",
             "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def command_line() -> str:
    """The command that is running, relative to the repository root when possible."""
    argv = list(sys.argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if argv and os.path.isabs(argv[0]) and argv[0].startswith(root):
        argv[0] = os.path.relpath(argv[0], root)
    return "python " + " ".join(shlex.quote(a) for a in argv)


def write_report(path: str, title: str, body: str, *, command: str | None = None,
                 wall_time: float | None = None) -> None:
    """Write ``body`` under a header that records the command, date, machine and wall time."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    header = [f"# {title}", "",
              f"Produced by `{command or command_line()}` on {datetime.date.today().isoformat()} "
              f"({platform.machine()}, {os.cpu_count()} CPU cores, JAX {jax.__version__}, "
              f"{jax.default_backend()} backend"
              + (f", {wall_time / 60:.1f} min wall" if wall_time is not None else "") + ").", ""]
    with open(path, "w") as fh:
        fh.write("\n".join(header) + "\n" + body.rstrip() + "\n")
