"""Classical codecs, as references for the learned ones.

Each codec maps a *setting* (a quality, or for JPEG 2000 a compression ratio) to
Pillow's save options; :meth:`ClassicalCodec.encode` returns the bytes of a
real file and :meth:`ClassicalCodec.decode` reads them back to 8-bit RGB.
JPEG 2000 and AVIF are offered only where the installed Pillow was built with
them (:func:`available_codecs`).

The anchors Pillow lacks come from their Python packages, the optional extra ``anchors``
(``pip install 'compressml[anchors]'``), and are skipped with a one-line note where missing:

- ``jpeg-ls`` (imagecodecs, CharLS): near-lossless, the setting is NEAR = the bound D on every
  sample's error (0: lossless), as ``compress --max-error D``;
- ``jpeg-xl-lossless`` (imagecodecs, libjxl, effort 7);
- the GPU texture codecs, whose every block has the same size so that any block decodes alone:
  ``astc`` (astc-encoder, the setting is the block side: 4 = 8 bpp, 6 = 3.56, 8 = 2, 12 = 0.89;
  the medium preset), ``bc7`` (8 bpp) and ``etc2`` (ETC2 RGB, 4 bpp), both from etcpak and read back
  with texture2ddecoder. Their size is the block data alone (no DDS/KTX/.astc header), as texture
  rates are quoted; images are edge-padded to whole blocks and cropped after decoding.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable, Sequence
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
    setting_option: str | None = "quality"  # the save option a setting goes to (None: lossless, one point; "fixed": one rate)
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

    def decode(self, data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
        """A file back to 8-bit RGB (``size``, (H, W), is for texture block data, which has no header)."""
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)

    @property
    def suffix(self) -> str:
        """A file name suffix for this codec's files."""
        return "." + self.pil_format.lower()

    def missing(self) -> str | None:
        """Why this codec cannot run here (None: it can)."""
        if self.feature is None or features.check(self.feature):
            return None
        return f"this Pillow was built without {self.feature}"


ANCHORS_HINT = "pip install 'compressml[anchors]'"


@dataclass(frozen=True)
class PackageCodec(ClassicalCodec):
    """A codec from a Python package (the ``anchors`` extra): ``encoder(rgb, setting) -> bytes`` and
    ``decoder(data, (h, w)) -> rgb``, imported when first used."""

    encoder: Callable[[np.ndarray, int], bytes] | None = None
    decoder: Callable[[bytes, tuple[int, int]], np.ndarray] | None = None
    packages: tuple[str, ...] = ()
    file_suffix: str = ".bin"

    def encode(self, rgb: np.ndarray, setting: int) -> bytes:
        return self.encoder(np.ascontiguousarray(rgb, dtype=np.uint8), setting)

    def decode(self, data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
        return self.decoder(data, size)

    @property
    def suffix(self) -> str:
        return self.file_suffix

    def missing(self) -> str | None:
        absent = [p for p in self.packages if importlib.util.find_spec(p) is None]
        if absent:
            return f"needs {', '.join(absent)} ({ANCHORS_HINT})"
        if self.feature is not None:
            import imagecodecs

            if not getattr(imagecodecs, self.feature).available:
                return f"this imagecodecs was built without {self.feature}"
        return None


def _jpegls_encode(rgb: np.ndarray, near: int) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.jpegls_encode(rgb, level=int(near)))


def _jpegls_decode(data: bytes, size=None) -> np.ndarray:
    import imagecodecs

    return np.asarray(imagecodecs.jpegls_decode(data), dtype=np.uint8)


def _jxl_lossless_encode(rgb: np.ndarray, setting: int) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.jpegxl_encode(rgb, lossless=True, effort=7))


def _jxl_decode(data: bytes, size=None) -> np.ndarray:
    import imagecodecs

    return np.asarray(imagecodecs.jpegxl_decode(data), dtype=np.uint8)[..., :3]


def _padded(rgb: np.ndarray, block: int) -> np.ndarray:
    """RGBA (as the texture encoders take it), edge-padded to whole ``block`` x ``block`` tiles."""
    h, w = rgb.shape[:2]
    rgba = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2)
    return np.ascontiguousarray(np.pad(rgba, (((0, -h % block), (0, -w % block), (0, 0))), mode="edge"))


def _astc_context(side: int):
    import astc_encoder

    config = astc_encoder.ASTCConfig(astc_encoder.ASTCProfile.LDR, side, side, 1, float(astc_encoder.ASTCQualityPreset.MEDIUM))
    return astc_encoder, astc_encoder.ASTCContext(config)


def _astc_encode(rgb: np.ndarray, side: int) -> bytes:
    """The block data, after a 1-byte block side (the only header decoding needs beyond the size)."""
    if side not in ASTC_SIDES:
        raise ConfigError(f"astc: the setting is a block side, one of {', '.join(map(str, ASTC_SIDES))}; got {side}")
    ae, context = _astc_context(side)
    h, w = rgb.shape[:2]
    rgba = _padded(rgb, 1)
    blocks = context.compress(ae.ASTCImage(ae.ASTCType.U8, w, h, 1, rgba.tobytes()), ae.ASTCSwizzle.from_str("RGBA"))
    return bytes([side]) + bytes(blocks)


def _astc_decode(data: bytes, size: tuple[int, int]) -> np.ndarray:
    ae, context = _astc_context(data[0])
    h, w = size
    out = ae.ASTCImage(ae.ASTCType.U8, w, h, 1)
    context.decompress(data[1:], out, ae.ASTCSwizzle.from_str("RGBA"))
    return np.frombuffer(out.data, np.uint8).reshape(h, w, 4)[..., :3].copy()


def _bc7_encode(rgb: np.ndarray, setting: int) -> bytes:
    import etcpak

    rgba = _padded(rgb, 4)
    return bytes(etcpak.compress_bc7(rgba.tobytes(), rgba.shape[1], rgba.shape[0], etcpak.BC7CompressBlockParams()))


def _etc2_encode(rgb: np.ndarray, setting: int) -> bytes:
    import etcpak

    rgba = _padded(rgb, 4)
    return bytes(etcpak.compress_etc2_rgb(rgba.tobytes(), rgba.shape[1], rgba.shape[0]))


def _texture_decoder(name: str):
    def decode(data: bytes, size: tuple[int, int]) -> np.ndarray:
        import texture2ddecoder

        h, w = size
        ph, pw = h + (-h % 4), w + (-w % 4)
        bgra = np.frombuffer(getattr(texture2ddecoder, name)(data, pw, ph), np.uint8).reshape(ph, pw, 4)
        return bgra[:h, :w, 2::-1].copy()

    return decode


ASTC_SIDES = (4, 5, 6, 8, 10, 12)


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
        PackageCodec(
            "jpeg-ls", "JPEG-LS", (0, 1, 2, 4), setting_option="near", feature="JPEGLS", packages=("imagecodecs",),
            encoder=_jpegls_encode, decoder=_jpegls_decode, file_suffix=".jls",
        ),
        PackageCodec(
            "jpeg-xl-lossless", "JPEG-XL", (0,), setting_option=None, feature="JPEGXL", packages=("imagecodecs",),
            encoder=_jxl_lossless_encode, decoder=_jxl_decode, file_suffix=".jxl",
        ),
        PackageCodec(
            "astc", "ASTC", (4, 6, 8, 12), setting_option="block", packages=("astc_encoder",),
            encoder=_astc_encode, decoder=_astc_decode, file_suffix=".astc",
        ),
        PackageCodec(
            "bc7", "BC7", (0,), setting_option="fixed", packages=("etcpak", "texture2ddecoder"),
            encoder=_bc7_encode, decoder=_texture_decoder("decode_bc7"), file_suffix=".bc7",
        ),
        PackageCodec(
            "etc2", "ETC2", (0,), setting_option="fixed", packages=("etcpak", "texture2ddecoder"),
            encoder=_etc2_encode, decoder=_texture_decoder("decode_etc2"), file_suffix=".etc2",
        ),
    )
}  # fmt: skip


def is_supported(codec: ClassicalCodec) -> bool:
    return codec.missing() is None


def available_codecs(names: Sequence[str] | None = None, note: Callable[[str], None] | None = None) -> list[ClassicalCodec]:
    """The named codecs (all known ones by default) that can run here; unknown names are an error.
    ``note`` hears one line for each named codec that is skipped, and why."""
    names = list(CODECS) if names is None else list(names)
    unknown = [n for n in names if n not in CODECS]
    if unknown:
        raise ConfigError(f"unknown classical codec(s) {unknown}; choose from {', '.join(CODECS)}")
    found = []
    for n in names:
        why = CODECS[n].missing()
        if why is None:
            found.append(CODECS[n])
        elif note is not None:
            note(f"note: {n} skipped: {why}")
    return found


def match_size(codec: ClassicalCodec, rgb: np.ndarray, max_bytes: int) -> tuple[int, bytes] | None:
    """(setting, file) of the classical codec's best setting whose file is no larger than ``max_bytes``,
    or None when even the smallest is larger: a binary search over qualities 1..100, or for codecs
    set otherwise (NEAR, a block size, one point) the largest file among their default settings."""
    if codec.setting_option != "quality":
        files = [(s, codec.encode(rgb, s)) for s in codec.settings]
        fitting = [(s, data) for s, data in files if len(data) <= max_bytes]
        return max(fitting, key=lambda f: len(f[1])) if fitting else None
    lo, hi, best = 1, 100, None
    while lo <= hi:
        q = (lo + hi) // 2
        data = codec.encode(rgb, q)
        if len(data) <= max_bytes:
            best, lo = (q, data), q + 1
        else:
            hi = q - 1
    return best
