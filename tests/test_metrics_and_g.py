"""PSNR, MS-SSIM, bpp and the rate-distortion reward on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch

from compressml import metrics
from compressml.errors import ConfigError
from compressml.g import RateDistortion, check_g, evaluate_g


def test_psnr_known_value():
    x = torch.zeros(1, 3, 4, 4)
    y = torch.full_like(x, 0.1)  # mse 0.01 -> 20 dB
    assert metrics.psnr(y, x).item() == pytest.approx(20.0, abs=1e-4)
    assert metrics.psnr(x, x).item() == pytest.approx(100.0)


def test_psnr_averages_per_image():
    x = torch.zeros(2, 1, 2, 2)
    y = torch.stack([torch.full((1, 2, 2), 0.1), torch.full((1, 2, 2), 0.01)])
    assert metrics.psnr(y, x).item() == pytest.approx(30.0, abs=1e-3)  # mean of 20 and 40 dB


def test_ms_ssim_matches_pytorch_msssim_on_large_images():
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 192, 200, generator=g)
    y = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ref = pytorch_msssim.ms_ssim(y, x, data_range=1.0).item()
    assert metrics.ms_ssim(y, x).item() == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("size", [3, 8, 33, 64])
def test_ms_ssim_defined_for_small_images(size):
    x = torch.rand(1, 3, size, size)
    assert metrics.ms_ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert metrics.ms_ssim(x * 0.5, x).item() < 0.99


def test_ms_ssim_db():
    assert metrics.ms_ssim_db(0.99) == pytest.approx(20.0)


def test_bpp_from_likelihoods():
    lik = {"y": torch.full((1, 2, 4, 4), 0.5), "z": torch.full((1, 1, 2, 2), 0.25)}
    # 32 symbols at 1 bit + 4 symbols at 2 bits = 40 bits over 8x8 pixels
    assert metrics.bpp_from_likelihoods(lik, 64).item() == pytest.approx(40 / 64)
    assert metrics.bpp_from_bytes(10, 8, 10) == pytest.approx(1.0)


def test_rate_distortion_value_and_sign():
    g = RateDistortion(lmbda=0.01)
    reward = g(torch.tensor(0.001), torch.tensor(0.5))
    assert reward.item() == pytest.approx(-(0.01 * 255**2 * 0.001 + 0.5))
    # higher is better: less distortion or fewer bits -> larger reward
    assert g(torch.tensor(0.0005), torch.tensor(0.5)) > reward
    assert g(torch.tensor(0.001), torch.tensor(0.4)) > reward
    ms = RateDistortion(lmbda=10, distortion="ms-ssim")
    assert ms(torch.tensor(0.95), torch.tensor(0.2)).item() == pytest.approx(-(10 * 0.05 + 0.2))


@pytest.mark.parametrize("kwargs,needle", [({"lmbda": -1}, "> 0"), ({"lmbda": 0}, "> 0"), ({"lmbda": "x"}, "number"), ({"distortion": "psnr"}, "distortion")])
def test_rate_distortion_rejects_bad_values(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        RateDistortion(**kwargs)


def test_user_g_checks():
    check_g(lambda distortion, rate, **context: -(distortion + rate))
    with pytest.raises(ConfigError, match="cannot be called"):
        check_g(lambda distortion: -distortion)
    with pytest.raises(ConfigError, match="callable"):
        check_g(3)
    with pytest.raises(ConfigError, match="scalar"):
        evaluate_g(lambda d, r, **c: torch.ones(3), torch.tensor(0.0), torch.tensor(0.0))
    assert evaluate_g(lambda d, r, **c: -(d + r), torch.tensor(1.0), torch.tensor(2.0)).item() == -3.0
    assert not math.isnan(evaluate_g(RateDistortion(), torch.tensor(0.1), torch.tensor(1.0)).item())
