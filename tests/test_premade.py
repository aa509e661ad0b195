"""The premade models shipped in the package: registry, bundles, size, recipes, and the CLI that
uses them with no download (compress/decompress defaults, -q, -m NAME, compressml models)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF, compose_train, save_tiny_checkpoint, smooth_image
from PIL import Image

from compressml import premade
from compressml.cli import main as cli
from compressml.codec.bundle import load_bundle

SIZE_LIMIT = 50 * 1000 * 1000
EVALUATION_SETS = ("kodak", "set5", "set14")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_registry_lists_every_family_within_the_size_limit():
    models = premade.premade_models()
    names = {m.name for m in models}
    assert {"lae-vr", "lae-q1", "lae-q2", "lae-q3", "lae-q4", "mllae-lossless", "red-x2", "red-x4"} <= names
    assert [m.quality for m in premade.lae_family()] == [1, 2, 3, 4]
    default = premade.default_lae()
    assert default.name == "lae-vr" and default.variable_rate and [m.name for m in models if m.default] == ["lae-vr"]
    total = sum(p.stat().st_size for m in models for p in m.bundle.iterdir())
    assert total <= SIZE_LIMIT
    entries = json.loads(premade.REGISTRY.read_text())["models"]
    assert len(entries) == len(models)  # every listed bundle is in the package


@pytest.mark.parametrize("name", ["lae-vr", "lae-q1", "lae-q4", "mllae-lossless", "red-x2", "red-x4"])
def test_bundles_load_as_float16_with_their_registered_fingerprint(name):
    m = premade.find(name)
    net, manifest = load_bundle(m.bundle)  # checks SHA-256 of the files and the fingerprint
    assert manifest["dtype"] == "float16" and manifest["fingerprint"] == m.fingerprint
    assert manifest["family"] == m.family
    assert all(p.dtype != torch.float16 for p in net.parameters())  # computes in float32


@pytest.mark.parametrize("name", ["lae-vr", "lae-q1", "lae-q2", "lae-q3", "lae-q4", "mllae-lossless", "red-x2", "red-x4"])
def test_each_model_records_its_recipe_training_and_figures(name, tmp_path):
    m = premade.find(name)
    for key in ("data", "steps", "wall_time_s", "device"):
        assert m.training.get(key), key
    assert m.measured.get("summary")
    assert m.recipe.startswith("python train.py experiment=premade/")
    # every run of the recipe (a model may continue an earlier run of its own)
    for experiment in re.findall(r"experiment=([\w/]+)", m.recipe):
        assert (CONF / "experiment" / f"{experiment}.yaml").is_file()
        cfg = compose_train([f"experiment={experiment}"], tmp_path)
        assert "train" in str(cfg.data.root)
        assert not any(s in str(cfg.data.root).lower() for s in EVALUATION_SETS)  # never the evaluation images
    runs = m.training.get("runs")
    if runs:  # steps and wall time are the sums over the runs
        assert m.training["steps"] == sum(r["steps"] for r in runs) and len(runs) == m.recipe.count("experiment=")


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(smooth_image(70, 90, seed=4)).save(path)
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-10)))


def test_compress_uses_the_default_variable_rate_model(photo, tmp_path, capsys):
    assert cli(["compress", str(photo)]) == 0
    assert "premade lae-vr (-q 75)" in capsys.readouterr().out
    cml = photo.with_suffix(".cml")
    assert cml.is_file()
    out = tmp_path / "back.png"
    assert cli(["decompress", str(cml), "-o", str(out)]) == 0  # the model is found from the file
    original, decoded = np.asarray(Image.open(photo)), np.asarray(Image.open(out))
    assert decoded.shape == original.shape
    assert psnr(decoded, original) > 25


def test_quality_picks_the_rate(photo, tmp_path):
    sizes, quality = [], []
    for q in (5, 50, 95):
        out, back = tmp_path / f"q{q}.cml", tmp_path / f"q{q}.png"
        assert cli(["compress", str(photo), "-q", str(q), "-o", str(out)]) == 0
        assert cli(["decompress", str(out), "-o", str(back)]) == 0
        sizes.append(out.stat().st_size)
        quality.append(psnr(np.asarray(Image.open(back)), np.asarray(Image.open(photo))))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert quality == sorted(quality)


def test_rate_control_and_roi_on_the_default_model(photo, tmp_path, capsys):
    out = tmp_path / "fit.cml"
    big = tmp_path / "big.cml"
    assert cli(["compress", str(photo), "-q", "100", "-o", str(big)]) == 0
    limit = big.stat().st_size // 2
    assert cli(["compress", str(photo), "--max-bytes", str(limit), "-o", str(out)]) == 0
    assert "premade lae-vr (rate control: --max-bytes" in capsys.readouterr().out
    assert out.stat().st_size <= limit
    mask = tmp_path / "mask.png"
    m = np.zeros((70, 90), np.uint8)
    m[20:50, 30:60] = 255
    Image.fromarray(m).save(mask)
    assert cli(["compress", str(photo), "--roi", str(mask), "-q", "20", "-o", str(tmp_path / "roi.cml")]) == 0


def test_the_fixed_rate_family_stays_available_by_name(photo, tmp_path):
    sizes = []
    for q in (1, 4):
        out = tmp_path / f"q{q}.cml"
        assert cli(["compress", str(photo), "-m", f"lae-q{q}", "-o", str(out)]) == 0
        assert cli(["decompress", str(out), "-o", str(tmp_path / f"q{q}.png")]) == 0  # found by fingerprint
        sizes.append(out.stat().st_size)
    assert sizes[0] < sizes[1]


def test_bad_quality_and_foreign_files_are_one_line_errors(photo, tmp_path, capsys):
    assert cli(["compress", str(photo), "-q", "150", "-o", str(tmp_path / "x.cml")]) == 2
    assert "-q must be a quality from 0 to 100" in capsys.readouterr().err
    assert not (tmp_path / "x.cml").exists()
    ckpt = save_tiny_checkpoint(tmp_path / "mine.ckpt")
    assert cli(["compress", str(photo), "-m", str(ckpt), "-o", str(tmp_path / "mine.cml")]) == 0
    capsys.readouterr()
    assert cli(["decompress", str(tmp_path / "mine.cml"), "-o", str(tmp_path / "mine.png")]) == 2
    err = capsys.readouterr().err
    assert "not a premade model's: give the model with -m" in err and len(err.strip().splitlines()) == 1
    for command, target in (("compress", str(photo)), ("decompress", str(tmp_path / "mine.cml"))):
        assert cli([command, target, "--base", "webp", "-o", str(tmp_path / "never")]) == 2
        assert "--base needs -m" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_premade_names_work_with_m(photo, tmp_path):
    cml, back = tmp_path / "l.cml", tmp_path / "l.png"
    assert cli(["compress", str(photo), "-m", "mllae-lossless", "-o", str(cml)]) == 0
    assert cli(["decompress", str(cml), "-m", "mllae-lossless", "-o", str(back)]) == 0
    assert np.array_equal(np.asarray(Image.open(back)), np.asarray(Image.open(photo)))  # bit-exact
    up = tmp_path / "up.png"
    assert cli(["upscale", str(photo), "-m", "red-x2", "-o", str(up)]) == 0
    assert Image.open(up).size == (180, 140)


def test_models_command_lists_them(capsys):
    assert cli(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("lae-vr", "lae-q1", "lae-q4", "mllae-lossless", "red-x2", "red-x4"):
        assert name in out
    assert "compress uses lae-vr by default" in out


def test_folders_recursive_with_a_summary_failures_reported_and_the_batch_going_on(tmp_path, capsys):
    from compressml.cli import main

    rng = np.random.default_rng(1)
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    for rel in ("a.png", "sub/b.png", "sub/c.jpg"):
        low = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
        Image.fromarray(low).resize((48, 32), Image.Resampling.BICUBIC).save(src / rel)
    (src / "sub" / "broken.png").write_bytes(b"not an image")
    code = main(["compress", str(src), "-o", str(tmp_path / "cml"), "-q", "1"])
    captured = capsys.readouterr()
    assert code == 1  # one file failed; the others were written
    assert sorted(p.relative_to(tmp_path / "cml").as_posix() for p in (tmp_path / "cml").rglob("*.cml")) == [
        "a.cml",
        "sub/b.cml",
        "sub/c.cml",
    ]
    assert "broken.png" in captured.err and captured.err.count("\n") == 2  # one line for the file, one for the count
    assert "3 of 4 file(s)" in captured.out and "ratio" in captured.out and "mean bpp" in captured.out
    assert not (tmp_path / "cml" / "sub" / "broken.cml").exists()
    code = main(["decompress", str(tmp_path / "cml"), "-o", str(tmp_path / "out"), "--format", "bmp", "--originals", str(src)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")) == [
        "a.bmp",
        "sub",
        "sub/b.bmp",
        "sub/c.bmp",
    ]
    assert "mean PSNR dB" in captured.out and " dB" in captured.out.splitlines()[0]
    # a single bad file keeps the one-line error and its exit status
    assert main(["compress", str(src / "sub" / "broken.png"), "-o", str(tmp_path / "x.cml")]) == 2
    assert not (tmp_path / "x.cml").exists()
    assert main(["upscale", str(src / "a.png"), "-o", str(tmp_path / "a2.png")]) == 0
    assert Image.open(tmp_path / "a2.png").size == (96, 64)


def test_batch_refusals_and_names(tmp_path, capsys):
    from compressml.cli import main

    rng = np.random.default_rng(2)
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "a.jpg", "b.v2.png"):
        Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(src / name)
    # a.png and a.jpg would both become a.cml: refused before anything is written
    assert main(["compress", str(src), "-o", str(tmp_path / "out"), "-q", "1"]) == 2
    assert "would both be written" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(["compress", str(src / "a.png"), "-q", "nan"]) == 2
    assert "finite" in capsys.readouterr().err
    assert main(["compress", str(src / "a.png"), "-q", "2", "--max-bytes", "5000"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["upscale", str(src / "a.png"), "-m", "red-x2", "--scale", "4", "-o", str(tmp_path / "u.png")]) == 2
    assert "not x4" in capsys.readouterr().err
    # an original found for a dotted name (b.v2.cml -> b.v2.png)
    assert main(["compress", str(src / "b.v2.png"), "-o", str(tmp_path / "c" / "b.v2.cml"), "-q", "1"]) == 0
    capsys.readouterr()
    assert main(["decompress", str(tmp_path / "c"), "-o", str(tmp_path / "d"), "--originals", str(src)]) == 0
    assert " dB" in capsys.readouterr().out
