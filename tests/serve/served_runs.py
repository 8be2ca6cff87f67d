"""Runs of each kind, trained once per test module on tiny tables, with ``seqstate predict``'s
answers: what the server tests stream through real server processes and compare against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from seqstate.cli.dispatch import main

QUIET = ["--epochs", "1", "--hidden-size", "4", "--quiet", "--no-progress", "--seed", "0"]
PLAIN = ["--difference", "0", "--seasonal-difference", "0", "--calendar", "none"]

# kind -> (table, extra train options)
KINDS = {
    "monthly_defaults": ("monthly", []),
    "hourly_calendar_covariate": (
        "hourly",
        ["-f", "value,temp", "--calendar", "hour,weekday", "--seasonal-difference", "24"],
    ),
    "log": ("monthly", ["--transform", "log", *PLAIN]),
    "difference": ("monthly", ["--difference", "1", "--seasonal-difference", "0"]),
    "seeds": ("monthly", ["--seeds", "3", "--difference", "1", "--calendar", "month"]),
    "global": ("monthly", ["--scaling", "global", *PLAIN]),
    # the three the replica tests step through two servers, and a run that samples
    "difference_calendar": ("monthly", ["--difference", "1", "--calendar", "month"]),
    "seeds2": ("monthly", ["--seeds", "2", *PLAIN]),
    "plain": ("monthly", PLAIN),
    "normal": ("monthly", ["--distribution", "normal", *PLAIN]),
    "quantile": ("monthly", ["--distribution", "quantile", *PLAIN]),
}


def tables(root: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    monthly, hourly = [], []
    for i in range(2):
        months = np.arange(40)
        value = 100 * (i + 1) + 10 * np.sin(2 * np.pi * months / 12 + i) + months
        value += rng.random(40)
        times = pd.date_range("2015-01-01", periods=40, freq="MS")
        monthly.append(pd.DataFrame({"id": f"m{i}", "month": times, "value": value}))
        hours = np.arange(60)
        temp = 20 + 5 * np.sin(2 * np.pi * (hours - 3) / 24) + rng.random(60)
        load = 50 + 10 * np.sin(2 * np.pi * hours / 24 + i) + 0.5 * temp + rng.random(60)
        stamps = pd.date_range("2024-03-01", periods=60, freq="h")
        hourly.append(pd.DataFrame({"id": f"h{i}", "month": stamps, "value": load, "temp": temp}))
    paths = {}
    for name, parts in (("monthly", monthly), ("hourly", hourly)):
        paths[name] = root / f"{name}.csv"
        pd.concat(parts, ignore_index=True).to_csv(paths[name], index=False)
    return paths


def trained_runs(root: Path):
    """kind -> (run dir, table path, frame, predict's answers per series); each run is trained
    on first use."""
    paths = tables(root)
    cache: dict[str, tuple] = {}

    def get(kind: str):
        if kind not in cache:
            table, options = KINDS[kind]
            run = root / kind
            args = ["train", str(paths[table]), "-t", "value", "--id", "id", "--time", "month"]
            args += ["--select", "network"]  # served step by step: the network alone
            if "-f" not in options:
                args += ["-f", "value"]
            assert main([*args, *options, *QUIET, "--out", str(run)]) == 0
            out = root / f"{kind}-predict.csv"
            assert main(["predict", str(run), str(paths[table]), "--out", str(out), "-q"]) == 0
            frame = pd.read_csv(paths[table])
            predicted = pd.read_csv(out)
            expected = {
                series: predicted[predicted["id"] == series]["predicted_value"].to_numpy()
                for series in frame["id"].unique()
            }
            cache[kind] = (run, paths[table], frame, expected)
        return cache[kind]

    return get


def table_rows(frame: pd.DataFrame, series: str) -> tuple[list[list[float]], list[str]]:
    """One series' raw inputs per row (in the run's input order) and times as text."""
    part = frame[frame["id"] == series]
    columns = ["value", "temp"] if "temp" in frame else ["value"]
    times = [str(pd.Timestamp(t).isoformat()) for t in part["month"]]
    return part[columns].to_numpy().tolist(), times
