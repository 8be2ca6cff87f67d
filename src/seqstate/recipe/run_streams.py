"""RunStreams: a run's streams in Python, keyed by stream id, in raw units.

    streams = RunStreams.from_run("runs/sensors")
    y = streams.step(["a", "b"], x, time=t, series=["s1", "s2"])   # x [n, F] or [n, T, F]
    times, path = streams.forecast(["a"], horizon=24)               # the state is not changed
    times, path, bands = streams.forecast_quantiles(["a"], 24)      # + calibrated [n, H, O, Q]
    blobs = streams.export_states()                                 # id -> RunState bytes

Each stream holds one row of :class:`seqstate.recipe.step.RunState`; its series is given on
its first step and kept (a later step naming another series is refused). The server keeps the
same rows in its store; both run :meth:`seqstate.recipe.step.RunStep.step`.

The streams of the last step stay together as that step's batched state, so the usual loop
(the same streams every tick) steps it as it is: its rows are split into one state per stream
only when another call needs them (another set of streams, ``state``, ``export_states``, a
forecast of some of them), not per step; joining 100 one-row states and splitting them again
cost about 25 times the step itself.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqstate.recipe.step import RunState

__all__ = ["RunStreams"]


class RunStreams:
    """Streams of one :class:`seqstate.recipe.run.Run`."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.function = run.step_function()
        # id -> its one-row state, or None while its row is in the kept batch (the order of
        # the keys is the order streams were first stepped or imported)
        self._states: dict[Hashable, RunState | None] = {}
        self._series: dict[Hashable, Any] = {}
        # the last step's streams, in its order, and their batched state
        self._batch_ids: list[Hashable] = []
        # id -> its row in the batch, built when first asked (not on every step)
        self._batch_rows: dict[Hashable, int] | None = {}
        self._batch: RunState | None = None

    @classmethod
    def from_run(cls, run_dir: str | Path) -> RunStreams:
        from seqstate.recipe.run import Run

        return cls(Run.load(run_dir))

    @property
    def ids(self) -> list[Hashable]:
        return list(self._states)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._states

    def __len__(self) -> int:
        return len(self._states)

    def step(
        self,
        ids: Sequence[Hashable],
        x: Any,
        time: Any = None,
        series: Sequence[Any] | None = None,
    ) -> np.ndarray:
        """Advance the streams ``ids`` (new ones start here) by one or more steps.

        Args:
            ids: one id per row, no repeats.
            x: ``[n, F]`` (one step) or ``[n, T, F]`` raw values of the run's inputs.
            time: ``[n]`` / ``[n, T]`` int64 Unix seconds or numpy datetime64 (required where
                the run reads the calendar); each stream's times increase, within a call and
                after its last step.
            series: each stream's series, needed on a stream's first step where the run scales
                per series; a later step may repeat it (a different one is refused).

        Returns:
            ``[n, O]`` (one step) or ``[n, T, O]`` float64 raw units (the members' mean).
            Nothing changes on error.
        """
        # The usual loop steps the same streams every call: the kept batch's ids, checked
        # (no repeats) and known when it was stepped, so only a series given is checked.
        same = self._batch is not None and type(ids) is list and ids == self._batch_ids
        ids = self._batch_ids if same else self._check_ids(ids)
        one_step = np.ndim(x) == 2
        named = list(series) if series is not None else [None] * len(ids)
        if len(named) != len(ids):
            raise ValueError(f"series must name one series per id: {len(ids)}; got {len(named)}")
        fresh = [] if same else [i for i, key in enumerate(ids) if key not in self._states]
        if series is not None:
            for i, key in enumerate(ids):
                if key in self._series and named[i] is not None and named[i] != self._series[key]:
                    raise ValueError(
                        f"stream {key!r} is a stream of series {self._series[key]!r}; this "
                        f"step names {named[i]!r} (end it and start a new stream for another "
                        "series)"
                    )
        if fresh and self.function.needs_series:
            unnamed = [ids[i] for i in fresh if named[i] is None]
            if unnamed:
                raise ValueError(
                    f"the run scales each series with its own statistics: the first step of "
                    f"streams {unnamed} must name their series"
                )
        if self._batch is not None and ids == self._batch_ids:
            state = self._batch  # the same streams as the last step: their state as it is
        else:
            parts = []
            for i, key in enumerate(ids):
                if key in self._states:
                    parts.append(self._row(key))
                else:
                    parts.append(self.function.initial_state([named[i]]))
            state = RunState.cat(parts)
        y, state = self.function.step(state, x, time)
        # (nothing has changed up to here: a refused step leaves every stream as it was)
        if same:  # (its rows are the batch's already, each stream's series kept)
            self._batch = state
        else:
            if ids != self._batch_ids:
                self._split(keep=set(ids))
            for i, key in enumerate(ids):
                self._states[key] = None
                if key not in self._series:
                    self._series[key] = named[i]
            self._batch_ids, self._batch, self._batch_rows = ids, state, None
        result = y.numpy()
        return result[:, 0] if one_step else result

    def _row(self, key: Hashable) -> RunState:
        """Stream ``key``'s one-row state (a row of the kept batch, or its own)."""
        state = self._states[key]
        if state is not None:
            return state
        if self._batch is None:  # (None marks a row of the batch, which is then kept)
            raise RuntimeError(f"internal error: stream {key!r} has no state")
        return self._batch.select([self._rows()[key]])

    def _rows(self) -> dict[Hashable, int]:
        """Each id of the kept batch -> its row."""
        if self._batch_rows is None:
            self._batch_rows = {key: row for row, key in enumerate(self._batch_ids)}
        return self._batch_rows

    def _split(self, keep: set[Hashable] | None = None) -> None:
        """Give each stream of the kept batch its own row state (those in ``keep`` are about
        to be replaced: skipped), and keep no batch."""
        if self._batch is not None:
            for i, key in enumerate(self._batch_ids):
                if self._states.get(key, 0) is None and (keep is None or key not in keep):
                    self._states[key] = self._batch.select([i])
        self._batch_ids, self._batch, self._batch_rows = [], None, {}

    def forecast(
        self,
        ids: Sequence[Hashable],
        horizon: int,
        covariates: Any = None,
        *,
        times: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(times [n, H] int64, y [n, H, O] float64)`` from the streams' current states,
        which are not changed (see :meth:`seqstate.recipe.step.RunStep.forecast`)."""
        state = self._stepped_state(ids)
        stamps, y = self.function.forecast(state, horizon, covariates, times=times)
        return stamps.numpy(), y.numpy()

    def forecast_quantiles(
        self,
        ids: Sequence[Hashable],
        horizon: int,
        covariates: Any = None,
        *,
        times: Any = None,
        levels: Sequence[float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(times [n, H], y [n, H, O], quantiles [n, H, O, Q])``: :meth:`forecast` and its
        calibrated quantiles at ``levels`` (default
        :data:`seqstate.recipe.intervals.DEFAULT_LEVELS`, in the order given), by the rule
        ``seqstate forecast`` and the server use (:meth:`RunStep.interval_quantiles`).
        ValueError for a run without an interval table."""
        from seqstate.recipe.intervals import DEFAULT_LEVELS, check_levels

        wanted = check_levels(DEFAULT_LEVELS if levels is None else levels, sort=False)
        if self.function.intervals is None:
            raise ValueError(
                "this run has no interval table (trained before calibrated intervals, or with "
                "--split none), so it gives point forecasts only; train it again for quantiles"
            )
        state = self._stepped_state(ids)
        stamps, y = self.function.forecast(state, horizon, covariates, times=times)
        bands = self.function.interval_quantiles(state, y, wanted)
        if bands is None:  # (the run has a table: checked above)
            raise RuntimeError("internal error: a run with an interval table gave no quantiles")
        return stamps.numpy(), y.numpy(), bands

    def _stepped_state(self, ids: Sequence[Hashable]) -> RunState:
        """The streams ``ids``' states, one row each; KeyError for a stream never stepped."""
        ids = self._check_ids(ids)
        unknown = [key for key in ids if key not in self._states]
        if unknown:
            raise KeyError(f"unknown stream(s) {unknown}: step them before asking a forecast")
        if self._batch is not None and ids == self._batch_ids:
            return self._batch
        return RunState.cat([self._row(key) for key in ids])

    def start(self, stream_id: Hashable) -> None:
        """Forget a stream's state and series (its next step starts it afresh)."""
        self.end(stream_id)

    def end(self, stream_id: Hashable) -> None:
        if stream_id in self._rows():
            self._split()
        self._states.pop(stream_id, None)
        self._series.pop(stream_id, None)

    def state(self, stream_id: Hashable) -> RunState:
        if stream_id not in self._states:
            raise KeyError(stream_id)
        return self._row(stream_id)

    def series(self, stream_id: Hashable) -> Any:
        return self._series.get(stream_id)

    def export_states(self) -> dict[Hashable, bytes]:
        """Each stream's state as :meth:`RunState.to_bytes` (the series is the caller's)."""
        return {key: self._row(key).to_bytes() for key in self._states}

    def import_states(
        self,
        states: Mapping[Hashable, bytes | RunState],
        series: Mapping[Hashable, Any] | None = None,
    ) -> None:
        """Add or replace streams from :meth:`export_states` (all checked before any change)."""
        template = self.function.initial_state([])
        decoded = {}
        for key, value in states.items():
            state = value if isinstance(value, RunState) else RunState.from_bytes(value)
            if state.batch_size != 1 or set(state.transforms) != set(template.transforms):
                raise ValueError(
                    f"stream {key!r}: expected one row of this run's state (transforms "
                    f"{sorted(template.transforms)}); received {state.batch_size} row(s) with "
                    f"{sorted(state.transforms)}"
                )
            decoded[key] = state
        if any(key in decoded for key in self._batch_ids):
            self._split()
        self._states.update(decoded)
        for key in decoded:
            self._series[key] = (series or {}).get(key)

    def _check_ids(self, ids: Any) -> list[Hashable]:
        if isinstance(ids, str) or not isinstance(ids, Sequence | np.ndarray | torch.Tensor):
            raise TypeError(f"ids must be a list of stream ids; received {type(ids).__name__}")
        keys = list(ids)
        if len(set(keys)) != len(keys):
            raise ValueError(f"ids must not repeat a stream in one call; received {keys}")
        return keys
