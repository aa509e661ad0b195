"""Encode/decode time per Kodak image: compressml's codec path vs CompressAI's own calls vs Pillow JPEG.

For each LAE variant (factorized, hyperprior, mean_scale) and each Kodak image:

(a) compressml — what ``compressml compress`` / ``decompress`` do per image, from the decoded
    source image (a ``SourceImage`` from ``read_source``) to the ``.cml`` bytes and back:
      encode: ``compressml.codec.lae.encode(net, image, fingerprint).to_bytes()``
              (padding, the tiling decision, model.compress, container + CRC);
      decode: ``container.parse(data)`` + ``compressml.codec.lae.decode(net, container, fingerprint)``
              (validation, model.decompress, crop, clamp).
    Not included: process start-up, loading the checkpoint and hashing the weights (once per
    process), reading the PNG and writing the output file; those two are timed apart, once
    ("PNG read" = ``read_source``, "PNG write" = ``to_pil`` + PNG save to memory).
(b) CompressAI — ``net.compress(x_padded)`` / ``net.decompress(strings, shape)`` on the same
    network and the same padded tensor, under ``torch.no_grad()``.
(c) Pillow JPEG, quality 75, 4:2:0: ``Image.save(BytesIO, "JPEG")`` / ``Image.open(...).load()``.

Paths (a) and (b) are interleaved per repeat (a b, then b a, ...). Per image, the median of
``--repeats`` runs; the table shows the mean over images and the ratio (a)/(b) of those means
(target <= 1.05), the median of the per-image ratios, and 1 + (a)'s own overhead / (b), where
the overhead is (a) timed with the network's compress/decompress answering from memory (the
least noisy of the three on a shared machine). The strings and reconstructions of (a) and (b)
are checked to be identical.

    .venv/bin/python benchmarks/codec_speed.py                 # trains missing checkpoints first (cached in /tmp)
    .venv/bin/python benchmarks/codec_speed.py --checkpoint mean_scale=path/to/last.ckpt --images 4
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import time
from pathlib import Path

from bench_common import RESULTS, ROOT, finish, machine_info, mean, median
from bench_models import SIZES, VARIANTS, ensure_checkpoint, parse_checkpoint_options

DEFAULT_KODAK = (ROOT / ".." / "shared" / "data" / "kodak").resolve()


def psnr(a, b) -> float:
    import torch

    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def quantize(x):
    """[0, 1] float -> 8-bit levels back in [0, 1], as a decoded PNG would hold."""
    return x.clamp(0, 1).mul(255).round().div(255)


def bench_variant(variant: str, ckpt: Path, images: list[dict], repeats: int, progress) -> dict:
    import torch

    from compressml.codec import container as cml
    from compressml.codec import lae as lae_codec
    from compressml.codec.files import CodecModel
    from compressml.models.lae import stride_of
    from compressml.models.padding import pad_to_multiple

    model = CodecModel.load(ckpt)
    net, fp = model.net.eval(), model.fingerprint
    stride = stride_of(net)

    def a_encode(src):
        with torch.no_grad():
            return lae_codec.encode(net, src, fp).to_bytes()

    def a_decode(data):
        with torch.no_grad():
            return lae_codec.decode(net, cml.parse(data), fp)

    def b_encode(x_pad):
        with torch.no_grad():
            return net.compress(x_pad)

    def b_decode(out):
        with torch.no_grad():
            return net.decompress(out["strings"], out["shape"])

    def timed(fn, arg):
        t = time.perf_counter()
        r = fn(arg)
        return time.perf_counter() - t, r

    # warm-up: one pass of every path on the first image
    first = images[0]
    x_pad0 = pad_to_multiple(first["src"].rgb[None], stride)[0]
    a_decode(a_encode(first["src"]))
    b_decode(b_encode(x_pad0))

    rows = []
    task = progress.add_task(variant, total=len(images))
    for img in images:
        src = img["src"]
        x_pad = pad_to_multiple(src.rgb[None], stride)[0]
        t = {k: [] for k in ("a_enc", "b_enc", "a_dec", "b_dec")}
        for r in range(repeats):
            order = ("a", "b") if r % 2 == 0 else ("b", "a")
            for path in order:
                if path == "a":
                    dt, data = timed(a_encode, src)
                    t["a_enc"].append(dt)
                else:
                    dt, out = timed(b_encode, x_pad)
                    t["b_enc"].append(dt)
            for path in order:
                if path == "a":
                    dt, decoded = timed(a_decode, data)
                    t["a_dec"].append(dt)
                else:
                    dt, b_out = timed(b_decode, out)
                    t["b_dec"].append(dt)
        overhead = codec_overhead(net, a_encode, a_decode, src, data, out, b_out)
        container = cml.parse(data)
        same_strings = lae_codec.coded_strings(container) == [s[0] for s in out["strings"]]
        h, w = src.rgb.shape[-2:]
        same_pixels = torch.equal(decoded.rgb, b_out["x_hat"][0, :, :h, :w].clamp(0, 1))
        rows.append(
            {
                "image": img["path"].name,
                "height": h,
                "width": w,
                "cml_bytes": len(data),
                "bpp_cml": 8 * len(data) / (h * w),
                "bpp_strings": 8 * sum(len(s[0]) for s in out["strings"]) / (h * w),
                "psnr_db": psnr(quantize(decoded.rgb), src.rgb),
                "identical_strings": bool(same_strings),
                "identical_reconstruction": bool(same_pixels),
                **{f"{k}_s": median(v) for k, v in t.items()},
                **overhead,
                "raw_s": t,
            }
        )
        progress.advance(task)

    summary = {k: mean([r[f"{k}_s"] for r in rows]) for k in ("a_enc", "b_enc", "a_dec", "b_dec", "overhead_enc", "overhead_dec")}
    summary.update(
        {
            "encode_ratio_from_overhead": 1 + summary["overhead_enc"] / summary["b_enc"],
            "decode_ratio_from_overhead": 1 + summary["overhead_dec"] / summary["b_dec"],
            "encode_ratio": summary["a_enc"] / summary["b_enc"],
            "decode_ratio": summary["a_dec"] / summary["b_dec"],
            "encode_ratio_median_per_image": median([r["a_enc_s"] / r["b_enc_s"] for r in rows]),
            "decode_ratio_median_per_image": median([r["a_dec_s"] / r["b_dec_s"] for r in rows]),
            "bpp_cml": mean([r["bpp_cml"] for r in rows]),
            "bpp_strings": mean([r["bpp_strings"] for r in rows]),
            "psnr_db": mean([r["psnr_db"] for r in rows]),
            "all_strings_identical": all(r["identical_strings"] for r in rows),
            "all_reconstructions_identical": all(r["identical_reconstruction"] for r in rows),
        }
    )
    hp = {"channels": net.g_a[0].out_channels, "latent_channels": net.g_a[-1].out_channels}
    return {"checkpoint": str(ckpt), "net": hp, "summary": summary, "images": rows}


def codec_overhead(net, a_encode, a_decode, src, data: bytes, b_enc_out: dict, b_dec_out: dict, repeats: int = 20) -> dict:
    """Seconds (a) spends outside the network and rANS: the same (a) calls with ``net.compress`` and
    ``net.decompress`` answering from memory (their results for this image). Unlike (a) - (b), this
    is not drowned by noise from other processes: it is the smallest of ``repeats`` runs."""
    net.compress = lambda x: b_enc_out
    net.decompress = lambda strings, shape: {"x_hat": b_dec_out["x_hat"]}  # (a) clamps it in place: harmless
    try:
        enc, dec = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            a_encode(src)
            enc.append(time.perf_counter() - t)
            t = time.perf_counter()
            a_decode(data)
            dec.append(time.perf_counter() - t)
    finally:
        del net.compress, net.decompress  # the class's methods again
    return {"overhead_enc_s": min(enc), "overhead_dec_s": min(dec)}


def bench_png_io(images: list[dict], repeats: int, progress) -> dict:
    """The file I/O around the codec in the CLI (not in (a)): reading the source PNG, writing a decoded PNG."""
    from compressml.codec.files import read_source, to_pil

    rows = []
    task = progress.add_task("png i/o", total=len(images))
    for img in images:
        read, write = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            read_source(img["path"])
            read.append(time.perf_counter() - t)
            t = time.perf_counter()
            to_pil(img["src"]).save(io.BytesIO(), format="PNG")
            write.append(time.perf_counter() - t)
        rows.append({"image": img["path"].name, "read_s": median(read), "write_s": median(write)})
        progress.advance(task)
    return {"summary": {k: mean([r[k] for r in rows]) for k in ("read_s", "write_s")}, "images": rows}


def bench_jpeg(images: list[dict], repeats: int, quality: int, progress) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    def encode(pil):
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality, subsampling=2)  # 2 = 4:2:0
        return buf.getvalue()

    def decode(data):
        im = Image.open(io.BytesIO(data))
        im.load()
        return im

    decode(encode(images[0]["pil"]))  # warm-up
    rows = []
    task = progress.add_task("jpeg", total=len(images))
    for img in images:
        enc, dec = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            data = encode(img["pil"])
            enc.append(time.perf_counter() - t)
            t = time.perf_counter()
            im = decode(data)
            dec.append(time.perf_counter() - t)
        h, w = img["pil"].height, img["pil"].width
        rec = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
        rows.append(
            {
                "image": img["path"].name,
                "bytes": len(data),
                "bpp": 8 * len(data) / (h * w),
                "psnr_db": psnr(rec, img["src"].rgb),
                "enc_s": median(enc),
                "dec_s": median(dec),
            }
        )
        progress.advance(task)
    summary = {k: mean([r[k] for r in rows]) for k in ("enc_s", "dec_s", "bpp", "psnr_db")}
    return {"quality": quality, "subsampling": "4:2:0", "summary": summary, "images": rows}


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def ms(seconds: float) -> str:
        return f"{1000 * seconds:.1f}"

    table = Table(
        title=f"Kodak codec speed, ms per image (mean over {results['settings']['images']} images, "
        f"median of {results['settings']['repeats']}), {results['machine']['torch_threads']} thread(s)"
    )
    for col in (
        "codec",
        "N/M",
        "bpp",
        "PSNR",
        "enc (a) cml",
        "enc (b) cai",
        "enc a/b",
        "(med)",
        "(ovh)",
        "dec (a) cml",
        "dec (b) cai",
        "dec a/b",
        "(med)",
        "(ovh)",
        "same bits",
    ):
        table.add_column(col, justify="left" if col in ("codec", "N/M") else "right")
    for variant, r in results["variants"].items():
        s, net = r["summary"], r["net"]
        table.add_row(
            variant,
            f"{net.get('channels', '?')}/{net.get('latent_channels', '?')}",
            f"{s['bpp_cml']:.3f}",
            f"{s['psnr_db']:.2f}",
            ms(s["a_enc"]),
            ms(s["b_enc"]),
            f"{s['encode_ratio']:.3f}",
            f"{s['encode_ratio_median_per_image']:.3f}",
            f"{s['encode_ratio_from_overhead']:.4f}",
            ms(s["a_dec"]),
            ms(s["b_dec"]),
            f"{s['decode_ratio']:.3f}",
            f"{s['decode_ratio_median_per_image']:.3f}",
            f"{s['decode_ratio_from_overhead']:.4f}",
            "yes" if s["all_strings_identical"] and s["all_reconstructions_identical"] else "NO",
        )
    if "jpeg" in results:
        j = results["jpeg"]["summary"]
        table.add_row(
            f"JPEG q{results['jpeg']['quality']} 420",
            "-",
            f"{j['bpp']:.3f}",
            f"{j['psnr_db']:.2f}",
            ms(j["enc_s"]),
            "-",
            "-",
            "-",
            "-",
            ms(j["dec_s"]),
            "-",
            "-",
            "-",
            "-",
            "-",
        )
    Console(width=max(Console().width, 200)).print(table)
    print(
        "(a) cml: compressml encode(...).to_bytes() / parse + decode; (b) cai: CompressAI net.compress / net.decompress "
        "on the same padded tensor; a/b: ratio of the means (target <= 1.05), (med): median of the per-image ratios, (ovh): 1 + (a)'s own overhead / (b), the overhead timed with "
        "the network's compress/decompress answering from memory; same bits: identical strings and reconstructions"
    )
    overhead = ", ".join(
        f"{v} {ms(r['summary']['overhead_enc'])}/{ms(r['summary']['overhead_dec'])}" for v, r in results["variants"].items()
    )
    print(f"(a)'s overhead, encode/decode ms per image: {overhead}")
    if "png_io" in results:
        io_ = results["png_io"]["summary"]
        print(
            f"file I/O the CLI adds per image (not in (a)): PNG read (read_source) {ms(io_['read_s'])} ms, "
            f"PNG write (to_pil + save) {ms(io_['write_s'])} ms"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="VARIANT=PATH",
        help="a Lightning checkpoint from train.py for VARIANT (repeatable); others are trained briefly and cached",
    )
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--size", default="demo", choices=SIZES, help="channels of the models trained for missing checkpoints")
    p.add_argument("--train-epochs", type=int, default=10, help="epochs of the demo training for missing checkpoints")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=24, help="first N Kodak images")
    p.add_argument("--kodak", type=Path, default=DEFAULT_KODAK)
    p.add_argument("--jpeg-quality", type=int, default=75)
    p.add_argument("--out", type=Path, default=RESULTS / "codec_speed.json")
    args = p.parse_args(argv)

    import torch
    from PIL import Image
    from rich.progress import Progress

    from compressml.codec.files import read_source

    given = parse_checkpoint_options(args.checkpoint)
    paths = sorted(args.kodak.glob("kodim*.png"))[: args.images]
    if not paths:
        raise SystemExit(f"no kodim*.png in {args.kodak}")
    checkpoints = {v: given.get(v) or ensure_checkpoint(v, args.size, args.train_epochs) for v in args.variants}

    torch.set_num_threads(args.threads)
    images = []
    for path in paths:
        with Image.open(path) as im:
            pil = im.convert("RGB")
        images.append({"path": path, "src": read_source(path), "pil": pil})

    started = time.perf_counter()
    results = {
        "benchmark": "codec_speed",
        "machine": machine_info(torch.get_num_threads()),
        "settings": {
            "images": len(images),
            "repeats": args.repeats,
            "kodak": str(args.kodak),
            "timed": {
                "a_enc": "compressml.codec.lae.encode(net, SourceImage, fingerprint).to_bytes()",
                "a_dec": "compressml.codec.container.parse(bytes) + compressml.codec.lae.decode(net, container, fingerprint)",
                "b_enc": "net.compress(x_padded) under torch.no_grad()",
                "b_dec": "net.decompress(strings, shape) under torch.no_grad()",
                "overhead": "a_enc / a_dec with net.compress / net.decompress answering from memory; min of 20",
                "png_read": "compressml.codec.files.read_source(path)",
                "png_write": "to_pil(original).save(BytesIO, 'PNG')",
                "statistic": "median over repeats per image, then mean over images; ratio = mean(a) / mean(b)",
            },
        },
        "variants": {},
    }
    with Progress(transient=True) as progress:
        for variant in args.variants:
            results["variants"][variant] = bench_variant(variant, checkpoints[variant], images, args.repeats, progress)
        results["jpeg"] = bench_jpeg(images, args.repeats, args.jpeg_quality, progress)
        results["png_io"] = bench_png_io(images, args.repeats, progress)
    return finish(results, args.out, print_table, started)


if __name__ == "__main__":
    sys.exit(main())
