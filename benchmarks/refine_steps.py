"""What `compressml compress --refine STEPS` buys per step: the premade LAE models on Kodak images
through real files at several step counts, with the objective each model was trained on
(lambda * 255² * MSE + bpp), bits, PSNR and encoding time.

    .venv/bin/python benchmarks/refine_steps.py                      # lae-q2 and lae-q4, 6 images
    .venv/bin/python benchmarks/refine_steps.py --models lae-q1 lae-q3 --steps 0 50 --images 24

Prints a table and writes benchmarks/results/refine_steps.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS, ROOT, finish, machine_info

KODAK = (ROOT / ".." / "shared" / "data" / "kodak").resolve()


def measure(model, name: str, steps: int, images: list) -> dict:
    import numpy as np
    import torch

    from compressml.codec import container as cml
    from compressml.codec.lae import SourceImage

    codec = model.refined(steps)
    lmbda = model.refined(1).refinement.lmbda  # the model's own
    rows = []
    for x in images:
        started = time.perf_counter()
        data = codec.encode(SourceImage(rgb=x)).to_bytes()
        encode_s = time.perf_counter() - started
        decoded = codec.decode(cml.parse(data)).rgb.mul(255).round().div(255)
        mse = float(torch.mean((decoded - x) ** 2))
        bpp = 8 * len(data) / (x.shape[-1] * x.shape[-2])
        rows.append((bpp, 10 * np.log10(1 / mse), lmbda * 255**2 * mse + bpp, encode_s))
    bpp, psnr, objective, encode_s = np.mean(rows, 0).tolist()
    return {"model": name, "steps": steps, "bpp": bpp, "psnr": psnr, "objective": objective, "encode_s": encode_s}


def print_tables(results: dict) -> None:
    print(f"\n--refine on {results['images']} Kodak image(s), real files")
    print(f"{'model':<8} {'steps':>6} {'bpp':>7} {'PSNR dB':>8} {'lambda*D+R':>11} {'vs 0':>7} {'enc s':>7}")
    base = {}
    for r in results["rows"]:
        base.setdefault(r["model"], r["objective"])
        change = 100 * (r["objective"] / base[r["model"]] - 1)
        print(
            f"{r['model']:<8} {r['steps']:>6} {r['bpp']:7.4f} {r['psnr']:8.2f} {r['objective']:11.4f} {change:+6.1f}% {r['encode_s']:7.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--models", nargs="+", default=["lae-q2", "lae-q4"])
    p.add_argument("--steps", nargs="+", type=int, default=[0, 25, 50, 100])
    p.add_argument("--images", type=int, default=6, help="Kodak images kodim01.. (default 6)")
    p.add_argument("--kodak", type=Path, default=KODAK)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS / "refine_steps.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    from compressml.data.images import list_images, load_image

    paths = list_images(args.kodak)[: args.images]
    if not paths:
        raise SystemExit(f"no images in {args.kodak}")
    images = [load_image(q) for q in paths]
    from compressml import premade
    from compressml.codec.files import CodecModel

    rows = []
    for name in args.models:
        model = CodecModel.load(premade.find(name).bundle)
        for steps in sorted(set(args.steps)):
            rows.append(measure(model, name, steps, images))
            print(f"  {name} --refine {steps}: {rows[-1]['bpp']:.4f} bpp, {rows[-1]['psnr']:.2f} dB", flush=True)
    results = {
        "benchmark": "refine_steps",
        "machine": machine_info(args.threads),
        "images": len(images),
        "image_names": [q.name for q in paths],
        "rows": rows,
    }
    return finish(results, args.out, print_tables, started)


if __name__ == "__main__":
    sys.exit(main())
