"""RED super-resolution on Set5 and Set14: ESPCN, FSRCNN and EDSR (baseline) against bicubic at x2, x3, x4,
beside the published figures.

Without ``--checkpoints`` it first trains every architecture (``--archs``) at every scale
(``--scales``) with compressml's own training (``model=red/<arch> model.scale=<s>``,
``data=folder`` on ../shared/data/train: BSDS500 train + test and T91; never on Set5, Set14 or
Kodak), for ``--minutes`` each, on the GPU when torch finds one, else on the CPU. High-resolution
crops follow EDSR (96 / 144 / 192 for x2 / x3 / x4) on a GPU and are smaller on a CPU (64 / 96 / 128),
batch 16; each architecture's own learning rate (conf/model/red/*.yaml) unless ``--lr``, no
scheduler. Checkpoints: /tmp/compressml-bench/red/<arch>-x<s>/ (the run) and
/tmp/compressml-bench/red/<arch>-x<s>.ckpt (a copy of its last checkpoint, for ``--checkpoints``).

Evaluation is compressml's (``compressml.sr_evaluation.evaluate_sr``, models loaded with
``compressml.upscale.Upscaler``): each HR image is cropped to a multiple of the scale, downscaled
with the training kernel (antialiased bicubic), upscaled by bicubic and by each model, and scored
on the BT.601 Y channel with crop_border = scale (PSNR, SSIM). It runs on the CPU, so the
throughput column (output megapixels/s over the evaluation images, default tile, torch's thread
count) is CPU throughput wherever the models were trained.

    .venv/bin/python benchmarks/red_sr.py                                   # 3 archs x 3 scales x 3 min
    .venv/bin/python benchmarks/red_sr.py --archs espcn --scales 2 --minutes 0.2 --out /tmp/red.json
    .venv/bin/python benchmarks/red_sr.py --checkpoints /tmp/compressml-bench/red    # evaluate only
    .venv/bin/python benchmarks/red_sr.py --premade --out benchmarks/results/red_premade.json   # the shipped red-x2/x4

Prints one table per dataset and writes benchmarks/results/red_sr.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from bench_common import RESULTS, ROOT, finish, machine_info, train_timed

DATA = (ROOT / ".." / "shared" / "data").resolve()
TRAIN = DATA / "train"
DATASETS = {"set5": DATA / "set5" / "HR", "set14": DATA / "set14" / "HR"}
WORK = Path("/tmp/compressml-bench/red")
ARCHS = ("espcn", "fsrcnn", "edsr")
SCALES = (2, 3, 4)
CROPS = {"gpu": {2: 96, 3: 144, 4: 192}, "cpu": {2: 64, 3: 96, 4: 128}}  # HR pixels; EDSR's 48 LR pixels on GPU
VAL_CROP = 128
# Y-PSNR dB, from ../shared/data/README.md: bicubic, FSRCNN (Dong et al. 2016), EDSR-baseline (Lim et al. 2017)
PUBLISHED = {
    "set5": {"bicubic": {"x2": 33.66, "x3": 30.39, "x4": 28.42}, "fsrcnn": {"x2": 37.00}, "edsr": {"x2": 37.98, "x3": 34.37, "x4": 32.09}},
    "set14": {"bicubic": {"x2": 30.24, "x3": 27.55, "x4": 26.00}, "fsrcnn": {"x2": 32.63}, "edsr": {"x2": 33.57, "x3": 30.28, "x4": 28.58}},
}
PUBLISHED_NOTE = (
    "Y-PSNR dB, crop_border = scale, LR made with MATLAB imresize (bicubic); FSRCNN and EDSR-baseline "
    "as published (trained on T91+General100 / DIV2K for days); ESPCN: none on this protocol"
)


def per_scale(values: list[int] | None, default: dict[int, int], scales: list[int], what: str) -> dict[int, int]:
    """``--crop`` / ``--batch``: none (the defaults), one value for every scale, or one per scale."""
    if not values:
        return {s: default[s] for s in scales}
    if len(values) == 1:
        return {s: values[0] for s in scales}
    if len(values) != len(scales):
        raise SystemExit(f"--{what} wants one value or one per scale ({len(scales)}), got {len(values)}")
    return dict(zip(scales, values))


def train_model(arch: str, scale: int, args, device: str, crop: int, batch: int, workers: int) -> dict:
    """Train one RED for ``args.minutes``; its last checkpoint is copied to WORK/<arch>-x<s>.ckpt."""
    name = f"{arch}-x{scale}"
    out_dir = WORK / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model = [f"model=red/{arch}", f"model.scale={scale}"] + ([f"model.optimizer.lr={args.lr}"] if args.lr else [])
    # min_epochs=0: stop at max_time even inside the first (long) epoch; Lightning validates and saves then
    extra = [f"seed={args.seed}", "trainer.min_epochs=0", f"data.num_workers={workers}"]
    print(f"training {name} for {args.minutes} min on {device} (crop {crop}, batch {batch})", flush=True)
    t0 = time.perf_counter()
    summary = train_timed(
        model, out_dir, args.train_root, args.minutes, device, crop, batch, repeat=args.repeat, val_crop=VAL_CROP, extra=extra
    )
    seconds = time.perf_counter() - t0
    last = summary["last_checkpoint"]
    if not last or not Path(last).is_file():
        raise RuntimeError(f"training {name} left no checkpoint")
    dest = WORK / f"{name}.ckpt"
    shutil.copyfile(last, dest)
    return {
        "checkpoint": str(dest),
        "training_seconds": round(seconds, 1),
        "data": {
            "root": str(args.train_root),
            "split": "ratio 0.05",
            "crop": crop,
            "batch": batch,
            "repeat": args.repeat,
            "val_crop": VAL_CROP,
            "train_images": summary["train_images"],
            "val_images": summary["val_images"],
            "skipped_images": summary["skipped_images"],
        },
    }


def describe_checkpoint(path: Path, arch: str, scale: int) -> dict:
    from compressml.systems.loading import read_checkpoint

    if path.is_dir():  # an export bundle (the premade models): its manifest keeps the hyper-parameters
        from compressml.codec.bundle import read_manifest

        ckpt = {"hyper_parameters": read_manifest(path)[1].get("hyper_parameters") or {}}
    else:
        ckpt = read_checkpoint(path)
    hp = ckpt.get("hyper_parameters") or {}
    if hp.get("family") != "red" or hp.get("arch") != arch or hp.get("scale") != scale:
        raise SystemExit(f"{path}: a {hp.get('family')} {hp.get('arch')} x{hp.get('scale')} checkpoint, not red {arch} x{scale}")
    return {
        "steps": ckpt.get("global_step"),
        "epochs": ckpt.get("epoch"),
        "lr": (hp.get("optimizer") or {}).get("lr"),
        "global_skip": hp.get("global_skip"),
        "loss": hp.get("loss"),
    }


def print_tables(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    scales = results["settings"]["scales"]
    console = Console(width=max(Console().width, 160))
    for ds, info in results["datasets"].items():
        table = Table(title=f"{ds} ({info['images']} images)", header_style="bold")
        table.add_column("method")
        for s in scales:
            table.add_column(f"x{s} ours", justify="right")
            table.add_column(f"x{s} pub", justify="right")
            table.add_column(f"x{s} MP/s", justify="right")
        published = PUBLISHED.get(ds, {})
        pub = lambda method, s: f"{published[method][f'x{s}']:.2f}" if f"x{s}" in published.get(method, {}) else "-"
        cell = lambda a: f"{a['psnr_y']:.2f} / {a['ssim_y']:.4f}"
        row = ["bicubic"]
        for s in scales:
            row += [cell(info["bicubic"][f"x{s}"]), pub("bicubic", s), "-"]
        table.add_row(*row)
        for arch in results["settings"]["archs"]:
            row = [arch]
            for s in scales:
                r = results["models"][f"{arch}-x{s}"]["results"][ds]
                row += [cell(r["averages"]), pub(arch, s), f"{r['megapixels_per_s']:.2f}"]
            table.add_row(*row)
        console.print(table)
    print(
        f"ours: Y-PSNR dB / Y-SSIM (crop_border = scale); pub: published Y-PSNR dB; MP/s: output megapixels/s on the CPU, "
        f"{results['machine']['torch_threads']} threads, tile {results['settings']['tile']}"
    )
    print(
        "training per model: "
        + ", ".join(
            f"{name} {m['steps']} steps" + (f" in {m['training_seconds']:.0f} s" if m["training_seconds"] is not None else " (given)")
            for name, m in results["models"].items()
        )
    )
    trained = any(m["training_seconds"] is not None for m in results["models"].values())
    print(
        f"published: {PUBLISHED_NOTE}; ours: LR from compressml's antialiased bicubic (torch), models "
        + (f"trained {results['settings']['minutes']} min each on {results['device']}" if trained else "from given checkpoints")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--scales", nargs="+", type=int, default=list(SCALES), choices=SCALES)
    p.add_argument("--minutes", type=float, default=3.0, help="training time per model (default: 3)")
    p.add_argument(
        "--crop",
        nargs="+",
        type=int,
        help="HR training crop: one for every scale or one per scale (default: 96 144 192 on GPU, 64 96 128 on CPU)",
    )
    p.add_argument("--batch", nargs="+", type=int, help="training batch: one or one per scale (default: 16)")
    p.add_argument("--lr", type=float, help="learning rate for every model (default: the config's, espcn/fsrcnn 1e-3, edsr 1e-4)")
    p.add_argument(
        "--repeat",
        type=int,
        default=50,
        help="data.repeat: passes over the training images per epoch, so that validation (once per epoch) is rare (default: 50)",
    )
    p.add_argument("--workers", type=int, help="data loader workers (default: 2 on CPU, up to 8 on GPU)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--premade", action="store_true", help="evaluate the premade red-x2 / red-x4 bundles (small EDSR) instead of training")
    p.add_argument(
        "--checkpoints",
        type=Path,
        metavar="DIR",
        help="use DIR/<arch>-x<s>.ckpt where present (no training); models missing there are trained",
    )
    p.add_argument("--train-root", type=Path, default=TRAIN, help=f"training images (default: {TRAIN})")
    p.add_argument("--set5", type=Path, default=DATASETS["set5"])
    p.add_argument("--set14", type=Path, default=DATASETS["set14"])
    p.add_argument("--out", type=Path, default=RESULTS / "red_sr.json")
    args = p.parse_args(argv)
    if args.premade:  # the shipped models: a small EDSR at x2 and x4 (the first ones, FSRCNN, ship as red-x*-v1)
        args.archs, args.scales = ["edsr"], [2, 4]
    scales = sorted(set(args.scales))
    archs = [a for a in ARCHS if a in args.archs]

    import torch

    from compressml.codec.upscale import DEFAULT_TILE, Upscaler
    from compressml.data.images import list_images, load_image
    from compressml.sr_evaluation import BICUBIC, evaluate_sr

    device = "gpu" if torch.cuda.is_available() else "cpu"
    crops = per_scale(args.crop, CROPS[device], scales, "crop")
    batches = per_scale(args.batch, {s: 16 for s in scales}, scales, "batch")
    workers = args.workers if args.workers is not None else (2 if device == "cpu" else min(8, os.cpu_count() or 2))
    started = time.perf_counter()
    results = {
        "benchmark": "red_sr",
        "machine": machine_info(torch.get_num_threads()),
        "device": device,
        "evaluation_device": "cpu",
        "settings": {
            "archs": archs,
            "scales": scales,
            "minutes": args.minutes,
            "lr": args.lr or "config",
            "seed": args.seed,
            "train_root": str(args.train_root),
            "tile": DEFAULT_TILE,
            "checkpoints": str(args.checkpoints or WORK),
            "metrics": "compressml.sr_evaluation.evaluate_sr: Y (BT.601) PSNR and SSIM, crop_border = scale, "
            "8-bit outputs; LR = compressml.models.red.downscale (antialiased bicubic)",
        },
        "datasets": {},
        "models": {},
        "published": PUBLISHED,
        "published_note": PUBLISHED_NOTE,
    }
    WORK.mkdir(parents=True, exist_ok=True)
    for scale in scales:
        for arch in archs:
            name = f"{arch}-x{scale}"
            given = args.checkpoints / f"{name}.ckpt" if args.checkpoints else None
            if args.premade:
                given = ROOT / "compressml" / "premade" / f"red-x{scale}"
            if given is not None and given.exists():
                entry = {"checkpoint": str(given), "training_seconds": None, "data": None}
            else:
                if given is not None:
                    print(f"no {given}: training {name}", flush=True)
                entry = train_model(arch, scale, args, device, crops[scale], batches[scale], workers)
            results["models"][name] = {
                "arch": arch,
                "scale": scale,
                **entry,
                **describe_checkpoint(Path(entry["checkpoint"]), arch, scale),
                "results": {},
            }

    for ds, root in (("set5", args.set5), ("set14", args.set14)):
        images = [(path.name, load_image(path)) for path in list_images(root)]
        info = results["datasets"][ds] = {"root": str(root), "images": len(images), "bicubic": {}}
        for scale in scales:
            models = []
            for arch in archs:
                upscaler = Upscaler.load(results["models"][f"{arch}-x{scale}"]["checkpoint"])
                upscaler(torch.zeros(1, 3, 32, 32))  # warm-up outside the timing
                models.append((arch, upscaler))
            print(f"evaluating {ds} x{scale}: bicubic, {', '.join(archs)}", flush=True)
            result = evaluate_sr(models, images, scale, WORK / f"eval-{ds}-x{scale}")
            base = result["averages"][BICUBIC]
            info["bicubic"][f"x{scale}"] = base
            for arch in archs:
                averages = result["averages"][arch]
                results["models"][f"{arch}-x{scale}"]["results"][ds] = {
                    "averages": averages,
                    "megapixels_per_s": result["megapixels_per_s"][arch],
                    "psnr_y_gain_over_bicubic_db": averages["psnr_y"] - base["psnr_y"],
                    "output_dir": str(WORK / f"eval-{ds}-x{scale}"),
                }
    return finish(results, args.out, print_tables, started)


if __name__ == "__main__":
    sys.exit(main())
