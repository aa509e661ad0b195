"""Files on disk: reading sources, writing outputs atomically, and the compress/decompress jobs.

Outputs are written to a temporary file in the target folder and renamed into
place, so a crash or a bad input never leaves a half-written file; an existing
output is refused unless ``force``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from compressml.codec import bundle
from compressml.codec import container as cml
from compressml.codec import lae as lae_codec
from compressml.codec.families import family
from compressml.codec.lae import SourceImage
from compressml.data.images import (
    GREY_MODES,
    IMAGE_SUFFIXES,
    array_to_tensor,
    list_images,
    open_image,
    pil_to_array,
)
from compressml.errors import CheckpointError, CompressMLError, DataError
from compressml.fileio import atomic_write  # callers import it from here too

OUTPUT_FORMATS = {"png": "PNG", "bmp": "BMP", "tiff": "TIFF", "webp": "WEBP"}


def read_source(path: Path) -> SourceImage:
    """Decode an image file, remembering its channels, bit depth and alpha plane."""
    with open_image(path) as img:
        return source_from_pil(img)


def source_from_pil(img: Image.Image) -> SourceImage:
    """A PIL image as the codec sees it (grey, 16-bit, palette and alpha as :func:`read_source`)."""
    mode = img.mode
    bit_depth = 16 if mode.startswith("I") else 8
    alpha = None
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        alpha = np.asarray(img.convert("RGBA").getchannel("A"), dtype=np.uint8)
    grey = mode in GREY_MODES or mode in ("LA", "La")
    channels = (2 if grey else 4) if alpha is not None else (1 if grey else 3)
    rgb = array_to_tensor(pil_to_array(img))
    return SourceImage(rgb=rgb, channels=channels, bit_depth=bit_depth, alpha=alpha)


def to_pil(image: SourceImage) -> Image.Image:
    """Decoded RGB back to the original form: grey (8/16-bit), grey + alpha, RGB, or RGBA."""
    rgb = image.rgb.clamp(0, 1)
    alpha = None
    if image.alpha is not None and image.channels in (2, 4):
        alpha = image.alpha if image.alpha.dtype == np.uint8 else (image.alpha >> 8).astype(np.uint8)
    if image.channels in (1, 2):
        grey = rgb.mean(0)
        if image.bit_depth == 16 and alpha is None:
            return Image.fromarray(grey.mul(65535).round().numpy().astype(np.uint16))
        grey = grey.mul(255).round().byte().numpy()
        return Image.fromarray(np.dstack([grey, alpha]), mode="LA") if alpha is not None else Image.fromarray(grey, mode="L")
    arr = rgb.mul(255).round().byte().permute(1, 2, 0).numpy()
    if alpha is not None:
        return Image.fromarray(np.dstack([arr, alpha]), mode="RGBA")
    return Image.fromarray(arr, mode="RGB")


def load_net(path: str | Path) -> tuple[torch.nn.Module, str, bytes, dict]:
    """(network, family, fingerprint, the family's coding options) of an export bundle (its folder or
    manifest.json; never unpickles) or a Lightning checkpoint (loaded with ``weights_only``)."""
    from compressml.checkpoints import checkpoint_family, read_checkpoint

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model file or bundle folder")
    if path.is_dir() or path.name == bundle.MANIFEST:
        net, manifest = bundle.load_bundle(path)
        owner = family(manifest["family"])
        return net, owner.name, bytes.fromhex(manifest["fingerprint"]), owner.coding_options(manifest)
    ckpt = read_checkpoint(path)
    owner = family(checkpoint_family(ckpt))
    net = owner.net_from_checkpoint(ckpt, str(path))
    return net, owner.name, lae_codec.weights_fingerprint(net), owner.coding_options(ckpt.get("hyper_parameters") or {})


@dataclass
class CodecModel:
    """A model ready to code, with the fingerprint written into (and checked against) every file.

    ``family`` picks the codec (``lae`` or ``mllae``); ``options`` are the family's
    coding options from training (MLLAE's entropy stage; an LAE's reward g, for refinement).
    ``refinement``: LAE encoder-side latent optimisation (:meth:`refined`); ``decoding_mode``: how an
    LAE file is to be decoded (``exact``, the default, or ``compressai``: see ``compressml.codec.lae``).
    """

    net: torch.nn.Module
    fingerprint: bytes
    source: str
    family: str = "lae"
    options: dict = field(default_factory=dict)
    refinement: lae_codec.Refinement | None = None
    decoding_mode: str | None = None
    rate: lae_codec.Rate | None = None  # a variable-rate LAE's quality or quality map
    max_error: int = 0  # an MLLAE in lossless mode: near-lossless, every sample within ±max_error

    def refined(self, steps: int) -> CodecModel:
        """This model encoding with ``steps`` of latent refinement (0: none); decoding is unchanged."""
        if steps == 0:
            return replace(self, refinement=None)
        return replace(self, refinement=family(self.family).refinement(self.net, self.options, steps, self.source))

    @classmethod
    def load(cls, path: str | Path) -> CodecModel:
        """From an export bundle (its folder or manifest.json; never unpickles) or a Lightning .ckpt."""
        net, name, fingerprint, options = load_net(path)
        if not family(name).codes:
            raise CheckpointError(_red_hint(path))
        return cls(net=net, fingerprint=fingerprint, source=str(path), family=name, options=options)

    def with_decoding_mode(self, mode: str | None) -> CodecModel:
        """This model writing LAE files in decoding ``mode`` (None: the default, ``exact``)."""
        if mode is not None and self.family != "lae":
            raise CompressMLError(f"--decoding-mode is for LAE models; this one is {self.family!r}")
        if mode is not None and mode not in lae_codec.MODES:
            raise CompressMLError(f"unknown decoding mode {mode!r}; choose from {', '.join(lae_codec.MODES)}")
        return replace(self, decoding_mode=mode)

    @property
    def variable_rate(self) -> bool:
        from compressml.models.variable_rate import is_variable_rate

        return self.family == "lae" and is_variable_rate(self.net)

    def at(self, rate: lae_codec.Rate | float | None) -> CodecModel:
        """This (variable-rate) model coding at a quality (0..100) or a :class:`~compressml.codec.lae.Rate`."""
        if rate is not None and not self.variable_rate:
            raise CompressMLError(f"a continuous quality, --roi and quality maps need a variable-rate LAE; {self.source} codes at one rate")
        if isinstance(rate, (int, float)):
            rate = lae_codec.Rate(quality=float(rate))
        return replace(self, rate=rate)

    @property
    def lossless(self) -> bool:
        """An MLLAE in lossless mode: exact, or near-lossless with :meth:`near_lossless`."""
        return self.family == "mllae" and self.net.lossless

    def near_lossless(self, max_error: int) -> CodecModel:
        """This (lossless-mode MLLAE) model coding every sample within ±``max_error`` (0: exactly)."""
        from compressml.codec.mllae import check_max_error

        if self.family != "mllae":
            raise CompressMLError(f"--max-error needs an MLLAE in lossless mode; {self.source} is an {self.family.upper()}")
        check_max_error(self.net, max_error)
        return replace(self, max_error=max_error)

    def encode(self, image: SourceImage) -> cml.Container:
        with torch.no_grad():
            extra = {"rate": self.rate} if self.rate is not None else {}
            extra.update({"max_error": self.max_error} if self.max_error else {})
            return family(self.family).encode(
                self.net, image, self.fingerprint, refinement=self.refinement, decoding_mode=self.decoding_mode, **extra, **self.options
            )

    def decode(self, container: cml.Container, region: tuple[int, int, int, int] | None = None) -> SourceImage:
        """The file's image, or its ``region`` (x, y, width, height): an MLLAE-N file decodes only the
        blocks under it (random access); other files decode whole and are cropped."""
        if container.family != self.family:
            raise cml.ContainerError(f"this file holds a {container.family!r} code; the model is {self.family!r}")
        if region is not None:
            lae_codec.region_inside(region, container.height, container.width)
        with torch.no_grad():
            if region is not None and self.family == "mllae":
                return family(self.family).decode(self.net, container, self.fingerprint, region=region)
            image = family(self.family).decode(self.net, container, self.fingerprint)
        return image if region is None else image.crop(region)


def _red_hint(path) -> str:
    return (
        f"{path}: a RED (super-resolution) model: use `compressml upscale`, or give --base (a classical "
        "codec or an LAE model) to use it as the decoder of a hybrid codec"
    )


def expand_inputs(inputs: Iterable[str | Path], suffixes: tuple[str, ...]) -> list[tuple[Path, Path]]:
    """(file, path relative to what was named) for files and folders (recursive)."""
    pairs = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            files = list_images(p) if suffixes == IMAGE_SUFFIXES else sorted(q for q in p.rglob("*") if q.suffix.lower() in suffixes)
            pairs += [(f, f.relative_to(p)) for f in files]
        elif p.is_file():
            pairs.append((p, Path(p.name)))
        else:
            raise DataError(f"{p}: no such file or folder")
    if not pairs:
        raise DataError("no input files found")
    return pairs


@dataclass
class RateRequest:
    """How ``compress`` chooses each image's rate: a rate-control ``target`` (see
    :mod:`compressml.codec.rate_control`) over a ladder, and/or a region of interest (a mask image:
    its nonzero pixels get ``roi_quality``, the rest the model's quality)."""

    target: str | None = None
    value: float | None = None
    ladder: list[CodecModel] | None = None  # a fixed-rate family, fewest bits first (None: the model's qualities)
    roi: Path | np.ndarray | None = None  # a mask file, or the mask itself (H, W), nonzero = region
    roi_quality: float | None = None


def encode_image(model: CodecModel, image: SourceImage, request: RateRequest | None = None) -> tuple[cml.Container, dict]:
    """(the file, what was chosen) for one image under a :class:`RateRequest`."""
    from compressml.codec import rate_control

    request = request or RateRequest()
    if request.target is None and request.roi is None:  # the model's own rate (any codec, the hybrid one too)
        return model.encode(image), {}
    base = model
    mask = None
    if request.roi is not None:
        if not model.variable_rate:
            raise CompressMLError("--roi needs a variable-rate LAE (one network for every quality)")
        mask = (
            _read_mask(request.roi, image.rgb.shape[-2:])
            if isinstance(request.roi, Path)
            else _checked_mask(request.roi, image.rgb.shape[-2:], "the mask")
        )
    quality = base.rate.quality if base.rate is not None and base.rate.quality is not None else lae_codec.DEFAULT_QUALITY

    def at(q: float) -> CodecModel:
        if mask is None:
            return base.at(q)
        region = request.roi_quality if request.roi_quality is not None else min(100.0, q + ROI_BOOST)
        return base.at(lae_codec.roi_map(base.net, mask, q, region))

    if request.target is None:
        coder = at(quality) if (mask is not None or base.variable_rate) else base
        return coder.encode(image), {}
    if request.ladder is not None:
        rungs = [
            rate_control.Rung(Path(m.source).name, lambda m=m: m.encode(image), lambda c, m=m: m.decode(c).rgb) for m in request.ladder
        ]
    elif base.variable_rate:
        rungs = [
            rate_control.Rung(f"q {q:g}", lambda q=q: at(q).encode(image), lambda c: base.decode(c).rgb)
            for q in rate_control.quality_ladder()
        ]
    else:
        raise CompressMLError(
            "rate control (--max-bytes, --bpp, --psnr, --ms-ssim) needs a variable-rate LAE or the premade family (no -m)"
        )
    outcome = rate_control.control(rungs, request.target, request.value, image.rgb)
    return outcome.container, {"rung": outcome.rung, "passes": outcome.passes, "achieved": outcome.achieved}


ROI_BOOST = 40.0  # --roi without --roi-quality: the region this many quality points above the rest


def _read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A region-of-interest mask (any image; nonzero = region) of exactly the image's size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mask = np.asarray(im.convert("L"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such mask file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not a readable mask image ({e})") from None
    return _checked_mask(mask, size, str(path))


def _checked_mask(mask: np.ndarray, size: tuple[int, int], label: str) -> np.ndarray:
    if mask.ndim != 2 or mask.shape != tuple(size):
        raise DataError(f"{label}: the mask is {'x'.join(map(str, mask.shape[::-1]))}, the image {size[1]}x{size[0]}")
    if not mask.any():
        raise DataError(f"{label}: the mask marks no pixel (nonzero = region)")
    return mask


def compress_file(model: CodecModel, src: Path, dst: Path, force: bool = False, request: RateRequest | None = None) -> dict:
    image = read_source(src)
    container, chosen = encode_image(model, image, request)
    data = container.to_bytes()
    atomic_write(dst, lambda tmp: tmp.write_bytes(data), force)
    h, w = image.rgb.shape[-2:]
    return {"input": str(src), "output": str(dst), "bytes": len(data), "bpp": 8 * len(data) / (h * w), **chosen}


def read_container(path: Path) -> cml.Container:
    from compressml.codec import limits

    try:
        size = Path(path).stat().st_size
        if size > limits.max_file_bytes():
            raise limits.LimitError(
                f"{path}: {size} bytes, more than any image within the limit of {limits.max_pixels()} "
                f"pixels needs (set {limits.ENV_MAX_PIXELS} to allow larger ones)"
            )
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return cml.parse(data)
    except cml.ContainerError as e:
        raise cml.ContainerError(f"{path}: {e}") from None


def decode_container(model, container: cml.Container, region: tuple[int, int, int, int] | None = None) -> SourceImage:
    """``model.decode`` (of a ``region`` only, where given), with the rANS decoder's refusal of a
    damaged string as a ContainerError."""
    try:
        if region is None:
            return model.decode(container)
        if isinstance(model, CodecModel):
            return model.decode(container, region)
        lae_codec.region_inside(region, container.height, container.width)  # the hybrid codec: whole, then cropped
        return model.decode(container).crop(region)
    except CompressMLError:
        raise
    except (ValueError, RuntimeError) as e:
        raise cml.ContainerError(f"corrupt payload ({str(e).splitlines()[0]})") from None


def decompress_file(
    model: CodecModel, src: Path, dst: Path, fmt: str = "png", force: bool = False, region: tuple[int, int, int, int] | None = None
) -> dict:
    """Decode ``src`` to an image file ``dst`` (only ``region``, (x, y, width, height), where given)."""
    if fmt not in OUTPUT_FORMATS:
        raise CompressMLError(f"unknown output format {fmt!r}; choose from {', '.join(OUTPUT_FORMATS)}")
    container = read_container(src)
    try:
        image = decode_container(model, container, region)
    except cml.ContainerError as e:
        raise cml.ContainerError(f"{src}: {e}") from None
    except CompressMLError as e:
        raise CompressMLError(f"{src}: {e}") from None
    pil = to_pil(image)
    atomic_write(dst, lambda tmp: pil.save(tmp, format=OUTPUT_FORMATS[fmt], **({"lossless": True} if fmt == "webp" else {})), force)
    h, w = image.rgb.shape[-2:]
    return {"input": str(src), "output": str(dst), "height": h, "width": w, "region": region, "pixels": container.height * container.width}


def describe(path: Path) -> dict:
    c = read_container(path)
    size = Path(path).stat().st_size
    return {
        "file": str(path),
        "format_version": c.version,
        "family": c.family,
        "fingerprint": c.fingerprint.hex(),
        "height": c.height,
        "width": c.width,
        "channels": c.channels,
        "bit_depth": c.bit_depth,
        "padding": (c.pad_h, c.pad_w),
        "bytes": size,
        "bpp": 8 * size / (c.height * c.width),
        "decoding_mode": lae_codec.decoding_mode_of(c) if c.family == "lae" else None,
        "quality": _quality_of(c),
        "max_error": _max_error_of(c),
    }


def _max_error_of(c: cml.Container) -> int | None:
    """A near-lossless MLLAE file's bound D (None for every other file)."""
    from compressml.codec import mllae

    return (mllae.file_max_error(c) or None) if c.family == "mllae" else None


def _quality_of(c: cml.Container) -> str | None:
    """A variable-rate LAE file's quality ("62.5") or quality map ("map 24x32, 20..80"); None otherwise."""
    if c.family != "lae" or c.version == 1 or not c.sections_of(lae_codec.RATE):
        return None
    rate = lae_codec.Rate.read(c.section(lae_codec.RATE))
    if rate.map is None:
        return f"{rate.quality:g}"
    h, w = rate.map.shape
    return f"map {w}x{h}, {int(rate.map.min())}..{int(rate.map.max())}"
