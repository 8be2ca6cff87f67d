"""The training loop: one Trainer per fit call, epochs of windows, checkpoints between them."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seqstate.core.state import State
from seqstate.lanes.lanes import Lanes
from seqstate.train.config import FitConfig
from seqstate.train.history import EpochHook, History, WindowEnd, WindowHook
from seqstate.train.losses import MaskedLoss, loss_forward
from seqstate.train.progress import Due, EpochProgress, Every
from seqstate.train.replica import EpochSums, Replica
from seqstate.train.runfiles import (
    CHECKPOINT_DIR,
    BackgroundWriter,
    MetricsFile,
    history_copy,
    write_plot,
)
from seqstate.train.snapshots import Snapshot, capture_rng, save_snapshot
from seqstate.train.tensors import call_model, detach_state, first_parameter, initial_state
from seqstate.train.windows import PreparedWindow, WindowCache, prepared_windows

# The progress bar's loss needs a device sync; refresh it at most this often (seconds).
_PROGRESS_REFRESH = 0.5


class Trainer:
    """The state of one fit call; ``run`` is the loop over epochs and windows."""

    def __init__(
        self,
        *,
        model: nn.Module,
        train: Lanes,
        validation: Lanes | None,
        config: FitConfig,
        loss: MaskedLoss,
        device: torch.device,
        run: Path | None,
        signature: dict[str, Any],
        replica: Replica,
        on_window: WindowHook | None,
        on_epoch: EpochHook | None,
    ) -> None:
        self.model = model.to(device)
        self.train_lanes = train
        self.validation = validation
        # the validation windows, built once: every epoch validates the same lanes
        self.validation_windows = WindowCache()
        # the training windows, built once when the layout is the same every epoch (no shuffle)
        self.train_windows = WindowCache()
        self.config = config
        self.loss = loss
        self.device = device
        self.run_dir = run if replica.is_main else None
        self.metrics_file = None if self.run_dir is None else MetricsFile(self.run_dir)
        # the plot is drawn off the training thread; fit returns only once it is written
        self.plots = BackgroundWriter()
        self.writes_checkpoints = run is not None  # on every rank: checkpoints are collective
        self.progress = EpochProgress(config.progress if replica.is_main else False, config.epochs)
        self.show_progress = self.progress.live
        # Plots and epoch-end checkpoints on a schedule, timed in training seconds: reduced over
        # ranks, so every rank of a distributed run takes the same (collective) decision.
        self.trained_seconds = 0.0
        self.plot_due = Due(Every.parse(config.plot_every), clock=self._trained_seconds)
        self.checkpoint_due = Due(
            Every.parse(config.epoch_checkpoints), clock=self._trained_seconds
        )
        self.signature = signature
        self.replica = replica
        self.on_window = on_window
        self.on_epoch = on_epoch
        self.dtype = first_parameter(model).dtype
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(config, self.parameters)
        self.scheduler = make_scheduler(config, self.optimizer)
        self.monitor = "val_loss" if validation is not None else "loss"
        self.history = History(monitor=self.monitor)
        self.best_loss: float | None = None
        self.bad_epochs = 0
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.windows_done = 0
        replica.start(self.model)
        rows = slice(None) if replica.rows is None else replica.rows
        self.batch_size = len(np.arange(train.num_lanes)[rows])

    def _trained_seconds(self) -> float:
        return self.trained_seconds

    # --- run --------------------------------------------------------------------------------

    def run(self, snapshot: Snapshot | None) -> History:
        epoch, cursor, state, sums = 0, 0, None, None
        if snapshot is None:
            if self.config.seed is not None:
                seed_everything(self.config.seed + self.replica.rank)
        else:
            epoch, cursor, state, sums = self._restore(snapshot)
        try:
            while epoch < self.config.epochs and not self.history.stopped_early:
                self._train_epoch(epoch, cursor, state, sums)
                epoch, cursor, state, sums = epoch + 1, 0, None, None

            if self.config.patience is not None and self.config.restore_best and self.best_weights:
                self.model.load_state_dict(self.best_weights)
            self.model.eval()
            if self.run_dir is not None:
                self._save_final_model()
        except BaseException:
            self.plots.wait(raise_error=False)  # (the error in hand is the one to report)
            raise
        self.plots.wait()
        return self.history

    def _train_epoch(
        self, epoch: int, cursor: int, state: State | None, sums: EpochSums | None
    ) -> None:
        config, model, lanes = self.config, self.model, self.train_lanes
        num_windows = lanes.num_windows(epoch)
        if state is None:
            state = initial_state(model, self.batch_size, self.device, self.dtype)
        if sums is None:
            sums = EpochSums(loss=torch.zeros((), dtype=torch.float64, device=self.device))
        bar = self.progress.bar(epoch, num_windows, cursor)
        last_refresh = time.perf_counter()
        model.train()
        rows = self.replica.rows
        if lanes.shuffle:  # a new layout every epoch: nothing to keep
            windows = prepared_windows(
                lanes, rows, self.device, self.dtype, epoch=epoch, start=cursor
            )
        else:
            windows = self.train_windows.windows(lanes, rows, self.device, self.dtype, start=cursor)
        try:
            for index, window in enumerate(windows, start=cursor):
                started = time.perf_counter()
                window_loss, state, real, counted = self._train_window(window, state)
                sums.real += real
                if window_loss is not None:
                    sums.add(window_loss, counted)
                sums.seconds += time.perf_counter() - started
                self.windows_done += 1
                every = config.checkpoint_every
                if every is not None and self.windows_done % every == 0:
                    self._checkpoint(epoch, index + 1, state, sums)
                if self.on_window is not None:
                    self.on_window(WindowEnd(epoch, index, num_windows, window_loss, state))
                bar.update(1)
                if self.show_progress and time.perf_counter() - last_refresh > _PROGRESS_REFRESH:
                    last_refresh = time.perf_counter()
                    bar.set_postfix(bar_stats(sums), refresh=False)
        except BaseException:
            bar.close()
            raise
        # The bar stays open: _end_epoch shows the epoch's loss and val loss on it and closes it.
        self._end_epoch(epoch, sums)

    def _train_window(
        self, window: PreparedWindow, state: State
    ) -> tuple[torch.Tensor | None, State, int, int]:
        """One TBPTT step. Returns (this window's mean loss, detached; None when no target
        counts), the detached state, the real steps and the counted steps."""
        counted = window.counted
        if self.loss.is_classification and counted:
            self._check_labels(window.label_range)
        total = self.replica.total_count(counted)
        with torch.set_grad_enabled(total > 0):
            forward = loss_forward(self.model, self.loss)
            pred, state = call_model(
                forward, window.x, state, window.reset, window.model_mask, window.timeline
            )
        window_loss = None
        if total > 0:
            window_loss = self.loss.sum(pred, window.y, window.mask) / total
            self.optimizer.zero_grad(set_to_none=True)
            window_loss.backward()
            self.replica.reduce_gradients(self.model)
            if self.config.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(self.parameters, self.config.clip_grad_norm)
            self.optimizer.step()
            if not counted:
                window_loss = None
            elif total == counted:  # (one process: the factor is 1, x * 1.0 == x)
                window_loss = window_loss.detach()
            else:  # the mean over this rank's counted steps (the loss is over every rank's)
                window_loss = window_loss.detach() * (total / counted)
        return window_loss, detach_state(state), window.real, counted

    def _check_labels(self, label_range: tuple[int, int] | None) -> None:
        if label_range is None:
            return
        classes = getattr(self.model, "output_size", None)
        low, high = label_range
        if low < 0 or (isinstance(classes, int) and high >= classes):
            raise ValueError(
                f"class labels must be in [0, {classes}) for a model with output_size={classes} "
                f"classes; received labels from {low} to {high}. Encode classes as 0..C-1."
            )

    def _end_epoch(self, epoch: int, sums: EpochSums) -> None:
        config = self.config
        sums = self.replica.reduce_epoch(sums)  # (settles the kept windows)
        if sums.counted == 0:
            raise ValueError(
                f"epoch {epoch} had no step with a target (every window.loss_mask is False); the "
                "training lanes need targets that count"
            )
        train_loss = float(sums.loss) / sums.counted
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"training loss became {train_loss} in epoch {epoch}; lower lr, keep "
                "clip_grad_norm on, or normalise the data (model.set_normalization)"
            )
        record: dict[str, Any] = {"epoch": epoch, "loss": train_loss}
        if self.validation is not None:
            metrics = self.replica.evaluate(
                self.model, self.validation, self.loss, self.device, self.validation_windows
            )
            record.update({f"val_{name}": value for name, value in metrics.items()})
        record["lr"] = float(self.optimizer.param_groups[0]["lr"])
        record["steps_per_s"] = sums.real / sums.seconds if sums.seconds > 0 else 0.0
        record["seconds"] = sums.seconds

        monitored = record[self.monitor]
        if self.scheduler is not None:
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(monitored)
            else:
                self.scheduler.step()
        if self.best_loss is None or monitored < self.best_loss - config.min_delta:
            self.best_loss, self.bad_epochs = monitored, 0
            self.history.best_epoch = epoch
            if config.patience is not None and config.restore_best:
                self.best_weights = {
                    k: v.detach().clone() for k, v in self.model.state_dict().items()
                }
        else:
            self.bad_epochs += 1
        if config.patience is not None and self.bad_epochs >= config.patience:
            self.history.stopped_early = True
        self.history.records.append(record)

        # The last epoch always writes its plot and checkpoint, so the files are complete.
        self.trained_seconds += sums.seconds
        last = epoch + 1 >= config.epochs or self.history.stopped_early
        written = []
        if self.run_dir is not None and self.metrics_file is not None:
            self.metrics_file.write(self.history)
            if self.plot_due.check(epoch, last):
                self.plots.submit(write_plot, self.run_dir, history_copy(self.history))
        if self.checkpoint_due.check(epoch, last):
            self._checkpoint(epoch + 1, 0, None, None)
            written.append("checkpoint")
        self.progress.epoch_done(record, " ".join(written) if self.run_dir else "")
        if self.on_epoch is not None:
            self.on_epoch(dict(record))

    # --- checkpoints ------------------------------------------------------------------------

    def _checkpoint(
        self, epoch: int, cursor: int, state: State | None, sums: EpochSums | None
    ) -> None:
        if not self.writes_checkpoints:
            return
        state, sums, rng = self.replica.gather_checkpoint(state, sums, capture_rng())
        if self.run_dir is None:
            return  # another rank writes
        info = {
            "config": self.config.to_dict(),
            "signature": self.signature,
            "epoch": epoch,
            "cursor": cursor,
            "windows_done": self.windows_done,
            "epoch_sums": None if sums is None else sums.to_dict(),
            "history": self.history.to_dict(),
            "best_loss": self.best_loss,
            "bad_epochs": self.bad_epochs,
        }
        snapshot = Snapshot(
            info=info,
            weights=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=None if self.scheduler is None else self.scheduler.state_dict(),
            best_weights=self.best_weights,
            carried_state=None if state is None else state.to_bytes(),
            rng=rng,
        )
        save_snapshot(self.run_dir / CHECKPOINT_DIR, f"e{epoch:05d}-w{cursor:07d}", snapshot)

    def _restore(self, snapshot: Snapshot) -> tuple[int, int, State | None, EpochSums | None]:
        info = snapshot.info
        self.model.load_state_dict(snapshot.weights)
        self.optimizer.load_state_dict(snapshot.optimizer)
        if self.scheduler is not None and snapshot.scheduler is not None:
            self.scheduler.load_state_dict(snapshot.scheduler)
        self.history = History.from_dict(info["history"])
        self.best_loss = info["best_loss"]
        self.bad_epochs = info["bad_epochs"]
        self.windows_done = info["windows_done"]
        if snapshot.best_weights is not None:
            self.best_weights = {k: v.to(self.device) for k, v in snapshot.best_weights.items()}
        state = None
        if snapshot.carried_state is not None:
            state = State.from_bytes(snapshot.carried_state, device=self.device)
        sums = None
        if info["epoch_sums"] is not None:
            saved = info["epoch_sums"]
            sums = EpochSums(
                loss=torch.tensor(saved["loss"], dtype=torch.float64, device=self.device),
                counted=saved["counted"],
                real=saved["real"],
                seconds=saved["seconds"],
            )
        state, sums = self.replica.restore_checkpoint(state, sums, snapshot.rng)
        return info["epoch"], info["cursor"], state, sums

    def _save_final_model(self) -> None:
        from seqstate.core.model import SequenceModel
        from seqstate.core.saved import save_model

        model, run_dir = self.model, self.run_dir
        if run_dir is None or not isinstance(model, SequenceModel):
            return  # a custom module's weights live in checkpoint/; it has no config to save
        metadata = {
            "fit": self.config.to_dict(),
            "loss": self.loss.name,
            "best_epoch": self.history.best_epoch,
            "stopped_early": self.history.stopped_early,
            "epochs_trained": len(self.history),
        }
        save_model(model, run_dir, metadata=metadata)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # CPU and every CUDA device
    np.random.seed(seed)
    random.seed(seed)


def make_optimizer(config: FitConfig, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    if not parameters:
        raise ValueError("the model has no trainable parameters (all requires_grad=False)")
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def make_scheduler(config: FitConfig, optimizer: torch.optim.Optimizer) -> Any:
    """An lr scheduler stepped once per epoch, or None for a constant lr."""
    schedules = torch.optim.lr_scheduler
    if config.schedule == "cosine":
        return schedules.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.min_lr)
    if config.schedule == "step":
        return schedules.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_factor)
    if config.schedule == "plateau":
        return schedules.ReduceLROnPlateau(
            optimizer, factor=config.lr_factor, patience=config.lr_patience, min_lr=config.min_lr
        )
    return None


def bar_stats(sums: EpochSums) -> dict[str, str]:
    stats = {}
    if sums.counted:
        stats["loss"] = f"{float(sums.settle().loss) / sums.counted:.4g}"  # one device sync
    if sums.seconds > 0:
        stats["steps/s"] = f"{sums.real / sums.seconds:,.0f}"
    return stats
