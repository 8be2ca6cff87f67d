"""Honest selection: the network against cheap statistical baselines on the same held-out
windows, and the choice (or combination) a run then applies to every answer.

A network that does not beat seasonal naive on data like the user's should not be served
alone. ``train`` therefore scores, on rolling origins at the end of every validation series
(warm: each window's forecast starts from the state after the series' actual history, as
``evaluate`` does), the network trained on the training part and the baselines of
:mod:`seqstate.recipe.baselines` fitted on the same history::

    series i:  ... train rows ... | c_i ..... o_1 .. o_2 .. ... o_K ...... L_i
                                  | validation tail: windows of H steps from o_k, the last
                                  | ending at L_i, each half a window after the one before
    candidates: network, seasonal naive at each calendar season, damped ETS, Theta, and the
    equal combinations ETS+Theta, seasonal naive+ETS+Theta, network+ETS, network+ETS+Theta,
    network+seasonal naive+ETS+Theta

MASE (scaled by the in-sample seasonal naive before c_i) is averaged over targets, then over
each series' windows weighed by recency (:data:`RECENCY`: a series' data nearest the forecast
says most about it), then over series. The choice (:func:`choose`) shrinks toward the safe
answer: seasonal naive unless a candidate beats it clearly (by a margin on the mean and on most
windows, both weighed so); a candidate with the network must also beat the best statistical
candidate so; among candidates the evidence cannot tell apart, the combination with the most
members; and the choice must also not lose to seasonal naive on each series' most recent
window, or seasonal naive stays (a lead that reversed at the end of the data is the mark of a
change of regime the earlier windows cannot show); and its lead over seasonal naive must be at
least one standard error of the paired (series, window) differences (:data:`STANDARD_ERRORS`),
or seasonal naive stays (a lead the windows' spread can explain is not evidence). Its
weights are stored in the run (``metadata["selection"]``) and the run's
step function applies them in ``predict``, ``forecast``, ``evaluate``, ``backtest`` and
serving: the baselines run as streams on the context each call gets (their coefficients
chosen on that context), the network as trained.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from seqstate.recipe.baselines import (
    baseline_forecasts,
    baseline_predictions,
    describe,
    origin_forecasts,
)
from seqstate.recipe.metrics import series_metrics

__all__ = [
    "MARGIN",
    "MIN_PAIRS",
    "NETWORK",
    "RECENCY",
    "STANDARD_ERRORS",
    "TOLERANCE",
    "Evidence",
    "Selection",
    "candidate_weights",
    "choose",
    "hedged",
    "merge_selections",
    "validate_selection",
    "window_weights",
]

NETWORK = "network"
#: Rolling origins per series, half a window apart, ending with its last whole window.
MAX_WINDOWS = 6
#: A candidate must beat seasonal naive by this share of its mean validation MASE (and on at
#: least half the windows) to be chosen over it: validation on a few windows is noisy, and a
#: forecast worse than seasonal naive is the failure users notice.
MARGIN = 0.05
#: Candidates whose mean is within this share of the best are not told apart by the evidence;
#: the one with the most members is chosen among them.
TOLERANCE = 0.05
#: A series' windows are weighed by recency: each window half a window (one stride) older than
#: the next weighs this factor times as much. With 6 windows the last carries about a third
#: of the series' weight and the oldest a sixth of the last's, so the evidence leans to the
#: data nearest the forecast (where a change of regime shows first) without resting on one
#: window.
RECENCY = 0.7
#: Evidence from fewer (series, window) pairs than this (one series with one window) cannot
#: tell a real lead from one lucky window: the choice is then hedged half and half with
#: seasonal naive (:func:`hedged`), whose MAE is at most the mean of the two MAEs, so the loss
#: to seasonal naive is at most half the chosen candidate's.
MIN_PAIRS = 2
#: The chosen candidate's lead over seasonal naive (weighted mean over (series, window) pairs of
#: the difference of their MASEs) must be at least this many standard errors of that mean, or
#: seasonal naive stays: the one-standard-error rule of model selection (prefer the simpler
#: model unless the other is better by more than the noise of the estimate). The margin and
#: the share of windows say how large and how broad a lead is; neither says whether the
#: windows' spread could explain it (a lead of 23% from one window far ahead and others mixed).
#: Windows of a series that overlap are counted as independent here: the standard error is
#: then smaller and the check looser than with the overlap counted.
STANDARD_ERRORS = 1.0


def hedged(weights: dict[str, float], reference: str) -> dict[str, float]:
    """``weights`` at half their weight, the other half on ``reference``."""
    out = {name: weight / 2 for name, weight in weights.items()}
    out[reference] = out.get(reference, 0.0) + 0.5
    return out


def window_weights(count: int) -> np.ndarray:
    """The weights ``[count]`` of one series' windows, oldest first, summing to 1: each is
    :data:`RECENCY` times the next one's."""
    if count < 1:
        raise ValueError(f"count must be at least 1; received {count}")
    raw = RECENCY ** np.arange(count - 1, -1, -1, dtype=np.float64)
    return raw / raw.sum()


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
    reason: str = ""

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
            reason=str(data.get("reason", "")),
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
            f"validation ({self.series} series, up to {self.windows} window(s) of {self.horizon} "
            f"steps at the end, warm; mean MASE, recent windows weighing more, season "
            f"{self.season}): {shown}"
        ]
        if self.network_only:
            lines.append(
                "selected: the network alone"
                + (f" ({self.reason})" if self.reason else " (it beat the baselines on validation)")
            )
        else:
            parts = " + ".join(f"{w:.2g} x {_label(name)}" for name, w in self.weights.items())
            why = self.reason or (
                "the network did not beat it on validation"
                if NETWORK not in self.weights
                else "the combination beat the network alone on validation"
            )
            score = self.scores.get(self.chosen)
            versus = (
                f"MASE {score:.3f} vs the network's {network:.3f}; "
                if score is not None and math.isfinite(score)
                else ""
            )
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


def candidate_weights(
    seasons: Sequence[int], naive: int | None = None
) -> dict[str, dict[str, float]]:
    """Candidate label -> weights, for a calendar with ``seasons`` (``()``: none).

    The network, seasonal naive at each season, damped ETS and Theta at the main season, and
    equal-weight combinations: of the statistical models (ETS + Theta, and with seasonal naive
    at season ``naive``, the main one by default) and of the network with them. Combinations
    are the robust choice forecasting practice knows (the M3/M4 lesson): their errors
    partly cancel, and they are rarely far from their best member.
    """
    seasons = tuple(seasons) or (1,)
    main = seasons[0]
    ets, theta = f"ets_{main}", f"theta_{main}"
    snaive = f"seasonal_naive_{naive if naive is not None else main}"
    candidates: dict[str, dict[str, float]] = {NETWORK: {NETWORK: 1.0}}
    for m in seasons:
        candidates[f"seasonal_naive_{m}"] = {f"seasonal_naive_{m}": 1.0}
    candidates[ets] = {ets: 1.0}
    candidates[theta] = {theta: 1.0}
    for members in (
        (ets, theta),
        (snaive, ets, theta),
        (NETWORK, ets),
        (NETWORK, ets, theta),
        (NETWORK, snaive, ets, theta),
    ):
        candidates["+".join(members)] = {name: 1.0 / len(members) for name in members}
    return candidates


@dataclasses.dataclass(frozen=True)
class Evidence:
    """One candidate on the validation windows.

    Attributes:
        score: its mean MASE: over series, of each series' recency-weighted mean over its
            windows (:data:`RECENCY`).
        units: its MASE on each (series, window) pair, in the same order for every candidate
            (NaN where it could not be scored).
        weights: each pair's weight in :meth:`wins` (the same for every candidate; ``None``:
            equal weights).
        recent: its mean MASE over series on each series' most recent window (NaN: not
            known, and :func:`choose` does not check it).
    """

    score: float
    units: tuple[float, ...]
    weights: tuple[float, ...] | None = None
    recent: float = math.nan

    def __post_init__(self) -> None:
        if self.weights is not None and len(self.weights) != len(self.units):
            raise ValueError(f"weights has {len(self.weights)} values for {len(self.units)} units")

    def wins(self, other: Evidence) -> float:
        """The weighted share of the pairs where this MASE is lower than ``other``'s (ties:
        half)."""
        weights = self.weights or (1.0,) * len(self.units)
        total = won = 0.0
        for a, b, w in zip(self.units, other.units, weights, strict=True):
            if math.isfinite(a) and math.isfinite(b):
                total += w
                won += w * (1.0 if a < b else 0.5 if a == b else 0.0)
        return won / total if total > 0 else 0.5

    def lead(self, other: Evidence) -> tuple[float, float]:
        """(mean, standard error) of ``other``'s MASE minus this one's over the pairs both
        scored, weighed by :attr:`weights` (normalised to sum to 1 over those pairs).

        The standard error is that of a weighted mean of independent differences:
        ``sqrt(v * sum(w**2))`` with ``v = sum(w * (d - mean)**2) / (1 - sum(w**2))`` the
        unbiased weighted variance; NaN when fewer than two pairs carry weight (no spread to
        measure), and the mean NaN too when none does."""
        weights = self.weights or (1.0,) * len(self.units)
        mine = np.asarray(self.units, dtype=np.float64)
        theirs = np.asarray(other.units, dtype=np.float64)
        if mine.shape != theirs.shape:
            raise ValueError(f"other has {theirs.size} units for {mine.size}")
        scored = np.isfinite(mine) & np.isfinite(theirs)
        w = np.asarray(weights, dtype=np.float64)[scored]
        if w.sum() <= 0:
            return math.nan, math.nan
        w = w / w.sum()
        difference = (theirs - mine)[scored]
        mean = float(np.sum(w * difference))
        squares = float(np.sum(w * w))
        if squares >= 1.0 - 1e-12:
            return mean, math.nan
        variance = float(np.sum(w * (difference - mean) ** 2)) / (1.0 - squares)
        return mean, math.sqrt(variance * squares)

    def beats(self, other: Evidence) -> bool:
        """Clearly better: by :data:`MARGIN` on the mean and on more than half the pairs."""
        return self.score <= (1.0 - MARGIN) * other.score and self.wins(other) > 0.5


def _pick(group: dict[str, Evidence], candidates: dict[str, dict[str, float]]) -> str:
    """Among ``group``, those within :data:`TOLERANCE` of the best mean cannot be told apart:
    the one with the most members (a combination hedges its members' errors), then the
    lower mean."""
    best = min(e.score for e in group.values())
    near = [label for label, e in group.items() if e.score <= best * (1.0 + TOLERANCE)]
    return min(near, key=lambda k: (-len(candidates[k]), group[k].score, k))


def choose(
    evidence: dict[str, Evidence], candidates: dict[str, dict[str, float]], reference: str
) -> tuple[str, str]:
    """(the chosen label, why), by a rule that prefers the safe choice unless the evidence is
    clear (:meth:`Evidence.beats`: by :data:`MARGIN` on the mean and on more than half the
    (series, window) pairs):

    1. the statistical candidates (no network) that beat ``reference`` (seasonal naive), and
       the reference itself, are eligible; :func:`_pick` chooses among them;
    2. a candidate with the network must beat the reference *and* the best eligible
       statistical candidate: the network validated is trained without the validation rows,
       the one served is refit on every row, and a neural fit varies more from seed to seed
       and from fit to refit than a statistical one, so its edge must be clear twice;
       :func:`_pick` chooses among those that do;
    3. the choice must not do worse than ``reference`` on each series' most recent window
       (:attr:`Evidence.recent`, where both are known), or ``reference`` stays: the windows
       nearest the forecast are where a change of regime shows first, and a lead built on
       older windows that reversed there is the evidence the earlier rules cannot weigh;
    4. the choice's lead over ``reference`` (:meth:`Evidence.lead`) must be at least
       :data:`STANDARD_ERRORS` standard errors, where the error is known (two pairs or more),
       or ``reference`` stays: a lead inside the noise of the windows is not one to serve.
    """
    base = evidence[reference]
    stats = {
        label: e
        for label, e in evidence.items()
        if NETWORK not in candidates[label] and (label == reference or e.beats(base))
    }
    top = min(stats, key=lambda k: (stats[k].score, k != reference))
    networks = {
        label: e
        for label, e in evidence.items()
        if NETWORK in candidates[label] and e.beats(base) and e.beats(stats[top])
    }
    group = networks or stats
    chosen = _pick(group, candidates)
    e = evidence[chosen]
    if chosen == reference:
        why = f"nothing beat {_label(reference)} by {MARGIN:.0%} on the mean and on most windows"
    else:
        why = (
            f"beat {_label(reference)} {base.score:.3f} by {1 - e.score / base.score:.0%} on the "
            f"mean and on {e.wins(base):.0%} of the windows"
        )
    if networks and top != reference:
        why += (
            f", and the best statistical candidate ({top} {stats[top].score:.3f}) on "
            f"{e.wins(stats[top]):.0%}"
        )
    elif not networks and any(
        NETWORK in candidates[k] and v.beats(base) for k, v in evidence.items()
    ):
        why += (
            f"; no candidate with the network beat the best statistical one ({top}) by "
            f"{MARGIN:.0%} on the mean and on most windows"
        )
    best = min(group, key=lambda k: group[k].score)
    if best != chosen:
        why += (
            f"; within {TOLERANCE:.0%} of {best} {group[best].score:.3f}, the combination with "
            "more members is preferred"
        )
    if chosen != reference and e.recent > base.recent:  # False where either is NaN
        why = (
            f"{chosen} {why}, but did worse on the most recent window of the series "
            f"({e.recent:.3f} vs {base.recent:.3f}): {_label(reference)} is kept"
        )
        chosen = reference
    if chosen != reference:
        lead, error = evidence[chosen].lead(base)
        if lead < STANDARD_ERRORS * error:  # False where the error is NaN
            why = (
                f"{chosen} {why}, but the lead of {chosen} over {_label(reference)} "
                f"({lead:.3f} MASE) is under {STANDARD_ERRORS:g} standard error of the paired "
                f"window differences ({error:.3f}): {_label(reference)} is kept"
            )
            chosen = reference
    return chosen, why


def validate_selection(
    forecaster: Any,
    table: Any,
    cuts: Sequence[int],
    *,
    seasons: Sequence[int],
) -> Selection | None:
    """Score the network (``forecaster``, trained without the rows from ``cuts`` on) and the
    baselines on rolling origins at the end of each series of the raw ``table``; choose by
    :func:`choose`.

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
        # origins every half window back from the last whole window, all inside the tail
        stride = max(1, steps[i] // 2)
        count = max(1, min(MAX_WINDOWS, (tail - steps[i]) // stride + 1))
        last = int(length) - steps[i]
        windows[i] = [last - j * stride for j in range(count - 1, -1, -1)]
    if not windows:
        return None
    members = sorted({n for w in candidate_weights(seasons).values() for n in w} - {NETWORK})
    most = max(len(w) for w in windows.values())
    keys = sorted(windows)
    # paths[i][j][name]: member name's [H_i, O] forecast of series i's window j; actual[i][j]
    paths: dict[int, list[dict[str, np.ndarray]]] = {i: [{} for _ in windows[i]] for i in keys}
    actuals = {i: [table.targets[i][o : o + steps[i]] for o in windows[i]] for i in keys}
    # The baselines: one pass of each stream over every series, forecasting at each origin.
    features = list(table.columns.features)
    columns = [features.index(name) for name in table.columns.targets]
    for name in members:
        per_target = [
            origin_forecasts(
                name,
                [np.asarray(table.features[i][:, at], dtype=np.float64) for i in keys],
                [windows[i] for i in keys],
                [steps[i] for i in keys],
            )
            for at in columns
        ]
        for k, i in enumerate(keys):
            for j in range(len(windows[i])):
                paths[i][j][name] = np.stack([target[k][j] for target in per_target], axis=-1)
    # The network: series whose window j has the same length run as one batch.
    for j in range(most):
        chosen = [i for i in keys if j < len(windows[i])]
        origins = [0] * len(table)
        for i in chosen:
            origins[i] = windows[i][j]
        by_length: dict[int, list[int]] = {}
        for i in chosen:
            by_length.setdefault(steps[i], []).append(i)
        for length, group in by_length.items():
            network = horizon_forecasts(forecaster, table, group, origins, length, feed)
            for i in group:
                paths[i][j][NETWORK] = np.asarray(network[i])

    def errors(weights: dict[str, float]) -> dict[int, list[float]]:
        """Series -> its windows' MASE (mean over targets) of the combination ``weights``."""
        out: dict[int, list[float]] = {}
        for i in windows:
            scale_history = table.targets[i][: int(cuts[i])]
            for window, actual in zip(paths[i], actuals[i], strict=True):
                path = sum(w * window[name] for name, w in weights.items())
                mase = [
                    series_metrics(
                        actual[:, o], np.asarray(path)[:, o], scale_history[:, o], season
                    )["mase"]
                    for o in range(actual.shape[1])
                ]
                out.setdefault(i, []).append(float(np.mean(mase)))
        return out

    recency = {i: window_weights(len(windows[i])) for i in keys}

    def mean_score(per_series: dict[int, list[float]]) -> float:
        values = [float(np.average(v, weights=recency[i])) for i, v in per_series.items()]
        finite = [v for v in values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan

    def recent_score(per_series: dict[int, list[float]]) -> float:
        finite = [v[-1] for v in per_series.values() if math.isfinite(v[-1])]
        return float(np.mean(finite)) if finite else math.nan

    # seasonal naive in the combinations: the calendar season that validates best
    naive_scores = {m: mean_score(errors({f"seasonal_naive_{m}": 1.0})) for m in seasons or (1,)}
    finite_naive = {m: v for m, v in naive_scores.items() if math.isfinite(v)}
    naive = min(finite_naive, key=lambda m: (finite_naive[m], m)) if finite_naive else season
    candidates = candidate_weights(seasons, naive)
    per_series = {label: errors(weights) for label, weights in candidates.items()}
    means = {label: mean_score(values) for label, values in per_series.items()}
    reference = f"seasonal_naive_{season}"
    if not math.isfinite(means.get(NETWORK, math.nan)) or not math.isfinite(means[reference]):
        return None
    # a pair's weight in wins: its share of its series' weight, each series weighing the same
    pair_weights = tuple(float(w) for i in keys for w in recency[i])
    evidence = {}
    for label, values in per_series.items():
        if not math.isfinite(means[label]):
            continue
        units = tuple(v for i in keys for v in values.get(i, [math.nan] * len(windows[i])))
        evidence[label] = Evidence(means[label], units, pair_weights, recent_score(values))
    best, why = choose(evidence, candidates, reference)
    weights = dict(candidates[best])
    pairs = sum(len(v) for v in windows.values())
    if best != reference and pairs < MIN_PAIRS:
        weights = hedged(weights, reference)
        best = f"({best})+{reference}"
        means[best] = mean_score(errors(weights))
        why += (
            f"; on {pairs} (series, window) pair(s) the evidence is too thin to drop "
            f"{_label(reference)}: half the weight stays on it"
        )
    return Selection(
        weights=weights,
        chosen=best,
        scores=means,
        season=season,
        horizon=horizon,
        windows=most,
        series=len(windows),
        reason=why,
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
        reason=first.reason if len(labels) == 1 else "each member's own choice, averaged",
    )
