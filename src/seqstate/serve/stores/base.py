"""The state store interface: per-stream records, read in bulk, committed atomically with CAS."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence

__all__ = ["Record", "StateStore", "StoreError", "Update"]


class StoreError(RuntimeError):
    """The store could not be reached or refused an operation (reported as HTTP 503)."""


@dataclasses.dataclass(frozen=True)
class Record:
    """What the server keeps per stream: enough to continue it and to answer a retry."""

    seq: int  # last applied step number
    state: bytes  # State.to_bytes() of the stream after step ``seq``
    output: bytes  # JSON of the answer ``y`` to step ``seq`` (returned again on a retry)
    digest: bytes  # fingerprint of step ``seq``'s request (x and start), to recognise a retry
    updated: float  # unix time step ``seq`` was applied (for TTL expiry)


@dataclasses.dataclass(frozen=True)
class Update:
    """Write ``record`` for ``stream`` if its stored seq is still ``expected_seq``."""

    stream: str
    expected_seq: int | None  # compare-and-set: the seq read before applying; None = absent
    record: Record


class StateStore(abc.ABC):
    """Stream records keyed by id. Implementations must be safe to call from several threads.

    ``commit`` is the only write on the step path: all updates of one batch become durable in
    one atomic operation, each guarded by a compare-and-set on the seq that was read, so a step
    that raced with another writer (a replica, a DELETE, the expiry sweeper) is never applied
    on top of a state it did not start from.
    """

    url: str

    @abc.abstractmethod
    def get_many(self, streams: Sequence[str]) -> list[Record | None]:
        """The records of ``streams`` (None where absent), in order."""

    @abc.abstractmethod
    def commit(self, updates: Sequence[Update]) -> list[bool]:
        """Durably write every update whose CAS holds; per update, whether it was written."""

    @abc.abstractmethod
    def delete(self, stream: str) -> bool:
        """Remove a stream; whether it existed."""

    @abc.abstractmethod
    def expire(self, older_than: float) -> int:
        """Remove streams last updated before ``older_than`` (unix time); how many."""

    @abc.abstractmethod
    def count(self) -> int:
        """Number of stored streams (expired ones not yet swept included)."""

    def ping(self) -> None:  # noqa: B027 - optional hook: health checks of remote stores
        """Raise :class:`StoreError` when the store is unreachable."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""
