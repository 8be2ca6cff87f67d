"""API errors: every error response is JSON ``{code, message, ...}`` with a 4xx/5xx status."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from seqstate.serve import jsonio

__all__ = ["ApiError", "error_response"]


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


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    content = jsonio.dumps({"code": code, "message": message, **extra})
    return Response(content, status_code=status, media_type="application/json", headers=headers)
