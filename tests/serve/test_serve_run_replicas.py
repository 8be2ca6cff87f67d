"""Runs served by two replicas on one store answer what one process answers; a forecast reads
the state its stream's earlier steps leave; sampled forecasts answer quantiles."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from served_runs import table_rows, trained_runs

from conftest import AUTH, ServerProcess
from seqstate.serve.rundir import load_run_step

RTOL = 1e-5
HORIZON = 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return trained_runs(tmp_path_factory.mktemp("runs"))


def _bodies(frame, series: str) -> list[dict]:
    """The step requests of one series: single steps, one request of 3 steps in the middle,
    the series on the first step only."""
    rows, times = table_rows(frame, series)
    bodies, t, seq = [], 0, 0
    while t < len(rows):
        k = 3 if t == 10 else 1
        seq += 1
        body: dict = {"seq": seq, "x": rows[t] if k == 1 else rows[t : t + k]}
        body["time"] = times[t] if k == 1 else times[t : t + k]
        if seq == 1:
            body["series"] = series
        bodies.append(body)
        t += k
    return bodies


def _drive(clients: list[httpx.Client], bodies: list[dict], stream: str) -> tuple[list, list]:
    """Step ``stream`` through ``clients`` in turn (request i by client i % n); a forecast
    after every 7th request from the 21st on, by the next client. -> (answers, forecasts)."""
    answers, forecasts = [], []
    for i, body in enumerate(bodies):
        reply = clients[i % len(clients)].post(f"/v1/streams/{stream}/steps", json=body)
        assert reply.status_code == 200, reply.text
        answers.append(reply.json())
        if i % 7 == 6 and i >= 20:  # past the longest differencing warm-up
            asked = {"horizon": HORIZON}
            reply = clients[(i + 1) % len(clients)].post(
                f"/v1/streams/{stream}/forecast", json=asked
            )
            assert reply.status_code == 200, reply.text
            forecasts.append(reply.json())
    return answers, forecasts


def _same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a["seq"] == b["seq"]
        key = "y"
        left = np.asarray(a[key], dtype=float)  # null (warm-up) -> nan
        right = np.asarray(b[key], dtype=float)
        np.testing.assert_allclose(left, right, rtol=RTOL, equal_nan=True)


def _in_process(run, series: str, bodies: list[dict]) -> tuple[list, list]:
    """What :func:`_drive` must get, from the run's step function in this process: each
    request's answer and the forecast after every 7th request from the 21st on."""
    function = load_run_step(run)
    state = function.initial_state([series])
    answers, forecasts = [], []
    with torch.no_grad():
        for i, body in enumerate(bodies):
            x = np.asarray(body["x"], dtype=np.float32).reshape(1, -1, len(function.inputs))
            stamps = np.atleast_1d(np.asarray(body["time"], dtype="datetime64[s]"))
            y, state = function.step(state, x, stamps.astype(np.int64)[None])
            rows = y[0].numpy().tolist()
            answers.append({"seq": body["seq"], "y": rows[0] if len(rows) == 1 else rows})
            if i % 7 == 6 and i >= 20:
                _, ahead = function.forecast(state, HORIZON)
                forecasts.append({"seq": body["seq"], "y": ahead[0].numpy().tolist()})
    return answers, forecasts


# Each run kind through two replicas of one durable store; both stores with the richest
# transform state, one each for the others (the stores' replica races are tested for every
# store in test_serve_attacks, the run kinds' answers against predict in test_serve_runs).
@pytest.mark.parametrize(
    ("kind", "stores"),
    [
        ("difference_calendar", ("sqlite", "redis")),
        ("seeds2", ("redis",)),
        ("plain", ("sqlite",)),
    ],
)
def test_two_replicas_on_one_store_answer_what_one_process_answers(
    runs, kind, stores, tmp_path, redis_url
):
    run, _, frame, expected = runs(kind)
    series = next(iter(expected))
    bodies = _bodies(frame, series)
    want = _in_process(run, series, bodies)
    # what the step function answers is what predict answers (the replicas are held to it)
    served = [a["y"] for a in want[0]]
    flat = [row for y in served for row in (y if isinstance(y[0], list) else [y])]
    np.testing.assert_allclose(
        np.asarray(flat, dtype=float)[:, 0], expected[series], rtol=RTOL, equal_nan=True
    )
    urls = {"sqlite": f"sqlite:///{tmp_path / 'shared.db'}", "redis": redis_url}
    for store in (urls[name] for name in stores):
        replicas = [ServerProcess(run, "--store", store) for _ in range(2)]
        try:
            for replica in replicas:
                replica.start()
            clients = [httpx.Client(base_url=r.url, headers=AUTH, timeout=30) for r in replicas]
            try:
                stream = f"{kind}-{store.split(':')[0]}"  # one Redis for the session
                got = _drive(clients, bodies, stream)
                # both replicas see the stream where the other left it
                seqs = [c.get(f"/v1/streams/{stream}").json()["seq"] for c in clients]
            finally:
                for client in clients:
                    client.close()
        finally:
            for replica in replicas:
                replica.stop()
                replica.log.close()
        _same(got[0], want[0])
        _same(got[1], want[1])
        assert seqs == [len(bodies)] * 2


def test_a_forecast_reads_the_steps_received_before_it(runs, tmp_path):
    """Over loopback, against a real server: a forecast sent right after a step was
    acknowledged reads that step's state, while other streams keep the batcher and the
    commit pipeline busy; and a forecast sent while a step of its stream is still queued (a
    long batch wait) waits for it."""
    run, _, frame, expected = runs("plain")
    series = next(iter(expected))
    bodies = _bodies(frame, series)[:12]
    server = ServerProcess(run, "--store", f"sqlite:///{tmp_path / 's.db'}", "--max-wait-ms", "300")
    function = load_run_step(run)
    try:
        server.start()
        stop = threading.Event()

        def load() -> None:  # other streams, all the time
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
                seq = 0
                while not stop.is_set() and seq < len(bodies):
                    body = {**bodies[seq], "series": series}
                    client.post("/v1/steps", json={"steps": [
                        {"id": f"bg{i}", **body} for i in range(8)
                    ]})  # fmt: skip
                    seq += 1

        background = threading.Thread(target=load, daemon=True)
        background.start()

        async def main() -> list[tuple[int, dict]]:
            seen = []
            async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=30) as c:
                for body in bodies:
                    if body["seq"] % 2:  # acknowledged, then the forecast
                        reply = await c.post("/v1/streams/f/steps", json=body)
                        assert reply.status_code == 200, reply.text
                    else:  # still queued (300 ms batch wait) when the forecast arrives
                        step = asyncio.create_task(c.post("/v1/streams/f/steps", json=body))
                        await asyncio.sleep(0.1)
                    forecast = await c.post("/v1/streams/f/forecast", json={"horizon": HORIZON})
                    if not body["seq"] % 2:
                        assert (await step).status_code == 200
                    assert forecast.status_code == 200, forecast.text
                    seen.append((body["seq"], forecast.json()))
            return seen

        seen = asyncio.run(main())
        stop.set()
        background.join(timeout=60)
    finally:
        server.stop()
        server.log.close()
    # each forecast read the state after its step: its seq, and the forecast of that state
    state = function.initial_state([series])
    with torch.no_grad():
        for body, (seq, answer) in zip(bodies, seen, strict=True):
            x = np.asarray(body["x"], dtype=np.float32).reshape(1, -1, len(function.inputs))
            stamps = np.atleast_1d(np.asarray(body["time"], dtype="datetime64[s]"))
            _, state = function.step(state, x, stamps.astype(np.int64)[None])
            assert answer["seq"] == seq
            _, y = function.forecast(state, HORIZON)
            np.testing.assert_allclose(answer["y"], y[0].numpy(), rtol=RTOL)


def test_sampled_forecasts_answer_quantiles_and_a_run_without_a_head_refuses(runs):
    from conftest import in_process

    run, _, frame, expected = runs("normal")
    series = next(iter(expected))
    bodies = _bodies(frame, series)[:8]
    function = load_run_step(run)
    asked = {"horizon": HORIZON, "samples": 50, "quantiles": [0.1, 0.5, 0.9], "seed": 3}

    async def main(run_dir, **request):
        async with in_process(run_dir, max_wait_ms=1.0) as client:
            for body in bodies:
                assert (await client.post("/v1/streams/q/steps", json=body)).status_code == 200
            replies = [await client.post("/v1/streams/q/forecast", json=request) for _ in "ab"]
            plain = await client.post("/v1/streams/q/forecast", json={"horizon": HORIZON})
            return replies, plain

    replies, plain = asyncio.run(main(run, **asked))
    assert all(r.status_code == 200 for r in replies), replies[0].text
    first, again = (r.json() for r in replies)
    assert first == again  # the same seed, the same paths
    assert first["y"] == plain.json()["y"]  # y stays the point forecast
    state = function.initial_state([series])
    with torch.no_grad():
        for body in bodies:
            x = np.asarray(body["x"], dtype=np.float32).reshape(1, -1, len(function.inputs))
            stamps = np.atleast_1d(np.asarray(body["time"], dtype="datetime64[s]"))
            _, state = function.step(state, x, stamps.astype(np.int64)[None])
        # (a stream's paths are keyed by the series it is bound to)
        _, paths = function.sample_forecast(state, HORIZON, samples=50, seed=3, keys=[series])
    drawn = paths[0].numpy()  # (samples, H, O)
    assert set(first["quantiles"]) == {"0.1", "0.5", "0.9"}
    for level in (0.1, 0.5, 0.9):
        np.testing.assert_allclose(
            first["quantiles"][f"{level:g}"], np.quantile(drawn, level, axis=0), rtol=RTOL
        )
    # the same series' paths from a table forecast (what seqstate forecast --samples draws),
    # in a panel beside other series: the served quantiles are the CLI's
    from seqstate.recipe.run_forecaster import load_forecaster
    from seqstate.recipe.sources import read_table

    history = pd.concat([frame[frame["id"] != series], frame[frame["id"] == series].head(8)])
    table = read_table(
        history, features=["value"], targets=["value"], id_column="id", time_column="month"
    )
    panel = load_forecaster(run).sample_paths(table, HORIZON, samples=50, seed=3)
    np.testing.assert_allclose(panel[list(table.ids).index(series)], drawn, rtol=RTOL, atol=1e-9)
    alone = table.select([list(table.ids).index(series)])
    np.testing.assert_allclose(
        load_forecaster(run).sample_paths(alone, HORIZON, samples=50, seed=3)[0],
        drawn,
        rtol=RTOL,
        atol=1e-9,
    )
    low, high = np.asarray(first["quantiles"]["0.1"]), np.asarray(first["quantiles"]["0.9"])
    assert (low <= high).all() and first["quantiles_from"] == "samples"
    # without samples: the run's calibrated quantiles, at the levels asked, in their order
    levels = [0.975, 0.025]
    replies, _ = asyncio.run(main(run, horizon=HORIZON, quantiles=levels))
    calibrated = replies[0].json()
    assert calibrated["quantiles_from"] == "calibrated" and list(calibrated["quantiles"]) == [
        "0.975",
        "0.025",
    ]
    _, y = function.forecast(state, HORIZON)
    bands = function.interval_quantiles(state, y, levels)  # [1, H, O, Q]
    for q, level in enumerate(levels):
        np.testing.assert_allclose(
            calibrated["quantiles"][f"{level:g}"], bands[0, :, :, q], rtol=RTOL
        )
    assert (bands[..., 0] > bands[..., 1]).all()
    # refusals: a seed without samples; a run without a distribution head; bad levels; a run
    # without an interval table asked for quantiles
    plain_run = runs("plain")[0]
    bare = plain_run.parent / "plain-without-intervals"
    if not bare.exists():
        shutil.copytree(plain_run, bare)
        meta = json.loads((bare / "model.json").read_text())
        del meta["metadata"]["intervals"]
        (bare / "model.json").write_text(json.dumps(meta))
    refusals = [
        (run, {"horizon": 2, "seed": 1}, "samples_required"),
        (run, {"horizon": 2, "quantiles": [1.5]}, "invalid_quantiles"),
        (bare, {"horizon": 2, "quantiles": [0.5]}, "intervals_unavailable"),
        (run, {"horizon": 2, "samples": 10, "quantiles": [1.5]}, "invalid_quantiles"),
        (run, {"horizon": 200, "samples": 10_000}, "too_many_samples"),
        (plain_run, {"horizon": 2, "samples": 10}, "sampling_unsupported"),
    ]
    for run_dir, request, code in refusals:
        replies, _ = asyncio.run(main(run_dir, **request))
        assert replies[0].status_code == 422 and replies[0].json()["code"] == code, code
    # a run without a table answers the point forecast alone
    _, plain = asyncio.run(main(bare, horizon=2))
    assert plain.status_code == 200 and "quantiles" not in plain.json()
