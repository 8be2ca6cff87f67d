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
lifespan and live on ``app.state.resources``; nothing is module-global. The endpoints are
module-level functions in ``routes.py``; errors are answered through ``errors.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import torch
from fastapi import FastAPI

from seqstate.serve.batcher import Batcher
from seqstate.serve.config import ServeConfig
from seqstate.serve.edge import Edge
from seqstate.serve.engine import Engine
from seqstate.serve.livecount import RECOUNT_S, LiveCount
from seqstate.serve.metrics import Metrics
from seqstate.serve.preprocess import model_step
from seqstate.serve.routes import add_error_handlers, add_routes
from seqstate.serve.steps import Resources
from seqstate.serve.stores import StateStore, StoreError, open_store

if TYPE_CHECKING:  # pragma: no cover
    from seqstate.recipe.step import RunStep

__all__ = ["create_app"]


def create_app(
    config: ServeConfig,
    *,
    model: torch.nn.Module | None = None,
    store: StateStore | None = None,
    clock: Callable[[], float] = time.time,
    freeze_startup: bool = False,
) -> FastAPI:
    """The server app for ``config``.

    ``model`` and ``store`` override the run directory's model and ``config.store`` (tests,
    embedding); ``clock`` is the wall clock used for TTLs. ``freeze_startup`` (the server
    process, ``seqstate serve``) moves every object alive once the server is open (torch,
    the model, the imports) out of the garbage collector's scans: a full collection then
    looks at the records and requests only (it cost ~30% of a 1000-stream batch).
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
        if freeze_startup:
            gc.collect()
            gc.freeze()
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
    add_error_handlers(app)
    add_routes(app, config)
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
        # a slow store commits on its own thread (group commit); a fast one within process
        stages=(engine.prepare, engine.finish_many) if store.slow_commit else None,
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
