"""Every LAE architecture of CompressAI's registry, from the registry: it composes, trains, codes the
bits of CompressAI's own ``compress``, tiles, exports and loads back. Tiny widths and images; the
serial context models (pixel-by-pixel coding) on 64x64 only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CONF, TINY, compose_train, smooth_image
from hydra.utils import instantiate
from omegaconf import OmegaConf

from compressml.codec import container as cml
from compressml.codec import lae as lae_codec
from compressml.codec.files import CodecModel
from compressml.errors import CompressMLError, ConfigError
from compressml.export import export_bundle, load_bundle, load_compressai
from compressml.models.lae import architecture, architecture_of, build_lae, expected_layout, variants
from compressml.models.padding import pad_to_multiple
from compressml.systems import LAESystem, save_checkpoint

VARIANTS = variants()
IDS = [v.variant for v in VARIANTS]


def tiny(spec, seed: int = 0) -> torch.nn.Module:
    """The architecture at tiny widths (ELIC: 10 latent channels in five groups), updated to code."""
    torch.manual_seed(seed)
    net = build_lae(spec.name, 8, 10 if "M" in spec.widths else None).eval()
    net.update(force=True)
    return net


def image(spec, seed: int = 0) -> torch.Tensor:
    """64x64 for the serial context models, a non-multiple 72x100 (padded to 128x128) for the others."""
    h, w = (64, 64) if spec.serial else (72, 100)
    return torch.from_numpy(smooth_image(h, w, seed)).permute(2, 0, 1).float().div(255)


def test_every_fixed_rate_image_model_of_compressai_is_a_variant():
    from compressai.registry import MODELS

    image_models = {
        n
        for n, c in MODELS.items()
        if c.__module__.startswith("compressai.models.")
        and "pointcloud" not in c.__module__
        and "video" not in c.__module__
        and not n.endswith("-vbr")
        and n != "ssf2020"
    }
    assert {v.registry_name for v in VARIANTS} == image_models
    assert len(VARIANTS) == 10
    assert {p.stem for p in (CONF / "model" / "lae").glob("*.yaml")} == {*IDS, "base"}


@pytest.mark.parametrize("spec", VARIANTS, ids=IDS)
def test_variant_config_is_a_short_override_that_builds(spec, tmp_path):
    text = (CONF / "model" / "lae" / f"{spec.variant}.yaml").read_text()
    assert "/model/lae/base@_here_" in text and len(text.splitlines()) <= 14
    cfg = compose_train(TINY + [f"model=lae/{spec.variant}"], tmp_path)
    system = instantiate(cfg.model, g=OmegaConf.to_container(cfg.g))
    assert isinstance(system, LAESystem) and type(system.net) is spec.cls
    assert architecture_of(system.net).registry_name == spec.registry_name


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ConfigError) as e:
        build_lae("mbt2019", 8, 8)
    assert "mbt2018" in str(e.value) and "elic2022-official" in str(e.value) and "\n" not in str(e.value)


def test_widths_are_checked_per_architecture():
    with pytest.raises(ConfigError, match="M = N"):
        build_lae("cheng2020-anchor", 8, 16)
    with pytest.raises(ConfigError, match="summing to latent_channels"):
        build_lae("elic2022-official", 8, 10, groups=[1, 2, 3])
    with pytest.raises(ConfigError, match="no channel groups"):
        build_lae("mbt2018", 8, 8, groups=[4, 4])
    assert build_lae("elic2022-chandelier", 8, 10, groups=[2, 2, 2, 2, 2]).groups == [2, 2, 2, 2, 2]


@pytest.mark.parametrize("spec", VARIANTS, ids=IDS)
def test_quantizations_an_architecture_cannot_train_are_refused_in_one_line(spec):
    from compressml.models.lae import forward_padded

    for quantization in ("noise", "ste"):
        refusal = spec.quantization_refusal(quantization)
        expected = (spec.serial and quantization == "ste") or (
            spec.context in ("checkerboard", "channel-groups") and quantization == "noise"
        )
        assert bool(refusal) == expected
        make = lambda: LAESystem(
            net={"arch": spec.name, "channels": 8, "latent_channels": 10 if "M" in spec.widths else None},
            g={"_target_": "compressml.g.RateDistortion"},
            quantization=quantization,
        )
        if refusal:
            with pytest.raises(ConfigError, match=f"quantization={quantization} is not available"):
                make()
            with pytest.raises(ConfigError, match="is not available"):  # the plain-Python forward refuses it too
                forward_padded(tiny(spec).train(), image(spec)[None], quantization)
            assert "\n" not in refusal
        else:
            make()


def test_version_1_files_are_refused_for_architectures_that_never_wrote_them():
    from compressml.codec import container as cml_container

    v1 = cml_container.parse((Path(__file__).parent / "data" / "format_v1" / "lae-q1.cml").read_bytes())
    net = tiny(architecture("cheng2020-anchor-checkerboard"))
    with pytest.raises(cml.ContainerError, match="format v1 files hold"):
        lae_codec.decode(net, v1, v1.fingerprint)


@pytest.mark.parametrize("spec", VARIANTS, ids=IDS)
def test_files_hold_compressais_own_bits_and_decode_as_compressai_does(spec):
    net = tiny(spec)
    x = image(spec)
    container = lae_codec.encode(net, lae_codec.SourceImage(rgb=x), mode="compressai")
    parsed = cml.parse(container.to_bytes())
    assert parsed.version == cml.FORMAT_VERSION == 2
    assert lae_codec.decoding_mode_of(parsed) == "compressai"
    padded, _ = pad_to_multiple(x[None], spec.stride)
    with torch.no_grad():
        out = net.compress(padded)
        reference = net.decompress(out["strings"], out["shape"])["x_hat"][..., : x.shape[-2], : x.shape[-1]]
    assert lae_codec.coded_strings(parsed) == [group[0] for group in out["strings"]]
    shape, groups = expected_layout(net, *padded.shape[-2:])
    assert groups == len(out["strings"])
    decoded = lae_codec.decode(net, parsed).rgb
    assert decoded.shape == x.shape
    assert torch.allclose(decoded, reference[0].clamp(0, 1), atol=1e-6)


@pytest.mark.parametrize("spec", [v for v in VARIANTS if not v.serial], ids=[v.variant for v in VARIANTS if not v.serial])
def test_large_images_are_tiled_with_a_measured_margin(spec):
    from compressml.codec.tiling import latent_margin

    net = tiny(spec)
    x = torch.from_numpy(smooth_image(130, 200, 3)).permute(2, 0, 1).float().div(255)
    whole = lae_codec.encode(net, lae_codec.SourceImage(rgb=x))
    tiled = lae_codec.encode(net, lae_codec.SourceImage(rgb=x), tile_pixels=64 * 64)
    assert latent_margin(net) >= 3
    assert lae_codec.coded_strings(whole) == lae_codec.coded_strings(tiled)
    a = lae_codec.decode(net, whole).rgb
    b = lae_codec.decode(net, whole, tile_pixels=64 * 64).rgb
    assert torch.allclose(a, b, atol=1e-5)


def test_a_file_given_another_architecture_or_other_weights_fails_in_one_line(tmp_path):
    from compressml.cli import main

    cheng = tiny(architecture("cheng2020-anchor-checkerboard"))
    container = lae_codec.encode(cheng, lae_codec.SourceImage(rgb=image(architecture("elic2022-official"))))
    for other in (tiny(architecture("elic2022-official")), tiny(architecture("cheng2020-anchor-checkerboard"), seed=1)):
        with pytest.raises(cml.ContainerError, match="made by other weights"):
            lae_codec.decode(other, container)
    # the same through the command line: one line, no output file
    src = tmp_path / "x.cml"
    src.write_bytes(container.to_bytes())
    system = LAESystem(
        net={"arch": "elic2022-official", "channels": 8, "latent_channels": 10}, g={"_target_": "compressml.g.RateDistortion"}
    )
    ckpt = save_checkpoint(system, tmp_path / "elic.ckpt")
    assert main(["decompress", str(src), "-m", str(ckpt), "-o", str(tmp_path / "out.png")]) != 0
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("spec", VARIANTS, ids=IDS)
def test_refinement_is_offered_or_refused_in_one_line(spec):
    codec = CodecModel(net=tiny(spec), fingerprint=bytes(16), source="tiny", options={"g": {"_target_": "compressml.g.RateDistortion"}})
    if spec.refinable:
        assert codec.refined(2).refinement.steps == 2
    else:
        with pytest.raises(CompressMLError, match="without a context model"):
            codec.refined(2)


@pytest.mark.parametrize("spec", VARIANTS, ids=IDS)
def test_bundle_loads_into_compressml_and_into_compressais_own_class(spec, tmp_path):
    torch.manual_seed(0)
    system = LAESystem(
        net={"arch": spec.name, "channels": 8, "latent_channels": 10 if "M" in spec.widths else None},
        g={"_target_": "compressml.g.RateDistortion"},
    )
    ckpt = save_checkpoint(system, tmp_path / "model.ckpt")
    graphs = spec.variant == "elic2022_official"  # the graph code is the same for all ten (all ten traced when checked)
    export_bundle(ckpt, tmp_path / "bundle", onnx=graphs, torchscript=graphs)
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["compressai_registry"] == spec.registry_name and manifest["context"] == spec.context
    if graphs:
        assert {"encoder.pt", "decoder.pt", "encoder.onnx", "decoder.onnx"} <= set(manifest["files"])
    x = image(spec)
    from_ckpt = CodecModel.load(ckpt)
    container = from_ckpt.encode(lae_codec.SourceImage(rgb=x))
    net, _ = load_bundle(tmp_path / "bundle")
    assert torch.equal(lae_codec.decode(net, container, bytes.fromhex(manifest["fingerprint"])).rgb, from_ckpt.decode(container).rgb)
    plain = load_compressai(tmp_path / "bundle")
    assert type(plain) is spec.cls
    padded, _ = pad_to_multiple(x[None], spec.stride)
    with torch.no_grad():
        assert [s[0] for s in plain.compress(padded)["strings"]] == lae_codec.coded_strings(container)


@pytest.mark.slow
@pytest.mark.parametrize("spec", VARIANTS, ids=IDS)
def test_every_variant_smoke_trains_and_logs_real_bits(spec, image_folder, tmp_path):
    from compressml.training import train

    summary = train(
        compose_train(
            TINY + [f"model=lae/{spec.variant}", "data=folder", f"data.root={image_folder}", "trainer.precision=bf16-mixed"], tmp_path
        )
    )
    assert summary["global_step"] == 3
    assert "val/bpp_real" in summary["best"] and summary["best"]["val/bpp_real"] > 0
    ckpt = torch.load(Path(summary["last_checkpoint"]), map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["net"]["arch"] == spec.name
    assert CodecModel.load(summary["last_checkpoint"]).net.__class__ is spec.cls


def test_version_2_sections_unknown_critical_kinds_are_refused_optional_ones_skipped():
    net = tiny(architecture("mean_scale"))
    container = lae_codec.encode(net, lae_codec.SourceImage(rgb=image(architecture("mean_scale"))))
    plain = lae_codec.decode(net, container).rgb
    optional = cml.parse(cml.Container(**{**container.__dict__, "sections": [*container.sections, (0x90, b"later")]}).to_bytes())
    assert torch.equal(lae_codec.decode(net, optional).rgb, plain)
    critical = cml.parse(cml.Container(**{**container.__dict__, "sections": [*container.sections, (0x30, b"later")]}).to_bytes())
    with pytest.raises(cml.ContainerError, match="unknown section kind 0x30"):
        lae_codec.decode(net, critical)
    bad_mode = [(k, b"\x07" + p[1:]) if k == lae_codec.LAYOUT else (k, p) for k, p in container.sections]
    with pytest.raises(cml.ContainerError, match="unknown decoding mode"):
        lae_codec.decode(net, cml.Container(**{**container.__dict__, "sections": bad_mode}))
    wrong_shape = [(k, p[:1] + lae_codec.layout.write_tree((9, 9))) if k == lae_codec.LAYOUT else (k, p) for k, p in container.sections]
    with pytest.raises(cml.ContainerError, match="latent shape"):
        lae_codec.decode(net, cml.Container(**{**container.__dict__, "sections": wrong_shape}))
