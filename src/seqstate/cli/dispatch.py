"""The ``seqstate`` command line: train, evaluate, predict, forecast, doctor, demo, serve, ...

Every command is a thin layer over the Python API (:mod:`seqstate.recipe.sources`, :func:`fit`,
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
from typing import Any, cast

from seqstate.cli.evaluation import add_backtest_command, add_evaluate_arguments
from seqstate.cli.run import (
    handle_evaluate,
    handle_export_onnx,
    handle_forecast,
    handle_predict,
    handle_serve,
)
from seqstate.cli.settings import CliError
from seqstate.cli.settings import load_settings as load_settings
from seqstate.cli.train import (
    handle_backtest,
    handle_demo,
    handle_doctor,
    handle_import_keras,
    handle_train,
)
from seqstate.core.kinds import KINDS
from seqstate.recipe.preparation import add_arguments as add_preparation_arguments
from seqstate.recipe.training import SECTIONS

__all__ = ["build_parser", "main"]


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
        return _guarded(lambda: handle_serve(argv[words[0] + 1 :]), debug)
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

    train = command("train", handle_train, "train a model on a table and write a run directory")
    _add_data_arguments(train, data_required=False)
    _add_training_arguments(train)
    train.add_argument("--out", help=_setting_help("run", "out"))
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
        handle_doctor,
        "explain how a table will be laid out in lanes and windows, and what looks wrong",
    )
    _add_data_arguments(doctor, data_required=False)
    _add_training_arguments(doctor)

    evaluate = command(
        "evaluate",
        handle_evaluate,
        "score a trained run on a table with targets: warmed up on each series' history, "
        "scored on what follows (--warmup-until), or every row (in-sample)",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="directory written by train")
    evaluate.add_argument("data", metavar="DATA", help="table with the run's columns")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_evaluate_arguments(evaluate)

    backtest = command(
        "backtest",
        handle_backtest,
        "rolling origins: train, then forecast HORIZON steps at FOLDS origins at the end of each "
        "series, against seasonal naive on the same folds",
    )
    _add_data_arguments(backtest, data_required=False)
    _add_training_arguments(backtest)
    add_backtest_command(backtest)

    predict = command("predict", handle_predict, "write one prediction per input row")
    predict.add_argument("run_dir", metavar="RUN_DIR", help="directory written by train")
    predict.add_argument("data", metavar="DATA", help="table with the run's feature columns")
    predict.add_argument("--out", "-o", required=True, help="output table (.csv, .tsv or .parquet)")
    predict.add_argument("--chunk", type=int, help="steps per model call (any value: same result)")
    predict.add_argument("--batch-size", type=int, help="series run side by side")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    predict.add_argument("--quiet", "-q", action="store_true", help="print nothing")
    predict.add_argument(
        "--quantiles",
        default="0.1,0.9",
        help="quantile levels of each one-step prediction, predicted_<target>_q10 ... "
        "(default 0.1,0.9; 'none' for the point prediction alone)",
    )

    forecast = command(
        "forecast",
        handle_forecast,
        "warm up on each series, then forecast HORIZON steps past its end",
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
    forecast.add_argument(
        "--no-progress", action="store_true", help="no progress bar (long horizons show one)"
    )
    forecast.add_argument(
        "--quiet", "-q", action="store_true", help="print nothing (errors still go to stderr)"
    )
    forecast.add_argument(
        "--samples",
        type=int,
        help="sample paths per series (a run trained with --distribution): the median and "
        "one column per quantile, predicted_<target>_q10 ...",
    )
    forecast.add_argument(
        "--quantiles",
        default="0.1,0.9",
        help="quantile levels, one column each, predicted_<target>_q10 ...: from the run's "
        "calibrated intervals, or of the sample paths with --samples (default 0.1,0.9; "
        "'none' for the point forecast alone)",
    )
    forecast.add_argument(
        "--seed", type=int, help="seed of the sample paths (default 0: the same paths each run)"
    )
    forecast.add_argument("--paths", help="write the sample paths to this table too")

    demo = command("demo", handle_demo, "train on generated and real data and show what state buys")
    demo.add_argument("--out", default="seqstate-demo", help="where to write (./seqstate-demo)")
    demo.add_argument("--quick", action="store_true", help="tiny sizes: seconds, not minutes")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    # Listed for --help only: main() hands `serve ...` to seqstate.serve before parsing.
    commands.add_parser("serve", help="serve a run over HTTP (`seqstate serve --help`)")

    keras = command(
        "import-keras", handle_import_keras, "convert a Keras .keras/.h5 recurrent model to a run"
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

    onnx = command(
        "export-onnx", handle_export_onnx, "export a run to ONNX with state inputs/outputs"
    )
    onnx.add_argument("run_dir", metavar="RUN_DIR", help="directory written by train")
    onnx.add_argument("out", metavar="OUT", help="the .onnx file to write")
    onnx.add_argument(
        "--model-space",
        action="store_true",
        help="the model alone: inputs are the model-space columns (scaled, differenced, "
        "calendar) the run's preprocessing makes, outputs model space (default: the whole run, "
        "raw inputs and outputs, its preprocessing state as state inputs/outputs)",
    )
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
    group.add_argument(
        "--features",
        "-f",
        help="input columns, comma-separated (default for a regression: the targets, so the "
        "model reads the past values of what it forecasts)",
    )
    group.add_argument("--targets", "-t", help=_setting_help("data", "targets"))
    group.add_argument("--id", dest="id", help=_setting_help("data", "id"))
    group.add_argument("--time", dest="time", help=_setting_help("data", "time"))
    group.add_argument("--shift", type=int, help=_setting_help("data", "shift"))
    group.add_argument("--task", choices=["regression", "classification"])
    group.add_argument("--split", dest="split_by", choices=["auto", "series", "time", "none"])
    group.add_argument("--validation", type=float, help=_setting_help("split", "fraction"))


def _add_training_arguments(parser: argparse.ArgumentParser) -> None:
    layout = parser.add_argument_group("layout")
    layout.add_argument("--lanes", "-B", type=int, help=_setting_help("layout", "lanes"))
    layout.add_argument("--window", "-T", type=int, help=_setting_help("layout", "window"))
    layout.add_argument("--no-shuffle", action="store_true", help="keep lanes fixed every epoch")
    model = parser.add_argument_group("model")
    model.add_argument("--cell", choices=KINDS, help=_setting_help("model", "cell", choices=True))
    model.add_argument("--hidden-size", type=int, help=_setting_help("model", "hidden_size"))
    model.add_argument("--num-layers", type=int, help=_setting_help("model", "num_layers"))
    model.add_argument("--dropout", type=float, help=_setting_help("model", "dropout"))
    model.add_argument(
        "--distribution",
        choices=["none", "auto", "normal", "studentt", "negbin", "quantile"],
        help=_setting_help("model", "distribution"),
    )
    model.add_argument("--quantiles", help=_setting_help("model", "quantiles"))
    fit = parser.add_argument_group("training")
    fit.add_argument(
        "--epochs", type=int, help="passes over the data (default: from a budget of updates)"
    )
    # argparse types help as str; a _FitDefault does what its formatter asks of one
    fit.add_argument("--lr", type=float, help=cast(str, _FitDefault("learning rate", "lr")))
    fit.add_argument("--patience", type=int, help="early stopping after N epochs w/o progress")
    fit.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    fit.add_argument("--seed", type=int, help=_setting_help("run", "seed"))
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
    fit.add_argument("--seeds", type=int, help=_setting_help("run", "seeds"))
    fit.add_argument("--threads", help=_setting_help("run", "threads"))
    fit.add_argument(
        "--select",
        choices=("auto", "network"),
        help="auto (default): score the network against seasonal naive, damped ETS, Theta and "
        "their combinations on the last validation windows; answer with seasonal naive unless "
        "one beats it clearly; network: the network alone",
    )
    add_preparation_arguments(parser)


# --------------------------------------------------------------------------------------------
# Help generated from the settings' owners (each description and default written once)
# --------------------------------------------------------------------------------------------


def _setting_help(section: str, key: str, *, choices: bool = False) -> str:
    """The help of the flag that sets ``[section] key``: its description in
    :data:`seqstate.recipe.training.SECTIONS` (which reads the model's from
    :mod:`seqstate.core.model_config`) and its default. ``choices``: the description lists the
    choices, which argparse shows already, so only the default is said."""
    default, description = SECTIONS[section][key]
    if choices:
        return f"default {default}"
    if default is None or "default" in description:
        return description
    return f"{description} (default {default})"


class _FitDefault:
    """A help text that ends with a :class:`seqstate.train.FitConfig` default, read only when
    the help is shown: FitConfig loads torch, and parsing the command line does not."""

    def __init__(self, description: str, field: str) -> None:
        self.description, self.field = description, field

    def __str__(self) -> str:
        from seqstate.train.config import FitConfig

        return f"{self.description} (default {getattr(FitConfig, self.field)})"

    # what argparse's help formatter does with a help text
    def strip(self) -> str:
        return str(self).strip()

    def __mod__(self, values: Any) -> str:
        return str(self) % values


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
