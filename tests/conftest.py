"""Tests run in float64 with strict rank promotion, so that shape bugs fail loudly."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import pytest  # noqa: E402


@pytest.fixture
def posteriordb_root():
    """The posteriordb folder (``$SCORESAMPLE_POSTERIORDB`` or ``shared/posteriordb`` beside a
    parent of the package, as on the project's machines); the test is skipped where there is none."""
    from scoresample import posteriordb

    try:
        return posteriordb.find_root()
    except FileNotFoundError:
        pytest.skip("no posteriordb folder (set SCORESAMPLE_POSTERIORDB)")
