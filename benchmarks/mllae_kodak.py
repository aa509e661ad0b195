"""MLLAE on Kodak: lossless bits per sub-pixel against PNG and WebP-lossless, and MLLAE-N at 1/8 of
the raw size against JPEG at the same file size.

Without checkpoints it first trains both models with compressml's own training on the BSDS500
training photos in ../shared/data/train/bsd200 (never on Kodak), for ``--minutes`` each on
whatever device torch finds; with ``--lossless`` / ``--fixed`` it evaluates given checkpoints.
Evaluation is compressml's own (``compressml.evaluation.run_evaluation``): real files, every
lossless image verified bit-exact.

    .venv/bin/python benchmarks/mllae_kodak.py                      # train 2 x 10 min, evaluate on 24 images
    .venv/bin/python benchmarks/mllae_kodak.py --minutes 3 --images 4
    .venv/bin/python benchmarks/mllae_kodak.py --lossless a.ckpt --fixed b.ckpt
    .venv/bin/python benchmarks/mllae_kodak.py --lossless compressml/premade/mllae-lossless --lossless-only

Prints tables and writes benchmarks/results/mllae_kodak.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench_common import train_timed  # noqa: E402

KODAK = (ROOT / ".." / "shared" / "data" / "kodak").resolve()
TRAIN = (ROOT / ".." / "shared" / "data" / "train" / "bsd200").resolve()
WORK = Path("/tmp/compressml-bench/mllae")

BLOCK = 64
FIXED_BYTES = 3 * BLOCK * BLOCK // 8  # 1/8 of a raw 64x64 RGB block: 1536 bytes, 3 bpp
MODELS = {
    "lossless": [
        "model=mllae/lossless",
        f"model.block={BLOCK}",
        "model.bytes=64",
        "model.channels=32",
        "model.residual_channels=32",
        "model.optimizer.lr=1e-3",
    ],
    "fixed": [
        "model=mllae",
        f"model.block={BLOCK}",
        f"model.bytes={FIXED_BYTES}",
        "model.channels=96",
        "model.quantizer=binary_noise",
        "model.distortion=l1_ssim",
        "model.optimizer.lr=5e-4",
    ],
}


def train(name: str, minutes: float, device: str, crop: int, batch: int) -> Path:
    summary = train_timed(MODELS[name], WORK / f"train-{name}", TRAIN, minutes, device, crop, batch)
    return Path(summary["last_checkpoint"])


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lossless", type=Path, help="a lossless MLLAE checkpoint (default: train one)")
    parser.add_argument("--lossless-only", action="store_true", help="evaluate the lossless model only (no MLLAE-N at 1/8)")
    parser.add_argument("--fixed", type=Path, help="an MLLAE-N checkpoint at 1/8 of raw size (default: train one)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time per model when training")
    parser.add_argument("--crop", type=int, default=None, help="training crop (default: 128 on GPU, 64 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="training batch (default: 16 on GPU, 8 on CPU)")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--kodak", type=Path, default=KODAK)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mllae_kodak.json")
    args = parser.parse_args()

    from compressml.baselines import CODECS
    from compressml.data.images import list_images, load_image
    from compressml.evaluation import EvalImage, LearnedModel, print_report, run_evaluation

    device = "gpu" if torch.cuda.is_available() else "cpu"
    started = time.time()
    checkpoints = {"lossless": args.lossless, **({} if args.lossless_only else {"fixed": args.fixed})}
    trained = {}
    for name, path in checkpoints.items():
        if path is None:
            t0 = time.time()
            crop = args.crop or (128 if device == "gpu" else 64)
            batch = args.batch or (16 if device == "gpu" else 8)
            checkpoints[name] = train(name, args.minutes, device, crop, batch)
            trained[name] = round(time.time() - t0, 1)
    paths = list_images(args.kodak)[: args.images]
    images = [EvalImage.from_tensor(p.name, load_image(p)) for p in paths]
    results = {}
    for name, codecs, matched in (
        ("lossless", [CODECS["png"], CODECS["webp-lossless"]], []),
        ("fixed", [], [CODECS["jpeg-420"]]),
    ):
        if name not in checkpoints:
            continue
        result = run_evaluation(
            [LearnedModel(checkpoints[name], name)],
            images,
            codecs,
            WORK / f"eval-{name}",
            compare=[],
            matched=matched,
            progress=lambda m: print("evaluating", m, flush=True),
        )
        result["output_dir"] = str(WORK / f"eval-{name}")
        print_report(result)
        results[name] = {
            "checkpoint": str(checkpoints[name]),
            "averages": result["averages"],
            "matched": result["matched"],
        }
    summary = {
        "kodak_images": len(images),
        "trained_seconds": trained,
        "device": device,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
        },
        "results": results,
        "seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
