"""Train with 32 lanes, then predict one live stream step by step (batch size 1).

The batch size is a property of the call, not of the model: the weights trained on 32 lanes
serve one stream, and stepping it one value at a time gives the same outputs as predicting the
whole sequence at once.

    python examples/train_then_stream.py      (SEQSTATE_EXAMPLE_QUICK=1 for a tiny run)
"""

import os

import numpy as np
import torch

import seqstate

# A small model: one intra-op thread. More only spin-wait on small matrix products, which made
# training 10-50x slower on a busy 2-core machine (seqstate train chooses this for you).
torch.set_num_threads(1)

QUICK = os.environ.get("SEQSTATE_EXAMPLE_QUICK") == "1"
rng = np.random.default_rng(0)

# One long noisy sine series; the model learns to predict its next value.
steps = 4_000 if QUICK else 40_000
t = np.arange(steps)
series = (np.sin(t / 20) + 0.1 * rng.normal(size=steps)).astype(np.float32)

lanes = seqstate.Lanes.from_series(series, lanes=32, window=50)  # 32 segments side by side
model = seqstate.SequenceModel(input_size=1, output_size=1, hidden_size=32)
model.set_normalization(series.mean(), series.std(), series.mean(), series.std())
history = seqstate.fit(model, lanes, epochs=2 if QUICK else 10, lr=3e-3, progress=False)
print(f"trained on {lanes.num_lanes} lanes: final loss {history['loss'][-1]:.4f}")

# A new stream arrives one value at a time.
stream = np.sin((np.arange(300) + 1234) / 20).astype(np.float32)
streams = seqstate.Streams(model)
stepped = np.stack([streams.step(["sensor-1"], [[value]])[0] for value in stream])  # (300, 1)

whole = seqstate.predict(model, stream[:, None])  # (300, 1): the same sequence in one call
np.testing.assert_allclose(stepped, whole, rtol=1e-4, atol=1e-5)
error = np.abs(whole[:-1, 0] - stream[1:]).mean()
print(f"one stream, step by step == whole sequence; next-value error {error:.3f}")
