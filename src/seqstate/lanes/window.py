"""A window of :class:`seqstate.lanes.lanes.Lanes`: what it holds (:class:`Window`, public as
``seqstate.lanes.lanes.Window``) and how one is built: which lanes, and their arrays.

:func:`window_arrays` reads window ``k`` of a layout plan (:mod:`seqstate.lanes.layout`): inputs are
gathered from the source, targets by their kind (shifted inputs, per-step targets or one label
per sequence), and the masks, resets and positions follow from where each step lies.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields
from typing import Any, cast

import numpy as np
import torch

from seqstate.core.timeline import Timeline
from seqstate.lanes.inputs import FlatSource, Source, TargetSpec, to_array
from seqstate.lanes.layout import Plan

__all__ = ["Window", "select_lanes", "window_arrays", "window_timeline"]


@dataclass(frozen=True, eq=False)
class Window:
    """One batch of ``T`` steps for each of ``B`` lanes (all tensors on one device).

    Attributes:
        x: ``(B, T, F)`` float32 inputs; zeros on padding.
        y: ``(B, T, O)`` targets: float32, or int64 when the given targets are integer-typed
            (class labels, ``O = 1``). ``O = 0`` when the lanes have no targets. Zeros on padding.
        loss_mask: ``(B, T)`` bool, True where this step's target counts in the loss
            (``mask`` before 0.x: a deprecated alias remains for one release).
        reset: ``(B, T)`` bool, True where a new sequence begins; the row's state is zeroed
            *before* the step is consumed.
        seq: ``(B, T)`` int64 index of the sequence each step belongs to, ``-1`` on padding.
        step: ``(B, T)`` int64 position inside that sequence, ``-1`` on padding.
        timeline: the :class:`~seqstate.core.timeline.Timeline` of ``reset`` and ``valid``
            (built with the window by :class:`~seqstate.lanes.lanes.Lanes`; None for a window
            built without one). Hand it to the model with the flags it was built from:
            ``model(x, state, reset=timeline.reset, mask=timeline.mask, timeline=timeline)``
            (``timeline.mask`` is None when no step is padding); the layers then skip
            planning the window.

    Give the model ``mask=window.valid`` (which steps hold real input) and the loss
    ``window.loss_mask`` (which targets count). They differ: with "next" targets a sequence's last
    step is valid input but has no target; with per-sequence labels only the last step counts.
    """

    x: torch.Tensor
    y: torch.Tensor
    loss_mask: torch.Tensor
    reset: torch.Tensor
    seq: torch.Tensor
    step: torch.Tensor
    timeline: Timeline | None = field(default=None, compare=False, repr=False)

    @property
    def mask(self) -> torch.Tensor:
        """Deprecated alias of :attr:`loss_mask`; removed in the next release."""
        warnings.warn(
            "Window.mask is deprecated and will be removed in the next release; use "
            "Window.loss_mask (the targets that count in the loss). The model's mask= wants "
            "Window.valid.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.loss_mask

    @property
    def valid(self) -> torch.Tensor:
        """``(B, T)`` bool: the step holds real input (``seq >= 0``), i.e. it is not padding."""
        return self.seq >= 0

    @property
    def batch_size(self) -> int:
        """``B``, the number of lanes (rows) in this window."""
        return int(self.x.shape[0])

    @property
    def length(self) -> int:
        """``T``, the number of steps in this window."""
        return int(self.x.shape[1])

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> Window:
        """A copy with every tensor moved to ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if getattr(self, f.name) is not None
        }
        return Window(**moved)

    def __repr__(self) -> str:
        B, T, F = self.x.shape
        return (
            f"Window(B={B}, T={T}, F={F}, O={self.y.shape[2]}, y={self.y.dtype}, "
            f"valid={int(self.valid.sum())}, loss_mask={int(self.loss_mask.sum())}, "
            f"resets={int(self.reset.sum())})"
        )


def window_timeline(reset: torch.Tensor, seq: torch.Tensor) -> Timeline:
    """The timeline of a window's ``reset`` and ``valid`` (``seq >= 0``) [B, T]; its ``mask`` is
    None when no step is padding."""
    valid = seq >= 0
    return Timeline(reset, None if bool(valid.all()) else valid)


def select_lanes(rows: Any, B: int) -> np.ndarray:
    """``rows`` of :meth:`Lanes.windows` (None, a slice, lane indices or a boolean mask of
    length ``B``) -> lane indices in ``[0, B)``, validated."""
    if rows is None:
        return np.arange(B)
    if isinstance(rows, slice):
        return np.arange(B)[rows]
    array = to_array(rows, "rows")
    if array.dtype.kind == "b":
        if array.shape != (B,):
            raise ValueError(
                f"rows as a boolean mask must have shape ({B},), one per lane; received "
                f"shape {tuple(array.shape)}."
            )
        return np.flatnonzero(array)
    if array.ndim != 1 or (array.dtype.kind not in "iu" and array.size):
        raise TypeError(
            f"rows must be a slice, a 1-D array of lane indices or a boolean mask of "
            f"length {B}; received {array.dtype} array of shape {tuple(array.shape)}."
        )
    array = array.astype(np.int64)
    if array.size and (array.min() < -B or array.max() >= B):
        raise ValueError(
            f"rows must be lane indices in [0, {B}) (or negative from the end); received "
            f"values from {array.min()} to {array.max()}."
        )
    return array % B


def _place(
    rows: np.ndarray, valid: np.ndarray, full: bool, width: int, dtype: np.dtype | type
) -> np.ndarray:
    """``rows`` [valid steps, width] of a window -> ``[B, T, width]``, zeros on padding
    (``full``: no padding, the rows are every step in row-major order)."""
    B, T = valid.shape
    if full:  # (gather copies: the window never shares memory with the source)
        return rows.reshape(B, T, width).astype(dtype, copy=False)
    placed = np.zeros((B, T, width), dtype=dtype)
    placed[valid] = rows
    return placed


def window_arrays(
    plan: Plan,
    k: int,
    lane_rows: np.ndarray,
    *,
    source: Source,
    lengths: np.ndarray,
    num_features: int,
    targets: TargetSpec,
    series_length: int | None,
) -> dict[str, np.ndarray]:
    """The arrays of window ``k`` of ``plan`` for lanes ``lane_rows``, keyed by the fields of
    :class:`Window` (``x`` [B, T, F], ``y`` [B, T, O], ``loss_mask``, ``reset``,
    ``seq``, ``step`` [B, T]); zeros (``-1`` for ``seq`` and ``step``) on padding."""
    seq, step, valid = plan.locate(k, lane_rows)
    B, T = seq.shape
    # A window without padding (most of them) skips the zero fill and the boolean scatters:
    # its valid steps, in row-major order, are all of them.
    full = bool(valid.all())
    if full:
        seq_valid, step_valid = seq.ravel(), step.ravel()
    else:
        seq_valid, step_valid = seq[valid], step[valid]

    x = _place(source.gather(seq_valid, step_valid), valid, full, num_features, np.float32)

    spec = targets
    y = np.zeros((B, T, spec.num_outputs), dtype=spec.dtype)
    mask = np.zeros((B, T), dtype=bool)
    if spec.kind == "shift":
        if series_length is not None:
            # Targets index the whole series, so they cross segment boundaries.
            segments = cast(FlatSource, source)  # a series is one flat array
            position = segments.offsets[seq_valid] + step_valid
            has_target = position + spec.shift < series_length
        else:
            has_target = step_valid + spec.shift < lengths[seq_valid]
        if has_target.all():
            rows = source.gather(seq_valid, step_valid + spec.shift)
        else:
            rows = np.zeros((len(seq_valid), spec.num_outputs), dtype=spec.dtype)
            rows[has_target] = source.gather(
                seq_valid[has_target], step_valid[has_target] + spec.shift
            )
        y = _place(rows, valid, full, spec.num_outputs, spec.dtype)
        mask[valid] = has_target
    elif spec.kind == "steps":
        steps_source = cast(Source, spec.source)  # kind 'steps' has one
        y = _place(
            steps_source.gather(seq_valid, step_valid), valid, full, spec.num_outputs, spec.dtype
        )
        mask = valid.copy()
    elif spec.kind == "labels":
        y[valid] = cast(np.ndarray, spec.labels)[seq_valid]  # kind 'labels' has them
        mask[valid] = step_valid == lengths[seq_valid] - 1

    return {
        "x": x,
        "y": y,
        "loss_mask": mask,
        "reset": valid & (step == 0),
        "seq": seq.astype(np.int64, copy=False),
        "step": step.astype(np.int64, copy=False),
    }
