"""The ``compressml`` command. User mistakes end as one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from compressml.errors import CompressMLError


def _download_kodak(args: argparse.Namespace) -> int:
    from compressml.data.kodak import KODAK_URL, default_cache_dir, download_kodak

    dest = download_kodak(args.dest or default_cache_dir() / "kodak", base_url=args.url or KODAK_URL)
    print(f"Kodak images ready in {dest} (SHA-256 verified); use them with: python train.py ... or data=kodak data.root={dest}")
    return 0


def _outputs(pairs, out: str | None, suffix: str) -> list:
    """Map inputs to outputs: a single file may name its output file, otherwise OUT is a folder;
    without OUT, each output lies beside its input (photo.png -> photo.cml)."""
    if out is None:
        jobs = [(src, src.with_suffix(suffix)) for src, _ in pairs]
    elif len(pairs) == 1 and not Path(out).is_dir() and Path(out).suffix:
        jobs = [(pairs[0][0], Path(out))]
    else:
        jobs = [(src, Path(out) / rel.with_suffix(suffix)) for src, rel in pairs]
    seen: dict[Path, Path] = {}
    for src, dst in jobs:  # photo.png and photo.jpg would both become photo.cml
        if dst in seen:
            raise CompressMLError(f"{seen[dst]} and {src} would both be written to {dst}: give them separately")
        seen[dst] = src
    return jobs


def _compress(args: argparse.Namespace) -> int:
    from compressml.codec.batch import run_batch
    from compressml.codec.files import RateRequest, compress_file, expand_inputs
    from compressml.codec.rate_control import TARGETS
    from compressml.data.images import IMAGE_SUFFIXES

    jobs = _outputs(expand_inputs(args.inputs, IMAGE_SUFFIXES), args.output, ".cml")
    _refuse_existing([dst for _, dst in jobs], args.force)
    targets = [(t, getattr(args, t)) for t in TARGETS if getattr(args, t) is not None]
    if len(targets) > 1:
        raise CompressMLError("give one of --max-bytes, --bpp, --psnr, --ms-ssim")
    target, value = targets[0] if targets else (None, None)
    given = [("-q", args.quality), ("--roi-quality", args.roi_quality)] + ([(f"--{target.replace('_', '-')}", value)] if target else [])
    for name, v in given:
        if v is not None and not math.isfinite(v):
            raise CompressMLError(f"{name} must be a finite number, got {v}")
    if target is not None and args.quality is not None and args.model is None:
        raise CompressMLError("give -q or a rate-control target (--max-bytes, --bpp, --psnr, --ms-ssim), not both")
    if args.roi is None and args.roi_quality is not None:
        raise CompressMLError("--roi-quality goes with --roi MASK")
    request = RateRequest(target=target, value=value, roi=Path(args.roi) if args.roi else None, roi_quality=args.roi_quality)
    if args.max_error is not None:
        model = _near_lossless(args, target)
    else:
        model = _lossy_model(args, target, request)
    if request.roi is not None and len(jobs) > 1:
        raise CompressMLError("--roi MASK is for one image (the mask has its size)")

    def work(src: Path, dst: Path) -> dict:
        r = compress_file(model, src, dst, force=args.force, request=request)
        return {**r, "bytes_in": src.stat().st_size, "bytes_out": r["bytes"]}

    def line(r: dict) -> str:
        chosen = f" ({r['rung']}, {_achieved(target, r['achieved'])}, {r['passes']} coding passes)" if "rung" in r else ""
        return f"{r['input']} -> {r['output']}: {r['bytes']} bytes, {r['bpp']:.4f} bpp{chosen}"

    return _finish(run_batch(jobs, work, line, "compressing"), len(jobs), "compressed")


def _near_lossless(args: argparse.Namespace, target: str | None):
    """``--max-error D``: an MLLAE in lossless mode (the premade mllae-lossless without -m)."""
    from compressml.codec.loader import load_codec

    others = [
        ("-q", args.quality is not None),
        ("rate control", target is not None),
        ("--roi", args.roi is not None),
        ("--refine", bool(args.refine)),
        ("--base", args.base is not None),
        ("--decoding-mode", args.decoding_mode is not None),
    ]
    clash = [name for name, given in others if given]
    if clash:
        raise CompressMLError(f"--max-error (near-lossless MLLAE) does not go with {clash[0]}")
    if args.model is None:
        print(f"model: premade mllae-lossless (--max-error {args.max_error})")
    model = load_codec(_model_path(args.model or "mllae-lossless"))
    if not hasattr(model, "near_lossless"):
        raise CompressMLError("--max-error needs an MLLAE in lossless mode, not the hybrid codec")
    return model.near_lossless(args.max_error)


def _lossy_model(args: argparse.Namespace, target: str | None, request):
    """The codec of a compress without --max-error: the premade LAE(s) without -m, else the model given."""
    from compressml.codec.loader import load_codec

    value = request.value
    default = _default_lae() if args.model is None else None
    if args.model is None and args.base is not None:
        raise CompressMLError("--base needs -m RED_MODEL (the hybrid codec's upscaler)")
    if default is not None:  # the premade variable-rate LAE: -q 0..100 or rate control
        if args.quality is not None and not 0 <= args.quality <= 100:
            raise CompressMLError(f"-q must be a quality from 0 to 100, got {args.quality:g}")
        what = (
            f"rate control: --{target.replace('_', '-')} {value:g}"
            if target
            else f"-q {args.quality if args.quality is not None else 75:g}"
        )
        print(f"model: premade {default.name} ({what})")
        model = load_codec(str(default.bundle), None, args.quality)
    elif args.model is None:  # the premade fixed-rate LAE family; -q picks the rate
        from compressml import premade

        if target is not None:
            if not premade.lae_family():
                raise CompressMLError("this installation has no premade LAE models: give a model with -m")
            request.ladder = [load_codec(str(m.bundle)) for m in premade.lae_family()]
            print(
                f"models: premade {', '.join(m.name for m in premade.lae_family())} (rate control: --{target.replace('_', '-')} {value:g})"
            )
            model = request.ladder[0]
        else:
            if args.quality is not None and args.quality != int(args.quality):
                raise CompressMLError("-q picks a premade LAE: a whole number")
            chosen = premade.lae_for_quality(None if args.quality is None else int(args.quality))
            print(f"model: premade {chosen.name} (-q {chosen.quality})")
            model = load_codec(str(chosen.bundle))
    else:
        model = load_codec(_model_path(args.model), _model_path(args.base) if args.base else None, args.quality)
    if args.refine:
        if not hasattr(model, "refined"):
            raise CompressMLError("--refine is for LAE models, not the hybrid codec")
        model = model.refined(args.refine)
    if args.decoding_mode is not None:
        if not hasattr(model, "with_decoding_mode"):
            raise CompressMLError("--decoding-mode is for LAE models, not the hybrid codec")
        model = model.with_decoding_mode(args.decoding_mode)
    if (target is not None or request.roi is not None) and not hasattr(model, "at"):
        raise CompressMLError("rate control and --roi are for LAE models, not the hybrid codec")
    return model


def _finish(result, jobs: int, what: str) -> int:
    """A batch's summary (several files) and exit status: 1 when any file failed."""
    from compressml.codec.batch import print_summary

    if jobs > 1:
        print_summary(result, f"{what}: {len(result.records)} of {jobs} file(s)")
    if result.failures:
        print(f"error: {len(result.failures)} of {jobs} file(s) failed", file=sys.stderr)
        return 1
    return 0


def _achieved(target: str, value: float) -> str:
    return {"max_bytes": f"{value:.0f} bytes", "bpp": f"{value:.4f} bpp", "psnr": f"{value:.2f} dB", "ms_ssim": f"MS-SSIM {value:.4f}"}[
        target
    ]


def _decompress(args: argparse.Namespace) -> int:
    from compressml.codec.batch import find_original, psnr_against, run_batch
    from compressml.codec.files import decompress_file, expand_inputs
    from compressml.codec.loader import load_codec

    pairs = expand_inputs(args.inputs, (".cml",))
    jobs = _outputs(pairs, args.output, "." + args.format)
    _refuse_existing([dst for _, dst in jobs], args.force)
    originals = Path(args.originals) if args.originals else None
    if originals is not None and args.region is not None:
        raise CompressMLError("--originals compares whole images; it does not go with --region")
    if originals is not None and not originals.exists():
        raise CompressMLError(f"{originals}: no such folder or file (--originals)")
    rel_of = {src: rel for src, rel in pairs}
    models = {}  # one codec per model, loaded once
    if args.base is not None and args.model is None:
        raise CompressMLError("--base needs -m RED_MODEL (the hybrid files' upscaler)")
    if args.model is not None:
        models[None] = load_codec(_model_path(args.model), _model_path(args.base) if args.base else None)

    def work(src: Path, dst: Path) -> dict:
        key = None if args.model is not None else _premade_for_file(src)
        if key not in models:
            models[key] = load_codec(key)
        r = decompress_file(models[key], src, dst, fmt=args.format, force=args.force, region=args.region)
        r.update(bytes_in=src.stat().st_size, bytes_out=dst.stat().st_size, bpp=8 * src.stat().st_size / r["pixels"])
        if originals is not None:
            original = originals if originals.is_file() else find_original(originals, rel_of[src])
            if original is None:
                raise CompressMLError(f"{src}: no original for it under {originals} (--originals)")
            r["psnr"] = psnr_against(dst, original)
        return r

    def line(r: dict) -> str:
        where = f" (region at {r['region'][0]},{r['region'][1]})" if r.get("region") else ""
        return f"{r['input']} -> {r['output']}: {r['width']}x{r['height']}{where}" + (f", {r['psnr']:.2f} dB" if "psnr" in r else "")

    return _finish(run_batch(jobs, work, line, "decompressing"), len(jobs), "decompressed")


def _upscale(args: argparse.Namespace) -> int:
    from compressml.codec.batch import run_batch
    from compressml.codec.files import expand_inputs
    from compressml.codec.upscale import Upscaler, upscale_file
    from compressml.data.images import IMAGE_SUFFIXES

    jobs = _outputs(expand_inputs(args.inputs, IMAGE_SUFFIXES), args.output, ".png")
    if any(dst.suffix.lower() != ".png" for _, dst in jobs):
        raise CompressMLError(f"{jobs[0][1]}: upscale writes PNG files; name the output .png (or give a folder)")
    _refuse_existing([dst for _, dst in jobs], args.force)
    if args.model is None and (args.scale or 2) not in (2, 4):
        raise CompressMLError(f"the premade super-resolution models are x2 and x4, got --scale {args.scale}")
    model = Upscaler.load(_model_path(args.model or f"red-x{args.scale or 2}"))
    if args.scale is not None and model.scale != args.scale:
        raise CompressMLError(f"{args.model} enlarges x{model.scale}, not x{args.scale} (--scale)")

    def work(src: Path, dst: Path) -> dict:
        r = upscale_file(model, src, dst, force=args.force, tile=args.tile)
        return {**r, "bytes_in": src.stat().st_size, "bytes_out": dst.stat().st_size}

    def line(r: dict) -> str:
        return f"{r['input']} -> {r['output']}: {r['width']}x{r['height']} (x{model.scale})"

    return _finish(run_batch(jobs, work, line, "upscaling"), len(jobs), "upscaled")


def _info(args: argparse.Namespace) -> int:
    from compressml.codec.files import describe

    for path in args.files:
        d = describe(Path(path))
        print(
            f"{d['file']}: format v{d['format_version']}, family {d['family']}, weights {d['fingerprint'][:16]}, {d['width']}x{d['height']}, "
            f"{d['channels']} channel(s), {d['bit_depth']}-bit, {d['bytes']} bytes, {d['bpp']:.4f} bpp"
            + (f", decoding mode {d['decoding_mode']}" if d["decoding_mode"] else "")
            + (f", quality {d['quality']}" if d.get("quality") else "")
            + (f", near-lossless: every sample within ±{d['max_error']}" if d.get("max_error") else "")
        )
    return 0


def _model_path(spec: str) -> str:
    """``-m``: a premade model's name (see ``compressml models``) or a bundle / checkpoint path."""
    from compressml import premade

    return premade.resolve_model(spec)


def _premade_for_file(path: Path) -> str:
    """The bundle of the premade model that made a .cml file (decompress without -m)."""
    from compressml import premade
    from compressml.codec.files import describe

    fingerprint = describe(path)["fingerprint"]
    found = premade.by_fingerprint(fingerprint)
    if found is None:
        raise CompressMLError(f"{path}: made by weights {fingerprint[:12]}, not a premade model's: give the model with -m")
    return str(found.bundle)


def _default_lae():
    from compressml import premade

    return premade.default_lae()


def _models(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from compressml import premade

    models = premade.premade_models()
    if not models:
        print("no premade models in this installation")
        return 0
    default = premade.default_lae()
    uses = f"compress uses {default.name} by default, -q 0..100" if default else "compress uses lae-q* by default, -q picks one"
    table = Table(title=f"premade models (use the name with -m; {uses})", header_style="bold")
    for col in ("name", "family", "what", "measured", "size", "trained"):
        table.add_column(col, overflow="fold")
    for m in models:
        size = sum(p.stat().st_size for p in m.bundle.iterdir() if p.is_file())
        t = m.training
        trained = f"{t.get('steps', '?')} steps, {t.get('wall_time_s', 0) / 60:.0f} min, {t.get('device', '?')}"
        table.add_row(m.name, m.family, m.description, m.measured.get("summary", ""), f"{size / 1e6:.1f} MB", trained)
    Console(width=max(Console().width, 140)).print(table)
    return 0


def _refuse_existing(paths, force: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise CompressMLError(f"{existing[0]} exists{more}: use --force to overwrite")


def _steps(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of steps >= 0, got {text!r}")
    return value


def _region(text: str) -> tuple[int, int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or values[0] < 0 or values[1] < 0 or values[2] < 1 or values[3] < 1:
        raise argparse.ArgumentTypeError(f"expected X,Y,WIDTH,HEIGHT in pixels (X, Y >= 0; WIDTH, HEIGHT >= 1), got {text!r}")
    return values


def _max_error(text: str) -> int:
    from compressml.codec.mllae import MAX_ERROR_LIMIT

    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_ERROR_LIMIT:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {MAX_ERROR_LIMIT}, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compressml", description="Learned image compression, config-driven.")
    sub = parser.add_subparsers(dest="command", required=True)
    comp = sub.add_parser("compress", help="images (files or folders, recursive) to .cml files")
    comp.add_argument("inputs", nargs="+")
    comp.add_argument(
        "-m",
        "--model",
        help="an LAE or MLLAE (or, with --base, a RED): a premade model's name (compressml models), an export bundle folder (or its manifest.json) or a Lightning checkpoint (.ckpt); default: the premade variable-rate LAE (compressml models)",
    )
    comp.add_argument(
        "--base", help="hybrid codec (with a RED -m): the base layer's codec, jpeg-420, jpeg-444, webp, avif or jpeg2000, or an LAE model"
    )
    comp.add_argument(
        "-q",
        "--quality",
        type=float,
        help="a variable-rate LAE: quality 0 (smallest files) .. 100 (default 75), "
        "linear in log λ over the range it was trained on (also without -m: the premade default); "
        "hybrid codec: the classical base codec's quality (default 75)",
    )
    comp.add_argument(
        "--max-bytes",
        type=int,
        dest="max_bytes",
        metavar="N",
        help="rate control: the best quality whose file has at most N bytes (checked on the file; an error "
        "when even the lowest does not fit). Variable-rate LAE (the default) or the premade lae-q* ladder",
    )
    comp.add_argument("--bpp", type=float, metavar="B", help="rate control: the file closest to B bits per pixel")
    comp.add_argument("--psnr", type=float, metavar="P", help="rate control: the smallest file whose decoded image reaches P dB")
    comp.add_argument(
        "--ms-ssim", type=float, dest="ms_ssim", metavar="S", help="rate control: the smallest file whose decoded image reaches MS-SSIM S"
    )
    comp.add_argument(
        "--roi",
        metavar="MASK",
        help="a variable-rate LAE: more bits where the mask image (same size, "
        "nonzero = region) marks, from the same model; the map travels in the file",
    )
    comp.add_argument(
        "--roi-quality",
        type=float,
        dest="roi_quality",
        metavar="Q",
        help="with --roi: the region's quality (default: 40 above -q, at most 100)",
    )
    comp.add_argument(
        "--max-error",
        type=_max_error,
        metavar="D",
        help="near-lossless: every sample of the decoded image within ±D of the original (8-bit; 0: lossless), "
        "with an MLLAE in lossless mode (default: the premade mllae-lossless)",
    )
    comp.add_argument("-o", "--output", help="output folder (or file, for one input); default: beside each input, as NAME.cml")
    comp.add_argument(
        "--refine",
        type=_steps,
        default=0,
        metavar="STEPS",
        help="LAE: optimise each image's latents for STEPS gradient steps before coding (50: about 8%% "
        "fewer bits at equal PSNR on Kodak with the premade family, at about 0.15 s per step "
        "for a 768x512 image on 2 CPU cores); the files decode as usual, with the same model",
    )
    comp.add_argument(
        "--decoding-mode",
        choices=["exact", "compressai"],
        help="LAE: how the file is to be decoded: exact (default: CDFs chosen in fixed point, so every "
        "machine decodes it, and the same pixels whatever the thread count) or compressai "
        "(CompressAI's own bits, for CompressAI's decoder)",
    )
    comp.add_argument("--force", action="store_true", help="overwrite existing outputs")
    comp.set_defaults(func=_compress)
    dec = sub.add_parser("decompress", help=".cml files (or folders of them) back to images")
    dec.add_argument("inputs", nargs="+")
    dec.add_argument(
        "-m",
        "--model",
        help="the model that made the files: its bundle folder or checkpoint (either decodes the other's files), or a premade model's name; the RED for hybrid files; default: the premade model named by each file",
    )
    dec.add_argument("--base", help="hybrid files whose base layer is an LAE code: that LAE model")
    dec.add_argument("-o", "--output", help="output folder (or file, for one input); default: beside each input, as NAME.png")
    dec.add_argument("--format", default="png", choices=["png", "bmp", "tiff", "webp"], help="output format (webp: lossless)")
    dec.add_argument(
        "--originals",
        metavar="DIR",
        help="the original images (same relative paths, any image suffix; or one file): PSNR per file and on average",
    )
    dec.add_argument(
        "--region",
        type=_region,
        metavar="X,Y,W,H",
        help="decode only this region (pixels: left, top, width, height); an MLLAE-N file decodes just the blocks "
        "under it (random access), other files decode whole and are cropped",
    )
    dec.add_argument("--force", action="store_true", help="overwrite existing outputs")
    dec.set_defaults(func=_decompress)
    up = sub.add_parser("upscale", help="super-resolve images (files or folders, recursive) with a RED model")
    up.add_argument("inputs", nargs="+")
    up.add_argument(
        "-m",
        "--model",
        help="a RED: a premade model's name (red-x2, red-x4), export bundle folder (or its manifest.json) or Lightning checkpoint (.ckpt); default: the premade red-x<scale>",
    )
    up.add_argument(
        "--scale", type=int, help="without -m: the premade model's scale, 2 (default) or 4; with -m: checked against the model's"
    )
    up.add_argument("-o", "--output", required=True, help="output folder (or .png file, for one input)")
    up.add_argument(
        "--tile", type=int, default=256, help="low-resolution tile side for large images (default 256); results match untiled ones"
    )
    up.add_argument("--force", action="store_true", help="overwrite existing outputs")
    up.set_defaults(func=_upscale)
    info = sub.add_parser("info", help="describe .cml files")
    info.add_argument("files", nargs="+")
    info.set_defaults(func=_info)
    models = sub.add_parser("models", help="list the premade models shipped with compressml, with their measured figures")
    models.set_defaults(func=_models)
    kodak = sub.add_parser("download-kodak", help="fetch the 24 Kodak images into a local cache, checksum-verified")
    kodak.add_argument("--dest", help="target folder (default: $COMPRESSML_CACHE/kodak or ~/.cache/compressml/kodak)")
    kodak.add_argument("--url", help="base URL of a Kodak mirror (default: the public r0k.us mirror)")
    kodak.set_defaults(func=_download_kodak)
    for name, what in (
        ("train", "train a model: compressml train model=lae g=rate_distortion (Hydra overrides; conf/train.yaml)"),
        ("evaluate", "evaluate models against classical codecs: compressml evaluate checkpoint=PATH data=kodak"),
        ("export", "export a checkpoint as a bundle: compressml export checkpoint=PATH out=DIR"),
    ):
        sub.add_parser(name, help=what, add_help=False)
    return parser


HYDRA_COMMANDS = ("train", "evaluate", "export")  # Hydra's own command lines (key=value overrides)
HYDRA_MODULES = {"train": "train", "evaluate": "evaluate", "export": "export_model"}


def _hydra_command(argv: list[str]) -> int:
    """``compressml train|evaluate|export key=value ...``: the Hydra entry point over the shipped configs,
    run as ``python -m compressml.<command>`` would be (so DDP's worker processes start the same way)."""
    import runpy

    command, rest = argv[0], argv[1:]
    saved = sys.argv
    sys.argv = [command, *rest]  # runpy puts the module's file first
    try:
        runpy.run_module(f"compressml.{HYDRA_MODULES[command]}", run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in HYDRA_COMMANDS:
        return _hydra_command(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CompressMLError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
