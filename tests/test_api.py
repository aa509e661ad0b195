"""The Python API: compressml.compress / decompress / load / upscale."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import compressml
from compressml.codec import container as cml
from compressml.codec.rate_control import RateControlError
from compressml.errors import CheckpointError, CompressMLError, ConfigError, DataError


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(low).resize((96, 64), Image.Resampling.BICUBIC))


def test_compress_takes_a_path_a_pil_image_or_an_array_and_gives_the_same_file(tmp_path, photo):
    path = tmp_path / "p.png"
    Image.fromarray(photo).save(path)
    by_array = compressml.compress(photo, quality=10)
    assert compressml.compress(path, quality=10) == by_array == compressml.compress(Image.open(path), quality=10)
    assert cml.parse(by_array).family == "lae"
    image = compressml.decompress(by_array)
    assert isinstance(image, Image.Image) and image.size == (96, 64) and image.mode == "RGB"
    assert np.abs(np.asarray(image, dtype=float) - photo).mean() < 40
    assert len(compressml.compress(photo, quality=90)) > len(by_array)
    assert compressml.load().name == "lae-vr"  # the default: the premade variable-rate model


def test_grey_and_alpha_come_back_as_they_went_in(photo):
    grey = photo[:, :, 0]
    assert compressml.decompress(compressml.compress(grey)).mode == "L"
    rgba = np.dstack([photo, np.full(photo.shape[:2], 200, np.uint8)])
    out = compressml.decompress(compressml.compress(rgba))
    assert out.mode == "RGBA" and np.all(np.asarray(out)[:, :, 3] == 200)


def test_load_gives_a_codec_with_its_metadata_and_the_two_methods(photo):
    codec = compressml.load("lae-q2")
    assert (codec.name, codec.family, codec.variable_rate) == ("lae-q2", "lae", False)
    assert len(codec.fingerprint) == 32 and codec.description
    data = codec.compress(photo)
    assert cml.parse(data).fingerprint.hex() == codec.fingerprint
    assert codec.decompress(data).size == (96, 64)
    assert compressml.decompress(data, model="lae-q2").tobytes() == codec.decompress(data).tobytes()
    with pytest.raises(ConfigError, match="one rate"):
        codec.compress(photo, quality=50)
    lossless = compressml.load("mllae-lossless")
    assert np.array_equal(np.asarray(lossless.decompress(lossless.compress(photo))), photo)


def test_rate_control_through_the_api(photo):
    sizes = [len(compressml.compress(photo, quality=q)) for q in (10, 90)]
    budget = (sizes[0] + sizes[1]) // 2
    assert len(compressml.compress(photo, max_bytes=budget)) <= budget
    with pytest.raises(RateControlError):
        compressml.compress(photo, max_bytes=10)
    with pytest.raises(ConfigError, match="one of"):
        compressml.compress(photo, max_bytes=1000, bpp=1.0)
    with pytest.raises(ConfigError, match="not both"):
        compressml.compress(photo, quality=20, max_bytes=1000)
    with pytest.raises(ConfigError, match="not both"):
        compressml.load("lae-q2").compress(photo, quality=20, max_bytes=1000)


def test_upscale(photo):
    big = compressml.upscale(photo, scale=2)
    assert big.size == (192, 128) and big.mode == "RGB"
    with pytest.raises(ConfigError, match="x2"):
        compressml.upscale(photo, scale=4, model="red-x2")
    with pytest.raises(ConfigError, match="RED"):
        compressml.load("red-x2").compress(photo)
    hybrid = compressml.load("red-x2", base="webp")
    data = hybrid.compress(photo, quality=80)
    assert hybrid.decompress(data).size == (96, 64)
    with pytest.raises(ConfigError, match="upscaling needs a RED"):
        compressml.load("lae-q1").upscale(photo)


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda p: compressml.compress(p.astype(np.float32)), DataError),
        (lambda p: compressml.compress(p[:, :, :0]), DataError),
        (lambda p: compressml.compress("/no/such/image.png"), DataError),
        (lambda p: compressml.compress(12), DataError),
        (lambda p: compressml.compress(p, quality=101), ConfigError),
        (lambda p: compressml.compress(p, quality="high"), ConfigError),
        (lambda p: compressml.load("no-such-model"), CheckpointError),
        (lambda p: compressml.decompress(b"not a cml file"), cml.ContainerError),
        (lambda p: compressml.decompress("a string"), DataError),
        (lambda p: compressml.upscale(p, scale=3), ConfigError),
        (lambda p: compressml.compress(p, roi=np.ones((10, 10), np.uint8)), CompressMLError),
        (lambda p: compressml.load("lae-q2").compress(p, roi=np.ones((64, 96), np.uint8)), CompressMLError),
    ],
)
def test_every_mistake_is_a_compressml_error(photo, call, error):
    with pytest.raises(error) as info:
        call(photo)
    assert isinstance(info.value, CompressMLError) and "\n" not in str(info.value)


def test_a_damaged_payload_is_a_container_error(photo):
    data = bytearray(compressml.compress(photo, quality=10))
    data[-20:] = bytes(20)
    with pytest.raises(CompressMLError):
        compressml.decompress(bytes(data))


def test_variable_rate_models_take_a_continuous_quality_and_a_roi(tmp_path, photo):
    import torch
    from conftest import save_system_checkpoint

    from compressml.systems import LAESystem

    torch.manual_seed(0)
    system = LAESystem(
        net={"arch": "mean_scale", "channels": 8, "latent_channels": 16},
        g={"_target_": "compressml.g.RateDistortion", "lmbda": 0.01},
        variable_rate=True,
        lmbda_range=[1e-4, 10.0],
    )
    last = [m for m in system.net.g_a.inner.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(20)  # an untrained analysis gives latents of a few hundredths
    ckpt = save_system_checkpoint(system, tmp_path / "vr.ckpt")
    codec = compressml.load(ckpt)
    assert codec.variable_rate and codec.family == "lae"
    sizes = [len(codec.compress(photo, quality=q)) for q in (0, 50, 100)]
    assert sizes[0] < sizes[1] < sizes[2]
    mask = np.zeros(photo.shape[:2], np.uint8)
    mask[16:48, 32:64] = 1
    with_roi = codec.compress(photo, quality=20, roi=mask)
    assert len(with_roi) > len(codec.compress(photo, quality=20))
    assert compressml.decompress(with_roi, model=codec).size == (96, 64)
    with pytest.raises(DataError, match="mask"):
        codec.compress(photo, roi=np.ones((8, 8), np.uint8))
    with pytest.raises(ConfigError, match="0 to 100"):
        codec.compress(photo, quality=101)


def test_a_rewritten_model_file_is_loaded_again(tmp_path, photo):
    import shutil

    from compressml import api

    shutil.copytree(api._premade_path("lae-q1"), tmp_path / "m")
    first = compressml.load(tmp_path / "m")
    assert compressml.load(tmp_path / "m")._coder is first._coder  # cached
    shutil.rmtree(tmp_path / "m")
    shutil.copytree(api._premade_path("lae-q2"), tmp_path / "m")  # another model under the same path
    second = compressml.load(tmp_path / "m")
    assert second.fingerprint != first.fingerprint
    assert compressml.upscale(photo, model="red-x4").size == (384, 256)  # a model's own scale by default
