"""Peak memory (VmHWM) of a real server process under the two memory attacks:

  ws:   WebSocket clients that send frames of 512 steps and never read an answer
  http: 120 concurrent POST /v1/steps of about 1 MiB each (the default body limit)

    PYTHONPATH=src python benchmarks/serve_memory.py ws|http [--frames 3000] [--seconds 20]

Prints the server's resident set before the attack and its peak, in MB. The server is the
one ``python -m seqstate.serve`` of the ``PYTHONPATH`` given (so the same script measures an
older tree), on loopback, with a small LSTM and the memory:// store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import torch

TOKEN = "memory-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _rss(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            fields[name] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _server(run_dir: str) -> tuple[subprocess.Popen, str, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable, "-m", "seqstate.serve", run_dir, "--port", str(port), "--token", TOKEN,
        "--store", "memory://", "--ttl", "0",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return process, url, port
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start")


def _raw_websocket(port: int) -> socket.socket:
    """A WebSocket opened by hand on a plain socket that is never read from again (a client
    library would read answers into its own buffers behind the attack's back)."""
    import base64

    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"upgrade refused: {head[:80]!r}")
    return sock


def _frame(text: str) -> bytes:
    """A masked client text frame (RFC 6455 5.2), payloads under 64 KiB."""
    payload, mask = text.encode(), os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask + masked


def _ws_attack(port: int, frames: int, seconds: float, clients: int = 4) -> int:
    """``clients`` connections send ``frames`` frames of 512 steps in all, never reading."""
    import threading

    x = [[0.1, 0.2, 0.3]] * 512
    sent = [0] * clients
    sockets = [_raw_websocket(port) for _ in range(clients)]
    deadline = time.monotonic() + seconds

    def flood(c: int) -> None:
        sockets[c].settimeout(1.0)
        for i in range(frames // clients):
            while time.monotonic() < deadline:
                try:
                    frame = _frame(json.dumps({"stream": f"m{c}-{i}", "seq": 1, "x": x}))
                    sockets[c].sendall(frame)
                    break
                except TimeoutError:  # the server stopped reading: keep pushing until time
                    continue
            else:
                return
            sent[c] += 1

    threads = [threading.Thread(target=flood, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(max(deadline - time.monotonic(), 0))
    for sock in sockets:
        sock.close()
    return sum(sent)


async def _http_attack(url: str, requests: int) -> list[int]:
    item_steps = 200  # ~1 MiB: 100 streams x 200 steps x 3 features
    body = {
        "steps": [
            {
                "id": f"h{i}",
                "seq": 1,
                "x": [[0.123456789012, -1.23456789012, 2.3456789012]] * item_steps,
            }
            for i in range(100)
        ]
    }
    payload = json.dumps(body).encode()
    limits = httpx.Limits(max_connections=requests)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120, limits=limits) as c:

        async def post(r: int) -> int:
            text = payload.replace(b'"h', f'"r{r}-'.encode())
            response = await c.post("/v1/steps", content=text)
            return response.status_code

        return list(await asyncio.gather(*(post(r) for r in range(requests))))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("attack", choices=["ws", "http"])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=120)
    args = parser.parse_args()
    from seqstate.core.model import SequenceModel
    from seqstate.core.saved import save_model

    with tempfile.TemporaryDirectory() as run_dir:
        torch.manual_seed(0)
        save_model(SequenceModel(input_size=3, output_size=2, cell="lstm", hidden_size=8), run_dir)
        process, url, port = _server(run_dir)
        try:
            before, _ = _rss(process.pid)
            if args.attack == "ws":
                sent = _ws_attack(port, args.frames, args.seconds)
                detail = f"frames sent {sent}"
            else:
                statuses = asyncio.run(_http_attack(url, args.requests))
                detail = "statuses " + json.dumps({s: statuses.count(s) for s in set(statuses)})
            time.sleep(1.0)
            now, peak = _rss(process.pid)  # (the attack's sockets are closed by now)
            metrics = httpx.get(url + "/metrics", headers=AUTH).text
            applied = [line for line in metrics.splitlines() if "steps_total{" in line]
            detail += "; " + ", ".join(line.split("{")[1] for line in applied)
            print(
                f"{args.attack}: rss before {before:.0f} MB, peak {peak:.0f} MB, after "
                f"{now:.0f} MB ({detail}); pid {process.pid}, python {sys.version.split()[0]}, "
                f"load {os.getloadavg()[0]:.1f}"
            )
        finally:
            process.kill()
            process.wait()


if __name__ == "__main__":
    main()
