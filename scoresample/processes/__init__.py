"""Forward processes: the Ornstein-Uhlenbeck process of every OU sampler (:mod:`.ou`, its names
re-exported here) and the critically damped Langevin process (:mod:`.cld`).

Example:
    >>> from scoresample import processes
    >>> processes.sigma2(0.5), processes.time_grid(10, 1e-3, 5.0, "log-snr")[:2]
    >>> E, Q = processes.cld.forward_flow(0.5)
"""

from scoresample.processes import cld, ou
from scoresample.processes.ou import (
    GRID_KINDS,
    alpha,
    default_t_max,
    li_yan_schedule,
    log_snr,
    rho,
    score_to_x0,
    sigma,
    sigma2,
    time_from_log_snr,
    time_grid,
)

__all__ = [
    "alpha",
    "sigma2",
    "sigma",
    "rho",
    "log_snr",
    "time_from_log_snr",
    "time_grid",
    "GRID_KINDS",
    "li_yan_schedule",
    "default_t_max",
    "score_to_x0",
    "cld",
    "ou",
]
