"""Every run serves: each kind of run ``seqstate train`` writes, streamed row by row
through a real server process, answers what ``seqstate predict`` answers for that row; the
forecast endpoint answers what ``seqstate forecast`` answers for the table up to that row, and
changes nothing; a SIGKILLed server restarted on its store continues exactly.

Tiny tables and models: the point is that the server runs the same step function as predict,
not that the forecasts are good.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import websockets.sync.client
from served_runs import table_rows, trained_runs

from conftest import AUTH, ServerProcess, in_process
from seqstate.cli.dispatch import main

RTOL = 1e-5
HORIZON = 3
SERVED = [
    "monthly_defaults", "hourly_calendar_covariate", "log", "difference", "seeds", "global",
]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """kind -> (run dir, table path, frame, predict's answers per series); built on first use."""
    return trained_runs(tmp_path_factory.mktemp("runs"))


def _assert_row(served, expected: float, where: str) -> None:
    value = served[0] if isinstance(served, list) else served
    if np.isnan(expected):
        assert value is None, f"{where}: expected no answer (warm-up), served {value}"
    else:
        assert value is not None, f"{where}: served null, predict answered {expected}"
        np.testing.assert_allclose(value, expected, rtol=RTOL, err_msg=where)


def _cli_forecast(run: Path, frame: pd.DataFrame, series: str, t: int, root: Path) -> pd.DataFrame:
    """``seqstate forecast RUN TABLE[:t] --horizon H`` for one series."""
    part = frame[frame["id"] == series]
    history = root / f"{series}-{t}.csv"
    part.iloc[:t].to_csv(history, index=False)
    args = ["forecast", str(run), str(history), "--horizon", str(HORIZON)]
    if "temp" in frame:
        future = root / f"{series}-{t}-future.csv"
        part.iloc[t : t + HORIZON][["id", "month", "temp"]].to_csv(future, index=False)
        args += ["--covariates", str(future)]
    out = root / f"{series}-{t}-forecast.csv"
    assert main([*args, "--out", str(out)]) == 0
    return pd.read_csv(out)


def _assert_forecast(answer: dict, cli: pd.DataFrame, where: str) -> None:
    """The served forecast and its calibrated quantiles are the CLI's columns."""
    np.testing.assert_allclose(
        np.asarray(answer["y"])[:, 0], cli["predicted_value"], rtol=RTOL, err_msg=where
    )
    assert answer["quantiles_from"] == "calibrated", answer
    assert list(answer["quantiles"]) == ["0.1", "0.9"]
    for level, column in (("0.1", "predicted_value_q10"), ("0.9", "predicted_value_q90")):
        served = np.asarray(answer["quantiles"][level])[:, 0]
        np.testing.assert_allclose(served, cli[column], rtol=RTOL, err_msg=f"{where} {level}")
    assert (cli["predicted_value_q10"] < cli["predicted_value_q90"]).all()  # not zero-width


@pytest.mark.parametrize("kind", SERVED)
def test_every_run_serves_what_predict_and_forecast_answer(runs, kind, tmp_path):
    run, _, frame, expected = runs(kind)
    server = ServerProcess(run, "--store", f"sqlite:///{tmp_path / 'streams.db'}")
    try:
        server.start()
        assert "each step carries" in server.output()  # the one line printed on start
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
            model = client.get("/v1/model").json()
            assert model["inputs"] == (["value", "temp"] if "temp" in frame else ["value"])
            assert model["intervals"]["levels"] == [0.1, 0.9]  # what a forecast answers
            for index, series in enumerate(expected):
                rows, times = table_rows(frame, series)
                stream, seq, t = f"http-{index}", 0, 0
                forecast_at = len(rows) // 2
                while t < len(rows):
                    # single steps first, then requests of 4 steps; the series on step 1 only
                    k = 1 if t < forecast_at else min(4, len(rows) - t)
                    seq += 1
                    body: dict = {"seq": seq, "x": rows[t] if k == 1 else rows[t : t + k]}
                    body["time"] = times[t] if k == 1 else times[t : t + k]
                    if seq == 1:
                        body["series"] = series
                    reply = client.post(f"/v1/streams/{stream}/steps", json=body)
                    assert reply.status_code == 200, reply.text
                    answers = [reply.json()["y"]] if k == 1 else reply.json()["y"]
                    for step, answer in enumerate(answers):
                        _assert_row(answer, expected[series][t + step], f"{series} row {t + step}")
                    t += k
                    if t == forecast_at and index == 0:
                        covariates: dict = {}
                        if "temp" in frame:
                            future = frame[frame["id"] == series]["temp"].to_numpy()
                            covariates = {"temp": future[t : t + HORIZON].tolist()}
                        asked = {"horizon": HORIZON, "covariates": covariates or None}
                        reply = client.post(f"/v1/streams/{stream}/forecast", json=asked)
                        assert reply.status_code == 200, reply.text
                        answer = reply.json()
                        assert answer["seq"] == seq and len(answer["time"]) == HORIZON
                        assert answer["time"][0] == pd.Timestamp(times[t]).isoformat()
                        cli = _cli_forecast(run, frame, series, t, tmp_path)
                        _assert_forecast(answer, cli, series)
                    if index == 0 and t == forecast_at + 4:
                        server.kill()  # mid-stream: what was answered is durable
                        server.start()
                # a later step naming another series is refused; nothing changes
                other = next(s for s in expected if s != series)
                body = {"seq": seq + 1, "x": rows[-1], "time": "2099-01-01", "series": other}
                reply = client.post(f"/v1/streams/{stream}/steps", json=body)
                assert reply.status_code == 409 and reply.json()["code"] == "series_mismatch"
        # the WebSocket: every frame sent at once (pipelined), a forecast between two steps:
        # it sees the steps before it and none after
        series = next(iter(expected))
        rows, times = table_rows(frame, series)
        ws_url = server.url.replace("http", "ws") + "/v1/ws"
        with websockets.sync.client.connect(ws_url, additional_headers=AUTH) as ws:
            for t, row in enumerate(rows):
                frame_: dict = {"stream": "ws", "seq": t + 1, "x": row, "time": times[t]}
                if t == 0:
                    frame_["series"] = series
                ws.send(json.dumps(frame_))
                if t + 1 == forecast_at:
                    ws.send(json.dumps({"op": "forecast", "stream": "ws", **asked}))
            answers = [json.loads(ws.recv(timeout=30)) for _ in range(len(rows) + 1)]
        forecasts = [a for a in answers if a.get("op") == "forecast"]
        assert len(forecasts) == 1 and forecasts[0]["seq"] == forecast_at, forecasts
        _assert_forecast(forecasts[0], cli, "ws")
        steps = sorted((a for a in answers if "y" in a and "op" not in a), key=lambda a: a["seq"])
        refused = [a for a in answers if "y" not in a]
        assert [a["seq"] for a in steps] == list(range(1, len(rows) + 1)), refused[:3]
        for t, answer in enumerate(steps):
            _assert_row(answer["y"], expected[series][t], f"ws {series} row {t}")
    finally:
        server.stop()
        server.log.close()


def test_time_series_and_forecast_refusals_change_nothing(runs):
    asyncio.run(_refusals(*runs("hourly_calendar_covariate")[:3]))


async def _refusals(run, _, frame):
    rows, times = table_rows(frame, "h0")
    async with in_process(run) as client:

        async def step(body, stream="a"):
            return await client.post(f"/v1/streams/{stream}/steps", json=body)

        cases = [
            ({"seq": 1, "x": rows[0], "series": "h0"}, 422, "time_required"),
            ({"seq": 1, "x": rows[0], "time": times[0]}, 422, "series_required"),
            ({"seq": 1, "x": rows[0], "time": times[0], "series": "nope"}, 422, "unknown_series"),
            ({"seq": 1, "x": rows[0], "time": "not a date", "series": "h0"}, 422, "invalid_time"),
            ({"seq": 1, "x": rows[:2], "time": times[1::-1], "series": "h0"}, 422, "invalid_time"),
            ({"seq": 1, "x": rows[:2], "time": times[0], "series": "h0"}, 422, "invalid_time"),
            ({"seq": 1, "x": rows[0][:1], "time": times[0], "series": "h0"}, 422, "invalid_x"),
            # past int64, the "no time" mark, past 2262 (a date a calendar cannot stamp)
            ({"seq": 1, "x": rows[0], "time": 2**63 + 5, "series": "h0"}, 422, "invalid_time"),
            ({"seq": 1, "x": rows[0], "time": -(2**63), "series": "h0"}, 422, "invalid_time"),
            ({"seq": 1, "x": rows[0], "time": 10**10, "series": "h0"}, 422, "invalid_time"),
        ]
        for body, status, code in cases:
            reply = await step(body)
            assert (reply.status_code, reply.json()["code"]) == (status, code), reply.text
            assert (await client.get("/v1/streams/a")).status_code == 404  # nothing stored
        missing = await client.post("/v1/streams/a/forecast", json={"horizon": 2})
        assert missing.status_code == 404
        # in a batch, each item succeeds or fails alone: a time past int64 refuses its own
        good = {"id": "b0", "seq": 1, "x": rows[0], "time": times[0], "series": "h0"}
        bad = {**good, "id": "b1", "time": 2**63 + 5}
        batch = await client.post("/v1/steps", json={"steps": [good, bad]})
        assert batch.status_code == 200, batch.text
        answers = batch.json()["results"]
        assert [a["status"] for a in answers] == [200, 422]
        assert "time" in answers[1]["error"]["message"], answers[1]
        assert (await client.delete("/v1/streams/b0")).status_code in (200, 204)
        first = await step({"seq": 1, "x": rows[0], "time": times[0], "series": "h0"})
        assert first.status_code == 200 and first.json()["y"] == [None]  # differencing warms up
        warming = await client.post("/v1/streams/a/forecast", json={"horizon": 2})
        assert warming.status_code == 409 and warming.json()["code"] == "stream_warming_up"
        # a time not after the stream's last one; another series; both leave the stream as is
        reply = await step({"seq": 2, "x": rows[1], "time": times[0]})
        assert reply.status_code == 422 and reply.json()["code"] == "invalid_time"
        reply = await step({"seq": 2, "x": rows[1], "time": times[1], "series": "h1"})
        assert reply.status_code == 409 and reply.json()["code"] == "series_mismatch"
        for t in range(1, 30):  # series and time kept by the stream
            assert (await step({"seq": t + 1, "x": rows[t], "time": times[t]})).status_code == 200
        model = (await client.get("/v1/model")).json()
        assert model["inputs"] == ["value", "temp"] and model["needs_time"]
        assert model["covariates"] == ["temp"]
        bad = [None, {"temp": [1.0]}, {"temp": [1.0, 2.0], "other": [1.0, 2.0]}]
        for covariates in bad:
            body = {"horizon": 2, "covariates": covariates}
            reply = await client.post("/v1/streams/a/forecast", json=body)
            assert reply.status_code == 422 and reply.json()["code"] == "invalid_covariates"
        text = b'{"horizon": 2, "covariates": {"temp": [20.0, NaN]}}'  # (read as a value)
        reply = await client.post("/v1/streams/a/forecast", content=text)
        assert reply.status_code == 422 and reply.json()["code"] == "invalid_covariates"
        assert "value 1 is nan" in reply.json()["message"]
        body = {"horizon": 2, "covariates": {"temp": [20.0, 21.0]}}
        # the body is JSON whatever its Content-Type (curl -d sends a form type)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        as_form = await client.post(
            "/v1/streams/a/forecast", content=json.dumps(body), headers=form
        )
        assert as_form.status_code == 200, as_form.text
        broken = await client.post("/v1/streams/a/forecast", content=b'{"horizon": ', headers=form)
        assert broken.status_code == 400 and broken.json()["code"] == "invalid_json"
        once = (await client.post("/v1/streams/a/forecast", json=body)).json()
        again = (await client.post("/v1/streams/a/forecast", json=body)).json()
        assert once == again == as_form.json() and once["seq"] == 30
        assert once["time"] == [pd.Timestamp(t).isoformat() for t in times[30:32]]
        assert (await client.get("/v1/streams/a")).json()["seq"] == 30  # nothing written


@pytest.mark.parametrize("kind", SERVED)
def test_onnx_runtime_equals_predict_for_every_run(runs, kind, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the [onnx] extra) runs it")
    pytest.importorskip("onnxscript", reason="onnxscript (the [onnx] extra) exports")
    from seqstate.interop.onnx import export_run_onnx, run_onnx_names
    from seqstate.recipe.run import Run

    run, _, frame, expected = runs(kind)
    path = export_run_onnx(run, tmp_path / "run.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    function = Run.load(run).step_function()
    inputs, _ = run_onnx_names(function)
    ids = list(expected)
    for batch in (1, 4):
        series = [ids[b % len(ids)] for b in range(batch)]
        parts = [table_rows(frame, s) for s in series]
        x = np.asarray([rows for rows, _ in parts], dtype=np.float32)  # (B, L, F)
        seconds = np.asarray(
            [pd.to_datetime(times).to_numpy().astype("datetime64[s]").astype(np.int64)
             for _, times in parts]
        )  # fmt: skip
        for chunk in (1, 7, x.shape[1]):
            initial = function.initial_state(series)
            state = [t.numpy() for t in initial.transforms.values()]
            state += [t.numpy() for member in initial.models for t in member.tensors()]
            answers = []
            for start in range(0, x.shape[1], chunk):
                feeds = [x[:, start : start + chunk]]
                if function.needs_time:
                    feeds.append(seconds[:, start : start + chunk])
                result = session.run(None, dict(zip(inputs, [*feeds, *state], strict=True)))
                answers.append(result[0][..., 0])
                state = result[1:]
            served = np.concatenate(answers, axis=1)  # (B, L)
            for b, name in enumerate(series):
                np.testing.assert_allclose(
                    served[b], expected[name], rtol=RTOL, err_msg=f"{kind} {name} chunk {chunk}"
                )


@pytest.mark.parametrize("kind", ["normal", "quantile"])
def test_onnx_runtime_keeps_the_distribution_parameters_and_the_interval_state(
    runs, kind, tmp_path
):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the [onnx] extra) runs it")
    pytest.importorskip("onnxscript", reason="onnxscript (the [onnx] extra) exports")
    import torch

    from seqstate.interop.onnx import export_run_onnx, run_onnx_names
    from seqstate.recipe.run import Run

    run, _, frame, expected = runs(kind)
    path = export_run_onnx(run, tmp_path / "run.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    function = Run.load(run).step_function()
    inputs, outputs = run_onnx_names(function)
    assert outputs[-1] == "m0.distribution_parameters" and function.intervals is not None
    series = list(expected)
    parts = [table_rows(frame, s) for s in series]
    x = np.asarray([rows for rows, _ in parts], dtype=np.float32)  # (B, L, 1)
    initial = function.initial_state(series)
    names = list(initial.transforms)
    state = [t.numpy() for t in initial.transforms.values()]
    state += [t.numpy() for member in initial.models for t in member.tensors()]
    answers, parameters = [], []
    for start in range(0, x.shape[1], 7):
        feeds = [x[:, start : start + 7], *state]
        result = session.run(None, dict(zip(inputs, feeds, strict=True)))
        answers.append(result[0][..., 0])
        parameters.append(result[-1])
        state = result[1 : 1 + len(state)]
    for b, name in enumerate(series):  # y: the median, what predict answers
        np.testing.assert_allclose(np.concatenate(answers, 1)[b], expected[name], rtol=RTOL)
    # the raw parameters of every step, against torch's step function one step at a time
    torch_state, steps = initial, []
    with torch.no_grad():
        for t in range(x.shape[1]):
            _, torch_state = function.step(torch_state, x[:, t : t + 1])
            steps.append(torch_state.transforms["m0.parameters"].numpy())
    np.testing.assert_allclose(
        np.concatenate(parameters, axis=1), np.stack(steps, axis=1), rtol=1e-4, atol=1e-5
    )
    # the stream's MASE scale travels in the state: the calibrated quantiles agree
    onnx_state = dict(zip(names, state[: len(names)], strict=True))
    for key in ("interval.lag_sum", "interval.one_sum", "interval.last"):
        np.testing.assert_allclose(onnx_state[key], torch_state.transforms[key].numpy(), rtol=1e-9)


def test_a_business_hours_run_stamps_its_served_forecast_through_its_opening_hours(tmp_path):
    """A run trained on 09:00-16:00 weekdays, streamed to a Friday's 13:00 by a real server:
    the forecast endpoint's times skip the night and the weekend as `seqstate forecast`'s do,
    with the same values."""
    stamps = pd.date_range("2024-03-04", periods=24 * 7 * 6, freq="h")  # from a Monday
    stamps = stamps[(stamps.day_of_week < 5) & (stamps.hour >= 9) & (stamps.hour < 17)]
    stamps = stamps[: len(stamps) - 3]  # ends on a Friday at 13:00
    value = 50 + 10 * np.sin(2 * np.pi * (stamps.hour - 9) / 8)
    frame = pd.DataFrame(
        {"time": stamps, "value": value + np.random.default_rng(5).random(len(stamps))}
    )
    data = tmp_path / "shop.csv"
    frame.to_csv(data, index=False)
    run = tmp_path / "run"
    args = ["train", str(data), "-f", "value", "--time", "time", "--select", "network"]
    assert main([*args, "--epochs", "1", "--hidden-size", "4", "--quiet", "--out", str(run)]) == 0
    out = tmp_path / "f.csv"
    assert main(["forecast", str(run), str(data), "--horizon", "4", "--out", str(out)]) == 0
    cli = pd.read_csv(out)
    expected = ["2024-04-12T14:00:00", "2024-04-12T15:00:00", "2024-04-12T16:00:00"]
    assert [pd.Timestamp(t).isoformat() for t in cli["time"]] == [*expected, "2024-04-15T09:00:00"]
    server = ServerProcess(run)
    try:
        server.start()
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
            rows = frame[["value"]].to_numpy().tolist()
            times = [t.isoformat() for t in frame["time"]]
            body = {"seq": 1, "x": rows, "time": times}
            assert client.post("/v1/streams/shop/steps", json=body).status_code == 200
            reply = client.post("/v1/streams/shop/forecast", json={"horizon": 4})
            assert reply.status_code == 200, reply.text
            answer = reply.json()
        assert [pd.Timestamp(t).isoformat() for t in answer["time"]] == [
            *expected,
            "2024-04-15T09:00:00",
        ]
        np.testing.assert_allclose(np.asarray(answer["y"])[:, 0], cli["predicted_value"], rtol=RTOL)
    finally:
        server.stop()
        server.log.close()
