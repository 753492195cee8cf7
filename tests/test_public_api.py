"""The public surface: every name of ``scoresample.__all__`` is what it says, every public module's
``__all__`` is importable and documented, and the kernel objects have BlackJAX's shape and run."""

import importlib
import importlib.metadata
import inspect
import re
import types

import jax
import jax.numpy as jnp
import pytest

import scoresample
from scoresample.base import KernelAPI
from scoresample.diffusion import METHODS

MODULES = sorted(name for name in scoresample.__all__
                 if name != "__version__" and scoresample._PUBLIC[name][1] is None)
OBJECTS = sorted(name for name in scoresample.__all__
                 if name != "__version__" and scoresample._PUBLIC[name][1] is not None)


def _summary(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def test_top_level_lists_exactly_its_names():
    assert sorted(dir(scoresample)) == sorted(scoresample.__all__)
    assert set(scoresample.__all__) == set(scoresample._PUBLIC) | {"__version__"}
    assert scoresample.__version__ == importlib.metadata.version("scoresample")
    with pytest.raises(AttributeError, match="no_such_name"):
        scoresample.no_such_name  # noqa: B018


@pytest.mark.parametrize("name", MODULES)
def test_public_module_names_import_and_are_documented(name):
    module = getattr(scoresample, name)
    want, _ = scoresample._PUBLIC[name]
    assert isinstance(module, types.ModuleType) and module.__name__ == want
    assert _summary(module), f"{want} has no docstring"
    exported = getattr(module, "__all__", None)
    assert exported, f"{want} has no __all__"
    assert len(set(exported)) == len(exported), f"{want}.__all__ repeats a name"
    for attr in exported:
        value = getattr(module, attr)  # AttributeError: listed but missing
        if inspect.isclass(value) or inspect.isfunction(value):
            assert _summary(value), f"{want}.{attr} has no docstring"


@pytest.mark.parametrize("name", OBJECTS)
def test_public_objects_are_the_modules_objects(name):
    module, attr = scoresample._PUBLIC[name]
    assert getattr(scoresample, name) is getattr(importlib.import_module(module), attr)
    assert _summary(getattr(scoresample, name))


@pytest.mark.parametrize("name", ["rtk", "fors", "picard_langevin"])
def test_kernel_objects_are_blackjax_style_and_step(name):
    api = getattr(scoresample, name)
    assert isinstance(api, KernelAPI)
    assert callable(api.init) and callable(api.build_kernel)
    # build_kernel() and init are the pieces BlackJAX's drivers (SMC, run_inference_algorithm) take:
    # kernel(rng_key, state, logdensity_fn, step_size, ...) and init(position, logdensity_fn)
    params = list(inspect.signature(api.build_kernel()).parameters)
    assert params[:4] == ["rng_key", "state", "logdensity_fn", "step_size"], params
    assert list(inspect.signature(api.init).parameters)[:2] == ["position", "logdensity_fn"]
    logdensity = lambda x: -0.5 * jnp.sum(x**2)
    algo = api(logdensity, 0.1)
    state = algo.init(jnp.ones(3))
    new, info = jax.jit(algo.step)(jax.random.key(0), state)
    assert new.position.shape == (3,) and bool(jnp.all(jnp.isfinite(new.position)))
    assert int(info.num_grad_evals) >= 1


def test_sample_has_its_documented_signature():
    params = inspect.signature(scoresample.sample).parameters
    assert list(params)[:2] == ["rng_key", "model"]
    for option in ("method", "num_chains", "num_warmup", "num_draws", "init"):
        assert params[option].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_diffusion_method_resolves_to_a_documented_plan(method):
    module, fn = METHODS[method].split(":")
    plan = getattr(importlib.import_module(module), fn)
    assert callable(plan) and _summary(plan)
    params = inspect.signature(plan).parameters
    assert "score_fn" in params and params["dim"].kind is inspect.Parameter.KEYWORD_ONLY


def test_api_names_exist():
    from scoresample import diagnostics, metrics, posteriordb, targets, train

    for obj, names in [
        (targets, ["Gaussian", "GaussianMixture"]),
        (metrics, ["energy_distance", "mmd", "sliced_wasserstein", "mode_weight_error"]),
        (diagnostics, ["to_datatree", "summary", "report", "zscores"]),
        (train, ["fit_score", "load", "TrainedScore"]),
        (scoresample.diffusion, ["sample", "cld", "DiffusionResult"]),
        (posteriordb, ["load", "pass_rule", "Posterior", "list_posteriors"]),
    ]:
        for n in names:
            assert n in obj.__all__, f"{obj.__name__}.{n} is not exported"
            assert callable(getattr(obj, n)), f"{obj.__name__}.{n} is not callable"
    assert re.fullmatch(r"\d+\.\d+\.\d+", scoresample.__version__)
