"""The ``seqstate`` commands that train: train, backtest, doctor, demo, and import-keras (which
writes a run directory from a Keras model). Dispatched by :mod:`seqstate.cli.dispatch`;
heavy modules are imported inside each command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from seqstate.cli.evaluation import backtest_command
from seqstate.cli.run import check_key_names
from seqstate.cli.settings import CliError, load_settings


def handle_train(args: argparse.Namespace) -> int:
    if not args.distributed:
        return _train_run(args, main=True)
    from seqstate.train.distributed import distributed, is_main_process

    # Every rank runs the same command; fit splits the lanes, rank 0 writes and reports.
    with distributed():
        return _train_run(args, main=is_main_process())


def _train_run(args: argparse.Namespace, *, main: bool) -> int:
    from seqstate.recipe.training import train_ensemble, train_run

    settings = load_settings(args)
    check_key_names(settings["data"]["id"], settings["data"]["time"])
    announce = None if args.quiet else (lambda line: print(line, file=sys.stderr))
    if announce is not None and main:
        _warn_order(settings, announce)
    if settings["run"]["seeds"] != 1:
        if args.distributed:
            raise CliError("--seeds K trains K runs one after the other; drop --distributed")
        results = train_ensemble(settings, resume=bool(args.resume), announce=announce)
        if not args.quiet:
            _print_ensemble(results, settings)
        return 0
    result = train_run(settings, resume=bool(args.resume), main=main, announce=announce)
    if not main or args.quiet:
        return 0
    out = result.out
    if result.selection is not None:
        print(_history_line("selection (validation)", result.selection))
        print(
            f"refit on every row for {len(result.history)} epoch(s): final training loss "
            f"{result.history.records[-1]['loss']:.4g}"
        )
    else:
        print(_history_line("trained", result.history))
    if result.chosen is not None:
        for line in result.chosen.lines():
            print(line)
    from seqstate.train.runfiles import PLOT_FILE

    files = ["model.json", "model.safetensors", "metrics.jsonl"]
    files += [PLOT_FILE] if (out / PLOT_FILE).exists() else []
    files += ["checkpoint/"] + (["selection/"] if result.selection is not None else [])
    print(f"wrote {out}/ ({', '.join(files)})")
    print(f"next: seqstate predict {out} {settings['data']['path']} --out predictions.csv")
    return 0


def _warn_order(settings: dict[str, dict[str, Any]], announce: Any) -> None:
    """Without a time column the file's order is the time order: say so when a column that
    looks like a time says otherwise (``doctor`` warns the same)."""
    from seqstate.cli.doctor import order_warning, source_name
    from seqstate.recipe.sources import read_frame

    data = settings["data"]
    if data["time"] is not None:
        return
    try:
        frame, _, _ = read_frame(data["path"], data["id"])
    except (ValueError, TypeError, OSError):
        return  # train's own reading reports it
    warning = order_warning(frame, data, source=source_name(data["path"]))
    if warning is not None:
        announce(f"warning: {warning}")


def _history_line(label: str, history: Any) -> str:
    best = history.records[_best_index(history)]
    shown = ", ".join(
        f"{key}={value:.4g}"
        for key, value in best.items()
        if key.startswith(("loss", "val_")) and isinstance(value, float)
    )
    stopped = ", stopped early" if history.stopped_early else ""
    number = int(best["epoch"]) + 1  # numbered from 1, as in the log
    return f"{label}: {len(history)} epoch(s){stopped}; best epoch {number}: {shown}"


def _best_index(history: Any) -> int:
    # best_epoch 0 is the first epoch, not "none"
    return history.best_epoch if history.best_epoch is not None else len(history.records) - 1


def _print_ensemble(results: list[Any], settings: dict[str, dict[str, Any]]) -> None:
    """One line per member and the spread of their forecasts' validation MASE (the network's,
    on the validation windows); of their best loss when the run made no selection."""
    import numpy as np

    from seqstate.recipe.selection import NETWORK, merge_selections

    chosen = [r.chosen for r in results if r.chosen is not None]
    scored = len(chosen) == len(results)
    values = []
    key = "validation MASE of the forecasts" if scored else "loss"
    for k, result in enumerate(results):
        history = result.selection or result.history
        seed = settings["run"]["seed"] + k
        if scored:
            values.append(float(result.chosen.scores[NETWORK]))
            print(f"seed {seed}: {len(history)} epoch(s), network validation MASE {values[-1]:.4g}")
            continue
        best = history.records[_best_index(history)]
        key = "val_loss" if "val_loss" in best else "loss"
        values.append(float(best[key]))
        print(f"seed {seed}: {len(history)} epoch(s), best {key}={values[-1]:.4g}")
    spread = np.std(values)
    print(
        f"ensemble of {len(results)} seeds: {key} mean {np.mean(values):.4g}, spread (std) "
        f"{spread:.3g}, min {min(values):.4g}, max {max(values):.4g}; predict/forecast "
        "average the members"
    )
    merged = merge_selections(chosen)
    if merged is not None:
        for line in merged.lines():
            print(line)
    out = results[0].out
    print(f"wrote {out}/ (model.json, ..., members/seed-*/)")
    data = settings["data"]
    targets = data["targets"] or data["features"]
    # (a run that reads covariates forecasts with their future values)
    known = [name for name in data["features"] or () if name not in (targets or ())]
    future = " --covariates FUTURE.csv" if known else ""
    print(f"next: seqstate forecast {out} {data['path']} --horizon H{future} --out f.csv")


def handle_backtest(args: argparse.Namespace) -> int:
    from seqstate.recipe.training import read_training_table, train_forecaster

    settings = load_settings(args)
    settings["run"]["out"] = None  # --out is where the backtest writes, not a run directory
    table = read_training_table(settings)
    announce = None if args.quiet else lambda line: print(line, file=sys.stderr)

    def train(history: Any) -> Any:
        # What `seqstate train` with these flags writes ([scaling], defaults, refit, --seeds),
        # forecast through the RunForecaster that evaluate/forecast load from a run.
        forecaster = train_forecaster(history, settings, announce=announce)
        chosen = forecaster.selection()
        if chosen is not None and announce is not None:
            # what the folds are forecast with, as train says it (stderr, beside the
            # training's own lines: stdout stays the result, or its JSON)
            announce(f"backtest model: {chosen.lines()[-1]}")
        return forecaster

    return backtest_command(args, table, train)


def handle_doctor(args: argparse.Namespace) -> int:
    from seqstate.cli.doctor import diagnose

    settings = load_settings(args)
    report = diagnose(settings)
    print(report.text())
    return 1 if report.problems else 0


def handle_demo(args: argparse.Namespace) -> int:
    from seqstate.cli.demo import run_demo

    run_demo(out=Path(args.out), quick=args.quick, seed=args.seed)
    return 0


def handle_import_keras(args: argparse.Namespace) -> int:
    from seqstate.core.saved import load_model
    from seqstate.interop.keras import describe, import_keras

    out = import_keras(
        args.path,
        args.out_run_dir,
        features=_column_list(args.features),
        targets=_column_list(args.targets),
        keras_version=args.keras_version,
    )
    info = describe(args.path, keras_version=args.keras_version)
    print(f"wrote {out}/ (model.json, model.safetensors) from {args.path}")
    print(load_model(out).describe())
    for note in info.notes:
        print(f"note: {note}")
    if not info.return_sequences:
        print("note: Keras returned the last step only; seqstate predicts every step")
    print(f"next: seqstate predict {out} DATA --out predictions.csv")
    return 0


def _column_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [name.strip() for name in value.split(",")]
    if not all(names):
        raise CliError(f"column lists are comma-separated names; received {value!r}")
    return names
