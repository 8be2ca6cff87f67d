"""The ``seqstate`` command line.

dispatch.py     parsing and dispatch (``main``)
settings.py     defaults <- --config TOML <- flags; CliError
train.py        train, backtest, doctor, demo, import-keras
run.py          evaluate, predict, forecast, serve, export-onnx over a run directory
evaluation.py   the evaluate and backtest arguments
doctor.py       seqstate doctor: the layout and what looks wrong
demo.py         seqstate demo (demo_panel.py: its panel part)
"""

from seqstate.cli.dispatch import main

__all__ = ["main"]
