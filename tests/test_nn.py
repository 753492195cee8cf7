"""Score networks: parameterisations, the exact Gaussian baseline, score = -grad E, shapes, configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scoresample import nn


def _randomise(model, seed=0, scale=0.3):
    """Give every parameter (also the zero-initialised output layer) a random value (numpy draws,
    so that no per-shape random program has to compile)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(seed)
    leaves = [jnp.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype) for leaf in leaves]
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves), rest)


def _jit(model, method):
    """model.<method> as a jitted pure function (eager Flax calls dispatch op by op and are slow)."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda x, t: getattr(nnx.merge(graphdef, state), method)(x, t))


def _gaussian_score(x, t, data_std):
    var = data_std**2 * np.exp(-2 * t) - np.expm1(-2 * t)
    return -x / var


@pytest.mark.parametrize("parameterization, kind, dim", [
    ("eps", "mlp", 3), ("score", "mlp", 3), ("energy", "mlp", 3), ("eps", "conv", 16)])
def test_untrained_model_is_the_exact_gaussian_score(parameterization, kind, dim):
    opts = dict(hidden=16, depth=1) if kind == "mlp" else dict(channels=8, groups=4)
    model = nn.score_model(dim, parameterization=parameterization, kind=kind, data_std=1.7,
                           rngs=nnx.Rngs(0), **opts)
    x = jax.random.normal(jax.random.key(1), (3, dim), jnp.float64)
    t = jnp.array([1e-3, 0.3, 5.0])
    expected = _gaussian_score(np.asarray(x), np.asarray(t)[:, None], 1.7)
    np.testing.assert_allclose(_jit(model, "score")(x, t), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind, dim", [("mlp", 3), ("conv", 16)])
def test_energy_score_is_minus_gradient_of_energy(kind, dim):
    opts = dict(hidden=16, depth=2) if kind == "mlp" else dict(channels=8, groups=4)
    model = _randomise(nn.score_model(dim, parameterization="energy", kind=kind, data_std=1.3,
                                      rngs=nnx.Rngs(2), **opts))
    x = jax.random.normal(jax.random.key(3), (dim,), jnp.float64)
    t = 0.4
    energy = _jit(model, "energy")
    score = _jit(model, "score")(x, t)
    assert score.shape == (dim,)
    np.testing.assert_allclose(score, -jax.jit(jax.grad(energy))(x, t), rtol=1e-12, atol=1e-12)
    # an independent check: central finite differences of the energy (float64, error O(h^2))
    h = 1e-5
    steps = h * jnp.eye(dim)
    fd = (energy(x[None, :] - steps, t) - energy(x[None, :] + steps, t)) / (2 * h)
    np.testing.assert_allclose(score, fd, rtol=1e-6, atol=1e-6 * float(jnp.max(jnp.abs(score))))
    assert not np.allclose(score, _gaussian_score(np.asarray(x), t, 1.3))  # the net contributes


@pytest.mark.parametrize("parameterization", nn.PARAMETERIZATIONS)
def test_eps_is_minus_sigma_times_score_and_batches_match_points(parameterization):
    model = _randomise(nn.score_model(2, parameterization=parameterization, hidden=16, depth=1,
                                      rngs=nnx.Rngs(0)))
    xs = jax.random.normal(jax.random.key(0), (5, 2), jnp.float64)
    ts = jnp.linspace(0.01, 3.0, 5)
    s = np.sqrt(-np.expm1(-2 * np.asarray(ts)))
    score = _jit(model, "score")
    batch = score(xs, ts)
    np.testing.assert_allclose(_jit(model, "eps")(xs, ts), -s[:, None] * np.asarray(batch),
                               rtol=1e-12, atol=1e-14)
    single = jnp.stack([score(xs[i], ts[i]) for i in range(5)])
    np.testing.assert_allclose(batch, single, rtol=1e-12, atol=1e-14)


def test_conv_net_treats_images_independently():
    model = _randomise(nn.score_model(16, kind="conv", channels=8, groups=4, rngs=nnx.Rngs(0)),
                       scale=0.1)
    xs = jax.random.normal(jax.random.key(0), (3, 16), jnp.float64)
    score = _jit(model, "score")
    batch = score(xs, 0.2)
    assert batch.shape == (3, 16)
    np.testing.assert_allclose(batch[1], score(xs[1], 0.2), rtol=1e-10, atol=1e-12)


def test_score_works_under_jit_vmap_and_pure_split_merge():
    model = _randomise(nn.score_model(2, parameterization="energy", hidden=16, depth=1,
                                      time_embedding="fourier", rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)

    def score_fn(x, t):
        return nnx.merge(graphdef, state).score(x, t)

    xs = jax.random.normal(jax.random.key(0), (7, 2), jnp.float64)
    out = jax.jit(jax.vmap(score_fn, in_axes=(0, None)))(xs, 0.5)
    np.testing.assert_allclose(out, _jit(model, "score")(xs, 0.5), rtol=1e-12, atol=1e-14)


def test_time_embeddings_differ_and_are_fixed_by_the_seed():
    emb_a = nn.TimeEmbedding(8, 4, kind="fourier", rngs=nnx.Rngs(0))
    emb_b = nn.TimeEmbedding(8, 4, kind="fourier", rngs=nnx.Rngs(0))
    emb_c = nn.TimeEmbedding(8, 4, kind="sinusoidal", rngs=nnx.Rngs(0))
    lam = jnp.linspace(-5.0, 3.0, 6)
    np.testing.assert_array_equal(emb_a(lam), emb_b(lam))
    assert emb_a(lam).shape == (6, 4)
    assert not np.allclose(emb_a.frequencies[...], emb_c.frequencies[...])
    # the frequencies are not trainable parameters
    assert jax.tree_util.tree_leaves(nnx.state(emb_a, nn.FourierFrequencies))
    names = [str(p) for p, _ in nnx.to_flat_state(nnx.state(emb_a, nnx.Param))]
    assert not any("frequencies" in n for n in names)


@pytest.mark.parametrize("kind, dim, opts", [("mlp", 3, dict(hidden=8, depth=2)),
                                             ("conv", 16, dict(channels=8, groups=4))])
def test_build_from_config_rebuilds_the_same_architecture(kind, dim, opts):
    model = _randomise(nn.score_model(dim, kind=kind, parameterization="score", data_std=0.7,
                                      rngs=nnx.Rngs(0), **opts))
    rebuilt = nn.build(model.get_config())
    graphdef, state = nnx.split(model)
    graphdef2, _ = nnx.split(rebuilt)
    assert graphdef2 == graphdef
    assert rebuilt.get_config() == model.get_config()
    if kind == "mlp":  # (eager conv calls dispatch op by op: slow, and the graphdefs are equal)
        x = jnp.ones((dim,), jnp.float64)
        np.testing.assert_allclose(nnx.merge(graphdef2, state).score(x, 0.3), model.score(x, 0.3),
                                   rtol=1e-14)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="parameterization"):
        nn.score_model(2, parameterization="noise")
    with pytest.raises(ValueError, match="dim"):
        nn.score_model(10, kind="conv")
    with pytest.raises(ValueError, match="kind"):
        nn.score_model(4, kind="transformer")
    with pytest.raises(ValueError, match="num_features"):
        nn.TimeEmbedding(7, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="time_embedding"):
        nn.score_model(2, time_embedding="learned")
    with pytest.raises(ValueError, match="data_std"):
        nn.score_model(2, data_std=0.0)
    model = nn.score_model(2, hidden=8, depth=1)
    with pytest.raises(ValueError, match="energy"):
        model.energy(jnp.zeros(2), 0.1)
    with pytest.raises(ValueError, match="last axis"):
        model.score(jnp.zeros(3), 0.1)
