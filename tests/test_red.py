"""RED (super-resolution): architectures, metrics, pairs, learning, tiling, the upscale CLI,
training through Hydra and evaluate.py. Tiny images and widths: seconds on two CPU cores."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, compose_train, smooth_image
from PIL import Image

from compressml import metrics
from compressml.codec.upscale import Upscaler, upscale_tensor
from compressml.data.datamodules import ImageDataset, ImageFolderDataModule, ImageItem
from compressml.data.images import load_image
from compressml.errors import ConfigError, DataError
from compressml.models.red import RED, bicubic_upscale, downscale, mod_crop
from compressml.systems import REDSystem, load_system, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


ARCHS = ("espcn", "fsrcnn", "edsr")
TINY_WIDTH = {"espcn": {"channels": 8}, "fsrcnn": {"channels": 8, "blocks": 1}, "edsr": {"channels": 8, "blocks": 1}}


def textured(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(3, h, w) in [0, 1]: conftest's smooth image plus fine oblique stripes and a bright box
    (edges and texture bicubic blurs, so a network has something to learn)."""
    img = smooth_image(h, w, seed).astype(np.float32) / 255
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img += 0.15 * np.sin(0.9 * xx + 0.4 * yy)[..., None]
    img[h // 3 : 2 * h // 3, w // 4 : 3 * w // 4] += 0.2
    return torch.from_numpy(img.clip(0, 1)).permute(2, 0, 1).contiguous()


def randomise(module: torch.nn.Module, std: float = 0.02, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter so the network is no longer plain bicubic."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)
    return module


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def y_psnr_by_hand(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    """(H, W, 3) float RGB in [0, 1]: BT.601 Y as MATLAB's rgb2ycbcr, border cropped, PSNR in dB."""

    def y(a):
        return (16 + 65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255

    d = (y(sr.astype(np.float64)) - y(hr.astype(np.float64)))[border:-border, border:-border]
    return -10 * math.log10(float(np.mean(d**2)))


# -- 1. architectures ------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("arch", ARCHS)
def test_output_shape_on_odd_sizes(arch, scale):
    torch.manual_seed(0)
    lr = torch.rand(2, 3, 7, 11)
    for global_skip in (True, False):
        net = RED(arch, scale, global_skip=global_skip, **TINY_WIDTH[arch]).eval()
        with torch.no_grad():
            out = net(lr)
        assert out.shape == (2, 3, 7 * scale, 11 * scale), (arch, scale, global_skip)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("arch", ARCHS)
def test_published_sizes_keep_the_shapes(arch, scale):
    net = RED(arch, scale).eval()  # published widths (EDSR baseline: 16 blocks of 64 channels)
    with torch.no_grad():
        assert net(torch.rand(1, 3, 5, 9)).shape == (1, 3, 5 * scale, 9 * scale)


def conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


@pytest.mark.parametrize("scale, published", [(2, 1_369_859), (3, 1_554_499), (4, 1_517_571)])
def test_edsr_baseline_parameter_count(scale, published):
    """EDSR baseline (Lim et al. 2017; BasicSR's EDSR_Mx2/x3/x4): 64 channels, 16 blocks, RGB.
    The count is also derived layer by layer here: head, 16 x 2 convs, body conv, upsampler
    (one x2/x3 stage, two x2 stages for x4), tail."""
    c = 64
    up = conv(c, c * scale * scale, 3) if scale != 4 else 2 * conv(c, 4 * c, 3)
    expected = conv(3, c, 3) + 16 * 2 * conv(c, c, 3) + conv(c, c, 3) + up + conv(c, 3, 3)
    assert expected == published
    for global_skip in (True, False):  # the skip changes no parameter count
        assert n_params(RED("edsr", scale, global_skip=global_skip)) == published


def test_espcn_and_fsrcnn_published_layouts():
    # ESPCN (Shi et al.): 5x5 64, 3x3 32, 3x3 3*r^2 (RGB in and out)
    for r in (2, 3, 4):
        assert n_params(RED("espcn", r)) == conv(3, 64, 5) + conv(64, 32, 3) + conv(32, 3 * r * r, 3)
    # FSRCNN(d=56, s=12, m=4) (Dong et al.) on RGB: conv 5x5, shrink 1x1, 4 x 3x3, expand 1x1, deconv 9x9;
    # plus one PReLU slope per channel of every activation. The count does not depend on the scale.
    d, s, m = 56, 12, 4
    weights = conv(3, d, 5) + conv(d, s, 1) + m * conv(s, s, 3) + conv(s, d, 1) + conv(d, 3, 9)
    prelu = d + s + m * s + d
    for r in (2, 3, 4):
        assert n_params(RED("fsrcnn", r)) == weights + prelu == 24_683


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("arch", ARCHS)
def test_new_model_with_global_skip_is_exactly_bicubic(arch, scale):
    torch.manual_seed(scale)
    lr = torch.rand(1, 3, 9, 6)
    net = RED(arch, scale, **TINY_WIDTH[arch]).eval()
    with torch.no_grad():
        assert torch.equal(net(lr), bicubic_upscale(lr, scale))
        # once the weights move, it is not bicubic any more (the skip is not all there is)
        assert not torch.allclose(randomise(net)(lr), bicubic_upscale(lr, scale), atol=1e-4)


def test_global_skip_off_is_not_bicubic():
    torch.manual_seed(0)
    lr = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        for arch in ARCHS:
            out = RED(arch, 2, global_skip=False, **TINY_WIDTH[arch]).eval()(lr)
            assert not torch.allclose(out, bicubic_upscale(lr, 2), atol=1e-3), arch


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arch": "srcnn"}, "model.arch"),
        ({"arch": "espcn", "scale": 5}, "model.scale"),
        ({"arch": "edsr", "scale": 1}, "model.scale"),
        ({"arch": "fsrcnn", "channels": 1}, "model.channels"),
        ({"arch": "edsr", "blocks": -1}, "model.blocks"),
    ],
)
def test_bad_architecture_or_scale_is_a_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RED(**kwargs)
    with pytest.raises(ConfigError, match=message):
        REDSystem(**kwargs)


def test_bad_loss_is_a_config_error():
    with pytest.raises(ConfigError, match="model.loss"):
        REDSystem(arch="espcn", loss="l2")


@pytest.mark.parametrize(
    "override, message", [("model.scale=5", "model.scale"), ("model.arch=srcnn", "model.arch"), ("model.loss=l2", "model.loss")]
)
def test_bad_red_config_stops_training_with_a_config_error(override, message, tmp_path):
    from compressml.training import train

    overrides = [t for t in TINY if not t.startswith("model.")] + ["model=red/espcn", "data=samples", override]
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        train(compose_train(overrides, tmp_path))


@pytest.mark.parametrize(
    "variant, arch, lr", [("red", "edsr", 1e-4), ("red/espcn", "espcn", 1e-3), ("red/fsrcnn", "fsrcnn", 1e-3), ("red/edsr", "edsr", 1e-4)]
)
def test_model_configs_compose(variant, arch, lr, tmp_path):
    cfg = compose_train([f"model={variant}", "model.scale=3"], tmp_path)
    assert cfg.model._target_ == "compressml.systems.REDSystem"
    assert cfg.model.arch == arch and cfg.model.scale == 3 and cfg.model.global_skip is True
    assert cfg.model.optimizer.lr == pytest.approx(lr)


# -- 2. it learns ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, width", [("espcn", {"channels": 16}), ("fsrcnn", {"channels": 16, "blocks": 1}), ("edsr", {"channels": 8, "blocks": 1})]
)
def test_short_training_beats_bicubic_on_its_batch(arch, width):
    torch.manual_seed(0)
    system = REDSystem(arch=arch, scale=2, **width)
    lr, hr = system.pairs(torch.stack([textured(32, 32, seed) for seed in (0, 1)]))
    assert lr.shape == (2, 3, 16, 16) and hr.shape == (2, 3, 32, 32)
    opt = torch.optim.Adam(system.parameters(), lr=1e-3)
    for _ in range(40):
        loss = system.compute_losses((lr, hr))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    system.eval()
    with torch.no_grad():
        sr = system.net(lr).clamp(0, 1)
    ours = float(metrics.psnr_y(sr, hr, 2))
    bicubic = float(metrics.psnr_y(bicubic_upscale(lr, 2).clamp(0, 1), hr, 2))
    assert ours > bicubic + 1.0, (arch, ours, bicubic)


# -- 3. metrics ------------------------------------------------------------------------------


def test_rgb_to_y_of_white_and_black():
    y_white = metrics.rgb_to_y(torch.ones(1, 3, 2, 3))
    y_black = metrics.rgb_to_y(torch.zeros(1, 3, 2, 3))
    assert y_white.shape == (1, 1, 2, 3)
    assert torch.allclose(y_white, torch.full_like(y_white, 235 / 255), atol=1e-6)
    assert torch.allclose(y_black, torch.full_like(y_black, 16 / 255), atol=1e-6)
    # pure green weighs most, pure blue least (BT.601)
    g = metrics.rgb_to_y(torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)).item()
    assert g == pytest.approx((16 + 128.553) / 255, abs=1e-6)


def test_psnr_y_matches_a_hand_computed_value():
    base = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1).expand(1, 3, 12, 14).clone()
    d_r, d_g, d_b = 0.2, 0.1, -0.1
    sr = base + torch.tensor([d_r, d_g, d_b]).view(1, 3, 1, 1)
    d_y = (65.481 * d_r + 128.553 * d_g + 24.966 * d_b) / 255  # = 23.4549 / 255
    expected = -20 * math.log10(abs(d_y))  # about 20.73 dB
    assert expected == pytest.approx(20.727, abs=1e-3)
    for border in (0, 2, 3):  # the difference is flat: cropping changes nothing
        assert float(metrics.psnr_y(sr, base, border)) == pytest.approx(expected, abs=1e-3)
    # RGB PSNR of the same pair: mean of the squared channel differences
    rgb = -10 * math.log10((d_r**2 + d_g**2 + d_b**2) / 3)
    assert float(metrics.psnr(sr, base)) == pytest.approx(rgb, abs=1e-3)
    # symmetric, and averaged over the batch as per-image PSNRs (not over pooled MSE)
    assert float(metrics.psnr_y(base, sr)) == pytest.approx(expected, abs=1e-3)
    pair = torch.cat([sr, base]), torch.cat([base, base])
    assert float(metrics.psnr_y(*pair)) == pytest.approx((expected + metrics.PSNR_CAP) / 2, abs=1e-2)


def test_crop_border_removes_the_border():
    x = torch.arange(10 * 12, dtype=torch.float32).view(1, 1, 10, 12)
    cropped = metrics.crop_border(x, 3)
    assert cropped.shape == (1, 1, 4, 6)
    assert torch.equal(cropped, x[..., 3:7, 3:9])
    assert torch.equal(metrics.crop_border(x, 0), x)

    hr = textured(20, 24)[None]
    sr = hr.clone()
    sr[..., :2, :] = 1 - sr[..., :2, :]  # the top two rows
    sr[..., :, -2:] = 0.0  # the right two columns
    sr[..., -1, :] = 1.0  # the bottom row
    assert float(metrics.psnr_y(sr, hr, 2)) == pytest.approx(metrics.PSNR_CAP, abs=1e-3)
    assert float(metrics.psnr_y(sr, hr, 1)) < 50  # row 1 and column -2 still count
    assert float(metrics.psnr_y(sr, hr, 0)) < float(metrics.psnr_y(sr, hr, 1))
    assert float(metrics.ssim_y(sr, hr, 2)) == pytest.approx(1.0, abs=1e-5)
    assert float(metrics.ssim_y(sr, hr, 0)) < 0.99


def test_psnr_y_on_a_real_pair_matches_numpy():
    hr = mod_crop(textured(30, 27, seed=3)[None], 3)
    sr = (bicubic_upscale(downscale(hr, 3), 3).clamp(0, 1) * 255).round() / 255
    expected = y_psnr_by_hand(sr[0].permute(1, 2, 0).numpy(), hr[0].permute(1, 2, 0).numpy(), 3)
    assert float(metrics.psnr_y(sr, hr, 3)) == pytest.approx(expected, abs=1e-3)


# -- 4. downscale ----------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_downscale_shape_and_8_bit_grid(scale):
    hr = textured(8 * scale, 10 * scale)[None].repeat(2, 1, 1, 1)
    lr = downscale(hr, scale)
    assert lr.shape == (2, 3, hr.shape[-2] // scale, hr.shape[-1] // scale)
    assert lr.min() >= 0 and lr.max() <= 1
    assert torch.allclose(lr * 255, (lr * 255).round(), atol=1e-4)
    raw = downscale(hr, scale, quantize=False)
    assert not torch.allclose(raw * 255, (raw * 255).round(), atol=1e-3)  # off the grid without quantize
    assert (lr - raw).abs().max() <= 0.5 / 255 + 1e-6
    # a flat image stays flat (the kernel sums to one)
    flat = torch.full((1, 3, 6 * scale, 6 * scale), 0.3)
    assert torch.allclose(downscale(flat, scale, quantize=False), torch.full((1, 3, 6, 6), 0.3), atol=1e-5)


def test_downscale_refuses_sizes_not_a_multiple_of_the_scale():
    with pytest.raises(ValueError, match="multiple of the scale"):
        downscale(torch.rand(1, 3, 33, 32), 2)
    with pytest.raises(ValueError, match="mod_crop"):
        downscale(torch.rand(1, 3, 30, 31), 3)
    x = torch.rand(1, 3, 31, 35)
    assert torch.equal(mod_crop(x, 3), x[..., :30, :33])  # crops at the bottom and right
    assert downscale(mod_crop(x, 4), 4).shape == (1, 3, 7, 8)


def test_downscale_is_antialiased():
    """A one-pixel checkerboard holds no detail at half resolution: antialiased downscaling gives
    flat mid-grey, plain subsampling keeps only the white squares (aliasing)."""
    board = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 == 0).float()
    hr = board.expand(1, 3, 32, 32).clone()
    lr = downscale(hr, 2)
    assert (lr - 0.5).abs().max() <= 3 / 255
    assert torch.equal(hr[..., ::2, ::2], torch.ones(1, 3, 16, 16))
    # stripes of period 4 (coarser than the kernel) survive x2
    stripes = ((torch.arange(32) // 2) % 2).float().expand(1, 3, 32, 32).clone()
    assert downscale(stripes, 2).std() > 0.2


# -- 5. pairs from the data modules ----------------------------------------------------------


def test_image_dataset_pairs():
    arr = smooth_image(41, 45, seed=4)
    item = ImageItem("a", array=arr)
    plain_ds = ImageDataset([item], crop_size=None, train=False)
    assert isinstance(plain_ds[0], torch.Tensor) and plain_ds[0].shape == (3, 41, 45)
    lr, hr = ImageDataset([item], crop_size=None, train=False, pair_scale=4)[0]
    assert hr.shape == (3, 40, 44) and lr.shape == (3, 10, 11)
    assert torch.equal(hr, plain_ds[0][:, :40, :44])  # cropped at the bottom and right
    assert torch.equal(lr, downscale(hr[None], 4)[0])
    torch.manual_seed(0)
    train_ds = ImageDataset([item], crop_size=23, train=True, repeat=3, pair_scale=3)
    for i in range(len(train_ds)):
        lr, hr = train_ds[i]
        assert hr.shape == (3, 21, 21) and lr.shape == (3, 7, 7)
        assert torch.equal(lr, downscale(hr[None], 3)[0])
    with pytest.raises(DataError, match="too small"):
        ImageDataset([item], crop_size=1, train=False, pair_scale=2)[0]


def test_folder_datamodule_pairs_set_by_the_system(image_folder):
    dm = ImageFolderDataModule(
        root=image_folder, split="ratio", val_ratio=0.34, crop_size=32, val_crop_size=29, batch_size=2, num_workers=0
    )
    assert dm.pair_scale is None
    system = REDSystem(arch="edsr", scale=3, channels=8, blocks=1)
    system.adapt_datamodule(dm)
    assert dm.pair_scale == 3
    dm.setup("fit")
    lr, hr = next(iter(dm.train_dataloader()))
    assert hr.shape == (2, 3, 30, 30) and lr.shape == (2, 3, 10, 10)
    assert torch.equal(lr, downscale(hr, 3))
    vlr, vhr = next(iter(dm.val_dataloader()))
    assert vhr.shape[-2:] == (27, 27) and vlr.shape[-2:] == (9, 9)
    assert torch.equal(vlr, downscale(vhr, 3))
    terms = system.compute_losses((lr, hr))
    assert terms["x_hat"].shape == hr.shape and torch.equal(terms["target"], hr)
    # plain image batches still come out of a module nobody adapted
    dm2 = ImageFolderDataModule(root=image_folder, split="ratio", val_ratio=0.34, crop_size=32, batch_size=2, num_workers=0)
    dm2.setup("fit")
    assert isinstance(next(iter(dm2.train_dataloader())), torch.Tensor)


def test_adapt_datamodule_refuses_a_module_without_pairs():
    class NoPairs:
        pass

    with pytest.raises(ConfigError, match="super-resolution pairs"):
        REDSystem(arch="espcn", channels=8).adapt_datamodule(NoPairs())


def test_compute_losses_accepts_plain_images():
    torch.manual_seed(0)
    system = REDSystem(arch="espcn", scale=2, channels=8)
    batch = torch.stack([textured(33, 35, 0), textured(33, 35, 1)])
    terms = system.compute_losses(batch)
    assert terms["x_hat"].shape == (2, 3, 32, 34)
    assert torch.equal(terms["target"], batch[..., :32, :34])
    # the same as giving the pairs
    hr = batch[..., :32, :34]
    paired = system.compute_losses((downscale(hr, 2), hr))
    assert torch.allclose(terms["loss"], paired["loss"])
    # a new model is bicubic: its Y-PSNR is bicubic's
    assert float(terms["psnr_y"]) == pytest.approx(float(terms["psnr_y_bicubic"]), abs=1e-4)
    assert 15 < float(terms["psnr_y"]) < 60
    # l1 by default, mse on request
    mse = REDSystem(arch="espcn", scale=2, channels=8, loss="mse")
    mse.net.load_state_dict(system.net.state_dict())
    sr = system.net(downscale(hr, 2))
    assert torch.allclose(terms["loss"], F.l1_loss(sr, hr))
    assert torch.allclose(mse.compute_losses(batch)["loss"], F.mse_loss(sr, hr))
    with pytest.raises(ConfigError, match="too small"):
        system.compute_losses(torch.rand(1, 3, 1, 5))


# -- 6. tiling -------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_tiled_upscale_matches_untiled(arch, scale):
    torch.manual_seed(1)
    net = randomise(RED(arch, scale, **TINY_WIDTH[arch]), std=0.05).eval()
    lr = textured(37, 43, seed=2)[None]  # larger than one 16-pixel tile, not a multiple of it
    whole = upscale_tensor(net, lr, tile=None)
    tiled = upscale_tensor(net, lr, tile=16)
    assert whole.shape == tiled.shape == (1, 3, 37 * scale, 43 * scale)
    assert (tiled - whole).abs().max() <= 1e-5
    # the model is not bicubic (or tiling would only be tested on bicubic)
    assert (whole - bicubic_upscale(lr, scale).clamp(0, 1)).abs().max() > 1e-2
    # clamped to [0, 1]
    assert whole.min() >= 0 and whole.max() <= 1


# -- 7. the upscale command --------------------------------------------------------------------


@pytest.fixture(scope="module")
def red_checkpoint(tmp_path_factory) -> Path:
    """A tiny ESPCN x2 whose weights are perturbed (so its output is not bicubic), as a checkpoint."""
    torch.manual_seed(0)
    system = REDSystem(arch="espcn", scale=2, channels=8)
    randomise(system.net, std=0.02)
    return save_checkpoint(system, tmp_path_factory.mktemp("red") / "red_x2.ckpt")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


def test_checkpoint_reloads_as_red(red_checkpoint):
    system = load_system(red_checkpoint)
    assert system.family == "red" and isinstance(system, REDSystem)
    assert system.hparams.arch == "espcn" and system.scale == 2
    up = Upscaler.load(red_checkpoint)
    assert up.scale == 2
    lr = textured(10, 12)[None]
    assert not torch.allclose(up(lr), bicubic_upscale(lr, 2).clamp(0, 1), atol=1e-3)


def test_cli_upscale_file_and_overwrite(tmp_path, red_checkpoint, capsys):
    from compressml.cli import main

    src = tmp_path / "in.png"
    Image.fromarray(smooth_image(15, 21, seed=5)).save(src)
    out = tmp_path / "out.png"
    assert main(["upscale", str(src), "-m", str(red_checkpoint), "-o", str(out)]) == 0
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (42, 30)
        got = np.asarray(img)
    expected = upscale_tensor(Upscaler.load(red_checkpoint).net, load_image(src)[None], tile=None)[0]
    expected = (expected * 255).round().byte().permute(1, 2, 0).numpy()
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    capsys.readouterr()

    before = out.read_bytes()
    other = tmp_path / "other.png"
    Image.fromarray(smooth_image(9, 9, seed=6)).save(other)
    code = main(["upscale", str(other), "-m", str(red_checkpoint), "-o", str(out)])
    assert code != 0
    assert "--force" in _one_line_error(capsys)
    assert out.read_bytes() == before
    assert main(["upscale", str(other), "-m", str(red_checkpoint), "-o", str(out), "--force"]) == 0
    with Image.open(out) as img:
        assert img.size == (18, 18)
    capsys.readouterr()
    code = main(["upscale", str(other), "-m", str(red_checkpoint), "-o", str(tmp_path / "t.png"), "--tile", "8"])
    assert code != 0 and "tile must be >= 16" in _one_line_error(capsys)
    assert not (tmp_path / "t.png").exists()
    assert not (tmp_path / "t.png").exists()
    # a tile of 16 (smaller than the image) gives the untiled result
    big = tmp_path / "big.png"
    Image.fromarray(smooth_image(20, 37, seed=7)).save(big)
    assert main(["upscale", str(big), "-m", str(red_checkpoint), "-o", str(tmp_path / "t16.png"), "--tile", "16"]) == 0
    assert main(["upscale", str(big), "-m", str(red_checkpoint), "-o", str(tmp_path / "t256.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "t16.png")), np.asarray(Image.open(tmp_path / "t256.png")))


def test_cli_upscale_refuses_a_codec_checkpoint(tmp_path, tiny_checkpoint, capsys):
    from compressml.cli import main

    src = tmp_path / "in.png"
    Image.fromarray(smooth_image(16, 16)).save(src)
    out = tmp_path / "out.png"
    code = main(["upscale", str(src), "-m", str(tiny_checkpoint), "-o", str(out)])
    assert code != 0
    err = _one_line_error(capsys)
    assert "not a RED" in err and "'lae'" in err
    assert not out.exists()
    code = main(["upscale", str(src), "-m", str(tmp_path / "missing.ckpt"), "-o", str(out)])
    assert code != 0 and "missing.ckpt" in _one_line_error(capsys)


def test_cli_upscale_folder(tmp_path, red_checkpoint, capsys):
    from compressml.cli import main

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(smooth_image(10, 14, seed=1)).save(src / "a.png")
    Image.fromarray(smooth_image(11, 9, seed=2)).save(src / "sub" / "b.jpg", quality=95)
    out = tmp_path / "out"
    assert main(["upscale", str(src), "-m", str(red_checkpoint), "-o", str(out)]) == 0
    with Image.open(out / "a.png") as a, Image.open(out / "sub" / "b.png") as b:
        assert a.size == (28, 20) and b.size == (18, 22)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["a.png", "sub/b.png"]


def test_cli_upscale_grey_and_alpha(tmp_path, red_checkpoint):
    from compressml.cli import main

    grey = tmp_path / "grey.png"
    Image.fromarray(smooth_image(12, 16, seed=3)[..., 1], mode="L").save(grey)
    assert main(["upscale", str(grey), "-m", str(red_checkpoint), "-o", str(tmp_path / "grey_x2.png")]) == 0
    with Image.open(tmp_path / "grey_x2.png") as img:
        assert img.mode == "L" and img.size == (32, 24)

    rgba = np.dstack([smooth_image(12, 16, seed=4), np.zeros((12, 16), np.uint8)])
    rgba[:, 8:, 3] = 255  # transparent left half, opaque right half
    src = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(src)
    assert main(["upscale", str(src), "-m", str(red_checkpoint), "-o", str(tmp_path / "rgba_x2.png")]) == 0
    with Image.open(tmp_path / "rgba_x2.png") as img:
        assert img.mode == "RGBA" and img.size == (32, 24)
        alpha = np.asarray(img.getchannel("A")).astype(int)
    assert alpha.shape == (24, 32)
    assert alpha[:, :12].max() <= 5 and alpha[:, 20:].min() >= 250  # away from the edge at x = 16

    Image.fromarray(rgba[..., [1, 3]], mode="LA").save(src)  # grey + alpha stays grey + alpha
    assert main(["upscale", str(src), "-m", str(red_checkpoint), "-o", str(tmp_path / "la_x2.png")]) == 0
    with Image.open(tmp_path / "la_x2.png") as img:
        assert img.mode == "LA" and img.size == (32, 24)


# -- 8. training through Hydra -------------------------------------------------------------------


@pytest.mark.slow
def test_hydra_training_writes_a_red_checkpoint(image_folder, tmp_path):
    from compressml.training import train

    overrides = [t for t in TINY if not t.startswith("model.")] + [
        "model=red/espcn",
        "model.scale=2",
        "model.channels=8",
        "data=folder",
        f"data.root={image_folder}",
    ]
    summary = train(compose_train(overrides, tmp_path / "run"))
    assert summary["global_step"] == 3
    for key in ("val/psnr_y", "val/psnr_y_bicubic", "val/ssim_y", "val/loss"):
        assert key in summary["best"], key
    assert 10 < summary["best"]["val/psnr_y_bicubic"] < 80
    last = Path(summary["last_checkpoint"])
    assert last.is_file()
    system = load_system(last)
    assert system.family == "red" and system.hparams.arch == "espcn" and system.scale == 2
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["compressml"]["family"] == "red"
    with torch.no_grad():
        assert system.net(torch.rand(1, 3, 5, 7)).shape == (1, 3, 10, 14)


# -- 9. evaluate.py ------------------------------------------------------------------------------


@pytest.fixture
def sr_images(tmp_path) -> Path:
    folder = tmp_path / "hr"
    folder.mkdir()
    for name, (h, w), seed in (("a.png", (33, 40), 1), ("b.png", (30, 27), 2)):
        arr = (textured(h, w, seed).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(folder / name)
    return folder


def test_evaluate_red_checkpoint_on_a_folder(tmp_path, sr_images, red_checkpoint):
    from compressml.evaluation import evaluate_from_config

    out = tmp_path / "out"
    cfg = compose_train([f"checkpoint={red_checkpoint}", f"images={sr_images}"], out, config_name="evaluate")
    result = evaluate_from_config(cfg)
    assert result["scale"] == 2
    assert result["methods"] == ["bicubic", "red_x2"]
    rows = result["images"]
    assert sorted((r["image"], r["method"]) for r in rows) == [
        ("a.png", "bicubic"),
        ("a.png", "red_x2"),
        ("b.png", "bicubic"),
        ("b.png", "red_x2"),
    ]
    # bicubic's row, recomputed here: crop to a multiple of 2, downscale, bicubic, 8 bits, Y, border 2
    for name in ("a.png", "b.png"):
        hr = mod_crop(load_image(sr_images / name)[None], 2)
        sr = (bicubic_upscale(downscale(hr, 2), 2).clamp(0, 1) * 255).round() / 255
        expected = y_psnr_by_hand(sr[0].permute(1, 2, 0).numpy(), hr[0].permute(1, 2, 0).numpy(), 2)
        row = next(r for r in rows if r["image"] == name and r["method"] == "bicubic")
        assert row["psnr_y"] == pytest.approx(expected, abs=1e-3)
        assert 0 < row["ssim_y"] <= 1
    model_rows = [r for r in rows if r["method"] == "red_x2"]
    assert all(
        r["psnr_y"] != next(b for b in rows if b["image"] == r["image"] and b["method"] == "bicubic")["psnr_y"] for r in model_rows
    )  # the perturbed model is not bicubic
    for method in result["methods"]:
        mine = [r for r in rows if r["method"] == method]
        for key in ("psnr_y", "ssim_y", "psnr_rgb"):
            assert result["averages"][method][key] == pytest.approx(sum(r[key] for r in mine) / 2)
    saved = json.loads((out / "results.json").read_text())
    assert saved["averages"].keys() == result["averages"].keys() and len(saved["images"]) == 4
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 + 2 and {r["image"] for r in table} == {"a.png", "b.png", "mean"}
    crops = sorted(p.name for p in (out / "crops").glob("*.png"))
    assert crops == ["a_png.png", "b_png.png"]
    with Image.open(out / "crops" / "b_png.png") as img:  # bicubic | model | ground truth, 4 px apart
        side = 26  # b.png is 30 x 27, cropped to 30 x 26
        assert img.size == (3 * side + 2 * 4, side)
    report = (out / "report.html").read_text()  # the table and every crop it shows
    assert f"{result['averages']['red_x2']['psnr_y']:.2f}" in report
    assert all((out / src).is_file() for src in re.findall(r'<img src="([^"]+)"', report)) and report.count("<img") == 2


def test_evaluate_label_names_the_red_model(tmp_path, sr_images, red_checkpoint):
    from compressml.evaluation import evaluate_from_config

    cfg = compose_train(
        [f"checkpoint={red_checkpoint}", f"images={sr_images}", "label=mine", "tile=16", "max_images=1"],
        tmp_path / "out",
        config_name="evaluate",
    )
    result = evaluate_from_config(cfg)
    assert result["methods"] == ["bicubic", "mine"]
    assert {r["image"] for r in result["images"]} == {"a.png"}


def test_evaluate_refuses_red_mixed_with_a_codec(tmp_path, sr_images, red_checkpoint, tiny_checkpoint):
    from compressml.evaluation import evaluate_from_config

    out = tmp_path / "out"
    cfg = compose_train([f"checkpoint=[{red_checkpoint},{tiny_checkpoint}]", f"images={sr_images}"], out, config_name="evaluate")
    with pytest.raises(ConfigError, match="RED"):
        evaluate_from_config(cfg)
    assert not (out / "results.json").exists()


# -- 10. the hybrid codec: a base codec at low resolution, RED when decoding ------------------------


def _source(h: int, w: int, seed: int = 0, alpha: bool = False):
    from compressml.codec.lae import SourceImage

    a = (np.arange(h * w, dtype=np.uint8).reshape(h, w) * 7) if alpha else None
    return SourceImage(rgb=textured(h, w, seed), channels=4 if alpha else 3, alpha=a)


@pytest.mark.parametrize("base", ["jpeg-420", "webp"])
def test_hybrid_round_trip_through_a_file(base, tmp_path, red_checkpoint):
    from compressml.codec import container as cml
    from compressml.codec.hybrid import HybridCodec, decode_base_image

    codec = HybridCodec.load(str(red_checkpoint), base, 80)
    image = _source(37, 50, alpha=True)  # odd sizes: padded to a multiple of the scale, cropped back
    path = tmp_path / "x.cml"
    path.write_bytes(codec.encode(image).to_bytes())
    parsed = cml.parse(path.read_bytes())
    assert parsed.family == "hybrid" and (parsed.height, parsed.width) == (37, 50) and (parsed.pad_h, parsed.pad_w) == (1, 0)
    assert path.stat().st_size < 37 * 50 * 3 / 4  # far below raw 8-bit RGB
    decoded = HybridCodec.load(str(red_checkpoint)).decode(parsed)  # decoding needs no base option
    assert decoded.rgb.shape == (3, 37, 50) and np.array_equal(decoded.alpha, image.alpha)
    # what decoding must be: the base layer decoded, then the RED, then the padding cropped
    lr = decode_base_image(base, parsed.section(0x13), (19, 25))
    expected = upscale_tensor(codec.net, torch.from_numpy(lr.copy()).permute(2, 0, 1)[None].float() / 255)[0, :, :37, :50]
    assert torch.allclose(decoded.rgb, expected, atol=1e-6)
    assert metrics.psnr(decoded.rgb[None], image.rgb[None]) > 20


def test_hybrid_quality_trades_size_for_fidelity(red_checkpoint):
    from compressml.codec.hybrid import HybridCodec

    image = _source(48, 64, seed=3)
    sizes, psnrs = [], []
    for q in (10, 90):
        codec = HybridCodec.load(str(red_checkpoint), "jpeg-420", q)
        container = codec.encode(image)
        sizes.append(len(container.to_bytes()))
        psnrs.append(float(metrics.psnr(codec.decode(container).rgb[None], image.rgb[None])))
    assert sizes[0] < sizes[1] and psnrs[0] < psnrs[1]


def test_hybrid_with_an_lae_base(tmp_path, red_checkpoint, tiny_checkpoint):
    from compressml.codec import container as cml
    from compressml.codec.hybrid import HybridCodec
    from compressml.errors import CheckpointError

    codec = HybridCodec.load(str(red_checkpoint), str(tiny_checkpoint))
    assert codec.base == "lae" and codec.name == "hybrid-lae+red-x2"
    image = _source(40, 36)
    data = codec.encode(image).to_bytes()
    inner = cml.parse(cml.parse(data).section(0x13))
    assert inner.family == "lae" and (inner.height, inner.width) == (20, 18)  # the LAE codes the half-size image
    decoded = codec.decode(cml.parse(data))
    assert decoded.rgb.shape == (3, 40, 36)
    with pytest.raises(CheckpointError, match="LAE"):
        HybridCodec.load(str(red_checkpoint)).decode(cml.parse(data))


def test_hybrid_refuses_other_weights_bad_meta_and_bad_options(tmp_path, red_checkpoint):
    from compressml.codec import container as cml
    from compressml.codec.container import ContainerError
    from compressml.codec.hybrid import META, HybridCodec

    codec = HybridCodec.load(str(red_checkpoint), "webp", 50)
    container = codec.encode(_source(20, 20))
    other = REDSystem(arch="espcn", scale=2, channels=8)
    other_path = save_checkpoint(other, tmp_path / "other.ckpt")
    with pytest.raises(ContainerError, match="other weights"):
        HybridCodec.load(str(other_path)).decode(cml.parse(container.to_bytes()))
    container.sections = [(k, b"\x02\x03abc\x00\x00" if k == META else p) for k, p in container.sections]
    with pytest.raises(ContainerError, match="META"):
        codec.decode(cml.parse(container.to_bytes()))
    with pytest.raises(ConfigError, match="unknown hybrid base"):
        HybridCodec.load(str(red_checkpoint), "gif")
    with pytest.raises(ConfigError, match="0..100"):
        HybridCodec.load(str(red_checkpoint), "jpeg-420", 101)


def test_cli_compress_and_decompress_hybrid(tmp_path, red_checkpoint, tiny_checkpoint, capsys):
    from compressml.cli import main

    src = tmp_path / "in.png"
    Image.fromarray(smooth_image(30, 44, seed=2)).save(src)
    cml_path, out = tmp_path / "in.cml", tmp_path / "out.png"
    assert main(["compress", str(src), "-m", str(red_checkpoint), "--base", "jpeg-420", "-q", "60", "-o", str(cml_path)]) == 0
    assert main(["decompress", str(cml_path), "-m", str(red_checkpoint), "-o", str(out)]) == 0
    with Image.open(out) as img:
        assert img.size == (44, 30)
    capsys.readouterr()
    # a RED alone is not a codec, and --base needs a RED
    assert main(["compress", str(src), "-m", str(red_checkpoint), "-o", str(tmp_path / "a.cml")]) != 0
    assert "--base" in _one_line_error(capsys)
    assert main(["compress", str(src), "-m", str(tiny_checkpoint), "--base", "webp", "-o", str(tmp_path / "b.cml")]) != 0
    assert "RED" in _one_line_error(capsys)
    assert not (tmp_path / "a.cml").exists() and not (tmp_path / "b.cml").exists()
    # a codec model cannot decode a hybrid file
    assert main(["decompress", str(cml_path), "-m", str(tiny_checkpoint), "-o", str(tmp_path / "c.png")]) != 0
    assert "hybrid" in _one_line_error(capsys)


def test_evaluate_draws_the_hybrid_curve(tmp_path, sr_images, red_checkpoint):
    from compressml.evaluation import evaluate_from_config

    out = tmp_path / "out"
    cfg = compose_train(
        [
            f"images={sr_images}",
            "codecs=[webp]",
            "matched=[]",
            "compare=[webp]",
            f"hybrid=[{{red: {red_checkpoint}, base: webp, settings: [20, 80]}}]",
        ],
        out,
        config_name="evaluate",
    )
    result = evaluate_from_config(cfg)
    assert result["learned"] == ["hybrid-webp+red-x2"]
    points = [r for r in result["averages"] if r["codec"] == "hybrid-webp+red-x2"]
    assert sorted(r["setting"] for r in points) == ["20", "80"] and all(r["images"] == 2 for r in points)
    assert points[0]["bpp"] != points[1]["bpp"]
    assert "webp" in result["bd_rate"]["hybrid-webp+red-x2"]
    assert len(list((out / "files" / "hybrid-webp+red-x2" / "80").glob("*.cml"))) == 2
    assert (out / "rd.png").is_file() and (out / "curves" / "hybrid-webp+red-x2.json").is_file()


@pytest.mark.parametrize("base", ["webp", "avif"])
def test_hybrid_damaged_base_layer_is_a_one_line_error(base, red_checkpoint):
    from compressml.baselines import CODECS, is_supported
    from compressml.codec import container as cml
    from compressml.codec.container import ContainerError
    from compressml.codec.hybrid import BASE, HybridCodec

    if not is_supported(CODECS[base]):
        pytest.skip(f"this Pillow has no {base}")
    codec = HybridCodec.load(str(red_checkpoint), base, 60)
    container = codec.encode(_source(24, 24))
    for damage in (lambda p: p[:-20], lambda p: p[: len(p) // 2], lambda p: b"\x00" * len(p)):
        broken = cml.Container(**{**container.__dict__, "sections": [(k, damage(p) if k == BASE else p) for k, p in container.sections]})
        with pytest.raises(ContainerError) as err:
            codec.decode(cml.parse(broken.to_bytes()))
        assert "\n" not in str(err.value)


def test_hybrid_entries_need_distinct_curves_and_valid_settings(tmp_path, sr_images, red_checkpoint):
    from compressml.evaluation import evaluate_from_config

    twice = f"hybrid=[{{red: {red_checkpoint}, base: webp}}, {{red: {red_checkpoint}, base: webp}}]"
    scalar = f"hybrid=[{{red: {red_checkpoint}, base: webp, settings: 50}}]"
    for override, message in ((twice, "same curve"), (scalar, "list of qualities")):
        cfg = compose_train([f"images={sr_images}", "codecs=[]", override], tmp_path / "o", config_name="evaluate")
        with pytest.raises(ConfigError, match=message):
            evaluate_from_config(cfg)
    cfg = compose_train([f"checkpoint={red_checkpoint}", f"images={sr_images}", "tile=0"], tmp_path / "p", config_name="evaluate")
    with pytest.raises(ConfigError, match="tile"):
        evaluate_from_config(cfg)
