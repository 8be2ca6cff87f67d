"""In-process store: a dict under a lock. For tests and throwaway servers: not durable."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from seqstate.serve.stores.base import Record, StateStore, Update

__all__ = ["MemoryStore"]


class MemoryStore(StateStore):
    """Records held as the objects the engine built: nothing is serialised or checksummed
    (a record built in this process is intact by construction, see ``Record``)."""

    slow_commit = False  # a dict under a lock: committed on the model thread

    def __init__(self) -> None:
        self.url = "memory://"
        self._records: dict[str, Record] = {}
        self._lock = threading.Lock()

    def get_many(self, streams: Sequence[str]) -> list[Record | None]:
        with self._lock:
            return [self._records.get(stream) for stream in streams]

    def commit(self, updates: Sequence[Update]) -> list[bool]:
        written = []
        with self._lock:
            for update in updates:
                current = self._records.get(update.stream)
                ok = (current.generation if current else None) == update.expected
                if ok:
                    self._records[update.stream] = update.record
                written.append(ok)
        return written

    def delete(self, stream: str) -> bool:
        with self._lock:
            return self._records.pop(stream, None) is not None

    def expire(self, now: float, ttl_s: float) -> int:
        with self._lock:
            old = [k for k, r in self._records.items() if abs(now - r.updated) > ttl_s]
            for k in old:
                del self._records[k]
            return len(old)

    def count(self) -> int:
        with self._lock:
            return len(self._records)
