"""Widening a hyperprior's latent y (init_widen): the wider model starts out as the narrow one."""

from __future__ import annotations

import pytest
import torch

from compressml.errors import ConfigError
from compressml.models.lae import build_lae, compress, decompress, forward_padded
from compressml.models.widen import latent_width, widened_state
from compressml.systems import LAESystem
from conftest import save_tiny_checkpoint, smooth_image


def image() -> torch.Tensor:
    return torch.from_numpy(smooth_image(64, 96, seed=5)).permute(2, 0, 1).float().div(255)[None]


def pair(arch: str, wide_m: int = 20):
    torch.manual_seed(1)
    narrow = build_lae(arch, 8, 12).eval()
    torch.manual_seed(2)
    wide = build_lae(arch, 8, wide_m)
    wide.load_state_dict(widened_state(wide, narrow.state_dict()))
    return narrow, wide.eval()


def bits(out: dict) -> float:
    return sum(-torch.log2(p).sum().item() for p in out["likelihoods"].values())


@pytest.mark.parametrize("arch", ["hyperprior", "mean_scale"])
def test_the_wider_model_codes_like_the_narrow_one(arch):
    narrow, wide = pair(arch)
    x = image()
    assert latent_width(wide.state_dict()) == 20
    with torch.no_grad():
        a, b = forward_padded(narrow, x, "ste"), forward_padded(wide, x, "ste")
        assert torch.allclose(a["x_hat"], b["x_hat"], atol=1e-5)
        assert b["likelihoods"]["y"].shape[1] == 20
        old_channels = {"y": b["likelihoods"]["y"][:, :12], "z": b["likelihoods"]["z"]}
        assert bits({"likelihoods": old_channels}) == pytest.approx(bits(a), rel=1e-5)  # z and the old y as before
        narrow.update(force=True)
        wide.update(force=True)
        assert torch.allclose(decompress(narrow, compress(narrow, x)), decompress(wide, compress(wide, x)), atol=1e-5)


def test_the_new_channels_learn():
    """One training step's gradient reaches the new channels everywhere they are read or made: they
    start unused, not dead. On a trained model (the premade lae-q4), whose
    features give the new channels values that quantise to +-1 here and there."""
    from compressml import premade
    from compressml.codec.bundle import load_bundle
    from test_refine import photo_crop

    narrow, _ = load_bundle(premade.lae_for_quality(4).bundle)
    state = {k: v.float() for k, v in narrow.state_dict().items()}
    m = latent_width(state)
    torch.manual_seed(0)
    wide = build_lae("mean_scale", 64, m + 8)
    wide.load_state_dict(widened_state(wide, state))
    wide.train()
    x = photo_crop(64, 128)
    out = forward_padded(wide, x, "ste")
    rate = sum(-torch.log2(p).sum() for p in out["likelihoods"].values())
    loss = 100 * (out["x_hat"] - x).pow(2).mean() + rate / x[0, 0].numel()
    loss.backward()
    assert wide.g_a[6].weight.grad[m:].abs().sum() > 0
    assert wide.g_s[0].weight.grad[m:].abs().sum() > 0
    assert wide.h_a[0].weight.grad[:, m:].abs().sum() > 0
    assert wide.h_s[4].weight.grad[m : m + 8].abs().sum() > 0  # the new channels' scales
    assert wide.h_s[4].weight.grad[m + 8 + m :].abs().sum() > 0  # and means


def test_widening_refuses_what_it_cannot_do():
    narrow = build_lae("mean_scale", 8, 12).state_dict()
    with pytest.raises(ConfigError, match="width N must match"):
        widened_state(build_lae("mean_scale", 16, 20), narrow)
    with pytest.raises(ConfigError, match="must be wider"):
        widened_state(build_lae("mean_scale", 8, 6), narrow)
    with pytest.raises(ConfigError, match="not the same architecture"):
        widened_state(build_lae("hyperprior", 8, 20), narrow)
    with pytest.raises(ConfigError, match="scale and mean-scale"):
        widened_state(build_lae("factorized", 8, 20), build_lae("factorized", 8, 12).state_dict())


def test_init_widen_starts_a_wider_system_from_a_checkpoint(tmp_path):
    from compressml.systems.loading import init_weights

    path = save_tiny_checkpoint(tmp_path / "narrow.ckpt", arch="mean_scale", seed=3)
    wide = LAESystem(net={"arch": "mean_scale", "channels": 8, "latent_channels": 16},
                     g={"_target_": "compressml.g.RateDistortion", "lmbda": 0.05})
    with pytest.raises(ConfigError, match="init_widen=true"):
        init_weights(wide, path)
    init_weights(wide, path, widen=True)
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(wide.state_dict()["net.g_s.2.weight"], saved["net.g_s.2.weight"])
    assert torch.equal(wide.state_dict()["net.g_a.6.weight"][:8], saved["net.g_a.6.weight"])
    narrower = LAESystem(net={"arch": "mean_scale", "channels": 8, "latent_channels": 4},
                         g={"_target_": "compressml.g.RateDistortion"})
    with pytest.raises(ConfigError, match="init_widen: cannot widen 8 latent channels to 4"):
        init_weights(narrower, path, widen=True)
