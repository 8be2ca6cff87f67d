"""Baseline streams as torch cells over explicit state: the form a run's ONNX graph computes.

A run whose validation chose baselines answers with ``sum_k w_k * part_k``
(:class:`seqstate.recipe.step.blend.Blend`), each part a baseline stream stepped in NumPy
beside the network. An exported graph needs the same steps as torch ops over tensors, with
each baseline's state an explicit input and output under the names the run state uses
(``baseline.<name>.<field>``, ``[B, O, ...]``)::

    x [B, T, F] ──targets──► y [B, O, T] float64 ──BaselineCell(state)──► part [B, O, T]
    network [B, T, O] ──► sum_k w_k * (part_k, or the network where part_k has no value)

:class:`NaiveCell` is :class:`seqstate.recipe.baselines.NaiveStream`'s step in torch, the same
operations in the same order. Damped ETS has no torch form: its stream replays a row's first
two seasons from scratch and picks its coefficients per step (a data-dependent number of grid
passes), so a run that blends it is refused by the exporter (:func:`torch_form` is None).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from seqstate.recipe.step.blend import NETWORK, PREFIX

__all__ = ["TORCH_FORMS", "BlendCell", "NaiveCell", "torch_form"]


class NaiveCell(nn.Module):
    """Seasonal naive over state ``values [B, O, m]`` (the last m values, oldest first, NaN
    before any) and ``seen [B, O]`` int64: after value t the forecast of t + 1 is the value one
    season back from t + 1, or the last value while fewer than m were seen."""

    def __init__(self, season: int) -> None:
        super().__init__()
        self.season = int(season)

    def forward(
        self, state: Mapping[str, torch.Tensor], y: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``y [B, O, T]`` float64 -> (``[B, O, T]`` one-step forecasts, the new state)."""
        m, steps = self.season, y.shape[-1]
        values, seen = state["values"], state["seen"]
        joined = torch.cat([values, y], dim=-1)  # (B, O, m + T)
        after = seen[..., None] + torch.arange(1, steps + 1, device=y.device)  # (B, O, T)
        seasonal = joined[..., 1 : 1 + steps]
        last = joined[..., m : m + steps]
        predictions = torch.where(after >= m, seasonal, last)
        return predictions, {"values": joined[..., steps:], "seen": seen + steps}


#: baseline kind -> its torch cell given the season (kinds absent here have no graph form)
TORCH_FORMS = {"seasonal_naive": NaiveCell}


def torch_form(name: str) -> nn.Module | None:
    """The torch cell of baseline ``name`` (``"seasonal_naive_12"``), or None where its kind
    has none (``"ets_12"``)."""
    kind, _, season = name.rpartition("_")
    if kind not in TORCH_FORMS or not season.isdigit():
        return None
    return TORCH_FORMS[kind](int(season))


class BlendCell(nn.Module):
    """A run's selection in torch: its baselines stepped through ``x``'s target columns and
    combined with the network's answer as :meth:`Blend.combine` does.

    Args:
        weights: the selection's weights (``"network"``: the members' mean).
        target_inputs: each target's column in ``x``.
        combines: whether the answer is the combination (a run of shift 1) or the network's
            (the selection is of one-step forecasts; the baselines still step).
    """

    def __init__(
        self, weights: Mapping[str, float], target_inputs: Sequence[int], combines: bool
    ) -> None:
        super().__init__()
        self.weights = {str(k): float(v) for k, v in weights.items()}
        cells = {}
        for name in self.weights:
            if name == NETWORK:
                continue
            cell = torch_form(name)
            if cell is None:
                raise ValueError(f"baseline {name!r} has no torch form")
            cells[name] = cell
        self.cells = nn.ModuleDict(cells)
        self.register_buffer("target_inputs", torch.tensor(list(target_inputs), dtype=torch.long))
        self.combines = combines

    target_inputs: torch.Tensor

    def forward(
        self, transforms: Mapping[str, torch.Tensor], x: torch.Tensor, network: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``x [B, T, F]`` raw, ``network [B, T, O]`` float64 -> (the answer ``[B, T, O]``,
        the baselines' new state tensors by their run-state names)."""
        y = x.index_select(2, self.target_inputs).to(torch.float64).permute(0, 2, 1)
        parts: dict[str, torch.Tensor] = {}
        new: dict[str, torch.Tensor] = {}
        for name, cell in self.cells.items():
            head = f"{PREFIX}{name}."
            state = {k[len(head) :]: v for k, v in transforms.items() if k.startswith(head)}
            predictions, stepped = cell(state, y)
            parts[name] = predictions.permute(0, 2, 1)  # (B, T, O)
            new |= {head + field: value for field, value in stepped.items()}
        if not self.combines:
            return network, new
        total = torch.zeros_like(network, dtype=torch.float64)
        for name, weight in self.weights.items():
            part = network if name == NETWORK else parts[name]
            if name != NETWORK:
                part = torch.where(torch.isfinite(part), part, network)
            total = total + weight * part
        return total, new
