"""evaluate.py: learned and classical codecs through real files, BD-rate, references, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_train, run_cli, save_tiny_checkpoint, smooth_image
from PIL import Image

from compressml import metrics
from compressml.baselines import CODECS, available_codecs
from compressml.codec.files import CodecModel, decompress_file
from compressml.errors import ConfigError, DataError
from compressml.evaluation import (
    EvalImage,
    LearnedModel,
    bd_rates,
    evaluate_from_config,
    learned_models,
    load_reference,
    quality,
    run_evaluation,
)


@pytest.fixture
def images() -> list[EvalImage]:
    return [EvalImage("a.png", smooth_image(48, 72, seed=1)), EvalImage("b.png", smooth_image(70, 50, seed=2))]


# -- classical codecs ---------------------------------------------------------------------


@pytest.mark.parametrize("codec", available_codecs(), ids=lambda c: c.name)
def test_classical_codec_round_trip(codec):
    rgb = smooth_image(96, 128)
    data = codec.encode(rgb, codec.settings[max(len(codec.settings) - 2, 0)])  # a high-quality setting
    out = codec.decode(data, rgb.shape[:2])
    assert out.shape == rgb.shape and out.dtype == np.uint8
    if codec.lossless:
        assert np.array_equal(out, rgb)
    else:
        assert 20 < quality(out, rgb)["psnr"] < 100


def test_higher_quality_costs_more_bytes():
    rgb = smooth_image(64, 64)
    jpeg = CODECS["jpeg-420"]
    sizes = [len(jpeg.encode(rgb, q)) for q in (10, 50, 90)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    # 4:4:4 keeps full-resolution chroma: more bytes than 4:2:0 at the same quality
    assert len(CODECS["jpeg-444"].encode(rgb, 75)) > len(jpeg.encode(rgb, 75))


def test_unknown_codec_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown classical codec"):
        available_codecs(["jpeg-420", "gif"])


# -- BD-rate ------------------------------------------------------------------------------


def test_bd_rate_of_a_scaled_curve_is_the_scale():
    bpp = [0.1, 0.2, 0.4, 0.8, 1.6]
    psnr = [26.0, 28.5, 31.0, 33.2, 35.0]
    assert metrics.bd_rate(bpp, psnr, bpp, psnr) == pytest.approx(0.0, abs=1e-9)
    assert metrics.bd_rate(bpp, psnr, [0.8 * b for b in bpp], psnr) == pytest.approx(-20.0, abs=1e-6)
    assert metrics.bd_rate(bpp, psnr, [1.5 * b for b in bpp], psnr) == pytest.approx(50.0, abs=1e-6)
    # order of the points does not matter
    assert metrics.bd_rate(bpp[::-1], psnr[::-1], [0.8 * b for b in bpp], psnr) == pytest.approx(-20.0, abs=1e-6)


def test_bd_rate_without_overlap_or_points_is_none():
    assert metrics.bd_rate([0.1, 0.2], [20.0, 22.0], [0.5, 1.0], [30.0, 33.0]) is None
    assert metrics.bd_rate([0.1], [20.0], [0.1, 0.2], [20.0, 22.0]) is None


def test_bd_rate_better_curve_is_negative():
    ref = ([0.25, 0.5, 1.0, 2.0], [27.0, 29.0, 31.5, 34.0])
    better = ([0.25, 0.5, 1.0, 2.0], [28.0, 30.0, 32.5, 35.0])  # +1 dB everywhere
    assert metrics.bd_rate(*ref, *better) < -5
    table = bd_rates(
        {"mine": {"bpp": better[0], "psnr": better[1], "ms_ssim": []}}, {"jpeg": {"bpp": ref[0], "psnr": ref[1], "ms_ssim": []}}
    )
    assert table["mine"]["jpeg"]["psnr"] == pytest.approx(metrics.bd_rate(*ref, *better))
    assert "ms_ssim_db" not in table["mine"]["jpeg"]


# -- references ---------------------------------------------------------------------------


def write_reference(path: Path, name: str = "published", bpp=(0.2, 0.5, 1.0), psnr=(28.0, 31.0, 34.0)) -> Path:
    path.write_text(json.dumps({"name": name, "results": {"bpp": list(bpp), "psnr-rgb": list(psnr), "ms-ssim-rgb": [0.93, 0.96, 0.98]}}))
    return path


def test_reference_files_and_folders(tmp_path):
    write_reference(tmp_path / "one.json", "one")
    write_reference(tmp_path / "two.json", "two")
    assert set(load_reference([tmp_path])) == {"ref:one", "ref:two"}
    curves = load_reference([tmp_path / "one.json"])
    assert curves["ref:one"]["bpp"] == [0.2, 0.5, 1.0]


@pytest.mark.parametrize("content", ["not json", '{"results": {}}', '{"results": {"bpp": [1, 2], "psnr-rgb": [30]}}', "[]"])
def test_bad_reference_is_one_line_error(tmp_path, content):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(DataError) as e:
        load_reference([bad])
    assert "\n" not in str(e.value) and "bad.json" in str(e.value)


def test_missing_reference_path(tmp_path):
    with pytest.raises(DataError, match="no such reference"):
        load_reference([tmp_path / "nope.json"])


# -- the whole evaluation -----------------------------------------------------------------


def test_run_evaluation_writes_real_files_and_consistent_results(tmp_path, images, tiny_checkpoint):
    second = save_tiny_checkpoint(tmp_path / "ckpts" / "other.ckpt", seed=1)
    models = [LearnedModel(tiny_checkpoint, "q1", "mine"), LearnedModel(second, "q2", "mine")]
    ref = write_reference(tmp_path / "ref.json")
    out = tmp_path / "eval"
    result = run_evaluation(
        models, images, [CODECS["jpeg-420"], CODECS["png"]], out, settings={"jpeg-420": [20, 60, 90]}, reference=[ref], compare=["jpeg-420"]
    )

    for name in ("results.json", "results.csv", "rd.png", "curves/mine.json", "curves/jpeg-420.json"):
        assert (out / name).is_file(), name
    assert Image.open(out / "rd.png").size[0] > 500
    # bpp counts the whole .cml file, header included; quality is that file decoded
    model = CodecModel.load(tiny_checkpoint)
    for image in images:
        cml = out / "files" / "mine" / "q1" / Path(image.name).with_suffix(".cml").name
        rec = next(r for r in result["records"] if r["codec"] == "mine" and r["setting"] == "q1" and r["image"] == image.name)
        assert rec["bytes"] == cml.stat().st_size
        assert rec["bpp"] == pytest.approx(8 * cml.stat().st_size / image.pixels)
        decoded = tmp_path / "dec" / f"{image.name}"
        decompress_file(model, cml, decoded)
        assert rec["psnr"] == pytest.approx(quality(np.asarray(Image.open(decoded)), image.rgb)["psnr"])
    # averages, curves and the lossless reference point
    rows = {(r["codec"], r["setting"]): r for r in result["averages"]}
    assert rows[("png", 0)]["psnr"] == 100.0 and rows[("png", 0)]["images"] == 2
    assert len(result["curves"]["mine"]["bpp"]) == 2
    assert result["curves"]["jpeg-420"]["bpp"] == sorted(result["curves"]["jpeg-420"]["bpp"])
    assert set(result["bd_rate"]["mine"]) == {"jpeg-420", "ref:published"}  # a one-point curve (png) gets none
    assert [e["nearest"]["jpeg-420"]["setting"] for e in result["nearest"]] == [
        min((r for r in result["averages"] if r["codec"] == "jpeg-420"), key=lambda r: abs(r["bpp"] - e["learned"]["bpp"]))["setting"]
        for e in result["nearest"]
    ]
    # CSV: per-image rows plus a mean row per (codec, setting); JSON reloads
    with open(out / "results.csv") as f:
        rows_csv = list(csv.DictReader(f))
    assert len(rows_csv) == len(result["records"]) + len(result["averages"])
    assert json.loads((out / "results.json").read_text())["learned"] == ["mine"]
    # a curve written here is a valid reference for a later run
    assert load_reference([out / "curves" / "jpeg-420.json"])["ref:jpeg-420"]["bpp"] == result["curves"]["jpeg-420"]["bpp"]


def test_learned_model_names(tmp_path, tiny_checkpoint):
    assert [m.setting for m in learned_models(str(tiny_checkpoint), None)] == ["model"]
    twice = learned_models([str(tiny_checkpoint), str(tiny_checkpoint)], "x")
    assert [m.setting for m in twice] == ["0-model", "1-model"] and {m.curve for m in twice} == {"x"}
    with pytest.raises(DataError, match="no such checkpoint"):
        learned_models([str(tmp_path / "missing.ckpt")], None)


def compose_evaluate(overrides: list[str], out_dir: Path):
    return compose_train(overrides, out_dir, config_name="evaluate")


def test_evaluate_config_on_a_folder(tmp_path, image_folder, tiny_checkpoint):
    cfg = compose_evaluate(
        [
            f"checkpoint={tiny_checkpoint}",
            "data=folder",
            f"data.root={image_folder}",
            "data.split=ratio",
            "data.val_ratio=0.34",
            "codecs=[jpeg-420,webp]",
            "settings.jpeg-420=[30,70]",
            "settings.webp=[50]",
            "max_images=2",
        ],
        tmp_path / "out",
    )
    result = evaluate_from_config(cfg)
    assert len(result["images"]) == 2
    assert result["learned"] == ["compressml-hyperprior"]
    assert {r["codec"] for r in result["averages"]} == {"compressml-hyperprior", "jpeg-420", "webp"}
    assert (tmp_path / "out" / "rd.png").is_file()


def test_evaluate_config_with_refinement(tmp_path, image_folder, tiny_checkpoint):
    cfg = compose_evaluate(
        [
            f"checkpoint={tiny_checkpoint}",
            "data=folder",
            f"data.root={image_folder}",
            "data.split=ratio",
            "data.val_ratio=0.34",
            "codecs=[]",
            "max_images=1",
            "refine=[0,2]",
        ],
        tmp_path / "out",
    )
    result = evaluate_from_config(cfg)
    assert result["learned"] == ["compressml-hyperprior", "compressml-hyperprior+refine2"]
    assert (tmp_path / "out" / "files" / "compressml-hyperprior+refine2").is_dir()


def test_each_model_is_loaded_once_for_all_its_refinements(tmp_path, tiny_checkpoint):
    from compressml.evaluation import with_refinement

    loads = []

    def load(path):
        loads.append(path)
        return CodecModel.load(path)

    image = EvalImage.from_tensor("smooth", torch.from_numpy(smooth_image(64, 64)).permute(2, 0, 1).float() / 255)
    models = with_refinement([LearnedModel(tiny_checkpoint, "tiny")], [0, 1, 2])
    result = run_evaluation(models, [image], [], tmp_path / "out", load_model=load)
    assert loads == [tiny_checkpoint]
    assert len(result["learned"]) == 3


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (["codecs=[gif]"], ConfigError, "unknown classical codec"),
        (["codecs=[]"], ConfigError, "nothing to evaluate"),
        (["codecs=[png]", "settings.webp=[50]"], ConfigError, "not evaluated"),
        (["codecs=[png]", "max_images=0"], ConfigError, "max_images"),
        (["checkpoint=/nonexistent/model.ckpt"], DataError, "no such checkpoint"),
        (["codecs=[png]", "reference=/nonexistent/ref.json"], DataError, "no such reference"),
        (["codecs=[png]", "refine=-3"], ConfigError, "refine must be"),
    ],
)
def test_evaluate_config_errors(tmp_path, image_folder, overrides, error, message):
    cfg = compose_evaluate(["data=folder", f"data.root={image_folder}", *overrides], tmp_path / "out")
    with pytest.raises(error, match=message):
        evaluate_from_config(cfg)
    assert not (tmp_path / "out" / "results.json").exists()


def test_evaluate_samples_holds_out_the_validation_photos(tmp_path):
    cfg = compose_evaluate(["data=samples", "codecs=[jpeg-420]", "settings.jpeg-420=[50]"], tmp_path / "out")
    result = evaluate_from_config(cfg)
    assert [i["name"] for i in result["images"]] == ["coffee", "rocket"]


@pytest.mark.slow
def test_evaluate_entry_point_errors_are_one_line(tmp_path):
    r = run_cli(["evaluate.py", "checkpoint=/nonexistent/model.ckpt", "data=samples", f"hydra.run.dir={tmp_path}/run"])
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no such checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_quality_of_identical_images():
    rgb = smooth_image(30, 30)
    q = quality(rgb, rgb)
    assert q["psnr"] == 100.0 and q["ms_ssim"] == pytest.approx(1.0)
    assert torch.isclose(torch.tensor(q["ms_ssim_db"]), torch.tensor(100.0))


def test_size_matched_jpeg_is_no_larger(tmp_path, images, tiny_checkpoint):
    result = run_evaluation([LearnedModel(tiny_checkpoint, "q1", "mine")], images, [], tmp_path / "eval", matched=[CODECS["jpeg-420"]])
    (row,) = result["matched"]
    ours = [r for r in result["records"] if r["codec"] == "mine"]
    if row["jpeg-420"] is None:  # a tiny untrained model's files can be smaller than any JPEG
        assert all(len(CODECS["jpeg-420"].encode(i.rgb, 1)) > r["bytes"] for i, r in zip(images, ours))
    else:
        for image, r, q in zip(images, ours, row["jpeg-420"]["quality"]):
            assert len(CODECS["jpeg-420"].encode(image.rgb, q)) <= r["bytes"]
            if q < 100:
                assert len(CODECS["jpeg-420"].encode(image.rgb, q + 1)) > r["bytes"]


def test_report_html_holds_the_results_and_every_picture_it_shows(tmp_path, images, tiny_checkpoint):
    from html.parser import HTMLParser

    from compressml.report import crop_box

    second = save_tiny_checkpoint(tmp_path / "ckpts" / "other.ckpt", seed=1)
    models = [LearnedModel(tiny_checkpoint, "q1", "mine"), LearnedModel(second, "q2", "mine")]
    out = tmp_path / "eval"
    result = run_evaluation(
        models,
        images,
        [CODECS["jpeg-420"], CODECS["webp"]],
        out,
        settings={"jpeg-420": [20, 60, 90], "webp": [30, 80]},
        matched=[CODECS["jpeg-420"]],
        report_images=2,
    )

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.images, self.cells, self.headings = [], [], []
            self._in = None

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.images.append(dict(attrs)["src"])
            self._in = tag

        def handle_data(self, data):
            if self._in == "td":
                self.cells.append(data)
            elif self._in in ("h2", "h3"):
                self.headings.append(data)

    page = Page()
    page.feed((out / "report.html").read_text())
    assert page.images and all((out / src).is_file() for src in page.images)  # relative links, all present
    assert "rd.png" in page.images
    crops = [src for src in page.images if src.startswith("report/crop")]
    # per image: the original, the middle learned point, JPEG and WebP at its size (or a note that they cannot be that small)
    assert len({src.split("_")[0] for src in crops}) == 2 and len(crops) >= 4
    for row in result["averages"]:  # the averages table holds every result
        assert f"{row['bpp']:.3f}" in page.cells and f"{row['psnr']:.2f}" in page.cells
    assert any("Crops at the same file size" in h for h in page.headings) and any(h.startswith("a.png") for h in page.headings)
    assert Image.open(out / crops[0]).size == (72, 48)  # the whole image when smaller than the crop
    top, left, h, w = crop_box(np.zeros((300, 400, 3), np.uint8))
    assert (h, w) == (256, 256) and 0 <= top <= 44 and 0 <= left <= 144


def test_a_one_point_curve_is_compared_at_the_same_bpp():
    from compressml.evaluation import points_against_curves

    curves = {"jpeg": {"bpp": [0.25, 1.0], "psnr": [28.0, 32.0]}, "far": {"bpp": [2.0, 3.0], "psnr": [40.0, 42.0]}}
    out = points_against_curves({"mine": {"bpp": [0.5], "psnr": [31.0]}}, curves)
    assert len(out) == 1 and out[0]["against"] == "jpeg"
    assert out[0]["their_psnr"] == pytest.approx(30.0) and out[0]["delta_db"] == pytest.approx(1.0)  # halfway in log bpp
