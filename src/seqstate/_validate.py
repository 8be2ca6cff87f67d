"""Checks of user input at the public boundary, with one rule for every argument:

a value of the wrong *type* raises ``TypeError``, a value of the right type but outside the
allowed range raises ``ValueError``; both name the argument, what was expected, what was
received, and (``hint``) the likely fix. ``bool`` is never accepted as a number.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # check_flags imports torch when called: the other checks load without it
    import torch

__all__ = ["check_bool", "check_device", "check_flags", "check_int", "check_number"]


def _hinted(message: str, hint: str) -> str:
    return f"{message} {hint}" if hint else message


def check_int(value: Any, name: str, minimum: int, hint: str = "") -> int:
    """``value`` as an int ``>= minimum`` (a Python or NumPy integer, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(
            _hinted(
                f"{name} must be an int >= {minimum}; received {type(value).__name__} {value!r}.",
                hint,
            )
        )
    if value < minimum:
        raise ValueError(_hinted(f"{name} must be an int >= {minimum}; received {value}.", hint))
    return int(value)


def check_number(
    value: Any, name: str, *, minimum: float, strict: bool = False, hint: str = ""
) -> float:
    """``value`` as a finite float ``>= minimum`` (``> minimum`` with ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(
            _hinted(f"{name} must be a number; received {type(value).__name__} {value!r}.", hint)
        )
    low_ok = value > minimum if strict else value >= minimum
    if not math.isfinite(value) or not low_ok:
        bound = ">" if strict else ">="
        raise ValueError(
            _hinted(f"{name} must be a finite number {bound} {minimum}; received {value!r}.", hint)
        )
    return float(value)


def check_bool(value: Any, name: str) -> bool:
    """``value`` as True or False (a NumPy bool too)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False; received {type(value).__name__} {value!r}.")
    return bool(value)


def check_flags(flags: Any, name: str, B: int, T: int, device: torch.device) -> torch.Tensor | None:
    """A per-step bool flag tensor ``[B, T]`` (a layer's ``reset`` or ``mask``), on ``device``;
    0/1 integers are accepted as bools. ``None`` stays ``None``."""
    if flags is None:
        return None
    import torch

    if not isinstance(flags, torch.Tensor):
        raise TypeError(
            f"{name} must be a bool torch.Tensor [B, T]; received {type(flags).__name__}"
        )
    if flags.shape != (B, T):
        raise ValueError(
            f"{name} must have shape [B, T]=[{B}, {T}] like x; received {tuple(flags.shape)}"
        )
    if flags.dtype != torch.bool:
        if flags.is_floating_point() or flags.is_complex():
            raise TypeError(f"{name} must be a bool tensor; received dtype {flags.dtype}")
        if bool(((flags != 0) & (flags != 1)).any()):
            raise ValueError(f"{name} must hold only 0/1 (or bool); received other values")
        flags = flags.bool()
    return flags.to(device)


def check_device(device: Any, name: str = "device") -> torch.device | None:
    """``device`` as a torch.device that this machine has ('auto': CUDA when available, else
    the CPU; an int N: 'cuda:N', as torch reads it); None stays None. ``fit``, inference and
    loading all resolve their device here."""
    import torch

    if device is None:
        return None
    if isinstance(device, int | np.integer) and not isinstance(device, bool):
        device = f"cuda:{int(device)}"
    if isinstance(device, str):
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            target = torch.device(device)
        except RuntimeError:
            raise ValueError(
                f"{name} must be 'auto', 'cpu', 'cuda' or 'cuda:N' (or a torch.device); "
                f"received {device!r}"
            ) from None
    elif isinstance(device, torch.device):
        target = device
    else:
        raise TypeError(
            f"{name} must be a string such as 'auto', 'cpu' or 'cuda:0', or a torch.device; "
            f"received {type(device).__name__} {device!r}"
        )
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name}={str(device)!r} but CUDA is not available on this machine; use "
                f"{name}='cpu' or 'auto'"
            )
        count = torch.cuda.device_count()
        if target.index is not None and target.index >= count:
            raise ValueError(
                f"{name}={str(device)!r} but this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}; use one of them or 'auto'"
            )
    elif target.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"{name}={str(device)!r} but MPS is not available on this machine; use "
            f"{name}='cpu' or 'auto'"
        )
    return target
