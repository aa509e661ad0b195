"""Learning curve of the default premade LAE: Kodak BD-rate (PSNR and MS-SSIM, real files) against
JPEG 4:2:0, WebP and AVIF for successive snapshots of its training, against the training time
that went into each (CPU hours of the whole chain of runs, from the fixed-rate lae-q4 start on).

Each snapshot is a variable-rate bundle or checkpoint given as ``HOURS=PATH``; all are coded at the
same qualities on the same images in one evaluation (one set of classical-codec measurements), so
the points are comparable. Prints the table, writes JSON and a PNG plot with a straight-line fit
of BD-rate against log(hours) (the extrapolation the README quotes, not a promise).

    .venv/bin/python benchmarks/learning_curve.py --images 8 \\
        4.11=benchmarks/models/vr-mean_scale-13695 4.94=benchmarks/models/vr-mean_scale-13695-plus8154 \\
        6.95=benchmarks/models/vr-mean_scale-chain-7h
    .venv/bin/python benchmarks/learning_curve.py --images 8 --append 8.03=path/to/newer/snapshot

``--append`` keeps the rows of the existing JSON (snapshots whose files may be gone) and adds the new
ones, measured on the same images at the same qualities (classical codecs and our decoding are
deterministic, so the rows are comparable), then refits and replots.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS, finish, machine_info
from rd_kodak import KODAK, QUALITIES, kodak_images, measure

TARGETS = {"jpeg-420": -50.0, "webp": -15.0}


def fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares of BD-rate = a + b·ln(hours); None without two different hours."""
    import numpy as np

    if len({h for h, _ in points}) < 2:
        return None
    b, a = np.polyfit([math.log(h) for h, _ in points], [v for _, v in points], 1)
    return float(a), float(b)


def print_tables(results: dict) -> None:
    print(f"\nLearning curve, {results['images']} Kodak images (BD-rate, PSNR / MS-SSIM; negative = fewer bits)")
    print(f"{'CPU hours':>9} {'snapshot':<48} {'vs JPEG':>16} {'vs WebP':>16} {'vs AVIF':>16}")
    for row in results["rows"]:
        cells = [
            f"{row['bd'].get(c, {}).get('psnr', float('nan')):+6.1f} / {row['bd'].get(c, {}).get('ms_ssim_db', float('nan')):+6.1f}"
            for c in ("jpeg-420", "webp", "avif")
        ]
        print(f"{row['hours']:9.2f} {row['snapshot'][-48:]:<48} " + " ".join(f"{c:>16}" for c in cells))
    for codec, f in results["fit"].items():
        if f:
            print(
                f"fit vs {codec}: BD = {f['a']:+.1f} {f['b']:+.1f}·ln(hours); target {TARGETS[codec]:+.0f} % at about {f['hours_to_target']:.0f} CPU hours"
                if f.get("hours_to_target")
                else f"fit vs {codec}: BD = {f['a']:+.1f} {f['b']:+.1f}·ln(hours); no improvement with time"
            )
    print(f"plot: {results['plot']}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    hours = [r["hours"] for r in results["rows"]]
    for codec, style in (("jpeg-420", "o-"), ("webp", "s-"), ("avif", "^-")):
        values = [r["bd"].get(codec, {}).get("psnr") for r in results["rows"]]
        if all(v is not None for v in values):
            ax.plot(hours, values, style, label=f"vs {codec}")
    for codec, target in TARGETS.items():
        ax.axhline(target, ls=":", lw=1, color="grey")
        ax.text(hours[0], target, f" target vs {codec}", va="bottom", fontsize=7, color="grey")
    for f in results.get("fit", {}).values():  # the straight line in log(hours), dashed
        if f:
            xs = [min(hours), max(hours)]
            ax.plot(xs, [f["a"] + f["b"] * math.log(x) for x in xs], "--", lw=1, color="grey")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("CPU hours of training (whole chain, 2-core AMD EPYC)")
    ax.set_ylabel("Kodak BD-rate, PSNR (%)")
    ax.set_title("default premade LAE: BD-rate against training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("snapshots", nargs="+", metavar="HOURS=PATH")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--kodak", type=Path, default=KODAK)
    p.add_argument("--qualities", type=float, nargs="+", default=list(QUALITIES))
    p.add_argument("--out", type=Path, default=RESULTS / "learning_curve.json")
    p.add_argument("--append", action="store_true", help="keep the rows already in --out (same images and qualities)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    from compressml.evaluation import LearnedModel

    snapshots = []
    for item in args.snapshots:
        hours, _, path = item.partition("=")
        try:
            snapshots.append((float(hours), Path(path)))
        except ValueError:
            raise SystemExit(f"expected HOURS=PATH, got {item!r}") from None
    snapshots.sort()
    models = [LearnedModel(path, path.name, f"h{hours:g}", qualities=tuple(args.qualities)) for hours, path in snapshots]
    images = kodak_images(args.kodak, count=args.images)
    result = measure(models, images, Path("/tmp/compressml-bench/learning_curve"))
    # a variable-rate model's curve is named "<curve>:<setting>"
    curve_of = {name.split(":")[0]: name for name in result["bd_rate"]}
    rows = [{"hours": h, "snapshot": str(path), "bd": result["bd_rate"][curve_of[f"h{h:g}"]]} for h, path in snapshots]
    if args.append and args.out.exists():
        import json

        before = json.loads(args.out.read_text())
        if before.get("images") != len(images) or before.get("qualities") != args.qualities:
            raise SystemExit(f"--append: {args.out} was measured on other images or qualities")
        new = {r["hours"] for r in rows}
        rows = sorted([r for r in before["rows"] if r["hours"] not in new] + rows, key=lambda r: r["hours"])
    fits = {}
    for codec, target in TARGETS.items():
        f = fit([(r["hours"], r["bd"][codec]["psnr"]) for r in rows if r["bd"].get(codec, {}).get("psnr") is not None])
        if f:
            a, b = f
            fits[codec] = {"a": a, "b": b, "hours_to_target": math.exp((target - a) / b) if b < 0 else None}
    out_plot = args.out.with_suffix(".png")
    results = {
        "benchmark": "learning_curve",
        "machine": machine_info(),
        "images": len(images),
        "qualities": args.qualities,
        "rows": rows,
        "fit": fits,
        "plot": str(out_plot),
    }
    out_plot.parent.mkdir(parents=True, exist_ok=True)
    plot(results, out_plot)
    return finish(results, args.out, print_tables, started)


if __name__ == "__main__":
    sys.exit(main())
