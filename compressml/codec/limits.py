"""What a decoder may spend on a file, decided before it spends it.

Every size a ``.cml`` file claims is checked before anything of that size is allocated: the file's
own length before it is read, the image size against a ceiling (``COMPRESSML_MAX_PIXELS``, default
:data:`DEFAULT_MAX_PIXELS`; ``compressml decompress --max-pixels``), every count and length inside
against the bytes that are really there, and the memory a decode will need against the memory this
process can still have (the free memory, and the address space its ``RLIMIT_AS`` leaves). A file
that fails any of them gets a one-line error, never a MemoryError or an out-of-memory kill.
"""

from __future__ import annotations

import os

from compressml.errors import CompressMLError

DEFAULT_MAX_PIXELS = 1 << 28  # 268 Mpixel (16384 x 16384)
MAX_SIDE = 1 << 16
ENV_MAX_PIXELS = "COMPRESSML_MAX_PIXELS"
# the largest file an image within the ceiling can need: 16-bit RGBA stored raw, and 1 MiB of headers
FILE_BYTES_PER_PIXEL = 8
FILE_SLACK = 1 << 20
# decoding memory, measured with compressml/premade/lae-q4 (peak RSS over the loaded model): 413 bytes
# per pixel for a 768x512 image (one piece), 84 for 2048x2048 (tiled); and MLLAE lossless (see there)
LAE_BYTES_PER_PIXEL = 64  # the output and its copies
WHOLE_BYTES_PER_PIXEL = 350  # the transforms' activations, up to the tiling threshold (then per tile)
TILED_ABOVE = 1 << 20  # pixels (compressml.codec.lae.TILE_PIXELS)


class LimitError(CompressMLError):
    """A file or an image larger than this process may decode (a one-line message)."""


def max_pixels() -> int:
    """The ceiling on the pixels of an image a file may claim (``COMPRESSML_MAX_PIXELS``)."""
    raw = os.environ.get(ENV_MAX_PIXELS)
    if raw is None or raw == "":
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise LimitError(f"{ENV_MAX_PIXELS} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise LimitError(f"{ENV_MAX_PIXELS} must be a positive integer, got {raw!r}")
    return value


def max_file_bytes() -> int:
    return max_pixels() * FILE_BYTES_PER_PIXEL + FILE_SLACK


def available_memory() -> int | None:
    """Bytes this process can still allocate: the smaller of the system's available memory
    (Linux's MemAvailable, else free pages) and the address space its RLIMIT_AS leaves; None if
    neither is known."""
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            pass
    left = _address_space_left()
    if left is not None:
        found.append(left)
    return min(found) if found else None


def _address_space_left() -> int | None:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return max(0, soft - int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(h: int, w: int, per_pixel: int, what: str, fixed: int = 0, how: str = "") -> None:
    """Refuse, in one line, ``what`` (e.g. "decoding") an ``h`` x ``w`` image (``how``: e.g.
    "losslessly") when it needs more memory than is left."""
    needed, available = h * w * per_pixel + fixed, available_memory()
    if available is not None and needed > available:
        raise LimitError(
            f"{what} this {w}x{h} image{' ' + how if how else ''} needs about {needed / 2**30:.1f} GiB of memory; "
            f"{available / 2**30:.1f} GiB are available"
        )


def check_decode_memory(h: int, w: int, per_pixel: int = LAE_BYTES_PER_PIXEL) -> None:
    """Refuse decoding an ``h`` x ``w`` image through a network (LAE, hybrid) when it cannot fit:
    ``per_pixel`` for the output, and the transforms' activations of one piece (whole images up to
    :data:`TILED_ABOVE` pixels, tiles above)."""
    check_memory(h, w, per_pixel, "decoding", fixed=min(h * w, TILED_ABOVE) * WHOLE_BYTES_PER_PIXEL)
