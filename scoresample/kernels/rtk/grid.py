"""The RTK segment grid and the split of a score-evaluation budget into segments and inner steps."""

from __future__ import annotations

import numpy as np

from scoresample import processes
from scoresample.base import check_in, check_int

__all__ = ["GRIDS", "MIN_SEGMENTS", "rtk_grid", "resolve_segments"]

GRIDS = ("eta-rule",) + processes.GRID_KINDS

# the fewest segments a budget given as nfe alone buys before inner steps (see resolve_segments)
MIN_SEGMENTS = 24


def _eta_rule_next(t):
    """t' with e^{2(t - t')} - 1 = s_{t'}^2 / 2: the rule eta = 0.5 log(1 + 1/(2 L)), L = 1/s_{t'}^2."""
    return 0.5 * np.log1p(2.0 * processes.rho(t) / 3.0)


def rtk_grid(t_min: float, t_max: float, num_segments: int | None = None,
             kind: str = "eta-rule") -> np.ndarray:
    """The segment end points t_0 = t_max > ... > t_K = t_min (float64 numpy).

    ``"eta-rule"`` without ``num_segments``: every segment has e^{2 eta} - 1 = s_{t - eta}^2 / 2, the
    step-size rule eta = 0.5 log(1 + 1/(2L)) with the local bound L_t = 1/s_t^2 on -hess log p_t,
    which makes each subproblem well conditioned (about 0.2 long for large t, geometric with ratio
    2/3 near 0). With ``num_segments`` it is the same grid stretched to K segments (uniform in the
    rule's own segment count). Other kinds are :func:`scoresample.processes.time_grid`.
    """
    check_in("grid", kind, GRIDS)
    if kind != "eta-rule":
        return processes.time_grid(check_int("num_segments", num_segments), t_min, t_max, kind)
    ts = [t_max]
    while ts[-1] > t_min:
        ts.append(max(_eta_rule_next(ts[-1]), t_min))
    ts = np.asarray(ts, dtype=np.float64)
    if len(ts) > 2 and ts[-2] - ts[-1] < 0.25 * (ts[-3] - ts[-2]):
        ts = np.delete(ts, -2)  # do not leave a sliver of a last segment
    if num_segments is None:
        return ts
    num_segments = check_int("num_segments", num_segments)
    # fractional rule count c(t) (piecewise linear in log t between rule points), then uniform in c
    counts = np.arange(len(ts), dtype=np.float64)
    targets = np.linspace(0.0, counts[-1], num_segments + 1)
    out = np.exp(np.interp(targets, counts, np.log(ts)))
    out[0], out[-1] = t_max, t_min
    return out


def resolve_segments(nfe, num_segments, num_inner_steps, evals_per_inner_step,
                     default_inner_steps):
    """K and S from the budget 1 + K (1 + S c) <= nfe (the paper's equal split over segments).

    With ``nfe`` alone, segments come first: S = clip(floor(((nfe - 1) / 24 - 1) / c), 1,
    ``default_inner_steps``), then K = floor((nfe - 1) / (1 + S c)); so a small budget keeps at least
    24 segments with fewer inner steps and a large one adds segments. (Measured on the benchmark
    mixtures at nfe = 50: K = 24, S = 1 beat K = 12, S = 3; at nfe = 100 K = 24, S = 3 was best or
    tied; see docs/benchmarks/rtk.md.) Without ``nfe``, returns the given K (possibly None) and S
    (default ``default_inner_steps``). ``c`` may be fractional (an expected cost per inner step).
    """
    if nfe is None:
        return num_segments, (default_inner_steps if num_inner_steps is None else num_inner_steps)
    c = evals_per_inner_step
    if num_segments is not None and num_inner_steps is not None:
        cost = 1 + num_segments * (1 + num_inner_steps * c)
        if cost > nfe:
            raise ValueError(f"nfe={nfe} is below the cost 1 + K (1 + S c) = {cost} of "
                             f"num_segments={num_segments}, num_inner_steps={num_inner_steps}; "
                             "give at most two of nfe, num_segments, num_inner_steps")
        return num_segments, num_inner_steps
    if num_segments is not None:
        inner_steps = int(((nfe - 1) // num_segments - 1) // c)
        if inner_steps < 1:
            raise ValueError(f"nfe={nfe} leaves no inner step for num_segments={num_segments} "
                             f"(each segment costs 1 + S * {c} evaluations); raise nfe or lower "
                             "num_segments")
        return num_segments, inner_steps
    if num_inner_steps is None:
        inner_steps = ((nfe - 1) // MIN_SEGMENTS - 1) // c
        inner_steps = int(min(max(inner_steps, 1), default_inner_steps))
    else:
        inner_steps = num_inner_steps
    segments = int((nfe - 1) // (1 + inner_steps * c))
    if segments < 1:
        raise ValueError(f"nfe={nfe} is too small for num_inner_steps={inner_steps} "
                         f"(one segment costs {1 + inner_steps * c} evaluations plus 1)")
    return segments, inner_steps
