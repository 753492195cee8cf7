"""diffusion.sample rejects bad inputs with errors naming the argument, before compiling anything;
and it counts what ran and reduces the per-step Info over the particles.

A counting score_fn proves that nothing beyond ``jax.eval_shape`` (one trace, no compilation) ran,
and a JAX monitoring listener proves that no XLA compilation happened during a rejected call.
A host callback in the score counts the evaluations a vmapped batch really executed.
"""

import contextlib
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresample import diffusion, targets

MIX = targets.four_modes_2d()
KEY = jax.random.key(0)
FIXED_COST = ["ddpm", "ddpm-large", "ei", "pf-ode", "ddim", "dpm-solver++"]
GRID_METHODS = ["ei", "pf-ode", "ddim", "dpm-solver++"]
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CountingScore:
    def __init__(self, fn=MIX.score):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


@contextlib.contextmanager
def no_compilation():
    """Fail if XLA compiles anything inside the block."""
    events = []

    def listener(event, duration, **kwargs):
        if event == _COMPILE_EVENT:
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert not events, f"{len(events)} compilation(s) happened before the error"


def _rejects(exc, match, score, **kwargs):
    args = dict(rng_key=KEY, method="ddpm", score_fn=score, dim=2, num_samples=10)
    args.update(kwargs)
    with no_compilation(), pytest.raises(exc, match=match):
        diffusion.sample(args.pop("rng_key"), args.pop("method"), args.pop("score_fn"), **args)
    assert score.calls <= 1, "the score was traced beyond jax.eval_shape"


def test_unknown_method():
    score = CountingScore()
    _rejects(ValueError, "method", score, method="ddpm2")
    assert score.calls == 0


def test_score_fn_output_shape_mismatch():
    score = CountingScore(lambda x, t: jnp.zeros(3))
    _rejects(ValueError, "score_fn", score)
    assert score.calls == 1


def test_score_fn_failing_on_wrong_dim_is_reported_as_score_fn_error():
    score = CountingScore()  # a 2-D mixture's score called with dim = 3 raises inside JAX
    _rejects(ValueError, "score_fn", score, dim=3)


def test_non_callable_score_fn():
    with no_compilation(), pytest.raises(TypeError, match="score_fn"):
        diffusion.sample(KEY, "ei", np.zeros(2), dim=2, num_samples=10)


@pytest.mark.parametrize("method", FIXED_COST)
def test_nfe_zero_and_non_integer(method):
    score = CountingScore()
    _rejects(ValueError, "nfe", score, method=method, nfe=0)
    score = CountingScore()
    _rejects(TypeError, "nfe", score, method=method, nfe=2.5)


@pytest.mark.parametrize("method", GRID_METHODS)
def test_times_out_of_order(method):
    _rejects(ValueError, "t_min", CountingScore(), method=method, t_min=2.0, t_max=1.0)
    _rejects(ValueError, "t_min", CountingScore(), method=method, t_min=-1e-3)
    _rejects(ValueError, "t_max", CountingScore(), method=method, t_max=float("inf"))


@pytest.mark.parametrize("method", GRID_METHODS)
def test_bad_grid_and_denoise(method):
    _rejects(ValueError, "grid", CountingScore(), method=method, grid="cubic")
    _rejects(TypeError, "denoise", CountingScore(), method=method, denoise="yes")


@pytest.mark.parametrize("method", ["ddpm", "ddpm-large"])
def test_ddpm_schedule_options(method):
    _rejects(ValueError, "c0", CountingScore(), method=method, c0=-1.0)
    _rejects(ValueError, "t_max", CountingScore(), method=method, t_max=3.0)


def test_negative_num_samples_and_bad_dim():
    score = CountingScore()
    _rejects(ValueError, "num_samples", score, num_samples=-5)
    assert score.calls == 0
    _rejects(ValueError, "dim", CountingScore(), dim=0)
    _rejects(TypeError, "dim", CountingScore(), dim=2.0)


def test_bad_per_particle_info():
    _rejects(TypeError, "per_particle_info", CountingScore(), per_particle_info="yes")


def test_bad_key():
    score = CountingScore()
    _rejects(TypeError, "rng_key", score, rng_key=0)
    _rejects(TypeError, "rng_key", score, rng_key=np.zeros(3, np.uint32))
    assert score.calls == 0


@pytest.mark.parametrize("method", FIXED_COST)
def test_unknown_option(method):
    _rejects(TypeError, "step_szie", CountingScore(), method=method, step_szie=0.1)


def test_every_method_in_the_table_that_exists_resolves():
    found = []
    for name, target in diffusion.METHODS.items():
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:  # the module exists but one of its imports is missing
                raise
            continue
        plan_fn = getattr(module, attr, None)
        if plan_fn is None:  # the module exists but its author has not added this plan yet
            continue
        assert callable(plan_fn), name
        found.append(name)
    assert set(FIXED_COST) <= set(found), found


@pytest.mark.parametrize("method", FIXED_COST)
def test_valid_call_builds_without_compiling(method):
    # build_plan validates and builds; compilation only starts in run_plan.
    score = CountingScore()
    with no_compilation():
        plan = diffusion.build_plan(method, score, dim=2, nfe=4)
    assert score.calls == 1 and plan.num_steps == 4


def test_the_compilation_guard_detects_a_compilation():
    with pytest.raises(AssertionError, match="compilation"):
        with no_compilation():
            jax.jit(lambda x: 2.0 * x + 1.0)(jnp.arange(7.0))


# ----- counting what ran, and the per-step Info ------------------------------------------------


def _host_counted(fn=MIX.score):
    """A score that counts, on the host, every evaluation that executes (one per vmapped lane)."""
    calls = [0]

    def score(x, t):
        jax.debug.callback(lambda _: calls.__setitem__(0, calls[0] + 1), t)
        return fn(x, t)

    return score, calls


def test_nfe_counts_the_masked_work_of_data_dependent_loops():
    """Under vmap a while_loop runs every particle until the slowest is done: nfe is that, the
    host-side count of executed evaluations per particle, and exceeds what the particles needed."""
    n = 6
    score, calls = _host_counted()
    res = diffusion.sample(jax.random.key(3), "paradigms", score, dim=2, num_samples=n,
                           num_steps=24, window=8, tol=1e-3)
    assert calls[0] == n * res.nfe
    assert int(np.sum(res.info.num_grad_evals)) == res.nfe
    assert int(np.sum(res.info.num_rounds)) == res.rounds
    assert res.nfe_needed < res.nfe


@pytest.mark.slow
def test_nfe_of_the_autobatched_fors_counts_every_lane_and_the_pilot():
    """FORS runs on the autobatching driver: every evaluation that ran (the pilot's, and idle
    lanes') is in nfe, and the host-side count of executed evaluations equals n * nfe exactly;
    per step, info holds what a particle needed on average."""
    n = 6
    score, calls = _host_counted()
    res = diffusion.sample(jax.random.key(3), "fors", score, dim=2, num_samples=n, delta=0.3,
                           constant=0.1)
    assert calls[0] == round(n * res.nfe)
    s = res.settings
    assert n * res.nfe == pytest.approx(s["nfe_pilot"] + n * s["nfe_executed_run"])
    np.testing.assert_allclose(np.sum(res.info.num_grad_evals), s["nfe_needed_run"], rtol=1e-9)
    assert s["nfe_needed_run"] <= s["nfe_executed_run"]
    assert res.nfe_needed < res.nfe


def test_info_is_reduced_over_particles_unless_asked():
    def score(x, t):  # NaN for one particle (x[0] > 1.0) at late times: divergent fractions
        return jnp.where((t < 0.5) & (x[0] > 1.0), jnp.nan, -x)

    opts = dict(dim=2, num_samples=8, nfe=6)
    full = diffusion.sample(KEY, "ddpm", score, per_particle_info=True, **opts)
    red = diffusion.sample(KEY, "ddpm", score, **opts)
    np.testing.assert_array_equal(red.samples, full.samples)
    np.testing.assert_array_equal(red.is_divergent, full.is_divergent)
    assert 0 < int(np.sum(red.is_divergent)) < 8
    assert red.nfe == full.nfe == red.nfe_needed == 6.0 and red.rounds == full.rounds == 6
    assert full.info.num_grad_evals.shape == (6, 8) and red.info.num_grad_evals.shape == (6,)
    for name in full.info._fields:
        got = np.asarray(getattr(red.info, name))
        per_particle = np.asarray(getattr(full.info, name))
        want = (per_particle.max(axis=1) if name in ("num_grad_evals", "num_rounds")
                else per_particle.mean(axis=1))
        np.testing.assert_allclose(got, want, rtol=1e-14, err_msg=name)
    fraction = np.asarray(red.info.is_divergent)
    assert np.all((fraction >= 0) & (fraction < 1)) and np.any(fraction > 0)
