"""How many streams are live, kept without scanning the store on the step path.

Counting a store is a scan (SQLite ``COUNT(*)``, a Redis ``SCAN`` of every key): seconds at
half a million streams, and on the model thread it stalls every stream. The server counts
once at start and then every ``RECOUNT_S`` in the background; in between it adds the streams
its own steps created and subtracts those its deletes and sweeps removed::

    estimate = last full count + creates here since - deletes and expiries here since

The estimate never under-counts this server's own creates (a create that lands during a scan
may be counted twice until the next recount, which only refuses early), so on one server
``max_live_streams`` holds exactly up to that slack; with R replicas it can be passed by at
most the streams the other replicas create between two recounts.
"""

from __future__ import annotations

import threading

__all__ = ["RECOUNT_S", "LiveCount"]

RECOUNT_S = 30.0  # seconds between background recounts of the store


class LiveCount:
    def __init__(self) -> None:
        self._base = 0  # the last full count
        self._delta = 0  # creates minus removals here since that count
        self._lock = threading.Lock()  # the model, commit and event-loop threads all add

    @property
    def value(self) -> int:
        with self._lock:
            return max(self._base + self._delta, 0)

    def add(self, change: int) -> None:
        if change:
            with self._lock:
                self._delta += change

    def begin_recount(self) -> int:
        """Call before a full count; hand the result to :meth:`recounted`."""
        with self._lock:
            return self._delta

    def recounted(self, counted: int, started: int) -> None:
        """``counted`` streams were found by a count that began when ``begin_recount`` gave
        ``started``: changes before it are in ``counted``, later ones are kept on top."""
        with self._lock:
            self._base = counted
            self._delta -= started
