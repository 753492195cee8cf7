"""Tests run in float64 with strict rank promotion, so that shape bugs fail loudly.

Under CI (the environment variable ``CI`` set, as CI runs do), a skipped test or module fails the run:
whatever a test needs, the project's own set-up must install, so a skip there is a hole in the suite.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import pytest  # noqa: E402

IS_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _fail_skip(report):
    """Turn a skip report into a failure that says what was skipped and why."""
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI (CI={os.environ.get('CI')!r}), which fails the run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if IS_CI:
        _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    if IS_CI:
        _fail_skip(outcome.get_result())


@pytest.fixture
def posteriordb_root():
    """The posteriordb source that ``scoresample.posteriordb.load`` reads by default: None for the
    subset shipped in the package, else ``$SCORESAMPLE_POSTERIORDB``."""
    from scoresample import posteriordb

    return posteriordb.find_root()


@pytest.fixture
def grad_counter():
    """Count the calls that a jitted function really makes, through a host callback.

    ``counted = grad_counter.wrap(fn)`` returns ``fn`` with an ``io_callback`` that adds the size of
    its batch to ``grad_counter.count`` each time the compiled program evaluates it (a ``vmap`` of
    ``n`` particles adds ``n``; a ``while_loop`` adds once per iteration it runs). The count is what
    executed, not what the sampler's bookkeeping reports. ``grad_counter.reset()`` zeroes it.
    """
    from statcheck import CallCounter

    return CallCounter()
