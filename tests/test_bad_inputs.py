"""Reliability across the public API: bad inputs and non-finite values.

1. Bad inputs (wrong types, dtypes, shapes, ranges, non-finite values, unknown names, keys that
   are not keys) raise the right error type, with a message naming the argument, before anything
   is compiled: every call runs inside :func:`no_compilation` (a JAX monitoring listener on XLA
   compilations, from ``test_diffusion_api``). All arguments are built outside that block, as
   NumPy arrays or module-level constants, so that only the library's own work is watched.
   The cases of ``test_diffusion_api`` are not repeated here.
2. Containment: a log-density (``scoresample.sample``) or a score (``diffusion.sample``) that is
   NaN or infinite in a region the chains reach never gives a NaN draw; the refused steps are
   counted (``sample_stats["diverging"]``, ``DiffusionResult.is_divergent`` and ``info``).
"""

import atexit
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_diffusion_api import no_compilation

import scoresample
from scoresample import diagnostics, diffusion, metrics, nn, posteriordb, processes, targets, train
from scoresample.bayes import ula

KEY = jax.random.key(0)
MIX = targets.four_modes_2d()
ZEROS2 = np.zeros(2)
POINTS = np.random.default_rng(0).normal(size=(20, 2))
POINTS_NAN = POINTS.copy()
POINTS_NAN[3, 1] = np.nan
DT = diagnostics.to_datatree(np.random.default_rng(1).normal(size=(2, 50, 2)))


def logdensity(x):
    return -0.5 * jnp.sum(x**2)


def _sample(**kwargs):
    args = dict(model=logdensity, init=ZEROS2, progress_bar=False, num_warmup=5, num_draws=5,
                num_chains=2)
    args.update(kwargs)
    return scoresample.sample(KEY, args.pop("model"), **args)


def _diffusion(**kwargs):
    args = dict(method="ddpm", score_fn=MIX.score, dim=2, num_samples=4)
    args.update(kwargs)
    return diffusion.sample(KEY, args.pop("method"), args.pop("score_fn"), **args)


def _fit(**kwargs):
    args = dict(data=POINTS, num_steps=4, batch_size=4, progress_bar=False)
    args.update(kwargs)
    return train.fit_score(KEY, args.pop("data"), **args)


def _nan_start(rng_key):
    del rng_key
    return np.array([np.nan, 0.0])


# (id, call, error type, the argument the message must name)
# a posteriordb folder with no posteriors, so that the name check does not depend on the shared copy
_EMPTY_DB = tempfile.mkdtemp(prefix="empty_posteriordb_")
os.makedirs(os.path.join(_EMPTY_DB, "posteriors"))
atexit.register(shutil.rmtree, _EMPTY_DB, True)

CASES = [
    # ---- scoresample.sample ----
    ("sample-num_chains-bool", lambda: _sample(num_chains=True), TypeError, "num_chains"),
    ("sample-num_warmup-negative", lambda: _sample(num_warmup=-1), ValueError, "num_warmup"),
    ("sample-thin-zero", lambda: _sample(thin=0), ValueError, "thin"),
    ("sample-chunk_size-zero", lambda: _sample(chunk_size=0), ValueError, "chunk_size"),
    ("sample-max_preopt-negative", lambda: _sample(max_preopt_iterations=-1), ValueError,
     "max_preopt_iterations"),
    ("sample-init-int-dtype", lambda: _sample(init=np.zeros(2, np.int64)), TypeError, "init"),
    ("sample-init-complex", lambda: _sample(init=np.zeros(2, complex)), TypeError, "init"),
    ("sample-init-pytree-inf", lambda: _sample(init=(np.inf, ZEROS2),
                                               model=lambda p: -p[0] ** 2 - jnp.sum(p[1] ** 2)),
     ValueError, "init"),
    ("sample-model-not-callable", lambda: _sample(model=3.0), TypeError, "model"),
    ("sample-method_options-list", lambda: _sample(method_options=[("clip", 1.0)]), TypeError,
     "method_options"),
    ("sample-fors-clip-negative", lambda: _sample(method="fors", method_options={"clip": -1.0}),
     ValueError, "clip"),
    ("sample-step_size-as-option", lambda: _sample(method="mala", method_options={"step_size": 1.0}),
     ValueError, "step_size"),
    ("sample-rtk-friction-zero", lambda: _sample(method="rtk", method_options={
        "inner": "uld", "friction": 0.0}), ValueError, "friction"),
    ("sample-preoptimize-str", lambda: _sample(preoptimize="no"), TypeError, "preoptimize"),
    ("sample-model_kwargs-list", lambda: _sample(model_kwargs=[1]), TypeError, "model_kwargs"),
    ("sample-output-int", lambda: _sample(output=3), TypeError, "output"),
    # ---- kernels: top-level APIs and init ----
    ("rtk-step_size-zero", lambda: scoresample.rtk(logdensity, 0.0), ValueError, "step_size"),
    ("rtk-step_size-bool", lambda: scoresample.rtk(logdensity, True), TypeError, "step_size"),
    ("rtk-step_size-array", lambda: scoresample.rtk(logdensity, np.ones(2)), TypeError, "step_size"),
    ("rtk-init-int-position", lambda: scoresample.rtk.init(np.zeros(2, np.int32), logdensity),
     TypeError, "position"),
    ("rtk-init-nan-position", lambda: scoresample.rtk.init(np.array([0.0, np.nan]), logdensity),
     ValueError, "position"),
    ("fors-step_size-complex", lambda: scoresample.fors(logdensity, 1j), TypeError, "step_size"),
    ("fors-inverse_mass_matrix-not-symmetric", lambda: scoresample.fors(
        logdensity, 0.1, inverse_mass_matrix=np.array([[1.0, 0.5], [0.0, 1.0]])), ValueError,
     "inverse_mass_matrix"),
    ("picard-step_size-zero", lambda: scoresample.picard_langevin(logdensity, 0.0), ValueError,
     "step_size"),
    ("picard-num_points-zero", lambda: scoresample.picard_langevin(logdensity, 0.1, num_points=0),
     ValueError, "num_points"),
    ("picard-num_iterations-float", lambda: scoresample.picard_langevin(
        logdensity, 0.1, num_iterations=2.0), TypeError, "num_iterations"),
    ("picard-shard-str", lambda: scoresample.picard_langevin(logdensity, 0.1, shard="yes"),
     TypeError, "shard"),
    ("picard-logdensity-none", lambda: scoresample.picard_langevin(None, 0.1), TypeError,
     "logdensity_fn"),
    ("ula-step_size-zero", lambda: ula(logdensity, 0.0), ValueError, "step_size"),
    # ---- diffusion.sample options of the kernels' plans (not in test_diffusion_api) ----
    ("diffusion-num_samples-bool", lambda: _diffusion(num_samples=True), TypeError, "num_samples"),
    ("diffusion-rtk-mala-nfe-too-small", lambda: _diffusion(method="rtk-mala", nfe=2), ValueError,
     "nfe"),
    ("diffusion-rtk-mala-energy_fn-vector", lambda: _diffusion(
        method="rtk-mala", energy_fn=lambda x, t: x), ValueError, "energy_fn"),
    ("diffusion-rtk-mala-acceptance-unknown", lambda: _diffusion(method="rtk-mala",
                                                                 acceptance="approx"),
     ValueError, "acceptance"),
    ("diffusion-rtk-mala-energy-without-energy_fn", lambda: _diffusion(method="rtk-mala",
                                                                       acceptance="energy"),
     ValueError, "energy_fn"),
    ("diffusion-rtk-mala-option-unknown", lambda: _diffusion(method="rtk-mala", energy="approx"),
     TypeError, "energy"),
    ("diffusion-fors-delta-above-one", lambda: _diffusion(method="fors", delta=1.5), ValueError,
     "delta"),
    ("diffusion-picard-block_sizes-sum", lambda: _diffusion(
        method="picard-sde", num_steps=10, block_sizes=[3, 3]), ValueError, "block_sizes"),
    ("diffusion-paradigms-tol-negative", lambda: _diffusion(method="paradigms", tol=-1.0),
     ValueError, "tol"),
    ("diffusion-per_particle_info-str", lambda: _diffusion(per_particle_info="yes"), TypeError,
     "per_particle_info"),
    # ---- targets ----
    ("mixture-weights-not-summing-to-1", lambda: targets.GaussianMixture(
        [0.3, 0.3], [[0.0], [1.0]], [[[1.0]], [[1.0]]]), ValueError, "weights"),
    ("mixture-covs-not-symmetric", lambda: targets.GaussianMixture(
        [1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]]), ValueError, "covs"),
    ("mixture-covs-shape", lambda: targets.GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0]]]),
     ValueError, "covs"),
    ("mixture-means-complex", lambda: targets.GaussianMixture([1.0], [[1j]], [[[1.0]]]), TypeError,
     "means"),
    ("gaussian-cov-shape", lambda: targets.Gaussian(ZEROS2, np.eye(3)), ValueError, "cov"),
    ("mixture-sample-negative-t", lambda: MIX.sample(KEY, 10, t=-1.0), ValueError, "t"),
    ("mixture-sample-n-zero", lambda: MIX.sample(KEY, 0), ValueError, "n"),
    ("mixture-sample-key-int", lambda: MIX.sample(3, 10), TypeError, "rng_key"),
    ("mixture-score-wrong-shape", lambda: MIX.score(np.zeros(3), 0.1), ValueError, "x"),
    ("mixture-score-batch", lambda: MIX.score(np.zeros((5, 2)), 0.1), ValueError, "x"),
    ("mixture-score-negative-t", lambda: MIX.score(ZEROS2, -0.1), ValueError, "t"),
    ("subspace_mixture-dim-one", lambda: targets.subspace_mixture(dim=1), ValueError, "dim"),
    # ---- processes ----
    ("time_grid-num_steps-bool", lambda: processes.time_grid(True, 1e-3, 1.0), TypeError,
     "num_steps"),
    ("time_grid-t_min-zero", lambda: processes.time_grid(10, 0.0, 1.0), ValueError, "t_min"),
    ("li_yan_schedule-one-step", lambda: processes.li_yan_schedule(1), ValueError, "num_steps"),
    # ---- metrics ----
    ("energy_distance-nan", lambda: metrics.energy_distance(POINTS_NAN, POINTS), ValueError, "x"),
    ("energy_distance-complex", lambda: metrics.energy_distance(POINTS, POINTS + 1j), TypeError,
     "y"),
    ("energy_distance-unbiased-str", lambda: metrics.energy_distance(POINTS, POINTS, unbiased="yes"),
     TypeError, "unbiased"),
    ("energy_distance-block_size-zero", lambda: metrics.energy_distance(
        POINTS, POINTS, block_size=0), ValueError, "block_size"),
    ("mmd-unbiased-int", lambda: metrics.mmd(POINTS, POINTS, unbiased=1), TypeError, "unbiased"),
    ("sliced_wasserstein-p-zero", lambda: metrics.sliced_wasserstein(KEY, POINTS, POINTS, p=0),
     ValueError, "p"),
    ("mode_weight_error-not-a-mixture", lambda: metrics.mode_weight_error(POINTS, "mix"), TypeError,
     "mixture"),
    ("pairwise_sum-kind", lambda: metrics.pairwise_sum(POINTS, POINTS, kind="cosine"), ValueError,
     "kind"),
    # ---- nn and train ----
    ("mlp-depth-float", lambda: nn.MLP(2, depth=1.5, rngs=None), TypeError, "depth"),
    ("mlp-hidden-negative", lambda: nn.MLP(2, hidden=-1, rngs=None), ValueError, "hidden"),
    ("score_model-conv-not-square", lambda: nn.score_model(5, kind="conv"), ValueError, "dim"),
    ("score_model-data_std-zero", lambda: nn.score_model(2, data_std=0.0), ValueError, "data_std"),
    ("convnet-groups", lambda: nn.ConvNet(8, channels=30, groups=8, rngs=None), ValueError,
     "groups"),
    ("build-config-not-dict", lambda: nn.build([1]), TypeError, "config"),
    ("fit_score-data-nan", lambda: _fit(data=POINTS_NAN), ValueError, "data"),
    ("fit_score-data-complex", lambda: _fit(data=POINTS + 1j), TypeError, "data"),
    ("fit_score-batch_size-zero", lambda: _fit(batch_size=0), ValueError, "batch_size"),
    ("fit_score-time_sampling", lambda: _fit(time_sampling="uniform"), ValueError, "time_sampling"),
    ("fit_score-loop", lambda: _fit(loop="while"), ValueError, "loop"),
    ("fit_score-t_min-above-t_max", lambda: _fit(t_min=5.0, t_max=1.0), ValueError, "t_min"),
    ("fit_score-warmup_steps-above-num_steps", lambda: _fit(warmup_steps=10), ValueError,
     "warmup_steps"),
    ("fit_score-final_lr_fraction-above-1", lambda: _fit(final_lr_fraction=2.0), ValueError,
     "final_lr_fraction"),
    ("fit_score-progress_bar-str", lambda: _fit(progress_bar="yes"), TypeError, "progress_bar"),
    ("fit_score-callback-not-callable", lambda: _fit(callback=3), TypeError, "callback"),
    ("run_training-dataset", lambda: train.run_training("mnist"), ValueError, "dataset"),
    ("run_training-num_steps-zero", lambda: train.run_training("two-moons", num_steps=0),
     ValueError, "num_steps"),
    # ---- diagnostics ----
    ("summary-not-a-datatree", lambda: diagnostics.summary(np.zeros((2, 50))), TypeError, "dt"),
    ("summary-unknown-group", lambda: diagnostics.summary(DT, group="prior"), ValueError, "group"),
    ("summary-unknown-var_names", lambda: diagnostics.summary(DT, var_names=["nope"]), ValueError,
     "var_names"),
    ("summary-ci_prob-above-1", lambda: diagnostics.summary(DT, ci_prob=2.0), ValueError, "ci_prob"),
    ("overview-not-a-datatree", lambda: diagnostics.overview(3), TypeError, "dt"),
    ("zscores-not-a-datatree", lambda: diagnostics.zscores({"x": 1}, DT), TypeError, "dt"),
    ("zscores-z_max-zero", lambda: diagnostics.zscores(DT, DT, z_max=0.0), ValueError, "z_max"),
    ("zscores-reference-type", lambda: diagnostics.zscores(DT, 3), TypeError, "reference"),
    ("report-max_plot_components-zero", lambda: diagnostics.report(
        DT, "unused.html", max_plot_components=0), ValueError, "max_plot_components"),
    ("report-path-int", lambda: diagnostics.report(DT, 3), TypeError, "path"),
    ("to_datatree-var_names-length", lambda: diagnostics.to_datatree(
        np.zeros((2, 5, 2)), var_names=["a"]), ValueError, "var_names"),
    # ---- posteriordb ----
    ("posteriordb-unknown-name", lambda: posteriordb.load("no-such-posterior", root=_EMPTY_DB),
     ValueError, "name"),
    ("posteriordb-name-int", lambda: posteriordb.load(3), TypeError, "name"),
]

CASES += [
    ("fors-init-int-position", lambda: scoresample.fors.init(np.zeros(2, np.int32), logdensity),
     TypeError, "position"),
    ("picard-init-int-position",
     lambda: scoresample.picard_langevin.init(np.zeros(2, np.int32), logdensity), TypeError,
     "position"),
    ("picard-init-nan-position",
     lambda: scoresample.picard_langevin.init(np.array([np.nan, 0.0]), logdensity), ValueError,
     "position"),
    ("diffusion-score_fn-int-output",
     lambda: _diffusion(score_fn=lambda x, t: jnp.zeros(2, jnp.int32)), TypeError, "score_fn"),
    ("diffusion-progress_bar-str", lambda: _diffusion(progress_bar="yes"), TypeError,
     "progress_bar"),
]


@pytest.mark.parametrize("call, error, name", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_before_compiling_and_names_the_argument(call, error, name):
    with no_compilation(), pytest.raises(error, match=name):
        call()


def test_sample_rejects_a_start_function_giving_nan():
    # the start function has to run (and may compile) before its output can be checked; what
    # matters is that the error names init and comes before any warmup or sampling
    with pytest.raises(ValueError, match="init"):
        _sample(init=_nan_start, model=_untraceable_after_eval_shape())


def _untraceable_after_eval_shape():
    """A log-density that may be traced abstractly (eval_shape) but never evaluated."""
    def fn(x):
        if not isinstance(x, jax.core.Tracer):
            raise AssertionError("the log-density was evaluated before init was checked")
        return -0.5 * jnp.sum(x**2)

    return fn


def test_the_cases_are_distinct_and_enough():
    ids = [c[0] for c in CASES]
    assert len(set(ids)) == len(ids) >= 30


# ---------------------------------------------------------------------------------------------
# Containment of non-finite values
# ---------------------------------------------------------------------------------------------

EDGE = 2.5  # beyond x0 = EDGE the log-density is broken; x0 has sd 2, so the chains get there


def _broken(kind):
    bad_value = {"nan": jnp.nan, "inf": jnp.inf}[kind]

    def logdensity_fn(x):
        value = -0.5 * jnp.sum(x**2 / jnp.array([4.0, 1.0]))
        # value and gradient are both NaN (or infinite) beyond the edge
        return jnp.where(x[0] > EDGE, bad_value, 1.0) * value

    return logdensity_fn


# mala is covered by test_sample.test_non_finite_values_are_contained_and_reported
@pytest.mark.parametrize("method, kind", [("fors", "nan"), ("rtk", "inf"), ("ula", "nan"),
                                          ("nuts", "inf"), ("picard", "nan")])
def test_sample_contains_a_broken_logdensity(method, kind):
    dt = scoresample.sample(jax.random.key(5), _broken(kind), init=ZEROS2, method=method,
                            num_warmup=60, num_draws=100, num_chains=2, preoptimize=False,
                            progress_bar=False)
    x = dt["posterior"]["x"].values
    assert x.shape == (2, 100, 2) and np.all(np.isfinite(x))
    diverging = dt["sample_stats"]["diverging"].values
    assert diverging.dtype == bool and diverging.any()
    assert dt.attrs["num_divergent"] == int(diverging.sum())
    beyond = x[..., 0] > EDGE
    if method in ("rtk", "nuts", "ula"):
        # these evaluate the gradient at the point they move to: a move beyond the edge is refused
        assert not beyond.any()
    else:
        # FORS and Picard never evaluate the gradient at the point they land on, so a chain may
        # land beyond the edge (a finite point); every step from there that meets the bad region
        # is refused and flagged: a chain that stays put beyond the edge is flagged each time
        stays = beyond[:, 1:] & np.all(x[:, 1:] == x[:, :-1], axis=-1)
        assert np.all(diverging[:, 1:][stays])


def _broken_score(x, t):
    # the score is NaN on the right half-plane at late times: half the particles go there
    return jnp.where((x[0] > 1.0) & (t < 0.5), jnp.nan, 1.0) * MIX.score(x, t)


@pytest.mark.parametrize("method, options", [
    ("ddpm", dict(nfe=20)),
    ("rtk-mala", dict(nfe=30)),
    ("fors", dict(delta=0.5, max_proposals=16)),
    ("picard-sde", dict(num_steps=20, num_blocks=2, num_iterations=3)),
])
def test_diffusion_contains_a_broken_score(method, options):
    res = diffusion.sample(jax.random.key(1), method, _broken_score, dim=2, num_samples=16,
                           **options)
    assert np.all(np.isfinite(np.asarray(res.samples)))
    flagged = np.asarray(res.is_divergent)
    assert flagged.any() and not flagged.all()
    # the flag of a particle comes from the Info of the steps: some step met the bad region
    assert float(np.max(np.asarray(res.info.is_divergent))) > 0.0
