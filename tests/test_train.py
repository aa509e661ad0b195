"""End-to-end training runs composed like train.py (tiny images, a few steps on CPU)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import TINY, TINY_MLLAE, compose_train

from compressml.data import load_image
from compressml.loggers import read_wandb_offline_history
from compressml.models import compress, decompress, forward_padded
from compressml.systems import load_lae
from compressml.training import train

pytestmark = pytest.mark.slow


def run(overrides, out_dir: Path):
    return train(compose_train(TINY + overrides, out_dir))


@pytest.mark.parametrize("variant", ["factorized", "hyperprior", "mean_scale"])
def test_smoke_training_writes_a_checkpoint(variant, image_folder, tmp_path):
    summary = run([f"model=lae/{variant}", "data=folder", f"data.root={image_folder}"], tmp_path)
    last = Path(summary["last_checkpoint"])
    assert last.is_file() and last.name == "last.ckpt"
    assert Path(summary["best_checkpoint"]).is_file()
    assert summary["global_step"] == 3
    assert summary["train_images"] + summary["val_images"] == 6
    for key in ("val/loss", "val/psnr", "val/bpp", "val/bpp_real", "val/ms_ssim"):
        assert key in summary["best"], key
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["net"]["arch"] == variant
    assert ckpt["compressml"]["family"] == "lae"


def test_checkpoint_reload_codes_like_the_forward_pass(image_folder, tmp_path):
    summary = run(["model=lae/hyperprior", "data=folder", f"data.root={image_folder}"], tmp_path)
    system = load_lae(summary["last_checkpoint"])  # no update() call: the checkpoint is ready to code
    x = load_image(image_folder / "img3.png")[None, :, :45, :71]  # odd size: 45 x 71
    with torch.no_grad():
        expected = forward_padded(system.net, x)["x_hat"].clamp(0, 1)
    payload = compress(system.net, x)
    decoded = decompress(system.net, payload)
    assert decoded.shape == x.shape
    assert torch.allclose(decoded, expected, atol=1e-4)


def test_fast_cpu_recipe_trains_and_its_checkpoint_codes_and_exports(image_folder, tmp_path):
    """The premade recipes' training options: bf16 mixed precision, straight-through rounding,
    channels-last and cached images. The checkpoint is float32, contiguous, and codes and exports."""
    from compressml.export import export_bundle, load_bundle

    summary = run(
        [
            "model=lae/mean_scale",
            "data=folder",
            f"data.root={image_folder}",
            "data.cache=true",
            "trainer.precision=bf16-mixed",
            "model.quantization=ste",
            "model.channels_last=true",
        ],
        tmp_path,
    )
    assert summary["global_step"] == 3 and "val/bpp_real" in summary["best"]
    state = torch.load(summary["last_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert all(v.is_contiguous() for v in state.values())
    assert all(v.dtype != torch.bfloat16 for v in state.values())
    system = load_lae(summary["last_checkpoint"])
    assert system.hparams.quantization == "ste"
    # loaded models compute in the ordinary memory order, as the exported bundle does
    assert all(p.is_contiguous() for p in system.net.parameters())
    x = load_image(image_folder / "img3.png")[None, :, :45, :71]
    with torch.no_grad():
        expected = forward_padded(system.net.eval(), x)["x_hat"].clamp(0, 1)
    assert torch.allclose(decompress(system.net, compress(system.net, x)), expected, atol=1e-4)
    export_bundle(summary["last_checkpoint"], tmp_path / "bundle", onnx=False, torchscript=False)
    model, _ = load_bundle(tmp_path / "bundle")
    assert torch.allclose(decompress(model, compress(model, x)), expected, atol=1e-4)


@pytest.mark.parametrize("final_save", [True, False])
def test_last_checkpoint_holds_the_last_step(final_save, image_folder, tmp_path, monkeypatch):
    """A run that stops mid-epoch on max_steps keeps its last steps in last.ckpt (Lightning alone
    saves it at the previous validation)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from compressml.callbacks import ModelCheckpoint as OurModelCheckpoint

    if not final_save:  # what Lightning alone does: the check below would fail without the final save
        monkeypatch.setattr(OurModelCheckpoint, "on_train_end", ModelCheckpoint.on_train_end)
    # validation (and checkpointing) every second epoch of 3 steps: at step 6; the run stops at step 7
    summary = run(
        [
            "model=lae/factorized",
            "data=folder",
            f"data.root={image_folder}",
            "trainer.max_epochs=-1",
            "trainer.max_steps=7",
            "trainer.limit_train_batches=3",
            "trainer.check_val_every_n_epoch=2",
        ],
        tmp_path,
    )
    saved = torch.load(summary["last_checkpoint"], map_location="cpu", weights_only=True)["global_step"]
    assert summary["global_step"] == 7
    assert saved == (7 if final_save else 6)


def test_corrupt_images_are_counted_in_the_summary(image_folder, tmp_path):
    (image_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    summary = run(["data=folder", f"data.root={image_folder}"], tmp_path)
    assert summary["skipped_images"] == 1
    assert summary["train_images"] + summary["val_images"] == 6


def test_csv_logs_metrics_and_image_panel(image_folder, tmp_path):
    summary = run(["data=folder", f"data.root={image_folder}"], tmp_path)
    log_dir = Path(summary["log_dirs"][0])
    with open(log_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    for key in ("train/loss_step", "train/bpp_step", "train/aux_loss_step", "val/bpp_real", "val/ms_ssim", "lr-Adam/main"):
        assert key in columns, key
    assert list((log_dir / "images").glob("reconstruction_step*.png"))


def test_wandb_offline_run_holds_metrics_and_resume_continues(image_folder, tmp_path):
    data = ["data=folder", f"data.root={image_folder}"]
    first = run(["logger=wandb", *data], tmp_path / "first")
    run_dir = Path(first["wandb_run_dir"])
    assert run_dir.name.startswith("offline-run-")
    rows = read_wandb_offline_history(str(run_dir))
    keys = {k for row in rows for k in row}
    for key in ("train/loss_step", "train/bpp_step", "val/loss", "val/psnr", "val/bpp_real", "val/aux_loss"):
        assert key in keys, key
    assert any(k.startswith("val/reconstruction") for k in keys)

    resumed = run(
        [
            "logger=csv",
            *data,
            f"ckpt_path={first['last_checkpoint']}",
            "trainer.max_steps=5",
            "trainer.limit_train_batches=10",
            "trainer.max_epochs=3",
        ],
        tmp_path / "second",
    )
    assert resumed["global_step"] == 5
    with open(Path(resumed["log_dirs"][0]) / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]
    assert steps and min(steps) >= 3  # the count went on from the checkpoint's 3 steps


@pytest.mark.parametrize("logger", ["tensorboard", "none"])
def test_other_loggers_and_no_callbacks(logger, image_folder, tmp_path):
    summary = run([f"logger={logger}", "callbacks=none", "data=folder", f"data.root={image_folder}"], tmp_path)
    assert summary["global_step"] == 3
    assert list(tmp_path.rglob("*.ckpt"))  # Lightning's own checkpointing still runs
    if logger == "tensorboard":
        assert list(tmp_path.rglob("events.out.tfevents*"))


def test_no_logger_with_default_callbacks(image_folder, tmp_path):
    summary = run(["logger=none", "data=folder", f"data.root={image_folder}"], tmp_path)
    assert summary["global_step"] == 3 and Path(summary["last_checkpoint"]).is_file()


@pytest.mark.parametrize("model", ["mllae", "mllae/lossless"])
def test_mllae_training_and_files(model, image_folder, tmp_path):
    from compressml.cli import main

    overrides = [o if not o.startswith("model=") else f"model={model}" for o in TINY_MLLAE]
    summary = train(compose_train(overrides + ["data=folder", f"data.root={image_folder}"], tmp_path / "run"))
    best = summary["best"]
    assert best["val/block_bytes_max"] <= 16
    if model.endswith("lossless"):
        assert best["val/exact"] == 1.0 and "val/bpsp_real" in best
    ckpt = summary["last_checkpoint"]
    src = image_folder / "img1.png"
    assert main(["compress", str(src), "-m", ckpt, "-o", str(tmp_path / "a.cml")]) == 0
    assert main(["decompress", str(tmp_path / "a.cml"), "-m", ckpt, "-o", str(tmp_path / "a.png")]) == 0
    if model.endswith("lossless"):
        assert torch.equal(load_image(tmp_path / "a.png"), load_image(src))
