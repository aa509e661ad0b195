"""Classical codecs through Pillow, as references for the learned ones.

Each codec maps a *setting* (a quality, or for JPEG 2000 a compression ratio) to
Pillow's save options; :meth:`ClassicalCodec.encode` returns the bytes of a
real file and :meth:`ClassicalCodec.decode` reads them back to 8-bit RGB.
JPEG 2000 and AVIF are offered only where the installed Pillow was built with
them (:func:`available_codecs`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, features

from compressml.errors import ConfigError


@dataclass(frozen=True)
class ClassicalCodec:
    name: str  # as shown in tables and plots, e.g. "jpeg-420"
    pil_format: str  # Pillow's format name
    settings: tuple[int, ...]  # the default sweep (qualities; ratios for JPEG 2000)
    options: dict = field(default_factory=dict)  # fixed save options
    setting_option: str | None = "quality"  # the save option a setting goes to (None: lossless, one point)
    feature: str | None = None  # Pillow feature that must be present

    @property
    def lossless(self) -> bool:
        return self.setting_option is None

    def save_options(self, setting: int) -> dict:
        opts = dict(self.options)
        if self.setting_option == "quality_layers":
            opts["quality_layers"] = [setting]  # a compression ratio, e.g. 24 = 1 bpp for RGB
        elif self.setting_option is not None:
            opts[self.setting_option] = int(setting)
        return opts

    def encode(self, rgb: np.ndarray, setting: int) -> bytes:
        """A uint8 (H, W, 3) array to the bytes of a file in this format."""
        buf = io.BytesIO()
        Image.fromarray(rgb, mode="RGB").save(buf, format=self.pil_format, **self.save_options(setting))
        return buf.getvalue()

    def decode(self, data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)


_QUALITIES = tuple(range(5, 100, 5))

CODECS: dict[str, ClassicalCodec] = {
    c.name: c
    for c in (
        ClassicalCodec("jpeg-420", "JPEG", _QUALITIES, {"subsampling": 2}),
        ClassicalCodec("jpeg-444", "JPEG", _QUALITIES, {"subsampling": 0}),
        ClassicalCodec("webp", "WEBP", _QUALITIES, {"method": 4}, feature="webp"),
        ClassicalCodec("png", "PNG", (0,), {"compress_level": 9}, setting_option=None),
        ClassicalCodec("webp-lossless", "WEBP", (0,), {"lossless": True, "quality": 100, "method": 4}, setting_option=None, feature="webp"),
        # settings are compression ratios: 24 / ratio = bits per pixel for 8-bit RGB
        ClassicalCodec(
            "jpeg2000",
            "JPEG2000",
            (192, 128, 96, 64, 48, 32, 24, 16, 12, 8),
            {"quality_mode": "rates", "irreversible": True},
            setting_option="quality_layers",
            feature="jpg_2000",
        ),
        ClassicalCodec("avif", "AVIF", tuple(range(10, 100, 10)), {"speed": 6, "subsampling": "4:2:0"}, feature="avif"),
    )
}


def is_supported(codec: ClassicalCodec) -> bool:
    return codec.feature is None or bool(features.check(codec.feature))


def available_codecs(names: Sequence[str] | None = None) -> list[ClassicalCodec]:
    """The named codecs (all known ones by default) that this Pillow supports; unknown names are an error."""
    names = list(CODECS) if names is None else list(names)
    unknown = [n for n in names if n not in CODECS]
    if unknown:
        raise ConfigError(f"unknown classical codec(s) {unknown}; choose from {', '.join(CODECS)}")
    return [CODECS[n] for n in names if is_supported(CODECS[n])]


def match_size(codec: ClassicalCodec, rgb: np.ndarray, max_bytes: int) -> tuple[int, bytes] | None:
    """(quality, file) of the classical codec's best quality whose file is no larger than ``max_bytes``
    (binary search over 1..100), or None when even quality 1 is larger."""
    lo, hi, best = 1, 100, None
    while lo <= hi:
        q = (lo + hi) // 2
        data = codec.encode(rgb, q)
        if len(data) <= max_bytes:
            best, lo = (q, data), q + 1
        else:
            hi = q - 1
    return best
