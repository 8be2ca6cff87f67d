"""Module paths of the flat layout, kept for one release: each resolves to its new home.

``import seqstate.streams`` (or ``from seqstate.pipeline import ...``) still works and warns
once with a DeprecationWarning naming the new path. The finder sits on ``sys.meta_path`` and
answers only the names below, so nothing else pays for it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

MOVED: dict[str, str] = {
    "seqstate.activations": "seqstate.core.activations",
    "seqstate.backtest": "seqstate.recipe.backtest",
    "seqstate.calendar": "seqstate.recipe.calendar",
    "seqstate.cells": "seqstate.core.cells",
    "seqstate.checkpoint": "seqstate.core.saved",
    "seqstate.cli_evaluation": "seqstate.cli.evaluation",
    "seqstate.cli_run": "seqstate.cli.run",
    "seqstate.cli_settings": "seqstate.cli.settings",
    "seqstate.cli_train": "seqstate.cli.train",
    "seqstate.covariates": "seqstate.recipe.covariates",
    "seqstate.defaults": "seqstate.recipe.choices",
    "seqstate.demo": "seqstate.cli.demo",
    "seqstate.demo_panel": "seqstate.cli.demo_panel",
    "seqstate.distributed": "seqstate.train.distributed",
    "seqstate.doctor": "seqstate.cli.doctor",
    "seqstate.evaluation": "seqstate.recipe.evaluation",
    "seqstate.forecaster": "seqstate.recipe.forecaster",
    "seqstate.forecasting": "seqstate.inference.forecasting",
    "seqstate.holdout": "seqstate.recipe.holdout",
    "seqstate.lane_inputs": "seqstate.lanes.inputs",
    "seqstate.layers": "seqstate.core.layers",
    "seqstate.layout": "seqstate.lanes.layout",
    "seqstate.losses": "seqstate.train.losses",
    "seqstate.metrics": "seqstate.recipe.metrics",
    "seqstate.model": "seqstate.core.model",
    "seqstate.model_config": "seqstate.core.model_config",
    "seqstate.pipeline": "seqstate.recipe.run_forecaster",
    "seqstate.prediction": "seqstate.inference.prediction",
    "seqstate.preparation": "seqstate.recipe.preparation",
    "seqstate.progress": "seqstate.train.progress",
    "seqstate.runstate": "seqstate.train.snapshots",
    "seqstate.saved": "seqstate.core.saved",
    "seqstate.scaling": "seqstate.recipe.scaling",
    "seqstate.sequence_table": "seqstate.recipe.table",
    "seqstate.sources": "seqstate.recipe.sources",
    "seqstate.splits": "seqstate.recipe.splits",
    "seqstate.state": "seqstate.core.state",
    "seqstate.stepwise": "seqstate.core.stepwise",
    "seqstate.streams": "seqstate.inference.streams",
    "seqstate.suggestions": "seqstate.recipe.choices",
    "seqstate.threads": "seqstate.recipe.threads",
    # renamed inside the recipe: settings chosen from the data are one module
    "seqstate.recipe.defaults": "seqstate.recipe.choices",
    "seqstate.recipe.suggestions": "seqstate.recipe.choices",
}


class _MovedLoader(importlib.abc.Loader):
    def __init__(self, new_name: str) -> None:
        self.new_name = new_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.new_name}; the old path goes away in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.new_name)

    def exec_module(self, module: ModuleType) -> None:
        # the module is the new one, already executed: nothing to run again
        return None


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds ``seqstate.<old>`` and hands back the module at its new path."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        new_name = MOVED.get(fullname)
        if new_name is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedLoader(new_name))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
