"""Recurrent state containers with addressable batch rows.

A state is an immutable, typed container of tensors shaped ``(num_layers, B, H)``. It is always
passed into and returned from a model call, never stored on the module, so training,
validation, prediction and every served stream hold their own state by construction.

Every operation returns a new state; nothing is modified in place (autograd-safe, and a caller
holding an older state never sees it change underneath).

    state = model.initial_state(4)               # LSTMState(hidden=(L, 4, H), cell=(L, 4, H))
    state = state.reset_rows(torch.tensor([True, False, False, True]))   # rows 0 and 3 zeroed
    one = state.select([2])                      # (L, 1, H): row 2 alone
    state = state.scatter([2], one)              # write it back
    blob = state.to_bytes(); same = State.from_bytes(blob)   # safetensors, never pickle
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import reprlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

import torch
import torch.utils._pytree as pytree  # torch's pytree registry (no public module yet)
from safetensors.torch import load as _safetensors_load
from safetensors.torch import save as _safetensors_save

from seqstate._validate import check_int

__all__ = ["GRUState", "LSTMState", "RNNState", "Rows", "State", "stack_state_type"]

S = TypeVar("S", bound="State")

#: Rows of a batch: a bool mask ``(B,)``, an int index tensor/list, or a slice.
Rows = torch.Tensor | Sequence[int] | Sequence[bool] | slice | int

# a file format name, not a module path: it does not follow module moves
_FORMAT = "seqstate.state/1"

_FIELD_NAMES: dict[type, tuple[str, ...]] = {}

# the instance-dict key of a state's per-layer 2-D fields (State._of_layers): not an identifier
# a dataclass field can have
_PER_LAYER = "per layer"


class RowIndexError(ValueError, IndexError):
    """A row index outside the state's batch: a ``ValueError`` (the house rule for a value out
    of range) that is also the ``IndexError`` it was before (like NumPy's ``AxisError``)."""


def _layout(state: State) -> tuple[list[tuple[int, int]], str]:
    """A state's fields' ``(num_layers, hidden)`` and its device: what :meth:`State.cat` needs
    its states to share."""
    tensors = state.tensors()
    return [(t.shape[0], t.shape[2]) for t in tensors], str(tensors[0].device)


def _register_pytree(cls: type[State]) -> None:
    """Make ``cls`` a pytree node (its tensor fields are the leaves), so that torch.export,
    torch.compile and anything else that walks pytrees (DDP's outputs, ``tree_map``) see
    through a state to its tensors. The functions read the fields when called: at class
    creation the dataclass decorator has not declared them yet."""

    def flatten(state: State) -> tuple[list[torch.Tensor], None]:
        return list(state.tensors()), None

    def flatten_with_keys(state: State) -> tuple[list[tuple[Any, torch.Tensor]], None]:
        keys = [pytree.GetAttrKey(name) for name in type(state).field_names()]
        return list(zip(keys, state.tensors(), strict=True)), None

    def unflatten(leaves: Any, context: None) -> State:
        # unchecked: the leaves may be fake or symbolic tensors while torch traces
        return cls._unchecked(*leaves)

    pytree.register_pytree_node(
        cls,
        flatten,
        unflatten,
        serialized_type_name=f"seqstate.{cls.__name__}",
        flatten_with_keys_fn=flatten_with_keys,
    )


@dataclasses.dataclass(frozen=True)
class State:
    """Base class of all recurrent states. Subclasses declare tensor fields ``(layers, B, H)``.

    Fields must agree on layers and batch size (they may differ in the last dimension).
    """

    _registry: ClassVar[dict[str, type[State]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        State._registry[cls.__name__] = cls
        _register_pytree(cls)

    def __post_init__(self) -> None:
        tensors = self.tensors()
        if not tensors:
            raise TypeError(f"{type(self).__name__} has no tensor fields")
        first = tensors[0]
        for name, t in zip(self.field_names(), tensors, strict=True):
            if not isinstance(t, torch.Tensor):
                raise TypeError(
                    f"{type(self).__name__}.{name} must be a torch.Tensor of shape "
                    f"(num_layers, batch, hidden); received {type(t).__name__}"
                )
            if t.dim() != 3 or t.shape[:2] != first.shape[:2]:
                raise ValueError(
                    f"{type(self).__name__}.{name} must have shape (num_layers, batch, hidden) "
                    f"matching the other fields' (num_layers, batch)={tuple(first.shape[:2])}; "
                    f"received {tuple(t.shape)}"
                )
            if t is first and not t.is_floating_point():
                raise TypeError(
                    f"{type(self).__name__}.{name} must hold floating values (the cells' "
                    f"hidden state); received dtype {t.dtype}. Use torch.zeros(..., "
                    "dtype=torch.float32) or .float()"
                )
            # one dtype and device: a mixed state would only fail later, inside a kernel
            if t is not first and (t.dtype != first.dtype or t.device != first.device):
                raise ValueError(
                    f"{type(self).__name__}.{name} must have the dtype and device of the other "
                    f"fields ({first.dtype} on {first.device}); received {t.dtype} on "
                    f"{t.device}. Move it with tensor.to(other_field)"
                )

    # --- structure -------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        # Cached per class: dataclasses.fields() is slow and this runs on every row operation
        # (the server does thousands per batch).
        names = _FIELD_NAMES.get(cls)
        if names is None:
            names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
        return names

    def tensors(self) -> tuple[torch.Tensor, ...]:
        # The instance dict in field order (a frozen dataclass keeps its fields there): no
        # generator of getattr calls, as this runs several times on every streamed step.
        values = self.__dict__
        try:
            return tuple([values[name] for name in self.field_names()])
        except KeyError:  # a state made by _of_layers whose fields were never asked for
            return self._materialise()

    @classmethod
    def _of_layers(cls: type[S], layers: Sequence[Sequence[torch.Tensor]]) -> S:
        """The state whose field ``j`` is ``stack([layer[j] for layer in layers])``
        ``(len(layers), B, H)``, from per layer its fields ``[B, H]`` (what the cell kernels
        return), unchecked like :meth:`_unchecked`.

        The 3-D fields are made when first read (any read: an attribute, :meth:`tensors`,
        iteration, a row operation), so a streamed step whose state only feeds the next step
        never makes them; until then :meth:`_layers` gives the 2-D tensors back as they
        came. One layer's fields are views of those tensors (an in-place change of one is a
        change of the other); several layers' are stacked copies, and the 2-D tensors are
        then forgotten (:meth:`_layers` is None), so an in-place change of a field is what
        every later reader sees."""
        state = object.__new__(cls)
        state.__dict__[_PER_LAYER] = layers
        return state

    def _layers(self) -> Sequence[Sequence[torch.Tensor]] | None:
        """Per layer, the fields ``[B, H]`` of a state made by :meth:`_of_layers` (None for
        any other state, or once several layers' fields were stacked)."""
        return self.__dict__.get(_PER_LAYER)

    def _materialise(self) -> tuple[torch.Tensor, ...]:
        """Make the 3-D fields of a state made by :meth:`_of_layers` (once: setdefault keeps
        the first made, should two threads race) and return :meth:`tensors`."""
        values = self.__dict__
        names = self.field_names()
        layers = values.get(_PER_LAYER)
        if layers is not None:
            if len(layers) == 1:
                made = [t.unsqueeze(0) for t in layers[0]]
            else:
                made = [torch.stack(list(field)) for field in zip(*layers, strict=True)]
            for name, tensor in zip(names, made, strict=True):
                values.setdefault(name, tensor)
            if len(layers) > 1:
                values.pop(_PER_LAYER, None)
        return tuple([values[name] for name in names])

    if not TYPE_CHECKING:  # (at run time only: for mypy, a State has its declared fields only)

        def __getattr__(self, name: str) -> Any:
            # Python calls this only for a name missing from the instance dict: the fields of
            # a state made by _of_layers before they are made.
            names = type(self).field_names()
            if name in names:
                with contextlib.suppress(KeyError):  # (KeyError: not such a state)
                    return self._materialise()[names.index(name)]
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def _unchecked(cls: type[S], *tensors: torch.Tensor) -> S:
        """``cls(*tensors)`` without the shape checks of ``__post_init__``, for internal callers
        whose tensors are valid by construction (a layer's step, a row operation). Public
        construction (``cls(...)``, :meth:`from_bytes`) stays checked."""
        state = object.__new__(cls)
        state.__dict__.update(zip(cls.field_names(), tensors, strict=True))
        return state

    def __iter__(self) -> Iterator[torch.Tensor]:
        # Allows ``h, c = state`` like torch's ``(h, c)`` tuples.
        return iter(self.tensors())

    def _replace(self: S, tensors: Sequence[torch.Tensor]) -> S:
        """A state of this type from tensors that the row operations below shaped validly."""
        return type(self)._unchecked(*tensors)

    def map(self: S, fn: Any) -> S:
        """Apply ``fn`` to every tensor field and return a new state of the same type (checked:
        ``fn`` is the caller's)."""
        return type(self)(*[fn(t) for t in self.tensors()])

    @property
    def num_layers(self) -> int:
        return self.tensors()[0].shape[0]

    @property
    def batch_size(self) -> int:
        return self.tensors()[0].shape[1]

    @property
    def hidden_size(self) -> int:
        return self.tensors()[0].shape[2]

    @property
    def device(self) -> torch.device:
        return self.tensors()[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.tensors()[0].dtype

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def zeros(
        cls: type[S],
        num_layers: int,
        batch_size: int,
        hidden_size: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> S:
        """A zero state ``(num_layers, batch_size, hidden_size)`` for every field."""
        shape = (
            check_int(num_layers, "num_layers", 1),
            check_int(batch_size, "batch_size", 0),
            check_int(hidden_size, "hidden_size", 1),
        )
        return cls._unchecked(
            *[torch.zeros(shape, dtype=dtype, device=device) for _ in cls.field_names()]
        )

    def zeros_like(self: S, batch_size: int | None = None) -> S:
        """Zeros of this state's type, layers, hidden size, dtype and device."""
        b = self.batch_size if batch_size is None else check_int(batch_size, "batch_size", 0)
        return self._replace([t.new_zeros((t.shape[0], b, t.shape[2])) for t in self.tensors()])

    @classmethod
    def cat(cls: type[S], states: Sequence[S]) -> S:
        """Concatenate states along the batch dimension."""
        if not states:
            raise ValueError("State.cat needs at least one state; received an empty sequence")
        kinds = {type(s) for s in states}
        if len(kinds) != 1:
            names = sorted(k.__name__ for k in kinds)
            raise TypeError(f"State.cat needs states of one type; received {names}")
        first = states[0]
        columns = zip(*(s.tensors() for s in states), strict=True)
        try:
            return first._replace([torch.cat(list(col), dim=1) for col in columns])
        except RuntimeError:  # (looked into only then: the server concatenates every batch)
            expected = _layout(first)
            for position, state in enumerate(states):
                if _layout(state) != expected:
                    raise ValueError(
                        "State.cat needs states that differ only in batch size: fields "
                        f"(num_layers, hidden) and device {expected} like states[0]; "
                        f"states[{position}] has {_layout(state)}. Concatenate states of one "
                        "model, on one device"
                    ) from None
            raise

    # --- row operations --------------------------------------------------------------------

    def _row_mask(self, rows: Rows, argument: str = "rows") -> torch.Tensor:
        """Bool mask (B,) on this state's device from any ``Rows`` form."""
        b = self.batch_size
        mask = torch.zeros(b, dtype=torch.bool)
        if isinstance(rows, torch.Tensor) and rows.dtype == torch.bool:
            if rows.shape != (b,):
                raise ValueError(
                    f"{argument} as a bool mask must have shape (batch,)=({b},); "
                    f"received {tuple(rows.shape)}"
                )
            return rows.to(self.device)
        mask[self._row_index(rows, argument).cpu()] = True
        return mask.to(self.device)

    def _row_index(self, rows: Rows, argument: str = "rows") -> torch.Tensor:
        """Int64 index (n,) from any ``Rows`` form, bounds-checked."""
        b = self.batch_size
        if isinstance(rows, slice):
            return torch.arange(b)[rows]
        if isinstance(rows, int):
            rows = [rows]
        try:
            index = torch.as_tensor(rows)
        except (TypeError, ValueError, RuntimeError):  # (a str, None, a ragged list, ...)
            raise TypeError(
                f"{argument} must be a bool mask (batch,), a 1-D integer index, an int or a "
                f"slice; received {type(rows).__name__} {reprlib.repr(rows)}"
            ) from None
        if index.numel() == 0 and not isinstance(rows, torch.Tensor):
            index = index.long()  # torch.as_tensor([]) is float32; [] means "no rows"
        if index.dtype == torch.bool:
            if index.shape != (b,):
                raise ValueError(
                    f"{argument} as a bool mask must have shape (batch,)=({b},); "
                    f"received {tuple(index.shape)}"
                )
            return index.nonzero().flatten()
        if index.dim() != 1 or index.is_floating_point():
            raise TypeError(
                f"{argument} must be a bool mask (batch,), a 1-D integer index or a slice; "
                f"received a tensor of dtype {index.dtype} and shape {tuple(index.shape)}"
            )
        index = index.long()
        if index.numel() and (index.min() < -b or index.max() >= b):
            raise RowIndexError(
                f"{argument} index out of range for batch size {b}; received values in "
                f"[{int(index.min())}, {int(index.max())}]. Rows are 0..{b - 1} (or "
                f"-{b}..-1 from the end)"
            )
        return index % b if index.numel() else index

    def reset_rows(self: S, rows: Rows) -> S:
        """Zero the given rows; other rows keep their values (gradients flow through them)."""
        # torch.where, not multiplication: a NaN/inf in a reset row must not survive as NaN*0.
        reset = self._row_mask(rows).view(1, -1, 1)
        return self._replace([torch.where(reset, t.new_zeros(()), t) for t in self.tensors()])

    def detach(self: S) -> S:
        """Cut the autograd graph (the TBPTT boundary between windows)."""
        return self._replace([t.detach() for t in self.tensors()])

    def select(self: S, rows: Rows) -> S:
        """The state of the given rows only: ``(layers, len(rows), H)``."""
        index = self._row_index(rows).to(self.device)
        return self._replace([t.index_select(1, index) for t in self.tensors()])

    def scatter(self: S, rows: Rows, other: S) -> S:
        """A new state equal to this one with ``rows`` replaced by the rows of ``other``."""
        if type(other) is not type(self):
            raise TypeError(
                f"other must be a {type(self).__name__}; received {type(other).__name__}"
            )
        index = self._row_index(rows).to(self.device)
        if index.unique().numel() != index.numel():
            # index_copy with a repeated row keeps an unspecified one of the written rows
            repeated = sorted({int(i) for i in index if int((index == i).sum()) > 1})
            raise ValueError(f"rows must not repeat a row in scatter; repeated rows {repeated}")
        if other.batch_size != index.numel():
            raise ValueError(
                f"other must have one row per selected row: batch {index.numel()}; "
                f"received batch {other.batch_size}"
            )
        if (other.num_layers, other.hidden_size) != (self.num_layers, self.hidden_size):
            raise ValueError(
                f"other must have (num_layers, hidden)=({self.num_layers}, {self.hidden_size}); "
                f"received ({other.num_layers}, {other.hidden_size})"
            )
        return self._replace(
            [
                t.index_copy(1, index, o.to(device=t.device, dtype=t.dtype))
                for t, o in zip(self.tensors(), other.tensors(), strict=True)
            ]
        )

    def to(
        self: S, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> S:
        """Move to a device and/or cast to a floating dtype."""
        return self.map(lambda t: t.to(device=device, dtype=dtype))

    def equal(self, other: State) -> bool:
        """Bitwise equality of type, shapes and values."""
        return type(other) is type(self) and all(
            a.shape == b.shape and torch.equal(a, b)
            for a, b in zip(self.tensors(), other.tensors(), strict=True)
        )

    # --- serialisation ---------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Serialise to safetensors bytes (tensors + a type tag; nothing is pickled)."""
        tensors = {
            name: t.detach().contiguous().cpu()
            for name, t in zip(self.field_names(), self.tensors(), strict=True)
        }
        meta = {"format": _FORMAT, "type": type(self).__name__}
        return _safetensors_save(tensors, metadata={"seqstate": json.dumps(meta)})

    @staticmethod
    def from_bytes(data: bytes, *, device: torch.device | str | None = None) -> State:
        """Inverse of :meth:`to_bytes`. Refuses anything that is not a seqstate state."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes; received {type(data).__name__}")
        data = bytes(data)
        try:
            header_len = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + header_len])
            meta = json.loads(header["__metadata__"]["seqstate"])
            if not isinstance(meta, dict):
                raise TypeError(f"the seqstate metadata is a {type(meta).__name__}, not an object")
            tensors = _safetensors_load(data)
        except Exception as error:  # any parse failure is the same user-facing problem
            raise ValueError(
                "data is not a serialised seqstate State (expected the bytes of "
                f"State.to_bytes()): {error}"
            ) from None
        type_name = meta.get("type")
        if isinstance(type_name, str) and type_name.startswith(_STACK_PREFIX):
            with contextlib.suppress(ValueError):  # malformed names are refused just below
                stack_state_type(_parse_stack_name(type_name))
        known = isinstance(type_name, str) and type_name in State._registry
        if meta.get("format") != _FORMAT or not known:
            raise ValueError(
                f"data holds an unknown state format {meta.get('format')!r} / type "
                f"{meta.get('type')!r}; expected {_FORMAT!r} and one of "
                f"{sorted(State._registry)}"
            )
        cls = State._registry[cast(str, type_name)]  # `known` checked it is a str
        missing = set(cls.field_names()) - set(tensors)
        if missing:
            raise ValueError(f"data for {cls.__name__} lacks fields {sorted(missing)}")
        dtypes = {tensors[name].dtype for name in cls.field_names()}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            # a state that no layer accepts would only fail later, far from the bad bytes
            raise ValueError(
                f"data for {cls.__name__} must hold floating tensors of one dtype; "
                f"received {sorted(str(d) for d in dtypes)}"
            )
        state = cls(*(tensors[name] for name in cls.field_names()))
        return state.to(device) if device is not None else state


@dataclasses.dataclass(frozen=True)
class LSTMState(State):
    """LSTM state: ``hidden`` and ``cell``, each ``(num_layers, B, H)``."""

    hidden: torch.Tensor
    cell: torch.Tensor


@dataclasses.dataclass(frozen=True)
class GRUState(State):
    """GRU state: ``hidden`` ``(num_layers, B, H)``."""

    hidden: torch.Tensor


@dataclasses.dataclass(frozen=True)
class RNNState(State):
    """Elman RNN state: ``hidden`` ``(num_layers, B, H)``."""

    hidden: torch.Tensor


# --- the state of a mixed stack ----------------------------------------------------------------

_STACK_PREFIX = "StackState["
_FIELD = re.compile(r"^(l\d+_[a-z]+):(\d+)$")


def stack_state_type(widths: dict[str, int] | tuple[tuple[str, int], ...]) -> type[State]:
    """The State type of a stack whose layers differ in kind or size: one field per layer state.

    ``widths`` maps each field (``l<layer>_hidden``, ``l<layer>_cell``) to its hidden size, in
    order; every field is ``(1, B, H_field)``. The type's name spells the structure, e.g.
    ``StackState[l0_hidden:32,l0_cell:32,l1_hidden:16]``, so :meth:`State.from_bytes` rebuilds
    it in any process, and two stacks share a state type exactly when their states fit both.
    """
    items = tuple(widths.items()) if isinstance(widths, dict) else tuple(widths)
    name = _STACK_PREFIX + ",".join(f"{field}:{width}" for field, width in items) + "]"
    existing = State._registry.get(name)
    if existing is not None:
        return existing
    for field, width in items:
        if not _FIELD.match(f"{field}:{width}") or not isinstance(width, int) or width < 1:
            raise ValueError(
                f"stack state fields must look like ('l0_hidden', 32); received {(field, width)!r}"
            )
    expected = dict(items)

    def __post_init__(self: State) -> None:
        State.__post_init__(self)
        for field, tensor in zip(self.field_names(), self.tensors(), strict=True):
            if tensor.shape[0] != 1 or tensor.shape[2] != expected[field]:
                raise ValueError(
                    f"{type(self).__name__}.{field} must have shape (1, batch, "
                    f"{expected[field]}); received {tuple(tensor.shape)}"
                )

    cls = dataclasses.make_dataclass(
        name,
        [(field, torch.Tensor) for field, _ in items],
        bases=(State,),
        frozen=True,
        namespace={
            "__doc__": "State of a mixed recurrent stack: one (1, B, H) field per layer state.",
            "__post_init__": __post_init__,
        },
    )
    cls.__module__ = __name__
    return cls


def _parse_stack_name(name: str) -> tuple[tuple[str, int], ...]:
    body = name[len(_STACK_PREFIX) : -1] if name.endswith("]") else ""
    items = []
    for part in body.split(","):
        match = _FIELD.match(part)
        if match is None:
            raise ValueError(f"malformed stack state type {name!r}")
        items.append((match.group(1), int(part.split(":")[1])))
    return tuple(items)
