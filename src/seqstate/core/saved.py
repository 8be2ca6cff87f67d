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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seqstate._io import atomic_path, write_text_atomic
from seqstate._validate import check_device
from seqstate.core.model import ModelConfig, SequenceModel

__all__ = [
    "MODEL_FILE",
    "MODEL_JSON",
    "RUN_FORMAT",
    "load_model",
    "read_model_json",
    "save_model",
]

RUN_FORMAT = "seqstate.run/1"
MODEL_JSON = "model.json"
MODEL_FILE = "model.safetensors"


def save_model(
    model: SequenceModel, run_dir: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model.json`` and ``model.safetensors`` into ``run_dir`` (created if needed).

    Everything is checked and serialised first: on bad input nothing is created."""
    if not isinstance(model, SequenceModel):
        raise TypeError(
            f"model must be a seqstate.SequenceModel to be saved with its config; received "
            f"{type(model).__name__} (save a custom module's state_dict with safetensors yourself)"
        )
    run = _run_path(run_dir)
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(
            f"metadata must be a dict of JSON values (e.g. {{'features': ['x', 'y']}}) or None; "
            f"received {type(metadata).__name__} {metadata!r}"
        )
    meta = dict(metadata or {})
    meta.setdefault("seqstate_version", _version())
    document = {"format": RUN_FORMAT, "model": model.config.to_dict(), "metadata": meta}
    try:
        text = json.dumps(document, indent=2, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"metadata must hold only JSON values (str keys; str, number, bool, None, list and "
            f"dict values); json cannot write it: {error}. Convert it first, e.g. an array "
            "with .tolist()"
        ) from None
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    run.mkdir(parents=True, exist_ok=True)
    # Weights first, then the JSON that describes them: each write is atomic, so a crash
    # never leaves a half-written file behind.
    with atomic_path(run / MODEL_FILE) as tmp:
        save_file(tensors, str(tmp))
    write_text_atomic(run / MODEL_JSON, text)
    return run


def read_model_json(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``model.json`` of a run directory, checked for format."""
    path = _run_path(run_dir) / MODEL_JSON
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
    """Rebuild the model of a run directory in eval mode, in the dtype it was saved in.
    Weights load without unpickling."""
    run = _run_path(run_dir)
    target = check_device(device)
    document = read_model_json(run)
    path = run / MODEL_JSON
    if "model" not in document:
        raise ValueError(
            f"{path} has no 'model' entry (the model's config); found keys "
            f"{sorted(document)}. The file is damaged: save the model again"
        )
    try:
        config = ModelConfig.from_dict(document["model"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} holds an unreadable model config: {error}") from None
    model = SequenceModel(config)
    weights = run / MODEL_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"run_dir {str(run_dir)!r} has no {MODEL_FILE}")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"{weights} is not a readable safetensors file ({error}); expected the weights "
            "written by seqstate.save_model / fit. The file is damaged: save the model again"
        ) from None
    _check_weights(model, tensors, weights)
    dtype = _stored_dtype(model, tensors)
    if dtype is not None:
        model = model.to(dtype)  # (load_state_dict would cast the weights to float32)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match the config in {MODEL_JSON}: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    model.eval()
    return model.to(target) if target is not None else model


def _run_path(run_dir: Any) -> Path:
    if not isinstance(run_dir, str | os.PathLike):
        raise TypeError(
            f"run_dir must be a path (a str or a pathlib.Path) to a run directory; received "
            f"{type(run_dir).__name__} {run_dir!r}"
        )
    return Path(run_dir)


def _check_weights(model: SequenceModel, tensors: dict[str, torch.Tensor], weights: Path) -> None:
    """Every stored tensor the model has must have the model's shape for it."""
    expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    wrong = [
        f"{name}: expected {list(expected[name])}, found {list(tensor.shape)}"
        for name, tensor in tensors.items()
        if name in expected and tuple(tensor.shape) != expected[name]
    ]
    if wrong:
        raise ValueError(
            f"{weights} does not match the config in {MODEL_JSON} (tensor shapes: "
            f"{'; '.join(wrong)}). Were the files of two runs mixed? Save the model again"
        )


def _stored_dtype(model: SequenceModel, tensors: dict[str, torch.Tensor]) -> torch.dtype | None:
    """The dtype the model's parameters were saved in, when they share one."""
    dtypes = {tensors[name].dtype for name, _ in model.named_parameters() if name in tensors}
    return dtypes.pop() if len(dtypes) == 1 else None


def _version() -> str:
    from seqstate import __version__

    return __version__
