"""The server applies the run's preprocessing per stream: a run trained with per-series
scaling and a log1p transform, served step by step over a real server process, answers what
the pipeline (``seqstate predict``) answers for the same rows; what cannot be applied per step
is refused. (Runs with differencing and calendar features serve too: test_serve_runs.py.)"""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pandas as pd
import pytest
import websockets.sync.client

from conftest import AUTH, ServerProcess, in_process
from seqstate.cli.dispatch import main
from seqstate.recipe.run_forecaster import load_forecaster
from seqstate.recipe.sources import read_table

SCALES = (1.0, 1e3, 1e6)


@pytest.fixture(scope="module")
def scaled_run(tmp_path_factory):
    """A per-series, log1p run on a panel whose series differ by six orders of magnitude."""
    root = tmp_path_factory.mktemp("scaled")
    rng = np.random.default_rng(0)
    times = pd.date_range("2010-01-01", periods=30, freq="MS")
    parts = []
    for index, scale in enumerate(SCALES):
        value = scale * (10 + 2 * np.sin(np.arange(30) / 2 + index) + rng.random(30))
        parts.append(pd.DataFrame({"id": f"s{index}", "month": times, "value": value}))
    data = root / "panel.csv"
    pd.concat(parts, ignore_index=True).to_csv(data, index=False)
    run = root / "run"
    args = ["train", str(data), "-f", "value", "--id", "id", "--time", "month", "--epochs", "2"]
    args += ["--select", "network"]  # served step by step: the network alone
    args += ["--hidden-size", "8", "--no-progress", "--out", str(run), "--transform", "log1p"]
    args += ["--difference", "0", "--seasonal-difference", "0", "--calendar", "none"]
    assert main(args) == 0
    table = read_table(
        data, features=["value"], targets=["value"], id_column="id", time_column="month"
    )
    return run, table


def test_a_series_served_step_by_step_matches_the_pipeline(scaled_run):
    run, table = scaled_run
    expected = load_forecaster(run).predict(table)  # [L_i, 1] raw units, per series
    server = ServerProcess(run, "--store", "memory://")
    try:
        server.start()
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
            for i, series in enumerate(table.ids):
                rows = table.features[i].tolist()
                answers = []
                for seq, row in enumerate(rows[:20], start=1):  # one step per request
                    body = {"seq": seq, "x": row, "series": series}
                    reply = client.post(f"/v1/streams/st-{i}/steps", json=body)
                    assert reply.status_code == 200, reply.text
                    answers.append(reply.json()["y"])
                # the rest in one multi-step request: same state, same scaling
                body = {"seq": 21, "x": rows[20:], "series": series}
                reply = client.post(f"/v1/streams/st-{i}/steps", json=body)
                assert reply.status_code == 200, reply.text
                answers += reply.json()["y"]
                served = np.asarray(answers)
                np.testing.assert_allclose(served, expected[i], rtol=2e-5, atol=0)
                # raw units: the largest series is answered near 1e7, not near model space
                assert np.abs(served).mean() > SCALES[i]
            # a retry naming another series is a different request, never a replay
            retry = {"seq": 21, "x": table.features[0][20:].tolist(), "series": "s1"}
            reply = client.post("/v1/streams/st-0/steps", json=retry)
            assert reply.status_code == 409 and reply.json()["code"] == "seq_conflict"
        # the WebSocket binds its steps to a series the same way
        ws_url = server.url.replace("http", "ws") + "/v1/ws"
        with websockets.sync.client.connect(ws_url, additional_headers=AUTH) as ws:
            for seq, row in enumerate(table.features[2][:3].tolist(), start=1):
                ws.send(json.dumps({"stream": "w", "seq": seq, "x": row, "series": "s2"}))
                answer = json.loads(ws.recv(timeout=30))
                np.testing.assert_allclose(answer["y"], expected[2][seq - 1], rtol=2e-5)
            ws.send(json.dumps({"stream": "v", "seq": 1, "x": [1.0]}))
            answer = json.loads(ws.recv(timeout=30))
            assert answer["status"] == 422 and answer["error"]["code"] == "series_required"
    finally:
        server.stop()
        server.log.close()


def test_steps_without_a_known_series_are_refused_and_store_nothing(scaled_run):
    asyncio.run(_refusals(*scaled_run))


async def _refusals(run, table):
    x = table.features[1][0].tolist()
    async with in_process(run) as client:
        cases = [
            ({"seq": 1, "x": x}, "series_required"),
            ({"seq": 1, "x": x, "series": "never-seen"}, "unknown_series"),
            ({"seq": 1, "x": [-5.0], "series": "s1"}, "invalid_x"),  # log1p needs >= 0
        ]
        for body, code in cases:
            reply = await client.post("/v1/streams/a/steps", json=body)
            assert reply.status_code == 422 and reply.json()["code"] == code, reply.text
            assert (await client.get("/v1/streams/a")).status_code == 404  # nothing stored
        batch = {
            "steps": [{"id": "b", "seq": 1, "x": x}, {"id": "c", "seq": 1, "x": x, "series": "s1"}]
        }
        results = (await client.post("/v1/steps", json=batch)).json()["results"]
        assert results[0]["status"] == 422 and results[0]["error"]["code"] == "series_required"
        assert results[1]["status"] == 200
        alone = await client.post("/v1/streams/d/steps", json={"seq": 1, "x": x, "series": "s1"})
        assert alone.json()["y"] == results[1]["y"]
