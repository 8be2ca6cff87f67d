"""In-process tests of every endpoint and sequence rule; answers are checked against the model."""

from __future__ import annotations

import asyncio
import json

import pytest

from conftest import AUTH, FEATURES, OUTPUTS, TOKEN, in_process, make_config, replay, serving
from seqstate.serve import ServeConfig, create_app

ATOL = 1e-5  # float32: a batched call may differ from a single-row call in the last bits


def x_of(i: int, k: int | None = None) -> list:
    step = [0.1 * i, -0.2 * i + 1.0, 0.05 * i * i]
    if k is None:
        return step
    return [[v + 0.01 * t for v in step] for t in range(k)]


def close(a, b) -> bool:
    import numpy as np

    return np.allclose(np.asarray(a), np.asarray(b), atol=ATOL, rtol=1e-6)


def run(coroutine):
    return asyncio.run(coroutine)


async def step(client, stream, seq, x, start=None):
    body = {"seq": seq, "x": x}
    if start is not None:
        body["start"] = start
    return await client.post(f"/v1/streams/{stream}/steps", json=body)


def test_steps_match_the_model_run_directly(run_dir, model):
    steps = [(x_of(1), False), (x_of(2, k=3), False), (x_of(3), False), (x_of(4, k=1), False)]

    async def main():
        async with in_process(run_dir) as client:
            answers = []
            for seq, (x, _) in enumerate(steps, start=1):
                response = await step(client, "s1", seq, x)
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["seq"] == seq and body["replayed"] is False
                answers.append(body["y"])
            return answers

    answers = run(main())
    expected = replay(model, steps)
    assert [len(a) for a in answers] == [OUTPUTS, 3, OUTPUTS, 1]  # [O] for one step, [k, O]
    for got, want in zip(answers, expected, strict=True):
        assert close(got, want)


def test_concurrent_streams_are_batched_and_each_matches_its_replay(run_dir, model):
    streams = [f"user-{i}" for i in range(12)]
    plan = {
        s: [(x_of(i + j, k=1 + (i + j) % 3), False) for j in range(4)]
        for i, s in enumerate(streams)
    }

    async def main():
        app = create_app(make_config(run_dir, max_wait_ms=50.0))
        async with serving(app) as client:
            got = {s: [] for s in streams}
            for j in range(4):  # round j: every stream's step j+1, all at once

                async def one(s, j=j):
                    response = await step(client, s, j + 1, plan[s][j][0])
                    assert response.status_code == 200, response.text
                    got[s].append(response.json()["y"])

                await asyncio.gather(*(one(s) for s in streams))
            metrics = (await client.get("/metrics")).text
        return got, metrics

    got, metrics = run(main())
    for s in streams:
        for a, b in zip(got[s], replay(model, plan[s]), strict=True):
            assert close(a, b)
    count = _metric(metrics, "seqstate_batch_size_count")
    assert count < 4 * len(streams)  # steps shared model calls


def _metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name + labels + " ") or line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name}{labels} not in metrics")


def test_gap_stale_and_unknown_stream_are_refused_without_changing_state(run_dir, model):
    async def main():
        async with in_process(run_dir, replay_window=2) as client:
            first = await step(client, "a", 1, x_of(1))
            assert first.status_code == 200
            gap = await step(client, "a", 3, x_of(3))
            assert gap.status_code == 409
            assert gap.json()["code"] == "seq_gap" and gap.json()["expected_seq"] == 2
            assert "expected seq 2" in gap.json()["message"]  # names the next seq
            assert (await step(client, "a", 2, x_of(2))).status_code == 200
            kept = await step(client, "a", 1, x_of(1))  # within the replay window: replayed
            assert kept.json() == {**first.json(), "replayed": True}
            other = await step(client, "a", 1, x_of(7))
            assert other.status_code == 409 and other.json()["code"] == "seq_conflict"
            assert (await step(client, "a", 3, x_of(3))).status_code == 200
            stale = await step(client, "a", 1, x_of(1))  # older than the window
            assert stale.status_code == 409 and stale.json()["code"] == "seq_stale"
            assert stale.json()["expected_seq"] == 4
            unknown = await step(client, "never-seen", 5, x_of(1))
            assert unknown.status_code == 404
            assert unknown.json()["code"] == "stream_not_found"
            assert unknown.json()["expected_seq"] == 1
            assert (await client.get("/v1/streams/never-seen")).status_code == 404
            third = await step(client, "a", 3, x_of(3))
            assert third.json()["replayed"] is True
            assert (await client.get("/v1/streams/a")).json()["seq"] == 3
            return third.json()["y"]

    y3 = run(main())
    assert close(y3, replay(model, [(x_of(i), False) for i in (1, 2, 3)])[-1])


def test_retry_returns_the_stored_answer_and_applies_once(run_dir, model):
    async def main():
        async with in_process(run_dir) as client:
            first = await step(client, "r", 1, x_of(1))
            retries = await asyncio.gather(*(step(client, "r", 1, x_of(1)) for _ in range(8)))
            for response in retries:
                assert response.status_code == 200
                assert response.json()["y"] == first.json()["y"]
                assert response.json()["replayed"] is True
            changed = await step(client, "r", 1, x_of(9))
            assert changed.status_code == 409 and changed.json()["code"] == "seq_conflict"
            assert changed.json()["expected_seq"] == 2
            second = await step(client, "r", 2, x_of(2))
            return second.json()["y"]

    y2 = run(main())
    assert close(y2, replay(model, [(x_of(1), False), (x_of(2), False)])[-1])


def test_concurrent_duplicates_of_a_new_step_apply_it_once(run_dir, model):
    async def main():
        async with in_process(run_dir, max_wait_ms=20.0) as client:
            await step(client, "d", 1, x_of(1))
            answers = await asyncio.gather(*(step(client, "d", 2, x_of(2)) for _ in range(10)))
            assert all(a.status_code == 200 for a in answers)
            assert sum(not a.json()["replayed"] for a in answers) == 1
            assert len({json.dumps(a.json()["y"]) for a in answers}) == 1
            after = await step(client, "d", 3, x_of(3))
            metrics = (await client.get("/metrics")).text
            return after.json()["y"], metrics

    y3, metrics = run(main())
    assert _metric(metrics, "seqstate_steps_total", '{outcome="applied"}') == 3
    assert close(y3, replay(model, [(x_of(i), False) for i in (1, 2, 3)])[-1])


def test_start_resets_the_stream_and_numbering_continues(run_dir, model):
    async def main():
        async with in_process(run_dir) as client:
            await step(client, "s", 1, x_of(1))
            await step(client, "s", 2, x_of(2))
            wrong = await step(client, "s", 1, x_of(5), start=True)
            assert wrong.status_code == 409 and wrong.json()["expected_seq"] == 3
            restarted = await step(client, "s", 3, x_of(5), start=True)
            assert restarted.status_code == 200
            again = await step(client, "s", 3, x_of(5), start=True)  # retry of the start
            assert again.json()["replayed"] is True
            fresh = await step(client, "new", 40, x_of(5), start=True)  # any seq for a new one
            assert fresh.status_code == 200
            nxt = await step(client, "new", 41, x_of(6))
            return restarted.json()["y"], fresh.json()["y"], nxt.json()["y"]

    restarted, fresh, nxt = run(main())
    alone = replay(model, [(x_of(5), False), (x_of(6), False)])
    assert close(restarted, alone[0]) and close(fresh, alone[0]) and close(nxt, alone[1])


def test_get_and_delete_end_a_stream(run_dir, model):
    async def main():
        async with in_process(run_dir, ttl_s=100.0) as client:
            await step(client, "e", 1, x_of(1))
            await step(client, "e", 2, x_of(2))
            info = (await client.get("/v1/streams/e")).json()
            assert info["id"] == "e" and info["seq"] == 2
            assert info["expires"] == pytest.approx(info["updated"] + 100.0)
            deleted = await client.delete("/v1/streams/e")
            assert deleted.status_code == 200 and deleted.json()["deleted"] is True
            assert (await client.delete("/v1/streams/e")).json()["code"] == "stream_not_found"
            assert (await client.get("/v1/streams/e")).status_code == 404
            assert (await step(client, "e", 3, x_of(3))).status_code == 404
            again = await step(client, "e", 1, x_of(7))  # the id can be reused from seq 1
            return again.json()["y"]

    assert close(run(main()), replay(model, [(x_of(7), False)])[0])


def test_idle_streams_expire_lazily_and_by_the_sweeper(run_dir, model):
    now = [1000.0]

    async def main():
        app = create_app(
            make_config(run_dir, ttl_s=10.0, sweep_interval_s=0.02), clock=lambda: now[0]
        )
        async with serving(app) as client:
            await step(client, "t", 1, x_of(1))
            now[0] += 5
            assert (await step(client, "t", 2, x_of(2))).status_code == 200  # refreshes
            now[0] += 9
            assert (await client.get("/v1/streams/t")).status_code == 200
            now[0] += 2  # 11 s idle: expired for every access path from now on
            assert (await client.get("/v1/streams/t")).status_code == 404
            late = await step(client, "t", 3, x_of(3))
            assert late.status_code == 404 and late.json()["code"] == "stream_not_found"
            store = app.state.resources.store
            for _ in range(500):  # the sweeper removes it (bounded wait)
                if store.count() == 0:
                    break
                await asyncio.sleep(0.01)
            assert store.count() == 0
            restarted = await step(client, "t", 1, x_of(3))
            return restarted.json()["y"]

    assert close(run(main()), replay(model, [(x_of(3), False)])[0])


def test_auth_is_required_on_the_api_but_not_on_health_or_schema(run_dir):
    async def main():
        app = create_app(make_config(run_dir))
        async with serving(app, headers=None) as client:
            missing = await step(client, "a", 1, x_of(1))
            assert missing.status_code == 401 and missing.json()["code"] == "unauthorized"
            assert missing.headers["www-authenticate"] == "Bearer"
            wrong = await client.post(
                "/v1/streams/a/steps", json={"seq": 1, "x": x_of(1)},
                headers={"Authorization": "Bearer nope"},
            )  # fmt: skip
            assert wrong.status_code == 401
            basic = await client.get("/v1/streams/a", headers={"Authorization": f"Basic {TOKEN}"})
            assert basic.status_code == 401
            assert (await client.get("/metrics")).status_code == 401
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/openapi.json")).status_code == 200
            ok = await client.post(
                "/v1/streams/a/steps", json={"seq": 1, "x": x_of(1)}, headers=AUTH
            )
            assert ok.status_code == 200
            # the refused requests changed nothing: seq 1 was applied exactly once
            assert (await client.get("/v1/streams/a", headers=AUTH)).json()["seq"] == 1

    run(main())


def test_a_token_is_required_unless_auth_is_disabled_explicitly(run_dir):
    with pytest.raises(ValueError, match="--no-auth"):
        ServeConfig(run_dir, store="memory://")
    assert ServeConfig(run_dir, store="memory://", auth=False).token is None
    with pytest.raises(ValueError, match="run_dir"):
        ServeConfig(run_dir / "missing", token="t")


BAD_BODIES = [
    ({"seq": 2, "x": [1.0, 2.0]}, 422, "invalid_x"),  # wrong feature count
    ({"seq": 2, "x": [[1.0, 2.0, 3.0], [1.0, 2.0]]}, 422, "invalid_x"),  # ragged
    ({"seq": 2, "x": [[[1.0, 2.0, 3.0]]]}, 422, "invalid_request"),  # too deep
    ({"seq": 2, "x": []}, 422, "invalid_x"),
    ({"seq": 2, "x": [True, 1.0, 2.0]}, 422, "invalid_request"),  # bools are not numbers
    ({"seq": 2, "x": ["1", 1.0, 2.0]}, 422, "invalid_request"),
    ({"seq": 2, "x": [1e39, 0.0, 0.0]}, 422, "invalid_x"),  # overflows float32
    ({"seq": 0, "x": [1.0, 2.0, 3.0]}, 422, "invalid_request"),
    ({"seq": 2**70, "x": [1.0, 2.0, 3.0]}, 422, "invalid_request"),
    ({"seq": "2", "x": [1.0, 2.0, 3.0]}, 422, "invalid_request"),
    ({"seq": 2, "x": [1.0, 2.0, 3.0], "reset": True}, 422, "invalid_request"),  # unknown key
    ({"x": [1.0, 2.0, 3.0]}, 422, "invalid_request"),
    ([1, 2], 422, "invalid_request"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES)
def test_bad_input_is_refused_with_a_code_and_changes_nothing(run_dir, model, body, status, code):
    async def main():
        async with in_process(run_dir) as client:
            await step(client, "b", 1, x_of(1))
            response = await client.post("/v1/streams/b/steps", json=body)
            assert response.status_code == status, response.text
            assert response.json()["code"] == code and response.json()["message"]
            assert (await client.get("/v1/streams/b")).json()["seq"] == 1
            return (await step(client, "b", 2, x_of(2))).json()["y"]

    assert close(run(main()), replay(model, [(x_of(1), False), (x_of(2), False)])[1])


@pytest.mark.parametrize(
    "text", ['{"seq": 1, "x": [NaN, 1, 2]}', '{"seq": 1, "x": [Infinity, 1, 2]}']
)
def test_non_finite_x_is_refused(run_dir, text):
    async def main():
        async with in_process(run_dir) as client:
            response = await client.post(
                "/v1/streams/n/steps", content=text, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 422 and response.json()["code"] == "invalid_x"
            assert "finite" in response.json()["message"]
            assert (await client.get("/v1/streams/n")).status_code == 404

    run(main())


def test_limits_refuse_large_bodies_steps_and_batches(run_dir):
    async def main():
        async with in_process(
            run_dir, max_body_bytes=2000, max_steps_per_request=4, max_streams_per_request=3
        ) as client:
            big = await client.post("/v1/streams/l/steps", json={"seq": 1, "x": [[0.0] * 3] * 200})
            assert big.status_code == 413 and big.json()["code"] == "body_too_large"

            async def chunks():  # no Content-Length: refused while reading
                for _ in range(50):
                    yield b" " * 100

            streamed = await client.post(
                "/v1/streams/l/steps",
                content=chunks(),
                headers={"Content-Type": "application/json"},
            )
            assert streamed.status_code == 413
            steps = await client.post("/v1/streams/l/steps", json={"seq": 1, "x": [x_of(1)] * 5})
            assert steps.status_code == 413 and steps.json()["code"] == "too_many_steps"
            items = [{"id": f"s{i}", "seq": 1, "x": x_of(1)} for i in range(4)]
            batch = await client.post("/v1/steps", json={"steps": items})
            assert batch.status_code == 413 and batch.json()["code"] == "too_many_streams"
            invalid_json = await client.post(
                "/v1/streams/l/steps", content=b"{", headers={"Content-Type": "application/json"}
            )
            assert invalid_json.status_code == 400 and invalid_json.json()["code"] == "invalid_json"
            bad_id = await step(client, "bad id!", 1, x_of(1))
            assert bad_id.status_code == 422 and bad_id.json()["code"] == "invalid_stream_id"
            long_id = await step(client, "a" * 129, 1, x_of(1))
            assert long_id.status_code == 422
            assert (await client.get("/v1/streams/l")).status_code == 404

    run(main())


def test_batch_endpoint_answers_each_item_on_its_own(run_dir, model):
    async def main():
        async with in_process(run_dir) as client:
            await step(client, "p", 1, x_of(1))
            items = [
                {"id": "p", "seq": 2, "x": x_of(2)},
                {"id": "q", "seq": 1, "x": x_of(3, k=2)},
                {"id": "p", "seq": 3, "x": x_of(4)},  # same stream again: applied after seq 2
                {"id": "r", "seq": 2, "x": x_of(1)},  # unknown stream
                {"id": "s", "seq": 1, "x": [1.0]},  # wrong feature count
                {"id": "bad id", "seq": 1, "x": x_of(1)},
                {"id": "t", "seq": 1, "x": x_of(5), "start": True},
                "not an object",
            ]
            response = await client.post("/v1/steps", json={"steps": items})
            assert response.status_code == 200
            return response.json()["results"]

    results = run(main())
    assert [r["status"] for r in results] == [200, 200, 200, 404, 422, 422, 200, 422]
    assert [r["id"] for r in results[:7]] == ["p", "q", "p", "r", "s", "bad id", "t"]
    assert results[3]["error"]["code"] == "stream_not_found"
    assert results[4]["error"]["code"] == "invalid_x"
    for r in results:
        if r["status"] != 200:
            assert r["error"]["code"] and r["error"]["message"]
    p = replay(model, [(x_of(1), False), (x_of(2), False), (x_of(4), False)])
    assert close(results[0]["y"], p[1]) and close(results[2]["y"], p[2])
    assert close(results[1]["y"], replay(model, [(x_of(3, k=2), False)])[0])
    assert close(results[6]["y"], replay(model, [(x_of(5), False)])[0])


def test_health_metrics_schema_and_unknown_routes(run_dir):
    async def main():
        async with in_process(run_dir) as client:
            await step(client, "m", 1, x_of(1))
            health = (await client.get("/healthz")).json()
            assert health["status"] == "ok" and health["input_size"] == FEATURES
            metrics = (await client.get("/metrics")).text
            for name in (
                "seqstate_requests_total", "seqstate_request_seconds_bucket",
                "seqstate_batch_size_bucket", "seqstate_live_streams 1.0",
                "seqstate_store_errors", "seqstate_steps_total",
            ):  # fmt: skip
                assert name in metrics
            assert 'route="/v1/streams/{stream_id}/steps",status="200"' in metrics
            schema = (await client.get("/openapi.json")).json()
            assert {"/v1/streams/{stream_id}/steps", "/v1/steps", "/v1/streams/{stream_id}"} <= set(
                schema["paths"]
            )
            missing = await client.get("/v2/nothing")
            assert missing.status_code == 404 and missing.json()["code"] == "not_found"
            method = await client.put("/v1/streams/m")
            assert method.status_code == 405 and method.json()["code"] == "method_not_allowed"

    run(main())


def test_the_server_process_freezes_its_startup_objects_out_of_gc_scans(run_dir, model):
    """``seqstate serve`` (freeze_startup): what is alive once the server is open leaves the
    collector's scans; steps still apply and match the model."""
    import gc

    async def main():
        app = create_app(make_config(run_dir), freeze_startup=True)
        async with serving(app) as client:
            frozen = gc.get_freeze_count()
            response = await step(client, "f", 1, x_of(1))
        return frozen, response

    try:
        frozen, response = run(main())
    finally:
        gc.unfreeze()  # the test process goes on collecting as before
    assert frozen > 0 and response.status_code == 200
    assert close(response.json()["y"], replay(model, [(x_of(1), False)])[-1])


def test_the_step_route_documents_its_body_answer_and_path_parameter(run_dir):
    """The single-step route parses its body itself (no per-request parameter solving); its
    OpenAPI operation still names the path parameter, the StepBody request body, the
    StepAnswer answer and the error answers."""
    from seqstate.serve.schemas import ForecastBody, StepBody

    app = create_app(make_config(run_dir))
    operation = app.openapi()["paths"]["/v1/streams/{stream_id}/steps"]["post"]
    assert [(p["name"], p["in"], p["required"]) for p in operation["parameters"]] == [
        ("stream_id", "path", True)
    ]
    body = operation["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert body["required"] and set(schema["properties"]) == set(StepBody.model_fields)
    assert schema["required"] == ["seq", "x"] and schema["additionalProperties"] is False
    # the forecast route reads its body itself too (any Content-Type) and documents it
    forecast = app.openapi()["paths"]["/v1/streams/{stream_id}/forecast"]["post"]
    schema = forecast["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == set(ForecastBody.model_fields)
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/StepAnswer"}
    assert {"401", "409", "413", "422", "429", "503"} <= set(operation["responses"])


def test_a_body_that_does_not_arrive_in_time_is_a_408_and_a_slow_one_in_time_is_served(run_dir):
    """The body deadline bounds the whole read (a client dribbling bytes cannot hold a
    request forever); chunks arriving within it make one body."""
    body = json.dumps({"seq": 1, "x": x_of(1)}).encode()

    async def post(app, chunks: list[bytes], stall: bool) -> tuple[int, dict]:
        messages = [
            {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1 or stall}
            for i, chunk in enumerate(chunks)
        ]

        async def receive():
            if messages:
                await asyncio.sleep(0.01)
                return messages.pop(0)
            await asyncio.sleep(3600)  # the rest never comes

        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        headers = [
            (b"authorization", f"Bearer {TOKEN}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/v1/streams/slow/steps",
            "raw_path": b"/v1/streams/slow/steps", "query_string": b"", "root_path": "",
            "headers": headers, "server": ("test", 80), "client": ("test", 1),
        }  # fmt: skip
        await app(scope, receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"])

    async def main():
        app = create_app(make_config(run_dir, body_timeout_s=0.2))
        async with app.router.lifespan_context(app):
            stalled = await post(app, [body[:5]], stall=True)
            slow = await post(app, [body[:5], body[5:9], body[9:]], stall=False)
        return stalled, slow

    (status, answer), (slow_status, slow_answer) = run(main())
    assert status == 408 and answer["code"] == "body_timeout"
    assert slow_status == 200 and slow_answer["seq"] == 1 and not slow_answer["replayed"]


def test_json_answers_carry_their_length_and_type(run_dir):
    async def main():
        async with in_process(run_dir) as client:
            answers = [
                await step(client, "h", 1, x_of(1)),
                await client.get("/v1/streams/h"),
                await client.get("/v1/model"),
            ]
        return answers

    for answer in run(main()):
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        assert int(answer.headers["content-length"]) == len(answer.content)
        assert json.loads(answer.content)
