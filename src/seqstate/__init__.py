"""seqstate: stateful recurrent sequence models with the hidden state handled correctly.

The public API is listed in ``__all__``. Names are resolved lazily (PEP 562) so that
``import seqstate`` stays light: torch-heavy and optional modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from seqstate import _aliases

__version__ = "0.1.0"

_aliases.install()  # the flat layout's module paths resolve, with a warning, for one release

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # data layout
    "Lanes": "seqstate.lanes.lanes",
    "Window": "seqstate.lanes.lanes",
    # state
    "State": "seqstate.core.state",
    "LSTMState": "seqstate.core.state",
    "GRUState": "seqstate.core.state",
    "RNNState": "seqstate.core.state",
    # layers
    "LSTM": "seqstate.core.layers",
    "GRU": "seqstate.core.layers",
    "RNN": "seqstate.core.layers",
    # the model contract
    "SequenceCore": "seqstate.core.protocol",
    # model and run directories
    "ModelConfig": "seqstate.core.model",
    "RecurrentSpec": "seqstate.core.model",
    "DenseSpec": "seqstate.core.model",
    "SequenceModel": "seqstate.core.model",
    "DistributionHead": "seqstate.core.distributions",
    "save_model": "seqstate.core.saved",
    "load_model": "seqstate.core.saved",
    # drivers
    "FitConfig": "seqstate.train",
    "History": "seqstate.train",
    "fit": "seqstate.train",
    "evaluate": "seqstate.train",
    "predict": "seqstate.inference.prediction",
    "forecast": "seqstate.inference.forecasting",
    "Forecast": "seqstate.inference.sampling",
    "Streams": "seqstate.inference.streams",
    "advance": "seqstate.inference.streams",
    # data in
    "read_table": "seqstate.recipe.sources",
    "split_table": "seqstate.recipe.sources",
    # interop (optional extras, imported on first use)
    "import_keras": "seqstate.interop.keras",
    "export_onnx": "seqstate.interop.onnx",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from seqstate.core.distributions import DistributionHead  # noqa: F401
    from seqstate.core.layers import GRU, LSTM, RNN  # noqa: F401
    from seqstate.core.model import DenseSpec, ModelConfig, RecurrentSpec, SequenceModel  # noqa: F401
    from seqstate.core.protocol import SequenceCore  # noqa: F401
    from seqstate.core.saved import load_model, save_model  # noqa: F401
    from seqstate.core.state import GRUState, LSTMState, RNNState, State  # noqa: F401
    from seqstate.inference.forecasting import forecast  # noqa: F401
    from seqstate.inference.prediction import predict  # noqa: F401
    from seqstate.inference.sampling import Forecast  # noqa: F401
    from seqstate.inference.streams import Streams, advance  # noqa: F401
    from seqstate.interop.keras import import_keras  # noqa: F401
    from seqstate.interop.onnx import export_onnx  # noqa: F401
    from seqstate.lanes.lanes import Lanes, Window  # noqa: F401
    from seqstate.recipe.sources import read_table, split_table  # noqa: F401
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
