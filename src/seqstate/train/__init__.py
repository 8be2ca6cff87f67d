"""fit and evaluate: truncated backpropagation through time over lanes, with exact resume.

One epoch is the plain loop below; everything else (checkpoints, validation, early stopping,
the progress bar) happens between windows or between epochs::

    state = model.initial_state(B)                      # fresh at every epoch
    for window in train.windows(epoch):                 # (B, T, ...) windows, lane-continuous
        y, state = model(window.x, state, reset=window.reset, mask=window.valid)
        loss = masked mean of loss(y, window.y) over window.loss_mask
        loss.backward(); clip_grad_norm_; optimizer.step()
        state = state.detach()                          # the TBPTT cut: T = the lane window

Validation runs on its own lanes, from its own zero state, in eval mode under ``no_grad``;
it never sees the training state and draws no random numbers, so a run with validation ends
with the same weights as a run without it.

With ``run_dir`` fit writes::

    run_dir/
      model.json, model.safetensors   final weights (the best epoch's with early stopping)
      metrics.jsonl                   one JSON record per epoch (History.records)
      loss.png                        loss curves (when matplotlib is installed)
      checkpoint/                     everything exact resume needs, see seqstate.train.snapshots

Where each part lives (every module holds one idea):

- ``config``      FitConfig
- ``history``     History and the hook payload WindowEnd
- ``checks``      pre-flight checks of model, lanes, loss and device
- ``fitting``     fit: checks, resume point, replica, then the loop
- ``loop``        the Trainer: epochs, windows, checkpoints
- ``replica``     the seam seqstate.train.distributed plugs into (Replica, EpochSums)
- ``evaluation``  evaluate (a model on lanes) and the pass the loop and replicas share
- ``windows``     windows prepared for the model, kept between passes when the layout is fixed
- ``losses``      the masked losses and the metric sums
- ``progress``    the progress bar or lines, and the schedules of plots and checkpoints
- ``resume``      what a checkpoint must agree on to be continued exactly
- ``snapshots``   the checkpoint's files: weights, optimiser, data cursor, state, RNG
- ``runfiles``    metrics.jsonl and loss.png
- ``tensors``     device/dtype plumbing for windows and carried state
- ``distributed`` torch.distributed (DDP): lanes split across ranks, a Replica per rank
"""

from seqstate.train.config import FitConfig, OptimizerName, ScheduleName
from seqstate.train.evaluation import evaluate
from seqstate.train.fitting import fit
from seqstate.train.history import EpochHook, History, WindowEnd, WindowHook
from seqstate.train.runfiles import CHECKPOINT_DIR, METRICS_FILE, PLOT_FILE

__all__ = [
    "CHECKPOINT_DIR",
    "METRICS_FILE",
    "PLOT_FILE",
    "EpochHook",
    "FitConfig",
    "History",
    "OptimizerName",
    "ScheduleName",
    "WindowEnd",
    "WindowHook",
    "evaluate",
    "fit",
]
