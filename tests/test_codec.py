"""The .cml container and the compress / decompress / info commands, including bad input."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from conftest import photo_crop, run_cli, smooth_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from compressml.cli import main
from compressml.codec import container as cml
from compressml.codec import lae as lae_codec
from compressml.codec.files import CodecModel, read_source
from compressml.models import build_lae


def sample_container() -> cml.Container:
    return cml.Container(
        family="lae",
        fingerprint=bytes(range(16)),
        height=45,
        width=71,
        pad_h=19,
        pad_w=57,
        sections=[(1, b"\x00\x00\x00\x01\x00\x00\x00\x02"), (0x10, b"abc"), (0x10, b"")],
    )


def test_container_roundtrip():
    c = sample_container()
    parsed = cml.parse(c.to_bytes())
    assert parsed == c


def reframe(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda d: d[:10], "truncated"),
        (lambda d: d[:-6], "truncated|remain|unexpected"),
        (lambda d: b"PNG!" + d[4:], "wrong magic"),
        (lambda d: reframe(d[:4] + bytes([9]) + d[5:-4]), "newer compressml"),
        (lambda d: reframe(d[:5] + bytes([77]) + d[6:-4]), "unknown model family"),
        (lambda d: reframe(d[:24] + struct.pack(">I", 0) + d[28:-4]), "out of range"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "checksum"),
        (lambda d: reframe(d[:43] + struct.pack(">I", 10**9) + d[47:-4]), "claims"),
    ],
    ids=["short", "cut", "magic", "version", "family", "geometry", "crc", "section-length"],
)
def test_bad_containers_are_refused(mutate, needle):
    data = sample_container().to_bytes()
    with pytest.raises(cml.ContainerError, match=needle):
        cml.parse(mutate(data))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_parser(data):
    try:
        cml.parse(data)
    except cml.ContainerError:
        pass


@settings(max_examples=1000, deadline=None)
@given(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=255))
def test_single_byte_corruption_is_detected(pos, value):
    data = bytearray(sample_container().to_bytes())
    pos %= len(data)
    if data[pos] == value:
        return
    data[pos] = value
    with pytest.raises(cml.ContainerError):
        cml.parse(bytes(data))


@pytest.fixture(scope="module")
def premade_file():
    """A file of the premade lae-q1 (a trained decoder, whose synthesis can overflow on wild latents)."""
    from compressml import premade

    codec = CodecModel.load(premade.lae_for_quality(1).bundle)
    return codec, codec.encode(lae_codec.SourceImage(rgb=photo_crop(128, 192)[0]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 1), st.integers(0, 2**32 - 1), st.sampled_from(["random", "flips", "cut", "grow"]))
def test_crafted_rans_strings_decode_to_an_image_or_a_one_line_error(premade_file, which, seed, how):
    """A crafted file passes the CRC (it is recomputed) and reaches CompressAI's rANS decoder with a
    hostile string: the result is an image of the declared size with finite pixels in [0, 1]
    (garbage in, garbage out), never a crash, a hang or undefined pixels."""
    codec, container = premade_file
    rng = np.random.default_rng(seed)
    from compressml.codec import layout

    index = next(i for i, (kind, _) in enumerate(container.sections) if kind == lae_codec.STRINGS)
    sections = list(container.sections)
    strings = layout.read_blobs(sections[index][1], 16)
    payload = strings[which]
    if how == "random":
        payload = rng.integers(0, 256, len(payload), dtype=np.uint8).tobytes()
    elif how == "flips":
        raw = bytearray(payload)
        for pos in rng.integers(0, len(raw), 3):
            raw[pos] ^= 1 << int(rng.integers(8))
        payload = bytes(raw)
    elif how == "cut":
        payload = payload[: int(rng.integers(0, len(payload)))]
    else:
        payload += rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    strings[which] = payload
    sections[index] = (lae_codec.STRINGS, layout.write_blobs(strings))
    crafted = cml.parse(cml.Container(**{**container.__dict__, "sections": sections}).to_bytes())
    try:
        image = codec.decode(crafted)
    except cml.ContainerError:
        return
    assert image.rgb.shape == (3, 128, 192)
    assert torch.isfinite(image.rgb).all() and image.rgb.min() >= 0 and image.rgb.max() <= 1


def test_tiled_coding_matches_whole_image():
    torch.manual_seed(0)
    model = build_lae("mean_scale", 8, 12).eval()
    model.update(force=True)
    image = lae_codec.SourceImage(rgb=torch.rand(3, 200, 330))
    whole = lae_codec.encode(model, image)
    tiled = lae_codec.encode(model, image, tile_pixels=64 * 64)
    assert whole.sections == tiled.sections
    a = lae_codec.decode(model, whole).rgb
    b = lae_codec.decode(model, whole, tile_pixels=64 * 64).rgb
    assert a.shape == (3, 200, 330) and torch.allclose(a, b, atol=1e-5)


def test_cli_roundtrip_and_info(checkpoint, photo, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compress", str(photo.parent), "-m", str(checkpoint), "-o", str(out)]) == 0
    cml_file = out / "photo.cml"
    assert cml_file.is_file()
    assert main(["info", str(cml_file)]) == 0
    printed = capsys.readouterr().out
    assert "71x45" in printed and "decoding mode exact" in printed
    assert main(["decompress", str(cml_file), "-m", str(checkpoint), "-o", str(tmp_path / "dec.png")]) == 0
    decoded = np.asarray(Image.open(tmp_path / "dec.png"))
    assert decoded.shape == (45, 71, 3)
    # CompressAI's own bits on request; decoded in that mode, close to the exact one
    compat = tmp_path / "compat.cml"
    assert main(["compress", str(photo), "-m", str(checkpoint), "-o", str(compat), "--decoding-mode", "compressai"]) == 0
    assert main(["info", str(compat)]) == 0
    assert "decoding mode compressai" in capsys.readouterr().out
    assert main(["decompress", str(compat), "-m", str(checkpoint), "-o", str(tmp_path / "compat.png")]) == 0
    other = np.asarray(Image.open(tmp_path / "compat.png")).astype(int)
    assert np.abs(other - decoded.astype(int)).max() <= 3
    model = CodecModel.load(checkpoint)
    expected = lae_codec.decode(model.net, cml.parse(cml_file.read_bytes())).rgb
    assert np.array_equal(decoded, expected.mul(255).round().byte().permute(1, 2, 0).numpy())


def test_existing_output_is_refused_without_force(checkpoint, photo, tmp_path, capsys):
    target = tmp_path / "photo.cml"
    target.write_bytes(b"keep me")
    assert main(["compress", str(photo), "-m", str(checkpoint), "-o", str(target)]) != 0
    assert target.read_bytes() == b"keep me"
    assert "--force" in capsys.readouterr().err
    assert main(["compress", str(photo), "-m", str(checkpoint), "-o", str(target), "--force"]) == 0
    assert target.read_bytes()[:4] == cml.MAGIC


@pytest.mark.parametrize("content", [b"not an image at all", b"\x89PNG\r\n\x1a\n broken"])
def test_non_image_input_fails_cleanly(checkpoint, tmp_path, content, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    out = tmp_path / "out"
    assert main(["compress", str(bad), "-m", str(checkpoint), "-o", str(out / "bad.cml")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert not out.exists() or not any(out.iterdir())


def test_file_from_other_weights_is_refused(checkpoint, photo, tmp_path, capsys):
    assert main(["compress", str(photo), "-m", str(checkpoint), "-o", str(tmp_path / "p.cml")]) == 0
    data = cml.parse((tmp_path / "p.cml").read_bytes())
    data.fingerprint = bytes(16)
    (tmp_path / "q.cml").write_bytes(data.to_bytes())
    assert main(["decompress", str(tmp_path / "q.cml"), "-m", str(checkpoint), "-o", str(tmp_path / "q.png")]) != 0
    assert "other weights" in capsys.readouterr().err
    assert not (tmp_path / "q.png").exists()


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "I;16"])
def test_grey_rgba_and_16bit_keep_their_form(checkpoint, tmp_path, mode):
    base = smooth_image(40, 50)
    if mode == "L":
        img = Image.fromarray(base[..., 0], mode="L")
    elif mode == "RGBA":
        img = Image.fromarray(np.dstack([base, np.tile(np.arange(50, dtype=np.uint8) * 5, (40, 1))]), mode="RGBA")
    elif mode == "LA":
        img = Image.fromarray(np.dstack([base[..., 0], np.tile(np.arange(50, dtype=np.uint8) * 5, (40, 1))]), mode="LA")
    else:
        img = Image.fromarray(base[..., 0].astype(np.uint16) * 257)
    img.save(tmp_path / "x.png")
    src = read_source(tmp_path / "x.png")
    assert main(["compress", str(tmp_path / "x.png"), "-m", str(checkpoint), "-o", str(tmp_path / "x.cml")]) == 0
    assert main(["decompress", str(tmp_path / "x.cml"), "-m", str(checkpoint), "-o", str(tmp_path / "y.png")]) == 0
    out = Image.open(tmp_path / "y.png")
    assert out.size == (50, 40)
    if mode == "L":
        assert out.mode == "L"
    elif mode in ("RGBA", "LA"):
        assert out.mode == mode
        assert np.array_equal(np.asarray(out)[..., -1], src.alpha)  # alpha is lossless
    else:
        assert out.mode.startswith("I") and np.asarray(out).max() > 255


def test_decoding_is_identical_in_another_process(checkpoint, photo, tmp_path):
    assert main(["compress", str(photo), "-m", str(checkpoint), "-o", str(tmp_path / "p.cml")]) == 0
    assert main(["decompress", str(tmp_path / "p.cml"), "-m", str(checkpoint), "-o", str(tmp_path / "a.png")]) == 0
    res = run_cli(["-m", "compressml.cli", "decompress", str(tmp_path / "p.cml"), "-m", str(checkpoint), "-o", str(tmp_path / "b.png")])
    assert res.returncode == 0, res.stderr[-1500:]
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
