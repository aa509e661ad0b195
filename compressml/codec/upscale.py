"""Super-resolution with a trained RED: tensors, files, and the ``compressml upscale`` job.

Images of any size are upscaled in overlapping tiles: each low-resolution tile is
computed with a margin at least as wide as the network's receptive field
(:attr:`compressml.models.red.RED.receptive_radius`) and only its interior is kept, so
the result equals the untiled one up to float rounding (no seams) while memory stays
that of one tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from compressml.codec.tiling import TiledTransform
from compressml.errors import CheckpointError, ConfigError

DEFAULT_TILE = 256  # low-resolution pixels per tile side
MIN_TILE = 16
PARALLEL_TILE = 128  # low-resolution pixels per tile side when the tiles are shared among threads


@dataclass
class Upscaler:
    """A RED ready to run, from a Lightning checkpoint or an export bundle."""

    net: torch.nn.Module
    source: str
    fingerprint: bytes

    @property
    def scale(self) -> int:
        return self.net.scale

    @classmethod
    def load(cls, path: str | Path) -> Upscaler:
        """From an export bundle (never unpickles) or a Lightning checkpoint of a RED."""
        from compressml.codec.files import load_net

        net, family, fingerprint, _ = load_net(path)
        if family != "red":
            raise CheckpointError(f"{path}: a {family!r} model, not a RED (super-resolution) one")
        return cls(net=net, source=str(path), fingerprint=fingerprint)

    def __call__(self, lr: torch.Tensor, tile: int | None = DEFAULT_TILE) -> torch.Tensor:
        return upscale_tensor(self.net, lr, tile)


def upscale_tensor(net: torch.nn.Module, lr: torch.Tensor, tile: int | None = DEFAULT_TILE) -> torch.Tensor:
    """(N, 3, h, w) in [0, 1] -> (N, 3, h*s, w*s), clamped to [0, 1]; in tiles of ``tile`` low-res
    pixels (with a margin of the receptive field) when the image is larger, untiled if ``tile`` is None."""
    if tile is not None and tile < MIN_TILE:
        raise ConfigError(f"tile must be >= {MIN_TILE} low-resolution pixels (or null: untiled), got {tile}")
    device = next(net.parameters()).device
    lr = lr.to(device)
    if tile is None:
        run = net
    else:  # tiles of at most PARALLEL_TILE, shared among the threads: the same pixels whatever their count
        run = TiledTransform(net, factor=net.scale, down=False, tile=min(tile, PARALLEL_TILE), margin=net.receptive_radius, parallel=True)
    with torch.no_grad():
        return run(lr).clamp(0, 1)


def upscale_image(model: Upscaler, image, tile: int | None = DEFAULT_TILE) -> Image.Image:
    """Upscale a :class:`~compressml.codec.lae.SourceImage`. Grey stays grey, alpha is upscaled
    bicubically, the result is 8-bit."""
    from compressml.codec.files import SourceImage, to_pil

    sr = upscale_tensor(model.net, image.rgb[None], tile)[0].cpu()
    alpha = None
    if image.alpha is not None:
        a = Image.fromarray(image.alpha if image.alpha.dtype == np.uint8 else (image.alpha >> 8).astype(np.uint8))
        alpha = np.asarray(a.resize((sr.shape[-1], sr.shape[-2]), Image.Resampling.BICUBIC))
    return to_pil(SourceImage(rgb=sr, channels=image.channels, bit_depth=8, alpha=alpha))


def upscale_file(model: Upscaler, src: Path, dst: Path, force: bool = False, tile: int | None = DEFAULT_TILE) -> dict:
    """Upscale one image file to a PNG (see :func:`upscale_image`)."""
    from compressml.codec.files import atomic_write, read_source

    image = read_source(src)
    pil = upscale_image(model, image, tile)
    atomic_write(dst, lambda tmp: pil.save(tmp, format="PNG"), force)
    h, w = image.rgb.shape[-2:]
    return {"input": str(src), "output": str(dst), "width": w * model.scale, "height": h * model.scale}
