"""JSON in and out of the server: orjson when installed (the ``serve`` extra), else stdlib.

Both refuse NaN and infinities in either direction: ``NaN`` is not JSON, and most clients'
parsers fail on it. ``SEQSTATE_SERVE_JSON=stdlib`` forces the standard library (the benchmark
uses it to measure what orjson buys).
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["BACKEND", "dumps", "dumps_finite", "loads"]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (send finite numbers)")


def _stdlib_dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()


def _stdlib_loads(data: bytes | str) -> Any:
    return json.loads(data, parse_constant=_reject_constant)


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return value != value or value in (float("inf"), float("-inf"))
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    return False


try:
    if os.environ.get("SEQSTATE_SERVE_JSON") == "stdlib":
        raise ImportError("stdlib JSON asked for")
    import orjson
except ImportError:
    BACKEND = "json"
    dumps = _stdlib_dumps
    dumps_finite = _stdlib_dumps
    loads = _stdlib_loads
else:
    BACKEND = "orjson"

    def dumps(value: Any) -> bytes:
        # orjson writes NaN as null: refuse it instead, like json.dumps(allow_nan=False)
        if _has_non_finite(value):
            raise ValueError("Out of range float values are not JSON compliant")
        return orjson.dumps(value)

    def dumps_finite(value: Any) -> bytes:
        """``dumps`` for values already known to be finite (the engine checks its outputs)."""
        return orjson.dumps(value)

    # strict: NaN/Infinity literals are a JSONDecodeError (a ValueError)
    loads = orjson.loads  # type: ignore[assignment]
