"""Transform cells: a run's preprocessing as small torch modules, batched over rows.

Each cell is the torch form of one step of :mod:`seqstate.recipe.scaling` /
:mod:`seqstate.recipe.covariates`, written so that a table and a stream give the same numbers
(float64 inside, as the table code computes) and so that it traces for export (plain tensor
ops, shapes fixed by the run, no data-dependent Python branches):

    raw x [B, T, F] ──TargetTransform──► ──Difference(state: history)──► ──Scaling(state:
    location, scale)──► model space; time [B, T] ──Calendar──► sin/cos columns

    model output ──Scaling.inverse──► ──Difference.inverse(history)──►
        ──TargetTransform.inverse──► raw units

A cell that looks at the past keeps what it needs as state, in the caller's hands, like a
recurrent layer: :class:`Difference` the last transformed target values per lag;
:class:`Scaling` the statistics of the stream's series, bound when the stream starts.

How a learned cell fits (ES-RNN's level and seasonal components, not built yet): a cell is an
``nn.Module`` inside :class:`seqstate.recipe.step.MemberStep`, so parameters it registers are
among ``RunStep.parameters()`` and train jointly with the core through the same step
function; its state lives in ``RunState.transforms`` under the member's prefix (batch first),
so it is carried, reset, selected, scattered and serialised with everything else, and the
contracts the tests check (chunked == whole, reset == separate, exact resume) cover it.
None of the cells here has parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "Calendar",
    "Difference",
    "Scaling",
    "TargetTransform",
    "calendar_columns",
    "span",
    "tracing",
]


def tracing() -> bool:
    """Traced for export or compilation: the step takes its data-independent torch path (no
    NumPy, no branch on values)."""
    # (torch.onnx's exporters trace or compile, so these two see an export too)
    return bool(torch.jit.is_tracing() or torch.compiler.is_compiling())


_DAY = 86_400
_PERIODS = {"month": 12.0, "weekday": 7.0, "hour": 24.0}


def _floor_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return torch.div(a, b, rounding_mode="floor")


def calendar_columns(seconds: torch.Tensor, kinds: Sequence[str]) -> torch.Tensor:
    """``[..., 2K]`` float64 sin/cos calendar features of ``seconds`` (int64 Unix seconds, UTC
    wall time as the table reads it) for ``kinds`` (``month``, ``weekday``, ``hour``): the
    same values as :func:`seqstate.recipe.covariates.calendar_features` of those times.

    The month comes from the day number by the proleptic Gregorian civil-from-days algorithm
    (H. Hinnant), in integer ops so it exports: no date library is needed at serving time.
    """
    days = _floor_div(seconds, _DAY)
    positions = []
    for kind in kinds:
        if kind == "month":
            z = days + 719_468  # days since 0000-03-01
            era = _floor_div(z, 146_097)
            day_of_era = z - era * 146_097
            year_of_era = _floor_div(
                day_of_era
                - _floor_div(day_of_era, 1_460)
                + _floor_div(day_of_era, 36_524)
                - _floor_div(day_of_era, 146_096),
                365,
            )
            day_of_year = day_of_era - (
                365 * year_of_era + _floor_div(year_of_era, 4) - _floor_div(year_of_era, 100)
            )
            shifted_month = _floor_div(5 * day_of_year + 2, 153)  # 0 = March
            month = shifted_month + torch.where(shifted_month < 10, 3, -9)  # 1..12
            positions.append((month - 1).to(torch.float64) * (2.0 * math.pi / 12.0))
        elif kind == "weekday":
            weekday = torch.remainder(days + 3, 7)  # 1970-01-01 was a Thursday (3)
            positions.append(weekday.to(torch.float64) * (2.0 * math.pi / 7.0))
        elif kind == "hour":
            minutes = _floor_div(seconds - days * _DAY, 60)  # of the day
            positions.append(minutes.to(torch.float64) * (2.0 * math.pi / (24.0 * 60.0)))
        else:
            raise ValueError(f"unknown calendar feature {kind!r}; known: {sorted(_PERIODS)}")
    if not positions:
        return seconds.new_zeros((*seconds.shape, 0), dtype=torch.float64)
    angle = torch.stack(positions, dim=-1)  # (..., K)
    # one sin and one cos for every kind: (..., K, 2) -> (..., 2K) = k0_sin, k0_cos, k1_sin, ...
    return torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).flatten(-2)


_WEEK_MINUTES = 7 * 24 * 60


class Calendar(nn.Module):
    """Calendar features from the step's time: ``time [B, T]`` int64 -> ``[B, T, 2K]``.

    Weekday and hour repeat every week, so without ``month`` the features are read from a
    table of the week's 10 080 minutes (:func:`calendar_columns` of each, computed once):
    three ops a step instead of fifteen. With ``month`` they are computed.
    """

    week: torch.Tensor

    def __init__(self, kinds: Sequence[str]) -> None:
        super().__init__()
        self.kinds = tuple(kinds)
        self.by_week = bool(self.kinds) and "month" not in self.kinds
        self.week_rows: np.ndarray | None = None
        # the same table as Python floats, one list per minute, for one stream's steps
        self.week_lists: list[list[float]] | None = None
        if self.by_week:
            minutes = torch.arange(_WEEK_MINUTES, dtype=torch.int64) * 60  # from 1970-01-01
            table = calendar_columns(minutes, self.kinds).to(torch.float32)
            self.register_buffer("week", table, persistent=False)  # (10080, 2K)

    @property
    def width(self) -> int:
        return 2 * len(self.kinds)

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        if self.by_week:
            minute = torch.remainder(_floor_div(time, 60), _WEEK_MINUTES)  # (B, T)
            return self.week[minute]
        # float32 as the table code stores them (calendar_features casts)
        return calendar_columns(time, self.kinds).to(torch.float32)

    def rows(self, time: np.ndarray) -> np.ndarray:
        """:meth:`forward` of one step in NumPy: ``time [B]`` int64 -> ``[B, 2K]`` float32
        (the same values: a lookup in the same table, or :func:`calendar_columns`)."""
        if self.by_week:
            if self.week_rows is None:  # (a view of the buffer, made once on first use)
                self.week_rows = self.week.cpu().numpy()
            return self.week_rows[(time // 60) % _WEEK_MINUTES]
        return calendar_columns(torch.from_numpy(time), self.kinds).to(torch.float32).numpy()

    def one(self, time: int) -> list[float]:
        """:meth:`rows` of one stream's step: the ``2K`` features of ``time`` as floats (a
        list the caller must not change)."""
        if self.by_week:
            if self.week_lists is None:  # (made once: a NumPy call a step costs more)
                self.week_lists = self.week.cpu().numpy().tolist()
            # (Python's // and % floor like torch's and NumPy's for these int64 values)
            return self.week_lists[(time // 60) % _WEEK_MINUTES]
        return self.rows(np.array([time], dtype=np.int64))[0].tolist()


class TargetTransform(nn.Module):
    """log / log1p of the targets and its exact inverse (``none``: identity)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in ("none", "log", "log1p"):
            raise ValueError(f"transform must be none, log or log1p; received {kind!r}")
        self.kind = kind

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        if self.kind == "log":
            return torch.log(values)
        if self.kind == "log1p":
            return torch.log1p(values)
        return values

    def inverse(self, values: torch.Tensor) -> torch.Tensor:
        if self.kind == "log":
            return torch.exp(values)
        if self.kind == "log1p":
            return torch.expm1(values)
        return values

    def forward_rows(self, values: np.ndarray) -> np.ndarray:
        """:meth:`forward` in NumPy (float64)."""
        if self.kind == "log":
            return np.log(values)
        if self.kind == "log1p":
            return np.log1p(values)
        return values

    def inverse_rows(self, values: np.ndarray) -> np.ndarray:
        """:meth:`inverse` in NumPy (float64)."""
        if self.kind == "log":
            return np.exp(values)
        if self.kind == "log1p":
            return np.expm1(values)
        return values

    def forward_one(self, values: list[float]) -> list[float]:
        """:meth:`forward` of one stream's values (Python floats: doubles, as float64)."""
        if self.kind == "log":
            return [math.log(v) for v in values]
        if self.kind == "log1p":
            return [math.log1p(v) for v in values]
        return values

    def inverse_one(self, values: list[float]) -> list[float]:
        """:meth:`inverse` of one stream's values."""
        if self.kind == "log":
            return [math.exp(v) for v in values]
        if self.kind == "log1p":
            return [math.expm1(v) for v in values]
        return values


class Difference(nn.Module):
    """Lag and seasonal differencing ``z[t] = sum_k c_k w[t - k]`` (``c`` the coefficients of
    ``prod (1 - B^lag)``), with state ``history [B, D, O]``: the last ``D = sum(lags)``
    transformed target values, oldest first (a shift register; D = 13 for lags (1, 12)).

    The first D steps of a stream have no difference (``valid`` is False there); the inverse
    turns a model output at step t (the difference at ``t + shift``) back into a value from
    the actual past values, as :meth:`seqstate.recipe.scaling.Scaling.decode_predictions`.
    With shift s > 1 those values run up to ``t + s - 1``, so the answer is given at step
    ``t + s - 1`` (``delay = s - 1``; the pending differences are state).
    """

    def __init__(self, lags: Sequence[int], shift: int = 1) -> None:
        super().__init__()
        from seqstate.recipe.scaling import difference_coefficients

        coefficients = difference_coefficients(lags)
        self.lags = tuple(int(lag) for lag in lags)
        self.order = len(coefficients) - 1
        self.shift = shift
        # With shift s > 1 a difference predicted at step t is integrated onto the values up
        # to t + s - 1 (as the table code does), which a stream sees s - 1 steps later: its
        # answer comes ``delay`` steps after the step that made it (RunStep.delay).
        self.delay = max(shift - 1, 0) if self.order else 0
        # (k, c_k) for the nonzero coefficients: 4 terms for lags (1, 12), not 14
        self.terms = tuple((k, float(c)) for k, c in enumerate(coefficients) if c != 0.0)

    def extend(self, history: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``[B, D + T, O]``: the history, then this chunk's transformed values."""
        return torch.cat([history, values], dim=1)

    def forward(self, full: torch.Tensor, steps: int) -> torch.Tensor:
        """Differences ``[B, T, O]`` of the last ``steps`` values of ``full``."""
        d = self.order
        z = full[:, d:]  # c_0 = 1
        for k, c in self.terms[1:]:
            z = _add(z, c, full[:, d - k : d - k + steps])
        return z

    def inverse(
        self, z: torch.Tensor, full: torch.Tensor, shift: int | None = None
    ) -> torch.Tensor:
        """Values ``[B, T, O]`` from output differences ``z`` (step t: the difference at
        ``t + shift``, default :attr:`shift`) and the actual values ``full`` (``[B, D + T,
        O]``)."""
        d, steps = self.order, z.shape[1]
        shift = self.shift if shift is None else shift
        w = z
        for k, c in self.terms[1:]:
            w = _add(w, -c, full[:, d + shift - k : d + shift - k + steps])
        return w

    def forward_row(self, history: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step (T = 1, D >= 1) of :meth:`forward` in NumPy: ``history [B, D, O]`` and
        this step's transformed values ``w [B, O]`` float64 -> (the difference ``[B, O]``,
        the new history ``[B, D, O]``), the same operations in the same order."""
        d = self.order
        z = w
        for k, c in self.terms[1:]:
            z = _add_rows(z, c, history[:, d - k])
        return z, np.concatenate((history[:, 1:], w[:, None]), axis=1)

    def inverse_row(self, z: np.ndarray, history: np.ndarray, w: np.ndarray) -> np.ndarray:
        """One step of :meth:`inverse` (shift 1) in NumPy: the value ``[B, O]`` from the
        output difference ``z [B, O]``, the history before this step ``[B, D, O]`` and this
        step's values ``w [B, O]`` (``full = [history, w]``)."""
        d = self.order
        value = z
        for k, c in self.terms[1:]:
            # full[:, d + 1 - k]: this step's value for k = 1, else the history's
            past = w if k == 1 else history[:, d + 1 - k]
            value = _add_rows(value, -c, past)
        return value

    def forward_single(
        self, history: list[float], w: list[float]
    ) -> tuple[list[float], list[float]]:
        """:meth:`forward_row` of one stream, on Python floats: ``history`` its ``D x O``
        values flat (oldest first, ``history[i * O + o]``) and ``w`` (O floats) -> (the
        difference, O floats; the new history, flat)."""
        d, o = self.order, len(w)
        z = w
        for k, c in self.terms[1:]:
            start = (d - k) * o
            z = [_add_one(a, c, p) for a, p in zip(z, history[start : start + o], strict=True)]
        return z, history[o:] + w

    def inverse_single(self, z: list[float], history: list[float], w: list[float]) -> list[float]:
        """:meth:`inverse_row` of one stream (``history`` flat as in :meth:`forward_single`,
        ``z`` and ``w`` O floats)."""
        d, o = self.order, len(w)
        value = z
        for k, c in self.terms[1:]:
            start = (d + 1 - k) * o
            past = w if k == 1 else history[start : start + o]
            value = [_add_one(a, -c, p) for a, p in zip(value, past, strict=True)]
        return value

    def inverse_one(self, z: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """One forecast step ``[B, O]`` from its difference and ``history`` ``[B, D, O]``
        (the values up to the step before: shift 1)."""
        d = self.order
        w = z
        for k, c in self.terms:
            if k >= 1:
                w = w - c * history[:, d - k]
        return w


def _add(total: torch.Tensor, coefficient: float, values: torch.Tensor) -> torch.Tensor:
    """``total + coefficient * values``, one op where the coefficient is +-1 (lag polynomials'
    coefficients mostly are: a step pays per op)."""
    if coefficient == 1.0:
        return total + values
    if coefficient == -1.0:
        return total - values
    return total + coefficient * values


def _add_rows(total: np.ndarray, coefficient: float, values: np.ndarray) -> np.ndarray:
    """:func:`_add` in NumPy."""
    if coefficient == 1.0:
        return total + values
    if coefficient == -1.0:
        return total - values
    return total + coefficient * values


def _add_one(total: float, coefficient: float, value: float) -> float:
    """:func:`_add` of Python floats."""
    if coefficient == 1.0:
        return total + value
    if coefficient == -1.0:
        return total - value
    return total + coefficient * value


class Scaling(nn.Module):
    """``(v - location) / scale`` per column with the stream's statistics (state
    ``location``, ``scale`` ``[B, C]`` float64, bound when the stream starts; every method
    also takes them as ``[B, 1, C]``) and its inverse.

    ``features`` / ``targets``: which of the C scaled columns the model's input features and
    its outputs are.
    """

    def __init__(self, features: Sequence[int], targets: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("features", torch.tensor(list(features), dtype=torch.long))
        self.register_buffer("targets", torch.tensor(list(targets), dtype=torch.long))
        # the usual layout (features first, in order; one target block): views, no gathers
        self.feature_span = span(features)
        self.target_span = span(targets)
        # (the NumPy step picks with these: they never move to a device)
        self.feature_rows = np.asarray(list(features), dtype=np.int64)
        self.target_rows = np.asarray(list(targets), dtype=np.int64)
        self.feature_list = [int(i) for i in features]
        self.target_list = [int(i) for i in targets]

    features: torch.Tensor
    targets: torch.Tensor

    def forward(
        self, values: torch.Tensor, location: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """``values [B, T, F]`` float64 (the features) -> scaled float64."""
        loc, sc = _pick(location, scale, self.features, self.feature_span)
        return (values - loc) / sc

    def columns(
        self,
        values: torch.Tensor,
        location: torch.Tensor,
        scale: torch.Tensor,
        picked: torch.Tensor,
    ) -> torch.Tensor:
        """``values [B, T, K]`` of the scaled columns ``picked`` (indices into C)."""
        loc, sc = _pick(location, scale, picked, None)
        return (values - loc) / sc

    def inverse(
        self, outputs: torch.Tensor, location: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """Model outputs ``[B, T, O]`` float64 -> the targets' (transformed) units."""
        loc, sc = _pick(location, scale, self.targets, self.target_span)
        return torch.addcmul(loc, outputs, sc)  # outputs * sc + loc, one op

    def forward_rows(
        self,
        values: np.ndarray,
        location: np.ndarray,
        scale: np.ndarray,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """One step of :meth:`forward` in NumPy: ``values [B, F]`` float64, ``location``,
        ``scale`` ``[B, C]`` -> ``[B, F]`` (written into ``out`` where given: a float32
        ``out`` holds the float64 quotient rounded, as ``astype`` rounds it)."""
        loc, sc = _pick_rows(location, scale, self.feature_rows, self.feature_span)
        return np.divide(values - loc, sc, out=out)

    def inverse_rows(
        self, outputs: np.ndarray, location: np.ndarray, scale: np.ndarray
    ) -> np.ndarray:
        """One step of :meth:`inverse` in NumPy: ``outputs [B, O]`` float64 -> ``[B, O]``."""
        loc, sc = _pick_rows(location, scale, self.target_rows, self.target_span)
        return outputs * sc + loc

    def forward_one(
        self, values: list[float], location: list[float], scale: list[float]
    ) -> list[float]:
        """:meth:`forward_rows` of one stream (its ``C`` statistics as floats)."""
        return [
            (v - location[i]) / scale[i] for v, i in zip(values, self.feature_list, strict=True)
        ]

    def inverse_one(
        self, outputs: list[float], location: list[float], scale: list[float]
    ) -> list[float]:
        """:meth:`inverse_rows` of one stream."""
        return [o * scale[i] + location[i] for o, i in zip(outputs, self.target_list, strict=True)]


def _pick_rows(
    location: np.ndarray, scale: np.ndarray, index: np.ndarray, span: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_pick` of ``[B, C]`` arrays -> ``[B, K]`` (views where ``span`` is set)."""
    if span is not None:
        start, stop = span
        if start == 0 and stop == location.shape[1]:  # every column: no view to make
            return location, scale
        return location[:, start:stop], scale[:, start:stop]
    return location[:, index], scale[:, index]


def span(indices: Sequence[int]) -> tuple[int, int] | None:
    """``(start, stop)`` when ``indices`` are consecutive and rising, else None."""
    values = list(indices)
    if values and values == list(range(values[0], values[0] + len(values))):
        return values[0], values[0] + len(values)
    return None


def _pick(
    location: torch.Tensor,
    scale: torch.Tensor,
    index: torch.Tensor,
    span: tuple[int, int] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``location``, ``scale`` ``[B, C]`` (or ``[B, 1, C]``, unsqueezed once by a caller that
    picks twice) -> the picked columns as ``[B, 1, K]``."""
    if location.dim() == 2:
        location, scale = location[:, None], scale[:, None]
    if span is not None:
        start, stop = span
        if start == 0 and stop == location.shape[2]:  # every column: no slice
            return location, scale
        return location[..., start:stop], scale[..., start:stop]
    return location.index_select(2, index), scale.index_select(2, index)
