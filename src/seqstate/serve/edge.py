"""The ASGI layer in front of the routes: bearer auth, body limits, request metrics.

It runs before any parsing, so an unauthenticated or oversized request costs a header check.
Bodies are read here, under three bounds: ``max_body_bytes`` per request (413), a deadline
for the whole body (408, so a client dribbling bytes cannot hold a task forever), and
``max_inflight_bytes`` over all requests being read or served at once (429 server_busy, so a
crowd of large bodies cannot exhaust memory). WebSocket upgrades pass the same auth check.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

from seqstate.serve.errors import error_response
from seqstate.serve.metrics import Metrics

__all__ = ["Edge"]

Scope = dict[str, Any]


class Edge:
    def __init__(
        self,
        app: Any,
        *,
        token: str | None,
        max_body_bytes: int,
        max_inflight_bytes: int,
        body_timeout_s: float,
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.max_inflight_bytes = max_inflight_bytes
        self.body_timeout_s = body_timeout_s
        self.metrics = metrics
        self.inflight_bytes = 0  # bytes of bodies being read or served now (one event loop)
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}  # labelled metrics, cached

    @staticmethod
    def _protected(path: str) -> bool:
        # health and the OpenAPI schema stay open (load balancers, docs); everything else not
        return path.startswith("/v1/") or path == "/metrics"

    def _authorized(self, scope: Scope) -> bool:
        if self.token is None:
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    credentials.strip(), self.token
                )
        return False

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            if self._authorized(scope):
                await self.app(scope, receive, send)
            else:  # refuse the upgrade: HTTP 403 before any frame
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [499]  # client went away before an answer

        async def send_and_record(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self._protected(scope["path"]) and not self._authorized(scope):
                response = error_response(
                    401,
                    "unauthorized",
                    "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send_and_record)
                return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                reserved = [0]
                try:
                    body, refusal = await self._read_body(scope, receive, reserved)
                    if refusal is not None:
                        await refusal(scope, receive, send_and_record)
                        return
                    if body is None:
                        return  # disconnected
                    await self.app(scope, _replay(body, receive), send_and_record)
                finally:
                    self.inflight_bytes -= reserved[0]
                return
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            key = (getattr(route, "path", "unmatched"), str(status[0]))
            children = self._children.get(key)
            if children is None:  # labels() costs a lock and a dict lookup: once per key
                children = (
                    self.metrics.requests.labels(*key),
                    self.metrics.latency.labels(key[0]),
                )
                self._children[key] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - started)

    def _reserve(self, reserved: list[int], size: int) -> bool:
        """Count ``size`` more bytes in flight for this request; False past the bound."""
        if self.inflight_bytes + size > self.max_inflight_bytes:
            return False
        self.inflight_bytes += size
        reserved[0] += size
        return True

    async def _read_body(
        self, scope: Scope, receive: Any, reserved: list[int]
    ) -> tuple[bytes | None, Any]:
        try:
            return await asyncio.wait_for(
                self._read_body_now(scope, receive, reserved), self.body_timeout_s
            )
        except asyncio.TimeoutError:
            return None, error_response(
                408,
                "body_timeout",
                f"the request body did not arrive within {self.body_timeout_s:g} s",
                headers={"Connection": "close"},
            )

    async def _read_body_now(
        self, scope: Scope, receive: Any, reserved: list[int]
    ) -> tuple[bytes | None, Any]:
        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return None, error_response(
                        400, "bad_request", f"invalid Content-Length header {value[:32]!r}"
                    )
                if declared > limit:
                    return None, _too_large(declared, limit)
                if not self._reserve(reserved, declared):
                    return None, self._busy()
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                return None, _too_large(total, limit)
            if total > reserved[0] and not self._reserve(reserved, total - reserved[0]):
                return None, self._busy()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    def _busy(self) -> Any:
        self.metrics.busy.inc()
        return error_response(
            429,
            "server_busy",
            f"the server holds its limit of {self.max_inflight_bytes} request bytes in flight; "
            "retry shortly (with backoff)",
            headers={"Retry-After": "1"},
            limit=self.max_inflight_bytes,
        )


def _too_large(received: int, limit: int) -> Any:
    return error_response(
        413,
        "body_too_large",
        f"request body must be at most {limit} bytes; received {received}: send fewer steps "
        "or streams per request",
        limit=limit,
    )


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls: wait for the disconnect as usual

    return replay
