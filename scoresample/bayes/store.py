"""Streaming a run to disk in chunks and resuming it after a kill."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from scoresample.base import jsonable
from scoresample.bayes.runners import Tuned
from scoresample.diagnostics.datatree import read_dataset, save, write_dataset

__all__ = ["RunStore", "restore_tuned"]


def restore_tuned(runner, x_init, saved) -> Tuned:
    """Rebuild a warmup result saved by :class:`RunStore` on the structure of a fresh init."""
    template = jax.eval_shape(runner.template, x_init)
    states = jax.tree.unflatten(jax.tree.structure(template[0]), saved["states"])
    params = jax.tree.unflatten(jax.tree.structure(template[1]), saved["params"])
    return Tuned(states, params, int(saved["num_grad_evals"]), dict(saved["details"]))


class RunStore:
    """A run folder: ``run.json`` (settings), ``warmup.nc``, ``chunk_XXXXXXXX.nc`` per chunk.

    Every file is written to a temporary name and renamed, so a killed run leaves only whole files.
    A chunk file holds the chunk's draws and sample stats and the chains' kernel states after it,
    so a resumed run continues from exactly where the killed one stopped; the per-draw keys
    (``fold_in`` of the chain key with the draw index) make its draws those of an uninterrupted run.
    The finished run is also written whole to ``result.nc`` (read it with
    :func:`scoresample.diagnostics.load`).
    """

    def __init__(self, path, settings: dict, *, resume: bool):
        self.path = Path(path).expanduser()
        self.settings = jsonable(settings)
        meta = self.path / "run.json"
        if meta.exists():
            if not resume:
                raise FileExistsError(f"output {str(self.path)!r} already holds a run; pass "
                                      "resume=True to continue it or choose another folder")
            saved = json.loads(meta.read_text())
            if saved != self.settings:
                diff = sorted(k for k in set(saved) | set(self.settings)
                              if saved.get(k) != self.settings.get(k))
                raise ValueError(f"resume: the run in {str(self.path)!r} was made with other "
                                 f"settings (differing: {diff})")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self._atomic_write_text(meta, json.dumps(self.settings, indent=1))

    @staticmethod
    def _atomic_write_text(path: Path, text: str):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    @staticmethod
    def _write_dataset(path: Path, data: dict, attrs: dict):
        import xarray as xr

        variables = {}
        for name, value in data.items():
            value = np.asarray(value)
            variables[name] = (tuple(f"{name}_{i}" for i in range(value.ndim)), value)
        tmp = path.with_name(path.name + ".tmp")
        write_dataset(xr.Dataset(variables, attrs=attrs), tmp)
        os.replace(tmp, path)

    @staticmethod
    def _read_dataset(path: Path):
        ds = read_dataset(path)
        data = {name: np.asarray(ds[name].values) for name in ds.data_vars}
        return data, dict(ds.attrs)

    def save_warmup(self, tuned: Tuned):
        states = jax.tree.leaves(tuned.states)
        params = jax.tree.leaves(tuned.params)
        data = {f"state{i}": a for i, a in enumerate(states)}
        data.update({f"param{i}": a for i, a in enumerate(params)})
        attrs = {"num_states": len(states), "num_params": len(params),
                 "num_grad_evals": int(tuned.num_grad_evals),
                 "details": json.dumps(jsonable(tuned.details))}
        self._write_dataset(self.path / "warmup.nc", data, attrs)

    def load_warmup(self):
        path = self.path / "warmup.nc"
        if not path.exists():
            return None
        data, attrs = self._read_dataset(path)
        details = json.loads(attrs["details"])
        return {"states": [jnp.asarray(data[f"state{i}"]) for i in range(int(attrs["num_states"]))],
                "params": [jnp.asarray(data[f"param{i}"]) for i in range(int(attrs["num_params"]))],
                "num_grad_evals": int(attrs["num_grad_evals"]), "details": details}

    def save_chunk(self, end: int, states, draws: dict, stats: dict, sample_time: float):
        leaves = jax.tree.leaves(states)
        data = {f"state{i}": a for i, a in enumerate(leaves)}
        names = {"draws": list(draws), "stats": list(stats)}
        data.update({f"draw{i}": draws[k] for i, k in enumerate(names["draws"])})
        data.update({f"stat{i}": stats[k] for i, k in enumerate(names["stats"])})
        attrs = {"end": int(end), "num_states": len(leaves), "names": json.dumps(names),
                 "sample_time": float(sample_time)}
        self._write_dataset(self.path / f"chunk_{end:09d}.nc", data, attrs)

    def load_chunks(self, states_template):
        files = sorted(self.path.glob("chunk_*.nc"))
        if not files:
            return None
        treedef = jax.tree.structure(states_template)
        draws_chunks, stats_chunks = [], []
        start, sample_time, states = 0, 0.0, None
        for file in files:
            data, attrs = self._read_dataset(file)
            names = json.loads(attrs["names"])
            draws = {k: data[f"draw{i}"] for i, k in enumerate(names["draws"])}
            stats = {k: data[f"stat{i}"] for i, k in enumerate(names["stats"])}
            length = next(iter(stats.values())).shape[1]
            if int(attrs["end"]) != start + length:
                raise ValueError(f"resume: chunk files in {str(self.path)!r} are not contiguous "
                                 f"({file.name} ends at {attrs['end']}, expected {start + length})")
            draws_chunks.append(draws)
            stats_chunks.append(stats)
            start = int(attrs["end"])
            sample_time = float(attrs["sample_time"])
            states = [jnp.asarray(data[f"state{i}"]) for i in range(int(attrs["num_states"]))]
        return (jax.tree.unflatten(treedef, states), draws_chunks, stats_chunks, start,
                sample_time)

    def finish(self, dt):
        save(dt, self.path / "result.nc")
