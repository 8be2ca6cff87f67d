"""Regression tests of the adversarial review of issue #21, each against real server processes
over loopback (and a real redis-server where Redis is involved); each failed before its fix.
The review's numbers are the cases, scaled to run in seconds."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import websockets

from conftest import AUTH, TOKEN, replay

ATOL = 1e-5


def x_for(stream: int, seq: int, variant: float = 0.0) -> list[float]:
    return [np.sin(stream + 0.3 * seq) + variant, np.cos(0.7 * seq), 0.01 * (seq % 17)]


def ws_url(server) -> str:
    return f"ws://127.0.0.1:{server.port}/v1/ws"


# --- 1. the WebSocket `end` keeps per-stream order ----------------------------------------


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_steps_pipelined_after_an_end_apply_in_order(server_factory, model, tmp_path, store):
    url = "memory://" if store == "memory" else f"sqlite:///{tmp_path / 'end.sqlite'}"
    server = server_factory("--store", url, "--max-wait-ms", "2")
    server.start()
    trials = 25  # the review: 50 trials per store, 49 wrong
    a, b, c = x_for(0, 1), x_for(1, 1, 0.5), x_for(2, 2)

    async def main():
        async with websockets.connect(ws_url(server), additional_headers=AUTH) as ws:
            for t in range(trials):  # pipelined: nothing is read before all is sent
                stream = f"e{t}"
                await ws.send(json.dumps({"stream": stream, "seq": 1, "x": a}))
                await ws.send(json.dumps({"op": "end", "stream": stream}))
                await ws.send(json.dumps({"stream": stream, "seq": 1, "x": b}))
                await ws.send(json.dumps({"stream": stream, "seq": 2, "x": c}))
            return [json.loads(await ws.recv()) for _ in range(4 * trials)]

    frames = asyncio.run(main())
    expected_a = replay(model, [(a, False)])[0]
    expected_b, expected_c = replay(model, [(b, False), (c, False)])
    with httpx.Client(base_url=server.url, headers=AUTH) as client:
        for t in range(trials):
            mine = [f for f in frames if f["stream"] == f"e{t}"]
            assert len(mine) == 4, mine
            first, ended, second, third = mine  # answered in the order sent
            assert "error" not in first and np.allclose(first["y"], expected_a, atol=ATOL)
            assert ended == {"stream": f"e{t}", "op": "end", "deleted": True}
            assert "error" not in second, second
            assert "error" not in third, third
            assert np.allclose(second["y"], expected_b, atol=ATOL)
            assert np.allclose(third["y"], expected_c, atol=ATOL)
            assert client.get(f"/v1/streams/e{t}").json()["seq"] == 2  # C is stored, not lost
