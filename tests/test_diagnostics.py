"""scoresample.diagnostics: DataTree conversion, summaries with cost columns, z-scores, netCDF."""

from typing import NamedTuple

import numpy as np
import pytest

from scoresample import diagnostics
from scoresample.diagnostics.summary import flatten_draws


class _Info(NamedTuple):
    acceptance_rate: np.ndarray
    is_divergent: np.ndarray
    num_grad_evals: np.ndarray
    momentum: np.ndarray  # (chain, draw, d): not a per-draw scalar, dropped


def _draws(seed=0, chains=4, draws=500, d=3, loc=0.0):
    rng = np.random.default_rng(seed)
    return loc + rng.normal(size=(chains, draws, d))


def test_to_datatree_array_var_names_and_infos():
    x = _draws()
    info = _Info(np.full((4, 500), 0.7), np.zeros((4, 500), bool), np.full((4, 500), 3, np.int32),
                 np.zeros((4, 500, 3)))
    dt = diagnostics.to_datatree(x, info, var_names=["a", "b", "c"], attrs={"sampler": "test"})
    assert sorted(dt["posterior"].data_vars) == ["a", "b", "c"]
    assert dt["posterior"]["b"].dims == ("chain", "draw")
    np.testing.assert_array_equal(dt["posterior"]["c"].values, x[:, :, 2])
    stats = dt["sample_stats"]
    assert set(stats.data_vars) == {"acceptance_rate", "diverging", "num_grad_evals"}
    assert stats["diverging"].dtype == bool
    assert dt.attrs["sampler"] == "test"


def test_to_datatree_dict_and_single_array():
    dt = diagnostics.to_datatree({"mu": _draws()[:, :, 0], "theta": _draws(1)})
    assert dt["posterior"]["theta"].shape == (4, 500, 3)
    dt = diagnostics.to_datatree(_draws())
    assert list(dt["posterior"].data_vars) == ["x"]


@pytest.mark.parametrize("bad, err", [
    (np.zeros(5), ValueError),                          # no (chain, draw)
    ({"a": np.zeros((4, 10)), "b": np.zeros((3, 10))}, ValueError),  # chains differ
    (np.array([["a", "b"]]), TypeError),                # not numeric
])
def test_to_datatree_rejects_bad_positions(bad, err):
    with pytest.raises(err):
        diagnostics.to_datatree(bad)


def test_to_datatree_rejects_wrong_var_names_and_infos():
    with pytest.raises(ValueError, match="var_names"):
        diagnostics.to_datatree(_draws(d=3), var_names=["a", "b"])
    with pytest.raises(ValueError, match="infos"):
        diagnostics.to_datatree(_draws(), {"acceptance_rate": np.zeros((2, 7))})
    with pytest.raises(TypeError, match="infos"):
        diagnostics.to_datatree(_draws(), [1, 2])


def test_summary_cost_columns_are_ess_over_cost():
    dt = diagnostics.to_datatree(_draws(), {"num_grad_evals": np.full((4, 500), 5, np.int32)})
    dt.attrs.update(num_grad_evals_sampling=10_000, wall_time_sampling=2.0,
                    num_grad_evals_warmup=123)
    table = diagnostics.summary(dt)
    for col in ("ess_bulk", "ess_tail", "r_hat", "mcse_mean", "ess_bulk_per_1000_grad",
                "ess_bulk_per_s"):
        assert col in table.columns
    np.testing.assert_allclose(table["ess_bulk_per_1000_grad"], table["ess_bulk"] / 10.0, rtol=1e-12)
    np.testing.assert_allclose(table["ess_bulk_per_s"], table["ess_bulk"] / 2.0, rtol=1e-12)
    # without the attr, sampling cost comes from the num_grad_evals sample stat (4*500*5)
    del dt.attrs["num_grad_evals_sampling"]
    table = diagnostics.summary(dt)
    np.testing.assert_allclose(table["ess_bulk_per_1000_grad"], table["ess_bulk"] / 10.0, rtol=1e-12)


def test_overview_worst_case_numbers():
    x = _draws(draws=400)
    stats = {"diverging": np.zeros((4, 400), bool), "acceptance_rate": np.full((4, 400), 0.5)}
    stats["diverging"][1, 3] = True
    dt = diagnostics.to_datatree(x, stats)
    dt.attrs.update(num_grad_evals_sampling=1600, wall_time_sampling=0.5, sampler="demo")
    row = diagnostics.overview(dt)
    table = diagnostics.summary(dt)
    assert row["sampler"] == "demo"
    assert row["num_divergent"] == 1
    assert row["min_ess_bulk"] == pytest.approx(table["ess_bulk"].min())
    assert row["max_r_hat"] == pytest.approx(table["r_hat"].max())
    assert row["ess_per_1000_grad"] == pytest.approx(row["min_ess_bulk"] / 1.6)
    assert row["mean_acceptance"] == pytest.approx(0.5)


def test_zscores_exact_cases():
    x = _draws(draws=1000)
    run = diagnostics.to_datatree({"theta": x})
    same = diagnostics.zscores(run, {"theta": x})
    np.testing.assert_array_equal(same["z"].values, 0.0)
    np.testing.assert_allclose(same["sd_ratio"].values, 1.0, rtol=1e-14)
    assert same.attrs["passed"]
    assert list(same.index) == ["theta[0]", "theta[1]", "theta[2]"]
    # an independent sample of the same law passes; a shift of 1 sd fails on the mean;
    # a scale of 1.3 fails on the sd
    other = _draws(seed=5, draws=1000)
    assert diagnostics.zscores(run, {"theta": other}).attrs["passed"]
    shifted = diagnostics.zscores(run, {"theta": other + 1.0})
    assert not shifted.attrs["passed"] and np.all(np.abs(shifted["z"]) > 4)
    scaled = diagnostics.zscores(run, {"theta": 1.3 * other})
    assert not scaled.attrs["passed"]
    np.testing.assert_allclose(scaled["sd_ratio"], 1 / 1.3, rtol=0.05)


def test_zscores_reference_as_datatree_and_single_chain():
    x = _draws(draws=800)
    run = diagnostics.to_datatree({"a": x[:, :, 0]})
    ref_dt = diagnostics.to_datatree({"a": _draws(seed=9, draws=800)[:, :, 0]})
    assert diagnostics.zscores(run, ref_dt).attrs["passed"]
    one_chain = _draws(seed=3, chains=1, draws=3000)[0, :, 0]  # (draw,) -> one chain
    assert diagnostics.zscores(run, {"a": one_chain}).shape[0] == 1
    with pytest.raises(ValueError, match="shares no variable"):
        diagnostics.zscores(run, {"b": one_chain})


def test_flatten_draws_names():
    arr, names = flatten_draws({"m": np.zeros((2, 3)), "w": np.zeros((2, 3, 2, 2))})
    assert arr.shape == (2, 3, 5)
    assert names == ["m", "w[0,0]", "w[0,1]", "w[1,0]", "w[1,1]"]


def test_save_load_roundtrip(tmp_path):
    x = _draws()
    stats = {"diverging": np.zeros((4, 500), bool), "num_grad_evals": np.ones((4, 500), np.int32)}
    stats["diverging"][0, 0] = True
    dt = diagnostics.to_datatree({"theta": x}, stats, attrs={"sampler": "fors", "wall_time_total": 1.5})
    path = diagnostics.save(dt, tmp_path / "sub" / "run.nc")
    back = diagnostics.load(path)
    np.testing.assert_array_equal(back["posterior"]["theta"].values, x)
    np.testing.assert_array_equal(back["sample_stats"]["diverging"].values, stats["diverging"])
    assert back["sample_stats"]["diverging"].dtype == bool
    assert back.attrs["sampler"] == "fors" and back.attrs["wall_time_total"] == 1.5
    with pytest.raises(FileNotFoundError):
        diagnostics.load(tmp_path / "missing.nc")
