"""Exportable stand-ins for the parts of compressml's networks that TorchScript and ONNX cannot take
as they are, plus :class:`Graph`, what an export bundle writes of one graph. Pure ``nn.Module``s:
the export bundle (:mod:`compressml.export`) scripts and traces them, and checks each against the
network it stands for.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from compressai.layers import GDN
from torch import nn

from compressml.errors import BundleError


class PlainGDN(nn.Module):
    """GDN / inverse GDN with beta and gamma as constants: same numbers, no custom autograd, exportable."""

    def __init__(self, gdn: GDN):
        super().__init__()
        channels = gdn.beta.numel()
        with torch.no_grad():
            self.register_buffer("beta", gdn.beta_reparam(gdn.beta).detach().clone())
            self.register_buffer("gamma", gdn.gamma_reparam(gdn.gamma).detach().reshape(channels, channels, 1, 1).clone())
        self.inverse = bool(gdn.inverse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = F.conv2d(x**2, self.gamma, self.beta)
        norm = torch.sqrt(norm) if self.inverse else torch.rsqrt(norm)
        return x * norm


def plain_transform(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (e.g. ``net.g_a``) in eval mode with every GDN replaced by :class:`PlainGDN`."""
    module = copy.deepcopy(module)
    _replace_gdn(module)
    return module.eval()


def _replace_gdn(module: nn.Module) -> None:
    for name, child in module.named_children():
        if type(child) is GDN:
            setattr(module, name, PlainGDN(child))
        elif isinstance(child, GDN):
            raise BundleError(f"cannot export {type(child).__name__} layers (only CompressAI's GDN)")
        else:
            _replace_gdn(child)


class MLLAEEncoder(nn.Module):
    """Blocks (N, 3, block, block) in [0, 1] -> the integer code (as float), quantization included."""

    def __init__(self, net):
        super().__init__()
        self.encoder = copy.deepcopy(net.encoder).eval()
        self.binary = net.quantizer.bits == 1 and type(net.quantizer).__name__ == "BinaryNoise"
        self.top = float(net.quantizer.levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        if self.binary:
            return (z > 0).to(z.dtype)
        return torch.round(torch.sigmoid(z) * self.top)


class MLLAEDecoder(nn.Module):
    """The integer code (as float) -> blocks in [0, 1]."""

    def __init__(self, net):
        super().__init__()
        self.decoder = copy.deepcopy(net.decoder).eval()
        self.top = float(net.quantizer.levels - 1)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.decoder(code / self.top) + 0.5, 0.0, 1.0)


def _keys_cubic(u: float, a: float = -0.5) -> float:
    """Keys' cubic convolution kernel (a = -0.5: PIL's, MATLAB's and PyTorch's antialiased bicubic)."""
    u = abs(u)
    if u < 1:
        return ((a + 2) * u - (a + 3)) * u * u + 1
    if u < 2:
        return (((u - 5) * u + 8) * u - 4) * a
    return 0.0


class BicubicUpscale(nn.Module):
    """``F.interpolate(x, scale_factor=s, mode="bicubic", antialias=True)`` for an integer s >= 1, in
    exportable operations (same numbers up to float rounding; the antialiased kernel does not export).

    Upscaling by s with half-pixel centres is a stationary transposed convolution of stride s: output
    pixel ``o = s*j + t - p`` takes input pixel j with weight ``cubic((p - t - 0.5)/s + 0.5)``, so one
    kernel of ``s + 2p`` taps (p = 3s // 2) covers the cubic's support and gives exactly ``s*n`` outputs.
    Like PyTorch's antialiased path, taps that fall outside the image are dropped and the remaining
    weights renormalised: the zero-padded transposed convolution is divided by that of a plane of ones
    (per axis, as the kernel is separable).
    """

    def __init__(self, scale: int, channels: int = 3):
        super().__init__()
        self.scale, self.pad, self.channels = int(scale), 3 * int(scale) // 2, int(channels)
        taps = self.scale + 2 * self.pad
        kernel = torch.tensor([_keys_cubic((self.pad - t - 0.5) / self.scale + 0.5) for t in range(taps)])
        self.register_buffer("kernel_w", kernel.view(1, 1, 1, taps).repeat(self.channels, 1, 1, 1))
        self.register_buffer("kernel_h", kernel.view(1, 1, taps, 1).repeat(self.channels, 1, 1, 1))

    def _along_w(self, x: torch.Tensor, groups: int) -> torch.Tensor:
        return F.conv_transpose2d(x, self.kernel_w[:groups], stride=(1, self.scale), padding=(0, self.pad), groups=groups)

    def _along_h(self, x: torch.Tensor, groups: int) -> torch.Tensor:
        return F.conv_transpose2d(x, self.kernel_h[:groups], stride=(self.scale, 1), padding=(self.pad, 0), groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self._along_h(self._along_w(x, self.channels), self.channels)
        norm_w = self._along_w(torch.ones_like(x[:1, :1, :1, :]), 1)  # (1, 1, 1, s*W)
        norm_h = self._along_h(torch.ones_like(x[:1, :1, :, :1]), 1)  # (1, 1, s*H, 1)
        return up / (norm_h * norm_w)


class REDUpscaler(nn.Module):
    """A RED as one exportable graph: its body, plus :class:`BicubicUpscale` for the global skip."""

    def __init__(self, net):
        super().__init__()
        self.body = copy.deepcopy(net.body).eval()
        self.global_skip = bool(net.global_skip)
        self.skip = BicubicUpscale(net.scale)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        out = self.body(lr)
        if self.global_skip:
            out = out + self.skip(lr)
        return out


@dataclass
class Graph:
    """One graph of a bundle: ``module`` is written as ``<name>.pt`` / ``<name>.onnx`` and must compute
    what ``reference`` (the PyTorch network) computes on ``example``."""

    name: str
    module: nn.Module
    reference: nn.Module
    example: torch.Tensor
    input_name: str
    output_name: str
