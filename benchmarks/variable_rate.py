"""One variable-rate LAE on Kodak: its rate-distortion curve over the quality range, rate control to a
size, a bpp and a PSNR, and content-weighted bits (a region of interest).

    .venv/bin/python benchmarks/variable_rate.py --model BUNDLE_OR_CKPT [--images 24] [--threads 2]

Per image:

- **curve**: qualities 0, 25, 50, 75, 100: bpp and PSNR;
- **rate control**: ``--max-bytes`` at 80 % of the quality-50 file's size, ``--bpp 0.5`` and
  ``--psnr`` at the quality-50 PSNR: the value achieved and the coding passes it took;
- **region of interest**: a mask over the central quarter of the image (half the width, half the
  height). For each uniform quality of ``--roi-base`` (default 25, 50) the uniform file gives a
  size S and a PSNR inside the region; for each region quality of ``--roi-quality`` (default 75,
  100) above it, the ROI file gives the region that quality and the background the largest quality
  whose file is at most S bytes (bisection, ``compress --roi --max-bytes S``; none when even
  background quality 0 does not fit). Reported: PSNR inside and outside the region for both, at
  (nearly) the same size, per pair. Target: at least 2 dB more inside.

Writes benchmarks/results/variable_rate.json.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_common import RESULTS, ROOT, machine_info, write_json

OUT = RESULTS / "variable_rate.json"
KODAK = (ROOT / ".." / "shared" / "data" / "kodak").resolve()
CURVE = (0, 25, 50, 75, 100)


def _psnr(a, b, mask=None) -> float:
    err = (a.double() - b.double()) ** 2
    if mask is not None:
        err = err[:, mask]
    mse = float(err.mean())
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--roi-base", default="25,50", help="uniform qualities the ROI files are matched to in size")
    parser.add_argument("--roi-quality", default="75,100", help="region qualities tried")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from compressml.codec import container as cml
    from compressml.codec.files import RateRequest, encode_image, read_source
    from compressml.codec.loader import load_codec

    torch.set_num_threads(args.threads)
    from compressml.codec.rate_control import RateControlError

    bases = [float(v) for v in args.roi_base.split(",")]
    regions = [float(v) for v in args.roi_quality.split(",")]
    pairs = [(b, r) for b in bases for r in regions if r > b]
    model = load_codec(args.model)
    if not model.variable_rate:
        raise SystemExit(f"{args.model}: not a variable-rate LAE")
    rows = []
    images = sorted(KODAK.glob("kodim*.png"))[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        for path in images:
            image = read_source(path)
            x = image.rgb
            h, w = x.shape[-2:]
            row = {"image": path.stem}

            def code(coder):
                start = time.perf_counter()
                data = coder.encode(image).to_bytes()
                encode_s = time.perf_counter() - start
                decoded = coder.decode(cml.parse(data)).rgb
                return data, decoded, encode_s

            row["curve"] = []
            for q in CURVE:
                data, decoded, _ = code(model.at(q))
                row["curve"].append({"quality": q, "bpp": 8 * len(data) / (h * w), "psnr": _psnr(decoded, x)})
            mid_data, mid_decoded, _ = code(model.at(50))
            size, mid_psnr = len(mid_data), _psnr(mid_decoded, x)
            mid_size = size
            control = {}
            for target, value in (("max_bytes", int(0.8 * mid_size)), ("bpp", 0.5), ("psnr", round(mid_psnr, 2))):
                container, chosen = encode_image(model, image, RateRequest(target=target, value=value))
                control[target] = {"target": value, **chosen, "bytes": len(container.to_bytes())}
            row["rate_control"] = control
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = 255
            mask_path = Path(tmp) / f"{path.stem}.mask.png"
            Image.fromarray(mask).save(mask_path)
            inside = torch.from_numpy(mask > 0)
            row["roi"] = []
            for base, region in pairs:
                u_data, u_decoded, _ = code(model.at(base))
                size = len(u_data)
                entry = {
                    "base": base,
                    "region_quality": region,
                    "uniform": {"bytes": size, "psnr_inside": _psnr(u_decoded, x, inside), "psnr_outside": _psnr(u_decoded, x, ~inside)},
                }
                try:
                    container, chosen = encode_image(
                        model, image, RateRequest(target="max_bytes", value=size, roi=mask_path, roi_quality=region)
                    )
                except RateControlError:
                    entry["roi"] = None  # even background quality 0 is too large
                else:
                    roi_data = container.to_bytes()
                    roi_decoded = model.decode(cml.parse(roi_data)).rgb
                    entry["roi"] = {
                        "background": chosen["rung"],
                        "passes": chosen["passes"],
                        "bytes": len(roi_data),
                        "psnr_inside": _psnr(roi_decoded, x, inside),
                        "psnr_outside": _psnr(roi_decoded, x, ~inside),
                    }
                    entry["inside_gain_db"] = entry["roi"]["psnr_inside"] - entry["uniform"]["psnr_inside"]
                    entry["outside_loss_db"] = entry["uniform"]["psnr_outside"] - entry["roi"]["psnr_outside"]
                row["roi"].append(entry)
            rows.append(row)
            roi_text = " ".join(
                f"q{e['base']:g}/r{e['region_quality']:g} " + ("n/a" if e["roi"] is None else f"{e['inside_gain_db']:+.2f}")
                for e in row["roi"]
            )
            print(
                f"{path.stem}: q50 {8 * mid_size / (h * w):.3f} bpp {mid_psnr:.2f} dB | max-bytes {control['max_bytes']['passes']} passes "
                f"{control['max_bytes']['bytes']}/{control['max_bytes']['target']} B | bpp {control['bpp']['achieved']:.3f} | "
                f"psnr {control['psnr']['achieved']:.2f}/{control['psnr']['target']} | ROI inside dB: {roi_text}",
                flush=True,
            )
    n = len(rows)
    summary = {
        "curve": [
            {"quality": q, "bpp": sum(r["curve"][i]["bpp"] for r in rows) / n, "psnr": sum(r["curve"][i]["psnr"] for r in rows) / n}
            for i, q in enumerate(CURVE)
        ],
        "roi": [_roi_summary(rows, i) for i in range(len(pairs))],
        "max_bytes_passes_mean": sum(r["rate_control"]["max_bytes"]["passes"] for r in rows) / n,
        "max_bytes_all_within": all(r["rate_control"]["max_bytes"]["bytes"] <= r["rate_control"]["max_bytes"]["target"] for r in rows),
        "bpp_abs_error_mean": sum(abs(r["rate_control"]["bpp"]["achieved"] - 0.5) for r in rows) / n,
        "psnr_all_reached": all(r["rate_control"]["psnr"]["achieved"] >= r["rate_control"]["psnr"]["target"] for r in rows),
        "psnr_passes_mean": sum(r["rate_control"]["psnr"]["passes"] for r in rows) / n,
    }
    print("curve: " + ", ".join(f"q{c['quality']} {c['bpp']:.3f} bpp {c['psnr']:.2f} dB" for c in summary["curve"]))
    for e in summary["roi"]:
        if not e["fits"]:
            print(f"ROI, uniform q{e['base']:g} vs region q{e['region_quality']:g}: even background quality 0 is too large on every image")
            continue
        print(
            f"ROI, uniform q{e['base']:g} vs region q{e['region_quality']:g}: fits on {e['fits']}/{n} images; inside "
            f"{e['inside_gain_db_mean']:+.2f} dB on average (min {e['inside_gain_db_min']:+.2f}), outside "
            f"{-e['outside_loss_db_mean']:+.2f} dB, at {e['size_ratio_mean']:.3f} of the uniform size"
        )
    print(
        f"rate control: max-bytes {summary['max_bytes_passes_mean']:.1f} passes, "
        f"all within: {summary['max_bytes_all_within']}; bpp error {summary['bpp_abs_error_mean']:.3f}; psnr reached: "
        f"{summary['psnr_all_reached']} in {summary['psnr_passes_mean']:.1f} passes"
    )
    write_json({"machine": machine_info(args.threads), "model": str(args.model), "images": n, "summary": summary, "rows": rows}, OUT)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


def _roi_summary(rows: list, i: int) -> dict:
    entries = [r["roi"][i] for r in rows]
    done = [e for e in entries if e["roi"] is not None]
    mean = lambda xs: sum(xs) / len(xs) if xs else None
    return {
        "base": entries[0]["base"],
        "region_quality": entries[0]["region_quality"],
        "fits": len(done),
        "inside_gain_db_mean": mean([e["inside_gain_db"] for e in done]),
        "inside_gain_db_min": min((e["inside_gain_db"] for e in done), default=None),
        "outside_loss_db_mean": mean([e["outside_loss_db"] for e in done]),
        "size_ratio_mean": mean([e["roi"]["bytes"] / e["uniform"]["bytes"] for e in done]),
    }


if __name__ == "__main__":
    raise SystemExit(main())
