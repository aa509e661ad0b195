"""Decoding that gives the same result whatever runs it.

A learned codec's decoder recomputes, from bits already decoded, the numbers that choose the next
CDF (the hyper-decoder's scales and means, the context models' predictions). If its float arithmetic
differs from the encoder's by one rounding, a scale can cross a CDF-table boundary and the entropy
decoder reads garbage from there on (CompressAI #54, #279; tensorflow-compression #41). Float
reductions (convolutions) give results that depend on their summation order: on the thread count,
the instruction set, the library and the device.

Three tools. The first two serve the LAE codec's ``exact`` decoding mode (``compressml.codec.lae``):

:func:`fixed_point_parameters`
    The layers that choose CDFs compute in integer arithmetic. Each convolution of those paths
    rounds its input to a fixed-point grid (``frac`` fractional bits, clamped to ``2**INT_BITS``)
    and its weights to 16-bit integers (a power-of-two scale per output channel), and convolves
    them in float64, where every product and every partial sum is an integer below 2**53: exact
    whatever the order of the additions, so the same on every thread count, instruction set and
    device. Rescaling by a power of two, the bias addition and the element-wise activations
    (ReLU, LeakyReLU, pixel shuffles) are single IEEE operations, correctly rounded everywhere.
    Encoder and decoder both use this path, so the choice of every CDF is identical by
    construction; the weights are the trained ones (rounded to 16 bits), so the rate barely moves.

:func:`fixed_partition`
    The synthesis transform (pixels, not CDFs) keeps float32 and its fast kernels, but every
    convolution is cut into bands of a fixed number of output rows, each computed by one thread
    (the library kernels single-threaded), the bands shared among a pool of the usual number of
    threads. No sum is split between threads and the cut does not depend on how many there are:
    the same pixels whatever the thread count, at about the speed of the library's own
    threading. Across instruction sets or devices the kernels themselves differ (a few pixels off
    by one level; measured in benchmarks/determinism.py). The MLLAE decoder's lossy blocks use it
    too; RED shares fixed tiles among threads instead (``compressml.codec.tiling``).

:class:`ExactArithmetic`
    A whole network in exact float32 arithmetic, for the MLLAE lossless mode, where the
    reconstruction and the residual model (many layers at full resolution) choose the CDFs and
    the centres: float64 would cost five times float32 there. Each convolution rounds its input
    to 10-bit integers on a power-of-two grid fitted to the input's largest magnitude, and its
    weights to integers whose absolute sum per output channel is at most 2**14: every partial sum
    is an integer within 2**24, exact in float32 in any order, at oneDNN's speed. tanh is computed
    from basic operations (:func:`exact_tanh`). On Kodak the rate stays within 0.2 % of float
    arithmetic and decoding within a few per cent of its time (docs/FORMAT.md §7.4.1).
"""

from __future__ import annotations

import functools
import math
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

WEIGHT_BITS = 16  # signed weights: |w| <= 2**15 - 1 after scaling
INT_BITS = 12  # activations of the fixed-point path are clamped to |x| <= 2**12
EXACT_BITS = 52  # every partial sum stays below 2**52, inside float64's exact integers
MIN_FRAC_BITS = 6
ENCODER_PATHS = ("g_a", "h_a", "g_s")  # outside the CDF-choosing path


class FixedPointConv(nn.Module):
    """A Conv2d / ConvTranspose2d (masked ones included) computed exactly in fixed point (see the
    module docstring); ``forward(x, padding)`` may override the layer's padding (the serial
    context model convolves a crop without padding)."""

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d):
        super().__init__()
        self.transposed = isinstance(conv, nn.ConvTranspose2d)
        w = conv.weight.detach()
        if hasattr(conv, "mask"):  # CompressAI's masked convolutions mask in their forward
            w = w.double() * conv.mask.double()
        weight_q, unscale, self.frac = quantized_weights(w, self.transposed)
        self.register_buffer("weight_q", weight_q, persistent=False)
        self.register_buffer("unscale", unscale, persistent=False)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().double().view(1, -1, 1, 1), persistent=False)
        self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
        self.padding = conv.padding
        self.output_padding = getattr(conv, "output_padding", 0)

    def forward(self, x: torch.Tensor, padding=None) -> torch.Tensor:
        padding = self.padding if padding is None else padding
        if self.transposed:
            conv = functools.partial(
                F.conv_transpose2d,
                stride=self.stride,
                padding=padding,
                output_padding=self.output_padding,
                groups=self.groups,
                dilation=self.dilation,
            )
        else:
            conv = functools.partial(F.conv2d, stride=self.stride, padding=padding, dilation=self.dilation, groups=self.groups)
        return _fixed_point_apply(conv, x, self.weight_q, self.unscale, self.frac, self.bias)


def quantized_weights(w: torch.Tensor, transposed: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A convolution's weights as 16-bit integers (float64), the power of two per output channel
    that undoes their scaling and the input's fractional bits, and those fractional bits: the
    most that keep every partial sum below 2**52 (see the module docstring)."""
    w = w.detach().double()
    out_dim = 1 if transposed else 0
    reduce = [d for d in range(w.dim()) if d != out_dim]
    amax = w.abs().amax(dim=reduce)
    limit = 2 ** (WEIGHT_BITS - 1) - 1
    shift = torch.where(amax > 0, torch.floor(torch.log2(limit / amax.clamp_min(1e-300))), torch.zeros_like(amax))
    shape = [1] * w.dim()
    shape[out_dim] = -1
    fan_in = w.numel() // w.shape[out_dim]  # inputs per output (an upper bound for a transposed one)
    frac = EXACT_BITS - (WEIGHT_BITS - 1) - math.ceil(math.log2(max(fan_in, 2))) - INT_BITS
    if frac < MIN_FRAC_BITS:
        raise ValueError(f"layer too wide for exact fixed point ({fan_in} inputs per output)")
    weight_q = torch.round(w * torch.exp2(shift).view(shape))
    return weight_q, torch.exp2(-(shift + frac)).view(1, -1, 1, 1), frac


def _fixed_point_apply(
    conv, x: torch.Tensor, weight_q: torch.Tensor, unscale: torch.Tensor, frac: int, bias: torch.Tensor | None
) -> torch.Tensor:
    """``conv`` (no bias) of ``x`` on the 2**-frac grid with integer weights, in float64: exact."""
    bound = 2.0 ** (frac + INT_BITS)
    q = torch.round(x.double() * 2.0**frac).clamp_(-bound, bound)
    with _library_kernels_exact(q):
        y = conv(q, weight_q.to(q.device))
    y = y * unscale.to(q.device)  # a power of two: exact
    return y + bias.double().view(1, -1, 1, 1) if bias is not None else y


@contextmanager
def _library_kernels_exact(x: torch.Tensor):
    """cuDNN may pick FFT or Winograd convolutions, which round; the plain CUDA kernels do not, as
    long as their matrix products keep float32 (no TF32: 10-bit mantissas would round the weights)."""
    if x.device.type == "cuda":
        tf32 = torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            with torch.backends.cudnn.flags(enabled=False):
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    else:
        yield


def _cdf_path_convs(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, conv) of every convolution outside g_a, h_a and g_s."""
    found = []
    for name, module in model.named_modules():
        if any(part in ENCODER_PATHS for part in name.split(".")):
            continue
        for child_name, child in module.named_children():
            if isinstance(child, (nn.Conv2d, nn.ConvTranspose2d)) and child_name not in ENCODER_PATHS:
                found.append((module, child_name, child))
    return found


_FIXED: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def _fixed_point(conv: nn.Module) -> FixedPointConv:
    """The fixed-point form of ``conv``, made once per state of its weights."""
    key = tuple((t.data_ptr(), t._version) for t in (conv.weight, conv.bias, getattr(conv, "mask", None)) if t is not None)
    cached = _FIXED.get(conv)
    if cached is None or cached[0] != key:
        cached = _FIXED[conv] = (key, FixedPointConv(conv))
    return cached[1]


@contextmanager
def fixed_point_parameters(model: nn.Module):
    """For a while, every convolution that chooses CDFs (all outside ``g_a``, ``h_a``, ``g_s``)
    computes exactly in fixed point (:class:`FixedPointConv`)."""
    swapped = _cdf_path_convs(model)
    try:
        for parent, attr, conv in swapped:
            if hasattr(conv, "mask"):  # as CompressAI's masked forward does (the weights, and their fingerprint, as in mode compressai)
                conv.weight.data = conv.weight.data * conv.mask
            setattr(parent, attr, _fixed_point(conv))
        yield model
    finally:
        for parent, attr, conv in swapped:
            setattr(parent, attr, conv)


# -- a whole network in exact arithmetic ----------------------------------------------------------


def exact_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh from additions, multiplications and divisions only (each correctly rounded, so the same
    on every machine, unlike a library's vectorised tanh): a Padé approximant at x / 2**10, then ten
    doublings tanh(2a) = 2 tanh(a) / (1 + tanh(a)**2). Within 1e-15 of tanh, in float64."""
    x = x.double().clamp(-20.0, 20.0)
    t = x * 2.0**-10  # a power of two: exact
    t2 = t * t
    y = t * (t2 + 15.0) / (t2 * 6.0 + 15.0)
    for _ in range(10):
        y = (y * 2.0) / (y * y + 1.0)
    return y


# float32 holds every integer up to 2**24: a convolution of integer inputs |q| <= 2**INPUT_BITS by
# integer weights whose absolute sum per output is at most 2**WEIGHT_SUM_BITS has every partial sum,
# in any order, within 2**24 (INPUT_BITS + WEIGHT_SUM_BITS = 24): exact in float32, at oneDNN's speed.
# The split (10 + 14) is the measured best of a few on Kodak with the MLLAE lossless model (a rate
# within 0.2 % of float arithmetic; 15-bit inputs in two 8-bit limbs gave the same rate at twice the cost).
FLOAT32_EXACT_BITS = 24
INPUT_BITS = 10
WEIGHT_SUM_BITS = FLOAT32_EXACT_BITS - INPUT_BITS


def sum_bounded_weights(w: torch.Tensor, transposed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolution's weights as integers (float32) whose absolute sum per output channel is at most
    2**WEIGHT_SUM_BITS, and the power of two per output channel that undoes their scaling. Bounding
    the sum rather than the largest weight keeps about 9 to 11 bits for the largest weight of a
    typical 3x3 layer. A transposed convolution's output sums fewer taps than the bound counts."""
    w = w.detach().double()
    out_dim = 1 if transposed else 0
    w_out = w.transpose(0, 1) if transposed else w  # (out, in, kh, kw)
    l1 = w_out.abs().flatten(1).sum(1)
    fan_in = w_out[0].numel()
    budget = 2.0**WEIGHT_SUM_BITS
    room = budget - fan_in / 2  # rounding adds at most 1/2 per weight
    if room < 1:
        raise ValueError(f"layer too wide for exact float32 convolution ({fan_in} inputs per output)")
    shift = torch.where(l1 > 0, torch.floor(torch.log2(room / l1.clamp_min(1e-300))), torch.zeros_like(l1))
    shape = [1] * w.dim()
    shape[out_dim] = -1
    weight_q = torch.round(w * torch.exp2(shift).view(shape))
    q_out = weight_q.transpose(0, 1) if transposed else weight_q
    if not bool((q_out.abs().flatten(1).sum(1) <= budget).all()):  # cannot happen; the exactness rests on it
        raise AssertionError("weight sum above the exact float32 bound")
    return weight_q.float(), torch.exp2(-shift).float().view(1, -1, 1, 1)


def _integer_weights(weight: torch.Tensor, transposed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sum_bounded_weights`, kept on the tensor for as long as its values stay the same."""
    key = (weight.data_ptr(), weight._version, transposed)
    cached = getattr(weight, "_compressml_integer_weights", None)
    if cached is None or cached[0] != key:
        cached = (key, sum_bounded_weights(weight, transposed))
        weight._compressml_integer_weights = cached
    return cached[1]


def exact_float32_convolution(conv, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool) -> torch.Tensor:
    """``conv`` of ``x`` by ``weight`` in float32, the same to the bit wherever it runs: ``x`` rounded
    to integers of at most 2**INPUT_BITS on a power-of-two grid fitted to its largest magnitude (a
    maximum does not depend on the order it is taken in), convolved with :func:`sum_bounded_weights`
    (integer sums within 2**24: exact in any order), then rescaled by a power of two (exact) and
    biased (one correctly rounded addition)."""
    weight_q, unscale = _integer_weights(weight, transposed)
    x = x.float()
    if x.numel():
        low, high = torch.aminmax(x)
        amax = max(-float(low), float(high))
    else:
        amax = 0.0
    exponent = math.frexp(amax)[1] if 0 < amax < math.inf else 0  # amax < 2**exponent
    frac = INPUT_BITS - exponent  # |x| * 2**frac < 2**INPUT_BITS: |q| <= 2**INPUT_BITS after rounding
    q = torch.mul(x, 2.0**frac).round_()
    with _library_kernels_exact(x):
        y = conv(q, weight_q.to(x.device))
    y.mul_(unscale.to(x.device) * 2.0**-frac)  # a power of two: exact
    return y.add_(bias.float().view(1, -1, 1, 1)) if bias is not None else y


class ExactArithmetic(TorchFunctionMode):
    """For a while, every convolution is exact (:func:`exact_float32_convolution`) and tanh is
    :func:`exact_tanh`: with the element-wise arithmetic (single IEEE operations) a network whose output is
    the same to the bit on every thread count, instruction set and device. Used where a whole network
    chooses CDFs: the MLLAE lossless residual model and the reconstruction it starts from."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv2d or func is torch.conv_transpose2d:
            bound = _bind(func, args, kwargs)
            x, weight, bias = bound.pop("input"), bound.pop("weight"), bound.pop("bias", None)
            return exact_float32_convolution(functools.partial(func, **bound), x, weight, bias, func is torch.conv_transpose2d)
        if func is torch.tanh or func is torch.Tensor.tanh:
            return exact_tanh(args[0] if args else kwargs["input"])
        return func(*args, **kwargs)


def build_indexes(gaussian_conditional, scales: torch.Tensor) -> torch.Tensor:
    """CompressAI's ``GaussianConditional.build_indexes`` in one pass: the number of scale-table
    entries (the last excepted) below each scale, with the same comparisons, so the same indexes,
    as its loop of one pass per entry."""
    gc = gaussian_conditional
    scales = gc.lower_bound_scale(scales)
    table = gc.scale_table[:-1].to(device=scales.device, dtype=scales.dtype).contiguous()
    return torch.searchsorted(table, scales.contiguous(), right=False).int()


# -- pixels: a fixed partition of every convolution ---------------------------------------------------

BAND_ROWS = 32  # output rows per band: fixed, never derived from the thread count


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _conv2d_bands(pool, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    kh, kw = weight.shape[-2:]
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        elif padding == "same" and (sh, sw) == (1, 1):
            padding = None
        else:
            return None
    if padding is None:  # "same": total d(k-1), the extra one at the end
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    else:
        ph, pw = _pair(padding)
        pads = (pw, pw, ph, ph)
    xp = F.pad(x, pads) if any(pads) else x
    out_h = (xp.shape[-2] - dh * (kh - 1) - 1) // sh + 1
    if out_h <= 0:
        return None

    def band(o0: int, o1: int) -> torch.Tensor:
        rows = xp[..., o0 * sh : (o1 - 1) * sh + dh * (kh - 1) + 1, :]
        return F.conv2d(rows, weight, bias, (sh, sw), 0, (dh, dw), groups)

    return _gather(pool, band, out_h)


def _conv_transpose2d_bands(pool, x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = _pair(stride), _pair(padding), _pair(output_padding), _pair(dilation)
    kh = weight.shape[-2]
    h = x.shape[-2]
    out_h = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    reach = dh * (kh - 1)
    if out_h <= 0 or reach + 1 < sh:
        return None

    def band(o0: int, o1: int) -> torch.Tensor:
        f0, f1 = o0 + ph, o1 + ph  # rows of the uncropped output
        i0, i1 = max(0, -(-(f0 - reach) // sh)), min(h - 1, (f1 - 1) // sh)
        made = (i1 - i0) * sh + reach + 1  # rows the slice gives, from i0 * sh
        extra = max(0, f1 - i0 * sh - made)
        out = F.conv_transpose2d(x[..., i0 : i1 + 1, :], weight, bias, (sh, sw), (0, pw), (extra, opw), groups, (dh, dw))
        return out[..., f0 - i0 * sh : f1 - i0 * sh, :]

    return _gather(pool, band, out_h)


def _gather(pool, band, out_h: int) -> torch.Tensor:
    """The bands of ``out_h`` rows, each computed and copied into the output by one worker (the
    output is made by the first to finish: no single-threaded concatenation afterwards)."""
    rows = pool.rows
    cuts = [(o, min(o + rows, out_h)) for o in range(0, out_h, rows)]
    if len(cuts) == 1:
        return band(*cuts[0])
    out: list[torch.Tensor] = []
    lock = threading.Lock()
    grad = torch.is_grad_enabled()  # thread-local: the workers take the caller's

    def fill(cut: tuple[int, int]) -> None:
        with torch.set_grad_enabled(grad):
            part = band(*cut)
        with lock:
            if not out:
                out.append(part.new_empty((*part.shape[:-2], out_h, part.shape[-1])))
        out[0][..., cut[0] : cut[1], :] = part

    list(pool.map(fill, cuts))
    return out[0]


class _FixedPartition(TorchFunctionMode):
    def __init__(self, pool):
        super().__init__()
        self.pool = pool

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv2d or func is torch.conv_transpose2d:
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, torch.Tensor) and x.dim() == 4 and x.device.type == "cpu" and not x.requires_grad:
                bands = _conv2d_bands if func is torch.conv2d else _conv_transpose2d_bands
                out = bands(self.pool, *args, **kwargs)
                if out is not None:
                    return out
        return func(*args, **kwargs)


class _Bands:
    """The worker pool and the band height of a :func:`fixed_partition`."""

    def __init__(self, executor: ThreadPoolExecutor, rows: int):
        self.executor, self.rows = executor, rows

    def map(self, fn, items):
        return self.executor.map(fn, items)


@contextmanager
def fixed_partition(module: nn.Module | None = None, rows: int = BAND_ROWS):
    """For a while, every CPU convolution runs in bands of ``rows`` output rows (a constant of the
    caller, never derived from the thread count), each on one thread, and every other operation
    single-threaded: results that do not depend on the thread count (see the module docstring).
    ``module``: its pixel-wise layers (GDN, activations) run in bands as a whole. On other devices
    this changes nothing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # fresh worker threads: they take the single-thread setting when they start
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="compressml-band") as executor:
            pool = _Bands(executor, rows)
            with _banded_pointwise(module, pool), _FixedPartition(pool):
                yield
    finally:
        torch.set_num_threads(threads)


_ACTIVATIONS = (nn.PReLU, nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Mish)


def _pointwise_modules(module: nn.Module) -> list[nn.Module]:
    """The layers that act on each pixel alone (GDN / IGDN: a 1x1 convolution and element-wise
    operations; activations): run in bands as a whole, their work is shared among the threads too
    (element-wise results do not depend on how the work is cut)."""
    from compressai.layers import GDN

    return [m for m in module.modules() if isinstance(m, (GDN, *_ACTIVATIONS))]


@contextmanager
def _banded_pointwise(module: nn.Module | None, pool):
    layers = _pointwise_modules(module) if module is not None else []

    def banded(layer):
        forward = type(layer).forward.__get__(layer)

        def run(x: torch.Tensor) -> torch.Tensor:
            if x.dim() != 4 or x.device.type != "cpu":
                return forward(x)
            return _gather(pool, lambda o0, o1: forward(x[..., o0:o1, :]), x.shape[-2])

        return run

    try:
        for layer in layers:
            layer.forward = banded(layer)
        yield
    finally:
        for layer in layers:
            del layer.forward


class FixedPartitionTransform(nn.Module):
    """``inner`` run under :func:`fixed_partition` (a synthesis transform with thread-count-free pixels);
    its pixel-wise layers (GDN) run in bands as a whole."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float64:  # latents rounded around fixed-point means: float32 like the weights
            x = x.float()
        if x.device.type != "cpu":
            return self.inner(x)
        with fixed_partition(self.inner):
            return self.inner(x)


# -- a probe of the drift: the same convolutions, summed in another order -------------------------------


class ReorderedReductions(TorchFunctionMode):
    """For a while, every convolution (groups 1) sums its input channels in another order: the
    first half and the second half separately, then added. Mathematically the same; in float
    arithmetic a different rounding, the kind another thread count, instruction set or device
    gives. benchmarks/determinism.py and the tests use it to show which results move."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv2d or func is torch.conv_transpose2d:
            bound = _bind(func, args, kwargs)
            x, weight, c = bound["input"], bound["weight"], bound["input"].shape[1]
            if bound.get("groups", 1) == 1 and c >= 2 and x.dim() == 4:
                half = c // 2
                parts = []
                for sl, bias in ((slice(0, half), bound.get("bias")), (slice(half, c), None)):
                    w = weight[:, sl] if func is torch.conv2d else weight[sl]
                    parts.append(func(**{**bound, "input": x[:, sl], "weight": w, "bias": bias}))
                return parts[1] + parts[0]
        return func(*args, **kwargs)


_CONV_ARGS = {
    torch.conv2d: ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    torch.conv_transpose2d: ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"),
}


def _bind(func, args, kwargs) -> dict:
    return {**dict(zip(_CONV_ARGS[func], args)), **kwargs}
