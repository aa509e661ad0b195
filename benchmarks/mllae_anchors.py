"""MLLAE against its classical anchors on Kodak: near-lossless and lossless, fixed-size codes, random access.

1. **Near-lossless** (``--max-error D``): a lossless-mode MLLAE (default: the premade mllae-lossless)
   at D = 0, 1, 2, 4, against JPEG-LS at the same D (NEAR), and at D = 0 against PNG, WebP-lossless
   and JPEG XL lossless: bits per sub-pixel, the largest error seen, PSNR, encode and decode seconds
   per image. Targets (issue 22): lossless at most 3.19 bpsp (WebP-lossless); fewer bits than
   JPEG-LS at D = 1, 2, 4.
2. **Fixed-size codes**: MLLAE-N models (``--fixed``) against the GPU texture codecs, whose every block
   has the same size too: ASTC 4x4 / 6x6 / 8x8 / 12x12 (8, 3.56, 2, 0.89 bpp), BC7 (8) and ETC2 (4).
   Each MLLAE-N point is compared with ASTC's PSNR at the same bpp (interpolated in log bpp), and
   its largest block payload with N. Target: higher PSNR than ASTC at 2 and at 0.89 bpp.
3. **Random access**: decoding a 64x64 and a 256x256 region of an MLLAE-N file against the whole
   image (seconds, and that the region's pixels are those of the whole decode).

Every learned point is a real ``.cml`` file decoded again (``compressml.evaluation.run_evaluation``);
the anchors come from the ``anchors`` extra (imagecodecs, astc-encoder-py, etcpak, texture2ddecoder).

    .venv/bin/python benchmarks/mllae_anchors.py                          # 24 Kodak images, premade models
    .venv/bin/python benchmarks/mllae_anchors.py --images 4 --fixed path/to/mllae-n.ckpt

Prints tables and writes benchmarks/results/mllae_anchors.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS, ROOT, finish, machine_info

KODAK = (ROOT / ".." / "shared" / "data" / "kodak").resolve()
WORK = Path("/tmp/compressml-bench/mllae-anchors")
BOUNDS = (0, 1, 2, 4)
LOSSLESS = ("png", "webp-lossless", "jpeg-xl-lossless")
TEXTURES = ("astc", "bc7", "etc2")


def images(count: int):
    from compressml.data.images import list_images, load_image
    from compressml.evaluation import EvalImage

    return [EvalImage.from_tensor(p.name, load_image(p)) for p in list_images(KODAK)[:count]]


def near_lossless(model: Path, imgs) -> dict:
    from compressml.baselines import available_codecs
    from compressml.evaluation import LearnedModel, run_evaluation

    codecs = available_codecs(["jpeg-ls", *LOSSLESS], note=print)
    result = run_evaluation(
        [LearnedModel(model, "mllae", "mllae", max_errors=BOUNDS)],
        imgs,
        codecs,
        WORK / "near",
        settings={"jpeg-ls": list(BOUNDS)},
        compare=[],
        progress=lambda m: print("evaluating", m, flush=True),
    )
    keep = ("codec", "setting", "bpsp", "bpp", "psnr", "max_abs_error", "exact", "images", "encode_s", "decode_s")
    return {"model": str(model), "averages": [{k: r[k] for k in keep} for r in result["averages"]]}


def fixed_size(models: list[Path], imgs) -> dict:
    from compressml.baselines import available_codecs
    from compressml.evaluation import LearnedModel, run_evaluation

    codecs = available_codecs(list(TEXTURES), note=print)
    result = run_evaluation(
        [LearnedModel(p, p.name, "mllae-n") for p in models],
        imgs,
        codecs,
        WORK / "fixed",
        compare=[],
        progress=lambda m: print("evaluating", m, flush=True),
    )
    keep = ("codec", "setting", "bpp", "psnr", "ms_ssim", "encode_s", "decode_s", "block_bytes_max", "block_budget")
    rows = [{k: r.get(k) for k in keep} for r in result["averages"]]
    astc = sorted((r["bpp"], r["psnr"]) for r in rows if r["codec"] == "astc")
    for r in rows:
        if r["codec"] == "mllae-n" and len(astc) > 1:
            r["astc_psnr_at_same_bpp"] = interpolate(astc, r["bpp"])
    return {"models": [str(p) for p in models], "averages": rows}


def interpolate(curve: list[tuple[float, float]], bpp: float) -> float | None:
    """A curve's PSNR at ``bpp``, linear in log bpp between its neighbours (None outside it)."""
    for (b0, p0), (b1, p1) in zip(curve, curve[1:]):
        if b0 <= bpp <= b1:
            t = (math.log(bpp) - math.log(b0)) / (math.log(b1) - math.log(b0))
            return p0 + t * (p1 - p0)
    return None


def random_access(model: Path, imgs, repeats: int = 3) -> dict:
    import torch

    from compressml.codec import container as cml
    from compressml.codec.files import CodecModel
    from compressml.codec.lae import SourceImage

    codec = CodecModel.load(model)
    image = imgs[0]
    container = cml.parse(codec.encode(SourceImage(rgb=torch.from_numpy(image.rgb).permute(2, 0, 1).float() / 255)).to_bytes())
    h, w = image.rgb.shape[:2]
    whole = codec.decode(container).rgb
    out = {"image": image.name, "size": [w, h]}
    for name, region in (("whole", None), ("region_64", (w // 2, h // 2, 64, 64)), ("region_256", (w // 4, h // 4, 256, 256))):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            decoded = codec.decode(container, region) if region else codec.decode(container)
            times.append(time.perf_counter() - start)
        entry = {"seconds": round(min(times), 4), "region": region}
        if region:
            x, y, rw, rh = region
            entry["same_pixels_as_whole"] = bool(torch.equal(decoded.rgb, whole[:, y : y + rh, x : x + rw]))
        out[name] = entry
    return out


def print_tables(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    near = results.get("near_lossless")
    if near:
        rows = near["averages"]
        table = Table(title=f"Near-lossless and lossless on {results['images']} Kodak image(s): bits per sub-pixel", header_style="bold")
        for col in ("D", "mllae", "jpeg-ls", "png", "webp-lossless", "jpeg-xl-lossless", "max error (ours)", "PSNR (ours)", "enc / dec s"):
            table.add_column(col, justify="right")
        for d in BOUNDS:
            ours = next(r for r in rows if r["codec"] == "mllae" and r["setting"] == f"D{d}")
            jls = next((r for r in rows if r["codec"] == "jpeg-ls" and r["setting"] == d), None)
            others = [next((r for r in rows if r["codec"] == c), None) if d == 0 else None for c in LOSSLESS]
            cells = [f"{r['bpsp']:.3f}" if r else "" for r in (ours, jls, *others)]
            psnr = "lossless" if ours["exact"] == ours["images"] else f"{ours['psnr']:.2f}"
            table.add_row(str(d), *cells, str(ours["max_abs_error"]), psnr, f"{ours['encode_s']:.1f} / {ours['decode_s']:.1f}")
        console.print(table)
    fixed = results.get("fixed_size")
    if fixed:
        table = Table(title="Fixed-size codes: MLLAE-N and the texture codecs", header_style="bold")
        for col in ("codec", "setting", "bpp", "PSNR dB", "ASTC at same bpp", "largest block / N"):
            table.add_column(col, justify="left" if col in ("codec", "setting") else "right")
        for r in sorted(fixed["averages"], key=lambda r: (r["codec"] != "mllae-n", r["codec"], -r["bpp"])):
            astc = r.get("astc_psnr_at_same_bpp")
            block = f"{r['block_bytes_max']} / {r['block_budget']}" if r.get("block_budget") else ""
            table.add_row(
                r["codec"], str(r["setting"]), f"{r['bpp']:.3f}", f"{r['psnr']:.2f}", "" if astc is None else f"{astc:.2f}", block
            )
        console.print(table)
    ra = results.get("random_access")
    if ra:
        table = Table(title=f"Random access ({ra['image']}, {ra['size'][0]}x{ra['size'][1]})", header_style="bold")
        for col in ("decode", "seconds", "same pixels as the whole decode"):
            table.add_column(col)
        for name in ("whole", "region_64", "region_256"):
            e = ra[name]
            table.add_row(name, f"{e['seconds']:.3f}", str(e.get("same_pixels_as_whole", "")))
        console.print(table)


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--lossless", type=Path, default=ROOT / "compressml" / "premade" / "mllae-lossless")
    parser.add_argument("--fixed", type=Path, nargs="*", default=None, help="MLLAE-N checkpoints or bundles (default: the premade ones)")
    parser.add_argument("--skip-near", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "mllae_anchors.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fixed is None:
        from compressml import premade

        args.fixed = [m.bundle for m in premade.premade_models() if m.family == "mllae" and not m.name.endswith("lossless")]
    started = time.perf_counter()
    imgs = images(args.images)
    results = {"machine": machine_info(), "images": len(imgs)}
    if not args.skip_near:
        results["near_lossless"] = near_lossless(args.lossless, imgs)
    if args.fixed:
        results["fixed_size"] = fixed_size(args.fixed, imgs)
        results["random_access"] = random_access(args.fixed[0], imgs)
    return finish(results, args.out, print_tables, started)


if __name__ == "__main__":
    sys.exit(main())
