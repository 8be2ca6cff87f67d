"""Errors and how they are answered: the one place that maps a failure to a response.

Every failure a request can meet becomes an :class:`ApiError` (HTTP status, machine-readable
``code``, message, extra fields) through :func:`api_error`, and is then rendered for its
transport, always with the same status, code and message:

    ==========================================  ======  =====================
    failure                                     status  code
    ==========================================  ======  =====================
    ApiError                                    its own its own
    Reject (a step refused by the rules)        its own its own (+ expected_seq)
    body / frame that is not JSON               400     invalid_json
    pydantic validation error                   422     invalid_request
    StoreFullError                              507     store_full
    StoreError                                  503     store_unavailable
    HTTP 400 / 404 / 405 from the router        same    bad_request / not_found /
                                                        method_not_allowed
    anything else                               500     internal
    ==========================================  ======  =====================

Renderings: :func:`http_response` (a whole HTTP answer: ``{code, message, ...}``),
:func:`item_error` (one item of ``POST /v1/steps`` or of a WebSocket frame:
``{id|stream, seq, status, error: {code, message, ...}}``).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from seqstate.serve import jsonio
from seqstate.serve.rules import Reject
from seqstate.serve.stores.base import StoreError, StoreFullError

__all__ = [
    "ApiError",
    "api_error",
    "describe",
    "error_response",
    "http_response",
    "item_error",
]

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


class ApiError(Exception):
    """An error answered to the client: HTTP ``status``, machine-readable ``code``, a message."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.extra}


def api_error(error: BaseException | Reject) -> ApiError:
    """The :class:`ApiError` a failure is answered with (see the table above)."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, Reject):
        return ApiError(error.status, error.code, error.message, expected_seq=error.expected_seq)
    if isinstance(error, StoreFullError):
        return ApiError(507, "store_full", str(error))
    if isinstance(error, StoreError):
        return ApiError(503, "store_unavailable", f"state store unavailable: {error}")
    if isinstance(error, ValidationError):
        return _invalid(error.errors())
    if _is_request_validation(error):
        return _invalid(error.errors())  # type: ignore[attr-defined]
    if isinstance(error, HTTPException):
        code = _HTTP_CODES.get(error.status_code, "http_error")
        return ApiError(error.status_code, code, str(error.detail))
    if isinstance(error, ValueError | RecursionError):  # json / orjson decode errors
        return ApiError(400, "invalid_json", "body is not valid JSON")
    return ApiError(500, "internal", "internal error")


def _is_request_validation(error: BaseException) -> bool:
    # FastAPI's RequestValidationError, without importing FastAPI into this module
    return type(error).__name__ == "RequestValidationError" and hasattr(error, "errors")


def _invalid(problems: Any) -> ApiError:
    if any(p.get("type") == "json_invalid" for p in problems):
        return ApiError(400, "invalid_json", "body is not valid JSON")
    return ApiError(422, "invalid_request", describe(problems))


def describe(problems: Any) -> str:
    """Pydantic errors as one line: 'x: Input should be a valid list; seq: ...'."""
    parts = []
    for problem in list(problems)[:5]:
        location = ".".join(str(p) for p in problem.get("loc", ()) if p != "body") or "body"
        parts.append(f"{location}: {problem.get('msg', 'invalid')}")
    more = len(problems) - len(parts)
    return "invalid request: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    """An HTTP error answer ``{code, message, ...}`` built from its parts (the edge layer,
    which answers before any route runs)."""
    content = jsonio.dumps({"code": code, "message": message, **extra})
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def http_response(error: BaseException | Reject, headers: dict[str, str] | None = None) -> Response:
    """The HTTP answer to ``error``."""
    problem = api_error(error)
    if headers is None and isinstance(error, HTTPException) and error.headers:
        headers = dict(error.headers)
    return error_response(problem.status, problem.code, problem.message, headers, **problem.extra)


def item_error(
    error: BaseException | Reject,
    *,
    key: str,
    stream: str | None,
    seq: int | None,
    op: str | None = None,
) -> bytes:
    """One failed item: ``{key: stream, "seq", "status", "error": {code, message, ...}}``
    (``key`` is ``"id"`` in ``POST /v1/steps``, ``"stream"`` on the WebSocket; ``op``: the
    operation a WebSocket forecast or end answers, as its success does). An error may name
    its own stream and seq (an item that failed validation knows what it could read)."""
    problem = api_error(error)
    extra = dict(problem.extra)
    named = extra.pop("stream", stream)  # an item that failed validation names what it read
    stream = extra.pop("id", named)
    seq = extra.pop("seq", seq)
    body = {"code": problem.code, "message": problem.message, **extra}
    head: dict[str, Any] = {key: stream} if op is None else {key: stream, "op": op}
    return jsonio.dumps({**head, "seq": seq, "status": problem.status, "error": body})
