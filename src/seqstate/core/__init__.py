"""The core: state, cells, recurrent layers with exact resets, the model and its config.

Nothing here imports the data layout, training, the recipe, the CLI or the server.

    state.py         typed State containers with addressable rows
    cells.py         one table row per cell kind (LSTM, GRU, RNN)
    activations.py   activation functions by name (Keras semantics)
    layers.py        LSTM/GRU/RNN with per-row resets and masks on the fused kernels
    timeline.py      the one-call strategy of the layers (each row on its own timeline)
    split.py         the reference strategy of the layers (split at resets)
    stepwise.py      any cell variant run exactly step by step
    model.py         SequenceModel: recurrent stack + Dense head
    model_config.py  ModelConfig, RecurrentSpec, DenseSpec (versioned JSON)
    saved.py         a model in a run directory (safetensors + JSON)
    protocol.py      SequenceCore: the contract every driver checks
"""

from seqstate.core.protocol import SequenceCore, check_core, check_sized_core

__all__ = ["SequenceCore", "check_core", "check_sized_core"]
