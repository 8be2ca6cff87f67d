"""What predict, forecast and Streams share: the model check, input reading, the chunked run.

The model is checked once (:func:`seqstate.core.protocol.check_sized_core`) and described by a
:class:`ModelInfo`; sequences are read and validated in the model's dtype; :func:`run_chunked` plays
them through the lane layout of :mod:`seqstate.lanes.layout`, ``chunk`` steps per model call (see
:mod:`seqstate.inference.prediction` for the picture).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn

from seqstate._validate import check_device, check_int
from seqstate.core.protocol import SequenceCore, check_sized_core
from seqstate.core.state import State
from seqstate.lanes.layout import Plan, packed_plan

#: Default steps per model call. Longer chunks mean fewer Python round trips; the memory of one
#: call is batch_size * chunk * hidden_size floats. Measured with benchmarks/predict.py.
DEFAULT_CHUNK = 512
#: Default number of lanes (sequences run side by side).
DEFAULT_BATCH_SIZE = 256

Form = Literal["one", "stack", "list"]


# --------------------------------------------------------------------------------------------
# Model handling shared with seqstate.inference.streams
# --------------------------------------------------------------------------------------------


#: Model dtypes NumPy has no twin for, and the NumPy dtype inputs are read and outputs given in.
_NUMPY_STAND_INS = {torch.bfloat16: np.dtype(np.float32)}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    input_size: int  # F
    output_size: int  # O
    dtype: torch.dtype  # of the parameters; inputs are cast to it
    device: torch.device  # of the parameters; inputs are moved to it
    numpy_dtype: np.dtype  # dtype's NumPy twin (bfloat16's: float32): inputs read, outputs given
    state_type: type[State] | None  # None when the model does not declare one

    @property
    def numpy_is_exact(self) -> bool:
        """Whether ``numpy_dtype`` is ``dtype`` itself (False for bfloat16, read as float32)."""
        return self.dtype not in _NUMPY_STAND_INS

    def to_numpy(self, tensor: torch.Tensor) -> np.ndarray:
        """``tensor`` (in the model's dtype, anywhere) as a NumPy array in ``numpy_dtype``."""
        tensor = tensor.cpu()
        if tensor.dtype in _NUMPY_STAND_INS:
            tensor = tensor.float()
        return tensor.numpy()


def prepare_model(model: Any, device: torch.device | str | None) -> tuple[nn.Module, ModelInfo]:
    """Check the model protocol and ``device``; copy the model to ``device`` when it lives
    elsewhere."""
    input_size, output_size = check_sized_core(model)
    target = check_device(device)
    parameter = next(model.parameters(), None)
    if parameter is None:
        raise TypeError(f"model ({type(model).__name__}) has no parameters")
    numpy_dtype = _numpy_dtype(parameter.dtype)
    if target is not None:
        here = parameter.device
        if target.type != here.type or (target.index is not None and target.index != here.index):
            # A copy, so the caller's model stays where it is.
            model = copy.deepcopy(model).to(target)
            parameter = next(model.parameters())
    return model, ModelInfo(
        input_size=input_size,
        output_size=output_size,
        dtype=parameter.dtype,
        numpy_dtype=numpy_dtype,
        device=parameter.device,
        state_type=getattr(model, "state_type", None),
    )


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    stand_in = _NUMPY_STAND_INS.get(dtype)
    if stand_in is not None:
        return stand_in
    try:
        return torch.empty((), dtype=dtype).numpy().dtype
    except TypeError:
        raise TypeError(
            f"model has parameters of dtype {dtype}, which seqstate cannot run (NumPy has no "
            "such dtype); convert the model with model.float() (or .double(), .half(), "
            ".to(torch.bfloat16))"
        ) from None


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
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


def check_positive_int(value: Any, name: str, default: int, meaning: str) -> int:
    """``value`` as an int >= 1, or ``default`` for None."""
    if value is None:
        return default
    return check_int(value, name, 1, f"It is the number of {meaning}.")


def as_numeric(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in _NUMPY_STAND_INS:  # (bfloat16: exact in float32)
            value = value.float()
        value = value.numpy()
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


def cast_array(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """C-contiguous copy in ``dtype`` (or the array itself); values too large become inf, which
    the NaN/inf check that follows reports."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(array, dtype=dtype)


def check_finite_array(array: np.ndarray, name: str) -> None:
    """``array`` is (L, F); name the first step holding NaN/inf."""
    bad = ~np.isfinite(array)
    if bad.any():
        step = int(np.argmax(bad.reshape(len(array), -1).any(axis=1)))
        raise ValueError(
            f"{name} holds NaN or inf at step {step} (after conversion to the model's dtype). "
            "Fill or drop missing values first"
        )


def _read_one(value: Any, name: str, info: ModelInfo) -> np.ndarray:
    """One sequence (L,) or (L, F) -> (L, F) in the model's dtype, validated."""
    array = as_numeric(value, name)
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
    array = cast_array(array, info.numpy_dtype)
    check_finite_array(array, name)
    return array


def read_sequences(sequences: Any, name: str, info: ModelInfo) -> tuple[list[np.ndarray], Form]:
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


def run_chunked(
    model: nn.Module,
    info: ModelInfo,
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
    core = cast(SequenceCore, model)  # checked by check_sized_core at the boundary
    final = core.initial_state(n) if capture_state else None

    state = None
    with evaluating(model):
        all_lanes = np.arange(layout.num_lanes)
        for k in range(layout.num_windows):
            seq, step, valid = layout.locate(k, all_lanes)  # each (B, T)
            where = offsets[seq[valid]] + step[valid]  # rows of `flat` in this window
            B, T = seq.shape
            x = np.zeros((B, T, info.input_size), dtype=info.numpy_dtype)
            x[valid] = flat[where]
            x_t = torch.from_numpy(x).to(info.device, info.dtype)
            # Lanes pads only after a lane's last sequence, so without state capture padding can
            # run as ordinary steps (outputs dropped, the spoilt state is never read): no mask,
            # which keeps the plain fused kernel (packed sequences are much slower on CPU).
            needs_mask = capture_state and not valid.all()
            mask = torch.from_numpy(valid).to(info.device) if needs_mask else None
            starts = valid & (step == 0)  # a sequence begins: zero that row's state first
            reset = torch.from_numpy(starts).to(info.device) if bool(starts.any()) else None
            if state is None:
                state = core.initial_state(B)

            if final is None:  # not capturing the final states
                y, state = model(x_t, state, reset=reset, mask=mask)
            else:
                y, state, final = _run_capturing(
                    model, x_t, state, reset, mask, seq, step, valid, lengths, final
                )
            outputs[where] = info.to_numpy(y)[valid]
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


def feed_columns(
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


def read_covariates(
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
        check_finite_array(array[:-1], name)  # (the last row feeds no step: not read)
        blocks.append(array)
    return np.stack(blocks)
