"""HistoryScale: the MASE scale of each stream's history, kept as it streams.

A run's calibrated intervals (:mod:`seqstate.recipe.intervals`) are its validation errors in
units of each series' MASE scale, the mean absolute seasonal difference of the history before
the forecast origin. A stream has no history to look back at, only its state, so the scale is
carried like every other transform that looks at the past::

    state (per stream row b, target o):
        interval.last     [B, m, O] float64  the last m raw target values, oldest first
        interval.lag_sum  [B, O]    float64  sum over t >= m of |v[t] - v[t - m]|
        interval.one_sum  [B, O]    float64  sum over t >= 1 of |v[t] - v[t - 1]|
    with n = the stream's steps (``steps``, shared by every cell):
        scale = lag_sum / (n - m)          when n > m, unless that is 0 (seasonally flat)
              = one_sum / (n - 1)          otherwise, when n > 1
              = NaN                        when n <= 1 or the history never varied

which is :func:`seqstate.recipe.metrics.mase_scale` of the history, step by step: chunked ==
whole, reset == separate, and the same number whether a table is run through ``forecast`` or
streamed step by step through the server (the sums are float64 over the float32 values the
step function reads).

The same state tells when a stream's history has never varied (``one_sum == 0`` after two
values or more: a constant series, a product that never sold). Its answer is then its last
value (:meth:`HistoryScale.hold_flat`, :meth:`HistoryScale.hold_flat_forecast`), as every
statistical baseline would answer, rather than what the network makes of a series it cannot
tell from the others (a constant 7 forecast as 8.1 and rising, zeros as 0.2), and its
calibrated interval has no width. The first change ends it: from then on the run answers as
trained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from seqstate.recipe.step.cells import tracing
from seqstate.recipe.step.state import Entry, Floats, as_array, as_floats, entry_of

__all__ = ["PREFIX", "HistoryScale"]

PREFIX = "interval."


class HistoryScale:
    """The running MASE scale at season ``season`` of the targets at ``target_inputs``
    (their columns among the raw inputs ``x`` holds)."""

    def __init__(self, season: int, target_inputs: Sequence[int]) -> None:
        if int(season) < 1:
            raise ValueError(f"season must be >= 1; received {season}")
        self.season = int(season)
        self.target_inputs = torch.tensor(list(target_inputs), dtype=torch.long)
        self.target_columns = np.asarray(list(target_inputs), dtype=np.int64)
        self.target_list = [int(i) for i in target_inputs]
        self.keys = (f"{PREFIX}last", f"{PREFIX}lag_sum", f"{PREFIX}one_sum")
        self.outputs = len(target_inputs)

    def initial_state(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Zero sums and an empty past for ``batch_size`` fresh streams."""
        m, o = self.season, self.outputs
        return {
            f"{PREFIX}last": torch.zeros(batch_size, m, o, dtype=torch.float64),
            f"{PREFIX}lag_sum": torch.zeros(batch_size, o, dtype=torch.float64),
            f"{PREFIX}one_sum": torch.zeros(batch_size, o, dtype=torch.float64),
        }

    def advance(
        self, transforms: Mapping[str, torch.Tensor], x: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The state after the steps ``x [B, T, F_raw]`` (``transforms["steps"]``: the steps
        before them)."""
        if x.device.type != "cpu" or tracing():
            return self.advance_graph(transforms, x)
        # the same arithmetic in NumPy: a served step's few small arrays cost a third of the
        # torch ops' dispatch (tested equal to advance_graph)
        m, steps = self.season, x.shape[1]
        if steps == 1:
            advanced = self.advance_rows(transforms, x.numpy()[:, 0])
            return {name: torch.from_numpy(as_array(value)) for name, value in advanced.items()}
        values = x.numpy()[:, :, self.target_columns].astype(np.float64)  # [B, T, O]
        full = np.concatenate([transforms[f"{PREFIX}last"].numpy(), values], axis=1)
        seasonal = np.abs(values - full[:, :steps])
        one = np.abs(values - full[:, m - 1 : m - 1 + steps])
        before = transforms["steps"].numpy()  # [B]
        if before.min(initial=m) < m:  # some row's first steps have no past at a lag
            seen = (before[:, None] + np.arange(steps))[..., None]  # [B, T, 1]
            seasonal = np.where(seen >= m, seasonal, 0.0)
            one = np.where(seen >= 1, one, 0.0)
        lag_sum = transforms[f"{PREFIX}lag_sum"].numpy() + seasonal.sum(axis=1)
        one_sum = transforms[f"{PREFIX}one_sum"].numpy() + one.sum(axis=1)
        return {
            f"{PREFIX}last": torch.from_numpy(np.ascontiguousarray(full[:, steps:])),
            f"{PREFIX}lag_sum": torch.from_numpy(lag_sum),
            f"{PREFIX}one_sum": torch.from_numpy(one_sum),
        }

    def advance_rows(
        self, transforms: Mapping[str, torch.Tensor], rows: np.ndarray, first: int | None = None
    ) -> dict[str, Entry]:
        """:meth:`advance` of one step, ``rows [B, F_raw]`` float32 NumPy: the same sums
        (one term each: a sum over one step is its term) in fewer NumPy calls, as arrays
        (:class:`seqstate.recipe.step.state.StepTransforms` makes them tensors when read).
        ``first``: the fewest steps any row has seen before this one, where the caller
        knows it."""
        m = self.season
        key_last, key_lag, key_one = self.keys
        values = rows[:, self.target_columns].astype(np.float64)  # [B, O]
        last = as_array(entry_of(transforms, key_last))  # [B, m, O]
        seasonal = np.abs(values - last[:, 0])  # minus the value m steps back
        one = np.abs(values - last[:, m - 1])  # minus the value one step back
        if first is None or first < m:
            before = as_array(entry_of(transforms, "steps"))[:, None]  # [B, 1]
            first = int(before.min(initial=m))
        if first < m:  # some row's first steps have no past at a lag
            seasonal = np.where(before >= m, seasonal, 0.0)
            one = np.where(before >= 1, one, 0.0)
        kept = np.empty_like(last)
        kept[:, :-1] = last[:, 1:]
        kept[:, -1] = values
        return {
            key_last: kept,
            key_lag: as_array(entry_of(transforms, key_lag)) + seasonal,
            key_one: as_array(entry_of(transforms, key_one)) + one,
        }

    def advance_single(
        self, transforms: Mapping[str, torch.Tensor], row: Sequence[float], before: int
    ) -> dict[str, Entry]:
        """:meth:`advance` of one stream's one step, on Python floats: ``row`` its F_raw raw
        values (float32 values as doubles, as the NumPy path reads them), ``before`` its
        steps before this one. The same sums in the same order (one term each), as
        :class:`seqstate.recipe.step.state.Floats`."""
        m, o = self.season, self.outputs
        key_last, key_lag, key_one = self.keys
        values = [row[i] for i in self.target_list]
        last = as_floats(entry_of(transforms, key_last))  # m * O floats, oldest first
        sums = [as_floats(entry_of(transforms, key_lag)), as_floats(entry_of(transforms, key_one))]
        # (the value m steps back, and the one one step back; a row without one adds 0)
        for k, (start, seen) in enumerate(((0, m), ((m - 1) * o, 1))):
            if before >= seen:
                past = last[start : start + o]
                sums[k] = [s + abs(v - p) for s, v, p in zip(sums[k], values, past, strict=True)]
        return {
            key_last: Floats(last[o:] + values, (1, m, o), torch.float64),
            key_lag: Floats(sums[0], (1, o), torch.float64),
            key_one: Floats(sums[1], (1, o), torch.float64),
        }

    def advance_graph(
        self, transforms: Mapping[str, torch.Tensor], x: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """:meth:`advance` in torch ops, data-independent (traced for export; any device)."""
        m, steps = self.season, x.shape[1]
        values = x.index_select(2, self.target_inputs.to(x.device)).to(torch.float64)
        last = transforms[f"{PREFIX}last"]
        full = torch.cat([last, values], dim=1)  # [B, m + T, O]: full[:, m + j] is step j
        seen = transforms["steps"][:, None] + torch.arange(steps, device=x.device)  # [B, T]
        seasonal = (values - full[:, :steps]).abs()  # step j minus the step m earlier
        one = (values - full[:, m - 1 : m - 1 + steps]).abs()  # minus the step before
        zero = torch.zeros((), dtype=torch.float64, device=x.device)
        lag_sum = transforms[f"{PREFIX}lag_sum"] + torch.where(
            (seen >= m)[..., None], seasonal, zero
        ).sum(dim=1)
        one_sum = transforms[f"{PREFIX}one_sum"] + torch.where(
            (seen >= 1)[..., None], one, zero
        ).sum(dim=1)
        return {
            f"{PREFIX}last": full[:, steps:],
            f"{PREFIX}lag_sum": lag_sum,
            f"{PREFIX}one_sum": one_sum,
        }

    # --- flat histories --------------------------------------------------------------------

    def flat_now(self, transforms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, O]`` bool: the streams whose history (two values or more) never varied."""
        steps = transforms["steps"][:, None]
        return (transforms[f"{PREFIX}one_sum"] == 0) & (steps >= 2)

    def hold_flat(
        self,
        before: Mapping[str, torch.Tensor],
        after: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        answer: torch.Tensor,
    ) -> torch.Tensor:
        """``answer [B, T, O]`` (one-step forecasts, float64) with the step's own target
        value wherever the stream's history through that step (two values or more) never
        varied; ``before``/``after``: the state around the steps ``x [B, T, F_raw]``. A NaN
        answer (differencing without its past) stays NaN."""
        if x.shape[1] == 1 and answer.device.type == "cpu" and not tracing():
            # the streaming step, in NumPy: a stream that varied ends it in one test (one
            # stream's sums are floats: tested as they are)
            held_sum = entry_of(after, f"{PREFIX}one_sum")
            if type(held_sum) is Floats and all(held_sum.values):
                return answer
            one = as_array(held_sum)  # [B, O]
            if one.all():
                return answer
            steps = as_array(entry_of(after, "steps"))[:, None]
            flat = (one == 0) & (steps >= 2)
            if not flat.any():
                return answer
            last = as_array(entry_of(after, f"{PREFIX}last"))[:, -1]  # [B, O]
            held = answer.numpy().copy()
            rows = held[:, 0]
            take = flat & np.isfinite(rows)
            rows[take] = last[take]
            return torch.from_numpy(held)
        return self.hold_flat_graph(before, x, answer)

    def hold_flat_graph(
        self, before: Mapping[str, torch.Tensor], x: torch.Tensor, answer: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`hold_flat` in torch ops, data-independent (traced for export; any device):
        each step's flatness from the state before the steps and their values."""
        steps = x.shape[1]
        values = x.index_select(2, self.target_inputs.to(x.device)).to(torch.float64)
        last = before[f"{PREFIX}last"][:, -1:]  # [B, 1, O] the value before the steps
        previous = torch.cat([last, values[:, :-1]], dim=1)
        seen = before["steps"][:, None] + torch.arange(steps, device=x.device)  # [B, T]
        later = (seen >= 1)[..., None]  # [B, T, 1]: a step with one before it
        zero = torch.zeros((), dtype=torch.float64, device=x.device)
        change = torch.where(later, (values - previous).abs(), zero)
        total = before[f"{PREFIX}one_sum"][:, None] + change.cumsum(dim=1)
        flat = (total == 0) & later & torch.isfinite(answer)
        return torch.where(flat, values, answer)

    def hold_flat_forecast(
        self, transforms: Mapping[str, torch.Tensor], forecast: torch.Tensor
    ) -> torch.Tensor:
        """``forecast [B, ..., H, O]`` (a path per stream, or sample paths) as the last
        value at every step for the streams whose history never varied."""
        flat = self.flat_now(transforms)  # [B, O]
        last = transforms[f"{PREFIX}last"][:, -1]  # [B, O]
        shape = (flat.shape[0],) + (1,) * (forecast.dim() - 2) + (flat.shape[1],)
        return torch.where(
            flat.reshape(shape).to(forecast.device),
            last.reshape(shape).to(forecast.device, forecast.dtype),
            forecast,
        )

    def scales(self, transforms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, O]`` float64: each stream's MASE scale per target (NaN: no variation yet)."""
        n = transforms["steps"].to(torch.float64)[:, None]  # [B, 1]
        m = self.season
        nan = torch.full((), float("nan"), dtype=torch.float64)
        seasonal = transforms[f"{PREFIX}lag_sum"] / (n - m).clamp(min=1)
        one = transforms[f"{PREFIX}one_sum"] / (n - 1).clamp(min=1)
        one = torch.where(n > 1, one, nan)
        scale = torch.where((n > m) & (seasonal > 0), seasonal, one)
        return torch.where(scale > 0, scale, nan)
