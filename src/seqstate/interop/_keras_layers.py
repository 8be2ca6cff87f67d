"""Each Keras layer config of a chain read into a small typed record (no torch here).

What is understood: ``InputLayer``, ``Masking``, ``SimpleRNN``, ``LSTM``, ``GRU``, ``Dense``,
``TimeDistributed(Dense)`` and ``Dropout``, with every activation in
:data:`seqstate.core.activations.ACTIVATIONS`. Keras 2's ``hard_sigmoid`` (the file's Keras version
says which) becomes ``hard_sigmoid_keras2``. Anything else is refused with the layer's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from seqstate.core.activations import ACTIVATIONS, ALIASES
from seqstate.core.cells import CELLS
from seqstate.interop._keras_file import KerasFile
from seqstate.interop._keras_graph import KerasImportError, layer_chain, layer_name

__all__ = ["Dense", "Dropout", "KerasImportError", "Masking", "Parsed", "Recurrent", "parse"]


_RECURRENT_CLASSES = {cell.keras_class: name for name, cell in CELLS.items()}


@dataclass(frozen=True)
class Recurrent:
    name: str
    kind: str  # lstm | gru | rnn
    units: int
    activation: str  # seqstate's activation name
    recurrent_activation: str  # "sigmoid" for SimpleRNN (unused)
    use_bias: bool
    reset_after: bool  # GRU only
    return_sequences: bool
    stateful: bool
    weights: list[np.ndarray]  # Keras order: kernel (F, G*H), recurrent kernel (H, G*H), bias


@dataclass(frozen=True)
class Dense:
    name: str
    units: int
    activation: str
    use_bias: bool
    weights: list[np.ndarray]  # kernel (in, units), bias


@dataclass(frozen=True)
class Dropout:
    name: str
    rate: float


@dataclass(frozen=True)
class Masking:
    name: str
    mask_value: float


Layer = Recurrent | Dense | Dropout | Masking


@dataclass(frozen=True)
class Parsed:
    """A Keras model as a chain of understood layers."""

    layers: list[Layer]
    input_size: int  # F
    batch_size: int | None  # Keras's fixed batch size (stateful models), if any
    keras_version: str
    notes: tuple[str, ...]  # what seqstate computes differently (e.g. float16 policies)


def parse(file: KerasFile) -> Parsed:
    """The file's layers, checked: a Masking on the input, recurrent layers, then Dense ones."""
    chain = layer_chain(file.config)
    layers: list[Layer] = []
    batch_size: int | None = None
    input_size: int | None = None
    notes: list[str] = []
    keras2 = _major(file.keras_version) <= 2
    for entry in chain:
        class_name, config = entry.get("class_name"), entry.get("config") or {}
        name = layer_name(entry)
        shape = config.get("batch_shape") or config.get("batch_input_shape")
        if shape and input_size is None:
            batch_size, input_size = shape[0], shape[-1]
        weights = file.weights.get(name, [])
        if class_name == "InputLayer":
            continue
        note = _policy_note(name, config.get("dtype"))
        if note:
            notes.append(note)
        if class_name == "TimeDistributed":
            inner = config.get("layer", {})
            if inner.get("class_name") != "Dense":
                raise KerasImportError(
                    f"layer {name!r}: TimeDistributed({inner.get('class_name')}) is not "
                    "supported; only TimeDistributed(Dense) is"
                )
            class_name, config = "Dense", {**inner.get("config", {}), "name": name}
        if class_name == "Masking":
            layers.append(Masking(name, float(config.get("mask_value", 0.0))))
        elif class_name == "Dropout":
            layers.append(Dropout(name, float(config.get("rate", 0.0))))
        elif class_name == "Dense":
            layers.append(_dense(name, config, weights, keras2))
        elif class_name in _RECURRENT_CLASSES:
            layers.append(_recurrent(name, str(class_name), config, weights, keras2))
        else:
            raise KerasImportError(_unsupported(name, class_name))
    _check_order(layers)
    first = next(layer for layer in layers if isinstance(layer, Recurrent))
    kernel_features = first.weights[0].shape[0]
    if input_size is not None and input_size != kernel_features:
        raise KerasImportError(
            f"the input shape says {input_size} features but layer {first.name!r}'s kernel has "
            f"{kernel_features} rows; the file is inconsistent"
        )
    return Parsed(layers, kernel_features, batch_size, file.keras_version, tuple(notes))


def _check_order(layers: list[Layer]) -> None:
    """[Masking] recurrent... Dense... (Dropout anywhere): what a SequenceModel is."""
    kinds = [type(layer) for layer in layers if not isinstance(layer, Dropout)]
    if Recurrent not in kinds:
        raise KerasImportError(
            "the model has no SimpleRNN/LSTM/GRU layer; seqstate imports recurrent models"
        )
    first = kinds.index(Recurrent)
    last = len(kinds) - 1 - kinds[::-1].index(Recurrent)
    meaningful = [layer for layer in layers if not isinstance(layer, Dropout)]
    for index, kind in enumerate(kinds):
        layer = meaningful[index]
        if kind is Masking and index != 0:
            raise KerasImportError(
                f"layer {layer.name!r}: Masking is supported on the model's input only (before "
                "any Dense or recurrent layer)"
            )
        if kind is Dense and index < last:
            raise KerasImportError(
                f"layer {layer.name!r}: a Dense layer before or between recurrent layers is not "
                "supported; a seqstate model is [Masking] -> recurrent layers -> Dense layers"
            )
        if isinstance(layer, Recurrent) and first <= index < last and not layer.return_sequences:
            raise KerasImportError(
                f"layer {layer.name!r} has return_sequences=False but another recurrent layer "
                "follows it; only the last recurrent layer may return the last step only"
            )


def _major(keras_version: str) -> int:
    try:
        return int(keras_version.split(".")[0])
    except ValueError:
        return 3


def _policy_note(name: str, dtype: Any) -> str | None:
    """A note for layers Keras computes in float16 / bfloat16; seqstate computes float32."""
    policy = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
    if isinstance(policy, str) and ("float16" in policy):
        return (
            f"layer {name!r} has dtype policy {policy!r}: Keras computes it in "
            f"{'bfloat16' if 'bfloat16' in policy else 'float16'}, seqstate in float32 with the "
            "same weights, so outputs differ from Keras's by that rounding"
        )
    return None


def _activation(value: Any, layer: str, option: str, keras2: bool) -> str:
    # Keras 3 may serialise an activation as {"module": "keras.activations", "config": "tanh"}.
    if isinstance(value, dict):
        value = value.get("config", value.get("class_name"))
    if value is None:
        value = "linear"
    if isinstance(value, str):
        value = ALIASES.get(value, value)
    if not isinstance(value, str) or value not in ACTIVATIONS or value == "hard_sigmoid_keras2":
        known = sorted(set(ACTIVATIONS) - {"hard_sigmoid_keras2"} | set(ALIASES))
        raise KerasImportError(
            f"layer {layer!r}: {option}={value!r} is not supported; supported activations: {known}"
        )
    if value == "hard_sigmoid" and keras2:
        return "hard_sigmoid_keras2"  # tf.keras 2: clip(0.2 x + 0.5, 0, 1)
    return value


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


def _dense(name: str, config: dict[str, Any], weights: list[np.ndarray], keras2: bool) -> Dense:
    if config.get("lora_rank"):
        raise KerasImportError(f"layer {name!r}: Dense with lora_rank is not supported")
    use_bias = bool(config.get("use_bias", True))
    expected = 2 if use_bias else 1
    if len(weights) != expected:
        raise KerasImportError(
            f"layer {name!r}: expected {expected} weight arrays (kernel"
            f"{', bias' if use_bias else ''}) in the file; found {len(weights)}"
        )
    activation = _activation(config.get("activation"), name, "activation", keras2)
    return Dense(name, int(config["units"]), activation, use_bias, weights)


def _reset_after(
    name: str, config: dict[str, Any], weights: list[np.ndarray], use_bias: bool
) -> bool:
    """A GRU's ``reset_after``: the config's, checked against the bias's shape ((2, 3H) when
    true, (3H,) when false). A config without the key predates the option (Keras < 2.1.3),
    whose GRU applied the reset gate before the matrix product: false, unless the bias says
    otherwise (a hand-edited config)."""
    rows = weights[2].ndim if use_bias else None  # 2: input and recurrent bias rows
    if "reset_after" not in config:
        return rows == 2
    reset_after = bool(config["reset_after"])
    if rows is not None and rows != (2 if reset_after else 1):
        raise KerasImportError(
            f"layer {name!r}: GRU(reset_after={reset_after}) has a bias of shape "
            f"{weights[2].shape}; expected {'(2, 3*units)' if reset_after else '(3*units,)'}. "
            "The file's config and weights disagree: re-save the model from Keras"
        )
    return reset_after


def _recurrent(
    name: str, class_name: str, config: dict[str, Any], weights: list[np.ndarray], keras2: bool
) -> Recurrent:
    for option in ("go_backwards", "return_state", "time_major", "unroll_backwards"):
        if config.get(option):
            raise KerasImportError(
                f"layer {name!r}: {class_name}({option}=True) is not supported; seqstate runs "
                "sequences forwards and returns the state separately"
            )
    kind = _RECURRENT_CLASSES[class_name]
    units = int(config["units"])
    activation = _activation(config.get("activation", "tanh"), name, "activation", keras2)
    recurrent_activation = "sigmoid"
    if kind != "rnn":
        recurrent_activation = _activation(
            config.get("recurrent_activation", "sigmoid"), name, "recurrent_activation", keras2
        )
    use_bias = bool(config.get("use_bias", True))
    expected = 3 if use_bias else 2
    if len(weights) != expected:
        raise KerasImportError(
            f"layer {name!r}: expected {expected} weight arrays (kernel, recurrent_kernel"
            f"{', bias' if use_bias else ''}) in the file; found {len(weights)}"
        )
    reset_after = _reset_after(name, config, weights, use_bias) if kind == "gru" else True
    gates = CELLS[kind].gates
    if weights[1].shape != (units, gates * units):
        raise KerasImportError(
            f"layer {name!r}: recurrent kernel has shape {weights[1].shape}; expected "
            f"{(units, gates * units)} for {class_name}({units})"
        )
    return Recurrent(
        name,
        kind,
        units,
        activation,
        recurrent_activation,
        use_bias,
        reset_after,
        bool(config.get("return_sequences", False)),
        bool(config.get("stateful", False)),
        weights,
    )
