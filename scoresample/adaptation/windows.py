"""Stan's staged warmup windows: which steps estimate the preconditioner and where windows end."""

from __future__ import annotations

import numpy as np

__all__ = ["window_schedule"]


def window_schedule(num_steps: int, *, init_buffer: int = 75, term_buffer: int = 50,
                    base_window: int = 25):
    """Stan's warmup schedule: ``(is_slow, is_window_end)`` boolean arrays of length ``num_steps``.

    A fast window of ``init_buffer`` steps (step size only), slow windows of doubling length from
    ``base_window`` that end by re-estimating the preconditioner, and a final fast window of
    ``term_buffer`` steps. Short warmups scale the buffers to 15% / 75% / 10% as Stan does.

    Example:
        >>> is_slow, is_end = window_schedule(1000)
        >>> np.flatnonzero(is_end) + 1  # window ends: 100, 150, 250, 450, 950
    """
    is_slow = np.zeros(num_steps, bool)
    is_end = np.zeros(num_steps, bool)
    if num_steps < 20:
        return is_slow, is_end
    if init_buffer + base_window + term_buffer > num_steps:
        init_buffer = int(0.15 * num_steps)
        term_buffer = int(0.1 * num_steps)
        base_window = num_steps - init_buffer - term_buffer
    slow_end = num_steps - term_buffer
    start, size = init_buffer, base_window
    while start < slow_end:
        end = start + size
        if end + 2 * size > slow_end:
            end = slow_end
        is_slow[start:end] = True
        is_end[end - 1] = True
        start, size = end, 2 * size
    return is_slow, is_end
