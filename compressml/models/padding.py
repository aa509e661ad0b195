"""Any image size through fixed-stride networks: pad to a multiple, crop back."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (N, C, H, W) at the bottom/right by repeating edge pixels; returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`."""
    return x[..., : size[0], : size[1]]


def to_blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """(N, C, H, W) -> (N * rows * cols, C, block, block), edge-padded; returns (blocks, (rows, cols), (H, W))."""
    padded, size = pad_to_multiple(x, block)
    n, c, h, w = padded.shape
    rows, cols = h // block, w // block
    blocks = padded.reshape(n, c, rows, block, cols, block).permute(0, 2, 4, 1, 3, 5)
    return blocks.reshape(n * rows * cols, c, block, block), (rows, cols), size


def from_blocks(blocks: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`to_blocks`: blocks in row-major order back to (N, C, H, W), cropped to ``size``."""
    rows, cols = grid
    nb, c, bh, bw = blocks.shape
    n = nb // (rows * cols)
    x = blocks.reshape(n, rows, cols, c, bh, bw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, rows * bh, cols * bw)
    return crop_to(x, size)
