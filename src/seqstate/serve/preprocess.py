"""The run's preprocessing, applied per stream: raw inputs in, raw-unit outputs out.

A run trained with :mod:`seqstate.recipe.scaling` reads model-space inputs and answers in model
space. ``seqstate predict`` brings a table there and back; the server must do the same for
each step, or a scaled run is served silently wrong::

    x [k, F] raw ──log/log1p (target columns)──► ──(x - location_s) / scale_s──► model
    y [k, O]     ◄──exp/expm1── ◄──y * scale_s + location_s── model output

``s`` is the series the stream is bound to by the request's ``series`` field (per-series
scaling), or the one global row. Everything here is elementwise per step. What is not
(differencing needs the series' past raw values, calendar features need each step's time) is
refused when the server starts: such a run cannot be served step by step exactly.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from seqstate.serve.errors import ApiError

__all__ = ["StreamScaling", "load_stream_scaling"]


@dataclasses.dataclass(frozen=True)
class StreamScaling:
    """The elementwise part of a run's :class:`seqstate.recipe.scaling.Scaling`, ready per step.

    Attributes:
        scaling: the run's fitted scaling (``config.lags == ()``).
        feature_index, target_index: positions of the model's ``F`` input features and
            ``O`` outputs among ``scaling.columns``.
        logged: ``[F]`` bool: the input features that are targets (log/log1p applies).
    """

    scaling: Any
    feature_index: np.ndarray
    target_index: np.ndarray
    logged: np.ndarray

    @property
    def per_series(self) -> bool:
        return bool(self.scaling.config.method == "series")

    def statistics(self, series: str | None) -> tuple[np.ndarray, np.ndarray]:
        """``(location [C], scale [C])`` of ``series``; ApiError 422 when it cannot be given."""
        scaling = self.scaling
        if not self.per_series:
            return scaling.location[0], scaling.scale[0]
        if series is None:
            raise ApiError(
                422,
                "series_required",
                "this run scales each series with its own statistics: send the stream's "
                'series id as "series" with every step (the id column\'s value it was '
                "trained on)",
            )
        row = scaling._row_of(series)
        if row is None:
            raise ApiError(
                422,
                "unknown_series",
                f"series {series!r} is not among the {len(scaling.ids)} series this run was "
                "trained on; a series the run never saw is scaled from its own history, which "
                "a step-by-step stream does not have: use `seqstate predict` on its table",
            )
        return scaling.location[row], scaling.scale[row]

    def encode(self, series: str | None, x: np.ndarray) -> tuple[np.ndarray, Any]:
        """``x [k, F]`` raw float32 -> ``(model-space x [k, F] float32, decode)``; ``decode``
        maps the model's ``[k, O]`` outputs back to raw units (float64)."""
        location, scale = self.statistics(series)
        kind = self.scaling.config.transform
        values = x.astype(np.float64)
        if kind != "none" and self.logged.any():
            logged = values[:, self.logged]
            bad = logged <= 0 if kind == "log" else logged < 0
            if bad.any():
                t, f = np.argwhere(bad)[0]
                feature = int(np.flatnonzero(self.logged)[f])
                need = "> 0" if kind == "log" else ">= 0"
                raise ApiError(
                    422,
                    "invalid_x",
                    f"this run takes the {kind} of feature {feature} (a target): it must be "
                    f"{need}; received {float(logged[t, f])!r} at step {int(t)}",
                )
            values[:, self.logged] = np.log(logged) if kind == "log" else np.log1p(logged)
            # the pipeline stores the transformed table as float32 before scaling it
            values = values.astype(np.float32).astype(np.float64)
        features = self.feature_index
        encoded = ((values - location[features]) / scale[features]).astype(np.float32)
        if not self.target_index.size:  # classification: logits, nothing to map back
            return encoded, None
        out_location, out_scale = location[self.target_index], scale[self.target_index]

        def decode(y: np.ndarray) -> np.ndarray:
            z = np.asarray(y, dtype=np.float64) * out_scale + out_location
            if kind == "log":
                return np.exp(z)
            if kind == "log1p":
                return np.expm1(z)
            return z

        return encoded, decode


def load_stream_scaling(
    run_dir: str | os.PathLike[str], input_size: int, output_size: int
) -> StreamScaling | None:
    """The run's per-step preprocessing (None: the run has none, inputs are served as sent).

    Raises:
        ValueError: the run cannot be served exactly step by step (differencing, calendar
            features), or its scaling does not match the model's sizes.
    """
    from seqstate.core.saved import read_model_json
    from seqstate.recipe.preparation import load

    metadata = read_model_json(run_dir).get("metadata", {}) or {}
    scaling, calendar = load(Path(run_dir), metadata if isinstance(metadata, dict) else {})
    where = f"run directory {str(run_dir)!r}"
    if calendar:
        raise ValueError(
            f"{where} reads calendar features {list(calendar)} computed from each row's time, "
            "which a step does not carry; the server cannot serve it. Train with --calendar "
            "none to serve it, or use `seqstate predict`/`forecast`"
        )
    if scaling is None or scaling.config.is_identity:
        return None
    if scaling.config.lags:
        raise ValueError(
            f"{where} models differences at lags {list(scaling.config.lags)}: turning its "
            "outputs back into values needs the series' past raw values, which the server "
            "does not keep; it cannot serve it. Train without --difference/--season to "
            "serve it, or use `seqstate predict`/`forecast`"
        )
    columns = list(scaling.columns)
    features = columns[:input_size]
    if len(columns) < input_size or output_size != (len(scaling.targets) or output_size):
        raise ValueError(
            f"{where}: its scaling covers columns {columns} with targets "
            f"{list(scaling.targets)}, which does not fit the model's {input_size} inputs and "
            f"{output_size} outputs; the run directory is inconsistent"
        )
    targets = [columns.index(name) for name in scaling.targets]
    logged = np.array([name in scaling.targets for name in features], dtype=bool)
    return StreamScaling(
        scaling, np.arange(input_size), np.asarray(targets, dtype=np.int64), logged
    )
