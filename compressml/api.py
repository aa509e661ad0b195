"""The Python API: compress an image to bytes, decompress bytes to an image, load a model, upscale.

>>> import compressml
>>> data = compressml.compress("photo.png", quality=60)          # bytes of a .cml file (premade model)
>>> image = compressml.decompress(data)                          # a PIL image
>>> small = compressml.compress(image, max_bytes=20_000)         # the best quality within 20000 bytes
>>> codec = compressml.load("lae-q2")                            # a premade name, a bundle or a checkpoint
>>> codec.name, codec.family, codec.variable_rate
('lae-q2', 'lae', False)
>>> codec.decompress(codec.compress(image)).size == image.size
True
>>> big = compressml.upscale("photo.png", scale=2)               # premade red-x2

Images are a path, a PIL image or a NumPy array (H×W×C or H×W, uint8, or uint16 for 16-bit
grey); a grey image comes back grey and an alpha plane comes back (losslessly). Every error a
caller can cause is a :class:`~compressml.errors.CompressMLError` (``DataError`` for images and
files, ``ConfigError`` for arguments, ``CheckpointError`` for models, ``ContainerError`` for
damaged or foreign files, ``RateControlError`` when a size target cannot be met).

Loaded models are cached (a few), so calling :func:`compress` in a loop loads each model once.
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from compressml.errors import CheckpointError, CompressMLError, ConfigError, DataError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from compressml.codec.files import RateRequest
    from compressml.codec.lae import SourceImage

ImageLike = Union[str, os.PathLike, "Image.Image", "np.ndarray"]

__all__ = ["Codec", "ImageLike", "clear_cache", "compress", "decompress", "load", "upscale"]


# -- images in ---------------------------------------------------------------------------------
def source_image(image: ImageLike) -> SourceImage:
    """A path, a PIL image or an array as the codec sees it."""
    import numpy as np
    from PIL import Image

    from compressml.codec.files import read_source, source_from_pil

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise DataError(f"{path}: no such image file")
        return read_source(path)
    if isinstance(image, Image.Image):
        return source_from_pil(image)
    if isinstance(image, np.ndarray):
        return source_from_pil(_array_to_pil(image))
    raise DataError(f"an image is a path, a PIL image or a NumPy array, not {type(image).__name__}")


def _array_to_pil(a: np.ndarray) -> Image.Image:
    import numpy as np
    from PIL import Image

    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)) or 0 in a.shape[:2]:
        raise DataError(f"an image array is H x W or H x W x C with C in 1..4, got shape {a.shape}")
    if a.dtype == np.uint16 and a.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(a))
    if a.dtype != np.uint8:
        raise DataError(
            f"an image array is uint8 (or uint16 grey), got {a.dtype}: convert it first, e.g. "
            "(x * 255).round().astype('uint8') for floats in [0, 1]"
        )
    mode = {2: "L", 3: {2: "LA", 3: "RGB", 4: "RGBA"}}
    return Image.fromarray(np.ascontiguousarray(a), mode=mode[2] if a.ndim == 2 else mode[3][a.shape[2]])


# -- models --------------------------------------------------------------------------------------
def _loaded(path: str, base: str | None = None):
    """The model at ``path`` (cached by the file's identity: a rewritten checkpoint loads again)."""
    return _load_cached(_identity(path), _identity(base) if base is not None else None)


def _identity(path: str) -> tuple:
    p = Path(path)
    if not p.exists():
        return (path,)  # a classical base codec's name, or a path load_codec will refuse
    target = p / "manifest.json" if p.is_dir() else p
    stat = target.stat() if target.exists() else p.stat()
    return (str(p.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _load_cached(path: tuple, base: tuple | None):
    from compressml.codec.loader import load_codec

    return load_codec(path[0], base[0] if base is not None else None)


def clear_cache() -> None:
    """Forget the loaded models."""
    _load_cached.cache_clear()


def _premade_path(name: str) -> str:
    from compressml import premade

    return premade.resolve_model(name)


@dataclass
class Codec:
    """A model ready to code: what :func:`load` returns.

    ``name`` is the premade model's name or the path it was loaded from; ``family`` is ``lae``,
    ``mllae``, ``red`` (its files are the hybrid codec's) or ``lae-family`` (the premade LAE
    models together, what :func:`compress` uses without ``model``); ``fingerprint`` names its
    weights in every file it writes; ``variable_rate`` says whether ``quality`` is continuous
    (0..100) rather than a pick among models."""

    name: str
    family: str
    fingerprint: str
    variable_rate: bool = False
    description: str = ""
    _coder: Any = field(default=None, repr=False)
    _ladder: list | None = field(default=None, repr=False)  # the premade LAE family, fewest bits first
    _upscaler: Any = field(default=None, repr=False)

    def compress(
        self,
        image: ImageLike,
        quality: float | None = None,
        *,
        max_bytes: int | None = None,
        bpp: float | None = None,
        psnr: float | None = None,
        ms_ssim: float | None = None,
        roi: ImageLike | None = None,
        roi_quality: float | None = None,
        max_error: int | None = None,
    ) -> bytes:
        """The bytes of a ``.cml`` file holding ``image``.

        ``quality``: 0..100 for a variable-rate LAE such as the default premade one (default 75), 1..4
        among the fixed-rate premade family (an installation without the default);
        ``max_bytes`` (a guarantee), ``bpp``, ``psnr`` or ``ms_ssim``: rate control by bisection on
        real coding (give one); ``roi``: a mask (nonzero = region) given more bits, ``roi_quality``
        the region's quality (variable-rate LAE); ``max_error``: near-lossless, every sample within
        ±D of the 8-bit original (an MLLAE in lossless mode, such as ``mllae-lossless``; 0: lossless)."""
        from compressml.codec.files import encode_image

        src = source_image(image)
        if max_error is not None:
            if any(v is not None for v in (quality, max_bytes, bpp, psnr, ms_ssim, roi, roi_quality)):
                raise ConfigError("max_error (near-lossless MLLAE) goes alone: no quality, rate control or roi")
            if self._coder is None or not hasattr(self._coder, "near_lossless"):
                raise ConfigError(f"max_error needs an MLLAE in lossless mode (e.g. mllae-lossless); {self.name} is not one")
            return self._coder.near_lossless(max_error).encode(src).to_bytes()
        coder, request = self._prepare(quality, _target(max_bytes, bpp, psnr, ms_ssim), roi, roi_quality)
        container, _ = encode_image(coder, src, request)
        return container.to_bytes()

    def decompress(self, data: bytes, region: tuple[int, int, int, int] | None = None) -> Image.Image:
        """The image in ``data`` (a ``.cml`` file's bytes, from this model), or its ``region``
        (x, y, width, height): an MLLAE-N file decodes only the blocks under it."""
        from compressml.codec.files import to_pil

        container = _parse(data)
        coder = self._coder
        if coder is None:  # the premade family: the member that made the file
            coder = _loaded(_premade_for(container.fingerprint))
        return to_pil(_decode(coder, container, region))

    def upscale(self, image: ImageLike, tile: int | None = 256) -> Image.Image:
        """A RED model's super-resolution of ``image`` (8-bit; grey stays grey, alpha bicubic)."""
        from compressml.codec.upscale import upscale_image

        if self._upscaler is None:
            raise ConfigError(f"{self.name} is a {self.family} model: upscaling needs a RED model (red-x2, red-x4)")
        return upscale_image(self._upscaler, source_image(image), tile)

    def _prepare(self, quality, target, roi, roi_quality) -> tuple[Any, RateRequest]:
        from compressml.codec.files import RateRequest

        request = RateRequest(target=target[0], value=target[1], roi_quality=None if roi_quality is None else _quality(roi_quality))
        if roi is not None:
            request.roi = _mask(roi)
        elif roi_quality is not None:
            raise ConfigError("roi_quality goes with roi (a mask)")
        if self._ladder is not None:  # the premade family
            if roi is not None:
                raise ConfigError("roi needs a variable-rate LAE model (model=...)")
            if request.target is not None:
                if quality is not None:
                    raise ConfigError("give quality or a rate-control target, not both")
                request.ladder = [_loaded(p) for p in self._ladder]
                return request.ladder[0], request
            return _loaded(_premade_family_member(quality)), request
        if quality is not None and request.target is not None:
            raise ConfigError("give quality or a rate-control target, not both")
        coder = self._coder
        if self._upscaler is not None and coder.base is None:
            raise ConfigError(
                f"{self.name} is a RED model: load it with base= (a classical codec such as "
                "'webp', or an LAE model) to compress, or use upscale()"
            )
        if quality is not None:
            if not hasattr(coder, "at"):
                coder = _hybrid_at(self, quality)
            elif not coder.variable_rate:
                raise ConfigError(f"quality is for variable-rate LAE models (0..100); {self.name} codes at one rate")
            else:
                coder = coder.at(_quality(quality))
        if (request.target is not None or request.roi is not None) and not hasattr(coder, "at"):
            raise ConfigError("rate control and roi are for LAE models, not the hybrid codec")
        return coder, request


def _quality(q) -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q <= 100:
        raise ConfigError(f"quality must be a number from 0 to 100, got {q!r}")
    return float(q)


def _hybrid_at(codec: Codec, quality) -> Any:
    from dataclasses import replace

    from compressml.codec.hybrid import BASE_FORMATS

    if codec._coder.base not in BASE_FORMATS:
        raise ConfigError("quality for the hybrid codec is its classical base codec's; an LAE base codes at its own rate")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality <= 100:
        raise ConfigError(f"quality for the hybrid codec is its base codec's quality, a whole number 0..100, got {quality!r}")
    return replace(codec._coder, setting=quality)


def _target(max_bytes, bpp, psnr, ms_ssim) -> tuple[str | None, float | None]:
    given = [(k, v) for k, v in (("max_bytes", max_bytes), ("bpp", bpp), ("psnr", psnr), ("ms_ssim", ms_ssim)) if v is not None]
    if len(given) > 1:
        raise ConfigError("give one of max_bytes, bpp, psnr, ms_ssim")
    if not given:
        return None, None
    name, value = given[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return name, float(value)


def _mask(roi: ImageLike) -> Path | np.ndarray:
    """A region-of-interest mask: a file (read by the codec) or an array / PIL image (nonzero = region)."""
    import numpy as np
    from PIL import Image

    if isinstance(roi, (str, os.PathLike)):
        return Path(roi)
    if isinstance(roi, Image.Image):
        return np.asarray(roi.convert("L"))
    if isinstance(roi, np.ndarray):
        return roi if roi.ndim == 2 else np.asarray(_array_to_pil(roi).convert("L"))
    raise DataError(f"roi is a mask file, a PIL image or an array, not {type(roi).__name__}")


def _premade_family_member(quality) -> str:
    from compressml import premade

    if quality is not None and (isinstance(quality, bool) or not isinstance(quality, (int, float)) or quality != int(quality)):
        raise ConfigError(f"quality picks a premade LAE model: a whole number, got {quality!r}")
    return str(premade.lae_for_quality(None if quality is None else int(quality)).bundle)


def _premade_for(fingerprint: bytes) -> str:
    from compressml import premade

    found = premade.by_fingerprint(fingerprint)
    if found is None:
        raise CompressMLError(f"made by weights {fingerprint.hex()[:12]}, not a premade model's: give the model (model=...)")
    return str(found.bundle)


def _parse(data: bytes):
    from compressml.codec import container as cml

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DataError(f"decompress takes the bytes of a .cml file, not {type(data).__name__}")
    return cml.parse(bytes(data))


def _decode(coder, container, region=None):
    from compressml.codec.files import decode_container

    return decode_container(coder, container, None if region is None else _region(region))


def _region(region) -> tuple[int, int, int, int]:
    import numpy as np

    values = tuple(region) if isinstance(region, (tuple, list)) else ()
    if len(values) != 4 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values):
        raise ConfigError(f"region must be (x, y, width, height) in whole pixels, got {region!r}")
    return tuple(int(v) for v in values)


def load(name_or_path: str | os.PathLike | None = None, base: str | None = None) -> Codec:
    """A model: a premade name (``compressml models``: ``lae-q2``, ``mllae-lossless``, ``red-x2``, ...),
    an export bundle folder (or its manifest.json) or a Lightning checkpoint. ``None``: the default
    premade LAE (a variable-rate network; an installation without one: the fixed-rate family). A RED model compresses through the hybrid codec around ``base`` (a classical codec
    such as ``webp`` or an LAE model) and can :meth:`Codec.upscale`."""
    from compressml import premade

    if name_or_path is None and premade.default_lae() is not None:
        name_or_path = premade.default_lae().name
    if name_or_path is None:
        family = premade.lae_family()
        if not family:
            raise CheckpointError("this installation has no premade LAE models: give a model")
        return Codec(
            name="premade LAE family",
            family="lae-family",
            fingerprint="",
            description=", ".join(m.name for m in family),
            _ladder=[str(m.bundle) for m in family],
        )
    spec = str(name_or_path)
    path = _premade_path(spec)
    base = _premade_path(base) if base is not None else None
    if not Path(path).exists():
        raise CheckpointError(
            f"{spec}: neither a premade model ({', '.join(m.name for m in premade.premade_models())}) nor a bundle or checkpoint path"
        )
    coder = _loaded(path, base)
    found = premade.find(spec)
    upscaler = coder.red if coder.family == "hybrid" else None
    family = "red" if upscaler is not None else coder.family
    fingerprint = (upscaler.fingerprint if upscaler is not None else coder.fingerprint).hex()
    return Codec(
        name=spec,
        family=family,
        fingerprint=fingerprint,
        variable_rate=bool(getattr(coder, "variable_rate", False)),
        description=found.description if found else "",
        _coder=coder,
        _upscaler=upscaler,
    )


def compress(
    image: ImageLike,
    quality: float | None = None,
    model: str | os.PathLike | Codec | None = None,
    *,
    max_bytes: int | None = None,
    bpp: float | None = None,
    psnr: float | None = None,
    ms_ssim: float | None = None,
    roi: ImageLike | None = None,
    roi_quality: float | None = None,
    max_error: int | None = None,
) -> bytes:
    """``image`` compressed to the bytes of a ``.cml`` file (see :meth:`Codec.compress`).

    ``model``: a name, path or :class:`Codec` (default: the premade variable-rate LAE, ``quality`` 0..100;
    with ``max_error``, the premade ``mllae-lossless``)."""
    if model is None and max_error is not None:
        model = "mllae-lossless"
    codec = model if isinstance(model, Codec) else load(model)
    return codec.compress(
        image, quality, max_bytes=max_bytes, bpp=bpp, psnr=psnr, ms_ssim=ms_ssim, roi=roi, roi_quality=roi_quality, max_error=max_error
    )


def decompress(data: bytes, model: str | os.PathLike | Codec | None = None, region: tuple[int, int, int, int] | None = None) -> Image.Image:
    """The image in a ``.cml`` file's bytes. ``model``: the model that made it (default: the premade
    model its header names); ``region``: only (x, y, width, height) of it (see :meth:`Codec.decompress`)."""
    if model is None:
        container = _parse(data)
        from compressml.codec.files import to_pil

        return to_pil(_decode(_loaded(_premade_for(container.fingerprint)), container, region))
    codec = model if isinstance(model, Codec) else load(model)
    return codec.decompress(data, region)


def upscale(
    image: ImageLike, scale: int | None = None, model: str | os.PathLike | Codec | None = None, tile: int | None = 256
) -> Image.Image:
    """``image`` enlarged by a RED model: ``model`` (its own scale), or the premade ``red-x<scale>``
    (``scale`` 2, the default, or 4)."""
    if model is None:
        scale = 2 if scale is None else scale
        if scale not in (2, 4):
            raise ConfigError(f"the premade super-resolution models are x2 and x4, got scale={scale!r}")
        model = f"red-x{scale}"
    codec = model if isinstance(model, Codec) else load(model)
    if scale is not None and codec._upscaler is not None and codec._upscaler.scale != scale:
        raise ConfigError(f"{codec.name} enlarges x{codec._upscaler.scale}, not x{scale}")
    return codec.upscale(image, tile)


def save(image: Image.Image, path: str | os.PathLike, force: bool = False) -> Path:
    """Write a decoded image (PNG, BMP, TIFF or lossless WebP by the suffix) atomically."""
    from compressml.codec.files import OUTPUT_FORMATS, atomic_write

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"{path}: save to .{', .'.join(OUTPUT_FORMATS)}")
    buf = io.BytesIO()
    image.save(buf, format=OUTPUT_FORMATS[fmt], **({"lossless": True} if fmt == "webp" else {}))
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()), force)
    return path
