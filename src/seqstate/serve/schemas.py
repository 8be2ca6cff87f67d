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
    "MAX_SEQ",
    "WS_FRAME",
    "BatchStep",
    "ErrorBody",
    "StepAnswer",
    "StepBody",
    "StreamInfo",
    "WsEnd",
    "WsStep",
]

MAX_SEQ = 2**62  # fits SQLite INTEGER and Redis integers with room to spare


class StepBody(BaseModel):
    """One step (or k steps) of one stream: ``POST /v1/streams/{id}/steps``."""

    model_config = ConfigDict(strict=True, extra="forbid")

    seq: int = Field(ge=1, le=MAX_SEQ, description="step number: 1, 2, 3 … per stream")
    x: list[float] | list[list[float]] = Field(
        description="one step of F features [F], or k steps [[F], …]"
    )
    start: bool = Field(False, description="reset the stream to a zero state before this step")
    series: str | None = Field(
        None,
        max_length=256,
        description="the series this stream's steps belong to (runs scaled per series need it "
        "with every step; others ignore it)",
    )


class BatchStep(StepBody):
    """One item of ``POST /v1/steps``."""

    id: str = Field(pattern=STREAM_ID_PATTERN, description="stream id")


class WsStep(StepBody):
    """A WebSocket step frame ``{"stream", "seq", "x", "start"?}``."""

    op: Literal["step"] = "step"
    stream: str = Field(pattern=STREAM_ID_PATTERN, description="stream id")


class WsEnd(BaseModel):
    """A WebSocket frame ending a stream ``{"op": "end", "stream"}`` (like DELETE)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    op: Literal["end"]
    stream: str = Field(pattern=STREAM_ID_PATTERN, description="stream id")


WS_FRAME: TypeAdapter[Any] = TypeAdapter(WsStep | WsEnd)


class StepAnswer(BaseModel):
    seq: int
    y: list[float] | list[list[float]] = Field(description="[O] for one step, [[O], …] for k")
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
