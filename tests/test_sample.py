"""scoresample.sample: models in, DataTree out; warmup pieces; streaming and resume."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresample.bayes import gradient_only_lbfgs, sample, window_schedule

# short runs here check mechanics, not convergence (tests/test_bayes_defaults.py checks warnings)
pytestmark = pytest.mark.filterwarnings("ignore::scoresample.diagnostics.ConvergenceWarning")

MEAN = np.array([1.0, -2.0, 0.5])
SD = np.array([1.0, 3.0, 0.2])


def gauss_logdensity(x):
    return -0.5 * jnp.sum(((x - MEAN) / SD) ** 2)


def _sd_ok(draws, sd, ess, z=4.5):
    """|sd_hat / sd - 1| within z standard errors (se of a sd estimate ~ 1 / sqrt(2 ESS))."""
    return np.all(np.abs(draws.std(axis=(0, 1)) / sd - 1) < z / np.sqrt(2 * ess))


# ---------------------------------------------------------------------------------------------
# Exact answers
# ---------------------------------------------------------------------------------------------


def test_lbfgs_reaches_the_exact_minimum_of_a_quadratic_from_gradients_only():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    hess = a @ a.T + 0.1 * np.eye(6)  # condition number in the hundreds
    target = rng.normal(size=6) * 5
    grad = jax.jit(lambda x: jnp.asarray(hess) @ (x - target))
    x, evals, iterations = gradient_only_lbfgs(grad, jnp.zeros(6))
    np.testing.assert_allclose(x, target, rtol=0, atol=1e-7)
    assert 0 < int(iterations) <= 60 and int(evals) >= int(iterations)


def test_lbfgs_never_uses_the_value():
    # a function whose value is NaN but whose gradient is right: the optimiser must not care
    @jax.custom_jvp
    def f(x):
        return jnp.nan * jnp.sum(x)

    @f.defjvp
    def f_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return jnp.nan * jnp.sum(x), jnp.dot(2.0 * (x - 3.0), t)

    x, _, _ = gradient_only_lbfgs(jax.grad(f), jnp.zeros(4))
    np.testing.assert_allclose(x, 3.0, atol=1e-8)


def test_window_schedule_is_stans():
    is_slow, is_end = window_schedule(1000)
    assert not is_slow[:75].any() and not is_slow[950:].any() and is_slow[75:950].all()
    np.testing.assert_array_equal(np.flatnonzero(is_end), [99, 149, 249, 449, 949])
    # short warmups: 15% / 75% / 10%, one slow window
    is_slow, is_end = window_schedule(100)
    np.testing.assert_array_equal(np.flatnonzero(is_slow), np.arange(15, 90))
    np.testing.assert_array_equal(np.flatnonzero(is_end), [89])
    assert not window_schedule(10)[0].any()


def test_laplace_start_is_exact_on_a_gaussian():
    # with no windows the preconditioner is the Laplace one: the sds, exactly, and the
    # preconditioned curvature is 1
    dt = sample(jax.random.key(0), gauss_logdensity, init=jnp.zeros(3), method="mala",
                num_warmup=0, num_draws=2, num_chains=2, progress_bar=False)
    details = json.loads(dt.attrs["warmup_details"])
    np.testing.assert_allclose(details["preconditioner_sd_range"], [0.2, 3.0], rtol=1e-10)
    np.testing.assert_allclose(details["laplace_curvature"], 1.0, rtol=1e-10)
    assert details["laplace_ok"] == [True, True]
    # L-BFGS evaluations + 2 per Hessian column per chain + the chains' inits, all counted
    # (and one check of each start)
    assert dt.attrs["num_grad_evals_warmup"] == (details["preopt_grad_evals"] + 2 * 2 * 3 + 2 + 2 + 2)


def test_nuts_scout_sets_the_preconditioner_and_counts_its_gradients():
    # no Laplace start: the preconditioner can only come from the scout, NUTS's window adaptation,
    # whose covariance the windows then keep (sds 0.2 to 3, learned from 4 x 300 steps); every
    # leapfrog gradient of the scout counts in the warmup, on top of the windows' own (MALA: one
    # per step, whatever the start)
    kwargs = dict(init=jnp.zeros(3), method="mala", num_warmup=300, num_draws=5, num_chains=4,
                  preoptimize=False, progress_bar=False)
    dt = sample(jax.random.key(4), gauss_logdensity, warmup_scout="nuts", **kwargs)
    details = json.loads(dt.attrs["warmup_details"])
    assert details["scout"] == "nuts"
    assert json.loads(dt.attrs["settings"])["warmup_scout"] == "nuts"
    np.testing.assert_allclose(details["preconditioner_sd_range"], [0.2, 3.0], rtol=0.15)
    plain = sample(jax.random.key(4), gauss_logdensity, **kwargs)
    assert details["scout_grad_evals"] >= 4 * 300
    assert dt.attrs["num_grad_evals_warmup"] == (plain.attrs["num_grad_evals_warmup"]
                                                 + details["scout_grad_evals"])
    # without the scout and the Laplace start the first preconditioner is the identity, and the
    # windows' estimate from MALA's own 300 steps is further off than the scout's
    sd_plain = json.loads(plain.attrs["warmup_details"])["preconditioner_sd_range"]
    assert (abs(np.log(np.asarray(sd_plain) / [0.2, 3.0])).max()
            > abs(np.log(np.asarray(details["preconditioner_sd_range"]) / [0.2, 3.0])).max())


def _funnel(z):
    """Neal's funnel, v ~ N(0, 3^2) and x_i | v ~ N(0, e^v): no step fits its neck and its mouth."""
    v, x = z[0], z[1:]
    return -v**2 / 18 - 0.5 * jnp.sum(x**2) * jnp.exp(-v) - 0.5 * x.size * v


@pytest.mark.slow
def test_auto_scout_runs_when_the_windows_moved_too_little_and_only_then():
    from scoresample.bayes.runners import SCOUT_MIN_DRAW_TIMES

    kwargs = dict(init=jnp.zeros(3), method="fors", num_warmup=100, num_draws=5, num_chains=2,
                  progress_bar=False)
    # FORS's windows on the funnel cover about one draw time: the scout runs, and the windows run
    # again (both passes and the scout counted: at least one gradient per step of each)
    dt = sample(jax.random.key(0), _funnel, **kwargs)
    details = json.loads(dt.attrs["warmup_details"])
    assert details["warmup_draw_times"] < SCOUT_MIN_DRAW_TIMES
    assert details["scout"] == "nuts (auto)"
    assert details["step_size"] != details["first_step_size"]
    assert dt.attrs["num_grad_evals_warmup"] >= details["scout_grad_evals"] + 2 * 2 * 100
    # on a standard Gaussian they cover hundreds: no scout, and the very draws of a run without it
    auto = sample(jax.random.key(0), gauss_logdensity, **kwargs)
    never = sample(jax.random.key(0), gauss_logdensity, warmup_scout=None, **kwargs)
    details = json.loads(auto.attrs["warmup_details"])
    assert details["warmup_draw_times"] > SCOUT_MIN_DRAW_TIMES and "scout" not in details
    np.testing.assert_array_equal(auto.posterior["x"].values, never.posterior["x"].values)


def test_bad_warmup_scout_is_named():
    with pytest.raises(ValueError, match="warmup_scout"):
        sample(jax.random.key(0), gauss_logdensity, init=jnp.zeros(3), warmup_scout="laplace")
    with pytest.raises(ValueError, match="warmup_scout"):
        sample(jax.random.key(0), gauss_logdensity, init=jnp.zeros(3), method="nuts",
               warmup_scout="nuts")


def test_mala_counts_exactly_one_gradient_per_step_and_thin_multiplies_it():
    dt = sample(jax.random.key(1), gauss_logdensity, init=jnp.zeros(3), method="mala",
                num_warmup=30, num_draws=20, num_chains=2, thin=3, progress_bar=False)
    np.testing.assert_array_equal(dt["sample_stats"]["num_grad_evals"].values, 3)
    assert dt.attrs["num_grad_evals_sampling"] == 2 * 20 * 3
    assert dt.attrs["num_grad_evals_total"] == (dt.attrs["num_grad_evals_warmup"]
                                                + dt.attrs["num_grad_evals_sampling"])


def test_same_key_same_draws_whatever_the_chunking():
    kwargs = dict(init=jnp.zeros(3), method="mala", num_warmup=40, num_draws=20, num_chains=2,
                  progress_bar=False)
    a = sample(jax.random.key(3), gauss_logdensity, chunk_size=5, **kwargs)
    b = sample(jax.random.key(3), gauss_logdensity, chunk_size=20, **kwargs)
    np.testing.assert_array_equal(a["posterior"]["x"].values, b["posterior"]["x"].values)
    assert len(np.unique(a["posterior"]["x"].values[0, :, 0])) > 5  # the chain moves


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(method="hmc"), ValueError, "method"),
    (dict(num_chains=0), ValueError, "num_chains"),
    (dict(num_draws=2.5), TypeError, "num_draws"),
    (dict(resume=True), ValueError, "resume"),
    (dict(preconditioner="full"), ValueError, "preconditioner"),
    (dict(method_options={"bogus": 1}, method="fors"), ValueError, "bogus"),
    (dict(method_options={"num_inner_steps": 0}, method="rtk"), ValueError, "num_inner_steps"),
    (dict(model_args=(1,)), ValueError, "NumPyro"),
    (dict(init=None), ValueError, "init"),
    (dict(init=jnp.array([0.0, jnp.nan, 0.0])), ValueError, "non-finite"),
    (dict(progress_bar="yes"), TypeError, "progress_bar"),
])
def test_bad_inputs_raise_before_compiling(kwargs, err, match):
    args = dict(init=jnp.zeros(3), progress_bar=False)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        sample(jax.random.key(0), gauss_logdensity, **args)


def test_bad_key_and_scalar_logdensity_checks():
    with pytest.raises(TypeError, match="rng_key"):
        sample(0, gauss_logdensity, init=jnp.zeros(3))
    with pytest.raises(ValueError, match="scalar"):
        sample(jax.random.key(0), lambda x: x, init=jnp.zeros(3), progress_bar=False)


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def test_mala_matches_a_gaussian_within_monte_carlo_error():
    import arviz_stats

    dt = sample(jax.random.key(2), gauss_logdensity, init=jnp.zeros(3), method="mala",
                num_warmup=300, num_draws=600, num_chains=4, progress_bar=False)
    x = dt["posterior"]["x"].values
    assert x.shape == (4, 600, 3) and np.all(np.isfinite(x))
    mcse = np.asarray(arviz_stats.mcse(x, method="mean", chain_axis=0, draw_axis=1))
    ess = np.asarray(arviz_stats.ess(x, method="bulk", chain_axis=0, draw_axis=1))
    assert np.all(np.abs(x.mean(axis=(0, 1)) - MEAN) < 4.5 * mcse)
    assert _sd_ok(x, SD, ess)
    assert 0.4 < float(dt["sample_stats"]["acceptance_rate"].mean()) < 0.8


def test_pytree_positions_keep_their_names():
    def logdensity(p):
        return -0.5 * (p["a"] ** 2 + jnp.sum((p["b"] - 1.0) ** 2))

    dt = sample(jax.random.key(0), logdensity, init={"a": 0.0, "b": jnp.zeros(2)}, method="mala",
                num_warmup=50, num_draws=40, num_chains=2, progress_bar=False)
    assert dt["posterior"]["a"].shape == (2, 40)
    assert dt["posterior"]["b"].shape == (2, 40, 2)


def test_non_finite_values_are_contained_and_reported():
    # NaN beyond x0 > 2.5 (a log-density that breaks down there): never a NaN draw, never a draw
    # beyond the edge, and the refused steps are flagged diverging
    def logdensity(x):
        value = -0.5 * jnp.sum(x**2 / jnp.array([4.0, 1.0]))
        return jnp.where(x[0] > 2.5, jnp.nan, value)

    dt = sample(jax.random.key(5), logdensity, init=jnp.zeros(2), method="mala", num_warmup=100,
                num_draws=400, num_chains=2, progress_bar=False)
    x = dt["posterior"]["x"].values
    assert np.all(np.isfinite(x)) and np.all(x[..., 0] <= 2.5)
    diverging = dt["sample_stats"]["diverging"].values
    assert diverging.any() and dt.attrs["num_divergent"] == int(diverging.sum())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["nuts", "rtk", "picard", "ula"])  # mala, fors: tests above
def test_every_method_returns_an_arviz_datatree(method):
    dt = sample(jax.random.key(0), gauss_logdensity, init=jnp.zeros(3), method=method,
                num_warmup=60, num_draws=25, num_chains=2, progress_bar=False)
    assert dt["posterior"]["x"].dims == ("chain", "draw", "x_dim_0")
    assert np.all(np.isfinite(dt["posterior"]["x"].values))
    stats = dt["sample_stats"]
    for name in ("acceptance_rate", "diverging", "num_grad_evals", "step_size"):
        assert stats[name].shape == (2, 25), name
    assert stats["diverging"].dtype == bool
    assert dt.attrs["sampler"] == method
    assert dt.attrs["num_grad_evals_sampling"] == int(stats["num_grad_evals"].values.sum())
    assert dt.attrs["num_grad_evals_sampling"] >= 2 * 25
    assert dt.attrs["num_grad_evals_warmup"] > 0
    for key in ("wall_time_warmup", "wall_time_sampling", "wall_time_total"):
        assert dt.attrs[key] >= 0
    settings = json.loads(dt.attrs["settings"])
    assert settings["method"] == method and settings["num_draws"] == 25
    if method == "nuts":
        np.testing.assert_array_equal(stats["num_grad_evals"].values, stats["n_steps"].values)


@pytest.mark.slow
def test_fors_never_evaluates_the_log_density_value():
    # FORS may only differentiate: a log-density whose VALUE is NaN (gradient right) must sample
    # N(MEAN, SD^2), through the whole pipeline (L-BFGS, Laplace start, warmup, sampling)
    import arviz_stats

    @jax.custom_jvp
    def logdensity(x):
        return jnp.nan * jnp.sum(x)

    @logdensity.defjvp
    def logdensity_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return jnp.nan * jnp.sum(x), jnp.dot(-(x - MEAN) / SD**2, t)

    dt = sample(jax.random.key(7), logdensity, init=jnp.zeros(3), method="fors", num_warmup=300,
                num_draws=400, num_chains=4, progress_bar=False)
    x = dt["posterior"]["x"].values
    assert np.all(np.isfinite(x))
    mcse = np.asarray(arviz_stats.mcse(x, method="mean", chain_axis=0, draw_axis=1))
    ess = np.asarray(arviz_stats.ess(x, method="bulk", chain_axis=0, draw_axis=1))
    assert np.all(np.abs(x.mean(axis=(0, 1)) - MEAN) < 4.5 * mcse)
    assert _sd_ok(x, SD, ess)
    assert not dt["sample_stats"]["diverging"].values.any()


def eight_schools(sigma, y=None):
    import numpyro
    import numpyro.distributions as dist

    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", 8):
        theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_trans)
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


Y_SCHOOLS = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA_SCHOOLS = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def _schools_draws(dt):
    """(chain, draw, 10) in posteriordb's order: theta[1..8], mu, tau."""
    posterior = dt["posterior"]
    return np.concatenate([posterior["theta"].values, posterior["mu"].values[..., None],
                           posterior["tau"].values[..., None]], axis=-1)


@pytest.mark.slow
def test_numpyro_eight_schools_with_fors_reports_constrained_sites_by_name():
    dt = sample(jax.random.key(11), eight_schools, model_args=(SIGMA_SCHOOLS,),
                model_kwargs={"y": Y_SCHOOLS}, method="fors", num_warmup=150, num_draws=50,
                num_chains=2, progress_bar=False)
    posterior = dt["posterior"]
    assert set(posterior.data_vars) == {"mu", "tau", "theta_trans", "theta"}
    assert posterior["theta"].shape == (2, 50, 8) and posterior["mu"].shape == (2, 50)
    assert posterior["theta"].dims == ("chain", "draw", "theta_dim_0")
    assert np.all(posterior["tau"].values > 0)  # constrained scale
    # theta is NumPyro's deterministic site, recomputed from the sampled ones
    np.testing.assert_allclose(
        posterior["theta"].values,
        posterior["mu"].values[..., None]
        + posterior["tau"].values[..., None] * posterior["theta_trans"].values, rtol=1e-10)
    # the unconstrained group holds log(tau)
    np.testing.assert_allclose(np.exp(dt["unconstrained_posterior"]["tau"].values),
                               posterior["tau"].values, rtol=1e-12)
    assert json.loads(dt.attrs["settings"])["model_kind"] == "numpyro"


@pytest.mark.slow
def test_numpyro_eight_schools_with_rtk_matches_posteriordb():
    # the same NumPyro model and pipeline pass the posteriordb rule with RTK
    from scoresample import posteriordb

    dt = sample(jax.random.key(12), eight_schools, model_args=(SIGMA_SCHOOLS,),
                model_kwargs={"y": Y_SCHOOLS}, method="rtk", num_warmup=500, num_draws=1000,
                num_chains=4, preconditioner="dense", progress_bar=False)
    post = posteriordb.load("eight_schools")
    assert post.param_names[0] == "theta[1]" and post.param_names[-2:] == ("mu", "tau")
    result = posteriordb.pass_rule(_schools_draws(dt), post.reference,
                                   param_names=post.param_names)
    assert result.passed, result.to_markdown()


@pytest.mark.slow
def test_numpyro_eight_schools_with_fors_matches_posteriordb():
    from scoresample import posteriordb

    # The non-centred posterior's curvature grows like tau^2: FORS-proximal rejects a step whose
    # approximate prox did not converge (and takes smaller rescue steps), the warmup keeps the
    # clip rate below 1e-3, and thin="auto" buys the mixing: every setting at its default
    dt = sample(jax.random.key(11), eight_schools, model_args=(SIGMA_SCHOOLS,),
                model_kwargs={"y": Y_SCHOOLS}, method="fors", progress_bar=False)
    assert set(dt["posterior"].data_vars) == {"mu", "tau", "theta_trans", "theta"}
    assert dt.attrs["num_divergent"] == 0  # no step ran away
    post = posteriordb.load("eight_schools")
    result = posteriordb.pass_rule(_schools_draws(dt), post.reference,
                                   param_names=post.param_names)
    assert result.passed, result.to_markdown()


# ---------------------------------------------------------------------------------------------
# Streaming to disk and resume
# ---------------------------------------------------------------------------------------------


def test_output_streams_chunks_and_a_finished_run_resumes_to_itself(tmp_path):
    from scoresample import diagnostics

    kwargs = dict(init=jnp.zeros(3), method="mala", num_warmup=40, num_draws=25, num_chains=2,
                  chunk_size=10, progress_bar=False)
    dt = sample(jax.random.key(8), gauss_logdensity, output=tmp_path / "run", **kwargs)
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["chunk_000000010.nc", "chunk_000000020.nc", "chunk_000000025.nc",
                     "result.nc", "run.json", "warmup.nc"]
    saved = diagnostics.load(tmp_path / "run" / "result.nc")
    np.testing.assert_array_equal(saved["posterior"]["x"].values, dt["posterior"]["x"].values)
    with pytest.raises(FileExistsError, match="resume"):
        sample(jax.random.key(8), gauss_logdensity, output=tmp_path / "run", **kwargs)
    again = sample(jax.random.key(8), gauss_logdensity, output=tmp_path / "run", resume=True,
                   **kwargs)
    np.testing.assert_array_equal(again["posterior"]["x"].values, dt["posterior"]["x"].values)
    with pytest.raises(ValueError, match="settings"):
        sample(jax.random.key(9), gauss_logdensity, output=tmp_path / "run", resume=True, **kwargs)


_SCRIPT = textwrap.dedent("""
    import sys, time
    import jax, jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    import scoresample

    def slow(x):
        time.sleep(0.02)  # so that the run can be killed in the middle

    def logdensity(x):
        jax.debug.callback(slow, x)
        return -0.5 * jnp.sum((x - 1.0) ** 2 / jnp.array([1.0, 4.0]))

    out, resume = sys.argv[1], sys.argv[2] == "1"
    scoresample.sample(jax.random.key(21), logdensity, init=jnp.zeros(2), method="mala",
                       num_chains=2, num_warmup=30, num_draws=120, chunk_size=10,
                       output=out, resume=resume, progress_bar=False)
    print("finished")
""")


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_uninterrupted_draws(tmp_path):
    from scoresample import diagnostics

    script = tmp_path / "run.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ)
    # the uninterrupted run
    full = subprocess.run([sys.executable, str(script), str(tmp_path / "full"), "0"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    # a run killed by SIGKILL once a few chunks are on disk
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "killed"), "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while time.time() < deadline:
        chunks = list((tmp_path / "killed").glob("chunk_*.nc")) if (tmp_path / "killed").exists() \
            else []
        if len(chunks) >= 2 or proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    chunks = sorted((tmp_path / "killed").glob("chunk_*.nc"))
    assert 2 <= len(chunks) < 12 and not (tmp_path / "killed" / "result.nc").exists()
    # resumed in a new process
    resumed = subprocess.run([sys.executable, str(script), str(tmp_path / "killed"), "1"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = diagnostics.load(tmp_path / "full" / "result.nc")
    b = diagnostics.load(tmp_path / "killed" / "result.nc")
    np.testing.assert_array_equal(a["posterior"]["x"].values, b["posterior"]["x"].values)
    for name in ("acceptance_rate", "diverging", "num_grad_evals", "step_size"):
        np.testing.assert_array_equal(a["sample_stats"][name].values, b["sample_stats"][name].values)
