"""Every public name of API.md imports, and the kernel objects have BlackJAX's shape."""

import importlib

import pytest

import scoresample
from scoresample.base import KernelAPI
from scoresample.diffusion import METHODS


@pytest.mark.parametrize("name", scoresample.__all__)
def test_every_public_name_imports(name):
    assert getattr(scoresample, name) is not None


@pytest.mark.parametrize("name", ["rtk", "fors", "picard_langevin"])
def test_kernel_objects_are_blackjax_style(name):
    api = getattr(scoresample, name)
    assert isinstance(api, KernelAPI)
    assert callable(api.init) and callable(api.build_kernel)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_diffusion_method_resolves(method):
    module, fn = METHODS[method].split(":")
    assert callable(getattr(importlib.import_module(module), fn))


def test_api_md_names_exist():
    from scoresample import diagnostics, metrics, targets, train

    for obj, names in [
        (targets, ["Gaussian", "GaussianMixture"]),
        (metrics, ["energy_distance", "mmd", "sliced_wasserstein", "mode_weight_error"]),
        (diagnostics, ["to_datatree", "summary", "report"]),
        (train, ["fit_score", "load", "TrainedScore"]),
        (scoresample.diffusion, ["sample", "cld", "DiffusionResult"]),
    ]:
        for n in names:
            assert hasattr(obj, n), f"{obj.__name__}.{n} is missing"
