"""The WebSocket endpoint and --workers, against real server processes."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import numpy as np
import pytest
import websockets

from conftest import AUTH, replay

ATOL = 1e-5


def x_for(stream: int, seq: int) -> list[float]:
    return [np.sin(stream + 0.3 * seq), np.cos(0.7 * seq), 0.01 * ((stream * 31 + seq) % 17)]


@pytest.fixture(scope="module")
def ws_server(run_dir):
    from conftest import ServerProcess

    server = ServerProcess(run_dir, "--store", "memory://", "--max-wait-ms", "20")
    server.start()
    yield server
    server.stop()
    server.log.close()


def ws_url(server) -> str:
    return f"ws://127.0.0.1:{server.port}/v1/ws"


def test_pipelined_steps_of_many_streams_match_the_model_and_share_batches(ws_server, model):
    streams, steps = 12, 5

    async def main():
        async with websockets.connect(ws_url(ws_server), additional_headers=AUTH) as ws:
            for seq in range(1, steps + 1):  # everything sent before any answer is read
                for s in range(streams):
                    await ws.send(json.dumps({"stream": f"w{s}", "seq": seq, "x": x_for(s, seq)}))
            answers = [json.loads(await ws.recv()) for _ in range(streams * steps)]
            # a retry of the last step is answered from the store; a gap is refused
            await ws.send(json.dumps({"stream": "w0", "seq": steps, "x": x_for(0, steps)}))
            retry = json.loads(await ws.recv())
            await ws.send(json.dumps({"stream": "w0", "seq": steps + 2, "x": x_for(0, 1)}))
            gap = json.loads(await ws.recv())
            await ws.send('{"stream": "w0", "seq": 1, "x": [NaN, 1, 2]}')
            invalid = json.loads(await ws.recv())
            await ws.send(json.dumps({"stream": "w0", "seq": 1, "x": [1.0]}))
            wrong_features = json.loads(await ws.recv())
            return answers, retry, gap, invalid, wrong_features

    answers, retry, gap, invalid, wrong_features = asyncio.run(main())
    by_stream: dict[str, list] = {}
    for answer in answers:
        assert "error" not in answer, answer
        by_stream.setdefault(answer["stream"], []).append((answer["seq"], answer["y"]))
    for s in range(streams):
        got = by_stream[f"w{s}"]
        assert [seq for seq, _ in got] == list(range(1, steps + 1))  # in order per stream
        expected = replay(model, [(x_for(s, seq), False) for seq in range(1, steps + 1)])
        assert np.allclose([y for _, y in got], expected, atol=ATOL)
    assert retry["replayed"] is True and retry["y"] == by_stream["w0"][-1][1]
    assert gap["status"] == 409 and gap["error"]["code"] == "seq_gap"
    assert gap["error"]["expected_seq"] == steps + 1
    assert invalid["status"] == 400 and invalid["error"]["code"] == "invalid_json"
    assert wrong_features["status"] == 422 and wrong_features["error"]["code"] == "invalid_x"
    metrics = httpx.get(ws_server.url + "/metrics", headers=AUTH).text
    calls = float(re.search(r"^seqstate_batch_size_count (\S+)$", metrics, re.M).group(1))
    assert calls < streams * steps  # steps of different streams shared model calls


def test_http_and_websocket_steps_of_one_stream_follow_the_same_rules(ws_server, model):
    async def main():
        async with httpx.AsyncClient(base_url=ws_server.url, headers=AUTH) as client:
            first = await client.post("/v1/streams/mixed/steps", json={"seq": 1, "x": x_for(7, 1)})
            async with websockets.connect(ws_url(ws_server), additional_headers=AUTH) as ws:
                await ws.send(json.dumps({"stream": "mixed", "seq": 2, "x": x_for(7, 2)}))
                second = json.loads(await ws.recv())
                await ws.send(json.dumps({"stream": "mixed", "seq": 2, "x": x_for(7, 9)}))
                conflict = json.loads(await ws.recv())
            third = await client.post("/v1/streams/mixed/steps", json={"seq": 3, "x": x_for(7, 3)})
            async with websockets.connect(ws_url(ws_server), additional_headers=AUTH) as ws:
                await ws.send(json.dumps({"op": "end", "stream": "mixed"}))
                ended = json.loads(await ws.recv())
            gone = await client.get("/v1/streams/mixed")
            return first.json()["y"], second, conflict, third.json()["y"], ended, gone

    first, second, conflict, third, ended, gone = asyncio.run(main())
    expected = replay(model, [(x_for(7, seq), False) for seq in (1, 2, 3)])
    assert np.allclose([first, second["y"], third], expected, atol=ATOL)
    assert conflict["error"]["code"] == "seq_conflict"
    assert ended == {"stream": "mixed", "op": "end", "deleted": True}
    assert gone.status_code == 404


def test_a_websocket_without_the_token_is_refused(ws_server):
    async def main():
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(ws_url(ws_server)):
                pass
        return refused.value.response.status_code

    assert asyncio.run(main()) == 403


def test_two_workers_share_one_sqlite_store(server_factory, model, tmp_path):
    database = tmp_path / "workers.sqlite"
    server = server_factory("--store", f"sqlite:///{database}", "--workers", "2", "--ttl", "0")
    server.start(timeout=60)
    streams, steps = 6, 4

    async def main():
        answers: dict[int, list] = {s: [] for s in range(streams)}

        async def one_stream(s: int) -> None:
            for seq in range(1, steps + 1):  # a new connection per step: either worker
                async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as client:
                    r = await client.post(f"/v1/streams/k{s}/steps", json={"seq": seq,
                                          "x": x_for(s, seq)})  # fmt: skip
                    assert r.status_code == 200, r.text
                    answers[s].append(r.json()["y"])

        await asyncio.gather(*(one_stream(s) for s in range(streams)))
        return answers

    answers = asyncio.run(main())
    for s in range(streams):
        expected = replay(model, [(x_for(s, seq), False) for seq in range(1, steps + 1)])
        assert np.allclose(answers[s], expected, atol=ATOL)
    server.stop()
    assert server.process.returncode == 0
