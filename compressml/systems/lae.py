"""LightningModule that trains an LAE to maximise a reward g(distortion, rate).

Optimisation follows CompressAI: the network's parameters and the entropy
bottleneck's quantiles form two groups with their own learning rates. The main
loss (-g) never reaches the quantiles (CompressAI detaches the medians) and the
aux loss reaches nothing but the quantiles (it detaches the density parameters),
so one optimizer stepping on ``-g + aux`` is exactly CompressAI's two optimizers,
while keeping Lightning's automatic optimisation (gradient accumulation, AMP,
DDP without unused parameters). Gradient clipping applies to the main group only.

Every checkpoint is saved with freshly updated CDF tables, and loading one resizes
those tables, so ``LAESystem.load_from_checkpoint(path).net`` can code at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from compressml import metrics
from compressml.errors import CheckpointError, ConfigError
from compressml.g import check_g, evaluate_g
from compressml.models.lae import build_lae, compress, decompress, forward_padded, load_coding_state

FAMILY = "lae"


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


class LAESystem(pl.LightningModule):
    """Trains one CompressAI model; see the module docstring for the optimisation scheme.

    Args:
        net: architecture spec for :func:`compressml.models.lae.build_lae`
            (``arch``, ``channels``, ``latent_channels``).
        g: the reward, as a spec with ``_target_`` (stored in checkpoints) or a callable.
        optimizer: spec of a ``torch.optim`` optimizer (``_target_`` and its arguments, without params).
        aux_lr: learning rate of the entropy-bottleneck quantiles.
        scheduler: optional LR-scheduler spec; ``monitor``, ``interval`` and ``frequency`` go to Lightning.
        clip_max_norm: gradient-norm clipping of the main parameters (0 or None: off).
        real_bpp_images: validation images coded for real through rANS each validation epoch.
        log_images: images in the before/after panel logged each validation epoch (0: none).
    """

    def __init__(
        self,
        net: Mapping,
        g: Mapping | Callable,
        optimizer: Mapping | None = None,
        aux_lr: float = 1e-3,
        scheduler: Mapping | None = None,
        clip_max_norm: float | None = 1.0,
        real_bpp_images: int = 2,
        log_images: int = 2,
        family: str = FAMILY,
    ):
        super().__init__()
        if family != FAMILY:
            raise CheckpointError(f"this is a {family!r} model, not an LAE")
        net, g, optimizer, scheduler = plain(net), plain(g), plain(optimizer), plain(scheduler)
        optimizer = optimizer or {"_target_": "torch.optim.Adam", "lr": 1e-4}
        if aux_lr <= 0:
            raise ConfigError(f"model.aux_lr must be > 0, got {aux_lr}")
        self.save_hyperparameters(
            {
                "family": FAMILY,
                "net": net,
                "g": g if isinstance(g, Mapping) else None,
                "optimizer": optimizer,
                "aux_lr": aux_lr,
                "scheduler": scheduler,
                "clip_max_norm": clip_max_norm,
                "real_bpp_images": real_bpp_images,
                "log_images": log_images,
            }
        )
        self.net = build_lae(**net)
        self.g = check_g(instantiate_spec(g, "g") if isinstance(g, Mapping) else g)
        self.best_val: dict[str, float] = {}
        self._real_left = 0

    # -- losses -------------------------------------------------------------------
    def _main_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.net.named_parameters() if not n.endswith(".quantiles") and p.requires_grad]

    def _aux_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.net.named_parameters() if n.endswith(".quantiles")]

    def distortion(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        kind = getattr(self.g, "distortion", "mse")
        return metrics.ms_ssim(x_hat, x) if kind == "ms-ssim" else torch.mean((x_hat - x) ** 2)

    def compute_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward pass and every term that is optimised or logged."""
        out = forward_padded(self.net, x)
        x_hat = out["x_hat"]
        n, _, h, w = x.shape
        bpp = metrics.bpp_from_likelihoods(out["likelihoods"], n * h * w)
        distortion = self.distortion(x_hat, x)
        reward = evaluate_g(self.g, distortion, bpp, x=x, x_hat=x_hat, step=self.global_step)
        return {
            "loss": -reward,
            "reward": reward,
            "distortion": distortion,
            "bpp": bpp,
            "mse": torch.mean((x_hat.detach() - x) ** 2),
            "psnr": metrics.psnr(x_hat.detach().clamp(0, 1), x),
            "aux_loss": self.net.aux_loss(),
            "x_hat": x_hat,
        }

    # -- training -------------------------------------------------------------------
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        terms = self.compute_losses(batch)
        logged = {f"train/{k}": v.detach() for k, v in terms.items() if k not in ("x_hat", "loss")}
        self.log_dict(logged, on_step=True, on_epoch=True, batch_size=batch.shape[0])
        self.log("train/loss", terms["loss"].detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=batch.shape[0])
        return terms["loss"] + terms["aux_loss"]

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
    def on_validation_epoch_start(self) -> None:
        self.net.update(force=True)
        self._real_left = self.hparams.real_bpp_images

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        terms = self.compute_losses(batch)
        n = batch.shape[0]
        x_hat = terms["x_hat"].clamp(0, 1)
        logged = {f"val/{k}": v for k, v in terms.items() if k not in ("x_hat", "reward", "loss")}
        logged["val/ms_ssim"] = metrics.ms_ssim(x_hat, batch)
        self.log_dict(logged, on_epoch=True, prog_bar=False, batch_size=n)
        self.log("val/loss", terms["loss"], prog_bar=True, on_epoch=True, batch_size=n)
        self._log_real_coding(batch)
        if batch_idx == 0 and self.hparams.log_images and not self.trainer.sanity_checking:
            self._log_panel(batch[: self.hparams.log_images], x_hat[: self.hparams.log_images])

    def _log_real_coding(self, batch: torch.Tensor) -> None:
        """Code a few validation images through the rANS coder: the real bpp beside the estimate."""
        for image in batch[: max(self._real_left, 0)]:
            payload = compress(self.net, image[None])
            decoded = decompress(self.net, payload)
            h, w = image.shape[-2:]
            self.log("val/bpp_real", metrics.bpp_from_bytes(payload.num_bytes, h, w), on_epoch=True, batch_size=1)
            self.log("val/psnr_real", metrics.psnr(decoded, image[None]), on_epoch=True, batch_size=1)
            self._real_left -= 1

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
        """Update the CDF tables and store them, so a checkpoint can always code; keep the validation scores for export."""
        self.net.update(force=True)
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("net.")]:
            del state[key]
        state.update({f"net.{k}": v.detach().clone() for k, v in self.net.state_dict().items()})
        checkpoint["compressml"] = {
            "family": FAMILY,
            "arch": self.hparams.net.get("arch"),
            # plain floats, kept for the export manifest ("metrics at export time")
            "best_val": {k: v if isinstance(v, int) else float(v) for k, v in self.best_val.items()},
            "last_val": self._latest_val_metrics(),
        }

    def _latest_val_metrics(self) -> dict[str, float]:
        trainer = self._trainer
        if trainer is None:
            return {}
        return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Route the network's part through the CDF-resizing load (see ``load_coding_state``)."""
        net_state = {k[len("net.") :]: v for k, v in state_dict.items() if k.startswith("net.")}
        load_coding_state(self.net, net_state, strict=strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def load_lae(path: str | Path, map_location: str | torch.device = "cpu", **overrides) -> LAESystem:
    """Load an LAE checkpoint safely (``weights_only=True``: no arbitrary unpickling), ready to code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        system = LAESystem.load_from_checkpoint(path, map_location=map_location, weights_only=True, **overrides)
    except CheckpointError:
        raise
    except Exception as e:  # corrupt file, foreign pickle, wrong keys: one line for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a loadable compressml LAE checkpoint ({first})") from None
    return system.eval()
