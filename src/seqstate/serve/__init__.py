"""The seqstate streaming server: durable per-stream state and cross-stream batching.

    from seqstate.serve import ServeConfig, create_app
    app = create_app(ServeConfig("runs/m1", token="secret"))      # an ASGI app (FastAPI)

or from the shell: ``python -m seqstate.serve runs/m1 --token secret`` (``seqstate serve``).
See ``docs/serving.md``. FastAPI, uvicorn and redis are imported only by this package.
"""

from __future__ import annotations

from seqstate.serve.app import create_app
from seqstate.serve.command import add_arguments, run
from seqstate.serve.config import ServeConfig
from seqstate.serve.stores import MemoryStore, SQLiteStore, StateStore, open_store

__all__ = [
    "MemoryStore",
    "SQLiteStore",
    "ServeConfig",
    "StateStore",
    "add_arguments",
    "create_app",
    "open_store",
    "run",
]
