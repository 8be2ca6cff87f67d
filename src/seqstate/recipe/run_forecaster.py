"""Pipeline: a raw table in, predictions and forecasts in raw units out.

What ``seqstate predict`` / ``forecast`` / ``evaluate`` / ``backtest`` do between reading a
table and writing one, for one model or an ensemble of them (the seeds of ``seqstate train
--seeds K``): :class:`RunForecaster` runs the table through the run's step function
(:class:`seqstate.recipe.step.RunStep`), a table being just many steps::

    raw table ──rows, chunk by chunk──► RunStep.step ──► [K, L_i, O] members ──► mean (+ spread)
                                          (transform cells, core, head, inverse)  ──► combined
                                          (the baselines validation chose, as cells)   with them

:func:`predict_table` and :func:`forecast_table` are the table-level reference the step
function is tested against: they encode whole tables (``Scaling.encode``, ``with_calendar``),
run the models over them and decode in NumPy, one member at a time::

    raw table ──Scaling.encode──► ──with_calendar──► model space table
        │                                                  │
        │                  models[0..K) ── predict / forecast (one batch for all series)
        │                                                  │
        └──── Scaling.decode_predictions / decode_forecast ◄┘ ──► mean over models (+ spread)

Averaging happens in raw units, after each member's outputs are decoded: the ensemble forecast
is the mean of the members' forecasts, whatever transform they were trained on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from seqstate.recipe.covariates import calendar_features, calendar_names, with_calendar
from seqstate.recipe.run import RunMember
from seqstate.recipe.scaling import Scaling

__all__ = [
    "RunForecaster",
    "RunMember",
    "TableOutputs",
    "encode_table",
    "forecast_table",
    "forecaster_of",
    "load_forecaster",
    "predict_table",
]


@dataclasses.dataclass(frozen=True)
class TableOutputs:
    """Per-series outputs in raw units.

    Attributes:
        mean: one ``[L_i, O]`` (predict) or ``[H, O]`` (forecast) array per series: the
            point forecast (the ensemble's mean, with the validation's selection applied).
        spread: the same shapes: the members' standard deviation (zeros for one model).
        scales: one ``[O]`` array per series, the MASE scale of its history (NaN: it never
            varied), where the run has an interval table (:mod:`seqstate.recipe.intervals`);
            else None.
        intervals: the run's :class:`~seqstate.recipe.intervals.IntervalTable`, or None.
        one_step: every row of ``mean`` is one step ahead (predict), not step h of a horizon.
    """

    mean: list[np.ndarray]
    spread: list[np.ndarray]
    scales: list[np.ndarray] | None = None
    intervals: Any = None
    one_step: bool = False

    @property
    def has_intervals(self) -> bool:
        return self.intervals is not None and self.scales is not None

    def quantile(self, level: float) -> list[np.ndarray]:
        """The ``level`` quantile of each series' forecast: arrays shaped like ``mean``."""
        return self.quantiles([level])[float(level)]

    def quantiles(self, levels: Sequence[float]) -> dict[float, list[np.ndarray]]:
        """``{level: [per series, shaped like mean]}``, non-decreasing in the level, from the
        run's calibrated interval table around the point forecast
        (:func:`seqstate.recipe.intervals.answer_quantiles`, the server's rule too)."""
        from seqstate.recipe.intervals import answer_quantiles, check_levels

        wanted = check_levels(levels, "levels")
        if self.intervals is None or self.scales is None:
            raise ValueError(
                "this run has no interval table, so it gives point forecasts only: it was "
                "trained before intervals existed or without a validation part (--split none); "
                "train it again to get quantiles"
            )
        result: dict[float, list[np.ndarray]] = {level: [] for level in wanted}
        for point, scale in zip(self.mean, self.scales, strict=True):
            bands = answer_quantiles(
                point[None], scale[None], self.intervals, wanted, one_step=self.one_step
            )[0]  # [L or H, O, Q]
            for q, level in enumerate(wanted):
                result[level].append(bands[:, :, q])
        return result


def encode_table(table: Any, scaling: Scaling | None, calendar: Sequence[str]) -> Any:
    """The raw ``table`` in model space: transformed, scaled, calendar columns appended."""
    encoded = scaling.encode(table) if scaling is not None else table
    return with_calendar(encoded, calendar)


def predict_table(
    models: Sequence[Any],
    table: Any,
    *,
    scaling: Scaling | None = None,
    calendar: Sequence[str] = (),
    chunk: int | None = None,
    batch_size: int | None = None,
) -> TableOutputs:
    """One-step predictions for every row of every series of the raw ``table``.

    Returns :class:`TableOutputs` of ``[L_i, O]`` arrays: row t is the prediction of the
    targets at row ``t + shift``, in raw units (NaN for the first rows that differencing
    consumes). Classification runs return the raw logits (no scaling applies to them).
    """
    from seqstate.inference.prediction import predict

    _check_models(models)
    encoded = encode_table(table, scaling, calendar)
    members = []
    for model in models:
        outputs = predict(model, encoded.features, chunk=chunk, batch_size=batch_size)
        if scaling is None or table.columns.task != "regression":
            members.append([np.asarray(o, dtype=np.float64) for o in outputs])
        else:
            members.append([scaling.decode_predictions(table, i, o) for i, o in enumerate(outputs)])
    return _combine(members)


def forecast_table(
    models: Sequence[Any],
    table: Any,
    horizon: int,
    *,
    scaling: Scaling | None = None,
    calendar: Sequence[str] = (),
    future_times: Sequence[np.ndarray] | None = None,
    covariates: Sequence[np.ndarray] | None = None,
    covariate_names: Sequence[str] = (),
    batch_size: int | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TableOutputs:
    """Forecast ``horizon`` steps past the end of each series of the raw ``table``.

    Args:
        models: one model or the members of an ensemble (same columns and scaling).
        table: the history (context) in raw units; its targets are fed back as inputs.
        horizon: steps to forecast.
        scaling: the run's :class:`Scaling` (None: the model reads raw values).
        calendar: the run's calendar features; they need ``future_times``.
        future_times: one ``[horizon]`` datetime64 array per series, the forecast's stamps.
        covariates: known future values of the features that are neither targets nor
            calendar, one ``[horizon, K]`` array per series (raw units), in the order
            ``covariate_names`` (the run's feature order).
        on_step: called after each forecast step
            (see :func:`seqstate.inference.forecasting.forecast`).

    Returns:
        :class:`TableOutputs` of ``[horizon, O]`` arrays in raw units.
    """
    from seqstate.inference.prediction import forecast

    _check_models(models)
    columns = table.columns
    encoded = encode_table(table, scaling, calendar)
    features = list(encoded.columns.features)
    fed = [features.index(name) for name in columns.targets]
    others = [name for name in features if name not in columns.targets]
    known = list(covariate_names) + list(calendar_names(calendar))
    if others != known:
        raise ValueError(
            f"the model reads {others} besides its targets {list(columns.targets)}; their "
            f"future values must be given: received covariates {list(covariate_names)} and "
            f"calendar {list(calendar)}."
        )
    future = None
    if others:
        future = []
        for index in range(len(table)):
            parts = []
            if covariate_names:
                if covariates is None:
                    raise ValueError(
                        f"the model reads the covariates {list(covariate_names)}; pass their "
                        "future values (covariates=..., or --covariates FILE)."
                    )
                values = np.asarray(covariates[index], dtype=np.float64)
                if scaling is not None:
                    values = scaling.scale_values(
                        scaling.transform_table(table.select([index])), 0, covariate_names, values
                    )
                parts.append(values)
            if calendar:
                if future_times is None:
                    raise ValueError("calendar features need the forecast's future_times.")
                parts.append(calendar_features(future_times[index], calendar))
            future.append(np.concatenate(parts, axis=1).astype(np.float32))
    members = []
    for model in models:
        rolled = forecast(
            model,
            encoded.features,
            horizon,
            covariates=future,
            target_features=fed,
            batch_size=batch_size,
            on_step=on_step,
        )
        outputs = [np.asarray(o, dtype=np.float64) for o in rolled]
        if scaling is not None:
            outputs = [scaling.decode_forecast(table, i, o) for i, o in enumerate(outputs)]
        members.append(outputs)
    return _combine(members)


def _check_models(models: Sequence[Any]) -> None:
    if not isinstance(models, list | tuple) or not models:
        raise TypeError(
            "models must be a non-empty list of models (one, or an ensemble's members); "
            f"received {type(models).__name__}."
        )


def _combine(members: list[list[np.ndarray]]) -> TableOutputs:
    mean, spread = [], []
    for per_series in zip(*members, strict=True):
        stacked = np.stack(per_series)  # (K, L or H, O)
        mean.append(stacked.mean(axis=0))
        spread.append(stacked.std(axis=0))
    return TableOutputs(mean, spread)


@dataclasses.dataclass
class RunForecaster:
    """A trained run seen from outside, on raw tables: one member, or the members of an
    ensemble (``seqstate train --seeds K``), each with its own scaling and calendar.

    ``predict(table)`` and ``forecast(table, horizon, future)`` answer in raw units, the mean
    over the members (:meth:`forecast_outputs` also gives their spread), through the run's
    step function. ``future`` holds the next ``horizon`` rows of each series: its times stamp
    the calendar features, its non-target feature columns are the known future covariates.
    """

    members: list[RunMember]
    _steps: dict[Any, Any] = dataclasses.field(default_factory=dict, repr=False)

    def step_function(self, columns: Any) -> Any:
        """The :class:`seqstate.recipe.step.RunStep` of these members reading ``columns``."""
        from seqstate.recipe.step import RunStep

        if columns not in self._steps:  # (Columns is a frozen dataclass of tuples: hashable)
            self._steps[columns] = RunStep(
                [(m.model, m.scaling, m.calendar) for m in self.members],
                columns,
                selection=self.selection(),
                intervals=self.interval_table(),
            )
        return self._steps[columns]

    def predict(self, table: Any, context: Any = None) -> list[np.ndarray]:
        return self.predict_outputs(table, context).mean

    def predict_outputs(self, table: Any, context: Any = None) -> TableOutputs:
        """``context``: the rows of the same series that give the statistics of series the
        run never saw (default: ``table``'s own; see :func:`seqstate.recipe.step.tables.
        predict_table`)."""
        from seqstate.recipe.step import tables

        self._check_table(table)
        run_step = self.step_function(table.columns)
        answers, state = tables.warm_up(run_step, table, context=context)
        outputs = TableOutputs(
            answers.answers, [np.asarray(o).std(axis=0) for o in answers.members]
        )
        if table.columns.shift != 1:  # the table's first step is one step ahead
            return outputs
        # (each row gets the scale of the whole history, as the forecast from its end does)
        return self._with_intervals(outputs, run_step, state, one_step=True)

    def forecast(self, table: Any, horizon: int, future: Any = None) -> np.ndarray:
        return np.stack(self.forecast_outputs(table, horizon, future).mean)

    def forecast_outputs(
        self,
        table: Any,
        horizon: int,
        future: Any = None,
        on_step: Callable[[int], None] | None = None,
    ) -> TableOutputs:
        """``on_step(done)``: told the forecast steps done as the roll-out advances (every
        :attr:`seqstate.recipe.step.RunStep.progress_every` steps and at the end)."""
        from seqstate.recipe.step import tables

        _check_table_type(table)
        columns = table.columns
        covariates, times = self._future_inputs(table, horizon, future)
        self._check_table(table)
        run_step = self.step_function(columns)
        _, state = tables.warm_up(run_step, table)
        answers, members = tables.forecast_table(
            run_step,
            table,
            horizon,
            times=times,
            covariates=covariates,
            on_step=None if on_step is None else (lambda done, _total: on_step(done)),
            state=state,
        )  # (n, H, O), (K, n, H, O)
        outputs = TableOutputs(
            list(answers), [members[:, i].std(axis=0) for i in range(len(table))]
        )
        return self._with_intervals(outputs, run_step, state)

    # -- calibrated intervals (recipe/intervals.py) around the answer ----------------------------

    def interval_table(self) -> Any:
        """The members' :class:`seqstate.recipe.intervals.IntervalTable` (``metadata
        ["intervals"]``, averaged over an ensemble's members), or None: no intervals."""
        from seqstate.recipe.intervals import members_table

        return members_table(self.members)

    def _with_intervals(
        self, outputs: TableOutputs, run_step: Any, state: Any, *, one_step: bool = False
    ) -> TableOutputs:
        """``outputs`` with each series' MASE scale (kept in ``state``, after its history) and
        the run's interval table attached."""
        if run_step.history_scale is None:
            return outputs
        scales = run_step.history_scale.scales(state.transforms).cpu().numpy()  # [n, O]
        return dataclasses.replace(
            outputs, scales=list(scales), intervals=run_step.intervals, one_step=one_step
        )

    def sample_paths(
        self,
        table: Any,
        horizon: int,
        future: Any = None,
        *,
        samples: int,
        seed: int | None = None,
    ) -> np.ndarray:
        """Sample paths ``[n, K * samples, H, O]`` float64 raw units of a run whose models have
        a distribution head: warm up on each series of ``table``, then
        :meth:`seqstate.recipe.step.RunStep.sample_forecast` (an ensemble pools its members'
        paths)."""
        from seqstate.recipe.step import tables

        _check_table_type(table)
        covariates, times = self._future_inputs(table, horizon, future)
        self._check_table(table)
        run_step = self.step_function(table.columns)
        _, state = tables.warm_up(run_step, table)
        stamps = None
        if times is not None:
            converted = [tables.table_times(run_step, t) for t in times]
            if all(c is not None for c in converted):
                stamps = np.stack([np.asarray(c)[:horizon] for c in converted if c is not None])
        known = None
        if covariates is not None:
            known = np.stack([np.asarray(c, dtype=np.float32)[:horizon] for c in covariates])
        # (keyed by series id: a series draws the same paths alone, in any panel, served)
        _, paths = run_step.sample_forecast(
            state, horizon, known, times=stamps, samples=samples, seed=seed, keys=list(table.ids)
        )
        return paths.numpy()

    def _future_inputs(self, table: Any, horizon: int, future: Any) -> tuple[Any, Any]:
        """(covariates, times) of the forecast steps, where the run reads them.

        ``future`` holds the rows after each series' end: a table read like the history (a
        :class:`~seqstate.recipe.table.SequenceTable`), or a DataFrame or file with the id
        and time columns and the covariates. Its rows are matched by series id, column name
        and time, never by position (:func:`seqstate.recipe.covariates.match_future`), and
        their times are the calendar's. Without ``future`` the times are each series' next
        ``horizon`` stamps on its own calendar (:func:`seqstate.recipe.calendar.
        forecast_stamps`, as ``seqstate forecast`` stamps them).
        """
        from seqstate._validate import check_int
        from seqstate.recipe.calendar import forecast_stamps
        from seqstate.recipe.covariates import match_future, read_future
        from seqstate.recipe.table import SequenceTable

        horizon = check_int(horizon, "horizon", 1, "It is the number of steps to forecast.")
        columns = table.columns
        names = [name for name in columns.features if name not in columns.targets]
        calendar = any(member.calendar for member in self.members)
        if names and future is None:
            raise ValueError(
                f"the run reads the covariates {names}; pass their future values as future= "
                "(a DataFrame or file with the id and time columns and the rows after each "
                "series' end, or a table read from one)."
            )
        matched = None
        if future is not None and (names or calendar):
            if not isinstance(future, SequenceTable):
                future = read_future(future, names, table)
            matched = match_future(future, names, table, horizon)
        covariates = matched.values if names and matched is not None else None
        times = None
        if calendar:
            if matched is not None:
                times = matched.times
            else:  # (the run's frequency, where its step function knows one)
                step = self._steps.get(columns)
                times = forecast_stamps(table, horizon, getattr(step, "frequency", None))
        return covariates, times

    # -- the validation's choice (recipe/selection.py), run by the step function -------------

    def selection(self) -> Any:
        """The members' validation choices as one :class:`seqstate.recipe.selection.Selection`,
        or None: the network alone (:func:`seqstate.recipe.run.selection_of`)."""
        from seqstate.recipe.run import selection_of

        return selection_of(self.members)

    def _check_table(self, table: Any) -> None:
        _check_table_type(table)
        # The table-level refusals (too short to difference, outside log's domain), once.
        for member in self.members:
            if member.scaling is not None:
                member.scaling.check_table(table, member.scaling.config)


def _check_table_type(table: Any, argument: str = "table") -> None:
    """TypeError unless ``table`` is a :class:`~seqstate.recipe.table.SequenceTable` (a path
    or DataFrame has no run columns to read it by)."""
    from seqstate.recipe.table import SequenceTable

    if not isinstance(table, SequenceTable):
        raise TypeError(
            f"{argument} must be a SequenceTable read with the run's columns: "
            "seqstate.recipe.sources.read_table(path or DataFrame, features=..., targets=..., "
            f"id_column=..., time_column=...); received {type(table).__name__}"
        )


def load_forecaster(run_dir: Any) -> RunForecaster:
    """The :class:`RunForecaster` of a run directory (read by :class:`seqstate.recipe.run.Run`)."""
    from seqstate.recipe.run import Run

    return forecaster_of(Run.load(run_dir))


def forecaster_of(run: Any) -> RunForecaster:
    """The :class:`RunForecaster` of a loaded :class:`seqstate.recipe.run.Run`."""
    forecaster = RunForecaster(list(run.members))
    # The run's step function knows its frequency: share it.
    forecaster._steps[run.columns] = run.step_function()
    return forecaster
