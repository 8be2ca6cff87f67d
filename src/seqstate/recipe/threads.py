"""Threads: how many intra-op threads a training or prediction run should use.

torch defaults to one intra-op thread per core. For the small recurrent models seqstate
usually trains (a window is a few [B, H] x [H, 4H] products per step), the work per call is
far too small to split: extra threads only add synchronisation, and on a machine whose cores
are already busy their OpenMP workers spin-wait for a core, which made training 10-50x slower
(measured in BENCHMARKS.md, "forecast" section). So the rule is: one thread, unless one step
of the model is a large matrix product *and* there are idle cores to run the extra threads.
"""

from __future__ import annotations

import math
import os
from typing import Any

__all__ = ["LARGE_STEP", "apply_threads", "choose_threads", "idle_cores"]

# Multiply-adds of one recurrent step of one layer (lanes * hidden * 4 hidden) above which a
# second thread starts to pay for itself on an idle machine: 64 lanes x 512 units.
LARGE_STEP = 64 * 512 * 4 * 512


def idle_cores() -> int:
    """Cores this process may use minus the 1-minute load average (at least 1)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        usable = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0
    return max(1, math.floor(usable - busy + 0.5))


def choose_threads(requested: Any = None, *, lanes: int = 32, hidden_size: int = 64) -> int:
    """The intra-op thread count for a run.

    Args:
        requested: ``None`` or ``"auto"`` to choose; an int >= 1 to force it.
        lanes, hidden_size: the size of one step of the model, to judge whether splitting it
            can pay.

    Returns:
        ``requested`` when given; else 1 for steps below :data:`LARGE_STEP` multiply-adds,
        otherwise the idle cores (at most 8: more never helped a recurrent step).
    """
    if requested is not None and requested != "auto":
        wrong_type = isinstance(requested, bool) or not isinstance(requested, int | str)
        if wrong_type or isinstance(requested, str) or requested < 1:
            error = TypeError if wrong_type else ValueError
            raise error(
                f"threads must be an int >= 1 or 'auto'; received {requested!r}. Use 1 on a "
                "busy or small machine, 'auto' to let seqstate choose."
            )
        return requested
    if lanes * hidden_size * 4 * hidden_size < LARGE_STEP:
        return 1
    return min(8, idle_cores())


def apply_threads(requested: Any = None, *, lanes: int = 32, hidden_size: int = 64) -> int:
    """:func:`choose_threads`, then ``torch.set_num_threads``; returns the count used."""
    import torch

    threads = choose_threads(requested, lanes=lanes, hidden_size=hidden_size)
    torch.set_num_threads(threads)
    return threads
