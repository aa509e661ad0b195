"""Encode on one device, decode on the other, for every shipped model; and how fast each is.

For each premade LAE (both decoding modes), each of ``--images`` Kodak images is encoded on the GPU
and on the CPU, and each file decoded on both. Counted: files whose entropy decoding desynchronised
(the decoded image is far from the original: more than 8 levels mean absolute error above what
the same-device decode gives), 8-bit samples that differ between the GPU and the CPU decodes of the
same file, and whether the files themselves are identical. The premade lossless MLLAE must decode
bit-exactly across devices; the hybrid codec (red-x2 over WebP) is compared like an LAE. Encode and
decode milliseconds per image on each device go into the JSON.

    python benchmarks/gpu_check.py [--images 8] [--out benchmarks/results/gpu_check.json]

Run by benchmarks/gpu_check.sh on a machine with a CUDA GPU; never part of the tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREMADE = ROOT / "compressml" / "premade"
KODAK = (ROOT / ".." / "shared" / "data" / "kodak").resolve()


def timed(fn):
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, (time.perf_counter() - start) * 1000


def on(model, device: str):
    import copy

    clone = copy.copy(model)
    clone.net = copy.deepcopy(model.net).to(device)
    return clone


def main() -> int:
    import torch

    sys.path.insert(0, str(ROOT))
    from compressml.codec import container as cml
    from compressml.codec.files import CodecModel, read_source
    from compressml.codec.hybrid import HybridCodec

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.json")
    parser.add_argument("--device", default="cuda", help="the other device (cpu: a dry run of this script)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here")
    images = [read_source(p) for p in sorted(KODAK.glob("kodim*.png"))[: args.images]]
    rows = []

    def compare(name: str, mode: str | None, cpu, gpu) -> None:
        try:
            _compare(name, mode, cpu, gpu)
        except Exception as e:
            rows.append({"model": name, "mode": mode, "error": f"{type(e).__name__}: {e}"[:500]})
            print(json.dumps(rows[-1]), flush=True)

    def _compare(name: str, mode: str | None, cpu, gpu) -> None:
        t = {"enc_cpu": [], "enc_gpu": [], "dec_cpu": [], "dec_gpu": []}
        same_files = desync = samples = 0
        for src in images:
            with torch.no_grad():
                files = {}
                for dev, m in (("cpu", cpu), ("gpu", gpu)):
                    data, ms = timed(lambda m=m: m.encode(src).to_bytes())
                    files[dev] = data
                    t[f"enc_{dev}"].append(ms)
                same_files += files["cpu"] == files["gpu"]
                ref = (src.rgb * 255).round()
                for _made, data in files.items():
                    decoded = {}
                    for dev, m in (("cpu", cpu), ("gpu", gpu)):
                        img, ms = timed(lambda m=m, data=data: m.decode(cml.parse(data)).rgb.cpu())
                        decoded[dev] = (img * 255).round()
                        t[f"dec_{dev}"].append(ms)
                    err = {d: float((v - ref).abs().mean()) for d, v in decoded.items()}
                    desync += abs(err["cpu"] - err["gpu"]) > 8 or max(err.values()) > 8 + min(err.values())
                    samples += int((decoded["cpu"] != decoded["gpu"]).sum())
        row = {
            "model": name,
            "mode": mode,
            "images": len(images),
            "identical_files_cpu_gpu": same_files,
            "desynchronised_decodes": desync,
            "samples_differing_cpu_gpu": samples,
            **{f"{k}_ms": statistics.median(v) for k, v in t.items()},
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    for q in range(1, 5):
        base = CodecModel.load(PREMADE / f"lae-q{q}")
        for mode in ("exact", "compressai"):
            m = base.with_decoding_mode(mode)
            compare(f"lae-q{q}", mode, on(m, "cpu"), on(m, args.device))
    lossless = CodecModel.load(PREMADE / "mllae-lossless")
    compare("mllae-lossless", None, on(lossless, "cpu"), on(lossless, args.device))
    hybrid = HybridCodec.load(str(PREMADE / "red-x2"), "webp", 75)
    gpu_hybrid = HybridCodec.load(str(PREMADE / "red-x2"), "webp", 75)
    gpu_hybrid.red.net.to(args.device)
    compare("red-x2+webp", None, hybrid, gpu_hybrid)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    args.out.write_text(json.dumps({"device": device, "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
