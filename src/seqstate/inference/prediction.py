"""Prediction over whole sequences of any length (forecasts: :mod:`seqstate.inference.forecasting`).

    outputs = predict(model, sequences)          # one (L_i, O) array per sequence

``predict`` stands for this plain loop, one sequence at a time::

    for sequence in sequences:                   # (L_i, F)
        y, _ = model(sequence[None])             # the whole sequence in one call, zero state
        outputs.append(y[0])                     # (L_i, O)

but never holds a long sequence in one call, and runs many sequences side by side: they are
packed into ``batch_size`` lanes (:meth:`seqstate.Lanes.from_sequences`, longest first into
the least-loaded lane) and run ``chunk`` steps at a time. ``batch_size=2, chunk=4``, sequences
p (7 steps), q (3), r (3)::

                chunk 0            chunk 1
    lane 0   [p0 p1 p2 p3]  ->  [p4 p5 p6 . ]     -> : the state is carried to the next chunk
    lane 1   [q0 q1 q2 r0]  ->  [r1 r2 .  . ]     r0 : reset, r starts from a zero state

The result equals the plain loop (float64 to 1e-10, float32 to 1e-5) whatever ``chunk`` and
``batch_size`` are, so a model trained with any number of lanes predicts with any other.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np
import torch
from torch import nn

from seqstate.core.state import State
from seqstate.inference.common import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK,
    check_positive_int,
    prepare_model,
    read_sequences,
    run_chunked,
)
from seqstate.inference.forecasting import forecast

__all__ = ["forecast", "predict"]


# --------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------


@overload
def predict(
    model: nn.Module,
    sequences: Any,
    *,
    chunk: int | None = ...,
    batch_size: int | None = ...,
    device: torch.device | str | None = ...,
    return_state: Literal[False] = ...,
) -> Any: ...


@overload
def predict(
    model: nn.Module,
    sequences: Any,
    *,
    chunk: int | None = ...,
    batch_size: int | None = ...,
    device: torch.device | str | None = ...,
    return_state: Literal[True],
) -> tuple[Any, State]: ...


def predict(
    model: nn.Module,
    sequences: Any,
    *,
    chunk: int | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    return_state: bool = False,
) -> Any:
    """Run ``model`` over whole sequences of any length, each from a zero state.

    Args:
        model: a :class:`seqstate.SequenceModel` (or any module with its protocol). Run in eval
            mode under ``torch.no_grad``; its training flag is restored afterwards.
        sequences: one sequence ``[L, F]`` (or ``[L]`` when F == 1); many of equal length
            ``[n, L, F]``; or a list of ``[L_i, F]`` / ``[L_i]`` arrays (numpy or torch).
        chunk: steps per model call (default 512). Any value gives the same result.
        batch_size: lanes run side by side (default ``min(n, 256)``). Any value gives the same
            result; the batch size a model was trained with plays no part.
        device: where to run (default: where the model's parameters are). A model elsewhere
            is copied there; the caller's model is not moved.
        return_state: also return the state after each sequence's last step.

    Returns:
        Outputs in the form of ``sequences``: ``[L, O]`` for one sequence, ``[n, L, O]`` for a
        3-D array, a list of ``[L_i, O]`` for a list — NumPy arrays in the model's dtype
        (logits for a classification model). With ``return_state``, ``(outputs, state)`` where
        ``state`` has batch n in input order (batch 1 for one sequence).

    Raises:
        ValueError / TypeError: wrong feature count, NaN/inf (naming sequence and step), empty
            sequences, wrong rank or dtype, bad ``chunk`` / ``batch_size``.
    """
    model, info = prepare_model(model, device)
    chunk = check_positive_int(chunk, "chunk", DEFAULT_CHUNK, "steps per model call")
    batch_size = check_positive_int(
        batch_size, "batch_size", DEFAULT_BATCH_SIZE, "sequences run side by side"
    )
    if not isinstance(return_state, bool):
        raise TypeError(f"return_state must be True or False; received {return_state!r}")
    arrays, form = read_sequences(sequences, "sequences", info)
    outputs, final = run_chunked(
        model, info, arrays, chunk=chunk, batch_size=batch_size, capture_state=return_state
    )
    result: Any = outputs
    if form == "one":
        result = outputs[0]
    elif form == "stack":
        result = np.stack(outputs)
    return (result, final) if return_state else result
