"""Activation functions by name, exactly as Keras defines them, in torch.

One table: the names a :class:`seqstate.core.model.ModelConfig` may use for a recurrent layer's
``activation`` / ``recurrent_activation`` or a head layer's ``activation``. The Keras importer
maps Keras's names onto these (Keras 2's ``hard_sigmoid`` is a different function from Keras 3's
and is named ``hard_sigmoid_keras2`` here), so a saved model always says which function it uses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional

__all__ = ["ACTIVATIONS", "ALIASES", "activation", "check_activation"]

Activation = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _hard_sigmoid_keras2(x: torch.Tensor) -> torch.Tensor:
    # tf.keras 2: clip(0.2 x + 0.5, 0, 1) (slope 1/5); Keras 3 and torch use relu6(x + 3) / 6.
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


def _leaky_relu(x: torch.Tensor) -> torch.Tensor:
    return functional.leaky_relu(x, 0.2)  # Keras's default slope 0.2 (torch's is 0.01)


def _softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=-1)


def _log_softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(x, dim=-1)


# Module-level functions, not lambdas: a model holding them pickles (torch.save, deepcopy).
#: name -> function. Softmax-like functions act over the last (feature) axis.
ACTIVATIONS: dict[str, Activation] = {
    "linear": _identity,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "hard_sigmoid": functional.hardsigmoid,  # Keras 3: relu6(x + 3) / 6
    "hard_sigmoid_keras2": _hard_sigmoid_keras2,
    "relu": torch.relu,
    "relu6": functional.relu6,
    "elu": functional.elu,  # alpha 1
    "selu": functional.selu,
    "celu": functional.celu,  # alpha 1
    "gelu": functional.gelu,  # exact (Keras's default approximate=False)
    "silu": functional.silu,
    "hard_silu": functional.hardswish,
    "softplus": functional.softplus,
    "softsign": functional.softsign,
    "mish": functional.mish,
    "exponential": torch.exp,
    "leaky_relu": _leaky_relu,
    "log_sigmoid": functional.logsigmoid,
    "hard_tanh": functional.hardtanh,
    "tanh_shrink": functional.tanhshrink,
    "softmax": _softmax,
    "log_softmax": _log_softmax,
}

#: Other names Keras uses for the same functions.
ALIASES = {"swish": "silu", "hard_swish": "hard_silu"}


def check_activation(name: object, argument: str) -> str:
    """The canonical name for ``name``; ValueError naming ``argument`` when it is unknown."""
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be an activation name (str); received {name!r}")
    name = ALIASES.get(name, name)
    if name not in ACTIVATIONS:
        raise ValueError(
            f"{argument}={name!r} is not a known activation; known: {sorted(ACTIVATIONS)}"
        )
    return name


def activation(name: str) -> Activation:
    """The torch function of activation ``name`` (see :data:`ACTIVATIONS`)."""
    return ACTIVATIONS[check_activation(name, "activation")]
