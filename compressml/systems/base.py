"""What every family's LightningModule shares: optimisation, validation bookkeeping, image panels.

A family's system says how to build its network, which parameters form the main and
the auxiliary groups, and how a batch turns into losses (``compute_losses``); this base
turns that into training and validation steps, one optimizer with named parameter
groups (plus an optional LR scheduler), gradient clipping of the main group, the
before/after image panel, best-validation tracking and the scores kept in checkpoints.
"""

from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from compressml import metrics
from compressml.errors import ConfigError

# Under DDP, training metrics (train/...) are rank 0's own share of each step: syncing them would
# cost an all-reduce per metric per step. Validation metrics, which choose checkpoints and drive
# the LR schedule, are averaged over the ranks (CodecSystem.log), so under DDP a checkpoint or
# scheduler monitor should be a val/ metric. Lightning's advice to sync every epoch-level metric
# is silenced for train/ only.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('train/")


def plain(value: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists, so checkpoints load with ``weights_only=True``."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def instantiate_spec(spec: Mapping, what: str, *args, **kwargs):
    """Build ``spec["_target_"](*args, **spec_rest, **kwargs)``; a bad spec is a one-line ConfigError."""
    from hydra.utils import get_object

    spec = dict(spec)
    target = spec.pop("_target_", None)
    if not target:
        raise ConfigError(f"{what} needs a _target_ (an importable callable)")
    try:
        factory = get_object(target)
    except Exception as e:  # hydra wraps ImportError / AttributeError differently across versions
        raise ConfigError(f"{what}._target_={target!r} cannot be imported: {e}") from None
    try:
        return factory(*args, **spec, **kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what}: bad arguments for {target}: {e}") from None


def log_this_step(module: pl.LightningModule) -> bool:
    """Whether the logger writes this training step's values (every ``log_every_n_steps`` steps, and the
    last): per-step values logged on other steps are never written, only paid for."""
    trainer = module._trainer
    connector = getattr(trainer, "_logger_connector", None) if trainer is not None else None
    return bool(getattr(connector, "should_update_logs", True))


class CodecSystem(pl.LightningModule, abc.ABC):
    """Base of the families' systems; subclasses call ``save_hyperparameters`` with at least
    ``optimizer``, ``scheduler``, ``clip_max_norm`` and ``log_images``."""

    family: str = ""

    def __init__(self):
        super().__init__()
        self.best_val: dict[str, float] = {}

    # -- what a family provides ---------------------------------------------------------
    @abc.abstractmethod
    def compute_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward pass and every term optimised or logged: ``loss`` and ``x_hat`` at least, and
        ``target`` (what ``x_hat`` is compared with) when that is not the batch itself."""

    def adapt_datamodule(self, datamodule) -> None:
        """Ask the DataModule for what this family trains on (RED: low/high-resolution pairs)."""

    def _main_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _aux_parameters(self) -> list[torch.nn.Parameter]:
        return []

    def validate_coding(self, batch: torch.Tensor) -> None:
        """Code validation images for real (logs what the files would cost); nothing by default."""

    def checkpoint_info(self) -> dict:
        """Family-specific facts stored in checkpoints under ``compressml``."""
        return {}

    # -- training -------------------------------------------------------------------
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Every term is logged as ``train/<term>_step`` on the steps the logger writes (the Trainer's
        ``log_every_n_steps``) and as ``train/<term>_epoch``, its mean over the epoch weighted by batch
        size. The epoch means are summed here rather than by Lightning's per-call metric objects, whose
        bookkeeping (about a millisecond per logged value and step on these CPUs) is paid on every step."""
        terms = self.compute_losses(batch)
        n = terms["x_hat"].shape[0]
        logged = {k: v.detach() for k, v in terms.items() if k not in ("x_hat", "target")}
        sums = self.__dict__.setdefault("_epoch_sums", {})
        for k, v in logged.items():
            total, count = sums.get(k, (0.0, 0))
            sums[k] = (total + v.float().mean() * n, count + n)
        if log_this_step(self):
            step = {f"train/{k}_step": v for k, v in logged.items() if k != "loss"}
            self.log_dict(step, on_step=True, on_epoch=False, batch_size=n)
            self.log("train/loss_step", logged["loss"], prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        return terms["loss"] + terms.get("aux_loss", 0)

    def on_train_epoch_start(self) -> None:
        self.__dict__["_epoch_sums"] = {}

    def on_train_epoch_end(self) -> None:
        sums = self.__dict__.pop("_epoch_sums", {})
        means = {f"train/{k}_epoch": total / count for k, (total, count) in sums.items() if count}
        if means:
            loss = means.pop("train/loss_epoch", None)
            self.log_dict(means, on_step=False, on_epoch=True)
            if loss is not None:
                self.log("train/loss_epoch", loss, prog_bar=True, on_step=False, on_epoch=True)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        max_norm = gradient_clip_val or self.hparams.clip_max_norm
        if max_norm:
            torch.nn.utils.clip_grad_norm_(self._main_parameters(), max_norm)

    def configure_optimizers(self):
        groups = [{"params": self._main_parameters(), "name": "main"}]
        aux = self._aux_parameters()
        if aux:
            groups.append({"params": aux, "lr": self.hparams.aux_lr, "name": "aux"})
        optimizer = instantiate_spec(self.hparams.optimizer, "model.optimizer", groups)
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        spec = dict(self.hparams.scheduler)
        lightning_keys = {k: spec.pop(k) for k in ("monitor", "interval", "frequency", "strict") if k in spec}
        scheduler = instantiate_spec(spec, "model.scheduler", optimizer)
        config = {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch", "strict": False}
        config.update(lightning_keys)
        return {"optimizer": optimizer, "lr_scheduler": config}

    # -- validation -------------------------------------------------------------------
    def log(self, name: str, value: Any, *args, **kwargs) -> None:
        """Lightning's ``log``, with every validation metric (``val/...``, whichever family logs it)
        averaged over the DDP processes (``sync_dist``): each rank validates its own share of the
        images, and the best checkpoint, the LR schedule on ``val/loss`` and :attr:`best_val` must
        agree on every rank. Nothing changes outside DDP."""
        if name.startswith("val/"):
            kwargs["sync_dist"] = True
        super().log(name, value, *args, **kwargs)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        terms = self.compute_losses(batch)
        target = terms.get("target", batch)
        n = target.shape[0]
        x_hat = terms["x_hat"].clamp(0, 1)
        logged = {f"val/{k}": v for k, v in terms.items() if k not in ("x_hat", "target", "reward", "loss")}
        logged["val/ms_ssim"] = metrics.ms_ssim(x_hat, target)
        self.log_dict(logged, on_epoch=True, prog_bar=False, batch_size=n)
        self.log("val/loss", terms["loss"], prog_bar=True, on_epoch=True, batch_size=n)
        self.validate_coding(batch)
        # the panel of rank 0's first batch: one set of images, in the one log directory (rank 0's)
        if batch_idx == 0 and self.hparams.log_images and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self._log_panel(target[: self.hparams.log_images], x_hat[: self.hparams.log_images])

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        current = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        loss = current.get("val/loss", math.inf)
        if loss <= self.best_val.get("val/loss", math.inf):
            self.best_val = {**current, "epoch": self.current_epoch, "step": self.global_step}

    def _log_panel(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        """Originals (top row) above reconstructions (bottom row), one column per image."""
        from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger
        from torchvision.utils import make_grid

        panel = make_grid(torch.cat([x, x_hat]).float().cpu(), nrow=x.shape[0], padding=2, pad_value=1.0)
        key = "val/reconstruction"
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[panel], caption=["top: original, bottom: decoded"])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(key, panel, self.global_step)
            elif isinstance(logger, CSVLogger):
                from compressml.data.images import save_image

                out = Path(logger.log_dir) / "images"
                out.mkdir(parents=True, exist_ok=True)
                save_image(panel, out / f"reconstruction_step{self.global_step:07d}.png")

    # -- checkpoints -------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the family, its facts and the validation scores (plain numbers) for export manifests."""
        checkpoint["compressml"] = {
            "family": self.family,
            **self.checkpoint_info(),
            "best_val": {k: v if isinstance(v, int) else float(v) for k, v in self.best_val.items()},
            "last_val": self._latest_val_metrics(),
        }

    def _latest_val_metrics(self) -> dict[str, float]:
        trainer = self._trainer
        if trainer is None:
            return {}
        return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}
