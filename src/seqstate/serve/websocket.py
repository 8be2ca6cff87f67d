"""``/v1/ws``: one WebSocket carrying steps of many streams, for clients that stream all day.

Frames are JSON text, one object each::

    client -> {"stream": "s1", "seq": 7, "x": [f1, ...], "start": false}   a step ([F] or [[F],..])
    client -> {"op": "end", "stream": "s1"}                                end (delete) a stream
    client -> {"op": "forecast", "stream": "s1", "horizon": 12}            forecast (read only)
    server -> {"stream": "s1", "seq": 7, "y": [...], "replayed": false}    the answer
    server -> {"stream": "s1", "op": "end", "deleted": true}
    server -> {"stream": "s1", "op": "forecast", "seq": 7, "time": [...], "y": [[...], ...]}
    server -> {"stream": "s1", "seq": 7, "status": 409,
               "error": {"code": "seq_gap", "message": "...", "expected_seq": 5}}

Many steps of many streams in one frame, answered by one frame in the same order::

    client -> {"op": "steps", "steps": [{"stream": "s1", "seq": 7, "x": [...]}, ...]}
    server -> {"op": "steps", "results": [<the answer of each item, as above>, ...]}

or the same as a binary message, numbers as float32 (``frames.py``), answered in binary.
Each item follows the rules of a step frame on its own (one may fail, the others apply); the
answer frame is written once every item is answered.

The rules are those of ``POST /v1/streams/{id}/steps`` (gap, stale, conflict, idempotent retry,
start); a step is answered only after its new state is durable, and steps from every
connection and HTTP request share the batcher. A client may pipeline: steps of one stream are
applied and answered in the order sent, steps of different streams concurrently (answers of
different streams may come back in any order). A frame that fails validation (bad JSON, wrong
feature count) is answered at once, before steps still in flight.

Backpressure, never a dropped frame: a frame counts as in flight from when it is read until
its answer is written to the socket. Past ``max_ws_pending`` frames or ``max_ws_pending_bytes``
bytes (frames plus unwritten answers) in flight the server stops reading the connection, and
past ``replay_window`` unanswered steps of one stream it waits for that stream (the store
keeps the answers of a stream's last ``replay_window`` steps, so after a dropped connection
every step that was in flight is replayed on retry).

Per step the loop does no more than parse, validate and queue the step with the batcher; its
answer is written from the batch's completion callback (no task per frame).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import TypeAdapter
from starlette.websockets import WebSocket

from seqstate.recipe.calendar import FIRST_SECOND, LAST_SECOND
from seqstate.serve import jsonio
from seqstate.serve.config import valid_stream_ids
from seqstate.serve.engine import FrameOutcome, FrameSteps, StepRequest, StepResult
from seqstate.serve.errors import ApiError, api_error, item_error
from seqstate.serve.frames import BinarySteps, decode_steps, encode, encode_answers
from seqstate.serve.rules import Reject
from seqstate.serve.schemas import MAX_SEQ, WS_FRAME, WsEnd, WsForecast, WsStep
from seqstate.serve.steps import (
    Resources,
    answer_json,
    array_request,
    forecast_json,
    step_request,
)
from seqstate.serve.stores import StoreError

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
    # Every frame read is held until its answer has been written to the socket: its bytes
    # and its answer's count against max_ws_pending_bytes, the frame against max_ws_pending.
    # A client that stops reading therefore stops the server reading from it, with at most
    # those bounds (plus the one frame being read) held for it.
    outbox: asyncio.Queue[tuple[bytes, int, bool] | None] = asyncio.Queue()
    room = asyncio.Semaphore(config.max_ws_pending)
    held = [0]  # bytes of frames in flight and of answers not yet written
    changed = asyncio.Event()  # set whenever held bytes or a stream's in-flight count drop
    in_flight: dict[str, int] = {}  # steps of each stream not yet answered
    last: dict[str, asyncio.Future[Any]] = {}  # each stream's latest queued step or end

    def put(frame: bytes, charge: int, estimate: int = 0, binary: bool = False) -> None:
        # the answer replaces its estimate (charged when the frame was read)
        change = len(frame) - estimate
        held[0] += change
        outbox.put_nowait((frame, charge + change, binary))

    counters = metrics.step_outcomes  # applied, replayed, rejected

    def settle(
        stream: str, future: asyncio.Future[Any], tally: list[int] | None = None
    ) -> Outcome | BaseException:
        """Book a finished step of ``stream``: its outcome, or the failure to answer. With
        ``tally`` ([applied, replayed, rejected]) the step is counted there, and the frame
        adds its counts to the metrics once."""
        in_flight[stream] -= 1
        if not in_flight[stream]:
            del in_flight[stream]
        changed.set()
        if last.get(stream) is future:
            del last[stream]
        try:
            outcome: Outcome = future.result()
        except Exception as error:  # never leave the client waiting on a lost answer
            if isinstance(error, StoreError):
                metrics.store_errors.labels("step").inc()
            return error
        kind = 2 if isinstance(outcome, Reject) else int(outcome.replayed)
        if tally is None:
            counters[kind].inc()
        else:
            tally[kind] += 1
        return outcome

    async def after(before: asyncio.Future[Any] | None, then: Any) -> Any:
        if before is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(before)
        return await then()

    def queue(request: StepRequest) -> asyncio.Future[Any]:
        """Queue one validated step, in order behind its stream's earlier ops."""
        before = last.get(request.stream)
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
        last[request.stream] = future
        in_flight[request.stream] = in_flight.get(request.stream, 0) + 1
        return future

    def queue_step(frame: WsStep, charge: int, estimate: int) -> None:
        try:
            request = step_request(frame.stream, frame, resources)
        except ApiError as error:
            put(_error(error, frame.stream, frame.seq), charge, estimate)
            return
        stream, seq = frame.stream, frame.seq

        def answered(future: asyncio.Future[Any]) -> None:
            put(_answer(settle(stream, future), stream, seq), charge, estimate)

        queue(request).add_done_callback(answered)

    async def queue_batch(items: list[Any], charge: int, estimate: int, binary: bool) -> None:
        """Queue the items of one steps frame (each a StepRequest, or the ApiError it failed
        with); one answer frame when every item is answered."""
        results: list[Outcome | BaseException | None] = [None] * len(items)
        remaining = [len(items)]
        tally = [0, 0, 0]  # applied, replayed, rejected

        def done() -> None:
            for counter, count in zip(counters, tally, strict=True):
                if count:
                    counter.inc(count)
            if binary:
                put(_binary_answers(items, results, outputs), charge, estimate, binary=True)
            else:
                answers = [
                    _answer(result, *_where(item))  # type: ignore[arg-type]
                    for item, result in zip(items, results, strict=True)
                ]
                put(b'{"op":"steps","results":[' + b",".join(answers) + b"]}", charge, estimate)

        def one(i: int, stream: str) -> Any:
            def answered(future: asyncio.Future[Any]) -> None:
                results[i] = settle(stream, future, tally)
                remaining[0] -= 1
                if not remaining[0]:
                    done()

            return answered

        for i, item in enumerate(items):
            if isinstance(item, ApiError):
                results[i] = item
                remaining[0] -= 1
                continue
            stream = item.stream
            if in_flight.get(stream, 0) >= window:  # (the usual case never awaits)
                await wait_until(lambda: in_flight.get(stream, 0) < window)  # noqa: B023
            queue(item).add_done_callback(one(i, stream))
        if not remaining[0]:
            done()

    def queue_block(
        items: list[StepRequest] | FrameSteps, streams: list[str], charge: int, estimate: int
    ) -> bool:
        """Queue a binary frame's steps (of ``streams``) as one batcher block (one future,
        one callback, the answer frame built from the outcomes in order): a list of
        StepRequests, or the usual frame as arrays (:class:`FrameSteps`, answered straight
        from its answer array). Only when every item is a step of a distinct stream with
        room in its replay window and no end or forecast before it; else False and nothing
        is queued (the frame goes item by item)."""
        if len(set(streams)) != len(streams):
            return False
        steps = 1 if type(items) is FrameSteps else items[0].x.shape[0]  # type: ignore[index]
        if len(streams) * steps > resources.batcher.max_batch * max_steps:
            return False  # one model call holds at most max_batch x max_steps timesteps
        # (the usual frame: none of its streams has an op in flight, checked as sets)
        idle = last.keys().isdisjoint(streams) and in_flight.keys().isdisjoint(streams)
        if not idle:
            for stream in streams:
                before = last.get(stream)
                if in_flight.get(stream, 0) >= window or (
                    before is not None and getattr(before, "chained", False)
                ):
                    return False
        future = resources.batcher.enqueue_block(items)
        last.update(dict.fromkeys(streams, future))
        if idle:
            in_flight.update(dict.fromkeys(streams, 1))
        else:
            for stream in streams:
                in_flight[stream] = in_flight.get(stream, 0) + 1

        def answered(done: asyncio.Future[Any]) -> None:
            for stream in streams:
                count = in_flight[stream] - 1
                if count:
                    in_flight[stream] = count
                else:
                    del in_flight[stream]
                if last.get(stream) is done:
                    del last[stream]
            changed.set()
            requests = items
            results: list[Outcome | BaseException | None]
            tally = [0, 0, 0]  # applied, replayed, rejected
            try:
                outcome = done.result()
            except Exception as error:  # never leave the client waiting on a lost answer
                if isinstance(error, StoreError):
                    metrics.store_errors.labels("step").inc()
                if type(items) is FrameSteps:
                    requests = [items.request(k) for k in range(len(streams))]
                results = [error] * len(streams)
            else:
                if type(items) is FrameSteps:
                    answer = _frame_answers(items, outcome, outputs, tally)
                    _count(counters, tally)
                    put(answer, charge, estimate, binary=True)
                    return
                results = list(outcome)
                for one in results:
                    tally[2 if isinstance(one, Reject) else int(one.replayed)] += 1  # type: ignore[union-attr]
                _count(counters, tally)
            put(_binary_answers(requests, results, outputs), charge, estimate, binary=True)  # type: ignore[arg-type]

        future.add_done_callback(answered)
        return True

    def queue_forecast(frame: WsForecast, charge: int) -> None:
        # after the stream's steps already sent: the forecast sees their state
        async def forecast() -> bytes:
            try:
                answer = await forecast_json(resources, frame.stream, frame)
            except (ApiError, StoreError) as error:
                return _error(error, frame.stream, None, op="forecast")
            return b'{"stream":"' + frame.stream.encode() + b'","op":"forecast",' + answer[1:]

        future = asyncio.ensure_future(after(last.get(frame.stream), forecast))
        future.chained = True  # type: ignore[attr-defined]  # later steps wait, as after an end
        last[frame.stream] = future

        def forecasted(f: asyncio.Future[bytes]) -> None:
            if last.get(frame.stream) is f:
                del last[frame.stream]
            if f.cancelled() or f.exception() is not None:
                answer = _error(_Internal(), frame.stream, None, op="forecast")
            else:
                answer = f.result()
            put(answer, charge)

        future.add_done_callback(forecasted)

    def queue_end(frame: WsEnd, charge: int) -> None:
        async def end() -> bytes:
            try:
                existed = await asyncio.to_thread(resources.store.delete, frame.stream)
            except StoreError as error:
                return _error(error, frame.stream, None, op="end")
            resources.live.add(-int(existed))
            return jsonio.dumps({"stream": frame.stream, "op": "end", "deleted": existed})

        future = asyncio.ensure_future(after(last.get(frame.stream), end))
        future.chained = True  # type: ignore[attr-defined]
        last[frame.stream] = future

        def ended(f: asyncio.Future[bytes]) -> None:
            if last.get(frame.stream) is f:
                del last[frame.stream]
            if f.cancelled() or f.exception() is not None:
                answer = _error(_Internal(), frame.stream, None, op="end")
            else:
                answer = f.result()
            put(answer, charge)

        future.add_done_callback(ended)

    async def wait_until(ready: Any) -> None:
        while not ready():
            changed.clear()
            await changed.wait()

    async def writer() -> None:
        open_ = True
        while (item := await outbox.get()) is not None:
            frame, charge, binary = item
            if open_:
                sent: dict[str, Any] = {"type": "websocket.send"}
                if binary:
                    sent["bytes"] = frame
                else:
                    sent["text"] = frame.decode()
                try:  # waits while the client does not read (the transport's flow control)
                    await websocket.send(sent)
                except Exception:  # the client left: the rest is released unsent
                    open_ = False
            held[0] -= charge
            room.release()
            changed.set()

    byte_bound = config.max_ws_pending_bytes
    window = config.replay_window
    outputs = len(resources.function.targets)
    features = len(resources.function.inputs)
    max_items, max_steps = config.max_streams_per_request, config.max_steps_per_request
    answer_row_bytes = 24 * max(outputs, 1)  # JSON numbers
    await websocket.accept()
    sender = asyncio.create_task(writer(), name="seqstate-ws-writer")
    try:
        while True:
            await room.acquire()
            await wait_until(lambda: held[0] < byte_bound)
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                room.release()
                break
            raw: Any = message.get("text")
            binary = raw is None
            if binary:
                raw = message.get("bytes") or b""
            charge = len(raw)
            held[0] += charge
            if binary:
                try:
                    decoded = decode_steps(raw, features, max_items, max_steps)
                except ApiError as error:
                    put(_error(error, None, None), charge)
                    continue
                del raw, message
                n, k = decoded.x.shape[:2]
                estimate = n * (64 + 4 * k * outputs)
                held[0] += estimate
                frame = _frame_steps(decoded, resources)
                if frame is not None and queue_block(
                    frame, frame.streams, charge + estimate, estimate
                ):
                    continue
                items = _binary_items(decoded, resources)
                if all(type(item) is StepRequest for item in items) and queue_block(
                    items, [item.stream for item in items], charge + estimate, estimate
                ):
                    continue
                await queue_batch(items, charge + estimate, estimate, binary=True)
                continue
            try:
                data = jsonio.loads(raw)
                if isinstance(data, dict) and data.get("op") == "steps":
                    items = _json_items(data, resources, max_items)
                    del raw, message
                    estimate = sum(
                        64 + _rows(item) * answer_row_bytes
                        for item in items
                        if not isinstance(item, ApiError)
                    )
                    held[0] += estimate
                    await queue_batch(items, charge + estimate, estimate, binary=False)
                    continue
                frame = WS_FRAME.validate_python(data)
            except ApiError as error:  # a steps frame refused as a whole
                put(_error(error, None, None), charge)
                continue
            except ValueError as error:  # JSONDecodeError and ValidationError are ValueErrors
                put(_invalid_frame(raw, error), charge)
                continue
            del raw, message  # only the parsed frame is kept
            if isinstance(frame, WsEnd):
                queue_end(frame, charge)
            elif isinstance(frame, WsForecast):
                queue_forecast(frame, charge)
            else:
                # its answer is charged now, estimated (k rows of O numbers), so that the
                # bound holds for frames and their answers together
                rows = len(frame.x) if frame.x and isinstance(frame.x[0], list) else 1
                estimate = 64 + rows * answer_row_bytes
                held[0] += estimate
                # at most replay_window steps of one stream in flight: each of them can be
                # replayed after a dropped connection (the store keeps that many answers)
                stream = frame.stream
                await wait_until(lambda: in_flight.get(stream, 0) < window)  # noqa: B023
                queue_step(frame, charge + estimate, estimate)
    finally:
        pending = list(last.values())
        if pending:  # queued steps are applied anyway; let them finish, bounded
            await asyncio.wait(pending, timeout=_DRAIN_S)
        outbox.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sender, timeout=5)
        resources.websockets -= 1
        metrics.websockets.dec()


def _answer(result: Outcome | BaseException, stream: str | None, seq: int | None) -> bytes:
    """The JSON answer of one step: ``{"stream", "seq", "y", "replayed"}`` or its error."""
    if isinstance(result, BaseException | Reject):
        return _error(result, stream, seq)
    return b'{"stream":' + jsonio.dumps(stream) + b"," + answer_json(result)[1:]


def _where(item: StepRequest | ApiError) -> tuple[str | None, int | None]:
    if isinstance(item, ApiError):
        return item.extra.get("stream"), item.extra.get("seq")
    return item.stream, item.seq


def _rows(item: StepRequest) -> int:
    return int(item.x.shape[0])


def _json_items(data: dict[str, Any], resources: Resources, limit: int) -> list[Any]:
    """The items of a JSON steps frame: each a StepRequest, or the ApiError it failed with
    (naming the stream and seq it could read)."""
    steps = data.get("steps")
    if set(data) != {"op", "steps"} or not isinstance(steps, list) or not steps:
        raise ApiError(
            422,
            "invalid_request",
            'a steps frame is {"op": "steps", "steps": [{"stream", "seq", "x", ...}, ...]} '
            "with at least one item",
        )
    if len(steps) > limit:
        raise ApiError(
            413,
            "too_many_streams",
            f"a steps frame may hold at most {limit} items; received {len(steps)}",
            limit=limit,
        )
    items: list[Any] = []
    for raw in steps:
        stream = raw.get("stream") if isinstance(raw, dict) else None
        seq = raw.get("seq") if isinstance(raw, dict) else None
        try:
            frame = _WS_STEP.validate_python(raw)
            items.append(step_request(frame.stream, frame, resources))
        except (ApiError, ValueError) as error:
            problem = api_error(error)
            readable_stream = stream if isinstance(stream, str) and len(stream) <= 128 else None
            readable_seq = seq if type(seq) is int else None
            items.append(_located(problem, readable_stream, readable_seq))
    return items


def _usual(decoded: BinarySteps, resources: Resources, finite: bool) -> bool:
    """Whether every item of ``decoded`` passes :func:`array_request`'s checks, checked as a
    whole (``finite``: the frame's x is), for a frame without times."""
    return decoded.time is None and not resources.function.needs_time and _valid(decoded, finite)


def _valid(decoded: BinarySteps, finite: bool) -> bool:
    """:func:`_usual`'s checks but the time's."""
    return (
        finite
        and decoded.series.count(None) == len(decoded.series)
        and min(decoded.seq) >= 1
        and max(decoded.seq) <= MAX_SEQ
        and valid_stream_ids(decoded.stream)
    )


def _frame_times(values: list[Any]) -> np.ndarray | None:
    """A one-step frame's ``time`` as ``[n]`` int64 Unix seconds where every item sent one
    integer (``t`` or ``[t]``: what :func:`parse_step_times` reads for one step); None: any
    other form (dates as text, a wrong count, a bool), read item by item."""
    seconds = []
    for value in values:
        if type(value) is list:
            if len(value) != 1:
                return None
            value = value[0]
        if type(value) is not int:
            return None
        seconds.append(value)
    if seconds and (min(seconds) < FIRST_SECOND or max(seconds) > LAST_SECOND):
        return None  # out of range (or past int64): the per-item path answers its 422
    return np.array(seconds, dtype=np.int64)


def _frame_steps(decoded: BinarySteps, resources: Resources) -> FrameSteps | None:
    """The usual frame as arrays (one timestep per item, no start, every item valid, each
    with its time as Unix seconds or all without), or None: the frame goes as
    StepRequests."""
    if decoded.x.shape[1] != 1 or any(decoded.start):
        return None
    time = None
    if decoded.time is not None:
        time = _frame_times(decoded.time)
        if time is None:
            return None
    elif resources.function.needs_time:
        return None  # each item's 422 time_required, the per-item way
    if not _valid(decoded, bool(np.isfinite(decoded.x).all())):
        return None
    # (a copy: the frame's buffer is read-only, and torch takes the array as it is)
    x = np.array(decoded.x, dtype=np.float32)
    return FrameSteps(decoded.stream, np.array(decoded.seq, dtype=np.int64), x, time)


def _frame_answers(
    frame: FrameSteps, outcome: FrameOutcome, outputs: int, tally: list[int]
) -> bytes:
    """The answer frame of ``frame``: what :func:`_binary_answers` writes for its steps, from
    the answer array (the bulk steps') and the outcomes of the others; counts them in
    ``tally`` ([applied, replayed, rejected])."""
    n = len(frame.streams)
    y = outcome.y.astype(np.float32)  # (n, 1, O)
    status = [200] * n
    replayed = [False] * n
    errors: dict[str, Any] = {}
    rejected = replays = 0
    answered, texts = [], []
    for k in sorted(outcome.others):
        result = outcome.others[k]
        if isinstance(result, StepResult):
            replays += result.replayed
            replayed[k] = result.replayed
            answered.append(k)
            texts.append(result.output)
        else:
            status[k], errors[str(k)] = _item_problem(result)
            rejected += 1
    if answered:  # every answer parsed in one call, as encode_answers does
        parsed = jsonio.loads(b"[" + b",".join(texts) + b"]")
        try:  # [O] each (one step sent as [F]); null -> nan
            values = np.asarray(parsed, dtype=np.float64)
        except ValueError:  # not alike (a retry of a step first sent as [[x]]): each alone
            values = np.stack([np.asarray(v, dtype=np.float64).reshape(-1) for v in parsed])
        y[answered] = values.reshape(len(answered), 1, -1)
    tally[0] += n - rejected - replays
    tally[1] += replays
    tally[2] += rejected
    header = {
        "op": "steps",
        "stream": frame.streams,
        "seq": frame.seq.tolist(),
        "status": status,
        "replayed": replayed,
        "errors": errors,
    }
    return encode(header, y)


def _count(counters: Any, tally: list[int]) -> None:
    for counter, count in zip(counters, tally, strict=True):
        if count:
            counter.inc(count)


def _binary_items(decoded: BinarySteps, resources: Resources) -> list[Any]:
    finite = bool(np.isfinite(decoded.x).all())  # the whole frame at once; else per item
    if _usual(decoded, resources, finite):  # the checks of array_request, in bulk
        x, single = decoded.x, decoded.x.shape[1] == 1
        return [
            StepRequest(stream, seq, x[i], single=single, start=start)
            for i, (stream, seq, start) in enumerate(
                zip(decoded.stream, decoded.seq, decoded.start, strict=True)
            )
        ]
    items: list[Any] = []
    for i, stream in enumerate(decoded.stream):
        try:
            items.append(
                array_request(
                    stream,
                    decoded.seq[i],
                    decoded.x[i],
                    start=decoded.start[i],
                    series=decoded.series[i],
                    time=None if decoded.time is None else decoded.time[i],
                    resources=resources,
                    finite=finite,
                )
            )
        except ApiError as error:
            items.append(_located(error, stream[:128], decoded.seq[i]))
    return items


def _located(error: ApiError, stream: str | None, seq: int | None) -> ApiError:
    located = ApiError(error.status, error.code, error.message, **error.extra)
    located.extra.update(stream=stream, seq=seq)
    return located


def _binary_answers(
    items: list[Any], results: list[Outcome | BaseException | None], outputs: int
) -> bytes:
    if all(type(result) is StepResult for result in results) and all(
        type(item) is StepRequest for item in items
    ):  # the usual answer: every item applied or replayed, no error to place
        return encode_answers(
            [item.stream for item in items],
            [item.seq for item in items],
            [(200, result.output, result.replayed, None) for result in results],  # type: ignore[union-attr]
            max(item.x.shape[0] for item in items),
            outputs,
        )
    streams: list[Any] = []
    seqs: list[Any] = []
    rows: list[tuple[int, bytes | None, bool, dict[str, Any] | None]] = []
    for item, result in zip(items, results, strict=True):
        stream, seq = _where(item)
        streams.append(stream)
        seqs.append(seq)
        if result is None or isinstance(result, BaseException | Reject):
            code, body = _item_problem(result if result is not None else _Internal())
            rows.append((code, None, False, body))
        else:
            rows.append((200, result.output, result.replayed, None))
    steps = max((_rows(i) for i in items if not isinstance(i, ApiError)), default=1)
    return encode_answers(streams, seqs, rows, steps, outputs)


def _item_problem(error: BaseException | Reject) -> tuple[int, dict[str, Any]]:
    """The status and error body of one refused item of a binary answer frame (its stream
    and seq are the frame's columns, not repeated in the body)."""
    problem = api_error(error)
    body = {"code": problem.code, "message": problem.message, **problem.extra}
    body.pop("stream", None)
    body.pop("seq", None)
    return problem.status, body


_WS_STEP = TypeAdapter(WsStep)


class _Internal(Exception):
    """A task that failed unexpectedly: answered as 500 internal (errors.py)."""


def _error(
    error: BaseException | Reject, stream: str | None, seq: int | None, op: str | None = None
) -> bytes:
    return item_error(error, key="stream", stream=stream, seq=seq, op=op)


def _invalid_frame(raw: Any, error: ValueError) -> bytes:
    stream = seq = None
    with contextlib.suppress(Exception):
        data = jsonio.loads(raw)
        if isinstance(data, dict):
            stream = data.get("stream") if isinstance(data.get("stream"), str) else None
            seq = data.get("seq") if type(data.get("seq")) is int else None
    return _error(error, stream if stream and len(stream) <= 128 else None, seq)
