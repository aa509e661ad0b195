"""One LAE for every rate: gain vectors on the latent, conditioned on λ, per image or per position.

A variable-rate LAE is any of the CompressAI architectures with two small additions (Cui et al.,
"Asymmetric gained deep image compression", CVPR 2021): the analysis output ``y`` is multiplied,
channel by channel, by a gain ``g(λ)`` before it is quantised and entropy-coded, and the decoded
latent by an inverse gain ``g'(λ)`` before the synthesis. A larger gain means finer quantisation:
more bits, less distortion. The gains are learned at ``anchors`` values of log λ spread over the
trained range and interpolated linearly in log λ between them (so log-gain is piecewise linear),
which gives a continuous rate from one network. Training draws λ log-uniformly from the range for
each batch and passes it to g (``compressml.systems.lae``).

The condition can vary over the image: a map of log λ at the latent resolution (one value per
16x16 pixels) gives marked regions more bits from the same network (content-weighted bits).
Training then also draws random maps, and weights each pixel's distortion by its own λ.

Nothing else changes: the hyper-prior, context models and entropy coders see the gained latent, so
the exact decoding path of ``compressml.models.exact`` chooses every CDF as for a fixed-rate model;
the inverse gain touches only the pixels. The gains are a ``rate_gain`` module of the model (in its
state dict, so in checkpoints, bundles and the weights' fingerprint), with the λ range as a buffer.

Quality. For users, a rate is a quality ``q`` from 0 to 100, higher is better, mapped linearly to
log λ over the trained range: ``log λ = log λ_min + q / 100 · (log λ_max − log λ_min)``.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import torch
from torch import nn

from compressml.errors import ConfigError

DEFAULT_RANGE = (0.0018, 0.0932)  # CompressAI's MSE λ for its qualities 1 and 7 (about 0.1 to 1.5 bpp on Kodak)
DEFAULT_ANCHORS = 6


class RateGain(nn.Module):
    """Per-channel gains and inverse gains of the latent as functions of log λ (see the module docstring).

    ``condition`` (set through :func:`conditioned`) is log λ: a float, an (N,) tensor (one per image)
    or an (N, 1, h, w) map at the latent resolution."""

    def __init__(self, channels: int, lmbda_range: tuple[float, float] = DEFAULT_RANGE, anchors: int = DEFAULT_ANCHORS):
        super().__init__()
        lo, hi = (float(v) for v in lmbda_range)
        if not 0 < lo < hi:
            raise ConfigError(f"model.lmbda_range must be two numbers 0 < min < max, got {list(lmbda_range)}")
        if type(anchors) is not int or anchors < 2:
            raise ConfigError(f"model.anchors must be an integer >= 2, got {anchors!r}")
        self.register_buffer("log_range", torch.tensor([math.log(lo), math.log(hi)], dtype=torch.float64))
        # high-rate theory: the best quantisation step goes as 1/sqrt(λ), so the gain as sqrt(λ)
        mid = (math.log(lo) + math.log(hi)) / 2
        start = 0.5 * (torch.linspace(math.log(lo), math.log(hi), anchors) - mid)
        self.log_gain = nn.Parameter(start[:, None].repeat(1, channels).contiguous())
        self.log_inverse = nn.Parameter(-start[:, None].repeat(1, channels).contiguous())
        self.condition: float | torch.Tensor | None = None

    @torch.no_grad()
    def start_at(self, lmbda: float) -> None:
        """Gains on the √λ law with gain 1 at ``lmbda``: a fixed-rate model trained at that λ starts
        coding there exactly as it did (``init_from`` a fixed-rate model)."""
        logs = torch.linspace(*self.log_range.tolist(), self.anchors, dtype=torch.float64)
        start = (0.5 * (logs - math.log(lmbda)))[:, None].to(self.log_gain.dtype)
        self.log_gain.copy_(start.expand_as(self.log_gain))
        self.log_inverse.copy_((-start).expand_as(self.log_inverse))

    @property
    def lmbda_range(self) -> tuple[float, float]:
        lo, hi = self.log_range.tolist()
        return math.exp(lo), math.exp(hi)

    @property
    def anchors(self) -> int:
        return int(self.log_gain.shape[0])

    def log_lmbda(self, quality: float | torch.Tensor) -> float | torch.Tensor:
        """Quality 0..100 (clamped) -> log λ over the trained range."""
        lo, hi = self.log_range.tolist()
        if isinstance(quality, torch.Tensor):
            return lo + quality.double().clamp(0, 100) / 100 * (hi - lo)
        return lo + min(max(float(quality), 0.0), 100.0) / 100 * (hi - lo)

    def quality(self, lmbda: float) -> float:
        """The quality whose λ is ``lmbda`` (may fall outside 0..100 for a λ outside the range)."""
        lo, hi = self.log_range.tolist()
        return (math.log(lmbda) - lo) / (hi - lo) * 100

    def _interpolated(self, table: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``table`` (anchors, C) at this condition, shaped to multiply ``y`` (N, C, h, w)."""
        if self.condition is None:
            raise ConfigError("a variable-rate model needs a quality (λ) before it codes")
        lo, hi = self.log_range.tolist()
        cond = torch.as_tensor(self.condition, dtype=torch.float64, device=y.device)
        if cond.dim() == 0:
            cond = cond.expand(y.shape[0])
        if cond.dim() == 1:
            cond = cond.view(-1, 1, 1, 1)
        elif cond.dim() != 4 or cond.shape[1] != 1:
            raise ConfigError(f"a rate condition must be a number, (N,) or (N, 1, h, w), got shape {tuple(cond.shape)}")
        # position along the anchors, clamped to the trained range
        t = ((cond - lo) / (hi - lo)).clamp(0, 1) * (self.anchors - 1)
        i0 = t.floor().clamp(max=self.anchors - 2)
        frac = (t - i0).to(table.dtype)
        i0 = i0.long()
        # (N, 1, h, w) indexes -> (N, C, h, w) values, linear between anchors i0 and i0 + 1
        c = table.shape[1]
        lower = table[i0.squeeze(1)].movedim(-1, 1)
        upper = table[(i0 + 1).squeeze(1)].movedim(-1, 1)
        out = lower + frac * (upper - lower)
        if out.shape[-2:] != y.shape[-2:] and out.shape[-2:] != (1, 1):
            raise ConfigError(f"the rate map is {tuple(out.shape[-2:])} latent positions, the latent {tuple(y.shape[-2:])}")
        return torch.exp(out.to(y.dtype)).expand(y.shape[0], c, *out.shape[-2:])

    def gain(self, y: torch.Tensor) -> torch.Tensor:
        return self._interpolated(self.log_gain, y)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self._interpolated(self.log_inverse, y)


class GainedAnalysis(nn.Module):
    """``g_a`` followed by the gain: what the entropy model codes is ``g_a(x) * g(λ)``."""

    tiles_inner = True  # compressml.codec.tiling tiles ``inner``; the gain applies to the whole latent

    def __init__(self, inner: nn.Module, rate_gain: RateGain):
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "_rate_gain", rate_gain)  # owned by the model, not registered twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return y * self._rate_gain.gain(y)


class GainedSynthesis(nn.Module):
    """The inverse gain followed by ``g_s``: the synthesis sees ``y_hat * g'(λ)``."""

    tiles_inner = True

    def __init__(self, inner: nn.Module, rate_gain: RateGain):
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "_rate_gain", rate_gain)

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.inner(y_hat * self._rate_gain.inverse(y_hat))


def make_variable_rate(model: nn.Module, latent_channels: int, lmbda_range=DEFAULT_RANGE, anchors: int = DEFAULT_ANCHORS) -> nn.Module:
    """``model`` (any CompressAI model with ``g_a`` and ``g_s``) made variable-rate, in place."""
    gain = RateGain(latent_channels, tuple(lmbda_range), anchors)
    model.rate_gain = gain
    model.g_a = GainedAnalysis(model.g_a, gain)
    model.g_s = GainedSynthesis(model.g_s, gain)
    return model


def rate_gain_of(model: nn.Module) -> RateGain | None:
    """The model's :class:`RateGain`, or None for a fixed-rate model."""
    gain = getattr(model, "rate_gain", None)
    return gain if isinstance(gain, RateGain) else None


def is_variable_rate(model: nn.Module) -> bool:
    return rate_gain_of(model) is not None


_CONDITION_LOCK = threading.RLock()  # the condition is state of the shared network: one coder at a time


@contextmanager
def conditioned(model: nn.Module, log_lmbda: float | torch.Tensor | None):
    """For a while, ``model`` codes at this log λ (a number, (N,) or an (N, 1, h, w) latent map);
    nothing for a fixed-rate model. Threads coding with variable-rate models take turns (the
    condition is the network's state)."""
    gain = rate_gain_of(model)
    if gain is None:
        yield model
        return
    with _CONDITION_LOCK:
        before = gain.condition
        gain.condition = log_lmbda
        try:
            yield model
        finally:
            gain.condition = before
