"""The ASGI layer in front of the routes: bearer auth, body limits, request metrics.

It runs before any parsing, so an unauthenticated or oversized request costs a header check.
Only the two step routes read a body, and only once the request is authenticated: any other
request that declares one (an unknown path, ``/healthz``, a missing token) is answered without
reading a byte of it, with ``Connection: close``, so it reserves nothing and frees its
connection at once. Bodies are read under three bounds: ``max_body_bytes`` per request (413),
a deadline for the whole body (408, so a client dribbling bytes cannot hold a task forever),
and ``max_inflight_bytes`` over all requests being read or served at once (429 server_busy,
so a crowd of large bodies cannot exhaust memory), charged as bytes arrive, never for what a
header merely declares. A complete body then waits until its parsed size (``PARSED_FACTOR``
times its bytes) fits in a second budget of ``max_inflight_bytes``: memory held for requests
stays under about twice ``max_inflight_bytes``. WebSocket upgrades pass the same auth check.
"""

from __future__ import annotations

import asyncio
import hmac
import re
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
        self.parsed_bytes = 0  # estimated memory of the bodies being parsed and served now
        self._room = asyncio.Event()  # set when parsed_bytes drops
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
            has_body = _declares_body(scope)
            if self._protected(scope["path"]) and not self._authorized(scope):
                headers = {"WWW-Authenticate": "Bearer"}
                if has_body:  # never read: the connection goes with the answer
                    headers["Connection"] = "close"
                response = error_response(
                    401,
                    "unauthorized",
                    "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                    headers=headers,
                )
                await response(scope, receive, send_and_record)
                return
            if has_body and not _takes_body(scope):
                # an unknown path, or a route that takes no body: answered (404/405) without
                # reading a byte of it, and the connection closed, so a crowd of bodies that
                # never arrive reserves no budget and holds no connection slot
                await self.app(scope, _no_body, _closing(send_and_record))
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
                    parsed = await self._admit(len(body) * PARSED_FACTOR)
                    try:
                        await self.app(scope, _replay(body, receive), send_and_record)
                    finally:
                        self.parsed_bytes -= parsed
                        self._room.set()
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

    async def _admit(self, charge: int) -> int:
        """Wait until ``charge`` bytes of parsed requests fit in ``max_inflight_bytes`` (a
        request alone is always admitted); returns the charge held, released by the caller.
        Requests waiting here hold only their raw body, and every admitted one finishes, so
        waiting never deadlocks."""
        charge = min(charge, self.max_inflight_bytes)
        while self.parsed_bytes and self.parsed_bytes + charge > self.max_inflight_bytes:
            self._room.clear()
            await self._room.wait()
        self.parsed_bytes += charge
        return charge

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
            if _deadline is None:  # Python 3.10: the read runs as a task of its own
                return await asyncio.wait_for(
                    self._read_body_now(scope, receive, reserved), self.body_timeout_s
                )
            # a timer on this task: no task, future and callbacks per request
            async with _deadline(self.body_timeout_s):
                return await self._read_body_now(scope, receive, reserved)
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
        # (a body past the in-flight budget could never be read: 413, not a 429 to retry)
        limit = min(self.max_body_bytes, self.max_inflight_bytes)
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
                # nothing is reserved for what is only declared: bytes are charged as they
                # arrive, so sockets that declare large bodies and send nothing hold nothing
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
            headers={"Retry-After": "1", "Connection": "close"},  # the body is left unread
            limit=self.max_inflight_bytes,
        )


def _too_large(received: int, limit: int) -> Any:
    return error_response(
        413,
        "body_too_large",
        f"request body must be at most {limit} bytes; received {received}: send fewer steps "
        "or streams per request",
        headers={"Connection": "close"},  # the rest of the body is never read
        limit=limit,
    )


# asyncio.timeout (Python 3.11+) bounds an await in the running task; wait_for (3.10) wraps it
# in a new task, a cost paid by every request that carries a body
_deadline: Any = getattr(asyncio, "timeout", None)

# A body takes about PARSED_FACTOR times its size once parsed and validated (measured: a 1 MiB
# /v1/steps body of 3-feature steps held 7.9 MB while served). Raw bytes being read count
# against max_inflight_bytes (429 past it); parsed bodies count PARSED_FACTOR times their size
# against a second max_inflight_bytes, and wait their turn for it instead of being parsed.
PARSED_FACTOR = 8

# the routes that read a body: a stream's steps and its forecast (and /v1/steps below)
_BODY_PATH = re.compile(r"^/v1/streams/[^/]+/(steps|forecast)$")


def _takes_body(scope: Scope) -> bool:
    """Whether the request is one of the routes that read a body (steps and forecast)."""
    if scope["method"] != "POST":
        return False
    path = scope["path"]
    return path == "/v1/steps" or _BODY_PATH.match(path) is not None


def _declares_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _closing(send: Any) -> Any:
    """``send`` with ``Connection: close`` added to the response head."""

    async def send_closing(message: Any) -> None:
        if message["type"] == "http.response.start":
            headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return send_closing


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls: wait for the disconnect as usual

    return replay
