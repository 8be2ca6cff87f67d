"""Training snapshots on disk: everything exact resume needs, safetensors + JSON, never pickle.

A snapshot is one directory; ``latest`` names the complete one::

    run_dir/checkpoint/
      latest                   "e00003-w0000120": replaced atomically once a snapshot is complete
      e00003-w0000120/
        train.json             fit config, model and lane signatures, epoch, window cursor,
                               scheduler state, history, early-stopping bookkeeping, the nested
                               structure of the optimiser state and RNG states (as JSON)
        weights.safetensors    model weights
        optimizer.safetensors  optimiser tensors (Adam moments, step counts, ...)
        best.safetensors       best weights so far (when early stopping restores them)
        state.safetensors      the carried training state (State.to_bytes())
        rng.safetensors        torch CPU/CUDA generator states, numpy's key array

A snapshot is written into ``<name>.partial/``, flushed to disk, renamed, and only then does
``latest`` move to it, so a crash at any moment leaves the previous snapshot intact.

Nested Python values (optimiser and scheduler state dicts) are stored as JSON with their
tensors replaced by ``{"__tensor__": key}`` references into a safetensors file; tuples,
non-string dict keys and non-finite floats are tagged so they load back exactly as they were.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from seqstate._io import fsync_path, write_text_atomic

__all__ = ["Snapshot", "capture_rng", "load_snapshot", "restore_rng", "save_snapshot"]

SNAPSHOT_FORMAT = "seqstate.train-snapshot/1"
LATEST = "latest"


# --------------------------------------------------------------------------------------------
# Nested values <-> JSON + tensors
# --------------------------------------------------------------------------------------------


def encode(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """JSON-able form of ``value``; its tensors go into ``tensors`` under keys derived from
    ``path``."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: encode(v, tensors, f"{path}.{k}") for k, v in value.items()}
        return {
            "__items__": [
                [encode(k, tensors, f"{path}.key{i}"), encode(v, tensors, f"{path}.{i}")]
                for i, (k, v) in enumerate(value.items())
            ]
        }
    raise TypeError(
        f"cannot store {type(value).__name__} at {path!r} in a training snapshot: only tensors, "
        "numbers, strings, None, lists, tuples and dicts are kept (nothing is pickled)"
    )


def decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(value, list):
        return [decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__float__" in value:
        return float(value["__float__"])
    if "__tuple__" in value:
        return tuple(decode(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {decode(k, tensors): decode(v, tensors) for k, v in value["__items__"]}
    return {k: decode(v, tensors) for k, v in value.items()}


# --------------------------------------------------------------------------------------------
# Random number generators
# --------------------------------------------------------------------------------------------


def capture_rng() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The state of every global generator training may draw from: (JSON part, tensors)."""
    tensors: dict[str, torch.Tensor] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))
    version, internal, gauss_next = random.getstate()
    info = {
        "numpy": [kind, int(position), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
        "cuda_devices": sum(1 for name in tensors if name.startswith("cuda.")),
    }
    return info, tensors


def restore_rng(info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Put every generator back where :func:`capture_rng` found it."""
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(int(info["cuda_devices"]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, position, has_gauss, cached = info["numpy"]
    keys = tensors["numpy"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, position, has_gauss, cached))
    version, internal, gauss_next = info["python"]
    random.setstate((version, tuple(internal), gauss_next))


# --------------------------------------------------------------------------------------------
# Snapshots
# --------------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """Everything a training run needs to continue exactly where it stopped."""

    info: dict[str, Any]  # JSON: config, signatures, epoch, cursor, history, bookkeeping
    weights: dict[str, torch.Tensor]  # model state_dict
    optimizer: dict[str, Any]  # optimiser state_dict
    scheduler: dict[str, Any] | None  # lr scheduler state_dict
    best_weights: dict[str, torch.Tensor] | None  # weights of the best epoch so far
    carried_state: bytes | None  # State.to_bytes() of the training state at the cursor
    rng: tuple[dict[str, Any], dict[str, torch.Tensor]]  # capture_rng()


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    # safetensors refuses shared storage and non-contiguous tensors: store plain copies.
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(path))
    fsync_path(path)


def save_snapshot(directory: Path, name: str, snapshot: Snapshot) -> Path:
    """Write ``snapshot`` as ``directory/name`` and point ``directory/latest`` at it."""
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f"{name}.partial"
    final = directory / name
    for stale in (partial, final):
        if stale.exists():  # left by a crash, or a second save at the same point
            shutil.rmtree(stale)
    partial.mkdir()

    optimizer_tensors: dict[str, torch.Tensor] = {}
    plain_tensors: dict[str, torch.Tensor] = {}  # (the info and scheduler hold none)
    # (encoded: a history or best loss may hold inf or NaN, which JSON cannot)
    info = {key: encode(value, plain_tensors, key) for key, value in snapshot.info.items()}
    document = {
        "format": SNAPSHOT_FORMAT,
        **info,
        "optimizer": encode(snapshot.optimizer, optimizer_tensors, "optimizer"),
        "scheduler": encode(snapshot.scheduler, plain_tensors, "scheduler"),
        "rng": snapshot.rng[0],
        "has_best": snapshot.best_weights is not None,
        "has_state": snapshot.carried_state is not None,
    }
    if plain_tensors:
        raise TypeError(
            "the lr scheduler state or the training info holds tensors; only plain values are "
            "supported"
        )
    text = json.dumps(document, indent=1, sort_keys=True, allow_nan=False)

    _save_tensors(snapshot.weights, partial / "weights.safetensors")
    _save_tensors(optimizer_tensors, partial / "optimizer.safetensors")
    _save_tensors(snapshot.rng[1], partial / "rng.safetensors")
    if snapshot.best_weights is not None:
        _save_tensors(snapshot.best_weights, partial / "best.safetensors")
    if snapshot.carried_state is not None:
        (partial / "state.safetensors").write_bytes(snapshot.carried_state)
        fsync_path(partial / "state.safetensors")
    (partial / "train.json").write_text(text)
    fsync_path(partial / "train.json")
    fsync_path(partial)

    os.replace(partial, final)
    write_text_atomic(directory / LATEST, name, durable=True)
    for other in directory.iterdir():
        if other.is_dir() and other.name != name:
            shutil.rmtree(other)
    return final


def has_snapshot(directory: Path) -> bool:
    return (directory / LATEST).is_file()


def load_snapshot(directory: Path) -> Snapshot:
    """The snapshot ``directory/latest`` points to."""
    pointer = directory / LATEST
    if not pointer.is_file():
        raise FileNotFoundError(
            f"no training checkpoint in {str(directory)!r} (expected a {LATEST!r} file written "
            "by fit with run_dir=...); nothing to resume"
        )
    folder = directory / pointer.read_text().strip()
    try:
        document = json.loads((folder / "train.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"training checkpoint {str(folder)!r} is unreadable: {error}") from None
    if document.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(
            f"{folder / 'train.json'} has format {document.get('format')!r}; expected "
            f"{SNAPSHOT_FORMAT!r}"
        )
    optimizer = decode(document.pop("optimizer"), load_file(str(folder / "optimizer.safetensors")))
    scheduler = decode(document.pop("scheduler"), {})
    rng = (document.pop("rng"), load_file(str(folder / "rng.safetensors")))
    best = load_file(str(folder / "best.safetensors")) if document.pop("has_best") else None
    state = (folder / "state.safetensors").read_bytes() if document.pop("has_state") else None
    return Snapshot(
        info={key: decode(value, {}) for key, value in document.items()},
        weights=load_file(str(folder / "weights.safetensors")),
        optimizer=optimizer,
        scheduler=scheduler,
        best_weights=best,
        carried_state=state,
        rng=rng,
    )
