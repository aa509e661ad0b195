"""MLLAE / MLLAE-N: autoencoders with a fixed-size code of at most N bytes per block.

An image is cut into ``block`` x ``block`` tiles (edge-padded); each tile goes through
the encoder to a latent of ``latent_channels`` x (block / stride)² elements, which a
quantizer turns into integers of ``bits`` bits. That code is the compressed block.

**The size rule.** With ``P = (block / stride)²`` latent positions per block,
``latent_channels = floor(8 N / (P * bits))``, so ``latent_channels * P * bits <= 8 N``.
The stride starts at ``stride`` (default 8) and doubles while that leaves less than
one channel (a very small N), and halves while it gives more than
``max_latent_channels`` (a very large N). :func:`derive_geometry` applies the rule.

**Lossless mode.** A small network predicts a per-sub-pixel integer mean and a scale from
the reconstruction and the sub-pixels already decoded: the image is coded in six steps, two
checkerboard phases times three channels, each seeing everything coded before it. The
residual between the 8-bit image and that prediction is modelled with a discretised
logistic, so its cost in bits is known while training and it is entropy-coded exactly
(see :mod:`compressml.codec.mllae`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compressml.errors import ConfigError
from compressml.models.padding import from_blocks, to_blocks
from compressml.models.quantizers import build_quantizer


@dataclass(frozen=True)
class MLLAEGeometry:
    block: int  # pixels per block side
    bytes: int  # N: the code budget per block
    bits: int  # bits per code element
    stride: int  # encoder downsampling
    latent_channels: int

    @property
    def side(self) -> int:
        """Latent positions per block side."""
        return self.block // self.stride

    @property
    def elements(self) -> int:
        """Code elements per block."""
        return self.latent_channels * self.side**2

    @property
    def code_bytes(self) -> int:
        """Bytes of one packed block code (always <= ``bytes``)."""
        return math.ceil(self.elements * self.bits / 8)

    def as_dict(self) -> dict:
        return {**asdict(self), "code_bytes": self.code_bytes}


def derive_geometry(bytes: int, block: int = 64, bits: int = 1, stride: int = 8, max_latent_channels: int = 512) -> MLLAEGeometry:
    """The architecture a byte budget N allows (the rule in this module's docstring)."""
    if block < 2 or block & (block - 1):
        raise ConfigError(f"model.block must be a power of two >= 2, got {block}")
    if stride < 1 or stride & (stride - 1):
        raise ConfigError(f"model.stride must be a power of two, got {stride}")
    raw = 3 * block * block
    if not 1 <= bytes < raw:
        raise ConfigError(f"model.bytes must be in 1..{raw - 1} for {block}x{block} RGB blocks ({raw} bytes raw), got {bytes}")
    s = min(stride, block)

    def channels(s: int) -> int:
        return (8 * bytes) // ((block // s) ** 2 * bits)

    while channels(s) < 1 and s < block:
        s *= 2
    while channels(s) > max_latent_channels and s > 1:
        s //= 2
    c = channels(s)
    if c < 1:
        raise ConfigError(f"model.bytes={bytes} cannot hold even one {bits}-bit code element per block")
    return MLLAEGeometry(block=block, bytes=bytes, bits=bits, stride=s, latent_channels=min(c, max_latent_channels))


def _conv(c_in: int, c_out: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels), nn.LeakyReLU(0.2), _conv(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _stages(stride: int) -> int:
    return int(round(math.log2(stride)))


# Lossless coding order: two checkerboard phases, and within each the three channels in turn.
# Each step is predicted from the reconstruction plus every sub-pixel decoded in earlier steps.
CONTEXT_STEPS = tuple((phase, channel) for phase in (0, 1) for channel in range(3))


def step_masks(shape: tuple[int, int], device=None) -> list[torch.Tensor]:
    """Per step, a (3, H, W) bool mask of the sub-pixels it codes (they partition the image)."""
    h, w = shape
    yy, xx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    checker = (yy + xx) % 2
    masks = []
    for phase, channel in CONTEXT_STEPS:
        m = torch.zeros(3, h, w, dtype=torch.bool, device=device)
        m[channel] = checker == phase
        masks.append(m)
    return masks


def context_input(x_hat: torch.Tensor, known: torch.Tensor, known_mask: torch.Tensor) -> torch.Tensor:
    """The residual network's input: reconstruction, decoded sub-pixels as offsets from it (0 where
    unknown), and the mask of what is known: (N, 9, H, W)."""
    mask = known_mask.to(x_hat.dtype).expand_as(x_hat)
    return torch.cat([x_hat, (known - x_hat) * mask, mask], 1)


class ResidualModel(nn.Module):
    """Predicts a mean correction and a log-scale per sub-pixel (lossless mode), from the reconstruction
    and the sub-pixels already decoded (see :data:`CONTEXT_STEPS`)."""

    def __init__(self, channels: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            _conv(9, channels), nn.LeakyReLU(0.2), ResBlock(channels), nn.LeakyReLU(0.2), ResBlock(channels),
            nn.LeakyReLU(0.2), _conv(channels, 6),
        )

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: every step's (mean, log-scale) in one pass per step, the true image giving the context."""
        means, scales = torch.zeros_like(x_hat), torch.zeros_like(x_hat)
        known = torch.zeros(x_hat.shape[0], 3, *x_hat.shape[-2:], dtype=torch.bool, device=x_hat.device)
        for m in step_masks(x_hat.shape[-2:], x_hat.device):
            mean, log_scale = split_residual_params(x_hat, self.net(context_input(x_hat, x, known)))
            means = torch.where(m, mean, means)
            scales = torch.where(m, log_scale, scales)
            known = known | m
        return means, scales


def split_residual_params(x_hat: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual network's 6 channels -> (mean in 8-bit units, clamped log-scale)."""
    mean = x_hat * 255 + raw[:, :3]
    return mean, raw[:, 3:].clamp(math.log(LOSSLESS_MIN_SCALE), math.log(LOSSLESS_MAX_SCALE))


LOSSLESS_MIN_SCALE, LOSSLESS_MAX_SCALE = 0.1, 64.0
CHUNK_BLOCKS = 64  # blocks per encoder/decoder call when coding (bounds memory on large images)


def discretized_logistic_bits(x255: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Bits to code integers ``x255`` in [0, 255] under a logistic(mean, scale) discretised to integers.

    The end bins take the tails (x <= 0, x >= 255), as in PixelCNN++. ``mean`` is
    clamped to [0, 255] and rounded straight-through, because the coder centres the
    residual on that integer.
    """
    mean = mean.clamp(0, 255)
    centre = mean + (mean.round() - mean).detach()
    inv = torch.exp(-log_scale)
    upper = torch.where(x255 >= 255, torch.full_like(x255, float("inf")), (x255 + 0.5 - centre) * inv)
    lower = torch.where(x255 <= 0, torch.full_like(x255, float("-inf")), (x255 - 0.5 - centre) * inv)
    p = torch.sigmoid(upper) - torch.sigmoid(lower)
    return -torch.log2(p.clamp_min(1e-9))


class MLLAE(nn.Module):
    """The network of one MLLAE-N model: encoder, quantizer, decoder (and the residual model if lossless)."""

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
    ):
        super().__init__()
        if channels < 1:
            raise ConfigError(f"model.channels must be >= 1, got {channels}")
        self.quantizer = build_quantizer(quantizer, bits=bits, noise=noise, sparsity=sparsity)
        self.geometry = derive_geometry(bytes, block, self.quantizer.bits, stride, max_latent_channels)
        g = self.geometry
        down: list[nn.Module] = [_conv(3, channels, 5, stride=2 if _stages(g.stride) else 1), nn.LeakyReLU(0.2)]
        for _ in range(_stages(g.stride) - 1):
            down += [_conv(channels, channels, 5, stride=2), nn.LeakyReLU(0.2)]
        self.encoder = nn.Sequential(*down, ResBlock(channels), _conv(channels, g.latent_channels))
        up: list[nn.Module] = [_conv(g.latent_channels, channels), nn.LeakyReLU(0.2), ResBlock(channels)]
        for _ in range(_stages(g.stride)):
            up += [_conv(channels, channels * 4), nn.PixelShuffle(2), nn.LeakyReLU(0.2)]
        self.decoder = nn.Sequential(*up, ResBlock(channels), _conv(channels, 3))
        self.residual = ResidualModel(residual_channels) if lossless else None
        # how often each code value occurs per latent channel in training: the empirical prior of the rANS stage
        self.register_buffer("code_counts", torch.zeros(g.latent_channels, self.quantizer.levels, dtype=torch.float64))

    @property
    def lossless(self) -> bool:
        return self.residual is not None

    def decode_blocks(self, code_values: torch.Tensor) -> torch.Tensor:
        """Decoder input in [0, 1] -> blocks (the reconstruction is centred on 0.5)."""
        return self.decoder(code_values) + 0.5

    def forward(self, x: torch.Tensor) -> dict:
        """Training/validation pass: ``x_hat`` (same size as ``x``), the code values, the penalty."""
        blocks, grid, size = to_blocks(x, self.geometry.block)
        z = self.encoder(blocks)
        code = self.quantizer(z)
        if self.training:
            self.count_codes(self.quantizer.quantize(z.detach()))
        x_hat = from_blocks(self.decode_blocks(code), grid, size)
        out = {"x_hat": x_hat, "code": code, "penalty": self.quantizer.penalty(z)}
        if self.residual is not None:
            x255 = (x * 255).round()
            mean, log_scale = self.residual(x_hat, x255 / 255)
            out["residual_bits"] = discretized_logistic_bits(x255, mean, log_scale)
        return out

    @torch.no_grad()
    def count_codes(self, codes: torch.Tensor) -> None:
        """Add integer codes (blocks, C, side, side) to the per-channel value counts."""
        levels = self.quantizer.levels
        channel = torch.arange(codes.shape[1], device=codes.device).view(1, -1, 1, 1)
        flat = (channel * levels + codes).flatten()
        self.code_counts += torch.bincount(flat, minlength=self.code_counts.numel()).view_as(self.code_counts).to(self.code_counts)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, chunk: int = CHUNK_BLOCKS) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """(N, 3, H, W) -> integer codes (blocks, C, side, side), the block grid, the original size.

        Blocks go through the encoder ``chunk`` at a time, so memory is bounded on large images.
        """
        blocks, grid, size = to_blocks(x, self.geometry.block)
        codes = [self.quantizer.quantize(self.encoder(part)) for part in blocks.split(chunk)]
        return torch.cat(codes), grid, size

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], chunk: int = CHUNK_BLOCKS) -> torch.Tensor:
        """Integer codes -> the reconstruction in [0, 1], cropped to ``size``."""
        parts = [self.decode_blocks(self.quantizer.dequantize(part)) for part in codes.split(chunk)]
        return from_blocks(torch.cat(parts), grid, size).clamp_(0, 1)
