"""LightningModule that trains a RED (resolution-enhancement decoder, super-resolution).

Training pairs come from any image data group: the DataModule crops high-resolution
patches (to a multiple of the scale) and makes each low-resolution input on the fly with
:func:`compressml.models.red.downscale` (see :meth:`REDSystem.adapt_datamodule`). A batch
of plain images is turned into pairs the same way, so the system also works on its own.

The loss is L1 (EDSR's) or MSE. Logged: RGB PSNR, and the field's Y-channel PSNR and SSIM
with ``crop_border = scale``, beside bicubic upscaling's Y-PSNR on the same images.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from compressml import metrics
from compressml.errors import CheckpointError, ConfigError
from compressml.models.red import NET_KEYS, RED, bicubic_upscale, make_pair
from compressml.systems.base import CodecSystem, plain

FAMILY = "red"
LOSSES = ("l1", "mse")


class REDSystem(CodecSystem):
    """Args: the network's (see :class:`compressml.models.red.RED`), then

    loss: ``l1`` or ``mse``.
    optimizer, scheduler, clip_max_norm, log_images: as for the other families.
    g: accepted and unused: there is no rate to trade.
    """

    family = FAMILY

    def __init__(
        self,
        arch: str = "edsr",
        scale: int = 2,
        channels: int | None = None,
        blocks: int | None = None,
        global_skip: bool = True,
        loss: str = "l1",
        optimizer: Mapping | None = None,
        scheduler: Mapping | None = None,
        clip_max_norm: float | None = None,
        log_images: int = 2,
        family: str = FAMILY,
        g: Any = None,
    ):
        super().__init__()
        if family != FAMILY:
            raise CheckpointError(f"this is a {family!r} model, not a RED")
        if loss not in LOSSES:
            raise ConfigError(f"model.loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        args = locals()
        net = {k: args[k] for k in NET_KEYS}
        self.net = RED(**net)
        self.save_hyperparameters(
            {
                "family": FAMILY,
                **net,
                "loss": loss,
                "optimizer": plain(optimizer) or {"_target_": "torch.optim.Adam", "lr": 1e-4},
                "scheduler": plain(scheduler),
                "clip_max_norm": clip_max_norm,
                "log_images": log_images,
            }
        )

    @property
    def scale(self) -> int:
        return self.net.scale

    def adapt_datamodule(self, datamodule) -> None:
        """Ask the DataModule for (low-res, high-res) pairs at this model's scale."""
        if not hasattr(datamodule, "pair_scale"):
            raise ConfigError(f"data: {type(datamodule).__name__} cannot make super-resolution pairs")
        datamodule.pair_scale = self.scale

    def pairs(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(low-res, high-res) from a batch of pairs, or from plain images (made here)."""
        if isinstance(batch, (tuple, list)):
            return batch[0], batch[1]
        try:
            return make_pair(batch, self.scale)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def compute_losses(self, batch) -> dict[str, torch.Tensor]:
        lr, hr = self.pairs(batch)
        sr = self.net(lr)
        loss = F.l1_loss(sr, hr) if self.hparams.loss == "l1" else F.mse_loss(sr, hr)
        with torch.no_grad():
            out = sr.detach().clamp(0, 1)
            terms = {
                "psnr": metrics.psnr(out, hr),
                "psnr_y": metrics.psnr_y(out, hr, self.scale),
                "psnr_y_bicubic": metrics.psnr_y(bicubic_upscale(lr, self.scale).clamp(0, 1), hr, self.scale),
            }
            if not self.training:
                terms["ssim_y"] = metrics.ssim_y(out, hr, self.scale)
        return {"loss": loss, **terms, "x_hat": sr, "target": hr}

    def checkpoint_info(self) -> dict:
        return {"scale": self.scale, "arch": self.net.arch}
