"""JAX log-densities, on unconstrained space, of the posteriordb models shipped with scoresample.

Each builder takes the posterior's data dict (as read from ``data/data/DATA.json.zip``) and returns a
:class:`ModelSpec`. The log-density is the Stan program's ``target`` up to an additive constant, written
on the unconstrained vector ``z`` with the log-Jacobian of the change of variables added:

- ``x > 0``: ``x = exp(u)``, log-Jacobian ``u``;
- ``x in (0, 1)``: ``x = sigmoid(u)``, log-Jacobian ``log sigmoid(u) + log sigmoid(-u)``;
- ``x in (0, c)``: ``x = c sigmoid(u)``, log-Jacobian ``log c + log sigmoid(u) + log sigmoid(-u)``;
- ``ordered[2] mu``: ``mu = (u1, u1 + exp(u2))``, log-Jacobian ``u2``.

These are Stan's own transforms, so a draw of ``z`` maps to the same constrained draw Stan reports.
Every function here follows the Stan program of the same name in stan-dev/posteriordb (the data
ship in ``scoresample/posteriordb/data``, listed in its README).

Linear-Gaussian likelihoods ``y ~ N(X c, sigma)`` are evaluated through a QR decomposition of ``X``
made once from the data: ``||y - X c||^2 = ||R c - Q'y||^2 + RSS``, with ``RSS`` the least-squares
residual sum of squares. It is the same number as the sum over observations (to rounding), and it
costs ``O(p^2)`` instead of ``O(n p)`` per evaluation, which matters for diamonds (n = 5000, p = 25).

All models run in float32 too, except ``gp_pois_regr``, whose 1e-10 jitter on a nearly singular
kernel matrix needs float64 (``jax.config.update("jax_enable_x64", True)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import gammaln

__all__ = ["ModelSpec", "MODELS", "param_names"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class ModelSpec(NamedTuple):
    """One model bound to its data.

    ``blocks`` lists the reference parameters in reference order as ``(name, size)``, ``size`` None
    for a scalar. ``constrain_fn(z)`` returns a dict name -> array of those shapes; ``unconstrain_fn``
    is its inverse; ``logdensity_fn(z)`` is the unnormalised log-density of ``z``, shape (dim,).
    """

    blocks: tuple
    dim: int
    logdensity_fn: Callable
    constrain_fn: Callable
    unconstrain_fn: Callable


def param_names(blocks) -> tuple[str, ...]:
    """Flat reference names, Stan style: ``("theta[1]", ..., "mu", "tau")``."""
    names = []
    for name, size in blocks:
        names.extend([name] if size is None else [f"{name}[{i + 1}]" for i in range(size)])
    return tuple(names)


def _split(vec, blocks) -> dict:
    out, start = {}, 0
    for name, size in blocks:
        if size is None:
            out[name] = vec[start]
            start += 1
        else:
            out[name] = vec[start:start + size]
            start += size
    return out


def _flat(params: dict, blocks):
    return jnp.concatenate([jnp.reshape(jnp.asarray(params[name]), (-1,)) for name, _ in blocks])


# Log-densities (normalised; the truncation constants of half-distributions are dropped).

def _normal(x, loc, scale):
    return jnp.sum(-0.5 * jnp.square((x - loc) / scale) - jnp.log(scale) - _HALF_LOG_2PI)


def _cauchy(x, loc, scale):
    return jnp.sum(-jnp.log1p(jnp.square((x - loc) / scale)) - jnp.log(math.pi * scale))


def _student_t(x, nu, loc, scale):
    const = gammaln(0.5 * (nu + 1.0)) - gammaln(0.5 * nu) - 0.5 * math.log(nu * math.pi)
    return jnp.sum(const - jnp.log(scale)
                   - 0.5 * (nu + 1.0) * jnp.log1p(jnp.square((x - loc) / scale) / nu))


def _unit_interval(u):
    """(0, 1) value and log-Jacobian of the logit transform."""
    return jax.nn.sigmoid(u), jax.nn.log_sigmoid(u) + jax.nn.log_sigmoid(-u)


def _logit(p):
    return jnp.log(p) - jnp.log1p(-p)


# ---------------------------------------------------------------------------------------------
# Linear regressions: y ~ N(X c, sigma), z = (c, log sigma)
# ---------------------------------------------------------------------------------------------

class _LeastSquares(NamedTuple):
    r: np.ndarray  # shape=(p, p), upper triangular
    qty: np.ndarray  # shape=(p,)
    rss: float  # min_c ||y - X c||^2
    n: int


def _least_squares(design, y) -> _LeastSquares:
    design, y = np.asarray(design, np.float64), np.asarray(y, np.float64)
    q, r = np.linalg.qr(design)
    qty = q.T @ y
    coef = np.linalg.solve(r, qty)
    resid = y - design @ coef
    return _LeastSquares(r, qty, float(resid @ resid), int(y.shape[0]))


def _gaussian_loglik(ls: _LeastSquares, coef, log_sigma):
    """sum_i log N(y_i | (X coef)_i, exp(log_sigma)) via the QR statistics."""
    resid = jnp.asarray(ls.r) @ coef - jnp.asarray(ls.qty)
    sum_sq = jnp.dot(resid, resid) + ls.rss
    return -ls.n * (log_sigma + _HALF_LOG_2PI) - 0.5 * sum_sq * jnp.exp(-2.0 * log_sigma)


def _regression(design, y, coef_blocks, log_prior_fn) -> ModelSpec:
    """y ~ N(design @ c, sigma) with ``c`` the concatenated ``coef_blocks``; sigma > 0 is last.

    ``log_prior_fn(coef_dict, sigma)`` adds the priors (flat priors: return 0).
    """
    ls = _least_squares(design, y)
    blocks = tuple(coef_blocks) + (("sigma", None),)
    dim = ls.r.shape[0] + 1

    def logdensity_fn(z):
        coef, log_sigma = z[:-1], z[-1]
        prior = log_prior_fn(_split(coef, coef_blocks), jnp.exp(log_sigma))
        return _gaussian_loglik(ls, coef, log_sigma) + prior + log_sigma

    def constrain_fn(z):
        out = _split(z[:-1], coef_blocks)
        out["sigma"] = jnp.exp(z[-1])
        return out

    def unconstrain_fn(params):
        coef = _flat(params, coef_blocks)
        return jnp.concatenate([coef, jnp.log(jnp.asarray(params["sigma"]))[None]])

    return ModelSpec(blocks, dim, logdensity_fn, constrain_fn, unconstrain_fn)


def _flat_prior(coef, sigma):
    del coef, sigma
    return 0.0


def nes(data) -> ModelSpec:
    """partyid7 ~ N(b1 + b2 real_ideo + b3 race_adj + b4..b6 [age == 2, 3, 4] + b7 educ1 + b8 gender
    + b9 income, sigma); flat priors."""
    age = np.asarray(data["age_discrete"])
    design = np.column_stack([np.ones(age.shape[0]), data["real_ideo"], data["race_adj"],
                              age == 2, age == 3, age == 4, data["educ1"], data["gender"],
                              data["income"]]).astype(np.float64)
    return _regression(design, data["partyid7"], (("beta", 9),), _flat_prior)


def diamonds(data) -> ModelSpec:
    """Y ~ N(Intercept + Xc b, sigma), Xc = X[:, 1:] centred; b ~ N(0, 1);
    Intercept ~ student_t(3, 8, 10); sigma ~ half-student_t(3, 0, 10)."""
    x = np.asarray(data["X"], np.float64)[:, 1:]
    xc = x - x.mean(axis=0)[None, :]
    design = np.column_stack([xc, np.ones(xc.shape[0])])

    def log_prior(coef, sigma):
        return (_normal(coef["b"], 0.0, 1.0) + _student_t(coef["Intercept"], 3.0, 8.0, 10.0)
                + _student_t(sigma, 3.0, 0.0, 10.0))

    return _regression(design, data["Y"], (("b", xc.shape[1]), ("Intercept", None)), log_prior)


def kidscore_momhsiq(data) -> ModelSpec:
    """kid_score ~ N(b1 + b2 mom_hs + b3 mom_iq, sigma); sigma ~ half-Cauchy(0, 2.5); flat b."""
    design = np.column_stack([np.ones(len(data["kid_score"])), data["mom_hs"], data["mom_iq"]])

    def log_prior(coef, sigma):
        del coef
        return _cauchy(sigma, 0.0, 2.5)

    return _regression(design, data["kid_score"], (("beta", 3),), log_prior)


def logearn_interaction(data) -> ModelSpec:
    """log(earn) ~ N(b1 + b2 height + b3 male + b4 height male, sigma); flat priors."""
    height, male = np.asarray(data["height"], np.float64), np.asarray(data["male"], np.float64)
    design = np.column_stack([np.ones(height.shape[0]), height, male, height * male])
    return _regression(design, np.log(np.asarray(data["earn"], np.float64)), (("beta", 4),),
                       _flat_prior)


def logmesquite_logvash(data) -> ModelSpec:
    """log weight ~ N(b1 + b2 log(d1 d2 ch) + b3 log(d1 d2) + b4 log(d1 / d2) + b5 log(total_height)
    + b6 group, sigma); flat priors."""
    d1, d2 = np.asarray(data["diam1"], np.float64), np.asarray(data["diam2"], np.float64)
    ch = np.asarray(data["canopy_height"], np.float64)
    design = np.column_stack([np.ones(d1.shape[0]), np.log(d1 * d2 * ch), np.log(d1 * d2),
                              np.log(d1 / d2), np.log(np.asarray(data["total_height"], np.float64)),
                              data["group"]])
    return _regression(design, np.log(np.asarray(data["weight"], np.float64)), (("beta", 6),),
                       _flat_prior)


def blr(data) -> ModelSpec:
    """y ~ N(X beta, sigma); beta ~ N(0, 10); sigma ~ half-N(0, 10)."""
    x = np.asarray(data["X"], np.float64)

    def log_prior(coef, sigma):
        return _normal(coef["beta"], 0.0, 10.0) + _normal(sigma, 0.0, 10.0)

    return _regression(x, data["y"], (("beta", x.shape[1]),), log_prior)


def arK(data) -> ModelSpec:  # noqa: N802 - the Stan model's name
    """y_t ~ N(alpha + sum_k beta_k y_{t-k}, sigma), t > K; alpha, beta ~ N(0, 10);
    sigma ~ half-Cauchy(0, 2.5)."""
    y, lags = np.asarray(data["y"], np.float64), int(data["K"])
    num_obs = y.shape[0]
    design = np.column_stack([np.ones(num_obs - lags)]
                             + [y[lags - k:num_obs - k] for k in range(1, lags + 1)])

    def log_prior(coef, sigma):
        return (_normal(coef["alpha"], 0.0, 10.0) + _normal(coef["beta"], 0.0, 10.0)
                + _cauchy(sigma, 0.0, 2.5))

    return _regression(design, y[lags:], (("alpha", None), ("beta", lags)), log_prior)


# ---------------------------------------------------------------------------------------------
# The other four
# ---------------------------------------------------------------------------------------------

def eight_schools_noncentered(data) -> ModelSpec:
    """theta_trans ~ N(0, 1); theta = mu + tau theta_trans; y ~ N(theta, sigma); mu ~ N(0, 5);
    tau ~ half-Cauchy(0, 5).  z = (theta_trans, mu, log tau); the reference reports theta."""
    y, sigma = np.asarray(data["y"], np.float64), np.asarray(data["sigma"], np.float64)
    num_schools = y.shape[0]
    blocks = (("theta", num_schools), ("mu", None), ("tau", None))

    def logdensity_fn(z):
        theta_trans, mu, log_tau = z[:num_schools], z[num_schools], z[num_schools + 1]
        tau = jnp.exp(log_tau)
        return (_normal(theta_trans, 0.0, 1.0) + _normal(y, mu + tau * theta_trans, sigma)
                + _normal(mu, 0.0, 5.0) + _cauchy(tau, 0.0, 5.0) + log_tau)

    def constrain_fn(z):
        mu, tau = z[num_schools], jnp.exp(z[num_schools + 1])
        return {"theta": mu + tau * z[:num_schools], "mu": mu, "tau": tau}

    def unconstrain_fn(params):
        mu, tau = jnp.asarray(params["mu"]), jnp.asarray(params["tau"])
        theta_trans = (jnp.asarray(params["theta"]) - mu) / tau
        return jnp.concatenate([theta_trans, mu[None], jnp.log(tau)[None]])

    return ModelSpec(blocks, num_schools + 2, logdensity_fn, constrain_fn, unconstrain_fn)


def garch11(data) -> ModelSpec:
    """y_t ~ N(mu, s_t), s_1 = sigma1, s_t^2 = alpha0 + alpha1 (y_{t-1} - mu)^2 + beta1 s_{t-1}^2;
    alpha0 > 0, alpha1 in (0, 1), beta1 in (0, 1 - alpha1); flat priors.
    z = (mu, log alpha0, logit alpha1, logit(beta1 / (1 - alpha1)))."""
    y, sigma1 = np.asarray(data["y"], np.float64), float(data["sigma1"])
    blocks = (("mu", None), ("alpha0", None), ("alpha1", None), ("beta1", None))

    def transform(z):
        alpha1, jac_alpha1 = _unit_interval(z[2])
        frac, jac_frac = _unit_interval(z[3])
        log1m_alpha1 = jax.nn.log_sigmoid(-z[2])
        params = {"mu": z[0], "alpha0": jnp.exp(z[1]), "alpha1": alpha1,
                  "beta1": jnp.exp(log1m_alpha1) * frac}
        return params, z[1] + jac_alpha1 + log1m_alpha1 + jac_frac

    def logdensity_fn(z):
        p, log_jac = transform(z)
        sq_dev = jnp.square(jnp.asarray(y) - p["mu"])

        def step(s2_prev, sq_dev_prev):
            s2 = p["alpha0"] + p["alpha1"] * sq_dev_prev + p["beta1"] * s2_prev
            return s2, s2

        _, s2_rest = jax.lax.scan(step, jnp.asarray(sigma1**2, dtype=sq_dev.dtype), sq_dev[:-1])
        s2 = jnp.concatenate([jnp.full((1,), sigma1**2, dtype=s2_rest.dtype), s2_rest])
        loglik = jnp.sum(-0.5 * sq_dev / s2 - 0.5 * jnp.log(s2) - _HALF_LOG_2PI)
        return loglik + log_jac

    def constrain_fn(z):
        return transform(z)[0]

    def unconstrain_fn(params):
        alpha1, beta1 = jnp.asarray(params["alpha1"]), jnp.asarray(params["beta1"])
        return jnp.stack([jnp.asarray(params["mu"]), jnp.log(jnp.asarray(params["alpha0"])),
                          _logit(alpha1), _logit(beta1 / (1.0 - alpha1))])

    return ModelSpec(blocks, 4, logdensity_fn, constrain_fn, unconstrain_fn)


def gp_pois_regr(data) -> ModelSpec:
    """f = chol(K(x; alpha, rho) + 1e-10 I) f_tilde; k_i ~ Poisson(exp f_i);
    K_ij = alpha^2 exp(-(x_i - x_j)^2 / (2 rho^2)); rho ~ Gamma(25, rate 4); alpha ~ half-N(0, 2);
    f_tilde ~ N(0, 1).  z = (log rho, log alpha, f_tilde); the reference reports f."""
    x = np.asarray(data["x"], np.float64)
    counts = np.asarray(data["k"], np.float64)
    num_obs = x.shape[0]
    sq_dist = np.square(x[:, None] - x[None, :])
    log_factorial = float(np.sum([math.lgamma(c + 1.0) for c in counts]))
    blocks = (("rho", None), ("alpha", None), ("f", num_obs))

    def cholesky(rho, alpha):
        cov = jnp.square(alpha) * jnp.exp(-0.5 * jnp.asarray(sq_dist) / jnp.square(rho))
        return jnp.linalg.cholesky(cov + 1e-10 * jnp.eye(num_obs, dtype=cov.dtype))

    def logdensity_fn(z):
        log_rho, log_alpha, f_tilde = z[0], z[1], z[2:]
        rho, alpha = jnp.exp(log_rho), jnp.exp(log_alpha)
        f = cholesky(rho, alpha) @ f_tilde
        log_prior = (25.0 * math.log(4.0) - math.lgamma(25.0) + 24.0 * log_rho - 4.0 * rho
                     + _normal(alpha, 0.0, 2.0) + _normal(f_tilde, 0.0, 1.0))
        loglik = jnp.sum(jnp.asarray(counts) * f - jnp.exp(f)) - log_factorial
        return log_prior + loglik + log_rho + log_alpha

    def constrain_fn(z):
        rho, alpha = jnp.exp(z[0]), jnp.exp(z[1])
        return {"rho": rho, "alpha": alpha, "f": cholesky(rho, alpha) @ z[2:]}

    def unconstrain_fn(params):
        rho, alpha = jnp.asarray(params["rho"]), jnp.asarray(params["alpha"])
        f_tilde = solve_triangular(cholesky(rho, alpha), jnp.asarray(params["f"]), lower=True)
        return jnp.concatenate([jnp.log(rho)[None], jnp.log(alpha)[None], f_tilde])

    return ModelSpec(blocks, num_obs + 2, logdensity_fn, constrain_fn, unconstrain_fn)


def low_dim_gauss_mix(data) -> ModelSpec:
    """y_n ~ theta N(mu1, sigma1) + (1 - theta) N(mu2, sigma2), mu ordered; mu ~ N(0, 2);
    sigma ~ half-N(0, 2); theta ~ Beta(5, 5).
    z = (mu1, log(mu2 - mu1), log sigma1, log sigma2, logit theta)."""
    y = np.asarray(data["y"], np.float64)
    blocks = (("mu", 2), ("sigma", 2), ("theta", None))
    log_beta_55 = 2.0 * math.lgamma(5.0) - math.lgamma(10.0)

    def transform(z):
        theta, jac_theta = _unit_interval(z[4])
        mu = jnp.stack([z[0], z[0] + jnp.exp(z[1])])
        params = {"mu": mu, "sigma": jnp.exp(z[2:4]), "theta": theta}
        return params, z[1] + z[2] + z[3] + jac_theta

    def logdensity_fn(z):
        p, log_jac = transform(z)
        mu, sigma = p["mu"], p["sigma"]
        log_theta, log1m_theta = jax.nn.log_sigmoid(z[4]), jax.nn.log_sigmoid(-z[4])
        log_prior = (_normal(mu, 0.0, 2.0) + _normal(sigma, 0.0, 2.0)
                     + 4.0 * (log_theta + log1m_theta) - log_beta_55)
        yy = jnp.asarray(y)
        comp1 = log_theta - 0.5 * jnp.square((yy - mu[0]) / sigma[0]) - z[2]
        comp2 = log1m_theta - 0.5 * jnp.square((yy - mu[1]) / sigma[1]) - z[3]
        loglik = jnp.sum(jnp.logaddexp(comp1, comp2)) - y.shape[0] * _HALF_LOG_2PI
        return log_prior + loglik + log_jac

    def constrain_fn(z):
        return transform(z)[0]

    def unconstrain_fn(params):
        mu, sigma = jnp.asarray(params["mu"]), jnp.asarray(params["sigma"])
        return jnp.concatenate([mu[:1], jnp.log(mu[1:] - mu[:1]), jnp.log(sigma),
                                _logit(jnp.asarray(params["theta"]))[None]])

    return ModelSpec(blocks, 5, logdensity_fn, constrain_fn, unconstrain_fn)


# Stan model name (posteriors/NAME.json "model_name") -> builder(data) -> ModelSpec
MODELS: dict[str, Callable[[dict], ModelSpec]] = {
    "eight_schools_noncentered": eight_schools_noncentered,
    "nes": nes,
    "diamonds": diamonds,
    "kidscore_momhsiq": kidscore_momhsiq,
    "logearn_interaction": logearn_interaction,
    "logmesquite_logvash": logmesquite_logvash,
    "blr": blr,
    "arK": arK,
    "garch11": garch11,
    "gp_pois_regr": gp_pois_regr,
    "low_dim_gauss_mix": low_dim_gauss_mix,
}
