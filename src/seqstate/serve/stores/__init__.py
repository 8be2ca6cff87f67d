"""State stores behind one interface; :func:`open_store` picks one from a URL.

memory://                      in-process dict (tests; lost on exit)
sqlite:///absolute/path.db     embedded default, one file, WAL
redis://host:port/db           shared by several replicas (compare-and-set on a generation)
redis+cluster://host:port      Redis Cluster: streams sharded by hash slot, WAIT for replicas
"""

from __future__ import annotations

from seqstate.serve.stores.base import Record, StateStore, StoreError, Update
from seqstate.serve.stores.memory import MemoryStore
from seqstate.serve.stores.sqlite import SQLiteStore

__all__ = [
    "MemoryStore",
    "Record",
    "SQLiteStore",
    "StateStore",
    "StoreError",
    "Update",
    "open_store",
    "store_kind",
]


def store_kind(url: str) -> str:
    """Which store ``url`` names (``memory``, ``sqlite``, ``redis``, ``redis+cluster``),
    checked without opening anything, so a server refuses a bad URL before it starts."""
    if not isinstance(url, str):
        raise TypeError(f"store must be a URL string; received {type(url).__name__}")
    if url == "memory://":
        return "memory"
    if url.startswith("sqlite:///"):
        if not url[len("sqlite:///") :]:
            raise ValueError(f"store {url!r} names no file; expected sqlite:///path/to/file.db")
        return "sqlite"
    if url.startswith("redis+cluster://"):
        return "redis+cluster"
    if url.startswith(("redis://", "rediss://", "unix://")):
        return "redis"
    raise ValueError(
        f"unknown store {url!r}; expected memory://, sqlite:///path/to/file.db, "
        "redis://host:port/db or redis+cluster://host:port"
    )


def open_store(url: str, *, ttl_s: float = 0.0) -> StateStore:
    """Open the store a URL names (``ttl_s`` is used by stores that expire keys natively)."""
    kind = store_kind(url)
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        # SQLAlchemy's convention: sqlite:///rel.db is relative, sqlite:////abs/file.db absolute
        return SQLiteStore(url[len("sqlite:///") :])
    if kind == "redis+cluster":
        from seqstate.serve.stores.redis import RedisClusterStore

        return RedisClusterStore(url, ttl_s=ttl_s)
    from seqstate.serve.stores.redis import RedisStore

    return RedisStore(url, ttl_s=ttl_s)
