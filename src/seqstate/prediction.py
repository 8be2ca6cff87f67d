"""Prediction over whole sequences of any length, and autoregressive forecasts.

    outputs = predict(model, sequences)          # one (L_i, O) array per sequence
    path = forecast(model, context, horizon=24)  # (24, O): warm up on context, then roll out

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

import contextlib
import copy
import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import nn

from seqstate.layout import Plan, packed_plan
from seqstate.state import State

__all__ = ["forecast", "predict"]

#: Default steps per model call. Longer chunks mean fewer Python round trips; the memory of one
#: call is batch_size * chunk * hidden_size floats. Measured with benchmarks/predict.py.
DEFAULT_CHUNK = 512
#: Default number of lanes (sequences run side by side).
DEFAULT_BATCH_SIZE = 256

Form = Literal["one", "stack", "list"]


# --------------------------------------------------------------------------------------------
# Model handling shared with seqstate.streams
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ModelInfo:
    input_size: int  # F
    output_size: int  # O
    dtype: torch.dtype  # of the parameters; inputs are cast to it
    device: torch.device  # of the parameters; inputs are moved to it
    state_type: type[State] | None  # None when the model does not declare one

    @property
    def numpy_dtype(self) -> np.dtype:
        return torch.empty((), dtype=self.dtype).numpy().dtype


def _prepare_model(model: Any, device: torch.device | str | None) -> tuple[nn.Module, _ModelInfo]:
    """Check the model protocol; copy the model to ``device`` when it lives elsewhere."""
    if not isinstance(model, nn.Module) or not callable(getattr(model, "initial_state", None)):
        raise TypeError(
            "model must be a torch.nn.Module with forward(x, state, reset, mask) -> (y, state) "
            f"and initial_state(batch_size), e.g. seqstate.SequenceModel; received "
            f"{type(model).__name__}"
        )
    parameter = next(model.parameters(), None)
    if parameter is None:
        raise TypeError(f"model ({type(model).__name__}) has no parameters")
    if device is not None:
        target = torch.device(device)
        here = parameter.device
        if target.type != here.type or (target.index is not None and target.index != here.index):
            # A copy, so the caller's model stays where it is.
            model = copy.deepcopy(model).to(target)
            parameter = next(model.parameters())
    input_size = getattr(model, "input_size", None)
    output_size = getattr(model, "output_size", None) or getattr(model, "hidden_size", None)
    if not isinstance(input_size, int) or not isinstance(output_size, int):
        raise TypeError(
            f"model ({type(model).__name__}) must expose int attributes input_size and "
            "output_size (or hidden_size), like seqstate.SequenceModel"
        )
    return model, _ModelInfo(
        input_size=input_size,
        output_size=output_size,
        dtype=parameter.dtype,
        device=parameter.device,
        state_type=getattr(model, "state_type", None),
    )


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd; the model's training flag is restored after."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


# --------------------------------------------------------------------------------------------
# Input validation (once, at the public boundary)
# --------------------------------------------------------------------------------------------


def _check_positive_int(value: Any, name: str, default: int, meaning: str) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int >= 1 ({meaning}); received {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1 ({meaning}); received {value}")
    return int(value)


def _as_numeric(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise TypeError(
            f"{name} must be an array of numbers; NumPy cannot read it: {error}"
        ) from None
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must hold numbers; received dtype {array.dtype}. Convert it first, e.g. "
            "with .astype('float32')"
        )
    return array


def _cast(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """C-contiguous copy in ``dtype`` (or the array itself); values too large become inf, which
    the NaN/inf check that follows reports."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(array, dtype=dtype)


def _check_finite(array: np.ndarray, name: str) -> None:
    """``array`` is (L, F); name the first step holding NaN/inf."""
    bad = ~np.isfinite(array)
    if bad.any():
        step = int(np.argmax(bad.reshape(len(array), -1).any(axis=1)))
        raise ValueError(
            f"{name} holds NaN or inf at step {step} (after conversion to the model's dtype). "
            "Fill or drop missing values first"
        )


def _read_one(value: Any, name: str, info: _ModelInfo) -> np.ndarray:
    """One sequence (L,) or (L, F) -> (L, F) in the model's dtype, validated."""
    array = _as_numeric(value, name)
    F = info.input_size
    if array.ndim == 1:
        if F != 1:
            raise ValueError(
                f"{name} has shape {tuple(array.shape)}, one feature per step, but the model "
                f"expects F={F} features: give an array (L, {F})"
            )
        array = array[:, None]
    elif array.ndim != 2:
        raise ValueError(
            f"{name} must have shape (L, F)=(L, {F}) (or (L,) when F == 1); received "
            f"{tuple(array.shape)}"
        )
    if array.shape[1] != F:
        raise ValueError(
            f"{name} has {array.shape[1]} features but the model expects F={F} (input_size); "
            f"received shape {tuple(array.shape)}"
        )
    if len(array) == 0:
        raise ValueError(f"{name} is empty (shape {tuple(array.shape)}); give at least one step")
    array = _cast(array, info.numpy_dtype)
    _check_finite(array, name)
    return array


def _read_sequences(sequences: Any, name: str, info: _ModelInfo) -> tuple[list[np.ndarray], Form]:
    """-> list of (L_i, F) arrays in the model's dtype, and the form to give results back in."""
    if isinstance(sequences, np.ndarray | torch.Tensor):
        ndim = sequences.ndim
        if ndim in (1, 2):
            return [_read_one(sequences, name, info)], "one"
        if ndim == 3:
            if len(sequences) == 0:
                raise ValueError(f"{name} is empty (shape {tuple(sequences.shape)})")
            arrays = [_read_one(row, f"{name}[{i}]", info) for i, row in enumerate(sequences)]
            return arrays, "stack"
        raise ValueError(
            f"{name} must be one sequence (L, F), many of equal length (n, L, F), or a list of "
            f"arrays (L_i, F); received an array of shape {tuple(sequences.shape)}"
        )
    if isinstance(sequences, list | tuple):
        if not sequences:
            raise ValueError(f"{name} is an empty list; give at least one sequence")
        return [_read_one(item, f"{name}[{i}]", info) for i, item in enumerate(sequences)], "list"
    raise TypeError(
        f"{name} must be an array (L, F) or (n, L, F), or a list of arrays (L_i, F); received "
        f"{type(sequences).__name__}"
    )


# --------------------------------------------------------------------------------------------
# The chunked run
# --------------------------------------------------------------------------------------------


def _layout(lengths: np.ndarray, lanes: int, chunk: int) -> Plan:
    """Where each sequence and step sits: the lane packing of :meth:`seqstate.Lanes.from_sequences`
    with windows of at most ``chunk`` steps."""
    plan = packed_plan(lengths, lanes, chunk)
    # Same number of model calls, less padding: spread the longest lane evenly over them.
    loads = [int(lengths[members].sum()) for members in plan.assignment()]
    balanced = -(-max(loads) // plan.num_windows)
    if balanced < chunk:
        plan = packed_plan(lengths, lanes, balanced)
    return plan


def _run(
    model: nn.Module,
    info: _ModelInfo,
    arrays: list[np.ndarray],
    *,
    chunk: int,
    batch_size: int,
    capture_state: bool,
) -> tuple[list[np.ndarray], State | None]:
    """Outputs (L_i, O) per sequence and, with ``capture_state``, the state after each
    sequence's last step (batch n, in input order)."""
    n = len(arrays)
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    flat = np.concatenate(arrays)  # (sum L_i, F)
    outputs = np.zeros((int(lengths.sum()), info.output_size), dtype=info.numpy_dtype)
    layout = _layout(lengths, min(batch_size, n), chunk)
    final = model.initial_state(n) if capture_state else None

    state = None
    with _evaluating(model):
        all_lanes = np.arange(layout.num_lanes)
        for k in range(layout.num_windows):
            seq, step, valid = layout.locate(k, all_lanes)  # each (B, T)
            where = offsets[seq[valid]] + step[valid]  # rows of `flat` in this window
            B, T = seq.shape
            x = np.zeros((B, T, info.input_size), dtype=info.numpy_dtype)
            x[valid] = flat[where]
            x_t = torch.from_numpy(x).to(info.device)
            # Lanes pads only after a lane's last sequence, so without state capture padding can
            # run as ordinary steps (outputs dropped, the spoilt state is never read): no mask,
            # which keeps the plain fused kernel (packed sequences are much slower on CPU).
            needs_mask = capture_state and not valid.all()
            mask = torch.from_numpy(valid).to(info.device) if needs_mask else None
            starts = valid & (step == 0)  # a sequence begins: zero that row's state first
            reset = torch.from_numpy(starts).to(info.device) if bool(starts.any()) else None
            if state is None:
                state = model.initial_state(B)

            if not capture_state:
                y, state = model(x_t, state, reset=reset, mask=mask)
            else:
                y, state, final = _run_capturing(
                    model, x_t, state, reset, mask, seq, step, valid, lengths, final
                )
            outputs[where] = y.cpu().numpy()[valid]
    return np.split(outputs, np.cumsum(lengths)[:-1]), final


def _run_capturing(
    model: nn.Module,
    x: torch.Tensor,
    state: State,
    reset: torch.Tensor | None,
    mask: torch.Tensor | None,
    seq: np.ndarray,
    step: np.ndarray,
    valid: np.ndarray,
    lengths: np.ndarray,
    final: State,
) -> tuple[torch.Tensor, State, State]:
    """One window, split after every sequence that ends before its lane does in this window, so
    that each sequence's final state can be read off the state the model returns.

    A model returns each row's state after the row's *last* real step; a sequence followed by
    another one in the same lane and window is not last, hence the split (exact: chunked ==
    whole).
    """
    T = seq.shape[1]
    ends = valid & (step == lengths[np.maximum(seq, 0)] - 1)  # (B, T) a sequence's last step
    later = np.flip(np.cumsum(np.flip(valid, 1), 1), 1) - valid  # real steps after column t
    cuts = np.unique(np.nonzero(ends & (later > 0))[1] + 1).tolist()
    end_rows, end_columns = np.nonzero(ends)
    pieces = []
    for start, stop in itertools.pairwise([0, *cuts, T]):
        y, state = model(
            x[:, start:stop],
            state,
            reset=None if reset is None else reset[:, start:stop],
            mask=None if mask is None else mask[:, start:stop],
        )
        pieces.append(y)
        here = (end_columns >= start) & (end_columns < stop)
        if here.any():
            rows = end_rows[here]
            final = final.scatter(
                seq[rows, end_columns[here]].tolist(), state.select(rows.tolist())
            )
    return torch.cat(pieces, dim=1), state, final


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
    model, info = _prepare_model(model, device)
    chunk = _check_positive_int(chunk, "chunk", DEFAULT_CHUNK, "steps per model call")
    batch_size = _check_positive_int(
        batch_size, "batch_size", DEFAULT_BATCH_SIZE, "sequences run side by side"
    )
    if not isinstance(return_state, bool):
        raise TypeError(f"return_state must be True or False; received {return_state!r}")
    arrays, form = _read_sequences(sequences, "sequences", info)
    outputs, final = _run(
        model, info, arrays, chunk=chunk, batch_size=batch_size, capture_state=return_state
    )
    result: Any = outputs
    if form == "one":
        result = outputs[0]
    elif form == "stack":
        result = np.stack(outputs)
    return (result, final) if return_state else result


# --------------------------------------------------------------------------------------------
# forecast
# --------------------------------------------------------------------------------------------


def _feed_columns(
    info: _ModelInfo, target_features: Sequence[int] | None
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
    covariates: Any, n: int, horizon: int, width: int, form: Form, info: _ModelInfo
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
        array = _as_numeric(item, name)
        if array.ndim == 1 and width == 1:
            array = array[:, None]
        if array.shape != (horizon, width):
            raise ValueError(
                f"{name} must have shape ({horizon}, {width}) (horizon, F - O); received "
                f"{tuple(array.shape)}"
            )
        array = _cast(array, info.numpy_dtype)
        _check_finite(array, name)
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

    Returns:
        ``[horizon, O]`` for one series, ``[n, horizon, O]`` otherwise (NumPy).
    """
    model, info = _prepare_model(model, device)
    config = getattr(model, "config", None)
    if getattr(config, "task", "regression") == "classification":
        raise ValueError(
            "forecast feeds outputs back as inputs, which needs a regression model; this model "
            "is a classifier (its outputs are logits). Use predict for classification"
        )
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(f"horizon must be an int >= 1 (steps to forecast); received {horizon!r}")
    horizon = int(horizon)
    chunk = _check_positive_int(chunk, "chunk", DEFAULT_CHUNK, "steps per model call")
    batch_size = _check_positive_int(
        batch_size, "batch_size", DEFAULT_BATCH_SIZE, "sequences run side by side"
    )
    fed, others = _feed_columns(info, target_features)
    arrays, form = _read_sequences(context, "context", info)
    n = len(arrays)
    future = _read_covariates(covariates, n, horizon, len(others), form, info)

    outputs, state = _run(
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
    with _evaluating(model):
        for h in range(1, horizon):
            x[:, 0, fed_t] = result[:, h - 1]
            x[:, 0, others_t] = future_t[:, h - 1]
            y, state = model(x, state)
            result[:, h] = y[:, 0]
    array = result.cpu().numpy()
    return array[0] if form == "one" else array
