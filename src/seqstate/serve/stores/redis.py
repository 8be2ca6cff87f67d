"""Redis store: several server replicas share one Redis; updates are CAS on a generation.

Each stream is a hash ``{prefix}{id}`` with fields seq, state, output, digest, updated,
generation, checksum, history. A batch is committed by one Lua script (atomic in Redis): each key is
written only if its stored generation is still the one the replica read, so two replicas never
both apply a step and a delete + re-create in between always wins. Idle streams expire through
Redis' own key TTL, set on every write; a replica running with ``ttl 0`` removes the expiry
(PERSIST) an earlier TTL replica left, so its active streams never vanish under it.

Durability is Redis': run it with ``appendonly yes`` and ``appendfsync always`` for an
acknowledged step to survive a Redis crash (``everysec`` risks the last second).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from seqstate.serve.stores.base import Record, StateStore, StoreError, StoreFullError, Update

__all__ = ["RedisStore"]

# KEYS: stream keys. ARGV[1]: ttl in ms (0: no expiry, PERSIST); then 9 values per key:
# expected generation ('' = must be absent, else 'g' .. generation), seq, state, output,
# digest, updated, generation, checksum, history.
_COMMIT = """
local ttl = tonumber(ARGV[1])
local result = {}
for i, key in ipairs(KEYS) do
  local a = 1 + (i - 1) * 9
  -- a foreign key of another type under the prefix reads as a damaged record (generation
  -- ''): only a start=true step of its stream may replace it, and it never fails the batch
  local kind = redis.call('TYPE', key).ok
  local exists = kind ~= 'none'
  local current = ''
  if kind == 'hash' then current = redis.call('HGET', key, 'generation') or '' end
  local ok
  if ARGV[a + 1] == '' then ok = not exists else ok = exists and 'g' .. current == ARGV[a + 1] end
  if ok and exists and kind ~= 'hash' then redis.call('DEL', key) end
  if ok then
    redis.call('HSET', key, 'seq', ARGV[a + 2], 'state', ARGV[a + 3], 'output', ARGV[a + 4],
               'digest', ARGV[a + 5], 'updated', ARGV[a + 6], 'generation', ARGV[a + 7],
               'checksum', ARGV[a + 8], 'history', ARGV[a + 9])
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('PERSIST', key) end
    result[i] = 1
  else
    result[i] = 0
  end
end
return result
"""
_FIELDS = ("seq", "state", "output", "digest", "updated", "generation", "checksum", "history")


class RedisStore(StateStore):
    def __init__(self, url: str, *, ttl_s: float = 0.0, prefix: str = "seqstate:stream:") -> None:
        import redis  # lazily: only servers using Redis need the client

        self._redis_errors = (redis.RedisError,)
        self._response_error = redis.ResponseError
        self.url = url
        self.prefix = prefix
        self.ttl_ms = int(ttl_s * 1000)
        self.write_problem = None
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
            if "OOM" in str(error) or "MISCONF" in str(error):  # maxmemory / failing persistence
                self.write_problem = f"Redis cannot write: {error}"
                raise StoreFullError(f"Redis {operation} refused (store full): {error}") from error
            raise StoreError(f"Redis {operation} failed: {error}") from error

    def _key(self, stream: str) -> str:
        return self.prefix + stream

    def get_many(self, streams: Sequence[str]) -> list[Record | None]:
        with self._errors("read"):
            pipe = self._client.pipeline(transaction=False)
            for stream in streams:
                pipe.hmget(self._key(stream), _FIELDS)
            # per-key errors come back in place: a foreign key (a string under the prefix)
            # is that stream's damaged record, never its batch-mates' 503
            rows = pipe.execute(raise_on_error=False)
        records = []
        for row in rows:
            if isinstance(row, self._response_error) and str(row).startswith("WRONGTYPE"):
                records.append(_DAMAGED)
            elif isinstance(row, Exception):
                raise StoreError(f"Redis read failed: {row}")
            else:
                records.append(_record(row))
        return records

    def commit(self, updates: Sequence[Update]) -> list[bool]:
        if not updates:
            return []
        keys = [self._key(u.stream) for u in updates]
        args: list[bytes | str | int] = [self.ttl_ms]
        for u in updates:
            r = u.record
            expected = b"" if u.expected is None else b"g" + u.expected
            args += [expected, str(r.seq), r.state, r.output, r.digest, repr(r.updated)]
            args += [r.generation, r.checksum, r.history]
        with self._errors("commit"):
            result = self._commit(keys=keys, args=args)
        self.write_problem = None
        return [bool(x) for x in result]

    def delete(self, stream: str) -> bool:
        with self._errors("delete"):
            return bool(self._client.delete(self._key(stream)))

    def expire(self, now: float, ttl_s: float) -> int:
        return 0  # Redis expires keys itself (PEXPIRE on every write); reads check `updated`

    def count(self) -> int:
        with self._errors("count"):
            return sum(1 for _ in self._client.scan_iter(match=self.prefix + "*", count=1000))

    def ping(self) -> None:
        with self._errors("ping"):
            self._client.ping()

    def check_writable(self) -> None:
        if self.write_problem is None:
            return
        with self._errors("write probe"):
            self._client.set(self.prefix + "~probe", b"1", px=1000)
        self.write_problem = None

    def close(self) -> None:
        self._client.close()


_DAMAGED = Record(-1, b"", b"", b"", 0.0, b"", b"")  # not intact: its stream's 409 alone


def _record(row: Sequence[bytes | None]) -> Record | None:
    seq, state, output, digest, updated, generation, checksum, history = row
    if all(field is None for field in row):
        return None
    try:
        return Record(
            int(seq),  # type: ignore[arg-type]
            bytes(state),  # type: ignore[arg-type]
            bytes(output),  # type: ignore[arg-type]
            bytes(digest),  # type: ignore[arg-type]
            float(updated),  # type: ignore[arg-type]
            generation or b"",
            checksum or b"",
            history or b"",
        )
    except (TypeError, ValueError):  # missing or unparsable fields: corrupt, not a crash
        return Record(-1, b"", b"", b"", 0.0, generation or b"", b"")
