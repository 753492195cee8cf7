"""Shared types of every sampler: the BlackJAX-style API object, diffusion states and input checks.

Every sampler in scoresample is written in BlackJAX's three layers: ``State``/``Info`` NamedTuples,
``init(position, ...)`` and ``build_kernel(...) -> kernel(rng_key, state, <fn>, <params>)``, and a
top-level function closing over the model. :class:`KernelAPI` bundles the three, exactly as
``blackjax.mala`` does, so that ``scoresample.rtk(logdensity_fn, step_size)`` returns a
``SamplingAlgorithm`` and ``scoresample.rtk.build_kernel()`` gives the raw kernel.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.base import SamplingAlgorithm

__all__ = [
    "SamplingAlgorithm",
    "KernelAPI",
    "DiffusionState",
    "DiffusionPlan",
    "all_finite",
    "check_positive",
    "check_nonnegative",
    "check_int",
    "check_in",
    "check_array",
    "check_callable",
    "check_key",
    "check_bool",
    "check_position",
    "check_times",
    "check_parameter",
    "is_typed_key",
    "key_bits",
    "jsonable",
]

Array = jax.Array
PyTree = Any


@dataclasses.dataclass(frozen=True)
class KernelAPI:
    """A sampler's public object: call it for a ``SamplingAlgorithm``; ``.init`` and ``.build_kernel``.

    Mirrors ``blackjax.GenerateSamplingAPI`` (which BlackJAX does not export).
    """

    top_level: Callable[..., SamplingAlgorithm]
    init: Callable
    build_kernel: Callable

    def __call__(self, *args, **kwargs) -> SamplingAlgorithm:
        return self.top_level(*args, **kwargs)


class DiffusionState(NamedTuple):
    """State of one particle of a reverse-diffusion sampler.

    ``step`` indexes the sampler's time grid (0 is the first reverse step, from t_max);
    ``aux`` holds what a multistep method carries (e.g. the previous denoiser output), or ``()``.
    """

    position: Array  # shape=(d,)
    step: Array  # shape=(), int32
    aux: PyTree = ()


class DiffusionPlan(NamedTuple):
    """What ``diffusion.sample`` needs from a method: a kernel with its grid already closed over.

    - ``init_position(rng_key) -> x_T`` draws one particle's start (N(0, I) for OU samplers).
    - ``algorithm.init(x_T) -> state`` and ``algorithm.step(rng_key, state) -> (state, info)``;
      every info has ``num_grad_evals`` (evaluations executed in that step), ``num_rounds``
      (sequential rounds of batched evaluation in that step) and ``is_divergent``.
    - ``num_steps``: how many times ``step`` is applied.
    - ``finalize(state) -> sample`` (e.g. drop the velocity of CLD).
    - ``settings``: the resolved options (grid sizes, step sizes) for reports.
    """

    init_position: Callable[[Array], Array]
    algorithm: SamplingAlgorithm
    num_steps: int
    finalize: Callable[[Any], Array]
    settings: dict


def all_finite(tree: PyTree) -> Array:
    """True where every leaf of ``tree`` is finite (a traced boolean scalar)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


# ---------------------------------------------------------------------------------------------
# Input checks. They run in Python on concrete values, before anything is traced or compiled,
# and every message names the argument.
# ---------------------------------------------------------------------------------------------


def _as_float(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got a boolean {value!r}")
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"{name} must be a concrete number, not a traced value")
    try:
        arr = np.asarray(value)
    except Exception as err:  # pragma: no cover - exotic objects
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from err
    if arr.shape != () or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"{name} must be a real scalar, got {value!r}")
    out = float(arr)
    if not np.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def check_positive(name: str, value) -> float:
    """Return ``value`` as a float, raising if it is not a finite number > 0."""
    out = _as_float(name, value)
    if out <= 0:
        raise ValueError(f"{name} must be > 0, got {out}")
    return out


def check_parameter(name: str, value, *, minimum: str = "positive"):
    """A kernel parameter that may be traced: concrete values are checked (finite, > 0, or >= 0
    with ``minimum="nonnegative"``) and returned as floats; traced values (a user's ``jit`` or
    ``vmap`` over step sizes, or a warmup's dual averaging) pass through unchanged."""
    if isinstance(value, jax.core.Tracer):
        return value
    if isinstance(value, jax.Array) and value.shape == ():
        value = float(value)
    if minimum == "nonnegative":
        return check_nonnegative(name, value)
    return check_positive(name, value)


def check_nonnegative(name: str, value) -> float:
    out = _as_float(name, value)
    if out < 0:
        raise ValueError(f"{name} must be >= 0, got {out}")
    return out


def check_int(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` as an int, raising if it is not an integer >= ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_in(name: str, value, choices) -> Any:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {sorted(choices)}")
    return value


def check_array(name: str, value, *, ndim: int | None = None, shape: tuple | None = None,
                finite: bool = True) -> np.ndarray:
    """Check a concrete array argument (numeric, shape, finite) and return it as numpy."""
    if isinstance(value, jax.core.Tracer):
        return value  # traced inside a user's jit: shapes were already fixed by the caller
    try:
        arr = np.asarray(value)
    except Exception as err:
        raise TypeError(f"{name} must be an array, got {type(value).__name__}") from err
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if shape is not None:
        for want, got in zip(shape, arr.shape):
            if want is not None and want != got:
                raise ValueError(f"{name} must have shape {shape} (None = any), got {arr.shape}")
        if len(shape) != arr.ndim:
            raise ValueError(f"{name} must have shape {shape} (None = any), got {arr.shape}")
    if finite and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def check_callable(name: str, fn) -> Callable:
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    return fn


def check_key(name: str, key) -> Array:
    """Accept a new-style typed key or a raw uint32[2] key."""
    if isinstance(key, jax.core.Tracer):
        return key
    if hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    arr = np.asarray(key) if not isinstance(key, int) else None
    if arr is None or arr.dtype != np.uint32 or arr.shape != (2,):
        raise TypeError(f"{name} must be a JAX PRNG key (jax.random.key or jax.random.PRNGKey), "
                        f"got {key!r}")
    return key


def check_times(t_min, t_max) -> tuple[float, float]:
    """Check a diffusion time window: 0 < t_min < t_max, both finite; returns the floats."""
    t_min = check_positive("t_min", t_min)
    t_max = check_positive("t_max", t_max)
    if t_min >= t_max:
        raise ValueError(f"t_min must be < t_max, got t_min={t_min}, t_max={t_max}")
    return t_min, t_max


def check_bool(name: str, value) -> bool:
    """Return ``value`` as a bool, raising TypeError unless it is a Python or NumPy boolean."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a boolean (True or False), got {value!r}")
    return bool(value)


def check_position(name: str, position):
    """Check a concrete starting position (array or pytree): real floating point and finite.

    Traced leaves (inside a user's ``jit`` or ``vmap``) pass through unchecked; nothing is
    compiled (concrete leaves are read with NumPy). Returns ``position`` unchanged.
    """
    leaves = jax.tree_util.tree_leaves(position)
    if not leaves:
        raise ValueError(f"{name} holds no arrays")
    for leaf in leaves:
        if isinstance(leaf, jax.core.Tracer):
            continue
        try:
            arr = np.asarray(leaf)
        except Exception as err:
            raise TypeError(f"{name} must hold arrays, got {type(leaf).__name__}") from err
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"{name} must hold real floating-point values, got dtype {arr.dtype} "
                            "(cast it, e.g. jnp.asarray(x, float))")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains non-finite values")
    return position


# ---------------------------------------------------------------------------------------------
# Keys and JSON: one helper each for what drivers store in attrs and checkpoints.
# ---------------------------------------------------------------------------------------------


def is_typed_key(key) -> bool:
    """True for a new-style typed key (``jax.random.key``), False for a raw uint32[2] key."""
    return hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


def key_bits(key) -> np.ndarray:
    """The raw uint32 bits of a typed key or of a legacy uint32[2] key (for records and hashes)."""
    return np.asarray(jax.random.key_data(key) if is_typed_key(key) else key, dtype=np.uint32)


def jsonable(obj):
    """``obj`` with NumPy and JAX scalars and arrays turned into Python values (dicts and lists
    recursively, keys as strings); anything else that JSON cannot hold becomes its ``repr``."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, jax.Array)):
        return np.asarray(obj).tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)
