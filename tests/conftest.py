"""Shared fixtures: tiny images made on the fly, and Hydra composition of train.yaml."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
sys.path.insert(0, str(ROOT))

# a tiny, fast configuration for end-to-end runs on CPU
TINY = [
    "trainer=smoke",
    "logger=csv",
    "data.crop_size=64",
    "data.val_crop_size=64",
    "data.batch_size=2",
    "data.num_workers=0",
    "model.net.channels=8",
    "model.net.latent_channels=8",
]
TINY_MLLAE = [t for t in TINY if not t.startswith("model.")] + [
    "model=mllae",
    "model.bytes=16",
    "model.block=16",
    "model.channels=8",
    "model.residual_channels=8",
]


def photo_crop(h: int = 128, w: int = 128):
    """A crop of scikit-image's astronaut photo (the project's embedded sample data), (1, 3, H, W) in [0, 1]."""
    import torch
    from skimage import data

    arr = data.astronaut()[100 : 100 + h, 150 : 150 + w]
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 255


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image with an edge: compressible, unlike noise, so models can learn it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.02, 0.15, 2).tolist() + [rng.uniform(0, 6)]
        img[..., c] = 0.5 + 0.35 * np.sin(fx * xx + fy * yy + ph)
    img[h // 2 :, : w // 3] *= 0.5
    return (img * 255).round().clip(0, 255).astype(np.uint8)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Six small RGB PNGs (two in a nested folder)."""
    root = tmp_path / "images"
    (root / "nested").mkdir(parents=True)
    for i in range(6):
        sub = root / "nested" if i >= 4 else root
        Image.fromarray(smooth_image(72 + 4 * i, 80, seed=i)).save(sub / f"img{i}.png")
    return root


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one thread is fastest, and steadier on a busy machine (``usefixtures``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("COMPRESSML_CACHE", str(tmp_path / "cache"))


def save_system_checkpoint(system, path: Path) -> Path:
    from compressml.systems import save_checkpoint

    return save_checkpoint(system, path)


def save_tiny_checkpoint(path: Path, arch: str = "hyperprior", seed: int = 0) -> Path:
    """A tiny untrained LAE checkpoint saved by a Trainer (CDF tables updated at save)."""
    import torch

    from compressml.systems import LAESystem

    torch.manual_seed(seed)
    system = LAESystem(net={"arch": arch, "channels": 8, "latent_channels": 8}, g={"_target_": "compressml.g.RateDistortion"})
    return save_system_checkpoint(system, path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.ckpt")


def compose_train(overrides: list[str], out_dir: Path, config_name: str = "train"):
    """A config (train.yaml by default) composed like its entry point would, with outputs under ``out_dir``."""
    from compressml.training import compose

    return compose(overrides, out_dir, config_name=config_name, root_dir=ROOT)


def run_cli(args: list[str], cwd: Path = ROOT, timeout: int = 300):
    import subprocess

    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    """A tiny untrained LAE checkpoint (hyperprior, 8 channels)."""
    return tiny_checkpoint


@pytest.fixture
def photo(tmp_path) -> Path:
    """A smooth 71x45 RGB PNG at tmp_path/in/photo.png."""
    from PIL import Image

    path = tmp_path / "in" / "photo.png"
    path.parent.mkdir()
    Image.fromarray(smooth_image(45, 71)).save(path)
    return path


def save_image_kind(path: Path, kind: str, rgb: np.ndarray, rng: np.random.Generator) -> None:
    """``rgb`` (uint8, H x W x 3) saved as a file of one kind: rgb, grey, grey16 (with low bits),
    rgba, grey_alpha (random alpha) or palette (16 colours)."""
    from PIL import Image

    alpha = lambda: rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    if kind == "rgb":
        Image.fromarray(rgb).save(path)
    elif kind == "grey":
        Image.fromarray(rgb[..., 0]).save(path)
    elif kind == "grey16":
        Image.fromarray((rgb[..., 0].astype(np.uint16) * 257 + rng.integers(0, 200, rgb.shape[:2])).astype(np.uint16)).save(path)
    elif kind == "rgba":
        Image.fromarray(np.dstack([rgb, alpha()]), mode="RGBA").save(path)
    elif kind == "grey_alpha":
        Image.fromarray(np.dstack([rgb[..., 1], alpha()]), mode="LA").save(path)
    elif kind == "palette":
        Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16).save(path)
    else:
        raise ValueError(kind)
