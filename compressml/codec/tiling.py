"""Bounded memory for large images: run a model's analysis/synthesis transforms in overlapping tiles.

The transforms are convolutional with a finite receptive field, so computing each
tile with a margin wider than that field and keeping only its interior gives the
same latent (and the same reconstruction) as the whole image at once, up to float
rounding: no seams, while the peak memory is that of one tile. Entropy coding
still sees the whole latent, so the bitstream is one piece.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
    pixels of context on every side. ``parallel``: on the CPU, the tiles are shared among a pool of
    the usual number of threads, each tile computed whole by one thread with single-threaded
    kernels: the result depends on the tile size, never on the thread count.
    """

    def __init__(self, inner: nn.Module, factor: int, down: bool, tile: int = 32, margin: int = 4, parallel: bool = False):
        super().__init__()
        self.inner, self.factor, self.down, self.tile, self.margin = inner, factor, down, tile, margin
        self.parallel = parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factor
        lh, lw = (x.shape[-2] // f, x.shape[-1] // f) if self.down else x.shape[-2:]
        out = []
        lock = threading.Lock()
        grad = torch.is_grad_enabled()  # thread-local: pool workers take the caller's

        def run(windows) -> None:
            (a0, a1, b0, b1), (e0, e1, g0, g1) = windows
            with torch.set_grad_enabled(grad):
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
                with lock:
                    if not out:
                        out.append(piece.new_empty(*piece.shape[:-2], *full))
                out[0][..., dst[0], dst[1]] = piece

        windows = list(tile_windows(lh, lw, self.tile, self.margin))
        if self.parallel and x.device.type == "cpu":
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:  # fresh worker threads take the single-thread setting when they start
                with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="compressml-tile") as pool:
                    list(pool.map(run, windows))
            finally:
                torch.set_num_threads(threads)
        else:
            for w in windows:
                run(w)
        return out[0]


@contextmanager
def tiled_transforms(model: nn.Module, tile: int = 32, margin: int = 4, factor: int = 16) -> Iterator[nn.Module]:
    """Temporarily wrap ``model.g_a`` and ``model.g_s`` (CompressAI's names) in :class:`TiledTransform`
    (their ``inner`` transform where they say ``tiles_inner``, e.g. a variable-rate model's gains,
    which then apply to the whole latent)."""
    owners = [m if getattr(m, "tiles_inner", False) else model for m in (model.g_a, model.g_s)]
    names = ["inner" if o is not model else n for o, n in zip(owners, ("g_a", "g_s"))]
    g_a, g_s = getattr(owners[0], names[0]), getattr(owners[1], names[1])
    try:
        setattr(owners[0], names[0], TiledTransform(g_a, factor, down=True, tile=tile, margin=margin))
        setattr(owners[1], names[1], TiledTransform(g_s, factor, down=False, tile=tile, margin=margin))
        yield model
    finally:
        setattr(owners[0], names[0], g_a)
        setattr(owners[1], names[1], g_s)


_MARGINS: dict[type, int] = {}
PROBE_RADIUS = 14  # latent pixels: the widest receptive field the probe can see
PROBE_SEEDS = (0, 1)  # random weights: a unit that is off for one draw is on for another


def latent_margin(model: nn.Module, factor: int = 16) -> int:
    """Latent pixels of context a tile needs so that tiled transforms equal whole ones: two more than
    the wider receptive radius of ``model.g_a`` and ``model.g_s``, in latent pixels.

    Measured, not declared: on small-width copies of the architecture (the receptive field does not
    depend on the widths), in float64, a change of one latent pixel (for g_s) or one input pixel (for
    g_a) is traced to every output it reaches; the widest of a few random draws of the weights (a
    unit that is off in one draw, hiding a path, is on in another). Once per architecture and process."""
    cls = type(model)
    if cls not in _MARGINS:
        from compressml.models.lae import architecture_of, build_lae

        spec = architecture_of(model)
        radius = 0
        with torch.random.fork_rng(devices=[]), torch.autocast("cpu", enabled=False):
            for seed in PROBE_SEEDS:
                torch.manual_seed(seed)
                probe = build_lae(spec.name, 8, 16 if "M" in spec.widths else None).double().eval()
                radius = max(radius, _radius(probe.g_a, factor, down=True), _radius(probe.g_s, factor, down=False))
        _MARGINS[cls] = 2 + radius  # one for the partial latent pixel at the field's edge, one to spare
    return _MARGINS[cls]


@torch.no_grad()
def _radius(transform: nn.Module, factor: int, down: bool) -> int:
    r = PROBE_RADIUS
    side = 2 * r + 1
    gen = torch.Generator().manual_seed(0)
    if down:
        x = torch.rand(1, 3, side * factor, side * factor, generator=gen, dtype=torch.float64)
        bumped = x.clone()
        bumped[..., r * factor, r * factor] += 0.5
        diff = (transform(bumped) - transform(x)).abs().amax(dim=(0, 1))
        rows, cols = torch.nonzero(diff, as_tuple=True)
        extent = max(r - int(rows.min()), int(rows.max()) - r, r - int(cols.min()), int(cols.max()) - r)
    else:
        channels = next(m for m in transform.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))).in_channels
        y = torch.randn(1, channels, side, side, generator=gen, dtype=torch.float64)
        bumped = y.clone()
        bumped[..., r, r] += 1.0
        diff = (transform(bumped) - transform(y)).abs().amax(dim=(0, 1))
        rows, cols = torch.nonzero(diff, as_tuple=True)
        lo, hi = r * factor, (r + 1) * factor - 1
        pixels = max(lo - int(rows.min()), int(rows.max()) - hi, lo - int(cols.min()), int(cols.max()) - hi)
        extent = -(-pixels // factor)
    if extent >= r:
        raise RuntimeError(f"receptive field wider than the probe ({r} latent pixels)")
    return extent
