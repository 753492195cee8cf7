"""The exact law of a Gaussian mixture under critically damped Langevin diffusion (CLD).

The process (constants, closed-form flows E(t) and Q(t)) is :mod:`scoresample.processes.cld`.
A Gaussian mixture sum_k w_k N(mu_k, S_k) for x_0, with v_0 ~ N(0, 0.01 I), gives a Gaussian
mixture for u_t = (x_t, v_t): in each eigendirection of S_k (eigenvalue lam) the pair (x, v) is
Gaussian with mean E(t) (mu, 0) and covariance E(t) diag(lam, 0.01) E(t)^T + Q(t).
:class:`CLDMixture` gives its exact log-density, velocity score grad_v log p_t(x, v), samples and
x-marginal.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from scoresample.base import check_int, check_key, check_nonnegative

# The process that defines this law is scoresample.processes.cld; its names stay importable from
# here (``targets.cld.forward_flow``), as explicit re-exports.
from scoresample.processes.cld import BETA as BETA
from scoresample.processes.cld import GAMMA as GAMMA
from scoresample.processes.cld import MASS_INV as MASS_INV
from scoresample.processes.cld import STATIONARY_V_VAR as STATIONARY_V_VAR
from scoresample.processes.cld import V0_VAR as V0_VAR
from scoresample.processes.cld import forward_flow as forward_flow
from scoresample.processes.cld import reverse_linear_flow as reverse_linear_flow
from scoresample.targets.mixture import GaussianMixture

__all__ = ["CLDMixture"]


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
        self._evals = mixture.eigenvalues  # (K, k)
        self._evecs = mixture.eigenvectors  # (K, k, k)
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
