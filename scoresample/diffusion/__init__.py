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
import inspect
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scoresample.autobatch import MachinePlan, run_autobatched, run_lockstep
from scoresample.base import (
    DiffusionPlan,
    check_bool,
    check_callable,
    check_in,
    check_int,
    check_key,
)
from scoresample.driver import scan_particles
from scoresample.kernels.cld import cld_plan

__all__ = ["sample", "build_plan", "run_plan", "run_machine_plan", "reduce_info", "METHODS",
           "DiffusionResult", "cld"]

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
    - ``nfe``: mean number of score evaluations executed per sample (float). The particles run in
      lockstep under ``jax.vmap`` (on an accelerator and when sharded over devices alike): a step
      whose work depends on the data (a ``while_loop``: Picard iterations in tolerance mode,
      ParaDiGMS rounds, FORS proposals and coins) runs every particle until the slowest is done,
      and the finished particles' evaluations are computed and masked. Each step therefore counts
      the largest per-particle ``num_grad_evals`` of that step, for every particle; ``nfe`` is the
      sum of those over steps. (Exact for every method here, whose data-dependent work per step is
      one loop costing a fixed number of evaluations per iteration.)
    - ``rounds``: sequential rounds of batched evaluation for the whole batch (sum over steps of the
      largest per-particle round count of each step).
    - ``info``: the method's Info NamedTuple, one value per step (leading axis num_steps), reduced
      over the particles: ``num_grad_evals`` and ``num_rounds`` are what every particle executed in
      that step (the per-step maxima above, so ``sum(info.num_grad_evals) == nfe`` and
      ``sum(info.num_rounds) == rounds``); every other field is its mean over the particles (a
      boolean becomes the fraction of particles). With ``per_particle_info=True`` it is instead
      the kernel's per-particle Info stacked as (num_steps, num_samples, ...), whose
      ``num_grad_evals`` is what each particle's own loop ran (what it would execute alone).
    - ``is_divergent``: (num_samples,) True where a non-finite value was met; such samples are kept
      for inspection but flagged, never silently counted as good draws.
    - ``settings``: the resolved options (grid, step sizes) and ``wall_time`` in seconds.
    - ``nfe_needed``: mean over particles of the evaluations each particle's own loops needed (the
      sum of its per-particle ``num_grad_evals``): what a particle would cost run alone. It equals
      ``nfe`` for fixed-cost methods and is at most ``nfe`` otherwise.

    A plan whose kernel is a state machine (:class:`scoresample.autobatch.MachinePlan`: "fors")
    runs on the autobatching driver instead of in lockstep (:mod:`scoresample.autobatch`). Then
    ``nfe`` is what the batch executed per sample (every lane of every iteration, idle lanes
    included, and the pilot's evaluations divided by ``num_samples``), ``nfe_needed`` what the
    particles needed (plus the pilot's share), ``rounds`` the sequential rounds of batched
    evaluation (pilot included), and ``info`` holds, per step, the mean over particles of each
    field (``sum(info.num_grad_evals)`` is what a particle needed on average, without the pilot);
    with ``per_particle_info=True`` the per-particle Info of every step, (num_steps, num_samples).
    """

    samples: jax.Array
    nfe: float
    rounds: int
    info: Any
    is_divergent: jax.Array
    settings: dict
    nfe_needed: float


# Counts that every particle of a vmapped batch executes as often as the slowest particle does.
EXECUTED_COUNTS = ("num_grad_evals", "num_rounds")


def reduce_info(infos):
    """Reduce a batched Info (leading particle axis) to one value per field, as ``DiffusionResult``.

    ``num_grad_evals`` and ``num_rounds`` become their maximum over the particles (what the batch
    executed per particle); every other field its mean over the particles (booleans: the fraction).
    """

    def mean(x):
        x = jnp.asarray(x)
        if not (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == jnp.bool_):
            return x
        return jnp.mean(x.astype(jnp.result_type(float)), axis=0)

    fields = getattr(infos, "_fields", None)
    if fields is None:
        return jax.tree_util.tree_map(mean, infos)
    reduced = {name: (jnp.max(getattr(infos, name), axis=0) if name in EXECUTED_COUNTS
                      else jax.tree_util.tree_map(mean, getattr(infos, name)))
               for name in fields}
    return infos._replace(**reduced)


def _plan_fn(method: str):
    check_in("method", method, METHODS)
    module, name = METHODS[method].split(":")
    return getattr(importlib.import_module(module), name)


def _output_shape(name, fn, dim):
    """Trace ``fn(x, t)`` abstractly (nothing is compiled) and return its output shape; the output
    must be real floating point."""
    check_callable(name, fn)
    try:
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct((dim,), jnp.result_type(float)),
                             jax.ShapeDtypeStruct((), jnp.result_type(float)))
    except Exception as err:
        raise ValueError(f"{name}(x, t) failed for x of shape ({dim},) (is dim={dim} right?): "
                         f"{type(err).__name__}: {err}") from err
    dtype = getattr(out, "dtype", None)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name}(x, t) must return real floating-point values, got dtype {dtype}")
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
    _check_options(method, plan_fn, options)
    return plan_fn(score_fn, dim=dim, energy_fn=energy_fn, **options)


def _check_options(method: str, plan_fn, options: dict) -> None:
    """An option that ``method``'s plan does not take is a TypeError naming it and the valid ones,
    raised before anything is built. (``dim`` and ``energy_fn`` are build_plan's own arguments.)"""
    params = inspect.signature(plan_fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = sorted(set(params) - {"score_fn", "dim", "energy_fn"})
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(map(repr, unknown))} for method "
                        f"{method!r}; its options are {', '.join(valid)}")


def run_plan(rng_key, plan: DiffusionPlan, num_samples: int, *, progress_bar: bool = False,
             label: str = "diffusion", per_particle_info: bool = False) -> DiffusionResult:
    """Run a built plan on ``num_samples`` particles and count what ran.

    The per-step Info is reduced over the particles inside the compiled scan (memory O(num_steps),
    see :class:`DiffusionResult`); ``per_particle_info=True`` keeps all of it, O(num_steps x
    num_samples). Each particle also carries the running sum of its own ``num_grad_evals`` and an
    ``is_divergent`` flag, which give ``nfe_needed`` and ``is_divergent``. A plan whose kernel
    shards a time axis (Picard) gives its length as ``settings["time_axis_size"]``; with several
    devices particles and time then share one 2-D mesh (:mod:`scoresample.parallel`).
    """
    num_samples = check_int("num_samples", num_samples)
    progress_bar = check_bool("progress_bar", progress_bar)
    per_particle_info = check_bool("per_particle_info", per_particle_info)
    if isinstance(plan, MachinePlan):
        return run_machine_plan(rng_key, plan, num_samples, per_particle_info=per_particle_info)
    start = time.perf_counter()

    def init_fn(key):
        state = plan.algorithm.init(plan.init_position(key))
        return state, jnp.zeros((), jnp.int32), jnp.zeros((), bool)

    def step_fn(key, carry):
        state, needed, divergent = carry
        state, info = plan.algorithm.step(key, state)
        needed = needed + jnp.asarray(info.num_grad_evals, jnp.int32)
        return (state, needed, divergent | jnp.asarray(info.is_divergent, bool)), info

    (states, needed, divergent), infos = scan_particles(
        rng_key, init_fn, step_fn, num_samples, plan.num_steps, progress_bar=progress_bar,
        label=label, info_transform=None if per_particle_info else reduce_info,
        time_size=plan.settings.get("time_axis_size"))
    samples = jax.vmap(plan.finalize)(states)
    samples = jax.block_until_ready(samples)
    wall = time.perf_counter() - start
    # what the batch executed per particle in each step, summed over steps
    evals = np.asarray(infos.num_grad_evals, dtype=np.int64)
    rounds = np.asarray(infos.num_rounds, dtype=np.int64)
    if per_particle_info:
        evals, rounds = np.max(evals, axis=1), np.max(rounds, axis=1)
    divergent = divergent | ~jnp.all(jnp.isfinite(samples), axis=-1)
    settings = dict(plan.settings, wall_time=wall)
    return DiffusionResult(samples, float(np.sum(evals)), int(np.sum(rounds)), infos, divergent,
                           settings, float(np.mean(np.asarray(needed, dtype=np.float64))))


PILOT_FOLD = 0xFFFFFFFF  # the pilot's key is fold_in(rng_key, PILOT_FOLD): no particle's index


def _step_info(carry, info):
    """Keep each step's info (one module-level function: the driver reuses its program)."""
    del carry
    return info


def run_machine_plan(rng_key, plan: MachinePlan, num_samples: int, *,
                     per_particle_info: bool = False) -> DiffusionResult:
    """Run a :class:`~scoresample.autobatch.MachinePlan`: its pilot (if any), then its machine on
    ``num_samples`` particles with the autobatching (or lockstep) driver. See
    :class:`DiffusionResult` for what the counts mean."""
    start = time.perf_counter()
    pilot = None
    if plan.pilot is not None:
        pilot = run_autobatched(jax.random.fold_in(rng_key, PILOT_FOLD), plan.pilot,
                                plan.pilot_size, num_lanes=plan.num_lanes)
    machine, decided = plan.build(pilot)
    record = _step_info if per_particle_info else None
    if plan.driver == "lockstep":
        out = run_lockstep(rng_key, machine, num_samples, record_fn=record)
    else:
        out = run_autobatched(rng_key, machine, num_samples, num_lanes=plan.num_lanes,
                              record_fn=record)
    samples = jax.block_until_ready(jax.vmap(plan.finalize)(out.carries))
    wall = time.perf_counter() - start
    pilot_executed = 0 if pilot is None else pilot.num_executed
    pilot_needed = 0 if pilot is None else int(np.sum(np.asarray(pilot.num_needed, np.int64)))
    pilot_rounds = 0 if pilot is None else pilot.num_iterations
    needed = float(np.mean(np.asarray(out.num_needed, dtype=np.float64)))
    if per_particle_info:
        infos = out.records
    else:
        infos = jax.tree_util.tree_map(lambda a: np.asarray(a) / num_samples, out.step_sums)
    divergent = out.is_divergent | ~jnp.all(jnp.isfinite(samples), axis=-1)
    settings = dict(plan.settings, **decided, wall_time=wall, num_lanes=out.num_lanes,
                    nfe_pilot=pilot_executed, rounds_pilot=pilot_rounds,
                    nfe_executed_run=out.num_executed / num_samples, nfe_needed_run=needed)
    return DiffusionResult(samples, (out.num_executed + pilot_executed) / num_samples,
                           int(out.num_iterations + pilot_rounds), infos, divergent, settings,
                           needed + pilot_needed / num_samples)


def sample(rng_key, method: str, score_fn, *, dim: int, num_samples: int, energy_fn=None,
           progress_bar: bool = False, per_particle_info: bool = False,
           **options) -> DiffusionResult:
    """Sample ``num_samples`` points from the data law whose score is ``score_fn`` with ``method``.

    Args:
        rng_key: a JAX PRNG key.
        method: one of :data:`METHODS` ("ddpm", "ddpm-large", "ei", "pf-ode", "ddim",
            "dpm-solver++", "rtk-mala", "rtk-uld", "fors", "picard-sde", "picard-ode", "paradigms").
        score_fn: ``score_fn(x, t) -> grad log p_t(x)`` for one point x of shape (dim,).
        dim: the data dimension.
        num_samples: number of independent samples.
        energy_fn: optional ``energy_fn(x, t) = -log p_t(x) + c(t)`` (RTK-MALA uses it).
        progress_bar: show a tqdm bar over the steps.
        per_particle_info: keep the per-particle Info of every step (memory num_steps x
            num_samples) instead of its per-step reduction over particles (the default).
        **options: the method's options: ``nfe``, ``t_min``, ``t_max`` for fixed-cost methods,
            ``delta`` for "fors", ``num_steps`` for the Picard methods, and method-specific ones.

    Returns:
        :class:`DiffusionResult` with ``samples``, ``nfe`` (evaluations executed per sample),
        ``rounds``, ``info``, ``is_divergent``, ``settings``, ``nfe_needed``.
    """
    check_key("rng_key", rng_key)
    num_samples = check_int("num_samples", num_samples)
    progress_bar = check_bool("progress_bar", progress_bar)
    per_particle_info = check_bool("per_particle_info", per_particle_info)
    plan = build_plan(method, score_fn, dim=dim, energy_fn=energy_fn, **options)
    return run_plan(rng_key, plan, num_samples, progress_bar=progress_bar, label=method,
                    per_particle_info=per_particle_info)


def cld(rng_key, velocity_score_fn, *, dim: int, num_samples: int, nfe: int = 100,
        t_min: float | None = None, t_max: float | None = None, grid: str = "sqrt",
        progress_bar: bool = False) -> DiffusionResult:
    """Critically damped Langevin diffusion sampled with SSCS (:mod:`scoresample.kernels.cld`).

    Options as in :func:`scoresample.kernels.cld.cld_plan`. ``velocity_score_fn(x, v, t)`` is
    grad_v log p_t(x, v) for x and v of shape (dim,). ``samples`` holds x at t_min; ``nfe`` counts
    velocity-score evaluations per sample.

    Example:
        >>> from scoresample import diffusion, targets
        >>> exact = targets.CLDMixture(targets.four_modes_2d())
        >>> res = diffusion.cld(jax.random.key(0), exact.velocity_score, dim=2, num_samples=1000)
    """
    check_key("rng_key", rng_key)
    num_samples = check_int("num_samples", num_samples)
    plan = cld_plan(velocity_score_fn, dim=dim, nfe=nfe, t_min=t_min, t_max=t_max, grid=grid)
    return run_plan(rng_key, plan, num_samples, progress_bar=progress_bar, label="cld")
