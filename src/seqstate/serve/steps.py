"""What the HTTP routes and the WebSocket share: the app's resources and one step's path
(validate ``x`` against the model, submit to the batcher, render the answer)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from seqstate.recipe.step import RunStep
from seqstate.serve import jsonio
from seqstate.serve.batcher import Batcher
from seqstate.serve.config import STREAM_ID_PATTERN, ServeConfig, valid_stream_id
from seqstate.serve.engine import Engine, Outcome, Sampling, StepRequest
from seqstate.serve.errors import ApiError
from seqstate.serve.livecount import LiveCount
from seqstate.serve.metrics import Metrics
from seqstate.serve.preprocess import parse_step_times
from seqstate.serve.rules import Reject
from seqstate.serve.schemas import DEFAULT_QUANTILES, MAX_SEQ, ForecastBody, StepBody
from seqstate.serve.stores import StateStore, StoreError

__all__ = [
    "Resources",
    "answer_json",
    "array_request",
    "forecast_json",
    "step_request",
    "submit",
]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass
class Resources:
    """What one running app holds; opened and closed by the lifespan."""

    config: ServeConfig
    function: RunStep  # the run's step function: raw inputs in, raw answers out
    store: StateStore
    batcher: Batcher
    metrics: Metrics
    clock: Callable[[], float]
    engine: Engine
    sweeper: asyncio.Task[None] | None = None
    live: LiveCount = dataclasses.field(default_factory=LiveCount)  # live streams, kept
    recounter: asyncio.Task[None] | None = None
    websockets: int = 0  # open WebSocket connections


def step_request(stream: str, body: StepBody, resources: Resources) -> StepRequest:
    """Validate ``x`` against the run (shape, raw column count, finiteness) and parse ``time``
    -> StepRequest."""
    features = len(resources.function.inputs)
    limit = resources.config.max_steps_per_request
    x = body.x
    single = not x or not isinstance(x[0], list)
    rows: list[list[float]] = [x] if single else x  # type: ignore[list-item,assignment]
    if len(rows) > limit:
        raise ApiError(
            413,
            "too_many_steps",
            f"x may hold at most {limit} steps per request; received {len(rows)}: split it",
            limit=limit,
        )
    if not rows:
        raise ApiError(422, "invalid_x", f"x must hold at least one step of {features} features")
    for t, row in enumerate(rows):
        if len(row) != features:
            where = "x" if single else f"x[{t}]"
            raise ApiError(
                422,
                "invalid_x",
                f"{where} must hold {features} values, the run's raw inputs "
                f"{list(resources.function.inputs)} in that order; received "
                f"{len(row)}. Send one step as [f1, ..., f{features}] or k steps as "
                f"[[f1, ..., f{features}], ...]",
            )
    # a plain comparison is False for NaN, inf and float32 overflow; for a few features it is
    # several times cheaper than building arrays first (this runs once per step)
    low, high = -_FLOAT32_MAX, _FLOAT32_MAX
    if not all(low <= value <= high for row in rows for value in row):
        t, f = next(
            (t, f) for t, row in enumerate(rows) for f, v in enumerate(row) if not low <= v <= high
        )
        raise ApiError(
            422,
            "invalid_x",
            f"x must be finite float32 values; received {rows[t][f]!r} at step {t}, feature {f}",
        )
    array = np.array(rows, dtype=np.float32)  # (k, F)
    return _with_time(
        stream, body.seq, array, single, body.start, body.series, body.time, resources
    )


def array_request(
    stream: str,
    seq: int,
    x: np.ndarray,
    *,
    start: bool,
    series: str | None,
    time: Any,
    resources: Resources,
    finite: bool = False,
) -> StepRequest:
    """A step of a binary frame: ``x [k, F]`` float32 (count and size checked by the frame's
    decoder) -> StepRequest, with the checks of :func:`step_request`. ``k == 1`` is the
    single step ``x: [F]`` of a JSON frame (the same digest: a retry may switch encodings).
    ``finite``: the caller checked the whole frame's x at once (the usual case)."""
    if not 1 <= seq <= MAX_SEQ:
        raise ApiError(422, "invalid_request", f"seq must be in 1..{MAX_SEQ}; received {seq}")
    if not valid_stream_id(stream):
        raise ApiError(
            422, "invalid_stream_id", f"stream id must match {STREAM_ID_PATTERN}; received "
            f"{stream[:140]!r}"
        )  # fmt: skip
    if series is not None and len(series) > 256:
        raise ApiError(422, "invalid_request", "series must be at most 256 characters")
    if not finite and not np.isfinite(x).all():
        t, f = np.argwhere(~np.isfinite(x))[0]
        raise ApiError(
            422,
            "invalid_x",
            f"x must be finite float32 values; received {x[t, f]!r} at step {t}, feature {f}",
        )
    return _with_time(stream, seq, x, x.shape[0] == 1, start, series, time, resources)


def _with_time(
    stream: str,
    seq: int,
    array: np.ndarray,
    single: bool,
    start: bool,
    series: str | None,
    time: Any,
    resources: Resources,
) -> StepRequest:
    times = None if time is None else parse_step_times(time, array.shape[0])
    if times is None and resources.function.needs_time:
        raise ApiError(
            422,
            "time_required",
            'this run reads calendar features computed from each step\'s time: send "time" '
            "(Unix seconds or a date like 2024-01-31T12:00:00; a list for k steps)",
        )
    return StepRequest(stream, seq, array, single=single, start=start, series=series, time=times)


async def submit(resources: Resources, step: StepRequest) -> Outcome:
    try:
        outcome = await resources.batcher.submit(step)
    except StoreError:
        resources.metrics.store_errors.labels("step").inc()
        raise
    # applied, replayed, rejected
    resources.metrics.step_outcomes[2 if isinstance(outcome, Reject) else outcome.replayed].inc()
    return outcome


async def forecast_json(resources: Resources, stream: str, body: ForecastBody) -> bytes:
    """``{"seq", "time", "y"}`` and, where the run has them, ``"quantiles"`` (level ->
    ``[H][O]``) with ``"quantiles_from"``: ``"calibrated"`` (the run's interval table, what
    ``seqstate forecast`` writes) or ``"samples"`` (sampled paths); read only, off the event
    loop.

    It first waits for the stream's steps this server has already received (queued, in a
    batch or being committed): a forecast asked after a step reads the state that step leaves,
    whether or not its answer has reached the client yet."""
    sampling, levels = None, None
    if body.samples is not None:
        sampling = Sampling(body.samples, tuple(body.quantiles or DEFAULT_QUANTILES), body.seed)
    elif body.seed is not None:
        raise ApiError(
            422,
            "samples_required",
            'seed is the seed of sampled paths: send "samples" too (e.g. "samples": 200, '
            '"seed": 1), or leave it out for the calibrated quantiles',
        )
    else:
        levels = None if body.quantiles is None else tuple(body.quantiles)
    await resources.batcher.settled(stream)
    try:
        seq, times, y, quantiles = await asyncio.to_thread(
            resources.engine.forecast, stream, body.horizon, body.covariates, sampling, levels
        )
    except StoreError:
        resources.metrics.store_errors.labels("forecast").inc()
        raise
    answer: dict[str, Any] = {"seq": seq, "time": times, "y": y}
    if quantiles is not None:
        answer["quantiles"] = {f"{level:g}": rows for level, rows in quantiles.items()}
        answer["quantiles_from"] = "samples" if sampling is not None else "calibrated"
    return jsonio.dumps(answer)


def answer_json(outcome: Outcome) -> bytes:
    """``{"seq":…, "y":…, "replayed":…}`` with the stored JSON of y spliced in as is."""
    if isinstance(outcome, Reject):
        raise RuntimeError("internal error: a rejected step reached the success path")
    replayed = b"true" if outcome.replayed else b"false"
    return b'{"seq":%d,"y":%s,"replayed":%s}' % (outcome.seq, outcome.output, replayed)
