"""The autobatching driver: the same draws as lockstep, whatever the batch, lanes or devices, and
honest counts of what ran (scoresample.autobatch)."""

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresample import autobatch, diffusion, targets
from scoresample.kernels import fors as F

SCRIPT = Path(__file__).parent / "scripts" / "autobatch_devices_run.py"


class StepInfo(NamedTuple):
    num_grad_evals: jax.Array
    is_divergent: jax.Array


def toy_machine(num_steps=5, stop=0.3, counter=None):
    """Each step evaluates f(v) = 2 v + 1 until a coin with P(stop) lands (a geometric number of
    units, 1 / stop on average); the carry sums the values and counts the units."""

    def init(params, key, index):
        return (jax.random.uniform(jax.random.fold_in(key, autobatch.INIT_FOLD)),
                jnp.zeros((), jnp.int32))

    def begin(params, step_key, carry, step):
        return step_key, jnp.zeros((), jnp.int32)

    def query(params, work, carry, step):
        key, units = work
        u = jax.random.uniform(jax.random.fold_in(key, units))
        return carry[0] + params * step, u

    def evaluate(params, x):
        if counter is not None:
            jax.debug.callback(lambda _: counter.__setitem__(0, counter[0] + 1), x)
        return 2.0 * x + 1.0

    def advance(params, work, carry, step, u, value):
        key, units = work
        units = units + 1
        done = u < stop
        new_carry = (0.5 * carry[0] + 0.1 * jnp.clip(value, -2.0, 2.0), carry[1] + units)
        return (key, units), new_carry, done, StepInfo(units, value > 1e6)

    return autobatch.Machine(init, begin, query, evaluate, advance, jnp.asarray(0.01),
                             num_steps, autobatch.step_bucket(num_steps))


def _same(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_equal_program_keys_share_one_traced_loop():
    # A machine with a program_key is traced once per key: a second machine with the same key and
    # other params (a new grid) runs the first's program with its own params; a machine with
    # another key (or none) is traced anew. Tracing is counted by a Python side effect in evaluate.
    traces = [0]

    def keyed(step_scale, key):
        m = toy_machine()

        def evaluate(params, x):
            traces[0] += 1
            return m.evaluate(params, x)

        return m._replace(evaluate=evaluate, params=jnp.asarray(step_scale), program_key=key)

    rng = jax.random.key(4)
    first = autobatch.run_autobatched(rng, keyed(0.01, ("toy", 1)), 12, num_lanes=4)
    after_first = traces[0]
    again = autobatch.run_autobatched(rng, keyed(0.01, ("toy", 1)), 12, num_lanes=4)
    other_params = autobatch.run_autobatched(rng, keyed(0.02, ("toy", 1)), 12, num_lanes=4)
    assert after_first > 0 and traces[0] == after_first
    _same(again.carries, first.carries)
    fresh = autobatch.run_autobatched(rng, keyed(0.02, None), 12, num_lanes=4)
    assert traces[0] > after_first
    _same(fresh.carries, other_params.carries)  # the cached program used the new params
    assert not np.array_equal(np.asarray(fresh.carries[0]), np.asarray(first.carries[0]))
    autobatch.run_autobatched(rng, keyed(0.01, ("toy", 2)), 12, num_lanes=4)
    assert traces[0] > after_first + 1


def test_autobatched_equals_lockstep_and_ignores_lanes_and_batch_size():
    machine = toy_machine()
    key = jax.random.key(0)
    lock = autobatch.run_lockstep(key, machine, 12)
    auto = autobatch.run_autobatched(key, machine, 12, num_lanes=12)
    # the same units in the same order; two compiled programs may still contract the toy's
    # a x + b y into a fused multiply-add differently (FORS's arithmetic agrees bit for bit,
    # test_fors_diffusion_autobatched_equals_lockstep_bit_for_bit)
    np.testing.assert_allclose(auto.carries[0], lock.carries[0], rtol=1e-15, atol=0)
    _same(auto.carries[1], lock.carries[1])
    _same(auto.num_needed, lock.num_needed)
    for lanes in (1, 3):
        _same(autobatch.run_autobatched(key, machine, 12, num_lanes=lanes).carries, auto.carries)
    # a particle's draws depend on its index only: the first 5 of a batch of 12 are a batch of 5
    small = autobatch.run_autobatched(key, machine, 5, num_lanes=2)
    _same(small.carries, jax.tree_util.tree_map(lambda a: a[:5], auto.carries))
    # negative control: another key changes the draws
    other = autobatch.run_autobatched(jax.random.key(1), machine, 12, num_lanes=3)
    assert not np.array_equal(np.asarray(other.carries[0]), np.asarray(lock.carries[0]))


def test_counts_what_ran_with_a_host_callback():
    calls = [0]
    machine = toy_machine(num_steps=6, counter=calls)
    key = jax.random.key(2)
    # one lane runs the particles one after another: nothing is wasted, executed == needed
    one = autobatch.run_autobatched(key, machine, 10, num_lanes=1)
    assert calls[0] == one.num_executed == int(np.sum(one.num_needed))
    # the carry counts the units each particle used: num_needed is exactly that
    np.testing.assert_array_equal(one.num_needed, one.carries[1])
    calls[0] = 0
    four = autobatch.run_autobatched(key, machine, 10, num_lanes=4)
    assert calls[0] == four.num_executed == 4 * four.num_iterations
    np.testing.assert_array_equal(four.num_needed, one.num_needed)
    assert four.num_executed > int(np.sum(four.num_needed))  # idle lanes at the end count
    calls[0] = 0
    lock = autobatch.run_lockstep(key, machine, 10)
    assert calls[0] == lock.num_executed == 10 * lock.num_iterations
    np.testing.assert_array_equal(lock.num_needed, one.num_needed)
    # the per-step sums of the info: units per step, summed over particles
    assert float(np.sum(lock.step_sums.num_grad_evals)) == int(np.sum(one.num_needed))


def test_lane_pool_waste_is_small():
    # 2000 particles of 50 steps (2.5 units per step on average, sd about 2): the batch's slowest
    # particle needs about 1.25 times the mean, so without a pool executed / needed is about 1.25;
    # with 100 lanes each lane runs 20 particles and waits only at the end
    machine = toy_machine(num_steps=50, stop=0.4)
    key = jax.random.key(3)
    pool = autobatch.run_autobatched(key, machine, 2000, num_lanes=100)
    whole = autobatch.run_autobatched(key, machine, 2000, num_lanes=2000)
    needed = float(np.sum(pool.num_needed))
    assert pool.num_executed / needed < 1.06
    assert whole.num_executed / needed > 1.15  # the control: one lane per particle wastes more
    _same(pool.carries, whole.carries)


def test_max_steps_pads_and_rejects_a_short_bucket():
    machine = toy_machine(num_steps=5)._replace(max_steps=64)
    out = autobatch.run_lockstep(jax.random.key(4), machine, 3)
    assert out.step_sums.num_grad_evals.shape == (5,)
    auto = autobatch.run_autobatched(jax.random.key(4), machine, 3)
    np.testing.assert_allclose(auto.carries[0], out.carries[0], rtol=1e-15, atol=0)
    with pytest.raises(ValueError, match="max_steps"):
        autobatch.run_lockstep(jax.random.key(4), machine._replace(max_steps=4), 3)
    assert autobatch.step_bucket(5) == 64 and autobatch.step_bucket(65) == 128
    assert autobatch.default_num_lanes(10_000) == 1250 and autobatch.default_num_lanes(6) == 6


def test_fors_diffusion_autobatched_equals_lockstep_bit_for_bit():
    mix = targets.two_modes_1d()
    schedule = F.fors_schedule(0.3, 1, second_moment=4.25, growth=2.0)
    machine = F.diffusion_machine(mix.score, schedule, dim=1)
    key = jax.random.key(5)
    lock = autobatch.run_lockstep(key, machine, 8)
    auto = autobatch.run_autobatched(key, machine, 8, num_lanes=3)
    _same(auto.carries, lock.carries)
    _same(auto.num_needed, lock.num_needed)
    _same(auto.is_divergent, lock.is_divergent)
    for got, want in zip(auto.step_sums, lock.step_sums):  # float sums in another order
        np.testing.assert_allclose(got, want, rtol=1e-13)
    # the step-by-step kernel is the same machine: particle 0's steps with the plan's algorithm
    plan = diffusion.build_plan("fors", mix.score, dim=1, delta=0.3, second_moment=4.25,
                                growth=2.0, grid="geometric")
    particle = jax.random.fold_in(key, 0)
    state = plan.algorithm.init(jax.random.normal(jax.random.fold_in(particle,
                                                                     autobatch.INIT_FOLD), (1,)))
    step = jax.jit(plan.algorithm.step)
    for k in range(plan.num_steps):
        state, _ = step(jax.random.fold_in(particle, k), state)
    np.testing.assert_array_equal(np.asarray(state.position), np.asarray(lock.carries[0]))


@pytest.mark.slow
def test_eight_devices_give_the_draws_of_one(tmp_path):
    def run(num_devices):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
                   JAX_PLATFORMS="cpu")
        out = tmp_path / f"{num_devices}.npz"
        res = subprocess.run([sys.executable, str(SCRIPT), str(out)], env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"devices {num_devices}" in res.stdout
        return np.load(out), res.stdout

    one, _ = run(1)
    eight, stdout = run(8)
    assert "lanes 16" in stdout  # 2 lanes on each of the 8 devices, each with its own queue
    for name in one.files:
        np.testing.assert_array_equal(one[name], eight[name], err_msg=name)
