"""Load benchmark of the streaming server on loopback (not a test): steps/s and latency.

Side by side, each server a real uvicorn process with the same settings:

* ceiling      a trivial FastAPI endpoint that does no work (what HTTP alone costs here)
* memory       the seqstate server, memory store, batching on
* unbatched    the same with batching off (one model call per step)
* sqlite       SQLite store (WAL, synchronous=FULL: every batch fsync'ed before answering)
* redis        Redis store (if redis-server is installed), appendfsync everysec

Each runs two loads over 1 000 streams: ``single`` (one step per request, many concurrent
clients) and ``batch`` (POST /v1/steps with many streams per request). The load generator is
asyncio + httpx in ``--load-processes`` processes. Writes the serve section of BENCHMARKS.md.

    .venv/bin/python benchmarks/serve.py            # full (about 3 minutes)
    .venv/bin/python benchmarks/serve.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import cpu_model, write_section

TOKEN = "bench-token-0123456789"
STREAMS = 1000
FEATURES = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the ceiling: a FastAPI app doing no work ------------------------------------------------


def ceiling_app():
    from fastapi import FastAPI
    from starlette.responses import Response

    app = FastAPI()
    answer = b'{"seq":1,"y":[0.0],"replayed":false}'

    @app.post("/v1/streams/{stream_id}/steps")
    async def step(stream_id: str) -> Response:
        return Response(answer, media_type="application/json")

    @app.post("/v1/steps")
    async def steps() -> Response:
        return Response(b'{"results":[]}', media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return app


def serve_ceiling(port: int) -> None:
    import uvicorn

    uvicorn.run(ceiling_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- load generator (runs in its own process, prints JSON) ----------------------------------


async def _load(
    url: str, mode: str, part: int, parts: int, tasks: int, seconds: float, warmup: float
) -> dict:
    import httpx

    mine = [f"bench-{i}" for i in range(STREAMS) if i % parts == part]
    seqs = dict.fromkeys(mine, 0)
    latencies: list[float] = []
    counts = {"requests": 0, "steps": 0, "errors": 0}
    x = [0.1] * FEATURES
    headers = {"Authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=tasks, max_keepalive_connections=tasks)
    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + seconds
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=60
    ) as client:

        async def run(owned: list[str]) -> None:
            i = 0
            while time.perf_counter() < end:
                if mode == "single":
                    stream = owned[i % len(owned)]
                    i += 1
                    seq = seqs[stream] + 1
                    t0 = time.perf_counter()
                    r = await client.post(f"/v1/streams/{stream}/steps", json={"seq": seq, "x": x})
                    ok = r.status_code == 200
                    if ok:
                        seqs[stream] = seq
                    n = 1
                else:
                    body = {"steps": [{"id": s, "seq": seqs[s] + 1, "x": x} for s in owned]}
                    t0 = time.perf_counter()
                    r = await client.post("/v1/steps", json=body)
                    ok = r.status_code == 200
                    if ok:
                        for s in owned:
                            seqs[s] += 1
                    n = len(owned)
                t1 = time.perf_counter()
                if t0 >= measure_from and t1 <= end:
                    latencies.append(t1 - t0)
                    counts["requests"] += 1
                    counts["steps"] += n if ok else 0
                    counts["errors"] += 0 if ok else 1

        groups = [mine[k::tasks] for k in range(tasks)]
        await asyncio.gather(*(run(g) for g in groups if g))
    return {**counts, "latencies": latencies, "seconds": seconds}


def load_worker(args: argparse.Namespace) -> None:
    result = asyncio.run(
        _load(args.url, args.mode, args.part, args.parts, args.tasks, args.seconds, args.warmup)
    )
    print(json.dumps(result))


def run_load(
    url: str, mode: str, processes: int, tasks: int, seconds: float, warmup: float
) -> dict:
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--load-worker",
                "--url",
                url,
                "--mode",
                mode,
                "--part",
                str(p),
                "--parts",
                str(processes),
                "--tasks",
                str(tasks),
                "--seconds",
                str(seconds),
                "--warmup",
                str(warmup),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for p in range(processes)
    ]
    results = []
    for w in workers:
        out, _ = w.communicate(timeout=seconds + warmup + 120)
        results.append(json.loads(out))
    latencies = sorted(x for r in results for x in r["latencies"])

    def pct(q: float) -> float:
        return (
            1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]
            if latencies
            else float("nan")
        )

    return {
        "requests_s": sum(r["requests"] for r in results) / seconds,
        "steps_s": sum(r["steps"] for r in results) / seconds,
        "errors": sum(r["errors"] for r in results),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


# --- servers --------------------------------------------------------------------------------


class Server:
    def __init__(self, command: list[str], port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        import httpx

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not start")

    def batch_mean(self) -> float | None:
        import httpx

        try:
            text = httpx.get(
                self.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
            ).text
        except httpx.TransportError:
            return None
        total = re.search(r"^seqstate_batch_size_sum (\S+)$", text, re.M)
        count = re.search(r"^seqstate_batch_size_count (\S+)$", text, re.M)
        if not total or not count or float(count.group(1)) == 0:
            return None
        return float(total.group(1)) / float(count.group(1))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def seqstate_server(run_dir: Path, store: str, *extra: str) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "seqstate.serve", str(run_dir), "--port", str(port),
               "--token", TOKEN, "--store", store, "--ttl", "0", *extra]  # fmt: skip
    return Server(command, port)


def make_run_dir(directory: Path) -> Path:
    import torch

    from seqstate.checkpoint import save_model
    from seqstate.model import SequenceModel

    torch.manual_seed(0)
    model = SequenceModel(input_size=FEATURES, output_size=1, cell="lstm", hidden_size=64)
    return save_model(model, directory / "run")


def start_redis(directory: Path) -> tuple[subprocess.Popen, str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
         "--appendonly", "yes", "--appendfsync", "everysec"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    return process, f"redis://127.0.0.1:{port}/0"


# --- report ---------------------------------------------------------------------------------


def machine() -> str:
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} cores ({cpu_model()}), load average {load:.1f} at start; Python "
        f"{platform.python_version()}, torch {torch.__version__}, {platform.system()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per load")
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--clients", type=int, default=64, help="concurrent single-step clients")
    parser.add_argument("--batch-clients", type=int, default=8, help="concurrent batch clients")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    # internal modes
    parser.add_argument("--load-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ceiling-server", type=int, default=None, help=argparse.SUPPRESS)
    for name in ("url", "mode"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    for name in ("part", "parts", "tasks"):
        parser.add_argument(f"--{name}", type=int, help=argparse.SUPPRESS)
    for name in ("warmup",):
        parser.add_argument(f"--{name}", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_worker:
        return load_worker(args)
    if args.ceiling_server is not None:
        return serve_ceiling(args.ceiling_server)

    seconds = args.seconds or (2.0 if args.quick else 8.0)
    warmup = 0.5 if args.quick else 2.0
    processes = args.load_processes
    per_process = max(1, args.clients // processes)
    batch_tasks = max(1, args.batch_clients // processes)
    header = machine()
    print(header, flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        run_dir = make_run_dir(tmp_path)
        redis = start_redis(tmp_path)
        configs: list[tuple[str, object]] = [
            (
                "ceiling (FastAPI, no work)",
                lambda: Server(
                    [sys.executable, __file__, "--ceiling-server", str(p := free_port())], p
                ),
            ),
            ("memory, batched", lambda: seqstate_server(run_dir, "memory://")),
            ("memory, unbatched", lambda: seqstate_server(run_dir, "memory://", "--no-batching")),
            (
                "sqlite, batched",
                lambda: seqstate_server(run_dir, f"sqlite:///{tmp_path / 'bench.sqlite'}"),
            ),
        ]
        if redis is not None:
            configs.append(("redis, batched", lambda: seqstate_server(run_dir, redis[1])))
        try:
            for name, start in configs:
                server = start()  # type: ignore[operator]
                try:
                    for mode, tasks in (("single", per_process), ("batch", batch_tasks)):
                        result = run_load(server.url, mode, processes, tasks, seconds, warmup)
                        result.update(name=name, mode=mode, batch_mean=server.batch_mean())
                        rows.append(result)
                        print(_row(result), flush=True)
                finally:
                    server.stop()
        finally:
            if redis is not None:
                redis[0].terminate()
                redis[0].wait(timeout=20)
    text = _report(rows, header, seconds, args)
    print(text)
    if not args.no_write:
        write_section("serve", text)


def _row(r: dict) -> str:
    mean = f"{r['batch_mean']:.1f}" if r.get("batch_mean") else "-"
    return (
        f"| {r['name']} | {r['mode']} | {r['requests_s']:,.0f} | {r['steps_s']:,.0f} | "
        f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {mean} | {r['errors']} |"
    )


def _report(rows: list[dict], header: str, seconds: float, args: argparse.Namespace) -> str:
    def find(name: str, mode: str) -> dict | None:
        return next((r for r in rows if r["name"].startswith(name) and r["mode"] == mode), None)

    lines = [
        "## Serving (`benchmarks/serve.py`)",
        "",
        f"Machine: {header}. Shared box: other jobs were running, so absolute figures are noisy;",
        "the ratios between rows (same run, same machine) are what to read.",
        "",
        f"Command: `.venv/bin/python benchmarks/serve.py{' --quick' if args.quick else ''}` "
        f"({seconds:g} s measured per row, {STREAMS} streams, LSTM F={FEATURES} H=64, "
        f"{args.clients} single-step clients / {args.batch_clients} batch clients in "
        f"{args.load_processes} load processes on the same machine).",
        "",
        "| server | load | requests/s | steps/s | p50 ms | p99 ms | mean batch | errors |",
        "|---|---|---|---|---|---|---|---|",
        *(_row(r) for r in rows),
        "",
    ]
    ceiling, memory = find("ceiling", "single"), find("memory, batched", "single")
    unbatched_b, memory_b = find("memory, unbatched", "batch"), find("memory, batched", "batch")
    unbatched_s = find("memory, unbatched", "single")
    sqlite = find("sqlite", "single")

    def ratio(a: dict | None, b: dict | None, key: str) -> str:
        if not a or not b or not b[key]:
            return "n/a (no completed requests)"
        return f"{a[key] / b[key]:.2f}x"

    lines += [
        f"- memory / ceiling, requests/s (single): {ratio(memory, ceiling, 'requests_s')} "
        "(target >= 0.5x)",
        f"- batched / unbatched, steps/s (single-step requests): "
        f"{ratio(memory, unbatched_s, 'steps_s')}",
        "- batched / unbatched, steps/s (batch requests): "
        f"{ratio(memory_b, unbatched_b, 'steps_s')} (target >= 3x)",
        f"- sqlite / memory, steps/s (single): {ratio(sqlite, memory, 'steps_s')} (target >= 0.7x)",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
