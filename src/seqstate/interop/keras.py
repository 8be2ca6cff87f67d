"""Import Keras recurrent models (``.keras`` and legacy ``.h5``) as :class:`SequenceModel`.

Only ``json``, ``zipfile`` and ``h5py`` read the file: neither TensorFlow nor Keras is needed::

    model = seqstate.interop.keras.load("model.keras")       # a seqstate.SequenceModel
    y, state = model(x, state=None, reset=None, mask=None)   # x [B, T, F] -> y [B, T, O]
    seqstate.import_keras("model.keras", "run_dir", features=[...], targets=[...])

What is understood (see ``_keras_layers``): ``Sequential`` and functional chains of an optional
``Masking`` on the input, ``SimpleRNN``/``LSTM``/``GRU`` layers of any variant (each its own
kind, size, activations, GRU ``reset_after`` true or false), then ``Dense`` /
``TimeDistributed(Dense)`` layers with any supported activation; ``Dropout`` anywhere; Keras 3.x
(3.0 onwards) and tf.keras 2. Layers torch's fused kernels compute run on them; other variants
run exactly step by step (``model.describe()`` says which).

Differences from Keras, all deliberate:

* **Per-step outputs.** The model always returns one output per step. A Keras model whose last
  recurrent layer has ``return_sequences=False`` outputs only the last step's output:
  ``last_step(y, mask)`` gives exactly that ``[B, O]`` (``describe(path).return_sequences``).
* **State is explicit.** A Keras ``stateful=True`` model keeps its state inside and needs a fixed
  batch size; here the caller carries the returned state (any batch size), and ``reset`` /
  ``state.reset_rows`` replaces ``reset_states()``.
* **Masked steps output zero.** Keras repeats the previous output at a masked step; seqstate
  outputs zero there (the state is left unchanged in both, so all real steps agree). The
  ``Masking`` layer becomes the model's ``mask_value``: padding is derived from the input as
  Keras does, and combined with any ``mask`` the caller passes.
* ``Dropout`` layers and ``dropout``/``recurrent_dropout`` options act in training only; the
  rate between recurrent layers becomes ``ModelConfig.dropout`` (the largest one given).
* Layers with a ``float16`` / ``bfloat16`` dtype policy compute in float32 here (same weights);
  ``describe(path).notes`` says so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seqstate.core.cells import CELLS
from seqstate.core.model import DenseSpec, ModelConfig, RecurrentSpec, SequenceModel
from seqstate.interop._keras_file import read_keras_file
from seqstate.interop._keras_graph import KerasImportError
from seqstate.interop._keras_layers import Dense, Dropout, Masking, Parsed, Recurrent, parse

__all__ = [
    "KerasImportError",
    "KerasModelInfo",
    "describe",
    "import_keras",
    "last_step",
    "load",
]


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
    notes: tuple[str, ...] = ()  # where seqstate computes differently (float16 policies)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "keras",
            "keras_version": self.keras_version,
            "return_sequences": self.return_sequences,
            "stateful": self.stateful,
            "batch_size": self.batch_size,
            "mask_value": self.mask_value,
            "layers": list(self.layers),
            "notes": list(self.notes),
        }


def describe(path: str | os.PathLike[str], *, keras_version: str | None = None) -> KerasModelInfo:
    """What the Keras model at ``path`` is: sizes, return_sequences, stateful, masking, layers."""
    return _info(parse(read_keras_file(path, keras_version=keras_version)))


def load(path: str | os.PathLike[str], *, keras_version: str | None = None) -> SequenceModel:
    """Load a Keras ``.keras`` / ``.h5`` recurrent model as a :class:`SequenceModel` (eval mode).

    It maps ``x`` [B, T, F] to per-step outputs ``y`` [B, T, O] equal to Keras's (within float32
    rounding) at every real step; for a ``return_sequences=False`` model take
    ``last_step(y, mask)``.

    Args:
        path: the ``.keras`` or ``.h5`` file.
        keras_version: the Keras version that wrote the file, for files that do not record it.

    Raises:
        KerasImportError: a layer or option that cannot be reproduced exactly (named).
        FileNotFoundError / ValueError: not a readable Keras file.
    """
    return _build(parse(read_keras_file(path, keras_version=keras_version)))


def import_keras(
    path: str | os.PathLike[str],
    out_run_dir: str | os.PathLike[str],
    *,
    features: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    keras_version: str | None = None,
) -> Path:
    """Convert a Keras model into a seqstate run directory (``model.json`` + safetensors).

    The run records the data columns the model reads and writes, so ``seqstate predict``,
    ``evaluate``, ``forecast`` and ``serve`` work on it like on a trained run: ``features``
    (F names, in the model's input order) and ``targets`` (O names); generic names
    ``x0, x1, ...`` / ``y0, y1, ...`` when not given. Targets are read at the same step as the
    inputs (shift 0), as a Keras model maps x[t] to y[t]. Nothing is written on error.
    """
    from seqstate.core.saved import save_model

    if not isinstance(out_run_dir, str | os.PathLike):
        raise TypeError(
            f"out_run_dir must be a path (a str or a pathlib.Path) to write the run to; "
            f"received {type(out_run_dir).__name__} {out_run_dir!r}"
        )
    if Path(out_run_dir).exists() and not Path(out_run_dir).is_dir():
        raise ValueError(
            f"out_run_dir {str(out_run_dir)!r} is a file; give a directory to write the run to"
        )
    parsed = parse(read_keras_file(path, keras_version=keras_version))
    info = _info(parsed)
    feature_names = _names(features, info.input_size, "x", "features")
    target_names = _names(targets, info.output_size, "y", "targets")
    model = _build(parsed)
    metadata = {
        "source": {"file": Path(path).name, **info.to_dict()},
        "data": {
            "source": None,
            "columns": {
                "features": feature_names,
                "targets": target_names,
                "id": None,
                "time": None,
                "shift": 0,
                "task": "regression",
            },
        },
    }
    return save_model(model, out_run_dir, metadata=metadata)


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


# --- Keras layers -> ModelConfig + weights ------------------------------------------------------


def _config(parsed: Parsed) -> ModelConfig:
    recurrent = [layer for layer in parsed.layers if isinstance(layer, Recurrent)]
    dense = [layer for layer in parsed.layers if isinstance(layer, Dense)]
    masking = [layer for layer in parsed.layers if isinstance(layer, Masking)]
    first, last = parsed.layers.index(recurrent[0]), parsed.layers.index(recurrent[-1])
    rates = [layer.rate for layer in parsed.layers[first:last] if isinstance(layer, Dropout)]
    output_size = dense[-1].units if dense else recurrent[-1].units
    head = [DenseSpec(layer.units, layer.activation) for layer in dense]
    if not head:  # the recurrent output is the model's output: an identity head keeps it
        head = [DenseSpec(output_size)]
    return ModelConfig(
        parsed.input_size,
        output_size,
        dropout=max(rates, default=0.0),
        layers=[
            RecurrentSpec(
                layer.kind,  # type: ignore[arg-type]  # parsed from the cell table's Keras classes
                layer.units,
                layer.activation,
                layer.recurrent_activation,
                layer.reset_after,
            )
            for layer in recurrent
        ],
        head=head,
        mask_value=masking[0].mask_value if masking else None,
    )


def _build(parsed: Parsed) -> SequenceModel:
    config = _config(parsed)
    model = SequenceModel(config)
    recurrent = [layer for layer in parsed.layers if isinstance(layer, Recurrent)]
    for (first, end), module in zip(config.groups(), model.groups, strict=True):
        for index in range(first, end):
            _load_recurrent(module, index - first, recurrent[index])
    dense = [layer for layer in parsed.layers if isinstance(layer, Dense)]
    if dense:
        for linear, spec in zip(model.dense_layers, dense, strict=True):
            _load_dense(linear, spec)
    else:
        with torch.no_grad():
            identity = model.dense_layers[0]
            identity.weight.copy_(torch.eye(config.output_size))
            identity.bias.zero_()
    return model.eval()


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _to_torch_gates(array: np.ndarray, kind: str) -> np.ndarray:
    """Keras gate blocks (last axis) reordered into torch's order (see seqstate.core.cells)."""
    order = CELLS[kind].keras_gate_order
    blocks = np.split(array, len(order), axis=-1)
    torch_blocks: list[np.ndarray] = [blocks[0]] * len(order)
    for keras_block, torch_block in enumerate(order):
        torch_blocks[torch_block] = blocks[keras_block]
    return np.concatenate(torch_blocks, axis=-1)


@torch.no_grad()
def _load_recurrent(module: nn.Module, index: int, spec: Recurrent) -> None:
    """Copy Keras weights into layer ``index`` of a fused or step-by-step seqstate layer."""
    kernel, recurrent_kernel = spec.weights[0], spec.weights[1]
    width = recurrent_kernel.shape[1]
    bias_ih, bias_hh = np.zeros(width, np.float32), np.zeros(width, np.float32)
    if spec.use_bias:
        bias = spec.weights[2]
        if bias.ndim == 2:  # GRU reset_after=True: rows are input bias and recurrent bias
            bias_ih, bias_hh = bias[0], bias[1]
        else:  # one bias, on the input side (GRU reset_after=False: Keras has no other)
            bias_ih = bias
    tensors = {
        "weight_ih": _to_torch_gates(kernel, spec.kind).T,  # (F, G*H) -> (G*H, F)
        "weight_hh": _to_torch_gates(recurrent_kernel, spec.kind).T,
        "bias_ih": _to_torch_gates(bias_ih, spec.kind),
        "bias_hh": _to_torch_gates(bias_hh, spec.kind),
    }
    for name, array in tensors.items():
        getattr(module, f"{name}_l{index}").copy_(_tensor(array))


@torch.no_grad()
def _load_dense(linear: nn.Linear, spec: Dense) -> None:
    linear.weight.copy_(_tensor(spec.weights[0].T))  # Keras kernel (in, out) -> torch (out, in)
    if spec.use_bias:
        linear.bias.copy_(_tensor(spec.weights[1]))
    else:
        linear.bias.zero_()


# --- descriptions -------------------------------------------------------------------------------


def _describe_layer(layer: Recurrent | Dense | Dropout | Masking) -> str:
    if isinstance(layer, Recurrent):
        options = [str(layer.units)]
        if layer.activation != "tanh":
            options.append(f"activation={layer.activation}")
        if layer.kind != "rnn" and layer.recurrent_activation != "sigmoid":
            options.append(f"recurrent_activation={layer.recurrent_activation}")
        if layer.kind == "gru" and not layer.reset_after:
            options.append("reset_after=False")
        options += [flag for flag in ("return_sequences", "stateful") if getattr(layer, flag)]
        return f"{layer.name}: {CELLS[layer.kind].keras_class}({', '.join(options)})"
    if isinstance(layer, Dense):
        return f"{layer.name}: Dense({layer.units}, activation={layer.activation})"
    if isinstance(layer, Dropout):
        return f"{layer.name}: Dropout({layer.rate})"
    return f"{layer.name}: Masking(mask_value={layer.mask_value})"


def _info(parsed: Parsed) -> KerasModelInfo:
    recurrent = [layer for layer in parsed.layers if isinstance(layer, Recurrent)]
    sized = [layer for layer in parsed.layers if isinstance(layer, Recurrent | Dense)]
    masking = [layer.mask_value for layer in parsed.layers if isinstance(layer, Masking)]
    return KerasModelInfo(
        input_size=parsed.input_size,
        output_size=sized[-1].units,
        return_sequences=recurrent[-1].return_sequences,
        stateful=any(layer.stateful for layer in recurrent),
        batch_size=parsed.batch_size,
        mask_value=masking[0] if masking else None,
        keras_version=parsed.keras_version,
        layers=tuple(_describe_layer(layer) for layer in parsed.layers),
        notes=parsed.notes,
    )


def _names(given: Sequence[str] | None, count: int, prefix: str, argument: str) -> list[str]:
    if given is None:
        return [f"{prefix}{index}" for index in range(count)]
    if isinstance(given, str) or not all(isinstance(name, str) and name for name in given):
        raise TypeError(f"{argument} must be a list of column names (str); received {given!r}")
    names = list(given)
    if len(names) != count:
        raise ValueError(
            f"{argument} must name the model's {count} "
            f"{'inputs' if prefix == 'x' else 'outputs'}; received {len(names)}: {names}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{argument} must not repeat a name; received {names}")
    return names
