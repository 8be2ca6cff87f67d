"""Streams: many live sequences advanced step by step, each with its own state, batched.

    streams = Streams(model)
    y = streams.step(["a", "b"], x)      # x [2, F] -> y [2, O]: one model call for both
    y = streams.step(["a"], x)           # x [1, k, F] -> y [1, k, O]: k more steps of "a"
    streams.end("b")

Stepping a stream piece by piece gives the outputs :func:`seqstate.predict` gives for the
whole sequence (chunked == whole). A step of several streams is one model call: their states
are gathered into one batch, advanced, and written back.

The states live in one stacked buffer ``[layers, capacity, H]`` per state field, with a map
``id -> row``; a step gathers its rows with one ``index_select`` and writes them back with one
in-place ``index_copy_`` whatever the number of streams (benchmarks/predict.py compares this
with a dict of per-stream states); a step of every live stream in row order uses the rows in
place (and, for a few streams, keeps the new rows as the kernels return them until anything
else needs the buffer: see ``Streams._buffer``). Ending a stream moves the last row into its
place, so live rows stay contiguous.

One step per stream (``x`` [n, F]) is the hot path: it is validated here, once, and then runs
the model's trusted step entry (:meth:`seqstate.SequenceModel._trusted_step`: the layers'
cell kernels and the head, bit for bit what ``forward`` computes) when the model has one and
nothing (a hook, an override) needs ``forward``; any other model runs its ``forward``.

:func:`advance` is the pure function underneath, for callers that keep states elsewhere:
``y, state = advance(model, state, x)``. A one-step state it returns keeps the cell kernels'
2-D outputs and makes its 3-D fields only when something reads them
(:meth:`seqstate.State._of_layers`), and a step from such a state (or from the state given
last) is recognised by a few identity and shape tests before the full checks, which take
every call those tests do not recognise.

The model is checked once against the declared protocol (:class:`seqstate.SequenceCore`,
by :func:`seqstate.core.protocol.check_sized_core`, one message for every entry point).

Streams is not thread-safe: call it from one thread.
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from seqstate.core.protocol import SequenceCore
from seqstate.core.state import State
from seqstate.inference.common import ModelInfo, as_numeric, cast_array, prepare_model
from seqstate.inference.direct import DirectStep

__all__ = ["StreamId", "Streams", "advance"]

#: A stream id: a str or an int.
StreamId = str | int
_ID_TYPES = {str, int}  # (exact types: bool, a subclass of int, is refused)


def _check_id(stream_id: Any, name: str = "stream_id") -> StreamId:
    if isinstance(stream_id, np.integer):
        stream_id = int(stream_id)
    if isinstance(stream_id, bool) or not isinstance(stream_id, str | int):
        raise TypeError(
            f"{name} must be a str or an int; received {type(stream_id).__name__} {stream_id!r}"
        )
    return stream_id


def _check_steps(
    x: Any, n: int, info: ModelInfo, name: str, ids: list[StreamId] | None
) -> tuple[np.ndarray, bool]:
    """-> (x [n, k, F] in the model's dtype, whether x was [n, F])."""
    array = as_numeric(x, name)
    F = info.input_size
    if array.ndim not in (2, 3):
        raise ValueError(
            f"{name} must have shape (n, F)=({n}, {F}) (one step per stream) or (n, k, F)="
            f"({n}, k, {F}) (k steps per stream); received {tuple(array.shape)}"
        )
    if array.shape[0] != n or array.shape[-1] != F:
        raise ValueError(
            f"{name} must have shape ({n}, {F}) or ({n}, k, {F}): one row per stream id "
            f"({n}) and F={F} features (input_size); received {tuple(array.shape)}"
        )
    single = array.ndim == 2
    if single:
        array = array[:, None]
    if array.dtype != info.numpy_dtype or not array.flags.c_contiguous:
        array = cast_array(array, info.numpy_dtype)
    # A finite sum means finite values (one reduction; torch's, cheaper than NumPy's for the
    # small arrays of a streamed step); only a sum that is not finite (NaN/inf, or an
    # overflow of large values) is checked value by value.
    total = float(torch.from_numpy(array).sum()) if array.size else 0.0
    if not math.isfinite(total) and not np.isfinite(array).all():
        bad = ~np.isfinite(array)
        row, step = (int(v) for v in np.argwhere(bad.any(axis=2))[0])
        who = f"stream {ids[row]!r}" if ids is not None else f"row {row}"
        raise ValueError(
            f"{name} holds NaN or inf for {who} at step {step} (after conversion to the model's "
            "dtype); no state was changed. Fill or drop missing values first"
        )
    return array, single


# Up to this many state values per field (streams x H), the hot path keeps each step's new
# states as the kernels return them (see Streams._buffer): two copies saved (2-10% of a step
# at 1-100 streams of H=128). Larger states step from the buffer rows and are copied back:
# keeping the kernels' outputs alive makes the allocator hand out fresh memory every step,
# measured 2-4% slower at 1 000 x 128 (benchmarks/predict.py).
_DEFERRED_VALUES = 32_768

# Up to this many values, a finite check sums Python floats (float64: float32 values cannot
# overflow it) rather than running a reduction, whose fixed cost dominates a streamed step.
_SMALL = 64


def _finite_sum(array: np.ndarray) -> bool:
    """Whether the sum of ``array`` is finite, so every value is (or an overflow: then the
    caller checks value by value). A small array (a streamed step) sums faster as Python
    floats (in float64: no overflow of float32 values) than through a NumPy reduction."""
    if array.size <= _SMALL:
        return math.isfinite(sum(array.ravel().tolist()))
    return math.isfinite(array.sum())


def _advance(
    model: nn.Module, state: State, x: torch.Tensor, single: bool
) -> tuple[torch.Tensor, State]:
    """``model(x, state)`` in eval mode without autograd, the training flag restored after.

    ``x`` is [n, k, F], or [n, F] with ``single`` (one step, y [n, O]). One step of a model
    with a trusted step entry (:meth:`seqstate.SequenceModel._trusted_step`: the cell kernels
    and the head, nothing re-validated) takes it; the caller validated ``x`` and ``state``.
    Any other model, or a step the entry must not take (hooks, overrides), runs its forward.

    (Inlined rather than a context manager: this is the streaming hot path.)
    """
    was_training = model.training
    if was_training:
        model.eval()
    grad_was_enabled = torch.is_grad_enabled()
    torch._C._set_grad_enabled(False)  # (torch.no_grad without its context-manager objects)
    try:
        if single:
            steps_directly = getattr(model, "_steps_directly", None)
            if steps_directly is not None and steps_directly():
                return model._trusted_step(x, state)  # type: ignore[operator]
            y, state = model(x[:, None], state)
            return y[:, 0], state
        return model(x, state)
    finally:
        torch._C._set_grad_enabled(grad_was_enabled)
        if was_training:
            model.train()


class _Views(weakref.ref[State]):
    """A weak reference to a State that carries its per-layer 2-D views ``[n, H]`` (what
    the cell kernels take) and drops them when the state dies, so a cached entry never keeps
    a state's memory alive after its caller let it go."""

    __slots__ = ("views",)
    views: Sequence[Sequence[torch.Tensor]] | None


def _drop_views(reference: _Views) -> None:
    reference.views = None


class _Plan:
    """What :func:`advance` needs of one model, read once: its info, the parameter the info
    was read from (dtype and device re-checked on every call: a model moved with ``.to()``
    keeps its parameter objects), its direct step, and the 2-D state views of the last
    3-D state given (see :func:`_layer_views`; a state that ``advance`` returned carries
    its own, :meth:`State._layers`)."""

    __slots__ = ("direct", "given", "info", "layout", "on_cpu", "parameter", "state_type")

    def __init__(self, model: nn.Module, info: ModelInfo) -> None:
        self.info = info
        self.parameter = next(model.parameters())
        self.on_cpu = info.device.type == "cpu"
        self.direct = DirectStep.of(model)
        first_state = cast(SequenceCore, model).initial_state(1)
        # the exact type the direct step's states are made of (a subclass takes the checks)
        self.state_type = type(first_state)
        first = first_state.tensors()[0]
        self.layout = (first.shape[0], first.shape[2])  # (layers, H) of the first field
        # the last 3-D state stepped from, with its views, so that repeated steps from one
        # state find them (see _layer_views)
        self.given: _Views | None = None

    def current(self) -> bool:
        """Whether the model's parameters are still of the dtype and on the device the info
        was read from."""
        parameter, info = self.parameter, self.info
        if parameter.dtype is not info.dtype:
            return False
        return parameter.is_cpu if self.on_cpu else parameter.device == info.device


# model -> its _Plan: advance() may be called per step, so the model is checked once
_PLANS: weakref.WeakKeyDictionary[nn.Module, _Plan] = weakref.WeakKeyDictionary()


# the model advance() saw last and its plan: a weak reference's call instead of a
# WeakKeyDictionary lookup (which makes a new weak reference) on every step
_last: tuple[weakref.ref[nn.Module], _Plan] | None = None


def _plan(model: Any) -> _Plan:
    global _last
    last = _last
    if last is not None and last[0]() is model:
        plan: _Plan | None = last[1]
    else:
        plan = _PLANS.get(model) if isinstance(model, nn.Module) else None
        if plan is not None:
            _last = (weakref.ref(model), plan)
    if plan is not None and plan.current():
        return plan
    model, info = prepare_model(model, None)
    plan = _PLANS[model] = _Plan(model, info)
    _last = (weakref.ref(model), plan)
    return plan


def _layer_views(
    plan: _Plan, state: State, tensors: tuple[torch.Tensor, ...], layers: int
) -> Sequence[Sequence[torch.Tensor]]:
    """Per layer, the state's fields as 2-D tensors ``[n, H]`` (what the cell kernels take).

    A state that a direct step returned carries them (:meth:`State._layers`). For any other,
    views, kept for the last state given while it lives (a view costs about a microsecond, as
    much as the rest of a small step's bookkeeping); a view shares its state's storage, so an
    in-place change of the state is seen, and a weak reference never matches a new state at
    a freed address."""
    rows = state._layers()
    if rows is not None:
        return rows
    reference = plan.given
    if reference is not None and reference() is state:
        views = reference.views
        if views is not None:
            return views
    views = [[t[index] for t in tensors] for index in range(layers)]
    reference = _Views(state, _drop_views)
    reference.views = views
    plan.given = reference
    return views


def advance(model: nn.Module, state: State, x: torch.Tensor) -> tuple[torch.Tensor, State]:
    """Advance a batch of n streams by k steps in one model call; pure (nothing is modified).

    Args:
        model: a :class:`seqstate.SequenceModel` (or the same protocol); run in eval mode under
            ``torch.no_grad``, its training flag restored afterwards.
        state: the streams' states, batch n (e.g. ``State.cat`` of their states).
        x: ``[n, k, F]`` (or ``[n, F]`` for one step) on the model's device and dtype.

    Returns:
        ``y`` ``[n, k, O]`` (``[n, O]`` for ``[n, F]`` input) and the new state, batch n.

    It stands for, per stream i: ``y[i], state[i] = model(x[i][None], state[i])``. One step
    (``[n, F]`` or k = 1) runs the layers' cell kernels, the streaming hot path; ``[n, F]``
    input to a :class:`seqstate.SequenceModel` also skips its ``forward`` (validated here once,
    then its trusted step entry; the same result bit for bit).
    """
    # The hot path: one step [n, F] of the model stepped last, from a state a step returned
    # (or the state given last), recognised with a few identity and shape tests; any other
    # call, and any call these tests do not recognise, takes the checks below (which then
    # accept or refuse it with their messages).
    last = _last
    if last is not None and type(x) is torch.Tensor and last[0]() is model:
        plan = last[1]
        direct = plan.direct
        if direct is not None and type(state) is plan.state_type:
            rows = state._layers()
            if rows is None:
                reference = plan.given
                if reference is not None and reference() is state:
                    rows = reference.views
            shape = x.shape
            if (
                rows is not None
                and len(rows) == plan.layout[0]
                and len(shape) == 2
                and shape[1] == plan.info.input_size
                and rows[0][0].shape == (shape[0], plan.layout[1])
                and x.dtype is plan.info.dtype
                and (x.is_cpu if plan.on_cpu else x.device == plan.info.device)
                and plan.current()
                and _finite(x)
                and direct.applies()
            ):
                y, new = direct.run(x, rows)
                return y, plan.state_type._of_layers(new)
    return _advance_checked(model, state, x)


def _finite(x: torch.Tensor) -> bool:
    """Whether every value of ``x`` [n, F] is finite: a finite sum means finite values (a
    small step's values summed as Python floats, float64, cheaper than a tensor reduction);
    only a sum that is not finite (a NaN/inf, or an overflow of large values) is checked
    element by element."""
    if x.is_cpu and x.numel() <= _SMALL:
        total = sum(map(sum, x.tolist())) if x.dim() == 2 else sum(x.reshape(-1).tolist())
    else:
        total = float(x.sum())
    return math.isfinite(total) or bool(torch.isfinite(x).all())


def _advance_checked(model: nn.Module, state: State, x: torch.Tensor) -> tuple[torch.Tensor, State]:
    """:func:`advance` with every check (what its hot path does not recognise)."""
    plan = _plan(model)
    info = plan.info
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor [n, k, F]; received {type(x).__name__}")
    if not isinstance(state, State):
        raise TypeError(f"state must be a seqstate State; received {type(state).__name__}")
    if info.state_type is not None and not isinstance(state, info.state_type):
        raise TypeError(
            f"state must be a {info.state_type.__name__} for this model; received "
            f"{type(state).__name__}"
        )
    rows = state._layers()
    if rows is not None:  # (a state a direct step returned: its 2-D fields, unstacked)
        layers, (n, width) = len(rows), rows[0][0].shape
    else:
        layers, n, width = state.tensors()[0].shape
    if (layers, width) != plan.layout:
        raise ValueError(
            f"state must have shape [layers, n, H]=[{plan.layout[0]}, n, {plan.layout[1]}] for "
            f"this model; received {[layers, n, width]}. Was it made for a different model?"
        )
    shape = x.shape
    F = info.input_size
    dims = len(shape)
    if dims not in (2, 3) or shape[0] != n or shape[-1] != F:
        raise ValueError(
            f"x must have shape [n, F]=[{n}, {F}] or [n, k, F]=[{n}, k, {F}] (n = the state's "
            f"batch, F = input_size); received {tuple(shape)}"
        )
    if x.device != info.device or x.dtype != info.dtype:
        raise TypeError(
            f"x is {x.dtype} on {x.device} but the model is {info.dtype} on {info.device}; "
            "move it with x.to(device, dtype)"
        )
    if not _finite(x):
        raise ValueError("x holds NaN or inf; fill or drop missing values first")
    direct = plan.direct
    if dims == 2 and direct is not None and direct.applies():
        y, new = direct.run(x, _layer_views(plan, state, state.tensors(), layers))
        return y, type(state)._of_layers(new)
    return _advance(model, state, x, dims == 2)


class Streams:
    """In-process streaming: live sequences keyed by id, advanced step by step in batches.

    Args:
        model: a :class:`seqstate.SequenceModel` (or the same protocol). Run in eval mode under
            ``torch.no_grad`` (its training flag is restored after each step).
        device: where states live and the model runs: 'auto', 'cpu', 'cuda', 'cuda:N' or a
            torch.device (default: the model's device; a model elsewhere is copied there).

    Example::

        streams = Streams(model)
        for tick in feed:                                  # e.g. one row per sensor
            y = streams.step(tick.sensor_ids, tick.values) # [n, F] -> [n, O] numpy
        blobs = streams.export_states()                    # save all live streams
        Streams(model).import_states(blobs)                # ... and restore them elsewhere
    """

    def __init__(self, model: nn.Module, *, device: torch.device | str | None = None) -> None:
        self._model, self._info = prepare_model(model, device)
        self._rows: dict[StreamId, int] = {}  # id -> row of the buffer, insertion ordered
        self._ids: list[StreamId] = []  # row -> id, rows [0, len) are live
        core = cast(SequenceCore, self._model)  # checked by prepare_model (check_sized_core)
        self._stored: State = core.initial_state(16)  # [layers, capacity, H]: see _buffer
        # the hot path's newest states of rows [0, n), not yet written to _stored: (n, per
        # layer its fields [n, H]); None when _stored is current (see _buffer)
        self._pending: tuple[int, list[tuple[torch.Tensor, ...]]] | None = None
        # (buffer, n, views of its rows [0, n)): see _rows_view
        self._views: tuple[State, int, list[torch.Tensor]] | None = None
        # the one-step hot path (None where the model has none, or runs off the CPU: the
        # NumPy input would be copied there) and its 2-D views of the buffer rows [0, n) per
        # layer: (buffer, n, views)
        # (a bfloat16 model reads float32 NumPy input: no hot path, the general one casts)
        on_cpu = self._info.device.type == "cpu"
        exact = self._info.numpy_is_exact
        self._direct = DirectStep.of(self._model) if on_cpu and exact else None
        # up to this many streams, the hot path keeps the kernels' new states (_DEFERRED_VALUES)
        self._deferred_streams = _DEFERRED_VALUES // self._stored.hidden_size
        self._layer_views: tuple[State, int, list[list[torch.Tensor]]] | None = None

    @property
    def _buffer(self) -> State:
        """The stacked states ``[layers, capacity, H]``, current.

        For a few streams (up to ``_DEFERRED_VALUES`` state values) the hot path
        (:meth:`_step_directly`) keeps each step's new state tensors as they come from the
        cell kernels and feeds them to the next step, writing them into the buffer rows only
        when anything else reads or changes the buffer (every other use goes through this
        property): two in-place copies per step saved."""
        if self._pending is not None:
            self._settle()
        return self._stored

    @_buffer.setter
    def _buffer(self, value: State) -> None:
        self._settle()
        self._stored = value

    def _settle(self) -> None:
        """Write the hot path's pending state rows into the buffer."""
        pending = self._pending
        if pending is None:
            return
        n, new = pending
        for layer_views, layer_new in zip(self._layer_rows(n), new, strict=True):
            for view, tensor in zip(layer_views, layer_new, strict=True):
                view.copy_(tensor)
        self._pending = None

    # --- description ------------------------------------------------------------------------

    @property
    def ids(self) -> list[StreamId]:
        """The live stream ids, in the order they started."""
        return list(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._rows

    def __repr__(self) -> str:
        return f"Streams(streams={len(self)}, state={type(self._buffer).__name__})"

    # --- stepping ---------------------------------------------------------------------------

    def step(self, ids: Iterable[StreamId], x: Any) -> np.ndarray:
        """Advance each stream in ``ids`` by its row of ``x``, all in one model call.

        Args:
            ids: n distinct stream ids (str or int), in the order of the rows of ``x``: a list
                or tuple (a set, which has no order, is refused). An unknown id starts a stream
                from a zero state.
            x: ``[n, F]`` (one step per stream) or ``[n, k, F]`` (k steps each), numpy or torch.

        Returns:
            ``[n, O]`` or ``[n, k, O]`` NumPy outputs in the model's dtype (float32 for a
            bfloat16 model), rows in ``ids`` order.

        Raises:
            ValueError / TypeError: duplicate or invalid ids, wrong shape, wrong feature count,
                NaN/inf — and then no stream's state has changed.
        """
        if self._direct is not None and type(x) is np.ndarray and type(ids) is list:
            stepped = self._step_directly(ids, x)
            if stepped is not None:
                return stepped
        ids = self._check_ids(ids)
        array, single = _check_steps(x, len(ids), self._info, "x", ids)
        if not ids or array.shape[1] == 0:
            shape = (
                (len(ids), self._info.output_size)
                if single
                else (len(ids), array.shape[1], self._info.output_size)
            )
            return np.zeros(shape, dtype=self._info.numpy_dtype)

        known = list(map(self._rows.get, ids))  # (map: C speed for thousands of ids)
        added: list[StreamId] = []
        if None in known:
            added = self._add([i for i, row in zip(ids, known, strict=True) if row is None])
            known = list(map(self._rows.get, ids))
        n = len(known)
        # every live stream in row order (a feed that steps them all): rows [0, n) as they are
        in_order = n == len(self._ids) and known == list(range(n))
        device = self._info.device
        on_cpu = device.type == "cpu"
        try:
            if in_order:
                rows = None
                stored = self._rows_view(n)
            else:
                rows = torch.from_numpy(np.array(known, dtype=np.int64)).to(device)
                # gather the rows once (the ids are distinct and known: no State.select checks)
                stored = [t.index_select(1, rows) for t in self._buffer.tensors()]
            inputs = torch.from_numpy(array[:, 0] if single else array)
            if not on_cpu or inputs.dtype is not self._info.dtype:
                inputs = inputs.to(device, self._info.dtype)  # (bfloat16: from float32)
            state = type(self._buffer)._unchecked(*stored)
            y, state = _advance(self._model, state, inputs, single)
        except BaseException:
            self._remove(added)  # nothing changed: the new streams never started
            raise
        if rows is None:
            for view, new in zip(stored, state.tensors(), strict=True):
                view.copy_(new)  # (views of the buffer rows [0, n))
        else:
            for buffer, new in zip(self._buffer.tensors(), state.tensors(), strict=True):
                buffer.index_copy_(1, rows, new)
        return self._info.to_numpy(y)

    def _step_directly(self, ids: list[Any], x: np.ndarray) -> np.ndarray | None:
        """The hot path of :meth:`step`: one step ``x`` [n, F] of every live stream, in row
        order, on the model's cell kernels (:class:`~seqstate.inference.direct.DirectStep`),
        the state rows read and written in place. None when the call is anything else (then
        :meth:`step`'s general path runs it, and checks it with its own messages): other ids
        or order, another shape, dtype or layout, a value that is not finite, a model that
        must run its forward."""
        live = self._ids
        n = len(ids)
        info = self._info
        if (
            n == 0
            or n != len(live)
            or x.ndim != 2
            or x.shape[0] != n
            or x.shape[1] != info.input_size
            or x.dtype != info.numpy_dtype
            or not x.flags.c_contiguous
        ):
            return None
        # exact id types (bool, float and NumPy ids take the general path's checks); live ids
        # are distinct, so equal lists mean distinct, known ids in row order
        if not set(map(type, ids)) <= _ID_TYPES or ids != live:
            return None
        if not _finite_sum(x):  # NaN/inf (or an overflow): the general path decides
            return None
        direct = self._direct
        if direct is None or not direct.applies():
            return None
        pending = self._pending  # (while set, the live rows are unchanged: n is theirs)
        states = pending[1] if pending is not None else self._layer_rows(n)
        y, new = direct.run(torch.from_numpy(x), states)
        if n <= self._deferred_streams:
            self._pending = (n, new)  # (written back by _settle when anything else needs it)
            if y is new[-1][0]:  # (no head: the output is the new h, which the caller must
                y = y.clone()  # not be able to change through the returned array)
        else:
            for layer_views, layer_new in zip(states, new, strict=True):
                for view, tensor in zip(layer_views, layer_new, strict=True):
                    view.copy_(tensor)
        return y.numpy()

    def _layer_rows(self, n: int) -> list[list[torch.Tensor]]:
        """2-D views ``[n, H]`` of the buffer's rows [0, n), per layer per state field; kept
        while the buffer is."""
        stored = self._stored  # (not _buffer: this serves the hot path and _settle)
        cached = self._layer_views
        if cached is not None and cached[0] is stored and cached[1] == n:
            return cached[2]
        tensors = stored.tensors()
        layers = tensors[0].shape[0]
        views = [[t[index, :n] for t in tensors] for index in range(layers)]
        self._layer_views = (stored, n, views)
        return views

    def _rows_view(self, n: int) -> list[torch.Tensor]:
        """Views of the buffer's rows [0, n), one per state field; kept while the buffer is
        (the slicing costs as much as the tiny step it serves)."""
        cached = self._views
        if cached is not None and cached[0] is self._buffer and cached[1] == n:
            return cached[2]
        views = [t[:, :n] for t in self._buffer.tensors()]
        self._views = (self._buffer, n, views)
        return views

    # --- stream lifecycle -------------------------------------------------------------------

    def start(self, stream_id: StreamId) -> None:
        """Start ``stream_id`` from a zero state; a live stream is reset to zeros."""
        stream_id = _check_id(stream_id)
        row = self._rows.get(stream_id)
        if row is None:
            self._add([stream_id])
        else:
            for stored in self._buffer.tensors():
                stored[:, row] = 0

    def reset(self, stream_id: StreamId) -> None:
        """Zero the state of ``stream_id`` (the same as :meth:`start`)."""
        self.start(stream_id)

    def end(self, stream_id: StreamId) -> None:
        """Remove ``stream_id`` and its state. Raises KeyError for an unknown id."""
        stream_id = _check_id(stream_id)
        self._row_of(stream_id)
        self._remove([stream_id])

    def state(self, stream_id: StreamId) -> State:
        """A copy of the state of ``stream_id`` (batch 1); changing it changes no stream."""
        return self._buffer.select([self._row_of(_check_id(stream_id))])

    # --- saving and restoring ---------------------------------------------------------------

    def export_states(self) -> dict[StreamId, bytes]:
        """Every live stream's state as ``State.to_bytes()`` (safetensors), keyed by id."""
        return {i: self._buffer.select([row]).to_bytes() for i, row in self._rows.items()}

    def import_states(self, states: Mapping[StreamId, bytes | State]) -> None:
        """Set the states of the given streams (started if unknown) from :meth:`export_states`
        bytes or :class:`State` objects of batch 1. All are checked first: on any error no
        stream changes."""
        if not isinstance(states, Mapping):
            raise TypeError(
                "states must be a mapping {stream id: bytes} as returned by export_states(); "
                f"received {type(states).__name__}"
            )
        checked: dict[StreamId, State] = {}
        for key, value in states.items():
            stream_id = _check_id(key, "states key")
            checked[stream_id] = self._check_state(value, f"states[{stream_id!r}]")
        self._add([i for i in checked if i not in self._rows])
        for stream_id, state in checked.items():
            row = self._rows[stream_id]
            for stored, new in zip(self._buffer.tensors(), state.tensors(), strict=True):
                stored[:, row] = new[:, 0]

    # --- internals --------------------------------------------------------------------------

    def _row_of(self, stream_id: Any) -> int:
        row = self._rows.get(stream_id)
        if row is None:
            known = ", ".join(repr(i) for i in list(self._rows)[:5])
            more = "" if len(self._rows) <= 5 else f", ... ({len(self._rows)} in all)"
            raise KeyError(
                f"unknown stream {stream_id!r}; live streams: [{known}{more}]. It may have "
                "ended, or never started (step() and start() start streams)"
            )
        return row

    def _check_ids(self, ids: Any) -> list[StreamId]:
        if isinstance(ids, str | int | np.integer) or not isinstance(ids, Iterable):
            raise TypeError(
                f"ids must be a list of stream ids (str or int), one per row of x; received "
                f"{type(ids).__name__} {ids!r}. For one stream pass [id] and x[None]"
            )
        if isinstance(ids, Set | Mapping):  # (no order: which row of x is whose?)
            raise TypeError(
                f"ids must be an ordered sequence such as a list or tuple, one id per row of x "
                f"in x's order; received {type(ids).__name__}. Pass list(ids) in the order of "
                "the rows of x"
            )
        checked = list(ids)
        if not set(map(type, checked)) <= {str, int}:  # (exact types: bool is refused)
            checked = [_check_id(i, f"ids[{k}]") for k, i in enumerate(checked)]
        if len(set(checked)) != len(checked):
            counts = Counter(checked)
            duplicates = [repr(i) for i, count in counts.items() if count > 1]
            raise ValueError(
                f"ids must be distinct: a stream advances once per call; received "
                f"{', '.join(duplicates)} more than once. Give a stream k steps at once with x "
                "of shape (n, k, F) instead"
            )
        return checked

    def _check_state(self, value: Any, name: str) -> State:
        if isinstance(value, bytes | bytearray | memoryview):
            try:
                value = State.from_bytes(bytes(value))
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
        if not isinstance(value, State):
            raise TypeError(
                f"{name} must be bytes from State.to_bytes() or a State; received "
                f"{type(value).__name__}"
            )
        reference = self._buffer
        if type(value) is not type(reference):
            raise TypeError(
                f"{name} is a {type(value).__name__}; this model's streams hold "
                f"{type(reference).__name__}"
            )
        expected = (reference.num_layers, 1, reference.hidden_size)
        received = (value.num_layers, value.batch_size, value.hidden_size)
        if received != expected:
            raise ValueError(
                f"{name} must have shape [layers, 1, H]={list(expected)}; received "
                f"{list(received)}. Was it saved from a different model?"
            )
        if not all(bool(torch.isfinite(t).all()) for t in value.tensors()):
            raise ValueError(f"{name} holds NaN or inf")
        return value.to(self._info.device, self._info.dtype)

    def _add(self, new_ids: list[StreamId]) -> list[StreamId]:
        """Give each new id a zeroed row at the end; grow the buffer by doubling."""
        if not new_ids:
            return []
        count = len(self._ids)
        needed = count + len(new_ids)
        capacity = self._buffer.batch_size
        if needed > capacity:
            bigger = self._buffer.zeros_like(max(needed, 2 * capacity))
            for old, new in zip(self._buffer.tensors(), bigger.tensors(), strict=True):
                new[:, :count] = old[:, :count]
            self._buffer = bigger
        for stored in self._buffer.tensors():
            stored[:, count:needed] = 0
        for offset, stream_id in enumerate(new_ids):
            self._rows[stream_id] = count + offset
        self._ids.extend(new_ids)
        return new_ids

    def _remove(self, ids: list[StreamId]) -> None:
        """Drop streams; the last live row moves into each freed row."""
        if not ids:
            return
        self._settle()  # (the hot path's pending rows are rows [0, n) of the streams before)
        for stream_id in ids:
            row = self._rows.pop(stream_id)
            last = len(self._ids) - 1
            if row != last:
                moved = self._ids[last]
                for stored in self._buffer.tensors():
                    stored[:, row] = stored[:, last]
                self._ids[row] = moved
                self._rows[moved] = row
            self._ids.pop()
