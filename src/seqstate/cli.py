"""The ``seqstate`` command line: train, evaluate, predict, forecast, doctor, demo, serve, ...

Every command is a thin layer over the Python API (:mod:`seqstate.sources`, :func:`fit`,
:func:`predict`, :func:`forecast`); the run directory written by ``train`` records the data
columns, the split and the layout in ``model.json``'s metadata, so ``evaluate``, ``predict``
and ``forecast`` need nothing but the run directory and a table. See ``docs/cli.md``.

Bad input ends with one line, ``seqstate: error: ...``, and exit code 1 (2 for a wrong command
line); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from seqstate._io import atomic_path
from seqstate.cli_evaluation import (
    add_backtest_command,
    add_evaluate_arguments,
    backtest_command,
    evaluate_command,
)
from seqstate.preparation import add_arguments as add_preparation_arguments
from seqstate.preparation import flag_settings as preparation_flag_settings
from seqstate.recipe import SECTIONS, default_settings
from seqstate.recipe import fit_fields as recipe_fit_fields

__all__ = ["build_parser", "main"]


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 1."""


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``seqstate`` command line; returns the exit code (never raises SystemExit)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # `serve` takes the server's own arguments (seqstate.serve.add_arguments), parsed there.
    words = [i for i, word in enumerate(argv) if not word.startswith("-")]
    if words and argv[words[0]] == "serve":
        debug = "--debug" in argv[: words[0]]
        return _guarded(lambda: _serve(argv[words[0] + 1 :]), debug)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, usage errors
        return stop.code if isinstance(stop.code, int) else 0
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    return _guarded(lambda: args.handler(args), args.debug)


def _guarded(run: Callable[[], int | None], debug: bool) -> int:
    try:
        return int(run() or 0)
    except KeyboardInterrupt:
        print("seqstate: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `seqstate ... | head`: the reader left; nothing to report
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (CliError, ValueError, TypeError, KeyError, OSError) as error:
        if debug:
            raise
        print(f"seqstate: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except ImportError as error:  # an optional dependency is missing: name the extra
        if debug:
            raise
        print(f"seqstate: error: {_missing_extra(error)}", file=sys.stderr)
        return 1


# Optional dependencies and the extra that installs each (pyproject.toml's
# [project.optional-dependencies]); commands import them lazily, on first use.
_EXTRAS = {
    "pandas": "data",
    "pyarrow": "data",
    "matplotlib": "plot",
    "fastapi": "serve",
    "uvicorn": "serve",
    "redis": "serve",
    "prometheus_client": "serve",
    "httpx": "serve",
    "h5py": "keras",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "statsmodels": "demo",
}


def _missing_extra(error: ImportError) -> str:
    """One line naming the extra that installs the missing module."""
    module = (error.name or "").split(".")[0]
    extra = _EXTRAS.get(module)
    if extra is None:
        return _one_line(error)  # already says what to install, or is not about an extra
    return f"this command needs {module}, which is not installed: pip install 'seqstate[{extra}]'"


def _one_line(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if isinstance(error, FileNotFoundError | PermissionError) and error.filename:
        text = f"{error.strerror or text}: {error.filename}"
    return " ".join(text.split())


def build_parser() -> argparse.ArgumentParser:
    from seqstate import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback on errors",
    )
    parser = argparse.ArgumentParser(
        prog="seqstate",
        description="Stateful recurrent sequence models (LSTM/GRU/RNN) whose hidden state "
        "carries across batches: train, evaluate, predict, forecast and serve them.",
        epilog="Start with `seqstate demo`, then `seqstate doctor DATA ...` on your own table. "
        "`seqstate COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"seqstate {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> Any:
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    train = command("train", _train, "train a model on a table and write a run directory")
    _add_data_arguments(train, data_required=False)
    _add_training_arguments(train)
    train.add_argument("--out", help="run directory (default: runs/<data file stem>)")
    train.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from --out/checkpoint"
    )
    train.add_argument(
        "--distributed",
        action="store_true",
        help="run under torchrun: split the lanes across its processes (docs/distributed.md)",
    )

    doctor = command(
        "doctor",
        _doctor,
        "explain how a table will be laid out in lanes and windows, and what looks wrong",
    )
    _add_data_arguments(doctor, data_required=False)
    _add_training_arguments(doctor)

    evaluate = command(
        "evaluate",
        _evaluate,
        "score a trained run on a table with targets: warmed up on each series' history, "
        "scored on what follows (--warmup-until), or every row (in-sample)",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="directory written by train")
    evaluate.add_argument("data", metavar="DATA", help="table with the run's columns")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_evaluate_arguments(evaluate)

    backtest = command(
        "backtest",
        _backtest,
        "rolling origins: train, then forecast HORIZON steps at FOLDS origins at the end of each "
        "series, against seasonal naive on the same folds",
    )
    _add_data_arguments(backtest, data_required=False)
    _add_training_arguments(backtest)
    add_backtest_command(backtest)

    predict = command("predict", _predict, "write one prediction per input row")
    predict.add_argument("run_dir", metavar="RUN_DIR", help="directory written by train")
    predict.add_argument("data", metavar="DATA", help="table with the run's feature columns")
    predict.add_argument("--out", "-o", required=True, help="output table (.csv, .tsv or .parquet)")
    predict.add_argument("--chunk", type=int, help="steps per model call (any value: same result)")
    predict.add_argument("--batch-size", type=int, help="series run side by side")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    predict.add_argument("--quiet", "-q", action="store_true", help="print nothing")

    forecast = command(
        "forecast", _forecast, "warm up on each series, then forecast HORIZON steps past its end"
    )
    forecast.add_argument("run_dir", metavar="RUN_DIR", help="directory written by train")
    forecast.add_argument("data", metavar="DATA", help="the history: table with the run's columns")
    forecast.add_argument("--horizon", type=int, required=True, help="steps to forecast")
    forecast.add_argument(
        "--covariates",
        help="table of the known future values of the run's non-target features (id, time)",
    )
    forecast.add_argument(
        "--out", "-o", required=True, help="output table (.csv, .tsv or .parquet)"
    )

    demo = command("demo", _demo, "train on generated and real data and show what state buys")
    demo.add_argument("--out", default="seqstate-demo", help="where to write (./seqstate-demo)")
    demo.add_argument("--quick", action="store_true", help="tiny sizes: seconds, not minutes")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    # Listed for --help only: main() hands `serve ...` to seqstate.serve before parsing.
    commands.add_parser("serve", help="serve a run over HTTP (`seqstate serve --help`)")

    keras = command(
        "import-keras", _import_keras, "convert a Keras .keras/.h5 recurrent model to a run"
    )
    keras.add_argument("path", metavar="PATH", help="the .keras or .h5 file")
    keras.add_argument("out_run_dir", metavar="OUT_RUN_DIR", help="run directory to write")
    keras.add_argument(
        "--features", "-f", help="the model's input columns in order, comma-separated (x0, x1, ..)"
    )
    keras.add_argument(
        "--targets", "-t", help="the columns its outputs predict, comma-separated (y0, y1, ..)"
    )
    keras.add_argument(
        "--keras-version", help="the Keras that wrote PATH, for files that do not record it"
    )

    onnx = command("export-onnx", _export_onnx, "export a run to ONNX with state inputs/outputs")
    onnx.add_argument("run_dir", metavar="RUN_DIR", help="directory written by train")
    onnx.add_argument("out", metavar="OUT", help="the .onnx file to write")
    return parser


def _add_data_arguments(parser: argparse.ArgumentParser, *, data_required: bool) -> None:
    parser.add_argument(
        "data",
        metavar="DATA",
        nargs=None if data_required else "?",
        help="long-format table: .csv, .tsv or .parquet (or [data] path in --config)",
    )
    parser.add_argument("--config", "-c", help="run.toml with [data] [split] [layout] [model] ...")
    group = parser.add_argument_group("data")
    group.add_argument("--features", "-f", help="input columns, comma-separated")
    group.add_argument("--targets", "-t", help="target columns (default: the features)")
    group.add_argument("--id", dest="id", help="series id column (default: one series)")
    group.add_argument("--time", dest="time", help="column to sort each series by")
    group.add_argument("--shift", type=int, help="y[t] = targets[t + shift] (default 1)")
    group.add_argument("--task", choices=["regression", "classification"])
    group.add_argument("--split", dest="split_by", choices=["auto", "series", "time", "none"])
    group.add_argument("--validation", type=float, help="validation fraction (default 0.2)")


def _add_training_arguments(parser: argparse.ArgumentParser) -> None:
    layout = parser.add_argument_group("layout")
    layout.add_argument(
        "--lanes", "-B", type=int, help="sequences side by side (default: from the data)"
    )
    layout.add_argument(
        "--window", "-T", type=int, help="steps per window (default: from the data)"
    )
    layout.add_argument("--no-shuffle", action="store_true", help="keep lanes fixed every epoch")
    model = parser.add_argument_group("model")
    model.add_argument("--cell", choices=["lstm", "gru", "rnn"])
    model.add_argument("--hidden-size", type=int, help="units per layer (default 64)")
    model.add_argument("--num-layers", type=int, help="stacked layers (default 1)")
    model.add_argument("--dropout", type=float, help="between layers (default 0)")
    fit = parser.add_argument_group("training")
    fit.add_argument(
        "--epochs", type=int, help="passes over the data (default: from a budget of updates)"
    )
    fit.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    fit.add_argument("--patience", type=int, help="early stopping after N epochs w/o progress")
    fit.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    fit.add_argument("--seed", type=int, help="seed of split, shuffle and training (default 0)")
    fit.add_argument(
        "--no-refit",
        dest="refit",
        action="store_false",
        default=None,
        help="keep the early-stopped model instead of training again on every row",
    )
    fit.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress (default: a bar on a terminal, a line per epoch in a log)",
    )
    fit.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    fit.add_argument(
        "--seeds", type=int, help="train K seeds; predict/forecast average them (default 1)"
    )
    fit.add_argument("--threads", help="intra-op threads: auto (1 unless the model is large) or N")
    add_preparation_arguments(parser)


# --------------------------------------------------------------------------------------------
# Settings: defaults <- run.toml <- flags
# --------------------------------------------------------------------------------------------


def load_settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Merged settings for train/doctor: defaults, then ``--config``, then command-line flags."""
    settings = default_settings()
    config_path = getattr(args, "config", None)
    if config_path:
        _merge_toml(settings, Path(config_path))
    flags = {
        ("data", "path"): args.data,
        ("data", "features"): args.features,
        ("data", "targets"): args.targets,
        ("data", "id"): args.id,
        ("data", "time"): args.time,
        ("data", "shift"): args.shift,
        ("data", "task"): args.task,
        ("split", "by"): args.split_by,
        ("split", "fraction"): args.validation,
        ("split", "refit"): args.refit,
        ("layout", "lanes"): args.lanes,
        ("layout", "window"): args.window,
        ("layout", "shuffle"): False if args.no_shuffle else None,
        ("model", "cell"): args.cell,
        ("model", "hidden_size"): args.hidden_size,
        ("model", "num_layers"): args.num_layers,
        ("model", "dropout"): args.dropout,
        ("fit", "epochs"): args.epochs,
        ("fit", "lr"): args.lr,
        ("fit", "patience"): args.patience,
        ("fit", "device"): args.device,
        ("fit", "progress"): False if args.no_progress or args.quiet else None,
        ("run", "seed"): args.seed,
        ("run", "out"): getattr(args, "out", None),
        ("run", "seeds"): getattr(args, "seeds", None),
        ("run", "threads"): _threads_flag(getattr(args, "threads", None)),
    }
    for (section, key), value in flags.items():
        if value is not None:
            settings[section][key] = value
    settings["scaling"].update(preparation_flag_settings(args))
    data = settings["data"]
    for key in ("features", "targets"):
        if isinstance(data[key], str):
            data[key] = [name.strip() for name in data[key].split(",") if name.strip()]
    if not data["path"]:
        raise CliError("no data: give DATA (a .csv/.tsv/.parquet table) or [data] path in --config")
    if not data["features"]:
        raise CliError(
            "no feature columns: give --features col1,col2 (or [data] features in --config)"
        )
    if not data["targets"]:
        data["targets"] = list(data["features"])
    if settings["split"]["by"] not in ("auto", "series", "time", "none"):
        raise CliError(
            f"split.by must be auto, series, time or none; received {settings['split']['by']!r}"
        )
    return settings


def _threads_flag(value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise CliError(f"--threads must be 'auto' or an int >= 1; received {value!r}") from None


def _merge_toml(settings: dict[str, dict[str, Any]], path: Path) -> None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise CliError(
                "--config needs Python >= 3.11 (tomllib) or the tomli package: pip install tomli"
            ) from None

    if not path.is_file():
        raise CliError(f"config file {str(path)!r} does not exist")
    try:
        document = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise CliError(f"{path} is not valid TOML: {error}") from None
    fit_fields = recipe_fit_fields()
    for section, values in document.items():
        if section not in SECTIONS:
            raise CliError(
                f"{path}: unknown section [{section}]; known sections: {sorted(SECTIONS)}"
            )
        if not isinstance(values, dict):
            raise CliError(f"{path}: {section} must be a [{section}] table of settings")
        known = fit_fields if section == "fit" else SECTIONS[section]
        for key, value in values.items():
            if key not in known:
                raise CliError(
                    f"{path}: unknown setting {key!r} in [{section}]; known: {sorted(known)}"
                )
            if section == "data" and key == "path":
                value = str(path.parent / value) if not os.path.isabs(value) else value
            settings[section][key] = value


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _train(args: argparse.Namespace) -> int:
    if not args.distributed:
        return _train_run(args, main=True)
    from seqstate.distributed import distributed, is_main_process

    # Every rank runs the same command; fit splits the lanes, rank 0 writes and reports.
    with distributed():
        return _train_run(args, main=is_main_process())


def _train_run(args: argparse.Namespace, *, main: bool) -> int:
    from seqstate.recipe import train_ensemble, train_run

    settings = load_settings(args)
    announce = None if args.quiet else (lambda line: print(line, file=sys.stderr))
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
    from seqstate.train.runfiles import PLOT_FILE

    files = ["model.json", "model.safetensors", "metrics.jsonl"]
    files += [PLOT_FILE] if (out / PLOT_FILE).exists() else []
    files += ["checkpoint/"] + (["selection/"] if result.selection is not None else [])
    print(f"wrote {out}/ ({', '.join(files)})")
    print(f"next: seqstate predict {out} {settings['data']['path']} --out predictions.csv")
    return 0


def _history_line(label: str, history: Any) -> str:
    best = history.records[history.best_epoch or len(history.records) - 1]
    shown = ", ".join(
        f"{key}={value:.4g}"
        for key, value in best.items()
        if key.startswith(("loss", "val_")) and isinstance(value, float)
    )
    stopped = ", stopped early" if history.stopped_early else ""
    return f"{label}: {len(history)} epoch(s){stopped}; best epoch {best['epoch']}: {shown}"


def _print_ensemble(results: list[Any], settings: dict[str, dict[str, Any]]) -> None:
    """One line per member and the spread of their best validation (or training) loss."""
    import numpy as np

    losses = []
    key = "loss"
    for k, result in enumerate(results):
        history = result.history
        best = history.records[history.best_epoch or len(history.records) - 1]
        key = "val_loss" if "val_loss" in best else "loss"
        losses.append(float(best[key]))
        seed = settings["run"]["seed"] + k
        print(f"seed {seed}: {len(history)} epoch(s), best {key}={losses[-1]:.4g}")
    spread = np.std(losses)
    print(
        f"ensemble of {len(results)} seeds: best {key} mean {np.mean(losses):.4g}, spread (std) "
        f"{spread:.3g}, min {min(losses):.4g}, max {max(losses):.4g}; predict/forecast "
        "average the members"
    )
    out = results[0].out
    print(f"wrote {out}/ (model.json, ..., members/seed-*/)")
    print(f"next: seqstate forecast {out} {settings['data']['path']} --horizon H --out f.csv")


def _load_run(run_dir: str) -> tuple[Any, dict[str, Any], Any]:
    from seqstate.checkpoint import load_model, read_model_json
    from seqstate.sources import Columns

    metadata = read_model_json(run_dir).get("metadata", {})
    if "data" not in metadata or "columns" not in metadata["data"]:
        raise CliError(
            f"{run_dir} records no data columns (it was not written by `seqstate train`); use "
            "the Python API (seqstate.predict) with this model"
        )
    return load_model(run_dir), metadata, Columns.from_dict(metadata["data"]["columns"])


def _read_for_run(path: str, columns: Any, *, require_targets: bool) -> Any:
    from seqstate.sources import read_table

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


def _evaluate(args: argparse.Namespace) -> int:
    from seqstate.pipeline import load_forecaster

    model, metadata, columns = _load_run(args.run_dir)
    table = _read_for_run(args.data, columns, require_targets=True)
    if columns.task != "regression":
        return _evaluate_pooled(args, model, metadata, table)
    warned = _trained_past(metadata, args.warmup_until)
    if warned and not args.json:
        print(f"note: {warned}", file=sys.stderr)
    # The run's models with its scaling and calendar (#13): answers in raw units.
    return evaluate_command(args, load_forecaster(args.run_dir), table)


def _trained_past(metadata: dict[str, Any], until: str | None) -> str | None:
    """A warning when the run was trained on rows after ``until`` (they would be scored)."""
    last = metadata.get("data", {}).get("time_last")
    if until is None or last is None:
        return None
    from seqstate.calendar import parse_times

    try:
        if metadata["data"].get("time_kind") == "datetime":
            trained_past = parse_times([str(last)])[0] > parse_times([until])[0]
        else:
            trained_past = float(last) > float(until)
    except (ValueError, TypeError):
        return None
    if not trained_past:
        return None
    return (
        f"the run was trained on rows up to {last}, after --warmup-until {until}: the scored "
        "rows were seen in training (in-sample). Train on the rows up to that time for an "
        "honest hold-out, or use `seqstate backtest`"
    )


def _evaluate_pooled(args: argparse.Namespace, model: Any, metadata: Any, table: Any) -> int:
    """Classification: accuracy and loss over every row from a zero state."""
    import json

    from seqstate.pipeline import encode_table
    from seqstate.preparation import load as load_preparation
    from seqstate.train import evaluate

    # Scored in the units the model reads: each series scaled as the run scaled it.
    scaling, calendar = load_preparation(args.run_dir, metadata)
    table = encode_table(table, scaling, calendar)
    layout = metadata.get("layout", {})
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


def _backtest(args: argparse.Namespace) -> int:
    from seqstate.recipe import read_training_table, train_forecaster

    settings = load_settings(args)
    settings["run"]["out"] = None  # --out is where the backtest writes, not a run directory
    table = read_training_table(settings)
    announce = None if args.quiet else lambda line: print(line, file=sys.stderr)

    def train(history: Any) -> Any:
        # What `seqstate train` with these flags writes ([scaling], defaults, refit, --seeds),
        # forecast through the RunForecaster that evaluate/forecast load from a run.
        return train_forecaster(history, settings, announce=announce)

    return backtest_command(args, table, train)


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
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False, sep="\t" if kind == "tsv" else ",")


def _key_columns(columns: Any, table: Any, index: int, times: Any) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    if columns.id is not None:
        keys[columns.id] = [table.ids[index]] * len(times)
    keys[columns.time or "step"] = times
    return keys


def _predict(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from seqstate.prediction import predict

    target, kind = _output_path(args.out)
    model, _, columns = _load_run(args.run_dir)
    table = _read_for_run(args.data, columns, require_targets=False)
    names = _output_names(columns, model)
    forecaster = _prepared_forecaster(args.run_dir, columns)
    if forecaster is not None:
        return _predict_prepared(args, forecaster, table, columns, names, target, kind)
    batch = args.batch_size or 256
    frames = []
    groups = range(0, len(table), batch)
    quiet = args.no_progress or args.quiet
    bar = tqdm(groups, desc="predict", unit="batch", disable=quiet or len(groups) < 2)
    for begin in bar:
        chunk = table.features[begin : begin + batch]
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
    frame = pd.concat(frames, ignore_index=True)
    _write_frame(frame, target, kind)
    if args.quiet:
        return 0
    ahead = "the same step" if columns.shift == 0 else f"{columns.shift} step(s) ahead"
    print(
        f"wrote {len(frame)} rows to {target}: {', '.join(names)} = the prediction of "
        f"{', '.join(columns.targets)} {ahead}, from the rows up to each row"
    )
    return 0


def _prepared_forecaster(run_dir: str, columns: Any) -> Any:
    """The run's :class:`seqstate.pipeline.RunForecaster` when it has a scaling, calendar
    features or ensemble members (regression runs since #13); None: the model alone."""
    from seqstate.pipeline import load_forecaster

    if columns.task != "regression":
        return None
    forecaster = load_forecaster(run_dir)
    members = forecaster.members
    if len(members) == 1 and members[0].scaling is None and not members[0].calendar:
        return None
    return forecaster


def _output_frame(
    columns: Any,
    table: Any,
    outputs: Any,
    names: list[str],
    stamps: Any,
    several: bool,
    *,
    horizon: int | None = None,
) -> Any:
    """One long-format frame of a run's answers: each series' key columns (id, time ``stamps``),
    ``horizon`` (forecasts: 1..H), ``predicted_<target>`` and, for an ensemble, its spread."""
    import numpy as np
    import pandas as pd

    frames = []
    for index in range(len(table)):
        data = _key_columns(columns, table, index, stamps[index])
        if horizon is not None:
            data["horizon"] = np.arange(1, horizon + 1)
        data |= {name: outputs.mean[index][:, j] for j, name in enumerate(names)}
        if several:
            data |= {f"{name}_spread": outputs.spread[index][:, j] for j, name in enumerate(names)}
        frames.append(pd.DataFrame(data))
    return pd.concat(frames, ignore_index=True)


def _predict_prepared(
    args: argparse.Namespace,
    forecaster: Any,
    table: Any,
    columns: Any,
    names: list[str],
    target: Path,
    kind: str,
) -> int:

    outputs = forecaster.predict_outputs(table)
    several = len(forecaster.members) > 1
    frame = _output_frame(columns, table, outputs, names, table.times, several)
    _write_frame(frame, target, kind)
    ahead = "the same step" if columns.shift == 0 else f"{columns.shift} step(s) ahead"
    mean = (
        f"the mean of {len(forecaster.members)} seeds' predictions" if several else "the prediction"
    )
    print(
        f"wrote {len(frame)} rows to {target}: {', '.join(names)} = {mean} of "
        f"{', '.join(columns.targets)} {ahead}, from the rows up to each row (raw units)"
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


def _forecast(args: argparse.Namespace) -> int:
    import dataclasses

    import numpy as np

    from seqstate.calendar import future_times
    from seqstate.covariates import future_covariates
    from seqstate.pipeline import load_forecaster

    target, kind = _output_path(args.out)
    if args.horizon is None or args.horizon < 1:
        raise CliError(f"--horizon must be an int >= 1; received {args.horizon}")
    _, _, columns = _load_run(args.run_dir)
    if columns.task != "regression" or columns.shift != 1:
        raise CliError(
            "forecast feeds each prediction back as the next input, which needs a regression "
            f"run trained with shift 1; this run has task {columns.task!r} and shift "
            f"{columns.shift}. Use `seqstate predict` instead"
        )
    missing = [name for name in columns.targets if name not in columns.features]
    if missing:
        raise CliError(
            f"this run forecasts {list(columns.targets)} from {list(columns.features)}: the "
            f"targets {missing} are not inputs, so a forecast cannot be fed back. Use "
            "`seqstate predict` instead"
        )
    covariates = [name for name in columns.features if name not in columns.targets]
    if covariates and not args.covariates:
        raise CliError(
            f"this run reads the covariates {covariates} besides {list(columns.targets)}: give "
            "their future values with --covariates FILE (the id and time columns and one row "
            "per forecast step after each series' end)"
        )
    table = _read_for_run(args.data, columns, require_targets=False)
    horizon = args.horizon
    stamps = []
    for times in table.times:
        # On the series' own calendar: monthly data steps by months, not by 31 days.
        if columns.time is None:
            stamps.append(times[-1] + np.arange(1, horizon + 1))
        else:
            stamps.append(future_times(times, horizon))
    known = future_covariates(args.covariates, covariates, table, horizon) if covariates else None
    features = []
    for index in range(len(table)):
        # The future rows: the fed target columns are unknown (NaN), the covariates known.
        rows = np.full((horizon, len(columns.features)), np.nan, dtype=np.float32)
        if known is not None:
            for j, name in enumerate(covariates):
                rows[:, columns.features.index(name)] = known[index][:, j]
        features.append(rows)
    future = dataclasses.replace(table, features=features, times=stamps)
    forecaster = load_forecaster(args.run_dir)
    names = _output_names(columns, forecaster.members[0].model)
    outputs = forecaster.forecast_outputs(table, horizon, future)
    several = len(forecaster.members) > 1
    frame = _output_frame(columns, table, outputs, names, stamps, several, horizon=horizon)
    _write_frame(frame, target, kind)
    members = (
        f" (the mean of {len(forecaster.members)} seeds; *_spread: their std)" if several else ""
    )
    print(
        f"wrote {len(frame)} rows to {target}: {horizon} step(s) past the end of each of "
        f"{len(table)} series{members}"
    )
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from seqstate.doctor import diagnose

    settings = load_settings(args)
    report = diagnose(settings)
    print(report.text())
    return 1 if report.problems else 0


def _demo(args: argparse.Namespace) -> int:
    from seqstate.demo import run_demo

    run_demo(out=Path(args.out), quick=args.quick, seed=args.seed)
    return 0


def _serve(argv: list[str]) -> int:
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


def _import_keras(args: argparse.Namespace) -> int:
    from seqstate.interop.keras import describe, import_keras
    from seqstate.saved import load_model

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


def _export_onnx(args: argparse.Namespace) -> int:
    from seqstate.interop.onnx import export_onnx, onnx_input_names, onnx_output_names
    from seqstate.saved import load_model

    if not Path(args.out).suffix.lower() == ".onnx":
        raise CliError(f"OUT must be a .onnx file; received {args.out!r}")
    model = load_model(args.run_dir)
    written = export_onnx(model, args.out)
    print(f"wrote {written}: inputs {onnx_input_names(model)}, outputs {onnx_output_names(model)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
