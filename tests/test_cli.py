"""The seqstate command line, end to end on tiny tables (in-process via main, plus subprocesses
for the exit code and the one-line error)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from seqstate.cli.dispatch import main
from seqstate.core.saved import load_model, read_model_json
from seqstate.inference.prediction import predict
from seqstate.recipe.holdout import split_tail
from seqstate.recipe.run_forecaster import load_forecaster
from seqstate.recipe.scaling import Scaling
from seqstate.recipe.sources import Normalization, read_table

TINY = ["--lanes", "3", "--window", "8", "--epochs", "2", "--hidden-size", "8", "--no-progress"]


def make_table(n_series: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_series):
        n = int(rng.integers(20, 40))
        value = np.sin(np.arange(n) / 4 + s) + 0.1 * rng.normal(size=n)
        rows += [(f"s{s}", t, value[t], np.cos(t / 4)) for t in range(n)]
    frame = pd.DataFrame(rows, columns=["id", "t", "value", "aux"])
    return frame.sample(frac=1, random_state=seed).reset_index(drop=True)  # unsorted on purpose


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "data.csv"
    make_table().to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    code = main(
        [
            "train",
            str(data),
            "-f",
            "value,aux",
            "-t",
            "value",
            "--id",
            "id",
            "--time",
            "t",
            *TINY,
            "--select",  # the network's own predictions (no baselines blended in)
            "network",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def forecast_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "forecast"
    args = ["train", str(data), "-f", "value", "--id", "id", "--time", "t", "--epochs", "3"]
    code = main([*args, "--hidden-size", "8", "--no-progress", "--out", str(out)])
    assert code == 0  # default layout: one window per epoch on this table
    return out


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("train", "evaluate", "predict", "forecast", "doctor", "demo", "serve"):
        assert command in text
    for command in ("train", "evaluate", "predict", "forecast", "doctor", "demo", "import-keras"):
        assert main([command, "--help"]) == 0
        assert "usage: seqstate" in capsys.readouterr().out
    assert main(["serve", "--help"]) == 0
    assert "RUN_DIR" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("seqstate ")
    assert main([]) == 2


def test_train_records_columns_split_and_train_only_normalisation(run, data):
    metadata = read_model_json(run)["metadata"]
    assert metadata["data"]["columns"]["features"] == ["value", "aux"]
    assert metadata["data"]["columns"]["id"] == "id"
    # The default split: the last 20% of every series, validated warm; then a refit on all rows.
    assert metadata["split"]["by"] == "time" and metadata["split"]["refit"] is True
    table = read_table(
        data, features=["value", "aux"], targets=["value"], id_column="id", time_column="t"
    )
    train, _ = split_tail(table, 0.2)
    assert metadata["split"]["ids"]["validation"] == table.ids
    # Per-series scaling (the default with an id column) is fitted on each series' training
    # rows; the model's normalisation then sees the scaled rows.
    scaling = Scaling.load(run)
    assert scaling is not None and scaling.config.method == "series"
    assert scaling.ids == train.ids
    # The run that chose the epoch count normalised with its training rows only ...
    stats = Normalization.fit(scaling.scale_table(train))
    selection = load_model(run / "selection")
    torch.testing.assert_close(selection.input_shift, torch.tensor(stats.input_mean))
    torch.testing.assert_close(selection.output_scale, torch.tensor(stats.output_std))
    # ... the refit, trained on every row, with every row.
    everything = Normalization.fit(scaling.scale_table(table))
    model = load_model(run)
    torch.testing.assert_close(model.input_shift, torch.tensor(everything.input_mean))
    torch.testing.assert_close(model.output_scale, torch.tensor(everything.output_std))
    assert metadata["split"]["selection"]["epochs_trained"] == 2
    best = metadata["split"]["selection"]["best_epoch"]  # the refit trains that many epochs
    assert len((run / "metrics.jsonl").read_text().splitlines()) == best + 1
    assert (run / "selection" / "metrics.jsonl").is_file()
    assert metadata["layout"] == {
        "lanes": 3,
        "window": 8,
        "shuffle": True,
        "windows_per_epoch": metadata["layout"]["windows_per_epoch"],
    }
    assert (run / "metrics.jsonl").is_file()


def test_predict_writes_one_row_per_input_row(run, data, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(run), str(data), "--out", str(out), "--no-progress"]) == 0
    assert "predicted_value" in capsys.readouterr().out
    written = pd.read_csv(out)
    assert list(written.columns) == [
        "id",
        "t",
        "predicted_value",
        "predicted_value_q10",
        "predicted_value_q90",
    ]
    assert len(written) == len(pd.read_csv(data))
    table = read_table(
        data, features=["value", "aux"], targets=["value"], id_column="id", time_column="t"
    )
    # The model reads each series scaled by the run's scaling; the output is in raw units.
    scaling = Scaling.load(run)
    expected = predict(load_model(run), scaling.encode(table).features)
    expected = [scaling.decode_predictions(table, i, e) for i, e in enumerate(expected)]
    # rows come back in the input's (shuffled) order: the keys match the input row for row
    given = pd.read_csv(data)
    pd.testing.assert_frame_equal(written[["id", "t"]], given[["id", "t"]])
    first = written[written["id"] == table.ids[0]].sort_values("t")
    np.testing.assert_array_equal(first["t"], table.times[0])
    np.testing.assert_allclose(first["predicted_value"], expected[0][:, 0], rtol=1e-5, atol=1e-6)
    parquet = tmp_path / "predictions.parquet"
    assert main(["predict", str(run), str(data), "-o", str(parquet), "--chunk", "5"]) == 0
    pd.testing.assert_frame_equal(
        pd.read_parquet(parquet), written, check_dtype=False, rtol=1e-5, atol=1e-6
    )


def test_predict_does_not_need_target_columns(run, data, tmp_path):
    features_only = tmp_path / "new.csv"
    pd.read_csv(data).to_csv(features_only, index=False)
    assert main(["predict", str(run), str(features_only), "--out", str(tmp_path / "p.csv")]) == 0


def test_evaluate_prints_metrics(run, data, capsys):
    # Means over series of per-series metrics, never errors pooled in raw units.
    assert main(["evaluate", str(run), str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    table = read_table(
        data, features=["value", "aux"], targets=["value"], id_column="id", time_column="t"
    )
    outputs = load_forecaster(run).predict(table)  # raw units, through the scaling
    rmse = [
        np.sqrt(np.mean((output[:-1, 0] - target[1:, 0]) ** 2))
        for output, target in zip(outputs, table.targets, strict=True)
    ]
    assert metrics["one_step_rmse"] == pytest.approx(np.mean(rmse), rel=1e-5)
    assert metrics["series"] == len(table)
    assert main(["evaluate", str(run), str(data)]) == 0
    assert "rmse" in capsys.readouterr().out


def test_forecast_continues_each_series(forecast_run, data, tmp_path):
    out = tmp_path / "forecast.csv"
    args = ["forecast", str(forecast_run), str(data), "--horizon", "4", "--out", str(out)]
    assert main(args) == 0
    written = pd.read_csv(out)
    table = read_table(data, features=["value"], id_column="id", time_column="t")
    assert len(written) == 4 * len(table)
    first = written[written["id"] == table.ids[0]]
    np.testing.assert_array_equal(first["t"], table.times[0][-1] + np.arange(1, 5))
    assert np.isfinite(first["predicted_value"]).all()
    assert list(first["horizon"]) == [1, 2, 3, 4]


def test_forecast_needs_the_future_of_covariates(run, data, tmp_path, capsys):
    out = tmp_path / "f.csv"
    assert main(["forecast", str(run), str(data), "--horizon", "2", "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert error.startswith(
        "seqstate: error: this run reads the covariates ['aux'] besides ['value']: give their "
        "future values with --covariates FILE"
    )
    assert not out.exists()
    # With the future values of aux, each series is forecast from its own end.
    history = pd.read_csv(data)
    last = history.groupby("id")["t"].max()
    future = pd.DataFrame(
        [{"id": key, "t": end + h, "aux": 0.5 * h} for key, end in last.items() for h in (1, 2)]
    )
    future_path = tmp_path / "future.csv"
    future.to_csv(future_path, index=False)
    args = ["forecast", str(run), str(data), "--horizon", "2", "--out", str(out)]
    assert main([*args, "--covariates", str(future_path)]) == 0
    written = pd.read_csv(out)
    assert len(written) == 2 * len(last) and np.isfinite(written["predicted_value"]).all()
    short = tmp_path / "short.csv"
    future[future["t"] != future["id"].map(last) + 2].to_csv(short, index=False)
    assert main([*args, "--covariates", str(short)]) == 1
    assert "has no row for series" in capsys.readouterr().err
    # matched by time, never by position: a row missing in the middle is refused, not filled
    # by the next row's value
    gap = future[future["t"] != future["id"].map(last) + 1]
    third = gap.assign(t=gap["t"] + 1, aux=9.0)  # the rows at end + 2 and end + 3
    pd.concat([gap, third]).to_csv(short, index=False)
    assert main([*args, "--covariates", str(short)]) == 1
    assert "forecast step 1" in capsys.readouterr().err


def test_config_file_and_flags(data, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        f"""
[data]
path = "{data.name}"
features = ["value", "aux"]
targets = ["value"]
id = "id"
time = "t"

[split]
by = "time"
fraction = 0.25

[layout]
lanes = 2
window = 6

[model]
cell = "gru"
hidden_size = 4

[fit]
epochs = 1
progress = false
"""
    )
    (tmp_path / data.name).write_bytes(data.read_bytes())  # path is relative to the config
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--window", "5", "--out", str(out)]) == 0
    document = read_model_json(out)
    assert document["model"]["cell"] == "gru"
    assert document["metadata"]["split"]["by"] == "time"
    assert document["metadata"]["layout"]["window"] == 5  # the flag wins over the file
    assert document["metadata"]["fit"]["epochs"] == 1


def test_config_errors_name_the_setting(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text("[layout]\nlanes = 2\nwidow = 3\n")
    assert main(["train", "x.csv", "-f", "v", "--config", str(config)]) == 1
    assert "unknown setting 'widow' in [layout]" in capsys.readouterr().err
    config.write_text("[modle]\n")
    assert main(["doctor", "x.csv", "-f", "v", "--config", str(config)]) == 1
    assert "unknown section [modle]" in capsys.readouterr().err


def test_train_refuses_to_overwrite_a_run(run, data, capsys):
    before = (run / "model.safetensors").read_bytes()
    args = ["train", str(data), "-f", "value,aux", "-t", "value", "--id", "id", "--out", str(run)]
    assert main(args) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == before


def test_bad_output_suffix_is_refused_before_anything_runs(run, data, tmp_path, capsys):
    out = tmp_path / "predictions.xlsx"
    assert main(["predict", str(run), str(data), "--out", str(out)]) == 1
    assert "cannot tell the format" in capsys.readouterr().err
    assert not out.exists()


def test_doctor_explains_layout_and_problems(data, tmp_path, capsys):
    base = ["doctor", str(data), "-f", "value,aux", "-t", "value", "--id", "id", "--time", "t"]
    assert main([*base, "--lanes", "2", "--window", "8"]) == 0
    text = capsys.readouterr().out
    for words in ("6 series", "2 lanes x window 8", "windows per epoch", "padding", "Memory"):
        assert words in text
    # More lanes than series, window longer than every sequence, few windows.
    assert main([*base, "--lanes", "64", "--window", "512"]) == 0
    text = capsys.readouterr().out
    assert "more than the 6 training series" in text  # split by time: every series trains
    assert "window=512 is longer than every training sequence" in text
    # A problem: exit code 1 and the reason.
    assert main(["doctor", str(data), "-f", "valeu", "--id", "id"]) == 1
    text = capsys.readouterr().out
    assert "Problems" in text and "Did you mean 'value'?" in text


def test_doctor_flags_constant_features_and_leaks(tmp_path, capsys):
    frame = make_table().sort_values(["id", "t"])
    frame["constant"] = 1.0
    frame["future"] = frame.groupby("id")["value"].shift(-1).fillna(0.0)
    path = tmp_path / "leaky.csv"
    frame.to_csv(path, index=False)
    args = ["doctor", str(path), "-f", "value,constant,future", "-t", "value", "--id", "id"]
    assert main([*args, "--time", "t", "--lanes", "2", "--window", "8"]) == 0
    text = capsys.readouterr().out
    assert "feature 'constant' never changes" in text
    assert "feature 'future' at each step equals target 'value' at 1 step(s) later" in text


def test_doctor_flags_a_series_that_never_changes_in_a_panel(tmp_path, capsys):
    frame = make_table().sort_values(["id", "t"])
    first = frame["id"] == frame["id"].iloc[0]
    frame.loc[first, "value"] = 3.0
    path = tmp_path / "flat.csv"
    frame.to_csv(path, index=False)
    args = ["doctor", str(path), "-f", "value", "--id", "id", "--time", "t"]
    assert main([*args, "--lanes", "2", "--window", "8"]) == 0
    text = capsys.readouterr().out
    assert f"1 series never change (e.g. {frame['id'].iloc[0]!r})" in text


def test_one_line_error_and_exit_code_in_a_subprocess(tmp_path):
    command = [sys.executable, "-m", "seqstate.cli", "train", str(tmp_path / "missing.csv")]
    result = subprocess.run(
        [*command, "-f", "x"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("seqstate: error: data file")
    assert "Traceback" not in result.stderr
    with pytest.raises(FileNotFoundError):  # --debug: the exception itself, with traceback
        main(["--debug", "train", str(tmp_path / "missing.csv"), "-f", "x"])
    usage = subprocess.run(
        [sys.executable, "-m", "seqstate.cli.dispatch", "predict"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert usage.returncode == 2 and "usage: seqstate predict" in usage.stderr


def test_import_keras_error_is_one_line(tmp_path, capsys):
    assert main(["import-keras", str(tmp_path / "none.keras"), str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("seqstate: error:") and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_export_onnx_writes_a_model(run, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export-onnx", str(run), str(out)]) == 0
    assert out.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "the whole run, raw units; inputs ['x', 'steps', 'time_last'" in printed
    assert main(["export-onnx", str(run), str(out), "--model-space"]) == 0
    assert "inputs ['x', 'h0', 'c0']" in capsys.readouterr().out
    assert main(["export-onnx", str(run), str(tmp_path / "model.bin")]) == 1
    assert "OUT must be a .onnx file" in capsys.readouterr().err


def test_train_is_reproducible_and_resume_is_exact(data, tmp_path):
    # Regression: the model used to be built before seeding, so two runs differed.
    args = ["train", str(data), "-f", "value,aux", "-t", "value", "--id", "id", *TINY]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == a
    resumed = tmp_path / "resumed"
    assert main([*args, "--epochs", "1", "--out", str(resumed)]) == 0
    assert main([*args, "--out", str(resumed), "--resume"]) == 0
    assert (resumed / "model.safetensors").read_bytes() == a


@pytest.mark.parametrize("refit", [[], ["--no-refit"]])
def test_resume_before_the_first_checkpoint_trains_from_the_start(
    data, tmp_path, monkeypatch, capsys, refit
):
    import seqstate.train as training

    args = ["train", str(data), "-f", "value,aux", "-t", "value", "--id", "id", "--time", "t"]
    args += [*TINY, "--split", "time", *refit]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    real = training.fit

    class Stop(Exception):
        pass

    def stopped(*positional, **keywords):  # stops in the second epoch: no checkpoint yet
        def hook(end):
            if end.epoch == 1 and end.window == 2:
                raise Stop

        return real(*positional, **{**keywords, "on_window": hook})

    monkeypatch.setattr(training, "fit", stopped)
    with pytest.raises(Stop):
        main([*args, "--out", str(tmp_path / "cut")])
    monkeypatch.setattr(training, "fit", real)
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    said = capsys.readouterr()
    assert "no checkpoint was written yet; training from the start" in said.out + said.err
    whole = (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert (tmp_path / "cut" / "model.safetensors").read_bytes() == whole


def test_distributed_outside_torchrun_is_a_one_line_error(data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", str(data), "-f", "value,aux", "-t", "value", "--id", "id", "--time", "t"]
    assert main([*args, *TINY, "--distributed", "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("seqstate: error:") and "torchrun" in error
    assert not out.exists()


def test_distributed_train_under_torchrun_equals_one_process(data, tmp_path):
    """`torchrun --nproc_per_node 2 seqstate train --distributed` == one process, same lanes."""

    args = ["train", str(data), "-f", "value,aux", "-t", "value", "--id", "id", "--time", "t"]
    layout = ["--lanes", "4", "--window", "8", "--epochs", "2", "--hidden-size", "8"]
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert main([*args, *layout, "--no-progress", "--out", str(single)]) == 0
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        # the launcher binds its own free loopback port (a port picked here and released
        # before torchrun binds it can be taken by a concurrent job in between)
        "--standalone",
        "-m",
        "seqstate.cli.dispatch",
        *args,
        *layout,
        "--no-progress",
        "--distributed",
        "--out",
        str(multi),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    # the ranks' own output comes before the launcher's summary (~2 KB): keep enough to
    # show why a rank failed, not only that it did
    assert result.returncode == 0, result.stderr[-12000:]
    # rank 0 reports, alone
    assert result.stdout.count("selection (validation): 2 epoch(s)") == 1
    weights = load_model(multi).state_dict()
    for name, value in load_model(single).state_dict().items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-5)
