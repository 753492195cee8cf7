"""Under CI a skipped test fails the run (the hook in tests/conftest.py); elsewhere a skip stays a skip.

Each case runs pytest in a subprocess on a folder holding a copy of the suite's conftest.py and one
test file that skips (a skipped test, a ``skipif``, a module-level skip).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

SKIPPING = '''
import pytest

def test_runs():
    assert True

def test_skips():
    pytest.skip("no chromium")

@pytest.mark.skipif(True, reason="not installed")
def test_skipif():
    pass

@pytest.mark.xfail(reason="known", strict=True)
def test_xfail():
    assert False
'''

MODULE_SKIP = '''
import pytest
pytest.skip("no data folder", allow_module_level=True)

def test_never():
    pass
'''


def _run(tmp_path, source, ci):
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_case.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:xdist", "-o", "addopts=", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("ci", ["true"])
def test_a_skip_fails_the_run_under_ci(tmp_path, ci):
    res = _run(tmp_path, SKIPPING, ci)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    # a skip in the test body fails it; a skipif fails its setup (an error): neither is a skip
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in out, out
    assert "FAILED test_case.py::test_skips - skipped under CI" in out and "no chromium" in out
    assert "ERROR test_case.py::test_skipif - skipped under CI" in out and "not installed" in out


def test_a_module_level_skip_fails_the_run_under_ci(tmp_path):
    res = _run(tmp_path, MODULE_SKIP, "true")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "skipped under CI" in out and "no data folder" in out, out


@pytest.mark.parametrize("ci", [None, "0"])
def test_a_skip_is_a_skip_outside_ci(tmp_path, ci):
    res = _run(tmp_path, SKIPPING, ci)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "1 passed, 2 skipped, 1 xfailed" in out, out
