"""Bounded memory for large images: run a model's analysis/synthesis transforms in overlapping tiles.

The transforms are convolutional with a finite receptive field, so computing each
tile with a margin wider than that field and keeping only its interior gives the
same latent (and the same reconstruction) as the whole image at once, up to float
rounding: no seams, while the peak memory is that of one tile. Entropy coding
still sees the whole latent, so the bitstream is one piece.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def tile_windows(lh: int, lw: int, tile: int, margin: int) -> Iterator[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """The tiles of an ``lh`` x ``lw`` latent, row by row: ((a0, a1, b0, b1), (e0, e1, g0, g1)), the
    tile's rows a0:a1 and columns b0:b1, and its window with ``margin`` of context (e0:e1, g0:g1)."""
    for a0 in range(0, lh, tile):
        for b0 in range(0, lw, tile):
            a1, b1 = min(a0 + tile, lh), min(b0 + tile, lw)
            yield (a0, a1, b0, b1), (max(a0 - margin, 0), min(a1 + margin, lh), max(b0 - margin, 0), min(b1 + margin, lw))


class TiledTransform(nn.Module):
    """Apply ``inner`` tile by tile. ``factor`` is input pixels per latent pixel: 16 for an
    analysis transform (``down=True``) or a synthesis transform (``down=False``).

    Tiles are ``tile`` latent pixels a side, each computed with ``margin`` latent
    pixels of context on every side.
    """

    def __init__(self, inner: nn.Module, factor: int, down: bool, tile: int = 32, margin: int = 4):
        super().__init__()
        self.inner, self.factor, self.down, self.tile, self.margin = inner, factor, down, tile, margin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factor
        lh, lw = (x.shape[-2] // f, x.shape[-1] // f) if self.down else x.shape[-2:]
        out = None
        for (a0, a1, b0, b1), (e0, e1, g0, g1) in tile_windows(lh, lw, self.tile, self.margin):
            if self.down:
                piece = self.inner(x[..., e0 * f : e1 * f, g0 * f : g1 * f])
                piece = piece[..., a0 - e0 : a1 - e0, b0 - g0 : b1 - g0]
                dst = (slice(a0, a1), slice(b0, b1))
                full = (lh, lw)
            else:
                piece = self.inner(x[..., e0:e1, g0:g1])
                piece = piece[..., (a0 - e0) * f : (a1 - e0) * f, (b0 - g0) * f : (b1 - g0) * f]
                dst = (slice(a0 * f, a1 * f), slice(b0 * f, b1 * f))
                full = (lh * f, lw * f)
            if out is None:
                out = piece.new_empty(*piece.shape[:-2], *full)
            out[..., dst[0], dst[1]] = piece
        return out


@contextmanager
def tiled_transforms(model: nn.Module, tile: int = 32, margin: int = 4, factor: int = 16) -> Iterator[nn.Module]:
    """Temporarily wrap ``model.g_a`` and ``model.g_s`` (CompressAI's names) in :class:`TiledTransform`."""
    g_a, g_s = model.g_a, model.g_s
    try:
        model.g_a = TiledTransform(g_a, factor, down=True, tile=tile, margin=margin)
        model.g_s = TiledTransform(g_s, factor, down=False, tile=tile, margin=margin)
        yield model
    finally:
        model.g_a, model.g_s = g_a, g_s
