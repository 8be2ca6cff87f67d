"""The ``seqstate evaluate`` and ``seqstate backtest`` commands (see seqstate.cli.dispatch).

    seqstate evaluate RUN DATA --warmup-until 2007Q4   # warm up on the history, score the rest
    seqstate evaluate RUN DATA --tail 8                 # score the last 8 steps of each series
    seqstate evaluate RUN DATA                          # every row from a zero state (in-sample)
    seqstate backtest DATA -f value --id series --time quarter --folds 3 --horizon 8

Both go through :mod:`seqstate.recipe.evaluation`, the run's own predict/forecast path, and print
per-series means (never raw errors pooled across series), saying what was warmed and scored.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from seqstate.cli.settings import flags_named

__all__ = [
    "add_backtest_command",
    "add_evaluate_arguments",
    "backtest_command",
    "evaluate_forecaster_command",
]


# The keyword arguments of seqstate.recipe.evaluation each flag sets: its errors name the flags.
_EVALUATE_FLAGS = {
    "warmup_until": "--warmup-until",
    "tail": "--tail",
    "horizon": "--horizon",
    "season": "--season",
}
_BACKTEST_FLAGS = {
    "folds": "--folds",
    "horizon": "--horizon",
    "season": "--season",
    "refit": "--refit-each-fold",
}


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``seqstate evaluate`` beyond RUN_DIR and DATA."""
    group = parser.add_argument_group("warm-started hold-out")
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--warmup-until",
        metavar="TIME",
        help="the last time of the history: each series is warmed up on its rows up to TIME "
        "(with the state carried), then scored on the rows after it (like 2019-12, "
        "'2019 Dec', 2019Q4, or a number)",
    )
    where.add_argument(
        "--tail", type=int, metavar="N", help="score the last N rows of each series instead"
    )
    group.add_argument(
        "--horizon",
        type=int,
        help="longest recursive forecast scored (default: the whole scored part)",
    )
    group.add_argument(
        "--season", type=int, help="seasonal period for MASE and seasonal naive (default: inferred)"
    )
    group.add_argument("--per-series", metavar="FILE", help="write the per-series metrics (.csv)")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def _json_summary(result: Any) -> str:
    """``--json``'s line: the summary, and the series it left out with why (an id the table
    holds that is in neither ``series`` count nor the scores must be named, as the text does)
    and those with gaps in time."""
    document = result.to_dict()
    summary = {
        **result.summary,
        "skipped": document["skipped"],
        "series_with_gaps": document["series_with_gaps"],
    }
    return json.dumps(_json_safe(summary), sort_keys=True)


def evaluate_forecaster_command(args: argparse.Namespace, forecaster: Any, table: Any) -> int:
    """Run ``seqstate evaluate`` on a loaded run (``forecaster``) and table."""
    from seqstate.recipe.evaluation import evaluate_forecaster, evaluate_forecaster_in_sample

    if args.per_series and Path(args.per_series).suffix.lower() != ".csv":
        raise ValueError(
            f"--per-series writes CSV: give a path ending in .csv; received {args.per_series!r}"
        )
    warm = args.warmup_until is not None or args.tail is not None
    if not warm and args.horizon is not None:
        raise ValueError("--horizon needs --warmup-until or --tail (the point to forecast from)")
    if warm:
        with flags_named(_EVALUATE_FLAGS):
            result = evaluate_forecaster(
                forecaster,
                table,
                warmup_until=args.warmup_until,
                tail=args.tail,
                horizon=args.horizon,
                season=args.season,
            )
    else:
        with flags_named(_EVALUATE_FLAGS):
            result = evaluate_forecaster_in_sample(forecaster, table, season=args.season)
    if args.per_series:
        target = Path(args.per_series)
        target.parent.mkdir(parents=True, exist_ok=True)
        _as_written(result.to_frame(), table).to_csv(target, index=False)
    if args.json:
        print(_json_summary(result))
    else:
        print(f"{args.data}: {result.text()}")
        if args.per_series:
            print(f"wrote the per-series metrics to {args.per_series}")
    return 0


# The columns of evaluate's and backtest's rows that hold a time of the table.
_TIME_COLUMNS = (
    *("origin", "origin_from", "origin_to"),
    *("warmup_from", "warmup_to", "scored_from", "scored_to"),
)


def _as_written(frame: Any, table: Any) -> Any:
    """``frame`` with its time columns written as the input writes its times (``1998Q1``
    stays ``1998Q1``) and its ``id`` named as the input's id column (as ``forecast`` writes
    them), so the rows join the input; the rows hold ISO text and ``id``."""
    name = table.columns.id
    if name is not None and name != "id" and name not in frame.columns:
        frame = frame.rename(columns={"id": name})
    form = table.time_format
    if form is None:
        return frame
    import numpy as np
    import pandas as pd

    from seqstate.recipe.calendar import format_times

    frame = frame.copy()
    for column in _TIME_COLUMNS:
        if column in frame.columns:
            times = pd.to_datetime(frame[column]).to_numpy(dtype="datetime64[ns]")
            frame[column] = format_times(np.asarray(times), form)
    return frame


def add_backtest_command(parser: argparse.ArgumentParser) -> None:
    """The options of ``seqstate backtest`` beyond the data and training ones."""
    group = parser.add_argument_group("backtest")
    group.add_argument("--folds", type=int, default=3, help="origins per series (default 3)")
    group.add_argument("--horizon", type=int, required=True, help="steps forecast per fold")
    group.add_argument(
        "--refit-each-fold",
        action="store_true",
        help="train again before every fold (default: once, on the data before the first)",
    )
    group.add_argument(
        "--season", type=int, help="seasonal period for MASE and seasonal naive (default: inferred)"
    )
    group.add_argument(
        "--out", help="directory for backtest.csv, folds.csv, backtest.png (default: none)"
    )
    group.add_argument("--json", action="store_true", help="print the summary as JSON")


def backtest_command(args: argparse.Namespace, table: Any, train: Any) -> int:
    """Run ``seqstate backtest``: ``train(history table) -> Forecaster``."""
    import pandas as pd

    from seqstate.recipe.evaluation import backtest, plot_backtest

    with flags_named(_BACKTEST_FLAGS):
        result = backtest(
            table,
            train,
            folds=args.folds,
            horizon=args.horizon,
            refit=args.refit_each_fold,
            season=args.season,
        )
    written = []
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _as_written(pd.DataFrame(result.rows), table).to_csv(out / "backtest.csv", index=False)
        _as_written(pd.DataFrame(result.folds), table).to_csv(out / "folds.csv", index=False)
        written = ["backtest.csv", "folds.csv"]
        if plot_backtest(result, table, out / "backtest.png"):
            written.append("backtest.png")
    if args.json:
        print(_json_summary(result))
    else:
        print(result.text())
        if written:
            print(f"wrote {args.out}/ ({', '.join(written)})")
    sys.stdout.flush()
    return 0
