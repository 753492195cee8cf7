"""Diffusion sampling on a score: the method table and one call for all methods.

``sample(rng_key, method, score_fn, dim=..., num_samples=..., **options)`` builds the method's plan
(a BlackJAX-style kernel with its time grid closed over, see :class:`scoresample.base.DiffusionPlan`),
runs it on every particle with :func:`scoresample.driver.scan_particles`, and counts what ran.

Example:
    >>> from scoresample import diffusion, targets
    >>> mix = targets.four_modes_2d()
    >>> res = diffusion.sample(jax.random.key(0), "ddpm", mix.score, dim=2, num_samples=1000, nfe=100)
    >>> res.samples.shape, res.nfe
    ((1000, 2), 100.0)
"""

from __future__ import annotations

import importlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scoresample.base import (
    DiffusionPlan,
    check_callable,
    check_in,
    check_int,
    check_key,
)
from scoresample.driver import scan_particles

__all__ = ["sample", "build_plan", "METHODS", "DiffusionResult", "cld"]

# name -> "module:plan_function"; each plan function has the signature
#   plan(score_fn, *, dim, energy_fn=None, **options) -> DiffusionPlan
# and validates its own options (raising ValueError/TypeError naming the option).
METHODS: dict[str, str] = {
    "ddpm": "scoresample.kernels.baselines:ddpm_plan",
    "ddpm-large": "scoresample.kernels.baselines:ddpm_large_plan",
    "ei": "scoresample.kernels.baselines:ei_plan",
    "pf-ode": "scoresample.kernels.baselines:pf_ode_plan",
    "ddim": "scoresample.kernels.baselines:ddim_plan",
    "dpm-solver++": "scoresample.kernels.baselines:dpm_solver_pp_plan",
    "rtk-mala": "scoresample.kernels.rtk:rtk_mala_plan",
    "rtk-uld": "scoresample.kernels.rtk:rtk_uld_plan",
    "fors": "scoresample.kernels.fors:fors_diffusion_plan",
    "picard-sde": "scoresample.kernels.picard:picard_sde_plan",
    "picard-ode": "scoresample.kernels.picard:picard_ode_plan",
    "paradigms": "scoresample.kernels.picard:paradigms_plan",
}


class DiffusionResult(NamedTuple):
    """What ``diffusion.sample`` returns.

    - ``samples``: (num_samples, dim).
    - ``nfe``: mean number of score evaluations executed per sample (float).
    - ``rounds``: sequential rounds of batched evaluation for the whole batch (sum over steps of the
      largest per-particle round count of each step).
    - ``info``: the method's per-step Info, stacked as (num_steps, num_samples, ...).
    - ``is_divergent``: (num_samples,) True where a non-finite value was met; such samples are kept
      for inspection but flagged, never silently counted as good draws.
    - ``settings``: the resolved options (grid, step sizes) and ``wall_time`` in seconds.
    """

    samples: jax.Array
    nfe: float
    rounds: int
    info: Any
    is_divergent: jax.Array
    settings: dict


def _plan_fn(method: str):
    check_in("method", method, METHODS)
    module, name = METHODS[method].split(":")
    return getattr(importlib.import_module(module), name)


def _output_shape(name, fn, dim):
    """Trace ``fn(x, t)`` abstractly (nothing is compiled) and return its output shape."""
    check_callable(name, fn)
    try:
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct((dim,), jnp.result_type(float)),
                             jax.ShapeDtypeStruct((), jnp.result_type(float)))
    except Exception as err:
        raise ValueError(f"{name}(x, t) failed for x of shape ({dim},) (is dim={dim} right?): "
                         f"{type(err).__name__}: {err}") from err
    return getattr(out, "shape", type(out).__name__)


def _check_score_fn(name, fn, dim):
    shape = _output_shape(name, fn, dim)
    if shape != (dim,):
        raise ValueError(f"{name}(x, t) must return an array of shape ({dim},) for x of shape "
                         f"({dim},), got {shape}")


def _check_energy_fn(fn, dim):
    shape = _output_shape("energy_fn", fn, dim)
    if shape != ():
        raise ValueError(f"energy_fn(x, t) must return a scalar, got shape {shape}")


def build_plan(method: str, score_fn, *, dim: int, energy_fn=None, **options) -> DiffusionPlan:
    """Validate the inputs and build ``method``'s plan (nothing is compiled here)."""
    plan_fn = _plan_fn(method)
    dim = check_int("dim", dim)
    _check_score_fn("score_fn", score_fn, dim)
    if energy_fn is not None:
        _check_energy_fn(energy_fn, dim)
    return plan_fn(score_fn, dim=dim, energy_fn=energy_fn, **options)


def run_plan(rng_key, plan: DiffusionPlan, num_samples: int, *, progress_bar: bool = False,
             label: str = "diffusion") -> DiffusionResult:
    """Run a built plan on ``num_samples`` particles and count what ran."""
    num_samples = check_int("num_samples", num_samples)
    start = time.perf_counter()

    def init_fn(key):
        return plan.algorithm.init(plan.init_position(key))

    states, infos = scan_particles(rng_key, init_fn, plan.algorithm.step, num_samples,
                                   plan.num_steps, progress_bar=progress_bar, label=label)
    samples = jax.vmap(plan.finalize)(states)
    samples = jax.block_until_ready(samples)
    wall = time.perf_counter() - start
    evals = jnp.sum(infos.num_grad_evals, axis=0)  # per particle
    rounds = int(np.sum(np.max(np.asarray(infos.num_rounds), axis=1)))
    divergent = jnp.any(infos.is_divergent, axis=0) | ~jnp.all(jnp.isfinite(samples), axis=-1)
    settings = dict(plan.settings, wall_time=wall)
    return DiffusionResult(samples, float(jnp.mean(evals)), rounds, infos, divergent, settings)


def sample(rng_key, method: str, score_fn, *, dim: int, num_samples: int, energy_fn=None,
           progress_bar: bool = False, **options) -> DiffusionResult:
    """Sample ``num_samples`` points from the data law whose score is ``score_fn`` with ``method``.

    Args:
        rng_key: a JAX PRNG key.
        method: one of :data:`METHODS` ("ddpm", "ddpm-large", "ei", "pf-ode", "ddim",
            "dpm-solver++", "rtk-mala", "rtk-uld", "fors", "picard-sde", "picard-ode", "paradigms").
        score_fn: ``score_fn(x, t) -> grad log p_t(x)`` for one point x of shape (dim,).
        dim: the data dimension.
        num_samples: number of independent samples.
        energy_fn: optional ``energy_fn(x, t) = -log p_t(x) + c(t)`` (RTK-MALA uses it).
        **options: the method's options: ``nfe``, ``t_min``, ``t_max`` for fixed-cost methods,
            ``delta`` for "fors", ``num_steps`` for the Picard methods, and method-specific ones.

    Returns:
        :class:`DiffusionResult` with ``samples``, ``nfe``, ``rounds``, ``info``.
    """
    check_key("rng_key", rng_key)
    num_samples = check_int("num_samples", num_samples)
    plan = build_plan(method, score_fn, dim=dim, energy_fn=energy_fn, **options)
    return run_plan(rng_key, plan, num_samples, progress_bar=progress_bar, label=method)


def cld(rng_key, velocity_score_fn, *, dim: int, num_samples: int, **options):
    """Critically damped Langevin diffusion sampled with SSCS; see :mod:`scoresample.kernels.cld`."""
    from scoresample.kernels.cld import cld_sample

    return cld_sample(rng_key, velocity_score_fn, dim=dim, num_samples=num_samples, **options)
