"""RD on Kodak: the default premade LAE (one variable-rate network, at several qualities) and the
fixed-rate premade family against JPEG, WebP and AVIF (Pillow), with BD-rates on PSNR and MS-SSIM, and
CompressAI's published Kodak curves (its models, and its JPEG, WebP, JPEG 2000, BPG and VTM runs)
overlaid in the plot and BD-rated.

Every learned point is a real ``.cml`` file decoded again (``compressml.evaluation.run_evaluation``,
the code path of ``evaluate.py``); JPEG and WebP are measured on the same images through Pillow.
BD-rates are given against our own JPEG/WebP measurements and against CompressAI's published
JPEG/WebP and model curves (../shared/data/reference). Targets (issue 21): BD-rate (PSNR) at most
-50 % vs JPEG 4:2:0 and at most -15 % vs WebP, and the same on MS-SSIM; ``--images-dir`` measures
another set (Set14 and Set5, never tuned on) with the same models.

    .venv/bin/python benchmarks/rd_kodak.py                       # the premade models, 24 images
    .venv/bin/python benchmarks/rd_kodak.py --images 4
    .venv/bin/python benchmarks/rd_kodak.py --images-dir ../shared/data/set14/HR ../shared/data/set5/HR --out benchmarks/results/rd_other.json
    .venv/bin/python benchmarks/rd_kodak.py --refine 50              # also the family with --refine 50
    .venv/bin/python benchmarks/rd_kodak.py --models a.ckpt b.ckpt c.ckpt d.ckpt --label mine

Prints tables and writes benchmarks/results/rd_kodak.json and rd_kodak.png.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS, ROOT, finish, machine_info

KODAK = (ROOT / ".." / "shared" / "data" / "kodak").resolve()
REFERENCE = (ROOT / ".." / "shared" / "data" / "reference").resolve()
# CompressAI's published curves overlaid (and BD-rated against); the JPEG/WebP ones are its own runs
REFERENCE_FILES = (
    "compressai-bmshj2018-factorized_mse_cpu.json",
    "compressai-bmshj2018-hyperprior_mse_cpu.json",
    "compressai-mbt2018-mean_mse_cpu.json",
    "compressai-mbt2018_mse_cpu.json",
    "compressai-cheng2020-anchor_mse_cpu.json",
    "jpeg.json",
    "webp.json",
    "jpeg2000.json",
    "bpg_444_x265_ycbcr.json",
    "vtm.json",
)
CURVE = "compressml-premade"
DEFAULT_CURVE = "compressml-default"
QUALITIES = (0.0, 15.0, 30.0, 45.0, 60.0, 75.0, 90.0, 100.0)
CODECS = ("jpeg-420", "webp", "avif")


def kodak_images(*roots: Path, count: int | None = None):
    from compressml.data.images import list_images, load_image
    from compressml.evaluation import EvalImage

    paths = [p for root in roots for p in list_images(root)][:count]
    if not paths:
        raise SystemExit(f"no images in {', '.join(map(str, roots))}")
    return [EvalImage.from_tensor(p.name, load_image(p)) for p in paths]


def premade_points(qualities=QUALITIES, family: bool = True) -> list:
    """The default premade LAE at ``qualities`` (its own curve), then the fixed-rate family."""
    from compressml import premade
    from compressml.evaluation import LearnedModel

    default = premade.default_lae()
    points = [LearnedModel(default.bundle, default.name, DEFAULT_CURVE, qualities=tuple(qualities))] if default else []
    if family or not points:
        points += [LearnedModel(m.bundle, m.name, CURVE) for m in premade.lae_family()]
    if not points:
        raise SystemExit("no premade LAE models in compressml/premade (run benchmarks/build_premade.py)")
    return points


def measure(models, images, out_dir: Path, codecs=CODECS, reference=REFERENCE) -> dict:
    """Real-file RD of ``models`` (LearnedModel points) and ``codecs`` on ``images``, with references."""
    from compressml.baselines import available_codecs
    from compressml.evaluation import run_evaluation

    refs = [reference / f for f in REFERENCE_FILES if (reference / f).is_file()]
    return run_evaluation(
        models,
        images,
        available_codecs(list(codecs)),
        out_dir,
        reference=refs,
        compare=list(codecs),
        matched=(),
        progress=lambda msg: print(f"  {msg}", flush=True),
    )


def summarise(result: dict) -> dict:
    from compressml.evaluation import bd_rates

    learned = result["learned"]
    points = [r for r in result["averages"] if r["codec"] in learned]
    curves = result["curves"]
    # each further learned curve against the first too (the refined family against the plain one)
    between = bd_rates({n: curves[n] for n in learned[1:]}, {learned[0]: curves[learned[0]]})
    return {
        "points": [
            {k: r[k] for k in ("codec", "setting", "bpp", "psnr", "ms_ssim", "ms_ssim_db", "encode_s", "decode_s")}
            for r in sorted(points, key=lambda r: (learned.index(r["codec"]), r["bpp"]))
        ],
        "bd_rate": {name: {**table, **between.get(name, {})} for name, table in result["bd_rate"].items()},
        "classical": {n: c for n, c in result["curves"].items() if n not in learned},
        "reference": result["reference"],
    }


def print_tables(results: dict) -> None:
    print(
        f"\n{results['images']} images ({', '.join(Path(d).name if Path(d).name != 'HR' else Path(d).parent.name for d in results['dataset'])}): real files"
    )
    print(f"{'curve':<28} {'model':<10} {'bpp':>7} {'PSNR dB':>8} {'MS-SSIM':>8} {'enc s':>7} {'dec s':>7}")
    for p in results["points"]:
        print(
            f"{p['codec']:<28} {p['setting']:<10} {p['bpp']:7.3f} {p['psnr']:8.2f} {p['ms_ssim']:8.4f} {p['encode_s']:7.3f} {p['decode_s']:7.3f}"
        )
    fmt = lambda v: "n/a" if v is None else f"{v:+.1f} %"
    for curve, table in results["bd_rate"].items():
        print(f"\nBD-rate of {curve} (negative = fewer bits at equal quality)")
        print(f"{'against':<42} {'PSNR':>9} {'MS-SSIM':>9}")
        for against, e in table.items():
            print(f"{against:<42} {fmt(e.get('psnr')):>9} {fmt(e.get('ms_ssim_db')):>9}")
    print(f"targets: <= -50 % vs JPEG 4:2:0, <= -15 % vs WebP (PSNR and MS-SSIM); plot: {results['plot']}")


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--images", type=int, default=None, help="first N Kodak images (default: all 24)")
    p.add_argument("--kodak", type=Path, default=KODAK)
    p.add_argument("--images-dir", nargs="+", type=Path, default=None, help="measure these folders instead of Kodak")
    p.add_argument("--qualities", type=float, nargs="+", default=list(QUALITIES), help="the default (variable-rate) model's points")
    p.add_argument("--no-family", action="store_true", help="leave out the fixed-rate premade family")
    p.add_argument("--models", nargs="+", type=Path, help="checkpoints or bundles instead of the premade family")
    p.add_argument("--label", default=None, help="curve name for --models")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--refine",
        type=int,
        default=0,
        metavar="STEPS",
        help="also measure the models with STEPS of encoder-side latent refinement (compress --refine)",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "rd_kodak.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    from compressml.evaluation import learned_models

    models = (
        learned_models([str(m) for m in args.models], args.label or "compressml")
        if args.models
        else premade_points(args.qualities, not args.no_family)
    )
    if args.refine:
        from compressml.evaluation import with_refinement

        models = with_refinement(models, [0, args.refine])
    roots = args.images_dir or [args.kodak]
    images = kodak_images(*roots, count=args.images)
    work = Path("/tmp/compressml-bench/rd_kodak")
    print(
        f"RD on {len(images)} image(s) of {', '.join(r.name if r.name != 'HR' else r.parent.name for r in roots)}: {len(models)} model(s), JPEG, WebP, AVIF",
        flush=True,
    )
    result = measure(models, images, work)
    plot = args.out.with_suffix(".png")
    plot.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "rd.png", plot)
    results = {
        "benchmark": "rd_kodak",
        "machine": machine_info(),
        "images": len(images),
        "dataset": [str(r) for r in roots],
        "models": [str(m.path) for m in models],
        **summarise(result),
        "plot": str(plot.relative_to(ROOT) if plot.is_relative_to(ROOT) else plot),
    }
    return finish(results, args.out, print_tables, started)


if __name__ == "__main__":
    sys.exit(main())
