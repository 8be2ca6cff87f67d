"""The timeline of :mod:`seqstate.core.layers`: every row of a window on its own timeline, one
fused call per layer, exact through resets and masks by saturated flag inputs.

The layers' module docstring shows the picture; this module holds the index plan (where each
step and flag goes), the row remap that moves steps in and out (and their gradients back) by
one index_select each, the flag weights and the saturation bound that proves them exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from seqstate._validate import check_flags
from seqstate.core.kernels import LayerKernels
from seqstate.core.state import State

__all__ = ["FLAG", "Timeline", "check_timeline", "flag_pattern", "plan_window", "run_timeline"]

# Flag weight: saturates sigmoid to exactly 0/1 (and ReLU to 0) in float32 and float64 as long
# as the rest of the pre-activation stays below _SAFE_BOUND: sigmoid(-x) underflows to exactly 0
# for x > ~750 (float64) and the margin leaves room for rounding.
FLAG = 1.0e4
_SAFE_BOUND = 0.5 * FLAG


class Timeline:
    """The timeline of one window: where each step and flag goes, from its ``reset`` and
    ``mask`` [B, T] alone, built once and handed to every layer that runs the window.

    A pure function of the flags (not of x, the state or the weights), so a window can carry
    it from where it is made (:class:`seqstate.lanes.lanes.Lanes` builds it with the window,
    off the training step) through ``SequenceModel(..., timeline=)`` to each layer, which then
    neither re-validates the flags nor plans (NumPy, on the host) nor asks the device whether
    the window needs the timeline at all.

    Args:
        reset: ``[B, T]`` bool (or 0/1 integers), or None.
        mask: ``[B, T]`` bool (or 0/1 integers), or None; an all-True mask is no mask.

    A layer uses a timeline only for the very tensors it was built from (the same objects, not
    written to since: :meth:`describes`); given other flags it plans them itself, so a stale
    timeline costs time, never correctness. Pass ``reset=timeline.reset, mask=timeline.mask``.
    """

    __slots__ = (
        "_flags",
        "_moved",
        "_sources",
        "_versions",
        "batch_size",
        "device",
        "initial",
        "length",
        "mask",
        "plan",
        "reset",
    )

    def __init__(
        self,
        reset: torch.Tensor | None,
        mask: torch.Tensor | None,
        *,
        device: torch.device | str | None = None,
    ) -> None:
        if reset is None and mask is None:
            raise ValueError(
                "Timeline needs reset= or mask= (a [B, T] bool tensor); a window with neither "
                "runs as one plain fused call and needs no timeline"
            )
        like = reset if reset is not None else mask
        if not isinstance(like, torch.Tensor) or like.dim() != 2:
            shape = tuple(like.shape) if isinstance(like, torch.Tensor) else type(like).__name__
            raise TypeError(
                f"Timeline: reset and mask must be [B, T] bool tensors; received {shape}"
            )
        B, T = (int(n) for n in like.shape)
        target = torch.device(device) if device is not None else like.device
        given_reset, given_mask = reset, mask
        reset = check_flags(reset, "reset", B, T, target)
        mask = check_flags(mask, "mask", B, T, target)
        reset_host = None if reset is None else reset.cpu().numpy()
        mask_host = None if mask is None else mask.cpu().numpy()
        if mask_host is not None and mask_host.all():
            mask, mask_host = None, None
        self.reset = reset
        self.mask = mask
        self.batch_size, self.length = B, T
        self.device = target
        # the tensors it describes, and their version counters (an in-place write changes them)
        self._sources = (given_reset, given_mask, reset, mask)
        self._versions = _versions(self._sources)
        self._flags: dict[torch.dtype, torch.Tensor] = {}
        self.initial: torch.Tensor | None = None
        self.plan: _Plan | None = None
        mid_row = reset_host is not None and T > 1 and bool(reset_host[:, 1:].any())
        if T == 0:
            pass
        elif mask_host is None and not mid_row:  # one plain fused call; resets at column 0
            if reset_host is not None and reset_host[:, 0].any():
                self.initial = reset[:, 0]  # type: ignore[index]  # not None here
        else:
            self.plan = _plan(reset_host, mask_host, B, T, True)
        self._moved = None if self.plan is None else _MovedPlan.of(self.plan, target)

    @property
    def plain(self) -> bool:
        """The window runs as one plain fused call (no mask, no reset after column 0)."""
        return self.plan is None

    @property
    def zero_steps(self) -> bool:
        """The timeline has zero steps (resets inside rows), which the tanh RNN cannot take."""
        return self.plan is not None and self.plan.zero_steps

    def describes(
        self, reset: torch.Tensor | None, mask: torch.Tensor | None, x: torch.Tensor
    ) -> bool:
        """Whether this is the timeline of ``reset`` and ``mask`` for ``x`` [B, T, F]: they are
        the tensors it was built from (or its own normalised ``reset``/``mask``), unchanged
        since, on x's device. An identity check, not a comparison of values."""
        given_reset, given_mask, own_reset, own_mask = self._sources
        if not (reset is given_reset or reset is own_reset):
            return False
        if not (mask is given_mask or mask is own_mask):
            return False
        shape = x.shape
        return (
            shape[0] == self.batch_size
            and shape[1] == self.length
            and x.device == self.device
            and _versions(self._sources) == self._versions
        )

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> Timeline:
        """The same plan with its tensors on ``device`` (self when already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        moved = object.__new__(Timeline)
        for name in ("batch_size", "length", "plan"):
            setattr(moved, name, getattr(self, name))

        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device, non_blocking=non_blocking)

        moved.reset, moved.mask, moved.initial = (
            move(self.reset),
            move(self.mask),
            move(self.initial),
        )
        moved.device = device
        moved._sources = (moved.reset, moved.mask, moved.reset, moved.mask)
        moved._versions = _versions(moved._sources)
        moved._flags = {}
        moved._moved = None if self.plan is None else _MovedPlan.of(self.plan, device)
        return moved

    def flags(self, dtype: torch.dtype) -> torch.Tensor:
        """The (zero, hold) flag inputs ``[T', B, 2]`` in ``dtype`` (cached per dtype)."""
        flags = self._flags.get(dtype)
        if flags is None:
            plan = self.plan
            if plan is None:
                raise ValueError("a plain window has no timeline flags")
            flags = torch.from_numpy(plan.flags).to(device=self.device, dtype=dtype)
            self._flags[dtype] = flags
        return flags

    def __repr__(self) -> str:
        kind = "plain" if self.plan is None else f"timeline of {self.plan.steps} steps"
        return f"Timeline(B={self.batch_size}, T={self.length}, {kind})"


def check_timeline(timeline: Any, owner: str) -> None:
    """Refuse a ``timeline=`` that is neither a :class:`Timeline` nor None (TypeError), for
    every layer and model that takes one, fused or step by step."""
    if timeline is not None and not isinstance(timeline, Timeline):
        raise TypeError(
            f"{owner}: timeline must be a seqstate Timeline (the window's plan, e.g. "
            f"Window.timeline) or None; received {type(timeline).__name__}. Leave it out to "
            "plan from reset and mask"
        )


def host_only(fn: Any) -> Any:
    """``fn`` kept out of any compiled graph (``torch.compiler.disable``), applied when first
    called under compilation: the decorator imports ``torch._dynamo``, which costs as much as
    importing torch itself (2-3 s), and a process that never compiles (``predict``,
    ``forecast``, ``serve``) should not pay it for two functions it calls eagerly."""
    disabled: list[Any] = []  # torch.compiler.disable(fn), once made

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if not torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        if not disabled:
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)

    return call


# Host work by design, also under torch.compile (see _plan): built outside the graph.
@host_only
def plan_window(reset: torch.Tensor | None, mask: torch.Tensor | None) -> Timeline:
    """``Timeline(reset, mask)``, built outside any compiled graph (the layers' own planning)."""
    return Timeline(reset, mask)


def _versions(tensors: tuple[torch.Tensor | None, ...]) -> tuple[int, ...]:
    """Version counters (-1 for None, or for inference tensors, which have none)."""
    versions = []
    for tensor in tensors:
        try:
            versions.append(-1 if tensor is None else tensor._version)
        except RuntimeError:
            versions.append(-1)
    return tuple(versions)


@dataclasses.dataclass(frozen=True)
class _MovedPlan:
    """The index arrays of a :class:`_Plan` as tensors on the window's device."""

    reads: torch.Tensor
    writes: torch.Tensor
    fill: torch.Tensor
    last: torch.Tensor
    padding: torch.Tensor | None
    empty_rows: torch.Tensor | None
    initial: torch.Tensor | None
    tail: torch.Tensor | None
    writes_to_fill: torch.Tensor | None  # writes, padding steps sent to a fill slot (or None)

    @staticmethod
    def of(plan: _Plan, device: torch.device) -> _MovedPlan:
        def moved(array: np.ndarray | None) -> torch.Tensor | None:
            return None if array is None else torch.from_numpy(array).to(device)

        return _MovedPlan(
            reads=torch.from_numpy(plan.reads).to(device),
            writes=torch.from_numpy(plan.writes).to(device),
            fill=torch.from_numpy(plan.fill).to(device),
            last=torch.from_numpy(plan.last).to(device),
            padding=moved(plan.padding),
            empty_rows=moved(plan.empty_rows),
            initial=moved(plan.initial),
            tail=moved(plan.tail),
            writes_to_fill=moved(plan.writes_to_fill),
        )


def run_timeline(
    rnn: LayerKernels, x: torch.Tensor, state: State, timeline: Timeline
) -> tuple[torch.Tensor, State] | None:
    """Every row on its own timeline, one fused call per layer (module docstring).

    ``timeline`` is the window's (:meth:`Timeline.describes` checked by the caller) and not
    plain. Returns None when the timeline is not exact for this layer: zero steps for a cell
    that cannot take them, or the saturation bound fails (the caller then runs ``split``).

    Each op here costs several times its isolated time next to the fused call (the kernel
    evicts the caches), so the path keeps them few: where every real step keeps its column
    (padding only at row ends, no zero steps) and the fill steps output exactly 0, the steps
    go in and out as transposed views (no gathers); elsewhere one gather in and one out,
    which also reads each row's final h.
    """
    plan, moved = timeline.plan, timeline._moved
    if plan is None or moved is None:
        raise ValueError("run_timeline needs a timeline that is not plain")
    if plan.zero_steps and not rnn.can_zero():
        return None
    B, T, F = x.shape
    H = rnn.hidden_size
    steps = plan.steps
    if moved.initial is not None:
        state = state.reset_rows(moved.initial)
    tail = moved.tail
    if steps == 0:  # no row has a real step
        return x.new_zeros(B, T, H), state if tail is None else state.reset_rows(tail)
    reads, writes, fill, last = moved.reads, moved.writes, moved.fill, moved.last
    padding, empty_rows = moved.padding, moved.empty_rows
    flags = timeline.flags(x.dtype)  # (T', B, 2)
    # zero and hold steps that output exactly 0 whatever they read (LSTM, ReLU) need no
    # zeroed input: their slots read any real step (within the saturation bound's input max)
    fill_free = rnn.fill_outputs_zero()
    in_place = plan.in_place and fill_free  # slot p * B + b is step (b, p): views, no gathers
    if in_place:
        layer_input = (x if steps == T else x[:, :steps]).transpose(0, 1)  # (T', B, F)
    elif x.requires_grad:
        input_fill = None if fill_free else fill
        layer_input = _Remap.apply(x.reshape(B * T, F), reads, input_fill, writes, padding)
    else:  # (training data: no gradient to route back, so no autograd node either)
        layer_input = _pick_rows(x.reshape(B * T, F), reads, None if fill_free else fill)
    layer_input = layer_input.view(steps, B, F) if not in_place else layer_input

    initial_tensors = state.tensors()
    # the saturation bound, before the calls where the cell bounds its outputs (its terms
    # are known then, and a window that fails it costs no wasted call)
    bounded = rnn.output_bound() is not None
    if bounded and rnn.can_zero() and not _saturates(rnn, x, initial_tensors[0], None):
        return None
    finals: list[list[torch.Tensor]] = [[] for _ in initial_tensors]
    outputs = []  # each layer's, for the saturation bound of a cell with unbounded outputs
    top = rnn.num_layers - 1
    y: torch.Tensor | None = None
    for layer in range(rnn.num_layers):
        weights = list(rnn.layer_weights(layer))
        b_ih = weights[2] if rnn.bias else None
        weights[0] = torch.cat([weights[0], rnn.flag_columns(b_ih, weights[0])], dim=1)
        hx = list(initial_tensors) if top == 0 else [t[layer : layer + 1] for t in initial_tensors]
        layer_input = torch.cat([layer_input, flags], dim=-1)
        if x.is_cuda:
            with _fresh_weights_quiet():
                output, hx_out = rnn.sequence_kernel(layer_input, hx, weights)
        else:
            output, hx_out = rnn.sequence_kernel(layer_input, hx, weights)
        if not bounded:
            outputs.append(output)
        flat = output.view(steps * B, H)
        # h at the row's last real step (hold steps keep an LSTM's c, not its h, and a GRU's
        # h only to rounding); on the top layer read by the same gather as the outputs
        if layer == top and not in_place:
            if fill_free and moved.writes_to_fill is not None:
                # padding steps read a fill slot's exact 0 (no zeroing pass); its gradient
                # there is dropped, which is exact: a saturated gate passes none back
                y, h_last = _Outputs.apply(flat, moved.writes_to_fill, None, last, reads, fill)
            else:
                y, h_last = _Outputs.apply(flat, writes, padding, last, reads, fill)
        else:
            h_last = flat.index_select(0, last)
        if empty_rows is not None:  # rows without a real step keep their state
            h_last = torch.where(empty_rows[:, None], hx[0][0], h_last)
        finals[0].append(h_last)
        for parts, tensor in zip(finals[1:], hx_out[1:], strict=True):
            parts.append(tensor)
        if layer < top and rnn.dropout > 0 and rnn.training:
            output = functional.dropout(output, rnn.dropout, True)
        layer_input = output
    if not bounded and rnn.can_zero() and not _saturates(rnn, x, initial_tensors[0], outputs):
        return None
    if y is None:  # in place: the time-major outputs, batch-first as a view
        y = layer_input.transpose(0, 1)  # (B, T', H); padding steps are hold steps: 0
        if steps < T:  # (every row ends in padding: the columns past the longest row)
            y = functional.pad(y, (0, 0, 0, T - steps))
    else:
        y = y.view(B, T, H)
    if tail is not None:  # a reset after the row's last real step: zero state at the end
        finals = [[torch.where(tail[:, None], 0, t) for t in parts] for parts in finals]
    # h_last is [B, H] per layer; the other fields come from the kernel as [1, B, H]
    hidden = torch.stack(finals[0]) if top else finals[0][0].unsqueeze(0)
    others = [torch.cat(parts) if top else parts[0] for parts in finals[1:]]
    return y, rnn.make_state(hidden, *others)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Where each step and flag of a window goes on the timeline (host arrays, int64 unless
    said). The timeline runs time-major (the kernels' own layout: no transposes), flattened to
    [T' * B, .]: slot ``p * B + b`` is position p of row b; step ``b * T + t`` is x[b, t].
    ``writes`` and ``reads`` are each other's inverse where both have a partner, so moving rows
    either way, and their gradients back, is one index_select; the rest is zero-filled."""

    steps: int  # T', the longest row's real + zero steps
    reads: np.ndarray  # [T' * B]: the step each slot reads (any step for a stepless slot)
    writes: np.ndarray  # [B * T]: the slot each step writes (any slot for a padding step)
    fill: np.ndarray  # slots without a step: zero and hold steps
    padding: np.ndarray | None  # steps without a slot (masked); None without a mask
    # writes with each padding step sent to a zero or hold slot instead, for cells whose fill
    # slots output exactly 0; None without padding or without a fill slot
    writes_to_fill: np.ndarray | None
    flags: np.ndarray  # [T', B, 2] float: (zero, hold) flag of each slot
    last: np.ndarray  # [B]: the slot of each row's last real step (0 for a row without one)
    zero_steps: bool  # the timeline has zero steps (resets inside rows)
    # every real step keeps its column (slot t * B + b is step (b, t)): padding only at row
    # ends and no zero steps, so steps can move in and out as transposed views
    in_place: bool
    initial: np.ndarray | None  # [B] bool: reset before the row's first real step; None: none
    tail: np.ndarray | None  # [B] bool: reset after the row's last real step; None: none
    empty_rows: np.ndarray | None  # [B] bool: rows without a real step; None: none


# Host NumPy by design, also under torch.compile: traced by dynamo, its data-dependent sizes
# would break the graph many times over, and its bool cumsums met a kernel that has none.
@host_only
def _plan(
    reset: np.ndarray | None, mask: np.ndarray | None, B: int, T: int, can_zero: bool
) -> _Plan | None:
    """The timeline of a window from its ``reset`` and ``mask`` [B, T] (bool, on the host:
    a few dozen NumPy operations on B * T integers cost far less than as many tensor ops).
    None when it needs zero steps that the cell cannot take (the tanh RNN)."""
    columns = np.arange(T)
    inserted = initial = tail = None
    if mask is None:
        if reset is None:  # (the caller sends such windows to one plain fused call)
            reset = np.zeros((B, T), dtype=bool)
        initial = reset[:, 0]
        inserted = reset & (columns > 0)  # (B, T): a zero step goes before step t
        shifted = inserted.cumsum(1)
        position = columns + shifted  # (B, T): timeline position of step t
        length = T + shifted[:, -1]  # (B,): real + zero steps of each row
    elif reset is None:  # padding only: real steps move left
        seen = mask.cumsum(1)  # (B, T): real steps up to and including t
        position = seen - 1
        length = seen[:, -1]
    else:
        counts = reset.cumsum(1)  # (B, T): resets up to and including step t
        # resets up to the last real step <= t, and < t (0 before the first real step)
        at_real = np.maximum.accumulate(np.where(mask, counts, 0), axis=1)
        before = np.pad(at_real[:, :-1], ((0, 0), (1, 0)))
        seen = mask.cumsum(1)
        fresh = mask & (counts > before)  # a reset since the previous real step
        initial = (fresh & (seen == 1)).any(1)  # before the first real step
        inserted = fresh & (seen > 1)  # mid-row: a zero step before step t
        tail = counts[:, -1] > at_real[:, -1]  # after the last real step
        shifted = inserted.cumsum(1)
        position = seen - 1 + shifted
        length = seen[:, -1] + shifted[:, -1]
    zero_steps = inserted is not None and bool(inserted.any())
    if zero_steps and not can_zero:
        return None
    in_place = not zero_steps and (mask is None or bool((position == columns)[mask].all()))
    steps = int(length.max())
    rows = np.arange(B)
    slot_index = position * B + rows[:, None]  # (B, T)
    reads = np.zeros(steps * B, dtype=np.int64)
    padding = None
    if mask is None:
        writes = slot_index.ravel()
        reads[writes] = np.arange(B * T)
    else:
        reads[slot_index[mask]] = np.flatnonzero(mask)
        writes = np.where(mask, slot_index, 0).ravel()
        padding = np.flatnonzero(~mask)
    is_hold = np.arange(steps)[:, None] >= length  # (T', B)
    zero_slots = np.zeros(steps * B, dtype=bool)
    if inserted is not None:
        zero_slots[(slot_index - B)[inserted]] = True
    is_zero = zero_slots.reshape(steps, B)
    fill = np.flatnonzero(is_zero | is_hold)
    writes_to_fill = None
    if padding is not None and padding.size and fill.size:
        writes_to_fill = writes.copy()
        writes_to_fill[padding] = fill[0]
    return _Plan(
        steps=steps,
        reads=reads,
        writes=writes.astype(np.int64, copy=False),
        fill=fill,
        padding=padding,
        writes_to_fill=None if writes_to_fill is None else writes_to_fill.astype(np.int64),
        flags=np.stack([is_zero, is_hold], axis=-1).astype(np.float64),
        last=np.maximum(length - 1, 0) * B + rows,
        zero_steps=zero_steps,
        in_place=in_place,
        initial=initial if initial is not None and initial.any() else None,
        tail=tail if tail is not None and tail.any() else None,
        empty_rows=None if mask is None or length.min() > 0 else length == 0,
    )


def _saturates(
    rnn: LayerKernels,
    x: torch.Tensor,
    hidden: torch.Tensor,
    outputs: list[torch.Tensor] | None,
) -> bool:
    """Whether every flagged gate saturates exactly: for each layer, a bound on |gate
    pre-activation| without the flags (the largest input row norm x input max + recurrent
    row norm x state max + the largest biases) stays below ``_SAFE_BOUND``.

    ``hidden`` [L, B, H] is the initial h; the state max of a layer is the larger of its
    initial |h| and :meth:`~seqstate.core.kernels.LayerKernels.output_bound`, or, for a cell
    without one, of its ``outputs`` (each [T', B, H], after the calls). The weight terms
    change only when the weights do: they are cached (:func:`_weight_terms`), so a call
    costs a few maxima and one transfer of them to the host (a sync on a GPU)."""
    terms = _weight_terms(rnn)
    x, hidden = x.detach(), hidden.detach()  # (no graph for the bound)
    if outputs is None and len(terms) == 1:  # (the common case in its fewest ops)
        x_low, x_high, h_low, h_high = torch.stack([*x.aminmax(), *hidden.aminmax()]).tolist()
        values = [_extent(x_low, x_high), _extent(h_low, h_high)]
    else:
        states = hidden.abs().amax(dim=(1, 2))  # (L,)
        if outputs is not None:
            produced = torch.stack([output.detach().abs().max() for output in outputs])
            states = torch.maximum(states, produced)
        values = torch.cat([x.abs().max()[None], states]).tolist()
    floor = rnn.output_bound()
    input_max = values[0]
    bounds = []
    for layer, (w_ih, w_hh, biases) in enumerate(terms):
        state_max = values[layer + 1]
        if floor is not None and state_max < floor:  # (a NaN stays NaN, and fails below)
            state_max = floor
        bounds.append(w_ih * input_max + w_hh * state_max + biases)
        input_max = state_max
        if layer < rnn.num_layers - 1 and rnn.dropout > 0 and rnn.training:
            input_max = state_max / (1.0 - rnn.dropout)  # dropout scales its outputs up
    return all(bound <= _SAFE_BOUND for bound in bounds)  # NaN fails too


def _extent(low: float, high: float) -> float:
    """max(|low|, |high|), NaN when either is NaN."""
    if low != low or high != high:  # (NaN)
        return float("nan")
    return high if high >= -low else -low


# layer module -> (weak references to its weights, their storage and versions, per layer
# (input row norm, recurrent row norm, largest biases)). Outside the module, so it neither
# pickles nor travels with a copy; weak references, so a replaced weight is never matched by a
# new tensor that reuses its address.
_WEIGHT_TERMS: weakref.WeakKeyDictionary[Any, tuple[Any, ...]] = weakref.WeakKeyDictionary()


def _weight_terms(rnn: LayerKernels) -> list[tuple[float, float, float]]:
    """Per layer: (max row sum of |W_ih|, max row sum of |W_hh|, sum of the largest |bias|),
    cached against the weights' identities, storage and version counters (an optimizer step,
    ``load_state_dict``, ``.to()`` or any in-place write changes one of them)."""
    weights = [w for layer in range(rnn.num_layers) for w in rnn.layer_weights(layer)]
    try:
        key: tuple[Any, ...] | None = tuple((w.data_ptr(), w._version) for w in weights)
    except RuntimeError:  # inference tensors have no version counter: never cached
        key = None
    cached = _WEIGHT_TERMS.get(rnn) if key is not None else None
    if (
        cached is not None
        and cached[1] == key
        and all(ref() is w for ref, w in zip(cached[0], weights, strict=True))
    ):
        return cached[2]
    norms = []
    for layer in range(rnn.num_layers):
        layer_weights = rnn.layer_weights(layer)
        # (abs().sum(1).max(): several times faster than linalg.matrix_norm(ord=inf) here)
        norms.append(layer_weights[0].abs().sum(1).max())
        norms.append(layer_weights[1].abs().sum(1).max())
        biases = [bias.abs().max() for bias in layer_weights[2:]]
        norms.append(torch.stack(biases).sum() if biases else layer_weights[0].new_zeros(()))
    values = torch.stack(norms).double().tolist()
    terms = [(values[i], values[i + 1], values[i + 2]) for i in range(0, len(values), 3)]
    if key is not None:
        with contextlib.suppress(TypeError):  # not weakly referenceable: computed each call
            _WEIGHT_TERMS[rnn] = ([weakref.ref(w) for w in weights], key, terms)
    return terms


class _Outputs(torch.autograd.Function):
    """The top layer's outputs and each row's final h in one gather: ``(rows, last)`` of
    ``source`` [N, H] are :class:`_Remap`'s rows and ``source[last]`` [B, H]. Backward is
    :class:`_Remap`'s one index_select plus an in-place index_add of the B rows of h's
    gradient (not a second [N, H] gradient for autograd to allocate and add)."""

    @staticmethod
    def forward(
        ctx: Any,
        source: torch.Tensor,
        index: torch.Tensor,
        fill: torch.Tensor | None,
        last: torch.Tensor,
        inverse: torch.Tensor,
        inverse_fill: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(inverse, inverse_fill, last)
        ctx.shape = source.shape
        return _pick_rows(source, index, fill), source.index_select(0, last)

    @staticmethod
    def backward(ctx: Any, grad_rows: torch.Tensor | None, grad_last: torch.Tensor | None):
        inverse, inverse_fill, last = ctx.saved_tensors
        if grad_rows is None:
            if grad_last is None:
                return None, None, None, None, None, None
            grad = grad_last.new_zeros(ctx.shape)
        else:
            grad = _pick_rows(grad_rows, inverse, inverse_fill)  # a new tensor: ours to add to
        if grad_last is not None:
            grad.index_add_(0, last, grad_last)
        return grad, None, None, None, None, None


class _Remap(torch.autograd.Function):
    """Rows ``index`` [M] of ``source`` [N, D], with the rows listed in ``fill`` zeroed; the
    gradient goes back the same way by ``inverse`` [N] and ``inverse_fill``. ``index`` must be
    injective outside ``fill``, and ``inverse`` its inverse there, so both directions are one
    index_select (index_select's own backward accumulates with index_add, several times
    slower) and an in-place index_fill_ (a masked fill with a row mask is slower still)."""

    @staticmethod
    def forward(
        ctx: Any,
        source: torch.Tensor,
        index: torch.Tensor,
        fill: torch.Tensor | None,
        inverse: torch.Tensor,
        inverse_fill: torch.Tensor | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(inverse, inverse_fill)
        return _pick_rows(source, index, fill)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        inverse, inverse_fill = ctx.saved_tensors
        return _pick_rows(grad, inverse, inverse_fill), None, None, None, None


def _pick_rows(source: torch.Tensor, index: torch.Tensor, fill: torch.Tensor | None):
    rows = source.index_select(0, index)
    return rows if fill is None or fill.numel() == 0 else rows.index_fill_(0, fill, 0)


@contextlib.contextmanager
def _fresh_weights_quiet() -> Iterator[None]:
    """cuDNN warns when an RNN's weights are not one flat buffer (it then packs them for the
    call); the timeline's weights (with the flag columns) are new tensors every call, so that
    packing is expected, and the warning would only alarm (and fail warnings-as-errors)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not part of single contiguous chunk")
        yield


@functools.lru_cache(maxsize=64)
def flag_pattern(
    pattern: tuple[tuple[float, float], ...], H: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Constant flag weights ``[len(pattern) * H, 2]``: each gate's (zero, hold) pair repeated
    over its H rows. Cached (built once per cell kind, size, dtype and device); never written."""
    return torch.tensor(pattern, dtype=dtype, device=device).repeat_interleave(H, dim=0)
