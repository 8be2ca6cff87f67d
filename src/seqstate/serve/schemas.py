"""Request and response models of the HTTP and WebSocket API (the schema's one home).

HTTP bodies are validated by FastAPI with these models (and appear in ``/openapi.json``);
WebSocket frames are validated with the same field rules, so a step means the same thing on
either transport.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from seqstate.serve.config import STREAM_ID_PATTERN

__all__ = [
    "DEFAULT_QUANTILES",
    "MAX_SAMPLED_STEPS",
    "MAX_SAMPLES",
    "MAX_SEQ",
    "WS_FRAME",
    "BatchStep",
    "ErrorBody",
    "ForecastAnswer",
    "ForecastBody",
    "StepAnswer",
    "StepBody",
    "StreamInfo",
    "WsEnd",
    "WsForecast",
    "WsStep",
]

MAX_SEQ = 2**62  # fits SQLite INTEGER and Redis integers with room to spare
MAX_SAMPLES = 10_000  # sample paths in one forecast
MAX_SAMPLED_STEPS = 1_000_000  # samples x horizon: bounds the memory one forecast takes
DEFAULT_QUANTILES = (0.1, 0.5, 0.9)


class StepBody(BaseModel):
    """One step (or k steps) of one stream: ``POST /v1/streams/{id}/steps``."""

    model_config = ConfigDict(strict=True, extra="forbid")

    seq: int = Field(
        ge=1,
        le=MAX_SEQ,
        description="request number: 1, 2, 3 … per stream, one per request (a request of k "
        "steps counts once)",
    )
    x: list[float] | list[list[float]] = Field(
        description="one step of the run's raw inputs [F] (in the order GET /v1/model lists "
        "them), or k steps [[F], …]"
    )
    start: bool = Field(False, description="reset the stream to a fresh state before this step")
    series: str | None = Field(
        None,
        max_length=256,
        description="the series (id column value) the stream belongs to: given on its first "
        "step and kept; a later step may repeat it or leave it out (another series: 409)",
    )
    time: int | str | list[int] | list[str] | None = Field(
        None,
        description="the step's time: Unix seconds or a date as text (2024-01-31T12:00:00); a "
        "list for k steps. Required where the run uses calendar features",
    )


class BatchStep(StepBody):
    """One item of ``POST /v1/steps``."""

    id: str = Field(pattern=STREAM_ID_PATTERN, description="stream id")


class WsStep(StepBody):
    """A WebSocket step frame ``{"stream", "seq", "x", "start"?}``."""

    op: Literal["step"] = "step"
    stream: str = Field(pattern=STREAM_ID_PATTERN, description="stream id")


class ForecastBody(BaseModel):
    """``POST /v1/streams/{id}/forecast``: the stream's forecast; its state is not changed."""

    model_config = ConfigDict(strict=True, extra="forbid")

    horizon: int = Field(ge=1, le=10_000, description="steps ahead")
    covariates: dict[str, list[float]] | None = Field(
        None,
        description="the run's known-future columns, each with horizon values (only where the "
        "run has them)",
    )
    samples: int | None = Field(
        None,
        ge=1,
        le=MAX_SAMPLES,
        description="sample this many paths (a run trained with a distribution head) and "
        "answer their quantiles as well; samples x horizon is at most "
        f"{MAX_SAMPLED_STEPS}",
    )
    quantiles: list[float] | None = Field(
        None,
        min_length=1,
        max_length=99,
        description="quantile levels in (0, 1): of the sampled paths with samples (default "
        "[0.1, 0.5, 0.9]); else of the run's calibrated intervals, as seqstate forecast "
        "--quantiles writes them (default [0.1, 0.9]; a run without an interval table: 422)",
    )
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="seed of the sampling: the same seed, the same paths"
    )


class WsForecast(ForecastBody):
    """A WebSocket frame asking a stream's forecast ``{"op": "forecast", "stream", "horizon"}``."""

    op: Literal["forecast"]
    stream: str = Field(pattern=STREAM_ID_PATTERN, description="stream id")


class ForecastAnswer(BaseModel):
    seq: int = Field(description="the stream's last applied request")
    time: list[str] | list[int] = Field(description="the forecast steps' times")
    y: list[list[float]] = Field(description="[[O], …] one row per step, raw units")
    quantiles: dict[str, list[list[float]]] | None = Field(
        None,
        description='level (as sent, e.g. "0.1") -> [[O], …] that quantile per step, raw '
        "units: of the run's calibrated intervals (every run with an interval table), or "
        "with samples of the sampled paths",
    )
    quantiles_from: Literal["calibrated", "samples"] | None = Field(
        None, description="where the quantiles come from (absent with no quantiles)"
    )


class WsEnd(BaseModel):
    """A WebSocket frame ending a stream ``{"op": "end", "stream"}`` (like DELETE)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    op: Literal["end"]
    stream: str = Field(pattern=STREAM_ID_PATTERN, description="stream id")


WS_FRAME: TypeAdapter[Any] = TypeAdapter(WsStep | WsEnd | WsForecast)


class StepAnswer(BaseModel):
    seq: int
    y: list[float | None] | list[list[float | None]] = Field(
        description="[O] for one step, [[O], …] for k, raw units; null during a differenced "
        "stream's first steps (no past to difference yet)"
    )
    replayed: bool = Field(description="true: a retry, answered from the store, not re-applied")


class ErrorBody(BaseModel):
    code: str = Field(description="machine-readable: seq_gap, body_too_large, server_busy, …")
    message: str
    expected_seq: int | None = None


class StreamInfo(BaseModel):
    id: str
    seq: int
    updated: float = Field(description="unix time of the last applied step")
    expires: float | None = Field(description="unix time the stream expires if idle")
