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

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from compressai.models import FactorizedPrior, MeanScaleHyperprior, ScaleHyperprior
from compressai.models.base import CompressionModel

from compressml.errors import ConfigError
from compressml.models.padding import crop_to, pad_to_multiple

# architecture name -> (CompressAI class, spatial stride the input must divide by)
ARCHITECTURES: dict[str, tuple[type[CompressionModel], int]] = {
    "factorized": (FactorizedPrior, 16),  # bmshj2018-factorized
    "hyperprior": (ScaleHyperprior, 64),  # bmshj2018-hyperprior
    "mean_scale": (MeanScaleHyperprior, 64),  # mbt2018-mean
}


def build_lae(arch: str, channels: int = 128, latent_channels: int = 192) -> CompressionModel:
    """A fresh CompressAI model for ``arch`` (one of :data:`ARCHITECTURES`)."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown LAE architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    if channels < 1 or latent_channels < 1:
        raise ConfigError(f"LAE channel counts must be positive, got channels={channels}, latent_channels={latent_channels}")
    cls, _ = ARCHITECTURES[arch]
    return cls(N=channels, M=latent_channels)


def latent_count(model: CompressionModel) -> int:
    """How many coded latents (strings) a model produces: y, plus z for the hyperpriors."""
    return 1 if isinstance(model, FactorizedPrior) else 2


def stride_of(model: CompressionModel) -> int:
    """The multiple an input's height and width must be for ``model``."""
    for cls, stride in ARCHITECTURES.values():
        if type(model) is cls:
            return stride
    return 64  # the largest stride of CompressAI's image models; always safe


@dataclass
class LAEPayload:
    """What :func:`compress` produces: the coded strings plus everything needed to decode them."""

    strings: list[list[bytes]]  # one list per latent (y, then z), one bytes per image
    shape: tuple[int, int]  # spatial shape of the top latent (CompressAI's "shape")
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
    if type(model) not in (FactorizedPrior, ScaleHyperprior, MeanScaleHyperprior):
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


def _analysis(g_a: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """g_a(x) as float32, its first layer (on the pixels) in float32 under any autocast."""
    if not isinstance(g_a, torch.nn.Sequential) or not torch.is_autocast_enabled(x.device.type):
        return g_a(x).float()
    with _full_precision(x):
        h = g_a[0](x.float())
    return g_a[1:](h).float()


def _synthesis(g_s: torch.nn.Module, y_hat: torch.Tensor) -> torch.Tensor:
    """g_s(y_hat) as float32, its last layer (to the pixels) in float32 under any autocast."""
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
def compress(model: CompressionModel, x: torch.Tensor, refinement: "Refinement | None" = None) -> LAEPayload:
    """Entropy-code a batch (N, 3, H, W) through the rANS coder. The model must be updated.

    With a :class:`Refinement` the latents are first optimised for this image (see
    :func:`refine_latents`); the decoder is unchanged and reads the file as any other."""
    if refinement is not None and refinement.steps > 0:
        y, z = refine_latents(model, x.float(), refinement)  # gradients on inside
        return compress_latents(model, y, z, tuple(x.shape[-2:]))
    padded, size = pad_to_multiple(x.float(), stride_of(model))
    with _full_precision(padded):  # the codec is float32 even inside a mixed-precision step
        out = model.compress(padded)
    return LAEPayload(strings=out["strings"], shape=tuple(out["shape"]), size=size)


# -- encoder-side refinement ----------------------------------------------------------------------
# The analysis transform g_a is amortised: one network guesses good latents for every image. For
# the image at hand, a few gradient steps on the latents themselves (y, and z for the hyperpriors)
# lower the very objective the model was trained on, lambda * D + R, with the decoders fixed
# (Campos et al. 2019, "Content adaptive optimization"; Yang et al. 2020). Only the encoder does
# more work: the bits have the same format and decode with the same model.

REFINABLE = (FactorizedPrior, ScaleHyperprior, MeanScaleHyperprior)
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


def refinement_score(model: CompressionModel, y: torch.Tensor, z: torch.Tensor | None, x: torch.Tensor,
                     settings: Refinement, noise: torch.Generator | None = None) -> torch.Tensor:
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
    if type(model) not in REFINABLE:
        raise ConfigError(f"latent refinement supports {', '.join(c.__name__ for c in REFINABLE)}, not {type(model).__name__}")


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


def refine_latent_window(model: CompressionModel, window: torch.Tensor, inner: tuple[slice, slice], scales, means,
                         x: torch.Tensor, settings: Refinement) -> torch.Tensor:
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
            local = torch.cat([window[..., : rows.start, :],
                               torch.cat([window[..., rows, : cols.start], part, window[..., rows, cols.stop :]], -1),
                               window[..., rows.stop :, :]], -2)
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
def compress_latents(model: CompressionModel, y: torch.Tensor, z: torch.Tensor | None, size: tuple[int, int]) -> LAEPayload:
    """Entropy-code given latents as CompressAI's ``compress`` codes those of g_a / h_a: with
    ``y = g_a(x)``, ``z = h_a(y)`` the strings are CompressAI's own, bit for bit."""
    with _full_precision(y):
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


@torch.no_grad()
def decompress(model: CompressionModel, payload: LAEPayload) -> torch.Tensor:
    """Inverse of :func:`compress`: the reconstruction, cropped to the original size, clamped to [0, 1].

    A damaged or crafted string decodes to other latents, possibly extreme ones whose synthesis
    overflows: the pixels are then still finite (NaN 0, infinities clamped), never undefined."""
    device = next(model.parameters()).device
    with torch.autocast(device.type, enabled=False):
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
