"""Near-lossless MLLAE (``--max-error D``): the ±D bound on hard images, files of every kind, crafted
files, the CLI's refusals, the evaluation's D curve, and the classical anchors of that evaluation."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_image_kind, save_system_checkpoint, smooth_image
from PIL import Image

from compressml import baselines
from compressml.cli import main
from compressml.codec import container as cml
from compressml.codec import mllae as codec
from compressml.codec.files import CodecModel, read_source
from compressml.codec.lae import SourceImage
from compressml.errors import CompressMLError
from compressml.models.mllae import MLLAE
from compressml.systems import MLLAESystem

FP = bytes(range(16))
BOUNDS = (0, 1, 2, 4)


@pytest.fixture(scope="module")
def model() -> MLLAE:
    torch.manual_seed(0)
    return MLLAE(bytes=16, block=16, channels=8, residual_channels=8, lossless=True, quantizer="ste", bits=2).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    system = MLLAESystem(bytes=16, block=16, channels=8, residual_channels=8, lossless=True, quantizer="ste", bits=2, entropy="rans")
    return save_system_checkpoint(system, tmp_path_factory.mktemp("near") / "lossless.ckpt")


def hard_image(kind: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    if kind == "noise":
        return rng.integers(0, 256, (24, 31, 3), dtype=np.uint8)
    if kind == "flat":
        return np.full((20, 20, 3), 255, dtype=np.uint8)  # at the top of the range: clipping must keep the bound
    if kind == "black":
        return np.zeros((17, 9, 3), dtype=np.uint8)
    if kind == "gradient":
        ramp = np.linspace(0, 255, 40).round().astype(np.uint8)
        return np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[::-1][None, :]), axis=-1).copy()
    if kind == "one_pixel":
        return np.array([[[3, 128, 254]]], dtype=np.uint8)
    if kind == "odd":
        return smooth_image(13, 37)
    raise AssertionError(kind)


def to_source(rgb: np.ndarray) -> SourceImage:
    return SourceImage(rgb=torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div(255))


def as_uint8(image: SourceImage) -> np.ndarray:
    return (image.rgb * 255).round().byte().permute(1, 2, 0).numpy()


@pytest.mark.parametrize("kind", ["noise", "flat", "black", "gradient", "one_pixel", "odd"])
@pytest.mark.parametrize("bound", BOUNDS)
def test_every_sample_is_within_the_bound(model, kind, bound):
    rgb = hard_image(kind)
    data = codec.encode(model, to_source(rgb), FP, "rans", max_error=bound).to_bytes()
    decoded = as_uint8(codec.decode(model, cml.parse(data), FP))
    error = np.abs(decoded.astype(int) - rgb.astype(int))
    assert decoded.shape == rgb.shape and error.max() <= bound
    if bound == 0:
        assert np.array_equal(decoded, rgb)


def test_larger_bounds_give_smaller_files_and_the_encoder_knows_the_decoded_image(model):
    rgb = smooth_image(48, 40)
    x255 = rgb.transpose(2, 0, 1).astype(np.int64)
    sizes = []
    for bound in BOUNDS:
        container = codec.encode(model, to_source(rgb), FP, "rans", max_error=bound)
        sizes.append(len(container.to_bytes()))
        with codec.ExactArithmetic():
            codes, grid, size = model.encode(to_source(rgb).rgb[None])
            _, expected = codec.encode_residual(model, model.decode(codes, grid, size), x255, bound)
        decoded = as_uint8(codec.decode(model, cml.parse(container.to_bytes()), FP))
        assert np.array_equal(decoded, expected.transpose(1, 2, 0))
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]


def test_lossless_files_are_unchanged_by_the_near_lossless_code(model):
    """D = 0 writes no bound section: the file is the lossless one older decoders read."""
    container = codec.encode(model, to_source(smooth_image(20, 20)), FP, "rans", max_error=0)
    assert not container.sections_of(codec.MAX_ERROR)
    assert codec.encode(model, to_source(smooth_image(20, 20)), FP, "rans", max_error=2).sections_of(codec.MAX_ERROR) == [b"\x02"]


@pytest.mark.parametrize("bound", [1, 2, 4])  # D = 0 on these kinds: tests/test_mllae.py (bit-exact files)
@pytest.mark.parametrize("kind", ["rgb", "grey", "grey16", "rgba"])
def test_files_of_every_kind_keep_the_bound(kind, bound, checkpoint, tmp_path):
    rng = np.random.default_rng(5)
    src = tmp_path / f"{kind}.png"
    save_image_kind(src, kind, smooth_image(21, 34), rng)
    assert main(["compress", str(src), "-m", str(checkpoint), "--max-error", str(bound), "-o", str(tmp_path / "c.cml")]) == 0
    assert main(["decompress", str(tmp_path / "c.cml"), "-m", str(checkpoint), "-o", str(tmp_path / "d.png")]) == 0
    original = read_source(src)
    with Image.open(tmp_path / "d.png") as out:
        got = np.asarray(out).astype(int)
    eight_bit = (original.rgb * 255).round().long().permute(1, 2, 0).numpy()
    if kind in ("grey", "grey16"):  # 16-bit grey: the bound holds against its 8-bit conversion (as lossless)
        assert got.ndim == 2 and np.abs(got - eight_bit[..., 0]).max() <= bound
    elif kind == "rgba":
        assert np.abs(got[..., :3] - eight_bit).max() <= bound
        assert np.array_equal(got[..., 3], original.alpha)  # alpha stays lossless
    else:
        assert np.abs(got - eight_bit).max() <= bound


def reframe(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


@pytest.mark.parametrize("payload", [b"\x00", b"\xff", b"\x01\x01"])
def test_crafted_bounds_are_refused_in_one_line(payload, checkpoint, tmp_path, capsys):
    model = CodecModel.load(checkpoint)
    container = model.near_lossless(1).encode(to_source(smooth_image(20, 20)))
    sections = [(k, payload if k == codec.MAX_ERROR else p) for k, p in container.sections]
    bad = cml.Container(**{**container.__dict__, "sections": sections})
    with pytest.raises(cml.ContainerError, match="near-lossless bound"):
        model.decode(cml.parse(bad.to_bytes()))
    path = tmp_path / "bad.cml"
    path.write_bytes(bad.to_bytes())
    assert main(["decompress", str(path), "-m", str(checkpoint), "-o", str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err
    assert "near-lossless bound" in err and err.count("\n") == 1 and not (tmp_path / "out.png").exists()


def test_a_bound_in_a_float_mode_file_is_refused(model):
    container = codec.encode(model, to_source(smooth_image(16, 16)), FP, "rans", exact=False)
    bad = cml.Container(**{**container.__dict__, "sections": [*container.sections, (codec.MAX_ERROR, b"\x02")]})
    with pytest.raises(cml.ContainerError, match="not in exact lossless mode"):
        codec.decode(model, cml.parse(bad.to_bytes()), FP)


def test_the_bound_is_refused_for_models_that_cannot_keep_it(tiny_checkpoint, model):
    lossy = MLLAE(bytes=16, block=16, channels=8).eval()
    with pytest.raises(CompressMLError, match="lossless mode"):
        codec.encode(lossy, to_source(smooth_image(16, 16)), FP, max_error=1)
    with pytest.raises(CompressMLError, match="whole number from 0 to 127"):
        codec.encode(model, to_source(smooth_image(16, 16)), FP, max_error=128)
    with pytest.raises(CompressMLError, match="is an LAE"):
        CodecModel.load(tiny_checkpoint).near_lossless(1)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-q", "50"], "does not go with -q"),
        (["--bpp", "1"], "does not go with rate control"),
        (["--refine", "3"], "does not go with --refine"),
    ],
)
def test_cli_refuses_what_does_not_go_with_the_bound(extra, message, checkpoint, tmp_path, capsys):
    src = tmp_path / "a.png"
    Image.fromarray(smooth_image(16, 16)).save(src)
    assert main(["compress", str(src), "-m", str(checkpoint), "--max-error", "1", *extra, "-o", str(tmp_path / "a.cml")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "a.cml").exists()


def test_cli_refuses_a_bad_bound_and_a_lossy_model(tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "a.png"
    Image.fromarray(smooth_image(16, 16)).save(src)
    with pytest.raises(SystemExit) as e:
        main(["compress", str(src), "--max-error", "-1", "-o", str(tmp_path / "a.cml")])
    assert e.value.code == 2 and "whole number from 0 to 127" in capsys.readouterr().err
    assert main(["compress", str(src), "-m", str(tiny_checkpoint), "--max-error", "1", "-o", str(tmp_path / "a.cml")]) == 2
    assert "needs an MLLAE in lossless mode" in capsys.readouterr().err
    assert not (tmp_path / "a.cml").exists()


def test_info_names_the_bound(checkpoint, tmp_path, capsys):
    src = tmp_path / "a.png"
    Image.fromarray(smooth_image(16, 16)).save(src)
    assert main(["compress", str(src), "-m", str(checkpoint), "--max-error", "3", "-o", str(tmp_path / "a.cml")]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "a.cml")]) == 0
    assert "near-lossless: every sample within ±3" in capsys.readouterr().out


def test_evaluation_gives_the_bound_curve_beside_jpeg_ls(checkpoint, image_folder, tmp_path):
    from conftest import run_cli

    out = tmp_path / "eval"
    proc = run_cli(
        [
            "evaluate.py",
            "data=folder",
            f"data.root={image_folder}",
            f"checkpoint={checkpoint}",
            "max_error=[0,2]",
            "codecs=[png,jpeg-ls]",
            "matched=[]",
            "max_images=2",
            f"hydra.run.dir={out}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    ours = {r["setting"]: r for r in result["averages"] if r["codec"] == "compressml-mllae-lossless"}
    assert set(ours) == {"D0", "D2"} and ours["D0"]["max_abs_error"] == 0 and ours["D2"]["max_abs_error"] <= 2
    assert ours["D0"]["exact"] == ours["D0"]["images"] and ours["D2"]["bpsp"] < ours["D0"]["bpsp"]
    jls = {r["setting"]: r for r in result["averages"] if r["codec"] == "jpeg-ls"}
    assert set(jls) == {0, 2} and jls[2]["max_abs_error"] <= 2  # JPEG-LS at the same bounds
    assert "Near-lossless: bits per sub-pixel" in proc.stdout
    records = [r for r in result["records"] if r["codec"] == "compressml-mllae-lossless"]
    assert all("max_abs_error" in r and "psnr" in r for r in records)  # per image


# -- the classical anchors ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(32, 48), (13, 22)])
def test_anchor_codecs_round_trip_at_their_rates(shape):
    rgb = smooth_image(*shape)
    h, w = shape
    for near in (0, 1, 4):
        decoded = baselines.CODECS["jpeg-ls"].decode(baselines.CODECS["jpeg-ls"].encode(rgb, near), shape)
        assert np.abs(decoded.astype(int) - rgb.astype(int)).max() <= near
    jxl = baselines.CODECS["jpeg-xl-lossless"]
    assert np.array_equal(jxl.decode(jxl.encode(rgb, 0), shape), rgb)
    blocks = lambda side: -(-h // side) * -(-w // side)
    for side in (4, 6, 12):  # 16 bytes per block, whatever its side (+ the 1-byte side)
        data = baselines.CODECS["astc"].encode(rgb, side)
        assert len(data) == 1 + 16 * blocks(side)
        assert baselines.CODECS["astc"].decode(data, shape).shape == rgb.shape
    for name, per_block in (("bc7", 16), ("etc2", 8)):
        data = baselines.CODECS[name].encode(rgb, 0)
        assert len(data) == per_block * blocks(4)
        decoded = baselines.CODECS[name].decode(data, shape)
        assert decoded.shape == rgb.shape
        assert 10 * np.log10(255**2 / np.mean((decoded.astype(float) - rgb) ** 2)) > 25  # colours in the right order


def test_a_missing_anchor_is_skipped_with_a_note(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "astc_encoder" else real(name, *a))
    notes = []
    found = baselines.available_codecs(["png", "astc"], note=notes.append)
    assert [c.name for c in found] == ["png"]
    assert notes == ["note: astc skipped: needs astc_encoder (pip install 'compressml[anchors]')"]


def test_size_matching_a_codec_set_by_bound_picks_the_largest_fitting_file():
    rgb = smooth_image(32, 32)
    codec_ = baselines.CODECS["jpeg-ls"]
    sizes = {d: len(codec_.encode(rgb, d)) for d in codec_.settings}
    setting, data = baselines.match_size(codec_, rgb, sizes[1])
    assert setting == 1 and len(data) == sizes[1]
    assert baselines.match_size(codec_, rgb, min(sizes.values()) - 1) is None
