"""``/v1/ws``: one WebSocket carrying steps of many streams, for clients that stream all day.

Frames are JSON text, one object each::

    client -> {"stream": "s1", "seq": 7, "x": [f1, ...], "start": false}   a step ([F] or [[F],..])
    client -> {"op": "end", "stream": "s1"}                                end (delete) a stream
    server -> {"stream": "s1", "seq": 7, "y": [...], "replayed": false}    the answer
    server -> {"stream": "s1", "op": "end", "deleted": true}
    server -> {"stream": "s1", "seq": 7, "status": 409,
               "error": {"code": "seq_gap", "message": "...", "expected_seq": 5}}

The rules are those of ``POST /v1/streams/{id}/steps`` (gap, stale, conflict, idempotent retry,
start); a step is answered only after its new state is durable, and steps from every
connection and HTTP request share the batcher. A client may pipeline: frames of one stream are
applied in the order sent, frames of different streams concurrently (answers of different
streams may come back in any order). At most ``max_ws_pending`` steps are in flight per
connection; past that the server stops reading (TCP backpressure), it never drops a frame.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.websockets import WebSocket

from seqstate.serve import jsonio
from seqstate.serve.errors import ApiError
from seqstate.serve.rules import Reject
from seqstate.serve.schemas import WS_FRAME, WsEnd, WsStep
from seqstate.serve.stores import StoreError
from seqstate.serve.stores.base import StoreFullError

if TYPE_CHECKING:  # pragma: no cover
    from seqstate.serve.app import Resources

__all__ = ["serve_websocket"]

_DRAIN_S = 30.0  # after the client leaves, steps already submitted finish (bounded)


async def serve_websocket(websocket: WebSocket, resources: Resources) -> None:
    from seqstate.serve.app import _answer, _describe, _step_request, _submit

    config = resources.config
    if resources.websockets >= config.max_websockets:
        # before accept: the client sees HTTP 403 on the upgrade; logged with its reason
        await websocket.close(code=1013, reason="too many WebSocket connections; retry later")
        return
    resources.websockets += 1
    resources.metrics.websockets.inc()
    outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
    room = asyncio.Semaphore(config.max_ws_pending)
    tails: dict[str, asyncio.Task[None]] = {}  # last task of each stream: the next one waits

    async def writer() -> None:
        while (frame := await outbox.get()) is not None:
            await websocket.send({"type": "websocket.send", "text": frame.decode()})

    async def run(frame: WsStep | WsEnd, before: asyncio.Task[None] | None) -> None:
        try:
            if before is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(before)
            outbox.put_nowait(await _handle(frame))
        finally:
            room.release()
            if tails.get(frame.stream) is asyncio.current_task():
                del tails[frame.stream]

    async def _handle(frame: WsStep | WsEnd) -> bytes:
        stream = frame.stream
        if isinstance(frame, WsEnd):
            try:
                existed = await asyncio.to_thread(resources.store.delete, stream)
            except StoreError as error:
                return _error(stream, None, _store_problem(error))
            return jsonio.dumps({"stream": stream, "op": "end", "deleted": existed})
        try:
            outcome = await _submit(resources, _step_request(stream, frame, resources))
        except ApiError as error:
            return _error(stream, frame.seq, error)
        except StoreError as error:
            return _error(stream, frame.seq, _store_problem(error))
        if isinstance(outcome, Reject):
            problem = ApiError(
                outcome.status, outcome.code, outcome.message, expected_seq=outcome.expected_seq
            )
            return _error(stream, frame.seq, problem)
        return b'{"stream":' + jsonio.dumps(stream) + b"," + _answer(outcome)[1:]

    await websocket.accept()
    sender = asyncio.create_task(writer(), name="seqstate-ws-writer")
    try:
        while True:
            await room.acquire()
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                room.release()
                break
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            try:
                frame = WS_FRAME.validate_python(jsonio.loads(raw))
            except ValueError as error:  # JSONDecodeError and ValidationError are ValueErrors
                room.release()
                outbox.put_nowait(_invalid_frame(raw, error, _describe))
                continue
            task = asyncio.create_task(run(frame, tails.get(frame.stream)))
            tails[frame.stream] = task
    finally:
        pending = list(tails.values())
        if pending:  # submitted steps are applied anyway; let them finish, bounded
            await asyncio.wait(pending, timeout=_DRAIN_S)
        outbox.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sender, timeout=5)
        resources.websockets -= 1
        resources.metrics.websockets.dec()


def _store_problem(error: StoreError) -> ApiError:
    if isinstance(error, StoreFullError):
        return ApiError(507, "store_full", str(error))
    return ApiError(503, "store_unavailable", f"state store unavailable: {error}")


def _error(stream: str | None, seq: int | None, error: ApiError) -> bytes:
    body = {"code": error.code, "message": error.message, **error.extra}
    return jsonio.dumps({"stream": stream, "seq": seq, "status": error.status, "error": body})


def _invalid_frame(raw: Any, error: ValueError, describe: Any) -> bytes:
    stream = seq = None
    with contextlib.suppress(Exception):
        data = jsonio.loads(raw)
        if isinstance(data, dict):
            stream = data.get("stream") if isinstance(data.get("stream"), str) else None
            seq = data.get("seq") if type(data.get("seq")) is int else None
    if isinstance(error, ValidationError):
        problem = ApiError(422, "invalid_request", describe(error.errors()))
    else:
        problem = ApiError(400, "invalid_json", "frame is not valid JSON")
    return _error(stream if stream and len(stream) <= 128 else None, seq, problem)
