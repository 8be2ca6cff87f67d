"""forecast: warm a model up on each series' history, then roll it out autoregressively.

    path = forecast(model, context, horizon=24)  # (24, O): warm up on context, then roll out

The warm-up is :func:`seqstate.predict`'s chunked run (with the final state captured); the
roll-out then feeds each output back as the next input, one step per call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from seqstate._validate import check_int
from seqstate.inference.common import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK,
    Form,
    ModelInfo,
    as_numeric,
    cast_array,
    check_finite_array,
    check_positive_int,
    evaluating,
    prepare_model,
    read_sequences,
    run_chunked,
)

__all__ = ["forecast"]

# --------------------------------------------------------------------------------------------
# forecast
# --------------------------------------------------------------------------------------------


def _feed_columns(
    info: ModelInfo, target_features: Sequence[int] | None
) -> tuple[list[int], list[int]]:
    """(input columns the outputs feed, in output order; the other input columns)."""
    F, O = info.input_size, info.output_size
    if target_features is None:
        if O != F:
            raise ValueError(
                f"the model has O={O} outputs and F={F} inputs, so its outputs cannot simply be "
                "fed back as the next inputs: give target_features, the input column each "
                f"output feeds (a list of {O} indices in [0, {F}))"
                + (
                    f", and the other {F - O} columns' known future values as covariates"
                    if O < F
                    else ""
                )
            )
        return list(range(F)), []
    if isinstance(target_features, str | bytes) or not isinstance(
        target_features, Sequence | np.ndarray | torch.Tensor
    ):
        raise TypeError(
            f"target_features must be a list of {O} input column indices; received "
            f"{type(target_features).__name__}"
        )
    columns = [int(c) for c in np.asarray(target_features).reshape(-1).tolist()]
    if (
        len(columns) != O
        or len(set(columns)) != O
        or any(c < 0 or c >= F for c in columns)
        or np.asarray(target_features).dtype.kind not in "iu"
    ):
        raise ValueError(
            f"target_features must be {O} distinct int indices in [0, {F}), one input column per "
            f"model output; received {np.asarray(target_features).tolist()!r}"
        )
    return columns, [c for c in range(F) if c not in set(columns)]


def _read_covariates(
    covariates: Any, n: int, horizon: int, width: int, form: Form, info: ModelInfo
) -> np.ndarray:
    """-> (n, horizon, width) in the model's dtype."""
    if width == 0:
        if covariates is not None:
            raise ValueError(
                "covariates were given but every input column is fed by the model's outputs "
                "(target_features covers all F columns); drop covariates"
            )
        return np.zeros((n, horizon, 0), dtype=info.numpy_dtype)
    expected = f"({horizon}, {width})" if form == "one" else f"({n}, {horizon}, {width})"
    if covariates is None:
        raise ValueError(
            f"covariates are required: the model's outputs feed {info.input_size - width} of its "
            f"F={info.input_size} input columns; the other {width} need known future values, "
            f"an array {expected}: row h holds them at the time of forecast step h"
        )
    items = [covariates] if form == "one" else covariates
    if isinstance(items, np.ndarray | torch.Tensor | list | tuple):
        items = list(items)
    else:
        raise TypeError(f"covariates must be an array {expected}; received {type(items).__name__}")
    if len(items) != n:
        raise ValueError(
            f"covariates must have shape {expected}, one block per series; received "
            f"{len(items)} blocks for {n} series"
        )
    blocks = []
    for i, item in enumerate(items):
        name = "covariates" if form == "one" else f"covariates[{i}]"
        array = as_numeric(item, name)
        if array.ndim == 1 and width == 1:
            array = array[:, None]
        if array.shape != (horizon, width):
            raise ValueError(
                f"{name} must have shape ({horizon}, {width}) (horizon, F - O); received "
                f"{tuple(array.shape)}"
            )
        array = cast_array(array, info.numpy_dtype)
        check_finite_array(array, name)
        blocks.append(array)
    return np.stack(blocks)


def forecast(
    model: nn.Module,
    context: Any,
    horizon: int,
    *,
    covariates: Any = None,
    target_features: Sequence[int] | None = None,
    chunk: int | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    on_step: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Warm the state up on ``context``, then forecast ``horizon`` steps autoregressively.

    The model's output at step t is read as its forecast of the inputs at step t + 1, so the
    first forecast is the output at the last context step and each later one comes from
    feeding the previous forecast back in. The plain loop, for one series::

        y, state = model(context[None])            # warm up: [1, L, F] -> [1, L, O]
        out = [y[0, -1]]
        for h in range(1, horizon):
            x = empty(F); x[target_features] = out[-1]; x[others] = covariates[h - 1]
            y, state = model(x[None, None], state)
            out.append(y[0, 0])

    Many series run as one batch: one model call per forecast step for all of them.

    Args:
        model: a regression :class:`seqstate.SequenceModel` (or the same protocol).
        context: one series ``[L, F]`` (or ``[L]``), many ``[n, L, F]``, or a list of
            ``[L_i, F]`` (lengths may differ).
        horizon: steps to forecast, >= 1.
        covariates: when the model has fewer outputs than inputs (O < F), the known future
            values of the input columns it does not forecast: ``[horizon, F - O]`` for one
            series, ``[n, horizon, F - O]`` (or a list) for many. Row h holds their values at
            the time of forecast step h (the last row feeds no step and is not used).
        target_features: which input column each output feeds (O indices). Default when
            O == F: output j feeds input j. Required when O < F.
        chunk, batch_size, device: as in :func:`predict`, for the warm-up.
        on_step: called with the number of forecast steps done after each one (a progress
            bar for long horizons).

    Returns:
        ``[horizon, O]`` for one series, ``[n, horizon, O]`` otherwise (NumPy).
    """
    model, info = prepare_model(model, device)
    config = getattr(model, "config", None)
    if getattr(config, "task", "regression") == "classification":
        raise ValueError(
            "forecast feeds outputs back as inputs, which needs a regression model; this model "
            "is a classifier (its outputs are logits). Use predict for classification"
        )
    horizon = check_int(horizon, "horizon", 1, "It is the number of steps to forecast.")
    chunk = check_positive_int(chunk, "chunk", DEFAULT_CHUNK, "steps per model call")
    batch_size = check_positive_int(
        batch_size, "batch_size", DEFAULT_BATCH_SIZE, "sequences run side by side"
    )
    fed, others = _feed_columns(info, target_features)
    arrays, form = read_sequences(context, "context", info)
    n = len(arrays)
    future = _read_covariates(covariates, n, horizon, len(others), form, info)

    outputs, state = run_chunked(
        model, info, arrays, chunk=chunk, batch_size=batch_size, capture_state=True
    )
    if state is None:  # capture_state=True always returns one
        raise RuntimeError("internal error: no final state was captured")
    result = torch.empty((n, horizon, info.output_size), dtype=info.dtype, device=info.device)
    result[:, 0] = torch.from_numpy(np.stack([out[-1] for out in outputs])).to(info.device)
    future_t = torch.from_numpy(future).to(info.device)
    fed_t = torch.tensor(fed, device=info.device)
    others_t = torch.tensor(others, dtype=torch.long, device=info.device)
    x = torch.empty((n, 1, info.input_size), dtype=info.dtype, device=info.device)
    with evaluating(model):
        for h in range(1, horizon):
            x[:, 0, fed_t] = result[:, h - 1]
            x[:, 0, others_t] = future_t[:, h - 1]
            y, state = model(x, state)
            result[:, h] = y[:, 0]
            if on_step is not None:
                on_step(h + 1)
    array = result.cpu().numpy()
    return array[0] if form == "one" else array
