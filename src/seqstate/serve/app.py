"""The HTTP API: FastAPI app over the batcher, the engine and a state store.

    POST   /v1/streams/{id}/steps   {seq, x, start?}                -> {seq, y, replayed}
    POST   /v1/steps                {steps: [{id, seq, x, start?}]} -> {results: [...]} per item
    POST   /v1/streams/{id}/forecast {horizon, covariates?}         -> {seq, time, y}
    GET    /v1/model                -> the run's raw inputs in order, targets, what steps carry
    GET    /v1/streams/{id}         -> {id, seq, updated, expires}
    DELETE /v1/streams/{id}         -> {id, deleted}
    GET    /healthz                 -> {status, ...}        (no auth)
    GET    /metrics                 Prometheus text
    GET    /openapi.json            the schema               (no auth)

``x`` is one step of the run's F raw inputs ``[F]`` (answer ``y`` is ``[O]`` in raw units) or
k steps ``[[F], ...]`` (answer ``[[O], ...]``); ``time`` and ``series`` as the run needs them.
Resources (run step function, store, engine, batcher, sweeper) are opened by the app's
lifespan and live on ``app.state.resources``; nothing is module-global.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import torch
from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from seqstate.serve import jsonio
from seqstate.serve.batcher import Batcher
from seqstate.serve.config import STREAM_ID_PATTERN, ServeConfig, valid_stream_id
from seqstate.serve.edge import Edge
from seqstate.serve.engine import Engine
from seqstate.serve.errors import ApiError, error_response
from seqstate.serve.livecount import RECOUNT_S, LiveCount
from seqstate.serve.metrics import Metrics
from seqstate.serve.preprocess import model_step
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
from seqstate.serve.steps import (
    Resources,
    answer_json,
    describe,
    forecast_json,
    step_request,
    submit,
)
from seqstate.serve.stores import StateStore, StoreError, open_store
from seqstate.serve.stores.base import StoreFullError
from seqstate.serve.websocket import serve_websocket

if TYPE_CHECKING:  # pragma: no cover
    from seqstate.recipe.step import RunStep

__all__ = ["create_app"]


_ERRORS: dict[int | str, dict[str, Any]] = {
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


def create_app(
    config: ServeConfig,
    *,
    model: torch.nn.Module | None = None,
    store: StateStore | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The server app for ``config``.

    ``model`` and ``store`` override the run directory's model and ``config.store`` (tests,
    embedding); ``clock`` is the wall clock used for TTLs.
    """
    if not isinstance(config, ServeConfig):
        raise TypeError(f"config must be a ServeConfig; received {type(config).__name__}")
    if model is None:
        from seqstate.serve.rundir import check_run_dir, load_run_step

        check_run_dir(config.run_dir, config.max_model_parameters)  # before allocating
        function = load_run_step(config.run_dir)  # the run as one step function, raw units
    else:
        function = model_step(model)  # a model handed in: no preprocessing (tests, embedding)
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resources = await _open(config, function, store, clock, metrics)
        app.state.resources = resources
        try:
            yield
        finally:
            await _close(resources)

    app = FastAPI(
        title="seqstate server",
        summary="Stateful recurrent sequence models, one durable state per stream.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.metrics = metrics
    _add_error_handlers(app, metrics)
    _add_routes(app, config)
    app.add_middleware(
        Edge,
        token=config.token if config.auth else None,
        max_body_bytes=config.max_body_bytes,
        max_inflight_bytes=config.max_inflight_bytes,
        body_timeout_s=config.body_timeout_s,
        metrics=metrics,
    )
    return app


# --- lifecycle ----------------------------------------------------------------------------


async def _open(
    config: ServeConfig,
    function: RunStep,
    store: StateStore | None,
    clock: Callable[[], float],
    metrics: Metrics,
) -> Resources:
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    if store is None:
        store = open_store(config.store_url, ttl_s=config.ttl_s)
    live = LiveCount()
    with contextlib.suppress(StoreError):  # unreachable now: the recounter catches up
        live.recounted(await asyncio.to_thread(store.count), 0)  # once, before serving
    engine = Engine(
        function,
        store,
        ttl_s=config.ttl_s,
        device=config.device,
        clock=clock,
        max_live_streams=config.max_live_streams,
        live=live,
        replay_window=config.replay_window,
    )
    batcher = Batcher(
        engine.process,
        max_batch=config.max_batch,
        max_wait_s=config.max_wait_ms / 1000,
        batching=config.batching,
        on_batch=metrics.observe_batch,
        stages=(engine.prepare, engine.finish),
    )
    await batcher.start()
    resources = Resources(
        config, engine.function, store, batcher, metrics, clock, engine=engine, live=live
    )
    if config.ttl_s > 0:
        resources.sweeper = asyncio.create_task(_sweep(resources), name="seqstate-sweeper")
    resources.recounter = asyncio.create_task(_recount(resources), name="seqstate-recounter")
    return resources


async def _close(resources: Resources) -> None:
    for task in (resources.sweeper, resources.recounter):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    await resources.batcher.stop()
    resources.store.close()


async def _sweep(resources: Resources) -> None:
    config = resources.config
    while True:
        await asyncio.sleep(config.sweep_every_s)
        try:
            removed = await asyncio.to_thread(
                resources.store.expire, resources.clock(), config.ttl_s
            )
        except StoreError:
            resources.metrics.store_errors.labels("expire").inc()
        else:
            resources.metrics.expired.inc(removed)
            resources.live.add(-removed)


async def _recount(resources: Resources) -> None:
    """Correct the kept live-stream count by a full count, off the step path (see
    ``livecount.py``): Redis' own key expiry and other replicas' creates show up here."""
    while True:
        await asyncio.sleep(RECOUNT_S)
        started = resources.live.begin_recount()
        try:
            counted = await asyncio.to_thread(resources.store.count)
        except StoreError:
            resources.metrics.store_errors.labels("count").inc()
        else:
            resources.live.recounted(counted, started)


# --- errors -------------------------------------------------------------------------------

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


def _add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        return error_response(error.status, error.code, error.message, **error.extra)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> Response:
        problems = error.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return error_response(400, "invalid_json", "request body is not valid JSON")
        return error_response(422, "invalid_request", describe(problems))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(error.status_code, "http_error")
        return error_response(
            error.status_code, code, str(error.detail), headers=dict(error.headers or {})
        )

    @app.exception_handler(StoreError)
    async def store_error(request: Request, error: StoreError) -> Response:
        metrics.store_errors.labels("request").inc()
        return _store_unavailable(error)


def _store_unavailable(error: StoreError) -> Response:
    if isinstance(error, StoreFullError):
        return error_response(507, "store_full", str(error))
    return error_response(503, "store_unavailable", f"state store unavailable: {error}")


# --- input --------------------------------------------------------------------------------


def _check_stream_id(stream: str) -> None:
    if not valid_stream_id(stream):
        raise ApiError(
            422,
            "invalid_stream_id",
            f"stream id must match {STREAM_ID_PATTERN} (1-128 letters, digits, '.', '_', ':', "
            f"'-'); received {stream[:140]!r}",
        )


def _json(content: bytes, status: int = 200) -> Response:
    return Response(content, status_code=status, media_type="application/json")


# --- routes -------------------------------------------------------------------------------


def _add_routes(app: FastAPI, config: ServeConfig) -> None:
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

    @app.post(
        "/v1/streams/{stream_id}/steps",
        response_model=StepAnswer,
        responses=_ERRORS,
        summary="Apply the next step(s) of one stream",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": StepBody.model_json_schema()}},
            }
        },
    )
    async def post_step(stream_id: str, request: Request) -> Response:
        # the body is parsed and validated by pydantic-core straight from bytes: the hot path
        # skips FastAPI's json.loads + body-parameter machinery (same rules, same errors)
        resources: Resources = request.app.state.resources
        _check_stream_id(stream_id)
        body = _parse_step(await request.body())
        outcome = await submit(resources, step_request(stream_id, body, resources))
        if isinstance(outcome, Reject):
            raise ApiError(
                outcome.status, outcome.code, outcome.message, expected_seq=outcome.expected_seq
            )
        return _json(answer_json(outcome))

    @app.post(
        "/v1/steps",
        responses=_ERRORS,
        summary="Apply steps of many streams in one request; each item succeeds or fails alone",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": batch_schema}},
            }
        },
    )
    async def post_steps(request: Request) -> Response:
        resources: Resources = request.app.state.resources
        items = _parse_batch(await request.body(), config.max_streams_per_request)
        results: list[bytes] = [b""] * len(items)
        by_stream: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            if isinstance(item, ApiError):
                results[i] = _item_error(None, None, item)
            else:
                by_stream.setdefault(item.id, []).append(i)

        async def run_stream(indices: list[int]) -> None:
            # steps of one stream, in request order; different streams run concurrently
            for i in indices:
                results[i] = await _batch_item(resources, items[i])  # type: ignore[arg-type]

        await asyncio.gather(*(run_stream(indices) for indices in by_stream.values()))
        return _json(b'{"results":[' + b",".join(results) + b"]}")

    @app.post(
        "/v1/streams/{stream_id}/forecast",
        response_model=ForecastAnswer,
        responses=_ERRORS,
        summary="The stream's forecast from its current state (the state is not changed)",
    )
    async def post_forecast(stream_id: str, body: ForecastBody, request: Request) -> Response:
        resources: Resources = request.app.state.resources
        _check_stream_id(stream_id)
        return _json(await forecast_json(resources, stream_id, body))

    @app.get("/v1/model", summary="The run served: its raw inputs in order, what a step carries")
    async def get_model(request: Request) -> Response:
        resources: Resources = request.app.state.resources
        return _json(jsonio.dumps(resources.function.describe()))

    @app.get(
        "/v1/streams/{stream_id}",
        response_model=StreamInfo,
        responses=_ERRORS,
        summary="Where a stream stands",
    )
    async def get_stream(stream_id: str, request: Request) -> Response:
        resources: Resources = request.app.state.resources
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

    @app.delete(
        "/v1/streams/{stream_id}",
        responses=_ERRORS,
        summary="End a stream: its state is deleted",
    )
    async def delete_stream(stream_id: str, request: Request) -> Response:
        resources: Resources = request.app.state.resources
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

    @app.websocket("/v1/ws")
    async def websocket_steps(websocket: WebSocket) -> None:
        """Steps of many streams over one connection (see ``seqstate.serve.websocket``)."""
        await serve_websocket(websocket, websocket.app.state.resources)

    @app.get("/healthz", summary="Liveness and store reachability (no auth)")
    async def healthz(request: Request) -> Response:
        resources: Resources = request.app.state.resources
        try:
            await asyncio.to_thread(resources.store.ping)
        except StoreError as error:
            resources.metrics.store_errors.labels("ping").inc()
            return _store_unavailable(error)
        try:
            await asyncio.to_thread(resources.store.check_writable)
        except StoreError as error:
            resources.metrics.store_errors.labels("write_probe").inc()
            problem = resources.store.write_problem or str(error)
            return error_response(
                503,
                "store_cannot_write",
                f"the state store cannot take writes: {problem}",
                store=resources.store.url.split(":", 1)[0],
            )
        body = {
            "status": "ok",
            "store": resources.store.url.split(":", 1)[0],
            "input_size": len(resources.function.inputs),
            "output_size": len(resources.function.targets),
            "batching": resources.config.batching,
        }
        return _json(jsonio.dumps(body))

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        resources: Resources = request.app.state.resources
        resources.metrics.live_streams.set(resources.live.value)  # kept, never a scan
        text = await asyncio.to_thread(resources.metrics.render)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


def _not_found(stream: str) -> ApiError:
    return ApiError(
        404,
        "stream_not_found",
        f"stream {stream!r} does not exist (never started, ended, or expired after the TTL)",
    )


def _parse_step(raw: bytes) -> StepBody:
    try:
        return StepBody.model_validate_json(raw)
    except ValidationError as error:
        problems = error.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            raise ApiError(400, "invalid_json", "request body is not valid JSON") from None
        raise ApiError(422, "invalid_request", describe(problems)) from None


def _parse_batch(raw: bytes, limit: int) -> list[BatchStep | ApiError]:
    try:
        data = jsonio.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "request body is not valid JSON") from None
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
            problem = ApiError(422, "invalid_request", describe(error.errors()))
            problem.extra = {
                "id": stream if isinstance(stream, str) else None,
                "seq": seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
            }
            items.append(problem)
    return items


async def _batch_item(resources: Resources, item: BatchStep) -> bytes:
    try:
        outcome = await submit(resources, step_request(item.id, item, resources))
    except ApiError as error:
        return _item_error(item.id, item.seq, error)
    except StoreFullError as error:
        return _item_error(item.id, item.seq, ApiError(507, "store_full", str(error)))
    except StoreError as error:
        return _item_error(item.id, item.seq, ApiError(503, "store_unavailable", str(error)))
    if isinstance(outcome, Reject):
        refusal = ApiError(
            outcome.status, outcome.code, outcome.message, expected_seq=outcome.expected_seq
        )
        return _item_error(item.id, item.seq, refusal)
    head = jsonio.dumps({"id": item.id, "status": 200})[:-1]
    return head + b"," + answer_json(outcome)[1:]


def _item_error(stream: str | None, seq: int | None, error: ApiError) -> bytes:
    extra = dict(error.extra)
    stream = extra.pop("id", stream)
    seq = extra.pop("seq", seq)
    body = {"code": error.code, "message": error.message, **extra}
    return jsonio.dumps({"id": stream, "seq": seq, "status": error.status, "error": body})
