"""Former name of :mod:`seqstate.saved` (saving and loading models in run directories).

Kept so that existing imports (``from seqstate.checkpoint import load_model``) keep working; it
was misleading, since training checkpoints live in :mod:`seqstate.runstate`. New code imports
:mod:`seqstate.saved` (or ``seqstate.save_model`` / ``seqstate.load_model``).
"""

from __future__ import annotations

from seqstate.saved import (
    MODEL_FILE,
    MODEL_JSON,
    RUN_FORMAT,
    load_model,
    read_model_json,
    save_model,
)

__all__ = ["MODEL_FILE", "MODEL_JSON", "RUN_FORMAT", "load_model", "read_model_json", "save_model"]
