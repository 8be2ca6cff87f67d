"""Many-to-one: one label per variable-length sequence.

``labels=`` puts each sequence's label on its steps but counts it only at the last step
(``window.loss_mask``), after the model has read the whole sequence; the prediction is the output
at each sequence's last step.

    python examples/many_to_one_classification.py  (SEQSTATE_EXAMPLE_QUICK=1 for a tiny run)
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


def make(count: int) -> tuple[list[np.ndarray], np.ndarray]:
    # Class 1: the sequence drifts upwards; class 0: downwards. Lengths 10 to 120 steps.
    labels = rng.integers(0, 2, size=count)
    sequences = []
    for label in labels:
        length = int(rng.integers(10, 120))
        drift = 0.15 if label else -0.15
        sequences.append((drift + rng.normal(size=(length, 1))).astype(np.float32))
    return sequences, labels


train_x, train_y = make(200 if QUICK else 2_000)
test_x, test_y = make(100 if QUICK else 500)
train = seqstate.Lanes.from_sequences(train_x, lanes=16, window=40, labels=train_y, shuffle=True)
test = seqstate.Lanes.from_sequences(test_x, lanes=16, window=40, labels=test_y)

model = seqstate.SequenceModel(input_size=1, output_size=2, hidden_size=16, task="classification")
seqstate.fit(model, train, epochs=3 if QUICK else 10, lr=5e-3, progress=False)
print(f"test metrics: {seqstate.evaluate(model, test)}")

logits = seqstate.predict(model, test_x)  # one (L_i, 2) array per sequence
predicted = np.array([output[-1].argmax() for output in logits])  # read at the last step
accuracy = (predicted == test_y).mean()
print(f"accuracy from predict (last step of each sequence): {accuracy:.1%}")
assert accuracy > (0.6 if QUICK else 0.8)
