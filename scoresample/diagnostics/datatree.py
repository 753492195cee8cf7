"""Arrays and kernel infos to an ArviZ 1.x ``xarray.DataTree``, and netCDF round trips."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

__all__ = ["to_datatree", "save", "load", "INFO_NAMES", "GROUP_ATTRS"]

#: kernel Info fields renamed to the sample-stat names ArviZ expects
INFO_NAMES = {"is_divergent": "diverging", "num_integration_steps": "n_steps",
              "num_trajectory_expansions": "tree_depth"}


def _as_array(name, value) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as err:
        raise TypeError(f"{name} must be an array, got {type(value).__name__}") from err
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                   or np.issubdtype(arr.dtype, np.bool_)):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    return arr


def _leaves_with_names(tree) -> list[tuple[str, object]]:
    import jax

    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = ".".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p))))
                        for p in path)
        out.append((name or "x", leaf))
    return out


def _positions_dict(positions, var_names) -> dict:
    if isinstance(positions, dict):
        if var_names is not None:
            raise ValueError("var_names is only for array positions (a dict already names them)")
        return {str(k): _as_array(f"positions[{k!r}]", v) for k, v in positions.items()}
    if hasattr(positions, "shape") or isinstance(positions, (list, np.ndarray)):
        arr = _as_array("positions", positions)
        if var_names is None:
            return {"x": arr}
        if isinstance(var_names, str):
            return {var_names: arr}
        var_names = [str(v) for v in var_names]
        if arr.ndim != 3 or arr.shape[2] != len(var_names):
            raise ValueError(f"var_names has {len(var_names)} names: positions must have shape "
                             f"(chain, draw, {len(var_names)}), got {arr.shape}")
        if len(set(var_names)) != len(var_names):
            raise ValueError("var_names must be distinct")
        return {name: arr[:, :, i] for i, name in enumerate(var_names)}
    # any other pytree (NamedTuple, nested dicts)
    if var_names is not None:
        raise ValueError("var_names is only for array positions")
    return {name: _as_array(f"positions leaf {name!r}", leaf)
            for name, leaf in _leaves_with_names(positions)}


def _infos_dict(infos, shape) -> dict:
    if infos is None:
        return {}
    if hasattr(infos, "_asdict"):
        items = list(infos._asdict().items())
    elif isinstance(infos, dict):
        items = list(infos.items())
    else:
        raise TypeError(f"infos must be a NamedTuple or a dict of arrays, got {type(infos).__name__}")
    out = {}
    for name, value in items:
        try:
            arr = np.asarray(value)
        except Exception:
            continue
        # keep per-draw scalars and small per-draw vectors; skip nested states and momenta
        if arr.dtype == object or arr.shape[:2] != shape or arr.ndim > 3:
            continue
        if arr.ndim == 3 and name not in ("acceptance_rate",):
            continue
        out[INFO_NAMES.get(name, name)] = arr
    return out


#: root attributes that ArviZ's convention also puts on every group
GROUP_ATTRS = ("sampler", "inference_library", "inference_library_version")


def _extra_groups(groups, shape) -> dict:
    if groups is None:
        return {}
    if not isinstance(groups, dict):
        raise TypeError(f"groups must be a dict group -> dict of arrays, got "
                        f"{type(groups).__name__}")
    out = {}
    for group, variables in groups.items():
        if not isinstance(group, str) or group in ("posterior", "sample_stats"):
            raise ValueError(f"groups: {group!r} is not a further group name (posterior and "
                             "sample_stats come from positions and infos)")
        if not isinstance(variables, dict):
            raise TypeError(f"groups[{group!r}] must be a dict of arrays, got "
                            f"{type(variables).__name__}")
        arrays = {str(k): _as_array(f"groups[{group!r}][{k!r}]", v) for k, v in variables.items()}
        for name, arr in arrays.items():
            if arr.shape[:2] != shape:
                raise ValueError(f"groups[{group!r}][{name!r}] must have the positions' leading "
                                 f"(chain, draw) = {shape}, got shape {arr.shape}")
        out[group] = arrays
    return out


def to_datatree(positions, infos=None, *, var_names=None, attrs: dict | None = None,
                groups: dict | None = None, dims: dict | None = None):
    """An ArviZ DataTree from draws of shape (chain, draw, ...) and optional kernel infos.

    Args:
        positions: an array (chain, draw, ...) (one variable ``"x"``, or split by ``var_names``),
            a dict name -> array (chain, draw, ...), or a pytree of such arrays (a stacked state's
            position); every leaf must have the same leading (chain, draw).
        infos: a kernel Info NamedTuple (or dict) with leaves (chain, draw) as stacked by
            ``jax.lax.scan`` and transposed to chains first. Fields are renamed to ArviZ's names
            (``is_divergent`` -> ``diverging``, ``num_integration_steps`` -> ``n_steps``);
            fields that are not per-draw scalars (momenta, trajectory states) are dropped.
        var_names: a name for an array's variable, or one name per last-axis entry of a
            (chain, draw, d) array (then d scalar variables).
        attrs: attributes of the root (netCDF-storable: strings, numbers); those named in
            :data:`GROUP_ATTRS` (``sampler``, ``inference_library``, ...) are set on every group too.
        groups: further groups of draws, ``{group: {name: array (chain, draw, ...)}}`` (e.g. the
            unconstrained draws of a NumPyro model), with the positions' (chain, draw).
        dims: ``{name: [dim, ...]}``, names of the axes after (chain, draw) of a variable of any
            group (ArviZ's ``dims``; default ``<name>_dim_<i>``).

    Returns:
        ``xarray.DataTree`` with group ``posterior``, ``sample_stats`` when infos are given, and
        the further ``groups``.

    Example:
        >>> dt = to_datatree(np.random.normal(size=(4, 100, 3)), var_names=["a", "b", "c"])
        >>> list(dt.posterior.data_vars)
        ['a', 'b', 'c']
    """
    import arviz_base

    variables = _positions_dict(positions, var_names)
    if not variables:
        raise ValueError("positions holds no arrays")
    shapes = {name: arr.shape for name, arr in variables.items()}
    for name, shape in shapes.items():
        if len(shape) < 2:
            raise ValueError(f"positions: variable {name!r} must have shape (chain, draw, ...), "
                             f"got {shape}")
    leading = {shape[:2] for shape in shapes.values()}
    if len(leading) != 1:
        raise ValueError(f"positions: every variable needs the same (chain, draw), got {shapes}")
    shape = leading.pop()
    data = {"posterior": variables, **_extra_groups(groups, shape)}
    stats = _infos_dict(infos, shape)
    if infos is not None and not stats:
        raise ValueError(f"infos: no field has the positions' leading shape (chain, draw) = {shape}")
    if stats:
        data["sample_stats"] = stats
    if dims is not None and not isinstance(dims, dict):
        raise TypeError(f"dims must be a dict name -> list of dim names, got {type(dims).__name__}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dt = arviz_base.from_dict(data, dims=dims)
    if attrs:
        dt.attrs.update(attrs)
        shared = {k: attrs[k] for k in GROUP_ATTRS if k in attrs}
        for group in data:
            dt[group].attrs.update(shared)
    return dt


_SEP = "__"


def has_h5py() -> bool:
    """Whether h5netcdf can write (it needs h5py)."""
    try:
        import h5py  # noqa: F401
    except ImportError:
        return False
    return True


def _to_classic(ds, prefix: str = ""):
    """A Dataset made writable by netCDF3: int64 -> int32 (dtype noted), names prefixed."""
    import xarray as xr

    out = {}
    for name, var in ds.variables.items():
        values = np.asarray(var.values)
        attrs = dict(var.attrs)
        if values.dtype == np.int64 or values.dtype == np.uint32 or values.dtype == np.uint64:
            if values.size and (values.min() < np.iinfo(np.int32).min
                                or values.max() > np.iinfo(np.int32).max):
                raise ValueError(f"variable {name!r} does not fit in int32 (netCDF3)")
            attrs["scoresample_dtype"] = str(values.dtype)
            values = values.astype(np.int32)
        dims = tuple(prefix + d for d in var.dims)
        out[prefix + str(name)] = xr.Variable(dims, values, attrs)
    return out


def _from_classic(ds):
    import xarray as xr

    variables = {}
    for name, var in ds.variables.items():
        attrs = dict(var.attrs)
        values = np.asarray(var.values)
        dtype = attrs.pop("scoresample_dtype", None)
        if dtype is not None:
            values = values.astype(dtype)
        variables[name] = xr.Variable(var.dims, values, attrs)
    return variables


def write_dataset(ds, path):
    """Write one (group-less) Dataset to netCDF: HDF5 via h5netcdf when h5py is present, else
    netCDF3 via scipy (int64 stored as int32 with its dtype noted, restored by :func:`read_dataset`)."""
    import xarray as xr

    path = Path(path)
    if has_h5py():
        ds.to_netcdf(path, engine="h5netcdf")
    else:
        xr.Dataset(_to_classic(ds), attrs=dict(ds.attrs)).to_netcdf(path, engine="scipy")


def read_dataset(path):
    """Read a Dataset written by :func:`write_dataset` fully into memory."""
    import xarray as xr

    path = Path(path)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:3] == b"CDF":
        with xr.open_dataset(path, engine="scipy", decode_cf=True) as ds:
            ds = ds.load()
        return xr.Dataset(_from_classic(ds), attrs=dict(ds.attrs))
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


def save(dt, path) -> Path:
    """Write a DataTree to ``path`` as netCDF; returns the path.

    With h5py installed this is ``dt.to_netcdf(path, engine="h5netcdf")`` (netCDF4/HDF5 with one
    group per ArviZ group). Without it (h5netcdf cannot write then) the tree is written as one
    classic netCDF3 file through scipy, every variable, dimension and attribute of group ``g``
    prefixed ``g__``; :func:`load` reads both.
    """
    import xarray as xr

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if has_h5py():
        dt.to_netcdf(tmp, engine="h5netcdf")
    else:
        variables, attrs = {}, {"scoresample_format": "datatree-flat-1"}
        attrs.update({k: v for k, v in dt.attrs.items()})
        groups = []
        for node in dt.subtree:
            if node is dt:
                continue
            group = node.path.strip("/").replace("/", ".")
            groups.append(group)
            prefix = group + _SEP
            variables.update(_to_classic(node.to_dataset(inherit=False), prefix))
            attrs.update({prefix + k: v for k, v in node.attrs.items()})
        attrs["scoresample_groups"] = ",".join(groups)
        xr.Dataset(variables, attrs=_classic_attrs(attrs)).to_netcdf(tmp, engine="scipy")
    import os

    os.replace(tmp, path)
    return path


def _classic_attrs(attrs: dict) -> dict:
    out = {}
    for key, value in attrs.items():
        if isinstance(value, (bool, np.bool_)):
            value = int(value)
        elif isinstance(value, (list, tuple)):
            value = np.asarray(value)
            if value.dtype == object or value.dtype.kind in "US":
                value = ",".join(map(str, value.tolist()))
        out[key] = value
    return out


def load(path):
    """Read a DataTree written by :func:`save` (fully into memory; the file is closed)."""
    import xarray as xr

    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"path {str(path)!r} does not exist")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:3] != b"CDF":
        with xr.open_datatree(path, engine="h5netcdf") as dt:
            return dt.load().copy()
    with xr.open_dataset(path, engine="scipy") as ds:
        ds = ds.load()
    groups = [g for g in str(ds.attrs.get("scoresample_groups", "")).split(",") if g]
    variables = _from_classic(ds)
    tree = {}
    root_attrs = {k: v for k, v in ds.attrs.items()
                  if _SEP not in k and not k.startswith("scoresample_")}
    for group in groups:
        prefix = group + _SEP
        gvars = {k[len(prefix):]: xr.Variable(tuple(d[len(prefix):] for d in v.dims), v.values,
                                              v.attrs)
                 for k, v in variables.items() if k.startswith(prefix)}
        coords = {k: v for k, v in gvars.items() if v.dims == (k,)}
        data = {k: v for k, v in gvars.items() if k not in coords}
        gattrs = {k[len(prefix):]: v for k, v in ds.attrs.items() if k.startswith(prefix)}
        tree["/" + group.replace(".", "/")] = xr.Dataset(data, coords=coords, attrs=gattrs)
    dt = xr.DataTree.from_dict(tree)
    dt.attrs.update(root_attrs)
    return dt
