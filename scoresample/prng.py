"""Counter-based random draws for kernels whose units draw inside a compiled loop.

JAX's ``jax.random`` functions give the reference bits; the functions here give the same bits
(``fold_in``; ``uniform`` on stream 0, to the last place off [0, 1)) or new, independent streams of
a key (``uniform`` on stream s >= 1), with the Threefry hash written out in array operations. Why:
inside the autobatched ``while_loop`` of :mod:`scoresample.autobatch` every PRNG call site costs a
kernel launch per iteration, and on CPU JAX lowers its hash to a loop over the rounds (measured:
the largest bookkeeping cost of a FORS iteration); these operations fuse into one kernel. Keys that
are not threefry keys with JAX's default bit layout fall back to ``jax.random`` (other bits, the
same law).

- :func:`threefry2x32`: the hash (tested against ``jax.random``'s bits).
- :func:`fold_in`: ``jax.random.fold_in`` (the same key).
- :func:`uniform`: a stream of uniforms of a key; :func:`open_uniform` the same on (-1, 1).
- :func:`box_muller`: standard normals from uniforms on (-1, 1).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["threefry2x32", "fold_in", "uniform", "open_uniform", "box_muller", "STREAM_FOLD"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREEFRY = "threefry2x32"


@jax.jit
def threefry2x32(k0, k1, x0, x1):
    """The Threefry-2x32 hash (20 rounds; Salmon, Moraes, Dror, Shaw, "Parallel random numbers:
    as easy as 1, 2, 3", SC 2011) of the counters (x0, x1) under the key (k0, k1), uint32 arrays
    that broadcast together: the hash of JAX's threefry PRNG, bit for bit.

    Written out in array operations: on CPU JAX lowers its hash to a loop over the rounds, which
    inside the autobatched ``while_loop`` runs as a sequence of small kernels per round (the
    largest bookkeeping cost of a FORS iteration, measured); these operations fuse into one.
    Jitted so that each shape is traced once however many call sites use it.
    """
    k0, k1, x0, x1 = (jnp.asarray(a, jnp.uint32) for a in (k0, k1, x0, x1))
    keys = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + k0, x1 + k1
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r)))
        x0 = x0 + keys[(i + 1) % 3]
        x1 = x1 + keys[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def _is_fast(key) -> bool:
    """A threefry key with JAX's default bit layout: :func:`threefry2x32` reproduces its draws."""
    return (jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
            and str(jax.random.key_impl(key)) == _THREEFRY and jax.config.jax_threefry_partitionable
            and jax.config.jax_legacy_random_uniform)


def fold_in(key, data):
    """``jax.random.fold_in(key, data)`` (the same key), one key and a scalar (callers vmap)."""
    if not _is_fast(key):
        return jax.random.fold_in(key, data)
    words = jax.random.key_data(key)
    y0, y1 = threefry2x32(words[..., 0], words[..., 1], 0, jnp.asarray(data).astype(jnp.uint32))
    # fused with the stacking, each of the two words would hash again (measured: twice the cost)
    y0, y1 = jax.lax.optimization_barrier((y0, y1))
    return jax.random.wrap_key_data(jnp.stack([y0, y1], axis=-1), impl=_THREEFRY)


STREAM_FOLD = 2**32 - 2  # keys that threefry2x32 does not reproduce: stream s of a key is
# drawn from fold_in(fold_in(key, STREAM_FOLD), s)


def uniform(key, num: int, dtype, minval, maxval, stream=0):
    """``num`` uniform draws on [minval, maxval) from stream ``stream`` of ``key`` (one key).

    Stream 0 is ``jax.random.uniform(key, (num,), dtype, minval, maxval)``: the same bits on
    [0, 1), and to the last place on another range (its affine map may round differently).
    Stream s >= 1 (a uint32, may be traced) of a threefry key hashes the counters (s, 0 ... num - 1)
    under it, which neither ``jax.random.uniform`` nor ``fold_in`` of that key hashes (their
    counters are (0, j)): a step's draws come from its key without a ``fold_in`` per unit.
    """
    dtype = jnp.dtype(dtype)
    if not _is_fast(key) or dtype not in (jnp.float32, jnp.float64):
        if not (isinstance(stream, int) and stream == 0):
            key = jax.random.fold_in(jax.random.fold_in(key, STREAM_FOLD), stream)
        return jax.random.uniform(key, (num,), dtype, minval, maxval)
    words = jax.random.key_data(key)
    count = jnp.arange(num, dtype=jnp.uint32)
    hi = jnp.asarray(stream).astype(jnp.uint32)
    w0, w1 = threefry2x32(words[..., 0, None], words[..., 1, None], hi, count)
    if dtype == jnp.float64:
        bits = (w0.astype(jnp.uint64) << np.uint64(32)) | w1.astype(jnp.uint64)
        one, shift = np.uint64(0x3FF0000000000000), np.uint64(64 - 52)
    else:
        bits, one, shift = w0 ^ w1, np.uint32(0x3F800000), np.uint32(32 - 23)
    floats = jax.lax.bitcast_convert_type((bits >> shift) | one, dtype) - jnp.asarray(1.0, dtype)
    minval, maxval = jnp.asarray(minval, dtype), jnp.asarray(maxval, dtype)
    return jnp.maximum(minval, floats * (maxval - minval) + minval)


def open_uniform(key, num: int, dtype, stream=0):
    """``num`` uniforms on the open interval (-1, 1) from stream ``stream`` of ``key``: the
    draws ``jax.random.normal`` starts from (``sqrt(2) erfinv(v)`` is a standard normal), and
    what :func:`box_muller` takes (``(v + 1) / 2`` is uniform on (0, 1))."""
    dtype = jnp.dtype(dtype)
    low = jnp.nextafter(jnp.asarray(-1.0, dtype), jnp.asarray(0.0, dtype))
    return uniform(key, num, dtype, low, 1.0, stream=stream)


def box_muller(v):
    """Standard normals from an even number of uniforms on (-1, 1): the first half gives the
    radii, the second the angles (Box and Muller, 1958). An order of magnitude cheaper than
    ``sqrt(2) erfinv(v)`` in float64 on CPU (measured), the largest cost of a FORS unit's draws."""
    n = v.shape[0] // 2
    radius = jnp.sqrt(-2.0 * jnp.log(0.5 * (1.0 - v[:n])))  # 1 - v in (0, 2): log finite
    angle = math.pi * (v[n:] + 1.0)
    # a barrier: fused into the concatenation, each radius would be computed twice
    radius, angle = jax.lax.optimization_barrier((radius, angle))
    return jnp.concatenate([radius * jnp.cos(angle), radius * jnp.sin(angle)])
