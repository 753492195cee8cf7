"""Program-counter autobatching: random-cost kernels on many particles without lockstep waste.

A kernel whose cost is random (FORS: a random number of proposals and coins per step) wastes most
of a vmapped batch when it is run step by step: under ``jax.vmap`` a ``while_loop`` runs every
particle until the slowest is done, so each step costs the batch the maximum of a random cost.
Here such a kernel is written as a :class:`Machine`: each particle carries its own place in the
algorithm (its step index and the kernel's own program counter inside the step), and one *unit*
of work does exactly one evaluation of the score or gradient. :func:`run_autobatched` then runs a
single compiled ``while_loop`` whose every iteration advances each particle that still has work by
one unit (one batched evaluation); a particle that finishes a step starts its next step in the
next iteration, so the batch ends when the particle with the most *total* work ends, and a total
is a sum over hundreds of steps, close to its mean (Radul, Patton, Maclaurin, Hoffman, Saurous,
"Automatically batching control-intensive programs for modern accelerators", MLSys 2020, did this
for NUTS in TensorFlow Probability).

Lane pool: the loop keeps ``num_lanes`` lanes, fewer than the particles; a lane whose particle is
done takes the next particle not yet started (lanes that finish in the same iteration take
consecutive indices, by a prefix sum). The batch then waits only for the last ``num_lanes``
particles, so the executed work exceeds what the particles need by about ``num_lanes / (2 N)``
of it instead of by the spread of the slowest particle. With several devices each device runs
its own queue of the particles it holds (``jax.shard_map`` over the particle axis of
:func:`scoresample.parallel.particle_time_mesh`) and its own loop.

Randomness depends on the particle and the step only: particle i has the key
``fold_in(rng_key, i)`` and its step k the key ``fold_in(that, step_offset + k)``; inside a step
the kernel keys its draws by its own counters (FORS: the proposal and coin indices). So
:func:`run_autobatched` and :func:`run_lockstep` (the same machine, every particle run to the end
of step k before any starts step k + 1, the way ``jax.vmap`` runs the kernel) give the same draws,
and a particle's draws do not depend on the batch size, the lane count or the device count.

Counts: ``num_executed`` is what the loop evaluated (every lane in every iteration, idle lanes
included, so ``num_executed / N`` is the honest cost per particle); ``num_needed`` (per particle)
the units each particle used, what it costs run alone; ``num_iterations`` the sequential rounds
of batched evaluation.

Example:
    >>> out = run_autobatched(jax.random.key(0), machine, num_particles=10_000)
    >>> out.num_executed / 10_000, out.num_needed.mean()
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from scoresample.base import check_int
from scoresample.parallel import PARTICLES, gather, particle_time_mesh
from scoresample.prng import fold_in

__all__ = ["Machine", "MachinePlan", "BatchRun", "run_autobatched", "run_lockstep", "run_in_jit",
           "default_num_lanes", "step_bucket", "INIT_FOLD"]

Array = jax.Array

INIT_FOLD = 2**31 - 1  # a particle's init key is fold_in(particle_key, INIT_FOLD), as in driver.py


class Machine(NamedTuple):
    """A single-particle kernel with a random cost, as a state machine of one-evaluation units.

    Every function takes ``params`` first: the run's arrays (a grid, per-chain parameters), which
    the driver passes to the compiled loop as arguments, so that runs that differ only in them
    share one compiled program.

    - ``init(params, particle_key, index) -> carry``: particle ``index``'s start (no evaluation).
    - ``begin(params, step_key, carry, step) -> work``: start step ``step`` (no evaluation).
    - ``query(params, work, carry, step) -> (args, aux)``: the input of the unit's one
      evaluation, and what ``advance`` needs besides its value (draws made before it).
    - ``evaluate(params, args) -> value``: the evaluation (the score or the gradient).
    - ``advance(params, work, carry, step, aux, value) -> (work, carry, is_step_done, info)``:
      use the value; when ``is_step_done`` the returned carry is the particle's state after the
      step and ``info`` (a NamedTuple of arrays with an ``is_divergent`` field) describes it.
    - ``params``: the pytree of arrays above; ``num_steps``: steps per particle (an int, passed
      to the loop as an argument); ``max_steps``: the length of per-step buffers (static,
      at least ``num_steps``; a bucket such as :func:`step_bucket` lets grids of different
      lengths share a compiled program).
    - ``program_key``: None, or a hashable value that determines the five functions (for
      example the score function and the kernel's static options): machines with equal keys
      and equal ``max_steps`` reuse one traced and compiled loop (:func:`run_autobatched` and
      :func:`run_lockstep` keep the last :data:`PROGRAM_CACHE_SIZE`), so a repeated call pays
      neither tracing nor compilation.

    Every unit evaluates exactly once, whatever the kernel's program counter, so that a batch of
    particles at different places costs one batched evaluation per iteration.
    """

    init: Callable
    begin: Callable
    query: Callable
    evaluate: Callable
    advance: Callable
    params: Any
    num_steps: int
    max_steps: int
    program_key: Any = None


PROGRAM_CACHE_SIZE = 16
_PROGRAMS: dict = {}  # (program key, driver, sizes) -> (the jitted loop, the info's shapes)


class MachinePlan(NamedTuple):
    """A diffusion plan whose kernel is a :class:`Machine` (``diffusion.run_plan`` runs it here).

    The first five fields are those of :class:`scoresample.base.DiffusionPlan`; ``algorithm``
    and ``num_steps`` are None when the grid is only known after the pilot.

    - ``build(pilot) -> (machine, settings)``: the run's machine, from the pilot's
      :class:`BatchRun` (None when ``pilot`` is None), and the settings it decided.
    - ``pilot``: a machine run on ``pilot_size`` particles first (its evaluations count in the
      run's cost), or None.
    - ``num_lanes``: lanes of the pool (None: :func:`default_num_lanes`); ``driver``:
      ``"autobatch"`` or ``"lockstep"``.
    """

    init_position: Callable
    algorithm: Any
    num_steps: int | None
    finalize: Callable
    settings: dict
    build: Callable
    pilot: Machine | None
    pilot_size: int
    num_lanes: int | None
    driver: str


class BatchRun(NamedTuple):
    """What the drivers return (gathered to every host)."""

    carries: Any  # final carry of every particle, leading axis N
    num_needed: Array  # (N,) int: units (evaluations) each particle used
    is_divergent: Array  # (N,) bool: some step's info had is_divergent
    step_sums: Any  # the info with each field summed over particles, per step (num_steps, ...)
    records: Any  # record_fn(carry, info) per step and particle (num_steps, N, ...), or None
    num_executed: int  # evaluations the batch executed (idle and masked lanes included)
    num_iterations: int  # sequential rounds of batched evaluation (the largest over devices)
    num_lanes: int  # lanes in all (summed over devices)


def default_num_lanes(num_particles: int, fraction: float = 1 / 8, minimum: int = 256) -> int:
    """The lane count: ``fraction`` of the particles, at least ``minimum``, at most all of them."""
    num_particles = check_int("num_particles", num_particles)
    return int(min(num_particles, max(minimum, math.ceil(fraction * num_particles))))


def step_bucket(num_steps: int, minimum: int = 64) -> int:
    """The next power of two at or above ``num_steps`` (at least ``minimum``): a ``max_steps``
    shared by grids of similar lengths."""
    return max(minimum, 1 << max(0, int(num_steps) - 1).bit_length())


def _select(mask, new, old):
    def pick(a, b):
        m = jnp.reshape(mask, mask.shape + (1,) * (jnp.ndim(a) - mask.ndim))
        return jnp.where(m, a, b)

    return jax.tree_util.tree_map(pick, new, old)


def _info_vector(info, dtype):
    """One float vector of all the info's fields, raveled (the per-step sums)."""
    leaves = jax.tree_util.tree_leaves(info)
    return jnp.concatenate([jnp.ravel(jnp.asarray(leaf)).astype(dtype) for leaf in leaves])


def _info_unflatten(info_shape, sums):
    """The per-step sums (steps, F) back into the info's structure, each field (steps, ...)."""
    leaves, treedef = jax.tree_util.tree_flatten(info_shape)
    out, start = [], 0
    for leaf in leaves:
        size = int(np.prod(leaf.shape))
        out.append(np.reshape(sums[:, start:start + size], (sums.shape[0],) + tuple(leaf.shape)))
        start += size
    return jax.tree_util.tree_unflatten(treedef, out)


def _unit(machine: Machine, params, work, carry, step):
    """One unit on a batch of lanes: one batched evaluation."""
    # Barriers: XLA would otherwise fuse the draws and the evaluation into their many consumers
    # and recompute them per consumer element (measured: several times slower). They also fence
    # the unit off from the driver around it, so that both drivers compile its arithmetic alike
    # (the same contractions into fused multiply-adds) and give the same bits.
    args, aux = jax.lax.optimization_barrier(
        jax.vmap(machine.query, in_axes=(None, 0, 0, 0))(params, work, carry, step))
    value = jax.lax.optimization_barrier(
        jax.vmap(machine.evaluate, in_axes=(None, 0))(params, args))
    return jax.lax.optimization_barrier(jax.vmap(
        machine.advance, in_axes=(None, 0, 0, 0, 0, 0))(params, work, carry, step, aux, value))


def _shapes(machine: Machine, rng_key):
    """The abstract carry and info of one particle (nothing is evaluated)."""

    def one(key):
        carry = machine.init(machine.params, key, 0)
        step = jnp.zeros((), jnp.int32)
        work = machine.begin(machine.params, key, carry, step)
        args, aux = machine.query(machine.params, work, carry, step)
        value = machine.evaluate(machine.params, args)
        return carry, machine.advance(machine.params, work, carry, step, aux, value)[3]

    return jax.eval_shape(one, rng_key)


def _zeros(shape_tree, lead=()):
    return jax.tree_util.tree_map(lambda s: jnp.zeros(tuple(lead) + s.shape, s.dtype), shape_tree)


def _group_autobatched(machine: Machine, params, rng_key, num_steps, step_offset, group, *,
                       num_group: int, num_lanes: int, record_fn, dtype, particle_keys=None):
    """One device's queue: particles group * num_group ... + num_group - 1 on num_lanes lanes.
    Particle i's key is ``fold_in(rng_key, i)``, or ``particle_keys[i]`` when given."""
    max_steps = machine.max_steps
    first = group * num_group
    if particle_keys is not None:
        rng_key = particle_keys[0]
    carry_shape, info_shape = _shapes(machine, rng_key)
    num_fields = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(info_shape))
    keys = jnp.broadcast_to(rng_key, (num_lanes,) + jnp.shape(rng_key))  # placeholders
    carry = _zeros(carry_shape, (num_lanes,))
    step0 = jnp.zeros((num_lanes,), jnp.int32)
    work = jax.vmap(machine.begin, in_axes=(None, 0, 0, 0))(params, keys, carry, step0)
    records = None
    if record_fn is not None:
        rec = jax.eval_shape(record_fn, carry_shape, info_shape)
        records = _zeros(rec, (max_steps, num_group))

    def start(local):  # particle ``first + local``: its key and its initial carry
        key = (fold_in(rng_key, first + local) if particle_keys is None
               else particle_keys[first + local])
        return key, machine.init(params, key, first + local)

    # every particle's key and start, computed once: a refill (most iterations, when particles
    # are many) then gathers them instead of hashing and drawing on every lane
    start_keys, start_carries = jax.vmap(start)(jnp.arange(num_group, dtype=jnp.int32))

    # every lane starts empty and takes a particle in the first iteration
    state = dict(
        local=jnp.full((num_lanes,), num_group, jnp.int32), keys=keys, step=step0,
        active=jnp.zeros((num_lanes,), bool), empty=jnp.ones((num_lanes,), bool),
        is_new_step=jnp.ones((num_lanes,), bool), carry=carry, work=work,
        needed=jnp.zeros((num_lanes,), jnp.int32), divergent=jnp.zeros((num_lanes,), bool),
        out_carry=_zeros(carry_shape, (num_group,)),
        out_needed=jnp.zeros((num_group,), jnp.int32),
        out_divergent=jnp.zeros((num_group,), bool),
        sums=jnp.zeros((max_steps, num_fields), dtype), records=records,
        next_local=jnp.zeros((), jnp.int32), iterations=jnp.zeros((), jnp.int32))

    def flush(s):
        """Write the particles of empty lanes (finished, not yet written) to the outputs."""
        slot = jnp.where(s["empty"], s["local"], num_group)  # out of range: dropped
        return dict(
            s, out_carry=jax.tree_util.tree_map(lambda buf, c: buf.at[slot].set(c, mode="drop"),
                                                s["out_carry"], s["carry"]),
            out_needed=s["out_needed"].at[slot].set(s["needed"], mode="drop"),
            out_divergent=s["out_divergent"].at[slot].set(s["divergent"], mode="drop"))

    def refill(s):
        """Empty lanes write their particle out and take the next ones, in lane order."""
        s = flush(s)
        empty = s["empty"]
        local = s["next_local"] + jnp.cumsum(empty.astype(jnp.int32)) - 1
        takes = empty & (local < num_group)
        slot = jnp.minimum(local, num_group - 1)
        keys_new = start_keys[slot]
        carry_new = jax.tree_util.tree_map(lambda a: a[slot], start_carries)
        return dict(
            s, local=jnp.where(empty, jnp.where(takes, local, num_group), s["local"]),
            keys=_select(takes, keys_new, s["keys"]), carry=_select(takes, carry_new, s["carry"]),
            step=jnp.where(takes, 0, s["step"]), active=s["active"] | takes,
            empty=empty & ~takes, is_new_step=s["is_new_step"] | takes,
            needed=jnp.where(empty, 0, s["needed"]), divergent=s["divergent"] & ~empty,
            next_local=s["next_local"] + jnp.sum(empty, dtype=jnp.int32))

    def body(s):
        s = jax.lax.cond(jnp.any(s["empty"]) & (s["next_local"] < num_group), refill,
                         lambda s: s, s)
        active, step = s["active"], s["step"]
        step_keys = jax.vmap(fold_in)(s["keys"], step_offset + step)
        begun = jax.vmap(machine.begin, in_axes=(None, 0, 0, 0))(params, step_keys, s["carry"],
                                                                  step)
        work = _select(s["is_new_step"], begun, s["work"])
        # an idle lane computes too (its result is dropped): its work needs no select
        work, carry_new, done, info = _unit(machine, params, work, s["carry"], step)
        done = active & done
        carry = _select(done, carry_new, s["carry"])
        row = jnp.where(done, step, max_steps)  # out of range: dropped
        vec = jax.vmap(functools.partial(_info_vector, dtype=dtype))(info)
        records = s["records"]
        if records is not None:
            rec = jax.vmap(record_fn)(carry, info)
            records = jax.tree_util.tree_map(
                lambda buf, r: buf.at[row, s["local"]].set(r, mode="drop"), records, rec)
        step = step + done.astype(jnp.int32)
        finished = done & (step >= num_steps)
        return dict(s, work=work, carry=carry, needed=s["needed"] + active.astype(jnp.int32),
                    divergent=s["divergent"] | (done & jnp.asarray(info.is_divergent, bool)),
                    sums=s["sums"].at[row].add(vec, mode="drop"), records=records, step=step,
                    is_new_step=done, active=active & ~finished, empty=s["empty"] | finished,
                    iterations=s["iterations"] + 1)

    s = jax.lax.while_loop(
        lambda s: jnp.any(s["active"]) | (jnp.any(s["empty"]) & (s["next_local"] < num_group)),
        body, state)
    s = flush(s)
    return (s["out_carry"], s["out_needed"], s["out_divergent"], s["sums"], s["records"],
            s["iterations"])


def _group_lockstep(machine: Machine, params, rng_key, num_steps, step_offset, group, *,
                    num_group: int, record_fn, dtype):
    """One device's particles run step by step, each step until its slowest particle is done."""
    first = group * num_group
    carry_shape, info_shape = _shapes(machine, rng_key)
    local = jnp.arange(num_group, dtype=jnp.int32)
    keys = jax.vmap(lambda i: fold_in(rng_key, first + i))(local)
    carry = jax.vmap(machine.init, in_axes=(None, 0, 0))(params, keys, first + local)
    info0 = _zeros(info_shape, (num_group,))

    def one_step(c, step):
        carry, needed, divergent = c
        steps = jnp.full((num_group,), step, jnp.int32)
        work = jax.vmap(machine.begin, in_axes=(None, 0, 0, 0))(
            params, jax.vmap(fold_in)(keys, step_offset + steps), carry, steps)

        def body(s):
            work, new_carry, done, info, needed, iterations = s
            work2, carry2, done2, info2 = _unit(machine, params, work, carry, steps)
            live = ~done
            finish = live & done2
            return (_select(live, work2, work), _select(finish, carry2, new_carry),
                    done | finish, _select(finish, info2, info), needed + live.astype(jnp.int32),
                    iterations + 1)

        is_past = jnp.full((num_group,), step >= num_steps)  # padding steps: nothing runs
        s = (work, carry, is_past, info0, needed, jnp.zeros((), jnp.int32))
        _, carry, _, info, needed, iterations = jax.lax.while_loop(
            lambda s: ~jnp.all(s[2]), body, s)
        divergent = divergent | (~is_past & jnp.asarray(info.is_divergent, bool))
        vec = jax.vmap(functools.partial(_info_vector, dtype=dtype))(info)
        rec = None if record_fn is None else jax.vmap(record_fn)(carry, info)
        return (carry, needed, divergent), (jnp.sum(vec, axis=0), rec, iterations)

    init = (carry, jnp.zeros((num_group,), jnp.int32), jnp.zeros((num_group,), bool))
    (carry, needed, divergent), (sums, records, iterations) = jax.lax.scan(
        one_step, init, jnp.arange(machine.max_steps, dtype=jnp.int32))
    return carry, needed, divergent, sums, records, jnp.sum(iterations)


def _program(group_fn, machine: Machine, mesh, num_group: int, record_fn, dtype, static):
    """The jitted loop of one device group (shard-mapped over the particle mesh if any)."""
    group_fn = functools.partial(group_fn, machine, num_group=num_group, record_fn=record_fn,
                                 dtype=dtype, **static)

    def batched(params, key, num_steps, offset, groups):
        return jax.tree_util.tree_map(lambda a: a[None],
                                      group_fn(params, key, num_steps, offset, groups[0]))

    if mesh is None:
        return jax.jit(batched)
    spec, whole = PartitionSpec(PARTICLES), PartitionSpec()
    return jax.jit(jax.shard_map(batched, mesh=mesh, in_specs=(whole, whole, whole, whole, spec),
                                 out_specs=spec, check_vma=False))


def _run(group_fn, machine: Machine, rng_key, num_particles: int, width, step_offset,
         record_fn, **static):
    mesh = particle_time_mesh(num_particles, None)
    num_groups = 1 if mesh is None else int(mesh.shape[PARTICLES])
    num_group = num_particles // num_groups
    dtype = jnp.result_type(float)
    if machine.max_steps < machine.num_steps:
        raise ValueError(f"max_steps ({machine.max_steps}) must be >= num_steps "
                         f"({machine.num_steps})")
    cache_key = None if machine.program_key is None else (
        machine.program_key, machine.max_steps, group_fn.__name__, num_particles, num_groups,
        record_fn, str(dtype), tuple(sorted(static.items())))
    try:
        program = None if cache_key is None else _PROGRAMS.get(cache_key)
    except (TypeError, ValueError):  # a score function that cannot be hashed or compared
        cache_key, program = None, None
    if program is None:
        program = (_program(group_fn, machine, mesh, num_group, record_fn, dtype, static),
                   _shapes(machine, rng_key)[1])
        if cache_key is not None:
            _PROGRAMS[cache_key] = program
            while len(_PROGRAMS) > PROGRAM_CACHE_SIZE:
                _PROGRAMS.pop(next(iter(_PROGRAMS)))
    fn, info_shape = program

    out = fn(machine.params, rng_key, jnp.asarray(machine.num_steps, jnp.int32),
             jnp.asarray(step_offset, jnp.int32), jnp.arange(num_groups, dtype=jnp.int32))
    carries, needed, divergent, sums, records, iterations = gather(out)
    flat = lambda a: jnp.reshape(a, (num_particles,) + a.shape[2:])
    carries = jax.tree_util.tree_map(flat, carries)
    num_steps = machine.num_steps
    if records is not None:  # (groups, steps, num_group, ...) -> (steps, N, ...)
        records = jax.tree_util.tree_map(
            lambda a: jnp.reshape(jnp.swapaxes(a, 0, 1)[:num_steps],
                                  (num_steps, num_particles) + a.shape[3:]), records)
    sums = np.sum(np.asarray(sums, dtype=np.float64), axis=0)[:num_steps]  # (steps, fields)
    step_sums = _info_unflatten(info_shape, sums)
    iterations = np.asarray(iterations, dtype=np.int64)
    return BatchRun(carries, flat(needed), flat(divergent), step_sums, records,
                    int(np.sum(iterations) * width(num_group)), int(np.max(iterations)),
                    int(width(num_group) * num_groups))


def run_autobatched(rng_key, machine: Machine, num_particles: int, *, num_lanes: int | None = None,
                    step_offset=0, record_fn: Callable | None = None) -> BatchRun:
    """Run ``machine`` on ``num_particles`` particles with a lane pool (see the module docstring).

    Args:
        rng_key: one key; particle i uses ``fold_in(rng_key, i)``.
        machine: the kernel as a :class:`Machine`.
        num_particles: N.
        num_lanes: lanes in all (split evenly over the devices; default :func:`default_num_lanes`).
            With as many lanes as particles there is no pool.
        step_offset: step k of a particle uses the key ``fold_in(particle_key, step_offset + k)``
            (a run continued in chunks passes the steps already made).
        record_fn: ``record_fn(carry, info) -> pytree`` for one particle, kept for every step of
            every particle (``BatchRun.records``, (num_steps, N, ...)); None keeps only the
            per-step sums.

    Returns:
        :class:`BatchRun`.
    """
    num_particles = check_int("num_particles", num_particles)
    num_lanes = default_num_lanes(num_particles) if num_lanes is None else check_int(
        "num_lanes", num_lanes)
    mesh = particle_time_mesh(num_particles, None)
    num_groups = 1 if mesh is None else int(mesh.shape[PARTICLES])
    per_group = max(1, min(num_particles // num_groups, math.ceil(num_lanes / num_groups)))
    return _run(_group_autobatched, machine, rng_key, num_particles, lambda n: per_group,
                step_offset, record_fn, num_lanes=per_group)


def run_in_jit(particle_keys, machine: Machine, *, num_lanes: int | None = None, step_offset=0,
               record_fn: Callable | None = None):
    """The autobatched loop inside a caller's ``jax.jit`` (one queue, no sharding of its own).

    Particle i uses the key ``particle_keys[i]`` (its step k ``fold_in(particle_keys[i],
    step_offset + k)``). Returns ``(carries, num_needed, is_divergent, records, num_iterations,
    num_lanes)``; records as in :func:`run_autobatched`, (max_steps, N, ...).
    """
    num_particles = int(jax.tree_util.tree_leaves(particle_keys)[0].shape[0])
    num_lanes = default_num_lanes(num_particles) if num_lanes is None else min(
        num_particles, check_int("num_lanes", num_lanes))
    out = _group_autobatched(machine, machine.params, particle_keys[0],
                             jnp.asarray(machine.num_steps, jnp.int32),
                             jnp.asarray(step_offset, jnp.int32), jnp.zeros((), jnp.int32),
                             num_group=num_particles, num_lanes=num_lanes, record_fn=record_fn,
                             dtype=jnp.result_type(float), particle_keys=particle_keys)
    carries, needed, divergent, _, records, iterations = out
    return carries, needed, divergent, records, iterations, num_lanes


def run_lockstep(rng_key, machine: Machine, num_particles: int, *, step_offset=0,
                 record_fn: Callable | None = None) -> BatchRun:
    """Run ``machine`` the way ``jax.vmap`` runs a kernel step by step: every particle finishes
    step k (each iteration one unit for every particle not yet done, the others masked) before any
    starts step k + 1. :func:`run_autobatched` matches it draw for draw."""
    num_particles = check_int("num_particles", num_particles)
    return _run(_group_lockstep, machine, rng_key, num_particles, lambda n: n, step_offset,
                record_fn)
