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
the reconstruction and the pixels already decoded: the image is coded in five phases, coarse to
fine over the sub-lattices of a 4x4 and a 2x2 grid, each seeing everything coded before it, so
only 1/16 of the pixels rely on the reconstruction alone; within a pixel, G's mean
follows R's residual and B's follows both (as in PixelCNN++). The residual between the 8-bit
image and that prediction is modelled with a discretised logistic, so its cost in bits is known
while training and it is entropy-coded exactly (see :mod:`compressml.codec.mllae`).
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

# the hyper-parameters that build the network (the rest are training settings)
NET_KEYS = (
    "bytes",
    "block",
    "quantizer",
    "bits",
    "noise",
    "sparsity",
    "channels",
    "stride",
    "max_latent_channels",
    "lossless",
    "residual_channels",
)


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


# Lossless coding order: five phases over the sub-lattices of a 4x4 and then a 2x2 grid, coarse to
# fine. Only the first (1/16 of the pixels) is predicted from the reconstruction alone; every later
# pixel also sees decoded neighbours on all sides, two pixels away at first, then one. Within a
# phase R, G and B are coded in turn, each mean shifted by the earlier channels' residuals.
PHASES = (
    ((4, 0, 0),),
    ((4, 2, 2),),
    ((4, 0, 2), (4, 2, 0)),
    ((2, 1, 1),),
    ((2, 0, 1), (2, 1, 0)),
)  # per phase, the (period, row, column) lattices it codes


def phase_masks(shape: tuple[int, int], device=None) -> list[torch.Tensor]:
    """Per phase, a (1, 1, H, W) bool mask of the pixels it codes (they partition the image)."""
    masks = []
    for lattices in PHASES:
        m = torch.zeros(1, 1, *shape, dtype=torch.bool, device=device)
        for period, row, col in lattices:
            m[..., row::period, col::period] = True
        masks.append(m)
    return masks


def _neighbour_kernel(radius: int = 2) -> torch.Tensor:
    """Inverse-square-distance weights over a (2r+1)² window, 0 at the centre."""
    d = torch.arange(-radius, radius + 1, dtype=torch.float32)
    dist2 = d[:, None] ** 2 + d[None, :] ** 2
    return torch.where(dist2 > 0, 1 / dist2.clamp_min(1), torch.zeros(())).view(1, 1, 2 * radius + 1, 2 * radius + 1)


def interpolate_known(values: torch.Tensor, mask: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Each pixel's distance-weighted mean of the decoded values around it, or ``fallback`` where none
    is near: a fixed interpolation the residual network starts from and corrects, so that it need not
    learn to interpolate before it can learn anything finer."""
    n, c, h, w = values.shape
    k = _neighbour_kernel().to(values)
    total = F.conv2d((values * mask).reshape(n * c, 1, h, w), k, padding=k.shape[-1] // 2).reshape(n, c, h, w)
    weight = F.conv2d(mask, k, padding=k.shape[-1] // 2)
    # the smallest real weight is 1/8: the threshold ignores float dust (e.g. from FFT convolutions)
    return torch.where(weight > 1e-3, total / weight.clamp_min(1e-3), fallback)


def context_input(x_hat: torch.Tensor, known: torch.Tensor, known_mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The residual network's input, (N, 11, H, W): the reconstruction, the decoded pixels as offsets
    from it (0 where unknown), the interpolation of the decoded pixels (the reconstruction where
    none is near; :func:`interpolate_known`), the mask of what is known and the mask of what this
    phase codes."""
    shape = (x_hat.shape[0], 1, *x_hat.shape[-2:])
    mask = known_mask.to(x_hat.dtype).expand(shape)
    base = interpolate_known(known, mask, x_hat)
    return torch.cat([x_hat, (known - x_hat) * mask, base, mask, target.to(x_hat.dtype).expand(shape)], 1)


CONTEXT_CHANNELS = 11
BASE = slice(6, 9)  # where context_input puts the interpolation the mean starts from


class ResidualModel(nn.Module):
    """Predicts, per pixel, a mean, a log-scale and the channel couplings of a discretised logistic
    (lossless mode), from the reconstruction and the pixels already decoded (see :data:`PHASES`)."""

    def __init__(self, channels: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            _conv(CONTEXT_CHANNELS, channels),
            nn.LeakyReLU(0.2),
            ResBlock(channels),
            nn.LeakyReLU(0.2),
            ResBlock(channels),
            nn.LeakyReLU(0.2),
            _conv(channels, RESIDUAL_OUTPUTS),
        )
        # start from "the reconstruction is the mean, the scale is a few levels": a zero output would
        # mean scale 1 and cost ~28 bits per sub-pixel at first, and training would start far off
        out = self.net[-1]
        with torch.no_grad():
            out.weight.mul_(0.1)
            out.bias.zero_()
            out.bias[3:6] = math.log(RESIDUAL_INIT_SCALE)

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: every sub-pixel's (mean, log-scale) in 8-bit units, one pass per phase, the true
        image (``x`` in 0..1, on the 8-bit grid) giving the context."""
        means, scales = torch.zeros_like(x_hat), torch.zeros_like(x_hat)
        known = torch.zeros(1, 1, *x_hat.shape[-2:], dtype=torch.bool, device=x_hat.device)
        x255 = x * 255
        for m in phase_masks(x_hat.shape[-2:], x_hat.device):
            context = context_input(x_hat, x, known, m)
            mu, log_scale, coupling = split_residual_params(context, self.net(context))
            mean = torch.cat([channel_mean(mu, coupling, x255, c) for c in range(3)], 1)
            means = torch.where(m, mean, means)
            scales = torch.where(m, log_scale, scales)
            known = known | m
        return means, scales


RESIDUAL_OUTPUTS = 9  # 3 mean corrections, 3 log-scales, 3 channel couplings (G|R, B|R, B|G)


def split_residual_params(context: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The residual network's input and outputs -> (means in 8-bit units, clamped log-scales, couplings
    in (-1, 1)). A mean is the interpolation of the decoded pixels (the reconstruction where none is
    near) plus the network's correction, in the input's units (0..1)."""
    mean = (context[:, BASE] + raw[:, :3]) * 255
    log_scale = raw[:, 3:6].clamp(math.log(LOSSLESS_MIN_SCALE), math.log(LOSSLESS_MAX_SCALE))
    return mean, log_scale, torch.tanh(raw[:, 6:9])


def channel_mean(mu: torch.Tensor, coupling: torch.Tensor, x255: torch.Tensor, c: int) -> torch.Tensor:
    """Channel ``c``'s mean, (N, 1, H, W): its own prediction shifted by the residuals of the channels
    coded before it at the same pixel (PixelCNN++'s linear autoregression over R, G, B). Only channels
    ``< c`` of ``x255`` are read, so a decoder can call it as soon as those are decoded."""
    if c == 0:
        return mu[:, :1]
    r = x255[:, :1] - mu[:, :1]
    if c == 1:
        return mu[:, 1:2] + coupling[:, :1] * r
    return mu[:, 2:3] + coupling[:, 1:2] * r + coupling[:, 2:3] * (x255[:, 1:2] - mu[:, 1:2])


LOSSLESS_MIN_SCALE, LOSSLESS_MAX_SCALE = 0.1, 64.0
RESIDUAL_INIT_SCALE = 8.0
CHUNK_BLOCKS = 64  # blocks per encoder call when coding (bounds memory on large images)
DECODE_CHUNK = 4  # blocks per decoder call, always (see MLLAE.decode)


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
        # Under DDP, counts wait here (not a buffer: DDP would overwrite it with rank 0's) until
        # fold_counts() sums them over the ranks; outside DDP they go straight into code_counts.
        self.pending_counts: torch.Tensor | None = None

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
        counts = torch.bincount(flat, minlength=self.code_counts.numel()).view_as(self.code_counts).to(self.code_counts)
        from compressml.ranks import is_distributed

        if not is_distributed():
            self.code_counts += counts
        elif self.pending_counts is None:
            self.pending_counts = counts
        else:
            self.pending_counts += counts

    @torch.no_grad()
    def fold_counts(self) -> None:
        """Add the counts every rank made since the last call to ``code_counts``, identically on
        all ranks (a collective under DDP: every rank calls it; nothing to do outside DDP)."""
        from compressml.ranks import is_distributed, sum_over_ranks

        if not is_distributed():
            return
        pending = self.pending_counts if self.pending_counts is not None else torch.zeros_like(self.code_counts)
        self.code_counts += sum_over_ranks(pending).to(self.code_counts)
        self.pending_counts = None

    @torch.no_grad()
    def encode(self, x: torch.Tensor, chunk: int = CHUNK_BLOCKS) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """(N, 3, H, W) -> integer codes (blocks, C, side, side), the block grid, the original size.

        Blocks go through the encoder ``chunk`` at a time, so memory is bounded on large images.
        """
        blocks, grid, size = to_blocks(x, self.geometry.block)
        codes = [self.quantizer.quantize(self.encoder(part)) for part in blocks.split(chunk)]
        return torch.cat(codes), grid, size

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], chunk: int = DECODE_CHUNK) -> torch.Tensor:
        """Integer codes -> the reconstruction in [0, 1], cropped to ``size``.

        Blocks go through the decoder ``chunk`` at a time, the last group filled up with zero codes:
        every block is decoded in a batch of the same size, because a library may pick another kernel
        (another rounding) for another batch size. A block's pixels therefore do not depend on how
        many blocks are decoded with it, and decoding a region gives the pixels of a whole decode."""
        parts = []
        for part in codes.split(chunk):
            n = part.shape[0]
            if n < chunk:
                part = torch.cat([part, part.new_zeros((chunk - n, *part.shape[1:]))])
            parts.append(self.decode_blocks(self.quantizer.dequantize(part))[:n])
        return from_blocks(torch.cat(parts), grid, size).clamp_(0, 1)
