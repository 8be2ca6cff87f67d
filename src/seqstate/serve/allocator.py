"""The server process keeps the memory it frees instead of handing it back to the OS each batch.

glibc's ``malloc`` serves a block above its mmap threshold (128 KiB at start, raised on the
fly up to 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``, and gives the heap's free
top back to the OS once it passes the trim threshold. A served batch makes and drops many
such blocks: a run's stored rows decoded and encoded for 100 streams are a few MiB (a
blended run's baselines keep about 17 KiB of state per stream), and the model's state
tensors at 1000 streams are 0.5 MiB each. Every one of them then costs a page fault per
4 KiB page on first touch, plus the kernel zeroing the page: measured on the engine alone,
a blended run's step at 100 streams took 56 µs with glibc's defaults and 31 µs with the
settings below (``benchmarks/serve_run.py`` and BENCHMARKS.md have the served figures).

:func:`keep_freed_memory` sets both thresholds once, for the process that serves
(``seqstate serve`` and its workers): blocks up to 32 MiB come from the heap, and up to
128 MiB of freed heap is kept for the next batch. A process that set either threshold itself
(``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in its environment) is left as it
is, and so is any C library other than glibc.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

#: blocks up to this size come from the heap (glibc's own ceiling for its dynamic threshold)
MMAP_THRESHOLD = 32 << 20
#: freed heap kept for reuse before the top is given back to the OS
TRIM_THRESHOLD = 128 << 20

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for a serving process; whether they were set
    (False: not glibc, or the environment already chose them)."""
    if any(name in os.environ for name in _USER_SETTINGS):
        return False  # the operator's own tuning wins
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)  # the process's own C library
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # (mallopt answers 1 on success; the mmap threshold first: setting it also stops glibc
    # from moving the trim threshold on its own)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
