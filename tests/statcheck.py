"""Statistical checks of iid draws against an exact law, shared by the exactness tests.

One rule for every sampler. Given ``n`` independent draws ``x`` and the exact law (a Gaussian or a
Gaussian mixture, closed form), :func:`check` computes statistics whose law under the exact law is
known at that ``n``, so every tolerance comes from the exact law and ``n``, never from the sampler's
own output (its ESS, its spread):

- **binned chi-square**: for each of a few directions ``a`` (the coordinate axes and the whitening
  axes of the law), the exact CDF ``F_a`` of ``a^T X`` splits the line into ``num_bins`` bins of equal
  mass; Pearson's statistic of the counts is chi-square with ``num_bins - 1`` degrees of freedom.
  For a Gaussian the whitened radius ``(x - m)^T Sigma^-1 (x - m)`` (chi-square with d degrees of
  freedom) is binned the same way: it sees the spread in every direction at once;
- **moments** (each a mean of a function ``h`` of one draw, ``z = (mean h - E h) / sqrt(Var h / n)``
  with ``E h`` and ``Var h`` from the exact law):

  - Gaussian: the whitened mean ``y = L^-1 (x - m)`` (each coordinate), every entry of the whitened
    second-moment matrix ``y y^T`` (all covariance entries, not only the variances) and the whitened
    second moment ``|y|^2`` against d;
  - mixture: the weights through the exact responsibilities (``E gamma_k(X) = w_k``), and per
    component the within-mode mean and second moment through ``E[gamma_k(X) y_k] = 0`` and
    ``E[gamma_k(X) |y_k|^2] = w_k d``, ``y_k`` whitened by component k (within-mode variances).
    The variances of these functions come from 400,000 exact draws (a fixed seed);

- the whole check fails when any statistic exceeds its Bonferroni threshold, so the check falsely
  fails a correct sampler with probability at most ``alpha`` (1e-3 by default; the z-statistics
  use the normal approximation, accurate at the sizes used here, n >= 1000).

:func:`rejection_rate` simulates the rule on exact draws of any law: on a deliberately wrong law it
is the power a test states in its docstring, on the right law the false-failure rate.

:class:`CallCounter` counts the evaluations a compiled program really executes (a host callback),
for tests that check a sampler's reported gradient counts.
"""

from __future__ import annotations

import dataclasses
import math
import threading

import jax
import numpy as np
from scipy import special, stats

__all__ = ["GaussianLaw", "MixtureLaw", "Verdict", "check", "rejection_rate", "CallCounter",
           "ou_marginal", "wrong_laws", "assert_exact_and_controls"]

ALPHA = 1e-3
REFERENCE_DRAWS = 400_000


# ----- exact laws ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class MixtureLaw:
    """sum_k w_k N(mu_k, S_k) in R^d, numpy float64 (a Gaussian is the one-component case)."""

    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, d)
    covs: np.ndarray  # (K, d, d)

    def __post_init__(self):
        w = np.asarray(self.weights, np.float64)
        object.__setattr__(self, "weights", w / w.sum())
        object.__setattr__(self, "means", np.atleast_2d(np.asarray(self.means, np.float64)))
        covs = np.asarray(self.covs, np.float64)
        object.__setattr__(self, "covs", covs.reshape(len(w), self.means.shape[1], -1))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return len(self.weights)

    @property
    def mean(self) -> np.ndarray:
        return self.weights @ self.means

    @property
    def cov(self) -> np.ndarray:
        centred = self.means - self.mean
        return (np.einsum("k,kij->ij", self.weights, self.covs)
                + np.einsum("k,ki,kj->ij", self.weights, centred, centred))

    def _chols(self):
        return np.linalg.cholesky(self.covs)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        comp = rng.choice(self.num_components, size=n, p=self.weights)
        z = rng.standard_normal((n, self.dim))
        return self.means[comp] + np.einsum("nij,nj->ni", self._chols()[comp], z)

    def whiten(self, x: np.ndarray, k: int) -> np.ndarray:
        """``L_k^-1 (x - mu_k)`` with ``S_k = L_k L_k^T``: standard normal under component k."""
        chol = self._chols()[k]
        return np.linalg.solve(chol, (np.asarray(x) - self.means[k]).T).T

    def responsibilities(self, x: np.ndarray) -> np.ndarray:
        """Exact p(component k | x), shape (n, K), through log-sum-exp."""
        logs = []
        for k in range(self.num_components):
            y = self.whiten(x, k)
            logdet = np.sum(np.log(np.diag(self._chols()[k])))
            logs.append(np.log(self.weights[k]) - 0.5 * np.sum(y**2, axis=1) - logdet)
        logs = np.stack(logs, axis=1)
        return np.exp(logs - special.logsumexp(logs, axis=1, keepdims=True))

    def projection_cdf(self, values: np.ndarray, direction: np.ndarray) -> np.ndarray:
        """Exact CDF of ``direction^T X`` at ``values``."""
        loc = self.means @ direction
        scale = np.sqrt(np.einsum("i,kij,j->k", direction, self.covs, direction))
        return np.sum(self.weights * stats.norm.cdf((np.asarray(values)[:, None] - loc) / scale),
                      axis=1)

    # ----- deliberately wrong laws, for negative controls
    def with_weights_shifted(self, delta: float = 0.03) -> MixtureLaw:
        """Moves ``delta`` of mass from the heaviest component to the lightest (``delta < 0``:
        ``|delta|`` from the lightest to the heaviest)."""
        w = self.weights.copy()
        w[np.argmax(w)] -= delta
        w[np.argmin(w)] += delta
        return MixtureLaw(w, self.means, self.covs)

    def with_scale(self, factor: float) -> MixtureLaw:
        """Every component's spread (sd) multiplied by ``factor`` about its own mean."""
        return MixtureLaw(self.weights, self.means, factor**2 * self.covs)

    def with_shift(self, shift) -> MixtureLaw:
        return MixtureLaw(self.weights, self.means + np.asarray(shift, np.float64), self.covs)


def wrong_laws(law: MixtureLaw) -> dict:
    """The deliberately wrong laws of the negative controls: weights off by 0.03 either way
    (mixtures), every sd 10% too large or too small."""
    out = {}
    if law.num_components > 1:
        out.update({"weights +0.03": law.with_weights_shifted(0.03),
                    "weights -0.03": law.with_weights_shifted(-0.03)})
    out.update({"sd x 1.1": law.with_scale(1.1), "sd / 1.1": law.with_scale(1 / 1.1)})
    return out


def assert_exact_and_controls(x, law: MixtureLaw, **kwargs) -> Verdict:
    """``check(x, law)`` passes, and fails against every one of :func:`wrong_laws` (the negative
    controls: the same rule on the same draws sees a 0.03 weight error and a 10% scale error)."""
    verdict = check(x, law, **kwargs)
    assert verdict.passed, f"against the exact law:\n{verdict}"
    for name, wrong in wrong_laws(law).items():
        control = check(x, wrong, **kwargs)
        assert not control.passed, f"negative control ({name}) passed:\n{control}"
    return verdict


def GaussianLaw(mean, cov) -> MixtureLaw:  # noqa: N802 - reads as the law it builds
    """N(mean, cov) as a one-component :class:`MixtureLaw`."""
    mean = np.atleast_1d(np.asarray(mean, np.float64))
    return MixtureLaw(np.ones(1), mean[None], np.asarray(cov, np.float64).reshape(1, len(mean), -1))


def ou_marginal(target, t: float) -> MixtureLaw:
    """The law of X_t under dX = -X dt + sqrt(2) dB from ``target`` (a ``targets.GaussianMixture``):
    components N(a mu_k, a^2 S_k + s^2 I), a = exp(-t), s^2 = 1 - exp(-2t)."""
    a, s2 = math.exp(-t), -math.expm1(-2.0 * t)
    means, covs = np.asarray(target.means, np.float64), np.asarray(target.covs, np.float64)
    eye = np.eye(means.shape[1])
    return MixtureLaw(np.asarray(target.weights, np.float64), a * means, a**2 * covs + s2 * eye)


# ----- the check ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What :func:`check` found: ``passed``, and per statistic its value and threshold."""

    passed: bool
    rows: tuple  # (name, kind, value, threshold), kind "z" (|value| compared) or "chi2"
    n: int
    alpha: float

    @property
    def failures(self) -> tuple:
        return tuple(r for r in self.rows if abs(r[2]) > r[3])

    def __str__(self) -> str:
        worst = sorted(self.rows, key=lambda r: -abs(r[2]) / r[3])[:6]
        lines = [f"{'PASS' if self.passed else 'FAIL'} (n={self.n}, alpha={self.alpha:g})"]
        lines += [f"  {name} [{kind}] {value:+.3f} (threshold {thr:.3f})"
                  for name, kind, value, thr in worst]
        return "\n".join(lines)


def _equal_mass_chi2(u: np.ndarray, num_bins: int) -> float:
    counts = np.bincount(np.clip((u * num_bins).astype(int), 0, num_bins - 1), minlength=num_bins)
    expected = len(u) / num_bins
    return float(np.sum((counts - expected) ** 2) / expected)


def _directions(law: MixtureLaw) -> list:
    """The coordinate axes and the eigenvectors of the law's covariance (at most 2 d)."""
    d = law.dim
    dirs = [(f"axis {i}", np.eye(d)[i]) for i in range(d)]
    _, evecs = np.linalg.eigh(law.cov)
    if d > 1:
        dirs += [(f"principal {i}", evecs[:, i]) for i in range(d)]
    return dirs


def _gaussian_moments(x: np.ndarray, law: MixtureLaw) -> list:
    n, d = x.shape
    y = law.whiten(x, 0)
    rows = [(f"mean y[{i}]", v * math.sqrt(n)) for i, v in enumerate(y.mean(axis=0))]
    second = y.T @ y / n
    for i in range(d):
        for j in range(i, d):
            var = 2.0 if i == j else 1.0
            rows.append((f"E y[{i}]y[{j}]", (second[i, j] - (i == j)) / math.sqrt(var / n)))
    r = np.sum(y**2, axis=1)
    rows.append(("whitened second moment |y|^2 - d", (r.mean() - d) / math.sqrt(2 * d / n)))
    return rows


@dataclasses.dataclass(frozen=True)
class _MixtureNull:
    """Means and sds of the mixture's moment functions under the exact law (from exact draws)."""

    names: tuple
    mean: np.ndarray
    sd: np.ndarray


_NULL_CACHE: dict = {}


def _mixture_functions(x: np.ndarray, law: MixtureLaw):
    gamma = law.responsibilities(x)
    cols, names = [], []
    for k in range(law.num_components):
        cols.append(gamma[:, k])
        names.append(f"weight {k}")
    for k in range(law.num_components):
        y = law.whiten(x, k)
        for i in range(law.dim):
            cols.append(gamma[:, k] * y[:, i])
            names.append(f"within-mode mean {k} y[{i}]")
        cols.append(gamma[:, k] * np.sum(y**2, axis=1))
        names.append(f"within-mode second moment {k}")
    return np.stack(cols, axis=1), tuple(names)


def _mixture_null(law: MixtureLaw) -> _MixtureNull:
    key = (law.weights.tobytes(), law.means.tobytes(), law.covs.tobytes())
    if key not in _NULL_CACHE:
        ref = law.sample(np.random.default_rng(20240601), REFERENCE_DRAWS)
        h, names = _mixture_functions(ref, law)
        # E h is exact: w_k, 0 and w_k d; the exact draws give only the variances
        mean = np.concatenate([law.weights] + [np.r_[np.zeros(law.dim), w * law.dim]
                                               for w in law.weights])
        _NULL_CACHE[key] = _MixtureNull(names, mean, h.std(axis=0, ddof=1))
    return _NULL_CACHE[key]


def check(x, law: MixtureLaw, *, alpha: float = ALPHA, num_bins: int | None = None) -> Verdict:
    """Compare iid draws ``x`` (n, d) with the exact ``law`` (see the module docstring).

    Args:
        x: n independent draws, shape (n, d) (or (n,) for d = 1).
        law: a :class:`MixtureLaw` (or :func:`GaussianLaw`).
        alpha: the probability that the check fails on exact draws (Bonferroni over statistics).
        num_bins: equal-mass bins per chi-square (default ``min(50, n // 50)``: 50 expected per bin).

    Returns:
        A :class:`Verdict`; ``assert verdict.passed, verdict`` prints the worst statistics.
    """
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        x = x[:, None]
    n, d = x.shape
    if d != law.dim:
        raise ValueError(f"x has dimension {d}, the law {law.dim}")
    if not np.all(np.isfinite(x)):
        return Verdict(False, (("finite draws", "z", math.inf, 0.0),), n, alpha)
    num_bins = num_bins or max(5, min(50, n // 50))

    chi2_rows = []
    for name, a in _directions(law):
        chi2_rows.append((f"chi2 {name}", _equal_mass_chi2(law.projection_cdf(x @ a, a), num_bins)))
    if law.num_components == 1:
        r = np.sum(law.whiten(x, 0) ** 2, axis=1)
        chi2_rows.append(("chi2 whitened radius", _equal_mass_chi2(stats.chi2.cdf(r, d), num_bins)))
        z_rows = _gaussian_moments(x, law)
    else:
        null = _mixture_null(law)
        h, names = _mixture_functions(x, law)
        z = (h.mean(axis=0) - null.mean) / (null.sd / math.sqrt(n))
        z_rows = list(zip(names, z))

    # alpha split evenly between the two families, Bonferroni within each
    chi2_thr = stats.chi2.isf(0.5 * alpha / len(chi2_rows), num_bins - 1)
    z_thr = stats.norm.isf(0.25 * alpha / len(z_rows))
    rows = tuple((name, "chi2", float(v), float(chi2_thr)) for name, v in chi2_rows)
    rows += tuple((name, "z", float(v), float(z_thr)) for name, v in z_rows)
    passed = all(abs(v) <= thr for _, _, v, thr in rows)
    return Verdict(passed, rows, n, alpha)


def rejection_rate(law_drawn: MixtureLaw, law_checked: MixtureLaw, n: int, *, reps: int = 200,
                   seed: int = 0, **kwargs) -> float:
    """How often :func:`check` against ``law_checked`` fails on ``n`` exact draws of ``law_drawn``:
    its power when the two differ, its false-failure rate when they are the same."""
    rng = np.random.default_rng(seed)
    fails = sum(not check(law_drawn.sample(rng, n), law_checked, **kwargs).passed
                for _ in range(reps))
    return fails / reps


# ----- counting what runs ---------------------------------------------------------------------------


class CallCounter:
    """Counts evaluations of wrapped functions as the compiled program executes them.

    ``wrap(fn)`` returns a function with ``fn``'s values whose every executed call adds the number
    of points evaluated (1, or the batch size under ``vmap``) to ``count``, through
    ``jax.debug.callback`` (a host callback: tracing and compiling add nothing, a loop adds once per
    iteration run).
    """

    def __init__(self):
        self.count = 0
        self._lock = threading.Lock()

    def reset(self) -> None:
        self.count = 0

    def _add(self, x):
        with self._lock:
            self.count += int(np.prod(np.shape(x)[:-1], dtype=int)) if np.ndim(x) > 1 else 1

    def wrap(self, fn):
        def counted(x, *args):
            jax.debug.callback(self._add, x)
            return fn(x, *args)

        return counted
