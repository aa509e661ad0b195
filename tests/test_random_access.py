"""Random access: ``decompress --region`` decodes only the MLLAE-N blocks under a region, and gives
the pixels of a whole decode; other files decode whole and are cropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_system_checkpoint, smooth_image
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from compressml.cli import main
from compressml.codec import container as cml
from compressml.codec import mllae as codec
from compressml.codec.files import CodecModel
from compressml.codec.lae import SourceImage
from compressml.errors import CompressMLError
from compressml.models.mllae import MLLAE
from compressml.systems import MLLAESystem

FP = bytes(range(16))
H, W = 45, 70  # 3 x 5 blocks of 16, the last row and column partly padding


def source(rgb: np.ndarray, alpha: np.ndarray | None = None) -> SourceImage:
    return SourceImage(rgb=torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div(255), channels=3 if alpha is None else 4, alpha=alpha)


@pytest.fixture(scope="module")
def model() -> MLLAE:
    torch.manual_seed(1)
    return MLLAE(bytes=24, block=16, channels=8, quantizer="ste", bits=3).eval()


@pytest.fixture(scope="module")
def files(model) -> dict[str, tuple[cml.Container, torch.Tensor]]:
    """Per entropy stage: a file of a 45x70 image and its whole decode."""
    rgb = smooth_image(H, W)
    out = {}
    model.code_counts.zero_()
    model.count_codes(model.encode(source(rgb).rgb[None])[0])  # the rANS prior: this image's own code values
    for entropy in ("none", "lzma", "rans"):
        container = cml.parse(codec.encode(model, source(rgb), FP, entropy).to_bytes())
        out[entropy] = (container, codec.decode(model, container, FP).rgb)
    return out


@settings(max_examples=25, deadline=None)
@given(
    entropy=st.sampled_from(["none", "lzma", "rans"]),
    x=st.integers(0, W - 1),
    y=st.integers(0, H - 1),
    w=st.integers(1, W),
    h=st.integers(1, H),
)
def test_a_region_is_the_same_region_of_a_whole_decode(model, files, entropy, x, y, w, h):
    w, h = min(w, W - x), min(h, H - y)
    container, whole = files[entropy]
    part = codec.decode(model, container, FP, region=(x, y, w, h))
    assert part.rgb.shape == (3, h, w)
    assert torch.equal(part.rgb, whole[:, y : y + h, x : x + w])


def test_only_the_blocks_under_the_region_are_read(model, files, monkeypatch):
    container, whole = files["none"]
    read = []
    unpack = codec.unpack_codes
    monkeypatch.setattr(codec, "unpack_codes", lambda data, *a: read.append(bytes(data)) or unpack(data, *a))
    codec.decode(model, container, FP, region=(20, 17, 10, 10))  # inside block (row 1, column 1)
    assert len(read) == 1
    read.clear()
    codec.decode(model, container, FP, region=(10, 10, 30, 10))  # rows 0-1, columns 0-2
    assert len(read) == 6


def test_a_damaged_block_outside_the_region_does_not_matter(model, files):
    """Random access for real: every block's payload is found and decoded alone."""
    container, whole = files["rans"]
    lengths = codec.block_payload_sizes(container, model)
    assert min(lengths) < model.geometry.code_bytes  # rANS-coded blocks
    data = bytearray(container.section(codec.BLOCKS))
    last = len(data) - lengths[-1]
    data[last:] = b"\xff" * lengths[-1]  # the last block (row 2, column 4)
    damaged = cml.Container(
        **{**container.__dict__, "sections": [(k, bytes(data) if k == codec.BLOCKS else p) for k, p in container.sections]}
    )
    assert torch.equal(codec.decode(model, damaged, FP, region=(0, 0, 16, 16)).rgb, whole[:, :16, :16])
    try:  # the damage is real: a whole decode refuses the file or decodes that block otherwise
        assert not torch.equal(codec.decode(model, damaged, FP).rgb[:, 32:, 64:], whole[:, 32:, 64:])
    except cml.ContainerError:
        pass


def test_region_keeps_the_alpha_plane(model):
    rgb = smooth_image(H, W)
    alpha = np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)
    container = cml.parse(codec.encode(model, source(rgb, alpha), FP, "none").to_bytes())
    part = codec.decode(model, container, FP, region=(33, 20, 7, 11))
    assert np.array_equal(part.alpha, alpha[20:31, 33:40]) and part.channels == 4


@pytest.mark.parametrize("region", [(0, 0, W + 1, 1), (W, 0, 1, 1), (0, H, 1, 1), (-1, 0, 2, 2), (0, 0, 0, 3)])
def test_a_region_outside_the_image_is_refused(model, files, region):
    with pytest.raises(CompressMLError, match="not inside the 70x45 image"):
        codec.decode(model, files["none"][0], FP, region=region)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    system = MLLAESystem(bytes=24, block=16, channels=8, quantizer="ste", bits=3, entropy="rans")
    return save_system_checkpoint(system, tmp_path_factory.mktemp("ra") / "mllae_n.ckpt")


def test_cli_region_of_an_mllae_n_file_and_of_an_lae_file(checkpoint, tiny_checkpoint, tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(smooth_image(H, W)).save(src)
    for name, ckpt in (("n", checkpoint), ("lae", tiny_checkpoint)):
        cml_path = tmp_path / f"{name}.cml"
        assert main(["compress", str(src), "-m", str(ckpt), "-o", str(cml_path)]) == 0
        assert main(["decompress", str(cml_path), "-m", str(ckpt), "-o", str(tmp_path / f"{name}_whole.png")]) == 0
        assert main(["decompress", str(cml_path), "-m", str(ckpt), "--region", "17,9,30,20", "-o", str(tmp_path / f"{name}_part.png")]) == 0
        whole, part = (np.asarray(Image.open(tmp_path / f"{name}_{k}.png")) for k in ("whole", "part"))
        assert part.shape == (20, 30, 3) and np.array_equal(part, whole[9:29, 17:47])


def test_cli_refuses_bad_regions_in_one_line(checkpoint, tmp_path, capsys):
    src = tmp_path / "a.png"
    Image.fromarray(smooth_image(20, 20)).save(src)
    assert main(["compress", str(src), "-m", str(checkpoint), "-o", str(tmp_path / "a.cml")]) == 0
    capsys.readouterr()
    out = tmp_path / "part.png"
    assert main(["decompress", str(tmp_path / "a.cml"), "-m", str(checkpoint), "--region", "10,10,11,5", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not inside the 20x20 image" in err and not out.exists()
    for bad in ("1,2,3", "a,b,c,d", "0,0,0,4"):
        with pytest.raises(SystemExit) as e:
            main(["decompress", str(tmp_path / "a.cml"), "-m", str(checkpoint), "--region", bad, "-o", str(out)])
        assert e.value.code == 2 and "X,Y,WIDTH,HEIGHT" in capsys.readouterr().err
    code = main(
        ["decompress", str(tmp_path / "a.cml"), "-m", str(checkpoint), "--region", "0,0,4,4", "--originals", str(src), "-o", str(out)]
    )
    assert code == 2 and "does not go with --region" in capsys.readouterr().err and not out.exists()


def test_codec_model_region_of_a_lossless_file_is_a_crop(tmp_path):
    torch.manual_seed(0)
    net = MLLAE(bytes=16, block=16, channels=8, residual_channels=8, lossless=True, quantizer="ste", bits=2).eval()
    model = CodecModel(net=net, fingerprint=FP, source="test", family="mllae", options={"entropy": "rans"})
    rgb = smooth_image(30, 33)
    container = cml.parse(model.encode(source(rgb)).to_bytes())
    part = model.decode(container, (3, 4, 20, 11))
    assert np.array_equal((part.rgb * 255).round().byte().permute(1, 2, 0).numpy(), rgb[4:15, 3:23])
