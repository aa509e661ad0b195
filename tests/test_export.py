"""Export bundles: files and manifest, loading without pickle, TorchScript/ONNX graphs, plain CompressAI, errors."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import smooth_image
from PIL import Image

from compressml.cli import main as cli_main
from compressml.codec import lae as lae_codec
from compressml.codec.files import CodecModel
from compressml.errors import BundleError, CheckpointError, ConfigError
from compressml.export import export_bundle, export_from_config, load_bundle, load_compressai
from compressml.models.padding import pad_to_multiple
from compressml.systems import LAESystem

ARCHS = ("factorized", "hyperprior", "mean_scale")
GRAPHS = {"encoder.pt", "decoder.pt", "encoder.onnx", "decoder.onnx"}


def make_checkpoint(path: Path, arch: str) -> Path:
    """A tiny LAE checkpoint saved by a Trainer, with a ModelCheckpoint state and best validation metrics."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    system = LAESystem(net={"arch": arch, "channels": 8, "latent_channels": 8}, g={"_target_": "compressml.g.RateDistortion"})
    system.best_val = {"val/loss": 1.5, "val/psnr": 21.0, "epoch": 3, "step": 120}
    callback = ModelCheckpoint(dirpath=path.parent / "unused", monitor="val/loss")
    callback.best_model_score = torch.tensor(1.5)
    trainer = pl.Trainer(max_steps=0, logger=False, callbacks=[callback], enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(system)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {arch: make_checkpoint(root / f"{arch}.ckpt", arch) for arch in ARCHS}


@pytest.fixture(scope="module")
def bundles(checkpoints, tmp_path_factory) -> dict[str, Path]:
    """mean_scale with every graph; the other two with weights and manifest only (graphs are the same code)."""
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for arch, ckpt in checkpoints.items():
        graphs = arch == "mean_scale"
        export_bundle(ckpt, root / arch, onnx=graphs, torchscript=graphs)
        out[arch] = root / arch
    return out


@pytest.fixture(scope="module")
def nets(checkpoints) -> dict[str, torch.nn.Module]:
    """The checkpoints' networks as compressml's own checkpoint path loads them."""
    return {arch: CodecModel.load(ckpt).net for arch, ckpt in checkpoints.items()}


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "in" / "photo.png"
    path.parent.mkdir()
    Image.fromarray(smooth_image(64, 96)).save(path)
    return path


def image_tensor(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(smooth_image(h, w, seed)).permute(2, 0, 1).float().div(255)


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


# -- files and manifest -------------------------------------------------------------------


def test_bundle_files_and_manifest(bundles, checkpoints, nets):
    root = bundles["mean_scale"]
    assert {p.name for p in root.iterdir()} == {"manifest.json", "weights.safetensors", *GRAPHS}
    manifest = json.loads((root / "manifest.json").read_text())
    ckpt = torch.load(checkpoints["mean_scale"], map_location="cpu", weights_only=True)
    assert manifest["format"] == "compressml-bundle" and manifest["format_version"] == 1
    assert (manifest["family"], manifest["architecture"], manifest["compressai_class"]) == ("lae", "mean_scale", "MeanScaleHyperprior")
    assert manifest["net"] == {"channels": 8, "latent_channels": 8} and manifest["stride"] == 64
    assert manifest["hyper_parameters"] == ckpt["hyper_parameters"]
    assert manifest["fingerprint"] == lae_codec.weights_fingerprint(nets["mean_scale"]).hex()
    metrics = manifest["metrics"]
    assert metrics["epoch"] == ckpt["epoch"] and metrics["global_step"] == ckpt["global_step"]
    assert metrics["model_checkpoint"] == [{"monitor": "val/loss", "best_score": 1.5, "current_score": None}]
    assert metrics["best_val"] == {"val/loss": 1.5, "val/psnr": 21.0, "epoch": 3, "step": 120}
    assert set(manifest["files"]) == {"weights.safetensors", *GRAPHS}
    for name, entry in manifest["files"].items():
        data = (root / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert manifest["versions"]["torch"] == torch.__version__ and "compressai" in manifest["versions"]
    assert max(manifest["graphs"]["max_abs_diff"].values()) < 1e-4


def test_weights_are_safetensors_with_cdf_tables(bundles, nets):
    from safetensors import safe_open

    with safe_open(bundles["mean_scale"] / "weights.safetensors", framework="pt") as f:
        keys = set(f.keys())
        cdf = f.get_tensor("gaussian_conditional._quantized_cdf")
        scales = f.get_tensor("gaussian_conditional.scale_table")
    assert keys == set(nets["mean_scale"].state_dict())
    assert cdf.numel() > 0 and scales.numel() > 0
    assert "entropy_bottleneck._offset" in keys


def test_graphs_can_be_left_out(bundles):
    root = bundles["factorized"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert {p.name for p in root.iterdir()} == {"manifest.json", "weights.safetensors"}
    assert set(manifest["files"]) == {"weights.safetensors"} and manifest["graphs"] == {}


@pytest.mark.parametrize("arch", ARCHS)
def test_load_bundle_round_trip(bundles, nets, arch):
    net, manifest = load_bundle(bundles[arch])
    ref = nets[arch].state_dict()
    state = net.state_dict()
    assert state.keys() == ref.keys()
    assert all(torch.equal(state[k], ref[k]) and state[k].dtype == ref[k].dtype for k in ref)
    assert lae_codec.weights_fingerprint(net).hex() == manifest["fingerprint"]
    net2, _ = load_bundle(bundles[arch] / "manifest.json")
    assert lae_codec.weights_fingerprint(net2) == lae_codec.weights_fingerprint(nets[arch])


# -- graphs -------------------------------------------------------------------


SIZES = [(1, 64, 96), (2, 128, 64)]


def test_torchscript_matches_pytorch_at_two_sizes(bundles, nets):
    net = nets["mean_scale"]
    encoder = torch.jit.load(str(bundles["mean_scale"] / "encoder.pt"))
    decoder = torch.jit.load(str(bundles["mean_scale"] / "decoder.pt"))
    with torch.no_grad():
        for n, h, w in SIZES:
            x = torch.rand(n, 3, h, w)
            y = net.g_a(x)
            y_ts = encoder(x)
            assert y_ts.shape == (n, 8, h // 16, w // 16)
            assert torch.allclose(y_ts, y, atol=1e-6)
            assert torch.allclose(decoder(y), net.g_s(y), atol=1e-6)


def test_onnx_matches_pytorch_at_two_sizes(bundles, nets):
    import onnxruntime as ort

    net = nets["mean_scale"]
    encoder = ort.InferenceSession(str(bundles["mean_scale"] / "encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(bundles["mean_scale"] / "decoder.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in encoder.get_inputs()] == ["x"] and [i.name for i in decoder.get_inputs()] == ["y"]
    with torch.no_grad():
        for n, h, w in SIZES:
            x = torch.rand(n, 3, h, w)
            y = net.g_a(x)
            (y_onnx,) = encoder.run(None, {"x": x.numpy()})
            assert y_onnx.shape == (n, 8, h // 16, w // 16)
            np.testing.assert_allclose(y_onnx, y.numpy(), atol=1e-4)
            (x_hat,) = decoder.run(None, {"y": y.numpy()})
            np.testing.assert_allclose(x_hat, net.g_s(y).numpy(), atol=1e-4)


# -- plain CompressAI -------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_compressai_from_state_dict_gives_identical_strings(bundles, nets, arch):
    import compressai.models
    from safetensors.torch import load_file

    manifest = json.loads((bundles[arch] / "manifest.json").read_text())
    cls = getattr(compressai.models, manifest["compressai_class"])
    plain = cls.from_state_dict(load_file(bundles[arch] / manifest["compressai_state_dict"])).eval()
    x = image_tensor(64, 96)
    container = lae_codec.encode(nets[arch], lae_codec.SourceImage(rgb=x))
    padded, _ = pad_to_multiple(x[None], manifest["stride"])
    for model in (plain, load_compressai(bundles[arch])):
        with torch.no_grad():
            out = model.compress(padded)
        assert [s[0] for s in out["strings"]] == lae_codec.coded_strings(container)
        assert len(out["strings"]) == (1 if arch == "factorized" else 2)


# -- command line -------------------------------------------------------------------


def test_cml_decodes_with_bundle_and_vice_versa(checkpoints, bundles, photo, tmp_path):
    ckpt, bundle = str(checkpoints["mean_scale"]), str(bundles["mean_scale"])
    assert cli_main(["compress", str(photo), "-m", ckpt, "-o", str(tmp_path / "from_ckpt.cml")]) == 0
    assert cli_main(["compress", str(photo), "-m", bundle, "-o", str(tmp_path / "from_bundle.cml")]) == 0
    assert (tmp_path / "from_ckpt.cml").read_bytes() == (tmp_path / "from_bundle.cml").read_bytes()
    assert cli_main(["decompress", str(tmp_path / "from_ckpt.cml"), "-m", bundle, "-o", str(tmp_path / "a.png")]) == 0
    assert cli_main(["decompress", str(tmp_path / "from_bundle.cml"), "-m", ckpt, "-o", str(tmp_path / "b.png")]) == 0
    a, b = np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    assert a.shape == (64, 96, 3) and np.array_equal(a, b)


def test_file_from_another_bundle_is_refused(bundles, photo, tmp_path, capsys):
    assert cli_main(["compress", str(photo), "-m", str(bundles["hyperprior"]), "-o", str(tmp_path / "p.cml")]) == 0
    assert cli_main(["decompress", str(tmp_path / "p.cml"), "-m", str(bundles["mean_scale"]), "-o", str(tmp_path / "p.png")]) == 2
    assert "other weights" in one_line_error(capsys)
    assert not (tmp_path / "p.png").exists()


# -- errors -------------------------------------------------------------------


def test_existing_folder_is_refused_without_force(checkpoints, bundles, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("keep me")
    for force in (False, True):  # a non-empty folder that is no bundle is never replaced
        with pytest.raises(BundleError, match="not empty"):
            export_bundle(checkpoints["hyperprior"], other, force=force, onnx=False, torchscript=False)
    assert [p.name for p in other.iterdir()] == ["keep.txt"] and (other / "keep.txt").read_text() == "keep me"

    target = copy_bundle(bundles["factorized"], tmp_path / "bundle")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(BundleError, match="force=true"):
        export_bundle(checkpoints["hyperprior"], target, onnx=False, torchscript=False)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    export_bundle(checkpoints["hyperprior"], target, force=True, onnx=False, torchscript=False)
    assert load_bundle(target)[1]["architecture"] == "hyperprior"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "other"]  # no temporary folders left


def test_failed_export_leaves_nothing(checkpoints, tmp_path, monkeypatch):
    import compressml.export as export_lib

    def broken(*args, **kwargs):
        raise BundleError("ONNX export failed (simulated)")

    monkeypatch.setattr(export_lib, "write_onnx", broken)
    with pytest.raises(BundleError, match="simulated"):
        export_bundle(checkpoints["mean_scale"], tmp_path / "new" / "deeper" / "bundle")
    assert list(tmp_path.iterdir()) == []


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        export_bundle(tmp_path / "nope.ckpt", tmp_path / "out")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        export_bundle(tmp_path / "junk.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_required_config_value():
    from omegaconf import OmegaConf

    with pytest.raises(ConfigError, match="checkpoint"):
        export_from_config(OmegaConf.create({"checkpoint": "???", "out": "x", "force": False, "onnx": True, "torchscript": True}))


def test_entry_point_missing_checkpoint_exits_2(tmp_path, monkeypatch, capsys):
    import export

    monkeypatch.setattr(sys, "argv", ["export.py", f"checkpoint={tmp_path / 'nope.ckpt'}", f"out={tmp_path / 'bundle'}"])
    with pytest.raises(SystemExit) as exc:
        export.main()
    assert exc.value.code == 2
    assert "no such checkpoint" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_entry_point_exports(checkpoints, tmp_path, monkeypatch, capsys):
    import export

    monkeypatch.chdir(tmp_path)  # a relative out= is relative to where export.py is started
    argv = ["export.py", f"checkpoint={checkpoints['hyperprior']}", "out=bundle", "onnx=false", "torchscript=false"]
    monkeypatch.setattr(sys, "argv", argv)
    export.main()
    assert "export bundle written" in capsys.readouterr().out
    assert load_bundle(tmp_path / "bundle")[1]["architecture"] == "hyperprior"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # Hydra wrote no run folder or log


def tamper_weights(root: Path) -> None:
    data = bytearray((root / "weights.safetensors").read_bytes())
    data[-1] ^= 0x01
    (root / "weights.safetensors").write_bytes(bytes(data))


def test_tampered_weights_are_refused(bundles, photo, tmp_path, capsys):
    root = copy_bundle(bundles["mean_scale"], tmp_path / "bundle")
    tamper_weights(root)
    with pytest.raises(BundleError, match="weights.safetensors does not match its SHA-256"):
        load_bundle(root)
    with pytest.raises(BundleError, match="SHA-256"):
        load_compressai(root)
    assert cli_main(["compress", str(photo), "-m", str(root), "-o", str(tmp_path / "p.cml")]) == 2
    assert "SHA-256" in one_line_error(capsys)
    assert not (tmp_path / "p.cml").exists()


def _edit_manifest(edit):
    def apply(root: Path) -> None:
        manifest = json.loads((root / "manifest.json").read_text())
        edit(manifest)
        (root / "manifest.json").write_text(json.dumps(manifest))

    return apply


BROKEN = {
    "not-json": (lambda root: (root / "manifest.json").write_text("{ nope"), "not JSON"),
    "no-manifest": (lambda root: (root / "manifest.json").unlink(), "no manifest.json"),
    "missing-file": (lambda root: (root / "decoder.onnx").unlink(), "decoder.onnx is missing"),
    "unknown-arch": (_edit_manifest(lambda m: m.update(architecture="transformer")), "unknown architecture 'transformer'"),
    "newer-format": (_edit_manifest(lambda m: m.update(format_version=99)), "newer compressml"),
    "path-escape": (_edit_manifest(lambda m: m["files"].update({"../x": {"sha256": "0" * 64}})), "not a plain file name"),
    "fingerprint": (_edit_manifest(lambda m: m.update(fingerprint="0" * 32)), "fingerprint"),
    "wrong-size": (_edit_manifest(lambda m: m["net"].update(channels=16)), "do not fit"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_bundles_are_one_line_errors(bundles, tmp_path, name, capsys):
    root = copy_bundle(bundles["mean_scale"], tmp_path / "bundle")
    breaker, needle = BROKEN[name]
    breaker(root)
    with pytest.raises(BundleError, match=needle) as exc:
        load_bundle(root)
    assert "\n" not in str(exc.value)


# -- RED (super-resolution) -------------------------------------------------------------------

RED_CASES = {"espcn-x3": ("espcn", 3), "fsrcnn-x2": ("fsrcnn", 2), "edsr-x4": ("edsr", 4)}
RED_FILES = {"manifest.json", "weights.safetensors", "upscaler.pt", "upscaler.onnx"}


def make_red_checkpoint(path: Path, arch: str, scale: int) -> Path:
    """A tiny RED checkpoint whose body is not zero (a fresh RED with a global skip is exactly bicubic)."""
    from conftest import save_system_checkpoint

    from compressml.systems import REDSystem

    torch.manual_seed(0)
    system = REDSystem(arch=arch, scale=scale, channels=8, blocks=1)
    last = [m for m in system.net.body.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))][-1]
    torch.nn.init.normal_(last.weight, std=0.05)
    torch.nn.init.normal_(last.bias, std=0.05)
    system.best_val = {"val/loss": 0.05, "val/psnr_y": 30.5, "epoch": 2, "step": 40}
    return save_system_checkpoint(system, path)


@pytest.fixture(scope="module")
def red_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("red_ckpts")
    return {case: make_red_checkpoint(root / f"{case}.ckpt", *spec) for case, spec in RED_CASES.items()}


@pytest.fixture(scope="module")
def red_bundles(red_checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("red_bundles")
    for case, ckpt in red_checkpoints.items():
        export_bundle(ckpt, root / case)
    return {case: root / case for case in red_checkpoints}


@pytest.fixture(scope="module")
def red_nets(red_checkpoints) -> dict[str, torch.nn.Module]:
    from compressml.systems import load_system

    return {case: load_system(ckpt, family="red").net for case, ckpt in red_checkpoints.items()}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_upscale_graph_matches_pytorch(scale):
    from compressml.export import BicubicUpscale
    from compressml.models.red import bicubic_upscale

    up = BicubicUpscale(scale)
    for shape in [(1, 3, 1, 5), (2, 3, 2, 3), (1, 3, 17, 29)]:
        x = torch.rand(*shape)
        out = up(x)
        assert out.shape == (shape[0], 3, shape[2] * scale, shape[3] * scale)
        assert torch.allclose(out, bicubic_upscale(x, scale), atol=1e-5)


@pytest.mark.parametrize("case", list(RED_CASES))
def test_red_bundle_manifest_and_load(red_bundles, red_nets, red_checkpoints, case):
    from compressml.models.red import RED

    arch, scale = RED_CASES[case]
    root = red_bundles[case]
    assert {p.name for p in root.iterdir()} == RED_FILES
    manifest = json.loads((root / "manifest.json").read_text())
    assert (manifest["family"], manifest["architecture"], manifest["scale"]) == ("red", arch, scale)
    assert manifest["net"] == {"arch": arch, "scale": scale, "channels": 8, "blocks": 1, "global_skip": True}
    assert manifest["fingerprint"] == lae_codec.weights_fingerprint(red_nets[case]).hex()
    assert manifest["metrics"]["best_val"] == {"val/loss": 0.05, "val/psnr_y": 30.5, "epoch": 2, "step": 40}
    assert set(manifest["files"]) == RED_FILES - {"manifest.json"}
    assert manifest["graphs"]["upscaler"]["input"]["name"] == "lr" and manifest["graphs"]["onnx_opset"] == 17
    assert max(manifest["graphs"]["max_abs_diff"].values()) < 1e-4
    assert {"torch", "safetensors", "onnx", "onnxruntime"} <= set(manifest["versions"])

    net, loaded = load_bundle(root)
    assert isinstance(net, RED) and not net.training and loaded == manifest
    assert (net.arch, net.scale) == (arch, scale)
    x = torch.rand(1, 3, 10, 7)
    with torch.no_grad():
        assert torch.equal(net(x), red_nets[case](x))


@pytest.mark.parametrize("case", list(RED_CASES))
def test_red_graphs_match_pytorch_at_another_size(red_bundles, red_nets, case):
    """Checked at export on 11x14; here on other sizes and a batch of two (dynamic axes)."""
    import onnxruntime as ort

    from compressml.models.red import bicubic_upscale

    scale = RED_CASES[case][1]
    net = red_nets[case]
    scripted = torch.jit.load(str(red_bundles[case] / "upscaler.pt"))
    session = ort.InferenceSession(str(red_bundles[case] / "upscaler.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["lr"] and [o.name for o in session.get_outputs()] == ["sr"]
    for shape in [(2, 3, 9, 13), (1, 3, 16, 5)]:
        x = torch.rand(*shape)
        with torch.no_grad():
            ref = net(x)
            assert ref.shape == (shape[0], 3, shape[2] * scale, shape[3] * scale)
            assert (ref - bicubic_upscale(x, scale)).abs().max() > 1e-2  # the body matters, not only the skip
            assert torch.allclose(scripted(x), ref, atol=1e-5)
        (sr,) = session.run(None, {"lr": x.numpy()})
        np.testing.assert_allclose(sr, ref.numpy(), atol=1e-4)


def test_red_tampered_or_inconsistent_bundles_are_refused(red_bundles, tmp_path):
    root = copy_bundle(red_bundles["espcn-x3"], tmp_path / "tampered")
    tamper_weights(root)
    with pytest.raises(BundleError, match="weights.safetensors does not match its SHA-256"):
        load_bundle(root)
    for name, edit, needle in [
        ("scale", lambda m: m.update(scale=2), "scale"),
        ("arch", lambda m: m["net"].update(arch="srcnn"), "unknown architecture 'srcnn'"),
        ("size", lambda m: m["net"].update(channels=16), "do not fit"),
        ("huge", lambda m: m["net"].update(channels=10**6), "out of range"),  # never allocated
    ]:
        root = copy_bundle(red_bundles["espcn-x3"], tmp_path / name)
        _edit_manifest(edit)(root)
        with pytest.raises(BundleError, match=needle) as exc:
            load_bundle(root)
        assert "\n" not in str(exc.value)


def test_float16_bundle_halves_the_weights_and_codes_like_itself(checkpoints, bundles, photo, tmp_path):
    ckpt = checkpoints["mean_scale"]
    half = tmp_path / "half"
    summary = export_bundle(ckpt, half, onnx=False, torchscript=False, dtype="float16")
    full = bundles["mean_scale"] / "weights.safetensors"
    assert summary["files"]["weights.safetensors"] < full.stat().st_size  # (the integer CDF tables dominate a tiny model)
    net, manifest = load_bundle(half)
    assert (
        manifest["dtype"] == "float16"
        and manifest["fingerprint"] != json.loads((bundles["mean_scale"] / "manifest.json").read_text())["fingerprint"]
    )
    from safetensors.torch import load_file

    stored = load_file(half / "weights.safetensors")
    assert all(v.dtype == torch.float16 for k, v in stored.items() if k.startswith(("g_a", "g_s", "h_a", "h_s")))
    assert all(v.dtype != torch.float16 for k, v in stored.items() if "cdf" in k or "offset" in k)  # tables stay integer
    # the same file from the bundle twice; decoding gives the forward pass of the rounded network
    assert cli_main(["compress", str(photo), "-m", str(half), "-o", str(tmp_path / "a.cml")]) == 0
    assert cli_main(["decompress", str(tmp_path / "a.cml"), "-m", str(half), "-o", str(tmp_path / "a.png")]) == 0
    decoded = np.asarray(Image.open(tmp_path / "a.png")).astype(np.float64)
    with torch.no_grad():
        x = image_tensor(64, 96)[None]
        expected = net(pad_to_multiple(x, 64)[0])["x_hat"][..., :64, :96].clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255
    assert np.abs(decoded - expected).max() <= 1.5
    with pytest.raises(ConfigError, match="dtype"):
        export_bundle(ckpt, tmp_path / "bad", dtype="int8")


@pytest.mark.parametrize(
    "bundle, key",
    [
        ("lae-q1", "channels"),
        ("lae-q1", "latent_channels"),
        ("mllae-lossless", "channels"),
        ("mllae-lossless", "block"),
        ("mllae-lossless", "residual_channels"),
    ],
)
@pytest.mark.parametrize("value", [10**6, 0, "64", True])
def test_manifest_sizes_are_bounded_before_any_network_is_built(bundle, key, value):
    """A crafted manifest cannot make the loader allocate a network of any size (or a wrong type)."""
    from compressml.codec.bundle import read_manifest, validate_manifest
    from compressml.premade import HERE

    _, manifest = read_manifest(HERE / bundle)
    manifest["net"][key] = value
    with pytest.raises(BundleError, match=f"net.{key} must be an integer in 1..") as exc:
        validate_manifest(manifest, "crafted")
    assert "\n" not in str(exc.value)


def test_model_family_reads_metadata_lazily(checkpoints, tmp_path):
    from compressml.systems.loading import model_family, read_checkpoint

    ckpt = read_checkpoint(checkpoints["mean_scale"])
    assert model_family(checkpoints["mean_scale"]) == "lae"
    # an old (non-zip) torch file cannot be memory-mapped: it is read whole instead
    legacy = tmp_path / "legacy.ckpt"
    torch.save(ckpt, legacy, _use_new_zipfile_serialization=False)
    assert model_family(legacy) == "lae"
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        model_family(tmp_path / "junk.ckpt")
