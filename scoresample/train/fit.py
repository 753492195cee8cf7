"""The training loop: ``fit_score`` with orbax checkpoints; ``run_training``, the CLI's job.

An exponential moving average (EMA) of the weights is what the returned score uses. Steps run in
compiled ``lax.scan`` chunks (the model is split with ``nnx.split`` into a graph definition and
arrays, and merged inside the compiled function), so the Python loop only runs once per chunk to
update the progress bar and write orbax checkpoints. Randomness of step k is ``fold_in(key, k)``, so
a run stopped at a checkpoint and resumed reaches bit for bit the parameters of an uninterrupted run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from scoresample import nn
from scoresample.base import (
    check_array,
    check_bool,
    check_callable,
    check_in,
    check_int,
    check_key,
    check_nonnegative,
    check_positive,
    check_times,
    jsonable,
    key_bits,
)
from scoresample.train.loss import TIME_SAMPLINGS, denoising_loss, make_optimizer
from scoresample.train.trained import TrainedScore

__all__ = ["fit_score", "run_training", "default_model", "TrainCarry"]


class TrainCarry(NamedTuple):
    """Everything a training run needs to continue: what an orbax checkpoint holds."""

    params: Any  # nnx.State of nnx.Param
    opt_state: Any
    ema: Any  # nnx.State, same structure as params
    step: jax.Array  # shape=(), int32: steps done
    losses: jax.Array  # shape=(num_steps,), float32: loss of every step done (0 after)



# ----- training --------------------------------------------------------------------------------

def _fingerprint(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]



def _rms(data: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(data.astype(np.float64)))))


def fit_score(rng_key, data, *, model: nn.ScoreModel | None = None,
              parameterization: str | None = None, num_steps: int = 20_000, batch_size: int = 512,
              learning_rate: float = 2e-3, warmup_steps: int | None = None,
              final_lr_fraction: float = 0.01, weight_decay: float = 0.0, clip_norm: float = 1.0,
              ema_decay: float = 0.999, t_min: float = 1e-3, t_max: float = 10.0,
              time_sampling: str = "log-uniform", chunk_size: int = 200, loop: str = "auto",
              checkpoint_dir: str | None = None, checkpoint_every: int | None = None,
              resume: bool = False, progress_bar: bool = True,
              callback: Callable[[int, float], Any] | None = None) -> TrainedScore:
    """Fit a score network to ``data`` by denoising score matching on the OU process.

    Args:
        rng_key: a JAX PRNG key (split into the model's initial weights and the training stream).
        data: (n, d) training points (cast to float32; training runs in float32).
        model: a :class:`~scoresample.nn.ScoreModel` to start from (not modified). Default: an
            :class:`~scoresample.nn.MLP` (width 128, 3 residual blocks) with ``data_std`` the data's
            root mean square.
        parameterization: "eps" (default), "score" or "energy"; must match ``model``'s if both given.
        num_steps, batch_size: optimiser steps and points per step (drawn with replacement).
        learning_rate: peak AdamW learning rate, reached after ``warmup_steps`` (default
            min(1000, num_steps // 10)) and decayed by a cosine to ``final_lr_fraction`` of it.
        weight_decay, clip_norm: AdamW weight decay and global gradient-norm clip.
        ema_decay: EMA factor (ramped as min(ema_decay, (1 + k) / (10 + k)) over the first steps).
        t_min, t_max, time_sampling: the training times ("log-uniform" or "log-snr").
        chunk_size: steps per chunk (progress, callback and checkpoints happen between chunks).
        loop: how a chunk runs: "scan" (one compiled ``lax.scan``; fastest for MLPs), "python" (a
            Python loop over one compiled step; XLA:CPU runs convolutions about 25 times slower
            inside a scan) or "auto" ("python" when the model has an ``nnx.Conv``, else "scan").
        checkpoint_dir: directory for orbax checkpoints of the full training state (made absolute).
        checkpoint_every: steps between checkpoints, a multiple of ``chunk_size`` (default about a
            tenth of the run). A checkpoint is also written at the end, when ``callback`` stops the
            run and on KeyboardInterrupt.
        resume: continue from the newest checkpoint in ``checkpoint_dir`` (the settings, data and key
            must be those of the stopped run); with no checkpoint there, start from scratch.
        progress_bar: show a tqdm bar with the loss.
        callback: ``callback(step, loss)`` after every chunk (``loss`` is the chunk's mean);
            returning True stops the run there (it can be resumed).

    Returns:
        :class:`TrainedScore` with the EMA weights.
    """
    # ---- validate everything before anything is compiled ----
    check_key("rng_key", rng_key)
    data = check_array("data", data, ndim=2).astype(np.float32)
    num_points, dim = data.shape
    if num_points < 2:
        raise ValueError(f"data must hold at least 2 points, got {num_points}")
    if model is not None and not isinstance(model, nn.ScoreModel):
        raise TypeError(f"model must be a scoresample.nn.ScoreModel, got {type(model).__name__}")
    if parameterization is not None:
        check_in("parameterization", parameterization, nn.PARAMETERIZATIONS)
    if model is not None:
        if parameterization is not None and parameterization != model.parameterization:
            raise ValueError(f"parameterization={parameterization!r} but model is "
                             f"{model.parameterization!r}")
        if model.dim != dim:
            raise ValueError(f"model has dim {model.dim} but data has {dim} columns")
        parameterization = model.parameterization
    parameterization = parameterization or "eps"
    num_steps = check_int("num_steps", num_steps)
    batch_size = check_int("batch_size", batch_size)
    learning_rate = check_positive("learning_rate", learning_rate)
    warmup_steps = (min(1000, num_steps // 10) if warmup_steps is None
                    else check_int("warmup_steps", warmup_steps, minimum=0))
    if warmup_steps > num_steps:
        raise ValueError(f"warmup_steps must be <= num_steps ({num_steps}), got {warmup_steps}")
    final_lr_fraction = check_nonnegative("final_lr_fraction", final_lr_fraction)
    if final_lr_fraction > 1.0:
        raise ValueError(f"final_lr_fraction must be in [0, 1], got {final_lr_fraction}")
    weight_decay = check_nonnegative("weight_decay", weight_decay)
    clip_norm = check_positive("clip_norm", clip_norm)
    ema_decay = check_nonnegative("ema_decay", ema_decay)
    if ema_decay >= 1.0:
        raise ValueError(f"ema_decay must be < 1, got {ema_decay}")
    t_min, t_max = check_times(t_min, t_max)
    check_in("time_sampling", time_sampling, TIME_SAMPLINGS)
    check_in("loop", loop, ("auto", "scan", "python"))
    chunk_size = min(check_int("chunk_size", chunk_size), num_steps)
    if checkpoint_every is None:
        checkpoint_every = chunk_size * max(1, round(num_steps / 10 / chunk_size))
    checkpoint_every = check_int("checkpoint_every", checkpoint_every)
    if checkpoint_every % chunk_size:
        raise ValueError(f"checkpoint_every ({checkpoint_every}) must be a multiple of chunk_size "
                         f"({chunk_size})")
    resume = check_bool("resume", resume)
    progress_bar = check_bool("progress_bar", progress_bar)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    if callback is not None:
        check_callable("callback", callback)

    k_init, k_train = jax.random.split(rng_key)
    if model is None:
        model = nn.score_model(dim, parameterization=parameterization, data_std=_rms(data),
                                rngs=nnx.Rngs(params=k_init))
    if loop == "auto":
        has_conv = any(isinstance(node, nnx.Conv) for _, node in nnx.iter_graph(model))
        loop = "python" if has_conv else "scan"
    graphdef, params0, rest = nnx.split(model, nnx.Param, ...)
    try:
        model_config = model.get_config()
    except AttributeError:
        model_config = None

    settings = dict(num_steps=num_steps, batch_size=batch_size, learning_rate=learning_rate,
                    warmup_steps=warmup_steps, final_lr_fraction=final_lr_fraction,
                    weight_decay=weight_decay, clip_norm=clip_norm, ema_decay=ema_decay,
                    t_min=t_min, t_max=t_max, time_sampling=time_sampling, chunk_size=chunk_size,
                    loop=loop, parameterization=parameterization, model=model_config,
                    data_shape=list(data.shape), data_fingerprint=_fingerprint(data),
                    key_fingerprint=_fingerprint(key_bits(rng_key)),
                    params_fingerprint=_fingerprint(np.concatenate(
                        [np.ravel(np.asarray(p)) for p in jax.tree_util.tree_leaves(params0)])))

    tx = make_optimizer(learning_rate, num_steps, warmup_steps=warmup_steps,
                        final_lr_fraction=final_lr_fraction, weight_decay=weight_decay,
                        clip_norm=clip_norm)
    carry = TrainCarry(params0, tx.init(params0), jax.tree.map(jnp.copy, params0),
                       jnp.zeros((), jnp.int32), jnp.zeros((num_steps,), jnp.float32))

    manager = None
    if checkpoint_dir is not None:
        manager, carry = _open_checkpoints(checkpoint_dir, settings, carry, resume)

    static = (graphdef, batch_size, t_min, t_max, time_sampling, ema_decay, learning_rate,
              num_steps, warmup_steps, final_lr_fraction, weight_decay, clip_norm, loop)

    def run_chunk(carry, length):
        return _chunk_fn(static, length)(carry, data_arr, rest, k_train)

    data_arr = jnp.asarray(data, dtype=jnp.float32)
    start = int(carry.step)
    bar = None
    if progress_bar and start < num_steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, initial=start, desc=f"fit_score ({parameterization})",
                   leave=False)
    begin = time.perf_counter()
    done = start
    last_saved = start
    try:
        while done < num_steps:
            length = min(chunk_size, num_steps - done)
            carry = run_chunk(carry, length)
            chunk_loss = float(jnp.mean(carry.losses[done:done + length]))
            done += length
            if not math.isfinite(chunk_loss):
                raise FloatingPointError(f"training loss became non-finite at step {done}; lower "
                                         f"learning_rate or clip_norm")
            if bar is not None:
                bar.update(length)
                bar.set_postfix(loss=f"{chunk_loss:.4f}")
            if manager is not None and (done % checkpoint_every == 0 or done == num_steps):
                _save(manager, done, carry)
                last_saved = done
            if callback is not None and callback(done, chunk_loss) is True:
                break
        if manager is not None and done != last_saved:
            _save(manager, done, carry)
    except KeyboardInterrupt:
        # ``carry`` is the state after the last finished chunk; its own step labels the checkpoint
        reached = int(carry.step)
        if manager is not None and reached != last_saved:
            _save(manager, reached, carry)
        raise
    finally:
        if bar is not None:
            bar.close()
        if manager is not None:
            manager.close()
    wall = time.perf_counter() - begin
    settings = dict(settings, num_steps_done=done, wall_time_last_call=wall)
    return TrainedScore(graphdef, carry.ema, rest, dim, parameterization, model_config,
                        np.asarray(carry.losses[:done]), settings)


@functools.lru_cache(maxsize=16)
def _chunk_fn(static, length: int):
    """The function that runs ``length`` training steps; cached on the architecture and the settings,
    so repeated or resumed runs in one process compile once. Data, the non-trainable variables and
    the key are arguments, not constants baked into the program.

    ``loop="scan"``: one compiled ``lax.scan`` over the chunk. ``loop="python"``: a Python loop over
    one compiled step (XLA:CPU runs convolutions inside a scan's while loop about 25 times slower
    than outside one, measured with jax 0.12 on the conv net, so convolutional models use this).
    """
    (graphdef, batch_size, t_min, t_max, time_sampling, ema_decay, learning_rate, num_steps,
     warmup_steps, final_lr_fraction, weight_decay, clip_norm, loop) = static
    tx = make_optimizer(learning_rate, num_steps, warmup_steps=warmup_steps,
                        final_lr_fraction=final_lr_fraction, weight_decay=weight_decay,
                        clip_norm=clip_norm)

    def loss_fn(params, rest, x0, key):
        m = nnx.merge(graphdef, params, rest)
        return denoising_loss(m, x0, key, t_min=t_min, t_max=t_max, time_sampling=time_sampling)

    def train_step(state, step, data_arr, rest, k_train):
        params, opt_state, ema = state
        k_idx, k_loss = jax.random.split(jax.random.fold_in(k_train, step))
        idx = jax.random.randint(k_idx, (batch_size,), 0, data_arr.shape[0])
        loss, grads = jax.value_and_grad(loss_fn)(params, rest, data_arr[idx], k_loss)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        stepf = step.astype(jnp.float32)
        decay = jnp.minimum(jnp.float32(ema_decay), (1.0 + stepf) / (10.0 + stepf))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
        return (params, opt_state, ema), loss

    if loop == "scan":
        @jax.jit
        def chunk(carry: TrainCarry, data_arr, rest, k_train) -> TrainCarry:
            steps = carry.step + jnp.arange(length, dtype=jnp.int32)
            (params, opt_state, ema), losses = jax.lax.scan(
                lambda s, k: train_step(s, k, data_arr, rest, k_train),
                (carry.params, carry.opt_state, carry.ema), steps)
            all_losses = jax.lax.dynamic_update_slice(carry.losses, losses, (carry.step,))
            return TrainCarry(params, opt_state, ema, carry.step + length, all_losses)

        return chunk

    one_step = jax.jit(train_step)

    @jax.jit
    def record(carry, state, losses):
        all_losses = jax.lax.dynamic_update_slice(carry.losses, losses, (carry.step,))
        return TrainCarry(*state, carry.step + length, all_losses)

    def python_chunk(carry: TrainCarry, data_arr, rest, k_train) -> TrainCarry:
        state = (carry.params, carry.opt_state, carry.ema)
        losses = []
        for i in range(length):
            state, loss = one_step(state, carry.step + i, data_arr, rest, k_train)
            losses.append(loss)
        return record(carry, state, jnp.stack(losses))

    return python_chunk


def _save(manager, step, carry):
    import orbax.checkpoint as ocp

    manager.save(step, args=ocp.args.StandardSave(carry._asdict()), force=True)
    manager.wait_until_finished()


_RESUME_KEYS = ("num_steps", "batch_size", "learning_rate", "warmup_steps", "final_lr_fraction",
                "weight_decay", "clip_norm", "ema_decay", "t_min", "t_max", "time_sampling",
                "chunk_size", "loop", "parameterization", "model", "data_shape", "data_fingerprint",
                "key_fingerprint", "params_fingerprint")


def _open_checkpoints(checkpoint_dir, settings, carry, resume):
    import orbax.checkpoint as ocp

    directory = os.path.abspath(os.fspath(checkpoint_dir))
    os.makedirs(directory, exist_ok=True)
    settings_file = os.path.join(directory, "settings.json")
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True,
                                                        enable_async_checkpointing=False))
    latest = manager.latest_step()
    if latest is not None and not resume:
        manager.close()
        raise FileExistsError(f"checkpoint_dir {directory} already holds a run (step {latest}); "
                              f"pass resume=True to continue it or use another directory")
    wanted = {k: settings[k] for k in _RESUME_KEYS}
    if latest is not None:
        with open(settings_file) as fh:
            saved = json.load(fh)
        saved = {k: saved.get(k) for k in _RESUME_KEYS}
        wanted_json = jsonable(wanted)
        differ = [k for k in _RESUME_KEYS if saved[k] != wanted_json[k]]
        if differ:
            manager.close()
            raise ValueError(f"cannot resume from {directory}: these settings differ from the "
                             f"stopped run: {differ}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, carry._asdict())
        restored = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
        carry = TrainCarry(**restored)
    else:
        with open(settings_file, "w") as fh:
            json.dump(jsonable(wanted), fh, indent=1, sort_keys=True)
    return manager, carry



# ----- the job behind ``scoresample train`` ----------------------------------------------------

def default_model(dataset: str, parameterization: str, data, rng_key) -> nn.ScoreModel:
    """The network ``run_training`` uses: the MLP (width 128, 3 blocks) for 2-D sets, the conv net
    with 16 channels for digits (about 0.05 s of CPU per step of batch 128 here; 32 channels cost
    about twice as much)."""
    from scoresample import datasets

    check_in("dataset", dataset, datasets.NAMES)
    options = dict(kind="conv", channels=16, groups=4) if dataset == "digits" else dict(kind="mlp")
    return nn.score_model(datasets.dim_of(dataset), parameterization=parameterization,
                           data_std=_rms(np.asarray(data)), rngs=nnx.Rngs(params=rng_key),
                           **options)


def run_training(dataset: str, *, parameterization: str = "eps", num_steps: int = 20_000,
                 batch_size: int = 512, learning_rate: float = 2e-3, out: str = "outputs/train",
                 seed: int = 0, resume: bool = False, progress_bar: bool = True) -> TrainedScore:
    """Train a score network on a named data set and save it (what ``scoresample train`` runs).

    Writes ``OUT/model`` (:meth:`TrainedScore.save`), ``OUT/checkpoints`` (orbax, for ``resume``)
    and ``OUT/training.json`` (settings, final loss, wall time).

    Args:
        dataset: one of :data:`scoresample.datasets.NAMES`.
        parameterization: "eps", "score" or "energy".
        num_steps, batch_size, learning_rate: see :func:`fit_score`.
        out: output directory (made absolute).
        seed: integer seed for the data split, the initial weights and the training stream.
        resume: continue a stopped run from ``OUT/checkpoints``.
    """
    from scoresample import datasets

    check_in("dataset", dataset, datasets.NAMES)
    check_in("parameterization", parameterization, nn.PARAMETERIZATIONS)
    seed = check_int("seed", seed, minimum=0)
    num_steps = check_int("num_steps", num_steps)  # checked again by fit_score; here before the
    batch_size = check_int("batch_size", batch_size)  # data set is made
    learning_rate = check_positive("learning_rate", learning_rate)
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a path (str or os.PathLike), got {type(out).__name__}")
    out = os.path.abspath(os.fspath(out))
    key = jax.random.key(seed)
    k_data, k_model, k_fit = jax.random.split(key, 3)
    num_test = 200 if dataset == "digits" else 2000
    train_data, _ = datasets.train_test_split(dataset, k_data, num_test=num_test)
    model = default_model(dataset, parameterization, train_data, k_model)
    begin = time.perf_counter()
    trained = fit_score(k_fit, train_data, model=model, num_steps=num_steps, batch_size=batch_size,
                        learning_rate=learning_rate, checkpoint_dir=os.path.join(out, "checkpoints"),
                        resume=resume, progress_bar=progress_bar)
    wall = time.perf_counter() - begin
    trained.save(os.path.join(out, "model"), overwrite=True)
    tail = trained.losses[-min(500, trained.num_steps_done):]
    summary = dict(dataset=dataset, seed=seed, parameterization=parameterization,
                   num_steps=num_steps, batch_size=batch_size, learning_rate=learning_rate,
                   final_loss=float(np.mean(tail)), wall_time=wall,
                   model=os.path.join(out, "model"))
    with open(os.path.join(out, "training.json"), "w") as fh:
        json.dump(summary, fh, indent=1, sort_keys=True)
    return trained
