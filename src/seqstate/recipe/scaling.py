"""Scaling: per-series location and scale, and target transforms with exact inverses.

A panel whose series differ by orders of magnitude cannot share one mean and std: the small
series vanish under the large ones. So each series is brought to a common footing on its own,
and the model only ever sees values of order one::

    raw table ──transform──► ──difference──► ──(v - location_i) / scale_i──► model space
     (targets: log/log1p)   (targets: lag 1,    (every feature and target column,
                             and/or lag m)       statistics of series i's training part)

    model output ──* scale_i + location_i──► ──undifference──► ──exp / expm1──► raw units
                                               (seeded by the actual past values of the
                                                series, or by the forecast itself)

Differencing is causal (``d[t] = w[t] - w[t-1]``), so it is applied to whole series before
the train/validation split; the statistics are fitted on the training part only. A series the
run never saw is scaled from its own rows (its context). :class:`Scaling` holds both steps,
and is stored in the run directory as ``scaling.json`` + ``scaling.safetensors`` (never
pickle), looked up by series id.

The differencing polynomial of lags ``(1, m)`` is ``D(B) = (1 - B)(1 - B^m)``; writing it as
``1 + sum_k c_k B^k`` gives the transform ``z[t] = w[t] + sum_k c_k w[t-k]`` and its exact
inverse ``w[t] = z[t] - sum_k c_k w[t-k]``, which is what both one-step predictions (with the
actual past ``w``) and forecasts (with the forecast ``w`` fed back) use.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "SCALING_FILE",
    "SCALING_JSON",
    "Scaling",
    "ScalingConfig",
    "difference_coefficients",
    "forward_transform",
    "inverse_transform",
    "robust_location_scale",
]

ScaleMethod = Literal["series", "global", "none"]
TransformKind = Literal["none", "log", "log1p"]

SCALING_JSON = "scaling.json"
SCALING_FILE = "scaling.safetensors"
# a file format name, not a module path: it does not follow module moves
_FORMAT = "seqstate.scaling/1"
_SCALE_METHODS = ("series", "global", "none")
_TRANSFORMS = ("none", "log", "log1p")


@dataclasses.dataclass(frozen=True)
class ScalingConfig:
    """How a table is brought to model space (the ``[scaling]`` section of a run config)."""

    method: ScaleMethod = "series"  # series: own statistics per series; global: one for all
    transform: TransformKind = "none"  # of the target columns: log needs > 0, log1p >= 0
    difference: int = 0  # 1: model lag-1 differences of the (transformed) targets
    season: int = 0  # m >= 2: also seasonal differences at lag m (0: none)

    def __post_init__(self) -> None:
        if self.method not in _SCALE_METHODS:
            raise ValueError(
                f"scaling method must be one of {list(_SCALE_METHODS)}; received {self.method!r}."
            )
        if self.transform not in _TRANSFORMS:
            raise ValueError(
                f"transform must be one of {list(_TRANSFORMS)}; received {self.transform!r}."
            )
        for name, value, allowed in (
            ("difference", self.difference, "0 or 1"),
            ("season", self.season, "0 (none) or a period >= 2"),
        ):
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TypeError(f"{name} must be an int ({allowed}); received {value!r}.")
        if self.difference not in (0, 1):
            raise ValueError(f"difference must be 0 or 1; received {self.difference!r}.")
        if self.season == 1 or self.season < 0:
            raise ValueError(
                f"season must be 0 (no seasonal differencing) or a period >= 2 (12 for monthly "
                f"data with a yearly cycle); received {self.season!r}. For lag-1 differences "
                "use difference=1."
            )

    @property
    def lags(self) -> tuple[int, ...]:
        """The differencing lags, e.g. ``(1, 12)``."""
        return tuple(lag for lag in (self.difference and 1, self.season) if lag)

    @property
    def dropped(self) -> int:
        """Leading steps of each series consumed by differencing (no value in model space)."""
        return sum(self.lags)

    @property
    def is_identity(self) -> bool:
        return self.method == "none" and self.transform == "none" and not self.lags

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScalingConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown scaling setting(s) {unknown}; known: {sorted(known)}.")
        return cls(**data)


def difference_coefficients(lags: Sequence[int]) -> np.ndarray:
    """Coefficients ``c`` of ``prod_k (1 - B^lag_k) = sum_j c[j] B^j`` (``c[0] = 1``)."""
    coefficients = np.ones(1)
    for lag in lags:
        factor = np.zeros(lag + 1)
        factor[0], factor[lag] = 1.0, -1.0
        coefficients = np.convolve(coefficients, factor)
    return coefficients


def robust_location_scale(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column ``(median, robust scale)`` of ``values [N, C]``, never a zero scale.

    The scale is the interquartile range / 1.349 (the std for normal data, but one outlier
    cannot inflate it); where that is zero (a series mostly constant) the mean absolute
    deviation from the median * 1.2533, then the mean absolute value, then 1 (a constant zero
    series). Any nonzero scale is exact for a constant series: it maps to zero and back.
    """
    values = np.asarray(values, dtype=np.float64)
    location = np.median(values, axis=0)
    q75, q25 = np.percentile(values, [75, 25], axis=0)
    scale = (q75 - q25) / 1.349
    fallbacks = (
        np.mean(np.abs(values - location), axis=0) * 1.2533,
        np.mean(np.abs(values), axis=0),
        np.ones_like(location),
    )
    for fallback in fallbacks:
        scale = np.where(scale > 0, scale, fallback)
    return location, scale


# --------------------------------------------------------------------------------------------
# The fitted scaling
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Scaling:
    """A fitted :class:`ScalingConfig`: per-series (or one global) location and scale.

    Attributes:
        config: the settings.
        columns: names of the scaled columns: the table's features, then the targets that are
            not features (C names, each scaled once whichever role it has).
        targets: the target columns (transformed and differenced; in ``columns``).
        ids: the series ids the statistics were fitted on (``[None]`` for one series).
        location, scale: ``[n_ids, C]`` float64 (one row for ``method="global"``; zeros and
            ones for ``"none"``).
    """

    config: ScalingConfig
    columns: tuple[str, ...]
    targets: tuple[str, ...]
    ids: list[Any]
    location: np.ndarray
    scale: np.ndarray

    # -- fitting ------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls, train: Any, config: ScalingConfig | None = None, *, transformed: bool = False
    ) -> Scaling:
        """Fit on ``train``, a raw :class:`seqstate.recipe.sources.SequenceTable` (pass the training
        split only, never validation).

        With ``transformed=True`` ``train`` was already passed through :func:`transform_table`
        (the way to split after differencing, so the validation part keeps all its rows:
        transform the whole table, split it, fit on the training part).
        """
        config = config or ScalingConfig()
        if not transformed:
            train = transform_table(train, config)
        columns, targets = _scaled_columns(train.columns)
        if config.method == "series":
            rows = [_series_values(train, i, columns) for i in range(len(train))]
            fitted = [robust_location_scale(values) for values in rows]
            location = np.stack([loc for loc, _ in fitted])
            scale = np.stack([sc for _, sc in fitted])
            ids = list(train.ids)
        elif config.method == "global":
            every = np.concatenate([_series_values(train, i, columns) for i in range(len(train))])
            loc, sc = robust_location_scale(every)
            location, scale, ids = loc[None], sc[None], [None]
        else:
            location = np.zeros((1, len(columns)))
            scale = np.ones((1, len(columns)))
            ids = [None]
        return cls(config, columns, targets, ids, location, scale)

    @staticmethod
    def check_table(table: Any, config: ScalingConfig) -> None:
        """Refuse a table the config cannot transform (before anything is trained)."""
        if config.transform == "none" and not config.lags:
            return
        if table.columns.task != "regression" or not table.columns.targets:
            raise ValueError(
                f"transform={config.transform!r}, difference={config.difference}, "
                f"season={config.season} act on regression targets, and {table.source} has "
                f"task {table.columns.task!r} and targets {list(table.columns.targets)}. "
                "Include the target columns in the table (their past is needed to turn "
                "differences back into values), or drop the transform settings."
            )
        _check_domain(table, config)
        short = [
            (table.ids[i], int(length))
            for i, length in enumerate(table.lengths)
            if length <= config.dropped + table.columns.shift
        ]
        if short:
            owner, length = short[0]
            raise ValueError(
                f"series {owner!r} has {length} rows: differencing at lags {list(config.lags)} "
                f"uses its first {config.dropped}, leaving no step with a target. Drop series "
                f"of at most {config.dropped + table.columns.shift} rows or difference less."
            )

    # -- forward: raw -> model space ----------------------------------------------------------

    def transform_table(self, table: Any) -> Any:
        """``table`` with its targets transformed and differenced (the first
        :attr:`ScalingConfig.dropped` rows of each series consumed); not yet scaled."""
        return transform_table(table, self.config)

    def scale_table(self, table: Any) -> Any:
        """``table`` (already transformed) in model space: each series scaled with its own
        statistics; a series not fitted on is scaled from its own rows."""
        features, targets = [], []
        feature_index, target_index = self._indices(table.columns)
        for i in range(len(table)):
            location, scale = self.statistics_for(table, i)
            features.append(
                _scaled(table.features[i], location[feature_index], scale[feature_index])
            )
            if target_index:  # a classifier's labels are not scaled
                targets.append(
                    _scaled(table.targets[i], location[target_index], scale[target_index])
                )
            else:
                targets.append(table.targets[i])
        return dataclasses.replace(table, features=features, targets=targets)

    def encode(self, table: Any) -> Any:
        """Raw table -> model space: :meth:`transform_table` then :meth:`scale_table`."""
        return self.scale_table(self.transform_table(table))

    def statistics_for(self, table: Any, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(location [C], scale [C])`` of series ``index`` of ``table`` (transformed)."""
        if self.config.method != "series":
            return self.location[0], self.scale[0]
        row = self._row_of(table.ids[index])
        if row is not None:
            return self.location[row], self.scale[row]
        # A series the run never saw: its own rows are all it has (its context).
        return robust_location_scale(_series_values(table, index, self.columns))

    def scale_values(
        self, table: Any, index: int, names: Sequence[str], values: np.ndarray
    ) -> np.ndarray:
        """``values [..., K]`` of the columns ``names`` (e.g. known future covariates) scaled
        with the statistics of series ``index`` of the transformed ``table``."""
        location, scale = self.statistics_for(table, index)
        try:
            picked = [self.columns.index(name) for name in names]
        except ValueError:
            raise ValueError(
                f"columns {list(names)} are not all among the scaled columns {list(self.columns)}."
            ) from None
        return _scaled(np.asarray(values), location[picked], scale[picked])

    def fitted_on(self, series_id: Any) -> bool:
        return self.config.method != "series" or self._row_of(series_id) is not None

    def row_of(self, series_id: Any) -> int | None:
        """The row of :attr:`location` / :attr:`scale` fitted on ``series_id`` (matched as
        the table reads it or by its text, so ``"7"`` and ``7`` name one series), or None."""
        return self._row_of(series_id)

    # -- backward: model space -> raw units ---------------------------------------------------

    def decode_predictions(self, raw: Any, index: int, outputs: np.ndarray) -> np.ndarray:
        """One-step predictions back to raw units.

        Args:
            raw: the *raw* table the predictions were made from (not transformed).
            index: which of its series.
            outputs: ``[L_i - dropped, O]`` model outputs for that series' transformed rows
                (row j read the features of raw row ``j + dropped``).

        Returns:
            ``[L_i, O]``: row t predicts the targets at raw row ``t + shift`` (as the model
            output does); the first ``dropped`` rows are NaN (differencing had no past there).
        """
        config = self.config
        dropped = config.dropped
        length = len(raw.features[index])
        outputs = np.asarray(outputs, dtype=np.float64)
        expected = (length - dropped, len(self.targets))
        if outputs.shape != expected:
            raise ValueError(
                f"outputs for series {raw.ids[index]!r} must have shape {expected} ([rows after "
                f"differencing, targets]); received {outputs.shape}."
            )
        location, scale = self._target_statistics(raw, index)
        z = outputs * scale + location
        result = np.full((length, len(self.targets)), np.nan)
        if config.lags:
            history = _forward(self._target_values(raw, index), config.transform)
            shift = raw.columns.shift
            coefficients = difference_coefficients(config.lags)
            # raw row t = j + dropped predicts w[t + shift] = z - sum_k c_k w[t + shift - k];
            # every w needed is an actual past value, known up to row t (shift >= 1) or t - 1.
            for j in range(len(z)):
                at = j + dropped + shift
                if at - 1 >= len(history):
                    continue  # shift > 1 at the end: the values in between are not known yet
                past = sum(coefficients[k] * history[at - k] for k in range(1, len(coefficients)))
                result[j + dropped] = z[j] - past
        else:
            result[dropped:] = z
        return _untransform(result, config.transform)

    def decode_forecast(self, raw: Any, index: int, outputs: np.ndarray) -> np.ndarray:
        """A forecast ``[H, O]`` in model space back to raw units, the differences integrated
        from the end of series ``index`` of the raw table (the forecast's context)."""
        config = self.config
        outputs = np.asarray(outputs, dtype=np.float64)
        if outputs.ndim != 2 or outputs.shape[1] != len(self.targets):
            raise ValueError(
                f"forecast for series {raw.ids[index]!r} must have shape [horizon, "
                f"{len(self.targets)}]; received {outputs.shape}."
            )
        location, scale = self._target_statistics(raw, index)
        z = outputs * scale + location
        order = config.dropped
        values = self._target_values(raw, index)
        return inverse_transform(z, values[len(values) - order :], config)

    # -- storage ------------------------------------------------------------------------------

    def save(self, run_dir: str | os.PathLike[str]) -> None:
        """Write ``scaling.json`` (settings, columns, ids) and ``scaling.safetensors``."""
        import torch
        from safetensors.torch import save_file

        run = Path(run_dir)
        run.mkdir(parents=True, exist_ok=True)
        document = {
            "format": _FORMAT,
            "config": self.config.to_dict(),
            "columns": list(self.columns),
            "targets": list(self.targets),
            "ids": self.ids,
        }
        text = json.dumps(document, indent=1)  # fails here, before any write, on odd ids
        tensors = {
            "location": torch.from_numpy(np.ascontiguousarray(self.location)),
            "scale": torch.from_numpy(np.ascontiguousarray(self.scale)),
        }
        tmp = run / (SCALING_FILE + ".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, run / SCALING_FILE)
        tmp = run / (SCALING_JSON + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, run / SCALING_JSON)

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> Scaling | None:
        """The scaling saved in ``run_dir``, or ``None`` for a run without one (older runs
        were normalised in the model only)."""
        from safetensors.torch import load_file

        path = Path(run_dir) / SCALING_JSON
        if not path.is_file():
            return None
        document = json.loads(path.read_text())
        if document.get("format") != _FORMAT:
            raise ValueError(f"{path} has format {document.get('format')!r}; expected {_FORMAT!r}.")
        tensors = load_file(str(Path(run_dir) / SCALING_FILE))
        return cls(
            ScalingConfig.from_dict(document["config"]),
            tuple(document["columns"]),
            tuple(document["targets"]),
            list(document["ids"]),
            tensors["location"].numpy().astype(np.float64),
            tensors["scale"].numpy().astype(np.float64),
        )

    def describe(self) -> dict[str, Any]:
        """For run metadata and messages."""
        return {**self.config.to_dict(), "series_fitted": len(self.ids)}

    # -- helpers ------------------------------------------------------------------------------

    def _row_of(self, series_id: Any) -> int | None:
        lookup: dict[tuple[str, Any], int] | None = getattr(self, "_lookup", None)
        if lookup is None:
            # Ids come back from JSON as str/int/float; match them as the table reads them,
            # and by their text form so "7" and 7 name the same series.
            lookup = {}
            for position, key in enumerate(self.ids):
                lookup.setdefault(("value", key), position)
                lookup.setdefault(("text", str(key)), position)
            object.__setattr__(self, "_lookup", lookup)
        found = lookup.get(("value", series_id))
        if found is None:
            found = lookup.get(("text", str(series_id)))
        if found is None and isinstance(series_id, str):
            # A run trained before ids kept their text read "001" as the number 1: its ids
            # are numbers, and the text names one by its value
            try:
                number = float(series_id)
            except ValueError:
                return None
            if number.is_integer():
                found = lookup.get(("value", int(number)))
            found = found if found is not None else lookup.get(("value", number))
        return found

    def _indices(self, columns: Any) -> tuple[list[int], list[int]]:
        """Positions of ``columns``' features and scaled targets (none for a classifier)."""
        try:
            features = [self.columns.index(name) for name in columns.features]
            targets = [self.columns.index(name) for name in _scaled_columns(columns)[1]]
        except ValueError:
            raise ValueError(
                f"the table has features {list(columns.features)} and targets "
                f"{list(columns.targets)}; this scaling was fitted on columns "
                f"{list(self.columns)}."
            ) from None
        return features, targets

    def _target_statistics(self, raw: Any, index: int) -> tuple[np.ndarray, np.ndarray]:
        target_index = [self.columns.index(name) for name in self.targets]
        if self.config.method == "series" and not self.fitted_on(raw.ids[index]):
            transformed = self.transform_table(raw.select([index]))
            location, scale = self.statistics_for(transformed, 0)
        else:
            location, scale = self.statistics_for(raw, index)
        return location[target_index], scale[target_index]

    def _target_values(self, raw: Any, index: int) -> np.ndarray:
        """``[L_i, O]`` float64: the raw actual target values of a series."""
        if raw.targets[index].shape[1] != len(self.targets):
            raise ValueError(
                f"the run transforms its targets {list(self.targets)}, so turning its outputs "
                f"back into values needs their past; {raw.source} was read without them. "
                "Include the target columns."
            )
        return np.asarray(raw.targets[index], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Table-level transforms (module functions: they need no fitted statistics)
# --------------------------------------------------------------------------------------------


def transform_table(table: Any, config: ScalingConfig) -> Any:
    """Targets (and the feature columns that are targets) log-transformed and differenced;
    every column of each series loses its first ``config.dropped`` rows, times too."""
    if config.transform == "none" and not config.lags:
        return table
    Scaling.check_table(table, config)
    columns = table.columns
    order = config.dropped
    feature_targets = [
        (columns.features.index(name), j)
        for j, name in enumerate(columns.targets)
        if name in columns.features
    ]
    features, targets, times = [], [], []
    for i in range(len(table)):
        z = forward_transform(table.targets[i], config)  # [L - order, O]
        x = table.features[i][order:].astype(np.float64)
        for f, j in feature_targets:
            x[:, f] = z[:, j]
        features.append(x.astype(np.float32))
        targets.append(z.astype(np.float32))
        times.append(table.times[i][order:])
    return dataclasses.replace(table, features=features, targets=targets, times=times)


def forward_transform(values: np.ndarray, config: ScalingConfig) -> np.ndarray:
    """``[L, O]`` raw values -> ``[L - dropped, O]`` transformed and differenced (float64).

    ``z[t] = sum_k c_k w[t + order - k]`` with ``w`` the log/log1p of the values.
    """
    w = _forward(np.asarray(values, dtype=np.float64), config.transform)
    coefficients = difference_coefficients(config.lags)
    order = len(coefficients) - 1
    length = len(w) - order
    z = np.zeros((max(length, 0), *w.shape[1:]))
    for k, c in enumerate(coefficients):
        if c and length > 0:
            z += c * w[order - k : order - k + length]
    return z


def inverse_transform(z: np.ndarray, head: np.ndarray, config: ScalingConfig) -> np.ndarray:
    """The exact inverse of :func:`forward_transform`: ``head`` holds the ``dropped`` raw
    values before ``z`` begins (``[dropped, O]``); returns the ``[len(z), O]`` raw values that
    follow them. Each value is integrated from the ones before it, so a forecast ``z`` is
    integrated from the end of its context (``head`` = the context's last raw values)."""
    coefficients = difference_coefficients(config.lags)
    order = len(coefficients) - 1
    head = np.asarray(head, dtype=np.float64)
    if len(head) != order:
        raise ValueError(
            f"head must hold the {order} value(s) before z (differencing lags "
            f"{list(config.lags)}); received {len(head)}."
        )
    path = list(_forward(head, config.transform))
    for step in np.asarray(z, dtype=np.float64):
        past = sum(coefficients[k] * path[-k] for k in range(1, order + 1))
        path.append(step - past)
    result = np.asarray(path[order:]).reshape(np.shape(z))
    return _untransform(result, config.transform)


def _forward(values: np.ndarray, kind: str) -> np.ndarray:
    if kind == "log":
        return np.log(values)
    if kind == "log1p":
        return np.log1p(values)
    return values


def _untransform(values: np.ndarray, kind: str) -> np.ndarray:
    if kind == "log":
        return np.exp(values)
    if kind == "log1p":
        return np.expm1(values)
    return values


def _check_domain(table: Any, config: ScalingConfig) -> None:
    if config.transform == "none":
        return
    bound, strict = (0.0, True) if config.transform == "log" else (0.0, False)
    for i in range(len(table)):
        values = table.targets[i]
        if not values.shape[1]:
            values = table.features[i]
        bad = values <= bound if strict else values < bound
        if bad.any():
            row, column = np.argwhere(bad)[0]
            owner = f"series {table.ids[i]!r}" if table.columns.id else "the series"
            need = "> 0" if strict else ">= 0"
            hint = "log1p (values >= 0)" if config.transform == "log" else "no transform"
            raise ValueError(
                f"transform={config.transform!r} needs every target value {need}; {owner} "
                f"holds {float(values[row, column])!r} at its row {int(row)}. Use {hint}, or "
                "shift the data."
            )


def _scaled_columns(columns: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names = list(columns.features)
    if columns.task == "regression":
        names += [name for name in columns.targets if name not in names]
        return tuple(names), tuple(columns.targets)
    return tuple(names), ()


def _series_values(table: Any, index: int, columns: Sequence[str]) -> np.ndarray:
    """``[L_i, C]`` float64 values of ``columns`` of one series (a target that is also a
    feature is taken from the targets when present: they hold its values one ``shift`` later,
    which the features lack at the end)."""
    names = table.columns
    parts = []
    for name in columns:
        if name in names.targets and table.targets[index].shape[1] and names.task == "regression":
            parts.append(table.targets[index][:, names.targets.index(name)])
        elif name in names.features:
            parts.append(table.features[index][:, names.features.index(name)])
        else:
            raise ValueError(
                f"column {name!r} is not among the table's features {list(names.features)} "
                f"or targets {list(names.targets)}."
            )
    return np.stack(parts, axis=-1).astype(np.float64)


def _scaled(values: np.ndarray, location: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return ((values.astype(np.float64) - location) / scale).astype(values.dtype)
