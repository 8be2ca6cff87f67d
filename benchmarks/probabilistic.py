"""Probabilistic forecasts on real data: seqstate's calibrated intervals (the default of every
run) and a distribution head's sample paths, against statsforecast AutoETS's intervals
(benchmarks/autoets_intervals.py, same loaders and splits).

Per data set, each series without its last ``horizon`` steps is the history:

* ``default``: ``seqstate train`` (no option but the columns) + ``seqstate forecast
  --quantiles ...``: the run's point forecast (network, baseline or combination, as validation
  chose) and the quantiles of its calibrated interval table;
* ``head, table`` / ``head, paths`` (with ``--heads``): ``seqstate train --distribution auto``,
  then the same interval table around its fed-back medians, and the quantiles of 200 sample
  paths (``--samples 200 --seed 0``);
* ``DeepAR`` (with ``--deepar``): GluonTS 0.17's ``DeepAREstimator`` (torch) with its defaults
  (2 LSTM layers of 40, Student-t likelihood, context = horizon, 50 batches of 32 per epoch,
  100 sample paths) except the epochs, capped at ``--deepar-epochs`` (default 20; its default is
  100), trained on the same histories; quantiles of its sample paths;
* ``NF LSTM StudentT`` / ``NF LSTM MQLoss`` (with ``--neuralforecast``): NeuralForecast's
  ``LSTM`` with its defaults (2 encoder layers of 128, an MLP decoder, input 3 x horizon,
  robust scaling, windows of 128 per batch) and ``DistributionLoss("StudentT")`` or ``MQLoss``
  asked for the scored levels, except ``max_steps``, capped at ``--nf-steps`` (default 200;
  its default is 1000), trained on the same histories; the loss's quantiles.

Scores per series, then the mean over series, all divided by the series' in-sample
seasonal-naive MAE: MASE of the point forecast and of the 50% quantile, CRPS from the 20
quantiles 2.5%, 7.5%, ..., 97.5% (in brackets, from the five 2.5/10/50/90/97.5% ones, the
estimate an interval-only peer gets), coverage of the central 80% and 95% intervals, width of
the 80% interval. ``--origins N`` also scores the N - 1 horizons before the last (each its own
training); the summary pools every (data set, origin, seed) per method: coverage pooled over
the test points, its mean absolute error, the count within the targets (75-85%, 91-98%).

    PYTHONPATH=src .venv-bench/bin/python benchmarks/probabilistic.py --quick --no-write
    PYTHONPATH=src .venv-bench/bin/python benchmarks/probabilistic.py --quick --heads
    PYTHONPATH=src .venv-bench/bin/python benchmarks/probabilistic.py --quick --deepar
    PYTHONPATH=src .venv-bench/bin/python benchmarks/probabilistic.py --synthetic 200

``--synthetic FITS`` trains nothing: it fits the interval table as ``train`` does on known
processes (a random walk with drift, an AR(1) with Student-t noise, a seasonal random walk;
one series and panels) around each process's own point forecast and prints the coverage of
the 80% and 95% intervals, with the degrees of freedom measured and at the random walk's P.

One intra-op thread; the load average is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import load_average, write_section
from autoets_intervals import DATASETS, FIVE, Split, load, score
from seqstate.core.distributions import quantile_name
from seqstate.recipe.metrics import CRPS_LEVELS

#: Every level asked of a forecast: the CRPS grid, the interval ends and the five.
LEVELS = tuple(sorted({*CRPS_LEVELS, *FIVE}))


def _run(command: list[str]) -> None:
    from seqstate.cli.dispatch import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(command)
    if code != 0:
        raise RuntimeError(f"seqstate {' '.join(command)} exited with {code}")


def _train(split: Split, tmp: Path, name: str, seed: int, *extra: str) -> tuple[Path, Path, float]:
    data = tmp / "history.csv"
    if not data.exists():
        history = split.history.copy()
        stamps = history["time"]
        within_day = not (stamps.dt.normalize() == stamps).all()  # half hours, 5 minutes
        history["time"] = stamps.dt.strftime("%Y-%m-%d %H:%M:%S" if within_day else "%Y-%m-%d")
        if split.counts:
            history["value"] = history["value"].round().astype(int)
        history.to_csv(data, index=False)
    run = tmp / name
    start = time.perf_counter()
    _run(["train", str(data), "--features", "value", "--id", "id", "--time", "time",
          "--out", str(run), "--seed", str(seed), "--quiet", *extra])  # fmt: skip
    return data, run, time.perf_counter() - start


def _forecast(split: Split, data: Path, run: Path, *extra: str) -> tuple[dict, dict]:
    """(id -> {level: [H]}, id -> point [H]) of ``seqstate forecast`` with every level."""
    out = run.parent / f"{run.name}-forecast{len(extra)}.csv"
    levels = ",".join(str(q) for q in LEVELS)
    _run(["forecast", str(run), str(data), "--horizon", str(split.horizon), "--out", str(out),
          "--quantiles", levels, *extra])  # fmt: skip
    frame = pd.read_csv(out)
    quantiles, point = {}, {}
    for key, group in frame.groupby("id"):
        group = group.sort_values("horizon")
        quantiles[key] = {
            q: group[f"predicted_value_{quantile_name(q)}"].to_numpy() for q in LEVELS
        }
        point[key] = group["predicted_value"].to_numpy()
    return quantiles, point


def deepar(split: Split, seed: int, epochs: int) -> tuple[dict, dict, float]:
    """(id -> {level: [H]}, id -> median [H], training seconds) of GluonTS DeepAR (torch) with
    its defaults but ``epochs``, on ``split``'s histories."""
    import logging

    import lightning.pytorch as pl
    from gluonts.dataset.pandas import PandasDataset
    from gluonts.torch import DeepAREstimator

    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "gluonts"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # gluonts takes period frequencies: month / quarter starts are months / quarters
    freq = {"MS": "M", "QS": "Q", "YS": "Y", "AS": "Y"}.get(split.freq, split.freq)
    history = split.history.copy()
    if split.counts:
        history["value"] = history["value"].round()
    dataset = PandasDataset.from_long_dataframe(
        history, target="value", item_id="id", timestamp="time", freq=freq
    )
    pl.seed_everything(seed, workers=False, verbose=False)
    estimator = DeepAREstimator(
        freq=freq,
        prediction_length=split.horizon,
        trainer_kwargs={
            "max_epochs": epochs,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": False,
            "default_root_dir": None,
        },
    )
    with (
        tempfile.TemporaryDirectory() as directory,  # (its checkpoints)
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        estimator.trainer_kwargs["default_root_dir"] = directory
        start = time.perf_counter()
        predictor = estimator.train(dataset)
        seconds = time.perf_counter() - start
    quantiles, point = {}, {}
    for forecast in predictor.predict(dataset):
        key = forecast.item_id
        quantiles[key] = {q: np.asarray(forecast.quantile(q), dtype=float) for q in LEVELS}
        point[key] = quantiles[key][0.5]
    return quantiles, point, seconds


#: NeuralForecast LSTM losses measured with ``--neuralforecast``: label -> loss factory.
NF_LOSSES = ("LSTM StudentT", "LSTM MQLoss")


def neuralforecast_lstm(
    split: Split, seed: int, loss: str, max_steps: int
) -> tuple[dict, dict, float]:
    """(id -> {level: [H]}, id -> median [H], training seconds) of NeuralForecast's ``LSTM``
    with its defaults but ``max_steps`` and the loss: ``DistributionLoss("StudentT")`` or
    ``MQLoss``, both asked for :data:`LEVELS` (the quantiles scored) instead of their default
    levels [80, 90]."""
    import logging
    import warnings

    from neuralforecast import NeuralForecast
    from neuralforecast.losses.pytorch import DistributionLoss, MQLoss, quantiles_to_outputs
    from neuralforecast.models import LSTM

    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    levels = sorted(LEVELS)
    if loss == "LSTM StudentT":
        objective = DistributionLoss(distribution="StudentT", quantiles=levels)
    elif loss == "LSTM MQLoss":
        objective = MQLoss(quantiles=levels)
    else:
        raise ValueError(f"loss must be one of {NF_LOSSES}; received {loss!r}")
    history = split.history.rename(columns={"id": "unique_id", "time": "ds", "value": "y"})
    if split.counts:
        history["y"] = history["y"].round()
    model = LSTM(
        h=split.horizon,
        loss=objective,
        max_steps=max_steps,
        random_seed=seed,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        accelerator="cpu",
    )
    forecaster = NeuralForecast(models=[model], freq=split.freq)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        start = time.perf_counter()
        forecaster.fit(df=history)
        seconds = time.perf_counter() - start
        predicted = forecaster.predict()
    predicted = predicted.reset_index() if "unique_id" not in predicted else predicted
    _, names = quantiles_to_outputs(levels)
    quantiles, point = {}, {}
    for key in split.future["id"].unique():
        mine = predicted[predicted["unique_id"].astype(str) == str(key)].sort_values("ds")
        quantiles[key] = {
            q: mine[f"LSTM{suffix}"].to_numpy(dtype=float)
            for q, suffix in zip(levels, names, strict=True)
        }
        point[key] = quantiles[key][0.5]
    return quantiles, point, seconds


def earlier(split: Split, origin: int) -> Split:
    """``split`` cut ``origin`` horizons earlier: every series without its last
    ``origin * horizon`` steps, then the same split of that (``origin`` 0: ``split``). More
    origins give a short single series more test points (each origin is a training)."""
    if origin == 0:
        return split
    frame = pd.concat([split.history, split.future]).sort_values(["id", "time"])
    position = frame.groupby("id").cumcount(ascending=False)
    frame = frame[position >= origin * split.horizon].reset_index(drop=True)
    position = frame.groupby("id").cumcount(ascending=False)
    history = frame[position >= split.horizon].reset_index(drop=True)
    future = frame[position < split.horizon].reset_index(drop=True)
    return dataclasses.replace(split, history=history, future=future)


def measure(
    split: Split,
    seed: int,
    heads: bool,
    deepar_epochs: int | None = None,
    nf_steps: int | None = None,
) -> list[tuple[str, dict[str, float], float]]:
    results = []
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        data, run, seconds = _train(split, tmp, "default", seed)
        results.append(("default", score(split, *_forecast(split, data, run)), seconds))
        if deepar_epochs:
            quantiles, point, seconds = deepar(split, seed, deepar_epochs)
            results.append(("DeepAR", score(split, quantiles, point), seconds))
        for loss in NF_LOSSES if nf_steps else ():
            quantiles, point, seconds = neuralforecast_lstm(split, seed, loss, nf_steps)
            results.append((f"NF {loss}", score(split, quantiles, point), seconds))
        if heads:
            data, run, seconds = _train(split, tmp, "head", seed, "--distribution", "auto")
            results.append(("head, table", score(split, *_forecast(split, data, run)), seconds))
            sampled = _forecast(split, data, run, "--samples", "200", "--seed", str(seed))
            results.append(("head, paths", score(split, *sampled), seconds))
    return results


#: The coverage targets: (level, lowest, highest) a data set's coverage should be within.
TARGETS = ((0.8, 0.75, 0.85), (0.95, 0.91, 0.98))


def summary(scored: dict[str, list[tuple[dict[str, float], int]]]) -> list[str]:
    """Per method over every (data set, origin, seed) scored: coverage pooled over the test
    points, the mean absolute coverage error, how many are within :data:`TARGETS`, the
    geometric mean CRPS and how many medians have a worse MASE than the point. A data set of
    one short series is one path of a few points (8 points: 7 of 8 is 0.875, so no 95% interval
    can be within 91-98% there); judge a rule by the pooled figures over many data sets."""
    lines = [
        "| method | windows (points) | pooled 80% / 95% | mean abs error 80% / 95% | in range "
        "| CRPS (geometric mean) | q50 worse than point |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, results in scored.items():
        points = np.array([count for _, count in results], dtype=np.float64)
        pooled, errors, within = [], [], []
        for level, low, high in TARGETS:
            cover = np.array([r[f"coverage_{round(level * 100)}"] for r, _ in results])
            pooled.append(f"{np.average(cover, weights=points):.3f}")
            errors.append(f"{np.mean(np.abs(cover - level)):.3f}")
            within.append(str(int(np.sum((cover >= low) & (cover <= high)))))
        crps = np.exp(np.mean(np.log([r["crps"] for r, _ in results])))
        worse = sum(r["mase_median"] > r["mase"] for r, _ in results)
        lines.append(
            f"| {label} | {len(results)} ({int(points.sum())}) | {' / '.join(pooled)} "
            f"| {' / '.join(errors)} | {' / '.join(within)} | {crps:.3f} | {worse} |"
        )
    return lines


#: Known processes for ``--synthetic``: (process, series, history length, horizon, season).
SYNTHETIC = (
    ("random walk with drift", 1, 120, 24, 12),
    ("random walk with drift", 10, 120, 12, 12),
    ("AR(1), Student-t(4)", 1, 240, 24, 12),
    ("AR(1), Student-t(4)", 10, 120, 12, 12),
    ("seasonal random walk", 1, 240, 24, 12),
    ("seasonal random walk", 10, 96, 12, 12),
    ("random walk", 1, 80, 8, 4),
    ("iid", 5, 60, 8, 4),
)


def _simulate(process: str, rng: np.random.Generator, steps: int) -> np.ndarray:
    """``[steps]`` one path of ``process`` (normal noise but the AR(1)'s)."""
    if process == "AR(1), Student-t(4)":
        noise, path = rng.standard_t(4, size=steps), np.zeros(steps)
        for t in range(1, steps):
            path[t] = 0.8 * path[t - 1] + noise[t]
        return path + 10.0
    noise = rng.standard_normal(steps)
    if process == "random walk with drift":
        return np.cumsum(0.3 + noise)
    if process == "random walk":
        return np.cumsum(noise)
    if process == "seasonal random walk":
        path = np.concatenate([3.0 * rng.standard_normal(12), np.zeros(steps - 12)])
        for t in range(12, steps):
            path[t] = path[t - 12] + noise[t]
        return path
    return 5.0 + noise


def _point(process: str, past: np.ndarray, horizon: int) -> np.ndarray:
    """``[horizon]`` the process's textbook forecast from ``past [L]``: the drift method, a
    fitted AR(1), the seasonal naive, the last value, the mean."""
    ahead = np.arange(1, horizon + 1)
    if process == "random walk with drift":
        return past[-1] + (past[-1] - past[0]) / (len(past) - 1) * ahead
    if process == "AR(1), Student-t(4)":
        centred = past - past.mean()
        phi = float(centred[:-1] @ centred[1:] / (centred[:-1] @ centred[:-1]))
        return past.mean() + centred[-1] * phi**ahead
    if process == "seasonal random walk":
        return past[len(past) - 12 + (ahead - 1) % 12]
    if process == "random walk":
        return np.full(horizon, past[-1])
    return np.full(horizon, past.mean())


def synthetic(fits: int, seed: int = 0) -> list[str]:
    """Coverage of the 80% / 95% intervals on known processes, the table fitted as
    ``seqstate train`` fits it (rolling origins in each series' last 20%, the calibration
    horizon, the seasonal naive's errors over the history) around the process's own point
    forecast, scored on the next ``horizon`` steps; ``fits`` draws of each case. The
    widening's degrees of freedom measured from the errors (``series`` given) or the random
    walk's count P (without: the rule before the measured draws)."""
    from types import SimpleNamespace

    from seqstate.recipe.calibration import calibration_horizon, independent_paths, naive_errors
    from seqstate.recipe.intervals import fit_table, quantiles, series_scales

    lines = [
        "| process | series | history / horizon | rule | cover 80% | cover 95% |",
        "|---|---|---|---|---|---|",
    ]
    for process, count, length, horizon, season in SYNTHETIC:
        covered: dict[str, list[list[float]]] = {"random walk's P": [], "measured": []}
        rng = np.random.default_rng(seed)
        for _ in range(fits):
            paths = [_simulate(process, rng, length + horizon) for _ in range(count)]
            histories = [path[:length] for path in paths]
            cut = round(0.8 * length)
            steps = calibration_horizon(season, [length - cut] * count)
            rows, owners = [], []
            for i, history in enumerate(histories):
                for origin in np.unique(np.rint(np.linspace(cut, length - 1, 24)).astype(int)):
                    seen = min(steps, length - origin)
                    row = np.full(steps, np.nan)
                    scale = series_scales([history[:origin]], season)[0]
                    point = _point(process, history[:origin], steps)[:seen]
                    row[:seen] = (history[origin : origin + seen] - point) / scale
                    rows.append(row)
                    owners.append(i)
            table = SimpleNamespace(targets=[history[:, None] for history in histories])
            common = {
                "paths": independent_paths([cut] * count, [length] * count, steps),
                "naive": naive_errors(table, season, steps),
            }
            for rule, series in (("random walk's P", None), ("measured", np.array(owners))):
                fitted = fit_table(np.array(rows), season, **common, series=series)
                if fitted is None:
                    raise RuntimeError(f"no table for {process}")
                for path, history in zip(paths, histories, strict=True):
                    point = _point(process, history, horizon)
                    scale = series_scales([history], season)
                    band = quantiles(point[None], scale, fitted, (0.025, 0.1, 0.9, 0.975))[0]
                    truth = path[length:]
                    inside = [(truth >= band[:, q]) & (truth <= band[:, 3 - q]) for q in (1, 0)]
                    covered[rule].append([float(np.mean(i)) for i in inside])
        for rule, values in covered.items():
            mean = np.mean(values, axis=0)
            line = (
                f"| {process} | {count} | {length} / {horizon} | {rule} | {mean[0]:.3f} "
                f"| {mean[1]:.3f} |"
            )
            print(line, flush=True)
            lines.append(line)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small subsets of the big data")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument(
        "--origins",
        type=int,
        default=1,
        help="test origins per data set: the last horizon, and with N > 1 also the N - 1 "
        "horizons before it (each its own training on the history before it)",
    )
    parser.add_argument("--heads", action="store_true", help="also --distribution auto")
    parser.add_argument("--deepar", action="store_true", help="also GluonTS DeepAR (torch)")
    parser.add_argument("--deepar-epochs", type=int, default=20, help="DeepAR's epoch cap")
    parser.add_argument(
        "--neuralforecast",
        action="store_true",
        help="also NeuralForecast's LSTM with DistributionLoss(StudentT) and with MQLoss",
    )
    parser.add_argument(
        "--nf-steps",
        type=int,
        default=200,
        help="NeuralForecast's max_steps cap (its default: 1000)",
    )
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        help=f"one of {DATASETS} or of benchmarks/forecast.py's (repeatable)",
    )
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--synthetic",
        type=int,
        default=0,
        metavar="FITS",
        help="only the known processes (no training): coverage over FITS fits of each",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.synthetic:
        synthetic(args.synthetic)
        return 0
    lines = [
        "| data | method | origin | seed | MASE (point; q50) | CRPS (20 q; 5 q) | cover 80% "
        "| cover 95% | width 80% | train |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    scored: dict[str, list[tuple[dict[str, float], int]]] = {}
    for name, origin in itertools.product(args.dataset or DATASETS, range(args.origins)):
        split = earlier(load(name, args.quick), origin)
        for seed in range(args.seeds):
            epochs = args.deepar_epochs if args.deepar else None
            nf_steps = args.nf_steps if args.neuralforecast else None
            for label, r, seconds in measure(split, seed, args.heads, epochs, nf_steps):
                line = (
                    f"| {name} | {label} | {origin} | {seed} | {r['mase']:.3f}; "
                    f"{r['mase_median']:.3f} "
                    f"| {r['crps']:.3f} "
                    f"({r['crps_5q']:.3f}) | {r['coverage_80']:.3f} | {r['coverage_95']:.3f} "
                    f"| {r['width_80']:.2f} | {seconds:.0f} s |"
                )
                print(line, flush=True)
                lines.append(line)
                scored.setdefault(label, []).append((r, len(split.future)))
    command = "benchmarks/probabilistic.py " + " ".join(sys.argv[1:])
    text = "\n".join(
        [
            "## Probabilistic forecasts",
            "",
            f"Command: `{command.strip()}`; load average {load_average()}; one torch thread.",
            "",
            *lines,
            "",
            *summary(scored),
        ]
    )
    print(text)
    if not args.no_write:
        write_section("probabilistic", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
