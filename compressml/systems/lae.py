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

from collections.abc import Callable, Mapping
from typing import Any

import torch

from compressml import metrics
from compressml.errors import CheckpointError, ConfigError
from compressml.g import check_g, evaluate_g
from compressml.models.lae import QUANTIZATIONS, architecture, architecture_of, build_lae, compress, decompress, forward_padded, load_coding_state
from compressml.systems.base import CodecSystem, instantiate_spec, plain

__all__ = ["FAMILY", "LAESystem", "instantiate_spec", "plain"]

FAMILY = "lae"


class LAESystem(CodecSystem):
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
        quantization: how training stands in for rounding: ``noise`` (CompressAI's) or ``ste``
            (noise for the rate, rounding with a straight-through gradient for the decoders);
            see :func:`compressml.models.lae._forward`. None: the architecture's own (``ste`` for the
            checkerboard and ELIC models, which CompressAI builds so, ``noise`` for the others).
        channels_last: keep the network and its inputs in channels-last memory order while
            training (faster convolutions on CPU and on GPUs with tensor cores; same results).
    """

    family = FAMILY

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
        quantization: str | None = None,
        channels_last: bool = False,
        family: str = FAMILY,
    ):
        super().__init__()
        if family != FAMILY:
            raise CheckpointError(f"this is a {family!r} model, not an LAE")
        net, g, optimizer, scheduler = plain(net), plain(g), plain(optimizer), plain(scheduler)
        optimizer = optimizer or {"_target_": "torch.optim.Adam", "lr": 1e-4}
        if quantization is None:
            quantization = "ste" if architecture(net.get("arch", "")).quantization_refusal("noise") else "noise"
        if quantization not in QUANTIZATIONS:
            raise ConfigError(f"model.quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
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
                "quantization": quantization,
                "channels_last": bool(channels_last),
            }
        )
        self.net = build_lae(**net)
        refusal = architecture_of(self.net).quantization_refusal(quantization)
        if refusal:
            raise ConfigError(refusal)
        self.g = check_g(instantiate_spec(g, "g") if isinstance(g, Mapping) else g)
        self._real_left = 0

    # -- losses -------------------------------------------------------------------
    def _main_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.net.named_parameters() if not n.endswith(".quantiles") and p.requires_grad]

    def _aux_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.net.named_parameters() if n.endswith(".quantiles")]

    def distortion(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The measure g names (``compressml.g.DISTORTIONS``)."""
        return metrics.distortion(getattr(self.g, "distortion", "mse"), x_hat, x)

    def compute_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward pass and every term that is optimised or logged."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = forward_padded(self.net, x, self.hparams.quantization)
        x_hat = out["x_hat"]
        n, _, h, w = x.shape
        bpp = metrics.bpp_from_likelihoods(out["likelihoods"], n * h * w)
        distortion = self.distortion(x_hat, x)
        reward = evaluate_g(self.g, distortion, bpp, x=x, x_hat=x_hat, step=self.global_step, training=self.training)
        own = {f"g_{k}": torch.as_tensor(v, dtype=torch.float32).detach() for k, v in (getattr(self.g, "logged", None) or {}).items()}
        return {
            **own,
            "loss": -reward,
            "reward": reward,
            "distortion": distortion,
            "bpp": bpp,
            "mse": torch.mean((x_hat.detach() - x) ** 2),
            "psnr": metrics.psnr(x_hat.detach().clamp(0, 1), x),
            "aux_loss": self.net.aux_loss(),
            "x_hat": x_hat,
        }

    # -- memory order -------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def on_fit_end(self) -> None:
        # back to the ordinary order: a model that codes must compute exactly as a loaded one
        self.net.to(memory_format=torch.contiguous_format)

    # -- validation -------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self.net.update(force=True)
        self._real_left = self.hparams.real_bpp_images

    def validate_coding(self, batch: torch.Tensor) -> None:
        """Code a few validation images through the rANS coder: the real bpp beside the estimate."""
        for image in batch[: max(self._real_left, 0)]:
            payload = compress(self.net, image[None])
            decoded = decompress(self.net, payload)
            h, w = image.shape[-2:]
            self.log("val/bpp_real", metrics.bpp_from_bytes(payload.num_bytes, h, w), on_epoch=True, batch_size=1)
            self.log("val/psnr_real", metrics.psnr(decoded, image[None]), on_epoch=True, batch_size=1)
            self._real_left -= 1

    # -- checkpoints -------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Update the CDF tables and store them, so a checkpoint can always code."""
        self.net.update(force=True)
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("net.")]:
            del state[key]
        # contiguous copies whatever the training memory order (safetensors export needs them)
        state.update({f"net.{k}": v.detach().clone(memory_format=torch.contiguous_format) for k, v in self.net.state_dict().items()})
        super().on_save_checkpoint(checkpoint)
        if hasattr(self.g, "state_dict"):  # e.g. an adapted Lagrange multiplier: resumes where it was
            checkpoint["compressml"]["g_state"] = self.g.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        g_state = (checkpoint.get("compressml") or {}).get("g_state")
        if g_state is not None and hasattr(self.g, "load_state_dict"):
            self.g.load_state_dict(g_state)

    def checkpoint_info(self) -> dict:
        return {"arch": self.hparams.net.get("arch")}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Route the network's part through the CDF-resizing load (see ``load_coding_state``)."""
        net_state = {k[len("net.") :]: v for k, v in state_dict.items() if k.startswith("net.")}
        load_coding_state(self.net, net_state, strict=strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
