"""Real Bayesian posteriors with gold-standard references: a posteriordb subset as JAX log-densities.

``load(name, root=None)`` returns a :class:`Posterior` with ``logdensity_fn`` on unconstrained space,
the transforms to the reference parameters and ``reference``, a :class:`ReferenceSummary` of the
gold-standard draws; the subset ships with the package (``root=`` or ``SCORESAMPLE_POSTERIORDB``
read a full posteriordb checkout instead, with the draws themselves). ``pass_rule(draws, reference)``
applies posteriordb's check (every mean within 4 combined Monte Carlo standard errors, every sd
within 10%).
``resolve_model(name)`` turns a posterior's or an example model's name into the arguments of
``scoresample.sample`` (what ``scoresample sample --model`` runs).

Example:
    >>> from scoresample import posteriordb
    >>> post = posteriordb.load("eight_schools")
    >>> post.dim, post.param_names[:2]
    (10, ('theta[1]', 'theta[2]'))
    >>> # ... run a sampler on post.logdensity_fn to get positions of shape (chains, draws, dim)
    >>> # draws = jax.vmap(jax.vmap(post.to_reference_order))(positions)
    >>> # posteriordb.pass_rule(draws, post.reference).passed
"""

from scoresample.posteriordb.adapters import LogDensityAdapter, resolve_model
from scoresample.posteriordb.checks import PassResult, ReferenceSummary, pass_rule, summarize
from scoresample.posteriordb.loader import ENV_VAR, Posterior, find_root, list_posteriors, load
from scoresample.posteriordb.models import MODELS, ModelSpec

__all__ = ["load", "list_posteriors", "find_root", "Posterior", "pass_rule", "PassResult",
           "ReferenceSummary", "summarize", "MODELS", "ModelSpec", "ENV_VAR", "resolve_model",
           "LogDensityAdapter"]
