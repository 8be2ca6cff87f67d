"""The seqstate streaming server: durable per-stream state and cross-stream batching.

    from seqstate.serve import ServeConfig, create_app
    app = create_app(ServeConfig("runs/m1", token="secret"))      # an ASGI app (FastAPI)

or from the shell: ``python -m seqstate.serve runs/m1 --token secret`` (``seqstate serve``).
See ``docs/serving.md``. Names resolve lazily, so ``add_arguments`` (for the CLI) costs no
FastAPI/torch import; FastAPI, uvicorn and redis are imported only by this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ServeConfig": "seqstate.serve.config",
    "create_app": "seqstate.serve.app",
    "add_arguments": "seqstate.serve.command",
    "run": "seqstate.serve.command",
    "StateStore": "seqstate.serve.stores",
    "MemoryStore": "seqstate.serve.stores",
    "SQLiteStore": "seqstate.serve.stores",
    "open_store": "seqstate.serve.stores",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from seqstate.serve.app import create_app  # noqa: F401
    from seqstate.serve.command import add_arguments, run  # noqa: F401
    from seqstate.serve.config import ServeConfig  # noqa: F401
    from seqstate.serve.stores import MemoryStore, SQLiteStore, StateStore, open_store  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'seqstate.serve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
