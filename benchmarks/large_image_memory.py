"""Peak memory and time of a 4096x4096 photo through ``compressml compress`` / ``decompress`` on CPU.

The photo (a PNG under /tmp) is a mosaic of the 24 Kodak images at their native scale
(portrait ones turned), so it has real photographic detail and a realistic bitrate;
``--photo upscale`` instead enlarges one Kodak image with Pillow (smoother, fewer bits).

Every step runs in a fresh process, started by a small launcher process (a child forked from
this script would inherit its RSS as a high-water mark), and its peak RSS is ``ru_maxrss`` from
``os.wait4`` on that process, so each figure is that step's own peak:

- ``load model``: import compressml, load the checkpoint, hash the weights (the floor under every step);
- ``compress`` / ``decompress``: the real CLI, ``compressml.cli.main([...])`` (PNG read, tiled
  transforms since the image is above ``TILE_PIXELS``, rANS, file written);
- ``compress untiled`` / ``decompress untiled`` (for comparison): the same work with
  ``tile_pixels`` above the image size, so the transforms see the whole image at once; run under
  an address-space limit (``--untiled-limit-gib``, default 20) so it cannot take the machine down.

Models: mean_scale at the demo size (64/96, conf/experiment/demo.yaml; the checkpoint of
benchmarks/bench_models.py, trained first when missing) and at the default size (128/192,
conf/model/lae/mean_scale.yaml; a trained checkpoint if one is cached or given, else
random-init weights with updated CDF tables, saved as a Lightning checkpoint).

Seams: on a 1536x1536 crop (above TILE_PIXELS, so the default path tiles) the bitstream of the
default (tiled) encode is compared with an untiled one, and the tiled decode with an untiled
decode of the same file; at 4096x4096 the tiled and untiled files and PNGs are compared too.

    .venv/bin/python benchmarks/large_image_memory.py
    .venv/bin/python benchmarks/large_image_memory.py --no-untiled --models demo
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_common import RESULTS, ROOT, finish, machine_info
from bench_models import SIZES, checkpoint_path, ensure_checkpoint, random_checkpoint

DEFAULT_KODAK = (ROOT / ".." / "shared" / "data" / "kodak").resolve()
WORK = Path("/tmp/compressml-bench/large")
UNTILED = 1 << 62  # tile_pixels above any image: the transforms see the whole image

CLI = "import sys; from compressml.cli import main; sys.exit(main(sys.argv[1:]))"
LOAD_ONLY = "import sys; from compressml.codec.files import CodecModel; CodecModel.load(sys.argv[1])"
# compress_file / decompress_file with the tiling threshold moved above the image (the CLI offers no switch)
UNTILED_COMPRESS = f"""
import sys, torch
from pathlib import Path
from compressml.codec import lae as lae_codec
from compressml.codec.files import CodecModel, read_source
src, dst, ckpt = sys.argv[1:4]
model = CodecModel.load(ckpt)
image = read_source(Path(src))
with torch.no_grad():
    data = lae_codec.encode(model.net, image, model.fingerprint, tile_pixels={UNTILED}).to_bytes()
Path(dst).write_bytes(data)
"""
UNTILED_DECOMPRESS = f"""
import sys, torch
from pathlib import Path
from compressml.codec import lae as lae_codec
from compressml.codec.files import CodecModel, read_container, to_pil
src, dst, ckpt = sys.argv[1:4]
model = CodecModel.load(ckpt)
with torch.no_grad():
    image = lae_codec.decode(model.net, read_container(Path(src)), model.fingerprint, tile_pixels={UNTILED})
to_pil(image).save(dst, format="PNG")
"""


def make_photo(kodak: Path, side: int, kind: str, dest: Path) -> Path:
    from PIL import Image

    paths = sorted(kodak.glob("kodim*.png"))
    if not paths:
        raise SystemExit(f"no kodim*.png in {kodak}")
    if kind == "upscale":
        with Image.open(paths[22 if len(paths) > 22 else 0]) as im:  # kodim23 (parrots)
            photo = im.convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    else:
        cell_w, cell_h = 768, 512
        photo = Image.new("RGB", (side, side))
        k = 0
        for top in range(0, side, cell_h):
            for left in range(0, side, cell_w):
                with Image.open(paths[k % len(paths)]) as im:
                    tile = im.convert("RGB")
                if tile.height > tile.width:
                    tile = tile.transpose(Image.Transpose.ROTATE_90)
                if (k // len(paths)) % 2:  # second round: mirrored, so no cell repeats exactly
                    tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                photo.paste(tile.resize((cell_w, cell_h)) if tile.size != (cell_w, cell_h) else tile, (left, top))
                k += 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    photo.save(dest, format="PNG", compress_level=1)
    return dest


# A small process between this one and each step: a child forked from a large process starts with that
# process's RSS as its high-water mark (and exec keeps it), so ru_maxrss would include this script's own
# torch and photo. The launcher is a fresh, small interpreter; the step it starts is measured cleanly.
LAUNCHER = """
import json, os, subprocess, sys, time
t = time.perf_counter()
p = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(p.pid, 0)
wall = time.perf_counter() - t
p.returncode = code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as f:
    json.dump({"exit_code": code, "wall_s": wall, "maxrss_kib": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime}, f)
"""


def run_step(code: str, args: list[str], log: Path, limit_gib: float | None = None) -> dict:
    """Run ``python -c code args`` in a fresh process (via LAUNCHER); its own wall time and peak RSS."""
    import json

    if limit_gib:  # the step limits its own address space before importing anything
        n = int(limit_gib * 2**30)
        code = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({n}, {n}))\n" + code
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    usage_file = log.with_suffix(".usage.json")
    usage_file.unlink(missing_ok=True)
    with open(log, "w") as out:
        subprocess.run(
            [sys.executable, "-c", LAUNCHER, str(usage_file), sys.executable, "-c", code, *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    usage = json.loads(usage_file.read_text())
    text = log.read_text(errors="replace").strip()
    return {
        "ok": usage["exit_code"] == 0,
        "exit_code": usage["exit_code"],
        "wall_s": round(usage["wall_s"], 2),
        "peak_rss_mib": round(usage["maxrss_kib"] / 1024, 1),  # ru_maxrss is in KiB on Linux
        "cpu_s": round(usage["cpu_s"], 2),
        "output_tail": text.splitlines()[-1][:300] if text else "",
    }


TILE_SIDE = 32 * 16  # compressml.codec.tiling: 32 latent pixels a tile, 16 image pixels each


def border_stats(differs, near: int = 8) -> dict:
    """Where differing pixels lie: a seam would put them along the tile borders (every 512 pixels)."""
    import numpy as np

    def near_border(n: int):
        borders = np.arange(TILE_SIDE, n, TILE_SIDE)  # inner borders only, not the image's own edges
        return (np.abs(np.arange(n)[:, None] - borders[None, :]) < near).any(axis=1)

    h, w = differs.shape
    band = near_border(h)[:, None] | near_border(w)[None, :]
    return {
        "pixels_differing": int(differs.sum()),
        "differing_within_8px_of_tile_borders": int((differs & band).sum()),
        "area_fraction_within_8px_of_tile_borders": round(float(band.mean()), 4),
    }


def compare_pngs(a: Path, b: Path) -> dict:
    import numpy as np
    from PIL import Image

    with Image.open(a) as ia, Image.open(b) as ib:
        x, y = np.asarray(ia, dtype=np.int16), np.asarray(ib, dtype=np.int16)
    d = np.abs(x - y)
    return {"max_abs_diff_levels": int(d.max()), **border_stats(d.max(axis=-1) > 0)}


def psnr_png(decoded: Path, original: Path) -> float:
    import numpy as np
    from PIL import Image

    with Image.open(decoded) as ia, Image.open(original) as ib:
        x, y = np.asarray(ia, dtype=np.float64), np.asarray(ib.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def seam_check(ckpt: Path, photo: Path, crop: int) -> dict:
    """Default (tiled) vs untiled encode of a crop above TILE_PIXELS: same bits? same pixels?"""
    import torch

    from compressml.codec import container as cml
    from compressml.codec import lae as lae_codec
    from compressml.codec.files import CodecModel, read_source
    from compressml.codec.lae import SourceImage

    model = CodecModel.load(ckpt)
    full = read_source(photo)
    top = left = max(0, (full.rgb.shape[-1] - crop) // 2 - 256)
    image = SourceImage(rgb=full.rgb[:, top : top + crop, left : left + crop].clone())
    del full
    assert crop * crop > lae_codec.TILE_PIXELS, "the crop must be above TILE_PIXELS for the default path to tile"
    with torch.no_grad():
        t = time.perf_counter()
        tiled = lae_codec.encode(model.net, image, model.fingerprint).to_bytes()  # default tile_pixels: tiled here
        t_tiled = time.perf_counter() - t
        t = time.perf_counter()
        whole = lae_codec.encode(model.net, image, model.fingerprint, tile_pixels=UNTILED).to_bytes()
        t_whole = time.perf_counter() - t
        dec_tiled = lae_codec.decode(model.net, cml.parse(tiled), model.fingerprint).rgb
        dec_whole = lae_codec.decode(model.net, cml.parse(tiled), model.fingerprint, tile_pixels=UNTILED).rgb

    def to8(x):
        return x.clamp(0, 1).mul(255).round().to(torch.int16)

    diff = (to8(dec_tiled) - to8(dec_whole)).abs()
    differing_bytes = sum(a != b for a, b in zip(tiled, whole)) + abs(len(tiled) - len(whole))
    return {
        "crop": [crop, crop],
        "offset": [top, left],
        "tile_pixels_default": lae_codec.TILE_PIXELS,
        "identical_bitstreams": tiled == whole,
        "bytes": len(tiled),
        "bytes_untiled": len(whole),
        "differing_bytes": int(differing_bytes),
        "decode_max_abs_diff_levels": int(diff.max()),
        **{f"decode_{k}": v for k, v in border_stats((diff.amax(0) > 0).numpy()).items()},
        "decode_max_abs_diff_float": float((dec_tiled - dec_whole).abs().max()),
        "encode_s_tiled": round(t_tiled, 2),
        "encode_s_untiled": round(t_whole, 2),
    }


def bench_model(name: str, ckpt: Path, weights: str, photo: Path, args) -> dict:
    from compressml.codec.files import CodecModel

    work = WORK / name.replace(" ", "-").replace("/", "x")
    work.mkdir(parents=True, exist_ok=True)
    net = CodecModel.load(ckpt).net
    n_params = sum(p.numel() for p in net.parameters())
    del net
    cml_file, png_file = work / "photo.cml", work / "photo.png"
    steps = {}
    print(f"[{name}] load model ...", flush=True)
    steps["load model"] = run_step(LOAD_ONLY, [str(ckpt)], work / "load.log")
    print(f"[{name}] compress (CLI, tiled) ...", flush=True)
    steps["compress"] = run_step(CLI, ["compress", str(photo), "-m", str(ckpt), "-o", str(cml_file), "--force"], work / "compress.log")
    print(f"[{name}] decompress (CLI, tiled) ...", flush=True)
    steps["decompress"] = run_step(
        CLI, ["decompress", str(cml_file), "-m", str(ckpt), "-o", str(png_file), "--force"], work / "decompress.log"
    )
    side = args.side
    result = {"model": name, "weights": weights, "checkpoint": str(ckpt), "parameters": n_params, "steps": steps}
    if cml_file.is_file():
        result["bytes"] = cml_file.stat().st_size
        result["bpp"] = 8 * cml_file.stat().st_size / (side * side)
    if png_file.is_file():
        result["psnr_db"] = round(psnr_png(png_file, photo), 2)
    if args.untiled:
        ucml, upng = work / "photo-untiled.cml", work / "photo-untiled.png"
        print(f"[{name}] compress untiled (limit {args.untiled_limit_gib} GiB address space) ...", flush=True)
        steps["compress untiled"] = run_step(
            UNTILED_COMPRESS, [str(photo), str(ucml), str(ckpt)], work / "compress-untiled.log", args.untiled_limit_gib
        )
        if steps["compress untiled"]["ok"] and steps["compress"]["ok"]:
            result["untiled_file_identical"] = ucml.read_bytes() == cml_file.read_bytes()
        if steps["compress"]["ok"]:  # decode the CLI's file untiled: same bits in, compare the pixels
            print(f"[{name}] decompress untiled ...", flush=True)
            steps["decompress untiled"] = run_step(
                UNTILED_DECOMPRESS, [str(cml_file), str(upng), str(ckpt)], work / "decompress-untiled.log", args.untiled_limit_gib
            )
            if steps["decompress untiled"]["ok"] and png_file.is_file():
                result["tiled_vs_untiled_decode"] = compare_pngs(png_file, upng)
        for f in (ucml, upng):
            f.unlink(missing_ok=True)
    for f in (cml_file, png_file):
        f.unlink(missing_ok=True)
    return result


def print_tables(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 130))
    side = results["settings"]["side"]
    table = Table(title=f"{side}x{side} photo through the CLI on CPU: peak RSS per step (fresh process each)")
    for col in ("model", "weights", "step", "peak RSS (MiB)", "wall (s)", "CPU (s)", "ok"):
        table.add_column(col, justify="right" if col in ("peak RSS (MiB)", "wall (s)", "CPU (s)") else "left")
    for r in results["models"]:
        for i, (step, s) in enumerate(r["steps"].items()):
            table.add_row(
                r["model"] if i == 0 else "",
                r["weights"] if i == 0 else "",
                step,
                f"{s['peak_rss_mib']:.0f}",
                f"{s['wall_s']:.1f}",
                f"{s['cpu_s']:.1f}",
                "yes" if s["ok"] else f"NO ({s['output_tail'][:60]})",
            )
    console.print(table)
    for r in results["models"]:
        extra = [f"{r['model']}: {r.get('bytes', '?')} bytes = {r.get('bpp', float('nan')):.4f} bpp, PSNR {r.get('psnr_db', '?')} dB"]
        if "untiled_file_identical" in r:
            extra.append(f"tiled file == untiled file: {r['untiled_file_identical']}")
        if "tiled_vs_untiled_decode" in r:
            d = r["tiled_vs_untiled_decode"]
            extra.append(
                f"tiled vs untiled decode: max |diff| {d['max_abs_diff_levels']} levels, {d['pixels_differing']} pixels differ "
                f"({d['differing_within_8px_of_tile_borders']} within 8 px of a tile border, which is "
                f"{100 * d['area_fraction_within_8px_of_tile_borders']:.1f}% of the area)"
            )
        console.print("; ".join(extra))
    for name, s in results["seams"].items():
        console.print(
            f"seams ({name}, {s['crop'][0]}x{s['crop'][1]} crop, default tiled vs untiled): identical bitstreams {s['identical_bitstreams']} "
            f"({s['differing_bytes']} bytes differ of {s['bytes']}); decode tiled vs untiled: max |diff| {s['decode_max_abs_diff_levels']} "
            f"levels ({s['decode_pixels_differing']} pixels, {s['decode_differing_within_8px_of_tile_borders']} of them within 8 px of a "
            f"tile border), {s['decode_max_abs_diff_float']:.2e} in float"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", type=int, default=4096, help="the photo is SIDE x SIDE pixels")
    p.add_argument("--photo", choices=["mosaic", "upscale"], default="mosaic")
    p.add_argument("--kodak", type=Path, default=DEFAULT_KODAK)
    p.add_argument("--models", nargs="+", choices=list(SIZES), default=list(SIZES))
    p.add_argument("--checkpoint-demo", type=Path, help="mean_scale 64/96 checkpoint (default: benchmarks/bench_models.py's)")
    p.add_argument("--checkpoint-default", type=Path, help="mean_scale 128/192 checkpoint (default: cached trained one, else random)")
    p.add_argument("--train-epochs", type=int, default=10, help="when the demo-size checkpoint has to be trained first")
    p.add_argument("--crop", type=int, default=1536, help="side of the crop for the seam check")
    p.add_argument("--no-untiled", dest="untiled", action="store_false", help="skip the untiled comparison runs")
    p.add_argument("--untiled-limit-gib", type=float, default=20.0)
    p.add_argument("--out", type=Path, default=RESULTS / "large_image_memory.json")
    args = p.parse_args(argv)

    started = time.perf_counter()
    photo = make_photo(args.kodak, args.side, args.photo, WORK / f"photo-{args.photo}-{args.side}.png")
    print(f"photo: {photo} ({photo.stat().st_size / 2**20:.1f} MiB PNG)", flush=True)

    models = []
    for size in args.models:
        given = args.checkpoint_demo if size == "demo" else args.checkpoint_default
        if given:
            models.append((size, given, "given checkpoint"))
        elif size == "demo":
            models.append((size, ensure_checkpoint("mean_scale", "demo", args.train_epochs), "trained (bench_models.py)"))
        elif checkpoint_path("mean_scale", size).is_file():
            models.append((size, checkpoint_path("mean_scale", size), "trained (bench_models.py)"))
        else:
            dest = WORK / f"mean_scale-{size}-random.ckpt"
            models.append((size, dest if dest.is_file() else random_checkpoint("mean_scale", size, dest), "random init, CDFs updated"))

    results = {
        "benchmark": "large_image_memory",
        "machine": machine_info(),
        "settings": {
            "side": args.side,
            "photo": args.photo,
            "photo_path": str(photo),
            "untiled": args.untiled,
            "untiled_limit_gib": args.untiled_limit_gib,
            "peak_rss": "ru_maxrss (os.wait4) of each step's own process, started by a small launcher process",
        },
        "models": [],
        "seams": {},
    }
    for size, ckpt, weights in models:
        channels, latent = SIZES[size]
        name = f"mean_scale {channels}/{latent}"
        results["models"].append(bench_model(name, ckpt, weights, photo, args))
        print(f"[{name}] seam check on a {args.crop}x{args.crop} crop ...", flush=True)
        results["seams"][name] = seam_check(ckpt, photo, args.crop)
    return finish(results, args.out, print_tables, started)


if __name__ == "__main__":
    sys.exit(main())
