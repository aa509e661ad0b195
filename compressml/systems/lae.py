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
from typing import Any

import torch

from compressml import metrics
from compressml.errors import CheckpointError, ConfigError
from compressml.g import check_g, evaluate_g
from compressml.models.lae import (
    QUANTIZATIONS,
    SYNTHESIS_FACTOR,
    architecture,
    architecture_of,
    build_lae,
    compress,
    decompress,
    forward_padded,
    latent_size,
    load_coding_state,
)
from compressml.models.variable_rate import (
    DEFAULT_ANCHORS,
    DEFAULT_RANGE,
    conditioned,
    rate_gain_of,
)
from compressml.systems.base import CodecSystem, instantiate_spec, plain

__all__ = ["FAMILY", "LAESystem", "instantiate_spec", "plain"]

FAMILY = "lae"


TRANSFORMS = ("g_a", "g_s", "h_a", "h_s")  # CompressAI's names of the convolutional stacks


def compiled_transforms(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules ``compile`` compiles: the transforms the network has (each a plain stack of layers)."""
    return [getattr(net, name) for name in TRANSFORMS if isinstance(getattr(net, name, None), torch.nn.Module)]


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
        compile: ``torch.compile`` the network's transforms (the convolutional stacks: analysis,
            synthesis, hyper-analysis, hyper-synthesis) for training, in place (the same
            parameter names in checkpoints); coding always runs them uncompiled.
        variable_rate: one network for every λ in ``lmbda_range`` (gain vectors at ``anchors`` values
            of log λ: :mod:`compressml.models.variable_rate`); they go into the net spec.
        rate_maps: variable-rate models: the share of batches trained with a
            random quality map (a rectangle at another λ) instead of one λ, each pixel's distortion
            weighted by its own λ, so that the model serves any map (``compress --roi``). mse / l1 only.
        val_qualities: variable-rate models: the qualities (0..100) validated; ``val/loss`` is the mean
            of their losses, and each logs ``val/bpp_q<q>`` and ``val/psnr_q<q>``.

    A variable-rate model draws, for each training batch, log λ uniformly over its range and gives
    that λ to g (``lmbda`` in g's context: :class:`compressml.g.RateDistortion` uses it in place of
    its own); g must be one that weighs a distortion by λ.
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
        compile: bool = False,
        variable_rate: bool = False,
        lmbda_range: list[float] | tuple[float, float] = DEFAULT_RANGE,
        anchors: int = DEFAULT_ANCHORS,
        rate_maps: float = 0.0,
        val_qualities: list[float] | tuple[float, ...] = (0, 50, 100),
        family: str = FAMILY,
    ):
        super().__init__()
        if family != FAMILY:
            raise CheckpointError(f"this is a {family!r} model, not an LAE")
        net, g, optimizer, scheduler = plain(net), plain(g), plain(optimizer), plain(scheduler)
        if variable_rate:
            net = {**net, "variable_rate": True, "lmbda_range": list(plain(lmbda_range)), "anchors": anchors}
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
                "compile": bool(compile),
                "variable_rate": bool(variable_rate),
                "lmbda_range": list(plain(lmbda_range)),
                "anchors": anchors,
                "rate_maps": float(rate_maps),
                "val_qualities": [float(q) for q in val_qualities],
            }
        )
        self.net = build_lae(**net)
        refusal = architecture_of(self.net).quantization_refusal(quantization)
        if refusal:
            raise ConfigError(refusal)
        self.g = check_g(instantiate_spec(g, "g") if isinstance(g, Mapping) else g)
        self._real_left = 0
        if rate_gain_of(self.net) is not None:
            if not hasattr(self.g, "lmbda"):
                raise ConfigError(
                    f"a variable-rate model trains on λ: g must weigh the distortion by λ "
                    f"(rate_distortion, perceptual, rate_target), not {type(self.g).__name__}"
                )
            if not 0 <= rate_maps <= 1:
                raise ConfigError(f"model.rate_maps must be in 0..1, got {rate_maps}")
            if rate_maps and getattr(self.g, "distortion", "mse") not in ("mse", "l1"):
                raise ConfigError("model.rate_maps weighs each pixel's distortion: it needs g.distortion mse or l1")
            if not val_qualities or any(not 0 <= q <= 100 for q in val_qualities):
                raise ConfigError(f"model.val_qualities must be qualities in 0..100, got {list(val_qualities)}")
        elif rate_maps:
            raise ConfigError("model.rate_maps is for variable-rate models (model.variable_rate=true)")

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
        gain = rate_gain_of(self.net)
        if gain is None:
            return self._losses(x)
        if self.training:
            return self._losses(x, *self._draw_condition(x, gain))
        # validation: a few fixed qualities; the loss is their mean, the middle one gives the panel
        points = [(q, self._losses(x, gain.log_lmbda(q))) for q in self.hparams.val_qualities]
        terms = dict(points[len(points) // 2][1])
        terms["loss"] = torch.stack([t["loss"] for _, t in points]).mean()
        terms["reward"] = -terms["loss"]
        for q, t in points:
            terms[f"bpp_q{q:g}"], terms[f"psnr_q{q:g}"] = t["bpp"], t["psnr"]
        return terms

    def _draw_condition(self, x: torch.Tensor, gain) -> tuple[object, torch.Tensor | None]:
        """A training batch's log λ: one draw for the batch, or (``rate_maps`` of the time) a map at the
        latent resolution, a random rectangle at a second draw, with its per-pixel λ weights."""
        lo, hi = gain.log_range.tolist()
        draw = lambda: lo + (hi - lo) * float(torch.rand(()))
        if not self.hparams.rate_maps or float(torch.rand(())) >= self.hparams.rate_maps:
            return draw(), None
        n, _, h, w = x.shape
        lh, lw = latent_size(self.net, h, w)
        cond = torch.full((n, 1, lh, lw), draw(), dtype=torch.float64, device=x.device)
        for i in range(n):
            rh, rw = (max(1, int(side * (0.125 + 0.625 * float(torch.rand(()))))) for side in (lh, lw))
            r0, c0 = int(torch.randint(0, lh - rh + 1, ())), int(torch.randint(0, lw - rw + 1, ()))
            cond[i, :, r0 : r0 + rh, c0 : c0 + rw] = draw()
        weights = torch.exp(cond).repeat_interleave(SYNTHESIS_FACTOR, -2).repeat_interleave(SYNTHESIS_FACTOR, -1)
        return cond, weights[..., :h, :w].float()

    def _losses(self, x: torch.Tensor, log_lmbda=None, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        with conditioned(self.net, log_lmbda):
            out = forward_padded(self.net, x, self.hparams.quantization)
        x_hat = out["x_hat"]
        n, _, h, w = x.shape
        bpp = metrics.bpp_from_likelihoods(out["likelihoods"], n * h * w)
        context = {}
        if weights is not None:  # each pixel's distortion weighed by its λ: g sees the mean λ
            mean = weights.mean()
            error = (x_hat - x).abs() if self.g.distortion == "l1" else (x_hat - x) ** 2
            distortion = (error * (weights / mean)).mean()
            context["lmbda"] = float(mean)
        else:
            distortion = self.distortion(x_hat, x)
            if log_lmbda is not None:
                context["lmbda"] = math.exp(float(log_lmbda))
        reward = evaluate_g(self.g, distortion, bpp, x=x, x_hat=x_hat, step=self.global_step, training=self.training, **context)
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
        if self.hparams.get("compile"):
            modules = compiled_transforms(self.net)
            # the stacks share one code object (Sequential.forward): each stack, with and without
            # gradients (validation), is one entry of that frame's cache; dynamo's default of 8
            # would send the later ones back to eager mode
            import torch._dynamo.config as dynamo_config

            name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 8 * len(modules)))
            for module in modules:
                module.compile()

    def on_fit_end(self) -> None:
        # back to the ordinary order: a model that codes must compute exactly as a loaded one
        self.net.to(memory_format=torch.contiguous_format)
        for module in compiled_transforms(self.net):
            module._compiled_call_impl = None  # and uncompiled

    # -- validation -------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self.net.update(force=True)
        self._real_left = self.hparams.real_bpp_images

    def validate_coding(self, batch: torch.Tensor) -> None:
        """Code a few validation images through the rANS coder: the real bpp beside the estimate."""
        gain = rate_gain_of(self.net)
        middle = gain.log_lmbda(self.hparams.val_qualities[len(self.hparams.val_qualities) // 2]) if gain is not None else None
        for image in batch[: max(self._real_left, 0)]:
            with conditioned(self.net, middle):
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
