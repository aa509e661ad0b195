"""Quantizers for fixed-size codes: features in, integer codes of a known bit width out.

Each quantizer maps encoder features ``z`` to ``levels = 2**bits`` integer values.
While training it returns a differentiable stand-in for the code (noise or a
straight-through estimate); in eval mode, the exact integers. The decoder always
sees ``code / (levels - 1)`` in [0, 1], so training and coding agree.

- :class:`BinaryNoise`: one bit per element. Training adds Gaussian noise to the
  features before the sigmoid and thresholds the result (a stochastic binarization,
  gradient straight through the sigmoid), which pushes the features away from 0; at
  test the code is the deterministic hard 0/1 threshold. The mean sigmoid is a
  sparsity penalty (fewer ones code cheaper).
- :class:`UniformNoise`: ``bits`` per element; additive uniform noise in training,
  rounding at test (the usual proxy for quantization).
- :class:`STEQuantizer`: ``bits`` per element; rounding in the forward pass, identity
  gradient in the backward pass (straight-through).
"""

from __future__ import annotations

import abc

import torch
from torch import nn

from compressml.errors import ConfigError


class Quantizer(nn.Module, abc.ABC):
    bits: int = 1

    @property
    def levels(self) -> int:
        return 2**self.bits

    def scaled(self, z: torch.Tensor) -> torch.Tensor:
        """Features squashed to [0, levels - 1]."""
        return torch.sigmoid(z) * (self.levels - 1)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """The integer code (int64, in [0, levels - 1]) the file stores."""
        return self.scaled(z).round().long()

    def dequantize(self, code: torch.Tensor) -> torch.Tensor:
        """What the decoder sees: the code in [0, 1]."""
        return code.float() / (self.levels - 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """A training stand-in of ``dequantize(quantize(z))``; the exact value in eval mode."""
        if not self.training:
            return self.dequantize(self.quantize(z))
        return self.relaxed(z) / (self.levels - 1)

    @abc.abstractmethod
    def relaxed(self, z: torch.Tensor) -> torch.Tensor:
        """The training relaxation of the code, on the [0, levels - 1] scale."""

    def penalty(self, z: torch.Tensor) -> torch.Tensor:
        """A regulariser on the code (zero unless the quantizer defines one)."""
        return z.new_zeros(())


class BinaryNoise(Quantizer):
    def __init__(self, noise: float = 0.5, sparsity: float = 0.0):
        super().__init__()
        if noise < 0:
            raise ConfigError(f"binary_noise: noise must be >= 0, got {noise}")
        if sparsity < 0:
            raise ConfigError(f"binary_noise: sparsity must be >= 0, got {sparsity}")
        self.bits = 1
        self.noise = noise
        self.sparsity = sparsity

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        return (z > 0).long()

    def relaxed(self, z: torch.Tensor) -> torch.Tensor:
        # forward: the noisy sigmoid thresholded to 0/1, so the decoder only ever sees binary codes
        # (a soft code in training and a hard one at test lets the decoder rely on values it never
        # gets at test); backward: the noisy sigmoid's gradient (straight-through)
        soft = torch.sigmoid(z + self.noise * torch.randn_like(z))
        return soft + ((soft > 0.5).to(soft) - soft).detach()

    def penalty(self, z: torch.Tensor) -> torch.Tensor:
        return self.sparsity * torch.sigmoid(z).mean()


class UniformNoise(Quantizer):
    def __init__(self, bits: int = 2):
        super().__init__()
        self.bits = _check_bits(bits, "uniform_noise")

    def relaxed(self, z: torch.Tensor) -> torch.Tensor:
        return self.scaled(z) + torch.empty_like(z).uniform_(-0.5, 0.5)


class STEQuantizer(Quantizer):
    def __init__(self, bits: int = 2):
        super().__init__()
        self.bits = _check_bits(bits, "ste")

    def relaxed(self, z: torch.Tensor) -> torch.Tensor:
        v = self.scaled(z)
        return v + (v.round() - v).detach()


def _check_bits(bits: int, name: str) -> int:
    if not 1 <= int(bits) <= 8:
        raise ConfigError(f"{name}: bits must be in 1..8, got {bits}")
    return int(bits)


QUANTIZERS = {"binary_noise": BinaryNoise, "uniform_noise": UniformNoise, "ste": STEQuantizer}


def build_quantizer(kind: str, bits: int = 1, noise: float = 0.5, sparsity: float = 0.0) -> Quantizer:
    if kind not in QUANTIZERS:
        raise ConfigError(f"unknown quantizer {kind!r}; choose from {', '.join(QUANTIZERS)}")
    if kind == "binary_noise":
        if int(bits) != 1:
            raise ConfigError(f"binary_noise codes 1 bit per element; got bits={bits} (use uniform_noise or ste)")
        return BinaryNoise(noise=noise, sparsity=sparsity)
    return QUANTIZERS[kind](bits=bits)
