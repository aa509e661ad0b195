"""LightningModule that trains an MLLAE-N: a fixed code of at most N bytes per block.

The loss is a distortion (``mse``, ``l1``, or ``l1_ssim``: 0.84 (1 - SSIM) + 0.16 L1,
the mix of Zhao et al. for image restoration), plus the quantizer's penalty
(the sparsity term of ``binary_noise``). In lossless mode it adds the residual's
cost in bits per sub-pixel under the residual model (what the rANS coder will spend),
weighted by ``residual_weight``.

Every validation epoch a few images are coded for real: the largest and mean payload
per block (never above N), the real bits per pixel, and, in lossless mode, the real
bits per sub-pixel and whether decoding was bit-exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from compressml import metrics
from compressml.errors import CheckpointError, ConfigError
from compressml.models.mllae import MLLAE, NET_KEYS
from compressml.systems.base import CodecSystem, plain

FAMILY = "mllae"
DISTORTIONS = ("mse", "l1", "l1_ssim")


class MLLAESystem(CodecSystem):
    """Args: the network's (see :class:`compressml.models.mllae.MLLAE`), then

    entropy: the lossless stage after the fixed code: ``none``, ``lzma`` or ``rans``
        (an empirical per-channel prior counted in training).
    distortion: ``mse``, ``l1`` or ``l1_ssim``.
    residual_weight: weight of the residual's bits per sub-pixel (lossless mode).
    optimizer, scheduler, clip_max_norm, real_bpp_images, log_images: as for LAE.
    g: accepted and unused: the code size is fixed, so there is no rate to trade.
    """

    family = FAMILY

    def __init__(
        self,
        bytes: int = 64,
        block: int = 64,
        quantizer: str = "binary_noise",
        bits: int = 1,
        noise: float = 0.5,
        sparsity: float = 0.0,
        channels: int = 96,
        stride: int = 8,
        max_latent_channels: int = 512,
        lossless: bool = False,
        residual_channels: int = 32,
        entropy: str = "none",
        distortion: str = "mse",
        residual_weight: float = 1.0,
        optimizer: Mapping | None = None,
        scheduler: Mapping | None = None,
        clip_max_norm: float | None = 1.0,
        real_bpp_images: int = 2,
        log_images: int = 2,
        family: str = FAMILY,
        g: Any = None,
    ):
        super().__init__()
        if family != FAMILY:
            raise CheckpointError(f"this is a {family!r} model, not an MLLAE")
        from compressml.codec.mllae import ENTROPY_STAGES

        if distortion not in DISTORTIONS:
            raise ConfigError(f"model.distortion must be one of {', '.join(DISTORTIONS)}, got {distortion!r}")
        if entropy not in ENTROPY_STAGES:
            raise ConfigError(f"model.entropy must be one of {', '.join(ENTROPY_STAGES)}, got {entropy!r}")
        if residual_weight < 0:
            raise ConfigError(f"model.residual_weight must be >= 0, got {residual_weight}")
        args = locals()
        net = {k: args[k] for k in NET_KEYS}
        self.net = MLLAE(**net)
        self.save_hyperparameters(
            {
                "family": FAMILY,
                **net,
                "entropy": entropy,
                "distortion": distortion,
                "residual_weight": residual_weight,
                "optimizer": plain(optimizer) or {"_target_": "torch.optim.Adam", "lr": 1e-4},
                "scheduler": plain(scheduler),
                "clip_max_norm": clip_max_norm,
                "real_bpp_images": real_bpp_images,
                "log_images": log_images,
            }
        )
        self._real_left = 0

    def distortion(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return metrics.distortion(self.hparams.distortion, x_hat, x)

    def compute_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.net(x)
        x_hat = out["x_hat"]
        distortion = self.distortion(x_hat, x)
        g = self.net.geometry
        terms = {
            "distortion": distortion,
            "penalty": out["penalty"],
            "mse": torch.mean((x_hat.detach() - x) ** 2),
            "psnr": metrics.psnr(x_hat.detach().clamp(0, 1), x),
            "code_ones": out["code"].detach().mean(),
            "bpp_code": torch.tensor(8.0 * g.code_bytes / g.block**2),
        }
        loss = distortion + out["penalty"]
        if self.net.lossless:
            bpsp_residual = out["residual_bits"].mean()
            terms["bpsp_residual"] = bpsp_residual
            terms["bpsp"] = bpsp_residual.detach() + terms["bpp_code"] / 3
            loss = loss + self.hparams.residual_weight * bpsp_residual
        return {"loss": loss, **terms, "x_hat": x_hat}

    # -- validation -------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self.net.fold_counts()  # the rANS prior of the codes from every rank's data
        self._real_left = self.hparams.real_bpp_images

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.net.fold_counts()  # every rank saves (rank 0 writes) the counts of all ranks
        checkpoint["state_dict"]["net.code_counts"] = self.net.code_counts.detach().clone()
        super().on_save_checkpoint(checkpoint)

    def validate_coding(self, batch: torch.Tensor) -> None:
        """Code a few validation images for real: payload per block, real bpp, bit-exactness."""
        from compressml.codec import mllae as codec
        from compressml.codec.lae import SourceImage

        for image in batch[: max(self._real_left, 0)]:
            x = (image * 255).round() / 255
            container = codec.encode(self.net, SourceImage(rgb=x.cpu()), bytes(16), self.hparams.entropy)
            decoded = codec.decode(self.net, container, bytes(16)).rgb.to(x.device)
            h, w = x.shape[-2:]
            sizes = codec.block_payload_sizes(container, self.net)
            logged = {
                "val/block_bytes_max": float(max(sizes)),
                "val/block_bytes_mean": sum(sizes) / len(sizes),
                "val/bpp_real": metrics.bpp_from_bytes(len(container.to_bytes()), h, w),
                "val/psnr_real": metrics.psnr(decoded[None], x[None]),
            }
            if self.net.lossless:
                logged["val/bpsp_real"] = logged["val/bpp_real"] / 3
                logged["val/exact"] = float(torch.equal((decoded * 255).round(), (x * 255).round()))
            self.log_dict(logged, on_epoch=True, batch_size=1)
            self._real_left -= 1

    def checkpoint_info(self) -> dict:
        return {"geometry": self.net.geometry.as_dict()}
