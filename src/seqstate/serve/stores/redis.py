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

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from seqstate.serve.stores.base import Record, StateStore, StoreError, StoreFullError, Update

__all__ = ["RedisClusterStore", "RedisStore"]

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
        records: list[Record | None] = []
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


class RedisClusterStore(RedisStore):
    """Redis Cluster: streams shard over the cluster's masters by hash slot.

    ``redis+cluster://host:port[?replicas=N&wait_ms=T]`` (any node of the cluster; the client
    discovers the rest). Each stream's key is ``{prefix}{{id}}``: the hash tag puts every key
    of a stream in one slot, so the per-stream compare-and-set script (the one of
    :class:`RedisStore`, one key per call) runs atomically on the master owning that slot.
    A batch spans many slots, so it is not one atomic write: each stream commits alone, which
    is all the rules need (a step is acknowledged only when its own write succeeded; a
    failed batch is answered 503 and its retries are replayed where the write did land).

    Reads go through redis-py's cluster client (redirections, failover). Commits go to each
    master on one connection, the scripts then ``WAIT N`` on that same connection: a step is
    acknowledged only once N replicas hold it (default 1), so a failover that promotes a
    replica never loses it. Fewer replicas within ``wait_ms`` -> StoreError (503); the write
    may have landed, and the client's retry is then replayed.
    """

    def __init__(self, url: str, *, ttl_s: float = 0.0, prefix: str = "seqstate:stream:") -> None:
        from urllib.parse import parse_qs, urlsplit

        import redis
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import RedisClusterException
        from redis.retry import Retry

        self._redis_errors = (redis.RedisError,)
        self._response_error = redis.ResponseError
        self.url = url
        self.prefix = prefix
        self.ttl_ms = int(ttl_s * 1000)
        self.write_problem = None
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        try:
            self.replicas = int(query.get("replicas", ["1"])[0])
            self.wait_ms = int(query.get("wait_ms", ["1000"])[0])
            host, port = parts.hostname, parts.port or 6379
            if not host or self.replicas < 0 or self.wait_ms < 1:
                raise ValueError("expected redis+cluster://host:port?replicas=N&wait_ms=T")
        except ValueError as error:
            raise ValueError(f"invalid Redis Cluster URL {url!r}: {error}") from None
        # Connected on first use, not here: the client finds the cluster's nodes when it is
        # made, and a server whose cluster is down must start and answer 503 until it is up,
        # as one on an unreachable redis:// does (not exit with the client's traceback).
        self._cluster_options: dict[str, Any] = dict(
            host=host,
            port=port,
            password=parts.password,
            socket_timeout=5,
            socket_connect_timeout=2,
            retry=Retry(ExponentialBackoff(), 3),  # (cluster errors: 3 tries)
        )
        self._unreachable = (redis.RedisError, RedisClusterException)
        self._connected: Any = None

    @property
    def _cluster(self) -> Any:
        if self._connected is None:
            from redis.cluster import RedisCluster

            try:
                self._connected = RedisCluster(**self._cluster_options)
            except self._unreachable as error:
                raise StoreError(f"cannot reach Redis Cluster {self.url!r}: {error}") from None
        return self._connected

    @property
    def _client(self) -> Any:  # type: ignore[override]
        # reads (get_many's pipeline, ping, delete) go through the cluster client as through
        # a plain one: it routes each key to its slot's master
        return self._cluster

    def _key(self, stream: str) -> str:
        return self.prefix + "{" + stream + "}"  # the hash tag: one slot per stream

    def commit(self, updates: Sequence[Update]) -> list[bool]:
        if not updates:
            return []
        by_node: dict[str, list[int]] = {}
        nodes = {}
        with self._errors("commit"):
            for i, update in enumerate(updates):
                node = self._cluster.get_node_from_key(self._key(update.stream))
                by_node.setdefault(node.name, []).append(i)
                nodes[node.name] = node
        written = [False] * len(updates)
        problems = []
        for name, indices in by_node.items():
            try:
                self._commit_on(nodes[name], updates, indices, written)
            except self._redis_errors as error:
                problems.append(f"{name}: {error}")
        if problems:
            # a master is gone or moved its slots: learn the new layout for the next batch
            with contextlib.suppress(*self._redis_errors):
                self._cluster.nodes_manager.initialize()
            if any("OOM" in p or "MISCONF" in p for p in problems):
                self.write_problem = f"Redis cannot write: {problems[0]}"
                raise StoreFullError(f"Redis Cluster commit refused (store full): {problems[0]}")
            raise StoreError(f"Redis Cluster commit failed: {'; '.join(problems)[:500]}")
        self.write_problem = None
        return written

    def _commit_on(
        self, node: Any, updates: Sequence[Update], indices: list[int], written: list[bool]
    ) -> None:
        pipe = node.redis_connection.pipeline(transaction=False)  # one connection: WAIT sees it
        for i in indices:
            u, r = updates[i], updates[i].record
            expected = b"" if u.expected is None else b"g" + u.expected
            args = [self.ttl_ms, expected, str(r.seq), r.state, r.output, r.digest]
            args += [repr(r.updated), r.generation, r.checksum, r.history]
            pipe.eval(_COMMIT, 1, self._key(u.stream), *args)
        if self.replicas:
            pipe.execute_command("WAIT", self.replicas, self.wait_ms)
        results = pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, Exception):
                raise result  # MOVED (a failover moved the slot), CLUSTERDOWN, ...
        if self.replicas and int(results[-1]) < self.replicas:
            raise self._response_error(
                f"only {results[-1]} of {self.replicas} replicas acknowledged within "
                f"{self.wait_ms} ms"
            )
        for i, result in zip(indices, results, strict=False):
            written[i] = bool(result[0])

    def count(self) -> int:
        with self._errors("count"):
            total = 0
            for node in self._cluster.get_primaries():
                connection = node.redis_connection
                total += sum(1 for _ in connection.scan_iter(match=self.prefix + "*", count=1000))
            return total

    def check_writable(self) -> None:
        if self.write_problem is None:
            return
        with self._errors("write probe"):
            self._client.set(self.prefix + "{~probe}", b"1", px=1000)
        self.write_problem = None
