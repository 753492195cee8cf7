"""The scoresample command line: parsing, `sample`, `train` hand-off, `bench`, `demo`."""

import json
import re

import numpy as np
import pytest

from scoresample import cli, models
from scoresample.posteriordb import resolve_model


def test_parser_knows_every_command():
    parser = cli.build_parser()
    for argv in (["demo", "--quick"], ["sample", "--model", "kidiq"],
                 ["bench", "--posteriordb", "/x"], ["train", "--dataset", "two-moons"]):
        args = parser.parse_args(argv)
        assert args.command == argv[0]
    with pytest.raises(SystemExit):
        parser.parse_args([])
    with pytest.raises(SystemExit):
        parser.parse_args(["sample", "--model", "kidiq", "--method", "hmc"])


def test_train_passes_its_arguments_to_run_training(monkeypatch):
    seen = {}

    class Trained:
        num_steps_done = 7
        losses = np.ones(7)

    def fake_run_training(dataset, **kwargs):
        seen.update(dataset=dataset, **kwargs)
        return Trained()

    import scoresample.train

    monkeypatch.setattr(scoresample.train, "run_training", fake_run_training)
    code = cli.main(["train", "--dataset", "two-moons", "--parameterization", "energy",
                     "--num-steps", "7", "--batch-size", "16", "--learning-rate", "0.01",
                     "--out", "somewhere", "--seed", "3", "--resume"])
    assert code == 0
    assert seen == dict(dataset="two-moons", parameterization="energy", num_steps=7,
                        batch_size=16, learning_rate=0.01, out="somewhere", seed=3, resume=True)


def test_errors_are_reported_with_exit_code_2(tmp_path, capsys):
    assert cli.main(["bench", "--posteriordb", str(tmp_path)]) == 2
    assert "not a posteriordb folder" in capsys.readouterr().out
    (tmp_path / "posteriors").mkdir()
    assert cli.main(["sample", "--model", "no_such_posterior", "--posteriordb", str(tmp_path),
                     "--no-progress"]) == 2
    assert "unknown name" in capsys.readouterr().out


def test_sample_writes_draws_and_report(tmp_path, capsys):
    from scoresample import diagnostics

    out, page = tmp_path / "run.nc", tmp_path / "run.html"
    code = cli.main(["sample", "--model", "kidiq", "--method", "mala", "--num-chains", "2",
                     "--num-warmup", "100", "--num-draws", "100", "--out", str(out),
                     "--report", str(page), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "ess_bulk" in text and "posteriordb reference" in text
    dt = diagnostics.load(out)
    assert set(dt["posterior"].data_vars) == {"beta", "sigma"}
    assert dt["posterior"]["beta"].shape == (2, 100, 3)
    assert "data:image/png;base64," in page.read_text()


def test_resolve_model_kinds():
    model, args, kwargs, ref = resolve_model("eight_schools_numpyro")
    assert (model is models.eight_schools_numpyro and len(args) == 1 and "y" in kwargs
            and ref is None)
    model, _, _, ref = resolve_model("eight_schools")
    assert ref.variable_names == ("theta", "mu", "tau") and ref.num_params == 10
    model, _, _, _ = resolve_model("breast_cancer")
    assert model.dim == 31 and set(model.constrain(np.zeros(31))) == {"intercept", "beta"}


def _fake_result(posterior, method, passed, ess, grads_per_draw):
    return {"posterior": posterior, "method": method, "preconditioner": "dense", "dim": 4,
            "passed": passed, "max_abs_z": 1.0 if passed else 6.0, "max_sd_error": 0.02,
            "failures": [] if passed else ["b"], "worst_z_param": "b", "worst_sd_param": "a",
            "min_ess_bulk": ess, "max_r_hat": 1.0, "grad_evals_sampling": 4000 * grads_per_draw,
            "grad_evals_warmup": 100, "grads_per_draw": grads_per_draw,
            "ess_per_1000_grad": ess / (4 * grads_per_draw), "ess_per_s": ess / 2.0,
            "wall_sampling": 2.0, "wall_warmup": 1.0, "wall_total": 5.0, "divergent": 0,
            "acceptance": 0.8, "step_size": 0.5, "laplace_curvature": 1.0, "thin": 1,
            "command": "python benchmarks/posteriordb_methods.py --test", "num_chains": 4,
            "num_warmup": 1000, "num_draws": 1000, "seed": 0, "budget": "nuts"}


def test_bench_renders_its_tables_from_results(tmp_path):
    from scoresample import bench
    results = {"kidiq|nuts|dense": _fake_result("kidiq", "nuts", True, 2000.0, 10.0),
               "kidiq|fors|dense": _fake_result("kidiq", "fors", False, 50.0, 5.0)}
    (tmp_path / "r.json").write_text(json.dumps(results))
    bench.main(["--render-only", "--results", str(tmp_path / "r.json"),
                "--out", str(tmp_path / "pass.md"), "--ess-out", str(tmp_path / "ess.md")])
    text = (tmp_path / "pass.md").read_text()
    assert "| kidiq | 4 | **FAIL**" in text and "pass (ESS 2000)" in text
    assert "**1/1**" in text and "**0/1**" in text
    assert "mean |z| = 6.0 (b)" in text  # the failure's reason
    ess = (tmp_path / "ess.md").read_text()
    assert "| kidiq | fors (dense) | FAIL | 50 | 2.5 |" in ess
    assert "| fors (dense) | 1 | 0.05 |" in ess  # ESS/1k grad ratio to NUTS: 2.5 / 50


def _tbody_rows(html: str) -> list[int]:
    """Number of body rows of each table in ``html``, in order."""
    return [body.count("<tr") for body in re.findall(r"<tbody>(.*?)</tbody>", html, re.DOTALL)]


@pytest.mark.slow
def test_demo_quick_writes_a_report(tmp_path, capsys):
    """Every section of the demo ran (none skipped, e.g. for want of data) and each section's tables
    have their rows: one per method in each comparison, one per parameter against the reference."""
    out = tmp_path / "demo" / "report.html"
    code = cli.main(["demo", "--out", str(out), "--quick", "--methods", "mala",
                     "--num-chains", "2", "--num-warmup", "60", "--num-draws", "60",
                     "--train-steps", "30"])
    assert code == 0
    text = out.read_text()
    printed = capsys.readouterr().out
    assert "report:" in printed and "min ESS" in printed
    assert "skipped" not in printed.lower() and "Skipped" not in text
    sections = re.split(r"<h2>", text)[1:]
    titles = [s.split("</h2>", 1)[0] for s in sections]
    assert titles[:2] == ["logistic regression (breast cancer, d=31)",
                          "eight schools (non-centred, d=10)"], titles
    assert any(t.startswith("Score network") for t in titles), titles
    logistic, schools = sections[0], sections[1]
    # comparison table: one row per method (one here); then the run's summary (one row per
    # component: intercept + 30 coefficients for the regression)
    assert _tbody_rows(logistic)[0] == 1 and 31 in _tbody_rows(logistic)
    # eight schools adds the reference z-scores: theta[0..7], mu, tau
    assert _tbody_rows(schools)[0] == 1 and "Against the reference" in schools
    assert _tbody_rows(schools.split("Against the reference", 1)[1])[0] == 10
    net = next(s for t, s in zip(titles, sections) if t.startswith("Score network on"))
    # a row per diffusion sampler (ours beside the baselines) and one for fresh data
    from scoresample.demo import NET_SAMPLERS

    assert _tbody_rows(net)[0] == len(NET_SAMPLERS) + 1
    for label in ("rtk-mala (factory)", "rtk-mala (energy head)", "fors", "picard-sde"):
        assert f"<td>{label}</td>" in net, label
