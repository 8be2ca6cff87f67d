"""Variable-length sequences packed into lanes, with a reset where each one begins.

Packing several sequences into one lane is safe because the state of a row is zeroed exactly
at the step where a new sequence starts (``window.reset``): the outputs equal running every
sequence alone from a zero state.

    python examples/variable_length_resets.py  (SEQSTATE_EXAMPLE_QUICK=1 for a tiny run)
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

# Sequences of 5 to 300 steps (2 features); the target is a running mean of feature 0.
count = 40 if QUICK else 400
sequences, targets = [], []
for _ in range(count):
    length = int(rng.integers(5, 300))
    x = rng.normal(size=(length, 2)).astype(np.float32)
    sequences.append(x)
    targets.append(np.cumsum(x[:, :1], axis=0) / np.arange(1, length + 1)[:, None])

lanes = seqstate.Lanes.from_sequences(sequences, targets, lanes=8, window=32, shuffle=True)
print(lanes)  # windows per epoch, padding fraction, ...
window = next(iter(lanes.windows()))
starts = int(window.reset.sum())
print(f"first window: {starts} sequence starts (resets) in {window.batch_size} rows")

model = seqstate.SequenceModel(input_size=2, output_size=1, hidden_size=16)
seqstate.fit(model, lanes, epochs=1 if QUICK else 5, lr=3e-3, progress=False)

# Run the packed lanes window by window, carrying the state, and compare with each sequence
# run alone: the resets make them identical.
model.eval()
outputs, state = [], None
with torch.no_grad():
    for window in lanes.windows():
        y, state = model(window.x, state, reset=window.reset, mask=window.valid)
        outputs.append(y)
packed = lanes.collect(outputs)  # back to one (L_i, 1) array per sequence
for i in (0, 1, count - 1):
    with torch.no_grad():
        alone, _ = model(torch.from_numpy(sequences[i])[None])
    np.testing.assert_allclose(packed[i], alone[0].numpy(), rtol=1e-4, atol=1e-5)
print("packed lanes with resets == each sequence run alone")
