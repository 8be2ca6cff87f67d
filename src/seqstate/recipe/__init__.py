"""The forecasting recipe: from a long-format table to a trained run and its scores.

sources.py          reading tables (pandas, CSV, Parquet) into sequences
table.py            SequenceTable and Columns
splits.py           splits by series or time, and normalisation
holdout.py          warm validation on the tail of every series
calendar.py         dates as people write them, frequencies, future timestamps
covariates.py       calendar features and known-future covariates
scaling.py          per-series scaling and invertible target transforms
preparation.py      the run's [scaling] settings, tables to model space and back
choices.py          settings chosen from the data (layout, epochs, scaling, season), with reasons
threads.py          intra-op threads for a run
training.py         train a run: read, split, prepare, fit, write the run directory
run.py              Run: the one type that owns a run directory (save, load, describe)
step/               the run as one stateful step function (RunStep, RunState), its
                    transform cells, the baselines' and the history scale's cells
run_streams.py      RunStreams: a run's streams in Python, in raw units
forecaster.py       the Forecaster protocol and the recursive horizon forecast
run_forecaster.py   a run directory seen as a Forecaster, in raw units
calibration.py      the held-out errors a run's intervals are calibrated on
intervals.py        calibrated forecast intervals around any point forecast
evaluation.py       warm evaluation of a run on a table
evaluation_checks.py  what evaluation checks and says about a table
backtest.py         rolling-origin backtests
metrics.py          forecast accuracy per series and the seasonal-naive baseline
baselines.py        seasonal naive, damped ETS and Theta as stateful step cells
selection.py        the network against the baselines on the validation windows, and the
                    choice (or blend) the run answers with
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    # `seqstate.recipe` was a module (now recipe/training.py): its names keep working one release
    training = importlib.import_module("seqstate.recipe.training")
    if name.startswith("__") or not hasattr(training, name):
        raise AttributeError(f"module 'seqstate.recipe' has no attribute {name!r}")
    warnings.warn(
        f"seqstate.recipe.{name} moved to seqstate.recipe.training.{name}; "
        "the old path goes away in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(training, name)
