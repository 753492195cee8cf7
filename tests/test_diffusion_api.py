"""diffusion.sample rejects bad inputs with errors that name the argument, before compiling anything.

A counting score_fn proves that nothing beyond ``jax.eval_shape`` (one trace, no compilation) ran,
and a JAX monitoring listener proves that no XLA compilation happened during a rejected call.
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
