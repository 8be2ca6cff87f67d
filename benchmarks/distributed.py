"""Distributed training throughput: fit on 1 process vs 2 processes (gloo, CPU), same lanes.

The same LSTM trains on the same series laid out as B=32 lanes of T=50 steps, one epoch per
timing: once in one process holding all 32 lanes (with 1 and with 2 intra-op threads), and once
under ``torchrun --nproc_per_node 2`` with 16 lanes per rank and 1 thread per rank (so both
use the machine's 2 cores). Throughput = real timesteps of all lanes / wall time of the fit
call (barriers around it; process start and data preparation excluded). Launches alternate
between the settings so load on a shared machine hits all of them; figures are medians. The
final weights of the 1- and 2-process runs are compared as a correctness check.

    .venv/bin/python benchmarks/distributed.py            # full run, writes BENCHMARKS.md
    .venv/bin/python benchmarks/distributed.py --quick    # smoke run (also writes the section)
    .venv/bin/python benchmarks/distributed.py --quick --no-write   # print only
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _report import machine_info, write_section

ROOT = Path(__file__).resolve().parents[1]
B, T, F = 32, 50, 8
LAUNCH_TIMEOUT = 900  # seconds per launch


# --------------------------------------------------------------------------------------------
# Worker: one launch (one process, or one rank of a torchrun job)
# --------------------------------------------------------------------------------------------


def make_series(windows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(B * T * windows)[:, None]
    frequencies = rng.uniform(0.01, 0.2, size=(1, F))
    return (np.sin(t * frequencies) + 0.1 * rng.standard_normal((len(t), F))).astype(np.float32)


def worker(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    from seqstate.core.model import SequenceModel
    from seqstate.lanes.lanes import Lanes
    from seqstate.train import fit

    distributed = "RANK" in os.environ
    rank = 0
    if distributed:
        from seqstate.train.distributed import init_from_env

        rank = init_from_env(timeout=LAUNCH_TIMEOUT).rank
    torch.set_num_threads(args.threads)
    lanes = Lanes.from_series(make_series(args.windows), lanes=B, window=T)
    steps = int(lanes.lengths.sum())
    results: dict[str, list[float]] = {}
    weights = {}
    for hidden in args.hidden:
        rates = []
        for repeat in range(1 + args.repeats):  # the first is a warm-up
            torch.manual_seed(0)
            model = SequenceModel(input_size=F, output_size=F, hidden_size=hidden)
            if distributed:
                torch.distributed.barrier()
            started = time.perf_counter()
            fit(model, lanes, epochs=1, progress=False, seed=0)
            if distributed:
                torch.distributed.barrier()
            if repeat:
                rates.append(steps / (time.perf_counter() - started))
        results[str(hidden)] = rates
        weights.update({f"{hidden}.{k}": v.contiguous() for k, v in model.state_dict().items()})
    if rank == 0:
        Path(args.out, "result.json").write_text(json.dumps(results))
        save_file(weights, str(Path(args.out, "weights.safetensors")))
    if distributed:
        torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(processes: int, threads: int, args: argparse.Namespace, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    worker_args = [
        "--worker",
        f"--threads={threads}",
        f"--windows={args.windows}",
        f"--repeats={args.repeats}",
        f"--out={out}",
        "--hidden",
        *map(str, args.hidden),
    ]
    script = str(Path(__file__).resolve())
    if processes == 1:
        command = [sys.executable, script, *worker_args]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1",
            f"--nproc_per_node={processes}",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            script,
            *worker_args,
        ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    subprocess.run(command, check=True, timeout=LAUNCH_TIMEOUT, env=env)
    return json.loads((out / "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one size, fewer repeats")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--windows", type=int, default=20, help="windows per epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed fits per launch")
    parser.add_argument("--rounds", type=int, default=2, help="launches per setting")
    parser.add_argument("--hidden", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.hidden, args.windows, args.repeats, args.rounds = [64], 10, 2, 1

    settings = [("1 process x 32 lanes, 1 thread", 1, 1), ("1 process x 32 lanes, 2 threads", 1, 2)]
    settings.append(("2 processes x 16 lanes, 1 thread each (gloo)", 2, 1))
    header = machine_info()
    rates: dict[str, dict[str, list[float]]] = {name: {} for name, _, _ in settings}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            for index, (name, processes, threads) in enumerate(settings):
                out = Path(scratch, f"r{round_index}-s{index}")
                print(f"round {round_index + 1}/{args.rounds}: {name}", file=sys.stderr)
                for hidden, values in launch(processes, threads, args, out).items():
                    rates[name].setdefault(hidden, []).extend(values)
        from safetensors.torch import load_file

        single = load_file(str(Path(scratch, "r0-s0", "weights.safetensors")))
        double = load_file(str(Path(scratch, "r0-s2", "weights.safetensors")))
        difference = max(
            float((double[k] - single[k]).abs().max() / single[k].abs().max().clamp_min(1e-30))
            for k in single
            if single[k].is_floating_point()
        )

    command = "PYTHONPATH=src .venv/bin/python benchmarks/distributed.py" + (
        " --quick" if args.quick else ""
    )
    lines = [
        "## Distributed training: 1 process vs 2 processes (gloo, CPU)",
        "",
        f"LSTM (1 layer), B={B} lanes, T={T} steps per window, F={F}, next-step targets, Adam, "
        f"clip_grad_norm 1.0; {args.windows} windows per epoch, one epoch per timing, "
        f"{args.repeats} timed fits per launch after one warm-up, {args.rounds} launch(es) per "
        "setting, alternating. Throughput = real timesteps of all 32 lanes / wall time of the "
        "fit call (barriers around it under torchrun). 2 processes = `torchrun "
        "--nproc_per_node 2` on 127.0.0.1, 16 lanes per rank, one all-reduce of the target "
        "count and one of the gradients per window.",
        "",
        "| setting | " + " | ".join(f"H={h} timesteps/s (median)" for h in args.hidden) + " |",
        "|---|" + "---:|" * len(args.hidden),
    ]
    for name, _, _ in settings:
        cells = [f"{statistics.median(rates[name][str(h)]):,.0f}" for h in args.hidden]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    base = settings[0][0]
    two = settings[2][0]
    ratios = []
    for h in args.hidden:
        ratio = statistics.median(rates[two][str(h)]) / statistics.median(rates[base][str(h)])
        ratios.append(f"H={h}: {ratio:.2f}x")
    lines += [
        "",
        f"- 2 processes / 1 process (1 thread each): {', '.join(ratios)}.",
        f"- Final weights, 2 processes vs 1 process: max relative difference {difference:.1e} "
        "(float32; all-reduce summation order, not a different result).",
        "- Per launch: "
        + "; ".join(
            f"{name}: "
            + ", ".join(
                f"H={h} [{', '.join(f'{v:,.0f}' for v in rates[name][str(h)])}]"
                for h in args.hidden
            )
            for name, _, _ in settings
        ),
        "- What limits it: a shared 2-core machine (other engineers' jobs ran at the same "
        "time, see the load average), so 2 processes compete for the same 2 cores a "
        "2-thread process uses, with other work on them too: this measures the overhead of the "
        "distributed path, not a speed-up, and the same setting varies by up to 2x between "
        "launches (per-launch figures above), so row differences of a few tens of percent are "
        "load, not the code. Each window pays two gloo all-reduces over loopback TCP (the "
        "target count, then the flattened gradients) and waits for the slower rank; that cost "
        "is fixed per window, so it weighs most on small models. 2 intra-op threads are slower "
        "than 1 here (OpenMP threads spin-wait on oversubscribed cores). On GPUs (nccl) each "
        "rank adds a device instead of sharing cores; the TBPTT window itself stays sequential.",
        f"- Machine: {header}.",
        f"- Command: `{command}`",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("distributed", text)


if __name__ == "__main__":
    main()
