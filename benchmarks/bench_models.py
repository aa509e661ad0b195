"""Checkpoints for the benchmarks: short compressml trainings with realistic bitrates, cached under /tmp.

rANS time grows with the bitrate, so speed figures from random weights would say
little. ``train_checkpoint`` runs compressml's own training (``compressml.training.train``
on a config composed from ``conf/`` like ``train.py`` does: ``experiment=demo``, one
``model=lae/<variant>``, no logger) for a few epochs on the demo's scikit-image photos
(or, with ``--bsd200``, the BSDS500 training photos; never on Kodak), and keeps the last
checkpoint as ``/tmp/compressml-bench/<variant>-<size>.ckpt``.

Run on its own to prepare checkpoints ahead of the benchmark scripts::

    .venv/bin/python benchmarks/bench_models.py                       # the three variants, demo size
    .venv/bin/python benchmarks/bench_models.py --variants mean_scale --size default --epochs 4
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path("/tmp/compressml-bench")
TRAIN_DATA = (ROOT / ".." / "shared" / "data" / "train" / "bsd200").resolve()
VARIANTS = ("factorized", "hyperprior", "mean_scale")
# name -> (channels N, latent_channels M): conf/experiment/demo.yaml and conf/model/lae/*.yaml
SIZES = {"demo": (64, 96), "default": (128, 192)}


def checkpoint_path(variant: str, size: str) -> Path:
    return CACHE / f"{variant}-{size}.ckpt"


def train_overrides(variant: str, size: str, epochs: int, lmbda: float, bsd200: bool = False) -> list[str]:
    channels, latent = SIZES[size]
    overrides = [
        "experiment=demo",
        f"model=lae/{variant}",
        f"model.net.channels={channels}",
        f"model.net.latent_channels={latent}",
        "model.log_images=0",
        "logger=none",
        f"trainer.max_epochs={epochs}",
        f"g.lmbda={lmbda}",
        "seed=0",
        "callbacks.progress_bar.refresh_rate=25",
    ]
    if bsd200:  # 200 BSDS500 photos read from disk each step (slower) instead of the demo's 7 photos
        overrides += ["data=folder", f"data.root={TRAIN_DATA}", "data.num_workers=0", "data.repeat=4"]
    return overrides


def train_checkpoint(
    variant: str, size: str = "demo", epochs: int = 10, lmbda: float = 0.013, bsd200: bool = False, dest: Path | None = None
) -> Path:
    """Train ``variant`` briefly with compressml's own training; returns the saved checkpoint."""
    from compressml.training import train

    dest = dest or checkpoint_path(variant, size)
    out_dir = CACHE / f"train-{variant}-{size}"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    from compressml.training import compose

    cfg = compose(train_overrides(variant, size, epochs, lmbda, bsd200), out_dir, root_dir=ROOT)
    started = time.perf_counter()
    summary = train(cfg)
    last = summary["last_checkpoint"]
    if not last or not Path(last).is_file():
        raise RuntimeError(f"training {variant} left no checkpoint")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(last, dest)
    print(f"{variant}/{size}: {summary['global_step']} steps in {time.perf_counter() - started:.0f} s -> {dest}", file=sys.stderr)
    return dest


def random_checkpoint(variant: str, size: str, dest: Path, seed: int = 0) -> Path:
    """A random-init checkpoint (CDF tables updated at save), as tests/test_codec.py makes one."""
    import torch

    from compressml.systems import LAESystem, save_checkpoint

    torch.manual_seed(seed)
    channels, latent = SIZES[size]
    system = LAESystem(
        net={"arch": variant, "channels": channels, "latent_channels": latent},
        g={"_target_": "compressml.g.RateDistortion"},
    )
    return save_checkpoint(system, dest)


def ensure_checkpoint(variant: str, size: str = "demo", epochs: int = 10) -> Path:
    """The cached trained checkpoint, training it first when missing."""
    path = checkpoint_path(variant, size)
    if path.is_file():
        return path
    print(f"no checkpoint at {path}: training {variant} ({size} size, {epochs} epochs) first", file=sys.stderr)
    return train_checkpoint(variant, size, epochs)


def parse_checkpoint_options(items: list[str]) -> dict[str, Path]:
    """``VARIANT=PATH`` options (a checkpoint or an export bundle) -> {variant: path}."""
    out = {}
    for item in items:
        variant, sep, path = item.partition("=")
        if not sep or variant not in VARIANTS:
            raise SystemExit(f"--checkpoint wants VARIANT=PATH with VARIANT one of {', '.join(VARIANTS)}, got {item!r}")
        if not Path(path).exists():
            raise SystemExit(f"--checkpoint {item}: no such checkpoint or bundle")
        out[variant] = Path(path)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--size", default="demo", choices=SIZES)
    p.add_argument("--epochs", type=int, default=10, help="epochs of the demo data (28 steps each)")
    p.add_argument("--lmbda", type=float, default=0.013)
    p.add_argument("--bsd200", action="store_true", help="train on ../shared/data/train/bsd200 instead of the demo photos")
    args = p.parse_args()
    for variant in args.variants:
        train_checkpoint(variant, args.size, args.epochs, args.lmbda, args.bsd200)


if __name__ == "__main__":
    main()
