"""ModelConfig: the typed, versioned description of a recurrent stack and its Dense head.

:class:`RecurrentSpec` (one recurrent layer), :class:`DenseSpec` (one Dense layer of the head)
and :class:`ModelConfig` (input/output sizes, the stack, the head, dropout, task, mask value)
rebuild a :class:`seqstate.core.model.SequenceModel` (weights aside). With ``distribution`` (a
:class:`seqstate.core.distributions.DistributionHead`, or its name) the head emits ``k * O`` raw
parameters of a distribution per step instead of ``O`` values (None: a point model, whose JSON
is unchanged). The JSON written by
:meth:`ModelConfig.to_dict` is versioned (:data:`CONFIG_VERSION`); version 1 (no ``version``
key: the shorthand ``cell``, ``hidden_size``, ``num_layers``, ``nonlinearity``) is still read.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from seqstate._validate import check_bool, check_int, check_number
from seqstate.core.kinds import KINDS, Kind

if TYPE_CHECKING:
    from seqstate.core.distributions import DistributionHead

__all__ = ["CONFIG_VERSION", "MODEL_SETTINGS", "DenseSpec", "ModelConfig", "RecurrentSpec"]

Cell = Kind
Task = Literal["regression", "classification"]

# The shorthand's defaults, written once: the dataclasses below, run.toml's [model] section
# (seqstate.recipe.training.SECTIONS) and the command line's model flags read them. This module
# loads without torch (the checks that need it import it when they run) so that the command line
# can show these defaults without loading torch.
DEFAULT_CELL: Kind = "lstm"
DEFAULT_HIDDEN_SIZE = 64
DEFAULT_NUM_LAYERS = 1
DEFAULT_DROPOUT = 0.0

#: Each shorthand setting: its default and what it means (run.toml [model], the CLI's help).
MODEL_SETTINGS: dict[str, tuple[Any, str]] = {
    "cell": (DEFAULT_CELL, " | ".join(KINDS)),
    "hidden_size": (DEFAULT_HIDDEN_SIZE, "units per recurrent layer"),
    "num_layers": (DEFAULT_NUM_LAYERS, "stacked recurrent layers"),
    "dropout": (DEFAULT_DROPOUT, "dropout between recurrent layers"),
    "distribution": (
        "none",
        "none | auto | normal | studentt | negbin | quantile: a distribution head, whose median "
        "is the point forecast (auto: negbin when the model-space targets are non-negative "
        "integers, studentt otherwise)",
    ),
    "quantiles": ("0.1,0.5,0.9", "the levels a quantile head predicts"),
}

#: Version of the JSON written by :meth:`ModelConfig.to_dict`. Version 1 (no ``version`` key:
#: ``cell``, ``hidden_size``, ``num_layers``, ``nonlinearity``) is still read.
CONFIG_VERSION = 2


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

    kind: Cell = DEFAULT_CELL  # lstm | gru | rnn
    hidden_size: int = DEFAULT_HIDDEN_SIZE  # H: units
    activation: str = "tanh"  # candidate / output activation (the RNN's nonlinearity)
    recurrent_activation: str = "sigmoid"  # gate activation (lstm, gru); core/activations.py
    reset_after: bool = True  # gru: reset gate after the recurrent matmul (torch, Keras default)

    def __post_init__(self) -> None:
        from seqstate.core.activations import check_activation
        from seqstate.core.cells import cell_kind

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
        from seqstate.core.stepwise import is_fused

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
    activation: str = "linear"  # see seqstate.core.activations

    def __post_init__(self) -> None:
        from seqstate.core.activations import check_activation

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
    distribution: DistributionHead | None  # None: point outputs; else k * O raw parameters

    def __init__(
        self,
        input_size: int,
        output_size: int,
        cell: Cell | None = None,
        hidden_size: int | None = None,
        num_layers: int | None = None,
        dropout: float = DEFAULT_DROPOUT,
        nonlinearity: Literal["tanh", "relu"] | None = None,
        task: Task = "regression",
        *,
        layers: Sequence[RecurrentSpec | Mapping[str, Any]] | None = None,
        head: Sequence[DenseSpec | Mapping[str, Any]] | None = None,
        mask_value: float | None = None,
        distribution: DistributionHead | str | Mapping[str, Any] | None = None,
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
        head_distribution = _distribution(distribution)
        if head_distribution is not None and task != "regression":
            raise ValueError(
                "ModelConfig.distribution applies to regression models only; received "
                f"task={task!r} with distribution={head_distribution.name!r}"
            )
        # the head's last layer: O values, or k raw parameters for each of the O targets
        units = output_size * (
            1 if head_distribution is None else head_distribution.parameter_count
        )
        if head is None:
            dense: tuple[DenseSpec, ...] = (DenseSpec(units),)
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
            if not dense or dense[-1].units != units:
                last = dense[-1].units if dense else None
                what = (
                    f"output_size={output_size}"
                    if head_distribution is None
                    else f"output_size * {head_distribution.parameter_count} parameters of "
                    f"{head_distribution.name} = {units}"
                )
                raise ValueError(
                    f"ModelConfig.head must end with a layer of {what} units; "
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
            "distribution": head_distribution,
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

    @property
    def head_units(self) -> int:
        """Units of the head's last layer: ``O``, or ``k * O`` with a distribution."""
        k = 1 if self.distribution is None else self.distribution.parameter_count
        return self.output_size * k

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes``: any constructor argument, including the shorthand
        (``hidden_size=128`` resizes every layer of a stack of equal layers)."""
        base: dict[str, Any] = {
            "input_size": self.input_size,
            "output_size": self.output_size,
            "dropout": self.dropout,
            "task": self.task,
            "mask_value": self.mask_value,
            "distribution": self.distribution,
            # the default head (one linear layer) follows a new output_size
            "head": None if self.head == (DenseSpec(self.head_units),) else self.head,
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
            # an RNN's nonlinearity goes with the cell: a change to another cell leaves it
            keeps_rnn = first.kind == "rnn" and changes.get("cell", "rnn") == "rnn"
            base["nonlinearity"] = first.activation if keeps_rnn else None
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
        extra = {} if self.distribution is None else {"distribution": self.distribution.to_dict()}
        return {
            **extra,
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
        if (
            not uniform
            or not plain_head
            or self.mask_value is not None
            or self.distribution is not None
        ):
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
            dropout=body.get("dropout", DEFAULT_DROPOUT),
            task=body.get("task", "regression"),
            layers=body["layers"],
            head=body.get("head"),
            mask_value=body.get("mask_value"),
            distribution=body.get("distribution"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def _distribution(value: Any) -> DistributionHead | None:
    """None, a head, its name, or its JSON dict (``{"name": ..., "quantiles": [...]}``)."""
    from seqstate.core.distributions import DistributionHead

    if value is None or isinstance(value, DistributionHead):
        return value
    if isinstance(value, str):
        return DistributionHead(value)  # type: ignore[arg-type]
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"name", "quantiles"})
        if unknown or "name" not in value:
            raise ValueError(
                "ModelConfig.distribution as a dict must have 'name' (and, for a quantile head, "
                f"'quantiles'); received keys {sorted(value)}"
            )
        if "quantiles" not in value:
            return DistributionHead(value["name"])
        return DistributionHead(value["name"], tuple(value["quantiles"]))
    raise TypeError(
        "ModelConfig.distribution must be None, a DistributionHead, its name or its dict; "
        f"received {type(value).__name__}"
    )


def _shorthand_stack(
    cell: Any, hidden_size: Any, num_layers: Any, nonlinearity: Any
) -> tuple[RecurrentSpec, ...]:
    kind = DEFAULT_CELL if cell is None else cell
    if kind not in KINDS:
        raise ValueError(f"ModelConfig.cell must be one of {list(KINDS)}; received {cell!r}")
    size = _check_size(
        DEFAULT_HIDDEN_SIZE if hidden_size is None else hidden_size, "ModelConfig.hidden_size"
    )
    count = _check_size(
        DEFAULT_NUM_LAYERS if num_layers is None else num_layers, "ModelConfig.num_layers"
    )
    if nonlinearity not in (None, "tanh", "relu"):
        raise ValueError(
            f"ModelConfig.nonlinearity must be 'tanh' or 'relu'; received {nonlinearity!r}"
        )
    # (a version-1 config writes nonlinearity='tanh' for every cell: that one is the default)
    if kind != "rnn" and nonlinearity not in (None, "tanh"):
        raise ValueError(
            f"ModelConfig.nonlinearity applies to cell='rnn' only; received "
            f"nonlinearity={nonlinearity!r} with cell={kind!r}"
            f"{' (the default)' if cell is None else ''}. Use cell='rnn', or leave "
            f"nonlinearity out (for another activation of a {kind} layer, pass layers="
            f"[RecurrentSpec({kind!r}, {size}, activation={nonlinearity!r})])"
        )
    activation = nonlinearity if kind == "rnn" and nonlinearity is not None else "tanh"
    return tuple(RecurrentSpec(kind, size, activation) for _ in range(count))
