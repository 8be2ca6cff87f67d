"""The HTTP connection layer: uvicorn's httptools protocol with deadlines and a connection cap.

uvicorn bounds neither how long a client may take to send its headers nor how many idle
sockets it keeps, so a crowd of sockets that connect and dribble (slowloris) can hold every
slot. This protocol adds, per connection:

- a header deadline: from the first byte of a request (or from connect) its headers must be
  complete within ``header_timeout_s``, else the socket is closed;
- a header size bound (431 past ``MAX_HEADER_BYTES``);
- a cap of ``max_connections`` open HTTP connections: at the cap, a new connection evicts the
  oldest one that has not authenticated: idle, still sending headers (a slowloris socket, or
  an idle keep-alive), or inside a request that carried no valid bearer token; only when every
  connection is busy inside an authenticated request is the newcomer refused with 503
  ``too_many_connections``.

The body deadline and the in-flight byte bound are the ASGI layer's (``edge.py``); keep-alive
and graceful shutdown are uvicorn's own (``timeout_keep_alive``, ``timeout_graceful_shutdown``).
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["MAX_HEADER_BYTES", "GuardedConfig", "GuardedHttpToolsProtocol"]

MAX_HEADER_BYTES = 64 * 1024


class GuardedConfig(uvicorn.Config):
    """uvicorn's Config plus the guard's settings (module-level: workers pickle it)."""

    def __init__(
        self,
        app: Any,
        *,
        header_timeout_s: float,
        max_connections: int,
        token: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.token = token  # None: no auth, every request counts as authenticated


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, config: Any, server_state: Any, app_state: Any, _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_timer: asyncio.TimerHandle | None = None
        self._awaiting_headers = True  # idle or sending headers: may be evicted at the cap
        self._header_bytes = 0
        self._since = 0.0
        token = getattr(config, "token", None)
        self._token = token.encode() if token else None
        self._authenticated = self._token is None  # the current request carried the token

    # --- deadline ---------------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._awaiting_headers = True
        self._header_bytes = 0
        self._since = self.loop.time()
        timeout = getattr(self.config, "header_timeout_s", 10.0)
        self._header_timer = self.loop.call_later(timeout, self._header_deadline)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    # --- protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        cap = getattr(self.config, "max_connections", None)
        if cap is not None and len(self.connections) > cap:
            self._make_room()

    def _make_room(self) -> None:
        idle = [
            c
            for c in self.connections
            if c is not self
            and isinstance(c, GuardedHttpToolsProtocol)
            and (c._awaiting_headers or not c._authenticated)
            and not c.transport.is_closing()
        ]
        if idle:
            victim = min(idle, key=lambda c: c._since)
            victim.transport.close()
            return
        body = b'{"code":"too_many_connections","message":"the server is at its connection cap"}'
        self.transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n%s"
            % (len(body), body)
        )
        self.transport.close()

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
            self._disarm()
            body = b'{"code":"headers_too_large","message":"request headers over 64 KiB"}'
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        if self._token is not None and name.lower() == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            self._authenticated = scheme.lower() == b"bearer" and hmac.compare_digest(
                credentials.strip(), self._token
            )
        super().on_header(name, value)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._authenticated = self._token is None
        if self._header_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._awaiting_headers = False
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # idle on keep-alive: uvicorn's keep-alive timer closes it; evictable at the cap
        self._awaiting_headers = True
        self._since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
