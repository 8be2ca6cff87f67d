"""Save the hidden state of live streams and restore it elsewhere (another process, after a
restart): ``Streams.export_states`` gives safetensors bytes per stream, never pickle.

    python examples/save_restore_stream_state.py  (SEQSTATE_EXAMPLE_QUICK=1: same, it is fast)
"""

import tempfile
from pathlib import Path

import numpy as np
import torch

import seqstate

# A small model: one intra-op thread. More only spin-wait on small matrix products, which made
# training 10-50x slower on a busy 2-core machine (seqstate train chooses this for you).
torch.set_num_threads(1)

rng = np.random.default_rng(0)
model = seqstate.SequenceModel(input_size=3, output_size=1, hidden_size=16, cell="gru")
run_dir = Path(tempfile.mkdtemp()) / "model"
seqstate.save_model(model, run_dir)  # an (untrained) model, saved as a serving process would
ticks = rng.normal(size=(60, 2, 3)).astype(np.float32)  # 60 ticks of 2 streams, 3 features

# Uninterrupted reference: one process sees all 60 ticks.
reference = seqstate.Streams(model)
expected = np.stack([reference.step(["pump-1", "pump-2"], tick) for tick in ticks])

# Process A sees 40 ticks, then saves every stream's state to disk and stops.
first = seqstate.Streams(seqstate.load_model(run_dir))
outputs = [first.step(["pump-1", "pump-2"], tick) for tick in ticks[:40]]
saved = Path(tempfile.mkdtemp())
for stream_id, blob in first.export_states().items():
    (saved / f"{stream_id}.state").write_bytes(blob)

# Process B loads the model and the states, and carries on where A stopped.
second = seqstate.Streams(seqstate.load_model(run_dir))
second.import_states({path.stem: path.read_bytes() for path in saved.glob("*.state")})
outputs += [second.step(["pump-1", "pump-2"], tick) for tick in ticks[40:]]

np.testing.assert_allclose(np.stack(outputs), expected, rtol=1e-5, atol=1e-6)
print(f"restored {len(second)} streams from {saved}: outputs == the uninterrupted run")
