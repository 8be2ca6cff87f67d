"""Training throughput: seqstate.fit against a stateful Keras 3 LSTM on TensorFlow.

The same problem as ``benchmarks/train.py`` (B=32 lanes, T=50 steps per window, F=8, H=128,
next-step targets, Adam lr 1e-3, gradient norm clipped at 1.0, MSE, 40 windows per epoch, 2
epochs per timing). Keras runs in its own virtual environment (TensorFlow and torch do not
share one here), in a worker process that this script drives: one seqstate fit, then one Keras
fit, alternately, so load on a shared machine hits both alike; the ratio is the median of the
per-pair ratios of CPU-time throughput (each process's own CPU time, one compute thread each).

The Keras model is the stateful recipe: ``LSTM(stateful=True, return_sequences=True)`` and a
``Dense`` head on a fixed batch of B, the samples ordered so that row b of batch k+1 continues
row b of batch k, ``fit(shuffle=False)`` and ``reset_states()`` before each epoch. It is built
and traced once (its first fit, untimed) and then reused: each timing is ``fit`` alone, which
favours Keras (seqstate's timing includes making its model). Keras's loss counts the series'
last step, which has no next value (seqstate masks it): one step in 64 000.

    .venv/bin/python benchmarks/keras_stateful.py --keras-python .venv-tf/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

B, T, F, H = 32, 50, 8, 128
WINDOWS, EPOCHS = 40, 2


def make_series(windows: int, seed: int = 0) -> np.ndarray:
    """The series of ``benchmarks/train.py`` (the same function, repeated so that the Keras
    worker imports neither torch nor seqstate)."""
    rng = np.random.default_rng(seed)
    steps = B * T * windows
    t = np.arange(steps)[:, None]
    frequencies = rng.uniform(0.01, 0.2, size=(1, F))
    return (np.sin(t * frequencies) + 0.1 * rng.standard_normal((steps, F))).astype(np.float32)


def keras_worker() -> None:
    """Read "fit" lines on stdin; answer each with one timed Keras fit as a JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    series = make_series(WINDOWS)
    targets = np.concatenate([series[1:], np.zeros((1, F), np.float32)])
    columns = series.reshape(B, -1, F)  # (B, N/B, F): row b is lane b
    target_columns = targets.reshape(B, -1, F)
    # sample k*B + b = lane b's window k: batch k of B samples continues batch k-1 row by row
    x = columns.reshape(B, WINDOWS, T, F).transpose(1, 0, 2, 3).reshape(-1, T, F)
    y = target_columns.reshape(B, WINDOWS, T, F).transpose(1, 0, 2, 3).reshape(-1, T, F)
    keras.utils.set_random_seed(0)
    inputs = keras.Input(batch_shape=(B, T, F))
    hidden = keras.layers.LSTM(H, stateful=True, return_sequences=True)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(F)(hidden))
    model.compile(optimizer=keras.optimizers.Adam(1e-3, global_clipnorm=1.0), loss="mse")

    class ResetEachEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
            for layer in model.layers:
                if getattr(layer, "stateful", False):
                    layer.reset_states()

    def fit(epochs: int) -> None:
        model.fit(
            x,
            y,
            batch_size=B,
            epochs=epochs,
            shuffle=False,
            verbose=0,
            callbacks=[ResetEachEpoch()],
        )

    fit(1)  # traces the training step (untimed)
    print(json.dumps({"ready": True, "keras": keras.__version__, "tf": tf.__version__}))
    sys.stdout.flush()
    for line in sys.stdin:
        if line.strip() != "fit":
            break
        wall, cpu = time.perf_counter(), time.process_time()
        fit(EPOCHS)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        steps = WINDOWS * B * T * EPOCHS
        print(json.dumps({"wall": steps / wall, "cpu": steps / cpu}))
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keras-python", help="the Python of a venv with tensorflow and keras")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md")
    parser.add_argument("--keras-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.keras_worker:
        keras_worker()
        return
    if not args.keras_python:
        parser.error("--keras-python is required (a venv with tensorflow and keras)")

    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _report import machine_info, write_section
    from seqstate.lanes.lanes import Lanes
    from train import time_fit

    torch.set_num_threads(1)
    lanes = Lanes.from_series(make_series(WINDOWS), lanes=B, window=T)
    worker = subprocess.Popen(
        [args.keras_python, os.path.abspath(__file__), "--keras-worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdin is not None and worker.stdout is not None
    versions = json.loads(worker.stdout.readline())
    time_fit(lanes, 1, run_dir=False)  # warm-up
    ours, theirs = [], []
    try:
        for repeat in range(args.repeats):
            ours.append(time_fit(lanes, EPOCHS, run_dir=False))
            worker.stdin.write("fit\n")
            worker.stdin.flush()
            rate = json.loads(worker.stdout.readline())
            theirs.append((rate["wall"], rate["cpu"]))
            print(
                f"repeat {repeat + 1}/{args.repeats}: cpu seqstate {ours[-1][1]:,.0f} / keras "
                f"{theirs[-1][1]:,.0f} steps/s; wall {ours[-1][0]:,.0f} / {theirs[-1][0]:,.0f}",
                flush=True,
            )
    finally:
        worker.stdin.close()
        worker.wait(timeout=60)
    cpu = [a[1] / b[1] for a, b in zip(ours, theirs, strict=True)]
    wall = [a[0] / b[0] for a, b in zip(ours, theirs, strict=True)]
    command = " ".join([".venv/bin/python benchmarks/keras_stateful.py", *sys.argv[1:]])
    text = "\n".join(
        [
            "## Training throughput: `fit` vs a stateful Keras 3 LSTM "
            "(`benchmarks/keras_stateful.py`)",
            "",
            f"The problem of the train section (B={B}, T={T}, F={F}, H={H}, {WINDOWS} windows, "
            f"{EPOCHS} epochs per timing, Adam, clipping at 1.0), one compute thread each, "
            f"{args.repeats} alternating pairs. Keras {versions['keras']} on TensorFlow "
            f"{versions['tf']}: `LSTM(stateful=True)` on a fixed batch, `fit(shuffle=False)`, "
            "states reset before each epoch, its model built and traced once and reused (each "
            "timing is `fit` alone; seqstate's includes making its model).",
            "",
            f"**seqstate.fit / Keras: {statistics.median(cpu):.2f}x by CPU time** (per pair "
            f"{', '.join(f'{r:.2f}' for r in cpu)}), {statistics.median(wall):.2f}x by wall "
            f"time; seqstate {statistics.median(r[1] for r in ours):,.0f} and Keras "
            f"{statistics.median(r[1] for r in theirs):,.0f} timesteps/s of CPU (medians).",
            "",
            "- Target 2.5x: missed. The bound is torch's own kernels: the hand-written PyTorch "
            "loop of the train section (the same fused `nn.LSTM` forward and backward, no "
            "state bookkeeping) runs about 1.5-1.6x Keras here, and `fit` runs at 0.95x that "
            "loop; 2.5x would need a faster LSTM training step than torch's fused CPU kernel, "
            "not less bookkeeping in `fit`.",
            f"- Machine: {machine_info(threads=True)}.",
            f"- Command: `{command}`",
        ]
    )
    print(text)
    if not args.no_write:
        write_section("keras", text)


if __name__ == "__main__":
    main()
