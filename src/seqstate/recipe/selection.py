"""Honest selection: the network against cheap statistical baselines on the same held-out
windows, and the choice (or combination) a run then applies to every answer.

A network that does not beat seasonal naive on data like the user's should not be served
alone. ``train`` therefore scores, on the last windows of every validation series (warm: each
window's forecast starts from the state after the series' actual history, as ``evaluate``
does), the network trained on the training part and the baselines of
:mod:`seqstate.recipe.baselines` fitted on the same history::

    series i:  ... train rows ... | c_i ........ o_1 ...... o_2 ...... L_i
                                  | validation tail: origins o_j = L_i - j*H (the last windows)
    candidates: network, seasonal naive at each calendar season, damped ETS, and the equal
    combinations network+ETS and network+ETS+seasonal naive

MASE (scaled by the in-sample seasonal naive before c_i) is averaged over windows and targets
per series, then over series; the candidate with the lowest mean wins. Its weights are stored
in the run (``metadata["selection"]``) and :class:`seqstate.recipe.run_forecaster.RunForecaster`
applies them in ``predict``, ``forecast``, ``evaluate`` and ``backtest``: the baselines run on
the context each call gets (their coefficients chosen on that context), the network as trained.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from seqstate.recipe.baselines import baseline_forecasts, baseline_predictions, describe
from seqstate.recipe.metrics import series_metrics

__all__ = [
    "NETWORK",
    "Selection",
    "candidate_weights",
    "merge_selections",
    "validate_selection",
]

NETWORK = "network"
MAX_WINDOWS = 3  # origins per series at the end of its validation tail


@dataclasses.dataclass(frozen=True)
class Selection:
    """What the run answers with: ``weights`` (member -> weight; ``"network"`` is the trained
    model, the others name baselines like ``"seasonal_naive_12"``), and how it was chosen.

    Attributes:
        weights: the chosen combination; weights sum to 1.
        chosen: the winning candidate's label.
        scores: each candidate's mean validation MASE (NaN where it could not be scored).
        season: the MASE season; horizon, windows, series: what was scored.
    """

    weights: dict[str, float]
    chosen: str
    scores: dict[str, float]
    season: int
    horizon: int
    windows: int
    series: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Selection:
        return cls(
            weights={str(k): float(v) for k, v in data["weights"].items()},
            chosen=str(data["chosen"]),
            scores={str(k): float(v) for k, v in data.get("scores", {}).items()},
            season=int(data.get("season", 1)),
            horizon=int(data.get("horizon", 0)),
            windows=int(data.get("windows", 0)),
            series=int(data.get("series", 0)),
        )

    @property
    def network_only(self) -> bool:
        return set(self.weights) == {NETWORK}

    def lines(self) -> list[str]:
        """The summary ``train`` prints."""
        shown = ", ".join(
            f"{label} {score:.3f}" for label, score in sorted(self.scores.items(), key=_order)
        )
        network = self.scores.get(NETWORK, math.nan)
        lines = [
            f"validation ({self.series} series, last {self.windows} window(s) of {self.horizon} "
            f"steps, warm; mean MASE, season {self.season}): {shown}"
        ]
        if self.network_only:
            lines.append("selected: the network alone (it beat the baselines on validation)")
        else:
            parts = " + ".join(f"{w:.2g} x {_label(name)}" for name, w in self.weights.items())
            why = (
                "the network did not beat it on validation"
                if NETWORK not in self.weights
                else "the combination beat the network alone on validation"
            )
            score = self.scores.get(self.chosen)
            versus = f"MASE {score:.3f} vs the network's {network:.3f}; " if score else ""
            lines.append(
                f"selected: {parts} ({versus}{why}); predict, forecast, evaluate and backtest "
                "answer with it"
            )
        return lines

    def combine(self, network: Sequence[np.ndarray], members: dict[str, list[np.ndarray]]) -> list:
        """The weighted sum, per series, of ``network`` and the baselines' arrays (same
        shapes); where a baseline has no value (NaN) the network's stands in."""
        combined = []
        for i, own in enumerate(network):
            total = np.zeros_like(own, dtype=np.float64)
            for name, weight in self.weights.items():
                part = own if name == NETWORK else members[name][i]
                total += weight * np.where(np.isfinite(part), part, own)
            combined.append(total)
        return combined

    def forecast(self, network: Sequence[np.ndarray], table: Any, horizon: int) -> list:
        """Apply the selection to the network's ``[H, O]`` forecasts after ``table``'s series."""
        if self.network_only:
            return list(network)
        members = {
            name: _per_target(table, lambda h, n=name: baseline_forecasts(n, h, horizon))
            for name in self.weights
            if name != NETWORK
        }
        return self.combine(network, members)

    def predict(self, network: Sequence[np.ndarray], table: Any) -> list:
        """Apply the selection to the network's one-step ``[L_i, O]`` predictions."""
        if self.network_only:
            return list(network)
        members = {
            name: _per_target(table, lambda h, n=name: baseline_predictions(n, h))
            for name in self.weights
            if name != NETWORK
        }
        return self.combine(network, members)


def _order(item: tuple[str, float]) -> tuple[int, float]:
    return (0 if item[0] == NETWORK else 1, item[1] if math.isfinite(item[1]) else math.inf)


def _label(name: str) -> str:
    return name if name == NETWORK else describe(name)


def _per_target(table: Any, run: Any) -> list[np.ndarray]:
    """One ``[*, O]`` array per series from ``run(histories of one target) -> [n, *]``.

    The histories are read from the feature columns that hold the targets (a selection is
    only made for runs whose targets are inputs), so tables read without targets work too."""
    features = list(table.columns.features)
    columns = []
    for name in table.columns.targets:
        at = features.index(name)
        histories = [np.asarray(f[:, at], dtype=np.float64) for f in table.features]
        result = run(histories)
        columns.append([np.asarray(r) for r in result])
    return [np.stack([c[i] for c in columns], axis=-1) for i in range(len(table))]


def candidate_weights(seasons: Sequence[int]) -> dict[str, dict[str, float]]:
    """Candidate label -> weights, for a calendar with ``seasons`` (``()``: none)."""
    seasons = tuple(seasons) or (1,)
    ets = f"ets_{seasons[0]}"
    candidates: dict[str, dict[str, float]] = {NETWORK: {NETWORK: 1.0}}
    for m in seasons:
        candidates[f"seasonal_naive_{m}"] = {f"seasonal_naive_{m}": 1.0}
    candidates[ets] = {ets: 1.0}
    candidates[f"{NETWORK}+{ets}"] = {NETWORK: 0.5, ets: 0.5}
    naive = f"seasonal_naive_{seasons[0]}"
    candidates[f"{NETWORK}+{ets}+{naive}"] = {NETWORK: 1 / 3, ets: 1 / 3, naive: 1 / 3}
    return candidates


def validate_selection(
    forecaster: Any,
    table: Any,
    cuts: Sequence[int],
    *,
    seasons: Sequence[int],
) -> Selection | None:
    """Score the network (``forecaster``, trained without the rows from ``cuts`` on) and the
    baselines on the last windows of each series of the raw ``table``; choose the best.

    Args:
        forecaster: a Forecaster (predict/forecast on raw tables) of the network alone.
        table: the raw validation series, whole.
        cuts: per series, the first row the network was not trained on.
        seasons: the calendar's seasons, shortest first (``()``: none).

    Returns:
        The :class:`Selection`, or None when no series has a window to score or the run
        cannot forecast recursively.
    """
    from seqstate.recipe.forecaster import forecast_columns, horizon_forecasts

    feed = forecast_columns(table.columns)
    if feed is None:
        return None
    season = int(seasons[0]) if len(seasons) else 1
    horizon = 2 * season if season > 1 else 8
    windows: dict[int, list[int]] = {}
    steps: dict[int, int] = {}
    for i, (length, cut) in enumerate(zip(table.lengths.tolist(), cuts, strict=True)):
        tail = int(length) - int(cut)
        if tail < 1 or cut < 2:
            continue
        steps[i] = min(horizon, tail)
        count = max(1, min(MAX_WINDOWS, tail // steps[i]))
        windows[i] = [int(length) - j * steps[i] for j in range(count, 0, -1)]
    if not windows:
        return None
    candidates = candidate_weights(seasons)
    members = sorted({name for w in candidates.values() for name in w if name != NETWORK})
    most = max(len(w) for w in windows.values())
    per_series: dict[str, dict[int, list[float]]] = {label: {} for label in candidates}
    for j in range(most):
        chosen = [i for i in windows if j < len(windows[i])]
        origins = [0] * len(table)
        for i in chosen:
            origins[i] = windows[i][j]
        # Series whose window j has the same length run as one batch.
        by_length: dict[int, list[int]] = {}
        for i in chosen:
            by_length.setdefault(steps[i], []).append(i)
        for length, group in by_length.items():
            network = horizon_forecasts(forecaster, table, group, origins, length, feed)
            history = table.select(group).slice_steps(0, [origins[i] for i in group])
            paths = {
                name: _per_target(history, lambda h, n=name, s=length: baseline_forecasts(n, h, s))
                for name in members
            }
            for position, i in enumerate(group):
                actual = table.targets[i][origins[i] : origins[i] + length]
                scale_history = table.targets[i][: int(cuts[i])]
                for label, weights in candidates.items():
                    path = sum(
                        w * (network[i] if name == NETWORK else paths[name][position])
                        for name, w in weights.items()
                    )
                    errors = [
                        series_metrics(
                            actual[:, o], np.asarray(path)[:, o], scale_history[:, o], season
                        )["mase"]
                        for o in range(actual.shape[1])
                    ]
                    per_series[label].setdefault(i, []).extend(errors)
    means: dict[str, float] = {}
    for label in candidates:
        values = [float(np.mean(v)) for v in per_series[label].values()]
        finite = [v for v in values if math.isfinite(v)]
        means[label] = float(np.mean(finite)) if finite else math.nan
    finite_scores = {k: v for k, v in means.items() if math.isfinite(v)}
    if NETWORK not in finite_scores:
        return None
    best = min(finite_scores, key=lambda k: (finite_scores[k], k != NETWORK))
    return Selection(
        weights=dict(candidates[best]),
        chosen=best,
        scores=means,
        season=season,
        horizon=horizon,
        windows=most,
        series=len(windows),
    )


def merge_selections(selections: Sequence[Selection]) -> Selection | None:
    """One selection for an ensemble: each member validated its own network; their weights
    are averaged (so K seeds that disagree blend, which lowers the variance of the choice)."""
    if not selections:
        return None
    if len(selections) == 1:
        return selections[0]
    weights: dict[str, float] = {}
    for selection in selections:
        for name, weight in selection.weights.items():
            weights[name] = weights.get(name, 0.0) + weight / len(selections)
    labels = {s.chosen for s in selections}
    scores = {
        label: float(np.mean([s.scores.get(label, math.nan) for s in selections]))
        for label in selections[0].scores
    }
    first = selections[0]
    return dataclasses.replace(
        first,
        weights=weights,
        chosen=labels.pop() if len(labels) == 1 else "members' choices averaged",
        scores=scores,
    )
