"""Build the premade models shipped in compressml/premade: float16 export bundles of trained
checkpoints, measured on the evaluation sets, listed in compressml/premade/models.json.

For each model: ``export_bundle(..., dtype="float16")`` without graphs into
compressml/premade/<name>/, then the bundle itself (not the checkpoint) is measured:
- the LAE family on Kodak through real files (bpp, PSNR, MS-SSIM; BD-rate vs JPEG and WebP),
- the MLLAE lossless model on Kodak (bits per sub-pixel, every image checked bit-exact),
- the REDs on Set5 (Y-PSNR against bicubic).
The training record (data, steps, wall time, device) comes from the checkpoint (its step count and
Lightning's Timer state) and from the recipe below; each recipe is an experiment config.

    .venv/bin/python benchmarks/build_premade.py                 # checkpoints at their default paths
    .venv/bin/python benchmarks/build_premade.py --set lae-q1=path/to/last.ckpt --images 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, cpu_model
from rd_kodak import CURVE, KODAK, QUALITIES, kodak_images, measure

PREMADE = ROOT / "compressml" / "premade"
SET5 = (ROOT / ".." / "shared" / "data" / "set5" / "HR").resolve()
BSD200 = "../shared/data/train/bsd200 (the 200 BSDS500 training photos)"
TRAIN_DATA = "../shared/data/train (671 photos: BSDS500 train + test, T91, SUN-Hays 80, Urban100)"
LAE_FINE_TUNE = "init_from=<lae-q2 last.ckpt>"
# where the premade LAE recipes were run: the first runs (premade/lae_qN) in /tmp/premade2/lae_qN, the
# second runs continuing them (premade/lae_qN_stage2, from the first's last.ckpt) in /tmp/premade3;
# the last checkpoint of the last run ships
LAE_RUNS = {"": "/tmp/premade2", "_stage2": "/tmp/premade3"}


def lae_spec(quality: int, lmbda: str, note: str, stages: tuple[str, ...] = tuple(LAE_RUNS)) -> dict:
    """Quality ``quality`` of the LAE family: a first run (q2 from scratch, the others from q2's
    weights), then the ``stages`` after it, each continuing the run before from its weights."""
    runs = [f"{LAE_RUNS[stage]}/lae_q{quality}/checkpoints/last.ckpt" for stage in stages]
    commands = []
    for stage in stages:
        start = "init_from=<that run's last.ckpt>" if stage else ("" if quality == 2 else LAE_FINE_TUNE)
        commands.append(f"python train.py experiment=premade/lae_q{quality}{stage} {start}".rstrip())
    return dict(
        family="lae",
        quality=quality,
        source=runs[-1],
        earlier=runs[:-1],
        data=BSD200,
        recipe="; ".join(commands),
        description=f"mean-scale hyperprior 64/96, lambda {lmbda}{note}",
    )


# name -> what it is, where its checkpoint was trained, and how
SPECS = {
    "lae-q1": lae_spec(1, "0.0018", " (smallest files)"),
    "lae-q2": lae_spec(2, "0.0067", ""),
    "lae-q3": lae_spec(3, "0.025", ""),
    "lae-q4": lae_spec(4, "0.07", " (best quality)"),
    "mllae-lossless": dict(
        family="mllae",
        source="/tmp/compressml-bench/mllae/train-lossless/checkpoints/last.ckpt",
        data=BSD200,
        recipe="python train.py experiment=premade/mllae_lossless",
        description="MLLAE-N, 64 bytes per 64x64 block, with its lossless mode (bit-exact residual; --max-error D: near-lossless)",
    ),
    "mllae-n455": dict(
        family="mllae",
        source="/tmp/train2/logs/n455c/runs/<run>/checkpoints/best.ckpt",
        data=TRAIN_DATA,
        recipe=(
            "python train.py experiment=premade/mllae_n callbacks.cpu_budget.seconds=2400 (stopped by hand at 1609 CPU s, "
            "step 3619); python train.py experiment=premade/mllae_n ckpt_path=<that run's last.ckpt> "
            "callbacks.cpu_budget.seconds=4300 (resumed; it diverged at step 7000 at lr 1e-3, so its best.ckpt, step 6909, ships)"
        ),
        description="MLLAE-N, at most 455 bytes per 64x64 block (0.89 bpp, ASTC 12x12's rate), 4-bit codes + rANS",
    ),
    "red-x2": dict(
        family="red",
        scale=2,
        source="/tmp/train/logs/redx2b/runs/<run>/checkpoints/last.ckpt",
        data=TRAIN_DATA,
        recipe=(
            "python train.py experiment=premade/red_v2_x2 callbacks.cpu_budget.seconds=1140; "
            "python train.py experiment=premade/red_v2_x2 init_from=<that run's last.ckpt> model.optimizer.lr=1e-4 "
            "callbacks.cpu_budget.seconds=600"
        ),
        description="super-resolution x2 (small EDSR 32x8 + bicubic skip)",
    ),
    "red-x4": dict(
        family="red",
        scale=4,
        source="/tmp/train/logs/redx4b/runs/<run>/checkpoints/last.ckpt",
        data=TRAIN_DATA,
        recipe=(
            "python train.py experiment=premade/red_v2_x4 callbacks.cpu_budget.seconds=1660; "
            "python train.py experiment=premade/red_v2_x4 init_from=<that run's last.ckpt> model.optimizer.lr=1e-4 "
            "callbacks.cpu_budget.seconds=600"
        ),
        description="super-resolution x4 (small EDSR 32x8 + bicubic skip)",
    ),
    "lae-vr": dict(
        family="lae",
        variable_rate=True,
        default=True,
        source="/tmp/train/logs/vr5/runs/<run>/checkpoints/last.ckpt",
        data=TRAIN_DATA,
        recipe=(
            "python train.py experiment=premade/lae_q4; python train.py experiment=premade/lae_q4_stage2 init_from=<that run's last.ckpt>; "
            "python train.py experiment=premade/lae_vr init_from=compressml/premade/lae-q4; "
            "python train.py experiment=premade/lae_vr init_from=<that run's last.ckpt>; "
            "python train.py experiment=premade/lae_vr init_from=<that run's last.ckpt>; "
            "python train.py experiment=premade/lae_vr init_from=<that run's last.ckpt> model.optimizer.lr=5e-5 "
            "callbacks.cpu_budget.threads=1; "
            "python train.py experiment=premade/lae_vr init_from=<that run's last.ckpt> model.optimizer.lr=5e-5 "
            "model.compile=true model.channels_last=true"
        ),
        description="variable-rate mean-scale hyperprior 64/96, lambda 0.0004..0.0932 (-q 0..100; the default of compressml compress)",
        # runs whose checkpoints are gone (their records from benchmarks/models/README.md and models.json)
        earlier_records=[
            {"run": "lae-q4", "from_registry": "lae-q4"},  # its two runs
            {"run": "vr-mean_scale-13695", "steps": 13695, "wall_time_s": 4440.0, "cpu_s": 6100.0},
            {"run": "vr-mean_scale-13695-plus8154", "steps": 8154, "wall_time_s": None, "cpu_s": 3000.0},
            {"run": "vr3 (lr 2e-4, 2026-12-02)", "steps": 996, "wall_time_s": 2347.9, "cpu_s": 900.5},
        ],
    ),
}
# earlier premade models kept (not rebuilt) so that the files they made keep decoding
KEPT = ("red-x2-v1", "red-x4-v1")


def run_record(checkpoint: Path) -> dict:
    """Steps and wall time of the run that saved ``checkpoint``: its step count, and Lightning's Timer
    state or else the run's own summary.json (runs without max_time have no Timer)."""
    from compressml.systems.loading import read_checkpoint

    ckpt = read_checkpoint(checkpoint, lazy=True)
    timer = next((v for k, v in (ckpt.get("callbacks") or {}).items() if k.startswith("Timer")), {})
    elapsed = timer.get("time_elapsed") or {}
    seconds = sum(float(v) for v in elapsed.values()) if elapsed else None
    run_summary = checkpoint.parent.parent / "summary.json"
    if seconds is None and run_summary.is_file():
        seconds = json.loads(run_summary.read_text()).get("seconds")
    run_dir = checkpoint.parent.parent
    config = run_dir / ".hydra" / "config.yaml"
    if seconds is None and config.is_file():  # a run stopped by hand: from its start to the checkpoint
        seconds = checkpoint.stat().st_mtime - config.stat().st_mtime
    budget = next((v for k, v in (ckpt.get("callbacks") or {}).items() if k.startswith("CPUTimeBudget")), {})
    record = {"run": str(checkpoint), "steps": int(ckpt.get("global_step", 0)), "wall_time_s": round(seconds, 1) if seconds else None}
    return {**record, "cpu_s": round(float(budget["used"]), 1)} if "used" in budget else record


def training_record(checkpoint: Path, data: str, device: str, earlier: tuple[Path, ...] = (), records: tuple[dict, ...] = ()) -> dict:
    """The training of ``checkpoint``, summed with the ``earlier`` runs it continued (each started from
    the one before with init_from: checkpoints, or ``records`` of runs whose checkpoints are gone);
    one entry per run in ``runs`` when there are several. Wall times missing from a record count as
    nothing in the sum (``wall_time_known`` says so)."""
    runs = [*records, *(run_record(path) for path in (*earlier, checkpoint))]
    times = [r.get("wall_time_s") for r in runs]
    record = {
        "data": data,
        "steps": sum(r["steps"] for r in runs),
        "wall_time_s": round(sum(t for t in times if t), 1) if any(times) else None,
        "device": device,
    }
    if not all(times):
        record["wall_time_known"] = False
    if any("cpu_s" in r for r in runs):
        record["cpu_s"] = round(sum(r.get("cpu_s", 0.0) for r in runs), 1)
    return {**record, "runs": runs} if len(runs) > 1 else record


def registry_records(entries: dict, record: dict) -> list[dict]:
    """Earlier runs kept as records: a premade model's runs (``from_registry``), or the record as given."""
    if "from_registry" not in record:
        return [dict(record)]
    t = entries[record["from_registry"]]["training"]
    runs = t.get("runs") or [{"steps": t["steps"], "wall_time_s": t.get("wall_time_s")}]
    return [{"run": f"{record['run']} run {i + 1}", **r, "data": t["data"]} for i, r in enumerate(runs)]


def export(name: str, checkpoint: Path) -> dict:
    from compressml.export import export_bundle

    return export_bundle(checkpoint, PREMADE / name, force=True, onnx=False, torchscript=False, dtype="float16")


def measure_lae(names: list[str], images) -> dict[str, dict]:
    from compressml.evaluation import LearnedModel

    models = [LearnedModel(PREMADE / n, n, CURVE) for n in names]
    result = measure(models, images, Path("/tmp/compressml-bench/premade-lae"))
    bd = result["bd_rate"][CURVE]
    out = {}
    for r in (r for r in result["averages"] if r["codec"] == CURVE):
        out[r["setting"]] = {
            "kodak": {"bpp": round(r["bpp"], 4), "psnr": round(r["psnr"], 2), "ms_ssim": round(r["ms_ssim"], 4), "images": r["images"]},
            "family_bd_rate_psnr": {k: (round(v["psnr"], 1) if v.get("psnr") is not None else None) for k, v in bd.items()},
        }
        out[r["setting"]]["summary"] = f"Kodak {r['bpp']:.3f} bpp, {r['psnr']:.2f} dB, MS-SSIM {r['ms_ssim']:.4f}"
    return out


def measure_variable_rate(name: str, images) -> dict:
    """A variable-rate model's Kodak curve (real files at rd_kodak's qualities) and its BD-rates."""
    from compressml.evaluation import LearnedModel

    result = measure([LearnedModel(PREMADE / name, name, name, qualities=QUALITIES)], images, Path("/tmp/compressml-bench/premade-vr"))
    rows = sorted((r for r in result["averages"] if r["codec"] == name), key=lambda r: r["bpp"])
    bd = result["bd_rate"][name]
    lo, hi = rows[0], rows[-1]
    return {
        "kodak": {
            "points": [
                {"setting": r["setting"], "bpp": round(r["bpp"], 4), "psnr": round(r["psnr"], 2), "ms_ssim": round(r["ms_ssim"], 4)}
                for r in rows
            ],
            "images": lo["images"],
        },
        "bd_rate_psnr": {k: (round(v["psnr"], 1) if v.get("psnr") is not None else None) for k, v in bd.items()},
        "bd_rate_ms_ssim": {k: (round(v["ms_ssim_db"], 1) if v.get("ms_ssim_db") is not None else None) for k, v in bd.items()},
        "summary": (
            f"Kodak {lo['bpp']:.2f}-{hi['bpp']:.2f} bpp ({lo['psnr']:.1f}-{hi['psnr']:.1f} dB); BD-rate "
            f"{bd['jpeg-420']['psnr']:+.1f} % vs JPEG, {bd['webp']['psnr']:+.1f} % vs WebP"
        ),
    }


def measure_mllae(name: str, images) -> dict:
    from compressml.evaluation import LearnedModel, run_evaluation

    result = run_evaluation([LearnedModel(PREMADE / name, name, name)], images, [], Path("/tmp/compressml-bench/premade-mllae"))
    (r,) = [r for r in result["averages"] if r["codec"] == name]
    if r["exact"] < r["images"]:  # a lossy MLLAE-N
        return {
            "kodak": {k: round(r[k], 4) for k in ("bpp", "psnr", "ms_ssim")}
            | {"block_bytes_max": r["block_bytes_max"], "images": r["images"]},
            "summary": f"Kodak {r['bpp']:.3f} bpp, {r['psnr']:.2f} dB; largest block {r['block_bytes_max']} of {r['block_budget']} bytes",
        }
    return {
        "kodak": {"bpsp": round(r["bpsp"], 3), "exact": f"{r['exact']}/{r['images']}", "images": r["images"]},
        "summary": f"Kodak lossless {r['bpsp']:.3f} bits/sub-pixel, {r['exact']}/{r['images']} bit-exact",
    }


def measure_red(name: str, set5: Path) -> dict:
    from compressml.codec.upscale import Upscaler
    from compressml.data.images import list_images, load_image
    from compressml.sr_evaluation import BICUBIC, evaluate_sr

    up = Upscaler.load(PREMADE / name)
    images = [(p.name, load_image(p)) for p in list_images(set5)]
    result = evaluate_sr([(name, lambda lr: up(lr, 256))], images, up.scale)
    ours, bic = result["averages"][name], result["averages"][BICUBIC]
    return {
        "set5": {"psnr_y": round(ours["psnr_y"], 2), "ssim_y": round(ours["ssim_y"], 4), "bicubic_psnr_y": round(bic["psnr_y"], 2)},
        "summary": f"Set5 x{up.scale} Y-PSNR {ours['psnr_y']:.2f} dB (bicubic {bic['psnr_y']:.2f})",
    }


def named_checkpoints(items: list[str], flag: str) -> list[tuple[str, Path]]:
    """``NAME=CKPT`` arguments of ``flag`` as (name, path), in order; NAME must be a model of SPECS."""
    pairs = []
    for item in items:
        name, _, path = item.partition("=")
        if name not in SPECS or not path:
            raise SystemExit(f"{flag} wants NAME=CKPT with NAME in {', '.join(SPECS)}")
        pairs.append((name, Path(path)))
    return pairs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--set", nargs="+", default=[], metavar="NAME=CKPT", help="another checkpoint for a model")
    p.add_argument("--only", nargs="+", choices=list(SPECS), help="build only these (the others stay as they are)")
    p.add_argument(
        "--earlier",
        nargs="+",
        default=[],
        metavar="NAME=CKPT",
        help="a run the model's checkpoint continued (init_from), in order: its steps and time join the record",
    )
    p.add_argument("--images", type=int, default=None, help="first N Kodak images for the figures (default: all 24)")
    p.add_argument("--kodak", type=Path, default=KODAK)
    p.add_argument("--set5", type=Path, default=SET5)
    p.add_argument("--device", default=f"CPU ({cpu_model()}, 2 cores)", help="what trained the checkpoints")
    args = p.parse_args(argv)
    started = time.perf_counter()
    sources = {n: Path(s["source"]) for n, s in SPECS.items()}
    sources.update((name, path) for name, path in named_checkpoints(args.set, "--set"))
    earlier: dict[str, list[Path]] = {}
    for name, path in named_checkpoints(args.earlier, "--earlier"):
        earlier.setdefault(name, []).append(path)
    names = args.only or list(SPECS)
    registry = PREMADE / "models.json"
    entries = {e["name"]: e for e in (json.loads(registry.read_text())["models"] if registry.is_file() else [])}
    for name in names:
        spec = SPECS[name]
        print(f"exporting {name} from {sources[name]}", flush=True)
        summary = export(name, sources[name])
        entries[name] = {
            "name": name,
            "family": spec["family"],
            "bundle": name,
            "fingerprint": summary["fingerprint"],
            **{k: spec[k] for k in ("quality", "scale", "variable_rate", "default") if k in spec},
            "description": spec["description"],
            "recipe": spec["recipe"],
            "training": training_record(
                sources[name],
                spec["data"],
                args.device,
                (*(Path(e) for e in spec.get("earlier", ())), *earlier.get(name, ())),
                tuple(x for r in spec.get("earlier_records", ()) for x in registry_records(entries, r)),
            ),
            "bytes": sum(summary["files"].values()),
        }
    images = kodak_images(args.kodak, count=args.images)
    lae = [n for n in SPECS if SPECS[n]["family"] == "lae" and not SPECS[n].get("variable_rate") and n in entries]
    if any(n in lae for n in names):  # the whole family, for its BD-rates
        print(f"measuring {', '.join(lae)} on {len(images)} Kodak image(s)", flush=True)
        for n, m in measure_lae(sorted(lae), images).items():
            entries[n]["measured"] = m
    for n in (n for n in names if SPECS[n].get("variable_rate")):
        print(f"measuring {n} on {len(images)} Kodak image(s)", flush=True)
        entries[n]["measured"] = measure_variable_rate(n, images)
    for n in (n for n in names if SPECS[n]["family"] == "mllae"):
        print(f"measuring {n} on {len(images)} Kodak image(s)", flush=True)
        entries[n]["measured"] = measure_mllae(n, images)
    for n in (n for n in names if SPECS[n]["family"] == "red"):
        print(f"measuring {n} on Set5", flush=True)
        entries[n]["measured"] = measure_red(n, args.set5)
    ordered = [entries[n] for n in SPECS if n in entries] + [entries[n] for n in KEPT if n in entries]
    ordered.sort(key=lambda e: not e.get("default"))  # the default first (compressml models lists them in this order)
    registry.write_text(json.dumps({"format": "compressml-premade", "version": 1, "models": ordered}, indent=1) + "\n")
    total = sum(e["bytes"] for e in ordered)
    for e in ordered:
        print(f"{e['name']:<15} {e['bytes'] / 1e6:6.2f} MB  {e.get('measured', {}).get('summary', '')}")
    print(f"total {total / 1e6:.2f} MB (limit 50 MB); wrote {registry.relative_to(ROOT)} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
