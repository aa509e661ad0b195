"""Super-resolution with a trained RED: see :mod:`compressml.codec.upscale` (kept here for imports of
earlier releases)."""

from compressml.codec.upscale import DEFAULT_TILE, MIN_TILE, Upscaler, upscale_file, upscale_tensor

__all__ = ["DEFAULT_TILE", "MIN_TILE", "Upscaler", "upscale_file", "upscale_tensor"]
