"""Variable-rate LAE: gain vectors conditioned on λ, continuous quality, rate control and quality maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from compressml.codec import container as cml
from compressml.codec import lae as lae_codec
from compressml.codec import rate_control
from compressml.codec.files import CodecModel, RateRequest, encode_image
from compressml.errors import CompressMLError, ConfigError
from compressml.g import DistortionCap, RateDistortion
from compressml.models.lae import build_lae, net_spec
from compressml.models.variable_rate import conditioned, rate_gain_of
from compressml.systems import LAESystem

ARCHS = ["mean_scale", "cheng2020-anchor-checkerboard", "elic2022-chandelier"]


def tiny_vr(arch: str = "mean_scale", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    latent = 16 if arch != "elic2022-chandelier" else 20
    net = build_lae(arch, 8, latent if arch != "cheng2020-anchor-checkerboard" else 8, variable_rate=True, lmbda_range=[1e-4, 10.0]).eval()
    last = [m for m in net.g_a.inner.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # an untrained analysis gives latents of a few hundredths: all zeros below q 50
        last.weight.mul_(20)
    net.update(force=True)
    return net


def smooth(h: int = 64, w: int = 80, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, h // 8, w // 8, generator=g)
    return torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_a_variable_rate_model_codes_more_bits_at_a_higher_quality_and_decodes_at_the_quality_in_its_file(arch):
    net = tiny_vr(arch)
    x = smooth()
    sizes = []
    for q in (0, 50, 100):
        container = lae_codec.encode(net, lae_codec.SourceImage(rgb=x), rate=lae_codec.Rate(quality=q))
        data = container.to_bytes()
        sizes.append(len(data))
        decoded = lae_codec.decode(net, cml.parse(data)).rgb
        with conditioned(net, rate_gain_of(net).log_lmbda(q)):  # the same as decoding at that quality directly
            direct = lae_codec.decode(net, cml.parse(data)).rgb
        assert torch.equal(decoded, direct)
    assert sizes[0] < sizes[1] < sizes[2]


def test_net_spec_round_trip_and_state_keep_the_range():
    net = tiny_vr()
    spec = net_spec(net)
    assert spec["variable_rate"] is True and spec["anchors"] == 6
    assert spec["lmbda_range"] == pytest.approx([1e-4, 10.0])
    again = build_lae(**spec)
    again.load_state_dict(net.state_dict(), strict=False)
    assert rate_gain_of(again).lmbda_range == pytest.approx((1e-4, 10.0))
    assert "rate_gain.log_gain" in net.state_dict() and "rate_gain.log_range" in net.state_dict()


def test_quality_maps_give_the_marked_region_more_of_the_latent():
    net = tiny_vr()
    gain = rate_gain_of(net)
    y = torch.ones(1, 16, 4, 5)
    cond = torch.full((1, 1, 4, 5), gain.log_lmbda(10.0), dtype=torch.float64)
    cond[..., 1:3, 1:3] = gain.log_lmbda(90.0)
    with conditioned(net, cond):
        g = gain.gain(y)
    assert g.shape == (1, 16, 4, 5)
    assert bool(g[..., 1:3, 1:3].mean() > g[..., 0, :].mean())
    mask = np.zeros((64, 80), np.uint8)
    mask[16:40, 20:50] = 255
    rate = lae_codec.roi_map(net, mask, 20, 80)
    assert rate.map.shape == lae_codec.latent_size(net, 64, 80) == (4, 8)
    assert set(np.unique(rate.map)) == {20, 80} and rate.map[1, 1] == 80 and rate.map[0, 0] == 20
    container = lae_codec.encode(net, lae_codec.SourceImage(rgb=smooth()), rate=rate)
    parsed = cml.parse(container.to_bytes())
    assert np.array_equal(lae_codec.Rate.read(parsed.section(lae_codec.RATE), (4, 8)).map, rate.map)
    assert lae_codec.decode(net, parsed).rgb.shape == (3, 64, 80)


def test_files_of_one_kind_are_refused_by_the_other():
    vr, fixed = tiny_vr(), build_lae("mean_scale", 8, 16).eval()
    fixed.update(force=True)
    x = lae_codec.SourceImage(rgb=smooth())
    vr_file = cml.parse(lae_codec.encode(vr, x, fingerprint=b"v" * 16).to_bytes())
    fixed_file = cml.parse(lae_codec.encode(fixed, x, fingerprint=b"f" * 16).to_bytes())
    with pytest.raises(cml.ContainerError, match="variable-rate"):
        lae_codec.decode(fixed, vr_file, fingerprint=b"v" * 16)
    with pytest.raises(cml.ContainerError, match="no rate section"):
        lae_codec.decode(vr, fixed_file, fingerprint=b"f" * 16)
    with pytest.raises(CompressMLError, match="variable-rate"):
        lae_codec.encode(fixed, x, rate=lae_codec.Rate(quality=50))
    for bad in (b"\x00\x27\x11", b"\x01\x00\x04\x00\x08" + b"junk", b"\x02"):
        with pytest.raises(cml.ContainerError):
            lae_codec.Rate.read(bad, (4, 8))


def _codec(net) -> CodecModel:
    return CodecModel(net=net, fingerprint=lae_codec.weights_fingerprint(net), source="tiny")


def test_rate_control_meets_each_target_on_the_real_file():
    model = _codec(tiny_vr())
    image = lae_codec.SourceImage(rgb=smooth(64, 96))
    low, high = (len(model.at(q).encode(image).to_bytes()) for q in (0, 100))
    budget = (low + high) // 2
    container, chosen = encode_image(model, image, RateRequest(target="max_bytes", value=budget))
    size = len(container.to_bytes())
    assert size <= budget and chosen["achieved"] == size
    assert 1 <= chosen["passes"] <= 10  # bisection over 201 qualities
    q = float(chosen["rung"].split()[1])
    if q < 100:  # the next quality up does not fit
        assert len(model.at(q + rate_control.QUALITY_STEP).encode(image).to_bytes()) > budget
    with pytest.raises(rate_control.RateControlError, match="lowest quality"):
        encode_image(model, image, RateRequest(target="max_bytes", value=low - 1))
    psnrs = [
        rate_control.control(
            [rate_control.Rung("q", lambda q=q: model.at(q).encode(image), lambda c: model.decode(c).rgb)], "psnr", 1.0, image.rgb
        ).achieved
        for q in (0, 100)
    ]
    goal_psnr = sum(psnrs) / 2
    container, chosen = encode_image(model, image, RateRequest(target="psnr", value=goal_psnr))
    decoded = model.decode(cml.parse(container.to_bytes())).rgb
    assert chosen["achieved"] >= goal_psnr
    assert abs(float(-10 * torch.log10(((decoded - image.rgb) ** 2).mean())) - chosen["achieved"]) < 1e-3
    with pytest.raises(rate_control.RateControlError, match="highest quality"):
        encode_image(model, image, RateRequest(target="psnr", value=99.0))
    goal = 8 * budget / (64 * 96)
    _, chosen = encode_image(model, image, RateRequest(target="bpp", value=goal))
    assert abs(chosen["achieved"] - goal) < 0.5 * goal


def test_rate_control_refuses_a_single_fixed_rate_model():
    fixed = build_lae("mean_scale", 8, 16).eval()
    fixed.update(force=True)
    with pytest.raises(CompressMLError, match="variable-rate"):
        encode_image(_codec(fixed), lae_codec.SourceImage(rgb=smooth()), RateRequest(target="bpp", value=1.0))


def test_training_draws_lambda_and_gives_it_to_g():
    seen = []

    class Spy(RateDistortion):
        def __call__(self, distortion, rate, **context):
            seen.append(context.get("lmbda"))
            return super().__call__(distortion, rate, **context)

    system = LAESystem(
        net={"arch": "mean_scale", "channels": 8, "latent_channels": 16},
        g=Spy(0.01),
        variable_rate=True,
        lmbda_range=[0.001, 0.1],
        rate_maps=0.5,
        val_qualities=[0, 100],
    )
    system.train()
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(0)
    for _ in range(8):
        terms = system.compute_losses(x)
        assert torch.isfinite(terms["loss"])
        terms["loss"].backward()
    assert all(0.001 * 0.999 <= v <= 0.1 * 1.001 for v in seen) and len(set(seen)) == 8
    assert rate_gain_of(system.net).log_gain.grad is not None
    system.eval()
    with torch.no_grad():
        terms = system.compute_losses(x)
    assert {"bpp_q0", "psnr_q0", "bpp_q100", "psnr_q100"} <= set(terms)
    assert float(terms["bpp_q0"]) < float(terms["bpp_q100"])
    assert system.hparams.net["variable_rate"] is True


def test_variable_rate_refusals():
    net = {"arch": "mean_scale", "channels": 8, "latent_channels": 16}
    with pytest.raises(ConfigError, match="weigh the distortion by λ"):
        LAESystem(net=net, g=DistortionCap(min_psnr=30), variable_rate=True)
    with pytest.raises(ConfigError, match="rate_maps"):
        LAESystem(net=net, g=RateDistortion(8.0, "ms-ssim"), variable_rate=True, rate_maps=0.5)
    with pytest.raises(ConfigError, match="variable-rate"):
        LAESystem(net=net, g=RateDistortion(0.01), rate_maps=0.5)
    with pytest.raises(ConfigError, match="lmbda_range"):
        build_lae("mean_scale", 8, 16, variable_rate=True, lmbda_range=[0.1, 0.01])


def test_tiled_coding_of_a_variable_rate_model_matches_the_whole_image():
    net = tiny_vr()
    x = lae_codec.SourceImage(rgb=smooth(128, 128))
    whole = lae_codec.encode(net, x, rate=lae_codec.Rate(quality=60)).to_bytes()
    tiled = lae_codec.encode(net, x, rate=lae_codec.Rate(quality=60), tile_pixels=64 * 64).to_bytes()
    a = lae_codec.decode(net, cml.parse(whole)).rgb
    b = lae_codec.decode(net, cml.parse(tiled), tile_pixels=64 * 64).rgb
    assert (a - b).abs().max() < 2e-2


@pytest.fixture(scope="module")
def vr_bundle(tmp_path_factory):
    from conftest import save_system_checkpoint

    from compressml.export import export_bundle

    torch.manual_seed(0)
    system = LAESystem(
        net={"arch": "mean_scale", "channels": 8, "latent_channels": 16},
        g={"_target_": "compressml.g.RateDistortion", "lmbda": 0.01},
        variable_rate=True,
        lmbda_range=[1e-4, 10.0],
    )
    folder = tmp_path_factory.mktemp("vr")
    ckpt = save_system_checkpoint(system, folder / "vr.ckpt")
    export_bundle(ckpt, folder / "bundle", onnx=False, torchscript=False)
    return folder / "bundle"


def test_cli_quality_max_bytes_and_roi(vr_bundle, tmp_path, capsys):
    from compressml.cli import main

    rgb = (smooth(64, 96).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    mask = np.zeros((64, 96), np.uint8)
    mask[:32, :48] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")

    class Result:
        def __init__(self, code, out, err):
            self.returncode, self.stdout, self.stderr = code, out, err

    def cli(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    sizes = {}
    for q in (10, 90):
        r = cli("compress", tmp_path / "a.png", "-m", vr_bundle, "-q", q, "-o", tmp_path / f"q{q}.cml")
        assert r.returncode == 0, r.stderr
        sizes[q] = (tmp_path / f"q{q}.cml").stat().st_size
        assert cli("decompress", tmp_path / f"q{q}.cml", "-m", vr_bundle, "-o", tmp_path / f"q{q}.png").returncode == 0
    assert sizes[10] < sizes[90]
    budget = (sizes[10] + sizes[90]) // 2
    r = cli("compress", tmp_path / "a.png", "-m", vr_bundle, "--max-bytes", budget, "-o", tmp_path / "b.cml")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "b.cml").stat().st_size <= budget and "coding passes" in r.stdout
    r = cli("compress", tmp_path / "a.png", "-m", vr_bundle, "--max-bytes", 10, "-o", tmp_path / "c.cml")
    assert r.returncode != 0 and not (tmp_path / "c.cml").exists()
    assert r.stderr.strip().count("\n") == 0 and "lowest quality" in r.stderr
    r = cli("compress", tmp_path / "a.png", "-m", vr_bundle, "-q", 20, "--roi", tmp_path / "mask.png", "-o", tmp_path / "roi.cml")
    assert r.returncode == 0, r.stderr
    assert cli("decompress", tmp_path / "roi.cml", "-m", vr_bundle, "-o", tmp_path / "roi.png").returncode == 0
    r = cli("compress", tmp_path / "a.png", "-m", vr_bundle, "-q", 150, "-o", tmp_path / "d.cml")
    assert r.returncode != 0 and "0..100" in r.stderr


def test_info_shows_the_quality_and_the_default_premade_model_takes_rate_control(vr_bundle, tmp_path, capsys):
    from compressml.cli import main

    rgb = (smooth(64, 64).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert main(["compress", str(tmp_path / "a.png"), "-m", str(vr_bundle), "-q", "62.5", "-o", str(tmp_path / "a.cml")]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "a.cml")]) == 0
    assert "quality 62.5" in capsys.readouterr().out
    # no -m: the premade variable-rate model, -q 0..100 and rate control on it
    sizes = []
    for q in (10, 90):
        assert main(["compress", str(tmp_path / "a.png"), "-q", str(q), "-o", str(tmp_path / f"p{q}.cml")]) == 0
        sizes.append((tmp_path / f"p{q}.cml").stat().st_size)
    assert sizes[0] < sizes[1]
    capsys.readouterr()
    budget = sizes[1] - 1
    assert main(["compress", str(tmp_path / "a.png"), "--max-bytes", str(budget), "-o", str(tmp_path / "b.cml")]) == 0
    out = capsys.readouterr().out
    assert "lae-vr" in out and "coding passes" in out
    assert (tmp_path / "b.cml").stat().st_size <= budget
    assert main(["decompress", str(tmp_path / "b.cml"), "-o", str(tmp_path / "b.png")]) == 0


def test_init_from_a_float16_bundle_keeps_the_constant_bounds_and_makes_a_fixed_model_variable(tmp_path):
    from conftest import save_system_checkpoint

    from compressml.export import export_bundle
    from compressml.systems.loading import init_weights

    torch.manual_seed(0)
    fixed = LAESystem(
        net={"arch": "mean_scale", "channels": 8, "latent_channels": 16}, g={"_target_": "compressml.g.RateDistortion", "lmbda": 0.01}
    )
    ckpt = save_system_checkpoint(fixed, tmp_path / "fixed.ckpt")
    export_bundle(ckpt, tmp_path / "b16", onnx=False, torchscript=False, dtype="float16")
    vr = LAESystem(
        net={"arch": "mean_scale", "channels": 8, "latent_channels": 16},
        g={"_target_": "compressml.g.RateDistortion", "lmbda": 0.01},
        variable_rate=True,
    )
    init_weights(vr, tmp_path / "b16")
    state = vr.state_dict()
    assert float(state["net.gaussian_conditional.likelihood_lower_bound.bound"]) == pytest.approx(1e-9)  # 0 in float16
    assert float(state["net.entropy_bottleneck.likelihood_lower_bound.bound"]) == pytest.approx(1e-9)
    w = fixed.net.g_a[0].weight
    assert torch.allclose(vr.net.g_a.inner[0].weight, w.half().float())
    # the gains start at 1 where the fixed model was trained (its g's λ), √λ around it
    gain = rate_gain_of(vr.net)
    y = torch.ones(1, 16, 2, 2)
    with conditioned(vr.net, torch.tensor(0.01).log().item()):
        assert torch.allclose(gain.gain(y), torch.ones_like(y), atol=1e-3)
        assert torch.allclose(gain.inverse(y), torch.ones_like(y), atol=1e-3)
    with conditioned(vr.net, torch.tensor(0.04).log().item()):
        assert torch.allclose(gain.gain(y), torch.full_like(y, 2.0), rtol=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_each_architecture_trains_variable_rate_with_quality_maps(arch):
    latent = {"mean_scale": 16, "cheng2020-anchor-checkerboard": 8, "elic2022-chandelier": 20}[arch]
    torch.manual_seed(0)
    system = LAESystem(
        net={"arch": arch, "channels": 8, "latent_channels": latent}, g=RateDistortion(0.01), variable_rate=True, rate_maps=1.0
    )
    system.train()
    terms = system.compute_losses(torch.rand(2, 3, 64, 64))
    terms["loss"].backward()
    gain = rate_gain_of(system.net)
    assert torch.isfinite(terms["loss"]) and gain.log_gain.grad is not None and gain.log_inverse.grad.abs().sum() > 0


def test_evaluate_draws_a_whole_curve_from_one_variable_rate_model(tmp_path):
    from pathlib import Path

    from compressml.evaluation import EvalImage, LearnedModel, parse_qualities, run_evaluation

    vr = CodecModel(net=tiny_vr(), fingerprint=lae_codec.weights_fingerprint(tiny_vr()), source="vr")
    fixed_net = build_lae("mean_scale", 8, 16).eval()
    fixed_net.update(force=True)
    fixed = CodecModel(net=fixed_net, fingerprint=lae_codec.weights_fingerprint(fixed_net), source="fixed")
    by_path = {Path("vr.ckpt"): vr, Path("fixed.ckpt"): fixed}
    images = [EvalImage.from_tensor(f"im{i}.png", smooth(seed=i)) for i in range(2)]
    models = [LearnedModel(Path("vr.ckpt"), "vr", qualities=(0.0, 60.0, 100.0)), LearnedModel(Path("fixed.ckpt"), "fixed")]
    result = run_evaluation(models, images, [], tmp_path, load_model=by_path.__getitem__)
    curve = result["curves"]["compressml-mean_scale-vr"]
    assert curve["setting"] == ["q0", "q60", "q100"]
    assert curve["bpp"][0] < curve["bpp"][1] < curve["bpp"][2]
    assert result["curves"]["compressml-mean_scale"]["setting"] == ["fixed"]  # a fixed-rate model stays one point
    assert set(result["learned"]) == {"compressml-mean_scale-vr", "compressml-mean_scale"}
    assert (tmp_path / "files" / "compressml-mean_scale-vr" / "q60" / "im1.cml").is_file()
    # the quality travels in each file: decoding needs nothing else
    data = cml.parse((tmp_path / "files" / "compressml-mean_scale-vr" / "q100" / "im0.cml").read_bytes())
    assert lae_codec.Rate.read(data.section(lae_codec.RATE)).quality == 100.0
    with pytest.raises(ConfigError, match="variable-rate"):
        run_evaluation(
            [LearnedModel(Path("fixed.ckpt"), "fixed", qualities=(50.0,))], images, [], tmp_path / "x", load_model=by_path.__getitem__
        )
    assert parse_qualities(50) == (50.0,) and parse_qualities([100, 0, 0]) == (0.0, 100.0)
    for bad in ([], [101], ["a"], True):
        with pytest.raises(ConfigError, match="qualities"):
            parse_qualities(bad)
