"""Real Bayesian posteriors with gold-standard draws: a posteriordb subset as JAX log-densities.

``load(name, root=None)`` reads a posteriordb folder (posteriordb's own layout) and returns a
:class:`Posterior` with ``logdensity_fn`` on unconstrained space, the transforms to the reference
parameters and the reference draws; ``pass_rule(draws, reference)`` applies posteriordb's check
(every mean within 4 combined Monte Carlo standard errors, every sd within 10%).

Example:
    >>> from scoresample import posteriordb
    >>> post = posteriordb.load("eight_schools")
    >>> post.dim, post.param_names[:2]
    (10, ('theta[1]', 'theta[2]'))
    >>> # ... run a sampler on post.logdensity_fn to get positions of shape (chains, draws, dim)
    >>> # draws = jax.vmap(jax.vmap(post.to_reference_order))(positions)
    >>> # posteriordb.pass_rule(draws, post.reference_draws, param_names=post.param_names).passed
"""

from scoresample.posteriordb.checks import PassResult, pass_rule
from scoresample.posteriordb.loader import ENV_VAR, Posterior, find_root, list_posteriors, load
from scoresample.posteriordb.models import MODELS, ModelSpec

__all__ = ["load", "list_posteriors", "find_root", "Posterior", "pass_rule", "PassResult", "MODELS",
           "ModelSpec", "ENV_VAR"]
