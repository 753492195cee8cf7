"""Models for :func:`scoresample.sample`: a log-density on R^d, starting points, and the map of
draws back to the reported (constrained, named) variables."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from scoresample.base import check_callable, is_typed_key

__all__ = ["PreparedModel", "prepare_model", "check_model_inputs"]

# =============================================================================================
# Models: a log-density on R^d, starting points, and the map of draws to reported variables.
# =============================================================================================


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedModel:
    """A model reduced to what the samplers need.

    ``logdensity_fn(x)`` on flat unconstrained ``x`` of shape (dim,); ``init_fn(rng_key)`` a start for
    one chain; ``to_output(x)`` the reported variables (dict name -> array) of one flat draw;
    ``dims`` the dimension names of each reported variable; ``kind`` and ``description`` for reports.
    """

    logdensity_fn: Callable
    dim: int
    init_fn: Callable
    to_output: Callable
    dims: dict
    kind: str
    description: str
    unconstrained: Callable | None = None  # x -> dict of unconstrained variables, or None
    unconstrained_dims: dict = dataclasses.field(default_factory=dict)


def _is_numpyro_model(model, model_args, model_kwargs) -> bool:
    try:
        import numpyro
    except ImportError:  # pragma: no cover - numpyro is a dependency
        return False
    try:
        with numpyro.handlers.block():
            trace = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(
                *model_args, **model_kwargs)
    except Exception:
        return False
    return any(site["type"] == "sample" and not site.get("is_observed", False)
               for site in trace.values())


def _leaf_names(tree) -> list[str]:
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    names = []
    for path, _ in paths:
        if not path:
            names.append("x")
            continue
        parts = []
        for entry in path:
            if isinstance(entry, jax.tree_util.DictKey):
                parts.append(str(entry.key))
            elif isinstance(entry, jax.tree_util.GetAttrKey):
                parts.append(str(entry.name))
            elif isinstance(entry, jax.tree_util.SequenceKey):
                parts.append(f"x{entry.idx}" if not parts else str(entry.idx))
            else:
                parts.append(str(entry).strip("[]."))
        names.append(".".join(parts))
    return names


def _default_dims(example: dict) -> dict:
    return {name: [f"{name}_dim_{i}" for i in range(np.ndim(value))]
            for name, value in example.items()}


def check_model_inputs(model, model_args=(), model_kwargs=None, init=None) -> None:
    """The checks of :func:`prepare_model` that need no tracing: argument types, and a concrete
    ``init`` given as an array or a non-dict pytree (a dict may be a NumPyro model's site values,
    which are checked by NumPyro). Run with NumPy only, before any key is split."""
    if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
        raise TypeError(f"model_kwargs must be a dict, got {type(model_kwargs).__name__}")
    if not isinstance(model_args, (tuple, list)):
        raise TypeError(f"model_args must be a tuple, got {type(model_args).__name__}")
    if not (hasattr(model, "logdensity_fn") and callable(model.logdensity_fn)):
        check_callable("model", model)
    if init is not None and not callable(init) and not isinstance(init, Mapping):
        _check_init_values(init)


def prepare_model(rng_key, model, *, model_args=(), model_kwargs=None, init=None) -> PreparedModel:
    """Reduce ``model`` (log-density callable, NumPyro model, or posterior object) to a flat model.

    See :func:`sample` for what each kind of model and ``init`` may be.
    """
    check_model_inputs(model, model_args, model_kwargs, init)
    model_kwargs = {} if model_kwargs is None else dict(model_kwargs)

    # a posterior object (scoresample.posteriordb.Posterior or anything shaped like it)
    if hasattr(model, "logdensity_fn") and callable(model.logdensity_fn):
        if model_args or model_kwargs:
            raise ValueError("model_args/model_kwargs are only for NumPyro models")
        logdensity = model.logdensity_fn
        if init is None:
            if not hasattr(model, "initial_position"):
                raise ValueError("init is required: the model object has no initial_position()")
            init = model.initial_position()
        _check_init_values(init)
        start_flat, unravel = ravel_pytree(init)
        flat_logdensity = lambda x: logdensity(unravel(x))  # noqa: E731
        if hasattr(model, "constrain"):
            def to_output(x):
                return dict(model.constrain(unravel(x)))
        else:
            names = _leaf_names(init)

            def to_output(x):
                return dict(zip(names, jax.tree_util.tree_leaves(unravel(x))))
        start = jnp.asarray(start_flat)
        example = jax.eval_shape(to_output, start)
        _check_start(flat_logdensity, start)
        unconstrained = (lambda x: {"z": x}) if hasattr(model, "constrain") else None
        return PreparedModel(flat_logdensity, int(start.shape[0]), lambda key: start, to_output,
                             _default_dims(example), "posterior",
                             str(getattr(model, "name", type(model).__name__)), unconstrained,
                             {"z": ["z_dim_0"]})

    check_callable("model", model)
    if _is_numpyro_model(model, model_args, model_kwargs):
        return _prepare_numpyro(rng_key, model, model_args, model_kwargs, init)
    if model_args or model_kwargs:
        raise ValueError("model_args/model_kwargs were given but model is not a NumPyro model "
                         "(tracing it found no latent sample site)")
    if init is None:
        raise ValueError("init is required when model is a log-density callable: pass one "
                         "position (array or pytree) or a function rng_key -> position")
    if callable(init):
        example = init(jax.random.key(0) if is_typed_key(rng_key) else jax.random.PRNGKey(0))
        _check_init_values(example, "init(rng_key)")
        start_flat, unravel = ravel_pytree(example)

        def init_fn(key):
            return ravel_pytree(init(key))[0]
    else:
        _check_init_values(init)
        start_flat, unravel = ravel_pytree(init)
        start_flat = jnp.asarray(start_flat)

        def init_fn(key):
            del key
            return start_flat
    if start_flat.size == 0:
        raise ValueError("init has no entries: the model has dimension 0")
    if not jnp.issubdtype(start_flat.dtype, jnp.floating):
        raise TypeError(f"init must hold floating-point values, got dtype {start_flat.dtype}")
    flat_logdensity = lambda x: model(unravel(x))  # noqa: E731
    out = jax.eval_shape(flat_logdensity, start_flat)
    if out.shape != ():
        raise ValueError(f"model (the log-density) must return a scalar, returned shape {out.shape}")
    names = _leaf_names(unravel(start_flat))

    def to_output(x):
        return dict(zip(names, jax.tree_util.tree_leaves(unravel(x))))

    if not callable(init):
        _check_start(flat_logdensity, start_flat)
    example = jax.eval_shape(to_output, start_flat)
    return PreparedModel(flat_logdensity, int(start_flat.shape[0]), init_fn, to_output,
                         _default_dims(example), "logdensity", getattr(model, "__name__", "logdensity"))


def _check_init_values(init, name: str = "init"):
    """A starting position (array or pytree) must be real floating point and finite.

    Checked with NumPy on the concrete values, before anything is traced or compiled. As
    ``ravel_pytree`` does, the leaves' common dtype decides (an int leaf beside floats is fine).
    """
    leaves = jax.tree_util.tree_leaves(init)
    if not leaves:
        raise ValueError(f"{name} has no entries: the model has dimension 0")
    try:
        arrays = [np.asarray(leaf) for leaf in leaves]
    except Exception as err:
        raise TypeError(f"{name} must be an array or a pytree of arrays, got "
                        f"{type(init).__name__}") from err
    dtype = np.result_type(*arrays)
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"{name} must hold real floating-point values, got dtype {dtype} "
                        "(cast it, e.g. jnp.asarray(x, float))")
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise ValueError(f"{name} contains non-finite values")


def _check_start(flat_logdensity, start):
    if not bool(jnp.all(jnp.isfinite(start))):
        raise ValueError("init contains non-finite values")
    grad = jax.grad(flat_logdensity)(start)
    if not bool(jnp.all(jnp.isfinite(grad))):
        raise ValueError("init: the gradient of the log-density is not finite at the starting "
                         "position; choose another init")


def _prepare_numpyro(rng_key, model, model_args, model_kwargs, init) -> PreparedModel:
    from numpyro.infer import init_to_uniform, init_to_value
    from numpyro.infer.util import initialize_model

    if init is not None and not isinstance(init, dict):
        raise TypeError("init for a NumPyro model must be a dict of site values (constrained)")
    strategy = init_to_value(values=init) if init is not None else init_to_uniform()
    key0 = jax.random.key_data(rng_key) if is_typed_key(rng_key) else rng_key
    info, potential_fn, postprocess_fn, _ = initialize_model(
        key0, model, model_args=tuple(model_args), model_kwargs=model_kwargs,
        init_strategy=strategy, dynamic_args=False)
    z0 = info.z
    start_flat, unravel = ravel_pytree(z0)

    def flat_logdensity(x):
        return -potential_fn(unravel(x))

    def init_fn(key):
        # init_to_uniform: each chain its own uniform(-2, 2) draw on the unconstrained scale,
        # as NumPyro does; a given init is used for every chain.
        if init is not None:
            return start_flat
        return jax.random.uniform(key, start_flat.shape, start_flat.dtype, -2.0, 2.0)

    def to_output(x):
        return dict(postprocess_fn(unravel(x)))

    def unconstrained(x):
        return dict(unravel(x))

    example = jax.eval_shape(to_output, start_flat)
    name = getattr(model, "__name__", "numpyro_model")
    return PreparedModel(flat_logdensity, int(start_flat.shape[0]), init_fn, to_output,
                         _default_dims(example), "numpyro", name, unconstrained,
                         _default_dims(jax.eval_shape(unconstrained, start_flat)))
