"""Reading a saved Keras model with ``json`` + ``h5py`` only (no TensorFlow, no Keras).

Two containers are understood:

* Keras 3 ``.keras`` archives: a zip holding ``config.json``, ``metadata.json`` and
  ``model.weights.h5``. In the weights file a layer's variables sit under
  ``layers/<path>/vars/<i>`` (a recurrent layer's under ``layers/<path>/cell/vars/<i>``, a
  ``TimeDistributed`` layer's under ``layers/<path>/layer/vars/<i>``), where ``<path>`` is the
  snake-cased class name made unique by order (``lstm``, ``lstm_1``) and the ``vars`` group
  carries the layer's name as an attribute.
* Legacy ``.h5`` files (Keras 2 and Keras 3's ``model.save("x.h5")``): the JSON config in the
  root attribute ``model_config`` and the weights under ``model_weights/<layer name>``, in the
  order listed by that group's ``weight_names`` attribute.

The result is a :class:`KerasFile`: the model's JSON config, the Keras version that wrote it,
and each layer's weights by layer name, in Keras's own order (kernel, recurrent kernel, bias).
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seqstate.interop._keras_graph import layer_name

__all__ = ["KerasFile", "read_keras_file"]


@dataclass(frozen=True)
class KerasFile:
    """What a saved Keras model holds, read without Keras."""

    path: Path  # the file read
    config: dict[str, Any]  # the model's config: {"class_name": ..., "config": {...}}
    keras_version: str  # the Keras version that wrote the file (or the one the caller gave)
    weights: dict[str, list[np.ndarray]] = field(repr=False)  # layer name -> variables, in order


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("reading Keras files needs h5py: pip install 'seqstate[keras]'") from None
    return h5py


def read_keras_file(path: str | os.PathLike[str], *, keras_version: str | None = None) -> KerasFile:
    """Read a ``.keras`` archive or a legacy ``.h5`` file.

    ``keras_version`` is needed for a file that does not record the Keras version that wrote it
    (definitions changed between versions, e.g. ``hard_sigmoid``); it overrides none that does
    record one, it fills the gap.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike; received {type(path).__name__}")
    if keras_version is not None and not re.fullmatch(r"\d+(\.\d+)*\S*", str(keras_version)):
        raise ValueError(
            f"keras_version must look like '2.15.0' or '3.0'; received {keras_version!r}"
        )
    file = Path(path)
    if file.is_dir():
        saved_model = (file / "saved_model.pb").is_file()
        kind = "a TensorFlow SavedModel folder" if saved_model else "a directory"
        raise ValueError(
            f"path {str(path)!r} is {kind}; seqstate reads Keras model files. In the Python "
            "that made the model, load it and save it as one file: "
            "model.save('model.keras') (Keras 3 / tf.keras >= 2.13) or model.save('model.h5')"
        )
    if not file.is_file():
        raise FileNotFoundError(f"path {str(path)!r} does not exist or is not a file")
    if zipfile.is_zipfile(file):
        read = _read_keras_archive(file)
    elif _h5py().is_hdf5(file):
        read = _read_legacy_h5(file)
    else:
        raise ValueError(
            f"path {str(path)!r} is neither a Keras 3 .keras archive (zip) nor a legacy .h5 file "
            "(HDF5); save the model with model.save('model.keras') or model.save('model.h5')"
        )
    if read.keras_version:
        return read
    if keras_version is None:
        raise ValueError(
            f"{file.name} does not record the Keras version that wrote it, and some definitions "
            "differ between versions (hard_sigmoid: Keras 2 clip(0.2x + 0.5), Keras 3 "
            "relu6(x + 3) / 6); pass keras_version= (CLI: --keras-version), e.g. '2.15.0'"
        )
    return KerasFile(read.path, read.config, str(keras_version), read.weights)


# --- .keras ----------------------------------------------------------------------------------


def _read_keras_archive(file: Path) -> KerasFile:
    h5py = _h5py()
    with zipfile.ZipFile(file) as archive:
        names = set(archive.namelist())
        missing = {"config.json", "model.weights.h5"} - names
        if missing:
            raise ValueError(
                f"{file} is a zip but not a Keras 3 .keras archive: it lacks {sorted(missing)}"
            )
        config = json.loads(archive.read("config.json"))
        metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
        weights_bytes = archive.read("model.weights.h5")
    with h5py.File(io.BytesIO(weights_bytes), "r") as h5:
        weights = _archive_weights(h5, config)
    return KerasFile(file, config, str(metadata.get("keras_version", "")), weights)


def _snake_case(name: str) -> str:
    # keras.src.utils.naming.to_snake_case: how the archive names a layer's group.
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _variables(group: Any) -> list[np.ndarray]:
    """Variables ``vars/0, vars/1, ...`` of a group, in index order (float32)."""
    if "vars" not in group:
        return []
    variables = group["vars"]
    return [np.asarray(variables[key], dtype=np.float32) for key in sorted(variables, key=int)]


def _layer_variables(group: Any) -> list[np.ndarray]:
    # A recurrent layer keeps its variables on its cell, TimeDistributed on its inner layer.
    return _variables(group) + [
        v for child in ("cell", "layer") if child in group for v in _variables(group[child])
    ]


def _archive_weights(h5: Any, config: dict[str, Any]) -> dict[str, list[np.ndarray]]:
    layers = h5.get("layers", {})
    # Preferred: the layer name recorded on each "vars" group (recent Keras 3 versions).
    by_name: dict[str, list[np.ndarray]] = {}
    for key in layers:
        group = layers[key]
        name = group["vars"].attrs.get("name") if "vars" in group else None
        if isinstance(name, bytes):
            name = name.decode()
        if name is None:
            by_name = {}
            break
        by_name[str(name)] = _layer_variables(group)
    if by_name:
        return by_name
    # Fallback: rebuild the group names from the config's layer order, as Keras's saver does.
    # A Sequential model's layer list does not contain its InputLayer; a functional one's does.
    sequential = config.get("class_name") == "Sequential"
    used: dict[str, int] = {}
    for layer in config.get("config", {}).get("layers", []):
        if sequential and layer.get("class_name") == "InputLayer":
            continue
        key = _snake_case(layer["class_name"])
        if key in used:
            used[key] += 1
            key = f"{key}_{used[key]}"
        else:
            used[key] = 0
        if key in layers:
            by_name[layer_name(layer)] = _layer_variables(layers[key])
    return by_name


# --- legacy .h5 ------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_legacy_h5(file: Path) -> KerasFile:
    h5py = _h5py()
    with h5py.File(file, "r") as h5:
        if "model_config" not in h5.attrs:
            raise ValueError(
                f"{file} is an HDF5 file without a 'model_config' attribute: it holds weights "
                "only (model.save_weights). Save the whole model with model.save('model.h5') "
                "or model.save('model.keras')"
            )
        config = json.loads(_text(h5.attrs["model_config"]))
        root = h5.get("model_weights", h5)
        version = _text(root.attrs.get("keras_version", h5.attrs.get("keras_version", "")))
        weights: dict[str, list[np.ndarray]] = {}
        for name in root.attrs.get("layer_names", []):
            group = root[_text(name)]
            weights[_text(name)] = [
                np.asarray(group[_text(w)], dtype=np.float32)
                for w in group.attrs.get("weight_names", [])
            ]
    return KerasFile(file, config, version, weights)
