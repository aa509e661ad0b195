"""Widen a trained hyperprior's latent y (more channels M), starting from what it has learnt.

A model with more latent channels usually reaches further at high rates, but training one from
scratch throws away the narrower model's training. Here the narrow weights are embedded in the wide
model, so that before the first step it decodes every image to exactly the same pixels:

* the analysis transform's new outputs start as a fresh layer's (small values, mostly quantised
  to 0, some to +-1: alive, so that the gradient reaches them);
* the synthesis transform ignores the new channels (zero weights) until training finds a use for
  them; their values send it a gradient from the first step;
* the hyper-analysis ignores them too (zero weights), so z and the old channels' entropy
  parameters are unchanged;
* the hyper-synthesis gives the new channels a zero mean and a scale of :data:`NEW_SCALE`, near
  their spread, and its new hidden units feed nothing the old channels use.

Only the rate moves at first: the new channels cost a few hundredths of a bit per pixel, which the
training either turns into detail or squeezes out. (Starting them exactly at zero, with the
smallest scale, keeps the rate too, but measured on the premade q4 the channels then never leave
zero: the noise-based rate walls them in.) This is the Net2Net idea (Chen et al. 2016, "Net2Net:
accelerating learning via knowledge transfer") for CompressAI's scale and mean-scale hyperpriors;
the width N must stay the same.
"""

from __future__ import annotations

import torch
from compressai.models import MeanScaleHyperprior, ScaleHyperprior
from compressai.models.base import CompressionModel

from compressml.errors import ConfigError

# The new channels' scale at the start: about the spread of a fresh layer's outputs on a trained
# model's features (0.32 on Kodak for the premade q4), so that coding them is cheap from the start.
NEW_SCALE = 0.3


def latent_width(state: dict[str, torch.Tensor], prefix: str = "") -> int:
    """M of a hyperprior's state dict (the analysis transform's last layer has M outputs)."""
    return state[f"{prefix}g_a.6.bias"].shape[0]


def _embed(new: torch.Tensor, old: torch.Tensor, dims: dict[int, slice] | None = None) -> torch.Tensor:
    """``new`` with ``old`` written into its leading block (or at the given slices per dim)."""
    index = [slice(0, n) for n in old.shape]
    for dim, where in (dims or {}).items():
        index[dim] = where
    out = new.clone()
    out[tuple(index)] = old
    return out


def widened_state(model: CompressionModel, narrow: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict for ``model`` (a fresh, wider hyperprior) that holds the narrow model ``narrow``.

    ``narrow`` is the state dict of the same architecture with the same N and fewer latent channels;
    ``model``'s own fresh weights fill what is new. Raises :class:`ConfigError` when the two do not
    differ in M alone."""
    if not isinstance(model, (ScaleHyperprior, MeanScaleHyperprior)):
        raise ConfigError(f"widening is for the scale and mean-scale hyperpriors, not {type(model).__name__}")
    fresh = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if set(narrow) != set(fresh):
        raise ConfigError("the narrow model is not the same architecture (its weights have other names)")
    m_old, m_new = latent_width(narrow), latent_width(fresh)
    if m_new < m_old:
        raise ConfigError(f"cannot widen {m_old} latent channels to {m_new}: the new model must be wider")
    mean_scale = isinstance(model, MeanScaleHyperprior)
    if narrow["h_s.4.bias"].shape[0] != (2 if mean_scale else 1) * m_old:  # means and scales, or scales
        raise ConfigError("the narrow model is not the same architecture (its hyper-synthesis differs)")
    out: dict[str, torch.Tensor] = {}
    for key, new in fresh.items():
        old = narrow[key]
        if old.shape == new.shape or new.numel() == 0:  # same, or a coder table not built yet
            out[key] = old.clone()
        elif key == "g_a.6.weight":  # y = conv(N -> M): new outputs as a fresh layer's
            out[key] = _embed(new, old)
        elif key == "g_a.6.bias":
            out[key] = _embed(torch.zeros_like(new), old)
        elif key == "g_s.0.weight":  # deconv(M -> N), weight (in, out, k, k): new inputs ignored
            out[key] = _embed(torch.zeros_like(new), old)
        elif key == "h_a.0.weight":  # conv(M -> N), weight (out, in, k, k): new inputs ignored
            out[key] = _embed(torch.zeros_like(new), old)
        elif mean_scale and key in ("h_s.0.weight", "h_s.0.bias", "h_s.2.bias"):
            out[key] = _embed(new, old)  # new hidden units: any inputs (nothing old reads them)
        elif mean_scale and key == "h_s.2.weight":  # deconv(M -> 3M/2): new inputs ignored by old units
            hidden = _embed(new, old)
            hidden[m_old:, : old.shape[1]] = 0
            out[key] = hidden
        elif key in ("h_s.4.weight", "h_s.4.bias"):
            out[key] = _entropy_parameters(key, new, old, m_old, m_new, mean_scale)
        else:
            raise ConfigError(f"cannot widen {key}: {tuple(old.shape)} -> {tuple(new.shape)} (the width N must match)")
    return out


def _entropy_parameters(key: str, new: torch.Tensor, old: torch.Tensor, m_old: int, m_new: int,
                        mean_scale: bool) -> torch.Tensor:
    """h_s's last layer: scales (and, for mean-scale, means after them) of every y channel.

    Old channels keep their rows (and ignore new hidden units); new channels get all-zero weights,
    mean 0 and scale :data:`NEW_SCALE`."""
    out = torch.zeros_like(new)
    if key.endswith("bias"):
        out[m_old:m_new] = NEW_SCALE
    blocks = [(slice(0, m_old), slice(0, m_old))]  # (rows in old, rows in new): the scales
    if mean_scale:
        blocks.append((slice(m_old, 2 * m_old), slice(m_new, m_new + m_old)))  # the means
    for rows_old, rows_new in blocks:
        if key.endswith("bias"):
            out[rows_new] = old[rows_old]
        else:
            out[rows_new, : old.shape[1]] = old[rows_old]
    return out
