"""``scoresample.sample``: a Bayesian model in, an ArviZ ``xarray.DataTree`` of draws out.

One entry point runs every log-density sampler of the package, and the BlackJAX baselines beside
them, on the same model with the same warmup, so that their costs can be compared honestly:

    dt = scoresample.sample(rng_key, model, method="fors", num_chains=4,
                            num_warmup=1000, num_draws=1000)

``model`` is one of

- a log-density callable on an array or a pytree (``init`` gives a position; pytrees are flattened
  with ``jax.flatten_util.ravel_pytree``);
- a NumPyro model function (``model_args``/``model_kwargs`` are its arguments): it is turned into the
  log-density of its unconstrained latent sites by ``numpyro.infer.util.initialize_model``, and draws
  are mapped back to the constrained sites, with their names, by its ``postprocess_fn``;
- an object with ``logdensity_fn`` and ``initial_position()`` (a :class:`scoresample.posteriordb.Posterior`),
  reported through its ``constrain`` map when it has one.

Methods (:data:`METHODS`): ``"fors"``, ``"rtk"``, ``"picard"`` (this package's kernels) and the
baselines ``"nuts"`` (``blackjax.nuts`` tuned by ``blackjax.window_adaptation``), ``"mala"``
(:mod:`scoresample.kernels.mala`) and ``"ula"`` (unadjusted Langevin,
:mod:`scoresample.kernels.ula`).

Warmup (every method but NUTS, which keeps BlackJAX's own window adaptation as the reference):
the package's one warmup engine, :func:`scoresample.adaptation.staged_warmup`, driven by the
method's tuning spec (:data:`METHODS`):

1. *Gradient-only pre-optimisation.* L-BFGS on ``-logdensity`` whose line search looks only at the
   directional derivative (it brackets a zero of ``phi'(a) = <grad f(x + a p), p>`` and stops at
   the curvature condition ``|phi'(a)| <= c2 |phi'(0)|``), so no log-density value is ever used,
   as FORS requires. From a start far out in the tails (a start at 0 on a regression with many
   observations) small Langevin steps do not reach the typical set in a thousand steps; an
   optimiser does, in a few dozen gradient evaluations.
2. *Laplace start.* At the optimum the Hessian (forward-over-reverse differentiation of the
   gradient, counted as two gradient evaluations per column) gives the Laplace covariance
   ``Sigma = (-H)^-1``. Its Cholesky factor (``preconditioner="dense"``, the default up to
   :data:`DENSE_MAX_DIM` dimensions) or its diagonal is the first preconditioner, and every chain
   starts from its own draw of ``N(x*, Sigma)``: dispersed, in the typical set of a near-Gaussian
   posterior.
3. *Staged windows* (as Stan's window adaptation): a fast window tuning the step size by dual
   averaging on the method's statistic, slow windows of doubling length re-estimating the
   covariance (pooled over chains, shrunk towards the previous estimate), and a final fast window.
   The preconditioner is an affine change of variables ``x = m + D z`` applied to the
   log-density, so it works for every kernel unchanged; the kernels run on ``z``. FORS also
   recalibrates its estimate scale at every window end so that its clip rate stays below
   ``clip_tolerance`` (1e-3 by default; measured and reported in ``warmup_details``, and per
   draw in ``sample_stats``).
4. *Scout* (``warmup_scout="auto"``, the default): when the windows of a proximal sampler (FORS,
   RTK) covered fewer than ten of its draw times, its chains moved too little to estimate a
   covariance (FORS on a funnel); NUTS's window adaptation (BlackJAX) then learns it from the same
   start, and the windows run again on that preconditioner, tuning only the step. Every gradient
   of both passes and of the scout is counted.

After sampling, :func:`scoresample.diagnostics.convergence.warn_if_not_converged` issues a
:class:`scoresample.diagnostics.ConvergenceWarning` when R-hat exceeds 1.01, a bulk or tail ESS is
below 100 per chain, a transition diverged, or FORS's clip rate exceeds its tolerance.

Under ``jax.distributed`` (several processes) the chains are split over the devices of every
process, in the warmup and in the sampling phase, when they divide evenly (otherwise every process
runs every chain); every process receives the whole DataTree, with the draws of one process for
the same key (to rounding).

Sampling runs all chains vmapped in one compiled scan per chunk of draws. The key of draw ``i`` of
chain ``c`` is ``fold_in(fold_in(sample_key, c), i)``, so draws do not depend on the chunking; with
``output=PATH`` every chunk is written to disk as it is made and ``resume=True`` continues a killed
run to the very draws an uninterrupted run gives.

Non-finite values met inside a run are contained: a step that yields a non-finite position keeps
the old state and is flagged ``diverging``; a NaN is never returned as a draw. So is a step that
lands more than :data:`RUNAWAY_LIMIT` preconditioned standard deviations away (a runaway chain).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from scoresample.base import check_in, check_int, check_key, jsonable, key_bits
from scoresample.bayes.methods import METHODS
from scoresample.bayes.model import check_model_inputs, prepare_model
from scoresample.bayes.runners import SCOUTS, Runner, nuts_runner, staged_runner
from scoresample.bayes.store import RunStore, restore_tuned
from scoresample.diagnostics.convergence import warn_if_not_converged
from scoresample.diagnostics.datatree import to_datatree
from scoresample.driver import progress_callback
from scoresample.parallel import batch_sharding, constrain_batch, gather

__all__ = ["sample", "DENSE_MAX_DIM"]

#: ``preconditioner="auto"`` is dense up to this dimension. The Laplace Hessian behind the first
#: dense factor is taken anyway (up to 512 dimensions); what the dense map adds is O(d^2) per
#: gradient (x = m + L z and L^T g). Measured (benchmarks/preconditioner_cost.py): at most about
#: twice the diagonal map's cost per gradient up to d = 200 on a logistic regression with 1000
#: observations and even on an almost free log-density, five to fifty times beyond
DENSE_MAX_DIM = 200

# =============================================================================================
# Progress bar and the chunked sampling loop.
# =============================================================================================


_LAST_STATS = ("energy", "tree_depth")


def _aggregate(name, values):
    """Combine the stats of the ``thin`` steps behind one kept draw (axis 0)."""
    if name in _LAST_STATS:
        return values[-1]
    if values.dtype == jnp.bool_:
        return jnp.any(values, axis=0)
    if jnp.issubdtype(values.dtype, jnp.integer):
        return jnp.sum(values, axis=0).astype(values.dtype)
    return jnp.mean(values, axis=0)


def _chain_sharding(num_chains: int):
    """The chains split over the devices of every process (None on one device, or when they do
    not divide evenly: then every process runs every chain)."""
    return batch_sharding(num_chains, jax.devices())


def _across_processes(sharding) -> bool:
    return sharding is not None and jax.process_count() > 1


def _host(tree, sharding):
    """NumPy copies of the arrays of a sampling chunk; chains split over processes are gathered
    first, so that every process holds every chain."""
    return jax.tree.map(np.asarray, gather(tree) if _across_processes(sharding) else tree)


def _sampling_fn(runner: Runner, to_output: Callable, num_chains: int, chunk: int, thin: int,
                 update, machine_model=None):
    """A jitted ``run(states, params, chain_keys, start)`` making draws start..start+chunk-1.

    The chain axis is sharded over the devices (:mod:`scoresample.parallel`) when it divides
    evenly; each chain's keys depend only on its index, so draws do not depend on the device count.

    Draw i of a chain applies ``thin`` kernel steps with keys ``fold_in(chain_key, i * thin + t)``;
    the stats of those steps are combined (sums of evaluations, any divergence, mean rates).

    ``machine_model = (logdensity_fn, options)`` (FORS-proximal): the chains run on the
    autobatching driver (:mod:`scoresample.autobatch`) instead, the same steps with the same
    keys, each chain making its chunk * thin steps without waiting at every step for the chain
    with the most proposals and coins.
    """
    method = runner.method

    def stats_of(info, is_bad, params):
        out = {"acceptance_rate": method.acceptance_fn(info),
               "diverging": method.divergent_fn(info) | is_bad,
               "num_grad_evals": method.grad_evals_fn(info).astype(jnp.int32),
               "step_size": runner.step_size(params)}
        for name, fn in method.extra_stats:
            out[name] = fn(info)
        return out

    def one_chain(chain_key, i, state, params):
        def one_step(state, t):
            key = jax.random.fold_in(chain_key, i * thin + t)
            new_state, info, is_bad = runner.step(key, state, params)
            return new_state, stats_of(info, is_bad, params)

        if thin == 1:
            state, stats = one_step(state, 0)
        else:
            state, stats = jax.lax.scan(one_step, state, jnp.arange(thin))
            stats = {name: _aggregate(name, value) for name, value in stats.items()}
        x = runner.to_x(state, params)
        return state, to_output(x), stats

    if machine_model is not None:
        from scoresample.adaptation import RUNAWAY_LIMIT
        from scoresample.autobatch import run_in_jit
        from scoresample.kernels.fors import chain_machine

        logdensity_fn, options = machine_model
        steps = chunk * thin

        @jax.jit
        def run_machine(states, params, chain_keys, start):
            machine = chain_machine(logdensity_fn, runner.to_x, params, states.position,
                                    runner.step_size(params), options, num_steps=steps,
                                    position_limit=RUNAWAY_LIMIT)
            carries, _, _, (z, infos, bad), _, _ = run_in_jit(
                chain_keys, machine, num_lanes=num_chains, step_offset=start * thin,
                record_fn=lambda carry, info: (carry["x"], info, carry["bad"]))
            stats = jax.vmap(jax.vmap(stats_of), in_axes=(0, 0, None))(infos, bad, params)
            stats = {name: _aggregate(name, jnp.swapaxes(jnp.reshape(
                value, (chunk, thin) + value.shape[1:]), 0, 1)) for name, value in stats.items()}
            last = jnp.reshape(z, (chunk, thin) + z.shape[1:])[:, -1]
            draws = jax.vmap(jax.vmap(lambda zc, p: to_output(runner.to_x(
                states._replace(position=zc), p))), in_axes=(0, None))(last, params)
            update(start + chunk - 1)
            return states._replace(position=carries["x"]), (draws, stats)

        return run_machine

    sharding = _chain_sharding(num_chains)

    @jax.jit
    def run(states, params, chain_keys, start):
        chain_keys, params = constrain_batch((chain_keys, params), sharding)

        def body(states, j):
            i = start + j
            states, draws, stats = jax.vmap(one_chain, in_axes=(0, None, 0, 0))(
                chain_keys, i, states, constrain_batch(params, sharding))
            update(i)
            return constrain_batch(states, sharding), (draws, stats)

        return jax.lax.scan(body, states, jnp.arange(chunk))

    return run


def _check_method_options(spec, method: str, options: dict, logdensity_fn, dim: int) -> None:
    """Build the method once on an abstract position (``jax.eval_shape``: traced, not compiled)
    so that a bad option raises here, its message naming the option."""
    if method == "nuts":
        return
    position = jax.ShapeDtypeStruct((dim,), jnp.result_type(float))
    try:
        jax.eval_shape(lambda x: spec.build(logdensity_fn, 0.1, **dict(options)).init(x), position)
    except (TypeError, ValueError) as err:
        raise type(err)(f"method_options for {method!r}: {err}") from err


def _resolve_thin(thin, runner: Runner, tuned) -> int:
    """``thin="auto"``: enough steps of the tuned step size to span the method's ``draw_time``."""
    if thin != "auto":
        return thin
    if runner.method.draw_time is None:
        return 1
    step_size = float(np.min(np.asarray(runner.step_size(tuned.params))))
    if not (math.isfinite(step_size) and step_size > 0):
        return 1
    return int(min(1000, max(1, math.ceil(runner.method.draw_time / step_size))))


def _default_chunk(num_draws: int, num_chains: int, dim: int) -> int:
    # about 2**22 numbers per chunk in memory, never more than the run
    per_draw = max(1, num_chains * dim)
    return int(max(1, min(num_draws, 1000, 2**22 // per_draw)))


# =============================================================================================
# The public entry point.
# =============================================================================================


def sample(rng_key, model, *, method: str = "fors", num_chains: int = 4, num_warmup: int = 1000,
           num_draws: int = 1000, model_args=(), model_kwargs=None, init=None,
           progress_bar: bool = True, output=None, resume: bool = False,
           method_options: dict | None = None, preconditioner: str = "auto",
           preoptimize: bool = True, max_preopt_iterations: int = 500, thin="auto",
           chunk_size: int | None = None, warmup_scout: str | None = "auto"):
    """Sample a Bayesian model with one of the package's samplers; return an ArviZ DataTree.

    The warmup (for every method but ``"nuts"``) is: gradient-only L-BFGS to the mode region,
    a Laplace start (each chain draws from ``N(x*, (-H)^-1)``, whose covariance gives the first
    preconditioner), then Stan-like windows tuning the step size by dual averaging of the method's
    statistic and the preconditioner ``x = m + D z`` (dense up to :data:`DENSE_MAX_DIM`
    dimensions). ``"nuts"`` is BlackJAX NUTS tuned by ``blackjax.window_adaptation`` from the same
    starting points, with the same kind of mass matrix. See the module docstring.

    Args:
        rng_key: a JAX PRNG key.
        model: a log-density callable (array or pytree position; needs ``init``), a NumPyro model
            function, or an object with ``logdensity_fn`` and ``initial_position()`` (e.g. a
            :class:`scoresample.posteriordb.Posterior`).
        method: one of :data:`METHODS`: ``"fors"``, ``"rtk"``, ``"picard"``, ``"nuts"``,
            ``"mala"``, ``"ula"``.
        num_chains, num_warmup, num_draws: chains (vmapped), warmup steps, kept draws per chain.
        model_args, model_kwargs: arguments of a NumPyro model.
        init: log-density callables: one position (every chain starts there), or a function
            ``rng_key -> position`` (a start per chain). NumPyro models: a dict of constrained site
            values (default: NumPyro's uniform(-2, 2) on the unconstrained scale, per chain).
            Posterior objects: default ``model.initial_position()``.
        progress_bar: show tqdm bars for warmup and sampling.
        output: a folder; draws are written to it chunk by chunk as they are made (not under
            ``jax.distributed``).
        resume: continue the run that ``output`` holds (same key and settings) and return the
            draws an uninterrupted run gives.
        method_options: options of the kernel (``{"clip": 2.0}`` for FORS, ``{"num_inner_steps":
            5}`` for RTK, ...).
        preconditioner: ``"auto"`` (default: ``"dense"`` up to :data:`DENSE_MAX_DIM` dimensions,
            ``"diagonal"`` above), ``"dense"`` or ``"diagonal"``: the affine map x = m + D z uses
            a lower-triangular factor of the estimated covariance, or a diagonal D (for NUTS: a
            dense or diagonal inverse mass matrix in ``blackjax.window_adaptation``, so that the
            comparison stays even).
        preoptimize: run the gradient-only L-BFGS and the Laplace start (not for ``"nuts"``).
        max_preopt_iterations: L-BFGS iterations per chain.
        thin: kernel steps per kept draw (the stats of a draw sum the evaluations of its steps).
            ``"auto"`` (default): 1, except for a method with a ``draw_time`` (FORS and RTK, the
            proximal samplers), whose kept draw spans that much proximal time:
            ``ceil(draw_time / step_size)`` steps of the tuned step (at most 1000), so that its
            draws are about as informative as a NUTS draw; the value used is ``attrs["thin"]``.
        chunk_size: draws per compiled chunk (and per file with ``output``); fixed by the run.
        warmup_scout: ``"nuts"``: before the windows, ``num_warmup`` steps of NUTS's window
            adaptation learn the covariance, which becomes the preconditioner; the windows then
            tune only the method's step on it (not for ``method="nuts"``). For a posterior where
            the method's own warmup cannot learn the covariance because its chains barely move
            (FORS on a funnel such as posteriordb's gp_pois_regr, where it turns a failing run
            into a passing one; see the posteriordb benchmark page). ``"auto"`` (default): the
            same, but only when the windows of a proximal sampler (FORS, RTK) covered fewer than
            :data:`scoresample.bayes.runners.SCOUT_MIN_DRAW_TIMES` draw times (then they run
            again on the scout's preconditioner); None: never. The scout's gradients count in
            ``num_grad_evals_warmup``; ``attrs["warmup_details"]`` says whether it ran.

    Returns:
        ``xarray.DataTree`` with groups ``posterior`` (dims chain, draw, ...; constrained sites by
        name for NumPyro models) and ``sample_stats`` (``acceptance_rate``, ``diverging``,
        ``num_grad_evals``, ``step_size`` and method extras), and attrs ``sampler``, ``settings``
        (JSON), ``num_grad_evals_warmup``, ``num_grad_evals_sampling``, ``num_grad_evals_total``,
        ``wall_time_warmup``, ``wall_time_sampling``, ``wall_time_total`` (seconds) and
        ``num_chain_devices`` (the chain axis of the sampling phase is sharded over the devices
        of every process when the chains divide evenly over them; draws agree with a one-device
        run to rounding, since each chain's keys depend only on its index), ``num_processes``
        and ``thin`` (the kernel steps per kept draw used). A
        :class:`~scoresample.diagnostics.ConvergenceWarning` is issued when the run may not
        have converged (R-hat, ESS, divergences, FORS's clip rate).

    Example:
        >>> import jax, jax.numpy as jnp, scoresample
        >>> dt = scoresample.sample(jax.random.key(0), lambda x: -0.5 * jnp.sum(x**2),
        ...                         init=jnp.zeros(3), method="mala", num_draws=200)
        >>> dt.posterior["x"].shape
        (4, 200, 3)
    """
    rng_key = check_key("rng_key", rng_key)
    check_in("method", method, METHODS)
    num_chains = check_int("num_chains", num_chains)
    num_warmup = check_int("num_warmup", num_warmup, minimum=0)
    num_draws = check_int("num_draws", num_draws)
    if thin != "auto":
        thin = check_int("thin", thin)
    max_preopt_iterations = check_int("max_preopt_iterations", max_preopt_iterations, minimum=0)
    if not isinstance(progress_bar, (bool, np.bool_)):
        raise TypeError(f"progress_bar must be a bool, got {progress_bar!r}")
    if not isinstance(resume, (bool, np.bool_)):
        raise TypeError(f"resume must be a bool, got {resume!r}")
    if not isinstance(preoptimize, (bool, np.bool_)):
        raise TypeError(f"preoptimize must be a bool, got {preoptimize!r}")
    if output is not None and not isinstance(output, (str, os.PathLike)):
        raise TypeError(f"output must be a path (str or os.PathLike), got {type(output).__name__}")
    if resume and output is None:
        raise ValueError("resume=True needs output=PATH (the folder of the run to continue)")
    if output is not None and jax.process_count() > 1:
        raise ValueError("output=PATH is not supported under jax.distributed (several processes "
                         "would write one folder); every process receives the draws instead")
    if method_options is not None and not isinstance(method_options, dict):
        raise TypeError(f"method_options must be a dict, got {type(method_options).__name__}")
    if method_options and "step_size" in method_options:
        raise ValueError("method_options: step_size is tuned by the warmup, it is not an option "
                         f"of {method!r}")
    options = {**METHODS[method].defaults, **(method_options or {})}
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size)
    check_in("preconditioner", preconditioner, ("auto", "diagonal", "dense"))
    if warmup_scout is not None:
        check_in("warmup_scout", warmup_scout, SCOUTS)
    if method == "nuts":  # NUTS learns its own mass matrix: "auto" means no scout
        if warmup_scout == "nuts":
            raise ValueError("warmup_scout='nuts': method='nuts' learns its own mass matrix; a "
                             "scout is for the staged warmup of the other methods")
        warmup_scout = None
    spec = METHODS[method]
    if spec.build is None and method != "nuts":  # pragma: no cover - table invariant
        raise ValueError(f"method {method!r} has no builder")

    check_model_inputs(model, model_args, model_kwargs, init)  # NumPy only, before any JAX op
    # the option values, on a stand-in model, before the model is prepared (which runs JAX)
    _check_method_options(spec, method, options, lambda x: -0.5 * jnp.sum(x**2), 2)

    t_start = time.perf_counter()
    key_model, key_init, key_warmup, key_sample = jax.random.split(rng_key, 4)
    prepared = prepare_model(key_model, model, model_args=model_args, model_kwargs=model_kwargs,
                             init=init)
    chunk = chunk_size or _default_chunk(num_draws, num_chains, prepared.dim)
    if preconditioner == "auto":
        preconditioner = "dense" if prepared.dim <= DENSE_MAX_DIM else "diagonal"

    # check the options on the model before anything is compiled (abstract evaluation only)
    _check_method_options(spec, method, options, prepared.logdensity_fn, prepared.dim)

    common = dict(progress_bar=bool(progress_bar), preoptimize=bool(preoptimize),
                  max_iterations=max_preopt_iterations, laplace_max_dim=512, shrinkage=10.0,
                  dense=preconditioner == "dense")
    # under jax.distributed the warmup splits the chains over the processes too (on one host it
    # stays on one device, so that its reductions over chains keep their order)
    chain_sharding = _chain_sharding(num_chains)
    warm_sharding = chain_sharding if _across_processes(chain_sharding) else None
    if method == "nuts":
        runner = nuts_runner(spec, options, prepared.logdensity_fn, num_chains, num_warmup,
                             **common, sharding=warm_sharding)
    else:
        runner = staged_runner(spec, options, prepared.logdensity_fn, num_chains, num_warmup,
                               **common, sharding=warm_sharding, scout=warmup_scout)

    settings = {"method": method, "num_chains": num_chains, "num_warmup": num_warmup,
                "num_draws": num_draws, "method_options": jsonable(options),
                "preoptimize": bool(preoptimize) and method != "nuts",
                "max_preopt_iterations": max_preopt_iterations, "chunk_size": chunk,
                "preconditioner": preconditioner, "thin": thin, "warmup_scout": warmup_scout,
                "model": prepared.description, "model_kind": prepared.kind, "dim": prepared.dim,
                "warmup_statistic_target": spec.target,
                "key": key_bits(rng_key).tolist()}

    run_store = None
    if output is not None:
        run_store = RunStore(output, settings, resume=bool(resume))

    # ---- warmup (or its saved result) ----
    t_warm = time.perf_counter()
    x_init = jax.vmap(prepared.init_fn)(jax.random.split(key_init, num_chains))
    if not np.all(np.isfinite(np.asarray(x_init))):
        bad = np.flatnonzero(~np.all(np.isfinite(np.asarray(x_init)), axis=1)).tolist()
        raise ValueError(f"init gave non-finite starting positions for chain(s) {bad}")
    tuned = run_store.load_warmup() if run_store is not None else None
    if tuned is None:
        tuned = runner.warmup(key_warmup, x_init)
        if warm_sharding is not None:
            tuned = tuned._replace(states=gather(tuned.states), params=gather(tuned.params))
        warm_time = time.perf_counter() - t_warm
        tuned.details["wall_time_warmup"] = warm_time
        if run_store is not None:
            run_store.save_warmup(tuned)
    else:
        tuned = restore_tuned(runner, x_init, tuned)
        warm_time = float(tuned.details.get("wall_time_warmup", 0.0))
    tuned.details["wall_time_warmup"] = warm_time

    # ---- sampling, chunk by chunk ----
    chain_keys = jax.vmap(lambda c: jax.random.fold_in(key_sample, c))(jnp.arange(num_chains))
    update, close = progress_callback(num_draws, f"sampling ({method})", bool(progress_bar))
    def outputs(x):
        # one flat dict "group::variable" so that chunks stream as plain arrays
        out = {f"posterior::{k}": v for k, v in prepared.to_output(x).items()}
        if prepared.unconstrained is not None:
            out.update({f"unconstrained_posterior::{k}": v
                        for k, v in prepared.unconstrained(x).items()})
        return out

    thin = _resolve_thin(thin, runner, tuned)
    # FORS chains run on the autobatching driver within a process; split over several processes
    # they run in lockstep under the chain sharding (the same keys, so the same draws)
    machine_model = ((prepared.logdensity_fn, options)
                     if method == "fors" and not _across_processes(chain_sharding) else None)
    run_full = _sampling_fn(runner, outputs, num_chains, chunk, thin, update, machine_model)
    last = num_draws % chunk
    run_last = (_sampling_fn(runner, outputs, num_chains, last, thin, update, machine_model)
                if last else None)

    states, params = tuned.states, tuned.params
    draws_chunks, stats_chunks = [], []
    start = 0
    sample_time = 0.0
    compile_time = 0.0
    if run_store is not None:
        restored = run_store.load_chunks(jax.eval_shape(runner.template, x_init)[0])
        if restored is not None:
            states, draws_chunks, stats_chunks, start, sample_time = restored
    compiled = {}
    try:
        while start < num_draws:
            length = min(chunk, num_draws - start)
            fn = run_full if length == chunk else run_last
            if length not in compiled:
                t_c = time.perf_counter()
                compiled[length] = fn.lower(states, params, chain_keys, jnp.asarray(start)).compile()
                compile_time += time.perf_counter() - t_c
            t_s = time.perf_counter()
            states, (draws, stats) = compiled[length](states, params, chain_keys, jnp.asarray(start))
            jax.block_until_ready((states, draws, stats))
            sample_time += time.perf_counter() - t_s
            draws = jax.tree.map(lambda a: np.swapaxes(a, 0, 1), _host(draws, chain_sharding))
            stats = jax.tree.map(lambda a: np.swapaxes(a, 0, 1), _host(stats, chain_sharding))
            draws_chunks.append(draws)
            stats_chunks.append(stats)
            start += length
            if run_store is not None:
                run_store.save_chunk(start, states, draws, stats, sample_time)
    finally:
        close()

    groups = {}
    for key in draws_chunks[0]:
        group, name = key.split("::", 1)
        groups.setdefault(group, {})[name] = np.concatenate([c[key] for c in draws_chunks], axis=1)
    sample_stats = {k: np.concatenate([c[k] for c in stats_chunks], axis=1)
                    for k in stats_chunks[0]}
    sampling_evals = int(np.sum(sample_stats["num_grad_evals"], dtype=np.int64))
    pooled = {}
    if "num_clipped" in sample_stats and "num_coins" in sample_stats:  # FORS: clips / estimates
        coins = int(np.sum(sample_stats["num_coins"], dtype=np.int64))
        pooled["clip_rate"] = int(np.sum(sample_stats["num_clipped"], dtype=np.int64)) / max(coins,
                                                                                            1)
    total_time = time.perf_counter() - t_start
    attrs = {
        "sampler": method,
        "sampler_description": spec.description,
        "settings": json.dumps(settings),
        "warmup_details": json.dumps(jsonable(tuned.details)),
        "num_grad_evals_warmup": int(tuned.num_grad_evals),
        "num_grad_evals_sampling": sampling_evals,
        "num_grad_evals_total": int(tuned.num_grad_evals) + sampling_evals,
        "wall_time_warmup": float(warm_time),
        "wall_time_sampling": float(sample_time),
        "wall_time_compile": float(compile_time),
        "wall_time_total": float(total_time),
        "num_divergent": int(np.sum(sample_stats["diverging"])),
        "num_chain_devices": 1 if chain_sharding is None else int(chain_sharding.mesh.size),
        "num_processes": jax.process_count(),
        "thin": thin,
        **pooled,
        "model": prepared.description,
        "inference_library": "scoresample",
    }
    from scoresample import __version__

    attrs["inference_library_version"] = __version__
    group_dims = {"posterior": prepared.dims,
                  "unconstrained_posterior": prepared.unconstrained_dims}
    dims = {}
    for group, variables in groups.items():
        dims.update({k: v for k, v in (group_dims.get(group) or {}).items() if k in variables})
    posterior = groups.pop("posterior")
    dt = to_datatree(posterior, sample_stats, attrs=attrs, groups=groups, dims=dims)
    if run_store is not None:
        run_store.finish(dt)
    warn_if_not_converged(dt)
    return dt
