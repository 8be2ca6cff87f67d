"""Export a SequenceModel to ONNX with the recurrent state as explicit inputs and outputs.

The graph computes one chunk of any length for any number of rows::

    inputs   x   [B, T, F] float32  raw inputs (the model's normalisation is in the graph)
             h0  [L, B, H] float32  hidden state before the chunk
             c0  [L, B, H] float32  cell state before the chunk (LSTM only)
    outputs  y   [B, T, O] float32  raw outputs (logits for classification)
             h1  [L, B, H]          hidden state after the chunk   -> feed back as h0
             c1  [L, B, H]          cell state after the chunk (LSTM only) -> feed back as c0

B and T are dynamic. Streaming is the same loop as in seqstate: feed ``h1``/``c1`` back as
``h0``/``c0``; a new sequence in row ``b`` starts by zeroing row ``b`` of the state
(``h0[:, b] = 0``) before the chunk — that is ``reset``. Masks and mid-chunk resets are not in
the graph: split a chunk at a reset, and do not feed padding steps.

The recurrent layers become ONNX ``LSTM``/``GRU``/``RNN`` operators (TorchScript exporter), which
onnxruntime and TensorRT run with their own fused kernels.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seqstate.model import SequenceModel

__all__ = ["export_onnx", "onnx_input_names", "onnx_output_names"]

#: Opset used when none is given: ONNX LSTM/GRU/RNN are stable since 14 and runtimes support 17.
DEFAULT_OPSET = 17


def onnx_input_names(model: SequenceModel) -> list[str]:
    """``["x", "h0"]`` or ``["x", "h0", "c0"]`` (LSTM)."""
    return ["x", "h0", "c0"] if model.config.cell == "lstm" else ["x", "h0"]


def onnx_output_names(model: SequenceModel) -> list[str]:
    """``["y", "h1"]`` or ``["y", "h1", "c1"]`` (LSTM)."""
    return ["y", "h1", "c1"] if model.config.cell == "lstm" else ["y", "h1"]


class _Graph(nn.Module):
    """The exported computation: raw x and explicit state in, raw y and new state out."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model
        self.is_lstm = model.config.cell == "lstm"
        self.regression = model.config.task == "regression"
        torch_module = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[model.config.cell]
        self.torch_forward = torch_module.forward

    def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        model = self.model
        x = (x - model.input_shift) / model.input_scale
        hx = (state[0], state[1]) if self.is_lstm else state[0]
        # The plain torch forward (no resets, no mask) is what maps onto ONNX's recurrent ops.
        hidden, new_hx = self.torch_forward(model.recurrent, x, hx)
        y = model.head(hidden)  # (B, T, O)
        if self.regression:
            y = y * model.output_scale + model.output_shift
        return (y, *new_hx) if self.is_lstm else (y, new_hx)


def _onnx_modules() -> Any:
    try:
        import onnx
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("ONNX export needs onnx: pip install 'seqstate[onnx]'") from None
    return onnx


@contextlib.contextmanager
def _exporter_warnings() -> Iterator[None]:
    # Known exporter warnings, each filtered narrowly (nothing else is hidden):
    # - the TorchScript exporter's deprecation notices (the dynamo exporter cannot yet give
    #   nn.LSTM/GRU/RNN a dynamic batch and time axis with state inputs as cleanly);
    # - TracerWarnings from nn.RNNBase.forward's Python-side checks on the example shapes;
    # - "batch_size other than 1 ... define the initial states (h0/c0) as inputs": we do.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"You are using the legacy TorchScript-based ONNX export",
            category=DeprecationWarning,
        )
        warnings.filterwarnings(
            "ignore",
            message=r"The feature will be removed",
            category=DeprecationWarning,
            module=r"torch\.onnx\.",
        )
        warnings.filterwarnings(
            "ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.modules\.rnn"
        )
        warnings.filterwarnings(
            "ignore",
            message=r"Exporting a model to ONNX with a batch_size other than 1",
            category=UserWarning,
        )
        yield


def export_onnx(
    model_or_run_dir: SequenceModel | str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
) -> Path:
    """Write ``model_or_run_dir`` (a SequenceModel or a run directory) as an ONNX file.

    Args:
        model_or_run_dir: a :class:`seqstate.SequenceModel`, or a run directory written by
            ``seqstate.save_model`` / ``fit`` / ``seqstate import-keras``.
        path: the ``.onnx`` file to write (its directory is created).
        opset: ONNX opset version (default 17).

    Returns:
        ``path``. The graph's inputs are ``onnx_input_names(model)``, its outputs
        ``onnx_output_names(model)``; see the module docstring for shapes.
    """
    onnx = _onnx_modules()
    if isinstance(model_or_run_dir, SequenceModel):
        model = model_or_run_dir
    elif isinstance(model_or_run_dir, str | os.PathLike):
        from seqstate.checkpoint import load_model

        model = load_model(model_or_run_dir)
    else:
        raise TypeError(
            "model_or_run_dir must be a seqstate.SequenceModel or a run directory path; "
            f"received {type(model_or_run_dir).__name__} (a KerasStack or custom module has no "
            "single recurrent operator to export)"
        )
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike; received {type(path).__name__}")
    if opset is not None and (not isinstance(opset, int) or not 14 <= opset <= 23):
        raise ValueError(f"opset must be an int in [14, 23] (or None for 17); received {opset!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)

    # Export a float32 CPU copy in eval mode; the caller's model is left untouched.
    graph = _Graph(_cpu_copy(model)).eval()
    config = model.config
    batch, steps = 2, 3
    x = torch.zeros(batch, steps, config.input_size)
    state = [torch.zeros(config.num_layers, batch, config.hidden_size)] * (
        2 if config.cell == "lstm" else 1
    )
    inputs, outputs = onnx_input_names(model), onnx_output_names(model)
    dynamic_axes: dict[str, dict[int, str]] = {"x": {0: "batch", 1: "time"}}
    dynamic_axes["y"] = {0: "batch", 1: "time"}
    for name in inputs[1:] + outputs[1:]:
        dynamic_axes[name] = {1: "batch"}
    tmp = target.with_name(target.name + ".tmp")
    with _exporter_warnings(), torch.no_grad():
        torch.onnx.export(
            graph,
            (x, *state),
            str(tmp),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic_axes,
            opset_version=opset or DEFAULT_OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(tmp))
    os.replace(tmp, target)
    return target


def _cpu_copy(model: SequenceModel) -> SequenceModel:
    copy = SequenceModel(model.config)
    copy.load_state_dict({k: v.detach().cpu().float() for k, v in model.state_dict().items()})
    return copy.eval()
