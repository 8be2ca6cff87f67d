"""Predict a sequence far longer than the training window.

Training cuts the state's gradient every ``window`` steps, but the state itself runs on; at
prediction time ``predict`` carries it over any length, chunk by chunk, and the result does
not depend on the chunk size (it equals one call over the whole sequence).

    python examples/long_sequence_prediction.py  (SEQSTATE_EXAMPLE_QUICK=1 for a tiny run)
"""

import os

import numpy as np
import torch

import seqstate

# A small model: one intra-op thread. More only spin-wait on small matrix products, which made
# training 10-50x slower on a busy 2-core machine (seqstate train chooses this for you).
torch.set_num_threads(1)

QUICK = os.environ.get("SEQSTATE_EXAMPLE_QUICK") == "1"
t = np.arange(2_000 if QUICK else 50_000)
series = (np.sin(t / 15) * np.sin(t / 200)).astype(np.float32)  # slow envelope, fast wave

lanes = seqstate.Lanes.from_series(series, lanes=32, window=25)
model = seqstate.SequenceModel(input_size=1, output_size=1, hidden_size=32)
seqstate.fit(model, lanes, epochs=2 if QUICK else 8, lr=3e-3, progress=False)

length = 4_000 if QUICK else 20_000  # 160x / 800x the training window
long = np.sin(np.arange(length) / 15) * np.sin(np.arange(length) / 200)
long = long.astype(np.float32)[:, None]
small_chunks = seqstate.predict(model, long, chunk=64)
big_chunks = seqstate.predict(model, long, chunk=length)  # one call
np.testing.assert_allclose(small_chunks, big_chunks, rtol=1e-4, atol=1e-5)
error = np.abs(big_chunks[:-1, 0] - long[1:, 0]).mean()
print(f"{length} steps, window 25: chunk 64 == one call; next-step error {error:.4f}")
