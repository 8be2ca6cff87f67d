"""What a run directory may ask the server to allocate, checked before anything is allocated.

A run directory is data, often from elsewhere: its ``model.json`` could ask for a billion hidden
units. The model's size is estimated from the config (recurrent layers dominate:
``4 * H * (F + H + 2)`` weights per layer at most, the LSTM's four gates) and from the
safetensors header (read without the weights), and refused past ``max_parameters``.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

__all__ = ["check_run_dir", "load_run_step", "run_summary"]

_MAX_LAYERS = 64
_MAX_DIMENSION = 1 << 20
_MAX_HEADER = 100 << 20  # safetensors' own limit


def check_run_dir(run_dir: str | os.PathLike[str], max_parameters: int) -> None:
    """Raise ValueError when ``run_dir`` asks for more than ``max_parameters`` weights."""
    from seqstate.core.saved import MODEL_FILE, read_model_json

    config = read_model_json(run_dir).get("model")
    if not isinstance(config, dict):
        raise ValueError(f"{Path(run_dir) / 'model.json'}: 'model' must be an object")
    sizes = _ints(config)
    for key, value in sizes:
        if not 0 <= value <= _MAX_DIMENSION:
            raise ValueError(
                f"run directory {str(run_dir)!r}: model.{key}={value} is outside [0, "
                f"{_MAX_DIMENSION}]; refusing to allocate it"
            )
    hidden = max([v for k, v in sizes if "hidden" in k] or [1])
    features = max([v for k, v in sizes if "input" in k] or [1])
    outputs = max([v for k, v in sizes if "output" in k] or [1])
    layers = max(sum(v for k, v in sizes if k.endswith("num_layers")), _list_layers(config), 1)
    if layers > _MAX_LAYERS:
        raise ValueError(
            f"run directory {str(run_dir)!r} asks for {layers} recurrent layers; at most "
            f"{_MAX_LAYERS} are served"
        )
    estimate = layers * 4 * hidden * (max(features, hidden) + hidden + 2) + hidden * outputs
    stored = _safetensors_parameters(Path(run_dir) / MODEL_FILE)
    for what, count in (("its config", estimate), (MODEL_FILE, stored)):
        if count > max_parameters:
            raise ValueError(
                f"run directory {str(run_dir)!r}: {what} asks for about {count:,} parameters; "
                f"the server allows at most {max_parameters:,} (ServeConfig."
                "max_model_parameters, CLI --max-model-parameters)"
            )


def _ints(value: Any, path: str = "") -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _ints(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _ints(item, f"{path}[{i}]")
    elif isinstance(value, int) and not isinstance(value, bool) and _dimension(path):
        found.append((path, value))
    return found


def _dimension(path: str) -> bool:
    return "size" in path or "layers" in path


def _list_layers(config: dict[str, Any]) -> int:
    layers = config.get("layers")
    return len(layers) if isinstance(layers, list) else 0


def _safetensors_parameters(path: Path) -> int:
    """Total elements the weight file declares, from its header alone (0 if absent)."""
    try:
        with path.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            if length > _MAX_HEADER:
                raise ValueError(f"{path}: safetensors header of {length} bytes is too large")
            header = json.loads(file.read(length))
    except FileNotFoundError:
        return 0
    except (OSError, struct.error, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a safetensors file: {error}") from None
    total = 0
    for name, entry in header.items():
        if name == "__metadata__" or not isinstance(entry, dict):
            continue
        count = 1
        for dim in entry.get("shape", []):
            count *= int(dim)
        total += count
    return total


def load_run_step(run_dir: str | os.PathLike[str]) -> Any:
    """The run directory as one step function (:class:`seqstate.recipe.step.RunStep`), read
    through :class:`seqstate.recipe.run.Run`, the one reader of run directories."""
    from seqstate.recipe.run import Run

    run = Run.load(Path(run_dir))
    return run.step_function()


def run_summary(run_dir: str | os.PathLike[str]) -> str:
    """What a client must send to this run, in one line (printed when the server starts)."""
    from seqstate.recipe.run import Run

    described = Run.load(Path(run_dir)).describe()
    carries = ['"seq"', f'"x" [{len(described["inputs"])}]']
    if described["needs_time"]:
        carries.append('"time" (calendar features: every step)')
    else:
        carries.append('"time" (optional)')
    if described["needs_series"]:
        carries.append('"series" (on the first step)')
    members = f", {described['members']} members (answers: their mean)"
    return (
        f"run {str(run_dir)!r}: inputs {described['inputs']} -> {described['targets']}"
        f"{members if described['members'] > 1 else ''}; each step carries " + ", ".join(carries)
    )
