"""MLLAE / MLLAE-N: the size rule, the N-byte bound, bit-exact lossless mode, quantizers, training."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_image_kind, save_system_checkpoint, smooth_image
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from compressml.cli import main
from compressml.codec import container as cml
from compressml.codec import mllae as codec
from compressml.codec.files import CodecModel, read_source
from compressml.codec.lae import SourceImage
from compressml.errors import CompressMLError, ConfigError
from compressml.models.mllae import MLLAE, derive_geometry
from compressml.models.quantizers import QUANTIZERS, build_quantizer
from compressml.systems import MLLAESystem, load_system

FP = bytes(range(16))


# -- the size rule --------------------------------------------------------------------------


@pytest.mark.parametrize("block", [8, 16, 32, 64])
@pytest.mark.parametrize("bits", [1, 2, 3, 8])
@pytest.mark.parametrize("n", [1, 3, 16, 64, 100, 1000])
def test_geometry_fits_the_budget(block, bits, n):
    if n >= 3 * block * block:
        with pytest.raises(ConfigError):
            derive_geometry(n, block, bits)
        return
    try:
        g = derive_geometry(n, block, bits)
    except ConfigError as e:
        assert "cannot hold" in str(e)  # fewer than `bits` bits in the whole budget
        assert 8 * n < bits
        return
    assert g.latent_channels * g.side**2 * g.bits <= 8 * n
    assert g.code_bytes <= n
    assert g.block % g.stride == 0 and g.latent_channels >= 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bytes": 64, "block": 48}, "power of two"),
        ({"bytes": 3 * 16 * 16, "block": 16}, "model.bytes"),
        ({"bytes": 0}, "model.bytes"),
        ({"bytes": 8, "stride": 3}, "stride"),
    ],
)
def test_bad_geometry_is_a_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        derive_geometry(**kwargs)


def test_bad_quantizer_settings():
    with pytest.raises(ConfigError, match="unknown quantizer"):
        build_quantizer("gumbel")
    with pytest.raises(ConfigError, match="1 bit"):
        build_quantizer("binary_noise", bits=2)
    with pytest.raises(ConfigError, match="bits"):
        build_quantizer("ste", bits=9)


# -- quantizers ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(QUANTIZERS))
def test_quantizers_train_relaxed_and_code_integers(kind):
    q = build_quantizer(kind, bits=1 if kind == "binary_noise" else 3)
    z = torch.randn(4, 5, 6, 6, requires_grad=True)
    q.train()
    relaxed = q(z)
    relaxed.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    q.eval()
    code = q.quantize(z)
    assert code.dtype == torch.int64 and code.min() >= 0 and code.max() < q.levels
    assert torch.equal(q(z), q.dequantize(code))


def test_ste_passes_the_gradient_straight_through():
    q = build_quantizer("ste", bits=2).train()
    z = torch.randn(100, requires_grad=True)
    out = q(z)
    assert torch.allclose(out, q.dequantize(q.quantize(z)))  # forward: exactly the rounded code
    out.sum().backward()
    sig = torch.sigmoid(z.detach())
    assert torch.allclose(z.grad, sig * (1 - sig))  # backward: d/dz of the un-rounded value


def test_binary_noise_sparsity_penalty():
    q = build_quantizer("binary_noise", noise=2.0, sparsity=0.5)
    z = torch.zeros(10)
    assert float(q.penalty(z)) == pytest.approx(0.25)
    assert torch.equal(q.eval().quantize(torch.tensor([-1.0, 0.0, 2.0])), torch.tensor([0, 0, 1]))


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), data=st.data())
def test_pack_unpack_codes(bits, data):
    values = np.array(data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=1, max_size=300)))
    packed = codec.pack_codes(values, bits)
    assert len(packed) == -(-len(values) * bits // 8)
    assert np.array_equal(codec.unpack_codes(packed, len(values), bits), values)


# -- the N-byte bound ---------------------------------------------------------------------------


def adversarial_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    edges = np.zeros((40, 56, 3), np.uint8)
    edges[:, ::2] = 255
    edges[::3, :, 1] = 255
    return {
        "noise": rng.integers(0, 256, (40, 56, 3), dtype=np.uint8),
        "flat": np.full((40, 56, 3), 128, np.uint8),
        "black": np.zeros((17, 9, 3), np.uint8),
        "edges": edges,
        "smooth": smooth_image(40, 56),
    }


def tiny_mllae(seed: int = 0, **kwargs) -> MLLAE:
    torch.manual_seed(seed)
    spec = {"bytes": 16, "block": 16, "channels": 8, "residual_channels": 8, **kwargs}
    return MLLAE(**spec).eval()


def to_source(rgb: np.ndarray) -> SourceImage:
    return SourceImage(rgb=torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("n", [2, 7, 16, 48])
@pytest.mark.parametrize("entropy", ["none", "lzma", "rans"])
@pytest.mark.parametrize("quantizer, bits", [("binary_noise", 1), ("ste", 3)])
def test_no_block_payload_exceeds_n(n, entropy, quantizer, bits):
    model = tiny_mllae(bytes=n, quantizer=quantizer, bits=bits)
    # an adversarial prior: the rANS stage believes every value is 0, so ones cost a lot
    model.code_counts.zero_()
    model.code_counts[:, 0] = 1e6
    for name, rgb in adversarial_images().items():
        container = codec.encode(model, to_source(rgb), FP, entropy)
        sizes = codec.block_payload_sizes(cml.parse(container.to_bytes()), model)
        assert max(sizes) <= n, name
        assert max(sizes) <= model.geometry.code_bytes
        decoded = codec.decode(model, cml.parse(container.to_bytes()), FP)
        expected = model.decode(*model.encode(to_source(rgb).rgb[None]))[0]
        assert torch.equal(decoded.rgb, expected), name


def test_entropy_stage_shrinks_sparse_codes():
    model = tiny_mllae(bytes=48)
    with torch.no_grad():
        model.encoder[-1].bias.fill_(-50.0)  # codes nearly all zero
    model.code_counts.zero_()
    model.code_counts[:, 0] = 1000
    model.code_counts[:, 1] = 1
    rgb = smooth_image(64, 64)
    raw = codec.block_payload_sizes(codec.encode(model, to_source(rgb), FP, "none"), model)
    for entropy in ("lzma", "rans"):
        coded = codec.block_payload_sizes(codec.encode(model, to_source(rgb), FP, entropy), model)
        assert sum(coded) < sum(raw) / 2, entropy


# -- lossless mode -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (13, 1), (33, 47), (64, 64)])
@pytest.mark.parametrize("entropy", ["none", "rans"])
def test_lossless_round_trip_is_bit_exact(shape, entropy):
    model = tiny_mllae(lossless=True, quantizer="ste", bits=2)
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    data = codec.encode(model, to_source(rgb), FP, entropy).to_bytes()
    decoded = codec.decode(model, cml.parse(data), FP)
    assert np.array_equal((decoded.rgb * 255).round().byte().permute(1, 2, 0).numpy(), rgb)


def grey_source(h: int = 40, w: int = 36, channels: int = 1) -> SourceImage:
    grey = torch.from_numpy(smooth_image(h, w)[..., 1].copy()).float().div(255)
    return SourceImage(rgb=grey.expand(3, h, w).clone(), channels=channels)


@pytest.mark.parametrize("bound", [0, 2])
def test_a_grey_image_codes_its_residual_once(bound):
    model = tiny_mllae(lossless=True, quantizer="ste", bits=2)
    grey = codec.encode(model, grey_source(), FP, "rans", max_error=bound)
    as_colour = codec.encode(model, grey_source(channels=3), FP, "rans", max_error=bound)  # the same pixels, said to be RGB
    assert grey.section(codec.META)[-1] == codec.LOSSLESS_EXACT_GREY and as_colour.section(codec.META)[-1] == codec.LOSSLESS_EXACT
    assert len(grey.sections_of(codec.RESIDUAL)) * 3 == len(as_colour.sections_of(codec.RESIDUAL))
    assert len(grey.to_bytes()) < 0.6 * len(as_colour.to_bytes())
    decoded = codec.decode(model, cml.parse(grey.to_bytes()), FP).rgb
    assert torch.equal(decoded[0], decoded[1]) and torch.equal(decoded[0], decoded[2])
    error = (decoded[0] * 255).round() - (grey_source().rgb[0] * 255).round()
    assert error.abs().max() <= bound


def test_grey_files_of_the_earlier_layout_still_decode():
    """Before flag 3 a grey image's residual was coded for R, G and B (flag 2): such files decode as they did."""
    model = tiny_mllae(lossless=True, quantizer="ste", bits=2)
    colour = codec.encode(model, grey_source(channels=3), FP, "rans")
    earlier = cml.Container(**{**colour.__dict__, "channels": 1})
    decoded = codec.decode(model, cml.parse(earlier.to_bytes()), FP)
    assert decoded.channels == 1 and torch.equal((decoded.rgb * 255).round(), (grey_source().rgb * 255).round())


def test_a_grey_flag_in_a_colour_file_is_refused():
    model = tiny_mllae(lossless=True, quantizer="ste", bits=2)
    grey = codec.encode(model, grey_source(), FP, "rans")
    bad = cml.Container(**{**grey.__dict__, "channels": 3})
    with pytest.raises(cml.ContainerError, match="coded once for grey in a colour file"):
        codec.decode(model, cml.parse(bad.to_bytes()), FP)
    residuals = [k for k, (kind, _) in enumerate(grey.sections) if kind == codec.RESIDUAL]
    short = cml.Container(**{**grey.__dict__, "sections": [sec for k, sec in enumerate(grey.sections) if k != residuals[-1]]})
    with pytest.raises(cml.ContainerError, match="wrong number of residual sections"):
        codec.decode(model, cml.parse(short.to_bytes()), FP)


@pytest.fixture(scope="module")
def lossless_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    system = MLLAESystem(bytes=16, block=16, channels=8, residual_channels=8, lossless=True, quantizer="ste", bits=2, entropy="rans")
    return save_system_checkpoint(system, tmp_path_factory.mktemp("mllae") / "lossless.ckpt")


@pytest.mark.parametrize("kind", ["rgb", "grey", "grey16", "rgba", "grey_alpha", "palette"])
def test_lossless_files_are_bit_exact(kind, lossless_checkpoint, tmp_path):
    rng = np.random.default_rng(3)
    src = tmp_path / "in" / f"{kind}.png"
    src.parent.mkdir()
    save_image_kind(src, kind, smooth_image(29, 43), rng)
    assert main(["compress", str(src), "-m", str(lossless_checkpoint), "-o", str(tmp_path / "c.cml")]) == 0
    assert main(["decompress", str(tmp_path / "c.cml"), "-m", str(lossless_checkpoint), "-o", str(tmp_path / "d.png")]) == 0
    original = read_source(src)
    with Image.open(tmp_path / "d.png") as out:
        got = np.asarray(out)
    if kind == "grey16":  # lossless at 8 bits: the 16-bit source comes back as its 8-bit conversion
        expected = (original.rgb[0] * 255).round().byte().numpy()
    elif kind == "rgba":
        expected = np.dstack([(original.rgb * 255).round().byte().permute(1, 2, 0).numpy(), original.alpha])
    elif kind in ("grey", "grey_alpha"):
        expected = np.asarray(Image.open(src))
    else:
        expected = (original.rgb * 255).round().byte().permute(1, 2, 0).numpy()
    assert got.shape == expected.shape and np.array_equal(got, expected)


def test_lossless_file_from_other_weights_or_family_is_refused(lossless_checkpoint, tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "a.png"
    Image.fromarray(smooth_image(20, 20)).save(src)
    main(["compress", str(src), "-m", str(lossless_checkpoint), "-o", str(tmp_path / "a.cml")])
    code = main(["decompress", str(tmp_path / "a.cml"), "-m", str(tiny_checkpoint), "-o", str(tmp_path / "a.png.out.png")])
    err = capsys.readouterr().err
    assert code == 2 and "mllae" in err and err.count("\n") == 1
    assert not (tmp_path / "a.png.out.png").exists()


def reframe(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def test_tampered_mllae_sections_are_refused(lossless_checkpoint):
    model = CodecModel.load(lossless_checkpoint)
    container = model.encode(to_source(smooth_image(20, 30)))
    for kind, payload in [
        (codec.LENGTHS, b"\xff\xff\xff\xff\xff\x01"),
        (codec.BLOCKS, b"\x00"),
        (codec.RESIDUAL, b"\x00" * 8),
        (codec.META, b"\x00"),
    ]:
        sections = [(k, payload if k == kind else p) for k, p in container.sections]
        bad = cml.Container(**{**container.__dict__, "sections": sections})
        with pytest.raises(cml.ContainerError):
            model.decode(cml.parse(bad.to_bytes()))


def test_lossless_coding_beyond_the_memory_is_a_one_line_error(lossless_checkpoint, tmp_path, capsys, monkeypatch):
    """A crafted file declaring a huge image (here 16384x16384, 100 GiB to decode) is refused before
    anything is allocated; so is coding an image this machine cannot hold. Nothing is written."""
    monkeypatch.setattr("compressml.codec.limits.available_memory", lambda: 8 << 30)  # the same on any machine
    model = CodecModel.load(lossless_checkpoint)
    container = model.encode(to_source(smooth_image(20, 30)))
    block = model.net.geometry.block
    side = 16384
    huge = cml.Container(**{**container.__dict__, "height": side, "width": side, "pad_h": (-side) % block, "pad_w": (-side) % block})
    with pytest.raises(CompressMLError, match=r"decoding this 16384x16384 image losslessly needs about 100\.0 GiB of memory; 8\.0 GiB"):
        model.decode(cml.parse(huge.to_bytes()))
    monkeypatch.setattr("compressml.codec.limits.available_memory", lambda: 1 << 20)
    src = tmp_path / "a.png"
    Image.fromarray(smooth_image(64, 64)).save(src)
    assert main(["compress", str(src), "-m", str(lossless_checkpoint), "-o", str(tmp_path / "a.cml")]) == 2
    err = capsys.readouterr().err
    assert "coding this 64x64 image losslessly needs about" in err and err.count("\n") == 1
    assert not (tmp_path / "a.cml").exists()


# -- training -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "quantizer, bits, distortion, lossless",
    [
        ("binary_noise", 1, "mse", False),
        ("uniform_noise", 2, "l1", False),
        ("ste", 3, "l1_ssim", False),
        ("ste", 2, "l1", True),
    ],
)
def test_a_few_steps_reduce_the_loss(quantizer, bits, distortion, lossless):
    torch.manual_seed(0)
    system = MLLAESystem(
        bytes=24,
        block=16,
        channels=16,
        residual_channels=8,
        quantizer=quantizer,
        bits=bits,
        distortion=distortion,
        lossless=lossless,
        noise=0.5,
    )
    x = torch.from_numpy(np.stack([smooth_image(32, 32, seed=s) for s in range(4)])).permute(0, 3, 1, 2).float() / 255
    opt = torch.optim.Adam(system.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        torch.manual_seed(1)  # the same noise draw each step: a fair comparison of the first and last loss
        loss = system.compute_losses(x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # lossless starts from a calibrated residual model (mean = interpolation, scale 8), so its first
    # loss is already near the residual's entropy and has less to lose in 25 steps
    assert losses[-1] < (0.9 if lossless else 0.8) * losses[0], losses


def test_training_counts_codes_for_the_rans_prior():
    system = MLLAESystem(bytes=16, block=16, channels=8)
    system.train()
    system.net(torch.rand(2, 3, 32, 32))
    g = system.net.geometry
    assert float(system.net.code_counts.sum()) == 2 * 4 * g.elements


def test_checkpoint_round_trip_codes_identically(lossless_checkpoint):
    system = load_system(lossless_checkpoint)
    assert isinstance(system, MLLAESystem) and system.net.lossless
    model = CodecModel.load(lossless_checkpoint)
    assert model.family == "mllae" and model.options == {"entropy": "rans"}
    src = to_source(smooth_image(24, 40))
    assert model.encode(src).to_bytes() == CodecModel.load(lossless_checkpoint).encode(src).to_bytes()


def test_bad_system_settings():
    with pytest.raises(ConfigError, match="distortion"):
        MLLAESystem(distortion="l2")
    with pytest.raises(ConfigError, match="entropy"):
        MLLAESystem(entropy="zstd")


def test_evaluate_reports_blocks_and_lossless_bpsp(lossless_checkpoint, tmp_path):
    from compressml.baselines import CODECS
    from compressml.evaluation import EvalImage, LearnedModel, run_evaluation

    images = [EvalImage("a.png", smooth_image(30, 40, seed=1)), EvalImage("b.png", smooth_image(17, 33, seed=2))]
    result = run_evaluation([LearnedModel(lossless_checkpoint, "q")], images, [CODECS["png"]], tmp_path / "eval")
    (ours,) = [r for r in result["averages"] if r["codec"] == "compressml-mllae-lossless"]
    assert ours["exact"] == 2 and ours["psnr"] == 100.0
    assert ours["block_bytes_max"] <= ours["block_budget"] == 16
    png = next(r for r in result["averages"] if r["codec"] == "png")
    assert png["exact"] == 2 and png["bpsp"] == pytest.approx(png["bpp"] / 3)


def test_export_bundle_graphs_and_codes(lossless_checkpoint, tmp_path):
    import onnxruntime as ort

    from compressml.export import export_bundle, load_bundle

    out = tmp_path / "bundle"
    export_bundle(lossless_checkpoint, out)
    net, manifest = load_bundle(out)
    assert manifest["family"] == "mllae" and manifest["geometry"]["bytes"] == 16 and manifest["entropy"] == "rans"
    # encoder (with its quantizer) and decoder as separate graphs, matching the PyTorch model on blocks
    blocks = torch.from_numpy(np.stack([smooth_image(16, 16, seed=s) for s in range(3)])).permute(0, 3, 1, 2).float() / 255
    codes = net.quantizer.quantize(net.encoder(blocks))
    reference = net.decode_blocks(net.quantizer.dequantize(codes)).clamp(0, 1)
    enc = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
    (y,) = enc.run(None, {"x": blocks.numpy()})
    assert np.array_equal(y, codes.float().numpy())
    (x_hat,) = dec.run(None, {"y": y})
    assert np.abs(x_hat - reference.detach().numpy()).max() < 1e-4
    scripted = torch.jit.load(str(out / "encoder.pt"))
    assert torch.equal(scripted(blocks), codes.float())
    # a file made with the checkpoint decodes with the bundle, bit-exact
    src = tmp_path / "a.png"
    Image.fromarray(smooth_image(21, 35)).save(src)
    assert main(["compress", str(src), "-m", str(lossless_checkpoint), "-o", str(tmp_path / "a.cml")]) == 0
    assert main(["decompress", str(tmp_path / "a.cml"), "-m", str(out), "-o", str(tmp_path / "a.png.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png.png")), smooth_image(21, 35))
