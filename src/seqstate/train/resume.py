"""Resume rules: what a checkpoint must agree on for fit to continue it exactly."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from seqstate.lanes.lanes import Lanes
from seqstate.train.config import FitConfig
from seqstate.train.runfiles import CHECKPOINT_DIR
from seqstate.train.snapshots import Snapshot

# Fields that may change between an interrupted run and its resume without breaking exactness.
RESUME_FREE = (
    "epochs",
    "progress",
    "checkpoint_every",
    "plot_every",
    "epoch_checkpoints",
    "device",
)


def agreement(
    config: FitConfig, signature: dict[str, Any], run: Path | None, snapshot: Snapshot | None
) -> dict[str, Any]:
    """What every rank of a distributed run must have been given alike."""
    return {
        "config": {k: v for k, v in config.to_dict().items() if k not in ("progress", "device")},
        "model": signature["model"],
        "train": signature["train"],
        "validation": signature["validation"],
        "loss": signature["loss"],
        "run_dir": run is not None,
        "resume": None if snapshot is None else [snapshot.info["epoch"], snapshot.info["cursor"]],
    }


def resolve_dirs(
    run_dir: str | os.PathLike[str] | None, resume: bool | str | os.PathLike[str] | None
) -> tuple[Path | None, Path | None]:
    """(directory to write, directory whose checkpoint to resume from or None)."""
    run = Path(run_dir) if run_dir is not None else None
    if resume is None or resume is False:
        return run, None
    if resume is True:
        if run is None:
            raise ValueError(
                "resume=True needs run_dir=... (the directory of the interrupted run); or pass "
                "that directory as resume=path"
            )
        return run, run
    if isinstance(resume, str | os.PathLike):
        source = Path(resume)
        return (run if run is not None else source), source
    raise TypeError(
        f"resume must be True, False, None or a run directory path; received "
        f"{type(resume).__name__} {resume!r}"
    )


def model_signature(model: nn.Module) -> dict[str, Any]:
    model_config = getattr(model, "config", None)
    to_dict = getattr(model_config, "to_dict", None)
    return {
        "class": type(model).__name__,
        "config": to_dict() if callable(to_dict) else None,
        "parameters": {name: list(p.shape) for name, p in model.named_parameters()},
    }


def lanes_signature(lanes: Lanes, *, data: bool = False) -> dict[str, Any]:
    """The lanes' layout; with ``data``, also a digest of the data itself
    (:meth:`Lanes.data_digest`), so a resume on other values of the same shape is refused."""
    lengths = np.ascontiguousarray(lanes.lengths, dtype=np.int64)
    signature = {
        "lanes": lanes.num_lanes,
        "window": lanes.window,
        "features": lanes.num_features,
        "outputs": lanes.num_outputs,
        "targets": lanes.target_kind,
        "sequences": lanes.num_sequences,
        "steps": int(lengths.sum()),
        "lengths_sha1": hashlib.sha1(lengths.tobytes()).hexdigest(),
        "shuffle": lanes.shuffle,
        "seed": lanes.seed,
        "windows": len(lanes),
    }
    if data:
        signature["data"] = lanes.data_digest()
    return signature


def check_resume(
    snapshot: Snapshot, config: FitConfig, signature: dict[str, Any], source: Path
) -> None:
    """Refuse a checkpoint that this call could not continue exactly."""
    info = snapshot.info
    where = str(source / CHECKPOINT_DIR)
    saved_signature = info["signature"]
    for part, what in (
        ("model", "model (class, config or parameter shapes)"),
        ("train", "training data or lane layout (values, lanes, window, sequences, targets)"),
        ("validation", "validation data or lane layout"),
        ("loss", "loss"),
    ):
        given = signature[part]
        if isinstance(given, dict) and isinstance(saved_signature[part], dict):
            # (a checkpoint written before the data's digest was kept has none to compare)
            given = {k: v for k, v in given.items() if k in saved_signature[part]}
        if saved_signature[part] != given:
            raise ValueError(
                f"cannot resume from {where}: the {what} differs from the checkpoint's; "
                f"checkpoint {differences(saved_signature[part], given)}. Resume "
                "with the same model, data and lanes, or start a new run_dir."
            )
    saved = FitConfig.from_dict(info["config"])
    # The loss is compared resolved (the signature's name, above): loss=None is the model's
    # default loss, so None and the name it resolves to continue the same run.
    changed = [
        f.name
        for f in dataclasses.fields(FitConfig)
        if f.name not in (*RESUME_FREE, "loss")
        and getattr(saved, f.name) != getattr(config, f.name)
    ]
    if config.schedule == "cosine" and saved.epochs != config.epochs:
        changed.append("epochs (the cosine schedule spans them)")
    if changed:
        pairs = ", ".join(
            f"{name}: {getattr(saved, name.split()[0])!r} -> {getattr(config, name.split()[0])!r}"
            for name in changed
        )
        raise ValueError(
            f"cannot resume from {where} exactly: FitConfig fields changed ({pairs}). Only "
            f"{list(RESUME_FREE)} may change on resume; pass config=None to reuse the saved one."
        )
    needed = info["epoch"] + (1 if info["cursor"] > 0 else 0)
    if config.epochs < needed:
        raise ValueError(
            f"cannot resume from {where}: it stopped at epoch {info['epoch']}, window "
            f"{info['cursor']}, past epochs={config.epochs}; give epochs >= {needed}"
        )


def differences(saved: Any, given: Any) -> str:
    if isinstance(saved, dict) and isinstance(given, dict):
        keys = [k for k in sorted(set(saved) | set(given)) if saved.get(k) != given.get(k)]
        return ", ".join(f"{k}={saved.get(k)!r} but received {given.get(k)!r}" for k in keys)
    return f"{saved!r} but received {given!r}"
