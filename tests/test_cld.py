"""Exact tests of critically damped Langevin diffusion: the closed-form flows, the exact mixture law
and its velocity score, and the SSCS sampler (ALGORITHMS.md section 1d)."""

import math

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from scipy.stats import multivariate_normal

from scoresample import diffusion, targets
from scoresample.kernels import cld as cld_kernels
from scoresample.targets import cld

M_INV, GAMMA, BETA = 4.0, 1.0, 4.0
F_FORWARD = BETA * np.array([[0.0, M_INV], [-1.0, -GAMMA * M_INV]])
F_REVERSE = BETA * np.array([[0.0, -M_INV], [1.0, -GAMMA * M_INV]])
NOISE = np.diag([0.0, 2.0 * GAMMA * BETA])


def _van_loan(F, t):
    """(expm(tF), int_0^t e^{sF} G G^T e^{sF^T} ds) by Van Loan's block exponential."""
    big = scipy.linalg.expm(np.block([[-F, NOISE], [np.zeros((2, 2)), F.T]]) * t)
    return scipy.linalg.expm(F * t), big[2:, 2:].T @ big[:2, 2:]


@pytest.mark.parametrize("t", [1e-4, 0.05, 0.7, 3.0])
@pytest.mark.parametrize("which", ["forward", "reverse"])
def test_closed_form_flows_match_matrix_exponentials(t, which):
    F = F_FORWARD if which == "forward" else F_REVERSE
    flow = cld.forward_flow if which == "forward" else cld.reverse_linear_flow
    E, Q = flow(t)
    E_ref, Q_ref = _van_loan(F, t)
    np.testing.assert_allclose(E, E_ref, rtol=1e-12, atol=1e-15)
    # (Van Loan itself loses about 1e-12 at t = 3, where its blocks reach e^{2 kappa beta t})
    np.testing.assert_allclose(Q, Q_ref, rtol=1e-9, atol=1e-11)
    # Both linear flows keep N(0, 1) x N(0, M) invariant.
    stationary = np.diag([1.0, 1.0 / M_INV])
    np.testing.assert_allclose(E @ stationary @ E.T + Q, stationary, atol=1e-13)
    # The JAX path (traced times) agrees with the numpy path.
    E_j, Q_j = flow(jnp.asarray(t))
    np.testing.assert_allclose(E_j, E, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(Q_j, Q, rtol=1e-12, atol=1e-18)


def _dense_joint(mix, t):
    """Per component: mean and covariance of u_t = (x_t, v_t) in R^{2d}, by Kronecker products."""
    E, Q = cld.forward_flow(t)
    d = mix.dim
    big_E, big_Q = np.kron(E, np.eye(d)), np.kron(Q, np.eye(d))
    out = []
    for mu, S in zip(np.asarray(mix.means), np.asarray(mix.covs)):
        cov0 = scipy.linalg.block_diag(S, cld.V0_VAR * np.eye(d))
        out.append((big_E @ np.concatenate([mu, np.zeros(d)]), big_E @ cov0 @ big_E.T + big_Q))
    return out


@pytest.mark.parametrize("which", ["four_modes_2d", "subspace"])
@pytest.mark.parametrize("t", [2e-3, 0.2, 1.0])
def test_exact_joint_density_matches_dense_gaussian(which, t):
    mix = targets.four_modes_2d() if which == "four_modes_2d" else targets.subspace_mixture(dim=4)
    law = cld.CLDMixture(mix)
    x = np.linspace(-1.2, 1.7, mix.dim)
    v = np.linspace(0.4, -0.3, mix.dim)
    dense = [np.log(w) + multivariate_normal(m, C).logpdf(np.concatenate([x, v]))
             for w, (m, C) in zip(np.asarray(mix.weights), _dense_joint(mix, t))]
    ref = scipy.special.logsumexp(dense)
    assert float(law.logdensity_t(jnp.asarray(x), jnp.asarray(v), t)) == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("which", ["four_modes_2d", "subspace"])
@pytest.mark.parametrize("t", [1e-3, 0.1, 0.9])
def test_velocity_score_is_gradient_of_joint_log_density(which, t):
    mix = targets.four_modes_2d() if which == "four_modes_2d" else targets.subspace_mixture(dim=5)
    law = cld.CLDMixture(mix)
    x = jnp.linspace(-1.0, 2.0, mix.dim)
    v = jnp.linspace(0.2, -0.1, mix.dim)
    auto = jax.grad(law.logdensity_t, argnums=1)(x, v, t)
    np.testing.assert_allclose(law.velocity_score(x, v, t), auto, rtol=1e-10, atol=1e-10)


def test_exact_samples_and_x_marginal_match_dense_law():
    mix = targets.subspace_mixture(dim=3)
    law = cld.CLDMixture(mix)
    t, n = 0.15, 10_000
    xs, vs = law.sample(jax.random.key(0), n, t)
    u = np.concatenate([np.asarray(xs), np.asarray(vs)], axis=1)
    comps = _dense_joint(mix, t)
    w = np.asarray(mix.weights)
    mean = sum(wk * m for wk, (m, _) in zip(w, comps))
    second = sum(wk * (C + np.outer(m, m)) for wk, (m, C) in zip(w, comps))
    cov = second - np.outer(mean, mean)
    z_mean = (u.mean(0) - mean) / np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(z_mean) < 4.5), z_mean
    c = u - u.mean(0)
    prods = c[:, :, None] * c[:, None, :]
    z_cov = (prods.mean(0) - cov) / (prods.std(0) / math.sqrt(n))
    assert np.all(np.abs(z_cov) < 4.5), z_cov
    marginal = law.x_marginal(t)
    np.testing.assert_allclose(marginal.cov, cov[:3, :3], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(marginal.mean, mean[:3], rtol=1e-10, atol=1e-13)


# ----- SSCS ---------------------------------------------------------------------------------------


def _sscs_recursion(mu, var, ts):
    """Exact mean and covariance of the SSCS chain for 1-D Gaussian data N(mu, var).

    The velocity score of the exact Gaussian law is linear in u = (x, v), so one step is
    u <- E u + N(0, Q); u <- G u + g; u <- E u + N(0, Q) (the formulas of the module docstring,
    written again here).
    """
    m, V = np.zeros(2), np.diag([1.0, 1.0 / M_INV])
    for t0, t1 in zip(ts[:-1], ts[1:]):
        h = t0 - t1
        E, Q = cld.reverse_linear_flow(h / 2)  # checked against Van Loan above
        Et, Qt = cld.forward_flow(t0 - h / 2)
        mean_t = Et @ np.array([mu, 0.0])
        P = np.linalg.inv(Et @ np.diag([var, cld.V0_VAR]) @ Et.T + Qt)
        c = 2 * GAMMA * BETA * h
        G = np.eye(2) + c * np.outer([0.0, 1.0], -P[1] + np.array([0.0, M_INV]))
        g = c * np.array([0.0, P[1] @ mean_t])
        m, V = E @ m, E @ V @ E.T + Q
        m, V = G @ m + g, G @ V @ G.T
        m, V = E @ m, E @ V @ E.T + Q
    return m, V


def test_sscs_moments_equal_linear_recursion_and_converge():
    mu, var = 0.8, 0.3
    g = targets.Gaussian(np.array([mu]), np.array([[var]]))
    law = cld.CLDMixture(g)
    nfe, t_min, t_max, n = 20, 1e-3, 1.0, 4000
    res = diffusion.cld(jax.random.key(4), law.velocity_score, dim=1, num_samples=n, nfe=nfe,
                        t_min=t_min, t_max=t_max, grid="uniform")
    assert res.nfe == nfe and not bool(jnp.any(res.is_divergent))
    ts = np.linspace(t_max, t_min, nfe + 1)
    m, V = _sscs_recursion(mu, var, ts)
    xs = np.asarray(res.samples)[:, 0]
    assert abs(xs.mean() - m[0]) < 4.5 * math.sqrt(V[0, 0] / n)
    assert abs(xs.var() - V[0, 0]) < 4.5 * V[0, 0] * math.sqrt(2 / n)
    # With many steps (and t_max = 3, where the prior matches p_T) the chain's law tends to the exact
    # x-marginal at t_min, at first order in the step: the errors halve as the steps double, and
    # the Richardson extrapolation 2 e(2N) - e(N) removes them.
    exact = law.x_marginal(t_min)
    target = np.array([float(exact.mean[0]), float(exact.cov[0, 0])])
    errs = []
    for steps in (250, 500, 1000):
        m, V = _sscs_recursion(mu, var, np.linspace(3.0, t_min, steps + 1))
        errs.append(np.array([m[0], V[0, 0]]) - target)
    errs = np.array(errs)
    ratios = errs[:-1] / errs[1:]
    assert np.all((ratios > 1.8) & (ratios < 2.2)), errs
    extrapolated = 2 * errs[-1] - errs[-2]
    assert np.all(np.abs(extrapolated) < 0.05 * np.abs(errs[-1])), (errs, extrapolated)


@pytest.mark.slow
def test_sscs_with_many_steps_reproduces_exact_marginal():
    mean0 = np.array([1.0, -0.5])
    cov0 = np.array([[0.5, 0.2], [0.2, 0.3]])
    law = cld.CLDMixture(targets.Gaussian(mean0, cov0))
    t_min, n = 1e-3, 2000
    res = diffusion.cld(jax.random.key(7), law.velocity_score, dim=2, num_samples=n, nfe=800,
                        t_min=t_min, t_max=3.0)
    exact = law.x_marginal(t_min)
    xs = np.asarray(res.samples)
    m, V = np.asarray(exact.mean), np.asarray(exact.cov)
    z_mean = (xs.mean(0) - m) / np.sqrt(np.diag(V) / n)
    assert np.all(np.abs(z_mean) < 4.5), z_mean
    c = xs - xs.mean(0)
    prods = c[:, :, None] * c[:, None, :]
    z_cov = (prods.mean(0) - V) / (prods.std(0) / math.sqrt(n))
    assert np.all(np.abs(z_cov) < 4.5), z_cov


def test_sscs_jit_vmap_run_inference_and_divergence():
    law = cld.CLDMixture(targets.four_modes_2d())
    plan = cld_kernels.cld_plan(law.velocity_score, dim=2, nfe=4)
    x = jax.random.normal(jax.random.key(0), (3, 2))
    v = 0.5 * jax.random.normal(jax.random.key(1), (3, 2))
    keys = jax.random.split(jax.random.key(2), 3)

    @jax.jit
    def run(keys, x, v):
        def one(key, x, v):
            final, _ = blackjax.util.run_inference_algorithm(key, plan.algorithm, plan.num_steps,
                                                              initial_position=(x, v))
            return final

        return jax.vmap(one)(keys, x, v)

    finals = run(keys, x, v)
    assert finals.position[0].shape == (3, 2) and np.all(np.asarray(finals.step) == 4)
    assert bool(jnp.all(jnp.isfinite(finals.position[0])))
    # A velocity score that is NaN late in the run: steps rejected, samples finite and flagged.
    bad = lambda x, v, t: jnp.where(t < 0.5, jnp.nan, law.velocity_score(x, v, t))
    res = diffusion.cld(jax.random.key(3), bad, dim=2, num_samples=4, nfe=6)
    assert res.nfe == 6.0 and res.info.num_grad_evals.shape == (6,)
    assert bool(jnp.all(res.is_divergent)) and bool(jnp.all(jnp.isfinite(res.samples)))


def test_cld_bad_inputs_raise_before_compiling():
    law = cld.CLDMixture(targets.four_modes_2d())
    key = jax.random.key(0)
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    bad_calls = [
        (TypeError, "velocity_score_fn", dict(velocity_score_fn="not a function")),
        (ValueError, "velocity_score_fn", dict(dim=3)),
        (ValueError, "velocity_score_fn", dict(velocity_score_fn=lambda x, v, t: jnp.zeros(3))),
        (ValueError, "nfe", dict(nfe=0)),
        (ValueError, "t_min", dict(t_min=2.0, t_max=1.0)),
        (ValueError, "grid", dict(grid="cubic")),
        (ValueError, "num_samples", dict(num_samples=-1)),
        (TypeError, "rng_key", dict(rng_key=123)),
        (TypeError, "beta", dict(beta=3.0)),
    ]
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for exc, match, changes in bad_calls:
            calls = []

            def counted(x, v, t):
                calls.append(1)
                return law.velocity_score(x, v, t)

            args = dict(rng_key=key, velocity_score_fn=counted, dim=2, num_samples=2)
            args.update(changes)
            with pytest.raises(exc, match=match):
                diffusion.cld(args.pop("rng_key"), args.pop("velocity_score_fn"), **args)
            assert len(calls) <= 1, match  # at most the one trace of jax.eval_shape
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert not compiles
