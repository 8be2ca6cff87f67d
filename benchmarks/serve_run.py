"""Load benchmark: a served step of a default run against one of a plain run (not a test).

The question: what does a run's preprocessing (per-series scaling, seasonal differencing,
calendar features, the intervals' running scale, and whatever blend validation chose) cost
per step *as served*, next to the same model served without it? Two runs are trained with
the command line on the same table of hourly sensors with a daily cycle:

* ``default``: ``seqstate train`` with its defaults (it picks the preparation from the data);
* ``network``: the same with ``--select network``: the transform cells and the network,
  without the baselines validation may blend in (their cost is the forecasting model's,
  not the preprocessing's);
* ``plain``: the same with ``--scaling none --difference 0 --seasonal-difference 0
  --calendar none --select network`` (the model alone, no transform cells).

Each is served by a real ``seqstate serve`` process (memory store) on loopback. A closed loop
per stream (send step ``seq``, wait for its answer, send ``seq + 1``) over single-step HTTP
requests, over the WebSocket one step per message, and over the WebSocket as binary frames
(``frames``: one frame of all the streams, one step each with its time, the next frame sent
when its answer frame is read) carries raw rows: ``x`` (load, temperature), ``time`` as Unix
seconds, ``series`` on a stream's first step. Every stream is
first stepped past the run's warm-up (``warmup_steps`` of ``GET /v1/model``) so every timed
step runs every cell. The rows are interleaved round-robin (``--rounds``, median shown) so a
slow phase of a shared machine hits every run alike. The load generator runs in this process, on
the same cores as the server.

``preprocessing share`` = ``(1 / network steps/s - 1 / plain steps/s) / (1 / network
steps/s)``: the share of a served step's time spent in the transform cells; ``with the
blend``, the same for the default run as chosen (the cells and the baselines).
``benchmarks/run_step.py`` measures the same cells around the step function alone, in
process, where no transport hides them.

    .venv/bin/python benchmarks/serve_run.py              # about 3 minutes
    .venv/bin/python benchmarks/serve_run.py --quick      # a smoke run

``--compare-src DIR`` also serves the default run from another source tree (``DIR`` on the
server's ``PYTHONPATH``, e.g. a checkout's ``src``) in the same interleaved rounds, so a
change to the step is measured against the code before it on the same machine at the same
time (the runs are trained once, by this tree).

``engine alone``: the default run's :class:`~seqstate.serve.engine.Engine` on a memory store
in a fresh process per tree (this one, and ``--compare-src``'s), 100 streams past their
warm-up, each batch their next step with its time: as StepRequests (what HTTP and the JSON
WebSocket hand the engine) and, in this tree, as one :class:`FrameSteps` (a binary frame).
CPU time of the calling thread per step, one torch thread, the trees alternating
(``--engine-rounds`` processes each), best of each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from _report import load_average, machine_info, write_section
from serve import HEADERS, _Connection, seqstate_server

HOUR = 3600
#: what makes a run plain: no scaling, differencing or calendar, the network alone
PLAIN = ("--scaling", "none", "--difference", "0", "--seasonal-difference", "0",
         "--calendar", "none", "--select", "network")  # fmt: skip
START = int(pd.Timestamp("2024-03-01").timestamp())
#: the default run served by the code of ``--compare-src``
COMPARED = "default, compared"


def sensors(path: Path, series: int, hours: int) -> Path:
    """A long table of hourly sensors: load follows a daily cycle and the temperature."""
    rng = np.random.default_rng(0)
    times = pd.date_range("2024-01-01", periods=hours, freq="h")
    day = np.sin(2 * np.pi * np.arange(hours) / 24)
    parts = []
    for i in range(series):
        temp = 15 + 5 * day + rng.standard_normal(hours)
        load = 40 + 3 * i + 8 * day + 0.5 * temp + rng.standard_normal(hours)
        parts.append(pd.DataFrame({"id": f"s{i}", "time": times, "load": load, "temp": temp}))
    pd.concat(parts).to_csv(path, index=False)
    return path


def train(table: Path, out: Path, *extra: str) -> Path:
    command = [sys.executable, "-m", "seqstate.cli", "train", str(table), "--id", "id", "--time",
               "time", "--targets", "load", "--features", "load,temp", "--epochs", "3",
               "--hidden-size", "64", "--out", str(out), "--quiet", "--no-progress",
               *extra]  # fmt: skip
    subprocess.run(command, check=True)
    return out


def model_info(url: str) -> dict:
    request = urllib.request.Request(url + "/v1/model", headers=HEADERS)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def _body(seq: int, series: str, first: bool) -> bytes:
    step = {"seq": seq, "x": [40.0 + seq % 7, 15.0], "time": START + seq * HOUR}
    if first:
        step["series"] = series
    return json.dumps(step).encode()


async def _http(url: str, streams: list[str], warm: int, seconds: float) -> int:
    """Steps answered in ``seconds`` after every stream took ``warm`` steps."""
    host, port = url.removeprefix("http://").split(":")
    pool: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(min(len(streams), 100)):
        pool.put_nowait(_Connection(*await asyncio.open_connection(host, int(port))))
    seqs = dict.fromkeys(streams, 1)

    async def steps(stream: str, until: float | None, count: int | None) -> int:
        done = 0
        while (count is None or done < count) and (until is None or time.perf_counter() < until):
            connection = await pool.get()
            series = f"s{int(stream.rsplit('-', 1)[1]) % 20}"
            status = await connection.post(
                f"/v1/streams/{stream}/steps", _body(seqs[stream], series, seqs[stream] == 1)
            )
            pool.put_nowait(connection)
            if status != 200:
                raise RuntimeError(f"step {seqs[stream]} of {stream} answered {status}")
            seqs[stream] += 1
            done += 1
        return done

    await asyncio.gather(*(steps(s, None, warm) for s in streams))
    until = time.perf_counter() + seconds
    counts = await asyncio.gather(*(steps(s, until, None) for s in streams))
    while not pool.empty():
        pool.get_nowait().writer.close()
    return sum(counts)


async def _ws(url: str, streams: list[str], warm: int, seconds: float) -> int:
    import websockets

    seqs = dict.fromkeys(streams, 1)
    ws_url = url.replace("http://", "ws://") + "/v1/ws"
    async with websockets.connect(ws_url, additional_headers=HEADERS, max_size=None) as ws:

        async def send(stream: str) -> None:
            series = f"s{int(stream.rsplit('-', 1)[1]) % 20}"
            step = json.loads(_body(seqs[stream], series, seqs[stream] == 1))
            await ws.send(json.dumps({"stream": stream, **step}))

        async def phase(until: float | None, count: int | None) -> int:
            done, pending = 0, set(streams)
            taken = dict.fromkeys(streams, 0)
            for stream in streams:
                await send(stream)
            while pending:
                answer = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
                stream = answer["stream"]
                if "y" not in answer:
                    raise RuntimeError(f"{stream}: {answer}")
                seqs[stream] += 1
                taken[stream] += 1
                done += 1
                more = (count is None or taken[stream] < count) and (
                    until is None or time.perf_counter() < until
                )
                if more:
                    await send(stream)
                else:
                    pending.discard(stream)
            return done

        await phase(None, warm)
        return await phase(time.perf_counter() + seconds, None)


async def _frames(url: str, streams: list[str], warm: int, seconds: float) -> int:
    """Closed loop of binary frames: one frame of every stream's next step (with its time),
    the next sent when its answer frame is read."""
    import websockets

    from seqstate.serve.frames import decode, encode

    n = len(streams)
    series = [f"s{int(stream.rsplit('-', 1)[1]) % 20}" for stream in streams]
    ws_url = url.replace("http://", "ws://") + "/v1/ws"
    seq = 1
    async with websockets.connect(ws_url, additional_headers=HEADERS, max_size=None) as ws:

        async def step() -> None:
            nonlocal seq
            header: dict = {"op": "steps", "stream": streams, "seq": [seq] * n,
                            "time": [[START + seq * HOUR]] * n}  # fmt: skip
            if seq == 1:
                header["series"] = series
            x = np.empty((n, 1, 2), np.float32)
            x[..., 0], x[..., 1] = 40.0 + seq % 7, 15.0
            await ws.send(encode(header, x))
            answer, _ = decode(await asyncio.wait_for(ws.recv(), timeout=60))
            if answer["status"] != [200] * n:
                raise RuntimeError(f"frame {seq}: {answer['errors']}")
            seq += 1

        for _ in range(warm):
            await step()
        until, done = time.perf_counter() + seconds, 0
        while time.perf_counter() < until:
            await step()
            done += n
        return done


#: streams per batch of the three runs' engine-alone measure (:func:`engine_runs`)
ENGINE_STREAMS = (1, 100)
#: steps every stream takes before the engine is timed: past the warm-up of every cell (the
#: run's differencing and the baselines' first two seasons, 48 steps at season 24)
ENGINE_WARM = 60


def engine_runs(runs: dict[str, Path], counts: Sequence[int], rounds: int) -> dict:
    """Thread CPU µs per step of the server's engine alone (memory store, no transport), per
    run and streams per batch: ``{(name, streams): [per round]}``. The requests are what the
    HTTP route hands the batcher (one timestep with its time; the series on a first step),
    in the server process's allocator settings."""
    import torch

    from seqstate.serve.allocator import keep_freed_memory
    from seqstate.serve.engine import Engine, StepRequest
    from seqstate.serve.rundir import load_run_step
    from seqstate.serve.stores import MemoryStore

    keep_freed_memory()  # as `seqstate serve` runs (the load servers are stopped by now)
    torch.set_num_threads(1)
    times: dict[tuple[str, int], list[float]] = {}
    for count in counts:
        ids = [f"e{count}-{i}" for i in range(count)]
        engines = {
            name: Engine(load_run_step(run), MemoryStore(), ttl_s=0, replay_window=16)
            for name, run in runs.items()
        }

        def requests(seq: int, ids: list[str] = ids) -> list[StepRequest]:
            stamp = np.array([START + seq * HOUR], dtype=np.int64)
            x = np.array([[40.0 + seq % 7, 15.0]], dtype=np.float32)
            return [
                StepRequest(s, seq, x, single=True, start=False,
                            series=f"s{i % 20}" if seq == 1 else None, time=stamp)
                for i, s in enumerate(ids)
            ]  # fmt: skip

        seq = 1
        for seq in range(1, ENGINE_WARM + 1):
            for engine in engines.values():
                engine.process(requests(seq))
        order = list(engines)
        for turn in range(rounds):
            batch = [requests(seq + 1 + k) for k in range(10)]
            seq += 10
            for name in order if turn % 2 == 0 else order[::-1]:
                engine = engines[name]
                started = time.thread_time()
                for step in batch:
                    engine.process(step)
                elapsed = time.thread_time() - started
                times.setdefault((name, count), []).append(elapsed / (10 * count) * 1e6)
    return times


def engine_runs_report(times: dict[tuple[str, int], list[float]]) -> str:
    """The :func:`engine_runs` table: best and median µs per step, and the shares."""
    lines = [
        f"The server's engine alone, the same three runs (memory store, no transport; "
        f"`Engine.process` of single-step requests with their time, as the HTTP route hands "
        f"them over, every stream {ENGINE_WARM} steps in; thread CPU time per step, "
        f"{len(next(iter(times.values())))} interleaved rounds of 10 batches; best / median):",
        "",
        "| streams | plain µs | network µs | default µs | preprocessing share (network vs "
        "plain), best / median | with the blend, best / median |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for count in sorted({c for _, c in times}):
        best = {n: min(times[(n, count)]) for n in ("plain", "network", "default")}
        mid = {n: statistics.median(times[(n, count)]) for n in ("plain", "network", "default")}

        def share(of: dict[str, float], name: str) -> str:
            return f"{(of[name] - of['plain']) / of[name]:.0%}"

        lines.append(
            f"| {count} | {best['plain']:.1f} / {mid['plain']:.1f} | {best['network']:.1f} / "
            f"{mid['network']:.1f} | {best['default']:.1f} / {mid['default']:.1f} | "
            f"{share(best, 'network')} / {share(mid, 'network')} | {share(best, 'default')} / "
            f"{share(mid, 'default')} |"
        )
    return "\n".join(lines)


def measure(url: str, transport: str, count: int, warm: int, seconds: float) -> float:
    """Steps/s of ``count`` fresh streams on ``url`` after their warm-up."""
    streams = [f"{transport}{count}-{time.monotonic_ns()}-{i}" for i in range(count)]
    load = {"http": _http, "ws": _ws, "frames": _frames}[transport]
    try:
        import uvloop

        steps = uvloop.run(load(url, streams, warm, seconds))
    except ImportError:
        steps = asyncio.run(load(url, streams, warm, seconds))
    return steps / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument(
        "--compare-src",
        type=Path,
        default=None,
        help="also serve the default run from this source tree (its src folder)",
    )
    parser.add_argument(
        "--engine-rounds", type=int, default=3, help="processes per tree (engine alone)"
    )
    parser.add_argument("--engine-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_child is not None:
        engine_child(args.engine_child, quick=args.quick)
        return
    seconds = 1.0 if args.quick else 3.0
    rounds = 1 if args.quick else args.rounds
    loads = [("http", 1), ("http", 100), ("ws", 100), ("frames", 100)]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        table = sensors(tmp_path / "sensors.csv", series=20, hours=24 * 60)
        runs = {
            "plain": train(table, tmp_path / "plain", *PLAIN),
            "network": train(table, tmp_path / "network", "--select", "network"),
            "default": train(table, tmp_path / "default"),
        }
        servers = {name: seqstate_server(run, "memory://") for name, run in runs.items()}
        if args.compare_src is not None:
            servers[COMPARED] = seqstate_server(
                runs["default"], "memory://", env={"PYTHONPATH": str(args.compare_src.resolve())}
            )
        try:
            infos = {name: model_info(server.url) for name, server in servers.items()}
            warm = max(int(info.get("warmup_steps", 0)) for info in infos.values()) + 2
            rates: dict[tuple[str, str, int], list[float]] = {}
            for turn in range(rounds):
                order = list(servers.items())
                if turn % 2:  # the order reversed every other round
                    order.reverse()
                for transport, count in loads:
                    for name, server in order:
                        rate = measure(server.url, transport, count, warm, seconds)
                        rates.setdefault((name, transport, count), []).append(rate)
                        print(f"{name} {transport} {count}: {rate:,.0f} steps/s", flush=True)
        finally:
            for server in servers.values():
                server.stop()
        by_runs = engine_runs(runs, ENGINE_STREAMS, 6 if args.quick else 40)
        engine = engine_alone(
            runs["default"], args.compare_src, 1 if args.quick else args.engine_rounds, args.quick
        )
    text = report(
        rates, infos, seconds, rounds, time.monotonic() - started, args.quick, args.compare_src
    )
    text += "\n\n" + engine_runs_report(by_runs)
    text += "\n\n" + engine_report(engine, args.compare_src)
    print(text)
    if not args.no_write and not args.quick:
        write_section("serve_run", text)


def report(
    rates: dict[tuple[str, str, int], list[float]],
    infos: dict[str, dict],
    seconds: float,
    rounds: int,
    elapsed: float,
    quick: bool,
    compared: Path | None = None,
) -> str:
    default = infos["default"]
    lines = [
        "## Serving a default run vs a plain run: the preprocessing's share of a served step "
        "(`benchmarks/serve_run.py`)",
        "",
        f"`benchmarks/serve_run.py{' --quick' if quick else ''}`; {machine_info()}; load "
        f"average at the end {load_average()}; {rounds} interleaved rounds of {seconds:g} s per "
        f"row (median), {elapsed:.0f} s in all. Memory store, one server process per run, the "
        "load generator in one process on the same 2 cores. The default run as `train` chose "
        f"it: {json.dumps({k: default.get(k) for k in ('frequency', 'warmup_steps', 'needs_series', 'needs_time', 'members')})}.",  # noqa: E501
        "",
        "| transport | streams | plain steps/s | network steps/s | default steps/s | "
        "preprocessing share (network vs plain) | with the blend (default vs plain) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    loads = sorted({(t, c) for _, t, c in rates}, key=lambda k: (k[0], k[1]))
    for transport, count in loads:
        rate = {name: statistics.median(rates[(name, transport, count)]) for name in infos}
        cells = (1 / rate["network"] - 1 / rate["plain"]) * rate["network"]
        blended = (1 / rate["default"] - 1 / rate["plain"]) * rate["default"]
        lines.append(
            f"| {transport} | {count} | {rate['plain']:,.0f} | {rate['network']:,.0f} | "
            f"{rate['default']:,.0f} | {cells:.0%} | {blended:.0%} |"
        )
    lines += [
        "",
        "Target: the preprocessing costs at most 10% of a served step. The share in process, "
        "around the step function alone (no transport), is in the run step section "
        "(`benchmarks/run_step.py`).",
    ]
    if compared is not None and COMPARED in infos:
        lines += [
            "",
            f"The default run served by the code of {_describe_tree(compared)} in the same "
            "rounds (`before`) and by this tree (`after`):",
            "",
            "| transport | streams | default steps/s before | after | with the blend before "
            "| after |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for transport, count in loads:
            rate = {name: statistics.median(rates[(name, transport, count)]) for name in infos}
            share = {
                name: (1 / rate[name] - 1 / rate["plain"]) * rate[name]
                for name in (COMPARED, "default")
            }
            lines.append(
                f"| {transport} | {count} | {rate[COMPARED]:,.0f} | {rate['default']:,.0f} | "
                f"{share[COMPARED]:.0%} | {share['default']:.0%} |"
            )
    return "\n".join(lines)


def engine_child(run_dir: Path, quick: bool) -> None:
    """(In a fresh process, the tree under test on its path.) Print the CPU time per step of
    the default run's engine, 100 streams, each batch their next step with its time, each
    way the tree has (rounds of the ways interleaved, best of each): ``per-stream`` (a
    records-only store), ``steps`` (StepRequests, the memory store's table where the tree
    takes timed steps there), ``frames`` (a FrameSteps with times, where the tree has it)."""
    import torch

    torch.set_num_threads(1)
    try:  # as the tree's own `seqstate serve` process runs
        from seqstate.serve.allocator import keep_freed_memory
    except ImportError:  # (a tree from before the serving process kept its freed memory)
        pass
    else:
        keep_freed_memory()
    from seqstate.recipe.run import Run
    from seqstate.serve.engine import Engine, FrameSteps, StepRequest, StepResult
    from seqstate.serve.stores import MemoryStore

    n, warm, batches, rounds = 100, 40, (10 if quick else 30), (2 if quick else 8)
    function = Run.load(run_dir).step_function()
    streams = [f"e{i}" for i in range(n)]

    def batch(seq: int, frames: bool) -> list:
        x = np.empty((n, 1, 2), np.float32)
        x[..., 0], x[..., 1] = 40.0 + seq % 7, 15.0
        stamps = np.full(n, START + seq * HOUR, np.int64)
        if frames and seq > 1:
            return [FrameSteps(streams, np.full(n, seq, np.int64), x, stamps)]  # type: ignore[call-arg]
        return [
            StepRequest(
                stream, seq, x[k], True, False, f"s{k % 20}" if seq == 1 else None,
                stamps[k : k + 1],
            )
            for k, stream in enumerate(streams)
        ]  # fmt: skip

    def applied(outcomes: list) -> bool:
        if len(outcomes) == 1 and hasattr(outcomes[0], "others"):  # a frame's
            return not outcomes[0].others  # every step taken in bulk (null in warm-up)
        return all(isinstance(o, StepResult) and not o.replayed for o in outcomes)

    ways: dict[str, list] = {}  # way -> [engine, frames?, next seq]
    for way, columns, frames in (
        ("per-stream", False, False), ("steps", True, False), ("frames", True, True),
    ):  # fmt: skip
        engine = Engine(function, MemoryStore(columns=columns), ttl_s=0)
        try:
            for seq in range(1, warm + 1):
                if not applied(engine.process(batch(seq, frames))):
                    raise RuntimeError(f"{way}: step {seq} was not applied")
        except TypeError:  # a tree whose frames carry no times
            continue
        ways[way] = [engine, frames, warm + 1]
    best = dict.fromkeys(ways, float("inf"))
    for turn in range(rounds):
        for way, held in ways.items() if turn % 2 == 0 else reversed(ways.items()):
            engine, frames, seq = held
            prepared = [batch(seq + b, frames) for b in range(batches)]
            held[2] += batches
            started = time.thread_time()
            for items in prepared:
                engine.process(items)
            best[way] = min(best[way], (time.thread_time() - started) / (batches * n) * 1e6)
            if not applied(engine.process(batch(held[2], frames))):
                raise RuntimeError(f"{way}: step {held[2]} was not applied")
            held[2] += 1
    print(json.dumps(best))


def engine_alone(run_dir: Path, compared: Path | None, rounds: int, quick: bool) -> dict:
    """(tree, way) -> the best CPU µs per step over ``rounds`` fresh processes, the trees
    alternating."""
    src = Path(__file__).resolve().parent.parent / "src"
    trees = [("this", src)] + ([("compared", compared.resolve())] if compared else [])
    best: dict[tuple[str, str], float] = {}
    for turn in range(rounds):
        for tree, path in trees if turn % 2 == 0 else trees[::-1]:
            command = [sys.executable, __file__, "--engine-child", str(run_dir)]
            command += ["--quick"] if quick else []
            env = {**os.environ, "PYTHONPATH": str(path), "OMP_NUM_THREADS": "1"}
            out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
            for way, us in json.loads(out.stdout.strip().splitlines()[-1]).items():
                print(f"engine alone, {tree} tree, {way}: {us:.1f} us/step", flush=True)
                best[(tree, way)] = min(best.get((tree, way), float("inf")), us)
    return best


def engine_report(best: dict, compared: Path | None) -> str:
    lines = [
        "The default run's engine alone (no transport; memory store, 100 streams, each batch "
        "their next step with its time; CPU time of the calling thread per step, one torch "
        "thread; in each process the ways interleaved, best of each over fresh processes, the "
        "trees alternating). `per-stream`: a records-only store; `steps`: 100 StepRequests "
        "(HTTP, JSON WebSocket); `frames`: one FrameSteps (a binary frame; before, such a "
        "frame went as StepRequests):",
        "",
        "| way | "
        + (f"{_describe_tree(compared)} µs/step | " if compared else "")
        + "this tree µs/step | this tree's per-stream / this way |",
        "|---|" + ("---:|" if compared else "") + "---:|---:|",
    ]
    own = best.get(("this", "per-stream"))
    for way in ("per-stream", "steps", "frames"):
        after = best.get(("this", way))
        if after is None:
            continue
        before = best.get(("compared", way), best.get(("compared", "steps")))
        cells = [way] + ([f"{before:.1f}"] if compared and before is not None else [])
        cells += [f"{after:.1f}", f"{own / after:.2f}x" if own else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _describe_tree(src: Path) -> str:
    """``src``'s checkout as its short commit where git knows it, else its path."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"`{src}`"
    return f"commit {commit}"


if __name__ == "__main__":
    main()
