"""Baseline streams as torch cells over explicit state: the form a run's ONNX graph computes.

A run whose validation chose baselines answers with ``sum_k w_k * part_k``
(:class:`seqstate.recipe.step.blend.Blend`), each part a baseline stream stepped in NumPy
beside the network. An exported graph needs the same steps as torch ops over tensors, with
each baseline's state an explicit input and output under the names the run state uses
(``baseline.<name>.<field>``, ``[B, O, ...]``)::

    x [B, T, F] ──targets──► y [B, O, T] float64 ──BaselineCell(state)──► part [B, O, T]
    network [B, T, O] ──► sum_k w_k * (part_k, or the network where part_k has no value)

Every kind of :data:`seqstate.recipe.baselines.STREAMS` has one (:data:`TORCH_FORMS`), its
stream's step in torch with the same operations in the same order, so the state comes out the
same bits and the same grid point wins a tie: :class:`NaiveCell` (no recurrence: whole-chunk
ops), :class:`ETSCell` and :class:`ThetaCell` (a step at a time: a ``scan`` when exported, ONNX
``Scan``, so T stays dynamic). Sums run in :func:`pairwise_sum`'s order on both sides; a slot
write is a ``where`` over the slots. Damped ETS replays its first two seasons under a mask
for all the rows of a step while any of them is young (an ONNX ``If``), not row by row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from seqstate.recipe.baselines import THETA_ALPHAS, grid
from seqstate.recipe.step.blend import NETWORK, PREFIX, combine
from seqstate.recipe.step.cells import tracing

__all__ = [
    "TORCH_FORMS",
    "BlendCell",
    "ETSCell",
    "NaiveCell",
    "ThetaCell",
    "best_points",
    "over_time",
    "pairwise_sum",
    "torch_form",
]


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


Carry = tuple[torch.Tensor, ...]


def pairwise_sum(values: torch.Tensor) -> torch.Tensor:
    """``[..., k] -> [...]``: :func:`seqstate.recipe.baselines.pairwise_sum` in torch, the same
    additions in the same order (k is fixed when the graph is made)."""
    while values.shape[-1] > 1:
        k = values.shape[-1]
        pairs = values[..., 0 : k - 1 : 2] + values[..., 1:k:2]
        values = torch.cat([pairs, values[..., k - 1 :]], dim=-1) if k % 2 else pairs
    if values.shape[-1] == 0:
        return values.new_zeros(values.shape[:-1])
    return values[..., 0]


def best_points(squared: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """``[R]`` :func:`seqstate.recipe.baselines.best_points` of ``[R, G]`` (the first on
    ties: ONNX's ArgMin keeps the first index too; NaN never wins)."""
    error = squared / counted.clamp_min(1.0)
    return torch.where(torch.isfinite(error), error, torch.inf).argmin(dim=-1)


def over_time(
    step: Callable[..., tuple[Carry, torch.Tensor]], carry: Carry, *columns: torch.Tensor
) -> tuple[Carry, torch.Tensor]:
    """``step(carry, *column_t) -> (carry, [R] output)`` over the columns of each
    ``columns [R, T]``: (the last carry, the outputs ``[R, T]``). Traced (an export), a
    ``scan`` (ONNX ``Scan``: T is dynamic, and the body is traced once); otherwise a loop (an
    eager ``scan`` compiles its body first)."""
    if tracing():
        from torch._higher_order_ops.scan import scan

        def body(carry: Carry, xs: Carry) -> tuple[Carry, torch.Tensor]:
            return step(carry, *xs)

        carry, outputs = scan(body, carry, tuple(c.transpose(0, 1) for c in columns))
        return carry, outputs.transpose(0, 1)
    answers = []
    for t in range(columns[0].shape[1]):
        carry, answer = step(carry, *(c[:, t] for c in columns))
        answers.append(answer)
    if not answers:
        return carry, torch.empty_like(columns[0], dtype=torch.float64)
    return carry, torch.stack(answers, dim=1)


def _rows(state: Mapping[str, torch.Tensor], fields: Sequence[str]) -> Carry:
    """The ``[B, O, ...]`` state fields as rows ``[B * O, ...]``."""
    return tuple(state[f].reshape(-1, *state[f].shape[2:]) for f in fields)


def _unrows(fields: Sequence[str], carry: Carry, y: torch.Tensor) -> dict[str, torch.Tensor]:
    b, o = y.shape[0], y.shape[1]
    return {f: v.reshape(b, o, *v.shape[1:]) for f, v in zip(fields, carry, strict=True)}


def _slot(values: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """``values [R, ..., m]`` at each row's ``slot [R]``: ``[R, ...]``."""
    index = slot.reshape(-1, *([1] * (values.dim() - 1))).expand(*values.shape[:-1], 1)
    return values.gather(-1, index).squeeze(-1)


def _at_slot(slot: torch.Tensor, m: int, dims: int) -> torch.Tensor:
    """``[R, 1.., m]`` bool: True at each row's ``slot`` (a write to that slot is a where)."""
    hit = torch.arange(m, device=slot.device) == slot[:, None]  # (R, m)
    return hit.reshape(hit.shape[0], *([1] * (dims - 2)), m)


def _finite_or_extreme(values: torch.Tensor, largest: torch.Tensor) -> torch.Tensor:
    """``np.nan_to_num``: NaN -> 0, +-inf -> ``largest`` (a float64 tensor: the largest
    finite float64, which an exporter would make a float32 constant of) of that sign."""
    return torch.where(torch.isnan(values), 0.0, torch.clamp(values, -largest, largest))


def _mean(values: torch.Tensor) -> torch.Tensor:
    """Row means of ``[R, k]`` over the finite entries (0 for none), as the NumPy form."""
    finite = torch.isfinite(values)
    total = pairwise_sum(torch.where(finite, values, 0.0))
    return total / finite.sum(dim=-1).clamp_min(1).to(values.dtype)


class ETSCell(nn.Module):
    """:class:`seqstate.recipe.baselines.ETSStream`'s step in torch over its state (``first
    [B, O, 2m]``, ``seen``, ``position`` ``[B, O]`` int64, ``level``, ``trend``,
    ``squared``, ``counted`` ``[B, O, G]``, ``season [B, O, G, m]``), fixed-shape: every step
    runs the whole grid once (:func:`seqstate.recipe.baselines.grid_step`) and also replays
    ``first`` under the mask of the values seen (:func:`seqstate.recipe.baselines.grid_run`,
    2m grid steps); rows that have seen at most 2m values take the replay::

        seen += 1;  warm = seen <= 2m;  first[seen - 1] = y where warm
        grid = grid_step(grid, y)
        if any(warm): grid = where(warm, grid_run(first, columns < seen), grid)
        answer = level + phi * trend + season[position] at g = argmin squared / counted

    The same operations in the same order as the NumPy stream (the same bits, so the same
    point wins a tie). Exported, the ``if`` is a ``torch.cond`` (ONNX ``If``): a step costs
    one grid step once every row of the call is past its first 2m values, 2m + 1 before."""

    def __init__(self, season: int) -> None:
        super().__init__()
        self.season = max(1, int(season))
        self.register_buffer("points", torch.from_numpy(grid(self.season)))
        largest = torch.finfo(torch.float64).max
        self.register_buffer("largest", torch.tensor(largest, dtype=torch.float64))

    points: torch.Tensor
    largest: torch.Tensor
    fields = ("first", "seen", "level", "trend", "season", "position", "squared", "counted")

    def forward(
        self, state: Mapping[str, torch.Tensor], y: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``y [B, O, T]`` float64 -> (``[B, O, T]`` one-step forecasts, the new state)."""
        m = self.season
        columns = torch.arange(2 * m, device=y.device)

        def step(carry: Carry, value: torch.Tensor) -> tuple[Carry, torch.Tensor]:
            first, seen, *grid_state = carry
            seen = seen + 1
            warm = seen <= 2 * m
            writes = warm[:, None] & (columns == (seen - 1)[:, None])
            first = torch.where(writes, value[:, None], first)
            stepped = self._step(tuple(grid_state), value, torch.isfinite(value), None)

            def replay(first: torch.Tensor, seen: torch.Tensor, *stepped: torch.Tensor) -> Carry:
                replayed = self._run(first, columns < seen[:, None])
                warm = seen <= 2 * m
                return tuple(
                    torch.where(warm.reshape(-1, *([1] * (a.dim() - 1))), r, a)
                    for a, r in zip(stepped, replayed, strict=True)
                )

            def settled(first: torch.Tensor, seen: torch.Tensor, *stepped: torch.Tensor) -> Carry:
                return tuple(a.clone() for a in stepped)  # (a branch may not return its input)

            operands = (first, seen, *stepped)
            if tracing():  # the replay only while a row is young: an ONNX If
                chosen = tuple(torch.cond(warm.any(), replay, settled, operands))
            else:
                chosen = replay(*operands) if bool(warm.any()) else stepped
            return (first, seen, *chosen), self._next(chosen)

        carry, predictions = over_time(step, _rows(state, self.fields), y.flatten(0, 1))
        return predictions.reshape(y.shape), _unrows(self.fields, carry, y)

    def _step(
        self,
        grid_state: Carry,
        y: torch.Tensor,
        keep: torch.Tensor,
        scored: torch.Tensor | None,
    ) -> Carry:
        """:func:`seqstate.recipe.baselines.grid_step` (``scored`` None: every row; the slot
        is written whether kept or not, as there: ``seasonal + gamma * 0``)."""
        level, trend, season, position, squared, counted = grid_state
        alpha, beta, phi, gamma = self.points.unbind(dim=1)
        m = self.season
        seasonal = _slot(season, position)  # (R, G)
        base = level + phi * trend
        missed = y[:, None] - (base + seasonal)
        if scored is None:
            squared, counted = squared + missed * missed, counted + 1.0
        else:
            squared = squared + torch.where(scored[:, None], missed * missed, 0.0)
            counted = counted + scored[:, None].to(counted.dtype)
        kept = keep[:, None]
        error = torch.where(kept, missed, 0.0)
        level = torch.where(kept, base + alpha * error, level)
        trend = torch.where(kept, phi * trend + beta * error, trend)
        season = torch.where(
            _at_slot(position, m, 3), (seasonal + gamma * error)[..., None], season
        )
        position = torch.where(keep, torch.remainder(position + 1, m), position)
        return level, trend, season, position, squared, counted

    def _run(self, first: torch.Tensor, mask: torch.Tensor) -> Carry:
        """:func:`seqstate.recipe.baselines.grid_run` over ``first [R, 2m]`` (``mask``: the
        values seen), every one of the 2m steps taken under the mask."""
        m, g = self.season, self.points.shape[0]
        values = torch.where(mask, first, torch.nan)
        head = values[:, :m]
        level = _mean(head)  # (R,)
        if m > 1:
            season = _finite_or_extreme(head - level[:, None], self.largest)
            following = values[:, m : 2 * m]
            whole = torch.isfinite(following).all(dim=-1)
            trend = torch.where(whole, (_mean(following) - level) / m, 0.0)
        else:
            season = torch.zeros_like(head)
            trend = torch.zeros_like(level)
        rows = level.shape[0]
        # (a scan's carry keeps its layout: each a tensor of its own, contiguous)
        grid_state: Carry = (
            level[:, None].expand(rows, g).contiguous(),
            trend[:, None].expand(rows, g).contiguous(),
            season[:, None, :].expand(rows, g, m).contiguous(),
            torch.zeros_like(mask[:, 0], dtype=torch.long),
            level.new_zeros(rows, g),
            level.new_zeros(rows, g),
        )
        burn_in = (mask.sum(dim=-1) - 1).clamp(0, m)
        columns = torch.arange(2 * m, device=mask.device)
        scored = mask & (burn_in[:, None] <= columns)  # (R, 2m)
        keep = mask & torch.isfinite(values)

        def step(carry: Carry, y: torch.Tensor, kept: torch.Tensor, counts: torch.Tensor):
            return self._step(carry, y, kept, counts), y.clone()  # (an output, unused)

        grid_state, _ = over_time(step, grid_state, values, keep, scored)
        return grid_state

    def _next(self, grid_state: Carry) -> torch.Tensor:
        """``[R]`` the best point's forecast of the next value (``_next`` of the stream)."""
        level, trend, season, position, squared, counted = grid_state
        best = best_points(squared, counted)[:, None]  # (R, 1)
        phi = self.points[:, 2][best[:, 0]]
        chosen = season.gather(1, best[..., None].expand(-1, 1, season.shape[-1]))[:, 0]
        return (
            level.gather(1, best)[:, 0]
            + phi * trend.gather(1, best)[:, 0]
            + _slot(chosen, position)
        )


class ThetaCell(nn.Module):
    """:class:`seqstate.recipe.baselines.ThetaStream`'s step in torch over its state (``seen``
    ``[B, O]`` int64, ``recent [B, O, m + 1]``, ``dsum``, ``dcount``, ``slot_count``,
    ``slot_time`` ``[B, O, m]``, ``sum_y``, ``sum_ty`` ``[B, O]``, ``ses``, ``squared``,
    ``counted`` ``[B, O, G]``, ``weight [B, O, G, m]``): the same operations in the same order,
    a slot's update a ``where`` over the slots. The answer's ``(1 - alpha) ** n`` is the one
    operation whose last bit may differ (torch's pow); the state is the same bits."""

    fields = (
        "seen", "recent", "dsum", "dcount", "sum_y", "sum_ty", "slot_count", "slot_time",
        "ses", "weight", "squared", "counted",
    )  # fmt: skip

    def __init__(self, season: int) -> None:
        super().__init__()
        self.season = max(1, int(season))
        self.register_buffer("alphas", torch.tensor(THETA_ALPHAS, dtype=torch.float64))
        m = self.season
        if m % 2 == 0:  # the centred moving average: 2 x m for even m
            weights = torch.full((m + 1,), 1.0 / m, dtype=torch.float64)
            weights[0] = weights[-1] = 0.5 / m
            self.span, self.centre = m + 1, m // 2
        else:
            weights = torch.cat(
                [
                    torch.zeros(1, dtype=torch.float64),
                    torch.full((m,), 1.0 / m, dtype=torch.float64),
                ]
            )
            self.span, self.centre = m, (m - 1) // 2
        self.register_buffer("average_weights", weights)

    alphas: torch.Tensor
    average_weights: torch.Tensor

    def forward(
        self, state: Mapping[str, torch.Tensor], y: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``y [B, O, T]`` float64 -> (``[B, O, T]`` one-step forecasts, the new state)."""
        carry, predictions = over_time(self._step, _rows(state, self.fields), y.flatten(0, 1))
        return predictions.reshape(y.shape), _unrows(self.fields, carry, y)

    def _indices(self, dsum: torch.Tensor, dcount: torch.Tensor) -> torch.Tensor:
        seen = dcount > 0
        raw = torch.where(seen, dsum / dcount.clamp_min(1.0), 0.0)
        centre = pairwise_sum(raw) / seen.sum(dim=-1).clamp_min(1).to(raw.dtype)
        return torch.where(seen, raw - centre[:, None], 0.0)

    def _step(self, carry: Carry, value: torch.Tensor) -> tuple[Carry, torch.Tensor]:
        (seen, recent, dsum, dcount, sum_y, sum_ty, slot_count, slot_time,
         ses, weight, squared, counted) = carry  # fmt: skip
        m, alphas = self.season, self.alphas
        index = seen
        at_slot = _at_slot(torch.remainder(index, m), m, 2)  # (R, m)
        indices = self._indices(dsum, dcount)
        level = ses - pairwise_sum(weight * indices[:, None, :])
        error = (value - _slot(indices, torch.remainder(index, m)))[:, None] - level
        scored = (index >= m)[:, None]
        squared = squared + torch.where(scored, error * error, 0.0)
        counted = counted + scored.to(counted.dtype)
        first = (index == 0)[:, None]
        keep = 1.0 - alphas[None, :]
        ses = torch.where(first, value[:, None], keep * ses + alphas * value[:, None])
        weight = weight * torch.where(first, 0.0, keep)[:, :, None]
        added = torch.where(first, 1.0, alphas[None, :])  # (R, G)
        weight = torch.where(at_slot[:, None, :], weight + added[..., None], weight)
        time = index.to(value.dtype)
        sum_y = sum_y + value
        sum_ty = sum_ty + time * value
        slot_count = torch.where(at_slot, slot_count + 1.0, slot_count)
        slot_time = torch.where(at_slot, slot_time + time[:, None], slot_time)
        recent = torch.cat([recent[:, 1:], value[:, None]], dim=1)
        seen = index + 1
        if m > 1:
            dsum, dcount = self._detrend(recent, seen, dsum, dcount)
        new = (seen, recent, dsum, dcount, sum_y, sum_ty, slot_count, slot_time,
               ses, weight, squared, counted)  # fmt: skip
        return new, self._forecast(new)

    def _detrend(
        self, recent: torch.Tensor, seen: torch.Tensor, dsum: torch.Tensor, dcount: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m, span, centre = self.season, self.span, self.centre
        ready = seen >= span
        window = torch.where(ready[:, None] & torch.isfinite(recent), recent, 0.0)
        average = pairwise_sum(window * self.average_weights)
        at = recent.shape[1] - span + centre
        slot = _at_slot(torch.remainder(seen - span + centre, m), m, 2)
        dsum = torch.where(
            slot, dsum + torch.where(ready, window[:, at] - average, 0.0)[:, None], dsum
        )
        dcount = torch.where(slot, dcount + ready[:, None].to(dcount.dtype), dcount)
        return dsum, dcount

    def _forecast(self, carry: Carry) -> torch.Tensor:
        """``[R]`` the stream's ``forecast(state, 1)``."""
        (seen, _, dsum, dcount, sum_y, sum_ty, slot_count, slot_time,
         ses, weight, squared, counted) = carry  # fmt: skip
        m = self.season
        best = best_points(squared, counted)[:, None]  # (R, 1)
        alpha = self.alphas[best[:, 0]]
        indices = self._indices(dsum, dcount)
        chosen = weight.gather(1, best[..., None].expand(-1, 1, m))[:, 0]  # (R, m)
        level = ses.gather(1, best)[:, 0] - pairwise_sum(chosen * indices)
        n = seen.to(ses.dtype)
        adjusted = sum_y - pairwise_sum(slot_count * indices)
        timed = sum_ty - pairwise_sum(slot_time * indices)
        sum_t = n * (n - 1) / 2
        sum_tt = (n - 1) * n * (2 * n - 1) / 6
        spread = n * sum_tt - sum_t * sum_t
        positive = spread > 0
        slope = torch.where(
            positive, (n * timed - sum_t * adjusted) / torch.where(positive, spread, 1.0), 0.0
        )
        drift = (1.0 - (1.0 - alpha) ** n) / alpha
        seasonal = _slot(indices, torch.remainder(seen, m))
        path = level + slope / 2 * drift + seasonal
        return torch.where(seen > 0, path, torch.nan)


#: baseline kind -> its torch cell given the season (kinds absent here have no graph form)
TORCH_FORMS: dict[str, Callable[[int], nn.Module]] = {
    "seasonal_naive": NaiveCell,
    "ets": ETSCell,
    "theta": ThetaCell,
}


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
        return combine(self.weights, network, parts), new
