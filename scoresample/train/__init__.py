"""Denoising score matching on the OU process: train a score network, checkpoint, save, load it.

- :mod:`scoresample.train.loss`: the loss, the training times and the optax optimiser;
- :mod:`scoresample.train.fit`: :func:`fit_score` (compiled chunks, EMA weights, orbax checkpoints
  and bit-exact resume) and :func:`run_training`, the job behind ``scoresample train``;
- :mod:`scoresample.train.trained`: :class:`TrainedScore` (``score_fn`` / ``energy_fn`` for the
  samplers) and its file format (:meth:`TrainedScore.save`, :func:`load`).

The accuracy of a trained score against an exact target is
:func:`scoresample.metrics.relative_score_error`.

Example:
    >>> from scoresample import datasets, train, diffusion
    >>> data = datasets.make("two-moons", jax.random.key(0), 20_000)
    >>> trained = train.fit_score(jax.random.key(1), data, num_steps=5000, batch_size=512,
    ...                           learning_rate=2e-3)
    >>> res = diffusion.sample(jax.random.key(2), "ddpm", trained.score_fn, dim=2,
    ...                        num_samples=1000, nfe=100)
    >>> trained.save("/tmp/moons_model"); same = train.load("/tmp/moons_model")
"""

from scoresample.train.fit import TrainCarry, default_model, fit_score, run_training
from scoresample.train.loss import TIME_SAMPLINGS, denoising_loss, make_optimizer, sample_times
from scoresample.train.trained import TrainedScore, load

__all__ = [
    "fit_score",
    "TrainedScore",
    "load",
    "run_training",
    "default_model",
    "denoising_loss",
    "sample_times",
    "make_optimizer",
    "TIME_SAMPLINGS",
    "TrainCarry",
]
