"""Small example models with their data (nothing is downloaded).

- :func:`breast_cancer_logistic`: Bayesian logistic regression on scikit-learn's Wisconsin
  breast-cancer data (569 tumours, 30 features, label 1 = benign), features standardised, plus an
  intercept; prior N(0, prior_scale^2 I) on all 31 coefficients. A smooth, strongly log-concave
  posterior with correlated coordinates: the standard test case for gradient-based samplers.
- :func:`eight_schools_numpyro` with :data:`EIGHT_SCHOOLS_DATA`: Rubin's eight schools,
  non-centred, as a NumPyro model (posteriordb's program), for ``scoresample.sample``'s NumPyro
  front end.

Example:
    >>> model = breast_cancer_logistic()
    >>> model.dim, model.names[:2]
    (31, ('intercept', 'mean radius'))
    >>> model.logdensity_fn(jnp.zeros(model.dim))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from scoresample.base import check_int, check_positive

__all__ = ["LogDensityModel", "breast_cancer_logistic", "eight_schools_numpyro",
           "EIGHT_SCHOOLS_DATA"]


@dataclasses.dataclass(frozen=True)
class LogDensityModel:
    """A log-density on R^dim with named coordinates.

    ``logdensity_fn(x)`` is the unnormalised log posterior of one point of shape (dim,) (callers
    vmap); ``data`` holds the arrays it closes over and ``description`` states the model and prior.
    """

    logdensity_fn: Callable[[jax.Array], jax.Array]
    dim: int
    names: tuple[str, ...]
    data: dict
    description: str


def breast_cancer_logistic(prior_scale: float = 1.0, num_features: int = 30) -> LogDensityModel:
    """Bayesian logistic regression on scikit-learn's breast-cancer data.

    Model: y_i ~ Bernoulli(sigmoid(beta_0 + x_i^T beta)), i = 1..569, with x_i the first
    ``num_features`` of the 30 features (all by default)
    standardised to mean 0 and variance 1 (population sd) and beta_j ~ N(0, prior_scale^2) for all
    num_features + 1 coefficients (intercept first). The log-density is
    sum_i [y_i eta_i - log(1 + e^{eta_i})] - |beta|^2 / (2 prior_scale^2), with eta = X beta,
    computed with ``jax.nn.softplus`` (stable for large |eta|).

    Args:
        prior_scale: standard deviation of the Gaussian prior (> 0).
        num_features: how many of the features (in scikit-learn's order) enter, 1 to 30.

    Returns:
        :class:`LogDensityModel` with ``dim = num_features + 1`` (31 by default),
        ``names = ("intercept", <feature names>)`` and ``data = {"X": (569, dim) design with a
        column of ones, "y": (569,) labels in {0, 1}}``.
    """
    from sklearn.datasets import load_breast_cancer

    prior_scale = check_positive("prior_scale", prior_scale)
    num_features = check_int("num_features", num_features)
    if not 1 <= num_features <= 30:
        raise ValueError(f"num_features must be between 1 and 30, got {num_features}")
    raw = load_breast_cancer()
    features = np.asarray(raw.data, dtype=np.float64)[:, :num_features]
    features = (features - features.mean(axis=0)) / features.std(axis=0)
    design = np.concatenate([np.ones((features.shape[0], 1)), features], axis=1)
    labels = np.asarray(raw.target, dtype=np.float64)
    names = ("intercept",) + tuple(str(n) for n in raw.feature_names[:num_features])
    design_j = jnp.asarray(design)
    labels_j = jnp.asarray(labels)
    inv_var = 1.0 / prior_scale**2

    def logdensity_fn(beta):
        eta = design_j @ beta
        loglik = jnp.sum(labels_j * eta - jax.nn.softplus(eta))
        return loglik - 0.5 * inv_var * jnp.sum(beta**2)

    description = (f"Bayesian logistic regression, scikit-learn breast-cancer data (n=569, "
                   f"{num_features} "
                   f"standardised features + intercept), prior N(0, {prior_scale:g}^2 I)")
    return LogDensityModel(logdensity_fn, design.shape[1], names,
                           {"X": design, "y": labels}, description)


#: Rubin's eight schools: estimated effects y and their standard errors sigma.
EIGHT_SCHOOLS_DATA = {"y": [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0],
                      "sigma": [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]}


def eight_schools_numpyro(sigma, y=None):
    """Non-centred eight schools as a NumPyro model (the posteriordb program, written in NumPyro).

    mu ~ N(0, 5), tau ~ half-Cauchy(0, 5), theta_trans_j ~ N(0, 1), theta = mu + tau theta_trans,
    y_j ~ N(theta_j, sigma_j).

    Example:
        >>> from scoresample import sample
        >>> data = EIGHT_SCHOOLS_DATA
        >>> dt = sample(jax.random.key(0), eight_schools_numpyro, method="rtk",
        ...             model_args=(np.asarray(data["sigma"]),),
        ...             model_kwargs={"y": np.asarray(data["y"])})
    """
    import numpyro
    import numpyro.distributions as dist

    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", len(sigma)):
        theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_trans)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)
