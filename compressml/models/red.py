"""RED: resolution-enhancement decoders (super-resolution x2, x3, x4).

Three architectures from the literature, on RGB in [0, 1]:

- ``espcn`` (Shi et al. 2016): three convolutions in low resolution and a sub-pixel
  (PixelShuffle) upsampling; tanh activations.
- ``fsrcnn`` (Dong et al. 2016): feature extraction, shrinking, ``m`` mapping layers,
  expanding, and a strided transposed convolution; PReLU activations (d=56, s=12, m=4).
- ``edsr`` (Lim et al. 2017), baseline size by default: 16 residual blocks of 64 channels
  without batch norm, a global skip over the body, and PixelShuffle upsampling (two x2
  stages for x4).

``global_skip`` (default on) adds the bicubic upscaling of the input to the output, so every
network learns only the detail bicubic misses; this is what makes a few CPU minutes of
training enough to beat bicubic. Turn it off for the architectures exactly as published.

The one resampling kernel of the project lives here: :func:`downscale` (antialiased bicubic,
the kernel of PIL and of MATLAB's ``imresize``: Keys a = -0.5) makes training pairs and
evaluation inputs, and :func:`bicubic_upscale` is the baseline every report compares with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compressml.errors import ConfigError

# the hyper-parameters that build the network (the rest are training settings)
NET_KEYS = ("arch", "scale", "channels", "blocks", "global_skip")

SCALES = (2, 3, 4)
ARCHITECTURES = ("espcn", "fsrcnn", "edsr")
DIV2K_MEAN = (0.4488, 0.4371, 0.4040)  # EDSR's input normalisation


def check_scale(scale: int) -> int:
    if scale not in SCALES:
        raise ConfigError(f"model.scale must be one of {', '.join(map(str, SCALES))}, got {scale}")
    return int(scale)


def mod_crop(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop (..., H, W) at the bottom and right to multiples of ``scale`` (as BasicSR's ``mod_crop``)."""
    h, w = x.shape[-2:]
    return x[..., : h - h % scale, : w - w % scale]


def downscale(hr: torch.Tensor, scale: int, quantize: bool = True) -> torch.Tensor:
    """(N, 3, H, W) with H, W multiples of ``scale`` -> antialiased bicubic (N, 3, H/s, W/s), on the
    8-bit grid when ``quantize`` (as a low-resolution image file would be)."""
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"image size {h}x{w} is not a multiple of the scale {scale} (use mod_crop)")
    lr = F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)
    lr = lr.clamp(0, 1)
    return (lr * 255).round() / 255 if quantize else lr


def make_pair(hr: torch.Tensor, scale: int, min_lr: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) -> (low-res, high-res cropped to a multiple of ``scale``): a training or evaluation
    pair. Raises ValueError when the low-resolution image would be smaller than ``min_lr`` pixels a side."""
    if min(hr.shape[-2:]) < scale * min_lr:
        raise ValueError(f"{hr.shape[-1]}x{hr.shape[-2]} pixels is too small for x{scale} super-resolution")
    hr = mod_crop(hr, scale)
    return downscale(hr, scale), hr


def bicubic_upscale(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The baseline: (N, 3, h, w) -> bicubic (N, 3, h*s, w*s) with the same kernel as :func:`downscale`."""
    # scale_factor (not size): the sampling positions then depend on the scale alone, so tiles agree
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", antialias=True, align_corners=False)


class ESPCN(nn.Module):
    def __init__(self, scale: int, channels: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, channels, 5, padding=2),
            nn.Tanh(),
            nn.Conv2d(channels, channels // 2, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(channels // 2, 3 * scale * scale, 3, padding=1),
            nn.PixelShuffle(scale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class FSRCNN(nn.Module):
    def __init__(self, scale: int, d: int = 56, s: int = 12, m: int = 4):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, d, 5, padding=2), nn.PReLU(d), nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            layers += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        layers += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.body = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(d, 3, 9, stride=scale, padding=4, output_padding=scale - 1)
        nn.init.normal_(self.deconv.weight, std=1e-3)
        nn.init.zeros_(self.deconv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.body(x))


class _EDSRBlock(nn.Module):
    def __init__(self, channels: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 3, padding=1)
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class EDSR(nn.Module):
    """EDSR; ``add_mean=False`` leaves out the final mean shift (for a body under a global skip)."""

    def __init__(self, scale: int, channels: int = 64, blocks: int = 16, res_scale: float = 1.0, add_mean: bool = True):
        super().__init__()
        self.add_mean = add_mean
        self.register_buffer("mean", torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1), persistent=False)
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(*[_EDSRBlock(channels, res_scale) for _ in range(blocks)], nn.Conv2d(channels, channels, 3, padding=1))
        up: list[nn.Module] = []
        for factor in (2, 2) if scale == 4 else (scale,):
            up += [nn.Conv2d(channels, channels * factor * factor, 3, padding=1), nn.PixelShuffle(factor)]
        self.tail = nn.Sequential(*up, nn.Conv2d(channels, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x - self.mean)
        out = self.tail(h + self.body(h))
        return out + self.mean if self.add_mean else out


class RED(nn.Module):
    """A super-resolution network: (N, 3, h, w) in [0, 1] -> (N, 3, h*scale, w*scale).

    ``channels`` and ``blocks`` default to each architecture's published size (ESPCN 64,
    FSRCNN d=56, EDSR baseline 64 channels x 16 blocks; ``blocks`` is FSRCNN's ``m``).
    """

    def __init__(
        self, arch: str = "edsr", scale: int = 2, channels: int | None = None, blocks: int | None = None, global_skip: bool = True
    ):
        super().__init__()
        self.scale = check_scale(scale)
        if arch not in ARCHITECTURES:
            raise ConfigError(f"model.arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
        if (channels is not None and channels < 2) or (blocks is not None and blocks < 0):
            raise ConfigError(f"model.channels must be >= 2 and model.blocks >= 0, got {channels} and {blocks}")
        self.arch = arch
        self.global_skip = bool(global_skip)
        if arch == "espcn":
            self.body = ESPCN(self.scale, channels or 64)
        elif arch == "fsrcnn":
            self.body = FSRCNN(self.scale, d=channels or 56, m=4 if blocks is None else blocks)
        else:
            self.body = EDSR(self.scale, channels=channels or 64, blocks=16 if blocks is None else blocks, add_mean=not self.global_skip)
        if self.global_skip:  # start as bicubic: the body's last layer adds nothing at first
            last = [m for m in self.body.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))][-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        out = self.body(lr)
        return out + bicubic_upscale(lr, self.scale) if self.global_skip else out

    @property
    def receptive_radius(self) -> int:
        """An upper bound on the low-resolution pixels of context an output pixel depends on, for tiling
        margins: every convolution's half-width (those at high resolution counted as if at low), plus
        the bicubic kernel's support."""
        convs = [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        return sum(m.kernel_size[0] // 2 for m in convs) + 2
