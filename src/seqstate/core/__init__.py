"""The core: state, cells, recurrent layers with exact resets, the model and its config.

Nothing here imports the data layout, training, the recipe, the CLI or the server.

    state.py         typed State containers with addressable rows
    kinds.py         the cell kinds' names (no torch: the CLI's choices read them)
    cells.py         one table row per cell kind (LSTM, GRU, RNN)
    activations.py   activation functions by name (Keras semantics)
    layers.py        LSTM/GRU/RNN with per-row resets and masks on the fused kernels
    kernels.py       LayerKernels: what the layers' two strategies may use of a layer
    timeline.py      the one-call strategy of the layers (each row on its own timeline)
    split.py         the reference strategy of the layers (split at resets)
    stepwise.py      any cell variant run exactly step by step
    model.py         SequenceModel: recurrent stack + Dense head
    model_config.py  ModelConfig, RecurrentSpec, DenseSpec (versioned JSON), the model defaults
    saved.py         a model in a run directory (safetensors + JSON)
    protocol.py      SequenceCore: the contract every driver checks

The package itself imports nothing heavy, so that ``kinds`` and ``model_config`` (the defaults
the command line shows) load without torch; its names load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["SequenceCore", "check_core", "check_sized_core"]

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from seqstate.core.protocol import SequenceCore, check_core, check_sized_core


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'seqstate.core' has no attribute {name!r}")
    return getattr(importlib.import_module("seqstate.core.protocol"), name)
