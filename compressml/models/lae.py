"""LAE: lossy autoencoders with entropy-coded latents, on CompressAI's reference architectures.

The networks are CompressAI's own classes, unchanged, so their state dicts stay
loadable by CompressAI. This module adds what every caller needs around them:
building from a plain spec, any image size (edge padding to the network's stride,
cropped back), and a compress/decompress pair that carries the original size.

Channel counts: ``channels`` is CompressAI's ``N`` (width of the transforms),
``latent_channels`` its ``M`` (channels of the coded latent y). They are named
apart from MLLAE-N's byte budget on purpose.
"""

from __future__ import annotations

import functools
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from compressai.entropy_models import GaussianConditional
from compressai.models import FactorizedPrior, MeanScaleHyperprior, ScaleHyperprior
from compressai.models.base import CompressionModel, SimpleVAECompressionModel
from compressai.models.google import JointAutoregressiveHierarchicalPriors

from compressml.errors import ConfigError
from compressml.models.padding import crop_to, pad_to_multiple
from compressml.models.variable_rate import (
    DEFAULT_ANCHORS,
    DEFAULT_RANGE,
    GainedAnalysis,
    GainedSynthesis,
    conditioned,
    make_variable_rate,
    rate_gain_of,
)

# -- the architecture registry ----------------------------------------------------------------------
# Every fixed-rate image model that CompressAI registers (compressai.registry.MODELS) is an LAE
# architecture; its facts (constructor widths, stride, context model, what training supports) are read
# off the class, so a new CompressAI image model needs no code here. The variable-rate (-vbr) classes
# and the point-cloud and video models are left out. Three names of earlier compressml releases stay
# as aliases (checkpoints, bundles and curves use them).

IMAGE_MODEL_MODULES = ("compressai.models.google", "compressai.models.waseda", "compressai.models.sensetime")
ALIASES = {"factorized": "bmshj2018-factorized", "hyperprior": "bmshj2018-hyperprior", "mean_scale": "mbt2018-mean"}
# the classes whose forward compressml re-implements (float32 entropy models under autocast, ste) and
# whose latents an encoder can refine (no context model): CompressAI's 2018 factorized and hyperpriors
REFERENCE_CLASSES = (FactorizedPrior, ScaleHyperprior)
MAX_WIDTH = 1024  # channels and latent_channels (bundle manifests are checked against it too)


@dataclass(frozen=True)
class LAEArchitecture:
    """One CompressAI image model as compressml trains and codes it.

    ``widths`` are the constructor's width arguments: ``("N", "M")``, or ``("N",)`` where M = N
    (cheng2020); ``stride`` the multiple an input side must be (the hyper-latent's downsampling);
    ``context`` the context model of y: ``none``, ``serial`` (an autoregressive masked convolution,
    coded pixel by pixel), ``checkerboard`` (two parallel passes) or ``channel-groups`` (ELIC's
    uneven channel groups, each with a checkerboard)."""

    name: str
    registry_name: str
    cls: type
    widths: tuple[str, ...]
    stride: int
    context: str

    @property
    def hyper(self) -> bool:
        return not issubclass(self.cls, FactorizedPrior)

    @property
    def refinable(self) -> bool:
        """Encoder-side latent refinement (``compress --refine``) needs a model without a context model."""
        return issubclass(self.cls, REFERENCE_CLASSES) and self.context == "none"

    @property
    def ste_refusal(self) -> str | None:
        """Why ``quantization=ste`` cannot train this architecture (None: it can)."""
        return self.quantization_refusal("ste")

    def quantization_refusal(self, quantization: str) -> str | None:
        """Why ``quantization`` cannot train this architecture (None: it can)."""
        if quantization == "ste" and self.context == "serial":
            return (
                f"{self.name}: quantization=ste is not available: its serial context model predicts the "
                "means from the very latents that would be rounded around them; use quantization=noise"
            )
        if quantization == "noise" and self.context in ("checkerboard", "channel-groups"):
            return (
                f"{self.name}: quantization=noise is not available: CompressAI's checkerboard latent codec "
                "always gives the decoder y rounded around its means (straight-through); use quantization=ste"
            )
        return None

    @property
    def serial(self) -> bool:
        return self.context == "serial"

    @property
    def variant(self) -> str:
        """Its config: ``model=lae/<variant>`` (conf/model/lae/<variant>.yaml)."""
        return self.name.replace("-", "_")


def _context_of(cls: type) -> str:
    """The context model a class builds, read off the latent codecs its constructor names."""
    if issubclass(cls, JointAutoregressiveHierarchicalPriors):
        return "serial"
    names = set(cls.__init__.__code__.co_names)
    if "ChannelGroupsLatentCodec" in names:
        return "channel-groups"
    if "CheckerboardLatentCodec" in names:
        return "checkerboard"
    return "none"


def _widths_of(cls: type) -> tuple[str, ...]:
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return tuple(w for w in ("N", "M") if w in params)


@functools.cache
def architectures() -> dict[str, LAEArchitecture]:
    """Every LAE architecture by name: CompressAI's registry names, plus the three aliases."""
    from compressai.registry import MODELS

    found = {}
    for registry_name, cls in sorted(MODELS.items()):
        if getattr(cls, "__module__", "") not in IMAGE_MODEL_MODULES or registry_name.endswith("-vbr"):
            continue
        stride = 16 if issubclass(cls, FactorizedPrior) else 64  # y at 1/16, the hyper-latent z at 1/64
        found[registry_name] = LAEArchitecture(registry_name, registry_name, cls, _widths_of(cls), stride, _context_of(cls))
    for alias, registry_name in ALIASES.items():
        a = found[registry_name]
        found[alias] = LAEArchitecture(alias, registry_name, a.cls, a.widths, a.stride, a.context)
    return found


def variants() -> list[LAEArchitecture]:
    """One entry per architecture (an alias in place of the registry name it stands for): what
    ``conf/model/lae/<variant>.yaml`` offers, and what the tests and benchmarks run over."""
    aliased = set(ALIASES.values())
    return [a for name, a in architectures().items() if name not in aliased]


def architecture(name: str) -> LAEArchitecture:
    """The architecture called ``name``; an unknown name is a one-line error listing the known ones."""
    known = architectures()
    if name not in known:
        raise ConfigError(f"unknown LAE architecture {name!r}; choose from {', '.join(known)}")
    return known[name]


def architecture_of(model: CompressionModel) -> LAEArchitecture:
    """The architecture of a built model (by its exact class; the alias where one exists)."""
    matches = [a for a in architectures().values() if type(model) is a.cls]
    if not matches:
        raise ConfigError(f"{type(model).__name__} is not one of CompressAI's fixed-rate image models")
    return next((a for a in matches if a.name in ALIASES), matches[0])


def elic_groups(latent_channels: int) -> list[int]:
    """ELIC's uneven channel groups for M latent channels: CompressAI's [16, 16, 32, 64, M - 128] at
    M = 320, the same proportions (each at least 1) at other widths."""
    if latent_channels >= 160:
        return [16, 16, 32, 64, latent_channels - 128]
    if latent_channels < 5:
        raise ConfigError(f"ELIC needs latent_channels >= 5 (five channel groups), got {latent_channels}")
    first = [max(1, round(latent_channels * f)) for f in (0.05, 0.05, 0.1, 0.2)]
    return first + [latent_channels - sum(first)]


def build_lae(
    arch: str,
    channels: int = 128,
    latent_channels: int | None = 192,
    groups: list[int] | None = None,
    variable_rate: bool = False,
    lmbda_range: list[float] | tuple[float, float] = DEFAULT_RANGE,
    anchors: int = DEFAULT_ANCHORS,
) -> CompressionModel:
    """A fresh CompressAI model of architecture ``arch`` (see :func:`architectures`).

    ``channels`` is CompressAI's N, ``latent_channels`` its M (None, or equal to ``channels``, for the
    architectures whose M is N); ``groups``: ELIC's channel groups (default: :func:`elic_groups`).
    ``variable_rate``: one network for every λ in ``lmbda_range``, gains at ``anchors`` values of
    log λ (:mod:`compressml.models.variable_rate`)."""
    model = _build_fixed(arch, channels, latent_channels, groups)
    if not variable_rate:
        return model
    if not (
        isinstance(lmbda_range, (list, tuple))
        and len(lmbda_range) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in lmbda_range)
    ):
        raise ConfigError(f"model.lmbda_range must be two numbers [min, max], got {lmbda_range!r}")
    latent = int(model.M) if hasattr(model, "M") else _latent_channels(model)
    return make_variable_rate(model, latent, tuple(lmbda_range), anchors)


def _build_fixed(arch: str, channels: int, latent_channels: int | None, groups: list[int] | None) -> CompressionModel:
    spec = architecture(arch)
    latent_channels = channels if latent_channels is None else latent_channels
    for what, value in (("channels", channels), ("latent_channels", latent_channels)):
        if type(value) is not int or not 1 <= value <= MAX_WIDTH:
            raise ConfigError(f"LAE {what} must be an integer in 1..{MAX_WIDTH}, got {value!r}")
    kwargs = {"N": channels}
    if "M" in spec.widths:
        kwargs["M"] = latent_channels
    elif latent_channels != channels:
        raise ConfigError(
            f"{arch} has as many latent channels as channels (M = N): set latent_channels to {channels} or null, not {latent_channels}"
        )
    if spec.context == "channel-groups":
        groups = list(groups) if groups is not None else elic_groups(latent_channels)
        if any(type(g) is not int or g < 1 for g in groups) or sum(groups) != latent_channels:
            raise ConfigError(f"{arch}: groups must be positive integers summing to latent_channels ({latent_channels}), got {groups}")
        kwargs["groups"] = groups
    elif groups is not None:
        raise ConfigError(f"{arch} has no channel groups (groups is for the elic2022 models)")
    return spec.cls(**kwargs)


def net_spec(model: CompressionModel) -> dict:
    """The spec :func:`build_lae` rebuilds ``model`` from (arch, widths, groups), read off the weights."""
    spec = architecture_of(model)
    state = model.state_dict()
    channels = int(next(v for k, v in state.items() if k.startswith("g_a.") and v.dim() == 4).shape[0])
    latent = int(model.M) if hasattr(model, "M") else int(_latent_channels(model))
    out = {"arch": spec.name, "channels": channels, "latent_channels": latent}
    if spec.context == "channel-groups":
        out["groups"] = list(model.groups)
    gain = rate_gain_of(model)
    if gain is not None:
        out.update(variable_rate=True, lmbda_range=list(gain.lmbda_range), anchors=gain.anchors)
    return out


def _latent_channels(model: CompressionModel) -> int:
    """M: the channels of y, the output of the synthesis transform's first layer's input."""
    first = next(m for m in model.g_s.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)))
    return first.in_channels


def latent_count(model: CompressionModel) -> int:
    """How many coded latents a v1 file holds: y, plus z for the hyperpriors."""
    return 2 if architecture_of(model).hyper else 1


def stride_of(model: CompressionModel) -> int:
    """The multiple an input's height and width must be for ``model``."""
    try:
        return architecture_of(model).stride
    except ConfigError:
        return 64  # the largest stride of CompressAI's image models; always safe


def latent_size(model: CompressionModel, height: int, width: int) -> tuple[int, int]:
    """(h, w) of y for an image: the size padded to the model's stride, over the synthesis factor."""
    stride = stride_of(model)
    return (-(-height // stride) * stride // SYNTHESIS_FACTOR, -(-width // stride) * stride // SYNTHESIS_FACTOR)


@dataclass
class LAEPayload:
    """What :func:`compress` produces: the coded strings plus everything needed to decode them."""

    strings: list[list[bytes]]  # CompressAI's string groups (y then z; ELIC: one per channel-group pass), one bytes per image
    shape: tuple | dict  # CompressAI's "shape" as plain ints (see plain_shape): (h, w) of the top latent, or a tree
    size: tuple[int, int]  # original (H, W) before padding

    @property
    def num_bytes(self) -> int:
        return sum(len(s) for group in self.strings for s in group)


QUANTIZATIONS = ("noise", "ste")


def _ste_round(x: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """round(x - offset) + offset forward, identity backward (straight-through)."""
    if offset is not None:
        return _ste_round(x - offset) + offset
    return x + (torch.round(x) - x).detach()


def _full_precision(x: torch.Tensor):
    """A context with autocast off on ``x``'s device: what runs in it runs in float32."""
    return torch.autocast(x.device.type, enabled=False)


def _forward(model: CompressionModel, x: torch.Tensor, quantization: str) -> dict:
    """CompressAI's forward of the three reference architectures, with two changes.

    1. The entropy models always run in float32. Under mixed precision (``bf16-mixed``,
       ``16-mixed``) CompressAI's forward computes a likelihood as the difference of two
       nearly equal CDF values in half precision, which loses most of its digits. So do the
       first layer of g_a and the last of g_s, which see the pixels: bfloat16 holds [0, 1]
       to about one grey level, and the distortion's gradient (the small residual x_hat - x)
       would drown in that rounding. The inner layers (where the time goes) keep the lower
       precision.
    2. ``quantization="ste"`` (training only): the likelihoods still see additive uniform
       noise, but the decoders get the latents rounded as at coding time (around the
       predicted means, or the bottleneck medians), with a straight-through gradient:
       the "mixed" quantization of Minnen & Singh (2020), which removes the train/test
       mismatch of noise. ``"noise"`` is CompressAI's own behaviour.
    The state dict and the coded format are CompressAI's, unchanged.
    """
    if isinstance(model, (JointAutoregressiveHierarchicalPriors, SimpleVAECompressionModel)):
        refusal = architecture_of(model).quantization_refusal(quantization) if model.training else None
        if refusal:
            raise ConfigError(refusal)
        if isinstance(model, JointAutoregressiveHierarchicalPriors):
            return _forward_autoregressive(model, x)
        return _forward_latent_codec(model, x)
    if not isinstance(model, REFERENCE_CLASSES):
        return model(x)  # another CompressAI model: its own forward
    ste = quantization == "ste" and model.training
    y = _analysis(model.g_a, x)
    if isinstance(model, FactorizedPrior):
        with _full_precision(y):
            y_hat, y_likelihoods = model.entropy_bottleneck(y)
        if ste:
            y_hat = _ste_round(y, model.entropy_bottleneck._get_medians())
        return {"x_hat": _synthesis(model.g_s, y_hat), "likelihoods": {"y": y_likelihoods}}

    mean_scale = isinstance(model, MeanScaleHyperprior)
    z = model.h_a(y if mean_scale else torch.abs(y)).float()
    with _full_precision(z):
        z_hat, z_likelihoods = model.entropy_bottleneck(z)
    if ste:
        z_hat = _ste_round(z, model.entropy_bottleneck._get_medians())
    params = model.h_s(z_hat).float()
    scales, means = params.chunk(2, 1) if mean_scale else (params, None)
    with _full_precision(y):
        y_hat, y_likelihoods = model.gaussian_conditional(y, scales, means=means)
    if ste:
        y_hat = _ste_round(y, means)
    return {"x_hat": _synthesis(model.g_s, y_hat), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}


def _forward_autoregressive(model: JointAutoregressiveHierarchicalPriors, x: torch.Tensor) -> dict:
    """CompressAI's forward of the serial context models (mbt2018, cheng2020), with the entropy
    models, the context prediction and the entropy parameters in float32 (see :func:`_forward`)."""
    y = _analysis(model.g_a, x)
    z = model.h_a(y).float()
    with _full_precision(z):
        z_hat, z_likelihoods = model.entropy_bottleneck(z)
    params = model.h_s(z_hat).float()
    with _full_precision(y):
        y_hat = model.gaussian_conditional.quantize(y, "noise" if model.training else "dequantize")
        context = model.context_prediction(y_hat)
        scales, means = model.entropy_parameters(torch.cat((params, context), dim=1)).chunk(2, 1)
        _, y_likelihoods = model.gaussian_conditional(y, scales, means=means)
    return {"x_hat": _synthesis(model.g_s, y_hat), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}


def _forward_latent_codec(model: SimpleVAECompressionModel, x: torch.Tensor) -> dict:
    """CompressAI's forward of the latent-codec models (checkerboard, ELIC), the whole latent codec in
    float32 (its context networks included: exact likelihoods, at the cost of bf16's speed-up there).
    Their latent codecs quantize as CompressAI built them: noise for the rates, y and z rounded with a
    straight-through gradient for the decoders (``quantization=ste``)."""
    y = _analysis(model.g_a, x)
    with _full_precision(y):
        out = model.latent_codec(y)
    return {"x_hat": _synthesis(model.g_s, out["y_hat"]), "likelihoods": out["likelihoods"]}


def _analysis(g_a: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """g_a(x) as float32, its first layer (on the pixels) in float32 under any autocast."""
    if isinstance(g_a, GainedAnalysis):  # a variable-rate model: the gain in float32 too
        y = _analysis(g_a.inner, x)
        return y * g_a._rate_gain.gain(y)
    if not isinstance(g_a, torch.nn.Sequential) or not torch.is_autocast_enabled(x.device.type):
        return g_a(x).float()
    with _full_precision(x):
        h = g_a[0](x.float())
    return g_a[1:](h).float()


def _synthesis(g_s: torch.nn.Module, y_hat: torch.Tensor) -> torch.Tensor:
    """g_s(y_hat) as float32, its last layer (to the pixels) in float32 under any autocast."""
    if isinstance(g_s, GainedSynthesis):
        return _synthesis(g_s.inner, y_hat.float() * g_s._rate_gain.inverse(y_hat.float()))
    if not isinstance(g_s, torch.nn.Sequential) or not torch.is_autocast_enabled(y_hat.device.type):
        return g_s(y_hat).float()
    h = g_s[:-1](y_hat)
    with _full_precision(h):
        return g_s[-1](h.float())


def forward_padded(model: CompressionModel, x: torch.Tensor, quantization: str = "noise") -> dict:
    """The model's forward (see :func:`_forward`) for any H, W: pads, runs, crops ``x_hat``
    back (likelihoods stay padded)."""
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization {quantization!r}; choose from {', '.join(QUANTIZATIONS)}")
    padded, size = pad_to_multiple(x, stride_of(model))
    out = _forward(model, padded, quantization)
    out["x_hat"] = crop_to(out["x_hat"], size)
    return out


@torch.no_grad()
def compress(model: CompressionModel, x: torch.Tensor, refinement: Refinement | None = None, mode: str = "compressai") -> LAEPayload:
    """Entropy-code a batch (N, 3, H, W) through the rANS coder. The model must be updated.

    ``mode`` (see :data:`DECODING_MODES`): ``compressai`` gives CompressAI's own strings, bit for bit;
    ``exact`` chooses every CDF in fixed point, so any machine decodes it (decode it in that mode).
    With a :class:`Refinement` the latents are first optimised for this image (see
    :func:`refine_latents`); the decoder is unchanged and reads the file as any other."""
    if refinement is not None and refinement.steps > 0:
        y, z = refine_latents(model, x.float(), refinement)  # gradients on inside
        return compress_latents(model, y, z, tuple(x.shape[-2:]), mode)
    padded, size = pad_to_multiple(x.float(), stride_of(model))
    with _full_precision(padded), decoding_mode(model, mode):  # the codec is float32 even inside a mixed-precision step
        out = model.compress(padded)
    return LAEPayload(strings=[list(group) for group in out["strings"]], shape=plain_shape(out["shape"]), size=size)


# -- decoding modes ------------------------------------------------------------------------------------
# ``compressai``: CompressAI's own float arithmetic, its bits. ``exact``: the layers that choose CDFs in
# fixed point (the same CDFs on every machine and device: the entropy decoding cannot desynchronise),
# the synthesis in a fixed partition (the same pixels whatever the thread count). See models/exact.py.

DECODING_MODES = ("compressai", "exact")


@contextmanager
def decoding_mode(model: CompressionModel, mode: str):
    """For a while, ``model.compress`` / ``model.decompress`` code in ``mode``."""
    from compressml.models import exact

    if mode not in DECODING_MODES:
        raise ConfigError(f"unknown decoding mode {mode!r}; choose from {', '.join(DECODING_MODES)}")
    if mode == "compressai":
        yield model
        return
    g_s = model.g_s
    serial = isinstance(model, JointAutoregressiveHierarchicalPriors)
    conditionals = [m for m in model.modules() if isinstance(m, GaussianConditional)]
    try:
        with exact.fixed_point_parameters(model):
            model.g_s = exact.FixedPartitionTransform(g_s)
            for gc in conditionals:  # the same indexes as CompressAI's loop, in one pass
                gc.build_indexes = functools.partial(exact.build_indexes, gc)
            if serial:
                model._compress_ar = _exact_compress_ar.__get__(model)
                model._decompress_ar = _exact_decompress_ar.__get__(model)
            yield model
    finally:
        model.g_s = g_s
        for gc in conditionals:
            gc.__dict__.pop("build_indexes", None)
        if serial:
            del model._compress_ar, model._decompress_ar


def _exact_entropy_parameters(model, y_hat: torch.Tensor, params: torch.Tensor, h: int, w: int, k: int):
    """(CDF indexes, means) of the latent pixel (h, w) of the serial context model, in fixed point:
    its context (the k x k crop of y_hat, masked) and the hyper-decoder's ``params`` there."""
    context = model.context_prediction(y_hat[:, :, h : h + k, w : w + k], padding=0)
    scales, means = model.entropy_parameters(torch.cat((params[:, :, h : h + 1, w : w + 1], context), 1)).chunk(2, 1)
    return model.gaussian_conditional.build_indexes(scales), means


def _coder_tables(gc) -> tuple[list, list, list]:
    return gc.quantized_cdf.tolist(), gc.cdf_length.tolist(), gc.offset.tolist()


def _exact_compress_ar(self, y_hat, params, height, width, kernel_size, padding):
    """The serial context model's raster-scan coding (as CompressAI's ``_compress_ar``), with its
    context and entropy parameters computed in fixed point."""
    from compressai.ans import BufferedRansEncoder

    gc = self.gaussian_conditional
    symbols, indexes = [], []
    for h in range(height):
        for w in range(width):
            index, means = _exact_entropy_parameters(self, y_hat, params, h, w, kernel_size)
            centre = y_hat[:, :, h + padding : h + padding + 1, w + padding : w + padding + 1]
            q = torch.round(centre.double() - means)
            y_hat[:, :, h + padding : h + padding + 1, w + padding : w + padding + 1] = (q + means).float()
            symbols.extend(q.int().flatten().tolist())
            indexes.extend(index.flatten().tolist())
    encoder = BufferedRansEncoder()
    encoder.encode_with_indexes(symbols, indexes, *_coder_tables(gc))
    return encoder.flush()


def _exact_decompress_ar(self, y_string, y_hat, params, height, width, kernel_size, padding):
    """The inverse of :func:`_exact_compress_ar` (as CompressAI's ``_decompress_ar``)."""
    from compressai.ans import RansDecoder

    tables = _coder_tables(self.gaussian_conditional)
    decoder = RansDecoder()
    decoder.set_stream(y_string)
    for h in range(height):
        for w in range(width):
            index, means = _exact_entropy_parameters(self, y_hat, params, h, w, kernel_size)
            q = torch.tensor(decoder.decode_stream(index.flatten().tolist(), *tables), dtype=torch.float64)
            y_hat[:, :, h + padding : h + padding + 1, w + padding : w + padding + 1] = (q.view_as(means) + means).float()


def plain_shape(shape):
    """CompressAI's ``shape`` of a coded latent (a torch.Size, or nested lists and dicts of them for the
    latent-codec models) as plain ints in tuples and dicts."""
    if isinstance(shape, dict):
        return {str(k): plain_shape(v) for k, v in shape.items()}
    if isinstance(shape, (list, tuple)):  # torch.Size is a tuple
        return tuple(int(v) if not isinstance(v, (list, tuple, dict)) else plain_shape(v) for v in shape)
    return int(shape)


# -- encoder-side refinement ----------------------------------------------------------------------
# The analysis transform g_a is amortised: one network guesses good latents for every image. For
# the image at hand, a few gradient steps on the latents themselves (y, and z for the hyperpriors)
# lower the very objective the model was trained on, lambda * D + R, with the decoders fixed
# (Campos et al. 2019, "Content adaptive optimization"; Yang et al. 2020). Only the encoder does
# more work: the bits have the same format and decode with the same model.

SYNTHESIS_FACTOR = 16  # output pixels per latent pixel of y, for all three


@dataclass
class Refinement:
    """Encoder-side latent optimisation: ``steps`` Adam steps (learning rate ``lr``, cosine decay)
    on ``lmbda * D + R``, D the ``distortion`` the model was trained with (compressml.g.loss_units:
    255²·MSE for mse). Every ``check_every`` steps the latents are scored as they will be coded
    (rounded, 8-bit output) and the best seen is kept, so a refined file is never worse on that
    objective than the plain one. ``seed`` fixes the training noise: the same input gives the same file
    on the same machine (GPUs, with their non-deterministic kernels, may differ from run to run)."""

    steps: int = 50
    lmbda: float = 0.01
    distortion: str = "mse"
    lr: float = 0.005
    check_every: int = 10
    seed: int = 0

    def __post_init__(self):
        from compressml.g import DISTORTIONS

        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ConfigError(f"refinement steps must be an integer >= 0, got {self.steps!r}")
        if not self.lmbda > 0 or not self.lr > 0 or self.check_every < 1:
            raise ConfigError("refinement lmbda and lr must be > 0 and check_every >= 1")
        if self.distortion not in DISTORTIONS:
            raise ConfigError(f"refinement distortion must be one of {', '.join(DISTORTIONS)}, got {self.distortion!r}")


def _bf16_is_fast(device: torch.device) -> bool:
    """bfloat16 convolutions pay on GPUs that support them and CPUs with AVX512-BF16; elsewhere
    they are emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        return bool(probe()) if probe is not None else False
    return False


# CompressAI's likelihood floor (its LowerBound: the gradient still pushes values up from below),
# applied here rather than through the entropy models' own ``likelihood_lower_bound`` buffers: a
# float16 bundle stores 1e-9 as 0, and log2(0) is -inf
LIKELIHOOD_BOUND = 1e-9


def _floor(likelihood: torch.Tensor) -> torch.Tensor:
    from compressai.ops.bound_ops import LowerBoundFunction

    return LowerBoundFunction.apply(likelihood, torch.tensor(LIKELIHOOD_BOUND, device=likelihood.device))


def _entropy_bottleneck_likelihood(eb, values: torch.Tensor) -> torch.Tensor:
    """The factorized prior's likelihood of ``values`` (N, C, H, W), differentiable in them, in float32
    (its matrix products would run in bfloat16 under autocast)."""
    c = values.shape[1]
    flat = values.float().transpose(0, 1).reshape(c, 1, -1)
    with _full_precision(flat):
        likelihood, _, _ = eb._likelihood(flat)
    return _floor(likelihood)


def _noisy(t: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
    return t + torch.rand(t.shape, generator=noise, device=t.device) - 0.5


def _quantised(t: torch.Tensor, offset, noise: torch.Generator | None) -> torch.Tensor:
    """Rounded around ``offset``; with ``noise`` (a gradient step) with a straight-through gradient."""
    return _ste_round(t, offset) if noise is not None else torch.round(t - offset) + offset


def _y_bits(model: CompressionModel, y: torch.Tensor, y_hat: torch.Tensor, scales, means, noise) -> torch.Tensor:
    """Bits of y under its prior (the factorized one, or a Gaussian of ``scales``, ``means``): of the
    coded ``y_hat``, or of y plus uniform noise during the gradient steps."""
    values = _noisy(y, noise) if noise is not None else y_hat
    if isinstance(model, FactorizedPrior):
        likelihood = _entropy_bottleneck_likelihood(model.entropy_bottleneck, values)
    else:
        with _full_precision(values):
            likelihood = _floor(model.gaussian_conditional._likelihood(values.float(), scales, means))
    return -torch.log2(likelihood).sum()


def _objective(settings: Refinement, x_hat: torch.Tensor, x: torch.Tensor, bits: torch.Tensor, noise) -> torch.Tensor:
    """lambda * D + bits per pixel; when scoring (no ``noise``) on the clamped 8-bit output a file decodes to."""
    from compressml import metrics
    from compressml.g import loss_units

    if noise is None:
        x_hat = x_hat.clamp(0, 1).mul(255).round().div(255)
    distortion = loss_units(metrics.distortion(settings.distortion, x_hat, x), settings.distortion)
    return settings.lmbda * distortion + bits / (x.shape[0] * x.shape[-2] * x.shape[-1])


def entropy_parameters(model: CompressionModel, z: torch.Tensor | None, noise: torch.Generator | None = None):
    """(bits of z, scales, means of y) from z; for the factorized prior (0, None, its medians)."""
    eb = model.entropy_bottleneck
    medians = eb._get_medians()
    if isinstance(model, FactorizedPrior):
        return torch.zeros(()), None, medians
    z_hat = _quantised(z, medians, noise)
    z_bits = -torch.log2(_entropy_bottleneck_likelihood(eb, _noisy(z, noise) if noise is not None else z_hat)).sum()
    with _full_precision(z_hat):  # the means set where y rounds: kept in float32
        params = model.h_s(z_hat.float())
    if isinstance(model, MeanScaleHyperprior):
        scales, means = params.chunk(2, 1)
    else:
        scales, means = params, torch.zeros_like(params)
    return z_bits, scales, means


def refinement_score(
    model: CompressionModel,
    y: torch.Tensor,
    z: torch.Tensor | None,
    x: torch.Tensor,
    settings: Refinement,
    noise: torch.Generator | None = None,
) -> torch.Tensor:
    """lambda * D + R of latents (y, z) for ``x`` (unpadded). With ``noise`` (the gradient steps): the
    rates see uniform noise and the decoder straight-through rounding, as in training (``ste``).
    Without: the latents as coded, the output clamped and on 8-bit levels as a decoded file holds it."""
    z_bits, scales, means = entropy_parameters(model, z, noise)
    y_hat = _quantised(y, means, noise)
    x_hat = _synthesis(model.g_s, y_hat)[..., : x.shape[-2], : x.shape[-1]]
    return _objective(settings, x_hat, x, z_bits + _y_bits(model, y, y_hat, scales, means, noise), noise)


def _optimise(latents: list[torch.Tensor], loss, score, settings: Refinement) -> list[torch.Tensor]:
    """Adam on ``latents`` (leaf tensors) minimising ``loss(noise)``; the best by ``score()`` (checked
    every ``check_every`` steps, the start included) is returned, detached."""
    device = latents[0].device
    best = (score(), [t.detach().clone() for t in latents])
    optimizer = torch.optim.Adam(latents, lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    noise = torch.Generator(device=device).manual_seed(settings.seed)
    for step in range(1, settings.steps + 1):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=_bf16_is_fast(device)):
            value = loss(noise)
        value.backward()
        optimizer.step()
        schedule.step()
        if step % settings.check_every == 0 or step == settings.steps:
            scored = score()
            if scored < best[0]:
                best = (scored, [t.detach().clone() for t in latents])
    return best[1]


@contextmanager
def _frozen(model: CompressionModel):
    """The model's parameters without gradients for a while (the latents alone are optimised)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield model
    finally:
        for p in trainable:
            p.requires_grad_(True)


def coded_latents(model: CompressionModel, padded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(y, z) as CompressAI's ``compress`` makes them from a padded batch, in float32; z is None for
    the factorized prior."""
    y = model.g_a(padded).float()
    if isinstance(model, FactorizedPrior):
        return y, None
    return y, model.h_a(y if isinstance(model, MeanScaleHyperprior) else y.abs()).float()


def check_refinable(model: CompressionModel) -> None:
    spec = architecture_of(model)
    if not spec.refinable:
        raise ConfigError(
            f"latent refinement (--refine) needs an LAE without a context model (factorized, hyperprior, "
            f"mean_scale); {spec.name} has a {spec.context} context model, whose coding order the "
            "refinement cannot follow"
        )


def refine_latents(model: CompressionModel, x: torch.Tensor, settings: Refinement):
    """Latents (y, z) of ``x`` (N, 3, H, W in [0, 1]) optimised for this image (see :class:`Refinement`);
    z is None for the factorized prior. Code them with :func:`compress_latents`."""
    check_refinable(model)
    padded, _ = pad_to_multiple(x, stride_of(model))
    with _frozen(model):
        with torch.no_grad(), _full_precision(padded):
            y, z = coded_latents(model, padded)
        latents = [t.clone().requires_grad_() for t in (y, z) if t is not None]

        def score() -> float:
            with torch.no_grad(), _full_precision(padded):
                return float(refinement_score(model, *_pair(latents), x, settings))

        best = _optimise(latents, lambda noise: refinement_score(model, *_pair(latents), x, settings, noise), score, settings)
    return _pair(best)


def refine_latent_window(
    model: CompressionModel, window: torch.Tensor, inner: tuple[slice, slice], scales, means, x: torch.Tensor, settings: Refinement
) -> torch.Tensor:
    """One tile of a large image: the ``inner`` part of the latent ``window`` (its margins are context,
    kept as they are) optimised for the pixels ``x`` it decodes to (cropped to the image), with y's
    entropy parameters over the window fixed (``scales``, ``means`` from z; for the factorized prior
    None and its medians). Returns the refined inner latents."""
    check_refinable(model)
    rows, cols = inner
    scales_in = scales[..., rows, cols] if scales is not None else None
    means_in = means[..., rows, cols] if scales is not None else means  # the medians broadcast
    with _frozen(model):
        part = window[..., rows, cols].clone().requires_grad_()

        def terms(noise):
            local = torch.cat(
                [
                    window[..., : rows.start, :],
                    torch.cat([window[..., rows, : cols.start], part, window[..., rows, cols.stop :]], -1),
                    window[..., rows.stop :, :],
                ],
                -2,
            )
            y_hat = _quantised(local, means, noise)
            x_hat = _synthesis(model.g_s, y_hat)[..., rows.start * SYNTHESIS_FACTOR :, cols.start * SYNTHESIS_FACTOR :]
            x_hat = x_hat[..., : x.shape[-2], : x.shape[-1]]
            bits = _y_bits(model, part, y_hat[..., rows, cols], scales_in, means_in, noise)
            return _objective(settings, x_hat, x, bits, noise)

        def score() -> float:
            with torch.no_grad(), _full_precision(window):
                return float(terms(None))

        (best,) = _optimise([part], terms, score, settings)
    return best


def _pair(latents: list) -> tuple:
    return (latents[0], latents[1] if len(latents) > 1 else None)


@torch.no_grad()
def compress_latents(
    model: CompressionModel, y: torch.Tensor, z: torch.Tensor | None, size: tuple[int, int], mode: str = "compressai"
) -> LAEPayload:
    """Entropy-code given latents as :func:`compress` codes those of g_a / h_a in ``mode``: with
    ``y = g_a(x)``, ``z = h_a(y)`` the strings are the same, bit for bit."""
    with _full_precision(y), decoding_mode(model, mode):
        if isinstance(model, FactorizedPrior):
            return LAEPayload(strings=[model.entropy_bottleneck.compress(y)], shape=tuple(y.shape[-2:]), size=size)
        z_strings = model.entropy_bottleneck.compress(z)
        z_hat = model.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        params = model.h_s(z_hat)
        if isinstance(model, MeanScaleHyperprior):
            scales, means = params.chunk(2, 1)
        else:
            scales, means = params, None
        indexes = model.gaussian_conditional.build_indexes(scales)
        y_strings = model.gaussian_conditional.compress(y, indexes, means=means)
    return LAEPayload(strings=[y_strings, z_strings], shape=tuple(z.shape[-2:]), size=size)


_SHAPE_TEMPLATES: weakref.WeakKeyDictionary[CompressionModel, object] = weakref.WeakKeyDictionary()


def expected_layout(model: CompressionModel, height: int, width: int) -> tuple[object, int]:
    """(the ``shape`` tree :func:`compress` gives for a padded ``height`` x ``width`` input, the number
    of string groups), without coding it: a decoder checks a file against them before it allocates.

    Read off the architecture once per model by coding two small blank images, (s, 2s) and (2s, s)
    for the stride s: a leaf that doubles with the height scales with it, one that doubles with the
    width scales with that, and one that does not change is a constant (channels)."""
    template = _SHAPE_TEMPLATES.get(model)
    if template is None:
        s = stride_of(model)
        device = next(model.parameters()).device
        gain = rate_gain_of(model)
        with conditioned(model, float(gain.log_range[0]) if gain is not None else None):  # any rate: shapes only
            probes = [compress(model, torch.zeros(1, 3, h, w, device=device)) for h, w in ((s, 2 * s), (2 * s, s))]
        template = _SHAPE_TEMPLATES[model] = (_template(probes[0].shape, probes[1].shape), len(probes[0].strings))
    s = stride_of(model)
    return _fill(template[0], height // s, width // s), template[1]


def _template(a, b):
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return {k: _template(a[k], b[k]) for k in a}
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        return tuple(_template(u, v) for u, v in zip(a, b))
    if isinstance(a, int) and isinstance(b, int):
        if a == b:
            return ("const", a)
        if b == 2 * a:
            return ("h", a)
        if a == 2 * b:
            return ("w", b)
    raise ConfigError("this architecture's latent shape does not scale with the image size in a known way")


def _fill(template, h_units: int, w_units: int):
    if isinstance(template, dict):
        return {k: _fill(v, h_units, w_units) for k, v in template.items()}
    if template and isinstance(template[0], str):
        kind, value = template
        return value if kind == "const" else value * (h_units if kind == "h" else w_units)
    return tuple(_fill(v, h_units, w_units) for v in template)


@torch.no_grad()
def decompress(model: CompressionModel, payload: LAEPayload, mode: str = "compressai") -> torch.Tensor:
    """Inverse of :func:`compress` (in the ``mode`` it was coded in): the reconstruction, cropped to
    the original size, clamped to [0, 1].

    A damaged or crafted string decodes to other latents, possibly extreme ones whose synthesis
    overflows: the pixels are then still finite (NaN 0, infinities clamped), never undefined."""
    device = next(model.parameters()).device
    with torch.autocast(device.type, enabled=False), decoding_mode(model, mode):
        out = model.decompress(payload.strings, payload.shape)
    return torch.nan_to_num_(crop_to(out["x_hat"], payload.size), nan=0.0).clamp_(0, 1)


def is_updated(model: CompressionModel) -> bool:
    """True when every entropy model has CDF tables, i.e. the model can code."""
    from compressai.entropy_models import EntropyModel

    return all(m._offset.numel() > 0 for m in model.modules() if isinstance(m, EntropyModel))


def load_coding_state(model: CompressionModel, state_dict: dict, strict: bool = True):
    """Load a state dict whose CDF tables may have another size than the model's.

    ``update()`` gives the entropy models' buffers (``_quantized_cdf``, ``_offset``,
    ``_cdf_length``, ``scale_table``) data-dependent shapes. A plain load then fails
    with "size mismatch"; CompressAI's own load only resizes buffers that are still
    empty. Here every entropy-model buffer takes the incoming shape, whatever it was.
    """
    from compressai.entropy_models import EntropyModel

    for module_name, module in model.named_modules():
        if not isinstance(module, EntropyModel):
            continue
        prefix = f"{module_name}." if module_name else ""
        for buf_name, buf in module.named_buffers(recurse=False):
            incoming = state_dict.get(prefix + buf_name)
            if incoming is not None and incoming.shape != buf.shape:
                buf.resize_(incoming.shape)
    return torch.nn.Module.load_state_dict(model, state_dict, strict=strict)
