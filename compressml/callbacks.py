"""Lightning callbacks with the behaviour compressml's configs expect."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint as _LightningModelCheckpoint

from compressml.systems.base import log_this_step


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
        if log_this_step(pl_module):
            pl_module.log("train/cpu_seconds", self.used(), on_step=True, on_epoch=False)

    def state_dict(self) -> dict:
        return {"used": self.used()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._before = float(state_dict.get("used", 0.0))


class RNGState(pl.Callback):
    """The random number generators' states in every checkpoint, restored on resume, so that a run
    killed and resumed from ``last.ckpt`` draws the same crops, shuffles and quantisation noise as
    one that never stopped (Lightning restores the weights, optimiser, schedulers and loop counters,
    not the generators). Python's, NumPy's and torch's CPU generator, and the current CUDA device's
    when there is one; stored as plain tensors and lists (checkpoints load with ``weights_only``).

    A checkpoint written at an epoch's end is restored when the next epoch starts (a resumed run
    first finishes the restored epoch again and may validate for a sanity check, which draw from
    the generators); one written mid-epoch, when it is loaded. Under DDP each rank seeds its own
    generators; rank 0's are saved and restored on every rank."""

    KEY = "compressml_rng"

    def __init__(self):
        self._stashed: dict | None = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self._stashed is not None:  # saved again while the restored epoch finishes: what was restored
            checkpoint[self.KEY] = self._stashed
            return
        checkpoint[self.KEY] = {**_rng_states(), "at_epoch_end": bool(trainer.fit_loop.epoch_loop._num_ready_batches_reached())}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get(self.KEY)
        if state is None:
            return
        if state.get("at_epoch_end"):
            self._stashed = state
        else:
            _set_rng_states(state)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stashed is not None and not trainer.fit_loop.restarting:
            _set_rng_states(self._stashed)
            self._stashed = None


def _rng_states() -> dict:
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_states(state: dict) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class PlateauOnResume(pl.Callback):
    """The epoch's ReduceLROnPlateau step that a resumed run would otherwise lose.

    Checkpoints are written at the end of an epoch (after its validation), before Lightning steps
    the epoch's schedulers. A run resumed from one finishes that epoch again but, "restarting",
    skips the plateau schedulers' step, since the metric they need is not in the checkpoint. So
    every resume lost a learning-rate decision, and a killed-and-resumed run drifted from one that
    never stopped. This callback stores the monitored value with each checkpoint and makes that
    step when the restarted epoch ends."""

    def __init__(self):
        self._pending: list | None = None

    @staticmethod
    def _plateaus(trainer: pl.Trainer) -> list:
        return [c for c in trainer.lr_scheduler_configs if c.reduce_on_plateau and c.interval == "epoch"]

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self._pending is not None:  # saved again while the restored epoch finishes: still pending
            checkpoint["compressml_plateau_pending"] = self._pending
            return
        values = []
        for config in self._plateaus(trainer):
            value = trainer.callback_metrics.get(config.monitor) if config.monitor else None
            values.append(None if value is None else float(value))
        checkpoint["compressml_plateau_pending"] = values

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._pending = checkpoint.get("compressml_plateau_pending")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pending, self._pending = self._pending, None
        if not pending or not trainer.fit_loop.restarting:
            return
        for config, value in zip(self._plateaus(trainer), pending):
            if value is not None:
                config.scheduler.step(value)
