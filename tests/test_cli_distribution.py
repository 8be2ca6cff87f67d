"""seqstate train --distribution: the run's model gets a distribution head (auto: negbin for
counts the transforms leave as counts, studentt otherwise); its forecasts are medians."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqstate.cli.dispatch import main
from seqstate.core.saved import load_model


def _write(path: Path, counts: bool) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for s in range(3):
        for t in range(40):
            value = int(rng.poisson(4 + s)) if counts else 10 + rng.standard_t(4)
            rows.append({"id": f"s{s}", "t": t, "value": value})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _train(data: Path, out: Path, *flags: str) -> int:
    return main(["train", str(data), "--features", "value", "--targets", "value", "--id", "id",
          "--time", "t", "--epochs", "1", "--out", str(out), "--quiet", *flags])  # fmt: skip


def test_auto_picks_studentt_for_real_values_and_forecasts_medians(tmp_path: Path) -> None:
    data = _write(tmp_path / "real.csv", counts=False)
    _train(data, tmp_path / "run", "--distribution", "auto")
    model = load_model(tmp_path / "run")
    assert model.config.distribution is not None
    assert model.config.distribution.name == "studentt"
    main(["forecast", str(tmp_path / "run"), str(data), "--horizon", "2",
          "--out", str(tmp_path / "f.csv")])  # fmt: skip
    forecast = pd.read_csv(tmp_path / "f.csv")
    assert len(forecast) == 6 and np.isfinite(forecast["predicted_value"]).all()


def test_auto_picks_negbin_for_unscaled_counts_and_medians_are_counts(tmp_path: Path) -> None:
    data = _write(tmp_path / "counts.csv", counts=True)
    # the network alone: a validation choice may blend in a baseline, whose values are not counts
    flags = ("--scaling", "none", "--seasonal-difference", "0", "--select", "network")
    _train(data, tmp_path / "run", "--distribution", "auto", *flags)
    model = load_model(tmp_path / "run")
    assert model.config.distribution is not None and model.config.distribution.name == "negbin"
    main(["forecast", str(tmp_path / "run"), str(data), "--horizon", "2",
          "--out", str(tmp_path / "f.csv")])  # fmt: skip
    values = pd.read_csv(tmp_path / "f.csv")["predicted_value"].to_numpy()
    np.testing.assert_array_equal(values, np.round(values))


def test_the_default_stays_a_point_model_and_negbin_refuses_scaled_targets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write(tmp_path / "counts.csv", counts=True)
    assert _train(data, tmp_path / "point") == 0
    assert load_model(tmp_path / "point").config.distribution is None
    assert _train(data, tmp_path / "scaled", "--distribution", "negbin") != 0
    assert "negbin models counts" in capsys.readouterr().err
    assert not (tmp_path / "scaled" / "model.json").exists()


def test_forecast_samples_writes_monotone_quantiles_and_paths_reproducibly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write(tmp_path / "real.csv", counts=False)
    # the network alone: the draws are the network's (a validation choice of baselines alone
    # would answer every path with their point forecast)
    assert _train(data, tmp_path / "run", "--distribution", "studentt", "--select", "network") == 0

    def sampled(name: str, seed: str, *extra: str) -> pd.DataFrame:
        out = tmp_path / name
        assert main(["forecast", str(tmp_path / "run"), str(data), "--horizon", "3", "--out",
                     str(out), "--samples", "40", "--quantiles", "0.025,0.1,0.9",
                     "--seed", seed, *extra]) == 0  # fmt: skip
        return pd.read_csv(out)

    first = sampled("a.csv", "1", "--paths", str(tmp_path / "paths.csv"))
    columns = ["predicted_value_q2.5", "predicted_value_q10", "predicted_value",
               "predicted_value_q90"]  # fmt: skip
    assert list(first.columns[-4:]) == ["predicted_value", *columns[:2], columns[3]]
    values = first[columns].to_numpy()
    assert (np.diff(values, axis=1) >= 0).all()
    pd.testing.assert_frame_equal(first, sampled("b.csv", "1"))
    assert not first.equals(sampled("c.csv", "2"))
    paths = pd.read_csv(tmp_path / "paths.csv")
    assert len(paths) == 3 * 40 * 3 and set(paths["path"]) == set(range(40))
    # the median column is the paths' median
    one = paths[(paths["id"] == "s0") & (paths["horizon"] == 1)]["predicted_value"]
    assert first["predicted_value"].iloc[0] == pytest.approx(float(np.median(one)))
    assert _train(data, tmp_path / "point") == 0
    code = main(["forecast", str(tmp_path / "point"), str(data), "--horizon", "2", "--out",
                 str(tmp_path / "p.csv"), "--samples", "5"])  # fmt: skip
    assert code != 0 and "needs a run trained with a distribution head" in capsys.readouterr().err


def test_doctor_says_which_output_head_train_would_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    counts = _write(tmp_path / "counts.csv", counts=True)
    real = _write(tmp_path / "real.csv", counts=False)
    columns = ["--features", "value", "--targets", "value", "--id", "id", "--time", "t"]
    # judged as train judges it, on the targets the model reads: per-series scaling makes
    # counts real numbers, so auto is studentt and negbin is refused, as train refuses it
    main(["doctor", str(counts), *columns, "--distribution", "auto"])
    assert "studentt distribution head (auto: the targets are counts, but" in (
        capsys.readouterr().out
    )
    main(["doctor", str(counts), *columns, "--distribution", "auto", "--scaling", "none"])
    assert "negbin distribution head (auto: the targets the model reads are" in (
        capsys.readouterr().out
    )
    assert main(["doctor", str(counts), *columns, "--distribution", "negbin"]) == 1
    assert "negbin models counts, but the model-space targets" in capsys.readouterr().out
    assert main(["train", str(counts), *columns, "--distribution", "negbin", "--quiet"]) != 0
    assert "negbin models counts, but the model-space targets" in capsys.readouterr().err
    main(["doctor", str(real), *columns, "--distribution", "auto"])
    assert "studentt distribution head (auto: the targets are not counts)" in (
        capsys.readouterr().out
    )
    main(["doctor", str(real), *columns])
    assert "point forecasts, with intervals calibrated" in capsys.readouterr().out
