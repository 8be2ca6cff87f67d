"""The ``seqstate`` commands that use a run directory: evaluate, predict, forecast, serve and
export-onnx. Registered and dispatched by :mod:`seqstate.cli.dispatch`; heavy modules are imported
inside each command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from seqstate._io import atomic_path
from seqstate.cli.evaluation import evaluate_forecaster_command
from seqstate.cli.settings import CliError


def _read_run(run_dir: str) -> Any:
    """The :class:`seqstate.recipe.run.Run` of ``run_dir``, which must record its columns."""
    from seqstate.recipe.run import Run

    run = Run.load(run_dir)
    data = run.metadata.get("data", {})
    if "columns" not in data:
        raise CliError(
            f"{run_dir} records no data columns (it was not written by `seqstate train`); use "
            "the Python API (seqstate.predict) with this model"
        )
    return run


def _threads_for(model: Any, series: int) -> None:
    """Intra-op threads as ``train`` chooses them (``auto``: one unless the model is large):
    a forecast is one small model call per step, and extra threads only spin on it (a
    500-step forecast of 20 series took 5x the CPU time with torch's default threads)."""
    from seqstate.recipe.threads import apply_threads

    hidden = max((getattr(layer, "hidden_size", 0) for layer in model.modules()), default=0)
    apply_threads("auto", lanes=max(1, series), hidden_size=int(hidden) or 64)


def _read_for_run(path: str, columns: Any, *, require_targets: bool) -> Any:
    from seqstate.recipe.sources import read_table

    return read_table(
        path,
        features=columns.features,
        targets=columns.targets,
        id_column=columns.id,
        time_column=columns.time,
        shift=columns.shift,
        task=columns.task,
        require_targets=require_targets,
    )


def handle_evaluate(args: argparse.Namespace) -> int:
    from seqstate.recipe.run_forecaster import forecaster_of

    run = _read_run(args.run_dir)
    model, metadata, columns = run.members[0].model, run.metadata, run.columns
    table = _read_for_run(args.data, columns, require_targets=True)
    _threads_for(model, len(table))
    if columns.task != "regression":
        given = [
            flag
            for flag, value in (
                ("--tail", args.tail),
                ("--warmup-until", args.warmup_until),
                ("--horizon", args.horizon),
                ("--season", args.season),
                ("--per-series", args.per_series),
            )
            if value is not None
        ]
        if given:
            raise CliError(
                f"{', '.join(given)}: a {columns.task} run is scored on every row from a zero "
                "state (accuracy and loss); these options score forecasts of a regression run. "
                "Leave them out"
            )
        return _evaluate_on_lanes(args, run, table)
    warned = _trained_past(metadata, args.warmup_until)
    if warned is None and args.tail is not None:
        warned = _tail_trained(metadata, table, args.tail)
    if warned:  # (stderr: with --json, stdout stays the JSON alone)
        print(f"note: {warned}", file=sys.stderr)
    # The run's models with its scaling and calendar: answers in raw units.
    return evaluate_forecaster_command(args, forecaster_of(run), table)


def _trained_until(metadata: dict[str, Any]) -> Any:
    """The run's last trained time, read as the table reads its times (a datetime64 or a
    number), or None when the run records none that reads."""
    data = metadata.get("data", {})
    last = data.get("time_last")
    if last is None:
        return None
    from seqstate.recipe.calendar import parse_times

    try:
        if data.get("time_kind") == "datetime":
            return parse_times([str(last)])[0]
        number = float(last)
    except (ValueError, TypeError):
        return None
    return int(number) if number.is_integer() else number  # (shown as the table writes it)


def _in_sample(trained: Any, scored: str) -> str:
    from seqstate.recipe.calendar import format_time

    return (
        f"the run was trained on rows up to {format_time(trained)}, {scored}: they were seen in "
        "training (in-sample). Train on the rows before them for an honest hold-out, or use "
        "`seqstate backtest`"
    )


def _trained_past(metadata: dict[str, Any], until: str | None) -> str | None:
    """A warning when the run was trained on rows after ``until`` (they would be scored)."""
    import numpy as np

    trained = _trained_until(metadata)
    if until is None or trained is None:
        return None
    from seqstate.recipe.calendar import parse_times

    try:
        cut = parse_times([until])[0] if isinstance(trained, np.datetime64) else float(until)
    except (ValueError, TypeError):
        return None
    if not trained > cut:
        return None
    return _in_sample(trained, f"and --warmup-until {until} scores the rows after it")


def _tail_trained(metadata: dict[str, Any], table: Any, tail: Any) -> str | None:
    """A warning when the run was trained on rows of the last ``tail`` steps of a series."""
    import numpy as np

    trained = _trained_until(metadata)
    if trained is None or not isinstance(tail, int) or tail < 1:
        return None
    firsts = [np.asarray(t)[-tail] for t in table.times if len(t) > tail]
    if not firsts:
        return None
    try:
        if isinstance(trained, np.datetime64):
            first: Any = min(np.asarray(f, dtype="datetime64[ns]") for f in firsts)
        else:
            first = float(min(firsts))
    except (ValueError, TypeError):
        return None
    if trained < first:
        return None
    from seqstate.recipe.calendar import format_time

    return _in_sample(trained, f"and --tail {tail} scores rows from {format_time(first)}")


def _evaluate_on_lanes(args: argparse.Namespace, run: Any, table: Any) -> int:
    """Classification: accuracy and loss over every row from a zero state."""
    import json

    from seqstate.recipe.run_forecaster import encode_table
    from seqstate.train import evaluate

    # Scored in the units the model reads: each series scaled as the run scaled it.
    member = run.members[0]
    model = member.model
    table = encode_table(table, member.scaling, member.calendar)
    layout = run.metadata.get("layout", {})
    lanes = table.lanes(
        lanes=int(layout.get("lanes", 32)), window=int(layout.get("window", 64)), segments=False
    )
    metrics = evaluate(model, lanes)
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        described = table.describe()
        print(f"{args.data}: {described['series']} series, {described['steps']} steps")
        for key, value in metrics.items():
            print(f"  {key:<10} {value:.6g}")
    return 0


def _output_path(path: str) -> tuple[Path, str]:
    target = Path(path)
    kinds = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
    kind = kinds.get(target.suffix.lower())
    if kind is None:
        raise CliError(
            f"--out {path!r}: cannot tell the format from the suffix {target.suffix!r}; use "
            ".csv, .tsv or .parquet"
        )
    return target, kind


def _write_frame(frame: Any, target: Path, kind: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        if kind == "parquet":
            try:
                frame.to_parquet(tmp, index=False)
            except ImportError as error:  # (pandas' message names no module to install)
                raise ImportError(f"writing {target.name}: {error}", name="pyarrow") from None
        else:
            frame.to_csv(tmp, index=False, sep="\t" if kind == "tsv" else ",")


#: The columns predict and forecast write besides a run's id and time columns.
_WRITTEN = ("horizon", "path", "step")
_WRITTEN_PREFIXES = ("predicted_", "probability_")


def check_key_names(id_column: str | None, time_column: str | None) -> None:
    """Refuse an id or time column named like a column predict/forecast write (``horizon``,
    ``path``, ``step``, ``predicted_*``, ``probability_*``): the output would overwrite it
    with its own values (forecasts in place of ids, 1..H in place of times)."""
    for role, name in (("--id", id_column), ("--time", time_column)):
        if name is not None and (name in _WRITTEN or name.startswith(_WRITTEN_PREFIXES)):
            raise CliError(
                f"{role} column {name!r} is named like a column predict and forecast write "
                f"({', '.join(_WRITTEN)}, predicted_*, probability_*): its values would be "
                "overwritten in their output. Rename the column in the data (and train again)"
            )


def _key_columns(columns: Any, table: Any, index: int, times: Any) -> dict[str, Any]:
    from seqstate.recipe.calendar import format_times

    keys: dict[str, Any] = {}
    if columns.id is not None:
        keys[columns.id] = [table.ids[index]] * len(times)
    # Times written as they were read ("1998Q1" stays "1998Q1"), so outputs join the input.
    keys[columns.time or "step"] = format_times(times, table.time_format)
    return keys


def handle_predict(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from seqstate.inference.prediction import predict
    from seqstate.recipe.run_forecaster import encode_table

    target, kind = _output_path(args.out)
    for flag, value in (("--chunk", args.chunk), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise CliError(f"{flag} must be an int >= 1; received {value}")
    run = _read_run(args.run_dir)
    model, columns = run.members[0].model, run.columns
    check_key_names(columns.id, columns.time)
    table = _read_for_run(args.data, columns, require_targets=False)
    _threads_for(model, len(table))
    names = _output_names(columns, model)
    forecaster = _prepared_forecaster(run)
    if forecaster is not None:
        return _predict_prepared(args, forecaster, table, columns, names, target, kind)
    # A classifier reads its features as the run scaled them (and its calendar columns).
    encoded = encode_table(table, run.members[0].scaling, run.members[0].calendar)
    batch = args.batch_size or 256
    frames = []
    groups = range(0, len(table), batch)
    quiet = args.no_progress or args.quiet
    bar = tqdm(groups, desc="predict", unit="batch", disable=quiet or len(groups) < 2)
    for begin in bar:
        chunk = encoded.features[begin : begin + batch]
        outputs = predict(model, chunk, chunk=args.chunk, batch_size=args.batch_size)
        for offset, output in enumerate(outputs):
            index = begin + offset
            data = _key_columns(columns, table, index, table.times[index])
            if columns.task == "classification":
                probabilities = torch.softmax(torch.from_numpy(output), dim=-1).numpy()
                data[names[0]] = probabilities.argmax(axis=-1)
                for k in range(probabilities.shape[1]):
                    data[f"probability_{k}"] = probabilities[:, k]
            else:
                data |= {name: output[:, j] for j, name in enumerate(names)}
            frames.append(pd.DataFrame(data))
    frame = _in_input_order(pd.concat(frames, ignore_index=True), table)
    _write_frame(frame, target, kind)
    if args.quiet:
        return 0
    ahead = "the same step" if columns.shift == 0 else f"{columns.shift} step(s) ahead"
    print(
        f"wrote {len(frame)} rows to {target}, in the input's row order: {', '.join(names)} = "
        f"the prediction of {', '.join(columns.targets)} {ahead}, from the rows up to each row"
    )
    return 0


def _in_input_order(frame: Any, table: Any) -> Any:
    """``frame``, one row per step of ``table`` series by series, put back in the order of the
    rows ``table`` was read from (a file sorted by time on read answers row for row)."""
    import numpy as np

    if table.rows is None:
        return frame
    positions = np.concatenate(table.rows)
    return frame.iloc[np.argsort(positions, kind="stable")].reset_index(drop=True)


def _unpredicted(frame: Any, names: list[str], table: Any, forecaster: Any) -> str:
    """A note line when some predictions are empty (and why), else ``""``."""
    empty = frame[names].isna().any(axis=1).to_numpy()
    count = int(empty.sum())
    if not count:
        return ""
    lags = sorted(
        {lag for m in forecaster.members if m.scaling is not None for lag in m.scaling.config.lags}
    )
    first = int(sum(lags))
    why = (
        f": the first {first} step(s) of each series are the history that differencing at lag "
        f"{' and '.join(str(lag) for lag in lags)} needs (a run trained with "
        "--seasonal-difference 0 and --difference 0 predicts every row)"
        if lags
        else ""
    )
    return f"\nnote: {count} of the {len(frame)} rows have no prediction (empty){why}"


def _prepared_forecaster(run: Any) -> Any:
    """The run's ``RunForecaster`` (recipe/run_forecaster.py: the run's step function over
    the table) for a regression run; None: a classifier, run by its model on the encoded
    table."""
    from seqstate.recipe.run_forecaster import forecaster_of

    if run.columns.task != "regression":
        return None
    return forecaster_of(run)


def _output_frame(
    columns: Any,
    table: Any,
    outputs: Any,
    names: list[str],
    stamps: Any,
    several: bool,
    *,
    horizon: int | None = None,
    levels: tuple[float, ...] = (),
) -> Any:
    """One long-format frame of a run's answers: each series' key columns (id, time ``stamps``),
    ``horizon`` (forecasts: 1..H), ``predicted_<target>``, its quantiles at ``levels``
    (``predicted_<target>_q10`` ..., where the run has intervals) and, for an ensemble, its
    spread."""
    import numpy as np
    import pandas as pd

    from seqstate.core.distributions import quantile_name

    bands = outputs.quantiles(levels) if levels and outputs.has_intervals else {}
    frames = []
    for index in range(len(table)):
        data = _key_columns(columns, table, index, stamps[index])
        if horizon is not None:
            data["horizon"] = np.arange(1, horizon + 1)
        data |= {name: outputs.mean[index][:, j] for j, name in enumerate(names)}
        for level, values in bands.items():
            suffix = quantile_name(level)
            data |= {f"{name}_{suffix}": values[index][:, j] for j, name in enumerate(names)}
        if several:
            data |= {f"{name}_spread": outputs.spread[index][:, j] for j, name in enumerate(names)}
        frames.append(pd.DataFrame(data))
    return pd.concat(frames, ignore_index=True)


def _levels(text: Any) -> tuple[float, ...]:
    """``--quantiles`` as sorted levels; ``()`` for ``none``."""
    from seqstate.core.distributions import check_quantile_names

    if text is None or str(text).strip().lower() in ("", "none"):
        return ()
    try:
        levels = [float(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise CliError(
            f"--quantiles must be levels like 0.1,0.9 (or none); received {text!r}"
        ) from None
    if not levels or any(not 0 < level < 1 for level in levels):
        raise CliError(
            f"--quantiles must be levels strictly between 0 and 1, like 0.1,0.9 (0.025 for "
            f"the 2.5% quantile); received {text!r}"
        )
    try:
        check_quantile_names(levels, "--quantiles")
    except ValueError as error:
        raise CliError(str(error)) from None
    return tuple(sorted(set(levels)))


def _bands_note(outputs: Any, levels: tuple[float, ...], names: list[str]) -> str:
    """What the quantile columns are, or why there are none."""
    if not levels:
        return ""
    if not outputs.has_intervals:
        return (
            "\nnote: no quantile columns: this run has no interval table (it was trained "
            "without a validation part to measure its errors on, as with --split none or a "
            "model saved from fit, or before intervals existed); seqstate train with a "
            "validation part gives calibrated intervals"
        )
    from seqstate.core.distributions import quantile_name

    shown = ", ".join(f"{names[0]}_{quantile_name(level)}" for level in levels)
    table = outputs.intervals
    return (
        f"\n{shown}: quantiles calibrated on the run's own validation errors "
        f"({table.windows} windows)"
    )


def _predict_prepared(
    args: argparse.Namespace,
    forecaster: Any,
    table: Any,
    columns: Any,
    names: list[str],
    target: Path,
    kind: str,
) -> int:

    levels = _levels(getattr(args, "quantiles", None))
    outputs = forecaster.predict_outputs(table)
    several = len(forecaster.members) > 1
    frame = _output_frame(columns, table, outputs, names, table.times, several, levels=levels)
    frame = _in_input_order(frame, table)
    _write_frame(frame, target, kind)
    if args.quiet:
        return 0
    ahead = "the same step" if columns.shift == 0 else f"{columns.shift} step(s) ahead"
    mean = (
        f"the mean of {len(forecaster.members)} seeds' predictions" if several else "the prediction"
    )
    print(
        f"wrote {len(frame)} rows to {target}, in the input's row order: {', '.join(names)} = "
        f"{mean} of {', '.join(columns.targets)} {ahead}, from the rows up to each row (raw "
        f"units){_unpredicted(frame, names, table, forecaster)}"
        f"{_bands_note(outputs, levels, names)}"
    )
    return 0


def _output_names(columns: Any, model: Any) -> list[str]:
    if columns.task == "classification":
        return [f"predicted_{columns.targets[0]}"]
    if len(columns.targets) != model.output_size:
        raise CliError(
            f"the run's model has {model.output_size} outputs but records targets "
            f"{list(columns.targets)}"
        )
    return [f"predicted_{name}" for name in columns.targets]


def handle_forecast(args: argparse.Namespace) -> int:
    import dataclasses

    import numpy as np

    from seqstate.recipe.calendar import forecast_stamps
    from seqstate.recipe.covariates import future_covariates
    from seqstate.recipe.forecaster import why_not_forecastable
    from seqstate.recipe.run_forecaster import forecaster_of

    target, kind = _output_path(args.out)
    if args.horizon is None or args.horizon < 1:
        raise CliError(f"--horizon must be an int >= 1; received {args.horizon}")
    samples = getattr(args, "samples", None)
    if samples is None:
        for flag, value in (("--paths", args.paths), ("--seed", args.seed)):
            if value is not None:
                raise CliError(
                    f"{flag} is for sample paths: give --samples N with it (without --samples "
                    "the quantiles are the run's calibrated intervals, which draw nothing)"
                )
    run = _read_run(args.run_dir)
    model, columns = run.members[0].model, run.columns
    check_key_names(columns.id, columns.time)
    cannot = why_not_forecastable(columns)
    if cannot is not None:
        raise CliError(f"{cannot}. Use `seqstate predict` instead")
    covariates = [name for name in columns.features if name not in columns.targets]
    if args.covariates and not covariates:
        raise CliError(
            f"this run reads no covariates (only {list(columns.targets)}), so --covariates "
            f"{args.covariates} would be ignored; leave it out"
        )
    if covariates and not args.covariates:
        raise CliError(
            f"this run reads the covariates {covariates} besides {list(columns.targets)}: give "
            "their future values with --covariates FILE (the id and time columns and one row "
            "per forecast step after each series' end)"
        )
    table = _read_for_run(args.data, columns, require_targets=False)
    horizon = args.horizon
    _check_horizon(horizon, table, columns)
    _threads_for(model, len(table))
    # On each series' own calendar: monthly data steps by months, not by 31 days.
    stamps = forecast_stamps(table, horizon, run.frequency)
    known = None
    if covariates:  # (each series' rows at exactly its forecast times)
        known = future_covariates(args.covariates, covariates, table, horizon, stamps)
    features = []
    for index in range(len(table)):
        # The future rows: the fed target columns are unknown (NaN), the covariates known.
        rows = np.full((horizon, len(columns.features)), np.nan, dtype=np.float32)
        if known is not None:
            for j, name in enumerate(covariates):
                rows[:, columns.features.index(name)] = known[index][:, j]
        features.append(rows)
    future = dataclasses.replace(table, features=features, times=stamps)
    forecaster = forecaster_of(run)
    names = _output_names(columns, forecaster.members[0].model)
    if samples is not None:
        frame = _sampled_frame(args, forecaster, columns, table, future, names, stamps)
        _write_frame(frame, target, kind)
        if args.quiet:
            return 0
        print(
            f"wrote {len(frame)} rows to {target}: {horizon} step(s) past the end of each of "
            f"{len(table)} series, the median and quantiles of {samples} sample paths"
        )
        return 0
    levels = _levels(getattr(args, "quantiles", None))
    with forecast_progress(horizon, quiet=args.no_progress or args.quiet) as on_step:
        outputs = forecaster.forecast_outputs(table, horizon, future, on_step=on_step)
    several = len(forecaster.members) > 1
    frame = _output_frame(
        columns, table, outputs, names, stamps, several, horizon=horizon, levels=levels
    )
    _write_frame(frame, target, kind)
    if args.quiet:
        return 0
    members = (
        f" (the mean of {len(forecaster.members)} seeds; *_spread: their std)" if several else ""
    )
    print(
        f"wrote {len(frame)} rows to {target}: {horizon} step(s) past the end of each of "
        f"{len(table)} series{members}{_bands_note(outputs, levels, names)}"
    )
    return 0


#: Most rows a forecast writes (series x horizon): beyond this the table alone is gigabytes.
MAX_FORECAST_ROWS = 10_000_000
#: Forecasts of at least this many steps show a progress bar (one model call per step).
PROGRESS_HORIZON = 1000


def _check_horizon(horizon: int, table: Any, columns: Any) -> None:
    """Refuse at once a --horizon that cannot be written: too many rows, or stamps past the
    last date a datetime64[ns] holds (2262-04-11)."""
    import numpy as np

    from seqstate.recipe.calendar import format_time, future_times

    rows = horizon * len(table)
    if rows > MAX_FORECAST_ROWS:
        raise CliError(
            f"--horizon {horizon} for {len(table)} series is {rows:,} forecast rows, more than "
            f"{MAX_FORECAST_ROWS:,} (gigabytes of output, one model call per step); forecast "
            f"at most {max(1, MAX_FORECAST_ROWS // len(table)):,} steps, or fewer series at a time"
        )
    if columns.time is None:
        return
    for times in table.times:
        if not np.issubdtype(times.dtype, np.datetime64):
            return
        first, second = future_times(times, 2)
        # Python ints: the arithmetic that would overflow datetime64[ns] cannot overflow here
        step = int((second - first).astype("timedelta64[ns]").astype(np.int64))
        last = int(np.datetime64(first, "ns").astype(np.int64)) + step * (horizon - 1)
        if last >= int(np.iinfo(np.int64).max):
            limit = format_time(np.datetime64(np.iinfo(np.int64).max, "ns"))
            raise CliError(
                f"--horizon {horizon} steps past {format_time(times[-1])} would reach beyond "
                f"{limit}, the last time a forecast can be stamped with; give a shorter "
                "--horizon"
            )
    longest = int(table.lengths.max())
    if horizon > 10 * longest:
        print(
            f"note: --horizon {horizon} is more than 10x the longest history ({longest} steps): "
            "so far past the data a recursive forecast mostly feeds on its own output",
            file=sys.stderr,
        )


def forecast_progress(horizon: int, *, quiet: bool, stream: Any = None) -> Any:
    """A context giving ``on_step`` for :meth:`RunForecaster.forecast_outputs`: a bar of the
    forecast steps on a terminal (``stream``, default stderr) for long horizons, else None."""
    import contextlib

    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if quiet or horizon < PROGRESS_HORIZON or not (callable(isatty) and isatty()):
        return contextlib.nullcontext(None)

    @contextlib.contextmanager
    def bar() -> Any:
        from tqdm import tqdm

        with tqdm(total=horizon, desc="forecast", unit="step", file=stream) as progress:
            # the first step comes from the warm-up; each later one is one model call
            progress.update(1)

            def on_step(done: int) -> None:
                progress.update(done - progress.n)

            yield on_step

    return bar()


def _sampled_frame(
    args: argparse.Namespace,
    forecaster: Any,
    columns: Any,
    table: Any,
    future: Any,
    names: list[str],
    stamps: Any,
) -> Any:
    """The forecast frame from sample paths: ``predicted_<target>`` (the median) and
    ``predicted_<target>_q10`` ... (one column per level); ``--paths`` writes the paths."""
    import numpy as np
    import pandas as pd

    from seqstate.core.distributions import quantile_name

    if any(getattr(m.model.config, "distribution", None) is None for m in forecaster.members):
        raise CliError(
            "--samples needs a run trained with a distribution head (seqstate train "
            "--distribution auto|normal|studentt|negbin|quantile); this run's model has none"
        )
    if args.samples < 1:
        raise CliError(f"--samples must be an int >= 1; received {args.samples}")
    levels = _levels(args.quantiles)
    horizon = args.horizon
    seed = 0 if args.seed is None else args.seed  # reproducible unless asked otherwise
    paths = forecaster.sample_paths(table, horizon, future, samples=args.samples, seed=seed)
    frames, path_frames = [], []
    for index in range(len(table)):
        data = _key_columns(columns, table, index, stamps[index])
        data["horizon"] = np.arange(1, horizon + 1)
        series = paths[index]  # (S, H, O)
        median = np.median(series, axis=0)
        data |= {name: median[:, j] for j, name in enumerate(names)}
        for level in sorted(levels):
            values = np.quantile(series, level, axis=0)
            data |= {f"{name}_{quantile_name(level)}": values[:, j] for j, name in enumerate(names)}
        frames.append(pd.DataFrame(data))
        if args.paths:
            for path in range(series.shape[0]):
                keys = _key_columns(columns, table, index, stamps[index])
                keys["horizon"] = np.arange(1, horizon + 1)
                keys["path"] = path
                keys |= {name: series[path, :, j] for j, name in enumerate(names)}
                path_frames.append(pd.DataFrame(keys))
    if args.paths:
        paths_target, paths_kind = _output_path(args.paths)
        _write_frame(pd.concat(path_frames, ignore_index=True), paths_target, paths_kind)
    return pd.concat(frames, ignore_index=True)


def handle_serve(argv: list[str]) -> int:
    try:
        from seqstate import serve
    except ImportError as error:
        raise CliError(
            f"serving needs the serve extra ({error}); pip install 'seqstate[serve]'"
        ) from None
    parser = argparse.ArgumentParser(prog="seqstate serve", description="Serve a run over HTTP.")
    serve.add_arguments(parser)
    try:
        serve_args = parser.parse_args(argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 0
    return int(serve.run(serve_args) or 0)


def handle_export_onnx(args: argparse.Namespace) -> int:
    from seqstate.core.saved import load_model
    from seqstate.interop.onnx import export_onnx, onnx_input_names, onnx_output_names

    if not Path(args.out).suffix.lower() == ".onnx":
        raise CliError(f"OUT must be a .onnx file; received {args.out!r}")
    if not getattr(args, "model_space", False):
        from seqstate.interop.onnx import export_run_onnx, run_onnx_names
        from seqstate.recipe.run import Run

        written = export_run_onnx(args.run_dir, args.out)
        inputs, outputs = run_onnx_names(Run.load(args.run_dir).step_function())
        print(
            f"wrote {written}: the whole run, raw units; inputs {inputs}, outputs {outputs} "
            "(state: feed each output back as the next chunk's input; a stream's first state "
            "is Run.load(RUN).step_function().initial_state([series]))"
        )
        return 0
    model = load_model(args.run_dir)
    written = export_onnx(model, args.out)
    print(
        f"wrote {written}: the model alone, model-space columns (the run's scaling, "
        f"differencing and calendar features are not in it); inputs "
        f"{onnx_input_names(model)}, outputs {onnx_output_names(model)}"
    )
    return 0
