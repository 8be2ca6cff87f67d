"""The HTTP and WebSocket routes: module-level endpoints over the app's resources.

Each endpoint reaches what it needs through ``request.app.state.resources`` (opened by the
app's lifespan, see ``app.py``); none closes over the configuration. Every failure goes
through ``errors.py``, the one mapping from an error to its answer. :func:`add_routes`
registers them (with the OpenAPI details that depend on the configuration, such as the
batch limit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from seqstate.serve import jsonio
from seqstate.serve.config import STREAM_ID_PATTERN, ServeConfig, valid_stream_id
from seqstate.serve.errors import ApiError, api_error, http_response, item_error
from seqstate.serve.rules import Reject, is_expired
from seqstate.serve.schemas import (
    BatchStep,
    ErrorBody,
    ForecastAnswer,
    ForecastBody,
    StepAnswer,
    StepBody,
    StreamInfo,
)
from seqstate.serve.steps import Resources, answer_json, forecast_json, step_request, submit
from seqstate.serve.stores import StoreError
from seqstate.serve.websocket import serve_websocket

__all__ = ["add_error_handlers", "add_routes"]

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "malformed JSON",
        401: "missing or wrong bearer token",
        404: "unknown stream",
        409: "sequence conflict (gap, stale, different retry body, race)",
        413: "body, steps or streams over the limit",
        422: "invalid body (wrong shape, feature count, NaN/inf, bad id)",
        429: "too many requests in flight on this server (server_busy); retry later",
        503: "state store unavailable, or live-stream capacity reached (stream_capacity)",
        507: "state store full (store_full): nothing was written",
    }.items()
}
_BATCH_STEP = TypeAdapter(BatchStep)


def _resources(request: Request | WebSocket) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


_CONTENT_TYPE = (b"content-type", b"application/json")


class _Json(Response):
    """An answer already encoded as JSON. Its head is written directly: the headers
    ``Response`` would build (content-length, content-type), without its per-answer pass
    over optional headers, charset and status rules."""

    media_type = "application/json"

    def __init__(self, content: bytes, status_code: int = 200) -> None:
        self.status_code = status_code
        self.background = None
        self.body = content
        self.raw_headers = [(b"content-length", b"%d" % len(content)), _CONTENT_TYPE]


def _json(content: bytes, status: int = 200) -> Response:
    return _Json(content, status)


def _check_stream_id(stream: str) -> None:
    if not valid_stream_id(stream):
        raise ApiError(
            422,
            "invalid_stream_id",
            f"stream id must match {STREAM_ID_PATTERN} (1-128 letters, digits, '.', '_', ':', "
            f"'-'); received {stream[:140]!r}",
        )


def _not_found(stream: str) -> ApiError:
    return ApiError(
        404,
        "stream_not_found",
        f"stream {stream!r} does not exist (never started, ended, or expired after the TTL)",
    )


# --- error handlers: every one renders through errors.http_response ----------------------


async def _on_error(request: Request, error: Exception) -> Response:
    if isinstance(error, StoreError):
        _resources(request).metrics.store_errors.labels("request").inc()
    return http_response(error)


def add_error_handlers(app: FastAPI) -> None:
    for kind in (ApiError, RequestValidationError, StarletteHTTPException, StoreError):
        app.add_exception_handler(kind, _on_error)


# --- steps ----------------------------------------------------------------------------------


async def post_step(stream_id: str, request: Request) -> Response:
    """Apply the next step(s) of one stream."""
    # the body is parsed and validated by pydantic-core straight from bytes: the hot path
    # skips FastAPI's json.loads + body-parameter machinery (same rules, same errors)
    resources = _resources(request)
    _check_stream_id(stream_id)
    try:
        body = StepBody.model_validate_json(await request.body())
    except ValidationError as error:
        raise api_error(error) from None
    outcome = await submit(resources, step_request(stream_id, body, resources))
    if isinstance(outcome, Reject):
        raise api_error(outcome)
    return _json(answer_json(outcome))


class _StepRoute(APIRoute):
    """The single-step route: the stream id from the path and the request go to
    :func:`post_step` as they are. ``post_step`` parses and checks the rest itself, so
    FastAPI's per-request machinery (a dependency pass, two exit stacks, a second exception
    wrapper) would only repeat work: an error it raises goes up to the app's exception
    middleware, which answers it through the same handlers. The OpenAPI document is still
    built from the route's signature, ``response_model`` and ``openapi_extra``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = _serve_step

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        async def handle(request: Request) -> Response:
            return await post_step(request.path_params["stream_id"], request)

        return handle


async def _serve_step(scope: Any, receive: Any, send: Any) -> None:
    response = await post_step(scope["path_params"]["stream_id"], Request(scope, receive, send))
    await response(scope, receive, send)


async def post_steps(request: Request) -> Response:
    """Apply steps of many streams in one request; each item succeeds or fails alone."""
    resources = _resources(request)
    items = parse_batch(await request.body(), resources.config.max_streams_per_request)
    results: list[bytes] = [b""] * len(items)
    by_stream: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        if isinstance(item, ApiError):
            results[i] = item_error(item, key="id", stream=None, seq=None)
        else:
            by_stream.setdefault(item.id, []).append(i)

    async def run_stream(indices: list[int]) -> None:
        # steps of one stream, in request order; different streams run concurrently
        for i in indices:
            results[i] = await _batch_item(resources, items[i])  # type: ignore[arg-type]

    await asyncio.gather(*(run_stream(indices) for indices in by_stream.values()))
    return _json(b'{"results":[' + b",".join(results) + b"]}")


def parse_batch(raw: bytes, limit: int) -> list[BatchStep | ApiError]:
    """The items of a ``POST /v1/steps`` body; an item that fails validation is its ApiError
    (naming the id and seq it could read), the others are still served."""
    try:
        data = jsonio.loads(raw)
    except (ValueError, RecursionError) as error:
        raise api_error(error) from None
    if not isinstance(data, dict) or set(data) != {"steps"} or not isinstance(data["steps"], list):
        raise ApiError(
            422,
            "invalid_request",
            'body must be {"steps": [{"id": ..., "seq": ..., "x": ..., "start": ...}, ...]}; '
            f"received a {type(data).__name__}"
            + (f" with keys {sorted(data)[:10]}" if isinstance(data, dict) else ""),
        )
    steps = data["steps"]
    if not steps:
        raise ApiError(422, "invalid_request", "steps must hold at least one item")
    if len(steps) > limit:
        raise ApiError(
            413,
            "too_many_streams",
            f"steps may hold at most {limit} items per request; received {len(steps)}",
            limit=limit,
        )
    items: list[BatchStep | ApiError] = []
    for item in steps:
        try:
            items.append(_BATCH_STEP.validate_python(item))
        except ValidationError as error:
            stream = item.get("id") if isinstance(item, dict) else None
            seq = item.get("seq") if isinstance(item, dict) else None
            problem = api_error(error)
            problem.extra = {
                "id": stream if isinstance(stream, str) else None,
                "seq": seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
            }
            items.append(problem)
    return items


async def _batch_item(resources: Resources, item: BatchStep) -> bytes:
    try:
        outcome = await submit(resources, step_request(item.id, item, resources))
    except (ApiError, StoreError) as error:
        return item_error(error, key="id", stream=item.id, seq=item.seq)
    if isinstance(outcome, Reject):
        return item_error(outcome, key="id", stream=item.id, seq=item.seq)
    head = jsonio.dumps({"id": item.id, "status": 200})[:-1]
    return head + b"," + answer_json(outcome)[1:]


# --- forecasts, streams, the run ------------------------------------------------------------


async def post_forecast(stream_id: str, request: Request) -> Response:
    """The stream's forecast from its current state (the state is not changed); it waits for
    the stream's steps already received, so it reads the state they leave."""
    _check_stream_id(stream_id)
    # the body is read as JSON whatever its Content-Type, as the step routes read theirs
    # (``curl -d`` sends a form type: FastAPI's body parameter refused it, 422)
    try:
        body = ForecastBody.model_validate_json(await request.body())
    except ValidationError as error:
        raise api_error(error) from None
    return _json(await forecast_json(_resources(request), stream_id, body))


async def get_model(request: Request) -> Response:
    """The run served: its raw inputs in order, what a step carries."""
    return _json(jsonio.dumps(_resources(request).function.describe()))


async def get_stream(stream_id: str, request: Request) -> Response:
    """Where a stream stands."""
    resources = _resources(request)
    _check_stream_id(stream_id)
    (record,) = await asyncio.to_thread(resources.store.get_many, [stream_id])
    ttl = resources.config.ttl_s
    if record is not None and not record.intact(stream_id):
        raise ApiError(
            409,
            "state_incompatible",
            f"the stored record of stream {stream_id!r} is damaged (checksum mismatch); "
            "end it (DELETE) or restart it with start=true",
        )
    if record is None or is_expired(record, resources.clock(), ttl):
        raise _not_found(stream_id)
    info = {
        "id": stream_id,
        "seq": record.seq,
        "updated": record.updated,
        "expires": record.updated + ttl if ttl > 0 else None,
    }
    return _json(jsonio.dumps(info))


async def delete_stream(stream_id: str, request: Request) -> Response:
    """End a stream: its state is deleted."""
    resources = _resources(request)
    _check_stream_id(stream_id)
    (record,) = await asyncio.to_thread(resources.store.get_many, [stream_id])
    existed = await asyncio.to_thread(resources.store.delete, stream_id)
    resources.live.add(-int(existed))
    ttl = resources.config.ttl_s
    if not existed or record is None:
        raise _not_found(stream_id)
    if record.intact(stream_id) and is_expired(record, resources.clock(), ttl):
        raise _not_found(stream_id)
    return _json(jsonio.dumps({"id": stream_id, "deleted": True}))


async def websocket_steps(websocket: WebSocket) -> None:
    """Steps of many streams over one connection (see ``seqstate.serve.websocket``)."""
    await serve_websocket(websocket, _resources(websocket))


# --- operations -----------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    """Liveness and store reachability (no auth)."""
    resources = _resources(request)
    store = resources.store.url.split(":", 1)[0]
    try:
        await asyncio.to_thread(resources.store.ping)
    except StoreError as error:
        resources.metrics.store_errors.labels("ping").inc()
        return http_response(error)
    try:
        await asyncio.to_thread(resources.store.check_writable)
    except StoreError as error:
        resources.metrics.store_errors.labels("write_probe").inc()
        problem = resources.store.write_problem or str(error)
        cannot = ApiError(
            503,
            "store_cannot_write",
            f"the state store cannot take writes: {problem}",
            store=store,
        )
        return http_response(cannot)
    body = {
        "status": "ok",
        "store": store,
        "input_size": len(resources.function.inputs),
        "output_size": len(resources.function.targets),
        "batching": resources.config.batching,
    }
    return _json(jsonio.dumps(body))


async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    resources = _resources(request)
    resources.metrics.live_streams.set(resources.live.value)  # kept, never a scan
    text = await asyncio.to_thread(resources.metrics.render)
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


def _body_schema(schema: dict[str, Any]) -> dict[str, Any]:
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


def add_routes(app: FastAPI, config: ServeConfig) -> None:
    """Register every endpoint on ``app`` (the OpenAPI schema shows ``config``'s limits)."""
    batch_schema = {
        "type": "object",
        "required": ["steps"],
        "additionalProperties": False,
        "properties": {
            "steps": {
                "type": "array",
                "minItems": 1,
                "maxItems": config.max_streams_per_request,
                "items": BatchStep.model_json_schema(),
            }
        },
    }
    route = app.add_api_route
    app.router.add_api_route(
        "/v1/streams/{stream_id}/steps",
        post_step,
        methods=["POST"],
        response_model=StepAnswer,
        responses=ERRORS,
        summary="Apply the next step(s) of one stream",
        openapi_extra=_body_schema(StepBody.model_json_schema()),
        route_class_override=_StepRoute,
    )
    route(
        "/v1/steps",
        post_steps,
        methods=["POST"],
        responses=ERRORS,
        summary="Apply steps of many streams in one request; each item succeeds or fails alone",
        openapi_extra=_body_schema(batch_schema),
    )
    route(
        "/v1/streams/{stream_id}/forecast",
        post_forecast,
        methods=["POST"],
        response_model=ForecastAnswer,
        responses=ERRORS,
        summary="The stream's forecast from its current state (the state is not changed)",
        openapi_extra=_body_schema(ForecastBody.model_json_schema()),
    )
    route(
        "/v1/model",
        get_model,
        methods=["GET"],
        summary="The run served: its raw inputs in order, what a step carries",
    )
    route(
        "/v1/streams/{stream_id}",
        get_stream,
        methods=["GET"],
        response_model=StreamInfo,
        responses=ERRORS,
        summary="Where a stream stands",
    )
    route(
        "/v1/streams/{stream_id}",
        delete_stream,
        methods=["DELETE"],
        responses=ERRORS,
        summary="End a stream: its state is deleted",
    )
    app.add_api_websocket_route("/v1/ws", websocket_steps)
    route(
        "/healthz",
        healthz,
        methods=["GET"],
        summary="Liveness and store reachability (no auth)",
    )
    route(
        "/metrics",
        metrics,
        methods=["GET"],
        summary="Prometheus metrics",
        response_class=Response,
    )
