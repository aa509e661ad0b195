"""LAE: lossy autoencoders with entropy-coded latents, on CompressAI's reference architectures.

The networks are CompressAI's own classes, unchanged, so their state dicts stay
loadable by CompressAI. This module adds what every caller needs around them:
building from a plain spec, any image size (edge padding to the network's stride,
cropped back), and a compress/decompress pair that carries the original size.

Channel counts: ``channels`` is CompressAI's ``N`` (width of the transforms),
``latent_channels`` its ``M`` (channels of the coded latent y). They are named
apart from MLLAE-N's byte budget on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from compressai.models import FactorizedPrior, MeanScaleHyperprior, ScaleHyperprior
from compressai.models.base import CompressionModel

from compressml.errors import ConfigError
from compressml.models.padding import crop_to, pad_to_multiple

# architecture name -> (CompressAI class, spatial stride the input must divide by)
ARCHITECTURES: dict[str, tuple[type[CompressionModel], int]] = {
    "factorized": (FactorizedPrior, 16),  # bmshj2018-factorized
    "hyperprior": (ScaleHyperprior, 64),  # bmshj2018-hyperprior
    "mean_scale": (MeanScaleHyperprior, 64),  # mbt2018-mean
}


def build_lae(arch: str, channels: int = 128, latent_channels: int = 192) -> CompressionModel:
    """A fresh CompressAI model for ``arch`` (one of :data:`ARCHITECTURES`)."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown LAE architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    if channels < 1 or latent_channels < 1:
        raise ConfigError(f"LAE channel counts must be positive, got channels={channels}, latent_channels={latent_channels}")
    cls, _ = ARCHITECTURES[arch]
    return cls(N=channels, M=latent_channels)


def latent_count(model: CompressionModel) -> int:
    """How many coded latents (strings) a model produces: y, plus z for the hyperpriors."""
    return 1 if isinstance(model, FactorizedPrior) else 2


def stride_of(model: CompressionModel) -> int:
    """The multiple an input's height and width must be for ``model``."""
    for cls, stride in ARCHITECTURES.values():
        if type(model) is cls:
            return stride
    return 64  # the largest stride of CompressAI's image models; always safe


@dataclass
class LAEPayload:
    """What :func:`compress` produces: the coded strings plus everything needed to decode them."""

    strings: list[list[bytes]]  # one list per latent (y, then z), one bytes per image
    shape: tuple[int, int]  # spatial shape of the top latent (CompressAI's "shape")
    size: tuple[int, int]  # original (H, W) before padding

    @property
    def num_bytes(self) -> int:
        return sum(len(s) for group in self.strings for s in group)


QUANTIZATIONS = ("noise", "ste")


def _ste_round(x: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """round(x - offset) + offset forward, identity backward (straight-through)."""
    if offset is not None:
        return _ste_round(x - offset) + offset
    return x + (torch.round(x) - x).detach()


def _full_precision(x: torch.Tensor):
    """A context with autocast off on ``x``'s device: what runs in it runs in float32."""
    return torch.autocast(x.device.type, enabled=False)


def _forward(model: CompressionModel, x: torch.Tensor, quantization: str) -> dict:
    """CompressAI's forward of the three reference architectures, with two changes.

    1. The entropy models always run in float32. Under mixed precision (``bf16-mixed``,
       ``16-mixed``) CompressAI's forward computes a likelihood as the difference of two
       nearly equal CDF values in half precision, which loses most of its digits. So do the
       first layer of g_a and the last of g_s, which see the pixels: bfloat16 holds [0, 1]
       to about one grey level, and the distortion's gradient (the small residual x_hat - x)
       would drown in that rounding. The inner layers (where the time goes) keep the lower
       precision.
    2. ``quantization="ste"`` (training only): the likelihoods still see additive uniform
       noise, but the decoders get the latents rounded as at coding time (around the
       predicted means, or the bottleneck medians), with a straight-through gradient:
       the "mixed" quantization of Minnen & Singh (2020), which removes the train/test
       mismatch of noise. ``"noise"`` is CompressAI's own behaviour.
    The state dict and the coded format are CompressAI's, unchanged.
    """
    if type(model) not in (FactorizedPrior, ScaleHyperprior, MeanScaleHyperprior):
        return model(x)  # another CompressAI model: its own forward
    ste = quantization == "ste" and model.training
    y = _analysis(model.g_a, x)
    if isinstance(model, FactorizedPrior):
        with _full_precision(y):
            y_hat, y_likelihoods = model.entropy_bottleneck(y)
        if ste:
            y_hat = _ste_round(y, model.entropy_bottleneck._get_medians())
        return {"x_hat": _synthesis(model.g_s, y_hat), "likelihoods": {"y": y_likelihoods}}

    mean_scale = isinstance(model, MeanScaleHyperprior)
    z = model.h_a(y if mean_scale else torch.abs(y)).float()
    with _full_precision(z):
        z_hat, z_likelihoods = model.entropy_bottleneck(z)
    if ste:
        z_hat = _ste_round(z, model.entropy_bottleneck._get_medians())
    params = model.h_s(z_hat).float()
    scales, means = params.chunk(2, 1) if mean_scale else (params, None)
    with _full_precision(y):
        y_hat, y_likelihoods = model.gaussian_conditional(y, scales, means=means)
    if ste:
        y_hat = _ste_round(y, means)
    return {"x_hat": _synthesis(model.g_s, y_hat), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}


def _analysis(g_a: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """g_a(x) as float32, its first layer (on the pixels) in float32 under any autocast."""
    if not isinstance(g_a, torch.nn.Sequential) or not torch.is_autocast_enabled(x.device.type):
        return g_a(x).float()
    with _full_precision(x):
        h = g_a[0](x.float())
    return g_a[1:](h).float()


def _synthesis(g_s: torch.nn.Module, y_hat: torch.Tensor) -> torch.Tensor:
    """g_s(y_hat) as float32, its last layer (to the pixels) in float32 under any autocast."""
    if not isinstance(g_s, torch.nn.Sequential) or not torch.is_autocast_enabled(y_hat.device.type):
        return g_s(y_hat).float()
    h = g_s[:-1](y_hat)
    with _full_precision(h):
        return g_s[-1](h.float())


def forward_padded(model: CompressionModel, x: torch.Tensor, quantization: str = "noise") -> dict:
    """The model's forward (see :func:`_forward`) for any H, W: pads, runs, crops ``x_hat``
    back (likelihoods stay padded)."""
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization {quantization!r}; choose from {', '.join(QUANTIZATIONS)}")
    padded, size = pad_to_multiple(x, stride_of(model))
    out = _forward(model, padded, quantization)
    out["x_hat"] = crop_to(out["x_hat"], size)
    return out


@torch.no_grad()
def compress(model: CompressionModel, x: torch.Tensor) -> LAEPayload:
    """Entropy-code a batch (N, 3, H, W) through the rANS coder. The model must be updated."""
    padded, size = pad_to_multiple(x.float(), stride_of(model))
    with _full_precision(padded):  # the codec is float32 even inside a mixed-precision step
        out = model.compress(padded)
    return LAEPayload(strings=out["strings"], shape=tuple(out["shape"]), size=size)


@torch.no_grad()
def decompress(model: CompressionModel, payload: LAEPayload) -> torch.Tensor:
    """Inverse of :func:`compress`: the reconstruction, cropped to the original size, clamped to [0, 1]."""
    device = next(model.parameters()).device
    with torch.autocast(device.type, enabled=False):
        out = model.decompress(payload.strings, payload.shape)
    return crop_to(out["x_hat"], payload.size).clamp_(0, 1)


def is_updated(model: CompressionModel) -> bool:
    """True when every entropy model has CDF tables, i.e. the model can code."""
    from compressai.entropy_models import EntropyModel

    return all(m._offset.numel() > 0 for m in model.modules() if isinstance(m, EntropyModel))


def load_coding_state(model: CompressionModel, state_dict: dict, strict: bool = True):
    """Load a state dict whose CDF tables may have another size than the model's.

    ``update()`` gives the entropy models' buffers (``_quantized_cdf``, ``_offset``,
    ``_cdf_length``, ``scale_table``) data-dependent shapes. A plain load then fails
    with "size mismatch"; CompressAI's own load only resizes buffers that are still
    empty. Here every entropy-model buffer takes the incoming shape, whatever it was.
    """
    from compressai.entropy_models import EntropyModel

    for module_name, module in model.named_modules():
        if not isinstance(module, EntropyModel):
            continue
        prefix = f"{module_name}." if module_name else ""
        for buf_name, buf in module.named_buffers(recurse=False):
            incoming = state_dict.get(prefix + buf_name)
            if incoming is not None and incoming.shape != buf.shape:
                buf.resize_(incoming.shape)
    return torch.nn.Module.load_state_dict(model, state_dict, strict=strict)
