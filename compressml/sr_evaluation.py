"""Super-resolution evaluation: RED models against bicubic upscaling, with the field's metrics.

Each high-resolution image is cropped to a multiple of the scale, downscaled with the
training kernel (:func:`compressml.models.red.downscale`), upscaled back by bicubic and
by every model, quantised to 8 bits, and scored as BasicSR scores it: PSNR and SSIM on
the BT.601 Y channel with ``crop_border = scale``, plus RGB PSNR. Outputs: a per-image and
mean table, ``results.json`` / ``results.csv``, and ``crops/<image>.png``, a side-by-side
crop (bicubic | each model | ground truth).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from compressml import metrics
from compressml.errors import ConfigError
from compressml.models.red import bicubic_upscale, make_pair

BICUBIC = "bicubic"


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    """Clamp and round to the 8-bit grid (what a saved PNG holds)."""
    return (x.clamp(0, 1) * 255).round() / 255


def sr_scores(sr: torch.Tensor, hr: torch.Tensor, scale: int) -> dict[str, float]:
    """Y-PSNR, Y-SSIM (``crop_border = scale``) and RGB PSNR of one (1, 3, H, W) pair."""
    return {
        "psnr_y": float(metrics.psnr_y(sr, hr, scale)),
        "ssim_y": float(metrics.ssim_y(sr, hr, scale)),
        "psnr_rgb": float(metrics.psnr(metrics.crop_border(sr, scale), metrics.crop_border(hr, scale))),
    }


def _detail_crop(hr: torch.Tensor, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` square with the most high-frequency detail (coarse search)."""
    h, w = hr.shape[-2:]
    size = min(size, h, w)
    grey = hr.mean(1, keepdim=True)
    detail = (grey[..., 1:, :-1] - grey[..., :-1, :-1]).abs() + (grey[..., :-1, 1:] - grey[..., :-1, :-1]).abs()
    step = max(size // 4, 1)
    best, corner = -1.0, (0, 0)
    for top in range(0, max(h - size, 0) + 1, step):
        for left in range(0, max(w - size, 0) + 1, step):
            score = float(detail[..., top : top + size - 1, left : left + size - 1].sum())
            if score > best:
                best, corner = score, (top, left)
    return corner


def save_crops(path: Path, hr: torch.Tensor, outputs: Sequence[torch.Tensor], size: int = 128) -> None:
    """One PNG: the same crop of every output, then of the ground truth, left to right, 4 px apart."""
    from compressml.data.images import save_image

    top, left = _detail_crop(hr, size)
    size = min(size, *hr.shape[-2:])
    pieces = [x[0, :, top : top + size, left : left + size] for x in [*outputs, hr]]
    gap = torch.ones(3, size, 4)
    row = torch.cat([p for piece in pieces for p in (piece, gap)][:-1], -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(row, path)


def evaluate_sr(
    models: Sequence[tuple[str, Callable[[torch.Tensor], torch.Tensor]]],
    images: Sequence[tuple[str, torch.Tensor]],
    scale: int,
    out_dir: Path | None = None,
    crop: int = 128,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Score bicubic and every ``(label, upscale)`` on ``(name, hr (3, H, W))`` images at ``scale``.

    ``upscale`` maps a (1, 3, h, w) low-resolution tensor to (1, 3, h*s, w*s).
    Returns ``{"scale", "methods", "images": [per-image rows], "averages": {method: scores},
    "megapixels_per_s": {label: output megapixels per second}}``; with ``out_dir`` it also writes
    results.json, results.csv and the crops.
    """
    if not images:
        raise ConfigError("no images to evaluate")
    methods = [BICUBIC, *[label for label, _ in models]]
    rows, seconds, pixels = [], {label: 0.0 for label, _ in models}, 0
    for name, image in images:
        if progress:
            progress(name)
        try:
            lr, hr = make_pair(image[None].float(), scale, min_lr=3)
        except ValueError as e:
            raise ConfigError(f"{name}: {e}") from None
        outputs = [to_8bit(bicubic_upscale(lr, scale))]
        for label, upscale in models:
            t0 = time.perf_counter()
            outputs.append(to_8bit(upscale(lr).cpu()))
            seconds[label] += time.perf_counter() - t0
        pixels += hr.shape[-2] * hr.shape[-1]
        for method, sr in zip(methods, outputs):
            rows.append({"image": name, "method": method, **sr_scores(sr, hr, scale)})
        if out_dir is not None:
            save_crops(Path(out_dir) / "crops" / f"{name.replace('/', '_').replace('.', '_')}.png", hr, outputs, crop)
    averages = {
        m: {k: sum(r[k] for r in rows if r["method"] == m) / len(images) for k in ("psnr_y", "ssim_y", "psnr_rgb")} for m in methods
    }
    result = {
        "scale": scale,
        "methods": methods,
        "images": rows,
        "averages": averages,
        "megapixels_per_s": {label: pixels / 1e6 / max(s, 1e-9) for label, s in seconds.items()},
    }
    if out_dir is not None:
        from compressml.report import write_sr_report

        write_sr_results(result, Path(out_dir))
        write_sr_report(result, Path(out_dir))
    return result


def write_sr_results(result: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=1))
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "method", "psnr_y", "ssim_y", "psnr_rgb"])
        writer.writeheader()
        writer.writerows(result["images"])
        writer.writerows({"image": "mean", "method": m, **v} for m, v in result["averages"].items())


def print_sr_report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 100))
    s = result["scale"]
    table = Table(title=f"Super-resolution x{s}: Y-PSNR dB / Y-SSIM (crop_border {s}), RGB PSNR dB", header_style="bold")
    table.add_column("image")
    for m in result["methods"]:
        table.add_column(m, justify="right")
    names = list(dict.fromkeys(r["image"] for r in result["images"]))
    cell = lambda v: f"{v['psnr_y']:.2f} / {v['ssim_y']:.4f} / {v['psnr_rgb']:.2f}"
    for name in names:
        by = {r["method"]: r for r in result["images"] if r["image"] == name}
        table.add_row(name, *[cell(by[m]) for m in result["methods"]])
    table.add_row("mean", *[cell(result["averages"][m]) for m in result["methods"]], style="bold")
    console.print(table)
    base = result["averages"][BICUBIC]["psnr_y"]
    for label, mps in result["megapixels_per_s"].items():
        gain = result["averages"][label]["psnr_y"] - base
        console.print(f"{label}: {gain:+.2f} dB Y-PSNR over bicubic, {mps:.2f} output megapixels/s")
    if result.get("output_dir"):
        console.print(f"results: {result['output_dir']}/results.json, results.csv, report.html, crops/")
