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


@pytest.mark.parametrize(
    "kwargs,needle", [({"lmbda": -1}, "> 0"), ({"lmbda": 0}, "> 0"), ({"lmbda": "x"}, "number"), ({"distortion": "psnr"}, "distortion")]
)
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


# -- the constrained and perceptual g's --------------------------------------------------------


def test_distortion_cap_value_and_multiplier():
    from compressml.g import DistortionCap

    g = DistortionCap(min_psnr=30.0, multiplier=2.0, step_size=0.5)
    at_cap = torch.tensor(10 ** (-30 / 10))  # MSE at exactly 30 dB
    assert float(g(at_cap, torch.tensor(0.7))) == pytest.approx(-0.7, abs=1e-5)  # on the cap: only the rate counts
    assert float(g(4 * at_cap, torch.tensor(0.7))) == pytest.approx(-(0.7 + 2.0 * 3), abs=1e-4)  # 4x the cap: violation 3
    assert g.multiplier == 2.0 and float(g.logged["violation"]) == pytest.approx(3.0, rel=1e-5)  # not training: fixed
    g(4 * at_cap, torch.tensor(0.7), training=True)
    assert g.multiplier == pytest.approx(2.0 + 0.5 * 3)  # dual ascent while violated
    g(at_cap / 10, torch.tensor(0.7), training=True)
    assert g.multiplier == pytest.approx(3.5 - 0.5 * 0.9)  # and back down while it holds with room
    for _ in range(20):
        g(at_cap / 10, torch.tensor(0.7), training=True)
    assert g.multiplier == 0.0  # never negative
    restored = DistortionCap(min_psnr=30.0)
    restored.load_state_dict({"multiplier": 1.25})
    assert restored.state_dict() == {"multiplier": 1.25}
    with pytest.raises(ConfigError, match="exactly one"):
        DistortionCap(min_psnr=30.0, max_distortion=10.0)
    with pytest.raises(ConfigError, match="min_psnr needs"):
        DistortionCap(min_psnr=30.0, distortion="ms-ssim")
    assert DistortionCap(min_psnr=None, max_distortion=0.05, distortion="ms-ssim")(torch.tensor(0.9), torch.tensor(0.0)) < 0


def test_rate_target_and_perceptual_values():
    from compressml.g import Perceptual, RateTarget

    g = RateTarget(target_bpp=0.5, lmbda=0.01, multiplier=3.0)
    mse = torch.tensor(1e-3)
    assert float(g(mse, torch.tensor(1.0))) == pytest.approx(-(0.01 * 255**2 * 1e-3 + 3.0 * 1.0), rel=1e-5)
    assert float(g(mse, torch.tensor(0.5))) == pytest.approx(-(0.01 * 255**2 * 1e-3), rel=1e-5)
    assert set(g.logged) == {"multiplier", "violation", "weighted_distortion"}
    p = Perceptual(lmbda=10.0)
    assert p.distortion == "l1_ssim"
    assert float(p(torch.tensor(0.2), torch.tensor(0.3))) == pytest.approx(-(10 * 0.2 + 0.3))
    assert float(Perceptual(lmbda=10.0, distortion="ms-ssim")(torch.tensor(0.9), torch.tensor(0.3))) == pytest.approx(-(1.0 + 0.3))
    with pytest.raises(ConfigError, match="distortion"):
        Perceptual(distortion="mse")
    with pytest.raises(ConfigError, match="target_bpp"):
        RateTarget(target_bpp=0)


def _train_lae_on_a_fixed_batch(g_spec: dict, steps: int):
    from conftest import smooth_image

    from compressml.systems import LAESystem

    torch.manual_seed(0)
    system = LAESystem(
        net={"arch": "factorized", "channels": 16, "latent_channels": 16}, g=g_spec, optimizer={"_target_": "torch.optim.Adam", "lr": 3e-3}
    )
    system.train()
    x = torch.stack([torch.from_numpy(smooth_image(32, 32, seed=s)).permute(2, 0, 1).float() / 255 for s in range(4)])
    opt = torch.optim.Adam(system.parameters(), lr=3e-3)
    history = []
    for _ in range(steps):
        terms = system.compute_losses(x)
        opt.zero_grad()
        (terms["loss"] + terms["aux_loss"]).backward()
        opt.step()
        history.append({k: float(terms[k].detach()) for k in ("psnr", "bpp", "g_multiplier", "g_violation")})
    return system, history


def test_distortion_cap_moves_toward_its_cap():
    # a cap far above what the untrained model reaches: the multiplier rises and PSNR climbs toward it
    system, h = _train_lae_on_a_fixed_batch({"_target_": "compressml.g.DistortionCap", "min_psnr": 40.0, "step_size": 0.2}, 40)
    assert h[0]["g_violation"] > 0 and h[-1]["g_multiplier"] > h[0]["g_multiplier"]
    assert h[-1]["psnr"] > h[0]["psnr"] + 3 and h[-1]["g_violation"] < h[0]["g_violation"]
    assert system.g.multiplier == pytest.approx(h[-1]["g_multiplier"] + 0.2 * h[-1]["g_violation"], rel=1e-3)


def test_adapted_multiplier_is_kept_in_checkpoints(tmp_path):
    from compressml.systems import LAESystem, load_system, save_checkpoint

    system = LAESystem(
        net={"arch": "factorized", "channels": 8, "latent_channels": 8}, g={"_target_": "compressml.g.RateTarget", "target_bpp": 0.3}
    )
    system.g.multiplier = 7.5  # as if training had adapted it
    loaded = load_system(save_checkpoint(system, tmp_path / "g.ckpt"))
    assert loaded.g.multiplier == 7.5 and type(loaded.g).__name__ == "RateTarget"


def test_rate_target_moves_toward_its_target():
    # a target below the untrained model's rate: the multiplier rises and the rate falls toward it
    _, h = _train_lae_on_a_fixed_batch({"_target_": "compressml.g.RateTarget", "target_bpp": 0.2, "lmbda": 0.001, "step_size": 0.2}, 40)
    assert h[0]["bpp"] > 0.2 and h[0]["g_violation"] > 0
    assert h[-1]["bpp"] < h[0]["bpp"] - 0.2 * (h[0]["bpp"] - 0.2) and h[-1]["g_multiplier"] > h[0]["g_multiplier"]
