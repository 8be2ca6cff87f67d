"""Import Keras recurrent models (``.keras`` and legacy ``.h5``) as seqstate modules.

Only ``json``, ``zipfile`` and ``h5py`` read the file: neither TensorFlow nor Keras is needed.
The result follows the seqstate protocol, so fit / predict / forecast / Streams / the server and
ONNX export all work with it::

    model = seqstate.interop.keras.load("model.keras")
    y, state = model(x, state=None, reset=None, mask=None)   # x [B, T, F] -> y [B, T, O]
    state = model.initial_state(batch_size)                  # any batch size, stateful or not

What is understood: ``Sequential`` and linear-chain functional models of ``InputLayer``,
``Masking``, ``SimpleRNN``, ``LSTM``, ``GRU`` (``reset_after`` true or false), ``Dense``,
``TimeDistributed(Dense)`` and ``Dropout``; ``stateful`` true or false; activations ``tanh``,
``relu``, ``linear`` (recurrent activations ``sigmoid`` and ``hard_sigmoid``); ``Dense`` also
``sigmoid`` and ``softmax``. Anything else is refused with an error naming the layer and option.

Differences from Keras, all deliberate:

* **Per-step outputs.** The module always returns one output per step. A Keras model whose last
  recurrent layer has ``return_sequences=False`` outputs only the last step's output:
  ``last_step(y, mask)`` gives exactly that ``[B, O]`` (``describe(path).return_sequences``
  tells which kind of model it was).
* **State is explicit.** A Keras ``stateful=True`` model keeps its state inside and needs a fixed
  batch size; here the caller carries the returned state into the next call (and ``reset`` /
  ``state.reset_rows`` replaces ``reset_states()``). Outputs of chunked calls with a carried
  state equal Keras's stateful ``predict`` chunk by chunk.
* **Masked steps output zero.** Keras repeats the previous output at a masked step; seqstate
  outputs zero there (the state is left unchanged in both, so all real steps agree).
  A ``Masking`` layer is applied by the loaded module itself: ``mask`` is computed from ``x``
  as Keras does (any feature != ``mask_value``) and combined with the caller's ``mask``.
* ``Dropout`` is the identity at inference; ``dropout``/``recurrent_dropout`` options of the
  recurrent layers (training only) are ignored.

When every recurrent layer has the same kind and size, the fused kernels compute it (default
activations), no ``Masking`` layer is present and one linear ``Dense`` head follows, the result
is a real :class:`seqstate.SequenceModel` (save it with ``seqstate.save_model``, serve it, train
it further). Otherwise it is a :class:`KerasStack` of single-layer seqstate layers.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from seqstate.interop._keras_cells import ACTIVATIONS, KerasRecurrent, activation_function
from seqstate.interop._keras_file import KerasFile, read_keras_file
from seqstate.layers import GRU, LSTM, RNN
from seqstate.model import SequenceModel
from seqstate.state import GRUState, LSTMState, RNNState, State

__all__ = [
    "KerasImportError",
    "KerasModelInfo",
    "KerasStack",
    "describe",
    "import_keras",
    "last_step",
    "load",
]


class KerasImportError(ValueError):
    """A Keras model uses a layer or an option that seqstate cannot reproduce exactly."""


@dataclass(frozen=True)
class KerasModelInfo:
    """What a saved Keras model is, as far as running it with seqstate is concerned."""

    input_size: int  # F: features per step
    output_size: int  # O: outputs per step of the last layer
    return_sequences: bool  # False: Keras outputs only the last step (use last_step(y, mask))
    stateful: bool  # any recurrent layer had stateful=True (carry the returned state)
    batch_size: int | None  # the fixed batch size of the Keras model, if it had one
    mask_value: float | None  # the Masking layer's mask_value, None without Masking
    keras_version: str  # the Keras version that wrote the file
    layers: tuple[str, ...]  # one line per Keras layer, e.g. "lstm: LSTM(16, return_sequences)"


# --- parsed layers ---------------------------------------------------------------------------

Cell = Literal["lstm", "gru", "rnn"]
_RECURRENT_CLASSES: dict[str, Cell] = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "rnn"}


@dataclass(frozen=True)
class _Recurrent:
    name: str
    cell: Cell
    units: int
    activation: str
    recurrent_activation: str  # unused by SimpleRNN
    use_bias: bool
    reset_after: bool  # GRU only
    return_sequences: bool
    stateful: bool
    weights: list[np.ndarray]

    @property
    def fused(self) -> bool:
        """torch's fused kernel computes exactly this layer."""
        if self.cell == "rnn":
            return self.activation in ("tanh", "relu")
        default = self.activation == "tanh" and self.recurrent_activation == "sigmoid"
        return default and (self.cell == "lstm" or self.reset_after)


@dataclass(frozen=True)
class _Dense:
    name: str
    units: int
    activation: str
    use_bias: bool
    weights: list[np.ndarray]


@dataclass(frozen=True)
class _Dropout:
    name: str
    rate: float


@dataclass(frozen=True)
class _Masking:
    name: str
    mask_value: float


_Layer = _Recurrent | _Dense | _Dropout | _Masking


@dataclass(frozen=True)
class _Plan:
    layers: list[_Layer]
    input_size: int
    batch_size: int | None
    keras_version: str


# --- config parsing --------------------------------------------------------------------------


def _activation_name(value: Any, layer: str, option: str) -> str:
    # Keras 3 may serialise an activation as {"module": "keras.activations", "config": "tanh"}.
    if isinstance(value, dict):
        value = value.get("config", value.get("class_name"))
    if value is None:
        value = "linear"
    if not isinstance(value, str) or value not in ACTIVATIONS:
        raise KerasImportError(
            f"layer {layer!r}: {option}={value!r} is not supported; supported activations: "
            f"{list(ACTIVATIONS)}"
        )
    return value


def _chain(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The model's layer configs in call order (Sequential, or a linear functional chain)."""
    class_name = config.get("class_name")
    body = config.get("config", {})
    layers = body.get("layers") if isinstance(body, dict) else None
    if not isinstance(layers, list):
        raise KerasImportError(
            f"the model's class {class_name!r} has no layer list; expected a Sequential or a "
            "functional keras.Model"
        )
    if class_name == "Sequential":
        return layers
    if class_name not in ("Functional", "Model"):
        raise KerasImportError(
            f"model class {class_name!r} is not supported: only Sequential and functional "
            "models (keras.Model(inputs, outputs)) can be read without running their code"
        )
    by_name = {layer["config"]["name"]: layer for layer in layers}
    inputs, outputs = _endpoints(body.get("input_layers")), _endpoints(body.get("output_layers"))
    if len(inputs) != 1 or len(outputs) != 1:
        raise KerasImportError(
            f"the functional model has {len(inputs)} inputs and {len(outputs)} outputs; only "
            "single-input single-output linear chains are supported (multi-input/output is not)"
        )
    order = [by_name[outputs[0]]]
    while order[-1]["config"]["name"] != inputs[0]:
        layer = order[-1]
        sources = _inbound(layer)
        if len(sources) != 1:
            raise KerasImportError(
                f"layer {layer['config']['name']!r} takes {len(sources)} inputs {sources} or is "
                "called more than once; only linear chains (each layer called once on the "
                "previous layer's output) are supported"
            )
        order.append(by_name[sources[0]])
    if len(order) != len(layers):
        unused = sorted(set(by_name) - {layer["config"]["name"] for layer in order})
        raise KerasImportError(
            f"the functional model is not a linear chain: layers {unused} are off the path "
            "from its input to its output"
        )
    return order[::-1]


def _endpoints(value: Any) -> list[str]:
    # ["input_layer", 0, 0] (Keras 3, single) or [["input_1", 0, 0], ...] (list)
    if not value:
        return []
    if isinstance(value[0], str):
        return [value[0]]
    return [entry[0] for entry in value]


def _inbound(layer: dict[str, Any]) -> list[str]:
    """Names of the layers feeding ``layer`` (over all of its call nodes)."""
    nodes = layer.get("inbound_nodes") or []
    names: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                names.append(value["config"]["keras_history"][0])
                return
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            # Keras 2: [[name, node_index, tensor_index, kwargs], ...]
            if len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int):
                names.append(value[0])
                return
            for item in value:
                walk(item)

    for node in nodes:
        walk(node)
    return names


def _shape_option(config: dict[str, Any]) -> tuple[int | None, int | None] | None:
    """(batch size, features) from batch_shape / batch_input_shape, if the layer has one."""
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    if not shape:
        return None
    return shape[0], shape[-1]


def _parse(file: KerasFile) -> _Plan:
    layers: list[_Layer] = []
    batch_size: int | None = None
    input_size: int | None = None
    seen_recurrent_last = False  # a recurrent layer with return_sequences=False was seen
    for entry in _chain(file.config):
        class_name, config = entry.get("class_name"), entry.get("config", {})
        name = config.get("name", class_name)
        shape = _shape_option(config)
        if shape is not None and input_size is None:
            batch_size, input_size = shape
        weights = file.weights.get(name, [])
        if class_name == "InputLayer":
            continue
        if class_name == "TimeDistributed":
            inner = config.get("layer", {})
            if inner.get("class_name") != "Dense":
                raise KerasImportError(
                    f"layer {name!r}: TimeDistributed({inner.get('class_name')}) is not "
                    "supported; only TimeDistributed(Dense) is"
                )
            class_name, config = "Dense", {**inner.get("config", {}), "name": name}
        if class_name == "Masking":
            if any(not isinstance(layer, _Dropout) for layer in layers):
                raise KerasImportError(
                    f"layer {name!r}: Masking is supported on the model's input only (before "
                    "any Dense or recurrent layer)"
                )
            layers.append(_Masking(name, float(config.get("mask_value", 0.0))))
        elif class_name == "Dropout":
            layers.append(_Dropout(name, float(config.get("rate", 0.0))))
        elif class_name == "Dense":
            layers.append(_parse_dense(name, config, weights))
        elif class_name in _RECURRENT_CLASSES:
            if seen_recurrent_last:
                raise KerasImportError(
                    f"layer {name!r} follows a recurrent layer with return_sequences=False; "
                    "only Dense/Dropout layers may follow it"
                )
            layer = _parse_recurrent(name, class_name, config, weights)
            seen_recurrent_last = not layer.return_sequences
            layers.append(layer)
        else:
            raise KerasImportError(_unsupported(name, class_name))
    recurrent = [layer for layer in layers if isinstance(layer, _Recurrent)]
    if not recurrent:
        raise KerasImportError(
            "the model has no SimpleRNN/LSTM/GRU layer; seqstate imports recurrent models"
        )
    first = next(layer for layer in layers if isinstance(layer, _Recurrent | _Dense))
    kernel_features = first.weights[0].shape[0]
    if input_size is not None and input_size != kernel_features:
        raise KerasImportError(
            f"the input shape says {input_size} features but layer {first.name!r}'s kernel has "
            f"{kernel_features} rows; the file is inconsistent"
        )
    return _Plan(layers, kernel_features, batch_size, file.keras_version)


def _unsupported(name: str, class_name: Any) -> str:
    hints = {
        "Bidirectional": "a bidirectional layer needs the whole sequence (not stateful)",
        "Sequential": "nested models are not supported; flatten them into one Sequential",
        "Functional": "nested models are not supported; flatten them into one model",
        "RNN": "generic keras.layers.RNN(cell) is not supported; use LSTM/GRU/SimpleRNN",
        "CuDNNLSTM": "use LSTM (same weights) and re-save",
        "CuDNNGRU": "use GRU(reset_after=True) and re-save",
    }
    hint = hints.get(str(class_name), "it is not one of the supported layers")
    return (
        f"layer {name!r} of class {class_name!r} is not supported ({hint}); supported: "
        "InputLayer, Masking, SimpleRNN, LSTM, GRU, Dense, TimeDistributed(Dense), Dropout"
    )


def _parse_dense(name: str, config: dict[str, Any], weights: list[np.ndarray]) -> _Dense:
    if config.get("lora_rank"):
        raise KerasImportError(f"layer {name!r}: Dense with lora_rank is not supported")
    use_bias = bool(config.get("use_bias", True))
    expected = 2 if use_bias else 1
    if len(weights) != expected:
        raise KerasImportError(
            f"layer {name!r}: expected {expected} weight arrays (kernel"
            f"{', bias' if use_bias else ''}) in the file; found {len(weights)}"
        )
    activation = _activation_name(config.get("activation"), name, "activation")
    return _Dense(name, int(config["units"]), activation, use_bias, weights)


def _parse_recurrent(
    name: str, class_name: str, config: dict[str, Any], weights: list[np.ndarray]
) -> _Recurrent:
    for option in ("go_backwards", "return_state", "time_major"):
        if config.get(option):
            raise KerasImportError(
                f"layer {name!r}: {class_name}({option}=True) is not supported; seqstate runs "
                "sequences forwards and returns the state separately"
            )
    cell = _RECURRENT_CLASSES[class_name]
    units = int(config["units"])
    activation = _activation_name(config.get("activation", "tanh"), name, "activation")
    if activation not in ("tanh", "relu", "linear"):
        raise KerasImportError(
            f"layer {name!r}: activation={activation!r} is not supported for {class_name}; "
            "supported: 'tanh', 'relu', 'linear'"
        )
    recurrent_activation = "sigmoid"
    if cell != "rnn":
        recurrent_activation = _activation_name(
            config.get("recurrent_activation", "sigmoid"), name, "recurrent_activation"
        )
        if recurrent_activation not in ("sigmoid", "hard_sigmoid"):
            raise KerasImportError(
                f"layer {name!r}: recurrent_activation={recurrent_activation!r} is not "
                "supported; supported: 'sigmoid', 'hard_sigmoid'"
            )
    use_bias = bool(config.get("use_bias", True))
    reset_after = bool(config.get("reset_after", True)) if cell == "gru" else True
    expected = 3 if use_bias else 2
    if len(weights) != expected:
        raise KerasImportError(
            f"layer {name!r}: expected {expected} weight arrays (kernel, recurrent_kernel"
            f"{', bias' if use_bias else ''}) in the file; found {len(weights)}"
        )
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    if weights[1].shape != (units, gates * units):
        raise KerasImportError(
            f"layer {name!r}: recurrent kernel has shape {weights[1].shape}; expected "
            f"{(units, gates * units)} for {class_name}({units})"
        )
    return _Recurrent(
        name,
        cell,
        units,
        activation,
        recurrent_activation,
        use_bias,
        reset_after,
        bool(config.get("return_sequences", False)),
        bool(config.get("stateful", False)),
        weights,
    )


def _describe_layer(layer: _Layer) -> str:
    if isinstance(layer, _Recurrent):
        options = [str(layer.units)]
        if layer.activation != "tanh":
            options.append(f"activation={layer.activation}")
        if layer.cell != "rnn" and layer.recurrent_activation != "sigmoid":
            options.append(f"recurrent_activation={layer.recurrent_activation}")
        if layer.cell == "gru" and not layer.reset_after:
            options.append("reset_after=False")
        options += [flag for flag in ("return_sequences", "stateful") if getattr(layer, flag)]
        kind = {"lstm": "LSTM", "gru": "GRU", "rnn": "SimpleRNN"}[layer.cell]
        return f"{layer.name}: {kind}({', '.join(options)})"
    if isinstance(layer, _Dense):
        return f"{layer.name}: Dense({layer.units}, activation={layer.activation})"
    if isinstance(layer, _Dropout):
        return f"{layer.name}: Dropout({layer.rate})"
    return f"{layer.name}: Masking(mask_value={layer.mask_value})"


def _info(plan: _Plan) -> KerasModelInfo:
    recurrent = [layer for layer in plan.layers if isinstance(layer, _Recurrent)]
    sized = [layer for layer in plan.layers if isinstance(layer, _Recurrent | _Dense)]
    masking = [layer.mask_value for layer in plan.layers if isinstance(layer, _Masking)]
    return KerasModelInfo(
        input_size=plan.input_size,
        output_size=sized[-1].units,
        return_sequences=recurrent[-1].return_sequences,
        stateful=any(layer.stateful for layer in recurrent),
        batch_size=plan.batch_size,
        mask_value=masking[0] if masking else None,
        keras_version=plan.keras_version,
        layers=tuple(_describe_layer(layer) for layer in plan.layers),
    )


# --- weight conversion -----------------------------------------------------------------------


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _gru_to_torch(array: np.ndarray) -> np.ndarray:
    # Keras gate blocks z, r, h along the last axis; torch wants r, z, n.
    z, r, h = np.split(array, 3, axis=-1)
    return np.concatenate([r, z, h], axis=-1)


@torch.no_grad()
def _load_fused(layer: LSTM | GRU | RNN, spec: _Recurrent, index: int = 0) -> None:
    """Copy Keras weights into layer ``index`` of a torch-layout LSTM/GRU/RNN."""
    kernel, recurrent_kernel = spec.weights[0], spec.weights[1]
    width = recurrent_kernel.shape[1]
    bias_ih, bias_hh = np.zeros(width, np.float32), np.zeros(width, np.float32)
    if spec.use_bias:
        bias = spec.weights[2]
        if bias.ndim == 2:  # GRU reset_after=True: rows are input bias and recurrent bias
            bias_ih, bias_hh = bias[0], bias[1]
        else:
            bias_ih = bias
    if spec.cell == "gru":
        kernel, recurrent_kernel = _gru_to_torch(kernel), _gru_to_torch(recurrent_kernel)
        bias_ih, bias_hh = _gru_to_torch(bias_ih), _gru_to_torch(bias_hh)
    # LSTM: Keras gates i, f, c, o are torch's i, f, g, o; only the matrices transpose.
    getattr(layer, f"weight_ih_l{index}").copy_(_tensor(kernel.T))
    getattr(layer, f"weight_hh_l{index}").copy_(_tensor(recurrent_kernel.T))
    getattr(layer, f"bias_ih_l{index}").copy_(_tensor(bias_ih))
    getattr(layer, f"bias_hh_l{index}").copy_(_tensor(bias_hh))


@torch.no_grad()
def _load_dense(linear: nn.Linear, spec: _Dense) -> None:
    linear.weight.copy_(_tensor(spec.weights[0].T))  # Keras kernel (in, out) -> torch (out, in)
    if spec.use_bias:
        linear.bias.copy_(_tensor(spec.weights[1]))
    else:
        linear.bias.zero_()


def _build_recurrent(spec: _Recurrent, input_size: int, keras_version: str) -> nn.Module:
    if spec.fused:
        if spec.cell == "lstm":
            layer: nn.Module = LSTM(input_size, spec.units)
        elif spec.cell == "gru":
            layer = GRU(input_size, spec.units)
        else:
            layer = RNN(input_size, spec.units, nonlinearity=spec.activation)  # type: ignore[arg-type]
        _load_fused(layer, spec)  # type: ignore[arg-type]
        return layer
    looped = KerasRecurrent(
        spec.cell,
        input_size,
        spec.units,
        activation=spec.activation,
        recurrent_activation=spec.recurrent_activation,
        reset_after=spec.reset_after,
        keras_version=keras_version,
    )
    with torch.no_grad():
        looped.kernel.copy_(_tensor(spec.weights[0]))
        looped.recurrent_kernel.copy_(_tensor(spec.weights[1]))
        if spec.use_bias:
            looped.bias.copy_(_tensor(spec.weights[2]).view_as(looped.bias))
    return looped


# --- SequenceModel when it fits --------------------------------------------------------------


def _sequence_model_obstacle(plan: _Plan, *, allow_masking: bool) -> str | None:
    """Why ``plan`` is not a SequenceModel (recurrent stack + one linear head), or None."""
    kinds = [type(layer) for layer in plan.layers if not isinstance(layer, _Dropout)]
    if not allow_masking and _Masking in kinds:
        return "it has a Masking layer (the general module applies mask_value itself)"
    kinds = [kind for kind in kinds if kind is not _Masking]
    recurrent = [layer for layer in plan.layers if isinstance(layer, _Recurrent)]
    if kinds != [_Recurrent] * len(recurrent) + [_Dense]:
        return "it is not a stack of recurrent layers followed by exactly one Dense layer"
    first = recurrent[0]
    for layer in recurrent:
        if (layer.cell, layer.units, layer.activation) != (
            first.cell,
            first.units,
            first.activation,
        ):
            return "its recurrent layers differ in kind, size or activation"
        if not layer.fused:
            return f"layer {layer.name!r} needs a step-by-step cell ({_describe_layer(layer)})"
    head = plan.layers[-1] if isinstance(plan.layers[-1], _Dense) else None
    if head is None or head.activation != "linear":
        return "its Dense head has a non-linear activation"
    start, end = plan.layers.index(first), plan.layers.index(recurrent[-1])
    rates = {layer.rate for layer in plan.layers[start:end] if isinstance(layer, _Dropout)}
    if len(rates) > 1 or (rates and len(recurrent) == 1):
        return "its Dropout between recurrent layers is not one uniform rate"
    return None


def _build_sequence_model(plan: _Plan) -> SequenceModel:
    recurrent = [layer for layer in plan.layers if isinstance(layer, _Recurrent)]
    head = plan.layers[-1]
    if not isinstance(head, _Dense):  # checked by _sequence_model_obstacle
        raise RuntimeError(f"internal error: expected a Dense head, found {type(head).__name__}")
    first = recurrent[0]
    start, end = plan.layers.index(first), plan.layers.index(recurrent[-1])
    rates = [layer.rate for layer in plan.layers[start:end] if isinstance(layer, _Dropout)]
    model = SequenceModel(
        input_size=plan.input_size,
        output_size=head.units,
        cell=first.cell,
        hidden_size=first.units,
        num_layers=len(recurrent),
        dropout=rates[0] if rates and len(recurrent) > 1 else 0.0,
        nonlinearity=first.activation if first.cell == "rnn" else "tanh",  # type: ignore[arg-type]
    )
    for index, spec in enumerate(recurrent):
        _load_fused(model.recurrent, spec, index)
    _load_dense(model.head, head)
    return model.eval()


# --- the general stack -----------------------------------------------------------------------

_STATE_TYPES: dict[tuple[str, ...], type[State]] = {}


def _state_type(fields: tuple[str, ...]) -> type[State]:
    """A State subclass with one ``(1, B, H_i)`` field per layer's hidden/cell state.

    Built once per field list and registered by name, so ``State.from_bytes`` restores it in
    any process that has loaded a model with the same layer structure.
    """
    if fields not in _STATE_TYPES:
        name = f"KerasStackState[{','.join(fields)}]"
        cls = dataclasses.make_dataclass(
            name,
            [(field, torch.Tensor) for field in fields],
            bases=(State,),
            frozen=True,
            namespace={"__doc__": "State of a KerasStack: one (1, B, H) field per layer state."},
        )
        cls.__module__ = __name__
        _STATE_TYPES[fields] = cls
    return _STATE_TYPES[fields]


class _DenseLayer(nn.Module):
    """Keras Dense (applied to every step): ``[B, T, in] -> [B, T, units]``."""

    def __init__(self, in_features: int, units: int, activation: str, keras_version: str):
        super().__init__()
        self.linear = nn.Linear(in_features, units)
        self.activation = activation
        self._act = activation_function(activation, keras_version)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._act(self.linear(x))

    def extra_repr(self) -> str:
        return f"activation={self.activation}"


_SINGLE_STATES: dict[type[State], tuple[str, ...]] = {
    LSTMState: ("hidden", "cell"),
    GRUState: ("hidden",),
    RNNState: ("hidden",),
}


class KerasStack(nn.Module):
    """A chain of imported Keras layers on the seqstate protocol (the general import result).

    ``forward(x [B, T, F], state=None, reset=None, mask=None) -> (y [B, T, O], state)``; the
    state is a ``KerasStackState[...]`` with one ``(1, B, H_i)`` field per recurrent layer's
    hidden (and cell) state, e.g. ``lstm0_hidden, lstm0_cell, gru1_hidden``.
    """

    def __init__(self, plan: _Plan) -> None:
        super().__init__()
        self.info = _info(plan)
        self.input_size = plan.input_size
        self.output_size = self.info.output_size
        self.mask_value = self.info.mask_value
        self.blocks = nn.ModuleList()
        self._recurrent_fields: list[tuple[int, int]] = []  # per block: (first field, count)
        fields: list[str] = []
        width = plan.input_size
        for layer in plan.layers:
            if isinstance(layer, _Recurrent):
                module = _build_recurrent(layer, width, plan.keras_version)
                names = _SINGLE_STATES[module.state_type]  # type: ignore[index]
                index = sum(isinstance(b, LSTM | GRU | RNN | KerasRecurrent) for b in self.blocks)
                self._recurrent_fields.append((len(fields), len(names)))
                fields += [f"{layer.cell}{index}_{name}" for name in names]
                width = layer.units
            elif isinstance(layer, _Dense):
                module = _DenseLayer(width, layer.units, layer.activation, plan.keras_version)
                _load_dense(module.linear, layer)
                width = layer.units
            elif isinstance(layer, _Dropout):
                module = nn.Dropout(layer.rate)
            else:
                continue  # Masking: applied in forward from mask_value
            self.blocks.append(module)
        self.state_type = _state_type(tuple(fields))
        self.eval()

    def initial_state(self, batch_size: int) -> State:
        """Zero state: every field ``[1, batch_size, H_i]``."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 0:
            raise ValueError(f"batch_size must be an int >= 0; received {batch_size!r}")
        tensors = [t for block in self._recurrent_blocks() for t in block.initial_state(batch_size)]
        return self.state_type(*tensors)

    def _recurrent_blocks(self) -> list[nn.Module]:
        return [b for b in self.blocks if isinstance(b, LSTM | GRU | RNN | KerasRecurrent)]

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        reset: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """``x`` [B, T, F] -> ``y`` [B, T, O] (zeros at masked steps) and the new state."""
        x, state, reset, mask = self._check(x, state, reset, mask)
        if self.mask_value is not None:
            # Keras's Masking: a step is padding when every feature equals mask_value.
            derived = (x != self.mask_value).any(dim=-1)
            mask = derived if mask is None else mask & derived
        tensors = state.tensors()
        new_tensors: list[torch.Tensor] = []
        recurrent = iter(self._recurrent_fields)
        y = x
        for block in self.blocks:
            if isinstance(block, LSTM | GRU | RNN | KerasRecurrent):
                first, count = next(recurrent)
                block_state = block.state_type(*tensors[first : first + count])
                y, block_state = block(y, block_state, reset, mask)
                new_tensors += block_state.tensors()
            else:
                y = block(y)
        if mask is not None:
            y = torch.where(mask[..., None], y, y.new_zeros(()))
        return y, self.state_type(*new_tensors)

    def _check(self, x, state, reset, mask):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor [B, T, F]; received {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            hint = " (add a batch dimension: x[None])" if x.dim() == 2 else ""
            raise ValueError(
                f"x must have shape [B, T, F]=[batch, time, {self.input_size}]; received "
                f"{tuple(x.shape)}{hint}"
            )
        weight = next(self.parameters())
        if x.dtype != weight.dtype or x.device != weight.device:
            raise TypeError(
                f"x is {x.dtype} on {x.device} but the parameters are {weight.dtype} on "
                f"{weight.device}; convert one to the other (e.g. x.to(torch.float32))"
            )
        B, T, _ = x.shape
        if state is None:
            state = self.initial_state(B)
        elif type(state) is not self.state_type:
            raise TypeError(
                f"state must be a {self.state_type.__name__} (or None for zeros); received "
                f"{type(state).__name__}"
            )
        elif state.batch_size != B:
            raise ValueError(
                f"state has batch {state.batch_size} but x has {B} rows; use "
                f"model.initial_state({B}) or state.select(rows)"
            )
        flags = []
        for name, value in (("reset", reset), ("mask", mask)):
            if value is None:
                flags.append(None)
                continue
            if not isinstance(value, torch.Tensor) or value.shape != (B, T):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise ValueError(
                    f"{name} must be a bool tensor of shape [B, T]=[{B}, {T}]; received {shape}"
                )
            flags.append(value.to(device=x.device, dtype=torch.bool))
        return x, state, flags[0], flags[1]


# --- public functions ------------------------------------------------------------------------


def describe(path: str | os.PathLike[str]) -> KerasModelInfo:
    """What the Keras model at ``path`` is: sizes, return_sequences, stateful, masking, layers."""
    return _info(_parse(read_keras_file(path)))


def load(path: str | os.PathLike[str]) -> SequenceModel | KerasStack:
    """Load a Keras ``.keras`` / ``.h5`` recurrent model as a seqstate module (eval mode).

    Returns a :class:`seqstate.SequenceModel` when the model is a uniform recurrent stack with
    one linear Dense head and no Masking layer, else a :class:`KerasStack`. Either maps
    ``x`` [B, T, F] to per-step outputs ``y`` [B, T, O] equal to Keras's (within float32
    rounding) at every real step; for a ``return_sequences=False`` Keras model take
    ``last_step(y, mask)``.

    Raises:
        KerasImportError: a layer or option that cannot be reproduced exactly (named).
        FileNotFoundError / ValueError: not a readable Keras file.
    """
    plan = _parse(read_keras_file(path))
    if _sequence_model_obstacle(plan, allow_masking=False) is None:
        return _build_sequence_model(plan)
    return KerasStack(plan)


def last_step(y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Each row's output at its last real step: ``y`` [B, T, O] -> [B, O].

    This is what a Keras recurrent model with ``return_sequences=False`` outputs (with masking,
    Keras carries the last real step's output through trailing padding). Rows without any real
    step get zeros.
    """
    if not isinstance(y, torch.Tensor) or y.dim() != 3:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"y must be a tensor [B, T, O]; received {shape}")
    B, T, _ = y.shape
    if mask is None:
        return y[:, -1] if T else y.new_zeros(B, y.shape[2])
    if not isinstance(mask, torch.Tensor) or mask.shape != (B, T):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor [B, T]=[{B}, {T}]; received {shape}")
    mask = mask.to(device=y.device, dtype=torch.bool)
    positions = torch.arange(T, device=y.device).expand(B, T)
    last = torch.where(mask, positions, -1).amax(dim=1) if T else torch.full((B,), -1)
    picked = y[torch.arange(B, device=y.device), last.clamp(min=0)]
    return torch.where((last >= 0)[:, None], picked, picked.new_zeros(()))


def import_keras(path: str | os.PathLike[str], out_run_dir: str | os.PathLike[str]) -> Path:
    """Convert a Keras model into a seqstate run directory (``model.json`` + safetensors).

    Only models that are a :class:`seqstate.SequenceModel` can be saved as a run (a uniform
    recurrent stack with one linear Dense head). A ``Masking`` layer is allowed: seqstate marks
    padding explicitly (``mask``/``Window.valid``), and the run's metadata records the Keras
    ``mask_value``. Anything else is refused with the reason; load such a model in Python with
    :func:`load` instead. Nothing is written when the conversion is refused.
    """
    from seqstate.checkpoint import save_model

    file = read_keras_file(path)
    plan = _parse(file)
    obstacle = _sequence_model_obstacle(plan, allow_masking=True)
    if obstacle is not None:
        raise KerasImportError(
            f"{Path(path).name} cannot be saved as a seqstate run because {obstacle}. A run "
            "directory holds a SequenceModel (a uniform LSTM/GRU/RNN stack and one linear "
            "Dense head); load this model in Python with seqstate.interop.keras.load(path), "
            "which reproduces it exactly"
        )
    info = _info(plan)
    metadata = {
        "source": {
            "format": "keras",
            "file": Path(path).name,
            "keras_version": info.keras_version,
            "return_sequences": info.return_sequences,
            "stateful": info.stateful,
            "mask_value": info.mask_value,
            "layers": list(info.layers),
        }
    }
    return save_model(_build_sequence_model(plan), out_run_dir, metadata=metadata)
