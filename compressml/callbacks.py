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
