"""SequenceModel: a recurrent stack and a linear head, built from a JSON-round-tripping config.

The model follows the same protocol as the layers, so every driver (fit, predict, forecast,
Streams, the server) works with it — and with any user module that has these two methods::

    y, state = model(x, state=None, reset=None, mask=None)   # x [B, T, F] -> y [B, T, O]
    state = model.initial_state(batch_size)

The model maps *raw* inputs to *raw* outputs: optional normalisation statistics live in the
model as buffers (saved with the weights), so prediction, forecasting (which feeds outputs
back as inputs), streaming, serving and export never need a separate preprocessing step.
Training computes the loss in the normalised target space (:meth:`normalize_targets`) so the
loss scale and gradient clipping do not depend on the data's units.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

import torch
from torch import nn

from seqstate.layers import GRU, LSTM, RNN
from seqstate.state import State

__all__ = ["ModelConfig", "SequenceModel"]

Cell = Literal["lstm", "gru", "rnn"]
Task = Literal["regression", "classification"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a :class:`SequenceModel` (weights aside)."""

    input_size: int  # F: features per step
    output_size: int  # O: regression outputs, or number of classes for classification
    cell: Cell = "lstm"  # recurrent cell: lstm | gru | rnn
    hidden_size: int = 64  # H: units per recurrent layer
    num_layers: int = 1  # stacked recurrent layers
    dropout: float = 0.0  # dropout between recurrent layers (training only)
    nonlinearity: Literal["tanh", "relu"] = "tanh"  # rnn cell only
    task: Task = "regression"  # regression: raw outputs; classification: logits over classes

    def __post_init__(self) -> None:
        for name in ("input_size", "output_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be an int >= 1; received {value!r}")
        if self.cell not in ("lstm", "gru", "rnn"):
            raise ValueError(
                f"ModelConfig.cell must be 'lstm', 'gru' or 'rnn'; received {self.cell!r}"
            )
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(
                f"ModelConfig.nonlinearity must be 'tanh' or 'relu'; received {self.nonlinearity!r}"
            )
        if self.task not in ("regression", "classification"):
            raise ValueError(
                f"ModelConfig.task must be 'regression' or 'classification'; received {self.task!r}"
            )
        if self.task == "classification" and self.output_size < 2:
            raise ValueError(
                "ModelConfig.output_size is the number of classes for classification and must be "
                f">= 2; received {self.output_size}"
            )
        if not (0.0 <= float(self.dropout) < 1.0):
            raise ValueError(f"ModelConfig.dropout must be in [0, 1); received {self.dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if not isinstance(data, dict):
            raise TypeError(f"model config must be a JSON object; received {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


_CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}


class SequenceModel(nn.Module):
    """Recurrent stack + linear head: ``x [B, T, F] -> y [B, T, O]``, state carried explicitly.

    Args:
        config: a :class:`ModelConfig`; or pass its fields as keyword arguments.

    Outputs at masked steps are zero. For classification ``y`` holds logits over
    ``output_size`` classes.
    """

    def __init__(self, config: ModelConfig | None = None, **fields: Any) -> None:
        super().__init__()
        if config is None:
            config = ModelConfig(**fields)
        elif fields:
            config = dataclasses.replace(config, **fields)
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig; received {type(config).__name__}")
        self.config = config
        extra = {"nonlinearity": config.nonlinearity} if config.cell == "rnn" else {}
        self.recurrent = _CELLS[config.cell](
            config.input_size,
            config.hidden_size,
            config.num_layers,
            dropout=config.dropout,
            **extra,
        )
        self.head = nn.Linear(config.hidden_size, config.output_size)
        # Normalisation (identity until set_normalization): raw x -> (x - shift) / scale,
        # head output -> output * scale + shift for regression.
        self.register_buffer("input_shift", torch.zeros(config.input_size))
        self.register_buffer("input_scale", torch.ones(config.input_size))
        self.register_buffer("output_shift", torch.zeros(config.output_size))
        self.register_buffer("output_scale", torch.ones(config.output_size))

    @property
    def state_type(self) -> type[State]:
        return self.recurrent.state_type

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def output_size(self) -> int:
        return self.config.output_size

    def initial_state(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> State:
        """Zero state ``[num_layers, batch_size, hidden_size]``."""
        return self.recurrent.initial_state(batch_size, device=device, dtype=dtype)

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        reset: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """``x`` [B, T, F] raw inputs -> ``y`` [B, T, O] raw outputs (or logits), new state."""
        if isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[-1] == self.input_size:
            x = (x - self.input_shift) / self.input_scale
        hidden, state = self.recurrent(x, state, reset, mask)
        y = self.head(hidden)  # (B, T, O)
        if self.config.task == "regression":
            y = y * self.output_scale + self.output_shift
        if mask is not None:
            y = torch.where(mask.to(y.device).bool()[..., None], y, y.new_zeros(()))
        return y, state

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
        return f"task={self.config.task}"
