"""Image-quality and rate metrics: PSNR, SSIM and MS-SSIM (any size), bits per pixel, BD-rate.

Images are float tensors in [0, 1], shape (N, C, H, W). Per-image values are
averaged over the batch, as CompressAI's evaluation does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def mse_per_image(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_hat - x).pow(2).flatten(1).mean(1)


PSNR_CAP = 100.0  # dB given to identical images (instead of infinity)


def distortion(kind: str, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The distortion a g names (``compressml.g.DISTORTIONS``): ``mse``, ``ms-ssim`` (higher is
    better), ``l1``, or ``l1_ssim`` = 0.84 (1 - SSIM) + 0.16 L1 (Zhao et al.)."""
    if kind == "ms-ssim":
        return ms_ssim(x_hat, x)
    if kind == "mse":
        return torch.mean((x_hat - x) ** 2)
    l1 = torch.mean(torch.abs(x_hat - x))
    return l1 if kind == "l1" else 0.84 * (1 - ssim(x_hat, x)) + 0.16 * l1


def psnr(x_hat: torch.Tensor, x: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean over the batch of each image's PSNR in dB (identical images give ``PSNR_CAP``, not inf)."""
    mse = mse_per_image(x_hat.float(), x.float()).clamp_min(data_range**2 * 10 ** (-PSNR_CAP / 10))
    return (10 * torch.log10(data_range**2 / mse)).mean()


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)


def _ssim_and_cs(x, y, win, data_range):
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    channels = x.shape[1]

    if x.device.type == "cpu" and not (x.requires_grad or y.requires_grad):
        # scipy's separable filter is ~5x faster than a grouped conv on CPU (evaluation of large images)
        from scipy.ndimage import correlate1d

        taps, half = win[0, 0, 0].numpy(), win.shape[-1] // 2
        crop = (..., slice(half, -half or None), slice(half, -half or None))

        def blur(t):
            a = correlate1d(t.numpy(), taps, axis=-1, mode="nearest")
            return torch.from_numpy(correlate1d(a, taps, axis=-2, mode="nearest")[crop])
    else:

        def blur(t):
            t = F.conv2d(t, win, groups=channels)
            return F.conv2d(t, win.transpose(2, 3), groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ssim = ((2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)) * cs
    return ssim.flatten(2).mean(-1), cs.flatten(2).mean(-1)  # (N, C)


def ms_ssim(x_hat: torch.Tensor, x: torch.Tensor, data_range: float = 1.0, win_size: int = 11) -> torch.Tensor:
    """Multi-scale SSIM (Wang et al. 2003), averaged over the batch.

    For images of at least 161 pixels a side this is the standard 5-scale measure
    (as in pytorch-msssim, which CompressAI uses). Smaller images, such as the
    training crops of a smoke run, use as many scales as fit (weights
    renormalised) and, below 11 pixels, a smaller window: defined everywhere
    rather than an error.
    """
    x_hat, x = x_hat.float(), x.float()
    side = min(x.shape[-2:])
    win_size = min(win_size, side if side % 2 else side - 1)
    win_size = max(win_size, 1)
    levels = 1
    while levels < len(MS_SSIM_WEIGHTS) and side > (win_size - 1) * 2**levels:
        levels += 1
    weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], device=x.device, dtype=x.dtype)
    weights = weights / weights.sum()
    win = _gaussian_window(win_size, 1.5, x.shape[1], x.device, x.dtype)
    factors = []
    for level in range(levels):
        ssim, cs = _ssim_and_cs(x_hat, x, win, data_range)
        if level < levels - 1:
            factors.append(torch.relu(cs))
            pad = [s % 2 for s in x.shape[2:]]
            x_hat = F.avg_pool2d(x_hat, 2, padding=pad)
            x = F.avg_pool2d(x, 2, padding=pad)
    factors.append(torch.relu(ssim))
    stacked = torch.stack(factors, 0)  # (levels, N, C)
    value = torch.prod(stacked ** weights.view(-1, 1, 1), 0)
    return value.mean()


def ssim(x_hat: torch.Tensor, x: torch.Tensor, data_range: float = 1.0, win_size: int = 11) -> torch.Tensor:
    """Single-scale SSIM (Gaussian window 11, sigma 1.5), averaged over channels and the batch."""
    x_hat, x = x_hat.float(), x.float()
    side = min(x.shape[-2:])
    win_size = max(min(win_size, side if side % 2 else side - 1), 1)
    win = _gaussian_window(win_size, 1.5, x.shape[1], x.device, x.dtype)
    return _ssim_and_cs(x_hat, x, win, data_range)[0].mean()


# ITU-R BT.601 luma as MATLAB's rgb2ycbcr and BasicSR compute it: for RGB in [0, 1],
# Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255, so Y is in [16/255, 235/255].
Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 1, H, W) BT.601 luma in [0, 1] units (not rounded)."""
    w = torch.tensor(Y_WEIGHTS, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) / 255
    return (x.float() * w).sum(1, keepdim=True) + 16 / 255


def crop_border(x: torch.Tensor, border: int) -> torch.Tensor:
    """Drop ``border`` pixels on every side (super-resolution's ``crop_border = scale``)."""
    return x[..., border : x.shape[-2] - border, border : x.shape[-1] - border] if border else x


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, border: int = 0) -> torch.Tensor:
    """PSNR on the Y channel after cropping ``border`` pixels, averaged over the batch (BasicSR's
    ``calculate_psnr(test_y_channel=True)``)."""
    return psnr(crop_border(rgb_to_y(sr), border), crop_border(rgb_to_y(hr), border))


def ssim_y(sr: torch.Tensor, hr: torch.Tensor, border: int = 0) -> torch.Tensor:
    """SSIM on the Y channel after cropping ``border`` pixels, averaged over the batch."""
    return ssim(crop_border(rgb_to_y(sr), border), crop_border(rgb_to_y(hr), border))


def ms_ssim_db(value: torch.Tensor | float) -> float:
    """MS-SSIM on a dB scale, -10 log10(1 - value), as CompressAI reports it."""
    value = float(value)
    return -10 * math.log10(max(1.0 - value, 1e-10))


def bpp_from_likelihoods(likelihoods: Mapping[str, torch.Tensor], num_pixels: int) -> torch.Tensor:
    """Estimated bits per pixel from an entropy model's likelihoods (N * H * W pixels)."""
    bits = sum(torch.log(p).sum() for p in likelihoods.values())
    return bits / (-math.log(2) * num_pixels)


def bpp_from_bytes(num_bytes: int, height: int, width: int) -> float:
    """Real bits per pixel of a byte count for one image."""
    return 8.0 * num_bytes / (height * width)


def _monotone_curve(rates, quality) -> tuple[np.ndarray, np.ndarray]:
    """(quality, log10 rate), sorted by quality, keeping points where quality strictly rises."""
    pairs = sorted((float(q), math.log10(float(r))) for r, q in zip(rates, quality) if r > 0 and math.isfinite(q))
    q_out, r_out = [], []
    for q, lr in pairs:
        if q_out and q <= q_out[-1]:
            continue
        q_out.append(q)
        r_out.append(lr)
    return np.array(q_out), np.array(r_out)


def bd_rate(rates_ref, quality_ref, rates_test, quality_test) -> float | None:
    """Bjøntegaard delta rate (%) of the test curve against the reference; negative = test saves bits.

    Both curves are log-rate as a function of quality (PSNR, or MS-SSIM in dB),
    interpolated piecewise-cubically (PCHIP, monotone, as in the JVET common test
    conditions' tool) and averaged over the quality interval both curves span.
    ``None`` when the curves have fewer than two distinct points or do not overlap.
    """
    from scipy.interpolate import PchipInterpolator

    q1, r1 = _monotone_curve(rates_ref, quality_ref)
    q2, r2 = _monotone_curve(rates_test, quality_test)
    if len(q1) < 2 or len(q2) < 2:
        return None
    lo, hi = max(q1[0], q2[0]), min(q1[-1], q2[-1])
    if hi <= lo:
        return None
    f1, f2 = PchipInterpolator(q1, r1), PchipInterpolator(q2, r2)
    avg_diff = (f2.integrate(lo, hi) - f1.integrate(lo, hi)) / (hi - lo)
    return float((10**avg_diff - 1) * 100)
