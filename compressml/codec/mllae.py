"""MLLAE images to and from ``.cml`` containers.

Sections:

- ``META``: block, N, bits, latent channels, latent side, the entropy stage, lossless flag
  (0: lossy; 1: lossless, float arithmetic (older files); 2: lossless, exact arithmetic; 3: as 2, for a
  grey image whose residual is coded once, R only, G and B being its copies).
- ``LENGTHS``: each block's payload length as a varint (absent when every block is raw).
- ``BLOCKS``: the block payloads, in row-major block order. A payload is the packed
  fixed-length code (``code_bytes <= N`` bytes), or, with an entropy stage, its
  lzma- or rANS-coded form when that is strictly shorter. A payload therefore never
  exceeds N bytes, and its length alone says which form it is.
- ``RESIDUAL`` (lossless mode): the rANS-coded residual between the 8-bit image and the
  rounded prediction of the residual model, which makes decoding bit-exact. It is coded in
  the model's five phases (sub-lattices, coarse to fine), R then G then B within each,
  every pixel predicted from the reconstruction and everything decoded before it; one
  section per phase, channel and 2^20 sub-pixels.
- ``MAX_ERROR`` (near-lossless, absent when lossless): one byte, the bound D of ``--max-error``.
  Each residual ``r`` is then quantized to ``q = sign(r) * floor((|r| + D) / (2D + 1))`` and the
  sample decodes to ``clip(centre + q (2D + 1), 0, 255)``, within ±D of the original; later pixels
  and channels are predicted from those decoded values (on both sides), as in JPEG-LS's near-lossless
  mode, and ``q`` is coded under the model's logistic integrated over its ``2D + 1`` residuals.
- ``ALPHA``: the alpha plane, zlib (as for LAE).

The encoder computes the reconstruction with exactly the code path the decoder runs,
so the residual model sees the same input on both sides. In lossless mode (flag 2) that path is
exact arithmetic (:class:`compressml.models.exact.ExactArithmetic`: fixed-point convolutions, a tanh
from basic operations): the reconstruction and every CDF choice are the same to the bit on every
thread count, instruction set and device, so the residual decoder cannot desynchronise. Lossy
blocks decode in a fixed partition of every convolution (the same pixels whatever the thread count).
"""

from __future__ import annotations

import contextlib
import lzma
import math
import struct
from functools import lru_cache

import numpy as np
import torch

from compressml.codec import limits
from compressml.codec.container import Container, ContainerError
from compressml.codec.lae import (
    ALPHA,
    SourceImage,
    alpha_section,
    check_fingerprint,
    decode_alpha,
    region_inside,
)
from compressml.codec.tiling import TiledTransform
from compressml.errors import CompressMLError
from compressml.models.exact import ExactArithmetic, fixed_partition
from compressml.models.mllae import (
    LOSSLESS_MAX_SCALE,
    LOSSLESS_MIN_SCALE,
    MLLAE,
    channel_mean,
    context_input,
    phase_masks,
    split_residual_params,
)

META, LENGTHS, BLOCKS, RESIDUAL, MAX_ERROR = 0x01, 0x02, 0x11, 0x12, 0x13
MAX_ERROR_LIMIT = 127  # the largest --max-error (JPEG-LS allows NEAR up to 127 for 8-bit samples)
ENTROPY_STAGES = {"none": 0, "lzma": 1, "rans": 2}
LOSSY, LOSSLESS_FLOAT, LOSSLESS_EXACT, LOSSLESS_EXACT_GREY = 0, 1, 2, 3  # META's lossless flag
EXACT_FLAGS = (LOSSLESS_EXACT, LOSSLESS_EXACT_GREY)  # exact arithmetic; 3: a grey image, one channel coded
_META = struct.Struct(">HIBHHBB")
PRECISION = 16  # rANS CDF precision (CompressAI's)
RANS_MIN_SYMBOLS = 16  # shorter strings are padded (see _padded)
NEAR_WIDENING = 0.6  # see _phase_params (fitted on 6 training photos, D = 1, 2, 4)
SCALE_LEVELS = 64  # residual scales in the CDF table, log-spaced between the model's bounds
RESIDUAL_TILE = 512  # the residual model runs in tiles of this many pixels (with a margin) on large images
RESIDUAL_CHUNK = 1 << 20  # sub-pixels per rANS string of the residual (one RESIDUAL section each)
# a block is at most a few KiB: a small dictionary keeps each (de)compression call cheap
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 16}]


# -- fixed-length codes ---------------------------------------------------------------


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Integers in [0, 2**bits) to a big-endian bit string, ``bits`` per value, zero-padded to a byte."""
    values = np.asarray(codes, dtype=np.uint8).reshape(-1, 1)
    planes = np.unpackbits(values, axis=1)[:, 8 - bits :]
    return np.packbits(planes.reshape(-1)).tobytes()


def unpack_codes(data: bytes, count: int, bits: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)
    return planes.astype(np.int64) @ weights


def _varints(values) -> bytes:
    out = bytearray()
    for v in values:
        while True:
            byte, v = v & 0x7F, v >> 7
            out.append(byte | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


def _read_varints(data: bytes, count: int) -> list[int]:
    values, pos = [], 0
    for _ in range(count):
        v = shift = 0
        while True:
            if pos >= len(data) or shift > 28:
                raise ContainerError("malformed block-length section")
            byte = data[pos]
            pos += 1
            v |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        values.append(v)
    if pos != len(data):
        raise ContainerError("malformed block-length section")
    return values


# -- rANS with explicit tables --------------------------------------------------------------


def _quantized_cdfs(pmfs: np.ndarray) -> list[list[int]]:
    """Rows of probabilities to CompressAI's quantized CDFs (one extra escape symbol each)."""
    from compressai._CXX import pmf_to_quantized_cdf

    return [pmf_to_quantized_cdf([*map(float, row), 1e-9], PRECISION) for row in pmfs]


def _padded(symbols: np.ndarray, indexes: np.ndarray, offset: int, cdfs: list[list[int]]) -> tuple[list[int], list[int]]:
    """At least ``RANS_MIN_SYMBOLS`` symbols: CompressAI's encoder sizes its output buffer by the symbol
    count and overruns it (heap corruption) when flushing a string of a single symbol. The padding
    repeats table 0's middle symbol (the residual 0); the decoder decodes it too and drops it."""
    pad = max(RANS_MIN_SYMBOLS - len(symbols), 0)
    middle = offset + (len(cdfs[0]) - 2) // 2
    return [*np.asarray(symbols).tolist(), *[middle] * pad], [*np.asarray(indexes).tolist(), *[0] * pad]


def _rans_encode(symbols: np.ndarray, indexes: np.ndarray, cdfs: list[list[int]], offset: int) -> bytes:
    from compressai.ans import RansEncoder

    sizes = [len(c) for c in cdfs]
    padded_symbols, padded_indexes = _padded(symbols, indexes, offset, cdfs)
    return RansEncoder().encode_with_indexes(padded_symbols, padded_indexes, cdfs, sizes, [offset] * len(cdfs))


def _rans_decode(data: bytes, indexes: np.ndarray, cdfs: list[list[int]], offset: int) -> np.ndarray:
    from compressai.ans import RansDecoder

    sizes = [len(c) for c in cdfs]
    padded_indexes = _padded(np.zeros(len(indexes), dtype=np.int64), indexes, offset, cdfs)[1]
    try:
        out = RansDecoder().decode_with_indexes(data, padded_indexes, cdfs, sizes, [offset] * len(cdfs))
    except (ValueError, RuntimeError) as e:
        raise ContainerError(f"corrupt rANS payload ({str(e).splitlines()[0]})") from None
    return np.asarray(out[: len(indexes)], dtype=np.int64)


def code_cdfs(model: MLLAE) -> list[list[int]]:
    """Per-channel CDFs of the code values, from the counts seen in training (+1 smoothing)."""
    counts = model.code_counts.detach().cpu().double().numpy() + 1.0
    return _quantized_cdfs(counts / counts.sum(1, keepdims=True))


def _scale_table() -> np.ndarray:
    return np.exp(np.linspace(math.log(LOSSLESS_MIN_SCALE), math.log(LOSSLESS_MAX_SCALE), SCALE_LEVELS))


def residual_levels(max_error: int = 0) -> int:
    """Q: the quantized residuals of a ``max_error`` D lie in -Q..Q (255 for lossless coding)."""
    return (255 + max_error) // (2 * max_error + 1)


@lru_cache(maxsize=8)
def residual_cdfs(max_error: int = 0) -> list[list[int]]:
    """Per scale of the table, the CDF of the quantized residual -Q..Q under a discretised logistic:
    symbol q takes the residuals within ±D of ``q (2D + 1)`` (D = 0: the residuals -255..255 themselves)."""
    from scipy.special import expit

    step = 2 * max_error + 1
    q = np.arange(-residual_levels(max_error), residual_levels(max_error) + 1, dtype=np.float64)
    pmfs = []
    for s in _scale_table():
        upper, lower = expit((q * step + max_error + 0.5) / s), expit((q * step - max_error - 0.5) / s)
        upper[-1], lower[0] = 1.0, 0.0  # the end bins take the tails
        pmfs.append(upper - lower)
    return _quantized_cdfs(np.array(pmfs))


def quantize_residual(residual: np.ndarray, max_error: int) -> np.ndarray:
    """Integer residuals to the near-lossless symbols: the nearest multiple of 2D + 1, divided by it."""
    if max_error == 0:
        return residual
    return np.sign(residual) * ((np.abs(residual) + max_error) // (2 * max_error + 1))


def dequantize_residual(centre: np.ndarray, symbols: np.ndarray, max_error: int) -> np.ndarray:
    """The decoded samples: the centre plus the symbols' residuals (clipped to 0..255 when D > 0)."""
    values = centre + symbols * (2 * max_error + 1)
    return np.clip(values, 0, 255) if max_error else values


def _phase_params(
    model: MLLAE, x_hat: torch.Tensor, known: torch.Tensor, known_mask: torch.Tensor, target: torch.Tensor, max_error: int = 0
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """One phase's means and couplings (tensors) and scale-table indexes (3, H, W), given what is decoded.
    With a near-lossless bound D the decoded neighbours are up to D off, so the prediction is less
    sure than the model (trained on exact neighbours) says: its variance is widened by
    ``NEAR_WIDENING * D`` (in the logistic's squared scale units; fitted on training photos)."""
    h, w = x_hat.shape[-2:]
    net = model.residual.net
    if h * w > RESIDUAL_TILE * RESIDUAL_TILE:
        net = TiledTransform(net, factor=1, down=True, tile=RESIDUAL_TILE, margin=16)
    with torch.no_grad():
        context = context_input(x_hat, known, known_mask, target)
        mu, log_scale, coupling = split_residual_params(context, net(context))
        if max_error:
            log_scale = 0.5 * torch.log(torch.exp(2 * log_scale) + NEAR_WIDENING * max_error)
    lo, hi = math.log(LOSSLESS_MIN_SCALE), math.log(LOSSLESS_MAX_SCALE)
    index = ((log_scale - lo) / (hi - lo) * (SCALE_LEVELS - 1)).round().clamp(0, SCALE_LEVELS - 1)
    return mu, coupling, index[0].cpu().int().numpy()


def _centre(mu: torch.Tensor, coupling: torch.Tensor, values: torch.Tensor, c: int) -> np.ndarray:
    """Channel ``c``'s integer centres (H, W); reads only channels < c of ``values`` (1, 3, H, W)."""
    with torch.no_grad():
        return channel_mean(mu, coupling, values, c).clamp(0, 255).round()[0, 0].cpu().int().numpy()


def _chunks(n: int) -> list[slice]:
    return [slice(i, i + RESIDUAL_CHUNK) for i in range(0, n, RESIDUAL_CHUNK)]


def encode_residual(
    model: MLLAE, x_hat: torch.Tensor, x255: np.ndarray, max_error: int = 0, grey: bool = False
) -> tuple[list[bytes], np.ndarray]:
    """The 8-bit image (3, H, W) given the reconstruction, coded phase by phase and channel by
    channel (see :data:`~compressml.models.mllae.PHASES`), each sample within ±``max_error``: the
    strings and the image the decoder will make of them (``x255`` itself when ``max_error`` is 0).
    ``grey`` (R = G = B): only R is coded, and G and B are its copies on both sides."""
    decoded = np.zeros_like(x255)
    values = torch.zeros_like(x_hat)
    known = torch.zeros_like(x_hat)
    known_mask = torch.zeros(1, 1, *x255.shape[-2:], dtype=torch.bool, device=x_hat.device)
    strings, cdfs, offset = [], residual_cdfs(max_error), -residual_levels(max_error)
    for m in phase_masks(x255.shape[-2:], x_hat.device):
        mu, coupling, index = _phase_params(model, x_hat, known, known_mask, m, max_error)
        sel = m[0, 0].cpu().numpy()
        for c in range(1 if grey else 3):
            centre = _centre(mu, coupling, values, c)[sel]
            symbols, idx = quantize_residual(x255[c][sel] - centre, max_error), index[c][sel]
            strings += [_rans_encode(symbols[k], idx[k], cdfs, offset) for k in _chunks(symbols.size)]
            decoded[c][sel] = dequantize_residual(centre, symbols, max_error)
            values[0, c][m[0, 0]] = torch.from_numpy(decoded[c][sel]).to(values)
        if grey:
            _copy_grey(decoded, values, m, sel)
        known = torch.where(m, values / 255, known)
        known_mask |= m
    return strings, decoded


def _copy_grey(decoded: np.ndarray, values: torch.Tensor, m: torch.Tensor, sel: np.ndarray) -> None:
    """A grey image: G and B of this phase's pixels are R's decoded values."""
    for c in (1, 2):
        decoded[c][sel] = decoded[0][sel]
        values[0, c][m[0, 0]] = values[0, 0][m[0, 0]]


def decode_residual(model: MLLAE, x_hat: torch.Tensor, strings: list[bytes], max_error: int = 0, grey: bool = False) -> np.ndarray:
    """Inverse of :func:`encode_residual`: the 8-bit image (3, H, W), exact or within ±``max_error``."""
    shape = (3, *x_hat.shape[-2:])
    masks = phase_masks(shape[-2:], x_hat.device)
    coded = 1 if grey else 3
    if len(strings) != sum(coded * len(_chunks(int(m.sum()))) for m in masks):
        raise ContainerError("wrong number of residual sections for the image size")
    x255 = np.zeros(shape, dtype=np.int64)
    values = torch.zeros_like(x_hat)
    known = torch.zeros_like(x_hat)
    known_mask = torch.zeros(1, 1, *shape[-2:], dtype=torch.bool, device=x_hat.device)
    pos, cdfs, offset = 0, residual_cdfs(max_error), -residual_levels(max_error)
    for m in masks:
        mu, coupling, index = _phase_params(model, x_hat, known, known_mask, m, max_error)
        sel = m[0, 0].cpu().numpy()
        for c in range(coded):
            idx = index[c][sel]
            parts = []
            for k in _chunks(idx.size):
                parts.append(_rans_decode(strings[pos], idx[k], cdfs, offset))
                pos += 1
            symbols = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            decoded = dequantize_residual(_centre(mu, coupling, values, c)[sel], symbols, max_error)
            if decoded.min(initial=0) < 0 or decoded.max(initial=0) > 255:
                raise ContainerError("corrupt residual payload")
            x255[c][sel] = decoded
            values[0, c][m[0, 0]] = torch.from_numpy(decoded).to(values)
        if grey:
            _copy_grey(x255, values, m, sel)
        known = torch.where(m, values / 255, known)
        known_mask |= m
    return x255


# -- images ---------------------------------------------------------------------------------


# Peak memory of lossless coding per pixel: the full-resolution reconstruction, the residual
# model's inputs and the decoded values (measured: about 385 bytes per extra pixel, decoding a
# 1536x1024 image against a 768x512 one). A file may declare up to 268 Mpixel, which would need
# about 100 GB; the check below turns that into a one-line error instead of an out-of-memory kill.
LOSSLESS_BYTES_PER_PIXEL = 400


def check_lossless_memory(h: int, w: int, what: str) -> None:
    """Refuse, in one line, lossless coding that would need more memory than is available."""
    limits.check_memory(h, w, LOSSLESS_BYTES_PER_PIXEL, what, how="losslessly")


def check_max_error(model: MLLAE, max_error: int) -> None:
    """Refuse, in one line, a ``--max-error`` this model cannot give."""
    if isinstance(max_error, bool) or not isinstance(max_error, int) or not 0 <= max_error <= MAX_ERROR_LIMIT:
        raise CompressMLError(f"--max-error must be a whole number from 0 to {MAX_ERROR_LIMIT}, got {max_error!r}")
    if max_error and not model.lossless:
        raise CompressMLError("--max-error needs an MLLAE in lossless mode (e.g. the premade mllae-lossless)")


def encode(
    model: MLLAE, image: SourceImage, fingerprint: bytes, entropy: str = "none", exact: bool = True, max_error: int = 0
) -> Container:
    """``exact=False`` (lossless only) writes an older file, flag 1: the residual model in this
    machine's float arithmetic (for comparisons: benchmarks/determinism.py). ``max_error`` D > 0
    (lossless mode): near-lossless, every decoded sample within ±D of the 8-bit original, which
    is checked here before the file is made."""
    if entropy not in ENTROPY_STAGES:
        raise ContainerError(f"unknown entropy stage {entropy!r}; choose from {', '.join(ENTROPY_STAGES)}")
    check_max_error(model, max_error)
    g = model.geometry
    if model.lossless:
        check_lossless_memory(*image.rgb.shape[-2:], "coding")
    x = image.rgb[None].to(next(model.parameters()).device)
    codes, grid, (h, w) = model.encode(x)
    codes_np = codes.cpu().numpy().reshape(codes.shape[0], -1)
    payloads = [pack_codes(c, g.bits) for c in codes_np]
    if entropy != "none":
        cdfs = code_cdfs(model) if entropy == "rans" else None
        channel = np.repeat(np.arange(g.latent_channels), g.side * g.side)
        for i, raw in enumerate(payloads):
            if entropy == "lzma":
                coded = lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
            else:
                coded = _rans_encode(codes_np[i], channel, cdfs, 0)
            if len(coded) < len(raw):
                payloads[i] = coded
    # a grey image (one channel in the file, R = G = B) codes its residual once, in exact arithmetic
    grey = exact and model.lossless and image.channels in (1, 2) and bool((image.rgb[1:] == image.rgb[:1]).all())
    flag = (LOSSLESS_EXACT_GREY if grey else LOSSLESS_EXACT if exact else LOSSLESS_FLOAT) if model.lossless else LOSSY
    meta = _META.pack(g.block, g.bytes, g.bits, g.latent_channels, g.side, ENTROPY_STAGES[entropy], flag)
    sections = [(META, meta)]
    if entropy != "none":
        sections.append((LENGTHS, _varints(len(p) for p in payloads)))
    sections.append((BLOCKS, b"".join(payloads)))
    if model.lossless:
        x255 = (image.rgb * 255).round().long().numpy()
        with ExactArithmetic() if exact else contextlib.nullcontext():
            x_hat = model.decode(codes, grid, (h, w))
            strings, decoded = encode_residual(model, x_hat, x255, max_error, grey)
        error = int(np.abs(decoded - x255).max(initial=0))
        if error > max_error:  # cannot happen by construction; never write a file that breaks the bound
            raise CompressMLError(f"internal error: the decoded image would be {error} levels off (bound {max_error}); no file written")
        sections += [(MAX_ERROR, bytes([max_error]))] if max_error else []
        sections += [(RESIDUAL, string) for string in strings]
    sections += alpha_section(image)
    # lossless mode is exact at 8 bits per channel: a 16-bit source comes back as its 8-bit conversion
    bit_depth = 8 if model.lossless and image.alpha is None else image.bit_depth
    return Container(
        family="mllae",
        fingerprint=fingerprint,
        height=h,
        width=w,
        channels=image.channels,
        bit_depth=bit_depth,
        pad_h=(-h) % g.block,
        pad_w=(-w) % g.block,
        sections=sections,
    )


def file_max_error(container: Container) -> int:
    """The near-lossless bound D a file was made with (0: lossless or lossy)."""
    found = container.sections_of(MAX_ERROR)
    if not found:
        return 0
    if len(found) != 1 or len(found[0]) != 1 or not 1 <= found[0][0] <= MAX_ERROR_LIMIT:
        raise ContainerError("malformed near-lossless bound section")
    return found[0][0]


def block_payload_sizes(container: Container, model: MLLAE) -> list[int]:
    """Each block's payload in bytes (never above N), checked against the block data."""
    g = model.geometry
    entropy = _META.unpack(container.section(META))[5] if len(container.section(META)) == _META.size else -1
    count = ((container.height + container.pad_h) // g.block) * ((container.width + container.pad_w) // g.block)
    data_bytes = len(container.section(BLOCKS))
    if entropy == ENTROPY_STAGES["none"]:
        if count * g.code_bytes != data_bytes:  # checked before a list of count lengths exists
            raise ContainerError("block lengths do not match the block data")
        lengths = [g.code_bytes] * count
    else:
        if count > len(container.section(LENGTHS)):  # one byte at least per block
            raise ContainerError(f"the image claims {count} blocks; the block-length section holds fewer")
        lengths = _read_varints(container.section(LENGTHS), count)
    if any(n > g.code_bytes for n in lengths) or sum(lengths) != data_bytes:
        raise ContainerError("block lengths do not match the block data")
    return lengths


def decode(model: MLLAE, container: Container, fingerprint: bytes, region: tuple[int, int, int, int] | None = None) -> SourceImage:
    """The image of a file, or only its ``region`` (x, y, width, height): a lossy (MLLAE-N) file
    decodes just the blocks under it (random access: every block's payload is found from the block
    lengths and decoded alone); a lossless one decodes whole and is cropped."""
    if container.family != "mllae":
        raise ContainerError(f"this file holds a {container.family!r} code, not an MLLAE one")
    check_fingerprint(container, fingerprint)
    container.check_kinds({META, LENGTHS, BLOCKS, RESIDUAL, MAX_ERROR, ALPHA})
    g = model.geometry
    meta = container.section(META)
    if len(meta) != _META.size:
        raise ContainerError("malformed MLLAE metadata section")
    block, n_bytes, bits, channels, side, entropy, lossless = _META.unpack(meta)
    if (block, n_bytes, bits, channels, side) != (g.block, g.bytes, g.bits, g.latent_channels, g.side):
        raise ContainerError("the file's block geometry does not match the model")
    if (
        entropy not in ENTROPY_STAGES.values()
        or lossless not in (LOSSY, LOSSLESS_FLOAT, *EXACT_FLAGS)
        or (lossless != LOSSY) != model.lossless
    ):
        raise ContainerError("unknown entropy stage or lossless flag in the MLLAE metadata")
    h, w = container.height, container.width
    if region is not None:
        region_inside(region, h, w)
    if container.pad_h != (-h) % g.block or container.pad_w != (-w) % g.block:
        raise ContainerError("padding does not match the image size and the block size")
    if model.lossless:
        check_lossless_memory(h, w, "decoding")
    max_error = file_max_error(container)
    if max_error and lossless not in EXACT_FLAGS:
        raise ContainerError("a near-lossless bound in a file that is not in exact lossless mode")
    if lossless == LOSSLESS_EXACT_GREY and container.channels not in (1, 2):
        raise ContainerError("a residual coded once for grey in a colour file")
    # the block codes (int64) and the network's output, before either is allocated
    limits.check_decode_memory(
        h + container.pad_h, w + container.pad_w, limits.LAE_BYTES_PER_PIXEL + 8 * g.elements // (g.block * g.block) + 1
    )
    grid = ((h + container.pad_h) // g.block, (w + container.pad_w) // g.block)
    count = grid[0] * grid[1]
    if region is not None and lossless == LOSSY:  # random access: only the blocks under the region
        return _decode_region(model, container, entropy, grid, region)
    codes_t = _block_codes(model, container, entropy, range(count))
    if lossless in EXACT_FLAGS:
        with ExactArithmetic():
            x_hat = model.decode(codes_t, grid, (h, w))
            x255 = decode_residual(model, x_hat, container.sections_of(RESIDUAL), max_error, lossless == LOSSLESS_EXACT_GREY)
    elif lossless == LOSSLESS_FLOAT:  # older files: this machine's float arithmetic, as they were made
        x255 = decode_residual(model, model.decode(codes_t, grid, (h, w)), container.sections_of(RESIDUAL))
    else:
        with fixed_partition(model.decoder):
            x_hat = model.decode(codes_t, grid, (h, w))
    if model.lossless:
        x_hat = torch.from_numpy(x255[None]).float().div(255)
    image = SourceImage(rgb=x_hat[0].cpu(), channels=container.channels, bit_depth=container.bit_depth, alpha=decode_alpha(container, h, w))
    return image if region is None else image.crop(region)


def _block_codes(model: MLLAE, container: Container, entropy: int, indexes) -> torch.Tensor:
    """The integer codes of the blocks ``indexes`` (row-major block numbers), (len, C, side, side):
    each payload is found from the block lengths and decoded alone."""
    g = model.geometry
    data = container.section(BLOCKS)
    lengths = block_payload_sizes(container, model)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    cdfs = code_cdfs(model) if entropy == ENTROPY_STAGES["rans"] else None
    channel = np.repeat(np.arange(g.latent_channels), g.side * g.side)
    indexes = list(indexes)
    codes = np.empty((len(indexes), g.elements), dtype=np.int64)
    for k, i in enumerate(indexes):
        payload = data[starts[i] : starts[i + 1]]
        if len(payload) == g.code_bytes:
            codes[k] = unpack_codes(payload, g.elements, g.bits)
        elif entropy == ENTROPY_STAGES["lzma"]:
            try:
                raw = lzma.decompress(payload, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
            except lzma.LZMAError:
                raise ContainerError("corrupt lzma block payload") from None
            if len(raw) != g.code_bytes:
                raise ContainerError("an lzma block payload has the wrong size")
            codes[k] = unpack_codes(raw, g.elements, g.bits)
        else:
            codes[k] = _rans_decode(payload, channel, cdfs, 0)
    if codes.max(initial=0) >= 2**g.bits or codes.min(initial=0) < 0:
        raise ContainerError("block code values out of range")
    return torch.from_numpy(codes).view(len(indexes), g.latent_channels, g.side, g.side).to(next(model.parameters()).device)


def _decode_region(model: MLLAE, container: Container, entropy: int, grid: tuple[int, int], region) -> SourceImage:
    """The blocks that cover the region, decoded as a whole decode decodes them (in decoder batches
    of a fixed size, in fixed bands: :meth:`MLLAE.decode`), then cropped."""
    b = model.geometry.block
    x, y, rw, rh = region
    rows, cols = range(y // b, (y + rh - 1) // b + 1), range(x // b, (x + rw - 1) // b + 1)
    codes = _block_codes(model, container, entropy, [r * grid[1] + c for r in rows for c in cols])
    with fixed_partition(model.decoder):
        x_hat = model.decode(codes, (len(rows), len(cols)), (len(rows) * b, len(cols) * b))
    top, left = rows[0] * b, cols[0] * b
    # the alpha plane (zlib, the whole image) is cropped to the same region
    covered = SourceImage(rgb=x_hat[0].cpu(), channels=container.channels, bit_depth=container.bit_depth)
    image = covered.crop((x - left, y - top, rw, rh))
    alpha = decode_alpha(container, container.height, container.width)
    image.alpha = None if alpha is None else alpha[y : y + rh, x : x + rw].copy()
    return image
