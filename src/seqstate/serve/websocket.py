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
connection and HTTP request share the batcher. A client may pipeline: steps of one stream are
applied and answered in the order sent, steps of different streams concurrently (answers of
different streams may come back in any order). A frame that fails validation (bad JSON, wrong
feature count) is answered at once, before steps still in flight. At most ``max_ws_pending``
steps are in flight per connection; past that the server stops reading (TCP backpressure), it
never drops a frame.

Per step the loop does no more than parse, validate and queue the step with the batcher; its
answer is written from the batch's completion callback (no task per frame).
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
from seqstate.serve.steps import Resources, answer_json, describe, step_request
from seqstate.serve.stores import StoreError
from seqstate.serve.stores.base import StoreFullError

if TYPE_CHECKING:  # pragma: no cover
    from seqstate.serve.engine import Outcome

__all__ = ["serve_websocket"]

_DRAIN_S = 30.0  # after the client leaves, steps already queued finish (bounded)


async def serve_websocket(websocket: WebSocket, resources: Resources) -> None:
    config = resources.config
    metrics = resources.metrics
    if resources.websockets >= config.max_websockets:
        # before accept: the client sees HTTP 403 on the upgrade
        await websocket.close(code=1013, reason="too many WebSocket connections; retry later")
        return
    resources.websockets += 1
    metrics.websockets.inc()
    outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
    room = asyncio.Semaphore(config.max_ws_pending)
    last: dict[str, asyncio.Future[Any]] = {}  # each stream's latest queued step or end

    def answered(stream: str, seq: int, future: asyncio.Future[Outcome]) -> None:
        room.release()
        if last.get(stream) is future:
            del last[stream]
        try:
            outcome = future.result()
        except StoreError as error:
            metrics.store_errors.labels("step").inc()
            outbox.put_nowait(_error(stream, seq, _store_problem(error)))
            return
        except Exception:  # never leave the client waiting on a lost answer
            outbox.put_nowait(_error(stream, seq, ApiError(500, "internal", "internal error")))
            return
        if isinstance(outcome, Reject):
            metrics.steps.labels("rejected").inc()
            problem = ApiError(
                outcome.status, outcome.code, outcome.message, expected_seq=outcome.expected_seq
            )
            outbox.put_nowait(_error(stream, seq, problem))
        else:
            metrics.steps.labels("replayed" if outcome.replayed else "applied").inc()
            outbox.put_nowait(b'{"stream":"' + stream.encode() + b'",' + answer_json(outcome)[1:])

    async def after(before: asyncio.Future[Any] | None, then: Any) -> Any:
        if before is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(before)
        return await then()

    def queue_step(frame: WsStep) -> None:
        try:
            request = step_request(frame.stream, frame, resources)
        except ApiError as error:
            room.release()
            outbox.put_nowait(_error(frame.stream, frame.seq, error))
            return
        before = last.get(frame.stream)
        if before is not None and getattr(before, "chained", False):
            # Behind an end, every later op of the stream waits for the one before it (slow
            # path): the end waits for the steps before it, each step after it for its
            # predecessor. A step that skipped the chain would overtake the end (and be
            # deleted by it) or the step just behind the end (and be refused).
            async def submit() -> Outcome:
                return await resources.batcher.enqueue(request)

            future: asyncio.Future[Any] = asyncio.ensure_future(after(before, submit))
            future.chained = True  # type: ignore[attr-defined]
        else:  # the batcher keeps steps of one stream in order by itself
            future = resources.batcher.enqueue(request)
        last[frame.stream] = future
        future.add_done_callback(lambda f: answered(frame.stream, frame.seq, f))

    def queue_end(frame: WsEnd) -> None:
        async def end() -> bytes:
            try:
                existed = await asyncio.to_thread(resources.store.delete, frame.stream)
            except StoreError as error:
                return _error(frame.stream, None, _store_problem(error))
            return jsonio.dumps({"stream": frame.stream, "op": "end", "deleted": existed})

        future = asyncio.ensure_future(after(last.get(frame.stream), end))
        future.chained = True  # type: ignore[attr-defined]
        last[frame.stream] = future

        def ended(f: asyncio.Future[bytes]) -> None:
            room.release()
            if last.get(frame.stream) is f:
                del last[frame.stream]
            outbox.put_nowait(f.result() if not f.cancelled() and not f.exception() else b"")

        future.add_done_callback(ended)

    async def writer() -> None:
        while (frame := await outbox.get()) is not None:
            if frame:
                await websocket.send({"type": "websocket.send", "text": frame.decode()})

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
                outbox.put_nowait(_invalid_frame(raw, error, describe))
                continue
            if isinstance(frame, WsEnd):
                queue_end(frame)
            else:
                queue_step(frame)
    finally:
        pending = list(last.values())
        if pending:  # queued steps are applied anyway; let them finish, bounded
            await asyncio.wait(pending, timeout=_DRAIN_S)
        outbox.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sender, timeout=5)
        resources.websockets -= 1
        metrics.websockets.dec()


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
