"""Critically damped Langevin diffusion (CLD) and the exact law of a Gaussian mixture under it.

The CLD forward process of Dockhorn, Vahdat and Kreis, "Score-based generative modeling with
critically-damped Langevin diffusion" (ICLR 2022), on the phase space u = (x, v), per coordinate:

    dx = beta M^-1 v dt,    dv = -beta (x + Gamma M^-1 v) dt + sqrt(2 Gamma beta) dB,

with M^-1 = 4, Gamma = 1 (critical damping, Gamma^2 = 4 M), constant beta = 4 and v_0 ~ N(0, 0.01 I)
independent of x_0. The stationary law is N(0, I) x N(0, M I).

Per coordinate the drift matrix is F = beta A with A = -kappa I + N, kappa = Gamma M^-1 / 2 = 2 and
N nilpotent (N^2 = 0 exactly at critical damping), so the 2 x 2 matrix exponential is closed form:

    exp(t F) = e^{-kappa beta t} (I + beta t N).

The transition covariance from a point, Q(t) = int_0^t e^{sF} G G^T e^{sF^T} ds with
G G^T = diag(0, 2 Gamma beta), reduces to I_j(t) = int_0^t s^j e^{-2 kappa beta s} ds, j = 0, 1, 2,
computed as regularised incomplete gamma functions (a series at small t, so no cancellation). The generative
(reverse) SDE splits into the linear flow with drift beta [[0, -M^-1], [1, -Gamma M^-1]] (same
closed forms with another nilpotent part; see :func:`reverse_linear_flow`) and the score part
dv = 2 Gamma beta (score_v + M^-1 v) dt, which is what the SSCS sampler in
:mod:`scoresample.kernels.cld` integrates.

A Gaussian mixture sum_k w_k N(mu_k, S_k) for x_0 gives a Gaussian mixture for u_t: in each
eigendirection of S_k (eigenvalue lam) the pair (x, v) is Gaussian with mean exp(tF) (mu, 0) and
covariance exp(tF) diag(lam, 0.01) exp(tF)^T + Q(t). :class:`CLDMixture` gives its exact log-density,
velocity score grad_v log p_t(x, v), samples and x-marginal.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from scoresample.base import check_int, check_key, check_nonnegative
from scoresample.targets.mixture import GaussianMixture

__all__ = [
    "MASS_INV",
    "GAMMA",
    "BETA",
    "V0_VAR",
    "STATIONARY_V_VAR",
    "forward_flow",
    "reverse_linear_flow",
    "CLDMixture",
]

MASS_INV = 4.0  # M^-1
GAMMA = 1.0  # friction; critical damping Gamma^2 = 4 M
BETA = 4.0  # constant time scaling
V0_VAR = 0.01  # variance of the initial velocity (gamma M with gamma = 0.04)
STATIONARY_V_VAR = 1.0 / MASS_INV  # M
_KAPPA = GAMMA * MASS_INV / 2.0  # the double eigenvalue of A is -kappa
assert abs(GAMMA**2 - 4.0 / MASS_INV) < 1e-12, "the closed forms need critical damping"

# Nilpotent parts (A = -kappa I + N) of the forward drift A = [[0, M^-1], [-1, -Gamma M^-1]] and of the
# reverse linear drift [[0, -M^-1], [1, -Gamma M^-1]]; N e_v is all that Q(t) needs.
_N_FORWARD = np.array([[_KAPPA, MASS_INV], [-1.0, -_KAPPA]])
_N_REVERSE = np.array([[_KAPPA, -MASS_INV], [1.0, -_KAPPA]])


def _is_numpy(t):
    return isinstance(t, (float, int, np.ndarray, np.floating))


def _gamma_p(a: int, x, xp):
    """Regularised lower incomplete gamma P(a, x) for a = 1, 2, 3, without cancellation.

    P(a, x) = 1 - e^-x sum_{j<a} x^j / j!; for x < 1 the difference cancels, so there the series
    e^-x sum_{k>=0} x^(a+k) / (a+k)! is used (25 terms: error below 1e-25).
    """
    if a == 1:
        return -xp.expm1(-x)
    term = x**a / math.factorial(a)
    series = 0.0 * x
    for k in range(25):
        series = series + term
        term = term * x / (a + k + 1)
    series = xp.exp(-x) * series
    head = sum(x**j / math.factorial(j) for j in range(a))
    direct = 1.0 - xp.exp(-x) * head
    return xp.where(x < 1.0, series, direct)


def _flow(nilpotent: np.ndarray, t):
    """(exp(t beta A), Q(t)) for A = -kappa I + nilpotent and noise diag(0, 2 Gamma beta).

    Works on a float (numpy, float64) or a JAX scalar; returns two (2, 2) arrays.
    """
    xp = np if _is_numpy(t) else jnp
    gammainc = lambda a, x: _gamma_p(int(a), x, xp)
    bt = BETA * t
    nil = xp.asarray(nilpotent)
    eye = xp.eye(2)
    expm = xp.exp(-_KAPPA * bt) * (eye + bt * nil)
    # Q = q int_0^t e^{-2 kappa beta s} (e_v + beta s n)(e_v + beta s n)^T ds, n = N e_v
    rate = 2.0 * _KAPPA * BETA
    x = rate * t
    i0 = gammainc(1.0, x) / rate
    i1 = gammainc(2.0, x) / rate**2
    i2 = 2.0 * gammainc(3.0, x) / rate**3
    e_v = xp.asarray([0.0, 1.0])
    n = nil[:, 1]
    q = 2.0 * GAMMA * BETA
    cov = q * (i0 * xp.outer(e_v, e_v) + BETA * i1 * (xp.outer(e_v, n) + xp.outer(n, e_v))
               + BETA**2 * i2 * xp.outer(n, n))
    return expm, cov


def forward_flow(t):
    """The forward CLD transition over time t, per coordinate: u_t = E u_0 + N(0, Q).

    Returns ``(E, Q)``, both (2, 2), ordered (x, v). float inputs give float64 numpy arrays.
    """
    return _flow(_N_FORWARD, t)


def reverse_linear_flow(h):
    """The exact transition over h of the linear part of the generative SDE (used by SSCS).

    dx = -beta M^-1 v dt, dv = beta (x - Gamma M^-1 v) dt + sqrt(2 Gamma beta) dB; its stationary law
    is also N(0, 1) x N(0, M). Returns ``(E, Q)`` as :func:`forward_flow`.
    """
    return _flow(_N_REVERSE, h)


class CLDMixture:
    """The exact law p_t(x, v) of CLD started from a Gaussian mixture x_0 and v_0 ~ N(0, 0.01 I).

    Args:
        mixture: a :class:`scoresample.targets.GaussianMixture` (a basis is allowed).

    Example:
        >>> from scoresample import targets
        >>> cld = CLDMixture(targets.four_modes_2d())
        >>> cld.velocity_score(jnp.zeros(2), jnp.zeros(2), 0.5)  # grad_v log p_t at (0, 0)
    """

    def __init__(self, mixture: GaussianMixture):
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
        self.mixture = mixture
        self.dim = mixture.dim
        self.latent_dim = mixture.latent_dim
        self.num_components = mixture.num_components
        self.weights = mixture.weights
        self.basis = mixture.basis
        self._evals = mixture._evals  # (K, k)
        self._evecs = mixture._evecs  # (K, k, k)
        self._means = mixture.means_latent  # (K, k)

    # ----- the 2 x 2 laws per eigendirection ---------------------------------------------------
    def _pair_covs(self, t):
        """Mean map E and covariances (K, k, 2, 2) of (x, v) per component eigendirection; (2, 2) for
        directions outside the data subspace (eigenvalue 0)."""
        expm, q = forward_flow(t)
        ex, ev = expm[:, 0], expm[:, 1]  # images of e_x and e_v
        outer_x = ex[:, None] * ex[None, :]
        outer_v = ev[:, None] * ev[None, :]
        covs = self._evals[..., None, None] * outer_x[None, None] + (V0_VAR * outer_v + q)[None, None]
        null_cov = V0_VAR * outer_v + q
        return expm, covs, null_cov

    def _component_terms(self, x, v, t):
        """Per component: log w_k + log N_k(x, v) without the 2 pi constant, and grad_v of log N_k."""
        t = jnp.asarray(t, dtype=x.dtype)
        expm, covs, null_cov = self._pair_covs(t)
        det = covs[..., 0, 0] * covs[..., 1, 1] - covs[..., 0, 1] ** 2  # (K, k)
        p_xx, p_xv, p_vv = covs[..., 1, 1] / det, -covs[..., 0, 1] / det, covs[..., 0, 0] / det
        if self.basis is None:
            xl, vl = x, v
        else:
            xl, vl = self.basis.T @ x, self.basis.T @ v
        # coordinates in each component's eigenbasis, relative to the component mean
        rx = jnp.einsum("kij,ki->kj", self._evecs, xl[None, :] - expm[0, 0] * self._means)
        rv = jnp.einsum("kij,ki->kj", self._evecs, vl[None, :] - expm[1, 0] * self._means)
        quad = jnp.sum(p_xx * rx**2 + 2.0 * p_xv * rx * rv + p_vv * rv**2, axis=-1)
        logdet = jnp.sum(jnp.log(det), axis=-1)
        grad_v_latent = -jnp.einsum("kij,kj->ki", self._evecs, p_xv * rx + p_vv * rv)  # (K, k)
        if self.basis is None:
            grad_v = grad_v_latent
        else:
            det0 = null_cov[0, 0] * null_cov[1, 1] - null_cov[0, 1] ** 2
            q_xx, q_xv, q_vv = null_cov[1, 1] / det0, -null_cov[0, 1] / det0, null_cov[0, 0] / det0
            x_perp = x - self.basis @ xl
            v_perp = v - self.basis @ vl
            quad = quad + q_xx * (x_perp @ x_perp) + 2.0 * q_xv * (x_perp @ v_perp) + q_vv * (v_perp @ v_perp)
            logdet = logdet + (self.dim - self.latent_dim) * jnp.log(det0)
            grad_v = grad_v_latent @ self.basis.T - (q_xv * x_perp + q_vv * v_perp)[None, :]
        logp_k = jnp.log(self.weights) - 0.5 * quad - 0.5 * logdet
        return logp_k, grad_v

    def logdensity_t(self, x, v, t):
        """log p_t(x, v), normalised, for one point (x, v) each of shape (d,)."""
        logp_k, _ = self._component_terms(x, v, t)
        return logsumexp(logp_k) - self.dim * math.log(2.0 * math.pi)

    def velocity_score(self, x, v, t):
        """grad_v log p_t(x, v) = sum_k r_k(x, v) grad_v log N_k(x, v) (shape (d,))."""
        logp_k, grad_v = self._component_terms(x, v, t)
        return jax.nn.softmax(logp_k) @ grad_v

    # ----- sampling and marginals -----------------------------------------------------------------
    def sample(self, rng_key, n: int, t: float = 0.0):
        """n exact draws of (x_t, v_t); returns two arrays of shape (n, d)."""
        check_key("rng_key", rng_key)
        n = check_int("n", n)
        t = check_nonnegative("t", t)
        key_x, key_v, key_n = jax.random.split(rng_key, 3)
        x0 = self.mixture.sample(key_x, n)
        v0 = math.sqrt(V0_VAR) * jax.random.normal(key_v, x0.shape, x0.dtype)
        if t == 0.0:
            return x0, v0
        expm, q = forward_flow(t)
        chol = np.linalg.cholesky(q)
        z = jax.random.normal(key_n, (2,) + x0.shape, x0.dtype)
        x_t = expm[0, 0] * x0 + expm[0, 1] * v0 + chol[0, 0] * z[0]
        v_t = expm[1, 0] * x0 + expm[1, 1] * v0 + chol[1, 0] * z[0] + chol[1, 1] * z[1]
        return x_t, v_t

    def x_marginal(self, t: float) -> GaussianMixture:
        """The exact law of x_t as a GaussianMixture in R^d (ambient covariances)."""
        t = check_nonnegative("t", t)
        expm, covs, null_cov = self._pair_covs(float(t))
        evecs = np.asarray(self._evecs)
        var_x = np.asarray(covs)[..., 0, 0]  # (K, k)
        latent_covs = np.einsum("kij,kj,klj->kil", evecs, var_x, evecs)
        means = expm[0, 0] * np.asarray(self._means)
        if self.basis is None:
            return GaussianMixture(np.asarray(self.weights), means, latent_covs)
        u = np.asarray(self.basis)
        ambient = np.einsum("ia,kab,jb->kij", u, latent_covs, u)
        ambient += null_cov[0, 0] * (np.eye(self.dim) - u @ u.T)[None]
        return GaussianMixture(np.asarray(self.weights), means @ u.T, ambient)

    def __repr__(self):
        return f"CLDMixture({self.mixture!r})"
