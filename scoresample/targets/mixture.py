"""Exact Gaussian mixtures under the OU flow: every quantity a sampler needs, in closed form.

A mixture sum_k w_k N(mu_k, S_k) stays a mixture under dX = -X dt + sqrt(2) dB, with components
N(a_t mu_k, a_t^2 S_k + s_t^2 I). With data on a k-dimensional subspace (X_0 = U z, U of shape (d, k)
with orthonormal columns) the component precision is
C^-1 = s^-2 (I - U U^T) + U (a^2 S + s^2 I_k)^-1 U^T.
Responsibilities go through logsumexp, never through density ratios.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from scoresample import processes
from scoresample.base import check_array, check_int, check_key, check_nonnegative

__all__ = ["GaussianMixture", "Gaussian"]


class GaussianMixture:
    """sum_k w_k N(mu_k, S_k), optionally embedded in R^d by an orthonormal ``basis`` (d, k).

    Args:
        weights: (K,) positive, summing to 1 (to within 1e-6; renormalised exactly here).
        means: (K, k) component means (in R^k when ``basis`` is given, else k = d).
        covs: (K, k, k) symmetric positive-definite covariances.
        basis: optional (d, k) with orthonormal columns.

    Example:
        >>> mix = GaussianMixture([0.3, 0.7], [[-2.0], [2.0]], [[[0.5]], [[0.5]]])
        >>> mix.score(jnp.zeros(1), 0.1)  # grad log p_t at x = 0, t = 0.1
    """

    def __init__(self, weights, means, covs, basis=None):
        weights = check_array("weights", weights, ndim=1).astype(np.float64)
        if np.any(weights <= 0):
            raise ValueError("weights must be positive")
        if abs(float(weights.sum()) - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1, got sum {float(weights.sum())!r} "
                             "(pass w / w.sum() to normalise)")
        means = check_array("means", means, ndim=2).astype(np.float64)
        num_components, k = means.shape
        if weights.shape[0] != num_components:
            raise ValueError(f"weights has {weights.shape[0]} entries but means has {num_components} rows")
        covs = check_array("covs", covs, shape=(num_components, k, k)).astype(np.float64)
        if not np.allclose(covs, np.swapaxes(covs, -1, -2), atol=1e-10):
            raise ValueError("covs must be symmetric")
        evals, evecs = np.linalg.eigh(covs)
        if np.any(evals <= 0):
            raise ValueError("covs must be positive definite")
        if basis is not None:
            basis = check_array("basis", basis, ndim=2).astype(np.float64)
            if basis.shape[1] != k:
                raise ValueError(f"basis must have shape (d, {k}), got {basis.shape}")
            if not np.allclose(basis.T @ basis, np.eye(k), atol=1e-8):
                raise ValueError("basis must have orthonormal columns")
        self.weights = jnp.asarray(weights / weights.sum())
        self.means_latent = jnp.asarray(means)
        self.covs_latent = jnp.asarray(covs)
        self.eigenvalues = jnp.asarray(evals)  # (K, k): of each latent covariance, ascending
        self.eigenvectors = jnp.asarray(evecs)  # (K, k, k): columns, S_k = V diag(lambda) V^T
        self.basis = None if basis is None else jnp.asarray(basis)
        self.latent_dim = k
        self.dim = k if basis is None else basis.shape[0]
        self.num_components = num_components

    # ----- moments at t = 0 -------------------------------------------------------------------
    @property
    def means(self):
        """(K, d) component means in the ambient space."""
        return self.means_latent if self.basis is None else self.means_latent @ self.basis.T

    @property
    def covs(self):
        """(K, d, d) component covariances in the ambient space (singular with a basis)."""
        if self.basis is None:
            return self.covs_latent
        return jnp.einsum("ia,kab,jb->kij", self.basis, self.covs_latent, self.basis)

    @property
    def mean(self):
        return self.weights @ self.means

    @property
    def cov(self):
        mu = self.means
        centred = mu - self.mean[None, :]
        return jnp.einsum("k,kij->ij", self.weights, self.covs) + jnp.einsum(
            "k,ki,kj->ij", self.weights, centred, centred)

    def second_moment(self) -> float:
        """E|X_0|^2."""
        return float(jnp.trace(self.cov) + self.mean @ self.mean)

    # ----- sampling ---------------------------------------------------------------------------
    def sample(self, rng_key, n: int, t: float = 0.0):
        """n exact draws of X_t (default t = 0), shape (n, d)."""
        check_key("rng_key", rng_key)
        n = check_int("n", n)
        t = check_nonnegative("t", t)
        key_c, key_z, key_e = jax.random.split(rng_key, 3)
        comp = jax.random.choice(key_c, self.num_components, (n,), p=self.weights)
        z = jax.random.normal(key_z, (n, self.latent_dim), dtype=self.means_latent.dtype)
        chol = self.eigenvectors * jnp.sqrt(self.eigenvalues)[:, None, :]  # V diag(sqrt(lambda))
        latent = self.means_latent[comp] + jnp.einsum("nij,nj->ni", chol[comp], z)
        x0 = latent if self.basis is None else latent @ self.basis.T
        if t == 0.0:
            return x0
        noise = jax.random.normal(key_e, x0.shape, dtype=x0.dtype)
        return processes.alpha(t) * x0 + jnp.sqrt(processes.sigma2(t)) * noise

    # ----- log p_t, score, energy ---------------------------------------------------------------
    def _component_terms(self, x, t):
        """Per component: log w_k - 0.5 r^T C^-1 r - 0.5 logdet C, and C^-1 r, with r = x - a mu_k."""
        if jnp.shape(x) != (self.dim,):
            raise ValueError(f"x must be one point of shape ({self.dim},), got shape {jnp.shape(x)} "
                             "(use jax.vmap for a batch)")
        if isinstance(t, (int, float, np.ndarray, np.generic)) and not isinstance(t, bool):
            if not np.all(np.asarray(t) >= 0):  # a concrete time (traced times are not checked)
                raise ValueError(f"t must be >= 0, got {t}")
        x = jnp.asarray(x)
        t = jnp.asarray(t, dtype=x.dtype)
        a = processes.alpha(t)
        s2 = processes.sigma2(t)
        lam = a**2 * self.eigenvalues + s2  # (K, k) eigenvalues of a^2 S + s^2 I
        if self.basis is None:
            r = x[None, :] - a * self.means_latent  # (K, d)
            proj = jnp.einsum("kij,ki->kj", self.eigenvectors, r)  # V^T r
            quad = jnp.sum(proj**2 / lam, axis=-1)
            prec_r = jnp.einsum("kij,kj->ki", self.eigenvectors, proj / lam)
            logdet = jnp.sum(jnp.log(lam), axis=-1)
        else:
            u = self.basis
            xl = u.T @ x  # (k,)
            perp = x - u @ xl  # component outside the subspace
            perp2 = perp @ perp
            r = xl[None, :] - a * self.means_latent  # (K, k)
            proj = jnp.einsum("kij,ki->kj", self.eigenvectors, r)
            quad = jnp.sum(proj**2 / lam, axis=-1) + perp2 / s2
            prec_r = jnp.einsum("kij,kj->ki", self.eigenvectors, proj / lam) @ u.T + perp[None, :] / s2
            logdet = jnp.sum(jnp.log(lam), axis=-1) + (self.dim - self.latent_dim) * jnp.log(s2)
        logp_k = jnp.log(self.weights) - 0.5 * quad - 0.5 * logdet
        return logp_k, prec_r

    def logdensity_t(self, x, t):
        """log p_t(x) (normalised), for one point x of shape (d,)."""
        logp_k, _ = self._component_terms(x, t)
        return logsumexp(logp_k) - 0.5 * self.dim * math.log(2 * math.pi)

    def logdensity(self, x):
        """log p_0(x); only defined without a basis (the subspace law has no density in R^d)."""
        if self.basis is not None:
            raise ValueError("a mixture on a subspace has no density at t = 0; use logdensity_t(x, t)")
        return self.logdensity_t(x, 0.0)

    def score(self, x, t):
        """grad log p_t(x) = -sum_k r_k(x) C_k^-1 (x - a_t mu_k)."""
        logp_k, prec_r = self._component_terms(x, t)
        resp = jax.nn.softmax(logp_k)
        return -resp @ prec_r

    def energy(self, x, t):
        """-log p_t(x) (with its normalising constant)."""
        return -self.logdensity_t(x, t)

    def assign(self, x):
        """Index of the most responsible component at t = 0 (batched over leading axes)."""
        t0 = 0.0 if self.basis is None else 1e-12  # a subspace law has no density at t = 0

        def fn(xi):
            return jnp.argmax(self._component_terms(xi, t0)[0])

        x = jnp.asarray(x)
        return fn(x) if x.ndim == 1 else jax.vmap(fn)(x.reshape(-1, self.dim)).reshape(x.shape[:-1])

    def __repr__(self):
        return (f"GaussianMixture(dim={self.dim}, num_components={self.num_components}"
                + (f", latent_dim={self.latent_dim})" if self.basis is not None else ")"))


class Gaussian(GaussianMixture):
    """N(mean, cov): a one-component mixture with the same exact score, energy and sampling."""

    def __init__(self, mean, cov):
        mean = check_array("mean", mean, ndim=1)
        cov = check_array("cov", cov, shape=(mean.shape[0], mean.shape[0]))
        super().__init__(np.ones(1), mean[None], cov[None])

    def __repr__(self):
        return f"Gaussian(dim={self.dim})"
