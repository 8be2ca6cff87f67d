"""Windows as the training loop and evaluation feed them to the model, kept between passes.

A window of :class:`~seqstate.lanes.lanes.Lanes` is gathered from its source, its timeline
planned and its tensors moved to the device before the model sees it. On a small model that
costs about as much as the model's own step, and when the layout does not change between
passes (validation lanes, or training lanes without shuffle) it gives the same tensors every
time. :class:`WindowCache` keeps them from the first complete pass, within a memory budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

from seqstate.core.timeline import Timeline
from seqstate.lanes.lanes import Lanes
from seqstate.train.tensors import to_device

__all__ = ["PreparedWindow", "WindowCache", "prepared_windows"]


class PreparedWindow(NamedTuple):
    """One window as a pass feeds it to the model (see :func:`to_device`)."""

    x: torch.Tensor  # (B, T, F) on the device, in the model's dtype
    y: torch.Tensor  # (B, T, O)
    mask: torch.Tensor  # (B, T) loss mask
    reset: torch.Tensor  # (B, T)
    model_mask: torch.Tensor | None  # (B, T) real input, None when no step is padding
    timeline: Timeline | None
    counted: int  # steps whose target counts
    seq: torch.Tensor  # (B, T) sequence index, -1 for padding (on the host)
    real: int = 0  # steps that are not padding
    # (lowest, highest) integer target among the counted steps; None for float targets or
    # when no step counts. Read on the host, so a label check needs no device sync.
    label_range: tuple[int, int] | None = None


def prepared_windows(
    lanes: Lanes,
    rows: Any,
    device: torch.device,
    dtype: torch.dtype,
    *,
    epoch: int = 0,
    start: int = 0,
) -> Iterator[PreparedWindow]:
    """The windows of ``rows`` of ``lanes`` in ``epoch`` from window ``start`` on, on
    ``device``, built as they are read."""
    for window in lanes.windows(epoch, start=start, rows=rows):
        B, T = window.seq.shape
        # counted on the host with numpy (a tensor op costs more than this work)
        seq = window.seq.numpy(force=True)
        loss_mask = window.loss_mask.numpy(force=True)
        real = int(np.count_nonzero(seq >= 0))
        counted = int(np.count_nonzero(loss_mask))
        label_range = None
        if counted and not window.y.is_floating_point() and window.y.shape[-1] > 0:
            labels = window.y.numpy(force=True)[..., 0][loss_mask]
            label_range = (int(labels.min()), int(labels.max()))
        model_mask = None if real == B * T else window.valid
        x, y, mask, reset, model_mask, timeline = to_device(window, model_mask, device, dtype)
        yield PreparedWindow(
            x, y, mask, reset, model_mask, timeline, counted, window.seq, real, label_range
        )


class WindowCache:
    """Prepared windows kept between passes over the same lanes.

    Training validates the same lanes (epoch 0, unshuffled) after every epoch, and without
    shuffle trains on the same layout every epoch; building their windows (gathering the rows,
    planning each window's timeline, moving it to the device) costs about as much as running a
    small model on them, and gives the same tensors every time. A cache keeps them from the
    first complete pass while they fit in ``budget`` bytes; past that, every pass builds them
    again. Neither the model nor the loss writes into its inputs, so a kept window gives
    exactly the outputs of a fresh one.
    """

    def __init__(self, budget: int = 128 * 2**20) -> None:
        if not isinstance(budget, int) or budget < 0:
            raise ValueError(f"budget must be a non-negative int (bytes); received {budget!r}")
        self.budget = budget
        # (rows, device, dtype) -> (the lanes, their windows or None when over budget)
        self._kept: dict[tuple[Any, ...], tuple[Lanes, list[PreparedWindow] | None]] = {}

    def windows(
        self,
        lanes: Lanes,
        rows: Any,
        device: torch.device,
        dtype: torch.dtype,
        *,
        start: int = 0,
    ) -> Iterator[PreparedWindow]:
        """The windows of ``rows`` of ``lanes`` (epoch 0) from window ``start`` on, kept from
        the first complete pass. Equal to ``prepared_windows(lanes, rows, device, dtype,
        start=start)``; a pass that starts past window 0 (a resumed epoch) is not kept."""
        if rows is None:
            rows_key: Any = None
        elif isinstance(rows, slice):
            rows_key = (rows.start, rows.stop, rows.step)
        else:  # lane indices: not keyed, built every pass
            yield from prepared_windows(lanes, rows, device, dtype, start=start)
            return
        key = (rows_key, str(device), dtype)
        kept = self._kept.get(key)
        if kept is not None and kept[0] is lanes:
            if kept[1] is not None:
                if start > len(kept[1]):  # the same error as Lanes.windows
                    yield from prepared_windows(lanes, rows, device, dtype, start=start)
                    return
                yield from kept[1][start:]
                return
            yield from prepared_windows(lanes, rows, device, dtype, start=start)
            return
        if start:
            yield from prepared_windows(lanes, rows, device, dtype, start=start)
            return
        windows: list[PreparedWindow] | None = []
        size = 0
        for window in prepared_windows(lanes, rows, device, dtype):
            if windows is not None:
                size += sum(
                    t.numel() * t.element_size()
                    for t in (window.x, window.y, window.mask, window.reset, window.seq)
                )
                if size <= self.budget:
                    windows.append(window)
                else:
                    windows = None
            yield window
        self._kept[key] = (lanes, windows)
