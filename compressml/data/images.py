"""Reading image files into float tensors, with explicit mode conversion.

Every image becomes a float32 tensor of shape (3, H, W) with values in [0, 1]:

* greyscale (``1``, ``L``, ``I``, ``I;16``, ``F``) is replicated to three channels;
* an alpha channel (``RGBA``, ``LA``, ``PA``, palette transparency) is dropped,
  keeping the colour values as stored;
* 16-bit greyscale is scaled by 1/65535 (not truncated to 8 bits), 8-bit by 1/255;
  Pillow itself reads 16-bit-per-channel colour images as 8-bit, and float (``F``)
  images are taken as already in [0, 1] and clipped;
* palette, CMYK, YCbCr and other modes go through Pillow's RGB conversion.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from compressml.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

GREY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def list_images(root: str | Path) -> list[Path]:
    """All image files below ``root`` (recursive), sorted, hidden files skipped."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"no such directory: {root}")
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def pil_to_array(img: Image.Image) -> np.ndarray:
    """Pillow image -> float32 array (H, W, 3) in [0, 1], by the rules in the module docstring."""
    mode = img.mode
    if mode in GREY_MODES:
        arr = np.asarray(img)
        if mode == "1":
            arr = arr.astype(np.float32)
        elif mode == "F":
            arr = np.clip(arr.astype(np.float32), 0.0, 1.0)
        elif mode.startswith("I"):
            # 16-bit PNG/TIFF open as "I" or "I;16"; their range is 0..65535.
            arr = np.clip(arr.astype(np.float32) / 65535.0, 0.0, 1.0)
        else:
            arr = arr.astype(np.float32) / 255.0
        return np.repeat(arr[:, :, None], 3, axis=2)
    if mode != "RGB":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-transparency notices: alpha is dropped anyway
            img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def array_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 or float array (H, W[, C]) -> float tensor (3, H, W) in [0, 1]."""
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


@contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """Open and fully decode an image; any decoding problem becomes a one-line :class:`DataError`."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                yield img
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: corrupt or unreadable image ({e})") from None


def load_image(path: str | Path) -> torch.Tensor:
    """Decode one image file fully into a (3, H, W) float tensor in [0, 1]."""
    with open_image(path) as img:
        arr = pil_to_array(img)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{path}: image has no pixels")
    return array_to_tensor(arr)


def save_image(x: torch.Tensor, path: str | Path) -> None:
    """Float tensor (3, H, W) in [0, 1] -> 8-bit image file (format from the suffix)."""
    arr = x.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(arr).save(path)
