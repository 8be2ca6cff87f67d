"""Two server replicas sharing one real Redis: alternate freely, never double-apply a step."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import numpy as np
import pytest

from conftest import AUTH, ServerProcess, replay

ATOL = 1e-5
pytestmark = pytest.mark.slow


def x_for(seq: int, variant: float = 0.0) -> list[float]:
    return [0.3 * seq + variant, -0.1 * seq, 1.0 + variant]


@pytest.fixture(scope="module")
def replicas(redis_url, run_dir):
    servers = [ServerProcess(run_dir, "--store", redis_url, "--max-wait-ms", "5") for _ in range(2)]
    clients = []
    try:
        for server in servers:
            server.start()
            clients.append(httpx.Client(base_url=server.url, headers=AUTH, timeout=20))
        yield clients
    finally:
        for client in clients:
            client.close()
        for server in servers:
            server.stop()
            server.log.close()


def test_a_stream_advances_through_both_replicas_alternately(replicas, model):
    stream = f"alt-{uuid.uuid4().hex[:8]}"
    answers = []
    for seq in range(1, 7):
        client = replicas[seq % 2]
        response = client.post(f"/v1/streams/{stream}/steps", json={"seq": seq, "x": x_for(seq)})
        assert response.status_code == 200, response.text
        answers.append(response.json()["y"])
    retry = replicas[1].post(f"/v1/streams/{stream}/steps", json={"seq": 6, "x": x_for(6)})
    assert retry.json()["replayed"] is True and retry.json()["y"] == answers[-1]
    gap = replicas[0].post(f"/v1/streams/{stream}/steps", json={"seq": 9, "x": x_for(9)})
    assert gap.status_code == 409 and gap.json()["expected_seq"] == 7
    assert [c.get(f"/v1/streams/{stream}").json()["seq"] for c in replicas] == [6, 6]
    expected = replay(model, [(x_for(seq), False) for seq in range(1, 7)])
    assert np.allclose(answers, expected, atol=ATOL)


@pytest.mark.parametrize("same_body", [True, False])
def test_racing_replicas_apply_a_step_once(replicas, model, redis_url, same_body):
    streams = [f"race-{uuid.uuid4().hex[:8]}-{i}" for i in range(16)]
    urls = [str(c.base_url) for c in replicas]

    async def main():
        clients = [httpx.AsyncClient(base_url=u, headers=AUTH, timeout=20) for u in urls]
        try:
            await asyncio.gather(
                *(
                    clients[0].post(f"/v1/streams/{s}/steps", json={"seq": 1, "x": x_for(1)})
                    for s in streams
                )
            )

            async def race(stream):
                variants = (0.0, 0.0) if same_body else (0.0, 5.0)
                return await asyncio.gather(
                    *(
                        client.post(
                            f"/v1/streams/{stream}/steps", json={"seq": 2, "x": x_for(2, v)}
                        )
                        for client, v in zip(clients, variants, strict=True)
                    )
                )

            return await asyncio.gather(*(race(s) for s in streams))
        finally:
            for client in clients:
                await client.aclose()

    results = asyncio.run(main())
    for stream, pair in zip(streams, results, strict=True):
        applied = [r for r in pair if r.status_code == 200 and not r.json()["replayed"]]
        assert len(applied) == 1, [r.text for r in pair]  # exactly one replica applied it
        winner = pair.index(applied[0])
        other = pair[1 - winner]
        if same_body:
            assert other.status_code == 200 and other.json()["y"] == applied[0].json()["y"]
        else:
            assert other.status_code == 409
            assert other.json()["code"] in ("seq_race", "seq_conflict")
            assert other.json()["expected_seq"] == 3
        variant = 0.0 if same_body or winner == 0 else 5.0
        third = replicas[1].post(f"/v1/streams/{stream}/steps", json={"seq": 3, "x": x_for(3)})
        expected = replay(model, [(x_for(1), False), (x_for(2, variant), False), (x_for(3), False)])
        assert np.allclose(third.json()["y"], expected[2], atol=ATOL)
