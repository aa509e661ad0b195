"""How far decoding drifts when the arithmetic changes, in both LAE decoding modes, for every premade
LAE on Kodak.

Every image is encoded once per model and mode (this machine, default settings). Each perturbation
then decodes those files in a fresh process:

``threads-1``     one thread (the reference runs with ``--threads``, 2 by default)
``isa-default``   ``ATEN_CPU_CAPABILITY=default``: PyTorch's kernels without AVX2/AVX-512
``onednn-sse41``  ``ONEDNN_MAX_CPU_ISA=SSE41``: oneDNN's convolutions on SSE4.1 code
``reordered``     every convolution summing its input channels in another order
                  (``compressml.models.exact.ReorderedReductions``)
``float64``       the decoder's CDF-choosing layers (the hyper-decoder) in float64

and counts, against the reference process: **index decisions** (which of the 64 CDFs codes each
latent element, from the hyper-decoder's scales on the decoded hyper-latent: a changed one
desynchronises the entropy decoder from there on), elements whose **mean** moved, and **8-bit
samples** of the decoded image that differ. Also the decoding time of each mode (reference process).

    .venv/bin/python benchmarks/determinism.py [--images 24] [--threads 2]

Writes benchmarks/results/determinism.json. Run it while nothing else runs (it times decoding).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import RESULTS, ROOT, machine_info, write_json

OUT = RESULTS / "determinism.json"
KODAK = (ROOT / ".." / "shared" / "data" / "kodak").resolve()
MODELS = ["lae-q1", "lae-q2", "lae-q3", "lae-q4"]
MODES = ["compressai", "exact"]
PERTURBATIONS = {
    "threads-1": {"env": {}, "threads": 1},
    "isa-default": {"env": {"ATEN_CPU_CAPABILITY": "default"}},
    "onednn-sse41": {"env": {"ONEDNN_MAX_CPU_ISA": "SSE41"}},
    "reordered": {"env": {}, "inside": "reordered"},
    "float64": {"env": {}, "inside": "float64"},
}


def encode_all(folder: Path, images: list[Path], threads: int) -> None:
    import torch

    from compressml.codec.files import read_source
    from compressml.codec.loader import load_codec

    torch.set_num_threads(threads)
    for name in MODELS:
        model = load_codec(str(ROOT / "compressml" / "premade" / name))
        for mode in MODES:
            coder = model.with_decoding_mode(mode)
            for img in images:
                (folder / f"{name}.{mode}.{img.stem}.cml").write_bytes(coder.encode(read_source(img)).to_bytes())


LOSSLESS = "mllae-lossless"
LOSSLESS_MODES = ["float", "exact"]  # MLLAE lossless flag 1 (float arithmetic, older files) and 2


def encode_lossless(folder: Path, images: list[Path], threads: int) -> None:
    import torch

    from compressml.codec import mllae as mllae_codec
    from compressml.codec.files import read_source
    from compressml.codec.loader import load_codec

    torch.set_num_threads(threads)
    model = load_codec(str(ROOT / "compressml" / "premade" / LOSSLESS))
    for mode in LOSSLESS_MODES:
        for img in images:
            container = mllae_codec.encode(model.net, read_source(img), model.fingerprint, "rans", exact=mode == "exact")
            (folder / f"{LOSSLESS}.{mode}.{img.stem}.cml").write_bytes(container.to_bytes())


def lossless_worker(folder: Path, images: list[str], inside: str | None, arrays: dict, timings: dict) -> None:
    """Decode the MLLAE lossless files; keep every CDF index and integer centre the residual model chose."""
    import contextlib

    import numpy as np

    from compressml.codec import container as cml
    from compressml.codec import mllae as mllae_codec
    from compressml.codec.container import ContainerError
    from compressml.codec.loader import load_codec
    from compressml.models.exact import ReorderedReductions

    model = load_codec(str(ROOT / "compressml" / "premade" / LOSSLESS))
    chosen: list[np.ndarray] = []
    params, centre = mllae_codec._phase_params, mllae_codec._centre

    def record_params(*args):
        mu, coupling, index = params(*args)
        chosen.append(index.ravel().astype(np.int16))
        return mu, coupling, index

    def record_centre(*args):
        out = centre(*args)
        chosen.append(out.ravel().astype(np.int16))
        return out

    mllae_codec._phase_params, mllae_codec._centre = record_params, record_centre
    try:
        for mode in LOSSLESS_MODES:
            spent = []
            for stem in images:
                chosen.clear()
                container = cml.parse((folder / f"{LOSSLESS}.{mode}.{stem}.cml").read_bytes())
                with ReorderedReductions() if inside == "reordered" else contextlib.nullcontext():
                    start = time.perf_counter()
                    try:
                        rgb = model.decode(container).rgb.mul(255).round().byte().numpy()
                    except ContainerError:  # a desynchronised residual decoder fails its range checks
                        rgb = np.zeros((3, container.height, container.width), np.uint8)
                    spent.append(time.perf_counter() - start)
                key = f"{LOSSLESS}.{mode}.{stem}"
                arrays[key + ".indexes"] = np.concatenate(chosen)
                arrays[key + ".pixels"] = rgb
            timings[f"{LOSSLESS}.{mode}"] = sorted(spent)[len(spent) // 2]
    finally:
        mllae_codec._phase_params, mllae_codec._centre = params, centre


def worker(folder: Path, images: list[str], threads: int, inside: str | None, out: Path) -> None:
    """Decode every file of ``folder``; save the index decisions, means and pixels (npz) and timings."""
    import contextlib

    import numpy as np
    import torch

    from compressml.codec import container as cml
    from compressml.codec import lae as lae_codec
    from compressml.codec.loader import load_codec
    from compressml.models.exact import ReorderedReductions
    from compressml.models.lae import decoding_mode, expected_layout

    torch.set_num_threads(threads)
    arrays, timings = {}, {}
    for name in MODELS:
        model = load_codec(str(ROOT / "compressml" / "premade" / name))
        net = model.net
        for mode in MODES:
            spent = []
            for stem in images:
                container = cml.parse((folder / f"{name}.{mode}.{stem}.cml").read_bytes())
                z_string = lae_codec.coded_strings(container)[1]
                padded = (container.height + container.pad_h, container.width + container.pad_w)
                shape, _ = expected_layout(net, *padded)
                with torch.no_grad():
                    z_hat = net.entropy_bottleneck.decompress([z_string], shape)
                    probe = ReorderedReductions() if inside == "reordered" else contextlib.nullcontext()
                    if inside == "float64":
                        h_s = net.h_s
                        net.h_s = __import__("copy").deepcopy(h_s).double()
                        z_hat = z_hat.double()
                    try:
                        with probe, decoding_mode(net, mode):
                            scales, means = net.h_s(z_hat).chunk(2, 1)
                            indexes = net.gaussian_conditional.build_indexes(scales)
                    finally:
                        if inside == "float64":
                            net.h_s = h_s
                    with probe:
                        start = time.perf_counter()
                        rgb = model.decode(container).rgb
                        spent.append(time.perf_counter() - start)
                key = f"{name}.{mode}.{stem}"
                arrays[key + ".indexes"] = indexes.short().numpy()
                arrays[key + ".means"] = means.float().numpy()
                arrays[key + ".pixels"] = rgb.mul(255).round().byte().numpy()
            timings[f"{name}.{mode}"] = sorted(spent)[len(spent) // 2]
    lossless = sorted(p.name.split(".")[2] for p in folder.glob(f"{LOSSLESS}.exact.*.cml"))
    if inside != "float64":  # (the float64 probe is the LAE hyper-decoder's)
        lossless_worker(folder, lossless, inside, arrays, timings)
    np.savez(out, **arrays)
    out.with_suffix(".json").write_text(json.dumps(timings))


def run_worker(folder: Path, images: list[str], threads: int, env: dict, inside: str | None, out: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "worker",
        "--folder",
        str(folder),
        "--threads",
        str(threads),
        "--out",
        str(out),
        "--names",
        *images,
    ] + (["--inside", inside] if inside else [])
    subprocess.run(cmd, check=True, env={**os.environ, **env}, cwd=ROOT)
    return json.loads(out.with_suffix(".json").read_text())


def _differences(a, b) -> int:
    """Elements that differ, a length difference counting as that many (a decoder that stopped early)."""
    n = min(a.size, b.size)
    return int((a[:n] != b[:n]).sum()) + abs(a.size - b.size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step")
    w = sub.add_parser("worker")
    w.add_argument("--folder", type=Path, required=True)
    w.add_argument("--threads", type=int, required=True)
    w.add_argument("--out", type=Path, required=True)
    w.add_argument("--inside")
    w.add_argument("--names", nargs="+", required=True)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lossless-images", type=int, default=4, help="Kodak images for mllae-lossless (3-4 s each)")
    args = parser.parse_args()
    if args.step == "worker":
        worker(args.folder, args.names, args.threads, args.inside, args.out)
        return 0

    import numpy as np

    images = sorted(KODAK.glob("kodim*.png"))[: args.images]
    stems = [p.stem for p in images]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        encode_all(folder, images, args.threads)
        encode_lossless(folder, images[: args.lossless_images], args.threads)
        lossless_stems = stems[: args.lossless_images]
        ref_times = run_worker(folder, stems, args.threads, {}, None, folder / "reference.npz")
        reference = np.load(folder / "reference.npz")
        rows = []
        for label, p in PERTURBATIONS.items():
            run_worker(folder, stems, p.get("threads", args.threads), p["env"], p.get("inside"), folder / f"{label}.npz")
            other = np.load(folder / f"{label}.npz")
            for name in MODELS:
                for mode in MODES:
                    keys = [f"{name}.{mode}.{s}" for s in stems]
                    count = lambda what: int(sum((reference[k + what] != other[k + what]).sum() for k in keys))
                    total = lambda what: int(sum(reference[k + what].size for k in keys))
                    row = {
                        "perturbation": label,
                        "model": name,
                        "mode": mode,
                        "index_decisions_changed": count(".indexes"),
                        "index_decisions": total(".indexes"),
                        "means_changed": count(".means"),
                        "means": total(".means"),
                        "samples_changed": count(".pixels"),
                        "samples": total(".pixels"),
                        "images_with_changed_samples": sum(bool((reference[k + ".pixels"] != other[k + ".pixels"]).any()) for k in keys),
                    }
                    rows.append(row)
                    print(
                        f"{label:<13} {name:<7} {mode:<10} index decisions changed {row['index_decisions_changed']:>6} / "
                        f"{row['index_decisions']}  means {row['means_changed']:>7} / {row['means']}  samples "
                        f"{row['samples_changed']:>7} / {row['samples']}",
                        flush=True,
                    )
            if not lossless_stems or f"{LOSSLESS}.exact.{lossless_stems[0]}.pixels" not in other.files:
                continue
            for mode in LOSSLESS_MODES:
                keys = [f"{LOSSLESS}.{mode}.{s}" for s in lossless_stems]
                changed = sum(_differences(reference[k + ".indexes"], other[k + ".indexes"]) for k in keys)
                row = {
                    "perturbation": label,
                    "model": LOSSLESS,
                    "mode": mode,
                    "index_decisions_changed": changed,
                    "index_decisions": int(sum(reference[k + ".indexes"].size for k in keys)),
                    "samples_changed": int(sum((reference[k + ".pixels"] != other[k + ".pixels"]).sum() for k in keys)),
                    "samples": int(sum(reference[k + ".pixels"].size for k in keys)),
                    "images_with_changed_samples": sum(bool((reference[k + ".pixels"] != other[k + ".pixels"]).any()) for k in keys),
                }
                rows.append(row)
                print(
                    f"{label:<13} {LOSSLESS} {mode:<6} CDF indexes and centres changed {changed:>7} / "
                    f"{row['index_decisions']}  samples {row['samples_changed']:>7} / {row['samples']}",
                    flush=True,
                )
    speed = [{"model": name, "mode": mode, "decode_s_median": ref_times[f"{name}.{mode}"]} for name in MODELS for mode in MODES]
    speed += [{"model": LOSSLESS, "mode": mode, "decode_s_median": ref_times[f"{LOSSLESS}.{mode}"]} for mode in LOSSLESS_MODES]
    for name in MODELS:
        a, b = ref_times[f"{name}.compressai"], ref_times[f"{name}.exact"]
        print(f"decode {name}: compressai {a * 1000:.0f} ms, exact {b * 1000:.0f} ms per image ({(b / a - 1) * 100:+.1f} %)")
    a, b = ref_times[f"{LOSSLESS}.float"], ref_times[f"{LOSSLESS}.exact"]
    print(f"decode {LOSSLESS}: float {a:.2f} s, exact {b:.2f} s per image ({(b / a - 1) * 100:+.1f} %)")
    write_json({"machine": machine_info(args.threads), "images": len(images), "rows": rows, "speed": speed}, OUT)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
