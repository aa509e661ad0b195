"""Encoder-side latent refinement (compress --refine): CompressAI's bits for unrefined latents, a lower
lambda * D + R on a real photo with the same decoder, reproducible files, and clean refusals."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo_crop
from PIL import Image

from compressml import premade
from compressml.cli import main
from compressml.codec import container as cml
from compressml.codec import lae as lae_codec
from compressml.codec.files import CodecModel
from compressml.errors import CompressMLError, ConfigError
from compressml.evaluation import LearnedModel, with_refinement
from compressml.models import build_lae
from compressml.models.lae import Refinement, compress, compress_latents, stride_of
from compressml.models.padding import pad_to_multiple


@pytest.mark.parametrize("arch", ["factorized", "hyperprior", "mean_scale"])
def test_unrefined_latents_code_to_compressai_bits(arch):
    torch.manual_seed(0)
    model = build_lae(arch, 8, 12).eval()
    model.update(force=True)
    x = torch.rand(1, 3, 40, 70)
    padded, size = pad_to_multiple(x, stride_of(model))
    with torch.no_grad():
        y = model.g_a(padded)
        z = None if arch == "factorized" else model.h_a(y if arch == "mean_scale" else y.abs())
    ours = compress_latents(model, y, z, size)
    theirs = compress(model, x)  # CompressAI's own compress()
    assert ours.strings == theirs.strings and ours.shape == theirs.shape
    assert compress(model, x, Refinement(steps=0)).strings == theirs.strings


def objective(model, x: torch.Tensor, container: cml.Container, lmbda: float) -> float:
    """lambda * 255² * MSE + bpp of a real file, decoded by the ordinary decoder to 8-bit pixels."""
    decoded = lae_codec.decode(model, container).rgb[None].mul(255).round().div(255)
    mse = float(torch.mean((decoded - x) ** 2))
    return lmbda * 255**2 * mse + 8 * len(container.to_bytes()) / (x.shape[-1] * x.shape[-2])


def test_refinement_lowers_the_objective_with_the_same_decoder():
    chosen = premade.lae_for_quality(1)
    codec = CodecModel.load(chosen.bundle)
    refined = codec.refined(20)
    assert refined.refinement.lmbda == pytest.approx(0.0018) and refined.refinement.distortion == "mse"
    x = photo_crop()
    image = lae_codec.SourceImage(rgb=x[0])
    plain, better = codec.encode(image), refined.encode(image)
    assert plain.fingerprint == better.fingerprint  # the same model decodes both
    lmbda = refined.refinement.lmbda
    assert objective(codec.net, x, better, lmbda) < objective(codec.net, x, plain, lmbda)
    assert refined.encode(image).to_bytes() == better.to_bytes()  # seeded: the same file every time


def test_cli_refine_roundtrip_and_refusals(tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "photo.png"
    Image.fromarray((photo_crop(48, 80)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(src)
    out = tmp_path / "photo.cml"
    assert main(["compress", str(src), "-m", str(tiny_checkpoint), "-o", str(out), "--refine", "3"]) == 0
    assert main(["decompress", str(out), "-m", str(tiny_checkpoint), "-o", str(tmp_path / "back.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "back.png")).shape == (48, 80, 3)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["compress", str(src), "-m", str(tiny_checkpoint), "--refine", "-2"])
    assert e.value.code == 2 and "steps >= 0" in capsys.readouterr().err
    mllae = premade.find("mllae-lossless").bundle
    assert main(["compress", str(src), "-m", str(mllae), "-o", str(tmp_path / "m.cml"), "--refine", "3"]) != 0
    err = capsys.readouterr().err
    assert "--refine is for LAE models" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.cml").exists()


def test_large_images_are_refined_tile_by_tile():
    codec = CodecModel.load(premade.lae_for_quality(1).bundle)
    settings = codec.refined(20).refinement
    x = photo_crop(120, 200)
    image = lae_codec.SourceImage(rgb=x[0])
    plain = codec.encode(image)
    # 8 x 13 latent pixels in tiles of 4 with 2 of margin: 6 tiles, each refined on its own pixels
    payload = lae_codec.compress_refined_in_tiles(codec.net, x, settings, tile=4, margin=2)
    tiled = replace(plain, sections=[plain.sections[0], lae_codec.strings_section([s[0] for s in payload.strings])])
    assert objective(codec.net, x, tiled, settings.lmbda) < objective(codec.net, x, plain, settings.lmbda)
    # the encoder takes that path above its tile size, and the file decodes as any other
    big = lae_codec.encode(codec.net, image, plain.fingerprint, tile_pixels=64 * 64, refinement=settings)
    assert lae_codec.decode(codec.net, big).rgb.shape == (3, 120, 200)


def test_refinement_refuses_what_it_cannot_do():
    with pytest.raises(CompressMLError, match="g=rate_distortion"):
        lae_codec.refinement_for({"_target_": "compressml.g.DistortionCap", "min_psnr": 30}, 5)
    with pytest.raises(CompressMLError, match="g=rate_distortion"):
        lae_codec.refinement_for({"_target_": "os.system", "command": "true"}, 5)
    assert lae_codec.refinement_for({"_target_": "compressml.g.Perceptual"}, 5).distortion == "l1_ssim"
    with pytest.raises(ConfigError):
        Refinement(steps=-1)


def test_evaluation_curves_per_refinement():
    models = [LearnedModel(Path("a"), "a"), LearnedModel(Path("b"), "b")]
    expanded = with_refinement(models, [0, 50])
    assert [(m.setting, m.refine) for m in expanded] == [("a", 0), ("a", 50), ("b", 0), ("b", 50)]
    assert [m.refine for m in with_refinement(models, 7)] == [7, 7]
    for bad in (-1, [], "50", [True]):
        with pytest.raises(ConfigError):
            with_refinement(models, bad)
