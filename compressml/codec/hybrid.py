"""The hybrid codec: a compact low-resolution image plus a learned reconstruction.

Encoding downscales the image by the RED model's scale (edge-padded to a multiple of
it, with the training kernel) and compresses that small image with a base codec: a
classical one through Pillow (JPEG, WebP, AVIF, JPEG 2000) or an LAE. Decoding decodes
the base layer and restores full resolution with the RED, then crops the padding.

Sections of the ``.cml`` container (family ``hybrid``; the header's fingerprint is the
RED's weights):

- ``META``: scale (1 byte), base-codec name (length-prefixed ASCII), setting (2 bytes).
- ``BASE``: the base layer: the classical file's bytes, or a whole LAE ``.cml`` file
  (which carries and checks its own fingerprint).
- ``ALPHA``: the alpha plane, zlib (as for the other families).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from compressml.baselines import CODECS, ClassicalCodec, available_codecs
from compressml.codec import container as cml
from compressml.codec import limits
from compressml.codec.container import Container, ContainerError
from compressml.codec.lae import ALPHA, SourceImage, alpha_section, check_fingerprint, decode_alpha
from compressml.errors import CheckpointError, ConfigError, first_line

META, BASE = 0x01, 0x13
FAMILY = "hybrid"
LAE_BASE = "lae"
BASE_FORMATS = {"jpeg-420": "JPEG", "jpeg-444": "JPEG", "webp": "WEBP", "avif": "AVIF", "jpeg2000": "JPEG2000"}


def _to_uint8(rgb: torch.Tensor) -> np.ndarray:
    return rgb.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).contiguous().numpy()


@dataclass
class HybridCodec:
    """``red`` (an :class:`~compressml.upscale.Upscaler`) restores what ``base`` coded at low
    resolution: a classical codec name with its ``setting`` (quality), or ``"lae"`` with ``lae``
    (a :class:`~compressml.codec.files.CodecModel` of an LAE)."""

    red: object
    base: str | None
    setting: int | None = None
    lae: object | None = None
    tile: int | None = 256
    family: str = FAMILY

    def __post_init__(self):
        if self.base is None:  # decoding only: the file names its base codec
            return
        if self.base == LAE_BASE:
            if self.lae is None or getattr(self.lae, "family", None) != "lae":
                raise ConfigError("a hybrid codec with base=lae needs an LAE model for its base layer")
        elif self.base in BASE_FORMATS:
            if not available_codecs([self.base]):
                raise ConfigError(f"this Pillow cannot write {self.base}")
        else:
            raise ConfigError(f"unknown hybrid base codec {self.base!r}; choose from {', '.join([*BASE_FORMATS, LAE_BASE])}")
        if self.setting is not None and not 0 <= int(self.setting) <= 100:
            raise ConfigError(f"the base codec's quality must be in 0..100, got {self.setting}")

    @property
    def scale(self) -> int:
        return self.red.scale

    @property
    def fingerprint(self) -> bytes:
        return self.red.fingerprint

    @property
    def net(self) -> torch.nn.Module:
        return self.red.net

    @classmethod
    def load(cls, red: str, base: str | None = None, setting: int | None = None, tile: int | None = 256) -> HybridCodec:
        """From model paths: ``red`` a RED checkpoint or bundle; ``base`` a classical codec name, an LAE
        checkpoint or bundle, or None (decoding files whose base layer is classical)."""
        from compressml.codec.upscale import Upscaler

        return cls.around(Upscaler.load(red), base, setting, tile)

    @classmethod
    def around(cls, upscaler, base: str | None = None, setting: int | None = None, tile: int | None = 256) -> HybridCodec:
        """Around a loaded RED (:class:`~compressml.upscale.Upscaler`); ``base`` as for :meth:`load`."""
        from compressml.codec.files import CodecModel

        if base is None or base in BASE_FORMATS:
            return cls(upscaler, base, setting, tile=tile)
        if not Path(base).exists():
            raise ConfigError(f"unknown hybrid base {base!r}: a classical codec ({', '.join(BASE_FORMATS)}) or an LAE model path")
        if setting is not None:
            raise ConfigError("a quality is for a classical base codec; an LAE base codes at its own rate")
        return cls(upscaler, LAE_BASE, lae=CodecModel.load(base), tile=tile)

    @property
    def name(self) -> str:
        return f"hybrid-{self.base}+red-x{self.scale}"

    def _classical(self) -> ClassicalCodec:
        return CODECS[self.base]

    # -- encoding -------------------------------------------------------------------------
    def encode(self, image: SourceImage) -> Container:
        from compressml.models.red import downscale

        if self.base is None:
            raise ConfigError("choose the hybrid codec's base layer (--base jpeg-420, webp, ... or an LAE model)")
        s = self.scale
        h, w = image.rgb.shape[-2:]
        pad_h, pad_w = (-h) % s, (-w) % s
        x = F.pad(image.rgb[None].float(), (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else image.rgb[None].float()
        lr = downscale(x, s)[0]
        if self.base == LAE_BASE:
            payload, setting = self.lae.encode(SourceImage(rgb=lr)).to_bytes(), 0
        else:
            setting = 75 if self.setting is None else int(self.setting)
            payload = self._classical().encode(_to_uint8(lr), setting)
        name = self.base.encode()
        meta = struct.pack(">BB", s, len(name)) + name + struct.pack(">H", setting)
        return Container(
            family=FAMILY,
            fingerprint=self.fingerprint,
            height=h,
            width=w,
            channels=image.channels,
            bit_depth=image.bit_depth,
            pad_h=pad_h,
            pad_w=pad_w,
            sections=[(META, meta), (BASE, payload), *alpha_section(image)],
        )

    # -- decoding -------------------------------------------------------------------------
    def decode(self, container: Container) -> SourceImage:
        if container.family != FAMILY:
            raise ContainerError(f"this file holds a {container.family!r} code, not a hybrid one")
        check_fingerprint(container, self.fingerprint)
        container.check_kinds({META, BASE, ALPHA})
        scale, base, _ = parse_meta(container.section(META))
        if scale != self.scale:
            raise ContainerError(f"made for a x{scale} RED; this model is x{self.scale}")
        h, w = container.height, container.width
        if container.pad_h != (-h) % scale or container.pad_w != (-w) % scale:
            raise ContainerError("padding does not match the image size and the scale")
        lr_h, lr_w = (h + container.pad_h) // scale, (w + container.pad_w) // scale
        limits.check_decode_memory(h + container.pad_h, w + container.pad_w)
        payload = container.section(BASE)
        if base == LAE_BASE:
            if self.lae is None:
                raise CheckpointError("this file's base layer is an LAE code: give that LAE model too (--base MODEL)")
            inner = cml.parse(payload)
            if (inner.height, inner.width) != (lr_h, lr_w):  # checked before decoding anything
                raise ContainerError("base layer size does not match the image size")
            lr = self.lae.decode(inner).rgb.clamp(0, 1)
        else:
            lr = torch.from_numpy(decode_base_image(base, payload, (lr_h, lr_w)).copy()).permute(2, 0, 1).float() / 255
        from compressml.codec.upscale import upscale_tensor

        sr = upscale_tensor(self.red.net, lr[None], self.tile)[0, :, :h, :w].cpu()
        return SourceImage(rgb=sr, channels=container.channels, bit_depth=container.bit_depth, alpha=decode_alpha(container, h, w))


def parse_meta(meta: bytes) -> tuple[int, str, int]:
    """(scale, base codec name, setting) of a META section, validated."""
    try:
        scale, n = struct.unpack_from(">BB", meta, 0)
        name = meta[2 : 2 + n].decode("ascii")
        (setting,) = struct.unpack_from(">H", meta, 2 + n)
    except (struct.error, UnicodeDecodeError):
        raise ContainerError("malformed hybrid META section") from None
    if len(meta) != 4 + n or scale not in (2, 3, 4) or name not in (*BASE_FORMATS, LAE_BASE):
        raise ContainerError("malformed hybrid META section")
    return scale, name, setting


def decode_base_image(base: str, payload: bytes, size: tuple[int, int]) -> np.ndarray:
    """A classical base layer back to uint8 (h, w, 3), checked to be the declared format and size."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(payload), formats=[BASE_FORMATS[base]]) as img:
            if (img.height, img.width) != size:
                raise ContainerError("base layer size does not match the image size")
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except ContainerError:
        raise
    except Exception as e:  # Pillow's plugins raise OSError, ValueError, SyntaxError, RuntimeError...
        raise ContainerError(f"corrupt {base} base layer ({first_line(e)})") from None
