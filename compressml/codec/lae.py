"""LAE images to and from ``.cml`` containers.

Sections of format version 2 (docs/FORMAT.md): ``LAYOUT`` (the decoding mode, then CompressAI's
``shape`` of the coded latents as a tree, see :mod:`compressml.codec.layout`), ``STRINGS`` (every
string group CompressAI's ``compress`` returns, in its order) and ``ALPHA`` (the alpha plane,
zlib-compressed, lossless) for RGBA inputs. Version 1 files (``SHAPE``: the top latent's height and
width; one ``STRING`` section per latent) are still read.

Decoding modes (LAYOUT's first byte): ``exact`` (1, the default for new files) chooses every CDF in
fixed-point arithmetic, identical on every machine and device, so the entropy decoding cannot
desynchronise, and computes the pixels in a fixed partition, identical whatever the thread count
(see :mod:`compressml.models.exact`). ``compressai`` (0) decodes with CompressAI's own float
arithmetic: the strings are those of CompressAI's ``compress`` on the same weights and padded input,
bit for bit. Version 1 files are ``compressai``.

Images above ``tile_pixels`` go through the transforms in overlapping tiles (see
:mod:`compressml.codec.tiling`; the margin is measured from the architecture), so memory stays
bounded with no seams and the same bits as the whole-image path.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from compressai.models.base import CompressionModel

from compressml.codec import layout, limits
from compressml.codec.container import Container, ContainerError
from compressml.codec.tiling import latent_margin, tile_windows, tiled_transforms
from compressml.errors import CompressMLError, ConfigError
from compressml.models.lae import (
    DECODING_MODES,
    SYNTHESIS_FACTOR,
    LAEPayload,
    Refinement,
    architecture_of,
    check_refinable,
    coded_latents,
    compress,
    compress_latents,
    decompress,
    entropy_parameters,
    expected_layout,
    is_updated,
    latent_count,
    latent_size,
    refine_latent_window,
    refinement_score,
    stride_of,
)
from compressml.models.padding import pad_to_multiple
from compressml.models.variable_rate import conditioned, is_variable_rate, rate_gain_of

SHAPE, LAYOUT, STRING, STRINGS, ALPHA, RATE = 0x01, 0x02, 0x10, 0x11, 0x20, 0x03
# decoding modes (LAYOUT's first byte): how the decoder computes what chooses the CDFs and the pixels
MODES = {"compressai": 0, "exact": 1}
assert set(MODES) == set(DECODING_MODES)
DEFAULT_MODE = "exact"
MODE_NAMES = {v: k for k, v in MODES.items()}
MAX_STRING_GROUPS = 256

TILE_PIXELS = 1024 * 1024  # above this many (padded) pixels the transforms run in tiles
DEFAULT_QUALITY = 75.0  # a variable-rate model's quality when none is asked for


@dataclass(frozen=True)
class Rate:
    """The rate a variable-rate LAE codes at: one ``quality`` (0..100, kept to hundredths) or a map of
    integer qualities (0..100) with one value per latent position (16x16 pixels of the padded image).
    It travels in the file (section RATE), so decoding needs nothing else."""

    quality: float | None = None
    map: np.ndarray | None = None  # (h, w) uint8, at the latent resolution

    def __post_init__(self):
        if (self.quality is None) == (self.map is None):
            raise CompressMLError("a rate is one quality or one quality map")
        if self.quality is not None:
            if not 0 <= self.quality <= 100:
                raise CompressMLError(f"quality must be in 0..100 for a variable-rate model, got {self.quality:g}")
            object.__setattr__(self, "quality", round(float(self.quality) * 100) / 100)
        elif self.map.ndim != 2 or self.map.dtype != np.uint8 or int(self.map.max(initial=0)) > 100:
            raise CompressMLError("a quality map is a 2-D array of integer qualities 0..100")

    def log_lmbda(self, model: CompressionModel):
        gain = rate_gain_of(model)
        if self.quality is not None:
            return gain.log_lmbda(self.quality)
        return gain.log_lmbda(torch.from_numpy(self.map.astype(np.float64))[None, None])

    def section(self) -> tuple[int, bytes]:
        if self.quality is not None:
            return (RATE, struct.pack(">BH", 0, round(self.quality * 100)))
        h, w = self.map.shape
        return (RATE, struct.pack(">BHH", 1, h, w) + zlib.compress(np.ascontiguousarray(self.map).tobytes(), 9))

    @classmethod
    def read(cls, raw: bytes, latent: tuple[int, int] | None = None) -> Rate:
        """From a RATE section, checked against the latent size (h, w) the image gives (None: the
        map's own size, bounded only by the section)."""
        if len(raw) == 3 and raw[0] == 0:
            hundredths = struct.unpack(">H", raw[1:])[0]
            if hundredths > 10000:
                raise ContainerError("quality above 100 in the rate section")
            return cls(quality=hundredths / 100)
        if len(raw) >= 5 and raw[0] == 1:
            h, w = struct.unpack(">HH", raw[1:5])
            if latent is not None and (h, w) != tuple(latent):
                raise ContainerError("the quality map does not match the image size")
            try:
                data = zlib.decompressobj().decompress(raw[5:], h * w + 1)
            except zlib.error:
                raise ContainerError("corrupt quality map") from None
            if len(data) != h * w:
                raise ContainerError("the quality map has the wrong size")
            values = np.frombuffer(data, dtype=np.uint8).reshape(h, w)
            if int(values.max(initial=0)) > 100:
                raise ContainerError("quality above 100 in the quality map")
            return cls(map=values.copy())
        raise ContainerError("malformed rate section")


def roi_map(model: CompressionModel, mask: np.ndarray, quality: float, region_quality: float) -> Rate:
    """A quality map: ``region_quality`` at every latent position whose 16x16 pixels touch the mask
    (H, W; nonzero = region), ``quality`` elsewhere (both rounded to integers)."""
    h, w = mask.shape
    lh, lw = latent_size(model, h, w)
    padded = np.zeros((lh * SYNTHESIS_FACTOR, lw * SYNTHESIS_FACTOR), dtype=bool)
    padded[:h, :w] = mask != 0
    inside = padded.reshape(lh, SYNTHESIS_FACTOR, lw, SYNTHESIS_FACTOR).any(axis=(1, 3))
    for q in (quality, region_quality):
        if not 0 <= q <= 100:
            raise CompressMLError(f"quality must be in 0..100 for a variable-rate model, got {q:g}")
    return Rate(map=np.where(inside, round(region_quality), round(quality)).astype(np.uint8))


def quality_map(model: CompressionModel, qualities: np.ndarray) -> Rate:
    """A quality map from per-pixel qualities (H, W) in 0..100: their mean over each latent position's
    16x16 pixels (the padding counted at its nearest edge value), rounded."""
    h, w = qualities.shape
    lh, lw = latent_size(model, h, w)
    padded = np.pad(qualities.astype(np.float64), ((0, lh * SYNTHESIS_FACTOR - h), (0, lw * SYNTHESIS_FACTOR - w)), mode="edge")
    means = padded.reshape(lh, SYNTHESIS_FACTOR, lw, SYNTHESIS_FACTOR).mean(axis=(1, 3))
    return Rate(map=np.clip(np.round(means), 0, 100).astype(np.uint8))


def weights_fingerprint(model: torch.nn.Module) -> bytes:
    """16 bytes identifying the weights and CDF tables (a file made by other weights is refused)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.digest()[:16]


@dataclass
class SourceImage:
    """An image as the codec sees it: RGB in [0, 1] plus what is needed to give back the original form."""

    rgb: torch.Tensor  # (3, H, W) float in [0, 1]
    channels: int = 3  # 1, 3 or 4 in the original
    bit_depth: int = 8
    alpha: np.ndarray | None = None  # (H, W) uint8 or uint16

    def crop(self, region: tuple[int, int, int, int]) -> SourceImage:
        """The region (x, y, width, height) of this image (see :func:`region_inside`)."""
        x, y, rw, rh = region
        alpha = None if self.alpha is None else self.alpha[y : y + rh, x : x + rw].copy()
        return SourceImage(rgb=self.rgb[:, y : y + rh, x : x + rw].clone(), channels=self.channels, bit_depth=self.bit_depth, alpha=alpha)


def region_inside(region: tuple[int, int, int, int], h: int, w: int) -> None:
    """Refuse, in one line, a region (x, y, width, height) that is not inside an h x w image."""
    x, y, rw, rh = region
    if rw < 1 or rh < 1 or x < 0 or y < 0 or x + rw > w or y + rh > h:
        raise CompressMLError(f"the region {x},{y},{rw},{rh} (x,y,width,height) is not inside the {w}x{h} image")


def encode(
    model: CompressionModel,
    image: SourceImage,
    fingerprint: bytes | None = None,
    tile_pixels: int = TILE_PIXELS,
    refinement: Refinement | None = None,
    mode: str = DEFAULT_MODE,
    rate: Rate | None = None,
) -> Container:
    """``refinement``: optimise the latents for this image first (slower encoding, same decoder);
    ``mode``: the decoding mode (``exact`` or ``compressai``, see the module docstring); ``rate``: a
    variable-rate model's quality or quality map (default :data:`DEFAULT_QUALITY`)."""
    if mode not in MODES:
        raise CompressMLError(f"unknown decoding mode {mode!r}; choose from {', '.join(MODES)}")
    if not is_variable_rate(model):
        if rate is not None:
            raise CompressMLError("a continuous quality, --roi and quality maps need a variable-rate model; this one codes at one rate")
        return _encode(model, image, fingerprint, tile_pixels, refinement, mode, [])
    rate = rate or Rate(quality=DEFAULT_QUALITY)
    h, w = image.rgb.shape[-2:]
    if rate.map is not None and rate.map.shape != latent_size(model, h, w):
        raise CompressMLError(f"the quality map is {rate.map.shape}; this image needs {latent_size(model, h, w)} (one per 16x16 pixels)")
    if refinement is not None and refinement.steps > 0:
        raise CompressMLError("--refine is for fixed-rate models (it optimises the latents for their one λ)")
    with conditioned(model, rate.log_lmbda(model)):
        return _encode(model, image, fingerprint, tile_pixels, refinement, mode, [rate.section()])


def _encode(
    model: CompressionModel,
    image: SourceImage,
    fingerprint: bytes | None,
    tile_pixels: int,
    refinement: Refinement | None,
    mode: str,
    extra: list,
) -> Container:
    if not is_updated(model):
        model.update(force=True)
    x = image.rgb[None].to(next(model.parameters()).device)
    h, w = x.shape[-2:]
    stride = stride_of(model)
    padded_pixels = (-(-h // stride) * stride) * (-(-w // stride) * stride)
    if padded_pixels > tile_pixels:
        if refinement is not None and refinement.steps > 0:
            payload = compress_refined_in_tiles(model, x, refinement, mode)
        else:
            with tiled_transforms(model, margin=latent_margin(model)):
                payload = compress(model, x, mode=mode)
    else:
        payload = compress(model, x, refinement, mode)
    sections = [
        (LAYOUT, bytes([MODES[mode]]) + layout.write_tree(payload.shape)),
        strings_section([group[0] for group in payload.strings]),
        *extra,
    ]
    sections += alpha_section(image)
    return Container(
        family="lae",
        fingerprint=fingerprint or weights_fingerprint(model),
        height=h,
        width=w,
        channels=image.channels,
        bit_depth=image.bit_depth,
        pad_h=(-h) % stride,
        pad_w=(-w) % stride,
        sections=sections,
    )


def compress_refined_in_tiles(
    model: CompressionModel, x: torch.Tensor, settings: Refinement, mode: str = DEFAULT_MODE, tile: int = 32, margin: int = 4
) -> LAEPayload:
    """Latent refinement with the memory of a tile: y is refined tile by tile (``tile`` latent pixels a
    side, the neighbours within ``margin`` as fixed context, each tile scored on its own pixels), z
    and y's entropy parameters stay as the encoder made them. The whole image is scored at the
    end, and the plain latents are coded if the refined ones are not better."""
    check_refinable(model)
    padded, size = pad_to_multiple(x.float(), stride_of(model))
    with torch.no_grad(), tiled_transforms(model, tile, margin), torch.autocast(padded.device.type, enabled=False):
        y, z = coded_latents(model, padded)
        _, scales, means = entropy_parameters(model, z)
    plain = y.clone()
    h, w = size
    f = SYNTHESIS_FACTOR
    for (a0, a1, b0, b1), (e0, e1, g0, g1) in tile_windows(*y.shape[-2:], tile, margin):
        window = y[..., e0:e1, g0:g1].clone()
        y[..., a0:a1, b0:b1] = refine_latent_window(
            model,
            window,
            (slice(a0 - e0, a1 - e0), slice(b0 - g0, b1 - g0)),
            scales[..., e0:e1, g0:g1] if scales is not None else None,
            means[..., e0:e1, g0:g1] if scales is not None else means,
            x[..., a0 * f : min(a1 * f, h), b0 * f : min(b1 * f, w)],
            settings,
        )
    with torch.no_grad(), tiled_transforms(model, tile, margin), torch.autocast(padded.device.type, enabled=False):
        better = refinement_score(model, y, z, x, settings) < refinement_score(model, plain, z, x, settings)
    return compress_latents(model, y if better else plain, z, size, mode)


def decode(model: CompressionModel, container: Container, fingerprint: bytes | None = None, tile_pixels: int = TILE_PIXELS) -> SourceImage:
    if container.family != "lae":
        raise ContainerError(f"this file holds a {container.family!r} code, not an LAE one")
    check_fingerprint(container, fingerprint or weights_fingerprint(model))
    stride = stride_of(model)
    h, w = container.height, container.width
    if container.pad_h != (-h) % stride or container.pad_w != (-w) % stride:
        raise ContainerError("padding does not match the image size and the model's stride")
    padded = (h + container.pad_h, w + container.pad_w)
    limits.check_decode_memory(*padded)
    if container.version == 1:
        (shape, strings), mode = _read_payload_v1(model, container, padded), "compressai"
    else:
        shape, strings, mode = _read_payload(model, container, padded)
    payload = LAEPayload(strings=[[s] for s in strings], shape=shape, size=(h, w))
    log_lmbda = None
    if is_variable_rate(model):
        if container.version == 1 or not container.sections_of(RATE):
            raise ContainerError("no rate section: a variable-rate model's files carry their quality")
        log_lmbda = Rate.read(container.section(RATE), latent_size(model, h, w)).log_lmbda(model)
    elif container.version > 1 and container.sections_of(RATE):
        raise ContainerError("this file was made by a variable-rate model (it has a quality); this model codes at one rate")
    with conditioned(model, log_lmbda):
        if padded[0] * padded[1] > tile_pixels:
            with tiled_transforms(model, margin=latent_margin(model)):
                x_hat = decompress(model, payload, mode)
        else:
            x_hat = decompress(model, payload, mode)
    return SourceImage(rgb=x_hat[0].cpu(), channels=container.channels, bit_depth=container.bit_depth, alpha=decode_alpha(container, h, w))


def coded_strings(container: Container) -> list[bytes]:
    """The string groups of an LAE file (version 1 or 2), in CompressAI's order, unchecked."""
    if container.version == 1:
        return container.sections_of(STRING)
    return layout.read_blobs(container.section(STRINGS), MAX_STRING_GROUPS)


def strings_section(strings: list[bytes]) -> tuple[int, bytes]:
    """The STRINGS section of these string groups."""
    return (STRINGS, layout.write_blobs(strings))


def decoding_mode_of(container: Container) -> str:
    """The decoding mode an LAE file was coded in (``compressai`` for version 1 files)."""
    if container.version == 1:
        return "compressai"
    raw = container.section(LAYOUT)
    if not raw or raw[0] not in MODE_NAMES:
        raise ContainerError(f"unknown decoding mode {raw[0] if raw else None} (made by a newer compressml?)")
    return MODE_NAMES[raw[0]]


def _read_payload(model: CompressionModel, container: Container, padded: tuple[int, int]):
    """(shape, strings, decoding mode) of a version 2 file, checked against what the model makes of this image size."""
    container.check_kinds({LAYOUT, STRINGS, ALPHA, RATE})
    mode = decoding_mode_of(container)
    raw = container.section(LAYOUT)
    if not is_updated(model):
        raise ContainerError("the model has no CDF tables (call update() before decoding)")
    shape, groups = expected_layout(model, *padded)
    if layout.read_tree(raw, 1) != shape:
        raise ContainerError("latent shape does not match the image size and the model")
    strings = layout.read_blobs(container.section(STRINGS), MAX_STRING_GROUPS)
    if len(strings) != groups:
        raise ContainerError(f"expected {groups} string groups, found {len(strings)}")
    return shape, strings, mode


def _read_payload_v1(model: CompressionModel, container: Container, padded: tuple[int, int]):
    """(shape, strings) of a version 1 file: a SHAPE section (the top latent's height and width, which is
    y for the factorized prior and z for the hyperpriors) and one STRING section per latent."""
    if architecture_of(model).name not in ("factorized", "hyperprior", "mean_scale"):
        raise ContainerError(f"format v1 files hold factorized, hyperprior or mean_scale codes, not {architecture_of(model).name}")
    container.check_kinds({SHAPE, STRING, ALPHA})
    shape_bytes = container.section(SHAPE)
    if len(shape_bytes) != 8:
        raise ContainerError("malformed latent-shape section")
    stride = stride_of(model)
    shape = struct.unpack(">II", shape_bytes)
    if shape != (padded[0] // stride, padded[1] // stride):
        raise ContainerError("latent shape does not match the image size")
    strings = container.sections_of(STRING)
    if len(strings) != latent_count(model):
        raise ContainerError(f"expected {latent_count(model)} coded latents, found {len(strings)}")
    return shape, strings


# the rewards whose lambda * D + R a refinement can minimise (picked here, never imported from a file)
REFINABLE_G = ("compressml.g.RateDistortion", "compressml.g.Perceptual")


def refinement_for(g_spec, steps: int) -> Refinement:
    """The :class:`Refinement` of a model trained with the reward ``g_spec`` (its hyper-parameters'
    ``g``): the same lambda and distortion, so the refined latents serve the trade-off it learnt."""
    from compressml import g as rewards

    target = g_spec.get("_target_") if isinstance(g_spec, dict) else None
    if target not in REFINABLE_G:
        raise CompressMLError(
            "--refine needs an LAE trained with g=rate_distortion or g=perceptual (it minimises "
            f"the model's own lambda * D + R); this one was trained with {target or g_spec!r}"
        )
    try:
        g = getattr(rewards, target.rsplit(".", 1)[1])(**{k: v for k, v in g_spec.items() if k != "_target_"})
        return Refinement(steps=steps, lmbda=g.lmbda, distortion=g.distortion)
    except (TypeError, ConfigError) as e:
        raise CompressMLError(f"--refine: the model's g {g_spec!r} cannot be used ({e})") from None


def check_fingerprint(container: Container, expected: bytes) -> None:
    if container.fingerprint != expected:
        raise ContainerError(
            f"made by other weights (file {container.fingerprint.hex()[:12]}, model {expected.hex()[:12]}): "
            "decode it with the model that encoded it"
        )


def alpha_section(image: SourceImage) -> list[tuple[int, bytes]]:
    """The ALPHA section (zlib, lossless) of an RGBA or grey + alpha source; none otherwise."""
    if image.alpha is None:
        return []
    return [(ALPHA, zlib.compress(np.ascontiguousarray(image.alpha).tobytes(), 9))]


def decode_alpha(container: Container, h: int, w: int) -> np.ndarray | None:
    """The alpha plane of an RGBA or grey + alpha file, checked against the image size; None for other files."""
    if container.channels not in (2, 4):
        return None
    raw = zlib.decompressobj()
    dtype = np.uint16 if container.bit_depth == 16 else np.uint8
    expected_len = h * w * np.dtype(dtype).itemsize
    try:
        data = raw.decompress(container.section(ALPHA), expected_len + 1)
    except zlib.error:
        raise ContainerError("corrupt alpha section") from None
    if len(data) != expected_len:
        raise ContainerError("alpha section has the wrong size")
    return np.frombuffer(data, dtype=dtype).reshape(h, w)
