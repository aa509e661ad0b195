"""Lightning callbacks with the behaviour compressml's configs expect."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint as _LightningModelCheckpoint


class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ModelCheckpoint, with ``save_last`` writing ``last.ckpt`` at every checkpointing
    validation (or epoch end), as its name says. Lightning (since 2.5) writes it only when a top-k
    checkpoint was saved at the same step, so with a monitor ``last.ckpt`` stayed at the best
    validation and a run resumed from it lost every step since. Also, a run that stops between
    validations (on ``max_steps`` or ``max_time``) writes its final step into ``last.ckpt``. (The class
    keeps Lightning's name, so its state key in checkpoints is the same.)"""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_as_well(trainer, at_epoch_end=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_last_as_well(trainer, at_epoch_end=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)  # called when fitting ends normally, not on errors
        if self.save_last and self.dirpath and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))  # every rank; rank 0 writes

    def _save_last_as_well(self, trainer: pl.Trainer, at_epoch_end: bool) -> None:
        if not self.save_last or self._should_skip_saving_checkpoint(trainer):
            return  # off, or Lightning saved at this step already
        if self._should_save_on_train_epoch_end(trainer) != at_epoch_end:
            return  # this callback saves at the other hook
        if self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class CPUTimeBudget(pl.Callback):
    """Stop training once the process has used ``seconds`` of CPU time (every thread, user and system),
    counted over resumed runs too (the total travels in the checkpoint): recipes and architectures
    compared "at equal CPU time" then are, whatever else the machine was doing. Validation and data
    loading in the process count; ``threads`` (if set) fixes torch's intra-op threads for the run."""

    def __init__(self, seconds: float, threads: int | None = None):
        if not seconds > 0:
            raise ValueError(f"CPUTimeBudget needs seconds > 0, got {seconds}")
        self.seconds, self.threads = float(seconds), threads
        self._before = 0.0  # CPU seconds of earlier runs (from the checkpoint)
        self._start: float | None = None

    def used(self) -> float:
        import time

        return self._before + (time.process_time() - self._start if self._start is not None else 0.0)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import time

        import torch

        if self.threads:
            torch.set_num_threads(int(self.threads))
        self._start = time.process_time()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        # every rank stops at the same step (under DDP a rank that left alone would hang the others)
        if trainer.strategy.reduce_boolean_decision(self.used() >= self.seconds, all=False):
            trainer.should_stop = True
        pl_module.log("train/cpu_seconds", self.used(), on_step=True, on_epoch=False)

    def state_dict(self) -> dict:
        return {"used": self.used()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._before = float(state_dict.get("used", 0.0))
