"""scoresample.diagnostics.report: one self-contained HTML page; it renders in headless Chromium."""

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from scoresample import diagnostics

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _run(seed, loc=0.0, sampler="fors", grads=4000):
    rng = np.random.default_rng(seed)
    posterior = {"mu": loc + rng.normal(size=(2, 200)), "theta": rng.normal(size=(2, 200, 3))}
    stats = {"acceptance_rate": rng.uniform(0.5, 0.9, size=(2, 200)),
             "diverging": np.zeros((2, 200), bool),
             "num_grad_evals": np.full((2, 200), grads // 400, np.int32)}
    dt = diagnostics.to_datatree(posterior, stats)
    dt.attrs.update(sampler=sampler, num_grad_evals_sampling=grads, num_grad_evals_warmup=100,
                    wall_time_sampling=0.5, wall_time_warmup=0.1, wall_time_total=1.0,
                    settings=json.dumps({"method": sampler, "num_chains": 2, "num_draws": 200}))
    return dt


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "out" / "report.html"
    rng = np.random.default_rng(99)
    reference = {"mu": rng.normal(size=(4, 1000)), "theta": rng.normal(size=(4, 1000, 3))}
    written = diagnostics.report({"fors": _run(0), "nuts": _run(1, sampler="nuts"),
                                  "biased": _run(2, loc=3.0, sampler="ula")},
                                 path, reference=reference, title="test report")
    assert written == path
    return path, path.read_text()


def test_page_holds_tables_plots_and_zscores(page):
    _, text = page
    assert text.startswith("<!DOCTYPE html>")
    assert "<script" not in text and "http://" not in text and "https://" not in text
    # comparison + settings + summary for each run, z-score tables, and 3 plots per run
    assert text.count("class='summary'") == 3 + 3  # 3 summaries and 3 z-score tables
    assert "ess_bulk_per_1000_grad" in text and "r_hat" in text
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(images) == 9
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    # the shifted run is flagged against the reference, the others match
    assert text.count("does not match") == 1
    assert text.count("<span class='pass'>matches</span>") == 2


def test_report_accepts_one_datatree_and_sections(tmp_path):
    path = diagnostics.report(_run(3), tmp_path / "one.html")
    assert path.read_text().count("data:image/png;base64,") == 3
    path = diagnostics.report({"model A": {"fors": _run(4)}, "model B": {"rtk": _run(5)}},
                              tmp_path / "two.html", reference={"model B": {"mu": np.zeros((1, 50))}})
    text = path.read_text()
    assert "<h2>model A</h2>" in text and "<h2>model B</h2>" in text
    assert text.count("Against the reference") == 1  # only model B has one


def test_report_marks_the_rows_the_convergence_warning_names(tmp_path):
    stuck = _run(6)
    theta = stuck["posterior"]["theta"].values.copy()
    theta[1, :, 0] += 3.0  # chain 1 sits elsewhere in theta[0]: R-hat far above 1.01
    stuck["posterior"]["theta"].values[:] = theta
    rng = np.random.default_rng(7)  # enough iid draws that R-hat is within 1.01 of 1
    fine = diagnostics.to_datatree({"mu": rng.normal(size=(4, 5000))},
                                   {"diverging": np.zeros((4, 5000), bool)})
    text = diagnostics.report({"stuck": stuck, "fine": fine}, tmp_path / "marks.html",
                              max_plot_components=1).read_text()
    problems = diagnostics.convergence_problems(stuck)
    assert [p.split(" for ")[1].split(" (")[0] for p in problems] == ["theta[0]"] * 3
    assert problems[0].startswith("R-hat above 1.01") and problems[1].startswith("bulk ESS")
    assert diagnostics.convergence_problems(fine) == []
    assert text.count("May not have converged: R-hat above 1.01 for theta[0] (") == 1
    # only the stuck component's summary row is marked
    assert text.count("<tr class='bad'><td>theta[0]</td>") == 1
    assert text.count("<tr class='bad'>") == 1


def test_report_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError, match="DataTree"):
        diagnostics.report([1, 2], tmp_path / "x.html")
    with pytest.raises(TypeError, match="DataTree"):
        diagnostics.report({"a": 3}, tmp_path / "x.html")


def _chromium(args, tmp_path, timeout=120):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
           "--v=0"] + args
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/bootstrap.sh "
                    "installs it; under CI this skip fails the run)")
def test_report_opens_in_headless_chromium_without_console_errors(page, tmp_path):
    path, _ = page
    url = path.resolve().as_uri()
    shot = tmp_path / "shot.png"
    result = _chromium([f"--screenshot={shot}", "--window-size=1280,2400", url], tmp_path)
    assert shot.exists() and shot.stat().st_size > 10_000, result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "error" in line.lower()], console
    dom = _chromium(["--dump-dom", url], tmp_path)
    html = dom.stdout
    assert "<table" in html and "ess_bulk" in html
    assert html.count("<img") == 9
    assert "test report" in html
    errors = [line for line in dom.stderr.splitlines()
              if "CONSOLE" in line and "error" in line.lower()]
    assert not errors, errors
