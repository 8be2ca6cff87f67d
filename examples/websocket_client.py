"""Stream many sequences through one WebSocket of a real `seqstate serve` process, and check
every answer against the model run in-process (the server keeps each stream's state).

Starts the server on 127.0.0.1 (memory store, a random token), pipelines steps of several
streams on one connection, retries a step (answered from the store, applied once), ends the
streams and stops the server.

    python examples/websocket_client.py   (SEQSTATE_EXAMPLE_QUICK=1: fewer steps)
"""

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import websockets

import seqstate

QUICK = os.environ.get("SEQSTATE_EXAMPLE_QUICK") == "1"
STREAMS, STEPS, FEATURES = 4, (5 if QUICK else 50), 3

rng = np.random.default_rng(0)
model = seqstate.SequenceModel(input_size=FEATURES, output_size=2, hidden_size=16, cell="lstm")
run_dir = Path(tempfile.mkdtemp()) / "model"
seqstate.save_model(model, run_dir)
ticks = rng.normal(size=(STEPS, STREAMS, FEATURES)).astype(np.float32)
names = [f"sensor-{i}" for i in range(STREAMS)]

with socket.socket() as probe:  # a free port on loopback
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
token = secrets.token_urlsafe(24)
server = subprocess.Popen(
    [sys.executable, "-m", "seqstate.serve", str(run_dir), "--port", str(port),
     "--store", "memory://", "--token", token, "--max-wait-ms", "5"],
    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
)  # fmt: skip


def wait_until_healthy(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start")


async def stream_all() -> dict:
    answers: dict = {name: [] for name in names}
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/ws", additional_headers=headers) as ws:
        for seq, tick in enumerate(ticks, start=1):
            for name, x in zip(names, tick, strict=True):  # pipelined: no wait per step
                await ws.send(json.dumps({"stream": name, "seq": seq, "x": x.tolist()}))
            for _ in names:  # answers of different streams may arrive in any order
                answer = json.loads(await ws.recv())
                if "error" in answer:
                    raise RuntimeError(answer["error"])
                answers[answer["stream"]].append(answer["y"])
        # a client that lost an answer resends the step: it is not applied twice
        last = {"stream": names[0], "seq": STEPS, "x": ticks[-1, 0].tolist()}
        await ws.send(json.dumps(last))
        retry = json.loads(await ws.recv())
        assert retry["replayed"] and retry["y"] == answers[names[0]][-1]
        for name in names:
            await ws.send(json.dumps({"op": "end", "stream": name}))
            assert json.loads(await ws.recv())["deleted"]
    return answers


try:
    wait_until_healthy()
    answers = asyncio.run(stream_all())
finally:
    server.terminate()
    server.wait(timeout=30)
    server.stderr.close()

# The same sequences run in-process, one state per stream: the server's answers match.
expected = seqstate.Streams(model)
reference = np.stack([expected.step(names, tick) for tick in ticks])  # (STEPS, STREAMS, 2)
served = np.stack([answers[name] for name in names], axis=1)
assert np.allclose(served, reference, atol=1e-5), np.abs(served - reference).max()
print(
    f"{STREAMS} streams x {STEPS} steps over one WebSocket: every answer matches the model "
    f"(max difference {np.abs(served - reference).max():.1e}); a retried step was answered "
    "from the store, not applied twice."
)
