"""SequenceModel: any stack of recurrent layers and a Dense head, from a versioned JSON config.

The model follows the same protocol as the layers, so every driver (fit, predict, forecast,
Streams, the server, ONNX export) works with it — and with any user module that has these two
methods::

    y, state = model(x, state=None, reset=None, mask=None)   # x [B, T, F] -> y [B, T, O]
    state = model.initial_state(batch_size)

A stack is a list of :class:`RecurrentSpec` (each layer its own kind, size and variant), an
optional ``mask_value`` (Keras's ``Masking``: a step whose features all equal it is padding) and
a head of :class:`DenseSpec` layers. ``SequenceModel(input_size=3, output_size=1, cell="gru",
hidden_size=32, num_layers=2)`` is shorthand for two equal GRU layers and one linear output.

How a stack runs: consecutive layers that torch's fused kernel computes and that share kind,
size and activation form one multi-layer fused layer (:mod:`seqstate.layers`); any other variant
runs exactly step by step (:mod:`seqstate.stepwise`). :meth:`SequenceModel.describe` says which
layer runs where. The state is that of the fused layer when there is one group
(``LSTMState``/``GRUState``/``RNNState`` ``[L, B, H]``, as before stacks existed), otherwise
a ``StackState[...]`` with one ``[1, B, H_i]`` field per layer state (``l0_hidden``, ...).

The model maps *raw* inputs to *raw* outputs: optional normalisation statistics live in the
model as buffers (saved with the weights), so prediction, forecasting (which feeds outputs
back as inputs), streaming, serving and export never need a separate preprocessing step.
Training computes the loss in the normalised target space (:meth:`normalize_targets`) so the
loss scale and gradient clipping do not depend on the data's units.
"""

from __future__ import annotations

import dataclasses
import json
import math
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import torch
from torch import nn

from seqstate._validate import check_bool, check_int, check_number
from seqstate.activations import ACTIVATIONS, check_activation
from seqstate.activations import activation as activation_function
from seqstate.cells import CELLS, Kind, cell_kind
from seqstate.layers import GRU, LSTM, RNN
from seqstate.state import State, stack_state_type
from seqstate.stepwise import StepwiseLayer, is_fused

__all__ = ["CONFIG_VERSION", "DenseSpec", "ModelConfig", "RecurrentSpec", "SequenceModel"]

Cell = Kind
Task = Literal["regression", "classification"]

#: Version of the JSON written by :meth:`ModelConfig.to_dict`. Version 1 (no ``version`` key:
#: ``cell``, ``hidden_size``, ``num_layers``, ``nonlinearity``) is still read.
CONFIG_VERSION = 2

_FUSED_LAYERS: dict[str, type[LSTM] | type[GRU] | type[RNN]] = {
    "lstm": LSTM,
    "gru": GRU,
    "rnn": RNN,
}


def _check_size(value: Any, name: str) -> int:
    return check_int(value, name, 1)


def _from_mapping(cls: type, value: Any, argument: str) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{argument} must be a {cls.__name__} or a dict of its fields; "
            f"received {type(value).__name__}"
        )
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{argument} has unknown keys {unknown}; known keys: {sorted(known)}")
    return cls(**value)


@dataclasses.dataclass(frozen=True)
class RecurrentSpec:
    """One recurrent layer of a stack."""

    kind: Cell = "lstm"  # lstm | gru | rnn
    hidden_size: int = 64  # H: units
    activation: str = "tanh"  # candidate / output activation (the RNN's nonlinearity)
    recurrent_activation: str = "sigmoid"  # gate activation (lstm, gru); see seqstate.activations
    reset_after: bool = True  # gru: reset gate after the recurrent matmul (torch, Keras default)

    def __post_init__(self) -> None:
        cell_kind(self.kind, "RecurrentSpec.kind")
        _check_size(self.hidden_size, "RecurrentSpec.hidden_size")
        for name in ("activation", "recurrent_activation"):
            canonical = check_activation(getattr(self, name), f"RecurrentSpec.{name}")
            object.__setattr__(self, name, canonical)
        reset_after = check_bool(self.reset_after, "RecurrentSpec.reset_after")
        object.__setattr__(self, "reset_after", reset_after)

    @property
    def fused(self) -> bool:
        """torch's fused kernel computes this layer (else it runs step by step)."""
        return is_fused(self.kind, self.activation, self.recurrent_activation, self.reset_after)

    def describe(self) -> str:
        """``gru(16, recurrent_activation=hard_sigmoid, reset_after=False)``."""
        options = [str(self.hidden_size)]
        if self.activation != "tanh":
            options.append(f"activation={self.activation}")
        if self.kind != "rnn" and self.recurrent_activation != "sigmoid":
            options.append(f"recurrent_activation={self.recurrent_activation}")
        if self.kind == "gru" and not self.reset_after:
            options.append("reset_after=False")
        return f"{self.kind}({', '.join(options)})"


@dataclasses.dataclass(frozen=True)
class DenseSpec:
    """One Dense layer of the head, applied to every step: ``[B, T, in] -> [B, T, units]``."""

    units: int
    activation: str = "linear"  # see seqstate.activations

    def __post_init__(self) -> None:
        _check_size(self.units, "DenseSpec.units")
        object.__setattr__(
            self, "activation", check_activation(self.activation, "DenseSpec.activation")
        )


_SHORTHAND = ("cell", "hidden_size", "num_layers", "nonlinearity")
_LEGACY_KEYS = (
    "input_size",
    "output_size",
    "cell",
    "hidden_size",
    "num_layers",
    "dropout",
    "nonlinearity",
    "task",
)


@dataclasses.dataclass(frozen=True, init=False)
class ModelConfig:
    """Everything needed to rebuild a :class:`SequenceModel` (weights aside).

    Give the stack either as ``layers`` (a list of :class:`RecurrentSpec` or dicts) or with the
    shorthand ``cell``, ``hidden_size``, ``num_layers``, ``nonlinearity`` (equal layers). The
    head is ``head`` (a list of :class:`DenseSpec`, the last with ``output_size`` units) or, by
    default, one linear layer.
    """

    input_size: int  # F: features per step
    output_size: int  # O: regression outputs, or number of classes for classification
    layers: tuple[RecurrentSpec, ...]  # the recurrent stack, bottom first
    head: tuple[DenseSpec, ...]  # Dense layers after the stack; the last has output_size units
    dropout: float  # dropout between recurrent layers (training only)
    task: Task  # regression: raw outputs; classification: logits over classes
    mask_value: float | None  # a step whose features all equal this is padding (Keras Masking)

    def __init__(
        self,
        input_size: int,
        output_size: int,
        cell: Cell | None = None,
        hidden_size: int | None = None,
        num_layers: int | None = None,
        dropout: float = 0.0,
        nonlinearity: Literal["tanh", "relu"] | None = None,
        task: Task = "regression",
        *,
        layers: Sequence[RecurrentSpec | Mapping[str, Any]] | None = None,
        head: Sequence[DenseSpec | Mapping[str, Any]] | None = None,
        mask_value: float | None = None,
    ) -> None:
        _check_size(input_size, "ModelConfig.input_size")
        _check_size(output_size, "ModelConfig.output_size")
        shorthand: dict[str, object] = {
            "cell": cell,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "nonlinearity": nonlinearity,
        }
        if layers is None:
            stack = _shorthand_stack(cell, hidden_size, num_layers, nonlinearity)
        else:
            given = sorted(name for name, value in shorthand.items() if value is not None)
            if given:
                raise ValueError(
                    f"ModelConfig: give the stack either as layers= or with {given}, not both"
                )
            if isinstance(layers, str | bytes | Mapping) or not isinstance(layers, Sequence):
                raise TypeError(
                    "ModelConfig.layers must be a list of RecurrentSpec (or dicts); received "
                    f"{type(layers).__name__}"
                )
            stack = tuple(
                _from_mapping(RecurrentSpec, layer, f"ModelConfig.layers[{index}]")
                for index, layer in enumerate(layers)
            )
            if not stack:
                raise ValueError("ModelConfig.layers must hold at least one recurrent layer")
        if head is None:
            dense: tuple[DenseSpec, ...] = (DenseSpec(output_size),)
        else:
            if isinstance(head, str | bytes | Mapping) or not isinstance(head, Sequence):
                raise TypeError(
                    "ModelConfig.head must be a list of DenseSpec (or dicts); received "
                    f"{type(head).__name__}"
                )
            dense = tuple(
                _from_mapping(DenseSpec, layer, f"ModelConfig.head[{index}]")
                for index, layer in enumerate(head)
            )
            if not dense or dense[-1].units != output_size:
                last = dense[-1].units if dense else None
                raise ValueError(
                    f"ModelConfig.head must end with a layer of output_size={output_size} units; "
                    f"received {'no layers' if last is None else f'{last} units'}"
                )
        if task not in ("regression", "classification"):
            raise ValueError(
                f"ModelConfig.task must be 'regression' or 'classification'; received {task!r}"
            )
        if task == "classification" and output_size < 2:
            raise ValueError(
                "ModelConfig.output_size is the number of classes for classification and must be "
                f">= 2; received {output_size}"
            )
        if task == "classification" and dense[-1].activation != "linear":
            raise ValueError(
                "ModelConfig.head: a classification model outputs logits, so its last layer must "
                f"be linear; received activation={dense[-1].activation!r}"
            )
        dropout = check_number(dropout, "ModelConfig.dropout", minimum=0.0)
        if dropout >= 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1); received {dropout!r}")
        if mask_value is not None:
            mask_value = check_number(
                mask_value,
                "ModelConfig.mask_value",
                minimum=-math.inf,
                hint="It is the input value that marks padding (Keras's Masking), or None.",
            )
        values: dict[str, Any] = {
            "input_size": input_size,
            "output_size": output_size,
            "layers": stack,
            "head": dense,
            "dropout": float(dropout),
            "task": task,
            "mask_value": mask_value,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    # --- the shorthand, read back -------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        """Recurrent layers in the stack."""
        return len(self.layers)

    @property
    def cell(self) -> Cell | None:
        """The layers' kind when they all share one, else None."""
        kinds = {layer.kind for layer in self.layers}
        return self.layers[0].kind if len(kinds) == 1 else None

    @property
    def hidden_size(self) -> int | None:
        """The layers' size when they all share one, else None."""
        sizes = {layer.hidden_size for layer in self.layers}
        return self.layers[0].hidden_size if len(sizes) == 1 else None

    @property
    def nonlinearity(self) -> str:
        """The top layer's activation (the shorthand ``nonlinearity`` of an RNN stack)."""
        return self.layers[-1].activation

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes``: any constructor argument, including the shorthand
        (``hidden_size=128`` resizes every layer of a stack of equal layers)."""
        base: dict[str, Any] = {
            "input_size": self.input_size,
            "output_size": self.output_size,
            "dropout": self.dropout,
            "task": self.task,
            "mask_value": self.mask_value,
            # the default head (one linear layer) follows a new output_size
            "head": None if self.head == (DenseSpec(self.output_size),) else self.head,
        }
        if any(name in changes for name in _SHORTHAND):
            first = self.layers[0]
            if not first.fused or any(layer != first for layer in self.layers):
                raise ValueError(
                    f"ModelConfig.replace: {sorted(set(changes) & set(_SHORTHAND))} describe a "
                    "stack of equal layers; this stack's layers differ, so pass layers= instead"
                )
            base["cell"], base["hidden_size"] = first.kind, first.hidden_size
            base["num_layers"] = len(self.layers)
            base["nonlinearity"] = first.activation if first.kind == "rnn" else None
        elif "layers" not in changes:
            base["layers"] = self.layers
        return ModelConfig(**{**base, **changes})

    def groups(self) -> list[tuple[int, int]]:
        """``[(first, end), ...]``: the layers that run as one module (see the module doc)."""
        groups: list[tuple[int, int]] = []
        for index, layer in enumerate(self.layers):
            if groups and index > 0:
                previous = self.layers[index - 1]
                same = (layer.kind, layer.hidden_size, layer.activation) == (
                    previous.kind,
                    previous.hidden_size,
                    previous.activation,
                )
                if layer.fused and previous.fused and same:
                    groups[-1] = (groups[-1][0], index + 1)
                    continue
            groups.append((index, index + 1))
        return groups

    # --- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict. A stack the version-1 shorthand describes (equal fused layers, one
        linear output, no masking) is written as version 1, so older readers still load it."""
        shorthand = self._shorthand()
        if shorthand is not None:
            return shorthand
        return {
            "version": CONFIG_VERSION,
            "input_size": self.input_size,
            "output_size": self.output_size,
            "task": self.task,
            "dropout": self.dropout,
            "mask_value": self.mask_value,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
            "head": [dataclasses.asdict(layer) for layer in self.head],
        }

    def _shorthand(self) -> dict[str, Any] | None:
        first = self.layers[0]
        uniform = all(layer == first for layer in self.layers) and first.fused
        plain_head = self.head == (DenseSpec(self.output_size),)
        if not uniform or not plain_head or self.mask_value is not None:
            return None
        return {
            "input_size": self.input_size,
            "output_size": self.output_size,
            "cell": first.kind,
            "hidden_size": first.hidden_size,
            "num_layers": len(self.layers),
            "dropout": self.dropout,
            "nonlinearity": first.activation if first.kind == "rnn" else "tanh",
            "task": self.task,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if not isinstance(data, dict):
            raise TypeError(f"model config must be a JSON object; received {type(data).__name__}")
        version = data.get("version", 1)
        if version == 1:  # written before stacks: the shorthand fields
            known = set(_LEGACY_KEYS)
            body = dict(data)
            body.pop("version", None)
        elif version == CONFIG_VERSION:
            known = {f.name for f in dataclasses.fields(cls)}
            body = {key: value for key, value in data.items() if key != "version"}
        else:
            raise ValueError(
                f"model config version {version!r} is not readable by this seqstate (reads 1 "
                f"and {CONFIG_VERSION}); upgrade seqstate"
            )
        unknown = sorted(set(body) - known)
        if unknown:
            raise ValueError(
                f"unknown model config keys {unknown} for version {version}; known keys: "
                f"{sorted(known)}"
            )
        if version == 1:
            return cls(**body)
        missing = sorted({"input_size", "output_size", "layers"} - set(body))
        if missing:
            raise ValueError(f"model config version {version} lacks keys {missing}")
        return cls(
            body["input_size"],
            body["output_size"],
            dropout=body.get("dropout", 0.0),
            task=body.get("task", "regression"),
            layers=body["layers"],
            head=body.get("head"),
            mask_value=body.get("mask_value"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def _shorthand_stack(
    cell: Any, hidden_size: Any, num_layers: Any, nonlinearity: Any
) -> tuple[RecurrentSpec, ...]:
    kind = "lstm" if cell is None else cell
    if kind not in CELLS:
        raise ValueError(f"ModelConfig.cell must be 'lstm', 'gru' or 'rnn'; received {cell!r}")
    size = _check_size(64 if hidden_size is None else hidden_size, "ModelConfig.hidden_size")
    count = _check_size(1 if num_layers is None else num_layers, "ModelConfig.num_layers")
    if nonlinearity not in (None, "tanh", "relu"):
        raise ValueError(
            f"ModelConfig.nonlinearity must be 'tanh' or 'relu'; received {nonlinearity!r}"
        )
    activation = nonlinearity if kind == "rnn" and nonlinearity is not None else "tanh"
    # kind and activation were checked above; mypy cannot narrow a str to their Literal types
    return tuple(RecurrentSpec(kind, size, activation) for _ in range(count))  # type: ignore[arg-type]


class SequenceModel(nn.Module):
    """Recurrent stack + Dense head: ``x [B, T, F] -> y [B, T, O]``, state carried explicitly.

    Args:
        config: a :class:`ModelConfig`; or pass its arguments as keyword arguments.

    Outputs at masked steps are zero. For classification ``y`` holds logits over
    ``output_size`` classes.
    """

    recurrent: nn.Module  # one group's module, or an nn.ModuleList of groups
    head: nn.Module  # one nn.Linear, or an nn.ModuleList of them
    input_shift: torch.Tensor
    input_scale: torch.Tensor
    output_shift: torch.Tensor
    output_scale: torch.Tensor

    def __init__(self, config: ModelConfig | None = None, **fields: Any) -> None:
        super().__init__()
        if config is None:
            config = ModelConfig(**fields)
        elif fields:
            if not isinstance(config, ModelConfig):
                raise TypeError(f"config must be a ModelConfig; received {type(config).__name__}")
            config = config.replace(**fields)
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig; received {type(config).__name__}")
        self.config = config
        groups: list[nn.Module] = []
        width = config.input_size
        for first, end in config.groups():
            spec = config.layers[first]
            groups.append(_group_module(spec, width, end - first, config.dropout))
            width = spec.hidden_size
        linears: list[nn.Module] = []
        for dense in config.head:
            linears.append(nn.Linear(width, dense.units))
            width = dense.units
        # One group / one head layer are registered as the module itself, not a list of one, so
        # the parameter names (recurrent.weight_ih_l0, head.weight) stay those of the models and
        # run directories written before stacks existed.
        self.recurrent = groups[0] if len(groups) == 1 else nn.ModuleList(groups)
        self.head = linears[0] if len(linears) == 1 else nn.ModuleList(linears)
        self._head_activations = [activation_function(dense.activation) for dense in config.head]
        # (linear, activation) per head layer, read once: forward runs on every streamed step
        self._head_pairs = tuple(zip(linears, self._head_activations, strict=True))
        # What _trusted_step runs, with the forward each module must still have for it to be
        # exact (_steps_directly checks them: an override or a hook sends steps to forward).
        # (a plain attribute, not a second registration of the submodule: state_dict keys)
        object.__setattr__(self, "_step_recurrent", self.recurrent)
        self._step_groups: tuple[Any, ...] = tuple(groups)
        self._step_plan = (
            (self, SequenceModel.forward),
            *((group, type(group).forward) for group in groups),
            *((linear, nn.Linear.forward) for linear in linears),
        )
        if len(groups) == 1:
            self._state_type: type[State] = getattr(groups[0], "state_type")  # noqa: B009
        else:
            self._state_type = stack_state_type(
                tuple(
                    (f"l{index}_{name}", layer.hidden_size)
                    for index, layer in enumerate(config.layers)
                    for name in CELLS[layer.kind].state_fields
                )
            )
        # Normalisation (identity until set_normalization): raw x -> (x - shift) / scale,
        # head output -> output * scale + shift for regression.
        self.register_buffer("input_shift", torch.zeros(config.input_size))
        self.register_buffer("input_scale", torch.ones(config.input_size))
        self.register_buffer("output_shift", torch.zeros(config.output_size))
        self.register_buffer("output_scale", torch.ones(config.output_size))

    @property
    def groups(self) -> list[Any]:
        """The recurrent modules in order: fused multi-layer layers and step-by-step layers."""
        return (
            list(self.recurrent) if isinstance(self.recurrent, nn.ModuleList) else [self.recurrent]
        )

    @property
    def dense_layers(self) -> list[nn.Linear]:
        """The head's linear maps in order (each followed by its activation)."""
        if isinstance(self.head, nn.ModuleList):
            return [cast(nn.Linear, linear) for linear in self.head]
        return [cast(nn.Linear, self.head)]

    @property
    def state_type(self) -> type[State]:
        return self._state_type

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def output_size(self) -> int:
        return self.config.output_size

    @property
    def masks_input(self) -> bool:
        """The model derives padding from its input (``mask_value``), like Keras's Masking."""
        return self.config.mask_value is not None

    def describe(self) -> str:
        """One line per layer: what it computes and whether a fused kernel or the exact
        step-by-step path runs it."""
        config = self.config
        lines = [f"SequenceModel: {config.input_size} features -> {config.output_size} outputs"]
        if config.mask_value is not None:
            lines.append(
                f"  masking: a step whose features all equal {config.mask_value} is padding"
            )
        for (first, end), module in zip(config.groups(), self.groups, strict=True):
            for index in range(first, end):
                spec = config.layers[index]
                if isinstance(module, StepwiseLayer):
                    path = "step-by-step path (torch has no fused kernel for this variant)"
                else:
                    kernel = CELLS[spec.kind].torch_module.__name__
                    shared = f", one call with layers {first}-{end - 1}" if end - first > 1 else ""
                    path = f"fused kernel (torch.nn.{kernel}{shared})"
                lines.append(f"  layer {index}: {spec.describe()}: {path}")
        head = " -> ".join(f"Dense({d.units}, {d.activation})" for d in config.head)
        lines.append(f"  head: {head}")
        return "\n".join(lines)

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> State:
        """Zero state: ``[num_layers, B, H]`` per field for one group, else ``[1, B, H_i]``."""
        states = [
            group.initial_state(batch_size, device=device, dtype=dtype) for group in self.groups
        ]
        if len(states) == 1:
            return states[0]
        return self._state_type(*_split_layers(states))

    def group_states(self, state: State) -> list[State]:
        """The model's state cut into one state per group (``[layers_in_group, B, H]``)."""
        if len(self.groups) == 1:
            return [state]
        if type(state) is not self._state_type:
            raise TypeError(
                f"SequenceModel.group_states: state must be a {self._state_type.__name__}; "
                f"received {type(state).__name__}"
            )
        return _group_states(self, state)

    def join_states(self, states: list[State]) -> State:
        """Inverse of :meth:`group_states`."""
        return states[0] if len(states) == 1 else self._state_type(*_split_layers(states))

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        reset: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """``x`` [B, T, F] raw inputs -> ``y`` [B, T, O] raw outputs (or logits), new state."""
        valid_x = isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[-1] == self.input_size
        if valid_x and self.config.mask_value is not None:
            # Keras's Masking, on the raw input: padding is a step whose features all equal it.
            derived = (x != self.config.mask_value).any(dim=-1)  # (B, T)
            if mask is not None:
                if not isinstance(mask, torch.Tensor) or mask.shape != derived.shape:
                    shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask)
                    raise ValueError(
                        f"mask must have shape [B, T]={list(derived.shape)} like x; received "
                        f"{shape}"
                    )
                derived = derived & mask.to(derived.device).bool()
            mask = derived
        # (traced for export or compilation: the plain ops, no data-dependent check)
        skip_input, skip_output = (
            (False, False) if torch.compiler.is_compiling() else self._identity_normalisation()
        )
        buffers = _tensor_buffers(self)
        if valid_x and not (skip_input and _same_kind(x, buffers["input_shift"])):
            x = (x - buffers["input_shift"]) / buffers["input_scale"]
        recurrent = self._modules["recurrent"]  # (not nn.Module's slower __getattr__)
        if recurrent is not None and not isinstance(recurrent, nn.ModuleList):
            hidden, state = recurrent(x, state, reset, mask)
        else:
            hidden, state = self._run_stack(x, state, reset, mask)
        # The head runs on [B, T, H] even for one step: slicing to [B, H] and back costs more
        # than it saves (benchmarks/predict.py, measured).
        y = hidden
        for linear, act in self._head_pairs:
            y = linear(y) if act is _IDENTITY else act(linear(y))  # (B, T, units)
        if self.config.task == "regression" and not (
            skip_output and _same_kind(y, buffers["output_scale"])
        ):
            y = y * buffers["output_scale"] + buffers["output_shift"]
        if mask is not None:
            y = torch.where(mask.to(y.device).bool()[..., None], y, y.new_zeros(()))
        return y, state

    # --- one trusted step (the streaming hot path) ------------------------------------------

    def _steps_directly(self) -> bool:
        """Whether :meth:`_trusted_step` computes exactly what ``forward`` would for this model
        now: not when forward is overridden or hooked anywhere (hooks must see the call), not
        for a model that derives masks from its input, not while traced for export."""
        if self.config.mask_value is not None or torch.compiler.is_compiling():
            return False
        if _GLOBAL_HOOKS[0] or _GLOBAL_HOOKS[1]:
            return False
        if self._modules["recurrent"] is not self._step_recurrent:
            return False
        for module, forward in self._step_plan:
            if (
                type(module).forward is not forward
                or module._forward_hooks
                or module._forward_pre_hooks
                or "forward" in module.__dict__
            ):
                return False
        return True

    def _trusted_step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step ``x`` [B, F] -> ``y`` [B, O], new state: ``forward(x[:, None], state)``
        with ``[:, 0]`` taken, bitwise, without its checks and module calls.

        Trusted: the caller (:func:`seqstate.advance`, ``Streams.step``) has validated ``x``
        and ``state`` against the model, runs it in eval mode without autograd, and asked
        :meth:`_steps_directly` first. Each fused layer runs its cell kernels directly
        (:meth:`seqstate.layers.LSTM._step`), a step-by-step layer its cell.
        """
        skip_input, skip_output = self._identity_normalisation()
        buffers = _tensor_buffers(self)
        if not (skip_input and _same_kind(x, buffers["input_shift"])):
            x = (x - buffers["input_shift"]) / buffers["input_scale"]
        groups = self._step_groups
        if len(groups) == 1:
            hidden, state = groups[0]._step(x, state)
        else:
            hidden = x
            outputs = []
            for group, group_state in zip(groups, _group_states(self, state), strict=True):
                hidden, new_state = group._step(hidden, group_state)  # eval: no dropout
                outputs.append(new_state)
            state = self._state_type._unchecked(*_split_layers(outputs))
        y = hidden
        for linear, act in self._head_pairs:
            y = linear.forward(y) if act is _IDENTITY else act(linear.forward(y))  # (B, units)
        if self.config.task == "regression" and not (
            skip_output and _same_kind(y, buffers["output_scale"])
        ):
            y = y * buffers["output_scale"] + buffers["output_shift"]
        return y, state

    def _identity_normalisation(self) -> tuple[bool, bool]:
        """(input, output): whether the normalisation buffers hold the identity (shift 0, scale
        1), which ``forward`` then skips (``(x - 0) / 1 == x`` exactly).

        Cached against the buffers' identity and version counters, so any change (
        :meth:`set_normalization`, ``load_state_dict``, an in-place write, ``.to()``) is seen
        without comparing values on every call.
        """
        buffers = _tensor_buffers(self)
        tensors = (
            buffers["input_shift"],
            buffers["input_scale"],
            buffers["output_shift"],
            buffers["output_scale"],
        )
        try:
            versions = [t._version for t in tensors]
        except RuntimeError:  # inference-mode tensors have no version counter: compare values
            return _identity_pair(tensors)
        cached = _NORMALISATION_CACHE.get(self)
        if cached is not None:
            references, cached_versions, result = cached
            if (
                cached_versions == versions
                and references[0]() is tensors[0]
                and references[1]() is tensors[1]
                and references[2]() is tensors[2]
                and references[3]() is tensors[3]
            ):
                return result
        result = _identity_pair(tensors)
        # weak references: the cache never keeps a replaced buffer alive, nor matches a new
        # tensor that happens to reuse a freed one's address
        references = tuple(weakref.ref(t) for t in tensors)
        _NORMALISATION_CACHE[self] = (references, versions, result)
        return result

    def _run_stack(
        self,
        x: torch.Tensor,
        state: State | None,
        reset: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, State]:
        """The groups in order, each with its slice of a ``StackState``."""
        if state is None:
            if not isinstance(x, torch.Tensor) or x.dim() != 3:
                states: list[State | None] = [None] * len(self.groups)
            else:
                states = list(_group_states(self, self.initial_state(x.shape[0], dtype=x.dtype)))
        elif type(state) is not self._state_type:
            raise TypeError(
                f"SequenceModel: state must be a {self._state_type.__name__} (or None for zeros); "
                f"received {type(state).__name__}; use model.initial_state(batch_size)"
            )
        else:
            states = list(_group_states(self, state))
        outputs = []
        hidden = x
        for index, (group, group_state) in enumerate(zip(self.groups, states, strict=True)):
            if index > 0 and self.config.dropout > 0:
                hidden = nn.functional.dropout(hidden, self.config.dropout, self.training)
            hidden, new_state = group(hidden, group_state, reset, mask)
            outputs.append(new_state)
        return hidden, self._state_type._unchecked(*_split_layers(outputs))

    # --- normalisation ----------------------------------------------------------------------

    @torch.no_grad()
    def set_normalization(
        self,
        input_mean: Any,
        input_std: Any,
        output_mean: Any = None,
        output_std: Any = None,
    ) -> None:
        """Store normalisation statistics (per feature / per output) in the model's buffers.

        A zero or non-finite std is replaced by 1 (a constant feature carries no scale).
        """
        pairs = [("input", input_mean, input_std, self.input_size)]
        if output_mean is not None or output_std is not None:
            if self.config.task != "regression":
                raise ValueError("output normalisation applies to regression models only")
            pairs.append(("output", output_mean, output_std, self.output_size))
        for prefix, mean, std, size in pairs:
            mean_t = torch.as_tensor(mean, dtype=torch.float64).flatten()
            std_t = torch.as_tensor(std, dtype=torch.float64).flatten()
            if mean_t.numel() != size or std_t.numel() != size:
                raise ValueError(
                    f"{prefix}_mean and {prefix}_std must have {size} values; received "
                    f"{mean_t.numel()} and {std_t.numel()}"
                )
            if not torch.isfinite(mean_t).all():
                raise ValueError(f"{prefix}_mean must be finite; received {mean_t.tolist()}")
            std_t = torch.where(torch.isfinite(std_t) & (std_t > 0), std_t, 1.0)
            shift, scale = getattr(self, f"{prefix}_shift"), getattr(self, f"{prefix}_scale")
            shift.copy_(mean_t.to(shift.dtype))
            scale.copy_(std_t.to(scale.dtype))

    def normalize_targets(self, y: torch.Tensor) -> torch.Tensor:
        """Map raw regression targets/outputs into the space the loss is computed in."""
        if self.config.task != "regression":
            return y
        return (y - self.output_shift) / self.output_scale

    def extra_repr(self) -> str:
        extra = (
            f", mask_value={self.config.mask_value}" if self.config.mask_value is not None else ""
        )
        return f"task={self.config.task}{extra}"


_IDENTITY = ACTIVATIONS["linear"]

# torch's global forward hooks (nn.modules.module.register_module_forward_(pre_)hook): while any
# is registered, steps go through forward so that the hooks see them.
_GLOBAL_HOOKS = (
    nn.modules.module._global_forward_pre_hooks,
    nn.modules.module._global_forward_hooks,
)

# model -> (weak references to its four normalisation buffers, their versions, the result of
# SequenceModel._identity_normalisation). Outside the model, so it neither pickles (weak
# references cannot) nor travels with a deepcopy.
_NORMALISATION_CACHE: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()


def _identity_pair(tensors: tuple[Any, ...]) -> tuple[bool, bool]:
    """(input, output) normalisation is the identity, from the four buffers' values."""
    input_shift, input_scale, output_shift, output_scale = tensors
    return (
        bool((input_shift == 0).all() and (input_scale == 1).all()),
        bool((output_shift == 0).all() and (output_scale == 1).all()),
    )


def _tensor_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The module's buffer dict, read directly (faster than ``nn.Module.__getattr__`` on the hot
    path). torch types it ``Tensor | None``; the normalisation buffers are always registered."""
    return cast("dict[str, torch.Tensor]", model._buffers)


def _same_kind(x: torch.Tensor, buffer: torch.Tensor) -> bool:
    """Skipping an identity normalisation leaves ``x`` exactly as computing it would, dtype
    (type promotion) and device included."""
    return x.dtype == buffer.dtype and x.device == buffer.device


def _group_module(spec: RecurrentSpec, input_size: int, count: int, dropout: float) -> nn.Module:
    """One fused multi-layer module, or one step-by-step layer (``count`` is then 1)."""
    if not spec.fused:
        return StepwiseLayer(
            spec.kind,
            input_size,
            spec.hidden_size,
            activation=spec.activation,
            recurrent_activation=spec.recurrent_activation,
            reset_after=spec.reset_after,
        )
    extra: dict[str, Any] = {"nonlinearity": spec.activation} if spec.kind == "rnn" else {}
    return _FUSED_LAYERS[spec.kind](
        input_size, spec.hidden_size, count, dropout=dropout if count > 1 else 0.0, **extra
    )


def _group_states(model: SequenceModel, state: State) -> list[State]:
    """A ``StackState`` cut into each group's own state (``[layers_in_group, B, H]``)."""
    tensors = iter(state.tensors())
    states = []
    for (first, end), group in zip(model.config.groups(), model.groups, strict=True):
        fields = group.state_type.field_names()
        per_layer = [[next(tensors) for _ in fields] for _ in range(first, end)]
        if len(per_layer) == 1:  # a group of one layer: its [1, B, H] fields as they are
            states.append(group.state_type._unchecked(*per_layer[0]))
        else:
            parts = zip(*per_layer, strict=True)
            states.append(group.state_type._unchecked(*(torch.cat(part) for part in parts)))
    return states


def _split_layers(states: list[State]) -> list[torch.Tensor]:
    """Group states -> the ``StackState`` fields in order: each layer's tensors ``[1, B, H]``."""
    tensors: list[torch.Tensor] = []
    for state in states:
        for layer in range(state.num_layers):
            tensors += [t[layer : layer + 1] for t in state.tensors()]
    return tensors
