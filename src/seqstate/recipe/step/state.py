"""RunState: the whole state of a run's step function, as one typed record.

A stream of a trained run carries more than the recurrent state: differencing needs the last
raw values at each lag, calendar features the last time, per-series scaling the series'
statistics. All of it is one record, batch rows addressable like :class:`seqstate.State`::

    RunState
      transforms: {"steps": [B] int64, "time": [B] int64,                 (shared by members)
                   "m0.location": [B, C] float64, "m0.history": [B, D, O] float64, ...}
      models:     (member 0's State [L, B, H], member 1's State, ...)

Every transform tensor has the batch on its first dimension; every model state on its second
(as :class:`seqstate.State`). ``to_bytes`` / ``from_bytes`` use one codec, safetensors (never
pickle): the transform tensors under their names and each member's state as the bytes of
:meth:`seqstate.State.to_bytes`, so a member state is read back by the same code that reads
any state.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from seqstate.core.state import State

__all__ = [
    "Floats",
    "RunState",
    "StepTransforms",
    "as_array",
    "as_floats",
    "entry_of",
    "fewest_steps",
]

_FORMAT = "seqstate.run_state/1"
_MODEL_PREFIX = "model."

Rows = int | slice | Sequence[int] | torch.Tensor


class Floats(NamedTuple):
    """One stream's transform field as Python numbers: ``values`` flat, row-major, of the
    tensor of ``shape`` (batch first, so ``(1, ...)``) and ``dtype`` it stands for (floats
    of float32 or float64 values, ints of int64 ones: each converts back exactly)."""

    values: list[Any]
    shape: tuple[int, ...]
    dtype: torch.dtype


#: what a :class:`StepTransforms` holds for a field before anyone reads it as a tensor
Entry = torch.Tensor | np.ndarray | Floats

_NUMPY_DTYPES = {torch.float64: np.float64, torch.float32: np.float32, torch.int64: np.int64}


class StepTransforms(Mapping[str, torch.Tensor]):
    """The transform fields of a state made by a CPU one-step path, as that path computed
    them: NumPy arrays (several streams) or :class:`Floats` (one stream), each made a tensor
    when first read (and kept), so every reader sees a mapping of tensors as ever.

    Why: a served or streamed step writes about ten small fields, and a tensor costs
    about a microsecond to make and another to read back as an array; the next step of the
    same path reads the arrays or floats it wrote as they are (:func:`entry_of`), so a
    chain of steps (a caller's loop, :class:`seqstate.recipe.run_streams.RunStreams`) makes
    no tensor for a field nobody else reads. A tensor made from an array shares its memory
    (as ``torch.from_numpy`` always did here); a field made from floats is read as floats
    only until its tensor is made (after that the tensor is the field, so a change to it in
    place is what the next step reads).
    """

    __slots__ = ("_entries", "fewest_steps")

    def __init__(self, entries: dict[str, Entry], fewest_steps: int | None = None) -> None:
        self._entries = entries
        #: the fewest steps any row has taken (``steps.min()``), where the step that made
        #: these fields knew it: read only while ``steps`` is not yet a tensor (see
        #: :func:`fewest_steps`)
        self.fewest_steps = fewest_steps

    @staticmethod
    def entries(transforms: Mapping[str, torch.Tensor]) -> dict[str, Entry]:
        """A new dict of ``transforms``' fields as they are held (nothing made a tensor)."""
        if type(transforms) is StepTransforms:
            return dict(transforms._entries)
        return dict(transforms)

    def entry(self, name: str) -> Entry:
        """Field ``name`` as held: a tensor, an array or :class:`Floats`."""
        return self._entries[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        entry = self._entries[name]
        if isinstance(entry, torch.Tensor):
            return entry
        if isinstance(entry, np.ndarray):
            tensor = torch.from_numpy(entry)
        else:
            tensor = torch.tensor(entry.values, dtype=entry.dtype).reshape(entry.shape)
        self._entries[name] = tensor
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def entry_of(transforms: Mapping[str, torch.Tensor], name: str) -> Entry:
    """Field ``name`` of ``transforms`` as held (:meth:`StepTransforms.entry`; a tensor from
    any other mapping)."""
    if type(transforms) is StepTransforms:
        return transforms.entry(name)
    return transforms[name]


def fewest_steps(transforms: Mapping[str, torch.Tensor]) -> int:
    """``int(transforms["steps"].min())`` of a CPU state, without the reduction where the
    step that made ``transforms`` kept it (and nobody has read ``steps`` as a tensor since,
    which could have changed it in place)."""
    if type(transforms) is StepTransforms:
        entry = transforms.entry("steps")
        if transforms.fewest_steps is not None and not isinstance(entry, torch.Tensor):
            return transforms.fewest_steps
        return int(as_array(entry).min())
    return int(transforms["steps"].min())


def as_floats(entry: Entry) -> list[Any]:
    """A CPU field's values flat, row-major, as Python numbers."""
    if isinstance(entry, Floats):
        return entry.values
    if isinstance(entry, np.ndarray):
        return entry.ravel().tolist()
    return entry.numpy().ravel().tolist()


def as_array(entry: Entry) -> np.ndarray:
    """A CPU field as a NumPy array of its tensor's shape and dtype (an array or a
    tensor's: its memory, not a copy)."""
    if isinstance(entry, np.ndarray):
        return entry
    if isinstance(entry, Floats):
        return np.array(entry.values, dtype=_NUMPY_DTYPES[entry.dtype]).reshape(entry.shape)
    return entry.numpy()


@dataclasses.dataclass(frozen=True)
class RunState:
    """The state of :class:`seqstate.recipe.step.RunStep` for ``B`` streams.

    Attributes:
        transforms: name -> tensor ``[B, ...]`` (the transform cells' states, and the step
            count and last time every cell shares).
        models: one :class:`seqstate.State` per ensemble member (``[L, B, H]`` fields).
    """

    transforms: Mapping[str, torch.Tensor]
    models: tuple[State, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.models, tuple) or not all(isinstance(s, State) for s in self.models):
            raise TypeError("RunState.models must be a tuple of seqstate.State (one per member)")
        sizes = {int(t.shape[0]) for t in self.transforms.values()}
        sizes |= {s.batch_size for s in self.models}
        if len(sizes) > 1:
            raise ValueError(
                f"RunState parts disagree on the batch size: {sorted(sizes)}; every transform "
                "tensor [B, ...] and member state [L, B, H] must hold the same B rows"
            )

    @classmethod
    def unchecked(
        cls, transforms: Mapping[str, torch.Tensor], models: tuple[State, ...]
    ) -> RunState:
        """A state built without the checks (for a step function whose parts are consistent
        by construction: the per-step hot path)."""
        state = object.__new__(cls)
        object.__setattr__(state, "transforms", transforms)
        object.__setattr__(state, "models", models)
        return state

    @property
    def batch_size(self) -> int:
        if self.models:
            return self.models[0].batch_size
        return int(next(iter(self.transforms.values())).shape[0])

    # --- rows -------------------------------------------------------------------------------

    def _index(self, rows: Rows) -> torch.Tensor:
        b = self.batch_size
        if isinstance(rows, slice):
            return torch.arange(b)[rows]
        index = torch.as_tensor([rows] if isinstance(rows, int) else rows)
        if index.dtype == torch.bool:
            if index.shape != (b,):
                raise ValueError(
                    f"rows as a bool mask must have shape (batch,)=({b},); received "
                    f"{tuple(index.shape)}"
                )
            return index.nonzero().flatten()
        if index.numel() == 0:
            return index.long().reshape(0)
        if index.dim() != 1 or index.is_floating_point():
            raise TypeError(
                "rows must be an int, a slice, a bool mask (batch,) or a 1-D integer index; "
                f"received dtype {index.dtype}, shape {tuple(index.shape)}"
            )
        if index.min() < -b or index.max() >= b:
            raise IndexError(
                f"rows index out of range for batch size {b}; received values in "
                f"[{int(index.min())}, {int(index.max())}]"
            )
        return index.long() % b

    def select(self, rows: Rows) -> RunState:
        """The state of the given rows only."""
        index = self._index(rows)
        return RunState(
            {name: t.index_select(0, index.to(t.device)) for name, t in self.transforms.items()},
            tuple(state.select(index) for state in self.models),
        )

    def scatter(self, rows: Rows, other: RunState) -> RunState:
        """A new state equal to this one with ``rows`` replaced by the rows of ``other``."""
        if not isinstance(other, RunState):
            raise TypeError(f"other must be a RunState; received {type(other).__name__}")
        if set(other.transforms) != set(self.transforms) or len(other.models) != len(self.models):
            raise ValueError(
                f"other must be a state of the same run: transforms {sorted(self.transforms)} "
                f"and {len(self.models)} member(s); received {sorted(other.transforms)} and "
                f"{len(other.models)}"
            )
        index = self._index(rows)
        if index.unique().numel() != index.numel():
            raise ValueError("rows must not repeat a row in scatter")
        if other.batch_size != index.numel():
            raise ValueError(
                f"other must have one row per selected row: batch {index.numel()}; received "
                f"batch {other.batch_size}"
            )
        transforms = {}
        for name, t in self.transforms.items():
            part = other.transforms[name].to(device=t.device, dtype=t.dtype)
            if part.shape[1:] != t.shape[1:]:
                raise ValueError(
                    f"other's {name!r} has row shape {tuple(part.shape[1:])}; expected "
                    f"{tuple(t.shape[1:])}"
                )
            transforms[name] = t.index_copy(0, index.to(t.device), part)
        models = tuple(
            mine.scatter(index, theirs)
            for mine, theirs in zip(self.models, other.models, strict=True)
        )
        return RunState(transforms, models)

    @staticmethod
    def cat(states: Sequence[RunState]) -> RunState:
        """The rows of ``states`` one after another (states of one run)."""
        if not states:
            raise ValueError("RunState.cat needs at least one state")
        first = states[0]
        return RunState(
            {name: torch.cat([s.transforms[name] for s in states]) for name in first.transforms},
            tuple(
                type(first.models[k]).cat([s.models[k] for s in states])
                for k in range(len(first.models))
            ),
        )

    def equal(self, other: RunState) -> bool:
        """Exactly equal (same names, shapes, dtypes and values; NaN equals NaN)."""
        if set(self.transforms) != set(other.transforms) or len(self.models) != len(other.models):
            return False
        for name, t in self.transforms.items():
            o = other.transforms[name]
            if t.dtype != o.dtype or t.shape != o.shape:
                return False
            if not torch.equal(
                torch.nan_to_num(t, nan=0.0) if t.is_floating_point() else t,
                torch.nan_to_num(o, nan=0.0) if o.is_floating_point() else o,
            ):
                return False
            if t.is_floating_point() and not torch.equal(t.isnan(), o.isnan()):
                return False
        return all(a.equal(b) for a, b in zip(self.models, other.models, strict=True))

    # --- bytes ------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Serialise to safetensors bytes (nothing is pickled)."""
        from safetensors.torch import save

        tensors: dict[str, torch.Tensor] = {
            name: t.detach().contiguous().cpu() for name, t in self.transforms.items()
        }
        for k, state in enumerate(self.models):
            blob = state.to_bytes()
            tensors[f"{_MODEL_PREFIX}{k}"] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        meta = {"format": _FORMAT, "members": len(self.models)}
        return save(tensors, metadata={"seqstate": json.dumps(meta)})

    @staticmethod
    def from_bytes(data: bytes, *, device: torch.device | str | None = None) -> RunState:
        """Inverse of :meth:`to_bytes`; refuses anything that is not a serialised RunState."""
        from safetensors.torch import load

        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes; received {type(data).__name__}")
        data = bytes(data)
        try:
            header_length = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + header_length])
            meta = json.loads(header["__metadata__"]["seqstate"])
            tensors = load(data)
        except Exception as error:  # any parse failure is the same user-facing problem
            raise ValueError(
                "data is not a serialised RunState (expected the bytes of RunState.to_bytes()): "
                f"{error}"
            ) from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            received = meta.get("format") if isinstance(meta, dict) else meta
            raise ValueError(f"data holds format {received!r}; expected {_FORMAT!r}")
        members = int(meta.get("members", 0))
        models = []
        for k in range(members):
            blob = tensors.pop(f"{_MODEL_PREFIX}{k}", None)
            if blob is None:
                raise ValueError(f"data lacks the state of member {k} of {members}")
            models.append(State.from_bytes(blob.numpy().tobytes(), device=device))
        transforms = {
            name: (t.to(device) if device is not None else t) for name, t in tensors.items()
        }
        return RunState(transforms, tuple(models))

    def describe(self) -> dict[str, Any]:
        """Names, shapes and dtypes (for messages and exporters)."""
        return {
            "batch_size": self.batch_size,
            "transforms": {
                name: {"shape": list(t.shape[1:]), "dtype": str(t.dtype).removeprefix("torch.")}
                for name, t in self.transforms.items()
            },
            "models": [type(s).__name__ for s in self.models],
        }
