"""seqstate: stateful recurrent sequence models with the hidden state handled correctly.

The public API is listed in ``__all__``. Names are resolved lazily (PEP 562) so that
``import seqstate`` stays light: torch-heavy and optional modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # data layout
    "Lanes": "seqstate.lanes",
    "Window": "seqstate.lanes",
    # state
    "State": "seqstate.state",
    "LSTMState": "seqstate.state",
    "GRUState": "seqstate.state",
    "RNNState": "seqstate.state",
    # layers
    "LSTM": "seqstate.layers",
    "GRU": "seqstate.layers",
    "RNN": "seqstate.layers",
    # the model contract
    "SequenceCore": "seqstate.core",
    # model and run directories
    "ModelConfig": "seqstate.model",
    "RecurrentSpec": "seqstate.model",
    "DenseSpec": "seqstate.model",
    "SequenceModel": "seqstate.model",
    "save_model": "seqstate.saved",
    "load_model": "seqstate.saved",
    # drivers
    "FitConfig": "seqstate.train",
    "History": "seqstate.train",
    "fit": "seqstate.train",
    "evaluate": "seqstate.train",
    "predict": "seqstate.prediction",
    "forecast": "seqstate.forecasting",
    "Streams": "seqstate.streams",
    "advance": "seqstate.streams",
    # data in
    "read_table": "seqstate.sources",
    "split_table": "seqstate.sources",
    # interop (optional extras, imported on first use)
    "import_keras": "seqstate.interop.keras",
    "export_onnx": "seqstate.interop.onnx",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from seqstate.core import SequenceCore  # noqa: F401
    from seqstate.forecasting import forecast  # noqa: F401
    from seqstate.interop.keras import import_keras  # noqa: F401
    from seqstate.interop.onnx import export_onnx  # noqa: F401
    from seqstate.lanes import Lanes, Window  # noqa: F401
    from seqstate.layers import GRU, LSTM, RNN  # noqa: F401
    from seqstate.model import DenseSpec, ModelConfig, RecurrentSpec, SequenceModel  # noqa: F401
    from seqstate.prediction import predict  # noqa: F401
    from seqstate.saved import load_model, save_model  # noqa: F401
    from seqstate.sources import read_table, split_table  # noqa: F401
    from seqstate.state import GRUState, LSTMState, RNNState, State  # noqa: F401
    from seqstate.streams import Streams, advance  # noqa: F401
    from seqstate.train import FitConfig, History, evaluate, fit  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'seqstate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return list(__all__)
