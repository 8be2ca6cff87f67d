"""Validation that never touches the training state.

``fit`` evaluates validation lanes after every epoch from their own zero state, in eval mode,
without drawing random numbers: training with validation ends with exactly the same weights as
training without it. (A Keras ``stateful=True`` model shares one state between the two.)

    python examples/clean_validation.py       (SEQSTATE_EXAMPLE_QUICK=1 for a tiny run)
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
steps = 1_500 if QUICK else 30_000
series = np.cumsum(rng.normal(size=steps)).astype(np.float32)
cut = int(0.8 * steps)
train = seqstate.Lanes.from_series(series[:cut], lanes=16, window=40)
validation = seqstate.Lanes.from_series(series[cut:], lanes=4, window=40)


def train_model(with_validation: bool) -> tuple[torch.nn.Module, seqstate.History]:
    torch.manual_seed(0)  # the same initial weights for both runs
    model = seqstate.SequenceModel(input_size=1, output_size=1, hidden_size=16)
    mean, std = series[:cut].mean(), series[:cut].std()  # training statistics only
    model.set_normalization(mean, std, mean, std)
    history = seqstate.fit(
        model,
        train,
        validation=validation if with_validation else None,
        epochs=2 if QUICK else 8,
        seed=0,
        progress=False,
    )
    return model, history


validated, history = train_model(True)
plain, _ = train_model(False)
for name, tensor in validated.state_dict().items():
    assert torch.equal(tensor, plain.state_dict()[name]), name
print(f"val_loss per epoch: {[round(v, 4) for v in history['val_loss']]}")
print("weights with validation == weights without: validation never touched training")
