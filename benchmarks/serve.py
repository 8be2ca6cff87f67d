"""Load benchmark of the streaming server on loopback (not a test): steps/s and latency.

Every row is a real server process and a closed-loop load: each stream has one step in
flight at a time (send step seq, wait for its answer, send seq+1), from ``--load-processes``
load processes on the same machine. Transports:

* ``http``  one step per ``POST /v1/streams/{id}/steps`` (a minimal asyncio HTTP/1.1 client,
            keep-alive pool of at most 100 connections per load process)
* ``ws``    ``/v1/ws``: each load process opens 2 WebSockets, each carrying half its streams

Servers, side by side in one run:

* ceiling       an endpoint that does no work, on the same stack (uvloop, httptools, guarded
                protocol): what HTTP alone costs here
* memory        the seqstate server, memory store (the fast stack: uvloop, httptools, orjson)
* memory/...    the same with one piece of the fast stack swapped back (asyncio loop, h11
                parser, stdlib json) to measure what each buys
* sqlite        SQLite store (WAL, synchronous=FULL: every batch fsync'ed before answering),
                with 1 and 2 worker processes
* redis         Redis store (appendfsync everysec), if redis-server is installed

Every server runs at once and the loads are interleaved round-robin (``--rounds``, median
shown), so a slow phase of a shared machine hits every row alike. Writes the serve section of
BENCHMARKS.md (ratios of rows of this one run, p50/p99, load average).

    .venv/bin/python benchmarks/serve.py            # full (about 4 minutes)
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
from typing import Any

from _report import cpu_model, load_average, write_section

TOKEN = "bench-token-0123456789"
FEATURES = 8
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the ceiling: an endpoint doing no work, on the server's own stack -----------------------


def serve_ceiling(port: int) -> None:
    import uvicorn
    from fastapi import FastAPI
    from starlette.responses import Response

    from seqstate.serve.guard import GuardedConfig, GuardedHttpToolsProtocol

    app = FastAPI()

    @app.post("/v1/streams/{stream_id}/steps")
    async def step(stream_id: str) -> Response:
        return Response(b'{"seq":1,"y":[0.0],"replayed":false}', media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    config = GuardedConfig(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
        loop="uvloop", http=GuardedHttpToolsProtocol, header_timeout_s=10.0,
        max_connections=1024,
    )  # fmt: skip
    uvicorn.Server(config).run()


# --- load generator (runs in its own process, prints JSON) ----------------------------------


class _Connection:
    """A minimal HTTP/1.1 keep-alive client connection: the load generator must cost far less
    than the server it measures (httpx's pure-Python parsing cost as much as the server)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def post(self, path: str, body: bytes) -> int:
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: bench\r\nAuthorization: %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (path.encode(), HEADERS["Authorization"].encode(), len(body), body)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        await self.reader.readexactly(length)
        return status


async def _load_http(url: str, streams: list[str], seconds: float, warmup: float) -> dict:
    latencies: list[float] = []
    counts = {"steps": 0, "errors": 0}
    x = [0.1] * FEATURES
    host, port = url.removeprefix("http://").split(":")
    pool: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(min(len(streams), 100)):
        pool.put_nowait(_Connection(*await asyncio.open_connection(host, int(port))))
    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + seconds

    async def one_stream(stream: str) -> None:
        seq = 1
        path = f"/v1/streams/{stream}/steps"
        while time.perf_counter() < end:
            connection = await pool.get()
            t0 = time.perf_counter()
            status = await connection.post(path, json.dumps({"seq": seq, "x": x}).encode())
            t1 = time.perf_counter()
            pool.put_nowait(connection)
            ok = status == 200
            seq += ok
            if measure_from <= t1 <= end:  # completed inside the measured window
                latencies.append(t1 - t0)
                counts["steps" if ok else "errors"] += 1

    await asyncio.gather(*(one_stream(s) for s in streams))
    while not pool.empty():
        pool.get_nowait().writer.close()
    return {**counts, "latencies": latencies}


async def _load_ws(url: str, streams: list[str], seconds: float, warmup: float) -> dict:
    import websockets

    latencies: list[float] = []
    counts = {"steps": 0, "errors": 0}
    x = [0.1] * FEATURES
    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + seconds
    ws_url = url.replace("http://", "ws://") + "/v1/ws"

    async def connection(owned: list[str]) -> None:
        seqs = dict.fromkeys(owned, 1)
        sent: dict[str, float] = {}
        async with websockets.connect(ws_url, additional_headers=HEADERS, max_size=None) as ws:

            async def send(stream: str) -> None:
                sent[stream] = time.perf_counter()
                await ws.send(json.dumps({"stream": stream, "seq": seqs[stream], "x": x}))

            for stream in owned:
                await send(stream)
            while sent:
                answer = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
                stream = answer["stream"]
                t0, t1 = sent.pop(stream), time.perf_counter()
                ok = "y" in answer
                seqs[stream] += ok
                if measure_from <= t1 <= end:  # completed inside the measured window
                    latencies.append(t1 - t0)
                    counts["steps" if ok else "errors"] += 1
                if t1 < end:
                    await send(stream)

    await asyncio.gather(*(connection(streams[k::2]) for k in range(2) if streams[k::2]))
    return {**counts, "latencies": latencies}


async def _load_ws_frames(
    url: str, streams: list[str], seconds: float, warmup: float, binary: bool
) -> dict:
    """Each connection sends one frame holding the next step of every stream it carries,
    waits for the answer frame (the same order), and sends the next: closed loop per frame."""
    import numpy as np
    import websockets

    from seqstate.serve.frames import decode, encode

    latencies: list[float] = []
    counts = {"steps": 0, "errors": 0}
    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + seconds
    ws_url = url.replace("http://", "ws://") + "/v1/ws"

    async def connection(owned: list[str]) -> None:
        x = np.full((len(owned), 1, FEATURES), 0.1, dtype=np.float32)
        plain_x = [0.1] * FEATURES
        seq = 1
        async with websockets.connect(ws_url, additional_headers=HEADERS, max_size=None) as ws:
            while True:
                t0 = time.perf_counter()
                if t0 >= end:
                    break
                if binary:
                    await ws.send(encode({"op": "steps", "stream": owned,
                                          "seq": [seq] * len(owned)}, x))  # fmt: skip
                    header, _ = decode(await asyncio.wait_for(ws.recv(), timeout=60))
                    ok = sum(status == 200 for status in header["status"])
                else:
                    items = [{"stream": s, "seq": seq, "x": plain_x} for s in owned]
                    await ws.send(json.dumps({"op": "steps", "steps": items}))
                    answer = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
                    ok = sum("y" in r for r in answer["results"])
                t1 = time.perf_counter()
                if ok != len(owned):  # a stream out of step: stop this connection's load
                    counts["errors"] += len(owned) - ok
                    break
                seq += 1
                if measure_from <= t1 <= end:
                    latencies.extend([t1 - t0] * ok)  # each step waited the whole frame
                    counts["steps"] += ok

    await asyncio.gather(*(connection(streams[k::2]) for k in range(2) if streams[k::2]))
    return {**counts, "latencies": latencies}


def load_worker(args: argparse.Namespace) -> None:
    streams = [f"{args.prefix}-{i}" for i in range(args.streams) if i % args.parts == args.part]

    def load(url: str, owned: list[str], seconds: float, warmup: float) -> Any:
        if args.transport in ("ws-frames", "ws-binary"):
            binary = args.transport == "ws-binary"
            return _load_ws_frames(url, owned, seconds, warmup, binary)
        if args.transport == "ws":
            return _load_ws(url, owned, seconds, warmup)
        return _load_http(url, owned, seconds, warmup)

    try:  # the same fast loop for both transports
        import uvloop

        result = uvloop.run(load(args.url, streams, args.seconds, args.warmup))
    except ImportError:
        result = asyncio.run(load(args.url, streams, args.seconds, args.warmup))
    Path(args.out).write_text(json.dumps(result))


def run_load(
    url: str, transport: str, streams: int, processes: int, seconds: float, warmup: float
) -> dict:
    prefix = f"{transport}{streams}-{time.monotonic_ns()}"  # fresh streams for every row
    outputs = [Path(tempfile.mkdtemp()) / "load.json" for _ in range(processes)]
    command = [sys.executable, __file__, "--load-worker", "--url", url, "--transport",
               transport, "--prefix", prefix, "--streams", str(streams), "--parts",
               str(processes), "--seconds", str(seconds), "--warmup", str(warmup)]  # fmt: skip
    workers = [
        subprocess.Popen([*command, "--part", str(p), "--out", str(outputs[p])])
        for p in range(processes)
    ]
    results = []
    for w, output in zip(workers, outputs, strict=True):
        w.wait(timeout=seconds + warmup + 120)
        results.append(json.loads(output.read_text()))
        shutil.rmtree(output.parent)
    latencies = sorted(v for r in results for v in r["latencies"])

    def pct(q: float) -> float:
        if not latencies:
            return float("nan")
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return {
        "steps_s": sum(r["steps"] for r in results) / seconds,
        "errors": sum(r["errors"] for r in results),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


# --- the same model in-process (no server): what the server is compared with ----------------


def inprocess_worker(args: argparse.Namespace) -> None:
    """Steps/s of ``Streams.step`` and of the server's engine alone (memory store, no
    transport) for ``--streams`` streams on the benchmark's model, 1 torch thread."""
    import gc

    import numpy as np
    import torch

    from seqstate.core.saved import load_model
    from seqstate.inference.streams import Streams
    from seqstate.serve.engine import Engine, StepRequest
    from seqstate.serve.stores import MemoryStore

    torch.set_num_threads(1)
    model = load_model(args.url)  # the run directory
    ids = [f"s{i}" for i in range(args.streams)]
    x = np.full((len(ids), FEATURES), 0.1, dtype=np.float32)
    streams = Streams(model)
    streams.step(ids, x)
    # as the server runs it: its default replay window (16 answers kept per stream), and the
    # objects alive after startup frozen out of the garbage collector's scans
    engine = Engine(model, MemoryStore(), ttl_s=0, replay_window=16)
    # the same engine on a records-only memory store: the per-stream path, for comparison
    records = Engine(model, MemoryStore(columns=False), ttl_s=0, replay_window=16)

    def requests(seq: int) -> list[StepRequest]:
        return [StepRequest(s, seq, x[i : i + 1], single=True, start=False)
                for i, s in enumerate(ids)]  # fmt: skip

    engine.process(requests(1))
    records.process(requests(1))
    measures = [
        ("streams", lambda k: streams.step(ids, x)),
        ("engine", lambda k: engine.process(requests(k))),
        ("engine_records", lambda k: records.process(requests(k))),
    ]
    try:  # a binary frame's steps as arrays, as the server hands them to its engine
        from seqstate.serve.engine import FrameSteps
    except ImportError:  # (a source tree from before frames travelled as arrays)
        pass
    else:
        frames = Engine(model, MemoryStore(), ttl_s=0, replay_window=16)
        x3 = x[:, None, :].copy()  # (n, 1, F)

        def frame(seq: int) -> list:
            return frames.process([FrameSteps(ids, np.full(len(ids), seq, np.int64), x3)])

        frame(1)
        measures.append(("engine_frames", frame))
    gc.collect()
    gc.freeze()
    result = {}
    for name, step in measures:
        count, started, k = 0, time.perf_counter(), 2
        while time.perf_counter() - started < args.seconds / 3:
            step(k)
            count, k = count + len(ids), k + 1
        result[name] = count / (time.perf_counter() - started)
    Path(args.out).write_text(json.dumps(result))


def run_inprocess(run_dir: Path, streams: int, seconds: float, source: str | None = None) -> dict:
    """The in-process measures (``source``: of the seqstate source tree there)."""
    output = Path(tempfile.mkdtemp()) / "inprocess.json"
    command = [sys.executable, __file__, "--inprocess-worker", "--url", str(run_dir),
               "--streams", str(streams), "--seconds", str(seconds),
               "--out", str(output)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if source is not None:
        env["PYTHONPATH"] = str(Path(source).resolve())
    subprocess.run(command, check=True, timeout=seconds * 4 + 120, env=env)
    result = json.loads(output.read_text())
    shutil.rmtree(output.parent)
    return result


# --- servers --------------------------------------------------------------------------------


class Server:
    def __init__(self, command: list[str], port: int, env: dict[str, str] | None = None) -> None:
        import httpx

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        self.process = subprocess.Popen(
            command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
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
            text = httpx.get(self.url + "/metrics", headers=HEADERS).text
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


def seqstate_server(run_dir: Path, store: str, *extra: str, env: dict | None = None) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "seqstate.serve", str(run_dir), "--port", str(port),
               "--token", TOKEN, "--store", store, "--ttl", "0", "--max-connections", "4096",
               *extra]  # fmt: skip
    return Server(command, port, env=env)


def make_run_dir(directory: Path) -> Path:
    import torch

    from seqstate.core.model import SequenceModel
    from seqstate.core.saved import save_model

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

    return (
        f"{os.cpu_count()} cores ({cpu_model()}), load average {load_average()} at start; "
        f"Python {platform.python_version()}, torch {torch.__version__}, {platform.system()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per row")
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    # internal mode: one load process
    parser.add_argument("--load-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inprocess-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ceiling-server", type=int, default=None, help=argparse.SUPPRESS)
    for name in ("url", "transport", "prefix", "out"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    for name in ("streams", "part", "parts"):
        parser.add_argument(f"--{name}", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=float, help=argparse.SUPPRESS)
    parser.add_argument(
        "--core", action="store_true", help="only the rows the targets need (no stack swaps)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="SERVER:TRANSPORT:STREAMS",
        help="run only these rows (repeatable; SERVER as in the table, e.g. "
        "'memory:ws-binary:100', 'sqlite, 1 worker:ws-binary:100'); no in-process baseline "
        "and no BENCHMARKS.md update",
    )
    parser.add_argument(
        "--inprocess",
        action="store_true",
        help="with --only: also measure in process each round (Streams.step and the engine "
        "alone, of this tree and of --baseline-src), medians printed",
    )
    parser.add_argument(
        "--baseline-src",
        default=None,
        help="also run every selected seqstate server from this source tree (PYTHONPATH), "
        "as rows named '<server> [baseline]', interleaved with this tree's: before/after pairs",
    )
    args = parser.parse_args()
    if args.load_worker:
        return load_worker(args)
    if args.inprocess_worker:
        return inprocess_worker(args)
    if args.ceiling_server is not None:
        return serve_ceiling(args.ceiling_server)

    seconds = args.seconds or (1.5 if args.quick else 3.0)
    warmup = 0.5
    header = machine()
    print(header, flush=True)
    rows: list[dict] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        run_dir = make_run_dir(tmp_path)
        redis = start_redis(tmp_path)
        sqlite = f"sqlite:///{tmp_path / 'bench.sqlite'}"
        sqlite2 = f"sqlite:///{tmp_path / 'bench2.sqlite'}"
        ceiling = [sys.executable, __file__, "--ceiling-server"]
        plan: list[tuple[str, object, list[tuple[str, int]]]] = [
            ("ceiling (no work, same stack)", lambda: Server([*ceiling, str(p := free_port())], p),
             [("http", 100)]),
            ("memory", lambda: seqstate_server(run_dir, "memory://"),
             [("http", 100), ("ws", 100), ("ws-frames", 100), ("ws-binary", 100),
              ("http", 1000), ("ws", 1000), ("ws-frames", 1000), ("ws-binary", 1000)]),
            ("memory/asyncio loop", lambda: seqstate_server(run_dir, "memory://", "--loop",
             "asyncio"), [("http", 100)]),
            ("memory/h11 parser", lambda: seqstate_server(run_dir, "memory://", "--http", "h11"),
             [("http", 100)]),
            ("memory/stdlib json", lambda: seqstate_server(run_dir, "memory://",
             env={"SEQSTATE_SERVE_JSON": "stdlib"}), [("http", 100), ("ws", 100)]),
            ("sqlite, 1 worker", lambda: seqstate_server(run_dir, sqlite),
             [("http", 100), ("ws", 100), ("ws", 1000), ("ws-binary", 100), ("ws-binary", 1000)]),
            ("sqlite, 2 workers", lambda: seqstate_server(run_dir, sqlite2, "--workers", "2"),
             [("http", 100), ("ws", 100), ("ws", 1000)]),
        ]  # fmt: skip
        if args.core:  # the stack swaps were measured before; the targets need the rest
            plan = [row for row in plan if "/" not in row[0] and "2 workers" not in row[0]]
        if redis is not None and not args.core:
            plan.append(
                ("redis", lambda: seqstate_server(run_dir, redis[1]), [("http", 100), ("ws", 100)])
            )
        if args.only:
            plan = _select(plan, args.only)
        if args.baseline_src:
            plan = _with_baseline(plan, args.baseline_src, tmp_path)
        servers: dict[str, Server] = {}
        samples: dict[tuple[str, str, int], list[dict]] = {}
        inprocess: list[dict] = []
        previous: list[dict] = []  # the baseline source's in-process measures
        try:
            for name, start, _ in plan:  # every server up at once: loads interleave below
                servers[name] = start()  # type: ignore[operator]
            for _ in range(args.rounds):  # round-robin: slow phases of the box hit every row
                for name, _, loads in plan:
                    for transport, streams in loads:
                        result = run_load(
                            servers[name].url,
                            transport,
                            streams,
                            args.load_processes,
                            seconds,
                            warmup,
                        )
                        result.update(name=name, transport=transport, streams=streams)
                        samples.setdefault((name, transport, streams), []).append(result)
                        print(_row({**result, "batch_mean": None}), flush=True)
                if not args.only or args.inprocess:
                    inprocess.append(run_inprocess(run_dir, 1000, seconds))
                    print(f"in-process, 1000 streams: {inprocess[-1]}", flush=True)
                if args.only and args.inprocess and args.baseline_src:
                    previous.append(run_inprocess(run_dir, 1000, seconds, args.baseline_src))
                    print(f"in-process [baseline], 1000 streams: {previous[-1]}", flush=True)
            for (name, _, _), runs in samples.items():
                median = sorted(runs, key=lambda r: r["steps_s"])[len(runs) // 2]
                rows.append({**median, "batch_mean": servers[name].batch_mean()})
        finally:
            for server in servers.values():
                server.stop()
            if redis is not None:
                redis[0].terminate()
                redis[0].wait(timeout=20)
    elapsed = time.monotonic() - started
    if args.only:  # a selection: the rows only
        print(f"load average {load_average()} at the end; {elapsed:.0f} s")
        for r in rows:
            print(_row(r))
        for label, runs in (("in-process", inprocess), ("in-process [baseline]", previous)):
            if runs:
                print(f"{label}, 1000 streams, median steps/s: {_medians(runs)}")
        return
    baseline = _medians(inprocess)
    text = _report(rows, header, seconds, elapsed, args, baseline)
    print(text)
    if not args.no_write:
        write_section("serve", text)


def _medians(runs: list[dict]) -> dict[str, float]:
    """Each in-process measure's median over the rounds."""
    return {
        name: sorted(r[name] for r in runs)[len(runs) // 2]
        for name in runs[0]
        if all(name in r for r in runs)
    }


def _select(plan: list, only: list[str]) -> list:
    """The plan's rows named by ``--only`` (``SERVER:TRANSPORT:STREAMS``)."""
    wanted = set()
    for spec in only:
        name, transport, streams = spec.rsplit(":", 2)
        wanted.add((name, transport, int(streams)))
    selected = []
    for name, start, loads in plan:
        kept = [(t, n) for t, n in loads if (name, t, n) in wanted]
        if kept:
            selected.append((name, start, kept))
    missing = wanted - {(name, t, n) for name, _, loads in selected for t, n in loads}
    if missing:
        raise SystemExit(f"--only: no such rows {sorted(missing)}")
    return selected


def _with_baseline(plan: list, source: str, tmp_path: Path) -> list:
    """Each seqstate server of the plan twice: this tree's and ``source``'s (its own store
    file), loads alternating between the two."""
    paired = []
    for name, start, loads in plan:
        paired.append((name, start, loads))
        if name.startswith("ceiling"):
            continue

        def baseline(start: Any = start, name: str = name) -> Server:
            env = {"PYTHONPATH": str(Path(source).resolve())}
            store = f"sqlite:///{tmp_path / ('base-' + str(abs(hash(name))) + '.sqlite')}"
            extra = ("--workers", "2") if "2 workers" in name else ()
            run_dir = tmp_path / "run"
            if name.startswith("sqlite"):
                return seqstate_server(run_dir, store, *extra, env=env)
            if name == "memory":
                return seqstate_server(run_dir, "memory://", env=env)
            raise SystemExit(f"--baseline-src: no baseline for {name!r}")

        paired.append((f"{name} [baseline]", baseline, loads))
    return paired


def _row(r: dict) -> str:
    mean = f"{r['batch_mean']:.1f}" if r.get("batch_mean") else "-"
    return (
        f"| {r['name']} | {r['transport']} | {r['streams']} | {r['steps_s']:,.0f} | "
        f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {mean} | {r['errors']} |"
    )


def _report(
    rows: list[dict],
    header: str,
    seconds: float,
    elapsed: float,
    args: argparse.Namespace,
    baseline: dict[str, float],
) -> str:
    def find(name: str, transport: str, streams: int) -> dict | None:
        return next(
            (
                r
                for r in rows
                if r["name"] == name and r["transport"] == transport and r["streams"] == streams
            ),
            None,
        )

    def ratio(a: dict | None, b: dict | None) -> float | None:
        if not a or not b or not b["steps_s"]:
            return None
        return a["steps_s"] / b["steps_s"]

    def target(label: str, value: float | None, goal: float | None = None) -> str:
        if value is None:
            return f"- {label}: n/a (no completed steps)"
        verdict = ""
        if goal is not None:
            verdict = f" (target >= {goal:g}x: {'met' if value >= goal else 'MISSED'})"
        return f"- {label}: **{value:.2f}x**{verdict}"

    memory_http = find("memory", "http", 100)
    lines = [
        "## Serving (`benchmarks/serve.py`)",
        "",
        f"Machine: {header}; load average {load_average()} at the end. Shared box: other jobs "
        "were running, so absolute figures are noisy; read the ratios between rows of this one "
        "run.",
        "",
        f"Command: `.venv/bin/python benchmarks/serve.py{' --quick' if args.quick else ''}"
        f"{' --core' if args.core else ''}"
        f"{f' --rounds {args.rounds}' if args.rounds != 3 else ''}` "
        f"(every server up at once, loads interleaved round-robin, {args.rounds} rounds of "
        f"{seconds:g} s per row, median shown; {elapsed:.0f} s in all; LSTM F={FEATURES} H=64; "
        "closed loop: each stream has one step in flight; "
        f"{args.load_processes} load processes on the same cores as the server; http: one "
        "step per request, at most 100 keep-alive connections per load process; ws: 2 "
        "WebSockets per load process carrying all its streams, one frame per step; ws-frames / "
        "ws-binary: the same 2 WebSockets, each frame holding the next step of every stream "
        "of its connection (JSON, or the binary float32 encoding), closed loop per frame). "
        "Latency is per step; mean batch is over all loads of that server. In-process: "
        "`Streams.step` and the server's engine alone (memory store, replay window 16, the "
        "objects alive after startup frozen out of GC scans: as the server runs it; and the "
        "same engine on a records-only memory store, the per-stream path) on the same model, "
        "1000 streams, 1 torch thread, measured once per round between the loads (median).",
        "",
        "| server | transport | streams | steps/s | p50 ms | p99 ms | mean batch | errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
        *(_row(r) for r in rows),
        "",
        target(
            "WebSocket / single-step HTTP, steps/s at 100 streams (memory)",
            ratio(find("memory", "ws", 100), memory_http),
            5,
        ),
        target(
            "WebSocket, JSON frames of many steps / single-step HTTP, steps/s at 100 streams "
            "(memory)",
            ratio(find("memory", "ws-frames", 100), memory_http),
            5,
        ),
        target(
            "WebSocket, binary frames of many steps / single-step HTTP, steps/s at 100 streams "
            "(memory)",
            ratio(find("memory", "ws-binary", 100), memory_http),
            5,
        ),
        target(
            "WebSocket / single-step HTTP, steps/s at 1000 streams (memory)",
            ratio(find("memory", "ws", 1000), find("memory", "http", 1000)),
        ),
        target(
            "server (memory, binary frames) / in-process `Streams.step`, steps/s at 1000 "
            f"streams (in-process: {baseline['streams']:,.0f} steps/s)",
            ratio(find("memory", "ws-binary", 1000), {"steps_s": baseline["streams"]}),
            0.3,
        ),
        target(
            "the server's engine alone (memory store, no transport) / in-process "
            f"`Streams.step` at 1000 streams (engine: {baseline['engine']:,.0f} steps/s)",
            baseline["engine"] / baseline["streams"],
        ),
        *(
            [
                target(
                    "the engine alone given binary frames as arrays (memory store, no "
                    "transport) / in-process `Streams.step` at 1000 streams (engine: "
                    f"{baseline['engine_frames']:,.0f} steps/s)",
                    baseline["engine_frames"] / baseline["streams"],
                )
            ]
            if "engine_frames" in baseline
            else []
        ),
        target(
            "the engine alone, the memory store's row table / records only (the per-stream "
            f"path: {baseline['engine_records']:,.0f} steps/s), 1000 streams, same process",
            baseline["engine"] / baseline["engine_records"],
        ),
        target(
            "server (memory, binary frames) / its engine alone, at 1000 streams",
            ratio(
                find("memory", "ws-binary", 1000),
                {"steps_s": baseline.get("engine_frames", baseline["engine"])},
            ),
        ),
        target(
            "memory store / empty endpoint on the same stack, steps/s (http, 100 streams)",
            ratio(memory_http, find("ceiling (no work, same stack)", "http", 100)),
            0.5,
        ),
        target(
            "SQLite / memory, steps/s (http, 100 streams)",
            ratio(find("sqlite, 1 worker", "http", 100), memory_http),
            0.7,
        ),
        target(
            "SQLite / memory, steps/s (ws, 100 streams)",
            ratio(find("sqlite, 1 worker", "ws", 100), find("memory", "ws", 100)),
            0.7,
        ),
        target(
            "SQLite / memory, steps/s (ws binary frames, 100 streams)",
            ratio(find("sqlite, 1 worker", "ws-binary", 100), find("memory", "ws-binary", 100)),
            0.7,
        ),
        target(
            "SQLite / memory, steps/s (ws binary frames, 1000 streams)",
            ratio(find("sqlite, 1 worker", "ws-binary", 1000), find("memory", "ws-binary", 1000)),
            0.7,
        ),
        target(
            "2 workers / 1 worker (SQLite, ws, 1000 streams)",
            ratio(find("sqlite, 2 workers", "ws", 1000), find("sqlite, 1 worker", "ws", 1000)),
        ),
        target(
            "2 workers / 1 worker (SQLite, http, 100 streams)",
            ratio(find("sqlite, 2 workers", "http", 100), find("sqlite, 1 worker", "http", 100)),
        ),
        target(
            "uvloop / asyncio loop (http, 100)",
            ratio(memory_http, find("memory/asyncio loop", "http", 100)),
        ),
        target(
            "httptools / h11 parser (http, 100)",
            ratio(memory_http, find("memory/h11 parser", "http", 100)),
        ),
        target(
            "orjson / stdlib json (http, 100)",
            ratio(memory_http, find("memory/stdlib json", "http", 100)),
        ),
        target(
            "orjson / stdlib json (ws, 100)",
            ratio(find("memory", "ws", 100), find("memory/stdlib json", "ws", 100)),
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
