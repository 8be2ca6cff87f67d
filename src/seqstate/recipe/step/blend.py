"""Blend: the validation's choice (:class:`seqstate.recipe.selection.Selection`) as cells of
the step function: the chosen baselines run as streams beside the network, and each answer is
their weighted combination.

::

    raw x [B, T, F] ──targets' raw values──► baseline streams (state: last m values, the ETS
         │                                       grid)  ──► one-step forecasts [B, T, O] each
         └──► network members ──► mean [B, T, O] ──► sum_k w_k * (part_k, or the network's
                                                           where part_k has no value)

Each baseline's state lives in ``RunState.transforms`` as ``baseline.<name>.<field>``
``[B, O, ...]`` (one row per stream and target), so it is selected, scattered, stored and
serialised with the rest of the run's state; its kind is looked up by name
(:func:`seqstate.recipe.baselines.baseline_stream`), so any kind registered there runs here.
The arithmetic of the combination is :meth:`Selection.combine`'s, in the same order.

The network steps even where the selection gives it no weight (``ets_24+theta_24``): sample
paths (:meth:`RunStep.sample_forecast`, the server's ``paths``) take their spread from it,
an ensemble's ``*_spread`` is its members' spread, the members' answers are returned
(``step_members``, ``forecast_members``), and its answer stands in where a baseline has
none (a forecast from a stream no step has reached). So its state is kept exact, and a
stored or exported state is the same whatever the weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from seqstate.recipe.baselines import baseline_stream
from seqstate.recipe.step.state import Entry, StepTransforms, as_array

__all__ = ["PREFIX", "Blend", "combine"]

PREFIX = "baseline."
NETWORK = "network"  # (the name seqstate.recipe.selection gives the trained model)


class Blend:
    """The selection ``weights`` (name -> weight, ``"network"`` the members' mean) over the
    targets at ``target_inputs`` (their indices among the raw inputs ``x`` holds).

    Args:
        weights: the chosen combination (:attr:`Selection.weights`).
        target_inputs: for each target, its column in ``x``.
    """

    def __init__(self, weights: Mapping[str, float], target_inputs: Sequence[int]) -> None:
        self.weights = {str(k): float(v) for k, v in weights.items()}
        self.names = tuple(name for name in self.weights if name != NETWORK)
        self.streams = {name: baseline_stream(name) for name in self.names}
        self.target_inputs = torch.tensor(list(target_inputs), dtype=torch.long)
        self.target_columns = [int(i) for i in target_inputs]
        columns = self.target_columns
        consecutive = bool(columns) and columns == list(range(columns[0], columns[-1] + 1))
        #: the targets' columns as a slice where they are consecutive (one target, the
        #: usual case): the same values as the list, read as a view, where a list gathers a
        #: copy before ``astype`` makes its own
        self.target_index: slice | list[int] = (
            slice(columns[0], columns[-1] + 1) if consecutive else columns
        )
        self.outputs = len(target_inputs)
        # The flat plan a step walks: each baseline's state fields and their state names
        # (looked up once here, not by matching every state name against a prefix per step).
        self.fields = {
            name: tuple((field, f"{PREFIX}{name}.{field}") for field in stream.initial_state(1))
            for name, stream in self.streams.items()
        }

    # --- state -------------------------------------------------------------------------------

    def initial_state(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The baselines' states of ``batch_size`` fresh streams: ``[B, O, ...]`` each."""
        rows = batch_size * self.outputs
        state = {}
        for name, stream in self.streams.items():
            for field, value in stream.initial_state(rows).items():
                state[f"{PREFIX}{name}.{field}"] = _tensor(value, batch_size, self.outputs)
        return state

    def _read(self, transforms: Mapping[str, torch.Tensor], name: str) -> dict[str, np.ndarray]:
        """Baseline ``name``'s stream state, rows ``b * O + o`` (views of the tensors' memory
        on the CPU: a stream never writes its input state)."""
        return self._read_held(StepTransforms.entries(transforms), name)

    def _read_held(self, held: Mapping[str, Entry], name: str) -> dict[str, np.ndarray]:
        """:meth:`_read` of the fields as held (:meth:`StepTransforms.entries`: a fast
        step's arrays as it computed them, read without a conversion)."""
        state = {}
        single = self.outputs == 1
        for field, key in self.fields[name]:
            entry = held[key]
            if type(entry) is np.ndarray:  # (a fast step's array: no conversion)
                value = entry
            elif isinstance(entry, torch.Tensor) and entry.device.type != "cpu":
                value = entry.cpu().numpy()
            else:
                value = as_array(entry)
            # (B, O, ...) -> (B * O, ...): with one target, the view of its column (the same
            # values as the reshape, in a third of its time: twenty fields a step)
            state[field] = value[:, 0] if single else value.reshape(-1, *value.shape[2:])
        return state

    # --- steps -------------------------------------------------------------------------------

    def advance(
        self, transforms: Mapping[str, torch.Tensor], x: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Step every baseline through ``x [B, T, F]``'s target values: ``({name: [B, T, O]
        float64 one-step forecasts}, {the new state tensors})``."""
        values = x.index_select(2, self.target_inputs.to(x.device)).to(torch.float64)
        parts, arrays = self.advance_rows(transforms, values.cpu().numpy())
        device = x.device
        new = {key: torch.from_numpy(as_array(value)).to(device) for key, value in arrays.items()}
        return {name: torch.from_numpy(part).to(device) for name, part in parts.items()}, new

    def advance_rows(
        self, transforms: Mapping[str, torch.Tensor], values: np.ndarray
    ) -> tuple[dict[str, np.ndarray], dict[str, Entry]]:
        """:meth:`advance` of the targets' raw values ``[B, T, O]`` float64 in NumPy:
        ``({name: [B, T, O] float64 NumPy}, {the new state fields as arrays})`` (which
        :class:`seqstate.recipe.step.state.StepTransforms` makes tensors when read)."""
        b, steps, outputs = values.shape
        # (B, T, O) -> rows b * O + o, (B * O, T)
        rows = values[:, :, 0] if outputs == 1 else values.transpose(0, 2, 1).reshape(-1, steps)
        held = StepTransforms.entries(transforms)  # (the fields as held: one look-up each)
        single = outputs == 1
        parts: dict[str, np.ndarray] = {}
        new: dict[str, Entry] = {}
        for name, stream in self.streams.items():
            predictions, state = stream.step(self._read_held(held, name), rows)
            # (B * O, T) -> (B, T, O)
            parts[name] = (
                predictions[:, :, None]
                if single
                else predictions.reshape(b, outputs, steps).transpose(0, 2, 1)
            )
            for field, key in self.fields[name]:
                # (a stream returns arrays of its own, never its input's: they are shared,
                # not copied) (B * O, ...) -> (B, O, ...): with one target a new axis (the
                # reshape's view, without building its shape)
                value = state[field]
                new[key] = value[:, None] if single else value.reshape(b, outputs, *value.shape[1:])
        return parts, new

    def forecast(
        self, transforms: Mapping[str, torch.Tensor], horizon: int
    ) -> dict[str, torch.Tensor]:
        """``{name: [B, H, O] float64}``: each baseline's forecast from the state."""
        parts = {}
        for name, stream in self.streams.items():
            state = self._read(transforms, name)
            path = stream.forecast(state, horizon)  # (B * O, H)
            b = len(path) // max(self.outputs, 1)
            parts[name] = torch.from_numpy(path).reshape(b, self.outputs, horizon).permute(0, 2, 1)
        return parts

    def combine(self, network: torch.Tensor, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """:func:`combine` with this selection's weights."""
        return combine(self.weights, network, parts)

    def combine_rows(self, network: np.ndarray, parts: Mapping[str, np.ndarray]) -> np.ndarray:
        """:meth:`combine` of ``[B, T, O]`` float64 NumPy arrays (the same operations)."""
        total = np.zeros_like(network, dtype=np.float64)
        for name, weight in self.weights.items():
            part = network if name == NETWORK else parts[name]
            if name != NETWORK:
                part = np.where(np.isfinite(part), part, network)
            total = total + weight * part
        return total

    def combine_one(self, network: list[float], parts: Mapping[str, list[float]]) -> list[float]:
        """:meth:`combine` of flat lists of floats (one stream's few values), the same
        operations on doubles."""
        total = [0.0] * len(network)
        for name, weight in self.weights.items():
            part = network if name == NETWORK else parts[name]
            if name != NETWORK:
                part = [p if math.isfinite(p) else n for p, n in zip(part, network, strict=True)]
            total = [t + weight * p for t, p in zip(total, part, strict=True)]
        return total


def combine(
    weights: Mapping[str, float], network: torch.Tensor, parts: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """``sum_k w_k * part_k`` with the network's value standing in where a part has none
    (NaN). ``network [B, ..., T, O]``; each part ``[B, T, O]`` (broadcast over the middle
    dimensions of sample paths). Plain torch ops: the exported graph (its blend cell) runs
    this too."""
    total = torch.zeros_like(network, dtype=torch.float64)
    for name, weight in weights.items():
        if name == NETWORK:
            part = network
        else:
            part = parts[name].to(network.device)
            while part.dim() < network.dim():
                part = part.unsqueeze(1)
            part = torch.where(torch.isfinite(part), part, network)
        total = total + weight * part
    return total


def _rows(value: Any, batch: int, outputs: int) -> np.ndarray:
    """A stream's ``[B * O, ...]`` array as a state field's ``[B, O, ...]``."""
    # (a stream returns arrays of its own, never its input's: they are shared, not copied)
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    return array.reshape(batch, outputs, *array.shape[1:])


def _tensor(value: Any, batch: int, outputs: int) -> torch.Tensor:
    """A stream's ``[B * O, ...]`` array as a state tensor ``[B, O, ...]``."""
    return torch.from_numpy(_rows(value, batch, outputs))
