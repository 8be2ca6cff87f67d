"""Redis store: several server replicas share one Redis; updates are compare-and-set on seq.

Each stream is a hash ``{prefix}{id}`` with fields seq, state, output, digest, updated. A batch
is committed by one Lua script (atomic in Redis): each key is written only if its stored seq
is still the one the replica read, so two replicas never both apply the same step. Idle
streams expire through Redis' own key TTL (refreshed on every write).

Durability is Redis': run it with ``appendonly yes`` and ``appendfsync always`` for an
acknowledged step to survive a Redis crash (``everysec`` risks the last second).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from seqstate.serve.stores.base import Record, StateStore, StoreError, Update

__all__ = ["RedisStore"]

# KEYS: stream keys. ARGV[1]: ttl in ms (0: none); then 6 values per key:
# expected seq ('' = must be absent), seq, state, output, digest, updated.
_COMMIT = """
local ttl = tonumber(ARGV[1])
local result = {}
for i, key in ipairs(KEYS) do
  local a = 1 + (i - 1) * 6
  local current = redis.call('HGET', key, 'seq')
  if (current == false and ARGV[a + 1] == '') or current == ARGV[a + 1] then
    redis.call('HSET', key, 'seq', ARGV[a + 2], 'state', ARGV[a + 3], 'output', ARGV[a + 4],
               'digest', ARGV[a + 5], 'updated', ARGV[a + 6])
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
    result[i] = 1
  else
    result[i] = 0
  end
end
return result
"""
_FIELDS = ("seq", "state", "output", "digest", "updated")


class RedisStore(StateStore):
    def __init__(self, url: str, *, ttl_s: float = 0.0, prefix: str = "seqstate:stream:") -> None:
        import redis  # lazily: only servers using Redis need the client

        self._redis_errors = (redis.RedisError,)
        self.url = url
        self.prefix = prefix
        self.ttl_ms = int(ttl_s * 1000)
        try:
            self._client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        except ValueError as error:
            raise ValueError(f"invalid Redis URL {url!r}: {error}") from None
        self._commit = self._client.register_script(_COMMIT)

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except self._redis_errors as error:
            raise StoreError(f"Redis {operation} failed: {error}") from error

    def _key(self, stream: str) -> str:
        return self.prefix + stream

    def get_many(self, streams: Sequence[str]) -> list[Record | None]:
        with self._errors("read"):
            pipe = self._client.pipeline(transaction=False)
            for stream in streams:
                pipe.hmget(self._key(stream), _FIELDS)
            rows = pipe.execute()
        records: list[Record | None] = []
        for seq, state, output, digest, updated in rows:
            if seq is None:
                records.append(None)
            else:
                records.append(Record(int(seq), state, output, digest, float(updated)))
        return records

    def commit(self, updates: Sequence[Update]) -> list[bool]:
        if not updates:
            return []
        keys = [self._key(u.stream) for u in updates]
        args: list[bytes | str | int] = [self.ttl_ms]
        for u in updates:
            r = u.record
            expected = "" if u.expected_seq is None else str(u.expected_seq)
            args += [expected, str(r.seq), r.state, r.output, r.digest, repr(r.updated)]
        with self._errors("commit"):
            result = self._commit(keys=keys, args=args)
        return [bool(x) for x in result]

    def delete(self, stream: str) -> bool:
        with self._errors("delete"):
            return bool(self._client.delete(self._key(stream)))

    def expire(self, older_than: float) -> int:
        return 0  # Redis expires keys itself (PEXPIRE on every write)

    def count(self) -> int:
        with self._errors("count"):
            return sum(1 for _ in self._client.scan_iter(match=self.prefix + "*", count=1000))

    def ping(self) -> None:
        with self._errors("ping"):
            self._client.ping()

    def close(self) -> None:
        self._client.close()
