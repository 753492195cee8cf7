"""Flax NNX score networks: time embeddings, an MLP for vectors, a small conv net for 8x8 images.

A network is a :class:`ScoreModel`: a *backbone* ``h(u, lambda) -> (..., d)`` wrapped in one of three
output parameterisations. With the OU forward process (X_t = a_t X_0 + s_t Z, a_t = e^-t,
s_t^2 = -expm1(-2t)), data scale ``sigma`` (``data_std``) and the input scaling
c_t = 1 / sqrt(a_t^2 sigma^2 + s_t^2), the backbone sees u = c_t x and the log-SNR
lambda_t = log(a_t / s_t), and

- ``"eps"``:    eps_hat(x, t) = s_t c_t^2 x + h(u, lambda_t),           score = -eps_hat / s_t;
- ``"score"``:  score(x, t)   = -c_t^2 x + c_t h(u, lambda_t)             (no 1 / s_t: a direct score);
- ``"energy"``: E(x, t) = c_t^2 |x|^2 / 2 + <u, h(u, lambda_t)> / (s_t c_t), score = -grad_x E.

The first term of each is the exact answer for Gaussian data N(0, sigma^2 I) (Karras et al. 2022 call
such input/skip scalings preconditioning), and the output layer of every backbone starts at zero, so an
untrained model is that Gaussian and training learns the correction. The energy form pairs the
input with a vector output (a dot-product energy; Salimans and Ho, "Should EBMs model the energy or
the score?", 2021, compare energy and score parameterisations of diffusion models):
s_t grad_x E = s_t c_t^2 x + h + J_h^T u, which behaves like the eps form when J_h is small, and the
energy is available to Metropolis corrections (RTK-MALA) because score = -grad E holds exactly
(``jax.grad``).

Every method takes x of shape (..., d) and t broadcastable to x.shape[:-1] (a scalar or a batch of
times), so the same model serves training batches and the single-point ``score_fn(x, t)`` samplers use.

Example:
    >>> from flax import nnx
    >>> model = score_model(2, parameterization="energy", rngs=nnx.Rngs(0))
    >>> model.score(jnp.ones(2), 0.5).shape, model.energy(jnp.ones(2), 0.5).shape
    ((2,), ())
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scoresample import processes
from scoresample.base import check_in, check_int, check_positive, key_bits

__all__ = [
    "PARAMETERIZATIONS",
    "TIME_EMBEDDINGS",
    "TimeEmbedding",
    "MLP",
    "ConvNet",
    "ScoreModel",
    "score_model",
    "build",
    "BACKBONES",
]

PARAMETERIZATIONS = ("eps", "score", "energy")
TIME_EMBEDDINGS = ("sinusoidal", "fourier")


class FourierFrequencies(nnx.Variable):
    """Fixed random frequencies of a Fourier time embedding: saved with the model, never trained."""


class TimeEmbedding(nnx.Module):
    """Features of the log-SNR lambda_t: [sin(w_k lambda), cos(w_k lambda)]_k, then a 2-layer MLP.

    ``kind="sinusoidal"``: w_k geometric from ``min_frequency`` to ``max_frequency`` (the
    transformer position code, Vaswani et al. 2017, on lambda). ``kind="fourier"``: w_k = 2 pi f_k with
    fixed f_k ~ N(0, ``fourier_scale``^2) (random Fourier features, Tancik et al. 2020, as in
    score_sde's Gaussian Fourier projection). The log-SNR spreads t in [1e-3, 10] over about
    [-10, 3.5] and puts the steep part of the schedule (small t) on an O(1) scale.

    Args:
        num_features: number of sin/cos features (even).
        out_features: width of the returned embedding.
    """

    def __init__(self, num_features: int = 32, out_features: int = 128, *,
                 kind: str = "sinusoidal", min_frequency: float = 0.05, max_frequency: float = 5.0,
                 fourier_scale: float = 0.5, rngs: nnx.Rngs):
        num_features = check_int("num_features", num_features, minimum=2)
        if num_features % 2:
            raise ValueError(f"num_features must be even, got {num_features}")
        check_in("time_embedding", kind, TIME_EMBEDDINGS)
        self.kind = kind
        self.num_features = num_features
        half = num_features // 2
        if kind == "sinusoidal":
            lo = check_positive("min_frequency", min_frequency)
            hi = check_positive("max_frequency", max_frequency)
            self.frequencies = FourierFrequencies(
                jnp.asarray(np.geomspace(lo, hi, half), dtype=jnp.float32))
        else:
            scale = check_positive("fourier_scale", fourier_scale)
            self.frequencies = FourierFrequencies(
                2.0 * math.pi * scale * jax.random.normal(rngs.params(), (half,), jnp.float32))
        self.dense1 = _linear(num_features, out_features, rngs)
        self.dense2 = _linear(out_features, out_features, rngs)

    def __call__(self, lam):
        """lam: (...,) log-SNR values -> (..., out_features)."""
        freqs = self.frequencies[...].astype(lam.dtype)
        angles = lam[..., None] * freqs.reshape((1,) * lam.ndim + freqs.shape)
        feats = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
        return self.dense2(nnx.silu(self.dense1(feats)))


def _lecun_uniform(key, shape, dtype=jnp.float32):
    """LeCun scaling (variance 1 / fan_in) with a uniform law, fan_in = prod(shape[:-1]).

    With a concrete key the draw is made by numpy (seeded by the key's bits): ``jax.random`` would
    compile one XLA program per kernel shape, about a second each, and building the conv net would
    take longer than a training chunk. Under tracing (``nnx.eval_shape``, ``nnx.jit``) it is an
    ordinary ``jax.random.uniform``.
    """
    limit = math.sqrt(3.0 / max(1, math.prod(shape[:-1])))
    if isinstance(key, jax.core.Tracer):
        return jax.random.uniform(key, shape, dtype, -limit, limit)
    rng = np.random.default_rng([int(b) for b in key_bits(key).ravel()])
    return jnp.asarray(rng.uniform(-limit, limit, size=shape), dtype=dtype)


_KERNEL_INIT = _lecun_uniform


def _linear(n_in, n_out, rngs, zero=False):
    init = nnx.initializers.zeros_init() if zero else _KERNEL_INIT
    return nnx.Linear(n_in, n_out, kernel_init=init, rngs=rngs)


def _conv(n_in, n_out, rngs, zero=False, **kwargs):
    init = nnx.initializers.zeros_init() if zero else _KERNEL_INIT
    return nnx.Conv(n_in, n_out, (3, 3), kernel_init=init, rngs=rngs, **kwargs)


class MLP(nnx.Module):
    """Residual MLP backbone ``h(u, lambda) -> (..., dim)`` for vector data.

    h_0 = W_in u; each block: h <- h + W_2 silu(W_1 silu(h) + V emb(lambda)); out = W_out silu(h) with
    W_out = 0 at initialisation (so an untrained :class:`ScoreModel` is its Gaussian baseline).

    Args:
        dim: data dimension d.
        hidden: width. depth: number of residual blocks.
        time_features, time_embedding: see :class:`TimeEmbedding`.
    """

    def __init__(self, dim: int, *, hidden: int = 128, depth: int = 3, time_features: int = 32,
                 time_embedding: str = "sinusoidal", rngs: nnx.Rngs):
        self.dim = check_int("dim", dim)
        self.hidden = check_int("hidden", hidden)
        self.depth = check_int("depth", depth)
        self.time_features = check_int("time_features", time_features, minimum=2)
        self.time_embedding = check_in("time_embedding", time_embedding, TIME_EMBEDDINGS)
        self.embed = TimeEmbedding(time_features, hidden, kind=time_embedding, rngs=rngs)
        self.dense_in = _linear(dim, hidden, rngs)
        self.blocks_1 = nnx.List([_linear(hidden, hidden, rngs) for _ in range(depth)])
        self.blocks_t = nnx.List([_linear(hidden, hidden, rngs) for _ in range(depth)])
        self.blocks_2 = nnx.List([_linear(hidden, hidden, rngs) for _ in range(depth)])
        self.dense_out = _linear(hidden, dim, rngs, zero=True)

    def get_config(self) -> dict:
        return dict(type="MLP", dim=self.dim, hidden=self.hidden, depth=self.depth,
                    time_features=self.time_features, time_embedding=self.time_embedding)

    def __call__(self, u, lam):
        emb = self.embed(lam)
        h = self.dense_in(u)
        for lin1, lin_t, lin2 in zip(self.blocks_1, self.blocks_t, self.blocks_2, strict=True):
            h = h + lin2(nnx.silu(lin1(nnx.silu(h)) + lin_t(emb)))
        return self.dense_out(nnx.silu(h))


class _ConvBlock(nnx.Module):
    """h <- h + conv(silu(norm(conv(silu(norm(h)))) + V emb)), on (N, H, W, C)."""

    def __init__(self, channels: int, emb_features: int, groups: int, rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(channels, num_groups=groups, rngs=rngs)
        self.conv1 = _conv(channels, channels, rngs)
        self.temb = _linear(emb_features, channels, rngs)
        self.norm2 = nnx.GroupNorm(channels, num_groups=groups, rngs=rngs)
        self.conv2 = _conv(channels, channels, rngs)

    def __call__(self, h, emb):
        y = self.conv1(nnx.silu(self.norm1(h)))
        y = y + self.temb(emb)[:, None, None, :]
        y = self.conv2(nnx.silu(self.norm2(y)))
        return h + y


class ConvNet(nnx.Module):
    """A small U-Net backbone for square single-channel images, flattened to vectors of size H*W.

    Shape path for 8x8 digits: (N, 8, 8, 1) -> conv to C -> block -> stride-2 conv to (4, 4, 2C)
    -> block -> nearest upsampling to (8, 8) and conv to C, plus the skip -> block -> conv to 1
    channel (zero-initialised). Time enters every block as a per-channel shift. GroupNorm normalises
    each image on its own, so single points and batches give the same outputs.

    Args:
        image_size: side H = W (dim = H * W). channels: C (C and 2C divisible by ``groups``).
    """

    def __init__(self, image_size: int = 8, *, channels: int = 32, time_features: int = 32,
                 time_embedding: str = "sinusoidal", groups: int = 8, rngs: nnx.Rngs):
        self.image_size = check_int("image_size", image_size, minimum=2)
        if self.image_size % 2:
            raise ValueError(f"image_size must be even, got {image_size}")
        self.channels = check_int("channels", channels)
        self.groups = check_int("groups", groups)
        if channels % groups:
            raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
        self.time_features = check_int("time_features", time_features, minimum=2)
        self.time_embedding = check_in("time_embedding", time_embedding, TIME_EMBEDDINGS)
        self.dim = self.image_size**2
        emb = 4 * channels
        self.embed = TimeEmbedding(time_features, emb, kind=time_embedding, rngs=rngs)
        self.conv_in = _conv(1, channels, rngs)
        self.block_hi = _ConvBlock(channels, emb, groups, rngs)
        self.down = _conv(channels, 2 * channels, rngs, strides=(2, 2))
        self.block_lo = _ConvBlock(2 * channels, emb, groups, rngs)
        self.up = _conv(2 * channels, channels, rngs)
        self.block_out = _ConvBlock(channels, emb, groups, rngs)
        self.norm_out = nnx.GroupNorm(channels, num_groups=groups, rngs=rngs)
        self.conv_out = _conv(channels, 1, rngs, zero=True)

    def get_config(self) -> dict:
        return dict(type="ConvNet", image_size=self.image_size, channels=self.channels,
                    time_features=self.time_features, time_embedding=self.time_embedding,
                    groups=self.groups)

    def __call__(self, u, lam):
        lead = u.shape[:-1]
        n = self.image_size
        x = u.reshape((-1, n, n, 1))
        emb = self.embed(lam.reshape((-1,)))
        h = self.conv_in(x)
        skip = self.block_hi(h, emb)
        low = self.block_lo(self.down(skip), emb)
        up = jax.image.resize(low, (low.shape[0], n, n, low.shape[-1]), method="nearest")
        h = self.block_out(self.up(up) + skip, emb)
        out = self.conv_out(nnx.silu(self.norm_out(h)))
        return out.reshape(lead + (n * n,))


BACKBONES = {"MLP": MLP, "ConvNet": ConvNet}


class ScoreModel(nnx.Module):
    """A backbone with an output parameterisation: ``.score``, ``.eps`` and (energy only) ``.energy``.

    See the module docstring for the three parameterisations. ``data_std`` is sigma in the input
    scaling c_t = (a_t^2 sigma^2 + s_t^2)^(-1/2); :func:`scoresample.train.fit_score` sets it from the
    data when it builds the model.

    Calling the model is ``.score``.
    """

    def __init__(self, backbone: nnx.Module, *, parameterization: str = "eps",
                 data_std: float = 1.0):
        self.parameterization = check_in("parameterization", parameterization, PARAMETERIZATIONS)
        self.data_std = check_positive("data_std", data_std)
        self.backbone = backbone
        self.dim = int(backbone.dim)

    def get_config(self) -> dict:
        return dict(parameterization=self.parameterization, data_std=self.data_std,
                    backbone=self.backbone.get_config())

    # ----- shared pieces ------------------------------------------------------------------------
    def _prepare(self, x, t):
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.result_type(float))
        if x.shape[-1:] != (self.dim,):
            raise ValueError(f"x must have last axis of size {self.dim}, got shape {x.shape}")
        t = jnp.broadcast_to(jnp.asarray(t, dtype=x.dtype), x.shape[:-1])
        a2 = jnp.exp(-2.0 * t)
        s2 = processes.sigma2(t)
        c = jax.lax.rsqrt(a2 * self.data_std**2 + s2)
        return x, t, jnp.sqrt(s2), c

    def _residual(self, x, t, c):
        return self.backbone(c[..., None] * x, processes.log_snr(t)).astype(x.dtype)

    # ----- public outputs -----------------------------------------------------------------------
    def energy(self, x, t):
        """E(x, t) = c_t^2 |x|^2 / 2 + <u, h(u, lambda_t)> / (s_t c_t), u = c_t x; shape x.shape[:-1]."""
        if self.parameterization != "energy":
            raise ValueError(f"energy is only defined for parameterization='energy', this model is "
                             f"{self.parameterization!r}")
        x, t, s, c = self._prepare(x, t)
        u = c[..., None] * x
        h = self.backbone(u, processes.log_snr(t)).astype(x.dtype)
        return 0.5 * jnp.sum(jnp.square(u), axis=-1) + jnp.sum(u * h, axis=-1) / (s * c)

    def score(self, x, t):
        """grad log p_t(x), shape of x."""
        if self.parameterization == "energy":
            x = jnp.asarray(x)
            # points of a batch do not interact, so the gradient of the sum is the per-point gradient
            return -jax.grad(lambda y: jnp.sum(self.energy(y, t)))(x)
        x, t, s, c = self._prepare(x, t)
        if self.parameterization == "eps":
            return -(c * c)[..., None] * x - self._residual(x, t, c) / s[..., None]
        return -(c * c)[..., None] * x + c[..., None] * self._residual(x, t, c)

    def eps(self, x, t):
        """The noise prediction eps_hat = -s_t score(x, t) (what the training loss compares with Z)."""
        if self.parameterization == "eps":
            x, t, s, c = self._prepare(x, t)
            return (s * c * c)[..., None] * x + self._residual(x, t, c)
        x_arr = jnp.asarray(x)
        s = processes.sigma(jnp.broadcast_to(jnp.asarray(t, x_arr.dtype), x_arr.shape[:-1]))
        return -s[..., None] * self.score(x, t)

    def __call__(self, x, t):
        return self.score(x, t)


def build(config: dict, *, rngs: nnx.Rngs | None = None) -> ScoreModel:
    """Rebuild a :class:`ScoreModel` from ``model.get_config()`` (fresh weights; load sets them)."""
    if not isinstance(config, dict) or "backbone" not in config:
        raise TypeError("config must be a dict from ScoreModel.get_config()")
    rngs = nnx.Rngs(0) if rngs is None else rngs
    bb = dict(config["backbone"])
    kind = check_in("backbone type", bb.pop("type"), BACKBONES)
    backbone = BACKBONES[kind](**bb, rngs=rngs)
    return ScoreModel(backbone, parameterization=config["parameterization"],
                      data_std=config["data_std"])


def score_model(dim: int, *, parameterization: str = "eps", kind: str = "mlp",
                data_std: float = 1.0, rngs: nnx.Rngs | None = None, **backbone_options: Any
                ) -> ScoreModel:
    """A ready :class:`ScoreModel`: ``kind="mlp"`` for vectors, ``"conv"`` for square images.

    Args:
        dim: data dimension (for ``"conv"``, a square number: 64 for 8x8 digits).
        parameterization: "eps", "score" or "energy".
        data_std: sigma of the input scaling.
        rngs: ``nnx.Rngs`` for the initial weights (default ``nnx.Rngs(0)``).
        **backbone_options: passed to :class:`MLP` or :class:`ConvNet` (hidden, depth, channels, ...).
    """
    dim = check_int("dim", dim)
    check_in("kind", kind, ("mlp", "conv"))
    check_in("parameterization", parameterization, PARAMETERIZATIONS)
    check_positive("data_std", data_std)
    side = math.isqrt(dim)
    if kind == "conv" and side * side != dim:  # checked before any weight is drawn
        raise ValueError(f"kind='conv' needs a square image: dim must be a square, got {dim}")
    if rngs is not None and not isinstance(rngs, nnx.Rngs):
        raise TypeError(f"rngs must be a flax.nnx.Rngs, got {type(rngs).__name__}")
    rngs = nnx.Rngs(0) if rngs is None else rngs
    if kind == "mlp":
        backbone = MLP(dim, rngs=rngs, **backbone_options)
    else:
        backbone = ConvNet(side, rngs=rngs, **backbone_options)
    return ScoreModel(backbone, parameterization=parameterization, data_std=data_std)
