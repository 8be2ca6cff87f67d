"""A real server process: durability under SIGKILL on SQLite, and the CLI's refusal to run open."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys

import httpx
import numpy as np
import pytest

from conftest import AUTH, replay

ATOL = 1e-5


def x_for(stream: int, seq: int) -> list[float]:
    # deterministic per (stream, seq): a retry after a crash repeats the exact body
    return [np.sin(stream + 0.3 * seq), np.cos(0.7 * seq), 0.01 * ((stream * 31 + seq) % 17)]


async def kill_three_times(server, rng, low: float, high: float) -> None:
    """SIGKILL the server three times at random moments (``low``-``high`` s apart) and start
    it again each time; then let the clients run on a little."""
    for _ in range(3):  # bounded
        await asyncio.sleep(rng.uniform(low, high))
        server.kill()
        await asyncio.sleep(rng.uniform(0.0, 0.2))
        await asyncio.to_thread(server.start)
    await asyncio.sleep(0.5)


def check_nothing_lost_or_doubled(server, model, acked, prefix: str) -> None:
    """Each stream ``{prefix}-{i}``: its acknowledged steps are 1..last in order, the store
    holds ``last`` or ``last + 1`` (applied, unacknowledged), and after finishing the step in
    flight and one more, every answer equals a plain replay (a step applied twice would shift
    every later answer)."""
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=20) as client:
        for stream, answered in acked.items():
            seqs = [seq for seq, _ in answered]
            last = seqs[-1] if seqs else 0
            assert seqs == list(range(1, last + 1))
            info = client.get(f"/v1/streams/{prefix}-{stream}")
            stored = info.json()["seq"] if info.status_code == 200 else 0
            assert stored in (last, last + 1)  # nothing acknowledged lost
            more = []
            for seq in (last + 1, last + 2):  # retry or finish step last + 1, then one more
                response = client.post(
                    f"/v1/streams/{prefix}-{stream}/steps",
                    json={"seq": seq, "x": x_for(stream, seq)},
                )
                assert response.status_code == 200, response.text
                more.append(response.json()["y"])
            expected = replay(model, [(x_for(stream, seq), False) for seq in range(1, last + 3)])
            got = [y for _, y in answered] + more
            assert np.allclose(got, expected, atol=ATOL), f"stream {stream} diverged"


def test_the_server_refuses_to_start_without_a_token(run_dir):
    result = subprocess.run(
        [sys.executable, "-m", "seqstate.serve", str(run_dir), "--store", "memory://"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "token" in result.stderr and "--no-auth" in result.stderr


@pytest.mark.slow
def test_no_acknowledged_step_is_lost_or_applied_twice_across_sigkills(
    run_dir, model, server_factory, tmp_path
):
    database = tmp_path / "streams.sqlite"
    server = server_factory("--store", f"sqlite:///{database}", "--ttl", "0", "--max-wait-ms", "2")
    server.start()
    streams = 24
    acked: dict[int, list[tuple[int, list]]] = {s: [] for s in range(streams)}
    rng = random.Random(20240607)
    errors: list[str] = []

    async def client_loop(client: httpx.AsyncClient, stream: int, stop: asyncio.Event) -> None:
        seq = 1
        while not stop.is_set():
            try:
                response = await client.post(
                    f"/v1/streams/st-{stream}/steps", json={"seq": seq, "x": x_for(stream, seq)}
                )
            except httpx.TransportError:
                await asyncio.sleep(0.05)  # server down: retry the same step
                continue
            if response.status_code != 200:
                errors.append(f"stream {stream} seq {seq}: {response.status_code} {response.text}")
                return
            acked[stream].append((seq, response.json()["y"]))
            seq += 1

    async def main() -> None:
        stop = asyncio.Event()
        limits = httpx.Limits(max_connections=streams)
        async with httpx.AsyncClient(
            base_url=server.url, headers=AUTH, timeout=20, limits=limits
        ) as client:
            tasks = [asyncio.create_task(client_loop(client, s, stop)) for s in range(streams)]
            await kill_three_times(server, rng, 0.2, 0.8)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)

    asyncio.run(main())
    assert not errors, errors[:3]
    assert sum(len(a) for a in acked.values()) > streams  # the streams made progress

    check_nothing_lost_or_doubled(server, model, acked, "st")
    server.stop()
    assert server.process.returncode is not None


@pytest.mark.slow
def test_binary_frames_on_sqlite_lose_no_acknowledged_step_across_sigkills(
    run_dir, model, server_factory, tmp_path
):
    """Frames of many streams on SQLite (each batch one transaction, one fsync, batches
    prepared while the previous one commits share the next commit): a frame is answered only
    once its steps are durable, so after any kill -9 every acknowledged step is stored, and a
    frame resent after the crash is replayed or applied, never applied twice."""
    import websockets

    from seqstate.serve.frames import decode, encode

    database = tmp_path / "frames.sqlite"
    server = server_factory("--store", f"sqlite:///{database}", "--ttl", "0", "--max-wait-ms", "2")
    server.start()
    streams, connections = 60, 3
    acked: dict[int, list[tuple[int, list]]] = {s: [] for s in range(streams)}
    rng = random.Random(20261207)
    errors: list[str] = []

    async def connection(owned: list[int], stop: asyncio.Event) -> None:
        names = [f"bf-{s}" for s in owned]
        seq = 1
        url = server.url.replace("http://", "ws://") + "/v1/ws"
        while not stop.is_set():
            x = np.asarray([x_for(s, seq) for s in owned], dtype=np.float32)[:, None]
            frame = encode({"op": "steps", "stream": names, "seq": [seq] * len(owned)}, x)
            try:
                async with websockets.connect(url, additional_headers=AUTH, open_timeout=5) as ws:
                    while not stop.is_set():
                        await ws.send(frame)
                        header, y = decode(await asyncio.wait_for(ws.recv(), timeout=20))
                        if header["status"] != [200] * len(owned):
                            errors.append(f"seq {seq}: {header['status']} {header['errors']}")
                            return
                        for i, s in enumerate(owned):
                            acked[s].append((seq, y[i, 0].tolist()))
                        seq += 1
                        x = np.asarray([x_for(s, seq) for s in owned], dtype=np.float32)[:, None]
                        frame = encode(
                            {"op": "steps", "stream": names, "seq": [seq] * len(owned)}, x
                        )
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException):
                await asyncio.sleep(0.05)  # server down: resend the same frame

    async def main() -> None:
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(connection(list(range(c, streams, connections)), stop))
            for c in range(connections)
        ]
        await kill_three_times(server, rng, 0.3, 0.9)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)

    asyncio.run(main())
    assert not errors, errors[:3]
    assert sum(len(a) for a in acked.values()) > streams  # the streams made progress

    check_nothing_lost_or_doubled(server, model, acked, "bf")
    server.stop()
