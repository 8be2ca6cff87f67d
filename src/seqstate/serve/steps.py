"""What the HTTP routes and the WebSocket share: the app's resources and one step's path
(validate ``x`` against the model, submit to the batcher, render the answer)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from seqstate.serve.batcher import Batcher
from seqstate.serve.config import ServeConfig
from seqstate.serve.engine import Outcome, StepRequest
from seqstate.serve.errors import ApiError
from seqstate.serve.livecount import LiveCount
from seqstate.serve.metrics import Metrics
from seqstate.serve.preprocess import StreamScaling
from seqstate.serve.rules import Reject
from seqstate.serve.schemas import StepBody
from seqstate.serve.stores import StateStore, StoreError

__all__ = ["Resources", "answer_json", "describe", "step_request", "submit"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass
class Resources:
    """What one running app holds; opened and closed by the lifespan."""

    config: ServeConfig
    model: torch.nn.Module
    store: StateStore
    batcher: Batcher
    metrics: Metrics
    clock: Callable[[], float]
    input_size: int
    scaling: StreamScaling | None = None  # the run's per-step preprocessing (None: none)
    sweeper: asyncio.Task[None] | None = None
    live: LiveCount = dataclasses.field(default_factory=LiveCount)  # live streams, kept
    recounter: asyncio.Task[None] | None = None
    websockets: int = 0  # open WebSocket connections


def describe(problems: Any) -> str:
    """Pydantic errors as one line: 'x: Input should be a valid list; seq: ...'."""
    parts = []
    for problem in list(problems)[:5]:
        location = ".".join(str(p) for p in problem.get("loc", ()) if p != "body") or "body"
        parts.append(f"{location}: {problem.get('msg', 'invalid')}")
    more = len(problems) - len(parts)
    return "invalid request: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def step_request(stream: str, body: StepBody, resources: Resources) -> StepRequest:
    """Validate ``x`` against the model (shape, feature count, finiteness) -> StepRequest."""
    features = resources.input_size
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
                f"{where} must hold {features} features (the model's input size); received "
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
    scaling = resources.scaling
    if scaling is None:
        return StepRequest(stream, body.seq, array, single=single, start=body.start)
    # the digest fingerprints the scaled x and the series (the same raw x and series always
    # scale alike): a retry naming another series is a seq_conflict, never a replay
    encoded, decode = scaling.encode(body.series, array)
    series = body.series if scaling.per_series else None
    return StepRequest(
        stream, body.seq, encoded, single=single, start=body.start, series=series, decode=decode
    )


async def submit(resources: Resources, step: StepRequest) -> Outcome:
    try:
        outcome = await resources.batcher.submit(step)
    except StoreError:
        resources.metrics.store_errors.labels("step").inc()
        raise
    if isinstance(outcome, Reject):
        resources.metrics.steps.labels("rejected").inc()
    else:
        resources.metrics.steps.labels("replayed" if outcome.replayed else "applied").inc()
    return outcome


def answer_json(outcome: Outcome) -> bytes:
    """``{"seq":…, "y":…, "replayed":…}`` with the stored JSON of y spliced in as is."""
    if isinstance(outcome, Reject):
        raise RuntimeError("internal error: a rejected step reached the success path")
    replayed = b"true" if outcome.replayed else b"false"
    return b'{"seq":%d,"y":%s,"replayed":%s}' % (outcome.seq, outcome.output, replayed)
