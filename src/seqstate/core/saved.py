"""Saved models: a model in a run directory, as safetensors weights + JSON, never pickle.

A run directory holds (training adds more: metrics, and ``checkpoint/`` for exact resume,
see ``seqstate.train.snapshots``)::

    run_dir/
      model.json          {"format": "seqstate.run/1", "model": ModelConfig, "metadata": {...}}
      model.safetensors   the weights and normalisation buffers

``model`` is the typed, versioned :class:`~seqstate.core.model.ModelConfig` (any recurrent stack);
run directories written before stacks existed load unchanged.

``metadata`` is free JSON for what produced the model (feature and target column names,
the data source, the seqstate version); the server and CLI read it, the model does not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from seqstate._io import atomic_path, write_text_atomic
from seqstate.core.model import ModelConfig, SequenceModel

__all__ = ["MODEL_FILE", "MODEL_JSON", "RUN_FORMAT", "load_model", "read_model_json", "save_model"]

RUN_FORMAT = "seqstate.run/1"
MODEL_JSON = "model.json"
MODEL_FILE = "model.safetensors"


def save_model(
    model: SequenceModel, run_dir: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model.json`` and ``model.safetensors`` into ``run_dir`` (created if needed)."""
    if not isinstance(model, SequenceModel):
        raise TypeError(
            f"model must be a seqstate.SequenceModel to be saved with its config; received "
            f"{type(model).__name__} (save a custom module's state_dict with safetensors yourself)"
        )
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    meta = dict(metadata or {})
    meta.setdefault("seqstate_version", _version())
    document = {"format": RUN_FORMAT, "model": model.config.to_dict(), "metadata": meta}
    text = json.dumps(document, indent=2, sort_keys=True)  # fails early on non-JSON metadata
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # Weights first, then the JSON that describes them: each write is atomic, so a crash
    # never leaves a half-written file behind.
    with atomic_path(run / MODEL_FILE) as tmp:
        save_file(tensors, str(tmp))
    write_text_atomic(run / MODEL_JSON, text)
    return run


def read_model_json(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``model.json`` of a run directory, checked for format."""
    path = Path(run_dir) / MODEL_JSON
    if not path.is_file():
        raise FileNotFoundError(
            f"run_dir {str(run_dir)!r} has no {MODEL_JSON}: expected a directory written by "
            "seqstate.save_model / fit / `seqstate train`"
        )
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(document, dict) or document.get("format") != RUN_FORMAT:
        received = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise ValueError(f"{path} has format {received!r}; expected {RUN_FORMAT!r}")
    return document


def load_model(
    run_dir: str | os.PathLike[str], *, device: torch.device | str | None = None
) -> SequenceModel:
    """Rebuild the model of a run directory in eval mode. Weights load without unpickling."""
    document = read_model_json(run_dir)
    config = ModelConfig.from_dict(document["model"])
    model = SequenceModel(config)
    weights = Path(run_dir) / MODEL_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"run_dir {str(run_dir)!r} has no {MODEL_FILE}")
    tensors = load_file(str(weights))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match the config in {MODEL_JSON}: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    model.eval()
    return model.to(device) if device is not None else model


def _version() -> str:
    from seqstate import __version__

    return __version__
